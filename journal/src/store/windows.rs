//! Window summaries (opaque bytes) waiting to ride with an upload, in the `windows` tree.

use std::sync::atomic::Ordering;

#[cfg(doc)]
use super::JournalStats;
use super::{be, seq_of, Journal, StoreError, WINDOWS_TREE};

/// Most bytes of window summaries kept for the uploader; beyond, the oldest go.
pub const MAX_PENDING_WINDOW_BYTES: u64 = 16 << 20;

impl Journal {
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
}
