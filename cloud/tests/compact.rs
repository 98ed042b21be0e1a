//! `reflex-cloud compact` against real stores (a local directory, and moto's S3 server):
//! batches uploaded over real HTTP are rescored, compacted and rescored again with the same
//! counts, verdicts and rescored rows from fewer files; compactions interrupted at each
//! step of the protocol (compacted file without its marker, marker without the deletes)
//! leave every row readable exactly once and are finished by the next run; a second round
//! merges a compacted file with new batches while a reader's older snapshot stays
//! readable; a partition with an unreadable file is refused and counted, the others
//! compacted; the binary's subcommand and its refusals.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{
    batch_of, post, record, rescore_config, write_cloud_config, Fleet, Server, T0_US, TOKEN,
};
use reflex_cloud::compact::{self, plan, CompactOptions, CompactReport};
use reflex_cloud::config::{IngestConfig, NodeToken, StorageConfig};
use reflex_cloud::layout::{self, Day};
use reflex_cloud::rescore::Report;
use reflex_cloud::table::{read_parquet, EventColumns};
use reflex_cloud::{hash_token, RescoreJob, Snapshot, Storage};
use reflex_records::JournalRecord;
use reflex_tests::s3::{spawn_s3_server, write_credentials};
use tokio_util::sync::CancellationToken;

const DAY_US: u64 = 86_400_000_000;

fn day() -> Day {
    Day::of_unix_us(T0_US)
}

/// Options of a run that deletes replaced files at once (no reader runs in these tests
/// unless one says so).
fn at_once() -> CompactOptions {
    CompactOptions {
        min_files: 2,
        target_bytes: 64 << 20,
        grace_s: 0,
    }
}

fn within_grace() -> CompactOptions {
    CompactOptions {
        grace_s: 3_600,
        ..at_once()
    }
}

/// Records `first..first + n`, over four devices, stamped on [`day`].
fn small_records(n: u64, first: u64) -> Vec<JournalRecord> {
    (first..first + n)
        .map(|i| record(&format!("dev-{:04}", i % 4), i, T0_US + i * 1_000))
        .collect()
}

/// Uploads `records` over HTTP in batches of `per_batch`; journal sequences from `first_seq`.
async fn upload(server: &Server, records: &[JournalRecord], per_batch: usize, first_seq: u64) {
    for (k, chunk) in records.chunks(per_batch).enumerate() {
        let b = batch_of(chunk, first_seq + (per_batch * k) as u64);
        let (status, body) = post(&server.url(), TOKEN, &b.id, b.compressed.clone()).await;
        assert_eq!((status, &body["status"]), (200, &"stored".into()), "{body}");
    }
}

/// Every row a reader reads from `snapshot`, as `(device, device seq)`, sorted, with repeats.
async fn rows_of(storage: &Storage, snapshot: &Snapshot) -> Vec<(String, u64)> {
    let mut rows = Vec::new();
    for f in &snapshot.files {
        for b in read_parquet(storage.get(&f.path).await.unwrap()).unwrap() {
            let c = EventColumns::of(&b).unwrap();
            rows.extend((0..c.len).map(|i| (c.device.value(i).to_owned(), c.seq.value(i))));
        }
    }
    rows.sort();
    rows
}

/// What a reader resolving now reads of [`day`].
async fn read_now(storage: &Storage) -> Vec<(String, u64)> {
    let snap = Snapshot::resolve(storage, T0_US, T0_US + DAY_US)
        .await
        .unwrap();
    rows_of(storage, &snap).await
}

fn expected(records: &[JournalRecord]) -> Vec<(String, u64)> {
    let mut rows: Vec<(String, u64)> = records.iter().map(|r| (r.device.clone(), r.seq)).collect();
    rows.sort();
    rows
}

/// Objects stored under [`day`]'s partitions, per device.
async fn files_per_partition(storage: &Storage) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for l in storage.list(&layout::day_prefix(day())).await.unwrap() {
        let device = layout::device_of_event_file(&l.path).unwrap().to_owned();
        *out.entry(device).or_default() += 1;
    }
    out
}

/// The partitions of [`day`] as a compaction run resolves them.
async fn partitions(storage: &Storage) -> Vec<plan::Partition> {
    let committed = compact::committed_batches(storage).await.unwrap();
    let markers = compact::read_markers(storage, day()).await.unwrap();
    let listed = storage.list(&layout::day_prefix(day())).await.unwrap();
    plan::resolve_day(&listed, &committed, markers.iter().map(|(m, _)| m))
}

async fn run(storage: &Storage, opts: &CompactOptions) -> CompactReport {
    let report = compact::compact_days(storage, &[day()], opts)
        .await
        .unwrap();
    assert_eq!(report.failed, Vec::new(), "{report:?}");
    assert_eq!(report.conflicting, 0);
    report
}

/// The rows of a run's rescored files, each as its columns' values, sorted.
fn rescored_rows(run_dir: &Path, snapshot: &Snapshot) -> Vec<String> {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let mut rows = Vec::new();
    for f in &snapshot.files {
        let rel = f.path.strip_prefix("events/").unwrap();
        let bytes = std::fs::read(run_dir.join("rescored").join(rel)).unwrap();
        for b in read_parquet(bytes.into()).unwrap() {
            let options = FormatOptions::default();
            let columns: Vec<ArrayFormatter> = b
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
                .collect();
            for i in 0..b.num_rows() {
                let cells: Vec<String> = columns.iter().map(|c| c.value(i).to_string()).collect();
                rows.push(cells.join("|"));
            }
        }
    }
    rows.sort();
    rows
}

/// Uploads a drifting fleet in small batches over HTTP, rescores (A), compacts, rescores
/// again (B), and checks that B is A read from fewer files.
async fn rescore_compact_rescore(server: &Server, runs: &Path) {
    let storage = &server.storage;
    let fleet = Fleet {
        seed: 5,
        devices: 4,
        drift_devices: 2,
        events_per_device: 600,
        period_us: 1_000_000,
        drift_start_s: 300.0,
        drift_ramp_s: 30.0,
    };
    let records = fleet.records();
    // 48 records a batch: 12 per device, 50 batches, 50 files per partition.
    upload(server, &records, 48, 1).await;
    let to = T0_US + fleet.duration_us() + 1_000_000;
    let rescore = |out: &str| {
        let cfg = rescore_config(&runs.join(out), &fleet, 64);
        let storage = storage.clone();
        async move {
            let job = RescoreJob::plan(storage, &cfg, T0_US, to).await.unwrap();
            let snapshot = job.manifest().snapshot.clone();
            let out = job.run(CancellationToken::new()).await.unwrap();
            let rows = rescored_rows(&out.run_dir, &snapshot);
            (snapshot, out.report, rows)
        }
    };
    let (snap_a, a, rows_a): (Snapshot, Report, Vec<String>) = rescore("a").await;
    let before = files_per_partition(storage).await;
    assert_eq!(snap_a.files.len(), 4 * 50);
    assert!(before.values().all(|&n| n == 50), "{before:?}");

    let report = run(storage, &at_once()).await;
    assert_eq!(report.merged.len(), 4, "{report:?}");
    assert!(report
        .merged
        .iter()
        .all(|m| m.inputs == 50 && m.rows == 600));
    assert_eq!(report.deleted, 4 * 50);
    let after = files_per_partition(storage).await;
    assert!(after.values().all(|&n| n == 1), "{after:?}");

    let (snap_b, b, rows_b) = rescore("b").await;
    assert_eq!(snap_b.files.len(), 4);
    assert!(snap_b
        .files
        .iter()
        .all(|f| layout::compaction_of_event_file(&f.path).is_some()));
    let (fa, fb) = (&a.figures, &b.figures);
    assert_eq!(fa.fleet.events, records.len() as u64);
    assert_eq!(fb.fleet, fa.fleet);
    assert_eq!(
        fb.models.keys().collect::<Vec<_>>(),
        fa.models.keys().collect::<Vec<_>>()
    );
    for (k, (counts, _)) in &fa.models {
        assert_eq!(&fb.models[k].0, counts, "model {k}");
    }
    let device_counts = |f: &reflex_cloud::rescore::Figures| {
        f.devices
            .iter()
            .map(|d| (d.node.clone(), d.device.clone(), d.counts.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(device_counts(fb), device_counts(fa));
    let window_events = |f: &reflex_cloud::rescore::Figures| {
        f.windows
            .iter()
            .map(|w| (w.start_us, w.events))
            .collect::<Vec<_>>()
    };
    assert_eq!(window_events(fb), window_events(fa));
    assert_eq!(
        (
            fb.edge_classes.clone(),
            fb.cloud_classes.clone(),
            fb.unscorable,
            fb.out_of_range
        ),
        (
            fa.edge_classes.clone(),
            fa.cloud_classes.clone(),
            fa.unscorable,
            fa.out_of_range
        )
    );
    assert_eq!(b.verdict, a.verdict);
    assert!(
        a.verdict.drift_detected,
        "the drifting device is seen: {:?}",
        a.verdict
    );
    assert_eq!(rows_a.len(), records.len());
    assert_eq!(rows_b, rows_a, "the same rescored rows");

    // Nothing left to merge: a run changes nothing.
    let again = run(storage, &at_once()).await;
    assert!(again.merged.is_empty() && again.deleted == 0, "{again:?}");
}

#[tokio::test]
async fn rescoring_after_compaction_on_disk_gives_the_counts_verdicts_and_rows_of_before() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("store"), 8 << 20).await;
    rescore_compact_rescore(&server, &dir.path().join("runs")).await;
    server.stop().await;
}

#[tokio::test]
async fn rescoring_after_compaction_on_s3_gives_the_counts_verdicts_and_rows_of_before() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = spawn_s3_server("reflex-compact");
    let creds = dir.path().join("s3-credentials.toml");
    write_credentials(&creds);
    let storage = Storage::open(&StorageConfig::S3 {
        bucket: s3.bucket.clone(),
        region: Some("us-east-1".into()),
        endpoint: Some(s3.endpoint()),
        allow_http: true,
        prefix: Some("fleet".into()),
        credentials_file: Some(creds),
    })
    .unwrap();
    let cfg = IngestConfig {
        listen: "127.0.0.1:0".into(),
        max_body_bytes: 8 << 20,
        grace_period_ms: 2_000,
        nodes: vec![NodeToken::new(common::NODE, hash_token(TOKEN))],
        clock_not_before_unix_s: common::CLOCK_NOT_BEFORE_S,
        ..IngestConfig::default()
    };
    let server = Server::start_storage(storage, &cfg).await;
    rescore_compact_rescore(&server, &dir.path().join("runs")).await;
    server.stop().await;
}

#[tokio::test]
async fn a_compacted_file_without_its_marker_is_ignored_and_the_next_run_finishes_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("store"), 8 << 20).await;
    let storage = &server.storage;
    let mut records = small_records(80, 0);
    upload(&server, &records, 8, 1).await;
    let parts = partitions(storage).await;
    // Killed after step 1 in two partitions: the compacted file is durable, no marker.
    let mut orphans = Vec::new();
    for device in ["dev-0000", "dev-0001"] {
        let p = parts.iter().find(|p| p.device == device).unwrap();
        let groups = plan::plan_partition(&p.units, 2, 64 << 20);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].len(), 10);
        let (marker, _) = compact::write_group(storage, day(), device, &groups[0])
            .await
            .unwrap();
        assert!(
            server.files().contains(&marker.file),
            "{:?}",
            server.files()
        );
        orphans.push(marker.file);
    }
    assert_eq!(read_now(storage).await, expected(&records), "each row once");
    assert!(partitions(storage)
        .await
        .iter()
        .all(|p| p.units.len() == 10));

    // One more batch for dev-0001 only: that partition's next merge is another one.
    let late: Vec<JournalRecord> = (0..3)
        .map(|i| record("dev-0001", 1_000 + i, T0_US + 500_000 + i))
        .collect();
    upload(&server, &late, 3, 1_000).await;
    records.extend(late);
    assert_eq!(read_now(storage).await, expected(&records));

    let report = run(storage, &at_once()).await;
    assert_eq!(report.merged.len(), 4, "{report:?}");
    // dev-0000's merge is the interrupted one, redone under the same name and committed.
    assert!(report
        .merged
        .iter()
        .any(|m| m.file == orphans[0] && !m.already_committed && m.inputs == 10));
    // dev-0001's merge has the late batch too: the interrupted file is an orphan, deleted.
    assert!(!report.merged.iter().any(|m| m.file == orphans[1]));
    assert_eq!(report.orphans_deleted, 1);
    assert!(!server.files().contains(&orphans[1]));
    assert_eq!(read_now(storage).await, expected(&records));
    let after = files_per_partition(storage).await;
    assert!(after.values().all(|&n| n == 1), "{after:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_committed_compaction_whose_files_were_not_deleted_is_read_once_and_cleaned_later() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("store"), 8 << 20).await;
    let storage = &server.storage;
    let records = small_records(80, 0);
    upload(&server, &records, 8, 1).await;
    // Killed after step 2 in dev-0002: marker durable, nothing deleted.
    let p = partitions(storage)
        .await
        .into_iter()
        .find(|p| p.device == "dev-0002")
        .unwrap();
    let group = plan::plan_partition(&p.units, 2, 64 << 20).remove(0);
    let (marker, _) = compact::write_group(storage, day(), "dev-0002", &group)
        .await
        .unwrap();
    assert!(compact::commit(storage, day(), &marker).await.unwrap());
    assert!(
        !compact::commit(storage, day(), &marker).await.unwrap(),
        "created once"
    );
    assert_eq!(files_per_partition(storage).await["dev-0002"], 11);
    assert_eq!(read_now(storage).await, expected(&records), "each row once");

    // A run within the grace merges the other partitions and deletes nothing.
    let report = run(storage, &within_grace()).await;
    assert_eq!(report.merged.len(), 3, "{report:?}");
    assert_eq!((report.deleted, report.kept_in_grace), (0, 40));
    assert_eq!(read_now(storage).await, expected(&records));
    // Past the grace (here: none), the replaced files go.
    let report = run(storage, &at_once()).await;
    assert!(report.merged.is_empty());
    assert_eq!(report.deleted, 40);
    assert!(files_per_partition(storage).await.values().all(|&n| n == 1));
    assert_eq!(read_now(storage).await, expected(&records));
    server.stop().await;
}

#[tokio::test]
async fn a_second_round_merges_compacted_files_with_new_batches_and_old_snapshots_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("store"), 8 << 20).await;
    let storage = &server.storage;
    let mut records = small_records(80, 0);
    upload(&server, &records, 8, 1).await;
    run(storage, &at_once()).await;
    let first_round = Snapshot::resolve(storage, T0_US, T0_US + DAY_US)
        .await
        .unwrap();
    assert_eq!(first_round.files.len(), 4);
    let first_rows = expected(&records);

    let more = small_records(40, 80);
    upload(&server, &more, 8, 81).await;
    records.extend(more);
    assert_eq!(read_now(storage).await, expected(&records));
    let report = run(storage, &within_grace()).await;
    assert_eq!(report.merged.len(), 4, "{report:?}");
    assert!(
        report.merged.iter().all(|m| m.inputs == 6),
        "1 compacted + 5 new"
    );
    assert_eq!(report.kept_in_grace, 4 * 6);
    let markers = compact::read_markers(storage, day()).await.unwrap();
    assert_eq!(markers.len(), 8, "two rounds of four partitions");
    assert!(markers.iter().any(|(m, _)| m.batches.len() == 15));
    // A reader that resolved before the second round still reads its files, each row once.
    assert_eq!(rows_of(storage, &first_round).await, first_rows);
    assert_eq!(read_now(storage).await, expected(&records));
    let snap = Snapshot::resolve(storage, T0_US, T0_US + DAY_US)
        .await
        .unwrap();
    assert_eq!(snap.files.len(), 4);

    let report = run(storage, &at_once()).await;
    assert_eq!(report.deleted, 4 * 6);
    assert!(files_per_partition(storage).await.values().all(|&n| n == 1));
    assert_eq!(read_now(storage).await, expected(&records));
    server.stop().await;
}

#[tokio::test]
async fn a_merge_planned_before_another_compaction_committed_is_not_committed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("store"), 8 << 20).await;
    let storage = &server.storage;
    let records = small_records(40, 0);
    upload(&server, &records, 8, 1).await;
    // A second run planned from the same view as the first, which commits meanwhile.
    let stale = partitions(storage)
        .await
        .into_iter()
        .find(|p| p.device == "dev-0001")
        .unwrap();
    let mut group = plan::plan_partition(&stale.units, 2, 64 << 20).remove(0);
    group.pop();
    run(storage, &within_grace()).await;
    let e = compact::compact_group(storage, day(), "dev-0001", &group)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, compact::CompactError::Raced { file, .. } if file.contains("device=dev-0001/")),
        "{e}"
    );
    let markers = compact::read_markers(storage, day()).await.unwrap();
    assert_eq!(markers.len(), 4, "only the first run's");
    assert_eq!(read_now(storage).await, expected(&records));
    server.stop().await;
}

#[tokio::test]
async fn a_partition_with_an_unreadable_file_is_refused_and_counted_and_the_others_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let server = Server::start(&root, 8 << 20).await;
    let storage = &server.storage;
    upload(&server, &small_records(40, 0), 8, 1).await;
    let victim = server
        .files()
        .into_iter()
        .find(|f| f.contains("device=dev-0003/"))
        .unwrap();
    std::fs::write(root.join(&victim), b"not parquet").unwrap();
    let report = compact::compact_days(storage, &[day()], &at_once())
        .await
        .unwrap();
    assert_eq!(report.merged.len(), 3, "{report:?}");
    assert_eq!(report.failed.len(), 1);
    assert!(report.failed[0].partition.ends_with("device=dev-0003"));
    assert!(
        report.failed[0].reason.contains(&victim),
        "{:?}",
        report.failed
    );
    assert_eq!(
        files_per_partition(storage).await["dev-0003"],
        5,
        "left as it was"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_compact_subcommand_merges_a_day_and_refuses_bad_options_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let server = Server::start(&store, 8 << 20).await;
    let records = small_records(40, 0);
    upload(&server, &records, 8, 1).await;
    let config = dir.path().join("cloud.toml");
    write_cloud_config(&config, &store, &dir.path().join("runs"), "");
    let bin = env!("CARGO_BIN_EXE_reflex-cloud");
    let out = Command::new(bin)
        .args(["compact", "--config"])
        .arg(&config)
        .args([
            "--day",
            &day().to_string(),
            "--min-files",
            "2",
            "--grace",
            "0",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout.lines().count(), 4, "one line per merge: {stdout}");
    assert!(
        stdout
            .lines()
            .all(|l| l.contains("/compacted-") && l.contains(" 10 rows")),
        "{stdout}"
    );
    assert!(stderr.contains("20 replaced files deleted"), "{stderr}");
    assert!(files_per_partition(&server.storage)
        .await
        .values()
        .all(|&n| n == 1));
    assert_eq!(read_now(&server.storage).await, expected(&records));

    let bad = Command::new(bin)
        .args(["compact", "--config"])
        .arg(&config)
        .args(["--day", "2026-02-30", "--min-files", "1", "--grace", "soon"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(64), "{stderr}");
    for named in ["2026-02-30", "--min-files 1", "\"soon\""] {
        assert!(stderr.contains(named), "{named} in {stderr}");
    }
    server.stop().await;
}
