//! An in-process MQTT broker (rumqttd) on loopback, for demos on machines without
//! mosquitto. It never sets TCP_NODELAY, so its round trips are milliseconds, not the
//! ~0.3 ms of mosquitto: figures measured through it show the broker's floor (the echo
//! client measures that floor in the same run).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Starts the broker on a free loopback port and returns that port.
///
/// rumqttd has no shutdown: its thread ends with the process. Returns once it has
/// accepted an MQTT connection (bounded wait).
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
    // Wait (bounded) until it answers an MQTT CONNECT. A bare TCP connect would do as a
    // probe, but rumqttd logs every connection closed before its CONNECT at ERROR.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while let Err(e) = mqtt_handshake(listen) {
        if std::time::Instant::now() > deadline {
            return Err(std::io::Error::other(format!(
                "embedded broker did not answer a CONNECT within 5 s: {e}"
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(port)
}

/// MQTT 3.1.1 CONNECT (clean session, keep-alive 60 s, client id `probe`).
const PROBE_CONNECT: [u8; 19] = [
    0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 5, b'p', b'r', b'o', b'b', b'e',
];
/// MQTT DISCONNECT.
const DISCONNECT: [u8; 2] = [0xe0, 0];

/// Connects to `addr`, sends a CONNECT, expects a CONNACK that accepts it, disconnects.
fn mqtt_handshake(addr: SocketAddr) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(1);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(&PROBE_CONNECT)?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack)?;
    if ack[0] != 0x20 || ack[1] != 2 || ack[3] != 0 {
        return Err(std::io::Error::other(format!(
            "unexpected answer to CONNECT: {ack:02x?}"
        )));
    }
    s.write_all(&DISCONNECT)
}
