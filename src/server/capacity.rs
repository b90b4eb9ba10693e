//! How many client connections an instance holds at once
//! (`--max-connections`), and what a connection beyond them gets.
//!
//! Every open connection costs a file descriptor. At the process's file
//! limit `accept` fails, and what waits in the listen backlog gets no
//! answer at all: found from outside, under `ulimit -n 256`, 157 of 400
//! stream clients waited with nothing, and `/healthz` went unanswered too,
//! so an orchestrator would have restarted an instance that was only full.
//! So the soft limit is raised to the hard one at start, and the cap sits
//! below it by a reserve: PostgreSQL's pool and the process's own files,
//! and room to accept a connection beyond the cap, read its head and
//! answer it. Beyond the cap a request gets `503` problem+json with
//! `Retry-After` (a stream's client comes back later, or to another
//! instance), while `/healthz`, `/readyz` and `/metrics` are still served.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry;

/// File descriptors kept free beyond the pool's: the process's own files
/// and sockets, and connections beyond the cap while they are answered.
const RESERVE: usize = 64;
/// The file limit taken into account at most (the hard limit may be
/// "unlimited").
const MAX_FILE_LIMIT: u64 = 1 << 20;
/// How long a connection beyond the cap may take to send its request
/// head: it holds a descriptor of the reserve meanwhile.
pub const OVER_CAP_HEAD_TIMEOUT: Duration = Duration::from_secs(1);

/// Raises the soft limit on open files to the hard limit; returns the
/// limit now in force (`None` if it cannot be read).
pub fn raise_file_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// The cap: `configured` when set (not 0); else the file limit less the
/// pool's connections and [`RESERVE`], and at least half the limit.
pub fn max_connections(configured: usize, file_limit: Option<u64>, db_pool: u32) -> usize {
    if configured > 0 {
        return configured;
    }
    let limit = usize::try_from(file_limit.unwrap_or(1024).min(MAX_FILE_LIMIT)).unwrap_or(1024);
    let reserve = RESERVE + db_pool as usize;
    limit.saturating_sub(reserve).max(limit / 2).max(1)
}

/// The connection slots of an instance.
#[derive(Clone)]
pub struct Capacity {
    slots: Arc<Semaphore>,
    max: usize,
}

impl Capacity {
    pub fn new(max: usize) -> Self {
        metrics::gauge!(telemetry::CONNECTIONS_MAX).set(max as f64);
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A slot for a new connection, held for its life; `Err` with the cap
    /// when every slot is taken.
    pub fn take(&self) -> Result<OwnedSemaphorePermit, usize> {
        self.slots.clone().try_acquire_owned().map_err(|_| self.max)
    }
}

/// Counts a request refused for want of a slot.
pub fn count_refusal() {
    metrics::counter!(telemetry::CONNECTIONS_REFUSED).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_the_limit_less_a_reserve_unless_configured() {
        assert_eq!(max_connections(500, Some(256), 16), 500);
        assert_eq!(max_connections(0, Some(256), 16), 256 - 64 - 16);
        assert_eq!(max_connections(0, Some(20_000), 16), 20_000 - 80);
        // A small limit keeps half of it for clients.
        assert_eq!(max_connections(0, Some(100), 16), 50);
        // "Unlimited" is taken as a million.
        assert_eq!(max_connections(0, Some(u64::MAX), 16), (1 << 20) - 80);
    }

    #[test]
    fn a_full_capacity_refuses_until_a_slot_is_given_back() {
        let capacity = Capacity::new(2);
        let a = capacity.take().unwrap();
        let _b = capacity.take().unwrap();
        assert_eq!(capacity.take().err(), Some(2));
        drop(a);
        assert!(capacity.take().is_ok());
    }
}
