//! The lock-free latency histogram: fixed buckets of [`AtomicU64`]s, so a real-time
//! thread records an observation with two relaxed atomic adds, no lock, no allocation.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the latency histogram buckets, in nanoseconds (`+Inf` is implicit).
pub const BUCKETS_NS: [u64; 10] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    25_000_000,
    100_000_000,
];
/// The same bounds as `le` label values, in seconds.
pub(super) const BUCKETS_LE: [&str; 10] = [
    "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.002", "0.005", "0.01", "0.025", "0.1",
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
        let i = BUCKETS_NS.partition_point(|&le| le < nanos);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(nanos, Ordering::Relaxed);
    }
}
