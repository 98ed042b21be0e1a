//! The deadline timer thread: the fallback's safety net under every queued job. Each job
//! is armed at `deadline - safety margin` when it is accepted (before it is queued); the
//! timer answers, with the fallback, every job nobody has answered by then, starting early
//! enough to answer all the pending ones in time one after another
//! ([`schedule::timer_start`], with [`schedule::FallbackCost`] measuring one answer).

use std::cmp::Reverse;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{Engine, Job, RUNNING};
use crate::pipeline::infer::schedule::{self, SlotState};
use crate::pipeline::types::{MissCause, Nanos};

/// The deadline timer's estimate of one fallback answer before it has measured any
/// ([`schedule::FallbackCost`]).
pub(super) const INITIAL_FALLBACK_COST: Duration = Duration::from_micros(20);

/// Heap entries compare by (fire time, sequence) only.
pub(super) struct TimerJob(pub(super) Arc<Job>);

impl PartialEq for TimerJob {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for TimerJob {}
impl PartialOrd for TimerJob {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerJob {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl Engine {
    /// The deadline timer: answers with the fallback every job not answered by its fire
    /// time, starting early enough to answer all the pending ones by then, one after
    /// another ([`schedule::timer_start`]). Runs until [`Engine::stop`] and no timer is
    /// left.
    pub fn run_timer(&self) {
        let mut cost =
            schedule::FallbackCost::new(INITIAL_FALLBACK_COST, Duration::from_nanos(self.margin()));
        let mut timers = self.timers.lock();
        loop {
            // Before looking: a job armed after this look wakes the wait below.
            let ticket = self.timer_wakeup.ticket();
            let now = self.clock.now();
            self.heartbeat.store(now, Ordering::Relaxed);
            // Read once per turn: the due check and the wait must agree on it.
            let pending = self.in_flight.load(Ordering::Acquire);
            let start = |fire_at: Nanos| schedule::timer_start(fire_at, pending, cost.planned());
            match timers.peek() {
                // Already answered: dropped at once, so that this thread sleeps until the
                // next job that may still need it instead of waking at every event's fire
                // time (one wake-up per event, each preempting the event loop at real-time
                // priority).
                Some(Reverse((_, _, TimerJob(job))))
                    if !matches!(job.slot.state(), SlotState::Pending) =>
                {
                    timers.pop();
                }
                Some(Reverse((fire_at, _, _))) if start(*fire_at) <= now => {
                    let Some(Reverse((_, _, TimerJob(job)))) = timers.pop() else {
                        continue;
                    };
                    drop(timers);
                    let cause = if job.state.load(Ordering::Acquire) == RUNNING {
                        MissCause::ModelTooSlow
                    } else {
                        MissCause::ExpiredInQueue
                    };
                    let answered = self.answer_fallback(&job, cause);
                    timers = self.timers.lock();
                    if answered {
                        // The whole turn, lock and heap included: what the next answer in
                        // a run of them costs.
                        cost.observe(Duration::from_nanos(self.clock.now().saturating_sub(now)));
                        self.fallback_cost.store(cost.planned(), Ordering::Relaxed);
                        self.metrics.set_fallback_cost(cost.mean());
                    }
                }
                Some(Reverse((fire_at, _, _))) => {
                    let wake_at = start(*fire_at);
                    self.timer_wake_at.store(wake_at, Ordering::Relaxed);
                    drop(timers);
                    self.timer_wakeup
                        .wait(ticket, Duration::from_nanos(wake_at.saturating_sub(now)));
                    timers = self.timers.lock();
                }
                None if self.stopping.load(Ordering::Acquire) => return,
                None => {
                    self.timer_wake_at.store(u64::MAX, Ordering::Relaxed);
                    drop(timers);
                    self.timer_wakeup.wait(ticket, Duration::from_millis(100));
                    timers = self.timers.lock();
                }
            }
        }
    }
}
