//! Intake: the MQTT connection and its event loop, thin: it only moves packets between
//! the socket and the decode stage ([`Dispatch`]), acks what the pipeline does not defer,
//! and never awaits a publish (commands go out through the client's request channel, put
//! there by the actuate stage). It runs on a thread of its own (a single-threaded runtime,
//! see `runner`), and it hands out the publishes it read from the socket together before
//! waking the engine's workers once for them ([`Dispatch::wake_workers`]): one wake-up and
//! one batch per burst.
//!
//! The connection's invariants: TCP_NODELAY on; the request channel sized in
//! `AsyncClient::new`; subscribe again after every ConnAck without a session; the maximum
//! packet size fits the largest event, and an oversized one is bad input (counted), not a
//! reconnect loop; back off on connection errors; once the [`IntakeGate`] is closed,
//! publishes are neither accepted nor acked (the broker redelivers them to the next
//! session); after our Disconnect the socket is read until the broker closes it, so that
//! everything written before the Disconnect (commands, PUBACKs) is read by the broker and
//! not thrown away with a reset.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet, QoS, Transport,
};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, MQTT_MAX_PACKET_BYTES};
use crate::ops::metrics::Metrics;
use crate::ops::readiness::LinkState;
use crate::pipeline::routes::SharedRoutes;
use crate::pipeline::types::{ack_stub, qos, Dispatch, HeldAck, Session};

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

/// Builds the client and event loop from the config.
pub fn connect(config: &Config) -> Result<(AsyncClient, EventLoop), MqttError> {
    let m = &config.mqtt;
    let mut opts = MqttOptions::new(config.client_id(), m.host.clone(), m.port);
    opts.set_keep_alive(m.keep_alive());
    opts.set_clean_session(m.clean_session);
    // Incoming: whatever the broker delivers is read, and one above what a route can decode
    // is refused as bad input (`oversized`) and acked. A lower limit here makes rumqttc drop
    // the connection on it; the broker then delivers the same message to the persistent
    // session again, and again: one oversized publish would wedge the intake for good.
    // Outgoing: our commands, bounded by `max_packet_bytes`.
    opts.set_max_packet_size(MQTT_MAX_PACKET_BYTES, m.max_packet_bytes);
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

/// `backoff` with equal jitter, `unit` in `[0, 1)`: between half of it and all of it, so that
/// the boards that lost a broker together do not all reconnect at the same instant.
pub fn jittered(backoff: Duration, unit: f64) -> Duration {
    backoff.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// Whether the intake still takes publishes; closed once, by the shutdown. A publish is
/// dispatched and acked inside the gate, so once [`IntakeGate::close`] has returned no
/// event is accepted any more: the engine's count of events in flight can only go down,
/// and waiting for it to reach zero waits for every accepted event.
#[derive(Debug, Clone, Default)]
pub struct IntakeGate(Arc<Mutex<bool>>);

impl IntakeGate {
    /// Runs `f` (the dispatch of one publish) unless the gate is closed.
    pub fn pass<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        let closed = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (!*closed).then(f)
    }

    /// Closes the gate, after the dispatch in progress (microseconds: a decode and a
    /// queue push; nothing under the gate waits).
    pub fn close(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

/// The MQTT event loop, thin: moves packets between the socket and the decode stage `D`.
pub struct Ingest<D> {
    /// The event loop.
    pub eventloop: EventLoop,
    /// The client (for acks and subscriptions only; never awaited here).
    pub client: AsyncClient,
    /// Where publishes go.
    pub dispatcher: D,
    /// Metrics (connection errors).
    pub metrics: Arc<Metrics>,
    /// The routes whose filters are subscribed after every ConnAck (the table's current
    /// version: a reload subscribes added routes itself, and they stay subscribed).
    pub subscriptions: SharedRoutes,
    /// Backoff after connection errors.
    pub backoff: (Duration, Duration),
    /// QoS 1 events are acked only once journaled (a journal is configured).
    pub ack_after_journal: bool,
    /// The MQTT session we are in (renewed at a ConnAck without one).
    pub session: Session,
    /// PUBACKs due now that found the request channel full, oldest first: sent before
    /// anything else at the next turn (the event loop must never wait on its own channel,
    /// and a dropped PUBACK would hold one of the broker's in-flight slots). Start empty.
    pub unsent_acks: VecDeque<rumqttc::Publish>,
    /// The link's state for readiness and the watchdog (see `ops::readiness`).
    pub link: Arc<LinkState>,
}

impl<D: Dispatch> Ingest<D> {
    /// Dispatches one publish and acks it now unless the pipeline defers the ack (the
    /// recorder acks it once journaled; refused input is acked at once, a duplicate once
    /// the original is journaled).
    fn accept(&mut self, p: &rumqttc::Publish) {
        let arrival = Instant::now();
        let qos1 = p.qos != QoS::AtMostOnce;
        let defer = (qos1 && self.ack_after_journal)
            .then(|| HeldAck::of(p, self.session.current(), arrival));
        let deferred = self
            .dispatcher
            .dispatch(&p.topic, &p.payload, arrival, p.dup, defer);
        if qos1 && !deferred {
            self.unsent_acks.push_back(ack_stub(p));
            self.send_acks();
        }
    }

    /// Queues the unsent PUBACKs on the client, oldest first, until its channel is full.
    fn send_acks(&mut self) {
        while let Some(a) = self.unsent_acks.front() {
            if self.client.try_ack(a).is_err() {
                return;
            }
            self.unsent_acks.pop_front();
        }
    }

    /// Polls until the broker has closed the connection after our own Disconnect, or
    /// `hard_stop` fires. Once `gate` is closed, publishes are no longer accepted nor acked
    /// (the broker keeps them).
    pub async fn run(mut self, gate: IntakeGate, hard_stop: CancellationToken) {
        let mut backoff = self.backoff.0;
        let mut warned_at: Option<Instant> = None;
        let mut disconnecting = false;
        loop {
            self.link.turned();
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
            self.send_acks();
            // Cancellation safety: poll() keeps its state inside the event loop; dropping
            // it between packets loses nothing once we stop.
            let event = tokio::select! {
                _ = hard_stop.cancelled() => return,
                e = self.eventloop.poll() => e,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = self.backoff.0;
                    self.link.connected();
                    if !ack.session_present {
                        // Packet ids of the old session mean nothing in the new one.
                        self.session.renew();
                        self.unsent_acks.clear();
                    }
                    tracing::info!(
                        session_present = ack.session_present,
                        "connected to the broker"
                    );
                    // Without a session the broker forgot our subscriptions: subscribe again
                    // (with one it keeps them, and subscribing again is harmless).
                    let table = self.subscriptions.load();
                    for (filter, q) in table.active().map(|r| (&r.topic_filter, qos(r.qos_in))) {
                        if let Err(e) = self.client.try_subscribe(filter.clone(), q) {
                            tracing::error!(filter, error = %e, "could not subscribe");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    // Not accepted once the gate is closed, and not acked: the broker
                    // redelivers it to our next session.
                    let _ = gate.pass(|| self.accept(&p));
                }
                // Our Disconnect is written; the broker closes the connection once it has
                // read it (and everything before it). Closing first, with its publishes
                // still unread here, would reset the connection and could lose the
                // commands and PUBACKs the broker had not read yet.
                Ok(Event::Outgoing(Outgoing::Disconnect)) => disconnecting = true,
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    tracing::info!(pkid = ack.pkid, "subscribed");
                    self.link.suback(&ack.return_codes);
                }
                Ok(_) => {}
                Err(_) if disconnecting => return,
                Err(e) => {
                    self.link.disconnected();
                    self.metrics.mqtt_reconnect();
                    let wait = jittered(backoff, fastrand::f64());
                    if warned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(error = %e, retry_in = ?wait, "mqtt connection error");
                        warned_at = Some(Instant::now());
                    }
                    tokio::select! {
                        _ = hard_stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    backoff = (backoff * 2).min(self.backoff.1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jittered_backoff_stays_between_half_and_all_of_it() {
        let b = Duration::from_millis(800);
        assert_eq!(jittered(b, 0.0), Duration::from_millis(400));
        assert_eq!(jittered(b, 1.0), b);
        for i in 0..100 {
            let j = jittered(b, f64::from(i) / 100.0);
            assert!(j >= b / 2 && j <= b, "{j:?}");
        }
    }

    #[test]
    fn a_closed_gate_runs_nothing_more() {
        let gate = IntakeGate::default();
        assert_eq!(gate.pass(|| 1), Some(1));
        gate.close();
        assert_eq!(gate.pass(|| 2), None);
    }
}
