//! The registry's writer: one task per instance that writes stream records
//! in batches (what queues within [`LINGER`] of a batch's first record, and
//! while the last batch was written), then holds the caps across
//! instances.
//!
//! A batch that fails is kept and tried again a second later: records are
//! late, never lost, while the instance runs. At stop, what is queued is
//! written before the task ends.
//!
//! Caps (`--max-streams-per-subject`, `--max-streams-per-ip`): after a batch
//! that opened streams, the open streams of those subjects and addresses on
//! every instance with a live lease are counted, and the oldest beyond the
//! cap are marked ended (`replaced`) with a control row for their holder,
//! which sends `event: replaced` and ends them. Two instances doing this at
//! once mark the same rows; the update is idempotent.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use sqlx::{Postgres, Transaction};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Opening, Registry, control};
use crate::event::{Filters, topic_list};
use crate::stream::CapOf;
use crate::telemetry;

/// Most records in one batch.
const MAX_BATCH: usize = 2000;
/// How long the writer lets records gather after the first of a batch.
/// Records may be late (the registry is off the delivery path), and one
/// transaction for what comes in 50 ms costs PostgreSQL far less than one
/// per record: at 10,000 opens and closes a minute, writing each as it
/// came took as much of PostgreSQL's CPU as 1,000 publishes a second.
const LINGER: Duration = Duration::from_millis(50);
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A record to write, by the stream's key on this instance (its id is
/// `<instance>.<key>`). Small, and text is made only when the batch is
/// written: a burst of opens waits here by the thousand, and what it
/// allocates meanwhile stays in the process's memory as fragments.
pub enum Op {
    Open(Box<Open>),
    Topics {
        key: u64,
        filters: Filters,
        queued: Instant,
    },
    End {
        key: u64,
        at: OffsetDateTime,
        reason: &'static str,
        last_id: i64,
        /// The id a reset made it go on after, if it sent one.
        reset_after: Option<i64>,
        queued: Instant,
    },
}

pub struct Open {
    key: u64,
    opening: Opening,
    opened_at: OffsetDateTime,
    queued: Instant,
}

impl Op {
    pub fn open(key: u64, opening: Opening) -> Self {
        Self::Open(Box::new(Open {
            key,
            opening,
            opened_at: OffsetDateTime::now_utc(),
            queued: Instant::now(),
        }))
    }

    fn queued(&self) -> Instant {
        match self {
            Self::Open(open) => open.queued,
            Self::Topics { queued, .. } | Self::End { queued, .. } => *queued,
        }
    }
}

pub async fn run(
    registry: Registry,
    mut ops: mpsc::UnboundedReceiver<Op>,
    stop: CancellationToken,
) {
    let mut batch = Vec::new();
    loop {
        if batch.is_empty() {
            let first = tokio::select! {
                op = ops.recv() => op,
                () = stop.cancelled() => {
                    // Write what is queued, then end.
                    while let Ok(op) = ops.try_recv() {
                        batch.push(op);
                    }
                    if !batch.is_empty() {
                        let _ = write(&registry, &batch).await;
                    }
                    return;
                }
            };
            let Some(first) = first else { return };
            batch.push(first);
            tokio::select! {
                () = tokio::time::sleep(LINGER) => {}
                () = stop.cancelled() => {}
            }
        }
        while batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        match write(&registry, &batch).await {
            Ok(()) => {
                let oldest = batch.iter().map(Op::queued).min();
                if let Some(oldest) = oldest {
                    metrics::gauge!(telemetry::REGISTRY_LAG).set(oldest.elapsed().as_secs_f64());
                }
                let opened: Vec<&Open> = batch
                    .iter()
                    .filter_map(|op| match op {
                        Op::Open(open) => Some(&**open),
                        _ => None,
                    })
                    .collect();
                if let Err(e) = hold_caps(&registry, &opened).await {
                    tracing::warn!(error = %e, "cannot hold the stream caps; trying with the next batch");
                }
                batch.clear();
            }
            Err(e) => {
                tracing::warn!(error = %e, records = batch.len(), "cannot write stream records; retrying");
                if let Some(oldest) = batch.iter().map(Op::queued).min() {
                    metrics::gauge!(telemetry::REGISTRY_LAG).set(oldest.elapsed().as_secs_f64());
                }
                tokio::select! {
                    () = tokio::time::sleep(RETRY_AFTER) => {}
                    () = stop.cancelled() => {}
                }
                if stop.is_cancelled() && write(&registry, &batch).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// One batch, one transaction: opens, then topic changes, then ends, so
/// a stream that opened and ended within a batch is recorded as both.
async fn write(registry: &Registry, batch: &[Op]) -> Result<(), sqlx::Error> {
    let mut opens = Columns::default();
    let mut topics: HashMap<u64, &Filters> = HashMap::new();
    let mut ends = Vec::new();
    for op in batch {
        match op {
            Op::Open(open) => opens.push(open, registry),
            Op::Topics { key, filters, .. } => {
                topics.insert(*key, filters);
            }
            Op::End {
                key,
                at,
                reason,
                last_id,
                reset_after,
                ..
            } => ends.push((
                registry.stream_id(*key),
                *at,
                *reason,
                *last_id,
                *reset_after,
            )),
        }
    }
    let mut tx = registry.pool().begin().await?;
    if !opens.id.is_empty() {
        opens.insert(&mut tx).await?;
    }
    if !topics.is_empty() {
        let (ids, lists): (Vec<String>, Vec<String>) = topics
            .into_iter()
            .map(|(key, filters)| (registry.stream_id(key), topics_json(filters)))
            .unzip();
        sqlx::query(
            "UPDATE herald_streams s SET topics = ARRAY(SELECT jsonb_array_elements_text(u.t::jsonb)) \
             FROM UNNEST($1::text[], $2::text[]) AS u(id, t) WHERE s.id = u.id",
        )
        .bind(&ids)
        .bind(&lists)
        .execute(&mut *tx)
        .await?;
    }
    if !ends.is_empty() {
        let ids: Vec<&str> = ends.iter().map(|e| e.0.as_str()).collect();
        let ats: Vec<OffsetDateTime> = ends.iter().map(|e| e.1).collect();
        let reasons: Vec<&str> = ends.iter().map(|e| e.2).collect();
        let last: Vec<i64> = ends.iter().map(|e| e.3).collect();
        let resets: Vec<Option<i64>> = ends.iter().map(|e| e.4).collect();
        // An end decided elsewhere (replaced, revoked, ended) keeps its
        // time and reason; the holder adds the last id written.
        sqlx::query(
            "UPDATE herald_streams s SET ended_at = coalesce(s.ended_at, u.at), \
             end_reason = coalesce(s.end_reason, u.reason), last_id = u.last, \
             reset_after = u.reset \
             FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::int8[], $5::int8[]) \
               AS u(id, at, reason, last, reset) \
             WHERE s.id = u.id",
        )
        .bind(&ids)
        .bind(&ats)
        .bind(&reasons)
        .bind(&last)
        .bind(&resets)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// A stream's topics as the registry's columns take them: a JSON array.
fn topics_json(filters: &Filters) -> String {
    serde_json::to_string(&topic_list(filters)).unwrap_or_default()
}

/// The open records of a batch, column by column.
#[derive(Default)]
struct Columns<'a> {
    id: Vec<String>,
    handle: Vec<Option<&'a str>>,
    subject: Vec<Option<&'a str>>,
    instance: Vec<&'a str>,
    client_addr: Vec<String>,
    user_agent: Vec<Option<&'a str>>,
    topics: Vec<String>,
    opened_at: Vec<OffsetDateTime>,
    start_cursor: Vec<i64>,
    resumed: Vec<bool>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, open: &'a Open, registry: &'a Registry) {
        let o = &open.opening;
        self.id.push(registry.stream_id(open.key));
        self.handle.push(o.handle.as_deref());
        self.subject.push(o.subject.as_deref());
        self.instance.push(registry.instance());
        self.client_addr.push(o.client_addr.to_string());
        self.user_agent.push(o.user_agent.as_deref());
        self.topics.push(topics_json(&o.filters));
        self.opened_at.push(open.opened_at);
        self.start_cursor.push(o.start_cursor);
        self.resumed.push(o.resumed);
    }

    async fn insert(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO herald_streams (id, handle, subject, instance, client_addr, user_agent, \
             topics, opened_at, start_cursor, resumed) \
             SELECT u.id, u.handle, u.subject, u.instance, u.addr, u.agent, \
             ARRAY(SELECT jsonb_array_elements_text(u.topics::jsonb)), u.opened_at, u.start, u.resumed \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
             $7::text[], $8::timestamptz[], $9::int8[], $10::bool[]) \
             AS u(id, handle, subject, instance, addr, agent, topics, opened_at, start, resumed) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&self.id)
        .bind(&self.handle)
        .bind(&self.subject)
        .bind(&self.instance)
        .bind(&self.client_addr)
        .bind(&self.user_agent)
        .bind(&self.topics)
        .bind(&self.opened_at)
        .bind(&self.start_cursor)
        .bind(&self.resumed)
        .execute(&mut **tx)
        .await?;
        if self.handle.iter().any(Option::is_some) {
            // A new handle's record, and its topics from its start; a
            // handle seen before keeps its own.
            sqlx::query(
                "WITH u AS (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[]) \
                 AS u(handle, subject, topics, start) WHERE handle IS NOT NULL), \
                 new AS (INSERT INTO herald_handles (handle, subject, topics) \
                 SELECT handle, subject, ARRAY(SELECT jsonb_array_elements_text(topics::jsonb)) FROM u \
                 ON CONFLICT (handle) DO NOTHING RETURNING handle, topics) \
                 INSERT INTO herald_topic_changes (handle, effective_at, topics) \
                 SELECT new.handle, u.start, new.topics FROM new JOIN u USING (handle) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&self.handle)
            .bind(&self.subject)
            .bind(&self.topics)
            .bind(&self.start_cursor)
            .execute(&mut **tx)
            .await?;
            // An older connection of the same handle, still open in the
            // records, is over: the client is on the new one.
            let handles: Vec<&str> = self.handle.iter().flatten().copied().collect();
            let superseded: Vec<(String,)> = sqlx::query_as(
                "WITH newest AS (SELECT DISTINCT ON (handle) handle, id FROM herald_streams \
                 WHERE handle = ANY($1) AND ended_at IS NULL ORDER BY handle, opened_at DESC, id DESC) \
                 UPDATE herald_streams s SET ended_at = now(), end_reason = 'superseded' \
                 FROM newest WHERE s.handle = newest.handle AND s.id <> newest.id \
                 AND s.ended_at IS NULL RETURNING s.id",
            )
            .bind(&handles)
            .fetch_all(&mut **tx)
            .await?;
            for (id,) in &superseded {
                control::insert(
                    tx,
                    control::Row {
                        kind: "end",
                        target: Some(id),
                        reason: Some("superseded"),
                        ..control::Row::default()
                    },
                )
                .await?;
            }
        }
        Ok(())
    }
}

/// Ends the oldest open streams beyond the caps of the subjects and
/// addresses that just opened streams.
async fn hold_caps(registry: &Registry, opened: &[&Open]) -> Result<(), sqlx::Error> {
    let settings = &registry.inner.settings;
    let subjects: BTreeSet<&str> = opened
        .iter()
        .filter_map(|o| o.opening.subject.as_deref())
        .collect();
    let addresses: BTreeSet<String> = opened
        .iter()
        .map(|o| o.opening.client_addr.to_string())
        .collect();
    let subjects: BTreeSet<String> = subjects.into_iter().map(str::to_owned).collect();
    let caps = [
        (
            CapOf::Subject,
            "subject",
            settings.max_streams_per_subject,
            subjects,
        ),
        (
            CapOf::Address,
            "client_addr",
            settings.max_streams_per_ip,
            addresses,
        ),
    ];
    for (cap_of, column, cap, keys) in caps {
        if cap == 0 || keys.is_empty() {
            continue;
        }
        let keys: Vec<String> = keys.into_iter().collect();
        let mut tx = registry.pool().begin().await?;
        // `column` is one of two names above, never input.
        let over: Vec<(String, Option<String>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH ranked AS (SELECT s.id, row_number() OVER (PARTITION BY s.{column} \
             ORDER BY s.opened_at DESC, s.id DESC) AS n FROM herald_streams s \
             JOIN herald_instances i ON i.id = s.instance AND i.lease_until > now() \
             WHERE s.ended_at IS NULL AND s.{column} = ANY($1)) \
             UPDATE herald_streams s SET ended_at = now(), end_reason = 'replaced' \
             FROM ranked WHERE s.id = ranked.id AND ranked.n > $2 AND s.ended_at IS NULL \
             RETURNING s.id, s.handle"
        )))
        .bind(&keys)
        .bind(cap as i64)
        .fetch_all(&mut *tx)
        .await?;
        if over.is_empty() {
            continue;
        }
        let handles: Vec<&str> = over.iter().filter_map(|(_, h)| h.as_deref()).collect();
        sqlx::query(
            "UPDATE herald_handles SET ended_at = now(), end_reason = 'replaced' \
             WHERE handle = ANY($1) AND ended_at IS NULL",
        )
        .bind(&handles)
        .execute(&mut *tx)
        .await?;
        for (id, _) in &over {
            control::insert(
                &mut tx,
                control::Row {
                    kind: "end",
                    target: Some(id),
                    reason: Some(cap_of.reason()),
                    cap: Some(cap as i32),
                    ..control::Row::default()
                },
            )
            .await?;
        }
        tx.commit().await?;
        tracing::info!(
            cap = cap_of.reason(),
            limit = cap,
            ended = over.len(),
            "streams over a cap replaced"
        );
    }
    Ok(())
}
