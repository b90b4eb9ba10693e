//! The committer: one task per instance takes every publish request
//! waiting (up to a cap) and commits them as one group, then answers each;
//! or sends the group to the instance that commits for the cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::MIN_STATEMENT_TIME;
use super::cluster::{Cluster, ELECTION_INTERVAL, Role};
use super::commit::{Failure, commit_group};
use super::forward::{FORWARDS_IN_FLIGHT, Forwarded, Forwarder, MAX_FORWARD_BYTES};
use crate::log::{Appended, Kept, LogError, NewEvent};
use crate::telemetry;

/// Most events one append transaction carries.
const MAX_GROUP_EVENTS: usize = 4096;
/// Times the committer yields to the runtime when it wakes for a request
/// that is alone in the queue, before it takes the group. tokio runs a
/// yielding task again only after it has polled for I/O and run the tasks
/// that were ready before it, so publish requests that have just arrived
/// hand in their jobs first and share the statement; with nothing else
/// ready a yield returns at once. Measured at 5,000 single-event
/// publishes/s over 64 connections, alternating binaries (`BENCHMARKS.md`,
/// "The committer's gather yields"): PostgreSQL's CPU down from 44 % of a
/// core to 38 %, herald's 42 % and 41 %, delivery p99 unchanged. Not when
/// requests are already waiting: the group is then formed anyway, and
/// yielding on every group delayed the one task every append goes
/// through (publishes flat out: 19,300 events/s instead of 24,000).
const GATHER_YIELDS: u32 = 2;
pub(in crate::log) struct AppendJob {
    pub events: Vec<NewEvent>,
    pub reply: oneshot::Sender<Result<Vec<Appended>, LogError>>,
    /// When the publisher's wait for the database ends (`--db-timeout`
    /// after the request arrived).
    pub deadline: Instant,
    pub claim: Arc<Claim>,
}

/// Who settles a job: the committer, by taking it into a group, or its
/// publisher, by withdrawing it when the deadline passes first. Exactly one
/// of them wins, so a withdrawn job is never sent and a taken one is never
/// reported as "not stored" before PostgreSQL has said so.
#[derive(Default)]
pub(in crate::log) struct Claim(AtomicU8);

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

impl Claim {
    fn take(&self) -> bool {
        self.settle(TAKEN)
    }

    /// `true` when the job had not been taken: it will never be sent.
    pub(in crate::log) fn withdraw(&self) -> bool {
        self.settle(WITHDRAWN)
    }

    fn settle(&self, to: u8) -> bool {
        self.0
            .compare_exchange(QUEUED, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// Takes every job that is waiting (up to a cap) and commits them in one
/// transaction, then answers each; or, while another instance commits for
/// the cluster (`cluster.rs`), sends them there (`forward.rs`). `timeout`
/// is `--db-timeout`, which every pool connection also has as its
/// `statement_timeout`.
pub(in crate::log) async fn committer(
    pool: PgPool,
    mut rx: mpsc::Receiver<AppendJob>,
    timeout: Duration,
    cluster: Cluster,
) {
    let mut local = Local {
        pool,
        // One task commits, so one connection does (see `kept.rs`).
        kept: Kept::for_appends(),
        timeout,
        waited_for_answer: false,
    };
    let forwarder = Arc::new(Forwarder::new());
    let slots = Arc::new(Semaphore::new(FORWARDS_IN_FLIGHT));
    // Groups the committer could not be reached with come back here.
    let (back_tx, mut back_rx) = mpsc::unbounded_channel::<(Vec<AppendJob>, String)>();
    // Until then, groups are committed here: the committer did not answer.
    let mut here_until: Option<Instant> = None;
    loop {
        let first = tokio::select! {
            biased;
            Some((group, why)) = back_rx.recv() => {
                if here_until.is_none_or(|t| Instant::now() >= t) {
                    tracing::warn!(error = %why, "cannot reach the cluster's committer; committing here for a while");
                }
                here_until = Some(Instant::now() + ELECTION_INTERVAL);
                let count = group.iter().map(|j| j.events.len()).sum();
                local.commit(group, count).await;
                local.waited_for_answer = false;
                continue;
            }
            job = rx.recv() => match job {
                Some(job) => job,
                None => break,
            },
        };
        if rx.is_empty() {
            // Alone so far: requests on their way may join (`GATHER_YIELDS`).
            for _ in 0..GATHER_YIELDS {
                tokio::task::yield_now().await;
            }
        }
        let peer = match cluster.role() {
            Role::Follower(peer) if here_until.is_none_or(|t| Instant::now() >= t) => Some(peer),
            _ => None,
        };
        if let Some(peer) = peer {
            // Requests that come while every slot is taken join this group.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let (group, _) = gather(first, &mut rx, MAX_FORWARD_BYTES);
            if group.is_empty() {
                continue;
            }
            let (forwarder, back_tx) = (forwarder.clone(), back_tx.clone());
            tokio::spawn(async move {
                let forwarded = forwarder.forward(&peer, &group).await;
                drop(slot);
                answer_forwarded(group, forwarded, &back_tx);
            });
            continue;
        }
        let (group, count) = gather(first, &mut rx, usize::MAX);
        if group.is_empty() {
            local.waited_for_answer = false;
            continue;
        }
        let committed = local.commit(group, count).await;
        local.waited_for_answer = committed && !rx.is_empty();
    }
}

/// `first` and every job waiting behind it, up to [`MAX_GROUP_EVENTS`]
/// events and about `max_bytes` of data; and how many events they carry.
fn gather(
    first: AppendJob,
    rx: &mut mpsc::Receiver<AppendJob>,
    max_bytes: usize,
) -> (Vec<AppendJob>, usize) {
    let mut group = Vec::new();
    let mut count = 0;
    let mut bytes = 0;
    let now = Instant::now();
    take(first, &mut group, &mut count, &mut bytes, now);
    while count < MAX_GROUP_EVENTS && bytes < max_bytes {
        match rx.try_recv() {
            Ok(job) => take(job, &mut group, &mut count, &mut bytes, now),
            Err(_) => break,
        }
    }
    (group, count)
}

/// Answers a forwarded group's requests, or sends the group back to be
/// committed here when it never reached the committer.
fn answer_forwarded(
    group: Vec<AppendJob>,
    forwarded: Forwarded,
    back: &mpsc::UnboundedSender<(Vec<AppendJob>, String)>,
) {
    match forwarded {
        Forwarded::Answered(results) => {
            telemetry::forwards_answered().increment(group.len() as u64);
            for (job, result) in group.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
        Forwarded::NotSent(why) => {
            telemetry::forwards_not_sent().increment(group.len() as u64);
            if let Err(mpsc::error::SendError((group, _))) = back.send((group, why)) {
                // The committer has stopped: so has the instance.
                for job in group {
                    let _ = job.reply.send(Err(LogError::Closed));
                }
            }
        }
        Forwarded::Unknown(why) => {
            telemetry::forwards_unknown().increment(group.len() as u64);
            tracing::debug!(error = %why, requests = group.len(), "forwarded group not answered");
            for job in group {
                let _ = job.reply.send(Err(LogError::Unknown(why.clone())));
            }
        }
    }
}

/// This instance committing a group itself.
struct Local {
    pool: PgPool,
    kept: Kept,
    timeout: Duration,
    /// The last group's answer came with this one already waiting.
    waited_for_answer: bool,
}

impl Local {
    /// Commits `group` (`count` events) and answers each request; `true`
    /// when it committed.
    async fn commit(&mut self, group: Vec<AppendJob>, count: usize) -> bool {
        let started = std::time::Instant::now();
        if self.waited_for_answer {
            // This group came while the last append was in flight, and the
            // connection has just answered it: no test (`kept.rs`).
            self.kept.vouch();
        }
        let result = commit_group(&self.pool, &mut self.kept, &group, self.timeout).await;
        let committed = result.is_ok();
        telemetry::append_seconds().record(started.elapsed());
        telemetry::append_group_events().record(count as f64);
        match result {
            Ok(per_job) => {
                for (job, appended) in group.into_iter().zip(per_job) {
                    let _ = job.reply.send(Ok(appended));
                }
            }
            Err(Failure::NotStored(e)) if group.len() > 1 && !crate::log::is_transient(&e) => {
                // A row PostgreSQL will not take: find whose, by committing
                // each request on its own.
                tracing::info!(error = %e, requests = group.len(), "append refused; committing its requests one by one");
                for job in group {
                    let result = commit_group(
                        &self.pool,
                        &mut self.kept,
                        std::slice::from_ref(&job),
                        self.timeout,
                    )
                    .await;
                    let _ = job.reply.send(
                        result
                            .map(|mut per_job| per_job.remove(0))
                            .map_err(LogError::from),
                    );
                }
            }
            Err(failure) => {
                let err = LogError::from(failure);
                // Each request logs its own refusal, with this cause.
                tracing::debug!(error = %err, requests = group.len(), events = count, "append failed");
                for job in group {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
        }
        committed
    }
}

/// Adds `job` to the group unless its publisher withdrew it, or it has too
/// little time left to be sent (then it is answered at once: not stored).
fn take(
    job: AppendJob,
    group: &mut Vec<AppendJob>,
    count: &mut usize,
    bytes: &mut usize,
    now: Instant,
) {
    if !job.claim.take() {
        return;
    }
    if job.deadline.saturating_duration_since(now) < MIN_STATEMENT_TIME {
        let _ = job.reply.send(Err(LogError::Unavailable(
            "waited for the event log until the deadline".into(),
        )));
        return;
    }
    *count += job.events.len();
    *bytes += job.events.iter().map(|e| e.data.len()).sum::<usize>();
    group.push(job);
}
