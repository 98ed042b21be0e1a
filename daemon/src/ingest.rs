//! MQTT ingest and actuation: owns the rumqttc event loop (thin: it only moves packets),
//! routes each publish to the engine after decoding and per-device dedupe. Commands are
//! put on the client's request channel by the engine threads that decide them
//! ([`CommandPublisher`], never blocking), or by a separate task when that channel is full
//! ([`Actuator`]) — the poller never awaits a publish. The event loop runs on a thread of its
//! own (a single-threaded runtime, see `runner`), and it queues the publishes it read from
//! the socket together before waking the engine's worker once for them
//! ([`Dispatcher::wake_workers`]): one wake-up and one batch per burst.
//!
//! Lessons from this machine, each a real failure seen: TCP_NODELAY on; the request channel
//! sized in `AsyncClient::new`; subscribe again after every ConnAck without a session;
//! max packet size raised to fit the largest event, an oversized one is bad input (counted)
//! and not a reconnect loop; back off on connection errors.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet, QoS, Transport,
};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use reflex_wire::{DecodeError, SensorEvent};

use crate::bad_input::BadInputLog;
use crate::config::{Config, Format};
use crate::device_state::{DeviceTracker, SeqVerdict};
use crate::engine::{Arrival, Engine, Outbound};
use crate::metrics::Stage;
use crate::recorder::RecorderMsg;

/// Errors at the MQTT boundary.
#[derive(Debug, Error)]
pub enum MqttError {
    /// A TLS file could not be read or parsed.
    #[error("tls file {path}: {reason}")]
    Tls {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The password file could not be read.
    #[error("mqtt credentials: {0}")]
    Credentials(String),
}

/// The rumqttc QoS of a config value (0, or 1 for anything else: validated to 0..=1).
pub fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// Builds the client and event loop from the config.
pub fn connect(config: &Config) -> Result<(AsyncClient, EventLoop), MqttError> {
    let m = &config.mqtt;
    let mut opts = MqttOptions::new(config.client_id(), m.host.clone(), m.port);
    opts.set_keep_alive(m.keep_alive());
    opts.set_clean_session(m.clean_session);
    opts.set_max_packet_size(m.max_packet_bytes, m.max_packet_bytes);
    opts.set_manual_acks(true);
    opts.set_inflight(1000);
    if let Some(user) = &m.username {
        let pass = m
            .resolve_password()
            .map_err(|e| MqttError::Credentials(e.to_string()))?
            .map(|s| s.expose().to_string())
            .unwrap_or_default();
        opts.set_credentials(user.clone(), pass);
    }
    if m.tls.enabled {
        opts.set_transport(tls_transport(config)?);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, m.request_channel_capacity);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(5);
    eventloop.set_network_options(net);
    Ok((client, eventloop))
}

fn read_file(path: &std::path::Path) -> Result<Vec<u8>, MqttError> {
    std::fs::read(path).map_err(|e| MqttError::Tls {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn tls_transport(config: &Config) -> Result<Transport, MqttError> {
    let tls = &config.mqtt.tls;
    let ca_path = tls.ca_file.clone().unwrap_or_default();
    let ca = read_file(&ca_path)?;
    let client_auth = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(c), Some(k)) => Some((read_file(c)?, read_file(k)?)),
        _ => None,
    };
    Ok(Transport::tls(ca, client_auth, None))
}

/// Decodes, routes and dedupes publishes, then hands them to the engine.
pub struct Dispatcher {
    engine: Arc<Engine>,
    filters: Vec<(String, Format)>,
    devices: DeviceTracker,
    /// The last refused payloads (bounded), also served at `GET /bad-input`.
    pub bad: BadInputLog,
    log_every: Duration,
    last_log: Option<Instant>,
    suppressed: u64,
    /// With a journal: where deferred PUBACKs are accounted (see [`crate::recorder`]).
    recorder: Option<flume::Sender<RecorderMsg>>,
    /// Commands of the last events journaled by an earlier run, by (device, seq), and the
    /// client to send them with again (see [`Dispatcher::remember`]).
    earlier_commands: HashMap<(String, u64), Vec<u8>>,
    resend_client: Option<AsyncClient>,
    /// Events queued since the workers were last woken (see [`Dispatcher::wake_workers`]).
    held: usize,
}

impl Dispatcher {
    /// A dispatcher for the config's routes.
    pub fn new(engine: Arc<Engine>, config: &Config, bad: BadInputLog) -> Self {
        Dispatcher {
            engine,
            filters: config
                .routes
                .iter()
                .map(|r| (r.topic_filter.clone(), r.format))
                .collect(),
            devices: DeviceTracker::new(config.devices.max_tracked, config.devices.dedupe_window),
            bad,
            log_every: Duration::from_secs(config.bad_input.log_every_s),
            last_log: None,
            suppressed: 0,
            recorder: None,
            earlier_commands: HashMap::new(),
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

    fn refuse(&mut self, topic: &str, payload: &[u8], reason: &str, detail: &str) {
        self.engine.metrics.bad_input(reason);
        self.bad.push(topic, reason, detail, payload);
        // Logged once per interval, with how many were not logged in between.
        if self.last_log.is_none_or(|t| t.elapsed() >= self.log_every) {
            tracing::warn!(
                topic,
                reason,
                detail,
                suppressed = self.suppressed,
                "refused bad input"
            );
            self.last_log = Some(Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
    }

    /// Handles one publish that arrived at `arrival`. `ack`: the PUBACK to defer until the
    /// decision is journaled. Returns true when the event was accepted with that ack (the
    /// engine now owns it); false when the caller must ack now (refused, duplicate, or no
    /// deferral asked).
    ///
    /// An accepted event is queued without waking a worker; [`Dispatcher::wake_workers`]
    /// does that, once the caller has dispatched every publish it read together, or this
    /// does once a whole batch (`scheduler.max_batch`) is waiting: a large burst (after a
    /// stall of the broker or the link) then keeps the worker busy while the rest of it is
    /// decoded, instead of all of it waiting for its last event's decode.
    pub fn dispatch(
        &mut self,
        topic: &str,
        payload: &bytes::Bytes,
        arrival: Instant,
        ack: Option<rumqttc::Publish>,
    ) -> bool {
        let arrival_ns = self.engine.clock.at(arrival);
        let unix_us = crate::monitor::unix_now_us();
        let Some(route) = self
            .filters
            .iter()
            .position(|(f, _)| rumqttc::matches(topic, f))
        else {
            self.refuse(
                topic,
                payload,
                "unknown_route",
                "no route matches the topic",
            );
            return false;
        };
        let decoded: Result<SensorEvent, DecodeError> = match self.filters[route].1 {
            Format::Postcard => SensorEvent::decode(payload),
            Format::Json => reflex_wire::json::decode_event(payload),
        };
        let event = match decoded {
            Ok(e) => e,
            Err(e) => {
                let reason = e.reason();
                self.refuse(topic, payload, reason, &e.to_string());
                return false;
            }
        };
        let decode_ns = self.engine.clock.now().saturating_sub(arrival_ns);
        self.engine.metrics.observe(Stage::Decode, decode_ns);
        match self.devices.observe(&event.device, event.seq, arrival_ns) {
            SeqVerdict::Duplicate => {
                self.engine.metrics.duplicate(route);
                self.resend_earlier_command(route, &event.device, event.seq);
                // Not answered again; its PUBACK waits for the original's record.
                if let (Some(ack), Some(tx)) = (ack, &self.recorder) {
                    let key = (event.device.clone(), event.seq);
                    return tx.send(RecorderMsg::Duplicate { key, ack }).is_ok();
                }
                return false;
            }
            SeqVerdict::OutOfOrder => self.engine.metrics.out_of_order(route),
            _ => {}
        }
        let deferred = ack.is_some();
        if let (true, Some(tx)) = (deferred, &self.recorder) {
            let _ = tx.send(RecorderMsg::Accepted((event.device.clone(), event.seq)));
        }
        let queued = self.engine.accept_held(Arrival {
            route,
            event,
            payload: payload.clone(),
            at: arrival_ns,
            unix_us,
            decode_ns,
            ack,
        });
        if queued {
            self.held += 1;
            if self.held >= self.engine.max_batch() {
                self.wake_workers();
            }
        }
        deferred
    }

    /// Wakes the engine's workers if events were queued since the last call.
    pub fn wake_workers(&mut self) {
        if std::mem::take(&mut self.held) > 0 {
            self.engine.wake_workers();
        }
    }

    /// Remembers an event already decided in an earlier run (from the journal), so that
    /// its redelivery is a duplicate: decided and journaled once. With its `command` (as
    /// journaled), a redelivery also sends that command again, once: the earlier run may
    /// have journaled it and died before the command left its MQTT client (a crash between
    /// the two is the only way the broker redelivers an event that is in the journal), so
    /// across a crash commands are at least once, while decisions and records stay once.
    pub fn remember(&mut self, device: &str, seq: u64, command: Option<Vec<u8>>) {
        self.devices.observe(device, seq, 0);
        if let Some(c) = command {
            self.earlier_commands.insert((device.to_owned(), seq), c);
        }
    }

    /// Sends remembered commands again with `client` (see [`Dispatcher::remember`]).
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
        let (Some(client), Some(r)) = (&self.resend_client, self.engine.routes.get(route)) else {
            return;
        };
        let topic = r.command_topic.replace("{device}", device);
        // Never awaited here (this is the event loop's task): a full request channel loses
        // the re-send, which is logged; the event itself is still acked once journaled.
        match client.try_publish(topic, qos(r.qos_out), false, command) {
            Ok(()) => self.engine.metrics.command_resent(),
            Err(e) => {
                tracing::warn!(%device, seq, error = %e, "could not send a journaled command again")
            }
        }
    }
}

/// The MQTT event loop, thin: moves packets between the socket and the dispatcher.
pub struct Ingest {
    /// The event loop.
    pub eventloop: EventLoop,
    /// The client (for acks and subscriptions only; never awaited here).
    pub client: AsyncClient,
    /// Where accepted publishes go.
    pub dispatcher: Dispatcher,
    /// (filter, qos) to subscribe after every ConnAck.
    pub subscriptions: Vec<(String, QoS)>,
    /// Backoff after connection errors.
    pub backoff: (Duration, Duration),
    /// QoS 1 events are acked only once journaled (a journal is configured).
    pub ack_after_journal: bool,
}

impl Ingest {
    /// Polls until our own Disconnect has gone out or `hard_stop` fires. After
    /// `stop_intake`, publishes are no longer accepted nor acked (the broker keeps them).
    pub async fn run(mut self, stop_intake: CancellationToken, hard_stop: CancellationToken) {
        let mut backoff = self.backoff.0;
        let mut warned_at: Option<Instant> = None;
        loop {
            // The event loop reads every packet the socket holds in one go and hands them
            // out one per poll: the workers wake once the publishes read together are all
            // queued (microseconds: a decode each), before a poll that may wait, and take
            // them as one batch.
            let more_read = self
                .eventloop
                .state
                .events
                .iter()
                .any(|e| matches!(e, Event::Incoming(Packet::Publish(_))));
            if !more_read {
                self.dispatcher.wake_workers();
            }
            // Cancellation safety: poll() keeps its state inside the event loop; dropping
            // it between packets loses nothing once we stop.
            let event = tokio::select! {
                _ = hard_stop.cancelled() => return,
                e = self.eventloop.poll() => e,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = self.backoff.0;
                    tracing::info!(
                        session_present = ack.session_present,
                        "connected to the broker"
                    );
                    // Without a session the broker forgot our subscriptions: subscribe again
                    // (with one it keeps them, and subscribing again is harmless).
                    for (filter, q) in &self.subscriptions {
                        if let Err(e) = self.client.try_subscribe(filter.clone(), *q) {
                            tracing::error!(filter, error = %e, "could not subscribe");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if stop_intake.is_cancelled() {
                        continue; // not acked: the broker redelivers it to our next session
                    }
                    let arrival = Instant::now();
                    let qos1 = p.qos != QoS::AtMostOnce;
                    let defer =
                        (qos1 && self.ack_after_journal).then(|| crate::recorder::ack_stub(&p));
                    let deferred = self
                        .dispatcher
                        .dispatch(&p.topic, &p.payload, arrival, defer);
                    // Acked now unless the recorder acks it once journaled (refused input
                    // is acked at once; a duplicate once the original is journaled).
                    if qos1 && !deferred {
                        if let Err(e) = self.client.try_ack(&p) {
                            tracing::warn!(error = %e, "could not queue the puback");
                        }
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => {
                    self.dispatcher.engine.metrics.mqtt_reconnect();
                    if warned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(error = %e, retry_in = ?backoff, "mqtt connection error");
                        warned_at = Some(Instant::now());
                    }
                    tokio::select! {
                        _ = hard_stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.backoff.1);
                }
            }
        }
    }
}

/// Puts commands on the MQTT client's request channel and accounts for each one out (the
/// publish-stage and end-to-end latencies, the decision handed to the recorder). The
/// engine's deciding threads (workers, timer) use [`CommandPublisher::try_publish`], no hop
/// through the async runtime and never blocking: a full channel hands the command back,
/// and it goes through the [`Actuator`], which waits for room.
#[derive(Clone)]
pub struct CommandPublisher {
    /// The client.
    pub client: AsyncClient,
    /// The engine's clock, for the latencies.
    pub clock: crate::engine::Clock,
    /// Metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where published decisions go to be journaled.
    pub recorder: flume::Sender<RecorderMsg>,
}

impl CommandPublisher {
    /// Publishes `out` now, or gives it back when the request channel is full.
    pub fn try_publish(&self, out: Outbound) -> Result<(), Outbound> {
        match self
            .client
            .try_publish(out.topic.clone(), qos(out.qos), false, out.payload.clone())
        {
            Ok(()) => {
                self.published(out);
                Ok(())
            }
            Err(_) => Err(out),
        }
    }

    /// Publishes `out`, waiting for room on the request channel.
    async fn publish(&self, out: Outbound) {
        match self
            .client
            .publish(out.topic.clone(), qos(out.qos), false, out.payload.clone())
            .await
        {
            Ok(()) => self.published(out),
            Err(e) => tracing::error!(error = %e, "could not queue a command"),
        }
    }

    fn published(&self, out: Outbound) {
        let Outbound {
            decided,
            arrival,
            mut record,
            ..
        } = out;
        let now = self.clock.now();
        let publish_ns = now.saturating_sub(decided);
        let end_to_end_ns = now.saturating_sub(arrival);
        self.metrics.observe(Stage::Publish, publish_ns);
        self.metrics.observe(Stage::EndToEnd, end_to_end_ns);
        self.metrics.commands_published();
        let us = crate::recorder::micros;
        record.timings.publish_us = us(publish_ns);
        record.timings.end_to_end_us = us(end_to_end_ns);
        // The recorder lives until after the engine and the actuator: a send error means it
        // already stopped, which only happens past shutdown.
        let _ = self.recorder.send(RecorderMsg::Decided(record));
    }
}

/// Publishes the commands the engine could not publish directly (request channel full, or
/// earlier commands still here), waiting for room, until every sender is gone.
pub struct Actuator {
    /// Commands to publish.
    pub rx: tokio::sync::mpsc::UnboundedReceiver<Outbound>,
    /// Commands sent here and not yet published (the engine's count; see
    /// [`Engine::actuator_backlog`]).
    pub backlog: Arc<std::sync::atomic::AtomicU64>,
    /// Publishes them.
    pub publisher: CommandPublisher,
}

impl Actuator {
    /// Publishes until `done` fires (every engine thread has ended), then publishes what
    /// is left in the channel and returns.
    pub async fn run(mut self, done: CancellationToken) {
        loop {
            // Cancellation safety: recv() loses nothing when the other arm wins; the
            // remaining commands are drained below.
            let out = tokio::select! {
                biased;
                out = self.rx.recv() => out,
                _ = done.cancelled() => break,
            };
            match out {
                Some(out) => self.publish(out).await,
                None => return,
            }
        }
        while let Ok(out) = self.rx.try_recv() {
            self.publish(out).await;
        }
    }

    async fn publish(&self, out: Outbound) {
        self.publisher.publish(out).await;
        // Published or not, it is no longer waiting here.
        self.backlog
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}
