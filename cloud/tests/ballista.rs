//! Rescoring on an Apache Ballista cluster (cargo feature `ballista`): a real
//! `reflex-cloud scheduler` and two `reflex-cloud executor` processes on loopback (port 0,
//! their bound addresses read from stdout) over a snapshot in moto's S3 produce the embedded
//! engine's report and byte-identical rescored Parquet; an executor without the model, one
//! with another model, and a scheduler that is not there end the run with an error that
//! says so, in bounded time.

#![cfg(feature = "ballista")]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{batch_of, models_dir, post, rescore_config, Fleet, Server, T0_US, TOKEN};
use reflex_cloud::config::{IngestConfig, NodeToken, StorageConfig};
use reflex_cloud::rescore::Engine;
use reflex_cloud::{hash_token, RescoreJob, Storage};
use reflex_tests::s3::{spawn_s3_server, write_credentials, S3Server};
use reflex_tests::{expect_line, free_port, ChildGuard};
use tokio_util::sync::CancellationToken;

/// Bound of one cluster run, planning and result included.
const RUN_LIMIT: Duration = Duration::from_secs(180);

fn s3_storage(server: &S3Server, creds: &Path) -> Storage {
    let cfg = StorageConfig::S3 {
        bucket: server.bucket.clone(),
        region: Some("us-east-1".into()),
        endpoint: Some(server.endpoint()),
        allow_http: true,
        prefix: Some("fleet".into()),
        credentials_file: Some(creds.to_owned()),
    };
    Storage::open(&cfg).expect("s3 storage")
}

/// Starts `reflex-cloud <command>` with `config_text`; returns it and the address it
/// printed.
fn spawn(dir: &Path, command: &str, name: &str, config_text: &str) -> (ChildGuard, String) {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config_text).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_reflex-cloud"))
        .args([command, "--config"])
        .arg(&path)
        .env("REFLEX_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning reflex-cloud");
    let mut guard = ChildGuard::new(name, child);
    let lines = guard.stdout_lines();
    let addr = expect_line(&lines, Duration::from_secs(60), name, |l| {
        l.parse::<std::net::SocketAddr>().is_ok()
    });
    (guard, addr)
}

/// A scheduler and `executors` executors, each scoring with `model`.
struct Cluster {
    url: String,
    _procs: Vec<ChildGuard>,
}

fn start_cluster(dir: &Path, storage_toml: &str, executors: &[PathBuf]) -> Cluster {
    std::fs::create_dir_all(dir).unwrap();
    let (scheduler, addr) = spawn(
        dir,
        "scheduler",
        "scheduler",
        &format!("{storage_toml}[ballista.scheduler]\nlisten = \"127.0.0.1:0\"\n"),
    );
    let url = format!("http://{addr}");
    let mut procs = vec![scheduler];
    for (i, model) in executors.iter().enumerate() {
        let (e, _) = spawn(
            dir,
            "executor",
            &format!("executor-{i}"),
            &format!(
                "{storage_toml}[ballista.executor]\nlisten = \"127.0.0.1:0\"\nscheduler = \
                 \"{url}\"\nmodel_manifest = {:?}\nvcores = 1\n",
                model.display().to_string()
            ),
        );
        procs.push(e);
    }
    Cluster { url, _procs: procs }
}

fn fleet() -> Fleet {
    Fleet {
        seed: 23,
        devices: 6,
        drift_devices: 2,
        events_per_device: 700,
        period_us: 1_000_000,
        drift_start_s: 300.0,
        drift_ramp_s: 30.0,
    }
}

/// Uploads the fleet's records to an ingest on `storage`.
async fn upload(storage: Storage, f: &Fleet) -> u64 {
    let ingest = IngestConfig {
        listen: "127.0.0.1:0".into(),
        max_body_bytes: 8 << 20,
        nodes: vec![NodeToken::new(common::NODE, hash_token(TOKEN))],
        clock_not_before_unix_s: common::CLOCK_NOT_BEFORE_S,
        ..IngestConfig::default()
    };
    let server = Server::start_storage(storage, &ingest).await;
    let records = f.records();
    for (k, chunk) in records.chunks(400).enumerate() {
        let b = batch_of(chunk, 1 + 400 * k as u64);
        let (status, body) = post(&server.url(), TOKEN, &b.id, b.compressed.clone()).await;
        assert_eq!(status, 200, "{body}");
    }
    server.stop().await;
    records.len() as u64
}

/// Every file under `dir`, relative path → bytes.
fn files_under(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The report without its throughput (wall time differs between engines).
fn comparable(report: &reflex_cloud::Report) -> serde_json::Value {
    let mut v = serde_json::to_value(report).unwrap();
    v.as_object_mut().unwrap().remove("throughput");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_and_two_executors_over_s3_give_the_embedded_report_and_rescored_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_s3_server("reflex-ballista");
    let creds = dir.path().join("s3-credentials.toml");
    write_credentials(&creds);
    let f = fleet();
    let events = upload(s3_storage(&server, &creds), &f).await;
    let model = models_dir().join("cloud.manifest.json");
    let cluster = start_cluster(
        dir.path(),
        &server.storage_toml(&creds, "fleet"),
        &[model.clone(), model],
    );
    let to = T0_US + f.duration_us() + 1_000_000;
    let mut outcomes = Vec::new();
    for (engine, out) in [
        (Engine::Embedded, "runs-embedded"),
        (
            Engine::Ballista {
                scheduler: cluster.url.clone(),
            },
            "runs-ballista",
        ),
    ] {
        let cfg = rescore_config(&dir.path().join(out), &f, 64);
        let job = RescoreJob::plan(s3_storage(&server, &creds), &cfg, T0_US, to)
            .await
            .unwrap()
            .with_engine(engine);
        let run = tokio::time::timeout(RUN_LIMIT, job.run(CancellationToken::new()))
            .await
            .expect("the run ends within its bound")
            .expect("the run succeeds");
        outcomes.push(run);
    }
    let (embedded, ballista) = (&outcomes[0], &outcomes[1]);
    assert_eq!(embedded.report.figures.fleet.events, events);
    assert!(embedded.report.verdict.drift_detected, "the fleet drifts");
    assert_eq!(ballista.report.figures, embedded.report.figures);
    assert_eq!(ballista.report.verdict, embedded.report.verdict);
    assert_eq!(comparable(&ballista.report), comparable(&embedded.report));
    let rescored = |o: &reflex_cloud::RescoreOutcome| files_under(&o.run_dir.join("rescored"));
    let (a, b) = (rescored(embedded), rescored(ballista));
    assert_eq!(a.len(), embedded.report.run.snapshot.files.len());
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "one rescored file per snapshot file"
    );
    for (name, bytes) in &a {
        assert!(b[name] == *bytes, "rescored {name} differs between engines");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_other_model_on_the_executor_and_an_absent_scheduler_fail_the_run_saying_why()
{
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_s3_server("reflex-ballista-bad");
    let creds = dir.path().join("s3-credentials.toml");
    write_credentials(&creds);
    let f = Fleet {
        devices: 2,
        events_per_device: 300,
        ..fleet()
    };
    upload(s3_storage(&server, &creds), &f).await;
    let storage_toml = server.storage_toml(&creds, "fleet");
    let missing = dir.path().join("no-such-model/cloud.manifest.json");
    let missing_model = start_cluster(
        &dir.path().join("missing"),
        &storage_toml,
        std::slice::from_ref(&missing),
    );
    // A model file of other hashes (the edge model) is refused, not scored with.
    let other = models_dir().join("edge.manifest.json");
    let other_model = start_cluster(
        &dir.path().join("other"),
        &storage_toml,
        std::slice::from_ref(&other),
    );
    let to = T0_US + f.duration_us() + 1_000_000;
    let absent = format!("http://127.0.0.1:{}", free_port());
    for (scheduler, expect) in [
        (missing_model.url.clone(), missing.display().to_string()),
        // Ballista passes the task's error on in its Debug form: the mismatch with the
        // executor's path and both pairs of hashes.
        (other_model.url.clone(), other.display().to_string()),
        (absent.clone(), absent.clone()),
    ] {
        let cfg = rescore_config(&dir.path().join("runs"), &f, 64);
        let job = RescoreJob::plan(s3_storage(&server, &creds), &cfg, T0_US, to)
            .await
            .unwrap()
            .with_engine(Engine::Ballista { scheduler });
        let err = tokio::time::timeout(RUN_LIMIT, job.run(CancellationToken::new()))
            .await
            .expect("the run ends within its bound, not a hang")
            .expect_err("the run fails");
        let msg = err.to_string();
        assert!(msg.contains(&expect), "error names {expect}: {msg}");
    }
}
