//! What the declared window statistics cost per window: today's 13 features declared as
//! `[mean, std, peak, kurtosis] × [x, y, z] + [temperature]` on 3 × 64 against the fixed
//! `features::compute`, and all 11 statistics on 3 × 1024.
//! Run: `cargo bench -p reflex-models --bench stats` (benches/README.md has the figures).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use reflex_models::stats::{Stat, WindowStats};
use reflex_models::{features, WINDOW_LEN};

/// A vibration-like window: a tone per channel plus a deterministic pseudo-random noise.
fn window(channels: usize, samples: usize) -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..channels * samples)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            let (c, t) = ((i / samples) as f32, (i % samples) as f32);
            (t * 0.3 * (c + 1.0)).sin() * 0.8 + noise * 0.1 + c * 0.05
        })
        .collect()
}

fn spec(stats: &[Stat], channels: &[&str], scalars: &[&str]) -> WindowStats {
    WindowStats {
        stats: stats.to_vec(),
        channels: channels.iter().map(|c| c.to_string()).collect(),
        scalars: scalars.iter().map(|s| s.to_string()).collect(),
    }
}

fn stats(c: &mut Criterion) {
    let mut group = c.benchmark_group("window_stats");
    group.throughput(Throughput::Elements(1));

    let small = window(3, 64);
    let fixed: &[f32; WINDOW_LEN] = small.as_slice().try_into().unwrap();
    group.bench_function("13 features 3x64, features::compute", |b| {
        b.iter(|| features::compute(black_box(fixed), black_box(41.5)))
    });
    let declared = spec(
        &[Stat::Mean, Stat::Std, Stat::Peak, Stat::Kurtosis],
        &["x", "y", "z"],
        &["temperature"],
    );
    let mut out = Vec::with_capacity(declared.len());
    group.bench_function("13 features 3x64, WindowStats::compute", |b| {
        b.iter(|| {
            declared
                .compute(black_box(&small), 64, black_box(&[41.5]), &mut out)
                .unwrap();
            black_box(&out);
        })
    });

    let big = window(3, 1024);
    let all = spec(&Stat::ALL, &["x", "y", "z"], &[]);
    let mut out = Vec::with_capacity(all.len());
    group.bench_function("11 stats 3x1024, WindowStats::compute", |b| {
        b.iter(|| {
            all.compute(black_box(&big), 1024, &[], &mut out).unwrap();
            black_box(&out);
        })
    });
    group.finish();
}

criterion_group!(benches, stats);
criterion_main!(benches);
