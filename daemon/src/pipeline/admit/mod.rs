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
use crate::pipeline::routes::{shared, RouteTable, SharedRoutes};
use crate::pipeline::types::{qos, Admit, Arrival, ArrivalSink, RecorderMsg, WindowShape};

use device_state::{DeviceTracker, SeqVerdict};
use journaled::JournaledSeqs;

/// Dedupes decoded events and hands them to the engine.
pub struct Admitter {
    engine: Arc<dyn ArrivalSink>,
    /// Where a re-sent command goes (the route's current version).
    routes: SharedRoutes,
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
            // Validated: every route's model exists.
            routes: shared(RouteTable::of(config).unwrap_or_default()),
            metrics,
            devices: DeviceTracker::new(config.devices.max_tracked, config.devices.dedupe_window),
            recorder: None,
            earlier_commands: HashMap::new(),
            earlier_records: JournaledSeqs::default(),
            resend_client: None,
            held: 0,
        }
    }

    /// Reads `routes` (shared with the other stages and the reloader) from now on.
    pub fn with_routes(mut self, routes: SharedRoutes) -> Self {
        self.routes = routes;
        self
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
        let table = self.routes.load();
        let (Some(client), Some(r)) = (&self.resend_client, table.slot(route)) else {
            return;
        };
        let r = &r.command;
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
        let dedupe = self.routes.load().slot(route).is_none_or(|r| r.dedupes);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use reflex_wire::{DeviceId, EventKind, SensorEvent, Window};

    use crate::pipeline::types::Arrival;

    /// Records the sequence numbers handed to the engine (the events answered).
    #[derive(Default)]
    struct Answered(Mutex<Vec<u64>>);

    impl ArrivalSink for Answered {
        fn accept_held(&self, a: Arrival) -> bool {
            self.0.lock().unwrap().push(a.event.seq);
            true
        }
        fn wake_workers(&self) {}
        fn max_batch(&self) -> usize {
            1
        }
        fn input_shape(&self, _route: usize) -> WindowShape {
            WindowShape::new(1, 1)
        }
    }

    fn config() -> Config {
        crate::config::parse(
            r#"
            [[routes]]
            name = "vibration"
            topic_filter = "sensors/+/vibration"
            model = "edge"
            deadline_ms = 5.0
            command_topic = "actuators/{device}/cmd"

            [models.edge]
            manifest = "models/edge.manifest.json"
            fallback_manifest = "models/fallback.manifest.json"
            "#,
        )
        .unwrap()
    }

    fn arrival(seq: u64, redelivered: bool) -> Arrival {
        Arrival {
            route: 0,
            event: std::sync::Arc::new(SensorEvent {
                version: reflex_wire::EVENT_FORMAT_V1,
                device: DeviceId::try_from("pump-1").unwrap(),
                seq,
                timestamp_us: seq,
                kind: EventKind::Periodic,
                window: Window {
                    channels: 1,
                    samples_per_channel: 1,
                    sample_rate_hz: 1,
                    scale: 1.0,
                    samples: heapless::Vec::new(),
                },
                temperature_centi_c: 0,
                deadline_hint_us: None,
            }),
            payload: bytes::Bytes::new(),
            at: 0,
            unix_us: 0,
            decode_ns: 0,
            ack: None,
            redelivered,
        }
    }

    #[test]
    fn a_redelivery_of_a_record_read_at_start_is_a_duplicate_however_old() {
        let config = config();
        let window = config.devices.dedupe_window;
        let answered = Arc::new(Answered::default());
        let metrics = Arc::new(Metrics::new(&["vibration".to_owned()]));
        let mut admit = Admitter::new(answered.clone(), &config, metrics);
        // An earlier run journaled 1..=5000 of one device (five windows' worth).
        let last = 5 * window;
        for seq in 1..=last {
            admit.remember("pump-1", seq, None);
        }
        // Redeliveries (DUP) far behind the newest, and within the window: none answered.
        for seq in [2, 10, last - 2 * window, last - window, last] {
            admit.admit(arrival(seq, true));
        }
        assert!(answered.0.lock().unwrap().is_empty());
        // A redelivery of an event the journal never had is answered, and so is the next
        // new event.
        admit.admit(arrival(last + 1, true));
        admit.admit(arrival(last + 2, false));
        assert_eq!(*answered.0.lock().unwrap(), [last + 1, last + 2]);
    }

    #[test]
    fn a_device_that_restarts_its_counter_is_answered_though_its_old_records_are_read() {
        let config = config();
        let answered = Arc::new(Answered::default());
        let metrics = Arc::new(Metrics::new(&["vibration".to_owned()]));
        let mut admit = Admitter::new(answered.clone(), &config, metrics);
        for seq in 1..=3000 {
            admit.remember("pump-1", seq, None);
        }
        // Not a redelivery (no DUP): the device counts from 1 again.
        admit.admit(arrival(1, false));
        admit.admit(arrival(2, false));
        assert_eq!(*answered.0.lock().unwrap(), [1, 2]);
    }
}
