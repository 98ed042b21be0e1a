//! The model cache: what a model's start-up checks found (its golden-vector report and
//! its calibrated latency profiles), kept in one small JSON file per configured model
//! (`<dir>/<model>.json`) so that the next start on the same board with the same model
//! can serve at once and re-check in the background.
//!
//! Contracts:
//! - An entry is used only when every field of its [`CacheKey`] equals the current one:
//!   the model file's SHA-256 (verified against the manifest when the model loads), the
//!   manifest's own SHA-256, the CPU ([`cpu_model`]), reflexd's version, the calibration
//!   inputs of this build, and the parameters that change the profiles (calibration runs
//!   and rounds, largest batch, real-time priority). The golden files are not in the key:
//!   the background check that follows every cached start reads them again.
//! - An entry that is missing is a first start ([`Lookup::Absent`]); one that cannot be
//!   read, parsed or used, or whose key differs, is [`Lookup::Unusable`] with the reason:
//!   the caller logs it and measures again. Neither is ever fatal.
//! - [`write`] replaces an entry atomically (temporary file, fsync, rename, fsync of the
//!   directory) with mode 0640; the directory is created with mode 0750.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pipeline::infer::schedule::LatencyProfile;

/// Version of the entry layout; an entry of another format is unusable.
pub const FORMAT: u32 = 1;

/// Mode of an entry file: owner read/write, group read, nothing for others.
pub const FILE_MODE: u32 = 0o640;

/// Mode of the cache directory when reflexd creates it.
pub const DIR_MODE: u32 = 0o750;

/// What an entry must match to be used: everything that changes the golden report or the
/// calibrated profiles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheKey {
    /// SHA-256 of the model file (lowercase hex), as its manifest states and the loader
    /// verified.
    pub model_sha256: String,
    /// SHA-256 of the manifest file's bytes (preprocessing, classes, golden tolerance).
    pub manifest_sha256: String,
    /// The CPU, from `/proc/cpuinfo` ([`cpu_model`]).
    pub cpu: String,
    /// reflexd's version.
    pub reflexd_version: String,
    /// Which windows calibration runs on in this build (`simulator` or `golden`).
    pub calibration_inputs: String,
    /// `models.<name>.calibration_runs`.
    pub calibration_runs: u32,
    /// Calibration rounds of the single-window run.
    pub calibration_rounds: usize,
    /// `scheduler.max_batch`: one profile per batch size up to it.
    pub max_batch: usize,
    /// `scheduler.realtime_priority`: the class calibration ran in.
    pub realtime_priority: u8,
}

impl CacheKey {
    /// Every field as (name, value), for naming the first that differs.
    fn fields(&self) -> [(&'static str, String); 9] {
        [
            ("model_sha256", self.model_sha256.clone()),
            ("manifest_sha256", self.manifest_sha256.clone()),
            ("cpu", self.cpu.clone()),
            ("reflexd_version", self.reflexd_version.clone()),
            ("calibration_inputs", self.calibration_inputs.clone()),
            ("calibration_runs", self.calibration_runs.to_string()),
            ("calibration_rounds", self.calibration_rounds.to_string()),
            ("max_batch", self.max_batch.to_string()),
            ("realtime_priority", self.realtime_priority.to_string()),
        ]
    }

    /// The first field whose value differs between `self` (cached) and `current`: (name,
    /// cached value, current value).
    pub fn first_difference(&self, current: &CacheKey) -> Option<(&'static str, String, String)> {
        self.fields()
            .into_iter()
            .zip(current.fields())
            .find(|((_, a), (_, b))| a != b)
            .map(|((name, a), (_, b))| (name, a, b))
    }
}

/// A calibrated latency profile as stored (ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachedProfile {
    /// Timed runs.
    pub samples: usize,
    /// Median, ns.
    pub p50: u64,
    /// 99th percentile, ns.
    pub p99: u64,
    /// 99.9th percentile, ns.
    pub p999: u64,
    /// Slowest run, ns.
    pub max: u64,
}

impl From<&LatencyProfile> for CachedProfile {
    fn from(p: &LatencyProfile) -> Self {
        CachedProfile {
            samples: p.samples,
            p50: p.p50,
            p99: p.p99,
            p999: p.p999,
            max: p.max,
        }
    }
}

impl From<&CachedProfile> for LatencyProfile {
    fn from(p: &CachedProfile) -> Self {
        LatencyProfile {
            samples: p.samples,
            p50: p.p50,
            p99: p.p99,
            p999: p.p999,
            max: p.max,
        }
    }
}

/// The golden check's figures as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachedGolden {
    /// Golden windows run.
    pub examples: usize,
    /// Largest |model − golden| over all logits.
    pub max_abs_diff: f64,
    /// The manifest's tolerance.
    pub tolerance: f64,
}

/// One model's entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheEntry {
    /// [`FORMAT`].
    pub format: u32,
    /// What the results were measured for.
    pub key: CacheKey,
    /// The golden check that passed (None: the manifest has no golden set).
    pub golden: Option<CachedGolden>,
    /// Latency of a run on 1, 2, … `key.max_batch` windows.
    pub profiles: Vec<CachedProfile>,
}

impl CacheEntry {
    /// The profiles as the engine uses them.
    pub fn latency_profiles(&self) -> Vec<LatencyProfile> {
        self.profiles.iter().map(LatencyProfile::from).collect()
    }
}

/// Why an entry was not used or not written.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The entry file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not JSON, or not an entry.
    #[error("{path} is not a model cache entry: {reason}")]
    Parse {
        /// The entry file.
        path: PathBuf,
        /// serde_json's message.
        reason: String,
    },
    /// Written by a reflexd with another entry layout.
    #[error("{path} has format {found}, expected {FORMAT}")]
    Format {
        /// The entry file.
        path: PathBuf,
        /// Its format.
        found: u32,
    },
    /// Measured for something else than what runs now.
    #[error("{path} was measured for {field} {cached:?}, now {current:?}")]
    Mismatch {
        /// The entry file.
        path: PathBuf,
        /// The first key field that differs.
        field: &'static str,
        /// Its value in the entry.
        cached: String,
        /// Its value now.
        current: String,
    },
    /// The profiles do not fit the key (wrong count, or one without samples).
    #[error("{path} holds {found} usable profiles, expected {expected}")]
    Profiles {
        /// The entry file.
        path: PathBuf,
        /// Profiles with samples in the entry.
        found: usize,
        /// `key.max_batch`.
        expected: usize,
    },
    /// The entry could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What [`read`] found.
#[derive(Debug)]
pub enum Lookup {
    /// An entry for exactly this key.
    Hit(CacheEntry),
    /// No entry yet.
    Absent,
    /// An entry that cannot be used, and why.
    Unusable(CacheError),
}

/// The entry file of configured model `model` in `dir`.
pub fn entry_path(dir: &Path, model: &str) -> PathBuf {
    dir.join(format!("{model}.json"))
}

/// Parses entry `text` (from `path`) and checks it against `current`. Pure.
pub fn decode(text: &str, path: &Path, current: &CacheKey) -> Result<CacheEntry, CacheError> {
    let entry: CacheEntry = serde_json::from_str(text).map_err(|e| CacheError::Parse {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if entry.format != FORMAT {
        return Err(CacheError::Format {
            path: path.to_owned(),
            found: entry.format,
        });
    }
    if let Some((field, cached, current)) = entry.key.first_difference(current) {
        return Err(CacheError::Mismatch {
            path: path.to_owned(),
            field,
            cached,
            current,
        });
    }
    let usable = entry.profiles.iter().filter(|p| p.samples > 0).count();
    if entry.profiles.len() != current.max_batch || usable != current.max_batch {
        return Err(CacheError::Profiles {
            path: path.to_owned(),
            found: usable,
            expected: current.max_batch,
        });
    }
    Ok(entry)
}

/// The CPU as a stable string, from the text of `/proc/cpuinfo`: the architecture, then
/// the first `model name` (x86), or else the distinct `CPU implementer`/`CPU part` pairs
/// and `Hardware` (ARM; big.LITTLE boards list both parts). `unknown` when none is there.
/// Pure.
pub fn cpu_model(arch: &str, cpuinfo: &str) -> String {
    let value = |line: &str, key: &str| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_owned())
    };
    let first = |key: &str| cpuinfo.lines().find_map(|l| value(l, key));
    if let Some(name) = first("model name") {
        return format!("{arch} {name}");
    }
    let mut parts: Vec<String> = Vec::new();
    let mut implementer = String::new();
    for line in cpuinfo.lines() {
        if let Some(i) = value(line, "CPU implementer") {
            implementer = i;
        } else if let Some(p) = value(line, "CPU part") {
            let part = format!("{implementer}/{p}");
            if !parts.contains(&part) {
                parts.push(part);
            }
        }
    }
    parts.sort();
    let mut out = vec![arch.to_owned()];
    if !parts.is_empty() {
        out.push(format!("parts {}", parts.join(",")));
    }
    if let Some(hw) = first("Hardware") {
        out.push(hw);
    }
    if out.len() == 1 {
        out.push("unknown".into());
    }
    out.join(" ")
}

/// [`cpu_model`] of this machine (`unknown` when `/proc/cpuinfo` cannot be read).
pub fn this_cpu() -> String {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpu_model(std::env::consts::ARCH, &text)
}

/// Reads the entry of `model` in `dir` and checks it against `current`.
pub fn read(dir: &Path, model: &str, current: &CacheKey) -> Lookup {
    let path = entry_path(dir, model);
    match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Lookup::Absent,
        Err(source) => Lookup::Unusable(CacheError::Read { path, source }),
        Ok(text) => match decode(&text, &path, current) {
            Ok(entry) => Lookup::Hit(entry),
            Err(e) => Lookup::Unusable(e),
        },
    }
}

/// Writes `entry` as the entry of `model` in `dir`, atomically, mode [`FILE_MODE`];
/// creates `dir` (mode [`DIR_MODE`]) when missing.
pub fn write(dir: &Path, model: &str, entry: &CacheEntry) -> Result<(), CacheError> {
    let fail = |path: &Path| {
        let path = path.to_owned();
        move |source| CacheError::Write { path, source }
    };
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(fail(dir))?;
    let path = entry_path(dir, model);
    let tmp = dir.join(format!(".{model}.json.tmp-{}", std::process::id()));
    let text = serde_json::to_string_pretty(entry).expect("a cache entry serialises");
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        // A leftover temporary file keeps its old mode: set it either way.
        f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(&tmp)(e));
    }
    std::fs::rename(&tmp, &path).map_err(fail(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CacheKey {
        CacheKey {
            model_sha256: "ab".repeat(32),
            manifest_sha256: "cd".repeat(32),
            cpu: "x86_64 Test CPU".into(),
            reflexd_version: "0.1.0".into(),
            calibration_inputs: "golden".into(),
            calibration_runs: 500,
            calibration_rounds: 3,
            max_batch: 2,
            realtime_priority: 10,
        }
    }

    fn profile(p999: u64) -> CachedProfile {
        CachedProfile {
            samples: 500,
            p50: 20_000,
            p99: 40_000,
            p999,
            max: p999 + 1,
        }
    }

    fn entry() -> CacheEntry {
        CacheEntry {
            format: FORMAT,
            key: key(),
            golden: Some(CachedGolden {
                examples: 1600,
                max_abs_diff: 0.0,
                tolerance: 0.05,
            }),
            profiles: vec![profile(60_000), profile(110_000)],
        }
    }

    fn encoded(e: &CacheEntry) -> String {
        serde_json::to_string(e).unwrap()
    }

    #[test]
    fn an_entry_decodes_to_what_was_encoded() {
        let decoded = decode(&encoded(&entry()), Path::new("m.json"), &key()).unwrap();
        assert_eq!(decoded, entry());
        assert_eq!(decoded.latency_profiles()[1].p999, 110_000);
    }

    #[test]
    fn text_that_is_not_an_entry_is_a_parse_error_naming_the_file() {
        let err = decode("{not json", Path::new("/c/edge.json"), &key()).unwrap_err();
        assert!(matches!(err, CacheError::Parse { .. }), "{err:?}");
        assert!(err
            .to_string()
            .starts_with("/c/edge.json is not a model cache entry"));
    }

    #[test]
    fn another_format_is_refused_with_its_number() {
        let mut e = entry();
        e.format = 7;
        let err = decode(&encoded(&e), Path::new("m.json"), &key()).unwrap_err();
        assert_eq!(err.to_string(), "m.json has format 7, expected 1");
    }

    #[test]
    fn each_key_field_that_differs_is_named_with_both_values() {
        type Change = (&'static str, fn(&mut CacheKey));
        let changes: [Change; 9] = [
            ("model_sha256", |k| k.model_sha256 = "00".repeat(32)),
            ("manifest_sha256", |k| k.manifest_sha256 = "11".repeat(32)),
            ("cpu", |k| k.cpu = "aarch64 parts 0x41/0xd03".into()),
            ("reflexd_version", |k| k.reflexd_version = "0.2.0".into()),
            ("calibration_inputs", |k| {
                k.calibration_inputs = "simulator".into()
            }),
            ("calibration_runs", |k| k.calibration_runs = 2000),
            ("calibration_rounds", |k| k.calibration_rounds = 1),
            ("max_batch", |k| k.max_batch = 8),
            ("realtime_priority", |k| k.realtime_priority = 0),
        ];
        for (field, change) in changes {
            let mut current = key();
            change(&mut current);
            match decode(&encoded(&entry()), Path::new("m.json"), &current) {
                Err(CacheError::Mismatch {
                    field: f,
                    cached,
                    current: now,
                    ..
                }) => {
                    assert_eq!(f, field);
                    assert_ne!(cached, now);
                }
                other => panic!("{field}: expected a mismatch, got {other:?}"),
            }
        }
    }

    #[test]
    fn profiles_that_do_not_fit_the_key_are_refused() {
        let mut short = entry();
        short.profiles.pop();
        let mut empty = entry();
        empty.profiles[1].samples = 0;
        for e in [short, empty] {
            let err = decode(&encoded(&e), Path::new("m.json"), &key()).unwrap_err();
            assert!(
                matches!(err, CacheError::Profiles { expected: 2, .. }),
                "{err:?}"
            );
        }
    }

    #[test]
    fn an_unknown_field_makes_an_entry_unusable() {
        let text = encoded(&entry()).replacen('{', "{\"extra\":1,", 1);
        let err = decode(&text, Path::new("m.json"), &key()).unwrap_err();
        assert!(matches!(err, CacheError::Parse { .. }), "{err:?}");
    }

    #[test]
    fn an_x86_cpu_is_named_by_its_model_name() {
        let info = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(
            cpu_model("x86_64", info),
            "x86_64 Intel(R) Xeon(R) CPU @ 2.20GHz"
        );
    }

    #[test]
    fn an_arm_cpu_is_named_by_its_distinct_parts_and_hardware() {
        let info = "processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd03\n\nprocessor\t: 4\nCPU implementer\t: 0x41\nCPU part\t: 0xd09\n\nprocessor\t: 5\nCPU implementer\t: 0x41\nCPU part\t: 0xd03\n\nHardware\t: BCM2835\n";
        assert_eq!(
            cpu_model("aarch64", info),
            "aarch64 parts 0x41/0xd03,0x41/0xd09 BCM2835"
        );
    }

    #[test]
    fn a_cpuinfo_without_any_known_line_is_unknown() {
        assert_eq!(cpu_model("riscv64", "processor : 0\n"), "riscv64 unknown");
    }

    #[test]
    fn a_written_entry_reads_back_as_a_hit_and_a_missing_one_as_absent() {
        let dir = std::env::temp_dir().join(format!("reflexd-model-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(read(&dir, "edge", &key()), Lookup::Absent));
        write(&dir, "edge", &entry()).unwrap();
        match read(&dir, "edge", &key()) {
            Lookup::Hit(e) => assert_eq!(e, entry()),
            other => panic!("expected a hit, got {other:?}"),
        }
        let mode = std::fs::metadata(entry_path(&dir, "edge"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, FILE_MODE);
        let mut other = key();
        other.max_batch = 1;
        assert!(matches!(
            read(&dir, "edge", &other),
            Lookup::Unusable(CacheError::Mismatch {
                field: "max_batch",
                ..
            })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn entry_files_are_named_after_the_configured_model() {
        assert_eq!(
            entry_path(Path::new("/var/lib/reflex/model-cache"), "edge"),
            Path::new("/var/lib/reflex/model-cache/edge.json")
        );
    }
}
