//! What a group of subscribers shares ([`Shared`]): the counters the
//! scenarios watch, the latency shards, optionally a timeline of each
//! delivery, and the group's reconnect storm ([`Storm`]), if it has one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::payload;
use crate::stats::{Shards, Timeline};

/// What all subscribers of a run share.
pub struct Shared {
    /// Publish→receive latency, µs.
    pub latency: Shards,
    /// Measured events received, duplicates included.
    pub delivered: AtomicU64,
    /// When the last of them arrived, µs after `started` (0: none yet).
    pub last_delivery_us: AtomicU64,
    /// Subscribers whose first response head arrived (200).
    pub established: AtomicUsize,
    /// Subscribers that have seen a sync event.
    pub synced: AtomicUsize,
    /// Subscribers that have received all their expected events.
    pub caught_up: AtomicUsize,
    /// Subscribers that gave up.
    pub failed: AtomicUsize,
    /// Why the first one gave up.
    pub first_failure: std::sync::Mutex<Option<String>>,
    pub stop: CancellationToken,
    /// Bounds connections being opened at once (`None`: no bound).
    pub gate: Option<Arc<Semaphore>>,
    /// Catch-up times count from here.
    pub started: Instant,
    pub reconnect: bool,
    /// Each delivery's send time and latency, when latency over part of
    /// the run is wanted.
    pub timeline: Option<Timeline>,
    /// The group's reconnect storm, if it has one.
    pub storm: Option<Storm>,
}

/// A reconnect storm, as after a deploy or a network blip: [`Storm::cut`]
/// drops every connection of the group at once; the clients stay away
/// until [`Storm::rejoin`], then all reconnect at once with
/// `Last-Event-ID`, as `EventSource` does.
#[derive(Debug, Default)]
pub struct Storm {
    pub cut: CancellationToken,
    pub rejoin: CancellationToken,
    /// When the clients reconnect (ns since the epoch), set before
    /// `rejoin` fires: events sent before it are the ones they missed.
    pub rejoin_nanos: AtomicU64,
    /// Clients whose stream is open again.
    pub rejoined: AtomicUsize,
}

impl Storm {
    /// Reconnects every client now.
    pub fn rejoin_now(&self) {
        self.rejoin_nanos
            .store(payload::now_nanos(), Ordering::Relaxed);
        self.rejoin.cancel();
    }
}

impl Shared {
    /// When the last measured event arrived, if one did.
    pub fn last_delivery(&self) -> Option<Instant> {
        match self.last_delivery_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(self.started + Duration::from_micros(us)),
        }
    }

    pub fn new(subscribers: usize, connect_concurrency: Option<usize>) -> Arc<Self> {
        Arc::new(Self::unshared(subscribers, connect_concurrency))
    }

    /// A group's shared state before it is shared, to add a timeline or a
    /// storm.
    pub fn unshared(subscribers: usize, connect_concurrency: Option<usize>) -> Self {
        Self {
            latency: Shards::new(16.min(subscribers.max(1))),
            delivered: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
            established: AtomicUsize::new(0),
            synced: AtomicUsize::new(0),
            caught_up: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            first_failure: std::sync::Mutex::new(None),
            stop: CancellationToken::new(),
            gate: connect_concurrency.map(|n| Arc::new(Semaphore::new(n.max(1)))),
            started: Instant::now(),
            reconnect: true,
            timeline: None,
            storm: None,
        }
    }
}
