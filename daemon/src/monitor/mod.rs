//! Live drift and SLO monitoring of each route on the board: the thread-safe
//! [`LiveMonitor`] the daemon feeds one observation
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
//!   from the recorder thread, never from the real-time threads: it takes one uncontended
//!   lock and inserts into one sketch per feature the route's model declares (13 for the
//!   demo models), and when it crosses a window boundary it also closes the window (the
//!   drift of those sketches). [`LiveMonitor::tick`] closes windows
//!   when no event comes. Lock order is route, then outbox; nothing else is locked.
//! * **Memory** is bounded whatever the rate: per route one open window (one KLL sketch of
//!   at most `3k + 128` values per declared feature) and its alert states; closed
//!   windows wait for the uploader in a queue of at most `keep_closed_windows` (oldest
//!   dropped and counted); alert events wait for the publisher in a queue of at most
//!   [`MAX_PENDING_ALERTS`].
//! * **Outputs.** [`LiveMonitor::render_prometheus`] (gauges of the last closed window, alert
//!   states, counters), [`LiveMonitor::take_closed_windows`] (the [`WindowSummary`]s, with
//!   their sketches, that ride with the uploads), and the [`AlertEvent`]s returned by
//!   [`LiveMonitor::tick`], turned into an MQTT message and a log line by
//!   [`LiveMonitor::alert_message`].
//!
//! Its settings are the configuration's `[monitor]` section
//! ([`crate::config::MonitorSection`], re-exported here). The files, one job each:
//!
//! - `live`: [`LiveMonitor`]: recording, closing windows, the upload and alert queues.
//! - `reference`: a model manifest's reference profile as the drift reference.
//! - `gauges`: the Prometheus families ([`crate::ops::metrics::RenderSeries`]).
//! - `alert`: the alert message, its JSON payload and log line.
//! - `publisher`: [`AlertPublisher`], the task that ticks and publishes.

mod alert;
mod gauges;
mod live;
mod publisher;
mod reference;

use std::time::{SystemTime, UNIX_EPOCH};

use reflex_drift::DriftError;

pub use crate::config::monitor::{MonitorSection, DEFAULT_ALERT_TOPIC, NODE_PLACEHOLDER};
pub use alert::{
    alert_message, rfc3339, statistic_label, subject_label, AlertMessage, AlertPayload, AlertState,
    PublishedMeasurement,
};
pub use live::{LiveMonitor, MAX_PENDING_ALERTS};
pub use publisher::AlertPublisher;
pub use reference::reference_from_manifest;

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
    /// A feature the model declares has no profile in its manifest's reference.
    #[error("model {model}: the reference has no profile of its feature {name:?}")]
    FeatureMissing {
        /// The model name.
        model: String,
        /// The declared feature.
        name: String,
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

/// Microseconds since the Unix epoch, from the system clock (0 before 1970).
pub fn unix_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
