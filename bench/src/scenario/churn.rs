//! `churn` (issue 23): streams opened and closed at a steady rate, as a
//! busy site's page loads and closed tabs are, while publishers run at a
//! fixed `--rate`. herald records every stream in PostgreSQL through a
//! batched writer; the questions are whether that writer keeps up (the
//! gauge `herald_registry_write_lag_seconds`, read from `/metrics` every
//! 250 ms) and whether publishing is left alone (publish latency, against
//! a run with `--churn-per-minute 0`: the same publishers without churn).
//!
//! - An open is due every `60 s / --churn-per-minute`, each on a task of
//!   its own, so a slow one delays no other: a connection from the run's
//!   source addresses, `GET` the stream, read until it is open (herald's
//!   `event: stream` frame; nchan sends none, so its response head), then
//!   hold it `--churn-hold`, reading whatever comes, and drop the
//!   connection.
//! - The streams subscribe to `--churn-topics`: by default topics of their
//!   own that nothing is published to, so the churn costs the server
//!   opening, recording and closing streams and no deliveries (`fanout`
//!   measures those); or the publishers' topics.
//! - When the publishers stop, no open starts any more and the held
//!   streams are dropped; opens under way finish or fail, and are counted.
//!   There are no other subscribers: nothing is checked for delivery.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::clients::wait_for;
use super::ctx::{Ctx, Samplers, fresh_topic};
use super::publishing::publish_all;
use crate::http::{self, BodyDecoder, Conn};
use crate::net::Sources;
use crate::report::{ChurnStats, Report};
use crate::sse;
use crate::stats::{self, Percentiles};
use crate::subscriber;
use crate::target::Target;
use crate::track::Correctness;
use crate::workload::ChurnTopics;

/// Longest wait for a stream to open, from its connect.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `/metrics` is read.
const SCRAPE_EVERY: Duration = Duration::from_millis(250);
/// Longest wait for one answer from `/metrics`.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// The gauge herald's registry writer sets after each batch it writes.
const REGISTRY_LAG: &str = "herald_registry_write_lag_seconds";
/// Bytes read from a stream at once.
const READ_BUF: usize = 4 * 1024;

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Report> {
    let p = &ctx.params;
    let topics: Vec<Arc<str>> = (0..p.topics).map(|_| fresh_topic(ctx.scenario)).collect();
    let churn_topics: Arc<[Arc<str>]> = match p.churn_topics {
        ChurnTopics::Published => topics.iter().cloned().collect(),
        ChurnTopics::Quiet => topics
            .iter()
            .map(|t| Arc::from(format!("{t}:quiet")))
            .collect(),
    };

    let samplers = Samplers::start(ctx);
    let started = Instant::now();
    let stop = CancellationToken::new();
    let scraper = tokio::spawn(scrape(ctx.target.addr(), ctx.sources.pick(), stop.clone()));
    let churn = Churn::start(ctx, churn_topics, stop.clone());
    let published = publish_all(ctx, &topics, p.events, p.rate, p.until()).await;
    stop.cancel();
    let window = started.elapsed();
    let churn = churn.finish(window).await;
    let scrapes = scraper.await?;
    let measured = samplers.finish().await;
    let published = published?;
    Ok(Report {
        scenario: ctx.scenario,
        target: ctx.target.kind(),
        params: p.clone(),
        elapsed_s: window.as_secs_f64(),
        publish: Some(published.stats),
        delivery: None,
        catch_up: None,
        idle: None,
        per_user: None,
        retention: None,
        churn: Some(ChurnStats {
            scrapes: scrapes.sent,
            lag_samples: scrapes.lag.len(),
            registry_lag: Percentiles::of(&scrapes.lag),
            ..churn
        }),
        cluster: None,
        round: None,
        correctness: Correctness::default(),
        server: measured.server,
        postgres: measured.postgres,
        client: measured.client,
    })
}

/// The streams opened and dropped on schedule.
struct Churn {
    tally: Arc<Tally>,
    driver: JoinHandle<()>,
}

/// What every stream of the churn needs.
#[derive(Clone)]
struct Plan {
    target: Arc<dyn Target>,
    sources: Arc<Sources>,
    /// Stream n reads topic n mod their number.
    topics: Arc<[Arc<str>]>,
    hold: Duration,
    stop: CancellationToken,
    tally: Arc<Tally>,
}

/// What the streams did, counted as they go.
struct Tally {
    opens: AtomicU64,
    opened: AtomicU64,
    failed: AtomicU64,
    ended_early: AtomicU64,
    /// Streams whose task has not ended: opening or held.
    live: AtomicUsize,
    held: AtomicUsize,
    held_peak: AtomicUsize,
    first_error: Mutex<Option<String>>,
    /// Connect → open, µs.
    open_latency: Mutex<Histogram<u64>>,
}

impl Tally {
    fn new() -> Self {
        Self {
            opens: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            ended_early: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            held_peak: AtomicUsize::new(0),
            first_error: Mutex::new(None),
            open_latency: Mutex::new(stats::histogram()),
        }
    }

    fn opened(&self, took: Duration) {
        self.opened.fetch_add(1, Ordering::Relaxed);
        let mut h = self
            .open_latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        stats::record(&mut h, u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    fn failed(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(why);
    }
}

impl Churn {
    /// Starts opening streams at `--churn-per-minute` until `stop`.
    fn start(ctx: &Ctx, topics: Arc<[Arc<str>]>, stop: CancellationToken) -> Self {
        let tally = Arc::new(Tally::new());
        let plan = Plan {
            target: ctx.target.clone(),
            sources: ctx.sources.clone(),
            topics,
            hold: ctx.params.churn_hold,
            stop,
            tally: tally.clone(),
        };
        let driver = tokio::spawn(drive(plan, ctx.params.churn_per_minute));
        Self { tally, driver }
    }

    /// Once stopped: waits until every stream's task has ended (held ones
    /// end at the stop, opening ones within [`OPEN_TIMEOUT`]) and sums up
    /// over the `window` the opens were started in. The scrapes' fields
    /// are left empty.
    async fn finish(self, window: Duration) -> ChurnStats {
        let _ = self.driver.await;
        let t = &self.tally;
        wait_for(OPEN_TIMEOUT + Duration::from_secs(1), || {
            t.live.load(Ordering::Relaxed) == 0
        })
        .await;
        let opened = t.opened.load(Ordering::Relaxed);
        let latency = t
            .open_latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ChurnStats {
            opens: t.opens.load(Ordering::Relaxed),
            opened,
            failed: t.failed.load(Ordering::Relaxed),
            first_error: t
                .first_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            ended_early: t.ended_early.load(Ordering::Relaxed),
            opened_per_minute: opened as f64 * 60.0 / window.as_secs_f64().max(1e-9),
            open_latency: Percentiles::of(&latency),
            held_peak: t.held_peak.load(Ordering::Relaxed),
            scrapes: 0,
            lag_samples: 0,
            registry_lag: None,
        }
    }
}

/// Starts an open every `60 s / per_minute` (on a fixed schedule, so a
/// late timer is made up at once) until stopped.
async fn drive(plan: Plan, per_minute: u64) {
    if per_minute == 0 {
        return;
    }
    let every = Duration::from_secs_f64(60.0 / per_minute as f64);
    let first = Instant::now();
    let mut n = 0u64;
    loop {
        let due = first + every.mul_f64(n as f64);
        tokio::select! {
            biased;
            () = plan.stop.cancelled() => return,
            () = tokio::time::sleep_until(due.into()) => {}
        }
        let topic = plan.topics[(n % plan.topics.len() as u64) as usize].clone();
        plan.tally.opens.fetch_add(1, Ordering::Relaxed);
        plan.tally.live.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(one(plan.clone(), topic));
        n += 1;
    }
}

/// One stream: opened, held, dropped; counted in the tally.
async fn one(plan: Plan, topic: Arc<str>) {
    let t = &plan.tally;
    let started = Instant::now();
    let opened =
        tokio::time::timeout(OPEN_TIMEOUT, open(&*plan.target, &plan.sources, &topic)).await;
    match opened {
        Ok(Ok(stream)) => {
            t.opened(started.elapsed());
            let held = t.held.fetch_add(1, Ordering::Relaxed) + 1;
            t.held_peak.fetch_max(held, Ordering::Relaxed);
            if !hold(stream, plan.hold, &plan.stop).await {
                t.ended_early.fetch_add(1, Ordering::Relaxed);
            }
            t.held.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(Err(e)) => t.failed(format!("stream open: {e:#}")),
        Err(_) => t.failed(format!("stream open: not open within {OPEN_TIMEOUT:?}")),
    }
    t.live.fetch_sub(1, Ordering::Relaxed);
}

/// A stream that is open, and its body's decoder.
struct Open {
    stream: TcpStream,
    decoder: BodyDecoder,
}

/// Opens a stream of `topic` and reads until it is open: its opening frame
/// or, for a server that sends none, its response head.
async fn open(target: &dyn Target, sources: &Sources, topic: &str) -> anyhow::Result<Open> {
    let (mut stream, head, mut raw) = subscriber::open_stream(target, sources, topic, None).await?;
    let mut decoder = BodyDecoder::new(head.framing);
    let Some(opening) = target.opening_event() else {
        return Ok(Open { stream, decoder });
    };
    let mut parser = sse::Parser::with_capacity(READ_BUF);
    loop {
        decoder.decode(&raw, parser.buffer())?;
        let mut open = false;
        parser.frames(|f| open |= f.event == Some(opening));
        if open {
            return Ok(Open { stream, decoder });
        }
        if decoder.is_done() {
            bail!("the stream ended before its opening frame");
        }
        raw.clear();
        raw.reserve(READ_BUF);
        if stream.read_buf(&mut raw).await? == 0 {
            bail!("the connection closed before the stream's opening frame");
        }
    }
}

/// Holds an open stream for `hold` (or until `stop`), reading and
/// discarding whatever comes, then drops it; false when the server ended
/// it first.
async fn hold(mut open: Open, hold: Duration, stop: &CancellationToken) -> bool {
    let until = tokio::time::sleep(hold);
    tokio::pin!(until);
    let mut raw = Vec::with_capacity(READ_BUF);
    let mut body = Vec::with_capacity(READ_BUF);
    loop {
        raw.clear();
        tokio::select! {
            biased;
            () = &mut until => return true,
            () = stop.cancelled() => return true,
            read = open.stream.read_buf(&mut raw) => {
                if !matches!(read, Ok(n) if n > 0) {
                    return false;
                }
                body.clear();
                if open.decoder.decode(&raw, &mut body).is_err() || open.decoder.is_done() {
                    return false;
                }
            }
        }
    }
}

/// What the reads of `/metrics` found.
struct Scrapes {
    /// Requests sent.
    sent: u64,
    /// Each value of the registry lag gauge read, µs.
    lag: Histogram<u64>,
}

/// Reads `/metrics` every [`SCRAPE_EVERY`] until `stop` and keeps each
/// value of [`REGISTRY_LAG`] (none from a server without it).
async fn scrape(addr: SocketAddr, source: Option<IpAddr>, stop: CancellationToken) -> Scrapes {
    let mut out = Scrapes {
        sent: 0,
        lag: stats::histogram(),
    };
    let request = http::get("/metrics", &addr.to_string(), &[]);
    let mut conn = None;
    let mut tick = tokio::time::interval(SCRAPE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return out,
            _ = tick.tick() => {}
        }
        out.sent += 1;
        let read = tokio::time::timeout(
            SCRAPE_TIMEOUT,
            scrape_once(&mut conn, addr, source, &request),
        )
        .await;
        match read {
            Ok(Ok(Some(secs))) => {
                stats::record(&mut out.lag, (secs * 1e6).round() as u64);
            }
            Ok(Ok(None)) => {}
            // A connection in an unknown state: a new one next time.
            Ok(Err(_)) | Err(_) => conn = None,
        }
    }
}

/// One `GET /metrics` on `conn` (opened if needed): the registry lag, in
/// seconds, if the answer has it.
async fn scrape_once(
    conn: &mut Option<Conn>,
    addr: SocketAddr,
    source: Option<IpAddr>,
    request: &[u8],
) -> anyhow::Result<Option<f64>> {
    if conn.is_none() {
        *conn = Some(Conn::open(addr, source).await?);
    }
    let Some(c) = conn.as_mut() else {
        return Ok(None);
    };
    let res = c.roundtrip(request).await?;
    if res.close {
        *conn = None;
    }
    if res.status != 200 {
        return Ok(None);
    }
    Ok(gauge(&String::from_utf8_lossy(&res.body), REGISTRY_LAG))
}

/// The value of the metric `name` in a Prometheus text exposition: its
/// first sample, with labels or without; `None` when absent (or not a
/// finite number of at least 0).
pub(super) fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let rest = match rest.strip_prefix('{') {
            Some(labels) => &labels[labels.find('}')? + 1..],
            None => rest,
        };
        // `name_total`, `name_bucket`: other metrics.
        if !rest.starts_with([' ', '\t']) {
            return None;
        }
        let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
        (value.is_finite() && value >= 0.0).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_gauge_and_nothing_that_only_starts_with_its_name() {
        let text = "# HELP herald_registry_write_lag_seconds Age of the oldest record.\n\
                    # TYPE herald_registry_write_lag_seconds gauge\n\
                    herald_registry_write_lag_seconds_total 9\n\
                    herald_registry_write_lag_seconds 0.0125\n\
                    herald_streams_active 3\n";
        let labelled = "herald_registry_write_lag_seconds{instance=\"a\"} 1.5 1700000000\n";

        assert_eq!(gauge(text, REGISTRY_LAG), Some(0.0125));
        assert_eq!(gauge(labelled, REGISTRY_LAG), Some(1.5));
        assert_eq!(gauge("herald_streams_active 3\n", REGISTRY_LAG), None);
        assert_eq!(
            gauge("herald_registry_write_lag_seconds NaN\n", REGISTRY_LAG),
            None
        );
    }
}
