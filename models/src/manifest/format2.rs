//! Manifest format 2: any model. One input tensor of any rank and an integer or float
//! type, declared preprocessing steps, a classification or score output, and the
//! monitoring features named by the manifest instead of the fixed 13.
//!
//! [`ManifestV2`] is the file as written; [`Manifest::load`](super::Manifest::load) reads
//! it into a [`Manifest`](super::Manifest) whose format-1 fields hold what both formats
//! share and whose [`Format2`] section holds the rest. Validation reports every problem at
//! once, each as `field.path = value: what is wrong`.

use std::collections::{BTreeMap, BTreeSet};

use reflex_wire::Action;
use serde::{Deserialize, Serialize};

use super::{Dim, InputSpec, Latency, ModelKind, ReferenceProfile};

/// Element type of a format-2 input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// `float32`: the preprocessed values as they are.
    Float32,
    /// `int8`, through the last `quantize` step.
    Int8,
    /// `uint8`, through the last `quantize` step.
    Uint8,
    /// `int16`, through the last `quantize` step.
    Int16,
}

impl Dtype {
    /// Every dtype, in the order the manifest documentation lists them.
    pub const ALL: [Dtype; 4] = [Dtype::Float32, Dtype::Int8, Dtype::Uint8, Dtype::Int16];

    /// The manifest spelling, e.g. `int8`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Float32 => "float32",
            Dtype::Int8 => "int8",
            Dtype::Uint8 => "uint8",
            Dtype::Int16 => "int16",
        }
    }

    /// The dtype a manifest spells `name`.
    pub fn parse(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The integer range of an integer dtype (`None` for `float32`).
    pub fn int_range(self) -> Option<(i32, i32)> {
        match self {
            Dtype::Float32 => None,
            Dtype::Int8 => Some((i8::MIN.into(), i8::MAX.into())),
            Dtype::Uint8 => Some((u8::MIN.into(), u8::MAX.into())),
            Dtype::Int16 => Some((i16::MIN.into(), i16::MAX.into())),
        }
    }
}

/// One preprocessing step, applied in `f32` to the input values in manifest order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// `x · factor`.
    Scale {
        /// Multiplier.
        factor: f64,
    },
    /// `x + value`.
    Offset {
        /// Addend.
        value: f64,
    },
    /// `(x − mean[c]) / std[c]`, `c` the index along input dimension `axis`.
    PerChannelStandardize {
        /// The input dimension (batch included, so ≥ 1) that holds the channels.
        axis: usize,
        /// One mean per channel.
        mean: Vec<f64>,
        /// One positive standard deviation per channel.
        std: Vec<f64>,
    },
    /// `min(max(x, min), max)`.
    Clip {
        /// Lower bound.
        min: f64,
        /// Upper bound.
        max: f64,
    },
    /// The last step of an integer input: `clamp(round_half_even(x / scale) + zero_point)`
    /// to the dtype's range.
    Quantize {
        /// Positive step size.
        scale: f64,
        /// The integer that stands for 0.
        zero_point: i32,
    },
}

impl Step {
    /// The `op` name.
    pub fn op(&self) -> &'static str {
        match self {
            Step::Scale { .. } => "scale",
            Step::Offset { .. } => "offset",
            Step::PerChannelStandardize { .. } => "per_channel_standardize",
            Step::Clip { .. } => "clip",
            Step::Quantize { .. } => "quantize",
        }
    }
}

/// What a classification output's values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassValues {
    /// Unnormalised scores: argmax is the class, softmax the confidence.
    Logits,
    /// Probabilities: argmax is the class, the value itself the confidence.
    Probabilities,
}

/// One entry of a score output's thresholds: scores below `below` (and not below an
/// earlier entry's bound) are `class`; the last entry has no bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// Exclusive upper bound of the range (absent on the last entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// The class name of scores in the range.
    pub class: String,
}

/// The model's output: the first output of the graph unless named otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputSpec2 {
    /// One value per class (shape `[batch, classes]`).
    Classification {
        /// ONNX output name.
        name: String,
        /// Logits or probabilities.
        values: ClassValues,
    },
    /// One value per row (shape `[batch]` or `[batch, 1]`), mapped to a class by
    /// ordered thresholds.
    Score {
        /// ONNX output name.
        name: String,
        /// Increasing bounds, the last entry unbounded.
        thresholds: Vec<Threshold>,
    },
}

impl OutputSpec2 {
    /// The ONNX output name.
    pub fn name(&self) -> &str {
        match self {
            OutputSpec2::Classification { name, .. } | OutputSpec2::Score { name, .. } => name,
        }
    }
}

/// Statistics of each channel of the window (see [`Monitoring`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowStats {
    /// Statistics ([`crate::stats::Stat`]: `mean`, `std`, `rms`, `min`, `max`, `peak`,
    /// `peak_abs`, `p2p`, `crest`, `kurtosis` (or `kurt`), `skew`).
    pub stats: Vec<crate::stats::Stat>,
    /// Channel names, e.g. `x`, `y`, `z`.
    pub channels: Vec<String>,
}

/// The features the drift monitor and rescoring compute: `<stat>_<channel>` for every
/// statistic (outer) and channel (inner), then the scalars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Monitoring {
    /// Per-channel window statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_stats: Option<WindowStats>,
    /// Values that travel with the window, e.g. `temperature`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scalars: Vec<String>,
}

impl Monitoring {
    /// Feature names in order: `<stat>_<channel>`, statistic-major, then the scalars
    /// (`kurtosis` is named `kurt_<channel>`, as the demo's 13 features are): exactly
    /// [`crate::stats::WindowStats::names`] of [`Monitoring::stats`].
    pub fn feature_names(&self) -> Vec<String> {
        self.stats().names()
    }

    /// What computes these features from a window ([`crate::stats`]).
    pub fn stats(&self) -> crate::stats::WindowStats {
        let (stats, channels) = match &self.window_stats {
            Some(w) => (w.stats.clone(), w.channels.clone()),
            None => (Vec::new(), Vec::new()),
        };
        crate::stats::WindowStats {
            stats,
            channels,
            scalars: self.scalars.clone(),
        }
    }
}

/// Held-out metrics, each optional: a model imported from another tool may know none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics2 {
    /// Accuracy on a held-out split, 0..=1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_accuracy: Option<f64>,
    /// Size of that split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_examples: Option<usize>,
    /// onnxruntime latency measured where the model was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ort_latency: Option<Latency>,
}

/// Where the training data came from, each field optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset2 {
    /// Free text: the tool, data set or simulator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<String>,
    /// Its seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Training examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_examples: Option<usize>,
    /// Held-out examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_examples: Option<usize>,
    /// How the split was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
}

/// Golden vectors of a format-2 model, paths relative to the manifest's directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Golden2 {
    /// `.npy` float32 `[n, …input dims without the batch]`: input values before
    /// preprocessing.
    pub inputs: String,
    /// `.npy` float32 `[n, classes]` (classification) or `[n]` / `[n, 1]` (score): the
    /// outputs the reference runtime computed.
    pub outputs: String,
    /// Largest accepted |model − golden| over all outputs.
    pub max_abs_diff: f64,
}

/// A format-2 manifest file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestV2 {
    /// Always 2.
    pub format: u32,
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: String,
    /// Always `onnx` in format 2.
    pub kind: ModelKind,
    /// For humans.
    #[serde(default)]
    pub description: String,
    /// ONNX file, relative to the manifest's directory.
    pub file: String,
    /// SHA-256 of `file`, lowercase hex.
    pub sha256: String,
    /// The one input tensor.
    pub input: InputSpec,
    /// Steps applied in order to the input values (empty: baked into the graph).
    pub preprocessing: Vec<Step>,
    /// The output and how it maps to classes.
    pub output: OutputSpec2,
    /// Class names; the class index is the position.
    pub classes: Vec<String>,
    /// The action for each class, by class name.
    pub actions: BTreeMap<String, Action>,
    /// The monitoring features.
    pub monitoring: Monitoring,
    /// What is known of held-out metrics.
    #[serde(default)]
    pub metrics: Metrics2,
    /// What is known of the training data.
    #[serde(default)]
    pub dataset: Dataset2,
    /// Drift reference over the monitoring features, in their order.
    pub reference: ReferenceProfile,
    /// Golden vectors checked at load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub golden: Option<Golden2>,
}

/// The parts of a format-2 manifest that format 1 has no field for.
#[derive(Debug, Clone, PartialEq)]
pub struct Format2 {
    /// The input's element type.
    pub dtype: Dtype,
    /// Preprocessing steps.
    pub preprocessing: Vec<Step>,
    /// Output kind.
    pub output: OutputSpec2,
    /// Monitoring features.
    pub monitoring: Monitoring,
    /// Metrics as written (the format-1 `metrics` field holds NaN / 0 where unknown).
    pub metrics: Metrics2,
    /// Dataset as written.
    pub dataset: Dataset2,
    /// Golden vectors.
    pub golden: Option<Golden2>,
}

/// Collects validation problems as `path = value: what`.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, path: impl std::fmt::Display, value: impl std::fmt::Debug, what: &str) {
        self.0.push(format!("{path} = {value:?}: {what}"));
    }

    pub(crate) fn into_result(self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0.join("; "))
        }
    }
}

fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

impl ManifestV2 {
    /// Every problem of the manifest, each naming its field and value; `Ok` when none.
    pub fn validate(&self) -> Result<(), String> {
        let mut p = Problems::default();
        if self.format != 2 {
            p.add("format", self.format, "a format-2 manifest has format 2");
        }
        if self.kind != ModelKind::Onnx {
            p.add("kind", "linear", "format 2 describes onnx models only");
        }
        if self.file.is_empty() {
            p.add("file", &self.file, "must name the onnx file");
        }
        let sha = &self.sha256;
        if sha.len() != 64 || !sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            p.add("sha256", sha, "must be 64 lowercase hex digits");
        }
        let dtype = self.validate_input(&mut p);
        self.validate_preprocessing(dtype, &mut p);
        self.validate_classes(&mut p);
        self.validate_output(&mut p);
        self.validate_monitoring(&mut p);
        if let Some(a) = self.metrics.heldout_accuracy {
            if !(0.0..=1.0).contains(&a) {
                p.add("metrics.heldout_accuracy", a, "must lie in 0..=1");
            }
        }
        if let Some(g) = &self.golden {
            if !(g.max_abs_diff.is_finite() && g.max_abs_diff >= 0.0) {
                p.add(
                    "golden.max_abs_diff",
                    g.max_abs_diff,
                    "must be finite and >= 0",
                );
            }
        }
        p.into_result()
    }

    /// Checks `input`; returns its dtype when it is a known one.
    fn validate_input(&self, p: &mut Problems) -> Option<Dtype> {
        let shape = &self.input.shape;
        match shape.first() {
            None => p.add("input.shape", shape, "needs at least the batch dimension"),
            Some(Dim::Fixed(1) | Dim::Symbol(_)) => {}
            Some(Dim::Fixed(b)) => p.add("input.shape[0]", b, "the batch must be 1 or a symbol"),
        }
        for (i, d) in shape.iter().enumerate().skip(1) {
            match d {
                Dim::Fixed(n) if *n >= 1 => {}
                Dim::Fixed(n) => p.add(format!("input.shape[{i}]"), n, "must be at least 1"),
                Dim::Symbol(s) => p.add(
                    format!("input.shape[{i}]"),
                    s,
                    "only the batch dimension may be symbolic",
                ),
            }
        }
        let dtype = Dtype::parse(&self.input.dtype);
        if dtype.is_none() {
            p.add(
                "input.dtype",
                &self.input.dtype,
                "must be one of float32, int8, uint8, int16",
            );
        }
        dtype
    }

    fn validate_preprocessing(&self, dtype: Option<Dtype>, p: &mut Problems) {
        let steps = &self.preprocessing;
        for (i, step) in steps.iter().enumerate() {
            let at = |field: &str| format!("preprocessing[{i}].{field}");
            match step {
                Step::Scale { factor } => {
                    if !(factor.is_finite() && *factor != 0.0) {
                        p.add(at("factor"), factor, "must be finite and non-zero");
                    }
                }
                Step::Offset { value } => {
                    if !value.is_finite() {
                        p.add(at("value"), value, "must be finite");
                    }
                }
                Step::Clip { min, max } => {
                    if !(min.is_finite() && max.is_finite() && min <= max) {
                        p.add(at("max"), max, &format!("must be finite and >= min {min}"));
                    }
                }
                Step::PerChannelStandardize { axis, mean, std } => {
                    let rank = self.input.shape.len();
                    let channels = match self.input.shape.get(*axis) {
                        Some(Dim::Fixed(n)) if *axis >= 1 => Some(*n),
                        _ => {
                            p.add(
                                at("axis"),
                                axis,
                                &format!("must name a fixed input dimension in 1..{rank}"),
                            );
                            None
                        }
                    };
                    if let Some(n) = channels {
                        if mean.len() != n {
                            p.add(
                                at("mean"),
                                mean,
                                &format!("needs {n} values, one per channel"),
                            );
                        }
                        if std.len() != n {
                            p.add(
                                at("std"),
                                std,
                                &format!("needs {n} values, one per channel"),
                            );
                        }
                    }
                    if mean.iter().any(|m| !m.is_finite()) {
                        p.add(at("mean"), mean, "must be finite");
                    }
                    if !std.iter().all(|s| positive(*s)) {
                        p.add(at("std"), std, "must be finite and positive");
                    }
                }
                Step::Quantize { scale, zero_point } => {
                    let range = dtype.and_then(Dtype::int_range);
                    if i + 1 != steps.len() {
                        p.add(at("op"), "quantize", "must be the last step");
                    }
                    match range {
                        None if dtype.is_some() => p.add(
                            at("op"),
                            "quantize",
                            "needs an integer input.dtype (input.dtype is float32)",
                        ),
                        Some((lo, hi)) if !(lo..=hi).contains(zero_point) => p.add(
                            at("zero_point"),
                            zero_point,
                            &format!("must lie in {lo}..={hi} for {}", self.input.dtype),
                        ),
                        _ => {}
                    }
                    if !positive(*scale) {
                        p.add(at("scale"), scale, "must be finite and positive");
                    }
                }
            }
        }
        if let Some(d) = dtype.filter(|d| d.int_range().is_some()) {
            if !matches!(steps.last(), Some(Step::Quantize { .. })) {
                p.add(
                    "preprocessing",
                    steps.iter().map(Step::op).collect::<Vec<_>>(),
                    &format!(
                        "input.dtype {} needs a last step {{\"op\": \"quantize\", \"scale\", \
                         \"zero_point\"}}",
                        d.name()
                    ),
                );
            }
        }
    }

    fn validate_classes(&self, p: &mut Problems) {
        if self.classes.is_empty() {
            p.add("classes", &self.classes, "needs at least one class");
        }
        let mut seen = BTreeSet::new();
        for (i, c) in self.classes.iter().enumerate() {
            if !seen.insert(c) {
                p.add(format!("classes[{i}]"), c, "is repeated");
            }
            if !self.actions.contains_key(c) {
                p.add(
                    format!("actions.{c}"),
                    "(none)",
                    "every class needs an action",
                );
            }
        }
        for a in self.actions.keys() {
            if !self.classes.contains(a) {
                p.add(format!("actions.{a}"), a, "is not one of classes");
            }
        }
        let fractions = &self.reference.predicted_class_fraction;
        if fractions.len() != self.classes.len() {
            p.add(
                "reference.predicted_class_fraction",
                fractions,
                &format!("needs {} values, one per class", self.classes.len()),
            );
        }
    }

    fn validate_output(&self, p: &mut Problems) {
        let OutputSpec2::Score { thresholds, .. } = &self.output else {
            return;
        };
        if thresholds.is_empty() {
            p.add("output.thresholds", thresholds, "needs at least one entry");
        }
        let last = thresholds.len().saturating_sub(1);
        let mut previous = f64::NEG_INFINITY;
        for (i, t) in thresholds.iter().enumerate() {
            let at = |f: &str| format!("output.thresholds[{i}].{f}");
            match (t.below, i == last) {
                (Some(b), true) => p.add(at("below"), b, "the last entry has no bound"),
                (None, false) => p.add(at("below"), "(none)", "every entry but the last needs one"),
                (Some(b), false) if !(b.is_finite() && b > previous) => p.add(
                    at("below"),
                    b,
                    &format!("must be finite and above the previous bound {previous}"),
                ),
                (Some(b), false) => previous = b,
                (None, true) => {}
            }
            if !self.classes.contains(&t.class) {
                p.add(at("class"), &t.class, "is not one of classes");
            }
        }
    }

    fn validate_monitoring(&self, p: &mut Problems) {
        let m = &self.monitoring;
        let name_ok = |s: &String| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if let Some(w) = &m.window_stats {
            if w.stats.is_empty() {
                p.add("monitoring.window_stats.stats", &w.stats, "is empty");
            }
            for (field, list) in [("channels", &w.channels)] {
                if list.is_empty() {
                    p.add(format!("monitoring.window_stats.{field}"), list, "is empty");
                }
                for (i, s) in list.iter().enumerate() {
                    if !name_ok(s) {
                        p.add(
                            format!("monitoring.window_stats.{field}[{i}]"),
                            s,
                            "must be lowercase letters, digits and _",
                        );
                    }
                }
            }
        }
        for (i, s) in m.scalars.iter().enumerate() {
            if !name_ok(s) {
                p.add(
                    format!("monitoring.scalars[{i}]"),
                    s,
                    "must be lowercase letters, digits and _",
                );
            }
        }
        let names = m.feature_names();
        if names.is_empty() {
            p.add("monitoring", "{}", "names no feature");
        }
        let mut seen = BTreeSet::new();
        for n in &names {
            if !seen.insert(n) {
                p.add("monitoring", n, "names this feature twice");
            }
        }
        let reference = self.reference.names();
        if reference != names {
            p.add(
                "reference.features[].name",
                reference,
                &format!("must be the monitoring features in order: {names:?}"),
            );
        }
        for (i, f) in self.reference.features.iter().enumerate() {
            if f.quantiles.len() != 101 {
                p.add(
                    format!("reference.features[{i}].quantiles"),
                    f.quantiles.len(),
                    "needs 101 values (0, 1, …, 100 percent)",
                );
            }
        }
    }
}

/// The class of `score` under `thresholds` (validated: increasing, last unbounded): the
/// index into `classes` of the first entry whose `below` exceeds the score. A NaN score
/// falls through to the last entry.
pub fn class_of_score(thresholds: &[Threshold], classes: &[String], score: f32) -> usize {
    let entry = thresholds
        .iter()
        .find(|t| t.below.is_some_and(|b| f64::from(score) < b))
        .or(thresholds.last());
    entry
        .and_then(|t| classes.iter().position(|c| *c == t.class))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(below: Option<f64>, class: &str) -> Threshold {
        Threshold {
            below,
            class: class.into(),
        }
    }

    #[test]
    fn scores_map_to_the_first_range_they_fall_below() {
        let classes: Vec<String> = ["normal", "watch", "anomaly"].map(String::from).to_vec();
        let th = [
            t(Some(0.5), "normal"),
            t(Some(0.8), "watch"),
            t(None, "anomaly"),
        ];
        assert_eq!(class_of_score(&th, &classes, 0.1), 0);
        assert_eq!(
            class_of_score(&th, &classes, 0.5),
            1,
            "bounds are exclusive"
        );
        assert_eq!(class_of_score(&th, &classes, 0.79), 1);
        assert_eq!(class_of_score(&th, &classes, 0.8), 2);
        assert_eq!(class_of_score(&th, &classes, f32::INFINITY), 2);
        assert_eq!(class_of_score(&th, &classes, f32::NAN), 2);
    }

    #[test]
    fn feature_names_are_stat_major_then_scalars() {
        let m = Monitoring {
            window_stats: Some(WindowStats {
                stats: vec![crate::stats::Stat::Mean, crate::stats::Stat::Rms],
                channels: vec!["x".into(), "y".into()],
            }),
            scalars: vec!["temperature".into()],
        };
        assert_eq!(
            m.feature_names(),
            ["mean_x", "mean_y", "rms_x", "rms_y", "temperature"]
        );
    }

    #[test]
    fn dtype_names_round_trip_and_integer_ranges_are_the_types() {
        for d in Dtype::ALL {
            assert_eq!(Dtype::parse(d.name()), Some(d));
        }
        assert_eq!(Dtype::parse("float64"), None);
        assert_eq!(Dtype::Uint8.int_range(), Some((0, 255)));
        assert_eq!(Dtype::Int16.int_range(), Some((-32768, 32767)));
        assert_eq!(Dtype::Float32.int_range(), None);
    }
}
