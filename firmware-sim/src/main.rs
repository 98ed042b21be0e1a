//! `reflex-sim`: run a simulated sensor fleet against an MQTT broker, measure a daemon
//! under load, echo events as the MQTT latency floor, or write the training dataset.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use rumqttc::QoS;
use tokio_util::sync::CancellationToken;

use reflex_service::shutdown_on_signals;
use reflex_sim::faults::FaultRates;
use reflex_sim::mqtt::{self, BrokerOptions, FleetConfig, Format, ScalarStream};
use reflex_sim::scenario::Scenario;
use reflex_sim::signal::Distortion;
use reflex_sim::stream::StreamPlan;

#[derive(Parser)]
#[command(
    name = "reflex-sim",
    version,
    about = "Simulated sensor fleet and load generator for reflex"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Publish events from a simulated fleet.
    Run(FleetArgs),
    /// Publish events and measure the commands that answer them (p50/p99/p99.9/max).
    Load {
        #[command(flatten)]
        fleet: FleetArgs,
        /// End-to-end deadline; slower answers are counted as misses.
        #[arg(long, default_value_t = 5.0)]
        deadline_ms: f64,
    },
    /// Answer every event with a trivial command: the MQTT latency floor.
    Echo {
        #[command(flatten)]
        broker: BrokerArgs,
        /// Topic filter to answer.
        #[arg(long, default_value = reflex_sim::EVENT_TOPIC_FILTER)]
        filter: String,
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        duration_s: Option<f64>,
    },
    /// A broker (private mosquitto when installed, else the embedded rumqttd; see
    /// `REFLEX_DEMO_BROKER`) + echo client + fleet in load mode: live figures, no setup.
    Demo {
        /// Run length in seconds.
        #[arg(long, default_value_t = 10.0)]
        duration_s: f64,
        /// Devices.
        #[arg(long, default_value_t = 20)]
        devices: u32,
        /// Events per second per device.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
    },
    /// Write the labelled training dataset (.npy) from the same signal models.
    Dataset {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Examples per class.
        #[arg(long, default_value_t = 5000)]
        per_class: usize,
        /// Seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
}

#[derive(Args, Clone)]
struct BrokerArgs {
    /// Broker address, host:port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// QoS of publishes and subscriptions (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// MQTT username (password from REFLEX_SIM_PASSWORD).
    #[arg(long)]
    username: Option<String>,
}

/// Parses fleet defaults for the demo.
#[derive(Parser)]
struct FleetOnly {
    #[command(flatten)]
    fleet: FleetArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScenarioArg {
    Steady,
    Burst,
    Drift,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Postcard,
    Json,
    /// A third-party sensor's own JSON (`{"id", "n", "ts", "ax", "ay", "az", "temp"}`),
    /// for a reflexd route with `[routes.input] kind = "json"`.
    VendorJson,
    /// A Sparkplug B edge node with the fleet as its devices (births, data by alias,
    /// deaths), for a reflexd route with `[routes.input] kind = "sparkplug_b"`.
    Sparkplug,
    /// One reading per message (`{"id", "n", "ts", "ax", "ay", "az", "temp"}`, one number
    /// each), for a reflexd route that assembles windows (`[routes.input.assemble]`):
    /// `--rate` is readings per second per device (a sensor's 100 Hz–1 kHz), and only the
    /// readings that complete a window (`--window`, `--hop`) await a command.
    ScalarJson,
}

#[derive(Args, Clone)]
struct FleetArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Number of devices; device i observes condition i mod 4, and each condition sends a
    /// quarter of the events whatever the count (the edge reference's balanced mix).
    #[arg(long, default_value_t = reflex_sim::fleet::DEFAULT_DEVICES)]
    devices: u32,
    /// Events per second per device (the fleet's mean).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Stop after this many seconds.
    #[arg(long)]
    duration_s: Option<f64>,
    /// Stop after this many events in total.
    #[arg(long)]
    events: Option<u64>,
    /// Load and drift pattern.
    #[arg(long, value_enum, default_value = "steady")]
    scenario: ScenarioArg,
    /// Burst: seconds between bursts, burst length, rate factor.
    #[arg(long, default_value_t = 10.0)]
    burst_period_s: f64,
    #[arg(long, default_value_t = 2.0)]
    burst_s: f64,
    #[arg(long, default_value_t = 5.0)]
    burst_factor: f64,
    /// Drift: how many devices drift (the first N), when and how fast.
    #[arg(long, default_value_t = 1)]
    drift_devices: u32,
    #[arg(long, default_value_t = 5.0)]
    drift_start_s: f64,
    #[arg(long, default_value_t = 30.0)]
    drift_ramp_s: f64,
    /// Drift target: gain, offset (g), extra noise (g).
    #[arg(long, default_value_t = Scenario::DEFAULT_DRIFT_TARGET.gain)]
    drift_gain: f32,
    #[arg(long, default_value_t = Scenario::DEFAULT_DRIFT_TARGET.offset_g)]
    drift_offset_g: f32,
    #[arg(long, default_value_t = Scenario::DEFAULT_DRIFT_TARGET.extra_noise_g)]
    drift_noise_g: f32,
    /// Fault injection probabilities per event.
    #[arg(long, default_value_t = 0.0)]
    malformed: f64,
    #[arg(long, default_value_t = 0.0)]
    oversized: f64,
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Each device's clock is off by up to ± this many ms.
    #[arg(long, default_value_t = 0.0)]
    clock_skew_ms: f64,
    /// Deadline hint sent with each event, µs.
    #[arg(long)]
    deadline_hint_us: Option<u32>,
    /// Payload encoding.
    #[arg(long, value_enum, default_value = "postcard")]
    format: FormatArg,
    /// Channels per window, 1..=8; beyond 4 channels or 64 samples an event is sent as
    /// wire format version 2.
    #[arg(long, default_value_t = reflex_sim::fleet::DEFAULT_WINDOW.0 as u8,
          value_parser = clap::value_parser!(u8).range(1..=8))]
    channels: u8,
    /// Samples per channel per window, 1..=1024.
    #[arg(long, default_value_t = reflex_sim::fleet::DEFAULT_WINDOW.1 as u16,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    samples: u16,
    /// scalar-json: readings per window, the route model's window length.
    #[arg(long, default_value_t = reflex_sim::signal::WINDOW)]
    window: usize,
    /// scalar-json: readings between two windows, the route's `[routes.input.assemble]
    /// hop` (default: the window length, as reflexd's).
    #[arg(long)]
    hop: Option<usize>,
    /// Number of the first device (`dev-{N}`, …). To run again against a reflexd that has
    /// seen this fleet's devices (their sequence numbers, a scalar stream's buffered
    /// readings), use fresh ones (or restart it).
    #[arg(long, default_value_t = 0)]
    first_device: u32,
    /// Seed of everything random.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// No live progress lines.
    #[arg(long)]
    quiet: bool,
    /// Seconds to wait at the end for acks and commands.
    #[arg(long, default_value_t = 3.0)]
    drain_s: f64,
}

impl BrokerArgs {
    fn options(&self) -> anyhow::Result<BrokerOptions> {
        let (host, port) = self
            .broker
            .rsplit_once(':')
            .with_context(|| format!("--broker {:?} is not host:port", self.broker))?;
        let port: u16 = port
            .parse()
            .with_context(|| format!("--broker port {port:?} is not a number"))?;
        let credentials = self.username.as_ref().map(|u| {
            (
                u.clone(),
                std::env::var("REFLEX_SIM_PASSWORD").unwrap_or_default(),
            )
        });
        Ok(BrokerOptions {
            host: host.to_string(),
            port,
            qos: if self.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            credentials,
        })
    }
}

impl FleetArgs {
    fn config(&self, measure_deadline_us: Option<u64>) -> anyhow::Result<FleetConfig> {
        let scenario = match self.scenario {
            ScenarioArg::Steady => Scenario::Steady,
            ScenarioArg::Burst => Scenario::Burst {
                period_s: self.burst_period_s,
                burst_s: self.burst_s,
                factor: self.burst_factor,
            },
            ScenarioArg::Drift => Scenario::Drift {
                start_s: self.drift_start_s,
                ramp_s: self.drift_ramp_s,
                target: Distortion {
                    gain: self.drift_gain,
                    offset_g: self.drift_offset_g,
                    extra_noise_g: self.drift_noise_g,
                },
            },
        };
        Ok(FleetConfig {
            devices: self.devices,
            first_device: self.first_device,
            rate_per_device: self.rate,
            duration: self.duration_s.map(Duration::from_secs_f64),
            max_events: self.events,
            scenario,
            drift_devices: self.drift_devices,
            faults: FaultRates {
                malformed: self.malformed,
                oversized: self.oversized,
                duplicate: self.duplicate,
                reorder: self.reorder,
            },
            clock_skew_us: (self.clock_skew_ms * 1000.0) as i64,
            deadline_hint_us: self.deadline_hint_us,
            format: match self.format {
                FormatArg::Postcard => Format::Postcard,
                FormatArg::Json => Format::Json,
                FormatArg::VendorJson => Format::VendorJson,
                FormatArg::Sparkplug => Format::Sparkplug,
                FormatArg::ScalarJson => Format::ScalarJson(ScalarStream {
                    plan: StreamPlan::new(self.window, self.hop.unwrap_or(self.window))
                        .context("--window/--hop")?,
                }),
            },
            window: (usize::from(self.channels), usize::from(self.samples)),
            seed: self.seed,
            measure_deadline_us,
            drain: Duration::from_secs_f64(self.drain_s),
            progress: !self.quiet,
        })
    }
}

/// Cancelled on the first SIGINT (Ctrl-C) or SIGTERM. Only the commands that stop on it
/// install the handlers (Ctrl-C still ends `dataset` at once); the listener task is
/// detached and ends with the runtime when the command returns.
fn shutdown_token() -> CancellationToken {
    shutdown_on_signals().0
}

fn print_outcome(o: &mqtt::FleetOutcome) {
    println!(
        "published {} events ({} messages: {} duplicates, {} malformed or oversized)",
        o.events, o.messages, o.duplicates, o.bad_payloads
    );
    if let Some(r) = &o.report {
        println!("{r}");
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Run(args) => {
            let o = mqtt::run_fleet(args.broker.options()?, args.config(None)?, shutdown_token())
                .await?;
            print_outcome(&o);
        }
        Cmd::Load { fleet, deadline_ms } => {
            let cfg = fleet.config(Some((deadline_ms * 1000.0) as u64))?;
            let scalar = matches!(cfg.format, Format::ScalarJson(_));
            let o = mqtt::run_fleet(fleet.broker.options()?, cfg, shutdown_token()).await?;
            print_outcome(&o);
            if o.report.as_ref().is_some_and(|r| r.missing > 0) {
                anyhow::bail!("some events got no command");
            }
            // A scalar stream's readings that complete no window must get no command.
            if scalar && o.report.is_some_and(|r| r.unexpected > 0) {
                anyhow::bail!("some readings that complete no window were answered");
            }
        }
        Cmd::Echo {
            broker,
            filter,
            duration_s,
        } => {
            let cancel = shutdown_token();
            if let Some(s) = duration_s {
                let c = cancel.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs_f64(s)).await;
                    c.cancel();
                });
            }
            let o = mqtt::run_echo(broker.options()?, filter, cancel).await?;
            println!(
                "echo answered {} events; {} undecodable",
                o.answered, o.undecodable
            );
        }
        Cmd::Demo {
            duration_s,
            devices,
            rate,
        } => {
            let demo_broker = reflex_sim::demo_broker::DemoBroker::start_from_env()?;
            for line in demo_broker.banner() {
                println!("{line}");
            }
            println!("echo client answers every event: these figures are the broker's floor");
            let port = demo_broker.port();
            let broker = BrokerOptions {
                host: "127.0.0.1".into(),
                port,
                qos: QoS::AtLeastOnce,
                credentials: None,
            };
            let cancel = shutdown_token();
            let echo_cancel = CancellationToken::new();
            let echo = tokio::spawn(mqtt::run_echo(
                broker.clone(),
                reflex_sim::EVENT_TOPIC_FILTER.into(),
                echo_cancel.clone(),
            ));
            let args = FleetOnly::parse_from([
                "demo".to_string(),
                format!("--devices={devices}"),
                format!("--rate={rate}"),
                format!("--duration-s={duration_s}"),
            ])
            .fleet;
            let o = mqtt::run_fleet(broker, args.config(Some(50_000))?, cancel).await;
            echo_cancel.cancel();
            let _ = echo.await;
            print_outcome(&o?);
            drop(demo_broker);
        }
        Cmd::Dataset {
            out,
            per_class,
            seed,
        } => {
            let s = reflex_sim::dataset::write_dataset(&out, per_class, seed)
                .with_context(|| format!("writing the dataset to {}", out.display()))?;
            println!(
                "wrote {} examples, {} bytes, to {}",
                s.examples,
                s.bytes,
                out.display()
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("reflex-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reflex-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}
