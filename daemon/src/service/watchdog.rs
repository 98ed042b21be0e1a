//! The systemd watchdog: a WATCHDOG=1 ping every period systemd asks for, but only while
//! both loops that must never stop turn:
//! - the real-time loop: a worker's or the deadline timer's heartbeat is younger than two
//!   periods;
//! - the MQTT intake loop: not wedged, i.e. it turned within its wedge limit
//!   ([`crate::ops::readiness::wedge_limit`]: twice the longer of the keep-alive and the
//!   connection timeout plus the longest reconnect backoff, plus a margin).
//!
//! A wedged loop is not pinged, so systemd restarts reflexd. An intake that cannot reach
//! the broker (a reconnect loop) still turns on every failed attempt: it is pinged (a
//! restart would not bring the broker back), though not ready (`/readyz`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ops::readiness::Readiness;
use crate::ops::systemd::Notifier;
use crate::pipeline::infer::Engine;

/// Whether to ping now: the engine's heartbeat is `engine_age_ns` old (younger than two
/// `period`s: it turns) and the intake is not wedged.
pub fn should_ping(engine_age_ns: u64, period: Duration, intake_wedged: bool) -> bool {
    let engine_turns = u128::from(engine_age_ns) < 2 * period.as_nanos();
    engine_turns && !intake_wedged
}

/// Pings `notifier` every `period` while `engine` turns and the intake of `readiness` is
/// not wedged, until `stop`.
pub async fn run(
    notifier: Notifier,
    period: Duration,
    engine: Arc<Engine>,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let age = engine
            .clock
            .now()
            .saturating_sub(engine.heartbeat.load(Ordering::Relaxed));
        if should_ping(age, period, readiness.intake_wedged()) {
            let _ = notifier.watchdog();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(5);

    #[test]
    fn a_turning_engine_and_a_turning_intake_are_pinged() {
        assert!(should_ping(1_000_000_000, PERIOD, false));
    }

    #[test]
    fn a_stale_engine_heartbeat_is_not_pinged() {
        let two_periods = 2 * PERIOD.as_nanos() as u64;
        assert!(should_ping(two_periods - 1, PERIOD, false));
        assert!(!should_ping(two_periods, PERIOD, false));
    }

    #[test]
    fn a_wedged_intake_is_not_pinged_even_with_a_turning_engine() {
        assert!(!should_ping(0, PERIOD, true));
    }
}
