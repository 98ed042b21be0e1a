//! `[monitor]`: live drift and SLO monitoring of every route; its thresholds, objectives
//! and alert topic. The monitor itself (`crate::monitor`) is built from this section.

use std::time::Duration;

use reflex_drift::monitor::MonitorConfig;
use reflex_drift::sketch::{DEFAULT_K, MAX_K, MIN_K};
use reflex_drift::stats::verdict::DriftThresholds;
use rumqttc::QoS;
use serde::{Deserialize, Serialize};

use super::error::{Problems, ValidationError};
use super::MAX_TOPIC_BYTES;

/// Placeholder in `alert_topic` replaced by the node name.
pub const NODE_PLACEHOLDER: &str = "{node}";

/// Default alert topic.
pub const DEFAULT_ALERT_TOPIC: &str = "reflex/{node}/alerts";

/// Longest node name (`node.name` is 1..=64 bytes), for the topic length check.
const MAX_NODE_NAME_BYTES: usize = 64;

/// `[monitor]`: live drift and SLO monitoring of every route.
///
/// The drift thresholds are the `[monitor.thresholds]` table, the same table (and names) as
/// reflex-cloud's `[rescore.thresholds]`, so board and cloud judge with the same rules.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorSection {
    /// Monitor routes, serve the drift gauges and publish alerts. Default: `true`.
    pub enabled: bool,
    /// Length of the tumbling windows, in seconds, 1..=86400. Windows are aligned on the
    /// wall clock. Default: `60`.
    pub window_s: u64,
    /// Breaching windows in a row that raise an alert, 1..=1000. Default: `3`.
    pub raise_after: u32,
    /// Clean windows in a row that clear a raised alert, 1..=1000. Default: `3`.
    pub clear_after: u32,
    /// Events a window needs before its drift is judged, >= 1. Below about 1000 the
    /// distance of clean data to the reference nears the thresholds (false alarms):
    /// lengthen the window rather than lower this. Default: `1000`.
    pub min_events: u64,
    /// Events a window needs before its deadline-miss and fallback rates are judged, >= 1.
    /// Default: `100`.
    pub slo_min_events: u64,
    /// Accuracy parameter of the feature sketches, 8..=65535: rank error about `1/k`,
    /// memory at most `3k + 128` values per feature and window. Default: `200`.
    pub sketch_k: u32,
    /// `[monitor.thresholds]`: when a feature, the dataset or the predicted classes drift.
    /// Fields and defaults (reflex-drift's `DriftThresholds`): `rule = "ks_and_effect"`
    /// (also `"ks"`, `"psi"`, `"wasserstein"`, `"ks_and_psi"`, `"ks_or_psi"`): a feature
    /// drifts when KS `p < ks_p_value` and (`PSI >= psi` or Wasserstein / reference std
    /// `>= wasserstein_normed`); `ks_p_value = 0.05` (0..=1), `psi = 0.2` (>= 0),
    /// `psi_bins = 10` (2..=1000), `wasserstein_normed = 0.1` (>= 0), `dataset_share = 0.5`
    /// (0..=1, share of drifted features that makes the dataset drift), `js_distance = 0.1`
    /// (0..=1, Jensen–Shannon distance of the model's predicted classes to the reference).
    pub thresholds: DriftThresholds,
    /// Objective for deadline misses / events in a window, 0..=1; above it is a breach.
    /// Default: `0.01`.
    pub deadline_miss_objective: f64,
    /// Objective for fallback answers / events in a window, 0..=1; above it is a breach.
    /// Default: `0.05`.
    pub fallback_objective: f64,
    /// Topic alerts are published to; `{node}` is replaced by `node.name`, no `+`, `#` or
    /// other `{...}`. Default: `"reflex/{node}/alerts"`.
    pub alert_topic: String,
    /// QoS of published alerts, 0 or 1. Default: `1`.
    pub alert_qos: u8,
    /// Most closed windows (with their sketches, ≈ 10–60 KiB each) kept until the uploader
    /// takes them, 1..=100000; beyond, the oldest is dropped and counted. Default: `60`.
    pub keep_closed_windows: usize,
}

impl Default for MonitorSection {
    fn default() -> Self {
        MonitorSection {
            enabled: true,
            window_s: 60,
            raise_after: 3,
            clear_after: 3,
            min_events: 1000,
            slo_min_events: 100,
            sketch_k: DEFAULT_K,
            thresholds: DriftThresholds::default(),
            deadline_miss_objective: 0.01,
            fallback_objective: 0.05,
            alert_topic: DEFAULT_ALERT_TOPIC.to_owned(),
            alert_qos: 1,
            keep_closed_windows: 60,
        }
    }
}

impl MonitorSection {
    /// Checks every value, whether or not the section is enabled; returns all problems at
    /// once (empty when valid). Pure.
    pub fn validate(&self) -> Vec<ValidationError> {
        let mut p = Problems::default();
        self.validate_into(&mut p);
        p.0
    }

    /// [`MonitorSection::validate`] into the configuration's collector.
    pub(crate) fn validate_into(&self, p: &mut Problems) {
        let mut problems = Vec::new();
        let mut add = |field: &str, value: String, reason: String| {
            problems.push((format!("monitor.{field}"), value, reason));
        };
        let mut range_u64 = |field: &str, value: u64, min: u64, max: u64| {
            if !(min..=max).contains(&value) {
                add(
                    field,
                    value.to_string(),
                    format!("must be in {min}..={max}"),
                );
            }
        };
        range_u64("window_s", self.window_s, 1, 86_400);
        range_u64("raise_after", self.raise_after.into(), 1, 1_000);
        range_u64("clear_after", self.clear_after.into(), 1, 1_000);
        range_u64("min_events", self.min_events, 1, u64::MAX);
        range_u64("slo_min_events", self.slo_min_events, 1, u64::MAX);
        range_u64("sketch_k", self.sketch_k.into(), MIN_K.into(), MAX_K.into());
        range_u64("alert_qos", self.alert_qos.into(), 0, 1);
        range_u64(
            "keep_closed_windows",
            self.keep_closed_windows as u64,
            1,
            100_000,
        );
        range_u64(
            "thresholds.psi_bins",
            self.thresholds.psi_bins as u64,
            2,
            1_000,
        );

        let t = &self.thresholds;
        for (field, value) in [
            ("deadline_miss_objective", self.deadline_miss_objective),
            ("fallback_objective", self.fallback_objective),
            ("thresholds.ks_p_value", t.ks_p_value),
            ("thresholds.dataset_share", t.dataset_share),
            ("thresholds.js_distance", t.js_distance),
        ] {
            if !(0.0..=1.0).contains(&value) {
                add(field, value.to_string(), "must be in 0..=1".into());
            }
        }
        for (field, value) in [
            ("thresholds.psi", t.psi),
            ("thresholds.wasserstein_normed", t.wasserstein_normed),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                add(field, value.to_string(), "must be finite and >= 0".into());
            }
        }
        if let Err(reason) = check_alert_topic(&self.alert_topic) {
            add("alert_topic", format!("{:?}", self.alert_topic), reason);
        }
        for (field, value, reason) in problems {
            p.add(field, value, reason);
        }
    }

    /// The drift crate's settings. Only meaningful on a section that passed
    /// [`MonitorSection::validate`] (`LiveMonitor::new` checks again).
    pub fn monitor_config(&self) -> MonitorConfig {
        MonitorConfig {
            window_ms: self.window_s.saturating_mul(1_000),
            sketch_k: self.sketch_k,
            min_events: self.min_events,
            slo_min_events: self.slo_min_events,
            thresholds: self.thresholds,
            raise_after: self.raise_after,
            clear_after: self.clear_after,
            deadline_miss_objective: self.deadline_miss_objective,
            fallback_objective: self.fallback_objective,
        }
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_s)
    }

    /// The alert topic of `node`.
    pub fn alert_topic_for(&self, node: &str) -> String {
        self.alert_topic.replace(NODE_PLACEHOLDER, node)
    }

    /// The alert QoS (anything but 0 is at-least-once).
    pub fn qos(&self) -> QoS {
        if self.alert_qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        }
    }
}

/// Checks an alert topic template: non-empty, no wildcard, no nul, `{node}` the only
/// placeholder, at most `MAX_TOPIC_BYTES` with a 64-byte node name.
pub(crate) fn check_alert_topic(template: &str) -> Result<(), String> {
    if template.is_empty() {
        return Err("must not be empty".into());
    }
    if template.contains(['+', '#']) {
        return Err("must not contain the wildcards '+' or '#'".into());
    }
    if template.contains('\0') {
        return Err("must not contain a nul character".into());
    }
    if template.replace(NODE_PLACEHOLDER, "").contains(['{', '}']) {
        return Err(format!(
            "{NODE_PLACEHOLDER} is the only placeholder allowed"
        ));
    }
    let longest = template
        .replace(NODE_PLACEHOLDER, &"x".repeat(MAX_NODE_NAME_BYTES))
        .len();
    let max = MAX_TOPIC_BYTES;
    if longest > max {
        return Err(format!(
            "with a {MAX_NODE_NAME_BYTES}-byte node name the topic is {longest} bytes, over {max}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflex_drift::monitor::MonitorConfig;

    /// Parses a `[monitor]` table the way the daemon's config does (unknown fields refused).
    fn parse(text: &str) -> Result<MonitorSection, toml::de::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Doc {
            monitor: MonitorSection,
        }
        toml::from_str::<Doc>(text).map(|d| d.monitor)
    }

    #[test]
    fn an_empty_section_is_the_documented_defaults_and_valid() {
        let s = parse("[monitor]\n").unwrap();
        assert_eq!(s, MonitorSection::default());
        assert!(s.enabled);
        assert_eq!(
            (s.window_s, s.raise_after, s.clear_after, s.min_events),
            (60, 3, 3, 1000)
        );
        assert_eq!(s.deadline_miss_objective, 0.01);
        assert_eq!(s.fallback_objective, 0.05);
        assert_eq!(s.alert_topic, "reflex/{node}/alerts");
        assert_eq!(s.alert_qos, 1);
        assert_eq!(s.validate(), Vec::<ValidationError>::new());
        let c = s.monitor_config();
        assert_eq!(c.window_ms, 60_000);
        assert_eq!(c, MonitorConfig::default());
        assert_eq!(s.alert_topic_for("press-7"), "reflex/press-7/alerts");
    }

    #[test]
    fn thresholds_are_a_nested_table_with_the_drift_crates_names() {
        let s = parse(
            "[monitor]\nwindow_s = 30\n[monitor.thresholds]\nrule = \"ks_and_psi\"\npsi = 0.25\n",
        )
        .unwrap();
        assert_eq!(s.window_s, 30);
        assert_eq!(
            s.thresholds.rule,
            reflex_drift::stats::verdict::FeatureRule::KsAndPsi
        );
        assert_eq!(s.thresholds.psi, 0.25);
        assert_eq!(s.thresholds.ks_p_value, 0.05);
        assert_eq!(s.monitor_config().thresholds, s.thresholds);
    }

    #[test]
    fn unknown_fields_are_refused_in_the_section_and_its_thresholds() {
        let e = parse("[monitor]\nwindow = 60\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `window`"), "{e}");
        let e = parse("[monitor.thresholds]\nks = 0.1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `ks`"), "{e}");
    }

    #[test]
    fn validate_reports_every_problem_at_once_with_field_and_value() {
        let mut s = MonitorSection {
            window_s: 0,
            raise_after: 0,
            clear_after: 1001,
            min_events: 0,
            slo_min_events: 0,
            sketch_k: 4,
            deadline_miss_objective: 1.5,
            fallback_objective: f64::NAN,
            alert_topic: "reflex/{node}/{route}/#".into(),
            alert_qos: 2,
            keep_closed_windows: 0,
            ..MonitorSection::default()
        };
        s.thresholds.ks_p_value = -0.1;
        s.thresholds.psi = f64::INFINITY;
        s.thresholds.psi_bins = 1;
        s.thresholds.wasserstein_normed = -1.0;
        s.thresholds.dataset_share = 2.0;
        s.thresholds.js_distance = 1.1;
        let problems = s.validate();
        let fields: Vec<&str> = problems.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "monitor.window_s",
                "monitor.raise_after",
                "monitor.clear_after",
                "monitor.min_events",
                "monitor.slo_min_events",
                "monitor.sketch_k",
                "monitor.alert_qos",
                "monitor.keep_closed_windows",
                "monitor.thresholds.psi_bins",
                "monitor.deadline_miss_objective",
                "monitor.fallback_objective",
                "monitor.thresholds.ks_p_value",
                "monitor.thresholds.dataset_share",
                "monitor.thresholds.js_distance",
                "monitor.thresholds.psi",
                "monitor.thresholds.wasserstein_normed",
                "monitor.alert_topic",
            ]
        );
        let find = |field: &str| {
            problems
                .iter()
                .find(|e| e.field == field)
                .map(|e| (e.value.clone(), e.reason.clone()))
                .unwrap()
        };
        assert_eq!(
            find("monitor.window_s"),
            ("0".into(), "must be in 1..=86400".into())
        );
        assert_eq!(
            find("monitor.sketch_k"),
            ("4".into(), "must be in 8..=65535".into())
        );
        assert_eq!(
            find("monitor.deadline_miss_objective"),
            ("1.5".into(), "must be in 0..=1".into())
        );
        let (value, reason) = find("monitor.alert_topic");
        assert_eq!(value, "\"reflex/{node}/{route}/#\"");
        assert!(reason.contains("wildcards"), "{reason}");
    }

    #[test]
    fn alert_topics_refuse_other_placeholders_nul_and_excess_length() {
        assert!(check_alert_topic("reflex/alerts").is_ok());
        assert!(check_alert_topic("")
            .unwrap_err()
            .contains("must not be empty"));
        assert!(check_alert_topic("a/{route}")
            .unwrap_err()
            .contains("only placeholder"));
        assert!(check_alert_topic("a/\0").unwrap_err().contains("nul"));
        let long = format!("{}/{{node}}", "x".repeat(200));
        assert!(check_alert_topic(&long).unwrap_err().contains("over 256"));
    }
}
