//! A connection that one loop keeps from one statement to the next.
//!
//! sqlx tests a connection each time the pool hands it out (a ping, with
//! `test_before_acquire` on by default) and each time it is given back (a
//! ping it always sends): two round trips to PostgreSQL around every
//! statement. The committer and the listener's catch-up each run a
//! statement per commit, so with the pool alone two thirds of herald's
//! messages to PostgreSQL were pings, each waking a backend process. Those
//! two loops keep their connection instead:
//! - the committer tests it before an append ([`Kept::for_appends`]):
//!   a database that went away between two appends is then found before
//!   anything is sent, and the publisher hears "nothing was stored" rather
//!   than "outcome unknown". The test is skipped only for a group that was
//!   already waiting when the connection answered the previous append
//!   ([`Kept::vouch`]): that answer has just shown the connection alive,
//!   and the group is sent at once. Under load nearly every group is such
//!   a group, and the test was a second round trip per append (a third of
//!   herald's messages to PostgreSQL, about 5 % of a core at 5,000
//!   events/s); a connection lost in the instant between the answer and
//!   the next send makes that group's outcome unknown, as a loss during
//!   the statement itself would;
//! - the listener's reads are safe to repeat, so its connection is tested
//!   only after [`IDLE_TEST`] without use ([`Kept::for_reads`]); a read
//!   that fails is retried on the next notification or tick.
//!
//! A kept connection is out of the pool for the pool's other users (a
//! pool has at least 2 connections, `db::connect`), and it is kept only
//! after a statement that succeeded: after an error, a timeout or a
//! cancelled statement the connection goes back through the pool's own
//! release (which pings it and rolls back what is left), or is closed by
//! whoever marked it `close_on_drop`.
//!
//! A connection whose session timeouts were shortened for one statement
//! (the committer does so for a group that waited, `append/group.rs`) is kept
//! with [`Kept::keep_shortened`]: the next take restores them with `RESET`
//! (back to the values the connection was opened with) in place of its
//! test. Closing it instead made an overloaded committer open a new
//! connection for every group, a backend started by PostgreSQL each time,
//! just when every group was waiting.

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgPool, Postgres};
use tokio::time::Instant;

use super::acquire;

/// How long a reader's kept connection may sit unused before it is
/// pinged again, as the pool would ping it.
pub const IDLE_TEST: Duration = Duration::from_secs(1);

pub struct Kept {
    idle: Option<Idle>,
    /// A kept connection unused for this long is pinged before use.
    test_after: Duration,
    /// The next take needs no test ([`Kept::vouch`]).
    vouched: bool,
}

struct Idle {
    conn: PoolConnection<Postgres>,
    since: Instant,
    /// Its session timeouts were changed and must be reset before use.
    shortened: bool,
}

/// Restores the timeouts a shortened statement set (`SET` without `LOCAL`)
/// to the connection's own, from its startup options (`db::connect`).
const RESET_TIMEOUTS: &str = "reset statement_timeout; reset lock_timeout";

impl Kept {
    /// Tested before every use: for statements whose outcome must be
    /// known to be "not stored" when the database has gone.
    pub fn for_appends() -> Self {
        Self {
            idle: None,
            test_after: Duration::ZERO,
            vouched: false,
        }
    }

    /// Tested after [`IDLE_TEST`] without use: for reads.
    pub fn for_reads() -> Self {
        Self {
            idle: None,
            test_after: IDLE_TEST,
            vouched: false,
        }
    }
}

impl Kept {
    /// The connection kept after the last statement, or one from the pool.
    ///
    /// # Errors
    /// The pool's, when it has no connection to give.
    pub async fn take(&mut self, pool: &PgPool) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let vouched = std::mem::take(&mut self.vouched);
        if let Some(Idle {
            mut conn,
            since,
            shortened,
        }) = self.idle.take()
        {
            if !shortened && (vouched || since.elapsed() < self.test_after) {
                return Ok(conn);
            }
            // The reset is a round trip too: it stands for the test.
            let tested = if shortened {
                sqlx::raw_sql(RESET_TIMEOUTS)
                    .execute(&mut *conn)
                    .await
                    .map(drop)
            } else {
                conn.ping().await
            };
            match tested {
                Ok(()) => return Ok(conn),
                Err(e) => {
                    tracing::debug!(error = %e, "kept connection failed its test; taking another");
                    conn.close_on_drop();
                }
            }
        }
        acquire(pool).await
    }

    /// Keeps `conn` for the next statement. Only for a connection whose
    /// last statement succeeded.
    pub fn keep(&mut self, conn: PoolConnection<Postgres>) {
        self.hold(conn, false);
    }

    /// Keeps `conn`, whose last statement succeeded under session timeouts
    /// shorter than its own: the next take resets them first.
    pub fn keep_shortened(&mut self, conn: PoolConnection<Postgres>) {
        self.hold(conn, true);
    }

    fn hold(&mut self, conn: PoolConnection<Postgres>, shortened: bool) {
        self.idle = Some(Idle {
            conn,
            since: Instant::now(),
            shortened,
        });
    }

    /// The next [`Kept::take`] hands the kept connection over untested:
    /// for work that was waiting when it answered, and goes out at once.
    /// When no connection is kept (the last statement failed) that take
    /// goes to the pool, which tests what it hands out, as ever.
    pub fn vouch(&mut self) {
        self.vouched = true;
    }
}

#[cfg(test)]
mod tests {
    use sqlx::PgConnection;
    use sqlx::postgres::PgConnectOptions;

    use super::*;

    /// The test PostgreSQL's admin database: `Kept` needs no schema.
    fn options() -> PgConnectOptions {
        let url = std::env::var("HERALD_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        url.parse().expect("a PostgreSQL URL")
    }

    async fn pool() -> PgPool {
        PgPool::connect_with(options())
            .await
            .expect("PostgreSQL must be running for the tests (see README)")
    }

    async fn backend(conn: &mut PgConnection) -> i32 {
        sqlx::query_scalar("select pg_backend_pid()")
            .fetch_one(conn)
            .await
            .expect("pg_backend_pid")
    }

    /// Takes a connection into `kept` and says which backend it is.
    async fn keep_one(kept: &mut Kept, pool: &PgPool) -> i32 {
        let mut conn = kept.take(pool).await.expect("a connection");
        let pid = backend(&mut conn).await;
        kept.keep(conn);
        pid
    }

    /// Ends backend `pid` from the server's side and waits until it has.
    async fn terminate(pool: &PgPool, pid: i32) {
        let ended: bool = sqlx::query_scalar("select pg_terminate_backend($1, 5000)")
            .bind(pid)
            .fetch_one(pool)
            .await
            .expect("pg_terminate_backend");
        assert!(ended, "the backend exited within the wait");
    }

    #[tokio::test]
    async fn a_kept_connection_serves_the_next_statement_outside_the_pool() {
        let pool = pool().await;
        let mut kept = Kept::for_reads();
        let first = keep_one(&mut kept, &pool).await;
        assert_eq!(pool.num_idle(), 0, "kept, not given back to the pool");
        let mut conn = kept.take(&pool).await.expect("the kept connection");
        assert_eq!(backend(&mut conn).await, first);
        drop(conn);
        pool.close().await;
    }

    #[tokio::test]
    async fn a_kept_connection_that_died_while_idle_is_replaced_before_use() {
        let pool = pool().await;
        let mut kept = Kept::for_appends();
        let first = keep_one(&mut kept, &pool).await;

        // Ended by the server while nobody used it, as a restart would.
        terminate(&pool, first).await;

        let mut conn = kept.take(&pool).await.expect("a live connection");
        let second = backend(&mut conn).await;
        assert_ne!(second, first, "the dead connection was replaced");
        drop(conn);
        pool.close().await;
    }

    #[tokio::test]
    async fn a_vouched_connection_is_handed_over_untested_for_one_take() {
        let pool = pool().await;
        let mut kept = Kept::for_appends();
        let first = keep_one(&mut kept, &pool).await;
        assert_eq!(keep_one(&mut kept, &pool).await, first);

        terminate(&pool, first).await;
        kept.vouch();
        let mut conn = kept.take(&pool).await.expect("the kept connection");
        let untested = sqlx::query("select 1").execute(&mut *conn).await;
        assert!(
            untested.is_err(),
            "handed over without a test: {untested:?}"
        );
        drop(conn);

        // A failed statement keeps nothing, so there is nothing to vouch
        // for, and the next take (without a vouch) tests what it keeps.
        kept.vouch();
        let second = keep_one(&mut kept, &pool).await;
        assert_ne!(second, first);
        terminate(&pool, second).await;
        let mut conn = kept.take(&pool).await.expect("a live connection");
        assert_ne!(backend(&mut conn).await, second, "tested and replaced");
        drop(conn);
        pool.close().await;
    }

    async fn show(conn: &mut PgConnection, setting: &str) -> String {
        sqlx::query_scalar("select current_setting($1)")
            .bind(setting)
            .fetch_one(conn)
            .await
            .expect("current_setting")
    }

    /// Timeouts set for one statement are reset to the connection's own,
    /// from its startup options as `db::connect` gives them, on the same
    /// backend: kept, not replaced. Even a vouched take resets them.
    #[tokio::test]
    async fn a_shortened_connection_is_kept_and_reset_to_its_own_timeouts() {
        let options =
            options().options([("statement_timeout", "4321ms"), ("lock_timeout", "4321ms")]);
        let pool = PgPool::connect_with(options).await.expect("PostgreSQL");
        let mut kept = Kept::for_appends();
        let mut conn = kept.take(&pool).await.expect("a connection");
        let first = backend(&mut conn).await;
        sqlx::query("select set_config('statement_timeout', '25ms', false), set_config('lock_timeout', '25ms', false)")
            .execute(&mut *conn)
            .await
            .expect("set_config");
        assert_eq!(show(&mut conn, "statement_timeout").await, "25ms");
        kept.keep_shortened(conn);

        kept.vouch();
        let mut conn = kept.take(&pool).await.expect("the kept connection");
        assert_eq!(backend(&mut conn).await, first, "kept, not replaced");
        assert_eq!(show(&mut conn, "statement_timeout").await, "4321ms");
        assert_eq!(show(&mut conn, "lock_timeout").await, "4321ms");
        drop(conn);
        pool.close().await;
    }

    /// A shortened connection that died while kept fails its reset and is
    /// replaced, as one failing its test is.
    #[tokio::test]
    async fn a_shortened_connection_that_died_is_replaced() {
        let pool = pool().await;
        let mut kept = Kept::for_appends();
        let mut conn = kept.take(&pool).await.expect("a connection");
        let first = backend(&mut conn).await;
        kept.keep_shortened(conn);
        terminate(&pool, first).await;
        let mut conn = kept.take(&pool).await.expect("a live connection");
        assert_ne!(backend(&mut conn).await, first, "replaced");
        drop(conn);
        pool.close().await;
    }
}
