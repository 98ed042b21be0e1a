//! [`ModelError`]: everything that can go wrong loading or running a model.

use std::path::PathBuf;

/// An error from loading, verifying or running a model.
///
/// Messages are lowercase and carry the offending values (paths, hashes, lengths).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A golden-vector file is not a readable `.npy` array of the expected type.
    #[error("bad golden file {path}: {reason}")]
    Npy {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The model does not reproduce its golden logits.
    #[error("model {model} fails its golden vectors: window {index} is off by {diff:.3e} (tolerance {tolerance:.1e}, {examples} windows)")]
    GoldenMismatch {
        /// Name and version.
        model: String,
        /// First golden window out of tolerance.
        index: usize,
        /// Its largest |model − golden| logit difference.
        diff: f64,
        /// The manifest's tolerance.
        tolerance: f64,
        /// Size of the golden set.
        examples: usize,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A manifest is not valid JSON or does not match the schema (unknown or missing
    /// fields included).
    #[error("cannot parse manifest {path}: {source}")]
    ManifestParse {
        /// The manifest.
        path: PathBuf,
        /// What serde reported.
        #[source]
        source: serde_json::Error,
    },
    /// A format-2 manifest is not valid JSON or does not match its schema; `field` is the
    /// path of the field serde stopped at (e.g. `output.thresholds[1].below`).
    #[error("cannot parse manifest {path} at {field}: {source}")]
    ManifestField {
        /// The manifest.
        path: PathBuf,
        /// Where in the manifest.
        field: String,
        /// What serde reported.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest parsed but is inconsistent (wrong kind, missing section, bad sizes).
    #[error("invalid manifest {path}: {reason}")]
    ManifestInvalid {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The model file's SHA-256 differs from the one its manifest records.
    #[error("checksum mismatch for {path}: manifest expects sha256 {expected}, file has sha256 {actual}")]
    ChecksumMismatch {
        /// The model file.
        path: PathBuf,
        /// The hash the manifest records (lowercase hex).
        expected: String,
        /// The hash of the file on disk (lowercase hex).
        actual: String,
    },
    /// tract could not load, optimise or run the model.
    #[error("tract failed to {stage} model {model}: {message}")]
    Tract {
        /// The model's name.
        model: String,
        /// What was being done: "parse", "type", "optimize", "plan", "run".
        stage: &'static str,
        /// tract's error chain.
        message: String,
    },
    /// An input of the wrong size.
    #[error("input has {actual} values, expected {expected}")]
    InputLength {
        /// Values expected.
        expected: usize,
        /// Values received.
        actual: usize,
    },
    /// [`crate::Model::predict_values`] on a model that also reads the temperature.
    #[error("model {model} reads a temperature besides its input: call predict with one")]
    NeedsTemperature {
        /// The model's name.
        model: String,
    },
    /// More windows than the plan's batch size.
    #[error("batch of {actual} windows exceeds the model's batch size {max}")]
    BatchTooLarge {
        /// The plan's batch size.
        max: usize,
        /// Windows received.
        actual: usize,
    },
    /// A plan for several windows per run does not answer each window as the plan for
    /// one does: the graph mixes rows, so batching would change decisions.
    #[error("model {model} planned for {batch} windows answers window {row} differently than alone (off by {diff:.3e})")]
    BatchMismatch {
        /// Model name.
        model: String,
        /// The plan's batch size.
        batch: usize,
        /// The first row that differs.
        row: usize,
        /// Its largest logit difference.
        diff: f32,
    },
    /// The model produced an output of an unexpected shape or type.
    #[error("model {model} produced {reason}")]
    BadOutput {
        /// The model's name.
        model: String,
        /// What was wrong with it.
        reason: String,
    },
}

impl ModelError {
    pub(crate) fn tract(model: &str, stage: &'static str, err: impl std::fmt::Display) -> Self {
        ModelError::Tract {
            model: model.to_owned(),
            stage,
            message: format!("{err:#}"),
        }
    }
}
