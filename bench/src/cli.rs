//! The flags of `herald-bench`: `run` and `compare`, the workload (each
//! scenario's defaults with the flags applied) and the servers to start.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use herald_bench::servers;
use herald_bench::workload::{ChurnTopics, WildcardFilter};
use herald_bench::{Kind, Params, Scenario};

/// Load and correctness harness for herald (and nchan, side by side).
#[derive(Parser)]
#[command(name = "herald-bench", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Threads of the subscribers' runtime (the client shares the machine
    /// with the server; its own CPU use is reported).
    #[arg(long, global = true, env = "HERALD_BENCH_THREADS", default_value_t = 2)]
    pub client_threads: usize,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a scenario against one server: one already running (--url), or
    /// one started for the run (--spawn).
    Run(RunArgs),
    /// Start each server in turn (herald on a fresh database, nginx with
    /// bench/nchan/nginx.conf), run the same scenario on each, print them
    /// side by side.
    Compare(CompareArgs),
}

#[derive(Args)]
pub struct RunArgs {
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// Which server it is.
    #[arg(long, value_enum, default_value_t = Kind::Herald)]
    pub target: Kind,
    /// The server's address: http://host:port or host:port.
    #[arg(long, required_unless_present = "spawn", conflicts_with = "spawn")]
    pub url: Option<String>,
    /// Start the server for this run and stop it afterwards.
    #[arg(long)]
    pub spawn: bool,
    /// The server's process id, to report its memory and CPU (nginx: the
    /// master; its workers are counted with it).
    #[arg(long, conflicts_with = "spawn")]
    pub server_pid: Option<u32>,
    /// publish, herald: start this many instances on one fresh database
    /// (each on a port of its own) and split the publishers and
    /// subscribers across them, client i on instance i mod N (issue 26).
    /// Default 1.
    #[arg(long, conflicts_with = "url", value_parser = clap::value_parser!(u16).range(1..))]
    pub instances: Option<u16>,
    #[command(flatten)]
    pub workload: Workload,
    #[command(flatten)]
    pub servers: ServerArgs,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Args)]
pub struct CompareArgs {
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// Servers to compare, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "herald,nchan"
    )]
    pub targets: Vec<Kind>,
    /// publish, herald only: compare herald with these numbers of
    /// instances on one database each (e.g. 1,2,3) instead of the
    /// targets; the publishers split across the instances (issue 26).
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "targets",
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub instances: Vec<u16>,
    /// Rounds, interleaved: every side once, then every side again, …
    /// (each on a fresh server and database); the medians of each side's
    /// rounds are printed after the rounds' tables.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub rounds: u16,
    #[command(flatten)]
    pub workload: Workload,
    #[command(flatten)]
    pub servers: ServerArgs,
    #[command(flatten)]
    pub output: Output,
}

/// The size of a run; each scenario has its own defaults (see README).
#[derive(Args, Clone)]
pub struct Workload {
    /// Open streams (storm: clients resuming at once; peruser: per-user
    /// subscribers, each on a topic of its own). A comma-separated list
    /// runs the scenario once per value, e.g. 100,1000,10000.
    #[arg(long, value_delimiter = ',')]
    pub subscribers: Vec<usize>,
    /// Concurrent publishers, each with one request in flight.
    #[arg(long)]
    pub publishers: Option<usize>,
    /// Threads of the publishers' own runtime (apart from the subscribers',
    /// so their load does not delay publishing).
    #[arg(long)]
    pub publisher_threads: Option<usize>,
    /// publish, fanout: topics (nchan channels); publisher i writes to topic
    /// i mod N, subscriber j reads topic j mod N (peruser: one topic per
    /// subscriber, this is not used; churn: the publishers' topics).
    #[arg(long)]
    pub topics: Option<usize>,
    /// Events per second over all publishers; 0 means flat out.
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long to publish (`10s`, `1m`).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Events to publish in all (with --duration, whichever ends first).
    #[arg(long)]
    pub events: Option<u64>,
    /// Events per publish request (herald's batch; nchan takes one).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Size of each event's data in bytes (0: the marker alone, ~50 bytes).
    #[arg(long)]
    pub payload_bytes: Option<usize>,
    /// resume, storm: events published while the clients were away.
    #[arg(long)]
    pub missed: Option<u64>,
    /// resume: clients resumed one after another.
    #[arg(long)]
    pub repeat: Option<usize>,
    /// Loopback source addresses from 127.0.0.2 (0: one per 20,000
    /// connections).
    #[arg(long, default_value_t = 0)]
    pub source_addrs: usize,
    /// Connections being opened at once; 0 means all at once (storm's
    /// default).
    #[arg(long)]
    pub connect_concurrency: Option<usize>,
    /// idle: wait after the streams are open before reading memory.
    #[arg(long, value_parser = parse_duration)]
    pub settle: Option<Duration>,
    /// Longest wait for connections, deliveries and catch-ups.
    #[arg(long, value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// peruser, peruser-storm: subscribers on every topic (an operator's
    /// dashboard) beside the per-user ones.
    #[arg(long)]
    pub wildcard_subscribers: Option<usize>,
    /// What those subscribe to on herald: `all` is `*`, `prefix` the run's
    /// topic prefix (nchan: a channel each event is also published to).
    #[arg(long, value_enum)]
    pub wildcard_filter: Option<WildcardFilter>,
    /// peruser-storm: per-user clients cut off and reconnecting at once.
    #[arg(long)]
    pub storm_clients: Option<usize>,
    /// peruser-storm: events published before anyone subscribes, to fill
    /// the ring and the log (default 65536, herald's ring). retention:
    /// events written straight into the log before herald starts (default
    /// 10000000).
    #[arg(long)]
    pub fill: Option<u64>,
    /// retention: the oldest events of the log, which the prune removes
    /// (default 1000000).
    #[arg(long)]
    pub prune: Option<u64>,
    /// peruser-storm: how long events flow before the storm clients are
    /// cut off.
    #[arg(long, value_parser = parse_duration)]
    pub storm_after: Option<Duration>,
    /// peruser-storm: how long they stay away before all reconnecting.
    #[arg(long, value_parser = parse_duration)]
    pub storm_away: Option<Duration>,
    /// churn: streams opened per minute, evenly spread (default 10000; 0:
    /// none, the baseline of the same publishing).
    #[arg(long)]
    pub churn_per_minute: Option<u64>,
    /// churn: how long each stream is held once open, then dropped
    /// (default 2s).
    #[arg(long, value_parser = parse_duration)]
    pub churn_hold: Option<Duration>,
    /// churn: what those streams subscribe to: `quiet`, topics nothing is
    /// published to (default), or `published`, the publishers' topics.
    #[arg(long, value_enum)]
    pub churn_topics: Option<ChurnTopics>,
}

#[derive(Args)]
pub struct ServerArgs {
    /// herald binary to start (default: the workspace's target/release/herald).
    #[arg(long)]
    pub herald_bin: Option<PathBuf>,
    /// Extra flag for a started herald, e.g. --herald-arg=--ring-size=100000
    /// (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    pub herald_arg: Vec<String>,
    /// PostgreSQL database from which a started herald's fresh database is
    /// created and dropped.
    #[arg(
        long,
        env = "HERALD_BENCH_ADMIN_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_admin_url: String,
    /// PostgreSQL's postmaster, whose process tree's CPU is reported beside
    /// herald's (default: the parent of the backend that answers `select
    /// pg_backend_pid()` on --database-admin-url; 0: do not measure).
    #[arg(long)]
    pub postgres_pid: Option<u32>,
    /// nginx binary.
    #[arg(long, default_value = "nginx")]
    pub nginx_bin: PathBuf,
    /// The nchan module (default: where Debian's libnginx-mod-nchan puts it).
    #[arg(long)]
    pub nchan_module: Option<PathBuf>,
    /// nginx config to use instead of the built-in bench/nchan/nginx.conf.
    #[arg(long)]
    pub nchan_config: Option<PathBuf>,
}

#[derive(Args)]
pub struct Output {
    /// Also write the reports as a JSON array to this file (`-`: stdout,
    /// and the table goes to stderr).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}: expected e.g. 10s, 500ms or 1m"))
}

impl Workload {
    /// The scenario's defaults with these flags applied, once per
    /// subscriber count.
    pub fn params(&self, scenario: Scenario) -> Vec<Params> {
        let mut base = Params::defaults(scenario);
        if let Some(v) = self.publishers {
            base.publishers = v;
        }
        if let Some(v) = self.publisher_threads {
            base.publisher_threads = v;
        }
        if let Some(v) = self.topics {
            base.topics = v;
        }
        if let Some(r) = self.rate {
            base.rate = (r > 0.0).then_some(r);
        }
        match (self.duration, self.events) {
            (Some(d), e) => {
                base.duration = Some(d);
                base.events = e;
            }
            (None, Some(e)) => {
                base.duration = None;
                base.events = Some(e);
            }
            (None, None) => {}
        }
        if let Some(v) = self.batch {
            base.batch = v;
        }
        if let Some(v) = self.payload_bytes {
            base.payload_bytes = v;
        }
        if let Some(v) = self.missed {
            base.missed = v;
        }
        if let Some(v) = self.repeat {
            base.repeat = v;
        }
        base.source_addrs = self.source_addrs;
        if let Some(v) = self.connect_concurrency {
            base.connect_concurrency = (v > 0).then_some(v);
        }
        if let Some(v) = self.settle {
            base.settle = v;
        }
        if let Some(v) = self.drain_timeout {
            base.drain_timeout = v;
        }
        if let Some(v) = self.wildcard_subscribers {
            base.wildcard_subscribers = v;
        }
        if let Some(v) = self.wildcard_filter {
            base.wildcard_filter = v;
        }
        if let Some(v) = self.storm_clients {
            base.storm_clients = v;
        }
        if let Some(v) = self.fill {
            base.fill = v;
        }
        if let Some(v) = self.prune {
            base.prune = v;
        }
        if let Some(v) = self.storm_after {
            base.storm_after = v;
        }
        if let Some(v) = self.storm_away {
            base.storm_away = v;
        }
        if let Some(v) = self.churn_per_minute {
            base.churn_per_minute = v;
        }
        if let Some(v) = self.churn_hold {
            base.churn_hold = v;
        }
        if let Some(v) = self.churn_topics {
            base.churn_topics = v;
        }
        if self.subscribers.is_empty() {
            return vec![base];
        }
        self.subscribers
            .iter()
            .map(|&n| Params {
                subscribers: n,
                ..base.clone()
            })
            .collect()
    }
}

impl ServerArgs {
    pub fn options(&self) -> servers::Options {
        servers::Options {
            herald_bin: self.herald_bin.clone(),
            herald_args: self.herald_arg.clone(),
            admin_url: self.database_admin_url.clone(),
            nginx_bin: self.nginx_bin.clone(),
            nchan_module: self.nchan_module.clone(),
            nchan_config: self.nchan_config.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("herald-bench").chain(args.split_whitespace()))
    }

    #[test]
    fn run_starts_several_instances_only_when_it_spawns_them() {
        let cli =
            parse("run --spawn --target herald --scenario publish --instances 3 --publishers 64")
                .expect("parses");
        let Command::Run(run) = cli.command else {
            panic!("run")
        };

        assert_eq!(run.instances, Some(3));
        assert_eq!(run.workload.params(run.scenario)[0].publishers, 64);
        assert!(parse("run --url 127.0.0.1:8080 --scenario publish --instances 2").is_err());
        assert!(parse("run --spawn --scenario publish --instances 0").is_err());
        let Command::Run(one) = parse("run --spawn --scenario publish").unwrap().command else {
            panic!("run")
        };
        assert_eq!(one.instances, None);
    }

    #[test]
    fn compare_takes_instance_counts_and_rounds_instead_of_targets() {
        let cli = parse("compare --scenario publish --instances 1,2,3 --rounds 3").expect("parses");
        let Command::Compare(c) = cli.command else {
            panic!("compare")
        };

        assert_eq!(c.instances, [1, 2, 3]);
        assert_eq!(c.rounds, 3);
        assert!(parse("compare --scenario publish --instances 1,2 --targets herald").is_err());
        assert!(parse("compare --scenario publish --rounds 0").is_err());
        let Command::Compare(plain) = parse("compare --scenario fanout").unwrap().command else {
            panic!("compare")
        };
        assert!(plain.instances.is_empty());
        assert_eq!(plain.rounds, 1);
        assert_eq!(plain.targets, [Kind::Herald, Kind::Nchan]);
    }
}
