//! The control channel: commands for the instance that holds a stream,
//! through PostgreSQL. A command is a row of `herald_control` and a NOTIFY
//! on `herald_control`; every instance reads the rows after its cursor when
//! notified, and on a timer (`--poll-interval`, at most half a second), so
//! a lost notification delays a command, never loses it. Writers take one
//! advisory lock, so ids commit in order and a reader passes over none.
//!
//! Kinds:
//! - `topics`: a `PUT` from another instance; the holder applies it and
//!   answers with an `ack` row (`reply_to`), `effective_at` or a reason.
//! - `end`: end a stream, by handle or id (`reason`: `ended`, `superseded`,
//!   or the cap that replaced it, with `cap`).
//! - `revoke`: a subject was revoked; its tokens issued before are refused
//!   here too, and its streams here end.
//! - `ack`: the answer to a `topics` row, for the instance that waits.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{Postgres, Transaction};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{Ack, CONTROL_CHANNEL, CONTROL_LOCK, Registry, parse_topics};
use crate::log::LogError;
use crate::stream::{CapOf, ChangeFailed, Command, Ending};

/// Longest wait between reads without a notification.
const MAX_POLL: Duration = Duration::from_millis(500);
/// Rows read at once.
const PAGE: i64 = 500;

/// A control row to write.
#[derive(Default)]
pub struct Row<'a> {
    pub kind: &'a str,
    pub target: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub topics: Option<&'a [String]>,
    pub reason: Option<&'a str>,
    pub reply_to: Option<i64>,
    pub effective_at: Option<i64>,
    pub cap: Option<i32>,
}

impl Row<'_> {
    pub(super) fn ack(reply_to: i64, ack: Ack) -> Self {
        let (effective_at, reason) = match ack {
            Ack::Applied(at) => (Some(at), None),
            Ack::NotFound => (None, Some("not_found")),
            Ack::Gone => (None, Some("gone")),
            Ack::Failed => (None, Some("failed")),
        };
        Row {
            kind: "ack",
            reply_to: Some(reply_to),
            effective_at,
            reason,
            ..Row::default()
        }
    }
}

/// Writes a control row and its notification (sent at commit).
pub async fn insert(tx: &mut Transaction<'_, Postgres>, row: Row<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CONTROL_LOCK)
        .execute(&mut **tx)
        .await?;
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO herald_control (kind, target, subject, topics, reason, reply_to, \
         effective_at, cap) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(row.kind)
    .bind(row.target)
    .bind(row.subject)
    .bind(row.topics)
    .bind(row.reason)
    .bind(row.reply_to)
    .bind(row.effective_at)
    .bind(row.cap)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CONTROL_CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(id)
}

/// The newest control row: an instance acts on the rows after it.
pub async fn head(registry: &Registry) -> Result<i64, LogError> {
    let (id,): (i64,) = sqlx::query_as("SELECT coalesce(max(id), 0) FROM herald_control")
        .fetch_one(registry.pool())
        .await?;
    Ok(id)
}

/// The revocations in force, at start.
pub async fn load_revocations(registry: &Registry) -> Result<(), LogError> {
    let rows: Vec<(String, OffsetDateTime, OffsetDateTime)> = sqlx::query_as(
        "SELECT subject, revoked_at, expires_at FROM herald_revocations WHERE expires_at > now()",
    )
    .fetch_all(registry.pool())
    .await?;
    for (subject, revoked_at, expires_at) in rows {
        registry.inner.revoked.insert(
            &subject,
            crate::auth::Revocation {
                revoked_at,
                expires_at,
            },
        );
    }
    Ok(())
}

type ControlRow = (
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<Vec<String>>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i32>,
);

pub async fn run(registry: Registry, mut cursor: i64, stop: CancellationToken) {
    let poll = registry.inner.settings.poll_interval.min(MAX_POLL);
    while !stop.is_cancelled() {
        let mut listener = match PgListener::connect_with(registry.pool()).await {
            Ok(mut l) => {
                l.ignore_pool_close_event(true);
                match l.listen(CONTROL_CHANNEL).await {
                    Ok(()) => Some(l),
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN herald_control failed");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "control listener cannot connect to PostgreSQL");
                None
            }
        };
        let mut tick = tokio::time::interval(poll);
        loop {
            cursor = read(&registry, cursor).await;
            let lost = match &mut listener {
                Some(l) => tokio::select! {
                    n = l.try_recv() => n.is_err(),
                    _ = tick.tick() => false,
                    () = stop.cancelled() => return,
                },
                None => tokio::select! {
                    _ = tick.tick() => true,
                    () = stop.cancelled() => return,
                },
            };
            if lost {
                break;
            }
        }
    }
}

/// Acts on the rows after `cursor`; the new cursor.
async fn read(registry: &Registry, cursor: i64) -> i64 {
    let rows: Vec<ControlRow> = match sqlx::query_as(
        "SELECT id, kind, target, subject, topics, reason, reply_to, effective_at, cap \
         FROM herald_control WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(cursor)
    .bind(PAGE)
    .fetch_all(registry.pool())
    .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read control rows");
            return cursor;
        }
    };
    let mut cursor = cursor;
    for row in rows {
        cursor = row.0;
        act(registry, row).await;
    }
    cursor
}

async fn act(registry: &Registry, row: ControlRow) {
    let (id, kind, target, subject, topics, reason, reply_to, effective_at, cap) = row;
    match kind.as_str() {
        "ack" => {
            let Some(reply_to) = reply_to else { return };
            let waiter = registry
                .inner
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&reply_to);
            if let Some(waiter) = waiter {
                let ack = match (effective_at, reason.as_deref()) {
                    (Some(at), _) => Ack::Applied(at),
                    (None, Some("not_found")) => Ack::NotFound,
                    (None, Some("gone")) => Ack::Gone,
                    _ => Ack::Failed,
                };
                let _ = waiter.send(ack);
            }
        }
        "topics" => {
            let Some(handle) = target else { return };
            let holder = {
                let local = registry.local();
                local
                    .handles
                    .get(handle.as_str())
                    .and_then(|key| local.streams.get(key))
                    .cloned()
            };
            let Some(stream) = holder else {
                return;
            };
            let registry = registry.clone();
            if stream.subject.as_deref() != subject.as_deref() {
                answer(&registry, id, Ack::NotFound).await;
                return;
            }
            let filters = parse_topics(&topics.unwrap_or_default());
            let (reply, applied) = tokio::sync::oneshot::channel();
            stream.control.send(Command::Topics {
                filters,
                reply_to: Some(id),
                reply,
            });
            // The stream records the change and the answer together
            // (`Registry::record_change`), unless it could not apply it.
            tokio::spawn(async move {
                match applied.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(ChangeFailed::Unrecorded)) => answer(&registry, id, Ack::Failed).await,
                    Ok(Err(ChangeFailed::Gone)) | Err(_) => answer(&registry, id, Ack::Gone).await,
                }
            });
        }
        "end" => {
            let Some(target) = target else { return };
            let ending = match reason.as_deref() {
                Some("superseded") => Ending::Superseded,
                Some("ended") => Ending::Ended,
                Some(other) => match CapOf::of_reason(other) {
                    Some(cap_of) => Ending::Replaced {
                        cap_of,
                        cap: cap.unwrap_or(0).max(0) as usize,
                    },
                    None => Ending::Ended,
                },
                None => Ending::Ended,
            };
            let key = target
                .strip_prefix(registry.inner.instance.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                .and_then(|key| key.parse::<u64>().ok());
            registry.end_local(|s| s.handle.as_deref() == Some(target.as_str()), ending);
            if let Some(key) = key {
                let local = registry.local();
                if let Some(s) = local.streams.get(&key) {
                    s.control.send(Command::End(ending));
                }
            }
        }
        "revoke" => {
            let Some(subject) = subject else { return };
            let found: Result<Option<(OffsetDateTime, OffsetDateTime)>, _> = sqlx::query_as(
                "SELECT revoked_at, expires_at FROM herald_revocations WHERE subject = $1",
            )
            .bind(&subject)
            .fetch_optional(registry.pool())
            .await;
            if let Ok(Some((revoked_at, expires_at))) = found {
                registry.inner.revoked.insert(
                    &subject,
                    crate::auth::Revocation {
                        revoked_at,
                        expires_at,
                    },
                );
            }
            registry.end_local(
                |s| s.subject.as_deref() == Some(subject.as_str()),
                Ending::Revoked,
            );
        }
        _ => {}
    }
}

/// Answers a `topics` row that this instance could not apply.
async fn answer(registry: &Registry, reply_to: i64, ack: Ack) {
    let result = async {
        let mut tx = registry.pool().begin().await?;
        insert(&mut tx, Row::ack(reply_to, ack)).await?;
        tx.commit().await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot answer a topic change");
    }
}
