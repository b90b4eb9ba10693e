//! The reconnect storm of the `peruser-storm` scenario, in three steps:
//! - [`fill`]: before anyone subscribes, `--fill` events spread over the
//!   run's per-user topics, so the server's ring (herald's default holds
//!   65,536 frames) is full and its log holds them, as on a server that
//!   has been running for a while;
//! - [`drive`]: while events flow, `--storm-after` in, every storm client
//!   is cut off at once, and after `--storm-away` all reconnect at once
//!   with `Last-Event-ID` (the last id each saw), as browsers do after a
//!   deploy. Their cursors are recent, so a server with a ring serves them
//!   from it; what they missed is what was published to their topics while
//!   they were away;
//! - [`stats`]: per client, the rejoin until its stream was open again and
//!   it had every event it missed; and the live subscribers' latency for
//!   the events sent before the cut and during the storm.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::clients::Subscribers;
use super::ctx::Ctx;
use super::publishing::publish_spread;
use crate::payload;
use crate::report::StormStats;
use crate::stats::{self, Percentiles, Timeline};
use crate::subscriber::Outcome;
use crate::workload::{FILL_PUBLISHERS, Params};

/// Events per fill request, where the server takes batches.
const FILL_BATCH: usize = 1000;
/// The shortest window over which the live latency "during the storm" is
/// taken, so that a storm over in a few milliseconds still has samples.
const MIN_STORM_WINDOW: Duration = Duration::from_secs(1);

/// What the fill did.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fill {
    pub(super) events: u64,
    pub(super) elapsed: Duration,
}

/// When the storm happened (ns since the epoch, the clock events carry).
#[derive(Debug, Clone, Copy)]
pub(super) struct Times {
    cut: u64,
    rejoin: u64,
}

/// Publishes `--fill` filler events over `topics`, flat out, in batches.
///
/// # Errors
/// A publish fails, or fewer events were stored than asked for (the storm
/// would not be against a full ring).
pub(super) async fn fill(ctx: &Ctx, topics: &Arc<[Arc<str>]>) -> anyhow::Result<Fill> {
    let p = &ctx.params;
    let filling = Ctx {
        params: Params {
            publishers: FILL_PUBLISHERS,
            batch: FILL_BATCH.min(ctx.target.max_batch()),
            ..p.clone()
        },
        ..ctx.clone()
    };
    let far = Instant::now() + Duration::from_secs(24 * 3600);
    let started = Instant::now();
    let published = publish_spread(&filling, topics, true, Some(p.fill), None, far).await?;
    let events = published.stats.events_acked;
    if events < p.fill {
        bail!(
            "the fill stored only {events} of {} events: {}",
            p.fill,
            published
                .stats
                .first_error
                .as_deref()
                .unwrap_or("no answer")
        );
    }
    Ok(Fill {
        events,
        elapsed: started.elapsed(),
    })
}

/// Cuts the storm group off `--storm-after` from now and has it rejoin
/// `--storm-away` later; `None` without a storm group.
pub(super) async fn drive(group: Option<&Subscribers>, p: &Params) -> Option<Times> {
    let storm = group?.shared.storm.as_ref()?;
    tokio::time::sleep(p.storm_after).await;
    let cut = payload::now_nanos();
    storm.cut.cancel();
    tokio::time::sleep(p.storm_away).await;
    storm.rejoin_now();
    Some(Times {
        cut,
        rejoin: storm.rejoin_nanos.load(Ordering::Relaxed),
    })
}

/// Whether every storm client that has not given up is connected again.
pub(super) fn all_back(group: &Subscribers) -> bool {
    group.shared.storm.as_ref().is_none_or(|s| {
        s.rejoin.is_cancelled()
            && s.rejoined.load(Ordering::Relaxed) + group.failed() >= group.len()
    })
}

/// Sums up the storm: `clients` are the storm group's outcomes, `missing`
/// counts what one never received, `timeline` is the live group's, and
/// `flow_started` when the measured events began (ns since the epoch).
pub(super) fn stats(
    clients: &[Outcome],
    missing: &dyn Fn(&Outcome) -> u64,
    fill: Fill,
    times: Times,
    timeline: Option<&Timeline>,
    flow_started: u64,
) -> StormStats {
    let mut catch_up = stats::histogram();
    let mut caught_up = 0;
    let mut slowest = 0;
    for o in clients {
        let Some(back) = o.rejoined_nanos else {
            continue;
        };
        if o.failed || missing(o) > 0 {
            continue;
        }
        let done = back.max(o.last_missed_nanos.unwrap_or(0));
        let took = done.saturating_sub(times.rejoin);
        stats::record(&mut catch_up, took / 1000);
        slowest = slowest.max(took);
        caught_up += 1;
    }
    let all = caught_up == clients.len();
    // During the storm: from the rejoin until the last client caught up
    // (or, if some never did, until now), and at least a second.
    let until = if all {
        times.rejoin + slowest
    } else {
        payload::now_nanos()
    };
    let window = until
        .saturating_sub(times.rejoin)
        .max(MIN_STORM_WINDOW.as_nanos() as u64);
    StormStats {
        fill_events: fill.events,
        fill_s: fill.elapsed.as_secs_f64(),
        clients: clients.len(),
        caught_up,
        away_ms: times.rejoin.saturating_sub(times.cut) as f64 / 1e6,
        missed_events: clients.iter().map(|o| o.missed).sum(),
        catch_up: Percentiles::of(&catch_up),
        all_caught_up_ms: all.then_some(slowest as f64 / 1e6),
        live_latency_before: timeline.and_then(|t| t.sent_within(flow_started, times.cut)),
        live_latency_during: timeline
            .and_then(|t| t.sent_within(times.rejoin, times.rejoin + window)),
        during_ms: window as f64 / 1e6,
    }
}
