//! The graceful shutdown, in three parts:
//!
//! 1. **The trigger**: the `shutdown` token the caller passes to `runner::run` (SIGTERM or
//!    SIGINT for `reflexd run`) fires. systemd is told STOPPING; the intake's gate closes
//!    (once it has, no publish is accepted, and those that still arrive are not acked: the
//!    broker keeps them for the next session) and the uploader stops (a batch in flight stays in the journal and is sent
//!    again, with the same id, after the restart). The grace period starts.
//! 2. **Wait for every task**, in data order, each within the grace period: every accepted
//!    event gets its command (each within its own deadline), then the engine's threads end;
//!    the actuator queues every command left on the MQTT client; the recorder makes a last
//!    group commit and queues the PUBACKs of everything journaled; the alert publisher
//!    makes its last tick; then our Disconnect goes out — after every command and PUBACK,
//!    since the events they answer are acked and the broker will not redeliver them.
//! 3. **The grace deadline**: the intake ends once the broker has closed the connection
//!    after our Disconnect, i.e. has read every command and PUBACK (or when the grace
//!    period is over); then the tasks that only stop at the end (metrics endpoint,
//!    watchdog, hot reload) are stopped, and "stopped" is logged with the events left
//!    unanswered.
//!
//! One token tree says who stops when: [`Tokens::root`] is the hard stop of part 3, and
//! its children are cancelled one by one, in the order the stages stop: `upload` at the
//! trigger, `actuator` once the engine's threads have ended, `monitor`
//! once the recorder is done. Cancelling the root stops whatever is left.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::AsyncClient;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ops::systemd::Notifier;
use crate::pipeline::infer::threads::Reload;
use crate::pipeline::infer::Engine;
use crate::pipeline::intake::IntakeGate;
use crate::pipeline::types::RecorderMsg;

/// The shutdown's token tree (see the module doc).
#[derive(Debug, Clone)]
pub struct Tokens {
    /// The hard stop: the intake's event loop, the metrics endpoint, the watchdog and the
    /// hot reload return at it.
    pub root: CancellationToken,
    /// The uploader stops (at the trigger).
    pub upload: CancellationToken,
    /// The actuator publishes what it holds and returns (once the engine has ended).
    pub actuator: CancellationToken,
    /// The alert publisher's last tick (once the recorder is done).
    pub monitor: CancellationToken,
}

impl Tokens {
    /// A root and its children, none cancelled.
    pub fn new() -> Self {
        let root = CancellationToken::new();
        Tokens {
            upload: root.child_token(),
            actuator: root.child_token(),
            monitor: root.child_token(),
            root,
        }
    }
}

impl Default for Tokens {
    fn default() -> Self {
        Self::new()
    }
}

/// Everything running that the shutdown stops or waits for.
pub struct Running {
    /// The token tree.
    pub tokens: Tokens,
    /// `shutdown.grace`.
    pub grace: Duration,
    /// The engine.
    pub engine: Arc<Engine>,
    /// The engine's workers and deadline timer.
    pub engine_threads: Vec<JoinHandle<()>>,
    /// The workers' reload channels (closed once the workers have ended).
    pub reloads: Vec<flume::Sender<Reload>>,
    /// The actuator task.
    pub actuator: tokio::task::JoinHandle<()>,
    /// The recorder's channel and thread.
    pub recorder_tx: flume::Sender<RecorderMsg>,
    /// The recorder thread.
    pub recorder: JoinHandle<()>,
    /// The alert publisher, when monitoring is on.
    pub alerts: Option<tokio::task::JoinHandle<()>>,
    /// The MQTT client (for the Disconnect).
    pub client: AsyncClient,
    /// The tasks on the shared runtime (endpoint, watchdog, reload, uploader, alerts…).
    pub tasks: TaskTracker,
    /// Closed at the trigger: the intake accepts no more publishes.
    pub gate: IntakeGate,
    /// Fires when the intake's event loop has returned.
    pub intake_done: tokio::sync::oneshot::Receiver<()>,
    /// The intake's thread.
    pub intake_thread: JoinHandle<()>,
    /// systemd, when run under it.
    pub notifier: Option<Notifier>,
}

impl Running {
    /// Waits for `trigger`, then stops everything (see the module doc).
    pub async fn stop_at(self, trigger: CancellationToken) {
        trigger.cancelled().await;
        let grace_until = self.trigger();
        let rest = self.wait_for_tasks(grace_until).await;
        rest.grace_deadline(grace_until).await;
    }

    /// Part 1: intake and uploads stop; the grace period starts.
    fn trigger(&self) -> Instant {
        tracing::info!(
            in_flight = self.engine.in_flight(),
            "stopping: intake closed, answering what was accepted"
        );
        if let Some(n) = &self.notifier {
            let _ = n.stopping();
        }
        let grace_until = Instant::now() + self.grace;
        // Once closed, nothing more is accepted: the count in flight only goes down.
        self.gate.close();
        self.tokens.upload.cancel();
        grace_until
    }

    /// Part 2: every task, in data order, within the grace period.
    async fn wait_for_tasks(self, grace_until: Instant) -> Remaining {
        let left = |extra: Duration| grace_until.saturating_duration_since(Instant::now()) + extra;
        // Every accepted event gets its command (each within its own deadline).
        while self.engine.in_flight() > 0 && Instant::now() < grace_until {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.engine.stop();
        let threads = self.engine_threads;
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        let _ = tokio::time::timeout(left(Duration::ZERO), joined).await;
        self.tokens.actuator.cancel();
        drop(self.reloads);
        // Every command must be queued on the client before the Disconnect: the events they
        // answer are acked, so the broker will not redeliver them to anyone.
        if tokio::time::timeout(left(Duration::from_millis(500)), self.actuator)
            .await
            .is_err()
        {
            tracing::warn!("grace period over before every command was queued");
        }
        // Every published decision is with the recorder: a last group commit, and the
        // PUBACKs of everything journaled go out before the Disconnect too.
        let _ = self.recorder_tx.send(RecorderMsg::Stop);
        drop(self.recorder_tx);
        let recorder = self.recorder;
        let recorder_joined = tokio::task::spawn_blocking(move || recorder.join());
        if tokio::time::timeout(left(Duration::from_secs(2)), recorder_joined)
            .await
            .is_err()
        {
            tracing::warn!("the journal's last commit did not finish in time");
        }
        // The alert publisher's last tick, before the Disconnect too.
        self.tokens.monitor.cancel();
        if let Some(a) = self.alerts {
            let _ = tokio::time::timeout(Duration::from_secs(2), a).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.disconnect()).await;
        self.tasks.close();
        Remaining {
            root: self.tokens.root,
            engine: self.engine,
            tasks: self.tasks,
            intake_done: self.intake_done,
            intake_thread: self.intake_thread,
        }
    }
}

/// What part 3 still stops.
struct Remaining {
    root: CancellationToken,
    engine: Arc<Engine>,
    tasks: TaskTracker,
    intake_done: tokio::sync::oneshot::Receiver<()>,
    intake_thread: JoinHandle<()>,
}

impl Remaining {
    /// Part 3: the intake ends once the broker closed the connection after our
    /// Disconnect; then the endpoint, watchdog and
    /// reload tasks, which only ever stop at the root.
    async fn grace_deadline(self, grace_until: Instant) {
        if tokio::time::timeout(
            grace_until.saturating_duration_since(Instant::now()) + Duration::from_millis(500),
            self.intake_done,
        )
        .await
        .is_err()
        {
            tracing::warn!("grace period over; stopping the remaining tasks");
        }
        self.root.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.wait()).await;
        // Past the root the intake returns at its next turn; a thread still stuck here ends
        // with the process.
        let intake_thread = self.intake_thread;
        let joined = tokio::task::spawn_blocking(move || intake_thread.join());
        let _ = tokio::time::timeout(Duration::from_secs(1), joined).await;
        tracing::info!(unanswered = self.engine.in_flight(), "stopped");
    }
}
