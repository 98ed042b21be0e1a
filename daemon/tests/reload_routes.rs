//! Routes and thresholds reloaded on SIGHUP, through the real binary and a real
//! mosquitto: a moved command topic answers every event after the reload on the new topic
//! and loses none around it; an added route is answered and a removed one is no longer
//! subscribed; a changed deadline and margin show in the running figures and in each
//! journaled event's budget; a route switched to another loaded model is answered by it;
//! a budget the model cannot meet under `on_budget_unmeetable = "refuse"` and a
//! restart-only change are refused whole, with the list, while the old configuration
//! keeps serving. Every reload is counted in `reflexd_config_reloads_total{result}`.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{events, field, metric, repo, scrape, serial, spawn_daemon, test_dir, Field};
use reflex_tests::{spawn_broker, wait_until, Broker, ChildGuard};
use reflex_wire::Command;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

/// One `[[routes]]` entry: name, filter level (`sensors/+/<level>`), model, command
/// topic, deadline (ms) and further lines.
struct Route<'a> {
    name: &'a str,
    level: &'a str,
    model: &'a str,
    command: &'a str,
    deadline_ms: f64,
    extra: &'a str,
}

fn route<'a>(name: &'a str, level: &'a str, command: &'a str) -> Route<'a> {
    Route {
        name,
        level,
        model: "edge",
        command,
        deadline_ms: 20.0,
        extra: "on_budget_unmeetable = \"warn\"",
    }
}

/// The daemon's config file: its broker, metrics port and models, `routes`, then
/// `tail` (other sections).
struct Config {
    path: PathBuf,
    head: String,
}

impl Config {
    fn new(broker: &Broker, name: &str) -> Config {
        let dir = test_dir(name);
        let models = repo().join("models");
        let head = format!(
            r#"[mqtt]
client_id = "reflexd-{name}-{pid}"
port = {port}
#MQTT
[metrics]
listen = "127.0.0.1:{metrics}"
[models.edge]
manifest = "{models}/edge.manifest.json"
fallback_manifest = "{models}/fallback.manifest.json"
calibration_runs = 500
"#,
            pid = std::process::id(),
            port = broker.port,
            metrics = reflex_tests::free_port(),
            models = models.display(),
        );
        Config {
            path: dir.join("reflex.toml"),
            head,
        }
    }

    /// (Re)writes the file with these routes and sections.
    fn write(&self, routes: &[Route<'_>], tail: &str) {
        self.write_mqtt(routes, "", tail);
    }

    /// [`Config::write`], with `mqtt` lines added to the `[mqtt]` table.
    fn write_mqtt(&self, routes: &[Route<'_>], mqtt: &str, tail: &str) {
        let mut text = self.head.replace("#MQTT", mqtt);
        for r in routes {
            text.push_str(&format!(
                "[[routes]]\nname = \"{}\"\ntopic_filter = \"sensors/+/{}\"\nmodel = \"{}\"\n\
                 deadline_ms = {:?}\ncommand_topic = \"{}\"\n{}\n",
                r.name, r.level, r.model, r.deadline_ms, r.command, r.extra
            ));
        }
        text.push_str(tail);
        std::fs::write(&self.path, text).unwrap();
    }

    fn scrape(&self) -> String {
        scrape(&self.path)
    }

    fn value(&self, series: &str) -> u64 {
        metric(&self.scrape(), series)
    }

    fn reloads(&self, result: &str) -> u64 {
        self.value(&format!(
            "reflexd_config_reloads_total{{result=\"{result}\"}}"
        ))
    }
}

fn hangup(daemon: &ChildGuard) {
    let pid = libc::pid_t::try_from(daemon.child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
}

/// SIGHUP, then waits until the reload counted as `result` reaches `count`.
fn reload_and_wait(config: &Config, daemon: &ChildGuard, result: &str, count: u64) {
    hangup(daemon);
    wait_until(
        &format!("reload {count} to be {result}"),
        Duration::from_secs(60),
        || config.reloads(result) == count,
    );
}

/// A client subscribed to `filters` that hands on every command with its topic.
struct Watcher {
    _client: Client,
    commands: mpsc::Receiver<(String, Command)>,
}

fn watch(broker: &Broker, filters: &[&str]) -> Watcher {
    let mut opts = MqttOptions::new(
        format!("test-watch-{}", reflex_tests::free_port()),
        "127.0.0.1",
        broker.port,
    );
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(opts, 10_000);
    for f in filters {
        client.subscribe(*f, QoS::AtLeastOnce).unwrap();
    }
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let c = Command::decode(&p.payload)
                        .or_else(|_| reflex_wire::json::decode_command(&p.payload));
                    if let Ok(c) = c {
                        if tx.send((p.topic.clone(), c)).is_err() {
                            return;
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    for _ in filters {
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("watcher subscribed");
    }
    Watcher {
        _client: client,
        commands: rx,
    }
}

impl Watcher {
    /// Every command received within `limit` until `done` says enough, by (device, seq).
    fn until(
        &self,
        limit: Duration,
        mut done: impl FnMut(&HashMap<(String, u64), Vec<String>>) -> bool,
    ) -> HashMap<(String, u64), Vec<String>> {
        let mut seen: HashMap<(String, u64), Vec<String>> = HashMap::new();
        let end = Instant::now() + limit;
        while !done(&seen) {
            let left = end.saturating_duration_since(Instant::now());
            match self.commands.recv_timeout(left) {
                Ok((topic, c)) => seen
                    .entry((c.device.to_string(), c.seq))
                    .or_default()
                    .push(topic),
                Err(_) => break,
            }
        }
        seen
    }
}

fn publish_on(f: &Field, level: &str, device: &str, payload: &[u8]) {
    f.client
        .publish(
            format!("sensors/{device}/{level}"),
            QoS::AtLeastOnce,
            false,
            payload.to_vec(),
        )
        .unwrap();
}

/// Publishes `evs` in turn on `level` until the watcher sees the first command; returns
/// how many were published. Each wait is bounded; the events before the route's
/// subscription took effect get no answer.
fn publish_until_answered_on(
    f: &Field,
    w: &Watcher,
    level: &str,
    device: &str,
    evs: &[(u64, Vec<u8>)],
) -> usize {
    for (n, (_, bytes)) in evs.iter().enumerate() {
        publish_on(f, level, device, bytes);
        let end = Instant::now() + Duration::from_millis(200);
        while let Ok((_, c)) = w
            .commands
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            if c.device.as_str() == device {
                return n + 1;
            }
        }
    }
    panic!("no answer on {level} to {} events", evs.len());
}

/// The commands `f` receives until every event of `wanted` (sequence numbers of one
/// device) has one, within `limit`; commands of earlier events are kept apart by seq.
fn answers(f: &Field, wanted: &[u64], limit: Duration) -> HashMap<u64, Vec<Command>> {
    let mut seen: HashMap<u64, Vec<Command>> = HashMap::new();
    let end = Instant::now() + limit;
    while !wanted.iter().all(|s| seen.contains_key(s)) {
        let left = end.saturating_duration_since(Instant::now());
        match f.commands.recv_timeout(left) {
            Ok(c) => seen.entry(c.seq).or_default().push(c),
            Err(_) => break,
        }
    }
    seen
}

fn start(config: &Config) -> ChildGuard {
    spawn_daemon(&config.path)
}

fn key(device: &str, seq: u64) -> (String, u64) {
    (device.to_owned(), seq)
}

#[test]
fn a_moved_command_topic_answers_on_the_new_topic_and_loses_no_event_around_the_reload() {
    let _serial = serial();
    let broker = spawn_broker();
    let config = Config::new(&broker, "reload-topic");
    let old = route("vibration", "vibration", "actuators/{device}/cmd");
    config.write(&[old], "");
    let daemon = start(&config);
    let f = field(&broker);
    let w = watch(&broker, &["actuators/+/cmd", "moved/+/cmd"]);
    let evs = events(3, 2_000);
    let first = publish_until_answered_on(&f, &w, "vibration", "dev-0003", &evs);

    let moved = Route {
        command: "moved/{device}/cmd",
        ..route("vibration", "vibration", "")
    };
    config.write(&[moved], "");
    hangup(&daemon);
    // Events keep flowing while the reload runs: published until it is counted.
    let mut next = first;
    let end = Instant::now() + Duration::from_secs(60);
    while config.reloads("applied") == 0 {
        assert!(Instant::now() < end, "the reload was not applied");
        for (_, bytes) in &evs[next..next + 5] {
            publish_on(&f, "vibration", "dev-0003", bytes);
        }
        next += 5;
    }
    let applied_at = next;
    for (_, bytes) in &evs[next..next + 100] {
        publish_on(&f, "vibration", "dev-0003", bytes);
    }
    next += 100;

    let wanted: Vec<(String, u64)> = evs[first..next]
        .iter()
        .map(|(seq, _)| key("dev-0003", *seq))
        .collect();
    let seen = w.until(Duration::from_secs(30), |s| {
        wanted.iter().all(|k| s.contains_key(k))
    });
    let lost: Vec<&(String, u64)> = wanted.iter().filter(|k| !seen.contains_key(*k)).collect();
    assert!(lost.is_empty(), "{} events lost: {lost:?}", lost.len());
    for (k, topics) in &seen {
        assert_eq!(topics.len(), 1, "{k:?} answered {topics:?}");
    }
    for (seq, _) in &evs[applied_at..next] {
        assert_eq!(
            seen[&key("dev-0003", *seq)],
            ["moved/dev-0003/cmd"],
            "event {seq} after the reload"
        );
    }
    assert_eq!(config.reloads("refused"), 0);
    assert_eq!(
        config.value("reflexd_bad_input_total{reason=\"unknown_route\"}"),
        0
    );
}

#[test]
fn an_added_route_is_answered_and_a_removed_route_is_no_longer_subscribed() {
    let _serial = serial();
    let broker = spawn_broker();
    let config = Config::new(&broker, "reload-add-remove");
    let vibration = || route("vibration", "vibration", "actuators/{device}/cmd");
    config.write(
        &[
            vibration(),
            route("temp", "temp", "actuators/{device}/temp"),
        ],
        "",
    );
    let daemon = start(&config);
    let f = field(&broker);
    let w = watch(&broker, &["actuators/#"]);
    let (vib, temp, pressure) = (events(1, 400), events(2, 400), events(4, 400));
    publish_until_answered_on(&f, &w, "vibration", "dev-0001", &vib);
    let temp_first = publish_until_answered_on(&f, &w, "temp", "dev-0002", &temp);
    assert!(config.value("reflexd_events_received_total{route=\"temp\"}") >= 1);

    config.write(
        &[
            route("pressure", "pressure", "actuators/{device}/pressure"),
            vibration(),
        ],
        "",
    );
    reload_and_wait(&config, &daemon, "applied", 1);

    // The added route: subscribed on the live connection, every event answered.
    let first = publish_until_answered_on(&f, &w, "pressure", "dev-0004", &pressure);
    for (_, bytes) in &pressure[first..first + 50] {
        publish_on(&f, "pressure", "dev-0004", bytes);
    }
    let wanted: Vec<(String, u64)> = pressure[first..first + 50]
        .iter()
        .map(|(seq, _)| key("dev-0004", *seq))
        .collect();
    let seen = w.until(Duration::from_secs(30), |s| {
        wanted.iter().all(|k| s.contains_key(k))
    });
    for k in &wanted {
        assert_eq!(
            seen.get(k).map(Vec::as_slice),
            Some(&["actuators/dev-0004/pressure".to_owned()][..]),
            "{k:?}"
        );
    }
    assert!(config.value("reflexd_events_received_total{route=\"pressure\"}") >= 50);

    // The removed route: the broker no longer sends its events. An event of a kept route
    // published after them by the same client marks when they would have arrived.
    let before = config.value("reflexd_events_received_total{route=\"temp\"}");
    for (_, bytes) in &temp[temp_first..temp_first + 20] {
        publish_on(&f, "temp", "dev-0002", bytes);
    }
    let (marker, bytes) = &vib[300];
    publish_on(&f, "vibration", "dev-0001", bytes);
    let seen = w.until(Duration::from_secs(10), |s| {
        s.contains_key(&key("dev-0001", *marker))
    });
    assert!(
        seen.contains_key(&key("dev-0001", *marker)),
        "the kept route answers"
    );
    assert!(
        !seen.keys().any(|(d, _)| d == "dev-0002"),
        "a removed route's event was answered: {seen:?}"
    );
    let m = config.scrape();
    assert_eq!(
        metric(&m, "reflexd_events_received_total{route=\"temp\"}"),
        before
    );
    assert_eq!(
        metric(&m, "reflexd_bad_input_total{reason=\"unknown_route\"}"),
        0,
        "the broker still sent the removed route's events"
    );
    assert_eq!(metric(&m, "reflexd_mqtt_subscribed"), 1);
    assert!(!m.contains("reflexd_route_budget_seconds{route=\"temp\"}"));
    assert!(!m.contains("reflexd_model_info{route=\"temp\""));
    assert_eq!(
        metric(
            &m,
            "reflexd_model_info{route=\"pressure\",model=\"edge\",version=\"1.0.0\"}"
        ),
        1
    );
}

fn gauge(config: &Config, series: &str) -> f64 {
    reflex_tests::prometheus::metric(&config.scrape(), series)
}

fn assert_seconds(config: &Config, series: &str, want: f64) {
    let got = gauge(config, series);
    assert!((got - want).abs() < 1e-9, "{series} = {got}, want {want}");
}

#[test]
fn a_changed_deadline_and_safety_margin_are_what_the_daemon_runs_with() {
    let _serial = serial();
    let broker = spawn_broker();
    let config = Config::new(&broker, "reload-deadline");
    let vibration = |deadline_ms| Route {
        deadline_ms,
        ..route("vibration", "vibration", "actuators/{device}/cmd")
    };
    let journal = config.path.parent().unwrap().join("journal");
    let journal = format!("[journal]\ndir = \"{}\"\n", journal.display());
    config.write(&[vibration(20.0)], &journal);
    let mut daemon = start(&config);
    let budget = "reflexd_route_budget_seconds{route=\"vibration\"}";
    assert_seconds(&config, budget, 0.020);
    assert_seconds(&config, "reflexd_safety_margin_seconds", 0.000_2);
    let f = field(&broker);
    let evs = events(5, 400);
    let (first, _) = f.publish_until_answered("dev-0005", &evs);
    let publish = |range: std::ops::Range<usize>| {
        for (_, bytes) in &evs[range.clone()] {
            f.publish("dev-0005", bytes.clone());
        }
        let wanted: Vec<u64> = evs[range].iter().map(|(seq, _)| *seq).collect();
        let seen = answers(&f, &wanted, Duration::from_secs(20));
        for seq in &wanted {
            assert_eq!(seen.get(seq).map(Vec::len), Some(1), "event {seq}");
        }
        wanted
    };
    let before = publish(first..first + 20);

    config.write(
        &[vibration(35.0)],
        &format!(
            "{journal}[scheduler]\nsafety_margin_us = 300\n[bad_input]\nlog_every_s = 2\n\
             [monitor]\nraise_after = 5\ndeadline_miss_objective = 0.02\n"
        ),
    );
    reload_and_wait(&config, &daemon, "applied", 1);
    assert_seconds(&config, budget, 0.035);
    assert_seconds(&config, "reflexd_safety_margin_seconds", 0.000_3);
    // Every event is still answered, once, within the new budget.
    let after = publish(first + 20..first + 40);

    // The journal holds each event's budget as the engine applied it.
    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    let out = std::process::Command::new(common::REFLEXD)
        .args(["journal", "tail", "-n", "1000", "--config"])
        .arg(&config.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let budgets: HashMap<u64, u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let r = &v["record"];
            (
                r["seq"].as_u64().unwrap(),
                r["timings"]["budget_us"].as_u64().unwrap(),
            )
        })
        .collect();
    for (seqs, want) in [(&before, 20_000), (&after, 35_000)] {
        for seq in seqs {
            assert_eq!(budgets.get(seq), Some(&want), "event {seq}");
        }
    }
}

#[test]
fn an_unmeetable_budget_or_a_restart_only_change_is_refused_whole_and_the_old_config_serves() {
    let _serial = serial();
    let broker = spawn_broker();
    let config = Config::new(&broker, "reload-refused");
    let vibration = || route("vibration", "vibration", "actuators/{device}/cmd");
    config.write(&[vibration()], "");
    let mut daemon = start(&config);
    let f = field(&broker);
    let w = watch(&broker, &["actuators/#", "moved/#"]);
    let evs = events(6, 400);
    let mut next = publish_until_answered_on(&f, &w, "vibration", "dev-0006", &evs);
    let logged = |daemon: &mut ChildGuard, what: &str| {
        let tail = daemon.stderr_tail();
        tail.contains("configuration reload refused") && tail.contains(what)
    };

    // A budget no model meets (1 µs above the 200 µs margin), refusing: refused whole,
    // with the command topic changed in the same reload.
    let tight = Route {
        deadline_ms: 0.201,
        command: "moved/{device}/cmd",
        extra: "on_budget_unmeetable = \"refuse\"",
        ..vibration()
    };
    config.write(&[tight], "");
    reload_and_wait(&config, &daemon, "refused", 1);
    wait_until(
        "the refusal names the route",
        Duration::from_secs(5),
        || {
            logged(&mut daemon, "budgets the models cannot meet")
                && logged(&mut daemon, "route vibration: model edge p99.9")
        },
    );

    // Restart-only settings (a filter, a format, the keep-alive) with a reloadable one:
    // refused whole, each listed.
    let moved = Route {
        level: "vibration2",
        command: "moved/{device}/cmd",
        extra: "on_budget_unmeetable = \"warn\"\nformat = \"json\"",
        ..vibration()
    };
    config.write_mqtt(&[moved], "keep_alive_s = 9", "");
    reload_and_wait(&config, &daemon, "refused", 2);
    wait_until(
        "the refusal lists each setting",
        Duration::from_secs(5),
        || {
            logged(
                &mut daemon,
                "settings that need a restart changed: mqtt.keep_alive_s (",
            ) && logged(&mut daemon, "routes[vibration].format (")
                && logged(&mut daemon, "routes[vibration].topic_filter (")
        },
    );
    assert_eq!(config.reloads("applied"), 0);
    assert_seconds(
        &config,
        "reflexd_route_budget_seconds{route=\"vibration\"}",
        0.020,
    );

    // The old configuration still serves: old filter, old command topic, every event.
    let wanted: Vec<(String, u64)> = evs[next..next + 30]
        .iter()
        .map(|(seq, _)| key("dev-0006", *seq))
        .collect();
    for (_, bytes) in &evs[next..next + 30] {
        publish_on(&f, "vibration", "dev-0006", bytes);
    }
    next += 30;
    let seen = w.until(Duration::from_secs(20), |s| {
        wanted.iter().all(|k| s.contains_key(k))
    });
    for k in &wanted {
        assert_eq!(
            seen.get(k).map(Vec::as_slice),
            Some(&["actuators/dev-0006/cmd".to_owned()][..]),
            "{k:?}"
        );
    }
    assert!(next <= evs.len());
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "reflexd stopped"
    );
}

#[test]
fn a_route_switched_to_another_loaded_model_is_answered_by_it() {
    let _serial = serial();
    let broker = spawn_broker();
    let config = Config::new(&broker, "reload-model");
    let models = repo().join("models");
    let cloud = format!(
        "[models.cloud]\nmanifest = \"{m}/cloud.manifest.json\"\n\
         fallback_manifest = \"{m}/fallback.manifest.json\"\ncalibration_runs = 500\n",
        m = models.display()
    );
    let vibration = || route("vibration", "vibration", "actuators/{device}/cmd");
    config.write(&[vibration()], &cloud);
    let daemon = start(&config);
    let f = field(&broker);
    let evs = events(8, 400);
    let (mut next, first) = f.publish_until_answered("dev-0008", &evs);
    let info = |model: &str| {
        format!("reflexd_model_info{{route=\"vibration\",model=\"{model}\",version=\"1.0.0\"}}")
    };
    assert_eq!(config.value(&info("edge")), 1);
    assert_ne!(first.model.name.as_str(), "cloud");

    let switched = Route {
        model: "cloud",
        ..vibration()
    };
    config.write(&[switched], &cloud);
    reload_and_wait(&config, &daemon, "applied", 1);
    let m = config.scrape();
    assert_eq!(metric(&m, &info("cloud")), 1);
    assert!(!m.contains(&info("edge")), "the old model still shown");

    for (_, bytes) in &evs[next..next + 40] {
        f.publish("dev-0008", bytes.clone());
    }
    let wanted: Vec<u64> = evs[next..next + 40].iter().map(|(seq, _)| *seq).collect();
    next += 40;
    let seen = answers(&f, &wanted, Duration::from_secs(20));
    let answered: Vec<&Command> = wanted
        .iter()
        .map(|seq| {
            let c = seen
                .get(seq)
                .unwrap_or_else(|| panic!("event {seq} not answered"));
            assert_eq!(c.len(), 1, "event {seq} answered twice");
            &c[0]
        })
        .collect();
    let by_model: Vec<&str> = answered
        .iter()
        .filter(|c| c.source == reflex_wire::DecisionSource::Model)
        .map(|c| c.model.name.as_str())
        .collect();
    assert!(!by_model.is_empty(), "the model answered none");
    assert!(by_model.iter().all(|m| *m == "cloud"), "{by_model:?}");
    assert!(next <= evs.len());
}

/// `bytes` (a simulated sensor's event) with a motor window instead: current then
/// temperature, 64 samples each, in counts of `scale`.
fn as_motor_event(bytes: &[u8], row: &[f32], scale: f32) -> Vec<u8> {
    let mut e = reflex_wire::SensorEvent::decode(bytes).unwrap();
    e.window.channels = 2;
    e.window.samples_per_channel = 64;
    e.window.scale = scale;
    e.window.samples.clear();
    for v in row {
        let count = (v / scale).round() as i16;
        e.window.samples.push(count).unwrap();
    }
    let mut buf = [0u8; reflex_wire::MAX_EVENT_BYTES];
    e.encode(&mut buf).unwrap().to_vec()
}

#[test]
fn a_route_switched_to_a_model_with_its_own_features_journals_them_after_the_reload() {
    let _serial = serial();
    let broker = spawn_broker();
    let config = Config::new(&broker, "reload-features");
    let motor = repo().join("models/examples/motor");
    let tail = format!(
        "[models.motor]\nmanifest = \"{}\"\ncalibration_runs = 200\n[journal]\ndir = \"{}\"\n",
        motor.join("motor.manifest.json").display(),
        config.path.parent().unwrap().join("journal").display()
    );
    // A fallback of its own: a route's fallback is read once, and the edge model's
    // (its fallback_manifest) is no fallback for the motor model.
    let vibration = || Route {
        extra: "on_budget_unmeetable = \"warn\"\n[routes.fallback]\nkind = \"constant\"\n\
                action = \"stop\"",
        ..route("vibration", "vibration", "actuators/{device}/cmd")
    };
    config.write(&[vibration()], &tail);
    let mut daemon = start(&config);
    let f = field(&broker);
    let device = "dev-0009";
    let evs = events(9, 300);
    let (mut next, _) = f.publish_until_answered(device, &evs);
    let publish = |range: std::ops::Range<usize>, payload: &dyn Fn(usize) -> Vec<u8>| {
        for i in range.clone() {
            f.publish(device, payload(i));
        }
        let wanted: Vec<u64> = evs[range].iter().map(|(seq, _)| *seq).collect();
        let seen = answers(&f, &wanted, Duration::from_secs(20));
        for seq in &wanted {
            assert_eq!(seen.get(seq).map(Vec::len), Some(1), "event {seq}");
        }
        wanted
    };
    let before = publish(next..next + 10, &|i: usize| evs[i].1.clone());
    next += 10;

    // The route now serves the motor model: the events it reads are motor windows.
    config.write(
        &[Route {
            model: "motor",
            ..vibration()
        }],
        &tail,
    );
    reload_and_wait(&config, &daemon, "applied", 1);
    let rows = reflex_models::npy::Npy::read(motor.join("samples.npy"))
        .unwrap()
        .f32s()
        .unwrap();
    let rows: Vec<&[f32]> = rows.chunks_exact(128).collect();
    let peak = rows
        .iter()
        .flat_map(|r| r.iter())
        .fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = peak / 30_000.0;
    let after = publish(next..next + 10, &|i: usize| {
        as_motor_event(&evs[i].1, rows[i % rows.len()], scale)
    });

    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    let (journal, _) = reflex_journal::store::Journal::open(
        reflex_journal::store::StoreConfig::new(config.path.parent().unwrap().join("journal")),
    )
    .unwrap();
    let records: HashMap<u64, reflex_records::DecodedRecord> = journal
        .scan(0, 10_000, 64 << 20)
        .unwrap()
        .iter()
        .map(|(_, bytes)| {
            let d = reflex_records::JournalRecord::decode_full(bytes).unwrap();
            (d.record.seq, d)
        })
        .collect();
    for seq in &before {
        let d = &records[seq];
        assert!(d.feature_set.is_none(), "event {seq}: {:?}", d.feature_set);
        assert_eq!(
            d.record.features.len(),
            13,
            "event {seq}: the demo features"
        );
    }
    let manifest = reflex_models::Manifest::load(motor.join("motor.manifest.json")).unwrap();
    let declared = reflexd::pipeline::features::FeaturePlan::of(&manifest);
    let names = &declared.feature_set().unwrap().set().names;
    let at = |name: &str| names.iter().position(|n| n == name).unwrap();
    let mean = |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
    for seq in &after {
        let d = &records[seq];
        let set = d
            .feature_set
            .as_ref()
            .unwrap_or_else(|| panic!("event {seq}: no set"));
        assert_eq!(
            (set.model.name.as_str(), &set.names),
            ("motor", names),
            "event {seq}"
        );
        let (r, input) = (&d.record, &d.record.model_input);
        assert_eq!(
            (r.features.len(), input.len()),
            (names.len(), 128),
            "event {seq}"
        );
        for (feature, channel) in [
            ("mean_current", &input[..64]),
            ("mean_temperature", &input[64..]),
        ] {
            let want = mean(channel);
            let got = f64::from(r.features[at(feature)]);
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                "event {seq}: {feature} {got}, the window's {want}"
            );
        }
    }
    assert!(
        after
            .iter()
            .any(|s| records[s].record.model.name == "motor"),
        "the motor model decided none"
    );
}
