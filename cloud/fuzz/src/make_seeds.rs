//! `make-seeds DIR`: writes valid upload batches into the corpus directory DIR, built with
//! the encoders the board uses (so they follow the format of this checkout): each batch
//! as uploaded (zstd frame) and as its uncompressed body, with and without a window
//! summary. Starting from them, the fuzzer mutates real structure instead of spending its
//! time finding the version bytes, postcard lengths and a zstd frame by chance.

use reflex_drift::monitor::WindowSummary;
use reflex_drift::QuantileSketch;
use reflex_records::{
    batch_body_with_windows, encode_batch_with_windows, DeadlineOutcome, DecisionSource,
    JournalRecord, ModelId, StageTimings, N_FEATURES,
};

fn record(seq: u64, source: DecisionSource, outcome: DeadlineOutcome) -> JournalRecord {
    JournalRecord {
        node: "board-1".into(),
        device: format!("dev-{}", seq % 3),
        seq,
        arrival_unix_us: 1_700_000_000_000_000 + seq * 1000,
        payload: vec![1, 2, 3, seq as u8],
        model_input: vec![0.5, -1.0, 0.25],
        features: vec![0.125; N_FEATURES],
        logits: vec![0.25, 2.0, -0.5, 0.0],
        class: 1,
        command: vec![9, 8],
        model: ModelId {
            name: "edge".into(),
            version: "3".into(),
        },
        source,
        timings: StageTimings {
            decode_us: 5,
            queue_us: 130,
            infer_us: 20,
            publish_us: 40,
            end_to_end_us: 200,
            budget_us: 5000,
        },
        outcome,
    }
}

fn window() -> Vec<u8> {
    let mut sketch = QuantileSketch::new(8).expect("k = 8 is a valid sketch size");
    for i in 0..20 {
        sketch
            .insert(f64::from(i) * 0.5)
            .expect("finite values insert");
    }
    WindowSummary {
        route: "vibration".into(),
        index: 4,
        start_ms: 40_000,
        end_ms: 50_000,
        events: 20,
        model_class_counts: vec![12, 8, 0, 0],
        fallbacks: 1,
        deadline_misses: 1,
        non_finite_values: 0,
        feature_names: vec!["rms".into()],
        sketches: vec![sketch],
        drift: None,
    }
    .encode()
}

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .expect("usage: make-seeds CORPUS_DIR");
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("creating the corpus directory");
    let records = [
        record(1, DecisionSource::Model, DeadlineOutcome::OnTime),
        record(
            2,
            DecisionSource::Fallback,
            DeadlineOutcome::Miss {
                cause: "model_too_slow".into(),
            },
        ),
        record(5, DecisionSource::Rule, DeadlineOutcome::OnTime),
    ];
    let encoded: Vec<(u64, Vec<u8>)> = records.iter().map(|r| (r.seq, r.encode())).collect();
    let w = window();
    for (name, windows) in [("plain", vec![]), ("window", vec![w.as_slice()])] {
        for n in [1, encoded.len()] {
            let pairs = || encoded[..n].iter().map(|(s, b)| (*s, b.as_slice()));
            let body = batch_body_with_windows("board-1", pairs(), &windows);
            let upload = encode_batch_with_windows("board-1", pairs(), &windows);
            std::fs::write(dir.join(format!("seed-{name}-{n}-body")), &body)
                .expect("writing a seed");
            std::fs::write(
                dir.join(format!("seed-{name}-{n}-zstd")),
                &upload.compressed,
            )
            .expect("writing a seed");
        }
    }
}
