//! The `publish` scenario on several herald instances of one database
//! (issue 26), tiny: two instances started in-process, the publishers split
//! across them, and the probe's figures in the report. As in the smoke
//! run, only what a short run on a shared machine can show is asserted:
//! correctness, each instance's share, and that every figure was read,
//! never a timing.

use std::time::Duration;

use herald::{Config, Instance};
use herald_bench::cluster::{Cluster, Member};
use herald_bench::{Kind, Params, Report, Scenario, postgres, rounds, scenario, target};
use tokio::sync::oneshot;

mod common;
use common::{TestDb, admin_url};

/// An instance named `name` on `db`, on port 0, until the sender fires.
async fn start_instance(db: &TestDb, name: &str) -> (Member, oneshot::Sender<()>) {
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database_url = db.url.clone();
    config.instance_name = Some(name.to_owned());
    config.drain = Duration::from_millis(100);
    config.poll_interval = Duration::from_millis(200);
    let server = Instance::build(config).await.expect("herald starts");
    let member = Member {
        target: target::make(Kind::Herald, server.local_addr()),
        name: Some(name.to_owned()),
        pid: None,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    (member, stop)
}

fn tiny() -> Params {
    Params {
        subscribers: 2,
        publishers: 5,
        duration: None,
        events: Some(600),
        drain_timeout: Duration::from_secs(20),
        ..Params::defaults(Scenario::Publish)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_the_publishers_and_report_commits_and_lock_waits() {
    let db = TestDb::create().await;
    let (one, stop_one) = start_instance(&db, "bench-1").await;
    let (two, stop_two) = start_instance(&db, "bench-2").await;
    let cluster = Cluster {
        members: vec![one, two],
        database_url: Some(db.url.clone()),
    };
    let postmaster = postgres::postmaster(&admin_url()).await.ok();

    let report = scenario::run_on(Scenario::Publish, &cluster, postmaster, tiny())
        .await
        .expect("the publish scenario runs on two instances");

    let table = herald_bench::table::render(&[&report]);
    assert!(report.is_clean(), "{table}");
    let c = report.cluster.as_ref().expect("cluster figures");
    let total = report.publish.as_ref().unwrap();
    assert_eq!(c.instances, 2);
    assert_eq!(total.events_acked, 600, "{table}");
    // 5 publishers: 3 on the first instance, 2 on the second.
    let shares: Vec<usize> = c
        .per_instance
        .iter()
        .map(|i| i.publish.publishers)
        .collect();
    assert_eq!(shares, [3, 2]);
    let acked: Vec<u64> = c
        .per_instance
        .iter()
        .map(|i| i.publish.events_acked)
        .collect();
    assert_eq!(acked, [360, 240], "{table}");
    assert_eq!(c.per_instance[1].name, "herald/bench-2");
    for i in &c.per_instance {
        // Both instances share this process's metrics recorder, so each
        // scrape has both committers' appends: only their presence counts.
        let a = i.appends.as_ref().expect("append metrics read");
        assert!(a.commits > 0 && a.group_events_mean >= 1.0, "{table}");
        let w = i.waits.as_ref().expect("backends sampled");
        assert!(w.samples > 0, "{table}");
    }
    let d = c.database.as_ref().expect("database figures");
    assert!(
        d.xact_commits_per_sec >= 0.0 && d.waits.samples > 0,
        "{table}"
    );
    assert!(table.contains("#2 publish rate (events/s)"), "{table}");
    assert!(table.contains("lock wait / WAL wait"), "{table}");
    assert!(table.contains("herald x2"), "{table}");
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["cluster"]["per_instance"][1]["appends"]["commits_per_sec"].is_number());

    let _ = (stop_one.send(()), stop_two.send(()));
}

/// `report` as round `round` of a side with `instances`, publishing at
/// `rate`.
fn round_of(report: &Report, instances: usize, round: usize, rate: f64) -> Report {
    let mut r = report.clone();
    r.round = Some(round);
    r.publish.as_mut().unwrap().events_per_sec = rate;
    r.cluster.as_mut().unwrap().instances = instances;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_are_summed_up_as_medians_against_the_first_side() {
    let db = TestDb::create().await;
    let (one, stop) = start_instance(&db, "bench-1").await;
    let cluster = Cluster {
        members: vec![one],
        database_url: Some(db.url.clone()),
    };
    let report = scenario::run_on(Scenario::Publish, &cluster, None, tiny())
        .await
        .expect("the publish scenario runs");
    let _ = stop.send(());
    // Interleaved as `compare --rounds 3 --instances 1,2` runs them.
    let runs = [
        round_of(&report, 1, 1, 100.0),
        round_of(&report, 2, 1, 70.0),
        round_of(&report, 1, 2, 300.0),
        round_of(&report, 2, 2, 90.0),
        round_of(&report, 1, 3, 200.0),
        round_of(&report, 2, 3, 80.0),
    ];

    let summary = rounds::summary(&runs.iter().collect::<Vec<_>>());

    let line = |label: &str| {
        summary
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("{label}: {summary}"))
            .split_whitespace()
            .rev()
            .take(2)
            .collect::<Vec<_>>()
    };
    assert!(summary.contains("herald x2"), "{summary}");
    assert_eq!(line("publish rate (events/s), median"), ["80", "200"]);
    assert_eq!(line("... / herald's median"), ["0.40", "1.00"]);
    assert_eq!(line("rounds"), ["3", "3"]);
}
