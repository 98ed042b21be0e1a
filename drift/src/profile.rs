//! The reference a window is compared with: per-feature quantile profiles and the
//! predicted-class fractions, as carried by every model manifest (`reference` in
//! `models/*.manifest.json`), but as plain data so this crate does not depend on
//! reflex-models (reflexd and reflex-cloud convert the manifest's `ReferenceProfile`).
//!
//! A [`QuantileProfile`] is `m + 1` quantiles at probabilities `j/m` (101 in the manifests)
//! plus the number of examples it was computed from, which is the effective reference size
//! `n_ref` in KS p-values. Its distribution is the piecewise-linear CDF through the
//! quantiles ([`Cdf::from_quantiles`]).

use serde::{Deserialize, Serialize};

use crate::cdf::Cdf;
use crate::error::DriftError;

/// The value at `percent` (0..=100) of `sorted` (ascending, non-empty) with numpy's
/// default linear interpolation: position `(n − 1) · percent / 100`, interpolated between
/// its two neighbours.
pub fn percentile(sorted: &[f64], percent: f64) -> f64 {
    let n = sorted.len();
    let pos = (n - 1) as f64 * percent / 100.0;
    let lo = (pos.floor() as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// `np.percentile(values, np.arange(101))`: the 101 quantiles at 0, 1, …, 100 percent that
/// a manifest's reference profile holds. Empty for no values.
pub fn quantiles_101(values: &[f64]) -> Vec<f64> {
    if values.is_empty() {
        return Vec::new();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (0..=100)
        .map(|p| percentile(&sorted, f64::from(p)))
        .collect()
}

/// Quantiles of one feature at evenly spaced probabilities, and the dataset size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "QuantileProfileFields", into = "QuantileProfileFields")]
pub struct QuantileProfile {
    quantiles: Vec<f64>,
    count: u64,
    cdf: Cdf,
    std: f64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuantileProfileFields {
    quantiles: Vec<f64>,
    count: u64,
}

impl TryFrom<QuantileProfileFields> for QuantileProfile {
    type Error = DriftError;
    fn try_from(f: QuantileProfileFields) -> Result<Self, DriftError> {
        QuantileProfile::new(f.quantiles, f.count)
    }
}

impl From<QuantileProfile> for QuantileProfileFields {
    fn from(p: QuantileProfile) -> Self {
        QuantileProfileFields {
            quantiles: p.quantiles,
            count: p.count,
        }
    }
}

impl QuantileProfile {
    /// Quantiles at probabilities `0, 1/m, …, 1` (at least 2, finite, non-decreasing) of a
    /// dataset of `count` examples (at least 1).
    pub fn new(quantiles: Vec<f64>, count: u64) -> Result<QuantileProfile, DriftError> {
        if count == 0 {
            return Err(DriftError::InvalidParameter {
                name: "profile count",
                value: 0.0,
                expected: "at least 1",
            });
        }
        let cdf = Cdf::from_quantiles(&quantiles)?;
        let std = piecewise_linear_std(&quantiles);
        Ok(QuantileProfile {
            quantiles,
            count,
            cdf,
            std,
        })
    }

    /// Standard deviation of the profile's own distribution (uniform between neighbouring
    /// quantiles, each stretch holding `1/m` of the mass): the scale of the normalised
    /// Wasserstein distance.
    pub fn std(&self) -> f64 {
        self.std
    }

    /// The quantiles.
    pub fn quantiles(&self) -> &[f64] {
        &self.quantiles
    }

    /// Examples the profile was computed from (`n_ref`).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The piecewise-linear CDF through the quantiles.
    pub fn cdf(&self) -> &Cdf {
        &self.cdf
    }

    /// The reference bin edges used by PSI: the quantiles at probabilities `i/bins`,
    /// `i = 1..bins` (the deciles for `bins = 10`), read off the profile's CDF, with
    /// repeated edges removed.
    pub fn bin_edges(&self, bins: usize) -> Vec<f64> {
        let mut edges: Vec<f64> = (1..bins)
            .map(|i| self.cdf.quantile(i as f64 / bins as f64))
            .collect();
        edges.dedup();
        edges
    }
}

/// Standard deviation of the distribution that is uniform on each `[q_j, q_{j+1}]` with
/// mass `1/m` (a repeated quantile is a point mass there), computed around the median
/// quantile for accuracy.
fn piecewise_linear_std(q: &[f64]) -> f64 {
    let m = (q.len() - 1) as f64;
    let centre = q[q.len() / 2];
    let (mut mean, mut second) = (0.0, 0.0);
    for pair in q.windows(2) {
        let (a, b) = (pair[0] - centre, pair[1] - centre);
        mean += (a + b) / 2.0 / m;
        second += (a * a + a * b + b * b) / 3.0 / m;
    }
    (second - mean * mean).max(0.0).sqrt()
}

/// The reference profile of one feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureReference {
    /// Feature name, e.g. `std_x`.
    pub name: String,
    /// Its distribution.
    pub profile: QuantileProfile,
}

/// What "normal" looks like for one model: feature profiles and predicted-class fractions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ReferenceFields", into = "ReferenceFields")]
pub struct Reference {
    features: Vec<FeatureReference>,
    class_fractions: Vec<f64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReferenceFields {
    features: Vec<FeatureReference>,
    class_fractions: Vec<f64>,
}

impl TryFrom<ReferenceFields> for Reference {
    type Error = DriftError;
    fn try_from(f: ReferenceFields) -> Result<Self, DriftError> {
        Reference::new(f.features, f.class_fractions)
    }
}

impl From<Reference> for ReferenceFields {
    fn from(r: Reference) -> Self {
        ReferenceFields {
            features: r.features,
            class_fractions: r.class_fractions,
        }
    }
}

impl Reference {
    /// At least one feature, names distinct; class fractions finite, non-negative, not all
    /// zero (they are normalised where used).
    pub fn new(
        features: Vec<FeatureReference>,
        class_fractions: Vec<f64>,
    ) -> Result<Reference, DriftError> {
        if features.is_empty() {
            return Err(DriftError::Empty {
                what: "reference features",
            });
        }
        for (i, f) in features.iter().enumerate() {
            if features[..i].iter().any(|g| g.name == f.name) {
                return Err(DriftError::DuplicateFeature {
                    name: f.name.clone(),
                });
            }
        }
        crate::stats::jensen_shannon::check_distribution("class fractions", &class_fractions)?;
        Ok(Reference {
            features,
            class_fractions,
        })
    }

    /// The feature profiles, in observation order.
    pub fn features(&self) -> &[FeatureReference] {
        &self.features
    }

    /// Fraction of reference examples predicted as each class.
    pub fn class_fractions(&self) -> &[f64] {
        &self.class_fractions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feature(name: &str) -> FeatureReference {
        FeatureReference {
            name: name.into(),
            profile: QuantileProfile::new(vec![0.0, 1.0], 10).unwrap(),
        }
    }

    #[test]
    fn a_reference_refuses_duplicate_names_no_features_and_bad_fractions() {
        assert_eq!(
            Reference::new(vec![feature("a"), feature("a")], vec![1.0]),
            Err(DriftError::DuplicateFeature { name: "a".into() })
        );
        assert!(Reference::new(vec![], vec![1.0]).is_err());
        assert!(Reference::new(vec![feature("a")], vec![0.0, 0.0]).is_err());
        assert!(Reference::new(vec![feature("a")], vec![f64::NAN]).is_err());
        assert!(QuantileProfile::new(vec![0.0, 1.0], 0).is_err());
    }

    #[test]
    fn the_std_of_a_uniform_profile_is_that_of_the_uniform_distribution() {
        let q: Vec<f64> = (0..=100)
            .map(|i| 2.0 + 3.0 * f64::from(i) / 100.0)
            .collect();
        let p = QuantileProfile::new(q, 10).unwrap();
        let want = 3.0 / 12f64.sqrt();
        assert!((p.std() - want).abs() < 1e-12, "{} vs {want}", p.std());
        let constant = QuantileProfile::new(vec![1.5; 101], 10).unwrap();
        assert_eq!(constant.std(), 0.0);
    }

    #[test]
    fn a_profile_deserializes_only_when_valid() {
        let ok: Result<QuantileProfile, _> =
            serde_json::from_str(r#"{"quantiles": [0.0, 1.0, 3.0], "count": 5}"#);
        assert_eq!(ok.unwrap().count(), 5);
        let bad =
            serde_json::from_str::<QuantileProfile>(r#"{"quantiles": [2.0, 1.0], "count": 5}"#);
        assert!(bad.unwrap_err().to_string().contains("quantiles decrease"));
    }
}
