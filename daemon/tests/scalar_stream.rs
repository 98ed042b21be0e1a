//! reflex-sim's scalar stream (one reading per message) against reflexd's window assembly:
//! which readings complete a window, what the windows hold, and the whole path through a
//! real mosquitto, where every window the simulator expects is answered once and no other
//! reading is.

mod common;

use std::time::Duration;

use proptest::prelude::*;
use reflex_sim::device::SimDevice;
use reflex_sim::mqtt::{run_fleet, BrokerOptions, FleetConfig, Format, ScalarStream};
use reflex_sim::signal::{Condition, Distortion, CHANNELS, COUNTS_PER_G, WINDOW};
use reflex_sim::stream::{StreamPlan, StreamState};
use reflex_wire::DeviceId;
use reflexd::pipeline::decode::assembly::{Assembler, Fed, Limits};
use reflexd::pipeline::types::WindowShape;
use tokio_util::sync::CancellationToken;

use common::{bad_input, metric, present, scrape, serial, spawn_daemon, write_config};

fn assembler(hop: usize) -> Assembler {
    Assembler::new(Limits {
        hop: Some(hop),
        max_gap_us: 1_000_000,
        max_age_us: 10_000_000,
        max_devices: 8,
    })
}

/// A reading's axes back in ADC counts, as a JSON route at 1/2048 g per count reads them.
fn counts(accel_g: &[f64; CHANNELS]) -> [i16; CHANNELS] {
    accel_g.map(|g| (g * f64::from(COUNTS_PER_G)).round() as i16)
}

proptest! {
    /// The simulator's plan and reflexd's assembler agree on every reading: a window
    /// completes exactly at the readings the plan says, whatever the window and hop.
    #[test]
    fn the_simulators_plan_completes_windows_where_the_assembler_does(
        window in 1usize..=64, hop in 1usize..=64, readings in 0u64..300,
    ) {
        let plan = StreamPlan::new(window, hop).unwrap();
        let mut a = assembler(hop);
        let shape = WindowShape::new(1, window);
        let d = DeviceId::try_from("dev-0000").unwrap();
        for k in 0..readings {
            let fed = a.feed(&d, Some(k + 1), 1_000 + k, 1, &[k as i16], shape).unwrap();
            prop_assert_eq!(
                matches!(fed, Fed::Window { .. }),
                plan.completes(k),
                "reading {}", k
            );
        }
    }
}

/// A window reflexd assembles at a reading that ends one of the simulator's drawn windows
/// is the window the same device would have sent whole.
#[test]
fn assembled_windows_at_the_drawn_windows_ends_are_the_window_devices_windows() {
    let mut twin = SimDevice::new(3, Condition::Misalignment, 11);
    let mut device = twin.clone();
    let mut stream = StreamState::new();
    let mut a = assembler(1);
    let shape = WindowShape::new(CHANNELS, WINDOW);
    let id = DeviceId::try_from(device.id()).unwrap();
    let mut compared = 0;
    let mut now_us = 1_765_000_000_000_000u64;
    for j in 0..4 {
        let whole = twin.next_event(0, Distortion::NONE);
        for i in 0..WINDOW {
            now_us += 1_000;
            let r = stream.next_reading(&mut device, now_us, Distortion::NONE);
            let fed = a
                .feed(
                    &id,
                    Some(r.n),
                    r.timestamp_us,
                    CHANNELS,
                    &counts(&r.accel_g),
                    shape,
                )
                .unwrap();
            if i == WINDOW - 1 {
                let Fed::Window { counts: window, .. } = fed else {
                    panic!("no window at the end of drawn window {j}: {fed:?}");
                };
                assert_eq!(window[..], whole.window.samples[..], "drawn window {j}");
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 4);
}

const DEVICES: u32 = 4;
const READINGS_PER_DEVICE: u64 = 300;
const HOP: usize = 8;

/// 4 simulated devices, 300 readings each at 250 Hz, against a route assembling the edge
/// model's 3 × 64 window every 8 readings: each device's readings 64, 72, … 296 complete
/// a window (30 each), and exactly those are answered, under their own reading numbers;
/// the other 1080 readings get no command; reflexd counts 120 events, no bad input, no
/// gap, duplicate, stale window or eviction.
#[test]
fn a_simulated_scalar_stream_is_answered_once_per_window_and_never_between() {
    let _serial = serial();
    let broker = reflex_tests::spawn_broker();
    let route = format!(
        r#"on_budget_unmeetable = "warn"
[routes.input]
kind = "json"
seq = "/n"
timestamp = "/ts"
channels = ["/ax", "/ay", "/az"]
temperature = "/temp"
resolution = {}
[routes.input.assemble]
hop = {HOP}"#,
        1.0 / f64::from(COUNTS_PER_G)
    );
    // A generous budget: this test is about which readings are answered, not how fast
    // (the fallback answers whatever the model cannot in time).
    let config = write_config(&broker, "scalar-stream", 20.0, &route);
    let _daemon = spawn_daemon(&config);
    reflex_tests::wait_until("reflexd's subscription", Duration::from_secs(60), || {
        metric(&scrape(&config), "reflexd_mqtt_subscribed") == 1
    });

    let plan = StreamPlan::edge(HOP).unwrap();
    let readings = u64::from(DEVICES) * READINGS_PER_DEVICE;
    let windows = u64::from(DEVICES) * plan.windows_in(READINGS_PER_DEVICE);
    assert_eq!(windows, 120, "(300 - 64) / 8 + 1 = 30 windows per device");
    let fleet = FleetConfig {
        devices: DEVICES,
        first_device: 0,
        rate_per_device: 250.0,
        duration: None,
        max_events: Some(readings),
        scenario: reflex_sim::scenario::Scenario::Steady,
        drift_devices: 0,
        faults: Default::default(),
        clock_skew_us: 0,
        deadline_hint_us: None,
        window: reflex_sim::fleet::DEFAULT_WINDOW,
        format: Format::ScalarJson(ScalarStream { plan }),
        seed: 5,
        // Counted, not asserted: speed is for the benchmark.
        measure_deadline_us: Some(20_000),
        // Bounded: the fleet stops waiting as soon as every window is answered.
        drain: Duration::from_secs(30),
        progress: false,
    };
    let broker_opts = BrokerOptions {
        host: "127.0.0.1".into(),
        port: broker.port,
        qos: rumqttc::QoS::AtLeastOnce,
        credentials: None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let out = rt
        .block_on(run_fleet(broker_opts, fleet, CancellationToken::new()))
        .unwrap();
    let r = out.report.expect("load mode reports");
    assert_eq!((out.events, out.messages), (readings, readings));
    assert_eq!(
        (r.sent, r.answered, r.missing, r.unexpected),
        (windows, windows, 0, 0),
        "{r}"
    );
    assert_eq!(r.silent, readings - windows, "{r}");

    let m = scrape(&config);
    let route = "{route=\"vibration\"}";
    assert_eq!(
        present(&m, &format!("reflexd_events_received_total{route}")),
        windows,
        "{m}"
    );
    // Every command reflexd published was one the fleet matched to a window.
    assert_eq!(
        present(&m, "reflexd_commands_published_total"),
        windows,
        "{m}"
    );
    for family in [
        "reflexd_assembly_gap_resets_total",
        "reflexd_assembly_duplicate_readings_total",
        "reflexd_assembly_stale_windows_total",
        "reflexd_assembly_evictions_total",
    ] {
        assert_eq!(present(&m, &format!("{family}{route}")), 0, "{family}\n{m}");
    }
    let refused: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("reflexd_bad_input_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(refused.is_empty(), "bad input: {refused:?}");
    assert!(bad_input(&config).is_empty());
}
