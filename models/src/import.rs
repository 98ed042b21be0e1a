//! `reflex-model import`: writes a format-2 manifest for an ONNX model from the model
//! itself and a file of sample inputs, with no Python. tract reads the input and output
//! from the graph and runs every sample; the outputs become the golden vectors and the
//! reference profile; the manifest written is loaded back with [`Model::load`] and its
//! golden vectors checked before the import counts as done (otherwise what was written is
//! removed). The numbers themselves are computed in [`crate::reference`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use reflex_wire::Action;
use tract_onnx::prelude::*;

use crate::golden::{self, GoldenReport};
use crate::manifest::format2::{
    class_of_score, ClassValues, Golden2, ManifestV2, Metrics2, Monitoring, Threshold, WindowStats,
};
use crate::manifest::{Dim, InputSpec, Latency, ModelKind, OutputSpec2, ReferenceProfile};
use crate::model::{argmax, sha256_hex};
use crate::npy::{self, Npy};
use crate::reference;
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

/// What to import and where to write it.
#[derive(Debug, Clone)]
pub struct ImportSpec {
    /// The ONNX file.
    pub onnx: PathBuf,
    /// `.npy` float32 (or float64) `[rows, …]` sample inputs, one row per input.
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
}

/// What an import wrote and measured.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The manifest written.
    pub manifest: PathBuf,
    /// Sample rows run.
    pub rows: usize,
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
    if input_fact.datum_type != f32::datum_type() {
        return Err(unsupported(format!(
            "input dtype {:?}: only float32 inputs are imported (integer inputs need a \
             quantize step written by hand)",
            input_fact.datum_type
        )));
    }
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
        .with_input_fact(0, f32::fact(&one).into())
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(tract)?;
    Ok(Graph {
        input_name,
        input_shape,
        dims,
        output_name,
        out_dims,
        plan,
    })
}

fn run_row(graph: &Graph, path: &Path, row: &[f32]) -> Result<Vec<f32>, ImportError> {
    let tract = |e: TractError| ImportError::Tract {
        path: path.to_owned(),
        message: format!("{e:#}"),
    };
    let shape: Vec<usize> = std::iter::once(1)
        .chain(graph.dims.iter().copied())
        .collect();
    let input = Tensor::from_shape(&shape, row).map_err(tract)?;
    let out = graph.plan.run(tvec!(input.into_tvalue())).map_err(tract)?;
    let view = out[0].to_plain_array_view::<f32>().map_err(tract)?;
    Ok(view.iter().copied().collect())
}

fn parse_samples(
    path: &Path,
    row_len: usize,
    dims: &[usize],
) -> Result<(usize, Vec<f32>), ImportError> {
    let bad = |reason: String| ImportError::Samples {
        path: path.to_owned(),
        reason,
    };
    let npy = Npy::read(path)?;
    let values = match npy.descr.as_str() {
        "<f8" => npy.f64s()?.into_iter().map(|v| v as f32).collect(),
        _ => npy.f32s()?,
    };
    let rows = npy.shape.first().copied().unwrap_or(0);
    let samples_row: usize = npy.shape.iter().skip(1).product();
    if npy.shape.len() < 2 || rows == 0 {
        return Err(bad(format!(
            "shape {:?}: expected [rows, …] with at least one row of {row_len} values",
            npy.shape
        )));
    }
    if samples_row != row_len {
        return Err(bad(format!(
            "a sample row holds {samples_row} values (shape {:?}), the model's input {dims:?} \
             holds {row_len}",
            npy.shape
        )));
    }
    Ok((rows, values))
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
    let (rows, values) = parse_samples(&spec.samples, row_len, &graph.dims)?;

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

    // Every sample through tract, and the monitoring features of each.
    let mut outputs = Vec::with_capacity(rows * out_len);
    let mut features = vec![Vec::with_capacity(rows); window_stats.len()];
    let mut row_features = Vec::new();
    let mut predicted = Vec::with_capacity(rows);
    let score_thresholds = thresholds(spec);
    for row in values.chunks_exact(row_len) {
        let out = run_row(&graph, &spec.onnx, row)?;
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
        run_row(&graph, &spec.onnx, row)?;
    }
    let mut times = Vec::with_capacity(LATENCY_RUNS);
    for row in values.chunks_exact(row_len).cycle().take(LATENCY_RUNS) {
        let start = Instant::now();
        run_row(&graph, &spec.onnx, row)?;
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

    let manifest = ManifestV2 {
        format: 2,
        name: spec.name.clone(),
        version: spec.version.clone(),
        kind: ModelKind::Onnx,
        description: format!(
            "imported by reflex-model from {onnx_name} with {rows} sample rows of {samples_name}"
        ),
        file: onnx_name.clone(),
        sha256: sha256_hex(&bytes),
        input: InputSpec {
            name: graph.input_name.clone(),
            shape: graph.input_shape.clone(),
            dtype: "float32".to_owned(),
            layout: format!(
                "channel-major: channels {channels:?}, {samples_per_channel} values each"
            ),
        },
        preprocessing: Vec::new(),
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
            source: format!("{rows} sample rows of {samples_name}, run by tract at import"),
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
