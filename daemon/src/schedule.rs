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

/// Monotonic time in nanoseconds, passed in by the caller (never read here).
pub type Nanos = u64;

/// A duration in nanoseconds, saturating at `u64::MAX` (about 584 years).
pub fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

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

/// Why an event was answered by the fallback instead of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MissCause {
    /// The scheduler queue was full when the event arrived.
    QueueFull,
    /// On arrival, the expected inference time plus the margin already overran the deadline.
    CannotMakeIt,
    /// The event waited in the queue until it could no longer make it.
    ExpiredInQueue,
    /// The model answered after the deadline; the fallback had already been sent.
    ModelTooSlow,
    /// The model failed (error or panic) on this event.
    ModelError,
    /// On arrival, the fallbacks already pending left the deadline timer no time to answer
    /// this one too by its deadline ([`timer_can_take`]): a burst larger than the timer
    /// can answer alone, so the thread that took it in answers it at once.
    FallbackBacklog,
}

impl MissCause {
    /// Every cause, for registering metrics label values up front.
    pub const ALL: [MissCause; 6] = [
        MissCause::QueueFull,
        MissCause::CannotMakeIt,
        MissCause::ExpiredInQueue,
        MissCause::ModelTooSlow,
        MissCause::ModelError,
        MissCause::FallbackBacklog,
    ];

    /// A short stable name, fit for a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            MissCause::QueueFull => "queue_full",
            MissCause::CannotMakeIt => "cannot_make_it",
            MissCause::ExpiredInQueue => "expired_in_queue",
            MissCause::ModelTooSlow => "model_too_slow",
            MissCause::ModelError => "model_error",
            MissCause::FallbackBacklog => "fallback_backlog",
        }
    }
}

impl std::fmt::Display for MissCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
/// not a run of average ones. Measured here in a run of 5000 (engine test, normal
/// priority): p50 2 µs, p90 4 µs, but p99 ~190 µs (the thread preempted), a mean of 3.5 µs
/// over the run while the average of the last few answers read 2 µs when the timer planned
/// it.
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
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::{Arc, Barrier};

    const MS: Nanos = 1_000_000;
    const US: Nanos = 1_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn deadline_is_arrival_plus_budget_without_hint() {
        assert_eq!(deadline(10 * MS, ms(5), None), 15 * MS);
    }

    #[test]
    fn hint_shortens_the_deadline_but_never_lengthens_it() {
        assert_eq!(deadline(10 * MS, ms(5), Some(2_000)), 12 * MS);
        assert_eq!(deadline(10 * MS, ms(5), Some(9_000)), 15 * MS);
        assert_eq!(deadline(10 * MS, ms(5), Some(u32::MAX)), 15 * MS);
        assert_eq!(deadline(10 * MS, ms(5), Some(0)), 10 * MS);
    }

    #[test]
    fn deadline_saturates_instead_of_wrapping() {
        assert_eq!(deadline(u64::MAX - 1, ms(5), None), u64::MAX);
    }

    #[test]
    fn event_past_deadline_gets_fallback() {
        let d = deadline(0, ms(5), None);
        assert_eq!(
            admit(6 * MS, d, us(500), us(200)),
            Admission::FallbackNow(MissCause::CannotMakeIt)
        );
    }

    #[test]
    fn event_that_cannot_finish_in_time_gets_fallback_without_model_time() {
        // 4.5 ms in: 0.5 ms left, but inference 0.4 ms + margin 0.2 ms = 0.6 ms.
        let d = deadline(0, ms(5), None);
        assert_eq!(
            admit(4_500 * US, d, us(400), us(200)),
            Admission::FallbackNow(MissCause::CannotMakeIt)
        );
        // Exactly fitting is admitted.
        assert_eq!(admit(4_400 * US, d, us(400), us(200)), Admission::Model);
    }

    #[test]
    fn edf_queue_pops_earliest_deadline_first() {
        let mut q = EdfQueue::new(8);
        q.push(30, "c").unwrap();
        q.push(10, "a").unwrap();
        q.push(20, "b").unwrap();
        let order: Vec<_> = (0..3)
            .map(|_| {
                q.pop_runnable(0, Duration::ZERO, Duration::ZERO)
                    .runnable
                    .unwrap()
                    .item
            })
            .collect();
        assert_eq!(order, ["a", "b", "c"]);
        assert!(q.is_empty());
    }

    #[test]
    fn equal_deadlines_leave_in_insertion_order() {
        let mut q = EdfQueue::new(8);
        for i in 0..5 {
            q.push(100, i).unwrap();
        }
        let drained: Vec<_> = q.drain().into_iter().map(|x| x.item).collect();
        assert_eq!(drained, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn full_queue_hands_the_item_back() {
        let mut q = EdfQueue::new(2);
        q.push(1, 'a').unwrap();
        q.push(2, 'b').unwrap();
        assert_eq!(q.push(0, 'c'), Err('c'));
        assert_eq!(q.len(), 2);
        assert_eq!(q.capacity(), 2);
    }

    #[test]
    fn zero_capacity_queue_refuses_everything() {
        let mut q = EdfQueue::new(0);
        assert_eq!(q.push(1, ()), Err(()));
    }

    #[test]
    fn expired_items_are_returned_from_pop_runnable() {
        let mut q = EdfQueue::new(8);
        q.push(5 * MS, "late1").unwrap();
        q.push(6 * MS, "late2").unwrap();
        q.push(9 * MS, "fine").unwrap();
        q.push(12 * MS, "later").unwrap();
        // now 5.5 ms, inference 1 ms, margin 0.2 ms: anything due before 6.7 ms is lost.
        let pop = q.pop_runnable(5_500 * US, ms(1), us(200));
        let expired: Vec<_> = pop.expired.iter().map(|x| x.item).collect();
        assert_eq!(expired, ["late1", "late2"]);
        assert_eq!(pop.runnable.map(|x| x.item), Some("fine"));
        assert_eq!(q.len(), 1);
        assert_eq!(q.peek_deadline(), Some(12 * MS));
    }

    #[test]
    fn pop_runnable_on_all_expired_queue_returns_them_all_and_nothing_to_run() {
        let mut q = EdfQueue::new(8);
        q.push(1, 1).unwrap();
        q.push(2, 2).unwrap();
        let pop = q.pop_runnable(100, Duration::ZERO, Duration::ZERO);
        assert!(pop.runnable.is_none());
        assert_eq!(pop.expired.len(), 2);
        assert!(q.is_empty());
    }

    /// Test items for batches: (model, name).
    type Tagged = (usize, &'static str);

    fn names(items: &[Queued<Tagged>]) -> Vec<&'static str> {
        items.iter().map(|q| q.item.1).collect()
    }

    fn same_model(a: &Tagged, b: &Tagged) -> bool {
        a.0 == b.0
    }

    #[test]
    fn a_batch_takes_queued_items_of_one_model_in_deadline_order_up_to_the_maximum() {
        let mut q = EdfQueue::new(8);
        for (d, name) in [(4, "d"), (1, "a"), (3, "c"), (2, "b"), (5, "e")] {
            q.push(10 * MS + d * US, (0, name)).unwrap();
        }
        let b = q.pop_batch(0, us(200), 3, |_, k| us(20 * k as u64), same_model);
        assert_eq!(names(&b.runnable), ["a", "b", "c"]);
        assert!(b.expired.is_empty());
        assert_eq!(q.len(), 2);
        let b = q.pop_batch(0, us(200), 3, |_, k| us(20 * k as u64), same_model);
        assert_eq!(names(&b.runnable), ["d", "e"]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_batch_stops_at_an_item_for_another_model_and_leaves_it_queued() {
        let mut q = EdfQueue::new(8);
        q.push(MS, (0, "a")).unwrap();
        q.push(2 * MS, (0, "b")).unwrap();
        q.push(3 * MS, (1, "other")).unwrap();
        q.push(4 * MS, (0, "c")).unwrap();
        let b = q.pop_batch(0, us(200), 8, |_, _| us(10), same_model);
        assert_eq!(names(&b.runnable), ["a", "b"]);
        assert_eq!(q.peek_deadline(), Some(3 * MS));
    }

    #[test]
    fn a_batch_grows_only_while_its_run_still_meets_the_first_deadline() {
        let mut q = EdfQueue::new(8);
        for name in ["a", "b", "c", "d", "e"] {
            q.push(MS, (0, name)).unwrap();
        }
        // 1 ms left, margin 200 µs: 800 µs of run time; each window costs 250 µs more.
        let b = q.pop_batch(0, us(200), 8, |_, k| us(250 * k as u64), same_model);
        assert_eq!(names(&b.runnable), ["a", "b", "c"]);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn a_batch_hands_back_the_items_ahead_of_it_that_can_no_longer_make_it() {
        let mut q = EdfQueue::new(8);
        q.push(5 * MS, (0, "late")).unwrap();
        q.push(9 * MS, (0, "a")).unwrap();
        q.push(9 * MS, (0, "b")).unwrap();
        let b = q.pop_batch(5_500 * US, us(200), 8, |_, k| ms(k as u64), same_model);
        assert_eq!(names(&b.expired), ["late"]);
        assert_eq!(names(&b.runnable), ["a", "b"]);
        let b = q.pop_batch(MS, us(200), 8, |_, k| ms(k as u64), same_model);
        assert!(b.runnable.is_empty() && b.expired.is_empty());
    }

    #[test]
    fn a_batch_of_at_most_one_is_what_pop_runnable_takes() {
        let mut q = EdfQueue::new(8);
        q.push(2 * MS, (0, "b")).unwrap();
        q.push(MS, (0, "a")).unwrap();
        let b = q.pop_batch(0, us(200), 1, |_, _| us(10), same_model);
        assert_eq!(names(&b.runnable), ["a"]);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn model_answer_in_time_is_actuated_and_the_fallback_is_then_dropped() {
        let mut slot = DecisionSlot::new();
        assert_eq!(slot.offer_model(4 * MS, 5 * MS), Outcome::Actuate);
        assert_eq!(slot.offer_fallback(), Outcome::AlreadyAnswered);
        assert_eq!(slot.state(), SlotState::Answered(Decider::Model));
    }

    #[test]
    fn model_answer_exactly_at_the_deadline_is_still_in_time() {
        let mut slot = DecisionSlot::new();
        assert_eq!(slot.offer_model(5 * MS, 5 * MS), Outcome::Actuate);
    }

    #[test]
    fn late_model_answer_is_not_actuated() {
        let mut slot = DecisionSlot::new();
        assert_eq!(slot.offer_fallback(), Outcome::Actuate);
        assert_eq!(slot.offer_model(6 * MS, 5 * MS), Outcome::LateModel);
        assert_eq!(slot.state(), SlotState::Answered(Decider::Fallback));
    }

    #[test]
    fn model_answer_after_the_fallback_is_late_even_before_the_deadline() {
        let mut slot = DecisionSlot::new();
        assert_eq!(slot.offer_fallback(), Outcome::Actuate);
        assert_eq!(slot.offer_model(4 * MS, 5 * MS), Outcome::LateModel);
    }

    #[test]
    fn late_model_answer_on_a_pending_slot_leaves_it_to_the_fallback() {
        let mut slot = DecisionSlot::new();
        assert_eq!(slot.offer_model(6 * MS, 5 * MS), Outcome::LateModel);
        assert_eq!(slot.state(), SlotState::Pending);
        assert_eq!(slot.offer_fallback(), Outcome::Actuate);
    }

    #[test]
    fn atomic_decision_follows_the_same_rules() {
        let slot = AtomicDecision::new();
        assert_eq!(slot.offer_model(6 * MS, 5 * MS), Outcome::LateModel);
        assert_eq!(slot.state(), SlotState::Pending);
        assert_eq!(slot.offer_model(5 * MS, 5 * MS), Outcome::Actuate);
        assert_eq!(slot.offer_fallback(), Outcome::AlreadyAnswered);
        assert_eq!(slot.offer_model(5 * MS, 5 * MS), Outcome::LateModel);
        assert_eq!(slot.state(), SlotState::Answered(Decider::Model));
    }

    #[test]
    fn two_threads_racing_on_an_atomic_decision_actuate_exactly_once() {
        for round in 0..500 {
            let slot = Arc::new(AtomicDecision::new());
            let barrier = Arc::new(Barrier::new(2));
            let model = {
                let (slot, barrier) = (Arc::clone(&slot), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    slot.offer_model(1, 2)
                })
            };
            let timer = {
                let (slot, barrier) = (Arc::clone(&slot), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    slot.offer_fallback()
                })
            };
            let (m, f) = (model.join().unwrap(), timer.join().unwrap());
            let actuations = [m, f].iter().filter(|o| **o == Outcome::Actuate).count();
            assert_eq!(actuations, 1, "round {round}: model {m:?}, fallback {f:?}");
            let winner = if m == Outcome::Actuate {
                Decider::Model
            } else {
                Decider::Fallback
            };
            assert_eq!(slot.state(), SlotState::Answered(winner));
        }
    }

    #[test]
    fn calibration_reports_nearest_rank_percentiles() {
        let mut samples: Vec<u64> = (1..=2000).rev().collect();
        let p = calibrate(&mut samples);
        assert_eq!(p.samples, 2000);
        assert_eq!(p.p50, 1000);
        assert_eq!(p.p99, 1980);
        assert_eq!(p.p999, 1998);
        assert_eq!(p.max, 2000);
        assert_eq!(p.expected_infer(), Duration::from_nanos(1998));
    }

    #[test]
    fn calibration_of_a_single_sample_is_that_sample() {
        let p = calibrate(&mut [7]);
        assert_eq!((p.p50, p.p99, p.p999, p.max), (7, 7, 7, 7));
    }

    /// The deadline timer's loop over sorted `fire_times` with a fake clock from 0: it
    /// starts the head at `start(head, pending, cost)` (or at once if that has passed) and
    /// each answer takes `cost`. Returns each job's finish time.
    fn timer_finishes(
        fire_times: &[Nanos],
        cost: Nanos,
        start: fn(Nanos, u64, Nanos) -> Nanos,
    ) -> Vec<Nanos> {
        let mut now = 0;
        let mut finishes = Vec::new();
        for (k, &fire_at) in fire_times.iter().enumerate() {
            let pending = (fire_times.len() - k) as u64;
            now = now.max(start(fire_at, pending, cost)) + cost;
            finishes.push(now);
        }
        finishes
    }

    #[test]
    fn a_burst_due_together_is_answered_whole_by_its_fire_time() {
        // 1000 jobs due at 20 ms, 5 µs per fallback answer.
        let fire = vec![20 * MS; 1000];
        let finishes = timer_finishes(&fire, 5 * US, timer_start);
        assert!(
            finishes.iter().all(|f| *f <= 20 * MS),
            "{:?}",
            finishes.last()
        );
        assert_eq!(
            finishes[0],
            20 * MS - 5 * MS + 5 * US,
            "starts 1000 × 5 µs early"
        );
        // Answering each at its own fire time, the last would be 5 ms late.
        let at_fire_time = timer_finishes(&fire, 5 * US, |f, _, _| f);
        assert_eq!(at_fire_time.last(), Some(&(25 * MS)));
    }

    #[test]
    fn the_timer_takes_a_job_only_while_it_can_still_answer_every_pending_one_in_time() {
        // Fire time 6 ms, 5 µs an answer: from 1 ms, 1000 pending fit, 1001 do not.
        assert!(timer_can_take(MS, 6 * MS, 1_000, 5 * US));
        assert!(!timer_can_take(MS, 6 * MS, 1_001, 5 * US));
        // Later, fewer fit.
        assert!(!timer_can_take(2 * MS, 6 * MS, 801, 5 * US));
        assert!(timer_can_take(2 * MS, 6 * MS, 800, 5 * US));
    }

    #[test]
    fn with_little_pending_the_timer_starts_within_microseconds_of_the_fire_time() {
        assert_eq!(timer_start(5 * MS, 2, 4 * US), 5 * MS - 8 * US);
        assert_eq!(timer_start(5 * MS, 0, 4 * US), 5 * MS);
        assert_eq!(timer_start(US, 1_000, 4 * US), 0, "saturates at 0");
    }

    proptest! {
        #[test]
        fn timer_start_answers_every_job_by_its_fire_time(
            gaps in proptest::collection::vec(0u64..200 * US, 1..400),
            cost in 1u64..50 * US,
        ) {
            // Fire times late enough that the first start is not in the past.
            let mut t = gaps.len() as u64 * cost;
            let fire: Vec<Nanos> = gaps.iter().map(|g| { t += g; t }).collect();
            let finishes = timer_finishes(&fire, cost, timer_start);
            for (f, fire_at) in finishes.iter().zip(&fire) {
                prop_assert!(f <= fire_at, "finished {f} > fire time {fire_at}");
            }
        }
    }

    #[test]
    fn the_fallback_cost_moves_a_sixteenth_toward_each_sample_and_caps_outliers() {
        let mut c = FallbackCost::new(us(32), us(100));
        assert_eq!((c.mean(), c.planned()), (32 * US, 64 * US));
        c.observe(us(16));
        assert_eq!(c.mean(), 31 * US);
        // A 5 ms preemption counts as the 100 µs cap.
        c.observe(ms(5));
        assert_eq!(c.mean(), 31 * US - 31 * US / 16 + 100 * US / 16);
        for _ in 0..400 {
            c.observe(us(4));
        }
        assert!(c.mean() <= 4 * US + 16, "{}", c.mean());
        assert_eq!(
            FallbackCost::new(ms(1), us(100)).mean(),
            100 * US,
            "initial is capped too"
        );
    }

    #[test]
    fn budget_check_needs_p999_plus_margin_strictly_below_budget() {
        let p = LatencyProfile {
            samples: 1000,
            p50: MS,
            p99: 3 * MS,
            p999: 4_800 * US,
            max: 9 * MS,
        };
        assert!(budget_check(&p, ms(5), us(100)).is_ok());
        let err = budget_check(&p, ms(5), us(200)).unwrap_err();
        assert!(matches!(err, BudgetError::Unmeetable { .. }));
        let msg = err.to_string();
        assert!(msg.contains("4.8ms") && msg.contains("5ms"), "{msg}");
    }

    #[test]
    fn budget_check_refuses_an_empty_calibration() {
        let p = calibrate(&mut []);
        assert_eq!(
            budget_check(&p, ms(5), us(200)),
            Err(BudgetError::NoSamples { budget: ms(5) })
        );
    }

    #[test]
    fn miss_cause_names_are_distinct_metric_labels() {
        let names: std::collections::HashSet<_> =
            MissCause::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), MissCause::ALL.len());
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }

    #[derive(Debug, Clone, Copy)]
    enum Offer {
        Model { at: Nanos },
        Fallback,
    }

    fn offer_strategy() -> impl Strategy<Value = Offer> {
        prop_oneof![
            (0u64..20).prop_map(|at| Offer::Model { at }),
            Just(Offer::Fallback),
        ]
    }

    proptest! {
        /// Whatever the interleaving of model answers (in time or late) and fallback
        /// offers: at most one actuation, exactly one once a fallback was offered, a model
        /// actuation only within the deadline, and both slot kinds agree.
        #[test]
        fn exactly_one_actuation_whatever_the_interleaving(
            offers in proptest::collection::vec(offer_strategy(), 1..12),
            deadline in 0u64..20,
        ) {
            let mut slot = DecisionSlot::new();
            let atomic = AtomicDecision::new();
            let mut actuations = 0;
            let mut fallback_offered = false;
            for offer in &offers {
                let (plain, shared) = match *offer {
                    Offer::Model { at } => {
                        let o = slot.offer_model(at, deadline);
                        if o == Outcome::Actuate {
                            prop_assert!(at <= deadline);
                        }
                        (o, atomic.offer_model(at, deadline))
                    }
                    Offer::Fallback => {
                        fallback_offered = true;
                        (slot.offer_fallback(), atomic.offer_fallback())
                    }
                };
                prop_assert_eq!(plain, shared);
                if plain == Outcome::Actuate {
                    actuations += 1;
                }
                prop_assert_eq!(slot.state(), atomic.state());
            }
            prop_assert!(actuations <= 1);
            if fallback_offered {
                prop_assert_eq!(actuations, 1);
            }
        }

        /// A whole event's life on a fake clock: admission, queue, worker, timer. Every
        /// event gets exactly one command, and never after its deadline.
        #[test]
        fn every_event_gets_exactly_one_command_by_its_deadline(
            events in proptest::collection::vec((0u64..50, proptest::option::of(0u32..15)), 1..40),
            infer_actual in proptest::collection::vec(0u64..8, 40),
            capacity in 0usize..6,
            max_batch in 1usize..5,
        ) {
            // One tick of the fake clock is 1 µs.
            let budget = us(10);
            let expected = us(3);
            let margin = us(1);
            let n = events.len();
            let mut slots = vec![DecisionSlot::new(); n];
            let mut sent_at: Vec<Vec<Nanos>> = vec![Vec::new(); n];
            let mut deadlines = vec![0; n];
            let mut timer_at = vec![Nanos::MAX; n];
            let mut queue = EdfQueue::new(capacity);
            let mut in_flight: Vec<(Nanos, usize)> = Vec::new();
            let mut worker_free_at = 0;
            // Discrete simulation, one tick at a time: arrivals, model answers, timers,
            // then the (single) worker takes its next event.
            for tick in 0..200u64 {
                let now = tick * US;
                for (i, &(arrival_tick, hint)) in events.iter().enumerate() {
                    if arrival_tick != tick {
                        continue;
                    }
                    let arrival = now;
                    let d = deadline(arrival, budget, hint);
                    deadlines[i] = d;
                    timer_at[i] = d.saturating_sub(nanos(margin)).max(arrival);
                    let fallback_now = match admit(now, d, expected, margin) {
                        Admission::FallbackNow(_) => true,
                        Admission::Model => queue.push(d, i).is_err(),
                    };
                    if fallback_now && slots[i].offer_fallback() == Outcome::Actuate {
                        sent_at[i].push(now);
                    }
                }
                in_flight.retain(|&(done, i)| {
                    if done != now {
                        return true;
                    }
                    if slots[i].offer_model(now, deadlines[i]) == Outcome::Actuate {
                        sent_at[i].push(now);
                    }
                    false
                });
                for i in 0..n {
                    if timer_at[i] == now && slots[i].offer_fallback() == Outcome::Actuate {
                        sent_at[i].push(now);
                    }
                }
                if worker_free_at <= now {
                    // A batch of k is expected to take k times one window's time; it
                    // actually takes what its first event's draw says, times k.
                    let pop = queue.pop_batch(
                        now,
                        margin,
                        max_batch,
                        |_, k| expected * k as u32,
                        |_, _| true,
                    );
                    for q in pop.expired {
                        if slots[q.item].offer_fallback() == Outcome::Actuate {
                            sent_at[q.item].push(now);
                        }
                    }
                    if let Some(first) = pop.runnable.first() {
                        let k = pop.runnable.len() as u64;
                        let done = now + infer_actual[first.item] * k * US;
                        worker_free_at = done + US;
                        in_flight.extend(pop.runnable.iter().map(|q| (done, q.item)));
                    }
                }
            }
            for i in 0..n {
                prop_assert_eq!(sent_at[i].len(), 1, "event {} sent {:?}", i, sent_at[i]);
                prop_assert!(sent_at[i][0] <= deadlines[i], "event {} at {:?} deadline {}", i, sent_at[i], deadlines[i]);
            }
        }
    }
}
