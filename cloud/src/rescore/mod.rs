//! `reflex-cloud rescore`: the batch job over a snapshot of the stored events.
//!
//! 1. **Snapshot** ([`Snapshot::resolve`]): a time range becomes the exact, sorted list of
//!    event files (date partitions the range touches, files whose batch has a marker, or
//!    compacted files whose compaction has one, each row once: [`crate::compact`]), and
//!    together with the model's identity (name, version, ONNX and manifest SHA-256) and the
//!    job's parameters it is written as the run manifest (`run.json`). The run id is a hash
//!    of that content, so the same snapshot, model and parameters give the same id, and
//!    `rescore --replay run.json` runs exactly those files again.
//! 2. **Plan and execute** with DataFusion, embedded ([`engine`]): a session reads exactly
//!    the manifest's files (no listing) in `workers` partitions, the cloud model rescores
//!    every row in range through tract in batches (a scalar UDF owning its model
//!    instances), and `GROUP BY` aggregates over the rescored rows give the comparison
//!    counts (agreement, confusion, per device — keyed by node and device id, as device ids are
//!    unique only on one board — and per edge model version, fallback).
//! 3. **Sketch** each file's rescored rows into reflex-drift's mergeable sketches, write the
//!    file's rescored rows as one Parquet file, merge the sketches in file order
//!    (deterministic), **reduce** ([`aggregate::finish`]), and write `report.json` and the
//!    self-contained `report.html`.
//!
//! Step 2's scan, filter, scoring and counts run either embedded ([`Engine::Embedded`], the
//! default) or on an Apache Ballista cluster ([`Engine::Ballista`], cargo feature `ballista`:
//! `crate::cluster`), whose rescored rows come back here; the `GROUP BY`s over them and step
//! 3 are the same code either way, so both engines give the same report.

pub mod aggregate;
pub mod board;
pub mod by_name;
pub mod engine;
pub mod html;

use std::path::{Path, PathBuf};
use std::time::Instant;

use reflex_drift::stats::verdict::DriftThresholds;
use reflex_drift::{DriftError, FeatureReference, QuantileProfile, Reference};
use reflex_models::{Manifest, ModelError};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::compact;
use crate::config::RescoreConfig;
use crate::layout::{self, Day};
use crate::storage::{Listed, Storage, StorageError};
use crate::table::{self, TableError};
pub use aggregate::{Cell, DeviceId, Figures, Observation, Partial, PlanParams, Tallies};

/// Why a rescore run failed.
#[derive(Debug, thiserror::Error)]
pub enum RescoreError {
    /// Reading the snapshot failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The model could not be loaded or run.
    #[error("model: {0}")]
    Model(#[from] ModelError),
    /// A Parquet file could not be read or written.
    #[error("table {path}: {source}")]
    Table {
        /// The file.
        path: String,
        /// The error.
        source: TableError,
    },
    /// The statistics refused their input.
    #[error("drift statistics: {0}")]
    Drift(#[from] DriftError),
    /// An output could not be written or an input read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A run manifest to replay is unusable or no longer matches the store or the model.
    #[error("replay of {path}: {reason}")]
    Replay {
        /// The run manifest.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A stored board window that is not a window summary.
    #[error("board window {path}: {reason}")]
    Window {
        /// Object path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A time range that is empty or reversed.
    #[error("time range [{from_us}, {to_us}) µs is empty")]
    EmptyRange {
        /// Start.
        from_us: u64,
        /// End.
        to_us: u64,
    },
    /// Cancelled by a shutdown signal before it finished.
    #[error("cancelled before the {total} files of the snapshot were rescored")]
    Cancelled {
        /// Files planned.
        total: usize,
    },
    /// The query engine (DataFusion) failed to plan or execute the job.
    #[error("query engine: {0}")]
    Engine(String),
    /// A worker died.
    #[error("rescore worker failed: {0}")]
    Task(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RescoreError + '_ {
    move |source| RescoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The exact input of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Start, µs since the epoch (inclusive).
    pub from_us: u64,
    /// End, µs since the epoch (exclusive).
    pub to_us: u64,
    /// Event files, sorted by path.
    pub files: Vec<Listed>,
    /// The boards' monitoring window files of the same dates, sorted by path.
    #[serde(default)]
    pub windows: Vec<Listed>,
}

impl Snapshot {
    /// The committed event files of every date partition `[from_us, to_us)` touches:
    /// per partition, the compacted files whose compaction is committed and the files of
    /// the committed batches none of those covers, so that every committed row is read
    /// exactly once ([`crate::compact`]: what is listed in which order, and why).
    pub async fn resolve(
        storage: &Storage,
        from_us: u64,
        to_us: u64,
    ) -> Result<Snapshot, RescoreError> {
        if to_us <= from_us {
            return Err(RescoreError::EmptyRange { from_us, to_us });
        }
        let committed = compact::committed_batches(storage).await?;
        let mut files = Vec::new();
        for day in Day::range(from_us, to_us) {
            // Compaction markers before event files: a marker seen means its file is seen.
            let markers = compact::read_markers(storage, day).await?;
            let listed = storage.list(&layout::day_prefix(day)).await?;
            for p in compact::plan::resolve_day(&listed, &committed, markers.iter().map(|(m, _)| m))
            {
                files.extend(p.units.into_iter().map(|u| u.file));
            }
        }
        files.sort();
        let mut windows = Vec::new();
        for day in Day::range(from_us, to_us) {
            windows.extend(
                storage
                    .list(&layout::windows_day_prefix(day))
                    .await?
                    .into_iter()
                    .filter(|l| l.path.ends_with(".json")),
            );
        }
        windows.sort();
        Ok(Snapshot {
            from_us,
            to_us,
            files,
            windows,
        })
    }
}

/// Identity of the model a run used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// SHA-256 of the ONNX file (verified at load).
    pub onnx_sha256: String,
    /// SHA-256 of the manifest file (reference profile, preprocessing).
    pub manifest_sha256: String,
    /// Manifest path as configured.
    pub manifest_path: PathBuf,
}

impl ModelRef {
    /// Reads the identity of the model at `manifest_path`.
    pub fn of(manifest_path: &Path) -> Result<(ModelRef, Manifest), RescoreError> {
        let bytes = std::fs::read(manifest_path).map_err(io_err(manifest_path))?;
        let manifest = Manifest::load(manifest_path)?;
        Ok((
            ModelRef {
                name: manifest.name.clone(),
                version: manifest.version.clone(),
                onnx_sha256: manifest.sha256.clone().unwrap_or_default(),
                manifest_sha256: reflex_models::model::sha256_hex(&bytes),
                manifest_path: manifest_path.to_owned(),
            },
            manifest,
        ))
    }
}

/// What a run did and with what: enough to run it again on the same files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunManifest {
    /// Format of this file (1).
    pub format: u32,
    /// Content hash of everything below (first 16 hex digits).
    pub run_id: String,
    /// The snapshot.
    pub snapshot: Snapshot,
    /// The model.
    pub model: ModelRef,
    /// Windows per tract run.
    pub batch_size: usize,
    /// Drift-over-time window, s.
    pub window_s: u64,
    /// Device baseline, s.
    pub device_baseline_s: u64,
    /// Events needed to judge.
    pub min_events: u64,
    /// Thresholds.
    pub thresholds: DriftThresholds,
}

impl RunManifest {
    fn compute_id(&mut self) {
        self.run_id.clear();
        let json = serde_json::to_vec(self).expect("a run manifest serializes");
        self.run_id = reflex_models::model::sha256_hex(&json)[..16].to_owned();
    }

    /// The plan constants of the run, for a model of `classes` classes whose reference has
    /// `features` features.
    pub fn params(&self, classes: usize, features: usize) -> PlanParams {
        PlanParams {
            from_us: self.snapshot.from_us,
            to_us: self.snapshot.to_us,
            window_us: self.window_s.max(1) * 1_000_000,
            baseline_end_us: self
                .snapshot
                .from_us
                .saturating_add(self.device_baseline_s * 1_000_000),
            classes,
            features,
        }
    }
}

/// The manifest's reference profile as reflex-drift's [`Reference`], in the manifest's
/// order (format 2: its monitoring features'). The stored events' features are looked up
/// in it by name ([`by_name`]).
pub fn reference_of(manifest: &Manifest) -> Result<Reference, DriftError> {
    let features = manifest
        .reference
        .features
        .iter()
        .map(|f| {
            Ok(FeatureReference {
                name: f.name.clone(),
                profile: QuantileProfile::new(f.quantiles.clone(), f.count as u64)?,
            })
        })
        .collect::<Result<Vec<_>, DriftError>>()?;
    Reference::new(
        features,
        manifest.reference.predicted_class_fraction.clone(),
    )
}

/// A feature's reference and current distributions, as 101 quantiles each (for plots).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    /// Feature.
    pub name: String,
    /// Reference quantiles at 0, 1, …, 100 %.
    pub reference: Vec<f64>,
    /// Current (whole snapshot) quantiles, same probabilities; empty without data.
    pub current: Vec<f64>,
}

/// The run's overall verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Any drift below: the process exits 3.
    pub drift_detected: bool,
    /// Fleet features vs reference: the dataset verdict.
    pub fleet_dataset_drift: bool,
    /// Edge predicted classes vs reference fractions (Jensen–Shannon).
    pub edge_class_drift: bool,
    /// Devices that drifted from their own baseline, by node and device id.
    pub flagged_devices: Vec<DeviceId>,
    /// Human-readable reasons.
    pub reasons: Vec<String>,
}

/// Throughput of the job (engine plan, sketches and rescored Parquet; not the reports).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Events scored.
    pub events: u64,
    /// Files read.
    pub files: usize,
    /// Wall time of the engine plan, the sketches and the rescored files, s.
    pub seconds: f64,
    /// events / seconds.
    pub events_per_s: f64,
    /// Batch size.
    pub batch_size: usize,
    /// Workers.
    pub workers: usize,
}

/// `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The run manifest.
    pub run: RunManifest,
    /// Class names.
    pub classes: Vec<String>,
    /// Feature names.
    pub features: Vec<String>,
    /// Figures.
    pub figures: Figures,
    /// Reference vs current distributions.
    pub distributions: Vec<Distribution>,
    /// Verdict.
    pub verdict: Verdict,
    /// Throughput.
    pub throughput: Throughput,
    /// The boards' own live view (their shipped monitoring windows) next to the batch's.
    #[serde(default)]
    pub board: board::BoardView,
}

/// The verdict of figures (pure).
pub fn verdict_of(figures: &Figures) -> Verdict {
    let mut reasons = Vec::new();
    let fleet = figures.fleet_drift.as_ref();
    let fleet_dataset_drift = fleet.is_some_and(|d| d.dataset.drifted);
    if let Some(d) = fleet.filter(|d| d.dataset.drifted) {
        let names: Vec<&str> = d
            .features
            .iter()
            .filter(|f| f.drifted)
            .map(|f| f.name.as_str())
            .collect();
        reasons.push(format!(
            "fleet: {} of {} features drifted from the reference ({})",
            d.dataset.drifted_features,
            d.dataset.features,
            names.join(", ")
        ));
    }
    let edge_class_drift = fleet.is_some_and(|d| d.class_drift);
    if edge_class_drift {
        reasons.push(format!(
            "fleet: edge predicted classes drifted (Jensen-Shannon distance {:.3})",
            fleet.and_then(|d| d.class_js_distance).unwrap_or(0.0)
        ));
    }
    for m in &figures.missing_features {
        reasons.push(format!(
            "fleet: {} of {} scored events lack the reference feature {} (not judged on them)",
            m.events, figures.fleet.events, m.name
        ));
    }
    let flagged_devices: Vec<DeviceId> = figures
        .devices
        .iter()
        .filter(|d| d.flagged)
        .map(|d| DeviceId {
            node: d.node.clone(),
            device: d.device.clone(),
        })
        .collect();
    for d in figures.devices.iter().filter(|d| d.flagged) {
        if let Some(x) = &d.drift {
            reasons.push(format!(
                "device {} on node {}: {} of {} features drifted from its baseline",
                d.device, d.node, x.dataset.drifted_features, x.dataset.features
            ));
        }
    }
    Verdict {
        drift_detected: fleet_dataset_drift || edge_class_drift || !flagged_devices.is_empty(),
        fleet_dataset_drift,
        edge_class_drift,
        flagged_devices,
        reasons,
    }
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct RescoreOutcome {
    /// The run's directory (`run.json`, `report.json`, `report.html`, `rescored/`).
    pub run_dir: PathBuf,
    /// The report.
    pub report: Report,
}

/// Where a run's plan (scan, filter, `cloud_score`, counts) is executed. The sketches,
/// `GROUP BY` comparisons over the rescored rows and reports are made in this process
/// either way, from the same rows, so the report is the same.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Engine {
    /// DataFusion in this process, `workers` threads (the default).
    #[default]
    Embedded,
    /// A Ballista cluster (cargo feature `ballista`): the scheduler's gRPC address,
    /// `http://host:port`; `workers` is then the plan's partitions, one task each.
    Ballista {
        /// The scheduler.
        scheduler: String,
    },
}

/// A planned run.
pub struct RescoreJob {
    storage: Storage,
    run: RunManifest,
    out_dir: PathBuf,
    workers: usize,
    engine: Engine,
}

impl RescoreJob {
    /// Plans a run over `[from_us, to_us)` with the configured model and parameters.
    pub async fn plan(
        storage: Storage,
        cfg: &RescoreConfig,
        from_us: u64,
        to_us: u64,
    ) -> Result<RescoreJob, RescoreError> {
        let snapshot = Snapshot::resolve(&storage, from_us, to_us).await?;
        let (model, _) = ModelRef::of(&cfg.model_manifest)?;
        let mut run = RunManifest {
            format: 1,
            run_id: String::new(),
            snapshot,
            model,
            batch_size: cfg.batch_size,
            window_s: cfg.window_s,
            device_baseline_s: cfg.device_baseline_s,
            min_events: cfg.min_events,
            thresholds: cfg.thresholds,
        };
        run.compute_id();
        Ok(RescoreJob {
            storage,
            run,
            out_dir: cfg.out_dir.clone(),
            workers: cfg.workers.max(1),
            engine: Engine::Embedded,
        })
    }

    /// Plans the run a `run.json` describes: the same files (checked: each must still exist
    /// with the same size), parameters and model (checked: same ONNX and manifest hashes).
    pub async fn replay(
        storage: Storage,
        cfg: &RescoreConfig,
        run_manifest: &Path,
    ) -> Result<RescoreJob, RescoreError> {
        let replay_err = |reason: String| RescoreError::Replay {
            path: run_manifest.to_owned(),
            reason,
        };
        let text = std::fs::read(run_manifest).map_err(io_err(run_manifest))?;
        let run: RunManifest =
            serde_json::from_slice(&text).map_err(|e| replay_err(e.to_string()))?;
        let mut check = run.clone();
        check.compute_id();
        if check.run_id != run.run_id {
            return Err(replay_err(format!(
                "run id {} does not match its content ({})",
                run.run_id, check.run_id
            )));
        }
        let (model, _) = ModelRef::of(&run.model.manifest_path)?;
        if model.onnx_sha256 != run.model.onnx_sha256
            || model.manifest_sha256 != run.model.manifest_sha256
        {
            return Err(replay_err(format!(
                "model {} changed: onnx {} manifest {} now, {} {} in the run",
                model.name,
                model.onnx_sha256,
                model.manifest_sha256,
                run.model.onnx_sha256,
                run.model.manifest_sha256
            )));
        }
        for f in &run.snapshot.files {
            if storage.size_of(&f.path).await? != Some(f.size) {
                return Err(replay_err(format!(
                    "file {} of {} bytes is gone or changed",
                    f.path, f.size
                )));
            }
        }
        Ok(RescoreJob {
            storage,
            run,
            out_dir: cfg.out_dir.clone(),
            workers: cfg.workers.max(1),
            engine: Engine::Embedded,
        })
    }

    /// The same job, executed on `engine`.
    pub fn with_engine(mut self, engine: Engine) -> RescoreJob {
        self.engine = engine;
        self
    }

    /// The run manifest.
    pub fn manifest(&self) -> &RunManifest {
        &self.run
    }

    /// Runs the job (module doc); a cancelled `shutdown` stops it between files.
    pub async fn run(self, shutdown: CancellationToken) -> Result<RescoreOutcome, RescoreError> {
        let run_dir = self.out_dir.join(&self.run.run_id);
        std::fs::create_dir_all(run_dir.join("rescored")).map_err(io_err(&run_dir))?;
        let run_json = serde_json::to_vec_pretty(&self.run).expect("serializes");
        write_atomic(&run_dir.join("run.json"), &run_json)?;
        let (_, manifest) = ModelRef::of(&self.run.model.manifest_path)?;
        let reference = reference_of(&manifest)?;
        let classes = manifest.classes.clone();
        let params = self.run.params(classes.len(), reference.features().len());
        let names: Vec<String> = reference
            .features()
            .iter()
            .map(|f| f.name.clone())
            .collect();
        let workers = self.workers.min(self.run.snapshot.files.len()).max(1);
        let started = Instant::now();
        let executed = self.execute(params, workers, shutdown).await?;
        let merged =
            self.sketch_and_write_rescored(&run_dir, &executed.partitions, params, &names)?;
        let seconds = started.elapsed().as_secs_f64();
        let figures = aggregate::finish(
            &merged,
            &executed.tallies,
            &reference,
            &self.run.thresholds,
            self.run.min_events,
        )?;
        let board = self
            .board_view(&reference, figures.fleet_drift.as_ref())
            .await?;
        let throughput = Throughput::of(
            figures.fleet.events,
            self.run.snapshot.files.len(),
            seconds,
            self.run.batch_size,
            workers,
        );
        let report = Report {
            board,
            verdict: verdict_of(&figures),
            classes,
            features: reference
                .features()
                .iter()
                .map(|f| f.name.clone())
                .collect(),
            distributions: distributions(&reference, &merged),
            figures,
            throughput,
            run: self.run,
        };
        write_reports(&run_dir, &report)?;
        Ok(RescoreOutcome { run_dir, report })
    }

    /// Plans and executes the engine's part of the job on a blocking thread.
    async fn execute(
        &self,
        params: PlanParams,
        workers: usize,
        shutdown: CancellationToken,
    ) -> Result<engine::Executed, RescoreError> {
        let plan = engine::EnginePlan {
            storage: self.storage.clone(),
            files: self.run.snapshot.files.clone(),
            params,
            manifest_path: self.run.model.manifest_path.clone(),
            batch_size: self.run.batch_size,
            workers,
            digest: engine::ModelDigest {
                onnx_sha256: self.run.model.onnx_sha256.clone(),
                manifest_sha256: self.run.model.manifest_sha256.clone(),
            },
            engine: self.engine.clone(),
        };
        tokio::task::spawn_blocking(move || plan.run_blocking(&shutdown))
            .await
            .map_err(|e| RescoreError::Task(e.to_string()))?
    }

    /// Sketches the rescored rows per file, writes each snapshot file's rescored rows (an
    /// empty file for a file without scored rows), and merges the sketches in the
    /// snapshot's file order.
    fn sketch_and_write_rescored(
        &self,
        run_dir: &Path,
        partitions: &[Vec<datafusion::arrow::array::RecordBatch>],
        params: PlanParams,
        names: &[String],
    ) -> Result<Partial, RescoreError> {
        let outputs = sketch_partitions(partitions, params, names)?;
        let mut merged = Partial::new(params);
        for (i, file) in self.run.snapshot.files.iter().enumerate() {
            let (partial, rows) = match outputs.get(&i) {
                Some(o) => (Some(&o.partial), o.rows.as_slice()),
                None => (None, &[][..]),
            };
            write_rescored(run_dir, &file.path, rows)?;
            if let Some(p) = partial {
                merged.merge(p)?;
            }
        }
        Ok(merged)
    }
}

impl Throughput {
    fn of(events: u64, files: usize, seconds: f64, batch_size: usize, workers: usize) -> Self {
        Throughput {
            events,
            files,
            seconds,
            events_per_s: if seconds > 0.0 {
                events as f64 / seconds
            } else {
                0.0
            },
            batch_size,
            workers,
        }
    }
}

/// Each reference feature's quantiles beside the merged snapshot's.
fn distributions(reference: &Reference, merged: &Partial) -> Vec<Distribution> {
    reference
        .features()
        .iter()
        .zip(&merged.features)
        .map(|(f, s)| Distribution {
            name: f.name.clone(),
            reference: f.profile.quantiles().to_vec(),
            current: aggregate::profile_of(s)
                .map(|p| p.quantiles().to_vec())
                .unwrap_or_default(),
        })
        .collect()
}

/// Writes `report.json` and `report.html` into the run's directory.
fn write_reports(run_dir: &Path, report: &Report) -> Result<(), RescoreError> {
    let json = serde_json::to_vec_pretty(report).expect("a report serializes");
    write_atomic(&run_dir.join("report.json"), &json)?;
    write_atomic(
        &run_dir.join("report.html"),
        html::render(report).as_bytes(),
    )
}

impl RescoreJob {
    /// Reads the snapshot's window files and reduces them ([`board::board_view`]).
    async fn board_view(
        &self,
        reference: &Reference,
        batch: Option<&reflex_drift::monitor::WindowDrift>,
    ) -> Result<board::BoardView, RescoreError> {
        let mut windows = Vec::with_capacity(self.run.snapshot.windows.len());
        for file in &self.run.snapshot.windows {
            let bytes = self.storage.get(&file.path).await?;
            let summary: reflex_drift::monitor::WindowSummary = serde_json::from_slice(&bytes)
                .map_err(|e| RescoreError::Window {
                    path: file.path.clone(),
                    reason: e.to_string(),
                })?;
            let node = file
                .path
                .split('/')
                .find_map(|s| s.strip_prefix("node="))
                .unwrap_or("")
                .to_owned();
            windows.push((node, summary));
        }
        Ok(board::board_view(
            &windows,
            self.run.snapshot.from_us,
            self.run.snapshot.to_us,
            reference,
            &self.run.thresholds,
            self.run.min_events,
            batch,
        )?)
    }
}

/// Writes a file via a temporary name and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RescoreError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Feeds every partition's rescored rows into per-file outputs, one thread per partition.
fn sketch_partitions(
    partitions: &[Vec<datafusion::arrow::array::RecordBatch>],
    params: PlanParams,
    names: &[String],
) -> Result<std::collections::BTreeMap<usize, engine::FileOutput>, RescoreError> {
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = partitions
            .iter()
            .map(|p| scope.spawn(move || engine::sketch_files(p, params, names)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(RescoreError::Task("a sketch thread panicked".into())))
            })
            .collect()
    });
    let mut all = std::collections::BTreeMap::new();
    for r in results {
        all.append(&mut r?);
    }
    Ok(all)
}

/// Writes one snapshot file's rescored rows to `rescored/<same partition path>`.
fn write_rescored(
    run_dir: &Path,
    event_path: &str,
    rows: &[table::RescoredRow],
) -> Result<(), RescoreError> {
    let rel = event_path
        .strip_prefix(&format!("{}/", layout::EVENTS_PREFIX))
        .unwrap_or(event_path);
    let dest = run_dir.join("rescored").join(rel);
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let parquet = table::rescored_batch(rows)
        .and_then(|b| table::to_parquet(&b))
        .map_err(|source| RescoreError::Table {
            path: dest.display().to_string(),
            source,
        })?;
    write_atomic(&dest, &parquet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cloud_manifest_reference_converts_with_thirteen_features() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/cloud.manifest.json");
        let (m, manifest) = ModelRef::of(Path::new(path)).unwrap();
        assert_eq!(m.name, "cloud");
        assert_eq!(m.manifest_sha256.len(), 64);
        let r = reference_of(&manifest).unwrap();
        assert_eq!(r.features().len(), reflex_models::FEATURE_COUNT);
        assert_eq!(r.class_fractions().len(), manifest.classes.len());
    }

    #[test]
    fn the_run_id_is_a_hash_of_the_content() {
        let mut a = RunManifest {
            format: 1,
            run_id: String::new(),
            snapshot: Snapshot {
                from_us: 0,
                to_us: 10,
                files: vec![Listed {
                    path: "events/x".into(),
                    size: 3,
                }],
                windows: Vec::new(),
            },
            model: ModelRef {
                name: "cloud".into(),
                version: "1".into(),
                onnx_sha256: "a".into(),
                manifest_sha256: "b".into(),
                manifest_path: "m".into(),
            },
            batch_size: 64,
            window_s: 60,
            device_baseline_s: 60,
            min_events: 10,
            thresholds: DriftThresholds::default(),
        };
        a.compute_id();
        let mut b = a.clone();
        b.compute_id();
        assert_eq!(a.run_id, b.run_id);
        assert_eq!(a.run_id.len(), 16);
        b.snapshot.files[0].size = 4;
        b.compute_id();
        assert_ne!(a.run_id, b.run_id);
    }
}
