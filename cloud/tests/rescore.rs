//! Rescoring end to end on real files: a simulated fleet (reflex-sim's drift scenario on
//! some devices, clean on the others) decided by the real edge model, uploaded over HTTP
//! as journal batches, stored as Parquet, then rescored with the real cloud model through
//! tract, with drift checked by reflex-drift.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, BooleanArray, StringArray};

use common::{batch_of, post, rescore_config, Fleet, Server, T0_US, TOKEN};
use reflex_cloud::storage::Listed;
use reflex_cloud::table::read_parquet;
use reflex_cloud::{RescoreJob, Storage};
use reflex_records::{decode_batch, JournalRecord};
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
    assert_fleet_figures_and_verdict(r, &f, records.len() as u64);

    // Outputs: run manifest, report JSON, self-contained HTML, one rescored file per input.
    let run_dir = &out.run_dir;
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    assert_report_sections(&html, r);
    assert!(!html.contains("<script") && !html.contains("http://") && !html.contains("https://"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["verdict"]["drift_detected"], true);
    let (rescored_rows, by_device) = count_rescored_rows_by_device(run_dir, &planned_files);
    assert_eq!(rescored_rows, records.len());
    assert_eq!(engine_counts_by_device(&r.figures), by_device);
    let rescored_bytes = read_rescored_files(run_dir, &planned_files);

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
    for (rel, replayed) in read_rescored_files(&again.run_dir, &planned_files) {
        assert_eq!(replayed, rescored_bytes[&rel], "{rel}");
    }
    s.stop().await;
}

/// The fleet's figures of `events` uploaded events of fleet `f` (agreement, confusion,
/// fallback share, models) and the verdict: exactly the drifted devices flagged, every
/// device judged.
fn assert_fleet_figures_and_verdict(r: &reflex_cloud::Report, f: &Fleet, events: u64) {
    let fig = &r.figures;
    assert_eq!(fig.fleet.events, events);
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

    let flagged: BTreeSet<String> = r
        .verdict
        .flagged_devices
        .iter()
        .map(|d| d.device.clone())
        .collect();
    assert_eq!(flagged, expected_drifted(f), "{:#?}", r.verdict);
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
}

/// Per device (events, agree, fallback, fallback_disagree).
type DeviceCounts = BTreeMap<String, (u64, u64, u64, u64)>;

/// The rows of the run's rescored files of `files`, and the per-device counts taken row by
/// row from them (what the engine's `GROUP BY` must give).
fn count_rescored_rows_by_device(run_dir: &Path, files: &[Listed]) -> (usize, DeviceCounts) {
    let mut rescored_rows = 0;
    let mut by_device = DeviceCounts::new();
    for file in files {
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
    (rescored_rows, by_device)
}

/// The engine's per-device counts (each device's confusion matrix summing to its events).
fn engine_counts_by_device(fig: &reflex_cloud::rescore::Figures) -> DeviceCounts {
    fig.devices
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
        .collect()
}

/// The bytes of the run's rescored file of each of `files`, by path under `rescored/`.
fn read_rescored_files(run_dir: &Path, files: &[Listed]) -> BTreeMap<String, Vec<u8>> {
    files
        .iter()
        .map(|f| {
            let rel = f.path.strip_prefix("events/").unwrap();
            (
                rel.to_owned(),
                std::fs::read(run_dir.join("rescored").join(rel)).unwrap(),
            )
        })
        .collect()
}

/// The part of `html` from `<h2>{heading}</h2>` to the next `<h2>` (or the end).
fn section<'a>(html: &'a str, heading: &str) -> &'a str {
    let open = format!("<h2>{heading}</h2>");
    let start = html
        .find(&open)
        .unwrap_or_else(|| panic!("no section {heading:?} in the report page"));
    let rest = &html[start + open.len()..];
    &rest[..rest.find("<h2>").unwrap_or(rest.len())]
}

/// The `<svg>…</svg>` elements of `part`.
fn svgs(part: &str) -> Vec<&str> {
    part.split("<svg")
        .skip(1)
        .map(|s| &s[..s.find("</svg>").expect("closed svg")])
        .collect()
}

/// Every section the report page promises (cloud/README.md, "The report page") is there
/// with the figures of `r`: the verdict banner and its reasons; the confusion matrix
/// (classes × classes cells summing to the events) and the per-model table; the device
/// table with latency p50/p99 and deadline-miss bars, one per device; a reference vs
/// current CDF plot per feature (two curves each); the feature × window heatmap of drift
/// over time, with a ✕ exactly where a window's feature drifted; the fleet table, a row per
/// feature; and the boards' live view (empty here: these uploads carry no windows;
/// board_view.rs checks it filled).
fn assert_report_sections(html: &str, r: &reflex_cloud::Report) {
    let f = &r.figures;
    // The verdict.
    let banner = &html[html.find("<div class=\"banner").expect("verdict banner")..];
    let banner = &banner[..banner.find("</div>").unwrap()];
    assert!(banner.contains("Drift detected"), "{banner}");
    for reason in &r.verdict.reasons {
        assert!(
            banner.contains(reason.as_str()),
            "{reason:?} not in {banner}"
        );
    }

    // Edge vs cloud: the confusion matrix.
    let agreement = section(html, "Edge vs cloud");
    let matrix = &agreement[agreement
        .find("edge ↓ / cloud →")
        .expect("confusion matrix")..];
    let matrix = &matrix[..matrix.find("</table>").unwrap()];
    for class in &r.classes {
        assert!(
            matrix.contains(&format!("<th>{class}</th>")),
            "{class} column"
        );
        assert!(
            matrix.contains(&format!("<th class=\"l\">{class}</th>")),
            "{class} row"
        );
    }
    let cells: Vec<u64> = matrix
        .split("<td")
        .skip(1)
        .map(|c| {
            c[c.find('>').unwrap() + 1..c.find("</td>").unwrap()]
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(cells.len(), r.classes.len() * r.classes.len());
    assert_eq!(cells.iter().sum::<u64>(), f.fleet.events);
    for model in f.models.keys() {
        assert!(
            agreement.contains(&format!("<td class=\"l\">{model}</td>")),
            "{model}"
        );
    }

    // Devices: the table, latency and deadline-miss rate per device.
    let devices = section(html, "Devices");
    for d in &f.devices {
        assert!(devices.contains(&format!("<td class=\"l\">{}</td>", d.device)));
    }
    let bars = svgs(devices);
    for title in [
        "end-to-end latency p50 (µs)",
        "end-to-end latency p99 (µs)",
        "deadline-miss rate",
    ] {
        let svg = bars
            .iter()
            .find(|s| s.contains(&format!(">{title}</text>")))
            .unwrap_or_else(|| panic!("no {title:?} chart"));
        assert_eq!(svg.matches("<rect").count(), f.devices.len(), "{title}");
        for d in &f.devices {
            let label = format!(">{}/{}</text>", d.node, d.device);
            assert!(svg.contains(&label), "{title}");
        }
    }

    // Reference vs current distribution of each feature.
    let plots = svgs(section(html, "Reference vs current distributions"));
    assert_eq!(plots.len(), r.features.len());
    for (plot, name) in plots.iter().zip(&r.features) {
        assert!(plot.contains(&format!(">{name}</text>")), "{name}");
        assert_eq!(
            plot.matches("<polyline").count(),
            2,
            "{name}: reference and current"
        );
    }

    // Drift per feature over time: a cell per (feature, window), ✕ where it drifted.
    let heatmap = svgs(section(html, "Drift per feature over time"));
    assert_eq!(heatmap.len(), 1);
    let cells = heatmap[0].matches("<title>").count();
    assert_eq!(cells, r.features.len() * f.windows.len());
    assert!(f.windows.len() >= 10, "{} windows", f.windows.len());
    let drifted_cells: usize = f
        .windows
        .iter()
        .filter_map(|w| w.drift.as_ref())
        .map(|d| d.features.iter().filter(|x| x.drifted).count())
        .sum();
    assert!(drifted_cells > 0, "the drift shows over time");
    assert_eq!(heatmap[0].matches('✕').count(), drifted_cells);

    // The fleet table: a row per feature.
    let fleet = section(html, "Fleet vs reference");
    for name in &r.features {
        assert!(
            fleet.contains(&format!("<tr><td class=\"l\">{name}</td>")),
            "{name}"
        );
    }

    // The boards' own live view.
    let board = section(html, "The boards' own live view");
    assert!(board.contains("No board monitoring windows"), "{board}");
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

/// Seeds of the false-alarm sweep: 1..=5, or 1..=`REFLEX_RESCORE_SEEDS` (a longer sweep).
fn sweep_seeds() -> Vec<u64> {
    let last = std::env::var("REFLEX_RESCORE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    (1..=last).collect()
}

/// 8 devices (2 drifting) × 600 events, per seed; each device judged against its own
/// first 200 events (`device_baseline_s` = a third of the run) with the default rule: a
/// feature drifts when KS p < 0.05 and PSI ≥ 0.2 or W/σ ≥ 0.1, a device when ≥ 50% of its
/// 13 features do.
///
/// Asserts every drifted device flagged and at most max(2, 5 %) of the clean devices: a
/// device is one verdict over 13 correlated features, so its false-alarm rate should stay
/// under a single KS test's 5 %. The measured rates, the known false alarm and why the
/// effect-size gate does not stop it at 200 baseline events: cloud/README.md (Benchmarks).
#[tokio::test]
async fn clean_devices_are_not_flagged_over_several_seeds_and_drifted_ones_are() {
    let seeds = sweep_seeds();
    let (mut false_alarms, mut clean, mut detected, mut drifted) = (0, 0, 0, 0);
    // Clean devices by number of drifted features.
    let mut clean_by_features: BTreeMap<u64, usize> = BTreeMap::new();
    for &seed in &seeds {
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
        let flagged: BTreeSet<String> = out
            .report
            .verdict
            .flagged_devices
            .iter()
            .map(|d| d.device.clone())
            .collect();
        let expected = expected_drifted(&f);
        clean += f.devices as usize - expected.len();
        drifted += expected.len();
        false_alarms += flagged.difference(&expected).count();
        detected += flagged.intersection(&expected).count();
        for d in &out.report.figures.devices {
            let x = d.drift.as_ref().expect("every device judged");
            let is_drifting = expected.contains(&d.device);
            if !is_drifting {
                *clean_by_features
                    .entry(x.dataset.drifted_features as u64)
                    .or_default() += 1;
            }
            // Every false alarm and every miss, with its statistics.
            if d.flagged != is_drifting {
                let shown: Vec<String> = x
                    .features
                    .iter()
                    .filter(|f| f.drifted)
                    .map(|f| {
                        format!(
                            "{} (KS D {:.3} p {:.1e}, W/σ {:.3}, PSI {:.3})",
                            f.name, f.ks_statistic, f.ks_p_value, f.wasserstein_normed, f.psi
                        )
                    })
                    .collect();
                println!(
                    "seed {seed} {} ({}): {} of {} features drifted ({} baseline, {} later \
                     events): {}",
                    d.device,
                    if is_drifting {
                        "drifting, missed"
                    } else {
                        "clean, flagged"
                    },
                    x.dataset.drifted_features,
                    x.dataset.features,
                    x.baseline_events,
                    x.current_events,
                    shown.join(", ")
                );
            }
        }
    }
    println!(
        "over seeds 1-{}: false alarms {false_alarms} of {clean} clean devices ({:.1}%), \
         detected {detected} of {drifted} drifted; clean devices by drifted features: \
         {clean_by_features:?}",
        seeds.len(),
        100.0 * false_alarms as f64 / clean as f64
    );
    // A device is one verdict out of 13 correlated features; its false-alarm rate should
    // stay under a single KS test's 5% (at least 2 allowed: seeds 1-5 have 1, explained in
    // cloud/README.md, and 1 more must not hide a regression).
    assert!(
        false_alarms <= (clean / 20).max(2),
        "{false_alarms} false alarms of {clean}"
    );
    assert_eq!(detected, drifted);
}
