//! [`Model`]: an ONNX model verified against its manifest and planned by tract.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use reflex_wire::Action;
use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;

use crate::manifest::format2::class_of_score;
use crate::manifest::{ClassValues, Dim, Dtype, Manifest, ModelKind, OutputSpec2};
use crate::preprocess::Preprocess;
use crate::ModelError;

/// Runs executed on load so that the first real prediction is not the slow one.
const WARMUP_RUNS: usize = 8;

/// What a [`Prediction`]'s raw values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Logits, one per class (every format-1 model).
    Logits,
    /// Probabilities, one per class.
    Probabilities,
    /// One score, mapped to a class by the manifest's thresholds.
    Score,
}

/// One model's answer for one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Index into the manifest's classes: of the highest value (first one on ties) for a
    /// classification, of the threshold range the score falls in for a score.
    pub class: usize,
    /// The model's raw output row: one logit or probability per class, or the one score.
    pub logits: Vec<f32>,
    /// The score of a score model.
    pub score: Option<f32>,
    /// What `logits` holds.
    pub kind: OutputKind,
}

impl Prediction {
    /// Class probabilities: softmax of logits, probabilities as given; empty for a score
    /// (thresholds give a class, not a distribution).
    pub fn probabilities(&self) -> Vec<f32> {
        match self.kind {
            OutputKind::Logits => softmax(&self.logits),
            OutputKind::Probabilities => self.logits.clone(),
            OutputKind::Score => Vec::new(),
        }
    }

    /// Probability of the predicted class (the softmax of logits, without allocating; a
    /// probability as given); 1 for a score model, whose thresholds decide; 0 when the class
    /// has no value.
    pub fn confidence(&self) -> f32 {
        let Some(&own) = self.logits.get(self.class) else {
            return if self.kind == OutputKind::Score {
                1.0
            } else {
                0.0
            };
        };
        match self.kind {
            OutputKind::Score => 1.0,
            OutputKind::Probabilities => own,
            OutputKind::Logits => {
                // The same sum, in the same order, as `softmax`: the same value.
                let max = self
                    .logits
                    .iter()
                    .copied()
                    .fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = self.logits.iter().map(|&l| (l - max).exp()).sum();
                (own - max).exp() / sum
            }
        }
    }
}

/// Softmax of `logits`, computed stably.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An ONNX model ready to run: checksum verified, tract plan optimised for a fixed batch
/// size, one reusable execution state, warmed up.
///
/// Not `Sync`: `predict` takes `&mut self` because it reuses the state and the input
/// buffer. Load one instance per worker thread.
#[derive(Debug)]
pub struct Model {
    manifest: Manifest,
    manifest_path: PathBuf,
    path: PathBuf,
    batch: usize,
    /// The input shape without the batch dimension.
    dims: Vec<usize>,
    /// The planned input shape, `[batch, dims…]`.
    shape: Vec<usize>,
    /// Values per input row, the product of `dims`.
    row_len: usize,
    dtype: Dtype,
    pre: Preprocess,
    output: OutputSpec2,
    /// Output values per row: the classes, or 1 for a score.
    out_len: usize,
    /// (mean, std) when the model takes the temperature as a second input.
    temperature: Option<(f32, f32)>,
    actions: Vec<Action>,
    plan: Arc<TypedRunnableModel>,
    state: TypedSimpleState,
    input: Vec<f32>,
    temperatures: Vec<f32>,
}

impl Model {
    /// Loads the model described by `manifest_path` with the batch size its manifest fixes
    /// (1 for a symbolic batch dimension).
    pub fn load(manifest_path: impl AsRef<Path>) -> Result<Model, ModelError> {
        Model::load_inner(manifest_path.as_ref(), None)
    }

    /// Loads a model planned for `batch` windows per run: a symbolic batch dimension
    /// (cloud) is fixed to it; a graph exported with a batch of 1 (edge) is re-planned for
    /// it, which works when its ops treat rows independently (checked by [`crate::Batches`]).
    /// Any other fixed batch must equal `batch`.
    pub fn load_with_batch(
        manifest_path: impl AsRef<Path>,
        batch: usize,
    ) -> Result<Model, ModelError> {
        Model::load_inner(manifest_path.as_ref(), Some(batch))
    }

    /// Loads the float twin of a quantized model (`quantization.fp32_twin` in its
    /// manifest), verified against `quantization.fp32_twin_sha256`, with the same
    /// preprocessing and classes. Its name is the model's name + `_fp32`.
    pub fn load_fp32_twin(manifest_path: impl AsRef<Path>) -> Result<Model, ModelError> {
        let manifest_path = manifest_path.as_ref();
        let mut manifest = Manifest::load(manifest_path)?;
        let q = manifest
            .quantization
            .take()
            .ok_or_else(|| ModelError::ManifestInvalid {
                path: manifest_path.to_owned(),
                reason: format!("model {} has no quantization section", manifest.name),
            })?;
        manifest.file = Some(q.fp32_twin);
        manifest.sha256 = Some(q.fp32_twin_sha256);
        manifest.name.push_str("_fp32");
        manifest.metrics.heldout_accuracy = manifest
            .metrics
            .fp32_twin_heldout_accuracy
            .unwrap_or(f64::NAN);
        manifest.metrics.ort_latency = manifest.metrics.fp32_twin_ort_latency.clone();
        Model::from_manifest(manifest, manifest_path, None)
    }

    fn load_inner(manifest_path: &Path, batch: Option<usize>) -> Result<Model, ModelError> {
        let manifest = Manifest::load(manifest_path)?;
        Model::from_manifest(manifest, manifest_path, batch)
    }

    /// Builds a model from an already parsed manifest; the ONNX file is resolved against
    /// `manifest_path`'s directory. `batch` as in [`Model::load_with_batch`] (None: the
    /// manifest's fixed batch, or 1).
    pub fn from_manifest(
        manifest: Manifest,
        manifest_path: impl AsRef<Path>,
        batch: Option<usize>,
    ) -> Result<Model, ModelError> {
        let manifest_path = manifest_path.as_ref();
        let invalid = |reason: String| ModelError::ManifestInvalid {
            path: manifest_path.to_owned(),
            reason,
        };
        if manifest.kind != ModelKind::Onnx {
            return Err(invalid(format!(
                "model {} is not an onnx model",
                manifest.name
            )));
        }
        // validate() guarantees file, sha256, input and preprocessing for kind onnx.
        let path = manifest
            .file_path(manifest_path)
            .ok_or_else(|| invalid("onnx model without file".into()))?;
        let expected = manifest.sha256.clone().unwrap_or_default();
        let input = manifest
            .input
            .clone()
            .ok_or_else(|| invalid("onnx model without input".into()))?;
        if manifest.format2.is_none() && manifest.preprocessing.is_none() {
            return Err(invalid("onnx model without preprocessing".into()));
        }
        let dims = input
            .shape
            .iter()
            .skip(1)
            .map(|d| match d {
                Dim::Fixed(n) => Ok(*n),
                Dim::Symbol(s) => Err(invalid(format!(
                    "input shape {:?}: only the batch dimension may be symbolic, not {s:?}",
                    input.shape
                ))),
            })
            .collect::<Result<Vec<usize>, _>>()?;
        let row_len = dims.iter().product::<usize>();
        let dtype = manifest.input_dtype();
        let pre =
            Preprocess::new(&manifest.preprocessing_steps(), &dims, dtype).map_err(invalid)?;
        let output = manifest.output_spec();
        let out_len = match output {
            OutputSpec2::Classification { .. } => manifest.classes.len(),
            OutputSpec2::Score { .. } => 1,
        };

        let bytes = std::fs::read(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let actual = sha256_hex(&bytes);
        if actual != expected {
            return Err(ModelError::ChecksumMismatch {
                path,
                expected,
                actual,
            });
        }

        let name = manifest.name.clone();
        let batch_dim = input.shape.first().cloned().unwrap_or(Dim::Fixed(1));
        let batch = match (&batch_dim, batch) {
            (_, Some(0)) => return Err(invalid("batch size 0".into())),
            (Dim::Fixed(b), Some(want)) if *b != want && *b != 1 => {
                return Err(invalid(format!(
                    "model {name} has a fixed batch of {b}, {want} was requested"
                )))
            }
            (Dim::Fixed(b), None) => *b,
            (_, Some(want)) => want,
            (Dim::Symbol(_), None) => 1,
        };
        // A graph exported with a batch of 1 whose every op works row by row (edge.onnx:
        // Conv, Relu, ReduceMean over samples, MatMul) can be planned for more rows by
        // giving tract the wider input and letting it infer every other shape again; a
        // graph that mixes rows fails tract's analysis here. That rows come out as they
        // would one at a time is checked where batches are planned ([`crate::Batches`]).
        let rebatch = matches!(batch_dim, Dim::Fixed(1)) && batch != 1;

        let mut inference = tract_onnx::onnx()
            .with_ignore_value_info(rebatch)
            .with_ignore_output_shapes(rebatch)
            .model_for_read(&mut bytes.as_slice())
            .map_err(|e| ModelError::tract(&name, "parse", e))?;
        if manifest.format2.is_some() {
            // Format 2 names its output: a graph may have others (labels, probabilities).
            inference
                .select_outputs_by_name([output.name()])
                .map_err(|e| ModelError::tract(&name, "select the output of", e))?;
        }
        let shape: Vec<usize> = std::iter::once(batch).chain(dims.iter().copied()).collect();
        if rebatch {
            let datum = match dtype {
                Dtype::Float32 => f32::datum_type(),
                Dtype::Int8 => i8::datum_type(),
                Dtype::Uint8 => u8::datum_type(),
                Dtype::Int16 => i16::datum_type(),
            };
            inference
                .set_input_fact(0, TypedFact::dt_shape(datum, shape.as_slice()).into())
                .map_err(|e| ModelError::tract(&name, "widen the batch of", e))?;
            if manifest.temperature_input.is_some() {
                inference
                    .set_input_fact(1, f32::fact([batch, 1]).into())
                    .map_err(|e| ModelError::tract(&name, "widen the batch of", e))?;
            }
        }
        let mut typed = inference
            .into_typed()
            .map_err(|e| ModelError::tract(&name, "type", e))?;
        if let Dim::Symbol(sym) = &batch_dim {
            let symbol = typed.sym(sym);
            let mut subs = HashMap::new();
            subs.insert(symbol, TDim::Val(batch as i64));
            typed = typed
                .set_symbols(&subs)
                .map_err(|e| ModelError::tract(&name, "fix the batch size of", e))?;
        }
        let plan = typed
            .into_optimized()
            .map_err(|e| ModelError::tract(&name, "optimize", e))?
            .into_runnable()
            .map_err(|e| ModelError::tract(&name, "plan", e))?;
        let state = plan
            .spawn()
            .map_err(|e| ModelError::tract(&name, "spawn a state for", e))?;

        let mut model = Model {
            dims,
            shape,
            row_len,
            dtype,
            pre,
            output,
            out_len,
            temperature: manifest
                .temperature_input
                .as_ref()
                .map(|t| (t.mean as f32, t.std as f32)),
            temperatures: vec![0.0; batch],
            actions: manifest.actions_by_class(),
            manifest,
            manifest_path: manifest_path.to_owned(),
            path,
            batch,
            plan,
            state,
            input: vec![0.0; batch * row_len],
        };
        let zeros = vec![0.0f32; row_len];
        for _ in 0..WARMUP_RUNS {
            model.predict(&zeros, 45.0)?;
        }
        Ok(model)
    }

    /// The manifest's path, as given at load.
    pub fn manifest_path(&self) -> &Path {
        &self.manifest_path
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The ONNX file that was loaded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model's name from its manifest.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// The model's version from its manifest.
    pub fn version(&self) -> &str {
        &self.manifest.version
    }

    /// Windows per run the plan was optimised for.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Class names, by index.
    pub fn classes(&self) -> &[String] {
        &self.manifest.classes
    }

    /// The action for a class index.
    pub fn action(&self, class: usize) -> Option<Action> {
        self.actions.get(class).copied()
    }

    /// Whether the model reads the temperature (cloud does, edge does not).
    pub fn uses_temperature(&self) -> bool {
        self.temperature.is_some()
    }

    /// The input shape without the batch dimension (`[3, 64]` for format 1).
    pub fn input_dims(&self) -> &[usize] {
        &self.dims
    }

    /// Values one input row holds, the product of [`Model::input_dims`].
    pub fn input_len(&self) -> usize {
        self.row_len
    }

    /// Output values per row: one per class, or 1 for a score.
    pub fn output_len(&self) -> usize {
        self.out_len
    }

    /// The input's element type.
    pub fn input_dtype(&self) -> Dtype {
        self.dtype
    }

    /// The output and how it maps to classes (format 1: classification on logits).
    pub fn output_kind(&self) -> &OutputSpec2 {
        &self.output
    }

    /// The monitoring feature names ([`Manifest::feature_names`]).
    pub fn feature_names(&self) -> Vec<String> {
        self.manifest.feature_names()
    }

    /// Classifies one input given as its flat `f32` values in row-major order
    /// ([`Model::input_len`] of them, before preprocessing, which is applied here). For a
    /// model that also reads the temperature use [`Model::predict`].
    pub fn predict_values(&mut self, values: &[f32]) -> Result<Prediction, ModelError> {
        if self.temperature.is_some() {
            return Err(ModelError::NeedsTemperature {
                model: self.manifest.name.clone(),
            });
        }
        self.predict(values, 0.0)
    }

    /// The prediction for one row of raw output values (as the model or a golden file
    /// gives them): the class by argmax or by the score's thresholds.
    pub fn prediction_from_outputs(&self, values: &[f32]) -> Prediction {
        match &self.output {
            OutputSpec2::Classification { values: kind, .. } => Prediction {
                class: argmax(values),
                logits: values.to_vec(),
                score: None,
                kind: match kind {
                    ClassValues::Logits => OutputKind::Logits,
                    ClassValues::Probabilities => OutputKind::Probabilities,
                },
            },
            OutputSpec2::Score { thresholds, .. } => {
                let score = values.first().copied().unwrap_or(f32::NAN);
                Prediction {
                    class: class_of_score(thresholds, &self.manifest.classes, score),
                    logits: values.to_vec(),
                    score: Some(score),
                    kind: OutputKind::Score,
                }
            }
        }
    }

    /// Classifies one window: for format 1, 3 × 64 values in g, channel-major (as decoded
    /// from the wire, `counts × scale`); for format 2, [`Model::input_len`] values. The
    /// machine temperature in °C is ignored by models without a temperature input.
    /// Preprocessing from the manifest is applied here.
    pub fn predict(
        &mut self,
        window_g: &[f32],
        temperature_c: f32,
    ) -> Result<Prediction, ModelError> {
        if window_g.len() != self.row_len {
            return Err(ModelError::InputLength {
                expected: self.row_len,
                actual: window_g.len(),
            });
        }
        let mut out = self.run(window_g, &[temperature_c], 1)?;
        out.pop().ok_or_else(|| ModelError::BadOutput {
            model: self.manifest.name.clone(),
            reason: "no prediction".into(),
        })
    }

    /// Classifies up to [`Model::batch`] windows in one run: `windows_g` holds
    /// `k × input_len` values (k windows, for format 1 each channel-major in g) and
    /// `temperatures_c` their k temperatures (°C). Unused batch slots are zero-filled.
    pub fn predict_batch(
        &mut self,
        windows_g: &[f32],
        temperatures_c: &[f32],
    ) -> Result<Vec<Prediction>, ModelError> {
        let row = self.row_len;
        if !windows_g.len().is_multiple_of(row) {
            return Err(ModelError::InputLength {
                expected: windows_g.len().div_ceil(row) * row,
                actual: windows_g.len(),
            });
        }
        let k = windows_g.len() / row;
        if k > self.batch {
            return Err(ModelError::BatchTooLarge {
                max: self.batch,
                actual: k,
            });
        }
        if temperatures_c.len() != k {
            return Err(ModelError::InputLength {
                expected: k,
                actual: temperatures_c.len(),
            });
        }
        self.run(windows_g, temperatures_c, k)
    }

    fn run(
        &mut self,
        windows_g: &[f32],
        temperatures_c: &[f32],
        k: usize,
    ) -> Result<Vec<Prediction>, ModelError> {
        let row = self.row_len;
        for (dst, src) in self
            .input
            .chunks_exact_mut(row)
            .zip(windows_g.chunks_exact(row))
        {
            dst.copy_from_slice(src);
            self.pre.apply(dst);
        }
        self.input[k * row..].fill(0.0);
        let tensor = self
            .input_tensor()
            .map_err(|e| ModelError::tract(&self.manifest.name, "build the input of", e))?;
        let mut inputs = tvec!(tensor.into_tvalue());
        if let Some((mean, std)) = self.temperature {
            for (o, &t) in self.temperatures.iter_mut().zip(temperatures_c) {
                *o = (t - mean) / std;
            }
            self.temperatures[k..].fill(0.0);
            let t = Tensor::from_shape(&[self.batch, 1], &self.temperatures).map_err(|e| {
                ModelError::tract(&self.manifest.name, "build the temperature input of", e)
            })?;
            inputs.push(t.into_tvalue());
        }
        let outputs = self
            .state
            .run(inputs)
            .map_err(|e| ModelError::tract(&self.manifest.name, "run", e))?;
        let bad = |reason: String| ModelError::BadOutput {
            model: self.manifest.name.clone(),
            reason,
        };
        let first = outputs.first().ok_or_else(|| bad("no output".into()))?;
        let view = first
            .to_plain_array_view::<f32>()
            .map_err(|e| bad(format!("an output that is not f32: {e:#}")))?;
        let score = matches!(self.output, OutputSpec2::Score { .. });
        if view.shape() != [self.batch, self.out_len] && !(score && view.shape() == [self.batch]) {
            return Err(bad(format!(
                "output shape {:?}, expected [{}, {}]",
                view.shape(),
                self.batch,
                self.out_len
            )));
        }
        let flat: Vec<f32> = view.iter().copied().collect();
        Ok(flat
            .chunks_exact(self.out_len)
            .take(k)
            .map(|values| self.prediction_from_outputs(values))
            .collect())
    }

    /// The preprocessed input as a tensor of the model's dtype (integer dtypes through
    /// the quantize step).
    fn input_tensor(&self) -> TractResult<Tensor> {
        let shape = self.shape.as_slice();
        match (self.dtype, self.pre.quantize()) {
            (Dtype::Int8, Some(q)) => {
                let v: Vec<i8> = self.input.iter().map(|&x| q.apply(x) as i8).collect();
                Tensor::from_shape(shape, &v)
            }
            (Dtype::Uint8, Some(q)) => {
                let v: Vec<u8> = self.input.iter().map(|&x| q.apply(x) as u8).collect();
                Tensor::from_shape(shape, &v)
            }
            (Dtype::Int16, Some(q)) => {
                let v: Vec<i16> = self.input.iter().map(|&x| q.apply(x) as i16).collect();
                Tensor::from_shape(shape, &v)
            }
            _ => Tensor::from_shape(shape, &self.input),
        }
    }

    /// The tract plan (for inspection, e.g. counting int8 ops).
    pub fn plan(&self) -> &Arc<TypedRunnableModel> {
        &self.plan
    }
}

/// Index of the largest value (first one on ties; 0 for an empty slice).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}
