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
//! # Input adapters and window assembly
//!
//! A route with `[routes.input] kind = "json" | "binary"` reads foreign payloads through
//! its [`adapters::Mapping`] instead of the wire's decoders (`kind = "reflex"`, the
//! default, is the path above, unchanged). The device comes from the topic (the filter's
//! only `+`) or a payload field (then, with a `+` in the filter, both must agree:
//! `device_mismatch`); the sequence number from a field, or else reflexd numbers the
//! device's events itself ([`adapters::Numberer`]; the admit stage does not dedupe such a
//! route); the timestamp from a field, or else the arrival time. With
//! `[routes.input.assemble]` each message is fed to the route's [`assembly::Assembler`]:
//! a message that completes no window (still filling, a stale window, a duplicate
//! reading) is acked at once and not answered; one that completes a window becomes the
//! event, stamped with that message's arrival (its deadline counts from it) and carrying
//! that message as its payload. Its PUBACK goes out at once like refused input's: the
//! readings buffered in memory (at most one window per device) are acknowledged before
//! they are durable, and a crash loses them; only scored windows are journaled. Holding
//! their PUBACKs instead cannot work: the broker sends a client at most
//! `max_inflight_messages` unacknowledged QoS 1 messages (20 in mosquitto's stock
//! configuration), fewer than the readings of one window, so the window would never fill.
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

use reflex_wire::{validate_device_id, DecodeError, DeviceId, SensorEvent};

use crate::config::{Config, Format};
use crate::ops::metrics::{AssemblyEvent, Metrics, SparkplugEvent, Stage};
use crate::pipeline::routes::{shared, LiveRoute, RouteTable, SharedRoutes};
use crate::pipeline::types::{unix_now_us, Admit, Arrival, Clock, Dispatch, HeldAck, WindowShape};

pub use crate::ops::bad_input::BadInputLog;

pub mod adapters;
pub mod assembly;
pub mod shape;

use adapters::sparkplug::{Births, Outcome};
use adapters::{Mapping, Numberer};
use assembly::{Assembler, Fed};

/// A route's input adapter and its per-device state.
struct RouteInput {
    mapping: Mapping,
    numberer: Numberer,
    assembler: Option<Assembler>,
    /// `kind = "sparkplug_b"`: the births seen (aliases by device).
    sparkplug: Option<Births>,
}

/// Why an adapted payload gives no event: refused (reason, detail), or not (yet) a window.
enum NoEvent {
    Refused(&'static str, String),
    NotAWindow,
}

/// Routes and decodes publishes, then hands them to the admit stage `A`.
pub struct Decoder<A> {
    /// The routes matched, read once per publish (a reload swaps them).
    routes: SharedRoutes,
    /// By route slot: its input adapter and per-device state, built when the slot's first
    /// publish arrives (None: reflex's own event, `kind = "reflex"`). An input adapter is
    /// fixed for a slot's life: changing a route's `[routes.input]` needs a restart.
    inputs: Vec<Option<RouteInput>>,
    /// The slots whose entry in `inputs` is built.
    inputs_built: Vec<bool>,
    /// `devices.max_tracked`: the bound of each sequence-less route's numbering.
    max_tracked: usize,
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
            inputs: Vec::new(),
            inputs_built: Vec::new(),
            max_tracked: config.devices.max_tracked,
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

impl<A: Admit> Decoder<A> {
    /// Builds `route`'s input adapter if its slot has none yet.
    fn build_input(&mut self, route: &LiveRoute) {
        let slot = route.slot;
        if self.inputs_built.get(slot).copied().unwrap_or(false) {
            return;
        }
        if self.inputs.len() <= slot {
            self.inputs.resize_with(slot + 1, || None);
            self.inputs_built.resize(slot + 1, false);
        }
        let input = &route.input;
        self.inputs[slot] = Mapping::of(input).map(|mapping| RouteInput {
            mapping,
            numberer: Numberer::new(self.max_tracked),
            assembler: input
                .assemble
                .as_ref()
                .map(|a| Assembler::new(assembly::Limits::of(a))),
            sparkplug: (input.kind == crate::config::input::InputKind::SparkplugB)
                .then(|| Births::new(self.max_tracked)),
        });
        self.inputs_built[slot] = true;
    }

    /// The event of an adapted payload on `route` (which has an input adapter).
    fn adapt(
        &mut self,
        route: usize,
        device_level: Option<usize>,
        topic: &str,
        payload: &[u8],
        unix_us: u64,
    ) -> Result<SensorEvent, NoEvent> {
        let model = self.next.input_shape(route);
        let Some(input) = self.inputs[route].as_mut() else {
            return Err(NoEvent::NotAWindow);
        };
        // A Sparkplug B topic names the device in its own way (the adapter reads it).
        let named = device_level
            .filter(|_| input.sparkplug.is_none())
            .and_then(|l| topic.split('/').nth(l));
        let read = match input.sparkplug.as_mut() {
            None => input.mapping.read(payload).map(Outcome::Data),
            Some(births) => {
                let before = births.evictions;
                let read = births.read(&input.mapping, topic, payload);
                let evicted = births.evictions - before;
                if evicted > 0 {
                    self.metrics
                        .sparkplug(route, SparkplugEvent::AliasEviction, evicted);
                }
                read
            }
        };
        let reading = match read.map_err(|e| NoEvent::Refused(e.reason(), e.to_string()))? {
            Outcome::Data(reading) => reading,
            Outcome::Control {
                message_type,
                forgotten,
            } => {
                if let Some(assembler) = input.assembler.as_mut() {
                    for device in &forgotten {
                        assembler.forget(device);
                    }
                }
                self.metrics
                    .sparkplug(route, SparkplugEvent::of(message_type), 1);
                return Err(NoEvent::NotAWindow);
            }
        };
        let device: DeviceId = match (&reading.device, named) {
            (Some(from_payload), Some(named)) if named != from_payload.as_str() => {
                return Err(NoEvent::Refused(
                    "device_mismatch",
                    format!(
                        "the topic names device {named:?}, the payload {:?}",
                        from_payload.as_str()
                    ),
                ))
            }
            (Some(from_payload), _) => from_payload.clone(),
            (None, Some(named)) => {
                validate_device_id(named).map_err(|e| {
                    NoEvent::Refused(e.reason(), format!("topic device {named:?}: {e}"))
                })?;
                DeviceId::try_from(named).map_err(|_| {
                    NoEvent::Refused("bad_device_id", format!("topic device {named:?}"))
                })?
            }
            (None, None) => {
                return Err(NoEvent::Refused(
                    "bad_device_id",
                    "the topic names no device and the payload none".into(),
                ))
            }
        };
        let ts = reading.timestamp_us.unwrap_or(unix_us);
        let Some(assembler) = input.assembler.as_mut() else {
            let seq = match reading.seq {
                Some(s) => s,
                None => input.numberer.next(&device, unix_us),
            };
            return reading
                .into_event(device, seq, ts, &input.mapping)
                .map_err(|e| NoEvent::Refused(e.reason(), e.to_string()));
        };
        let before = assembler.counters;
        let fed = assembler.feed(
            &device,
            reading.seq,
            ts,
            reading.channels,
            &reading.counts,
            model,
        );
        let after = assembler.counters;
        for (event, n) in [
            (AssemblyEvent::Eviction, after.evictions - before.evictions),
            (
                AssemblyEvent::GapReset,
                after.gap_resets - before.gap_resets,
            ),
            (AssemblyEvent::Stale, after.stale - before.stale),
            (
                AssemblyEvent::DuplicateReading,
                after.duplicates - before.duplicates,
            ),
        ] {
            if n > 0 {
                self.metrics.assembly(route, event, n);
            }
        }
        match fed.map_err(|e| NoEvent::Refused(e.reason(), e.to_string()))? {
            Fed::Window { counts, shape } => {
                let seq = match reading.seq {
                    Some(s) => s,
                    None => input.numberer.next(&device, unix_us),
                };
                adapters::event_of(
                    device,
                    seq,
                    ts,
                    shape.channels,
                    shape.samples,
                    &counts,
                    reading.temperature_centi_c,
                    &input.mapping,
                )
                .map_err(|e| NoEvent::Refused(e.reason(), e.to_string()))
            }
            Fed::Pending | Fed::Stale | Fed::Duplicate => Err(NoEvent::NotAWindow),
        }
    }
}

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
        let Some(route) = table.matching(topic).cloned() else {
            self.refuse(
                topic,
                payload,
                "unknown_route",
                "no route matches the topic",
            );
            return false;
        };
        self.build_input(&route);
        let (route, format, device_level) = (route.slot, route.format(), route.device_level);
        drop(table);
        let event = if self.inputs[route].is_some() {
            match self.adapt(route, device_level, topic, payload, unix_us) {
                Ok(e) => e,
                Err(NoEvent::Refused(reason, detail)) => {
                    self.refuse(topic, payload, reason, &detail);
                    return false;
                }
                Err(NoEvent::NotAWindow) => return false,
            }
        } else {
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
            event
        };
        let model = self.next.input_shape(route);
        if let Err(e) = shape::fit(WindowShape::of(&event.window), model) {
            self.refuse(topic, payload, e.reason(), &e.to_string());
            return false;
        }
        let decode_ns = self.clock.now().saturating_sub(arrival_ns);
        self.metrics.observe(Stage::Decode, decode_ns);
        self.next.admit(Arrival {
            route,
            event: Arc::new(event),
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
