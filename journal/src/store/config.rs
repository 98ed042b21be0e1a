//! What a journal is opened with: [`StoreConfig`] and its [`Durability`].

use std::path::PathBuf;

use super::Quota;

/// Default sled page cache: small, for a board (sled's own default is 1 GiB).
pub const DEFAULT_CACHE_CAPACITY: u64 = 16 << 20;
/// Default sled segment (and io buffer) size: sled's own, 512 KiB. Values above about a
/// quarter of it go to blob files. A smaller one did not lower RSS; the mmap threshold did
/// (`store` module doc, Memory).
pub const DEFAULT_SEGMENT_SIZE: usize = 512 << 10;

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
    /// it, if it is at most this large (0: never). See the `store` module doc, Corruption.
    pub recovery_copy_max_bytes: u64,
    /// Most records the dead-letter range keeps (records the cloud refused one by one);
    /// at the bound the uploader stops acking (see the `dead_letter` module). Default:
    /// [`DEFAULT_DEAD_LETTER_MAX_RECORDS`].
    pub dead_letter_max_records: u64,
}

/// Default bound of the dead-letter range, records (about 15 MB of 1.4 KB records).
pub const DEFAULT_DEAD_LETTER_MAX_RECORDS: u64 = 10_000;

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
            dead_letter_max_records: DEFAULT_DEAD_LETTER_MAX_RECORDS,
        }
    }
}
