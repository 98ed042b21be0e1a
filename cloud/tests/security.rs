//! What the ingest lets in, over real HTTP on 127.0.0.1 (the crate's own server, raw TCP
//! where a well-behaved client cannot misbehave enough): records bound to the token's node
//! and to its device allow-list, refusals the board keeps its batch through, timeouts that
//! cut off slow clients, a stranger's body never read, token files that must be private,
//! and two tokens per node for rotation.
//!
//! Waits are bounded by [`BOUND`] so that a server that never answers fails the test
//! instead of hanging it; nothing is timed for speed.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{batch_of, post, post_as, record, Server, NODE, T0_US, TOKEN};
use reflex_cloud::config::{IngestConfig, NodeToken};
use reflex_cloud::{hash_token, Ingest, IngestError, Storage};
use reflex_journal::store::{Journal, StoreConfig};
use reflex_journal::upload::{BatchPolicy, Step, UploadConfig, UploadError, Uploader};
use reflex_records::JournalRecord;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest any test waits for the server; far above every configured timeout.
const BOUND: Duration = Duration::from_secs(20);

fn records(n: u64) -> Vec<JournalRecord> {
    (0..n)
        .map(|i| record(&format!("dev-{i}"), i, T0_US + i * 1_000))
        .collect()
}

/// An ingest config on port 0 for `nodes`, the rest defaults.
fn config(nodes: Vec<NodeToken>) -> IngestConfig {
    IngestConfig {
        listen: "127.0.0.1:0".into(),
        max_body_bytes: 1 << 20,
        grace_period_ms: 2_000,
        nodes,
        clock_not_before_unix_s: common::CLOCK_NOT_BEFORE_S,
        ..IngestConfig::default()
    }
}

/// Everything the server sends until it closes the connection (a reset ends it too), at
/// most [`BOUND`] of waiting.
async fn read_until_closed(stream: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(BOUND, read)
        .await
        .expect("the server neither answered nor closed the connection");
    String::from_utf8_lossy(&out).into_owned()
}

/// A request head for `POST /v1/batches`, without the blank line ending it.
fn head(token: &str, content_length: usize) -> String {
    format!(
        "POST /v1/batches HTTP/1.1\r\nHost: ingest\r\nAuthorization: Bearer {token}\r\n\
         X-Reflex-Batch-Id: {}\r\nX-Reflex-Node: {NODE}\r\nContent-Length: {content_length}\r\n",
        "ab".repeat(32)
    )
}

#[tokio::test]
async fn a_record_naming_another_node_than_the_tokens_is_refused_with_403_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 1 << 20).await;
    let mut recs = records(3);
    recs[1].node = "board-2".into();
    let b = batch_of(&recs, 1);
    let (status, body) = post(&s.url(), TOKEN, &b.id, b.compressed.clone()).await;
    assert_eq!(status, 403, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("record 2") && error.contains("\"board-2\"") && error.contains(NODE),
        "{error}"
    );
    // The batch header naming another node (the board's `node` is not its token's).
    let encoded: Vec<Vec<u8>> = records(2).iter().map(JournalRecord::encode).collect();
    let other = reflex_records::encode_batch(
        "board-2",
        encoded
            .iter()
            .enumerate()
            .map(|(i, r)| (i as u64 + 1, &r[..])),
    );
    let (status, body) = post(&s.url(), TOKEN, &other.id, other.compressed.clone()).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("batch header"),
        "{body}"
    );
    assert!(s.files().is_empty(), "{:?}", s.files());
    assert_eq!(s.stats.forbidden.load(Ordering::Relaxed), 2);
    assert_eq!(s.stats.batches_stored.load(Ordering::Relaxed), 0);
    s.stop().await;
}

#[tokio::test]
async fn a_device_outside_the_allow_list_is_refused_and_the_board_keeps_the_batch_until_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let allowing = |devices: &[&str]| {
        let mut node = NodeToken::new(NODE, hash_token(TOKEN));
        node.devices = Some(devices.iter().map(|d| d.to_string()).collect());
        config(vec![node])
    };
    let s = Server::start_config(&store, &allowing(&["dev-0", "dev-1"])).await;
    let (journal, _) = Journal::open(StoreConfig::new(dir.path().join("journal"))).unwrap();
    let journal = Arc::new(journal);
    for r in records(3) {
        journal.append(&r.encode()).unwrap();
    }
    journal.sync().unwrap();
    let upload = |url: String| {
        let mut cfg = UploadConfig::new(url, TOKEN, NODE);
        cfg.batching = BatchPolicy {
            max_records: 100,
            max_bytes: 1 << 20,
            max_age: Duration::ZERO,
        };
        Uploader::new(journal.clone(), cfg).unwrap()
    };
    let mut up = upload(s.url());
    let refused = up.step().await;
    assert!(
        matches!(refused, Err(UploadError::Unauthorized { status: 403 })),
        "{refused:?}"
    );
    let kept = journal
        .inflight()
        .unwrap()
        .expect("the batch is still in flight");
    assert_eq!(journal.watermark().unwrap(), 0, "nothing acknowledged");
    assert_eq!(
        up.stats().rejected.load(Ordering::Relaxed),
        0,
        "not set aside"
    );
    assert!(s.files().is_empty(), "{:?}", s.files());
    assert_eq!(s.stats.forbidden.load(Ordering::Relaxed), 1);
    s.stop().await;

    // The operator adds the device: the same batch goes through.
    let s = Server::start_config(&store, &allowing(&["dev-0", "dev-1", "dev-2"])).await;
    let mut up = upload(s.url());
    match up.step().await.unwrap() {
        Step::Acked { id, records, .. } => assert_eq!((id, records), (kept.id, 3)),
        other => panic!("expected the kept batch acknowledged, got {other:?}"),
    }
    assert_eq!(journal.watermark().unwrap(), 3);
    assert_eq!(s.stats.records_stored.load(Ordering::Relaxed), 3);
    s.stop().await;
}

#[tokio::test]
async fn a_body_dribbled_after_the_headers_is_cut_off_with_408_at_the_body_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(vec![NodeToken::new(NODE, hash_token(TOKEN))]);
    cfg.body_timeout_ms = 300;
    cfg.request_timeout_ms = 60_000;
    let s = Server::start_config(dir.path(), &cfg).await;
    let stream = TcpStream::connect(s.addr).await.unwrap();
    let (mut rx, mut tx) = stream.into_split();
    tx.write_all(format!("{}\r\n", head(TOKEN, 10_000)).as_bytes())
        .await
        .unwrap();
    // A byte every 20 ms: 10 000 bytes would take over three minutes.
    let dribble = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..10_000 {
            tick.tick().await;
            if tx.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    let answer = read_until_closed(&mut rx).await;
    dribble.abort();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        answer.contains("body not complete within 300 ms"),
        "{answer}"
    );
    assert!(s.files().is_empty());
    let stats = s.stats.clone();
    s.stop().await;
    assert_eq!(stats.timed_out.load(Ordering::Relaxed), 1);
    assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_request_head_dribbled_in_is_cut_off_at_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(vec![NodeToken::new(NODE, hash_token(TOKEN))]);
    cfg.header_timeout_ms = 300;
    let s = Server::start_config(dir.path(), &cfg).await;
    let stream = TcpStream::connect(s.addr).await.unwrap();
    let (mut rx, mut tx) = stream.into_split();
    tx.write_all(b"POST /v1/batches HTTP/1.1\r\nX-Pad: ")
        .await
        .unwrap();
    let dribble = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..10_000 {
            tick.tick().await;
            if tx.write_all(b"a").await.is_err() {
                break;
            }
        }
    });
    let answer = read_until_closed(&mut rx).await;
    dribble.abort();
    assert!(!answer.contains("200 OK"), "{answer}");
    let stats = s.stats.clone();
    s.stop().await;
    assert_eq!(stats.timed_out.load(Ordering::Relaxed), 1);
    assert_eq!(
        stats.requests.load(Ordering::Relaxed),
        0,
        "never reached the handler"
    );
}

#[tokio::test]
async fn with_one_connection_allowed_a_second_is_served_only_after_the_first_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(vec![NodeToken::new(NODE, hash_token(TOKEN))]);
    cfg.max_connections = 1;
    cfg.header_timeout_ms = 2_000;
    let s = Server::start_config(dir.path(), &cfg).await;
    // The first connection says nothing and holds the only slot until its head times out.
    let mut first = TcpStream::connect(s.addr).await.unwrap();
    let mut second = TcpStream::connect(s.addr).await.unwrap();
    second
        .write_all(format!("{}Connection: close\r\n\r\n", head("not-a-token", 0)).as_bytes())
        .await
        .unwrap();
    let answer = read_until_closed(&mut second).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer:?}");
    // The slot is released only after the first connection's timeout was counted.
    assert_eq!(s.stats.timed_out.load(Ordering::Relaxed), 1);
    assert_eq!(read_until_closed(&mut first).await, "");
    s.stop().await;
}

#[tokio::test]
async fn an_unauthenticated_request_declaring_a_huge_body_is_answered_401_without_it_being_sent() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 1 << 20).await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    // 60 MiB declared (a body the server would once have read and discarded), none sent.
    stream
        .write_all(format!("{}\r\n", head("wrong-token", 60 << 20)).as_bytes())
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer:?}");
    assert!(answer.contains("bearer token"), "{answer}");
    assert_eq!(s.stats.refused.load(Ordering::Relaxed), 1);
    s.stop().await;
}

/// A cloud.toml whose node reads its hash from `token_file`.
fn write_config(dir: &Path, token_file: &Path) -> std::path::PathBuf {
    let text = format!(
        "[ingest]\nlisten = \"127.0.0.1:0\"\n[[ingest.nodes]]\nnode = \"{NODE}\"\n\
         token_sha256_file = \"{}\"\n[storage]\nkind = \"local\"\npath = \"{}\"\n",
        token_file.display(),
        dir.join("store").display()
    );
    let path = dir.join("cloud.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[cfg(unix)]
#[tokio::test]
async fn a_token_file_readable_by_others_is_refused_at_start_naming_the_file_and_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("board-1.sha256");
    std::fs::write(&token_file, format!("{}\n", hash_token(TOKEN))).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg_path = write_config(dir.path(), &token_file);

    let serve = Command::new(env!("CARGO_BIN_EXE_reflex-cloud"))
        .args(["serve", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert_eq!(serve.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(&token_file.display().to_string()) && stderr.contains("mode 0644"),
        "{stderr}"
    );

    // The library refuses it too, before binding.
    let mut node = NodeToken::new(NODE, "");
    node.token_sha256.clear();
    node.token_sha256_file = Some(token_file.clone());
    let storage = Storage::local(dir.path().join("store")).unwrap();
    match Ingest::bind(&config(vec![node]), storage).await {
        Err(e @ IngestError::Config(_)) => assert!(e.to_string().contains("mode 0644"), "{e}"),
        Err(e) => panic!("expected a configuration error, got {e}"),
        Ok(_) => panic!("an ingest started with a token file open to others"),
    }

    // Owner and group readers only: accepted.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let validate = Command::new(env!("CARGO_BIN_EXE_reflex-cloud"))
        .args(["validate", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
}

#[tokio::test]
async fn both_tokens_of_a_rotating_node_authenticate_and_after_rotation_only_the_new_one_does() {
    const OLD: &str = "board-1-old-secret";
    const NEW: &str = "board-1-new-secret";
    let dir = tempfile::tempdir().unwrap();
    let mut both = NodeToken::new(NODE, hash_token(OLD));
    both.token_sha256.push(hash_token(NEW));
    let s = Server::start_config(dir.path(), &config(vec![both])).await;
    let (a, b) = (batch_of(&records(2), 1), batch_of(&records(2), 3));
    let (status, body) = post_as(&s.url(), NODE, OLD, &a.id, a.compressed.clone()).await;
    assert_eq!((status, &body["status"]), (200, &"stored".into()), "{body}");
    let (status, body) = post_as(&s.url(), NODE, NEW, &b.id, b.compressed.clone()).await;
    assert_eq!((status, &body["status"]), (200, &"stored".into()), "{body}");
    s.stop().await;

    let only_new = NodeToken::new(NODE, hash_token(NEW));
    let s = Server::start_config(dir.path(), &config(vec![only_new])).await;
    let c = batch_of(&records(2), 5);
    let (status, body) = post(&s.url(), OLD, &c.id, c.compressed.clone()).await;
    assert_eq!(status, 401, "{body}");
    assert!(s.storage.marker(&c.id).await.unwrap().is_none());
    let (status, body) = post(&s.url(), NEW, &c.id, c.compressed.clone()).await;
    assert_eq!((status, &body["status"]), (200, &"stored".into()), "{body}");
    s.stop().await;
}
