//! The retention task every instance runs (README, "Retention"): every
//! [`Policy::interval`] it prunes the log if its policy says so and no
//! other instance is pruning ([`Pruner`]), then moves its hub's ring floor
//! up to the log's, so that a resume from below the floor is reset rather
//! than served from memory.
//!
//! An instance that keeps everything (`--retention 0`) still follows the
//! floor, which an instance with another policy may move.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::log::{EventLog, Policy, Pruner, Round};
use crate::telemetry;

pub use crate::log::PRUNE_LOCK;

pub struct Retention {
    pub log: EventLog,
    pub hub: Hub,
    pub policy: Policy,
}

impl Retention {
    /// Runs until `stop`; the first round runs at once.
    pub async fn run(self, stop: CancellationToken) {
        // The "retention not running" alert watches only deployments that
        // prune: with `--retention 0` no round ever completes, by choice.
        metrics::gauge!(telemetry::RETENTION_ENABLED).set(if self.policy.prunes() {
            1.0
        } else {
            0.0
        });
        let mut pruner = self
            .policy
            .prunes()
            .then(|| Pruner::new(&self.log.pool().connect_options(), self.policy));
        let mut tick = tokio::time::interval(self.policy.interval());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let floor = match pruner.as_mut() {
                Some(pruner) => match pruner.round(&stop).await {
                    Ok(Round::Done { head, .. }) => {
                        metrics::gauge!(telemetry::RETENTION_LAST_PRUNE).set(unix_now());
                        Some(head.pruned_through)
                    }
                    Ok(Round::Skipped) => None,
                    Ok(Round::Stopped) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "prune round failed; retrying next round");
                        None
                    }
                },
                None => None,
            };
            let floor = match floor {
                Some(floor) => floor,
                None => match self.log.head().await {
                    Ok(head) => head.pruned_through,
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot read the pruning floor");
                        continue;
                    }
                },
            };
            self.hub.prune_floor(floor);
            metrics::gauge!(telemetry::RETENTION_OLDEST_ID).set((floor + 1) as f64);
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}
