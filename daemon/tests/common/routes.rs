//! Routes with input adapters (`[routes.input]`) before a native route, and the
//! simulated sensors' events in the forms adapters read: shared by the adapter tests.
//!
//! Every config ends with a native route (reflex's own postcard events): the daemon
//! subscribes its routes in order, so once the native route answers, the adapter routes
//! before it are subscribed too.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use reflex_sim::device::SimDevice;
use reflex_sim::signal::{Condition, Distortion};
use reflex_tests::Broker;
use reflex_wire::{Command, SensorEvent};
use rumqttc::QoS;

use super::{bad_input, field, present, repo, scrape, spawn_daemon, test_dir, Field};

/// Units (g) per count of the simulated sensors: the adapters' `resolution`, so that a
/// window mapped from g values comes back as exactly the sensor's counts.
pub fn g_per_count() -> f64 {
    f64::from(sensor_events(0, 1)[0].window.scale)
}

/// `n` well-formed events (3 × 64) of one simulated device.
pub fn sensor_events(device_index: u32, n: usize) -> Vec<SensorEvent> {
    let mut d = SimDevice::new(device_index, Condition::ALL[device_index as usize % 4], 7);
    (0..n).map(|_| d.next_event(0, Distortion::NONE)).collect()
}

pub fn postcard(event: &SensorEvent) -> Vec<u8> {
    let mut buf = [0u8; reflex_wire::MAX_EVENT_BYTES];
    event.encode(&mut buf).expect("encodes").to_vec()
}

/// Channel `c` of `event` in g.
pub fn channel_g(event: &SensorEvent, c: usize) -> Vec<f64> {
    event
        .window
        .channel(c)
        .iter()
        .map(|&v| f64::from(v) * g_per_count())
        .collect()
}

/// A config whose `routes` (TOML `[[routes]]` entries) come before the native route
/// `native` on `sensors/+/vibration`; models from the repository.
pub fn write_routes(broker: &Broker, name: &str, routes: &str) -> PathBuf {
    let dir = test_dir(name);
    let models = repo().join("models");
    let text = format!(
        r#"
[mqtt]
client_id = "reflexd-{name}-{pid}"
port = {port}
[metrics]
listen = "127.0.0.1:{metrics}"
{routes}
[[routes]]
name = "native"
topic_filter = "sensors/+/vibration"
model = "edge"
deadline_ms = 50.0
command_topic = "actuators/{{device}}/cmd"
on_budget_unmeetable = "warn"
[models.edge]
manifest = "{models}/edge.manifest.json"
fallback_manifest = "{models}/fallback.manifest.json"
calibration_runs = 200
"#,
        pid = std::process::id(),
        port = broker.port,
        metrics = reflex_tests::free_port(),
        models = models.display(),
    );
    let path = dir.join("reflex.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A route on `topic_filter` with the given `[routes.input]` body (and sub-tables).
pub fn route(name: &str, topic_filter: &str, input: &str) -> String {
    format!(
        r#"
[[routes]]
name = "{name}"
topic_filter = "{topic_filter}"
model = "edge"
deadline_ms = 50.0
command_topic = "actuators/{{device}}/cmd"
on_budget_unmeetable = "warn"
[routes.input]
{input}
"#
    )
}

/// Starts the daemon and waits until its native route (subscribed last) answers.
pub fn start(broker: &Broker, config: &PathBuf) -> (reflex_tests::ChildGuard, Field) {
    let daemon = spawn_daemon(config);
    let f = field(broker);
    let evs = sensor_events(99, 100);
    let warm: Vec<(u64, Vec<u8>)> = evs.iter().map(|e| (e.seq, postcard(e))).collect();
    let (published, first) = f.publish_until_answered(&evs[0].device, &warm);
    // The events published after the first answered one are answered too, maybe after
    // it: wait for the last one's command, so that none arrives during the test.
    let last = evs[published - 1].seq;
    let mut c = first;
    while c.seq != last {
        c = next_command(&f, "the last warm-up event");
    }
    (daemon, f)
}

pub fn publish_to(f: &Field, topic: &str, payload: Vec<u8>) {
    f.client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .unwrap();
}

/// The next command, within 5 s.
pub fn next_command(f: &Field, what: &str) -> Command {
    f.commands
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("no command for {what}"))
}

/// Publishes native event `index` and waits for its command: the sync point, since the
/// messages published before it (same connection, in order) were judged by then.
/// `answered` names what must not have been answered before it.
pub fn sync(f: &Field, index: u32, answered: &str) {
    let e = &sensor_events(index, 1)[0];
    publish_to(f, &format!("sensors/{}/vibration", e.device), postcard(e));
    let c = next_command(f, "the sync event");
    assert_eq!(c.device, e.device, "{answered} was answered");
}

/// Asserts that the daemon refused exactly `reasons`, in that order: each counted in
/// `reflexd_bad_input_total{reason}` and kept on `/bad-input`.
pub fn assert_refused(config: &PathBuf, reasons: &[&str]) {
    let m = scrape(config);
    let mut expected: HashMap<&str, u64> = HashMap::new();
    for reason in reasons {
        *expected.entry(reason).or_default() += 1;
    }
    for (reason, count) in &expected {
        assert_eq!(
            present(
                &m,
                &format!("reflexd_bad_input_total{{reason=\"{reason}\"}}")
            ),
            *count,
            "{reason}: {m}"
        );
    }
    let kept: Vec<String> = bad_input(config)
        .iter()
        .map(|k| k["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kept, reasons);
}
