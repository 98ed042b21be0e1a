//! `[metrics]`: the Prometheus endpoint.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::error::Problems;

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics. Default: `true`.
    pub enabled: bool,
    /// Socket address to serve on, `ip:port`. Default: `"127.0.0.1:9464"` (loopback
    /// only); any address is accepted, but exposing metrics beyond the host must be
    /// chosen explicitly here.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl MetricsConfig {
    /// The listen address. Only fails on a config that did not pass validation.
    pub fn listen_addr(&self) -> Result<SocketAddr, std::net::AddrParseError> {
        self.listen.parse()
    }

    pub(super) fn validate(&self, p: &mut Problems) {
        if let Err(e) = self.listen_addr() {
            p.add_str(
                "metrics.listen",
                &self.listen,
                format!("not an ip:port socket address ({e})"),
            );
        }
    }
}
