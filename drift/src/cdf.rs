//! Cumulative distribution functions made of jumps and straight pieces: the one shape that
//! an exact sample, a sketch and a reference quantile profile all take, so that every
//! statistic (KS, Wasserstein, PSI) is written once and works on any pair of them.
//!
//! A [`Cdf`] is a strictly increasing list of points `x_i`, each with its left limit
//! `F(x_i−)` and its value `F(x_i)` (right-continuous). Between `x_i` and `x_{i+1}` the
//! function goes in a straight line from `F(x_i)` to `F(x_{i+1}−)`; below `x_0` it is 0 and
//! from the last point on it is 1.
//!
//! * An exact sample (or a weighted one, e.g. a sketch) is a step function: each distinct
//!   value jumps by its share of the weight and the pieces between are flat. Ties are one
//!   point with a larger jump.
//! * A quantile profile `q_0 ≤ … ≤ q_m` at probabilities `p_j = j/m` is the piecewise-linear
//!   CDF through `(q_j, p_j)` (the inverse of `numpy.interp(p, p_j, q_j)`); a repeated
//!   quantile is an atom, i.e. a jump from the first to the last probability that shares it.

use crate::error::{check_finite, DriftError};

/// A CDF with jumps at its points and straight lines between them (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct Cdf {
    xs: Vec<f64>,
    left: Vec<f64>,
    right: Vec<f64>,
}

impl Cdf {
    /// The empirical CDF of a sample: `F(x) = #{v ≤ x} / n`.
    ///
    /// Errors on an empty sample or a non-finite value.
    pub fn from_sample(sample: &[f64]) -> Result<Cdf, DriftError> {
        crate::error::check_sample("sample", sample)?;
        let mut sorted = sample.to_vec();
        sorted.sort_by(f64::total_cmp);
        Ok(Cdf::from_sorted_weighted(
            sorted.iter().map(|&v| (v, 1.0)),
            sorted.len() as f64,
        ))
    }

    /// The CDF of a weighted sample: `F(x) = Σ_{v ≤ x} w / Σ w`.
    ///
    /// Errors on an empty input, a non-finite value or weight, a negative weight or a zero
    /// total weight.
    pub fn from_weighted(items: &[(f64, f64)]) -> Result<Cdf, DriftError> {
        if items.is_empty() {
            return Err(DriftError::Empty {
                what: "weighted sample",
            });
        }
        for (index, &(v, w)) in items.iter().enumerate() {
            if !v.is_finite() {
                return Err(DriftError::NonFinite {
                    what: "weighted sample values",
                    value: v,
                    index,
                });
            }
            if !w.is_finite() {
                return Err(DriftError::NonFinite {
                    what: "weighted sample weights",
                    value: w,
                    index,
                });
            }
            if w < 0.0 {
                return Err(DriftError::Negative {
                    what: "weighted sample weights",
                    value: w,
                    index,
                });
            }
        }
        let total: f64 = items.iter().map(|&(_, w)| w).sum();
        if total <= 0.0 {
            return Err(DriftError::ZeroTotal {
                what: "weighted sample",
            });
        }
        let mut sorted = items.to_vec();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(Cdf::from_sorted_weighted(sorted.into_iter(), total))
    }

    fn from_sorted_weighted(items: impl Iterator<Item = (f64, f64)>, total: f64) -> Cdf {
        let mut xs: Vec<f64> = Vec::new();
        let mut left = Vec::new();
        let mut right = Vec::new();
        let mut cumulative = 0.0;
        for (v, w) in items {
            if w == 0.0 {
                continue;
            }
            let before = cumulative / total;
            cumulative += w;
            let after = (cumulative / total).min(1.0);
            if xs.last() == Some(&v) {
                if let Some(r) = right.last_mut() {
                    *r = after;
                }
            } else {
                xs.push(v);
                left.push(before);
                right.push(after);
            }
        }
        // The running sum may fall a rounding error short of the total.
        if let Some(r) = right.last_mut() {
            *r = 1.0;
        }
        Cdf { xs, left, right }
    }

    /// The piecewise-linear CDF through `(q_j, j/m)` for quantiles `q_0 ≤ … ≤ q_m`.
    ///
    /// Errors on fewer than 2 quantiles, a non-finite one, or a decrease.
    pub fn from_quantiles(quantiles: &[f64]) -> Result<Cdf, DriftError> {
        if quantiles.len() < 2 {
            return Err(DriftError::TooFewQuantiles {
                count: quantiles.len(),
            });
        }
        check_finite("quantiles", quantiles)?;
        for (index, pair) in quantiles.windows(2).enumerate() {
            if pair[1] < pair[0] {
                return Err(DriftError::UnsortedQuantiles {
                    index: index + 1,
                    previous: pair[0],
                    value: pair[1],
                });
            }
        }
        let m = (quantiles.len() - 1) as f64;
        let mut xs: Vec<f64> = Vec::new();
        let mut left = Vec::new();
        let mut right = Vec::new();
        for (j, &q) in quantiles.iter().enumerate() {
            let p = j as f64 / m;
            if xs.last() == Some(&q) {
                if let Some(r) = right.last_mut() {
                    *r = p;
                }
            } else {
                xs.push(q);
                left.push(p);
                right.push(p);
            }
        }
        Ok(Cdf { xs, left, right })
    }

    /// The points where the function jumps or bends, increasing.
    pub fn points(&self) -> &[f64] {
        &self.xs
    }

    /// `F(x)`, right-continuous.
    pub fn at(&self, x: f64) -> f64 {
        // Index of the first point greater than x.
        let i = self.xs.partition_point(|&p| p <= x);
        if i == 0 {
            return 0.0;
        }
        let j = i - 1; // xs[j] <= x
        if self.xs[j] == x || i == self.xs.len() {
            return self.right[j];
        }
        self.between(j, x)
    }

    /// `F(x−)`, the left limit.
    pub fn before(&self, x: f64) -> f64 {
        // Index of the first point not less than x.
        let i = self.xs.partition_point(|&p| p < x);
        if i < self.xs.len() && self.xs[i] == x {
            return self.left[i];
        }
        if i == 0 {
            return 0.0;
        }
        let j = i - 1; // xs[j] < x < xs[i]
        if i == self.xs.len() {
            return self.right[j];
        }
        self.between(j, x)
    }

    fn between(&self, j: usize, x: f64) -> f64 {
        let (x0, x1) = (self.xs[j], self.xs[j + 1]);
        let (f0, f1) = (self.right[j], self.left[j + 1]);
        if f0 == f1 {
            return f0;
        }
        f0 + (f1 - f0) * ((x - x0) / (x1 - x0))
    }

    /// The quantile function `Q(p) = inf{x : F(x) ≥ p}`, with straight pieces inverted
    /// linearly; `p` is clamped to `[0, 1]` and a NaN gives the smallest point.
    pub fn quantile(&self, p: f64) -> f64 {
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        // First point whose value reaches p.
        let i = self.right.partition_point(|&r| r < p);
        let i = i.min(self.xs.len() - 1);
        if i > 0 && self.left[i] > p {
            // p falls on the straight piece before point i.
            let (x0, x1) = (self.xs[i - 1], self.xs[i]);
            let (f0, f1) = (self.right[i - 1], self.left[i]);
            if f1 > f0 {
                return x0 + (x1 - x0) * ((p - f0) / (f1 - f0));
            }
        }
        self.xs[i]
    }

    /// The sorted union of two functions' points.
    pub(crate) fn union_points(&self, other: &Cdf) -> Vec<f64> {
        let (a, b) = (&self.xs, &other.xs);
        let mut out = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let next = match (a.get(i), b.get(j)) {
                (Some(&x), Some(&y)) if x < y => {
                    i += 1;
                    x
                }
                (Some(&x), Some(&y)) if y < x => {
                    j += 1;
                    y
                }
                (Some(&x), Some(_)) => {
                    i += 1;
                    j += 1;
                    x
                }
                (Some(&x), None) => {
                    i += 1;
                    x
                }
                (None, Some(&y)) => {
                    j += 1;
                    y
                }
                (None, None) => break,
            };
            out.push(next);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_cdf_counts_values_at_or_below_x() {
        let cdf = Cdf::from_sample(&[3.0, 1.0, 2.0, 2.0]).unwrap();
        assert_eq!(cdf.at(0.5), 0.0);
        assert_eq!(cdf.at(1.0), 0.25);
        assert_eq!(cdf.before(2.0), 0.25);
        assert_eq!(cdf.at(2.0), 0.75);
        assert_eq!(cdf.at(2.5), 0.75);
        assert_eq!(cdf.at(3.0), 1.0);
        assert_eq!(cdf.before(3.0), 0.75);
    }

    #[test]
    fn a_quantile_profile_interpolates_linearly_and_repeated_quantiles_are_atoms() {
        let cdf = Cdf::from_quantiles(&[0.0, 1.0, 1.0, 3.0, 4.0]).unwrap();
        assert_eq!(cdf.at(0.5), 0.125);
        assert_eq!(cdf.before(1.0), 0.25);
        assert_eq!(cdf.at(1.0), 0.5);
        assert_eq!(cdf.at(2.0), 0.625);
        assert_eq!(cdf.at(4.0), 1.0);
        assert_eq!(cdf.quantile(0.125), 0.5);
        assert_eq!(cdf.quantile(0.375), 1.0);
        assert_eq!(cdf.quantile(0.625), 2.0);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        assert!(matches!(
            Cdf::from_sample(&[]),
            Err(DriftError::Empty { .. })
        ));
        assert!(matches!(
            Cdf::from_sample(&[1.0, f64::NAN]),
            Err(DriftError::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            Cdf::from_quantiles(&[2.0, 1.0]),
            Err(DriftError::UnsortedQuantiles { index: 1, .. })
        ));
        assert!(matches!(
            Cdf::from_weighted(&[(1.0, 0.0)]),
            Err(DriftError::ZeroTotal { .. })
        ));
        assert!(matches!(
            Cdf::from_weighted(&[(1.0, -1.0)]),
            Err(DriftError::Negative { .. })
        ));
    }
}
