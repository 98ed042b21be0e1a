//! The real reference profile of the edge model (`models/edge.manifest.json`) converts into
//! a [`Reference`] and behaves: samples drawn from each feature's own profile do not drift,
//! the same samples moved by half the feature's standard deviation do. This crate does not
//! depend on reflex-models, so the manifest is read as plain JSON here.

mod common;

use std::sync::Arc;

use common::SplitMix;
use reflex_drift::stats::verdict::{feature_drift, DriftThresholds};
use reflex_drift::{Cdf, FeatureReference, QuantileProfile, Reference};
use serde_json::Value;

fn edge_reference() -> (Reference, Vec<f64>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/edge.manifest.json");
    let text = std::fs::read_to_string(path).expect("edge manifest is in the repository");
    let manifest: Value = serde_json::from_str(&text).unwrap();
    let reference = &manifest["reference"];
    let mut stds = Vec::new();
    let features = reference["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            stds.push(f["std"].as_f64().unwrap());
            FeatureReference {
                name: f["name"].as_str().unwrap().to_owned(),
                profile: QuantileProfile::new(
                    serde_json::from_value(f["quantiles"].clone()).unwrap(),
                    f["count"].as_u64().unwrap(),
                )
                .unwrap(),
            }
        })
        .collect();
    let fractions = serde_json::from_value(reference["predicted_class_fraction"].clone()).unwrap();
    (Reference::new(features, fractions).unwrap(), stds)
}

#[test]
fn samples_from_each_edge_profile_do_not_drift_and_shifted_ones_do() {
    let (reference, stds) = edge_reference();
    let reference = Arc::new(reference);
    assert_eq!(reference.features().len(), 13);
    let mut g = SplitMix::new(42);
    for (feature, std) in reference.features().iter().zip(stds) {
        assert_eq!(feature.profile.bin_edges(10).len(), 9, "{}", feature.name);
        // Inverse-CDF draws from the profile itself.
        let draws: Vec<f64> = (0..3000)
            .map(|_| feature.profile.cdf().quantile(g.uniform()))
            .collect();
        let t = DriftThresholds::default();
        let clean = feature_drift(
            &feature.name,
            &Cdf::from_sample(&draws).unwrap(),
            3000,
            &feature.profile,
            &t,
        )
        .unwrap();
        assert!(!clean.drifted && clean.psi < 0.1, "{clean:?}");
        let moved: Vec<f64> = draws.iter().map(|v| v + 0.5 * std).collect();
        let shifted = feature_drift(
            &feature.name,
            &Cdf::from_sample(&moved).unwrap(),
            3000,
            &feature.profile,
            &t,
        )
        .unwrap();
        assert!(shifted.drifted, "{shifted:?}");
    }
}
