//! The uploader against a real HTTP ingest on 127.0.0.1 (tests/fake_ingest), with a real
//! sled journal on disk.

mod fake_ingest;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_ingest::{Ingest, Mode};
use reflex_journal::record::{
    DeadlineOutcome, DecisionSource, JournalRecord, ModelId, StageTimings,
};
use reflex_journal::store::{Journal, StoreConfig};
use reflex_journal::upload::{Backoff, BatchPolicy, Step, UploadConfig, UploadError, Uploader};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "t0ken";

fn record(i: u64) -> JournalRecord {
    JournalRecord {
        node: "board-1".into(),
        device: format!("dev-{}", i % 5),
        seq: i,
        arrival_unix_us: 1, // old: batches never wait for age
        payload: vec![(i % 256) as u8; 300],
        model_input: (0..192).map(|k| (k as f32) * 0.01 + i as f32).collect(),
        features: vec![i as f32; 13],
        logits: vec![0.1, 0.7, 0.1, 0.1],
        class: 1,
        command: b"cmd".to_vec(),
        model: ModelId {
            name: "edge".into(),
            version: "2".into(),
        },
        source: DecisionSource::Model,
        timings: StageTimings::default(),
        outcome: DeadlineOutcome::OnTime,
    }
}

fn open(dir: &std::path::Path) -> Arc<Journal> {
    let (j, report) = Journal::open(StoreConfig::new(dir)).expect("open");
    assert!(report.moved_aside.is_none());
    Arc::new(j)
}

fn fill(j: &Journal, n: u64) {
    for i in 0..n {
        j.append(&record(i).encode()).unwrap();
    }
    j.sync().unwrap();
}

fn config(url: String, max_records: usize) -> UploadConfig {
    let mut c = UploadConfig::new(url, TOKEN, "board-1");
    c.batching = BatchPolicy {
        max_records,
        max_bytes: 1 << 20,
        max_age: Duration::from_secs(30),
    };
    c.backoff = Backoff {
        base: Duration::from_millis(5),
        max: Duration::from_millis(50),
    };
    c.idle_poll = Duration::from_millis(10);
    c.request_timeout = Duration::from_secs(5);
    c
}

/// Polls `cond` every few ms until it holds or `limit` passes.
async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_ingest_down_then_up_every_record_arrives_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    fill(&journal, 1000);
    let addr = free_port();
    let uploader = Uploader::new(journal.clone(), config(format!("http://{addr}"), 128)).unwrap();
    let stats = uploader.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(uploader.run(stop.clone()));
    // Down: connections refused, retried with backoff.
    assert!(
        wait_until(Duration::from_secs(10), || stats
            .failures
            .load(Ordering::Relaxed)
            >= 3)
        .await,
        "the uploader kept trying while the ingest was down"
    );
    assert_eq!(stats.batches_acked.load(Ordering::Relaxed), 0);
    let ingest = Ingest::start(addr, TOKEN, 16 << 20).await;
    // More records while it runs.
    for i in 1000..1500 {
        journal.append(&record(i).encode()).unwrap();
    }
    journal.sync().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || {
            stats.records_uploaded.load(Ordering::Relaxed) == 1500
        })
        .await,
        "uploaded {} of 1500",
        stats.records_uploaded.load(Ordering::Relaxed)
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("run stops on cancel")
        .unwrap();
    let state = ingest.stop().await;
    let s = state.lock().unwrap();
    assert!(s.stored_twice.is_empty());
    assert_eq!(s.records.len(), 1500);
    for seq in 1..=1500u64 {
        let r = &s.records[&("board-1".to_string(), seq)];
        assert_eq!(
            r.seq,
            seq - 1,
            "journal sequence {seq} holds the record appended at {seq}"
        );
    }
    assert!(journal.is_empty(), "acknowledged records are deleted");
    assert_eq!(journal.watermark().unwrap(), 1500);
    assert_eq!(stats.backlog_records.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_send_and_ack_resends_the_same_batch_id_and_the_ingest_stores_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let ingest = Ingest::start("127.0.0.1:0".parse().unwrap(), TOKEN, 16 << 20).await;
    let first_id;
    {
        let journal = open(dir.path());
        fill(&journal, 300);
        let mut up = Uploader::new(journal.clone(), config(ingest.url(), 100)).unwrap();
        ingest.set_mode(Mode::LoseNextAck);
        let e = up.step().await.unwrap_err();
        assert!(matches!(e, UploadError::Http { .. }), "{e}");
        let inflight = journal
            .inflight()
            .unwrap()
            .expect("persisted before sending");
        first_id = inflight.id;
        assert_eq!((inflight.first_seq, inflight.last_seq), (1, 100));
        // The "process" dies here: uploader and journal dropped without an ack.
    }
    assert_eq!(
        ingest.state.lock().unwrap().stored_ids,
        vec![first_id.clone()]
    );
    let journal = open(dir.path());
    let mut up = Uploader::new(journal.clone(), config(ingest.url(), 100)).unwrap();
    let step = up.step().await.unwrap();
    assert_eq!(
        step,
        Step::Acked {
            id: first_id.clone(),
            records: 100,
            duplicate: true,
            refused: 0,
        }
    );
    // The rest goes as new batches.
    while up.step().await.unwrap() != Step::Idle {}
    let s = ingest.state.lock().unwrap();
    assert_eq!(s.received_ids[0], first_id);
    assert_eq!(s.received_ids[1], first_id, "re-sent under the same id");
    assert_eq!(s.stored_ids.len(), 3);
    assert_eq!(s.records.len(), 300);
    assert!(s.stored_twice.is_empty());
    assert_eq!(up.stats().batches_duplicate.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_is_retried_and_acknowledges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ingest = Ingest::start("127.0.0.1:0".parse().unwrap(), "another-token", 16 << 20).await;
    let journal = open(dir.path());
    fill(&journal, 10);
    let mut up = Uploader::new(journal.clone(), config(ingest.url(), 100)).unwrap();
    let e = up.step().await.unwrap_err();
    assert!(
        matches!(e, UploadError::Unauthorized { status: 401 }),
        "{e}"
    );
    assert!(e.to_string().contains("401"));
    assert_eq!(journal.watermark().unwrap(), 0);
    assert_eq!(journal.len(), 10);
    assert!(journal.inflight().unwrap().is_some(), "kept for the retry");
    assert_eq!(up.stats().unauthorized.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_as_too_large_is_rebuilt_smaller_and_everything_still_arrives_once() {
    let dir = tempfile::tempdir().unwrap();
    // Room for a compressed batch of a few records, not of 200.
    let ingest = Ingest::start("127.0.0.1:0".parse().unwrap(), TOKEN, 6 << 10).await;
    let journal = open(dir.path());
    fill(&journal, 200);
    let mut up = Uploader::new(journal.clone(), config(ingest.url(), 200)).unwrap();
    let mut too_large = 0;
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 500, "bounded");
        match up.step().await {
            Ok(Step::Idle) => break,
            Ok(_) => {}
            Err(UploadError::TooLarge { .. }) => too_large += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(too_large >= 1);
    let s = ingest.state.lock().unwrap();
    assert_eq!(s.records.len(), 200);
    assert!(s.stored_twice.is_empty());
    assert!(journal.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_server_error_is_retried_until_the_batch_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let ingest = Ingest::start("127.0.0.1:0".parse().unwrap(), TOKEN, 16 << 20).await;
    ingest.set_mode(Mode::Unavailable);
    let journal = open(dir.path());
    fill(&journal, 50);
    let up = Uploader::new(journal.clone(), config(ingest.url(), 100)).unwrap();
    let stats = up.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(up.run(stop.clone()));
    assert!(
        wait_until(Duration::from_secs(10), || stats
            .failures
            .load(Ordering::Relaxed)
            >= 2)
        .await
    );
    ingest.set_mode(Mode::Normal);
    assert!(
        wait_until(Duration::from_secs(10), || stats
            .records_uploaded
            .load(Ordering::Relaxed)
            == 50)
        .await
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ingest.state.lock().unwrap().records.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_batch_waits_for_its_age_and_run_stops_promptly_on_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let ingest = Ingest::start("127.0.0.1:0".parse().unwrap(), TOKEN, 16 << 20).await;
    let journal = open(dir.path());
    let mut r = record(0);
    r.arrival_unix_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    journal.append(&r.encode()).unwrap();
    let mut up = Uploader::new(journal.clone(), config(ingest.url(), 100)).unwrap();
    match up.step().await.unwrap() {
        Step::Wait(d) => assert!(d > Duration::from_secs(25) && d <= Duration::from_secs(30)),
        other => panic!("expected a wait, got {other:?}"),
    }
    assert!(ingest.state.lock().unwrap().received_ids.is_empty());
    let stop = CancellationToken::new();
    let run = tokio::spawn(up.run(stop.clone()));
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bandwidth_cap_paces_uploads_to_its_rate() {
    let dir = tempfile::tempdir().unwrap();
    let ingest = Ingest::start("127.0.0.1:0".parse().unwrap(), TOKEN, 16 << 20).await;
    let journal = open(dir.path());
    // Incompressible payloads, so the compressed size is close to the raw size.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..200u64 {
        let mut r = record(i);
        r.payload = (0..300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        journal.append(&r.encode()).unwrap();
    }
    journal.sync().unwrap();
    let (rate, burst) = (40_000u64, 8_000u64);
    let mut c = config(ingest.url(), 20);
    c.bandwidth = Some((rate, burst));
    let up = Uploader::new(journal.clone(), c).unwrap();
    let stats = up.stats();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let run = tokio::spawn(up.run(stop.clone()));
    assert!(
        wait_until(Duration::from_secs(30), || {
            stats.records_uploaded.load(Ordering::Relaxed) == 200
        })
        .await
    );
    let elapsed = started.elapsed();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap()
        .unwrap();
    let bytes = stats.bytes_uploaded.load(Ordering::Relaxed);
    // The last batch is sent once its tokens are there: all but the burst must have waited.
    let floor = Duration::from_secs_f64((bytes - burst) as f64 / rate as f64 * 0.9);
    eprintln!("{bytes} bytes in {elapsed:?} (floor {floor:?})");
    assert!(bytes > 60_000, "{bytes}");
    assert!(
        elapsed >= floor,
        "{elapsed:?} < {floor:?} for {bytes} bytes"
    );
}

/// How many times the ingest received each batch id.
fn receipts(ingest: &Ingest) -> std::collections::HashMap<String, usize> {
    let mut n = std::collections::HashMap::new();
    for id in &ingest.state.lock().unwrap().received_ids {
        *n.entry(id.clone()).or_default() += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_that_does_not_name_the_batch_id_deletes_nothing_and_the_same_batch_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let ingest = Ingest::start("127.0.0.1:0".parse().unwrap(), TOKEN, 16 << 20).await;
    let journal = open(dir.path());
    fill(&journal, 50);
    let mut up = Uploader::new(journal.clone(), config(ingest.url(), 100)).unwrap();
    let stats = up.stats();

    // A 200 whose ack names another batch.
    ingest.set_mode(Mode::WrongAckId);
    let e = up.step().await.unwrap_err();
    let id = journal.inflight().unwrap().expect("kept in flight").id;
    match &e {
        UploadError::AckMismatch { expected, got } => {
            assert_eq!(expected, &id);
            assert_ne!(got, &id);
        }
        other => panic!("expected an ack mismatch, got {other}"),
    }
    assert!(e.to_string().contains(&id), "{e}");
    // A 200 with no body at all.
    ingest.set_mode(Mode::EmptyAck);
    let e = up.step().await.unwrap_err();
    assert!(matches!(e, UploadError::BadAck { .. }), "{e}");
    assert_eq!(journal.len(), 50, "nothing deleted");
    assert_eq!(journal.watermark().unwrap(), 0, "no ack recorded");
    assert_eq!(stats.failures.load(Ordering::Relaxed), 2);
    assert_eq!(stats.batches_acked.load(Ordering::Relaxed), 0);
    assert_eq!(stats.records_uploaded.load(Ordering::Relaxed), 0);
    assert_eq!(
        ingest.state.lock().unwrap().received_ids,
        vec![id.clone(), id.clone()],
        "the same batch is retried under the same id"
    );

    // The ingest answers properly again: the batch is acknowledged (the ingest already
    // stored it, so as a duplicate), the records go, and they arrived once.
    ingest.set_mode(Mode::Normal);
    assert_eq!(
        up.step().await.unwrap(),
        Step::Acked {
            id: id.clone(),
            records: 50,
            duplicate: true,
            refused: 0,
        }
    );
    assert_eq!(up.step().await.unwrap(), Step::Idle);
    assert!(journal.is_empty(), "acknowledged records are deleted");
    assert_eq!(journal.watermark().unwrap(), 50);
    let s = ingest.state.lock().unwrap();
    assert_eq!(s.stored_ids, vec![id.clone()]);
    assert_eq!(s.received_ids.len(), 3);
    assert_eq!(s.records.len(), 50);
    assert!(s.stored_twice.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_batch_is_not_sent_again_after_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ingest = Ingest::start("127.0.0.1:0".parse().unwrap(), TOKEN, 16 << 20).await;
    let first_id = {
        let journal = open(dir.path());
        fill(&journal, 100);
        let up = Uploader::new(journal.clone(), config(ingest.url(), 100)).unwrap();
        let stats = up.stats();
        let stop = CancellationToken::new();
        let run = tokio::spawn(up.run(stop.clone()));
        assert!(
            wait_until(Duration::from_secs(10), || stats
                .batches_acked
                .load(Ordering::Relaxed)
                == 1)
            .await,
            "the first batch is acknowledged"
        );
        // A clean stop: the run ends on cancel, then the journal is closed.
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("run stops on cancel")
            .unwrap();
        assert_eq!(journal.watermark().unwrap(), 100);
        let ids = ingest.state.lock().unwrap().stored_ids.clone();
        assert_eq!(ids.len(), 1);
        assert_eq!(Arc::strong_count(&journal), 1, "the uploader let go of it");
        ids[0].clone()
    };

    let journal = open(dir.path());
    assert_eq!(
        journal.watermark().unwrap(),
        100,
        "the ack survived the restart"
    );
    assert!(journal.inflight().unwrap().is_none());
    for i in 100..200 {
        journal.append(&record(i).encode()).unwrap();
    }
    journal.sync().unwrap();
    let up = Uploader::new(journal.clone(), config(ingest.url(), 100)).unwrap();
    let stats = up.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(up.run(stop.clone()));
    assert!(
        wait_until(Duration::from_secs(10), || stats
            .records_uploaded
            .load(Ordering::Relaxed)
            == 100)
        .await,
        "the new records are uploaded"
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.batches_duplicate.load(Ordering::Relaxed), 0);
    let counts = receipts(&ingest);
    assert_eq!(counts.get(&first_id), Some(&1), "the acked batch went once");
    assert!(
        counts.values().all(|&n| n == 1),
        "no batch id received twice: {counts:?}"
    );
    let s = ingest.state.lock().unwrap();
    assert_eq!(s.stored_ids.len(), 2);
    assert_eq!(s.stored_ids[0], first_id);
    assert_eq!(s.records.len(), 200);
    assert!(s.stored_twice.is_empty());
    // The second batch continues right after the first: journal sequences 101..=200, the
    // records appended at 100..200.
    for seq in 101..=200u64 {
        assert_eq!(s.records[&("board-1".to_string(), seq)].seq, seq - 1);
    }
    assert_eq!(journal.watermark().unwrap(), 200);
    assert!(journal.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_a_private_ca_in_ca_file_is_trusted_and_without_it_nothing_is_deleted() {
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = reflex_tests::make_test_certs(certs_dir.path());
    let ingest = Ingest::start_tls(
        "127.0.0.1:0".parse().unwrap(),
        TOKEN,
        16 << 20,
        &certs.cert_file,
        &certs.key_file,
    )
    .await;
    assert!(ingest.url().starts_with("https://127.0.0.1:"));
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    fill(&journal, 50);

    // Without ca_file only the webpki roots are trusted: the handshake fails, and says why.
    let mut up = Uploader::new(journal.clone(), config(ingest.url(), 100)).unwrap();
    let e = up.step().await.unwrap_err();
    assert!(matches!(e, UploadError::Http { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("certificate") && text.contains("UnknownIssuer"),
        "the error names the certificate problem: {text}"
    );
    let id = journal.inflight().unwrap().expect("kept for the retry").id;
    assert_eq!(journal.len(), 50, "nothing deleted");
    assert_eq!(journal.watermark().unwrap(), 0);
    // run() keeps retrying the same batch.
    let stats = up.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(up.run(stop.clone()));
    assert!(
        wait_until(Duration::from_secs(10), || stats
            .failures
            .load(Ordering::Relaxed)
            >= 3)
        .await,
        "retried"
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.batches_acked.load(Ordering::Relaxed), 0);
    assert_eq!(journal.len(), 50, "still nothing deleted");
    assert_eq!(journal.inflight().unwrap().unwrap().id, id);
    {
        let s = ingest.state.lock().unwrap();
        assert!(s.received_ids.is_empty(), "no request got through");
        assert!(s.tls_handshake_failures >= 3, "{:?}", s.tls_errors);
    }

    // With the private CA in ca_file: the same batch goes over HTTPS and is acknowledged.
    let mut c = config(ingest.url(), 100);
    c.ca_file = Some(certs.ca_file.clone());
    let mut up = Uploader::new(journal.clone(), c).unwrap();
    assert_eq!(
        up.step().await.unwrap(),
        Step::Acked {
            id: id.clone(),
            records: 50,
            duplicate: false,
            refused: 0,
        }
    );
    assert!(journal.is_empty());
    let s = ingest.state.lock().unwrap();
    assert_eq!(s.stored_ids, vec![id]);
    assert_eq!(s.records.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_that_is_missing_empty_or_not_a_certificate_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(&dir.path().join("journal"));
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let key_only = dir.path().join("key.pem");
    std::fs::write(
        &key_only,
        "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.pem");
    for (path, why) in [
        (&missing, "cannot read"),
        (&empty, "no PEM certificate"),
        (&key_only, "no PEM certificate"),
        (&garbage, "not a usable CA"),
    ] {
        let mut c = config("https://127.0.0.1:1".into(), 100);
        c.ca_file = Some(path.clone());
        let e = match Uploader::new(journal.clone(), c) {
            Ok(_) => panic!("{} accepted", path.display()),
            Err(e) => e,
        };
        assert!(matches!(e, UploadError::CaFile { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains(why),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_the_upload_window_run_sends_nothing_and_inside_it_everything_goes() {
    use reflex_journal::upload::UploadWindow;
    let dir = tempfile::tempdir().unwrap();
    let ingest = Ingest::start("127.0.0.1:0".parse().unwrap(), TOKEN, 16 << 20).await;
    let journal = open(dir.path());
    fill(&journal, 50);
    let now_minute = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 86_400
        / 60) as u16;
    let at = |offset: u16| (now_minute + offset) % 1440;

    // A window that opens in two hours (UTC minutes; may wrap past midnight).
    let mut c = config(ingest.url(), 100);
    c.window = Some(UploadWindow {
        start_minute: at(120),
        end_minute: at(180),
    });
    let up = Uploader::new(journal.clone(), c).unwrap();
    let stats = up.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(up.run(stop.clone()));
    // run() looks again every idle_poll (10 ms): let it find the window closed many times.
    assert!(
        wait_until(Duration::from_secs(10), || stats
            .window_waits
            .load(Ordering::Relaxed)
            >= 10)
        .await,
        "run() keeps checking the window"
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.window_closed.load(Ordering::Relaxed), 1);
    assert_eq!(stats.attempts.load(Ordering::Relaxed), 0, "nothing sent");
    assert!(ingest.state.lock().unwrap().received_ids.is_empty());
    assert!(journal.inflight().unwrap().is_none(), "no batch even cut");
    assert_eq!(journal.len(), 50);

    // A window open now (from a minute ago for two hours): everything goes.
    let mut c = config(ingest.url(), 100);
    c.window = Some(UploadWindow {
        start_minute: at(1439),
        end_minute: at(120),
    });
    let up = Uploader::new(journal.clone(), c).unwrap();
    let stats = up.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(up.run(stop.clone()));
    assert!(
        wait_until(Duration::from_secs(10), || stats
            .records_uploaded
            .load(Ordering::Relaxed)
            == 50)
        .await
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.window_closed.load(Ordering::Relaxed), 0);
    assert_eq!(stats.window_waits.load(Ordering::Relaxed), 0);
    assert_eq!(ingest.state.lock().unwrap().records.len(), 50);
    assert!(journal.is_empty());
}

#[test]
fn deleted_records_leave_each_devices_highest_seq_as_a_mark_that_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    // Records 0..20: device dev-(i % 5), event seq i, journal seq i + 1.
    fill(&j, 20);
    let marks = |j: &Journal| {
        let mut m = j.dedupe_marks().unwrap();
        m.sort();
        m
    };
    assert!(marks(&j).is_empty(), "no mark before a deletion");
    j.delete_through(10).unwrap();
    let expect = |base: u64| -> Vec<(String, u64)> {
        (0..5).map(|d| (format!("dev-{d}"), base + d)).collect()
    };
    assert_eq!(marks(&j), expect(5));
    j.delete_through(15).unwrap();
    assert_eq!(marks(&j), expect(10));
    // A lower sequence number deleted later (a device that restarted) never lowers a mark.
    let mut restarted = record(0);
    restarted.seq = 2;
    j.append(&restarted.encode()).unwrap();
    j.sync().unwrap();
    j.delete_through(u64::MAX).unwrap();
    assert_eq!(marks(&j)[0], ("dev-0".to_string(), 15));
    j.sync().unwrap();
    drop(j);
    let j = open(dir.path());
    assert_eq!(marks(&j)[0], ("dev-0".to_string(), 15));
    assert_eq!(marks(&j)[4], ("dev-4".to_string(), 19));
}
