//! The beat apply-latency histogram behind `/api/v1/stats`.
//!
//! Invariants:
//! - Cumulative since the coordinator started; nothing resets it. A client that wants a
//!   window takes two snapshots and subtracts them
//!   ([`corral_proto::api::StatsView::apply_latency_since`]), so no endpoint exists to
//!   disturb what every other reader sees.
//! - Bucket bounds are fixed: bucket `i` holds samples at most `ceil(2^(i/8))` µs and
//!   above the previous bucket's bound; the last also holds everything above it (~67 s).
//!   Snapshots of one coordinator therefore always line up bucket by bucket.
//! - Recording is lock-free (atomic adds): it runs for every beat.
//!
//! Trade-off: a quantile is known to within its bucket, about 9%, where an HDR
//! histogram would give 1%; in exchange the histogram is a fixed array of counters that
//! is cheap to record into, to publish and to subtract.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::LazyLock;

use corral_proto::api::LatencyBucket;

/// Buckets per doubling.
const PER_DOUBLING: u32 = 8;
/// Up to 2^26 µs (~67 s).
const BUCKETS: usize = 26 * PER_DOUBLING as usize + 1;

static BOUNDS: LazyLock<[u64; BUCKETS]> = LazyLock::new(|| {
    let mut bounds = [0; BUCKETS];
    for (i, b) in bounds.iter_mut().enumerate() {
        // (Less a hair, so that exact powers of two stay exact.)
        *b = (2f64.powf(i as f64 / f64::from(PER_DOUBLING)) - 1e-9).ceil() as u64;
    }
    bounds
});

pub(crate) struct LatencyHistogram {
    counts: [AtomicU64; BUCKETS],
    max_us: AtomicU64,
}

impl LatencyHistogram {
    pub(crate) fn new() -> LatencyHistogram {
        LatencyHistogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            max_us: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, us: u64) {
        let i = BOUNDS.partition_point(|&b| b < us).min(BUCKETS - 1);
        self.counts[i].fetch_add(1, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
    }

    /// The buckets holding samples, ascending. (Small bounds repeat, `ceil` of nearby
    /// powers; a sample goes to the first of equal bounds, so the others stay empty.)
    pub(crate) fn buckets(&self) -> Vec<LatencyBucket> {
        self.counts
            .iter()
            .zip(BOUNDS.iter())
            .filter_map(|(c, &le_us)| {
                let count = c.load(Relaxed);
                (count > 0).then_some(LatencyBucket { le_us, count })
            })
            .collect()
    }

    /// The largest sample recorded.
    pub(crate) fn max_us(&self) -> u64 {
        self.max_us.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::api::{LatencySummary, StatsView};

    fn stats(buckets: Vec<LatencyBucket>) -> StatsView {
        StatsView {
            nodes: 0,
            connected: 0,
            beats_total: 0,
            reports_total: 0,
            bytes_in_total: 0,
            rejected_total: Default::default(),
            apply_latency_p50_us: 0,
            apply_latency_p99_us: 0,
            apply_latency_max_us: 0,
            apply_latency_samples: 0,
            apply_latency_buckets: buckets,
            refused: Default::default(),
            store: Default::default(),
        }
    }

    #[test]
    fn quantiles_fall_within_a_bucket_of_the_truth() {
        let h = LatencyHistogram::new();
        for us in 1..=10_000 {
            h.record(us);
        }
        let s = LatencySummary::of(&h.buckets());
        assert_eq!(s.samples, 10_000);
        for (got, want) in [(s.p50_us, 5_000), (s.p99_us, 9_900), (s.max_us, 10_000)] {
            assert!(
                got >= want && got as f64 <= want as f64 * 1.1,
                "{got} for {want}"
            );
        }
        assert_eq!(h.max_us(), 10_000);
    }

    #[test]
    fn a_window_is_the_difference_of_two_snapshots() {
        let h = LatencyHistogram::new();
        for _ in 0..1000 {
            h.record(50_000);
        }
        let before = stats(h.buckets());
        for _ in 0..100 {
            h.record(200);
        }
        let window = stats(h.buckets()).apply_latency_since(&before);
        assert_eq!(window.samples, 100);
        assert!((200..=220).contains(&window.p99_us), "{window:?}");
        assert!(
            (200..=220).contains(&window.max_us),
            "the old slow beats are outside"
        );
    }

    #[test]
    fn samples_beyond_the_last_bound_are_kept() {
        let h = LatencyHistogram::new();
        h.record(0);
        h.record(u64::MAX);
        let b = h.buckets();
        assert_eq!(b.iter().map(|b| b.count).sum::<u64>(), 2);
        assert_eq!(b.last().unwrap().le_us, BOUNDS[BUCKETS - 1]);
    }
}
