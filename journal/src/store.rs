//! The journal on the board: sled 0.34, group commit, a disk quota, and recovery from a
//! journal that cannot be opened.
//!
//! # Layout
//!
//! One sled database in the configured directory, with three trees:
//!
//! - `records`: key = journal sequence as a big-endian `u64` (8 bytes, so byte order is
//!   numeric order), value = an encoded [`crate::record::JournalRecord`] (or any bytes handed
//!   to [`Journal::append`]). Journal sequences start at 1, are assigned by the journal, and
//!   are never reused for the life of the directory.
//! - `meta`: `layout` = [`LAYOUT`]; `deleted_through` = BE `u64`, every record at or below it
//!   has been deleted; `watermark` = BE `u64`, every record at or below it has been uploaded
//!   and acknowledged; `inflight` = the batch being uploaded (id, sequence range, compressed
//!   body), written *before* it is sent and removed with the watermark update after its ack.
//! - `windows`: key = BE `u64` (increasing), value = a live-monitoring window summary
//!   (opaque bytes) waiting to ride with an upload ([`Journal::append_window`]); deleted
//!   after the ack of the batch that carried it; at most [`MAX_PENDING_WINDOW_BYTES`] kept.
//!
//! # Invariants
//!
//! - Keys are strictly increasing in append order (one lock assigns a sequence and inserts).
//! - Records are deleted only as a prefix (`delete_through`): after an upload ack, or by the
//!   quota policy. So the live records are always one range `first..=last`, contiguous
//!   except for the sequences a reopen after an I/O error reported lost (see Errors):
//!   the same process never hands them out again (nothing in them was durable, so
//!   nothing was uploaded), and batches may carry such gaps.
//! - After a crash, the records that survive are a prefix of the appends in order, and they
//!   include every record that was reported durable ([`Appender::durable_through`]).
//! - `deleted_through` is written before the records it covers are removed; leftovers at or
//!   below it are removed again on open.
//!
//! # Durability
//!
//! sled's `flush()` writes its buffers with `sync_file_range`, which neither persists file
//! metadata (size, extents) nor flushes the disk's write cache. With [`Durability::Fsync`]
//! (the default) reflex promises: **a record reported durable survives a process crash,
//! a kernel crash and a power cut**, provided the disk honours cache flushes (any disk with
//! write barriers; ext4/xfs defaults). It holds because every group commit runs sled's
//! `flush()` and then `fsync` on sled's data file, its new blob files, the blob directory and
//! the journal directory. [`Durability::Flush`] promises only survival of a process crash
//! (`kill -9`): cheaper, weaker. What was not verified here: an actual power cut (only
//! `kill -9` is tested), and sled's own recovery code beyond that.
//!
//! # Quota
//!
//! sled 0.34 does not give space back when records are deleted: freed space is reused for
//! later writes, lazily, and the files keep (roughly) their high-water size. So the size on
//! disk alone cannot say whether the journal is full, and deleting cannot make it smaller.
//! reflex therefore interprets the quota as a bound on **what the journal keeps**, checked
//! against the measured files:
//!
//! - *Quota full*: the files (`size_on_disk` plus snapshot files) have reached `quota_bytes`
//!   **and** the live records (keys + values) times `amplification` (default 2: sled's files
//!   are about twice the live data while growing) no longer fit in `quota_bytes`. Then the
//!   journal deletes down to 90% of `quota_bytes / amplification` of live data.
//! - *Filesystem low*: statvfs says fewer than `min_free_bytes` are free. Then the journal
//!   deletes down to half its live data, and below half the floor it also refuses appends,
//!   whatever the policy, so that sled never meets ENOSPC (which stops the handle).
//!
//! Deleting means: first records already uploaded (present only with `keep_uploaded`;
//! counted in [`JournalStats::dropped_uploaded`], reflexd's
//! `reflexd_journal_dropped_uploaded_total`), then
//! the policy: [`FullPolicy::DropOldest`] deletes the oldest records (counted in
//! [`JournalStats::dropped_records`]); [`FullPolicy::Backpressure`] refuses appends with
//! [`StoreError::Full`] until an upload ack frees space (the caller stops acking; the broker
//! keeps the events). The quota is checked after every group commit and every upload ack, so
//! a burst can overshoot by one group.
//!
//! What the files then do, measured on this machine (1 KB records, 4 MiB quota, drop-oldest,
//! 200k appends): with a sync every 256 appends the files level off at 8–9 MiB (≈ 2× the
//! quota); at full append speed with 5 ms group commits, at 15–25 MiB (≈ 4–6×, more when
//! the machine is loaded), because sled reclaims segments more slowly than they fill.
//! Without a quota the same 200 MB of records take about twice that on disk. The files level off rather than grow, but
//! give the journal's filesystem several times `quota_bytes`, and keep `min_free_bytes` (the
//! hard backstop) above a few sled segments (default 64 MiB).
//!
//! # Memory
//!
//! `cache_capacity` bounds sled's page cache, not the process's memory. What grew was sled's
//! garbage: every sealed io buffer (one segment, 512 KiB) and every replaced tree node is
//! freed through crossbeam-epoch, and a thread keeps up to 64 deferred frees to itself
//! until it pins again often enough; a thread blocked in a flush holds the epoch back for
//! everyone. The journal therefore hands its appending and flushing threads' deferred frees
//! to the global collector (`crossbeam_epoch::pin().flush()` every 32 appends and after each
//! flush). Measured with `journal/examples/rss.rs` (1.2 KB records, group commit 256 / 5 ms,
//! fsync, 256 MiB quota, so ~105k records live once the quota is reached at ~110k appends;
//! this 2-core VM, busy with other builds), RSS now / peak in MiB:
//!
//! | run | before | with the flushes |
//! |---|---|---|
//! | 5k records/s, 200k records, at 100k / at 200k | 24/34, 44/45 | 21/26, 33/33 |
//! | flat out (~40k/s), 300–400k records, peak | 389 (once 986 with 128 KiB segments) | 57–260 |
//!
//! `CACHE_MIB=2` or `4`, `MALLOC_ARENA_MAX=2` and 128 KiB segments changed the 5k/s figures
//! by less than the run-to-run noise; flat out, with the machine busy, the peak still
//! depends on how long a flush stalls the epoch. Below the quota the RSS is flat in the
//! number of records; once the quota deletes, it rises by ~10 MiB (deletion reads the
//! oldest leaves back) and stays there. `Journal::len` reads every record through the cache:
//! do not call it on a hot path.
//!
//! # Errors
//!
//! No failure panics: a full filesystem surfaces as [`StoreError::NoSpace`], other I/O as
//! [`StoreError::Io`]. After an I/O error sled refuses all further writes on that handle,
//! so the journal marks itself broken ([`Journal::needs_reopen`]) and refuses appends with
//! [`StoreError::Reopening`] until [`Journal::reopen`] drops the handle and opens the
//! directory again, as [`Journal::open`] does. What was reported durable is kept; appends
//! after the last durable report may be lost, and the reopen says which sequences
//! ([`Reopened`]); the process does not hand those sequences out again. [`Appender::start_reopening`] does this with
//! backoff ([`ReopenBackoff`]: at once, then 0.1 s doubling to 5 s, reset by the next group
//! commit that makes records durable), so a filesystem that stays full costs one failed
//! open every 5 s. [`Journal::open_or_wait`] returns a journal that had no space to open
//! (ENOSPC, not damage) unopened, for the appender to open the same way once there is
//! room. Counted in [`JournalStats::reopens`] and `reopen_failures`.
//!
//! # Corruption
//!
//! If sled reports corruption (or panics) while opening, or opens a data file that had
//! content and finds no journal in it, the directory is renamed to
//! `<dir>.corrupt-<unix seconds>` (never deleted), a fresh journal is opened in its place,
//! and [`OpenReport::moved_aside`] says so (the daemon counts and logs it). An open that
//! fails for other reasons (lock held by another process, permission, no space) is returned
//! as an error and moves nothing.
//!
//! Limits, measured: when the start of sled's data file is unreadable, sled 0.34 does not
//! fail; it starts a new log over the file and reports an empty database. The journal
//! catches that (content but no layout key) and moves the directory aside, but by then sled
//! has rewritten part of the file (64 KiB damaged at the start of a 320 KB file: the file
//! grew to 512 KiB and half its bytes changed). So after an **unclean shutdown** (no
//! [`CLEAN_MARKER`] file, which a clean close writes after its last flush and fsync), the
//! data file is copied, fsynced, into [`RECOVERY_COPY_DIR`] before sled opens it, when it is
//! at most `recovery_copy_max_bytes` (default 512 MiB): the copy goes aside with the damaged
//! directory, and is removed when the journal opens fine. Its cost is one read and write of
//! the data file at each start after a crash (here 0.14 s for 128 MiB; a board writing
//! 20 MB/s would take ~6 s). Damage found after a clean shutdown (the disk
//! rotting under a closed journal) is moved aside as sled left it. A sled panic while
//! opening is caught with `catch_unwind` and taken as damage too. That needs a build that
//! unwinds: reflexd's release profile does, and its panic hook aborts on every other panic
//! as `panic = "abort"` would, asking [`panic_is_caught_here`] which one it is.
//!
//! Also measured (tests/enospc.rs): a log whose last write a full filesystem cut short is
//! now and then (1 run in 40 to 300 under CPU load) read by sled as corrupt when reopened,
//! with records reported durable in it or none. It is then moved aside like any damage:
//! kept whole, but its records are no longer served or uploaded. Keeping the free-space
//! floor (`Quota::min_free_bytes`) above zero keeps the journal away from a real ENOSPC.

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::record::JournalRecord;

/// The value of the `layout` meta key this build writes and reads.
pub const LAYOUT: &[u8] = b"reflex-journal/1";
/// Default sled page cache: small, for a board (sled's own default is 1 GiB).
pub const DEFAULT_CACHE_CAPACITY: u64 = 16 << 20;
/// Default sled segment (and io buffer) size: sled's own, 512 KiB. Values above about a
/// quarter of it go to blob files. A smaller one did not lower RSS (module doc, Memory).
pub const DEFAULT_SEGMENT_SIZE: usize = 512 << 10;
/// Largest value [`Journal::append`] accepts, bytes.
pub const MAX_RECORD_BYTES: usize = 64 << 10;

/// Batches refused as corrupt that are kept in meta for inspection.
pub const MAX_REJECTED_KEPT: usize = 8;

/// File written at a clean close (after the last flush) and removed at open: its absence
/// next to a non-empty data file means the last run did not close cleanly.
pub const CLEAN_MARKER: &str = "clean-shutdown";
/// Directory, inside the journal directory, holding the data file as found before sled's
/// recovery after an unclean shutdown; removed once the journal opened fine.
pub const RECOVERY_COPY_DIR: &str = "pre-recovery-copy";

/// How long [`Journal::open`] retries when another handle still holds sled's file lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Appends between two [`release_deferred_frees`] on the appending thread (a 512 KiB
/// segment holds about 370 records of 1.4 KB).
const RELEASE_EVERY_APPENDS: u64 = 32;

const META_LAYOUT: &[u8] = b"layout";
const META_DELETED_THROUGH: &[u8] = b"deleted_through";
const META_WATERMARK: &[u8] = b"watermark";
const META_INFLIGHT: &[u8] = b"inflight";
/// The tree of window summaries waiting for an upload (key: BE `u64`, increasing).
const WINDOWS_TREE: &[u8] = b"windows";
/// Most bytes of window summaries kept for the uploader; beyond, the oldest go.
pub const MAX_PENDING_WINDOW_BYTES: u64 = 16 << 20;

/// What a group commit does to make records durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// sled `flush()` only (`sync_file_range`): survives a process crash, not a power cut.
    Flush,
    /// sled `flush()`, then fsync of the data file, blob files and directories: survives a
    /// power cut on a disk that honours cache flushes.
    #[default]
    Fsync,
}

/// What to do when the journal is full and nothing uploaded is left to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// Delete the oldest records, counted.
    #[default]
    DropOldest,
    /// Refuse appends until uploads free space.
    Backpressure,
}

/// The disk quota.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// Target size of the journal's files, bytes.
    pub quota_bytes: u64,
    /// The filesystem must keep at least this much free, bytes.
    pub min_free_bytes: u64,
    /// Policy once uploaded records are gone.
    pub policy: FullPolicy,
    /// Disk bytes sled needs per live byte (measured ≈ 2).
    pub amplification: f64,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            quota_bytes: 256 << 20,
            min_free_bytes: 64 << 20,
            policy: FullPolicy::DropOldest,
            amplification: 2.0,
        }
    }
}

/// A reading of the space the journal uses and the filesystem has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpaceReading {
    /// sled's `size_on_disk` plus snapshot files.
    pub files_bytes: u64,
    /// Free bytes on the filesystem for unprivileged writers.
    pub fs_free_bytes: u64,
    /// Keys + values of the records present.
    pub live_bytes: u64,
}

/// Why the journal is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullReason {
    /// Files at the quota and no room inside them to reuse.
    Quota,
    /// The filesystem is below its free-space floor.
    FilesystemLow,
}

/// The quota's verdict on a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaVerdict {
    /// Appends may go on.
    Ok,
    /// Delete records until no more than `target_live_bytes` live bytes remain.
    Full {
        /// Why.
        reason: FullReason,
        /// Live bytes to get down to.
        target_live_bytes: u64,
        /// Refuse appends until the next check, whatever the policy (the filesystem is
        /// below half its floor).
        refuse_appends: bool,
    },
}

impl Quota {
    /// The verdict on `r` (pure).
    pub fn assess(&self, r: SpaceReading) -> QuotaVerdict {
        let needed = (r.live_bytes as f64 * self.amplification) as u64;
        if r.fs_free_bytes < self.min_free_bytes {
            // Deleting does not give the filesystem anything back; it lets sled reuse space
            // instead of growing. Shed half of the live data; below half the floor, also
            // refuse appends whatever the policy, so that sled never meets ENOSPC.
            return QuotaVerdict::Full {
                reason: FullReason::FilesystemLow,
                target_live_bytes: r.live_bytes / 2,
                refuse_appends: r.fs_free_bytes < self.min_free_bytes / 2,
            };
        }
        if r.files_bytes >= self.quota_bytes && needed >= self.quota_bytes {
            return QuotaVerdict::Full {
                reason: FullReason::Quota,
                target_live_bytes: (self.quota_bytes as f64 * 0.9 / self.amplification) as u64,
                refuse_appends: false,
            };
        }
        QuotaVerdict::Ok
    }
}

/// Journal configuration.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The journal directory (created if missing).
    pub dir: PathBuf,
    /// sled page cache, bytes.
    pub cache_capacity: u64,
    /// sled segment size for a new journal (a power of two, 1 KiB..=16 MiB); an existing
    /// journal keeps the size it was created with (sled cannot change it).
    pub segment_size: usize,
    /// What a group commit promises.
    pub durability: Durability,
    /// The quota.
    pub quota: Quota,
    /// Keep records after their upload ack (deleted first when full); default: delete at ack.
    pub keep_uploaded: bool,
    /// After an unclean shutdown, copy sled's data file aside before sled's recovery touches
    /// it, if it is at most this large (0: never). See the module doc, Corruption.
    pub recovery_copy_max_bytes: u64,
}

impl StoreConfig {
    /// Defaults for `dir`: 16 MiB cache, 512 KiB segments, fsync, 256 MiB quota,
    /// drop-oldest, delete at ack.
    pub fn new(dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            dir: dir.into(),
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            segment_size: DEFAULT_SEGMENT_SIZE,
            durability: Durability::Fsync,
            quota: Quota::default(),
            keep_uploaded: false,
            recovery_copy_max_bytes: 512 << 20,
        }
    }
}

/// A journal failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The filesystem is full. Nothing reported durable is lost; reopen after freeing space.
    #[error("no space left on the journal filesystem at {dir} during {op}")]
    NoSpace {
        /// Journal directory.
        dir: PathBuf,
        /// What was being done.
        op: &'static str,
    },
    /// The quota is reached and the policy is backpressure.
    #[error("journal full under backpressure: {live_bytes} live bytes, {files_bytes} bytes of files, quota {quota_bytes}, {fs_free_bytes} bytes free on the filesystem")]
    Full {
        /// Live bytes.
        live_bytes: u64,
        /// Size of the files.
        files_bytes: u64,
        /// The quota.
        quota_bytes: u64,
        /// Free on the filesystem.
        fs_free_bytes: u64,
    },
    /// Other I/O failure.
    #[error("journal i/o error at {dir} during {op}: {source}")]
    Io {
        /// Journal directory.
        dir: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
    /// sled failed for a reason other than I/O.
    #[error("sled error at {dir} during {op}: {message}")]
    Sled {
        /// Journal directory.
        dir: PathBuf,
        /// What was being done.
        op: &'static str,
        /// sled's message.
        message: String,
    },
    /// A damaged journal could not be moved aside.
    #[error("could not move damaged journal {from} to {to}: {source}")]
    MoveAside {
        /// The damaged directory.
        from: PathBuf,
        /// Where it was to go.
        to: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A record larger than [`MAX_RECORD_BYTES`].
    #[error("record of {len} bytes exceeds the {max} byte limit")]
    RecordTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Stored metadata that this build cannot read.
    #[error("unreadable journal metadata key {key}: {detail}")]
    Meta {
        /// Which key.
        key: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The appender has stopped.
    #[error("the journal appender has stopped")]
    Closed,
    /// The journal is not open: being reopened after an I/O error, or waiting for space
    /// to open at all.
    #[error(
        "the journal at {dir} is not open (reopening after an i/o error or waiting for space)"
    )]
    Reopening {
        /// Journal directory.
        dir: PathBuf,
    },
}

impl StoreError {
    fn from_io(dir: &Path, op: &'static str, e: io::Error) -> StoreError {
        if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
            || e.kind() == io::ErrorKind::StorageFull
        {
            StoreError::NoSpace {
                dir: dir.to_owned(),
                op,
            }
        } else {
            StoreError::Io {
                dir: dir.to_owned(),
                op,
                source: e,
            }
        }
    }

    fn from_sled(dir: &Path, op: &'static str, e: sled::Error) -> StoreError {
        match e {
            sled::Error::Io(e) => StoreError::from_io(dir, op, e),
            other => StoreError::Sled {
                dir: dir.to_owned(),
                op,
                message: other.to_string(),
            },
        }
    }

    /// Whether this is a full filesystem (the caller should stop acking and retry later).
    pub fn is_no_space(&self) -> bool {
        matches!(self, StoreError::NoSpace { .. })
    }
}

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
}

/// A damaged journal that was moved aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedAside {
    /// Where it is now.
    pub path: PathBuf,
    /// Why it could not be opened.
    pub reason: String,
}

/// The batch being uploaded, as persisted before it is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// Batch id.
    pub id: String,
    /// First journal sequence in it.
    pub first_seq: u64,
    /// Last journal sequence in it.
    pub last_seq: u64,
    /// Records in it.
    pub count: u32,
    /// The compressed body exactly as sent.
    pub compressed: Vec<u8>,
    /// Keys (in the `windows` tree) of the window summaries that ride in it, deleted after
    /// its ack.
    pub windows: Vec<u64>,
}

/// [`InFlight`] as persisted before window summaries rode with batches (read on upgrade).
#[derive(Deserialize)]
struct InFlightWithoutWindows {
    id: String,
    first_seq: u64,
    last_seq: u64,
    count: u32,
    compressed: Vec<u8>,
}

/// Counters the daemon renders as metrics (all monotonic except the gauges noted).
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Records appended.
    pub appended: AtomicU64,
    /// Group commits (flush + fsync) done.
    pub syncs: AtomicU64,
    /// Total time in group commits, µs.
    pub sync_us: AtomicU64,
    /// Highest sequence reported durable (gauge).
    pub durable_through: AtomicU64,
    /// Records deleted by the quota policy before they were uploaded.
    pub dropped_records: AtomicU64,
    /// Uploaded records deleted by the quota before their time.
    pub dropped_uploaded: AtomicU64,
    /// Appends refused under backpressure.
    pub refused_appends: AtomicU64,
    /// Times the quota found the journal full.
    pub full_events: AtomicU64,
    /// Live bytes (gauge).
    pub live_bytes: AtomicU64,
    /// Size of the files at the last check (gauge).
    pub files_bytes: AtomicU64,
    /// Free bytes on the filesystem at the last check (gauge).
    pub fs_free_bytes: AtomicU64,
    /// Failed appends or syncs (I/O, no space).
    pub errors: AtomicU64,
    /// Window summaries deleted unsent because more than [`MAX_PENDING_WINDOW_BYTES`]
    /// waited.
    pub windows_dropped: AtomicU64,
    /// Successful reopens after an I/O error (or of a journal that had no space to open).
    pub reopens: AtomicU64,
    /// Reopen attempts that failed (e.g. the filesystem still full).
    pub reopen_failures: AtomicU64,
}

/// The journal. Shared by the appender, the uploader and the daemon (`Arc<Journal>`).
pub struct Journal {
    dir: PathBuf,
    cfg: StoreConfig,
    /// sled's handles; `None` while the journal is being reopened, or until a journal that
    /// could not be opened for lack of space opens ([`Journal::open_or_wait`]).
    handles: std::sync::RwLock<Option<Arc<Handles>>>,
    /// Set by an I/O error (sled refuses every write on a handle after one): the handle
    /// must be reopened ([`Journal::reopen`]).
    broken: AtomicBool,
    /// The next sequence; held while inserting so keys follow append order.
    next_seq: Mutex<u64>,
    /// Serialises prefix deletions.
    delete_lock: Mutex<()>,
    full: AtomicBool,
    synced_blobs: Mutex<std::collections::HashSet<PathBuf>>,
    stats: Arc<JournalStats>,
}

/// One open sled database and its trees.
struct Handles {
    db: sled::Db,
    records: sled::Tree,
    meta: sled::Tree,
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
}

fn be(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why an open attempt failed.
enum OpenFailure {
    /// The data is damaged: move it aside.
    Damaged(String),
    /// Anything else: report, touch nothing.
    Other(StoreError),
}

fn fsync_path(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

impl Journal {
    /// Opens (or creates) the journal; moves a damaged one aside and starts fresh.
    pub fn open(cfg: StoreConfig) -> Result<(Journal, OpenReport), StoreError> {
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
        std::fs::create_dir_all(dir).map_err(|e| {
            OpenFailure::Other(StoreError::from_io(dir, "create journal directory", e))
        })?;
        // A data file with content must hold a journal: if sled opens it and finds no layout
        // key, it recovered nothing from it, and that is damage, not a fresh start.
        let existing_bytes = std::fs::metadata(dir.join("db")).map_or(0, |m| m.len());
        let unclean = existing_bytes > 0 && !dir.join(CLEAN_MARKER).exists();
        let copy = dir.join(RECOVERY_COPY_DIR);
        let _ = std::fs::remove_dir_all(&copy); // left by an open that itself crashed
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
        let sled_cfg = sled::Config::new()
            .path(&dir)
            .cache_capacity(cfg.cache_capacity)
            .segment_size(segment_size_for(&dir, cfg.segment_size))
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
                    if e.to_string().contains("could not acquire lock")
                        && Instant::now() < give_up =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                _ => break opened,
            }
        };
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(classify_open_error(&dir, e)),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                return Err(OpenFailure::Damaged(format!(
                    "sled panicked on open: {msg}"
                )));
            }
        };
        let sled_err = |op: &'static str| {
            let dir = dir.clone();
            move |e: sled::Error| match e {
                sled::Error::Io(_) => OpenFailure::Other(StoreError::from_sled(&dir, op, e)),
                other => OpenFailure::Damaged(format!("{op}: {other}")),
            }
        };
        let records = db.open_tree("records").map_err(sled_err("open records"))?;
        let meta = db.open_tree("meta").map_err(sled_err("open meta"))?;
        match meta.get(META_LAYOUT).map_err(sled_err("read layout"))? {
            Some(v) if v.as_ref() == LAYOUT => {}
            Some(v) => {
                return Err(OpenFailure::Damaged(format!(
                    "layout is {:?}, this build reads {:?}",
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(LAYOUT)
                )))
            }
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
                    .map_err(sled_err("write layout"))?;
            }
        }
        let read_u64 = |key: &'static [u8]| -> Result<u64, OpenFailure> {
            match meta.get(key).map_err(sled_err("read meta"))? {
                None => Ok(0),
                Some(v) => seq_of(&v).ok_or_else(|| {
                    OpenFailure::Damaged(format!(
                        "meta {} has {} bytes, expected 8",
                        String::from_utf8_lossy(key),
                        v.len()
                    ))
                }),
            }
        };
        let deleted_through = read_u64(META_DELETED_THROUGH)?;
        let watermark = read_u64(META_WATERMARK)?;
        // Leftovers of a deletion interrupted by a crash.
        if deleted_through > 0 {
            for kv in records.range(..=be(deleted_through)) {
                let (k, _) = kv.map_err(sled_err("scan leftovers"))?;
                records.remove(k).map_err(sled_err("remove leftovers"))?;
            }
        }
        let mut live_bytes = 0u64;
        let mut count = 0u64;
        let mut first = None;
        let mut last = 0u64;
        for kv in records.iter() {
            let (k, v) = kv.map_err(sled_err("scan records"))?;
            let seq = seq_of(&k).ok_or_else(|| {
                OpenFailure::Damaged(format!("record key of {} bytes, expected 8", k.len()))
            })?;
            if seq <= last {
                return Err(OpenFailure::Damaged(format!(
                    "record keys not increasing: {seq} after {last}"
                )));
            }
            first.get_or_insert(seq);
            last = seq;
            count += 1;
            live_bytes += 8 + v.len() as u64;
        }
        let inflight = meta
            .contains_key(META_INFLIGHT)
            .map_err(sled_err("read inflight"))?;
        let next_seq = last.max(deleted_through).max(watermark) + 1;
        let stats = Arc::new(JournalStats::default());
        stats.live_bytes.store(live_bytes, Ordering::Relaxed);
        stats.durable_through.store(next_seq - 1, Ordering::Relaxed);
        let journal = Journal {
            dir,
            cfg: cfg.clone(),
            handles: std::sync::RwLock::new(Some(Arc::new(Handles { db, records, meta }))),
            broken: AtomicBool::new(false),
            next_seq: Mutex::new(next_seq),
            delete_lock: Mutex::new(()),
            full: AtomicBool::new(false),
            synced_blobs: Mutex::new(Default::default()),
            stats,
        };
        // Make the layout key (and leftover removal) durable before anything relies on it.
        journal.sync().map_err(OpenFailure::Other)?;
        let report = OpenReport {
            moved_aside: None,
            records: count,
            first_seq: first,
            next_seq,
            watermark,
            inflight,
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
                let j = Journal {
                    dir: cfg.dir.clone(),
                    handles: std::sync::RwLock::new(None),
                    broken: AtomicBool::new(true),
                    next_seq: Mutex::new(1),
                    delete_lock: Mutex::new(()),
                    full: AtomicBool::new(false),
                    synced_blobs: Mutex::new(Default::default()),
                    stats: Arc::new(JournalStats::default()),
                    cfg,
                };
                Ok((j, OpenReport::default(), Some(e)))
            }
            Err(e) => Err(e),
        }
    }

    /// Drops sled's handle and opens the directory again (as [`Journal::open`] does: a
    /// journal sled cannot read back is moved aside), after an I/O error broke the handle
    /// ([`Journal::needs_reopen`]) or to open a journal that had no space to open. What
    /// was reported durable is on disk and stays; appends after the last durable report
    /// may be lost (see [`Reopened`]). No sequence is handed out twice in this process: new appends continue
    /// after every sequence handed out before. On failure (e.g. still no space) the
    /// journal stays closed; call again later.
    pub fn reopen(&self) -> Result<Reopened, StoreError> {
        // The same order as `delete_prefix` (delete lock, then sequence lock).
        let deleting = self.delete_lock.lock().expect("delete lock");
        let mut next = self.next_seq.lock().expect("journal sequence lock");
        let lost_before = *next;
        let mut handles = self.handles.write().expect("journal handles lock");
        // sled's file lock goes once every clone of the old handle is dropped
        // (`Journal::open` waits up to LOCK_WAIT for stragglers).
        drop(handles.take());
        let (fresh, report) = Journal::open(self.cfg.clone())?;
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
        self.broken.store(false, Ordering::Release);
        drop(handles);
        drop(next);
        drop(deleting);
        Ok(Reopened {
            kept_through,
            lost_before,
            moved_aside: report.moved_aside,
        })
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

    fn sled_err(&self, op: &'static str) -> impl FnOnce(sled::Error) -> StoreError + '_ {
        move |e| {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            let e = StoreError::from_sled(&self.dir, op, e);
            if matches!(e, StoreError::NoSpace { .. } | StoreError::Io { .. }) {
                self.broken.store(true, Ordering::Release);
            }
            e
        }
    }

    /// sled's handles, or [`StoreError::Reopening`] while there are none.
    fn h(&self) -> Result<Arc<Handles>, StoreError> {
        self.handles
            .read()
            .expect("journal handles lock")
            .clone()
            .ok_or_else(|| StoreError::Reopening {
                dir: self.dir.clone(),
            })
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
            return Err(StoreError::Reopening {
                dir: self.dir.clone(),
            });
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
    pub fn sync(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        self.h()?.db.flush().map_err(self.sled_err("flush"))?;
        // A flush seals the current io buffer: free the ones sealed before.
        release_deferred_frees();
        if self.cfg.durability == Durability::Fsync {
            self.fsync_files().map_err(|e| {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                // After a failed fsync the kernel may have dropped the dirty pages: what
                // sled believes written is unknown, so read it back from disk.
                self.broken.store(true, Ordering::Release);
                StoreError::from_io(&self.dir, "fsync", e)
            })?;
        }
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.stats
            .sync_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn fsync_files(&self) -> io::Result<()> {
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

    /// Up to `max_records` records (and about `max_bytes`: at least one) with sequence ≥
    /// `from`, in order.
    pub fn scan(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for kv in self.h()?.records.range(be(from)..) {
            let (k, v) = kv.map_err(self.sled_err("scan"))?;
            if out.len() >= max_records || (!out.is_empty() && bytes + v.len() > max_bytes) {
                break;
            }
            let seq = seq_of(&k).ok_or_else(|| StoreError::Meta {
                key: "records",
                detail: format!("key of {} bytes", k.len()),
            })?;
            bytes += v.len();
            out.push((seq, v.to_vec()));
        }
        Ok(out)
    }

    /// The first record present (sequence).
    pub fn first_seq(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .h()?
            .records
            .first()
            .map_err(self.sled_err("first"))?
            .and_then(|(k, _)| seq_of(&k)))
    }

    /// Records present (0 while the journal is not open).
    pub fn len(&self) -> usize {
        self.h().map_or(0, |h| h.records.len())
    }

    /// Whether no record is present (true while the journal is not open).
    pub fn is_empty(&self) -> bool {
        self.h().map_or(true, |h| h.records.is_empty())
    }

    fn read_meta_u64(&self, key: &'static [u8], name: &'static str) -> Result<u64, StoreError> {
        match self
            .h()?
            .meta
            .get(key)
            .map_err(self.sled_err("read meta"))?
        {
            None => Ok(0),
            Some(v) => seq_of(&v).ok_or_else(|| StoreError::Meta {
                key: name,
                detail: format!("{} bytes, expected 8", v.len()),
            }),
        }
    }

    /// Every record at or below this has been uploaded and acknowledged.
    pub fn watermark(&self) -> Result<u64, StoreError> {
        self.read_meta_u64(META_WATERMARK, "watermark")
    }

    /// Deletes every record with sequence ≤ `seq` (a prefix). Returns (records, bytes)
    /// deleted. Not durable until the next [`Journal::sync`].
    pub fn delete_through(&self, seq: u64) -> Result<(u64, u64), StoreError> {
        self.delete_prefix(seq, 0)
    }

    /// Deletes a prefix: records ≤ `through`, stopping once live bytes ≤ `target_live`.
    fn delete_prefix(&self, through: u64, target_live: u64) -> Result<(u64, u64), StoreError> {
        let _guard = self.delete_lock.lock().expect("delete lock");
        let prev = self.read_meta_u64(META_DELETED_THROUGH, "deleted_through")?;
        let mut removed = 0u64;
        let mut bytes = 0u64;
        let mut last_removed = None;
        // Chunks: write deleted_through for the chunk first, then remove it.
        loop {
            let chunk = self.scan(0, 1024, usize::MAX)?;
            let mut upto = None;
            let mut chunk_bytes = 0u64;
            for (s, v) in &chunk {
                if *s > through
                    || self
                        .stats
                        .live_bytes
                        .load(Ordering::Relaxed)
                        .saturating_sub(chunk_bytes)
                        <= target_live
                {
                    break;
                }
                chunk_bytes += 8 + v.len() as u64;
                upto = Some(*s);
            }
            let Some(upto) = upto else { break };
            if upto > prev {
                self.h()?
                    .meta
                    .insert(META_DELETED_THROUGH, &be(upto))
                    .map_err(self.sled_err("write deleted_through"))?;
            }
            for (s, v) in chunk.iter().take_while(|(s, _)| *s <= upto) {
                self.h()?
                    .records
                    .remove(be(*s))
                    .map_err(self.sled_err("delete"))?;
                removed += 1;
                bytes += 8 + v.len() as u64;
                self.stats
                    .live_bytes
                    .fetch_sub(8 + v.len() as u64, Ordering::Relaxed);
            }
            last_removed = Some(upto);
            if upto >= through {
                break;
            }
        }
        if through != u64::MAX && last_removed.is_none() && through > prev {
            // Nothing present to delete, but the prefix is now known to be gone.
            self.h()?
                .meta
                .insert(META_DELETED_THROUGH, &be(through.min(self.last_seq())))
                .map_err(self.sled_err("write deleted_through"))?;
        }
        Ok((removed, bytes))
    }

    /// The batch persisted as in flight, if any.
    pub fn inflight(&self) -> Result<Option<InFlight>, StoreError> {
        match self
            .h()?
            .meta
            .get(META_INFLIGHT)
            .map_err(self.sled_err("read inflight"))?
        {
            None => Ok(None),
            Some(v) => match postcard::from_bytes::<InFlight>(&v) {
                Ok(b) => Ok(Some(b)),
                // Written by a build before window summaries rode with batches.
                Err(e) => match postcard::from_bytes::<InFlightWithoutWindows>(&v) {
                    Ok(old) => Ok(Some(InFlight {
                        id: old.id,
                        first_seq: old.first_seq,
                        last_seq: old.last_seq,
                        count: old.count,
                        compressed: old.compressed,
                        windows: Vec::new(),
                    })),
                    Err(_) => Err(StoreError::Meta {
                        key: "inflight",
                        detail: e.to_string(),
                    }),
                },
            },
        }
    }

    /// Persists `batch` as in flight, durably, before it is sent.
    pub fn set_inflight(&self, batch: &InFlight) -> Result<(), StoreError> {
        let bytes = postcard::to_allocvec(batch).expect("postcard to Vec is infallible");
        self.h()?
            .meta
            .insert(META_INFLIGHT, bytes)
            .map_err(self.sled_err("write inflight"))?;
        self.sync()
    }

    /// Records the ack of the in-flight batch ending at `last_seq`: advances the watermark,
    /// clears the in-flight batch (atomically), and deletes the uploaded records unless
    /// `keep_uploaded`. Not synced: a lost ack update only re-sends a batch the server
    /// dedupes.
    pub fn ack_uploaded(&self, last_seq: u64) -> Result<(), StoreError> {
        let wm = self.watermark()?.max(last_seq);
        let mut batch = sled::Batch::default();
        batch.insert(META_WATERMARK, &be(wm));
        batch.remove(META_INFLIGHT);
        self.h()?
            .meta
            .apply_batch(batch)
            .map_err(self.sled_err("write watermark"))?;
        if !self.cfg.keep_uploaded {
            self.delete_through(wm)?;
        }
        self.check_quota()?;
        Ok(())
    }

    /// Drops the in-flight batch without acknowledging it (the server refused it for good).
    pub fn clear_inflight(&self) -> Result<(), StoreError> {
        self.h()?
            .meta
            .remove(META_INFLIGHT)
            .map_err(self.sled_err("clear inflight"))?;
        Ok(())
    }

    /// Keeps a batch the ingest refused as corrupt under meta `rejected/<id>` (at most the
    /// last [`MAX_REJECTED_KEPT`] are kept) for inspection.
    pub fn set_aside_rejected(&self, batch: &InFlight) -> Result<(), StoreError> {
        let bytes = postcard::to_allocvec(batch).expect("postcard to Vec is infallible");
        let key = format!("rejected/{}", batch.id);
        let h = self.h()?;
        h.meta
            .insert(key.as_bytes(), bytes)
            .map_err(self.sled_err("write rejected"))?;
        let kept: Vec<_> = h
            .meta
            .scan_prefix(b"rejected/")
            .keys()
            .collect::<Result<_, _>>()
            .map_err(self.sled_err("scan rejected"))?;
        if kept.len() > MAX_REJECTED_KEPT {
            // Oldest by insertion is unknown to sled; drop any but the one just written.
            for k in kept
                .iter()
                .filter(|k| k.as_ref() != key.as_bytes())
                .take(kept.len() - MAX_REJECTED_KEPT)
            {
                h.meta.remove(k).map_err(self.sled_err("trim rejected"))?;
            }
        }
        Ok(())
    }

    fn windows_tree(&self) -> Result<sled::Tree, StoreError> {
        self.h()?
            .db
            .open_tree(WINDOWS_TREE)
            .map_err(self.sled_err("open windows"))
    }

    /// Keeps a window summary (opaque bytes) until an upload carries it; beyond
    /// [`MAX_PENDING_WINDOW_BYTES`] of them the oldest are deleted (counted in
    /// [`JournalStats::windows_dropped`]). Becomes durable with the next group commit.
    pub fn append_window(&self, summary: &[u8]) -> Result<u64, StoreError> {
        let tree = self.windows_tree()?;
        let next = match tree.last().map_err(self.sled_err("read windows"))? {
            Some((k, _)) => seq_of(&k).unwrap_or(0) + 1,
            None => 1,
        };
        tree.insert(be(next), summary)
            .map_err(self.sled_err("write window"))?;
        let mut total: u64 = 0;
        let mut keys = Vec::new();
        for kv in tree.iter().rev() {
            let (k, v) = kv.map_err(self.sled_err("scan windows"))?;
            total += v.len() as u64;
            if total > MAX_PENDING_WINDOW_BYTES && k.as_ref() != be(next) {
                keys.push(k);
            }
        }
        for k in keys {
            tree.remove(k).map_err(self.sled_err("drop window"))?;
            self.stats.windows_dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(next)
    }

    /// Window summaries waiting for an upload, oldest first, at most `max_bytes` of them
    /// (but at least one when any wait).
    pub fn pending_windows(&self, max_bytes: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut bytes = 0usize;
        for kv in self.windows_tree()?.iter() {
            let (k, v) = kv.map_err(self.sled_err("scan windows"))?;
            if !out.is_empty() && bytes + v.len() > max_bytes {
                break;
            }
            bytes += v.len();
            out.push((seq_of(&k).unwrap_or(0), v.to_vec()));
        }
        Ok(out)
    }

    /// Deletes window summaries an acknowledged upload carried.
    pub fn delete_windows(&self, keys: &[u64]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let tree = self.windows_tree()?;
        let mut batch = sled::Batch::default();
        for k in keys {
            batch.remove(&be(*k));
        }
        tree.apply_batch(batch)
            .map_err(self.sled_err("delete windows"))
    }

    /// Reads the space used and free.
    pub fn space(&self) -> Result<SpaceReading, StoreError> {
        let mut files = self
            .h()?
            .db
            .size_on_disk()
            .map_err(self.sled_err("size_on_disk"))?;
        let io = |e| StoreError::from_io(&self.dir, "measure snapshots", e);
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_name().to_string_lossy().starts_with("snap.") {
                files += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        let vfs = rustix::fs::statvfs(&self.dir)
            .map_err(|e| StoreError::from_io(&self.dir, "statvfs", e.into()))?;
        Ok(SpaceReading {
            files_bytes: files,
            fs_free_bytes: vfs.f_bavail.saturating_mul(vfs.f_frsize),
            live_bytes: self.stats.live_bytes.load(Ordering::Relaxed),
        })
    }

    /// Applies the quota: measures, deletes what the policy allows, and sets or clears the
    /// backpressure flag. Returns the verdict on the first reading.
    pub fn check_quota(&self) -> Result<QuotaVerdict, StoreError> {
        let reading = self.space()?;
        let s = &self.stats;
        s.files_bytes.store(reading.files_bytes, Ordering::Relaxed);
        s.fs_free_bytes
            .store(reading.fs_free_bytes, Ordering::Relaxed);
        let verdict = self.cfg.quota.assess(reading);
        let QuotaVerdict::Full {
            reason,
            target_live_bytes,
            refuse_appends,
        } = verdict
        else {
            self.full.store(false, Ordering::Release);
            return Ok(verdict);
        };
        s.full_events.fetch_add(1, Ordering::Relaxed);
        // 1. What is already uploaded.
        let wm = self.watermark()?;
        let (n, _) = self.delete_prefix(wm, target_live_bytes)?;
        s.dropped_uploaded.fetch_add(n, Ordering::Relaxed);
        if s.live_bytes.load(Ordering::Relaxed) <= target_live_bytes && !refuse_appends {
            self.full.store(false, Ordering::Release);
            return Ok(verdict);
        }
        // 2. The policy.
        match self.cfg.quota.policy {
            FullPolicy::DropOldest if refuse_appends => {
                let (n, _) = self.delete_prefix(u64::MAX, target_live_bytes)?;
                s.dropped_records.fetch_add(n, Ordering::Relaxed);
                if !self.full.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        fs_free_bytes = reading.fs_free_bytes,
                        "journal filesystem below half its free-space floor: refusing appends"
                    );
                }
            }
            FullPolicy::DropOldest => {
                let (n, bytes) = self.delete_prefix(u64::MAX, target_live_bytes)?;
                s.dropped_records.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(
                    records = n,
                    bytes,
                    ?reason,
                    "journal full: dropped the oldest records"
                );
                self.full.store(false, Ordering::Release);
            }
            FullPolicy::Backpressure => {
                if !self.full.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        ?reason,
                        live_bytes = reading.live_bytes,
                        files_bytes = reading.files_bytes,
                        "journal full: refusing appends until uploads free space"
                    );
                }
            }
        }
        Ok(verdict)
    }

    /// Whether appends are being refused (backpressure).
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
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
    }
}

/// The segment size to open `dir` with: the one its sled `conf` file records (sled refuses
/// to open a database with another), else `wanted` (clamped to what sled accepts).
fn segment_size_for(dir: &Path, wanted: usize) -> usize {
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

/// Hands this thread's deferred frees to crossbeam-epoch's global queue and collects what
/// is due. sled 0.34 frees each sealed io buffer (a whole segment) through the epoch
/// collector, and a thread keeps up to 64 deferred frees to itself until it pins 64 more
/// times: without this, the appending and flushing threads each sat on up to 64 segments
/// of dead buffers (see the module doc, Memory).
fn release_deferred_frees() {
    crossbeam_epoch::pin().flush();
}

/// Copies sled's data file and config into `copy` (fsynced), before sled's recovery.
fn copy_for_recovery(dir: &Path, copy: &Path) -> io::Result<()> {
    std::fs::create_dir(copy)?;
    for name in ["db", "conf"] {
        let from = dir.join(name);
        if from.exists() {
            std::fs::copy(&from, copy.join(name))?;
            fsync_path(&copy.join(name))?;
        }
    }
    fsync_path(copy)?;
    fsync_path(dir)
}

fn classify_open_error(dir: &Path, e: sled::Error) -> OpenFailure {
    match e {
        sled::Error::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ) =>
        {
            OpenFailure::Damaged(format!("sled: {io}"))
        }
        sled::Error::Io(io) => OpenFailure::Other(StoreError::from_io(dir, "open", io)),
        sled::Error::Corruption { .. }
        | sled::Error::Unsupported(_)
        | sled::Error::ReportableBug(_) => OpenFailure::Damaged(format!("sled: {e}")),
        other => OpenFailure::Damaged(format!("sled: {other}")),
    }
}

/// Renames `dir` to `<dir>.corrupt-<unix seconds>` (with `-N` if taken) and syncs the parent.
fn move_aside(dir: &Path) -> Result<PathBuf, StoreError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "journal".into());
    let stamp = unix_secs();
    let mut to = dir.with_file_name(format!("{name}.corrupt-{stamp}"));
    let mut n = 1;
    while to.exists() {
        to = dir.with_file_name(format!("{name}.corrupt-{stamp}-{n}"));
        n += 1;
    }
    std::fs::rename(dir, &to).map_err(|source| StoreError::MoveAside {
        from: dir.to_owned(),
        to: to.clone(),
        source,
    })?;
    if let Some(parent) = to.parent() {
        let _ = fsync_path(parent);
    }
    Ok(to)
}

/// When to group-commit: after `max_records` appends or `max_delay` after the oldest
/// pending append, whichever comes first (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommit {
    /// Flush once this many appends are pending.
    pub max_records: usize,
    /// Flush once the oldest pending append is this old.
    pub max_delay: Duration,
}

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit {
            max_records: 256,
            max_delay: Duration::from_millis(5),
        }
    }
}

/// What the flusher should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushDecision {
    /// Nothing pending: sleep until an append.
    Idle,
    /// Flush now.
    FlushNow,
    /// Wait this long (or until more appends), then ask again.
    Wait(Duration),
}

impl GroupCommit {
    /// The decision with `pending` appends, the oldest of them `oldest_age` old.
    pub fn decide(&self, pending: usize, oldest_age: Duration) -> FlushDecision {
        if pending == 0 {
            FlushDecision::Idle
        } else if pending >= self.max_records.max(1) || oldest_age >= self.max_delay {
            FlushDecision::FlushNow
        } else {
            FlushDecision::Wait(self.max_delay - oldest_age)
        }
    }
}

struct Pending {
    count: usize,
    oldest: Option<Instant>,
    last_seq: u64,
    stop: bool,
    failed: Option<String>,
    reopen: ReopenBackoff,
    last_reopen_log: Option<Instant>,
}

/// When the [`Appender`] tries to reopen a broken journal (pure; times are passed in).
///
/// A reopen is tried at once after the first failure; then each further reopen or failed
/// attempt doubles the wait (from [`ReopenBackoff::MIN`] to [`ReopenBackoff::MAX`]), so a
/// filesystem that stays full costs a reopen (one scan of the journal) every few seconds,
/// not a loop. Only a group commit that made records durable resets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReopenBackoff {
    wait: Duration,
    not_before: Option<Instant>,
}

impl Default for ReopenBackoff {
    fn default() -> Self {
        ReopenBackoff {
            wait: ReopenBackoff::MIN,
            not_before: None,
        }
    }
}

impl ReopenBackoff {
    /// The first wait after a reopen.
    pub const MIN: Duration = Duration::from_millis(100);
    /// The longest wait.
    pub const MAX: Duration = Duration::from_secs(5);

    /// How long to wait before the next try at `now` (zero: try now).
    pub fn wait_at(&self, now: Instant) -> Duration {
        self.not_before
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }

    /// A reopen was tried at `now` (successful or not): the next waits longer.
    pub fn tried(&mut self, now: Instant) {
        self.not_before = Some(now + self.wait);
        self.wait = (self.wait * 2).min(ReopenBackoff::MAX);
    }

    /// Records became durable: the journal works again.
    pub fn progressed(&mut self) {
        *self = ReopenBackoff::default();
    }
}

/// The [`Appender::start_reopening`] callback.
type OnReopen = Box<dyn Fn(&Reopened) + Send + Sync>;

struct Shared {
    journal: Arc<Journal>,
    policy: GroupCommit,
    pending: Mutex<Pending>,
    wake: Condvar,
    durable: Mutex<u64>,
    durable_cv: Condvar,
    on_durable: Box<dyn Fn(u64) + Send + Sync>,
    /// Set: reopen a broken journal with backoff, and report it here first.
    on_reopen: Option<OnReopen>,
}

/// Group commit: appends go straight into sled; a flusher thread makes them durable per
/// [`GroupCommit`] and reports the highest durable sequence. Everything at or below
/// [`Appender::durable_through`] survives a crash (see the module doc for what a power cut
/// keeps); the daemon sends an event's PUBACK only once its sequence is durable.
pub struct Appender {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Appender {
    /// Starts the flusher. `on_durable(seq)` is called from the flusher thread after each
    /// group commit with the new durable watermark (keep it short: e.g. send to a channel).
    pub fn start(
        journal: Arc<Journal>,
        policy: GroupCommit,
        on_durable: impl Fn(u64) + Send + Sync + 'static,
    ) -> Appender {
        Appender::spawn(journal, policy, Box::new(on_durable), None)
    }

    /// Like [`Appender::start`], and when an I/O error breaks the journal (or it had no
    /// space to open), reopens it with backoff ([`ReopenBackoff`]), counted in
    /// [`JournalStats::reopens`] and `reopen_failures`, logged (failures at most once a
    /// minute). After a reopen, `on_reopen` is called before any later `on_durable`:
    /// appends numbered `kept_through + 1 .. lost_before` are gone and must be appended
    /// again by the caller if they matter; everything through `kept_through` is durable.
    pub fn start_reopening(
        journal: Arc<Journal>,
        policy: GroupCommit,
        on_durable: impl Fn(u64) + Send + Sync + 'static,
        on_reopen: impl Fn(&Reopened) + Send + Sync + 'static,
    ) -> Appender {
        Appender::spawn(
            journal,
            policy,
            Box::new(on_durable),
            Some(Box::new(on_reopen)),
        )
    }

    fn spawn(
        journal: Arc<Journal>,
        policy: GroupCommit,
        on_durable: Box<dyn Fn(u64) + Send + Sync>,
        on_reopen: Option<OnReopen>,
    ) -> Appender {
        let durable = journal.last_seq();
        let shared = Arc::new(Shared {
            journal,
            policy,
            pending: Mutex::new(Pending {
                count: 0,
                oldest: None,
                last_seq: durable,
                stop: false,
                failed: None,
                reopen: ReopenBackoff::default(),
                last_reopen_log: None,
            }),
            wake: Condvar::new(),
            durable: Mutex::new(durable),
            durable_cv: Condvar::new(),
            on_durable,
            on_reopen,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("journal-flush".into())
            .spawn(move || flusher(&s))
            .expect("spawn journal flusher");
        Appender {
            shared,
            thread: Some(thread),
        }
    }

    /// The journal.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.shared.journal
    }

    /// Appends an encoded value; returns its sequence. Durable later (see
    /// [`Appender::durable_through`]).
    pub fn append_encoded(&self, value: &[u8]) -> Result<u64, StoreError> {
        if self.shared.pending.lock().expect("pending lock").stop {
            return Err(StoreError::Closed);
        }
        let seq = match self.shared.journal.append(value) {
            Ok(seq) => seq,
            Err(e) => {
                if self.shared.journal.needs_reopen() {
                    self.shared.wake.notify_one();
                }
                return Err(e);
            }
        };
        let mut p = self.shared.pending.lock().expect("pending lock");
        p.count += 1;
        p.last_seq = p.last_seq.max(seq);
        let first = p.oldest.is_none();
        if first {
            p.oldest = Some(Instant::now());
        }
        if first || p.count >= self.shared.policy.max_records {
            self.shared.wake.notify_one();
        }
        Ok(seq)
    }

    /// Encodes and appends a record.
    pub fn append(&self, record: &JournalRecord) -> Result<u64, StoreError> {
        self.append_encoded(&record.encode())
    }

    /// Every sequence at or below this is durable.
    pub fn durable_through(&self) -> u64 {
        *self.shared.durable.lock().expect("durable lock")
    }

    /// Waits until `seq` is durable or `timeout` passes; true if durable.
    pub fn wait_durable(&self, seq: u64, timeout: Duration) -> bool {
        let d = self.shared.durable.lock().expect("durable lock");
        let (d, _) = self
            .shared
            .durable_cv
            .wait_timeout_while(d, timeout, |d| *d < seq)
            .expect("durable lock");
        *d >= seq
    }

    /// The last group commit's error, if it failed (cleared by the next success).
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .pending
            .lock()
            .expect("pending lock")
            .failed
            .clone()
    }

    /// Stops the flusher after a last group commit; returns its error if that failed.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.stop_thread();
        self.shared.journal.sync()
    }

    fn stop_thread(&mut self) {
        self.shared.pending.lock().expect("pending lock").stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn flusher(s: &Shared) {
    let mut p = s.pending.lock().expect("pending lock");
    loop {
        if let Some(on_reopen) = s.on_reopen.as_ref().filter(|_| !p.stop) {
            if s.journal.needs_reopen() {
                let wait = p.reopen.wait_at(Instant::now());
                if !wait.is_zero() {
                    p = s.wake.wait_timeout(p, wait).expect("pending lock").0;
                    continue;
                }
                p.reopen.tried(Instant::now());
                drop(p);
                let result = s.journal.reopen();
                p = s.pending.lock().expect("pending lock");
                match result {
                    Ok(r) => {
                        s.journal.stats.reopens.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            kept_through = r.kept_through,
                            lost = r.lost_before.saturating_sub(r.kept_through + 1),
                            moved_aside = ?r.moved_aside.as_ref().map(|m| m.path.display().to_string()),
                            "journal reopened after an i/o error; appending again"
                        );
                        // Everything pending was either recovered (durable now) or lost.
                        p.count = 0;
                        p.oldest = None;
                        p.failed = None;
                        p.last_seq = p.last_seq.max(r.kept_through);
                        drop(p);
                        on_reopen(&r);
                        {
                            let mut d = s.durable.lock().expect("durable lock");
                            *d = (*d).max(r.kept_through);
                        }
                        s.durable_cv.notify_all();
                        if let Err(e) = s.journal.check_quota() {
                            tracing::warn!(error = %e, "journal quota check failed");
                        }
                        p = s.pending.lock().expect("pending lock");
                    }
                    Err(e) => {
                        s.journal
                            .stats
                            .reopen_failures
                            .fetch_add(1, Ordering::Relaxed);
                        if p.last_reopen_log
                            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                        {
                            tracing::error!(error = %e, retry_in = ?p.reopen.wait_at(Instant::now()), "journal could not be reopened; retrying with backoff (events stay unacked)");
                            p.last_reopen_log = Some(Instant::now());
                        }
                    }
                }
                continue;
            }
        }
        let age = p.oldest.map_or(Duration::ZERO, |t| t.elapsed());
        let decision = s.policy.decide(p.count, age);
        match decision {
            FlushDecision::Idle if p.stop => return,
            FlushDecision::Idle => p = s.wake.wait(p).expect("pending lock"),
            FlushDecision::Wait(_) if p.stop => {
                p = commit(s, p);
            }
            FlushDecision::Wait(d) => p = s.wake.wait_timeout(p, d).expect("pending lock").0,
            FlushDecision::FlushNow => p = commit(s, p),
        }
    }
}

fn commit<'a>(
    s: &'a Shared,
    mut p: std::sync::MutexGuard<'a, Pending>,
) -> std::sync::MutexGuard<'a, Pending> {
    let through = p.last_seq;
    let count = p.count;
    p.count = 0;
    p.oldest = None;
    drop(p);
    let result = s.journal.sync();
    let mut p = s.pending.lock().expect("pending lock");
    match result {
        Ok(()) => {
            p.failed = None;
            if count > 0 {
                p.reopen.progressed();
            }
            drop(p);
            // The callback first: once a waiter sees `through` durable, the callback has
            // seen it too.
            (s.on_durable)(through);
            {
                let mut d = s.durable.lock().expect("durable lock");
                *d = (*d).max(through);
            }
            s.journal
                .stats
                .durable_through
                .fetch_max(through, Ordering::Relaxed);
            s.durable_cv.notify_all();
            if let Err(e) = s.journal.check_quota() {
                tracing::warn!(error = %e, "journal quota check failed");
            }
            s.pending.lock().expect("pending lock")
        }
        Err(e) => {
            tracing::error!(error = %e, "journal group commit failed");
            p.failed = Some(e.to_string());
            // Keep them pending; retry after the delay (or at stop).
            p.count += count;
            if p.oldest.is_none() {
                p.oldest = Some(Instant::now());
            }
            if p.stop {
                // Do not spin at shutdown on a dead disk.
                p.count = 0;
                p.oldest = None;
            }
            p
        }
    }
}

thread_local! {
    /// True while this thread runs sled inside [`catch_sled_panic`].
    static CATCHING_SLED_PANIC: Cell<bool> = const { Cell::new(false) };
}

/// Whether a panic raised now, on the calling thread, is one the journal catches (sled
/// panicking while it opens a damaged journal, which is then moved aside). For a panic hook
/// that ends the process on every other panic, as reflexd's does: it lets this one unwind
/// to its catch.
pub fn panic_is_caught_here() -> bool {
    CATCHING_SLED_PANIC.with(Cell::get)
}

/// Runs `f` (a sled call) and catches its panic, marking the thread meanwhile so that
/// [`panic_is_caught_here`] says so.
fn catch_sled_panic<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    struct Unmark;
    impl Drop for Unmark {
        fn drop(&mut self) {
            CATCHING_SLED_PANIC.with(|c| c.set(false));
        }
    }
    CATCHING_SLED_PANIC.with(|c| c.set(true));
    let _unmark = Unmark;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_a_caught_sled_call_is_told_apart_from_any_other() {
        assert!(!panic_is_caught_here());
        let inside = catch_sled_panic(|| {
            let seen = panic_is_caught_here();
            if seen {
                panic!("sled says the file is damaged");
            }
            seen
        });
        // It panicked (so it was marked), the panic was caught, and the mark is gone.
        assert!(inside.is_err());
        assert!(!panic_is_caught_here());
        assert_eq!(catch_sled_panic(panic_is_caught_here).ok(), Some(true));
        assert!(!panic_is_caught_here());
    }

    #[test]
    fn a_reopen_is_tried_at_once_then_backs_off_and_durable_records_reset_it() {
        let t0 = Instant::now();
        let mut b = ReopenBackoff::default();
        assert_eq!(b.wait_at(t0), Duration::ZERO, "the first try is immediate");
        let mut waits = Vec::new();
        let mut now = t0;
        for _ in 0..8 {
            b.tried(now);
            let w = b.wait_at(now);
            waits.push(w.as_millis());
            now += w;
            assert_eq!(b.wait_at(now), Duration::ZERO);
        }
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.progressed();
        assert_eq!(b.wait_at(now), Duration::ZERO);
        b.tried(now);
        assert_eq!(b.wait_at(now), ReopenBackoff::MIN);
    }

    #[test]
    fn group_commit_waits_for_the_count_or_the_delay_whichever_first() {
        let g = GroupCommit {
            max_records: 4,
            max_delay: Duration::from_millis(10),
        };
        assert_eq!(g.decide(0, Duration::from_secs(9)), FlushDecision::Idle);
        assert_eq!(
            g.decide(1, Duration::ZERO),
            FlushDecision::Wait(Duration::from_millis(10))
        );
        assert_eq!(
            g.decide(3, Duration::from_millis(7)),
            FlushDecision::Wait(Duration::from_millis(3))
        );
        assert_eq!(g.decide(4, Duration::ZERO), FlushDecision::FlushNow);
        assert_eq!(
            g.decide(1, Duration::from_millis(10)),
            FlushDecision::FlushNow
        );
    }

    #[test]
    fn group_commit_on_a_fake_clock_flushes_every_n_under_load_and_after_t_when_quiet() {
        // A fake clock in µs; appends at given instants; the flusher asks the policy after
        // each append and whenever its wait ends.
        let g = GroupCommit {
            max_records: 3,
            max_delay: Duration::from_micros(1000),
        };
        let appends = [0u64, 10, 20, 30, 40, 50, 60, 5000];
        let mut flushes = Vec::new();
        let mut pending = 0usize;
        let mut oldest = 0u64;
        let mut wake_at: Option<u64> = None;
        let mut events: Vec<u64> = appends.to_vec();
        events.push(10_000);
        for &now in &events {
            if let Some(w) = wake_at {
                if w <= now {
                    if let FlushDecision::FlushNow =
                        g.decide(pending, Duration::from_micros(w - oldest))
                    {
                        flushes.push(w);
                        pending = 0;
                    }
                    wake_at = None;
                }
            }
            if appends.contains(&now) {
                if pending == 0 {
                    oldest = now;
                }
                pending += 1;
            }
            match g.decide(pending, Duration::from_micros(now - oldest)) {
                FlushDecision::FlushNow => {
                    flushes.push(now);
                    pending = 0;
                }
                FlushDecision::Wait(d) => wake_at = Some(now + d.as_micros() as u64),
                FlushDecision::Idle => {}
            }
        }
        // Two full groups of 3, then one append left alone for the delay, then the last.
        assert_eq!(flushes, vec![20, 50, 1060, 6000]);
    }

    fn reading(files: u64, free: u64, live: u64) -> SpaceReading {
        SpaceReading {
            files_bytes: files,
            fs_free_bytes: free,
            live_bytes: live,
        }
    }

    #[test]
    fn the_quota_is_full_only_when_files_reached_it_and_live_data_leaves_no_room() {
        let q = Quota {
            quota_bytes: 1000,
            min_free_bytes: 100,
            policy: FullPolicy::DropOldest,
            amplification: 2.0,
        };
        assert_eq!(q.assess(reading(500, 10_000, 400)), QuotaVerdict::Ok);
        // Files at the quota but most of it deleted: sled reuses the space.
        assert_eq!(q.assess(reading(1200, 10_000, 100)), QuotaVerdict::Ok);
        assert_eq!(
            q.assess(reading(1000, 10_000, 500)),
            QuotaVerdict::Full {
                reason: FullReason::Quota,
                target_live_bytes: 450,
                refuse_appends: false
            }
        );
    }

    #[test]
    fn a_filesystem_below_its_floor_is_full_whatever_the_quota() {
        let q = Quota {
            quota_bytes: 1 << 30,
            min_free_bytes: 100,
            ..Quota::default()
        };
        assert_eq!(
            q.assess(reading(10, 99, 1000)),
            QuotaVerdict::Full {
                reason: FullReason::FilesystemLow,
                target_live_bytes: 500,
                refuse_appends: false
            }
        );
        assert_eq!(
            q.assess(reading(10, 49, 1000)),
            QuotaVerdict::Full {
                reason: FullReason::FilesystemLow,
                target_live_bytes: 500,
                refuse_appends: true
            }
        );
    }
}
