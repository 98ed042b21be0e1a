//! The live monitor on real data: windows from the simulated fleet (`reflex_sim::SimDevice`,
//! the drift scenario's own distortion), features from `reflex_models::features::compute`,
//! classes from the real int8 edge model through tract, the reference from the edge
//! manifest; a fake clock (explicit timestamps) drives the windows.
//!
//! Set-up: the simulator's own load fleet (`reflex_sim::fleet::LoadFleet`: device `i` on
//! condition `i % 4`, each condition a quarter of the events), 8 devices unless said,
//! 1200 events per 60 s window (`min_events` 1000), default thresholds, raise after 3
//! windows; 0.2% deadline misses and 1% fallback answers (below the 1% and 5% objectives).
//!
//! What is asserted:
//! * drift: the simulator's default drift target on 3 of the 8 devices from window 2, ramped
//!   over 60 s, raises a feature alert by window 5 (`raise_after = 3`), dated from window 2;
//! * a clean fleet (6 seeds × 12 windows) and the default load fleet as shipped (10 devices,
//!   4 seeds × 12 windows) raise no alert;
//! * the same 10 devices sent round-robin are a population shift: a temperature alert in
//!   each seed;
//! * one answer in eight from the fallback raises the fallback-rate SLO alert when window 2
//!   closes, since window 0, with the published message's fields;
//! * 1M records at 10 000 events/s in 10 s windows, each closed window taken as the
//!   uploader does: each window's 13 sketches stay within `13 × (3k + 128)` values, and the
//!   process memory stays flat (< 256 KiB per step after 300k records, < 8 MiB overall);
//! * an alert goes out through a real mosquitto and arrives on `reflex/+/alerts`.
//!
//! Figures are printed with `--nocapture`; measured values belong in the benchmark notes.
//!
//! The tests take one lock each, so they run one at a time and the RSS figures are this
//! test's own.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use reflex_drift::monitor::{AlertEvent, Observation, Subject, WindowSummary};
use reflex_drift::Reference;
use reflex_models::{features, Manifest, Model, WINDOW_LEN};
use reflex_sim::fleet::{LoadFleet, DEFAULT_DEVICES};
use reflex_sim::scenario::Scenario;
use reflex_sim::signal::Distortion;
use reflexd::monitor::{
    reference_from_manifest, AlertPayload, AlertPublisher, AlertState, LiveMonitor, MonitorSection,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const WINDOW_S: u64 = 60;
/// 2023-11-14T22:14:00Z: a whole number of windows after the epoch (window `w` of the run
/// is window-aligned), and in the past, so the publisher's real clock is past every window.
const T0_US: u64 = 28_333_334 * WINDOW_S * 1_000_000;
const DEVICES: u32 = 8;
const EVENTS_PER_WINDOW: u64 = 1200;

fn edge_manifest_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models/edge.manifest.json")
}

fn edge_reference() -> Reference {
    let manifest = Manifest::load(edge_manifest_path()).expect("edge manifest");
    reference_from_manifest(&manifest).expect("edge reference")
}

/// xorshift64*, uniform in [0, 1): which events miss their deadline or get the fallback.
struct Coin(u64);

impl Coin {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One decided event as the recorder would see it.
struct Decided {
    features: [f64; reflex_models::FEATURE_COUNT],
    model_class: Option<usize>,
    fallback: bool,
    deadline_missed: bool,
}

/// Which device sends each event.
#[derive(Clone, Copy)]
enum Schedule {
    /// `reflex_sim::fleet::LoadFleet`'s own: every condition a quarter of the events (what
    /// `reflex-sim load` and `reflex-bench` send).
    Shipped,
    /// Device after device, as `reflex-sim load` did before: with 10 devices (conditions
    /// `i % 4`) the event mix is 30/30/20/20.
    DeviceRoundRobin,
}

/// The simulated fleet, its drift and the edge model.
struct Fleet {
    fleet: LoadFleet,
    schedule: Schedule,
    drifting: u32,
    scenario: Scenario,
    model: Model,
    coin: Coin,
    /// Share of events the fallback answers (no model class), 1% unless set.
    fallback_rate: f64,
}

impl Fleet {
    /// `DEVICES` devices of the shipped load fleet (a multiple of 4: the same order as a
    /// device round-robin).
    fn new(seed: u64, drifting: u32, scenario: Scenario) -> Fleet {
        Fleet::with(DEVICES, Schedule::Shipped, seed, drifting, scenario)
    }

    fn with(
        devices: u32,
        schedule: Schedule,
        seed: u64,
        drifting: u32,
        scenario: Scenario,
    ) -> Fleet {
        Fleet {
            fleet: LoadFleet::new(devices, seed),
            schedule,
            drifting,
            scenario,
            model: Model::load(edge_manifest_path()).expect("edge model"),
            coin: Coin(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            fallback_rate: 0.01,
        }
    }

    /// The `k`-th event of the run, at `at_us`.
    fn event(&mut self, k: u64, at_us: u64) -> Decided {
        let d = match self.schedule {
            Schedule::Shipped => self.fleet.next_index().expect("devices"),
            Schedule::DeviceRoundRobin => (k % self.fleet.devices().len() as u64) as usize,
        } as u32;
        let t_s = (at_us - T0_US) as f64 / 1e6;
        let distortion = if d < self.drifting {
            self.scenario.distortion(t_s)
        } else {
            Distortion::NONE
        };
        let event = self.fleet.devices_mut()[d as usize].next_event(at_us, distortion);
        let window: Vec<f32> = event.window.values().collect();
        let window: &[f32; WINDOW_LEN] = window.as_slice().try_into().expect("3 × 64 samples");
        let temperature = event.temperature_c();
        let fallback = self.coin.uniform() < self.fallback_rate;
        let model_class = if fallback {
            None
        } else {
            Some(
                self.model
                    .predict(window, temperature)
                    .expect("predict")
                    .class,
            )
        };
        Decided {
            features: features::compute(window, temperature),
            model_class,
            fallback,
            deadline_missed: self.coin.uniform() < 0.002,
        }
    }

    /// Plays `windows` windows of `EVENTS_PER_WINDOW` events into route 0 of `monitor`,
    /// ticking at the end of each; returns every alert event with the (run-relative) index
    /// of the window whose closing produced it, and the closed windows.
    fn play(
        &mut self,
        monitor: &LiveMonitor,
        windows: u64,
    ) -> (Vec<(u64, AlertEvent)>, Vec<WindowSummary>) {
        let window_us = WINDOW_S * 1_000_000;
        let step_us = window_us / EVENTS_PER_WINDOW;
        let mut events = Vec::new();
        for w in 0..windows {
            for i in 0..EVENTS_PER_WINDOW {
                let at_us = T0_US + w * window_us + i * step_us;
                let e = self.event(w * EVENTS_PER_WINDOW + i, at_us);
                let obs = Observation {
                    features: Some(&e.features),
                    model_class: e.model_class,
                    fallback: e.fallback,
                    deadline_missed: e.deadline_missed,
                };
                monitor.record(0, at_us, &obs).expect("record");
            }
            for e in monitor.tick(T0_US + (w + 1) * window_us) {
                events.push((w, e));
            }
        }
        (events, monitor.take_closed_windows())
    }
}

fn monitor(section: &MonitorSection) -> LiveMonitor {
    LiveMonitor::new(
        section,
        "board-7",
        vec![("vibration".into(), edge_reference())],
    )
    .expect("monitor")
}

fn default_section() -> MonitorSection {
    MonitorSection {
        window_s: WINDOW_S,
        ..MonitorSection::default()
    }
}

fn run_relative(summary: &WindowSummary) -> u64 {
    (summary.start_ms - T0_US / 1_000) / (WINDOW_S * 1_000)
}

#[test]
fn the_drift_scenario_raises_feature_alerts_within_four_windows_of_the_drift_start() {
    let _serial = one_at_a_time();
    let drift_start_window = 2;
    let scenario = Scenario::Drift {
        start_s: (drift_start_window * WINDOW_S) as f64,
        ramp_s: WINDOW_S as f64,
        target: Scenario::DEFAULT_DRIFT_TARGET,
    };
    let mut fleet = Fleet::new(7, 3, scenario);
    let live = monitor(&default_section());
    let started = Instant::now();
    let (events, windows) = fleet.play(&live, 8);
    for s in &windows {
        let drift = s.drift.as_ref().expect("1200 events are judged");
        let drifted: Vec<&str> = drift
            .features
            .iter()
            .filter(|f| f.drifted)
            .map(|f| f.name.as_str())
            .collect();
        println!(
            "window {}: {} events, {} values in the sketches, drifted share {:.2}, class JS \
             {:.3}, drifted {drifted:?}",
            run_relative(s),
            s.events,
            s.sketches.iter().map(|k| k.retained()).sum::<usize>(),
            drift.dataset.share,
            drift.class_js_distance.unwrap_or(f64::NAN)
        );
    }
    let raised: Vec<(u64, &AlertEvent)> = events
        .iter()
        .filter(|(_, e)| matches!(e, AlertEvent::Raised(_)))
        .map(|(w, e)| (*w, e))
        .collect();
    for (w, e) in &raised {
        println!("window {w}: {}", live.alert_message(e).log_line);
    }
    let first_feature = raised
        .iter()
        .find(|(_, e)| matches!(e.alert().subject, Subject::Feature(_)))
        .expect("a feature alert is raised");
    println!(
        "first feature alert on window {} (drift from window {drift_start_window}); {} windows \
         of {EVENTS_PER_WINDOW} events with the edge model in {:.1} s",
        first_feature.0,
        windows.len(),
        started.elapsed().as_secs_f64()
    );
    // Three breaching windows in a row raise: windows 2, 3, 4 at the earliest; one window of
    // slack for the ramp.
    assert!(
        first_feature.0 <= drift_start_window + 3,
        "first feature alert on window {}",
        first_feature.0
    );
    let alert = first_feature.1.alert();
    assert!(alert.since.index >= T0_US / 1_000 / (WINDOW_S * 1_000) + drift_start_window);
    // Nothing before the drift, and no SLO alert (misses and fallbacks stay low).
    assert!(raised.iter().all(|(w, _)| *w >= drift_start_window + 2));
    assert!(raised.iter().all(|(_, e)| !matches!(
        e.alert().subject,
        Subject::DeadlineMisses | Subject::Fallbacks
    )));
}

/// What clean runs of a fleet did: alerts raised, and the figures printed.
struct CleanRuns {
    raised: Vec<String>,
    windows: usize,
    feature_windows: usize,
    drifted_feature_windows: usize,
    max_js: f64,
}

/// Plays `windows_per_seed` windows of the fleet `make(seed)` for each seed, in a fresh
/// monitor with the default thresholds.
fn clean_runs(seeds: u64, windows_per_seed: u64, make: impl Fn(u64) -> Fleet) -> CleanRuns {
    let mut runs = CleanRuns {
        raised: Vec::new(),
        windows: 0,
        feature_windows: 0,
        drifted_feature_windows: 0,
        max_js: 0.0,
    };
    for seed in 1..=seeds {
        let mut fleet = make(seed);
        let live = monitor(&default_section());
        let (events, summaries) = fleet.play(&live, windows_per_seed);
        for s in &summaries {
            let drift = s.drift.as_ref().expect("judged");
            runs.windows += 1;
            runs.feature_windows += drift.features.len();
            runs.drifted_feature_windows += drift.features.iter().filter(|f| f.drifted).count();
            runs.max_js = runs.max_js.max(drift.class_js_distance.unwrap_or(0.0));
        }
        runs.raised.extend(
            events
                .into_iter()
                .filter(|(_, e)| matches!(e, AlertEvent::Raised(_)))
                .map(|(w, e)| format!("seed {seed} window {w}: {e}")),
        );
    }
    println!(
        "{} windows, {} of {} feature-windows drifted on their own, largest class JS \
         distance {:.3}, {} alerts",
        runs.windows,
        runs.drifted_feature_windows,
        runs.feature_windows,
        runs.max_js,
        runs.raised.len()
    );
    runs
}

#[test]
fn a_clean_fleet_over_six_seeds_and_seventy_two_windows_raises_no_alert() {
    let _serial = one_at_a_time();
    let runs = clean_runs(6, 12, |seed| Fleet::new(seed, 0, Scenario::Steady));
    assert_eq!(runs.windows, 72);
    assert!(
        runs.raised.is_empty(),
        "false alarms:\n{}",
        runs.raised.join("\n")
    );
}

/// The fleet `reflex-sim load` and `reflex-bench` run by default (`DEFAULT_DEVICES` = 10,
/// not a multiple of 4), through `reflex_sim::fleet::LoadFleet` itself: each condition
/// sends a quarter of the events, the mix the reference describes, so no alert.
#[test]
fn the_default_load_fleet_over_four_seeds_and_forty_eight_windows_raises_no_alert() {
    let _serial = one_at_a_time();
    assert_eq!(
        DEFAULT_DEVICES % 4,
        2,
        "the default is the case this test is about"
    );
    let runs = clean_runs(4, 12, |seed| {
        Fleet::with(
            DEFAULT_DEVICES,
            Schedule::Shipped,
            seed,
            0,
            Scenario::Steady,
        )
    });
    assert_eq!(runs.windows, 48);
    assert!(
        runs.raised.is_empty(),
        "false alarms:\n{}",
        runs.raised.join("\n")
    );
}

/// The same 10 undistorted devices sent one after the other: 30/30/20/20 across the
/// conditions against the reference's 25/25/25/25. No device is distorted, but the
/// population differs from the reference's (a prior shift: more healthy and imbalanced
/// machines, which run cooler and show no bearing kurtosis or misalignment on z), and the
/// monitor is right to report it: the feature alerts a real board whose condition mix
/// differs from the reference's would see (documented with `[monitor]`).
#[test]
fn ten_devices_sent_round_robin_are_a_population_shift_the_monitor_reports() {
    let _serial = one_at_a_time();
    let runs = clean_runs(2, 6, |seed| {
        Fleet::with(
            DEFAULT_DEVICES,
            Schedule::DeviceRoundRobin,
            seed,
            0,
            Scenario::Steady,
        )
    });
    for r in &runs.raised {
        println!("{r}");
    }
    // Both seeds raise the temperature alert (the largest effect, W/σ ≈ 0.13 against 0.10)
    // within their 6 windows (measured: on window 2 and on window 5).
    for seed in 1..=2 {
        assert!(
            runs.raised.iter().any(|r| {
                r.starts_with(&format!("seed {seed} window ")) && r.contains("feature temperature")
            }),
            "seed {seed} raised no temperature alert: {:#?}",
            runs.raised
        );
    }
    // Only feature alerts (and the dataset one, if enough features drift): the classes the
    // model predicts shift too, but less than the class threshold; misses and fallbacks
    // stay low.
    assert!(
        runs.raised
            .iter()
            .all(|r| !r.contains("deadline misses") && !r.contains("fallbacks")),
        "{:#?}",
        runs.raised
    );
}

/// The fallback-rate objective (default 0.05) on real events: a fleet whose answers come
/// from the fallback one time in eight (a model that keeps failing or running late) raises
/// the SLO alert when the third such window closes, dated from the first, and the message
/// reflexd logs and publishes says route, statistic, value against the objective and since
/// when.
#[test]
fn a_fallback_rate_above_its_objective_raises_an_slo_alert_with_route_value_and_since() {
    let _serial = one_at_a_time();
    let mut fleet = Fleet::new(5, 0, Scenario::Steady);
    fleet.fallback_rate = 0.125;
    let live = monitor(&default_section());
    let (events, windows) = fleet.play(&live, 4);
    let raised: Vec<&(u64, AlertEvent)> = events
        .iter()
        .filter(|(_, e)| matches!(e, AlertEvent::Raised(_)))
        .collect();
    assert_eq!(raised.len(), 1, "{events:#?}");
    let (on_window, event) = raised[0];
    assert_eq!(*on_window, 2, "raised when the third window closes");
    assert_eq!(event.alert().subject, Subject::Fallbacks);
    let rate = windows[2].fallbacks as f64 / windows[2].events as f64;
    let message = live.alert_message(event);
    println!("{}", message.log_line);
    let payload: AlertPayload = serde_json::from_slice(&message.payload).expect("alert JSON");
    assert_eq!(message.topic, "reflex/board-7/alerts");
    assert_eq!(payload.node, "board-7");
    assert_eq!(payload.route, "vibration");
    assert_eq!(payload.state, AlertState::Raised);
    assert_eq!(payload.subject, "fallbacks");
    assert_eq!(payload.feature, None);
    assert_eq!(payload.measurement.statistic, "fallback_rate");
    assert_eq!(payload.measurement.value, rate);
    assert!((0.1..0.15).contains(&rate), "fallback rate {rate}");
    assert_eq!(payload.measurement.threshold, 0.05);
    assert_eq!(payload.since_unix_ms, T0_US / 1_000);
    assert_eq!(
        payload.latest_window_start_unix_ms,
        T0_US / 1_000 + 2 * WINDOW_S * 1_000
    );
    assert!(
        message.log_line.starts_with(&format!(
            "slo alert raised on route vibration: fallbacks: fallback_rate {rate:.4} > 0.0500 \
             since 2023-11-14T22:14:00Z"
        )),
        "{}",
        message.log_line
    );
    assert_eq!(payload.message, message.log_line);
}

/// VmRSS of this process, KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

#[test]
fn a_million_records_keep_the_sketches_bounded_and_the_process_memory_flat() {
    let _serial = one_at_a_time();
    // A pool of real feature vectors and classes, cycled: 4096 events of the clean fleet.
    let mut fleet = Fleet::new(11, 0, Scenario::Steady);
    let pool: Vec<Decided> = (0..4096)
        .map(|k| fleet.event(k, T0_US + k * 1_000))
        .collect();
    let section = MonitorSection {
        window_s: 10,
        ..MonitorSection::default()
    };
    let live = monitor(&section);
    let rate_per_s = 10_000u64;
    let step_us = 1_000_000 / rate_per_s;
    let total = 1_000_000u64;
    let record = |k: u64| {
        let e = &pool[(k % pool.len() as u64) as usize];
        let obs = Observation {
            features: Some(&e.features),
            model_class: e.model_class,
            fallback: e.fallback,
            deadline_missed: e.deadline_missed,
        };
        live.record(0, T0_US + k * step_us, &obs).expect("record");
    };
    // What the uploader keeps of each closed window it takes: events, values retained in
    // the 13 sketches, JSON size.
    let mut closed: Vec<(u64, usize, usize)> = Vec::new();
    let take = |closed: &mut Vec<(u64, usize, usize)>| {
        for w in live.take_closed_windows() {
            closed.push((
                w.events,
                w.sketches.iter().map(|s| s.retained()).sum(),
                serde_json::to_vec(&w).expect("json").len(),
            ));
        }
    };
    // One window (100k records) at a time; after each, the closed window is taken, as
    // reflexd's uploader takes them. RSS after 100k records (the first window still open),
    // then after 300k, 600k and 1M (2, 5 and 9 windows closed and taken).
    let rss_start = rss_kib();
    let mut rss = Vec::new();
    let mut started = Instant::now();
    for window in 0..total / 100_000 {
        for k in window * 100_000..(window + 1) * 100_000 {
            record(k);
        }
        take(&mut closed);
        let recorded = (window + 1) * 100_000;
        if [100_000, 300_000, 600_000, total].contains(&recorded) {
            rss.push((recorded, rss_kib()));
        }
        if recorded == 100_000 {
            started = Instant::now();
        }
    }
    let per_record_ns = started.elapsed().as_nanos() as f64 / (total - 100_000) as f64;
    live.tick(T0_US + total * step_us + 10_000_000);
    take(&mut closed);
    let k = section.sketch_k as usize;
    let bound = 13 * reflex_drift::QuantileSketch::max_retained(section.sketch_k);
    let retained: Vec<usize> = closed.iter().map(|c| c.1).collect();
    let bytes: Vec<usize> = closed.iter().map(|c| c.2).collect();
    println!(
        "1M records at {rate_per_s}/s in {}-s windows: {} windows of {} events; values retained \
         per window (13 sketches, k = {k}): {retained:?} (bound {bound}); JSON size per window \
         {bytes:?} bytes; VmRSS {rss_start} KiB at start, then (records, KiB) {rss:?}; \
         record(): {per_record_ns:.0} ns per call (indicative, test profile)",
        section.window_s,
        closed.len(),
        closed.first().map_or(0, |c| c.0),
    );
    assert_eq!(closed.len(), 10);
    assert_eq!(closed.iter().map(|c| c.0).sum::<u64>(), total);
    assert!(
        retained.iter().all(|&r| r <= bound),
        "{retained:?} > {bound}"
    );
    // Bounded: whatever the first window's allocations, the whole run stays within 8 MiB.
    let (first, last) = (rss[0].1, rss[3].1);
    assert!(
        last.saturating_sub(first) < 8 * 1024,
        "RSS grew from {first} KiB to {last} KiB: {rss:?}"
    );
    // Flat: once windows close and are taken, each further 300k-400k records (3-4 more
    // windows closed) add less than FLAT_KIB.
    const FLAT_KIB: u64 = 256;
    for pair in rss[1..].windows(2) {
        assert!(
            pair[1].1.saturating_sub(pair[0].1) < FLAT_KIB,
            "RSS grew from {} KiB after {} records to {} KiB after {}: {rss:?}",
            pair[0].1,
            pair[0].0,
            pair[1].1,
            pair[1].0
        );
    }
}

#[test]
fn an_alert_published_through_mosquitto_arrives_on_the_alert_topic() {
    let _serial = one_at_a_time();
    let broker = reflex_tests::spawn_broker();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // The subscriber, subscribed (SubAck seen) before anything is published.
        let (sub, mut sub_loop) =
            AsyncClient::new(MqttOptions::new("alert-reader", "127.0.0.1", broker.port), 64);
        sub.subscribe("reflex/+/alerts", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let reader = tokio::spawn(async move {
            let mut subscribed = Some(subscribed_tx);
            loop {
                match sub_loop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(s) = subscribed.take() {
                            let _ = s.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(e) => panic!("subscriber connection: {e}"),
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
            .await
            .expect("SubAck within 10 s")
            .expect("reader running");

        // The publisher's client, its event loop polled by its own task (as ingest does).
        let (client, mut client_loop) =
            AsyncClient::new(MqttOptions::new("reflexd-board-7", "127.0.0.1", broker.port), 64);
        let poller = tokio::spawn(async move {
            while client_loop.poll().await.is_ok() {}
        });

        // Three windows in the past with 5% deadline misses: the deadline-miss alert is
        // raised when the third closes, which the publisher's first tick (real clock) does.
        let section = MonitorSection {
            window_s: 1,
            min_events: 1000,
            ..MonitorSection::default()
        };
        let live = Arc::new(monitor(&section));
        let mut fleet = Fleet::new(3, 0, Scenario::Steady);
        let pool: Vec<Decided> = (0..256).map(|k| fleet.event(k, T0_US + k)).collect();
        for w in 0..3u64 {
            for i in 0..200u64 {
                let e = &pool[((w * 200 + i) % 256) as usize];
                let obs = Observation {
                    features: Some(&e.features),
                    model_class: e.model_class,
                    fallback: false,
                    deadline_missed: i % 20 == 0,
                };
                live.record(0, T0_US + w * 1_000_000 + i * 5_000, &obs)
                    .expect("record");
            }
        }
        let shutdown = CancellationToken::new();
        let publisher = tokio::spawn(
            AlertPublisher::new(Arc::clone(&live)).run(client.clone(), shutdown.clone()),
        );

        let (topic, payload) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an alert within 10 s")
            .expect("reader running");
        assert_eq!(topic, "reflex/board-7/alerts");
        let alert: AlertPayload = serde_json::from_slice(&payload).expect("alert JSON");
        println!("received on {topic}: {}", String::from_utf8_lossy(&payload));
        assert_eq!(alert.node, "board-7");
        assert_eq!(alert.route, "vibration");
        assert_eq!(alert.state, AlertState::Raised);
        assert_eq!(alert.subject, "deadline_misses");
        assert_eq!(alert.measurement.statistic, "deadline_miss_rate");
        assert_eq!(alert.measurement.value, 0.05);
        assert_eq!(alert.measurement.threshold, 0.01);
        assert_eq!(alert.since_unix_ms, T0_US / 1_000);
        assert_eq!(alert.latest_window_start_unix_ms, T0_US / 1_000 + 2_000);
        assert!(alert.message.starts_with(
            "slo alert raised on route vibration: deadline misses: deadline_miss_rate 0.0500 > 0.0100"
        ));

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), publisher)
            .await
            .expect("the publisher stops within 10 s of shutdown")
            .expect("publisher task");
        let mut text = String::new();
        live.render_prometheus(&mut text);
        assert!(text.contains("reflexd_monitor_alerts_published_total 1\n"), "{text}");
        assert!(text.contains(
            "reflexd_monitor_alert{route=\"vibration\",subject=\"deadline_misses\"} 1\n"
        ));
        // Published once: nothing else is queued on the topic (windows of 200 events are not
        // judged for drift).
        assert!(rx.try_recv().is_err());
        reader.abort();
        poller.abort();
    });
}
