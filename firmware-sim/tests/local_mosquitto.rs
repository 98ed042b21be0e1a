//! The demo's private mosquitto (`reflex_sim::local_mosquitto`): a real broker that
//! carries the fleet and its echo floor, and leaves nothing behind once dropped.

use std::net::TcpStream;
use std::time::Duration;

use reflex_sim::local_mosquitto::{find, LocalMosquitto};
use reflex_sim::mqtt::{run_echo, run_fleet, BrokerOptions, FleetConfig, Format};
use tokio_util::sync::CancellationToken;

fn mosquitto() -> std::path::PathBuf {
    find(std::env::var_os("PATH").as_deref())
        .expect("mosquitto not found on PATH, /usr/sbin or /usr/local/sbin: install it (apt-get install -y mosquitto) or run scripts/test")
}

fn load(secs: f64) -> FleetConfig {
    FleetConfig {
        devices: 3,
        first_device: 0,
        rate_per_device: 50.0,
        duration: Some(Duration::from_secs_f64(secs)),
        max_events: None,
        scenario: reflex_sim::scenario::Scenario::Steady,
        drift_devices: 0,
        faults: Default::default(),
        clock_skew_us: 0,
        deadline_hint_us: None,
        format: Format::Postcard,
        window: reflex_sim::fleet::DEFAULT_WINDOW,
        seed: 11,
        measure_deadline_us: Some(50_000),
        drain: Duration::from_secs(5),
        progress: false,
    }
}

#[test]
fn a_private_mosquitto_carries_the_fleet_to_the_echo_and_back() {
    let broker = LocalMosquitto::start(&mosquitto()).expect("starting mosquitto");
    let opts = BrokerOptions {
        host: "127.0.0.1".into(),
        port: broker.port(),
        qos: rumqttc::QoS::AtLeastOnce,
        credentials: None,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let outcome = rt.block_on(async {
        let stop = CancellationToken::new();
        let echo = tokio::spawn(run_echo(
            opts.clone(),
            reflex_sim::EVENT_TOPIC_FILTER.into(),
            stop.clone(),
        ));
        let outcome = run_fleet(opts, load(1.0), CancellationToken::new()).await;
        stop.cancel();
        echo.await.unwrap().expect("echo client");
        outcome.expect("fleet")
    });
    let report = outcome.report.expect("load mode reports");
    assert!(report.sent >= 100, "{report:?}");
    assert_eq!(report.answered, report.sent, "{report:?}");
    assert_eq!(report.missing, 0, "{report:?}");
}

#[test]
fn a_dropped_private_mosquitto_stops_listening_and_leaves_no_files() {
    let broker = LocalMosquitto::start(&mosquitto()).expect("starting mosquitto");
    let port = broker.port();
    let dir = std::env::temp_dir().join(format!(
        "reflex-demo-mosquitto-{}-{port}",
        std::process::id()
    ));
    assert!(dir.join("mosquitto.conf").is_file(), "{}", dir.display());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(broker);
    // The broker was killed and reaped by drop: nothing accepts on its port any more.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn a_broker_that_cannot_start_is_an_error_with_its_log() {
    // `false` exits at once: reported as such, with whatever it printed.
    let err = LocalMosquitto::start(std::path::Path::new("/bin/false")).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("exited"), "{text}");
    assert!(text.contains("before listening on 127.0.0.1:"), "{text}");
}
