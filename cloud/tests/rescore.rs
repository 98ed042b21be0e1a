//! Rescoring end to end on real files: a simulated fleet (reflex-sim's drift scenario on
//! some devices, clean on the others) decided by the real edge model, uploaded over HTTP
//! as journal batches, stored as Parquet, then rescored with the real cloud model through
//! tract, with drift checked by reflex-drift.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow_array::{Array, BooleanArray, StringArray};

use common::{batch_of, post, rescore_config, Fleet, Server, T0_US, TOKEN};
use reflex_cloud::table::read_parquet;
use reflex_cloud::{RescoreJob, Storage};
use reflex_journal::record::{decode_batch, JournalRecord};
use tokio_util::sync::CancellationToken;

fn fleet(seed: u64, drift_devices: u32, events_per_device: u64) -> Fleet {
    Fleet {
        seed,
        devices: 8,
        drift_devices,
        events_per_device,
        period_us: 1_000_000,
        // Baseline is the first third of the run; drift starts after it.
        drift_start_s: events_per_device as f64 * 0.4,
        drift_ramp_s: 30.0,
    }
}

/// Stores records in batches of 400 through the storage layer (the ingest's own path
/// after HTTP and validation).
async fn store_direct(storage: &Storage, records: &[JournalRecord]) {
    for (k, chunk) in records.chunks(400).enumerate() {
        let b = batch_of(chunk, 1 + 400 * k as u64);
        let decoded = decode_batch(&b.compressed, Some(&b.id)).unwrap();
        storage.store_batch(Arc::new(decoded)).await.unwrap();
    }
}

fn expected_drifted(f: &Fleet) -> BTreeSet<String> {
    (0..f.drift_devices)
        .map(|i| format!("dev-{i:04}"))
        .collect()
}

#[tokio::test]
async fn uploaded_fleet_batches_are_rescored_and_only_the_drifted_devices_are_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("store"), 8 << 20).await;
    let f = fleet(11, 2, 900);
    let records = f.records();
    for (k, chunk) in records.chunks(500).enumerate() {
        let b = batch_of(chunk, 1 + 500 * k as u64);
        let (status, body) = post(&s.url(), TOKEN, &b.id, b.compressed.clone()).await;
        assert_eq!(status, 200, "{body}");
    }
    let cfg = rescore_config(&dir.path().join("runs"), &f, 64);
    let job = RescoreJob::plan(
        s.storage.clone(),
        &cfg,
        T0_US,
        T0_US + f.duration_us() + 1_000_000,
    )
    .await
    .unwrap();
    let planned_files = job.manifest().snapshot.files.clone();
    assert!(!planned_files.is_empty());
    let out = job.run(CancellationToken::new()).await.unwrap();
    let r = &out.report;
    let fig = &r.figures;

    assert_eq!(fig.fleet.events, records.len() as u64);
    let confusion_total: u64 = fig.fleet.confusion.iter().flatten().sum();
    assert_eq!(confusion_total, fig.fleet.events);
    assert!(fig.fleet_rates.agreement > 0.7, "{:?}", fig.fleet_rates);
    let fallback_share = fig.fleet_rates.fallback;
    assert!((0.09..0.11).contains(&fallback_share), "{fallback_share}");
    assert_eq!(fig.fleet.deadline_miss, fig.fleet.fallback);
    assert!(
        fig.models.contains_key("edge@1.0.0"),
        "{:?}",
        fig.models.keys()
    );
    assert!(fig.models.keys().any(|k| k.starts_with("fallback@")));

    let flagged: BTreeSet<String> = r.verdict.flagged_devices.iter().cloned().collect();
    assert_eq!(flagged, expected_drifted(&f), "{:#?}", r.verdict);
    assert!(r.verdict.drift_detected);
    for d in &fig.devices {
        let x = d.drift.as_ref().expect("every device judged");
        assert!(x.baseline_events >= 200 && x.current_events >= 200);
    }
    println!(
        "fleet vs reference: {:?}; edge class JS {:?}, cloud class JS {:?}; agreement {:.3}; {:.0} events/s",
        fig.fleet_drift.as_ref().map(|d| (d.dataset.drifted_features, d.dataset.features)),
        fig.fleet_drift.as_ref().and_then(|d| d.class_js_distance),
        fig.cloud_class_js_distance,
        fig.fleet_rates.agreement,
        r.throughput.events_per_s
    );

    // Outputs: run manifest, report JSON, self-contained HTML, one rescored file per input.
    let run_dir = &out.run_dir;
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Drift detected"));
    assert!(!html.contains("<script") && !html.contains("http://") && !html.contains("https://"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["verdict"]["drift_detected"], true);
    let mut rescored_rows = 0;
    // Per device (events, agree, fallback, fallback_disagree), counted row by row from the
    // rescored files: the engine's GROUP BY must give the same.
    let mut by_device: BTreeMap<String, (u64, u64, u64, u64)> = BTreeMap::new();
    for file in &planned_files {
        let rel = file.path.strip_prefix("events/").unwrap();
        let bytes = std::fs::read(run_dir.join("rescored").join(rel)).unwrap();
        for b in read_parquet(bytes.into()).unwrap() {
            rescored_rows += b.num_rows();
            let text = |name: &str| {
                b.column_by_name(name)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .clone()
            };
            let (device, source) = (text("device"), text("edge_source"));
            let agree = b.column_by_name("agree").unwrap();
            let agree = agree.as_any().downcast_ref::<BooleanArray>().unwrap();
            for i in 0..b.num_rows() {
                let fallback = source.value(i) == "fallback";
                let c = by_device.entry(device.value(i).to_owned()).or_default();
                c.0 += 1;
                c.1 += u64::from(agree.value(i));
                c.2 += u64::from(fallback);
                c.3 += u64::from(fallback && !agree.value(i));
            }
        }
    }
    assert_eq!(rescored_rows, records.len());
    let engine_by_device: BTreeMap<String, (u64, u64, u64, u64)> = fig
        .devices
        .iter()
        .map(|d| {
            let c = &d.counts;
            let confusion: u64 = c.confusion.iter().flatten().sum();
            assert_eq!(confusion, c.events, "{}", d.device);
            (
                d.device.clone(),
                (c.events, c.agree, c.fallback, c.fallback_disagree),
            )
        })
        .collect();
    assert_eq!(engine_by_device, by_device);

    let rescored_bytes: BTreeMap<&str, Vec<u8>> = planned_files
        .iter()
        .map(|f| {
            let rel = f.path.strip_prefix("events/").unwrap();
            (
                rel,
                std::fs::read(run_dir.join("rescored").join(rel)).unwrap(),
            )
        })
        .collect();

    // Replaying the run manifest reads exactly the same files and gives the same figures.
    let replay = RescoreJob::replay(s.storage.clone(), &cfg, &run_dir.join("run.json"))
        .await
        .unwrap();
    assert_eq!(replay.manifest().snapshot.files, planned_files);
    let again = replay.run(CancellationToken::new()).await.unwrap();
    assert_eq!(again.report.figures, out.report.figures);
    assert_eq!(again.report.run.run_id, out.report.run.run_id);
    // ... and the same rescored Parquet, byte for byte (the replay overwrote the files, so
    // compare with the bytes read before it).
    for file in &planned_files {
        let rel = file.path.strip_prefix("events/").unwrap();
        let replayed = std::fs::read(again.run_dir.join("rescored").join(rel)).unwrap();
        assert_eq!(replayed, rescored_bytes[rel], "{rel}");
    }
    s.stop().await;
}

#[tokio::test]
async fn a_batch_stored_after_planning_is_not_read_by_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::local(dir.path().join("store")).unwrap();
    let f = fleet(3, 0, 300);
    let records = f.records();
    let (first, late) = records.split_at(records.len() / 2);
    store_direct(&storage, first).await;
    let cfg = rescore_config(&dir.path().join("runs"), &f, 32);
    let range = (T0_US, T0_US + f.duration_us() + 1_000_000);
    let job = RescoreJob::plan(storage.clone(), &cfg, range.0, range.1)
        .await
        .unwrap();
    let planned = job.manifest().snapshot.files.len();
    // The rest arrives in the same date and device partitions before the run starts.
    for (k, chunk) in late.chunks(400).enumerate() {
        let b = batch_of(chunk, 1_000_000 + 400 * k as u64);
        let decoded = decode_batch(&b.compressed, Some(&b.id)).unwrap();
        storage.store_batch(Arc::new(decoded)).await.unwrap();
    }
    let out = job.run(CancellationToken::new()).await.unwrap();
    assert_eq!(out.report.figures.fleet.events, first.len() as u64);
    assert_eq!(out.report.throughput.files, planned);
    // A new plan over the same range sees everything.
    let all = RescoreJob::plan(storage, &cfg, range.0, range.1)
        .await
        .unwrap();
    assert!(all.manifest().snapshot.files.len() > planned);
    let out = all.run(CancellationToken::new()).await.unwrap();
    assert_eq!(out.report.figures.fleet.events, records.len() as u64);
}

#[tokio::test]
async fn a_snapshot_lists_only_committed_files_of_the_dates_in_range() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::local(dir.path().to_owned()).unwrap();
    let day = 86_400_000_000u64;
    let recs: Vec<JournalRecord> = (0..4)
        .map(|i| common::record("dev-0001", i, T0_US + i * day))
        .collect();
    store_direct(&storage, &recs).await;
    // An uncommitted file (no marker), as a crash mid-batch would leave.
    let orphan = format!(
        "events/date=2026-01-02/device=dev-0001/{}.parquet",
        "f".repeat(64)
    );
    storage
        .put_durable(&orphan, bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();
    let snap = reflex_cloud::Snapshot::resolve(&storage, T0_US + day, T0_US + 2 * day)
        .await
        .unwrap();
    let paths: Vec<&str> = snap.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths.len(), 1, "{paths:?}");
    assert!(paths[0].starts_with("events/date=2026-01-02/"));
    assert!(!paths.contains(&orphan.as_str()));
}

#[tokio::test]
async fn clean_devices_are_not_flagged_over_several_seeds_and_drifted_ones_are() {
    let seeds = [1u64, 2, 3, 4, 5];
    let (mut false_alarms, mut clean, mut detected, mut drifted) = (0, 0, 0, 0);
    for seed in seeds {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::local(dir.path().join("store")).unwrap();
        let f = fleet(seed, 2, 600);
        store_direct(&storage, &f.records()).await;
        let cfg = rescore_config(&dir.path().join("runs"), &f, 128);
        let out = RescoreJob::plan(storage, &cfg, T0_US, T0_US + f.duration_us() + 1_000_000)
            .await
            .unwrap()
            .run(CancellationToken::new())
            .await
            .unwrap();
        let flagged: BTreeSet<String> =
            out.report.verdict.flagged_devices.iter().cloned().collect();
        let expected = expected_drifted(&f);
        clean += f.devices as usize - expected.len();
        drifted += expected.len();
        false_alarms += flagged.difference(&expected).count();
        detected += flagged.intersection(&expected).count();
    }
    println!(
        "over {} seeds: false alarms {false_alarms} of {clean} clean devices ({:.1}%), detected {detected} of {drifted} drifted",
        seeds.len(),
        100.0 * false_alarms as f64 / clean as f64
    );
    // Measured: 1 false alarm of 30 clean devices (3.3%) over seeds 1-5, all 10 drifted
    // devices detected. The bound leaves room for one more without hiding a regression.
    assert!(false_alarms <= 2, "{false_alarms} false alarms of {clean}");
    assert_eq!(detected, drifted);
}
