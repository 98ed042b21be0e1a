//! What the uploader reads and writes: scanning records in order, the watermark, the batch
//! in flight (persisted before it is sent) and its ack. Records the cloud refused one by
//! one are filed by `dead_letter` before the ack.

use serde::{Deserialize, Serialize};

use super::{be, seq_of, Journal, StoreError, META_INFLIGHT, META_WATERMARK};

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

impl Journal {
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

    pub(super) fn read_meta_u64(
        &self,
        key: &'static [u8],
        name: &'static str,
    ) -> Result<u64, StoreError> {
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
}
