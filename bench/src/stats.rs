//! Latency histograms (HdrHistogram, microseconds, 3 significant digits)
//! and the percentiles a report shows.

use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest value recorded: one hour in microseconds (larger values are
/// clamped to it).
const MAX_MICROS: u64 = 3_600_000_000;

/// An empty histogram of microseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

/// Records `micros`, clamped into the histogram's range.
pub fn record(h: &mut Histogram<u64>, micros: u64) {
    h.saturating_record(micros.clamp(1, MAX_MICROS));
}

/// Histograms shared by many subscribers: each records into its own shard
/// under a lock that is almost never contended, with one histogram per
/// shard rather than per subscriber (10,000 subscribers × ~40 KiB each would
/// be 400 MiB).
pub struct Shards {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Shards {
    pub fn new(n: usize) -> Self {
        Self {
            shards: (0..n.max(1)).map(|_| Mutex::new(histogram())).collect(),
        }
    }

    /// Records a batch of values into shard `key % n`.
    pub fn record_all(&self, key: usize, micros: &[u64]) {
        if micros.is_empty() {
            return;
        }
        let mut h = self.shards[key % self.shards.len()]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for &m in micros {
            record(&mut h, m);
        }
    }

    /// Forgets everything recorded so far.
    pub fn reset(&self) {
        for s in &self.shards {
            s.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .reset();
        }
    }

    /// Everything recorded so far, merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = histogram();
        for s in &self.shards {
            let h = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            all.add(&*h).expect("same bounds");
        }
        all
    }
}

/// Latency samples with the time their event was sent, for the latency of
/// the events sent within part of a run (`peruser-storm`: during the
/// storm). 12 bytes a delivery, sharded like [`Shards`].
pub struct Timeline {
    shards: Vec<Mutex<Vec<(u64, u32)>>>,
}

impl Timeline {
    pub fn new(n: usize) -> Self {
        Self {
            shards: (0..n.max(1)).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// Records deliveries: `sent[i]` (ns since the epoch) and `micros[i]`.
    pub fn record_all(&self, key: usize, sent: &[u64], micros: &[u64]) {
        if sent.is_empty() {
            return;
        }
        let mut v = self.shards[key % self.shards.len()]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        v.extend(
            sent.iter()
                .zip(micros)
                .map(|(&s, &m)| (s, u32::try_from(m).unwrap_or(u32::MAX))),
        );
    }

    /// Forgets everything recorded so far.
    pub fn reset(&self) {
        for s in &self.shards {
            s.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
        }
    }

    /// The latency of the events sent in `[from, to)` (ns since the epoch).
    pub fn sent_within(&self, from: u64, to: u64) -> Option<Percentiles> {
        let mut h = histogram();
        for s in &self.shards {
            let v = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for &(_, micros) in v.iter().filter(|(sent, _)| (from..to).contains(sent)) {
                record(&mut h, u64::from(micros));
            }
        }
        Percentiles::of(&h)
    }
}

/// Percentiles of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// `None` for an empty histogram.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Self {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_into_percentiles() {
        let s = Shards::new(4);
        let values: Vec<u64> = (1..=1000).collect();
        for (i, chunk) in values.chunks(100).enumerate() {
            s.record_all(i, chunk);
        }
        let p = Percentiles::of(&s.merged()).unwrap();
        assert_eq!(p.count, 1000);
        assert!((p.p50_ms - 0.5).abs() < 0.01, "{p:?}");
        assert!((p.max_ms - 1.0).abs() < 0.01, "{p:?}");
        assert!(Percentiles::of(&histogram()).is_none());
    }

    #[test]
    fn timeline_keeps_only_the_window_asked_for() {
        let t = Timeline::new(2);
        t.record_all(0, &[10, 20, 30], &[1000, 2000, 3000]);
        t.record_all(1, &[25], &[9000]);

        let p = t.sent_within(20, 30).unwrap();

        assert_eq!(p.count, 2);
        assert!((p.max_ms - 9.0).abs() < 0.01, "{p:?}");
        assert!(t.sent_within(31, 40).is_none());
    }
}
