//! reflexd end to end against a real mosquitto on loopback, with the real edge model (it
//! reads 3 × 64 windows) run by tract: a window of another shape decodes, but the model
//! cannot read it, so it is bad input: refused (`shape_mismatch`), counted, kept on
//! `GET /bad-input`, acked, and never answered, not even by the fallback; the daemon
//! keeps answering the well-formed events around it.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use reflex_sim::device::SimDevice;
use reflex_sim::signal::{Condition, Distortion};
use reflex_tests::{spawn_broker, wait_until};
use reflex_wire::SensorEvent;

/// `n` events of one simulated device, well formed (3 × 64).
fn sensor_events(device_index: u32, n: usize) -> Vec<SensorEvent> {
    let mut d = SimDevice::new(device_index, Condition::ALL[device_index as usize % 4], 5);
    (0..n).map(|_| d.next_event(0, Distortion::NONE)).collect()
}

/// `event` with its window cut down to `channels × samples` (a sensor configured for
/// another model): still a valid event on the wire.
fn reshaped(event: &SensorEvent, channels: u8, samples: u16) -> SensorEvent {
    let mut e = event.clone();
    e.window.channels = channels;
    e.window.samples_per_channel = samples;
    e.window
        .samples
        .truncate(usize::from(channels) * usize::from(samples));
    e.validate()
        .expect("a reshaped event is still valid on the wire");
    e
}

fn json(events: &[SensorEvent]) -> Vec<(u64, Vec<u8>)> {
    events
        .iter()
        .map(|e| (e.seq, reflex_wire::json::encode_event(e)))
        .collect()
}

fn postcard(event: &SensorEvent) -> Vec<u8> {
    let mut buf = [0u8; reflex_wire::MAX_EVENT_BYTES];
    event.encode(&mut buf).expect("encodes").to_vec()
}

#[test]
fn windows_the_routes_model_cannot_read_are_refused_and_never_answered() {
    let _serial = serial();
    let broker = spawn_broker();
    let config = write_config(&broker, "shape-mismatch", 5.0, "format = \"json\"");
    let _daemon = spawn_daemon(&config);
    let f = field(&broker);
    let evs = sensor_events(9, 140);
    let (i, _) = f.publish_until_answered("dev-0009", &json(&evs[..100]));
    while f.commands.try_recv().is_ok() {}

    // Two windows the edge model cannot read (they decode: the wire takes up to 8 × 1024),
    // then two well-formed events, all in order on one connection.
    let narrow = reshaped(&evs[i], 2, 32);
    let tiny = reshaped(&evs[i + 1], 1, 1);
    let good = &evs[i + 2..i + 4];
    for (_, payload) in json(&[narrow.clone(), tiny.clone()])
        .into_iter()
        .chain(json(good))
    {
        f.publish("dev-0009", payload);
    }
    // The good events are the sync point: once both are answered, the two before them
    // were judged, and any command for them would have been published before.
    let seen = f.collect(good.len(), Duration::from_secs(5));
    let answered: HashSet<u64> = seen.keys().map(|(_, seq)| *seq).collect();
    let expected: HashSet<u64> = good.iter().map(|e| e.seq).collect();
    assert_eq!(answered, expected, "answered: {seen:?}");
    for (key, commands) in &seen {
        assert_eq!(commands.len(), 1, "{key:?} answered {commands:?}");
    }
    assert!(
        f.commands.try_recv().is_err(),
        "a command after the good events' ones"
    );

    let m = scrape(&config);
    assert_eq!(
        present(&m, "reflexd_bad_input_total{reason=\"shape_mismatch\"}"),
        2,
        "{m}"
    );
    // Not handed to the engine: no fallback answer for a model that could not run.
    assert_eq!(
        present(
            &m,
            "reflexd_deadline_misses_total{route=\"vibration\",cause=\"model_error\"}"
        ),
        0,
        "{m}"
    );

    let kept = bad_input(&config);
    let reasons: Vec<&str> = kept.iter().map(|k| k["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["shape_mismatch", "shape_mismatch"], "{kept:?}");
    assert_eq!(kept[0]["topic"], "sensors/dev-0009/vibration", "{kept:?}");
    assert_eq!(
        kept[0]["detail"],
        "window 2 × 32 (channels × samples) does not fit the route's model, which reads 3 × 64",
        "{kept:?}"
    );
    assert_eq!(
        kept[1]["detail"],
        "window 1 × 1 (channels × samples) does not fit the route's model, which reads 3 × 64",
        "{kept:?}"
    );
    assert_eq!(
        kept[1]["len"],
        json(&[tiny])[0].1.len(),
        "the whole payload's length: {kept:?}"
    );

    // The daemon keeps answering.
    let next = &evs[i + 4];
    f.publish("dev-0009", json(std::slice::from_ref(next))[0].1.clone());
    let c = f
        .commands
        .recv_timeout(Duration::from_secs(5))
        .expect("the next good event is answered");
    assert_eq!((c.device.as_str(), c.seq), ("dev-0009", next.seq));
}

#[test]
fn more_misfit_windows_than_the_brokers_in_flight_window_are_acked_and_later_events_answered() {
    let _serial = serial();
    // The stock broker lets 20 QoS 1 messages be in flight to reflexd: were refused input
    // left unacked, the 21st and every later publish would never reach it.
    let broker = spawn_broker();
    let config = write_config(&broker, "shape-mismatch-acked", 5.0, "");
    let _daemon = spawn_daemon(&config);
    let f = field(&broker);
    let evs = sensor_events(10, 150);
    let warm: Vec<(u64, Vec<u8>)> = evs[..100].iter().map(|e| (e.seq, postcard(e))).collect();
    let (i, _) = f.publish_until_answered("dev-0010", &warm);
    while f.commands.try_recv().is_ok() {}

    let misfits = 30;
    for e in &evs[i..i + misfits] {
        f.publish("dev-0010", postcard(&reshaped(e, 3, 32)));
    }
    let good = &evs[i + misfits];
    f.publish("dev-0010", postcard(good));
    let c = f
        .commands
        .recv_timeout(Duration::from_secs(5))
        .expect("the event after the misfits is answered");
    assert_eq!((c.device.as_str(), c.seq), ("dev-0010", good.seq));
    assert!(f.commands.try_recv().is_err(), "a misfit was answered");

    let m = scrape(&config);
    assert_eq!(
        present(&m, "reflexd_bad_input_total{reason=\"shape_mismatch\"}"),
        misfits as u64,
        "{m}"
    );
}

#[test]
fn after_a_model_reload_misfit_windows_are_still_refused_and_good_ones_answered() {
    let _serial = serial();
    let broker = spawn_broker();
    let config = write_config(&broker, "shape-reload", 5.0, "");
    let daemon = spawn_daemon(&config);
    let f = field(&broker);
    let evs = sensor_events(11, 150);
    let warm: Vec<(u64, Vec<u8>)> = evs[..100].iter().map(|e| (e.seq, postcard(e))).collect();
    let (i, _) = f.publish_until_answered("dev-0011", &warm);
    while f.commands.try_recv().is_ok() {}

    // SIGHUP: the model is loaded, checked and calibrated again, then swapped in, its
    // input shape with it.
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &daemon.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(hup.success());
    let reloaded = || {
        metric(
            &scrape(&config),
            "reflexd_model_reloads_total{result=\"ok\"}",
        )
    };
    wait_until("the model to be reloaded", Duration::from_secs(30), || {
        reloaded() >= 1
    });

    f.publish("dev-0011", postcard(&reshaped(&evs[i], 4, 48)));
    let good = &evs[i + 1];
    f.publish("dev-0011", postcard(good));
    let c = f
        .commands
        .recv_timeout(Duration::from_secs(5))
        .expect("the good event is answered by the reloaded daemon");
    assert_eq!((c.device.as_str(), c.seq), ("dev-0011", good.seq));
    assert!(f.commands.try_recv().is_err(), "the misfit was answered");
    let m = scrape(&config);
    assert_eq!(
        present(&m, "reflexd_bad_input_total{reason=\"shape_mismatch\"}"),
        1,
        "{m}"
    );
    let kept = bad_input(&config);
    assert_eq!(
        kept[0]["detail"],
        "window 4 × 48 (channels × samples) does not fit the route's model, which reads 3 × 64",
        "{kept:?}"
    );
}
