//! The journal's one error type ([`StoreError`]) and how sled and I/O errors map to it.

use std::io;
use std::path::{Path, PathBuf};

#[cfg(doc)]
use super::MAX_RECORD_BYTES;

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
    /// An upload ack would file more refused records than the dead-letter range may hold:
    /// nothing was changed (the batch stays in flight, its records in the journal).
    #[error("dead-letter range full: {held} records held, {incoming} more refused, bound {max} (export and clear it, or raise the bound)")]
    DeadLetterFull {
        /// Records held.
        held: u64,
        /// Records the ack would add.
        incoming: u64,
        /// The bound.
        max: u64,
    },
    /// The journal is not open: being reopened after an I/O error, or waiting for space
    /// to open at all.
    #[error("the journal at {dir} is not open: {cause}")]
    Reopening {
        /// Journal directory.
        dir: PathBuf,
        /// Why: the error that broke the handle (the first since the last open), or that
        /// it has not opened yet.
        cause: String,
    },
}

impl StoreError {
    pub(super) fn from_io(dir: &Path, op: &'static str, e: io::Error) -> StoreError {
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

    pub(super) fn from_sled(dir: &Path, op: &'static str, e: sled::Error) -> StoreError {
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
