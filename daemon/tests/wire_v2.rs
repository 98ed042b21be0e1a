//! reflexd end to end with events of the wire's format version 2 (up to 8 channels × 1024
//! samples), against a real mosquitto on loopback (with the drop-in reflex ships, whose
//! `message_size_limit` is 64 KiB) and the real edge model (3 × 64 windows) run by tract:
//! a real accelerometer window of 3 × 1024 (and the 8 × 1024 maximum) passes the broker
//! and reflexd's MQTT client, decodes, and is refused as `shape_mismatch` naming both
//! shapes, never as a decode error, never answered; the v1 events around it are answered.
//! A JSON adapter route reads 3 × 1024-sample arrays the same way, and with
//! `[routes.input.assemble]` builds the model's window from them.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use reflex_sim::device::SimDevice;
use reflex_sim::signal::{Condition, Distortion};
use reflex_tests::{spawn_broker, Broker};
use reflex_wire::{SensorEvent, EVENT_FORMAT_V1, EVENT_FORMAT_V2};

/// `n` events of one simulated device with windows of `channels` × `samples`.
fn sensor_events(device_index: u32, shape: (usize, usize), n: usize) -> Vec<SensorEvent> {
    let mut d = SimDevice::new(device_index, Condition::ALL[device_index as usize % 4], 5);
    d.set_window(shape.0, shape.1)
        .expect("a shape the wire carries");
    (0..n).map(|_| d.next_event(0, Distortion::NONE)).collect()
}

fn postcard(event: &SensorEvent) -> Vec<u8> {
    let mut buf = vec![0u8; reflex_wire::MAX_EVENT_BYTES];
    event.encode(&mut buf).expect("encodes").to_vec()
}

/// Refused as `shape_mismatch` with a detail naming the window's and the model's shape.
fn shape_detail(channels: usize, samples: usize) -> String {
    format!(
        "window {channels} × {samples} (channels × samples) does not fit the route's model, \
         which reads 3 × 64"
    )
}

/// The good event `seq`, published after the refused ones, is the sync point: once it is
/// answered, those before it were judged, and any command for them would have come first.
/// Asserts that it alone was answered.
fn assert_only_answered(f: &Field, seq: u64) {
    let seen = f.collect(1, Duration::from_secs(5));
    let answered: HashSet<u64> = seen.keys().map(|(_, seq)| *seq).collect();
    assert_eq!(answered, HashSet::from([seq]), "answered: {seen:?}");
    assert!(
        f.commands.try_recv().is_err(),
        "a command after the good event's"
    );
}

/// No refusal but `shape_mismatch`: the v2 windows decoded.
fn assert_only_shape_mismatches(config: &PathBuf, expected: u64) {
    let m = scrape(config);
    assert_eq!(
        present(&m, "reflexd_bad_input_total{reason=\"shape_mismatch\"}"),
        expected,
        "{m}"
    );
    let other: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("reflexd_bad_input_total{") && !l.contains("shape_mismatch"))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert!(other.is_empty(), "other refusals: {other:?}");
    // Not handed to the engine: no fallback answer for a model that could not run.
    assert_eq!(
        present(
            &m,
            "reflexd_deadline_misses_total{route=\"vibration\",cause=\"model_error\"}"
        ),
        0,
        "{m}"
    );
}

#[test]
fn a_v2_postcard_window_of_3_by_1024_is_refused_as_a_shape_mismatch_and_never_answered() {
    let _serial = serial();
    let broker = spawn_broker();
    let config = write_config(&broker, "wire-v2-postcard", 5.0, "");
    let _daemon = spawn_daemon(&config);
    let f = field(&broker);
    let evs = sensor_events(12, (3, 64), 140);
    let warm: Vec<(u64, Vec<u8>)> = evs[..100].iter().map(|e| (e.seq, postcard(e))).collect();
    assert!(warm.iter().all(|(_, b)| b[0] == EVENT_FORMAT_V1));
    let (i, _) = f.publish_until_answered("dev-0012", &warm);
    while f.commands.try_recv().is_ok() {}

    // A real accelerometer window and the wire's largest, numbered after the warm-up.
    let mut long = sensor_events(12, (3, 1024), 1).remove(0);
    long.seq = evs[i].seq;
    let mut widest = sensor_events(12, (8, 1024), 1).remove(0);
    widest.seq = evs[i + 1].seq;
    let (long_bytes, widest_bytes) = (postcard(&long), postcard(&widest));
    assert_eq!(
        (long_bytes[0], widest_bytes[0]),
        (EVENT_FORMAT_V2, EVENT_FORMAT_V2)
    );
    // Both beyond what the wire carried before version 2 (1024 bytes).
    assert!(long_bytes.len() > 3072 && widest_bytes.len() > 8192);
    let good = &evs[i + 2];
    f.publish("dev-0012", long_bytes.clone());
    f.publish("dev-0012", widest_bytes.clone());
    f.publish("dev-0012", postcard(good));

    assert_only_answered(&f, good.seq);
    assert_only_shape_mismatches(&config, 2);
    let kept = bad_input(&config);
    let details: Vec<&str> = kept.iter().map(|k| k["detail"].as_str().unwrap()).collect();
    assert_eq!(
        details,
        [shape_detail(3, 1024), shape_detail(8, 1024)],
        "{kept:?}"
    );
    assert_eq!(kept[0]["reason"], "shape_mismatch", "{kept:?}");
    assert_eq!(kept[0]["len"], long_bytes.len(), "{kept:?}");
    assert_eq!(kept[1]["len"], widest_bytes.len(), "{kept:?}");
}

/// A vendor's JSON: the window's raw counts per axis under its own names, with `n` as the
/// sequence number.
fn counts_json(event: &SensorEvent) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "n": event.seq,
        "ax": event.window.channel(0),
        "ay": event.window.channel(1),
        "az": event.window.channel(2),
    }))
    .unwrap()
}

/// The route `vibration` reads [`counts_json`] (counts at the sensor's resolution), with
/// `[routes.input.assemble]` when `assemble`.
fn json_route(broker: &Broker, name: &str, assemble: bool) -> PathBuf {
    let resolution = sensor_events(0, (3, 64), 1)[0].window.scale;
    let mut input = format!(
        "on_budget_unmeetable = \"warn\"\n\
         [routes.input]\n\
         kind = \"json\"\n\
         seq = \"/n\"\n\
         channels = [\"/ax\", \"/ay\", \"/az\"]\n\
         scale = {resolution}\n\
         resolution = {resolution}\n\
         max_payload_bytes = 65536\n"
    );
    if assemble {
        input.push_str("[routes.input.assemble]\n");
    }
    write_config(broker, name, 5.0, &input)
}

#[test]
fn a_json_route_reads_3_by_1024_arrays_and_refuses_them_as_a_shape_mismatch() {
    let _serial = serial();
    let broker = spawn_broker();
    let config = json_route(&broker, "wire-v2-json", false);
    let _daemon = spawn_daemon(&config);
    let f = field(&broker);
    let evs = sensor_events(13, (3, 64), 140);
    let warm: Vec<(u64, Vec<u8>)> = evs[..100].iter().map(|e| (e.seq, counts_json(e))).collect();
    let (i, _) = f.publish_until_answered("dev-0013", &warm);
    while f.commands.try_recv().is_ok() {}

    let mut long = sensor_events(13, (3, 1024), 1).remove(0);
    long.seq = evs[i].seq;
    let long_json = counts_json(&long);
    // Beyond the 8 KiB a JSON event could take before version 2.
    assert!(long_json.len() > 8192, "{} bytes", long_json.len());
    let good = &evs[i + 1];
    f.publish("dev-0013", long_json.clone());
    f.publish("dev-0013", counts_json(good));
    assert_only_answered(&f, good.seq);
    assert_only_shape_mismatches(&config, 1);
    let kept = bad_input(&config);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["detail"], shape_detail(3, 1024), "{kept:?}");
    assert_eq!(kept[0]["len"], long_json.len(), "{kept:?}");
}

#[test]
fn an_assembling_json_route_builds_the_models_window_from_3_by_1024_arrays() {
    let _serial = serial();
    let broker = spawn_broker();
    let config = json_route(&broker, "wire-v2-assemble", true);
    let _daemon = spawn_daemon(&config);
    let f = field(&broker);
    // Each 3 × 1024 message fills the 3 × 64 ring many times over: the window completed
    // by the message (its last 64 readings) is scored, one per message.
    let evs = sensor_events(14, (3, 1024), 40);
    let payloads: Vec<(u64, Vec<u8>)> = evs.iter().map(|e| (e.seq, counts_json(e))).collect();
    let (i, _) = f.publish_until_answered("dev-0014", &payloads[..30]);
    while f.commands.try_recv().is_ok() {}
    for (_, p) in &payloads[i..i + 5] {
        f.publish("dev-0014", p.clone());
    }
    let seen = f.collect(5, Duration::from_secs(5));
    let answered: HashSet<u64> = seen.keys().map(|(_, seq)| *seq).collect();
    let expected: HashSet<u64> = payloads[i..i + 5].iter().map(|(s, _)| *s).collect();
    assert_eq!(answered, expected, "answered: {seen:?}");
    for (key, commands) in &seen {
        assert_eq!(commands.len(), 1, "{key:?} answered {commands:?}");
    }
    let m = scrape(&config);
    let refused: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("reflexd_bad_input_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
}
