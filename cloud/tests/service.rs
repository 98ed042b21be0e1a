//! `reflex-cloud` as a service: HTTPS served by the ingest itself (the journal's real
//! uploader through a throwaway CA made with openssl), what `validate` refuses about the
//! transport, `/metrics` (checked by promtool) and `/healthz`, `--version`, and the node
//! table reloaded without a restart (SIGHUP to the real binary; a file change in process).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{record, Server, NODE, T0_US, TOKEN};
use reflex_cloud::config::{IngestConfig, NodeToken};
use reflex_cloud::{hash_token, Ingest, IngestError, Storage};
use reflex_journal::store::{Journal, StoreConfig};
use reflex_journal::upload::{Backoff, BatchPolicy, Step, UploadConfig, Uploader};
use reflex_records::{encode_batch, EncodedBatch, JournalRecord};
use reflex_tests::prometheus::metric;
use reflex_tests::{free_port, make_test_certs, require_tool, wait_until, TestCerts};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_reflex-cloud"))
}

/// Throwaway certificates in `dir`, the key readable by its owner only.
fn certs(dir: &Path) -> TestCerts {
    use std::os::unix::fs::PermissionsExt;
    let certs = make_test_certs(dir);
    std::fs::set_permissions(&certs.key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    certs
}

/// `n` records of `node`, devices dev-0000..2, a millisecond apart from `t0_us`.
fn records_of(node: &str, n: u64, t0_us: u64) -> Vec<JournalRecord> {
    (0..n)
        .map(|i| {
            let mut r = record(&format!("dev-{:04}", i % 3), i, t0_us + i * 1_000);
            r.node = node.into();
            r
        })
        .collect()
}

/// One batch of `node`'s records (journal sequences from 1).
fn batch_for(node: &str, records: &[JournalRecord]) -> EncodedBatch {
    let encoded: Vec<Vec<u8>> = records.iter().map(JournalRecord::encode).collect();
    encode_batch(
        node,
        encoded
            .iter()
            .enumerate()
            .map(|(i, r)| (1 + i as u64, r.as_slice())),
    )
}

/// A config file serving on `port` with these `(node, token)` boards.
fn config_text(root: &Path, port: u16, nodes: &[(&str, &str)], extra_ingest: &str) -> String {
    let mut text = format!("[ingest]\nlisten = \"127.0.0.1:{port}\"\n{extra_ingest}\n");
    for (node, token) in nodes {
        text.push_str(&format!(
            "[[ingest.nodes]]\nnode = \"{node}\"\ntoken_sha256 = \"{}\"\n",
            hash_token(token)
        ));
    }
    text.push_str(&format!(
        "[storage]\nkind = \"local\"\npath = \"{}\"\n[rescore]\nout_dir = \"{}\"\n",
        root.join("store").display(),
        root.join("runs").display()
    ));
    text
}

#[tokio::test]
async fn a_board_uploads_over_https_and_its_batches_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let cfg = IngestConfig {
        listen: "127.0.0.1:0".into(),
        tls_cert_file: Some(certs.cert_file.clone()),
        tls_key_file: Some(certs.key_file.clone()),
        nodes: vec![NodeToken::new(NODE, hash_token(TOKEN))],
        ..IngestConfig::default()
    };
    let s = Server::start_config(&dir.path().join("store"), &cfg).await;
    let url = format!("https://127.0.0.1:{}", s.addr.port());

    let (journal, _) = Journal::open(StoreConfig::new(dir.path().join("journal"))).unwrap();
    let journal = Arc::new(journal);
    for r in records_of(NODE, 120, T0_US) {
        journal.append(&r.encode()).unwrap();
    }
    journal.sync().unwrap();
    let mut up = UploadConfig::new(url.clone(), TOKEN, NODE);
    up.ca_file = Some(certs.ca_file.clone());
    up.batching = BatchPolicy {
        max_records: 50,
        max_bytes: 1 << 20,
        max_age: Duration::ZERO,
    };
    up.backoff = Backoff {
        base: Duration::from_millis(5),
        max: Duration::from_millis(50),
    };
    let mut uploader = Uploader::new(journal, up).unwrap();
    let mut acked = Vec::new();
    loop {
        match uploader.step().await.expect("upload over https") {
            Step::Acked { id, records, .. } => acked.push((id, records)),
            Step::Idle => break,
            Step::Wait(d) => panic!("a drained journal with max_age 0 waits {d:?}"),
        }
    }
    assert_eq!(acked.iter().map(|a| a.1).collect::<Vec<_>>(), [50, 50, 20]);
    for (id, records) in &acked {
        let marker = s.storage.marker(id).await.unwrap().expect("marker");
        assert_eq!(marker.records, *records);
    }
    assert_eq!(s.stats.records_stored.load(Ordering::Relaxed), 120);

    // Plain HTTP to the TLS port is not served: the handshake fails and is counted.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", s.addr.port()))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(plain.is_err(), "plain http answered: {plain:?}");
    wait_until(
        "the failed handshake to be counted",
        Duration::from_secs(10),
        || s.stats.tls_handshake_failures.load(Ordering::Relaxed) >= 1,
    );
    s.stop().await;
}

#[test]
fn plain_http_beyond_loopback_fails_validate_unless_allow_plain_http_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cloud.toml");
    let text = config_text(dir.path(), 8480, &[(NODE, TOKEN)], "")
        .replace("127.0.0.1:8480", "0.0.0.0:8480");
    std::fs::write(&path, &text).unwrap();
    let out = bin()
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("ingest.listen: \"0.0.0.0:8480\" is not loopback and serves plain HTTP"),
        "{err}"
    );
    assert!(err.contains("allow_plain_http = true"), "{err}");

    let allowed = text.replace("[ingest]\n", "[ingest]\nallow_plain_http = true\n");
    std::fs::write(&path, allowed).unwrap();
    let out = bin()
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A certificate without its key is an error too, whatever the address.
    let half = text.replace(
        "[ingest]\n",
        &format!("[ingest]\ntls_cert_file = \"{}\"\n", path.display()),
    );
    std::fs::write(&path, half).unwrap();
    let out = bin()
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is set without tls_key_file"));
}

#[tokio::test]
async fn a_tls_key_others_may_read_is_refused_by_validate_and_by_serve() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    std::fs::set_permissions(&certs.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = dir.path().join("cloud.toml");
    let tls = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        certs.cert_file.display(),
        certs.key_file.display()
    );
    std::fs::write(
        &path,
        config_text(dir.path(), 8480, &[(NODE, TOKEN)], &tls).replace("127.0.0.1", "0.0.0.0"),
    )
    .unwrap();
    let out = bin()
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("ingest.tls_key_file"), "{err}");
    assert!(err.contains(&certs.key_file.display().to_string()), "{err}");
    assert!(err.contains("mode 0644"), "{err}");
    assert!(!err.contains("not loopback"), "TLS is configured: {err}");

    let cfg = IngestConfig {
        listen: "127.0.0.1:0".into(),
        tls_cert_file: Some(certs.cert_file.clone()),
        tls_key_file: Some(certs.key_file.clone()),
        nodes: vec![NodeToken::new(NODE, hash_token(TOKEN))],
        ..IngestConfig::default()
    };
    let storage = Storage::local(dir.path().join("store")).unwrap();
    match Ingest::bind(&cfg, storage).await {
        Err(IngestError::Config(errors)) => {
            assert!(errors.join("\n").contains("mode 0644"), "{errors:?}")
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("served with a world-readable key"),
    }
    // With the key made private, the same files validate.
    std::fs::set_permissions(&certs.key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = bin()
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn metrics_count_answers_by_status_and_stored_records_and_promtool_accepts_them() {
    let promtool = require_tool("promtool", "prometheus");
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 1 << 20).await;
    let b = batch_for(NODE, &records_of(NODE, 7, T0_US));
    let (ok, _) = common::post(&s.url(), TOKEN, &b.id, b.compressed.clone()).await;
    let (dup, _) = common::post(&s.url(), TOKEN, &b.id, b.compressed.clone()).await;
    let (bad, _) = common::post(&s.url(), "not-a-token", &b.id, b.compressed.clone()).await;
    assert_eq!((ok, dup, bad), (200, 200, 401));

    let health = reqwest::get(format!("{}/healthz", s.url())).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let health: serde_json::Value = serde_json::from_str(&health.text().await.unwrap()).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["nodes"], 1);

    let resp = reqwest::get(format!("{}/metrics", s.url())).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    let m = |series: &str| metric(&text, series);
    assert_eq!(m("reflex_cloud_http_responses_total{status=\"200\"}"), 3.0);
    assert_eq!(m("reflex_cloud_http_responses_total{status=\"401\"}"), 1.0);
    assert_eq!(m("reflex_cloud_auth_failures_total"), 1.0);
    assert_eq!(m("reflex_cloud_ingest_requests_total"), 3.0);
    assert_eq!(m("reflex_cloud_batches_total{result=\"stored\"}"), 1.0);
    assert_eq!(m("reflex_cloud_batches_total{result=\"duplicate\"}"), 1.0);
    assert_eq!(m("reflex_cloud_records_stored_total"), 7.0);
    assert_eq!(
        m("reflex_cloud_bytes_stored_total"),
        b.compressed.len() as f64
    );
    assert_eq!(m("reflex_cloud_refused_total"), 1.0);
    assert_eq!(m("reflex_cloud_nodes"), 1.0);
    assert!(text.contains(&format!(
        "reflex_cloud_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));

    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop().await;
}

#[test]
fn version_prints_the_crate_version() {
    let out = bin().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("reflex-cloud {}", env!("CARGO_PKG_VERSION"))
    );
}

/// The status of one upload of a fresh batch of `node`'s records with `token`.
fn upload_status(port: u16, node: &str, token: &str, t0_us: u64) -> u16 {
    let b = batch_for(node, &records_of(node, 3, t0_us));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(common::post_as(
        &format!("http://127.0.0.1:{port}"),
        node,
        token,
        &b.id,
        b.compressed,
    ))
    .0
}

fn metrics_text(port: u16) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
}

fn sighup(pid: u32) {
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn after_sighup_a_new_node_uploads_and_a_removed_one_gets_401_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path: PathBuf = dir.path().join("cloud.toml");
    // SIGHUP only: no polling of the file.
    let poll = "token_reload_poll_ms = 0";
    std::fs::write(
        &path,
        config_text(dir.path(), port, &[("board-a", "token-a")], poll),
    )
    .unwrap();
    let child = bin()
        .args(["serve", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut cloud = reflex_tests::ChildGuard::new("reflex-cloud", child);
    cloud.wait_listening(port, Duration::from_secs(20));

    assert_eq!(upload_status(port, "board-a", "token-a", T0_US), 200);
    assert_eq!(upload_status(port, "board-b", "token-b", T0_US), 401);

    // board-b added, board-a removed; the file is replaced, then SIGHUP.
    std::fs::write(
        &path,
        config_text(dir.path(), port, &[("board-b", "token-b")], poll),
    )
    .unwrap();
    sighup(pid);
    wait_until(
        "board-b's token to work after SIGHUP",
        Duration::from_secs(20),
        || upload_status(port, "board-b", "token-b", T0_US + 10_000_000) != 401,
    );
    assert_eq!(
        upload_status(port, "board-b", "token-b", T0_US + 20_000_000),
        200
    );
    assert_eq!(
        upload_status(port, "board-a", "token-a", T0_US + 30_000_000),
        401
    );

    // An invalid file keeps the running table, and the refusal is counted.
    std::fs::write(
        &path,
        config_text(dir.path(), port, &[("board-c", "token-c")], poll)
            .replace("token_sha256 = \"", "token_sha256 = \"XYZ"),
    )
    .unwrap();
    sighup(pid);
    wait_until(
        "the refused reload to be counted",
        Duration::from_secs(20),
        || {
            metric(
                &metrics_text(port),
                "reflex_cloud_token_reloads_total{result=\"error\"}",
            ) == 1.0
        },
    );
    let text = metrics_text(port);
    assert_eq!(
        metric(&text, "reflex_cloud_token_reloads_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(metric(&text, "reflex_cloud_nodes"), 1.0);
    assert_eq!(
        upload_status(port, "board-b", "token-b", T0_US + 40_000_000),
        200
    );
    assert_eq!(upload_status(port, "board-c", "token-c", T0_US), 401);
    cloud.terminate();
    let status = cloud.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}: {}", cloud.stderr_tail());
}

#[tokio::test]
async fn a_changed_config_file_reloads_the_node_table_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cloud.toml");
    let poll = "token_reload_poll_ms = 20";
    std::fs::write(&path, config_text(dir.path(), 0, &[(NODE, TOKEN)], poll)).unwrap();
    let cfg = reflex_cloud::config::load(&path).unwrap();
    let storage = Storage::local(dir.path().join("store")).unwrap();
    let ingest = Ingest::bind(&cfg.ingest, storage).await.unwrap();
    let tokens = ingest.tokens();
    let url = format!("http://{}", ingest.local_addr());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(ingest.run(shutdown.clone()));
    let watcher = tokio::spawn(reflex_cloud::tokens::watch(
        tokens.clone(),
        path.clone(),
        cfg,
        shutdown.clone(),
    ));

    let b = batch_for("board-2", &records_of("board-2", 4, T0_US));
    let (before, _) =
        common::post_as(&url, "board-2", "token-2", &b.id, b.compressed.clone()).await;
    assert_eq!(before, 401);
    std::fs::write(
        &path,
        config_text(
            dir.path(),
            0,
            &[(NODE, TOKEN), ("board-2", "token-2")],
            poll,
        ),
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokens.reloads.load(Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the changed file was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (after, body) = common::post_as(&url, "board-2", "token-2", &b.id, b.compressed).await;
    assert_eq!(after, 200, "{body}");
    assert_eq!(tokens.nodes(), 2);
    shutdown.cancel();
    server.await.unwrap().unwrap();
    watcher.await.unwrap();
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused_by_validate() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let (ours, theirs) = (certs(&a), certs(&b));
    let path = dir.path().join("cloud.toml");
    let tls = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        ours.cert_file.display(),
        theirs.key_file.display()
    );
    std::fs::write(&path, config_text(dir.path(), 8480, &[(NODE, TOKEN)], &tls)).unwrap();
    let out = bin()
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("ingest.tls_cert_file/tls_key_file"), "{err}");
    assert!(err.contains(&ours.cert_file.display().to_string()), "{err}");
}
