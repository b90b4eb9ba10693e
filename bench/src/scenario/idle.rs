//! `idle`: open many streams, publish nothing, and read the server's memory
//! before and after: the cost of one open stream. One event is published at
//! the end to check that every stream is still alive.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::clients::{Subscribers, correctness, wait_for};
use super::ctx::{Ctx, Samplers, fresh_topic};
use crate::payload;
use crate::procfs;
use crate::publisher::Control;
use crate::report::{DeliveryStats, IdleStats, Report};
use crate::stats::Percentiles;
use crate::track::Bits;

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Report> {
    let p = &ctx.params;
    let topic = [fresh_topic(ctx.scenario)];
    let mut control = Control::new(ctx.target.clone(), &ctx.sources);
    // A first publish creates whatever the server keeps per topic (nchan's
    // channel) before the baseline, so only streams are counted.
    control.publish(&topic[0], payload::sync(u64::MAX)).await?;
    let before = ctx.processes.server.and_then(procfs::usage);

    let samplers = Samplers::start(ctx);
    let started = Instant::now();
    let subs = Subscribers::spawn(ctx, &topic, p.subscribers, None, None);
    subs.wait_established(p.drain_timeout).await?;
    subs.sync(&mut control, &topic, p.drain_timeout).await?;
    tokio::time::sleep(p.settle).await;
    let after = ctx.processes.server.and_then(procfs::usage);
    let client_fds = crate::net::open_fds();

    // Every stream must still deliver.
    subs.shared.latency.reset();
    let mut acked = Bits::default();
    let data = payload::event(0, 0, payload::now_nanos(), p.payload_bytes);
    let published = control.publish(&topic[0], data).await;
    if published.is_ok() {
        acked.insert(0);
    }
    let live = (subs.len() - subs.failed()) as u64;
    wait_for(p.drain_timeout, || {
        subs.shared.delivered.load(Ordering::Relaxed) >= live
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let measured = samplers.finish().await;
    let deliveries = subs.shared.delivered.load(Ordering::Relaxed);
    let latency = Percentiles::of(&subs.shared.latency.merged());
    let streams = subs.shared.established.load(Ordering::Relaxed);
    let outcomes = subs.finish().await;
    let acked = [acked];
    let mut correctness = correctness(&outcomes, |_| &acked, p.subscribers);
    if let Err(e) = published {
        correctness.first_error = Some(format!("the final publish failed: {e:#}"));
        correctness.missing += live;
    }
    let idle = match (before, after) {
        (Some(b), Some(a)) => Some(IdleStats {
            streams,
            rss_before_kib: b.rss_kib,
            rss_after_kib: a.rss_kib,
            rss_per_stream_bytes: (a.rss_kib as f64 - b.rss_kib as f64) * 1024.0
                / streams.max(1) as f64,
            server_fds_before: b.fds,
            server_fds_after: a.fds,
            client_fds,
        }),
        _ => None,
    };
    Ok(Report {
        scenario: ctx.scenario,
        target: ctx.target.kind(),
        params: p.clone(),
        elapsed_s: elapsed,
        publish: None,
        delivery: Some(DeliveryStats {
            deliveries,
            deliveries_per_sec: 0.0,
            offered_per_sec: None,
            drain_ms: None,
            latency,
        }),
        catch_up: None,
        per_user: None,
        retention: None,
        churn: None,
        cluster: None,
        round: None,
        idle,
        correctness,
        server: measured.server,
        postgres: measured.postgres,
        client: measured.client,
    })
}
