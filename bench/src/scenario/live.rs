//! `publish` and `fanout`: subscribers open and synced, publishers run, then
//! the harness waits until every acknowledged event has reached every
//! subscriber (or `--drain-timeout`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::clients::{Subscribers, correctness, wait_for};
use super::ctx::{Ctx, Samplers, fresh_topic};
use super::probe::Probe;
use super::publishing::publish_all;
use crate::publisher::Control;
use crate::report::{DeliveryStats, Report};
use crate::stats::Percentiles;
use crate::target::Kind;
use crate::track::Bits;
use crate::workload::{Params, Scenario};

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Report> {
    let p = &ctx.params;
    let topics: Vec<Arc<str>> = (0..p.topics).map(|_| fresh_topic(ctx.scenario)).collect();
    let subs = Subscribers::spawn(ctx, &topics, p.subscribers, None, None);
    subs.wait_established(p.drain_timeout).await?;
    let mut control = Control::new(ctx.target.clone(), &ctx.sources);
    subs.sync(&mut control, &topics, p.drain_timeout).await?;
    // Sync events are not measured.
    subs.shared.latency.reset();

    // Issue 26: what the committers and the log's head lock do meanwhile.
    let probe = if ctx.scenario == Scenario::Publish && ctx.target.kind() == Kind::Herald {
        Some(Probe::start(ctx.cluster.clone()).await)
    } else {
        None
    };
    let samplers = Samplers::start(ctx);
    let started = Instant::now();
    let published = publish_all(ctx, &topics, p.events, p.rate, p.until()).await?;
    let cluster = match probe {
        Some(probe) => Some(probe.finish(published.per_instance.clone()).await),
        None => None,
    };

    // What each topic's subscribers should receive: its publishers' events.
    let n = topics.len();
    let acked_by_topic: Vec<Vec<Bits>> = (0..n)
        .map(|t| {
            (0..published.acked.len())
                .map(|i| {
                    if i % n == t {
                        published.acked[i].clone()
                    } else {
                        Bits::default()
                    }
                })
                .collect()
        })
        .collect();
    let per_topic: Vec<u64> = acked_by_topic
        .iter()
        .map(|a| a.iter().map(Bits::len).sum())
        .collect();
    let all: u64 = (0..subs.len()).map(|i| per_topic[i % n]).sum();
    let live = (subs.len() - subs.failed()) as u64;
    let expected = all * live / subs.len().max(1) as u64;
    wait_for(p.drain_timeout, || {
        subs.shared.delivered.load(Ordering::Relaxed) >= expected
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let last = subs.shared.last_delivery();
    let delivering = last.map_or(elapsed, |t| {
        t.saturating_duration_since(started).as_secs_f64()
    });
    let drained = last
        .zip(published.last_sent)
        .map(|(t, sent)| t.saturating_duration_since(sent));
    let measured = samplers.finish().await;
    let cluster = cluster.map(|mut c| {
        for (i, r) in c.per_instance.iter_mut().zip(&measured.servers) {
            i.cpu_percent = r.as_ref().map(|r| r.cpu_percent);
        }
        c
    });
    let deliveries = subs.shared.delivered.load(Ordering::Relaxed);
    let latency = Percentiles::of(&subs.shared.latency.merged());
    let outcomes = subs.finish().await;
    Ok(Report {
        scenario: ctx.scenario,
        target: ctx.target.kind(),
        params: p.clone(),
        elapsed_s: elapsed,
        delivery: Some(DeliveryStats {
            deliveries,
            deliveries_per_sec: deliveries as f64 / delivering.max(1e-9),
            offered_per_sec: offered(p),
            drain_ms: drained.map(|d| d.as_secs_f64() * 1000.0),
            latency,
        }),
        correctness: correctness(&outcomes, |i| &acked_by_topic[i % n], p.subscribers),
        publish: Some(published.stats),
        catch_up: None,
        per_user: None,
        retention: None,
        churn: None,
        cluster,
        round: None,
        idle: None,
        server: measured.server,
        postgres: measured.postgres,
        client: measured.client,
    })
}

/// Deliveries per second a fixed rate asks for: publisher i's share of the
/// rate goes to the subscribers of topic i mod topics.
fn offered(p: &Params) -> Option<f64> {
    let rate = p.rate?;
    let per_publisher = rate / p.publishers.max(1) as f64;
    let topics = p.topics.max(1);
    // Subscriber j reads topic j mod topics.
    let subscribers_of =
        |t: usize| p.subscribers / topics + usize::from(t < p.subscribers % topics);
    Some(
        (0..p.publishers)
            .map(|i| per_publisher * subscribers_of(i % topics) as f64)
            .sum(),
    )
}
