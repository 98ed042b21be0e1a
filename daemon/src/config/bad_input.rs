//! `[bad_input]`: what is kept and logged of undecodable payloads.

use serde::{Deserialize, Serialize};

use super::error::Problems;

/// `[bad_input]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BadInputConfig {
    /// Most recent undecodable payloads kept for inspection, 0..=10000. Default: `100`.
    pub keep_last: usize,
    /// At most one log line per this many seconds about bad input, >= 1. Default: `10`.
    pub log_every_s: u64,
}

impl Default for BadInputConfig {
    fn default() -> Self {
        Self {
            keep_last: 100,
            log_every_s: 10,
        }
    }
}

impl BadInputConfig {
    pub(super) fn validate(&self, p: &mut Problems) {
        p.range("bad_input.keep_last", self.keep_last, 0, 10_000);
        if self.log_every_s == 0 {
            p.add(
                "bad_input.log_every_s",
                0,
                "must be at least 1: hostile input must not flood the log",
            );
        }
    }
}
