use super::*;

use reflex_drift::monitor::{
    Alert, AlertEvent, Measurement, Observation, Statistic, Subject, WindowRef,
};
use reflex_drift::{DriftError, Reference};
use reflex_models::{Manifest, FEATURE_NAMES};

fn repo_path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

fn edge_reference() -> Reference {
    let m = Manifest::load(repo_path("models/edge.manifest.json")).expect("edge manifest");
    reference_from_manifest(&m).expect("edge reference")
}

#[test]
fn a_reloaded_models_reference_is_taken_per_route_and_a_wrong_one_refused() {
    let m = LiveMonitor::new(
        &MonitorSection::default(),
        "n",
        vec![("a".into(), edge_reference())],
    )
    .unwrap();
    m.set_reference(0, edge_reference()).unwrap();
    assert!(matches!(
        m.set_reference(1, edge_reference()),
        Err(DriftError::UnknownRoute { .. })
    ));
    let fewer = Reference::new(
        edge_reference().features()[..5].to_vec(),
        edge_reference().class_fractions().to_vec(),
    )
    .unwrap();
    assert!(matches!(
        m.set_reference(0, fewer),
        Err(DriftError::LengthMismatch { .. })
    ));
}

#[test]
fn monitor_and_alert_publisher_can_be_shared_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<LiveMonitor>();
    shared::<AlertPublisher>();
}

#[test]
fn the_edge_manifests_reference_becomes_13_profiles_of_101_quantiles_and_4_class_fractions() {
    let m = Manifest::load(repo_path("models/edge.manifest.json")).unwrap();
    let r = reference_from_manifest(&m).unwrap();
    let names: Vec<&str> = r.features().iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, FEATURE_NAMES);
    for (f, p) in r.features().iter().zip(&m.reference.features) {
        assert_eq!(f.profile.quantiles(), p.quantiles.as_slice());
        assert_eq!(f.profile.quantiles().len(), 101);
        assert_eq!(f.profile.count(), 4000);
        assert_eq!(f.profile.count(), p.count as u64);
        assert!(f.profile.std() > 0.0, "{}", f.name);
    }
    assert_eq!(r.class_fractions(), [0.26075, 0.245, 0.24875, 0.2455]);
    // The fallback's manifest carries a reference too.
    let fallback = Manifest::load(repo_path("models/fallback.manifest.json")).unwrap();
    assert!(reference_from_manifest(&fallback).is_ok());
}

#[test]
fn a_reference_is_taken_by_name_and_a_missing_profile_or_invalid_quantiles_refused() {
    let mut m = Manifest::load(repo_path("models/edge.manifest.json")).unwrap();
    m.reference.features.swap(3, 4);
    let r = reference_from_manifest(&m).unwrap();
    let names: Vec<&str> = r.features().iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names, FEATURE_NAMES,
        "in the declared order, whatever the file's"
    );
    assert_eq!(
        r.features()[3].profile.quantiles(),
        m.reference.features[4].quantiles.as_slice(),
        "std_x's own profile"
    );
    m.reference.features.pop();
    assert_eq!(
        reference_from_manifest(&m).unwrap_err().to_string(),
        "model edge: the reference has no profile of its feature \"temperature\""
    );
    let mut m = Manifest::load(repo_path("models/edge.manifest.json")).unwrap();
    m.reference.features[0].quantiles.reverse();
    let e = reference_from_manifest(&m).unwrap_err().to_string();
    assert!(
        e.starts_with("model edge: invalid reference profile: quantiles decrease"),
        "{e}"
    );
}

#[test]
fn a_format_two_models_reference_follows_its_declared_features() {
    let m = Manifest::load(repo_path("models/examples/test/score16.manifest.json")).unwrap();
    let r = reference_from_manifest(&m).unwrap();
    let names: Vec<String> = r.features().iter().map(|f| f.name.clone()).collect();
    assert_eq!(names, m.feature_names());
    assert_eq!(names, ["mean_a", "std_a", "peak_a"]);
}

/// Values spread over the reference's own quantiles: clean data.
fn clean_features(r: &Reference, i: u64) -> Vec<f64> {
    // A golden-ratio sequence of probabilities, different per feature.
    r.features()
        .iter()
        .enumerate()
        .map(|(f, fr)| {
            let p = ((i as f64 + 0.5) * 0.618_033_988_749_895 + f as f64 * 0.1) % 1.0;
            fr.profile.cdf().quantile(p)
        })
        .collect()
}

const US_PER_MS: u64 = 1_000;
const T0_US: u64 = 1_796_000_000_000_000; // 2026-11-30T00:53:20Z
const WINDOW_MS: u64 = 1_000;

fn small_window_monitor(keep: usize) -> LiveMonitor {
    let section = MonitorSection {
        window_s: 1,
        min_events: 500,
        keep_closed_windows: keep,
        ..MonitorSection::default()
    };
    LiveMonitor::new(
        &section,
        "board-1",
        vec![
            ("vib".into(), edge_reference()),
            ("press".into(), edge_reference()),
        ],
    )
    .unwrap()
}

/// Records `n` events on route 0 spread over window `w` (counted from `T0_US`),
/// shifting every feature by `shift` reference standard deviations.
fn play_window(m: &LiveMonitor, r: &Reference, w: u64, n: u64, shift: f64) {
    for i in 0..n {
        let mut f = clean_features(r, w * n + i);
        for (v, fr) in f.iter_mut().zip(r.features()) {
            *v += shift * fr.profile.std();
        }
        let at = T0_US + w * WINDOW_MS * US_PER_MS + i * (WINDOW_MS * US_PER_MS / n);
        let obs = Observation {
            features: Some(&f),
            model_class: Some((i % 4) as usize),
            fallback: i % 50 == 0,
            deadline_missed: false,
        };
        m.record(0, at, &obs).unwrap();
    }
}

#[test]
fn render_shows_scores_alert_states_and_window_figures_of_the_last_closed_window() {
    let m = small_window_monitor(8);
    let r = edge_reference();
    let mut before = String::new();
    m.render_prometheus(&mut before);
    assert!(before.contains("# TYPE reflexd_drift_score gauge\n"));
    assert!(!before.contains("reflexd_drift_score{"), "{before}");
    assert!(before.contains("reflexd_monitor_alert{route=\"vib\",subject=\"feature:std_x\"} 0\n"));

    for w in 0..4 {
        play_window(&m, &r, w, 600, 1.0);
    }
    let events = m.tick(T0_US + 4 * WINDOW_MS * US_PER_MS);
    assert!(
        events.iter().any(
            |e| matches!(e, AlertEvent::Raised(a) if a.subject == Subject::Feature("std_x".into()))
        ),
        "{events:?}"
    );
    let mut text = String::new();
    m.render_prometheus(&mut text);
    for family in [
        "reflexd_drift_score",
        "reflexd_drift_feature_drifted",
        "reflexd_drift_drifted_feature_share",
        "reflexd_drift_class_js_distance",
        "reflexd_monitor_window_events",
        "reflexd_monitor_window_deadline_miss_rate",
        "reflexd_monitor_window_fallback_rate",
        "reflexd_monitor_alert",
        "reflexd_monitor_alert_events_total",
        "reflexd_monitor_windows_closed_total",
        "reflexd_monitor_pending_windows",
    ] {
        assert_eq!(
            text.matches(&format!("# HELP {family} ")).count(),
            1,
            "{family}"
        );
        assert_eq!(text.matches(&format!("# TYPE {family} ")).count(), 1);
    }
    for statistic in [
        "ks_statistic",
        "ks_p_value",
        "psi",
        "wasserstein",
        "wasserstein_normed",
    ] {
        assert!(
            text.contains(&format!(
                "reflexd_drift_score{{route=\"vib\",feature=\"std_x\",statistic=\"{statistic}\"}} "
            )),
            "{statistic}"
        );
    }
    assert!(text.contains("reflexd_drift_feature_drifted{route=\"vib\",feature=\"std_x\"} 1\n"));
    assert!(text.contains("reflexd_monitor_alert{route=\"vib\",subject=\"feature:std_x\"} 1\n"));
    assert!(text.contains("reflexd_monitor_alert{route=\"vib\",subject=\"deadline_misses\"} 0\n"));
    assert!(text.contains("reflexd_monitor_alert{route=\"press\",subject=\"dataset\"} 0\n"));
    assert!(text.contains("reflexd_monitor_window_events{route=\"vib\"} 600\n"));
    assert!(text.contains("reflexd_monitor_window_fallback_rate{route=\"vib\"} 0.02\n"));
    assert!(text.contains("reflexd_monitor_windows_closed_total{route=\"vib\"} 4\n"));
    assert!(text.contains("reflexd_monitor_windows_closed_total{route=\"press\"} 0\n"));
    assert!(text.contains("reflexd_monitor_pending_windows 4\n"));
    // The route without a closed window has no scores.
    assert!(!text.contains("reflexd_drift_score{route=\"press\""));
    // Every sample line is `name{labels} value` with a parseable value.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(
            value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value),
            "{line}"
        );
    }
}

#[test]
fn closed_windows_wait_for_the_uploader_in_a_bounded_queue_dropping_the_oldest() {
    let m = small_window_monitor(3);
    let r = edge_reference();
    for w in 0..5 {
        play_window(&m, &r, w, 50, 0.0);
    }
    m.tick(T0_US + 5 * WINDOW_MS * US_PER_MS);
    assert_eq!(m.windows_dropped(), 2);
    let windows = m.take_closed_windows();
    let starts: Vec<u64> = windows.iter().map(|w| w.start_ms).collect();
    let w0 = T0_US / US_PER_MS;
    assert_eq!(starts, [w0 + 2_000, w0 + 3_000, w0 + 4_000]);
    assert!(windows.iter().all(|w| w.route == "vib" && w.events == 50));
    // Too few events to judge drift; the summary still carries its sketches.
    assert!(windows
        .iter()
        .all(|w| w.drift.is_none() && w.sketches.len() == 13));
    assert!(m.take_closed_windows().is_empty());
    let mut text = String::new();
    m.render_prometheus(&mut text);
    assert!(text.contains("reflexd_monitor_windows_dropped_total 2\n"));
}

#[test]
fn bad_observations_are_refused_counted_and_leave_the_window_untouched() {
    let m = small_window_monitor(4);
    let f = [0.0; 12];
    let obs = Observation {
        features: Some(&f),
        model_class: Some(0),
        fallback: false,
        deadline_missed: false,
    };
    let e = m.record(0, T0_US, &obs).unwrap_err();
    assert_eq!(
        e.to_string(),
        "route \"vib\": observation refused: observation has 12 features, the reference has 13"
    );
    let ok = [0.0; 13];
    let bad_class = Observation {
        features: Some(&ok),
        model_class: Some(4),
        ..obs
    };
    assert!(m.record(0, T0_US, &bad_class).is_err());
    assert_eq!(
        m.record(2, T0_US, &bad_class).unwrap_err(),
        MonitorError::UnknownRoute {
            index: 2,
            routes: 2
        }
    );
    assert_eq!(m.open_events(), [0, 0]);
    let mut text = String::new();
    m.render_prometheus(&mut text);
    assert!(text.contains("reflexd_monitor_record_errors_total{route=\"vib\"} 2\n"));
}

#[test]
fn a_monitor_refuses_invalid_settings_and_a_route_named_twice() {
    let section = MonitorSection {
        sketch_k: 1,
        ..MonitorSection::default()
    };
    assert!(matches!(
        LiveMonitor::new(&section, "n", vec![("a".into(), edge_reference())]),
        Err(MonitorError::Settings(_))
    ));
    let e = LiveMonitor::new(
        &MonitorSection::default(),
        "n",
        vec![
            ("a".into(), edge_reference()),
            ("a".into(), edge_reference()),
        ],
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "route \"a\" is monitored twice");
}

fn sample_alert(
    subject: Subject,
    measurement: Measurement,
    supporting: Option<Measurement>,
) -> Alert {
    Alert {
        route: "vibration".into(),
        subject,
        measurement,
        supporting,
        since: WindowRef {
            index: 29_933_334,
            start_ms: 1_796_000_040_000,
        },
        latest: WindowRef {
            index: 29_933_336,
            start_ms: 1_796_000_160_000,
        },
    }
}

#[test]
fn an_alert_message_says_route_subject_statistic_value_threshold_and_since_when() {
    let alert = sample_alert(
        Subject::Feature("std_x".into()),
        Measurement {
            statistic: Statistic::WassersteinNormed,
            value: 0.3127,
            threshold: 0.1,
        },
        Some(Measurement {
            statistic: Statistic::KsPValue,
            value: 1.2e-30,
            threshold: 0.05,
        }),
    );
    let m = alert_message(
        "board-1",
        "reflex/board-1/alerts",
        60_000,
        &AlertEvent::Raised(alert.clone()),
    );
    assert_eq!(m.topic, "reflex/board-1/alerts");
    assert_eq!(m.state, AlertState::Raised);
    assert_eq!(
        m.log_line,
        "drift alert raised on route vibration: feature std_x: wasserstein_normed 0.3127 >= \
         0.1000 (ks_p_value 1.2e-30 < 0.0500) since 2026-11-30T00:54:00Z (latest window \
         2026-11-30T00:56:00Z, windows of 60 s)"
    );
    let json: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(json["node"], "board-1");
    assert_eq!(json["route"], "vibration");
    assert_eq!(json["state"], "raised");
    assert_eq!(json["subject"], "feature:std_x");
    assert_eq!(json["feature"], "std_x");
    assert_eq!(json["statistic"], "wasserstein_normed");
    assert_eq!(json["value"], 0.3127);
    assert_eq!(json["threshold"], 0.1);
    assert_eq!(json["breach_when"], ">=");
    assert_eq!(json["breached"], true);
    assert_eq!(json["supporting"]["statistic"], "ks_p_value");
    assert_eq!(json["since"], "2026-11-30T00:54:00Z");
    assert_eq!(json["since_unix_ms"], 1_796_000_040_000u64);
    assert_eq!(json["latest_window_start"], "2026-11-30T00:56:00Z");
    assert_eq!(json["window_s"], 60.0);
    let back: AlertPayload = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(back.message, m.log_line);

    let slo = sample_alert(
        Subject::DeadlineMisses,
        Measurement {
            statistic: Statistic::DeadlineMissRate,
            value: 0.004,
            threshold: 0.01,
        },
        None,
    );
    let m = alert_message("n", "t", 60_000, &AlertEvent::Cleared(slo));
    assert_eq!(m.state, AlertState::Cleared);
    assert!(
        m.log_line.starts_with(
            "slo alert cleared on route vibration: deadline misses: deadline_miss_rate \
             0.0040 <= 0.0100 after breaching since 2026-11-30T00:54:00Z"
        ),
        "{}",
        m.log_line
    );
    let json: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(json["subject"], "deadline_misses");
    assert_eq!(json["feature"], serde_json::Value::Null);
    assert_eq!(json["supporting"], serde_json::Value::Null);
    assert_eq!(json["breached"], false);
}

#[test]
fn rfc3339_matches_known_dates() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(1_796_000_000_123), "2026-11-30T00:53:20.123Z");
    assert_eq!(rfc3339(4_102_444_799_000), "2099-12-31T23:59:59Z");
    assert_eq!(rfc3339(1_000_500), "1970-01-01T00:16:40.500Z");
    // Past the calendar's range: its last instant, never a panic.
    assert!(rfc3339(u64::MAX).starts_with("9999-12-30T22:00:00"));
}
