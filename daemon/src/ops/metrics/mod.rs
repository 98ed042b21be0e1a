//! Prometheus metrics without the `prometheus` crate or an HTTP framework.
//!
//! Every counter, gauge and histogram bucket is an [`AtomicU64`] updated with relaxed
//! ordering, so the real-time paths (receive, schedule, infer, publish) never take a
//! lock or allocate to record a figure. The only lock guards the model name/version
//! labels, written at start-up and on reload, read by [`Metrics::render`].
//!
//! Label sets are bounded when [`Metrics::new`] runs: routes come from the
//! configuration, with [`SPARE_ROUTE_SLOTS`] more slots that routes added by a reload
//! take ([`Metrics::add_route`]; a slot's name never changes), decision sources, miss causes, bad-input reasons and stages are
//! closed lists, so cardinality is bounded whatever the network sends. An unknown
//! bad-input reason is counted as `other`; an out-of-range route index is ignored.
//!
//! [`serve`] answers `GET /metrics` (text exposition format 0.0.4), `GET /healthz`
//! (liveness: the process answers) and `GET /readyz` (readiness, from the attached
//! [`Readiness`]: 200, or 503 with one reason a line; 503 while none is attached) over a deliberately tiny HTTP/1.1: one request per connection, request bounded to
//! 8 KiB and 2 s, `Connection: close`.
//!
//! Other components add their own families through [`RenderSeries`] (the live monitor's
//! gauges), so this module knows none of them.
//!
//! - [`histogram`]: the lock-free latency histogram (observed on real-time threads).
//! - [`exposition`]: family headers, label escaping, sample values (shared with reflex-cloud,
//!   in `reflex_service`).
//! - `render`: [`Metrics::render`], one small function per group of families, and the
//!   build's [`BUILD_INFO`] labels (from `build.rs`).
//! - `http`: [`serve`].
//!
//! The exposition is hand-written rather than `prometheus-client`'s text encoder: that
//! encoder writes OpenMetrics (a `# EOF` trailer, `_total` appended to counter names by
//! the encoder, its own float and `le` formatting) and its histogram keeps its buckets
//! behind a lock. Keeping the scraped text byte-identical and the histogram lock-free
//! would need custom `EncodeMetric` impls for every family, which removes no code.

pub use reflex_service::exposition;
pub mod histogram;
mod http;
mod miss;
mod render;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use reflex_wire::DecisionSource;

use crate::ops::readiness::Readiness;
use histogram::Histogram;
pub use miss::MissCause;

pub use exposition::{header, single, Escaped, Float};
pub use histogram::BUCKETS_NS;
pub use http::serve;
pub use render::BUILD_INFO;

/// Families another component renders into the exposition, after the daemon's own (the
/// live monitor's drift and SLO gauges). Called on every scrape, from the endpoint's task.
pub trait RenderSeries: Send + Sync {
    /// Appends complete families (`# HELP`, `# TYPE`, samples) to `out`.
    fn render_prometheus(&self, out: &mut String);
}

/// A stage of an event's path through the daemon, each with its own latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Received from MQTT → decoded.
    Decode,
    /// Queued → picked by a worker.
    Queue,
    /// The model run.
    Infer,
    /// Decided → published.
    Publish,
    /// Arrival → published.
    EndToEnd,
    /// Received → PUBACK handed to the MQTT client, for the QoS 1 events whose PUBACK waits
    /// for their journal record to be durable (journal on): how long the broker's
    /// in-flight slot stays taken.
    Ack,
}

impl Stage {
    /// Every stage, in rendering order.
    pub const ALL: [Stage; 6] = [
        Stage::Decode,
        Stage::Queue,
        Stage::Infer,
        Stage::Publish,
        Stage::EndToEnd,
        Stage::Ack,
    ];

    /// The `stage` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Queue => "queue",
            Stage::Infer => "infer",
            Stage::Publish => "publish",
            Stage::EndToEnd => "end_to_end",
            Stage::Ack => "ack",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The `reason` label values of `reflexd_bad_input_total`: every
/// `reflex_wire::DecodeError::reason()`, the daemon's own reasons, then `other`.
pub const BAD_INPUT_REASONS: [&str; 20] = [
    "oversized",
    "truncated",
    "malformed",
    "unsupported_version",
    "bad_device_id",
    "bad_window",
    "trailing_bytes",
    "bad_json",
    "unknown_route",
    "device_mismatch",
    "shape_mismatch",
    "too_large",
    "queue_full",
    "missing_field",
    "wrong_type",
    "bad_value",
    "bad_protobuf",
    "bad_topic",
    "unknown_alias",
    "other",
];
const OTHER_REASON: usize = BAD_INPUT_REASONS.len() - 1;

const SOURCES: [DecisionSource; 3] = [
    DecisionSource::Model,
    DecisionSource::Fallback,
    DecisionSource::Rule,
];

fn source_index(source: DecisionSource) -> usize {
    match source {
        DecisionSource::Model => 0,
        DecisionSource::Fallback => 1,
        DecisionSource::Rule => 2,
    }
}

fn source_str(source: DecisionSource) -> &'static str {
    match source {
        DecisionSource::Model => "model",
        DecisionSource::Fallback => "fallback",
        DecisionSource::Rule => "rule",
    }
}

fn cause_index(cause: MissCause) -> usize {
    match cause {
        MissCause::QueueFull => 0,
        MissCause::CannotMakeIt => 1,
        MissCause::ExpiredInQueue => 2,
        MissCause::ModelTooSlow => 3,
        MissCause::ModelError => 4,
        MissCause::FallbackBacklog => 5,
    }
}
const N_CAUSES: usize = MissCause::ALL.len();

#[derive(Default)]
struct RouteCounters {
    received: AtomicU64,
    decided: [AtomicU64; 3],
    misses: [AtomicU64; N_CAUSES],
    late_model_answers: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    model_p999_ns: AtomicU64,
    assembly: [AtomicU64; 4],
    sparkplug: [AtomicU64; 4],
    /// The route's budget now (0: removed, not rendered).
    budget_ns: AtomicU64,
}

/// What window assembly counts per route (`[routes.input.assemble]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssemblyEvent {
    /// A device's buffer was evicted to stay within `max_devices`.
    Eviction,
    /// A buffer started again after a gap in the stream.
    GapReset,
    /// A completed window was too old to score.
    Stale,
    /// A reading was dropped as a duplicate.
    DuplicateReading,
}

/// What a Sparkplug B route counts besides data (`[routes.input] kind = "sparkplug_b"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparkplugEvent {
    /// An NBIRTH or DBIRTH was recorded.
    Birth,
    /// An NDEATH or DDEATH forgot a node or device.
    Death,
    /// An NCMD or DCMD (not data) was seen.
    Command,
    /// A device's aliases were evicted to stay within `devices.max_tracked`.
    AliasEviction,
}

impl SparkplugEvent {
    /// The event a control message (not data) counts as.
    pub fn of(message_type: reflex_sparkplug::MessageType) -> Self {
        use reflex_sparkplug::MessageType as M;
        match message_type {
            M::NBirth | M::DBirth => SparkplugEvent::Birth,
            M::NDeath | M::DDeath => SparkplugEvent::Death,
            M::NCmd | M::DCmd | M::NData | M::DData => SparkplugEvent::Command,
        }
    }
}

/// The model currently serving a route, for `reflexd_model_info`.
#[derive(Clone, Default)]
struct ModelInfo {
    name: String,
    version: String,
}

/// Totals across all routes and label values, for live figures and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Events received (all routes).
    pub received: u64,
    /// Messages rejected as bad input (all reasons).
    pub bad_input: u64,
    /// Events answered by the model in time.
    pub decided_model: u64,
    /// Events answered by the fallback.
    pub decided_fallback: u64,
    /// Events answered by a safety rule.
    pub decided_rule: u64,
    /// Deadline misses (all causes).
    pub deadline_misses: u64,
    /// Model answers that came after the fallback had been sent.
    pub late_model_answers: u64,
    /// Duplicate events dropped.
    pub duplicates: u64,
    /// Commands published.
    pub published: u64,
}

/// Route slots beyond the configured routes, for the routes reloads add over the life of
/// the process (a route removed and added again keeps its slot). More need a restart.
pub const SPARE_ROUTE_SLOTS: usize = 32;

/// The daemon's metrics registry. Share it as `Arc<Metrics>`; every recording method
/// takes `&self` and is lock-free.
pub struct Metrics {
    /// Route names by slot; unset: a spare slot (not rendered).
    routes: Box<[std::sync::OnceLock<String>]>,
    per_route: Box<[RouteCounters]>,
    models: Mutex<Vec<Option<ModelInfo>>>,
    bad_input: [AtomicU64; BAD_INPUT_REASONS.len()],
    stages: [Histogram; 6],
    queue_depth: AtomicU64,
    fallback_cost_ns: AtomicU64,
    safety_margin_ns: AtomicU64,
    realtime_threads: AtomicU64,
    priority_inheriting_locks: AtomicU64,
    model_runs: AtomicU64,
    model_windows: AtomicU64,
    commands_resent: AtomicU64,
    acks_dropped_session_lost: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    config_reloads_applied: AtomicU64,
    config_reloads_refused: AtomicU64,
    /// Per configured model: background verifications that failed ([`Metrics::track_models`]).
    verification_failures: std::sync::OnceLock<Vec<(String, AtomicU64)>>,
    mqtt_reconnects: AtomicU64,
    published: AtomicU64,
    journal_refused: AtomicU64,
    journal_failed: AtomicU64,
    journal_moved_aside: AtomicU64,
    journal_salvaged_records: AtomicU64,
    journal_salvage_failures: AtomicU64,
    journal_without_features: AtomicU64,
    journal: std::sync::OnceLock<Arc<reflex_journal::store::JournalStats>>,
    upload: std::sync::OnceLock<Arc<reflex_journal::upload::UploadStats>>,
    readiness: std::sync::OnceLock<Arc<Readiness>>,
    extra: std::sync::OnceLock<Arc<dyn RenderSeries>>,
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Metrics {
    /// A registry for these routes (by index, in configuration order); the names become
    /// `route` label values.
    pub fn new(routes: &[String]) -> Metrics {
        let slots = routes.len() + SPARE_ROUTE_SLOTS;
        Metrics {
            routes: (0..slots)
                .map(|i| {
                    routes
                        .get(i)
                        .cloned()
                        .map_or_else(Default::default, Into::into)
                })
                .collect(),
            per_route: (0..slots).map(|_| RouteCounters::default()).collect(),
            models: Mutex::new(vec![None; slots]),
            bad_input: Default::default(),
            stages: Default::default(),
            queue_depth: AtomicU64::new(0),
            fallback_cost_ns: AtomicU64::new(0),
            safety_margin_ns: AtomicU64::new(0),
            realtime_threads: AtomicU64::new(0),
            priority_inheriting_locks: AtomicU64::new(0),
            model_runs: AtomicU64::new(0),
            model_windows: AtomicU64::new(0),
            commands_resent: AtomicU64::new(0),
            acks_dropped_session_lost: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            config_reloads_applied: AtomicU64::new(0),
            config_reloads_refused: AtomicU64::new(0),
            verification_failures: std::sync::OnceLock::new(),
            mqtt_reconnects: AtomicU64::new(0),
            published: AtomicU64::new(0),
            journal_refused: AtomicU64::new(0),
            journal_failed: AtomicU64::new(0),
            journal_moved_aside: AtomicU64::new(0),
            journal_salvaged_records: AtomicU64::new(0),
            journal_salvage_failures: AtomicU64::new(0),
            journal_without_features: AtomicU64::new(0),
            journal: std::sync::OnceLock::new(),
            upload: std::sync::OnceLock::new(),
            readiness: std::sync::OnceLock::new(),
            extra: std::sync::OnceLock::new(),
        }
    }

    /// The counters of route slot `route`, if a route has it (a spare slot counts nothing).
    fn route(&self, route: usize) -> Option<&RouteCounters> {
        self.routes.get(route)?.get()?;
        self.per_route.get(route)
    }

    /// Route `slot` is `name` (a route added by a reload); false when `slot` is past the
    /// spare slots or already names another route.
    pub fn add_route(&self, slot: usize, name: &str) -> bool {
        match self.routes.get(slot) {
            Some(n) => n.get_or_init(|| name.to_owned()) == name,
            None => false,
        }
    }

    /// Whether route `slot` can be (or is already) named `name` by [`Metrics::add_route`].
    pub fn route_slot_free(&self, slot: usize, name: &str) -> bool {
        self.routes
            .get(slot)
            .is_some_and(|n| n.get().is_none_or(|n| n == name))
    }

    /// The named route slots, with their counters.
    fn named_routes(&self) -> impl Iterator<Item = (&String, &RouteCounters)> {
        self.routes
            .iter()
            .zip(self.per_route.iter())
            .filter_map(|(n, r)| n.get().map(|n| (n, r)))
    }

    /// An event arrived on `route`.
    pub fn event_received(&self, route: usize) {
        if let Some(r) = self.route(route) {
            inc(&r.received);
        }
    }

    /// A message was rejected. `reason` is a `DecodeError::reason()` value or one of
    /// `unknown_route`, `device_mismatch`, `shape_mismatch`, `too_large`, `queue_full`;
    /// anything else counts as `other`.
    pub fn bad_input(&self, reason: &str) {
        let i = BAD_INPUT_REASONS
            .iter()
            .position(|&r| r == reason)
            .unwrap_or(OTHER_REASON);
        inc(&self.bad_input[i]);
    }

    /// An event on `route` was answered by `source`.
    pub fn decided(&self, route: usize, source: DecisionSource) {
        if let Some(r) = self.route(route) {
            inc(&r.decided[source_index(source)]);
        }
    }

    /// The model missed an event's deadline on `route`, for `cause`.
    pub fn deadline_miss(&self, route: usize, cause: MissCause) {
        if let Some(r) = self.route(route) {
            inc(&r.misses[cause_index(cause)]);
        }
    }

    /// The model answered after the fallback had already been sent.
    pub fn late_model_answer(&self, route: usize) {
        if let Some(r) = self.route(route) {
            inc(&r.late_model_answers);
        }
    }

    /// A duplicate event was dropped.
    pub fn duplicate(&self, route: usize) {
        if let Some(r) = self.route(route) {
            inc(&r.duplicates);
        }
    }

    /// Window assembly on `route` counted `event` (`n` times).
    pub fn assembly(&self, route: usize, event: AssemblyEvent, n: u64) {
        if let Some(r) = self.route(route) {
            r.assembly[event as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A Sparkplug B route counted `event` (`n` times).
    pub fn sparkplug(&self, route: usize, event: SparkplugEvent, n: u64) {
        if let Some(r) = self.route(route) {
            r.sparkplug[event as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// An event arrived out of order.
    pub fn out_of_order(&self, route: usize) {
        if let Some(r) = self.route(route) {
            inc(&r.out_of_order);
        }
    }

    /// Records a latency of `nanos` for `stage`.
    pub fn observe(&self, stage: Stage, nanos: u64) {
        self.stages[stage.index()].observe(nanos);
    }

    /// A redelivered event decided in an earlier run got its journaled command again.
    pub fn command_resent(&self) {
        inc(&self.commands_resent);
    }

    /// A held PUBACK was not sent: the MQTT session it belonged to was lost.
    pub fn ack_dropped_session_lost(&self) {
        inc(&self.acks_dropped_session_lost);
    }

    /// One more engine thread runs under SCHED_FIFO.
    pub fn realtime_thread_started(&self) {
        inc(&self.realtime_threads);
    }

    /// Whether the locks the engine's real-time threads share with the intake thread
    /// inherit priorities.
    pub fn set_priority_inheriting_locks(&self, on: bool) {
        self.priority_inheriting_locks
            .store(u64::from(on), Ordering::Relaxed);
    }

    /// A worker ran the model once on `windows` queued events.
    pub fn model_run(&self, windows: usize) {
        inc(&self.model_runs);
        self.model_windows.fetch_add(
            u64::try_from(windows).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The scheduler queue currently holds `n` events.
    pub fn set_queue_depth(&self, n: usize) {
        self.queue_depth
            .store(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The deadline timer's estimate of one fallback answer is now `ns`.
    pub fn set_fallback_cost(&self, ns: u64) {
        self.fallback_cost_ns.store(ns, Ordering::Relaxed);
    }

    /// The model serving `route` is now `name` `version`, with a calibrated p99.9
    /// inference time of `p999_ns`. Takes a short lock: call it at start-up and reload,
    /// not per event.
    pub fn set_model_info(&self, route: usize, name: &str, version: &str, p999_ns: u64) {
        let Some(r) = self.route(route) else { return };
        r.model_p999_ns.store(p999_ns, Ordering::Relaxed);
        let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        models[route] = Some(ModelInfo {
            name: name.to_owned(),
            version: version.to_owned(),
        });
    }

    /// The budget of `route` is now `budget` (at start and on reload; zero: the route was
    /// removed, and its budget is no longer rendered).
    pub fn set_route_budget(&self, route: usize, budget: std::time::Duration) {
        if let Some(r) = self.route(route) {
            let ns = u64::try_from(budget.as_nanos()).unwrap_or(u64::MAX);
            r.budget_ns.store(ns, Ordering::Relaxed);
        }
    }

    /// The engine's safety margin is now `margin` (at start and on reload).
    pub fn set_safety_margin(&self, margin: std::time::Duration) {
        let ns = u64::try_from(margin.as_nanos()).unwrap_or(u64::MAX);
        self.safety_margin_ns.store(ns, Ordering::Relaxed);
    }

    /// Route `route` was removed by a reload: no model serves it any more (its counters
    /// stay).
    pub fn clear_model_info(&self, route: usize) {
        let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = models.get_mut(route) {
            *m = None;
        }
    }

    /// A model reload was attempted; `ok` tells whether it took effect.
    pub fn model_reload(&self, ok: bool) {
        inc(if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        });
    }

    /// A configuration reload (SIGHUP) applied, or refused (invalid, or a restart-only
    /// setting changed) with the old configuration kept.
    pub fn config_reload(&self, applied: bool) {
        inc(if applied {
            &self.config_reloads_applied
        } else {
            &self.config_reloads_refused
        });
    }

    /// The configured models, for the `model` label of per-model counters. The first call
    /// counts; later ones are ignored.
    pub fn track_models(&self, names: &[String]) {
        let _ = self.verification_failures.set(
            names
                .iter()
                .map(|n| (n.clone(), AtomicU64::new(0)))
                .collect(),
        );
    }

    /// Configured model `model` failed its background verification (an untracked name is
    /// ignored).
    pub fn model_verification_failed(&self, model: &str) {
        if let Some((_, c)) = self
            .verification_failures
            .get()
            .and_then(|v| v.iter().find(|(n, _)| n == model))
        {
            inc(c);
        }
    }

    /// The MQTT connection was re-established.
    pub fn mqtt_reconnect(&self) {
        inc(&self.mqtt_reconnects);
    }

    /// The journal refused a record (`full`: backpressure) or failed to append it.
    pub fn journal_append_failed(&self, full: bool) {
        inc(if full {
            &self.journal_refused
        } else {
            &self.journal_failed
        });
    }

    /// A record journaled without features (they could not be computed): the cloud will
    /// refuse it (`features_missing`) and the board keep it in its dead-letter range.
    pub fn journal_without_features(&self) {
        inc(&self.journal_without_features);
    }

    /// The journal could not be opened and was moved aside (a fresh one started).
    pub fn journal_moved_aside(&self) {
        inc(&self.journal_moved_aside);
    }

    /// Records salvaged from journals moved aside into the live journal.
    pub fn journal_salvaged_records(&self, n: u64) {
        self.journal_salvaged_records
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Journals moved aside that could not be salvaged (yet).
    pub fn journal_salvage_failures(&self, n: u64) {
        self.journal_salvage_failures
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Renders the journal's own counters from now on.
    pub fn attach_journal(&self, stats: Arc<reflex_journal::store::JournalStats>) {
        let _ = self.journal.set(stats);
    }

    /// Renders the live monitor's gauges (after the daemon's own families) from now on.
    pub fn attach_monitor(&self, monitor: Arc<dyn RenderSeries>) {
        let _ = self.extra.set(monitor);
    }

    /// Renders the uploader's counters from now on.
    pub fn attach_upload(&self, stats: Arc<reflex_journal::upload::UploadStats>) {
        let _ = self.upload.set(stats);
    }

    /// Renders the readiness gauges and answers `/readyz` from `readiness` from now on.
    pub fn attach_readiness(&self, readiness: Arc<Readiness>) {
        let _ = self.readiness.set(readiness);
    }

    /// The attached readiness, if any.
    pub fn readiness(&self) -> Option<&Readiness> {
        self.readiness.get().map(|r| &**r)
    }

    /// A command was published.
    pub fn commands_published(&self) {
        inc(&self.published);
    }

    /// Totals across routes and labels.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            bad_input: self.bad_input.iter().map(get).sum(),
            published: get(&self.published),
            ..Snapshot::default()
        };
        for r in &self.per_route {
            s.received += get(&r.received);
            s.decided_model += get(&r.decided[0]);
            s.decided_fallback += get(&r.decided[1]);
            s.decided_rule += get(&r.decided[2]);
            s.deadline_misses += r.misses.iter().map(get).sum::<u64>();
            s.late_model_answers += get(&r.late_model_answers);
            s.duplicates += get(&r.duplicates);
        }
        s
    }
}

#[cfg(test)]
mod tests;
