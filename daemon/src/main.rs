//! `reflexd`: the reflex edge inference daemon.
//!
//! - `reflexd run --config reflex.toml`: serve until SIGTERM/SIGINT.
//! - `reflexd validate --config reflex.toml`: report every config error at once; exit 64
//!   when there is one (for systemd's `ExecStartPre`).
//! - `reflexd selftest --config reflex.toml`: load, verify (checksum, golden vectors) and
//!   calibrate every configured model without connecting to anything; exit 1 on failure.
//! - `reflexd demo`: embedded broker, simulated fleet and the daemon, with live figures.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use reflexd::config::{self, Config, ConfigError};

/// Exit code for a bad configuration (EX_USAGE... sysexits' EX_USAGE is 64).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "reflexd", version, about = "reflex edge inference daemon")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon.
    Run {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and the files it names; report every error.
    Validate {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Load every configured model as `run` would (checksum, golden vectors, calibration,
    /// budgets) and report; exit 1 on any failure. For boards and emulators.
    Selftest {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Embedded broker + simulated fleet + reflexd, with live figures.
    Demo {
        /// Seconds to run the fleet against reflexd.
        #[arg(long, default_value_t = 10.0)]
        duration_s: f64,
        /// Devices in the fleet.
        #[arg(long, default_value_t = 20)]
        devices: u32,
        /// Events per second per device.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
    },
}

/// Loads and validates, including the files the config names.
fn load_config(path: &PathBuf) -> Result<Config, String> {
    let cfg = config::load(path).map_err(|e| match e {
        ConfigError::Invalid(errors) => {
            let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
            format!(
                "{}: {} error(s):\n{}",
                path.display(),
                errors.len(),
                lines.join("\n")
            )
        }
        other => format!("{}: {other}", path.display()),
    })?;
    let file_errors = cfg.check_files();
    if !file_errors.is_empty() {
        let lines: Vec<String> = file_errors.iter().map(|e| format!("  {e}")).collect();
        return Err(format!(
            "{}: {} error(s):\n{}",
            path.display(),
            file_errors.len(),
            lines.join("\n")
        ));
    }
    Ok(cfg)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REFLEX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A token cancelled on the first SIGTERM or SIGINT, and the task that listens for them
/// (aborted by the caller once the work it guards has ended).
fn shutdown_on_signals() -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let t = token.clone();
    let listener = tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutdown signal received");
        t.cancel();
    });
    (token, listener)
}

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

async fn demo(duration_s: f64, devices: u32, rate: f64) -> anyhow::Result<()> {
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
    let (stop, signals) = shutdown_on_signals();

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

/// Any panic ends reflexd at once (after the usual message), as `panic = "abort"` would: a
/// real-time daemon with a dead thread is worse than one systemd restarts. The one panic let
/// through is sled's while the journal opens a damaged journal, which the journal catches
/// and answers by moving that journal aside (release builds unwind for it: Cargo.toml).
fn abort_on_panic_except_sleds_caught_one() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        if !reflex_journal::store::panic_is_caught_here() {
            std::process::abort();
        }
    }));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    abort_on_panic_except_sleds_caught_one();
    // ring: quick to build, and one provider for the whole process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match &cli.command {
        Cmd::Validate { config } | Cmd::Run { config } | Cmd::Selftest { config } => {
            match load_config(config) {
                Ok(c) => Some(c),
                Err(msg) => {
                    eprintln!("reflexd: invalid configuration: {msg}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
        }
        Cmd::Demo { .. } => None,
    };
    if let (Cmd::Validate { config: path }, Some(_)) = (&cli.command, &config) {
        println!("{}: ok", path.display());
        return ExitCode::SUCCESS;
    }
    if let (Cmd::Selftest { .. }, Some(cfg)) = (&cli.command, &config) {
        return match reflexd::runner::selftest(cfg) {
            Ok(reports) => {
                for r in reports {
                    let golden = match &r.golden {
                        Some(g) => format!(
                            "golden {}/{} argmax agree, max |diff| {:.2e} <= {:.1e}",
                            g.argmax_agree, g.examples, g.max_abs_diff, g.tolerance
                        ),
                        None => "no golden vectors in the manifest".to_owned(),
                    };
                    let batches: Vec<String> = r
                        .batch_profiles
                        .iter()
                        .enumerate()
                        .map(|(i, p)| format!("{}:{}", i + 1, p.p999 / 1000))
                        .collect();
                    println!(
                        "model {} {}: checksum ok, {golden}, latency p50 {} us p99.9 {} us, p99.9 by batch size (windows:us) {}, fallback {}",
                        r.model,
                        r.version,
                        r.profile.p50 / 1000,
                        r.profile.p999 / 1000,
                        batches.join(" "),
                        r.fallback
                    );
                }
                println!("selftest: ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("reflexd: selftest failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("reflexd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Cmd::Run { .. } => {
                let cfg = config.expect("loaded above");
                let (stop, signals) = shutdown_on_signals();
                let result = reflexd::runner::run(cfg, stop, None).await;
                signals.abort();
                result
            }
            Cmd::Demo {
                duration_s,
                devices,
                rate,
            } => demo(duration_s, devices, rate).await,
            Cmd::Validate { .. } | Cmd::Selftest { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reflexd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
