//! Rescore time of a day of many small files, before and after `compact`: a fleet that
//! uploads small batches (every few seconds) stored as the ingest stores them (on the
//! local disk, fsynced; or with `s3` on moto's S3 server on loopback, which must be on
//! the PATH as for the tests), rescored, compacted, rescored again.
//!
//! ```sh
//! cargo build --workspace --all-features --example compaction
//! $CARGO_TARGET_DIR/debug/examples/compaction [batches] [records per batch] [devices] [s3]
//! ```

mod common;

use std::time::Instant;

use reflex_cloud::compact::{compact_days, CompactOptions};
use reflex_cloud::config::{RescoreConfig, StorageConfig};
use reflex_cloud::layout::Day;
use reflex_cloud::{RescoreJob, Storage};
use tokio_util::sync::CancellationToken;

use common::{models, simulated_records, store_batches, T0_US};

async fn rescore(storage: &Storage, dir: &std::path::Path, name: &str, to: u64) -> (usize, f64) {
    let rc = RescoreConfig {
        model_manifest: models().join("cloud.manifest.json"),
        out_dir: dir.join(name),
        batch_size: 32,
        workers: 2,
        window_s: 600,
        device_baseline_s: 600,
        ..RescoreConfig::default()
    };
    let started = Instant::now();
    let job = RescoreJob::plan(storage.clone(), &rc, T0_US, to)
        .await
        .expect("plan");
    let files = job.manifest().snapshot.files.len();
    let out = job.run(CancellationToken::new()).await.expect("rescore");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "rescore {name}: {files} files, {} events, {secs:.2} s (plan and run), {:.0} events/s",
        out.report.figures.fleet.events,
        out.report.figures.fleet.events as f64 / secs
    );
    (files, secs)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let batches: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let per_batch: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(8);
    let devices: u32 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(4);
    let dir = tempfile::tempdir_in(std::env::var_os("TMPDIR").unwrap_or("/var/tmp".into()))
        .expect("tempdir");
    // Kept until the end: moto is killed when its handle drops.
    let mut _s3 = None;
    let storage = if args.get(4).map(String::as_str) == Some("s3") {
        let server = reflex_tests::s3::spawn_s3_server("reflex-bench");
        let creds = dir.path().join("s3-credentials.toml");
        reflex_tests::s3::write_credentials(&creds);
        let storage = Storage::open(&StorageConfig::S3 {
            bucket: server.bucket.clone(),
            region: Some("us-east-1".into()),
            endpoint: Some(server.endpoint()),
            allow_http: true,
            prefix: Some("bench".into()),
            credentials_file: Some(creds),
        })
        .expect("s3 storage");
        _s3 = Some(server);
        storage
    } else {
        Storage::local(dir.path().join("store")).expect("storage")
    };
    println!("store: {}", storage.description());

    let recs = simulated_records(batches * per_batch, devices, 8);
    let started = Instant::now();
    store_batches(&storage, &recs, per_batch).await;
    println!(
        "stored {batches} batches of {per_batch} records over {devices} devices: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let to = T0_US + recs.len() as u64 * 50_000 + 1;
    let (files_before, before) = rescore(&storage, dir.path(), "before", to).await;

    let started = Instant::now();
    let report = compact_days(
        &storage,
        &[Day::of_unix_us(T0_US)],
        &CompactOptions {
            grace_s: 0,
            min_files: 2,
            ..CompactOptions::default()
        },
    )
    .await
    .expect("compact");
    let input: u64 = report.merged.iter().map(|m| m.input_bytes).sum();
    let output: u64 = report.merged.iter().map(|m| m.bytes).sum();
    println!(
        "compact: {} merges of {} files, {input} -> {output} bytes, {} deleted, {:.2} s",
        report.merged.len(),
        report.merged.iter().map(|m| m.inputs).sum::<usize>(),
        report.deleted,
        started.elapsed().as_secs_f64()
    );
    let (files_after, after) = rescore(&storage, dir.path(), "after", to).await;
    println!(
        "rescore time {before:.2} s with {files_before} files -> {after:.2} s with {files_after} files ({:.1}x)",
        before / after
    );
}
