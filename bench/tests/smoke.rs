//! CI smoke run of the harness: every scenario, tiny, against herald started
//! in-process on a fresh database (and against nchan when nginx and the
//! module are installed). It asserts the correctness counters only (nothing
//! missing, repeated or out of order); timings on a shared CI machine mean
//! nothing, so none is asserted.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use herald::{Config, Instance};
use herald_bench::scenario::Processes;
use herald_bench::scenario::retention::{BoxFuture, Launcher, Started};
use herald_bench::{
    Kind, Params, Report, Scenario, Target, postgres, procfs, scenario, servers, target,
};
use tokio::sync::oneshot;

mod common;
use common::{TestDb, admin_url};

/// herald on port 0 and a fresh database, until the returned sender is
/// dropped or fired.
async fn start_herald(db: &TestDb) -> (Arc<dyn Target>, oneshot::Sender<()>) {
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database_url = db.url.clone();
    config.drain = Duration::from_millis(100);
    config.poll_interval = Duration::from_millis(200);
    let server = Instance::build(config).await.expect("herald starts");
    let target = target::make(Kind::Herald, server.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    (target, stop)
}

/// Each scenario, tiny: a few seconds for all five together.
fn tiny(s: Scenario) -> Params {
    let base = Params {
        duration: None,
        connect_concurrency: Some(64),
        settle: Duration::ZERO,
        drain_timeout: Duration::from_secs(20),
        ..Params::defaults(s)
    };
    match s {
        Scenario::Publish => Params {
            subscribers: 3,
            publishers: 4,
            events: Some(500),
            ..base
        },
        Scenario::Fanout => Params {
            subscribers: 20,
            publishers: 2,
            // Two topics: each subscriber expects only its topic's events.
            topics: 2,
            rate: Some(1000.0),
            events: Some(300),
            ..base
        },
        Scenario::Idle => Params {
            subscribers: 20,
            ..base
        },
        Scenario::Resume => Params {
            publishers: 2,
            batch: 50,
            missed: 200,
            repeat: 2,
            ..base
        },
        Scenario::Storm => Params {
            subscribers: 50,
            publishers: 2,
            batch: 25,
            missed: 50,
            ..base
        },
        // A dashboard beside the per-user subscribers.
        Scenario::PerUser => Params {
            subscribers: 30,
            wildcard_subscribers: 2,
            publishers: 4,
            rate: Some(1000.0),
            events: Some(400),
            ..base
        },
        // The storm in the middle of 1.2 s of events.
        Scenario::PerUserStorm => Params {
            subscribers: 20,
            storm_clients: 10,
            wildcard_subscribers: 1,
            publishers: 4,
            rate: Some(500.0),
            events: Some(600),
            fill: 500,
            storm_after: Duration::from_millis(300),
            storm_away: Duration::from_millis(200),
            ..base
        },
        // Not in ALL: no subscriber checks deliveries (see below). 100
        // opens a second, each held 200 ms.
        Scenario::Churn => Params {
            publishers: 2,
            topics: 2,
            rate: Some(200.0),
            duration: Some(Duration::from_secs(2)),
            churn_per_minute: 6000,
            churn_hold: Duration::from_millis(200),
            ..base
        },
        // Not in ALL: it starts its own herald instances (see below).
        Scenario::Retention => Params {
            publishers: 4,
            rate: Some(500.0),
            duration: Some(Duration::from_millis(500)),
            fill: 20_000,
            prune: 5_000,
            ..base
        },
    }
}

const ALL: [Scenario; 7] = [
    Scenario::Publish,
    Scenario::Fanout,
    Scenario::Idle,
    Scenario::Resume,
    Scenario::Storm,
    Scenario::PerUser,
    Scenario::PerUserStorm,
];

fn assert_clean(r: &Report) {
    let c = &r.correctness;
    assert!(
        r.is_clean(),
        "{} {}: missing {} duplicate {} out of order {} id regressions {} resets {} failed {}; {:?}\n{}",
        r.target,
        r.scenario,
        c.missing,
        c.duplicates,
        c.out_of_order,
        c.id_regressions,
        c.resets,
        c.failed_subscribers,
        c.first_error,
        herald_bench::table::render(&[r])
    );
    assert!(c.subscribers > 0);
    assert!(c.expected_per_subscriber > 0, "something was measured");
    if let Some(u) = &r.per_user {
        assert_eq!(
            u.wildcard_subscription.is_some(),
            u.wildcard_subscribers > 0
        );
        assert!(u.wildcard_deliveries > 0, "the dashboard got events");
        if let Some(s) = &u.storm {
            assert!(s.missed_events > 0, "the storm clients missed something");
            assert!(s.live_latency_during.is_some(), "live events flowed");
        }
    }
}

async fn run_all(target: &Arc<dyn Target>, processes: Processes) {
    for s in ALL {
        let report = scenario::run(s, target.clone(), processes, tiny(s))
            .await
            .unwrap_or_else(|e| panic!("{} {s}: {e:#}", target.kind()));
        assert_clean(&report);
        assert_eq!(report.postgres.is_some(), processes.postgres.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_against_herald_delivers_each_event_once_in_order() {
    let db = TestDb::create().await;
    let (target, stop) = start_herald(&db).await;
    let postgres = postgres::postmaster(&admin_url()).await.ok();

    run_all(
        &target,
        Processes {
            server: None,
            postgres,
        },
    )
    .await;

    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_against_nchan_delivers_each_event_once_in_order() {
    let opts = servers::Options {
        herald_bin: None,
        herald_args: Vec::new(),
        admin_url: admin_url(),
        nginx_bin: "nginx".into(),
        nchan_module: None,
        nchan_config: None,
    };
    let module = [
        "/usr/lib/nginx/modules/ngx_nchan_module.so",
        "/usr/share/nginx/modules/ngx_nchan_module.so",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).exists());
    if !module {
        eprintln!(
            "nchan not installed (apt-get install libnginx-mod-nchan): nchan smoke run not done"
        );
        return;
    }
    let nchan = servers::spawn(Kind::Nchan, &opts)
        .await
        .expect("nginx with nchan starts");
    let target = target::make(Kind::Nchan, nchan.addr);

    run_all(
        &target,
        Processes {
            server: Some(nchan.pid),
            postgres: None,
        },
    )
    .await;

    nchan.stop().await.expect("nginx stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_churn_scenario_opens_and_drops_streams_and_reads_the_registry_lag() {
    let db = TestDb::create().await;
    let (target, stop) = start_herald(&db).await;

    let report = scenario::run(
        Scenario::Churn,
        target,
        Processes::default(),
        tiny(Scenario::Churn),
    )
    .await
    .expect("the churn scenario runs");

    let table = herald_bench::table::render(&[&report]);
    let c = report.churn.as_ref().expect("churn stats");
    assert!(report.is_clean(), "{table}");
    assert!(c.opened >= 100, "about 200 streams opened in 2 s: {table}");
    assert_eq!(c.opened, c.opens, "{table}");
    assert!(c.held_peak >= 1, "{table}");
    assert!(
        c.lag_samples > 0,
        "herald exports the registry lag: {table}"
    );
    let _ = stop.send(());
}

#[tokio::test]
async fn postgresql_is_measured_from_its_postmaster() {
    let postmaster = postgres::postmaster(&admin_url())
        .await
        .expect("PostgreSQL runs on this machine for the tests (see README)");

    let name = procfs::command_name(postmaster);
    let parent = procfs::parent(postmaster).and_then(procfs::command_name);
    let usage = procfs::usage(postmaster).expect("the postmaster is alive");

    assert_eq!(name.as_deref(), Some("postgres"));
    assert_ne!(
        parent.as_deref(),
        Some("postgres"),
        "the root, not a backend"
    );
    assert!(
        usage.processes > 1,
        "backends and auxiliary processes: {usage:?}"
    );
}

/// herald instances in this process, as the retention scenario asks for
/// them: its flags parsed as the binary parses them, on port 0.
struct InProcess;

impl Launcher for InProcess {
    fn start(
        &self,
        database_url: String,
        flags: Vec<String>,
    ) -> BoxFuture<'_, anyhow::Result<Started>> {
        Box::pin(async move {
            let mut config =
                Config::try_parse_from(std::iter::once("herald".to_owned()).chain(flags))?;
            config.listen = "127.0.0.1:0".parse()?;
            config.database_url = database_url;
            config.drain = Duration::from_millis(100);
            config.poll_interval = Duration::from_millis(200);
            let server = Instance::build(config).await?;
            let addr = server.local_addr();
            let (stop, stopped) = oneshot::channel::<()>();
            let running = tokio::spawn(server.run_until(async {
                let _ = stopped.await;
            }));
            Ok(Started::new(
                addr,
                Box::pin(async move {
                    let _ = stop.send(());
                    running.await??;
                    Ok(())
                }),
            ))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_scenario_prunes_under_load_and_reports_sizes() {
    let params = tiny(Scenario::Retention);
    let (fill, prune) = (params.fill, params.prune);

    let report = herald_bench::scenario::retention::run(&InProcess, &admin_url(), params)
        .await
        .expect("the retention scenario runs");

    let r = report.retention.as_ref().expect("retention figures");
    let table = herald_bench::table::render(&[&report]);
    assert!(report.is_clean(), "{table}");
    assert!(r.pruned_through >= i64::try_from(prune).unwrap(), "{table}");
    assert!(r.baseline.events_acked > 0 && report.publish.as_ref().unwrap().events_acked > 0);
    assert!(r.replays_baseline > 0, "replays ran: {table}");
    assert!(r.before.live_rows > 0 || r.before.total_bytes > 0);
    assert!(r.before.total_bytes >= r.before.table_bytes + r.before.index_bytes);
    assert_eq!(report.params.fill, fill);
    assert!(table.contains("replay wait ms"), "{table}");
}
