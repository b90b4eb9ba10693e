//! The committer: one task per instance takes every publish request
//! waiting (up to a cap) and commits them as one group, then answers each.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::MIN_STATEMENT_TIME;
use super::commit::{Failure, commit_group};
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
/// transaction, then answers each. `timeout` is `--db-timeout`, which every
/// pool connection also has as its `statement_timeout`.
pub(in crate::log) async fn committer(
    pool: PgPool,
    mut rx: mpsc::Receiver<AppendJob>,
    timeout: Duration,
) {
    // One task commits, so one connection does (see `kept.rs`).
    let mut kept = Kept::for_appends();
    let mut waited_for_answer = false;
    while let Some(first) = rx.recv().await {
        if rx.is_empty() {
            // Alone so far: requests on their way may join (`GATHER_YIELDS`).
            for _ in 0..GATHER_YIELDS {
                tokio::task::yield_now().await;
            }
        }
        let mut group = Vec::new();
        let mut count = 0;
        let now = Instant::now();
        take(first, &mut group, &mut count, now);
        while count < MAX_GROUP_EVENTS {
            match rx.try_recv() {
                Ok(job) => take(job, &mut group, &mut count, now),
                Err(_) => break,
            }
        }
        if group.is_empty() {
            waited_for_answer = false;
            continue;
        }
        let started = std::time::Instant::now();
        if waited_for_answer {
            // This group came while the last append was in flight, and the
            // connection has just answered it: no test (`kept.rs`).
            kept.vouch();
        }
        let result = commit_group(&pool, &mut kept, &group, timeout).await;
        waited_for_answer = result.is_ok() && !rx.is_empty();
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
                    let result =
                        commit_group(&pool, &mut kept, std::slice::from_ref(&job), timeout).await;
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
    }
}

/// Adds `job` to the group unless its publisher withdrew it, or it has too
/// little time left to be sent (then it is answered at once: not stored).
fn take(job: AppendJob, group: &mut Vec<AppendJob>, count: &mut usize, now: Instant) {
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
    group.push(job);
}
