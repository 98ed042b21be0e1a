//! The journal under real power cuts (the `reflex-powercut` FUSE harness, not `kill -9`):
//! unsynced writes are dropped, and injected fsync errors keep data readable that never
//! reaches the disk. What the journal reported durable must survive every cut, and an
//! fsync error must never let it report durable what is not on disk. Needs root and
//! /dev/fuse. Seeds are printed (`POWERCUT_SEED` replays one).

use std::collections::{BTreeMap, BTreeSet};
mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{next, seed, CrashChild};

use reflex_journal::record::JournalRecord;
use reflex_journal::store::{Appender, GroupCommit, Journal, StoreConfig};
use reflex_powercut::{FsyncFault, PowerCutMount};

fn mounted() -> (tempfile::TempDir, PowerCutMount) {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = PowerCutMount::mount(dir.path()).expect("mounting the power-cut filesystem");
    (dir, m)
}

#[test]
fn a_journal_cut_off_at_random_moments_keeps_everything_it_reported_durable_as_a_prefix() {
    let mut rng = seed("POWERCUT_SEED", "prefix");
    let (_d, mut fs) = mounted();
    let dir = fs.path().join("journal");
    let mut durable_before = 0u64;
    let rounds = 25;
    for round in 0..rounds {
        let mut child = CrashChild::spawn(&dir, Stdio::null(), durable_before);
        let start = child.start;
        assert!(
            start > durable_before,
            "round {round}: starts at {start}, after the last durable record {durable_before}"
        );
        let target = start + 20 + next(&mut rng) % 600;
        child.wait_durable(target, round);
        // The cut: at this instant everything not synced is gone; then the process dies.
        let report = fs.power_off();
        child.kill();
        let durable = child.durable;
        fs.power_on().expect("remount");

        let (j, open) = Journal::open(StoreConfig::new(&dir)).expect("reopen");
        assert!(
            open.moved_aside.is_none(),
            "round {round}: {:?}",
            open.moved_aside
        );
        let all = j.scan(0, usize::MAX, usize::MAX).unwrap();
        for (k, (seq, value)) in all.iter().enumerate() {
            assert_eq!(
                *seq,
                all[0].0 + k as u64,
                "round {round}: no hole before {seq}"
            );
            let rec = JournalRecord::decode(value).expect("intact record");
            assert_eq!(
                rec.seq, *seq,
                "round {round}: record {seq} is the one appended there"
            );
        }
        let last = all.last().map_or(0, |r| r.0);
        assert!(
            last >= durable,
            "round {round}: reported durable through {durable}, only {last} survived the cut ({report:?})"
        );
        eprintln!(
            "round {round}: durable {durable}, survived {last}, cut dropped {} bytes",
            report.dirty_bytes_dropped
        );
        durable_before = last;
    }
    assert_eq!(fs.stats().cuts, rounds);
}

/// What a caller of the appender may acknowledge: ids whose sequence was reported durable
/// (by a group commit or a reopen), minus the sequences a reopen reported lost.
#[derive(Default)]
struct Acks {
    appended: BTreeMap<u64, u64>,
    acked: BTreeSet<u64>,
    lost: u64,
}

impl Acks {
    fn durable(&mut self, through: u64) {
        let rest = self.appended.split_off(&(through + 1));
        self.acked.extend(self.appended.values());
        self.appended = rest;
    }
}

fn value(id: u64) -> Vec<u8> {
    let mut v = id.to_be_bytes().to_vec();
    v.resize(300, (id % 251) as u8);
    v
}

#[test]
fn after_an_injected_fsync_error_nothing_is_reported_durable_that_a_cut_then_takes_away() {
    let mut rng = seed("POWERCUT_SEED", "eio");
    let (_d, mut fs) = mounted();
    for round in 0..6u64 {
        let dir = fs.path().join(format!("journal-{round}"));
        let (journal, _) = Journal::open(StoreConfig::new(&dir)).expect("open");
        let journal = Arc::new(journal);
        let acks = Arc::new(Mutex::new(Acks::default()));
        let (a1, a2) = (acks.clone(), acks.clone());
        let appender = Appender::start_reopening(
            journal.clone(),
            GroupCommit {
                max_records: 32,
                max_delay: Duration::from_millis(2),
            },
            move |through| a1.lock().unwrap().durable(through),
            move |r| {
                let mut a = a2.lock().unwrap();
                a.durable(r.kept_through);
                let lost: Vec<u64> = a
                    .appended
                    .range(r.kept_through + 1..r.lost_before)
                    .map(|(s, _)| *s)
                    .collect();
                for s in lost {
                    a.appended.remove(&s);
                    a.lost += 1;
                }
            },
        );
        let nth = 3 + next(&mut rng) % 30;
        fs.inject(
            FsyncFault::once()
                .on_paths_containing(&format!("journal-{round}/db"))
                .from_call(nth),
        );
        let eio_before = fs.stats().injected_eio;
        let stats = journal.stats();
        let mut id = 0u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut after_reopen = None;
        // Append until the error happened, the journal reopened, and a random number of
        // later appends were reported durable.
        loop {
            assert!(
                Instant::now() < deadline,
                "round {round}: no reopen after the EIO"
            );
            id += 1;
            match appender.append_encoded(&value(id)) {
                Ok(seq) => {
                    acks.lock().unwrap().appended.insert(seq, id);
                }
                Err(_) => std::thread::yield_now(),
            }
            let reopened = stats.reopens.load(std::sync::atomic::Ordering::Relaxed) > 0;
            if reopened && after_reopen.is_none() {
                after_reopen = Some(id + 10 + next(&mut rng) % 300);
            }
            if after_reopen.is_some_and(|stop| id >= stop) {
                let seq = journal.last_seq();
                if appender.wait_durable(seq, Duration::from_secs(5)) {
                    break;
                }
            }
        }
        assert_eq!(
            fs.stats().injected_eio,
            eio_before + 1,
            "round {round}: the EIO happened"
        );
        let report = fs.power_off();
        drop(appender);
        drop(journal);
        fs.power_on().expect("remount");

        let (j, _) = Journal::open(StoreConfig::new(&dir)).expect("reopen after the cut");
        let mut present = BTreeMap::new();
        for (seq, v) in j.scan(0, usize::MAX, usize::MAX).unwrap() {
            let got = u64::from_be_bytes(v[..8].try_into().unwrap());
            assert_eq!(v, value(got), "round {round}: record {seq} intact");
            assert!(
                present.insert(got, seq).is_none(),
                "round {round}: id {got} journaled twice"
            );
        }
        let a = acks.lock().unwrap();
        let missing: Vec<u64> = a
            .acked
            .iter()
            .filter(|id| !present.contains_key(id))
            .copied()
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} of {} records reported durable are gone after the cut (first {:?}); EIO at fsync #{nth}, cut {report:?}",
            missing.len(),
            a.acked.len(),
            &missing[..missing.len().min(5)]
        );
        eprintln!(
            "round {round}: EIO at fsync #{nth} of the data file, {} acked, {} lost at the reopen, all acked present",
            a.acked.len(),
            a.lost
        );
    }
}

#[test]
fn after_an_fsync_error_close_fails_and_the_append_is_never_reported_durable() {
    let (_d, fs) = mounted();
    let dir = fs.path().join("journal");
    let (journal, _) = Journal::open(StoreConfig::new(&dir)).expect("open");
    let journal = Arc::new(journal);
    let appender = Appender::start(journal.clone(), GroupCommit::default(), |_| {});
    fs.inject(FsyncFault::once().on_paths_containing("journal/db"));
    let seq = appender.append_encoded(&value(1)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !journal.needs_reopen() {
        assert!(
            Instant::now() < deadline,
            "the group commit never met the EIO"
        );
        std::thread::yield_now();
    }
    // The next fsync would succeed (the error is reported once): still not durable.
    assert!(appender.durable_through() < seq);
    assert!(
        appender.close().is_err(),
        "close must fail on a journal that needs a reopen"
    );
    assert!(journal.sync().is_err(), "a broken journal never syncs");
    assert_eq!(fs.stats().injected_eio, 1);
}
