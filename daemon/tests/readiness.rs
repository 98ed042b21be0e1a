//! Readiness end to end: `/readyz` and the readiness gauges follow the broker (not there,
//! up, killed), a subscription the broker refuses, and a journal that refuses appends,
//! while `/healthz` answers 200 throughout.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use reflex_tests::{free_port, spawn_broker, spawn_broker_on, wait_until};

/// The status line's code and the body of a response.
fn status_and_body(response: &str) -> (u16, String) {
    let code = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

fn readyz(config: &PathBuf) -> (u16, String) {
    status_and_body(&http_get(config, "/readyz"))
}

fn healthz(config: &PathBuf) -> u16 {
    status_and_body(&http_get(config, "/healthz")).0
}

/// A config on `port` of 127.0.0.1 that retries a lost broker quickly.
fn config_on(port: u16, name: &str) -> PathBuf {
    write_config_with(
        &format!("port = {port}\nreconnect_max_ms = 200"),
        name,
        5.0,
        "",
        &repo().join("models"),
    )
}

#[test]
fn readyz_says_not_connected_until_the_broker_is_up_then_ready_then_not_connected_once_it_is_killed(
) {
    let _serial = serial();
    let port = free_port();
    let config = config_on(port, "readyz-broker");
    let _daemon = spawn_daemon(&config);

    // No broker yet: alive, not ready, and it says why.
    let (code, body) = readyz(&config);
    assert_eq!(code, 503, "{body}");
    assert!(body.lines().any(|l| l == "mqtt: not connected"), "{body}");
    assert!(body.lines().any(|l| l == "mqtt: not subscribed"), "{body}");
    assert_eq!(healthz(&config), 200);
    let m = scrape(&config);
    assert_eq!(metric(&m, "reflexd_ready"), 0);
    assert_eq!(metric(&m, "reflexd_mqtt_connected"), 0);
    assert_eq!(metric(&m, "reflexd_mqtt_subscribed"), 0);

    // The broker comes up on that port: connected, subscribed, ready.
    let mut broker = spawn_broker_on(port);
    wait_until("/readyz to answer 200", Duration::from_secs(30), || {
        readyz(&config).0 == 200
    });
    assert_eq!(readyz(&config).1, "ready\n");
    let m = scrape(&config);
    assert_eq!(metric(&m, "reflexd_ready"), 1);
    assert_eq!(metric(&m, "reflexd_mqtt_connected"), 1);
    assert_eq!(metric(&m, "reflexd_mqtt_subscribed"), 1);
    // Ready means subscribed: an event is answered.
    let f = field(&broker);
    f.publish_until_answered("dev-0007", &events(7, 200));

    // The broker dies: not ready again, still alive.
    broker.kill();
    wait_until("/readyz to answer 503", Duration::from_secs(30), || {
        readyz(&config).0 == 503
    });
    let (_, body) = readyz(&config);
    assert!(body.lines().any(|l| l == "mqtt: not connected"), "{body}");
    assert_eq!(healthz(&config), 200);
    let m = scrape(&config);
    assert_eq!(metric(&m, "reflexd_ready"), 0);
    assert_eq!(metric(&m, "reflexd_mqtt_connected"), 0);
}

/// A minimal MQTT 3.1.1 broker on `listener` that accepts every connection and refuses
/// every subscription (SubAck return code 0x80), and answers pings.
fn refusing_broker(listener: TcpListener) {
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || serve_refusing(stream));
        }
    });
}

fn serve_refusing(mut s: TcpStream) {
    let mut head = [0u8; 1];
    while s.read_exact(&mut head).is_ok() {
        // The remaining length (variable byte integer), then the packet's body.
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_err() {
                return;
            }
            len |= usize::from(b[0] & 0x7f) << shift;
            shift += 7;
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        if s.read_exact(&mut body).is_err() {
            return;
        }
        let reply: Vec<u8> = match head[0] >> 4 {
            1 => vec![0x20, 2, 0, 0],                   // CONNECT → CONNACK accepted
            8 => vec![0x90, 3, body[0], body[1], 0x80], // SUBSCRIBE → SUBACK failure
            12 => vec![0xd0, 0],                        // PINGREQ → PINGRESP
            14 => return,                               // DISCONNECT
            _ => continue,
        };
        if s.write_all(&reply).is_err() {
            return;
        }
    }
}

#[test]
fn a_subscription_the_broker_refuses_is_connected_but_not_ready() {
    let _serial = serial();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    refusing_broker(listener);
    let config = config_on(port, "readyz-suback-refused");
    let _daemon = spawn_daemon(&config);
    wait_until(
        "reflexd to connect to the refusing broker",
        Duration::from_secs(30),
        || metric(&scrape(&config), "reflexd_mqtt_connected") == 1,
    );
    let (code, body) = readyz(&config);
    assert_eq!(code, 503, "{body}");
    assert_eq!(body, "mqtt: not subscribed\n");
    let m = scrape(&config);
    assert_eq!(metric(&m, "reflexd_mqtt_subscribed"), 0);
    assert_eq!(metric(&m, "reflexd_ready"), 0);
}

#[test]
fn a_journal_that_refuses_appends_under_backpressure_is_not_ready() {
    let _serial = serial();
    let broker = spawn_broker();
    let dir = test_dir("readyz-journal-full");
    let config = write_config(&broker, "readyz-journal-full", 5.0, "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[journal]\ndir = \"{}\"\ngroup_commit_ms = 5\nquota_mib = 1\nmin_free_mib = 1\nwhen_full = \"backpressure\"\n",
        dir.join("journal").display()
    ));
    std::fs::write(&config, text).unwrap();
    let _daemon = spawn_daemon(&config);
    let f = field(&broker);
    let evs = events(11, 1500);
    let (warm, _) = f.publish_until_answered("dev-0011", &evs[..200]);
    wait_until("/readyz to answer 200", Duration::from_secs(30), || {
        readyz(&config).0 == 200
    });
    // No uploader frees space: about 380 records fill 1 MiB, then appends are refused.
    for (_, bytes) in &evs[warm..] {
        f.publish("dev-0011", bytes.clone());
    }
    wait_until(
        "/readyz to report the journal refusing appends",
        Duration::from_secs(60),
        || {
            readyz(&config)
                .1
                .lines()
                .any(|l| l == "journal: refusing appends (full)")
        },
    );
    let (code, body) = readyz(&config);
    assert_eq!(code, 503, "{body}");
    assert!(!body.contains("mqtt:"), "the link is fine: {body}");
    // The quota check can mark the journal full before the next append is refused: the
    // refusal (of an event the broker keeps delivering) is counted soon after.
    wait_until(
        "an append refused under backpressure to be counted",
        Duration::from_secs(30),
        || metric(&scrape(&config), "reflexd_journal_refused_total") > 0,
    );
    let m = scrape(&config);
    assert_eq!(metric(&m, "reflexd_ready"), 0);
    assert_eq!(metric(&m, "reflexd_mqtt_subscribed"), 1);
}
