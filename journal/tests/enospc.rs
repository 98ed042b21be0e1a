//! A real full filesystem: a 2 MiB tmpfs mounted for the test (we run as root here). Filling
//! it yields `StoreError::NoSpace`, never a panic, and the journal reopens with everything it
//! reported durable once there is room again. An appender started with
//! `start_reopening` reopens the broken journal by itself once there is room: everything it
//! kept is in order, the appends it lost are reported, and no sequence is handed out twice.
//!
//! Except for a sled 0.34 limitation this test found: now and then (1 run in 40 to 300 here,
//! under CPU load; both with records durable and with none) sled reads the log that ENOSPC
//! cut short as corrupt when it is reopened. The journal then does what it does with any
//! damage: moves the directory aside intact (with the data file as found before sled's
//! recovery), starts fresh, and salvages what the moved directory still holds into the
//! fresh journal (see the journal's module doc, Corruption, and tests/salvage.rs, which
//! makes that damage happen on purpose). The test checks that path too rather than treating
//! it as a pass of the other: the directory is kept once, and what was reported durable is
//! back in the journal.

use std::sync::Arc;
use std::time::Duration;

use reflex_journal::store::{
    Appender, GroupCommit, Journal, Quota, StoreConfig, StoreError, RECOVERY_COPY_DIR,
};
use reflex_tests::mount_tmpfs;

fn cfg(dir: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.cache_capacity = 1 << 20;
    // No quota or free-space floor: the point is to hit the real ENOSPC.
    c.quota = Quota {
        quota_bytes: u64::MAX,
        min_free_bytes: 0,
        ..Quota::default()
    };
    c
}

#[test]
fn filling_a_tiny_filesystem_gives_a_no_space_error_not_a_panic_and_the_journal_reopens() {
    let parent = tempfile::tempdir().unwrap();
    let mnt = parent.path().join("mnt");
    let mount = mount_tmpfs(&mnt, "2m");
    let dir = mnt.join("journal");
    let (j, _) = Journal::open(cfg(&dir)).expect("open on the empty tmpfs");
    let j = Arc::new(j);
    let app = Appender::start(
        j.clone(),
        GroupCommit {
            max_records: 32,
            max_delay: Duration::from_millis(1),
        },
        |_| {},
    );
    let value = vec![0x5Au8; 1024];
    let mut error = None;
    for _ in 0..50_000 {
        if let Err(e) = app.append_encoded(&value) {
            error = Some(e);
            break;
        }
        if app.last_error().is_some() {
            break;
        }
    }
    // The flusher may have met the full disk first; a final sync tells.
    let durable = app.durable_through();
    let app_error = app.last_error();
    let close = app.close();
    let error = match (error, close) {
        (Some(e), _) => e,
        (None, Err(e)) => e,
        (None, Ok(())) => panic!("2 MiB filled without an error"),
    };
    eprintln!("error: {error}; durable through {durable}");
    // The append itself met the full disk, or the flusher met it first and broke the
    // journal (the append is then refused as not open): either way, the cause is no space.
    match &error {
        StoreError::Reopening { cause, .. } => {
            assert!(cause.contains("no space left"), "{error}");
        }
        other => assert!(other.is_no_space(), "{other}"),
    }
    assert!(error.to_string().contains("no space left"), "{error}");
    if let Some(flusher) = app_error {
        assert!(flusher.contains("no space left"), "{flusher}");
    }
    drop(j);

    // Still full: reopening either fails (no room) or opens.
    let still_full = Journal::open(cfg(&dir)).ok().map(|(j, report)| {
        drop(j);
        report.moved_aside
    });

    // Room again: everything reported durable is there, as a prefix.
    mount.resize("16m");
    let (j, report) = Journal::open(cfg(&dir)).expect("reopen with room");
    match still_full.flatten().or(report.moved_aside.clone()) {
        None => {
            let all = j.scan(0, usize::MAX, usize::MAX).unwrap();
            for (k, (seq, v)) in all.iter().enumerate() {
                assert_eq!(*seq, k as u64 + 1);
                assert_eq!(v, &value);
            }
            assert!(all.len() as u64 >= durable, "{} < {durable}", all.len());
        }
        Some(aside) => {
            // The sled limitation in the module doc: only sled's own corruption report
            // may move it, and the old directory must be kept whole, copy included
            // (renamed `.salvaged-*` once salvaged).
            eprintln!(
                "sled read the log ENOSPC cut short as damaged: {aside:?}; salvaged {:?}",
                report.salvaged
            );
            assert!(aside.reason.starts_with("sled: "), "{aside:?}");
            let kept: Vec<std::path::PathBuf> = std::fs::read_dir(&mnt)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    name.contains(".corrupt-") || name.contains(".salvaged-")
                })
                .collect();
            assert_eq!(kept.len(), 1, "moved aside once: {kept:?}");
            assert!(kept[0].join("db").is_file(), "{kept:?}: data file kept");
            if aside.reason.contains(RECOVERY_COPY_DIR) {
                assert!(
                    kept[0].join(RECOVERY_COPY_DIR).join("db").is_file(),
                    "{kept:?}: the data file as found before recovery is kept"
                );
            }
            // What was reported durable came back through the salvage.
            let all = j.scan(0, usize::MAX, usize::MAX).unwrap();
            assert!(all.iter().all(|(_, v)| v == &value));
            assert!(all.len() as u64 >= durable, "{} < {durable}", all.len());
        }
    }
    let seq = j.append(&value).unwrap();
    j.sync().unwrap();
    assert_eq!(seq, report.next_seq);
    drop(j);
    drop(mount);
}

#[test]
fn the_appender_reopens_a_journal_a_full_filesystem_broke_and_never_reuses_a_sequence() {
    let parent = tempfile::tempdir().unwrap();
    let mnt = parent.path().join("mnt");
    let mount = mount_tmpfs(&mnt, "2m");
    let dir = mnt.join("journal");
    let (j, _) = Journal::open(cfg(&dir)).expect("open on the empty tmpfs");
    let (tx, reopened) = std::sync::mpsc::channel();
    let app = Appender::start_reopening(
        Arc::new(j),
        GroupCommit {
            max_records: 32,
            max_delay: Duration::from_millis(1),
        },
        |_| {},
        move |r| {
            let _ = tx.send(r.clone());
        },
    );
    let value = vec![0x5Au8; 1024];
    let mut last_ok = 0;
    for _ in 0..50_000 {
        match app.append_encoded(&value) {
            Ok(seq) => last_ok = seq,
            Err(e) => assert!(
                e.is_no_space() || matches!(e, StoreError::Reopening { .. }),
                "{e}"
            ),
        }
        if app.journal().needs_reopen() {
            break;
        }
    }
    assert!(
        app.journal().needs_reopen(),
        "2 MiB filled without an error"
    );
    let durable_before = app.durable_through();
    eprintln!("broken after seq {last_ok}, durable through {durable_before}");
    // Room again: the flusher reopens it (no new handle from the caller) and appends resume.
    mount.resize("16m");
    let give_up = std::time::Instant::now() + Duration::from_secs(20);
    let mut last = None;
    let seq = loop {
        while let Ok(r) = reopened.try_recv() {
            last = Some(r);
        }
        if last.is_some() {
            if let Ok(seq) = app.append_encoded(&value) {
                break seq;
            }
        }
        assert!(
            std::time::Instant::now() < give_up,
            "not reopened within 20 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let r = last.unwrap();
    eprintln!("{r:?}; next append at {seq}");
    assert!(r.lost_before > last_ok, "{r:?} after {last_ok}");
    assert!(seq >= r.lost_before, "sequence {seq} reused ({r:?})");
    assert!(app.wait_durable(seq, Duration::from_secs(5)));
    let stats = app.journal().stats();
    assert!(stats.reopens.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    let moved = r.moved_aside.clone();
    let journal = app.journal().clone();
    app.close().unwrap();
    drop(journal);
    let (j, report) = Journal::open(cfg(&dir)).expect("open after the reopen");
    assert!(report.moved_aside.is_none(), "{report:?}");
    let seqs: Vec<u64> = j
        .scan(0, usize::MAX, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    match moved {
        None => {
            assert!(r.kept_through >= durable_before, "{r:?} < {durable_before}");
            let kept: Vec<u64> = (1..=r.kept_through).collect();
            assert_eq!(&seqs[..kept.len()], &kept[..], "everything kept, in order");
            assert_eq!(*seqs.last().unwrap(), seq);
            assert!(
                seqs.iter()
                    .all(|s| *s <= r.kept_through || *s >= r.lost_before),
                "a lost sequence came back"
            );
        }
        Some(aside) => {
            // The sled limitation above: moved aside whole (and salvaged: renamed), the
            // fresh journal continues after every sequence handed out before, and what
            // was reported durable came back through the salvage.
            eprintln!(
                "sled read the log ENOSPC cut short as damaged: {aside:?}; salvaged {:?}",
                r.salvaged
            );
            let kept = r
                .salvaged
                .first()
                .map_or(aside.path.clone(), |s| s.path.clone());
            assert!(kept.join("db").is_file(), "{kept:?}: data file kept");
            assert!(seqs.iter().all(|s| *s >= r.lost_before));
            if r.salvage_failed.is_empty() {
                assert!(
                    seqs.len() as u64 > durable_before,
                    "{} records after the reopen, {durable_before} were durable before",
                    seqs.len()
                );
            } else {
                // Moved aside by a reopen while the filesystem was still full: no room for
                // the working copy, left for the next start (tests/salvage.rs covers that).
                assert!(r.salvage_failed.iter().all(|f| f.deferred), "{r:?}");
            }
        }
    }
    drop(j);
    drop(mount);
}

#[test]
fn the_free_space_floor_sheds_and_refuses_before_the_filesystem_is_full() {
    let parent = tempfile::tempdir().unwrap();
    let mnt = parent.path().join("mnt");
    let mount = mount_tmpfs(&mnt, "8m");
    let mut c = cfg(&mnt.join("journal"));
    c.quota.min_free_bytes = 3 << 20;
    let (j, _) = Journal::open(c).unwrap();
    let value = vec![1u8; 1000];
    let (mut accepted, mut refused) = (0u32, 0u32);
    for i in 0..30_000u32 {
        match j.append(&value) {
            Ok(_) => accepted += 1,
            Err(StoreError::Full { .. }) => refused += 1,
            Err(e) => panic!("append {i}: {e}"),
        }
        if i % 64 == 0 {
            j.sync().unwrap();
            j.check_quota().unwrap();
        }
    }
    j.sync().unwrap();
    let stats = j.stats();
    let dropped = stats
        .dropped_records
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "accepted {accepted}, refused {refused}, dropped {dropped}, kept {}",
        j.len()
    );
    assert!(dropped > 0, "the floor dropped the oldest records");
    assert_eq!(accepted as u64, dropped + j.len() as u64);
    drop(j);
    drop(mount);
}

#[allow(dead_code)]
fn assert_error_is_send_sync(e: StoreError) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}
