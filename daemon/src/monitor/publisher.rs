//! [`AlertPublisher`]: the task that closes due windows, keeps closed windows for upload,
//! and logs and publishes each alert event once.

use std::sync::Arc;
use std::time::Duration;

use reflex_drift::monitor::AlertEvent;
use rumqttc::AsyncClient;
use tokio_util::sync::CancellationToken;

use super::alert::{statistic_label, subject_label, AlertMessage, AlertState};
use super::{unix_now_us, LiveMonitor};

/// The pipeline stage that closes due windows every second, then logs and publishes each
/// alert event once: `warn` on raise, `info` on clear, JSON on the alert topic.
///
/// It never polls the MQTT event loop (ingest does), so it may await a publish; each is
/// bounded by `publish_timeout` so a full request channel delays alerts, never the task's
/// shutdown by more than that per alert.
#[derive(Clone)]
pub struct AlertPublisher {
    monitor: Arc<LiveMonitor>,
    /// Where closed windows go to ride with the uploads: the journal when an uploader runs
    /// ([`reflex_journal::store::Journal::append_window`]); `None` drops them.
    pub windows_to: Option<Arc<reflex_journal::store::Journal>>,
    /// How often due windows are closed. Default: 1 s.
    pub tick_every: Duration,
    /// Longest wait for room in the client's request channel, per alert. Default: 1 s.
    pub publish_timeout: Duration,
}

impl AlertPublisher {
    /// A publisher of `monitor`'s alerts with the default periods.
    pub fn new(monitor: Arc<LiveMonitor>) -> AlertPublisher {
        AlertPublisher {
            monitor,
            windows_to: None,
            tick_every: Duration::from_secs(1),
            publish_timeout: Duration::from_secs(1),
        }
    }

    /// Ticks until `shutdown` is cancelled, then ticks once more (alerts of windows already
    /// closed are not lost) and returns. The open window is not closed at shutdown: a part
    /// window would be judged as a whole one. Run it before the MQTT Disconnect is queued,
    /// and await it, so its last alerts go out.
    pub async fn run(self, client: AsyncClient, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(self.tick_every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Cancellation safety: `Interval::tick` and `cancelled` are both cancel safe;
            // nothing is lost when either arm loses.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = interval.tick() => {}
            }
            self.tick_and_publish(&client).await;
        }
        self.tick_and_publish(&client).await;
    }

    async fn tick_and_publish(&self, client: &AsyncClient) {
        let monitor = Arc::clone(&self.monitor);
        // Closing a window computes drift (milliseconds): off the async worker.
        let now = unix_now_us();
        let journal = self.windows_to.clone();
        let events = match tokio::task::spawn_blocking(move || {
            let events = monitor.tick(now);
            let closed = monitor.take_closed_windows();
            if let Some(journal) = journal {
                for window in &closed {
                    // At most one line per closed window (one per route per window_s).
                    if let Err(e) = journal.append_window(&window.encode()) {
                        monitor.window_not_kept();
                        tracing::error!(route = %window.route, start_ms = window.start_ms,
                            error = %e, "could not keep a closed window for upload");
                    }
                }
            }
            events
        })
        .await
        {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(error = %e, "the monitor tick panicked");
                return;
            }
        };
        for event in events {
            let message = self.monitor.alert_message(&event);
            log_alert(&message, &event);
            let outcome = tokio::time::timeout(
                self.publish_timeout,
                client.publish(
                    message.topic.clone(),
                    message.qos,
                    false,
                    message.payload.clone(),
                ),
            )
            .await;
            let ok = matches!(outcome, Ok(Ok(())));
            self.monitor.alert_published(ok);
            if !ok {
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!(
                        "no room in the MQTT request channel within {:?}",
                        self.publish_timeout
                    ),
                };
                tracing::error!(topic = %message.topic, error = %why, "could not publish an alert");
            }
        }
    }
}

fn log_alert(message: &AlertMessage, event: &AlertEvent) {
    let a = event.alert();
    let subject = subject_label(&a.subject);
    let statistic = statistic_label(a.measurement.statistic);
    let (value, threshold) = (a.measurement.value, a.measurement.threshold);
    match message.state {
        AlertState::Raised => tracing::warn!(
            route = %a.route, subject = %subject, statistic, value, threshold,
            "{}", message.log_line
        ),
        AlertState::Cleared => tracing::info!(
            route = %a.route, subject = %subject, statistic, value, threshold,
            "{}", message.log_line
        ),
    }
}
