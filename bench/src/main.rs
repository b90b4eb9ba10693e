//! The `herald-bench` binary: flags (`cli`), then `run` (one server, or
//! several herald instances on one database) or `compare` (herald and
//! nchan, or herald with different numbers of instances, started in turn,
//! same workload, one table; in rounds, with their medians).

mod cli;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use herald_bench::cluster::{self, Cluster};
use herald_bench::report::Report;
use herald_bench::scenario::retention;
use herald_bench::servers;
use herald_bench::table;
use herald_bench::{Kind, Scenario, target};

use cli::{Cli, Command, CompareArgs, Output, RunArgs, ServerArgs};

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
        let text = table::render(&refs);
        if to_stdout {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }
    let all: Vec<&Report> = groups.iter().flatten().collect();
    if all.iter().any(|r| r.round.is_some()) {
        let text = herald_bench::rounds::summary(&all);
        if to_stdout {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }
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
    if args.scenario == Scenario::Retention {
        // It fills the log before herald reads it, so it starts its
        // herald instances itself.
        anyhow::ensure!(
            args.spawn && args.target == Kind::Herald,
            "the retention scenario starts its own herald: run --spawn --target herald"
        );
        let launcher = retention::SpawnHerald(args.servers.options());
        let mut reports = Vec::new();
        for p in params {
            eprintln!("herald: {}", p.describe(args.scenario));
            reports.push(retention::run(&launcher, &args.servers.database_admin_url, p).await?);
        }
        return Ok(reports);
    }
    let instances = usize::from(args.instances.unwrap_or(1));
    anyhow::ensure!(
        instances == 1 || (args.scenario == Scenario::Publish && args.target == Kind::Herald),
        "--instances is for the publish scenario on herald"
    );
    let (cluster, spawned) = if args.spawn {
        eprintln!("starting {}", side_name(args.target, instances));
        let s = cluster::spawn(args.target, &args.servers.options(), instances).await?;
        (s.cluster(), Some(s))
    } else {
        let url = args.url.as_deref().context("--url or --spawn")?;
        let target = target::make(args.target, resolve(url).await?);
        (Cluster::single(target, args.server_pid), None)
    };
    let postgres = postgres_pid(args.target, &args.servers).await;
    let mut reports = Vec::new();
    let mut failure = None;
    for p in params {
        eprintln!("{}: {}", args.target, p.describe(args.scenario));
        match herald_bench::scenario::run_on(args.scenario, &cluster, postgres, p).await {
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

/// What a comparison puts side by side: a server, herald with a number of
/// instances.
fn sides(args: &CompareArgs) -> anyhow::Result<Vec<(Kind, usize)>> {
    if args.instances.is_empty() {
        return Ok(args.targets.iter().map(|&k| (k, 1)).collect());
    }
    anyhow::ensure!(
        args.scenario == Scenario::Publish,
        "--instances is for the publish scenario"
    );
    Ok(args
        .instances
        .iter()
        .map(|&n| (Kind::Herald, usize::from(n)))
        .collect())
}

fn side_name(kind: Kind, instances: usize) -> String {
    if instances > 1 {
        format!("{kind} x{instances}")
    } else {
        kind.to_string()
    }
}

/// Runs every parameter set on every side, `--rounds` times interleaved
/// (every side, then every side again); groups reports by round and
/// parameter set, sides side by side.
async fn compare(args: &CompareArgs) -> anyhow::Result<Vec<Vec<Report>>> {
    let params = args.workload.params(args.scenario);
    let sides = sides(args)?;
    let rounds = usize::from(args.rounds);
    // A comparison with one side missing is not one: stop before any run.
    for &(kind, _) in &sides {
        servers::preflight(kind, &args.servers.options())
            .with_context(|| format!("{kind} cannot be started"))?;
    }
    let mut groups: Vec<Vec<Report>> = Vec::new();
    for round in 1..=rounds {
        let first = groups.len();
        groups.extend(params.iter().map(|_| Vec::new()));
        for &(kind, instances) in &sides {
            let name = side_name(kind, instances);
            if rounds > 1 {
                eprintln!("round {round} of {rounds}: starting {name}");
            } else {
                eprintln!("starting {name}");
            }
            let spawned = cluster::spawn(kind, &args.servers.options(), instances)
                .await
                .with_context(|| format!("{name} did not start"))?;
            let cluster = spawned.cluster();
            let postgres = postgres_pid(kind, &args.servers).await;
            for (i, p) in params.iter().enumerate() {
                eprintln!("{name}: {}", p.describe(args.scenario));
                match herald_bench::scenario::run_on(args.scenario, &cluster, postgres, p.clone())
                    .await
                {
                    Ok(mut r) => {
                        r.round = (rounds > 1).then_some(round);
                        groups[first + i].push(r);
                    }
                    Err(e) => eprintln!("{name}: {e:#}"),
                }
            }
            spawned.stop().await?;
        }
    }
    groups.retain(|g| !g.is_empty());
    if groups.is_empty() {
        anyhow::bail!("no run completed");
    }
    Ok(groups)
}

/// PostgreSQL's postmaster, to measure beside herald: `--postgres-pid`, or
/// found through the admin URL (`0`, nchan, or not found: none).
async fn postgres_pid(kind: Kind, args: &ServerArgs) -> Option<u32> {
    if kind != Kind::Herald {
        return None;
    }
    match args.postgres_pid {
        Some(0) => None,
        Some(pid) => Some(pid),
        None => match herald_bench::postgres::postmaster(&args.database_admin_url).await {
            Ok(pid) => Some(pid),
            Err(e) => {
                eprintln!("PostgreSQL's CPU will not be reported: {e:#}");
                None
            }
        },
    }
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
