//! Horizontal ingest figures on this machine: records/s stored by 1, 2 and 3
//! `reflex-cloud serve` processes sharing one store — a local directory (every object
//! fsynced) and a real S3-compatible server (moto, `reflex_tests::s3`) — with boards
//! posting round robin across the processes, two uploads in flight per process. Every
//! configuration runs in the same invocation, so their ratios are comparable on a loaded
//! machine even when the absolute figures are not.
//!
//! ```sh
//! cargo build -p reflex-cloud --bin reflex-cloud --example horizontal
//! $CARGO_TARGET_DIR/debug/examples/horizontal [records] [batch records]
//! ```
//!
//! Needs `moto_server` on PATH (scripts/test installs it) and the `reflex-cloud` binary of
//! the same profile (found next to `examples/`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reflex_cloud::hash_token;
use reflex_records::{
    encode_batch, DeadlineOutcome, DecisionSource, EncodedBatch, JournalRecord, ModelId,
    StageTimings,
};
use reflex_tests::s3::{spawn_s3_server, write_credentials};
use reflex_tests::{free_port, ChildGuard};

const T0_US: u64 = 1_767_225_600_000_000;
const TOKEN: &str = "bench-token";
const NODE: &str = "bench";

/// Records of 20 devices, 50 ms apart, with windows and features that vary like real ones
/// (what Parquet and zstd see matters for the figures).
fn records(n: usize) -> Vec<JournalRecord> {
    (0..n)
        .map(|k| {
            let dev = k % 20;
            let phase = k as f32 * 0.37;
            let model_input: Vec<f32> = (0..192)
                .map(|i| (i as f32 * 0.21 + phase).sin() * 0.8 + (i * 7 % 13) as f32 * 0.01)
                .collect();
            let features: Vec<f32> = (0..13).map(|i| (phase * (i + 1) as f32).cos()).collect();
            let class = (k % 4) as u8;
            JournalRecord {
                node: NODE.into(),
                device: format!("dev-{dev:04}"),
                seq: (k / 20) as u64,
                arrival_unix_us: T0_US + k as u64 * 50_000,
                payload: (0..300).map(|i| ((i * 31 + k) % 251) as u8).collect(),
                model_input,
                features,
                logits: vec![0.1, 0.2, 0.3, 0.4],
                class,
                command: vec![class; 60],
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

fn batches(records: &[JournalRecord], per_batch: usize) -> Vec<EncodedBatch> {
    records
        .chunks(per_batch)
        .enumerate()
        .map(|(b, chunk)| {
            let enc: Vec<Vec<u8>> = chunk.iter().map(JournalRecord::encode).collect();
            let first = 1 + (b * per_batch) as u64;
            encode_batch(
                NODE,
                enc.iter()
                    .enumerate()
                    .map(|(k, r)| (first + k as u64, r.as_slice())),
            )
        })
        .collect()
}

/// The `reflex-cloud` binary of this example's profile: `target/<profile>/reflex-cloud`.
fn cloud_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("reflex-cloud");
    assert!(
        bin.is_file(),
        "{} missing: cargo build -p reflex-cloud --bin reflex-cloud (same profile)",
        bin.display()
    );
    bin
}

/// Starts `n` ingest processes on `storage_toml`, returns them and their URLs.
fn spawn_ingests(dir: &Path, n: usize, storage_toml: &str) -> (Vec<ChildGuard>, Vec<String>) {
    let mut procs = Vec::new();
    let mut urls = Vec::new();
    for i in 0..n {
        let port = free_port();
        let cfg = dir.join(format!("cloud-{i}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[ingest]\nlisten = \"127.0.0.1:{port}\"\nmax_body_bytes = 67108864\n\
                 clock_not_before_unix_s = 1735689600\n\
                 [[ingest.nodes]]\nnode = \"{NODE}\"\ntoken_sha256 = \"{}\"\n{storage_toml}",
                hash_token(TOKEN)
            ),
        )
        .unwrap();
        let child = std::process::Command::new(cloud_bin())
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("reflex-cloud serve");
        let mut g = ChildGuard::new(&format!("ingest {i}"), child);
        g.wait_listening(port, Duration::from_secs(30));
        procs.push(g);
        urls.push(format!("http://127.0.0.1:{port}/v1/batches"));
    }
    (procs, urls)
}

/// Posts every batch, batch k to process k mod n, `2 n` uploads in flight; seconds taken.
async fn post_all(urls: &[String], batches: Arc<Vec<EncodedBatch>>) -> f64 {
    let client = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..2 * urls.len())
        .map(|_| {
            let (client, urls, batches, next) =
                (client.clone(), urls.to_vec(), batches.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(b) = batches.get(k) else { return };
                    let r = client
                        .post(&urls[k % urls.len()])
                        .bearer_auth(TOKEN)
                        .header("x-reflex-batch-id", &b.id)
                        .header("x-reflex-node", NODE)
                        .body(b.compressed.clone())
                        .send()
                        .await
                        .expect("post");
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    assert_eq!(status, 200, "{body}");
                    assert!(body.contains("\"stored\""), "{body}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(60_000);
    let per_batch: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let batches = Arc::new(batches(&records(n), per_batch));
    let compressed: usize = batches.iter().map(|b| b.compressed.len()).sum();
    println!(
        "{n} records in {} batches of {per_batch} ({:.1} MB compressed)",
        batches.len(),
        compressed as f64 / 1e6
    );
    for store in ["local", "s3"] {
        for processes in 1..=3 {
            let dir = tempfile::tempdir().unwrap();
            // A fresh store per run: every batch is new (stored, not duplicate).
            let s3 = (store == "s3").then(|| spawn_s3_server("bench"));
            let storage_toml = match &s3 {
                Some(server) => {
                    let creds = dir.path().join("s3.toml");
                    write_credentials(&creds);
                    server.storage_toml(&creds, "bench")
                }
                None => format!(
                    "[storage]\nkind = \"local\"\npath = \"{}\"\n",
                    dir.path().join("store").display()
                ),
            };
            let (procs, urls) = spawn_ingests(dir.path(), processes, &storage_toml);
            let secs = post_all(&urls, batches.clone()).await;
            println!(
                "{store:>5}, {processes} ingest process(es), {} uploads in flight: \
                 {secs:.2} s, {:.0} records/s",
                2 * processes,
                n as f64 / secs
            );
            drop(procs);
        }
    }
}
