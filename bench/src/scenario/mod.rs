//! The workloads, each written once against [`Target`]:
//! - `publish`: publishers flat out (or at `--rate`), a few subscribers
//!   checking that every acknowledged event arrives; on herald, also on
//!   several instances of one database ([`run_on`]), with a `probe` of
//!   each one's commits and lock waits;
//! - `fanout`: many subscribers on one topic, publishers at a fixed rate;
//! - `idle`: many open streams and nothing published: memory per stream;
//! - `resume`: one client comes back after K missed events: time to replay;
//! - `storm`: many clients come back at once after K missed events;
//! - `peruser`: every subscriber on a topic of its own, events spread over
//!   the topics, optionally a few subscribers on every topic;
//! - `peruser-storm`: as `peruser`, with the ring filled first and a
//!   reconnect storm of per-user clients while events flow;
//! - `retention`: a prune of a million events under publish load; it
//!   starts its own herald instances, so it is run through
//!   [`retention::run`], not [`run`];
//! - `churn`: streams opened and dropped at a steady rate beside
//!   publishers at a fixed rate: publish latency and herald's registry
//!   write lag (it has no subscribers to sync).
//!
//! Every scenario first waits until all its subscribers are live (each has
//! received a sync event), so measured events are never published into a
//! stream that is still opening, and the correctness counters are exact.
//!
//! This file only dispatches; what the scenarios share is in `ctx` and
//! `clients`, which import nothing back from here.

mod churn;
mod clients;
mod ctx;
mod idle;
mod live;
mod peruser;
mod peruser_storm;
mod probe;
mod publishing;
mod resume;
pub mod retention;

use std::sync::Arc;

use crate::cluster::Cluster;
use crate::net::Sources;
use crate::report::Report;
use crate::target::Target;
use crate::workload::{Params, Scenario};

use ctx::Ctx;
pub use ctx::Processes;

/// Runs `scenario` against `target` and reports.
///
/// # Errors
/// When the server cannot be reached or subscribers cannot be opened; a
/// server that loses or repeats events is a finding, in the report.
pub async fn run(
    scenario: Scenario,
    target: Arc<dyn Target>,
    processes: Processes,
    params: Params,
) -> anyhow::Result<Report> {
    let cluster = Cluster::single(target, processes.server);
    run_on(scenario, &cluster, processes.postgres, params).await
}

/// Runs `scenario` against every instance of `cluster` (client `i` on
/// instance `i mod n`; only `publish` takes more than one) and reports;
/// PostgreSQL's postmaster is `postgres`.
///
/// # Errors
/// As [`run`]; and several instances for a scenario other than `publish`.
pub async fn run_on(
    scenario: Scenario,
    cluster: &Cluster,
    postgres: Option<u32>,
    mut params: Params,
) -> anyhow::Result<Report> {
    anyhow::ensure!(!cluster.is_empty(), "no server to run against");
    anyhow::ensure!(
        cluster.len() == 1 || scenario == Scenario::Publish,
        "several instances are for the publish scenario only"
    );
    let target = cluster.members[0].target.clone();
    let processes = Processes {
        server: cluster.members[0].pid,
        postgres,
    };
    params.batch = params.batch.clamp(1, target.max_batch());
    params.publishers = params.publishers.max(1);
    params.topics = params.topics.max(1);
    let connections = params.connections(scenario);
    crate::net::ensure_fds(connections)?;
    let sources = Arc::new(Sources::new(
        target.addr(),
        params.source_addrs,
        params.ports(scenario),
    ));
    let ctx = Ctx {
        target,
        cluster: Arc::new(cluster.clone()),
        processes,
        params,
        sources,
        scenario,
    };
    match scenario {
        Scenario::Publish | Scenario::Fanout => live::run(&ctx).await,
        Scenario::Idle => idle::run(&ctx).await,
        Scenario::Resume => resume::run(&ctx, false).await,
        Scenario::Storm => resume::run(&ctx, true).await,
        Scenario::PerUser => peruser::run(&ctx, false).await,
        Scenario::PerUserStorm => peruser::run(&ctx, true).await,
        Scenario::Churn => churn::run(&ctx).await,
        Scenario::Retention => anyhow::bail!(
            "the retention scenario starts its own herald: herald-bench run --spawn --scenario retention"
        ),
    }
}
