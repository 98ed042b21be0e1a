//! reflexd end to end with input adapters (`[routes.input]`), against a real mosquitto on
//! loopback and the real edge model (3 × 64 windows) run by tract: sensors that publish
//! their own JSON, packed binary frames, no sequence numbers, or one reading per message
//! are answered; hostile payloads are refused by reason, counted, kept on `/bad-input`,
//! never answered, and the daemon keeps answering good events around them.
//!
//! The routes and the native route they come before: `common::routes`.

mod common;

use std::time::Duration;

use common::routes::*;
use common::*;
use reflex_tests::spawn_broker;
use reflex_wire::{DecisionSource, SensorEvent};

/// `event` as a third-party sensor would publish it: its own field names, g as floats,
/// time in ms, temperature in °C.
fn vendor_json(device: &str, event: &SensorEvent) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": device,
        "n": event.seq,
        "ts": 1_765_000_000_000u64 + event.seq,
        "ax": channel_g(event, 0),
        "ay": channel_g(event, 1),
        "az": channel_g(event, 2),
        "temp": event.temperature_c(),
    }))
    .unwrap()
}

/// `event` as a packed frame: u32 LE sequence number, then i16 LE counts, planar.
fn frame(event: &SensorEvent) -> Vec<u8> {
    let mut out = (event.seq as u32).to_le_bytes().to_vec();
    for v in &event.window.samples {
        out.extend(v.to_le_bytes());
    }
    out
}

fn json_route(name: &str, filter: &str, extra: &str) -> String {
    route(
        name,
        filter,
        &format!(
            r#"kind = "json"
channels = ["/ax", "/ay", "/az"]
temperature = "/temp"
resolution = {res}
{extra}"#,
            res = g_per_count()
        ),
    )
}

#[test]
fn vendor_json_windows_are_answered_like_the_same_windows_in_reflexs_own_format() {
    let _serial = serial();
    let broker = spawn_broker();
    let mapped = json_route(
        "mapped",
        "plant/+/accel",
        "device = \"/id\"\nseq = \"/n\"\ntimestamp = \"/ts\"",
    );
    let config = write_routes(&broker, "adapters-json", &mapped);
    let (_daemon, f) = start(&broker, &config);

    let evs = sensor_events(3, 12);
    for e in &evs {
        publish_to(&f, &format!("sensors/{}/vibration", e.device), postcard(e));
        publish_to(&f, "plant/vendor-3/accel", vendor_json("vendor-3", e));
    }
    let seen = f.collect(2 * evs.len(), Duration::from_secs(10));
    assert_eq!(seen.len(), 2 * evs.len(), "answered: {seen:?}");
    let mut compared = 0;
    for e in &evs {
        let native = &seen[&(e.device.to_string(), e.seq)];
        let mapped = &seen[&("vendor-3".to_string(), e.seq)];
        assert_eq!((native.len(), mapped.len()), (1, 1), "one command each");
        let (n, m) = (&native[0], &mapped[0]);
        if n.source == DecisionSource::Model && m.source == DecisionSource::Model {
            // The same counts reach the same model: the same class.
            assert_eq!((n.class, n.action), (m.class, m.action), "seq {}", e.seq);
            compared += 1;
        }
    }
    assert!(compared > 0, "no pair answered by the model on both routes");
    let m = scrape(&config);
    assert_eq!(
        present(&m, "reflexd_events_received_total{route=\"mapped\"}"),
        evs.len() as u64,
        "{m}"
    );
}

#[test]
fn binary_frames_are_answered_and_truncated_ones_refused() {
    let _serial = serial();
    let broker = spawn_broker();
    let binary = route(
        "frames",
        "plant/+/frame",
        &format!(
            r#"kind = "binary"
sample_type = "i16"
channel_count = 3
samples = 64
header_bytes = 4
seq_offset = 0
scale = {g}
resolution = {g}"#,
            g = g_per_count()
        ),
    );
    let config = write_routes(&broker, "adapters-binary", &binary);
    let (_daemon, f) = start(&broker, &config);

    let evs = sensor_events(4, 4);
    publish_to(&f, "plant/frame-4/frame", frame(&evs[0]));
    let c = next_command(&f, "the first frame");
    assert_eq!((c.device.as_str(), c.seq), ("frame-4", evs[0].seq));

    let mut cut = frame(&evs[1]);
    cut.truncate(cut.len() - 1);
    publish_to(&f, "plant/frame-4/frame", cut);
    publish_to(&f, "plant/frame-4/frame", frame(&evs[2]));
    let c = next_command(&f, "the frame after the truncated one");
    assert_eq!((c.device.as_str(), c.seq), ("frame-4", evs[2].seq));
    assert!(
        f.commands.try_recv().is_err(),
        "the truncated frame was answered"
    );

    let m = scrape(&config);
    assert_eq!(
        present(&m, "reflexd_bad_input_total{reason=\"truncated\"}"),
        1,
        "{m}"
    );
    let kept = bad_input(&config);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["reason"], "truncated");
    assert_eq!(
        kept[0]["detail"], "binary payload of 387 bytes is shorter than its layout's 388",
        "{kept:?}"
    );
}

#[test]
fn a_sensor_without_sequence_numbers_gets_every_event_answered() {
    let _serial = serial();
    let broker = spawn_broker();
    // The sensor sends `"seq": 0` every time; the route does not read it.
    let config = write_routes(
        &broker,
        "adapters-seqless",
        &json_route("seqless", "plant/+/accel", ""),
    );
    let (_daemon, f) = start(&broker, &config);

    let e = &sensor_events(5, 1)[0];
    let n = 6;
    for _ in 0..n {
        publish_to(&f, "plant/counter-0/accel", vendor_json("ignored", e));
    }
    let seen = f.collect(n, Duration::from_secs(10));
    assert_eq!(
        seen.len(),
        n,
        "each identical event answered once: {seen:?}"
    );
    let mut seqs: Vec<u64> = seen
        .keys()
        .map(|(d, s)| {
            assert_eq!(d, "counter-0");
            *s
        })
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "reflexd numbers them apart: {seqs:?}");
    let m = scrape(&config);
    assert_eq!(
        present(&m, "reflexd_duplicate_events_total{route=\"seqless\"}"),
        0,
        "{m}"
    );
}

/// A scalar stream: reading `i` of `events` (3 channels, one value each), numbered and
/// stamped `ts_ms`.
fn reading(device: &str, n: u64, ts_ms: u64, event: &SensorEvent, i: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": device,
        "n": n,
        "ts": ts_ms,
        "ax": channel_g(event, 0)[i],
        "ay": channel_g(event, 1)[i],
        "az": channel_g(event, 2)[i],
        "temp": 40.0,
    }))
    .unwrap()
}

#[test]
fn a_scalar_stream_is_scored_in_windows_a_gap_resets_and_evictions_are_counted() {
    let _serial = serial();
    let broker = spawn_broker();
    let stream = json_route(
        "stream",
        "plant/+/reading",
        r#"device = "/id"
seq = "/n"
timestamp = "/ts"
[routes.input.assemble]
hop = 32
max_gap_ms = 100
max_age_ms = 60000
max_devices = 2"#,
    );
    let config = write_routes(&broker, "adapters-assembly", &stream);
    let (_daemon, f) = start(&broker, &config);
    let src = sensor_events(6, 4);
    let topic = "plant/pump-6/reading";
    // Readings n = 1, 2, … one ms apart; sample i of the source windows in turn.
    let mut n = 0u64;
    let mut ts = 1_765_000_000_000u64;
    let mut send = |f: &Field, count: usize, gap_ms: u64| {
        for k in 0..count {
            n += 1;
            ts += if k == 0 { gap_ms } else { 1 };
            let e = &src[(n as usize / 64) % src.len()];
            publish_to(f, topic, reading("pump-6", n, ts, e, n as usize % 64));
        }
        n
    };

    // 64 readings complete the first window: answered once, as the 64th reading.
    let last = send(&f, 64, 1);
    let c = next_command(&f, "the first window");
    assert_eq!((c.device.as_str(), c.seq), ("pump-6", last));
    // 32 more (the hop) complete the next.
    let last = send(&f, 32, 1);
    let c = next_command(&f, "the second window");
    assert_eq!(c.seq, last, "the second window ends at the hop");

    // 20 readings, then a 500 ms hole: the buffer starts again at the reading after it,
    // so the next window ends 64 readings later, not 32 − 20 = 12 later.
    send(&f, 20, 1);
    let first_after_gap = send(&f, 1, 500);
    let last = send(&f, 63, 1);
    let c = next_command(&f, "the window after the gap");
    assert_eq!(c.seq, last, "a window spanning the gap was scored");
    assert_eq!(last, first_after_gap + 63);
    assert!(f.commands.try_recv().is_err(), "more than one window");

    // A redelivered reading (same n) is dropped, not buffered twice.
    publish_to(&f, topic, reading("pump-6", last, ts, &src[0], 0));

    // Two more devices with max_devices = 2: the least recently fed is evicted.
    for d in ["pump-7", "pump-8"] {
        publish_to(
            &f,
            &format!("plant/{d}/reading"),
            reading(d, 1, ts, &src[0], 0),
        );
    }
    // The native route is the sync point: once it answers, the readings before it
    // (same connection, in order) were judged.
    sync(&f, 9, "an assembled window");

    let m = scrape(&config);
    assert_eq!(
        present(&m, "reflexd_assembly_gap_resets_total{route=\"stream\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        present(&m, "reflexd_assembly_evictions_total{route=\"stream\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        present(
            &m,
            "reflexd_assembly_duplicate_readings_total{route=\"stream\"}"
        ),
        1,
        "{m}"
    );
    assert_eq!(
        present(&m, "reflexd_assembly_stale_windows_total{route=\"stream\"}"),
        0,
        "{m}"
    );
    assert_eq!(
        present(&m, "reflexd_events_received_total{route=\"stream\"}"),
        3,
        "{m}"
    );
}

#[test]
fn hostile_payloads_are_refused_by_reason_and_good_events_still_answered() {
    let _serial = serial();
    let broker = spawn_broker();
    let routes = format!(
        "{}{}",
        json_route("vendor", "plant/+/accel", "device = \"/id\"\nseq = \"/n\""),
        route(
            "frames",
            "plant/+/frame",
            "kind = \"binary\"\nchannel_count = 3\nsamples = 64\nheader_bytes = 4\nseq_offset = 0\nresolution = 0.001",
        )
    );
    let config = write_routes(&broker, "adapters-hostile", &routes);
    let (_daemon, f) = start(&broker, &config);
    let evs = sensor_events(8, 3);
    let good = || vendor_json("dev-8", &evs[0]);
    let with = |patch: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_slice(&good()).unwrap();
        patch(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let array = |n: usize| {
        format!(
            r#"{{"id":"dev-8","n":1,"ax":[{}]}}"#,
            vec!["0"; n].join(",")
        )
        .into_bytes()
    };
    let f32_frame = |bad: f32| {
        let mut p = 1u32.to_le_bytes().to_vec();
        for i in 0..192 {
            p.extend((if i == 100 { bad } else { 0.01f32 }).to_le_bytes());
        }
        p
    };
    let hostile: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "plant/dev-8/accel",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            "oversized",
        ),
        (
            "plant/dev-8/accel",
            format!("{}1{}", "[".repeat(1_000), "]".repeat(1_000)).into_bytes(),
            "bad_json",
        ),
        // Under the broker's message_size_limit (64 KiB), over the route's 16 KiB.
        ("plant/dev-8/accel", array(30_000), "oversized"),
        (
            "plant/dev-8/accel",
            b"{\"id\":\"dev-8\",\"n\":1,\"ax\":[NaN]}".to_vec(),
            "bad_json",
        ),
        (
            "plant/dev-8/accel",
            with(&|v| v["ax"][3] = serde_json::json!(1e40)),
            "bad_value",
        ),
        (
            "plant/dev-8/accel",
            with(&|v| {
                v.as_object_mut().unwrap().remove("az");
            }),
            "missing_field",
        ),
        (
            "plant/dev-8/accel",
            with(&|v| v["ay"] = serde_json::json!({"x": 1})),
            "wrong_type",
        ),
        (
            "plant/dev-8/accel",
            with(&|v| v["n"] = serde_json::json!("7")),
            "wrong_type",
        ),
        (
            "plant/dev-8/accel",
            with(&|v| {
                for c in ["ax", "ay", "az"] {
                    v[c] = serde_json::json!(vec![0.0; 32]);
                }
            }),
            "shape_mismatch",
        ),
        (
            "plant/dev-8/accel",
            with(&|v| v["ax"] = serde_json::json!([0.0])),
            "bad_window",
        ),
        ("plant/other-1/accel", good(), "device_mismatch"),
        (
            "plant/frm-8/frame",
            frame(&evs[1])[..100].to_vec(),
            "truncated",
        ),
        ("plant/frm-8/frame", f32_frame(f32::NAN), "bad_value"),
        ("plant/frm-8/frame", f32_frame(f32::INFINITY), "bad_value"),
        (
            "plant/frm-8/frame",
            [f32_frame(0.0), vec![0]].concat(),
            "trailing_bytes",
        ),
        ("plant/frame of 8/frame", f32_frame(0.0), "bad_device_id"),
    ];
    // A 10⁶-element array (2 MB) is beyond the stock broker's message_size_limit: the
    // broker drops it and reflexd never reads it (the mapping's own bound is unit-tested).
    publish_to(&f, "plant/dev-8/accel", array(1_000_000));
    for (topic, payload, _) in &hostile {
        publish_to(&f, topic, payload.clone());
    }
    // Good events on both adapters after the hostile ones: answered, and only they.
    publish_to(&f, "plant/dev-8/accel", good());
    publish_to(&f, "plant/frm-8/frame", f32_frame(0.02));
    let seen = f.collect(2, Duration::from_secs(10));
    let mut keys: Vec<(String, u64)> = seen.keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [("dev-8".to_string(), evs[0].seq), ("frm-8".to_string(), 1)],
        "answered: {seen:?}"
    );
    assert!(
        f.commands.try_recv().is_err(),
        "a hostile payload was answered"
    );

    let reasons: Vec<&str> = hostile.iter().map(|h| h.2).collect();
    assert_refused(&config, &reasons);
}

#[test]
fn a_window_spanning_more_than_its_maximum_age_is_not_scored() {
    let _serial = serial();
    let broker = spawn_broker();
    // Readings 1 ms apart: 64 of them span 63 ms, more than max_age_ms = 50.
    let stream = json_route(
        "slow",
        "plant/+/reading",
        r#"device = "/id"
seq = "/n"
timestamp = "/ts"
[routes.input.assemble]
max_gap_ms = 100
max_age_ms = 50"#,
    );
    let config = write_routes(&broker, "adapters-stale", &stream);
    let (_daemon, f) = start(&broker, &config);
    let src = &sensor_events(12, 1)[0];
    for n in 1..=64u64 {
        let payload = reading("slow-12", n, 1_765_000_000_000 + n, src, n as usize - 1);
        publish_to(&f, "plant/slow-12/reading", payload);
    }
    // The native route is the sync point (same connection, in order).
    sync(&f, 13, "the stale window");
    let m = scrape(&config);
    assert_eq!(
        present(&m, "reflexd_assembly_stale_windows_total{route=\"slow\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        present(&m, "reflexd_events_received_total{route=\"slow\"}"),
        0,
        "{m}"
    );
}
