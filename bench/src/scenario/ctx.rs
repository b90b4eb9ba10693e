//! What every scenario runs against ([`Ctx`]), a fresh topic per run, and
//! the samplers of the server's, PostgreSQL's and the client's resources.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::net::Sources;
use crate::procfs::{Resources, Sampler, Scope};
use crate::target::{self, Target};
use crate::workload::{Params, Scenario};

/// What a scenario runs against.
#[derive(Clone)]
pub struct Ctx {
    /// The first instance: the one the harness's own publishes (sync
    /// events, probes) go to.
    pub target: Arc<dyn Target>,
    /// Every instance; client `i` uses `cluster.member(i)`.
    pub cluster: Arc<Cluster>,
    pub processes: Processes,
    pub params: Params,
    pub sources: Arc<Sources>,
    pub scenario: Scenario,
}

/// A fresh topic for one run.
pub(super) fn fresh_topic(scenario: Scenario) -> Arc<str> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    target::topic(&scenario.to_string(), N.fetch_add(1, Ordering::Relaxed)).into()
}

/// The processes whose resources a run reports, when known.
#[derive(Debug, Clone, Copy, Default)]
pub struct Processes {
    /// The server; its process tree is measured (nginx: the master and its
    /// workers).
    pub server: Option<u32>,
    /// PostgreSQL's postmaster, when the server is herald: its tree (every
    /// backend, the WAL writer, the checkpointer, …) is measured beside it.
    pub postgres: Option<u32>,
}

/// Memory and CPU over a measured window: the server, PostgreSQL, and the
/// harness itself (this process alone, not the servers it started).
pub(super) struct Samplers {
    /// One per instance.
    servers: Vec<Option<Sampler>>,
    postgres: Option<Sampler>,
    client: Option<Sampler>,
}

/// What [`Samplers`] found.
pub(super) struct Measured {
    /// Every instance together.
    pub(super) server: Option<Resources>,
    /// Each instance, in instance order.
    pub(super) servers: Vec<Option<Resources>>,
    pub(super) postgres: Option<Resources>,
    pub(super) client: Option<Resources>,
}

impl Samplers {
    /// Starts sampling every 250 ms.
    pub(super) fn start(ctx: &Ctx) -> Self {
        let period = Duration::from_millis(250);
        let tree = |pid: Option<u32>| pid.and_then(|pid| Sampler::start(pid, period));
        Self {
            servers: ctx.cluster.members.iter().map(|m| tree(m.pid)).collect(),
            postgres: tree(ctx.processes.postgres),
            client: Sampler::start_scoped(std::process::id(), Scope::Process, period),
        }
    }

    /// Stops sampling and sums up the window.
    pub(super) async fn finish(self) -> Measured {
        async fn done(s: Option<Sampler>) -> Option<Resources> {
            match s {
                Some(s) => s.finish().await,
                None => None,
            }
        }
        let mut servers = Vec::with_capacity(self.servers.len());
        for s in self.servers {
            servers.push(done(s).await);
        }
        Measured {
            server: Resources::sum(&servers),
            servers,
            postgres: done(self.postgres).await,
            client: done(self.client).await,
        }
    }
}
