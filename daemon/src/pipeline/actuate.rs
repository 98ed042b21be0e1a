//! Actuate: commands go onto the MQTT client's request channel, in the order they were
//! decided, and each one out is accounted (the publish-stage and end-to-end latencies) and
//! handed to the recorder ([`RecorderMsg::Decided`]) — actuation never waits for the
//! journal.
//!
//! [`Actuation`] is what the decide stage hands commands to. Once MQTT is up, it
//! publishes straight from the deciding thread (a worker or the deadline timer) through
//! [`CommandPublisher::try_publish`], never blocking; a full request channel hands the
//! command back and it goes to the [`Actuator`] task, which waits for room. While the
//! actuator holds commands, later ones go to it too, so commands keep their order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use rumqttc::AsyncClient;
use tokio_util::sync::CancellationToken;

use crate::ops::metrics::{Metrics, Stage};
use crate::pipeline::types::{micros, qos, Clock, CommandSink, Outbound, RecorderMsg};

/// Hands commands to the MQTT client directly or through the [`Actuator`].
pub struct Actuation {
    out: tokio::sync::mpsc::UnboundedSender<Outbound>,
    /// Commands handed to the actuator task and not yet published by it.
    with_actuator: Arc<AtomicU64>,
    /// Set once MQTT is up: publishes straight from the deciding thread.
    direct: OnceLock<CommandPublisher>,
}

impl Actuation {
    /// Commands go to `out` (the [`Actuator`]'s channel) until
    /// [`Actuation::publish_directly`].
    pub fn new(out: tokio::sync::mpsc::UnboundedSender<Outbound>) -> Self {
        Actuation {
            out,
            with_actuator: Arc::new(AtomicU64::new(0)),
            direct: OnceLock::new(),
        }
    }

    /// Publishes commands from the thread that decides them, from now on, through
    /// `direct` (its client's request channel), instead of through the actuator task: one
    /// thread hop less per event. The actuator still takes a command when the request
    /// channel is full or while it holds earlier ones (so commands keep their order).
    pub fn publish_directly(&self, direct: CommandPublisher) {
        let _ = self.direct.set(direct);
    }

    /// The count of commands the actuator holds, which it decrements as it publishes.
    pub fn actuator_backlog(&self) -> Arc<AtomicU64> {
        self.with_actuator.clone()
    }
}

impl CommandSink for Actuation {
    fn send(&self, out: Outbound) {
        let out = match self.direct.get() {
            // Straight to the MQTT client, unless the actuator holds earlier commands.
            Some(direct) if self.with_actuator.load(Ordering::Acquire) == 0 => {
                direct.try_publish(out).err()
            }
            _ => Some(out),
        };
        if let Some(out) = out {
            self.with_actuator.fetch_add(1, Ordering::AcqRel);
            // The actuator lives until every engine thread has ended; a send error means
            // we are past shutdown, where nothing is accepted any more.
            let _ = self.out.send(out);
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
    pub clock: Clock,
    /// Metrics.
    pub metrics: Arc<Metrics>,
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
        let us = micros;
        record.timings.publish_us = us(publish_ns);
        record.timings.end_to_end_us = us(end_to_end_ns);
        // The recorder lives until after the engine and the actuator: a send error means it
        // already stopped, which only happens past shutdown.
        let _ = self.recorder.send(RecorderMsg::Decided(record));
    }
}

/// Publishes the commands [`Actuation`] could not publish directly (request channel full, or
/// earlier commands still here), waiting for room, until every sender is gone.
pub struct Actuator {
    /// Commands to publish.
    pub rx: tokio::sync::mpsc::UnboundedReceiver<Outbound>,
    /// Commands sent here and not yet published (see [`Actuation::actuator_backlog`]).
    pub backlog: Arc<AtomicU64>,
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
        self.backlog.fetch_sub(1, Ordering::AcqRel);
    }
}
