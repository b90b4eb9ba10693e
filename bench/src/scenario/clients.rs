//! The subscribing side every scenario drives: a group of subscribers
//! (opened, synced, stopped), and the judgement of what they received
//! against what was acknowledged (the publishing side is `publishing`).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::task::JoinHandle;

use super::ctx::Ctx;
use crate::group::Shared;
use crate::payload;
use crate::publisher::Control;
use crate::subscriber::{self, Outcome, Spec};
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
                    ctx.cluster.member(index).target.clone(),
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
