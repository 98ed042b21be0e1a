//! Drift verdicts: per feature (from KS, PSI and Wasserstein against the reference) and per
//! dataset (when a share of the features drift), with the thresholds practitioners expect.
//!
//! Thresholds ([`DriftThresholds::default`]): KS drift when `p < 0.05`; PSI drift when
//! `PSI ≥ 0.2` (significant band); Wasserstein drift when the distance divided by the
//! reference's standard deviation is `≥ 0.1` (Evidently's normed Wasserstein default); the
//! dataset drifts when at least 50% of its features drift; the class distribution drifts
//! when the Jensen–Shannon distance is `≥ 0.1` (Evidently's default for categorical data).
//!
//! **Default rule** ([`FeatureRule::KsAndEffect`]): a feature drifts when KS says the
//! difference is significant (`p < 0.05`) **and** an effect size says it is large: PSI ≥ 0.2
//! or normalised Wasserstein ≥ 0.1. Why:
//! * KS alone flags 5% of clean windows per feature by construction (13 features: about half
//!   of all clean windows somewhere), and at thousands of events per window it flags
//!   differences too small to matter;
//! * PSI alone is noisy on small windows (on clean data it is about `(B − 1)(1/n + 1/n_ref)`)
//!   and blind to a drifting minority: if a tenth of the devices on a route move far away,
//!   every drifted value lands in one outer bin and PSI cannot exceed ≈ 0.07 (≈ 0.14 for 15%),
//!   however far they moved;
//! * normalised Wasserstein sees that minority (10% moved by 3σ is 0.3σ) but not a change of
//!   shape that moves little mass far, which PSI sees.
//!
//! [`FeatureRule`] selects the single-statistic and KS/PSI rules instead.

use serde::{Deserialize, Serialize};

use crate::cdf::Cdf;
use crate::error::DriftError;
use crate::profile::QuantileProfile;
use crate::stats::ks::{ks_against_profile, KsMethod};
use crate::stats::psi::{psi, PsiBand, DEFAULT_PSI_BINS};
use crate::stats::wasserstein::wasserstein;

/// Which statistics must flag a feature for it to count as drifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureRule {
    /// KS p-value below its threshold.
    Ks,
    /// PSI at or above its threshold.
    Psi,
    /// Normalised Wasserstein at or above its threshold.
    Wasserstein,
    /// KS and PSI.
    KsAndPsi,
    /// KS or PSI.
    KsOrPsi,
    /// KS, and PSI or normalised Wasserstein (the default; module doc).
    KsAndEffect,
}

/// Thresholds of the verdicts (module doc for the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriftThresholds {
    /// KS drift when the p-value is below this.
    pub ks_p_value: f64,
    /// PSI drift when PSI is at or above this.
    pub psi: f64,
    /// Number of reference bins for PSI.
    pub psi_bins: usize,
    /// Wasserstein drift when `W / σ_ref` is at or above this.
    pub wasserstein_normed: f64,
    /// How KS and PSI combine into a feature verdict.
    pub rule: FeatureRule,
    /// The dataset drifts when at least this share of features drift.
    pub dataset_share: f64,
    /// The class distribution drifts when the JS distance is at or above this.
    pub js_distance: f64,
}

impl Default for DriftThresholds {
    fn default() -> Self {
        DriftThresholds {
            ks_p_value: 0.05,
            psi: 0.2,
            psi_bins: DEFAULT_PSI_BINS,
            wasserstein_normed: 0.1,
            rule: FeatureRule::KsAndEffect,
            dataset_share: 0.5,
            js_distance: 0.1,
        }
    }
}

impl DriftThresholds {
    /// Checks every threshold is in range.
    pub fn validate(&self) -> Result<(), DriftError> {
        let unit = |name, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(DriftError::InvalidParameter {
                    name,
                    value,
                    expected: "between 0 and 1",
                })
            }
        };
        unit("ks_p_value", self.ks_p_value)?;
        unit("dataset_share", self.dataset_share)?;
        unit("js_distance", self.js_distance)?;
        for (name, value) in [
            ("psi", self.psi),
            ("wasserstein_normed", self.wasserstein_normed),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(DriftError::InvalidParameter {
                    name,
                    value,
                    expected: "finite and at least 0",
                });
            }
        }
        if self.psi_bins < 2 {
            return Err(DriftError::InvalidParameter {
                name: "psi_bins",
                value: self.psi_bins as f64,
                expected: "at least 2",
            });
        }
        Ok(())
    }
}

/// Drift of one feature in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDrift {
    /// Feature name.
    pub name: String,
    /// KS statistic against the reference.
    pub ks_statistic: f64,
    /// Its p-value (`n_eff = n·n_ref/(n+n_ref)`).
    pub ks_p_value: f64,
    /// How the p-value was computed.
    pub ks_method: KsMethod,
    /// Wasserstein-1 distance to the reference, in the feature's unit.
    pub wasserstein: f64,
    /// `wasserstein / σ_ref` ([`QuantileProfile::std`]; a reference without spread divides
    /// by 1).
    pub wasserstein_normed: f64,
    /// PSI against the reference bins.
    pub psi: f64,
    /// PSI band.
    pub psi_band: PsiBand,
    /// KS p-value below threshold.
    pub ks_drift: bool,
    /// PSI at or above threshold.
    pub psi_drift: bool,
    /// Normalised Wasserstein at or above threshold.
    pub wasserstein_drift: bool,
    /// The verdict under the configured [`FeatureRule`].
    pub drifted: bool,
}

/// Computes every statistic of a distribution of `n` observations against a reference
/// profile and the verdict under `thresholds`.
pub fn feature_drift(
    name: &str,
    current: &Cdf,
    n: u64,
    reference: &QuantileProfile,
    thresholds: &DriftThresholds,
) -> Result<FeatureDrift, DriftError> {
    let ks = ks_against_profile(current, n, reference)?;
    let psi_value = psi(reference, current, thresholds.psi_bins)?;
    let w = wasserstein(current, reference.cdf());
    let scale = if reference.std() > 0.0 {
        reference.std()
    } else {
        1.0
    };
    let w_normed = w / scale;
    let ks_drift = ks.p_value < thresholds.ks_p_value;
    let psi_drift = psi_value >= thresholds.psi;
    let wasserstein_drift = w_normed >= thresholds.wasserstein_normed;
    let drifted = match thresholds.rule {
        FeatureRule::Ks => ks_drift,
        FeatureRule::Psi => psi_drift,
        FeatureRule::Wasserstein => wasserstein_drift,
        FeatureRule::KsAndPsi => ks_drift && psi_drift,
        FeatureRule::KsOrPsi => ks_drift || psi_drift,
        FeatureRule::KsAndEffect => ks_drift && (psi_drift || wasserstein_drift),
    };
    Ok(FeatureDrift {
        name: name.to_owned(),
        ks_statistic: ks.statistic,
        ks_p_value: ks.p_value,
        ks_method: ks.method,
        wasserstein: w,
        wasserstein_normed: w_normed,
        psi: psi_value,
        psi_band: PsiBand::of(psi_value),
        ks_drift,
        psi_drift,
        wasserstein_drift,
        drifted,
    })
}

/// The dataset-level verdict.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DatasetDrift {
    /// Features that drifted.
    pub drifted_features: usize,
    /// Features checked.
    pub features: usize,
    /// `drifted_features / features`.
    pub share: f64,
    /// `share ≥ threshold` (and at least one feature drifted).
    pub drifted: bool,
}

/// The dataset drifts when at least `share_threshold` of the features drift (and at least
/// one does, so a threshold of 0 does not flag a clean dataset).
pub fn dataset_drift(features: &[FeatureDrift], share_threshold: f64) -> DatasetDrift {
    let drifted_features = features.iter().filter(|f| f.drifted).count();
    let share = if features.is_empty() {
        0.0
    } else {
        drifted_features as f64 / features.len() as f64
    };
    DatasetDrift {
        drifted_features,
        features: features.len(),
        share,
        drifted: drifted_features > 0 && share >= share_threshold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform_profile() -> QuantileProfile {
        QuantileProfile::new((0..=100).map(|i| i as f64 / 100.0).collect(), 4000).unwrap()
    }

    #[test]
    fn a_sample_far_from_the_reference_drifts_under_every_rule() {
        let sample: Vec<f64> = (0..2000).map(|i| 0.8 + 0.2 * i as f64 / 2000.0).collect();
        let cdf = Cdf::from_sample(&sample).unwrap();
        for rule in [
            FeatureRule::Ks,
            FeatureRule::Psi,
            FeatureRule::Wasserstein,
            FeatureRule::KsAndPsi,
            FeatureRule::KsOrPsi,
            FeatureRule::KsAndEffect,
        ] {
            let t = DriftThresholds {
                rule,
                ..DriftThresholds::default()
            };
            let f = feature_drift("u", &cdf, 2000, &uniform_profile(), &t).unwrap();
            assert!(f.drifted, "{rule:?}: {f:?}");
        }
    }

    #[test]
    fn a_sample_spread_like_the_reference_does_not_drift() {
        let sample: Vec<f64> = (0..2000).map(|i| (i as f64 + 0.5) / 2000.0).collect();
        let cdf = Cdf::from_sample(&sample).unwrap();
        let f = feature_drift(
            "u",
            &cdf,
            2000,
            &uniform_profile(),
            &DriftThresholds::default(),
        )
        .unwrap();
        assert!(
            !f.ks_drift && !f.psi_drift && !f.wasserstein_drift && !f.drifted,
            "{f:?}"
        );
    }

    #[test]
    fn the_dataset_drifts_at_the_configured_share() {
        let mut f = feature_drift(
            "u",
            uniform_profile().cdf(),
            100,
            &uniform_profile(),
            &DriftThresholds::default(),
        )
        .unwrap();
        let clean = f.clone();
        f.drifted = true;
        assert!(dataset_drift(&[f.clone(), clean.clone()], 0.5).drifted);
        assert!(!dataset_drift(&[f, clean.clone(), clean.clone()], 0.5).drifted);
        assert!(!dataset_drift(&[clean], 0.0).drifted);
    }
}
