//! `reflexd` as a library: the daemon's building blocks, the pure ones unit-tested without
//! a broker, a model or a clock. `main.rs` is the command line.
//!
//! - [`pipeline`]: the stages an event walks, in data order (intake → decode → admit →
//!   infer → decide → actuate → record, with the pure `schedule` rules), and the types that
//!   cross between them.
//! - [`runner`]: wires the stages and the services together and runs them.
//! - [`service`]: what runs beside the pipeline: model loading and calibration, hot reload,
//!   the systemd watchdog, the journal's opening and uploads, and the graceful shutdown.
//! - [`config`]: the TOML configuration, parsed, validated (every error at once) and built.
//! - [`metrics`]: lock-free Prometheus counters and histograms, and the tiny
//!   `/metrics` + `/healthz` HTTP endpoint.
//! - [`monitor`]: live drift and SLO monitoring.
//! - [`systemd`]: `sd_notify` readiness and watchdog datagrams without libsystemd.
// `unsafe` only in `realtime` (sched_setscheduler), which allows it for one call.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod monitor;
pub mod ops;
pub mod pipeline;
pub mod runner;
pub mod service;
