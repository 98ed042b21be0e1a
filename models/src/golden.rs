//! Golden-vector check: a model about to serve must reproduce, within its manifest's
//! tolerance, the logits onnxruntime computed for the golden windows when the model was
//! made. Catches a model file that loads and matches its checksum but is not the model
//! the manifest describes, and a tract or CPU that computes it differently.

use std::path::Path;

use crate::manifest::GoldenSpec;
use crate::model::argmax;
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
        let mut report = GoldenReport {
            examples: self.len(),
            max_abs_diff: 0.0,
            argmax_agree: 0,
            tolerance: self.tolerance,
        };
        let mut first_bad = None;
        for i in 0..self.len() {
            let p = model.predict(self.window(i), self.temperature[i])?;
            let expected = &self.logits[i * self.classes..(i + 1) * self.classes];
            let diff = p
                .logits
                .iter()
                .zip(expected)
                .map(|(a, b)| f64::from((a - b).abs()))
                .fold(0.0f64, f64::max);
            // NaN logits count as a mismatch.
            let within = diff <= self.tolerance;
            if !within && first_bad.is_none() {
                first_bad = Some((i, diff));
            }
            if diff.is_nan() {
                report.max_abs_diff = f64::NAN;
            } else if !report.max_abs_diff.is_nan() {
                report.max_abs_diff = report.max_abs_diff.max(diff);
            }
            if p.class == argmax(expected) {
                report.argmax_agree += 1;
            }
        }
        match first_bad {
            None => Ok(report),
            Some((index, diff)) => Err(ModelError::GoldenMismatch {
                model: format!("{} {}", model.name(), model.version()),
                index,
                diff,
                tolerance: self.tolerance,
                examples: report.examples,
            }),
        }
    }
}

/// Checks `model` against the golden set its manifest names. `Ok(None)` when the manifest
/// has no golden section.
pub fn check(model: &mut Model) -> Result<Option<GoldenReport>, ModelError> {
    let Some(spec) = model.manifest().golden.clone() else {
        return Ok(None);
    };
    let set = GoldenSet::load(&spec, model.manifest_path(), model.classes().len())?;
    set.check(model).map(Some)
}
