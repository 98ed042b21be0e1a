//! Decision policies end to end: reflexd against a real mosquitto on loopback, the
//! repository's edge model run by tract, a real sled journal. A single odd window is held
//! back by debounce, agreement lets it through, a rule wins over the model, the actuator
//! receives exactly the route's template, and the journal says what decided.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use reflex_journal::record::JournalRecord;
use reflex_journal::store::{Journal, StoreConfig};
use reflex_models::Model;
use reflex_sim::device::SimDevice;
use reflex_sim::signal::{Condition, Distortion};
use reflex_tests::spawn_broker;
use reflex_wire::SensorEvent;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

const TEMPLATE: &str = r#"{"plc":"{device}","cmd":"{action}","why":"{reason}","class":"{class_name}","seq":{seq},"by":"{source}"}"#;

/// An actuator that keeps every command payload as received, raw.
fn actuator(port: u16) -> mpsc::Receiver<Vec<u8>> {
    let mut opts = MqttOptions::new(
        format!("test-actuator-{}", reflex_tests::free_port()),
        "127.0.0.1",
        port,
    );
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(opts, 1_000);
    client
        .subscribe("actuators/+/cmd", QoS::AtLeastOnce)
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _client = client;
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(p.payload.to_vec()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("actuator subscribed");
    rx
}

fn encode(ev: &SensorEvent) -> Vec<u8> {
    let mut buf = [0u8; reflex_wire::MAX_EVENT_BYTES];
    ev.encode(&mut buf).unwrap().to_vec()
}

/// Windows of `condition` that the edge model (tract, as reflexd runs it) classifies as
/// `class` with probability > 0.9: the test's "odd" and "normal" windows are what the
/// model says they are, not what the simulator meant.
fn windows(model: &mut Model, device: &mut SimDevice, class: usize, n: usize) -> Vec<SensorEvent> {
    let mut out = Vec::new();
    for _ in 0..2_000 {
        let ev = device.next_event(0, Distortion::NONE);
        let values: Vec<f32> = ev.window.values().collect();
        let p = model.predict(&values, ev.temperature_c()).unwrap();
        if p.class == class && p.probabilities()[class] > 0.9 {
            out.push(ev);
            if out.len() == n {
                return out;
            }
        }
    }
    panic!("the model classified too few windows as class {class}");
}

/// Publishes `ev` and waits for the command answering it (by device and `seq`).
fn ask(f: &Field, rx: &mpsc::Receiver<Vec<u8>>, ev: &SensorEvent) -> String {
    let device = ev.device.as_str();
    f.publish(device, encode(ev));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let payload = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no command for {device} seq {}", ev.seq));
        let text = String::from_utf8(payload).expect("a template payload is text");
        let v: serde_json::Value = serde_json::from_str(&text).expect("the template is JSON");
        if v["plc"] == device && v["seq"] == ev.seq {
            return text;
        }
    }
}

fn expected(device: &str, action: &str, why: &str, class: &str, seq: u64, by: &str) -> String {
    format!(
        r#"{{"plc":"{device}","cmd":"{action}","why":"{why}","class":"{class}","seq":{seq},"by":"{by}"}}"#
    )
}

#[test]
fn debounce_holds_a_single_odd_window_back_a_rule_wins_and_the_actuator_gets_the_template() {
    let _serial = serial();
    let repo = repo();
    let mut model = Model::load(repo.join("models/edge.manifest.json")).unwrap();
    let classes = model.classes().to_vec();
    let (healthy, bearing) = (0, 2);
    assert_eq!(
        (classes[healthy].as_str(), classes[bearing].as_str()),
        ("healthy", "bearing_fault")
    );
    let mut good = SimDevice::new(1, Condition::Healthy, 11);
    let mut bad = SimDevice::new(2, Condition::BearingFault, 12);
    let normal = windows(&mut model, &mut good, healthy, 12);
    let odd = windows(&mut model, &mut bad, bearing, 3);

    // A shock: one sample of a healthy window at full scale, far above any normal peak.
    let peak = |ev: &SensorEvent| {
        ev.window
            .channel(0)
            .iter()
            .map(|&c| (f32::from(c) * ev.window.scale).abs())
            .fold(0.0, f32::max)
    };
    let normal_peak = normal.iter().chain(&odd).map(peak).fold(0.0, f32::max);
    let mut shock = normal[11].clone();
    shock.window.samples[5] = i16::MAX;
    let shock_peak = peak(&shock);
    assert!(
        shock_peak > 2.0 * normal_peak,
        "{shock_peak} vs {normal_peak}"
    );
    let threshold = (shock_peak + normal_peak) / 2.0;
    let values: Vec<f32> = shock.window.values().collect();
    let shock_class = &classes[model.predict(&values, shock.temperature_c()).unwrap().class];
    assert_ne!(
        shock_class, "misalignment",
        "the model alone would answer `inspect`"
    );

    let broker = spawn_broker();
    let journal = test_dir("policy-journal");
    let route = format!(
        r#"on_budget_unmeetable = "warn"
command_template = '{TEMPLATE}'
[routes.policy]
default_action = "run"
debounce = {{ n = 2, m = 3 }}
[[routes.policy.rules]]
name = "shock"
metric = "peak"
channel = 0
above = {threshold}
action = "inspect"
"#
    );
    // A generous budget: every answer here is the model's (or the rule's), never the
    // fallback's.
    let config = write_config(&broker, "policy", 200.0, &route);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[journal]\ndir = \"{}\"\ngroup_commit_ms = 5\n",
        journal.display()
    ));
    std::fs::write(&config, text).unwrap();
    let mut daemon = spawn_daemon(&config);
    let rx = actuator(broker.port);
    let f = field(&broker);

    // Until reflexd is subscribed, events are lost: warm up with normal windows.
    let warm = Instant::now() + Duration::from_secs(30);
    let mut warm_events = SimDevice::new(3, Condition::Healthy, 13);
    loop {
        let ev = warm_events.next_event(0, Distortion::NONE);
        f.publish(&ev.device, encode(&ev));
        if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            break;
        }
        assert!(Instant::now() < warm, "reflexd never answered");
    }

    // Every window as the next event of one device (the windows came from two simulated
    // ones): debounce and cooldown are per device.
    let dev = "press-1";
    let mut seq = 0;
    let mut step = |ev: &SensorEvent, action: &str, why: &str, class: &str, by: &str| {
        seq += 1;
        let mut ev = ev.clone();
        ev.device = dev.try_into().unwrap();
        ev.seq = seq;
        let got = ask(&f, &rx, &ev);
        assert_eq!(got, expected(dev, action, why, class, seq, by));
        seq
    };
    step(&normal[0], "run", "model", "healthy", "model");
    // The single odd window: the model says bearing_fault (stop); debounce holds it.
    let odd_seq = step(&odd[0], "run", "debounce", "bearing_fault", "model");
    step(&normal[1], "run", "model", "healthy", "model");
    step(&normal[2], "run", "model", "healthy", "model");
    step(&odd[1], "run", "debounce", "bearing_fault", "model");
    // Two of the last three agree: stop goes out.
    step(&odd[2], "stop", "model", "bearing_fault", "model");
    step(&normal[3], "run", "model", "healthy", "model");
    // The shock: the model proposes something other than `inspect` (checked above), the
    // rule decides.
    let shock_seq = step(&shock, "inspect", "rule:shock", shock_class, "rule");

    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(30)).success());
    // `reflexd journal tail` shows the decision with the record.
    let out = Command::new(REFLEXD)
        .args(["journal", "tail", "-n", "100", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let held = lines
        .iter()
        .find(|l| l["record"]["device"] == dev && l["record"]["seq"] == odd_seq)
        .expect("the held window's record");
    assert_eq!(held["decision"]["reason"], "debounce", "{held}");
    assert_eq!(held["decision"]["proposed"], "stop", "{held}");

    let (j, _) = Journal::open(StoreConfig::new(&journal)).unwrap();
    let traces: Vec<_> = j
        .scan(0, 10_000, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, bytes)| JournalRecord::decode_with_decision(&bytes).unwrap())
        .filter(|(r, _)| r.device == dev)
        .collect();
    assert_eq!(traces.len(), 8, "every decision of {dev} journaled");
    let find = |seq: u64| traces.iter().find(|(r, _)| r.seq == seq).unwrap();
    let (rec, trace) = find(odd_seq);
    let trace = trace
        .as_ref()
        .expect("a policy route journals its decision");
    assert_eq!(
        (
            trace.reason.as_str(),
            trace.proposed.as_str(),
            trace.rule.as_str()
        ),
        ("debounce", "stop", "")
    );
    assert!(trace.confidence.unwrap() > 0.9);
    assert_eq!(
        rec.command,
        expected(dev, "run", "debounce", "bearing_fault", odd_seq, "model").into_bytes()
    );
    let (rec, trace) = find(shock_seq);
    let trace = trace.as_ref().unwrap();
    assert_eq!(
        (trace.reason.as_str(), trace.rule.as_str()),
        ("rule", "shock")
    );
    assert_eq!(rec.source, reflex_journal::record::DecisionSource::Rule);
}

#[test]
fn validate_refuses_a_malformed_policy_naming_every_field_and_exits_64() {
    let dir = test_dir("policy-validate");
    let models = repo().join("models");
    let config = write_config_with(
        "port = 1883",
        "policy-validate",
        5.0,
        r#"on_budget_unmeetable = "warn"
command_template = '{"plc":"{device}","cmd":"{command}"}'
[routes.policy]
actions = { bearing_falt = "stop", imbalance = "halt" }
min_confidence = 1.5
debounce = { n = 0, m = 3 }
"#,
        &models,
    );
    let bad = dir.join("bad.toml");
    std::fs::copy(&config, &bad).unwrap();
    let out = Command::new(REFLEXD)
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    for line in [
        r#"routes[0].command_template = "{\"plc\":\"{device}\",\"cmd\":\"{command}\"}": unknown placeholder {command}"#,
        r#"routes[0].policy.actions.imbalance = "halt": must be one of"#,
        "routes[0].policy.min_confidence = 1.5: must be finite and in 0..=1",
        "routes[0].policy.debounce.n = 0: must be in 1..=debounce.m (3)",
    ] {
        assert!(err.contains(line), "missing `{line}` in:\n{err}");
    }
    // The class name is checked against the model's manifest with the other file checks,
    // once the values are valid.
    let text = std::fs::read_to_string(&bad)
        .unwrap()
        .replace("{command}", "{action}")
        .replace("\"halt\"", "\"inspect\"")
        .replace("1.5", "0.5")
        .replace("n = 0", "n = 2");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(REFLEXD)
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains(
            r#"routes[0].policy.actions = "bearing_falt": no such class in the route's model"#
        ),
        "{err}"
    );
    assert!(Path::new(&bad).exists());
}
