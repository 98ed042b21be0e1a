//! `reflexd demo`: a broker, a simulated fleet and reflexd, with live figures; first the
//! broker's floor (an echo client answering without a model), then reflexd with the edge
//! model, against the same fleet.
//!
//! The broker (`reflex_sim::demo_broker`): a private mosquitto on a free loopback port when
//! mosquitto is installed (the broker of a board, with the Debian package's settings,
//! TCP_NODELAY on: the floor is a fraction of a millisecond), else the embedded rumqttd,
//! which sets no TCP_NODELAY on the connections it accepts (a ~10 ms floor), with a note
//! saying so. `REFLEX_DEMO_BROKER=embedded` forces rumqttd, `=mosquitto` refuses to run
//! without mosquitto. Every client of the demo (fleet, echo, reflexd) sets TCP_NODELAY.
//!
//! While reflexd runs, its Prometheus endpoint is on a free loopback port, printed at the
//! start (`scripts/render-dashboard` scrapes it).

use std::time::Duration;

use anyhow::Context;

use reflexd::config::{self, Config};

/// A free port on 127.0.0.1 for the metrics endpoint.
fn free_loopback_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn demo_config(port: u16, metrics_port: u16) -> anyhow::Result<Config> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let text = format!(
        r#"
[node]
name = "demo"
[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "reflexd-demo-{pid}"
[metrics]
listen = "127.0.0.1:{metrics_port}"
[[routes]]
name = "vibration"
topic_filter = "sensors/+/vibration"
model = "edge"
deadline_ms = 50.0
command_topic = "actuators/{{device}}/cmd"
on_budget_unmeetable = "warn"
[models.edge]
manifest = "{root}/models/edge.manifest.json"
fallback_manifest = "{root}/models/fallback.manifest.json"
"#,
        pid = std::process::id()
    );
    let cfg = config::parse(&text)?;
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("demo config: {e:?}"))?;
    Ok(cfg)
}

/// Runs the demo: the broker's floor (an echo client), then reflexd, against the same
/// simulated fleet; prints both.
pub async fn run(duration_s: f64, devices: u32, rate: f64) -> anyhow::Result<()> {
    use reflex_sim::mqtt::{run_echo, run_fleet, BrokerOptions, FleetConfig, Format};
    let demo_broker = reflex_sim::demo_broker::DemoBroker::start_from_env()?;
    for line in demo_broker.banner() {
        println!("{line}");
    }
    let port = demo_broker.port();
    let metrics_port = free_loopback_port().context("choosing the metrics port")?;
    println!("reflexd's metrics, while it runs: http://127.0.0.1:{metrics_port}/metrics");
    let broker = BrokerOptions {
        host: "127.0.0.1".into(),
        port,
        qos: rumqttc::QoS::AtLeastOnce,
        credentials: None,
    };
    let fleet = |secs: f64| FleetConfig {
        devices,
        first_device: 0,
        rate_per_device: rate,
        duration: Some(Duration::from_secs_f64(secs)),
        max_events: None,
        scenario: reflex_sim::scenario::Scenario::Steady,
        drift_devices: 0,
        faults: Default::default(),
        clock_skew_us: 0,
        deadline_hint_us: None,
        format: Format::Postcard,
        window: reflex_sim::fleet::DEFAULT_WINDOW,
        seed: 7,
        measure_deadline_us: Some(50_000),
        drain: Duration::from_secs(3),
        progress: true,
    };
    let (stop, signals) = reflex_service::shutdown_on_signals();

    // 1. The floor: an echo client that answers without a model, through the same broker.
    println!(
        "\n-- the broker's floor: echo client, {:.0} s --",
        (duration_s / 2.0).max(2.0)
    );
    let echo_stop = stop.child_token();
    let echo = tokio::spawn(run_echo(
        broker.clone(),
        reflex_sim::EVENT_TOPIC_FILTER.into(),
        echo_stop.clone(),
    ));
    let floor = run_fleet(
        broker.clone(),
        fleet((duration_s / 2.0).max(2.0)),
        stop.clone(),
    )
    .await?;
    echo_stop.cancel();
    let _ = echo.await;

    // 2. reflexd with the edge model.
    println!("\n-- reflexd with the edge model, {duration_s:.0} s --");
    let cfg = demo_config(port, metrics_port)?;
    let daemon_stop = stop.child_token();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let daemon = tokio::spawn(reflexd::runner::run(
        cfg,
        daemon_stop.clone(),
        Some(ready_tx),
    ));
    let handle = ready_rx.await.context("reflexd did not start")?;
    // Started is not subscribed: events published before the broker has reflexd's
    // subscriptions would be dropped by it and counted as missing commands.
    let subscribed_by = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !handle.link.is_subscribed() {
        anyhow::ensure!(
            std::time::Instant::now() < subscribed_by,
            "reflexd did not subscribe within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let result = run_fleet(broker, fleet(duration_s), stop.clone()).await?;
    daemon_stop.cancel();
    daemon.await??;

    let snap = handle.metrics.snapshot();
    println!("\n{:<24}{:>14}{:>14}", "", "echo (floor)", "reflexd");
    if let (Some(f), Some(r)) = (&floor.report, &result.report) {
        for (name, a, b) in [
            ("events/s", f.events_per_s as u64, r.events_per_s as u64),
            ("commands matched", f.answered, r.answered),
            ("commands missing", f.missing, r.missing),
            ("latency p50 µs", f.p50_us, r.p50_us),
            ("latency p99 µs", f.p99_us, r.p99_us),
            ("latency p99.9 µs", f.p999_us, r.p999_us),
            ("latency max µs", f.max_us, r.max_us),
        ] {
            println!("{name:<24}{a:>14}{b:>14}");
        }
    }
    println!(
        "reflexd: {} decided by the model, {} by the fallback, {} deadline misses",
        snap.decided_model, snap.decided_fallback, snap.deadline_misses
    );
    if demo_broker.is_embedded() {
        println!("note: both columns carry the embedded rumqttd's ~10 ms floor (no TCP_NODELAY); install mosquitto for the real one");
    }
    signals.abort();
    drop(demo_broker);
    Ok(())
}
