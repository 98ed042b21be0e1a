//! `reflexd journal …`: what a board decided, read from its journal.
//!
//! - `reflexd journal tail --config F [-n N]`: the last `N` records (default 10), one JSON
//!   line each, oldest first.
//! - `reflexd journal export --config F --format jsonl -o FILE [--from T] [--to T]
//!   [--dead-letter]`: every record (or, with `--dead-letter`, every record of the
//!   dead-letter range) whose arrival is in `[from, to)` (RFC 3339 timestamps), one JSON
//!   line each, in journal order. Writes `FILE` whole (a temporary file renamed over it).
//!   `--format parquet` writes the same records as one Parquet file ([`parquet`], cargo
//!   feature `parquet-export`: off by default, so that the demo's cold build stays short,
//!   and in the board builds; CI builds and tests every feature).
//! - `reflexd journal clear-dead-letter --config F --through SEQ`: removes the dead-letter
//!   records up to journal sequence `SEQ` (after exporting them), which lets uploads go on
//!   once the range was at its bound.
//!
//! # A JSON line
//!
//! `{"journal_seq": s, "record": {…}}`, where `record` is the
//! [`reflex_records::JournalRecord`] as serde writes it (byte fields as arrays of numbers),
//! so a line reads back into the same record. A record of a route with a decision policy
//! adds `"decision": {"reason", "rule", "proposed", "confidence"}`
//! ([`reflex_records::DecisionTrace`]). The record's features by name: `"features":
//! {"<name>": value, …}`, named by the record's feature set (the model that declares them,
//! record format 3), which the line adds as `"feature_set": {"model": {"name",
//! "version"}, "names": […]}` (the names in the order of `record.features`); a record
//! without a set carries the 13 demo features, named as
//! [`reflex_records::DEMO_FEATURE_NAMES`]. A record whose values do not match its names
//! in number (none: features it could not compute) has no `"features"` object; its
//! `record.features` are as journaled. A dead-letter line adds `"dead_letter":
//! {"reason", "filed_unix_us", "batch_id"}`. A record that does not decode is written as
//! `{"journal_seq": s, "undecodable": "<error>"}` rather than skipped.
//!
//! # While reflexd runs
//!
//! sled holds an exclusive lock on the journal for as long as reflexd has it open, so these
//! commands read the journal only while reflexd is **stopped**: with reflexd running they
//! fail with an error naming the lock and the directory, and change nothing. (Reading
//! through the running daemon would need an HTTP endpoint serving records, which reflexd's
//! loopback metrics server does not offer; live decisions are on the MQTT command topics.)
//! Opening is the journal's own ([`Journal::open`]): a directory that does not exist is an
//! error (nothing is created), and a journal that cannot be opened is moved aside exactly
//! as reflexd's next start would do.

#[cfg(feature = "parquet-export")]
pub mod parquet;

use std::io::Write;
use std::path::{Path, PathBuf};

use reflex_journal::store::{DeadLetter, Journal, StoreConfig, StoreError};
use reflex_records::{FeatureSet, JournalRecord, DEMO_FEATURE_NAMES};
use serde_json::{json, Map, Value};

/// Why a journal command failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The journal directory does not exist.
    #[error("no journal at {0} (journal.dir)")]
    NoJournal(PathBuf),
    /// reflexd (or another process) holds the journal.
    #[error("the journal at {0} is locked by a running reflexd (sled's exclusive file lock on its `db`): stop reflexd, then run this again")]
    Locked(PathBuf),
    /// The journal failed.
    #[error("journal {dir}: {source}")]
    Store {
        /// Journal directory.
        dir: PathBuf,
        /// The error.
        source: StoreError,
    },
    /// Writing the output failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The output.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A `--from`/`--to` that is not an RFC 3339 timestamp.
    #[error("{flag} {value:?} is not an RFC 3339 timestamp (e.g. 2026-12-07T10:00:00Z)")]
    BadTime {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
    },
}

/// A time range of arrivals, µs since the Unix epoch: `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Inclusive start.
    pub from_us: u64,
    /// Exclusive end.
    pub to_us: u64,
}

impl Range {
    /// Everything.
    pub const ALL: Range = Range {
        from_us: 0,
        to_us: u64::MAX,
    };

    /// From the `--from`/`--to` flags (RFC 3339; either may be absent).
    pub fn parse(from: Option<&str>, to: Option<&str>) -> Result<Range, InspectError> {
        let us = |flag: &'static str, v: &str| -> Result<u64, InspectError> {
            let ts: jiff::Timestamp = v.parse().map_err(|_| InspectError::BadTime {
                flag,
                value: v.to_owned(),
            })?;
            Ok(u64::try_from(ts.as_microsecond()).unwrap_or(0))
        };
        Ok(Range {
            from_us: from.map(|v| us("--from", v)).transpose()?.unwrap_or(0),
            to_us: to.map(|v| us("--to", v)).transpose()?.unwrap_or(u64::MAX),
        })
    }

    /// Whether an arrival is in the range.
    pub fn contains(&self, arrival_us: u64) -> bool {
        (self.from_us..self.to_us).contains(&arrival_us)
    }
}

/// The record's features by name: its set's names (the demo names without one) with its
/// values, in order; `None` when the record holds another number of values than names
/// (none at all: features it could not compute).
fn named_features(values: &[f32], set: Option<&FeatureSet>) -> Option<Map<String, Value>> {
    let names: Vec<&str> = match set {
        Some(s) => s.names.iter().map(String::as_str).collect(),
        None => DEMO_FEATURE_NAMES.to_vec(),
    };
    (names.len() == values.len()).then(|| {
        names
            .into_iter()
            .zip(values)
            .map(|(n, v)| (n.to_owned(), json!(v)))
            .collect()
    })
}

/// The JSON line of a journal record (pure; module doc).
pub fn record_line(seq: u64, bytes: &[u8], dead: Option<&DeadLetter>) -> Value {
    let mut v = match JournalRecord::decode_full(bytes) {
        Ok(d) => {
            let mut v = json!({ "journal_seq": seq, "record": d.record });
            if let Some(trace) = &d.decision {
                v["decision"] = json!(trace);
            }
            if let Some(named) = named_features(&d.record.features, d.feature_set.as_ref()) {
                v["features"] = Value::Object(named);
            }
            if let Some(set) = &d.feature_set {
                v["feature_set"] = json!(set);
            }
            v
        }
        Err(e) => json!({ "journal_seq": seq, "undecodable": e.to_string() }),
    };
    if let Some(d) = dead {
        v["dead_letter"] = json!({
            "reason": d.reason,
            "filed_unix_us": d.filed_unix_us,
            "batch_id": d.batch_id,
        });
    }
    v
}

/// Whether a line's record arrived in `range` (undecodable records always pass).
fn in_range(bytes: &[u8], range: Range) -> bool {
    JournalRecord::decode(bytes).map_or(true, |r| range.contains(r.arrival_unix_us))
}

/// Opens the journal in `dir` for inspection (module doc: only while reflexd is stopped).
pub fn open(dir: &Path) -> Result<Journal, InspectError> {
    if !dir.is_dir() {
        return Err(InspectError::NoJournal(dir.to_owned()));
    }
    let mut cfg = StoreConfig::new(dir);
    cfg.cache_capacity = 4 << 20;
    match Journal::open(cfg) {
        Ok((j, _)) => Ok(j),
        Err(e) if e.to_string().contains("could not acquire lock") => {
            Err(InspectError::Locked(dir.to_owned()))
        }
        // A journal a running reflexd holds is not marked clean, so the open first rewrites
        // it under sled's lock, and finds that lock taken.
        Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::WouldBlock => {
            Err(InspectError::Locked(dir.to_owned()))
        }
        Err(source) => Err(InspectError::Store {
            dir: dir.to_owned(),
            source,
        }),
    }
}

fn store_err(j: &Journal) -> impl FnOnce(StoreError) -> InspectError + '_ {
    move |source| InspectError::Store {
        dir: j.dir().to_owned(),
        source,
    }
}

/// Records read per scan.
const CHUNK: usize = 1000;

/// Calls `each(seq, bytes, dead letter)` for every record (or every dead-letter record),
/// in journal order, from sequence `from`.
fn for_each(
    j: &Journal,
    dead_letter: bool,
    from: u64,
    mut each: impl FnMut(u64, &[u8], Option<&DeadLetter>) -> Result<(), InspectError>,
) -> Result<(), InspectError> {
    let mut next = from;
    loop {
        let got = if dead_letter {
            let chunk = j.dead_letters(next, CHUNK).map_err(store_err(j))?;
            for (seq, d) in &chunk {
                each(*seq, &d.record, Some(d))?;
            }
            chunk.last().map(|(s, _)| *s)
        } else {
            let chunk = j.scan(next, CHUNK, 16 << 20).map_err(store_err(j))?;
            for (seq, bytes) in &chunk {
                each(*seq, bytes, None)?;
            }
            chunk.last().map(|(s, _)| *s)
        };
        match got {
            Some(last) => next = last + 1,
            None => return Ok(()),
        }
    }
}

/// `journal tail`: the last `n` records as JSON lines, oldest first.
pub fn tail(j: &Journal, n: usize, out: &mut impl Write) -> Result<usize, InspectError> {
    let last = j.last_seq();
    let from = last.saturating_sub(n as u64) + 1;
    let mut written = 0;
    let stdout = PathBuf::from("-");
    for_each(j, false, from, |seq, bytes, _| {
        writeln!(out, "{}", record_line(seq, bytes, None)).map_err(|source| {
            InspectError::Write {
                path: stdout.clone(),
                source,
            }
        })?;
        written += 1;
        Ok(())
    })?;
    Ok(written)
}

/// `journal export --format jsonl`: the records (or dead-letter records) in `range` into
/// `path`, written whole (temporary file, fsync, rename). Returns the lines written.
pub fn export_jsonl(
    j: &Journal,
    dead_letter: bool,
    range: Range,
    path: &Path,
) -> Result<usize, InspectError> {
    let werr = |source| InspectError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("partial");
    let file = std::fs::File::create(&tmp).map_err(werr)?;
    let mut w = std::io::BufWriter::new(file);
    let mut written = 0;
    for_each(j, dead_letter, 0, |seq, bytes, dead| {
        if in_range(bytes, range) {
            writeln!(w, "{}", record_line(seq, bytes, dead)).map_err(|source| {
                InspectError::Write {
                    path: path.to_owned(),
                    source,
                }
            })?;
            written += 1;
        }
        Ok(())
    })?;
    let file = w.into_inner().map_err(|e| werr(e.into_error()))?;
    file.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)?;
    Ok(written)
}

/// `journal export --format parquet` (feature `parquet-export`, [`parquet`]): the records
/// (or dead-letter records) in `range` into `path`, written whole (temporary file, fsync,
/// rename), one row group per 10 000 records. Returns (rows written, records left out
/// because they do not decode).
#[cfg(feature = "parquet-export")]
pub fn export_parquet(
    j: &Journal,
    dead_letter: bool,
    range: Range,
    path: &Path,
) -> Result<(usize, usize), InspectError> {
    let werr = |source| InspectError::Write {
        path: path.to_owned(),
        source,
    };
    let mut rows: Vec<parquet::Row> = Vec::new();
    let mut undecodable = 0;
    for_each(j, dead_letter, 0, |seq, bytes, dead| {
        match JournalRecord::decode(bytes) {
            Ok(r) if range.contains(r.arrival_unix_us) => {
                rows.push((seq, r, dead.map(|d| d.reason.clone())))
            }
            Ok(_) => {}
            Err(_) => undecodable += 1,
        }
        Ok(())
    })?;
    let written = rows.len();
    let tmp = path.with_extension("partial");
    let file = std::fs::File::create(&tmp).map_err(werr)?;
    let mut chunks = rows
        .chunks(10_000)
        .map(|c| Ok(c.to_vec()))
        .collect::<Vec<_>>()
        .into_iter();
    let file = parquet::write(&mut chunks, file).map_err(werr)?;
    file.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)?;
    Ok((written, undecodable))
}

/// `journal clear-dead-letter`: removes the dead-letter records through `through`.
pub fn clear_dead_letter(j: &Journal, through: u64) -> Result<u64, InspectError> {
    j.clear_dead_letter(through).map_err(store_err(j))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_parses_rfc3339_and_is_half_open() {
        let r = Range::parse(Some("2026-01-01T00:00:00Z"), Some("2026-01-01T00:00:01Z")).unwrap();
        assert_eq!(r.from_us, 1_767_225_600_000_000);
        assert!(r.contains(r.from_us));
        assert!(!r.contains(r.to_us));
        assert_eq!(Range::parse(None, None).unwrap(), Range::ALL);
        let e = Range::parse(Some("yesterday"), None).unwrap_err();
        assert!(e.to_string().contains("yesterday"), "{e}");
    }

    fn record(features: Vec<f32>) -> JournalRecord {
        JournalRecord {
            node: "n".into(),
            device: "d".into(),
            seq: 1,
            arrival_unix_us: 5,
            payload: vec![],
            model_input: vec![1.0, 2.0],
            features,
            logits: vec![],
            class: 0,
            command: vec![],
            model: reflex_records::ModelId {
                name: "motor".into(),
                version: "1.0.0".into(),
            },
            source: reflex_records::DecisionSource::Model,
            timings: Default::default(),
            outcome: reflex_records::DeadlineOutcome::OnTime,
        }
    }

    #[test]
    fn a_record_with_a_feature_set_is_a_line_with_its_features_by_name() {
        let set = FeatureSet {
            model: reflex_records::ModelId {
                name: "motor".into(),
                version: "1.0.0".into(),
            },
            names: vec!["rms_current".into(), "mean_temperature".into()],
        };
        let r = record(vec![2.5, 61.0]);
        let v = record_line(4, &r.encode_full(None, Some(&set.clone().encoded())), None);
        assert_eq!(
            v["features"],
            json!({"rms_current": 2.5, "mean_temperature": 61.0})
        );
        assert_eq!(
            v["feature_set"]["names"],
            json!(["rms_current", "mean_temperature"])
        );
        assert_eq!(v["feature_set"]["model"]["name"], "motor");
        let back: JournalRecord = serde_json::from_value(v["record"].clone()).unwrap();
        assert_eq!(back, r, "the record reads back as before");
        // Values that do not match the names in number: no object, the values as they are.
        let short = record(vec![2.5]);
        let v = record_line(5, &short.encode_full(None, Some(&set.encoded())), None);
        assert!(v.get("features").is_none(), "{v}");
        assert_eq!(v["record"]["features"], json!([2.5]));
    }

    #[test]
    fn a_demo_record_is_a_line_with_the_demo_names_and_no_set() {
        let values: Vec<f32> = (0..13).map(|i| i as f32).collect();
        let v = record_line(1, &record(values).encode(), None);
        assert!(v.get("feature_set").is_none());
        let named = v["features"].as_object().unwrap();
        assert_eq!(named.len(), DEMO_FEATURE_NAMES.len());
        for (i, name) in DEMO_FEATURE_NAMES.iter().enumerate() {
            assert_eq!(named[*name], json!(i as f32), "{name}");
        }
        let v = record_line(2, &record(vec![]).encode(), None);
        assert!(v.get("features").is_none(), "no features computed: {v}");
    }

    #[test]
    fn an_undecodable_record_is_a_line_that_says_so() {
        let v = record_line(7, &[9, 9], None);
        assert_eq!(v["journal_seq"], 7);
        assert!(v["undecodable"].as_str().unwrap().contains('9'), "{v}");
        assert!(v.get("record").is_none());
    }
}
