//! How a stream ended, and its life for the metrics and the log, recorded
//! once at its end however it ends.

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::registry::Enrolment;
use crate::telemetry;

/// Why a stream ended: the `reason` of `herald_streams_ended_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The client closed the connection (or it broke).
    ClientGone,
    /// The hub dropped it: its queue filled.
    Lagged,
    /// Its client took no bytes for `--write-timeout`.
    Stalled,
    /// The instance stopped and the stream's drain slot came.
    Drain,
    /// Its token expired.
    TokenExpired,
    /// Its subject (or address) opened a stream over its cap.
    Replaced,
    /// An admin ended it, or revoked its subject.
    Revoked,
    /// The same named stream connected again.
    Superseded,
    /// Writing failed otherwise.
    Error,
}

impl EndReason {
    pub fn label(self) -> &'static str {
        match self {
            Self::ClientGone => "client_gone",
            Self::Lagged => "lagged",
            Self::Stalled => "stalled",
            Self::Drain => "drain",
            Self::TokenExpired => "token_expired",
            Self::Replaced => "replaced",
            Self::Revoked => "revoked",
            Self::Superseded => "superseded",
            Self::Error => "error",
        }
    }
}

/// A stream's life for the metrics and the log, recorded once at its end,
/// however it ends (a client that leaves raises no error): counted in
/// `herald_streams_active` meanwhile, then one `herald_streams_ended_total`
/// by reason, its lifetime, its record in the registry, and one log line
/// (the registry's).
pub(super) struct Record {
    opened: Instant,
    /// Events written.
    pub(super) events: u64,
    /// The id of the last event written (or the cursor it started from).
    pub(super) last_id: i64,
    /// Its place in the registry (and its mailbox); none in unit tests.
    pub(super) enrolment: Option<Enrolment>,
    /// Why it ended, once known; at its drop, what the writer saw.
    pub(super) reason: Option<EndReason>,
    /// The id it went on after when it sent a reset (its cursor's events
    /// were pruned, or never existed), for the delivery audit.
    pub(super) reset_after: Option<i64>,
    lagged: CancellationToken,
}

impl Record {
    pub(super) fn new(lagged: CancellationToken, enrolment: Option<Enrolment>) -> Self {
        telemetry::streams_active().increment(1.0);
        metrics::counter!(telemetry::STREAMS_OPENED).increment(1);
        Self {
            opened: Instant::now(),
            events: 0,
            last_id: 0,
            enrolment,
            reason: None,
            reset_after: None,
            lagged,
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        telemetry::streams_active().decrement(1.0);
        // Through hyper, a lagging stream ends with its connection before
        // it learns why: the token says.
        let reason = self.reason.unwrap_or(if self.lagged.is_cancelled() {
            EndReason::Lagged
        } else {
            EndReason::ClientGone
        });
        let lived = self.opened.elapsed();
        metrics::counter!(telemetry::STREAMS_ENDED, "reason" => reason.label()).increment(1);
        metrics::histogram!(telemetry::STREAM_SECONDS).record(lived);
        if let Some(enrolment) = &self.enrolment {
            enrolment.end(
                reason.label(),
                self.last_id,
                self.reset_after,
                self.events,
                lived,
            );
        }
    }
}
