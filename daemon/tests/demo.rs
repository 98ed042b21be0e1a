#![cfg(feature = "demo")]
//! `reflexd demo`, README's first command, run as a user runs it: on the private mosquitto
//! when it is installed (as here: the tests need it), or on the embedded rumqttd when asked
//! to. Whatever the broker, a clean run answers every event and prints no ERROR line.
//! Latency figures are printed, not asserted (speed belongs in benchmarks).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use reflex_tests::ChildGuard;

/// The demo's stdout and stderr, after a short run with `broker` as `REFLEX_DEMO_BROKER`.
fn run_demo(broker: &str) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_reflexd"))
        .args([
            "demo",
            "--duration-s",
            "2",
            "--devices",
            "4",
            "--rate",
            "50",
        ])
        .env("REFLEX_DEMO_BROKER", broker)
        .env(
            "PATH",
            format!("{}:/usr/sbin", std::env::var("PATH").unwrap_or_default()),
        )
        .env_remove("REFLEX_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning reflexd demo");
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            r.read_to_string(&mut s).expect("reading the demo's output");
            s
        })
    };
    let out = read_all(Box::new(child.stdout.take().unwrap()));
    let err = read_all(Box::new(child.stderr.take().unwrap()));
    let mut guard = ChildGuard::new("reflexd demo", child);
    let status = guard.wait_exit(Duration::from_secs(120));
    (status, out.join().unwrap(), err.join().unwrap())
}

/// The two columns (echo, reflexd) of the figures table's row `name`.
fn row(stdout: &str, name: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no `{name}` row in:\n{stdout}"));
    let nums: Vec<u64> = line[name.len()..]
        .split_whitespace()
        .map(|n| n.parse().unwrap_or_else(|_| panic!("{line}")))
        .collect();
    assert_eq!(nums.len(), 2, "{line}");
    (nums[0], nums[1])
}

/// Exit status, both columns answered, no ERROR line on stderr.
fn assert_clean_run(status: std::process::ExitStatus, stdout: &str, stderr: &str) {
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    let (echo_matched, reflexd_matched) = row(stdout, "commands matched");
    assert!(echo_matched > 0 && reflexd_matched > 0, "{stdout}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "ERROR lines in a clean run:\n{}",
        errors.join("\n")
    );
}

#[test]
fn the_demo_runs_on_the_installed_mosquitto_and_prints_no_error() {
    let (status, stdout, stderr) = run_demo("auto");
    assert!(stdout.contains("broker: mosquitto ("), "{stdout}");
    assert!(!stdout.contains("rumqttd"), "{stdout}");
    assert!(
        stdout.contains("reflexd's metrics, while it runs: http://127.0.0.1:"),
        "{stdout}"
    );
    assert_clean_run(status, &stdout, &stderr);
    assert_eq!(row(&stdout, "commands missing"), (0, 0), "{stdout}");
}

// The embedded broker is an optional feature (scripts/test builds every feature).
#[cfg(feature = "embedded-broker")]
#[test]
fn the_demo_on_the_embedded_broker_says_why_its_floor_is_slow_and_prints_no_error() {
    let (status, stdout, stderr) = run_demo("embedded");
    assert!(
        stdout.contains("broker: embedded rumqttd on 127.0.0.1:"),
        "{stdout}"
    );
    assert!(stdout.contains("sets no TCP_NODELAY"), "{stdout}");
    // Not asserted here: that no command is missing. On a loaded machine rumqttd has left
    // a few QoS 1 messages of a 400-event run undelivered past the demo's 3 s drain
    // (reflexd never received them); the test above holds mosquitto, the broker reflexd
    // runs behind, to none missing.
    assert_clean_run(status, &stdout, &stderr);
}

#[test]
fn an_unknown_broker_choice_is_refused_by_name() {
    let (status, stdout, stderr) = run_demo("rabbitmq");
    assert!(!status.success(), "{stdout}");
    assert!(
        stderr.contains("REFLEX_DEMO_BROKER=\"rabbitmq\""),
        "{stderr}"
    );
}
