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
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod device_state;
pub mod metrics;
pub mod schedule;
pub mod systemd;
