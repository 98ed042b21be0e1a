//! The recorder: after each command is published, turns the decision into a journal record
//! (off the real-time threads), appends it with group commit, and sends the event's MQTT
//! PUBACK only once that record is durable — acknowledged means journaled. A crash then
//! loses nothing the broker believes delivered: it redelivers the rest, and the per-device
//! dedupe (seeded from the journal at start) answers and journals each event once.
//!
//! Actuation never waits for the journal: the actuator publishes first and hands the
//! decision over afterwards.

use std::collections::VecDeque;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{AsyncClient, Publish};

use reflex_journal::record::{DeadlineOutcome, JournalRecord, ModelId, StageTimings};
use reflex_journal::store::{Appender, StoreError};
use reflex_wire::{DecisionSource, ModelRef, SensorEvent};

use crate::metrics::Metrics;
use crate::schedule::MissCause;

/// One decided (and published) event, on its way into the journal.
#[derive(Debug)]
pub struct Decided {
    /// Route index.
    pub route: usize,
    /// The event as decoded.
    pub event: SensorEvent,
    /// The payload exactly as received.
    pub payload: Bytes,
    /// Arrival, µs since the Unix epoch.
    pub arrival_unix_us: u64,
    /// The command payload exactly as published.
    pub command: Vec<u8>,
    /// The class acted on.
    pub class: usize,
    /// The model's logits; empty when the fallback answered.
    pub logits: Vec<f32>,
    /// Who decided.
    pub source: DecisionSource,
    /// Which model (or fallback) decided.
    pub model: ModelRef,
    /// Per-stage timings (publish and end-to-end filled in by the actuator).
    pub timings: StageTimings,
    /// Why the model did not answer, if it did not.
    pub miss: Option<MissCause>,
    /// The PUBACK to send once journaled (QoS 1 input with a journal), else `None`.
    pub ack: Option<Publish>,
}

/// What the recorder thread receives.
#[derive(Debug)]
pub enum RecorderMsg {
    /// A published decision.
    Decided(Box<Decided>),
    /// The journal is durable through this sequence (from the group-commit thread).
    Durable(u64),
    /// Everything has been handed over: make it durable, ack it, and return.
    Stop,
}

/// The PUBACK stub for `publish`: only its packet id and QoS matter to the client.
pub fn ack_stub(publish: &Publish) -> Publish {
    let mut stub = Publish::new("", publish.qos, Bytes::new());
    stub.pkid = publish.pkid;
    stub
}

/// Nanoseconds as whole microseconds for a journal timing (saturating).
pub fn micros(ns: u64) -> u32 {
    u32::try_from(ns / 1000).unwrap_or(u32::MAX)
}

/// The model input of a decision (window in g) and its features (None: wrong shape).
pub fn model_input_and_features(d: &Decided) -> (Vec<f32>, Option<reflex_models::Features>) {
    let model_input = crate::engine::window_g(&d.event);
    let features =
        reflex_models::features::compute_slice(&model_input, d.event.temperature_c()).ok();
    (model_input, features)
}

/// The journal record of a decision (pure).
pub fn journal_record(
    node: &str,
    d: &Decided,
    model_input: Vec<f32>,
    features: Option<&reflex_models::Features>,
) -> JournalRecord {
    let features = features
        .map(|f| f.iter().map(|&x| x as f32).collect())
        .unwrap_or_default();
    JournalRecord {
        node: node.to_owned(),
        device: d.event.device.to_string(),
        seq: d.event.seq,
        arrival_unix_us: d.arrival_unix_us,
        payload: d.payload.to_vec(),
        model_input,
        features,
        logits: d.logits.clone(),
        class: u8::try_from(d.class).unwrap_or(u8::MAX),
        command: d.command.clone(),
        model: ModelId {
            name: d.model.name.to_string(),
            version: d.model.version.to_string(),
        },
        source: match d.source {
            DecisionSource::Model => reflex_journal::record::DecisionSource::Model,
            DecisionSource::Fallback => reflex_journal::record::DecisionSource::Fallback,
            DecisionSource::Rule => reflex_journal::record::DecisionSource::Rule,
        },
        timings: d.timings,
        outcome: match d.miss {
            None => DeadlineOutcome::OnTime,
            Some(cause) => DeadlineOutcome::Miss {
                cause: cause.as_str().to_owned(),
            },
        },
    }
}

/// Acks waiting for their journal sequence to become durable, in append order.
#[derive(Debug, Default)]
pub struct PendingAcks {
    queue: VecDeque<(u64, Publish)>,
}

impl PendingAcks {
    /// Holds `ack` until `seq` is durable.
    pub fn push(&mut self, seq: u64, ack: Publish) {
        self.queue.push_back((seq, ack));
    }

    /// The acks whose sequence is at or below `durable`, in order.
    pub fn release(&mut self, durable: u64) -> Vec<Publish> {
        let mut out = Vec::new();
        while self.queue.front().is_some_and(|(s, _)| *s <= durable) {
            if let Some((_, a)) = self.queue.pop_front() {
                out.push(a);
            }
        }
        out
    }

    /// Everything still held.
    pub fn drain(&mut self) -> Vec<Publish> {
        self.queue.drain(..).map(|(_, a)| a).collect()
    }

    /// Number of acks held.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when no ack is held.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// The recorder thread's state.
pub struct Recorder {
    /// Node name, in every record.
    pub node: String,
    /// Decisions and durability notices.
    pub rx: mpsc::Receiver<RecorderMsg>,
    /// The journal's group-commit appender (None: no journal configured).
    pub appender: Option<Appender>,
    /// For the PUBACKs.
    pub client: AsyncClient,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Live drift and SLO monitoring, when enabled.
    pub monitor: Option<Arc<crate::monitor::LiveMonitor>>,
}

impl Recorder {
    /// Runs until [`RecorderMsg::Stop`] (or every sender is gone): journals each decision
    /// and acks it once durable; at the end, a last group commit and the remaining acks.
    pub fn run(self) {
        let Recorder {
            node,
            rx,
            mut appender,
            client,
            metrics,
            monitor,
        } = self;
        let mut last_monitor_log: Option<Instant> = None;
        let mut pending = PendingAcks::default();
        let mut last_log: Option<Instant> = None;
        let ack = |a: &Publish| {
            if let Err(e) = client.try_ack(a) {
                tracing::warn!(error = %e, "could not queue a puback");
            }
        };
        while let Ok(msg) = rx.recv() {
            match msg {
                RecorderMsg::Decided(d) => {
                    let (model_input, features) = model_input_and_features(&d);
                    if let Some(m) = &monitor {
                        let observation = reflex_drift::monitor::Observation {
                            features: features.as_ref().map(|f| f.as_slice()),
                            model_class: (d.source == DecisionSource::Model).then_some(d.class),
                            fallback: d.source == DecisionSource::Fallback,
                            deadline_missed: d.miss.is_some(),
                        };
                        if let Err(e) = m.record(d.route, d.arrival_unix_us, &observation) {
                            if last_monitor_log
                                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
                            {
                                tracing::warn!(error = %e, "monitor refused an observation");
                                last_monitor_log = Some(Instant::now());
                            }
                        }
                    }
                    let Some(app) = &appender else {
                        // No journal: the ingest acked already (ack is None).
                        continue;
                    };
                    let record = journal_record(&node, &d, model_input, features.as_ref());
                    match app.append(&record) {
                        Ok(seq) => {
                            if let Some(a) = d.ack {
                                pending.push(seq, a);
                            }
                        }
                        Err(e) => {
                            // Not journaled, so not acked: the broker keeps the event.
                            metrics.journal_append_failed(matches!(e, StoreError::Full { .. }));
                            if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                                tracing::error!(error = %e, device = %d.event.device, seq = d.event.seq, "journal refused a record; its event is not acked");
                                last_log = Some(Instant::now());
                            }
                        }
                    }
                }
                RecorderMsg::Durable(through) => {
                    for a in pending.release(through) {
                        ack(&a);
                    }
                }
                RecorderMsg::Stop => break,
            }
        }
        // A last group commit makes every appended record durable: ack them all.
        if let Some(app) = appender.take() {
            match app.close() {
                Ok(()) => {
                    for a in pending.drain() {
                        ack(&a);
                    }
                }
                Err(e) => tracing::error!(
                    error = %e,
                    unacked = pending.len(),
                    "last journal commit failed; those events stay unacked with the broker"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stub(pkid: u16) -> Publish {
        let mut p = Publish::new("", rumqttc::QoS::AtLeastOnce, Bytes::new());
        p.pkid = pkid;
        p
    }

    #[test]
    fn acks_are_released_in_order_only_once_durable() {
        let mut p = PendingAcks::default();
        p.push(3, stub(30));
        p.push(4, stub(40));
        p.push(9, stub(90));
        assert!(p.release(2).is_empty());
        let released: Vec<u16> = p.release(4).iter().map(|a| a.pkid).collect();
        assert_eq!(released, [30, 40]);
        assert_eq!(p.len(), 1);
        assert!(p.release(8).is_empty());
        assert_eq!(p.drain().len(), 1);
        assert!(p.is_empty());
    }

    #[test]
    fn a_record_carries_the_event_the_decision_and_the_miss_cause() {
        let mut dev =
            reflex_sim::device::SimDevice::new(1, reflex_sim::signal::Condition::ALL[1], 3);
        let (_, bytes) = dev.next_encoded(0, reflex_sim::signal::Distortion::NONE);
        let event = SensorEvent::decode(bytes).unwrap();
        let d = Decided {
            route: 0,
            event: event.clone(),
            payload: Bytes::copy_from_slice(bytes),
            arrival_unix_us: 42,
            command: vec![1, 2, 3],
            class: 1,
            logits: vec![],
            source: DecisionSource::Fallback,
            model: ModelRef {
                name: heapless::String::try_from("fallback").unwrap(),
                version: heapless::String::try_from("1.0.0").unwrap(),
            },
            timings: StageTimings::default(),
            miss: Some(MissCause::ModelTooSlow),
            ack: None,
        };
        let (input, features) = model_input_and_features(&d);
        let r = journal_record("board-1", &d, input, features.as_ref());
        assert_eq!(
            (r.node.as_str(), r.device.as_str()),
            ("board-1", event.device.as_str())
        );
        assert_eq!(r.payload, bytes.to_vec());
        assert_eq!(r.model_input.len(), 192);
        assert_eq!(r.features.len(), reflex_models::FEATURE_COUNT);
        assert_eq!(
            r.outcome,
            DeadlineOutcome::Miss {
                cause: "model_too_slow".into()
            }
        );
        assert_eq!(r.source, reflex_journal::record::DecisionSource::Fallback);
        assert_eq!(JournalRecord::decode(&r.encode()).unwrap(), r);
    }
}
