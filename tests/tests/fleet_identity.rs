//! Two boards on one machine, one stock broker and one cloud, each board with a device of
//! the same id: the cloud keeps them apart by (node, device) all the way to the rescore's
//! report.
//!
//! Both `reflexd run` share one main configuration file (the broker, the models, the
//! upload URL); what differs per board comes from where it would on a real fleet:
//! - the board's identity and local paths from its environment (`REFLEX_NODE__NAME`,
//!   `REFLEX_METRICS__LISTEN`, `REFLEX_JOURNAL__DIR`, `REFLEX_UPLOAD__TOKEN_FILE`, as a
//!   systemd drop-in's `Environment=` lines would set them);
//! - its topics from its own conf.d (`--conf-dir`). A real deployment gives each board its
//!   own topic namespace (`<board>/sensors/+/vibration`): two boards subscribed to the same
//!   topics would both answer, and actuate, every event. The device ids are the boards'
//!   own business: here both have `dev-0003`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reflex_sim::device::SimDevice;
use reflex_sim::signal::{Condition, Distortion};
use reflex_tests::{bins, free_port, hash_token, spawn_broker, spawn_reflexd_cmd, ChildGuard};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

const BOARDS: [&str; 2] = ["board-a", "board-b"];
/// Both boards' device: `dev-0003`.
const DEVICE_INDEX: u32 = 3;
/// Events each board's device publishes once its board is subscribed.
const EVENTS: usize = 60;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn unix_now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

fn token(board: &str) -> String {
    format!("{board}-upload-token")
}

/// A fresh directory for the test's files.
fn test_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reflex-fleet-identity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the test dir");
    dir
}

/// `reflex-cloud serve` accepting both boards; returns (config, ingest URL, process).
fn start_cloud(dir: &Path) -> (PathBuf, String, ChildGuard) {
    let port = free_port();
    let mut text = format!(
        "[ingest]\nlisten = \"127.0.0.1:{port}\"\n\n[storage]\nkind = \"local\"\npath = \"{}\"\n\n\
         [rescore]\nmodel_manifest = \"{}\"\nout_dir = \"{}\"\nbatch_size = 32\n",
        dir.join("store").display(),
        repo().join("models/cloud.manifest.json").display(),
        dir.join("runs").display(),
    );
    for board in BOARDS {
        text.push_str(&format!(
            "\n[[ingest.nodes]]\nnode = \"{board}\"\ntoken_sha256 = \"{}\"\n",
            hash_token(&token(board))
        ));
    }
    let config = dir.join("cloud.toml");
    std::fs::write(&config, text).expect("writing cloud.toml");
    let child = Command::new(bins::reflex_cloud())
        .args(["serve", "--config"])
        .arg(&config)
        .env("REFLEX_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning reflex-cloud serve");
    let mut guard = ChildGuard::new("reflex-cloud serve", child);
    guard.wait_listening(port, Duration::from_secs(30));
    (config, format!("http://127.0.0.1:{port}"), guard)
}

/// The one main configuration both boards share.
fn write_shared_config(dir: &Path, broker_port: u16, cloud_url: &str) -> PathBuf {
    let models = repo().join("models");
    let text = format!(
        r#"[mqtt]
port = {broker_port}

[models.edge]
manifest = "{models}/edge.manifest.json"
fallback_manifest = "{models}/fallback.manifest.json"
calibration_runs = 500

[journal]
quota_mib = 64

[upload]
url = "{cloud_url}"
batch_records = 20
batch_age_s = 1
"#,
        models = models.display(),
    );
    let path = dir.join("reflex.toml");
    std::fs::write(&path, text).expect("writing reflex.toml");
    path
}

/// A board's own drop-in directory: its route, in its topic namespace.
fn write_board_conf_dir(dir: &Path, board: &str) -> PathBuf {
    let conf_dir = dir.join(format!("{board}.d"));
    std::fs::create_dir_all(&conf_dir).expect("creating the board's conf.d");
    let text = format!(
        r#"[[routes]]
name = "vibration"
topic_filter = "{board}/sensors/+/vibration"
model = "edge"
# Generous on a loaded 2-core machine: this test is about identity, not deadlines.
deadline_ms = 20.0
command_topic = "{board}/actuators/{{device}}/cmd"
on_budget_unmeetable = "warn"
"#
    );
    std::fs::write(conf_dir.join("10-topics.toml"), text).expect("writing the drop-in");
    conf_dir
}

struct Board {
    name: &'static str,
    metrics_port: u16,
    daemon: ChildGuard,
}

fn start_board(dir: &Path, config: &Path, board: &'static str) -> Board {
    let conf_dir = write_board_conf_dir(dir, board);
    let token_file = dir.join(format!("{board}.token"));
    reflex_tests::write_secret(&token_file, &format!("{}\n", token(board)));
    let metrics_port = free_port();
    let mut cmd = Command::new(bins::reflexd());
    cmd.args(["run", "--config"])
        .arg(config)
        .arg("--conf-dir")
        .arg(&conf_dir)
        .env("REFLEX_LOG", "warn")
        .env("REFLEX_NODE__NAME", board)
        .env(
            "REFLEX_METRICS__LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        )
        .env("REFLEX_JOURNAL__DIR", dir.join(format!("{board}-journal")))
        .env("REFLEX_UPLOAD__TOKEN_FILE", &token_file);
    Board {
        name: board,
        metrics_port,
        daemon: spawn_reflexd_cmd(cmd, metrics_port),
    }
}

impl Board {
    fn metric(&mut self, series: &str) -> u64 {
        if let Ok(Some(status)) = self.daemon.child.try_wait() {
            panic!(
                "reflexd {} exited: {status}; its stderr ended with:\n{}",
                self.name,
                self.daemon.stderr_tail()
            );
        }
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port))
            .expect("connecting to reflexd's metrics");
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .expect("sending the request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("reading /metrics");
        reflex_tests::prometheus::metric(&text, series) as u64
    }
}

/// The two boards' sensors: one MQTT client publishing each board's `dev-0003` and
/// receiving the commands of both namespaces (their board's name).
struct Sensors {
    client: Client,
    commands: mpsc::Receiver<String>,
    devices: BTreeMap<&'static str, SimDevice>,
}

impl Sensors {
    fn connect(broker_port: u16) -> Sensors {
        let mut opts = MqttOptions::new(
            format!("fleet-identity-sensors-{}", free_port()),
            "127.0.0.1",
            broker_port,
        );
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut conn) = Client::new(opts, 1000);
        client
            .subscribe("+/actuators/+/cmd", QoS::AtLeastOnce)
            .expect("subscribing to the commands");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                let msg = match ev {
                    Ok(Event::Incoming(Packet::SubAck(_))) => "suback".to_owned(),
                    Ok(Event::Incoming(Packet::Publish(p))) => p.topic,
                    Ok(_) => continue,
                    Err(_) => break,
                };
                if tx.send(msg).is_err() {
                    break;
                }
            }
        });
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).as_deref(),
            Ok("suback")
        );
        let devices = BOARDS
            .iter()
            .enumerate()
            .map(|(i, b)| {
                (
                    *b,
                    SimDevice::new(DEVICE_INDEX, Condition::Healthy, 7 + i as u64),
                )
            })
            .collect();
        Sensors {
            client,
            commands: rx,
            devices,
        }
    }

    fn publish(&mut self, board: &str) {
        let device = self.devices.get_mut(board).expect("a board's device");
        let topic = format!("{board}/sensors/{}/vibration", device.id());
        let (_, bytes) = device.next_encoded((unix_now_s() * 1e6) as u64, Distortion::NONE);
        let payload = bytes.to_vec();
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .expect("publishing an event");
    }

    /// Publishes `board`'s events until one is answered: its reflexd is subscribed.
    fn wait_answered(&mut self, board: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mine = format!("{board}/actuators/");
        while Instant::now() < deadline {
            self.publish(board);
            if let Ok(topic) = self.commands.recv_timeout(Duration::from_millis(200)) {
                if topic.starts_with(&mine) {
                    return;
                }
            }
        }
        panic!("{board} answered no event within 60 s");
    }
}

#[test]
fn two_boards_with_the_same_device_id_stay_apart_in_the_cloud_report() {
    let dir = test_dir();
    let broker = spawn_broker();
    let (cloud_config, cloud_url, _cloud) = start_cloud(&dir);
    let config = write_shared_config(&dir, broker.port, &cloud_url);
    let from_s = unix_now_s().floor() as u64;
    let mut boards: Vec<Board> = BOARDS
        .iter()
        .map(|b| start_board(&dir, &config, b))
        .collect();
    let mut sensors = Sensors::connect(broker.port);
    for b in BOARDS {
        sensors.wait_answered(b);
    }
    for _ in 0..EVENTS {
        for b in BOARDS {
            sensors.publish(b);
        }
    }
    let device_id = sensors.devices["board-a"].id().to_owned();
    assert_eq!(device_id, sensors.devices["board-b"].id());

    // Each board journals and uploads everything it answered.
    let mut journaled = BTreeMap::new();
    for board in &mut boards {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let appended = board.metric("reflexd_journal_appended_total");
            let uploaded = board.metric("reflexd_upload_records_total");
            let backlog = board.metric("reflexd_upload_backlog_records");
            if appended > EVENTS as u64 && uploaded == appended && backlog == 0 {
                journaled.insert(board.name, appended);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {appended} journaled, {uploaded} uploaded, backlog {backlog} after 60 s; \
                 stderr:\n{}",
                board.name,
                board.daemon.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(board.metric("reflexd_upload_rejected_total"), 0);
    }

    let to_s = unix_now_s().ceil() as u64 + 1;
    let out = Command::new(bins::reflex_cloud())
        .args(["rescore", "--config"])
        .arg(&cloud_config)
        .args(["--from", &from_s.to_string(), "--to", &to_s.to_string()])
        .env("REFLEX_LOG", "warn")
        .output()
        .expect("running reflex-cloud rescore");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "rescore: {stderr}");
    let run_dir = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("rescore prints its run directory"),
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("report.json")).expect("report.json"))
            .expect("report.json is JSON");

    // One device row per (node, device), each with exactly its board's events.
    let rows: Vec<(String, String, u64)> = report["figures"]["devices"]
        .as_array()
        .expect("figures.devices")
        .iter()
        .map(|d| {
            (
                d["node"].as_str().expect("node").to_owned(),
                d["device"].as_str().expect("device").to_owned(),
                d["counts"]["events"].as_u64().expect("events"),
            )
        })
        .collect();
    let expected: Vec<(String, String, u64)> = BOARDS
        .iter()
        .map(|b| (b.to_string(), device_id.clone(), journaled[b]))
        .collect();
    assert_eq!(rows, expected, "{:#}", report["figures"]["devices"]);
    assert_eq!(
        report["figures"]["fleet"]["events"].as_u64(),
        Some(journaled.values().sum())
    );
    let html = std::fs::read_to_string(run_dir.join("report.html")).expect("report.html");
    for b in BOARDS {
        let row = format!("<td class=\"l\">{b}</td><td class=\"l\">{device_id}</td>");
        assert!(html.contains(&row), "no row {row:?} in the HTML report");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
