//! Inference latency of reflex's models under tract, one window at a time: edge int8,
//! its fp32 twin, cloud at batch 1 (and batch 64 per window), and the linear fallback
//! including the feature computation. Inputs are the first 256 golden held-out windows
//! from models/golden, cycled — the same as `benches/ort_latency.py` feeds onnxruntime.
//!
//! Before criterion's estimates, each model is timed call by call (20 000 calls) and the
//! median and p99 printed, for comparison with onnxruntime.
//! Run: `cargo bench -p reflex-benches --bench model_latency`.

use std::path::PathBuf;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use reflex_models::{features, Fallback, Model, WINDOW_LEN};

const INPUTS: usize = 256;
const TIMED_CALLS: usize = 20_000;

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// The golden windows in g (int16 counts × 1/2048, as the daemon decodes them).
fn golden_windows() -> (Vec<[f32; WINDOW_LEN]>, Vec<f32>) {
    let read = |name: &str| {
        let bytes = std::fs::read(models_dir().join("golden").join(name)).expect("golden file");
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        bytes[10 + hlen..].to_vec()
    };
    let counts = read("window_counts.npy");
    let windows = counts
        .chunks_exact(2 * WINDOW_LEN)
        .take(INPUTS)
        .map(|w| {
            let mut out = [0.0f32; WINDOW_LEN];
            for (o, c) in out.iter_mut().zip(w.chunks_exact(2)) {
                *o = f32::from(i16::from_le_bytes([c[0], c[1]])) * (1.0 / 2048.0);
            }
            out
        })
        .collect();
    let temps = read("temperature.npy")
        .chunks_exact(4)
        .take(INPUTS)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (windows, temps)
}

fn percentiles(label: &str, mut f: impl FnMut(usize)) {
    for i in 0..2000 {
        f(i);
    }
    let mut ns: Vec<u64> = (0..TIMED_CALLS)
        .map(|i| {
            let t = Instant::now();
            f(i);
            t.elapsed().as_nanos() as u64
        })
        .collect();
    ns.sort_unstable();
    let q = |p: f64| ns[((ns.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
    println!(
        "tract {label:18} median {:8.2} µs  p99 {:8.2} µs  ({TIMED_CALLS} calls)",
        q(0.5),
        q(0.99)
    );
}

fn models(c: &mut Criterion) {
    let (windows, temps) = golden_windows();
    let manifest = |n: &str| models_dir().join(format!("{n}.manifest.json"));
    let t = Instant::now();
    let mut edge = Model::load(manifest("edge")).expect("edge");
    println!("edge load + verify + optimize + warm-up: {:?}", t.elapsed());
    let mut edge_fp32 = Model::load_fp32_twin(manifest("edge")).expect("edge fp32");
    let t = Instant::now();
    let mut cloud = Model::load(manifest("cloud")).expect("cloud");
    println!(
        "cloud load + verify + optimize + warm-up: {:?}",
        t.elapsed()
    );
    let mut cloud64 = Model::load_with_batch(manifest("cloud"), 64).expect("cloud batch 64");
    let fallback = Fallback::load(manifest("fallback")).expect("fallback");
    let batch64: Vec<f32> = windows.iter().take(64).flatten().copied().collect();

    percentiles("edge int8", |i| {
        edge.predict(&windows[i % INPUTS], temps[i % INPUTS])
            .expect("predict");
    });
    // Other forms of the edge model (e.g. a QDQ build of the same fp32 twin), to compare
    // quantization formats: REFLEX_BENCH_EDGE_VARIANTS=a.manifest.json,b.manifest.json
    for path in std::env::var("REFLEX_BENCH_EDGE_VARIANTS")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
    {
        let mut variant = Model::load(path).expect("edge variant");
        percentiles(path, |i| {
            variant
                .predict(&windows[i % INPUTS], temps[i % INPUTS])
                .expect("predict");
        });
    }
    percentiles("edge fp32", |i| {
        edge_fp32
            .predict(&windows[i % INPUTS], temps[i % INPUTS])
            .expect("predict");
    });
    percentiles("cloud batch 1", |i| {
        cloud
            .predict(&windows[i % INPUTS], temps[i % INPUTS])
            .expect("predict");
    });
    percentiles("fallback+features", |i| {
        std::hint::black_box(
            fallback.predict(&features::compute(&windows[i % INPUTS], temps[i % INPUTS])),
        );
    });

    let mut g = c.benchmark_group("model");
    let mut i = 0;
    g.bench_function("edge_int8", |b| {
        b.iter(|| {
            i = (i + 1) % INPUTS;
            edge.predict(&windows[i], temps[i]).expect("predict")
        })
    });
    g.bench_function("edge_fp32", |b| {
        b.iter(|| {
            i = (i + 1) % INPUTS;
            edge_fp32.predict(&windows[i], temps[i]).expect("predict")
        })
    });
    g.bench_function("cloud_batch1", |b| {
        b.iter(|| {
            i = (i + 1) % INPUTS;
            cloud.predict(&windows[i], temps[i]).expect("predict")
        })
    });
    g.bench_function("cloud_batch64", |b| {
        b.iter(|| {
            cloud64
                .predict_batch(&batch64, &temps[..64])
                .expect("predict")
        })
    });
    g.bench_function("features", |b| {
        b.iter(|| {
            i = (i + 1) % INPUTS;
            features::compute(std::hint::black_box(&windows[i]), temps[i])
        })
    });
    g.bench_function("fallback_with_features", |b| {
        b.iter(|| {
            i = (i + 1) % INPUTS;
            fallback.predict(&features::compute(
                std::hint::black_box(&windows[i]),
                temps[i],
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, models);
criterion_main!(benches);
