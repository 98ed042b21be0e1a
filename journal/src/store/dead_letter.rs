//! The dead-letter range: records the cloud refused one by one (an upload ack's `refused`
//! list), kept on the board instead of being deleted with the rest of their batch.
//!
//! # Layout
//!
//! Tree `dead_letter`: key = the record's journal sequence as a big-endian `u64` (the same
//! key it had in `records`, so byte order is journal order); value = the postcard encoding
//! of [`DeadLetter`]: the refusal reason's stable name (`reflex_records::RefusalReason`),
//! when the board filed it, the id of the batch it was refused in, and the encoded record
//! exactly as it was uploaded.
//!
//! # Invariants
//!
//! - A refused record is written here, and synced, **before** the ack that deletes it from
//!   `records` advances the watermark ([`Journal::ack_with_refusals`]): a refusal never
//!   deletes acknowledged data. A crash in between re-sends the batch; the cloud refuses
//!   the same records again (its checks depend only on the record) and the insert is
//!   idempotent (same key, same value).
//! - The range holds at most `StoreConfig::dead_letter_max_records` records. An ack that
//!   would go past the bound is refused with [`StoreError::DeadLetterFull`] and changes
//!   nothing: the batch stays in flight, its records stay in `records`, and the uploader
//!   retries it with backoff (so uploading **stops** until the range is exported and
//!   cleared, [`Journal::clear_dead_letter`], or the bound raised); counted in
//!   [`super::JournalStats::dead_letter_full`]. Nothing here is ever deleted except by an
//!   operator's clear.
//! - Nothing in this tree is uploaded again, and the quota never deletes from it (it is
//!   bounded by count instead).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::{be, seq_of, InFlight, Journal, StoreError};

/// Name of the dead-letter tree.
pub(super) const DEAD_LETTER_TREE: &[u8] = b"dead_letter";

/// One record in the dead-letter range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Why the cloud refused it (`reflex_records::RefusalReason::as_str`).
    pub reason: String,
    /// When the board filed it here, µs since the Unix epoch (the board's clock).
    pub filed_unix_us: u64,
    /// The batch it was refused in.
    pub batch_id: String,
    /// The encoded record as uploaded (`reflex_records::JournalRecord::encode`).
    pub record: Vec<u8>,
}

/// What the cloud refused of one batch: (journal sequence, reason name).
pub type Refusals = [(u64, String)];

/// Which refusals can be filed (pure): every journal sequence must be one of the batch's
/// records; the result is `(journal sequence, reason, record bytes)` in batch order.
pub fn file_refusals(
    batch_records: &[(u64, Vec<u8>)],
    refused: &Refusals,
) -> Result<Vec<(u64, String, Vec<u8>)>, String> {
    let mut out = Vec::with_capacity(refused.len());
    for (seq, reason) in refused {
        let Ok(i) = batch_records.binary_search_by_key(seq, |(s, _)| *s) else {
            return Err(format!(
                "the ack refuses journal sequence {seq}, which is not in the batch"
            ));
        };
        out.push((*seq, reason.clone(), batch_records[i].1.clone()));
    }
    Ok(out)
}

impl Journal {
    pub(super) fn dead_letter_tree(&self) -> Result<sled::Tree, StoreError> {
        self.h()?
            .db
            .open_tree(DEAD_LETTER_TREE)
            .map_err(self.sled_err("open dead letter"))
    }

    /// Records in the dead-letter range, by reason name. The first call reads the range;
    /// later ones (and [`super::JournalStats::dead_letter_by_reason`]) see the kept counts.
    pub fn dead_letter_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut cached = self
            .stats
            .dead_letter_by_reason
            .lock()
            .expect("dead letter counts lock");
        if let Some(c) = cached.as_ref() {
            return Ok(c.clone());
        }
        let mut counts = BTreeMap::new();
        for kv in self.dead_letter_tree()?.iter() {
            let (_, v) = kv.map_err(self.sled_err("read dead letter"))?;
            let reason = postcard::from_bytes::<DeadLetter>(&v)
                .map(|d| d.reason)
                .unwrap_or_else(|_| "unreadable".into());
            *counts.entry(reason).or_insert(0) += 1;
        }
        *cached = Some(counts.clone());
        Ok(counts)
    }

    /// Records in the dead-letter range.
    pub fn dead_letter_len(&self) -> Result<u64, StoreError> {
        Ok(self.dead_letter_counts()?.values().sum())
    }

    /// Up to `max` dead-letter records with journal sequence ≥ `from`, in order.
    pub fn dead_letters(
        &self,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, DeadLetter)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.dead_letter_tree()?.range(be(from)..).take(max) {
            let (k, v) = kv.map_err(self.sled_err("read dead letter"))?;
            let seq = seq_of(&k).ok_or_else(|| StoreError::Meta {
                key: "dead_letter",
                detail: format!("key of {} bytes", k.len()),
            })?;
            let d = postcard::from_bytes::<DeadLetter>(&v).map_err(|e| StoreError::Meta {
                key: "dead_letter",
                detail: format!("record {seq}: {e}"),
            })?;
            out.push((seq, d));
        }
        Ok(out)
    }

    /// Records the ack of the in-flight `batch` whose `refused` records the cloud did not
    /// store: files them in the dead-letter range (synced), then acks the batch as
    /// [`Journal::ack_uploaded`] does. Past the bound, [`StoreError::DeadLetterFull`] and
    /// nothing changes (module doc).
    pub fn ack_with_refusals(
        &self,
        batch: &InFlight,
        refused: &Refusals,
        now_unix_us: u64,
    ) -> Result<(), StoreError> {
        if refused.is_empty() {
            return self.ack_uploaded(batch.last_seq);
        }
        let decoded = reflex_records::decode_batch(&batch.compressed, None).map_err(|e| {
            StoreError::Meta {
                key: "inflight",
                detail: format!("batch {} does not decode: {e}", batch.id),
            }
        })?;
        let records: Vec<(u64, Vec<u8>)> = decoded
            .records
            .iter()
            .enumerate()
            .map(|(i, (s, _))| (*s, decoded.standalone(i)))
            .collect();
        let filed = file_refusals(&records, refused).map_err(|detail| StoreError::Meta {
            key: "inflight",
            detail,
        })?;
        let tree = self.dead_letter_tree()?;
        let mut new = 0u64;
        for (seq, _, _) in &filed {
            if !tree
                .contains_key(be(*seq))
                .map_err(self.sled_err("read dead letter"))?
            {
                new += 1;
            }
        }
        let held = self.dead_letter_len()?;
        let max = self.cfg.dead_letter_max_records;
        if held + new > max {
            self.stats.dead_letter_full.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::DeadLetterFull {
                held,
                incoming: new,
                max,
            });
        }
        let mut added: BTreeMap<String, u64> = BTreeMap::new();
        for (seq, reason, record) in filed {
            let value = DeadLetter {
                reason: reason.clone(),
                filed_unix_us: now_unix_us,
                batch_id: batch.id.clone(),
                record,
            };
            let bytes = postcard::to_allocvec(&value).expect("postcard to Vec is infallible");
            let old = tree
                .insert(be(seq), bytes)
                .map_err(self.sled_err("write dead letter"))?;
            if old.is_none() {
                *added.entry(reason).or_insert(0) += 1;
            }
        }
        // Durable before the ack deletes the originals.
        self.sync()?;
        {
            let mut cached = self
                .stats
                .dead_letter_by_reason
                .lock()
                .expect("dead letter counts lock");
            let counts = cached.get_or_insert_with(BTreeMap::new);
            for (reason, n) in &added {
                *counts.entry(reason.clone()).or_insert(0) += n;
            }
        }
        self.stats
            .dead_lettered
            .fetch_add(added.values().sum(), Ordering::Relaxed);
        self.ack_uploaded(batch.last_seq)
    }

    /// Files refused records of a salvaged batch (whose sequences were another journal's)
    /// under new sequences of this journal, synced. A record already filed from the same
    /// batch (an ack whose batch removal a crash undid, answered again) is not filed
    /// twice. Past the bound, [`StoreError::DeadLetterFull`] and nothing changes.
    pub(super) fn file_dead_letters_renumbered(
        &self,
        batch_id: &str,
        filed: Vec<(u64, String, Vec<u8>)>,
        now_unix_us: u64,
    ) -> Result<(), StoreError> {
        let tree = self.dead_letter_tree()?;
        let mut already = std::collections::HashSet::new();
        for kv in tree.iter() {
            let (_, v) = kv.map_err(self.sled_err("read dead letter"))?;
            if let Ok(d) = postcard::from_bytes::<DeadLetter>(&v) {
                if d.batch_id == batch_id {
                    already.insert(d.record);
                }
            }
        }
        let filed: Vec<_> = filed
            .into_iter()
            .filter(|(_, _, record)| !already.contains(record))
            .collect();
        let held = self.dead_letter_len()?;
        let max = self.cfg.dead_letter_max_records;
        let incoming = filed.len() as u64;
        if held + incoming > max {
            self.stats.dead_letter_full.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::DeadLetterFull {
                held,
                incoming,
                max,
            });
        }
        let mut added: BTreeMap<String, u64> = BTreeMap::new();
        {
            // New sequences, never handed out to a record (a gap in `records`).
            let mut next = self.next_seq.lock().expect("journal sequence lock");
            for (_, reason, record) in filed {
                let value = DeadLetter {
                    reason: reason.clone(),
                    filed_unix_us: now_unix_us,
                    batch_id: batch_id.to_owned(),
                    record,
                };
                let bytes = postcard::to_allocvec(&value).expect("postcard to Vec is infallible");
                tree.insert(be(*next), bytes)
                    .map_err(self.sled_err("write dead letter"))?;
                *next += 1;
                *added.entry(reason).or_insert(0) += 1;
            }
        }
        self.sync()?;
        let mut cached = self
            .stats
            .dead_letter_by_reason
            .lock()
            .expect("dead letter counts lock");
        let counts = cached.get_or_insert_with(BTreeMap::new);
        for (reason, n) in &added {
            *counts.entry(reason.clone()).or_insert(0) += n;
        }
        self.stats
            .dead_lettered
            .fetch_add(added.values().sum(), Ordering::Relaxed);
        Ok(())
    }

    /// Removes the dead-letter records at or below `through` (an operator's clear, after
    /// exporting them); returns how many. Synced.
    pub fn clear_dead_letter(&self, through: u64) -> Result<u64, StoreError> {
        // Load the counts first, so that they can be lowered.
        self.dead_letter_counts()?;
        let tree = self.dead_letter_tree()?;
        let mut removed: BTreeMap<String, u64> = BTreeMap::new();
        for kv in tree.range(..=be(through)) {
            let (k, v) = kv.map_err(self.sled_err("read dead letter"))?;
            let reason = postcard::from_bytes::<DeadLetter>(&v)
                .map(|d| d.reason)
                .unwrap_or_else(|_| "unreadable".into());
            tree.remove(k).map_err(self.sled_err("clear dead letter"))?;
            *removed.entry(reason).or_insert(0) += 1;
        }
        self.sync()?;
        let mut cached = self
            .stats
            .dead_letter_by_reason
            .lock()
            .expect("dead letter counts lock");
        let counts = cached.get_or_insert_with(BTreeMap::new);
        for (reason, n) in &removed {
            if let Some(c) = counts.get_mut(reason) {
                *c = c.saturating_sub(*n);
            }
        }
        Ok(removed.values().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_filed_with_the_bytes_of_their_records() {
        let batch = vec![(4, vec![4u8]), (5, vec![5u8]), (7, vec![7u8])];
        let filed = file_refusals(&batch, &[(5, "features_missing".into())]).unwrap();
        assert_eq!(filed, vec![(5, "features_missing".into(), vec![5u8])]);
    }

    #[test]
    fn a_refusal_of_a_record_outside_the_batch_is_an_error_naming_it() {
        let batch = vec![(4, vec![4u8]), (7, vec![7u8])];
        let e = file_refusals(&batch, &[(6, "device_id".into())]).unwrap_err();
        assert!(e.contains('6'), "{e}");
    }
}
