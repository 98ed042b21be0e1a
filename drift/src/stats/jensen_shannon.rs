//! Jensen–Shannon distance between two discrete distributions (predicted-class counts or
//! fractions against the reference fractions).
//!
//! Returns the **distance**, like scipy's `scipy.spatial.distance.jensenshannon(p, q,
//! base=2)`: both inputs are first normalised to sum to 1, `m = (p + q)/2`,
//! `JSD = ½ Σ p_i log₂(p_i/m_i) + ½ Σ q_i log₂(q_i/m_i)` (terms with `p_i = 0` are 0), and the
//! distance is `√JSD`, in `[0, 1]`. The divergence is the square of the distance.

use crate::error::{check_finite, DriftError};

/// Checks that a discrete distribution is non-empty, finite, non-negative and not all zero.
pub(crate) fn check_distribution(what: &'static str, values: &[f64]) -> Result<(), DriftError> {
    if values.is_empty() {
        return Err(DriftError::Empty { what });
    }
    check_finite(what, values)?;
    if let Some(index) = values.iter().position(|&v| v < 0.0) {
        return Err(DriftError::Negative {
            what,
            value: values[index],
            index,
        });
    }
    if values.iter().sum::<f64>() <= 0.0 {
        return Err(DriftError::ZeroTotal { what });
    }
    Ok(())
}

fn relative_entropy_base2(p: &[f64], m: &[f64]) -> f64 {
    p.iter()
        .zip(m)
        .filter(|(&pi, _)| pi > 0.0)
        .map(|(&pi, &mi)| pi * (pi / mi).ln())
        .sum::<f64>()
        / std::f64::consts::LN_2
}

/// Jensen–Shannon distance, base 2 (module doc), in `[0, 1]`.
///
/// Errors on different lengths, an empty input, a negative or non-finite entry, or a zero sum.
pub fn jensen_shannon_distance(p: &[f64], q: &[f64]) -> Result<f64, DriftError> {
    if p.len() != q.len() {
        return Err(DriftError::LengthMismatch {
            what: "jensen-shannon distributions",
            left: p.len(),
            right: q.len(),
        });
    }
    check_distribution("first distribution", p)?;
    check_distribution("second distribution", q)?;
    let (sp, sq) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
    let p: Vec<f64> = p.iter().map(|v| v / sp).collect();
    let q: Vec<f64> = q.iter().map(|v| v / sq).collect();
    let m: Vec<f64> = p.iter().zip(&q).map(|(a, b)| (a + b) / 2.0).collect();
    let divergence = (relative_entropy_base2(&p, &m) + relative_entropy_base2(&q, &m)) / 2.0;
    Ok(divergence.max(0.0).sqrt().min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disjoint_distributions_are_at_distance_one() {
        let d = jensen_shannon_distance(&[1.0, 0.0], &[0.0, 3.0]).unwrap();
        assert!((d - 1.0).abs() < 1e-12, "{d}");
    }

    #[test]
    fn counts_and_fractions_give_the_same_distance() {
        let a = jensen_shannon_distance(&[10.0, 30.0], &[0.5, 0.5]).unwrap();
        let b = jensen_shannon_distance(&[0.25, 0.75], &[0.5, 0.5]).unwrap();
        assert!((a - b).abs() < 1e-15);
    }

    #[test]
    fn all_zero_counts_are_an_error() {
        assert!(matches!(
            jensen_shannon_distance(&[0.0, 0.0], &[0.5, 0.5]),
            Err(DriftError::ZeroTotal { .. })
        ));
    }
}
