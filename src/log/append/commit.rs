//! One group's commit, within the time its most pressed request has left,
//! and what a failure says about what was stored.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::time::Instant;

use super::group::AppendJob;
use super::sql::{append_keyed, append_plain};
use super::{ANSWER_MARGIN, MIN_STATEMENT_TIME};
use crate::log::{Appended, Kept, LogError, NewEvent};

/// How an append failed, as far as anyone can know.
pub(super) enum Failure {
    /// Nothing was committed: the statement was never sent, or PostgreSQL
    /// answered with an error.
    NotStored(sqlx::Error),
    /// The group's deadline passed before its commit was sent (waiting for
    /// a connection, or with too little time left to send it): nothing was
    /// stored.
    DeadlinePassed,
    /// The statement that commits was sent and no answer came.
    Unknown(String),
}

impl From<Failure> for LogError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::NotStored(e) => LogError::from(e),
            Failure::DeadlinePassed => {
                LogError::Unavailable("the deadline passed before the commit could be sent".into())
            }
            Failure::Unknown(why) => LogError::Unknown(why),
        }
    }
}

/// Commits one group within the time its most pressed request has left.
pub(super) async fn commit_group(
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
        return Err(Failure::DeadlinePassed);
    }
    let mut conn = match tokio::time::timeout(budget, kept.take(pool)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(Failure::NotStored(e)),
        Err(_) => return Err(Failure::DeadlinePassed),
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
            return Err(Failure::DeadlinePassed);
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
                Err(Failure::DeadlinePassed)
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
