//! Properties of `reflex_models::stats` over random windows of every shape from 1 × 1 to
//! 8 × 1024: the declared form of today's 13 features reproduces `features::compute`
//! bit for bit, each statistic is independent of what else is asked for, and the
//! invariants every statistic must keep.

use proptest::prelude::*;
use reflex_models::stats::{Stat, WindowStats};
use reflex_models::{features, FEATURE_NAMES, WINDOW_LEN};

fn spec(stats: &[Stat], channels: usize, scalars: &[&str]) -> WindowStats {
    WindowStats {
        stats: stats.to_vec(),
        channels: (0..channels).map(|c| format!("c{c}")).collect(),
        scalars: scalars.iter().map(|s| s.to_string()).collect(),
    }
}

fn the_13_features() -> WindowStats {
    WindowStats {
        stats: vec![Stat::Mean, Stat::Std, Stat::Peak, Stat::Kurtosis],
        channels: vec!["x".into(), "y".into(), "z".into()],
        scalars: vec!["temperature".into()],
    }
}

/// Any finite f32 (both signs, zeros, subnormals, up to ±f32::MAX) half of the time,
/// sensor-like values in ±16 the other half.
fn value() -> impl Strategy<Value = f32> {
    use proptest::num::f32::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    prop_oneof![
        -16.0f32..16.0,
        POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO,
    ]
}

/// `(channels, samples, window)` for every shape from 1 × 1 to 8 × 1024.
fn window() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..=8, 1usize..=1024).prop_flat_map(|(channels, samples)| {
        (
            Just(channels),
            Just(samples),
            prop::collection::vec(value(), channels * samples),
        )
    })
}

#[test]
fn the_declared_13_features_are_named_exactly_as_the_fixed_ones() {
    assert_eq!(the_13_features().names(), FEATURE_NAMES);
}

#[test]
fn kurt_is_accepted_for_kurtosis_in_a_declared_spec() {
    let spec: WindowStats = serde_json::from_str(
        r#"{"stats": ["mean", "std", "peak", "kurt"], "channels": ["x", "y", "z"],
            "scalars": ["temperature"]}"#,
    )
    .unwrap();
    assert_eq!(spec, the_13_features());
}

#[test]
fn a_window_of_negative_zeros_has_the_same_mean_bits_as_the_fixed_features() {
    let window = [-0.0f32; WINDOW_LEN];
    let fixed = features::compute(&window, 0.0);
    let mut out = Vec::new();
    the_13_features()
        .compute(&window, 64, &[0.0], &mut out)
        .unwrap();
    assert!(fixed[0].is_sign_negative(), "the reference is -0.0");
    assert_eq!(out[0].to_bits(), fixed[0].to_bits());
    spec(&Stat::ALL, 3, &[])
        .compute(&window, 64, &[], &mut out)
        .unwrap();
    assert_eq!(
        out[0].to_bits(),
        fixed[0].to_bits(),
        "with the extrema pass too"
    );
}

proptest! {
    /// Same summation order as `features::compute`: equal to the bit, not to a tolerance.
    #[test]
    fn the_declared_13_features_equal_the_fixed_ones_bit_for_bit(
        window in prop::collection::vec(value(), WINDOW_LEN),
        temperature in -40.0f32..125.0,
    ) {
        let fixed = features::compute(window.as_slice().try_into().unwrap(), temperature);
        let mut out = Vec::new();
        the_13_features()
            .compute(&window, 64, &[f64::from(temperature)], &mut out)
            .unwrap();
        prop_assert_eq!(out.len(), fixed.len());
        for (i, (a, b)) in out.iter().zip(&fixed).enumerate() {
            prop_assert_eq!(a.to_bits(), b.to_bits(), "{} = {} vs {}", FEATURE_NAMES[i], a, b);
        }
    }

    /// Asking for every statistic at once gives, for each, the bits it has when asked for
    /// alone, at the stat-major position its name has.
    #[test]
    fn each_statistic_is_the_same_asked_alone_or_with_all_others(
        (channels, samples, window) in window(),
    ) {
        let all = spec(&Stat::ALL, channels, &["s"]);
        let mut out = Vec::new();
        all.compute(&window, samples, &[2.5], &mut out).unwrap();
        prop_assert_eq!(out.len(), all.names().len());
        prop_assert_eq!(out[out.len() - 1], 2.5);
        let names = all.names();
        let mut alone = Vec::new();
        for (s, &stat) in Stat::ALL.iter().enumerate() {
            spec(&[stat], channels, &[]).compute(&window, samples, &[], &mut alone).unwrap();
            prop_assert_eq!(alone.len(), channels);
            for (c, value) in alone.iter().enumerate() {
                let i = s * channels + c;
                prop_assert_eq!(&names[i], &format!("{}_c{c}", stat.prefix()));
                prop_assert_eq!(out[i].to_bits(), value.to_bits(), "{}", names[i]);
            }
        }
    }

    #[test]
    fn every_statistic_keeps_its_invariants(
        (channels, samples, window) in window(),
    ) {
        let mut out = Vec::new();
        spec(&Stat::ALL, channels, &[]).compute(&window, samples, &[], &mut out).unwrap();
        let at = |stat: Stat, c: usize| {
            let s = Stat::ALL.iter().position(|&x| x == stat).unwrap();
            out[s * channels + c]
        };
        for (c, values) in window.chunks_exact(samples).enumerate() {
            let (mean, std, rms) = (at(Stat::Mean, c), at(Stat::Std, c), at(Stat::Rms, c));
            let (min, max) = (at(Stat::Min, c), at(Stat::Max, c));
            let lowest = values.iter().copied().fold(f32::INFINITY, f32::min);
            let highest = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            prop_assert_eq!(min, f64::from(lowest));
            prop_assert_eq!(max, f64::from(highest));
            prop_assert!(min <= mean && mean <= max, "{} <= {} <= {}", min, mean, max);
            prop_assert!(std >= 0.0 && rms >= 0.0, "std {} rms {}", std, rms);
            prop_assert_eq!(at(Stat::P2p, c), max - min);
            prop_assert_eq!(at(Stat::PeakAbs, c), max.abs().max(min.abs()));
            let peak = at(Stat::Peak, c);
            prop_assert!(peak >= 0.0 && peak <= max - min, "peak {} p2p {}", peak, max - min);
            prop_assert!(at(Stat::Kurtosis, c) >= 0.0, "kurtosis {}", at(Stat::Kurtosis, c));
            // skew² ≤ kurtosis − 1 (Pearson's inequality), with relative rounding room.
            let skew = at(Stat::Skew, c);
            let kurt = at(Stat::Kurtosis, c);
            if std > 0.0 {
                prop_assert!(kurt >= 1.0 - 1e-9, "kurtosis {}", kurt);
                let room = 1e-9 * kurt;
                prop_assert!(skew * skew <= kurt - 1.0 + room, "skew {} kurtosis {}", skew, kurt);
            }
            // peak_abs ≥ rms exactly; the sum of squares may round up by a few ulps.
            if rms > 0.0 {
                prop_assert!(at(Stat::Crest, c) >= 1.0 - 1e-12, "crest {}", at(Stat::Crest, c));
            } else {
                prop_assert_eq!(at(Stat::Crest, c), 0.0);
            }
        }
    }

    #[test]
    fn any_shape_length_or_scalar_count_is_an_answer_or_an_error_never_a_panic(
        channels in 0usize..=4,
        samples in 0usize..=8,
        len in 0usize..=40,
        scalars in 0usize..=2,
    ) {
        let s = spec(&Stat::ALL, channels, &["t"]);
        let mut out = Vec::new();
        let result = s.compute(&vec![1.0; len], samples, &vec![0.0; scalars], &mut out);
        let fits = channels * samples == len && (channels == 0 || samples > 0) && scalars == 1;
        prop_assert_eq!(result.is_ok(), fits, "{:?}", result);
        if fits {
            prop_assert_eq!(out.len(), s.names().len());
        }
    }

    #[test]
    fn a_constant_window_has_no_spread_kurtosis_or_skew(
        (channels, samples) in (1usize..=8, 1usize..=1024),
        v in value(),
    ) {
        let window = vec![v; channels * samples];
        let mut out = Vec::new();
        let stats = [Stat::Mean, Stat::Std, Stat::Peak, Stat::P2p, Stat::Kurtosis, Stat::Skew];
        spec(&stats, channels, &[]).compute(&window, samples, &[], &mut out).unwrap();
        for c in 0..channels {
            let at = |s: usize| out[s * channels + c];
            prop_assert_eq!(at(0), f64::from(v));
            for (s, stat) in stats.iter().enumerate().skip(1) {
                prop_assert_eq!(at(s), 0.0, "{:?}", stat);
            }
        }
    }
}
