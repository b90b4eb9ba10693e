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

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::{Appended, LogError, NOTIFY_CHANNEL, NewEvent, from_row};
use crate::event::{IdempotencyKey, StoredEvent};
use crate::telemetry;

/// Most events one append transaction carries.
const MAX_GROUP_EVENTS: usize = 4096;

pub(super) struct AppendJob {
    pub events: Vec<NewEvent>,
    pub reply: oneshot::Sender<Result<Vec<Appended>, LogError>>,
}

/// Takes every job that is waiting (up to a cap) and commits them in one
/// transaction, then answers each. `timeout` bounds one append.
pub(super) async fn committer(pool: PgPool, mut rx: mpsc::Receiver<AppendJob>, timeout: Duration) {
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
        let started = Instant::now();
        let batches: Vec<&[NewEvent]> = group.iter().map(|j| j.events.as_slice()).collect();
        // Dropping a timed-out append closes its connection, which rolls it
        // back; lock waits are bounded by the connections' lock_timeout.
        let result = tokio::time::timeout(timeout, append_group(&pool, &batches))
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut));
        metrics::histogram!(telemetry::APPEND_SECONDS).record(started.elapsed());
        metrics::histogram!(telemetry::APPEND_GROUP_EVENTS).record(count as f64);
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

async fn append_group(
    pool: &PgPool,
    batches: &[&[NewEvent]],
) -> Result<Vec<Vec<Appended>>, sqlx::Error> {
    let keyed = batches.iter().any(|b| b.iter().any(|e| e.key.is_some()));
    if keyed {
        append_keyed(pool, batches).await
    } else {
        append_plain(pool, batches).await
    }
}

/// A group without idempotency keys: one statement.
async fn append_plain(
    pool: &PgPool,
    batches: &[&[NewEvent]],
) -> Result<Vec<Vec<Appended>>, sqlx::Error> {
    let mut rows = NewRows::default();
    for ev in batches.iter().flat_map(|b| b.iter()) {
        rows.push_new(ev);
    }
    let n = rows.topics.len() as i64;
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
           lateral (select pg_notify($5, (head.last_id + $4)::text)) as notified",
    )
    .bind(&rows.topics)
    .bind(&rows.types)
    .bind(&rows.data)
    .bind(n)
    .bind(NOTIFY_CHANNEL)
    .fetch_one(pool)
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
    pool: &PgPool,
    batches: &[&[NewEvent]],
) -> Result<Vec<Vec<Appended>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
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
    tx.commit().await?;
    Ok(out)
}

/// The stored events whose keys this group repeats.
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
