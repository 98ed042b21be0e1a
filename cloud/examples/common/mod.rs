//! What the cloud examples share: the models directory and a simulated fleet's journal
//! records, decided by the fallback model, and storing them as uploaded batches.

use std::sync::Arc;

use reflex_cloud::Storage;
use reflex_models::{features, Fallback, WINDOW_LEN};
use reflex_records::{
    decode_batch, encode_batch, DeadlineOutcome, DecisionSource, JournalRecord, ModelId,
    StageTimings,
};
use reflex_sim::device::SimDevice;
use reflex_sim::signal::{Condition, Distortion};

/// Stores `recs` in `storage` in batches of `per_batch` records of node `bench`, each
/// encoded and decoded as an upload is, with journal sequences from 1.
// Not every example stores batches itself (`throughput` posts them to an ingest).
#[allow(dead_code)]
pub async fn store_batches(storage: &Storage, recs: &[JournalRecord], per_batch: usize) {
    for (k, chunk) in recs.chunks(per_batch).enumerate() {
        let enc: Vec<Vec<u8>> = chunk.iter().map(JournalRecord::encode).collect();
        let first = (k * per_batch) as u64 + 1;
        let b = encode_batch(
            "bench",
            enc.iter()
                .enumerate()
                .map(|(i, r)| (first + i as u64, r.as_slice())),
        );
        let decoded = decode_batch(&b.compressed, Some(&b.id)).expect("decode");
        storage.store_batch(Arc::new(decoded)).await.expect("store");
    }
}

/// 2026-01-01T00:00:00Z, µs: the first record's arrival.
pub const T0_US: u64 = 1_767_225_600_000_000;

/// The repository's `models/` directory.
pub fn models() -> std::path::PathBuf {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../models").into()
}

/// `n` events of `devices` simulated devices in turn, 50 ms apart, each decided by the
/// fallback model, with a command of `command_len` bytes.
pub fn simulated_records(n: usize, devices: u32, command_len: usize) -> Vec<JournalRecord> {
    let fallback = Fallback::load(models().join("fallback.manifest.json")).expect("fallback");
    let mut sims: Vec<SimDevice> = (0..devices)
        .map(|i| SimDevice::new(i, Condition::ALL[i as usize % 4], 7))
        .collect();
    let mut buf = [0u8; 1024];
    (0..n)
        .map(|k| {
            let i = k % sims.len();
            let t = T0_US + (k as u64) * 50_000;
            let e = sims[i].next_event(t, Distortion::NONE);
            let payload = e.encode(&mut buf).unwrap().to_vec();
            let window: Vec<f32> = e.window.values().collect();
            let w: &[f32; WINDOW_LEN] = window.as_slice().try_into().unwrap();
            let f = features::compute(w, e.temperature_c());
            let class = fallback.predict(&f) as u8;
            JournalRecord {
                node: "bench".into(),
                device: sims[i].id().to_owned(),
                seq: e.seq,
                arrival_unix_us: t,
                payload,
                model_input: window,
                features: f.iter().map(|&v| v as f32).collect(),
                logits: vec![0.1, 0.2, 0.3, 0.4],
                class,
                command: vec![class; command_len],
                model: ModelId {
                    name: "edge".into(),
                    version: "1.0.0".into(),
                },
                source: DecisionSource::Model,
                timings: StageTimings {
                    end_to_end_us: 400 + (k % 300) as u32,
                    budget_us: 5000,
                    ..StageTimings::default()
                },
                outcome: DeadlineOutcome::OnTime,
            }
        })
        .collect()
}
