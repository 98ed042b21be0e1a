//! Salvage of a journal moved aside as damaged, on real sled directories on disk.
//!
//! The damage is the one a full filesystem leaves when it stops sled writing a snapshot
//! (see the `salvage` module doc): a `snap.<lsn>.generating` file cut short next to the
//! previous, intact snapshot. sled 0.34 reads the last `snap.*` file in name order, so the
//! cut one, and refuses it as corruption; `Journal::open` moves the directory aside.
//! Without the cut file sled reads the previous snapshot and the log after it: everything.

mod fake_ingest;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fake_ingest::{Ingest, Mode};
use reflex_journal::record::{
    encode_batch_with_windows, DeadlineOutcome, DecisionSource, JournalRecord, ModelId,
    StageTimings,
};
use reflex_journal::store::{InFlight, Journal, StoreConfig};
use reflex_journal::upload::{Backoff, BatchPolicy, Step, UploadConfig, UploadError, Uploader};

const TOKEN: &str = "t0ken";
const NODE: &str = "board-1";

fn record(i: u64) -> JournalRecord {
    JournalRecord {
        node: NODE.into(),
        device: format!("dev-{}", i % 5),
        seq: i,
        arrival_unix_us: 1,
        payload: vec![(i % 256) as u8; 200],
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

fn cfg(dir: &Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.cache_capacity = 4 << 20;
    c.segment_size = 64 << 10;
    // Small filesystems here (a 16 MiB tmpfs): a floor that leaves room to work.
    c.quota.min_free_bytes = 1 << 20;
    c
}

/// The batch the uploader would persist for the journal's records `first..=last`.
fn batch_of(j: &Journal, first: u64, last: u64) -> InFlight {
    let recs = j
        .scan(first, (last - first + 1) as usize, usize::MAX)
        .unwrap();
    assert_eq!(recs.first().map(|r| r.0), Some(first));
    assert_eq!(recs.last().map(|r| r.0), Some(last));
    let b = encode_batch_with_windows(NODE, recs.iter().map(|(s, v)| (*s, v.as_slice())), &[]);
    InFlight {
        id: b.id,
        first_seq: b.header.first_seq,
        last_seq: b.header.last_seq,
        count: b.header.count,
        compressed: b.compressed,
        windows: Vec::new(),
    }
}

/// A journal in `dir` with records of events `events` (journal sequences from
/// `skip + 1` on, after `skip` records uploaded and deleted), of which the first
/// `uploaded` were uploaded and deleted and the next `inflight` are in the in-flight batch;
/// closed cleanly, reopened once (so that sled writes a snapshot), closed again. Returns
/// the in-flight batch.
fn journal_with(dir: &Path, skip: u64, events: u64, uploaded: u64, inflight: u64) -> InFlight {
    let (j, _) = Journal::open(cfg(dir)).unwrap();
    for _ in 0..skip {
        j.append(b"uploaded before").unwrap();
    }
    if skip > 0 {
        j.sync().unwrap();
        let b = batch_of(&j, 1, skip);
        j.set_inflight(&b).unwrap();
        j.ack_uploaded(skip).unwrap();
    }
    for i in 0..events {
        j.append(&record(i).encode()).unwrap();
    }
    j.sync().unwrap();
    let first = skip + 1;
    if uploaded > 0 {
        let b = batch_of(&j, first, skip + uploaded);
        j.set_inflight(&b).unwrap();
        j.ack_uploaded(skip + uploaded).unwrap();
    }
    let b = batch_of(&j, skip + uploaded + 1, skip + uploaded + inflight);
    j.set_inflight(&b).unwrap();
    j.sync().unwrap();
    drop(j);
    let (j, report) = Journal::open(cfg(dir)).unwrap();
    assert!(report.moved_aside.is_none() && report.salvaged.is_empty());
    drop(j);
    b
}

/// Leaves what a full filesystem leaves when it stops sled writing its next snapshot: a
/// `snap.<next lsn>.generating` file holding half of the snapshot, the previous one intact.
fn cut_snapshot(dir: &Path) {
    let mut snaps: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snap.")
        })
        .collect();
    snaps.sort();
    let newest = snaps.pop().expect("sled wrote a snapshot at the reopen");
    let name = newest.file_name().unwrap().to_string_lossy().into_owned();
    let lsn = u64::from_str_radix(name.trim_start_matches("snap."), 16).unwrap();
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(
        dir.join(format!("snap.{:016X}.generating", lsn + 1)),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
}

/// Every file under `dir` with its bytes.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            for (k, v) in contents(&p) {
                out.insert(p.file_name().unwrap().into(), Vec::new());
                out.insert(Path::new(p.file_name().unwrap()).join(k), v);
            }
        } else {
            out.insert(p.file_name().unwrap().into(), std::fs::read(&p).unwrap());
        }
    }
    out
}

/// The names in `parent` that contain `part`.
fn named(parent: &Path, part: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(part))
        .collect();
    v.sort();
    v
}

#[test]
fn every_durable_record_not_uploaded_comes_back_once_in_order_and_the_aside_dir_is_marked_salvaged()
{
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("journal");
    let inflight = journal_with(&dir, 0, 300, 100, 50);
    cut_snapshot(&dir);

    let (j, report) = Journal::open(cfg(&dir)).unwrap();
    let moved = report
        .moved_aside
        .clone()
        .expect("sled refuses the cut snapshot");
    assert!(moved.reason.starts_with("sled: "), "{moved:?}");
    assert_eq!(report.salvaged.len(), 1, "{report:?}");
    assert!(report.salvage_failed.is_empty(), "{report:?}");
    let s = &report.salvaged[0];
    assert_eq!(s.strategy, "without the 1 newest snapshots");
    // Events 0..100 were uploaded; 100..150 ride in the kept batch; 150..300 come back.
    assert_eq!(s.records, 150);
    assert_eq!(s.batch, Some((inflight.id.clone(), 50)));
    assert_eq!(report.salvaged_records(), 200);
    let live = j.scan(0, usize::MAX, usize::MAX).unwrap();
    let events: Vec<u64> = live
        .iter()
        .map(|(_, v)| JournalRecord::decode(v).unwrap().seq)
        .collect();
    assert_eq!(
        events,
        (150..300).collect::<Vec<u64>>(),
        "once each, in order"
    );
    assert_eq!(report.records, 150);
    let (_, kept) = j
        .salvaged_batch()
        .unwrap()
        .expect("the in-flight batch is kept");
    assert_eq!(kept, inflight, "same id, same bytes");
    // The marks of the uploaded records came over.
    let marks: BTreeMap<String, u64> = j.dedupe_marks().unwrap().into_iter().collect();
    assert_eq!(marks.get("dev-4"), Some(&99), "{marks:?}");
    assert!(named(parent.path(), ".corrupt-").is_empty());
    let salvaged = named(parent.path(), ".salvaged-");
    assert_eq!(salvaged, vec![s.path.clone()]);
    assert!(s.path.join("db").is_file(), "kept whole");
    assert!(
        named(parent.path(), "salvage-work").is_empty(),
        "work copy removed"
    );
    drop(j);

    let (j, again) = Journal::open(cfg(&dir)).unwrap();
    assert!(again.moved_aside.is_none(), "{again:?}");
    assert!(
        again.salvaged.is_empty() && again.salvage_failed.is_empty(),
        "{again:?}"
    );
    assert_eq!(j.len(), 150, "nothing salvaged twice");
    assert_eq!(j.salvaged_batches_len().unwrap(), 1);
}

#[test]
fn salvage_works_on_a_copy_and_never_writes_the_aside_dir() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("journal");
    journal_with(&dir, 0, 120, 20, 30);
    cut_snapshot(&dir);
    let aside = parent.path().join("journal.corrupt-1700000000");
    std::fs::rename(&dir, &aside).unwrap();
    let before = contents(&aside);

    let (j, report) = Journal::open(cfg(&dir)).unwrap();
    assert!(
        report.moved_aside.is_none(),
        "the live journal is new and fine"
    );
    assert_eq!(report.salvaged.len(), 1, "{report:?}");
    assert_eq!(report.salvaged[0].records, 70);
    assert_eq!(j.len(), 70);
    assert_eq!(
        contents(&report.salvaged[0].path),
        before,
        "the aside dir's bytes are unchanged"
    );
}

#[test]
fn an_aside_dir_that_cannot_be_opened_stays_corrupt_is_reported_and_the_fresh_journal_serves() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("journal");
    let aside = parent.path().join("journal.corrupt-1700000000");
    std::fs::create_dir(&aside).unwrap();
    // Garbage where sled's data file was.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let garbage: Vec<u8> = (0..(1 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(aside.join("db"), &garbage).unwrap();
    let before = contents(&aside);

    for _ in 0..2 {
        let (j, report) = Journal::open(cfg(&dir)).unwrap();
        assert!(report.salvaged.is_empty(), "{report:?}");
        assert_eq!(report.salvage_failed.len(), 1, "{report:?}");
        let f = &report.salvage_failed[0];
        assert_eq!(f.path, aside);
        assert!(!f.deferred, "{f:?}");
        assert!(!f.reason.is_empty());
        let seq = j.append(b"fresh").unwrap();
        j.sync().unwrap();
        assert_eq!(j.scan(seq, 1, usize::MAX).unwrap()[0].1, b"fresh");
        drop(j);
        assert_eq!(
            contents(&aside),
            before,
            "left as it was, for the next start"
        );
        assert!(named(parent.path(), ".salvaged-").is_empty());
        assert!(named(parent.path(), "salvage-work").is_empty());
    }
}

#[test]
fn a_salvage_that_would_go_below_the_free_space_floor_is_left_for_later() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("journal");
    journal_with(&dir, 0, 50, 0, 10);
    cut_snapshot(&dir);
    let aside = parent.path().join("journal.corrupt-1700000000");
    std::fs::rename(&dir, &aside).unwrap();
    let mut c = cfg(&dir);
    c.quota.min_free_bytes = u64::MAX / 2;
    let (j, report) = Journal::open(c).unwrap();
    assert_eq!(report.salvage_failed.len(), 1, "{report:?}");
    assert!(report.salvage_failed[0].deferred, "{report:?}");
    assert!(j.is_empty());
    drop(j);
    assert!(aside.is_dir(), "still there for a later start");
    // With room, the next start salvages it.
    let (j, report) = Journal::open(cfg(&dir)).unwrap();
    assert_eq!(report.salvaged_records(), 50, "{report:?}");
    assert_eq!(j.len(), 40, "the 10 in flight ride in the kept batch");
}

fn upload_config(url: String) -> UploadConfig {
    let mut c = UploadConfig::new(url, TOKEN, NODE);
    c.batching = BatchPolicy {
        max_records: 40,
        max_bytes: 1 << 20,
        max_age: std::time::Duration::from_secs(30),
    };
    c.backoff = Backoff {
        base: std::time::Duration::from_millis(5),
        max: std::time::Duration::from_millis(50),
    };
    c.request_timeout = std::time::Duration::from_secs(5);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salvaged_records_reach_the_ingest_once_even_when_their_batch_was_stored_before() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("journal");
    let ingest = Ingest::start("127.0.0.1:0".parse().unwrap(), TOKEN, 16 << 20).await;
    // Journal sequences of the damaged journal start after 1000 (uploaded long ago), so
    // that the ingest's (node, journal sequence) keys never meet the new journal's.
    let (j, _) = Journal::open(cfg(&dir)).unwrap();
    for _ in 0..1000 {
        j.append(b"long gone").unwrap();
    }
    j.sync().unwrap();
    let b = batch_of(&j, 1, 1000);
    j.set_inflight(&b).unwrap();
    j.ack_uploaded(1000).unwrap();
    for i in 0..200 {
        j.append(&record(i).encode()).unwrap();
    }
    j.sync().unwrap();
    let j = Arc::new(j);
    // The cloud stores the first batch, but its ack is lost: it stays in flight.
    let mut up = Uploader::new(j.clone(), upload_config(ingest.url())).unwrap();
    ingest.set_mode(Mode::LoseNextAck);
    let e = up.step().await.unwrap_err();
    assert!(matches!(e, UploadError::Http { .. }), "{e}");
    let stored = j.inflight().unwrap().expect("in flight");
    assert_eq!(
        ingest.state.lock().unwrap().stored_ids,
        vec![stored.id.clone()]
    );
    drop(up);
    drop(j);
    let (j, _) = Journal::open(cfg(&dir)).unwrap();
    drop(j);
    cut_snapshot(&dir);

    let (j, report) = Journal::open(cfg(&dir)).unwrap();
    assert_eq!(report.salvaged_records(), 200, "{report:?}");
    let j = Arc::new(j);
    let mut up = Uploader::new(j.clone(), upload_config(ingest.url())).unwrap();
    assert_eq!(
        up.step().await.unwrap(),
        Step::Acked {
            id: stored.id.clone(),
            records: 40,
            duplicate: true,
            refused: 0
        },
        "the salvaged batch goes first, under its own id"
    );
    while up.step().await.unwrap() != Step::Idle {}
    assert_eq!(up.stats().salvaged_batches_acked.load(Ordering::Relaxed), 1);
    assert_eq!(j.salvaged_batches_len().unwrap(), 0);
    assert!(j.is_empty(), "everything acknowledged");
    let s = ingest.state.lock().unwrap();
    assert!(s.stored_twice.is_empty());
    let mut events: Vec<u64> = s.records.values().map(|r| r.seq).collect();
    events.sort();
    assert_eq!(events, (0..200).collect::<Vec<u64>>(), "every event once");
}

#[test]
fn a_snapshot_a_full_filesystem_cut_short_at_open_is_salvaged_with_every_record_not_uploaded() {
    let parent = tempfile::tempdir().unwrap();
    let mnt = parent.path().join("mnt");
    let mount = reflex_tests::mount_tmpfs(&mnt, "16m");
    let dir = mnt.join("journal");
    let inflight = journal_with(&dir, 0, 300, 100, 50);
    // Log written after sled's last snapshot: the next open writes a new snapshot.
    let (j, _) = Journal::open(cfg(&dir)).unwrap();
    for i in 300..320 {
        j.append(&record(i).encode()).unwrap();
    }
    j.sync().unwrap();
    drop(j);
    // A full filesystem: the open fails for lack of space, after sled has created the
    // snapshot file it could not write.
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
    }
    let e = Journal::open(cfg(&dir)).err().expect("no room to open");
    assert!(e.is_no_space(), "{e}");
    assert!(
        named(&dir, ".generating").len() == 1,
        "sled left its snapshot cut short: {:?}",
        named(&dir, "")
    );
    std::fs::remove_file(&filler).unwrap();
    // Room again: sled reads the cut snapshot as corrupt, the journal is moved aside and
    // salvaged.
    let (j, report) = Journal::open(cfg(&dir)).unwrap();
    let moved = report.moved_aside.clone().expect("moved aside");
    assert!(moved.reason.contains("corrupt"), "{moved:?}");
    assert_eq!(report.salvaged.len(), 1, "{report:?}");
    assert_eq!(
        report.salvaged[0].strategy,
        "without the 1 newest snapshots"
    );
    assert_eq!(report.salvaged[0].batch, Some((inflight.id.clone(), 50)));
    let events: Vec<u64> = j
        .scan(0, usize::MAX, usize::MAX)
        .unwrap()
        .iter()
        .map(|(_, v)| JournalRecord::decode(v).unwrap().seq)
        .collect();
    assert_eq!(events, (150..320).collect::<Vec<u64>>());
    drop(j);
    drop(mount);
}

#[test]
fn a_refusal_in_a_salvaged_batch_is_filed_once_under_a_sequence_of_the_live_journal() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("journal");
    let inflight = journal_with(&dir, 0, 40, 10, 10);
    cut_snapshot(&dir);
    let (j, report) = Journal::open(cfg(&dir)).unwrap();
    assert_eq!(report.salvaged_records(), 30, "{report:?}");
    let (key, batch) = j.salvaged_batch().unwrap().unwrap();
    assert_eq!(batch, inflight);
    // The cloud refuses the batch's third record (journal sequence 13 of the old journal).
    let refused = [(13u64, "features_missing".to_string())];
    j.ack_salvaged(key, &batch, &refused, 7).unwrap();
    assert_eq!(j.salvaged_batches_len().unwrap(), 0);
    // Answered again (a crash undid the removal): not filed twice.
    j.ack_salvaged(key, &batch, &refused, 8).unwrap();
    let dead = j.dead_letters(0, usize::MAX).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (seq, d) = &dead[0];
    assert_eq!(*seq, 21, "the sequence after the 20 records re-appended");
    assert_eq!(d.batch_id, inflight.id);
    assert_eq!(d.reason, "features_missing");
    assert_eq!(
        JournalRecord::decode(&d.record).unwrap().seq,
        12,
        "event 12"
    );
    // Never handed out to a record.
    assert_eq!(j.append(b"next").unwrap(), 22);
}
