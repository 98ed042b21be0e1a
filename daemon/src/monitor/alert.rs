//! Alert messages: the JSON payload published on the alert topic (the contract for its
//! subscribers), the log line, and the labels of subjects and statistics.

use std::fmt::Write as _;

use reflex_drift::monitor::{AlertEvent, Statistic, Subject};
use rumqttc::QoS;
use serde::{Deserialize, Serialize};

use crate::ops::metrics::Float;

/// The label and JSON name of an alert subject: `feature:<name>`, `dataset`,
/// `predicted_classes`, `deadline_misses`, `fallbacks`.
pub fn subject_label(subject: &Subject) -> String {
    match subject {
        Subject::Feature(name) => format!("feature:{name}"),
        Subject::Dataset => "dataset".into(),
        Subject::PredictedClasses => "predicted_classes".into(),
        Subject::DeadlineMisses => "deadline_misses".into(),
        Subject::Fallbacks => "fallbacks".into(),
    }
}

/// The JSON name of a statistic.
pub fn statistic_label(statistic: Statistic) -> &'static str {
    match statistic {
        Statistic::Psi => "psi",
        Statistic::KsPValue => "ks_p_value",
        Statistic::WassersteinNormed => "wasserstein_normed",
        Statistic::JensenShannon => "jensen_shannon_distance",
        Statistic::DriftedShare => "drifted_feature_share",
        Statistic::DeadlineMissRate => "deadline_miss_rate",
        Statistic::FallbackRate => "fallback_rate",
    }
}

/// How a value compares with its threshold when it breaches: `<` (KS p-value), `>` (SLO
/// rates) or `>=` (the rest).
fn breach_comparison(statistic: Statistic) -> &'static str {
    match statistic {
        Statistic::KsPValue => "<",
        Statistic::DeadlineMissRate | Statistic::FallbackRate => ">",
        Statistic::Psi
        | Statistic::WassersteinNormed
        | Statistic::JensenShannon
        | Statistic::DriftedShare => ">=",
    }
}

/// Raised or cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The check breached for `raise_after` windows in a row.
    Raised,
    /// The check was clean for `clear_after` windows in a row.
    Cleared,
}

/// A statistic compared with its threshold, as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedMeasurement {
    /// [`statistic_label`]: `psi`, `ks_p_value`, `wasserstein_normed`,
    /// `jensen_shannon_distance`, `drifted_feature_share`, `deadline_miss_rate`,
    /// `fallback_rate`.
    pub statistic: String,
    /// Its value in the latest window.
    pub value: f64,
    /// The threshold (or objective).
    pub threshold: f64,
    /// How `value` compares with `threshold` when it breaches: `<`, `>` or `>=`.
    pub breach_when: String,
    /// Whether the latest window breaches.
    pub breached: bool,
}

impl PublishedMeasurement {
    fn of(m: &reflex_drift::monitor::Measurement) -> Self {
        PublishedMeasurement {
            statistic: statistic_label(m.statistic).to_owned(),
            value: m.value,
            threshold: m.threshold,
            breach_when: breach_comparison(m.statistic).to_owned(),
            breached: m.breaches(),
        }
    }
}

/// The JSON body of an alert message (the contract for whoever subscribes to
/// `reflex/{node}/alerts`). Times are UTC; windows are `[start, start + window_s)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertPayload {
    /// The node (`node.name`).
    pub node: String,
    /// The route.
    pub route: String,
    /// `raised` or `cleared`.
    pub state: AlertState,
    /// [`subject_label`]: `feature:<name>`, `dataset`, `predicted_classes`,
    /// `deadline_misses` or `fallbacks`.
    pub subject: String,
    /// The feature name when the subject is a feature.
    pub feature: Option<String>,
    /// The statistic that decided, in the latest window (its value vs threshold).
    #[serde(flatten)]
    pub measurement: PublishedMeasurement,
    /// Another statistic that took part in the verdict (a feature's KS p-value), if any.
    pub supporting: Option<PublishedMeasurement>,
    /// Start of the first window of the breaching streak that raised the alert, RFC 3339.
    pub since: String,
    /// The same, Unix time in ms.
    pub since_unix_ms: u64,
    /// Start of the latest window evaluated, RFC 3339.
    pub latest_window_start: String,
    /// The same, Unix time in ms.
    pub latest_window_start_unix_ms: u64,
    /// Window length, s.
    pub window_s: f64,
    /// The log line, for humans.
    pub message: String,
}

/// An alert ready to publish and log.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertMessage {
    /// Concrete topic (`{node}` replaced).
    pub topic: String,
    /// QoS to publish with.
    pub qos: QoS,
    /// The JSON [`AlertPayload`].
    pub payload: Vec<u8>,
    /// The one-line message logged (also the payload's `message`).
    pub log_line: String,
    /// Raised (log as a warning) or cleared (log as info).
    pub state: AlertState,
}

impl AlertMessage {
    pub(super) fn with_qos(mut self, qos: QoS) -> Self {
        self.qos = qos;
        self
    }
}

/// The message of `event` for `node`, published on `topic` (concrete, already resolved),
/// with windows of `window_ms`. QoS 1; [`LiveMonitor::alert_message`] applies the
/// configured QoS.
///
/// The log line reads, e.g.: `drift alert raised on route vibration: feature std_x:
/// wasserstein_normed 0.3127 >= 0.1000 (ks_p_value 1.2e-30 < 0.0500) since
/// 2026-11-28T16:01:00Z (latest window 2026-11-28T16:03:00Z, windows of 60 s)`.
pub fn alert_message(node: &str, topic: &str, window_ms: u64, event: &AlertEvent) -> AlertMessage {
    let (state, alert) = match event {
        AlertEvent::Raised(a) => (AlertState::Raised, a),
        AlertEvent::Cleared(a) => (AlertState::Cleared, a),
    };
    let kind = match alert.subject {
        Subject::DeadlineMisses | Subject::Fallbacks => "slo",
        _ => "drift",
    };
    let window_s = window_ms as f64 / 1e3;
    let mut line = format!(
        "{kind} alert {} on route {}: {}: ",
        match state {
            AlertState::Raised => "raised",
            AlertState::Cleared => "cleared",
        },
        alert.route,
        alert.subject
    );
    write_measurement(&mut line, &alert.measurement);
    if let Some(s) = &alert.supporting {
        line.push_str(" (");
        write_measurement(&mut line, s);
        line.push(')');
    }
    let since = rfc3339(alert.since.start_ms);
    let latest = rfc3339(alert.latest.start_ms);
    let _ = write!(
        line,
        " {} {since} (latest window {latest}, windows of {} s)",
        match state {
            AlertState::Raised => "since",
            AlertState::Cleared => "after breaching since",
        },
        Float(window_s)
    );
    let payload = AlertPayload {
        node: node.to_owned(),
        route: alert.route.clone(),
        state,
        subject: subject_label(&alert.subject),
        feature: match &alert.subject {
            Subject::Feature(name) => Some(name.clone()),
            _ => None,
        },
        measurement: PublishedMeasurement::of(&alert.measurement),
        supporting: alert.supporting.as_ref().map(PublishedMeasurement::of),
        since,
        since_unix_ms: alert.since.start_ms,
        latest_window_start: latest,
        latest_window_start_unix_ms: alert.latest.start_ms,
        window_s,
        message: line.clone(),
    };
    AlertMessage {
        topic: topic.to_owned(),
        qos: QoS::AtLeastOnce,
        // Serializing plain strings and numbers cannot fail (a NaN becomes null).
        payload: serde_json::to_vec(&payload).unwrap_or_default(),
        log_line: line,
        state,
    }
}

fn write_measurement(out: &mut String, m: &reflex_drift::monitor::Measurement) {
    let comparison = match (m.breaches(), breach_comparison(m.statistic)) {
        (true, c) => c,
        (false, "<") => ">=",
        (false, ">") => "<=",
        (false, _) => "<",
    };
    let _ = write!(
        out,
        "{} {} {comparison} {}",
        statistic_label(m.statistic),
        ShortFloat(m.value),
        ShortFloat(m.threshold)
    );
}

/// A value for humans: 4 decimals, or 2 significant digits in exponent form when tiny.
struct ShortFloat(f64);

impl std::fmt::Display for ShortFloat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if v != 0.0 && v.abs() < 1e-3 {
            write!(f, "{v:.1e}")
        } else {
            write!(f, "{v:.4}")
        }
    }
}

/// Unix time in ms as RFC 3339 UTC: `2026-11-28T16:01:00Z` (with `.mmm` when not a whole
/// second). Times past the calendar's range (9999-12-30T22:00Z) show as its end.
pub fn rfc3339(unix_ms: u64) -> String {
    let ts = i64::try_from(unix_ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .unwrap_or(jiff::Timestamp::MAX);
    let ms = unix_ms % 1_000;
    if ms != 0 {
        format!("{ts:.3}")
    } else {
        format!("{ts:.0}")
    }
}
