//! In-process fan-out and the ring of recent frames (DESIGN.md, "The shape").
//!
//! The listener is the hub's only writer: it pushes every event it reads from
//! the log, in id order, already encoded. Each subscriber owns a bounded
//! queue; the hub hands it the same `Arc<Frame>` every other subscriber gets.
//! A subscriber whose queue is full has fallen behind: the hub drops its
//! queue, its stream ends, and its reconnect replays from the ring or the log.
//! Memory therefore never grows with a slow client.
//!
//! The ring holds the most recent frames of every topic. A subscriber that
//! resumes from a cursor the ring still covers attaches without touching
//! PostgreSQL; the ring copy and the registration happen under one lock, so
//! nothing falls between the two.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::{Filters, Frame};
use crate::telemetry;

/// Handle to the hub; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Mutex<State>>,
}

struct State {
    /// Id of the newest frame pushed (0 before any).
    head: i64,
    /// Every event with an id above this is in `ring`.
    ring_floor: i64,
    ring: VecDeque<Arc<Frame>>,
    ring_capacity: usize,
    subscribers: HashMap<u64, Subscriber>,
    next_subscriber: u64,
}

struct Subscriber {
    filters: Filters,
    queue: mpsc::Sender<Arc<Frame>>,
    /// Cancelled when the hub drops the subscriber for falling behind, so a
    /// writer blocked on a client that stopped reading can give up at once.
    lagged: CancellationToken,
}

/// The result of [`Hub::attach`].
pub enum Attach {
    /// The ring covered the cursor: `backlog` holds the matching frames after
    /// it, and `live` every later one.
    Live {
        backlog: Vec<Arc<Frame>>,
        live: Registration,
    },
    /// The cursor is below the ring: read the log up to `head` first.
    NotCovered { ring_floor: i64 },
}

/// A subscriber's queue; leaving the hub when dropped.
pub struct Registration {
    pub queue: mpsc::Receiver<Arc<Frame>>,
    /// Sequence number, unique per hub: the subscriber's key in the hub,
    /// by which it leaves.
    pub seq: u64,
    hub: Hub,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.lock().subscribers.remove(&self.seq);
    }
}

impl Hub {
    /// An empty hub whose ring keeps `ring_capacity` frames; `head` is the log
    /// position it starts from.
    pub fn new(ring_capacity: usize, head: i64) -> Self {
        Self {
            shared: Arc::new(Mutex::new(State {
                head,
                ring_floor: head,
                ring: VecDeque::with_capacity(ring_capacity.min(64 * 1024)),
                ring_capacity,
                subscribers: HashMap::new(),
                next_subscriber: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves consistent data (every
        // section is a few assignments), so poisoning is ignored.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fills an empty hub with the log's most recent frames (at start), so
    /// resumes after a deploy are served from memory. `floor` is the id just
    /// below the oldest of them.
    pub fn warm(&self, floor: i64, frames: Vec<Arc<Frame>>) {
        let mut s = self.lock();
        s.ring.clear();
        s.ring_floor = floor;
        s.head = floor;
        for f in frames {
            s.head = f.id;
            s.push_ring(f);
        }
    }

    /// The newest id the hub has seen.
    pub fn head(&self) -> i64 {
        self.lock().head
    }

    /// The lowest cursor a resume can be served from memory.
    pub fn ring_floor(&self) -> i64 {
        self.lock().ring_floor
    }

    /// Subscribes from `cursor` if the ring covers it.
    pub fn attach(
        &self,
        cursor: i64,
        filters: &Filters,
        queue_capacity: usize,
        lagged: &CancellationToken,
    ) -> Attach {
        let mut s = self.lock();
        if cursor < s.ring_floor {
            return Attach::NotCovered {
                ring_floor: s.ring_floor,
            };
        }
        let skip = s.ring.partition_point(|f| f.id <= cursor);
        let backlog = s
            .ring
            .range(skip..)
            .filter(|f| filters.matches(f.topic.as_str()))
            .cloned()
            .collect();
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        let seq = s.next_subscriber;
        s.next_subscriber += 1;
        s.subscribers.insert(
            seq,
            Subscriber {
                filters: filters.clone(),
                queue: tx,
                lagged: lagged.clone(),
            },
        );
        drop(s);
        Attach::Live {
            backlog,
            live: Registration {
                queue: rx,
                seq,
                hub: self.clone(),
            },
        }
    }

    /// Pushes frames (in id order, newer than `head`) to the ring and to every
    /// matching subscriber. Subscribers whose queue is full are dropped.
    pub fn publish(&self, frames: &[Arc<Frame>]) {
        let mut lagging = Vec::new();
        let mut s = self.lock();
        for frame in frames {
            if frame.id <= s.head {
                continue;
            }
            s.head = frame.id;
            s.push_ring(frame.clone());
            for (seq, sub) in &s.subscribers {
                if sub.filters.matches(frame.topic.as_str())
                    && sub.queue.try_send(frame.clone()).is_err()
                {
                    lagging.push(*seq);
                }
            }
            for seq in lagging.drain(..) {
                if let Some(sub) = s.subscribers.remove(&seq) {
                    sub.lagged.cancel();
                    telemetry::streams_lagged().increment(1);
                }
            }
        }
    }

    /// Number of subscribers attached.
    pub fn subscribers(&self) -> usize {
        self.lock().subscribers.len()
    }
}

impl State {
    fn push_ring(&mut self, frame: Arc<Frame>) {
        if self.ring_capacity == 0 {
            self.ring_floor = frame.id;
            return;
        }
        if self.ring.len() == self.ring_capacity
            && let Some(old) = self.ring.pop_front()
        {
            self.ring_floor = old.id;
        }
        self.ring.push_back(frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Topic, TopicFilter};

    fn frame(id: i64, topic: &str) -> Arc<Frame> {
        Arc::new(Frame {
            id,
            topic: Topic::parse(topic).unwrap(),
            bytes: bytes::Bytes::from(format!("id: {id}\n\n")),
            event_line: (0, 0),
        })
    }

    fn ids(frames: &[Arc<Frame>]) -> Vec<i64> {
        frames.iter().map(|f| f.id).collect()
    }

    #[test]
    fn attach_inside_ring_returns_matching_backlog() {
        let hub = Hub::new(4, 0);
        hub.publish(&[frame(1, "a"), frame(2, "b"), frame(3, "a")]);
        let filters = Filters::new(vec![TopicFilter::parse("a").unwrap()]);
        match hub.attach(1, &filters, 8, &CancellationToken::new()) {
            Attach::Live { backlog, .. } => assert_eq!(ids(&backlog), vec![3]),
            Attach::NotCovered { .. } => panic!("ring covers cursor 1"),
        }
    }

    #[test]
    fn attach_below_ring_floor_is_not_covered() {
        let hub = Hub::new(2, 0);
        hub.publish(&[frame(1, "a"), frame(2, "a"), frame(3, "a")]);
        assert!(matches!(
            hub.attach(0, &Filters::default(), 8, &CancellationToken::new()),
            Attach::NotCovered { ring_floor: 1 }
        ));
        assert!(matches!(
            hub.attach(1, &Filters::default(), 8, &CancellationToken::new()),
            Attach::Live { .. }
        ));
    }

    #[test]
    fn full_queue_drops_the_subscriber() {
        let hub = Hub::new(8, 0);
        let lagged = CancellationToken::new();
        let Attach::Live { mut live, .. } = hub.attach(0, &Filters::default(), 1, &lagged) else {
            panic!("covered");
        };
        hub.publish(&[frame(1, "a"), frame(2, "a")]);
        assert_eq!(hub.subscribers(), 0);
        assert!(lagged.is_cancelled());
        assert_eq!(live.queue.try_recv().unwrap().id, 1);
        assert!(live.queue.try_recv().is_err());
    }

    #[test]
    fn dropping_registration_detaches() {
        let hub = Hub::new(8, 0);
        let attached = hub.attach(0, &Filters::default(), 1, &CancellationToken::new());
        assert_eq!(hub.subscribers(), 1);
        drop(attached);
        assert_eq!(hub.subscribers(), 0);
    }
}
