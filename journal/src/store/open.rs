//! Opening a journal directory (validating its layout, removing leftovers of an interrupted
//! deletion, counting what is live), waiting for space to open, and reopening after an I/O
//! error. A directory sled cannot read back is handed to [`super::recovery`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::journal::Handles;
use super::recovery::{
    catch_sled_panic, classify_open_error, copy_for_recovery, drop_sled, move_aside,
    rewrite_in_place, OpenFailure,
};
use super::salvage::{SalvageFailure, Salvaged, Scope};
#[cfg(doc)]
use super::Appender;
use super::{
    be, fsync_path, seq_of, Journal, JournalStats, StoreConfig, StoreError, LAYOUT,
    META_DELETED_THROUGH, META_INFLIGHT, META_LAYOUT, META_WATERMARK,
};

/// File written at a clean close (after the last flush) and removed at open: its absence
/// next to a non-empty data file means the last run did not close cleanly.
pub const CLEAN_MARKER: &str = "clean-shutdown";
/// Directory, inside the journal directory, holding the data file as found before sled's
/// recovery after an unclean shutdown; removed once the journal opened fine.
pub const RECOVERY_COPY_DIR: &str = "pre-recovery-copy";

/// How long [`Journal::open`] retries when another handle still holds sled's file lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

/// What happened while opening.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Set when the journal could not be opened: where the damaged directory went and why.
    pub moved_aside: Option<MovedAside>,
    /// Records present after opening.
    pub records: u64,
    /// First record present.
    pub first_seq: Option<u64>,
    /// The sequence the next append gets.
    pub next_seq: u64,
    /// The upload watermark.
    pub watermark: u64,
    /// An upload was in flight when the journal was last closed.
    pub inflight: bool,
    /// Aside directories salvaged into this journal by this open (see the `salvage`
    /// module): renamed `<dir>.salvaged-<secs>`.
    pub salvaged: Vec<Salvaged>,
    /// Aside directories this open could not salvage (they stay `.corrupt-*`).
    pub salvage_failed: Vec<SalvageFailure>,
}

impl OpenReport {
    /// Records salvaged by this open (re-appended plus those in kept batches).
    pub fn salvaged_records(&self) -> u64 {
        self.salvaged.iter().map(Salvaged::total_records).sum()
    }
}

/// A damaged journal that was moved aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedAside {
    /// Where it is now.
    pub path: PathBuf,
    /// Why it could not be opened.
    pub reason: String,
}

/// What [`Journal::reopen`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reopened {
    /// Every sequence at or below this that was appended before is durable now (sled
    /// recovered it from disk; the reopen synced it).
    pub kept_through: u64,
    /// Appends before the reopen that took sequences in `kept_through + 1 .. lost_before`
    /// were lost with the broken handle (never reported durable); sequences from
    /// `lost_before` on are new.
    pub lost_before: u64,
    /// Set when sled could not read the journal back: where it went (see
    /// [`Journal::open`]).
    pub moved_aside: Option<MovedAside>,
    /// The directory just moved aside, if salvaged into the reopened journal.
    pub salvaged: Vec<Salvaged>,
    /// The directory just moved aside, if it could not be salvaged.
    pub salvage_failed: Vec<SalvageFailure>,
}

impl Journal {
    /// Opens (or creates) the journal; moves a damaged one aside and starts fresh. Then
    /// salvages every `<dir>.corrupt-*` sibling not salvaged yet (the one just moved aside
    /// included) into it: see the `salvage` module.
    pub fn open(cfg: StoreConfig) -> Result<(Journal, OpenReport), StoreError> {
        Journal::open_salvaging(cfg)
    }

    /// [`Journal::open`], salvaging every aside sibling.
    fn open_salvaging(cfg: StoreConfig) -> Result<(Journal, OpenReport), StoreError> {
        let (j, mut report) = Journal::open_or_move_aside(&cfg)?;
        let (salvaged, failed) = j.salvage(Scope::All);
        if !salvaged.is_empty() {
            report.records = j.len() as u64;
            report.first_seq = j.first_seq().ok().flatten();
            report.next_seq = j.last_seq() + 1;
        }
        report.salvaged = salvaged;
        report.salvage_failed = failed;
        Ok((j, report))
    }

    fn open_or_move_aside(cfg: &StoreConfig) -> Result<(Journal, OpenReport), StoreError> {
        let cfg = cfg.clone();
        match Journal::try_open(&cfg) {
            Ok((j, report)) => Ok((j, report)),
            Err(OpenFailure::Other(e)) => Err(e),
            Err(OpenFailure::Damaged(reason)) => {
                let aside = move_aside(&cfg.dir)?;
                tracing::error!(dir = %cfg.dir.display(), moved_to = %aside.display(), %reason,
                    "journal could not be opened; moved aside, starting a fresh journal");
                match Journal::try_open(&cfg) {
                    Ok((j, mut report)) => {
                        report.moved_aside = Some(MovedAside {
                            path: aside,
                            reason,
                        });
                        Ok((j, report))
                    }
                    Err(OpenFailure::Other(e)) => Err(e),
                    Err(OpenFailure::Damaged(reason)) => Err(StoreError::Sled {
                        dir: cfg.dir.clone(),
                        op: "open fresh journal",
                        message: reason,
                    }),
                }
            }
        }
    }

    fn try_open(cfg: &StoreConfig) -> Result<(Journal, OpenReport), OpenFailure> {
        let dir = &cfg.dir;
        if !dir.exists() {
            create_dir_durably(dir).map_err(|e| {
                OpenFailure::Other(StoreError::from_io(dir, "create journal directory", e))
            })?;
        }
        // A data file with content must hold a journal: if sled opens it and finds no layout
        // key, it recovered nothing from it, and that is damage, not a fresh start.
        let existing_bytes = std::fs::metadata(dir.join("db")).map_or(0, |m| m.len());
        let unclean = existing_bytes > 0 && !dir.join(CLEAN_MARKER).exists();
        let copy = dir.join(RECOVERY_COPY_DIR);
        let _ = std::fs::remove_dir_all(&copy); // left by an open that itself crashed
        if unclean {
            // The pages a crashed run left in the page cache may not be on disk (a failed
            // fsync before the crash): make them so before sled trusts them.
            rewrite_in_place(dir, LOCK_WAIT).map_err(|e| {
                OpenFailure::Other(StoreError::from_io(dir, "rewrite before recovery", e))
            })?;
        }
        let copied = unclean
            && existing_bytes <= cfg.recovery_copy_max_bytes
            && match copy_for_recovery(dir, &copy) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "could not copy the journal before recovery");
                    let _ = std::fs::remove_dir_all(&copy);
                    false
                }
            };
        match Journal::open_sled(cfg, existing_bytes) {
            Ok(opened) => {
                // From now on, a crash is an unclean shutdown again.
                let _ = std::fs::remove_file(dir.join(CLEAN_MARKER));
                let _ = std::fs::remove_dir_all(&copy);
                let _ = fsync_path(dir);
                Ok(opened)
            }
            Err(OpenFailure::Damaged(reason)) if copied => Err(OpenFailure::Damaged(format!(
                "{reason}; the data file as found before sled's recovery is in {RECOVERY_COPY_DIR}/"
            ))),
            Err(e) => {
                if let OpenFailure::Other(_) = e {
                    let _ = std::fs::remove_dir_all(&copy);
                }
                Err(e)
            }
        }
    }

    fn open_sled(
        cfg: &StoreConfig,
        existing_bytes: u64,
    ) -> Result<(Journal, OpenReport), OpenFailure> {
        let dir = cfg.dir.clone();
        let db = open_db(cfg)?;
        let records = db
            .open_tree("records")
            .map_err(open_err(&dir, "open records"))?;
        let meta = db.open_tree("meta").map_err(open_err(&dir, "open meta"))?;
        check_layout(&dir, &records, &meta, existing_bytes)?;
        let read_u64 = |key: &'static [u8]| read_meta_seq(&dir, &meta, key);
        let deleted_through = read_u64(META_DELETED_THROUGH)?;
        let watermark = read_u64(META_WATERMARK)?;
        // Leftovers of a deletion interrupted by a crash.
        if deleted_through > 0 {
            for kv in records.range(..=be(deleted_through)) {
                let (k, _) = kv.map_err(open_err(&dir, "scan leftovers"))?;
                records
                    .remove(k)
                    .map_err(open_err(&dir, "remove leftovers"))?;
            }
        }
        let live = LiveRecords::count(&dir, &records)?;
        let inflight = meta
            .contains_key(META_INFLIGHT)
            .map_err(open_err(&dir, "read inflight"))?;
        let next_seq = live.last.max(deleted_through).max(watermark) + 1;
        let stats = Arc::new(JournalStats::default());
        stats.live_bytes.store(live.bytes, Ordering::Relaxed);
        stats.durable_through.store(next_seq - 1, Ordering::Relaxed);
        let handles = Handles { db, records, meta };
        let journal = Journal::assemble(cfg.clone(), Some(handles), next_seq, stats);
        // Make the layout key (and leftover removal) durable before anything relies on it.
        journal.sync().map_err(OpenFailure::Other)?;
        let report = OpenReport {
            moved_aside: None,
            records: live.count,
            first_seq: live.first,
            next_seq,
            watermark,
            inflight,
            salvaged: Vec::new(),
            salvage_failed: Vec::new(),
        };
        Ok((journal, report))
    }

    /// Like [`Journal::open`], but a journal that cannot be opened for lack of space (the
    /// filesystem is full, not damaged) is returned unopened, with the error: every
    /// operation then fails with [`StoreError::Reopening`] until [`Journal::reopen`]
    /// succeeds (the [`Appender`] retries it with backoff). Other failures are returned.
    pub fn open_or_wait(
        cfg: StoreConfig,
    ) -> Result<(Journal, OpenReport, Option<StoreError>), StoreError> {
        match Journal::open(cfg.clone()) {
            Ok((j, report)) => Ok((j, report, None)),
            Err(e) if e.is_no_space() => {
                let j = Journal::assemble(cfg, None, 1, Arc::new(JournalStats::default()));
                Ok((j, OpenReport::default(), Some(e)))
            }
            Err(e) => Err(e),
        }
    }

    /// Drops sled's handle and opens the directory again (as [`Journal::open`] does: a
    /// journal sled cannot read back is moved aside), after an I/O error broke the handle
    /// ([`Journal::needs_reopen`]) or to open a journal that had no space to open. What
    /// was reported durable is on disk and stays; appends after the last durable report
    /// may be lost (see [`Reopened`]). No sequence is handed out twice in this process: new
    /// appends continue after every sequence handed out before. On failure (e.g. still no
    /// space) the journal stays closed; call again later.
    pub fn reopen(&self) -> Result<Reopened, StoreError> {
        // The same order as `delete_prefix` (delete lock, then sequence lock).
        let deleting = self.delete_lock.lock().expect("delete lock");
        let mut next = self.next_seq.lock().expect("journal sequence lock");
        let lost_before = *next;
        let reported_durable = self.stats.durable_through.load(Ordering::Relaxed);
        let mut handles = self.handles.write().expect("journal handles lock");
        // sled's file lock goes once every clone of the old handle is dropped
        // (`Journal::open` waits up to LOCK_WAIT for stragglers).
        drop_sled(handles.take());
        let (fresh, report) = Journal::open_or_move_aside(&self.cfg)?;
        let taken = fresh.handles.write().expect("journal handles lock").take();
        let kept_through = *fresh.next_seq.lock().expect("journal sequence lock") - 1;
        *handles = taken;
        *next = lost_before.max(kept_through + 1);
        self.stats.live_bytes.store(
            fresh.stats.live_bytes.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.stats
            .durable_through
            .fetch_max(kept_through, Ordering::Relaxed);
        self.synced_blobs.lock().expect("blob set lock").clear();
        self.full.store(false, Ordering::Release);
        *self.broken_by.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.broken.store(false, Ordering::Release);
        drop(handles);
        drop(next);
        drop(deleting);
        // Salvaged records take sequences after every one handed out before; those not
        // reported durable are the caller's to append again (`Reopened`), so not taken.
        let (salvaged, salvage_failed) = match &report.moved_aside {
            Some(m) => self.salvage(Scope::Only(m.path.clone(), reported_durable)),
            None => (Vec::new(), Vec::new()),
        };
        Ok(Reopened {
            kept_through,
            lost_before,
            moved_aside: report.moved_aside,
            salvaged,
            salvage_failed,
        })
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Let sled's background writers finish so the file lock goes with this handle, and
        // mark the shutdown clean only if everything reached the disk.
        let Ok(h) = self.h() else { return };
        if !self.needs_reopen() && h.db.flush().is_ok() && self.fsync_files().is_ok() {
            let marker = self.dir.join(CLEAN_MARKER);
            if File::create(&marker).and_then(|f| f.sync_all()).is_ok() {
                let _ = fsync_path(&self.dir);
            }
        }
        drop(h);
        drop_sled(self.handles.write().map(|mut h| h.take()).ok());
    }
}

/// Creates `dir` and its missing ancestors, fsyncing each new directory's parent: a
/// directory entry is durable only once its parent is synced (a power cut would otherwise
/// take the whole new journal away, with records reported durable in it).
fn create_dir_durably(dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            create_dir_durably(parent)?;
        }
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fsync_path(parent)
}

/// The segment size to open `dir` with: the one its sled `conf` file records (sled refuses
/// to open a database with another), else `wanted` (clamped to what sled accepts).
pub fn segment_size_for(dir: &Path, wanted: usize) -> usize {
    let recorded = std::fs::read_to_string(dir.join("conf"))
        .ok()
        .and_then(|conf| {
            conf.lines()
                .find_map(|l| l.strip_prefix("segment_size:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
        })
        .filter(|s| s.is_power_of_two() && (256..=1 << 24).contains(s));
    recorded.unwrap_or_else(|| wanted.clamp(1 << 10, 1 << 24).next_power_of_two())
}

/// Opens sled's database in `cfg.dir`, retrying a lock another handle still holds for up to
/// [`LOCK_WAIT`]; a sled panic is taken as damage.
fn open_db(cfg: &StoreConfig) -> Result<sled::Db, OpenFailure> {
    let dir = &cfg.dir;
    let sled_cfg = sled::Config::new()
        .path(dir)
        .cache_capacity(cfg.cache_capacity)
        .segment_size(segment_size_for(dir, cfg.segment_size))
        .mode(sled::Mode::HighThroughput)
        // We flush ourselves (group commit); no background flusher thread.
        .flush_every_ms(None);
    // A journal just dropped in this process releases sled's file lock only once sled's
    // background writers finish: retry a lock conflict for a bounded time.
    let give_up = Instant::now() + LOCK_WAIT;
    let mut pause = Duration::from_millis(1);
    let opened = loop {
        let opened = catch_sled_panic(|| sled_cfg.open());
        match &opened {
            Ok(Err(sled::Error::Io(e)))
                if e.to_string().contains("could not acquire lock") && Instant::now() < give_up =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            _ => break opened,
        }
    };
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(classify_open_error(dir, e)),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(OpenFailure::Damaged(format!(
                "sled panicked on open: {msg}"
            )))
        }
    }
}

/// A sled error while opening: I/O is reported as it is, anything else is damage.
fn open_err<'a>(dir: &'a Path, op: &'static str) -> impl FnOnce(sled::Error) -> OpenFailure + 'a {
    move |e: sled::Error| match e {
        sled::Error::Io(_) => OpenFailure::Other(StoreError::from_sled(dir, op, e)),
        other => OpenFailure::Damaged(format!("{op}: {other}")),
    }
}

/// Checks the `layout` meta key; writes it into a new journal. A data file that had content
/// (`existing_bytes`) but yields no layout key is damage, not a fresh start.
fn check_layout(
    dir: &Path,
    records: &sled::Tree,
    meta: &sled::Tree,
    existing_bytes: u64,
) -> Result<(), OpenFailure> {
    match meta
        .get(META_LAYOUT)
        .map_err(open_err(dir, "read layout"))?
    {
        Some(v) if v.as_ref() == LAYOUT => Ok(()),
        Some(v) => Err(OpenFailure::Damaged(format!(
            "layout is {:?}, this build reads {:?}",
            String::from_utf8_lossy(&v),
            String::from_utf8_lossy(LAYOUT)
        ))),
        None => {
            if !records.is_empty() {
                return Err(OpenFailure::Damaged(
                    "records present but no layout key".into(),
                ));
            }
            if existing_bytes > 0 {
                return Err(OpenFailure::Damaged(format!(
                    "the data file had {existing_bytes} bytes but sled recovered no journal from it"
                )));
            }
            meta.insert(META_LAYOUT, LAYOUT)
                .map_err(open_err(dir, "write layout"))?;
            Ok(())
        }
    }
}

/// A meta key holding a BE `u64` (0 when absent).
fn read_meta_seq(dir: &Path, meta: &sled::Tree, key: &'static [u8]) -> Result<u64, OpenFailure> {
    match meta.get(key).map_err(open_err(dir, "read meta"))? {
        None => Ok(0),
        Some(v) => seq_of(&v).ok_or_else(|| {
            OpenFailure::Damaged(format!(
                "meta {} has {} bytes, expected 8",
                String::from_utf8_lossy(key),
                v.len()
            ))
        }),
    }
}

/// The records present at open.
struct LiveRecords {
    count: u64,
    /// Keys + values.
    bytes: u64,
    first: Option<u64>,
    /// 0 when none.
    last: u64,
}

impl LiveRecords {
    /// Scans every record, checking that keys are 8 bytes and strictly increasing.
    fn count(dir: &Path, records: &sled::Tree) -> Result<LiveRecords, OpenFailure> {
        let mut live = LiveRecords {
            count: 0,
            bytes: 0,
            first: None,
            last: 0,
        };
        for kv in records.iter() {
            let (k, v) = kv.map_err(open_err(dir, "scan records"))?;
            let seq = seq_of(&k).ok_or_else(|| {
                OpenFailure::Damaged(format!("record key of {} bytes, expected 8", k.len()))
            })?;
            if seq <= live.last {
                return Err(OpenFailure::Damaged(format!(
                    "record keys not increasing: {seq} after {}",
                    live.last
                )));
            }
            live.first.get_or_insert(seq);
            live.last = seq;
            live.count += 1;
            live.bytes += 8 + v.len() as u64;
        }
        Ok(live)
    }
}
