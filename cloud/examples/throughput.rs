//! Throughput figures on this machine: ingest (records/s and MB/s over real HTTP on
//! loopback into Parquet files on local disk, fsynced) and rescoring (events/s through the
//! cloud model), with a batch-size sweep.
//!
//! ```sh
//! cargo run --release -p reflex-cloud --example throughput -- [events] [concurrency]
//! ```

mod common;

use std::sync::Arc;
use std::time::Instant;

use reflex_cloud::config::{IngestConfig, NodeToken, RescoreConfig};
use reflex_cloud::{hash_token, Ingest, RescoreJob, Storage};
use reflex_models::{Model, WINDOW_LEN};
use reflex_records::{encode_batch, EncodedBatch, JournalRecord};
use tokio_util::sync::CancellationToken;

use common::{models, simulated_records, T0_US};

const TOKEN: &str = "bench-token";
const BATCH_RECORDS: usize = 2000;

fn batches(records: &[JournalRecord]) -> Vec<EncodedBatch> {
    let mut seq = 0u64;
    records
        .chunks(BATCH_RECORDS)
        .map(|chunk| {
            let enc: Vec<Vec<u8>> = chunk.iter().map(JournalRecord::encode).collect();
            let first = seq + 1;
            seq += enc.len() as u64;
            encode_batch(
                "bench",
                enc.iter()
                    .enumerate()
                    .map(|(k, r)| (first + k as u64, r.as_slice())),
            )
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let concurrency: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(4);
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = Storage::local(dir.path().join("store")).expect("storage");

    let recs = simulated_records(n, 20, 60);
    let batches = Arc::new(batches(&recs));
    let compressed: usize = batches.iter().map(|b| b.compressed.len()).sum();
    let raw: usize = batches.iter().map(|b| b.uncompressed_len).sum();
    let cfg = IngestConfig {
        listen: "127.0.0.1:0".into(),
        max_body_bytes: 64 << 20,
        grace_period_ms: 1000,
        nodes: vec![NodeToken::new("bench", hash_token(TOKEN))],
        ..IngestConfig::default()
    };
    let ingest = Ingest::bind(&cfg, storage.clone()).await.expect("bind");
    let url = format!("http://{}/v1/batches", ingest.local_addr());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(ingest.run(shutdown.clone()));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, batches, next) =
            (client.clone(), url.clone(), batches.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(b) = batches.get(i) else { return };
                let r = client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .header("x-reflex-batch-id", &b.id)
                    .body(b.compressed.clone())
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status().as_u16(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ingest: {n} records in {} batches of {BATCH_RECORDS}, {concurrency} concurrent: {secs:.2} s, {:.0} records/s, {:.1} MB/s compressed ({:.1} MB/s uncompressed; ratio {:.1})",
        batches.len(),
        n as f64 / secs,
        compressed as f64 / secs / 1e6,
        raw as f64 / secs / 1e6,
        raw as f64 / compressed as f64
    );
    shutdown.cancel();
    server.await.unwrap().unwrap();

    // Model only: predict_batch on the same windows.
    let windows: Vec<f32> = recs
        .iter()
        .take(20_000)
        .flat_map(|r| r.model_input.clone())
        .collect();
    let temps: Vec<f32> = recs.iter().take(20_000).map(|r| r.features[12]).collect();
    let m_events = temps.len();
    for bs in [1usize, 8, 32, 64, 128, 256, 512] {
        let mut model =
            Model::load_with_batch(models().join("cloud.manifest.json"), bs).expect("cloud model");
        let t = Instant::now();
        for (w, tc) in windows.chunks(bs * WINDOW_LEN).zip(temps.chunks(bs)) {
            model.predict_batch(w, tc).expect("predict");
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "cloud model only, batch {bs:>3}: {:.0} events/s ({:.1} µs/event)",
            m_events as f64 / s,
            s * 1e6 / m_events as f64
        );
    }

    // The whole job (DataFusion scan, scoring UDF, GROUP BYs, sketches, Parquet write).
    for (bs, workers) in [
        (1usize, 1usize),
        (32, 1),
        (64, 1),
        (128, 1),
        (256, 1),
        (64, 2),
    ] {
        let rc = RescoreConfig {
            model_manifest: models().join("cloud.manifest.json"),
            out_dir: dir.path().join(format!("runs-{bs}-{workers}")),
            batch_size: bs,
            workers,
            window_s: 600,
            device_baseline_s: 600,
            ..RescoreConfig::default()
        };
        let to = T0_US + n as u64 * 50_000 + 1;
        let out = RescoreJob::plan(storage.clone(), &rc, T0_US, to)
            .await
            .expect("plan")
            .run(CancellationToken::new())
            .await
            .expect("rescore");
        let t = &out.report.throughput;
        println!(
            "rescore job, batch {bs:>3}, {workers} worker(s): {} events from {} files in {:.2} s: {:.0} events/s",
            t.events, t.files, t.seconds, t.events_per_s
        );
    }
}
