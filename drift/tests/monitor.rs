//! The windowed monitor on deterministic synthetic data, with a fake clock.
//!
//! Set-up: 13 features, each a (near-)normal with its own mean and spread (some means
//! negative), reference profiles of 101 quantiles from 4000 reference draws, 4 classes with
//! the edge manifest's fractions; 1000 events per 60 s window; defaults otherwise (KS p < 0.05
//! and PSI ≥ 0.2 per feature, raise after 3 windows, clear after 3).
//!
//! Figures asserted here:
//! * a 1σ shift of one feature from window 5 raises that feature's alert on window 7 — the
//!   third shifted window, i.e. within 3 windows — dated from window 5; no other feature
//!   alerts;
//! * a tenth of the events (one device in ten) moved by 3σ on the three `mean_*` features
//!   raises those features' alerts on the third drifted window, although their PSI stays
//!   below 0.2 (so a KS-and-PSI rule would stay silent, which is also asserted);
//! * clean data over 10 seeds × 30 windows raises no alert at all (0 false alarms in 300
//!   windows, 3900 feature-windows); by KS alone about 5% of clean feature-windows are
//!   flagged, as a calibrated test should (asserted between 2% and 9%; measured 5.2%), by
//!   the default rule under 2% (measured 0.9%: single windows, never three in a row);
//! * drift computed from a window's sketches (on the board) agrees with the exact drift of its
//!   events (in the cloud): KS statistic within 0.01, PSI within `0.01 + 5%`, Wasserstein
//!   within 0.02 σ, same PSI verdicts away from the threshold; likewise for windows of 3
//!   boards merged;
//! * alternating drifted/clean windows never raise, and once raised never clear; windows too
//!   small to judge neither raise nor clear.

mod common;

use std::sync::Arc;

use common::{normal_sample, SplitMix};
use reflex_drift::monitor::{
    window_drift, AlertEvent, Monitor, MonitorConfig, Observation, RouteMonitor, Subject,
    WindowReport, WindowSummary,
};
use reflex_drift::profile::quantiles_101;
use reflex_drift::stats::verdict::{feature_drift, DriftThresholds, FeatureDrift, FeatureRule};
use reflex_drift::{Cdf, DriftError, FeatureReference, QuantileProfile, QuantileSketch, Reference};

const FEATURES: usize = 13;
const NAMES: [&str; FEATURES] = [
    "mean_x",
    "mean_y",
    "mean_z",
    "std_x",
    "std_y",
    "std_z",
    "peak_x",
    "peak_y",
    "peak_z",
    "kurt_x",
    "kurt_y",
    "kurt_z",
    "temperature",
];
const CLASS_FRACTIONS: [f64; 4] = [0.26075, 0.245, 0.24875, 0.2455];
const WINDOW_MS: u64 = 60_000;
const EVENTS_PER_WINDOW: u64 = 1000;

fn loc_scale(feature: usize) -> (f64, f64) {
    let loc = [
        0.003, 0.008, -0.001, 0.09, 0.1, 0.05, 0.18, 0.22, 0.13, 2.3, 2.4, 2.7, 49.7,
    ][feature];
    let scale = [
        0.015, 0.02, 0.008, 0.05, 0.07, 0.04, 0.09, 0.14, 0.08, 0.55, 0.64, 0.53, 4.7,
    ][feature];
    (loc, scale)
}

fn reference() -> Arc<Reference> {
    reference_shifted(0, 0.0)
}

/// How a window's events are drawn.
#[derive(Clone, Copy)]
struct Scenario {
    /// Shift, in σ, per feature.
    shift: [f64; FEATURES],
    /// Percentage of events (devices) the shift applies to.
    shifted_percent: u64,
    classes: [f64; 4],
    fallback_rate: f64,
    deadline_miss_rate: f64,
    events: u64,
}

impl Scenario {
    fn clean() -> Scenario {
        Scenario {
            shift: [0.0; FEATURES],
            shifted_percent: 100,
            classes: CLASS_FRACTIONS,
            fallback_rate: 0.01,
            deadline_miss_rate: 0.002,
            events: EVENTS_PER_WINDOW,
        }
    }

    fn shifted(features: &[usize], sigmas: f64) -> Scenario {
        let mut s = Scenario::clean();
        for &f in features {
            s.shift[f] = sigmas;
        }
        s
    }
}

struct Field {
    rng: SplitMix,
    monitor: RouteMonitor,
    window: u64,
    /// Every feature vector recorded, for exact comparisons.
    raw: Vec<[f64; FEATURES]>,
}

impl Field {
    fn new(seed: u64, config: MonitorConfig) -> Field {
        Field {
            rng: SplitMix::new(seed),
            monitor: RouteMonitor::new("press-1", reference(), config, 0).unwrap(),
            window: 0,
            raw: Vec::new(),
        }
    }

    /// Plays one window of `scenario` and returns the report of the window it closes
    /// (the previous one), if any.
    fn play(&mut self, scenario: Scenario) -> Option<WindowReport> {
        let mut report = None;
        let start = self.window * WINDOW_MS;
        for i in 0..scenario.events {
            let now = start + i * (WINDOW_MS / scenario.events.max(1));
            let mut features = [0.0; FEATURES];
            let shifted = i % 100 < scenario.shifted_percent;
            for (f, slot) in features.iter_mut().enumerate() {
                let (loc, scale) = loc_scale(f);
                let shift = if shifted { scenario.shift[f] } else { 0.0 };
                *slot = loc + scale * (self.rng.normal() + shift);
            }
            let u = self.rng.uniform();
            let mut class = 0;
            let mut acc = 0.0;
            for (c, p) in scenario.classes.iter().enumerate() {
                acc += p;
                class = c;
                if u < acc {
                    break;
                }
            }
            self.raw.push(features);
            let fallback = self.rng.uniform() < scenario.fallback_rate;
            let missed = self.rng.uniform() < scenario.deadline_miss_rate;
            let obs = Observation {
                features: Some(&features),
                model_class: (!fallback).then_some(class),
                fallback,
                deadline_missed: missed,
            };
            if let Some(r) = self.monitor.record(now, &obs).unwrap() {
                assert!(report.is_none(), "two windows closed in one window");
                report = Some(r);
            }
        }
        self.window += 1;
        report
    }

    /// Plays windows and collects every alert event, with the index of the window that
    /// produced it; closes the last window with a tick.
    fn run(&mut self, scenarios: &[Scenario]) -> Vec<(u64, AlertEvent)> {
        let mut events = Vec::new();
        let mut reports = Vec::new();
        for s in scenarios {
            reports.extend(self.play(*s));
        }
        reports.extend(self.monitor.tick(self.window * WINDOW_MS).unwrap());
        for r in reports {
            for e in r.alerts {
                events.push((r.summary.index, e));
            }
        }
        events
    }
}

fn raised(events: &[(u64, AlertEvent)]) -> Vec<(u64, Subject)> {
    events
        .iter()
        .filter_map(|(w, e)| match e {
            AlertEvent::Raised(a) => Some((*w, a.subject.clone())),
            AlertEvent::Cleared(_) => None,
        })
        .collect()
}

#[test]
fn a_one_sigma_shift_of_one_feature_raises_its_alert_on_the_third_shifted_window() {
    let mut field = Field::new(1, MonitorConfig::default());
    let mut scenarios = vec![Scenario::clean(); 5];
    scenarios.extend(vec![Scenario::shifted(&[3], 1.0); 6]);
    let events = field.run(&scenarios);
    let raised = raised(&events);
    assert_eq!(
        raised,
        vec![(7, Subject::Feature("std_x".into()))],
        "events: {events:#?}"
    );
    let alert = events[0].1.alert();
    assert_eq!(alert.since.index, 5);
    assert_eq!(alert.since.start_ms, 5 * WINDOW_MS);
    let message = events[0].1.to_string();
    assert!(
        message.starts_with("raised: route press-1: feature std_x: wasserstein / reference std ")
            && message.contains("≥ 0.1000 (ks p-value ")
            && message.contains("< 0.0500) in window 7")
            && message.contains("breaching since window 5"),
        "{message}"
    );
}

#[test]
fn one_device_in_ten_moving_far_raises_alerts_though_psi_stays_below_its_threshold() {
    let mut minority = Scenario::shifted(&[0, 1, 2], 3.0);
    minority.shifted_percent = 10;
    let mut scenarios = vec![Scenario::clean(); 3];
    scenarios.extend(vec![minority; 5]);

    let mut field = Field::new(9, MonitorConfig::default());
    let mut reports = Vec::new();
    for s in &scenarios {
        reports.extend(field.play(*s));
    }
    reports.extend(field.monitor.tick(field.window * WINDOW_MS).unwrap());
    let mut raised = Vec::new();
    for r in &reports {
        if r.summary.index >= 3 {
            let drift = r.summary.drift.as_ref().unwrap();
            for f in &drift.features[..3] {
                assert!(f.psi < 0.2, "window {}: {f:?}", r.summary.index);
                assert!(f.drifted, "window {}: {f:?}", r.summary.index);
            }
        }
        for e in &r.alerts {
            if let AlertEvent::Raised(a) = e {
                raised.push((r.summary.index, a.subject.clone(), a.since.index));
            }
        }
    }
    let feature = |n: &str| Subject::Feature(n.into());
    assert_eq!(
        raised,
        vec![
            (5, feature("mean_x"), 3),
            (5, feature("mean_y"), 3),
            (5, feature("mean_z"), 3),
        ]
    );

    let ks_and_psi = MonitorConfig {
        thresholds: DriftThresholds {
            rule: FeatureRule::KsAndPsi,
            ..DriftThresholds::default()
        },
        ..MonitorConfig::default()
    };
    let events = Field::new(9, ks_and_psi).run(&scenarios);
    assert!(events.is_empty(), "{events:#?}");
}

#[test]
fn shifting_most_features_raises_the_dataset_alert_within_three_windows() {
    let mut field = Field::new(2, MonitorConfig::default());
    let mut scenarios = vec![Scenario::clean(); 4];
    scenarios.extend(vec![Scenario::shifted(&[0, 1, 2, 3, 4, 5, 6], 1.0); 4]);
    let events = field.run(&scenarios);
    let dataset: Vec<u64> = raised(&events)
        .into_iter()
        .filter(|(_, s)| *s == Subject::Dataset)
        .map(|(w, _)| w)
        .collect();
    assert_eq!(dataset, vec![6], "events: {events:#?}");
}

#[test]
fn a_skewed_class_distribution_raises_the_predicted_class_alert_within_three_windows() {
    let mut field = Field::new(3, MonitorConfig::default());
    let mut scenarios = vec![Scenario::clean(); 4];
    let mut skewed = Scenario::clean();
    skewed.classes = [0.7, 0.1, 0.1, 0.1];
    scenarios.extend(vec![skewed; 4]);
    let events = field.run(&scenarios);
    assert_eq!(
        raised(&events),
        vec![(6, Subject::PredictedClasses)],
        "events: {events:#?}"
    );
}

#[test]
fn clean_data_over_ten_seeds_raises_no_alert_and_ks_alone_flags_about_five_percent() {
    let windows = 30;
    let mut alerts = 0;
    let (mut ks_flags, mut feature_windows, mut drifted) = (0, 0, 0);
    for seed in 100..110 {
        let mut field = Field::new(seed, MonitorConfig::default());
        let mut reports = Vec::new();
        for _ in 0..windows {
            reports.extend(field.play(Scenario::clean()));
        }
        reports.extend(field.monitor.tick(field.window * WINDOW_MS).unwrap());
        assert_eq!(reports.len(), windows);
        for r in &reports {
            alerts += r.alerts.len();
            let drift = r.summary.drift.as_ref().expect("1000 events are judged");
            assert!(!drift.dataset.drifted);
            for f in &drift.features {
                feature_windows += 1;
                ks_flags += usize::from(f.ks_drift);
                drifted += usize::from(f.drifted);
                assert!(f.psi < 0.1, "clean PSI {} for {}", f.psi, f.name);
            }
        }
    }
    assert_eq!(alerts, 0, "false alarms over 10 seeds × {windows} windows");
    assert_eq!(feature_windows, 10 * windows * FEATURES);
    let share = ks_flags as f64 / feature_windows as f64;
    println!(
        "KS alone flags {ks_flags} of {feature_windows} clean feature-windows ({share:.3}); \
         the default rule {drifted}"
    );
    assert!(
        drifted * 50 < feature_windows,
        "the default rule flags {drifted} of {feature_windows} clean feature-windows"
    );
    assert!(
        (0.02..=0.09).contains(&share),
        "KS flags {share} of clean feature-windows"
    );
}

#[test]
fn alternating_drift_neither_raises_nor_clears_so_alerts_do_not_flap() {
    let mut field = Field::new(4, MonitorConfig::default());
    let drifted = Scenario::shifted(&[9], 1.5);
    let clean = Scenario::clean();
    let mut small = Scenario::shifted(&[9], 1.5);
    small.events = 100; // below min_events: not judged
    let mut scenarios = Vec::new();
    for _ in 0..6 {
        scenarios.extend([drifted, clean]);
    }
    // Two drifted windows, an unjudged small one, a third drifted one: raises.
    scenarios.extend([drifted, drifted, small, drifted]);
    for _ in 0..6 {
        scenarios.extend([clean, drifted]);
    }
    scenarios.extend([clean, clean, small, clean, clean]);
    let events = field.run(&scenarios);
    let kurt: Vec<(u64, bool)> = events
        .iter()
        .filter(|(_, e)| e.alert().subject == Subject::Feature("kurt_x".into()))
        .map(|(w, e)| (*w, matches!(e, AlertEvent::Raised(_))))
        .collect();
    // Window 15 is the third drifted window (12, 13, 15; 14 too small). Windows 28..=32 are
    // clean, clean, small, clean: cleared on the third judged clean window, 31.
    assert_eq!(kurt, vec![(15, true), (31, false)], "events: {events:#?}");
    assert!(events
        .iter()
        .all(|(_, e)| matches!(e.alert().subject, Subject::Feature(ref n) if n == "kurt_x")));
}

#[test]
fn a_deadline_miss_rate_above_its_objective_raises_an_slo_alert() {
    let mut field = Field::new(5, MonitorConfig::default());
    let mut late = Scenario::clean();
    late.deadline_miss_rate = 0.05;
    let mut scenarios = vec![Scenario::clean(); 2];
    scenarios.extend(vec![late; 3]);
    scenarios.extend(vec![Scenario::clean(); 3]);
    let events = field.run(&scenarios);
    let slo: Vec<String> = events
        .iter()
        .filter(|(_, e)| e.alert().subject == Subject::DeadlineMisses)
        .map(|(_, e)| e.to_string())
        .collect();
    assert_eq!(slo.len(), 2, "{events:#?}");
    assert!(
        slo[0].starts_with("raised: route press-1: deadline misses: deadline miss rate 0.0")
            && slo[0].contains("> 0.0100 in window 4; breaching since window 2"),
        "{}",
        slo[0]
    );
    assert!(slo[1].starts_with("cleared:"), "{}", slo[1]);
    // The JSON reflexd publishes.
    let (_, raised) = events
        .iter()
        .find(|(_, e)| e.alert().subject == Subject::DeadlineMisses)
        .unwrap();
    let json = serde_json::to_value(raised).unwrap();
    assert_eq!(json["state"], "raised");
    assert_eq!(json["alert"]["route"], "press-1");
    assert_eq!(json["alert"]["subject"]["kind"], "deadline_misses");
    assert_eq!(
        json["alert"]["measurement"]["statistic"],
        "deadline_miss_rate"
    );
    assert_eq!(json["alert"]["since"]["index"], 2);
}

#[test]
fn a_fallback_rate_above_its_objective_raises_an_slo_alert_and_clears_when_it_falls() {
    let mut field = Field::new(6, MonitorConfig::default());
    // A fifth of the events answered by the fallback (objective 0.05) in windows 2..=4.
    let mut degraded = Scenario::clean();
    degraded.fallback_rate = 0.2;
    let mut scenarios = vec![Scenario::clean(); 2];
    scenarios.extend(vec![degraded; 3]);
    scenarios.extend(vec![Scenario::clean(); 3]);
    let events = field.run(&scenarios);
    let slo: Vec<&(u64, AlertEvent)> = events
        .iter()
        .filter(|(_, e)| e.alert().subject == Subject::Fallbacks)
        .collect();
    assert_eq!(slo.len(), 2, "{events:#?}");
    // Raised when the third degraded window (4) closes, cleared on the third clean one (7).
    let (raised_on, raised) = slo[0];
    let (cleared_on, cleared) = slo[1];
    assert_eq!((*raised_on, *cleared_on), (4, 7));
    assert!(matches!(raised, AlertEvent::Raised(_)));
    assert!(matches!(cleared, AlertEvent::Cleared(_)));
    let text = raised.to_string();
    assert!(
        text.starts_with("raised: route press-1: fallbacks: fallback rate 0.")
            && text.contains("> 0.0500 in window 4; breaching since window 2"),
        "{text}"
    );
    // Nothing else is raised: the features and classes stay clean, misses stay low.
    assert!(
        events
            .iter()
            .all(|(_, e)| e.alert().subject == Subject::Fallbacks),
        "{events:#?}"
    );
    // The JSON reflexd publishes: route, statistic, value against the objective, since.
    let json = serde_json::to_value(raised).unwrap();
    assert_eq!(json["state"], "raised");
    assert_eq!(json["alert"]["route"], "press-1");
    assert_eq!(json["alert"]["subject"]["kind"], "fallbacks");
    assert_eq!(json["alert"]["measurement"]["statistic"], "fallback_rate");
    let value = json["alert"]["measurement"]["value"].as_f64().unwrap();
    assert!((0.17..0.23).contains(&value), "fallback rate {value}");
    assert_eq!(json["alert"]["measurement"]["threshold"], 0.05);
    assert_eq!(json["alert"]["since"]["index"], 2);
    assert_eq!(json["alert"]["since"]["start_ms"], 2 * WINDOW_MS);
}

#[test]
fn memory_stays_bounded_over_300k_events_in_one_window() {
    let config = MonitorConfig {
        window_ms: 3_600_000,
        ..MonitorConfig::default()
    };
    let mut m = RouteMonitor::new("busy", reference(), config, 0).unwrap();
    let mut g = SplitMix::new(6);
    for i in 0..300_000u64 {
        let features: Vec<f64> = (0..FEATURES).map(|_| g.normal()).collect();
        let obs = Observation {
            features: Some(&features),
            model_class: Some((i % 4) as usize),
            fallback: false,
            deadline_missed: false,
        };
        assert!(m.record(i / 100, &obs).unwrap().is_none());
    }
    let report = m.tick(3_600_000).unwrap().expect("window closes");
    assert_eq!(report.summary.events, 300_000);
    for s in &report.summary.sketches {
        assert_eq!(s.count(), 300_000);
        assert!(
            s.retained() <= QuantileSketch::max_retained(s.k()),
            "{}",
            s.retained()
        );
    }
}

#[test]
fn bad_observations_are_errors_and_non_finite_features_are_counted_not_sketched() {
    let mut m = RouteMonitor::new("r", reference(), MonitorConfig::default(), 0).unwrap();
    let short = [0.0; 3];
    let obs = Observation {
        features: Some(&short),
        model_class: None,
        fallback: false,
        deadline_missed: false,
    };
    assert_eq!(
        m.record(1, &obs),
        Err(DriftError::FeatureCount {
            expected: 13,
            actual: 3
        })
    );
    let mut features = [1.0; FEATURES];
    features[2] = f64::NAN;
    let obs = Observation {
        features: Some(&features),
        model_class: Some(9),
        fallback: false,
        deadline_missed: false,
    };
    assert!(matches!(
        m.record(1, &obs),
        Err(DriftError::ClassOutOfRange {
            class: 9,
            classes: 4
        })
    ));
    assert_eq!(m.open_events(), 0);
    let obs = Observation {
        model_class: Some(1),
        ..obs
    };
    m.record(2, &obs).unwrap();
    let summary = m.tick(WINDOW_MS).unwrap().unwrap().summary;
    assert_eq!(summary.non_finite_values, 1);
    assert_eq!(summary.sketches[2].count(), 0);
    assert_eq!(summary.sketches[3].count(), 1);
    assert!(summary.drift.is_none(), "one event is not judged");
}

#[test]
fn a_window_summary_survives_a_json_round_trip() {
    let mut field = Field::new(7, MonitorConfig::default());
    field.play(Scenario::clean());
    let report = field.monitor.tick(WINDOW_MS).unwrap().unwrap();
    let json = serde_json::to_string(&report.summary).unwrap();
    let back = serde_json::from_str(&json).unwrap();
    assert_eq!(report.summary, back);
}

#[test]
fn invalid_configurations_are_refused() {
    for config in [
        MonitorConfig {
            window_ms: 0,
            ..MonitorConfig::default()
        },
        MonitorConfig {
            raise_after: 0,
            ..MonitorConfig::default()
        },
        MonitorConfig {
            fallback_objective: 1.5,
            ..MonitorConfig::default()
        },
        MonitorConfig {
            thresholds: DriftThresholds {
                ks_p_value: f64::NAN,
                rule: FeatureRule::Ks,
                ..DriftThresholds::default()
            },
            ..MonitorConfig::default()
        },
    ] {
        assert!(
            matches!(
                RouteMonitor::new("r", reference(), config, 0),
                Err(DriftError::InvalidParameter { .. })
            ),
            "{config:?}"
        );
    }
}

/// Exact per-feature drift of raw feature vectors.
fn exact_drift(raw: &[[f64; FEATURES]]) -> Vec<FeatureDrift> {
    let reference = reference();
    (0..FEATURES)
        .map(|f| {
            let values: Vec<f64> = raw.iter().map(|v| v[f]).collect();
            let feature = &reference.features()[f];
            feature_drift(
                &feature.name,
                &Cdf::from_sample(&values).unwrap(),
                values.len() as u64,
                &feature.profile,
                &DriftThresholds::default(),
            )
            .unwrap()
        })
        .collect()
}

fn assert_agree(from_sketch: &[FeatureDrift], exact: &[FeatureDrift]) {
    assert_eq!(from_sketch.len(), exact.len());
    for (s, e) in from_sketch.iter().zip(exact) {
        let f = NAMES.iter().position(|n| *n == e.name).unwrap();
        let sigma = loc_scale(f).1;
        assert!(
            (s.ks_statistic - e.ks_statistic).abs() <= 0.01,
            "{}: D {} vs exact {}",
            e.name,
            s.ks_statistic,
            e.ks_statistic
        );
        assert!(
            (s.psi - e.psi).abs() <= 0.01 + 0.05 * e.psi,
            "{}: PSI {} vs exact {}",
            e.name,
            s.psi,
            e.psi
        );
        assert!(
            (s.wasserstein - e.wasserstein).abs() <= 0.02 * sigma,
            "{}: W {} vs exact {}",
            e.name,
            s.wasserstein,
            e.wasserstein
        );
        // Verdicts agree unless the exact value sits within the tolerance of a threshold.
        if (e.psi - 0.2).abs() > 0.01 + 0.05 * e.psi {
            assert_eq!(s.psi_drift, e.psi_drift, "{}", e.name);
        }
    }
}

#[test]
fn drift_from_a_window_sketch_agrees_with_the_exact_drift_of_its_events() {
    let mut field = Field::new(8, MonitorConfig::default());
    // 5000 events, several features shifted by various amounts.
    let mut scenario = Scenario::shifted(&[0, 4, 9], 0.6);
    scenario.shift[12] = 1.2;
    scenario.events = 5000;
    field.play(scenario);
    let report = field.monitor.tick(WINDOW_MS).unwrap().unwrap();
    assert_eq!(report.summary.events, 5000);
    let drift = report.summary.drift.expect("judged");
    assert_agree(&drift.features, &exact_drift(&field.raw));
    assert!(drift.features[12].drifted, "{:?}", drift.features[12]);
}

#[test]
fn summaries_merged_across_three_boards_give_the_drift_of_all_their_events() {
    let mut merged = None;
    let mut raw = Vec::new();
    let mut events = 0;
    for board in 0..3u64 {
        let mut field = Field::new(20 + board, MonitorConfig::default());
        field.play(Scenario::shifted(&[5], 0.4 * board as f64));
        let summary = field.monitor.tick(WINDOW_MS).unwrap().unwrap().summary;
        events += summary.events;
        raw.extend(field.raw);
        match &mut merged {
            None => merged = Some(summary),
            Some(m) => m.merge(&summary).unwrap(),
        }
    }
    let merged = merged.unwrap();
    assert_eq!(merged.events, events);
    assert_eq!(
        merged.model_class_counts.iter().sum::<u64>() + merged.fallbacks,
        events
    );
    assert!(merged.drift.is_none(), "stale drift is dropped on merge");
    let drift = window_drift(
        &merged.sketches,
        &merged.model_class_counts,
        &reference(),
        &DriftThresholds::default(),
    )
    .unwrap();
    assert_agree(&drift.features, &exact_drift(&raw));
}

#[test]
fn a_window_summary_survives_its_upload_encoding_and_garbage_is_refused() {
    let mut field = Field::new(31, MonitorConfig::default());
    let mut scenario = Scenario::shifted(&[2], 0.5);
    scenario.events = 20_000;
    field.play(scenario);
    let summary = field.monitor.tick(WINDOW_MS).unwrap().unwrap().summary;
    let bytes = summary.encode();
    assert_eq!(WindowSummary::decode(&bytes).unwrap(), summary);
    // Compact: 13 full sketches at k = 200 hold at most 13 × (3k + 128) values.
    let most_values = FEATURES * QuantileSketch::max_retained(summary.sketches[0].k());
    assert!(
        bytes.len() < most_values * 8 + 4096,
        "{} bytes for at most {most_values} values",
        bytes.len()
    );
    for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            matches!(
                WindowSummary::decode(&bytes[..cut]),
                Err(DriftError::CorruptWindow { .. })
            ),
            "cut at {cut}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(WindowSummary::decode(&longer).is_err());
    let mut other_version = bytes;
    other_version[0] = 9;
    assert!(WindowSummary::decode(&other_version).is_err());
}

/// The reference of [`reference`] with feature `shifted` moved by `sigmas`.
fn reference_shifted(shifted: usize, sigmas: f64) -> Arc<Reference> {
    let features = (0..FEATURES)
        .map(|f| {
            let (loc, scale) = loc_scale(f);
            let loc = if f == shifted {
                loc + sigmas * scale
            } else {
                loc
            };
            let draws = normal_sample(10_000 + f as u64, 4000, loc, scale);
            FeatureReference {
                name: NAMES[f].to_owned(),
                profile: QuantileProfile::new(quantiles_101(&draws), 4000).unwrap(),
            }
        })
        .collect();
    Arc::new(Reference::new(features, CLASS_FRACTIONS.to_vec()).unwrap())
}

#[test]
fn a_new_reference_judges_the_open_window_and_a_mismatched_one_is_refused() {
    let mut field = Field::new(41, MonitorConfig::default());
    let moved = Scenario::shifted(&[0], 1.0);
    assert!(field.play(moved).is_none());
    let old = field.play(moved).expect("window 0 closed").summary;
    let drifted = |s: &WindowSummary| s.drift.as_ref().unwrap().features[0].drifted;
    assert!(drifted(&old), "1σ away from the old reference");

    // A reference with a feature too few is refused and the old one stays.
    let mut short = (*reference()).clone();
    let features: Vec<FeatureReference> = short.features()[1..].to_vec();
    short = Reference::new(features, CLASS_FRACTIONS.to_vec()).unwrap();
    assert!(matches!(
        field.monitor.set_reference(Arc::new(short)),
        Err(DriftError::LengthMismatch { .. })
    ));

    // The model was reloaded with a reference where feature 0 sits where the data is now:
    // the open window (window 1) is judged against it when it closes.
    field
        .monitor
        .set_reference(reference_shifted(0, 1.0))
        .unwrap();
    let new = field.play(moved).expect("window 1 closed").summary;
    assert!(
        !drifted(&new),
        "{:?}",
        new.drift.as_ref().unwrap().features[0]
    );
    assert!(new.drift.as_ref().unwrap().features[0].ks_statistic < 0.05);
}

#[test]
fn a_monitor_keeps_routes_apart_and_refuses_unknown_ones() {
    let mut monitor = Monitor::new();
    for route in ["press-1", "press-2"] {
        monitor
            .add_route(route, reference(), MonitorConfig::default(), 0)
            .unwrap();
    }
    let features = [0.0; FEATURES];
    let obs = Observation {
        features: Some(&features),
        model_class: Some(0),
        fallback: false,
        deadline_missed: true,
    };
    for i in 0..10 {
        monitor.record("press-1", i, &obs).unwrap();
    }
    monitor.record("press-2", 5, &obs).unwrap();
    assert_eq!(
        monitor.record("press-3", 5, &obs),
        Err(DriftError::UnknownRoute {
            route: "press-3".into()
        })
    );
    let reports = monitor.tick(WINDOW_MS).unwrap();
    let events: Vec<(&str, u64)> = reports
        .iter()
        .map(|r| (r.summary.route.as_str(), r.summary.events))
        .collect();
    assert_eq!(events, vec![("press-1", 10), ("press-2", 1)]);
    assert!(monitor.raised().is_empty());
}

#[test]
fn new_judgement_settings_apply_from_the_next_window_and_cannot_reshape_windows() {
    let mut field = Field::new(1, MonitorConfig::default());
    let mut events = field.run(&[Scenario::clean(); 5]);
    let stricter = MonitorConfig {
        raise_after: 5,
        ..MonitorConfig::default()
    };
    field.monitor.set_judgement(stricter).unwrap();
    assert_eq!(field.monitor.config().raise_after, 5);
    events.extend(field.run(&[Scenario::shifted(&[3], 1.0); 8]));
    // Shifted from window 5: raised on the fifth shifted window, not the third.
    assert_eq!(
        raised(&events),
        vec![(9, Subject::Feature("std_x".into()))],
        "events: {events:#?}"
    );
    for reshaping in [
        MonitorConfig {
            window_ms: WINDOW_MS * 2,
            ..stricter
        },
        MonitorConfig {
            sketch_k: stricter.sketch_k + 8,
            ..stricter
        },
        MonitorConfig {
            raise_after: 0,
            ..stricter
        },
    ] {
        assert!(field.monitor.set_judgement(reshaping).is_err());
        assert_eq!(
            *field.monitor.config(),
            stricter,
            "refused: nothing changed"
        );
    }
}
