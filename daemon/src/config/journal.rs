//! `[journal]`: the durable record of every decided event.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::Problems;

/// `[journal]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// Directory of the sled journal (created if missing; under systemd,
    /// `/var/lib/reflex/journal`). Required.
    pub dir: PathBuf,
    /// `"fsync"`: a record acked to the broker survives a power cut (on a disk that honours
    /// flushes); `"flush"`: only a process crash. Default: `"fsync"`.
    #[serde(default)]
    pub durability: JournalDurability,
    /// Group commit: flush after this many records... Default: `256`.
    #[serde(default = "group_commit_records_default")]
    pub group_commit_records: usize,
    /// ...or this long after the oldest unflushed record, whichever first. Default: `5`.
    #[serde(default = "group_commit_ms_default")]
    pub group_commit_ms: u64,
    /// sled page cache, MiB (sled's own default is 1 GiB). Default: `4`.
    #[serde(default = "cache_mib_default")]
    pub cache_mib: u64,
    /// sled segment (and io buffer) size of a new journal, KiB, a power of two; a journal
    /// keeps the size it was created with. Default: `512`.
    #[serde(default = "segment_kib_default")]
    pub segment_kib: u64,
    /// What the journal keeps, MiB (sled's files run at about twice the live data and do
    /// not shrink; give the filesystem several times this). Default: `256`.
    #[serde(default = "quota_mib_default")]
    pub quota_mib: u64,
    /// Free space the filesystem must keep, MiB: below it the journal sheds records, below
    /// half of it appends are refused, so sled never meets ENOSPC. Default: `64`.
    #[serde(default = "min_free_mib_default")]
    pub min_free_mib: u64,
    /// When full and nothing uploaded is left to delete: `"drop-oldest"` deletes the oldest
    /// records **not yet uploaded**, although their events were acked (during a long cloud
    /// outage these are lost to the cloud; counted in
    /// `reflexd_journal_dropped_records_total`), or `"backpressure"` (stop acking; the
    /// broker keeps the events). Default: `"drop-oldest"`.
    #[serde(default)]
    pub when_full: WhenFull,
    /// Keep records after their upload ack (deleted first when space is needed).
    /// Default: `false`.
    #[serde(default)]
    pub keep_uploaded: bool,
    /// Journal records read at start to re-learn which events were already decided (so a
    /// redelivery after a crash is answered and journaled once). Default: `100000`.
    #[serde(default = "dedupe_scan_records_default")]
    pub dedupe_scan_records: usize,
    /// Most records the dead-letter range keeps (records the cloud refused one by one).
    /// At the bound the uploader acks nothing more (it retries the batch with backoff)
    /// until the range is exported and cleared (`reflexd journal clear-dead-letter`);
    /// nothing is deleted. Default: `10000`.
    #[serde(default = "dead_letter_max_records_default")]
    pub dead_letter_max_records: u64,
}

/// `journal.durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalDurability {
    /// flush + fsync.
    #[default]
    Fsync,
    /// flush (sync_file_range) only.
    Flush,
}

/// `journal.when_full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Delete the oldest records, uploaded or not (the loss counted).
    #[default]
    DropOldest,
    /// Refuse appends (and so acks) until uploads free space.
    Backpressure,
}

fn group_commit_records_default() -> usize {
    256
}
fn group_commit_ms_default() -> u64 {
    5
}
fn cache_mib_default() -> u64 {
    4
}
fn segment_kib_default() -> u64 {
    (reflex_journal::store::DEFAULT_SEGMENT_SIZE >> 10) as u64
}
fn quota_mib_default() -> u64 {
    256
}
fn min_free_mib_default() -> u64 {
    64
}
fn dedupe_scan_records_default() -> usize {
    100_000
}
fn dead_letter_max_records_default() -> u64 {
    reflex_journal::store::DEFAULT_DEAD_LETTER_MAX_RECORDS
}

impl JournalConfig {
    pub(super) fn validate(&self, p: &mut Problems) {
        if self.dir.as_os_str().is_empty() {
            p.add_str("journal.dir", "", "must name a directory");
        }
        p.range(
            "journal.group_commit_records",
            self.group_commit_records,
            1,
            100_000,
        );
        p.range("journal.group_commit_ms", self.group_commit_ms, 1, 10_000);
        p.range("journal.cache_mib", self.cache_mib, 1, 4096);
        if !(self.segment_kib.is_power_of_two() && (16..=16_384).contains(&self.segment_kib)) {
            p.add(
                "journal.segment_kib",
                self.segment_kib,
                "must be a power of two from 16 to 16384",
            );
        }
        p.range("journal.quota_mib", self.quota_mib, 1, 1 << 20);
        p.range("journal.min_free_mib", self.min_free_mib, 0, 1 << 20);
        p.range(
            "journal.dedupe_scan_records",
            self.dedupe_scan_records,
            0,
            10_000_000,
        );
        p.range(
            "journal.dead_letter_max_records",
            self.dead_letter_max_records,
            1,
            10_000_000,
        );
    }
}
