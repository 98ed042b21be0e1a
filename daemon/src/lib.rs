//! `reflexd` as a library: the daemon's pure building blocks, unit-tested without a
//! broker, a model or a clock. `main.rs` wires them to MQTT, tract and tokio.
//!
//! - [`config`]: the TOML configuration, parsed, validated (every error at once) and built.
//! - [`schedule`]: deadlines, the earliest-deadline-first queue, admission and the
//!   model-versus-fallback arbiter that guarantees exactly one command per event.
//! - [`device_state`]: per-device sequence tracking (duplicates, reordering, gaps,
//!   restarts), bounded in memory.
//! - [`metrics`]: lock-free Prometheus counters and histograms, and the tiny
//!   `/metrics` + `/healthz` HTTP endpoint.
//! - [`systemd`]: `sd_notify` readiness and watchdog datagrams without libsystemd.
//! - [`engine`]: the real-time core: worker threads, the deadline timer, one command per event.
//! - [`ingest`]: the thin MQTT event loop, dispatch (decode, route, dedupe) and actuation.
//! - [`realtime`]: SCHED_FIFO for the worker and deadline-timer threads.
//! - [`runner`]: wiring, hot reload and the graceful shutdown.
// `unsafe` only in `realtime` (sched_setscheduler), which allows it for one call.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod bad_input;
pub mod config;
pub mod device_state;
pub mod engine;
pub mod ingest;
pub mod monitor;
pub mod ops;
pub mod realtime;
pub mod recorder;
pub mod runner;
pub mod schedule;

// The paths the event pipeline uses.
pub use ops::{metrics, systemd};
