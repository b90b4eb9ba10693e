//! When a stream ends on an instance that is stopping: each stream gets its
//! own slot in the drain window, so a stopping instance sheds its clients
//! evenly instead of all in the same second (and they do not all reconnect
//! to the next instance at once).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::{Sleep, sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Streams opened so far in this process: the index of the next slot.
static ORDINAL: AtomicU64 = AtomicU64::new(0);

/// The golden ratio's fractional part: successive multiples of it, modulo
/// one, spread over [0, 1) as evenly as any sequence can (a low-discrepancy
/// sequence), however many streams there are.
const SPREAD: f64 = 0.618_033_988_749_895;

/// The offset into a drain window of `window` for the `n`th stream.
pub fn slot(n: u64, window: Duration) -> Duration {
    window.mul_f64((n as f64 * SPREAD).fract())
}

/// When one stream must end: its slot in the drain window after the
/// instance began to stop. Both waits live here, polled in place, so the
/// stream registers with the shutdown token and the timer once, not on
/// every frame.
pub enum EndWatch {
    Running {
        shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
        offset: Duration,
    },
    Draining(Pin<Box<Sleep>>),
}

impl EndWatch {
    /// The next stream's watch over `shutdown`, in the next slot of a drain
    /// window of `window`.
    pub fn next(shutdown: CancellationToken, window: Duration) -> Self {
        let n = ORDINAL.fetch_add(1, Ordering::Relaxed);
        Self::Running {
            shutdown: Box::pin(shutdown.cancelled_owned()),
            offset: slot(n, window),
        }
    }

    /// Resolves when the stream's slot has come. Cancel-safe.
    pub async fn wait(&mut self) {
        loop {
            match self {
                Self::Running { shutdown, offset } => {
                    shutdown.as_mut().await;
                    *self = Self::Draining(Box::pin(sleep(*offset)));
                }
                Self::Draining(slot) => return slot.as_mut().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_spread_evenly_over_the_window() {
        let window = Duration::from_secs(10);
        let mut seconds = [0_u32; 10];
        for n in 0..1000 {
            let offset = slot(n, window);
            assert!(offset < window);
            seconds[offset.as_secs() as usize] += 1;
        }
        // Every second of the window gets its tenth, give or take a few.
        for (s, count) in seconds.iter().enumerate() {
            assert!((95..=105).contains(count), "second {s}: {count}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_watch_ends_at_its_slot_after_shutdown() {
        let shutdown = CancellationToken::new();
        let mut watch = EndWatch::Running {
            shutdown: Box::pin(shutdown.clone().cancelled_owned()),
            offset: Duration::from_secs(3),
        };
        let started = tokio::time::Instant::now();
        shutdown.cancel();
        watch.wait().await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }
}
