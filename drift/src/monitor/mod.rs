//! The live monitor: per route, tumbling windows of feature sketches and counters; when a
//! window closes, a [`WindowSummary`] with drift scores against the reference, and alert
//! state changes with hysteresis. Pure: the caller passes its clock (milliseconds) with
//! every call, so tests drive it with a fake clock; no I/O, no threads.
//!
//! **Windows.** Window `i` of a route covers `[i·window_ms, (i+1)·window_ms)` on the caller's
//! clock. [`RouteMonitor::record`] first closes the open window if `now_ms` is past its end,
//! then adds the event to the window containing `now_ms`; [`RouteMonitor::tick`] closes it
//! when no event comes. A clock that goes backwards adds to the open window. Windows in which
//! nothing happened are not reported and do not change any alert state.
//!
//! **Checks per closed window** (each a [`Hysteresis`]: raise after `raise_after` breaching
//! windows in a row, clear after `clear_after` clean ones):
//! * each feature: the verdict of [`feature_drift`](crate::stats::verdict::feature_drift)
//!   under the configured thresholds (default KS p < 0.05, and PSI ≥ 0.2 or Wasserstein ≥
//!   0.1 reference standard deviations);
//! * the dataset: share of drifted features ≥ `dataset_share` (default 50%);
//! * predicted classes: Jensen–Shannon distance ≥ `js_distance` (default 0.1);
//! * the deadline-miss rate and the fallback rate against their objectives (breach when
//!   above).
//!
//! Drift checks need `min_events` events in the window (default 1000), SLO checks
//! `slo_min_events` (default 100); a window with fewer is not judged for them (no change to
//! their streaks).
//!
//! **Memory** is bounded whatever the rate: per route one open window (one
//! [`QuantileSketch`](crate::QuantileSketch) per feature, `≤ 3k + 128` values each, and one
//! counter per class) and one state machine per feature plus four; closed windows are handed
//! to the caller, not kept.

mod alert;
mod window;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use alert::{Alert, AlertEvent, Hysteresis, Measurement, Statistic, Subject, WindowRef};
pub use window::{window_drift, WindowDrift, WindowSummary};

use crate::error::DriftError;
use crate::profile::Reference;
use crate::sketch::DEFAULT_K;
use crate::stats::verdict::{DriftThresholds, FeatureRule};
use window::OpenWindow;

/// Monitor settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// Window length (ms), default 60 000.
    pub window_ms: u64,
    /// Sketch accuracy parameter, default 200.
    pub sketch_k: u32,
    /// Events a window needs for drift checks, default 1000 (below that the Wasserstein
    /// distance of clean data to the reference nears 0.1 σ; lengthen the window instead).
    pub min_events: u64,
    /// Events a window needs for SLO checks, default 100.
    pub slo_min_events: u64,
    /// Drift thresholds.
    pub thresholds: DriftThresholds,
    /// Breaching windows in a row that raise an alert, default 3.
    pub raise_after: u32,
    /// Clean windows in a row that clear it, default 3.
    pub clear_after: u32,
    /// Objective for deadline misses / events, default 0.01.
    pub deadline_miss_objective: f64,
    /// Objective for fallback answers / events, default 0.05.
    pub fallback_objective: f64,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            window_ms: 60_000,
            sketch_k: DEFAULT_K,
            min_events: 1000,
            slo_min_events: 100,
            thresholds: DriftThresholds::default(),
            raise_after: 3,
            clear_after: 3,
            deadline_miss_objective: 0.01,
            fallback_objective: 0.05,
        }
    }
}

impl MonitorConfig {
    /// Checks every setting is in range.
    pub fn validate(&self) -> Result<(), DriftError> {
        let invalid = |name, value: f64, expected| {
            Err(DriftError::InvalidParameter {
                name,
                value,
                expected,
            })
        };
        if self.window_ms == 0 {
            return invalid("window_ms", 0.0, "at least 1");
        }
        crate::sketch::QuantileSketch::new(self.sketch_k)?;
        if self.raise_after == 0 {
            return invalid("raise_after", 0.0, "at least 1");
        }
        if self.clear_after == 0 {
            return invalid("clear_after", 0.0, "at least 1");
        }
        for (name, value) in [
            ("deadline_miss_objective", self.deadline_miss_objective),
            ("fallback_objective", self.fallback_objective),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return invalid(name, value, "between 0 and 1");
            }
        }
        self.thresholds.validate()
    }
}

/// What the daemon knows about one decided event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation<'a> {
    /// The model input features, in the reference's order (`None` when they could not be
    /// computed). A NaN or infinite value is counted and not sketched.
    pub features: Option<&'a [f64]>,
    /// The class the model predicted, if the model answered.
    pub model_class: Option<usize>,
    /// The fallback answered.
    pub fallback: bool,
    /// The deadline was missed.
    pub deadline_missed: bool,
}

/// What closing a window produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowReport {
    /// The closed window.
    pub summary: WindowSummary,
    /// Alerts raised or cleared by it.
    pub alerts: Vec<AlertEvent>,
}

/// The monitor of one route.
#[derive(Debug, Clone)]
pub struct RouteMonitor {
    route: String,
    reference: Arc<Reference>,
    config: MonitorConfig,
    open: OpenWindow,
    checks: BTreeMap<Subject, Hysteresis>,
}

impl RouteMonitor {
    /// A monitor for `route` comparing with `reference`; the first window is the one
    /// containing `now_ms`.
    pub fn new(
        route: impl Into<String>,
        reference: Arc<Reference>,
        config: MonitorConfig,
        now_ms: u64,
    ) -> Result<RouteMonitor, DriftError> {
        config.validate()?;
        let open = OpenWindow::new(
            now_ms / config.window_ms,
            reference.features().len(),
            reference.class_fractions().len(),
            config.sketch_k,
        )?;
        Ok(RouteMonitor {
            route: route.into(),
            reference,
            config,
            open,
            checks: BTreeMap::new(),
        })
    }

    /// The route.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The settings.
    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    /// Judges windows with `config` from the next one closed: its thresholds, objectives,
    /// minimum event counts and raise/clear streaks. The open window and the alert states
    /// carry over. Errors, changing nothing, when `config` is invalid or would reshape the
    /// windows (another `window_ms` or `sketch_k`).
    pub fn set_judgement(&mut self, config: MonitorConfig) -> Result<(), DriftError> {
        config.validate()?;
        for (name, old, new) in [
            ("window_ms", self.config.window_ms, config.window_ms),
            (
                "sketch_k",
                u64::from(self.config.sketch_k),
                u64::from(config.sketch_k),
            ),
        ] {
            if old != new {
                return Err(DriftError::InvalidParameter {
                    name,
                    value: new as f64,
                    expected: "the running value (it shapes the open window)",
                });
            }
        }
        self.config = config;
        Ok(())
    }

    /// Events in the open window.
    pub fn open_events(&self) -> u64 {
        self.open.events
    }

    /// Compares with `reference` from now on (a new model with its own reference profile
    /// was loaded): the open window and every later one are judged against it; alert
    /// states carry over, so an alert the new reference no longer supports clears after
    /// `clear_after` clean windows. Errors, changing nothing, when the new reference has
    /// another number of features or classes than the sketches being filled.
    pub fn set_reference(&mut self, reference: Arc<Reference>) -> Result<(), DriftError> {
        let (features, classes) = (
            self.reference.features().len(),
            self.reference.class_fractions().len(),
        );
        if reference.features().len() != features {
            return Err(DriftError::LengthMismatch {
                what: "new reference features",
                left: features,
                right: reference.features().len(),
            });
        }
        if reference.class_fractions().len() != classes {
            return Err(DriftError::LengthMismatch {
                what: "new reference classes",
                left: classes,
                right: reference.class_fractions().len(),
            });
        }
        self.reference = reference;
        Ok(())
    }

    /// Alerts currently raised.
    pub fn raised(&self) -> Vec<&Alert> {
        self.checks
            .values()
            .filter_map(Hysteresis::raised)
            .collect()
    }

    /// Records one event at `now_ms`, closing the open window first if `now_ms` is past
    /// its end. Errors (recording nothing, closing nothing) on a feature vector of the wrong
    /// length or a class out of range.
    pub fn record(
        &mut self,
        now_ms: u64,
        observation: &Observation<'_>,
    ) -> Result<Option<WindowReport>, DriftError> {
        let features = self.reference.features().len();
        if let Some(values) = observation.features {
            if values.len() != features {
                return Err(DriftError::FeatureCount {
                    expected: features,
                    actual: values.len(),
                });
            }
        }
        let classes = self.reference.class_fractions().len();
        if let Some(class) = observation.model_class {
            if class >= classes {
                return Err(DriftError::ClassOutOfRange { class, classes });
            }
        }
        let report = self.tick(now_ms)?;
        let w = &mut self.open;
        w.events += 1;
        if let Some(values) = observation.features {
            for (sketch, &v) in w.sketches.iter_mut().zip(values) {
                if sketch.insert(v).is_err() {
                    w.non_finite_values += 1;
                }
            }
        }
        if let Some(class) = observation.model_class {
            w.class_counts[class] += 1;
        }
        w.fallbacks += u64::from(observation.fallback);
        w.deadline_misses += u64::from(observation.deadline_missed);
        Ok(report)
    }

    /// Closes the open window if `now_ms` is past its end; `None` when it is not, or when
    /// the window was empty (then the next window starts at `now_ms` silently).
    pub fn tick(&mut self, now_ms: u64) -> Result<Option<WindowReport>, DriftError> {
        let index = now_ms / self.config.window_ms;
        if index <= self.open.index {
            return Ok(None);
        }
        let fresh = OpenWindow::new(
            index,
            self.reference.features().len(),
            self.reference.class_fractions().len(),
            self.config.sketch_k,
        )?;
        let closed = std::mem::replace(&mut self.open, fresh);
        if closed.events == 0 {
            return Ok(None);
        }
        let summary = closed.close(
            &self.route,
            self.config.window_ms,
            &self.reference,
            &self.config.thresholds,
            self.config.min_events,
        )?;
        let alerts = self.evaluate(&summary);
        Ok(Some(WindowReport { summary, alerts }))
    }

    fn evaluate(&mut self, summary: &WindowSummary) -> Vec<AlertEvent> {
        let window = WindowRef {
            index: summary.index,
            start_ms: summary.start_ms,
        };
        let c = self.config;
        let t = c.thresholds;
        let mut judged: Vec<(Subject, Measurement, Option<Measurement>, bool)> = Vec::new();
        if let Some(drift) = &summary.drift {
            for f in &drift.features {
                let psi = Measurement {
                    statistic: Statistic::Psi,
                    value: f.psi,
                    threshold: t.psi,
                };
                let ks = Measurement {
                    statistic: Statistic::KsPValue,
                    value: f.ks_p_value,
                    threshold: t.ks_p_value,
                };
                let w = Measurement {
                    statistic: Statistic::WassersteinNormed,
                    value: f.wasserstein_normed,
                    threshold: t.wasserstein_normed,
                };
                let (main, supporting) = match t.rule {
                    FeatureRule::Ks => (ks, None),
                    FeatureRule::Psi => (psi, None),
                    FeatureRule::Wasserstein => (w, None),
                    FeatureRule::KsAndPsi | FeatureRule::KsOrPsi => (psi, Some(ks)),
                    // The effect size that breaches (Wasserstein when both or neither do).
                    FeatureRule::KsAndEffect if f.psi_drift && !f.wasserstein_drift => {
                        (psi, Some(ks))
                    }
                    FeatureRule::KsAndEffect => (w, Some(ks)),
                };
                judged.push((
                    Subject::Feature(f.name.clone()),
                    main,
                    supporting,
                    f.drifted,
                ));
            }
            judged.push((
                Subject::Dataset,
                Measurement {
                    statistic: Statistic::DriftedShare,
                    value: drift.dataset.share,
                    threshold: t.dataset_share,
                },
                None,
                drift.dataset.drifted,
            ));
            if let Some(js) = drift.class_js_distance {
                judged.push((
                    Subject::PredictedClasses,
                    Measurement {
                        statistic: Statistic::JensenShannon,
                        value: js,
                        threshold: t.js_distance,
                    },
                    None,
                    drift.class_drift,
                ));
            }
        }
        if summary.events >= c.slo_min_events.max(1) {
            for (subject, statistic, value, threshold) in [
                (
                    Subject::DeadlineMisses,
                    Statistic::DeadlineMissRate,
                    summary.deadline_miss_rate(),
                    c.deadline_miss_objective,
                ),
                (
                    Subject::Fallbacks,
                    Statistic::FallbackRate,
                    summary.fallback_rate(),
                    c.fallback_objective,
                ),
            ] {
                let m = Measurement {
                    statistic,
                    value,
                    threshold,
                };
                judged.push((subject, m, None, m.breaches()));
            }
        }
        let mut events = Vec::new();
        for (subject, measurement, supporting, breached) in judged {
            let alert = Alert {
                route: self.route.clone(),
                subject: subject.clone(),
                measurement,
                supporting,
                since: window,
                latest: window,
            };
            let state = self.checks.entry(subject).or_default();
            if let Some(e) = state.step(alert, breached, c.raise_after, c.clear_after) {
                events.push(e);
            }
        }
        events
    }
}

/// Monitors of several routes, each with its own reference.
#[derive(Debug, Clone, Default)]
pub struct Monitor {
    routes: BTreeMap<String, RouteMonitor>,
}

impl Monitor {
    /// No routes yet.
    pub fn new() -> Monitor {
        Monitor::default()
    }

    /// Adds (or replaces, e.g. after a model reload) a route's monitor.
    pub fn add_route(
        &mut self,
        route: impl Into<String>,
        reference: Arc<Reference>,
        config: MonitorConfig,
        now_ms: u64,
    ) -> Result<(), DriftError> {
        let route = route.into();
        let m = RouteMonitor::new(route.clone(), reference, config, now_ms)?;
        self.routes.insert(route, m);
        Ok(())
    }

    /// A route's monitor.
    pub fn route(&self, route: &str) -> Option<&RouteMonitor> {
        self.routes.get(route)
    }

    /// A route's monitor, mutable (to [`RouteMonitor::record`]).
    pub fn route_mut(&mut self, route: &str) -> Option<&mut RouteMonitor> {
        self.routes.get_mut(route)
    }

    /// Records an event on a route ([`RouteMonitor::record`]). Errors on an unknown route.
    pub fn record(
        &mut self,
        route: &str,
        now_ms: u64,
        observation: &Observation<'_>,
    ) -> Result<Option<WindowReport>, DriftError> {
        self.routes
            .get_mut(route)
            .ok_or_else(|| DriftError::UnknownRoute {
                route: route.to_owned(),
            })?
            .record(now_ms, observation)
    }

    /// Closes every route's window that `now_ms` is past.
    pub fn tick(&mut self, now_ms: u64) -> Result<Vec<WindowReport>, DriftError> {
        let mut out = Vec::new();
        for m in self.routes.values_mut() {
            if let Some(r) = m.tick(now_ms)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Every raised alert, by route.
    pub fn raised(&self) -> Vec<&Alert> {
        self.routes
            .values()
            .flat_map(RouteMonitor::raised)
            .collect()
    }
}
