//! Correctness bookkeeping: which events a subscriber received, against
//! which ones the server acknowledged.
//!
//! Each publisher numbers its events 0, 1, 2, … and waits for each answer
//! before the next request, so its events are committed in that order and
//! every subscriber must see each acknowledged one exactly once, in order:
//! - missing: acknowledged, never received;
//! - duplicate: received again;
//! - out of order: received after a later event of the same publisher.

use serde::Serialize;

/// A growable bit set.
#[derive(Debug, Clone, Default)]
pub struct Bits {
    words: Vec<u64>,
}

impl Bits {
    /// Sets bit `i`; returns whether it was clear.
    pub fn insert(&mut self, i: u64) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let was = self.words[w] & (1 << b) != 0;
        self.words[w] |= 1 << b;
        !was
    }

    pub fn contains(&self, i: u64) -> bool {
        self.words
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    pub fn len(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// The set bits, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            (0..64)
                .filter(move |b| w & (1 << b) != 0)
                .map(move |b| i as u64 * 64 + b)
        })
    }

    /// Bits set here and not in `other`.
    pub fn count_missing_from(&self, other: &Bits) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(i, w)| u64::from((w & !other.words.get(i).copied().unwrap_or(0)).count_ones()))
            .sum()
    }
}

/// What one subscriber received, per publisher.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    seen: Vec<Bits>,
    /// One past the highest sequence seen, per publisher.
    next: Vec<u64>,
    pub unique: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

impl Tracker {
    /// Records event `seq` of `publisher`; returns whether it was new.
    pub fn record(&mut self, publisher: u32, seq: u64) -> bool {
        let p = publisher as usize;
        if p >= self.seen.len() {
            self.seen.resize(p + 1, Bits::default());
            self.next.resize(p + 1, 0);
        }
        if !self.seen[p].insert(seq) {
            self.duplicates += 1;
            return false;
        }
        self.unique += 1;
        if seq < self.next[p] {
            self.out_of_order += 1;
        } else {
            self.next[p] = seq + 1;
        }
        true
    }

    /// Whether event `seq` of `publisher` was received.
    pub fn contains(&self, publisher: u32, seq: u64) -> bool {
        self.seen
            .get(publisher as usize)
            .is_some_and(|b| b.contains(seq))
    }

    /// Acknowledged events (per publisher) this subscriber never received.
    pub fn missing(&self, acked: &[Bits]) -> u64 {
        let empty = Bits::default();
        acked
            .iter()
            .enumerate()
            .map(|(p, a)| a.count_missing_from(self.seen.get(p).unwrap_or(&empty)))
            .sum()
    }
}

/// The correctness counters of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Correctness {
    pub subscribers: usize,
    /// Acknowledged events each subscriber should receive.
    pub expected_per_subscriber: u64,
    pub received: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Event ids lower than the previous one on the same stream.
    pub id_regressions: u64,
    /// `event: reset` frames (herald: the cursor could not be served).
    pub resets: u64,
    /// Streams that ended and were resumed with `Last-Event-ID`.
    pub reconnects: u64,
    /// Subscribers that could not (re)connect at all.
    pub failed_subscribers: usize,
    /// Subscribers with any missing, duplicate or out-of-order event.
    pub subscribers_with_errors: usize,
    /// Up to 10 of them: (subscriber, missing, duplicates, out of order).
    pub worst: Vec<(usize, u64, u64, u64)>,
    pub first_error: Option<String>,
}

impl Correctness {
    /// No missing, duplicate or out-of-order event, no reset, every
    /// subscriber connected.
    pub fn is_clean(&self) -> bool {
        self.missing == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.id_regressions == 0
            && self.resets == 0
            && self.failed_subscribers == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(n: u64) -> Bits {
        let mut b = Bits::default();
        for i in 0..n {
            b.insert(i);
        }
        b
    }

    #[test]
    fn in_order_once_is_clean() {
        let mut t = Tracker::default();
        for s in 0..100 {
            assert!(t.record(0, s));
        }
        assert_eq!(
            (t.missing(&[acked(100)]), t.duplicates, t.out_of_order),
            (0, 0, 0)
        );
    }

    #[test]
    fn counts_missing_duplicate_and_out_of_order() {
        let mut t = Tracker::default();
        for s in [0, 1, 3, 2, 3, 5] {
            t.record(0, s);
        }
        t.record(1, 0);
        // Publisher 0 acked 0..=6: 4 and 6 missing; publisher 1 acked 0..=1: 1 missing.
        assert_eq!(t.missing(&[acked(7), acked(2)]), 3);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.out_of_order, 1);
        assert_eq!(t.unique, 6);
    }

    #[test]
    fn bits_iterate_in_order_and_tracker_answers_membership() {
        let mut b = Bits::default();
        for i in [130, 0, 63, 64] {
            b.insert(i);
        }
        let mut t = Tracker::default();
        t.record(2, 7);

        assert_eq!(b.iter().collect::<Vec<_>>(), [0, 63, 64, 130]);
        assert!(t.contains(2, 7));
        assert!(!t.contains(2, 6) && !t.contains(0, 7) && !t.contains(9, 7));
    }

    #[test]
    fn unacknowledged_events_are_not_missing() {
        let t = Tracker::default();
        assert_eq!(t.missing(&[Bits::default()]), 0);
    }
}
