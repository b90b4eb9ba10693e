//! What to run: the [`Scenario`] and its size ([`Params`]), with each
//! scenario's defaults. Both the scenarios and the report read these, and
//! this module reads neither, so the module graph stays a tree.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};

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
    /// Each subscriber on a topic of its own, events spread over the topics
    /// at a fixed rate; optionally a few subscribers on every topic.
    #[value(name = "peruser")]
    #[serde(rename = "peruser")]
    PerUser,
    /// As peruser, with the ring filled first and a reconnect storm of
    /// per-user clients while events flow.
    #[value(name = "peruser-storm")]
    #[serde(rename = "peruser-storm")]
    PerUserStorm,
    /// A prune of --prune events from a log of --fill, under publishers at
    /// --rate, against a baseline of --duration without (herald only; it
    /// starts its own herald instances: `run --spawn`).
    Retention,
    /// Streams opened and closed at --churn-per-minute while publishers
    /// run at --rate: publish latency and herald's registry write lag
    /// (issue 23); --churn-per-minute 0 is its baseline.
    Churn,
}

/// What the wildcard subscribers of the per-user scenarios subscribe to on
/// herald (nchan has no such filter: see `target::Dashboard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WildcardFilter {
    /// `*`: every topic, as an operator's dashboard would.
    All,
    /// The run's prefix (`bench:peruser:…:*`): every topic of the run and
    /// nothing else, for a server that carries other traffic too.
    Prefix,
}

/// What the streams of `churn` subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChurnTopics {
    /// Topics of their own that nothing is published to: the run measures
    /// opening, recording and closing streams, and no delivery.
    Quiet,
    /// The publishers' topics: each stream also gets its topic's events
    /// while it is held (a fan-out that grows with the streams held).
    Published,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Publish => "publish",
            Self::Fanout => "fanout",
            Self::Idle => "idle",
            Self::Resume => "resume",
            Self::Storm => "storm",
            Self::PerUser => "peruser",
            Self::PerUserStorm => "peruser-storm",
            Self::Retention => "retention",
            Self::Churn => "churn",
        })
    }
}

/// Publishers that fill the ring in `peruser-storm` (flat out, in batches).
pub const FILL_PUBLISHERS: usize = 8;

/// How big a run is. [`Params::defaults`] gives each scenario's.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// Open streams (`resume`: ignored, one client per repetition; `storm`:
    /// clients resuming at once; `peruser`, `peruser-storm`: per-user
    /// subscribers, each on a topic of its own).
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
    /// `peruser`, `peruser-storm`: subscribers on every topic (a dashboard)
    /// beside the per-user ones.
    pub wildcard_subscribers: usize,
    /// What those subscribe to on herald.
    pub wildcard_filter: WildcardFilter,
    /// `peruser-storm`: per-user clients (on topics of their own) that are
    /// cut off and reconnect all at once.
    pub storm_clients: usize,
    /// `peruser-storm`: events published before anyone subscribes, to fill
    /// the server's ring (herald's default holds 65,536) and log.
    /// `retention`: events written into the log before herald starts.
    pub fill: u64,
    /// `retention`: the oldest events of the log, which the prune removes.
    pub prune: u64,
    /// `peruser-storm`: how long events flow before the storm clients are
    /// cut off.
    #[serde(serialize_with = "secs")]
    pub storm_after: Duration,
    /// `peruser-storm`: how long they stay away before all reconnecting.
    #[serde(serialize_with = "secs")]
    pub storm_away: Duration,
    /// `churn`: streams opened per minute, spread evenly (0: none, the
    /// baseline).
    pub churn_per_minute: u64,
    /// `churn`: how long each stream is held once open, before the client
    /// drops it.
    #[serde(serialize_with = "secs")]
    pub churn_hold: Duration,
    /// `churn`: what those streams subscribe to.
    pub churn_topics: ChurnTopics,
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
            wildcard_subscribers: 0,
            wildcard_filter: WildcardFilter::All,
            storm_clients: 0,
            fill: 0,
            prune: 0,
            storm_after: Duration::from_secs(3),
            storm_away: Duration::from_secs(1),
            churn_per_minute: 0,
            churn_hold: Duration::from_secs(2),
            churn_topics: ChurnTopics::Quiet,
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
            Scenario::PerUser => Self {
                subscribers: 10_000,
                publishers: 64,
                rate: Some(5000.0),
                ..base
            },
            Scenario::PerUserStorm => Self {
                subscribers: 10_000,
                publishers: 64,
                rate: Some(5000.0),
                storm_clients: 2000,
                fill: 65_536,
                ..base
            },
            // Issue 11: a prune of a million events from a log of ten
            // million under 5,000 events/s; `duration` is the baseline,
            // `settle` the warm-up before it.
            Scenario::Retention => Self {
                subscribers: 0,
                publishers: 64,
                rate: Some(5000.0),
                duration: Some(Duration::from_secs(30)),
                settle: Duration::from_secs(5),
                fill: 10_000_000,
                prune: 1_000_000,
                ..base
            },
            // Issue 23: 10,000 stream opens and closes a minute for five
            // minutes, beside publishers at a steady 1,000 events/s.
            Scenario::Churn => Self {
                subscribers: 0,
                publishers: 16,
                topics: 4,
                rate: Some(1000.0),
                duration: Some(Duration::from_secs(300)),
                churn_per_minute: 10_000,
                ..base
            },
        }
    }

    /// `churn`: streams held at once by the schedule (opens per second ×
    /// hold).
    pub fn churn_held(&self) -> usize {
        (self.churn_per_minute as f64 / 60.0 * self.churn_hold.as_secs_f64()).ceil() as usize
    }

    /// Connections a run of `scenario` opens at most: subscribers,
    /// publishers and the harness's own.
    pub fn connections(&self, scenario: Scenario) -> usize {
        let extra = match scenario {
            Scenario::PerUser => self.wildcard_subscribers,
            Scenario::PerUserStorm => {
                self.wildcard_subscribers + self.storm_clients + FILL_PUBLISHERS
            }
            // Twice what the schedule holds, for opens that are slow to
            // answer; the scrape of /metrics.
            Scenario::Churn => 2 * self.churn_held() + 1,
            _ => 0,
        };
        self.subscribers + self.publishers + extra + 2
    }

    /// Local ports a run takes from one source address at most: its
    /// connections, and (`churn`) those its closes leave in TIME_WAIT for
    /// Linux's 60 s, a minute of opens. Sizes the source addresses.
    pub fn ports(&self, scenario: Scenario) -> usize {
        let time_wait = match scenario {
            Scenario::Churn => usize::try_from(self.churn_per_minute).unwrap_or(usize::MAX),
            _ => 0,
        };
        self.connections(scenario).saturating_add(time_wait)
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
            Scenario::Retention => format!(
                "scenario retention: prune of {} events from a log of {}, {} publishers {rate}, batch {}, baseline {length}",
                self.prune, self.fill, self.publishers, self.batch
            ),
            Scenario::Churn => format!(
                "scenario churn: {} stream opens/min, each held {} (~{} at once) on {}; {} publishers {rate} over {} topic(s), batch {}, {length}, payload {} B",
                self.churn_per_minute,
                humantime::format_duration(self.churn_hold),
                self.churn_held(),
                match self.churn_topics {
                    ChurnTopics::Quiet => "topics of their own",
                    ChurnTopics::Published => "the published topics",
                },
                self.publishers,
                self.topics,
                self.batch,
                self.payload_bytes
            ),
            Scenario::PerUser | Scenario::PerUserStorm => {
                let mut s = format!(
                    "scenario {scenario}: {} subscribers on a topic each, {} on {}, {} publishers {rate}, batch {}, {length}, payload {} B",
                    self.subscribers,
                    self.wildcard_subscribers,
                    match self.wildcard_filter {
                        WildcardFilter::All => "`*`",
                        WildcardFilter::Prefix => "the run's prefix",
                    },
                    self.publishers,
                    self.batch,
                    self.payload_bytes
                );
                if scenario == Scenario::PerUserStorm {
                    s += &format!(
                        "; {} filled first; after {} a storm of {} per-user clients away for {}",
                        self.fill,
                        humantime::format_duration(self.storm_after),
                        self.storm_clients,
                        humantime::format_duration(self.storm_away)
                    );
                }
                s
            }
        }
    }

    pub(crate) fn until(&self) -> Instant {
        let far = Duration::from_secs(24 * 3600);
        let d = match (self.duration, self.events) {
            (Some(d), _) => d,
            (None, Some(_)) => far,
            (None, None) => Duration::from_secs(10),
        };
        Instant::now() + d
    }
}
