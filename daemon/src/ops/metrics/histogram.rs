//! The lock-free latency histogram: fixed buckets of [`AtomicU64`]s, so a real-time
//! thread records an observation with two relaxed atomic adds, no lock, no allocation.
//!
//! The bounds run 1, 2, 5 per decade from 1 µs to 1 s (19 bounds and `+Inf`): a decode of
//! a few µs and a deadline of tens of ms both land in buckets narrow enough for
//! `histogram_quantile`. Finding an observation's bucket is a binary search
//! (`partition_point`) over those 19 constants: at most 5 comparisons on 152 bytes.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the latency histogram buckets, in nanoseconds, ascending (`+Inf` is
/// implicit). Rendered as seconds in the `le` label.
pub const BUCKETS_NS: [u64; 19] = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
];
pub(super) const N_BUCKETS: usize = BUCKETS_NS.len() + 1;

/// A fixed-bucket histogram. Buckets are stored non-cumulatively (one increment per
/// observation) and summed when rendered; the count is the sum of the buckets, so the
/// `+Inf` bucket always equals `_count` even while observations race with a scrape.
#[derive(Default)]
pub(super) struct Histogram {
    pub(super) buckets: [AtomicU64; N_BUCKETS],
    pub(super) sum_ns: AtomicU64,
}

impl Histogram {
    pub(super) fn observe(&self, nanos: u64) {
        self.buckets[bucket_index(nanos)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// The bucket `nanos` falls in: the first bound `>= nanos` (`le` is inclusive), or the
/// last slot (`+Inf`) past every bound.
fn bucket_index(nanos: u64) -> usize {
    BUCKETS_NS.partition_point(|&le| le < nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounds_ascend_from_one_microsecond_to_one_second_in_1_2_5_steps() {
        assert_eq!(BUCKETS_NS[0], 1_000);
        assert_eq!(BUCKETS_NS[BUCKETS_NS.len() - 1], 1_000_000_000);
        for pair in BUCKETS_NS.windows(2) {
            assert!(pair[0] < pair[1], "{pair:?}");
        }
        let mantissas: Vec<u64> = BUCKETS_NS
            .iter()
            .map(|&b| b / 10u64.pow(b.ilog10()))
            .collect();
        for m in &mantissas {
            assert!([1, 2, 5].contains(m), "{mantissas:?}");
        }
    }

    #[test]
    fn an_observation_lands_in_the_first_bucket_whose_bound_it_does_not_exceed() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(1_000), 0);
        assert_eq!(bucket_index(1_001), 1);
        assert_eq!(bucket_index(3_000), 2);
        assert_eq!(bucket_index(1_000_000), 9);
        assert_eq!(bucket_index(1_000_000_000), 18);
        assert_eq!(bucket_index(1_000_000_001), N_BUCKETS - 1);
        assert_eq!(bucket_index(u64::MAX), N_BUCKETS - 1);
    }

    #[test]
    fn observing_increments_one_bucket_and_adds_to_the_sum() {
        let h = Histogram::default();
        h.observe(1_500);
        h.observe(1_500);
        h.observe(2_000_000_000);
        let counts: Vec<u64> = h
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts[1], 2);
        assert_eq!(counts[N_BUCKETS - 1], 1);
        assert_eq!(counts.iter().sum::<u64>(), 3);
        assert_eq!(h.sum_ns.load(Ordering::Relaxed), 2_000_003_000);
    }
}
