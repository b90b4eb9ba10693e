//! The publishing side of a scenario: a group of publishers on a runtime of
//! their own, each event's topic chosen per publisher or spread over many,
//! and what they got acknowledged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::ctx::Ctx;
use crate::publisher::{self, Topics};
use crate::report::PublishStats;
use crate::stats::{self, Percentiles};
use crate::track::Bits;

/// What a group of publishers did.
pub(super) struct Published {
    pub(super) acked: Vec<Bits>,
    pub(super) stats: PublishStats,
    /// When the last acknowledged request went out (`None`: none was).
    pub(super) last_sent: Option<Instant>,
}

/// Runs the publishers until `events` (in all) are sent or `until`;
/// publisher i publishes to `topics[i % topics.len()]`.
pub(super) async fn publish_all(
    ctx: &Ctx,
    topics: &[Arc<str>],
    events: Option<u64>,
    rate: Option<f64>,
    until: Instant,
) -> anyhow::Result<Published> {
    let to = |i: usize| Topics::One(topics[i % topics.len()].clone());
    publish_with(ctx, to, false, events, rate, until).await
}

/// As [`publish_all`], with the events spread over `topics` (each to the
/// next in turn, see [`publisher::spread`]); `filler`: events no subscriber
/// counts.
pub(super) async fn publish_spread(
    ctx: &Ctx,
    topics: &Arc<[Arc<str>]>,
    filler: bool,
    events: Option<u64>,
    rate: Option<f64>,
    until: Instant,
) -> anyhow::Result<Published> {
    let publishers = ctx.params.publishers;
    let to = |_| Topics::Spread {
        topics: topics.clone(),
        publishers,
    };
    publish_with(ctx, to, filler, events, rate, until).await
}

async fn publish_with(
    ctx: &Ctx,
    topics_of: impl Fn(usize) -> Topics,
    filler: bool,
    events: Option<u64>,
    rate: Option<f64>,
    until: Instant,
) -> anyhow::Result<Published> {
    let p = ctx.params.publishers;
    let batch = ctx.params.batch;
    let stop = CancellationToken::new();
    let interval = rate.map(|r| Duration::from_secs_f64(p as f64 * batch as f64 / r.max(0.001)));
    let started = Instant::now();
    let plans: Vec<publisher::Plan> = (0..p)
        .map(|i| {
            let share = events.map_or(u64::MAX, |total| {
                total / p as u64 + u64::from((i as u64) < total % p as u64)
            });
            publisher::Plan {
                index: i as u32,
                topics: topics_of(i),
                filler,
                events: share,
                interval,
                // Spread the publishers' schedules over one interval.
                first_due: started
                    + interval.map_or(Duration::ZERO, |iv| iv.mul_f64(i as f64 / p as f64)),
                batch,
                payload_bytes: ctx.params.payload_bytes,
                until,
                stop: stop.clone(),
            }
        })
        .collect();
    let outcomes = run_publishers(ctx, plans).await?;
    let mut acked = Vec::with_capacity(p);
    let mut latency = stats::histogram();
    let (mut requests, mut acked_events, mut errors) = (0, 0, 0);
    let mut first_error = None;
    let mut finished = started;
    let mut last_sent = None;
    for o in outcomes {
        let Some(o) = o else {
            acked.push(Bits::default());
            continue;
        };
        latency.add(&o.latency).expect("same bounds");
        requests += o.requests;
        acked_events += o.acked_events;
        errors += o.errors;
        if first_error.is_none() {
            first_error = o.first_error;
        }
        finished = finished.max(o.finished);
        last_sent = last_sent.max(o.last_acked_sent);
        acked.push(o.acked);
    }
    let secs = finished.duration_since(started).as_secs_f64();
    Ok(Published {
        acked,
        last_sent,
        stats: PublishStats {
            publishers: p,
            requests,
            events_acked: acked_events,
            errors,
            first_error,
            events_per_sec: if secs > 0.0 {
                acked_events as f64 / secs
            } else {
                0.0
            },
            latency: Percentiles::of(&latency),
        },
    })
}

/// Runs the publishers on a runtime of their own (`publisher_threads`
/// threads), so that thousands of busy subscriber tasks in the main runtime
/// cannot delay a request or the reading of its answer, which would show up
/// as publish latency and lower the publish rate.
async fn run_publishers(
    ctx: &Ctx,
    plans: Vec<publisher::Plan>,
) -> anyhow::Result<Vec<Option<publisher::Outcome>>> {
    let (target, sources) = (ctx.target.clone(), ctx.sources.clone());
    let threads = ctx.params.publisher_threads.max(1);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("publishers".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("publisher")
                .enable_all()
                .build();
            let outcomes = runtime.map(|rt| {
                rt.block_on(async move {
                    let handles: Vec<_> = plans
                        .into_iter()
                        .map(|plan| {
                            tokio::spawn(publisher::run(target.clone(), sources.clone(), plan))
                        })
                        .collect();
                    let mut out = Vec::with_capacity(handles.len());
                    for h in handles {
                        out.push(h.await.ok());
                    }
                    out
                })
            });
            let _ = tx.send(outcomes);
        })?;
    Ok(rx.await??)
}
