//! `reflex-bench`: the end-to-end benchmark of the real-time path, side by side with the
//! MQTT floor, on this machine.
//!
//! One mosquitto (TCP_NODELAY) on loopback; for each rate, two phases with the same
//! simulated fleet in load mode (QoS 1, every command matched to its event):
//! (a) the floor: `reflex-sim echo`, which answers each event with a trivial command;
//! (b) `reflexd run` with the edge model and a 5 ms budget, live monitoring on (as by
//! default), its windows `--monitor-window-s` long (reflexd's default 60 s; 1 closes a window,
//! drift of 13 sketches, every second);
//! optional phases: (c) `--journal`: the same with the journal on (fsync group commit, QoS 1
//! acks after durable); (d) `--monitor-off`: the same with `[monitor] enabled = false`.
//! `--policy` adds a phase with a decision policy and a command template on the route
//! (ratio policy on/off against (b)). `--vendor-json` adds a phase whose route reads a
//! third-party JSON window through an input adapter; `--assembled` one whose route
//! assembles the windows from a scalar stream (one reading per message, `[routes.input.
//! assemble]`, hop `--assembled-hop`, 1 by default: every reading after a device's first
//! 63 completes a window, so windows scored/s = readings/s = the rate, the model's load of
//! phase (b)); each with its ratio to (b).
//! (c) and (d) are reported with their ratio to (b), the cost of the journal and of
//! monitoring measured in the same run.
//! Reported per phase: p50/p99/p99.9/max end-to-end latency as the fleet sees it,
//! unanswered events, reflexd's deadline misses and fallbacks, CPU and peak RSS of the
//! responder process; and the ratio reflexd/echo at each percentile.
//!
//! `--rounds N` repeats the phases N times in turn (echo, reflexd, echo, reflexd, …), so
//! that a slow minute of the machine (a VM's neighbours, a cron job) falls on both sides
//! rather than on one phase, and reports the reflexd/echo ratio of every round with its
//! median: on a 2-core VM one round's p99 ratio moves by ±0.3 from run to run. It also
//! pools the rounds: each side's percentiles over all of its events (HDR histograms add),
//! the p99 of 5 × 50k events instead of five p99s of 50k. `--control` adds a second echo
//! phase per round (echo, reflexd, echo again): the ratio of the two echo phases is what
//! the measurement's own noise makes of one responder compared with itself.
//!
//! `--interleave` goes further: every responder of a rate (echo, reflexd, the variants,
//! the control echo) starts once, each on a mosquitto of its own, and runs to the end; a
//! round is one phase per responder in turn, rotated by one each round, every fleet on
//! devices no responder has seen. Many short rounds then spread the machine's slow
//! moments over all sides alike, where 10 s phases one after the other leave a
//! neighbour's burst on one side: the pooled percentiles compare like with like.
//!
//! The responders run as their own processes (found next to this binary) so that their
//! CPU and memory are theirs alone: build with
//! `cargo build --release -p reflexd -p reflex-sim -p reflex-benches`, or use
//! `benches/realtime`, which does that and runs this.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use reflex_benches::stall::{self, Stall, StallProbe};
use reflex_sim::mqtt::{run_fleet, BrokerOptions, FleetConfig, Format, ScalarStream};
use reflex_sim::stream::StreamPlan;
use reflex_sim::tracker::latency_at;
use reflex_tests::prometheus::metric;
use reflex_tests::{spawn_broker, ChildGuard};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "reflexd vs the MQTT floor (echo) at several rates, QoS 1, with mosquitto")]
struct Args {
    /// Total event rates to run, events/s.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    rates: Vec<f64>,
    /// Seconds measured per phase.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Simulated devices (the rate is spread over them, each condition a quarter of it).
    #[arg(long, default_value_t = reflex_sim::fleet::DEFAULT_DEVICES)]
    devices: u32,
    /// reflexd's deadline budget, ms.
    #[arg(long, default_value_t = 5.0)]
    deadline_ms: f64,
    /// reflexd's inference worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// reflexd's `scheduler.max_batch`: most queued events per model run (1: one at a time).
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// reflexd's `scheduler.realtime_priority` (0: engine threads on the normal scheduler).
    #[arg(long, default_value_t = 10)]
    realtime_priority: u8,
    /// Also run reflexd with its journal (fsync group commit; QoS 1 acks after durable),
    /// as a third phase: the cost journaling adds to the real-time path.
    #[arg(long)]
    journal: bool,
    /// Also run reflexd with live monitoring off, as a phase of its own: the cost of
    /// monitoring on the real-time path (phase b has it on).
    #[arg(long)]
    monitor_off: bool,
    /// Also run reflexd with its route reading a third-party sensor's JSON through an
    /// input adapter (`[routes.input] kind = "json"`), the fleet publishing that JSON, as a
    /// phase of its own: the cost of the JSON-mapped route against the postcard one (b).
    #[arg(long)]
    vendor_json: bool,
    /// Also run reflexd with its route assembling windows from a scalar stream (one
    /// reading per message, `[routes.input.assemble]`), the fleet publishing one reading
    /// per message at the rate (readings/s), as a phase of its own: the cost of window
    /// assembly against the postcard route (b), at the same windows scored per second with
    /// `--assembled-hop 1`.
    #[arg(long)]
    assembled: bool,
    /// The assembled route's hop (readings between two windows scored), 1..=64. 1: every
    /// reading after a device's first 63 completes a window, so the model scores as many
    /// windows per second as phase (b) at the same rate; a larger hop scores rate/hop.
    #[arg(long, default_value_t = 1)]
    assembled_hop: usize,
    /// Also run reflexd with a decision policy (debounce 2 of 3, a confidence threshold,
    /// a cooldown, two window rules) and a JSON command template on its route, as a phase
    /// of its own: the cost of the policy against phase (b)'s plain route.
    #[arg(long)]
    policy: bool,
    /// Length of reflexd's monitoring windows in the phases with monitoring on, s.
    #[arg(long, default_value_t = 60)]
    monitor_window_s: u64,
    /// Rounds of (echo, reflexd, variants) per rate, in turn; each round's ratio and the
    /// median are reported.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Also run the floor again after reflexd in each round (echo, reflexd, echo again):
    /// the echo-again/echo ratios show how far the measurement moves with no change at all.
    #[arg(long)]
    control: bool,
    /// Keep every responder of a rate running from the first round to the last, each on
    /// a mosquitto of its own, and make each round one phase per responder in turn (the
    /// order rotated by one each round): with many short rounds (`--rounds 20
    /// --duration-s 2`) a slow minute of the machine falls on every side alike, and the
    /// pooled percentiles compare the sides over the same stretch of time.
    #[arg(long)]
    interleave: bool,
    /// Also run this other reflexd binary (a copy of an earlier build), configured as phase
    /// (b), as a phase of its own: a change measured against the build before it in the
    /// same run, rather than against a figure from another hour of the machine.
    #[arg(long)]
    other_reflexd: Option<PathBuf>,
    /// Configure the `--other-reflexd` build as the journal phase (c) rather than as (b),
    /// and compare it with (c): a change to the journal's path measured against the build
    /// before it.
    #[arg(long, requires_all = ["other_reflexd", "journal"])]
    other_journal: bool,
    /// Run without the machine-stall probe (a SCHED_FIFO thread waking every 1 ms that
    /// notes when it woke late: the stalls every process on the machine shared).
    #[arg(long)]
    no_stall_probe: bool,
}

/// The machine-stall probe, when on (see [`reflex_benches::stall`]).
static PROBE: std::sync::OnceLock<StallProbe> = std::sync::OnceLock::new();

/// Wake-ups of the probe at least this late are kept as stalls.
const STALL_FROM: Duration = Duration::from_millis(1);

/// What reflexd runs with, besides the edge model.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    /// Monitoring on (1 s windows), no journal.
    Default,
    /// Monitoring on and the journal on.
    Journal,
    /// Monitoring off, no journal.
    MonitorOff,
    /// As [`Variant::Default`], with a decision policy and a command template.
    Policy,
    /// `--other-reflexd`, configured as [`Variant::Default`].
    OtherBuild,
    /// `--vendor-json`: as [`Variant::Default`], the route reading vendor JSON through a
    /// JSON input adapter.
    VendorJson,
    /// `--assembled`: as [`Variant::Default`], the route assembling windows from a scalar
    /// stream through a JSON input adapter.
    Assembled,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Default => "reflexd",
            Variant::Journal => "reflexd+journal",
            Variant::MonitorOff => "reflexd, monitor off",
            Variant::Policy => "reflexd+policy",
            Variant::OtherBuild => "other reflexd build",
            Variant::VendorJson => "reflexd, vendor JSON route",
            Variant::Assembled => "reflexd, assembled route",
        }
    }

    /// What the fleet publishes to this variant.
    fn format(self, args: &Args) -> anyhow::Result<Format> {
        Ok(match self {
            Variant::VendorJson => Format::VendorJson,
            Variant::Assembled => Format::ScalarJson(ScalarStream {
                plan: StreamPlan::edge(args.assembled_hop).context("--assembled-hop")?,
            }),
            _ => Format::Postcard,
        })
    }
}

/// What one phase measured.
struct Phase {
    sent: u64,
    answered: u64,
    missing: u64,
    late: u64,
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    events_per_s: f64,
    cpu_percent: f64,
    peak_rss_kib: u64,
    misses: u64,
    fallbacks: u64,
    /// reflexd's own stage means over the phase (from its metrics), to say where the time
    /// between the fleet's send and its receipt goes; empty for echo.
    stages: String,
    /// Context switches of the responder's threads per event sent.
    switches_per_event: f64,
    /// Every answer's end-to-end latency, µs (to pool rounds).
    latency: Histogram<u64>,
    /// The fleet's largest burst (events in one 1 ms tick; 5 at 5k/s unless it stalled).
    largest_burst: u64,
    /// The machine stalls the probe saw while the fleet ran (empty without the probe).
    stalls: Vec<Stall>,
}

impl Phase {
    /// The machine stalls of the phase at least `us` long.
    fn stalls_at_least(&self, us: u64) -> usize {
        self.stalls.iter().filter(|s| s.late_us >= us).count()
    }

    /// The probe's account of the phase: stalls ≥ 1 ms, ≥ 4 ms, the longest.
    fn stall_summary(&self) -> String {
        if PROBE.get().is_none() {
            return "no stall probe".into();
        }
        format!(
            "machine stalls >=1 ms {}, >=4 ms {}, longest {} µs",
            self.stalls.len(),
            self.stalls_at_least(4_000),
            self.stalls.iter().map(|s| s.late_us).max().unwrap_or(0)
        )
    }
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after ')'.
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// Peak resident set size (VmHWM) of a process, KiB.
/// Context switches (voluntary + involuntary) of all of a process's threads so far.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc status")
}

fn clock_ticks_per_s() -> f64 {
    // Linux reports CPU times in USER_HZ, 100 on every architecture we build for.
    100.0
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("binary has no directory")?.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p reflexd -p reflex-sim -p reflex-benches` (or run benches/realtime)",
            path.display()
        );
    }
    Ok(path)
}

/// Devices the fleets of this run have used so far: each fleet (warm-ups included) takes
/// devices no responder has seen, so that a responder that answers several phases (with
/// `--interleave`) never takes a later fleet's events for duplicates of an earlier one's,
/// and a scalar stream's windows are counted from its devices' first readings.
static DEVICES_USED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn fleet(args: &Args, rate: f64, secs: f64, seed: u64, format: Format) -> FleetConfig {
    FleetConfig {
        devices: args.devices,
        first_device: DEVICES_USED.fetch_add(args.devices, std::sync::atomic::Ordering::Relaxed),
        rate_per_device: rate / f64::from(args.devices),
        duration: Some(Duration::from_secs_f64(secs)),
        max_events: None,
        scenario: reflex_sim::scenario::Scenario::Steady,
        drift_devices: 0,
        faults: Default::default(),
        clock_skew_us: 0,
        deadline_hint_us: None,
        format,
        window: reflex_sim::fleet::DEFAULT_WINDOW,
        seed,
        measure_deadline_us: Some((args.deadline_ms * 1000.0) as u64),
        drain: Duration::from_secs(2),
        progress: false,
    }
}

/// Runs short fleets until the responder answers a whole one: it is subscribed and warm.
async fn warm_up(broker: &BrokerOptions, args: &Args, format: Format) -> anyhow::Result<()> {
    // A scalar stream answers nothing before a device's first window: about two windows'
    // readings per device in the half second.
    let rate = match format {
        Format::ScalarJson(s) => 4.0 * s.plan.window() as f64 * f64::from(args.devices),
        _ => 200.0,
    };
    for _ in 0..40 {
        // A fleet of its own each time (fresh devices for a scalar stream).
        let mut cfg = fleet(args, rate, 0.5, 99, format);
        cfg.drain = Duration::from_millis(500);
        let out = run_fleet(broker.clone(), cfg, CancellationToken::new()).await?;
        if let Some(r) = out.report {
            if r.sent > 0 && r.missing == 0 {
                return Ok(());
            }
        }
    }
    bail!("the responder never answered a whole warm-up fleet")
}

async fn measure(
    broker: &BrokerOptions,
    args: &Args,
    rate: f64,
    pid: u32,
    format: Format,
) -> anyhow::Result<Phase> {
    let cpu0 = cpu_ticks(pid)?;
    let switches0 = context_switches(pid);
    let t0 = Instant::now();
    let from_unix_us = stall::unix_now_us();
    let out = run_fleet(
        broker.clone(),
        fleet(args, rate, args.duration_s, 7, format),
        CancellationToken::new(),
    )
    .await?;
    let wall = t0.elapsed().as_secs_f64();
    let stalls = PROBE
        .get()
        .map(|p| p.between(from_unix_us, stall::unix_now_us()))
        .unwrap_or_default();
    let cpu = (cpu_ticks(pid)? - cpu0) as f64 / clock_ticks_per_s();
    let switches = context_switches(pid).saturating_sub(switches0);
    let r = out.report.context("load mode gives a report")?;
    let latency = out.latency_us.context("load mode gives latencies")?;
    let largest_burst = out.largest_burst;
    Ok(Phase {
        sent: r.sent,
        answered: r.answered,
        missing: r.missing,
        late: r.late,
        p50: r.p50_us,
        p99: r.p99_us,
        p999: r.p999_us,
        max: r.max_us,
        events_per_s: r.events_per_s,
        cpu_percent: 100.0 * cpu / wall,
        peak_rss_kib: peak_rss_kib(pid)?,
        misses: 0,
        fallbacks: r.by_source[1],
        stages: String::new(),
        switches_per_event: switches as f64 / r.sent.max(1) as f64,
        latency,
        largest_burst,
        stalls,
    })
}

fn scrape(port: u16) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// reflexd's mean time per stage between two scrapes, in µs (`decode 3 queue 40 ...`),
/// and its mean batch (events per model run).
fn stage_means(before: &str, after: &str) -> String {
    let stages = ["decode", "queue", "infer", "publish", "end_to_end", "ack"]
        .iter()
        .map(|stage| {
            let delta = |suffix: &str| {
                let name = format!("reflexd_stage_latency_seconds_{suffix}{{stage=\"{stage}\"}}");
                metric(after, &name) - metric(before, &name)
            };
            let (sum, count) = (delta("sum"), delta("count"));
            let mean_us = if count > 0.0 { 1e6 * sum / count } else { 0.0 };
            format!("{stage} {mean_us:.0}")
        })
        .collect::<Vec<_>>()
        .join(" ");
    let delta = |name: &str| metric(after, name) - metric(before, name);
    let runs = delta("reflexd_model_runs_total");
    let windows = delta("reflexd_model_run_windows_total");
    let batch = if runs > 0.0 { windows / runs } else { 0.0 };
    // The PUBACKs held for the journal: the share held longer than 5 ms (the broker's
    // in-flight window of 20 lasts 4 ms at 5k/s).
    let ack = |suffix: &str| delta(&format!("reflexd_stage_latency_seconds_{suffix}"));
    let acks = ack("count{stage=\"ack\"}");
    let held = if acks > 0.0 {
        let within = ack("bucket{stage=\"ack\",le=\"0.005\"}");
        format!(
            "; PUBACKs held > 5 ms: {:.1} %",
            100.0 * (acks - within) / acks
        )
    } else {
        String::new()
    };
    format!("{stages}; mean batch {batch:.2} events per model run{held}")
}

/// reflexd phases started so far (for client ids).
static PHASES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Ends the persistent session `client_id` left on the broker (connect with a clean
/// session, then disconnect), so that the broker stops queueing the fleet's events for a
/// reflexd that is gone: with several rounds, every earlier phase's session would
/// otherwise cost mosquitto a copy of each event.
async fn forget_session(opts: &BrokerOptions, client_id: &str) -> anyhow::Result<()> {
    let mut o = rumqttc::MqttOptions::new(client_id, opts.host.clone(), opts.port);
    o.set_clean_session(true);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 10);
    let connected = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(anyhow::anyhow!("connecting as {client_id}: {e}")),
            }
        }
    })
    .await
    .context("waiting for the broker's ConnAck")?;
    connected?;
    client.disconnect().await?;
    // Drive the event loop until the Disconnect is written (it then reports an error).
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    Ok(())
}

fn write_reflexd_config(
    dir: &Path,
    client_id: &str,
    args: &Args,
    broker_port: u16,
    metrics: u16,
    variant: Variant,
) -> anyhow::Result<PathBuf> {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let text = format!(
        r#"[node]
name = "bench"
[mqtt]
port = {broker_port}
client_id = "{client_id}"
[metrics]
listen = "127.0.0.1:{metrics}"
[scheduler]
workers = {workers}
max_batch = {max_batch}
realtime_priority = {realtime_priority}
[[routes]]
name = "vibration"
topic_filter = "sensors/+/vibration"
model = "edge"
deadline_ms = {deadline}
command_topic = "actuators/{{device}}/cmd"
on_budget_unmeetable = "warn"
{policy}[models.edge]
manifest = "{models}/edge.manifest.json"
fallback_manifest = "{models}/fallback.manifest.json"
"#,
        workers = args.workers,
        max_batch = args.max_batch,
        realtime_priority = args.realtime_priority,
        deadline = args.deadline_ms,
        models = models.display(),
        policy = if variant == Variant::Policy {
            POLICY
        } else {
            ""
        },
    );
    // Per phase: a journal seeds reflexd's dedupe, and a later round's fleet sends the
    // same sequence numbers again.
    let journal = || {
        format!(
            "{text}[monitor]\nwindow_s = {}\n[journal]\ndir = \"{}\"\n",
            args.monitor_window_s,
            dir.join(format!("journal-{client_id}")).display()
        )
    };
    let text = match variant {
        Variant::Journal => journal(),
        Variant::OtherBuild if args.other_journal => journal(),
        Variant::Default | Variant::OtherBuild | Variant::Policy => {
            format!("{text}[monitor]\nwindow_s = {}\n", args.monitor_window_s)
        }
        Variant::MonitorOff => format!("{text}[monitor]\nenabled = false\n"),
        Variant::VendorJson | Variant::Assembled => {
            format!("{text}[monitor]\nwindow_s = {}\n", args.monitor_window_s).replace(
                "on_budget_unmeetable = \"warn\"\n",
                &format!(
                    "on_budget_unmeetable = \"warn\"\n{}",
                    json_input(args, variant)
                ),
            )
        }
    };
    let path = dir.join(format!("{client_id}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The `[routes.input]` of the JSON phases: the simulator's vendor JSON window, or (the
/// assembled phase) its scalar stream assembled every `--assembled-hop` readings; both read
/// back to the exact ADC counts (`resolution` = one count in g).
fn json_input(args: &Args, variant: Variant) -> String {
    let mut input = format!(
        "[routes.input]\nkind = \"json\"\nseq = \"/n\"\ntimestamp = \"/ts\"\nchannels = [\"/ax\", \"/ay\", \"/az\"]\ntemperature = \"/temp\"\nresolution = {}\n",
        1.0 / f64::from(reflex_sim::signal::COUNTS_PER_G)
    );
    if variant == Variant::Assembled {
        input.push_str(&format!(
            "[routes.input.assemble]\nhop = {}\n",
            args.assembled_hop
        ));
    }
    input
}

/// The route's policy and template in the `--policy` phase: the template renders the
/// wire's JSON command (plus the policy's reason and the confidence), so that the fleet
/// matches every command to its event as in the other phases; the rules never match the
/// simulator's windows but compute their statistics on every event.
const POLICY: &str = r#"command_template = '{"version":1,"device":"{device}","seq":{seq},"action":"{action}","class":{class},"source":"{source}","model":{"name":"{model}","version":"1.0.0"},"decided_at_us":{decided_at_us},"latency_us":{latency_us},"why":"{reason}","p":{confidence}}'
[routes.policy]
min_confidence = 0.5
cooldown_ms = 1000
debounce = { n = 2, m = 3 }
[[routes.policy.rules]]
name = "shock"
metric = "peak"
channel = 0
above = 50.0
action = "stop"
[[routes.policy.rules]]
name = "rumble"
metric = "rms"
channel = 2
above = 50.0
action = "inspect"
"#;

/// A summary row of `other / base` at each percentile.
fn ratio_row(rate: f64, name: &str, base: &Phase, other: &Phase) {
    println!(
        "| {rate:.0} | {name} | {} | {} | {} | {} | | | | | | |",
        ratio(base.p50, other.p50),
        ratio(base.p99, other.p99),
        ratio(base.p999, other.p999),
        ratio(base.max, other.max)
    );
}

fn ratio(a: u64, b: u64) -> String {
    if a == 0 {
        "-".into()
    } else {
        format!("{:.2}x", b as f64 / a as f64)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let reflexd = sibling("reflexd")?;
    let sim = sibling("reflex-sim")?;
    if !args.no_stall_probe {
        // Above reflexd's engine threads (FIFO 10 by default), so that only the machine
        // itself can keep it waiting.
        let probe = StallProbe::start(Duration::from_millis(1), STALL_FROM, 20);
        println!(
            "stall probe: wakes every 1 ms {}; a wake-up >= {} µs late counts as a machine stall",
            if probe.realtime {
                "at SCHED_FIFO 20"
            } else {
                "at normal priority (SCHED_FIFO refused: it also counts CPU contention)"
            },
            STALL_FROM.as_micros()
        );
        let _ = PROBE.set(probe);
    }
    let broker = spawn_broker();
    let opts = broker_options(broker.port);
    let dir = std::env::temp_dir().join(format!("reflex-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "mosquitto on 127.0.0.1:{}, {} devices, QoS 1, {} s per phase, budget {} ms, {} worker(s), batches of up to {}, monitoring windows {} s{}",
        broker.port, args.devices, args.duration_s, args.deadline_ms, args.workers, args.max_batch, args.monitor_window_s,
        if args.interleave { "; interleaved: every responder runs throughout, each on a mosquitto of its own, and each round gives each one phase in turn" } else { "" }
    );
    // Who answers, in the order of a round: the floor, reflexd (b), the variants asked for,
    // and with `--control` the floor again.
    let mut who = vec![Who::Echo, Who::Reflexd(Variant::Default)];
    for (on, variant) in [
        (args.journal, Variant::Journal),
        (args.monitor_off, Variant::MonitorOff),
        (args.vendor_json, Variant::VendorJson),
        (args.assembled, Variant::Assembled),
        (args.policy, Variant::Policy),
        (args.other_reflexd.is_some(), Variant::OtherBuild),
    ] {
        if on {
            who.push(Who::Reflexd(variant));
        }
    }
    if args.control {
        who.push(Who::EchoAgain);
    }
    let start = |w: Who, opts: &BrokerOptions, broker: Option<reflex_tests::Broker>| {
        let binary = match (w, &args.other_reflexd) {
            (Who::Reflexd(Variant::OtherBuild), Some(other)) => other.as_path(),
            (Who::Reflexd(_), _) => reflexd.as_path(),
            _ => sim.as_path(),
        };
        Responder::start(w, binary, &dir, &args, opts.clone(), broker)
    };
    let mut rows = Vec::new();
    for &rate in &args.rates {
        // Interleaved: every responder of the rate starts now and runs to the end.
        let mut running = Vec::new();
        if args.interleave {
            for &w in &who {
                let own = spawn_broker();
                let opts = broker_options(own.port);
                running.push(start(w, &opts, Some(own))?);
            }
        }
        let from_unix_us = stall::unix_now_us();
        for round in 1..=args.rounds.max(1) {
            if args.rounds > 1 {
                println!("{rate:>6.0}/s  round {round} of {}", args.rounds);
            }
            let mut phases: Vec<(Who, Phase)> = Vec::new();
            if args.interleave {
                // Each round starts one responder further on, so that none always follows
                // the same neighbour.
                let n = running.len();
                for k in 0..n {
                    let i = (k + round - 1) % n;
                    let p = running[i].phase(&args, rate).await?;
                    phases.push((running[i].who, p));
                }
            } else {
                for &w in &who {
                    let mut r = start(w, &opts, None)?;
                    let p = r.phase(&args, rate).await?;
                    r.stop(rate, &p.stalls).await?;
                    phases.push((w, p));
                }
            }
            let mut take = |w: Who| -> Option<Phase> {
                let i = phases.iter().position(|(x, _)| *x == w)?;
                Some(phases.remove(i).1)
            };
            let floor = take(Who::Echo).context("the floor ran")?;
            let r = take(Who::Reflexd(Variant::Default)).context("reflexd ran")?;
            print_phase(rate, &floor, Variant::Default, &r);
            let control = take(Who::EchoAgain);
            let variants: Vec<(Variant, Phase)> = phases
                .into_iter()
                .filter_map(|(w, p)| match w {
                    Who::Reflexd(v) => Some((v, p)),
                    _ => None,
                })
                .collect();
            for (v, p) in &variants {
                print_phase(rate, &floor, *v, p);
            }
            if let Some(again) = &control {
                println!(
                    "{rate:>6.0}/s  echo again: p50 {} p99 {} p99.9 {} µs, cpu {:.0} %",
                    again.p50, again.p99, again.p999, again.cpu_percent
                );
            }
            rows.push(Row {
                rate,
                floor,
                reflexd: r,
                variants,
                control,
            });
        }
        let stalls = PROBE
            .get()
            .map(|p| p.between(from_unix_us, stall::unix_now_us()))
            .unwrap_or_default();
        for r in running {
            r.stop(rate, &stalls).await?;
        }
    }
    print_summary(&args, &rows);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn broker_options(port: u16) -> BrokerOptions {
    BrokerOptions {
        host: "127.0.0.1".into(),
        port,
        qos: rumqttc::QoS::AtLeastOnce,
        credentials: None,
    }
}

/// Who answers the fleet in a phase.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    /// The floor: `reflex-sim echo`.
    Echo,
    /// The floor again (`--control`), a process of its own.
    EchoAgain,
    /// reflexd, configured as the variant says.
    Reflexd(Variant),
}

/// A responder process and the broker its fleets publish to, for one phase or (with
/// `--interleave`) for every round of a rate.
struct Responder {
    who: Who,
    opts: BrokerOptions,
    process: ChildGuard,
    /// reflexd's metrics port and MQTT client id.
    reflexd: Option<(u16, String)>,
    /// Whether it has answered a whole warm-up fleet.
    warm: bool,
    /// Its own broker, with `--interleave` (stopped after the responder).
    _broker: Option<reflex_tests::Broker>,
}

impl Responder {
    fn start(
        who: Who,
        binary: &Path,
        dir: &Path,
        args: &Args,
        opts: BrokerOptions,
        broker: Option<reflex_tests::Broker>,
    ) -> anyhow::Result<Responder> {
        let (process, reflexd) = match who {
            Who::Echo | Who::EchoAgain => {
                let child = Command::new(binary)
                    .args(["echo", "--broker", &format!("127.0.0.1:{}", opts.port)])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("spawning reflex-sim echo")?;
                (ChildGuard::new("reflex-sim echo", child), None)
            }
            Who::Reflexd(variant) => {
                let metrics_port = reflex_tests::free_port();
                // A client id of its own per process, and its session ended afterwards:
                // reflexd keeps a persistent session (clean session off), so a later
                // process under the same id would first receive every event the fleet sent
                // while it was away (up to mosquitto's max_queued_messages).
                let client_id = format!(
                    "reflexd-bench-{}-{}",
                    std::process::id(),
                    PHASES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                );
                let config =
                    write_reflexd_config(dir, &client_id, args, opts.port, metrics_port, variant)?;
                let daemon =
                    reflex_tests::spawn_reflexd(binary, &config, metrics_port, Some("warn"));
                (daemon, Some((metrics_port, client_id)))
            }
        };
        Ok(Responder {
            who,
            opts,
            process,
            reflexd,
            warm: false,
            _broker: broker,
        })
    }

    fn label(&self) -> &'static str {
        match self.who {
            Who::Echo => "echo",
            Who::EchoAgain => "echo again",
            Who::Reflexd(v) => v.label(),
        }
    }

    /// One measured phase (warmed up first, the first time).
    async fn phase(&mut self, args: &Args, rate: f64) -> anyhow::Result<Phase> {
        let format = match self.who {
            Who::Reflexd(v) => v.format(args)?,
            _ => Format::Postcard,
        };
        if !self.warm {
            warm_up(&self.opts, args, format).await?;
            self.warm = true;
        }
        let pid = self.process.child.id();
        let Some((metrics_port, _)) = &self.reflexd else {
            return measure(&self.opts, args, rate, pid, format).await;
        };
        let before = scrape(*metrics_port)?;
        let mut r = measure(&self.opts, args, rate, pid, format).await?;
        let after = scrape(*metrics_port)?;
        r.misses = (metric(&after, "reflexd_deadline_misses_total{")
            - metric(&before, "reflexd_deadline_misses_total{")) as u64;
        r.stages = stage_means(&before, &after);
        if r.misses > 0 {
            // Which cause: every labelled series of the family that moved.
            let causes: Vec<String> = after
                .lines()
                .filter(|l| l.starts_with("reflexd_deadline_misses_total{"))
                .filter_map(|l| {
                    let series = l.rsplit_once(' ')?.0;
                    let n = metric(&after, series) - metric(&before, series);
                    let labels = series.strip_prefix("reflexd_deadline_misses_total")?;
                    (n > 0.0).then(|| format!("{labels} {n}"))
                })
                .collect();
            r.stages = format!(
                "{}; deadline misses by cause: {}",
                r.stages,
                causes.join(", ")
            );
        }
        Ok(r)
    }

    /// Stops the process; for reflexd, checks that it exits cleanly, prints its own account
    /// of the deadline misses it logged, each held against `stalls` (the machine stalls
    /// of the time it ran), and ends its broker session.
    async fn stop(mut self, rate: f64, stalls: &[Stall]) -> anyhow::Result<()> {
        self.process.terminate();
        let status = self.process.wait_exit(Duration::from_secs(15));
        let Some((_, client_id)) = &self.reflexd else {
            return Ok(());
        };
        if !status.success() {
            bail!(
                "reflexd exited with {status}: {}",
                self.process.stderr_tail()
            );
        }
        // reflexd's own account of its misses (one line per 10 s): how long the event
        // waited, the queue behind it, when the model last ran; held against the probe:
        // did the machine stall while that event waited?
        let label = self.label();
        for line in self
            .process
            .stderr_tail()
            .lines()
            .filter(|l| l.contains("deadline miss"))
        {
            println!("{rate:>6.0}/s  {label}: {line}");
            if PROBE.get().is_some() {
                let verdict = match stall::miss_wait(line) {
                    None => "its wait could not be read from the line".to_string(),
                    Some((from, to)) => match stall::longest_overlapping(stalls, from, to) {
                        Some(s) => format!(
                            "the machine stalled {} µs during its {} µs wait (probe)",
                            s.late_us,
                            to - from
                        ),
                        None => format!(
                            "no machine stall >= 1 ms during its {} µs wait (probe): reflexd's own",
                            to - from
                        ),
                    },
                };
                println!("{rate:>6.0}/s  {label}:   -> {verdict}");
            }
        }
        forget_session(&self.opts, client_id).await?;
        Ok(())
    }
}

/// One round at one rate.
struct Row {
    rate: f64,
    /// (a) echo.
    floor: Phase,
    /// (b) reflexd.
    reflexd: Phase,
    /// (c), (d) when asked for.
    variants: Vec<(Variant, Phase)>,
    /// Echo again, with `--control`.
    control: Option<Phase>,
}

/// The percentiles the summaries compare.
const PERCENTILES: [(&str, f64); 3] = [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)];

/// All the latencies of `phases`, in one histogram.
fn pooled<'a>(phases: impl Iterator<Item = &'a Phase>) -> Histogram<u64> {
    let mut all: Option<Histogram<u64>> = None;
    for p in phases {
        match &mut all {
            None => all = Some(p.latency.clone()),
            // Same bounds and precision (one tracker type), so adding cannot fail.
            Some(h) => h
                .add(&p.latency)
                .expect("histograms of one tracker type add"),
        }
    }
    all.unwrap_or_else(|| Histogram::new(3).expect("3 significant digits is valid"))
}

fn print_summary(args: &Args, rows: &[Row]) {
    println!("\n## summary (µs end to end, as the fleet sees it; ratio = reflexd / echo)\n");
    println!("| events/s | who | p50 | p99 | p99.9 | max | unanswered | late >{}ms | deadline misses | fallbacks | CPU % | peak RSS MiB | machine stalls >=1 / >=4 ms |", args.deadline_ms);
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for Row {
        rate,
        floor: f,
        reflexd: r,
        variants,
        ..
    } in rows
    {
        let mut phases = vec![
            ("echo", f, "-".to_string()),
            ("reflexd", r, r.misses.to_string()),
        ];
        for (v, p) in variants {
            phases.push((v.label(), p, p.misses.to_string()));
        }
        for (who, p, misses) in phases {
            println!(
                "| {rate:.0} ({:.0}) | {who} | {} | {} | {} | {} | {} | {} | {misses} | {} | {:.0} | {:.1} | {} |",
                p.events_per_s, p.p50, p.p99, p.p999, p.max, p.missing, p.late, p.fallbacks,
                p.cpu_percent, p.peak_rss_kib as f64 / 1024.0,
                if PROBE.get().is_some() {
                    format!("{} / {}", p.stalls.len(), p.stalls_at_least(4_000))
                } else {
                    "-".into()
                }
            );
        }
        ratio_row(*rate, "ratio reflexd/echo", f, r);
        for (v, p) in variants {
            match v {
                Variant::Journal => ratio_row(*rate, "ratio journal on/off", r, p),
                Variant::Policy => ratio_row(*rate, "ratio policy on/off", r, p),
                Variant::OtherBuild => {
                    let same = same_as_other(args, variants).unwrap_or(r);
                    ratio_row(*rate, "ratio reflexd/other build", p, same)
                }
                Variant::VendorJson => ratio_row(*rate, "ratio vendor JSON/postcard route", r, p),
                Variant::Assembled => ratio_row(*rate, "ratio assembled/postcard route", r, p),
                // Monitoring is on in phase (b): on/off = (b) / (d).
                Variant::MonitorOff | Variant::Default => {
                    ratio_row(*rate, "ratio monitor on/off", p, r)
                }
            }
        }
    }
    if args.rounds > 1 {
        println!(
            "\n## over {} rounds (each round: echo, then reflexd, then the variants{}{}); pooled = each side's percentile over all its rounds' events\n",
            args.rounds,
            if args.control { ", then echo again" } else { "" },
            if args.interleave {
                "; interleaved: every responder running throughout, the order rotated each round"
            } else {
                ""
            }
        );
        println!("| events/s | compared | percentile | ratio per round | median | worst | pooled over the rounds |");
        println!("|---:|---|---|---|---:|---:|---|");
        for &rate in &args.rates {
            let at: Vec<&Row> = rows.iter().filter(|row| row.rate == rate).collect();
            let pairs: Vec<(&str, Vec<(&Phase, &Phase)>)> = std::iter::once((
                "reflexd/echo",
                at.iter().map(|row| (&row.floor, &row.reflexd)).collect(),
            ))
            .chain(args.other_reflexd.is_some().then(|| {
                (
                    "reflexd/other build",
                    // The other build is the base: reflexd / other, with the journal on both
                    // sides under `--other-journal`.
                    at.iter()
                        .filter_map(|row| {
                            let (_, other) = row
                                .variants
                                .iter()
                                .find(|(v, _)| *v == Variant::OtherBuild)?;
                            let same = same_as_other(args, &row.variants).unwrap_or(&row.reflexd);
                            Some((other, same))
                        })
                        .collect(),
                )
            }))
            .chain(args.vendor_json.then(|| {
                (
                    "vendor JSON/postcard route",
                    with_variant(&at, Variant::VendorJson),
                )
            }))
            .chain(args.assembled.then(|| {
                (
                    "assembled/postcard route",
                    with_variant(&at, Variant::Assembled),
                )
            }))
            .chain(
                args.policy
                    .then(|| ("policy on/off", with_variant(&at, Variant::Policy))),
            )
            .chain(args.control.then(|| {
                (
                    "echo again/echo (control)",
                    at.iter()
                        .filter_map(|row| Some((&row.floor, row.control.as_ref()?)))
                        .collect(),
                )
            }))
            .collect();
            for (what, pairs) in &pairs {
                for (name, quantile) in PERCENTILES {
                    let ratios: Vec<f64> = pairs
                        .iter()
                        .map(|(base, other)| {
                            latency_at(&other.latency, quantile) as f64
                                / latency_at(&base.latency, quantile).max(1) as f64
                        })
                        .collect();
                    let (median, worst) = median_and_max(&ratios);
                    let each: Vec<String> = ratios.iter().map(|x| format!("{x:.2}")).collect();
                    let base = pooled(pairs.iter().map(|(b, _)| *b));
                    let other = pooled(pairs.iter().map(|(_, o)| *o));
                    let (b, o) = (latency_at(&base, quantile), latency_at(&other, quantile));
                    println!(
                        "| {rate:.0} | {what} | {name} | {} | {median:.2}x | {worst:.2}x | {o} / {b} µs = {:.2}x |",
                        each.join(" "),
                        o as f64 / b.max(1) as f64
                    );
                }
            }
        }
    }
    print_resources(args, rows);
}

/// CPU and memory per responder over all rounds of a rate: the mean of its phases' CPU,
/// that mean over echo's (the floor in the same run), the largest peak RSS, the misses.
fn print_resources(args: &Args, rows: &[Row]) {
    println!("\n## CPU and memory over the rounds (CPU: mean of the phases; ratio to echo's mean in the same run)\n");
    println!("| events/s | who | rounds | CPU % | CPU / echo | peak RSS MiB | deadline misses |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for &rate in &args.rates {
        let at: Vec<&Row> = rows.iter().filter(|row| row.rate == rate).collect();
        let mut who: Vec<(&str, Vec<&Phase>)> = vec![
            ("echo", at.iter().map(|row| &row.floor).collect()),
            ("reflexd", at.iter().map(|row| &row.reflexd).collect()),
        ];
        let variants = at.first().map_or(&[][..], |row| &row.variants[..]);
        for (v, _) in variants {
            who.push((
                v.label(),
                at.iter()
                    .filter_map(|row| row.variants.iter().find(|(w, _)| w == v))
                    .map(|(_, p)| p)
                    .collect(),
            ));
        }
        let mean_cpu = |phases: &[&Phase]| {
            phases.iter().map(|p| p.cpu_percent).sum::<f64>() / phases.len().max(1) as f64
        };
        let echo = mean_cpu(&who[0].1);
        for (name, phases) in &who {
            let cpu = mean_cpu(phases);
            let rss = phases.iter().map(|p| p.peak_rss_kib).max().unwrap_or(0);
            let misses: u64 = phases.iter().map(|p| p.misses).sum();
            println!(
                "| {rate:.0} | {name} | {} | {cpu:.1} | {:.2}x | {:.1} | {} |",
                phases.len(),
                cpu / echo.max(f64::MIN_POSITIVE),
                rss as f64 / 1024.0,
                if *name == "echo" {
                    "-".to_string()
                } else {
                    misses.to_string()
                }
            );
        }
    }
}

/// The phase the other build is compared with, when it is not (b): the journal phase
/// under `--other-journal`.
fn same_as_other<'a>(args: &Args, variants: &'a [(Variant, Phase)]) -> Option<&'a Phase> {
    args.other_journal
        .then(|| variants.iter().find(|(v, _)| *v == Variant::Journal))
        .flatten()
        .map(|(_, p)| p)
}

/// (phase (b), `variant`'s phase) of every round of `rows` that ran `variant`.
fn with_variant<'a>(rows: &[&'a Row], variant: Variant) -> Vec<(&'a Phase, &'a Phase)> {
    rows.iter()
        .filter_map(|row| {
            let (_, phase) = row.variants.iter().find(|(v, _)| *v == variant)?;
            Some((&row.reflexd, phase))
        })
        .collect()
}

/// The median (mean of the middle two for an even count) and the largest of `values`.
fn median_and_max(values: &[f64]) -> (f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[n - 1])
}

fn print_phase(rate: f64, f: &Phase, variant: Variant, r: &Phase) {
    if variant == Variant::Default {
        println!(
            "{rate:>6.0}/s  echo:    sent {} answered {} p50 {} p99 {} p99.9 {} µs, later than the deadline {}, cpu {:.0} %, rss {:.1} MiB, {:.2} context switches/event, fleet's largest burst {}; {}",
            f.sent, f.answered, f.p50, f.p99, f.p999, f.late, f.cpu_percent, f.peak_rss_kib as f64 / 1024.0, f.switches_per_event, f.largest_burst, f.stall_summary()
        );
    }
    println!(
        "{rate:>6.0}/s  {}: sent {} answered {} p50 {} p99 {} p99.9 {} µs, misses {}, fallbacks {}, cpu {:.0} %, rss {:.1} MiB, fleet's largest burst {}; {}",
        variant.label(), r.sent, r.answered, r.p50, r.p99, r.p999, r.misses, r.fallbacks, r.cpu_percent, r.peak_rss_kib as f64 / 1024.0, r.largest_burst, r.stall_summary()
    );
    println!(
        "{rate:>6.0}/s  {}: {:.2} context switches/event; inside reflexd, mean µs per stage: {}",
        variant.label(),
        r.switches_per_event,
        r.stages
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase_with(latencies_us: &[u64]) -> Phase {
        let mut latency = Histogram::new_with_bounds(1, 100_000_000, 3).unwrap();
        for &l in latencies_us {
            latency.record(l).unwrap();
        }
        Phase {
            sent: 0,
            answered: 0,
            missing: 0,
            late: 0,
            p50: 0,
            p99: 0,
            p999: 0,
            max: 0,
            events_per_s: 0.0,
            cpu_percent: 0.0,
            peak_rss_kib: 0,
            misses: 0,
            fallbacks: 0,
            stages: String::new(),
            switches_per_event: 0.0,
            latency,
            largest_burst: 0,
            stalls: Vec::new(),
        }
    }

    #[test]
    fn pooled_percentiles_are_over_every_event_of_every_round() {
        // Round one: 100 events at 100 µs; round two: 100 at 300 µs. Each round's median
        // is its own value; the pooled p50 is the 100th of 200 (100 µs), the pooled p99
        // the 198th (300 µs).
        let a = phase_with(&[100; 100]);
        let b = phase_with(&[300; 100]);
        let all = pooled([&a, &b].into_iter());
        assert_eq!(all.len(), 200);
        assert_eq!(latency_at(&all, 0.5), 100);
        assert_eq!(latency_at(&all, 0.99), 300);
        assert_eq!(latency_at(&pooled(std::iter::empty()), 0.99), 0);
    }

    #[test]
    fn median_of_an_odd_count_is_the_middle_value_and_of_an_even_count_the_mean_of_two() {
        assert_eq!(median_and_max(&[1.4, 1.1, 1.2]), (1.2, 1.4));
        assert_eq!(median_and_max(&[1.0, 2.0, 4.0, 3.0]), (2.5, 4.0));
        assert!(median_and_max(&[]).0.is_nan());
    }
}
