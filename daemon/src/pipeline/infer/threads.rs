//! The engine's threads: one worker per `scheduler.workers`, each with its own model
//! instances, and the deadline timer, all under SCHED_FIFO when the kernel grants it
//! ([`super::realtime`]).

use std::sync::Arc;
use std::thread::JoinHandle;

use reflex_models::Batches;

use super::Engine;
use crate::ops::metrics::Metrics;

/// A reloaded model for a worker: (model index, the worker's new instance).
pub type Reload = (usize, Batches);

/// The engine's running threads and the workers' reload channels.
pub struct EngineThreads {
    /// Workers and the deadline timer.
    pub threads: Vec<JoinHandle<()>>,
    /// One per worker, in worker order.
    pub reloads: Vec<flume::Sender<Reload>>,
}

/// Starts one worker per entry of `per_worker` (its model instances) and the deadline
/// timer, each asking for SCHED_FIFO at `priority` (0: the normal scheduler).
pub fn spawn(
    engine: &Arc<Engine>,
    per_worker: Vec<Vec<Batches>>,
    priority: u8,
    metrics: Arc<Metrics>,
) -> std::io::Result<EngineThreads> {
    let mut threads = Vec::new();
    let mut reloads = Vec::new();
    let realtime = RealtimeRequest::new(priority, metrics);
    for (w, models) in per_worker.into_iter().enumerate() {
        let (tx, rx) = flume::unbounded();
        reloads.push(tx);
        let e = engine.clone();
        let rt = realtime.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("reflex-worker-{w}"))
                .spawn(move || {
                    rt.enter();
                    e.run_worker(models, rx)
                })?,
        );
    }
    let e = engine.clone();
    threads.push(
        std::thread::Builder::new()
            .name("reflex-deadline-timer".into())
            .spawn(move || {
                realtime.enter();
                e.run_timer()
            })?,
    );
    Ok(EngineThreads { threads, reloads })
}

/// The configured SCHED_FIFO priority, requested by each engine thread for itself; a
/// refusal is logged once for all of them (see [`super::realtime`]).
#[derive(Clone)]
struct RealtimeRequest {
    priority: u8,
    metrics: Arc<Metrics>,
    refusal_logged: Arc<std::sync::atomic::AtomicBool>,
}

impl RealtimeRequest {
    fn new(priority: u8, metrics: Arc<Metrics>) -> Self {
        Self {
            priority,
            metrics,
            refusal_logged: Arc::default(),
        }
    }

    /// Called first thing on the engine thread that wants it.
    fn enter(&self) {
        if self.priority == 0 {
            return;
        }
        match super::realtime::enter_fifo(self.priority) {
            Ok(()) => self.metrics.realtime_thread_started(),
            Err(e) => {
                if !self
                    .refusal_logged
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(
                        priority = self.priority,
                        error = %e,
                        "SCHED_FIFO refused; engine threads run on the normal scheduler, where \
                         a busy board can delay events past their deadline (grant CAP_SYS_NICE \
                         or LimitRTPRIO=, or set scheduler.realtime_priority = 0 to silence this)"
                    );
                }
            }
        }
    }
}
