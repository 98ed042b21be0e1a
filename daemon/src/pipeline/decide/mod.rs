//! Decide: what the command says. The engine's verdict for an event ([`Answer`]: the
//! model's prediction or the fallback's, the action, who decided and why) becomes the
//! event's one [`Command`], encoded in the route's format for the route's command topic,
//! with the [`Decided`] record the recorder journals once the command is out. Called
//! exactly once per accepted event, by the thread that claimed the event's decision.

use std::sync::Arc;

use reflex_records::StageTimings;
use reflex_wire::{Command, FORMAT_VERSION};

use crate::config::Format;
use crate::ops::metrics::Metrics;
use crate::pipeline::types::{
    micros, unix_now_us, Answer, Clock, CommandRoute, CommandSink, Decided, DecisionSink, Outbound,
};

/// Builds each event's command and hands it to the actuate stage.
pub struct Decider {
    routes: Vec<CommandRoute>,
    clock: Clock,
    metrics: Arc<Metrics>,
    out: Arc<dyn CommandSink>,
}

impl Decider {
    /// Commands for `routes` (by route index), handed to `out`.
    pub fn new(
        routes: Vec<CommandRoute>,
        clock: Clock,
        metrics: Arc<Metrics>,
        out: Arc<dyn CommandSink>,
    ) -> Self {
        Decider {
            routes,
            clock,
            metrics,
            out,
        }
    }
}

/// `cmd` in `format`; None (logged) if it does not encode.
fn encode(cmd: &Command, format: Format) -> Option<Vec<u8>> {
    match format {
        Format::Json => Some(reflex_wire::json::encode_command(cmd)),
        Format::Postcard => {
            // Cannot fail: the device id was validated when the event decoded, and every
            // other field is bounded so that a command fits MAX_COMMAND_BYTES (wire's
            // round-trip property test). Were it to, answering in another format than the
            // route's would be worse than saying so loudly.
            let mut buf = [0u8; reflex_wire::MAX_COMMAND_BYTES];
            match cmd.encode(&mut buf) {
                Ok(b) => Some(b.to_vec()),
                Err(e) => {
                    tracing::error!(device = %cmd.device, seq = cmd.seq, error = %e, "bug: a command did not encode; not sent");
                    None
                }
            }
        }
    }
}

impl DecisionSink for Decider {
    fn decided(&self, a: Answer<'_>) -> bool {
        let route = &self.routes[a.route];
        let now = self.clock.now();
        let cmd = Command {
            version: FORMAT_VERSION,
            device: a.event.device.clone(),
            seq: a.event.seq,
            action: a.action,
            class: u8::try_from(a.class).unwrap_or(u8::MAX),
            source: a.source,
            model: a.model,
            decided_at_us: unix_now_us(),
            latency_us: micros(now.saturating_sub(a.arrival)),
        };
        let Some(payload) = encode(&cmd, route.format) else {
            return false;
        };
        self.metrics.decided(a.route, a.source);
        let (logits, queue_ns, infer_ns) = match a.run {
            Some(r) => (r.logits, r.queue_ns, r.infer_ns),
            None => (Vec::new(), 0, 0),
        };
        let decided = Box::new(Decided {
            route: a.route,
            event: a.event.clone(),
            payload: a.payload.clone(),
            arrival_unix_us: a.arrival_unix_us,
            command: payload.clone(),
            class: a.class,
            logits,
            source: a.source,
            model: cmd.model.clone(),
            timings: StageTimings {
                decode_us: micros(a.decode_ns),
                queue_us: micros(queue_ns),
                infer_us: micros(infer_ns),
                publish_us: 0,
                end_to_end_us: 0,
                budget_us: micros(a.deadline.saturating_sub(a.arrival)),
            },
            miss: a.miss,
            ack: a.ack.cloned(),
        });
        self.out.send(Outbound {
            topic: route.topic(&a.event.device),
            payload,
            qos: route.qos_out,
            decided: now,
            arrival: a.arrival,
            record: decided,
        });
        true
    }
}
