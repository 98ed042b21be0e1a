//! Admit: per-device dedupe of decoded events, then the hand-off to the engine.
//!
//! Every event is judged by the [`DeviceTracker`] ([`device_state`]): a duplicate (a QoS 1
//! redelivery of an event already answered) is never answered again, every other verdict
//! is. With a journal, each admitted event whose PUBACK is deferred is announced to the
//! recorder before the engine sees it ([`RecorderMsg::Accepted`]), and a duplicate's
//! PUBACK is handed to the recorder ([`RecorderMsg::Duplicate`]), to go out once the
//! original's record is durable: a PUBACK always means journaled.
//!
//! Events decided by an earlier run (seeded from the journal at start: its dedupe marks for
//! the events whose records were uploaded or dropped, [`Admitter::remember_through`], then its
//! last records, [`Admitter::remember`]) are duplicates too. A redelivery (DUP flag) of a
//! record read at start is a duplicate however far behind its device's newest event it is
//! ([`journaled`]: at a crash under load thousands of journaled events can be unacked,
//! more than `devices.dedupe_window` spans); the commands of the journal's last records are kept, and a
//! redelivery of one of those events sends its command again, once (across a crash,
//! commands are at least once; decisions and records stay exactly once).
//!
//! A route whose sensors do not number their events (`[routes.input]` without a
//! sequence field) or whose windows are assembled from readings is not deduped: reflexd
//! numbers its events itself (or the assembler dropped repeated readings), so a (device,
//! seq) pair says nothing about a redelivery; every such event is answered.
//!
//! Admitted events are queued without waking a worker; the workers wake once the intake
//! has dispatched every publish it read together ([`Admit::wake_workers`]), or once a
//! whole batch (`scheduler.max_batch`) is waiting: one wake-up and one batch per burst.

pub mod device_state;
pub mod journaled;

use std::collections::HashMap;
use std::sync::Arc;

use rumqttc::AsyncClient;

use crate::config::Config;
use crate::ops::metrics::Metrics;
use crate::pipeline::types::{
    qos, Admit, Arrival, ArrivalSink, CommandRoute, RecorderMsg, WindowShape,
};

use device_state::{DeviceTracker, SeqVerdict};
use journaled::JournaledSeqs;

/// Dedupes decoded events and hands them to the engine.
pub struct Admitter {
    engine: Arc<dyn ArrivalSink>,
    routes: Vec<CommandRoute>,
    /// Per route: whether its events are deduped by (device, seq).
    dedupe: Vec<bool>,
    metrics: Arc<Metrics>,
    devices: DeviceTracker,
    /// With a journal: where deferred PUBACKs are accounted (see the record stage).
    recorder: Option<flume::Sender<RecorderMsg>>,
    /// Commands of the last events journaled by an earlier run, by (device, seq), and the
    /// client to send them with again (see [`Admitter::remember`]).
    earlier_commands: HashMap<(String, u64), Vec<u8>>,
    /// Every (device, seq) of the records read from the journal at start: a redelivery of
    /// one is a duplicate even when it is older than the dedupe window.
    earlier_records: JournaledSeqs,
    resend_client: Option<AsyncClient>,
    /// Events queued since the workers were last woken (see [`Admit::wake_workers`]).
    held: usize,
}

impl Admitter {
    /// An admit stage for the config's routes and devices, handing events to `engine`.
    pub fn new(engine: Arc<dyn ArrivalSink>, config: &Config, metrics: Arc<Metrics>) -> Self {
        Admitter {
            engine,
            routes: config.routes.iter().map(CommandRoute::of).collect(),
            dedupe: config.routes.iter().map(|r| r.input.dedupes()).collect(),
            metrics,
            devices: DeviceTracker::new(config.devices.max_tracked, config.devices.dedupe_window),
            recorder: None,
            earlier_commands: HashMap::new(),
            earlier_records: JournaledSeqs::default(),
            resend_client: None,
            held: 0,
        }
    }

    /// Deferred PUBACKs are accounted by the recorder: each accepted event is announced to
    /// it, and a duplicate's PUBACK is handed to it, to go out once the original's record
    /// is durable (not at once: the original may not be journaled yet).
    pub fn defer_acks_to(&mut self, recorder: flume::Sender<RecorderMsg>) {
        self.recorder = Some(recorder);
    }

    /// Remembers an event already decided in an earlier run (from the journal), so that
    /// its redelivery is a duplicate: decided and journaled once. With its `command` (as
    /// journaled), a redelivery also sends that command again, once: the earlier run may
    /// have journaled it and died before the command left its MQTT client (a crash between
    /// the two is the only way the broker redelivers an event that is in the journal), so
    /// across a crash commands are at least once, while decisions and records stay once.
    pub fn remember(&mut self, device: &str, seq: u64, command: Option<Vec<u8>>) {
        self.devices.observe(device, seq, 0);
        self.earlier_records.insert(device, seq);
        if let Some(c) = command {
            self.earlier_commands.insert((device.to_owned(), seq), c);
        }
    }

    /// Remembers that every event of `device` up to `seq` was decided in an earlier run
    /// (from the journal's dedupe marks, for events whose records are gone): their
    /// redeliveries are duplicates.
    pub fn remember_through(&mut self, device: &str, seq: u64) {
        self.devices.seen_through(device, seq);
    }

    /// Sends remembered commands again with `client` (see [`Admitter::remember`]).
    pub fn resend_with(&mut self, client: AsyncClient) {
        self.resend_client = Some(client);
    }

    fn resend_earlier_command(&mut self, route: usize, device: &str, seq: u64) {
        if self.earlier_commands.is_empty() {
            return;
        }
        let Some(command) = self.earlier_commands.remove(&(device.to_owned(), seq)) else {
            return;
        };
        let (Some(client), Some(r)) = (&self.resend_client, self.routes.get(route)) else {
            return;
        };
        let topic = r.topic(device);
        // Never awaited here (this is the event loop's task): a full request channel loses
        // the re-send, which is logged; the event itself is still acked once journaled.
        match client.try_publish(topic, qos(r.qos_out), false, command) {
            Ok(()) => self.metrics.command_resent(),
            Err(e) => {
                tracing::warn!(%device, seq, error = %e, "could not send a journaled command again")
            }
        }
    }
}

impl Admit for Admitter {
    fn admit(&mut self, a: Arrival) -> bool {
        let route = a.route;
        let dedupe = self.dedupe.get(route).copied().unwrap_or(true);
        let verdict = if dedupe
            && a.redelivered
            && self.earlier_records.contains(&a.event.device, a.event.seq)
        {
            // Journaled by an earlier run, however far behind the device's newest: a
            // redelivery (DUP), not a device that restarted its counter.
            SeqVerdict::Duplicate
        } else if dedupe {
            self.devices
                .observe_delivery(&a.event.device, a.event.seq, a.at, a.redelivered)
        } else {
            SeqVerdict::New { gap: 0 }
        };
        match verdict {
            SeqVerdict::Duplicate => {
                self.metrics.duplicate(route);
                self.resend_earlier_command(route, &a.event.device, a.event.seq);
                // Not answered again; its PUBACK waits for the original's record.
                if let (Some(ack), Some(tx)) = (a.ack, &self.recorder) {
                    let key = (a.event.device.clone(), a.event.seq);
                    return tx.send(RecorderMsg::Duplicate { key, ack }).is_ok();
                }
                return false;
            }
            SeqVerdict::OutOfOrder => self.metrics.out_of_order(route),
            _ => {}
        }
        let deferred = a.ack.is_some();
        if let (true, Some(tx)) = (deferred, &self.recorder) {
            let _ = tx.send(RecorderMsg::Accepted((a.event.device.clone(), a.event.seq)));
        }
        if self.engine.accept_held(a) {
            self.held += 1;
            if self.held >= self.engine.max_batch() {
                Admit::wake_workers(self);
            }
        }
        deferred
    }

    fn input_shape(&self, route: usize) -> WindowShape {
        self.engine.input_shape(route)
    }

    fn wake_workers(&mut self) {
        if std::mem::take(&mut self.held) > 0 {
            self.engine.wake_workers();
        }
    }
}
