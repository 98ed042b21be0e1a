//! Alerts as values, and the hysteresis that decides when one is raised or cleared.
//!
//! Each (route, subject) has its own [`Hysteresis`]: a check that breaches its threshold for
//! `raise_after` consecutive evaluated windows raises an alert (dated from the first window
//! of that streak); once raised, it clears only after `clear_after` consecutive clean
//! windows. A window without enough events to judge (see `MonitorConfig::min_events`)
//! neither extends nor breaks a streak. So an alternating clean/breached signal never raises
//! when clear, and never clears when raised: no flapping.
//!
//! Nothing here does I/O: reflexd publishes and logs the [`AlertEvent`]s it is handed; their
//! `Display` is the one-line message.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What an alert is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Subject {
    /// One input feature's distribution.
    Feature(String),
    /// The share of features that drifted.
    Dataset,
    /// The distribution of the model's predicted classes.
    PredictedClasses,
    /// The share of events that missed their deadline.
    DeadlineMisses,
    /// The share of events answered by the fallback.
    Fallbacks,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Feature(name) => write!(f, "feature {name}"),
            Subject::Dataset => f.write_str("dataset"),
            Subject::PredictedClasses => f.write_str("predicted classes"),
            Subject::DeadlineMisses => f.write_str("deadline misses"),
            Subject::Fallbacks => f.write_str("fallbacks"),
        }
    }
}

/// Which number was compared with a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    /// Population Stability Index (breach: `≥`).
    Psi,
    /// KS p-value against the reference (breach: `<`).
    KsPValue,
    /// Wasserstein-1 divided by the reference's standard deviation (breach: `≥`).
    WassersteinNormed,
    /// Jensen–Shannon distance, base 2 (breach: `≥`).
    JensenShannon,
    /// Share of drifted features (breach: `≥`).
    DriftedShare,
    /// Deadline misses / events (breach: `>` the objective).
    DeadlineMissRate,
    /// Fallback answers / events (breach: `>` the objective).
    FallbackRate,
}

impl Statistic {
    /// Name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Statistic::Psi => "psi",
            Statistic::KsPValue => "ks p-value",
            Statistic::WassersteinNormed => "wasserstein / reference std",
            Statistic::JensenShannon => "jensen-shannon distance",
            Statistic::DriftedShare => "drifted feature share",
            Statistic::DeadlineMissRate => "deadline miss rate",
            Statistic::FallbackRate => "fallback rate",
        }
    }

    /// Whether `value` breaches `threshold` for this statistic.
    pub fn breaches(self, value: f64, threshold: f64) -> bool {
        match self {
            Statistic::KsPValue => value < threshold,
            Statistic::DeadlineMissRate | Statistic::FallbackRate => value > threshold,
            Statistic::Psi
            | Statistic::WassersteinNormed
            | Statistic::JensenShannon
            | Statistic::DriftedShare => value >= threshold,
        }
    }

    fn breach_symbol(self) -> &'static str {
        match self {
            Statistic::KsPValue => "<",
            Statistic::DeadlineMissRate | Statistic::FallbackRate => ">",
            _ => "≥",
        }
    }

    fn clean_symbol(self) -> &'static str {
        match self {
            Statistic::KsPValue => "≥",
            Statistic::DeadlineMissRate | Statistic::FallbackRate => "≤",
            _ => "<",
        }
    }
}

/// A statistic's value and the threshold it is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Which statistic.
    pub statistic: Statistic,
    /// Its value in the latest window.
    pub value: f64,
    /// The threshold.
    pub threshold: f64,
}

impl Measurement {
    /// Whether the value breaches the threshold.
    pub fn breaches(&self) -> bool {
        self.statistic.breaches(self.value, self.threshold)
    }

    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let symbol = if self.breaches() {
            self.statistic.breach_symbol()
        } else {
            self.statistic.clean_symbol()
        };
        write!(
            f,
            "{} {} {symbol} {}",
            self.statistic.name(),
            format_value(self.value),
            format_value(self.threshold)
        )
    }
}

fn format_value(v: f64) -> String {
    if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:.2e}")
    } else {
        format!("{v:.4}")
    }
}

/// A window, as alerts refer to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowRef {
    /// `start_ms / window_ms`.
    pub index: u64,
    /// Start of the window, caller's clock (ms).
    pub start_ms: u64,
}

/// An alert: which route, what, which statistic, value vs threshold, since when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The route.
    pub route: String,
    /// What it is about.
    pub subject: Subject,
    /// The statistic that decided, in the latest window.
    pub measurement: Measurement,
    /// Another statistic that took part in the verdict (the KS p-value of a feature judged
    /// on KS and PSI), if any.
    pub supporting: Option<Measurement>,
    /// First window of the breaching streak that raised it.
    pub since: WindowRef,
    /// Latest window evaluated.
    pub latest: WindowRef,
}

/// A change of alert state, to be published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "alert")]
pub enum AlertEvent {
    /// The check breached its threshold for `raise_after` consecutive windows.
    Raised(Alert),
    /// The check was clean for `clear_after` consecutive windows.
    Cleared(Alert),
}

impl AlertEvent {
    /// The alert either way.
    pub fn alert(&self) -> &Alert {
        match self {
            AlertEvent::Raised(a) | AlertEvent::Cleared(a) => a,
        }
    }
}

impl fmt::Display for AlertEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (state, a) = match self {
            AlertEvent::Raised(a) => ("raised", a),
            AlertEvent::Cleared(a) => ("cleared", a),
        };
        write!(f, "{state}: route {}: {}: ", a.route, a.subject)?;
        a.measurement.write(f)?;
        if let Some(s) = &a.supporting {
            f.write_str(" (")?;
            s.write(f)?;
            f.write_str(")")?;
        }
        write!(
            f,
            " in window {}; breaching since window {} (start {} ms)",
            a.latest.index, a.since.index, a.since.start_ms
        )
    }
}

/// The raise/clear state machine of one (route, subject) (module doc).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hysteresis {
    raised: Option<Alert>,
    streak: u32,
    streak_start: Option<WindowRef>,
}

impl Hysteresis {
    /// The raised alert, if any.
    pub fn raised(&self) -> Option<&Alert> {
        self.raised.as_ref()
    }

    /// Feeds one evaluated window: `alert` describes it (its `since` is ignored and set
    /// here), `breached` says whether it breaches. Returns a state change, if any.
    pub fn step(
        &mut self,
        mut alert: Alert,
        breached: bool,
        raise_after: u32,
        clear_after: u32,
    ) -> Option<AlertEvent> {
        let window = alert.latest;
        match self.raised.take() {
            None => {
                if !breached {
                    self.streak = 0;
                    self.streak_start = None;
                    return None;
                }
                self.streak += 1;
                let since = *self.streak_start.get_or_insert(window);
                if self.streak < raise_after.max(1) {
                    return None;
                }
                alert.since = since;
                self.raised = Some(alert.clone());
                self.streak = 0;
                self.streak_start = None;
                Some(AlertEvent::Raised(alert))
            }
            Some(previous) => {
                alert.since = previous.since;
                if breached {
                    self.streak = 0;
                    self.raised = Some(alert);
                    return None;
                }
                self.streak += 1;
                if self.streak < clear_after.max(1) {
                    self.raised = Some(alert);
                    return None;
                }
                self.streak = 0;
                Some(AlertEvent::Cleared(alert))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(index: u64, value: f64) -> Alert {
        let w = WindowRef {
            index,
            start_ms: index * 1000,
        };
        Alert {
            route: "r".into(),
            subject: Subject::Feature("f".into()),
            measurement: Measurement {
                statistic: Statistic::Psi,
                value,
                threshold: 0.2,
            },
            supporting: None,
            since: w,
            latest: w,
        }
    }

    /// Feeds a breach pattern and returns (window, raised?) for each state change.
    fn run(pattern: &str, k: u32) -> Vec<(u64, bool)> {
        let mut h = Hysteresis::default();
        let mut out = Vec::new();
        for (i, c) in pattern.chars().enumerate() {
            let breached = c == 'x';
            let value = if breached { 0.5 } else { 0.01 };
            if let Some(e) = h.step(alert(i as u64, value), breached, k, k) {
                out.push((i as u64, matches!(e, AlertEvent::Raised(_))));
            }
        }
        out
    }

    #[test]
    fn an_alert_rises_on_the_kth_breach_in_a_row_and_clears_on_the_kth_clean_window() {
        assert_eq!(run("..xxx..xx...", 3), vec![(4, true), (11, false)]);
    }

    #[test]
    fn alternating_windows_never_change_the_state() {
        assert_eq!(run("x.x.x.x.x.x.xx.x", 3), vec![]);
        assert_eq!(run("xxx.x.x.x.x.x.x", 3), vec![(2, true)]);
    }

    #[test]
    fn a_raised_alert_is_dated_from_the_first_window_of_its_streak() {
        let mut h = Hysteresis::default();
        let mut raised = None;
        for i in 0..6 {
            if let Some(e) = h.step(alert(i, 0.5), i >= 3, 2, 2) {
                raised = Some(e);
            }
        }
        let e = raised.expect("raised");
        assert_eq!(e.alert().since.index, 3);
        assert_eq!(e.alert().latest.index, 4);
        assert_eq!(
            e.to_string(),
            "raised: route r: feature f: psi 0.5000 ≥ 0.2000 in window 4; \
             breaching since window 3 (start 3000 ms)"
        );
        assert_eq!(h.raised().map(|a| a.latest.index), Some(5));
    }
}
