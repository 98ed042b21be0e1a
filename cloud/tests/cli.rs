//! The `reflex-cloud` binary: exit codes (64 on a bad config with every error listed, 3 on
//! drift), the example config, token hashing.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{rescore_config, Fleet, T0_US};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_reflex-cloud"))
}

#[test]
fn the_example_config_validates() {
    let out = bin()
        .args(["validate", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/cloud.example.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bad_config_exits_64_listing_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[ingest]\nlisten = \"nope\"\nmax_body_bytes = 0\n[storage]\nkind = \"local\"\npath = \"\"\n[rescore]\nbatch_size = 99999\n",
    )
    .unwrap();
    let out = bin()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "\"nope\"",
        "max_body_bytes",
        "storage.path",
        "99999",
        "4 error(s)",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
    std::fs::write(
        &path,
        "[storage]\nkind = \"local\"\npath = \"x\"\nsurprise = 1\n",
    )
    .unwrap();
    let out = bin()
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("surprise"));
}

#[test]
fn hash_token_prints_the_sha256_of_stdin() {
    let mut child = bin()
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"test\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
}

/// Stores `f`'s records through the storage layer, writes a config over them and runs
/// `reflex-cloud rescore` over the fleet's whole range. The directory holds the store,
/// the config and the runs.
async fn rescore_cli(f: &Fleet) -> (std::process::Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let storage = reflex_cloud::Storage::local(dir.path().join("store")).unwrap();
    let recs = f.records();
    for (k, chunk) in recs.chunks(500).enumerate() {
        let b = common::batch_of(chunk, 1 + 500 * k as u64);
        let d = reflex_records::decode_batch(&b.compressed, Some(&b.id)).unwrap();
        storage.store_batch(std::sync::Arc::new(d)).await.unwrap();
    }
    let rc = rescore_config(&dir.path().join("runs"), f, 64);
    let cfg = reflex_cloud::Config {
        ingest: Default::default(),
        storage: reflex_cloud::config::StorageConfig::Local {
            path: dir.path().join("store"),
        },
        rescore: rc,
        ballista: Default::default(),
    };
    let path = dir.path().join("cloud.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let to = (T0_US + f.duration_us()) / 1_000_000 + 1;
    let out = bin()
        .args(["rescore", "--config"])
        .arg(&path)
        .args([
            "--from",
            &(T0_US / 1_000_000).to_string(),
            "--to",
            &to.to_string(),
        ])
        .output()
        .unwrap();
    (out, dir)
}

fn small_fleet(drift_devices: u32) -> Fleet {
    Fleet {
        seed: 21,
        devices: 4,
        drift_devices,
        events_per_device: 600,
        period_us: 1_000_000,
        drift_start_s: 240.0,
        drift_ramp_s: 30.0,
    }
}

#[tokio::test]
async fn rescore_exits_3_on_drift_and_prints_the_run_directory() {
    let (out, _dir) = rescore_cli(&small_fleet(1)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("device dev-0000"), "{stderr}");
    let run_dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(std::path::Path::new(&run_dir).join("report.html").exists());
    assert!(std::path::Path::new(&run_dir).join("run.json").exists());
}

/// The same fleet with no drifting device: exit 0 (a timer or cron stays quiet), "no
/// drift" on stderr, and a report whose verdict says so.
#[tokio::test]
async fn rescore_exits_0_on_a_clean_snapshot_and_the_report_says_no_drift() {
    let (out, _dir) = rescore_cli(&small_fleet(0)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("no drift"), "{stderr}");
    assert!(!stderr.contains("DRIFT"), "{stderr}");
    let run_dir = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["verdict"]["drift_detected"], false, "{report:#}");
    assert_eq!(report["verdict"]["flagged_devices"], serde_json::json!([]));
    assert_eq!(report["figures"]["fleet"]["events"], 4 * 600);
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    assert!(html.contains("No drift detected") && !html.contains("Drift detected"));
}
