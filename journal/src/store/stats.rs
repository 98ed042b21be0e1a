//! The journal's counters and gauges ([`JournalStats`]), rendered as metrics by the daemon.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

#[cfg(doc)]
use super::MAX_PENDING_WINDOW_BYTES;

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
    /// Records filed in the dead-letter range (the cloud refused them one by one).
    pub dead_lettered: AtomicU64,
    /// Acks refused because the dead-letter range was at its bound (the batch is kept and
    /// retried; uploading stops until the range is cleared).
    pub dead_letter_full: AtomicU64,
    /// Records in the dead-letter range by reason (gauge); `None` until the journal has
    /// read the range ([`super::Journal::dead_letter_counts`]).
    pub dead_letter_by_reason: Mutex<Option<BTreeMap<String, u64>>>,
}
