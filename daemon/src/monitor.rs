//! Live drift and SLO monitoring of each route on the board (issue 8): the `[monitor]`
//! configuration section, the thread-safe [`LiveMonitor`] the daemon feeds one observation
//! per decided event, its Prometheus gauges, the MQTT alert messages, and the
//! [`AlertPublisher`] task that closes windows every second and publishes alerts.
//!
//! The statistics, sketches, windows and hysteresis are `reflex_drift::monitor`'s
//! ([`RouteMonitor`]); this module adds what a daemon needs around them:
//!
//! * **Clock.** Wall-clock time in µs since the Unix epoch ([`unix_now_us`]), so windows are
//!   aligned on the wall clock (`[i·window, (i+1)·window)`), their start times mean the same
//!   on the board and in the cloud, and alerts say *since when* in RFC 3339. A clock that
//!   steps back adds to the open window; a step forward closes it (drift crate's rules).
//! * **Threads.** One `Mutex` per route (recording on one route never waits for another
//!   route's window to close) and one for the outbox. [`LiveMonitor::record`] is called
//!   from the recorder thread, never from the real-time threads: it costs one uncontended
//!   lock and 13 sketch inserts (≈ 1 µs), and when it crosses a window boundary it also
//!   closes the window (drift of 13 sketches, 1–4 ms). [`LiveMonitor::tick`] closes windows
//!   when no event comes. Lock order is route, then outbox; nothing else is locked.
//! * **Memory** is bounded whatever the rate: per route one open window (13 KLL sketches of
//!   at most `3k + 128` values each, ≈ 75 KiB at `k = 200`) and its alert states; closed
//!   windows wait for the uploader in a queue of at most `keep_closed_windows` (oldest
//!   dropped and counted); alert events wait for the publisher in a queue of at most
//!   [`MAX_PENDING_ALERTS`].
//! * **Outputs.** [`LiveMonitor::render_prometheus`] (gauges of the last closed window, alert
//!   states, counters), [`LiveMonitor::take_closed_windows`] (the [`WindowSummary`]s, with
//!   their sketches, that ride with the uploads), and the [`AlertEvent`]s returned by
//!   [`LiveMonitor::tick`], turned into an MQTT message and a log line by
//!   [`LiveMonitor::alert_message`].

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reflex_drift::monitor::{
    AlertEvent, MonitorConfig, Observation, RouteMonitor, Statistic, Subject, WindowDrift,
    WindowReport, WindowSummary,
};
use reflex_drift::sketch::{DEFAULT_K, MAX_K, MIN_K};
use reflex_drift::stats::verdict::DriftThresholds;
use reflex_drift::{DriftError, FeatureReference, QuantileProfile, Reference};
use reflex_models::{Manifest, FEATURE_NAMES};
use rumqttc::{AsyncClient, QoS};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics::{header, single, Escaped};

/// Placeholder in `alert_topic` replaced by the node name.
pub const NODE_PLACEHOLDER: &str = "{node}";

/// Default alert topic.
pub const DEFAULT_ALERT_TOPIC: &str = "reflex/{node}/alerts";

/// Longest node name (`node.name` is 1..=64 bytes), for the topic length check.
const MAX_NODE_NAME_BYTES: usize = 64;

/// Most alert events waiting for [`LiveMonitor::tick`]'s caller; beyond, the oldest are
/// dropped and counted (`reflexd_monitor_alert_events_dropped_total`). Only reachable when
/// the publisher stopped ticking: it drains them every second.
pub const MAX_PENDING_ALERTS: usize = 1024;

/// `[monitor]`: live drift and SLO monitoring of every route.
///
/// The drift thresholds are the `[monitor.thresholds]` table, the same table (and names) as
/// reflex-cloud's `[rescore.thresholds]`, so board and cloud judge with the same rules.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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

/// One problem found by [`MonitorSection::validate`]: (field path such as
/// `monitor.thresholds.psi`, the bad value as written in TOML, why it is refused).
pub type SectionProblem = (String, String, String);

impl MonitorSection {
    /// Checks every value, whether or not the section is enabled; returns all problems at
    /// once (empty when valid). Pure.
    pub fn validate(&self) -> Vec<SectionProblem> {
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
        problems
    }

    /// The drift crate's settings. Only meaningful on a section that passed
    /// [`MonitorSection::validate`] ([`LiveMonitor::new`] checks again).
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
fn check_alert_topic(template: &str) -> Result<(), String> {
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
    let max = crate::config::MAX_TOPIC_BYTES;
    if longest > max {
        return Err(format!(
            "with a {MAX_NODE_NAME_BYTES}-byte node name the topic is {longest} bytes, over {max}"
        ));
    }
    Ok(())
}

/// Why the monitor could not be built or refused an observation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MonitorError {
    /// A manifest's reference profile is not a valid drift reference.
    #[error("model {model}: invalid reference profile: {source}")]
    Reference {
        /// The model name.
        model: String,
        /// Why.
        source: DriftError,
    },
    /// A manifest's reference features are not the 13 features the daemon computes, in
    /// their order.
    #[error(
        "model {model}: reference feature {index} is {found:?}, the daemon computes {expected:?} there"
    )]
    FeatureOrder {
        /// The model name.
        model: String,
        /// Position.
        index: usize,
        /// What `reflex_models::FEATURE_NAMES` has there (empty past its end).
        expected: &'static str,
        /// What the manifest has there (empty past its end).
        found: String,
    },
    /// The monitor settings are out of range.
    #[error("invalid monitor settings: {0}")]
    Settings(DriftError),
    /// Two routes with the same name.
    #[error("route {route:?} is monitored twice")]
    DuplicateRoute {
        /// The name.
        route: String,
    },
    /// A route index the monitor was not built with.
    #[error("route index {index} is out of range ({routes} routes are monitored)")]
    UnknownRoute {
        /// The index given.
        index: usize,
        /// Routes monitored.
        routes: usize,
    },
    /// An observation the route's monitor refused (wrong feature count, class out of
    /// range).
    #[error("route {route:?}: observation refused: {source}")]
    Observation {
        /// The route.
        route: String,
        /// Why.
        source: DriftError,
    },
}

/// The drift reference of a model: its manifest's `reference` (per-feature quantile
/// profiles and predicted-class fractions) as reflex-drift's [`Reference`]. Refuses a
/// reference whose features are not [`FEATURE_NAMES`] in order, since the daemon records
/// `reflex_models::features::compute`'s output positionally.
pub fn reference_from_manifest(manifest: &Manifest) -> Result<Reference, MonitorError> {
    let profiles = &manifest.reference.features;
    for index in 0..profiles.len().max(FEATURE_NAMES.len()) {
        let expected = FEATURE_NAMES.get(index).copied().unwrap_or("");
        let found = profiles.get(index).map_or("", |p| p.name.as_str());
        if expected != found {
            return Err(MonitorError::FeatureOrder {
                model: manifest.name.clone(),
                index,
                expected,
                found: found.to_owned(),
            });
        }
    }
    let invalid = |source| MonitorError::Reference {
        model: manifest.name.clone(),
        source,
    };
    let features = profiles
        .iter()
        .map(|p| {
            Ok(FeatureReference {
                name: p.name.clone(),
                profile: QuantileProfile::new(p.quantiles.clone(), p.count as u64)?,
            })
        })
        .collect::<Result<Vec<_>, DriftError>>()
        .map_err(invalid)?;
    Reference::new(
        features,
        manifest.reference.predicted_class_fraction.clone(),
    )
    .map_err(invalid)
}

/// Microseconds since the Unix epoch, from the system clock (0 before 1970).
pub fn unix_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// What the gauges show of a route's last closed window (no sketches).
#[derive(Debug, Clone)]
struct LastWindow {
    end_ms: u64,
    events: u64,
    deadline_miss_rate: f64,
    fallback_rate: f64,
    non_finite_values: u64,
    /// `None` when the window had fewer than `min_events` events.
    drift: Option<WindowDrift>,
}

#[derive(Debug)]
struct RouteState {
    monitor: RouteMonitor,
    last: Option<LastWindow>,
    windows_closed: u64,
    raised_total: u64,
    cleared_total: u64,
}

#[derive(Debug)]
struct RouteSlot {
    name: String,
    feature_names: Vec<String>,
    state: Mutex<RouteState>,
    record_errors: AtomicU64,
}

#[derive(Debug, Default)]
struct Outbox {
    closed: VecDeque<WindowSummary>,
    alerts: VecDeque<AlertEvent>,
    windows_dropped: u64,
    alerts_dropped: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain counters and sketches, still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The live monitor of every route (module doc). `Send + Sync`: share it as
/// `Arc<LiveMonitor>` between the recorder thread, the publisher task, the metrics
/// endpoint and the uploader.
#[derive(Debug)]
pub struct LiveMonitor {
    node: String,
    alert_topic: String,
    alert_qos: QoS,
    window_ms: u64,
    keep_closed_windows: usize,
    routes: Vec<RouteSlot>,
    outbox: Mutex<Outbox>,
    alerts_published: AtomicU64,
    alert_publish_failures: AtomicU64,
}

impl LiveMonitor {
    /// A monitor of `routes` (route name, reference of the model that answers it), in the
    /// order of the configuration's routes (so [`LiveMonitor::record`]'s route index is
    /// the configuration's). Errors on invalid settings or a route named twice.
    pub fn new(
        section: &MonitorSection,
        node: &str,
        routes: Vec<(String, Reference)>,
    ) -> Result<LiveMonitor, MonitorError> {
        let config = section.monitor_config();
        config.validate().map_err(MonitorError::Settings)?;
        let mut slots: Vec<RouteSlot> = Vec::with_capacity(routes.len());
        for (name, reference) in routes {
            if slots.iter().any(|s| s.name == name) {
                return Err(MonitorError::DuplicateRoute { route: name });
            }
            let feature_names = reference
                .features()
                .iter()
                .map(|f| f.name.clone())
                .collect();
            // Window 0 is empty: the first event opens the window containing it.
            let monitor = RouteMonitor::new(name.clone(), Arc::new(reference), config, 0)
                .map_err(MonitorError::Settings)?;
            slots.push(RouteSlot {
                name,
                feature_names,
                state: Mutex::new(RouteState {
                    monitor,
                    last: None,
                    windows_closed: 0,
                    raised_total: 0,
                    cleared_total: 0,
                }),
                record_errors: AtomicU64::new(0),
            });
        }
        Ok(LiveMonitor {
            node: node.to_owned(),
            alert_topic: section.alert_topic_for(node),
            alert_qos: section.qos(),
            window_ms: config.window_ms,
            keep_closed_windows: section.keep_closed_windows.max(1),
            routes: slots,
            outbox: Mutex::new(Outbox::default()),
            alerts_published: AtomicU64::new(0),
            alert_publish_failures: AtomicU64::new(0),
        })
    }

    /// Judges `route` (configuration index) against `reference` from now on: its model was
    /// reloaded with another reference profile. Refused, changing nothing, when the
    /// reference's features or classes differ in number from the route's sketches.
    pub fn set_reference(&self, route: usize, reference: Reference) -> Result<(), DriftError> {
        let slot = self
            .routes
            .get(route)
            .ok_or_else(|| DriftError::UnknownRoute {
                route: route.to_string(),
            })?;
        lock(&slot.state).monitor.set_reference(Arc::new(reference))
    }

    /// The node name alerts carry.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The concrete alert topic.
    pub fn alert_topic(&self) -> &str {
        &self.alert_topic
    }

    /// The window length, ms.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// Route names, by index.
    pub fn route_names(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.name.as_str()).collect()
    }

    /// Records one decided event of route `route` (index into the routes given to
    /// [`LiveMonitor::new`]) at `at_unix_us`: `observation.features` are
    /// `reflex_models::features::compute`'s output, `model_class` the model's class when
    /// the model answered (`None` when the fallback did: the class distribution is the
    /// model's), `fallback` and `deadline_missed` as decided. If `at_unix_us` is past the
    /// open window's end, that window is closed first (its summary queued for upload, its
    /// alert events for [`LiveMonitor::tick`]).
    ///
    /// Errors, recording nothing, on an unknown route or an observation the route refuses
    /// (feature count, class out of range); each is counted in
    /// `reflexd_monitor_record_errors_total`.
    pub fn record(
        &self,
        route: usize,
        at_unix_us: u64,
        observation: &Observation<'_>,
    ) -> Result<(), MonitorError> {
        let slot = self.routes.get(route).ok_or(MonitorError::UnknownRoute {
            index: route,
            routes: self.routes.len(),
        })?;
        let mut state = lock(&slot.state);
        match state.monitor.record(at_unix_us / 1_000, observation) {
            Ok(None) => Ok(()),
            Ok(Some(report)) => {
                self.closed(&mut state, report);
                Ok(())
            }
            Err(source) => {
                slot.record_errors.fetch_add(1, Ordering::Relaxed);
                Err(MonitorError::Observation {
                    route: slot.name.clone(),
                    source,
                })
            }
        }
    }

    /// Closes every window `now_unix_us` is past, and returns every alert event not yet
    /// returned (from these windows and from windows [`LiveMonitor::record`] closed), oldest
    /// first. Call it about every second (the [`AlertPublisher`] does).
    pub fn tick(&self, now_unix_us: u64) -> Vec<AlertEvent> {
        let now_ms = now_unix_us / 1_000;
        for slot in &self.routes {
            let mut state = lock(&slot.state);
            match state.monitor.tick(now_ms) {
                Ok(Some(report)) => self.closed(&mut state, report),
                Ok(None) => {}
                // Only on an internal inconsistency (sketch and reference lengths agree by
                // construction): the window is lost, the monitor goes on.
                Err(e) => {
                    tracing::error!(route = %slot.name, error = %e, "closing a monitor window failed")
                }
            }
        }
        lock(&self.outbox).alerts.drain(..).collect()
    }

    /// A window closed: keep its figures for the gauges, queue its summary and alerts.
    fn closed(&self, state: &mut RouteState, report: WindowReport) {
        let WindowReport { summary, alerts } = report;
        state.windows_closed += 1;
        for e in &alerts {
            match e {
                AlertEvent::Raised(_) => state.raised_total += 1,
                AlertEvent::Cleared(_) => state.cleared_total += 1,
            }
        }
        state.last = Some(LastWindow {
            end_ms: summary.end_ms,
            events: summary.events,
            deadline_miss_rate: summary.deadline_miss_rate(),
            fallback_rate: summary.fallback_rate(),
            non_finite_values: summary.non_finite_values,
            drift: summary.drift.clone(),
        });
        let mut outbox = lock(&self.outbox);
        if outbox.closed.len() >= self.keep_closed_windows {
            outbox.closed.pop_front();
            outbox.windows_dropped += 1;
        }
        outbox.closed.push_back(summary);
        for e in alerts {
            if outbox.alerts.len() >= MAX_PENDING_ALERTS {
                outbox.alerts.pop_front();
                outbox.alerts_dropped += 1;
            }
            outbox.alerts.push_back(e);
        }
    }

    /// Takes the closed windows waiting for upload (oldest first; each names its route),
    /// leaving the queue empty. The uploader attaches them to the batch that covers them.
    pub fn take_closed_windows(&self) -> Vec<WindowSummary> {
        lock(&self.outbox).closed.drain(..).collect()
    }

    /// Closed windows dropped because the queue was full (the uploader did not take them),
    /// or because the journal refused them.
    pub fn windows_dropped(&self) -> u64 {
        lock(&self.outbox).windows_dropped
    }

    /// A closed window taken for upload could not be kept (journal error).
    pub fn window_not_kept(&self) {
        lock(&self.outbox).windows_dropped += 1;
    }

    /// Alerts currently raised, every route.
    pub fn raised(&self) -> Vec<reflex_drift::monitor::Alert> {
        let mut out = Vec::new();
        for slot in &self.routes {
            let state = lock(&slot.state);
            out.extend(state.monitor.raised().into_iter().cloned());
        }
        out
    }

    /// Events in each route's open window.
    pub fn open_events(&self) -> Vec<u64> {
        self.routes
            .iter()
            .map(|s| lock(&s.state).monitor.open_events())
            .collect()
    }

    /// Counts one alert publish outcome (for `reflexd_monitor_alerts_published_total` and
    /// `reflexd_monitor_alert_publish_failures_total`).
    pub fn alert_published(&self, ok: bool) {
        let counter = if ok {
            &self.alerts_published
        } else {
            &self.alert_publish_failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The MQTT message and log line of an alert event (see [`AlertPayload`]).
    pub fn alert_message(&self, event: &AlertEvent) -> AlertMessage {
        alert_message(&self.node, &self.alert_topic, self.window_ms, event).with_qos(self.alert_qos)
    }

    /// Appends the monitor's series to a Prometheus text exposition (format 0.0.4), in the
    /// style of `metrics.rs`: `# HELP` and `# TYPE` once per family, one sample per label
    /// set. Drift scores describe each route's last closed window and are absent when it
    /// had fewer than `min_events` events (or before the first window closes).
    pub fn render_prometheus(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = self.render_into(out);
    }

    fn render_into(&self, out: &mut String) -> std::fmt::Result {
        struct RouteView {
            name: String,
            features: Vec<String>,
            last: Option<LastWindow>,
            raised: Vec<Subject>,
            open_events: u64,
            windows_closed: u64,
            raised_total: u64,
            cleared_total: u64,
            record_errors: u64,
        }
        // One short lock per route, then render without holding any.
        let views: Vec<RouteView> = self
            .routes
            .iter()
            .map(|slot| {
                let state = lock(&slot.state);
                RouteView {
                    name: slot.name.clone(),
                    features: slot.feature_names.clone(),
                    last: state.last.clone(),
                    raised: state
                        .monitor
                        .raised()
                        .into_iter()
                        .map(|a| a.subject.clone())
                        .collect(),
                    open_events: state.monitor.open_events(),
                    windows_closed: state.windows_closed,
                    raised_total: state.raised_total,
                    cleared_total: state.cleared_total,
                    record_errors: slot.record_errors.load(Ordering::Relaxed),
                }
            })
            .collect();
        let (pending_windows, windows_dropped, alerts_dropped) = {
            let o = lock(&self.outbox);
            (o.closed.len(), o.windows_dropped, o.alerts_dropped)
        };

        // (route, feature drift) of every route's last judged window, for the two families.
        let last_features: Vec<(&str, &reflex_drift::stats::verdict::FeatureDrift)> = views
            .iter()
            .filter_map(|v| Some((v.name.as_str(), v.last.as_ref()?.drift.as_ref()?)))
            .flat_map(|(route, d)| d.features.iter().map(move |f| (route, f)))
            .collect();

        header(
            out,
            "reflexd_drift_score",
            "Drift of each feature in the route's last closed window against the model's \
             reference: ks_statistic, ks_p_value, psi, wasserstein (feature unit), \
             wasserstein_normed (reference standard deviations).",
            "gauge",
        )?;
        for (route, f) in &last_features {
            for (statistic, value) in [
                ("ks_statistic", f.ks_statistic),
                ("ks_p_value", f.ks_p_value),
                ("psi", f.psi),
                ("wasserstein", f.wasserstein),
                ("wasserstein_normed", f.wasserstein_normed),
            ] {
                writeln!(
                    out,
                    "reflexd_drift_score{{route=\"{}\",feature=\"{}\",statistic=\"{statistic}\"}} {}",
                    Escaped(route),
                    Escaped(&f.name),
                    Float(value)
                )?;
            }
        }

        header(
            out,
            "reflexd_drift_feature_drifted",
            "1 when the feature drifted in the route's last closed window (the configured \
             rule), else 0.",
            "gauge",
        )?;
        for (route, f) in &last_features {
            writeln!(
                out,
                "reflexd_drift_feature_drifted{{route=\"{}\",feature=\"{}\"}} {}",
                Escaped(route),
                Escaped(&f.name),
                u8::from(f.drifted)
            )?;
        }

        let per_route_gauge = |out: &mut String,
                               name: &str,
                               help: &str,
                               value: &dyn Fn(&RouteView) -> Option<String>|
         -> std::fmt::Result {
            header(out, name, help, "gauge")?;
            for v in &views {
                if let Some(value) = value(v) {
                    writeln!(out, "{name}{{route=\"{}\"}} {value}", Escaped(&v.name))?;
                }
            }
            Ok(())
        };
        let drift_of = |v: &RouteView| v.last.as_ref().and_then(|l| l.drift.clone());

        per_route_gauge(
            out,
            "reflexd_drift_drifted_feature_share",
            "Share of features that drifted in the route's last closed window.",
            &|v| drift_of(v).map(|d| Float(d.dataset.share).to_string()),
        )?;
        per_route_gauge(
            out,
            "reflexd_drift_class_js_distance",
            "Jensen-Shannon distance (base 2) of the model's predicted classes in the \
             route's last closed window to the reference fractions.",
            &|v| {
                drift_of(v)
                    .and_then(|d| d.class_js_distance)
                    .map(|d| Float(d).to_string())
            },
        )?;
        per_route_gauge(
            out,
            "reflexd_monitor_window_events",
            "Events in the route's last closed monitoring window.",
            &|v| v.last.as_ref().map(|l| l.events.to_string()),
        )?;
        per_route_gauge(
            out,
            "reflexd_monitor_window_deadline_miss_rate",
            "Deadline misses / events in the route's last closed monitoring window.",
            &|v| {
                v.last
                    .as_ref()
                    .map(|l| Float(l.deadline_miss_rate).to_string())
            },
        )?;
        per_route_gauge(
            out,
            "reflexd_monitor_window_fallback_rate",
            "Fallback answers / events in the route's last closed monitoring window.",
            &|v| v.last.as_ref().map(|l| Float(l.fallback_rate).to_string()),
        )?;
        per_route_gauge(
            out,
            "reflexd_monitor_window_non_finite_values",
            "Feature values that were NaN or infinite (not sketched) in the route's last \
             closed monitoring window.",
            &|v| v.last.as_ref().map(|l| l.non_finite_values.to_string()),
        )?;
        per_route_gauge(
            out,
            "reflexd_monitor_window_end_timestamp_seconds",
            "End of the route's last closed monitoring window, Unix time.",
            &|v| {
                v.last
                    .as_ref()
                    .map(|l| Float(l.end_ms as f64 / 1e3).to_string())
            },
        )?;
        per_route_gauge(
            out,
            "reflexd_monitor_open_window_events",
            "Events recorded so far in the route's open monitoring window.",
            &|v| Some(v.open_events.to_string()),
        )?;

        header(
            out,
            "reflexd_monitor_alert",
            "1 while an alert is raised for the route and subject (feature:<name>, dataset, \
             predicted_classes, deadline_misses, fallbacks), else 0.",
            "gauge",
        )?;
        for v in &views {
            let subjects = v
                .features
                .iter()
                .map(|f| Subject::Feature(f.clone()))
                .chain([
                    Subject::Dataset,
                    Subject::PredictedClasses,
                    Subject::DeadlineMisses,
                    Subject::Fallbacks,
                ]);
            for subject in subjects {
                writeln!(
                    out,
                    "reflexd_monitor_alert{{route=\"{}\",subject=\"{}\"}} {}",
                    Escaped(&v.name),
                    Escaped(&subject_label(&subject)),
                    u8::from(v.raised.contains(&subject))
                )?;
            }
        }

        let per_route_counter = |out: &mut String,
                                 name: &str,
                                 help: &str,
                                 value: &dyn Fn(&RouteView) -> u64|
         -> std::fmt::Result {
            header(out, name, help, "counter")?;
            for v in &views {
                writeln!(out, "{name}{{route=\"{}\"}} {}", Escaped(&v.name), value(v))?;
            }
            Ok(())
        };
        per_route_counter(
            out,
            "reflexd_monitor_windows_closed_total",
            "Monitoring windows closed (windows without events are not counted), by route.",
            &|v| v.windows_closed,
        )?;
        header(
            out,
            "reflexd_monitor_alert_events_total",
            "Alert state changes, by route and state (raised or cleared).",
            "counter",
        )?;
        for v in &views {
            for (state, n) in [("raised", v.raised_total), ("cleared", v.cleared_total)] {
                writeln!(
                    out,
                    "reflexd_monitor_alert_events_total{{route=\"{}\",state=\"{state}\"}} {n}",
                    Escaped(&v.name)
                )?;
            }
        }
        per_route_counter(
            out,
            "reflexd_monitor_record_errors_total",
            "Observations the monitor refused (wrong feature count, class out of range), by \
             route.",
            &|v| v.record_errors,
        )?;

        header(
            out,
            "reflexd_monitor_pending_windows",
            "Closed monitoring windows waiting for the uploader.",
            "gauge",
        )?;
        writeln!(out, "reflexd_monitor_pending_windows {pending_windows}")?;
        for (name, help, value) in [
            (
                "reflexd_monitor_windows_dropped_total",
                "Closed monitoring windows dropped because the upload queue was full.",
                windows_dropped,
            ),
            (
                "reflexd_monitor_alert_events_dropped_total",
                "Alert events dropped because nobody took them (publisher not running).",
                alerts_dropped,
            ),
            (
                "reflexd_monitor_alerts_published_total",
                "Alert messages handed to the MQTT client.",
                self.alerts_published.load(Ordering::Relaxed),
            ),
            (
                "reflexd_monitor_alert_publish_failures_total",
                "Alert messages the MQTT client did not take (closed, or no room in time).",
                self.alert_publish_failures.load(Ordering::Relaxed),
            ),
        ] {
            single(out, name, help, "counter", value)?;
        }
        Ok(())
    }
}

/// A sample value: shortest round-trip decimal, exponent form for very small or large
/// magnitudes (a KS p-value of 1e-300 is not 300 zeros), `NaN`, `+Inf`, `-Inf`.
struct Float(f64);

impl std::fmt::Display for Float {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v.is_infinite() {
            f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" })
        } else if v == 0.0 || (1e-4..1e15).contains(&v.abs()) {
            write!(f, "{v}")
        } else {
            write!(f, "{v:e}")
        }
    }
}

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
    fn with_qos(mut self, qos: QoS) -> Self {
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
/// second).
pub fn rfc3339(unix_ms: u64) -> String {
    let (secs, ms) = (unix_ms / 1_000, unix_ms % 1_000);
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    let mut s = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        of_day / 3_600,
        of_day % 3_600 / 60,
        of_day % 60
    );
    if ms != 0 {
        let _ = write!(s, ".{ms:03}");
    }
    s.push('Z');
    s
}

/// (year, month, day) of a day count since 1970-01-01, proleptic Gregorian (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The pipeline stage that closes due windows every second, then logs and publishes each
/// alert event once: `warn` on raise, `info` on clear, JSON on the alert topic.
///
/// It never polls the MQTT event loop (ingest does), so it may await a publish; each is
/// bounded by `publish_timeout` so a full request channel delays alerts, never the task's
/// shutdown by more than that per alert.
#[derive(Clone)]
pub struct AlertPublisher {
    monitor: Arc<LiveMonitor>,
    /// Where closed windows go to ride with the uploads: the journal when an uploader runs
    /// ([`reflex_journal::store::Journal::append_window`]); `None` drops them.
    pub windows_to: Option<Arc<reflex_journal::store::Journal>>,
    /// How often due windows are closed. Default: 1 s.
    pub tick_every: Duration,
    /// Longest wait for room in the client's request channel, per alert. Default: 1 s.
    pub publish_timeout: Duration,
}

impl AlertPublisher {
    /// A publisher of `monitor`'s alerts with the default periods.
    pub fn new(monitor: Arc<LiveMonitor>) -> AlertPublisher {
        AlertPublisher {
            monitor,
            windows_to: None,
            tick_every: Duration::from_secs(1),
            publish_timeout: Duration::from_secs(1),
        }
    }

    /// Ticks until `shutdown` is cancelled, then ticks once more (alerts of windows already
    /// closed are not lost) and returns. The open window is not closed at shutdown: a part
    /// window would be judged as a whole one. Run it before the MQTT Disconnect is queued,
    /// and await it, so its last alerts go out.
    pub async fn run(self, client: AsyncClient, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(self.tick_every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Cancellation safety: `Interval::tick` and `cancelled` are both cancel safe;
            // nothing is lost when either arm loses.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = interval.tick() => {}
            }
            self.tick_and_publish(&client).await;
        }
        self.tick_and_publish(&client).await;
    }

    async fn tick_and_publish(&self, client: &AsyncClient) {
        let monitor = Arc::clone(&self.monitor);
        // Closing a window computes drift (milliseconds): off the async worker.
        let now = unix_now_us();
        let journal = self.windows_to.clone();
        let events = match tokio::task::spawn_blocking(move || {
            let events = monitor.tick(now);
            let closed = monitor.take_closed_windows();
            if let Some(journal) = journal {
                for window in &closed {
                    // At most one line per closed window (one per route per window_s).
                    if let Err(e) = journal.append_window(&window.encode()) {
                        monitor.window_not_kept();
                        tracing::error!(route = %window.route, start_ms = window.start_ms,
                            error = %e, "could not keep a closed window for upload");
                    }
                }
            }
            events
        })
        .await
        {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(error = %e, "the monitor tick panicked");
                return;
            }
        };
        for event in events {
            let message = self.monitor.alert_message(&event);
            log_alert(&message, &event);
            let outcome = tokio::time::timeout(
                self.publish_timeout,
                client.publish(
                    message.topic.clone(),
                    message.qos,
                    false,
                    message.payload.clone(),
                ),
            )
            .await;
            let ok = matches!(outcome, Ok(Ok(())));
            self.monitor.alert_published(ok);
            if !ok {
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!(
                        "no room in the MQTT request channel within {:?}",
                        self.publish_timeout
                    ),
                };
                tracing::error!(topic = %message.topic, error = %why, "could not publish an alert");
            }
        }
    }
}

fn log_alert(message: &AlertMessage, event: &AlertEvent) {
    let a = event.alert();
    let subject = subject_label(&a.subject);
    let statistic = statistic_label(a.measurement.statistic);
    let (value, threshold) = (a.measurement.value, a.measurement.threshold);
    match message.state {
        AlertState::Raised => tracing::warn!(
            route = %a.route, subject = %subject, statistic, value, threshold,
            "{}", message.log_line
        ),
        AlertState::Cleared => tracing::info!(
            route = %a.route, subject = %subject, statistic, value, threshold,
            "{}", message.log_line
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use reflex_drift::monitor::{Alert, Measurement, WindowRef};

    fn repo_path(rel: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(rel)
    }

    fn edge_reference() -> Reference {
        let m = Manifest::load(repo_path("models/edge.manifest.json")).expect("edge manifest");
        reference_from_manifest(&m).expect("edge reference")
    }

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
        assert_eq!(s.validate(), Vec::<SectionProblem>::new());
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
        let fields: Vec<&str> = problems.iter().map(|(f, _, _)| f.as_str()).collect();
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
                .find(|(f, _, _)| f == field)
                .map(|(_, v, r)| (v.clone(), r.clone()))
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
    fn a_reference_with_features_out_of_order_or_invalid_quantiles_is_refused() {
        let mut m = Manifest::load(repo_path("models/edge.manifest.json")).unwrap();
        m.reference.features.swap(3, 4);
        assert_eq!(
            reference_from_manifest(&m).unwrap_err().to_string(),
            "model edge: reference feature 3 is \"std_y\", the daemon computes \"std_x\" there"
        );
        m.reference.features.swap(3, 4);
        m.reference.features.pop();
        assert!(matches!(
            reference_from_manifest(&m),
            Err(MonitorError::FeatureOrder { index: 12, .. })
        ));
        let mut m = Manifest::load(repo_path("models/edge.manifest.json")).unwrap();
        m.reference.features[0].quantiles.reverse();
        let e = reference_from_manifest(&m).unwrap_err().to_string();
        assert!(
            e.starts_with("model edge: invalid reference profile: quantiles decrease"),
            "{e}"
        );
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
        assert!(
            before.contains("reflexd_monitor_alert{route=\"vib\",subject=\"feature:std_x\"} 0\n")
        );

        for w in 0..4 {
            play_window(&m, &r, w, 600, 1.0);
        }
        let events = m.tick(T0_US + 4 * WINDOW_MS * US_PER_MS);
        assert!(
            events.iter().any(|e| matches!(e, AlertEvent::Raised(a) if a.subject == Subject::Feature("std_x".into()))),
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
        assert!(
            text.contains("reflexd_monitor_alert{route=\"vib\",subject=\"deadline_misses\"} 0\n")
        );
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
    }

    #[test]
    fn sample_values_use_exponents_only_for_extreme_magnitudes() {
        assert_eq!(Float(0.0).to_string(), "0");
        assert_eq!(Float(0.25).to_string(), "0.25");
        assert_eq!(Float(1e-300).to_string(), "1e-300");
        assert_eq!(Float(f64::NAN).to_string(), "NaN");
        assert_eq!(Float(f64::NEG_INFINITY).to_string(), "-Inf");
        assert_eq!(Float(1_796_000_060.0).to_string(), "1796000060");
    }
}
