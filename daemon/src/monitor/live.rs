//! [`LiveMonitor`]: one [`RouteMonitor`] per route behind its own lock, the closing of
//! windows (on an event past the open window's end, or on [`LiveMonitor::tick`]), and
//! the bounded queues of closed windows and alert events.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use reflex_drift::monitor::{
    AlertEvent, Observation, RouteMonitor, WindowDrift, WindowReport, WindowSummary,
};
use reflex_drift::{DriftError, Reference};
use rumqttc::QoS;

use super::alert::{alert_message, AlertMessage};
use super::{MonitorError, MonitorSection};

/// Most alert events waiting for [`LiveMonitor::tick`]'s caller; beyond, the oldest are
/// dropped and counted (`reflexd_monitor_alert_events_dropped_total`). Only reachable when
/// the publisher stopped ticking: it drains them every second.
pub const MAX_PENDING_ALERTS: usize = 1024;

/// What the gauges show of a route's last closed window (no sketches).
#[derive(Debug, Clone)]
pub(super) struct LastWindow {
    pub(super) end_ms: u64,
    pub(super) events: u64,
    pub(super) deadline_miss_rate: f64,
    pub(super) fallback_rate: f64,
    pub(super) non_finite_values: u64,
    /// `None` when the window had fewer than `min_events` events.
    pub(super) drift: Option<WindowDrift>,
}

#[derive(Debug)]
pub(super) struct RouteState {
    pub(super) monitor: RouteMonitor,
    pub(super) last: Option<LastWindow>,
    pub(super) windows_closed: u64,
    pub(super) raised_total: u64,
    pub(super) cleared_total: u64,
}

#[derive(Debug)]
pub(super) struct RouteSlot {
    pub(super) name: String,
    pub(super) feature_names: Vec<String>,
    pub(super) state: Mutex<RouteState>,
    pub(super) record_errors: AtomicU64,
}

#[derive(Debug, Default)]
pub(super) struct Outbox {
    pub(super) closed: VecDeque<WindowSummary>,
    pub(super) alerts: VecDeque<AlertEvent>,
    pub(super) windows_dropped: u64,
    pub(super) alerts_dropped: u64,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain counters and sketches, still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The live monitor of every route (module doc). `Send + Sync`: share it as
/// `Arc<LiveMonitor>` between the recorder thread, the publisher task, the metrics
/// endpoint and the uploader.
#[derive(Debug)]
pub struct LiveMonitor {
    pub(super) node: String,
    pub(super) alert_topic: String,
    pub(super) alert_qos: QoS,
    pub(super) window_ms: u64,
    pub(super) keep_closed_windows: usize,
    pub(super) routes: Vec<RouteSlot>,
    pub(super) outbox: Mutex<Outbox>,
    pub(super) alerts_published: AtomicU64,
    pub(super) alert_publish_failures: AtomicU64,
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

    /// Judges every route's windows with `section`'s thresholds, objectives, minimum
    /// event counts and raise/clear streaks from the next window each closes (a reload;
    /// see `config::reload`). All routes or none: errors, changing nothing, on settings
    /// that are invalid or would reshape the open windows.
    pub fn set_judgement(&self, section: &MonitorSection) -> Result<(), MonitorError> {
        let config = section.monitor_config();
        config.validate().map_err(MonitorError::Settings)?;
        for slot in &self.routes {
            lock(&slot.state)
                .monitor
                .set_judgement(config)
                .map_err(MonitorError::Settings)?;
        }
        Ok(())
    }

    /// Whether route `route` (index) is monitored: routes added by a reload are not, until
    /// the next start.
    pub fn watches(&self, route: usize) -> bool {
        route < self.routes.len()
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
}
