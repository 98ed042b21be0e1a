//! `[devices]`: per-device sequence tracking.

use serde::{Deserialize, Serialize};

use super::error::Problems;

/// Largest accepted `devices.dedupe_window`, in sequence numbers (8 KiB of bitmap per
/// device).
pub const MAX_DEDUPE_WINDOW: u64 = 65_536;

/// `[devices]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// Most devices whose sequence numbers are tracked, 1..=10000000; the least recently
    /// seen is forgotten first. Default: `10000`.
    pub max_tracked: usize,
    /// Sequence numbers remembered per device for duplicate detection, 1..=65536 (one bit
    /// each). Default: `1024`.
    pub dedupe_window: u64,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        Self {
            max_tracked: 10_000,
            dedupe_window: 1_024,
        }
    }
}

impl DevicesConfig {
    pub(super) fn validate(&self, p: &mut Problems) {
        p.range("devices.max_tracked", self.max_tracked, 1, 10_000_000);
        p.range(
            "devices.dedupe_window",
            self.dedupe_window,
            1,
            MAX_DEDUPE_WINDOW,
        );
    }
}
