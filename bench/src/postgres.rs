//! The harness's side of PostgreSQL: dropping the fresh database a started
//! herald used, and finding the postmaster whose process tree's CPU is
//! reported beside herald's.

use anyhow::Context;
use sqlx::Connection;

use crate::procfs;

/// PostgreSQL's postmaster on this machine, whose process tree (every
/// backend, the WAL writer, the checkpointer, …) is what PostgreSQL costs:
/// the parent of the backend that answers `select pg_backend_pid()` on
/// `admin_url`.
///
/// # Errors
/// PostgreSQL cannot be reached, or that backend is not a `postgres`
/// process here (PostgreSQL runs on another machine or in another PID
/// namespace).
pub async fn postmaster(admin_url: &str) -> anyhow::Result<u32> {
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .with_context(|| format!("cannot connect to {admin_url}"))?;
    let (backend,): (i32,) = sqlx::query_as("select pg_backend_pid()")
        .fetch_one(&mut conn)
        .await?;
    // Read while the connection, and so the backend, is still there.
    let backend = u32::try_from(backend)?;
    let is_postgres = |pid: u32| procfs::command_name(pid).as_deref() == Some("postgres");
    let postmaster = procfs::parent(backend)
        .filter(|&pm| is_postgres(backend) && is_postgres(pm))
        .with_context(|| {
            format!("PostgreSQL's backend {backend} is not a local `postgres` process")
        })?;
    let _ = conn.close().await;
    Ok(postmaster)
}

/// Drops database `name` through `admin_url`, closing its connections.
///
/// # Errors
/// PostgreSQL cannot be reached or refuses.
pub async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .with_context(|| format!("cannot connect to {admin_url} to drop {name}"))?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database if exists {name} with (force)"
    )))
    .execute(&mut conn)
    .await
    .with_context(|| format!("cannot drop database {name}"))?;
    Ok(())
}
