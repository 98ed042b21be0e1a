//! The journal on the board: sled 0.34, group commit, a disk quota, and recovery from a
//! journal that cannot be opened.
//!
//! One concept per file: `journal` (the sled handle, appends, syncs), `open` (opening,
//! validating and reopening a directory), `recovery` (moving a damaged journal aside,
//! catching sled's panic on open), `appender` (group commit), `quota` (quota, drop-oldest,
//! backpressure), `drain` (reading, the in-flight batch and its ack, for the uploader),
//! `windows` (window summaries riding with uploads), `dead_letter` (records the cloud
//! refused), `salvage` (taking what a journal moved aside still holds), `stats` and `error`. Everything public
//! is re-exported here: `reflex_journal::store::{Journal, Appender, StoreError, …}`.
//!
//! # Layout
//!
//! One sled database in the configured directory, with five trees:
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
//! - `marks`: key = a device id, value = BE `u64`, the highest event sequence number of the
//!   device among the deleted records (see `marks`, [`Journal::dedupe_marks`]): what
//!   reflexd's dedupe is seeded from for events whose records are gone.
//! - `dead_letter`: key = journal sequence as a big-endian `u64`, value = a
//!   [`DeadLetter`] (reason, when filed, batch id, the record's bytes): records the cloud
//!   refused one by one, moved here before their batch's ack deleted them, bounded by
//!   `dead_letter_max_records` (see `dead_letter`: at the bound uploading stops; nothing is
//!   deleted but by an operator's clear).
//! - `salvaged_batches`: key = BE `u64` (increasing), value = a postcard [`InFlight`]: the
//!   in-flight batch of a salvaged journal, sent under its own id before new batches and
//!   removed at its ack (see `salvage`). `meta` also holds `salvaged/<aside dir name>` =
//!   BE `u64` inode of that directory, written with what was salvaged from it.
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
//!   below it are removed again on open. The marks of the records a deletion covers are
//!   written before its `deleted_through`.
//!
//! # Durability
//!
//! sled's `flush()` writes its buffers with `sync_file_range`, which neither persists file
//! metadata (size, extents) nor flushes the disk's write cache. With [`Durability::Fsync`]
//! (the default) reflex promises: **a record reported durable survives a process crash,
//! a kernel crash and a power cut**, provided the disk honours cache flushes (any disk with
//! write barriers; ext4/xfs defaults). It holds because every group commit runs sled's
//! `flush()` and then `fsync` on sled's data file, its new blob files, the blob directory and
//! the journal directory (and a journal directory it creates, in its parent).
//! [`Durability::Flush`] promises only survival of a process crash (`kill -9`): cheaper,
//! weaker. Verified under `kill -9` (tests/crash.rs) and under simulated power cuts and
//! injected fsync errors with the `reflex-powercut` FUSE harness (tests/powercut.rs); not
//! verified: sled's recovery from torn writes within one write, which the harness does not
//! model.
//!
//! After a failed fsync the journal never reports durable what it appended since the last
//! durable report: a broken journal refuses to sync (so [`Appender::close`] fails), and
//! before sled reads its files again (a reopen, or an open after an unclean shutdown) every
//! byte of them is written back in place and fsynced, under sled's lock, so that what sled
//! reads is on disk (Linux keeps pages whose writeback failed readable, and never writes
//! them). That costs one read and write of the data file per reopen and per start after a
//! crash.
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
//! `reflexd_journal_dropped_uploaded_total`), then the policy: [`FullPolicy::DropOldest`]
//! deletes the oldest records (counted in [`JournalStats::dropped_records`]);
//! [`FullPolicy::Backpressure`] refuses appends with
//! [`StoreError::Full`] until an upload ack frees space (the caller stops acking; the broker
//! keeps the events). The quota is checked after every group commit and every upload ack, so
//! a burst can overshoot by one group.
//!
//! Under churn the files level off rather than grow, but above `quota_bytes` (a few times
//! it at a high append rate), because sled reclaims segments more slowly than they fill
//! (figures: journal/README.md). So give the journal's filesystem several times
//! `quota_bytes`, and keep `min_free_bytes` (the hard backstop) above a few sled segments
//! (default 64 MiB).
//!
//! # Memory
//!
//! `cache_capacity` bounds sled's page cache, not the process's memory. What grew was sled's
//! garbage: every sealed io buffer (one segment, 512 KiB) and every replaced tree node is
//! freed through crossbeam-epoch, and a thread keeps up to 64 deferred frees to itself
//! until it pins again often enough; a thread blocked in a flush holds the epoch back for
//! everyone. The journal therefore hands its appending and flushing threads' deferred frees
//! to the global collector (`crossbeam_epoch::pin().flush()` every 32 appends and after each
//! flush). The peak RSS still depends on how long a flush stalls the epoch;
//! `journal/examples/rss.rs` measures it.
//!
//! Those io buffers are what held the most: glibc's mmap threshold is dynamic, and the
//! free of the first (mmapped) buffer raises it above a segment, so every later buffer is
//! carved from a malloc arena, and buffers freed late keep the arena's pages resident. A
//! process embedding the journal should fix the threshold at the segment size
//! ([`segment_size_for`] says which) before opening it; reflexd does (`mallopt`), which took
//! its peak RSS at 5k records/s from ~84 to ~40 MiB (benches/README). `Journal::len` reads every record through the
//! cache: do not call it on a hot path.
//!
//! # Errors
//!
//! No failure panics: a full filesystem surfaces as [`StoreError::NoSpace`], other I/O as
//! [`StoreError::Io`]. After an I/O error sled refuses all further writes on that handle, so
//! the journal marks itself broken ([`Journal::needs_reopen`]) and refuses appends with
//! [`StoreError::Reopening`] until [`Journal::reopen`] drops the handle and opens the directory
//! again, as [`Journal::open`] does. What was reported durable is kept; appends after the last
//! durable report may be lost, and the reopen says which sequences ([`Reopened`]); the process
//! does not hand those sequences out again. [`Appender::start_reopening`] does this with
//! backoff ([`ReopenBackoff`]: at once, then 0.1 s doubling to 5 s, reset by the next group
//! commit that makes records durable), so a filesystem that stays full costs one failed open
//! every 5 s. [`Journal::open_or_wait`] returns a journal that had no space to open (ENOSPC,
//! not damage) unopened, for the appender to open the same way once there is room. Counted in
//! [`JournalStats::reopens`] and `reopen_failures`.
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
//! Limits: when the start of sled's data file is unreadable, sled 0.34 does not fail; it
//! starts a new log over the file and reports an empty database. The journal catches that
//! (content but no layout key) and moves the directory aside, but by then sled has
//! rewritten part of the file. So after an **unclean shutdown** (no
//! [`CLEAN_MARKER`] file, which a clean close writes after its last flush and fsync), the
//! data file is copied, fsynced, into [`RECOVERY_COPY_DIR`] before sled opens it, when it is
//! at most `recovery_copy_max_bytes` (default 512 MiB): the copy goes aside with the damaged
//! directory, and is removed when the journal opens fine. Its cost is one read and write of
//! the data file at each start after a crash. Damage found after a clean shutdown (the disk
//! rotting under a closed journal) is moved aside as sled left it. A sled panic while
//! opening is caught with `catch_unwind` and taken as damage too. That needs a build that
//! unwinds: reflexd's release profile does, and its panic hook aborts on every other panic
//! as `panic = "abort"` would, asking [`panic_is_caught_here`] which one it is.
//!
//! A log whose last write a full filesystem cut short may be read by sled as corrupt when
//! reopened (tests/enospc.rs), with records reported durable in it or none. It is then moved
//! aside like any damage, kept whole. Keeping the free-space floor (`Quota::min_free_bytes`)
//! above zero keeps the journal away from a real ENOSPC.
//!
//! **Salvage** (`salvage` module): right after a move-aside, and at every [`Journal::open`]
//! for each `<dir>.corrupt-*` sibling, the journal opens a copy of the aside directory with
//! sled (as is; without its newest snapshot files, which is what a snapshot that ENOSPC cut
//! short needs; without any; then as shorter prefixes of whole segments) and takes what it
//! still holds: the records after the upload watermark are re-appended in order, the
//! in-flight batch is kept whole under its own batch id (the uploader sends it first and the
//! cloud's dedupe by id stores it once), dedupe marks are merged and dead letters carried over.
//! Then the directory is renamed `<dir>.salvaged-<unix seconds>` (kept, never deleted);
//! [`OpenReport::salvaged`] says what was taken. What cannot be salvaged: a directory no
//! strategy opens (it stays `.corrupt-*`, in [`OpenReport::salvage_failed`] with sled's
//! reason, and is tried again at the next start only, never in a loop); what sled's
//! reading leaves out (a prefix of the log is an older state, whose records may then reach
//! the cloud twice; without any snapshot sled may read back only part of the log); window
//! summaries. A salvage that would break the quota or the free-space floor is left for a
//! later start.

mod appender;
mod config;
mod dead_letter;
mod drain;
mod error;
mod journal;
mod marks;
mod open;
mod quota;
mod recovery;
mod salvage;
mod stats;
mod windows;

use std::fs::File;
use std::io;
use std::path::Path;

pub use appender::{Appender, FlushDecision, GroupCommit, ReopenBackoff};
pub use config::{
    Durability, StoreConfig, DEFAULT_CACHE_CAPACITY, DEFAULT_DEAD_LETTER_MAX_RECORDS,
    DEFAULT_SEGMENT_SIZE,
};
pub use dead_letter::{file_refusals, DeadLetter, Refusals};
pub use drain::InFlight;
pub use error::StoreError;
pub use journal::{Journal, MAX_RECORD_BYTES};
pub use open::{
    segment_size_for, MovedAside, OpenReport, Reopened, CLEAN_MARKER, LOCK_WAIT, RECOVERY_COPY_DIR,
};
pub use quota::{FullPolicy, FullReason, Quota, QuotaVerdict, SpaceReading};
pub use recovery::panic_is_caught_here;
pub use salvage::{
    aside_dirs, fits, plan, strategies, Found, Plan, SalvageFailure, Salvaged, Strategy,
    MAX_PREFIX_ATTEMPTS,
};
pub use stats::JournalStats;
pub use windows::MAX_PENDING_WINDOW_BYTES;

/// The value of the `layout` meta key this build writes and reads.
pub const LAYOUT: &[u8] = b"reflex-journal/1";

// Keys of the `meta` tree (module doc, Layout).
const META_LAYOUT: &[u8] = b"layout";
const META_DELETED_THROUGH: &[u8] = b"deleted_through";
const META_WATERMARK: &[u8] = b"watermark";
const META_INFLIGHT: &[u8] = b"inflight";
/// The tree of window summaries waiting for an upload (key: BE `u64`, increasing).
const WINDOWS_TREE: &[u8] = b"windows";
const MARKS_TREE: &[u8] = b"marks";

/// The key of journal sequence `seq`: big-endian, so byte order is numeric order.
fn be(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The sequence a record key holds (`None` unless it is 8 bytes).
fn seq_of(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

/// fsyncs a file or a directory.
fn fsync_path(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}
