//! A model manifest's reference profile as reflex-drift's [`Reference`].

use reflex_drift::{DriftError, FeatureReference, QuantileProfile, Reference};
use reflex_models::{Manifest, FEATURE_NAMES};

use super::MonitorError;

/// The drift reference of a model: its manifest's `reference` (per-feature quantile
/// profiles and predicted-class fractions) as reflex-drift's [`Reference`]. Refuses a
/// reference whose features are not [`FEATURE_NAMES`] in order, since the daemon records
/// `reflex_models::features::compute`'s output positionally.
pub fn reference_from_manifest(manifest: &Manifest) -> Result<Reference, MonitorError> {
    let profiles = &manifest.reference.features;
    for index in 0..profiles.len().max(FEATURE_NAMES.len()) {
        let expected = FEATURE_NAMES.get(index).copied().unwrap_or("");
        let found = profiles.get(index).map_or("", |p| p.name.as_str());
        if expected != found {
            return Err(MonitorError::FeatureOrder {
                model: manifest.name.clone(),
                index,
                expected,
                found: found.to_owned(),
            });
        }
    }
    let invalid = |source| MonitorError::Reference {
        model: manifest.name.clone(),
        source,
    };
    let features = profiles
        .iter()
        .map(|p| {
            Ok(FeatureReference {
                name: p.name.clone(),
                profile: QuantileProfile::new(p.quantiles.clone(), p.count as u64)?,
            })
        })
        .collect::<Result<Vec<_>, DriftError>>()
        .map_err(invalid)?;
    Reference::new(
        features,
        manifest.reference.predicted_class_fraction.clone(),
    )
    .map_err(invalid)
}
