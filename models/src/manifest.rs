//! The JSON manifest that travels with every model: identity, checksum, tensor contract,
//! preprocessing, classes and their actions, measured metrics and the drift reference.
//!
//! Every struct refuses unknown fields, so a typo or a manifest from a newer generator
//! is an error rather than silently ignored. The shipped files are written by
//! `models/make_models.py`.
//!
//! Two formats: format 1 describes exactly reflex's own vibration models (input
//! `[batch, 3, 64]` f32, per-channel standardisation, the 13 built-in features); format 2
//! ([`format2`]) describes any model. Both load into one [`Manifest`]: the fields both
//! formats share are its format-1 fields, the rest of a format-2 file is in
//! [`Manifest::format2`]. The normalised accessors ([`Manifest::feature_names`],
//! [`Manifest::preprocessing_steps`], [`Manifest::output_spec`],
//! [`Manifest::input_dtype`]) answer for either format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use reflex_wire::Action;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ModelError;
use crate::features::FEATURE_NAMES;

pub mod format2;

pub use format2::{
    ClassValues, Dtype, Format2, ManifestV2, Monitoring, OutputSpec2, Step, Threshold,
};

/// Manifest format of reflex's own models (`edge`, `cloud`, `fallback`).
pub const MANIFEST_FORMAT: u32 = 1;
/// Manifest format of any model ([`format2`]).
pub const MANIFEST_FORMAT_2: u32 = 2;

/// What kind of model a manifest describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// An ONNX file run by tract ([`crate::Model`]).
    Onnx,
    /// A linear model on the cheap features, weights in the manifest ([`crate::Fallback`]).
    Linear,
}

/// One dimension of a tensor shape: a fixed size or a symbol such as `"N"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A symbolic size, chosen when the plan is built.
    Symbol(String),
}

/// The model's input tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// ONNX input name.
    pub name: String,
    /// Shape, `[batch, 3, 64]`.
    pub shape: Vec<Dim>,
    /// Element type, `float32`.
    pub dtype: String,
    /// Human description of the axes.
    pub layout: String,
}

/// The model's output tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// ONNX output name.
    pub name: String,
    /// Shape, `[batch, classes]`.
    pub shape: Vec<Dim>,
    /// Element type, `float32`.
    pub dtype: String,
    /// What the values mean (logits).
    pub meaning: String,
}

/// Per-channel standardisation applied to the window (in g) before the model:
/// `x'[c][i] = (x[c][i] - mean[c]) / std[c]`, in `f32`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    /// Always `per_channel_standardize`.
    pub kind: String,
    /// The formula, for humans.
    pub formula: String,
    /// Mean per channel (x, y, z), g.
    pub mean: Vec<f64>,
    /// Standard deviation per channel (x, y, z), g.
    pub std: Vec<f64>,
}

/// A second model input carrying the window's temperature, standardised:
/// `t' = (t − mean) / std`, in `f32`, shape `[batch, 1]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemperatureInput {
    /// ONNX input name.
    pub name: String,
    /// Shape, `[batch, 1]`.
    pub shape: Vec<Dim>,
    /// Element type, `float32`.
    pub dtype: String,
    /// The formula, for humans.
    pub formula: String,
    /// Mean temperature, °C.
    pub mean: f64,
    /// Standard deviation, °C.
    pub std: f64,
}

/// How an int8 model was quantized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantization {
    /// `qoperator` or `qdq`.
    pub format: String,
    /// Activation type, e.g. `uint8`.
    pub activations: String,
    /// Weight type, e.g. `int8`.
    pub weights: String,
    /// Per-channel weight scales.
    pub per_channel: bool,
    /// ONNX op types in the quantized graph.
    pub op_types: Vec<String>,
    /// Calibration method and data.
    pub calibration: String,
    /// File name of the float twin.
    pub fp32_twin: String,
    /// SHA-256 of the float twin.
    pub fp32_twin_sha256: String,
}

/// onnxruntime latency measured when the model was generated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    /// Median, µs.
    pub median_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Timed runs.
    pub runs: u64,
    /// Intra-op threads.
    pub threads: u32,
    /// Batch size.
    pub batch: u32,
    /// Runtime and how it was called.
    pub runtime: String,
}

/// Held-out metrics recorded at generation time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Accuracy on the held-out split, 0..=1.
    pub heldout_accuracy: f64,
    /// For a quantized model: accuracy of its float twin on the same split.
    #[serde(default)]
    pub fp32_twin_heldout_accuracy: Option<f64>,
    /// Size of the held-out split.
    pub heldout_examples: usize,
    /// onnxruntime latency of this model (ONNX models only).
    #[serde(default)]
    pub ort_latency: Option<Latency>,
    /// onnxruntime latency of the float twin.
    #[serde(default)]
    pub fp32_twin_ort_latency: Option<Latency>,
}

/// Where the training data came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetInfo {
    /// The simulator that wrote it.
    pub generator: Option<String>,
    /// Its seed.
    pub seed: Option<u64>,
    /// Examples per class.
    pub per_class: Option<u64>,
    /// Training examples.
    pub train_examples: usize,
    /// Held-out examples.
    pub heldout_examples: usize,
    /// How the split was made.
    pub split: String,
    /// Extra training data beyond the split (cloud), if any.
    #[serde(default)]
    pub extra_training: Option<String>,
}

/// The reference distribution of one cheap feature on held-out data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureProfile {
    /// Feature name (see [`FEATURE_NAMES`]).
    pub name: String,
    /// Quantiles at 0, 1, …, 100 percent (101 values, linear interpolation).
    pub quantiles: Vec<f64>,
    /// Mean.
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    /// Examples it was computed from.
    pub count: usize,
}

/// What "normal" looks like, for drift checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceProfile {
    /// Which data it was computed on.
    pub source: String,
    /// One profile per cheap feature, in [`FEATURE_NAMES`] order.
    pub features: Vec<FeatureProfile>,
    /// Fraction of held-out examples the model assigned to each class.
    pub predicted_class_fraction: Vec<f64>,
}

impl ReferenceProfile {
    /// The profiled features' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.features.iter().map(|f| f.name.as_str()).collect()
    }
}

/// The feature vector a linear model reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Names, in order.
    pub names: Vec<String>,
    /// Exact definition.
    pub definition: String,
}

/// Weights of the linear fallback:
/// `logits[k] = bias[k] + Σ_j weights[k][j] · (f[j] − feature_mean[j]) / feature_std[j]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearParams {
    /// `[classes][features]`.
    pub weights: Vec<Vec<f64>>,
    /// `[classes]`.
    pub bias: Vec<f64>,
    /// Feature standardisation: means.
    pub feature_mean: Vec<f64>,
    /// Feature standardisation: standard deviations.
    pub feature_std: Vec<f64>,
}

/// A model manifest (`*.manifest.json`), format 1 or 2.
///
/// Serialises back to the format it was read from. For a format-2 manifest, `output`,
/// `preprocessing`, `temperature_input`, `quantization`, `features`, `linear` and
/// `golden` are `None` (their format-2 counterparts are in [`Manifest::format2`]), and
/// `metrics` / `dataset` hold NaN, 0 or empty where the file does not say
/// ([`Format2::metrics`] and [`Format2::dataset`] keep what it says).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format, [`MANIFEST_FORMAT`] or [`MANIFEST_FORMAT_2`].
    pub format: u32,
    /// Model name, e.g. `edge`.
    pub name: String,
    /// Model version, e.g. `1.0.0`.
    pub version: String,
    /// ONNX or linear.
    pub kind: ModelKind,
    /// Architecture, for humans.
    pub description: String,
    /// ONNX file, relative to the manifest's directory.
    #[serde(default)]
    pub file: Option<String>,
    /// SHA-256 of `file`, lowercase hex.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Input tensor (ONNX models).
    #[serde(default)]
    pub input: Option<InputSpec>,
    /// Output tensor (ONNX models).
    #[serde(default)]
    pub output: Option<OutputSpec>,
    /// Window preprocessing (ONNX models).
    #[serde(default)]
    pub preprocessing: Option<Preprocessing>,
    /// Temperature as a second input (models that use it, e.g. cloud).
    #[serde(default)]
    pub temperature_input: Option<TemperatureInput>,
    /// Class names; the class index is the position.
    pub classes: Vec<String>,
    /// What the actuator should do for each class, by class name.
    pub actions: BTreeMap<String, Action>,
    /// Quantization details (int8 models).
    #[serde(default)]
    pub quantization: Option<Quantization>,
    /// Feature definition (linear models).
    #[serde(default)]
    pub features: Option<FeatureSpec>,
    /// Weights (linear models).
    #[serde(default)]
    pub linear: Option<LinearParams>,
    /// Held-out metrics.
    pub metrics: Metrics,
    /// Training data.
    pub dataset: DatasetInfo,
    /// Drift reference.
    pub reference: ReferenceProfile,
    /// Golden vectors checked at every load (ONNX models; optional).
    #[serde(default)]
    pub golden: Option<GoldenSpec>,
    /// The format-2 sections (`None` for a format-1 manifest).
    #[serde(skip)]
    pub format2: Option<Format2>,
}

impl Serialize for Manifest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.to_v2() {
            Some(v2) => v2.serialize(serializer),
            None => Manifest::serialize(self, serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Manifest {
    /// Either format, by its `format` field; a format-2 manifest is validated (it must
    /// be, to fill the format-1 fields), a format-1 one is not (as before format 2).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Manifest, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        if value.get("format") == Some(&serde_json::Value::from(MANIFEST_FORMAT_2)) {
            let v2 = ManifestV2::deserialize(value).map_err(D::Error::custom)?;
            v2.validate().map_err(D::Error::custom)?;
            Ok(Manifest::from_v2(v2))
        } else {
            Manifest::deserialize(value).map_err(D::Error::custom)
        }
    }
}

/// Golden vectors of an ONNX model: windows whose logits onnxruntime computed when the
/// model was made. Paths are relative to the manifest's directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenSpec {
    /// `.npy`, int16 `[n, 3, 64]`: window counts.
    pub windows: String,
    /// g per count (the wire format's scale).
    pub scale: f64,
    /// `.npy`, float32 `[n]`: temperatures in °C.
    pub temperature: String,
    /// `.npy`, float32 `[n, classes]`: onnxruntime's logits.
    pub logits: String,
    /// Largest accepted |model − golden| over all logits.
    pub max_abs_diff: f64,
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(path: impl AsRef<Path>) -> Result<Manifest, ModelError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_owned(),
            source,
        })?;
        Manifest::from_json(&text, path)
    }

    /// Parses and validates manifest text, either format; `path` is only used in error
    /// messages.
    pub fn from_json(text: &str, path: impl AsRef<Path>) -> Result<Manifest, ModelError> {
        let path = path.as_ref();
        /// Reads only `format`, to pick the format's own strict parser.
        #[derive(Deserialize)]
        struct Probe {
            format: Option<serde_json::Value>,
        }
        if let Ok(Probe {
            format: Some(format),
        }) = serde_json::from_str(text)
        {
            if format == MANIFEST_FORMAT_2 {
                return Manifest::from_json_v2(text, path);
            }
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let manifest = Manifest::deserialize(&mut de)
            .and_then(|m| de.end().map(|()| m))
            .map_err(|source| ModelError::ManifestParse {
                path: path.to_owned(),
                source,
            })?;
        manifest
            .validate()
            .map_err(|reason| ModelError::ManifestInvalid {
                path: path.to_owned(),
                reason,
            })?;
        Ok(manifest)
    }

    fn from_json_v2(text: &str, path: &Path) -> Result<Manifest, ModelError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let v2: ManifestV2 =
            serde_path_to_error::deserialize(&mut de).map_err(|e| ModelError::ManifestField {
                path: path.to_owned(),
                field: e.path().to_string(),
                source: e.into_inner(),
            })?;
        de.end().map_err(|source| ModelError::ManifestParse {
            path: path.to_owned(),
            source,
        })?;
        v2.validate()
            .map_err(|reason| ModelError::ManifestInvalid {
                path: path.to_owned(),
                reason,
            })?;
        Ok(Manifest::from_v2(v2))
    }

    /// A validated format-2 file as a [`Manifest`].
    fn from_v2(v2: ManifestV2) -> Manifest {
        let dtype = Dtype::parse(&v2.input.dtype).unwrap_or(Dtype::Float32);
        Manifest {
            format: v2.format,
            name: v2.name,
            version: v2.version,
            kind: v2.kind,
            description: v2.description,
            file: Some(v2.file),
            sha256: Some(v2.sha256),
            input: Some(v2.input),
            output: None,
            preprocessing: None,
            temperature_input: None,
            classes: v2.classes,
            actions: v2.actions,
            quantization: None,
            features: None,
            linear: None,
            metrics: Metrics {
                heldout_accuracy: v2.metrics.heldout_accuracy.unwrap_or(f64::NAN),
                fp32_twin_heldout_accuracy: None,
                heldout_examples: v2.metrics.heldout_examples.unwrap_or(0),
                ort_latency: v2.metrics.ort_latency.clone(),
                fp32_twin_ort_latency: None,
            },
            dataset: DatasetInfo {
                generator: v2.dataset.generator.clone(),
                seed: v2.dataset.seed,
                per_class: None,
                train_examples: v2.dataset.train_examples.unwrap_or(0),
                heldout_examples: v2.dataset.heldout_examples.unwrap_or(0),
                split: v2.dataset.split.clone().unwrap_or_default(),
                extra_training: None,
            },
            reference: v2.reference,
            golden: None,
            format2: Some(Format2 {
                dtype,
                preprocessing: v2.preprocessing,
                output: v2.output,
                monitoring: v2.monitoring,
                metrics: v2.metrics,
                dataset: v2.dataset,
                golden: v2.golden,
            }),
        }
    }

    /// The format-2 file this manifest was read from (`None` for format 1).
    pub fn to_v2(&self) -> Option<ManifestV2> {
        let f = self.format2.as_ref()?;
        Some(ManifestV2 {
            format: self.format,
            name: self.name.clone(),
            version: self.version.clone(),
            kind: self.kind,
            description: self.description.clone(),
            file: self.file.clone().unwrap_or_default(),
            sha256: self.sha256.clone().unwrap_or_default(),
            input: self.input.clone().unwrap_or(InputSpec {
                name: String::new(),
                shape: Vec::new(),
                dtype: f.dtype.name().to_owned(),
                layout: String::new(),
            }),
            preprocessing: f.preprocessing.clone(),
            output: f.output.clone(),
            classes: self.classes.clone(),
            actions: self.actions.clone(),
            monitoring: f.monitoring.clone(),
            metrics: f.metrics.clone(),
            dataset: f.dataset.clone(),
            reference: self.reference.clone(),
            golden: f.golden.clone(),
        })
    }

    /// The monitoring feature names, in the order the reference profile lists them: the
    /// 13 built-in [`FEATURE_NAMES`] for format 1, `<stat>_<channel>` for every statistic
    /// and channel of `monitoring.window_stats` (statistic-major) then
    /// `monitoring.scalars` for format 2.
    pub fn feature_names(&self) -> Vec<String> {
        match &self.format2 {
            Some(f) => f.monitoring.feature_names(),
            None => FEATURE_NAMES.iter().map(|&n| n.to_owned()).collect(),
        }
    }

    /// The input's element type (`float32` for format 1).
    pub fn input_dtype(&self) -> Dtype {
        self.format2.as_ref().map_or(Dtype::Float32, |f| f.dtype)
    }

    /// The preprocessing as format-2 steps: format 1's standardisation is
    /// `per_channel_standardize` over axis 1; a linear model has none.
    pub fn preprocessing_steps(&self) -> Vec<Step> {
        match (&self.format2, &self.preprocessing) {
            (Some(f), _) => f.preprocessing.clone(),
            (None, Some(p)) => vec![Step::PerChannelStandardize {
                axis: 1,
                mean: p.mean.clone(),
                std: p.std.clone(),
            }],
            (None, None) => Vec::new(),
        }
    }

    /// The output as a format-2 output: format 1 is classification on logits.
    pub fn output_spec(&self) -> OutputSpec2 {
        match &self.format2 {
            Some(f) => f.output.clone(),
            None => OutputSpec2::Classification {
                name: self
                    .output
                    .as_ref()
                    .map_or_else(|| "logits".to_owned(), |o| o.name.clone()),
                values: ClassValues::Logits,
            },
        }
    }

    /// The action for a class index, if the index is valid.
    pub fn action(&self, class: usize) -> Option<Action> {
        self.classes
            .get(class)
            .and_then(|name| self.actions.get(name).copied())
    }

    /// Actions in class-index order (validated complete at load).
    pub fn actions_by_class(&self) -> Vec<Action> {
        self.classes
            .iter()
            .filter_map(|c| self.actions.get(c).copied())
            .collect()
    }

    /// The ONNX file path, resolved against the manifest's directory.
    pub fn file_path(&self, manifest_path: &Path) -> Option<PathBuf> {
        let file = self.file.as_ref()?;
        Some(match manifest_path.parent() {
            Some(dir) => dir.join(file),
            None => PathBuf::from(file),
        })
    }

    fn validate(&self) -> Result<(), String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!(
                "format {} is not supported (expected {MANIFEST_FORMAT} or {MANIFEST_FORMAT_2})",
                self.format
            ));
        }
        if self.classes.is_empty() {
            return Err("no classes".into());
        }
        for c in &self.classes {
            if !self.actions.contains_key(c) {
                return Err(format!("class {c:?} has no action"));
            }
        }
        for a in self.actions.keys() {
            if !self.classes.contains(a) {
                return Err(format!("action given for unknown class {a:?}"));
            }
        }
        let n = self.classes.len();
        if self.reference.predicted_class_fraction.len() != n {
            return Err(format!(
                "reference.predicted_class_fraction has {} values for {n} classes",
                self.reference.predicted_class_fraction.len()
            ));
        }
        let names = self.reference.names();
        if names != FEATURE_NAMES {
            return Err(format!(
                "reference.features are {names:?}, expected {FEATURE_NAMES:?}"
            ));
        }
        for f in &self.reference.features {
            if f.quantiles.len() != 101 {
                return Err(format!(
                    "reference feature {} has {} quantiles, expected 101",
                    f.name,
                    f.quantiles.len()
                ));
            }
        }
        match self.kind {
            ModelKind::Onnx => {
                let sha = self.sha256.as_deref().ok_or("onnx model without sha256")?;
                if sha.len() != 64 || !sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(format!("sha256 {sha:?} is not 64 lowercase hex digits"));
                }
                if self.file.is_none() {
                    return Err("onnx model without file".into());
                }
                let input = self.input.as_ref().ok_or("onnx model without input")?;
                if input.shape.len() != 3
                    || input.shape[1] != Dim::Fixed(crate::CHANNELS)
                    || input.shape[2] != Dim::Fixed(crate::WINDOW)
                {
                    return Err(format!(
                        "input shape {:?} is not [batch, 3, 64]",
                        input.shape
                    ));
                }
                if input.dtype != "float32" {
                    return Err(format!("input dtype {} is not float32", input.dtype));
                }
                if self.output.is_none() {
                    return Err("onnx model without output".into());
                }
                let p = self
                    .preprocessing
                    .as_ref()
                    .ok_or("onnx model without preprocessing")?;
                if p.kind != "per_channel_standardize" {
                    return Err(format!("unknown preprocessing {:?}", p.kind));
                }
                if p.mean.len() != crate::CHANNELS || p.std.len() != crate::CHANNELS {
                    return Err("preprocessing needs 3 means and 3 stds".into());
                }
                if p.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                    return Err(format!(
                        "preprocessing std {:?} must be finite and positive",
                        p.std
                    ));
                }
                if let Some(t) = &self.temperature_input {
                    if !(t.std.is_finite() && t.std > 0.0) || t.dtype != "float32" {
                        return Err("temperature_input needs float32 and a positive std".into());
                    }
                }
            }
            ModelKind::Linear => {
                let l = self.linear.as_ref().ok_or("linear model without weights")?;
                let f = crate::features::FEATURE_COUNT;
                if l.weights.len() != n || l.bias.len() != n {
                    return Err(format!("linear model needs {n} weight rows and biases"));
                }
                if l.weights.iter().any(|r| r.len() != f)
                    || l.feature_mean.len() != f
                    || l.feature_std.len() != f
                {
                    return Err(format!("linear model needs {f} features"));
                }
                if l.feature_std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                    return Err("feature_std must be finite and positive".into());
                }
                if let Some(spec) = &self.features {
                    if spec.names != FEATURE_NAMES {
                        return Err(format!(
                            "features are {:?}, expected {FEATURE_NAMES:?}",
                            spec.names
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
