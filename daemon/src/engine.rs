//! The real-time core: accepted events become jobs with a deadline; worker threads run the
//! model earliest-deadline-first, on every waiting job that can still make it in one run
//! (a batch: one tract call for k windows costs far less than k calls); a deadline timer
//! thread answers with the fallback any job the model has not answered by
//! `deadline - safety margin`. Whoever claims a job's [`AtomicDecision`] first sends its
//! one command; the other is recorded, never actuated.
//!
//! Threads, not async tasks: inference and the timer must not share the runtime that polls
//! MQTT. The scheduling rules themselves live in [`crate::schedule`] (pure, tested with a
//! fake clock); this module only applies them to real threads and a real clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reflex_journal::record::StageTimings;
use reflex_models::{Batches, Fallback, Model, Prediction, WINDOW_LEN};
use reflex_wire::{Action, Command, DecisionSource, ModelRef, SensorEvent, FORMAT_VERSION};

use crate::config::Format;
use crate::metrics::{Metrics, Stage};
use crate::recorder::Decided;
use crate::schedule::{
    self, Admission, AtomicDecision, EdfQueue, MissCause, Nanos, Outcome, SlotState,
};

/// Monotonic nanoseconds since the engine started.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Clock {
            start: Instant::now(),
        }
    }

    /// Nanoseconds since start.
    pub fn now(&self) -> Nanos {
        self.start.elapsed().as_nanos() as Nanos
    }

    /// The clock reading of `instant`.
    pub fn at(&self, instant: Instant) -> Nanos {
        instant.saturating_duration_since(self.start).as_nanos() as Nanos
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// What a route needs at run time.
#[derive(Debug, Clone)]
pub struct RouteRuntime {
    /// Command topic template with `{device}`.
    pub command_topic: String,
    /// Payload format, for decoding events and encoding commands.
    pub format: Format,
    /// Deadline budget.
    pub budget: Duration,
    /// QoS of commands: 0 or 1.
    pub qos_out: u8,
    /// Index of the model in [`Engine`]'s model list.
    pub model: usize,
}

/// The identity and fallback of one configured model.
pub struct ModelSlot {
    /// Name and version of the model currently serving (changes on reload).
    pub current: Mutex<ModelRef>,
    /// Expected inference time (p99.9 from calibration), ns, of a run on 1, 2, …
    /// windows (index = windows − 1).
    pub expected_ns: Box<[AtomicU64]>,
    /// The fallback.
    pub fallback: Fallback,
    /// The fallback's identity in commands.
    pub fallback_ref: ModelRef,
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
    /// Route index.
    pub route: usize,
    /// The event.
    pub event: SensorEvent,
    /// The payload exactly as received (for the journal).
    pub payload: Bytes,
    /// Arrival at the daemon.
    pub arrival: Nanos,
    /// Arrival, µs since the Unix epoch (for the journal).
    pub arrival_unix_us: u64,
    /// Time spent decoding, ns.
    pub decode_ns: Nanos,
    /// The PUBACK to send once the decision is journaled (None: already acked).
    pub ack: Option<rumqttc::Publish>,
    /// Answer no later than this.
    pub deadline: Nanos,
    /// Who answered.
    pub slot: AtomicDecision,
    state: AtomicU8,
}

/// A command ready to publish.
#[derive(Debug)]
pub struct Outbound {
    /// Topic.
    pub topic: String,
    /// Encoded command.
    pub payload: Vec<u8>,
    /// QoS 0 or 1.
    pub qos: u8,
    /// When it was decided (engine clock).
    pub decided: Nanos,
    /// When its event arrived (engine clock).
    pub arrival: Nanos,
    /// The decision, for the recorder once the command is out.
    pub record: Box<Decided>,
}

/// An event handed to [`Engine::accept`].
#[derive(Debug)]
pub struct Arrival {
    /// Route index.
    pub route: usize,
    /// The decoded event.
    pub event: SensorEvent,
    /// Its payload as received.
    pub payload: Bytes,
    /// Arrival (engine clock).
    pub at: Nanos,
    /// Arrival, µs since the Unix epoch.
    pub unix_us: u64,
    /// Time spent decoding, ns.
    pub decode_ns: Nanos,
    /// PUBACK to send once journaled, if deferred.
    pub ack: Option<rumqttc::Publish>,
}

/// What a model run produced, for the journal.
#[derive(Debug)]
pub struct ModelRun {
    /// Logits.
    pub logits: Vec<f32>,
    /// Time in the queue, ns.
    pub queue_ns: Nanos,
    /// Inference time, ns.
    pub infer_ns: Nanos,
}

/// The shared state of the real-time path.
pub struct Engine {
    /// The clock every timestamp uses.
    pub clock: Clock,
    /// Routes, by index.
    pub routes: Vec<RouteRuntime>,
    /// Models, by index.
    pub models: Vec<ModelSlot>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    margin: Nanos,
    max_batch: usize,
    /// How often an idle worker looks at the queue by itself while events flow (see
    /// [`idle_wait`]).
    held_poll: Duration,
    queue: Mutex<EdfQueue<Arc<Job>>>,
    queue_cv: Condvar,
    timers: Mutex<BinaryHeap<Reverse<(Nanos, u64, TimerJob)>>>,
    timers_cv: Condvar,
    timer_seq: AtomicU64,
    /// When the timer means to wake next (monotonic ns; `u64::MAX` while it has no timer):
    /// a new job whose [`schedule::timer_start`] is earlier wakes it.
    timer_wake_at: AtomicU64,
    /// What the timer plans one fallback answer at ([`schedule::FallbackCost::planned`]), ns.
    fallback_cost: AtomicU64,
    in_flight: AtomicU64,
    stopping: AtomicBool,
    out: tokio::sync::mpsc::UnboundedSender<Outbound>,
    /// Commands handed to the actuator task and not yet published by it (see `send`).
    with_actuator: Arc<AtomicU64>,
    /// Set once MQTT is up: publishes straight from the deciding thread.
    direct: std::sync::OnceLock<crate::ingest::CommandPublisher>,
    /// Monotonic ns of the last worker/timer loop turn (the watchdog's liveness signal).
    pub heartbeat: AtomicU64,
    /// Monotonic ns when the last model run started, 0 before the first (for the idle
    /// workers' wait and the deadline-miss log).
    last_run_at: AtomicU64,
    /// Monotonic ns of the last deadline-miss log line, and the misses not logged since.
    miss_logged_at: AtomicU64,
    misses_unlogged: AtomicU64,
}

/// An idle worker's wait while events flow (a model run in the last [`TRAFFIC_RECENT`]):
/// `held_poll`, so that events the ingest queued without waking it yet
/// ([`Engine::accept_held`]) wait at most that long even if the ingest thread is held off
/// its core before it wakes the worker (seen here: 4.75 ms on the normal scheduler).
/// Otherwise 100 ms, the heartbeat's pace.
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

/// The deadline timer's estimate of one fallback answer before it has measured any
/// ([`schedule::FallbackCost`]); reflexd's backpressure test measured 5.5 to 13.5 µs.
const INITIAL_FALLBACK_COST: Duration = Duration::from_micros(20);

/// At most one deadline-miss log line this often (each miss is counted in the metrics).
const MISS_LOG_EVERY: Duration = Duration::from_secs(10);

/// Heap entries compare by (fire time, sequence) only.
struct TimerJob(Arc<Job>);

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

/// The event's window in g, channel-major, as the models expect.
pub fn window_g(event: &SensorEvent) -> Vec<f32> {
    event.window.values().collect()
}

impl Engine {
    /// An engine; commands go to `out`. A worker runs at most `max_batch` jobs at once.
    pub fn new(
        routes: Vec<RouteRuntime>,
        models: Vec<ModelSlot>,
        metrics: Arc<Metrics>,
        queue_capacity: usize,
        margin: Duration,
        max_batch: usize,
        out: tokio::sync::mpsc::UnboundedSender<Outbound>,
    ) -> Engine {
        let held_poll = held_poll(routes.iter().map(|r| r.budget));
        Engine {
            clock: Clock::new(),
            held_poll,
            routes,
            models,
            metrics,
            margin: schedule::nanos(margin),
            max_batch: max_batch.max(1),
            queue: Mutex::new(EdfQueue::new(queue_capacity)),
            queue_cv: Condvar::new(),
            timers: Mutex::new(BinaryHeap::new()),
            timers_cv: Condvar::new(),
            timer_seq: AtomicU64::new(0),
            timer_wake_at: AtomicU64::new(u64::MAX),
            fallback_cost: AtomicU64::new(schedule::nanos(INITIAL_FALLBACK_COST) * 2),
            in_flight: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            out,
            with_actuator: Arc::new(AtomicU64::new(0)),
            direct: std::sync::OnceLock::new(),
            heartbeat: AtomicU64::new(0),
            last_run_at: AtomicU64::new(0),
            miss_logged_at: AtomicU64::new(0),
            misses_unlogged: AtomicU64::new(0),
        }
    }

    /// Publishes commands from the thread that decides them, from now on, through
    /// `direct` (its client's request channel), instead of through the actuator task: one
    /// thread hop less per event. The actuator still takes a command when the request
    /// channel is full or while it holds earlier ones (so commands keep their order).
    pub fn publish_directly(&self, direct: crate::ingest::CommandPublisher) {
        let _ = self.direct.set(direct);
    }

    /// The count of commands the actuator holds, which it decrements as it publishes.
    pub fn actuator_backlog(&self) -> Arc<AtomicU64> {
        self.with_actuator.clone()
    }

    /// Accepted events not yet answered.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Tells workers and the timer to exit once nothing is left to answer.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.queue_cv.notify_all();
        self.timers_cv.notify_all();
    }

    /// Accepts a decoded event: it will get exactly one command.
    pub fn accept(&self, a: Arrival) {
        if self.accept_held(a) {
            self.queue_cv.notify_one();
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
        } = a;
        let r = &self.routes[route];
        let deadline = schedule::deadline(arrival, r.budget, event.deadline_hint_us);
        let job = Arc::new(Job {
            route,
            event,
            payload,
            arrival,
            arrival_unix_us: unix_us,
            decode_ns,
            ack,
            deadline,
            slot: AtomicDecision::new(),
            state: AtomicU8::new(QUEUED),
        });
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.metrics.event_received(route);
        let now = self.clock.now();
        let expected = self.models[r.model].expected(1);
        let margin = Duration::from_nanos(self.margin);
        if let Admission::FallbackNow(cause) = schedule::admit(now, deadline, expected, margin) {
            self.answer_fallback(&job, cause);
            return false;
        }
        let fire_at = deadline.saturating_sub(self.margin);
        let pending = self.in_flight.load(Ordering::Acquire);
        let cost = self.fallback_cost.load(Ordering::Relaxed);
        if !schedule::timer_can_take(now, fire_at, pending, cost) {
            self.answer_fallback(&job, MissCause::FallbackBacklog);
            return false;
        }
        // The timer first, so that a job is never in the queue without its safety net.
        {
            let mut timers = self.timers.lock().expect("timer lock");
            let seq = self.timer_seq.fetch_add(1, Ordering::Relaxed);
            timers.push(Reverse((fire_at, seq, TimerJob(job.clone()))));
            // One more job pending brings the timer's start forward by one fallback: wake
            // it once the start moved more than half the margin before its planned wake
            // (not at every event of a burst). Under the lock: the timer is either waiting
            // on the condvar or will read the new start when it next takes the lock.
            let head = timers.peek().map_or(fire_at, |Reverse((t, _, _))| *t);
            let start = schedule::timer_start(head, pending, cost);
            let planned = self.timer_wake_at.load(Ordering::Relaxed);
            if start.saturating_add(self.margin / 2) < planned {
                self.timer_wake_at.store(start, Ordering::Relaxed);
                self.timers_cv.notify_one();
            }
        }
        let pushed = {
            let mut q = self.queue.lock().expect("queue lock");
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

    /// Wakes the workers for jobs queued by [`Engine::accept_held`].
    pub fn wake_workers(&self) {
        self.queue_cv.notify_all();
    }

    /// Answers `job` with the fallback if nobody has answered it yet; true if it did.
    fn answer_fallback(&self, job: &Job, cause: MissCause) -> bool {
        if job.slot.offer_fallback() != Outcome::Actuate {
            return false;
        }
        let route = &self.routes[job.route];
        let slot = &self.models[route.model];
        let g = window_g(&job.event);
        let class = match <&[f32; reflex_models::WINDOW_LEN]>::try_from(g.as_slice()) {
            Ok(w) => slot.fallback.predict_window(w, job.event.temperature_c()),
            // Wrong shape for the model: the safe answer is to stop.
            Err(_) => usize::MAX,
        };
        let action = slot.fallback.action(class).unwrap_or(Action::Stop);
        self.metrics.deadline_miss(job.route, cause);
        self.log_miss(job, cause);
        self.send(
            job,
            action,
            class,
            DecisionSource::Fallback,
            slot.fallback_ref.clone(),
            None,
            Some(cause),
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
        let queued = self.queue.try_lock().map(|q| q.len()).ok();
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

    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        job: &Job,
        action: Action,
        class: usize,
        source: DecisionSource,
        model: ModelRef,
        run: Option<ModelRun>,
        miss: Option<MissCause>,
    ) {
        let route = &self.routes[job.route];
        let now = self.clock.now();
        let cmd = Command {
            version: FORMAT_VERSION,
            device: job.event.device.clone(),
            seq: job.event.seq,
            action,
            class: u8::try_from(class).unwrap_or(u8::MAX),
            source,
            model,
            decided_at_us: crate::monitor::unix_now_us(),
            latency_us: crate::recorder::micros(now.saturating_sub(job.arrival)),
        };
        let payload = match route.format {
            Format::Json => reflex_wire::json::encode_command(&cmd),
            Format::Postcard => {
                // Cannot fail: the device id was validated when the event decoded, and
                // every other field is bounded so that a command fits MAX_COMMAND_BYTES
                // (wire's round-trip property test). Were it to, answering in another
                // format than the route's would be worse than saying so loudly.
                let mut buf = [0u8; reflex_wire::MAX_COMMAND_BYTES];
                match cmd.encode(&mut buf) {
                    Ok(b) => b.to_vec(),
                    Err(e) => {
                        tracing::error!(device = %job.event.device, seq = job.event.seq, error = %e, "bug: a command did not encode; not sent");
                        return;
                    }
                }
            }
        };
        self.metrics.decided(job.route, source);
        let us = crate::recorder::micros;
        let (logits, queue_ns, infer_ns) = match run {
            Some(r) => (r.logits, r.queue_ns, r.infer_ns),
            None => (Vec::new(), 0, 0),
        };
        let decided = Box::new(Decided {
            route: job.route,
            event: job.event.clone(),
            payload: job.payload.clone(),
            arrival_unix_us: job.arrival_unix_us,
            command: payload.clone(),
            class,
            logits,
            source,
            model: cmd.model.clone(),
            timings: StageTimings {
                decode_us: us(job.decode_ns),
                queue_us: us(queue_ns),
                infer_us: us(infer_ns),
                publish_us: 0,
                end_to_end_us: 0,
                budget_us: us(job.deadline.saturating_sub(job.arrival)),
            },
            miss,
            ack: job.ack.clone(),
        });
        let out = Outbound {
            topic: route.command_topic.replace("{device}", &job.event.device),
            payload,
            qos: route.qos_out,
            decided: now,
            arrival: job.arrival,
            record: decided,
        };
        let out = match self.direct.get() {
            // Straight to the MQTT client, unless the actuator holds earlier commands.
            Some(direct) if self.with_actuator.load(Ordering::Acquire) == 0 => {
                direct.try_publish(out).err()
            }
            _ => Some(out),
        };
        if let Some(out) = out {
            self.with_actuator.fetch_add(1, Ordering::AcqRel);
            // The actuator lives until every engine thread has ended; a send error means
            // we are past shutdown, where nothing is accepted any more.
            let _ = self.out.send(out);
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// The deadline timer: answers with the fallback every job not answered by its fire
    /// time, starting early enough to answer all the pending ones by then, one after
    /// another ([`schedule::timer_start`]). Runs until [`Engine::stop`] and no timer is
    /// left.
    pub fn run_timer(&self) {
        let mut cost =
            schedule::FallbackCost::new(INITIAL_FALLBACK_COST, Duration::from_nanos(self.margin));
        let mut timers = self.timers.lock().expect("timer lock");
        loop {
            let now = self.clock.now();
            self.heartbeat.store(now, Ordering::Relaxed);
            // Read once per turn: the due check and the wait must agree on it.
            let pending = self.in_flight.load(Ordering::Acquire);
            let start = |fire_at: Nanos| schedule::timer_start(fire_at, pending, cost.planned());
            match timers.peek() {
                // Already answered: dropped at once, so that this thread sleeps until the
                // next job that may still need it instead of waking at every event's fire
                // time (5k wake-ups a second at 5k ev/s, each one preempting the event loop
                // at real-time priority).
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
                    timers = self.timers.lock().expect("timer lock");
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
                    timers = self
                        .timers_cv
                        .wait_timeout(timers, Duration::from_nanos(wake_at.saturating_sub(now)))
                        .expect("timer lock")
                        .0;
                }
                None if self.stopping.load(Ordering::Acquire) => return,
                None => {
                    self.timer_wake_at.store(u64::MAX, Ordering::Relaxed);
                    timers = self
                        .timers_cv
                        .wait_timeout(timers, Duration::from_millis(100))
                        .expect("timer lock")
                        .0;
                }
            }
        }
    }

    /// A worker: runs `models` (one instance per configured model) on queued jobs,
    /// earliest deadline first, as many at once as can still make it (up to the batch
    /// limit). Swaps in reloaded models received on `reloads` between runs. Runs until
    /// [`Engine::stop`] and an empty queue.
    pub fn run_worker(&self, mut models: Vec<Batches>, reloads: flume::Receiver<(usize, Batches)>) {
        let mut windows: Vec<f32> = Vec::with_capacity(self.max_batch * WINDOW_LEN);
        let mut temperatures: Vec<f32> = Vec::with_capacity(self.max_batch);
        let mut jobs: Vec<Arc<Job>> = Vec::with_capacity(self.max_batch);
        loop {
            while let Ok((idx, model)) = reloads.try_recv() {
                if let Some(m) = models.get_mut(idx) {
                    *m = model;
                }
            }
            let model_of = |job: &Arc<Job>| self.routes[job.route].model;
            let batch = {
                let mut q = self.queue.lock().expect("queue lock");
                loop {
                    let now = self.clock.now();
                    self.heartbeat.store(now, Ordering::Relaxed);
                    let pop = q.pop_batch(
                        now,
                        Duration::from_nanos(self.margin),
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
                        q = self.queue.lock().expect("queue lock");
                    }
                    if !pop.runnable.is_empty() {
                        break pop.runnable;
                    }
                    if self.stopping.load(Ordering::Acquire) && q.is_empty() {
                        return;
                    }
                    let last_run = self.last_run_at.load(Ordering::Relaxed);
                    let wait = idle_wait(now, (last_run != 0).then_some(last_run), self.held_poll);
                    q = self.queue_cv.wait_timeout(q, wait).expect("queue lock").0;
                }
            };
            jobs.clear();
            windows.clear();
            temperatures.clear();
            for job in batch.into_iter().map(|q| q.item) {
                if !matches!(job.slot.state(), SlotState::Pending) {
                    continue; // the timer already answered it
                }
                let before = windows.len();
                windows.extend(job.event.window.values());
                if windows.len() - before != WINDOW_LEN {
                    // Not a window the model takes (3 × 64): it would shift every row after
                    // it. The safe answer, at once.
                    windows.truncate(before);
                    self.answer_fallback(&job, MissCause::ModelError);
                    continue;
                }
                temperatures.push(job.event.temperature_c());
                job.state.store(RUNNING, Ordering::Release);
                jobs.push(job);
            }
            let Some(first) = jobs.first() else { continue };
            let model = model_of(first);
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
                let slot = &self.models[self.routes[job.route].model];
                let action = model.action(p.class).unwrap_or(Action::Stop);
                let serving = slot.current.lock().expect("model ref lock").clone();
                let run = ModelRun {
                    logits: p.logits,
                    queue_ns,
                    infer_ns: done - started,
                };
                self.send(
                    job,
                    action,
                    p.class,
                    DecisionSource::Model,
                    serving,
                    Some(run),
                    None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn models_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
    }

    /// An engine with one postcard route on the real edge model (a 5 s budget, a queue of
    /// 64), its commands on `rx`.
    fn engine(
        max_batch: usize,
        expected_ns: &[u64],
    ) -> (Engine, tokio::sync::mpsc::UnboundedReceiver<Outbound>) {
        engine_with(
            Duration::from_secs(5),
            Duration::from_micros(200),
            64,
            max_batch,
            expected_ns,
        )
    }

    /// [`engine`] with the route's `budget`, a safety `margin` and a queue of `capacity`.
    fn engine_with(
        budget: Duration,
        margin: Duration,
        capacity: usize,
        max_batch: usize,
        expected_ns: &[u64],
    ) -> (Engine, tokio::sync::mpsc::UnboundedReceiver<Outbound>) {
        let fallback = Fallback::load(models_dir().join("fallback.manifest.json")).unwrap();
        let slot = ModelSlot {
            current: Mutex::new(ModelRef {
                name: heapless::String::try_from("edge").unwrap(),
                version: heapless::String::try_from("1.0.0").unwrap(),
            }),
            expected_ns: expected_ns.iter().map(|&n| AtomicU64::new(n)).collect(),
            fallback_ref: ModelRef {
                name: heapless::String::try_from("fallback").unwrap(),
                version: heapless::String::try_from("1.0.0").unwrap(),
            },
            fallback,
        };
        let route = RouteRuntime {
            command_topic: "actuators/{device}/cmd".into(),
            format: Format::Postcard,
            budget,
            qos_out: 1,
            model: 0,
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let metrics = Arc::new(Metrics::new(&["vibration".to_owned()]));
        let e = Engine::new(
            vec![route],
            vec![slot],
            metrics,
            capacity,
            margin,
            max_batch,
            tx,
        );
        (e, rx)
    }

    /// An event of simulated device `i` (conditions in turn), arriving now.
    fn arrival(e: &Engine, i: u32) -> Arrival {
        use reflex_sim::device::SimDevice;
        use reflex_sim::signal::{Condition, Distortion};
        let c = Condition::ALL[i as usize % Condition::ALL.len()];
        Arrival {
            route: 0,
            event: SimDevice::new(i, c, 7).next_event(0, Distortion::NONE),
            payload: Bytes::new(),
            at: e.clock.now(),
            unix_us: 0,
            decode_ns: 0,
            ack: None,
        }
    }

    /// Accepts `n` events from distinct simulated devices (of every condition in turn).
    fn accept_events(e: &Engine, n: u32) -> Vec<SensorEvent> {
        let mut accepted = Vec::new();
        for i in 0..n {
            let a = arrival(e, i);
            accepted.push(a.event.clone());
            e.accept(a);
        }
        accepted
    }

    /// Stops the engine when dropped, also while a failed assertion unwinds: the worker in
    /// the test's thread scope then returns, and the test fails instead of hanging.
    struct StopOnDrop<'a>(&'a Engine);

    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.stop();
        }
    }

    fn wait_until_answered(e: &Engine) {
        let start = Instant::now();
        while e.in_flight() > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} events still unanswered after 10 s",
                e.in_flight()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Runs `body` while one worker (the edge model, batches up to `max_batch`) serves `e`;
    /// the engine stops when `body` returns or fails.
    fn with_worker<R>(e: &Engine, max_batch: usize, body: impl FnOnce() -> R) -> R {
        let model = Batches::load(models_dir().join("edge.manifest.json"), max_batch).unwrap();
        let (_reload_tx, reload_rx) = flume::unbounded();
        std::thread::scope(|s| {
            s.spawn(|| e.run_worker(vec![model], reload_rx));
            let _stop = StopOnDrop(e);
            body()
        })
    }

    /// Runs one worker on what is queued until every accepted event is answered.
    fn run_worker_until_answered(e: &Engine, max_batch: usize) {
        with_worker(e, max_batch, || wait_until_answered(e));
    }

    fn decisions(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Outbound>) -> Vec<Command> {
        let mut out = Vec::new();
        while let Ok(o) = rx.try_recv() {
            out.push(Command::decode(&o.payload).unwrap());
        }
        out
    }

    /// The worker made `runs` model runs on `windows` events in all.
    fn assert_model_runs(e: &Engine, runs: u64, windows: u64) {
        let text = e.metrics.render();
        assert!(
            text.contains(&format!("\nreflexd_model_runs_total {runs}\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("\nreflexd_model_run_windows_total {windows}\n")),
            "{text}"
        );
    }

    #[test]
    fn a_burst_no_model_answers_is_answered_whole_by_the_timer_within_its_budget() {
        // 20000 events that arrived together (a burst read at once), a 200 ms budget, no
        // worker: the timer answers every one. Were it to answer each at its own fire time,
        // one after another, 20000 answers (80-100 ms here) would run past the deadline
        // (17000 of them were late). The 20 ms margin absorbs this machine's scheduling
        // delays (the unit tests run in parallel, at normal priority).
        let n = 20_000;
        let budget = Duration::from_millis(200);
        let (e, mut rx) = engine_with(budget, Duration::from_millis(20), n, 8, &[50_000; 8]);
        let mut burst: Vec<Arrival> = (0..n as u32).map(|i| arrival(&e, i)).collect();
        let arrived = e.clock.now();
        for a in &mut burst {
            a.at = arrived;
        }
        std::thread::scope(|s| {
            s.spawn(|| e.run_timer());
            let _stop = StopOnDrop(&e);
            for a in burst {
                e.accept_held(a);
            }
            wait_until_answered(&e);
        });
        let commands = decisions(&mut rx);
        assert_eq!(commands.len(), n);
        assert!(commands
            .iter()
            .all(|c| c.source == DecisionSource::Fallback));
        let late: Vec<_> = commands
            .iter()
            .filter(|c| u128::from(c.latency_us) > budget.as_micros())
            .map(|c| (c.seq, c.latency_us))
            .collect();
        assert!(
            late.is_empty(),
            "{} late, e.g. {:?}",
            late.len(),
            &late[..late.len().min(5)]
        );
        // The timer answered some itself (its measured cost is 0 until it has).
        let text = e.metrics.render();
        assert!(
            !text.contains("\nreflexd_fallback_answer_cost_seconds 0\n"),
            "{text}"
        );
    }

    #[test]
    fn events_waiting_together_are_answered_by_one_model_run_each_as_alone() {
        let (e, mut rx) = engine(8, &[50_000; 8]);
        let events = accept_events(&e, 5);
        run_worker_until_answered(&e, 8);
        assert_model_runs(&e, 1, 5);
        let commands = decisions(&mut rx);
        assert_eq!(commands.len(), 5);
        // Each command is what the model says about that event alone.
        let mut alone = Model::load(models_dir().join("edge.manifest.json")).unwrap();
        let mut classes = std::collections::BTreeSet::new();
        for ev in &events {
            let c = commands
                .iter()
                .find(|c| c.device == ev.device && c.seq == ev.seq)
                .unwrap_or_else(|| panic!("no command for {}", ev.device));
            assert_eq!(c.source, DecisionSource::Model);
            let p = alone.predict(&window_g(ev), ev.temperature_c()).unwrap();
            assert_eq!(usize::from(c.class), p.class, "device {}", c.device);
            classes.insert(c.class);
        }
        // Rows that differ: a batch that mixed them up would show.
        assert!(classes.len() > 1, "every event got class {classes:?}");
    }

    #[test]
    fn a_batch_is_cut_where_its_run_would_overrun_the_earliest_deadline() {
        // 5 s budget, 200 µs margin; a run of 3 or more windows is expected to take 6 s.
        let (e, mut rx) = engine(8, &[1_000, 2_000, 6_000_000_000]);
        accept_events(&e, 5);
        run_worker_until_answered(&e, 8);
        assert_model_runs(&e, 3, 5);
        let commands = decisions(&mut rx);
        assert_eq!(commands.len(), 5);
        assert!(commands.iter().all(|c| c.source == DecisionSource::Model));
    }

    #[test]
    fn events_queued_held_wait_for_the_wake_up_and_run_as_one_batch() {
        // The ingest queues a burst it read in one go without waking the worker, spending
        // a decode's time (here 200 µs, far more) between events, then wakes it once. The
        // worker also turns by itself every 100 ms; an attempt where it did so while the
        // events were held proves nothing and is run again.
        for _attempt in 0..5 {
            let (e, mut rx) = engine(8, &[50_000; 8]);
            let undisturbed = with_worker(&e, 8, || {
                // The worker stamps its heartbeat under the queue lock and only gives the
                // lock up by waiting: once the stamp is there, the next lock taken by
                // accept_held finds it asleep.
                let start = Instant::now();
                while e.heartbeat.load(Ordering::Relaxed) == 0 {
                    assert!(
                        start.elapsed() < Duration::from_secs(10),
                        "worker never ran"
                    );
                    std::thread::yield_now();
                }
                let stamp = e.heartbeat.load(Ordering::Relaxed);
                for i in 0..5 {
                    assert!(e.accept_held(arrival(&e, i)));
                    let decoding = Instant::now();
                    while decoding.elapsed() < Duration::from_micros(200) {
                        std::hint::spin_loop();
                    }
                }
                let undisturbed = e.heartbeat.load(Ordering::Relaxed) == stamp;
                e.wake_workers();
                wait_until_answered(&e);
                undisturbed
            });
            assert_eq!(decisions(&mut rx).len(), 5);
            if undisturbed {
                assert_model_runs(&e, 1, 5);
                return;
            }
        }
        panic!(
            "the worker turned while events were held in 5 attempts out of 5: held events woke it"
        );
    }

    #[test]
    fn held_events_whose_wake_up_never_comes_are_run_by_the_workers_own_look_while_events_flow() {
        // 5 s budget: the worker looks every 2 ms while events flow. The ingest thread
        // queues three events held and is then (say) kept off its core: nobody wakes the
        // worker, and no deadline timer runs in this test, so only the worker's own look
        // can answer them, well within 80 ms (its idle 100 ms wait would not; the fallback
        // would wait 4.8 s).
        let (e, mut rx) = engine(8, &[50_000; 8]);
        with_worker(&e, 8, || {
            e.accept(arrival(&e, 0));
            wait_until_answered(&e);
            for i in 1..4 {
                assert!(e.accept_held(arrival(&e, i)));
            }
            let start = Instant::now();
            while e.in_flight() > 0 {
                assert!(
                    start.elapsed() < Duration::from_millis(80),
                    "held events not run within 80 ms without a wake-up"
                );
                std::thread::yield_now();
            }
        });
        let commands = decisions(&mut rx);
        assert_eq!(commands.len(), 4);
        assert!(commands.iter().all(|c| c.source == DecisionSource::Model));
    }

    #[test]
    fn an_idle_worker_looks_often_only_while_events_flow() {
        let poll = held_poll([Duration::from_millis(5), Duration::from_millis(20)].into_iter());
        assert_eq!(poll, Duration::from_micros(1250));
        assert_eq!(
            held_poll(std::iter::once(Duration::from_micros(200))),
            Duration::from_micros(100)
        );
        assert_eq!(
            held_poll(std::iter::once(Duration::from_secs(5))),
            Duration::from_millis(2)
        );
        assert_eq!(held_poll(std::iter::empty()), Duration::from_millis(2));
        let ms = 1_000_000;
        assert_eq!(idle_wait(500 * ms, Some(450 * ms), poll), poll);
        assert_eq!(
            idle_wait(500 * ms, Some(300 * ms), poll),
            Duration::from_millis(100)
        );
        assert_eq!(idle_wait(500 * ms, None, poll), Duration::from_millis(100));
    }
}
