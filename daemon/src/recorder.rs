//! The recorder: after each command is published, turns the decision into a journal record
//! (off the real-time threads), appends it with group commit, and sends the event's MQTT
//! PUBACK only once that record is durable — acknowledged means journaled. A crash then
//! loses nothing the broker believes delivered: it redelivers the rest, and the per-device
//! dedupe (seeded from the journal at start) answers and journals each event once.
//!
//! Actuation never waits for the journal: the actuator publishes first and hands the
//! decision over afterwards.
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
//! A QoS 1 event whose PUBACK is deferred is announced to the recorder by the ingest
//! ([`RecorderMsg::Accepted`]) before the engine sees it. A redelivery of an event seen in
//! this run (a duplicate for the per-device dedupe: not answered again) comes here too
//! ([`RecorderMsg::Duplicate`]), and its PUBACK waits for the original's record: while that
//! record is being decided, refused or not yet durable, the duplicate's PUBACK is held with
//! it; once it is durable (or the event came from an earlier run, whose records the dedupe
//! was seeded from), it is acked at once. So a PUBACK, for the original or a redelivery,
//! always means journaled.
//!
//! The channel is flume's, not `std::sync::mpsc`, because its senders include the engine's
//! SCHED_FIFO threads (their commands' records) next to the normal-priority ingest: std's
//! unbounded channel makes a sender that reaches the end of a block spin (`yield_now`)
//! until the sender that took the block's last slot has installed the next one. With that
//! sender (the ingest) preempted, both real-time threads spun, every normal thread waited,
//! and only the kernel's RT throttling ended it, ~1 s later: commands ~1 s past a 5 ms
//! deadline, 3 runs in ~30 of a redelivery burst here. flume's lock makes a waiting
//! thread sleep, which gives the preempted one its core back.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{AsyncClient, Publish};

use reflex_journal::record::{DeadlineOutcome, JournalRecord, ModelId, StageTimings};
use reflex_journal::store::{Appender, StoreError};
use reflex_wire::{DecisionSource, DeviceId, ModelRef, SensorEvent};

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

/// An event's identity for the dedupe: device and its sequence number.
pub type EventKey = (DeviceId, u64);

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

/// What the recorder thread receives.
#[derive(Debug)]
pub enum RecorderMsg {
    /// A QoS 1 event whose PUBACK waits for its record entered the engine (sent by the
    /// ingest before the engine sees it, so before its [`RecorderMsg::Decided`]).
    Accepted(EventKey),
    /// A published decision.
    Decided(Box<Decided>),
    /// A redelivery of an event already answered in this run: not answered again; its
    /// PUBACK goes out once the original's record is durable.
    Duplicate {
        /// The event.
        key: EventKey,
        /// Its PUBACK.
        ack: Publish,
    },
    /// The journal is durable through this sequence (from the group-commit thread).
    Durable(u64),
    /// The journal was reopened after an I/O error (from the group-commit thread, before
    /// any later [`RecorderMsg::Durable`]): see [`Ledger::reopened`].
    Reopened {
        /// Durable through here.
        kept_through: u64,
        /// Appends below this (and above `kept_through`) were lost.
        lost_before: u64,
    },
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
    /// Holds `ack` until `seq` is durable (kept in sequence order).
    pub fn push(&mut self, seq: u64, ack: Publish) {
        if self.queue.back().is_none_or(|(s, _)| *s <= seq) {
            self.queue.push_back((seq, ack));
        } else {
            // A redelivery's ack for an earlier record.
            let at = self.queue.partition_point(|(s, _)| *s <= seq);
            self.queue.insert(at, (seq, ack));
        }
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

    /// Takes out the acks held for sequences in `lo..hi`, with their sequences.
    pub fn take_range(&mut self, lo: u64, hi: u64) -> Vec<(u64, Publish)> {
        let start = self.queue.partition_point(|(s, _)| *s < lo);
        let end = self.queue.partition_point(|(s, _)| *s < hi);
        self.queue.drain(start..end.max(start)).collect()
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

/// Where an event whose PUBACK is deferred stands.
#[derive(Debug)]
enum KeyState {
    /// In the engine: its decision has not reached the recorder. Holds the acks of its
    /// redeliveries meanwhile.
    Deciding(Vec<Publish>),
    /// Refused by the journal, waiting in [`Ledger`]'s retained queue.
    Retained,
    /// Appended at this journal sequence, not yet durable.
    Appended(u64),
    /// Refused and given up (more than [`MAX_RETAINED`] waiting): never acked this run.
    Lost,
}

/// A refused record waiting for the journal, with the acks it releases.
#[derive(Debug)]
struct Retained {
    key: Option<EventKey>,
    bytes: Vec<u8>,
    acks: Vec<Publish>,
}

/// What the recorder knows about every event whose PUBACK it still owes (pure state; the
/// journal is passed in as an append function). Entries leave once durable, so it holds
/// at most the broker's in-flight window.
#[derive(Debug, Default)]
pub struct Ledger {
    keys: HashMap<EventKey, KeyState>,
    /// Appended, not yet durable, in journal order, with the record (appended again if a
    /// reopened journal lost it).
    appended: VecDeque<(u64, EventKey, Vec<u8>)>,
    /// Refused by the journal, in decision order.
    retained: VecDeque<Retained>,
    pending: PendingAcks,
}

/// What [`Ledger::decided`] did with a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Filed {
    /// Appended (or queued behind earlier refused records, which all went in).
    Appended,
    /// Refused: kept for another try.
    Retained,
    /// Refused, and too many are waiting: given up.
    GivenUp,
}

impl Ledger {
    /// An event with a deferred PUBACK entered the engine.
    pub fn accepted(&mut self, key: EventKey) {
        self.keys
            .entry(key)
            .or_insert_with(|| KeyState::Deciding(Vec::new()));
    }

    /// A redelivery of `key`: returns its ack when it can go now (the original's record is
    /// durable, or was journaled in an earlier run); otherwise holds it with the original.
    pub fn duplicate(&mut self, key: &EventKey, ack: Publish) -> Option<Publish> {
        match self.keys.get_mut(key) {
            None => Some(ack),
            Some(KeyState::Deciding(acks)) => {
                acks.push(ack);
                None
            }
            Some(KeyState::Appended(seq)) => {
                self.pending.push(*seq, ack);
                None
            }
            Some(KeyState::Retained) => {
                if let Some(r) = self
                    .retained
                    .iter_mut()
                    .find(|r| r.key.as_ref() == Some(key))
                {
                    r.acks.push(ack);
                }
                None
            }
            // Not journaled: the broker keeps it (a restart journals it).
            Some(KeyState::Lost) => None,
        }
    }

    /// A decision's record (`bytes`) for `key` with its own ack: appends it behind any
    /// refused ones (`append` is the journal).
    pub fn decided(
        &mut self,
        key: Option<EventKey>,
        ack: Option<Publish>,
        bytes: Vec<u8>,
        append: impl FnMut(&[u8]) -> Result<u64, StoreError>,
    ) -> (Filed, Option<StoreError>) {
        let mut acks: Vec<Publish> = ack.into_iter().collect();
        if let Some(k) = &key {
            if let Some(KeyState::Deciding(dups)) = self.keys.remove(k) {
                acks.extend(dups);
            }
            if !acks.is_empty() {
                self.keys.insert(k.clone(), KeyState::Retained);
            }
        }
        let key = key.filter(|_| !acks.is_empty());
        self.retained.push_back(Retained { key, bytes, acks });
        let err = self.retry(append).err();
        if self.retained.is_empty() {
            return (Filed::Appended, err);
        }
        if self.retained.len() > MAX_RETAINED {
            if let Some(r) = self.retained.pop_back() {
                if let Some(k) = r.key {
                    self.keys.insert(k, KeyState::Lost);
                }
            }
            return (Filed::GivenUp, err);
        }
        (Filed::Retained, err)
    }

    /// Offers the refused records to the journal again, oldest first, until one is refused.
    pub fn retry(
        &mut self,
        mut append: impl FnMut(&[u8]) -> Result<u64, StoreError>,
    ) -> Result<(), StoreError> {
        while let Some(r) = self.retained.front() {
            let seq = append(&r.bytes)?;
            let Some(r) = self.retained.pop_front() else {
                break;
            };
            for a in r.acks {
                self.pending.push(seq, a);
            }
            if let Some(k) = r.key {
                self.keys.insert(k.clone(), KeyState::Appended(seq));
                self.appended.push_back((seq, k, r.bytes));
            }
        }
        Ok(())
    }

    /// The journal is durable through `through`: the acks that can go now.
    pub fn durable(&mut self, through: u64) -> Vec<Publish> {
        while self.appended.front().is_some_and(|(s, _, _)| *s <= through) {
            if let Some((seq, k, _)) = self.appended.pop_front() {
                // A later duplicate record cannot exist, but check the state anyway.
                if matches!(self.keys.get(&k), Some(KeyState::Appended(s)) if *s == seq) {
                    self.keys.remove(&k);
                }
            }
        }
        self.pending.release(through)
    }

    /// The journal was reopened after an I/O error: everything through `kept_through` is
    /// durable (the acks that can go now are returned); records appended at sequences
    /// `kept_through + 1 .. lost_before` were lost with the broken handle, so those that
    /// owe a PUBACK go back to the front of the refused queue, with their acks, to be
    /// appended again (records that owe none, QoS 0 input, are not kept).
    pub fn reopened(&mut self, kept_through: u64, lost_before: u64) -> Vec<Publish> {
        let acks = self.durable(kept_through);
        let mut lost_acks = self.pending.take_range(kept_through + 1, lost_before);
        let mut back = Vec::new();
        while self
            .appended
            .front()
            .is_some_and(|(s, _, _)| *s < lost_before)
        {
            let Some((seq, key, bytes)) = self.appended.pop_front() else {
                break;
            };
            let (mine, rest): (Vec<_>, Vec<_>) =
                lost_acks.into_iter().partition(|(s, _)| *s == seq);
            lost_acks = rest;
            self.keys.insert(key.clone(), KeyState::Retained);
            back.push(Retained {
                key: Some(key),
                bytes,
                acks: mine.into_iter().map(|(_, a)| a).collect(),
            });
        }
        for r in back.into_iter().rev() {
            self.retained.push_front(r);
        }
        acks
    }

    /// Refused records waiting for the journal.
    pub fn retained(&self) -> usize {
        self.retained.len()
    }

    /// Events whose PUBACK is still owed (deciding, refused or not yet durable).
    pub fn owed(&self) -> usize {
        self.keys.len()
    }

    /// Every ack held for an appended record (after the last group commit).
    fn drain_appended(&mut self) -> Vec<Publish> {
        self.pending.drain()
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
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Live drift and SLO monitoring, when enabled.
    pub monitor: Option<Arc<crate::monitor::LiveMonitor>>,
}

impl Recorder {
    /// Runs until [`RecorderMsg::Stop`] (or every sender is gone): journals each decision
    /// and acks it once durable (refused records are tried again, see the module doc); at
    /// the end, a last try, a last group commit and the remaining acks.
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
        let mut ledger = Ledger::default();
        let mut last_log: Option<Instant> = None;
        let mut paused = false;
        let ack = |a: &Publish| {
            if let Err(e) = client.try_ack(a) {
                tracing::warn!(error = %e, "could not queue a puback");
            }
        };
        let append = |app: &Appender, bytes: &[u8]| app.append_encoded(bytes);
        let drain_every = if appender.is_some() {
            DRAIN_EVERY
        } else {
            DRAIN_EVERY_UNJOURNALED
        };
        loop {
            let msg = if ledger.retained() > 0 {
                match rx.recv_timeout(RETRY_EVERY) {
                    Ok(m) => m,
                    Err(flume::RecvTimeoutError::Timeout) => {
                        // While the journal says it is full, a try would only be refused
                        // (and counted): wait for the uploader or the quota to free space.
                        if let Some(app) = appender
                            .as_ref()
                            .filter(|a| !a.journal().is_full() && !a.journal().needs_reopen())
                        {
                            let _ = ledger.retry(|b| append(app, b));
                        }
                        continue;
                    }
                    Err(flume::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                // Batched under load: while messages keep coming, drain the channel every
                // DRAIN_EVERY instead of blocking, so that senders (the actuator, the
                // ingest) find no receiver to wake and the real-time path pays no futex
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
            match msg {
                RecorderMsg::Accepted(key) => ledger.accepted(key),
                RecorderMsg::Duplicate { key, ack: a } => {
                    if let Some(a) = ledger.duplicate(&key, a) {
                        ack(&a);
                    }
                }
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
                    let d = *d;
                    let key = d
                        .ack
                        .as_ref()
                        .map(|_| (d.event.device.clone(), d.event.seq));
                    let (filed, err) =
                        ledger.decided(key, d.ack, record.encode(), |b| append(app, b));
                    if filed != Filed::Appended {
                        // Not journaled, so not acked (yet).
                        let full =
                            app.journal().is_full() || matches!(err, Some(StoreError::Full { .. }));
                        metrics.journal_append_failed(full && filed == Filed::Retained);
                        if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                            let error = err.map(|e| e.to_string()).unwrap_or_default();
                            if filed == Filed::GivenUp {
                                tracing::error!(%error, device = %d.event.device, seq = d.event.seq, retained = ledger.retained(), "journal refused a record and too many are waiting: given up; its event stays unacked with the broker");
                            } else {
                                tracing::warn!(%error, device = %d.event.device, seq = d.event.seq, retained = ledger.retained(), "journal refused a record; kept for another try, its event is not acked until then");
                            }
                            last_log = Some(Instant::now());
                        }
                    }
                }
                RecorderMsg::Durable(through) => {
                    for a in ledger.durable(through) {
                        ack(&a);
                    }
                }
                RecorderMsg::Reopened {
                    kept_through,
                    lost_before,
                } => {
                    for a in ledger.reopened(kept_through, lost_before) {
                        ack(&a);
                    }
                    tracing::info!(
                        retained = ledger.retained(),
                        "journal reopened: appending the records it refused or lost again"
                    );
                }
                RecorderMsg::Stop => break,
            }
        }
        // A last try for refused records, a last group commit, and every ack it makes due.
        if let Some(app) = appender.take() {
            let _ = ledger.retry(|b| app.append_encoded(b));
            match app.close() {
                Ok(()) => {
                    for a in ledger.drain_appended() {
                        ack(&a);
                    }
                    if ledger.retained() > 0 {
                        tracing::warn!(
                            unacked = ledger.retained(),
                            "records the journal refused; their events stay unacked with the broker"
                        );
                    }
                }
                Err(e) => tracing::error!(
                    error = %e,
                    unacked = ledger.owed(),
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

    fn key(seq: u64) -> EventKey {
        (DeviceId::try_from("dev-1").unwrap(), seq)
    }

    fn full() -> StoreError {
        StoreError::Full {
            live_bytes: 0,
            files_bytes: 0,
            quota_bytes: 0,
            fs_free_bytes: 0,
        }
    }

    #[test]
    fn a_redelivery_is_acked_only_once_the_original_record_is_durable() {
        let mut l = Ledger::default();
        let mut next = 0u64;
        let mut journal = |_: &[u8]| {
            next += 1;
            Ok(next)
        };
        // Redelivered while still being decided: held with the original.
        l.accepted(key(1));
        assert!(l.duplicate(&key(1), stub(11)).is_none());
        let (filed, _) = l.decided(Some(key(1)), Some(stub(10)), vec![1], &mut journal);
        assert_eq!(filed, Filed::Appended);
        // Redelivered again once appended, not yet durable: held too.
        assert!(l.duplicate(&key(1), stub(12)).is_none());
        let acked: Vec<u16> = l.durable(1).iter().map(|a| a.pkid).collect();
        assert_eq!(acked, [10, 11, 12]);
        // Durable (or from an earlier run): acked at once.
        assert_eq!(l.duplicate(&key(1), stub(13)).map(|a| a.pkid), Some(13));
        assert_eq!(l.duplicate(&key(7), stub(70)).map(|a| a.pkid), Some(70));
        assert_eq!(l.owed(), 0);
    }

    #[test]
    fn a_refused_record_is_kept_in_order_with_its_redeliveries_and_journaled_once_space_returns() {
        let mut l = Ledger::default();
        let mut appended: Vec<Vec<u8>> = Vec::new();
        let mut room = false;
        for seq in 1..=3 {
            l.accepted(key(seq));
        }
        let mut journal = |b: &[u8], room: bool| {
            if room {
                appended.push(b.to_vec());
                Ok(appended.len() as u64)
            } else {
                Err(full())
            }
        };
        for seq in 1..=2 {
            let (filed, err) = l.decided(
                Some(key(seq)),
                Some(stub(seq as u16)),
                vec![seq as u8],
                |b| journal(b, room),
            );
            assert_eq!(filed, Filed::Retained);
            assert!(matches!(err, Some(StoreError::Full { .. })));
        }
        assert!(
            l.duplicate(&key(1), stub(100)).is_none(),
            "refused: not acked"
        );
        assert!(l.durable(u64::MAX).is_empty());
        room = true;
        // The next decision goes in behind the refused ones.
        let (filed, _) = l.decided(Some(key(3)), Some(stub(3)), vec![3], |b| journal(b, room));
        assert_eq!(filed, Filed::Appended);
        assert_eq!(l.retained(), 0);
        assert_eq!(appended, [vec![1u8], vec![2], vec![3]]);
        let acked: Vec<u16> = l.durable(3).iter().map(|a| a.pkid).collect();
        assert_eq!(acked, [1, 100, 2, 3]);
        assert_eq!(l.owed(), 0);
    }

    #[test]
    fn records_a_reopened_journal_lost_go_back_in_order_with_their_acks_and_are_acked_once_durable_again(
    ) {
        let mut l = Ledger::default();
        let mut log: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut next = 1u64;
        let mut journal = |b: &[u8]| {
            log.push((next, b.to_vec()));
            next += 1;
            Ok(next - 1)
        };
        for seq in 1..=4 {
            l.accepted(key(seq));
            let (filed, _) = l.decided(
                Some(key(seq)),
                Some(stub(seq as u16)),
                vec![seq as u8],
                &mut journal,
            );
            assert_eq!(filed, Filed::Appended);
        }
        // A redelivery of event 3 waits with it.
        assert!(l.duplicate(&key(3), stub(33)).is_none());
        // The handle broke; the reopened journal kept sequences 1..=2, lost 3 and 4
        // (the next sequence would have been 5).
        let acked: Vec<u16> = l.reopened(2, 5).iter().map(|a| a.pkid).collect();
        assert_eq!(acked, [1, 2], "what was kept is durable: acked");
        assert_eq!(l.retained(), 2);
        assert!(
            l.durable(u64::MAX).is_empty(),
            "a lost record is never acked"
        );
        assert!(
            l.duplicate(&key(4), stub(44)).is_none(),
            "a redelivery of a lost one waits too"
        );
        // Appended again, in order, at new sequences (the journal continues at 5).
        next = 5;
        let mut again: Vec<(u64, Vec<u8>)> = Vec::new();
        l.retry(|b| {
            again.push((next, b.to_vec()));
            next += 1;
            Ok(next - 1)
        })
        .unwrap();
        assert_eq!(again, [(5, vec![3u8]), (6, vec![4])]);
        assert!(l.durable(5).iter().map(|a| a.pkid).eq([3, 33]));
        assert!(l.durable(6).iter().map(|a| a.pkid).eq([4, 44]));
        assert_eq!(l.owed(), 0);
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
