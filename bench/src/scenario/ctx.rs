//! What every scenario runs against ([`Ctx`]), a fresh topic per run, and
//! the samplers of the server's and the client's resources.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::net::Sources;
use crate::target::{self, Target};
use crate::workload::{Params, Scenario};

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

/// A fresh topic for one run.
pub(super) fn fresh_topic(scenario: Scenario) -> Arc<str> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    target::topic(&scenario.to_string(), N.fetch_add(1, Ordering::Relaxed)).into()
}

/// This process, sampled like the server.
pub(super) fn client_sampler() -> Option<crate::procfs::Sampler> {
    crate::procfs::Sampler::start(std::process::id(), Duration::from_millis(250))
}

/// Stops a sampler, if one was started, and sums up its window.
pub(super) async fn finish_sampler(
    sampler: Option<crate::procfs::Sampler>,
) -> Option<crate::procfs::Resources> {
    match sampler {
        Some(s) => s.finish().await,
        None => None,
    }
}

pub(super) fn server_sampler(ctx: &Ctx) -> Option<crate::procfs::Sampler> {
    ctx.server_pid
        .and_then(|pid| crate::procfs::Sampler::start(pid, Duration::from_millis(250)))
}
