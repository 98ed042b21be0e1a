//! What crosses a stage boundary: the values one stage hands the next, the traits and the
//! channel message through which it hands them, and the small conversions every stage
//! shares (time, wire and journal units).
//!
//! A stage names only this module, never another stage's concrete type: each hand-off is
//! one of the traits below (or the recorder's channel of [`RecorderMsg`]), implemented by
//! the next stage and wired together by `runner`.
//!
//! | hand-off           | value                     | through          |
//! |--------------------|---------------------------|------------------|
//! | intake → decode    | a publish (topic, payload) | [`Dispatch`]    |
//! | decode → admit     | [`Arrival`]               | [`Admit`]        |
//! | admit → infer      | [`Arrival`]               | [`ArrivalSink`]  |
//! | infer → decide     | [`Answer`]                | [`DecisionSink`] |
//! | decide → actuate   | [`Outbound`]              | [`CommandSink`]  |
//! | actuate → record   | [`Decided`] (boxed)       | [`RecorderMsg`] on a flume channel |
//! | admit → record     | [`EventKey`], PUBACKs     | [`RecorderMsg`] on the same channel |
//! | infer → decode     | a route's [`WindowShape`] | [`Admit::input_shape`], [`ArrivalSink::input_shape`] |
//!
//! The one value that flows backwards is the window shape a route's model reads: the
//! decode stage refuses a window that does not fit it before the event reaches the
//! engine. The engine keeps it per model in an [`InputShape`], one atomic word that a
//! reload swaps, so the question costs the decode stage one atomic load and never a lock.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use reflex_records::StageTimings;
use reflex_wire::{Action, DecisionSource, DeviceId, ModelRef, SensorEvent, Window};
use rumqttc::{Publish, QoS};

use crate::config::{Format, RouteConfig};

/// Monotonic time in nanoseconds, passed in by the caller (never read here).
pub type Nanos = u64;

/// A duration in nanoseconds, saturating at `u64::MAX` (about 584 years).
pub fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub use crate::ops::metrics::MissCause;

/// Monotonic nanoseconds since the pipeline started: every stage reads the same one.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Clock {
            start: Instant::now(),
        }
    }

    /// Nanoseconds since start.
    pub fn now(&self) -> Nanos {
        self.start.elapsed().as_nanos() as Nanos
    }

    /// The clock reading of `instant`.
    pub fn at(&self, instant: Instant) -> Nanos {
        instant.saturating_duration_since(self.start).as_nanos() as Nanos
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A decoded event on its way to the engine.
#[derive(Debug)]
pub struct Arrival {
    /// Route index.
    pub route: usize,
    /// The decoded event, shared from here to the journal: a full-capacity event is 16 KiB
    /// inline (8 × 1024 samples), so it is allocated once and never copied on its way.
    pub event: Arc<SensorEvent>,
    /// Its payload as received.
    pub payload: Bytes,
    /// Arrival (pipeline clock).
    pub at: Nanos,
    /// Arrival, µs since the Unix epoch.
    pub unix_us: u64,
    /// Time spent decoding, ns.
    pub decode_ns: Nanos,
    /// PUBACK to send once journaled, if deferred.
    pub ack: Option<HeldAck>,
    /// The broker sent it before (MQTT's DUP flag): a redelivery, never a device restart.
    pub redelivered: bool,
}

/// An event's identity for the dedupe: device and its sequence number.
pub type EventKey = (DeviceId, u64);

/// What a model run produced, for the journal.
#[derive(Debug)]
pub struct ModelRun {
    /// The model's raw output row: logits or probabilities, one per class, or the one
    /// score.
    pub logits: Vec<f32>,
    /// The model's confidence in its class, by its output kind: the softmax of logits,
    /// a probability as given, 1 for a score (its thresholds decide); `None` when not
    /// finite.
    pub confidence: Option<f32>,
    /// Time in the queue, ns.
    pub queue_ns: Nanos,
    /// Inference time, ns.
    pub infer_ns: Nanos,
}

/// Who answered an accepted event, and with what: the engine's verdict, handed to the
/// decide stage, which turns it into the one command of the event.
#[derive(Debug)]
pub struct Answer<'a> {
    /// Route index.
    pub route: usize,
    /// Where the command goes and how it is encoded: the route version the event was
    /// accepted under.
    pub to: &'a CommandRoute,
    /// The event.
    pub event: &'a Arc<SensorEvent>,
    /// The payload exactly as received (for the journal).
    pub payload: &'a Bytes,
    /// Arrival (pipeline clock).
    pub arrival: Nanos,
    /// Arrival, µs since the Unix epoch (for the journal).
    pub arrival_unix_us: u64,
    /// Time spent decoding, ns.
    pub decode_ns: Nanos,
    /// The event's deadline (pipeline clock).
    pub deadline: Nanos,
    /// The PUBACK to send once the decision is journaled (None: already acked).
    pub ack: Option<&'a HeldAck>,
    /// What the device is told to do.
    pub action: Action,
    /// The class acted on (`usize::MAX`: none, the safe action).
    pub class: usize,
    /// Who decided.
    pub source: DecisionSource,
    /// Which model (or fallback) decided.
    pub model: ModelRef,
    /// The model run, when the model decided.
    pub run: Option<ModelRun>,
    /// Why the model did not answer, if it did not.
    pub miss: Option<MissCause>,
}

/// One decided (and published) event, on its way into the journal.
#[derive(Debug)]
pub struct Decided {
    /// Route index.
    pub route: usize,
    /// The event as decoded (shared with its job, not copied).
    pub event: Arc<SensorEvent>,
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
    pub ack: Option<HeldAck>,
    /// What decided and why, on a route with a decision policy (journaled with the
    /// record); `None` on a route without one.
    pub decision: Option<reflex_records::DecisionTrace>,
    /// How the record gets its features: the plan of the route version the event was
    /// accepted under (`features::RoutePlans`).
    pub features: Arc<crate::pipeline::features::FeaturePlan>,
}

/// A command ready to publish.
#[derive(Debug)]
pub struct Outbound {
    /// Topic.
    pub topic: String,
    /// Encoded command.
    pub payload: Vec<u8>,
    /// QoS 0 or 1.
    pub qos: u8,
    /// When it was decided (pipeline clock).
    pub decided: Nanos,
    /// When its event arrived (pipeline clock).
    pub arrival: Nanos,
    /// The decision, for the recorder once the command is out.
    pub record: Box<Decided>,
}

/// What the recorder thread receives.
#[derive(Debug)]
pub enum RecorderMsg {
    /// A QoS 1 event whose PUBACK waits for its record entered the engine (sent by the
    /// admit stage before the engine sees it, so before its [`RecorderMsg::Decided`]).
    Accepted(EventKey),
    /// A published decision.
    Decided(Box<Decided>),
    /// A redelivery of an event already answered in this run: not answered again; its
    /// PUBACK goes out once the original's record is durable.
    Duplicate {
        /// The event.
        key: EventKey,
        /// Its PUBACK.
        ack: HeldAck,
    },
    /// The journal is durable through this sequence (from the group-commit thread).
    Durable(u64),
    /// The journal was reopened after an I/O error (from the group-commit thread, before
    /// any later [`RecorderMsg::Durable`]): see the record stage's `Ledger::reopened`.
    Reopened {
        /// Durable through here.
        kept_through: u64,
        /// Appends below this (and above `kept_through`) were lost.
        lost_before: u64,
    },
    /// Everything has been handed over: make it durable, ack it, and return.
    Stop,
}

/// Where a route's commands go and how they are encoded.
#[derive(Debug, Clone)]
pub struct CommandRoute {
    /// Command topic template with `{device}`.
    pub command_topic: String,
    /// Payload format of events and commands.
    pub format: Format,
    /// QoS of commands: 0 or 1.
    pub qos_out: u8,
}

impl CommandRoute {
    /// The command side of a configured route.
    pub fn of(route: &RouteConfig) -> Self {
        CommandRoute {
            command_topic: route.command_topic.clone(),
            format: route.format,
            qos_out: route.qos_out,
        }
    }

    /// The command topic of `device`.
    pub fn topic(&self, device: &str) -> String {
        self.command_topic.replace("{device}", device)
    }
}

/// intake → decode: the publishes the MQTT event loop reads.
pub trait Dispatch {
    /// Handles one publish that arrived at `arrival` (`redelivered`: its DUP flag).
    /// `ack`: the PUBACK to defer until the decision is journaled. True when the event was
    /// accepted with that ack (the pipeline now owns it); false when the caller must ack
    /// now.
    fn dispatch(
        &mut self,
        topic: &str,
        payload: &Bytes,
        arrival: Instant,
        redelivered: bool,
        ack: Option<HeldAck>,
    ) -> bool;

    /// Every publish read together has been dispatched: wake the workers for them.
    fn wake_workers(&mut self);
}

/// decode → admit: decoded events.
pub trait Admit {
    /// Dedupes `a` and hands it on. Same return as [`Dispatch::dispatch`].
    fn admit(&mut self, a: Arrival) -> bool;

    /// The window shape the model of `route` reads now (see [`ArrivalSink::input_shape`]).
    fn input_shape(&self, route: usize) -> WindowShape;

    /// See [`Dispatch::wake_workers`].
    fn wake_workers(&mut self);
}

/// admit → infer: admitted events, each of which gets exactly one command.
pub trait ArrivalSink: Send + Sync {
    /// Accepts `a` without waking the workers; true when it was queued for them (false:
    /// already answered by the fallback).
    fn accept_held(&self, a: Arrival) -> bool;

    /// Wakes the workers for the events accepted held.
    fn wake_workers(&self);

    /// Most events a worker runs at once.
    fn max_batch(&self) -> usize;

    /// The window shape the model of `route` reads now: the current model's, swapped by a
    /// reload before the workers get the new model. Never blocks (one atomic load).
    fn input_shape(&self, route: usize) -> WindowShape;
}

/// infer → decide: called exactly once per accepted event, by the thread that claimed it.
pub trait DecisionSink: Send + Sync {
    /// Turns `answer` into the event's command and hands it on; false only when the
    /// command could not be built (a bug, logged), true when it went on.
    fn decided(&self, answer: Answer<'_>) -> bool;
}

/// decide → actuate: commands to publish, in the order they are handed over.
pub trait CommandSink: Send + Sync {
    /// Publishes `out` (or queues it for publishing); never blocks.
    fn send(&self, out: Outbound);
}

/// The shape of a window: channels × samples per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowShape {
    /// Channels (e.g. 3 vibration axes).
    pub channels: usize,
    /// Samples per channel.
    pub samples: usize,
}

impl WindowShape {
    /// `channels` × `samples`.
    pub const fn new(channels: usize, samples: usize) -> Self {
        WindowShape { channels, samples }
    }

    /// The shape a decoded window declares (the wire checked that its samples match it).
    pub fn of(window: &Window) -> Self {
        WindowShape::new(
            usize::from(window.channels),
            usize::from(window.samples_per_channel),
        )
    }

    /// The window shape `model` reads ([`WindowShape::of_input`] of its input dimensions
    /// without the batch and the channels its manifest's `monitoring.window_stats`
    /// declares).
    pub fn of_model(model: &reflex_models::Model) -> Self {
        let declared = model
            .manifest()
            .format2
            .as_ref()
            .and_then(|f| f.monitoring.window_stats.as_ref())
            .map_or(0, |w| w.channels.len());
        WindowShape::of_input(model.input_dims(), declared)
    }

    /// The window shape of a model input of `dims` (without the batch dimension), whose
    /// manifest declares `declared_channels` monitoring channels (0: none):
    /// - rank 2, `[C, S]` (every format-1 model, `[3, 64]`): C channels × S samples;
    /// - rank 1, `[L]`: `declared_channels` × `L / declared_channels` when channels are
    ///   declared and divide `L`, else 1 × L (one channel, the whole row);
    /// - any other rank: 1 × the product of the dimensions (one channel), which a
    ///   window fits only when its values, channel-major, are exactly the input's.
    ///
    /// Pure; the decode stage refuses a window of any other shape (`shape_mismatch`).
    pub fn of_input(dims: &[usize], declared_channels: usize) -> Self {
        match *dims {
            [c, s] => WindowShape::new(c, s),
            [l] if declared_channels > 0 && l % declared_channels == 0 => {
                WindowShape::new(declared_channels, l / declared_channels)
            }
            _ => WindowShape::new(1, dims.iter().product()),
        }
    }

    /// Values in such a window, `channels × samples` (saturating).
    pub fn len(&self) -> usize {
        self.channels.saturating_mul(self.samples)
    }

    /// True when the window holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Both dimensions in one word (each saturated to `u32::MAX`: far beyond any window
    /// the wire carries, so a saturated shape fits no event).
    fn pack(self) -> u64 {
        let d = |n: usize| u64::from(u32::try_from(n).unwrap_or(u32::MAX));
        (d(self.channels) << 32) | d(self.samples)
    }

    fn unpack(word: u64) -> Self {
        WindowShape::new((word >> 32) as usize, (word & u64::from(u32::MAX)) as usize)
    }
}

/// `channels × samples`, e.g. `3 × 64`.
impl fmt::Display for WindowShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} × {}", self.channels, self.samples)
    }
}

/// The window shape a model reads, swapped whole when a reload replaces the model: one
/// atomic word, read on every event by the decode stage without a lock (a load on the
/// MQTT thread's real-time path, which a reload never blocks).
#[derive(Debug)]
pub struct InputShape(AtomicU64);

impl InputShape {
    /// Starts as `shape`.
    pub fn new(shape: WindowShape) -> Self {
        InputShape(AtomicU64::new(shape.pack()))
    }

    /// The shape now.
    pub fn get(&self) -> WindowShape {
        WindowShape::unpack(self.0.load(Ordering::Acquire))
    }

    /// Replaces the shape (a reloaded model).
    pub fn set(&self, shape: WindowShape) {
        self.0.store(shape.pack(), Ordering::Release);
    }
}

/// Nanoseconds as whole microseconds for a journal timing (saturating).
pub fn micros(ns: u64) -> u32 {
    u32::try_from(ns / 1000).unwrap_or(u32::MAX)
}

/// The event's window in g, channel-major, as the models expect.
pub fn window_g(event: &SensorEvent) -> Vec<f32> {
    event.window.values().collect()
}

/// Microseconds since the Unix epoch, from the system clock (0 before 1970).
pub fn unix_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A PUBACK held until its event is journaled: the publish's packet id and QoS (all the
/// client needs of it) and the MQTT session it was received in ([`Session`]).
#[derive(Debug, Clone)]
pub struct HeldAck {
    /// A stub of the publish: only its packet id and QoS are set.
    pub publish: Publish,
    /// The session it was received in.
    pub session: u64,
    /// When it was received (the PUBACK's wait is observed as the `ack` stage).
    pub received: Instant,
}

impl HeldAck {
    /// The held PUBACK of `publish`, received in `session` at `received`.
    pub fn of(publish: &Publish, session: u64, received: Instant) -> Self {
        HeldAck {
            publish: ack_stub(publish),
            session,
            received,
        }
    }
}

/// The PUBACK stub for `publish`: only its packet id and QoS matter to the client.
pub fn ack_stub(publish: &Publish) -> Publish {
    let mut stub = Publish::new("", publish.qos, Bytes::new());
    stub.pkid = publish.pkid;
    stub
}

/// The MQTT session the intake is in: a number that changes whenever the broker says it
/// kept no session for us (a ConnAck without `session_present`: a first connection, a
/// broker that lost its state, an expired session). A packet id only means something in
/// the session it was received in (a new session numbers messages from 1 again), so a
/// PUBACK held across a change of session is never sent: it could acknowledge another,
/// unjournaled message.
#[derive(Debug, Clone, Default)]
pub struct Session(Arc<AtomicU64>);

impl Session {
    /// The current session.
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// The broker kept no session: a new one starts.
    pub fn renew(&self) -> u64 {
        self.0.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// The rumqttc QoS of a config value (0, or 1 for anything else: validated to 0..=1).
pub fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_channels_by_samples_input_is_read_as_its_two_dimensions() {
        assert_eq!(WindowShape::of_input(&[3, 64], 0), WindowShape::new(3, 64));
        // Declared channels do not override an explicit channel dimension.
        assert_eq!(WindowShape::of_input(&[3, 64], 2), WindowShape::new(3, 64));
    }

    #[test]
    fn a_flat_input_is_split_into_the_declared_channels_when_they_divide_it() {
        // The motor example: [N, 128], channels current and temperature.
        assert_eq!(WindowShape::of_input(&[128], 2), WindowShape::new(2, 64));
        assert_eq!(WindowShape::of_input(&[128], 3), WindowShape::new(1, 128));
        assert_eq!(WindowShape::of_input(&[128], 0), WindowShape::new(1, 128));
    }

    #[test]
    fn an_input_of_another_rank_is_one_channel_of_all_its_values() {
        assert_eq!(
            WindowShape::of_input(&[2, 4, 8], 2),
            WindowShape::new(1, 64)
        );
    }

    proptest! {
        #[test]
        fn the_window_shape_always_holds_exactly_the_input_values(
            dims in prop::collection::vec(1usize..64, 1..4),
            declared in 0usize..9,
        ) {
            let shape = WindowShape::of_input(&dims, declared);
            prop_assert_eq!(shape.len(), dims.iter().product::<usize>());
            if dims.len() == 1 && declared > 0 && dims[0] % declared == 0 {
                prop_assert_eq!(shape.channels, declared);
            }
        }
    }
}
