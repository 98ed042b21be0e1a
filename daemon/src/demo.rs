//! `reflexd demo`: an embedded broker (rumqttd), a simulated fleet and reflexd, with live
//! figures; first the broker's floor (an echo client answering without a model), then
//! reflexd with the edge model, against the same fleet.

use std::time::Duration;

use anyhow::Context;

use reflexd::config::{self, Config};

fn demo_config(port: u16) -> anyhow::Result<Config> {
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
enabled = false
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
    let port = reflex_sim::embedded_broker::start().context("starting the embedded broker")?;
    println!("embedded broker (rumqttd) on 127.0.0.1:{port}");
    let broker = BrokerOptions {
        host: "127.0.0.1".into(),
        port,
        qos: rumqttc::QoS::AtLeastOnce,
        credentials: None,
    };
    let fleet = |secs: f64| FleetConfig {
        devices,
        rate_per_device: rate,
        duration: Some(Duration::from_secs_f64(secs)),
        max_events: None,
        scenario: reflex_sim::scenario::Scenario::Steady,
        drift_devices: 0,
        faults: Default::default(),
        clock_skew_us: 0,
        deadline_hint_us: None,
        format: Format::Postcard,
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
    let cfg = demo_config(port)?;
    let daemon_stop = stop.child_token();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let daemon = tokio::spawn(reflexd::runner::run(
        cfg,
        daemon_stop.clone(),
        Some(ready_tx),
    ));
    let handle = ready_rx.await.context("reflexd did not start")?;
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
    println!("note: rumqttd does not set TCP_NODELAY, so both columns carry its ~10 ms floor;\n      with mosquitto (set_tcp_nodelay true) the floor is ~0.3-0.5 ms: see the benchmark in README.md");
    signals.abort();
    Ok(())
}
