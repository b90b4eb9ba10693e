//! Which subscribers an event's topic could reach, found without testing
//! every subscriber (docs/ARCHITECTURE.md, "Fan-out costs what it delivers").
//!
//! A subscriber is entered once per filter it asked for:
//! - an exact topic goes into a hash map from topic to subscribers, so the
//!   commonest case, a topic per user, is one lookup;
//! - a prefix goes into a trie over the topic's bytes. A prefix is any
//!   string prefix (`inc*` matches `incident:1`), not a whole segment, so
//!   the trie branches per byte, not per segment. Walking it along the
//!   event's topic visits exactly the prefixes the topic starts with, at
//!   most one node per byte (topics are at most 256 bytes), whatever the
//!   number of subscribers or of distinct prefixes. A map from prefix
//!   string to subscribers, probed with each prefix length in use, would be
//!   shorter but costs a hash of up to 256 bytes per length in use, which
//!   any client can inflate by asking for prefixes of many lengths;
//! - no filter, or `*`, means every topic: those subscribers are a plain
//!   list, visited for every event.
//!
//! The index only finds candidates: a subscriber with overlapping filters
//! (`user:42` and `user:*`) is found once per filter, and the hub delivers
//! once per event by stamping each subscriber it reaches. Entries leave with
//! their subscriber, and empty entries and trie nodes are removed, so the
//! index's size follows the subscribers attached.

use std::collections::HashMap;

use crate::event::{Filters, Topic, TopicFilter};

/// A subscriber's key in the hub.
pub(super) type SubscriberId = u64;

/// Subscribers by the filters they asked for.
#[derive(Default)]
pub(super) struct Index {
    exact: HashMap<Topic, Vec<SubscriberId>>,
    prefixes: Trie,
    all: Vec<SubscriberId>,
}

impl Index {
    /// Enters `id` once per filter (once in all for an all-topics filter).
    pub(super) fn insert(&mut self, id: SubscriberId, filters: &Filters) {
        if filters.is_all() {
            self.all.push(id);
            return;
        }
        for filter in filters.iter() {
            match filter {
                TopicFilter::Exact(topic) => {
                    self.exact.entry(topic.clone()).or_default().push(id);
                }
                TopicFilter::Prefix(prefix) => self.prefixes.insert(prefix.as_bytes(), id),
            }
        }
    }

    /// Removes what [`Index::insert`] entered for the same `filters`.
    pub(super) fn remove(&mut self, id: SubscriberId, filters: &Filters) {
        if filters.is_all() {
            remove_one(&mut self.all, id);
            return;
        }
        for filter in filters.iter() {
            match filter {
                TopicFilter::Exact(topic) => {
                    if let Some(ids) = self.exact.get_mut(topic) {
                        remove_one(ids, id);
                        if ids.is_empty() {
                            self.exact.remove(topic);
                        }
                    }
                }
                TopicFilter::Prefix(prefix) => self.prefixes.remove(prefix.as_bytes(), id),
            }
        }
    }

    /// Calls `visit` with every subscriber one of whose filters matches
    /// `topic`, once per matching filter.
    pub(super) fn for_each_match(&self, topic: &Topic, mut visit: impl FnMut(SubscriberId)) {
        if let Some(ids) = self.exact.get(topic) {
            ids.iter().copied().for_each(&mut visit);
        }
        self.prefixes
            .for_each_prefix_of(topic.as_str().as_bytes(), &mut visit);
        self.all.iter().copied().for_each(visit);
    }

    /// Entries held: subscribers per filter, plus the trie's nodes and the
    /// map's topics. Zero when no subscriber is attached.
    #[cfg(test)]
    pub(super) fn size(&self) -> usize {
        self.exact.len()
            + self.exact.values().map(Vec::len).sum::<usize>()
            + self.prefixes.size()
            + self.all.len()
    }
}

/// Removes one occurrence of `id` (a subscriber may have asked for the same
/// filter twice, and then is entered twice). Order does not matter: delivery
/// order is per subscriber queue, not per list.
fn remove_one(ids: &mut Vec<SubscriberId>, id: SubscriberId) {
    if let Some(at) = ids.iter().position(|&x| x == id) {
        ids.swap_remove(at);
    }
}

/// A byte trie of prefix filters in one arena; node 0 is the root (the empty
/// prefix, which never holds subscribers: that is the all list).
struct Trie {
    nodes: Vec<Node>,
    /// Arena slots of removed nodes, reused first.
    free: Vec<u32>,
}

#[derive(Default)]
struct Node {
    /// Sorted by byte; topics use 66 distinct bytes at most.
    children: Vec<(u8, u32)>,
    subscribers: Vec<SubscriberId>,
}

impl Default for Trie {
    fn default() -> Self {
        Self {
            nodes: vec![Node::default()],
            free: Vec::new(),
        }
    }
}

impl Node {
    fn child(&self, byte: u8) -> Option<u32> {
        self.children
            .binary_search_by_key(&byte, |&(b, _)| b)
            .ok()
            .map(|at| self.children[at].1)
    }
}

impl Trie {
    fn insert(&mut self, prefix: &[u8], id: SubscriberId) {
        let mut at = 0;
        for &byte in prefix {
            at = match self.nodes[at as usize].child(byte) {
                Some(next) => next,
                None => self.add_child(at, byte),
            };
        }
        self.nodes[at as usize].subscribers.push(id);
    }

    fn add_child(&mut self, parent: u32, byte: u8) -> u32 {
        let node = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.nodes.push(Node::default());
                u32::try_from(self.nodes.len() - 1).expect("fewer than 2^32 trie nodes")
            }
        };
        let children = &mut self.nodes[parent as usize].children;
        let at = children.partition_point(|&(b, _)| b < byte);
        children.insert(at, (byte, node));
        node
    }

    /// Removes `id` from the node of `prefix`, then every node left with
    /// neither subscribers nor children, from the leaf up.
    fn remove(&mut self, prefix: &[u8], id: SubscriberId) {
        let mut path = Vec::with_capacity(prefix.len() + 1);
        let mut at = 0;
        path.push(at);
        for &byte in prefix {
            let Some(next) = self.nodes[at as usize].child(byte) else {
                return;
            };
            at = next;
            path.push(at);
        }
        remove_one(&mut self.nodes[at as usize].subscribers, id);
        for depth in (1..path.len()).rev() {
            let node = &self.nodes[path[depth] as usize];
            if !node.subscribers.is_empty() || !node.children.is_empty() {
                break;
            }
            let parent = &mut self.nodes[path[depth - 1] as usize].children;
            parent.retain(|&(_, child)| child != path[depth]);
            self.free.push(path[depth]);
        }
    }

    /// Visits the subscribers of every prefix `topic` starts with, the whole
    /// topic included: one step per byte, stopping where the trie ends.
    fn for_each_prefix_of(&self, topic: &[u8], visit: &mut impl FnMut(SubscriberId)) {
        let mut at = 0;
        for &byte in topic {
            let Some(next) = self.nodes[at as usize].child(byte) else {
                return;
            };
            at = next;
            self.nodes[at as usize]
                .subscribers
                .iter()
                .copied()
                .for_each(&mut *visit);
        }
    }

    /// Live nodes besides the root, plus the subscribers they hold.
    #[cfg(test)]
    fn size(&self) -> usize {
        let live = self.nodes.len() - 1 - self.free.len();
        live + self
            .nodes
            .iter()
            .map(|n| n.subscribers.len())
            .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(index: &Index, topic: &str) -> Vec<SubscriberId> {
        let mut found = Vec::new();
        index.for_each_match(&Topic::parse(topic).unwrap(), |id| found.push(id));
        found.sort_unstable();
        found
    }

    #[test]
    fn finds_exact_prefix_and_all_subscribers_once_per_matching_filter() {
        let mut index = Index::default();
        index.insert(1, &Filters::of(&["user:42"]));
        index.insert(2, &Filters::of(&["user:*"]));
        index.insert(3, &Filters::of(&["inc*"]));
        index.insert(4, &Filters::of(&[]));
        index.insert(5, &Filters::of(&["user:42", "user:4*"]));
        assert_eq!(matches(&index, "user:42"), vec![1, 2, 4, 5, 5]);
        assert_eq!(matches(&index, "user:7"), vec![2, 4]);
        // A prefix need not end at a segment boundary.
        assert_eq!(matches(&index, "incident:1"), vec![3, 4]);
        assert_eq!(matches(&index, "in"), vec![4]);
    }

    #[test]
    fn prefix_equal_to_the_whole_topic_matches() {
        let mut index = Index::default();
        index.insert(1, &Filters::of(&["ops*"]));
        assert_eq!(matches(&index, "ops"), vec![1]);
        assert_eq!(matches(&index, "op"), Vec::<SubscriberId>::new());
    }

    #[test]
    fn removing_every_subscriber_empties_the_index() {
        let mut index = Index::default();
        let sets = [
            Filters::of(&["user:1"]),
            Filters::of(&["user:1", "user:*"]),
            Filters::of(&["user:*", "user:*"]),
            Filters::of(&["u*", "user:12*", "tenant/acme/*"]),
            Filters::of(&["*"]),
            Filters::of(&[]),
        ];
        for (id, f) in sets.iter().enumerate() {
            index.insert(id as u64, f);
        }
        assert!(index.size() > 0);
        // Leave in another order than they came, shared nodes first.
        for (id, f) in sets.iter().enumerate().rev() {
            index.remove(id as u64, f);
        }
        assert_eq!(index.size(), 0);
        assert_eq!(matches(&index, "user:12"), Vec::<SubscriberId>::new());
    }

    #[test]
    fn removing_one_prefix_keeps_the_longer_and_shorter_ones() {
        let mut index = Index::default();
        index.insert(1, &Filters::of(&["ab*"]));
        index.insert(2, &Filters::of(&["abcd*"]));
        index.insert(3, &Filters::of(&["abc*"]));
        index.remove(3, &Filters::of(&["abc*"]));
        assert_eq!(matches(&index, "abcde"), vec![1, 2]);
        index.remove(2, &Filters::of(&["abcd*"]));
        assert_eq!(matches(&index, "abcde"), vec![1]);
        // The root and `a`, `b` remain; `c`, `d` were pruned.
        assert_eq!(index.size(), 2 + 1);
    }
}
