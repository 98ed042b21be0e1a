//! The numbers an imported manifest records, computed without I/O: a feature's reference
//! distribution ([`FeatureProfile`]) exactly as `make_models.py` computes it with numpy,
//! the fraction of rows per predicted class, and a latency summary.

use crate::manifest::{FeatureProfile, Latency};

pub use reflex_drift::profile::{percentile, quantiles_101};

/// The profile of feature `name` over `values`: 101 quantiles, mean and population
/// standard deviation (numpy's `std`, ddof 0), count.
pub fn feature_profile(name: &str, values: &[f64]) -> FeatureProfile {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    FeatureProfile {
        name: name.to_owned(),
        quantiles: quantiles_101(values),
        mean,
        std: var.sqrt(),
        count: values.len(),
    }
}

/// The fraction of `predicted` (class indices) that is each of `classes` classes
/// (`np.bincount(pred, minlength) / len`). Indices at or past `classes` count towards no
/// class.
pub fn class_fractions(predicted: &[usize], classes: usize) -> Vec<f64> {
    let mut counts = vec![0usize; classes];
    for &c in predicted {
        if let Some(n) = counts.get_mut(c) {
            *n += 1;
        }
    }
    let total = predicted.len().max(1) as f64;
    counts.into_iter().map(|c| c as f64 / total).collect()
}

/// Median and 99th percentile (numpy's linear interpolation) of single-row run times in
/// nanoseconds, as a [`Latency`] of batch 1 on one thread run by `runtime`.
pub fn latency(times_ns: &[u64], runtime: &str) -> Latency {
    let mut us: Vec<f64> = times_ns.iter().map(|&t| t as f64 / 1000.0).collect();
    us.sort_by(f64::total_cmp);
    let at = |p| {
        if us.is_empty() {
            f64::NAN
        } else {
            percentile(&us, p)
        }
    };
    Latency {
        median_us: at(50.0),
        p99_us: at(99.0),
        runs: times_ns.len() as u64,
        threads: 1,
        batch: 1,
        runtime: runtime.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quantiles_interpolate_linearly_as_numpy_does() {
        // np.percentile([1, 2, 3, 4], [0, 1, 50, 99, 100]) = [1, 1.03, 2.5, 3.97, 4].
        let q = quantiles_101(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!(q.len(), 101);
        assert_eq!(q[0], 1.0);
        assert!((q[1] - 1.03).abs() < 1e-12, "{}", q[1]);
        assert_eq!(q[50], 2.5);
        assert!((q[99] - 3.97).abs() < 1e-12, "{}", q[99]);
        assert_eq!(q[100], 4.0);
        assert!(quantiles_101(&[]).is_empty());
    }

    #[test]
    fn a_profile_has_the_population_std_and_the_count() {
        // np.std([2, 4, 4, 4, 5, 5, 7, 9]) = 2.0 (ddof 0).
        let p = feature_profile("mean_x", &[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(
            (p.name.as_str(), p.mean, p.std, p.count),
            ("mean_x", 5.0, 2.0, 8)
        );
        assert_eq!((p.quantiles[0], p.quantiles[100]), (2.0, 9.0));
    }

    #[test]
    fn class_fractions_count_every_class_even_unseen_ones() {
        assert_eq!(class_fractions(&[0, 2, 2, 2], 3), [0.25, 0.0, 0.75]);
        assert_eq!(class_fractions(&[], 2), [0.0, 0.0]);
    }

    #[test]
    fn latency_is_the_median_and_p99_in_microseconds() {
        let times: Vec<u64> = (1..=101).map(|i| i * 1000).collect();
        let l = latency(&times, "tract");
        assert_eq!((l.median_us, l.p99_us, l.runs), (51.0, 100.0, 101));
        assert!(latency(&[], "tract").median_us.is_nan());
    }

    proptest! {
        #[test]
        fn quantiles_are_sorted_and_bounded_by_the_extremes(
            values in proptest::collection::vec(-1e6f64..1e6, 1..200)
        ) {
            let q = quantiles_101(&values);
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            prop_assert_eq!(q[0], min);
            prop_assert_eq!(q[100], max);
            prop_assert!(q.windows(2).all(|w| w[0] <= w[1]));
        }
    }
}
