use super::*;
use std::path::PathBuf;
use std::time::Instant;

use reflex_models::{Batches, Model};
use reflex_wire::Command;

use crate::config::{Format, OnBudgetUnmeetable};
use crate::pipeline::actuate::Actuation;
use crate::pipeline::decide::Decider;
use crate::pipeline::routes::{shared, LiveRoute, RouteTable};
use crate::pipeline::types::{window_g, CommandRoute, Outbound};

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
    let fallback =
        reflex_models::Fallback::load(models_dir().join("fallback.manifest.json")).unwrap();
    let slot = ModelSlot {
        current: Mutex::new(ModelRef {
            name: heapless::String::try_from("edge").unwrap(),
            version: heapless::String::try_from("1.0.0").unwrap(),
        }),
        expected_ns: expected_ns.iter().map(|&n| AtomicU64::new(n)).collect(),
        input: InputShape::new(WindowShape::new(3, 64)),
    };
    let route = LiveRoute {
        slot: 0,
        name: "vibration".into(),
        topic_filter: "sensors/+/vibration".into(),
        qos_in: 1,
        device_level: Some(1),
        budget,
        model: 0,
        command: CommandRoute {
            command_topic: "actuators/{device}/cmd".into(),
            format: Format::Postcard,
            qos_out: 1,
        },
        on_budget_unmeetable: OnBudgetUnmeetable::Refuse,
        input: Arc::default(),
        dedupes: true,
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let metrics = Arc::new(Metrics::new(&["vibration".to_owned()]));
    let clock = Clock::new();
    let decide = Decider::new(clock, metrics.clone(), Arc::new(Actuation::new(tx)));
    let limits = Limits {
        queue_capacity: capacity,
        margin,
        max_batch,
    };
    let e = Engine::new(
        clock,
        shared(RouteTable::from_routes(vec![route])),
        vec![slot],
        vec![Some(Arc::new(fallback::RouteFallback {
            model: ModelRef {
                name: heapless::String::try_from("fallback").unwrap(),
                version: heapless::String::try_from("1.0.0").unwrap(),
            },
            kind: fallback::FallbackKind::Manifest(Box::new(fallback)),
        }))],
        metrics,
        limits,
        Arc::new(decide),
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
        event: SimDevice::new(i, c, 7)
            .next_event(0, Distortion::NONE)
            .into(),
        payload: Bytes::new(),
        at: e.clock.now(),
        unix_us: 0,
        decode_ns: 0,
        ack: None,
        redelivered: false,
    }
}

/// Accepts `n` events from distinct simulated devices (of every condition in turn).
fn accept_events(e: &Engine, n: u32) -> Vec<SensorEvent> {
    let mut accepted = Vec::new();
    for i in 0..n {
        let a = arrival(e, i);
        accepted.push(SensorEvent::clone(&a.event));
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
    // one after another, 20000 answers would run past the deadline. The 20 ms margin
    // absorbs a loaded machine's scheduling delays (the unit tests run in parallel, at
    // normal priority).
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
    panic!("the worker turned while events were held in 5 attempts out of 5: held events woke it");
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

#[test]
fn the_edge_model_reads_the_three_by_64_window_its_manifest_names() {
    let edge = Model::load(models_dir().join("edge.manifest.json")).unwrap();
    assert_eq!(WindowShape::of_model(&edge), WindowShape::new(3, 64));
}

#[test]
fn the_motor_model_reads_its_flat_input_as_its_two_declared_channels_of_64() {
    let path = models_dir().join("examples/motor/motor.manifest.json");
    let motor = Model::load(path).unwrap();
    assert_eq!(motor.input_dims(), [128]);
    assert_eq!(WindowShape::of_model(&motor), WindowShape::new(2, 64));
}

#[test]
fn a_route_is_checked_against_the_shape_of_the_model_serving_now() {
    let (e, _rx) = engine(1, &[1_000]);
    let sink: &dyn ArrivalSink = &e;
    assert_eq!(sink.input_shape(0), WindowShape::new(3, 64));
    // What a reload of a model reading another shape does, before its workers swap.
    e.models[0].input.set(WindowShape::new(2, 32));
    assert_eq!(sink.input_shape(0), WindowShape::new(2, 32));
}
