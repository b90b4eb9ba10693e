//! The two sides every scenario drives: a group of subscribers (opened,
//! synced, stopped, then judged against what was acknowledged) and a group
//! of publishers on a runtime of their own.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ctx::Ctx;
use crate::payload;
use crate::publisher::{self, Control, Topics};
use crate::report::PublishStats;
use crate::stats::{self, Percentiles};
use crate::subscriber::{self, Outcome, Shared, Spec};
use crate::track::{Bits, Correctness};

/// A group of subscribers and what they share.
pub(super) struct Subscribers {
    pub(super) shared: Arc<Shared>,
    handles: Vec<JoinHandle<Outcome>>,
}

impl Subscribers {
    /// `n` subscribers; subscriber i reads `topics[i % topics.len()]`.
    pub(super) fn spawn(
        ctx: &Ctx,
        topics: &[Arc<str>],
        n: usize,
        last_event_id: Option<&[u8]>,
        expect: Option<u64>,
    ) -> Self {
        let shared = Shared::new(n, ctx.params.connect_concurrency);
        Self::start(ctx, topics, 0..n, shared, last_event_id, expect)
    }

    /// A group of subscribers numbered `indexes` (distinct from the other
    /// groups of the run, so the report names each one once), sharing
    /// `shared`; subscriber i reads `topics[(i - indexes.start) % topics.len()]`.
    pub(super) fn spawn_group(
        ctx: &Ctx,
        topics: &[Arc<str>],
        indexes: Range<usize>,
        shared: Shared,
    ) -> Self {
        Self::start(ctx, topics, indexes, Arc::new(shared), None, None)
    }

    fn start(
        ctx: &Ctx,
        topics: &[Arc<str>],
        indexes: Range<usize>,
        shared: Arc<Shared>,
        last_event_id: Option<&[u8]>,
        expect: Option<u64>,
    ) -> Self {
        let first = indexes.start;
        let handles = indexes
            .map(|index| {
                let spec = Spec {
                    index,
                    topic: topics[(index - first) % topics.len()].clone(),
                    last_event_id: last_event_id.map(<[u8]>::to_vec),
                    expect,
                };
                tokio::spawn(subscriber::run(
                    ctx.target.clone(),
                    ctx.sources.clone(),
                    spec,
                    shared.clone(),
                ))
            })
            .collect();
        Self { shared, handles }
    }

    pub(super) fn len(&self) -> usize {
        self.handles.len()
    }

    pub(super) fn failed(&self) -> usize {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Waits until every subscriber has its response head (or gave up).
    pub(super) async fn wait_established(&self, timeout: Duration) -> anyhow::Result<()> {
        let n = self.len();
        let done = wait_for(timeout, || {
            self.shared.established.load(Ordering::Relaxed) + self.failed() >= n
        })
        .await;
        if !done {
            bail!(
                "only {} of {n} streams opened within {timeout:?}",
                self.shared.established.load(Ordering::Relaxed)
            );
        }
        if self.failed() == n {
            let why = self
                .shared
                .first_failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
                .unwrap_or_default();
            bail!("no stream could be opened ({why}); is the server up?");
        }
        Ok(())
    }

    /// Publishes sync events (to each topic) until every live subscriber
    /// has seen one.
    pub(super) async fn sync(
        &self,
        control: &mut Control,
        topics: &[Arc<str>],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        sync_groups(control, topics, &[self], timeout).await
    }

    fn synced(&self) -> bool {
        self.shared.synced.load(Ordering::Relaxed) + self.failed() >= self.len()
    }

    /// Stops every subscriber and collects what each saw.
    pub(super) async fn finish(self) -> Vec<Outcome> {
        self.shared.stop.cancel();
        let mut out = Vec::with_capacity(self.handles.len());
        for h in self.handles {
            if let Ok(o) = h.await {
                out.push(o);
            }
        }
        out
    }
}

/// Publishes a sync event to each topic (batched where the server takes
/// batches) until every live subscriber of every group has seen one. A
/// round is sent again only when the last one stopped making progress, so
/// a server slow to deliver them is not handed round after round that it
/// would still be working through when the measured events start.
pub(super) async fn sync_groups(
    control: &mut Control,
    topics: &[Arc<str>],
    groups: &[&Subscribers],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let synced = || -> usize {
        groups
            .iter()
            .map(|g| g.shared.synced.load(Ordering::Relaxed))
            .sum()
    };
    let mut n = 0;
    loop {
        let round = Instant::now();
        let events: Vec<(&str, String)> = topics.iter().map(|t| (&**t, payload::sync(n))).collect();
        control.publish_many(&events).await?;
        n += 1;
        // A round over thousands of topics takes a while: wait at least as
        // long, and for as long as subscribers keep syncing.
        let wait = round.elapsed().max(Duration::from_millis(200));
        loop {
            let before = synced();
            if wait_for(wait, || groups.iter().all(|g| g.synced())).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                let all: usize = groups.iter().map(|g| g.len()).sum();
                bail!(
                    "only {} of {all} streams received a sync event within {timeout:?}",
                    synced()
                );
            }
            if synced() == before {
                break;
            }
        }
    }
}

/// Polls `done` every 10 ms until it holds (true) or `timeout` (false).
pub(super) async fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sums up what subscribers saw against what was acknowledged: subscriber
/// i expects what the publishers of its topic (`acked_for(i)`) had
/// acknowledged.
pub(super) fn correctness<'a>(
    outcomes: &[Outcome],
    acked_for: impl Fn(usize) -> &'a [Bits],
    subscribers: usize,
) -> Correctness {
    let expected: u64 = (0..subscribers)
        .map(|i| acked_for(i).iter().map(Bits::len).sum::<u64>())
        .sum();
    tally(outcomes, subscribers, expected, |o| {
        o.tracker.missing(acked_for(o.index))
    })
}

/// Sums up what `subscribers` saw, `expected` events in all, of which
/// subscriber `o` never received `missing(o)`.
pub(super) fn tally(
    outcomes: &[Outcome],
    subscribers: usize,
    expected: u64,
    missing: impl Fn(&Outcome) -> u64,
) -> Correctness {
    let mut c = Correctness {
        subscribers,
        expected_per_subscriber: expected / subscribers.max(1) as u64,
        failed_subscribers: subscribers.saturating_sub(outcomes.len()),
        ..Correctness::default()
    };
    for o in outcomes {
        let missing = missing(o);
        let t = &o.tracker;
        c.received += t.unique + t.duplicates;
        c.missing += missing;
        c.duplicates += t.duplicates;
        c.out_of_order += t.out_of_order;
        c.id_regressions += o.id_regressions;
        c.resets += o.resets;
        c.reconnects += o.reconnects;
        if o.failed {
            c.failed_subscribers += 1;
        }
        if missing + t.duplicates + t.out_of_order > 0 {
            c.subscribers_with_errors += 1;
            c.worst
                .push((o.index, missing, t.duplicates, t.out_of_order));
        }
        if c.first_error.is_none() && (o.failed || missing > 0) {
            c.first_error.clone_from(&o.error);
        }
    }
    c.worst
        .sort_by_key(|&(_, m, d, o)| std::cmp::Reverse(m + d + o));
    c.worst.truncate(10);
    c
}

/// What a group of publishers did.
pub(super) struct Published {
    pub(super) acked: Vec<Bits>,
    pub(super) stats: PublishStats,
    /// When the last publisher was done.
    pub(super) finished: Instant,
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
        acked.push(o.acked);
    }
    let secs = finished.duration_since(started).as_secs_f64();
    Ok(Published {
        acked,
        finished,
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
