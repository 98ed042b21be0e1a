//! The statistics against values computed once with scipy 1.14.1 / numpy 2.1.3
//! (`reference/make_expected.py` → `tests/expected.json`).
//!
//! Tolerances (absolute unless said):
//! * KS statistic: 1e-12 (both are ratios of counts).
//! * KS exact p-value: 1e-10 + 1e-8 relative (same algorithm, same float operations order).
//! * KS asymptotic p-value, KS against a profile and `kstwo.sf` for `n > 140`: 1e-6 + 1e-4
//!   relative (measured: ≤ 3e-7, most ≤ 1e-13). For `n ≤ 140` scipy uses a matrix method
//!   (Durbin, Pomeranz) where we use Pelz–Good: 1e-5 for `20 < n ≤ 140` (measured ≤ 5e-6),
//!   2e-3 for `n ≤ 20` (measured ≤ 1.4e-3 at `n = 5`).
//! * Wasserstein between samples: 1e-12 relative. Against a profile: 1e-5 relative
//!   (the Python side integrates numerically with 2,000,000 points).
//! * PSI: 1e-12. Jensen–Shannon distance: 1e-12.
//! * Standard deviation of a profile: 1e-5 relative (numerical integral on the Python side).

mod common;

use common::{draw_checked, expected};
use reflex_drift::stats::jensen_shannon::jensen_shannon_distance;
use reflex_drift::stats::kolmogorov::kstwo_sf;
use reflex_drift::stats::ks::{ks_2samp, ks_against_profile, KsMethod};
use reflex_drift::stats::psi::psi;
use reflex_drift::stats::wasserstein::{wasserstein, wasserstein_samples};
use reflex_drift::{Cdf, QuantileProfile};
use serde_json::Value;

fn f(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

fn close(actual: f64, expected: f64, abs: f64, rel: f64) -> bool {
    (actual - expected).abs() <= abs + rel * expected.abs()
}

#[test]
fn ks_2samp_matches_scipy_statistic_p_value_and_method() {
    let cases = expected()["ks_2samp"].as_array().unwrap().clone();
    assert!(cases.len() >= 10);
    for case in &cases {
        let a = draw_checked(&case["a"], &case["a_check"]);
        let b = draw_checked(&case["b"], &case["b_check"]);
        let r = ks_2samp(&a, &b).unwrap();
        let (n1, n2) = (a.len(), b.len());
        assert!(
            close(r.statistic, f(&case["statistic"]), 1e-12, 0.0),
            "{n1}x{n2}: D {} vs scipy {}",
            r.statistic,
            case["statistic"]
        );
        let method = match r.method {
            KsMethod::Exact => "exact",
            KsMethod::Asymptotic => "asymptotic",
        };
        assert_eq!(method, case["method"].as_str().unwrap(), "{n1}x{n2}");
        let (abs, rel) = match r.method {
            KsMethod::Exact => (1e-10, 1e-8),
            KsMethod::Asymptotic => (1e-6, 1e-4),
        };
        assert!(
            close(r.p_value, f(&case["p_value"]), abs, rel),
            "{n1}x{n2}: p {} vs scipy {}",
            r.p_value,
            case["p_value"]
        );
    }
}

#[test]
fn kstwo_sf_matches_scipy_within_the_stated_tolerances() {
    for case in expected()["kstwo_sf"].as_array().unwrap() {
        let n = case["n"].as_u64().unwrap();
        let d = f(&case["d"]);
        let want = f(&case["sf"]);
        let got = kstwo_sf(d, n);
        // Pelz–Good replaces scipy's matrix methods for n ≤ 140 (see kolmogorov.rs).
        let (abs, rel) = match n {
            0..=20 => (2e-3, 0.0),
            21..=140 => (1e-5, 0.0),
            _ => (1e-6, 1e-4),
        };
        assert!(
            close(got, want, abs, rel),
            "n={n} d={d}: {got} vs scipy {want}"
        );
    }
}

fn profile_of(case: &Value) -> QuantileProfile {
    let q: Vec<f64> = serde_json::from_value(case["reference_quantiles"].clone()).unwrap();
    let n = case["reference"]["n"].as_u64().unwrap();
    QuantileProfile::new(q, n).unwrap()
}

#[test]
fn ks_against_a_quantile_profile_matches_scipy_kstest_on_the_interpolated_cdf() {
    for case in expected()["ks_profile"].as_array().unwrap() {
        let profile = profile_of(case);
        let x = draw_checked(&case["sample"], &case["sample_check"]);
        let cdf = Cdf::from_sample(&x).unwrap();
        let r = ks_against_profile(&cdf, x.len() as u64, &profile).unwrap();
        assert!(
            close(r.statistic, f(&case["statistic"]), 1e-12, 0.0),
            "n={}: D {} vs scipy {}",
            x.len(),
            r.statistic,
            case["statistic"]
        );
        assert!(
            close(r.p_value, f(&case["p_value"]), 1e-6, 1e-4),
            "n={}: p {} vs scipy {}",
            x.len(),
            r.p_value,
            case["p_value"]
        );
    }
}

#[test]
fn wasserstein_between_samples_matches_scipy() {
    for case in expected()["wasserstein"].as_array().unwrap() {
        let spec_a: common::Spec = serde_json::from_value(case["a"].clone()).unwrap();
        let spec_b: common::Spec = serde_json::from_value(case["b"].clone()).unwrap();
        let w = wasserstein_samples(&common::draw(&spec_a), &common::draw(&spec_b)).unwrap();
        let want = f(&case["distance"]);
        assert!(close(w, want, 0.0, 1e-12), "{w} vs scipy {want}");
    }
}

#[test]
fn wasserstein_against_a_profile_matches_the_numerical_integral_of_quantile_differences() {
    for case in expected()["wasserstein_profile"].as_array().unwrap() {
        let profile = profile_of(case);
        let x = draw_checked(&case["sample"], &case["sample_check"]);
        let w = wasserstein(&Cdf::from_sample(&x).unwrap(), profile.cdf());
        let want = f(&case["distance"]);
        assert!(close(w, want, 0.0, 1e-5), "{w} vs numpy {want}");
    }
}

#[test]
fn psi_matches_the_numpy_implementation_of_the_same_definition() {
    for case in expected()["psi"].as_array().unwrap() {
        let profile = profile_of(case);
        let x = draw_checked(&case["sample"], &case["sample_check"]);
        let v = psi(&profile, &Cdf::from_sample(&x).unwrap(), 10).unwrap();
        let want = f(&case["psi"]);
        assert!(close(v, want, 1e-12, 0.0), "{v} vs numpy {want}");
    }
}

#[test]
fn jensen_shannon_distance_matches_scipy_base_2() {
    for case in expected()["jensen_shannon"].as_array().unwrap() {
        let p: Vec<f64> = serde_json::from_value(case["p"].clone()).unwrap();
        let q: Vec<f64> = serde_json::from_value(case["q"].clone()).unwrap();
        let d = jensen_shannon_distance(&p, &q).unwrap();
        let want = f(&case["distance"]);
        assert!(
            close(d, want, 1e-12, 0.0),
            "{p:?} {q:?}: {d} vs scipy {want}"
        );
    }
}

#[test]
fn the_standard_deviation_of_a_profile_matches_the_numerical_one() {
    let cases = expected()["profile_std"].as_array().unwrap().clone();
    assert!(!cases.is_empty());
    for case in &cases {
        let q: Vec<f64> = serde_json::from_value(case["reference_quantiles"].clone()).unwrap();
        let got = QuantileProfile::new(q, 1).unwrap().std();
        let want = f(&case["std"]);
        assert!(close(got, want, 0.0, 1e-5), "{got} vs numpy {want}");
    }
}
