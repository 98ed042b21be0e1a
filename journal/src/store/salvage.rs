//! Salvage: what a journal moved aside as damaged (`<dir>.corrupt-<secs>`) still holds is
//! read back and handed to the live journal, so that acknowledged events still reach the
//! cloud.
//!
//! # Contract
//!
//! - The aside directory itself is never opened by sled nor written: the work is done on a
//!   copy (`<dir>.salvage-work`, next to it, removed afterwards), so a failed attempt
//!   changes nothing an operator could still look at.
//! - The copy is opened by the first strategy that gives a journal back ([`strategies`]):
//!   as is; without the newest snapshot file(s) (sled reads the last `snap.*` file in name
//!   order, so a `snap.<lsn>.generating` that a full filesystem cut short is read first and
//!   refused as corruption; without it sled reads the previous snapshot and the log after
//!   it); without any snapshot (sled rebuilds its page table from the log, which may bring
//!   back only part of it); then as a prefix of whole segments of the data file, last segment
//!   off first (at most [`MAX_PREFIX_ATTEMPTS`] prefixes). When the directory holds the data
//!   file as found before sled's recovery ([`super::RECOVERY_COPY_DIR`]), that file is used.
//!   A strategy counts only if the layout key is there (sled may open garbage as an empty
//!   database).
//! - What is taken ([`plan`]): the records after the upload watermark that were not in the
//!   in-flight batch are re-appended to the live journal, in order, under new journal
//!   sequences (they were never sent, so no batch id of theirs exists in the cloud). The
//!   in-flight batch (which the cloud may have stored without the board seeing the ack) is
//!   kept **whole, under its own id and bytes**, in the live journal's `salvaged_batches`
//!   tree; the uploader sends it before cutting new batches, and the cloud's dedupe by
//!   batch id stores it once. Records at or below the watermark were uploaded: not taken.
//!   The per-device dedupe marks are merged (highest wins); dead-letter records are
//!   carried over under new sequences, up to the live range's bound.
//! - Everything is written to the live journal and synced, together with the meta key
//!   `salvaged/<aside dir name>` = the aside directory's inode, **before** the directory is
//!   renamed `<dir>.salvaged-<secs>` (kept, never deleted). A crash in between finds the
//!   key at the next open and only renames: nothing is appended twice.
//! - Bounded: the copy and the re-appended records must leave the filesystem's free-space
//!   floor (`Quota::min_free_bytes`) and the quota intact; otherwise the directory is left
//!   as it is for a later start ([`SalvageFailure::deferred`]). A directory no strategy
//!   opens stays `.corrupt-*`, reported with sled's reason, and is tried again at the next
//!   start only ([`Journal::open`] looks at every sibling; [`Journal::reopen`] only at the
//!   one it has just moved aside).
//!
//! # Limits
//!
//! A prefix of the log is an older state of the journal: a batch acknowledged after that
//! state is not known to it, so its records come back as never sent and may be stored in
//! the cloud twice (the cloud has no per-record dedupe). Window summaries waiting in the
//! aside journal are not salvaged. The appends of one salvage are made durable by one sync
//! with the marker: a crash before that sync may leave part of them on disk without the
//! marker, and the salvage at the next start appends those again (duplicates, never a
//! loss). The same holds for a salvaged batch the cloud refused as too large, whose records
//! are appended before the batch is removed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::dead_letter::DEAD_LETTER_TREE;
use super::recovery::{catch_sled_panic, drop_sled, unix_secs};
use super::{
    be, fsync_path, seq_of, InFlight, Journal, StoreError, LAYOUT, MARKS_TREE,
    META_DELETED_THROUGH, META_INFLIGHT, META_LAYOUT, META_WATERMARK, RECOVERY_COPY_DIR,
};

/// The live tree of in-flight batches taken from salvaged journals: key = BE `u64`
/// (increasing), value = the postcard [`InFlight`] as it was persisted (no windows).
pub(super) const SALVAGED_BATCHES_TREE: &[u8] = b"salvaged_batches";
/// Prefix of the live meta keys saying which aside directory was salvaged.
const META_SALVAGED_PREFIX: &str = "salvaged/";
/// Most prefixes of the data file tried (each one is a copy).
pub const MAX_PREFIX_ATTEMPTS: u64 = 8;

/// One aside directory salvaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvaged {
    /// Where it is now (`<dir>.salvaged-<secs>`).
    pub path: PathBuf,
    /// How sled opened its copy ([`Strategy`]'s name).
    pub strategy: String,
    /// Records re-appended to the live journal.
    pub records: u64,
    /// The in-flight batch kept for upload under its own id: (id, records in it).
    pub batch: Option<(String, u32)>,
    /// Dead-letter records carried over.
    pub dead_letters: u64,
    /// Dead-letter records left in the salvaged directory (the live range was at its bound).
    pub dead_letters_left: u64,
}

impl Salvaged {
    /// Records salvaged: re-appended plus those in the kept batch.
    pub fn total_records(&self) -> u64 {
        self.records + self.batch.as_ref().map_or(0, |(_, n)| u64::from(*n))
    }
}

/// An aside directory not salvaged (it stays `.corrupt-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalvageFailure {
    /// The directory.
    pub path: PathBuf,
    /// Why (sled's reason for the last strategy, or the space that was missing).
    pub reason: String,
    /// Left for later for lack of space (not damage).
    pub deferred: bool,
}

/// A way of opening the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The directory as it is.
    AsIs,
    /// Without the newest this many of sled's snapshot files (sled reads the newest one
    /// left, then the log after it).
    OlderSnapshot(usize),
    /// Without any snapshot file: sled rebuilds its page table from the whole log.
    WithoutSnapshot,
    /// Without snapshot files, the data file cut to this many whole segments.
    Prefix(u64),
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Strategy::AsIs => write!(f, "as is"),
            Strategy::OlderSnapshot(n) => write!(f, "without the {n} newest snapshots"),
            Strategy::WithoutSnapshot => write!(f, "without snapshot"),
            Strategy::Prefix(n) => write!(f, "prefix of {n} segments"),
        }
    }
}

/// The strategies to try, in order, for a data file of `len` bytes in segments of
/// `segment` bytes, with `snapshots` snapshot files (pure).
pub fn strategies(len: u64, segment: u64, snapshots: usize) -> Vec<Strategy> {
    let segments = len.div_ceil(segment.max(1));
    let mut out = vec![Strategy::AsIs];
    out.extend((1..snapshots).map(Strategy::OlderSnapshot));
    out.push(Strategy::WithoutSnapshot);
    out.extend(
        (1..segments)
            .rev()
            .take(MAX_PREFIX_ATTEMPTS as usize)
            .map(Strategy::Prefix),
    );
    out
}

/// What a salvaged journal held, as read from its copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// Upload watermark.
    pub watermark: u64,
    /// `(journal sequence, bytes)` in order.
    pub records: Vec<(u64, Vec<u8>)>,
    /// The batch in flight, if any.
    pub inflight: Option<InFlight>,
    /// Whether its body decodes under its id (`reflex_records::decode_batch`).
    pub inflight_decodes: bool,
    /// Dedupe marks.
    pub marks: Vec<(Vec<u8>, u64)>,
    /// Dead-letter records (values as stored).
    pub dead_letters: Vec<Vec<u8>>,
}

/// What to hand to the live journal (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Records to re-append, in order (their old sequences dropped).
    pub append: Vec<Vec<u8>>,
    /// The in-flight batch to send under its own id.
    pub batch: Option<InFlight>,
}

/// Records after the watermark, at or below `through`, and outside the in-flight batch
/// are re-appended; the in-flight batch is kept whole if its body decodes (the cloud may
/// hold it under its id); one that does not decode cannot have been stored, so its
/// records are re-appended. `through` is `u64::MAX` at a start; at a reopen it is the last
/// sequence reported durable, as the caller appends the later ones again itself.
pub fn plan(found: &Found, through: u64) -> Plan {
    let batch = found
        .inflight
        .clone()
        .filter(|_| found.inflight_decodes)
        .map(|mut b| {
            b.windows.clear();
            b
        });
    let in_batch = |seq: u64| {
        batch
            .as_ref()
            .is_some_and(|b| (b.first_seq..=b.last_seq).contains(&seq))
    };
    let append = found
        .records
        .iter()
        .filter(|(seq, _)| *seq > found.watermark && *seq <= through && !in_batch(*seq))
        .map(|(_, v)| v.clone())
        .collect();
    Plan { append, batch }
}

/// The aside directories of journal `name` among `entries` (file names in its parent),
/// oldest first (pure).
pub fn aside_dirs<'a>(name: &str, entries: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let prefix = format!("{name}.corrupt-");
    let mut out: Vec<(u64, String)> = entries
        .into_iter()
        .filter_map(|e| {
            let rest = e.strip_prefix(&prefix)?;
            let secs = rest.split('-').next()?.parse::<u64>().ok()?;
            Some((secs, e.to_owned()))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, e)| e).collect()
}

/// Whether `need` more bytes fit above the free-space `floor` with `free` bytes free
/// (pure).
pub fn fits(free: u64, need: u64, floor: u64) -> bool {
    free.checked_sub(need).is_some_and(|left| left >= floor)
}

/// Which aside directories [`Journal::salvage`] looks at.
#[derive(Debug, Clone)]
pub(super) enum Scope {
    /// Every `<dir>.corrupt-*` sibling (at open).
    All,
    /// Only this one (just moved aside by a reopen), and only its records up to this
    /// sequence (the last one reported durable: the caller appends the later ones again).
    Only(PathBuf, u64),
}

/// The outcome of one directory.
enum Outcome {
    Done(Salvaged),
    Failed(SalvageFailure),
}

impl Journal {
    /// Salvages the aside directories in `scope` into this (open) journal.
    pub(super) fn salvage(&self, scope: Scope) -> (Vec<Salvaged>, Vec<SalvageFailure>) {
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        let parent = match self.dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (dirs, through): (Vec<PathBuf>, u64) = match scope {
            Scope::Only(p, through) => (vec![p], through),
            Scope::All => {
                let entries: Vec<String> = std::fs::read_dir(&parent)
                    .map(|rd| {
                        rd.filter_map(|e| e.ok())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                let dirs = aside_dirs(&name, entries.iter().map(String::as_str))
                    .into_iter()
                    .map(|d| parent.join(d))
                    .collect();
                (dirs, u64::MAX)
            }
        };
        let work = parent.join(format!("{name}.salvage-work"));
        // Left by a salvage that crashed.
        let _ = std::fs::remove_dir_all(&work);
        for aside in dirs {
            let _ = std::fs::remove_dir_all(&work);
            let outcome = self.salvage_one(&aside, &work, through);
            let _ = std::fs::remove_dir_all(&work);
            match outcome {
                Outcome::Done(s) => {
                    tracing::warn!(from = %aside.display(), to = %s.path.display(),
                        strategy = %s.strategy, records = s.records,
                        batch = ?s.batch, dead_letters = s.dead_letters,
                        "salvaged a journal that was moved aside");
                    done.push(s);
                }
                Outcome::Failed(f) => {
                    tracing::error!(dir = %f.path.display(), reason = %f.reason,
                        deferred = f.deferred,
                        "could not salvage a journal that was moved aside; kept as it is, tried again at the next start");
                    failed.push(f);
                }
            }
        }
        (done, failed)
    }

    fn salvage_one(&self, aside: &Path, work: &Path, through: u64) -> Outcome {
        let fail = |reason: String, deferred| {
            Outcome::Failed(SalvageFailure {
                path: aside.to_owned(),
                reason,
                deferred,
            })
        };
        let aside_name = aside
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ino = match std::fs::metadata(aside) {
            Ok(m) => m.ino(),
            Err(e) => return fail(format!("cannot read {}: {e}", aside.display()), false),
        };
        let marker = format!("{META_SALVAGED_PREFIX}{aside_name}");
        match self.salvaged_marker(&marker) {
            Ok(Some(i)) if i == ino => {
                // Salvaged before a crash stopped the rename: only rename.
                return match mark_salvaged(aside) {
                    Ok(path) => Outcome::Done(Salvaged {
                        path,
                        strategy: "salvaged before".into(),
                        records: 0,
                        batch: None,
                        dead_letters: 0,
                        dead_letters_left: 0,
                    }),
                    Err(e) => fail(format!("rename: {e}"), false),
                };
            }
            Ok(_) => {}
            Err(e) => return fail(e.to_string(), false),
        }
        // Space for the copy first.
        let source_db = if aside.join(RECOVERY_COPY_DIR).join("db").is_file() {
            aside.join(RECOVERY_COPY_DIR).join("db")
        } else {
            aside.join("db")
        };
        let copy_bytes = dir_bytes(aside).saturating_sub(dir_bytes(&aside.join(RECOVERY_COPY_DIR)));
        let space = match self.space() {
            Ok(s) => s,
            Err(e) => return fail(e.to_string(), false),
        };
        let floor = self.cfg.quota.min_free_bytes;
        if !fits(space.fs_free_bytes, copy_bytes, floor) {
            return fail(
                format!(
                    "no room for a {copy_bytes} byte working copy: {} bytes free, floor {floor}",
                    space.fs_free_bytes
                ),
                true,
            );
        }
        let (strategy, found) = match open_copy(aside, &source_db, work, self.cfg.segment_size) {
            Ok(opened) => opened,
            Err((reason, deferred)) => return fail(reason, deferred),
        };
        let plan = plan(&found, through);
        let bytes: u64 = plan.append.iter().map(|r| 8 + r.len() as u64).sum();
        let q = &self.cfg.quota;
        let live = self
            .stats
            .live_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        let grown = ((live + bytes) as f64 * q.amplification) as u64;
        let need = (bytes as f64 * q.amplification) as u64;
        let free = self.space().map_or(0, |s| s.fs_free_bytes);
        if grown > q.quota_bytes || !fits(free, need, floor) {
            return fail(
                format!(
                    "{} records ({bytes} bytes) do not fit: quota {} with {live} live bytes, {free} bytes free, floor {floor}",
                    plan.append.len(),
                    q.quota_bytes
                ),
                true,
            );
        }
        let (dead_letters, dead_letters_left) = match self.take_salvage(&plan, &found, &marker, ino)
        {
            Ok(n) => n,
            Err(e) => {
                let deferred = matches!(e, StoreError::NoSpace { .. } | StoreError::Full { .. });
                return fail(format!("writing to the live journal: {e}"), deferred);
            }
        };
        match mark_salvaged(aside) {
            Ok(path) => Outcome::Done(Salvaged {
                path,
                strategy: strategy.to_string(),
                records: plan.append.len() as u64,
                batch: plan.batch.as_ref().map(|b| (b.id.clone(), b.count)),
                dead_letters,
                dead_letters_left,
            }),
            Err(e) => fail(format!("salvaged, but the rename failed: {e}"), false),
        }
    }

    fn salvaged_marker(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .h()?
            .meta
            .get(key.as_bytes())
            .map_err(self.sled_err("read salvage marker"))?
            .and_then(|v| seq_of(&v)))
    }

    /// Writes the plan, marks, dead letters and the marker; synced. Returns the dead
    /// letters carried over and left.
    fn take_salvage(
        &self,
        plan: &Plan,
        found: &Found,
        marker: &str,
        ino: u64,
    ) -> Result<(u64, u64), StoreError> {
        let h = self.h()?;
        // Marks: highest wins.
        let marks =
            h.db.open_tree(MARKS_TREE)
                .map_err(self.sled_err("open marks"))?;
        for (device, seq) in &found.marks {
            let seq = *seq;
            marks
                .fetch_and_update(device, |old| {
                    let old = old.and_then(|v| v.try_into().ok()).map(u64::from_be_bytes);
                    Some(be(old.map_or(seq, |o| o.max(seq))).to_vec())
                })
                .map_err(self.sled_err("write mark"))?;
        }
        // Dead letters, under new sequences, up to the bound.
        let held = self.dead_letter_len()?;
        let room = self.cfg.dead_letter_max_records.saturating_sub(held) as usize;
        let carried = found.dead_letters.len().min(room);
        if carried > 0 {
            let tree =
                h.db.open_tree(DEAD_LETTER_TREE)
                    .map_err(self.sled_err("open dead letter"))?;
            let mut next = self.next_seq.lock().expect("journal sequence lock");
            for value in &found.dead_letters[..carried] {
                tree.insert(be(*next), value.as_slice())
                    .map_err(self.sled_err("write dead letter"))?;
                *next += 1;
            }
            *self
                .stats
                .dead_letter_by_reason
                .lock()
                .expect("dead letter counts lock") = None;
        }
        for record in &plan.append {
            self.append(record)?;
        }
        if let Some(batch) = &plan.batch {
            let tree =
                h.db.open_tree(SALVAGED_BATCHES_TREE)
                    .map_err(self.sled_err("open salvaged batches"))?;
            let key = tree
                .last()
                .map_err(self.sled_err("read salvaged batches"))?
                .and_then(|(k, _)| seq_of(&k))
                .map_or(1, |k| k + 1);
            let bytes = postcard::to_allocvec(batch).expect("postcard to Vec is infallible");
            tree.insert(be(key), bytes)
                .map_err(self.sled_err("write salvaged batch"))?;
        }
        h.meta
            .insert(marker.as_bytes(), &be(ino))
            .map_err(self.sled_err("write salvage marker"))?;
        self.sync()?;
        if carried > 0 {
            self.dead_letter_counts()?;
        }
        Ok((carried as u64, (found.dead_letters.len() - carried) as u64))
    }

    /// The first in-flight batch taken from a salvaged journal, with its key: the uploader
    /// sends it, under its own id, before cutting new batches.
    pub fn salvaged_batch(&self) -> Result<Option<(u64, InFlight)>, StoreError> {
        let tree = self
            .h()?
            .db
            .open_tree(SALVAGED_BATCHES_TREE)
            .map_err(self.sled_err("open salvaged batches"))?;
        let Some((k, v)) = tree
            .first()
            .map_err(self.sled_err("read salvaged batches"))?
        else {
            return Ok(None);
        };
        let key = seq_of(&k).ok_or_else(|| StoreError::Meta {
            key: "salvaged_batches",
            detail: format!("key of {} bytes", k.len()),
        })?;
        let batch = postcard::from_bytes::<InFlight>(&v).map_err(|e| StoreError::Meta {
            key: "salvaged_batches",
            detail: format!("batch {key}: {e}"),
        })?;
        Ok(Some((key, batch)))
    }

    /// Salvaged batches waiting to be sent.
    pub fn salvaged_batches_len(&self) -> Result<usize, StoreError> {
        Ok(self
            .h()?
            .db
            .open_tree(SALVAGED_BATCHES_TREE)
            .map_err(self.sled_err("open salvaged batches"))?
            .len())
    }

    /// Records the cloud's ack of the salvaged batch `key`: its refused records are filed
    /// in the dead-letter range under new sequences (synced), then the batch is removed
    /// (synced). The watermark is not touched: the batch's sequences were the aside
    /// journal's.
    pub fn ack_salvaged(
        &self,
        key: u64,
        batch: &InFlight,
        refused: &[(u64, String)],
        now_unix_us: u64,
    ) -> Result<(), StoreError> {
        if !refused.is_empty() {
            let decoded = reflex_records::decode_batch(&batch.compressed, None).map_err(|e| {
                StoreError::Meta {
                    key: "salvaged_batches",
                    detail: format!("batch {} does not decode: {e}", batch.id),
                }
            })?;
            let records: Vec<(u64, Vec<u8>)> = decoded
                .records
                .iter()
                .map(|(s, r)| (*s, r.encode()))
                .collect();
            let filed =
                super::file_refusals(&records, refused).map_err(|detail| StoreError::Meta {
                    key: "salvaged_batches",
                    detail,
                })?;
            self.file_dead_letters_renumbered(&batch.id, filed, now_unix_us)?;
        }
        self.h()?
            .db
            .open_tree(SALVAGED_BATCHES_TREE)
            .map_err(self.sled_err("open salvaged batches"))?
            .remove(be(key))
            .map_err(self.sled_err("remove salvaged batch"))?;
        self.sync()
    }

    /// The cloud refused the salvaged batch `key` as too large (nothing stored): its
    /// records are re-appended (new sequences, so the uploader cuts them smaller) and the
    /// batch removed, in one sync.
    pub fn unbatch_salvaged(&self, key: u64, batch: &InFlight) -> Result<u64, StoreError> {
        let decoded = reflex_records::decode_batch(&batch.compressed, None).map_err(|e| {
            StoreError::Meta {
                key: "salvaged_batches",
                detail: format!("batch {} does not decode: {e}", batch.id),
            }
        })?;
        for i in 0..decoded.records.len() {
            self.append(&decoded.standalone(i))?;
        }
        self.h()?
            .db
            .open_tree(SALVAGED_BATCHES_TREE)
            .map_err(self.sled_err("open salvaged batches"))?
            .remove(be(key))
            .map_err(self.sled_err("remove salvaged batch"))?;
        self.sync()?;
        Ok(decoded.records.len() as u64)
    }
}

/// Opens a copy of `aside` (with `source_db` as its data file) in `work` by the first
/// strategy that works; else the last reason, and whether it was for lack of space.
fn open_copy(
    aside: &Path,
    source_db: &Path,
    work: &Path,
    segment_size: usize,
) -> Result<(Strategy, Found), (String, bool)> {
    let len = std::fs::metadata(source_db).map_or(0, |m| m.len());
    let segment = super::open::segment_size_for(aside, segment_size) as u64;
    let mut last_reason = String::from("no strategy to try");
    for strategy in strategies(len, segment, snapshot_files(aside).len()) {
        let _ = std::fs::remove_dir_all(work);
        if let Err(e) = prepare_copy(aside, source_db, work, strategy, segment) {
            let no_space = e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error());
            return Err((format!("working copy ({strategy}): {e}"), no_space));
        }
        match read_copy(work, segment as usize) {
            Ok(found) => return Ok((strategy, found)),
            Err(reason) => last_reason = format!("{strategy}: {reason}"),
        }
    }
    Err((last_reason, false))
}

/// Renames `aside` (`<dir>.corrupt-<secs>…`) to `<dir>.salvaged-<secs>` (`-N` if taken)
/// and syncs the parent.
fn mark_salvaged(aside: &Path) -> std::io::Result<PathBuf> {
    let name = aside
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = name
        .split(".corrupt-")
        .next()
        .unwrap_or("journal")
        .to_owned();
    let stamp = unix_secs();
    let mut to = aside.with_file_name(format!("{base}.salvaged-{stamp}"));
    let mut n = 1;
    while to.exists() {
        to = aside.with_file_name(format!("{base}.salvaged-{stamp}-{n}"));
        n += 1;
    }
    std::fs::rename(aside, &to)?;
    if let Some(parent) = to.parent() {
        fsync_path(parent)?;
    }
    Ok(to)
}

/// sled's snapshot files in `dir`, in the order sled sorts them (it reads the last).
fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("snap."))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Bytes of the files under `dir` (recursively).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// Copies `from` into `to` (recursively), leaving out the pre-recovery copy.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let name = e.file_name();
        if name == RECOVERY_COPY_DIR {
            continue;
        }
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &to.join(&name))?;
        } else {
            std::fs::copy(e.path(), to.join(&name))?;
        }
    }
    Ok(())
}

/// Makes `work` a copy of `aside` with `source_db` as its data file, as `strategy` says.
fn prepare_copy(
    aside: &Path,
    source_db: &Path,
    work: &Path,
    strategy: Strategy,
    segment: u64,
) -> std::io::Result<()> {
    copy_tree(aside, work)?;
    std::fs::copy(source_db, work.join("db"))?;
    let snaps = snapshot_files(work);
    let drop = match strategy {
        Strategy::AsIs => 0,
        Strategy::OlderSnapshot(n) => n,
        Strategy::WithoutSnapshot | Strategy::Prefix(_) => snaps.len(),
    };
    for path in snaps.iter().rev().take(drop) {
        std::fs::remove_file(path)?;
    }
    if let Strategy::Prefix(n) = strategy {
        std::fs::OpenOptions::new()
            .write(true)
            .open(work.join("db"))?
            .set_len(n * segment)?;
    }
    Ok(())
}

/// Opens the copy in `work` with sled and reads what the journal held; sled's reason when
/// it cannot.
fn read_copy(work: &Path, segment: usize) -> Result<Found, String> {
    let cfg = sled::Config::new()
        .path(work)
        .cache_capacity(4 << 20)
        .segment_size(segment)
        .flush_every_ms(None);
    let db = match catch_sled_panic(|| cfg.open()) {
        Ok(Ok(db)) => db,
        Ok(Err(e)) => return Err(format!("sled: {e}")),
        Err(_) => return Err("sled panicked on open".into()),
    };
    let found = catch_sled_panic(|| read_found(&db))
        .unwrap_or_else(|_| Err("sled panicked while reading".into()));
    drop_sled(db);
    found
}

fn read_found(db: &sled::Db) -> Result<Found, String> {
    fn e(op: &'static str) -> impl Fn(sled::Error) -> String {
        move |e| format!("{op}: {e}")
    }
    let meta = db.open_tree("meta").map_err(e("open meta"))?;
    match meta.get(META_LAYOUT).map_err(e("read layout"))? {
        Some(v) if v.as_ref() == LAYOUT => {}
        Some(v) => return Err(format!("layout is {:?}", String::from_utf8_lossy(&v))),
        None => return Err("no journal in it (no layout key)".into()),
    }
    let u64_of = |key: &[u8]| -> Result<u64, String> {
        Ok(meta
            .get(key)
            .map_err(e("read meta"))?
            .and_then(|v| seq_of(&v))
            .unwrap_or(0))
    };
    let watermark = u64_of(META_WATERMARK)?;
    let deleted_through = u64_of(META_DELETED_THROUGH)?;
    let inflight = match meta.get(META_INFLIGHT).map_err(e("read inflight"))? {
        None => None,
        Some(v) => postcard::from_bytes::<InFlight>(&v).ok(),
    };
    let inflight_decodes = inflight
        .as_ref()
        .is_some_and(|b| reflex_records::decode_batch(&b.compressed, Some(&b.id)).is_ok());
    let mut found = Found {
        watermark,
        inflight,
        inflight_decodes,
        ..Found::default()
    };
    let records = db.open_tree("records").map_err(e("open records"))?;
    for kv in records.range(be(deleted_through.saturating_add(1))..) {
        let (k, v) = kv.map_err(e("scan records"))?;
        if let Some(seq) = seq_of(&k) {
            found.records.push((seq, v.to_vec()));
        }
    }
    for kv in db.open_tree(MARKS_TREE).map_err(e("open marks"))?.iter() {
        let (k, v) = kv.map_err(e("read marks"))?;
        if let Some(seq) = seq_of(&v) {
            found.marks.push((k.to_vec(), seq));
        }
    }
    for kv in db
        .open_tree(DEAD_LETTER_TREE)
        .map_err(e("open dead letter"))?
        .iter()
    {
        let (_, v) = kv.map_err(e("read dead letter"))?;
        found.dead_letters.push(v.to_vec());
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(first: u64, last: u64) -> InFlight {
        let recs: Vec<(u64, Vec<u8>)> = (first..=last).map(|s| (s, vec![s as u8])).collect();
        let b = reflex_records::encode_batch_with_windows(
            "n1",
            recs.iter().map(|(s, v)| (*s, v.as_slice())),
            &[],
        );
        InFlight {
            id: b.id,
            first_seq: first,
            last_seq: last,
            count: b.header.count,
            compressed: b.compressed,
            windows: vec![7],
        }
    }

    #[test]
    fn records_after_the_watermark_and_outside_the_batch_are_re_appended_in_order() {
        let found = Found {
            watermark: 3,
            records: (2..=9).map(|s| (s, vec![s as u8])).collect(),
            inflight: Some(batch(4, 6)),
            inflight_decodes: true,
            ..Found::default()
        };
        let p = plan(&found, u64::MAX);
        assert_eq!(p.append, vec![vec![7], vec![8], vec![9]]);
        assert_eq!(
            plan(&found, 8).append,
            vec![vec![7], vec![8]],
            "at a reopen, only what was reported durable"
        );
        let b = p.batch.unwrap();
        assert_eq!((b.first_seq, b.last_seq), (4, 6));
        assert!(
            b.windows.is_empty(),
            "window keys of the aside journal dropped"
        );
    }

    #[test]
    fn an_in_flight_batch_that_does_not_decode_gives_its_records_back_instead() {
        let found = Found {
            watermark: 3,
            records: (4..=7).map(|s| (s, vec![s as u8])).collect(),
            inflight: Some(batch(4, 6)),
            inflight_decodes: false,
            ..Found::default()
        };
        let p = plan(&found, u64::MAX);
        assert_eq!(p.batch, None);
        assert_eq!(p.append.len(), 4);
    }

    #[test]
    fn strategies_go_from_as_is_to_older_snapshots_to_shorter_prefixes_last_segment_first() {
        let s = strategies(4 * 512 + 10, 512, 3);
        assert_eq!(
            s,
            vec![
                Strategy::AsIs,
                Strategy::OlderSnapshot(1),
                Strategy::OlderSnapshot(2),
                Strategy::WithoutSnapshot,
                Strategy::Prefix(4),
                Strategy::Prefix(3),
                Strategy::Prefix(2),
                Strategy::Prefix(1)
            ]
        );
        assert_eq!(
            strategies(100 << 20, 512, 0).len(),
            2 + MAX_PREFIX_ATTEMPTS as usize
        );
    }

    #[test]
    fn only_this_journals_corrupt_siblings_are_found_oldest_first() {
        let found = aside_dirs(
            "journal",
            [
                "journal.corrupt-20",
                "journal.corrupt-10-1",
                "journal.salvaged-5",
                "journal2.corrupt-1",
                "journal",
                "journal.corrupt-x",
            ],
        );
        assert_eq!(found, vec!["journal.corrupt-10-1", "journal.corrupt-20"]);
    }

    #[test]
    fn salvage_fits_only_above_the_free_space_floor() {
        assert!(fits(100, 40, 60));
        assert!(!fits(100, 41, 60));
        assert!(!fits(10, 20, 0));
    }
}
