//! `peruser` and `peruser-storm`: every subscriber on a topic of its own
//! (`user:42`, as most subscribers of a notification service are), the
//! publishers' events spread over those topics in turn at a fixed rate, and
//! optionally a few subscribers on every topic (an operator's dashboard:
//! herald `*` or the run's prefix; nchan a channel each event is also
//! published to, see [`Dashboard`]).
//!
//! `peruser-storm` first fills the server's ring and log (`--fill` events
//! before anyone subscribes), then, while events flow, cuts
//! `--storm-clients` more per-user clients off at once and has them all
//! reconnect with `Last-Event-ID` after `--storm-away` (see `peruser_storm`).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::clients::{Subscribers, sync_groups, tally, wait_for};
use super::ctx::{Ctx, Samplers, fresh_topic};
use super::peruser_storm as storm;
use super::publishing::{Published, publish_spread};
use crate::group::{Shared, Storm};
use crate::payload;
use crate::publisher::{Control, spread};
use crate::report::{DeliveryStats, PerUserStats, Report};
use crate::stats::{Percentiles, Timeline};
use crate::subscriber::Outcome;
use crate::target::Dashboard;
use crate::track::Bits;
use crate::workload::Params;

pub(super) async fn run(ctx: &Ctx, with_storm: bool) -> anyhow::Result<Report> {
    let p = &ctx.params;
    let topics = Topics::new(ctx, with_storm);
    let fill = if with_storm {
        Some(storm::fill(ctx, &topics.publish).await?)
    } else {
        None
    };
    let groups = Groups::open(ctx, &topics, with_storm).await?;

    let samplers = Samplers::start(ctx);
    let started = Instant::now();
    let started_nanos = payload::now_nanos();
    let (published, storm_times) = tokio::join!(
        publish_spread(ctx, &topics.publish, false, p.events, p.rate, p.until()),
        storm::drive(groups.storm.as_ref(), p),
    );
    let published = published?;
    let users = topics.users.len();
    let expected = Expected::new(&published, users, p.publishers);
    groups.drain(&expected, p.drain_timeout).await;
    let elapsed = started.elapsed().as_secs_f64();
    let last = groups
        .all()
        .iter()
        .filter_map(|g| g.shared.last_delivery())
        .max();
    let delivering = last.map_or(elapsed, |t| {
        t.saturating_duration_since(started).as_secs_f64()
    });
    let drained = last
        .zip(published.last_sent)
        .map(|(t, sent)| t.saturating_duration_since(sent));
    let measured = samplers.finish().await;

    let deliveries = groups.delivered();
    let Groups {
        live,
        storm: storm_group,
        wildcard,
    } = groups;
    let latency = Percentiles::of(&live.shared.latency.merged());
    let wildcard_latency = wildcard
        .as_ref()
        .and_then(|w| Percentiles::of(&w.shared.latency.merged()));
    let missing = |o: &Outcome| expected.missing(o, users);
    let mut outcomes = Vec::new();
    let mut storm = None;
    if let (Some(g), Some(fill), Some(times)) = (storm_group, fill, storm_times) {
        let clients = g.finish().await;
        let timeline = live.shared.timeline.as_ref();
        storm = Some(storm::stats(
            &clients,
            &missing,
            fill,
            times,
            timeline,
            started_nanos,
        ));
        outcomes.extend(clients);
    }
    outcomes.extend(live.finish().await);
    if let Some(w) = wildcard {
        outcomes.extend(w.finish().await);
    }
    let subscribers = users + p.wildcard_subscribers;
    let correctness = tally(&outcomes, subscribers, expected.deliveries(p), missing);
    Ok(Report {
        scenario: ctx.scenario,
        target: ctx.target.kind(),
        params: p.clone(),
        elapsed_s: elapsed,
        delivery: Some(DeliveryStats {
            deliveries,
            deliveries_per_sec: deliveries as f64 / delivering.max(1e-9),
            // Each event goes to one per-user subscriber and every wildcard one.
            offered_per_sec: p.rate.map(|r| r * (1 + p.wildcard_subscribers) as f64),
            drain_ms: drained.map(|d| d.as_secs_f64() * 1000.0),
            latency,
        }),
        per_user: Some(PerUserStats {
            topics: users,
            wildcard_subscribers: p.wildcard_subscribers,
            wildcard_subscription: topics.dashboard.map(|d| d.subscribe),
            wildcard_deliveries: wildcard_delivered(&outcomes, users),
            wildcard_latency,
            storm,
        }),
        retention: None,
        churn: None,
        cluster: None,
        round: None,
        correctness,
        publish: Some(published.stats),
        catch_up: None,
        idle: None,
        server: measured.server,
        postgres: measured.postgres,
        client: measured.client,
    })
}

/// The run's topics.
struct Topics {
    /// One per per-user subscriber: the live ones' (`<prefix>:u<j>`), then
    /// the storm clients' (`<prefix>:s<j>`).
    users: Vec<Arc<str>>,
    /// What each of those is published as (nchan: with the dashboard's
    /// channel appended, while anyone watches it).
    publish: Arc<[Arc<str>]>,
    /// How the wildcard subscribers are served, if there are any.
    dashboard: Option<Dashboard>,
}

impl Topics {
    fn new(ctx: &Ctx, with_storm: bool) -> Self {
        let p = &ctx.params;
        let prefix = fresh_topic(ctx.scenario);
        let storm_clients = if with_storm { p.storm_clients } else { 0 };
        let users: Vec<Arc<str>> = (0..p.subscribers)
            .map(|j| format!("{prefix}:u{j}").into())
            .chain((0..storm_clients).map(|j| format!("{prefix}:s{j}").into()))
            .collect();
        let dashboard =
            (p.wildcard_subscribers > 0).then(|| ctx.target.dashboard(&prefix, p.wildcard_filter));
        let suffix = dashboard.as_ref().map_or("", |d| d.publish_suffix.as_str());
        let publish = users
            .iter()
            .map(|t| Arc::from(format!("{t}{suffix}")))
            .collect();
        Self {
            users,
            publish,
            dashboard,
        }
    }
}

/// The run's subscribers in three groups, numbered one after another: the
/// live per-user ones (0..N, subscriber j on topic j), the storm clients
/// (N..N+S, likewise), the wildcard ones (after them).
struct Groups {
    live: Subscribers,
    storm: Option<Subscribers>,
    wildcard: Option<Subscribers>,
}

impl Groups {
    /// Opens every stream and waits until each has seen a sync event.
    async fn open(ctx: &Ctx, topics: &Topics, with_storm: bool) -> anyhow::Result<Self> {
        let p = &ctx.params;
        let n = p.subscribers;
        let s = topics.users.len() - n;
        let mut live_shared = Shared::unshared(n, p.connect_concurrency);
        if with_storm {
            live_shared.timeline = Some(Timeline::new(16));
        }
        let live = Subscribers::spawn_group(ctx, &topics.users[..n], 0..n, live_shared);
        let storm = with_storm.then(|| {
            // All at once, as a storm connects.
            let mut shared = Shared::unshared(s, None);
            shared.storm = Some(Storm::default());
            Subscribers::spawn_group(ctx, &topics.users[n..], n..n + s, shared)
        });
        let wildcard = topics.dashboard.as_ref().map(|d| {
            let w = p.wildcard_subscribers;
            let shared = Shared::unshared(w, p.connect_concurrency);
            Subscribers::spawn_group(
                ctx,
                &[d.subscribe.as_str().into()],
                n + s..n + s + w,
                shared,
            )
        });
        let groups = Self {
            live,
            storm,
            wildcard,
        };
        for g in groups.all() {
            g.wait_established(p.drain_timeout).await?;
        }
        let mut control = Control::new(ctx.target.clone(), &ctx.sources);
        sync_groups(
            &mut control,
            &topics.publish,
            &groups.all(),
            p.drain_timeout,
        )
        .await?;
        // Sync events are not measured.
        for g in groups.all() {
            g.shared.latency.reset();
            if let Some(t) = &g.shared.timeline {
                t.reset();
            }
        }
        Ok(groups)
    }

    fn all(&self) -> Vec<&Subscribers> {
        [
            Some(&self.live),
            self.storm.as_ref(),
            self.wildcard.as_ref(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn delivered(&self) -> u64 {
        self.all()
            .iter()
            .map(|g| g.shared.delivered.load(Ordering::Relaxed))
            .sum()
    }

    /// Waits until every group has received what was acknowledged for it
    /// (or `timeout`), and every storm client is back.
    async fn drain(&self, expected: &Expected, timeout: Duration) {
        let users = expected.by_topic.len();
        let n = self.live.len();
        let want = |g: &Subscribers, total: u64| {
            // Subscribers that gave up receive nothing more.
            let live = (g.len() - g.failed()) as u64;
            total * live / g.len().max(1) as u64
        };
        let live = want(&self.live, expected.to_topics(0..n));
        let storm = self
            .storm
            .as_ref()
            .map(|g| (g, want(g, expected.to_topics(n..users))));
        let wildcard = self
            .wildcard
            .as_ref()
            .map(|g| (g, want(g, expected.total * g.len() as u64)));
        let done = |g: &Subscribers, want: u64| g.shared.delivered.load(Ordering::Relaxed) >= want;
        wait_for(timeout, || {
            done(&self.live, live)
                && storm.is_none_or(|(g, w)| done(g, w) && storm::all_back(g))
                && wildcard.is_none_or(|(g, w)| done(g, w))
        })
        .await;
    }
}

/// What each subscriber should receive: subscriber j < topics the events
/// spread to topic j, a wildcard subscriber every acknowledged event.
struct Expected {
    /// (publisher, sequence) of the acknowledged events of each topic.
    by_topic: Vec<Vec<(u32, u64)>>,
    all: Vec<Bits>,
    total: u64,
}

impl Expected {
    fn new(published: &Published, topics: usize, publishers: usize) -> Self {
        let mut by_topic = vec![Vec::new(); topics];
        for (i, acked) in published.acked.iter().enumerate() {
            let i = i as u32;
            for seq in acked.iter() {
                by_topic[spread(i, seq, publishers, topics)].push((i, seq));
            }
        }
        Self {
            total: published.acked.iter().map(Bits::len).sum(),
            by_topic,
            all: published.acked.clone(),
        }
    }

    /// Events acknowledged to the topics in `range`.
    fn to_topics(&self, range: Range<usize>) -> u64 {
        self.by_topic[range].iter().map(|v| v.len() as u64).sum()
    }

    /// Deliveries expected over every subscriber.
    fn deliveries(&self, p: &Params) -> u64 {
        self.to_topics(0..self.by_topic.len()) + self.total * p.wildcard_subscribers as u64
    }

    /// Acknowledged events `o` never received (`users`: subscribers
    /// numbered below it are per-user).
    fn missing(&self, o: &Outcome, users: usize) -> u64 {
        if o.index < users {
            self.by_topic[o.index]
                .iter()
                .filter(|&&(p, s)| !o.tracker.contains(p, s))
                .count() as u64
        } else {
            o.tracker.missing(&self.all)
        }
    }
}

/// Deliveries of measured events to the wildcard subscribers.
fn wildcard_delivered(all: &[Outcome], users: usize) -> u64 {
    all.iter()
        .filter(|o| o.index >= users)
        .map(|o| o.tracker.unique + o.tracker.duplicates)
        .sum()
}
