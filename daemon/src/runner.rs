//! Wires the daemon together and runs it: models loaded and calibrated, engine threads,
//! MQTT ingest and actuation, metrics endpoint, systemd notifications, hot reload, and the
//! three-part shutdown (trigger, wait for every task, grace deadline).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use reflex_models::{Batches, Fallback, Model};
use reflex_wire::ModelRef;

use crate::bad_input::BadInputLog;
use crate::config::{Config, OnBudgetUnmeetable};
use crate::engine::{Engine, ModelSlot, RouteRuntime};
use crate::ingest::{Actuator, Dispatcher, Ingest};
use crate::metrics::Metrics;
use crate::schedule::{self, LatencyProfile};

/// A handle the caller (main, demo, tests) uses to observe a running daemon.
#[derive(Clone)]
pub struct Handle {
    /// Metrics of the running daemon.
    pub metrics: Arc<Metrics>,
}

fn model_ref(name: &str, version: &str) -> ModelRef {
    let mut n = heapless::String::new();
    let _ = n.push_str(&name[..name.len().min(reflex_wire::MAX_MODEL_NAME_LEN)]);
    let mut v = heapless::String::new();
    let _ = v.push_str(&version[..version.len().min(reflex_wire::MAX_MODEL_VERSION_LEN)]);
    ModelRef {
        name: n,
        version: v,
    }
}

/// Representative windows for calibration: what the simulator's devices send.
fn calibration_windows() -> Vec<(Vec<f32>, f32)> {
    use reflex_sim::device::SimDevice;
    use reflex_sim::signal::{Condition, Distortion};
    Condition::ALL
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let ev = SimDevice::new(i as u32, c, 1).next_event(0, Distortion::NONE);
            (crate::engine::window_g(&ev), ev.temperature_c())
        })
        .collect()
}

/// Times `runs` runs of `model` on batches of `windows` windows and returns the latency
/// profile, measured the way the workers will run the model: on a thread of their
/// scheduling class (SCHED_FIFO at `realtime_priority`, or the normal scheduler when that
/// is 0 or refused). Measured at normal priority on a busy board, the p99.9 is the other
/// processes' time slices, not the model's, and every event would be sent to the fallback.
pub fn calibrate(
    model: &mut Batches,
    windows: usize,
    runs: u32,
    realtime_priority: u8,
) -> anyhow::Result<LatencyProfile> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("reflex-calibrate".into())
            .spawn_scoped(scope, || {
                // Refused: then the workers are refused too, and this measures like them.
                let _ = crate::realtime::enter_fifo(realtime_priority);
                calibrate_on_this_thread(model, windows, runs)
            })?
            .join()
            .map_err(|_| anyhow::anyhow!("the calibration thread panicked"))?
    })
}

fn calibrate_on_this_thread(
    model: &mut Batches,
    k: usize,
    runs: u32,
) -> anyhow::Result<LatencyProfile> {
    let examples = calibration_windows();
    // `k` windows per batch, the examples in turn, each batch starting one further on.
    let batches: Vec<(Vec<f32>, Vec<f32>)> = (0..examples.len())
        .map(|start| {
            let rows = examples.iter().cycle().skip(start).take(k);
            let windows = rows.clone().flat_map(|(w, _)| w.iter().copied()).collect();
            (windows, rows.map(|(_, t)| *t).collect())
        })
        .collect();
    for (w, t) in batches.iter().cycle().take(50) {
        model.predict(w, t)?; // warm-up, not timed
    }
    let mut samples = Vec::with_capacity(runs as usize);
    for (w, t) in batches.iter().cycle().take(runs as usize) {
        let start = Instant::now();
        model.predict(w, t)?;
        samples.push(start.elapsed().as_nanos() as u64);
    }
    Ok(schedule::calibrate(&mut samples))
}

/// Calibration rounds of the single-window run per model load; the round with the lowest
/// p99.9 counts. Batches get one round each: a burst of other work during it only makes
/// the workers take smaller batches.
const CALIBRATION_ROUNDS: usize = 3;

/// A model loaded for the workers.
struct LoadedModel {
    /// One instance per worker, each planned for 1..=`scheduler.max_batch` windows.
    instances: Vec<Batches>,
    /// Calibrated latency of a run on 1, 2, … windows (index = windows − 1).
    profiles: Vec<LatencyProfile>,
}

impl LoadedModel {
    fn first(&self) -> &Model {
        self.instances[0].first()
    }

    /// The single-window profile: what admission and the budget check use.
    fn profile(&self) -> &LatencyProfile {
        &self.profiles[0]
    }

    fn p999_ns(&self) -> Vec<u64> {
        self.profiles
            .iter()
            .map(|p| p.expected_infer().as_nanos() as u64)
            .collect()
    }
}

/// Loads `count` instances of a model (checksum verified) planned for batches of up to
/// `scheduler.max_batch` windows (each plan checked row by row against the single-window
/// one), checks the first against its golden vectors and calibrates each batch size;
/// checks every route that uses it against its budget.
fn load_model(config: &Config, name: &str, count: usize) -> anyhow::Result<LoadedModel> {
    let mc = &config.models[name];
    let max_batch = config.scheduler.max_batch.max(1);
    let mut models = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        models.push(
            Batches::load(&mc.manifest, max_batch)
                .with_context(|| format!("loading model {name} from {}", mc.manifest.display()))?,
        );
    }
    if let Some(golden) = reflex_models::golden::check(models[0].single())
        .with_context(|| format!("checking model {name} against its golden vectors"))?
    {
        tracing::info!(
            model = name,
            examples = golden.examples,
            max_abs_diff = golden.max_abs_diff,
            tolerance = golden.tolerance,
            "golden vectors reproduced"
        );
    }
    // The quietest of a few rounds: a burst of other work on the board during one round
    // (a build, a log rotation) should not refuse a model that meets its budget; load that
    // lasts through every round does.
    let priority = config.scheduler.realtime_priority;
    let mut profile = calibrate(&mut models[0], 1, mc.calibration_runs, priority)?;
    for _ in 1..CALIBRATION_ROUNDS {
        let again = calibrate(&mut models[0], 1, mc.calibration_runs, priority)?;
        if again.p999 < profile.p999 {
            profile = again;
        }
    }
    for route in config.routes.iter().filter(|r| r.model == name) {
        if let Err(e) =
            schedule::budget_check(&profile, route.budget(), config.scheduler.safety_margin())
        {
            match route.on_budget_unmeetable {
                OnBudgetUnmeetable::Refuse => bail!("route {}: {e}", route.name),
                OnBudgetUnmeetable::Warn => {
                    tracing::warn!(route = %route.name, error = %e, "budget cannot be met by the model; the fallback will answer")
                }
            }
        }
    }
    let mut profiles = vec![profile];
    for k in 2..=max_batch {
        profiles.push(calibrate(&mut models[0], k, mc.calibration_runs, priority)?);
    }
    Ok(LoadedModel {
        instances: models,
        profiles,
    })
}

/// What `reflexd selftest` found for one configured model.
#[derive(Debug, Clone)]
pub struct SelftestReport {
    /// Configured model name.
    pub model: String,
    /// The model's own version.
    pub version: String,
    /// Golden windows run and the largest logit difference (None: no golden section).
    pub golden: Option<reflex_models::golden::GoldenReport>,
    /// Calibrated latency of a run on one window.
    pub profile: LatencyProfile,
    /// Calibrated latency of runs on 1, 2, … `scheduler.max_batch` windows.
    pub batch_profiles: Vec<LatencyProfile>,
    /// The fallback's name and version.
    pub fallback: String,
}

/// Loads every configured model the way `run` does (checksum, golden vectors,
/// calibration, budget check of its routes) plus its fallback, without connecting to
/// anything: a conformance check for a board (or an emulator) before it serves.
pub fn selftest(config: &Config) -> anyhow::Result<Vec<SelftestReport>> {
    let mut reports = Vec::new();
    for (name, mc) in &config.models {
        let mut loaded = load_model(config, name, 1)?;
        let fallback = Fallback::load(&mc.fallback_manifest).with_context(|| {
            format!(
                "loading fallback of {name} from {}",
                mc.fallback_manifest.display()
            )
        })?;
        let model = loaded.instances[0].single();
        reports.push(SelftestReport {
            model: name.clone(),
            version: model.version().to_owned(),
            // Checked (and refused on mismatch) inside load_model; run again for the figures.
            golden: reflex_models::golden::check(model)?,
            profile: *loaded.profile(),
            batch_profiles: loaded.profiles,
            fallback: format!(
                "{} {}",
                fallback.manifest().name,
                fallback.manifest().version
            ),
        });
    }
    Ok(reports)
}

/// Publishes the serving model's identity and calibrated p99.9 on every route that uses
/// the configured model `name` (at start and after each reload).
fn report_model_info(
    metrics: &Metrics,
    config: &Config,
    name: &str,
    model: &Model,
    profile: &LatencyProfile,
) {
    for (r, _) in config
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| r.model == name)
    {
        metrics.set_model_info(r, model.name(), model.version(), profile.p999);
    }
}

/// Runs the daemon until `shutdown` fires; returns after the graceful stop.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<Handle>>,
) -> anyhow::Result<()> {
    let model_names: Vec<String> = config.models.keys().cloned().collect();
    let workers = config.scheduler.workers.max(1);
    let route_names: Vec<String> = config.routes.iter().map(|r| r.name.clone()).collect();
    let metrics = Arc::new(Metrics::new(&route_names));

    // Models: one instance per worker per model, calibrated; fallbacks.
    let mut per_worker: Vec<Vec<Batches>> = (0..workers).map(|_| Vec::new()).collect();
    let mut slots = Vec::new();
    for name in &model_names {
        let loaded = load_model(&config, name, workers)?;
        let profile = *loaded.profile();
        let mc = &config.models[name];
        let fallback = Fallback::load(&mc.fallback_manifest).with_context(|| {
            format!(
                "loading fallback of {name} from {}",
                mc.fallback_manifest.display()
            )
        })?;
        let first = loaded.first();
        tracing::info!(
            model = name,
            version = first.version(),
            p50_us = profile.p50 / 1000,
            p999_us = profile.p999 / 1000,
            batch_p999_us = ?loaded.p999_ns().iter().map(|ns| ns / 1000).collect::<Vec<_>>(),
            "model calibrated"
        );
        report_model_info(&metrics, &config, name, first, &profile);
        slots.push(ModelSlot {
            current: Mutex::new(model_ref(first.name(), first.version())),
            expected_ns: loaded
                .p999_ns()
                .into_iter()
                .map(std::sync::atomic::AtomicU64::new)
                .collect(),
            fallback_ref: model_ref(&fallback.manifest().name, &fallback.manifest().version),
            fallback,
        });
        for (w, m) in loaded.instances.into_iter().enumerate() {
            per_worker[w].push(m);
        }
    }
    let routes: Vec<RouteRuntime> = config
        .routes
        .iter()
        .map(|r| RouteRuntime {
            command_topic: r.command_topic.clone(),
            format: r.format,
            budget: r.budget(),
            qos_out: r.qos_out,
            model: model_names.iter().position(|m| *m == r.model).unwrap_or(0),
        })
        .collect();

    let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel();
    let engine = Arc::new(Engine::new(
        routes,
        slots,
        metrics.clone(),
        config.scheduler.queue_capacity,
        config.scheduler.safety_margin(),
        config.scheduler.max_batch,
        out_tx,
    ));

    // Engine threads, under SCHED_FIFO when the kernel grants it.
    let mut threads = Vec::new();
    let mut reload_txs = Vec::new();
    let realtime = RealtimeRequest::new(config.scheduler.realtime_priority, metrics.clone());
    for (w, models) in per_worker.into_iter().enumerate() {
        let (tx, rx) = flume::unbounded();
        reload_txs.push(tx);
        let e = engine.clone();
        let rt = realtime.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("reflex-worker-{w}"))
                .spawn(move || {
                    rt.enter();
                    e.run_worker(models, rx)
                })?,
        );
    }
    {
        let e = engine.clone();
        let rt = realtime.clone();
        threads.push(
            std::thread::Builder::new()
                .name("reflex-deadline-timer".into())
                .spawn(move || {
                    rt.enter();
                    e.run_timer()
                })?,
        );
    }

    // The journal, before anything can be acked.
    let journal = match &config.journal {
        Some(jc) => Some(open_journal(jc, &metrics)?),
        None => None,
    };

    // MQTT.
    let (client, eventloop) = crate::ingest::connect(&config)?;
    let tasks = TaskTracker::new();
    let bad_input = BadInputLog::new(config.bad_input.keep_last);
    let stop_intake = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let actuator_done = CancellationToken::new();
    let mut dispatcher = Dispatcher::new(engine.clone(), &config, bad_input.clone());
    if let (Some(j), Some(jc)) = (&journal, &config.journal) {
        let n = seed_dedupe(j, jc.dedupe_scan_records, &mut dispatcher);
        dispatcher.resend_with(client.clone());
        tracing::info!(records = n, "per-device dedupe seeded from the journal");
    }

    // The recorder: journals each published decision and acks it once durable.
    let (recorder_tx, recorder_rx) = flume::unbounded();
    if journal.is_some() {
        dispatcher.defer_acks_to(recorder_tx.clone());
    }
    let appender = journal
        .as_ref()
        .zip(config.journal.as_ref())
        .map(|(j, jc)| {
            let tx = recorder_tx.clone();
            let reopened_tx = recorder_tx.clone();
            let metrics = metrics.clone();
            // A journal an I/O error broke (a full disk), or one that had no space to
            // open, is reopened with backoff; the recorder appends what it lost again.
            reflex_journal::store::Appender::start_reopening(
                j.clone(),
                reflex_journal::store::GroupCommit {
                    max_records: jc.group_commit_records,
                    max_delay: Duration::from_millis(jc.group_commit_ms),
                },
                move |through| {
                    let _ = tx.send(crate::recorder::RecorderMsg::Durable(through));
                },
                move |r| {
                    if r.moved_aside.is_some() {
                        metrics.journal_moved_aside();
                    }
                    let _ = reopened_tx.send(crate::recorder::RecorderMsg::Reopened {
                        kept_through: r.kept_through,
                        lost_before: r.lost_before,
                    });
                },
            )
        });
    // Live monitoring: drift of each route's inputs and predictions against its model's
    // reference profile, and the deadline-miss and fallback objectives.
    let monitor = if config.monitor.enabled {
        let mut refs = Vec::new();
        for r in &config.routes {
            let manifest = reflex_models::Manifest::load(&config.models[&r.model].manifest)?;
            let reference = crate::monitor::reference_from_manifest(&manifest)
                .with_context(|| format!("route {}: the reference profile", r.name))?;
            refs.push((r.name.clone(), reference));
        }
        let m = Arc::new(crate::monitor::LiveMonitor::new(
            &config.monitor,
            &config.node.name,
            refs,
        )?);
        metrics.attach_monitor(m.clone());
        Some(m)
    } else {
        None
    };
    let recorder = {
        let r = crate::recorder::Recorder {
            node: config.node.name.clone(),
            rx: recorder_rx,
            appender,
            client: client.clone(),
            metrics: metrics.clone(),
            monitor: monitor.clone(),
        };
        std::thread::Builder::new()
            .name("reflex-recorder".into())
            .spawn(move || r.run())?
    };

    // The uploader, when configured: stops at the shutdown trigger (a batch in flight is
    // kept in the journal and re-sent, with the same id, after the restart).
    let upload_stop = CancellationToken::new();
    let monitor_stop = CancellationToken::new();
    let alerts = monitor.as_ref().map(|m| {
        let mut publisher = crate::monitor::AlertPublisher::new(m.clone());
        // Closed windows ride with the uploads (kept in the journal until one carries them).
        if config.upload.is_some() {
            publisher.windows_to = journal.clone();
        }
        tasks.spawn(publisher.run(client.clone(), monitor_stop.clone()))
    });
    if let (Some(j), Some(uc)) = (&journal, &config.upload) {
        let uploader =
            reflex_journal::upload::Uploader::new(j.clone(), upload_config(&config, uc)?)
                .context("starting the uploader")?;
        metrics.attach_upload(uploader.stats());
        tracing::info!(url = %uc.url, "uploading the journal");
        tasks.spawn(uploader.run(upload_stop.clone()));
    }

    let ingest = Ingest {
        eventloop,
        client: client.clone(),
        dispatcher,
        subscriptions: config
            .routes
            .iter()
            .map(|r| (r.topic_filter.clone(), crate::ingest::qos(r.qos_in)))
            .collect(),
        backoff: config.mqtt.reconnect_backoff(),
        ack_after_journal: journal.is_some(),
    };
    // The MQTT event loop on a thread of its own, with a single-threaded runtime: the
    // engine's threads wake that one thread (one eventfd write) when they queue a
    // command, instead of the shared runtime's inject queue and whichever of its workers
    // is parked, and the socket is never polled behind the metrics endpoint, the
    // uploader or a reload. It stays on the normal scheduler: under SCHED_FIFO (tried at 5,
    // below the engine threads) it took the broker's core often enough to double the p99.
    let (ingest_finished, ingest_done) = tokio::sync::oneshot::channel::<()>();
    let ingest_thread = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the MQTT thread's runtime")?;
        let (stop, hard) = (stop_intake.clone(), hard_stop.clone());
        std::thread::Builder::new()
            .name("reflex-mqtt".into())
            .spawn(move || {
                rt.block_on(ingest.run(stop, hard));
                let _ = ingest_finished.send(());
            })?
    };
    let publisher = crate::ingest::CommandPublisher {
        client: client.clone(),
        clock: engine.clock,
        metrics: metrics.clone(),
        recorder: recorder_tx.clone(),
    };
    engine.publish_directly(publisher.clone());
    let actuator = tasks.spawn(
        Actuator {
            rx: out_rx,
            backlog: engine.actuator_backlog(),
            publisher,
        }
        .run(actuator_done.clone()),
    );

    // Metrics endpoint (loopback by default).
    if config.metrics.enabled {
        let addr = config.metrics.listen_addr().context("metrics.listen")?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
        tracing::info!(%addr, "metrics endpoint listening");
        tasks.spawn(crate::metrics::serve(
            listener,
            metrics.clone(),
            bad_input.clone(),
            hard_stop.clone(),
        ));
    }

    // systemd: READY now, WATCHDOG while the real-time loop turns.
    let notifier = crate::systemd::Notifier::from_env();
    if let Some(n) = &notifier {
        let _ = n.ready();
    }
    if let (Some(n), Some(period)) = (
        crate::systemd::Notifier::from_env(),
        crate::systemd::watchdog_interval(),
    ) {
        let e = engine.clone();
        let stop = hard_stop.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                // Only a turning real-time loop earns a ping: a wedged one gets restarted.
                let age = e
                    .clock
                    .now()
                    .saturating_sub(e.heartbeat.load(Ordering::Relaxed));
                if age < 2 * period.as_nanos() as u64 {
                    let _ = n.watchdog();
                }
            }
        });
    }

    // Hot reload: SIGHUP, or a model file whose modification time changes.
    {
        let config = config.clone();
        let e = engine.clone();
        let stop = hard_stop.clone();
        let txs = reload_txs.clone();
        let m = monitor.clone();
        tasks.spawn(async move { reload_loop(config, e, txs, m, stop).await });
    }

    if let Some(tx) = ready {
        let _ = tx.send(Handle {
            metrics: metrics.clone(),
        });
    }

    // 1. The trigger.
    shutdown.cancelled().await;
    tracing::info!(
        in_flight = engine.in_flight(),
        "stopping: intake closed, answering what was accepted"
    );
    if let Some(n) = &notifier {
        let _ = n.stopping();
    }
    let grace_until = Instant::now() + config.shutdown.grace();
    stop_intake.cancel();
    upload_stop.cancel();
    // 2. Every accepted event gets its command (each within its own deadline).
    while engine.in_flight() > 0 && Instant::now() < grace_until {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    engine.stop();
    let joined = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    let _ = tokio::time::timeout(
        grace_until.saturating_duration_since(Instant::now()),
        joined,
    )
    .await;
    actuator_done.cancel();
    drop(reload_txs);
    // Every command must be queued on the client before the Disconnect: the events they
    // answer are acked, so the broker will not redeliver them to anyone.
    if tokio::time::timeout(
        grace_until.saturating_duration_since(Instant::now()) + Duration::from_millis(500),
        actuator,
    )
    .await
    .is_err()
    {
        tracing::warn!("grace period over before every command was queued");
    }
    // Every published decision is with the recorder: a last group commit, and the PUBACKs
    // of everything journaled go out before the Disconnect too.
    let _ = recorder_tx.send(crate::recorder::RecorderMsg::Stop);
    drop(recorder_tx);
    let recorder_joined = tokio::task::spawn_blocking(move || recorder.join());
    if tokio::time::timeout(
        grace_until.saturating_duration_since(Instant::now()) + Duration::from_secs(2),
        recorder_joined,
    )
    .await
    .is_err()
    {
        tracing::warn!("the journal's last commit did not finish in time");
    }
    // The alert publisher's last tick, before the Disconnect too.
    monitor_stop.cancel();
    if let Some(a) = alerts {
        let _ = tokio::time::timeout(Duration::from_secs(2), a).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), client.disconnect()).await;
    tasks.close();
    // 3. The grace deadline: the ingest ends once our Disconnect is out; then the
    // endpoint, watchdog and reload tasks, which only ever stop at hard_stop.
    if tokio::time::timeout(
        grace_until.saturating_duration_since(Instant::now()) + Duration::from_millis(500),
        ingest_done,
    )
    .await
    .is_err()
    {
        tracing::warn!("grace period over; stopping the remaining tasks");
    }
    hard_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), tasks.wait()).await;
    // Past hard_stop the ingest returns at its next turn; a thread still stuck here ends
    // with the process.
    let ingest_joined = tokio::task::spawn_blocking(move || ingest_thread.join());
    let _ = tokio::time::timeout(Duration::from_secs(1), ingest_joined).await;
    tracing::info!(unanswered = engine.in_flight(), "stopped");
    Ok(())
}

/// Opens the journal; one that cannot be opened is moved aside (counted, logged) and a
/// fresh one started. One that cannot be opened for lack of space is returned unopened
/// (logged): reflexd serves, QoS 1 events stay unacked, and the appender opens it once
/// there is room (`Appender::start_reopening`). Other failures (permissions, a lock held
/// by another reflexd) stop the start with the reason.
fn open_journal(
    jc: &crate::config::JournalConfig,
    metrics: &Metrics,
) -> anyhow::Result<Arc<reflex_journal::store::Journal>> {
    use reflex_journal::store::{Durability, FullPolicy, Journal, Quota, StoreConfig};
    let mut sc = StoreConfig::new(&jc.dir);
    sc.cache_capacity = jc.cache_mib << 20;
    sc.durability = match jc.durability {
        crate::config::JournalDurability::Fsync => Durability::Fsync,
        crate::config::JournalDurability::Flush => Durability::Flush,
    };
    sc.quota = Quota {
        quota_bytes: jc.quota_mib << 20,
        min_free_bytes: jc.min_free_mib << 20,
        policy: match jc.when_full {
            crate::config::WhenFull::DropOldest => FullPolicy::DropOldest,
            crate::config::WhenFull::Backpressure => FullPolicy::Backpressure,
        },
        ..Quota::default()
    };
    sc.keep_uploaded = jc.keep_uploaded;
    let (journal, report, waiting) = Journal::open_or_wait(sc)
        .with_context(|| format!("opening the journal in {}", jc.dir.display()))?;
    if let Some(e) = &waiting {
        tracing::error!(
            dir = %jc.dir.display(),
            error = %e,
            "the journal has no space to open: serving without it for now (QoS 1 events stay unacked with the broker); opening it again with backoff"
        );
    }
    if let Some(moved) = &report.moved_aside {
        metrics.journal_moved_aside();
        tracing::error!(
            moved_to = %moved.path.display(),
            reason = %moved.reason,
            "the journal could not be opened: moved aside (kept, not deleted); started a fresh one"
        );
    }
    let journal = Arc::new(journal);
    metrics.attach_journal(journal.stats());
    tracing::info!(
        dir = %jc.dir.display(),
        records = journal.len(),
        last_seq = journal.last_seq(),
        "journal open"
    );
    Ok(journal)
}

/// Records at the journal's end whose commands are kept to be sent again if the broker
/// redelivers their events (at most the events unacked at a crash: the broker's in-flight
/// window plus what reflexd held, a few thousand).
const RESEND_TAIL_RECORDS: u64 = 8192;

/// Feeds the device/sequence of the journal's last `max_records` records to the dedupe, so
/// that an event decided before a crash but not yet acked is a duplicate when redelivered;
/// the last [`RESEND_TAIL_RECORDS`] also with their commands (see `Dispatcher::remember`).
fn seed_dedupe(
    journal: &reflex_journal::store::Journal,
    max_records: usize,
    dispatcher: &mut Dispatcher,
) -> usize {
    let last = journal.last_seq();
    let mut from = last.saturating_sub(max_records as u64) + 1;
    let mut seen = 0;
    while from <= last {
        let Ok(chunk) = journal.scan(from, 10_000, 64 << 20) else {
            break;
        };
        let Some((last_in_chunk, _)) = chunk.last() else {
            break;
        };
        from = last_in_chunk + 1;
        for (seq, bytes) in &chunk {
            if let Ok(r) = reflex_journal::record::JournalRecord::decode(bytes) {
                let tail = *seq + RESEND_TAIL_RECORDS > last;
                dispatcher.remember(&r.device, r.seq, tail.then_some(r.command));
                seen += 1;
            }
        }
    }
    seen
}

/// The uploader's settings from `[upload]` (reads the token file).
fn upload_config(
    config: &Config,
    uc: &crate::config::UploadConfig,
) -> anyhow::Result<reflex_journal::upload::UploadConfig> {
    let token = uc.read_token().context("upload.token_file")?;
    let mut c = reflex_journal::upload::UploadConfig::new(
        uc.url.trim_end_matches('/'),
        token.expose(),
        config.node.name.clone(),
    );
    c.batching = reflex_journal::upload::BatchPolicy {
        max_records: uc.batch_records,
        max_bytes: uc.batch_kib << 10,
        max_age: Duration::from_secs(uc.batch_age_s),
    };
    if uc.bandwidth_bytes_per_s > 0 {
        // A burst of one second's worth.
        c.bandwidth = Some((uc.bandwidth_bytes_per_s, uc.bandwidth_bytes_per_s));
    }
    c.window = uc
        .window
        .as_deref()
        .and_then(crate::config::parse_upload_window)
        .map(
            |(start_minute, end_minute)| reflex_journal::upload::UploadWindow {
                start_minute,
                end_minute,
            },
        );
    c.request_timeout = Duration::from_secs(uc.request_timeout_s);
    c.ca_file = uc.ca_file.clone();
    Ok(c)
}

fn mtime(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The live monitor judges the routes of reloaded model `name` against its (possibly new)
/// manifest's reference profile; a reference that cannot be used is logged, the old one
/// stays.
fn swap_reference(monitor: &crate::monitor::LiveMonitor, config: &Config, name: &str) {
    let reference = reflex_models::Manifest::load(&config.models[name].manifest)
        .map_err(anyhow::Error::from)
        .and_then(|m| crate::monitor::reference_from_manifest(&m).map_err(anyhow::Error::from));
    for (i, route) in config.routes.iter().enumerate() {
        if route.model != name {
            continue;
        }
        let swapped = reference
            .as_ref()
            .map_err(|e| format!("{e:#}"))
            .and_then(|r| {
                monitor
                    .set_reference(i, r.clone())
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = swapped {
            tracing::error!(route = %route.name, model = name, error = %e,
                "the reloaded model's reference profile is not used by the monitor; the old one stays");
        }
    }
}

/// Reloads models on SIGHUP or when a file changes: load, verify, calibrate, then swap.
async fn reload_loop(
    config: Config,
    engine: Arc<Engine>,
    txs: Vec<flume::Sender<(usize, Batches)>>,
    monitor: Option<Arc<crate::monitor::LiveMonitor>>,
    stop: CancellationToken,
) {
    let watched: Vec<(usize, String, Vec<PathBuf>)> = config
        .models
        .iter()
        .enumerate()
        .filter(|(_, (_, m))| m.hot_reload)
        .map(|(i, (name, m))| {
            let onnx = reflex_models::Manifest::load(&m.manifest)
                .ok()
                .and_then(|man| man.file_path(&m.manifest));
            (
                i,
                name.clone(),
                std::iter::once(m.manifest.clone()).chain(onnx).collect(),
            )
        })
        .collect();
    let mut seen: Vec<Vec<Option<SystemTime>>> = watched
        .iter()
        .map(|(_, _, p)| p.iter().map(mtime).collect())
        .collect();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let forced = tokio::select! {
            _ = stop.cancelled() => return,
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
            _ = tick.tick() => false,
        };
        for (k, (idx, name, paths)) in watched.iter().enumerate() {
            let now: Vec<Option<SystemTime>> = paths.iter().map(mtime).collect();
            if !forced && now == seen[k] {
                continue;
            }
            seen[k] = now;
            let cfg = config.clone();
            let n = name.clone();
            let count = txs.len();
            let result = tokio::task::spawn_blocking(move || load_model(&cfg, &n, count)).await;
            match result {
                Ok(Ok(loaded)) => {
                    let first = loaded.first();
                    let profile = *loaded.profile();
                    let slot = &engine.models[*idx];
                    *slot.current.lock().expect("model ref lock") =
                        model_ref(first.name(), first.version());
                    slot.set_expected(&loaded.p999_ns());
                    report_model_info(&engine.metrics, &config, name, first, &profile);
                    tracing::info!(
                        model = name,
                        version = first.version(),
                        p999_us = profile.p999 / 1000,
                        "model reloaded"
                    );
                    engine.metrics.model_reload(true);
                    // One instance per worker was loaded; events in flight finish on the old one.
                    for (tx, m) in txs.iter().zip(loaded.instances) {
                        let _ = tx.send((*idx, m));
                    }
                    if let Some(m) = &monitor {
                        swap_reference(m, &config, name);
                    }
                }
                Ok(Err(e)) => {
                    engine.metrics.model_reload(false);
                    tracing::error!(
                        model = name,
                        error = format!("{e:#}"),
                        "model reload refused; the old model keeps serving"
                    );
                }
                Err(e) => tracing::error!(model = name, error = %e, "model reload task failed"),
            }
        }
    }
}

/// The configured SCHED_FIFO priority, requested by each engine thread for itself; a
/// refusal is logged once for all of them (see [`crate::realtime`]).
#[derive(Clone)]
struct RealtimeRequest {
    priority: u8,
    metrics: Arc<Metrics>,
    refusal_logged: Arc<std::sync::atomic::AtomicBool>,
}

impl RealtimeRequest {
    fn new(priority: u8, metrics: Arc<Metrics>) -> Self {
        Self {
            priority,
            metrics,
            refusal_logged: Arc::default(),
        }
    }

    /// Called first thing on the engine thread that wants it.
    fn enter(&self) {
        if self.priority == 0 {
            return;
        }
        match crate::realtime::enter_fifo(self.priority) {
            Ok(()) => self.metrics.realtime_thread_started(),
            Err(e) => {
                if !self
                    .refusal_logged
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(
                        priority = self.priority,
                        error = %e,
                        "SCHED_FIFO refused; engine threads run on the normal scheduler, where \
                         a busy board can delay events past their deadline (grant CAP_SYS_NICE \
                         or LimitRTPRIO=, or set scheduler.realtime_priority = 0 to silence this)"
                    );
                }
            }
        }
    }
}
