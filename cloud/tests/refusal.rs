//! Per-record refusals end to end, with the real parts: the board's sled journal and its
//! uploader against the real ingest over HTTP on 127.0.0.1 with real files. A record the
//! cloud cannot store is refused alone and stays on the board in the journal's dead-letter
//! range; the rest of its batch is stored, a retried batch is stored once and refused the
//! same way, and a batch the ingest cannot read at all is kept and retried, never deleted.
//! A batch whose `X-Reflex-Batch-Format` header disagrees with its body's own format is
//! refused whole, stores nothing, and is counted by that reason on `/metrics`.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{batch_of, record, Server, NODE, T0_US, TOKEN};
use reflex_cloud::table::read_parquet;
use reflex_journal::record::{
    encode_batch, EncodedBatch, FeatureSet, JournalRecord, ModelId, ACK_VERSION_HEADER,
    BATCH_FORMAT_HEADER,
};
use reflex_journal::store::{InFlight, Journal, StoreConfig};
use reflex_journal::upload::{Backoff, BatchPolicy, Step, UploadConfig, UploadError, Uploader};
use reflex_tests::prometheus::metric;

/// Ten records of three devices; the fifth (journal sequence 5) has no features, as the
/// board journals an event whose features it could not compute.
fn records_with_one_bad() -> Vec<JournalRecord> {
    (0..10u64)
        .map(|i| {
            let mut r = record(&format!("dev-{}", i % 3), i, T0_US + i * 1_000);
            if i == 4 {
                r.features.clear();
            }
            r
        })
        .collect()
}

fn journal_of(dir: &std::path::Path, records: &[JournalRecord]) -> Arc<Journal> {
    let (journal, _) = Journal::open(StoreConfig::new(dir)).unwrap();
    for r in records {
        journal.append(&r.encode()).unwrap();
    }
    journal.sync().unwrap();
    Arc::new(journal)
}

fn uploader(journal: &Arc<Journal>, url: String) -> Uploader {
    let mut cfg = UploadConfig::new(url, TOKEN, NODE);
    cfg.batching = BatchPolicy {
        max_records: 100,
        max_bytes: 1 << 20,
        max_age: Duration::ZERO,
    };
    cfg.backoff = Backoff {
        base: Duration::from_millis(5),
        max: Duration::from_millis(50),
    };
    Uploader::new(journal.clone(), cfg).unwrap()
}

/// Rows in the Parquet files of the batch `id`.
async fn stored_rows(s: &Server, id: &str) -> usize {
    let m = s.storage.marker(id).await.unwrap().expect("marker");
    let mut rows = 0;
    for f in &m.files {
        let batches = read_parquet(s.storage.get(f).await.unwrap()).unwrap();
        rows += batches.iter().map(|b| b.num_rows()).sum::<usize>();
    }
    rows
}

#[tokio::test]
async fn a_batch_with_one_bad_record_stores_the_rest_and_keeps_the_bad_one_on_the_board() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("store"), 1 << 20).await;
    let journal = journal_of(&dir.path().join("journal"), &records_with_one_bad());
    let mut up = uploader(&journal, s.url());
    let id = match up.step().await.unwrap() {
        Step::Acked {
            id,
            records,
            duplicate,
            refused,
        } => {
            assert_eq!((records, duplicate, refused), (10, false, 1));
            id
        }
        other => panic!("expected an ack, got {other:?}"),
    };
    assert_eq!(up.step().await.unwrap(), Step::Idle);

    // The cloud stored the nine others, and says so in the marker.
    assert_eq!(stored_rows(&s, &id).await, 9);
    assert_eq!(s.storage.marker(&id).await.unwrap().unwrap().records, 9);
    assert_eq!(s.stats.records_stored.load(Ordering::Relaxed), 9);
    assert_eq!(s.stats.records_refused.load(Ordering::Relaxed), 1);

    // The board acked and deleted the batch, and kept the refused record, unchanged.
    assert!(journal.is_empty());
    assert_eq!(journal.watermark().unwrap(), 10);
    let dead = journal.dead_letters(0, 10).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, 5, "journal sequence of the fifth record");
    assert_eq!(dead[0].1.reason, "features_missing");
    assert_eq!(dead[0].1.batch_id, id);
    let kept = JournalRecord::decode(&dead[0].1.record).unwrap();
    assert_eq!(kept, records_with_one_bad()[4]);
    assert_eq!(
        journal
            .dead_letter_counts()
            .unwrap()
            .get("features_missing"),
        Some(&1)
    );
    let st = up.stats();
    assert_eq!(st.records_refused.load(Ordering::Relaxed), 1);
    assert_eq!(st.records_uploaded.load(Ordering::Relaxed), 9);
    s.stop().await;
}

async fn post_reading_refusals(url: &str, id: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/batches"))
        .bearer_auth(TOKEN)
        .header("content-type", reflex_records::CONTENT_TYPE)
        .header("x-reflex-batch-id", id)
        .header("x-reflex-node", NODE)
        .header(ACK_VERSION_HEADER, "2")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).expect("a json body"))
}

#[tokio::test]
async fn a_retried_batch_is_stored_once_and_refused_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 1 << 20).await;
    let b = batch_of(&records_with_one_bad(), 1);
    let (first, a) = post_reading_refusals(&s.url(), &b.id, b.compressed.clone()).await;
    let files = s.files();
    let (second, again) = post_reading_refusals(&s.url(), &b.id, b.compressed.clone()).await;
    assert_eq!((first, second), (200, 200), "{a} {again}");
    assert_eq!(a["status"], "stored");
    assert_eq!(again["status"], "duplicate");
    assert_eq!(a["version"], 2);
    let expected = serde_json::json!([{
        "index": 4, "journal_seq": 5, "device": "dev-1", "seq": 4, "reason": "features_missing"
    }]);
    assert_eq!(a["refused"], expected);
    assert_eq!(again["refused"], expected, "refused again, the same way");
    assert_eq!(s.files(), files, "nothing written by the retry");
    assert_eq!(s.stats.records_stored.load(Ordering::Relaxed), 9);
    assert_eq!(s.stats.batches_duplicate.load(Ordering::Relaxed), 1);
    assert_eq!(stored_rows(&s, &b.id).await, 9);
    s.stop().await;
}

#[tokio::test]
async fn a_batch_the_ingest_cannot_read_is_kept_and_retried_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("store"), 1 << 20).await;
    let records: Vec<JournalRecord> = (0..5u64).map(|i| record("dev-0", i, T0_US + i)).collect();
    let journal = journal_of(&dir.path().join("journal"), &records);
    // A batch whose bytes were damaged on the board after they were persisted.
    let damaged = InFlight {
        id: "ab".repeat(32),
        first_seq: 1,
        last_seq: 5,
        count: 5,
        compressed: b"not a zstd frame".to_vec(),
        windows: vec![],
    };
    journal.set_inflight(&damaged).unwrap();
    let mut up = uploader(&journal, s.url());
    for attempt in 1..=2u64 {
        let e = up.step().await.unwrap_err();
        assert!(matches!(e, UploadError::Rejected { .. }), "{e}");
        assert_eq!(up.stats().rejected.load(Ordering::Relaxed), attempt);
        assert_eq!(journal.len(), 5, "no record deleted");
        assert_eq!(journal.watermark().unwrap(), 0);
        assert_eq!(journal.inflight().unwrap().as_ref(), Some(&damaged));
        assert_eq!(journal.dead_letter_len().unwrap(), 0);
    }
    assert!(s.files().is_empty(), "{:?}", s.files());
    s.stop().await;
}

/// Five records as a version-3 batch: each names a feature set of its own 13 names.
fn batch_with_a_feature_set() -> EncodedBatch {
    let set = FeatureSet {
        model: ModelId {
            name: "press".into(),
            version: "2.0.0".into(),
        },
        names: (0..13).map(|i| format!("f{i}")).collect(),
    }
    .encoded();
    let encoded: Vec<Vec<u8>> = (0..5u64)
        .map(|i| record("dev-0", i, T0_US + i).encode_full(None, Some(&set)))
        .collect();
    encode_batch(
        NODE,
        encoded
            .iter()
            .enumerate()
            .map(|(i, r)| (1 + i as u64, r.as_slice())),
    )
}

/// POSTs `b` with `format` as its declared batch format: the status and the error text.
async fn post_declaring(url: &str, b: &EncodedBatch, format: u8) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/batches"))
        .bearer_auth(TOKEN)
        .header("content-type", reflex_records::CONTENT_TYPE)
        .header("x-reflex-batch-id", &b.id)
        .header(BATCH_FORMAT_HEADER, format.to_string())
        .header("x-reflex-node", NODE)
        .header(ACK_VERSION_HEADER, "2")
        .body(b.compressed.clone())
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn a_declared_batch_format_other_than_the_bodys_is_refused_whole_and_counted_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), 1 << 20).await;
    let plain = batch_of(
        &(0..5u64)
            .map(|i| record("dev-0", i, T0_US + i))
            .collect::<Vec<_>>(),
        1,
    );
    let named = batch_with_a_feature_set();
    assert_eq!(reflex_records::batch_format_of(&plain.compressed), Some(2));
    assert_eq!(reflex_records::batch_format_of(&named.compressed), Some(3));

    let (status, error) = post_declaring(&s.url(), &plain, 3).await;
    assert_eq!(status, 400, "{error}");
    assert!(
        error.contains("says batch format 3") && error.contains("body is batch format 2"),
        "{error}"
    );
    let (status, error) = post_declaring(&s.url(), &named, 2).await;
    assert_eq!(status, 400, "{error}");
    assert!(error.contains("body is batch format 3"), "{error}");
    assert!(s.files().is_empty(), "nothing stored: {:?}", s.files());

    let text = reqwest::get(format!("{}/metrics", s.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(
            &text,
            "reflex_cloud_refusals_total{reason=\"format_mismatch\"}"
        ),
        2.0,
        "{text}"
    );
    assert_eq!(metric(&text, "reflex_cloud_refused_total"), 2.0);

    // Declared as they are, both are stored.
    for (b, format) in [(&plain, 2), (&named, 3)] {
        let (status, error) = post_declaring(&s.url(), b, format).await;
        assert_eq!(status, 200, "format {format}: {error}");
    }
    assert_eq!(s.stats.batches_stored.load(Ordering::Relaxed), 2);
    s.stop().await;
}
