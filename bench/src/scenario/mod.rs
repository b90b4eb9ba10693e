//! The workloads, each written once against [`Target`]:
//! - `publish`: publishers flat out (or at `--rate`), a few subscribers
//!   checking that every acknowledged event arrives;
//! - `fanout`: many subscribers on one topic, publishers at a fixed rate;
//! - `idle`: many open streams and nothing published: memory per stream;
//! - `resume`: one client comes back after K missed events: time to replay;
//! - `storm`: many clients come back at once after K missed events.
//!
//! Every scenario first waits until all its subscribers are live (each has
//! received a sync event), so measured events are never published into a
//! stream that is still opening, and the correctness counters are exact.

mod clients;
mod idle;
mod live;
mod resume;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};

use crate::net::Sources;
use crate::report::Report;
use crate::target::{self, Target};

use clients::{Subscribers, correctness, publish_all, wait_for};

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Publishers flat out (or at --rate): publish throughput and latency.
    Publish,
    /// Many subscribers on one topic, publishers at a fixed rate.
    Fanout,
    /// Open streams, publish nothing: server memory per stream.
    Idle,
    /// One client resumes after K missed events, --repeat times.
    Resume,
    /// Many clients resume after K missed events, all at once.
    Storm,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Publish => "publish",
            Self::Fanout => "fanout",
            Self::Idle => "idle",
            Self::Resume => "resume",
            Self::Storm => "storm",
        })
    }
}

/// How big a run is. [`Params::defaults`] gives each scenario's.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// Open streams (`resume`: ignored, one client per repetition; `storm`:
    /// clients resuming at once).
    pub subscribers: usize,
    /// Concurrent publishers, each one request in flight.
    pub publishers: usize,
    /// Threads of the publishers' own runtime.
    pub publisher_threads: usize,
    /// `publish`, `fanout`: topics; publisher i publishes to topic i mod
    /// topics, subscriber j reads topic j mod topics.
    pub topics: usize,
    /// Events per second over all publishers; `None` is flat out.
    pub rate: Option<f64>,
    /// How long to publish; with `events` too, whichever ends first.
    #[serde(serialize_with = "secs_opt")]
    pub duration: Option<Duration>,
    /// Events to publish in all.
    pub events: Option<u64>,
    /// Events per publish request (capped at what the target accepts).
    pub batch: usize,
    /// Size of each event's data, bytes (0: just the marker, ~50 bytes).
    pub payload_bytes: usize,
    /// `resume`, `storm`: events the clients missed.
    pub missed: u64,
    /// `resume`: clients resumed one after another.
    pub repeat: usize,
    /// Loopback source addresses (0: one per 20,000 connections).
    pub source_addrs: usize,
    /// Connections being opened at once (`None`: all at once).
    pub connect_concurrency: Option<usize>,
    /// `idle`: wait after the streams are open before reading memory.
    #[serde(serialize_with = "secs")]
    pub settle: Duration,
    /// Longest wait for deliveries, catch-ups and connections.
    #[serde(serialize_with = "secs")]
    pub drain_timeout: Duration,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[allow(clippy::ref_option)]
fn secs_opt<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

impl Params {
    /// Each scenario's defaults, sized for the targets in issue #4.
    pub fn defaults(scenario: Scenario) -> Self {
        let base = Self {
            subscribers: 1,
            publishers: 1,
            publisher_threads: 1,
            topics: 1,
            rate: None,
            duration: Some(Duration::from_secs(10)),
            events: None,
            batch: 1,
            payload_bytes: 0,
            missed: 0,
            repeat: 1,
            source_addrs: 0,
            connect_concurrency: Some(512),
            settle: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(30),
        };
        match scenario {
            Scenario::Publish => Self {
                publishers: 64,
                ..base
            },
            Scenario::Fanout => Self {
                subscribers: 1000,
                rate: Some(100.0),
                ..base
            },
            Scenario::Idle => Self {
                subscribers: 10_000,
                ..base
            },
            Scenario::Resume => Self {
                publishers: 4,
                batch: 100,
                missed: 10_000,
                repeat: 5,
                ..base
            },
            Scenario::Storm => Self {
                subscribers: 2000,
                publishers: 4,
                batch: 100,
                missed: 100,
                connect_concurrency: None,
                ..base
            },
        }
    }

    /// One line naming the scenario's size.
    pub fn describe(&self, scenario: Scenario) -> String {
        let rate = self
            .rate
            .map_or_else(|| "flat out".to_owned(), |r| format!("{r}/s"));
        let length = match (self.events, self.duration) {
            (Some(e), Some(d)) => format!("{e} events or {}", humantime::format_duration(d)),
            (Some(e), None) => format!("{e} events"),
            (None, Some(d)) => humantime::format_duration(d).to_string(),
            (None, None) => "-".into(),
        };
        match scenario {
            Scenario::Publish | Scenario::Fanout => format!(
                "scenario {scenario}: {} subscribers, {} publishers {rate}, {} topic(s), batch {}, {length}, payload {} B",
                self.subscribers, self.publishers, self.topics, self.batch, self.payload_bytes
            ),
            Scenario::Idle => format!("scenario idle: {} open streams", self.subscribers),
            Scenario::Resume => format!(
                "scenario resume: {} missed events, {} resumes one after another",
                self.missed, self.repeat
            ),
            Scenario::Storm => format!(
                "scenario storm: {} clients resuming at once, {} missed events each",
                self.subscribers, self.missed
            ),
        }
    }

    fn until(&self) -> Instant {
        let far = Duration::from_secs(24 * 3600);
        let d = match (self.duration, self.events) {
            (Some(d), _) => d,
            (None, Some(_)) => far,
            (None, None) => Duration::from_secs(10),
        };
        Instant::now() + d
    }
}

/// What a scenario runs against.
#[derive(Clone)]
pub struct Ctx {
    pub target: Arc<dyn Target>,
    /// The server's process (its tree is measured), when known.
    pub server_pid: Option<u32>,
    pub params: Params,
    pub sources: Arc<Sources>,
    pub scenario: Scenario,
}

/// Runs `scenario` against `target` and reports.
///
/// # Errors
/// When the server cannot be reached or subscribers cannot be opened; a
/// server that loses or repeats events is a finding, in the report.
pub async fn run(
    scenario: Scenario,
    target: Arc<dyn Target>,
    server_pid: Option<u32>,
    mut params: Params,
) -> anyhow::Result<Report> {
    params.batch = params.batch.clamp(1, target.max_batch());
    params.publishers = params.publishers.max(1);
    params.topics = params.topics.max(1);
    let connections = params.subscribers + params.publishers + 2;
    crate::net::ensure_fds(connections)?;
    let sources = Arc::new(Sources::new(
        target.addr(),
        params.source_addrs,
        connections,
    ));
    let ctx = Ctx {
        target,
        server_pid,
        params,
        sources,
        scenario,
    };
    match scenario {
        Scenario::Publish | Scenario::Fanout => live::run(&ctx).await,
        Scenario::Idle => idle::run(&ctx).await,
        Scenario::Resume => resume::run(&ctx, false).await,
        Scenario::Storm => resume::run(&ctx, true).await,
    }
}

/// A fresh topic for one run.
fn fresh_topic(scenario: Scenario) -> Arc<str> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    target::topic(&scenario.to_string(), N.fetch_add(1, Ordering::Relaxed)).into()
}

/// This process, sampled like the server.
fn client_sampler() -> Option<crate::procfs::Sampler> {
    crate::procfs::Sampler::start(std::process::id(), Duration::from_millis(250))
}

/// Stops a sampler, if one was started, and sums up its window.
async fn finish_sampler(
    sampler: Option<crate::procfs::Sampler>,
) -> Option<crate::procfs::Resources> {
    match sampler {
        Some(s) => s.finish().await,
        None => None,
    }
}

fn server_sampler(ctx: &Ctx) -> Option<crate::procfs::Sampler> {
    ctx.server_pid
        .and_then(|pid| crate::procfs::Sampler::start(pid, Duration::from_millis(250)))
}
