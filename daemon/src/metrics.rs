//! Prometheus metrics without the `prometheus` crate or an HTTP framework.
//!
//! Every counter, gauge and histogram bucket is an [`AtomicU64`] updated with relaxed
//! ordering, so the real-time paths (receive, schedule, infer, publish) never take a
//! lock or allocate to record a figure. The only lock guards the model name/version
//! labels, written at start-up and on reload, read by [`Metrics::render`].
//!
//! Label sets are fixed when [`Metrics::new`] runs: routes come from the
//! configuration, decision sources, miss causes, bad-input reasons and stages are
//! closed lists, so cardinality is bounded whatever the network sends. An unknown
//! bad-input reason is counted as `other`; an out-of-range route index is ignored.
//!
//! [`serve`] answers `GET /metrics` (text exposition format 0.0.4) and `GET /healthz`
//! over a deliberately tiny HTTP/1.1: one request per connection, request bounded to
//! 8 KiB and 2 s, `Connection: close`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reflex_wire::DecisionSource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bad_input::BadInputLog;
use crate::schedule::MissCause;

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
}

impl Stage {
    /// Every stage, in rendering order.
    pub const ALL: [Stage; 5] = [
        Stage::Decode,
        Stage::Queue,
        Stage::Infer,
        Stage::Publish,
        Stage::EndToEnd,
    ];

    /// The `stage` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Queue => "queue",
            Stage::Infer => "infer",
            Stage::Publish => "publish",
            Stage::EndToEnd => "end_to_end",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The `reason` label values of `reflexd_bad_input_total`: every
/// `reflex_wire::DecodeError::reason()`, the daemon's own reasons, then `other`.
pub const BAD_INPUT_REASONS: [&str; 12] = [
    "oversized",
    "truncated",
    "malformed",
    "unsupported_version",
    "bad_device_id",
    "bad_window",
    "trailing_bytes",
    "bad_json",
    "unknown_route",
    "too_large",
    "queue_full",
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

/// Upper bounds of the latency histogram buckets, in nanoseconds (`+Inf` is implicit).
pub const BUCKETS_NS: [u64; 10] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    25_000_000,
    100_000_000,
];
/// The same bounds as `le` label values, in seconds.
const BUCKETS_LE: [&str; 10] = [
    "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.002", "0.005", "0.01", "0.025", "0.1",
];
const N_BUCKETS: usize = BUCKETS_NS.len() + 1;

/// A fixed-bucket histogram. Buckets are stored non-cumulatively (one increment per
/// observation) and summed when rendered; the count is the sum of the buckets, so the
/// `+Inf` bucket always equals `_count` even while observations race with a scrape.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; N_BUCKETS],
    sum_ns: AtomicU64,
}

impl Histogram {
    fn observe(&self, nanos: u64) {
        let i = BUCKETS_NS.partition_point(|&le| le < nanos);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(nanos, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct RouteCounters {
    received: AtomicU64,
    decided: [AtomicU64; 3],
    misses: [AtomicU64; N_CAUSES],
    late_model_answers: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    model_p999_ns: AtomicU64,
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

/// The daemon's metrics registry. Share it as `Arc<Metrics>`; every recording method
/// takes `&self` and is lock-free.
pub struct Metrics {
    routes: Vec<String>,
    per_route: Vec<RouteCounters>,
    models: Mutex<Vec<Option<ModelInfo>>>,
    bad_input: [AtomicU64; BAD_INPUT_REASONS.len()],
    stages: [Histogram; 5],
    queue_depth: AtomicU64,
    fallback_cost_ns: AtomicU64,
    realtime_threads: AtomicU64,
    model_runs: AtomicU64,
    model_windows: AtomicU64,
    commands_resent: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    mqtt_reconnects: AtomicU64,
    published: AtomicU64,
    journal_refused: AtomicU64,
    journal_failed: AtomicU64,
    journal_moved_aside: AtomicU64,
    journal: std::sync::OnceLock<Arc<reflex_journal::store::JournalStats>>,
    upload: std::sync::OnceLock<Arc<reflex_journal::upload::UploadStats>>,
    monitor: std::sync::OnceLock<Arc<crate::monitor::LiveMonitor>>,
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
        Metrics {
            routes: routes.to_vec(),
            per_route: routes.iter().map(|_| RouteCounters::default()).collect(),
            models: Mutex::new(vec![None; routes.len()]),
            bad_input: Default::default(),
            stages: Default::default(),
            queue_depth: AtomicU64::new(0),
            fallback_cost_ns: AtomicU64::new(0),
            realtime_threads: AtomicU64::new(0),
            model_runs: AtomicU64::new(0),
            model_windows: AtomicU64::new(0),
            commands_resent: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            mqtt_reconnects: AtomicU64::new(0),
            published: AtomicU64::new(0),
            journal_refused: AtomicU64::new(0),
            journal_failed: AtomicU64::new(0),
            journal_moved_aside: AtomicU64::new(0),
            journal: std::sync::OnceLock::new(),
            upload: std::sync::OnceLock::new(),
            monitor: std::sync::OnceLock::new(),
        }
    }

    fn route(&self, route: usize) -> Option<&RouteCounters> {
        self.per_route.get(route)
    }

    /// An event arrived on `route`.
    pub fn event_received(&self, route: usize) {
        if let Some(r) = self.route(route) {
            inc(&r.received);
        }
    }

    /// A message was rejected. `reason` is a `DecodeError::reason()` value or one of
    /// `unknown_route`, `too_large`, `queue_full`; anything else counts as `other`.
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

    /// One more engine thread runs under SCHED_FIFO.
    pub fn realtime_thread_started(&self) {
        inc(&self.realtime_threads);
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

    /// A model reload was attempted; `ok` tells whether it took effect.
    pub fn model_reload(&self, ok: bool) {
        inc(if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        });
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

    /// The journal could not be opened and was moved aside (a fresh one started).
    pub fn journal_moved_aside(&self) {
        inc(&self.journal_moved_aside);
    }

    /// Renders the journal's own counters from now on.
    pub fn attach_journal(&self, stats: Arc<reflex_journal::store::JournalStats>) {
        let _ = self.journal.set(stats);
    }

    /// Renders the live monitor's gauges from now on.
    pub fn attach_monitor(&self, monitor: Arc<crate::monitor::LiveMonitor>) {
        let _ = self.monitor.set(monitor);
    }

    /// Renders the uploader's counters from now on.
    pub fn attach_upload(&self, stats: Arc<reflex_journal::upload::UploadStats>) {
        let _ = self.upload.set(stats);
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

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) -> std::fmt::Result {
        let per_route = |out: &mut String,
                         name: &str,
                         help: &str,
                         value: &dyn Fn(&RouteCounters) -> u64|
         -> std::fmt::Result {
            header(out, name, help, "counter")?;
            for (route, r) in self.routes.iter().zip(&self.per_route) {
                writeln!(out, "{name}{{route=\"{}\"}} {}", Escaped(route), value(r))?;
            }
            Ok(())
        };

        per_route(
            out,
            "reflexd_events_received_total",
            "Sensor events received, by route.",
            &|r| get(&r.received),
        )?;

        header(
            out,
            "reflexd_bad_input_total",
            "Messages rejected before scheduling, by reason.",
            "counter",
        )?;
        for (reason, c) in BAD_INPUT_REASONS.iter().zip(&self.bad_input) {
            writeln!(
                out,
                "reflexd_bad_input_total{{reason=\"{reason}\"}} {}",
                get(c)
            )?;
        }

        header(
            out,
            "reflexd_decisions_total",
            "Events answered, by route and by who decided (model, fallback or rule).",
            "counter",
        )?;
        for (route, r) in self.routes.iter().zip(&self.per_route) {
            for source in SOURCES {
                writeln!(
                    out,
                    "reflexd_decisions_total{{route=\"{}\",source=\"{}\"}} {}",
                    Escaped(route),
                    source_str(source),
                    get(&r.decided[source_index(source)])
                )?;
            }
        }

        header(
            out,
            "reflexd_deadline_misses_total",
            "Events the model could not answer by their deadline, by route and cause.",
            "counter",
        )?;
        for (route, r) in self.routes.iter().zip(&self.per_route) {
            for cause in MissCause::ALL {
                writeln!(
                    out,
                    "reflexd_deadline_misses_total{{route=\"{}\",cause=\"{}\"}} {}",
                    Escaped(route),
                    cause.as_str(),
                    get(&r.misses[cause_index(cause)])
                )?;
            }
        }

        per_route(
            out,
            "reflexd_late_model_answers_total",
            "Model answers that arrived after the fallback had been sent.",
            &|r| get(&r.late_model_answers),
        )?;
        per_route(
            out,
            "reflexd_duplicate_events_total",
            "Duplicate events dropped, by route.",
            &|r| get(&r.duplicates),
        )?;
        per_route(
            out,
            "reflexd_out_of_order_events_total",
            "Events that arrived out of sequence order, by route.",
            &|r| get(&r.out_of_order),
        )?;

        header(
            out,
            "reflexd_stage_latency_seconds",
            "Latency per pipeline stage: decode, queue, infer, publish, end_to_end.",
            "histogram",
        )?;
        for stage in Stage::ALL {
            let h = &self.stages[stage.index()];
            let counts: [u64; N_BUCKETS] = std::array::from_fn(|i| get(&h.buckets[i]));
            let name = stage.as_str();
            let mut cumulative = 0u64;
            for (le, n) in BUCKETS_LE.iter().zip(counts) {
                cumulative += n;
                writeln!(
                    out,
                    "reflexd_stage_latency_seconds_bucket{{stage=\"{name}\",le=\"{le}\"}} {cumulative}"
                )?;
            }
            cumulative += counts[N_BUCKETS - 1];
            writeln!(
                out,
                "reflexd_stage_latency_seconds_bucket{{stage=\"{name}\",le=\"+Inf\"}} {cumulative}"
            )?;
            writeln!(
                out,
                "reflexd_stage_latency_seconds_sum{{stage=\"{name}\"}} {}",
                Seconds(get(&h.sum_ns))
            )?;
            writeln!(
                out,
                "reflexd_stage_latency_seconds_count{{stage=\"{name}\"}} {cumulative}"
            )?;
        }

        header(
            out,
            "reflexd_queue_depth",
            "Events waiting in the scheduler queue.",
            "gauge",
        )?;
        writeln!(out, "reflexd_queue_depth {}", get(&self.queue_depth))?;

        header(
            out,
            "reflexd_fallback_answer_cost_seconds",
            "The deadline timer's running estimate of one fallback answer (0 until it answered one); it starts that much earlier per pending event, so that a burst due together is answered whole by its deadline.",
            "gauge",
        )?;
        writeln!(
            out,
            "reflexd_fallback_answer_cost_seconds {}",
            Seconds(get(&self.fallback_cost_ns))
        )?;

        single(
            out,
            "reflexd_model_runs_total",
            "Model runs by the workers (one run answers a batch of queued events).",
            "counter",
            get(&self.model_runs),
        )?;
        single(
            out,
            "reflexd_model_run_windows_total",
            "Events run through the model; divided by reflexd_model_runs_total, the mean batch.",
            "counter",
            get(&self.model_windows),
        )?;

        header(
            out,
            "reflexd_commands_resent_total",
            "Journaled commands sent again for events the broker redelivered after a restart.",
            "counter",
        )?;
        writeln!(
            out,
            "reflexd_commands_resent_total {}",
            get(&self.commands_resent)
        )?;

        header(
            out,
            "reflexd_realtime_threads",
            "Engine threads (workers, deadline timer) that got SCHED_FIFO.",
            "gauge",
        )?;
        writeln!(
            out,
            "reflexd_realtime_threads {}",
            get(&self.realtime_threads)
        )?;

        header(
            out,
            "reflexd_model_info",
            "The model serving each route (value is always 1).",
            "gauge",
        )?;
        {
            let models = self.models.lock().unwrap_or_else(|e| e.into_inner());
            for (route, model) in self.routes.iter().zip(models.iter()) {
                if let Some(m) = model {
                    writeln!(
                        out,
                        "reflexd_model_info{{route=\"{}\",model=\"{}\",version=\"{}\"}} 1",
                        Escaped(route),
                        Escaped(&m.name),
                        Escaped(&m.version)
                    )?;
                }
            }
        }

        header(
            out,
            "reflexd_model_latency_p999_seconds",
            "Calibrated p99.9 inference time of each route's model.",
            "gauge",
        )?;
        for (route, r) in self.routes.iter().zip(&self.per_route) {
            writeln!(
                out,
                "reflexd_model_latency_p999_seconds{{route=\"{}\"}} {}",
                Escaped(route),
                Seconds(get(&r.model_p999_ns))
            )?;
        }

        header(
            out,
            "reflexd_model_reloads_total",
            "Model reload attempts, by result.",
            "counter",
        )?;
        writeln!(
            out,
            "reflexd_model_reloads_total{{result=\"ok\"}} {}",
            get(&self.reloads_ok)
        )?;
        writeln!(
            out,
            "reflexd_model_reloads_total{{result=\"error\"}} {}",
            get(&self.reloads_failed)
        )?;

        header(
            out,
            "reflexd_mqtt_reconnects_total",
            "MQTT reconnections.",
            "counter",
        )?;
        writeln!(
            out,
            "reflexd_mqtt_reconnects_total {}",
            get(&self.mqtt_reconnects)
        )?;

        header(
            out,
            "reflexd_commands_published_total",
            "Actuator commands published.",
            "counter",
        )?;
        writeln!(
            out,
            "reflexd_commands_published_total {}",
            get(&self.published)
        )?;
        self.render_journal(out)?;
        if let Some(m) = self.monitor.get() {
            m.render_prometheus(out);
        }
        Ok(())
    }

    fn render_journal(&self, out: &mut String) -> std::fmt::Result {
        if let Some(j) = self.journal.get() {
            single(
                out,
                "reflexd_journal_appended_total",
                "Records appended to the journal.",
                "counter",
                get(&j.appended),
            )?;
            single(
                out,
                "reflexd_journal_durable_through",
                "Highest journal sequence made durable.",
                "gauge",
                get(&j.durable_through),
            )?;
            single(
                out,
                "reflexd_journal_syncs_total",
                "Group commits.",
                "counter",
                get(&j.syncs),
            )?;
            header(
                out,
                "reflexd_journal_sync_seconds_total",
                "Time spent in group commits.",
                "counter",
            )?;
            writeln!(
                out,
                "reflexd_journal_sync_seconds_total {}",
                Seconds(get(&j.sync_us) * 1000)
            )?;
            single(
                out,
                "reflexd_journal_dropped_records_total",
                "Records deleted by the quota before upload.",
                "counter",
                get(&j.dropped_records),
            )?;
            single(
                out,
                "reflexd_journal_dropped_uploaded_total",
                "Records already uploaded (kept by keep_uploaded) deleted by the quota; these go before any record not yet uploaded.",
                "counter",
                get(&j.dropped_uploaded),
            )?;
            single(
                out,
                "reflexd_journal_live_bytes",
                "Bytes of records kept.",
                "gauge",
                get(&j.live_bytes),
            )?;
            single(
                out,
                "reflexd_journal_files_bytes",
                "Size of the journal's files.",
                "gauge",
                get(&j.files_bytes),
            )?;
            single(
                out,
                "reflexd_journal_fs_free_bytes",
                "Free bytes on the journal's filesystem.",
                "gauge",
                get(&j.fs_free_bytes),
            )?;
            single(
                out,
                "reflexd_journal_errors_total",
                "Failed appends or group commits.",
                "counter",
                get(&j.errors),
            )?;
            single(
                out,
                "reflexd_journal_reopens_total",
                "Journal reopens after an i/o error (e.g. a full disk) or a start without space.",
                "counter",
                get(&j.reopens),
            )?;
            single(
                out,
                "reflexd_journal_reopen_failures_total",
                "Journal reopen attempts that failed (retried with backoff).",
                "counter",
                get(&j.reopen_failures),
            )?;
            single(
                out,
                "reflexd_journal_windows_dropped_total",
                "Monitoring windows deleted unsent because too many waited for an upload.",
                "counter",
                get(&j.windows_dropped),
            )?;
        }
        single(
            out,
            "reflexd_journal_refused_total",
            "Records refused under backpressure (their events stay unacked).",
            "counter",
            get(&self.journal_refused),
        )?;
        single(
            out,
            "reflexd_journal_append_failures_total",
            "Records that failed to append (their events stay unacked).",
            "counter",
            get(&self.journal_failed),
        )?;
        single(
            out,
            "reflexd_journal_moved_aside_total",
            "Journals that could not be opened and were moved aside.",
            "counter",
            get(&self.journal_moved_aside),
        )?;
        if let Some(u) = self.upload.get() {
            single(
                out,
                "reflexd_upload_batches_total",
                "Batches acknowledged by the cloud.",
                "counter",
                get(&u.batches_acked),
            )?;
            single(
                out,
                "reflexd_upload_windows_total",
                "Monitoring windows (sketches) acknowledged by the cloud with the batches.",
                "counter",
                get(&u.windows_uploaded),
            )?;
            single(
                out,
                "reflexd_upload_duplicate_batches_total",
                "Batches the cloud already had.",
                "counter",
                get(&u.batches_duplicate),
            )?;
            single(
                out,
                "reflexd_upload_records_total",
                "Records acknowledged by the cloud.",
                "counter",
                get(&u.records_uploaded),
            )?;
            single(
                out,
                "reflexd_upload_bytes_total",
                "Compressed bytes acknowledged.",
                "counter",
                get(&u.bytes_uploaded),
            )?;
            single(
                out,
                "reflexd_upload_failures_total",
                "Failed upload attempts.",
                "counter",
                get(&u.failures),
            )?;
            single(
                out,
                "reflexd_upload_rejected_total",
                "Batches refused as corrupt (set aside).",
                "counter",
                get(&u.rejected),
            )?;
            single(
                out,
                "reflexd_upload_unauthorized_total",
                "Uploads refused for the token.",
                "counter",
                get(&u.unauthorized),
            )?;
            single(
                out,
                "reflexd_upload_backlog_records",
                "Records not yet acknowledged.",
                "gauge",
                get(&u.backlog_records),
            )?;
            single(
                out,
                "reflexd_upload_last_ack_unix_seconds",
                "Time of the last acknowledged batch.",
                "gauge",
                get(&u.last_ack_unix_s),
            )?;
            single(
                out,
                "reflexd_upload_window_closed",
                "1 while the upload window ([upload] window) is closed and nothing is sent.",
                "gauge",
                get(&u.window_closed),
            )?;
        }
        Ok(())
    }
}

/// One unlabelled series with its HELP and TYPE lines.
pub(crate) fn single(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    v: u64,
) -> std::fmt::Result {
    header(out, name, help, kind)?;
    writeln!(out, "{name} {v}")
}

/// The HELP and TYPE lines of a metric family.
pub(crate) fn header(out: &mut String, name: &str, help: &str, kind: &str) -> std::fmt::Result {
    writeln!(out, "# HELP {name} {help}")?;
    writeln!(out, "# TYPE {name} {kind}")
}

/// A label value escaped for the text format: `\`, `"` and newline.
pub(crate) struct Escaped<'a>(pub(crate) &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Nanoseconds printed as seconds, exactly (no float rounding): `1500` → `0.0000015`.
struct Seconds(u64);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, ns) = (self.0 / 1_000_000_000, self.0 % 1_000_000_000);
        if ns == 0 {
            return write!(f, "{s}");
        }
        let frac = format!("{ns:09}");
        write!(f, "{s}.{}", frac.trim_end_matches('0'))
    }
}

/// Largest request (line and headers) read from a client.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request, and to take the response.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections handled at once; more are closed straight away.
const MAX_CONNECTIONS: usize = 16;

/// Serves `GET /metrics` and `GET /healthz` on `listener` until `shutdown` is
/// cancelled, then waits for the connections in flight (each bounded by the 2 s
/// timeouts, and cut short by the shutdown) and returns.
///
/// Transient accept errors (e.g. out of file descriptors) are retried after a short
/// pause, never returned, so the endpoint cannot take the daemon down.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    bad_input: BadInputLog,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                if tracker.len() >= MAX_CONNECTIONS {
                    drop(stream);
                    continue;
                }
                let metrics = Arc::clone(&metrics);
                let bad_input = bad_input.clone();
                let shutdown = shutdown.clone();
                tracker.spawn(async move {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        _ = handle(stream, &metrics, &bad_input) => {}
                    }
                });
            }
            Err(_) => {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// One request, one response, close.
async fn handle(
    mut stream: TcpStream,
    metrics: &Metrics,
    bad_input: &BadInputLog,
) -> std::io::Result<()> {
    let Ok(request) = tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await else {
        return Ok(()); // Too slow: drop without an answer.
    };
    let response = match request? {
        None => response(
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n",
        ),
        Some(head) => route(&head, metrics, bad_input),
    };
    tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .unwrap_or(Ok(()))
}

/// Reads until the blank line ending the headers; `None` when it does not come within
/// [`MAX_REQUEST`] bytes or the client closes first.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    while len < MAX_REQUEST {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(None);
        }
        len += n;
        if let Some(end) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned()));
        }
    }
    Ok(None)
}

fn route(head: &str, metrics: &Metrics, bad_input: &BadInputLog) -> String {
    let mut parts = head.lines().next().unwrap_or("").split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => response(
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            &metrics.render(),
        ),
        ("GET", "/healthz") => response("200 OK", "text/plain; charset=utf-8", "ok\n"),
        ("GET", "/bad-input") => response("200 OK", "application/json", &bad_input.to_json()),
        _ => response("404 Not Found", "text/plain; charset=utf-8", "not found\n"),
    }
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Vec<String> {
        vec!["vibration".to_owned(), "thermal".to_owned()]
    }

    fn line_value(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
    }

    #[test]
    fn counters_render_with_the_right_labels_and_values() {
        let m = Metrics::new(&routes());
        m.event_received(0);
        m.event_received(0);
        m.event_received(1);
        m.decided(0, DecisionSource::Model);
        m.decided(0, DecisionSource::Fallback);
        m.decided(1, DecisionSource::Rule);
        m.deadline_miss(0, MissCause::ExpiredInQueue);
        m.late_model_answer(0);
        m.duplicate(1);
        m.out_of_order(1);
        m.bad_input("truncated");
        m.set_queue_depth(3);
        m.set_fallback_cost(12_500);
        m.model_run(1);
        m.model_run(4);
        m.set_model_info(0, "edge", "1.2.0", 1_500_000);
        m.model_reload(true);
        m.model_reload(false);
        m.mqtt_reconnect();
        m.commands_published();
        // Out of range: ignored, no panic.
        m.event_received(7);

        let text = m.render();
        let expect = [
            ("reflexd_events_received_total{route=\"vibration\"}", "2"),
            ("reflexd_events_received_total{route=\"thermal\"}", "1"),
            (
                "reflexd_decisions_total{route=\"vibration\",source=\"model\"}",
                "1",
            ),
            (
                "reflexd_decisions_total{route=\"vibration\",source=\"fallback\"}",
                "1",
            ),
            (
                "reflexd_decisions_total{route=\"vibration\",source=\"rule\"}",
                "0",
            ),
            (
                "reflexd_decisions_total{route=\"thermal\",source=\"rule\"}",
                "1",
            ),
            (
                "reflexd_deadline_misses_total{route=\"vibration\",cause=\"expired_in_queue\"}",
                "1",
            ),
            (
                "reflexd_deadline_misses_total{route=\"thermal\",cause=\"queue_full\"}",
                "0",
            ),
            ("reflexd_late_model_answers_total{route=\"vibration\"}", "1"),
            ("reflexd_duplicate_events_total{route=\"thermal\"}", "1"),
            ("reflexd_out_of_order_events_total{route=\"thermal\"}", "1"),
            ("reflexd_bad_input_total{reason=\"truncated\"}", "1"),
            ("reflexd_bad_input_total{reason=\"other\"}", "0"),
            ("reflexd_queue_depth", "3"),
            ("reflexd_fallback_answer_cost_seconds", "0.0000125"),
            ("reflexd_model_runs_total", "2"),
            ("reflexd_model_run_windows_total", "5"),
            (
                "reflexd_model_info{route=\"vibration\",model=\"edge\",version=\"1.2.0\"}",
                "1",
            ),
            (
                "reflexd_model_latency_p999_seconds{route=\"vibration\"}",
                "0.0015",
            ),
            ("reflexd_model_latency_p999_seconds{route=\"thermal\"}", "0"),
            ("reflexd_model_reloads_total{result=\"ok\"}", "1"),
            ("reflexd_model_reloads_total{result=\"error\"}", "1"),
            ("reflexd_mqtt_reconnects_total", "1"),
            ("reflexd_commands_published_total", "1"),
        ];
        for (series, value) in expect {
            assert_eq!(
                line_value(&text, series).as_deref(),
                Some(value),
                "{series} in\n{text}"
            );
        }
        assert!(text.contains("# TYPE reflexd_events_received_total counter\n"));
        assert!(text.contains("# HELP reflexd_queue_depth "));
        assert!(text.contains("# TYPE reflexd_stage_latency_seconds histogram\n"));
        // The thermal route has no model yet: no info line for it.
        assert!(!text.contains("reflexd_model_info{route=\"thermal\""));
        // Every sample line is prefixed and well formed.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("reflexd_"), "{line}");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }

        assert_eq!(
            m.snapshot(),
            Snapshot {
                received: 3,
                bad_input: 1,
                decided_model: 1,
                decided_fallback: 1,
                decided_rule: 1,
                deadline_misses: 1,
                late_model_answers: 1,
                duplicates: 1,
                published: 1,
            }
        );
    }

    #[test]
    fn the_journal_counters_render_both_kinds_of_quota_drop() {
        let m = Metrics::new(&routes());
        let j = Arc::new(reflex_journal::store::JournalStats::default());
        j.dropped_records.store(3, Ordering::Relaxed);
        j.dropped_uploaded.store(7, Ordering::Relaxed);
        m.attach_journal(j);
        let text = m.render();
        assert_eq!(
            line_value(&text, "reflexd_journal_dropped_records_total").as_deref(),
            Some("3")
        );
        assert_eq!(
            line_value(&text, "reflexd_journal_dropped_uploaded_total").as_deref(),
            Some("7")
        );
        assert!(text.contains("# TYPE reflexd_journal_dropped_uploaded_total counter"));
    }

    #[test]
    fn a_closed_upload_window_shows_as_a_gauge() {
        let m = Metrics::new(&routes());
        let u = Arc::new(reflex_journal::upload::UploadStats::default());
        u.window_closed.store(1, Ordering::Relaxed);
        m.attach_upload(u);
        assert_eq!(
            line_value(&m.render(), "reflexd_upload_window_closed").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_inf_equals_count() {
        let m = Metrics::new(&routes());
        // 40µs, exactly 50µs (le is inclusive), 3ms, 1s (beyond every bound).
        for ns in [40_000, 50_000, 3_000_000, 1_000_000_000] {
            m.observe(Stage::Infer, ns);
        }
        m.observe(Stage::Decode, 10);
        let text = m.render();
        let bucket = |le: &str| {
            line_value(
                &text,
                &format!("reflexd_stage_latency_seconds_bucket{{stage=\"infer\",le=\"{le}\"}}"),
            )
            .unwrap_or_else(|| panic!("bucket {le} missing in\n{text}"))
            .parse::<u64>()
            .unwrap()
        };
        assert_eq!(bucket("0.00005"), 2);
        assert_eq!(bucket("0.0001"), 2);
        assert_eq!(bucket("0.002"), 2);
        assert_eq!(bucket("0.005"), 3);
        assert_eq!(bucket("0.1"), 3);
        assert_eq!(bucket("+Inf"), 4);
        let mut previous = 0;
        for le in BUCKETS_LE.iter().chain(&["+Inf"]) {
            let n = bucket(le);
            assert!(n >= previous, "le={le}");
            previous = n;
        }
        let count = line_value(
            &text,
            "reflexd_stage_latency_seconds_count{stage=\"infer\"}",
        );
        assert_eq!(count.as_deref(), Some("4"));
        let sum = line_value(&text, "reflexd_stage_latency_seconds_sum{stage=\"infer\"}");
        assert_eq!(sum.as_deref(), Some("1.00309"));
        let decode = line_value(
            &text,
            "reflexd_stage_latency_seconds_count{stage=\"decode\"}",
        );
        assert_eq!(decode.as_deref(), Some("1"));
        let e2e = line_value(
            &text,
            "reflexd_stage_latency_seconds_bucket{stage=\"end_to_end\",le=\"+Inf\"}",
        );
        assert_eq!(e2e.as_deref(), Some("0"));
    }

    #[test]
    fn unknown_bad_input_reason_goes_to_other() {
        let m = Metrics::new(&routes());
        m.bad_input("made_up_reason");
        m.bad_input("");
        m.bad_input("queue_full");
        let text = m.render();
        assert_eq!(
            line_value(&text, "reflexd_bad_input_total{reason=\"other\"}").as_deref(),
            Some("2")
        );
        assert_eq!(
            line_value(&text, "reflexd_bad_input_total{reason=\"queue_full\"}").as_deref(),
            Some("1")
        );
        assert!(!text.contains("made_up_reason"));
        assert_eq!(m.snapshot().bad_input, 3);
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new(&["a\"b\\c\nd".to_owned()]);
        let text = m.render();
        assert!(text.contains("route=\"a\\\"b\\\\c\\nd\""), "{text}");
    }

    #[test]
    fn every_wire_decode_reason_is_a_known_label() {
        use reflex_wire::DecodeError;
        let errors = [
            DecodeError::DeviceIdEmpty,
            DecodeError::InvalidScale,
            DecodeError::Truncated { field: "x" },
            DecodeError::Malformed { field: "x" },
        ];
        for e in errors {
            assert_ne!(
                BAD_INPUT_REASONS.iter().position(|&r| r == e.reason()),
                None,
                "{}",
                e.reason()
            );
        }
    }

    async fn get_path(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn a_real_http_get_over_loopback_returns_the_metrics_and_404_for_other_paths() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new(&routes()));
        metrics.event_received(1);
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            Arc::clone(&metrics),
            BadInputLog::new(4),
            shutdown.clone(),
        ));

        let ok = get_path(addr, "/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(ok.contains("Connection: close\r\n"), "{ok}");
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        assert!(body.contains("reflexd_events_received_total{route=\"thermal\"} 1\n"));

        let health = get_path(addr, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
        assert!(health.ends_with("\r\n\r\nok\n"), "{health}");

        for path in ["/", "/metricsx", "/admin"] {
            let missing = get_path(addr, path).await;
            assert!(
                missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
                "{missing}"
            );
        }

        shutdown.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn serve_returns_after_shutdown_is_cancelled() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Metrics::new(&routes())),
            BadInputLog::new(4),
            shutdown.clone(),
        ));
        // A client that connects and never sends a request must not hold shutdown up.
        let _idle = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), server)
            .await
            .expect("serve did not return within 1 s of shutdown")
            .unwrap()
            .unwrap();
    }
}
