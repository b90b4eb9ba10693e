//! Commands for one live stream from outside it, beside its drain slot and
//! its token's expiry: change its topics (`PUT /v1/streams/{handle}`), or
//! end it (over a cap, an admin's end, a revocation). The registry delivers
//! them (`registry/control.rs`), from this instance or, through PostgreSQL,
//! from another; the stream takes them between frames, so a command never
//! lands in the middle of one.
//!
//! One small allocation per stream: a queue that is nearly always empty and
//! a waker, rather than a channel whose buffer every idle stream would
//! carry. The wait is a future of one reference: a stream's task holds it
//! inline while it waits (`tokio::sync::Notify`'s future made every idle
//! stream's task larger by its linked-list node).

use std::future::poll_fn;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use tokio::sync::oneshot;

use crate::event::Filters;

/// Why a stream is ended from outside; each is its last frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The subject (or the client address) opened a stream over its cap
    /// across the cluster, and this was its oldest: `event: replaced`.
    Replaced { cap_of: CapOf, cap: usize },
    /// An admin revoked the stream's subject: `event: revoked`.
    Revoked,
    /// An admin ended this one stream: `event: revoked`.
    Ended,
    /// The same named stream connected again (on this instance or
    /// another): this older connection goes without a word, since its
    /// client is the one that reconnected.
    Superseded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapOf {
    Subject,
    Address,
}

impl CapOf {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Subject => "max_streams_per_subject",
            Self::Address => "max_streams_per_ip",
        }
    }

    pub fn of_reason(reason: &str) -> Option<Self> {
        match reason {
            "max_streams_per_subject" => Some(Self::Subject),
            "max_streams_per_ip" => Some(Self::Address),
            _ => None,
        }
    }
}

/// Why a topic change was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeFailed {
    /// The change could not be recorded: the stream ended (its client
    /// resumes with the topics the registry holds).
    Unrecorded,
    /// The stream ended before it could take the change.
    Gone,
}

pub enum Command {
    /// New topics; the answer is the log id they apply after
    /// (`effective_at`), once recorded.
    Topics {
        filters: Filters,
        /// The control row of a change sent by another instance: its
        /// answer is recorded with the change.
        reply_to: Option<i64>,
        reply: oneshot::Sender<Result<i64, ChangeFailed>>,
    },
    End(Ending),
}

/// A stream's mailbox.
#[derive(Default)]
pub struct Control {
    commands: Mutex<Vec<Command>>,
    /// Set by `send`, cleared by the wait that sees it.
    sent: AtomicBool,
    waker: AtomicWaker,
}

impl Control {
    pub fn send(&self, command: Command) {
        self.commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(command);
        self.sent.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Waits until a command may be there.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.sent.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A send between the check and the registration woke the old
            // waker, or none: look again.
            if self.sent.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// The commands sent since the last call, oldest first.
    pub fn take(&self) -> Vec<Command> {
        std::mem::take(&mut *self.commands.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
