//! `reflex-cloud compact`: merges the small committed files of a partition into one.
//!
//! The ingest writes one Parquet file per batch × date × device, so a fleet uploading every
//! few seconds leaves thousands of small files per partition, and a rescore pays a request
//! and a Parquet footer for each. Compaction rewrites them, per partition `(date, device)`,
//! into files of about `--target-bytes`, rows sorted by batch id then journal sequence
//! ([`merge::merge_events`]), on the local store and on S3 alike.
//!
//! **Key layout** ([`crate::layout`]):
//!
//! ```text
//! events/date=D/device=X/<batch id>.parquet         a batch's rows of the partition (ingest)
//! batches/<batch id>.json                           the batch's marker (ingest's commit point)
//! events/date=D/device=X/compacted-<id>.parquet     the rows of several batches (compaction)
//! compactions/date=D/device=X/<id>.json             its marker (compaction's commit point)
//! ```
//!
//! `<id>` is the SHA-256 of the partition and the sorted batch ids the file holds
//! ([`plan::compaction_id`]); the marker ([`CompactionMarker`]) names the file, those
//! batches, and the files it was merged from.
//!
//! **Commit protocol.** A run lists the batch markers, then, per day, the compaction
//! markers, then the event files, and resolves each partition as readers do (below). For
//! each merge [`plan::plan_partition`] plans, it
//! 1. reads the input files (the readers' current files of those batches: batch files, or
//!    compacted files of an earlier round), merges their rows and writes the compacted file
//!    with [`Storage::put_durable`];
//! 2. checks that the inputs are still the files readers take, then creates the
//!    compaction marker with [`Storage::create_durable`] (create only if
//!    absent): **the commit point**;
//! 3. after all merges of the day, deletes the files the day's markers have replaced, once
//!    the marker that replaced them is older than `--grace`, and compacted files that no
//!    marker names (a run killed between 1 and 2) once they are older than `--grace`.
//!
//! **What readers do** ([`plan::resolve_day`], used by `rescore`'s
//! [`crate::rescore::Snapshot::resolve`]): list the batch markers, then the day's
//! compaction markers, then the day's event files. Per partition, take a compaction when
//! its file is listed, greedily by the number of batches it covers (ties by id), skipping
//! one that shares a batch with a compaction already taken; then take each committed
//! batch's own file when no taken compaction covers that batch.
//!
//! **Invariants.**
//! - A compacted file holds exactly the rows of its marker's batches in its partition
//!   (checked when it is written: every row's batch is one of them, and the row count is
//!   the inputs'), and is durable before its marker exists. A marker is never overwritten
//!   or deleted. Same batches, same id: a merge planned again (after a kill) rewrites the
//!   same name with the same bytes and finds or creates the same marker.
//! - Markers are listed before files: a reader that sees a marker sees its file (written
//!   before it), unless a later, larger compaction replaced it, which the reader then also
//!   sees; a reader that does not see a marker reads the batch files, which are still there
//!   (deleted only `--grace` after the marker).
//! - So every committed batch's rows are read exactly once, whether the reader lists
//!   before, during or after a compaction: without the marker the compacted file is
//!   ignored; with it, it replaces exactly the files of its batches. A second round merges
//!   compacted files with new batch files into a compaction that covers all their batches,
//!   so it is taken before (and instead of) each of them. Checked after every step of
//!   random runs killed at random points, on a model of the store
//!   (`plan::tests::every_committed_batch_is_read_exactly_once_through_rounds_and_kills`).
//! - A run killed at any point leaves the store readable: before the marker, its file is
//!   ignored (and deleted by a later run once `--grace` old, or rewritten and committed if
//!   that run plans the same merge); after it, the replaced files are merely not read, and
//!   a later run deletes them. A failed delete is harmless for the same reason.
//! - `--grace` (default 1 h) is how long a reader that resolved its snapshot before a
//!   commit may still be reading the replaced files: a `rescore` run (its service allows 50
//!   min) reads the files it listed, after listing. A `--replay` of a run older than the
//!   compaction fails, naming the replaced file, as for any file gone or changed.
//! - **One compaction at a time per store.** Two runs planning from the same view could
//!   both commit merges that share a file's batches; readers then take one and read the
//!   other's batches from their batch files (still no row twice: a batch is never read
//!   from two files), but a batch file deleted by the other run could be missing. The
//!   oneshot service and its timer (`cross/reflex-cloud-compact.*`) never overlap; do not
//!   start a second `compact` by hand while one runs. Just before its commit a merge checks
//!   that its inputs are still the files readers take ([`CompactError::Raced`] if not),
//!   which narrows that window without closing it. Compactions that overlap are counted
//!   as `conflicting` in the report and their files are left alone.
//! - Compaction runs beside any number of ingest processes: it only takes committed
//!   batches, never writes a batch file or marker, and a batch committed after its listing
//!   is simply not in this round.
//!
//! Other engines reading `events/` directly (Spark, DuckDB …) see, within `--grace` of a
//! compaction, both the compacted file and the files it replaced: read the snapshot's file
//! list (`run.json`), or the compacted partitions after the grace.

pub mod merge;
pub mod plan;

use std::collections::{BTreeSet, HashMap, HashSet};

use arrow_array::{Array, RecordBatch, StringArray};
use arrow_schema::ArrowError;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::layout::{self, Day};
use crate::storage::{Listed, Storage, StorageError};
use crate::table::{self, TableError};

/// Why a compaction failed.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// The store failed, or a compaction marker is unreadable.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// An input file does not decode, or the merged file does not encode.
    #[error("table {path:?}: {source}")]
    Table {
        /// The file.
        path: String,
        /// The error.
        source: TableError,
    },
    /// The inputs of a merge do not fit together (a column of two types …) or hold rows of
    /// other batches than their names say.
    #[error("partition {partition}: {source}")]
    Merge {
        /// `date=…/device=…`.
        partition: String,
        /// The error.
        source: ArrowError,
    },
    /// An input of a merge is no longer what readers take: another compaction committed
    /// meanwhile. The merge is not committed.
    #[error("partition {partition}: {file} is no longer read (another compaction committed meanwhile); merge not committed")]
    Raced {
        /// `date=…/device=…`.
        partition: String,
        /// The input.
        file: String,
    },
    /// Options out of range.
    #[error("{0}")]
    Options(String),
    /// A blocking task died.
    #[error("compaction task failed: {0}")]
    Task(String),
}

/// The marker of a compaction: `compactions/date=D/device=X/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactionMarker {
    /// [`plan::compaction_id`] of the partition and `batches`.
    pub id: String,
    /// The partition's date, `YYYY-MM-DD`.
    pub date: String,
    /// The partition's device.
    pub device: String,
    /// The compacted file, `events/date=D/device=X/compacted-<id>.parquet`.
    pub file: String,
    /// The batches whose rows of the partition the file holds, sorted.
    pub batches: Vec<String>,
    /// The files it was merged from, sorted.
    pub inputs: Vec<String>,
    /// Rows in the file.
    pub rows: u64,
    /// Size of the file, bytes.
    pub bytes: u64,
}

impl CompactionMarker {
    /// Checks that the marker at `path`, found under `day`, is one this module wrote:
    /// its date, its id (the hash of its partition and batches), its file's and its own
    /// path.
    pub fn check(&self, path: &str, day: Day) -> Result<(), String> {
        if self.date != day.to_string() {
            return Err(format!("date {:?} under the day {day}", self.date));
        }
        if !layout::valid_device_id(&self.device) {
            return Err(format!("device {:?} is not a device id", self.device));
        }
        if self.batches.is_empty() {
            return Err("no batches".into());
        }
        if let Some(b) = self.batches.iter().find(|b| !layout::valid_batch_id(b)) {
            return Err(format!("batch {b:?} is not a batch id"));
        }
        if self.batches.windows(2).any(|w| w[0] >= w[1]) {
            return Err("batches not sorted or repeated".into());
        }
        let id = plan::compaction_id(day, &self.device, &self.batches);
        if self.id != id {
            return Err(format!("id {:?} is not its batches' ({id})", self.id));
        }
        let file = layout::compacted_file(day, &self.device, &id);
        if self.file != file {
            return Err(format!("file {:?} is not {file:?}", self.file));
        }
        let own = layout::compaction_marker(day, &self.device, &id);
        if path != own {
            return Err(format!("stored at {path:?}, not {own:?}"));
        }
        Ok(())
    }
}

/// The compaction markers of `day`, each with its last modification (ms since the epoch),
/// by path. A marker that does not parse or [check](CompactionMarker::check) is an error:
/// its batches' files may be gone, so no reader may go on without it.
pub async fn read_markers(
    storage: &Storage,
    day: Day,
) -> Result<Vec<(CompactionMarker, i64)>, StorageError> {
    read_markers_under(storage, day, &layout::compactions_day_prefix(day)).await
}

/// [`read_markers`] under `prefix` (a day's, or one partition's).
async fn read_markers_under(
    storage: &Storage,
    day: Day,
    prefix: &str,
) -> Result<Vec<(CompactionMarker, i64)>, StorageError> {
    let mut out = Vec::new();
    for (l, modified) in storage.list_modified(prefix).await? {
        if !l.path.ends_with(".json") {
            continue;
        }
        let bytes = storage.get(&l.path).await?;
        let marker: CompactionMarker =
            serde_json::from_slice(&bytes).map_err(|e| StorageError::Marker {
                path: l.path.clone(),
                reason: e.to_string(),
            })?;
        marker
            .check(&l.path, day)
            .map_err(|reason| StorageError::Marker {
                path: l.path.clone(),
                reason,
            })?;
        out.push((marker, modified));
    }
    Ok(out)
}

/// The ids of every committed batch (the batch markers), listed first by every reader.
pub async fn committed_batches(storage: &Storage) -> Result<HashSet<String>, StorageError> {
    Ok(storage
        .list(layout::MARKERS_PREFIX)
        .await?
        .into_iter()
        .filter_map(|l| {
            l.path
                .rsplit('/')
                .next()
                .and_then(|n| n.strip_suffix(".json"))
                .map(str::to_owned)
        })
        .collect())
}

/// The day a `--day` value names: `YYYY-MM-DD`, or `today`/`yesterday` relative to
/// `today`; the error names the value.
pub fn parse_day(text: &str, today: Day) -> Result<Day, String> {
    match text {
        "today" => Ok(today),
        "yesterday" => Ok(Day::from_days(today.days() - 1)),
        _ if text.len() == 10 && text.as_bytes()[4] == b'-' => layout::parse_instant(text)
            .map(Day::of_unix_us)
            .map_err(|e| format!("--day: {e}")),
        _ => Err(format!(
            "--day {text:?} is not YYYY-MM-DD, today or yesterday"
        )),
    }
}

/// A `--grace` value: `0` (at once), or a span as `rescore --last` takes (`30m`, `1h`,
/// `2d`), in seconds.
pub fn parse_grace(text: &str) -> Result<u64, String> {
    if text.trim() == "0" {
        return Ok(0);
    }
    crate::runs::parse_span(text)
        .map_err(|_| format!("--grace {text:?} is not 0 or a span of 1s to 366d (30m, 1h, 2d)"))
}

/// What a run may merge and delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactOptions {
    /// A partition is compacted when it has at least this many files under `target_bytes`
    /// (at least 2).
    pub min_files: usize,
    /// Target size of a compacted file, bytes (its inputs' sizes add up to at most this).
    pub target_bytes: u64,
    /// Replaced files are deleted once the marker that replaced them is this old, orphaned
    /// compacted files once they are this old, s.
    pub grace_s: u64,
}

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions {
            min_files: 8,
            target_bytes: 64 << 20,
            grace_s: 3_600,
        }
    }
}

impl CompactOptions {
    /// Every option out of range, each naming the option and its value.
    pub fn errors(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.min_files < 2 {
            errors.push(format!(
                "--min-files {} is below 2 (one file has nothing to merge with)",
                self.min_files
            ));
        }
        if self.target_bytes < 1024 {
            errors.push(format!(
                "--target-bytes {} is below 1024",
                self.target_bytes
            ));
        }
        errors
    }
}

/// One merge a run committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merged {
    /// The compacted file.
    pub file: String,
    /// Files merged.
    pub inputs: usize,
    /// Their bytes.
    pub input_bytes: u64,
    /// The compacted file's bytes.
    pub bytes: u64,
    /// Rows.
    pub rows: u64,
    /// Whether its marker already existed (the same merge committed by an earlier run).
    pub already_committed: bool,
}

/// A partition a run could not compact (its files are left as they were).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    /// `date=…/device=…`.
    pub partition: String,
    /// Why.
    pub reason: String,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CompactReport {
    /// Partitions looked at.
    pub partitions: usize,
    /// Merges committed.
    pub merged: Vec<Merged>,
    /// Replaced files deleted.
    pub deleted: usize,
    /// Replaced files kept because their replacement is younger than the grace.
    pub kept_in_grace: usize,
    /// Compacted files without a marker deleted.
    pub orphans_deleted: usize,
    /// Deletes that failed (the files stay, unread; a later run tries again).
    pub delete_failures: usize,
    /// Compactions overlapping a taken one (two runs at once), left alone.
    pub conflicting: usize,
    /// Partitions not compacted, and why.
    pub failed: Vec<Failed>,
}

/// Compacts every partition of `days` (module doc): merges, then deletions past the grace.
/// A partition whose files cannot be merged is reported in [`CompactReport::failed`] and
/// left as it was; the others go on. Errors only when the store cannot be listed or a
/// marker read.
pub async fn compact_days(
    storage: &Storage,
    days: &[Day],
    opts: &CompactOptions,
) -> Result<CompactReport, CompactError> {
    let errors = opts.errors();
    if !errors.is_empty() {
        return Err(CompactError::Options(errors.join("; ")));
    }
    let mut report = CompactReport::default();
    for &day in days {
        let committed = committed_batches(storage).await?;
        let markers = read_markers(storage, day).await?;
        let listed = storage.list(&layout::day_prefix(day)).await?;
        let parts = plan::resolve_day(&listed, &committed, markers.iter().map(|(m, _)| m));
        report.partitions += parts.len();
        for p in &parts {
            for group in plan::plan_partition(&p.units, opts.min_files, opts.target_bytes) {
                match compact_group(storage, day, &p.device, &group).await {
                    Ok(m) => {
                        tracing::info!(
                            file = %m.file, inputs = m.inputs, rows = m.rows,
                            input_bytes = m.input_bytes, bytes = m.bytes, "compacted"
                        );
                        report.merged.push(m);
                    }
                    Err(e) => {
                        let partition = format!("date={day}/device={}", p.device);
                        tracing::error!(%partition, error = %e, "partition not compacted");
                        report.failed.push(Failed {
                            partition,
                            reason: e.to_string(),
                        });
                        break;
                    }
                }
            }
        }
        clean_day(storage, day, opts.grace_s, &mut report).await?;
    }
    Ok(report)
}

/// Merges one planned group of one partition, writes it durably and commits its marker.
pub async fn compact_group(
    storage: &Storage,
    day: Day,
    device: &str,
    group: &[plan::Unit],
) -> Result<Merged, CompactError> {
    let (marker, bytes) = write_group(storage, day, device, group).await?;
    inputs_still_current(storage, day, device, group).await?;
    let already_committed = !commit(storage, day, &marker).await?;
    Ok(Merged {
        file: marker.file,
        inputs: group.len(),
        input_bytes: group.iter().map(|u| u.file.size).sum(),
        bytes,
        rows: marker.rows,
        already_committed,
    })
}

/// Steps 1 of the protocol: merges `group` and writes the compacted file durably; returns
/// the marker to commit (not yet written) and the file's size.
pub async fn write_group(
    storage: &Storage,
    day: Day,
    device: &str,
    group: &[plan::Unit],
) -> Result<(CompactionMarker, u64), CompactError> {
    let batches: BTreeSet<String> = group.iter().flat_map(|u| u.batches.clone()).collect();
    let batches: Vec<String> = batches.into_iter().collect();
    let id = plan::compaction_id(day, device, &batches);
    let file = layout::compacted_file(day, device, &id);
    let mut inputs = Vec::with_capacity(group.len());
    for u in group {
        inputs.push((u.file.path.clone(), storage.get(&u.file.path).await?));
    }
    let partition = format!("date={day}/device={device}");
    let expected = batches.clone();
    let (parquet, rows) =
        tokio::task::spawn_blocking(move || merge_files(&partition, inputs, &expected))
            .await
            .map_err(|e| CompactError::Task(e.to_string()))??;
    let size = parquet.len() as u64;
    storage.put_durable(&file, Bytes::from(parquet)).await?;
    let mut sources: Vec<String> = group.iter().map(|u| u.file.path.clone()).collect();
    sources.sort();
    Ok((
        CompactionMarker {
            id,
            date: day.to_string(),
            device: device.to_owned(),
            file,
            batches,
            inputs: sources,
            rows,
            bytes: size,
        },
        size,
    ))
}

/// Refuses to commit a merge whose inputs are no longer what readers take (another
/// compaction committed meanwhile, which one compaction at a time rules out): its file
/// then stays an orphan. Narrows, does not close, the window of two runs at once.
async fn inputs_still_current(
    storage: &Storage,
    day: Day,
    device: &str,
    group: &[plan::Unit],
) -> Result<(), CompactError> {
    let committed = committed_batches(storage).await?;
    let markers = read_markers_under(
        storage,
        day,
        &format!("{}/device={device}", layout::compactions_day_prefix(day)),
    )
    .await?;
    let listed = storage
        .list(&format!("{}/device={device}", layout::day_prefix(day)))
        .await?;
    let current: BTreeSet<Listed> =
        plan::resolve_day(&listed, &committed, markers.iter().map(|(m, _)| m))
            .into_iter()
            .flat_map(|p| p.units.into_iter().map(|u| u.file))
            .collect();
    match group.iter().find(|u| !current.contains(&u.file)) {
        None => Ok(()),
        Some(u) => Err(CompactError::Raced {
            partition: format!("date={day}/device={device}"),
            file: u.file.path.clone(),
        }),
    }
}

/// Step 2, the commit point: creates the marker if absent. `Ok(false)`: it existed (the
/// same merge, committed earlier).
pub async fn commit(
    storage: &Storage,
    day: Day,
    marker: &CompactionMarker,
) -> Result<bool, CompactError> {
    let path = layout::compaction_marker(day, &marker.device, &marker.id);
    let json = serde_json::to_vec_pretty(marker).expect("a compaction marker serializes");
    Ok(storage.create_durable(&path, Bytes::from(json)).await?)
}

/// Decodes the inputs, checks that they hold only rows of `batches`, merges and encodes.
fn merge_files(
    partition: &str,
    inputs: Vec<(String, Bytes)>,
    batches: &[String],
) -> Result<(Vec<u8>, u64), CompactError> {
    let merge_err = |source| CompactError::Merge {
        partition: partition.to_owned(),
        source,
    };
    let allowed: HashSet<&str> = batches.iter().map(String::as_str).collect();
    let mut all: Vec<RecordBatch> = Vec::new();
    let mut rows = 0u64;
    for (path, bytes) in inputs {
        let decoded = table::read_parquet(bytes).map_err(|source| CompactError::Table {
            path: path.clone(),
            source,
        })?;
        for b in &decoded {
            let ids = b
                .column_by_name("batch_id")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| {
                    merge_err(ArrowError::SchemaError(format!(
                        "{path} has no Utf8 column \"batch_id\""
                    )))
                })?;
            if let Some(i) =
                (0..ids.len()).find(|&i| !ids.is_valid(i) || !allowed.contains(ids.value(i)))
            {
                return Err(merge_err(ArrowError::InvalidArgumentError(format!(
                    "{path} holds a row of batch {:?}, not one of the {} it is read for",
                    ids.is_valid(i).then(|| ids.value(i)),
                    batches.len()
                ))));
            }
            rows += b.num_rows() as u64;
        }
        all.extend(decoded);
    }
    let merged = merge::merge_events(&all).map_err(merge_err)?;
    if merged.num_rows() as u64 != rows {
        return Err(merge_err(ArrowError::ComputeError(format!(
            "{} rows merged from {rows}",
            merged.num_rows()
        ))));
    }
    let parquet = table::to_parquet(&merged).map_err(|source| CompactError::Table {
        path: partition.to_owned(),
        source,
    })?;
    Ok((parquet, rows))
}

/// Step 3: deletes the day's replaced files whose replacing markers are all older than
/// `grace_s`, and compacted files without a marker older than `grace_s`.
async fn clean_day(
    storage: &Storage,
    day: Day,
    grace_s: u64,
    report: &mut CompactReport,
) -> Result<(), CompactError> {
    let now_ms = jiff::Timestamp::now().as_millisecond();
    let grace_ms = i64::try_from(grace_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    // No grace: at once, even if the store's clock runs ahead of this host's.
    let old = |modified_ms: i64| grace_ms == 0 || now_ms.saturating_sub(modified_ms) >= grace_ms;
    let committed = committed_batches(storage).await?;
    let markers = read_markers(storage, day).await?;
    let marker_age: HashMap<&str, i64> = markers.iter().map(|(m, t)| (m.id.as_str(), *t)).collect();
    let listed = storage.list_modified(&layout::day_prefix(day)).await?;
    let file_age: HashMap<&str, i64> = listed.iter().map(|(l, t)| (l.path.as_str(), *t)).collect();
    let files: Vec<Listed> = listed.iter().map(|(l, _)| l.clone()).collect();
    let parts = plan::resolve_day(&files, &committed, markers.iter().map(|(m, _)| m));
    for p in parts {
        report.conflicting += p.conflicting.len();
        let mut doomed = Vec::new();
        for s in &p.superseded {
            if s.by
                .iter()
                .all(|id| marker_age.get(id.as_str()).is_some_and(|t| old(*t)))
            {
                doomed.push(&s.file.path);
            } else {
                report.kept_in_grace += 1;
            }
        }
        let orphans: Vec<&String> = p
            .orphans
            .iter()
            .filter(|o| file_age.get(o.path.as_str()).is_some_and(|t| old(*t)))
            .map(|o| &o.path)
            .collect();
        for (path, orphan) in doomed
            .into_iter()
            .map(|p| (p, false))
            .chain(orphans.into_iter().map(|p| (p, true)))
        {
            match storage.delete(path).await {
                Ok(()) if orphan => report.orphans_deleted += 1,
                Ok(()) => report.deleted += 1,
                Err(e) => {
                    tracing::warn!(%path, error = %e, "delete failed; the file stays, unread");
                    report.delete_failures += 1;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_dates_today_or_yesterday_and_others_are_refused_naming_them() {
        let today = Day::from_days(20_454);
        assert_eq!(parse_day("today", today), Ok(today));
        assert_eq!(parse_day("yesterday", today), Ok(Day::from_days(20_453)));
        assert_eq!(
            parse_day("2026-01-01", today).map(|d| d.to_string()),
            Ok("2026-01-01".into())
        );
        for bad in [
            "2026-02-30",
            "1767225600",
            "tomorrow",
            "2026-01-01T00:00:00Z",
        ] {
            let e = parse_day(bad, today).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn grace_is_zero_or_a_span_and_options_out_of_range_are_named() {
        assert_eq!(parse_grace("0"), Ok(0));
        assert_eq!(parse_grace("1h"), Ok(3_600));
        assert!(parse_grace("soon").unwrap_err().contains("soon"));
        assert!(CompactOptions::default().errors().is_empty());
        let bad = CompactOptions {
            min_files: 1,
            target_bytes: 10,
            grace_s: 0,
        };
        let errors = bad.errors();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("--min-files 1"));
        assert!(errors[1].contains("--target-bytes 10"));
    }

    #[test]
    fn a_marker_is_checked_against_its_path_day_and_batches() {
        let day = Day::from_days(20_454);
        let batches = vec!["a".repeat(64), "b".repeat(64)];
        let id = plan::compaction_id(day, "dev-1", &batches);
        let m = CompactionMarker {
            file: layout::compacted_file(day, "dev-1", &id),
            date: day.to_string(),
            device: "dev-1".into(),
            batches,
            inputs: Vec::new(),
            rows: 2,
            bytes: 10,
            id: id.clone(),
        };
        let path = layout::compaction_marker(day, "dev-1", &id);
        assert_eq!(m.check(&path, day), Ok(()));
        assert!(m
            .check(&path, Day::from_days(1))
            .unwrap_err()
            .contains("date"));
        let mut other = m.clone();
        other.batches.pop();
        assert!(other.check(&path, day).unwrap_err().contains("id"));
        let mut moved = m.clone();
        moved.file = "events/elsewhere.parquet".into();
        assert!(moved.check(&path, day).unwrap_err().contains("elsewhere"));
        assert!(m
            .check("compactions/x.json", day)
            .unwrap_err()
            .contains("x.json"));
    }
}
