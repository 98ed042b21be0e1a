//! `reflex-model import`: writes a format-2 manifest for an ONNX model from the model
//! itself and a file of sample inputs, with no Python. tract reads the input and output
//! from the graph and runs every sample; the outputs become the golden vectors and the
//! reference profile; the manifest written is loaded back with [`Model::load`] and its
//! golden vectors checked before the import counts as done (otherwise what was written is
//! removed). The numbers themselves are computed in [`crate::reference`]; the samples are
//! read by [`crate::samples`].
//!
//! An integer input (int8, uint8, int16) is imported with the quantization the user gives
//! ([`InputQuantization`]), written as the last `quantize` step; `--standardize-channels`
//! writes a `per_channel_standardize` step over the samples' channels before it. The
//! samples and golden inputs stay `f32` in physical units: every row runs through the
//! same [`Preprocess`] that [`Model`] applies, so what the golden check loads back is
//! what was run here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use reflex_wire::Action;
use tract_onnx::prelude::*;

use crate::golden::{self, GoldenReport};
use crate::manifest::format2::{
    class_of_score, ClassValues, Golden2, ManifestV2, Metrics2, Monitoring, Threshold, WindowStats,
};
use crate::manifest::{
    Dim, Dtype, InputSpec, Latency, ModelKind, OutputSpec2, ReferenceProfile, Step,
};
use crate::model::{argmax, sha256_hex};
use crate::npy;
use crate::preprocess::Preprocess;
use crate::reference;
use crate::samples::{self, Samples, SamplesError, Skipped};
use crate::stats::Stat;
use crate::{Model, ModelError};

/// Golden rows written unless told otherwise.
pub const DEFAULT_GOLDEN: usize = 24;
/// Single-row runs timed for the latency.
pub const LATENCY_RUNS: usize = 200;
/// Largest |model − golden| the written manifest accepts.
pub const GOLDEN_TOLERANCE: f64 = 1e-4;
/// Runs before timing starts.
const WARMUP_RUNS: usize = 8;

/// How the model's output maps to classes and actions.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputChoice {
    /// One value per class; the class is the argmax.
    Classification {
        /// Class names, in output order.
        classes: Vec<String>,
        /// One action per class.
        actions: Vec<Action>,
        /// Logits or probabilities.
        values: ClassValues,
    },
    /// One score per row, mapped to `classes` by increasing `thresholds` (one fewer than
    /// classes: scores below `thresholds[i]` and not below earlier bounds are
    /// `classes[i]`, the rest the last class).
    Score {
        /// Increasing bounds.
        thresholds: Vec<f64>,
        /// Class names, one more than bounds.
        classes: Vec<String>,
        /// One action per class.
        actions: Vec<Action>,
    },
}

/// The quantization of an integer input: `q = clamp(round_half_even(x / scale) +
/// zero_point)`, written as the manifest's last `quantize` step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputQuantization {
    /// Positive step size.
    pub scale: f64,
    /// The integer that stands for 0, in the input dtype's range.
    pub zero_point: i32,
}

/// What to import and where to write it.
#[derive(Debug, Clone)]
pub struct ImportSpec {
    /// The ONNX file.
    pub onnx: PathBuf,
    /// Sample inputs in physical units, one row per input: `.npy` float32 (or float64)
    /// `[rows, …]`, `.csv`, or a journal export `.jsonl` ([`crate::samples`]).
    pub samples: PathBuf,
    /// The manifest to write; the ONNX file is copied beside it if it is elsewhere.
    pub out: PathBuf,
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: String,
    /// The output's meaning.
    pub output: OutputChoice,
    /// Channel names of the monitoring window statistics (a row is split channel-major
    /// into equal parts); `None`: one channel named `input`, the whole row.
    pub channels: Option<Vec<String>>,
    /// Statistics of each channel.
    pub stats: Vec<Stat>,
    /// Golden rows to write (at most the sample rows).
    pub golden: usize,
    /// The quantization of an integer input (required for one, refused for float32).
    pub quantization: Option<InputQuantization>,
    /// Write a `per_channel_standardize` step with the samples' per-channel mean and
    /// std, over the `channels` split (rank-3 `[N, C, S]` inputs only, one channel name
    /// per `C`).
    pub standardize_channels: bool,
}

/// What an import wrote and measured.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The manifest written.
    pub manifest: PathBuf,
    /// Sample rows run.
    pub rows: usize,
    /// Journal records left out of the samples (other lengths, undecodable).
    pub skipped: Skipped,
    /// The preprocessing steps written.
    pub preprocessing: Vec<Step>,
    /// Monitoring feature names.
    pub features: Vec<String>,
    /// Rows per class, as fractions.
    pub predicted_class_fraction: Vec<f64>,
    /// tract's single-row latency.
    pub latency: Latency,
    /// The golden check of the manifest loaded back.
    pub golden: GoldenReport,
}

/// Why an import failed. Nothing is left written when it does.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// tract cannot load or type the model: tract's own error text.
    #[error("tract cannot load {path}: {message}")]
    Tract {
        /// The ONNX file.
        path: PathBuf,
        /// tract's error chain.
        message: String,
    },
    /// The graph is not one this import handles (input dtype, batch, output type).
    #[error("model {path} is not importable: {reason}")]
    Unsupported {
        /// The ONNX file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The samples do not fit the model's input.
    #[error("samples {path} do not fit the model: {reason}")]
    Samples {
        /// The samples file.
        path: PathBuf,
        /// What does not fit, naming both sizes.
        reason: String,
    },
    /// The options contradict each other or the model.
    #[error("bad option: {0}")]
    Options(String),
    /// Reading or writing a file failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The manifest written does not load back or fails its golden check; it was removed.
    #[error("the written manifest {path} does not check out and was removed: {source}")]
    Validation {
        /// The manifest.
        path: PathBuf,
        /// What `Model::load` or the golden check said.
        #[source]
        source: ModelError,
    },
}

impl ImportError {
    /// The process exit code: 65 (`EX_DATAERR`) for a model or samples that cannot be
    /// imported, 64 (`EX_USAGE`) for contradictory options, 74 (`EX_IOERR`) for a file
    /// that cannot be read or written, 70 (`EX_SOFTWARE`) for a manifest that does not
    /// check out.
    pub fn exit_code(&self) -> u8 {
        match self {
            ImportError::Tract { .. }
            | ImportError::Unsupported { .. }
            | ImportError::Samples { .. } => 65,
            ImportError::Options(_) => 64,
            ImportError::Model(ModelError::Io { .. }) => 74,
            ImportError::Model(_) => 65,
            ImportError::Validation { .. } => 70,
        }
    }
}

/// The graph's input and output as tract reads them, and a plan for one row.
struct Graph {
    input_name: String,
    dtype: Dtype,
    input_shape: Vec<Dim>,
    /// Input shape without the batch.
    dims: Vec<usize>,
    output_name: String,
    /// Output values per row, from the graph's output shape without the batch.
    out_dims: Vec<usize>,
    plan: Arc<TypedRunnableModel>,
}

fn load_graph(path: &Path, bytes: &[u8]) -> Result<Graph, ImportError> {
    let tract = |e: TractError| ImportError::Tract {
        path: path.to_owned(),
        message: format!("{e:#}"),
    };
    let unsupported = |reason: String| ImportError::Unsupported {
        path: path.to_owned(),
        reason,
    };
    let inference = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .map_err(tract)?;
    let typed = inference.clone().into_typed().map_err(tract)?;
    if typed.inputs.len() != 1 {
        return Err(unsupported(format!(
            "it has {} inputs; format 2 describes one",
            typed.inputs.len()
        )));
    }
    let input_fact = typed.input_fact(0).map_err(tract)?;
    let datum = input_fact.datum_type;
    let dtype = Dtype::ALL
        .into_iter()
        .find(|&d| datum_of(d) == datum)
        .ok_or_else(|| {
            unsupported(format!(
                "input dtype {datum:?}: only float32, int8, uint8 and int16 inputs are imported"
            ))
        })?;
    let input_shape: Vec<Dim> = input_fact
        .shape
        .iter()
        .map(|d| match d.to_i64() {
            Ok(n) => Dim::Fixed(n as usize),
            Err(_) => Dim::Symbol(d.to_string()),
        })
        .collect();
    let dims = input_shape
        .iter()
        .skip(1)
        .map(|d| match d {
            Dim::Fixed(n) => Ok(*n),
            Dim::Symbol(s) => Err(unsupported(format!(
                "input shape {input_shape:?}: only the batch dimension may be symbolic, not {s}"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    match input_shape.first() {
        Some(Dim::Fixed(1) | Dim::Symbol(_)) => {}
        other => {
            return Err(unsupported(format!(
                "input shape {input_shape:?}: the batch dimension {other:?} must be 1 or symbolic"
            )))
        }
    }
    let input_name = typed.node(typed.inputs[0].node).name.clone();
    let outlet = typed.outputs[0];
    let output_name = typed
        .outlet_label(outlet)
        .map(str::to_owned)
        .unwrap_or_else(|| typed.node(outlet.node).name.clone());
    let out_fact = typed.outlet_fact(outlet).map_err(tract)?;
    if out_fact.datum_type != f32::datum_type() {
        return Err(unsupported(format!(
            "output {output_name} has dtype {:?}: only float32 outputs are imported",
            out_fact.datum_type
        )));
    }
    let out_dims = out_fact
        .shape
        .iter()
        .skip(1)
        .map(|d| d.to_i64().map(|n| n as usize))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            unsupported(format!(
                "output {output_name} shape {:?}: only the batch dimension may be symbolic",
                out_fact.shape
            ))
        })?;
    let one: Vec<usize> = std::iter::once(1).chain(dims.iter().copied()).collect();
    let plan = inference
        .with_input_fact(0, TypedFact::dt_shape(datum, one.as_slice()).into())
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(tract)?;
    Ok(Graph {
        input_name,
        dtype,
        input_shape,
        dims,
        output_name,
        out_dims,
        plan,
    })
}

/// The tract element type of a manifest dtype.
fn datum_of(dtype: Dtype) -> DatumType {
    match dtype {
        Dtype::Float32 => f32::datum_type(),
        Dtype::Int8 => i8::datum_type(),
        Dtype::Uint8 => u8::datum_type(),
        Dtype::Int16 => i16::datum_type(),
    }
}

/// One row preprocessed as [`Model`] does it, as a tensor of the input's dtype (integer
/// dtypes through the quantize step).
fn input_tensor(graph: &Graph, pre: &Preprocess, row: &[f32]) -> TractResult<Tensor> {
    let shape: Vec<usize> = std::iter::once(1)
        .chain(graph.dims.iter().copied())
        .collect();
    let mut x = row.to_vec();
    pre.apply(&mut x);
    match (graph.dtype, pre.quantize()) {
        (Dtype::Int8, Some(q)) => {
            let v: Vec<i8> = x.iter().map(|&x| q.apply(x) as i8).collect();
            Tensor::from_shape(&shape, &v)
        }
        (Dtype::Uint8, Some(q)) => {
            let v: Vec<u8> = x.iter().map(|&x| q.apply(x) as u8).collect();
            Tensor::from_shape(&shape, &v)
        }
        (Dtype::Int16, Some(q)) => {
            let v: Vec<i16> = x.iter().map(|&x| q.apply(x) as i16).collect();
            Tensor::from_shape(&shape, &v)
        }
        _ => Tensor::from_shape(&shape, &x),
    }
}

fn run_row(
    graph: &Graph,
    pre: &Preprocess,
    path: &Path,
    row: &[f32],
) -> Result<Vec<f32>, ImportError> {
    let tract = |e: TractError| ImportError::Tract {
        path: path.to_owned(),
        message: format!("{e:#}"),
    };
    let input = input_tensor(graph, pre, row).map_err(tract)?;
    let out = graph.plan.run(tvec!(input.into_tvalue())).map_err(tract)?;
    let view = out[0].to_plain_array_view::<f32>().map_err(tract)?;
    Ok(view.iter().copied().collect())
}

/// The samples of `spec`, as errors of the import.
fn read_samples(path: &Path, dims: &[usize]) -> Result<Samples, ImportError> {
    samples::read(path, dims).map_err(|e| match e {
        SamplesError::Read(e) => ImportError::Model(e),
        SamplesError::UnknownFormat { .. } => ImportError::Options(e.to_string()),
        e => ImportError::Samples {
            path: path.to_owned(),
            reason: e.to_string(),
        },
    })
}

/// The quantize step of an integer input from `--input-scale`/`--input-zero-point`:
/// required for one, refused for float32, checked against the dtype's range.
fn quantize_step(spec: &ImportSpec, graph: &Graph) -> Result<Option<Step>, ImportError> {
    match (graph.dtype.int_range(), spec.quantization) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(ImportError::Options(format!(
            "--input-scale/--input-zero-point quantize an integer input; the input {} of {} \
             is float32",
            graph.input_name,
            spec.onnx.display()
        ))),
        (Some(_), None) => Err(ImportError::Unsupported {
            path: spec.onnx.clone(),
            reason: format!(
                "input {} is {}: give the quantization its values were made with, \
                 --input-scale S --input-zero-point Z (q = round(x / S) + Z)",
                graph.input_name,
                graph.dtype.name()
            ),
        }),
        (Some((lo, hi)), Some(q)) => {
            if !(q.scale.is_finite() && q.scale > 0.0) {
                return Err(ImportError::Options(format!(
                    "--input-scale {}: must be finite and positive",
                    q.scale
                )));
            }
            if !(lo..=hi).contains(&q.zero_point) {
                return Err(ImportError::Options(format!(
                    "--input-zero-point {}: must lie in {lo}..={hi} for the {} input",
                    q.zero_point,
                    graph.dtype.name()
                )));
            }
            Ok(Some(Step::Quantize {
                scale: q.scale,
                zero_point: q.zero_point,
            }))
        }
    }
}

/// The `per_channel_standardize` step over the samples' channels (rank-3 inputs only).
fn standardize_step(
    spec: &ImportSpec,
    graph: &Graph,
    channels: &[String],
    values: &[f32],
) -> Result<Step, ImportError> {
    let &[c, _] = graph.dims.as_slice() else {
        return Err(ImportError::Options(format!(
            "--standardize-channels needs a rank-3 input [N, C, S] whose axis 1 holds the \
             channels; input {} has shape {:?} (rank {}), whose channel axis is ambiguous",
            graph.input_name,
            graph.input_shape,
            graph.input_shape.len()
        )));
    };
    if channels.len() != c {
        return Err(ImportError::Options(format!(
            "--standardize-channels standardizes the {c} channels on axis 1 of input {} \
             {:?}; --channels names {} ({channels:?}): give one name per channel",
            graph.input_name,
            graph.input_shape,
            channels.len()
        )));
    }
    let row_len: usize = graph.dims.iter().product();
    let stats = samples::channel_mean_std(values, row_len, c);
    if let Some((name, _)) = channels
        .iter()
        .zip(&stats)
        .find(|(_, (_, std))| !(std.is_finite() && *std > 0.0))
    {
        return Err(ImportError::Samples {
            path: spec.samples.clone(),
            reason: format!(
                "channel {name} is constant over the samples (std 0): it cannot be \
                 standardized"
            ),
        });
    }
    Ok(Step::PerChannelStandardize {
        axis: 1,
        mean: stats.iter().map(|s| s.0).collect(),
        std: stats.iter().map(|s| s.1).collect(),
    })
}

/// Imports the model `spec` describes: writes the manifest, the golden vectors and (when
/// the ONNX file is elsewhere) a copy of the model, then checks them by loading them back.
pub fn import(spec: &ImportSpec) -> Result<ImportReport, ImportError> {
    let (classes, actions) = match &spec.output {
        OutputChoice::Classification {
            classes, actions, ..
        }
        | OutputChoice::Score {
            classes, actions, ..
        } => (classes, actions),
    };
    if actions.len() != classes.len() {
        return Err(ImportError::Options(format!(
            "{} actions {actions:?} for {} classes {classes:?}: give one per class",
            actions.len(),
            classes.len()
        )));
    }
    if let OutputChoice::Score { thresholds, .. } = &spec.output {
        if thresholds.len() + 1 != classes.len() {
            return Err(ImportError::Options(format!(
                "{} score thresholds {thresholds:?} for {} classes {classes:?}: give one \
                 class more than thresholds",
                thresholds.len(),
                classes.len()
            )));
        }
    }
    if spec.name.is_empty() || spec.name.contains(['/', '\\']) {
        return Err(ImportError::Options(format!(
            "name {:?} must be non-empty and free of path separators (it names files)",
            spec.name
        )));
    }

    let bytes = std::fs::read(&spec.onnx).map_err(|source| ModelError::Io {
        path: spec.onnx.clone(),
        source,
    })?;
    let graph = load_graph(&spec.onnx, &bytes)?;
    let row_len: usize = graph.dims.iter().product();
    let out_len: usize = graph.out_dims.iter().product();
    let expected_out = match &spec.output {
        OutputChoice::Classification { .. } => classes.len(),
        OutputChoice::Score { .. } => 1,
    };
    if out_len != expected_out {
        return Err(ImportError::Options(format!(
            "output {} holds {out_len} values per row (shape {:?} without the batch); {}",
            graph.output_name,
            graph.out_dims,
            match &spec.output {
                OutputChoice::Classification { .. } =>
                    format!("{} classes {classes:?} need one value each", classes.len()),
                OutputChoice::Score { .. } => "a score is one value".to_owned(),
            }
        )));
    }
    let quantize = quantize_step(spec, &graph)?;
    let Samples {
        rows,
        values,
        skipped,
    } = read_samples(&spec.samples, &graph.dims)?;

    let channels = spec
        .channels
        .clone()
        .unwrap_or_else(|| vec!["input".to_owned()]);
    if channels.is_empty() || !row_len.is_multiple_of(channels.len()) {
        return Err(ImportError::Options(format!(
            "{} channels {channels:?} do not split a row of {row_len} values into equal parts",
            channels.len()
        )));
    }
    let window_stats = crate::stats::WindowStats {
        stats: spec.stats.clone(),
        channels: channels.clone(),
        scalars: Vec::new(),
    };
    let samples_per_channel = row_len / channels.len();
    let mut preprocessing = Vec::new();
    if spec.standardize_channels {
        preprocessing.push(standardize_step(spec, &graph, &channels, &values)?);
    }
    preprocessing.extend(quantize);
    let pre =
        Preprocess::new(&preprocessing, &graph.dims, graph.dtype).map_err(ImportError::Options)?;

    // Every sample through tract, and the monitoring features of each.
    let mut outputs = Vec::with_capacity(rows * out_len);
    let mut features = vec![Vec::with_capacity(rows); window_stats.len()];
    let mut row_features = Vec::new();
    let mut predicted = Vec::with_capacity(rows);
    let score_thresholds = thresholds(spec);
    for row in values.chunks_exact(row_len) {
        let out = run_row(&graph, &pre, &spec.onnx, row)?;
        if out.len() != out_len {
            return Err(ImportError::Unsupported {
                path: spec.onnx.clone(),
                reason: format!(
                    "output has {} values for one row, expected {out_len}",
                    out.len()
                ),
            });
        }
        predicted.push(match &spec.output {
            OutputChoice::Classification { .. } => argmax(&out),
            OutputChoice::Score { .. } => class_of_score(&score_thresholds, classes, out[0]),
        });
        outputs.extend_from_slice(&out);
        window_stats
            .compute(row, samples_per_channel, &[], &mut row_features)
            .map_err(|e| ImportError::Options(e.to_string()))?;
        for (column, v) in features.iter_mut().zip(&row_features) {
            column.push(*v);
        }
    }

    // Latency of single-row runs, cycling through the samples.
    for row in values.chunks_exact(row_len).cycle().take(WARMUP_RUNS) {
        run_row(&graph, &pre, &spec.onnx, row)?;
    }
    let mut times = Vec::with_capacity(LATENCY_RUNS);
    for row in values.chunks_exact(row_len).cycle().take(LATENCY_RUNS) {
        let start = Instant::now();
        run_row(&graph, &pre, &spec.onnx, row)?;
        times.push(start.elapsed().as_nanos() as u64);
    }
    let latency = reference::latency(
        &times,
        "tract (reflex-model import), one row per run, input tensor built per run",
    );

    let names = window_stats.names();
    let fractions = reference::class_fractions(&predicted, classes.len());
    let profiles = names
        .iter()
        .zip(&features)
        .map(|(name, v)| reference::feature_profile(name, v))
        .collect();

    let dir = spec
        .out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let onnx_name = spec
        .onnx
        .file_name()
        .ok_or_else(|| ImportError::Options(format!("{} names no file", spec.onnx.display())))?
        .to_string_lossy()
        .into_owned();
    let golden_rows = spec.golden.min(rows);
    if golden_rows == 0 {
        return Err(ImportError::Options(
            "--golden 0: at least one golden row is needed to check the import".to_owned(),
        ));
    }
    let golden_inputs = format!("{}_golden_inputs.npy", spec.name);
    let golden_outputs = format!("{}_golden_outputs.npy", spec.name);
    let samples_name = spec
        .samples
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let of_samples = if skipped.total() == 0 {
        format!("{rows} sample rows of {samples_name}")
    } else {
        format!("{rows} sample rows of {samples_name} (records left out: {skipped})")
    };

    let manifest = ManifestV2 {
        format: 2,
        name: spec.name.clone(),
        version: spec.version.clone(),
        kind: ModelKind::Onnx,
        description: format!("imported by reflex-model from {onnx_name} with {of_samples}"),
        file: onnx_name.clone(),
        sha256: sha256_hex(&bytes),
        input: InputSpec {
            name: graph.input_name.clone(),
            shape: graph.input_shape.clone(),
            dtype: graph.dtype.name().to_owned(),
            layout: format!(
                "channel-major: channels {channels:?}, {samples_per_channel} values each"
            ),
        },
        preprocessing: preprocessing.clone(),
        output: match &spec.output {
            OutputChoice::Classification { values, .. } => OutputSpec2::Classification {
                name: graph.output_name.clone(),
                values: *values,
            },
            OutputChoice::Score { .. } => OutputSpec2::Score {
                name: graph.output_name.clone(),
                thresholds: score_thresholds,
            },
        },
        classes: classes.clone(),
        actions: classes
            .iter()
            .cloned()
            .zip(actions.iter().copied())
            .collect::<BTreeMap<_, _>>(),
        monitoring: Monitoring {
            window_stats: Some(WindowStats {
                stats: spec.stats.clone(),
                channels: channels.clone(),
            }),
            scalars: Vec::new(),
        },
        metrics: Metrics2 {
            ort_latency: Some(latency.clone()),
            ..Metrics2::default()
        },
        dataset: Default::default(),
        reference: ReferenceProfile {
            source: format!("{of_samples}, run by tract at import"),
            features: profiles,
            predicted_class_fraction: fractions.clone(),
        },
        golden: Some(Golden2 {
            inputs: golden_inputs.clone(),
            outputs: golden_outputs.clone(),
            max_abs_diff: GOLDEN_TOLERANCE,
        }),
    };
    manifest.validate().map_err(ImportError::Options)?;

    // Write, then check what was written; on any failure remove it all.
    let mut written = Written::default();
    let result = (|| -> Result<GoldenReport, ImportError> {
        let onnx_copy = dir.join(&onnx_name);
        let same = std::fs::canonicalize(&onnx_copy)
            .ok()
            .zip(std::fs::canonicalize(&spec.onnx).ok())
            .is_some_and(|(a, b)| a == b);
        if !same {
            written.push(&onnx_copy);
            std::fs::write(&onnx_copy, &bytes).map_err(|source| ModelError::Io {
                path: onnx_copy.clone(),
                source,
            })?;
        }
        let input_shape: Vec<usize> = std::iter::once(golden_rows)
            .chain(graph.dims.iter().copied())
            .collect();
        let output_shape: Vec<usize> = std::iter::once(golden_rows)
            .chain(graph.out_dims.iter().copied())
            .collect();
        written.push(&dir.join(&golden_inputs));
        npy::write_f32(
            dir.join(&golden_inputs),
            &input_shape,
            &values[..golden_rows * row_len],
        )?;
        written.push(&dir.join(&golden_outputs));
        npy::write_f32(
            dir.join(&golden_outputs),
            &output_shape,
            &outputs[..golden_rows * out_len],
        )?;
        let json = serde_json::to_string_pretty(&manifest)
            .map_err(|e| ImportError::Options(format!("cannot serialise the manifest: {e}")))?;
        written.push(&spec.out);
        std::fs::write(&spec.out, json + "\n").map_err(|source| ModelError::Io {
            path: spec.out.clone(),
            source,
        })?;
        let validation = |source| ImportError::Validation {
            path: spec.out.clone(),
            source,
        };
        let mut model = Model::load(&spec.out).map_err(validation)?;
        golden::check(&mut model)
            .map_err(validation)?
            .ok_or_else(|| ImportError::Options("the manifest has no golden section".into()))
    })();
    let golden = result?;
    written.keep();
    Ok(ImportReport {
        manifest: spec.out.clone(),
        rows,
        skipped,
        preprocessing,
        features: names,
        predicted_class_fraction: fractions,
        latency,
        golden,
    })
}

fn thresholds(spec: &ImportSpec) -> Vec<Threshold> {
    let OutputChoice::Score {
        thresholds,
        classes,
        ..
    } = &spec.output
    else {
        return Vec::new();
    };
    classes
        .iter()
        .enumerate()
        .map(|(i, class)| Threshold {
            below: thresholds.get(i).copied(),
            class: class.clone(),
        })
        .collect()
}

/// Files written so far, removed on drop unless kept.
#[derive(Default)]
struct Written(Vec<PathBuf>);

impl Written {
    fn push(&mut self, path: &Path) {
        self.0.push(path.to_owned());
    }

    fn keep(&mut self) {
        self.0.clear();
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}
