//! A model manifest's reference profile as reflex-drift's [`Reference`], by feature name.

use reflex_drift::{DriftError, FeatureReference, QuantileProfile, Reference};
use reflex_models::Manifest;

use super::MonitorError;

/// The drift reference of a model: its manifest's `reference` (per-feature quantile
/// profiles and predicted-class fractions) as reflex-drift's [`Reference`], one profile
/// per feature the model declares ([`Manifest::feature_names`]: the 13 demo features for
/// format 1, the `monitoring` features for format 2), **in the declared order**, each
/// found by its name: the order in which the recorder computes them
/// (`crate::pipeline::features::FeaturePlan`). Refuses a declared feature the reference has
/// no profile for, naming it; profiles of undeclared features are not used.
pub fn reference_from_manifest(manifest: &Manifest) -> Result<Reference, MonitorError> {
    let profiles = &manifest.reference.features;
    let invalid = |source| MonitorError::Reference {
        model: manifest.name.clone(),
        source,
    };
    let mut features = Vec::with_capacity(profiles.len());
    for name in manifest.feature_names() {
        let Some(p) = profiles.iter().find(|p| p.name == name) else {
            return Err(MonitorError::FeatureMissing {
                model: manifest.name.clone(),
                name,
            });
        };
        let profile = QuantileProfile::new(p.quantiles.clone(), p.count as u64)
            .map_err(|e: DriftError| invalid(e))?;
        features.push(FeatureReference { name, profile });
    }
    Reference::new(
        features,
        manifest.reference.predicted_class_fraction.clone(),
    )
    .map_err(invalid)
}
