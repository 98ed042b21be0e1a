//! Wires the daemon together and runs it: models loaded and calibrated, the pipeline's
//! stages built in data order and handed to one another, the services beside them
//! (metrics endpoint, systemd, hot reload, uploads), and the graceful shutdown
//! ([`crate::service::shutdown`]). Wiring only: each part is built where it is defined.

use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use rumqttc::AsyncClient;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use reflex_journal::store::Journal;

use crate::config::{Config, Sources};
use crate::monitor::{AlertPublisher, LiveMonitor};
use crate::ops::metrics::Metrics;
use crate::ops::readiness::{LinkState, Readiness};
use crate::pipeline::actuate::{Actuation, Actuator, CommandPublisher};
use crate::pipeline::admit::Admitter;
use crate::pipeline::decide::{Decider, RoutePolicy};
use crate::pipeline::decode::{BadInputLog, Decoder};
use crate::pipeline::features::{FeaturePlan, RoutePlans};
use crate::pipeline::infer::{threads, Engine, Limits};
use crate::pipeline::intake::{self, Ingest, IntakeGate};
use crate::pipeline::record::Recorder;
use crate::pipeline::routes::{shared, RouteTable, SharedRoutes};
use crate::pipeline::types::{Clock, RecorderMsg, Session};
use crate::service::shutdown::{Running, Tokens};
use crate::service::{journal, models, reload, verify, watchdog};

pub use crate::service::models::{calibrate, selftest, SelftestReport};

/// A handle the caller (main, demo, tests) uses to observe a running daemon.
#[derive(Clone)]
pub struct Handle {
    /// Metrics of the running daemon.
    pub metrics: Arc<Metrics>,
    /// The MQTT link's state: whether every route is subscribed yet.
    pub link: Arc<LinkState>,
}

/// Runs the daemon until `shutdown` fires; returns after the graceful stop. SIGHUP reloads
/// the models only (see [`run_with`]).
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<Handle>>,
) -> anyhow::Result<()> {
    run_with(config, shutdown, ready, None).await
}

/// [`run`], with the layers `config` was read from: SIGHUP then reloads the configuration
/// from them too ([`reload`]).
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<Handle>>,
    sources: Option<Sources>,
) -> anyhow::Result<()> {
    let route_names: Vec<String> = config.routes.iter().map(|r| r.name.clone()).collect();
    let metrics = Arc::new(Metrics::new(&route_names));
    let workers = config.scheduler.workers.max(1);
    let cache = config
        .model_cache
        .resolve_dir(std::env::var_os("STATE_DIRECTORY").as_deref())
        .map(models::StartCache::new);
    let serving = models::load_all(&config, workers, &metrics, cache.as_ref())?;
    let (slots, fallbacks, per_worker) = (serving.slots, serving.fallbacks, serving.per_worker);

    // The route table every stage reads; a reload swaps it.
    let routes = shared(RouteTable::of(&config)?);
    for r in routes.load().active() {
        metrics.set_route_budget(r.slot, r.budget);
    }
    metrics.set_safety_margin(config.scheduler.safety_margin());
    let plans = Arc::new(RoutePlans::new(model_plans(&config)?, &routes.load()));

    // infer → decide → actuate, built back to front: each is handed its next stage.
    let clock = Clock::new();
    let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel();
    let actuation = Arc::new(Actuation::new(out_tx));
    let engine = Arc::new(new_engine(
        &config,
        (&routes, &plans),
        clock,
        (slots, fallbacks),
        &metrics,
        &actuation,
    )?);
    let engine_threads = threads::spawn(
        &engine,
        per_worker,
        config.scheduler.realtime_priority,
        metrics.clone(),
    )?;

    // The journal, before anything can be acked.
    let journal = config
        .journal
        .as_ref()
        .map(|jc| journal::open_journal(jc, &metrics))
        .transpose()?;
    let (client, eventloop) = intake::connect(&config)?;
    let link = Arc::new(LinkState::new(config.routes.len()));
    let readiness = new_readiness(&config, &eventloop, &link, &journal);
    metrics.attach_readiness(readiness.clone());
    let tokens = Tokens::new();
    let tasks = TaskTracker::new();
    let (recorder_tx, recorder_rx) = flume::unbounded();
    let admit = new_admitter(&config, &engine, &metrics, &journal, &client, &recorder_tx)
        .with_routes(routes.clone());
    let monitor = start_monitor(&config, &metrics)?;
    let session = Session::default();
    let recorder = start_recorder(
        &config,
        &journal,
        (recorder_rx, &recorder_tx),
        &client,
        &session,
        &metrics,
        &monitor,
    )?;
    let alerts = start_uploads_and_alerts(
        &config, &journal, &monitor, &client, &metrics, &tasks, &tokens,
    )?;

    // intake → decode → admit → infer.
    let bad_input = BadInputLog::new(config.bad_input.keep_last);
    let decoder = Decoder::new(&config, clock, metrics.clone(), bad_input.clone(), admit)
        .with_routes(routes.clone());
    let ingest = new_ingest(
        &config,
        (eventloop, &routes),
        &client,
        &session,
        decoder,
        &metrics,
        link.clone(),
    );
    let gate = IntakeGate::default();
    let (intake_thread, intake_done) = start_intake(ingest, &gate, &tokens)?;
    start_verifier(&config, cache, &engine, serving.from_cache, &tokens)?;

    // actuate → record.
    let publisher = CommandPublisher {
        client: client.clone(),
        clock,
        metrics: metrics.clone(),
        recorder: recorder_tx.clone(),
    };
    let actuator = start_actuator(&actuation, publisher, out_rx, &tasks, &tokens);

    start_endpoint(&config, &metrics, &bad_input, &tasks, &tokens).await?;
    let notifier = crate::ops::systemd::Notifier::from_env();
    start_systemd(&notifier, &engine, &readiness, &tasks, &tokens);
    tasks.spawn(
        reload::Reloader {
            config: config.clone(),
            sources,
            engine: engine.clone(),
            txs: engine_threads.reloads.clone(),
            monitor,
            routes: reload::LiveRoutes {
                table: routes,
                plans,
                client: client.clone(),
                link: link.clone(),
            },
        }
        .run(tokens.root.clone()),
    );

    if let Some(tx) = ready {
        let _ = tx.send(Handle {
            metrics: metrics.clone(),
            link: link.clone(),
        });
    }
    let running = Running {
        tokens,
        grace: config.shutdown.grace(),
        engine,
        engine_threads: engine_threads.threads,
        reloads: engine_threads.reloads,
        actuator,
        recorder_tx,
        recorder,
        alerts,
        client,
        tasks,
        gate,
        intake_done,
        intake_thread,
        notifier,
    };
    running.stop_at(shutdown).await;
    Ok(())
}

/// The background re-check of the models that serve on cached profiles, when there is a
/// model cache.
fn start_verifier(
    config: &Config,
    cache: Option<models::StartCache>,
    engine: &Arc<Engine>,
    from_cache: Vec<String>,
    tokens: &Tokens,
) -> anyhow::Result<()> {
    let Some(c) = cache else {
        return Ok(());
    };
    let verifier = verify::Verifier {
        config: config.clone(),
        cache_dir: c.dir,
        cpu: c.cpu,
        engine: engine.clone(),
        models: from_cache,
    };
    verifier.spawn(tokens.root.clone())?;
    Ok(())
}

/// The engine for the config's routes and `[scheduler]`; its verdicts go to a decide
/// stage that hands commands to `actuation`.
fn new_engine(
    config: &Config,
    (routes, plans): (&SharedRoutes, &Arc<RoutePlans>),
    clock: Clock,
    (slots, fallbacks): (
        Vec<crate::pipeline::infer::ModelSlot>,
        crate::pipeline::infer::Fallbacks,
    ),
    metrics: &Arc<Metrics>,
    actuation: &Arc<Actuation>,
) -> anyhow::Result<Engine> {
    let decide = Decider::new(clock, metrics.clone(), actuation.clone())
        .with_policies(route_policies(config)?)
        .with_feature_plans(plans.clone());
    let limits = Limits {
        queue_capacity: config.scheduler.queue_capacity,
        margin: config.scheduler.safety_margin(),
        max_batch: config.scheduler.max_batch,
    };
    Ok(Engine::new(
        clock,
        routes.clone(),
        slots,
        fallbacks,
        metrics.clone(),
        limits,
        Arc::new(decide),
    ))
}

/// Each route's decision policy and command template, built against its model's classes.
fn route_policies(config: &Config) -> anyhow::Result<Vec<RoutePolicy>> {
    config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if r.policy.is_none() && r.command_template.is_none() {
                return Ok(RoutePolicy::none());
            }
            let model = config
                .model_of(r)
                .with_context(|| format!("routes[{i}]: no model {:?}", r.model))?;
            let classes = reflex_models::manifest::Manifest::load(&model.manifest)
                .with_context(|| format!("routes[{i}]: reading the manifest of {:?}", r.model))?
                .classes;
            Ok(RoutePolicy::build(
                i,
                r,
                classes,
                config.devices.max_tracked,
            )?)
        })
        .collect()
}

/// The admit stage; with a journal, seeded from it and deferring PUBACKs to the recorder.
fn new_admitter(
    config: &Config,
    engine: &Arc<Engine>,
    metrics: &Arc<Metrics>,
    journal: &Option<Arc<Journal>>,
    client: &AsyncClient,
    recorder_tx: &flume::Sender<RecorderMsg>,
) -> Admitter {
    let mut admit = Admitter::new(engine.clone(), config, metrics.clone());
    if let (Some(j), Some(jc)) = (journal, &config.journal) {
        let n = journal::seed_dedupe(j, jc.dedupe_scan_records, &mut admit);
        admit.resend_with(client.clone());
        tracing::info!(records = n, "per-device dedupe seeded from the journal");
        admit.defer_acks_to(recorder_tx.clone());
    }
    admit
}

/// Live monitoring, when enabled: drift of each route's inputs and predictions against its
/// model's reference profile, and the deadline-miss and fallback objectives.
fn start_monitor(config: &Config, metrics: &Metrics) -> anyhow::Result<Option<Arc<LiveMonitor>>> {
    if !config.monitor.enabled {
        return Ok(None);
    }
    let mut refs = Vec::new();
    for r in &config.routes {
        let manifest = reflex_models::Manifest::load(&config.models[&r.model].manifest)?;
        let reference = crate::monitor::reference_from_manifest(&manifest)
            .with_context(|| format!("route {}: the reference profile", r.name))?;
        refs.push((r.name.clone(), reference));
    }
    let m = Arc::new(LiveMonitor::new(&config.monitor, &config.node.name, refs)?);
    metrics.attach_monitor(m.clone());
    Ok(Some(m))
}

/// Each configured model's feature plan, in the engine's model order (`config.models`):
/// how the records of the routes it serves get their features.
fn model_plans(config: &Config) -> anyhow::Result<Vec<FeaturePlan>> {
    config
        .models
        .iter()
        .map(|(name, m)| {
            let manifest = reflex_models::Manifest::load(&m.manifest)
                .with_context(|| format!("model {name}: reading its manifest"))?;
            Ok(feature_plan(name, &manifest))
        })
        .collect()
}

/// The feature plan of model `name`'s `manifest`, warning when no event can supply one
/// of its declared scalars.
pub(crate) fn feature_plan(name: &str, manifest: &reflex_models::Manifest) -> FeaturePlan {
    let plan = FeaturePlan::of(manifest);
    if let Some(scalar) = plan.unsupported_scalar() {
        tracing::warn!(model = name, %scalar, "the model declares a scalar no event carries: its routes' records have no features");
    }
    plan
}

/// The recorder thread: journals each published decision and acks it once durable.
fn start_recorder(
    config: &Config,
    journal: &Option<Arc<Journal>>,
    (rx, tx): (flume::Receiver<RecorderMsg>, &flume::Sender<RecorderMsg>),
    client: &AsyncClient,
    session: &Session,
    metrics: &Arc<Metrics>,
    monitor: &Option<Arc<LiveMonitor>>,
) -> anyhow::Result<JoinHandle<()>> {
    let appender = journal
        .as_ref()
        .zip(config.journal.as_ref())
        .map(|(j, jc)| journal::start_appender(j, jc, tx, metrics));
    let r = Recorder {
        node: config.node.name.clone(),
        rx,
        appender,
        client: client.clone(),
        session: session.clone(),
        metrics: metrics.clone(),
        monitor: monitor.clone(),
    };
    Ok(std::thread::Builder::new()
        .name("reflex-recorder".into())
        .spawn(move || r.run())?)
}

/// The alert publisher (with monitoring) and the uploader (when configured). The uploader
/// stops at the shutdown trigger (a batch in flight is kept in the journal and re-sent,
/// with the same id, after the restart).
fn start_uploads_and_alerts(
    config: &Config,
    journal: &Option<Arc<Journal>>,
    monitor: &Option<Arc<LiveMonitor>>,
    client: &AsyncClient,
    metrics: &Metrics,
    tasks: &TaskTracker,
    tokens: &Tokens,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let alerts = monitor.as_ref().map(|m| {
        let mut publisher = AlertPublisher::new(m.clone());
        // Closed windows ride with the uploads (kept in the journal until one carries them).
        if config.upload.is_some() {
            publisher.windows_to = journal.clone();
        }
        tasks.spawn(publisher.run(client.clone(), tokens.monitor.clone()))
    });
    if let (Some(j), Some(uc)) = (journal, &config.upload) {
        let uploader =
            reflex_journal::upload::Uploader::new(j.clone(), journal::upload_config(config, uc)?)
                .context("starting the uploader")?;
        metrics.attach_upload(uploader.stats());
        tracing::info!(url = %uc.url, "uploading the journal");
        tasks.spawn(uploader.run(tokens.upload.clone()));
    }
    Ok(alerts)
}

/// The intake's event loop, handing publishes to `decoder`.
fn new_ingest<D>(
    config: &Config,
    (eventloop, routes): (rumqttc::EventLoop, &SharedRoutes),
    client: &AsyncClient,
    session: &Session,
    decoder: D,
    metrics: &Arc<Metrics>,
    link: Arc<LinkState>,
) -> Ingest<D> {
    Ingest {
        eventloop,
        client: client.clone(),
        dispatcher: decoder,
        metrics: metrics.clone(),
        subscriptions: routes.clone(),
        backoff: config.mqtt.reconnect_backoff(),
        // With a journal, a QoS 1 event is acked once journaled.
        ack_after_journal: config.journal.is_some(),
        session: session.clone(),
        unsent_acks: Default::default(),
        link,
    }
}

/// Readiness of the MQTT link and the journal; the intake counts as wedged after the
/// limit its event loop's own keep-alive and connection timeout give.
fn new_readiness(
    config: &Config,
    eventloop: &rumqttc::EventLoop,
    link: &Arc<LinkState>,
    journal: &Option<Arc<Journal>>,
) -> Arc<Readiness> {
    let wedge_after = crate::ops::readiness::wedge_limit(
        eventloop.mqtt_options.keep_alive(),
        std::time::Duration::from_secs(eventloop.network_options.connection_timeout()),
        config.mqtt.reconnect_backoff().1,
    );
    Arc::new(Readiness::new(link.clone(), journal.clone(), wedge_after))
}

/// The MQTT event loop on a thread of its own, with a single-threaded runtime: the
/// engine's threads wake that one thread (one eventfd write) when they queue a command,
/// instead of the shared runtime's inject queue and whichever of its workers is parked,
/// and the socket is never polled behind the metrics endpoint, the uploader or a reload.
/// It stays on the normal scheduler: under SCHED_FIFO it would take the broker's core
/// from it. Returns the thread and what fires when the event loop has returned.
fn start_intake<D: crate::pipeline::types::Dispatch + Send + 'static>(
    ingest: Ingest<D>,
    gate: &IntakeGate,
    tokens: &Tokens,
) -> anyhow::Result<(JoinHandle<()>, tokio::sync::oneshot::Receiver<()>)> {
    let (finished, done) = tokio::sync::oneshot::channel::<()>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the MQTT thread's runtime")?;
    let (gate, hard) = (gate.clone(), tokens.root.clone());
    let link = ingest.link.clone();
    let thread = std::thread::Builder::new()
        .name("reflex-mqtt".into())
        .spawn(move || {
            rt.block_on(ingest.run(gate, hard));
            link.stopped();
            let _ = finished.send(());
        })?;
    Ok((thread, done))
}

/// The metrics endpoint (loopback by default), when enabled.
async fn start_endpoint(
    config: &Config,
    metrics: &Arc<Metrics>,
    bad_input: &BadInputLog,
    tasks: &TaskTracker,
    tokens: &Tokens,
) -> anyhow::Result<()> {
    if !config.metrics.enabled {
        return Ok(());
    }
    let addr = config.metrics.listen_addr().context("metrics.listen")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
    tracing::info!(%addr, "metrics endpoint listening");
    tasks.spawn(crate::ops::metrics::serve(
        listener,
        metrics.clone(),
        bad_input.clone(),
        tokens.root.clone(),
    ));
    Ok(())
}

/// systemd: READY now, WATCHDOG while the real-time loop turns and the intake is not
/// wedged.
fn start_systemd(
    notifier: &Option<crate::ops::systemd::Notifier>,
    engine: &Arc<Engine>,
    readiness: &Arc<Readiness>,
    tasks: &TaskTracker,
    tokens: &Tokens,
) {
    if let Some(n) = notifier {
        let _ = n.ready();
    }
    if let (Some(n), Some(period)) = (
        crate::ops::systemd::Notifier::from_env(),
        crate::ops::systemd::watchdog_interval(),
    ) {
        tasks.spawn(watchdog::run(
            n,
            period,
            engine.clone(),
            readiness.clone(),
            tokens.root.clone(),
        ));
    }
}

/// Commands from the deciding threads straight to the client from now on, and the
/// actuator task for those that cannot go at once.
fn start_actuator(
    actuation: &Actuation,
    publisher: CommandPublisher,
    rx: tokio::sync::mpsc::UnboundedReceiver<crate::pipeline::types::Outbound>,
    tasks: &TaskTracker,
    tokens: &Tokens,
) -> tokio::task::JoinHandle<()> {
    actuation.publish_directly(publisher.clone());
    let actuator = Actuator {
        rx,
        backlog: actuation.actuator_backlog(),
        publisher,
    };
    tasks.spawn(actuator.run(tokens.actuator.clone()))
}
