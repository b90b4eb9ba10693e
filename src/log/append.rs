//! Appending: one committer task per instance takes every publish request
//! waiting (group commit) and stores them in one transaction, in id order.
//!
//! Every append locks the single `log_head` row before it takes ids, and
//! holds the lock to its commit; the next append, from any instance, gets its
//! ids only after this one is visible (see `migrations/`). The commit time
//! is taken under the same lock and never goes back (`greatest` with the
//! previous append's), so commit times follow ids.
//!
//! A group without idempotency keys is one statement, in autocommit: lock,
//! insert, move the head, notify, commit, in a single round trip, which
//! keeps the lock held for as short as PostgreSQL allows. A group with keys
//! needs to look the keys up under the lock first, so it is a transaction
//! of a few statements.
//!
//! **Every answer is true, and comes in time.** Each request has a deadline
//! (its arrival plus `--db-timeout`) and gets its answer by then plus
//! [`ANSWER_MARGIN`], however PostgreSQL fails:
//! - A request still waiting in the queue at its deadline is withdrawn by
//!   its publisher ([`Claim`]): it was never sent, so "nothing was stored".
//! - A group is sent only with time left for every request in it, and
//!   PostgreSQL itself aborts a statement that outlives it
//!   (`statement_timeout`, `lock_timeout`), so a slow trigger or a held lock
//!   ends in an error PostgreSQL reports: again, nothing was stored. A
//!   timeout on our side alone would not do: the statement PostgreSQL
//!   already has goes on and commits after the client gave up.
//! - Only when the statement that commits was sent and no answer came at
//!   all (the network or the server went silent) is the outcome unknown,
//!   and the answer says so ([`LogError::Unknown`]).
//!
//! **One request cannot fail another's.** A group that PostgreSQL refuses
//! for a reason other than its availability (a row it will not take) is
//! retried one request at a time, so the request at fault gets the error and
//! the others commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Appended, Kept, LogError, NOTIFY_CHANNEL, NewEvent, from_row, notice};
use crate::event::{IdempotencyKey, StoredEvent};
use crate::telemetry;

/// Most events one append transaction carries.
const MAX_GROUP_EVENTS: usize = 4096;
/// How long after its deadline a publisher may wait for its answer: the
/// time PostgreSQL's own answer (an abort at `statement_timeout`) takes to
/// come back and be sent on. Documented in the README ("Errors").
pub const ANSWER_MARGIN: Duration = Duration::from_millis(500);
/// Times the committer yields to the runtime when it wakes for a request
/// that is alone in the queue, before it takes the group. tokio runs a
/// yielding task again only after it has polled for I/O and run the tasks
/// that were ready before it, so publish requests that have just arrived
/// hand in their jobs first and share the statement; with nothing else
/// ready a yield returns at once. Measured at 5,000 single-event
/// publishes/s over 64 connections, alternating binaries (`BENCHMARKS.md`,
/// "Where herald's CPU goes"): PostgreSQL's CPU down from 44 % of a core to
/// 38 %, herald's 42 % and 41 %, delivery p99 unchanged. Not when
/// requests are already waiting: the group is then formed anyway, and
/// yielding on every group delayed the one task every append goes
/// through (publishes flat out: 19,300 events/s instead of 24,000).
const GATHER_YIELDS: u32 = 2;
/// Least time worth sending a statement with; a request with less left is
/// answered "nothing was stored" without being sent.
const MIN_STATEMENT_TIME: Duration = Duration::from_millis(20);

pub(super) struct AppendJob {
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
pub(super) struct Claim(AtomicU8);

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

impl Claim {
    fn take(&self) -> bool {
        self.settle(TAKEN)
    }

    /// `true` when the job had not been taken: it will never be sent.
    pub(super) fn withdraw(&self) -> bool {
        self.settle(WITHDRAWN)
    }

    fn settle(&self, to: u8) -> bool {
        self.0
            .compare_exchange(QUEUED, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// How an append failed, as far as anyone can know.
enum Failure {
    /// Nothing was committed: the statement was never sent, or PostgreSQL
    /// answered with an error.
    NotStored(sqlx::Error),
    /// The statement that commits was sent and no answer came.
    Unknown(String),
}

impl From<Failure> for LogError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::NotStored(e) => LogError::from(e),
            Failure::Unknown(why) => LogError::Unknown(why),
        }
    }
}

/// Takes every job that is waiting (up to a cap) and commits them in one
/// transaction, then answers each. `timeout` is `--db-timeout`, which every
/// pool connection also has as its `statement_timeout`.
pub(super) async fn committer(pool: PgPool, mut rx: mpsc::Receiver<AppendJob>, timeout: Duration) {
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
        let result = run(&pool, &mut kept, &group, timeout).await;
        waited_for_answer = result.is_ok() && !rx.is_empty();
        telemetry::append_seconds().record(started.elapsed());
        telemetry::append_group_events().record(count as f64);
        match result {
            Ok(per_job) => {
                for (job, appended) in group.into_iter().zip(per_job) {
                    let _ = job.reply.send(Ok(appended));
                }
            }
            Err(Failure::NotStored(e)) if group.len() > 1 && !super::is_transient(&e) => {
                // A row PostgreSQL will not take: find whose, by committing
                // each request on its own.
                tracing::info!(error = %e, requests = group.len(), "append refused; committing its requests one by one");
                for job in group {
                    let result = run(&pool, &mut kept, std::slice::from_ref(&job), timeout).await;
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

/// Commits one group within the time its most pressed request has left.
async fn run(
    pool: &PgPool,
    kept: &mut Kept,
    group: &[AppendJob],
    timeout: Duration,
) -> Result<Vec<Vec<Appended>>, Failure> {
    let now = Instant::now();
    let Some(deadline) = group.iter().map(|j| j.deadline).min() else {
        return Ok(Vec::new());
    };
    let budget = deadline.saturating_duration_since(now);
    if budget < MIN_STATEMENT_TIME {
        return Err(Failure::NotStored(sqlx::Error::PoolTimedOut));
    }
    let mut conn = match tokio::time::timeout(budget, kept.take(pool)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(Failure::NotStored(e)),
        Err(_) => return Err(Failure::NotStored(sqlx::Error::PoolTimedOut)),
    };
    // The server must give up in time for its answer to reach the
    // publisher: the connection's own statement_timeout (`timeout`) when the
    // group has not waited long, a shorter one set for this group otherwise.
    let shortened = timeout > budget + ANSWER_MARGIN / 2;
    let server_limit = if !shortened {
        timeout
    } else {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < MIN_STATEMENT_TIME {
            return Err(Failure::NotStored(sqlx::Error::PoolTimedOut));
        }
        // The connection keeps this setting. If the group commits, the
        // connection is kept and reset before its next use (`kept.rs`);
        // on every other outcome it is closed rather than handed back to
        // the pool with it. (Only the instance's shutdown drops this
        // future midway, and the pool closes with it.)
        let limit = format!("{}ms", left.as_millis().max(1));
        if let Err(e) = sqlx::query("select set_config('statement_timeout', $1, false), set_config('lock_timeout', $1, false)")
            .bind(&limit)
            .execute(&mut *conn)
            .await
        {
            conn.close_on_drop();
            return Err(Failure::NotStored(e));
        }
        left
    };
    let batches: Vec<&[NewEvent]> = group.iter().map(|j| j.events.as_slice()).collect();
    let commit_sent = AtomicBool::new(false);
    let guard = server_limit + ANSWER_MARGIN / 2;
    let result = tokio::time::timeout(guard, append_group(&mut conn, &batches, &commit_sent)).await;
    let sent = commit_sent.load(Ordering::Acquire);
    match result {
        Ok(Ok(appended)) => {
            if shortened {
                kept.keep_shortened(conn);
            } else {
                kept.keep(conn);
            }
            Ok(appended)
        }
        Ok(Err(e)) if sent && is_connection_loss(&e) => {
            conn.close_on_drop();
            Err(Failure::Unknown(e.to_string()))
        }
        Ok(Err(e)) => {
            if shortened {
                conn.close_on_drop();
            }
            Err(Failure::NotStored(e))
        }
        Err(_) => {
            // A statement may still be running in PostgreSQL; this
            // connection is not handed to anyone else.
            conn.close_on_drop();
            if sent {
                Err(Failure::Unknown(format!(
                    "no answer from PostgreSQL within {guard:?} of sending the commit"
                )))
            } else {
                Err(Failure::NotStored(sqlx::Error::PoolTimedOut))
            }
        }
    }
}

/// The connection broke: whatever was in flight may or may not have been
/// committed.
fn is_connection_loss(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_)
    )
}

/// `commit_sent` is set just before the statement that commits goes out.
async fn append_group(
    conn: &mut PoolConnection<Postgres>,
    batches: &[&[NewEvent]],
    commit_sent: &AtomicBool,
) -> Result<Vec<Vec<Appended>>, sqlx::Error> {
    let keyed = batches.iter().any(|b| b.iter().any(|e| e.key.is_some()));
    if keyed {
        append_keyed(conn, batches, commit_sent).await
    } else {
        append_plain(conn, batches, commit_sent).await
    }
}

/// A group without idempotency keys: one statement, in autocommit.
async fn append_plain(
    conn: &mut PgConnection,
    batches: &[&[NewEvent]],
    commit_sent: &AtomicBool,
) -> Result<Vec<Vec<Appended>>, sqlx::Error> {
    let mut rows = NewRows::default();
    for ev in batches.iter().flat_map(|b| b.iter()) {
        rows.push_new(ev);
    }
    let n = rows.topics.len() as i64;
    commit_sent.store(true, Ordering::Release);
    let (base, now): (i64, OffsetDateTime) = sqlx::query_as(
        "with head as ( \
           select last_id, greatest(clock_timestamp(), last_time) as now \
           from log_head for update \
         ), ins as ( \
           insert into events (id, topic, type, data, time) \
           select head.last_id + t.ord, t.topic, t.type, t.data::json, head.now \
           from head, unnest($1::text[], $2::text[], $3::text[]) with ordinality \
             as t(topic, type, data, ord) \
         ), upd as ( \
           update log_head set last_id = head.last_id + $4, last_time = head.now from head \
         ) \
         select head.last_id, head.now from head, \
           lateral (select pg_notify($5, case when $6::text is null \
             then (head.last_id + $4)::text \
             else head.last_id || ' ' || (extract(epoch from head.now) * 1000000)::bigint \
               || ' ' || $6 end)) as notified",
    )
    .bind(&rows.topics)
    .bind(&rows.types)
    .bind(&rows.data)
    .bind(n)
    .bind(NOTIFY_CHANNEL)
    .bind(notice::body(batches.iter().flat_map(|b| b.iter())))
    .fetch_one(conn)
    .await?;

    let mut id = base;
    Ok(batches
        .iter()
        .map(|batch| {
            batch
                .iter()
                .map(|ev| {
                    id += 1;
                    Appended {
                        event: stored(ev, id, now),
                        created: true,
                    }
                })
                .collect()
        })
        .collect())
}

fn stored(ev: &NewEvent, id: i64, time: OffsetDateTime) -> StoredEvent {
    StoredEvent {
        id,
        topic: ev.topic.clone(),
        event_type: ev.event_type.clone(),
        data: ev.data.as_str().into(),
        time,
    }
}

/// A group with idempotency keys: under the lock, the keys already stored
/// answer with their original events, and the rest are inserted.
async fn append_keyed(
    conn: &mut PgConnection,
    batches: &[&[NewEvent]],
    commit_sent: &AtomicBool,
) -> Result<Vec<Vec<Appended>>, sqlx::Error> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    let (mut last_id, now): (i64, OffsetDateTime) = sqlx::query_as(
        "select last_id, greatest(clock_timestamp(), last_time) from log_head for update",
    )
    .fetch_one(&mut *tx)
    .await?;

    let mut known = existing_keys(&mut tx, batches).await?;
    let mut rows = NewRows::default();
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches {
        let mut appended = Vec::with_capacity(batch.len());
        for ev in *batch {
            if let Some(original) = ev.key.as_ref().and_then(|k| known.get(k)) {
                appended.push(Appended {
                    event: original.clone(),
                    created: false,
                });
                continue;
            }
            last_id += 1;
            let event = stored(ev, last_id, now);
            if let Some(k) = &ev.key {
                known.insert(k.clone(), event.clone());
            }
            rows.push_new(ev);
            rows.ids.push(last_id);
            appended.push(Appended {
                event,
                created: true,
            });
        }
        out.push(appended);
    }

    if !rows.ids.is_empty() {
        sqlx::query(
            "insert into events (id, topic, type, data, key, key_index, time) \
             select id, topic, type, data::json, key, key_index, $7 \
             from unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[]) \
               as t(id, topic, type, data, key, key_index)",
        )
        .bind(&rows.ids)
        .bind(&rows.topics)
        .bind(&rows.types)
        .bind(&rows.data)
        .bind(&rows.keys)
        .bind(&rows.key_indexes)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // Delivered at commit. The payload is only a hint: listeners read the
        // log after their cursor whatever it says.
        sqlx::query(
            "with upd as (update log_head set last_id = $1, last_time = $2) \
             select pg_notify($3, $1::text)",
        )
        .bind(last_id)
        .bind(now)
        .bind(NOTIFY_CHANNEL)
        .execute(&mut *tx)
        .await?;
    }
    commit_sent.store(true, Ordering::Release);
    tx.commit().await?;
    Ok(out)
}

/// The stored events whose keys this group repeats: in the log, or, for
/// events retention pruned within the key window, in `idempotency_keys`
/// (`migrations/0005_idempotency_window.sql`).
async fn existing_keys(
    tx: &mut sqlx::PgConnection,
    batches: &[&[NewEvent]],
) -> Result<HashMap<IdempotencyKey, StoredEvent>, sqlx::Error> {
    /// An event row with its idempotency key and batch position.
    type KeyedRow = (
        i64,
        String,
        String,
        String,
        OffsetDateTime,
        String,
        Option<i32>,
    );
    let keys: Vec<&str> = batches
        .iter()
        .flat_map(|b| b.iter())
        .filter_map(|e| e.key.as_ref().map(IdempotencyKey::as_str))
        .collect();
    let rows: Vec<KeyedRow> = sqlx::query_as(
        "select id, topic, type, data::text, time, key, key_index from events \
         where key = any($1) \
         union all \
         select id, topic, type, data::text, time, key, key_index from idempotency_keys \
         where key = any($1)",
    )
    .bind(&keys)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, topic, ty, data, time, key, index)| {
            let ev = from_row((id, topic, ty, data, time));
            (IdempotencyKey::from_log(key, index), ev)
        })
        .collect())
}

/// Column arrays for one `insert … select from unnest(…)`, borrowed from
/// the requests: the committer is one task, so nothing is copied here.
#[derive(Default)]
struct NewRows<'a> {
    ids: Vec<i64>,
    topics: Vec<&'a str>,
    types: Vec<&'a str>,
    data: Vec<&'a str>,
    keys: Vec<Option<&'a str>>,
    key_indexes: Vec<Option<i32>>,
}

impl<'a> NewRows<'a> {
    fn push_new(&mut self, ev: &'a NewEvent) {
        self.topics.push(ev.topic.as_str());
        self.types.push(ev.event_type.as_str());
        self.data.push(&ev.data);
        self.keys.push(ev.key.as_ref().map(IdempotencyKey::as_str));
        self.key_indexes
            .push(ev.key.as_ref().and_then(IdempotencyKey::index));
    }
}
