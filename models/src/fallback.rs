//! [`Fallback`]: the linear model that answers when the neural model cannot in time.
//!
//! Multinomial logistic regression on the 13 cheap features ([`crate::features`]); its
//! weights live in `fallback.manifest.json`. One prediction is ~60 multiply-adds.

use std::path::Path;

use reflex_wire::Action;

use crate::features::{Features, FEATURE_COUNT};
use crate::manifest::{Manifest, ModelKind};
use crate::{ModelError, WINDOW_LEN};

/// The linear fallback model.
#[derive(Debug, Clone)]
pub struct Fallback {
    manifest: Manifest,
    weights: Vec<[f64; FEATURE_COUNT]>,
    bias: Vec<f64>,
    mean: [f64; FEATURE_COUNT],
    std: [f64; FEATURE_COUNT],
    actions: Vec<Action>,
}

impl Fallback {
    /// Loads `fallback.manifest.json` (kind `linear`).
    pub fn load(manifest_path: impl AsRef<Path>) -> Result<Fallback, ModelError> {
        let path = manifest_path.as_ref();
        let manifest = Manifest::load(path)?;
        Fallback::from_manifest(manifest, path)
    }

    /// Builds the model from an already parsed manifest; `path` is for error messages.
    pub fn from_manifest(
        manifest: Manifest,
        path: impl AsRef<Path>,
    ) -> Result<Fallback, ModelError> {
        let invalid = |reason: &str| ModelError::ManifestInvalid {
            path: path.as_ref().to_owned(),
            reason: reason.to_owned(),
        };
        if manifest.kind != ModelKind::Linear {
            return Err(invalid("the fallback needs a manifest of kind linear"));
        }
        let lin = manifest
            .linear
            .as_ref()
            .ok_or_else(|| invalid("linear model without weights"))?;
        let to_array = |v: &[f64]| -> Result<[f64; FEATURE_COUNT], ModelError> {
            v.try_into()
                .map_err(|_| invalid("linear model needs 13 values per feature vector"))
        };
        let weights = lin
            .weights
            .iter()
            .map(|row| to_array(row))
            .collect::<Result<Vec<_>, _>>()?;
        let bias = lin.bias.clone();
        let mean = to_array(&lin.feature_mean)?;
        let std = to_array(&lin.feature_std)?;
        let actions = manifest.actions_by_class();
        Ok(Fallback {
            manifest,
            weights,
            bias,
            mean,
            std,
            actions,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn standardize(&self, features: &Features) -> Features {
        let mut z = [0.0; FEATURE_COUNT];
        for j in 0..FEATURE_COUNT {
            z[j] = (features[j] - self.mean[j]) / self.std[j];
        }
        z
    }

    /// Logits for a feature vector, one per class:
    /// `bias[k] + Σ_j weights[k][j] · (f[j] − feature_mean[j]) / feature_std[j]`.
    pub fn logits(&self, features: &Features) -> Vec<f64> {
        let z = self.standardize(features);
        self.weights
            .iter()
            .zip(&self.bias)
            .map(|(w, b)| b + w.iter().zip(&z).map(|(w, z)| w * z).sum::<f64>())
            .collect()
    }

    /// The predicted class index for a feature vector (first maximum on ties).
    pub fn predict(&self, features: &Features) -> usize {
        let z = self.standardize(features);
        let mut best = 0;
        let mut best_score = f64::NEG_INFINITY;
        for (k, (w, b)) in self.weights.iter().zip(&self.bias).enumerate() {
            let s = b + w.iter().zip(&z).map(|(w, z)| w * z).sum::<f64>();
            if s > best_score {
                best = k;
                best_score = s;
            }
        }
        best
    }

    /// Features and prediction in one call, from the window in g and the temperature.
    pub fn predict_window(&self, window_g: &[f32; WINDOW_LEN], temperature_c: f32) -> usize {
        self.predict(&crate::features::compute(window_g, temperature_c))
    }

    /// The action for a class index.
    pub fn action(&self, class: usize) -> Option<Action> {
        self.actions.get(class).copied()
    }
}
