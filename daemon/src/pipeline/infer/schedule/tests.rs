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
    let names: std::collections::HashSet<_> = MissCause::ALL.iter().map(|c| c.as_str()).collect();
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
