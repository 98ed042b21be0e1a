//! The disk quota: the pure verdict on a space reading ([`Quota::assess`]), and the journal
//! applying it: deleting uploaded records, then dropping the oldest or refusing appends
//! (backpressure).

use std::sync::atomic::Ordering;

use super::{be, Journal, StoreError, META_DELETED_THROUGH};

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

impl Journal {
    /// Deletes every record with sequence ≤ `seq` (a prefix). Returns (records, bytes)
    /// deleted. Not durable until the next [`Journal::sync`].
    pub fn delete_through(&self, seq: u64) -> Result<(u64, u64), StoreError> {
        self.delete_prefix(seq, 0)
    }

    /// Deletes a prefix: records ≤ `through`, stopping once live bytes ≤ `target_live`.
    pub(super) fn delete_prefix(
        &self,
        through: u64,
        target_live: u64,
    ) -> Result<(u64, u64), StoreError> {
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
            self.mark_deleted(
                chunk
                    .iter()
                    .take_while(|(s, _)| *s <= upto)
                    .map(|(_, v)| &v[..]),
            )?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
