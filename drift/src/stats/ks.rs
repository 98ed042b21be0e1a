//! Kolmogorov–Smirnov tests: two samples (as scipy's `ks_2samp`), and a sample or sketch
//! against a reference quantile profile.
//!
//! **Statistic.** `D = sup_x |F_a(x) − F_b(x)|`, evaluated exactly for any two [`Cdf`]s by
//! checking both `F(x)` and `F(x−)` at the union of their points (between points both
//! functions are straight, so the supremum is at a point or a left limit). For two samples
//! this is scipy's `ks_2samp` statistic (`max |cdf1 − cdf2|` over the pooled data).
//!
//! **Two-sample p-value** ([`ks_2samp`]), scipy's `method='auto'`: when
//! `max(n1, n2) ≤ 10000` the exact p-value
//! ([`exact_two_sample_p_value`]); otherwise, or if the exact
//! computation fails, the asymptotic one `kstwo.sf(D, round(n1·n2/(n1+n2)))`
//! ([`kstwo_sf`]). The exact branch matches scipy to ~1e-12; the asymptotic branch differs
//! only where scipy uses a matrix method for `kstwo.sf` (see [`super::kolmogorov`]).
//!
//! **Against a profile** ([`ks_against_profile`]): the reference is the piecewise-linear
//! CDF through its quantiles, so at the 101 knots it is exact and between knots it is off by
//! at most the 0.01 between neighbouring probabilities. The reference is a summary of `n_ref`
//! examples (the profile's `count`), not a known distribution, so the p-value treats it as a
//! second sample: `p = kstwo.sf(D, round(n_eff))` with `n_eff = n·n_ref / (n + n_ref)`, the
//! same asymptotic formula as [`ks_2samp`] (no exact branch: the reference's own values are
//! gone). This makes the test no more sensitive than the reference is precise: with
//! `n_ref = 4000`, `n_eff < 4000` however large the window.

use serde::{Deserialize, Serialize};

use crate::cdf::Cdf;
use crate::error::DriftError;
use crate::profile::QuantileProfile;
use crate::stats::kolmogorov::{exact_two_sample_p_value, kstwo_sf};

/// Largest sample size for which [`ks_2samp`] tries the exact p-value (scipy's `MAX_AUTO_N`).
pub const EXACT_MAX_N: u64 = 10_000;

/// How a KS p-value was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KsMethod {
    /// Exact lattice-path count.
    Exact,
    /// `kstwo.sf(D, round(n_eff))`.
    Asymptotic,
}

/// A KS statistic and its two-sided p-value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KsResult {
    /// `D`, in `[0, 1]`.
    pub statistic: f64,
    /// Two-sided p-value, in `[0, 1]`.
    pub p_value: f64,
    /// Which formula gave the p-value.
    pub method: KsMethod,
}

/// `sup_x |F_a(x) − F_b(x)|` for any two CDFs.
pub fn ks_statistic(a: &Cdf, b: &Cdf) -> f64 {
    a.union_points(b)
        .into_iter()
        .map(|x| {
            let at = (a.at(x) - b.at(x)).abs();
            let before = (a.before(x) - b.before(x)).abs();
            at.max(before)
        })
        .fold(0.0, f64::max)
}

/// `n·m/(n+m)`, the effective size of two samples.
pub fn effective_size(n: u64, m: u64) -> f64 {
    let (n, m) = (n as f64, m as f64);
    n * m / (n + m)
}

fn asymptotic(d: f64, n: u64, m: u64) -> KsResult {
    let en = effective_size(n, m).round_ties_even().max(1.0) as u64;
    KsResult {
        statistic: d,
        p_value: kstwo_sf(d, en),
        method: KsMethod::Asymptotic,
    }
}

/// Two-sample KS test, as scipy's `ks_2samp(a, b)` (two-sided, `method='auto'`).
///
/// Errors on an empty sample or a non-finite value.
pub fn ks_2samp(a: &[f64], b: &[f64]) -> Result<KsResult, DriftError> {
    let ca = Cdf::from_sample(a)?;
    let cb = Cdf::from_sample(b)?;
    let (n1, n2) = (a.len() as u64, b.len() as u64);
    let d = ks_statistic(&ca, &cb);
    if n1.max(n2) <= EXACT_MAX_N {
        if let Some((d, p)) = exact_two_sample_p_value(n1, n2, d) {
            return Ok(KsResult {
                statistic: d,
                p_value: p,
                method: KsMethod::Exact,
            });
        }
    }
    Ok(asymptotic(d, n1, n2))
}

/// KS test of a distribution of `n` observations (a sample's or a sketch's CDF) against a
/// reference profile; p-value with `n_eff = n·n_ref/(n+n_ref)` (module doc).
///
/// Errors when `n` is 0.
pub fn ks_against_profile(
    current: &Cdf,
    n: u64,
    reference: &QuantileProfile,
) -> Result<KsResult, DriftError> {
    if n == 0 {
        return Err(DriftError::Empty {
            what: "current distribution",
        });
    }
    let d = ks_statistic(current, reference.cdf());
    Ok(asymptotic(d, n, reference.count()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_samples_have_zero_statistic_and_p_value_one() {
        let a = [1.0, 2.0, 3.0, 4.0];
        let r = ks_2samp(&a, &a).unwrap();
        assert_eq!(r.statistic, 0.0);
        assert_eq!(r.p_value, 1.0);
    }

    #[test]
    fn disjoint_samples_have_statistic_one() {
        let a: Vec<f64> = (0..10).map(f64::from).collect();
        let b: Vec<f64> = (20..30).map(f64::from).collect();
        let r = ks_2samp(&a, &b).unwrap();
        assert_eq!(r.statistic, 1.0);
        assert!(r.p_value < 1e-4, "{}", r.p_value);
    }

    #[test]
    fn an_empty_sample_is_an_error() {
        assert!(matches!(
            ks_2samp(&[], &[1.0]),
            Err(DriftError::Empty { .. })
        ));
        assert!(matches!(
            ks_2samp(&[f64::INFINITY], &[1.0]),
            Err(DriftError::NonFinite { .. })
        ));
    }
}
