//! The simulator against a real mosquitto on loopback: what it publishes is valid
//! postcard (or JSON), faults arrive as undecodable payloads, and load mode matches every
//! command to its event through the echo client.

use std::process::{Command, Stdio};
use std::time::Duration;

use reflex_tests::{expect_line, require_tool, spawn_broker, ChildGuard};
use reflex_wire::{DecodeError, SensorEvent};

const SIM: &str = env!("CARGO_BIN_EXE_reflex-sim");

fn hex_to_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("mosquitto_sub prints hex"))
        .collect()
}

/// Runs `mosquitto_sub` until it has `count` messages, while the fleet publishes.
fn capture(broker: &reflex_tests::Broker, count: usize, fleet_args: &[&str]) -> Vec<Vec<u8>> {
    let sub_exe = require_tool("mosquitto_sub", "mosquitto-clients");
    let mut sub = ChildGuard::new(
        "mosquitto_sub",
        Command::new(sub_exe)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port.to_string(),
                "-q",
                "1",
                "-t",
                "sensors/+/vibration",
            ])
            .args(["-C", &count.to_string(), "-F", "%x", "-W", "30"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning mosquitto_sub"),
    );
    let lines = sub.stdout_lines();
    // The fleet publishes until the subscriber has seen enough (or 20 s pass).
    let _fleet = ChildGuard::new(
        "reflex-sim",
        Command::new(SIM)
            .args([
                "run",
                "--broker",
                &broker.addr(),
                "--quiet",
                "--duration-s",
                "20",
            ])
            .args(fleet_args)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawning reflex-sim"),
    );
    let status = sub.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "mosquitto_sub failed: {status}");
    // The reader thread may still hold lines the pipe had at the exit: take them all, up to
    // its end of file (the channel closes then), not only those already forwarded.
    let mut got: Vec<Vec<u8>> = Vec::new();
    while let Ok(l) = lines.recv_timeout(Duration::from_secs(10)) {
        got.push(hex_to_bytes(l.trim()));
    }
    assert_eq!(
        got.len(),
        count,
        "mosquitto_sub printed {} payloads",
        got.len()
    );
    got
}

#[test]
fn fleet_events_seen_by_mosquitto_sub_are_valid_postcard_events() {
    let broker = spawn_broker();
    let payloads = capture(&broker, 40, &["--devices", "4", "--rate", "20"]);
    let mut devices = std::collections::BTreeSet::new();
    for p in &payloads {
        let ev = SensorEvent::decode(p).unwrap_or_else(|e| panic!("payload did not decode: {e}"));
        assert_eq!((ev.window.channels, ev.window.samples_per_channel), (3, 64));
        devices.insert(ev.device.to_string());
    }
    assert_eq!(devices.len(), 4, "every device published: {devices:?}");
}

#[test]
fn injected_faults_reach_the_broker_and_decode_as_refusals() {
    let broker = spawn_broker();
    let payloads = capture(
        &broker,
        200,
        &[
            "--devices",
            "2",
            "--rate",
            "100",
            "--malformed",
            "0.2",
            "--oversized",
            "0.2",
            "--duplicate",
            "0.2",
        ],
    );
    let (mut good, mut oversized, mut other_bad) = (0, 0, 0);
    let mut seen = std::collections::HashMap::new();
    for p in &payloads {
        match SensorEvent::decode(p) {
            Ok(ev) => {
                good += 1;
                *seen.entry((ev.device.to_string(), ev.seq)).or_insert(0) += 1;
            }
            Err(DecodeError::Oversized { .. }) => oversized += 1,
            Err(_) => other_bad += 1,
        }
    }
    let duplicated = seen.values().filter(|&&n| n > 1).count();
    assert!(
        good > 0 && oversized > 0 && other_bad > 0 && duplicated > 0,
        "good {good} oversized {oversized} malformed {other_bad} duplicated {duplicated}"
    );
}

#[test]
fn json_format_publishes_valid_json_events() {
    let broker = spawn_broker();
    let payloads = capture(
        &broker,
        10,
        &["--devices", "2", "--rate", "20", "--format", "json"],
    );
    for p in &payloads {
        reflex_wire::json::decode_event(p).expect("valid JSON event");
    }
}

fn run_load_against_echo(extra: &[&str]) -> String {
    let broker = spawn_broker();
    let mut echo = ChildGuard::new(
        "reflex-sim echo",
        Command::new(SIM)
            .args(["echo", "--broker", &broker.addr()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning the echo client"),
    );
    let lines = echo.stdout_lines();
    expect_line(&lines, Duration::from_secs(15), "echo to subscribe", |l| {
        l == "echo ready"
    });
    let out = Command::new(SIM)
        .args([
            "load",
            "--broker",
            &broker.addr(),
            "--quiet",
            "--devices",
            "5",
            "--rate",
            "100",
        ])
        .args(["--events", "1000", "--deadline-ms", "1000"])
        .args(extra)
        .output()
        .expect("running reflex-sim load");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "load failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn figure(report: &str, name: &str) -> u64 {
    report
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no figure {name:?} in report:\n{report}"))
}

#[test]
fn load_mode_matches_every_command_to_its_event() {
    let report = run_load_against_echo(&[
        "--duplicate",
        "0.05",
        "--malformed",
        "0.05",
        "--reorder",
        "0.05",
    ]);
    assert_eq!(figure(&report, "events sent"), 1000);
    assert_eq!(figure(&report, "commands matched"), 1000);
    assert_eq!(figure(&report, "commands missing"), 0);
    // The echo client does not dedupe: each duplicate publish comes back as an unexpected
    // command, which is exactly what load mode must flag.
    assert!(figure(&report, "unexpected commands") > 0, "{report}");
    assert!(figure(&report, "latency p50 µs") > 0);
    assert!(figure(&report, "latency p50 µs") <= figure(&report, "latency p99 µs"));
}

#[test]
fn load_mode_works_with_json_payloads() {
    let report = run_load_against_echo(&["--format", "json"]);
    assert_eq!(figure(&report, "commands matched"), 1000);
    assert_eq!(figure(&report, "unexpected commands"), 0);
}

#[test]
fn dataset_command_writes_npy_files() {
    let dir = std::env::temp_dir().join(format!("reflex-sim-dataset-{}", std::process::id()));
    let out = Command::new(SIM)
        .args(["dataset", "--out"])
        .arg(&dir)
        .args(["--per-class", "25", "--seed", "3"])
        .output()
        .expect("running reflex-sim dataset");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("wrote 100 examples"));
    let windows = std::fs::read(dir.join("windows.npy")).unwrap();
    let header = String::from_utf8_lossy(&windows[10..128]);
    assert!(header.contains("'shape': (100, 3, 64)"), "{header}");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["classes"][2], "bearing_fault");
    std::fs::remove_dir_all(&dir).unwrap();
}
