//! What a run found: the [`Report`], serialised as JSON for machines
//! (`--json`); `table` renders it for people.

use serde::Serialize;

use crate::procfs::Resources;
use crate::stats::Percentiles;
use crate::target::Kind;
use crate::track::Correctness;
use crate::workload::{Params, Scenario};

/// One scenario run against one target.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub target: Kind,
    pub params: Params,
    /// Wall time of the measured part.
    pub elapsed_s: f64,
    pub publish: Option<PublishStats>,
    pub delivery: Option<DeliveryStats>,
    pub catch_up: Option<CatchUpStats>,
    pub idle: Option<IdleStats>,
    /// `peruser`, `peruser-storm`.
    pub per_user: Option<PerUserStats>,
    /// `retention`; `publish` is then the publishers during the prune.
    pub retention: Option<RetentionStats>,
    /// `churn`: the streams opened and dropped beside the publishers, and
    /// the registry write lag.
    pub churn: Option<ChurnStats>,
    /// `publish` on herald: each instance's share of the publishers, what
    /// its committer did, and PostgreSQL's view of the log's head lock
    /// (issue 26). One instance or several on one database.
    pub cluster: Option<ClusterStats>,
    /// `compare --rounds`: which round (from 1) this run was.
    pub round: Option<usize>,
    pub correctness: Correctness,
    /// The server's process tree, when its pid is known.
    pub server: Option<Resources>,
    /// PostgreSQL's process tree (postmaster, backends, WAL writer, …), for
    /// herald, when found.
    pub postgres: Option<Resources>,
    /// The harness itself.
    pub client: Option<Resources>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PublishStats {
    pub publishers: usize,
    pub requests: u64,
    pub events_acked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Acknowledged events per second over the publishing window.
    pub events_per_sec: f64,
    /// Request → response, per request.
    pub latency: Option<Percentiles>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryStats {
    /// Measured events received, over all subscribers.
    pub deliveries: u64,
    /// Deliveries per second, from the first publish to the last delivery.
    pub deliveries_per_sec: f64,
    /// What the publishers' fixed rate asks for: events per second times
    /// the subscribers each event goes to.
    pub offered_per_sec: Option<f64>,
    /// From the last acknowledged publish request going out to the last
    /// delivery: a server that keeps up drains in about its latency.
    /// (Events never delivered are in `correctness.missing`, not here.)
    pub drain_ms: Option<f64>,
    /// Publisher's send time (in the payload) → subscriber's receive time.
    pub latency: Option<Percentiles>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PerUserStats {
    /// Topics, one per per-user subscriber (and storm client).
    pub topics: usize,
    pub wildcard_subscribers: usize,
    /// What they subscribed to: herald `*` or the run's prefix; nchan the
    /// channel every event was also published to.
    pub wildcard_subscription: Option<String>,
    /// Deliveries to them (within `delivery.deliveries`), and their
    /// publish→receive latency (`delivery.latency` is the per-user
    /// subscribers').
    pub wildcard_deliveries: u64,
    pub wildcard_latency: Option<Percentiles>,
    pub storm: Option<StormStats>,
}

/// `peruser-storm`: the fill, the storm clients' catch-up, and the live
/// subscribers' latency around it.
#[derive(Debug, Clone, Serialize)]
pub struct StormStats {
    /// Events published before anyone subscribed, and how long that took.
    pub fill_events: u64,
    pub fill_s: f64,
    pub clients: usize,
    /// Clients whose stream was open again and that had received every
    /// event of their topic (none missing) by the end.
    pub caught_up: usize,
    /// Between the cut and the rejoin.
    pub away_ms: f64,
    /// Events the clients received after the rejoin that had been sent
    /// before it (what they missed), in all.
    pub missed_events: u64,
    /// Per client: rejoin → its stream open again and the last event it
    /// had missed received.
    pub catch_up: Option<Percentiles>,
    /// Rejoin → the last client caught up.
    pub all_caught_up_ms: Option<f64>,
    /// Publish→receive of the live (non-storm) per-user subscribers, for
    /// the events sent before the cut, and for those sent during the storm
    /// (from the rejoin until every client had caught up, at least 1 s).
    pub live_latency_before: Option<Percentiles>,
    pub live_latency_during: Option<Percentiles>,
    pub during_ms: f64,
}

/// `retention`: a prune under publish load, against a baseline without.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionStats {
    /// Events in the log before the run.
    pub fill: u64,
    /// `log_head.pruned_through` at the end.
    pub pruned_through: i64,
    /// `herald_retention_pruned_events_total` of the pruning herald.
    pub pruned_metric: Option<f64>,
    /// From the floor's first move to it reaching `--prune`.
    pub prune_s: f64,
    pub baseline_s: f64,
    /// From the pruning herald's launch to the floor reaching `--prune`:
    /// the window of `Report::publish` and `replay_wait_prune`.
    pub prune_window_s: f64,
    /// The publishers without a prune.
    pub baseline: PublishStats,
    /// Publish p99 during the prune over the baseline's (issue 11 asks for
    /// at most 1.5).
    pub publish_p99_ratio: Option<f64>,
    pub replay_clients: usize,
    pub replays_baseline: u64,
    pub replays_prune: u64,
    /// Replays the prune overtook, which ended in a reset.
    pub replay_resets_prune: u64,
    pub replay_errors: u64,
    pub replay_first_error: Option<String>,
    /// Request to first frame, and between frames, of every replay.
    pub replay_wait_baseline: Option<Percentiles>,
    pub replay_wait_prune: Option<Percentiles>,
    pub before: TableSizes,
    pub after: TableSizes,
    /// After a plain `VACUUM` following the run.
    pub vacuumed: TableSizes,
    pub vacuum_s: f64,
}

/// The `events` table: `pg_total_relation_size`, `pg_relation_size`,
/// `pg_indexes_size`, and the statistics' live and dead rows.
#[derive(Debug, Clone, Serialize)]
pub struct TableSizes {
    pub total_bytes: i64,
    pub table_bytes: i64,
    pub index_bytes: i64,
    pub live_rows: i64,
    pub dead_rows: i64,
}

/// `churn`: streams opened on a schedule, each held and then dropped,
/// while the publishers run; and herald's registry write lag meanwhile.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnStats {
    /// Opens the schedule started.
    pub opens: u64,
    /// Streams that reached their opening (herald: the `event: stream`
    /// frame; nchan: the response head).
    pub opened: u64,
    /// Opens that did not: refused, failed, or not open within 10 s.
    pub failed: u64,
    pub first_error: Option<String>,
    /// Streams the server ended while they were held.
    pub ended_early: u64,
    /// Streams opened per minute over the window.
    pub opened_per_minute: f64,
    /// Connect → opening, per stream.
    pub open_latency: Option<Percentiles>,
    /// Streams held open at once, at most.
    pub held_peak: usize,
    /// `GET /metrics` sent, and the answers that had the gauge.
    pub scrapes: u64,
    pub lag_samples: u64,
    /// `herald_registry_write_lag_seconds`, sampled every 250 ms (in ms:
    /// the age of the oldest record of the writer's last batch when it was
    /// written); `None` when the server does not export it (nchan).
    pub registry_lag: Option<Percentiles>,
}

/// `publish` on herald, per instance and over the database (see
/// `scenario/probe.rs` for how each number is read).
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStats {
    pub instances: usize,
    /// Between the probe's reads of the metrics and counters before and
    /// after the publishers: the window of every per-second figure here.
    pub window_s: f64,
    pub per_instance: Vec<InstanceStats>,
    /// Append commits per second, all instances together (`None` unless
    /// every instance exported its append metrics).
    pub append_commits_per_sec: Option<f64>,
    /// PostgreSQL's side, when the harness knows the database.
    pub database: Option<DatabaseStats>,
}

/// One instance: its publishers, its commits, its backends' waits.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceStats {
    /// Its `application_name` (`herald/bench-K` for instance K).
    pub name: String,
    pub addr: String,
    /// Its share of the publishers (`publishers`, acknowledged events,
    /// events per second, latency).
    pub publish: PublishStats,
    /// From its `/metrics`; `None` if it exports no append histograms.
    pub appends: Option<AppendStats>,
    /// Its backends in `pg_stat_activity`; `None` unless sampled.
    pub waits: Option<WaitStats>,
    /// Its process's CPU over the measured window, in % of one core.
    pub cpu_percent: Option<f64>,
}

/// Deltas of `herald_append_group_events` and
/// `herald_append_transaction_seconds` over the window.
#[derive(Debug, Clone, Serialize)]
pub struct AppendStats {
    /// Append transactions (groups) committed, and their events.
    pub commits: u64,
    pub events: u64,
    pub commits_per_sec: f64,
    /// Events per commit.
    pub group_events_mean: f64,
    /// Group sent → answered, lock wait included.
    pub transaction_ms_mean: f64,
    /// Transaction time over the window: near 1, the committer always had
    /// a group in flight.
    pub committer_busy: f64,
}

/// Backends sampled every `DatabaseStats::sample_every_ms`: the share of
/// samples in which one of them waited on a row lock (an append waiting
/// for `log_head`), waited on WAL (a commit's flush), ran a statement.
#[derive(Debug, Clone, Serialize)]
pub struct WaitStats {
    pub samples: u64,
    pub lock_wait_fraction: f64,
    /// Backends waiting on a row lock, on average over the samples.
    pub lock_waiters_mean: f64,
    pub wal_wait_fraction: f64,
    pub active_fraction: f64,
}

/// The run's database in PostgreSQL's statistics.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseStats {
    /// `pg_stat_database.xact_commit`: every transaction of the database
    /// (appends, reads, the probe's own samples).
    pub xact_commits_per_sec: f64,
    /// `pg_stat_wal.wal_sync` (the whole server; `None` where the column
    /// is gone, PostgreSQL 18).
    pub wal_syncs_per_sec: Option<f64>,
    pub sample_every_ms: f64,
    /// All of herald's backends together.
    pub waits: WaitStats,
}

#[derive(Debug, Clone, Serialize)]
pub struct CatchUpStats {
    pub clients: usize,
    pub caught_up: usize,
    /// Missed events each client had to receive.
    pub events_per_client: u64,
    /// Per client: connect → last missed event received.
    pub time: Option<Percentiles>,
    /// Start → the last client caught up (storm).
    pub all_caught_up_ms: Option<f64>,
    /// Missed events replayed per second, per client (median time).
    pub replay_events_per_sec: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleStats {
    pub streams: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// (after − before) / streams.
    pub rss_per_stream_bytes: f64,
    pub server_fds_before: usize,
    pub server_fds_after: usize,
    pub client_fds: usize,
}

impl Report {
    /// The column heading: the target, and how many instances when more
    /// than one.
    pub fn label(&self) -> String {
        match &self.cluster {
            Some(c) if c.instances > 1 => format!("{} x{}", self.target, c.instances),
            _ => self.target.to_string(),
        }
    }

    /// Whether the correctness counters are all zero.
    pub fn is_clean(&self) -> bool {
        self.correctness.is_clean()
            && self
                .publish
                .as_ref()
                .is_none_or(|p| p.errors == 0 && p.events_acked > 0)
            && self
                .catch_up
                .as_ref()
                .is_none_or(|c| c.caught_up == c.clients)
            && self
                .per_user
                .as_ref()
                .and_then(|u| u.storm.as_ref())
                .is_none_or(|s| s.caught_up == s.clients)
            && self
                .retention
                .as_ref()
                .is_none_or(|r| r.baseline.errors == 0 && r.replay_errors == 0)
            && self
                .churn
                .as_ref()
                .is_none_or(|c| c.failed == 0 && c.ended_early == 0)
    }
}
