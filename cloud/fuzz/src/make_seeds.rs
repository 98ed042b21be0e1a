//! `make-seeds DIR`: writes valid upload batches into the corpus directory DIR, built with
//! the encoders the board uses (so they follow the format of this checkout): each batch
//! as uploaded (zstd frame) and as its uncompressed body, with and without a window
//! summary. Starting from them, the fuzzer mutates real structure instead of spending its
//! time finding the version bytes, postcard lengths and a zstd frame by chance.
//!
//! Every format the decoder reads has seeds: batch format 2 (records of version 1, the
//! demo features), batch format 3 (records naming two feature sets, one with a decision
//! trace, lifted into the batch's table as in-batch records of version 4), and a batch
//! format 2 body holding a self-describing record of version 3 (its set inline).
//! Each seed is decoded again before this exits, and its format checked: a seed that no
//! longer is what its name says fails the run (and CI's `scripts/fuzz` with it).

use reflex_drift::monitor::WindowSummary;
use reflex_drift::QuantileSketch;
use reflex_records::{
    batch_body, batch_body_with_windows, decode_batch, decode_body, encode_batch_with_windows,
    DeadlineOutcome, DecisionSource, DecisionTrace, EncodedFeatureSet, FeatureSet, JournalRecord,
    ModelId, StageTimings, BATCH_FORMAT_VERSION, BATCH_FORMAT_VERSION_WITH_FEATURE_SETS,
    N_FEATURES, RECORD_FORMAT_VERSION_WITH_FEATURE_SET,
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

/// A feature set of `model` with these names.
fn set(model: &str, names: &[&str]) -> EncodedFeatureSet {
    FeatureSet {
        model: ModelId {
            name: model.into(),
            version: "1.0.0".into(),
        },
        names: names.iter().map(|n| (*n).to_owned()).collect(),
    }
    .encoded()
}

/// Records of two models that declare their own features (a motor's 3, a pump's 2), one
/// with a decision trace: encoded as the board journals them (record version 3).
fn records_with_feature_sets() -> Vec<(u64, Vec<u8>)> {
    let motor = set("motor", &["mean_current", "rms_current", "temperature"]);
    let pump = set("pump", &["peak_pressure", "mean_flow"]);
    let trace = DecisionTrace {
        reason: "rule".into(),
        rule: "hot".into(),
        proposed: "stop".into(),
        confidence: Some(0.75),
    };
    [
        (7, &motor, None),
        (8, &pump, Some(&trace)),
        (9, &motor, None),
    ]
    .into_iter()
    .map(|(seq, s, decision)| {
        let mut r = record(seq, DecisionSource::Model, DeadlineOutcome::OnTime);
        r.features.truncate(s.set().names.len());
        (seq, r.encode_full(decision, Some(s)))
    })
    .collect()
}

/// A postcard varint (LEB128), as the batch body frames sequences and lengths.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A batch format 2 body whose one record is `record` as it is (a self-describing record of
/// version 3 is kept so by no encoder, which lifts its set into a version-3 batch): framed
/// like the body the encoder builds for a demo record of the same journal sequence.
fn body_with_record_as_is(seq: u64, record: &[u8]) -> Vec<u8> {
    let demo = record_bytes(seq);
    let body = batch_body("board-1", std::iter::once((seq, demo.as_slice())));
    let mut framing = Vec::new();
    varint(seq, &mut framing);
    varint(demo.len() as u64, &mut framing);
    let head = body.len() - framing.len() - demo.len();
    let mut out = body[..head].to_vec();
    varint(seq, &mut out);
    varint(record.len() as u64, &mut out);
    out.extend_from_slice(record);
    out
}

fn record_bytes(seq: u64) -> Vec<u8> {
    record(seq, DecisionSource::Model, DeadlineOutcome::OnTime).encode()
}

/// Writes `bytes` as seed `name`.
fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("writing a seed");
}

/// The seed is what its name says: it decodes (as a body, or as an upload), its first byte
/// is batch format `format`, and its records name `sets` distinct feature sets.
fn check(name: &str, bytes: &[u8], zstd: bool, format: u8, sets: usize) {
    let decoded = if zstd {
        decode_batch(bytes, None)
    } else {
        decode_body(bytes)
    };
    let batch = decoded.unwrap_or_else(|e| panic!("seed {name} does not decode: {e}"));
    let first = if zstd {
        reflex_records::batch_format_of(bytes)
    } else {
        bytes.first().copied()
    };
    assert_eq!(first, Some(format), "seed {name}: batch format");
    assert_eq!(batch.feature_sets.len(), sets, "seed {name}: feature sets");
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
    let named = records_with_feature_sets();
    let w = window();
    // (seed name, records, batch format, distinct feature sets of all its records)
    let kinds = [
        ("plain", &encoded, BATCH_FORMAT_VERSION, [0, 0]),
        (
            "sets",
            &named,
            BATCH_FORMAT_VERSION_WITH_FEATURE_SETS,
            [1, 2],
        ),
    ];
    for (kind, records, format, sets) in kinds {
        for (with, windows) in [("", vec![]), ("-window", vec![w.as_slice()])] {
            for (n, sets) in [1, records.len()].into_iter().zip(sets) {
                let pairs = || records[..n].iter().map(|(s, b)| (*s, b.as_slice()));
                let body = batch_body_with_windows("board-1", pairs(), &windows);
                let upload = encode_batch_with_windows("board-1", pairs(), &windows);
                let name = format!("seed-{kind}{with}-{n}");
                check(&name, &body, false, format, sets);
                check(&name, &upload.compressed, true, format, sets);
                write(&dir, &format!("{name}-body"), &body);
                write(&dir, &format!("{name}-zstd"), &upload.compressed);
            }
        }
    }
    // A record of version 3 carried as it is, in a batch of format 2.
    let (seq, record) = &named[1];
    assert_eq!(record[0], RECORD_FORMAT_VERSION_WITH_FEATURE_SET);
    let body = body_with_record_as_is(*seq, record);
    check("seed-record3", &body, false, BATCH_FORMAT_VERSION, 1);
    let compressed = zstd::bulk::compress(&body, 3).expect("zstd compresses into a Vec");
    check("seed-record3", &compressed, true, BATCH_FORMAT_VERSION, 1);
    write(&dir, "seed-record3-body", &body);
    write(&dir, "seed-record3-zstd", &compressed);
}
