//! A model of another kind than the demo's, end to end in the cloud: the motor example
//! (2 channels, current and temperature, × 64 samples; a score) imported with
//! `reflex_models::import`, its records carrying its own 8 declared features under their
//! feature set, uploaded over real HTTP in a version-3 batch, stored by name in Parquet,
//! and rescored with the motor model as the cloud model, drift judged per named feature.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use bytes::Bytes;
use common::{models_dir, Server, NODE, T0_US, TOKEN};
use reflex_cloud::config::RescoreConfig;
use reflex_cloud::table::{read_parquet, EventColumns};
use reflex_cloud::RescoreJob;
use reflex_models::import::{import, ImportSpec, OutputChoice};
use reflex_models::npy::Npy;
use reflex_models::stats::Stat;
use reflex_models::{Action, Manifest, Model};
use reflex_records::{
    encode_batch, BatchAck, DeadlineOutcome, DecisionSource, FeatureSet, JournalRecord, ModelId,
    RefusalReason, StageTimings, ACK_VERSION, ACK_VERSION_HEADER, BATCHES_PATH,
    BATCH_FORMAT_HEADER, BATCH_ID_HEADER, CONTENT_TYPE, NODE_HEADER,
};
use tokio_util::sync::CancellationToken;

/// Values per motor input row: 2 channels × 64 samples.
const ROW: usize = 128;
/// Time between two records, µs.
const PERIOD_US: u64 = 100_000;

/// The motor example imported into `dir`: its manifest's path.
fn import_motor(dir: &Path) -> PathBuf {
    let example = models_dir().join("examples/motor");
    std::fs::create_dir_all(dir).unwrap();
    let out = dir.join("motor.manifest.json");
    import(&ImportSpec {
        onnx: example.join("motor.onnx"),
        samples: example.join("samples.npy"),
        out: out.clone(),
        name: "motor".into(),
        version: "1.0.0".into(),
        output: OutputChoice::Score {
            thresholds: vec![0.5],
            classes: vec!["normal".into(), "anomaly".into()],
            actions: vec![Action::Run, Action::Stop],
        },
        channels: Some(vec!["current".into(), "temperature".into()]),
        stats: vec![Stat::Mean, Stat::Std, Stat::Rms, Stat::Peak],
        golden: 8,
        quantization: None,
        standardize_channels: false,
    })
    .expect("the motor example imports");
    out
}

/// One record per sample row, decided by the motor model, with the features its manifest
/// declares (what the board's recorder computes for a format-2 route).
fn motor_records(manifest_path: &Path) -> (Vec<JournalRecord>, FeatureSet) {
    let manifest = Manifest::load(manifest_path).unwrap();
    let mut model = Model::load(manifest_path).unwrap();
    let stats = manifest.format2.as_ref().unwrap().monitoring.stats();
    let samples = Npy::read(models_dir().join("examples/motor/samples.npy"))
        .unwrap()
        .f32s()
        .unwrap();
    let set = FeatureSet {
        model: ModelId {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
        },
        names: manifest.feature_names(),
    };
    let mut features = Vec::new();
    let records = samples
        .chunks_exact(ROW)
        .enumerate()
        .map(|(k, row)| {
            let p = model.predict_values(row).unwrap();
            stats.compute(row, ROW / 2, &[], &mut features).unwrap();
            JournalRecord {
                node: NODE.into(),
                device: format!("motor-{}", k % 4),
                seq: k as u64,
                arrival_unix_us: T0_US + k as u64 * PERIOD_US,
                payload: vec![k as u8; 8],
                model_input: row.to_vec(),
                features: features.iter().map(|&v| v as f32).collect(),
                logits: p.logits.clone(),
                class: p.class as u8,
                command: vec![p.class as u8],
                model: set.model.clone(),
                source: DecisionSource::Model,
                timings: StageTimings {
                    end_to_end_us: 400 + k as u32 % 50,
                    budget_us: 5_000,
                    ..StageTimings::default()
                },
                outcome: DeadlineOutcome::OnTime,
            }
        })
        .collect();
    (records, set)
}

#[tokio::test]
async fn a_model_with_its_own_features_is_ingested_by_name_and_rescored_with_drift_per_feature() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = import_motor(&dir.path().join("model"));
    let (mut records, set) = motor_records(&manifest);
    assert_eq!(
        set.names,
        [
            "mean_current",
            "mean_temperature",
            "std_current",
            "std_temperature",
            "rms_current",
            "rms_temperature",
            "peak_current",
            "peak_temperature"
        ]
    );
    let n = records.len();
    assert_eq!(n, 400);
    // The last 40 records come from a board that declares one feature fewer (no
    // peak_temperature): stored under their own set, reported missing by the rescore.
    let mut fewer = set.clone();
    fewer.names.pop();
    for r in &mut records[n - 40..] {
        r.features.pop();
    }
    // Record 7 claims the motor set with a value short: refused by count, the rest kept.
    records[7].features.pop();

    let full = set.clone().encoded();
    let short = fewer.clone().encoded();
    let encoded: Vec<Vec<u8>> = records
        .iter()
        .enumerate()
        .map(|(i, r)| r.encode_full(None, Some(if i >= n - 40 { &short } else { &full })))
        .collect();
    let b = encode_batch(
        NODE,
        encoded
            .iter()
            .enumerate()
            .map(|(i, r)| (1 + i as u64, r.as_slice())),
    );
    assert_eq!(reflex_records::batch_format_of(&b.compressed), Some(3));

    let s = Server::start(&dir.path().join("store"), 8 << 20).await;
    // What the board's uploader sends (journal/src/upload.rs): the body's own format.
    let resp = reqwest::Client::new()
        .post(format!("{}{BATCHES_PATH}", s.url()))
        .bearer_auth(TOKEN)
        .header("content-type", CONTENT_TYPE)
        .header(BATCH_ID_HEADER, &b.id)
        .header(BATCH_FORMAT_HEADER, "3")
        .header(NODE_HEADER, NODE)
        .header(ACK_VERSION_HEADER, ACK_VERSION.to_string())
        .body(b.compressed.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ack: BatchAck = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    let refused: Vec<(u32, RefusalReason)> =
        ack.refused.iter().map(|r| (r.index, r.reason)).collect();
    assert_eq!(refused, [(7, RefusalReason::FeatureCount)]);
    assert_eq!(s.stats.records_refused.load(Ordering::Relaxed), 1);
    assert_eq!(s.stats.records_stored.load(Ordering::Relaxed), n as u64 - 1);

    // Stored by name: every stored row's features are its record's, under its set's names.
    let mut stored = BTreeMap::new();
    for f in s.files().iter().filter(|f| f.ends_with(".parquet")) {
        let bytes = std::fs::read(s.root.join(f)).unwrap();
        for batch in read_parquet(Bytes::from(bytes)).unwrap() {
            let c = EventColumns::of(&batch).unwrap();
            let mut row = Vec::new();
            for i in 0..c.len {
                c.features.row_into(i, &mut row);
                let owned: Vec<(String, f32)> =
                    row.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                stored.insert(c.seq.value(i), owned);
            }
        }
    }
    assert_eq!(stored.len(), n - 1);
    assert!(!stored.contains_key(&7), "the refused record is not stored");
    for (seq, features) in &stored {
        let r = &records[*seq as usize];
        let names = if *seq as usize >= n - 40 {
            &fewer.names
        } else {
            &set.names
        };
        let expected: Vec<(String, f32)> = names.iter().cloned().zip(r.features.clone()).collect();
        assert_eq!(features, &expected, "record {seq}");
    }

    // Rescored by the motor model as the cloud model; drift per named feature.
    let cfg = RescoreConfig {
        model_manifest: manifest.clone(),
        out_dir: dir.path().join("runs"),
        batch_size: 16,
        workers: 2,
        window_s: 10,
        device_baseline_s: 10,
        min_events: 20,
        ..RescoreConfig::default()
    };
    let to_us = T0_US + n as u64 * PERIOD_US + 1;
    let job = RescoreJob::plan(s.storage.clone(), &cfg, T0_US, to_us)
        .await
        .unwrap();
    let out = job.run(CancellationToken::new()).await.unwrap();
    let r = &out.report;
    assert_eq!(
        r.features, set.names,
        "the cloud model's reference, by name"
    );
    assert_eq!(r.figures.fleet.events, n as u64 - 1);
    assert_eq!(r.figures.unscorable, 0);
    assert_eq!(
        r.figures.fleet.agree, r.figures.fleet.events,
        "the same model on the same inputs agrees with itself"
    );
    let drift = r.figures.fleet_drift.as_ref().expect("judged");
    let judged: Vec<&str> = drift.features.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(judged, set.names, "every reference feature judged by name");
    // The samples are the reference's own data: nothing drifts.
    assert!(!drift.dataset.drifted, "{:#?}", drift.features);
    let missing: Vec<(&str, u64)> = r
        .figures
        .missing_features
        .iter()
        .map(|m| (m.name.as_str(), m.events))
        .collect();
    assert_eq!(missing, [("peak_temperature", 40)]);
    assert!(
        r.verdict
            .reasons
            .iter()
            .any(|x| x.contains("lack the reference feature peak_temperature")),
        "{:?}",
        r.verdict.reasons
    );
    let peak = r
        .distributions
        .iter()
        .find(|d| d.name == "peak_temperature")
        .unwrap();
    assert_eq!(peak.current.len(), 101, "judged on the events that have it");
    s.stop().await;
}
