//! The worker threads: each runs the model (one instance per configured model, any
//! manifest format: a window is the model's [`Model::input_len`] values) on queued
//! jobs, earliest deadline first, as many at once as can still make it (a batch, up to
//! `scheduler.max_batch`), and swaps in reloaded models between runs. A failed run (a
//! genuine tract error on a well-shaped input) is answered by the fallback at once
//! (`model_error`); a model answer after the job's deadline (or after the fallback's) is
//! recorded as late and never actuated.
//!
//! Windows the model cannot read never get here: the decode stage refuses them as bad
//! input (`shape_mismatch`), unanswered. The worker still guards each window's length (a
//! wrong one would shift every row after it in the batch): only an event checked against
//! a model's shape just before a reload changed it can fail that guard, and it is answered
//! by the fallback as `model_error`, since the engine answers every event it accepted.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use reflex_models::{Batches, Model, Prediction};
use reflex_wire::{Action, DecisionSource};

use super::{Engine, Job, Verdict, RUNNING};
use crate::ops::metrics::Stage;
use crate::pipeline::infer::schedule::{self, Outcome, SlotState};
use crate::pipeline::types::{MissCause, ModelRun, Nanos};

/// An idle worker's wait while events flow (a model run in the last [`TRAFFIC_RECENT`]):
/// `held_poll`, so that events the intake queued without waking it yet
/// ([`Engine::accept_held`]) wait at most that long even if the intake thread is held off
/// its core (milliseconds, on the normal scheduler) before it wakes the worker. Otherwise
/// 100 ms, the heartbeat's pace.
pub fn idle_wait(now: Nanos, last_run: Option<Nanos>, held_poll: Duration) -> Duration {
    match last_run {
        Some(t) if now.saturating_sub(t) < schedule::nanos(TRAFFIC_RECENT) => held_poll,
        _ => Duration::from_millis(100),
    }
}

/// Events flow while the model ran this recently.
pub const TRAFFIC_RECENT: Duration = Duration::from_millis(100);

/// The idle worker's wait while events flow: a quarter of the smallest route budget, within
/// 100 µs..=2 ms (a 5 ms budget: 1.25 ms).
pub fn held_poll(budgets: impl Iterator<Item = Duration>) -> Duration {
    budgets
        .min()
        .map_or(Duration::from_millis(2), |b| b / 4)
        .clamp(Duration::from_micros(100), Duration::from_millis(2))
}

impl Engine {
    /// A worker: runs `models` (one instance per configured model) on queued jobs,
    /// earliest deadline first, as many at once as can still make it (up to the batch
    /// limit). Swaps in reloaded models received on `reloads` between runs. Runs until
    /// [`Engine::stop`] and an empty queue.
    pub fn run_worker(&self, mut models: Vec<Batches>, reloads: flume::Receiver<(usize, Batches)>) {
        let widest = models
            .iter()
            .map(|m| m.first().input_len())
            .max()
            .unwrap_or(0);
        let mut windows: Vec<f32> = Vec::with_capacity(self.max_batch * widest);
        let mut temperatures: Vec<f32> = Vec::with_capacity(self.max_batch);
        let mut jobs: Vec<Arc<Job>> = Vec::with_capacity(self.max_batch);
        loop {
            while let Ok((idx, model)) = reloads.try_recv() {
                if let Some(m) = models.get_mut(idx) {
                    *m = model;
                }
            }
            let model_of = |job: &Arc<Job>| job.version.model;
            let batch = {
                let mut q = self.queue.lock();
                loop {
                    // Before looking: a job queued after this look wakes the wait below.
                    let ticket = self.work.ticket();
                    let now = self.clock.now();
                    self.heartbeat.store(now, Ordering::Relaxed);
                    let pop = q.pop_batch(
                        now,
                        Duration::from_nanos(self.margin()),
                        self.max_batch,
                        |job, k| self.models[model_of(job)].expected(k),
                        |first, next| model_of(first) == model_of(next),
                    );
                    self.metrics.set_queue_depth(q.len());
                    if !pop.expired.is_empty() {
                        drop(q);
                        for e in pop.expired {
                            self.answer_fallback(&e.item, MissCause::ExpiredInQueue);
                        }
                        q = self.queue.lock();
                    }
                    if !pop.runnable.is_empty() {
                        break pop.runnable;
                    }
                    if self.stopping.load(Ordering::Acquire) && q.is_empty() {
                        return;
                    }
                    let last_run = self.last_run_at.load(Ordering::Relaxed);
                    let wait = idle_wait(
                        now,
                        (last_run != 0).then_some(last_run),
                        Duration::from_nanos(self.held_poll.load(Ordering::Relaxed)),
                    );
                    drop(q);
                    self.work.wait(ticket, wait);
                    q = self.queue.lock();
                }
            };
            jobs.clear();
            windows.clear();
            temperatures.clear();
            // One model per batch (pop_batch groups by it); the values one run reads per
            // window are that model's input ([`Model::input_len`]: 192 for format 1).
            let Some(model) = batch.first().map(|q| model_of(&q.item)) else {
                continue;
            };
            let input_len = models.get(model).map_or(0, |m| m.first().input_len());
            for job in batch.into_iter().map(|q| q.item) {
                if !matches!(job.slot.state(), SlotState::Pending) {
                    continue; // the timer already answered it
                }
                let before = windows.len();
                windows.extend(job.event.window.values());
                if windows.len() - before != input_len {
                    // Not a window the model takes: it would shift every row after it. The decode stage refuses these; only a reload that changed the
                    // model's shape after this event's check lands here. The safe answer,
                    // at once.
                    windows.truncate(before);
                    self.answer_fallback(&job, MissCause::ModelError);
                    continue;
                }
                temperatures.push(job.event.temperature_c());
                job.state.store(RUNNING, Ordering::Release);
                jobs.push(job);
            }
            if jobs.is_empty() {
                continue;
            }
            let started = self.clock.now();
            self.last_run_at.store(started, Ordering::Relaxed);
            let result = models[model].predict(&windows, &temperatures);
            let done = self.clock.now();
            self.metrics.model_run(jobs.len());
            match result {
                Ok(predictions) => {
                    for (job, p) in jobs.iter().zip(predictions) {
                        self.answer_model(job, p, models[model].first(), started, done);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, events = jobs.len(), "model failed; answering with the fallback");
                    for job in &jobs {
                        self.answer_fallback(job, MissCause::ModelError);
                    }
                }
            }
        }
    }

    /// Sends the model's answer `p` for `job` (run from `started` to `done`), or records
    /// it as late and leaves the job to the fallback.
    fn answer_model(&self, job: &Job, p: Prediction, model: &Model, started: Nanos, done: Nanos) {
        let queue_ns = started.saturating_sub(job.arrival);
        self.metrics.observe(Stage::Queue, queue_ns);
        self.metrics.observe(Stage::Infer, done - started);
        match job.slot.offer_model(done, job.deadline) {
            Outcome::Actuate => {
                let slot = &self.models[job.version.model];
                let action = model.action(p.class).unwrap_or(Action::Stop);
                let serving = slot.current.lock().expect("model ref lock").clone();
                if let Some(f) = &job.fallback {
                    f.model_answered(&job.event.device, action, done);
                }
                let confidence = Some(p.confidence()).filter(|c| c.is_finite());
                let run = ModelRun {
                    confidence,
                    logits: p.logits,
                    queue_ns,
                    infer_ns: done - started,
                };
                self.send(
                    job,
                    Verdict {
                        action,
                        class: p.class,
                        source: DecisionSource::Model,
                        model: serving,
                        run: Some(run),
                        miss: None,
                    },
                );
            }
            Outcome::LateModel => {
                self.metrics.late_model_answer(job.route);
                self.answer_fallback(job, MissCause::ModelTooSlow);
            }
            Outcome::AlreadyAnswered => self.metrics.late_model_answer(job.route),
        }
    }
}
