//! The systemd watchdog: a WATCHDOG=1 ping every period systemd asks for, but only while
//! the real-time loop turns (a worker's or the deadline timer's heartbeat is younger than
//! two periods): a wedged engine is not pinged, so systemd restarts it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ops::systemd::Notifier;
use crate::pipeline::infer::Engine;

/// Pings `notifier` every `period` while `engine` turns, until `stop`.
pub async fn run(
    notifier: Notifier,
    period: Duration,
    engine: Arc<Engine>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Only a turning real-time loop earns a ping: a wedged one gets restarted.
        let age = engine
            .clock
            .now()
            .saturating_sub(engine.heartbeat.load(Ordering::Relaxed));
        if age < 2 * period.as_nanos() as u64 {
            let _ = notifier.watchdog();
        }
    }
}
