//! Deadline scheduling: every accepted event gets exactly one command, no later than its
//! deadline.
//!
//! Everything here is pure: the caller passes monotonic time in as [`Nanos`] (nanoseconds
//! since any fixed origin, e.g. a process-start `Instant`), so every rule is testable with
//! a fake clock. The daemon's life of an event:
//!
//! 1. [`deadline`]: arrival + the route's budget, shortened (never lengthened) by the
//!    sensor's hint.
//! 2. [`admit`]: if the model cannot finish in time even if started now, the event goes
//!    straight to the fallback ([`MissCause::CannotMakeIt`]) without wasting model time.
//! 3. [`EdfQueue::push`]: earliest deadline first; a full queue hands the event back
//!    ([`MissCause::QueueFull`]).
//! 4. [`EdfQueue::pop_runnable`]: a worker takes the earliest event that can still make it
//!    and gets back the ones that cannot ([`MissCause::ExpiredInQueue`]).
//! 5. [`DecisionSlot`] / [`AtomicDecision`]: the model's answer and the fallback timer
//!    (armed at deadline − safety margin) race; the slot lets exactly one of them actuate.
//!    The timer starts early enough to answer everything pending by then, one at a time
//!    ([`timer_start`], with [`FallbackCost`]).
//!
//! [`calibrate`] and [`budget_check`] decide at start-up whether a model can meet a
//! route's budget at all.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU8, Ordering as AtomicOrdering};
use std::time::Duration;

pub use crate::pipeline::types::{nanos, MissCause, Nanos};

/// The instant by which the event must be answered: `arrival + budget`, or
/// `arrival + hint` when the sensor's hint is shorter. A hint may only shorten the
/// budget, never lengthen it; a zero hint makes the deadline the arrival itself (the
/// event then goes straight to the fallback).
pub fn deadline(arrival: Nanos, budget: Duration, hint_us: Option<u32>) -> Nanos {
    let budget_ns = nanos(budget);
    let allowed = match hint_us {
        Some(hint) => budget_ns.min(u64::from(hint).saturating_mul(1_000)),
        None => budget_ns,
    };
    arrival.saturating_add(allowed)
}

/// Whether a model run started at `now` and taking `expected_infer`, plus the safety
/// margin, still ends by `deadline`.
pub fn can_make_it(
    now: Nanos,
    deadline: Nanos,
    expected_infer: Duration,
    margin: Duration,
) -> bool {
    now.saturating_add(nanos(expected_infer))
        .saturating_add(nanos(margin))
        <= deadline
}

/// What to do with an arriving event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Queue it for the model.
    Model,
    /// Answer it with the fallback right away, for this reason.
    FallbackNow(MissCause),
}

/// Admission control: an event whose deadline cannot be met even if the model started now
/// (`now + expected_infer + margin > deadline`) goes straight to the fallback with
/// [`MissCause::CannotMakeIt`], without spending model time on it.
pub fn admit(now: Nanos, deadline: Nanos, expected_infer: Duration, margin: Duration) -> Admission {
    if can_make_it(now, deadline, expected_infer, margin) {
        Admission::Model
    } else {
        Admission::FallbackNow(MissCause::CannotMakeIt)
    }
}

/// An item taken out of an [`EdfQueue`], with its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued<T> {
    /// The item's deadline.
    pub deadline: Nanos,
    /// The item.
    pub item: T,
}

/// What a worker gets from [`EdfQueue::pop_runnable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pop<T> {
    /// The earliest-deadline item that can still make it, if any.
    pub runnable: Option<Queued<T>>,
    /// Items that can no longer make it, earliest deadline first: answer each with the
    /// fallback, cause [`MissCause::ExpiredInQueue`]. Empty (and unallocated) in the
    /// common case.
    pub expired: Vec<Queued<T>>,
}

/// What a worker gets from [`EdfQueue::pop_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<T> {
    /// Items to run together, earliest deadline first (empty: nothing can make it).
    pub runnable: Vec<Queued<T>>,
    /// As [`Pop::expired`].
    pub expired: Vec<Queued<T>>,
}

struct Entry<T> {
    deadline: Nanos,
    order: u64,
    item: T,
}

impl<T> Entry<T> {
    fn key(&self) -> (Nanos, u64) {
        (self.deadline, self.order)
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    /// Reversed, so that the max-heap yields the earliest deadline, then the earliest
    /// insertion.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key().cmp(&self.key())
    }
}

/// A bounded earliest-deadline-first queue. Equal deadlines leave in insertion order.
pub struct EdfQueue<T> {
    heap: BinaryHeap<Entry<T>>,
    capacity: usize,
    next_order: u64,
}

impl<T> EdfQueue<T> {
    /// An empty queue holding at most `capacity` items (0 refuses every push).
    pub fn new(capacity: usize) -> Self {
        Self {
            heap: BinaryHeap::with_capacity(capacity.min(1 << 16)),
            capacity,
            next_order: 0,
        }
    }

    /// Queues `item`; when the queue is full it is handed back, to be answered by the
    /// fallback at once with [`MissCause::QueueFull`].
    pub fn push(&mut self, deadline: Nanos, item: T) -> Result<(), T> {
        if self.heap.len() >= self.capacity {
            return Err(item);
        }
        let order = self.next_order;
        self.next_order += 1;
        self.heap.push(Entry {
            deadline,
            order,
            item,
        });
        Ok(())
    }

    /// Takes the earliest-deadline item that can still make it (see [`can_make_it`]);
    /// items ahead of it that can no longer make it are handed back in
    /// [`Pop::expired`]. Later items are left queued.
    pub fn pop_runnable(
        &mut self,
        now: Nanos,
        expected_infer: Duration,
        margin: Duration,
    ) -> Pop<T> {
        let batch = self.pop_batch(now, margin, 1, |_, _| expected_infer, |_, _| false);
        Pop {
            runnable: batch.runnable.into_iter().next(),
            expired: batch.expired,
        }
    }

    /// Takes a batch to run in one model call: the earliest-deadline item that can still
    /// make it alone (`expected(item, 1)`), then, in deadline order, up to `max` items in
    /// all, each while `joins(first, next)` (e.g. same model) and a run of the batch so
    /// far plus it (`expected(first, k)`) still meets the first item's deadline. The first
    /// deadline is the earliest, so every item in the batch meets its own. Items ahead of
    /// the first that can no longer make it are handed back in [`Batch::expired`]; the
    /// rest stays queued.
    pub fn pop_batch(
        &mut self,
        now: Nanos,
        margin: Duration,
        max: usize,
        expected: impl Fn(&T, usize) -> Duration,
        joins: impl Fn(&T, &T) -> bool,
    ) -> Batch<T> {
        let mut expired = Vec::new();
        let first = loop {
            let Some(top) = self.heap.pop() else {
                return Batch {
                    runnable: Vec::new(),
                    expired,
                };
            };
            let queued = Queued {
                deadline: top.deadline,
                item: top.item,
            };
            if can_make_it(now, queued.deadline, expected(&queued.item, 1), margin) {
                break queued;
            }
            expired.push(queued);
        };
        let mut rest = Vec::new();
        while rest.len() + 1 < max {
            let k = rest.len() + 2;
            let fits = self.heap.peek().is_some_and(|next| {
                joins(&first.item, &next.item)
                    && can_make_it(now, first.deadline, expected(&first.item, k), margin)
            });
            if !fits {
                break;
            }
            if let Some(next) = self.heap.pop() {
                rest.push(Queued {
                    deadline: next.deadline,
                    item: next.item,
                });
            }
        }
        let mut runnable = Vec::with_capacity(rest.len() + 1);
        runnable.push(first);
        runnable.extend(rest);
        Batch { runnable, expired }
    }

    /// Empties the queue, earliest deadline first (e.g. at shutdown, to answer every
    /// queued event with the fallback).
    pub fn drain(&mut self) -> Vec<Queued<T>> {
        let mut out = Vec::with_capacity(self.heap.len());
        while let Some(e) = self.heap.pop() {
            out.push(Queued {
                deadline: e.deadline,
                item: e.item,
            });
        }
        out
    }

    /// The earliest queued deadline.
    pub fn peek_deadline(&self) -> Option<Nanos> {
        self.heap.peek().map(|e| e.deadline)
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The bound given to [`EdfQueue::new`].
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Who answered an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decider {
    /// The model, within the deadline.
    Model,
    /// The fallback.
    Fallback,
}

/// The state of one event's [`DecisionSlot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotState {
    /// No command sent yet.
    Pending,
    /// A command was sent, by this decider. Final.
    Answered(Decider),
}

/// What the offerer must do with its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Publish the command: this offer won the slot. Returned at most once per slot.
    Actuate,
    /// The model's answer came after the deadline or after the fallback: record it
    /// ([`MissCause::ModelTooSlow`]), never actuate it. If the slot is still pending the
    /// fallback must still answer (the timer will, or the caller may offer it right away).
    LateModel,
    /// The fallback's offer came after the model had answered: drop it.
    AlreadyAnswered,
}

/// The per-event arbiter between the model's answer and the fallback.
///
/// Exactly one command per event: [`Outcome::Actuate`] is returned only by the single
/// `Pending → Answered` transition in `claim`, and `Answered` is final. The model may
/// only claim it while `now <= deadline`. For a slot shared between a worker thread and a
/// timer, use [`AtomicDecision`], which has the same API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionSlot {
    state: SlotState,
}

impl Default for DecisionSlot {
    fn default() -> Self {
        Self::new()
    }
}

impl DecisionSlot {
    /// A pending slot.
    pub const fn new() -> Self {
        Self {
            state: SlotState::Pending,
        }
    }

    /// The current state.
    pub fn state(&self) -> SlotState {
        self.state
    }

    /// The only transition out of `Pending`; true iff this call made it.
    fn claim(&mut self, by: Decider) -> bool {
        if self.state == SlotState::Pending {
            self.state = SlotState::Answered(by);
            true
        } else {
            false
        }
    }

    /// The model's answer is ready at `now`: [`Outcome::Actuate`] if the slot is pending
    /// and `now <= deadline`, else [`Outcome::LateModel`].
    pub fn offer_model(&mut self, now: Nanos, deadline: Nanos) -> Outcome {
        if now <= deadline && self.claim(Decider::Model) {
            Outcome::Actuate
        } else {
            Outcome::LateModel
        }
    }

    /// The fallback is ready (timer fired, event refused or model failed):
    /// [`Outcome::Actuate`] if the slot is pending, else [`Outcome::AlreadyAnswered`].
    pub fn offer_fallback(&mut self) -> Outcome {
        if self.claim(Decider::Fallback) {
            Outcome::Actuate
        } else {
            Outcome::AlreadyAnswered
        }
    }
}

const PENDING: u8 = 0;
const BY_MODEL: u8 = 1;
const BY_FALLBACK: u8 = 2;

/// [`DecisionSlot`] shareable between threads (e.g. in an `Arc`): the same state machine
/// on an `AtomicU8`, whose single `compare_exchange(PENDING, ..)` in `claim` is the only
/// transition, so exactly one racer ever gets [`Outcome::Actuate`].
#[derive(Debug)]
pub struct AtomicDecision {
    state: AtomicU8,
}

impl Default for AtomicDecision {
    fn default() -> Self {
        Self::new()
    }
}

impl AtomicDecision {
    /// A pending slot.
    pub const fn new() -> Self {
        Self {
            state: AtomicU8::new(PENDING),
        }
    }

    /// The current state.
    pub fn state(&self) -> SlotState {
        match self.state.load(AtomicOrdering::Acquire) {
            BY_MODEL => SlotState::Answered(Decider::Model),
            BY_FALLBACK => SlotState::Answered(Decider::Fallback),
            _ => SlotState::Pending,
        }
    }

    /// The only transition out of `Pending`; true iff this call made it.
    fn claim(&self, by: Decider) -> bool {
        let to = match by {
            Decider::Model => BY_MODEL,
            Decider::Fallback => BY_FALLBACK,
        };
        self.state
            .compare_exchange(PENDING, to, AtomicOrdering::AcqRel, AtomicOrdering::Acquire)
            .is_ok()
    }

    /// As [`DecisionSlot::offer_model`].
    pub fn offer_model(&self, now: Nanos, deadline: Nanos) -> Outcome {
        if now <= deadline && self.claim(Decider::Model) {
            Outcome::Actuate
        } else {
            Outcome::LateModel
        }
    }

    /// As [`DecisionSlot::offer_fallback`].
    pub fn offer_fallback(&self) -> Outcome {
        if self.claim(Decider::Fallback) {
            Outcome::Actuate
        } else {
            Outcome::AlreadyAnswered
        }
    }
}

/// When the deadline timer must start answering its earliest pending job, whose fire time
/// is `fire_at`, while `pending` jobs are not answered yet and one fallback answer costs it
/// `cost`: `fire_at − pending × cost`.
///
/// The timer answers one job at a time. Were it to wait for each job's own fire time, the
/// last of n jobs due together (the events a broker held back and sends at once when acks
/// resume) would be answered (n − 1) × cost past it. Starting this much earlier answers
/// every one by its fire time whatever their spread (`timer_start_answers_every_job_by_its_fire_time`).
/// Counting every pending job as due with the earliest is conservative: at worst a job gets
/// the fallback earlier than it had to, never later. In steady flow few jobs are pending
/// and the start is the fire time within a few µs.
pub fn timer_start(fire_at: Nanos, pending: u64, cost: Nanos) -> Nanos {
    fire_at.saturating_sub(pending.saturating_mul(cost))
}

/// Whether the deadline timer can take one more job with fire time `fire_at` at `now`,
/// with `pending` jobs not answered yet (this one included) at `cost` each: its
/// [`timer_start`] has not passed. When it has, even a timer starting now would answer
/// this job late, so it is answered on arrival instead ([`MissCause::FallbackBacklog`]).
/// That also paces a burst's intake to what its fallbacks cost.
pub fn timer_can_take(now: Nanos, fire_at: Nanos, pending: u64, cost: Nanos) -> bool {
    timer_start(fire_at, pending, cost) >= now
}

/// The deadline timer's running estimate of what one fallback answer costs it (for
/// [`timer_start`]): a moving average (weight 1/16) of the answers it measures, each
/// counted at most `cap`, so that one answer preempted for a long while does not bring
/// every fire time forward by that much per pending job.
///
/// The timer plans with twice the average ([`FallbackCost::planned`]): a run of answers is
/// not a run of average ones (a preempted answer costs far more than the median, and the
/// average of the last few answers understates the run's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallbackCost {
    ns: Nanos,
    cap: Nanos,
}

impl FallbackCost {
    /// Starts at `initial` (before any fallback is measured); counts samples at most `cap`.
    pub fn new(initial: Duration, cap: Duration) -> Self {
        let cap = nanos(cap).max(1);
        FallbackCost {
            ns: nanos(initial).min(cap),
            cap,
        }
    }

    /// Adds one measured answer.
    pub fn observe(&mut self, took: Duration) {
        let sample = nanos(took).min(self.cap);
        self.ns = self.ns - self.ns / 16 + sample / 16;
    }

    /// The moving average.
    pub fn mean(&self) -> Nanos {
        self.ns
    }

    /// What the timer plans one answer at: twice the average.
    pub fn planned(&self) -> Nanos {
        self.ns.saturating_mul(2)
    }
}

/// A model's measured inference latency, from [`calibrate`]. All in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencyProfile {
    /// Number of samples measured.
    pub samples: usize,
    /// Median.
    pub p50: Nanos,
    /// 99th percentile.
    pub p99: Nanos,
    /// 99.9th percentile: what admission and [`budget_check`] rely on.
    pub p999: Nanos,
    /// Slowest sample.
    pub max: Nanos,
}

impl LatencyProfile {
    /// The inference time to plan for in [`admit`] and [`EdfQueue::pop_runnable`]: p99.9.
    pub fn expected_infer(&self) -> Duration {
        Duration::from_nanos(self.p999)
    }
}

/// Nearest-rank percentile of sorted samples, `per_mille` in 1..=1000.
fn percentile(sorted: &[u64], per_mille: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() * per_mille).div_ceil(1000).max(1);
    sorted[rank - 1]
}

/// Summarises calibration runs (inference latencies in ns; sorted in place) with
/// nearest-rank percentiles. No samples gives an all-zero profile, which
/// [`budget_check`] refuses.
pub fn calibrate(samples_ns: &mut [u64]) -> LatencyProfile {
    samples_ns.sort_unstable();
    LatencyProfile {
        samples: samples_ns.len(),
        p50: percentile(samples_ns, 500),
        p99: percentile(samples_ns, 990),
        p999: percentile(samples_ns, 999),
        max: samples_ns.last().copied().unwrap_or(0),
    }
}

/// Why a model cannot serve a route's budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// Calibration measured nothing.
    #[error("no calibration samples: cannot judge the budget of {budget:?}")]
    NoSamples {
        /// The route's budget.
        budget: Duration,
    },
    /// p99.9 + margin does not fit strictly inside the budget.
    #[error(
        "model p99.9 latency {p999:?} + safety margin {margin:?} = {total:?} is not below the budget of {budget:?}"
    )]
    Unmeetable {
        /// Measured p99.9.
        p999: Duration,
        /// The scheduler's safety margin.
        margin: Duration,
        /// Their sum.
        total: Duration,
        /// The route's budget.
        budget: Duration,
    },
}

/// Start-up verdict: the model can serve `budget` only if `p99.9 + margin < budget`.
pub fn budget_check(
    profile: &LatencyProfile,
    budget: Duration,
    margin: Duration,
) -> Result<(), BudgetError> {
    if profile.samples == 0 {
        return Err(BudgetError::NoSamples { budget });
    }
    let p999 = Duration::from_nanos(profile.p999);
    let total = p999.saturating_add(margin);
    if total < budget {
        Ok(())
    } else {
        Err(BudgetError::Unmeetable {
            p999,
            margin,
            total,
            budget,
        })
    }
}

#[cfg(test)]
mod tests;
