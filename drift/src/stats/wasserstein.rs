//! Wasserstein-1 (earth mover's) distance between two one-dimensional distributions.
//!
//! `W1 = ∫ |F_a(x) − F_b(x)| dx = ∫₀¹ |Q_a(p) − Q_b(p)| dp`, in the feature's unit.
//! Computed exactly for any two [`Cdf`]s: between consecutive points of the union both CDFs
//! are straight, so `|F_a − F_b|` is integrated piece by piece (a piece whose difference
//! changes sign is split where it crosses zero). For two samples this is scipy's
//! `wasserstein_distance(a, b)`; for a sample or sketch against a quantile profile it is the
//! integral of `|Q_sample − Q_profile|` with the profile's quantile function linear between
//! its quantiles.

use crate::cdf::Cdf;
use crate::error::DriftError;

/// `∫ |F_a − F_b| dx` (module doc).
pub fn wasserstein(a: &Cdf, b: &Cdf) -> f64 {
    let points = a.union_points(b);
    let mut total = 0.0;
    for pair in points.windows(2) {
        let (u, v) = (pair[0], pair[1]);
        let width = v - u;
        let start = a.at(u) - b.at(u);
        let end = a.before(v) - b.before(v);
        total += if start == end {
            width * start.abs()
        } else if (start >= 0.0) == (end >= 0.0) || start == 0.0 || end == 0.0 {
            width * (start.abs() + end.abs()) / 2.0
        } else {
            // Crosses zero: two triangles.
            width * (start * start + end * end) / (2.0 * (start.abs() + end.abs()))
        };
    }
    total
}

/// Wasserstein-1 between two samples, as scipy's `wasserstein_distance(a, b)`.
///
/// Errors on an empty sample or a non-finite value.
pub fn wasserstein_samples(a: &[f64], b: &[f64]) -> Result<f64, DriftError> {
    Ok(wasserstein(&Cdf::from_sample(a)?, &Cdf::from_sample(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifting_a_sample_moves_it_by_the_shift() {
        let a = [0.0, 1.0, 2.0, 5.0];
        let b: Vec<f64> = a.iter().map(|v| v + 0.5).collect();
        let w = wasserstein_samples(&a, &b).unwrap();
        assert!((w - 0.5).abs() < 1e-12, "{w}");
    }

    #[test]
    fn a_uniform_profile_against_its_midpoint_is_a_quarter() {
        // Q(p) = p against the point mass at 0.5: ∫|p − 0.5| dp = 0.25.
        let profile = Cdf::from_quantiles(&[0.0, 1.0]).unwrap();
        let point = Cdf::from_sample(&[0.5]).unwrap();
        let w = wasserstein(&profile, &point);
        assert!((w - 0.25).abs() < 1e-12, "{w}");
    }
}
