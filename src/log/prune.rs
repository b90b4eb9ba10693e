//! Retention: deleting events older than `--retention` (or beyond
//! `--retention-count`) in small batches, off the publish path. Why
//! batched deletes rather than partitions is in
//! `migrations/0004_retention.sql`.
//!
//! **One instance at a time.** A round starts with `pg_try_advisory_lock`
//! ([`PRUNE_LOCK`]) on a connection of the pruner's own (not the pool's,
//! so a round that is cut short never hands a connection still holding the
//! lock to a request); an instance that does not get it skips the round.
//! The lock is released at the end of the round, or with the connection.
//!
//! **Never a silent gap.** Each batch is one transaction that deletes the
//! events in `(floor, upto]` and then moves `log_head.pruned_through` to
//! `upto`. A snapshot therefore either sees the events and the old floor,
//! or neither and the new floor; readers take the floor in the same
//! statement as their events ([`super::Read`]), so a reader whose cursor is
//! below it knows events may be missing and says so (a reset frame, a
//! 410). The floor is also where the next round starts, so a round cut
//! short (a crash, a lost connection) leaves nothing behind.
//!
//! **Keys outlive their events.** A batch that deletes a keyed event younger
//! than the key window copies it to `idempotency_keys` in the same
//! statement, and each round deletes the copies older than the window, so
//! an idempotency key is honoured for at least the window whatever the
//! retention (`migrations/0005_idempotency_window.sql`).
//!
//! **Never stalls a publish.** A `DELETE` takes ROW EXCLUSIVE on `events`,
//! which does not conflict with the committer's `INSERT`, and row locks on
//! old rows nobody else touches. The `log_head` row, which the committer
//! locks for each group, is updated last, just before the commit, so the
//! batch holds it for one quick `UPDATE` and waits for it at most one
//! group's commit. Batches of [`PRUNE_BATCH`] rows stay far below the
//! `statement_timeout` (`--db-timeout`) the connection carries.

use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use super::Bounds;
use crate::telemetry;

/// Key of the session-level advisory lock that makes one instance prune at
/// a time ("herald" and "pr" in ASCII: nothing else herald locks, and
/// unlikely to meet another application's key in the same database).
pub const PRUNE_LOCK: i64 = 0x6865_7261_6c64_7072;

/// Events deleted per transaction: small enough that one batch is a short
/// transaction (a few MB of WAL at herald's usual event sizes) whose row
/// lock on `log_head` lasts one `UPDATE` and a commit, large enough that a
/// million events take 200 transactions, not thousands. The effect on
/// publish latency is what the `retention` benchmark measures
/// (`BENCHMARKS.md`, "Retention in batches").
pub const PRUNE_BATCH: i64 = 5_000;

/// Shortest time between rounds; `--retention 2s` still removes an event
/// within a few seconds of its expiry.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest time between rounds.
const MAX_INTERVAL: Duration = Duration::from_secs(30);

/// What the log keeps (`--retention`, `--retention-count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Events older than this are pruned; `None` keeps them whatever their
    /// age.
    pub max_age: Option<Duration>,
    /// At most this many of the newest events are kept; `None` is no cap.
    pub max_count: Option<u64>,
    /// How long after its event's commit an idempotency key is honoured,
    /// at least, even if the event is pruned sooner.
    pub key_window: Duration,
}

impl Policy {
    /// `0` means "no limit" for either setting.
    pub fn new(retention: Duration, count: u64, key_window: Duration) -> Self {
        Self {
            max_age: (!retention.is_zero()).then_some(retention),
            max_count: (count > 0).then_some(count),
            key_window,
        }
    }

    /// Whether this instance prunes at all.
    pub fn prunes(&self) -> bool {
        self.max_age.is_some() || self.max_count.is_some()
    }

    /// Time between rounds: a tenth of the retention, between 1 s and 30 s
    /// (30 s with a count cap alone, or when nothing is pruned here and only
    /// the floor other instances move is followed).
    pub fn interval(&self) -> Duration {
        self.max_age.map_or(MAX_INTERVAL, |age| {
            (age / 10).clamp(MIN_INTERVAL, MAX_INTERVAL)
        })
    }
}

/// What a round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Another instance holds [`PRUNE_LOCK`]: nothing done.
    Skipped,
    /// Pruned through `head.pruned_through` (possibly nothing new).
    Done { head: Bounds, deleted: u64 },
    /// Stopped between batches because the instance is stopping.
    Stopped,
}

/// One instance's pruner, with its connection (opened on first use and
/// again after any error).
pub struct Pruner {
    options: PgConnectOptions,
    policy: Policy,
    conn: Option<PgConnection>,
}

impl Pruner {
    /// `options` are the pool's: the same server, and the same
    /// `statement_timeout` and `lock_timeout` (`--db-timeout`).
    pub fn new(options: &PgConnectOptions, policy: Policy) -> Self {
        // Visible as such in `pg_stat_activity`: the pool's name (`herald`,
        // or `herald/<instance>`) and ` pruner`.
        let name = format!(
            "{} pruner",
            options.get_application_name().unwrap_or("herald")
        );
        let options = options
            .clone()
            .application_name(&name)
            // A lost delete only means its events are deleted again by the
            // next round (the floor moved in the same transaction is lost
            // with it, and WAL is replayed in order): no reason to make
            // the committer's fsyncs wait behind this one's.
            .options([("synchronous_commit", "off")]);
        Self {
            options,
            policy,
            conn: None,
        }
    }

    /// One round: take the lock or skip, find how far to prune, delete in
    /// batches up to there, release the lock. Any error drops the
    /// connection (and the lock with it); the next round starts over from
    /// the floor.
    ///
    /// # Errors
    /// The database failed; the floor is wherever the last batch left it.
    pub async fn round(&mut self, stop: &CancellationToken) -> Result<Round, sqlx::Error> {
        let result = self.locked_round(stop).await;
        if result.is_err()
            && let Some(conn) = self.conn.take()
        {
            let _ = conn.close_hard().await;
        }
        result
    }

    async fn locked_round(&mut self, stop: &CancellationToken) -> Result<Round, sqlx::Error> {
        if self.conn.is_none() {
            self.conn = Some(self.options.connect().await?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(PRUNE_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        if !locked {
            return Ok(Round::Skipped);
        }
        let pruned = prune(conn, self.policy, stop).await;
        sqlx::query("select pg_advisory_unlock($1)")
            .bind(PRUNE_LOCK)
            .execute(&mut *conn)
            .await?;
        pruned
    }
}

/// Deletes up to the target in batches; `conn` holds [`PRUNE_LOCK`].
async fn prune(
    conn: &mut PgConnection,
    policy: Policy,
    stop: &CancellationToken,
) -> Result<Round, sqlx::Error> {
    let (mut head, target) = target(conn, policy).await?;
    let mut deleted = 0;
    while head.pruned_through < target {
        if stop.is_cancelled() {
            return Ok(Round::Stopped);
        }
        let upto = target.min(head.pruned_through + PRUNE_BATCH);
        let started = Instant::now();
        let n = delete_batch(conn, head.pruned_through, upto, policy.key_window).await?;
        tracing::debug!(upto, deleted = n, took = ?started.elapsed(), "pruned a batch");
        metrics::counter!(telemetry::RETENTION_PRUNED).increment(n);
        deleted += n;
        head.pruned_through = upto;
    }
    let keys = expire_keys(conn, policy.key_window, stop).await?;
    if deleted > 0 || keys > 0 {
        tracing::info!(
            pruned_through = head.pruned_through,
            deleted,
            expired_keys = keys,
            "retention pruned the log"
        );
    }
    Ok(Round::Done { head, deleted })
}

/// The head, and the id through which `policy` prunes: the newest event
/// older than the retention (found through the `events_time` index; ids
/// follow commit times), or `last_id - count`, whichever is higher. The
/// cutoff time is PostgreSQL's clock, the one that stamped the events.
async fn target(conn: &mut PgConnection, policy: Policy) -> Result<(Bounds, i64), sqlx::Error> {
    let age = policy.max_age.map_or(0.0, |a| a.as_secs_f64());
    let count = policy
        .max_count
        .map_or(0, |c| i64::try_from(c).unwrap_or(i64::MAX));
    let (last_id, pruned_through, target): (i64, i64, i64) = sqlx::query_as(
        "select h.last_id, h.pruned_through, least(h.last_id, greatest( \
           case when $1 > 0 then coalesce( \
             (select e.id - 1 from events e \
              where e.time >= clock_timestamp() - make_interval(secs => $1) \
              order by e.time, e.id limit 1), \
             h.last_id) else 0 end, \
           case when $2 > 0 then h.last_id - $2 else 0 end)) \
         from log_head h",
    )
    .bind(age)
    .bind(count)
    .fetch_one(&mut *conn)
    .await?;
    Ok((
        Bounds {
            last_id,
            pruned_through,
        },
        target,
    ))
}

/// One transaction: the events in `(floor, upto]` go (the keyed ones
/// younger than `key_window` to `idempotency_keys`), then the floor moves
/// to `upto` (the `log_head` row lock is held from that `UPDATE` to the
/// commit, nothing longer). Returns the number of events deleted.
async fn delete_batch(
    conn: &mut PgConnection,
    floor: i64,
    upto: i64,
    key_window: Duration,
) -> Result<u64, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let deleted: i64 = sqlx::query_scalar(
        "with gone as ( \
           delete from events where id > $1 and id <= $2 \
           returning id, topic, type, data, key, key_index, time, traceparent, tracestate \
         ), kept as ( \
           insert into idempotency_keys \
             (id, topic, type, data, key, key_index, time, traceparent, tracestate) \
           select id, topic, type, data, key, key_index, time, traceparent, tracestate \
           from gone \
           where key is not null \
             and time >= clock_timestamp() - make_interval(secs => $3) \
         ) \
         select count(*) from gone",
    )
    .bind(floor)
    .bind(upto)
    .bind(key_window.as_secs_f64())
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("update log_head set pruned_through = $1 where pruned_through < $1")
        .bind(upto)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(u64::try_from(deleted).unwrap_or(0))
}

/// Deletes the keys of pruned events older than `key_window`, in batches
/// of [`PRUNE_BATCH`] (each its own statement, oldest first). Returns how
/// many went.
async fn expire_keys(
    conn: &mut PgConnection,
    key_window: Duration,
    stop: &CancellationToken,
) -> Result<u64, sqlx::Error> {
    let mut expired = 0;
    loop {
        let n = sqlx::query(
            "delete from idempotency_keys where id in ( \
               select id from idempotency_keys \
               where time < clock_timestamp() - make_interval(secs => $1) \
               order by time limit $2)",
        )
        .bind(key_window.as_secs_f64())
        .bind(PRUNE_BATCH)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        expired += n;
        if n < PRUNE_BATCH.unsigned_abs() || stop.is_cancelled() {
            return Ok(expired);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_keeps_everything_and_the_interval_follows_the_retention() {
        let day = Duration::from_secs(86_400);
        let keep = Policy::new(Duration::ZERO, 0, day);
        assert!(!keep.prunes());
        assert_eq!(keep.interval(), MAX_INTERVAL);

        let week = Policy::new(Duration::from_secs(7 * 86_400), 0, day);
        assert!(week.prunes());
        assert_eq!(week.interval(), MAX_INTERVAL);

        let demo = Policy::new(Duration::from_secs(2), 0, day);
        assert_eq!(demo.interval(), MIN_INTERVAL);
        assert_eq!(
            Policy::new(Duration::from_secs(100), 0, day).interval(),
            Duration::from_secs(10)
        );

        let capped = Policy::new(Duration::ZERO, 1000, day);
        assert!(capped.prunes());
        assert_eq!(capped.max_age, None);
        assert_eq!(capped.max_count, Some(1000));
    }

    #[test]
    fn the_defaults_keep_a_week_and_keys_a_day_and_zero_parses() {
        use clap::Parser;
        let c = crate::Config::defaults();
        assert_eq!(c.retention, Duration::from_secs(7 * 86_400));
        assert_eq!(c.retention_count, 0);
        assert_eq!(c.idempotency_window, Duration::from_secs(86_400));

        let c = crate::Config::parse_from(["herald", "--retention", "0"]);
        assert!(!Policy::new(c.retention, c.retention_count, c.idempotency_window).prunes());
        let c = crate::Config::parse_from(["herald", "--retention", "2s", "--retention-count=9"]);
        let p = Policy::new(c.retention, c.retention_count, c.idempotency_window);
        assert_eq!(p.max_age, Some(Duration::from_secs(2)));
        assert_eq!(p.max_count, Some(9));
    }
}
