//! The PostgreSQL event log (not logging): appends in commit order with group
//! commit, idempotency keys, and reads after a cursor.
//!
//! Appends go through one committer task per instance. Concurrent publish
//! requests queue up while a transaction commits and the next transaction
//! takes them all at once, so one fsync serves many requests; each request
//! still gets its answer only after its own commit. Every append transaction
//! locks the single `log_head` row first (see `migrations/`), which serializes
//! appends across all instances and makes id order equal commit order.

use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::event::{
    EventType, Filters, IdempotencyKey, LogSelection, StoredEvent, Topic, TraceContext,
};
use crate::telemetry;

mod append;
mod kept;
mod notice;
mod prune;

use append::{AppendJob, Claim, committer};

pub use append::{
    ANSWER_MARGIN, APPEND_PATH, Batch as ForwardBatch, Cluster, Election, MAX_FORWARD_BODY,
    advertised_url, take_forwarded,
};
pub use kept::Kept;
pub use notice::Notice;
pub use prune::{PRUNE_LOCK, Policy, Pruner, Round};

/// The channel every append transaction notifies with its last id.
pub const NOTIFY_CHANNEL: &str = "herald_events";

/// A validated event waiting to be stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub topic: Topic,
    pub event_type: EventType,
    /// Compact JSON text.
    pub data: String,
    pub key: Option<IdempotencyKey>,
    pub trace: Option<Arc<TraceContext>>,
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
    /// PostgreSQL refused the content of a request (a data exception,
    /// SQLSTATE class 22, or a program limit, class 54): retrying the same
    /// request will not help.
    #[error("PostgreSQL refused the event: {0}")]
    Refused(String),
    /// The commit was sent and no answer came: the events may or may not
    /// be stored. Only an idempotency key makes a retry safe.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The committer has stopped (the instance is shutting down).
    #[error("the event log is shutting down")]
    Closed,
}

impl LogError {
    /// A short, stable name of the failure (an exported span's
    /// `error.type`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::Database(_) => "database",
            Self::Refused(_) => "refused",
            Self::Unknown(_) => "outcome_unknown",
            Self::Closed => "closed",
        }
    }
}

impl From<sqlx::Error> for LogError {
    fn from(e: sqlx::Error) -> Self {
        if is_transient(&e) {
            Self::Unavailable(e.to_string())
        } else if is_refusal_of_content(&e) {
            Self::Refused(e.to_string())
        } else {
            Self::Database(e.to_string())
        }
    }
}

/// Data exceptions (class 22) and program limits (class 54, such as a json
/// value nested too deep for PostgreSQL's parser): the request's content,
/// not the database's state.
fn is_refusal_of_content(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|c| c.starts_with("22") || c.starts_with("54"))
}

/// SQLSTATE of a `lock_timeout` expiry.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Connection loss, pool exhaustion and server shutdown are worth a retry;
/// SQLSTATE classes 08 (connection), 53 (resources), 57 (operator
/// intervention, including statement timeouts) and 40 (rollback) likewise,
/// and a lock wait that timed out.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
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

/// A pool connection, counted in `herald_db_pool_waiting` while it is
/// waited for (sqlx does not say how many wait).
pub(crate) async fn acquire(pool: &PgPool) -> Result<PoolConnection<Postgres>, sqlx::Error> {
    struct Waiting;
    impl Drop for Waiting {
        fn drop(&mut self) {
            metrics::gauge!(telemetry::DB_WAITING).decrement(1.0);
        }
    }
    metrics::gauge!(telemetry::DB_WAITING).increment(1.0);
    let _waiting = Waiting;
    pool.acquire().await
}

/// What the log holds: the newest id ever assigned and the pruning floor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bounds {
    pub last_id: i64,
    /// Every event at or below this id has been pruned (retention); the
    /// oldest event the log may still hold is the next one.
    pub pruned_through: i64,
}

impl Bounds {
    /// The oldest event the log holds, if it holds any: ids are dense, so
    /// every id above the floor up to the newest is held.
    pub fn oldest_held(&self) -> Option<i64> {
        (self.last_id > self.pruned_through).then_some(self.pruned_through + 1)
    }
}

/// Events read after a cursor, with the log's head as the same snapshot
/// saw it. Retention moves `pruned_through` in the transaction that deletes
/// the events below it (see `prune`), so a read whose cursor is below the
/// floor it returns may have had events taken from under it: its caller
/// must say so (a reset, a 410) rather than pass over them.
#[derive(Debug, Clone)]
pub struct Read {
    pub events: Vec<StoredEvent>,
    pub head: Bounds,
}

impl Read {
    /// Whether events after `cursor` may have been pruned before this read.
    pub fn passed_over(&self, cursor: i64) -> bool {
        cursor < self.head.pruned_through
    }
}

/// Handle to the event log; cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    pool: PgPool,
    jobs: mpsc::Sender<AppendJob>,
    /// `--db-timeout`: how long a request waits for the database.
    timeout: Duration,
}

/// An event row as the queries here select it.
type Row = (
    i64,
    String,
    String,
    String,
    OffsetDateTime,
    Option<String>,
    Option<String>,
);

/// The log's head and, unless no event matched, an event row: what a read
/// with its head selects (`log_head left join lateral (…)`).
type HeadRow = (
    i64,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<OffsetDateTime>,
    Option<String>,
    Option<String>,
);

fn read_from_rows(rows: Vec<HeadRow>) -> Read {
    let head = rows.first().map_or_else(Bounds::default, |r| Bounds {
        last_id: r.0,
        pruned_through: r.1,
    });
    let events = rows
        .into_iter()
        .filter_map(|(_, _, id, topic, ty, data, time, parent, state)| {
            Some(from_row((id?, topic?, ty?, data?, time?, parent, state)))
        })
        .collect();
    Read { events, head }
}

fn from_row((id, topic, event_type, data, time, parent, state): Row) -> StoredEvent {
    StoredEvent {
        id,
        topic: Topic::from_log(topic),
        event_type: EventType::from_log(event_type),
        data: data.into(),
        time,
        trace: parent.map(|p| Arc::new(TraceContext::from_log(p, state))),
    }
}

/// The events after `$1` that a reader's filters match, oldest first, at
/// most `$3`, with `data` as text: the parts of
/// [`crate::event::LogSelection`]. Each exact topic (`$2`) is read through
/// the `events_topic_id` index, `(topic, id)`: a per-user topic's replay
/// reads its own events, not every event since its cursor filtered down
/// to a few (which, for a rare topic far behind, was most of the log, and
/// with a few clients replaying took PostgreSQL's CPU from the publishers).
/// Prefixes (`$5`, `LIKE` patterns) and every topic (`$4`) are read in id
/// order through the primary key, which stops at `$3` rows; its condition
/// `$4 or cardinality($5) > 0` involves no column, so PostgreSQL decides it
/// once and skips that scan altogether when there are only exact topics.
macro_rules! matching {
    () => {
        "select id, topic, type, data, time, traceparent, tracestate from ( \
           (select x.id, x.topic, x.type, x.data, x.time, x.traceparent, x.tracestate \
              from unnest($2::text[]) as t(topic) \
              cross join lateral ( \
                select id, topic, type, data::text as data, time, traceparent, tracestate \
                from events \
                where events.topic = t.topic and events.id > $1 \
                order by events.id limit $3 \
              ) x) \
           union all \
           (select id, topic, type, data::text, time, traceparent, tracestate from events \
              where ($4 or cardinality($5::text[]) > 0) and id > $1 \
                and ($4 or topic like any($5)) \
              order by id limit $3) \
         ) m0 order by id limit $3"
    };
}

/// One statement, so one snapshot for the events and the floor.
async fn select_after(
    conn: &mut PgConnection,
    after: i64,
    sel: &LogSelection,
    limit: i64,
) -> Result<Vec<HeadRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "select h.last_id, h.pruned_through, e.id, e.topic, e.type, e.data, e.time, \
           e.traceparent, e.tracestate \
         from log_head h left join lateral (",
        matching!(),
        ") e on true order by e.id"
    ))
    .bind(after)
    .bind(&sel.exact)
    .bind(limit)
    .bind(sel.is_all())
    .bind(&sel.prefixes)
    .fetch_all(conn)
    .await
}

impl EventLog {
    /// Starts the committer task; it ends when every handle is dropped.
    /// `timeout` (`--db-timeout`) bounds every request's wait for the
    /// database: appends and reads answer within it plus [`ANSWER_MARGIN`].
    /// `cluster`: where the groups go while another instance commits for
    /// the cluster (`append/cluster.rs`).
    pub fn start(
        pool: PgPool,
        timeout: Duration,
        cluster: Cluster,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (jobs, rx) = mpsc::channel(16 * 1024);
        let task = tokio::spawn(committer(pool.clone(), rx, timeout, cluster));
        (
            Self {
                pool,
                jobs,
                timeout,
            },
            task,
        )
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Stores the events of one request, all or nothing, and returns them
    /// with their ids once committed.
    ///
    /// # Errors
    /// [`LogError::Unknown`] when the commit was sent and PostgreSQL did not
    /// answer in time: the events may or may not be stored. Any other
    /// [`LogError`]: nothing was stored.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>, LogError> {
        self.append_until(events, Instant::now() + self.timeout)
            .await
    }

    /// As [`Self::append`], waiting for the database until `deadline`
    /// rather than `--db-timeout` from now: a request another instance
    /// forwarded, with the time it had left.
    ///
    /// # Errors
    /// As [`Self::append`].
    pub async fn append_until(
        &self,
        events: Vec<NewEvent>,
        deadline: Instant,
    ) -> Result<Vec<Appended>, LogError> {
        let deadline = deadline.min(Instant::now() + self.timeout);
        let claim = Arc::new(Claim::default());
        let (reply, answer) = oneshot::channel();
        let job = AppendJob {
            events,
            reply,
            deadline,
            claim: claim.clone(),
        };
        let answered = tokio::time::timeout_at(deadline + ANSWER_MARGIN, async {
            self.jobs.send(job).await.map_err(|_| LogError::Closed)?;
            answer.await.map_err(|_| LogError::Closed)?
        })
        .await;
        match answered {
            Ok(result) => result,
            // Still queued: it will never be sent.
            Err(_) if claim.withdraw() => Err(LogError::Unavailable(
                "the event log did not take the request in time".into(),
            )),
            // In a group whose fate PostgreSQL has not told yet.
            Err(_) => Err(LogError::Unknown(
                "no answer from PostgreSQL in time".into(),
            )),
        }
    }

    /// Runs a read within `--db-timeout` plus [`ANSWER_MARGIN`] (the pool
    /// wait and `statement_timeout` bound it too; this covers a database
    /// that stopped answering altogether).
    async fn bounded<T>(
        &self,
        read: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, LogError> {
        match tokio::time::timeout(self.timeout + ANSWER_MARGIN, read).await {
            Ok(result) => result.map_err(LogError::from),
            Err(_) => Err(LogError::Unavailable(
                "no answer from PostgreSQL in time".into(),
            )),
        }
    }

    /// Events with an id above `after` that match `filters`, oldest first,
    /// and the head as of the same snapshot.
    ///
    /// # Errors
    /// [`LogError`] when the query fails.
    pub async fn read_after(
        &self,
        after: i64,
        filters: &Filters,
        limit: i64,
    ) -> Result<Read, LogError> {
        let sel = filters.log_selection();
        let rows = self
            .bounded(async {
                let mut conn = acquire(&self.pool).await?;
                select_after(&mut conn, after, &sel, limit).await
            })
            .await?;
        Ok(read_from_rows(rows))
    }

    /// As [`Self::read_after`] for every topic, on the connection `kept`
    /// keeps between calls: the listener's catch-up, a read per commit.
    ///
    /// # Errors
    /// [`LogError`] when the query fails.
    pub async fn read_all_after(
        &self,
        kept: &mut Kept,
        after: i64,
        limit: i64,
    ) -> Result<Read, LogError> {
        let sel = Filters::default().log_selection();
        let rows = self
            .bounded(async {
                let mut conn = kept.take(&self.pool).await?;
                let rows = select_after(&mut conn, after, &sel, limit).await?;
                kept.keep(conn);
                Ok(rows)
            })
            .await?;
        Ok(read_from_rows(rows))
    }

    /// As [`Self::read_after`], but stopping before the page's `data` would
    /// pass `max_bytes` (the first event is always in it): a replay holds
    /// one such page at a time, whatever the size of the events.
    ///
    /// # Errors
    /// [`LogError`] when the query fails.
    pub async fn read_page(
        &self,
        after: i64,
        filters: &Filters,
        limit: i64,
        max_bytes: i64,
    ) -> Result<Read, LogError> {
        let sel = filters.log_selection();
        let rows: Vec<HeadRow> = self
            .bounded(async {
                let mut conn = acquire(&self.pool).await?;
                sqlx::query_as(concat!(
                    "select h.last_id, h.pruned_through, p.id, p.topic, p.type, p.data, p.time, \
                       p.traceparent, p.tracestate \
                     from log_head h left join lateral ( \
                       select id, topic, type, data, time, traceparent, tracestate from ( \
                         select id, topic, type, data, time, traceparent, tracestate, \
                           sum(octet_length(data)) over (order by id) as upto \
                         from (",
                    matching!(),
                    ") m \
                       ) page \
                       where upto - octet_length(data) < $6 \
                     ) p on true \
                     order by p.id"
                ))
                .bind(after)
                .bind(&sel.exact)
                .bind(limit)
                .bind(sel.is_all())
                .bind(&sel.prefixes)
                .bind(max_bytes)
                .fetch_all(&mut *conn)
                .await
            })
            .await?;
        Ok(read_from_rows(rows))
    }

    /// The most recent `count` events of every topic, oldest first (to warm
    /// the ring at start).
    ///
    /// # Errors
    /// [`LogError`] when the query fails.
    pub async fn read_tail(&self, count: i64) -> Result<Vec<StoredEvent>, LogError> {
        // Once, at start, and possibly large: not held to the request
        // timeout the pool's connections carry.
        let mut tx = self.pool.begin().await?;
        sqlx::query("select set_config('statement_timeout', '0', true)")
            .execute(&mut *tx)
            .await?;
        let mut rows: Vec<Row> = sqlx::query_as(
            "select id, topic, type, data::text, time, traceparent, tracestate from events \
             order by id desc limit $1",
        )
        .bind(count)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.reverse();
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// The cursor just before the first event committed at or after `time`
    /// (the log's newest id when there is none), so that reading after it
    /// gives every event since `time`. Ids follow commit time, and `time`
    /// is indexed. Never below the pruning floor: a time older than what
    /// the log keeps starts at the oldest event it holds.
    ///
    /// # Errors
    /// [`LogError`] when the query fails.
    pub async fn cursor_at(&self, time: OffsetDateTime) -> Result<i64, LogError> {
        let cursor: i64 = self
            .bounded(async {
                let mut conn = acquire(&self.pool).await?;
                sqlx::query_scalar(
                    "select greatest(coalesce(\
                       (select id - 1 from events where time >= $1 order by time, id limit 1), \
                       h.last_id), h.pruned_through) from log_head h",
                )
                .bind(time)
                .fetch_one(&mut *conn)
                .await
            })
            .await?;
        Ok(cursor)
    }

    /// # Errors
    /// [`LogError`] when the query fails.
    pub async fn head(&self) -> Result<Bounds, LogError> {
        let (last_id, pruned_through): (i64, i64) = self
            .bounded(async {
                let mut conn = acquire(&self.pool).await?;
                sqlx::query_as("select last_id, pruned_through from log_head")
                    .fetch_one(&mut *conn)
                    .await
            })
            .await?;
        Ok(Bounds {
            last_id,
            pruned_through,
        })
    }

    /// Whether PostgreSQL answers within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> bool {
        let q = async {
            let mut conn = acquire(&self.pool).await?;
            sqlx::query("select 1").execute(&mut *conn).await
        };
        matches!(tokio::time::timeout(timeout, q).await, Ok(Ok(_)))
    }
}
