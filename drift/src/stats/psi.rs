//! Population Stability Index of a current distribution against a reference profile.
//!
//! **Bins** come from the reference: the edges are the profile's quantiles at `i/B`,
//! `i = 1..B` (the deciles, `B = 10`, are quantiles 10, 20, …, 90 of the 101), repeated edges
//! merged; the outer bins are open-ended, so every value falls in a bin:
//! `(−∞, e_1], (e_1, e_2], …, (e_{B−1}, +∞)`. The fraction of a distribution in a bin is
//! `F(e_i) − F(e_{i−1})` with its right-continuous CDF (0 below, 1 above); for the reference
//! that is exactly `1/B` per bin unless quantiles repeat.
//!
//! **Smoothing**: a fraction below [`PSI_EPSILON`] (`1e-4`) is replaced by `1e-4` (no
//! renormalisation), as Evidently does, so an empty bin contributes a large finite term.
//!
//! **Formula**: `PSI = Σ_i (c_i − r_i) · ln(c_i / r_i)` (natural log), ≥ 0.
//!
//! **Bands** ([`PsiBand`]), the Evidently/NannyML defaults: `< 0.1` no change,
//! `0.1 ≤ PSI < 0.2` moderate, `≥ 0.2` significant.

use serde::{Deserialize, Serialize};

use crate::cdf::Cdf;
use crate::error::{check_finite, DriftError};
use crate::profile::QuantileProfile;

/// Fractions below this are raised to it before the logarithm.
pub const PSI_EPSILON: f64 = 1e-4;

/// Default number of reference bins (deciles).
pub const DEFAULT_PSI_BINS: usize = 10;

/// How large a PSI is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PsiBand {
    /// `< 0.1`.
    None,
    /// `0.1 ≤ PSI < 0.2`.
    Moderate,
    /// `≥ 0.2`.
    Significant,
}

impl PsiBand {
    /// The band of a PSI value (NaN counts as significant).
    pub fn of(psi: f64) -> PsiBand {
        if psi < 0.1 {
            PsiBand::None
        } else if psi < 0.2 {
            PsiBand::Moderate
        } else {
            PsiBand::Significant
        }
    }
}

/// Fractions of a distribution in the bins cut at `edges` (increasing).
pub fn bin_fractions(cdf: &Cdf, edges: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(edges.len() + 1);
    let mut below = 0.0;
    for &e in edges {
        let f = cdf.at(e);
        out.push((f - below).max(0.0));
        below = f;
    }
    out.push((1.0 - below).max(0.0));
    out
}

/// PSI of `current` against `reference` with `bins` reference bins (module doc).
///
/// Errors when `bins < 2`.
pub fn psi(reference: &QuantileProfile, current: &Cdf, bins: usize) -> Result<f64, DriftError> {
    if bins < 2 {
        return Err(DriftError::InvalidParameter {
            name: "psi bins",
            value: bins as f64,
            expected: "at least 2",
        });
    }
    let edges = reference.bin_edges(bins);
    let r = bin_fractions(reference.cdf(), &edges);
    let c = bin_fractions(current, &edges);
    psi_from_fractions(&r, &c)
}

/// PSI from bin fractions (each list should add up to 1; they are not renormalised).
///
/// Errors on different lengths, an empty list, a negative or non-finite fraction.
pub fn psi_from_fractions(reference: &[f64], current: &[f64]) -> Result<f64, DriftError> {
    if reference.len() != current.len() {
        return Err(DriftError::LengthMismatch {
            what: "psi fractions",
            left: reference.len(),
            right: current.len(),
        });
    }
    if reference.is_empty() {
        return Err(DriftError::Empty {
            what: "psi fractions",
        });
    }
    for (what, values) in [
        ("reference fractions", reference),
        ("current fractions", current),
    ] {
        check_finite(what, values)?;
        if let Some(index) = values.iter().position(|&v| v < 0.0) {
            return Err(DriftError::Negative {
                what,
                value: values[index],
                index,
            });
        }
    }
    Ok(reference
        .iter()
        .zip(current)
        .map(|(&r, &c)| {
            let (r, c) = (r.max(PSI_EPSILON), c.max(PSI_EPSILON));
            (c - r) * (c / r).ln()
        })
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_against_itself_has_zero_psi() {
        let q: Vec<f64> = (0..=100).map(|i| i as f64).collect();
        let p = QuantileProfile::new(q, 1000).unwrap();
        let v = psi(&p, p.cdf(), 10).unwrap();
        assert!(v.abs() < 1e-12, "{v}");
    }

    #[test]
    fn bands_follow_the_usual_cut_offs() {
        assert_eq!(PsiBand::of(0.05), PsiBand::None);
        assert_eq!(PsiBand::of(0.1), PsiBand::Moderate);
        assert_eq!(PsiBand::of(0.2), PsiBand::Significant);
    }

    #[test]
    fn mismatched_fractions_are_an_error() {
        assert!(matches!(
            psi_from_fractions(&[0.5, 0.5], &[1.0]),
            Err(DriftError::LengthMismatch {
                left: 2,
                right: 1,
                ..
            })
        ));
    }
}
