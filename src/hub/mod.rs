//! In-process fan-out and the ring of recent frames (docs/ARCHITECTURE.md, "The shape").
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
//!
//! Costs follow deliveries (docs/ARCHITECTURE.md, "Fan-out costs what it delivers"): a
//! frame finds its subscribers through [`index`] (exact topics by lookup,
//! prefixes by a trie, all-topics subscribers by a list), never by testing
//! every subscriber's filters; a resume finds its frames through [`ring`]'s
//! index by topic, or takes sealed blocks of the ring to filter after the
//! lock. The lock is taken per frame published, per attach and per detach,
//! and held for index lookups, enqueues, and copying at most a block's worth
//! of frames or an exact topic's backlog no longer than the ring's blocks.

mod index;
mod ring;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::{Filters, Frame, TraceContext};
use crate::telemetry;
use index::{Index, SubscriberId};
use ring::Ring;

/// Handle to the hub; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Mutex<State>>,
}

struct State {
    /// Id of the newest frame pushed (0 before any).
    head: i64,
    ring: Ring,
    subscribers: HashMap<SubscriberId, Subscriber>,
    index: Index,
    next_subscriber: SubscriberId,
    /// Counts frames published: a subscriber stamped with the current value
    /// already has the frame (it is found once per matching filter).
    generation: u64,
    work: Work,
}

struct Subscriber {
    filters: Filters,
    queue: mpsc::Sender<Arc<Frame>>,
    /// Cancelled when the hub drops the subscriber for falling behind, so a
    /// writer blocked on a client that stopped reading can give up at once.
    lagged: CancellationToken,
    /// The `generation` of the last frame offered to it.
    stamp: u64,
}

/// The result of [`Hub::attach`].
pub enum Attach {
    /// The ring covered the cursor: `backlog` holds the matching frames after
    /// it, and `live` every later one.
    Live {
        backlog: Vec<Arc<Frame>>,
        live: Registration,
    },
    /// The cursor is below the ring's floor: read the log first.
    NotCovered,
}

/// A subscriber's queue; leaving the hub when dropped.
pub struct Registration {
    pub queue: mpsc::Receiver<Arc<Frame>>,
    /// Sequence number, unique per hub: the subscriber's key in the hub,
    /// by which it leaves.
    seq: u64,
    hub: Hub,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // The subscriber (its queue's sender) is dropped after the lock.
        let left = self.hub.lock().remove(self.seq);
        drop(left);
    }
}

impl Hub {
    /// An empty hub whose ring keeps `ring_capacity` frames; `head` is the log
    /// position it starts from.
    pub fn new(ring_capacity: usize, head: i64) -> Self {
        Self {
            shared: Arc::new(Mutex::new(State {
                head,
                ring: Ring::new(ring_capacity, head),
                subscribers: HashMap::new(),
                index: Index::default(),
                next_subscriber: 0,
                generation: 0,
                work: Work::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves data the hub can go on
        // with (an index entry whose subscriber is gone is skipped), so
        // poisoning is ignored.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fills an empty hub with the log's most recent frames (at start), so
    /// resumes after a deploy are served from memory. `floor` is the id just
    /// below the oldest of them.
    pub fn warm(&self, floor: i64, frames: Vec<Arc<Frame>>) {
        let mut s = self.lock();
        s.ring.clear(floor);
        s.head = floor;
        for f in frames {
            s.head = f.id;
            s.ring.push(f);
        }
    }

    /// The newest id the hub has seen.
    pub fn head(&self) -> i64 {
        self.lock().head
    }

    /// The lowest cursor a resume can be served from memory.
    pub fn ring_floor(&self) -> i64 {
        self.lock().ring.floor()
    }

    /// Frames in the ring, and the oldest id among them (the floor's next).
    pub fn ring_stats(&self) -> (usize, i64) {
        let s = self.lock();
        (s.ring.len(), s.ring.floor() + 1)
    }

    /// The log pruned every event at or below `through` (retention): a
    /// resume from below it is no longer served from the ring but goes to
    /// the log, which answers with a reset. Never above the hub's head:
    /// events this hub has not read yet are the listener's to notice
    /// ([`Self::cut`]).
    pub fn prune_floor(&self, through: i64) {
        let mut s = self.lock();
        let floor = through.min(s.head);
        s.ring.raise_floor(floor);
    }

    /// The log pruned events this hub never had (the listener fell behind
    /// by more than the retention): no stream can go on from here without
    /// a gap. Every subscriber is dropped, so its client resumes from its
    /// last id and is told (a reset), and the ring starts again above
    /// `through`.
    pub fn cut(&self, through: i64) {
        let dropped: Vec<Subscriber> = {
            let mut s = self.lock();
            s.ring.clear(through);
            s.head = s.head.max(through);
            let ids: Vec<SubscriberId> = s.subscribers.keys().copied().collect();
            ids.into_iter().filter_map(|id| s.remove(id)).collect()
        };
        for sub in dropped {
            sub.lagged.cancel();
        }
    }

    /// Subscribes from `cursor` if the ring covers it.
    ///
    /// What the backlog holds is decided under the same lock as the
    /// registration, so every frame after `cursor` is either in it or in the
    /// queue, once. Frames of prefix or all-topics filters are taken as
    /// sealed ring blocks, which never change, and filtered after the lock.
    pub fn attach(
        &self,
        cursor: i64,
        filters: &Filters,
        queue_capacity: usize,
        lagged: &CancellationToken,
    ) -> Attach {
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        let subscriber = Subscriber {
            filters: filters.clone(),
            queue: tx,
            lagged: lagged.clone(),
            stamp: 0,
        };
        let mut guard = self.lock();
        let s = &mut *guard;
        if cursor < s.ring.floor() {
            return Attach::NotCovered;
        }
        let backlog = s.ring.after(cursor, filters, &mut s.work);
        let seq = s.next_subscriber;
        s.next_subscriber += 1;
        s.index.insert(seq, filters);
        s.subscribers.insert(seq, subscriber);
        drop(guard);
        Attach::Live {
            backlog: backlog.into_frames(cursor, filters),
            live: Registration {
                queue: rx,
                seq,
                hub: self.clone(),
            },
        }
    }

    /// Gives a registered subscriber new filters (a named stream's topic
    /// change), under the lock: every frame up to the returned head was
    /// offered under the old filters (it is in the queue, or the
    /// subscriber was dropped), every later one is offered under the new.
    pub fn reattach(&self, live: &Registration, filters: &Filters) -> i64 {
        let mut guard = self.lock();
        let s = &mut *guard;
        if let Some(sub) = s.subscribers.get_mut(&live.seq) {
            let old = std::mem::replace(&mut sub.filters, filters.clone());
            s.index.remove(live.seq, &old);
            s.index.insert(live.seq, filters);
        }
        s.head
    }

    /// Pushes frames (in id order, newer than `head`) to the ring and to every
    /// matching subscriber. Subscribers whose queue is full are dropped.
    ///
    /// The lock is taken per frame, so attaches and detaches interleave with
    /// a long page of frames instead of waiting for all of it.
    ///
    /// At debug level (`RUST_LOG=herald::hub=debug`) each frame is one line,
    /// `event fanned out`, with its id, topic, trace id and the number of
    /// streams it was queued for: one line per event per instance, never
    /// one per stream. With export on, each new frame is a `process` span
    /// (`telemetry::otel`) around its fan-out, with the same number.
    pub fn publish(&self, frames: &[Arc<Frame>]) {
        let mut lagging = Vec::new();
        let debug = tracing::enabled!(tracing::Level::DEBUG);
        let export = telemetry::otel::on();
        for frame in frames {
            // The listener is the hub's only writer, so a frame above the
            // head here is still new under the lock: one span per event,
            // none for a frame the hub already had.
            let span =
                (export && frame.id > self.head()).then(|| telemetry::otel::process_span(frame));
            // `None`: a frame the hub already had; nothing to say of it.
            let Some(streams) = self.lock().publish(frame, &mut lagging) else {
                continue;
            };
            if let Some(span) = span {
                telemetry::otel::processed(&span, streams);
            }
            if debug {
                tracing::debug!(
                    id = frame.id,
                    topic = frame.topic.as_str(),
                    trace_id = frame.trace.as_deref().map(TraceContext::trace_id),
                    streams,
                    "event fanned out"
                );
            }
            for sub in lagging.drain(..) {
                sub.lagged.cancel();
                telemetry::streams_lagged().increment(1);
            }
        }
    }

    /// Number of subscribers attached.
    #[cfg(test)]
    pub fn subscribers(&self) -> usize {
        self.lock().subscribers.len()
    }

    #[cfg(test)]
    fn work(&self) -> Work {
        self.lock().work
    }

    /// Entries of the subscriber index.
    #[cfg(test)]
    fn index_size(&self) -> usize {
        self.lock().index.size()
    }

    /// Topics of the ring's index.
    #[cfg(test)]
    fn ring_topics(&self) -> usize {
        self.lock().ring.topics()
    }
}

/// Work done while the hub is locked, counted for tests (a few register
/// increments; nothing reads them outside tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
struct Work {
    /// Frames looked at by resumes.
    frames: u64,
    /// Index entries visited by publishes.
    candidates: u64,
}

impl State {
    /// Rings `frame` and offers it to each subscriber the index finds, once;
    /// those whose queue is full leave the hub into `lagging`.
    /// Returns how many streams it was queued for, `None` for a frame the
    /// hub already had.
    fn publish(&mut self, frame: &Arc<Frame>, lagging: &mut Vec<Subscriber>) -> Option<usize> {
        if frame.id <= self.head {
            return None;
        }
        self.head = frame.id;
        self.ring.push(frame.clone());
        self.generation += 1;
        let generation = self.generation;
        let mut full = Vec::new();
        let mut queued = 0;
        let Self {
            index,
            subscribers,
            work,
            ..
        } = self;
        index.for_each_match(&frame.topic, |id| {
            work.candidates += 1;
            let Some(sub) = subscribers.get_mut(&id) else {
                return;
            };
            if sub.stamp == generation {
                return;
            }
            sub.stamp = generation;
            if sub.queue.try_send(frame.clone()).is_err() {
                full.push(id);
            } else {
                queued += 1;
            }
        });
        lagging.extend(full.into_iter().filter_map(|id| self.remove(id)));
        Some(queued)
    }

    /// Takes a subscriber out of the hub and out of every index entry.
    fn remove(&mut self, id: SubscriberId) -> Option<Subscriber> {
        let sub = self.subscribers.remove(&id)?;
        self.index.remove(id, &sub.filters);
        Some(sub)
    }
}

#[cfg(test)]
mod tests;
