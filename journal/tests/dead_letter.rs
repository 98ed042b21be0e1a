//! The dead-letter range on a real sled journal: records the cloud refused one by one stay
//! on the board, the rest of their batch is acked and deleted, the bound stops the ack
//! without deleting anything, and the range survives a reopen.

use reflex_journal::record::{
    encode_batch, DeadlineOutcome, DecisionSource, JournalRecord, ModelId,
};
use reflex_journal::store::{InFlight, Journal, StoreConfig, StoreError};

fn cfg(dir: &std::path::Path, max: u64) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.cache_capacity = 1 << 20;
    c.dead_letter_max_records = max;
    c
}

fn record(seq: u64) -> Vec<u8> {
    JournalRecord {
        node: "n1".into(),
        device: format!("dev-{}", seq % 2),
        seq,
        arrival_unix_us: 1_767_225_600_000_000 + seq,
        payload: vec![seq as u8],
        model_input: vec![0.0; 4],
        features: if seq == 3 { vec![] } else { vec![1.0; 13] },
        logits: vec![],
        class: 0,
        command: vec![1],
        model: ModelId {
            name: "m".into(),
            version: "1".into(),
        },
        source: DecisionSource::Fallback,
        timings: Default::default(),
        outcome: DeadlineOutcome::OnTime,
    }
    .encode()
}

/// Appends records 1..=n (synced) and puts them in flight as one batch.
fn journal_with_batch(j: &Journal, n: u64) -> InFlight {
    for s in 1..=n {
        assert_eq!(j.append(&record(s)).unwrap(), s);
    }
    j.sync().unwrap();
    let recs = j.scan(1, 1000, 1 << 20).unwrap();
    let b = encode_batch("n1", recs.iter().map(|(s, v)| (*s, v.as_slice())));
    let inflight = InFlight {
        id: b.id,
        first_seq: b.header.first_seq,
        last_seq: b.header.last_seq,
        count: b.header.count,
        compressed: b.compressed,
        windows: vec![],
    };
    j.set_inflight(&inflight).unwrap();
    inflight
}

#[test]
fn refused_records_stay_on_the_board_and_the_rest_of_the_batch_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(cfg(dir.path(), 100)).unwrap();
    let b = journal_with_batch(&j, 5);
    j.ack_with_refusals(&b, &[(3, "features_missing".into())], 42)
        .unwrap();
    assert!(j.is_empty(), "the acknowledged records are deleted");
    assert_eq!(j.watermark().unwrap(), 5);
    assert_eq!(j.inflight().unwrap(), None);
    let dead = j.dead_letters(0, 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, 3);
    assert_eq!(dead[0].1.reason, "features_missing");
    assert_eq!(dead[0].1.batch_id, b.id);
    assert_eq!(dead[0].1.filed_unix_us, 42);
    assert_eq!(dead[0].1.record, record(3), "the record's bytes, unchanged");
    assert_eq!(
        j.stats()
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    drop(j);

    let (j, _) = Journal::open(cfg(dir.path(), 100)).unwrap();
    let counts = j.dead_letter_counts().unwrap();
    assert_eq!(counts.get("features_missing"), Some(&1), "{counts:?}");
    assert_eq!(j.dead_letter_len().unwrap(), 1);
    // Appends after a reopen do not reuse the refused record's sequence.
    assert_eq!(j.append(&record(6)).unwrap(), 6);
}

#[test]
fn filing_the_same_refusals_again_counts_them_once() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(cfg(dir.path(), 100)).unwrap();
    let b = journal_with_batch(&j, 4);
    let refused = [(2, "device_id".to_string()), (3, "features_missing".into())];
    j.ack_with_refusals(&b, &refused, 1).unwrap();
    // A crash before the ack's deletion would re-send the batch: the same refusals again.
    j.ack_with_refusals(&b, &refused, 2).unwrap();
    assert_eq!(j.dead_letter_len().unwrap(), 2);
    let counts = j.dead_letter_counts().unwrap();
    assert_eq!(counts.get("device_id"), Some(&1));
    assert_eq!(counts.get("features_missing"), Some(&1));
}

#[test]
fn at_the_dead_letter_bound_nothing_is_acked_and_nothing_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(cfg(dir.path(), 1)).unwrap();
    let b = journal_with_batch(&j, 4);
    let refused = [(2, "device_id".to_string()), (3, "features_missing".into())];
    let e = j.ack_with_refusals(&b, &refused, 1).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::DeadLetterFull {
                held: 0,
                incoming: 2,
                max: 1
            }
        ),
        "{e}"
    );
    assert_eq!(j.len(), 4, "every record kept");
    assert_eq!(j.watermark().unwrap(), 0);
    assert_eq!(j.inflight().unwrap().as_ref(), Some(&b), "still in flight");
    assert_eq!(j.dead_letter_len().unwrap(), 0);
    assert_eq!(
        j.stats()
            .dead_letter_full
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn clearing_the_range_removes_only_what_was_asked_and_lowers_the_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(cfg(dir.path(), 100)).unwrap();
    let b = journal_with_batch(&j, 4);
    let refused = [(2, "device_id".to_string()), (3, "features_missing".into())];
    j.ack_with_refusals(&b, &refused, 1).unwrap();
    assert_eq!(j.clear_dead_letter(2).unwrap(), 1);
    let left: Vec<u64> = j.dead_letters(0, 10).unwrap().iter().map(|d| d.0).collect();
    assert_eq!(left, [3]);
    let counts = j.dead_letter_counts().unwrap();
    assert_eq!(counts.get("device_id"), Some(&0));
    assert_eq!(counts.get("features_missing"), Some(&1));
}
