//! Connecting to PostgreSQL at start: create the database if it is missing,
//! apply `migrations/`, and fail with one line that says what was tried.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, anyhow};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

/// SQLSTATE for "database does not exist".
const INVALID_CATALOG_NAME: &str = "3D000";
/// SQLSTATE for "database already exists" (another instance won the race).
const DUPLICATE_DATABASE: &str = "42P04";
/// SQLSTATE for a unique violation: what `CREATE DATABASE` reports instead
/// of 42P04 when another instance's `CREATE DATABASE` of the same name
/// commits while this one runs (on `pg_database_datname_index`).
const UNIQUE_VIOLATION: &str = "23505";
/// SQLSTATE for "object in use": `CREATE DATABASE` refuses while another
/// session is connected to its template; it clears at once, so retry.
const OBJECT_IN_USE: &str = "55006";

/// The fewest connections a pool gets, whatever `--db-pool` says: the
/// committer and the listener keep one each (`log/kept.rs`), and replays,
/// history and retention need the others.
pub const MIN_POOL: u32 = 4;

/// Opens the pool, creating the database and running migrations as needed.
/// `sqlx::migrate!` takes an advisory lock, so instances starting together
/// are safe.
///
/// # Errors
/// A one-line message naming the server, database and user tried.
pub async fn connect(
    url: &str,
    instance: Option<&str>,
    pool_size: u32,
    acquire_timeout: Duration,
) -> anyhow::Result<PgPool> {
    // `pg_stat_activity` shows who is who: `herald`, or `herald/<name>`
    // for an instance given a name.
    let application = match instance {
        Some(name) => format!("herald/{name}"),
        None => "herald".to_owned(),
    };
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| anyhow!("DATABASE_URL is not a PostgreSQL URL ({e})"))?
        .application_name(&application);
    let target = describe(&options);
    let fix = "start PostgreSQL or point --database-url / DATABASE_URL at one";

    if let Err(e) = try_connect(&options).await {
        if code(&e).as_deref() == Some(INVALID_CATALOG_NAME) {
            create_database(&options)
                .await
                .with_context(|| format!("cannot create the database at {target}"))?;
        } else {
            return Err(anyhow!(
                "cannot connect to PostgreSQL at {target}: {e}; {fix}"
            ));
        }
    }

    // Migrations on a connection of their own, without the pool's lock
    // timeout: instances starting together wait for each other's migration.
    let mut conn = options
        .connect()
        .await
        .map_err(|e| anyhow!("cannot connect to PostgreSQL at {target}: {e}; {fix}"))?;
    sqlx::migrate!()
        .run(&mut conn)
        .await
        .with_context(|| format!("cannot apply migrations to {target}"))?;
    conn.close().await?;

    // No statement of the service runs, or waits for a lock, longer than a
    // request waits for the database: PostgreSQL itself aborts it, so an
    // instance that died holding the log's lock or a stalled disk costs
    // 503s that are true ("nothing was stored"), not hung requests or
    // appends that commit after their publisher was told they failed.
    //
    // And no statement is compiled by PostgreSQL's JIT. herald's queries
    // are short and prepared once; their generic plans can be estimated
    // far above `jit_above_cost` (a table never analysed, as on a server
    // with autovacuum off, counts as 1,540 rows), and then a 1 ms replay
    // page paid about 80 ms of compilation (EXPLAIN ANALYZE of its generic
    // plan on a log of a million events).
    let limit = format!("{}ms", acquire_timeout.as_millis().max(1));
    let pool = PgPoolOptions::new()
        .max_connections(pool_size.max(MIN_POOL))
        .acquire_timeout(acquire_timeout)
        .connect_with(options.options([
            ("lock_timeout", limit.as_str()),
            ("statement_timeout", limit.as_str()),
            ("jit", "off"),
        ]))
        .await
        .map_err(|e| anyhow!("cannot connect to PostgreSQL at {target}: {e}; {fix}"))?;
    Ok(pool)
}

async fn try_connect(options: &PgConnectOptions) -> Result<(), sqlx::Error> {
    let conn = tokio::time::timeout(Duration::from_secs(10), options.connect())
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    conn.close().await
}

/// Creates the database, safe to race: instances started together (a
/// compose file, a Kubernetes rollout) all try, one creates it, and the
/// others find it created, whichever way PostgreSQL reports that.
async fn create_database(options: &PgConnectOptions) -> anyhow::Result<()> {
    let name = options.get_database().unwrap_or("herald").to_owned();
    let mut admin = options.clone().database("postgres").connect().await?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    let mut attempts = 0;
    loop {
        let created = sqlx::query(sqlx::AssertSqlSafe(format!("create database {quoted}")))
            .execute(&mut admin)
            .await;
        match created.as_ref().map_err(code) {
            Ok(_) => tracing::info!(database = %name, "created the database"),
            Err(Some(c)) if c == DUPLICATE_DATABASE || c == UNIQUE_VIOLATION => {}
            Err(Some(c)) if c == OBJECT_IN_USE && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => return Err(created.expect_err("an error").into()),
        }
        break;
    }
    admin.close().await?;
    Ok(())
}

fn code(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

/// `127.0.0.1:5432 (database "herald", user "postgres")`, no password.
fn describe(o: &PgConnectOptions) -> String {
    format!(
        "{}:{} (database {:?}, user {:?})",
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or("(default)"),
        o.get_username()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the test PostgreSQL (`HERALD_TEST_DATABASE_URL`, as the API
    /// tests): the pool's connections carry the settings herald relies on.
    #[tokio::test]
    async fn pool_connections_time_out_never_jit_and_are_at_least_four() {
        let admin = std::env::var("HERALD_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let base = admin.rsplit_once('/').expect("a database path").0;
        let name = format!("herald_db_unit_{}", std::process::id());
        let pool = connect(&format!("{base}/{name}"), None, 2, Duration::from_secs(3))
            .await
            .expect("PostgreSQL must be running for the tests (see README)");
        assert_eq!(
            pool.options().get_max_connections(),
            MIN_POOL,
            "two kept connections leave room for the rest"
        );
        for (setting, want) in [
            ("jit", "off"),
            ("statement_timeout", "3s"),
            ("lock_timeout", "3s"),
        ] {
            let got: String = sqlx::query_scalar("select current_setting($1)")
                .bind(setting)
                .fetch_one(&pool)
                .await
                .expect("show");
            assert_eq!(got, want, "{setting}");
        }
        pool.close().await;
        let mut conn = PgConnectOptions::from_str(&admin)
            .expect("admin url")
            .connect()
            .await
            .expect("admin connection");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "drop database if exists {name} with (force)"
        )))
        .execute(&mut conn)
        .await
        .expect("drop the test database");
    }
}
