//! Cost of monitoring on the real-time path: `RouteMonitor::record` per event (13 sketch
//! inserts, counters, occasional compaction) and the work of closing a window (drift of 13
//! sketches against their profiles), without criterion: plain timing, printed.
//!
//! `cargo bench -p reflex-drift --bench record`. On the 2-core development machine: about
//! 0.7 µs per event (≈ 50 ns per sketch insert) and 1–4 ms to close a window.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use reflex_drift::monitor::{MonitorConfig, Observation, RouteMonitor};
use reflex_drift::{FeatureReference, QuantileProfile, Reference};

const FEATURES: usize = 13;

/// xorshift64*, uniform in [0, 1).
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn main() {
    let features = (0..FEATURES)
        .map(|f| FeatureReference {
            name: format!("f{f}"),
            profile: QuantileProfile::new((0..=100).map(|i| f64::from(i) / 100.0).collect(), 4000)
                .expect("profile"),
        })
        .collect();
    let reference = Arc::new(Reference::new(features, vec![0.25; 4]).expect("reference"));
    let config = MonitorConfig {
        window_ms: 1_000_000_000,
        ..MonitorConfig::default()
    };
    let mut monitor = RouteMonitor::new("bench", reference, config, 0).expect("monitor");
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let events: u64 = 1_000_000;
    let vectors: Vec<[f64; FEATURES]> = (0..4096)
        .map(|_| std::array::from_fn(|_| rng.uniform()))
        .collect();
    let start = Instant::now();
    for i in 0..events {
        let v = &vectors[(i % 4096) as usize];
        let obs = Observation {
            features: Some(v),
            model_class: Some((i % 4) as usize),
            fallback: false,
            deadline_missed: false,
        };
        black_box(monitor.record(i, &obs).expect("record"));
    }
    let per_event = start.elapsed().as_nanos() as f64 / events as f64;
    let start = Instant::now();
    let report = monitor
        .tick(2_000_000_000)
        .expect("tick")
        .expect("window closes");
    let close = start.elapsed();
    let retained: usize = report.summary.sketches.iter().map(|s| s.retained()).sum();
    println!(
        "record: {per_event:.0} ns/event over {events} events; closing the window: {:.2} ms; \
         {retained} values retained in {FEATURES} sketches",
        close.as_secs_f64() * 1e3
    );
}
