//! The `herald-bench` binary: flags, then `run` (one server) or `compare`
//! (herald and nchan started in turn, same workload, one table).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald_bench::report::{self, Report};
use herald_bench::servers::{self, Spawned};
use herald_bench::{Kind, Params, Scenario, target};

/// Load and correctness harness for herald (and nchan, side by side).
#[derive(Parser)]
#[command(name = "herald-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Threads of the subscribers' runtime (the client shares the machine
    /// with the server; its own CPU use is reported).
    #[arg(long, global = true, env = "HERALD_BENCH_THREADS", default_value_t = 2)]
    client_threads: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario against one server: one already running (--url), or
    /// one started for the run (--spawn).
    Run(RunArgs),
    /// Start each server in turn (herald on a fresh database, nginx with
    /// bench/nchan/nginx.conf), run the same scenario on each, print them
    /// side by side.
    Compare(CompareArgs),
}

#[derive(Args)]
struct RunArgs {
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Which server it is.
    #[arg(long, value_enum, default_value_t = Kind::Herald)]
    target: Kind,
    /// The server's address: http://host:port or host:port.
    #[arg(long, required_unless_present = "spawn", conflicts_with = "spawn")]
    url: Option<String>,
    /// Start the server for this run and stop it afterwards.
    #[arg(long)]
    spawn: bool,
    /// The server's process id, to report its memory and CPU (nginx: the
    /// master; its workers are counted with it).
    #[arg(long, conflicts_with = "spawn")]
    server_pid: Option<u32>,
    #[command(flatten)]
    workload: Workload,
    #[command(flatten)]
    servers: ServerArgs,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct CompareArgs {
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Servers to compare, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "herald,nchan"
    )]
    targets: Vec<Kind>,
    #[command(flatten)]
    workload: Workload,
    #[command(flatten)]
    servers: ServerArgs,
    #[command(flatten)]
    output: Output,
}

/// The size of a run; each scenario has its own defaults (see README).
#[derive(Args, Clone)]
struct Workload {
    /// Open streams (storm: clients resuming at once). A comma-separated
    /// list runs the scenario once per value, e.g. 100,1000,10000.
    #[arg(long, value_delimiter = ',')]
    subscribers: Vec<usize>,
    /// Concurrent publishers, each with one request in flight.
    #[arg(long)]
    publishers: Option<usize>,
    /// Threads of the publishers' own runtime (apart from the subscribers',
    /// so their load does not delay publishing).
    #[arg(long)]
    publisher_threads: Option<usize>,
    /// publish, fanout: topics (nchan channels); publisher i writes to topic
    /// i mod N, subscriber j reads topic j mod N.
    #[arg(long)]
    topics: Option<usize>,
    /// Events per second over all publishers; 0 means flat out.
    #[arg(long)]
    rate: Option<f64>,
    /// How long to publish (`10s`, `1m`).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Events to publish in all (with --duration, whichever ends first).
    #[arg(long)]
    events: Option<u64>,
    /// Events per publish request (herald's batch; nchan takes one).
    #[arg(long)]
    batch: Option<usize>,
    /// Size of each event's data in bytes (0: the marker alone, ~50 bytes).
    #[arg(long)]
    payload_bytes: Option<usize>,
    /// resume, storm: events published while the clients were away.
    #[arg(long)]
    missed: Option<u64>,
    /// resume: clients resumed one after another.
    #[arg(long)]
    repeat: Option<usize>,
    /// Loopback source addresses from 127.0.0.2 (0: one per 20,000
    /// connections).
    #[arg(long, default_value_t = 0)]
    source_addrs: usize,
    /// Connections being opened at once; 0 means all at once (storm's
    /// default).
    #[arg(long)]
    connect_concurrency: Option<usize>,
    /// idle: wait after the streams are open before reading memory.
    #[arg(long, value_parser = parse_duration)]
    settle: Option<Duration>,
    /// Longest wait for connections, deliveries and catch-ups.
    #[arg(long, value_parser = parse_duration)]
    drain_timeout: Option<Duration>,
}

#[derive(Args)]
struct ServerArgs {
    /// herald binary to start (default: the workspace's target/release/herald).
    #[arg(long)]
    herald_bin: Option<PathBuf>,
    /// Extra flag for a started herald, e.g. --herald-arg=--ring-size=100000
    /// (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    herald_arg: Vec<String>,
    /// PostgreSQL database from which a started herald's fresh database is
    /// created and dropped.
    #[arg(
        long,
        env = "HERALD_BENCH_ADMIN_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_admin_url: String,
    /// nginx binary.
    #[arg(long, default_value = "nginx")]
    nginx_bin: PathBuf,
    /// The nchan module (default: where Debian's libnginx-mod-nchan puts it).
    #[arg(long)]
    nchan_module: Option<PathBuf>,
    /// nginx config to use instead of the built-in bench/nchan/nginx.conf.
    #[arg(long)]
    nchan_config: Option<PathBuf>,
}

#[derive(Args)]
struct Output {
    /// Also write the reports as a JSON array to this file (`-`: stdout,
    /// and the table goes to stderr).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}: expected e.g. 10s, 500ms or 1m"))
}

impl Workload {
    /// The scenario's defaults with these flags applied, once per
    /// subscriber count.
    fn params(&self, scenario: Scenario) -> Vec<Params> {
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
    fn options(&self) -> servers::Options {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.client_threads.max(1))
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // Ctrl-C drops the run, and with it any server it started.
        tokio::select! {
            r = execute(cli.command) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("herald-bench: correctness errors (see the table)");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("herald-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command; `Ok(false)` when a run found correctness errors.
async fn execute(command: Command) -> anyhow::Result<bool> {
    let (groups, output): (Vec<Vec<Report>>, Output) = match command {
        Command::Run(args) => {
            let reports = run_one(&args).await?;
            (reports.into_iter().map(|r| vec![r]).collect(), args.output)
        }
        Command::Compare(args) => (compare(&args).await?, args.output),
    };
    let to_stdout = output.json.as_deref() == Some(std::path::Path::new("-"));
    for group in &groups {
        let refs: Vec<&Report> = group.iter().collect();
        let text = report::table(&refs);
        if to_stdout {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }
    let all: Vec<&Report> = groups.iter().flatten().collect();
    if let Some(path) = &output.json {
        let json = serde_json::to_string_pretty(&all)?;
        if to_stdout {
            println!("{json}");
        } else {
            std::fs::write(path, json + "\n")
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(all.iter().all(|r| r.is_clean()))
}

async fn run_one(args: &RunArgs) -> anyhow::Result<Vec<Report>> {
    let params = args.workload.params(args.scenario);
    let (addr, pid, spawned) = if args.spawn {
        eprintln!("starting {}", args.target);
        let s = servers::spawn(args.target, &args.servers.options()).await?;
        (s.addr, Some(s.pid), Some(s))
    } else {
        let url = args.url.as_deref().context("--url or --spawn")?;
        (resolve(url).await?, args.server_pid, None)
    };
    let target = target::make(args.target, addr);
    let mut reports = Vec::new();
    let mut failure = None;
    for p in params {
        eprintln!("{}: {}", args.target, p.describe(args.scenario));
        match herald_bench::scenario::run(args.scenario, target.clone(), pid, p).await {
            Ok(r) => reports.push(r),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if let Some(s) = spawned {
        s.stop().await?;
    }
    match failure {
        Some(e) if reports.is_empty() => Err(e),
        Some(e) => {
            eprintln!("{}: {e:#}", args.target);
            Ok(reports)
        }
        None => Ok(reports),
    }
}

/// Runs every parameter set on every target; groups reports by parameter
/// set, targets side by side.
async fn compare(args: &CompareArgs) -> anyhow::Result<Vec<Vec<Report>>> {
    let params = args.workload.params(args.scenario);
    let mut groups: Vec<Vec<Report>> = params.iter().map(|_| Vec::new()).collect();
    for &kind in &args.targets {
        eprintln!("starting {kind}");
        let spawned: Spawned = match servers::spawn(kind, &args.servers.options()).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{kind}: {e:#}");
                continue;
            }
        };
        let target = target::make(kind, spawned.addr);
        for (i, p) in params.iter().enumerate() {
            eprintln!("{kind}: {}", p.describe(args.scenario));
            match herald_bench::scenario::run(
                args.scenario,
                target.clone(),
                Some(spawned.pid),
                p.clone(),
            )
            .await
            {
                Ok(r) => groups[i].push(r),
                Err(e) => eprintln!("{kind}: {e:#}"),
            }
        }
        spawned.stop().await?;
    }
    groups.retain(|g| !g.is_empty());
    if groups.is_empty() {
        anyhow::bail!("no run completed");
    }
    Ok(groups)
}

async fn resolve(url: &str) -> anyhow::Result<std::net::SocketAddr> {
    let hostport = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    tokio::net::lookup_host(hostport)
        .await
        .with_context(|| format!("cannot resolve {url}"))?
        .next()
        .with_context(|| format!("{url} has no address"))
}
