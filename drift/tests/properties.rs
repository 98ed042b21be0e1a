//! Invariants of the statistics and the sketch, on generated inputs (proptest):
//! symmetry, zero on identical inputs, bounds, and the sketch's exact count and bounded
//! memory.

use proptest::prelude::*;
use reflex_drift::stats::jensen_shannon::jensen_shannon_distance;
use reflex_drift::stats::ks::{ks_2samp, ks_statistic};
use reflex_drift::stats::psi::{psi, psi_from_fractions};
use reflex_drift::stats::wasserstein::{wasserstein, wasserstein_samples};
use reflex_drift::{Cdf, QuantileProfile, QuantileSketch};

fn sample() -> impl Strategy<Value = Vec<f64>> {
    // Small integers scaled: plenty of ties.
    prop::collection::vec((-50i32..50).prop_map(|v| f64::from(v) * 0.25), 1..60)
}

fn quantiles() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(0.0f64..5.0, 2..30).prop_map(|steps| {
        let mut acc = -10.0;
        steps
            .into_iter()
            .map(|s| {
                acc += s;
                acc
            })
            .collect()
    })
}

fn fractions() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(0.0f64..10.0, 4)
        .prop_filter("not all zero", |v| v.iter().sum::<f64>() > 0.0)
}

proptest! {
    #[test]
    fn ks_is_symmetric_bounded_and_its_p_value_is_a_probability(a in sample(), b in sample()) {
        let ab = ks_2samp(&a, &b).unwrap();
        let ba = ks_2samp(&b, &a).unwrap();
        prop_assert_eq!(ab.statistic, ba.statistic);
        prop_assert!((ab.p_value - ba.p_value).abs() < 1e-12);
        prop_assert!((0.0..=1.0).contains(&ab.statistic));
        prop_assert!((0.0..=1.0).contains(&ab.p_value));
    }

    #[test]
    fn a_sample_against_itself_has_zero_ks_and_zero_wasserstein(a in sample()) {
        let r = ks_2samp(&a, &a).unwrap();
        prop_assert_eq!(r.statistic, 0.0);
        prop_assert_eq!(r.p_value, 1.0);
        prop_assert_eq!(wasserstein_samples(&a, &a).unwrap(), 0.0);
    }

    #[test]
    fn wasserstein_is_symmetric_non_negative_and_a_shift_costs_the_shift(
        a in sample(), b in sample(), shift in -5.0f64..5.0,
    ) {
        let ab = wasserstein_samples(&a, &b).unwrap();
        let ba = wasserstein_samples(&b, &a).unwrap();
        prop_assert!(ab >= 0.0);
        prop_assert!((ab - ba).abs() <= 1e-9 * (1.0 + ab));
        let moved: Vec<f64> = a.iter().map(|v| v + shift).collect();
        let w = wasserstein_samples(&a, &moved).unwrap();
        prop_assert!((w - shift.abs()).abs() <= 1e-9 * (1.0 + shift.abs()), "{} vs {}", w, shift);
    }

    #[test]
    fn ks_and_wasserstein_against_a_profile_are_symmetric_and_bounded(
        q in quantiles(), a in sample(),
    ) {
        let profile = Cdf::from_quantiles(&q).unwrap();
        let cdf = Cdf::from_sample(&a).unwrap();
        let d = ks_statistic(&cdf, &profile);
        prop_assert_eq!(d, ks_statistic(&profile, &cdf));
        prop_assert!((0.0..=1.0).contains(&d));
        let w = wasserstein(&cdf, &profile);
        prop_assert!(w >= 0.0);
        prop_assert!((w - wasserstein(&profile, &cdf)).abs() <= 1e-9 * (1.0 + w));
        prop_assert_eq!(ks_statistic(&profile, &profile), 0.0);
        prop_assert_eq!(wasserstein(&profile, &profile), 0.0);
    }

    #[test]
    fn psi_is_non_negative_and_zero_for_the_reference_itself(q in quantiles(), a in sample()) {
        let profile = QuantileProfile::new(q, 1000).unwrap();
        let v = psi(&profile, &Cdf::from_sample(&a).unwrap(), 10).unwrap();
        prop_assert!(v >= 0.0 && v.is_finite(), "{}", v);
        prop_assert!(psi(&profile, profile.cdf(), 10).unwrap().abs() < 1e-12);
    }

    #[test]
    fn psi_from_fractions_is_symmetric(p in fractions(), q in fractions()) {
        let (sp, sq) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
        let p: Vec<f64> = p.iter().map(|v| v / sp).collect();
        let q: Vec<f64> = q.iter().map(|v| v / sq).collect();
        let pq = psi_from_fractions(&p, &q).unwrap();
        let qp = psi_from_fractions(&q, &p).unwrap();
        prop_assert!((pq - qp).abs() <= 1e-9 * (1.0 + pq));
    }

    #[test]
    fn jensen_shannon_is_symmetric_in_zero_one_and_zero_on_identical(
        p in fractions(), q in fractions(),
    ) {
        let pq = jensen_shannon_distance(&p, &q).unwrap();
        let qp = jensen_shannon_distance(&q, &p).unwrap();
        prop_assert!((pq - qp).abs() < 1e-12);
        prop_assert!((0.0..=1.0).contains(&pq));
        prop_assert!(jensen_shannon_distance(&p, &p).unwrap() < 1e-7);
    }

    #[test]
    fn a_sketch_counts_exactly_keeps_min_and_max_and_stays_within_its_memory_bound(
        values in prop::collection::vec(-1e6f64..1e6, 1..5000), k in 8u32..64,
    ) {
        let mut s = QuantileSketch::new(k).unwrap();
        for &v in &values {
            s.insert(v).unwrap();
            prop_assert!(s.retained() <= QuantileSketch::max_retained(k));
        }
        prop_assert_eq!(s.count(), values.len() as u64);
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        prop_assert_eq!(s.min(), Some(min));
        prop_assert_eq!(s.max(), Some(max));
        let weight: f64 = s.weighted_values().iter().map(|(_, w)| w).sum();
        prop_assert_eq!(weight, values.len() as f64);
    }

    #[test]
    fn merging_sketches_adds_counts_in_either_order(
        a in prop::collection::vec(-100f64..100.0, 0..2000),
        b in prop::collection::vec(-100f64..100.0, 0..2000),
    ) {
        let fill = |vals: &[f64]| {
            let mut s = QuantileSketch::new(32).unwrap();
            for &v in vals {
                s.insert(v).unwrap();
            }
            s
        };
        let (sa, sb) = (fill(&a), fill(&b));
        let mut ab = sa.clone();
        ab.merge(&sb).unwrap();
        let mut ba = sb.clone();
        ba.merge(&sa).unwrap();
        prop_assert_eq!(ab.count(), (a.len() + b.len()) as u64);
        prop_assert_eq!(ba.count(), ab.count());
        prop_assert_eq!(ab.min(), ba.min());
        prop_assert_eq!(ab.max(), ba.max());
        prop_assert!(ab.retained() <= QuantileSketch::max_retained(32));
    }
}
