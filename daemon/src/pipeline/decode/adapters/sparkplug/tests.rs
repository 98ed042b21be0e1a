use proptest::prelude::*;
use reflex_sparkplug::{
    f32_array, f64_array, i16_array, metric::Value, DataType, Message, Metric, Payload,
};

use super::*;
use crate::config::input::{AssembleConfig, InputConfig, InputKind};

const NODE: &str = "spBv1.0/plant1";

fn mapping(extra: impl FnOnce(&mut InputConfig)) -> Mapping {
    let mut input = InputConfig {
        kind: InputKind::SparkplugB,
        channels: vec!["accel/x".into(), "accel/y".into()],
        temperature: Some("temp".into()),
        resolution: 0.5,
        ..InputConfig::default()
    };
    extra(&mut input);
    Mapping::of(&input).unwrap()
}

fn metric(name: Option<&str>, alias: u64, datatype: DataType, value: Option<Value>) -> Metric {
    Metric {
        name: name.map(str::to_owned),
        alias: Some(alias),
        datatype: Some(datatype as u32),
        value,
        ..Metric::default()
    }
}

/// A DBIRTH naming the route's metrics (aliases 1, 2, 3) and one it does not read.
fn birth() -> Vec<u8> {
    Payload {
        timestamp: Some(1_765_000_000_000),
        seq: Some(1),
        metrics: vec![
            metric(
                Some("accel/x"),
                1,
                DataType::FloatArray,
                Some(Value::BytesValue(vec![])),
            ),
            metric(
                Some("accel/y"),
                2,
                DataType::FloatArray,
                Some(Value::BytesValue(vec![])),
            ),
            metric(
                Some("temp"),
                3,
                DataType::Float,
                Some(Value::FloatValue(20.0)),
            ),
            metric(
                Some("label"),
                4,
                DataType::String,
                Some(Value::StringValue("x".into())),
            ),
        ],
        ..Payload::default()
    }
    .encode_to_vec()
}

/// DDATA by alias only: x and y as FloatArrays, temperature a Float.
fn data(x: &[f32], y: &[f32], temp: f32) -> Vec<u8> {
    Payload {
        timestamp: Some(1_765_000_000_500),
        seq: Some(2),
        metrics: vec![
            Metric {
                timestamp: Some(1_765_000_000_123),
                ..metric(
                    None,
                    1,
                    DataType::FloatArray,
                    Some(Value::BytesValue(f32_array(x))),
                )
            },
            metric(
                None,
                2,
                DataType::FloatArray,
                Some(Value::BytesValue(f32_array(y))),
            ),
            metric(None, 3, DataType::Float, Some(Value::FloatValue(temp))),
        ],
        ..Payload::default()
    }
    .encode_to_vec()
}

fn topic(kind: &str, rest: &str) -> String {
    format!("{NODE}/{kind}/{rest}")
}

fn reading(outcome: Outcome) -> Reading {
    match outcome {
        Outcome::Data(r) => r,
        other => panic!("not data: {other:?}"),
    }
}

fn refusal(b: &mut Births, m: &Mapping, topic: &str, payload: &[u8]) -> (&'static str, String) {
    let e = b.read(m, topic, payload).unwrap_err();
    (e.reason(), e.to_string())
}

#[test]
fn a_birth_then_aliased_arrays_become_a_window_of_counts() {
    let m = mapping(|_| {});
    let mut b = Births::new(8);
    let o = b
        .read(&m, &topic("DBIRTH", "gw-1/pump-3"), &birth())
        .unwrap();
    assert_eq!(
        o,
        Outcome::Control {
            message_type: MessageType::DBirth,
            forgotten: vec![]
        }
    );
    let r = reading(
        b.read(
            &m,
            &topic("DDATA", "gw-1/pump-3"),
            &data(&[1.0, -2.0, 0.25], &[0.0, 3.0, 1.5], 41.25),
        )
        .unwrap(),
    );
    assert_eq!(r.device.as_deref(), Some("gw-1:pump-3"));
    assert_eq!((r.channels, r.samples), (2, 3));
    // 0.5 units per count; 0.25 / 0.5 = 0.5 rounds away from zero.
    assert_eq!(r.counts, [2, -4, 1, 0, 6, 3]);
    assert_eq!(r.temperature_centi_c, 4125);
    assert_eq!(
        r.timestamp_us,
        Some(1_765_000_000_123_000),
        "the metric's own time"
    );
    assert_eq!(r.seq, None, "Sparkplug's seq does not number events");
}

#[test]
fn aliased_data_before_any_birth_is_refused_as_an_unknown_alias() {
    let m = mapping(|_| {});
    let mut b = Births::new(8);
    let (reason, detail) = refusal(
        &mut b,
        &m,
        &topic("DDATA", "gw-1/pump-3"),
        &data(&[1.0], &[1.0], 20.0),
    );
    assert_eq!(reason, "unknown_alias");
    assert_eq!(
        detail,
        "device \"gw-1:pump-3\" sent metric alias 1 with no birth naming it (reflexd refuses aliased data until the next birth)"
    );
}

#[test]
fn a_death_forgets_the_device_until_its_next_birth() {
    let m = mapping(|_| {});
    let mut b = Births::new(8);
    let (d, good) = (topic("DDATA", "gw-1/pump-3"), data(&[1.0], &[1.0], 20.0));
    b.read(&m, &topic("DBIRTH", "gw-1/pump-3"), &birth())
        .unwrap();
    b.read(&m, &d, &good).unwrap();
    let o = b.read(&m, &topic("DDEATH", "gw-1/pump-3"), b"").unwrap();
    let gone = DeviceId::try_from("gw-1:pump-3").unwrap();
    assert_eq!(
        o,
        Outcome::Control {
            message_type: MessageType::DDeath,
            forgotten: vec![gone]
        }
    );
    assert_eq!(refusal(&mut b, &m, &d, &good).0, "unknown_alias");
    b.read(&m, &topic("DBIRTH", "gw-1/pump-3"), &birth())
        .unwrap();
    reading(b.read(&m, &d, &good).unwrap());
}

#[test]
fn a_node_death_or_rebirth_forgets_every_device_of_that_node_only() {
    let m = mapping(|_| {});
    let mut b = Births::new(8);
    for dev in ["gw-1/a", "gw-1/b", "gw-10/a"] {
        b.read(&m, &topic("DBIRTH", dev), &birth()).unwrap();
    }
    let Outcome::Control { mut forgotten, .. } = b.read(&m, &topic("NDEATH", "gw-1"), b"").unwrap()
    else {
        panic!("not a control message")
    };
    forgotten.sort();
    assert_eq!(
        forgotten,
        ["gw-1:a", "gw-1:b"].map(|d| DeviceId::try_from(d).unwrap())
    );
    assert_eq!(b.devices(), 1, "gw-10's device is another node's");
    let Outcome::Control { forgotten, .. } =
        b.read(&m, &topic("NBIRTH", "gw-10"), &birth()).unwrap()
    else {
        panic!("not a control message")
    };
    assert_eq!(
        forgotten,
        ["gw-10:a"].map(|d| DeviceId::try_from(d).unwrap())
    );
    assert_eq!(b.devices(), 1, "the node's own aliases, for NDATA");
    let r = reading(
        b.read(&m, &topic("NDATA", "gw-10"), &data(&[1.0], &[1.0], 20.0))
            .unwrap(),
    );
    assert_eq!(r.device.as_deref(), Some("gw-10"));
}

#[test]
fn named_metrics_are_read_without_a_birth_and_other_metrics_ignored() {
    let m = mapping(|i| i.temperature = None);
    let mut b = Births::new(8);
    let p = Payload {
        metrics: vec![
            metric(
                Some("other"),
                9,
                DataType::String,
                Some(Value::StringValue("x".into())),
            ),
            metric(
                Some("accel/y"),
                0,
                DataType::Int16Array,
                Some(Value::BytesValue(i16_array(&[3, -4]))),
            ),
            metric(
                Some("accel/x"),
                0,
                DataType::DoubleArray,
                Some(Value::BytesValue(f64_array(&[0.5, 1.0]))),
            ),
        ],
        ..Payload::default()
    };
    let r = reading(
        b.read(&m, &topic("DDATA", "gw/d"), &p.encode_to_vec())
            .unwrap(),
    );
    assert_eq!(r.counts, [1, 2, 6, -8]);
    assert_eq!(
        r.timestamp_us, None,
        "no time in the message: the arrival's"
    );
}

#[test]
fn scalar_metrics_are_single_readings_only_with_window_assembly() {
    let p = Payload {
        metrics: vec![
            metric(
                Some("accel/x"),
                1,
                DataType::Float,
                Some(Value::FloatValue(1.0)),
            ),
            metric(
                Some("accel/y"),
                2,
                DataType::Int32,
                Some(Value::IntValue((-3i32) as u32)),
            ),
        ],
        ..Payload::default()
    }
    .encode_to_vec();
    let mut b = Births::new(8);
    let plain = mapping(|i| i.temperature = None);
    let (reason, detail) = refusal(&mut b, &plain, &topic("DDATA", "gw/d"), &p);
    assert_eq!(reason, "wrong_type");
    assert!(detail.contains("needs [routes.input.assemble]"), "{detail}");
    let assembled = mapping(|i| {
        i.temperature = None;
        i.assemble = Some(AssembleConfig::default());
    });
    let r = reading(b.read(&assembled, &topic("DDATA", "gw/d"), &p).unwrap());
    assert_eq!((r.channels, r.samples, r.counts), (2, 1, vec![2, -6]));
}

#[test]
fn hostile_messages_are_refused_with_their_reason() {
    // Room for one array of more samples than the wire carries (4 KiB of floats).
    let m = mapping(|i| i.max_payload_bytes = 8192);
    let mut b = Births::new(8);
    let d = topic("DDATA", "gw-1/pump-3");
    b.read(&m, &topic("DBIRTH", "gw-1/pump-3"), &birth())
        .unwrap();
    let with = |f: &dyn Fn(&mut Payload)| {
        let mut p = Payload::decode(data(&[1.0, 2.0], &[3.0, 4.0], 20.0).as_slice()).unwrap();
        f(&mut p);
        p.encode_to_vec()
    };
    let cases: Vec<(String, Vec<u8>, &str, &str)> = vec![
        (
            d.clone(),
            vec![0xff; 9000],
            "oversized",
            "payload of 9000 bytes exceeds",
        ),
        (
            d.clone(),
            b"\x12\xc0\x84\x3d garbage".to_vec(),
            "bad_protobuf",
            "not a Sparkplug B payload",
        ),
        (
            "sensors/pump-3/vibration".into(),
            data(&[1.0], &[1.0], 1.0),
            "bad_topic",
            "does not start with spBv1.0/",
        ),
        (
            topic("DDATA", "gw-1"),
            data(&[1.0], &[1.0], 1.0),
            "bad_topic",
            "a DDATA topic has 5 levels",
        ),
        (
            topic("DDATA", "gw:1/pump"),
            data(&[1.0], &[1.0], 1.0),
            "bad_device_id",
            "\"gw:1:pump\"",
        ),
        (
            topic("DDATA", &format!("gw-1/{}", "p".repeat(40))),
            data(&[1.0], &[1.0], 1.0),
            "bad_device_id",
            "exceeds the limit of 32",
        ),
        (
            d.clone(),
            with(&|p| {
                p.metrics.remove(1);
            }),
            "missing_field",
            "\"accel/y\" is missing",
        ),
        (
            d.clone(),
            with(&|p| p.metrics[0].value = Some(Value::StringValue("1".into()))),
            "wrong_type",
            "datatype FloatArray holds string_value",
        ),
        (
            d.clone(),
            with(&|p| p.metrics[0].datatype = Some(DataType::Boolean as u32)),
            "wrong_type",
            "datatype Boolean is not a number",
        ),
        (
            d.clone(),
            with(&|p| p.metrics[1].value = Some(Value::BytesValue(vec![0; 7]))),
            "bad_window",
            "not a whole number of 4-byte elements",
        ),
        (
            d.clone(),
            with(&|p| p.metrics[1].value = Some(Value::BytesValue(f32_array(&[f32::NAN, 1.0])))),
            "bad_value",
            "accel/y[0]",
        ),
        (
            d.clone(),
            with(&|p| {
                p.metrics[0].value = Some(Value::BytesValue(f32_array(&[f32::INFINITY, 1.0])))
            }),
            "bad_value",
            "not a finite number",
        ),
        (
            d.clone(),
            with(&|p| p.metrics[2].is_null = Some(true)),
            "bad_value",
            "is null",
        ),
        (
            d.clone(),
            with(&|p| p.metrics[2].value = Some(Value::FloatValue(500.0))),
            "bad_value",
            "not a temperature",
        ),
        (
            d.clone(),
            with(&|p| {
                p.metrics[0].value = Some(Value::BytesValue(f32_array(
                    &[0.0; MAX_SAMPLES_PER_CHANNEL + 1],
                )))
            }),
            "bad_window",
            "has 1025 samples, expected 1..=1024",
        ),
        (
            d.clone(),
            with(&|p| p.metrics[0].value = Some(Value::BytesValue(vec![]))),
            "bad_window",
            "has 0 samples",
        ),
        (
            d.clone(),
            with(&|p| p.metrics[1].value = Some(Value::BytesValue(f32_array(&[1.0])))),
            "bad_window",
            "has 1 samples, the channels before it 2",
        ),
        (
            d.clone(),
            with(&|p| p.metrics[0].timestamp = Some(u64::MAX)),
            "bad_value",
            "between 1970 and 2500",
        ),
        (
            topic("DBIRTH", "gw-1/pump-4"),
            with(&|p| {
                p.metrics[0].name = Some("accel/x".into());
                p.metrics[0].datatype = Some(DataType::String as u32);
            }),
            "wrong_type",
            "datatype String is not a number",
        ),
    ];
    for (topic, payload, reason, detail) in &cases {
        let (got, text) = refusal(&mut b, &m, topic, payload);
        assert_eq!(
            (got, text.contains(detail)),
            (*reason, true),
            "{topic}: {text}"
        );
    }
    // 5000 empty metrics (10 kB): more than MAX_METRICS, within the default 16 KiB.
    let many = Payload {
        metrics: vec![Metric::default(); 5000],
        ..Payload::default()
    };
    let (reason, text) = refusal(&mut b, &mapping(|_| {}), &d, &many.encode_to_vec());
    assert_eq!(
        (reason, text.as_str()),
        ("oversized", "payload has more than 4096 metrics")
    );
    // The device is still known and readable after all of them.
    reading(b.read(&m, &d, &with(&|_| {})).unwrap());
}

#[test]
fn the_devices_remembered_are_bounded_and_evictions_counted() {
    let m = mapping(|_| {});
    let mut b = Births::new(2);
    for dev in ["gw/a", "gw/b"] {
        b.read(&m, &topic("DBIRTH", dev), &birth()).unwrap();
    }
    // `a` fed last: `b` is the least recently used.
    b.read(&m, &topic("DDATA", "gw/a"), &data(&[1.0], &[1.0], 1.0))
        .unwrap();
    b.read(&m, &topic("DBIRTH", "gw/c"), &birth()).unwrap();
    assert_eq!((b.devices(), b.evictions), (2, 1));
    let (reason, _) = refusal(
        &mut b,
        &m,
        &topic("DDATA", "gw/b"),
        &data(&[1.0], &[1.0], 1.0),
    );
    assert_eq!(reason, "unknown_alias");
    b.read(&m, &topic("DDATA", "gw/a"), &data(&[1.0], &[1.0], 1.0))
        .unwrap();
}

#[test]
fn commands_are_not_data_and_change_nothing() {
    let m = mapping(|_| {});
    let mut b = Births::new(8);
    b.read(&m, &topic("DBIRTH", "gw/a"), &birth()).unwrap();
    for t in [topic("NCMD", "gw"), topic("DCMD", "gw/a")] {
        let o = b.read(&m, &t, b"\xff garbage").unwrap();
        assert!(
            matches!(o, Outcome::Control { ref forgotten, .. } if forgotten.is_empty()),
            "{o:?}"
        );
    }
    b.read(&m, &topic("DDATA", "gw/a"), &data(&[1.0], &[1.0], 1.0))
        .unwrap();
}

proptest! {
    #[test]
    fn arbitrary_bytes_on_any_topic_never_panic(
        kind in prop::sample::select(vec!["NBIRTH", "DBIRTH", "NDATA", "DDATA", "NDEATH", "DDEATH", "NCMD", "XDATA"]),
        bytes in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let m = mapping(|_| {});
        let mut b = Births::new(4);
        b.read(&m, &topic("DBIRTH", "gw/a"), &birth()).unwrap();
        let rest = if kind.starts_with('N') { "gw" } else { "gw/a" };
        let _ = b.read(&m, &topic(kind, rest), &bytes);
        // Whatever it was, good data is still read (unless it was a death or a birth
        // that replaced the table: then refused, never a panic).
        let _ = b.read(&m, &topic("DDATA", "gw/a"), &data(&[1.0], &[1.0], 1.0));
    }

    #[test]
    fn generated_windows_come_back_as_their_counts(
        x in prop::collection::vec(-16_000i16..16_000, 1..=64),
        seed in any::<u64>(),
    ) {
        // Channel y: x reversed, shifted by the seed.
        let y: Vec<i16> = x.iter().rev().map(|v| v.wrapping_add((seed % 100) as i16)).collect();
        let as_units = |c: &[i16]| c.iter().map(|&v| f32::from(v) * 0.5).collect::<Vec<f32>>();
        let m = mapping(|_| {});
        let mut b = Births::new(4);
        b.read(&m, &topic("DBIRTH", "gw/a"), &birth()).unwrap();
        let r = reading(b.read(&m, &topic("DDATA", "gw/a"), &data(&as_units(&x), &as_units(&y), -12.5)).unwrap());
        prop_assert_eq!(r.counts, [x.clone(), y].concat());
        prop_assert_eq!((r.channels, r.samples), (2, x.len()));
        prop_assert_eq!(r.temperature_centi_c, -1250);
    }
}
