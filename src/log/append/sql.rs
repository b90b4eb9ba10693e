//! The statements of an append: a group without idempotency keys is one
//! statement in autocommit; one with keys looks them up under the lock
//! first, in a transaction of a few statements.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::event::{IdempotencyKey, StoredEvent, TraceContext};
use crate::log::{Appended, NOTIFY_CHANNEL, NewEvent, from_row, notice};

/// A group without idempotency keys: one statement, in autocommit.
pub(super) async fn append_plain(
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
           insert into events (id, topic, type, data, time, traceparent, tracestate) \
           select head.last_id + t.ord, t.topic, t.type, t.data::json, head.now, \
             t.traceparent, t.tracestate \
           from head, unnest($1::text[], $2::text[], $3::text[], $7::text[], $8::text[]) \
             with ordinality as t(topic, type, data, traceparent, tracestate, ord) \
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
    .bind(&rows.traceparents)
    .bind(&rows.tracestates)
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

pub(super) fn stored(ev: &NewEvent, id: i64, time: OffsetDateTime) -> StoredEvent {
    StoredEvent {
        id,
        topic: ev.topic.clone(),
        event_type: ev.event_type.clone(),
        data: ev.data.as_str().into(),
        time,
        trace: ev.trace.clone(),
    }
}

/// A group with idempotency keys: under the lock, the keys already stored
/// answer with their original events, and the rest are inserted.
pub(super) async fn append_keyed(
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
            "insert into events \
               (id, topic, type, data, key, key_index, time, traceparent, tracestate) \
             select id, topic, type, data::json, key, key_index, $7, traceparent, tracestate \
             from unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[], \
               $8::text[], $9::text[]) \
               as t(id, topic, type, data, key, key_index, traceparent, tracestate)",
        )
        .bind(&rows.ids)
        .bind(&rows.topics)
        .bind(&rows.types)
        .bind(&rows.data)
        .bind(&rows.keys)
        .bind(&rows.key_indexes)
        .bind(now)
        .bind(&rows.traceparents)
        .bind(&rows.tracestates)
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
        Option<String>,
        Option<String>,
    );
    let keys: Vec<&str> = batches
        .iter()
        .flat_map(|b| b.iter())
        .filter_map(|e| e.key.as_ref().map(IdempotencyKey::as_str))
        .collect();
    let rows: Vec<KeyedRow> = sqlx::query_as(
        "select id, topic, type, data::text, time, key, key_index, traceparent, tracestate \
         from events where key = any($1) \
         union all \
         select id, topic, type, data::text, time, key, key_index, traceparent, tracestate \
         from idempotency_keys where key = any($1)",
    )
    .bind(&keys)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, topic, ty, data, time, key, index, parent, state)| {
            let ev = from_row((id, topic, ty, data, time, parent, state));
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
    traceparents: Vec<Option<&'a str>>,
    tracestates: Vec<Option<&'a str>>,
}

impl<'a> NewRows<'a> {
    fn push_new(&mut self, ev: &'a NewEvent) {
        self.topics.push(ev.topic.as_str());
        self.types.push(ev.event_type.as_str());
        self.data.push(&ev.data);
        self.keys.push(ev.key.as_ref().map(IdempotencyKey::as_str));
        self.key_indexes
            .push(ev.key.as_ref().and_then(IdempotencyKey::index));
        let trace = ev.trace.as_deref();
        self.traceparents.push(trace.map(TraceContext::traceparent));
        self.tracestates
            .push(trace.and_then(TraceContext::tracestate));
    }
}
