//! Where a replay reads what the hub's ring no longer holds: the event
//! log in pages bounded in count and bytes, or (in unit tests) events in
//! memory. A replaying stream holds one page until its client has taken
//! it, so the page bounds its memory whatever the size of the events.

use futures_util::future::BoxFuture;
use time::OffsetDateTime;

use crate::event::{Filters, StoredEvent};
use crate::log::{Bounds, EventLog, LogError};

/// Events read per replay query, at most.
const REPLAY_PAGE: i64 = 1000;
/// Bytes of `data` read per replay query, at most (one event always): a
/// replaying stream holds one page until its client has taken it, so this
/// bounds its memory whatever the size of the events.
pub const REPLAY_PAGE_BYTES: i64 = 256 * 1024;

/// Where a replay reads what the hub's ring no longer holds: the event log,
/// or (in unit tests) events in memory.
pub trait ReplaySource: Clone + Send + Sync + 'static {
    /// The newest id assigned and the pruning floor.
    fn head(&self) -> BoxFuture<'static, Result<Bounds, LogError>>;
    /// The cursor a `since=` time maps to.
    fn cursor_at(&self, time: OffsetDateTime) -> BoxFuture<'static, Result<i64, LogError>>;
    /// The next page of matching events after `after`, in id order.
    fn page(&self, after: i64, filters: Filters) -> BoxFuture<'static, Result<Page, LogError>>;
}

/// One page of a replay.
pub struct Page {
    pub events: Vec<StoredEvent>,
    /// No matching event after these in the snapshot the page was read in.
    pub complete: bool,
    /// The log's head in that snapshot: a cursor below its pruning floor
    /// may have had events pruned from under it.
    pub head: Bounds,
}

impl ReplaySource for EventLog {
    fn head(&self) -> BoxFuture<'static, Result<Bounds, LogError>> {
        let log = self.clone();
        Box::pin(async move { log.head().await })
    }

    fn cursor_at(&self, time: OffsetDateTime) -> BoxFuture<'static, Result<i64, LogError>> {
        let log = self.clone();
        Box::pin(async move { log.cursor_at(time).await })
    }

    fn page(&self, after: i64, filters: Filters) -> BoxFuture<'static, Result<Page, LogError>> {
        let log = self.clone();
        Box::pin(async move {
            let read = log
                .read_page(after, &filters, REPLAY_PAGE, REPLAY_PAGE_BYTES)
                .await?;
            let bytes: usize = read.events.iter().map(|e| e.data.len()).sum();
            // Short on both counts: the query found nothing more.
            let complete =
                (read.events.len() as i64) < REPLAY_PAGE && (bytes as i64) < REPLAY_PAGE_BYTES;
            Ok(Page {
                events: read.events,
                complete,
                head: read.head,
            })
        })
    }
}
