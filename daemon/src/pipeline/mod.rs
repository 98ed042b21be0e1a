//! The pipeline an event walks, one module per stage, in data order:
//!
//! ```text
//!  publish ─▶ intake ─▶ decode ─▶ admit ─▶ infer ─▶ decide ─▶ actuate ─▶ command
//!                                          (schedule)                  │
//!                                                                      ▼
//!                                                   record: journal, then PUBACK; monitor
//! ```
//!
//! - [`intake`]: the MQTT connection and its thin event loop.
//! - [`decode`]: a publish becomes a route's [`SensorEvent`](reflex_wire::SensorEvent), or
//!   is refused and counted as bad input (also a window the route's model cannot read:
//!   [`decode::shape`]); a sensor's own JSON or binary payload is mapped onto it by the
//!   route's input adapter ([`decode::adapters`]), and one-reading-per-message streams are
//!   assembled into windows ([`decode::assembly`]).
//! - [`admit`]: per-device dedupe ([`admit::device_state`]) and the hand-off to the engine.
//! - [`infer`]: the engine: worker threads running the model in batches, the deadline
//!   timer thread answering with the fallback, the model slots. The rules it applies are
//!   pure and live in [`infer::schedule`]: deadlines, admission, the EDF queue, the
//!   model-versus-fallback arbiter and the deadline timer's plan.
//! - [`decide`]: what the command says, encoded for the route.
//! - [`actuate`]: the command onto the MQTT client, from the deciding thread or a task.
//! - [`record`]: the journal hand-off; PUBACKs once the record is durable; live monitoring.
//! - [`features`]: the feature plan of each model and route version: which features a
//!   decision's record carries (attached by decide, computed by record, read by monitor).
//! - [`types`]: everything that crosses a stage boundary, and the traits and the channel
//!   message each stage hands work on through.
//! - [`routes`]: the route table every stage reads, swapped whole by a reload (one atomic
//!   load per read, never a lock); each accepted event keeps the one route version it
//!   was accepted under.
//!
//! A stage hands work on through a trait or channel of [`types`], never by naming a later
//! stage's concrete type, and no stage imports another stage: stages share only
//! [`types`], [`routes`] and the foundations below them (`config`, `ops`, `monitor`); `runner` wires
//! the stages together.
//!
//! # Contracts
//!
//! - **One command per event.** Every event the engine accepts gets exactly one command:
//!   the model's if it answers by the deadline, else the fallback's (whoever claims the
//!   event's decision first; the other answer is recorded, never actuated). Duplicates
//!   (QoS 1 redeliveries) are not answered again; refused input is not answered.
//! - **By its deadline.** The deadline is arrival + the route's budget, shortened (never
//!   lengthened) by the sensor's hint; the deadline timer answers with the fallback by
//!   deadline − safety margin whatever the model does.
//! - **Actuation never waits for the journal.** A command is published first; its record
//!   follows.
//! - **PUBACK only after the record is durable.** With a journal, a QoS 1 event (or a
//!   redelivery of it) is acknowledged to the broker only once the record of its decision
//!   is durable, so a crash loses nothing the broker believes delivered; the dedupe, seeded
//!   from the journal at start, decides and journals each redelivered event once.
//! - **After the intake stops**, publishes are neither accepted nor acked: the broker keeps
//!   them for the next session.

pub mod actuate;
pub mod admit;
pub mod decide;
pub mod decode;
pub mod features;
pub mod infer;
pub mod intake;
pub mod record;
pub mod routes;
pub mod types;
