//! Helpers shared by reflexd's end-to-end tests: configs, spawning the daemon, a test
//! field client that publishes events and collects commands, metrics scraping.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use reflex_sim::device::SimDevice;
use reflex_sim::signal::{Condition, Distortion};
use reflex_tests::{Broker, ChildGuard};
use reflex_wire::Command;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

pub mod routes;

pub const REFLEXD: &str = env!("CARGO_BIN_EXE_reflexd");

/// These tests measure deadlines on a 2-core machine: they run one at a time, so that one
/// daemon's calibration and load do not eat another's budget.
pub static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Writes a config for one route, models from the repository, and returns its path.
pub fn write_config(broker: &Broker, name: &str, deadline_ms: f64, extra_route: &str) -> PathBuf {
    write_config_with(
        &format!("port = {}", broker.port),
        name,
        deadline_ms,
        extra_route,
        &repo().join("models"),
    )
}

/// Writes a config for one route: `mqtt` is the body of the [mqtt] section (port, TLS,
/// credentials), the edge model and fallback are in `models`.
pub fn write_config_with(
    mqtt: &str,
    name: &str,
    deadline_ms: f64,
    extra_route: &str,
    models: &Path,
) -> PathBuf {
    let dir = test_dir(name);
    // Tests run on busy machines: unless a test says otherwise, calibration noise must not
    // refuse to start (the fallback answers what the model cannot).
    let extra_route = if extra_route.contains("on_budget_unmeetable") {
        extra_route.to_owned()
    } else {
        format!("{extra_route}\non_budget_unmeetable = \"warn\"")
    };
    let text = format!(
        r#"
[mqtt]
client_id = "reflexd-{name}-{pid}"
{mqtt}
[metrics]
listen = "127.0.0.1:{metrics}"
[[routes]]
name = "vibration"
topic_filter = "sensors/+/vibration"
model = "edge"
deadline_ms = {deadline_ms}
command_topic = "actuators/{{device}}/cmd"
{extra_route}
[models.edge]
manifest = "{models}/edge.manifest.json"
fallback_manifest = "{models}/fallback.manifest.json"
calibration_runs = 500
"#,
        pid = std::process::id(),
        metrics = reflex_tests::free_port(),
        models = models.display(),
    );
    let path = dir.join("reflex.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A fresh directory for one test's files.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reflexd-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn metrics_port(config: &PathBuf) -> u16 {
    let text = std::fs::read_to_string(config).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
        .and_then(|p| p.trim_end_matches('"').parse().ok())
        .unwrap()
}

/// Starts reflexd and waits until its metrics endpoint answers. That does not mean it is
/// subscribed yet: tests that need that use [`Field::publish_until_answered`].
pub fn spawn_daemon(config: &PathBuf) -> ChildGuard {
    reflex_tests::spawn_reflexd(Path::new(REFLEXD), config, metrics_port(config), None)
}

pub fn scrape(config: &PathBuf) -> String {
    http_get(config, "/metrics")
}

/// GET `path` from the daemon's loopback HTTP endpoint; the whole response.
pub fn http_get(config: &PathBuf, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port(config))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of `series` in reflexd's metrics `text` as a count (see
/// [`reflex_tests::prometheus::metric`]).
pub fn metric(text: &str, series: &str) -> u64 {
    reflex_tests::prometheus::metric(text, series) as u64
}

/// The entries of `GET /bad-input`, oldest first.
pub fn bad_input(config: &PathBuf) -> Vec<serde_json::Value> {
    let response = http_get(config, "/bad-input");
    let body = response.split_once("\r\n\r\n").expect("an HTTP body").1;
    serde_json::from_str::<serde_json::Value>(body)
        .expect("JSON")
        .as_array()
        .expect("an array")
        .clone()
}

/// The value of `series` on /metrics, which must be there (a missing series is not 0).
pub fn present(metrics: &str, series: &str) -> u64 {
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(&format!("{series} "))),
        "{series} missing from:\n{metrics}"
    );
    metric(metrics, series)
}

/// A test client: publishes events, collects commands (postcard or JSON).
pub struct Field {
    pub client: Client,
    pub commands: mpsc::Receiver<Command>,
}

pub fn field(broker: &Broker) -> Field {
    field_on(broker.port, None)
}

/// A test client on `port` of 127.0.0.1, with optional (username, password).
pub fn field_on(port: u16, credentials: Option<(&str, &str)>) -> Field {
    field_with(port, credentials, false)
}

/// A test client with a persistent session: across a broker restart (with persistence)
/// the broker keeps its subscription and queues the commands meant for it.
pub fn persistent_field(broker: &Broker) -> Field {
    field_with(broker.port, None, true)
}

fn field_with(port: u16, credentials: Option<(&str, &str)>, persistent: bool) -> Field {
    let mut opts = MqttOptions::new(
        format!("test-field-{}", reflex_tests::free_port()),
        "127.0.0.1",
        port,
    );
    opts.set_clean_session(!persistent);
    if let Some((user, password)) = credentials {
        opts.set_credentials(user, password);
    }
    // Outgoing up to 4 MiB: tests publish oversized payloads on purpose.
    opts.set_max_packet_size(64 * 1024, 4 * 1024 * 1024);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(opts, 10_000);
    // As sensors should: without TCP_NODELAY, a publish written while the PUBACK of the
    // previous command is unacknowledged waits for the broker's delayed ACK (~40 ms).
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    conn.eventloop.set_network_options(net);
    client
        .subscribe("actuators/+/cmd", QoS::AtLeastOnce)
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    // A route's commands are in its format: postcard, or JSON.
                    let c = Command::decode(&p.payload)
                        .or_else(|_| reflex_wire::json::decode_command(&p.payload));
                    if let Ok(c) = c {
                        if tx.send(c).is_err() {
                            return;
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("test client subscribed");
    Field {
        client,
        commands: rx,
    }
}

impl Field {
    pub fn publish(&self, device: &str, payload: Vec<u8>) {
        self.client
            .publish(
                format!("sensors/{device}/vibration"),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .unwrap();
    }

    /// Publishes `events` in order, waiting up to 200 ms after each, until reflexd answers
    /// one: the events before its subscription took effect are lost, the rest are answered.
    /// Returns how many were published and the first command.
    pub fn publish_until_answered(
        &self,
        device: &str,
        events: &[(u64, Vec<u8>)],
    ) -> (usize, Command) {
        for (n, (_, bytes)) in events.iter().enumerate() {
            self.publish(device, bytes.clone());
            if let Ok(c) = self.commands.recv_timeout(Duration::from_millis(200)) {
                return (n + 1, c);
            }
        }
        panic!("reflexd answered none of {} events", events.len());
    }

    /// Collects commands until `n` distinct (device, seq) were seen; counts every command.
    pub fn collect(&self, n: usize, limit: Duration) -> HashMap<(String, u64), Vec<Command>> {
        let mut seen: HashMap<(String, u64), Vec<Command>> = HashMap::new();
        let deadline = std::time::Instant::now() + limit;
        while seen.len() < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.commands.recv_timeout(left) {
                Ok(c) => seen
                    .entry((c.device.to_string(), c.seq))
                    .or_default()
                    .push(c),
                Err(_) => break,
            }
        }
        seen
    }
}

pub fn events(device_index: u32, n: usize) -> Vec<(u64, Vec<u8>)> {
    let mut d = SimDevice::new(device_index, Condition::ALL[device_index as usize % 4], 3);
    (0..n)
        .map(|_| {
            let (seq, bytes) = d.next_encoded(0, Distortion::NONE);
            (seq, bytes.to_vec())
        })
        .collect()
}
