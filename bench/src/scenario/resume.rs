//! `resume` and `storm`: a probe stream learns a cursor (the id of a sync
//! event), K events are published while nobody listens, then clients
//! connect with `Last-Event-ID` = that cursor and the harness times each
//! until it holds all K. `resume` does this one client at a time
//! (`--repeat` times); `storm` with all clients at once.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::clients::{Subscribers, correctness, wait_for};
use super::ctx::{Ctx, Samplers, fresh_topic};
use super::publishing::publish_all;
use crate::publisher::Control;
use crate::report::{CatchUpStats, Report};
use crate::stats::{self, Percentiles};

pub(super) async fn run(ctx: &Ctx, storm: bool) -> anyhow::Result<Report> {
    let p = &ctx.params;
    let topic = [fresh_topic(ctx.scenario)];

    // The cursor: the id of the last sync event, just before the missed ones.
    let probe = Subscribers::spawn(ctx, &topic, 1, None, None);
    probe.wait_established(p.drain_timeout).await?;
    let mut control = Control::new(ctx.target.clone(), &ctx.sources);
    probe.sync(&mut control, &topic, p.drain_timeout).await?;
    let cursor = probe
        .finish()
        .await
        .pop()
        .and_then(|o| o.last_sync_id)
        .context("the probe stream saw no id on its sync event")?;

    // The events the clients missed, published as fast as the server takes them.
    let far = Instant::now() + Duration::from_secs(24 * 3600);
    let published = publish_all(ctx, &topic, Some(p.missed), None, far).await?;
    let k = published.stats.events_acked;
    if k == 0 {
        anyhow::bail!(
            "no missed event could be published: {}",
            published
                .stats
                .first_error
                .as_deref()
                .unwrap_or("no answer")
        );
    }

    let samplers = Samplers::start(ctx);
    let started = Instant::now();
    let (clients, rounds) = if storm {
        (p.subscribers, 1)
    } else {
        (1, p.repeat.max(1))
    };
    let mut times = stats::histogram();
    let mut outcomes = Vec::new();
    let mut all_caught_up = Duration::ZERO;
    for _ in 0..rounds {
        let subs = Subscribers::spawn(ctx, &topic, clients, Some(&cursor), Some(k));
        wait_for(p.drain_timeout, || {
            subs.shared
                .caught_up
                .load(std::sync::atomic::Ordering::Relaxed)
                + subs.failed()
                >= clients
        })
        .await;
        let round = subs.finish().await;
        for o in &round {
            if let Some(t) = o.caught_up {
                stats::record(&mut times, u64::try_from(t.as_micros()).unwrap_or(u64::MAX));
                all_caught_up = all_caught_up.max(t);
            }
        }
        outcomes.extend(round);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let measured = samplers.finish().await;
    let caught_up = outcomes.iter().filter(|o| o.caught_up.is_some()).count();
    let total = clients * rounds;
    let time = Percentiles::of(&times);
    let replay_rate = time
        .as_ref()
        .filter(|t| t.p50_ms > 0.0)
        .map(|t| k as f64 / (t.p50_ms / 1000.0));
    Ok(Report {
        scenario: ctx.scenario,
        target: ctx.target.kind(),
        params: p.clone(),
        elapsed_s: elapsed,
        publish: None,
        delivery: None,
        catch_up: Some(CatchUpStats {
            clients: total,
            caught_up,
            events_per_client: k,
            time,
            all_caught_up_ms: (storm && caught_up == total)
                .then_some(all_caught_up.as_secs_f64() * 1000.0),
            replay_events_per_sec: (!storm).then_some(replay_rate).flatten(),
        }),
        per_user: None,
        retention: None,
        churn: None,
        cluster: None,
        round: None,
        idle: None,
        correctness: correctness(&outcomes, |_| &published.acked, total),
        server: measured.server,
        postgres: measured.postgres,
        client: measured.client,
    })
}
