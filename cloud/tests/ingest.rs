//! The ingest over real HTTP on 127.0.0.1 with real files in a temp directory: the contract
//! of `reflex_journal::upload`, refusals that store nothing, dedupe, the journal's own
//! uploader end to end, and Parquet that reads back.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{batch_of, post, record, Server, NODE, T0_US, TOKEN};
use reflex_cloud::layout;
use reflex_cloud::table::{read_parquet, EventColumns};
use reflex_journal::store::{Journal, StoreConfig};
use reflex_journal::upload::{Backoff, BatchPolicy, Step, UploadConfig, Uploader};

fn records(n: u64) -> Vec<reflex_records::JournalRecord> {
    (0..n)
        .map(|i| record(&format!("dev-{:04}", i % 3), i, T0_US + i * 1_000))
        .collect()
}

#[tokio::test]
async fn a_batch_is_stored_as_parquet_per_date_and_device_and_acknowledged_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 1 << 20).await;
    let b = batch_of(&records(30), 1);
    let (status, body) = post(&s.url(), TOKEN, &b.id, b.compressed.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["batch_id"], b.id.as_str());
    assert_eq!(body["status"], "stored");
    assert_eq!(body["records"], 30);
    let files = s.files();
    assert_eq!(
        files,
        vec![
            format!("batches/{}.json", b.id),
            format!("events/date=2026-01-01/device=dev-0000/{}.parquet", b.id),
            format!("events/date=2026-01-01/device=dev-0001/{}.parquet", b.id),
            format!("events/date=2026-01-01/device=dev-0002/{}.parquet", b.id),
        ]
    );
    let bytes = std::fs::read(dir.path().join(&files[2])).unwrap();
    let batches = read_parquet(Bytes::from(bytes)).unwrap();
    let c = EventColumns::of(&batches[0]).unwrap();
    assert_eq!(c.len, 10);
    assert!((0..c.len).all(|i| c.device.value(i) == "dev-0001"));
    assert_eq!(c.journal_seq.value(0), 2, "journal sequence of record 1");
    s.stop().await;
}

#[tokio::test]
async fn a_resent_batch_is_acknowledged_as_duplicate_and_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 1 << 20).await;
    let b = batch_of(&records(12), 1);
    let (first, _) = post(&s.url(), TOKEN, &b.id, b.compressed.clone()).await;
    let files_after_first = s.files();
    let mtimes: Vec<_> = files_after_first
        .iter()
        .map(|f| {
            std::fs::metadata(dir.path().join(f))
                .unwrap()
                .modified()
                .unwrap()
        })
        .collect();
    let (second, body) = post(&s.url(), TOKEN, &b.id, b.compressed.clone()).await;
    assert_eq!((first, second), (200, 200));
    assert_eq!(body["status"], "duplicate");
    assert_eq!(body["batch_id"], b.id.as_str());
    assert_eq!(s.files(), files_after_first);
    let mtimes_after: Vec<_> = files_after_first
        .iter()
        .map(|f| {
            std::fs::metadata(dir.path().join(f))
                .unwrap()
                .modified()
                .unwrap()
        })
        .collect();
    assert_eq!(mtimes, mtimes_after, "nothing rewritten");
    assert_eq!(s.stats.batches_stored.load(Ordering::Relaxed), 1);
    assert_eq!(s.stats.batches_duplicate.load(Ordering::Relaxed), 1);
    s.stop().await;
}

#[tokio::test]
async fn a_bad_or_missing_token_gets_401_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 1 << 20).await;
    let b = batch_of(&records(5), 1);
    let (status, body) = post(&s.url(), "wrong-token", &b.id, b.compressed.clone()).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("token"));
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/batches", s.url()))
        .header("x-reflex-batch-id", &b.id)
        .body(b.compressed.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/batches", s.url()))
        .bearer_auth(TOKEN)
        .header("x-reflex-node", "board-2")
        .header("x-reflex-batch-id", &b.id)
        .body(b.compressed.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "a token is bound to its node");
    assert!(s.files().is_empty(), "{:?}", s.files());
    s.stop().await;
}

#[tokio::test]
async fn an_oversized_body_gets_413_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 2_000).await;
    let mut recs = records(50);
    for r in &mut recs {
        // Incompressible payloads so the compressed body exceeds 2000 bytes.
        r.payload = (0..200)
            .map(|k| ((k as u64 * 2654435761) ^ (r.seq * 97)) as u8)
            .collect();
    }
    let b = batch_of(&recs, 1);
    assert!(b.compressed.len() > 2_000);
    let (status, body) = post(&s.url(), TOKEN, &b.id, b.compressed.clone()).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("2000"), "{body}");
    assert!(s.files().is_empty());
    s.stop().await;
}

#[tokio::test]
async fn a_batch_of_another_format_gets_415_so_the_board_keeps_it_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 1 << 20).await;
    let b = batch_of(&records(3), 1);
    // Declared in the header (a board of another version)...
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/batches", s.url()))
        .bearer_auth(TOKEN)
        .header("content-type", reflex_records::CONTENT_TYPE)
        .header("x-reflex-batch-id", &b.id)
        .header("x-reflex-batch-format", "1")
        .header("x-reflex-node", NODE)
        .body(b.compressed.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    assert!(resp.text().await.unwrap().contains("this ingest reads"));
    // ...or only in the body's version byte.
    let mut body = zstd::bulk::decompress(&b.compressed, 1 << 20).unwrap();
    body[0] = 1;
    let id = reflex_records::batch_id(&body);
    let (status, answer) = post(
        &s.url(),
        TOKEN,
        &id,
        zstd::bulk::compress(&body, 3).unwrap(),
    )
    .await;
    assert_eq!(status, 415, "{answer}");
    assert!(s.files().is_empty(), "{:?}", s.files());
    s.stop().await;
}

#[tokio::test]
async fn a_corrupt_batch_or_wrong_id_gets_400_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 1 << 20).await;
    let b = batch_of(&records(5), 1);
    let (status, body) = post(&s.url(), TOKEN, &b.id, b"not zstd at all".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    let other = batch_of(&records(6), 1);
    let (status, body) = post(&s.url(), TOKEN, &other.id, b.compressed.clone()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains(&other.id),
        "{body}"
    );
    let mut truncated = b.compressed.clone();
    truncated.truncate(truncated.len() / 2);
    assert_eq!(post(&s.url(), TOKEN, &b.id, truncated).await.0, 400);
    assert_eq!(
        post(&s.url(), TOKEN, "abc", b.compressed.clone()).await.0,
        400
    );
    let mut bad_device = records(2);
    bad_device[1].device = "../etc".into();
    let bd = batch_of(&bad_device, 1);
    let (status, body) = post(&s.url(), TOKEN, &bd.id, bd.compressed.clone()).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("../etc"), "{body}");
    assert!(s.files().is_empty(), "{:?}", s.files());
    assert_eq!(s.stats.refused.load(Ordering::Relaxed), 5);
    s.stop().await;
}

#[tokio::test]
async fn the_journal_uploader_ships_a_real_journal_to_the_ingest_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("store"), 1 << 20).await;
    let (journal, _) = Journal::open(StoreConfig::new(dir.path().join("journal"))).unwrap();
    let journal = Arc::new(journal);
    for r in records(250) {
        journal.append(&r.encode()).unwrap();
    }
    journal.sync().unwrap();
    let mut cfg = UploadConfig::new(s.url(), TOKEN, NODE);
    cfg.batching = BatchPolicy {
        max_records: 100,
        max_bytes: 1 << 20,
        max_age: Duration::ZERO,
    };
    cfg.backoff = Backoff {
        base: Duration::from_millis(5),
        max: Duration::from_millis(50),
    };
    let mut up = Uploader::new(journal.clone(), cfg).unwrap();
    let mut acked = Vec::new();
    loop {
        match up.step().await.unwrap() {
            Step::Acked {
                id,
                records,
                duplicate,
                ..
            } => {
                assert!(!duplicate);
                acked.push((id, records));
            }
            Step::Idle => break,
            Step::Wait(d) => panic!("a drained journal with max_age 0 waits {d:?}"),
        }
    }
    assert_eq!(
        acked.iter().map(|a| a.1).collect::<Vec<_>>(),
        [100, 100, 50]
    );
    let mut total = 0;
    for (id, records) in &acked {
        let m = s.storage.marker(id).await.unwrap().expect("marker");
        assert_eq!(m.records, *records);
        for f in &m.files {
            assert_eq!(layout::batch_of_event_file(f), Some(id.as_str()));
            let rows = read_parquet(s.storage.get(f).await.unwrap()).unwrap();
            total += rows.iter().map(|b| b.num_rows()).sum::<usize>();
        }
    }
    assert_eq!(total, 250);
    assert_eq!(s.stats.records_stored.load(Ordering::Relaxed), 250);
    s.stop().await;
}

#[tokio::test]
async fn shutdown_stops_the_server_and_it_refuses_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 1 << 20).await;
    let url = s.url();
    s.stop().await;
    let b = batch_of(&records(1), 1);
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/batches"))
        .bearer_auth(TOKEN)
        .header("x-reflex-batch-id", &b.id)
        .body(b.compressed)
        .send()
        .await;
    assert!(r.is_err());
}
