//! Infer: the real-time core. Accepted events become jobs with a deadline; worker threads
//! ([`worker`]) run the model earliest-deadline-first, on every waiting job that can still
//! make it in one run (a batch: one tract call for k windows costs far less than k calls);
//! a deadline timer thread ([`timer`]) answers with the route's fallback ([`fallback`])
//! any job the model has not answered by `deadline - safety margin`. Whoever claims a job's [`AtomicDecision`] first
//! hands its verdict to the decide stage ([`DecisionSink`]); the other is recorded, never
//! actuated. So every accepted event gets exactly one command, and `in_flight` counts the
//! events accepted and not yet answered.
//!
//! Threads, not async tasks: inference and the timer must not share the runtime that polls
//! MQTT. The scheduling rules themselves live in the schedule stage (pure, tested with a
//! fake clock); this module only applies them to real threads and a real clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use reflex_wire::{Action, DecisionSource, ModelRef, SensorEvent};

use crate::ops::metrics::Metrics;
use crate::pipeline::routes::{LiveRoute, SharedRoutes};
use crate::pipeline::types::{
    Answer, Arrival, ArrivalSink, Clock, DecisionSink, InputShape, MissCause, ModelRun, Nanos,
    WindowShape,
};
use schedule::{Admission, AtomicDecision, EdfQueue, Outcome};

pub mod fallback;
pub mod handoff;
pub mod realtime;
pub mod schedule;
pub mod threads;
pub mod timer;
pub mod worker;

use fallback::RouteFallback;
use handoff::{RtMutex, Wakeup};
use timer::{TimerJob, INITIAL_FALLBACK_COST};
pub use worker::{held_poll, idle_wait, TRAFFIC_RECENT};

/// The identity of one configured model.
pub struct ModelSlot {
    /// Name and version of the model currently serving (changes on reload).
    pub current: Mutex<ModelRef>,
    /// Expected inference time (p99.9 from calibration), ns, of a run on 1, 2, …
    /// windows (index = windows − 1).
    pub expected_ns: Box<[AtomicU64]>,
    /// The window shape the model serving now reads (swapped on reload, before the
    /// workers get the new model): what the decode stage checks each event against.
    pub input: InputShape,
}

impl ModelSlot {
    /// Expected time of a run on `windows` windows (the largest calibrated size beyond).
    pub fn expected(&self, windows: usize) -> Duration {
        let i = windows.clamp(1, self.expected_ns.len().max(1)) - 1;
        Duration::from_nanos(
            self.expected_ns
                .get(i)
                .map_or(0, |e| e.load(Ordering::Relaxed)),
        )
    }

    /// Stores calibrated p99.9s (ns) of runs on 1, 2, … windows.
    pub fn set_expected(&self, p999_ns: &[u64]) {
        for (slot, ns) in self.expected_ns.iter().zip(p999_ns) {
            slot.store(*ns, Ordering::Relaxed);
        }
    }
}

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;

/// One accepted event on its way to exactly one command.
pub struct Job {
    /// Route index (slot).
    pub route: usize,
    /// The route's version this event was accepted under: its budget, model and command
    /// topic, whatever a reload swaps in meanwhile.
    pub version: Arc<LiveRoute>,
    /// The event (shared with the decision's record, not copied).
    pub event: Arc<SensorEvent>,
    /// The payload exactly as received (for the journal).
    pub payload: Bytes,
    /// Arrival (pipeline clock).
    pub arrival: Nanos,
    /// Arrival, µs since the Unix epoch (for the journal).
    pub arrival_unix_us: u64,
    /// Time spent decoding, ns.
    pub decode_ns: Nanos,
    /// The PUBACK to send once the decision is journaled (None: already acked).
    pub ack: Option<crate::pipeline::types::HeldAck>,
    /// Answer no later than this.
    pub deadline: Nanos,
    /// The route's fallback when the event was accepted (None: a route slot without
    /// one, a bug: the safe action answers).
    pub fallback: Option<Arc<RouteFallback>>,
    /// Who answered.
    pub slot: AtomicDecision,
    state: AtomicU8,
}

/// The shared state of the real-time path.
pub struct Engine {
    /// The clock every timestamp uses.
    pub clock: Clock,
    /// Routes, by slot (swapped whole by a reload).
    pub routes: SharedRoutes,
    /// Models, by index.
    pub models: Vec<ModelSlot>,
    /// Each route's fallback, by route slot (swapped whole by a reload).
    fallbacks: ArcSwap<Fallbacks>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// `scheduler.safety_margin_us`, ns (a reload may change it).
    margin: AtomicU64,
    max_batch: usize,
    /// How often an idle worker looks at the queue by itself while events flow (see
    /// [`idle_wait`]).
    /// ns; follows the routes' budgets across reloads ([`Engine::routes_changed`]).
    held_poll: AtomicU64,
    /// Shared with the intake thread: priority-inheriting ([`handoff`]).
    queue: RtMutex<EdfQueue<Arc<Job>>>,
    /// Wakes idle workers.
    work: Wakeup,
    /// Shared with the intake thread: priority-inheriting ([`handoff`]).
    timers: RtMutex<BinaryHeap<Reverse<(Nanos, u64, TimerJob)>>>,
    /// Wakes the timer.
    timer_wakeup: Wakeup,
    timer_seq: AtomicU64,
    /// When the timer means to wake next (monotonic ns; `u64::MAX` while it has no timer):
    /// a new job whose [`schedule::timer_start`] is earlier wakes it.
    timer_wake_at: AtomicU64,
    /// What the timer plans one fallback answer at ([`schedule::FallbackCost::planned`]), ns.
    fallback_cost: AtomicU64,
    in_flight: AtomicU64,
    stopping: AtomicBool,
    /// Where each job's one verdict goes.
    decide: Arc<dyn DecisionSink>,
    /// Monotonic ns of the last worker/timer loop turn (the watchdog's liveness signal).
    pub heartbeat: AtomicU64,
    /// Monotonic ns when the last model run started, 0 before the first (for the idle
    /// workers' wait and the deadline-miss log).
    last_run_at: AtomicU64,
    /// Monotonic ns of the last deadline-miss log line, and the misses not logged since.
    miss_logged_at: AtomicU64,
    misses_unlogged: AtomicU64,
}

/// Each route's fallback, by route slot.
pub type Fallbacks = Vec<Option<Arc<RouteFallback>>>;

/// The engine's limits, from `[scheduler]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Jobs the queue holds; beyond, the fallback answers at once.
    pub queue_capacity: usize,
    /// Safety margin before each deadline.
    pub margin: Duration,
    /// Most jobs a worker runs at once.
    pub max_batch: usize,
}

/// At most one deadline-miss log line this often (each miss is counted in the metrics).
const MISS_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the engine decided for a job, before the decide stage words it.
struct Verdict {
    action: Action,
    class: usize,
    source: DecisionSource,
    model: ModelRef,
    run: Option<ModelRun>,
    miss: Option<MissCause>,
}

impl Engine {
    /// An engine reading `clock`; each job's verdict goes to `decide`; `fallbacks` by
    /// route slot.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        clock: Clock,
        routes: SharedRoutes,
        models: Vec<ModelSlot>,
        fallbacks: Fallbacks,
        metrics: Arc<Metrics>,
        limits: Limits,
        decide: Arc<dyn DecisionSink>,
    ) -> Engine {
        metrics.set_priority_inheriting_locks(handoff::priority_inheritance());
        let held_poll = AtomicU64::new(schedule::nanos(held_poll(
            routes.load().active().map(|r| r.budget),
        )));
        Engine {
            clock,
            held_poll,
            routes,
            models,
            fallbacks: ArcSwap::from_pointee(fallbacks),
            metrics,
            margin: AtomicU64::new(schedule::nanos(limits.margin)),
            max_batch: limits.max_batch.max(1),
            queue: RtMutex::new(EdfQueue::new(limits.queue_capacity)),
            work: Wakeup::default(),
            timers: RtMutex::new(BinaryHeap::new()),
            timer_wakeup: Wakeup::default(),
            timer_seq: AtomicU64::new(0),
            timer_wake_at: AtomicU64::new(u64::MAX),
            fallback_cost: AtomicU64::new(schedule::nanos(INITIAL_FALLBACK_COST) * 2),
            in_flight: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            decide,
            heartbeat: AtomicU64::new(0),
            last_run_at: AtomicU64::new(0),
            miss_logged_at: AtomicU64::new(0),
            misses_unlogged: AtomicU64::new(0),
        }
    }

    /// The fallback of route `slot` now.
    pub fn fallback(&self, slot: usize) -> Option<Arc<RouteFallback>> {
        self.fallbacks.load().get(slot).cloned().flatten()
    }

    /// Each route's fallback, by slot, now.
    pub fn fallbacks(&self) -> Arc<Fallbacks> {
        self.fallbacks.load_full()
    }

    /// Replaces the fallbacks (a reload, before it swaps the route table): events
    /// accepted from now on are answered, if need be, by the new ones.
    pub fn set_fallbacks(&self, fallbacks: Fallbacks) {
        self.fallbacks.store(Arc::new(fallbacks));
    }

    /// The safety margin before each deadline, ns.
    pub fn margin(&self) -> Nanos {
        self.margin.load(Ordering::Relaxed)
    }

    /// A new safety margin (`scheduler.safety_margin_us`, reloaded): events accepted from
    /// now on are planned with it.
    pub fn set_margin(&self, margin: Duration) {
        self.margin
            .store(schedule::nanos(margin), Ordering::Relaxed);
    }

    /// A reload swapped the route table: the idle workers' poll follows the new budgets.
    pub fn routes_changed(&self) {
        let poll = held_poll(self.routes.load().active().map(|r| r.budget));
        self.held_poll
            .store(schedule::nanos(poll), Ordering::Relaxed);
    }

    /// Accepted events not yet answered.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Tells workers and the timer to exit once nothing is left to answer.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.work.wake_all();
        self.timer_wakeup.wake_all();
    }

    /// Accepts a decoded event: it will get exactly one command.
    pub fn accept(&self, a: Arrival) {
        if self.accept_held(a) {
            self.work.wake_one();
        }
    }

    /// Accepts a decoded event like [`Engine::accept`] but leaves the workers asleep; true
    /// when it was queued for them. For the ingest, which reads every packet the socket
    /// holds at once: it queues a burst whole and then calls [`Engine::wake_workers`], so
    /// that a worker wakes once for the burst and takes it as one batch, rather than
    /// waking at the first event (preempting the ingest, at real-time priority) and running
    /// it alone. The job's deadline timer is armed either way.
    pub fn accept_held(&self, a: Arrival) -> bool {
        let Arrival {
            route,
            event,
            payload,
            at: arrival,
            unix_us,
            decode_ns,
            ack,
            redelivered: _,
        } = a;
        let table = self.routes.load();
        let Some(r) = table.slot(route).cloned() else {
            // Never: the decode stage reads slots from this table, which only grows.
            tracing::error!(
                route,
                "bug: an event of an unknown route slot; not answered"
            );
            return false;
        };
        drop(table);
        let deadline = schedule::deadline(arrival, r.budget, event.deadline_hint_us);
        let model = r.model;
        let fallback = self.fallback(route);
        let job = Arc::new(Job {
            route,
            version: r,
            event,
            payload,
            arrival,
            arrival_unix_us: unix_us,
            decode_ns,
            ack,
            deadline,
            fallback,
            slot: AtomicDecision::new(),
            state: AtomicU8::new(QUEUED),
        });
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.metrics.event_received(route);
        let now = self.clock.now();
        let expected = self.models[model].expected(1);
        let margin_ns = self.margin();
        let margin = Duration::from_nanos(margin_ns);
        if let Admission::FallbackNow(cause) = schedule::admit(now, deadline, expected, margin) {
            self.answer_fallback(&job, cause);
            return false;
        }
        let fire_at = deadline.saturating_sub(margin_ns);
        let pending = self.in_flight.load(Ordering::Acquire);
        let cost = self.fallback_cost.load(Ordering::Relaxed);
        if !schedule::timer_can_take(now, fire_at, pending, cost) {
            self.answer_fallback(&job, MissCause::FallbackBacklog);
            return false;
        }
        // The timer first, so that a job is never in the queue without its safety net.
        let wake_timer = {
            let mut timers = self.timers.lock();
            let seq = self.timer_seq.fetch_add(1, Ordering::Relaxed);
            timers.push(Reverse((fire_at, seq, TimerJob(job.clone()))));
            // One more job pending brings the timer's start forward by one fallback: wake
            // it once the start moved more than half the margin before its planned wake
            // (not at every event of a burst). Under the lock: the timer either sleeps on a
            // ticket taken before this push (woken below) or reads the new start when it
            // next takes the lock.
            let head = timers.peek().map_or(fire_at, |Reverse((t, _, _))| *t);
            let start = schedule::timer_start(head, pending, cost);
            let planned = self.timer_wake_at.load(Ordering::Relaxed);
            let wake = start.saturating_add(margin_ns / 2) < planned;
            if wake {
                self.timer_wake_at.store(start, Ordering::Relaxed);
            }
            wake
        };
        // Outside the lock: the timer takes its ticket under it, so this wake-up, after
        // the push, either finds it asleep on that ticket or ends its next wait at once.
        if wake_timer {
            self.timer_wakeup.wake_one();
        }
        let pushed = {
            let mut q = self.queue.lock();
            let r = q.push(deadline, job);
            self.metrics.set_queue_depth(q.len());
            r
        };
        match pushed {
            Ok(()) => true,
            Err(job) => {
                self.metrics.bad_input("queue_full");
                self.answer_fallback(&job, MissCause::QueueFull);
                false
            }
        }
    }

    /// Most jobs a worker runs at once.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The window shape the model of `route` reads now (one atomic load).
    pub fn input_shape(&self, route: usize) -> WindowShape {
        let model = self.routes.load().slot(route).map_or(0, |r| r.model);
        self.models[model].input.get()
    }

    /// Wakes the workers for jobs queued by [`Engine::accept_held`].
    pub fn wake_workers(&self) {
        self.work.wake_all();
    }

    /// Answers `job` with the fallback if nobody has answered it yet; true if it did.
    fn answer_fallback(&self, job: &Job, cause: MissCause) -> bool {
        if job.slot.offer_fallback() != Outcome::Actuate {
            return false;
        }
        let (answer, model) = match &job.fallback {
            Some(f) => (f.answer(&job.event, self.clock.now()), f.model.clone()),
            None => {
                tracing::error!(
                    route = job.route,
                    "bug: a route without a fallback; stop sent"
                );
                let answer = fallback::FallbackAnswer {
                    action: Action::Stop,
                    class: usize::MAX,
                };
                let none = ModelRef {
                    name: heapless::String::new(),
                    version: heapless::String::new(),
                };
                (answer, none)
            }
        };
        self.metrics.deadline_miss(job.route, cause);
        self.log_miss(job, cause);
        self.send(
            job,
            Verdict {
                action: answer.action,
                class: answer.class,
                source: DecisionSource::Fallback,
                model,
                run: None,
                miss: Some(cause),
            },
        );
        true
    }

    /// Logs a deadline miss with what it takes to tell its kind apart (how long the event
    /// waited, the queue behind it, when the model last ran), at most once per
    /// [`MISS_LOG_EVERY`]; the misses in between are counted in the next line.
    fn log_miss(&self, job: &Job, cause: MissCause) {
        let now = self.clock.now();
        let last = self.miss_logged_at.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= schedule::nanos(MISS_LOG_EVERY);
        if !due
            || self
                .miss_logged_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            self.misses_unlogged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let us = |ns: Nanos| ns / 1_000;
        // try_lock: never wait on the queue here (a worker may hold it).
        let queued = self.queue.try_lock().map(|q| q.len());
        let last_run = self.last_run_at.load(Ordering::Relaxed);
        tracing::warn!(
            device = %job.event.device,
            seq = job.event.seq,
            cause = cause.as_str(),
            waited_us = us(now.saturating_sub(job.arrival)),
            budget_us = us(job.deadline.saturating_sub(job.arrival)),
            queued,
            last_model_run_started_us_ago = us(now.saturating_sub(last_run)),
            missed_since_last_line = self.misses_unlogged.swap(0, Ordering::Relaxed),
            "deadline miss: the fallback answered"
        );
    }

    /// Hands `job`'s verdict to the decide stage; the job is answered.
    fn send(&self, job: &Job, verdict: Verdict) {
        let answer = Answer {
            route: job.route,
            to: &job.version.command,
            event: &job.event,
            payload: &job.payload,
            arrival: job.arrival,
            arrival_unix_us: job.arrival_unix_us,
            decode_ns: job.decode_ns,
            deadline: job.deadline,
            ack: job.ack.as_ref(),
            action: verdict.action,
            class: verdict.class,
            source: verdict.source,
            model: verdict.model,
            run: verdict.run,
            miss: verdict.miss,
        };
        if self.decide.decided(answer) {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl ArrivalSink for Engine {
    fn accept_held(&self, a: Arrival) -> bool {
        Engine::accept_held(self, a)
    }

    fn wake_workers(&self) {
        Engine::wake_workers(self)
    }

    fn max_batch(&self) -> usize {
        Engine::max_batch(self)
    }

    fn input_shape(&self, route: usize) -> WindowShape {
        Engine::input_shape(self, route)
    }
}

#[cfg(test)]
mod tests;
