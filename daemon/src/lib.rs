//! `reflexd` as a library: the daemon's building blocks, the pure ones unit-tested without
//! a broker, a model or a clock. `main.rs` is the command line.
//!
//! - [`pipeline`]: the stages an event walks, in data order (intake → decode → admit →
//!   infer → decide → actuate → record; `infer` applies the pure `schedule` rules), and the
//!   types that cross between them.
//! - [`runner`]: wires the stages and the services together and runs them.
//! - [`service`]: what runs beside the pipeline: model loading and calibration, hot reload,
//!   the systemd watchdog, the journal's opening and uploads, and the graceful shutdown.
//! - [`config`]: the TOML configuration, parsed, validated (every error at once) and built.
//! - [`monitor`]: live drift and SLO monitoring.
//! - [`inspect`]: `reflexd journal tail|export|clear-dead-letter`, reading a stopped
//!   daemon's journal.
//! - [`ops`]: what the daemon tells the outside: lock-free Prometheus counters and
//!   histograms with the `/metrics`, `/healthz` and `/bad-input` endpoint, and systemd's
//!   `sd_notify`.
//!
//! Imports run one way: `config`, `ops` and `inspect` import no other module of the daemon,
//! `monitor` only those two, a pipeline stage only `pipeline::types` and those three, and
//! `service` and `runner` sit on top.
// `unsafe` only where a module allows it: `realtime` (sched_setscheduler), the engine's
// hand-off (its futex lock) and the journal's start (mallopt), one call each.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod inspect;
pub mod monitor;
pub mod ops;
pub mod pipeline;
pub mod runner;
pub mod service;
