//! reflexd end to end with a Sparkplug B route (`[routes.input] kind = "sparkplug_b"`),
//! against a real mosquitto on loopback and the real edge model (3 × 64) run by tract:
//! an edge node's births are acked and not answered, its devices' data by alias is
//! answered by the model; data whose aliases no birth explains (before a birth, after a
//! death) is refused; hostile payloads are refused by reason, counted, kept on
//! `/bad-input`, never answered, and a good event after them is; and reflex-sim's edge
//! node mode gets every event answered.
//!
//! Messages are built by reflex-sim's edge node (`reflex_sim::edge_node`: group
//! `reflex-sim`, node `sim-edge`, metrics `accel/x|y|z` and `temp` by aliases 1–4), or by
//! hand with `reflex_sparkplug` for the hostile ones.

mod common;

use std::time::Duration;

use common::routes::*;
use common::*;
use reflex_sim::edge_node::{reflex_device, topic_filter, EdgeNode};
use reflex_sparkplug::{f32_array, metric::Value, DataType, Message, Metric, Payload};
use reflex_tests::spawn_broker;
use reflex_wire::{DecisionSource, SensorEvent};

const DDATA: &str = "spBv1.0/reflex-sim/DDATA/sim-edge";

/// The Sparkplug route reading reflex-sim's edge node, before the native route.
fn sparkplug_route() -> String {
    route(
        "spb",
        &topic_filter(),
        &format!(
            r#"kind = "sparkplug_b"
channels = ["accel/x", "accel/y", "accel/z"]
temperature = "temp"
resolution = {}"#,
            g_per_count()
        ),
    )
}

fn publish(f: &Field, (topic, payload): (String, Vec<u8>)) {
    publish_to(f, &topic, payload);
}

fn bad_input_total(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("reflexd_bad_input_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn births_are_not_answered_and_aliased_data_after_them_is_answered_by_the_model() {
    let _serial = serial();
    let broker = spawn_broker();
    let config = write_routes(&broker, "sparkplug-birth", &sparkplug_route());
    let (_daemon, f) = start(&broker, &config);

    let mut node = EdgeNode::new(1);
    let evs = sensor_events(3, 8);
    publish(&f, node.nbirth(1_765_000_000_000));
    publish(&f, node.dbirth(&evs[0].device, 1_765_000_000_000));
    let device = reflex_device(&evs[0].device);
    let mut compared = 0;
    for e in &evs {
        publish(&f, node.ddata(e));
        let s = next_command(&f, "a DDATA");
        assert_eq!(
            s.device.as_str(),
            device,
            "the first command answers the data"
        );
        publish_to(&f, &format!("sensors/{}/vibration", e.device), postcard(e));
        let n = next_command(&f, "the same event, native");
        assert_eq!(n.device, e.device);
        if s.source == DecisionSource::Model && n.source == DecisionSource::Model {
            // The same counts reach the same model: the same class.
            assert_eq!((s.class, s.action), (n.class, n.action), "seq {}", e.seq);
            compared += 1;
        }
    }
    assert!(compared > 0, "no pair answered by the model on both routes");
    assert!(f.commands.try_recv().is_err(), "a birth was answered");
    let m = scrape(&config);
    assert_eq!(
        present(&m, "reflexd_events_received_total{route=\"spb\"}"),
        evs.len() as u64,
        "{m}"
    );
    assert_eq!(
        present(&m, "reflexd_sparkplug_births_total{route=\"spb\"}"),
        2,
        "{m}"
    );
    assert_eq!(bad_input_total(&m), 0, "{m}");
}

#[test]
fn aliased_data_before_a_birth_or_after_a_death_is_refused_until_the_next_birth() {
    let _serial = serial();
    let broker = spawn_broker();
    let config = write_routes(&broker, "sparkplug-death", &sparkplug_route());
    let (_daemon, f) = start(&broker, &config);

    let mut node = EdgeNode::new(1);
    let evs = sensor_events(5, 4);
    let dev = evs[0].device.to_string();
    let device = reflex_device(&dev);
    // Before any birth: aliases mean nothing.
    publish(&f, node.ddata(&evs[0]));
    publish(&f, node.dbirth(&dev, 1_765_000_000_000));
    publish(&f, node.ddata(&evs[1]));
    let c = next_command(&f, "the data after the birth");
    assert_eq!(c.device.as_str(), device);
    // After its death the device's aliases are forgotten, until it is born again.
    publish(&f, node.ddeath(&dev, 1_765_000_000_000));
    publish(&f, node.ddata(&evs[2]));
    sync(&f, 20, "data after the death");
    publish(&f, node.dbirth(&dev, 1_765_000_000_000));
    publish(&f, node.ddata(&evs[3]));
    let c = next_command(&f, "the data after the second birth");
    assert_eq!(c.device.as_str(), device);
    assert!(f.commands.try_recv().is_err(), "refused data was answered");

    let m = scrape(&config);
    assert_eq!(
        present(&m, "reflexd_bad_input_total{reason=\"unknown_alias\"}"),
        2,
        "{m}"
    );
    assert_eq!(
        present(&m, "reflexd_sparkplug_deaths_total{route=\"spb\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        present(&m, "reflexd_events_received_total{route=\"spb\"}"),
        2,
        "{m}"
    );
    let kept = bad_input(&config);
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert_eq!(
        kept[0]["detail"],
        format!("device {device:?} sent metric alias 1 with no birth naming it (reflexd refuses aliased data until the next birth)"),
        "{kept:?}"
    );
}

/// A good DDATA of `e`, then changed by `patch`.
fn patched(node: &mut EdgeNode, e: &SensorEvent, patch: &dyn Fn(&mut Payload)) -> Vec<u8> {
    let (_, bytes) = node.ddata(e);
    let mut p = Payload::decode(bytes.as_slice()).unwrap();
    patch(&mut p);
    p.encode_to_vec()
}

#[test]
fn hostile_sparkplug_payloads_are_refused_by_reason_and_a_good_event_after_them_answered() {
    let _serial = serial();
    let broker = spawn_broker();
    let config = write_routes(&broker, "sparkplug-hostile", &sparkplug_route());
    let (_daemon, f) = start(&broker, &config);

    let mut node = EdgeNode::new(1);
    let evs = sensor_events(7, 2);
    let dev = evs[0].device.to_string();
    let topic = format!("{DDATA}/{dev}");
    publish(&f, node.dbirth(&dev, 1_765_000_000_000));
    let e = &evs[0];
    let mut bad = |patch: &dyn Fn(&mut Payload)| patched(&mut node, e, patch);
    // A metric (field 2, 8 bytes: alias 1, then field 16 bytes_value) whose bytes_value
    // claims 4 000 000 bytes (10⁶ floats; varint 80 92 f4 01) in a payload of 10 bytes:
    // prost checks the length against what is there before it allocates.
    let claim = [0x12, 0x08, 0x10, 0x01, 0x82, 0x01, 0x80, 0x92, 0xf4, 0x01].to_vec();
    let hostile: Vec<(String, Vec<u8>, &str)> = vec![
        (
            topic.clone(),
            b"\x0a\xff\xff garbage, not protobuf".to_vec(),
            "bad_protobuf",
        ),
        (topic.clone(), claim, "bad_protobuf"),
        (topic.clone(), vec![0x08; 20_000], "oversized"),
        (
            topic.clone(),
            bad(&|p| p.metrics[0].value = Some(Value::BytesValue(f32_array(&[0.0; 1000])))),
            "bad_window",
        ),
        (
            topic.clone(),
            bad(&|p| p.metrics[1].value = Some(Value::BytesValue(f32_array(&[f32::NAN; 64])))),
            "bad_value",
        ),
        (
            topic.clone(),
            bad(&|p| p.metrics[2].value = Some(Value::StringValue("0.1".into()))),
            "wrong_type",
        ),
        (
            topic.clone(),
            bad(&|p| {
                p.metrics.remove(2);
            }),
            "missing_field",
        ),
        (
            topic.clone(),
            bad(&|p| {
                for m in &mut p.metrics[..3] {
                    m.value = Some(Value::BytesValue(f32_array(&[0.01; 32])));
                }
            }),
            "shape_mismatch",
        ),
        (format!("{DDATA}/{dev}/extra"), bad(&|_| {}), "bad_topic"),
        (
            format!("{DDATA}/{}", "d".repeat(40)),
            bad(&|_| {}),
            "bad_device_id",
        ),
        (format!("{DDATA}/never-born"), bad(&|_| {}), "unknown_alias"),
    ];
    // A real 10⁶-float array (4 MB) is beyond the stock broker's message_size_limit: the
    // broker drops it and reflexd never reads it (the adapter's bound is unit-tested).
    publish_to(
        &f,
        &topic,
        Payload {
            metrics: vec![Metric {
                alias: Some(1),
                datatype: Some(DataType::FloatArray as u32),
                value: Some(Value::BytesValue(f32_array(&vec![0.0; 1_000_000]))),
                ..Metric::default()
            }],
            ..Payload::default()
        }
        .encode_to_vec(),
    );
    for (t, payload, _) in &hostile {
        publish_to(&f, t, payload.clone());
    }
    publish(&f, node.ddata(&evs[1]));
    let c = next_command(&f, "the good event after the hostile ones");
    assert_eq!(c.device.as_str(), reflex_device(&dev));
    sync(&f, 21, "a hostile payload");
    assert!(
        f.commands.try_recv().is_err(),
        "a hostile payload was answered"
    );

    let reasons: Vec<&str> = hostile.iter().map(|h| h.2).collect();
    assert_refused(&config, &reasons);
    assert_eq!(bad_input_total(&scrape(&config)), hostile.len() as u64);
}

#[test]
fn the_simulated_edge_node_gets_every_event_answered_and_no_bad_input() {
    use reflex_sim::mqtt::{run_fleet, BrokerOptions, FleetConfig, Format};
    let _serial = serial();
    let broker = spawn_broker();
    let config = write_routes(&broker, "sparkplug-sim", &sparkplug_route());
    let (_daemon, _f) = start(&broker, &config);

    let devices = 4;
    let cfg = FleetConfig {
        devices,
        first_device: 0,
        rate_per_device: 20.0,
        duration: None,
        max_events: Some(120),
        scenario: reflex_sim::scenario::Scenario::Steady,
        drift_devices: 0,
        faults: reflex_sim::faults::FaultRates::default(),
        clock_skew_us: 0,
        deadline_hint_us: None,
        window: reflex_sim::fleet::DEFAULT_WINDOW,
        format: Format::Sparkplug,
        seed: 11,
        measure_deadline_us: Some(1_000_000),
        drain: Duration::from_secs(10),
        progress: false,
    };
    let opts = BrokerOptions {
        host: "127.0.0.1".into(),
        port: broker.port,
        qos: rumqttc::QoS::AtLeastOnce,
        credentials: None,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let outcome = rt
        .block_on(run_fleet(
            opts,
            cfg,
            tokio_util::sync::CancellationToken::new(),
        ))
        .unwrap();
    let report = outcome.report.expect("load mode reports");
    assert_eq!(outcome.events, 120);
    assert_eq!(
        (
            report.sent,
            report.answered,
            report.missing,
            report.unexpected
        ),
        (120, 120, 0, 0),
        "{report}"
    );
    // The deaths go out last: wait (bounded) until reflexd has read them.
    let deaths = u64::from(devices) + 1;
    reflex_tests::wait_until("the edge node's deaths", Duration::from_secs(10), || {
        metric(
            &scrape(&config),
            "reflexd_sparkplug_deaths_total{route=\"spb\"}",
        ) == deaths
    });
    let m = scrape(&config);
    assert_eq!(
        present(&m, "reflexd_sparkplug_births_total{route=\"spb\"}"),
        u64::from(devices) + 1,
        "{m}"
    );
    assert_eq!(
        present(&m, "reflexd_events_received_total{route=\"spb\"}"),
        120,
        "{m}"
    );
    assert_eq!(bad_input_total(&m), 0, "{m}");
}
