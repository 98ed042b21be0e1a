//! Golden-vector check: a model about to serve must reproduce, within its manifest's
//! tolerance, the logits onnxruntime computed for the golden windows when the model was
//! made. Catches a model file that loads and matches its checksum but is not the model
//! the manifest describes, and a tract or CPU that computes it differently.
//!
//! Format 1 ([`GoldenSet`]): int16 window counts, temperatures and logits. Format 2
//! ([`GoldenValues`]): float32 input values and the reference runtime's outputs.

use std::path::Path;

use crate::manifest::format2::Golden2;
use crate::manifest::GoldenSpec;
use crate::model::{argmax, Prediction};
use crate::npy::Npy;
use crate::{Model, ModelError, WINDOW_LEN};

/// What a golden check measured.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenReport {
    /// Golden windows run.
    pub examples: usize,
    /// Largest |model − golden| over all logits.
    pub max_abs_diff: f64,
    /// Windows where the model's class equals the golden argmax.
    pub argmax_agree: usize,
    /// The manifest's tolerance.
    pub tolerance: f64,
}

/// The golden set of a manifest, loaded.
#[derive(Debug, Clone)]
pub struct GoldenSet {
    /// Windows in g, `n × 192`, channel-major.
    pub windows: Vec<f32>,
    /// Temperatures in °C, `n`.
    pub temperature: Vec<f32>,
    /// onnxruntime's logits, `n × classes`.
    pub logits: Vec<f32>,
    /// Classes per logit row.
    pub classes: usize,
    /// Accepted |model − golden|.
    pub tolerance: f64,
}

impl GoldenSet {
    /// Loads the set `spec` names, paths resolved against `manifest_path`'s directory.
    pub fn load(
        spec: &GoldenSpec,
        manifest_path: &Path,
        classes: usize,
    ) -> Result<GoldenSet, ModelError> {
        let dir = manifest_path.parent().unwrap_or(Path::new("."));
        let invalid = |reason: String| ModelError::ManifestInvalid {
            path: manifest_path.to_owned(),
            reason,
        };
        let scale = spec.scale as f32;
        let windows: Vec<f32> = Npy::read(dir.join(&spec.windows))?
            .i16s()?
            .into_iter()
            .map(|c| f32::from(c) * scale)
            .collect();
        let temperature = Npy::read(dir.join(&spec.temperature))?.f32s()?;
        let logits = Npy::read(dir.join(&spec.logits))?.f32s()?;
        let n = temperature.len();
        if n == 0 || windows.len() != n * WINDOW_LEN || logits.len() != n * classes {
            return Err(invalid(format!(
                "golden set sizes disagree: {} window values, {n} temperatures, {} logits \
                 for {classes} classes",
                windows.len(),
                logits.len()
            )));
        }
        if !(spec.max_abs_diff.is_finite() && spec.max_abs_diff >= 0.0) {
            return Err(invalid(format!(
                "golden max_abs_diff {} is not a finite non-negative number",
                spec.max_abs_diff
            )));
        }
        Ok(GoldenSet {
            windows,
            temperature,
            logits,
            classes,
            tolerance: spec.max_abs_diff,
        })
    }

    /// Number of golden windows.
    pub fn len(&self) -> usize {
        self.temperature.len()
    }

    /// True when the set is empty (never, for a loaded set).
    pub fn is_empty(&self) -> bool {
        self.temperature.is_empty()
    }

    /// Window `i` in g.
    pub fn window(&self, i: usize) -> &[f32; WINDOW_LEN] {
        self.windows[i * WINDOW_LEN..(i + 1) * WINDOW_LEN]
            .try_into()
            .expect("length checked at load")
    }

    /// Runs every golden window through `model`; an error if any logit is off by more
    /// than the tolerance (the first such window is named).
    pub fn check(&self, model: &mut Model) -> Result<GoldenReport, ModelError> {
        compare(model, self.len(), self.tolerance, |model, i| {
            let p = model.predict(self.window(i), self.temperature[i])?;
            let expected = &self.logits[i * self.classes..(i + 1) * self.classes];
            let agree = p.class == argmax(expected);
            Ok((p, expected, agree))
        })
    }
}

/// Runs golden example `0..n` through `model` with `run` (the prediction, the expected
/// outputs, whether the classes agree) and compares them within `tolerance`.
fn compare<'a>(
    model: &mut Model,
    n: usize,
    tolerance: f64,
    mut run: impl FnMut(&mut Model, usize) -> Result<(Prediction, &'a [f32], bool), ModelError>,
) -> Result<GoldenReport, ModelError> {
    let mut report = GoldenReport {
        examples: n,
        max_abs_diff: 0.0,
        argmax_agree: 0,
        tolerance,
    };
    let mut first_bad = None;
    for i in 0..n {
        let (p, expected, agree) = run(model, i)?;
        let diff = p
            .logits
            .iter()
            .zip(expected)
            .map(|(a, b)| f64::from((a - b).abs()))
            .fold(0.0f64, f64::max);
        // NaN outputs count as a mismatch.
        let within = diff <= tolerance;
        if !within && first_bad.is_none() {
            first_bad = Some((i, diff));
        }
        if diff.is_nan() {
            report.max_abs_diff = f64::NAN;
        } else if !report.max_abs_diff.is_nan() {
            report.max_abs_diff = report.max_abs_diff.max(diff);
        }
        if agree {
            report.argmax_agree += 1;
        }
    }
    match first_bad {
        None => Ok(report),
        Some((index, diff)) => Err(ModelError::GoldenMismatch {
            model: format!("{} {}", model.name(), model.version()),
            index,
            diff,
            tolerance,
            examples: report.examples,
        }),
    }
}

/// The golden set of a format-2 manifest, loaded.
#[derive(Debug, Clone)]
pub struct GoldenValues {
    /// Input values before preprocessing, `n × input_len`.
    pub inputs: Vec<f32>,
    /// The reference runtime's outputs, `n × outputs` (outputs = classes, or 1 for a
    /// score).
    pub outputs: Vec<f32>,
    /// Values per input.
    pub input_len: usize,
    /// Outputs per input.
    pub output_len: usize,
    /// Accepted |model − golden|.
    pub tolerance: f64,
}

impl GoldenValues {
    /// Loads the set `spec` names for inputs of shape `dims` (no batch dimension) and
    /// `output_len` outputs each, paths resolved against `manifest_path`'s directory.
    pub fn load(
        spec: &Golden2,
        manifest_path: &Path,
        dims: &[usize],
        output_len: usize,
    ) -> Result<GoldenValues, ModelError> {
        let dir = manifest_path.parent().unwrap_or(Path::new("."));
        let inputs = Npy::read(dir.join(&spec.inputs))?;
        let outputs = Npy::read(dir.join(&spec.outputs))?;
        let n = inputs.shape.first().copied().unwrap_or(0);
        let output_shapes = [vec![n, output_len], vec![n]];
        let output_ok = outputs.shape == output_shapes[0]
            || (output_len == 1 && outputs.shape == output_shapes[1]);
        if n == 0 || inputs.shape[1..] != *dims || !output_ok {
            return Err(ModelError::ManifestInvalid {
                path: manifest_path.to_owned(),
                reason: format!(
                    "golden.inputs has shape {:?} and golden.outputs {:?}; expected [n, {}] \
                     with n > 0 and [n, {output_len}]",
                    inputs.shape,
                    outputs.shape,
                    dims.iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        Ok(GoldenValues {
            inputs: inputs.f32s()?,
            outputs: outputs.f32s()?,
            input_len: dims.iter().product(),
            output_len,
            tolerance: spec.max_abs_diff,
        })
    }

    /// Number of golden inputs.
    pub fn len(&self) -> usize {
        self.outputs.len() / self.output_len.max(1)
    }

    /// True when the set is empty (never, for a loaded set).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Input `i`, flat.
    pub fn input(&self, i: usize) -> &[f32] {
        &self.inputs[i * self.input_len..(i + 1) * self.input_len]
    }

    /// Expected outputs of input `i`.
    pub fn output(&self, i: usize) -> &[f32] {
        &self.outputs[i * self.output_len..(i + 1) * self.output_len]
    }

    /// Runs every golden input through `model`; an error if any output is off by more
    /// than the tolerance (the first such input is named). `argmax_agree` counts inputs
    /// whose class (argmax, or the score's threshold range) equals the golden one's.
    pub fn check(&self, model: &mut Model) -> Result<GoldenReport, ModelError> {
        compare(model, self.len(), self.tolerance, |model, i| {
            let p = model.predict_values(self.input(i))?;
            let expected = self.output(i);
            let agree = p.class == model.prediction_from_outputs(expected).class;
            Ok((p, expected, agree))
        })
    }
}

/// Checks `model` against the golden set its manifest names (either format). `Ok(None)`
/// when the manifest has no golden section.
pub fn check(model: &mut Model) -> Result<Option<GoldenReport>, ModelError> {
    if let Some(spec) = model.manifest().golden.clone() {
        let set = GoldenSet::load(&spec, model.manifest_path(), model.classes().len())?;
        return set.check(model).map(Some);
    }
    let Some(spec) = model
        .manifest()
        .format2
        .as_ref()
        .and_then(|f| f.golden.clone())
    else {
        return Ok(None);
    };
    let set = GoldenValues::load(
        &spec,
        model.manifest_path(),
        model.input_dims(),
        model.output_len(),
    )?;
    set.check(model).map(Some)
}
