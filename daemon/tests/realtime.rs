//! reflexd end to end against a real mosquitto on loopback, real ONNX models run by tract:
//! every accepted event gets exactly one command, on time, whatever else arrives.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use reflex_tests::{spawn_broker, spawn_broker_on, spawn_secure_broker, wait_until};
use reflex_wire::{DecisionSource, MAX_EVENT_BYTES};
use rumqttc::QoS;

#[test]
fn an_event_gets_its_model_command_before_the_deadline() {
    let _serial = serial();
    let broker = spawn_broker();
    let config = write_config(&broker, "ontime", 5.0, "");
    let _daemon = spawn_daemon(&config);
    let f = field(&broker);
    // The first events may race the daemon's subscription: publish until one is answered.
    let evs = events(1, 200);
    let (_, cmd) = f.publish_until_answered("dev-0001", &evs);
    assert_eq!(cmd.device.as_str(), "dev-0001");
    assert_eq!(cmd.source, DecisionSource::Model, "{cmd:?}");
    assert_eq!(cmd.model.name.as_str(), "edge");
    assert!(
        cmd.latency_us <= 5_000,
        "decided after {} µs",
        cmd.latency_us
    );
}

#[test]
fn every_command_reaches_the_fleet_within_the_budget_counted_from_the_events_publish() {
    let _serial = serial();
    let broker = spawn_broker();
    let config = write_config(&broker, "ontime-fleet", 5.0, "");
    let _daemon = spawn_daemon(&config);
    let f = field(&broker);
    let evs = events(3, 300);
    let (warm, _) = f.publish_until_answered("dev-0003", &evs[..100]);
    while f.commands.try_recv().is_ok() {}
    // Where an actuator sees it: from the fleet's publish to the command's arrival back at
    // the fleet, through the broker both ways, one event at a time.
    let (mut late, mut all) = (Vec::new(), Vec::new());
    for (seq, bytes) in &evs[warm..warm + 200] {
        let sent = std::time::Instant::now();
        f.publish("dev-0003", bytes.clone());
        let c = f
            .commands
            .recv_timeout(Duration::from_secs(5))
            .expect("every event is answered");
        let took = sent.elapsed();
        assert_eq!(c.seq, *seq, "answers in order, one per event");
        all.push(took);
        if took > Duration::from_millis(5) {
            late.push((c.seq, took, c.source));
        }
    }
    all.sort();
    println!(
        "at the fleet: p50 {:?}, max {:?} over {} events",
        all[all.len() / 2],
        all[all.len() - 1],
        all.len()
    );
    assert!(late.is_empty(), "commands past 5 ms at the fleet: {late:?}");
}

#[test]
fn an_impossible_budget_gets_the_fallback_on_time_every_time() {
    let _serial = serial();
    let broker = spawn_broker();
    // 210 µs: above the 200 µs safety margin (so the config is valid), below what the
    // model needs on top of it.
    let config = write_config(
        &broker,
        "impossible",
        0.21,
        "on_budget_unmeetable = \"warn\"",
    );
    let _daemon = spawn_daemon(&config);
    let f = field(&broker);
    let evs = events(2, 150);
    // Warm up until the daemon is subscribed (the fallback answers that one too).
    let (warm, first) = f.publish_until_answered("dev-0002", &evs[..100]);
    assert_eq!(first.source, DecisionSource::Fallback, "{first:?}");
    while f.commands.try_recv().is_ok() {}
    for (_, bytes) in &evs[warm..warm + 50] {
        f.publish("dev-0002", bytes.clone());
    }
    let seen = f.collect(50, Duration::from_secs(20));
    assert_eq!(seen.len(), 50, "every event answered: {:?}", seen.keys());
    for cmds in seen.values() {
        assert_eq!(cmds.len(), 1, "exactly one command per event: {cmds:?}");
        let c = &cmds[0];
        assert_eq!(c.source, DecisionSource::Fallback, "{c:?}");
        assert!(
            c.latency_us <= 210,
            "fallback decided after {} µs",
            c.latency_us
        );
    }
    let m = scrape(&config);
    assert_eq!(
        metric(
            &m,
            "reflexd_decisions_total{route=\"vibration\",source=\"model\"}"
        ),
        0
    );
    assert!(
        metric(
            &m,
            "reflexd_deadline_misses_total{route=\"vibration\",cause=\"cannot_make_it\"}"
        ) >= seen.len() as u64,
        "{m}"
    );
}

#[test]
fn a_duplicate_gets_one_command_and_bad_input_is_counted_without_stalling() {
    let _serial = serial();
    let broker = spawn_broker();
    let config = write_config(&broker, "dupes", 5.0, "");
    let _daemon = spawn_daemon(&config);
    let f = field(&broker);
    let evs = events(3, 400);
    // Warm up until answered, so the daemon is subscribed.
    let (i, _) = f.publish_until_answered("dev-0003", &evs[..100]);
    while f.commands.try_recv().is_ok() {}
    let (dup_seq, dup) = evs[i].clone();
    f.publish("dev-0003", dup.clone());
    f.publish("dev-0003", dup); // a QoS 1 redelivery
    f.publish("dev-0003", b"\x01garbage".to_vec());
    f.publish("dev-0003", vec![0xAB; MAX_EVENT_BYTES + 100]);
    f.publish("dev-0003", Vec::new());
    let (next_seq, next) = evs[i + 1].clone();
    f.publish("dev-0003", next);
    let seen = f.collect(2, Duration::from_secs(10));
    assert_eq!(
        seen.get(&("dev-0003".into(), dup_seq)).map(Vec::len),
        Some(1),
        "{seen:?}"
    );
    assert_eq!(
        seen.get(&("dev-0003".into(), next_seq)).map(Vec::len),
        Some(1),
        "{seen:?}"
    );
    // Nothing else arrives for the duplicate.
    assert!(f.commands.recv_timeout(Duration::from_millis(300)).is_err());
    let m = scrape(&config);
    assert_eq!(
        metric(&m, "reflexd_duplicate_events_total{route=\"vibration\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        metric(&m, "reflexd_bad_input_total{reason=\"oversized\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        metric(&m, "reflexd_bad_input_total{reason=\"truncated\"}"),
        2,
        "{m}"
    );
    // The refused payloads are kept for inspection, newest last.
    let response = http_get(&config, "/bad-input");
    let body = response.split_once("\r\n\r\n").unwrap().1;
    let kept: serde_json::Value = serde_json::from_str(body).unwrap();
    let reasons: Vec<&str> = kept
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["truncated", "oversized", "truncated"], "{body}");
    assert_eq!(kept[0]["head_hex"], "0167617262616765", "{body}");
    assert_eq!(kept[1]["len"], MAX_EVENT_BYTES + 100, "{body}");
}

#[test]
fn a_two_megabyte_publish_through_a_stock_broker_is_refused_once_and_later_events_are_answered() {
    let _serial = serial();
    // mosquitto as Debian installs it, without reflex's drop-in: it delivers the 2 MB.
    two_megabytes_then_good_events(&reflex_tests::spawn_stock_broker(), 1);
}

#[test]
fn a_two_megabyte_publish_through_the_shipped_broker_config_never_reaches_reflexd() {
    let _serial = serial();
    // The drop-in's message_size_limit: the broker drops it for us.
    two_megabytes_then_good_events(&spawn_broker(), 0);
}

#[test]
fn an_event_whose_payload_names_another_device_than_its_topic_is_refused_not_answered() {
    let _serial = serial();
    let broker = spawn_broker();
    let config = write_config(&broker, "device-mismatch", 5.0, "");
    let _daemon = spawn_daemon(&config);
    let f = field(&broker);
    let evs = events(7, 140);
    let (i, _) = f.publish_until_answered("dev-0007", &evs[..100]);
    while f.commands.try_recv().is_ok() {}
    // dev-0007's next event, published on dev-0008's topic; then dev-0007's one after.
    f.publish("dev-0008", evs[i + 1].1.clone());
    f.publish("dev-0007", evs[i + 2].1.clone());
    // In order on one connection: once the second is answered, the first was judged.
    let c = f
        .commands
        .recv_timeout(Duration::from_secs(5))
        .expect("the good event is answered");
    assert_eq!((c.device.as_str(), c.seq), ("dev-0007", evs[i + 2].0));
    assert!(
        f.commands.try_recv().is_err(),
        "the mismatched event was answered"
    );
    let m = scrape(&config);
    assert_eq!(
        metric(&m, "reflexd_bad_input_total{reason=\"device_mismatch\"}"),
        1,
        "{m}"
    );
}

/// Publishes 2 MB at QoS 1 on a route's topic, then 20 good events: each good event is
/// answered once within 1 s, reflexd never reconnects, and it counted `oversized` refusals.
fn two_megabytes_then_good_events(broker: &reflex_tests::Broker, oversized: u64) {
    let config = write_config(broker, "oversized", 5.0, "");
    let _daemon = spawn_daemon(&config);
    let f = field(broker);
    let evs = events(4, 140);
    let (i, _) = f.publish_until_answered("dev-0004", &evs[..100]);
    while f.commands.try_recv().is_ok() {}
    // Far above any route format's largest event (200 KiB for JSON).
    f.publish("dev-0004", vec![0x5A; 2_000_000]);
    let good: Vec<(u64, Vec<u8>)> = evs[i + 1..i + 21].to_vec();
    for (_, payload) in &good {
        f.publish("dev-0004", payload.clone());
    }
    let seen = f.collect(good.len(), Duration::from_secs(1));
    for (seq, _) in &good {
        assert_eq!(
            seen.get(&("dev-0004".into(), *seq)).map(Vec::len),
            Some(1),
            "event {seq} not answered once within 1 s: {seen:?}"
        );
    }
    let m = scrape(&config);
    assert_eq!(
        metric(&m, "reflexd_bad_input_total{reason=\"oversized\"}"),
        oversized,
        "{m}"
    );
    assert_eq!(metric(&m, "reflexd_mqtt_reconnects_total"), 0, "{m}");
}

#[test]
fn sigterm_under_load_loses_no_event_and_answers_none_twice_across_a_restart() {
    let _serial = serial();
    let broker = spawn_broker();
    // Persistent session (the default): what the first run leaves unacked, the broker
    // redelivers to the second, which has the same client id.
    let config = write_config(&broker, "sigterm", 5.0, "");
    let mut first = spawn_daemon(&config);
    let f = field(&broker);
    let evs = events(4, 3000);
    // Events published before the subscription took effect are not the daemon's; count
    // from the first one it answered.
    let (warm, _) = f.publish_until_answered("dev-0004", &evs[..100]);
    let expected: Vec<u64> = evs[warm - 1..].iter().map(|(seq, _)| *seq).collect();
    let publisher = {
        let client = f.client.clone();
        let rest: Vec<Vec<u8>> = evs[warm..].iter().map(|(_, b)| b.clone()).collect();
        std::thread::spawn(move || {
            // ~4k events/s: paced so that SIGTERM lands while events are flowing.
            let start = std::time::Instant::now();
            for (i, bytes) in rest.into_iter().enumerate() {
                client
                    .publish("sensors/dev-0004/vibration", QoS::AtLeastOnce, false, bytes)
                    .unwrap();
                let due = start + Duration::from_micros(250 * i as u64);
                std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
            }
        })
    };
    let mut answers: HashMap<u64, usize> = HashMap::new();
    answers.insert(expected[0], 1);
    // SIGTERM once the first run has answered 500 events.
    while answers.len() < 500 {
        let c = f
            .commands
            .recv_timeout(Duration::from_secs(10))
            .expect("the first run answers under load");
        *answers.entry(c.seq).or_default() += 1;
    }
    first.terminate();
    let status = first.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "reflexd exited with {status}");
    publisher.join().unwrap();
    while let Ok(c) = f.commands.recv_timeout(Duration::from_millis(500)) {
        *answers.entry(c.seq).or_default() += 1;
    }
    let by_first = answers.len();

    let _second = spawn_daemon(&config);
    for c in f
        .collect(expected.len() - by_first, Duration::from_secs(30))
        .into_values()
        .flatten()
    {
        *answers.entry(c.seq).or_default() += 1;
    }
    println!(
        "{} events: {by_first} answered before SIGTERM completed, {} after the restart",
        expected.len(),
        answers.len() - by_first
    );
    let missing: Vec<u64> = expected
        .iter()
        .filter(|s| !answers.contains_key(s))
        .copied()
        .collect();
    let twice: Vec<u64> = answers
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .collect();
    assert!(
        missing.is_empty(),
        "{} events never answered: {missing:?}",
        missing.len()
    );
    assert!(twice.is_empty(), "answered twice: {twice:?}");
}

#[test]
fn commands_resume_after_the_broker_is_killed_and_restarted() {
    let _serial = serial();
    let mut broker = spawn_broker();
    let port = broker.port;
    let config = write_config(&broker, "broker-restart", 5.0, "");
    let mut daemon = spawn_daemon(&config);
    let evs = events(5, 400);
    {
        let f = field(&broker);
        f.publish_until_answered("dev-0005", &evs[..100]);
    }
    // SIGKILL: the broker forgets every session (none saved yet), so reflexd must notice,
    // reconnect with backoff, find no session and subscribe again.
    broker.kill();
    let broker = spawn_broker_on(port);
    let f = field(&broker);
    let (n, cmd) = f.publish_until_answered("dev-0005", &evs[100..]);
    assert_eq!(cmd.device.as_str(), "dev-0005");
    println!("answered again after {n} event(s) on the restarted broker");
    assert!(
        metric(&scrape(&config), "reflexd_mqtt_reconnects_total") >= 1,
        "the connection loss was not counted"
    );
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "reflexd stopped"
    );
}

#[test]
fn a_corrupt_model_on_reload_leaves_the_old_one_serving_and_a_good_one_is_swapped_in() {
    let _serial = serial();
    let broker = spawn_broker();
    // The daemon's models are copies this test may damage.
    let models = test_dir("reload-models");
    let repo_models = repo().join("models");
    for f in ["edge.manifest.json", "edge.onnx", "fallback.manifest.json"] {
        std::fs::copy(repo_models.join(f), models.join(f)).unwrap();
    }
    std::fs::create_dir(models.join("golden")).unwrap();
    for f in ["window_counts.npy", "temperature.npy", "edge_logits.npy"] {
        std::fs::copy(
            repo_models.join("golden").join(f),
            models.join("golden").join(f),
        )
        .unwrap();
    }
    let config = write_config_with(
        &format!("port = {}", broker.port),
        "reload",
        5.0,
        "",
        &models,
    );
    let _daemon = spawn_daemon(&config);
    let f = field(&broker);
    let evs = events(6, 600);
    let (mut next, _) = f.publish_until_answered("dev-0006", &evs[..100]);
    let reloads = |result: &str| {
        metric(
            &scrape(&config),
            &format!("reflexd_model_reloads_total{{result=\"{result}\"}}"),
        )
    };
    // Publishes events until the model (not the fallback) answers one; returns its version.
    let mut model_version = || -> String {
        for _ in 0..100 {
            f.publish("dev-0006", evs[next].1.clone());
            next += 1;
            let c = f
                .commands
                .recv_timeout(Duration::from_secs(5))
                .expect("every event gets a command");
            if c.source == DecisionSource::Model {
                return c.model.version.to_string();
            }
        }
        panic!("the fallback answered 100 events in a row");
    };
    assert_eq!(model_version(), "1.0.0");

    // 1. One flipped byte: the file changes, the checksum no longer matches.
    let good = std::fs::read(models.join("edge.onnx")).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    std::fs::write(models.join("edge.onnx"), &bad).unwrap();
    wait_until("the reload to be refused", Duration::from_secs(20), || {
        reloads("error") >= 1
    });
    assert_eq!(reloads("ok"), 0);
    assert_eq!(model_version(), "1.0.0", "the old model keeps serving");

    // 2. The good file back under a new version: verified, calibrated, swapped in.
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(models.join("edge.manifest.json")).unwrap()).unwrap();
    manifest["version"] = "1.0.1".into();
    let tmp = models.join("edge.manifest.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    std::fs::write(models.join("edge.onnx"), &good).unwrap();
    std::fs::rename(&tmp, models.join("edge.manifest.json")).unwrap();
    wait_until("the new version to serve", Duration::from_secs(30), || {
        model_version() == "1.0.1"
    });
    assert!(reloads("ok") >= 1);
}

#[test]
fn reflexd_connects_over_tls_with_a_password_when_configured() {
    let _serial = serial();
    // Both listeners refuse anonymous clients; the daemon gets the TLS one only.
    let secure = spawn_secure_broker("reflexd", "s3cret-for-tests");
    let dir = test_dir("tls-secrets");
    let password_file = dir.join("mqtt.password");
    reflex_tests::write_secret(&password_file, "s3cret-for-tests\n");
    let mqtt = format!(
        "port = {}\nusername = \"reflexd\"\npassword_file = \"{}\"\n\
         [mqtt.tls]\nenabled = true\nca_file = \"{}\"",
        secure.tls_port,
        password_file.display(),
        secure.ca_file.display()
    );
    let config = write_config_with(&mqtt, "tls", 5.0, "", &repo().join("models"));
    let mut daemon = spawn_daemon(&config);
    let f = field_on(secure.broker.port, Some(("reflexd", "s3cret-for-tests")));
    let (_, cmd) = f.publish_until_answered("dev-0007", &events(7, 100));
    assert_eq!(cmd.device.as_str(), "dev-0007");
    assert_eq!(
        metric(&scrape(&config), "reflexd_mqtt_reconnects_total"),
        0,
        "the TLS session held"
    );
    assert!(daemon.child.try_wait().unwrap().is_none());
}
