//! Operating the daemon: what it tells the outside about itself.
//!
//! - [`metrics`]: lock-free Prometheus counters and histograms, their text exposition, and
//!   the tiny `/metrics` + `/healthz` HTTP endpoint.
//! - [`readiness`]: the MQTT link's state, what `/readyz` answers, and when the intake
//!   loop counts as wedged.
//! - [`systemd`]: `sd_notify` readiness and watchdog datagrams without libsystemd.
//!
//! Nothing here knows the monitor or the configuration: other components hand their
//! figures in ([`metrics::RenderSeries`]).

pub mod bad_input;
pub mod metrics;
pub mod readiness;
pub mod systemd;
