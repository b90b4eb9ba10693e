//! The PostgreSQL event log (not logging): appends in commit order with group
//! commit, idempotency keys, and reads after a cursor.
//!
//! Appends go through one committer task per instance. Concurrent publish
//! requests queue up while a transaction commits and the next transaction
//! takes them all at once, so one fsync serves many requests; each request
//! still gets its answer only after its own commit. Every append transaction
//! locks the single `log_head` row first (see `migrations/`), which serializes
//! appends across all instances and makes id order equal commit order.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::event::{EventType, Filters, IdempotencyKey, StoredEvent, Topic};

/// The channel every append transaction notifies with its last id.
pub const NOTIFY_CHANNEL: &str = "herald_events";

/// Most events one append transaction carries.
const MAX_GROUP_EVENTS: usize = 4096;

/// A validated event waiting to be stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub topic: Topic,
    pub event_type: EventType,
    /// Compact JSON text.
    pub data: String,
    pub key: Option<IdempotencyKey>,
}

/// One event of a publish request after its commit.
#[derive(Debug, Clone)]
pub struct Appended {
    pub event: StoredEvent,
    /// `false` when an earlier request already stored this idempotency key and
    /// this is the original event.
    pub created: bool,
}

/// Why the log could not answer. Carries the driver's message rather than
/// the error itself so that one failed group commit can answer every request
/// in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// PostgreSQL cannot be reached or refused for a transient reason.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Any other database failure.
    #[error("database error: {0}")]
    Database(String),
    /// The committer has stopped (the instance is shutting down).
    #[error("the event log is shutting down")]
    Closed,
}

impl From<sqlx::Error> for LogError {
    fn from(e: sqlx::Error) -> Self {
        if is_transient(&e) {
            Self::Unavailable(e.to_string())
        } else {
            Self::Database(e.to_string())
        }
    }
}

/// SQLSTATE of a `lock_timeout` expiry.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Connection loss, pool exhaustion and server shutdown are worth a retry;
/// SQLSTATE classes 08 (connection), 53 (resources), 57 (operator
/// intervention, including statement timeouts) and 40 (rollback) likewise,
/// and a lock wait that timed out.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c == LOCK_NOT_AVAILABLE || ["08", "53", "57", "40"].iter().any(|p| c.starts_with(p))
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// What the log holds: the newest id ever assigned and the pruning floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub last_id: i64,
    pub pruned_through: i64,
}

struct AppendJob {
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<Vec<Appended>, LogError>>,
}

/// Handle to the event log; cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    pool: PgPool,
    jobs: mpsc::Sender<AppendJob>,
}

type Row = (i64, String, String, String, OffsetDateTime);

fn from_row((id, topic, event_type, data, time): Row) -> StoredEvent {
    StoredEvent {
        id,
        topic: Topic::from_log(topic),
        event_type: EventType::from_log(event_type),
        data: data.into(),
        time,
    }
}

impl EventLog {
    /// Starts the committer task; it ends when every handle is dropped.
    /// `timeout` bounds one append transaction: its waits for the
    /// `log_head` lock and for each statement (an instance that lost its
    /// network mid-append can hold the lock until TCP gives up on it), and
    /// the whole transaction.
    pub fn start(pool: PgPool, timeout: Duration) -> (Self, tokio::task::JoinHandle<()>) {
        let (jobs, rx) = mpsc::channel(16 * 1024);
        let task = tokio::spawn(committer(pool.clone(), rx, timeout));
        (Self { pool, jobs }, task)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Stores the events of one request, all or nothing, and returns them
    /// with their ids once committed.
    ///
    /// # Errors
    /// [`LogError`] when the transaction did not commit: nothing was stored.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>, LogError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(AppendJob { events, reply })
            .await
            .map_err(|_| LogError::Closed)?;
        answer.await.map_err(|_| LogError::Closed)?
    }

    /// Events with an id above `after` that match `filters`, oldest first.
    ///
    /// # Errors
    /// [`LogError`] when the query fails.
    pub async fn read_after(
        &self,
        after: i64,
        filters: &Filters,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let patterns = filters.like_patterns();
        let rows: Vec<Row> = sqlx::query_as(
            "select id, topic, type, data::text, time from events \
             where id > $1 and (cardinality($2::text[]) = 0 or topic like any($2)) \
             order by id limit $3",
        )
        .bind(after)
        .bind(&patterns)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// The most recent `count` events of every topic, oldest first (to warm
    /// the ring at start).
    ///
    /// # Errors
    /// [`LogError`] when the query fails.
    pub async fn read_tail(&self, count: i64) -> Result<Vec<StoredEvent>, LogError> {
        let mut rows: Vec<Row> = sqlx::query_as(
            "select id, topic, type, data::text, time from events order by id desc limit $1",
        )
        .bind(count)
        .fetch_all(&self.pool)
        .await?;
        rows.reverse();
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// The cursor just before the first event committed at or after `time`
    /// (the log's newest id when there is none), so that reading after it
    /// gives every event since `time`. Ids follow commit time, and `time`
    /// is indexed.
    ///
    /// # Errors
    /// [`LogError`] when the query fails.
    pub async fn cursor_at(&self, time: OffsetDateTime) -> Result<i64, LogError> {
        let cursor: i64 = sqlx::query_scalar(
            "select coalesce(\
               (select id - 1 from events where time >= $1 order by time, id limit 1), \
               (select last_id from log_head))",
        )
        .bind(time)
        .fetch_one(&self.pool)
        .await?;
        Ok(cursor)
    }

    /// # Errors
    /// [`LogError`] when the query fails.
    pub async fn head(&self) -> Result<Head, LogError> {
        let (last_id, pruned_through): (i64, i64) =
            sqlx::query_as("select last_id, pruned_through from log_head")
                .fetch_one(&self.pool)
                .await?;
        Ok(Head {
            last_id,
            pruned_through,
        })
    }

    /// Whether PostgreSQL answers within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> bool {
        let q = sqlx::query("select 1").execute(&self.pool);
        matches!(tokio::time::timeout(timeout, q).await, Ok(Ok(_)))
    }
}

/// Takes every job that is waiting (up to a cap) and commits them in one
/// transaction, then answers each.
async fn committer(pool: PgPool, mut rx: mpsc::Receiver<AppendJob>, timeout: Duration) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        let mut count = group[0].events.len();
        while count < MAX_GROUP_EVENTS {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.events.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let batches: Vec<&[NewEvent]> = group.iter().map(|j| j.events.as_slice()).collect();
        // Dropping a timed-out transaction closes its connection, which
        // rolls it back.
        let result = tokio::time::timeout(timeout * 2, append_group(&pool, &batches, timeout))
            .await
            .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut));
        metrics::histogram!(crate::telemetry::APPEND_SECONDS).record(started.elapsed());
        metrics::histogram!(crate::telemetry::APPEND_GROUP_EVENTS).record(count as f64);
        match result {
            Ok(per_job) => {
                for (job, appended) in group.into_iter().zip(per_job) {
                    let _ = job.reply.send(Ok(appended));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, requests = group.len(), events = count, "append failed");
                let err = LogError::from(e);
                for job in group {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
        }
    }
}

/// One append transaction for several requests.
async fn append_group(
    pool: &PgPool,
    batches: &[&[NewEvent]],
    timeout: Duration,
) -> Result<Vec<Vec<Appended>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let millis = format!("{}ms", timeout.as_millis().max(1));
    sqlx::query(
        "select set_config('lock_timeout', $1, true), set_config('statement_timeout', $1, true)",
    )
    .bind(&millis)
    .execute(&mut *tx)
    .await?;
    // The row lock serializes appends across every instance until commit.
    let (mut last_id, now): (i64, OffsetDateTime) =
        sqlx::query_as("select last_id, clock_timestamp() from log_head for update")
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
            let stored = StoredEvent {
                id: last_id,
                topic: ev.topic.clone(),
                event_type: ev.event_type.clone(),
                data: ev.data.as_str().into(),
                time: now,
            };
            if let Some(k) = &ev.key {
                known.insert(k.clone(), stored.clone());
            }
            rows.push(&stored, ev.key.as_ref());
            appended.push(Appended {
                event: stored,
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
        sqlx::query("update log_head set last_id = $1")
            .bind(last_id)
            .execute(&mut *tx)
            .await?;
        // Delivered at commit. The payload is only a hint: listeners read the
        // log after their cursor whatever it says.
        sqlx::query("select pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(last_id.to_string())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(out)
}

/// The stored events whose keys this group repeats.
async fn existing_keys(
    tx: &mut sqlx::PgConnection,
    batches: &[&[NewEvent]],
) -> Result<HashMap<IdempotencyKey, StoredEvent>, sqlx::Error> {
    let keys: Vec<&str> = batches
        .iter()
        .flat_map(|b| b.iter())
        .filter_map(|e| e.key.as_ref().map(IdempotencyKey::as_str))
        .collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
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
    let rows: Vec<KeyedRow> = sqlx::query_as(
        "select id, topic, type, data::text, time, key, key_index from events \
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

/// Column arrays for one `insert … select from unnest(…)`.
#[derive(Default)]
struct NewRows {
    ids: Vec<i64>,
    topics: Vec<String>,
    types: Vec<String>,
    data: Vec<String>,
    keys: Vec<Option<String>>,
    key_indexes: Vec<Option<i32>>,
}

impl NewRows {
    fn push(&mut self, ev: &StoredEvent, key: Option<&IdempotencyKey>) {
        self.ids.push(ev.id);
        self.topics.push(ev.topic.as_str().to_owned());
        self.types.push(ev.event_type.as_str().to_owned());
        self.data.push(ev.data.to_string());
        self.keys.push(key.map(|k| k.as_str().to_owned()));
        self.key_indexes.push(key.and_then(IdempotencyKey::index));
    }
}
