//! Per-device dedupe marks, in the `marks` tree: what the deleted records said about their
//! devices, so that a restarted reflexd can tell a redelivery of an event whose record is
//! gone (uploaded and deleted, or dropped by the quota) from a new event.
//!
//! Key = the device id's bytes; value = BE `u64`, the highest event sequence number of that
//! device among the deleted records. Written by every prefix deletion, for the records it
//! deletes, **before** `deleted_through` and the removals (same thread, so in sled's log
//! order): after a crash, a deleted record's mark survives whenever its deletion did. A
//! record that does not decode as a [`JournalRecord`] leaves no mark. One entry per device
//! ever deleted for (a device id is at most 64 bytes: the tree stays small); moved aside
//! with a damaged journal like everything else.

use std::collections::HashMap;

use reflex_records::JournalRecord;

use super::{be, Journal, StoreError, MARKS_TREE};

impl Journal {
    fn marks_tree(&self) -> Result<sled::Tree, StoreError> {
        self.h()?
            .db
            .open_tree(MARKS_TREE)
            .map_err(self.sled_err("open marks"))
    }

    /// Raises the marks of the devices in `records` (encoded records about to be
    /// deleted) to their highest sequence numbers.
    pub(super) fn mark_deleted<'a>(
        &self,
        records: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), StoreError> {
        let mut highest: HashMap<String, u64> = HashMap::new();
        for bytes in records {
            if let Ok(r) = JournalRecord::decode(bytes) {
                let h = highest.entry(r.device).or_insert(r.seq);
                *h = (*h).max(r.seq);
            }
        }
        if highest.is_empty() {
            return Ok(());
        }
        let tree = self.marks_tree()?;
        for (device, seq) in highest {
            tree.fetch_and_update(device.as_bytes(), |old| {
                let old = old.and_then(|v| v.try_into().ok()).map(u64::from_be_bytes);
                Some(be(old.map_or(seq, |o| o.max(seq))).to_vec())
            })
            .map_err(self.sled_err("write mark"))?;
        }
        Ok(())
    }

    /// Every device's mark: (device id, the highest sequence number of its deleted
    /// records).
    pub fn dedupe_marks(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.marks_tree()?.iter() {
            let (k, v) = kv.map_err(self.sled_err("read marks"))?;
            let (Ok(device), Ok(seq)) =
                (String::from_utf8(k.to_vec()), <[u8; 8]>::try_from(&v[..]))
            else {
                continue;
            };
            out.push((device, u64::from_be_bytes(seq)));
        }
        Ok(out)
    }
}
