//! Record: after each command is published, turns the decision into a journal record
//! (off the real-time threads), appends it with group commit, and sends the event's MQTT
//! PUBACK only once that record is durable — acknowledged means journaled. A crash then
//! loses nothing the broker believes delivered: it redelivers the rest, and the per-device
//! dedupe (seeded from the journal at start) answers and journals each event once.
//!
//! Actuation never waits for the journal: the actuator publishes first and hands the
//! decision over afterwards.
//!
//! # Features
//!
//! Each record carries the monitoring features its route's model declares
//! ([`FeaturePlan`], made once per model from its manifest): format 1 the 13
//! demo features, format 2 its `monitoring` statistics and scalars, the record then naming
//! its feature set (`reflex_records::FeatureSet`). The live monitor gets the same values,
//! in the same order. The plan is the one of the route version the event was accepted
//! under ([`plans::RoutePlans`], handed over with the decision): a reload that switches a
//! route to another model, or adds a route, gives the events accepted after the swap the
//! new model's features, and the events accepted before keep the old ones; a model
//! reloaded in place with other declared features gives its routes' events the new
//! features from the swap on.
//!
//! # A record without features
//!
//! An event the wire accepts but whose features cannot be computed (a window of another
//! length than the model's, or a declared scalar the event does not carry) is decided (by the fallback or a rule) and journaled with an
//! empty `features` list, counted in `reflexd_journal_records_without_features_total`. The
//! cloud refuses such a record alone (`features_missing`) and stores the rest of its batch;
//! the uploader keeps it in the journal's dead-letter range (see `reflex_journal::upload`).
//!
//! # When the journal refuses a record
//!
//! A record the journal refuses (full under `when_full = "backpressure"`, or an I/O error)
//! is kept here, in order, and appended again once the journal takes records (checked every
//! [`RETRY_EVERY`] and at each new decision); its event stays unacked until then. The broker
//! stops sending once its in-flight window of unacked events is full (mosquitto's
//! `max_inflight_messages`), so that is what the journal's backpressure pushes back on.
//! At most [`MAX_RETAINED`] records are kept; past that, a refused record is given up
//! (counted in `reflexd_journal_append_failures_total`, logged): its event stays unacked for
//! this session, and a restart journals its redelivery.
//!
//! # When the disk is full
//!
//! A real ENOSPC (or another I/O error) breaks sled's handle: appends are refused and kept
//! here as above, commands keep going out on time (actuation never waits for the journal),
//! and QoS 1 events stay unacked, so the broker keeps them and stops sending once its
//! in-flight window is full. The appender reopens the journal with backoff (see
//! `reflex_journal::store`, Errors); a reopen tells the recorder
//! ([`RecorderMsg::Reopened`]) what it kept (acked now) and which appends it lost: those
//! go back to the front of the refused queue with their acks ([`Ledger::reopened`]) and
//! are appended again, so every acked event is journaled once. Records that owe no PUBACK
//! (QoS 0 input) are not kept for that. A journal with no space to open at start is
//! opened the same way once there is room; until then the dedupe has nothing to be seeded
//! from, so an event the previous run journaled but did not ack can be journaled twice.
//!
//! # Redeliveries
//!
//! A QoS 1 event whose PUBACK is deferred is announced to the recorder by the admit stage
//! ([`RecorderMsg::Accepted`]) before the engine sees it. A redelivery of an event seen in
//! this run (a duplicate for the per-device dedupe: not answered again) comes here too
//! ([`RecorderMsg::Duplicate`]), and its PUBACK waits for the original's record: while that
//! record is being decided, refused or not yet durable, the duplicate's PUBACK is held with
//! it; once it is durable (or the event came from an earlier run, whose records the dedupe
//! was seeded from), it is acked at once. So a PUBACK, for the original or a redelivery,
//! always means journaled.
//!
//! The channel is flume's, not `std::sync::mpsc`, because its senders include the engine's
//! SCHED_FIFO threads (their commands' records) next to the normal-priority intake: std's
//! unbounded channel makes a sender that reaches the end of a block spin (`yield_now`)
//! until the sender that took the block's last slot has installed the next one, so a
//! real-time sender can spin on a preempted normal one until the kernel's RT throttling
//! steps in. flume's lock makes a waiting thread sleep, which gives the preempted one its
//! core back.

pub mod ledger;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::AsyncClient;

use reflex_journal::store::{Appender, StoreError};
use reflex_records::{DeadlineOutcomeRef, JournalRecord, JournalRecordRef, ModelIdRef};
use reflex_wire::DecisionSource;

use crate::monitor::LiveMonitor;
use crate::ops::metrics::{Metrics, Stage};
use crate::pipeline::features::FeaturePlan;
use crate::pipeline::types::{window_g, Decided, HeldAck, RecorderMsg, Session};

pub use ledger::{Filed, Ledger, PendingAcks};

/// How often refused records are offered to the journal again.
pub const RETRY_EVERY: Duration = Duration::from_millis(20);

/// Under load the recorder drains its channel this often rather than being woken per
/// message (see [`Recorder::run`]); it adds at most this much to a PUBACK's wait, next to
/// the journal's group-commit interval.
pub const DRAIN_EVERY: Duration = Duration::from_millis(1);

/// The same with no journal, where the recorder only feeds live monitoring (windows of a
/// minute by default) and no PUBACK waits for it: a tenth of the wake-ups.
pub const DRAIN_EVERY_UNJOURNALED: Duration = Duration::from_millis(10);

/// Refused records kept for another try (beyond: given up, see the module doc). The
/// broker's in-flight window bounds what can pile up (mosquitto: `max_inflight_messages`).
pub const MAX_RETAINED: usize = 4096;

/// The model input of a decision (window as decoded, channel-major) and whether `plan`
/// computed its features into `features` (false: none, `features` empty).
pub fn model_input_and_features(
    d: &Decided,
    plan: &FeaturePlan,
    features: &mut Vec<f64>,
) -> (Vec<f32>, bool) {
    let model_input = window_g(&d.event);
    let ok = plan.compute(&model_input, d.event.temperature_c(), features);
    (model_input, ok)
}

/// The journal record of a decision (pure). Features that could not be computed (`None`:
/// the event's window is not the model's length, or a declared scalar is missing) leave
/// `features` **empty**: that is the record's flag for it, which the cloud refuses by name
/// (`features_missing`), one record at a time, and the board then keeps in its journal's
/// dead-letter range. Such a record is journaled like any other (its event acked once
/// durable, never lost) and counted (`reflexd_journal_records_without_features_total`).
/// The values are in the order of the route's [`FeaturePlan`]; the record's encoding names
/// its set ([`JournalRecord::encode_full`]).
pub fn journal_record(
    node: &str,
    d: &Decided,
    model_input: Vec<f32>,
    features: Option<&[f64]>,
) -> JournalRecord {
    let features: Vec<f32> = features
        .map(|f| f.iter().map(|&x| x as f32).collect())
        .unwrap_or_default();
    journal_record_ref(node, d, &model_input, &features).to_record()
}

/// The journal record of a decision, borrowed from it (pure): encodes to the bytes of
/// [`journal_record`]'s record with the same arguments, `features` already narrowed to
/// `f32` (empty: none computed), without copying the payload, window or strings.
pub fn journal_record_ref<'a>(
    node: &'a str,
    d: &'a Decided,
    model_input: &'a [f32],
    features: &'a [f32],
) -> JournalRecordRef<'a> {
    JournalRecordRef {
        node,
        device: d.event.device.as_str(),
        seq: d.event.seq,
        arrival_unix_us: d.arrival_unix_us,
        payload: &d.payload,
        model_input,
        features,
        logits: &d.logits,
        class: u8::try_from(d.class).unwrap_or(u8::MAX),
        command: &d.command,
        model: ModelIdRef {
            name: d.model.name.as_str(),
            version: d.model.version.as_str(),
        },
        source: match d.source {
            DecisionSource::Model => reflex_records::DecisionSource::Model,
            DecisionSource::Fallback => reflex_records::DecisionSource::Fallback,
            DecisionSource::Rule => reflex_records::DecisionSource::Rule,
        },
        timings: d.timings,
        outcome: match d.miss {
            None => DeadlineOutcomeRef::OnTime,
            Some(cause) => DeadlineOutcomeRef::Miss {
                cause: cause.as_str(),
            },
        },
    }
}

/// The recorder thread's state.
pub struct Recorder {
    /// Node name, in every record.
    pub node: String,
    /// Decisions and durability notices.
    pub rx: flume::Receiver<RecorderMsg>,
    /// The journal's group-commit appender (None: no journal configured).
    pub appender: Option<Appender>,
    /// For the PUBACKs.
    pub client: AsyncClient,
    /// The intake's MQTT session: held PUBACKs of an earlier one are dropped.
    pub session: Session,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Live drift and SLO monitoring, when enabled.
    pub monitor: Option<Arc<LiveMonitor>>,
}

/// The recorder loop's state.
struct Run {
    node: String,
    appender: Option<Appender>,
    client: AsyncClient,
    session: Session,
    metrics: Arc<Metrics>,
    monitor: Option<Arc<LiveMonitor>>,
    ledger: Ledger,
    last_log: Option<Instant>,
    last_monitor_log: Option<Instant>,
    /// The features of the decision at hand (reused: no allocation per event).
    scratch: Vec<f64>,
    /// The same narrowed to `f32`, as journaled (reused).
    features32: Vec<f32>,
}

impl Recorder {
    /// Runs until [`RecorderMsg::Stop`] (or every sender is gone): journals each decision
    /// and acks it once durable (refused records are tried again, see the module doc); at
    /// the end, a last try, a last group commit and the remaining acks.
    pub fn run(self) {
        let Recorder {
            node,
            rx,
            appender,
            client,
            session,
            metrics,
            monitor,
        } = self;
        let drain_every = if appender.is_some() {
            DRAIN_EVERY
        } else {
            DRAIN_EVERY_UNJOURNALED
        };
        let mut run = Run {
            node,
            appender,
            client,
            session,
            metrics,
            monitor,
            ledger: Ledger::default(),
            last_log: None,
            last_monitor_log: None,
            scratch: Vec::new(),
            features32: Vec::new(),
        };
        let mut paused = false;
        loop {
            let msg = if run.ledger.retained() > 0 {
                match rx.recv_timeout(RETRY_EVERY) {
                    Ok(m) => m,
                    Err(flume::RecvTimeoutError::Timeout) => {
                        run.retry_if_room();
                        continue;
                    }
                    Err(flume::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                // Batched under load: while messages keep coming, drain the channel every
                // DRAIN_EVERY instead of blocking, so that senders (the actuator, the
                // intake) find no receiver to wake and the real-time path pays no futex
                // wake-up per event; once a pause finds nothing new, block again.
                match rx.try_recv() {
                    Ok(m) => {
                        paused = false;
                        m
                    }
                    Err(flume::TryRecvError::Disconnected) => break,
                    Err(flume::TryRecvError::Empty) if !paused => {
                        paused = true;
                        std::thread::sleep(drain_every);
                        continue;
                    }
                    Err(flume::TryRecvError::Empty) => match rx.recv() {
                        Ok(m) => {
                            paused = false;
                            m
                        }
                        Err(_) => break,
                    },
                }
            };
            if !run.handle(msg) {
                break;
            }
        }
        run.finish();
    }
}

impl Run {
    /// Sends `a` unless its session is gone. Waits for room on the request channel: this
    /// thread is off the real-time path, and a dropped PUBACK would hold one of the
    /// broker's in-flight slots (20 by default) until the next reconnect.
    fn ack(&self, a: &HeldAck) {
        if a.session != self.session.current() {
            self.metrics.ack_dropped_session_lost();
            return;
        }
        if let Err(e) = futures_executor::block_on(self.client.ack(&a.publish)) {
            // Only once the event loop is gone (past the shutdown's grace period).
            tracing::warn!(error = %e, "could not queue a puback");
            return;
        }
        let held = a.received.elapsed().as_nanos();
        self.metrics
            .observe(Stage::Ack, u64::try_from(held).unwrap_or(u64::MAX));
    }

    /// While the journal says it is full, a try would only be refused (and counted): wait
    /// for the uploader or the quota to free space.
    fn retry_if_room(&mut self) {
        if let Some(app) = self
            .appender
            .as_ref()
            .filter(|a| !a.journal().is_full() && !a.journal().needs_reopen())
        {
            let _ = self.ledger.retry(|b| app.append_encoded(b));
        }
    }

    /// Handles one message; false at [`RecorderMsg::Stop`].
    fn handle(&mut self, msg: RecorderMsg) -> bool {
        match msg {
            RecorderMsg::Accepted(key) => self.ledger.accepted(key),
            RecorderMsg::Duplicate { key, ack: a } => {
                if let Some(a) = self.ledger.duplicate(&key, a) {
                    self.ack(&a);
                }
            }
            RecorderMsg::Decided(d) => self.decided(d),
            RecorderMsg::Durable(through) => {
                for a in self.ledger.durable(through) {
                    self.ack(&a);
                }
            }
            RecorderMsg::Reopened {
                kept_through,
                lost_before,
            } => {
                for a in self.ledger.reopened(kept_through, lost_before) {
                    self.ack(&a);
                }
                tracing::info!(
                    retained = self.ledger.retained(),
                    "journal reopened: appending the records it refused or lost again"
                );
            }
            RecorderMsg::Stop => return false,
        }
        true
    }

    /// Feeds the monitor, then journals the decision (or keeps it for another try).
    fn decided(&mut self, d: Box<Decided>) {
        let plan = d.features.clone();
        let (model_input, ok) = model_input_and_features(&d, &plan, &mut self.scratch);
        let features = ok.then_some(self.scratch.as_slice());
        // Routes added by a reload are not monitored until the next start.
        if let Some(m) = self.monitor.as_ref().filter(|m| m.watches(d.route)) {
            let observation = reflex_drift::monitor::Observation {
                features,
                model_class: (d.source == DecisionSource::Model).then_some(d.class),
                fallback: d.source == DecisionSource::Fallback,
                deadline_missed: d.miss.is_some(),
            };
            if let Err(e) = m.record(d.route, d.arrival_unix_us, &observation) {
                if self
                    .last_monitor_log
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
                {
                    tracing::warn!(error = %e, "monitor refused an observation");
                    self.last_monitor_log = Some(Instant::now());
                }
            }
        }
        let Some(app) = &self.appender else {
            // No journal: the intake acked already (ack is None).
            return;
        };
        if features.is_none() {
            self.metrics.journal_without_features();
        }
        self.features32.clear();
        if let Some(f) = features {
            self.features32.extend(f.iter().map(|&x| x as f32));
        }
        let encoded = journal_record_ref(&self.node, &d, &model_input, &self.features32)
            .encode_full(d.decision.as_ref(), plan.feature_set());
        let d = *d;
        let key = d
            .ack
            .as_ref()
            .map(|_| (d.event.device.clone(), d.event.seq));
        let (filed, err) = self
            .ledger
            .decided(key, d.ack, encoded, |b| app.append_encoded(b));
        if filed == Filed::Appended {
            return;
        }
        // Not journaled, so not acked (yet).
        let full = app.journal().is_full() || matches!(err, Some(StoreError::Full { .. }));
        self.metrics
            .journal_append_failed(full && filed == Filed::Retained);
        if self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            let error = err.map(|e| e.to_string()).unwrap_or_default();
            let retained = self.ledger.retained();
            if filed == Filed::GivenUp {
                tracing::error!(%error, device = %d.event.device, seq = d.event.seq, retained, "journal refused a record and too many are waiting: given up; its event stays unacked with the broker");
            } else {
                tracing::warn!(%error, device = %d.event.device, seq = d.event.seq, retained, "journal refused a record; kept for another try, its event is not acked until then");
            }
            self.last_log = Some(Instant::now());
        }
    }

    /// A last try for refused records, a last group commit, and every ack it makes due.
    fn finish(mut self) {
        let Some(app) = self.appender.take() else {
            return;
        };
        let _ = self.ledger.retry(|b| app.append_encoded(b));
        match app.close() {
            Ok(()) => {
                for a in self.ledger.drain_appended() {
                    self.ack(&a);
                }
                if self.ledger.retained() > 0 {
                    tracing::warn!(
                        unacked = self.ledger.retained(),
                        "records the journal refused; their events stay unacked with the broker"
                    );
                }
            }
            Err(e) => tracing::error!(
                error = %e,
                unacked = self.ledger.owed(),
                "last journal commit failed; those events stay unacked with the broker"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
