//! The log tail: LISTEN/NOTIFY wakes it, then it reads every row after its
//! cursor and hands the frames to the hub (docs/ARCHITECTURE.md, "One delivery path").
//! An append's notification carries the events it committed; when they
//! are the next ones after the cursor, the listener takes them from the
//! notification instead of reading them back (`log/notice.rs`).
//!
//! Nothing depends on a notification arriving. The listener also reads on
//! a timer, so a notification lost on a dead connection delays delivery by
//! at most `poll_interval`; and when the LISTEN connection has been silent for
//! `listener_probe` it notifies itself, reconnecting if even that does not
//! arrive (sqlx sets no TCP keepalive, so a silently dead connection would
//! otherwise hang forever). Whatever happens to the connection, the cursor
//! stays, and reading on from it loses nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::event::Frame;
use crate::hub::Hub;
use crate::log::{EventLog, Kept, LogError, NOTIFY_CHANNEL, Notice};
use crate::telemetry;

/// Rows read per query while catching up.
const PAGE: i64 = 1000;

/// Whether the LISTEN connection is up; read by `/readyz`.
#[derive(Default)]
pub struct ListenerStatus {
    attached: AtomicBool,
}

impl ListenerStatus {
    pub fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Relaxed)
    }

    fn set(&self, up: bool) {
        self.attached.store(up, Ordering::Relaxed);
        metrics::gauge!(telemetry::LISTENER_ATTACHED).set(if up { 1.0 } else { 0.0 });
    }
}

pub struct LogTail {
    pub log: EventLog,
    pub hub: Hub,
    pub status: Arc<ListenerStatus>,
    pub poll_interval: Duration,
    pub probe_after: Duration,
    /// The connection its reads keep between commits (`log/kept.rs`).
    pub kept: Kept,
}

/// Loads the newest `ring_size` events into the hub so that resumes right
/// after a start are served from memory; the hub's head becomes the log's.
///
/// # Errors
/// [`LogError`] if the log cannot be read.
pub async fn warm(log: &EventLog, hub: &Hub, ring_size: usize) -> Result<(), LogError> {
    let head = log.head().await?;
    let tail = log.read_tail(ring_size as i64).await?;
    let floor = tail.first().map_or(head.last_id, |e| e.id - 1);
    let frames = tail.iter().map(|e| Arc::new(e.to_frame())).collect();
    hub.warm(floor, frames);
    // Rows of transactions that committed between the two reads are picked up
    // by the first catch-up.
    Ok(())
}

impl LogTail {
    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let probe_payload = format!("probe:{}", std::process::id());
        let mut first = true;
        while !shutdown.is_cancelled() {
            let listener = tokio::select! {
                l = self.attach() => l,
                () = shutdown.cancelled() => break,
            };
            let Some(listener) = listener else {
                self.catch_up().await;
                tokio::select! {
                    () = tokio::time::sleep(self.poll_interval) => {}
                    () = shutdown.cancelled() => break,
                }
                continue;
            };
            if !first {
                metrics::counter!(telemetry::LISTENER_RECONNECTS).increment(1);
                tracing::info!("listener reattached; reading on from its cursor");
            }
            first = false;
            self.status.set(true);
            self.follow(listener, &probe_payload, &shutdown).await;
            self.status.set(false);
        }
    }

    async fn attach(&self) -> Option<PgListener> {
        let mut listener = match PgListener::connect_with(self.log.pool()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listener cannot connect to PostgreSQL");
                return None;
            }
        };
        // The listener stops on its own token, after the server: a pool
        // that closes first (at the very end of a stop) must not look like
        // a lost connection to reconnect.
        listener.ignore_pool_close_event(true);
        match listener.listen(NOTIFY_CHANNEL).await {
            Ok(()) => Some(listener),
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN failed");
                None
            }
        }
    }

    /// Reads the log on every notification and tick until the connection is
    /// lost or found dead, or `shutdown`.
    async fn follow(
        &mut self,
        mut listener: PgListener,
        probe: &str,
        shutdown: &CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        let mut probed: Option<Instant> = None;
        // Anything committed before LISTEN took effect.
        self.catch_up().await;
        loop {
            tokio::select! {
                n = listener.try_recv() => match n {
                    Ok(Some(first)) => {
                        heard = Instant::now();
                        probed = None;
                        // In commit order, with the ones that came while we
                        // were busy: each continues the cursor or sends us to
                        // the log, after which the rest are mostly behind it.
                        self.take(first.payload()).await;
                        while let Some(next) = listener.next_buffered() {
                            self.take(next.payload()).await;
                        }
                    }
                    Ok(None) => {
                        // sqlx reconnected underneath: notifications may have
                        // been lost, the cursor has not.
                        metrics::counter!(telemetry::LISTENER_RECONNECTS).increment(1);
                        tracing::info!("listener connection re-established");
                        heard = Instant::now();
                        self.catch_up().await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "listener connection lost");
                        return;
                    }
                },
                _ = tick.tick() => {
                    self.catch_up().await;
                    if let Some(sent) = probed {
                        if sent.elapsed() > self.probe_after {
                            tracing::warn!("listener heard nothing, not even its own probe; reconnecting");
                            return;
                        }
                    } else if heard.elapsed() > self.probe_after {
                        probed = Some(Instant::now());
                        self.send_probe(probe).await;
                    }
                }
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn send_probe(&self, payload: &str) {
        let sent = sqlx::query("select pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(payload)
            .execute(self.log.pool())
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "listener probe not sent");
        }
    }

    /// One notification: the events it carries when they continue the
    /// hub's head (`log/notice.rs`); a read of the log when something may
    /// lie between, or when it carries none.
    async fn take(&mut self, payload: &str) {
        let head = self.hub.head();
        match Notice::parse(payload) {
            Notice::Events { after, events } if after <= head => {
                let frames: Vec<Arc<Frame>> = events
                    .iter()
                    .filter(|e| e.id > head)
                    .map(|e| Arc::new(e.to_frame()))
                    .collect();
                self.deliver(&frames, telemetry::listener_events_notified());
            }
            Notice::Hint { last } if last <= head => {}
            Notice::Events { .. } | Notice::Hint { .. } | Notice::Other => self.catch_up().await,
        }
    }

    /// Hands the next frames of the log to the hub.
    /// `counted`: the `herald_listener_events_total` of where they came from.
    fn deliver(&self, frames: &[Arc<Frame>], counted: &metrics::Counter) {
        let Some(last) = frames.last() else { return };
        telemetry::log_head().set(last.id as f64);
        counted.increment(frames.len() as u64);
        self.hub.publish(frames);
    }

    /// Reads every committed event after the hub's head and publishes it.
    /// If retention pruned events the hub never had (this instance fell
    /// behind by more than the retention), the hub's streams are cut
    /// rather than passed over the gap.
    pub async fn catch_up(&mut self) {
        loop {
            let cursor = self.hub.head();
            let read = match self.log.read_all_after(&mut self.kept, cursor, PAGE).await {
                Ok(read) => read,
                Err(e) => {
                    tracing::debug!(error = %e, "catch-up read failed; retrying on the next tick");
                    return;
                }
            };
            if read.passed_over(cursor) {
                tracing::warn!(
                    cursor,
                    pruned_through = read.head.pruned_through,
                    "retention pruned events this instance had not read; ending its streams \
                     so that their clients resume (and are reset)"
                );
                self.hub.cut(read.head.pruned_through);
            }
            let page = read.events;
            if page.is_empty() {
                return;
            }
            let full = page.len() as i64 == PAGE;
            let frames: Vec<Arc<Frame>> = page.iter().map(|e| Arc::new(e.to_frame())).collect();
            self.deliver(&frames, telemetry::listener_events_read());
            if !full {
                return;
            }
        }
    }
}
