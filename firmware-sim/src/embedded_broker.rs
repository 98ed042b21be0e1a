//! An in-process MQTT broker (rumqttd) on loopback, for demos on machines without
//! mosquitto. It never sets TCP_NODELAY, so its round trips are milliseconds, not the
//! ~0.3 ms of mosquitto: figures measured through it show the broker's floor (the echo
//! client measures that floor in the same run).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Starts the broker on a free loopback port and returns that port.
///
/// rumqttd has no shutdown: its thread ends with the process.
pub fn start() -> std::io::Result<u16> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let server = ServerSettings {
        name: "v4-embedded".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 64 * 1024,
            max_inflight_count: 1000,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 1000,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                eprintln!("embedded broker stopped: {e}");
            }
        })?;
    // Wait (bounded) until it accepts connections.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::net::TcpStream::connect(listen).is_err() {
        if std::time::Instant::now() > deadline {
            return Err(std::io::Error::other(
                "embedded broker did not start within 5 s",
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(port)
}
