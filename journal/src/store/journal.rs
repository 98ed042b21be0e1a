//! The journal handle: sled's database and trees, appends, and syncs that make them durable
//! as configured ([`Durability`]).

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

#[cfg(doc)]
use super::Appender;
use super::{be, fsync_path, Durability, JournalStats, StoreConfig, StoreError};

/// Largest value [`Journal::append`] accepts, bytes.
pub const MAX_RECORD_BYTES: usize = 64 << 10;

/// Appends between two [`release_deferred_frees`] on the appending thread (a 512 KiB
/// segment holds about 370 records of 1.4 KB).
const RELEASE_EVERY_APPENDS: u64 = 32;

/// The journal. Shared by the appender, the uploader and the daemon (`Arc<Journal>`).
pub struct Journal {
    pub(super) dir: PathBuf,
    pub(super) cfg: StoreConfig,
    /// sled's handles; `None` while the journal is being reopened, or until a journal that
    /// could not be opened for lack of space opens ([`Journal::open_or_wait`]).
    pub(super) handles: RwLock<Option<Arc<Handles>>>,
    /// Set by an I/O error (sled refuses every write on a handle after one): the handle
    /// must be reopened ([`Journal::reopen`]).
    pub(super) broken: AtomicBool,
    /// What set `broken` first since the last open, for [`StoreError::Reopening`]: later
    /// operations fail as not open, and without it the cause would be lost behind them.
    pub(super) broken_by: Mutex<Option<String>>,
    /// The next sequence; held while inserting so keys follow append order.
    pub(super) next_seq: Mutex<u64>,
    /// Serialises prefix deletions.
    pub(super) delete_lock: Mutex<()>,
    /// Set while appends are refused (backpressure, or a filesystem below half its floor).
    pub(super) full: AtomicBool,
    /// Blob files already fsynced (a new one is fsynced once, with its directory).
    pub(super) synced_blobs: Mutex<HashSet<PathBuf>>,
    pub(super) stats: Arc<JournalStats>,
}

/// One open sled database and its trees.
pub(super) struct Handles {
    pub(super) db: sled::Db,
    pub(super) records: sled::Tree,
    pub(super) meta: sled::Tree,
}

impl Journal {
    /// A journal over `handles` (`None`: not open, so broken until [`Journal::reopen`]),
    /// handing out `next_seq` next.
    pub(super) fn assemble(
        cfg: StoreConfig,
        handles: Option<Handles>,
        next_seq: u64,
        stats: Arc<JournalStats>,
    ) -> Journal {
        Journal {
            dir: cfg.dir.clone(),
            broken: AtomicBool::new(handles.is_none()),
            broken_by: Mutex::new(None),
            handles: RwLock::new(handles.map(Arc::new)),
            next_seq: Mutex::new(next_seq),
            delete_lock: Mutex::new(()),
            full: AtomicBool::new(false),
            synced_blobs: Mutex::new(HashSet::new()),
            stats,
            cfg,
        }
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// Shared counters.
    pub fn stats(&self) -> Arc<JournalStats> {
        self.stats.clone()
    }

    pub(super) fn sled_err(&self, op: &'static str) -> impl FnOnce(sled::Error) -> StoreError + '_ {
        move |e| {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            let e = StoreError::from_sled(&self.dir, op, e);
            if matches!(e, StoreError::NoSpace { .. } | StoreError::Io { .. }) {
                self.mark_broken(&e);
            }
            e
        }
    }

    /// Marks the handle broken by `e` (kept as the cause unless one is already kept).
    pub(super) fn mark_broken(&self, e: &StoreError) {
        let mut by = self.broken_by.lock().unwrap_or_else(|p| p.into_inner());
        if by.is_none() {
            *by = Some(e.to_string());
        }
        self.broken.store(true, Ordering::Release);
    }

    /// [`StoreError::Reopening`] for this journal, with what broke it.
    pub(super) fn not_open(&self) -> StoreError {
        let cause = match &*self.broken_by.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => format!("being reopened after: {e}"),
            None => "not opened yet, or being reopened (waiting for space)".to_owned(),
        };
        StoreError::Reopening {
            dir: self.dir.clone(),
            cause,
        }
    }

    /// sled's handles, or [`StoreError::Reopening`] while there are none.
    pub(super) fn h(&self) -> Result<Arc<Handles>, StoreError> {
        self.handles
            .read()
            .expect("journal handles lock")
            .clone()
            .ok_or_else(|| self.not_open())
    }

    /// Whether an I/O error (e.g. a full filesystem) broke the handle, or the journal has
    /// not opened yet: [`Journal::reopen`] must run before appends succeed again.
    pub fn needs_reopen(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Appends one value (not yet durable: see [`Journal::sync`] and [`Appender`]).
    /// Returns its journal sequence.
    pub fn append(&self, value: &[u8]) -> Result<u64, StoreError> {
        if value.len() > MAX_RECORD_BYTES {
            return Err(StoreError::RecordTooLarge {
                len: value.len(),
                max: MAX_RECORD_BYTES,
            });
        }
        if self.needs_reopen() {
            return Err(self.not_open());
        }
        if self.full.load(Ordering::Acquire) {
            self.stats.refused_appends.fetch_add(1, Ordering::Relaxed);
            let s = &self.stats;
            return Err(StoreError::Full {
                live_bytes: s.live_bytes.load(Ordering::Relaxed),
                files_bytes: s.files_bytes.load(Ordering::Relaxed),
                quota_bytes: self.cfg.quota.quota_bytes,
                fs_free_bytes: s.fs_free_bytes.load(Ordering::Relaxed),
            });
        }
        let mut next = self.next_seq.lock().expect("journal sequence lock");
        let seq = *next;
        self.h()?
            .records
            .insert(be(seq), value)
            .map_err(self.sled_err("append"))?;
        *next = seq + 1;
        drop(next);
        if seq.is_multiple_of(RELEASE_EVERY_APPENDS) {
            release_deferred_frees();
        }
        self.stats.appended.fetch_add(1, Ordering::Relaxed);
        self.stats
            .live_bytes
            .fetch_add(8 + value.len() as u64, Ordering::Relaxed);
        Ok(seq)
    }

    /// The sequence of the last append (0 if none ever).
    pub fn last_seq(&self) -> u64 {
        *self.next_seq.lock().expect("journal sequence lock") - 1
    }

    /// Makes every append that returned before this call durable, as configured
    /// ([`Durability`]).
    ///
    /// A broken journal ([`Journal::needs_reopen`]) never syncs: after a failed fsync, a
    /// second fsync reports success although the data of the first may never reach the
    /// disk (Linux reports a writeback error once), so nothing appended since the last
    /// durable report may be called durable until [`Journal::reopen`] has made the files
    /// agree with the disk.
    pub fn sync(&self) -> Result<(), StoreError> {
        if self.needs_reopen() {
            return Err(self.not_open());
        }
        let started = Instant::now();
        let through = self.last_seq();
        self.h()?.db.flush().map_err(self.sled_err("flush"))?;
        // A flush seals the current io buffer: free the ones sealed before.
        release_deferred_frees();
        if self.cfg.durability == Durability::Fsync {
            self.fsync_files().map_err(|e| {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                // After a failed fsync the kernel may have dropped the dirty pages: what
                // sled believes written is unknown, so read it back from disk.
                let e = StoreError::from_io(&self.dir, "fsync", e);
                self.mark_broken(&e);
                e
            })?;
        }
        self.stats
            .durable_through
            .fetch_max(through, Ordering::Relaxed);
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.stats
            .sync_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// fsyncs the data file, blob files not synced before (then their directory) and the
    /// journal directory.
    pub(super) fn fsync_files(&self) -> io::Result<()> {
        fsync_path(&self.dir.join("db"))?;
        let blobs = self.dir.join("blobs");
        let mut synced = self.synced_blobs.lock().expect("blob set lock");
        let mut new_blob = false;
        for entry in std::fs::read_dir(&blobs)? {
            let path = entry?.path();
            if !synced.contains(&path) {
                match fsync_path(&path) {
                    Ok(()) => {}
                    // sled removed it meanwhile.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                synced.insert(path);
                new_blob = true;
            }
        }
        if synced.len() > 1024 {
            synced.retain(|p| p.exists());
        }
        if new_blob {
            fsync_path(&blobs)?;
        }
        fsync_path(&self.dir)
    }
}

/// Hands this thread's deferred frees to crossbeam-epoch's global queue and collects what
/// is due. sled 0.34 frees each sealed io buffer (a whole segment) through the epoch
/// collector, and a thread keeps up to 64 deferred frees to itself until it pins 64 more
/// times: without this, the appending and flushing threads each sat on up to 64 segments
/// of dead buffers (see the `store` module doc, Memory).
fn release_deferred_frees() {
    crossbeam_epoch::pin().flush();
}
