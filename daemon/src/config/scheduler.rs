//! `[scheduler]`: inference workers, the deadline queue and real-time priority.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::Problems;

/// Highest priority `scheduler.realtime_priority` accepts (the kernel's SCHED_FIFO range
/// is 1..=99; above 50 would compete with kernel threads such as interrupt handlers).
pub const MAX_REALTIME_PRIORITY: u8 = 50;

/// `[scheduler]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Inference worker threads, 1..=cores. Default: `1`.
    pub workers: usize,
    /// Most events waiting for a worker, 1..=1000000; beyond, events get the fallback at
    /// once (cause `queue_full`). Default: `4096`.
    pub queue_capacity: usize,
    /// The fallback is issued this long before the deadline so it gets out on time, in µs;
    /// below every route's budget. Default: `200`.
    pub safety_margin_us: u64,
    /// SCHED_FIFO priority of the worker and deadline-timer threads, 0..=50; `0` keeps
    /// them on the normal scheduler. Needs CAP_SYS_NICE or `LimitRTPRIO=` (the systemd
    /// unit sets it); when the kernel refuses, reflexd logs it once and serves at normal
    /// priority. Default: `10`.
    pub realtime_priority: u8,
    /// Most queued events a worker runs through the model in one call, 1..=64. Events that
    /// arrive together (a fleet sampling on the same tick) then wait for one run instead of
    /// one run each; a batch only grows while its calibrated run time still meets the
    /// earliest deadline in it, and each batch size is planned, checked to answer every
    /// event exactly as alone, and calibrated at load. `1` runs events one at a time.
    /// Default: `8`.
    pub max_batch: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            queue_capacity: 4_096,
            safety_margin_us: 200,
            realtime_priority: 10,
            max_batch: 8,
        }
    }
}

impl SchedulerConfig {
    /// The safety margin.
    pub fn safety_margin(&self) -> Duration {
        Duration::from_micros(self.safety_margin_us)
    }
}

impl SchedulerConfig {
    /// Checks the values against a machine with `cores` cores.
    pub(super) fn validate(&self, cores: usize, p: &mut Problems) {
        p.range("scheduler.workers", self.workers, 1, cores.max(1));
        p.range(
            "scheduler.queue_capacity",
            self.queue_capacity,
            1,
            1_000_000,
        );
        p.range("scheduler.max_batch", self.max_batch, 1, 64);
        p.range(
            "scheduler.realtime_priority",
            self.realtime_priority,
            0,
            MAX_REALTIME_PRIORITY,
        );
    }
}
