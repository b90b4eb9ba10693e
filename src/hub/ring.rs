//! The ring of recent frames, and its index by topic (docs/ARCHITECTURE.md, "Recent
//! events in memory").
//!
//! A resume from a cursor the ring covers copies the frames after it. Two
//! things keep that cheap while the hub is locked:
//! - each topic has its own queue of the ring's frames, so a resume for
//!   exact topics (a topic per user) finds its frames by lookup and copies
//!   only them, never scanning the ring. The queue loses its oldest frame
//!   when the ring does, and a topic leaves the map with its last frame;
//! - the ring itself is kept in sealed blocks of [`BLOCK`] frames that never
//!   change once full. A resume for prefixes or every topic (or for a hot
//!   exact topic, with more frames after the cursor than there are blocks)
//!   takes a reference to each block after its cursor under the lock, and
//!   filters and copies their frames once the lock is released: the lock
//!   costs the number of blocks plus one open block, not the backlog.
//!
//! A frame leaves the ring by moving the oldest block's start; the block is
//! freed when all of it has left, so up to `BLOCK - 1` frames older than the
//! floor stay in memory (never served: every resume starts above the floor).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::Work;
use crate::event::{Filters, Frame, Topic, TopicFilter};

/// Frames per sealed block: with the default 65,536-frame ring, a resume
/// holds the lock for at most 256 block references and 255 open frames.
pub(super) const BLOCK: usize = 256;

pub(super) struct Ring {
    capacity: usize,
    block_size: usize,
    /// Full blocks, oldest first.
    sealed: VecDeque<Arc<[Arc<Frame>]>>,
    /// Frames of `sealed[0]` that have left the ring.
    gone: usize,
    /// The newest frames, fewer than `block_size`.
    open: Vec<Arc<Frame>>,
    len: usize,
    /// Every event with an id above this is in the ring.
    floor: i64,
    by_topic: HashMap<Topic, VecDeque<Arc<Frame>>>,
}

/// The frames after a cursor, as taken under the hub's lock: either copied
/// already, or sealed blocks to filter once the lock is released.
pub(super) enum Backlog {
    Copied(Vec<Arc<Frame>>),
    /// Frames of several exact topics, each list in id order.
    Merge(Vec<Arc<Frame>>),
    Blocks {
        blocks: Vec<Arc<[Arc<Frame>]>>,
        /// Matching frames of the open block, copied under the lock.
        open: Vec<Arc<Frame>>,
    },
}

impl Ring {
    pub(super) fn new(capacity: usize, floor: i64) -> Self {
        let block_size = capacity.clamp(1, BLOCK);
        Self {
            capacity,
            block_size,
            sealed: VecDeque::new(),
            gone: 0,
            open: Vec::with_capacity(block_size),
            len: 0,
            floor,
            by_topic: HashMap::new(),
        }
    }

    /// Empties the ring; every event above `floor` is in it again.
    pub(super) fn clear(&mut self, floor: i64) {
        *self = Self::new(self.capacity, floor);
    }

    pub(super) fn floor(&self) -> i64 {
        self.floor
    }

    /// Frames held.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Serves no resume from below `floor` any more (the log pruned the
    /// events up to it); the frames leave memory as they would anyway.
    pub(super) fn raise_floor(&mut self, floor: i64) {
        self.floor = self.floor.max(floor);
    }

    /// Appends the newest frame, dropping the oldest if the ring is full.
    pub(super) fn push(&mut self, frame: Arc<Frame>) {
        if self.capacity == 0 {
            self.floor = self.floor.max(frame.id);
            return;
        }
        if self.len == self.capacity {
            self.drop_oldest();
        }
        self.by_topic
            .entry(frame.topic.clone())
            .or_default()
            .push_back(frame.clone());
        self.open.push(frame);
        self.len += 1;
        if self.open.len() == self.block_size {
            let full = std::mem::replace(&mut self.open, Vec::with_capacity(self.block_size));
            self.sealed.push_back(full.into());
        }
    }

    /// The ring is only ever full when it has sealed blocks (the open block
    /// holds fewer frames than the capacity), so the oldest frame is in one.
    fn drop_oldest(&mut self) {
        let Some(block) = self.sealed.front() else {
            return;
        };
        let old = block[self.gone].clone();
        self.gone += 1;
        if self.gone == block.len() {
            self.sealed.pop_front();
            self.gone = 0;
        }
        self.len -= 1;
        self.floor = self.floor.max(old.id);
        if let Some(frames) = self.by_topic.get_mut(&old.topic) {
            debug_assert_eq!(frames.front().map(|f| f.id), Some(old.id));
            frames.pop_front();
            if frames.is_empty() {
                self.by_topic.remove(&old.topic);
            }
        }
    }

    /// The frames matching `filters` with an id above `cursor`, which must
    /// be at or above the floor. Exact topics are copied from their own
    /// queues, unless those hold more frames after the cursor than there are
    /// blocks to take (a hot topic): anything else takes the blocks, to be
    /// filtered once the lock is released ([`Backlog::into_frames`]).
    pub(super) fn after(&self, cursor: i64, filters: &Filters, work: &mut Work) -> Backlog {
        let first = self
            .sealed
            .partition_point(|b| b.last().is_some_and(|f| f.id <= cursor));
        let skip = self.open.partition_point(|f| f.id <= cursor);
        let by_blocks = self.sealed.len() - first + self.open.len() - skip;
        if let Some(queues) = self.topic_queues(filters) {
            let after = |q: &VecDeque<Arc<Frame>>| q.len() - q.partition_point(|f| f.id <= cursor);
            if queues.iter().map(|q| after(q)).sum::<usize>() <= by_blocks {
                return copy_after(cursor, &queues, work);
            }
        }
        work.frames += by_blocks as u64;
        let blocks = self.sealed.range(first..).cloned().collect();
        let open = self.open[skip..]
            .iter()
            .filter(|f| filters.matches(f.topic.as_str()))
            .cloned()
            .collect();
        Backlog::Blocks { blocks, open }
    }

    /// The queues of the distinct topics of `filters` (of those with frames
    /// in the ring), if every filter is an exact topic.
    fn topic_queues(&self, filters: &Filters) -> Option<Vec<&VecDeque<Arc<Frame>>>> {
        if filters.is_all() {
            return None;
        }
        let mut topics: Vec<&Topic> = Vec::new();
        for filter in filters.iter() {
            match filter {
                TopicFilter::Exact(topic) if !topics.contains(&topic) => topics.push(topic),
                TopicFilter::Exact(_) => {}
                TopicFilter::Prefix(_) => return None,
            }
        }
        Some(
            topics
                .iter()
                .filter_map(|t| self.by_topic.get(*t))
                .collect(),
        )
    }

    /// Topics with frames in the ring (the by-topic index's size).
    #[cfg(test)]
    pub(super) fn topics(&self) -> usize {
        self.by_topic.len()
    }
}

impl Backlog {
    /// The frames in id order; called without the hub's lock.
    pub(super) fn into_frames(self, cursor: i64, filters: &Filters) -> Vec<Arc<Frame>> {
        match self {
            Self::Copied(frames) => frames,
            Self::Merge(mut frames) => {
                frames.sort_unstable_by_key(|f| f.id);
                frames
            }
            Self::Blocks { blocks, open } => {
                let mut frames: Vec<Arc<Frame>> = blocks
                    .iter()
                    .flat_map(|b| b.iter())
                    .filter(|f| f.id > cursor && filters.matches(f.topic.as_str()))
                    .cloned()
                    .collect();
                frames.extend(open);
                frames
            }
        }
    }
}

/// Copies the frames after `cursor` of each topic's queue.
fn copy_after(cursor: i64, queues: &[&VecDeque<Arc<Frame>>], work: &mut Work) -> Backlog {
    let mut copied = Vec::new();
    for frames in queues {
        let skip = frames.partition_point(|f| f.id <= cursor);
        work.frames += (frames.len() - skip) as u64;
        copied.extend(frames.range(skip..).cloned());
    }
    if queues.len() > 1 {
        Backlog::Merge(copied)
    } else {
        Backlog::Copied(copied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::tests::frame;

    fn ids(frames: &[Arc<Frame>]) -> Vec<i64> {
        frames.iter().map(|f| f.id).collect()
    }

    fn after(ring: &Ring, cursor: i64, f: &Filters) -> Vec<i64> {
        let backlog = ring.after(cursor, f, &mut Work::default());
        ids(&backlog.into_frames(cursor, f))
    }

    #[test]
    fn keeps_the_newest_capacity_frames_across_blocks() {
        let mut ring = Ring::new(BLOCK + 3, 0);
        let total = 3 * BLOCK as i64 + 5;
        for id in 1..=total {
            ring.push(frame(id, if id % 2 == 0 { "even" } else { "odd" }));
        }
        let floor = total - (BLOCK as i64 + 3);
        assert_eq!(ring.floor(), floor);
        let all = after(&ring, floor, &Filters::default());
        assert_eq!(all, ((floor + 1)..=total).collect::<Vec<_>>());
        let even: Vec<i64> = ((floor + 1)..=total).filter(|id| id % 2 == 0).collect();
        assert_eq!(after(&ring, floor, &Filters::of(&["even"])), even);
        assert_eq!(after(&ring, floor, &Filters::of(&["ev*"])), even);
        assert_eq!(
            after(&ring, total - 2, &Filters::of(&["odd", "even"])),
            vec![total - 1, total]
        );
    }

    #[test]
    fn topic_index_forgets_topics_that_left_the_ring() {
        let mut ring = Ring::new(4, 0);
        for id in 1..=100 {
            ring.push(frame(id, &format!("user:{id}")));
        }
        assert_eq!(ring.topics(), 4);
        for id in 101..=104 {
            ring.push(frame(id, "ops"));
        }
        assert_eq!(ring.topics(), 1);
        assert_eq!(
            after(&ring, 100, &Filters::of(&["ops"])),
            vec![101, 102, 103, 104]
        );
        assert_eq!(
            after(&ring, 100, &Filters::of(&["user:100"])),
            Vec::<i64>::new()
        );
    }

    #[test]
    fn zero_capacity_holds_nothing_and_moves_the_floor() {
        let mut ring = Ring::new(0, 0);
        ring.push(frame(1, "a"));
        ring.push(frame(2, "a"));
        assert_eq!(ring.floor(), 2);
        assert_eq!(ring.topics(), 0);
        assert_eq!(after(&ring, 2, &Filters::default()), Vec::<i64>::new());
    }
}
