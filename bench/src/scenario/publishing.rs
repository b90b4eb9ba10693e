//! The publishing side of a scenario: a group of publishers on a runtime of
//! their own, each event's topic chosen per publisher or spread over many,
//! and what they got acknowledged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use super::ctx::Ctx;
use crate::cluster::{instance_of, split};
use crate::publisher::{self, Topics};
use crate::report::PublishStats;
use crate::stats::{self, Percentiles};
use crate::track::Bits;

/// What a group of publishers did.
pub(super) struct Published {
    pub(super) acked: Vec<Bits>,
    pub(super) stats: PublishStats,
    /// The same for each instance's publishers (publisher i on instance
    /// i mod n), in instance order; over the same window as `stats`.
    pub(super) per_instance: Vec<PublishStats>,
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
    let instances = ctx.cluster.len();
    let mut total = Totals::new(started);
    let mut per_instance: Vec<Totals> = (0..instances).map(|_| Totals::new(started)).collect();
    let mut acked = Vec::with_capacity(p);
    for (i, o) in outcomes.into_iter().enumerate() {
        let Some(o) = o else {
            acked.push(Bits::default());
            continue;
        };
        total.add(&o);
        per_instance[instance_of(i, instances)].add(&o);
        acked.push(o.acked);
    }
    // Every share over the whole group's window, so they add up.
    let finished = total.finished;
    let last_sent = total.last_sent;
    let shares = split(p, instances);
    Ok(Published {
        acked,
        last_sent,
        stats: total.stats(p, started, finished),
        per_instance: per_instance
            .into_iter()
            .zip(shares)
            .map(|(t, n)| t.stats(n, started, finished))
            .collect(),
    })
}

/// Publishers' outcomes summed up.
struct Totals {
    latency: Histogram<u64>,
    requests: u64,
    acked_events: u64,
    errors: u64,
    first_error: Option<String>,
    finished: Instant,
    last_sent: Option<Instant>,
}

impl Totals {
    fn new(started: Instant) -> Self {
        Self {
            latency: stats::histogram(),
            requests: 0,
            acked_events: 0,
            errors: 0,
            first_error: None,
            finished: started,
            last_sent: None,
        }
    }

    fn add(&mut self, o: &publisher::Outcome) {
        self.latency.add(&o.latency).expect("same bounds");
        self.requests += o.requests;
        self.acked_events += o.acked_events;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        self.finished = self.finished.max(o.finished);
        self.last_sent = self.last_sent.max(o.last_acked_sent);
    }

    /// `publishers` of them, over `started` to `finished`.
    fn stats(self, publishers: usize, started: Instant, finished: Instant) -> PublishStats {
        let secs = finished.duration_since(started).as_secs_f64();
        PublishStats {
            publishers,
            requests: self.requests,
            events_acked: self.acked_events,
            errors: self.errors,
            first_error: self.first_error,
            events_per_sec: if secs > 0.0 {
                self.acked_events as f64 / secs
            } else {
                0.0
            },
            latency: Percentiles::of(&self.latency),
        }
    }
}

/// Runs the publishers on a runtime of their own (`publisher_threads`
/// threads), so that thousands of busy subscriber tasks in the main runtime
/// cannot delay a request or the reading of its answer, which would show up
/// as publish latency and lower the publish rate.
async fn run_publishers(
    ctx: &Ctx,
    plans: Vec<publisher::Plan>,
) -> anyhow::Result<Vec<Option<publisher::Outcome>>> {
    let (cluster, sources) = (ctx.cluster.clone(), ctx.sources.clone());
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
                            // Publisher i on instance i mod n.
                            let target = cluster.member(plan.index as usize).target.clone();
                            tokio::spawn(publisher::run(target, sources.clone(), plan))
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
