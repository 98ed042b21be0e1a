//! reflex-cloud on a real S3-compatible server (moto's server mode, started by
//! `reflex_tests::s3` on a free 127.0.0.1 port): ingest and rescore give the local store's
//! report; the marker, created only if absent (`If-None-Match: *`), is the commit point
//! and the dedupe of concurrent writers; a half-written batch is invisible to readers and
//! rewritten by its retry; N stateless `reflex-cloud serve` processes on one bucket, boards
//! retrying across them through kills, store every batch exactly once and lose nothing
//! acknowledged.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{batch_of, post, record, rescore_config, Fleet, Server, CLOCK_NOT_BEFORE_S, T0_US};
use common::{batch_request, NODE, TOKEN};
use reflex_cloud::config::{IngestConfig, NodeToken, StorageConfig};
use reflex_cloud::storage::{encode_batch_files, Stored};
use reflex_cloud::table::{read_parquet, EventColumns};
use reflex_cloud::{hash_token, layout, RescoreJob, Snapshot, Storage};
use reflex_records::{decode_batch, EncodedBatch, JournalRecord};
use reflex_tests::s3::{spawn_s3_server, write_credentials, S3Server};
use reflex_tests::{free_port, ChildGuard};
use tokio_util::sync::CancellationToken;

/// A storage handle of its own (its own HTTP client) on `prefix` of the server's bucket,
/// configured as an operator would: endpoint, loopback plain HTTP, credentials file.
fn s3_storage(server: &S3Server, dir: &Path, prefix: &str) -> Storage {
    let creds = dir.join("s3-credentials.toml");
    write_credentials(&creds);
    let cfg = StorageConfig::S3 {
        bucket: server.bucket.clone(),
        region: Some("us-east-1".into()),
        endpoint: Some(server.endpoint()),
        allow_http: true,
        prefix: Some(prefix.into()),
        credentials_file: Some(creds),
    };
    assert_eq!(cfg.errors(), Vec::<String>::new());
    Storage::open(&cfg).expect("s3 storage")
}

fn ingest_config() -> IngestConfig {
    IngestConfig {
        listen: "127.0.0.1:0".into(),
        max_body_bytes: 8 << 20,
        grace_period_ms: 2_000,
        nodes: vec![NodeToken::new(NODE, hash_token(TOKEN))],
        clock_not_before_unix_s: CLOCK_NOT_BEFORE_S,
        ..IngestConfig::default()
    }
}

/// Every event row stored under the committed files of `[T0, T0 + 1 day)`, as
/// `(device, device seq)`, with repeats.
async fn stored_rows(storage: &Storage) -> Vec<(String, u64)> {
    let snap = Snapshot::resolve(storage, T0_US, T0_US + 86_400_000_000)
        .await
        .unwrap();
    let mut rows = Vec::new();
    for f in &snap.files {
        for b in read_parquet(storage.get(&f.path).await.unwrap()).unwrap() {
            let c = EventColumns::of(&b).unwrap();
            rows.extend((0..c.len).map(|i| (c.device.value(i).to_owned(), c.seq.value(i))));
        }
    }
    rows.sort();
    rows
}

fn small_records(n: u64, first: u64) -> Vec<JournalRecord> {
    (first..first + n)
        .map(|i| record(&format!("dev-{:04}", i % 4), i, T0_US + i * 1_000))
        .collect()
}

#[tokio::test]
async fn ingest_and_rescore_on_s3_give_the_report_of_the_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_s3_server("reflex-report");
    let s3 =
        Server::start_storage(s3_storage(&server, dir.path(), "fleet-a"), &ingest_config()).await;
    let local = Server::start(&dir.path().join("store"), 8 << 20).await;
    let f = Fleet {
        seed: 11,
        devices: 8,
        drift_devices: 2,
        events_per_device: 900,
        period_us: 1_000_000,
        drift_start_s: 360.0,
        drift_ramp_s: 30.0,
    };
    let records = f.records();
    for (k, chunk) in records.chunks(500).enumerate() {
        let b = batch_of(chunk, 1 + 500 * k as u64);
        for s in [&s3, &local] {
            let (status, body) = post(&s.url(), TOKEN, &b.id, b.compressed.clone()).await;
            assert_eq!((status, &body["status"]), (200, &"stored".into()), "{body}");
        }
    }
    let mut reports = Vec::new();
    for (s, runs) in [(&s3, "runs-s3"), (&local, "runs-local")] {
        let cfg = rescore_config(&dir.path().join(runs), &f, 64);
        let to = T0_US + f.duration_us() + 1_000_000;
        let job = RescoreJob::plan(s.storage.clone(), &cfg, T0_US, to)
            .await
            .unwrap();
        let files = job.manifest().snapshot.files.clone();
        let out = job.run(CancellationToken::new()).await.unwrap();
        reports.push((files, out.report));
    }
    let (s3_files, s3_report) = &reports[0];
    let (local_files, local_report) = &reports[1];
    assert!(!s3_files.is_empty());
    assert_eq!(s3_files, local_files, "same objects, same sizes");
    assert_eq!(s3_report.figures.fleet.events, records.len() as u64);
    assert_eq!(s3_report.figures, local_report.figures);
    assert_eq!(s3_report.verdict, local_report.verdict);
    assert!(s3_report.verdict.drift_detected);
    s3.stop().await;
    local.stop().await;
}

#[tokio::test]
async fn concurrent_writers_of_one_batch_store_it_once_on_s3_and_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_s3_server("reflex-race");
    let b = batch_of(&small_records(60, 0), 1);
    let decoded = Arc::new(decode_batch(&b.compressed, Some(&b.id)).unwrap());
    let s3: Vec<Storage> = (0..3)
        .map(|_| s3_storage(&server, dir.path(), "race"))
        .collect();
    let disk: Vec<Storage> = (0..3)
        .map(|_| Storage::local(dir.path().join("store")).unwrap())
        .collect();
    for writers in [s3, disk] {
        // Three writers that all find no marker: every one writes the data files, one
        // creates the marker.
        let outcomes = futures::future::join_all(writers.iter().map(|s| {
            let s = s.clone();
            let encoded = encode_batch_files(&decoded).unwrap();
            async move { s.write_encoded(encoded).await.unwrap() }
        }))
        .await;
        let new = outcomes.iter().filter(|o| **o == Stored::New).count();
        assert_eq!(new, 1, "{outcomes:?}");
        let again = writers[0].store_batch(decoded.clone()).await.unwrap();
        assert_eq!(again, Stored::Duplicate);
        assert_eq!(
            writers[1].list(layout::MARKERS_PREFIX).await.unwrap().len(),
            1
        );
        let rows = stored_rows(&writers[2]).await;
        let distinct: BTreeSet<_> = rows.iter().cloned().collect();
        assert_eq!((rows.len(), distinct.len()), (60, 60));
    }
}

#[tokio::test]
async fn a_half_written_batch_is_invisible_to_readers_and_its_retry_commits_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_s3_server("reflex-half");
    let storage = s3_storage(&server, dir.path(), "half");
    let b = batch_of(&small_records(40, 0), 1);
    let decoded = Arc::new(decode_batch(&b.compressed, Some(&b.id)).unwrap());
    // A crash after the data files and before the marker.
    let encoded = encode_batch_files(&decoded).unwrap();
    assert!(encoded.files.len() > 1);
    for (path, bytes) in &encoded.files {
        storage
            .put_durable(path, Bytes::from(bytes.clone()))
            .await
            .unwrap();
    }
    assert!(storage.list("events/").await.unwrap().len() > 1);
    assert_eq!(stored_rows(&storage).await, Vec::new());
    assert_eq!(storage.marker(&b.id).await.unwrap(), None);
    // The board retries the batch: written again, committed once.
    assert_eq!(
        storage.store_batch(decoded.clone()).await.unwrap(),
        Stored::New
    );
    assert_eq!(stored_rows(&storage).await.len(), 40);
    assert_eq!(
        storage.store_batch(decoded).await.unwrap(),
        Stored::Duplicate
    );
}

/// `reflex-cloud serve` processes on one bucket, each restartable on its own port.
struct Cluster {
    dir: std::path::PathBuf,
    ports: Vec<u16>,
    procs: Vec<Option<ChildGuard>>,
}

impl Cluster {
    fn start(dir: &Path, server: &S3Server, n: usize) -> Cluster {
        let creds = dir.join("s3-credentials.toml");
        write_credentials(&creds);
        let mut c = Cluster {
            dir: dir.to_owned(),
            ports: (0..n).map(|_| free_port()).collect(),
            procs: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            let text = format!(
                "[ingest]\nlisten = \"127.0.0.1:{}\"\nclock_not_before_unix_s = {CLOCK_NOT_BEFORE_S}\n\
                 grace_period_ms = 1000\n\
                 [[ingest.nodes]]\nnode = \"{NODE}\"\ntoken_sha256 = \"{}\"\n{}",
                c.ports[i],
                hash_token(TOKEN),
                server.storage_toml(&creds, "fleet")
            );
            std::fs::write(dir.join(format!("cloud-{i}.toml")), text).unwrap();
            c.spawn(i);
        }
        c
    }

    fn spawn(&mut self, i: usize) {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_reflex-cloud"))
            .args(["serve", "--config"])
            .arg(self.dir.join(format!("cloud-{i}.toml")))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawning reflex-cloud serve");
        let mut g = ChildGuard::new(&format!("reflex-cloud serve #{i}"), child);
        g.wait_listening(self.ports[i], Duration::from_secs(30));
        self.procs[i] = Some(g);
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self, i: usize) {
        let mut g = self.procs[i].take().expect("running");
        g.child.kill().unwrap();
        g.child.wait().unwrap();
    }

    fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }
}

/// What the board side saw.
#[derive(Debug, Default)]
struct Acks {
    /// Batch id → the answer that acknowledged it ("stored" or "duplicate").
    acked: BTreeMap<String, String>,
    /// Attempts that failed (connection refused or reset, 5xx) and were retried.
    retries: usize,
}

/// Uploads every batch as a board would: with the journal's contract headers, until a 200
/// acknowledges it; a failed attempt goes to the next process (round robin from the
/// batch's own first one), after a short backoff.
async fn upload_all(urls: Vec<String>, batches: Arc<Vec<EncodedBatch>>, boards: usize) -> Acks {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acks = Arc::new(std::sync::Mutex::new(Acks::default()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..boards)
        .map(|_| {
            let (urls, batches, next, acks, client) = (
                urls.clone(),
                batches.clone(),
                next.clone(),
                acks.clone(),
                client.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(b) = batches.get(k) else { break };
                    let mut attempt = 0usize;
                    let status = loop {
                        let url = &urls[(k + attempt) % urls.len()];
                        match send(&client, url, b).await {
                            Some(status) => break status,
                            None => {
                                acks.lock().unwrap().retries += 1;
                                attempt += 1;
                                assert!(attempt < 400, "batch {k} never acknowledged");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    };
                    acks.lock().unwrap().acked.insert(b.id.clone(), status);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(acks).unwrap().into_inner().unwrap()
}

/// One attempt: `Some(status)` on a 200, `None` on what a board retries.
async fn send(client: &reqwest::Client, url: &str, b: &EncodedBatch) -> Option<String> {
    let resp = batch_request(client, url, NODE, TOKEN, &b.id, b.compressed.clone())
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let body: serde_json::Value = serde_json::from_str(&resp.text().await.ok()?).ok()?;
    match status {
        200 => Some(body["status"].as_str().unwrap().to_owned()),
        500..=599 => None,
        other => panic!("batch refused with {other}: {body}"),
    }
}

/// `processes` ingest processes on one bucket; boards upload `batches` batches across
/// them while process 0 is killed once some are acknowledged and started again; then
/// every batch must be committed exactly once, every acknowledged record stored once.
async fn fleet_through_a_kill(processes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_s3_server("reflex-fleet");
    let mut cluster = Cluster::start(dir.path(), &server, processes);
    let per_batch = 25u64;
    let batches: Arc<Vec<EncodedBatch>> = Arc::new(
        (0..120u64)
            .map(|k| batch_of(&small_records(per_batch, k * per_batch), 1 + k * per_batch))
            .collect(),
    );
    let reader = s3_storage(&server, dir.path(), "fleet");
    let upload = tokio::spawn(upload_all(cluster.urls(), batches.clone(), 2 * processes));
    // Kill process 0 while uploads are in flight, once a third of the batches are
    // committed; with others running, let them store another third before it restarts.
    let committed_at_least = |n: usize| {
        let reader = reader.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(120), async {
                while reader.list(layout::MARKERS_PREFIX).await.unwrap().len() < n {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{n} batches committed within 120 s"));
        }
    };
    committed_at_least(batches.len() / 3).await;
    cluster.kill(0);
    if processes > 1 {
        committed_at_least(2 * batches.len() / 3).await;
    }
    cluster.spawn(0);
    let acks = tokio::time::timeout(Duration::from_secs(300), upload)
        .await
        .expect("every batch acknowledged within 300 s")
        .unwrap();
    assert_eq!(acks.acked.len(), batches.len());
    assert!(acks.retries > 0, "the kill interrupted no upload: {acks:?}");
    let stored = acks.acked.values().filter(|s| *s == "stored").count();
    assert!(stored <= batches.len());
    // Every batch committed exactly once, with its records, and nothing twice.
    let markers = reader.list(layout::MARKERS_PREFIX).await.unwrap();
    assert_eq!(markers.len(), batches.len());
    for b in batches.iter() {
        let m = reader.marker(&b.id).await.unwrap().expect("marker");
        assert_eq!(u64::from(m.records), per_batch);
    }
    let rows = stored_rows(&reader).await;
    let expected: Vec<(String, u64)> = {
        let mut v: Vec<_> = small_records(per_batch * batches.len() as u64, 0)
            .into_iter()
            .map(|r| (r.device, r.seq))
            .collect();
        v.sort();
        v
    };
    assert_eq!(rows.len(), expected.len(), "rows stored twice or missing");
    assert_eq!(rows, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ingest_killed_mid_upload_loses_nothing_acknowledged_and_stores_nothing_twice() {
    fleet_through_a_kill(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_ingest_processes_on_one_bucket_store_every_batch_exactly_once() {
    fleet_through_a_kill(3).await;
}
