//! Decode: a publish becomes a [`SensorEvent`] of one route, or is refused as bad input.
//!
//! The route is the first whose topic filter matches the publish's topic; its format
//! (postcard or JSON) decodes the payload. When the route's filter has exactly one `+`
//! level, that level of the topic names the device, and it must be the payload's device:
//! otherwise the event is refused (`device_mismatch`), since its command would go to one
//! device on the word of another. The event's window must then fit the input of the model
//! its route uses now ([`shape::fit`]: exactly as many channels and samples per channel):
//! otherwise it is refused (`shape_mismatch`, the detail naming both shapes), since the
//! model cannot read it and no answer to it, not even the fallback's, is worth actuating.
//!
//! Refused input (no route, a payload that does not decode, a device mismatch, a shape
//! mismatch) is counted by reason (`reflexd_bad_input_total`), kept in the bounded
//! [`BadInputLog`] served at `GET /bad-input`, logged at most once per
//! `bad_input.log_every_s`, and never reaches the engine: it gets no command. Its PUBACK
//! (QoS 1) goes out at once ([`Dispatch::dispatch`] returns false), so the broker does not
//! redeliver it forever; nothing of it is journaled. A decoded event goes on to the admit
//! stage as an [`Arrival`], stamped with its arrival and decode time.
//!
//! The model's shape is asked of the next stage ([`Admit::input_shape`]) per event: the
//! engine keeps it in one atomic word per model, which a reload swaps before the workers
//! get the new model, so the check follows reloads and costs one atomic load, never a
//! lock. A reload that changes a model's shape while an event checked against the old
//! shape is queued leaves that one event to the engine's own guard (answered by the
//! fallback as `model_error`, see the infer stage's worker).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use reflex_wire::{DecodeError, SensorEvent};

use crate::config::{Config, Format};
use crate::ops::metrics::{Metrics, Stage};
use crate::pipeline::routes::{shared, RouteTable, SharedRoutes};
use crate::pipeline::types::{unix_now_us, Admit, Arrival, Clock, Dispatch, HeldAck, WindowShape};

pub use crate::ops::bad_input::BadInputLog;

pub mod shape;

/// Routes and decodes publishes, then hands them to the admit stage `A`.
pub struct Decoder<A> {
    /// The routes matched, read once per publish (a reload swaps them).
    routes: SharedRoutes,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// The last refused payloads (bounded), also served at `GET /bad-input`.
    pub bad: BadInputLog,
    last_log: Option<Instant>,
    suppressed: u64,
    next: A,
}

impl<A: Admit> Decoder<A> {
    /// A decoder for the config's routes, handing decoded events to `next`.
    pub fn new(
        config: &Config,
        clock: Clock,
        metrics: Arc<Metrics>,
        bad: BadInputLog,
        next: A,
    ) -> Self {
        Decoder {
            // Validated: every route's model exists.
            routes: shared(RouteTable::of(config).unwrap_or_default()),
            clock,
            metrics,
            bad,
            last_log: None,
            suppressed: 0,
            next,
        }
    }

    /// Reads `routes` (shared with the other stages and the reloader) from now on.
    pub fn with_routes(mut self, routes: SharedRoutes) -> Self {
        self.routes = routes;
        self
    }

    fn refuse(&mut self, topic: &str, payload: &[u8], reason: &str, detail: &str) {
        self.metrics.bad_input(reason);
        self.bad.push(topic, reason, detail, payload);
        // Logged once per interval, with how many were not logged in between.
        let every = self.routes.load().bad_input_log_every;
        if self.last_log.is_none_or(|t| t.elapsed() >= every) {
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
}

pub use crate::pipeline::routes::device_level;

impl<A: Admit> Dispatch for Decoder<A> {
    fn dispatch(
        &mut self,
        topic: &str,
        payload: &Bytes,
        arrival: Instant,
        redelivered: bool,
        ack: Option<HeldAck>,
    ) -> bool {
        let arrival_ns = self.clock.at(arrival);
        let unix_us = unix_now_us();
        let table = self.routes.load();
        let Some((route, format, device_level)) = table
            .matching(topic)
            .map(|r| (r.slot, r.format(), r.device_level))
        else {
            self.refuse(
                topic,
                payload,
                "unknown_route",
                "no route matches the topic",
            );
            return false;
        };
        drop(table);
        let decoded: Result<SensorEvent, DecodeError> = match format {
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
        if let Some(named) = device_level.and_then(|l| topic.split('/').nth(l)) {
            if named != event.device.as_str() {
                let detail = format!(
                    "the topic names device {named:?}, the payload {:?}",
                    event.device.as_str()
                );
                self.refuse(topic, payload, "device_mismatch", &detail);
                return false;
            }
        }
        let model = self.next.input_shape(route);
        if let Err(e) = shape::fit(WindowShape::of(&event.window), model) {
            self.refuse(topic, payload, e.reason(), &e.to_string());
            return false;
        }
        let decode_ns = self.clock.now().saturating_sub(arrival_ns);
        self.metrics.observe(Stage::Decode, decode_ns);
        self.next.admit(Arrival {
            route,
            event,
            payload: payload.clone(),
            at: arrival_ns,
            unix_us,
            decode_ns,
            ack,
            redelivered,
        })
    }

    fn wake_workers(&mut self) {
        self.next.wake_workers();
    }
}

#[cfg(test)]
mod tests {
    use super::device_level;

    #[test]
    fn the_only_plus_level_of_a_filter_names_the_device() {
        assert_eq!(device_level("sensors/+/vibration"), Some(1));
        assert_eq!(device_level("+/temp"), Some(0));
        assert_eq!(device_level("plant/line/+"), Some(2));
    }

    #[test]
    fn a_filter_with_no_or_several_plus_levels_names_no_device() {
        assert_eq!(device_level("sensors/dev-1/vibration"), None);
        assert_eq!(device_level("sensors/+/+/vibration"), None);
        assert_eq!(device_level("sensors/#"), None);
        assert_eq!(device_level("sensors/a+b/x"), None);
    }
}
