//! `[shutdown]`: graceful stop.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[shutdown]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// On SIGTERM/SIGINT, how long in-flight events may take to be answered before the
    /// daemon exits, in ms. Default: `5000`.
    pub grace_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace_ms: 5_000 }
    }
}

impl ShutdownConfig {
    /// The grace period.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }
}
