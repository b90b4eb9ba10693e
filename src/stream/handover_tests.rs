//! The subscription's replay and hand-over to live, against an in-memory
//! hub and an in-memory log: every event after the cursor exactly once, in
//! id order, whether it comes from a log page, the ring or the live queue,
//! and events committed while the replay runs are neither lost nor doubled.
//! (The same paths against PostgreSQL are in `tests/api/resume.rs`.)

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::replay::{Page, ReplaySource};
use super::{Start, StreamRequest, StreamSettings, Subscription, Wiring};
use crate::event::{EventType, Filters, StoredEvent, Topic, TopicFilter};
use crate::hub::Hub;
use crate::log::{Bounds, LogError};

/// The log, in memory: pages of `page_size`, and a hook that runs before
/// each page is read (to commit more events meanwhile).
#[derive(Clone)]
struct MemoryLog {
    events: Arc<Mutex<Vec<StoredEvent>>>,
    pruned_through: Arc<AtomicI64>,
    page_size: usize,
    pages_read: Arc<Mutex<usize>>,
    #[allow(clippy::type_complexity)]
    before_page: Arc<dyn Fn(usize) + Send + Sync>,
}

impl MemoryLog {
    fn new(page_size: usize) -> Self {
        Self {
            events: Arc::default(),
            pruned_through: Arc::default(),
            page_size,
            pages_read: Arc::default(),
            before_page: Arc::new(|_| {}),
        }
    }

    fn last_id(&self) -> i64 {
        self.events.lock().unwrap().last().map_or(0, |e| e.id)
    }

    /// Deletes the events up to `through` and moves the floor, at once, as
    /// retention's batches do.
    fn prune_through(&self, through: i64) {
        let mut events = self.events.lock().unwrap();
        events.retain(|e| e.id > through);
        self.pruned_through.store(through, Ordering::SeqCst);
    }

    fn head_now(&self) -> Bounds {
        Bounds {
            last_id: self.last_id(),
            pruned_through: self.pruned_through.load(Ordering::SeqCst),
        }
    }

    /// Commits an event of `topic` and hands it to `hub`, as the listener
    /// would.
    fn commit(&self, hub: &Hub, topic: &str) -> i64 {
        let id = self.last_id() + 1;
        let event = StoredEvent {
            id,
            topic: Topic::parse(topic).unwrap(),
            event_type: EventType::message(),
            data: "null".into(),
            time: OffsetDateTime::UNIX_EPOCH,
            trace: None,
        };
        hub.publish(&[Arc::new(event.to_frame())]);
        self.events.lock().unwrap().push(event);
        id
    }
}

impl ReplaySource for MemoryLog {
    fn head(&self) -> BoxFuture<'static, Result<Bounds, LogError>> {
        let head = self.head_now();
        Box::pin(async move { Ok(head) })
    }

    fn cursor_at(&self, _: OffsetDateTime) -> BoxFuture<'static, Result<i64, LogError>> {
        Box::pin(async { Ok(0) })
    }

    fn page(&self, after: i64, filters: Filters) -> BoxFuture<'static, Result<Page, LogError>> {
        let n = {
            let mut read = self.pages_read.lock().unwrap();
            *read += 1;
            *read
        };
        (self.before_page)(n);
        let matching: Vec<StoredEvent> = self
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.id > after && filters.matches(e.topic.as_str()))
            .cloned()
            .collect();
        let complete = matching.len() <= self.page_size;
        let events = matching.into_iter().take(self.page_size).collect();
        let head = self.head_now();
        Box::pin(async move {
            Ok(Page {
                events,
                complete,
                head,
            })
        })
    }
}

fn settings() -> Arc<StreamSettings> {
    Arc::new(StreamSettings {
        heartbeat: Duration::from_secs(3600),
        retry: Duration::from_secs(1),
        drain: Duration::ZERO,
        queue_capacity: 1024,
        write_timeout: Duration::from_secs(30),
        expiry_warning: Duration::from_secs(60),
    })
}

fn subscribe(hub: &Hub, log: &MemoryLog, filter: &str, start: Start) -> Subscription<MemoryLog> {
    let request = StreamRequest {
        filters: Filters::new(vec![TopicFilter::parse(filter).unwrap()]),
        start,
        message_events: false,
        handle: None,
    };
    Subscription::new(
        request,
        Wiring {
            hub: hub.clone(),
            log: log.clone(),
            settings: settings(),
            shutdown: CancellationToken::new(),
            tracked: TaskTracker::new().token(),
            lagged: CancellationToken::new(),
            expires_at: None,
            enrolment: None,
            named: None,
        },
    )
}

/// The ids of the event frames the subscription writes until it has
/// written `last` (or the reset frame's id, for a reset).
async fn ids_through(sub: &mut Subscription<MemoryLog>, last: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    while ids.last() != Some(&last) {
        let chunk = tokio::time::timeout(Duration::from_secs(5), sub.next_chunk())
            .await
            .expect("the subscription goes on")
            .expect("the stream is open");
        let text = std::str::from_utf8(&chunk).unwrap();
        // Events only: not the opening frame (`event: stream`).
        let events = text
            .split("\n\n")
            .filter(|f| f.contains("\ndata: ") && !f.contains("\nevent: stream\n"));
        for frame in events {
            let id = frame
                .strip_prefix("id: ")
                .unwrap()
                .split('\n')
                .next()
                .unwrap();
            ids.push(id.parse().unwrap());
        }
    }
    ids
}

#[tokio::test]
async fn replay_pages_then_ring_then_live_each_event_once_in_order() {
    // The ring holds the last 10 of 100 events; pages of 7 cover the rest.
    let hub = Hub::new(10, 0);
    let log = MemoryLog::new(7);
    for n in 0..100 {
        log.commit(&hub, if n % 3 == 0 { "other" } else { "mine" });
    }
    let mut sub = subscribe(&hub, &log, "mine", Start::After(0));

    // Ids 1, 4, 7, … 100 are "other".
    let expected: Vec<i64> = (1..=100).filter(|id| (id - 1) % 3 != 0).collect();
    assert_eq!(ids_through(&mut sub, 99).await, expected);
    assert!(*log.pages_read.lock().unwrap() >= 9, "read from the log");

    let live = log.commit(&hub, "mine");
    assert_eq!(ids_through(&mut sub, live).await, [live]);
}

#[tokio::test]
async fn events_committed_during_the_replay_arrive_once() {
    let hub = Hub::new(4, 0);
    let mut log = MemoryLog::new(5);
    for _ in 0..30 {
        log.commit(&hub, "mine");
    }
    // Before every page, two more events commit (and reach the hub), so
    // the replay chases a moving head until it hands over to the ring.
    let (hook_log, hook_hub) = (log.clone(), hub.clone());
    log.before_page = Arc::new(move |n| {
        if n <= 6 {
            hook_log.commit(&hook_hub, "mine");
            hook_log.commit(&hook_hub, "mine");
        }
    });
    let mut sub = subscribe(&hub, &log, "mine", Start::After(3));

    let got = ids_through(&mut sub, 42).await;
    assert_eq!(got, (4..=42).collect::<Vec<i64>>());
    let live = log.commit(&hub, "mine");
    assert_eq!(ids_through(&mut sub, live).await, [live]);
}

#[tokio::test]
async fn a_cursor_inside_the_ring_reads_no_page() {
    let hub = Hub::new(64, 0);
    let log = MemoryLog::new(5);
    for _ in 0..50 {
        log.commit(&hub, "mine");
    }
    let mut sub = subscribe(&hub, &log, "mine", Start::After(40));

    assert_eq!(
        ids_through(&mut sub, 50).await,
        (41..=50).collect::<Vec<i64>>()
    );
    assert_eq!(*log.pages_read.lock().unwrap(), 0);
}

#[tokio::test]
async fn a_cursor_below_the_pruning_floor_gets_a_reset_then_live() {
    let hub = Hub::new(4, 0);
    let log = MemoryLog::new(5);
    for _ in 0..20 {
        log.commit(&hub, "mine");
    }
    log.prune_through(10);
    let mut sub = subscribe(&hub, &log, "mine", Start::After(3));

    // After the opening frame (the client's own cursor as its `id:`), the
    // reset frame, with the id the stream goes on from.
    let mut text = String::new();
    while !text.contains("event: reset") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), sub.next_chunk())
            .await
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let opening = "retry: 1000\nid: 3\nevent: stream\n\
                   data: {\"after\":\"3\",\"topics\":[\"mine\"]}\n\n";
    assert!(
        text.starts_with(&format!("{opening}id: 20\nevent: reset\n")),
        "{text}"
    );
    assert!(text.contains("\"reason\":\"cursor_too_old\""), "{text}");
    let live = log.commit(&hub, "mine");
    assert_eq!(ids_through(&mut sub, live).await, [live]);
}

/// Reads chunks until one holds `needle`; returns everything read.
async fn text_through(sub: &mut Subscription<MemoryLog>, needle: &str) -> String {
    let mut text = String::new();
    while !text.contains(needle) {
        let chunk = tokio::time::timeout(Duration::from_secs(5), sub.next_chunk())
            .await
            .expect("the subscription goes on")
            .expect("the stream is open");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    text
}

#[tokio::test]
async fn a_prune_that_overtakes_a_replay_resets_it_instead_of_skipping() {
    // Pages of 5 from id 0; after the second page the log prunes through
    // 30, ahead of the replay's cursor (10).
    let hub = Hub::new(4, 0);
    let mut log = MemoryLog::new(5);
    for _ in 0..50 {
        log.commit(&hub, "mine");
    }
    let hook_log = log.clone();
    log.before_page = Arc::new(move |n| {
        if n == 3 {
            hook_log.prune_through(30);
        }
    });
    let mut sub = subscribe(&hub, &log, "mine", Start::After(0));

    let text = text_through(&mut sub, "event: reset").await;
    let ids: Vec<i64> = text
        .split("\n\n")
        .filter(|f| f.contains("event: message"))
        .map(|f| {
            f.strip_prefix("id: ")
                .unwrap()
                .split('\n')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, (1..=10).collect::<Vec<i64>>(), "{text}");
    assert!(text.contains("id: 50\nevent: reset\n"), "{text}");
    assert!(text.contains("\"reason\":\"cursor_too_old\""), "{text}");
    assert!(text.contains("\"last_event_id\":\"10\""), "{text}");
    assert!(text.contains("\"oldest_id\":\"31\""), "{text}");
    let live = log.commit(&hub, "mine");
    assert_eq!(ids_through(&mut sub, live).await, [live]);
}

#[tokio::test]
async fn a_since_start_below_the_floor_begins_at_the_oldest_event_held() {
    let hub = Hub::new(4, 0);
    let log = MemoryLog::new(5);
    for _ in 0..20 {
        log.commit(&hub, "mine");
    }
    log.prune_through(12);
    // The in-memory log maps every time to cursor 0, below the floor.
    let mut sub = subscribe(&hub, &log, "mine", Start::Since(OffsetDateTime::UNIX_EPOCH));

    assert_eq!(
        ids_through(&mut sub, 20).await,
        (13..=20).collect::<Vec<i64>>()
    );
}
