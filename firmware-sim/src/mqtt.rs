//! The MQTT side of the simulator: the fleet publisher (with optional command tracking,
//! i.e. load mode) and the echo client that is the MQTT latency floor for benchmarks.
//!
//! The rules learned on this machine hold here too: TCP_NODELAY on; the task that polls
//! the event loop never awaits a publish; subscribe again after every ConnAck; back off
//! on connection errors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing as MqttOut, Packet, QoS,
};
use tokio_util::sync::CancellationToken;

use reflex_wire::{Action, Command, DecisionSource, ModelRef, SensorEvent, COMMAND_FORMAT_VERSION};

use crate::edge_node::{EdgeNode, InOrder};
use crate::faults::{FaultInjector, FaultRates, Outgoing};
use crate::fleet::LoadFleet;
use crate::pacer::Pacer;
use crate::scenario::Scenario;
use crate::stream::{self, StreamPlan, StreamState};
use crate::tracker::{Report, Tracker};

/// Where the broker is and how to talk to it.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// QoS for what this client publishes and subscribes.
    pub qos: QoS,
    /// Optional username and password.
    pub credentials: Option<(String, String)>,
}

/// Payload encoding on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// postcard (the default).
    Postcard,
    /// JSON, for publishers that speak JSON.
    Json,
    /// A third-party sensor's own JSON ([`vendor_json`]), for reflexd routes with a JSON
    /// input adapter (`[routes.input] kind = "json"`).
    VendorJson,
    /// A Sparkplug B edge node ([`crate::edge_node`]) with the fleet as its devices, for
    /// reflexd routes with `[routes.input] kind = "sparkplug_b"`.
    Sparkplug,
    /// One reading per message ([`stream::scalar_json`]), for a reflexd route that
    /// assembles windows (`[routes.input.assemble]`); the fleet's rate is then readings
    /// per second, and in load mode only the readings that complete a window await a
    /// command.
    ScalarJson(ScalarStream),
}

/// A scalar-stream fleet's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalarStream {
    /// The route's window and hop: which readings complete a window.
    pub plan: StreamPlan,
}

/// `event` as a third-party sensor would publish it: `{"id", "n" (seq), "ts" (ms),
/// "ax"/"ay"/"az" (the first three channels in g), "temp" (°C)}`. Read back exactly (to
/// the count) by a JSON adapter with `seq = "/n"`, `timestamp = "/ts"`, `channels =
/// ["/ax", "/ay", "/az"]`, `temperature = "/temp"` and `resolution` = the window's scale.
pub fn vendor_json(event: &SensorEvent) -> Vec<u8> {
    let g = f64::from(event.window.scale);
    let channel = |c: usize| -> Vec<f64> {
        event
            .window
            .channel(c)
            .iter()
            .map(|&v| f64::from(v) * g)
            .collect()
    };
    serde_json::to_vec(&serde_json::json!({
        "id": event.device.as_str(),
        "n": event.seq,
        "ts": event.timestamp_us / 1_000,
        "ax": channel(0),
        "ay": channel(1),
        "az": channel(2),
        "temp": f64::from(event.temperature_centi_c) / 100.0,
    }))
    .unwrap_or_default()
}

/// What the fleet does.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Number of devices (conditions and schedule: [`crate::fleet::LoadFleet`]).
    pub devices: u32,
    /// The first device's number (`dev-{first_device}`, …). A fleet that comes back under
    /// the same ids (its sequence numbers from 1 again) to a reflexd that saw it before has
    /// its events dropped as duplicates up to the last number seen (and, on a scalar
    /// stream, its windows cut at other readings than this fleet expects, as reflexd counts
    /// a device's windows from the first reading it buffered); fresh ids start clean.
    pub first_device: u32,
    /// Events per second per device (nominal; the fleet's mean: with a device count that
    /// is not a multiple of 4, devices of a condition with fewer devices send more often so
    /// that each condition sends a quarter of the events).
    pub rate_per_device: f64,
    /// Run length; `None` runs until cancelled.
    pub duration: Option<Duration>,
    /// Stop after this many distinct events (readings, for a scalar stream) in total
    /// (across devices), if set.
    pub max_events: Option<u64>,
    /// Rate and drift pattern.
    pub scenario: Scenario,
    /// The first `drift_devices` devices follow the scenario's distortion.
    pub drift_devices: u32,
    /// Fault probabilities.
    pub faults: FaultRates,
    /// Each device's clock is skewed by a fixed amount in ±`clock_skew_us`.
    pub clock_skew_us: i64,
    /// Deadline hint sent with every event.
    pub deadline_hint_us: Option<u32>,
    /// Payload encoding.
    pub format: Format,
    /// Every device's window: (channels, samples per channel), within the wire's
    /// 8 × 1024. [`crate::fleet::DEFAULT_WINDOW`] (3 × 64) is sent as format version 1, a
    /// window beyond 4 × 64 as version 2 (see [`crate::device`]).
    pub window: (usize, usize),
    /// Seed of everything random.
    pub seed: u64,
    /// Load mode: subscribe to commands and report latency, counting answers slower than
    /// this many µs as late.
    pub measure_deadline_us: Option<u64>,
    /// How long to wait for outstanding acks and commands at the end.
    pub drain: Duration,
    /// Print a line of live figures to stderr every second.
    pub progress: bool,
}

/// What a fleet run did.
#[derive(Debug, Clone)]
pub struct FleetOutcome {
    /// Distinct valid events published (readings, for a scalar stream).
    pub events: u64,
    /// Messages published in all (events, duplicates, malformed, oversized).
    pub messages: u64,
    /// Of which malformed or oversized.
    pub bad_payloads: u64,
    /// Of which duplicates.
    pub duplicates: u64,
    /// Load figures, in load mode.
    pub report: Option<Report>,
    /// Every answer's end-to-end latency, µs, in load mode (to pool runs).
    pub latency_us: Option<hdrhistogram::Histogram<u64>>,
    /// Most events sent in one tick of the 1 ms pacing clock: the rate's share of a tick
    /// normally, more after a stall of this process (the pacer repays what it owes, up to
    /// a second's worth, in one burst).
    pub largest_burst: u64,
}

static CLIENT_SEQ: AtomicU64 = AtomicU64::new(0);

/// A connected client and its event loop, with TCP_NODELAY on and room for our payloads.
pub fn client(broker: &BrokerOptions, role: &str, cap: usize) -> (AsyncClient, EventLoop) {
    client_with_will(broker, role, cap, None)
}

/// [`client`], with an MQTT last will (topic, payload) the broker publishes if the
/// connection is lost.
pub fn client_with_will(
    broker: &BrokerOptions,
    role: &str,
    cap: usize,
    will: Option<(String, Vec<u8>)>,
) -> (AsyncClient, EventLoop) {
    let id = format!(
        "reflex-sim-{role}-{}-{}",
        std::process::id(),
        CLIENT_SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let mut opts = MqttOptions::new(id, broker.host.clone(), broker.port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(64 * 1024, 64 * 1024);
    opts.set_inflight(1000);
    if let Some((user, pass)) = &broker.credentials {
        opts.set_credentials(user.clone(), pass.clone());
    }
    if let Some((topic, payload)) = will {
        opts.set_last_will(rumqttc::LastWill::new(topic, payload, broker.qos, false));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, cap);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(5);
    eventloop.set_network_options(net);
    (client, eventloop)
}

fn now_ns(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Counters the poller shares with the publisher.
#[derive(Default)]
struct Shared {
    ready: AtomicU64,
    acked: AtomicU64,
    disconnected: AtomicU64,
}

impl Shared {
    /// Waits until connected (and subscribed, where there are subscriptions), at most
    /// `limit` or until `cancel`; true when ready.
    async fn wait_ready(&self, limit: Duration, cancel: &CancellationToken) -> bool {
        let until = Instant::now() + limit;
        while self.ready.load(Ordering::Relaxed) == 0
            && Instant::now() < until
            && !cancel.is_cancelled()
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.ready.load(Ordering::Relaxed) != 0
    }
}

/// Polls the event loop until cancelled or until our own Disconnect has gone out.
/// Never awaits a publish; resubscribes after every ConnAck; backs off on errors.
async fn poll_loop(
    mut eventloop: EventLoop,
    client: AsyncClient,
    subscriptions: Vec<(String, QoS)>,
    on_publish: impl Fn(&rumqttc::Publish),
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        // Cancellation safety: poll() keeps its state in the event loop; dropping the
        // future between packets loses nothing we rely on (we are shutting down anyway).
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(50);
                if subscriptions.is_empty() {
                    shared.ready.store(1, Ordering::Relaxed);
                }
                for (topic, qos) in &subscriptions {
                    if let Err(e) = client.try_subscribe(topic.clone(), *qos) {
                        eprintln!("reflex-sim: could not subscribe to {topic}: {e}");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => on_publish(&p),
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                shared.ready.store(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                shared.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(MqttOut::Disconnect)) => {
                shared.disconnected.store(1, Ordering::Relaxed);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("reflex-sim: mqtt connection error: {e}; retrying in {backoff:?}");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Decodes a command in either format (JSON starts with `{`).
pub fn decode_command(bytes: &[u8]) -> Result<Command, reflex_wire::DecodeError> {
    if bytes.first() == Some(&b'{') {
        reflex_wire::json::decode_command(bytes)
    } else {
        Command::decode(bytes)
    }
}

/// Decodes an event in either format (JSON starts with `{`).
pub fn decode_event(bytes: &[u8]) -> Result<SensorEvent, reflex_wire::DecodeError> {
    if bytes.first() == Some(&b'{') {
        reflex_wire::json::decode_event(bytes)
    } else {
        SensorEvent::decode(bytes)
    }
}

/// Runs the fleet until its duration or event budget is spent, or `cancel` fires.
pub async fn run_fleet(
    broker: BrokerOptions,
    cfg: FleetConfig,
    cancel: CancellationToken,
) -> anyhow::Result<FleetOutcome> {
    let scalar = match cfg.format {
        Format::ScalarJson(s) => Some(s),
        _ => None,
    };
    if scalar.is_some() && cfg.faults != FaultRates::default() {
        anyhow::bail!(
            "the scalar stream injects no faults (malformed {}, oversized {}, duplicate {}, \
             reorder {}): its readings' windows are counted from an unbroken stream",
            cfg.faults.malformed,
            cfg.faults.oversized,
            cfg.faults.duplicate,
            cfg.faults.reorder
        );
    }
    let start = Instant::now();
    // A Sparkplug B edge node: its NDEATH is the last will; commands match by order. Its
    // bdSeq (0..=255) tells this session's NDEATH from an earlier one's.
    let edge = (cfg.format == Format::Sparkplug).then(|| {
        let bd_seq = (wall_us() / 1_000) % 256;
        Arc::new(Mutex::new((EdgeNode::new(bd_seq), InOrder::default())))
    });
    let will = edge
        .as_ref()
        .map(|e| e.lock().expect("edge lock").0.ndeath(wall_us() / 1_000));
    let (client, eventloop) = client_with_will(&broker, "fleet", 10_000, will);
    let tracker = cfg
        .measure_deadline_us
        .map(|d| Arc::new(Mutex::new(Tracker::new(d))));
    let shared = Arc::new(Shared::default());
    let subscriptions = if tracker.is_some() {
        vec![(crate::COMMAND_TOPIC_FILTER.to_string(), broker.qos)]
    } else {
        Vec::new()
    };
    let bad_commands = Arc::new(AtomicU64::new(0));
    let poll_cancel = CancellationToken::new();
    let poller = {
        let tracker = tracker.clone();
        let bad = bad_commands.clone();
        let edge = edge.clone();
        tokio::spawn(poll_loop(
            eventloop,
            client.clone(),
            subscriptions,
            move |p| {
                let Some(t) = &tracker else { return };
                // The clock stops when the command arrives, before the fleet decodes it:
                // a JSON command (a route's template) costs more to decode here than
                // postcard, which is the fleet's cost, not the responder's.
                let received = now_ns(start);
                match decode_command(&p.payload) {
                    Ok(mut cmd) => {
                        if let Some(e) = &edge {
                            cmd.seq = e.lock().expect("edge lock").1.on_command(&cmd.device);
                        }
                        t.lock().expect("tracker lock").on_command(&cmd, received);
                    }
                    Err(_) => {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
            },
            shared.clone(),
            poll_cancel.clone(),
        ))
    };

    // Wait (bounded) for the connection, and the command subscription in load mode, so
    // that no answer is missed; a broker that is down is reported and then retried.
    if !shared.wait_ready(Duration::from_secs(5), &cancel).await {
        eprintln!(
            "reflex-sim: broker {}:{} not ready after 5 s; publishing anyway",
            broker.host, broker.port
        );
    }

    let mut fleet = LoadFleet::numbered_from(cfg.first_device, cfg.devices, cfg.seed);
    let mut streams = vec![StreamState::new(); cfg.devices as usize];
    let missing = fleet.missing_conditions();
    if !missing.is_empty() {
        eprintln!(
            "reflex-sim: {} device(s) leave {missing:?} out: the event mix differs from the \
             balanced one the edge model's reference describes (reflexd's monitor will see \
             a population shift); use 4 devices or more",
            cfg.devices
        );
    }
    for (i, d) in fleet.devices_mut().iter_mut().enumerate() {
        if cfg.clock_skew_us != 0 {
            let span = 2 * cfg.clock_skew_us.unsigned_abs() + 1;
            let mut r = crate::rng::Rng::new(cfg.seed ^ 0x5EED, i as u64);
            let skew = ((u64::from(r.next_u32()) * span) >> 32) as i64 - cfg.clock_skew_us.abs();
            d.set_clock_skew_us(skew);
        }
        d.set_deadline_hint_us(cfg.deadline_hint_us);
        d.set_window(cfg.window.0, cfg.window.1)
            .map_err(|e| anyhow::anyhow!("window {} × {}: {e}", cfg.window.0, cfg.window.1))?;
    }
    let mut injectors: Vec<FaultInjector> = (0..cfg.devices)
        .map(|i| FaultInjector::new(cfg.faults, cfg.seed, i))
        .collect();
    let mut outcome = FleetOutcome {
        events: 0,
        messages: 0,
        bad_payloads: 0,
        duplicates: 0,
        report: None,
        latency_us: None,
        largest_burst: 0,
    };
    let mut qos1_published = 0u64;
    if let Some(e) = &edge {
        let births = {
            let mut e = e.lock().expect("edge lock");
            let now_ms = wall_us() / 1_000;
            let mut births = vec![e.0.nbirth(now_ms)];
            births.extend(fleet.devices().iter().map(|d| e.0.dbirth(d.id(), now_ms)));
            births
        };
        qos1_published += publish_control(&client, &broker, births).await?;
    }
    let mut pacer = Pacer::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_progress = Instant::now();
    let nominal = cfg.rate_per_device * f64::from(cfg.devices);

    'run: loop {
        tokio::select! {
            _ = cancel.cancelled() => break 'run,
            _ = tick.tick() => {}
        }
        let t = start.elapsed().as_secs_f64();
        if cfg.duration.is_some_and(|d| t >= d.as_secs_f64()) {
            break;
        }
        let due = pacer.due(t, nominal * cfg.scenario.rate_factor(t));
        outcome.largest_burst = outcome.largest_burst.max(due);
        for _ in 0..due {
            if cfg.max_events.is_some_and(|m| outcome.events >= m) {
                break 'run;
            }
            let Some(i) = fleet.next_index() else {
                break 'run;
            };
            let distortion = if (i as u32) < cfg.drift_devices {
                cfg.scenario.distortion(t)
            } else {
                crate::signal::Distortion::NONE
            };
            if let Some(s) = scalar {
                let device = &mut fleet.devices_mut()[i];
                let k = streams[i].readings();
                let reading = streams[i].next_reading(device, wall_us(), distortion);
                let device = device.id().to_string();
                // Encoded before the clock starts, as whole events are (`publish_all`).
                let payload = stream::scalar_json(&device, &reading);
                if let Some(t) = &tracker {
                    let mut t = t.lock().expect("tracker lock");
                    if s.plan.completes(k) {
                        t.on_sent(&device, reading.n, now_ns(start));
                    } else {
                        t.on_silent();
                    }
                }
                outcome.events += 1;
                outcome.messages += 1;
                client
                    .publish(crate::event_topic(&device), broker.qos, false, payload)
                    .await?;
                qos1_published += u64::from(broker.qos != QoS::AtMostOnce);
                continue;
            }
            let (seq, bytes) = fleet.devices_mut()[i].next_encoded(wall_us(), distortion);
            let bytes = bytes.to_vec();
            outcome.events += 1;
            let msgs = injectors[i].process(seq, &bytes);
            let device = fleet.devices()[i].id().to_string();
            qos1_published += publish_all(
                &client,
                &broker,
                &cfg,
                &device,
                msgs,
                &tracker,
                edge.as_deref(),
                start,
                &mut outcome,
            )
            .await?;
        }
        if cfg.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            progress_line(t, &outcome, &tracker);
        }
    }
    // Events still held back for reordering go out last.
    for (i, inj) in injectors.iter_mut().enumerate() {
        if let Some(msg) = inj.flush() {
            let device = fleet.devices()[i].id().to_string();
            qos1_published += publish_all(
                &client,
                &broker,
                &cfg,
                &device,
                vec![msg],
                &tracker,
                edge.as_deref(),
                start,
                &mut outcome,
            )
            .await?;
        }
    }

    // An edge node's deaths go out after its last data (reflexd has read that data by
    // the time it reads them, in order), before the drain so that they are acked too.
    if let Some(e) = &edge {
        let deaths = {
            let mut e = e.lock().expect("edge lock");
            let now_ms = wall_us() / 1_000;
            let mut deaths: Vec<(String, Vec<u8>)> = fleet
                .devices()
                .iter()
                .map(|d| e.0.ddeath(d.id(), now_ms))
                .collect();
            deaths.push(e.0.ndeath(now_ms));
            deaths
        };
        qos1_published += publish_control(&client, &broker, deaths).await?;
    }
    // Drain: wait (bounded) for our QoS 1 publishes to be acked and commands to arrive.
    let drain_until = Instant::now() + cfg.drain;
    while Instant::now() < drain_until {
        let acked = shared.acked.load(Ordering::Relaxed) >= qos1_published;
        let answered = tracker
            .as_ref()
            .is_none_or(|t| t.lock().expect("tracker lock").missing() == 0);
        if acked && answered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A Disconnect queued behind our publishes goes out only after them.
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while shared.disconnected.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    poll_cancel.cancel();
    let _ = poller.await;
    let bad = bad_commands.load(Ordering::Relaxed);
    if bad > 0 {
        eprintln!("reflex-sim: {bad} undecodable commands received");
    }
    if let Some(t) = tracker {
        let t = t.lock().expect("tracker lock");
        outcome.report = Some(t.report(start.elapsed().as_secs_f64()));
        outcome.latency_us = Some(t.latency_us().clone());
    }
    Ok(outcome)
}

/// Publishes an edge node's births or deaths in order; how many at QoS 1.
async fn publish_control(
    client: &AsyncClient,
    broker: &BrokerOptions,
    msgs: Vec<(String, Vec<u8>)>,
) -> anyhow::Result<u64> {
    let mut qos1 = 0;
    for (topic, payload) in msgs {
        client.publish(topic, broker.qos, false, payload).await?;
        qos1 += u64::from(broker.qos != QoS::AtMostOnce);
    }
    Ok(qos1)
}

/// The edge node of a Sparkplug B fleet, and its command matching.
type Edge = Mutex<(EdgeNode, InOrder)>;

#[allow(clippy::too_many_arguments)]
async fn publish_all(
    client: &AsyncClient,
    broker: &BrokerOptions,
    cfg: &FleetConfig,
    device: &str,
    msgs: Vec<Outgoing>,
    tracker: &Option<Arc<Mutex<Tracker>>>,
    edge: Option<&Edge>,
    start: Instant,
    outcome: &mut FleetOutcome,
) -> anyhow::Result<u64> {
    let topic = match edge {
        // Malformed and oversized payloads go where the device's data goes.
        Some(_) => crate::edge_node::ddata_topic(device),
        None => crate::event_topic(device),
    };
    let mut qos1 = 0;
    for msg in msgs {
        let duplicate = matches!(msg, Outgoing::Duplicate { .. });
        outcome.duplicates += u64::from(duplicate);
        let (payload, tracked) = match msg {
            Outgoing::Event { seq, bytes } | Outgoing::Duplicate { seq, bytes } => {
                // A duplicate is a second copy of an event already tracked: telling the
                // tracker again would, once the first copy was answered, count it as a
                // new event sent that awaits a command.
                let tracked = match (tracker, duplicate) {
                    (Some(_), false) => Some(match edge {
                        Some(e) => {
                            let device = crate::edge_node::reflex_device(device);
                            let n = e.lock().expect("edge lock").1.on_sent(&device);
                            (device, n)
                        }
                        None => (device.to_owned(), seq),
                    }),
                    _ => None,
                };
                let payload = match (cfg.format, edge) {
                    (Format::Sparkplug, Some(e)) => {
                        let ev = SensorEvent::decode(&bytes)?;
                        e.lock().expect("edge lock").0.ddata(&ev).1
                    }
                    (Format::Postcard | Format::Sparkplug, _) => bytes,
                    (Format::Json, _) => {
                        let ev = SensorEvent::decode(&bytes)?;
                        reflex_wire::json::encode_event(&ev)
                    }
                    (Format::VendorJson, _) => vendor_json(&SensorEvent::decode(&bytes)?),
                    (Format::ScalarJson(_), _) => {
                        anyhow::bail!("a scalar stream publishes readings, not whole events")
                    }
                };
                (payload, tracked)
            }
            Outgoing::Malformed(b) | Outgoing::Oversized(b) => {
                outcome.bad_payloads += 1;
                (b, None)
            }
        };
        // The clock starts once the payload is encoded, as a sensor's would when it hands
        // the message to MQTT: the fleet's own encoding (a JSON or Sparkplug payload costs
        // tens of µs here, postcard nothing) is not the responder's latency. Before the
        // publish, so that no answer can arrive before the tracker knows the event.
        if let (Some(t), Some((device, seq))) = (tracker, tracked) {
            t.lock()
                .expect("tracker lock")
                .on_sent(&device, seq, now_ns(start));
        }
        outcome.messages += 1;
        client
            .publish(topic.clone(), broker.qos, false, payload)
            .await?;
        if broker.qos != QoS::AtMostOnce {
            qos1 += 1;
        }
    }
    Ok(qos1)
}

fn progress_line(t: f64, outcome: &FleetOutcome, tracker: &Option<Arc<Mutex<Tracker>>>) {
    match tracker {
        Some(tr) => {
            let r = tr.lock().expect("tracker lock").take_interval(t);
            eprintln!(
                "t={t:>5.1}s sent={} ({:.0}/s) answered={} missing={} fallback={} late={} p50={}µs p99={}µs p99.9={}µs",
                r.sent, r.events_per_s, r.answered, r.missing, r.by_source[1], r.late, r.p50_us, r.p99_us, r.p999_us
            );
        }
        None => eprintln!(
            "t={t:>5.1}s events={} ({:.0}/s) messages={} bad={}",
            outcome.events,
            outcome.events as f64 / t.max(1e-9),
            outcome.messages,
            outcome.bad_payloads
        ),
    }
}

/// What the echo client did.
#[derive(Debug, Clone, Default)]
pub struct EchoOutcome {
    /// Events answered.
    pub answered: u64,
    /// Payloads that did not decode.
    pub undecodable: u64,
}

/// The MQTT floor: answers every event on `filter` with a trivial command, doing only what
/// any consumer must (decode, encode, publish), until cancelled.
pub async fn run_echo(
    broker: BrokerOptions,
    filter: String,
    cancel: CancellationToken,
) -> anyhow::Result<EchoOutcome> {
    let (client, eventloop) = client(&broker, "echo", 10_000);
    let shared = Arc::new(Shared::default());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Vec<u8>)>(10_000);
    let answered = Arc::new(AtomicU64::new(0));
    let undecodable = Arc::new(AtomicU64::new(0));
    let poller = {
        let undecodable = undecodable.clone();
        tokio::spawn(poll_loop(
            eventloop,
            client.clone(),
            vec![(filter, broker.qos)],
            move |p| {
                let received = Instant::now();
                let ev = match decode_event(&p.payload) {
                    Ok(ev) => ev,
                    Err(_) => {
                        undecodable.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                let cmd = Command {
                    version: COMMAND_FORMAT_VERSION,
                    device: ev.device.clone(),
                    seq: ev.seq,
                    action: Action::Run,
                    class: 0,
                    source: DecisionSource::Rule,
                    model: ModelRef {
                        name: "echo".try_into().unwrap_or_default(),
                        version: "0".try_into().unwrap_or_default(),
                    },
                    decided_at_us: wall_us(),
                    latency_us: received.elapsed().as_micros() as u32,
                };
                let mut buf = [0u8; reflex_wire::MAX_COMMAND_BYTES];
                let payload = if p.payload.first() == Some(&b'{') {
                    reflex_wire::json::encode_command(&cmd)
                } else {
                    match cmd.encode(&mut buf) {
                        Ok(b) => b.to_vec(),
                        Err(_) => return,
                    }
                };
                // Never await in the poller: hand the publish to the publisher task.
                if tx
                    .try_send((crate::command_topic(&ev.device), payload))
                    .is_err()
                {
                    undecodable.fetch_add(1, Ordering::Relaxed);
                }
            },
            shared.clone(),
            cancel.clone(),
        ))
    };
    // Say when answers can flow, so that scripts and tests wait on it, not on a timer.
    if shared.wait_ready(Duration::from_secs(10), &cancel).await {
        println!("echo ready");
    } else {
        eprintln!("reflex-sim: echo not subscribed after 10 s; still trying");
    }
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            msg = rx.recv() => match msg {
                Some((topic, payload)) => {
                    client.publish(topic, broker.qos, false, payload).await?;
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                None => break,
            },
        }
    }
    let _ = poller.await;
    Ok(EchoOutcome {
        answered: answered.load(Ordering::Relaxed),
        undecodable: undecodable.load(Ordering::Relaxed),
    })
}
