//! Configuration and model reload.
//!
//! On SIGHUP, when the daemon was started from layered sources ([`Reloader::sources`]),
//! the configuration is read again from every layer (files, conf.d, environment) and
//! validated, files included, off the async runtime; [`crate::config::reload::plan`]
//! decides what of it applies. An invalid configuration, a changed restart-only setting or
//! a budget a route's model cannot meet (under `on_budget_unmeetable = "refuse"`, checked
//! against the models' calibration now) is refused as a whole (logged with every reason,
//! counted in `reflexd_config_reloads_total{result="refused"}`) and the old configuration
//! keeps running; otherwise the new one replaces it (`result="applied"`), in this order:
//! the safety margin and the monitor's judgement settings; the routes' fallbacks and
//! feature plans (`pipeline::features::RoutePlans`: a route switched to another model, or
//! added, journals the new model's features for the events accepted after the swap); the
//! new route table (swapped whole: events accepted before keep their route version, and
//! their records its features); the subscriptions of added
//! routes (and of routes whose `qos_in` changed) on the live connection; the
//! unsubscriptions of removed routes; the watched files; then the models whose settings
//! changed are loaded again. A subscription the client cannot queue is logged; the
//! intake subscribes every configured route again at the next ConnAck.
//!
//! Model hot reload: on SIGHUP, or when a watched model's manifest or ONNX file changes
//! (checked every second), the model is loaded, verified and calibrated like at start,
//! off the async runtime; only then are the workers given their new instances (events in
//! flight finish on the old one), the serving identity, calibrated latencies and the
//! features its routes' records carry swapped, and the monitor's reference profile
//! replaced. A model that fails any check is refused
//! (logged, counted) and the old one keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::config::reload::{plan, unmeetable_budgets, ReloadPlan, ReloadRefused};
use crate::config::{load_layered, Config, Sources};
use crate::monitor::{reference_from_manifest, LiveMonitor};
use crate::ops::readiness::LinkState;
use crate::pipeline::features::RoutePlans;
use crate::pipeline::infer::threads::Reload;
use crate::pipeline::infer::{Engine, Fallbacks};
use crate::pipeline::routes::{RouteTable, SharedRoutes};
use crate::pipeline::types::{qos, WindowShape};
use crate::service::models::{load_model, model_ref, route_fallbacks, LoadedModel};

fn mtime(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The live monitor judges the routes of reloaded model `name` against its (possibly new)
/// manifest's reference profile; a reference that cannot be used is logged, the old one
/// stays.
fn swap_reference(
    monitor: &LiveMonitor,
    config: &Config,
    table: &RouteTable,
    name: &str,
    only: Option<&[String]>,
) {
    let reference = reflex_models::Manifest::load(&config.models[name].manifest)
        .map_err(anyhow::Error::from)
        .and_then(|m| reference_from_manifest(&m).map_err(anyhow::Error::from));
    for route in &config.routes {
        if route.model != name || only.is_some_and(|o| !o.contains(&route.name)) {
            continue;
        }
        // The monitor's routes are the slots of the routes configured at start.
        let Some(i) = table
            .active()
            .find(|r| r.name == route.name)
            .map(|r| r.slot)
        else {
            continue;
        };
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

/// A model whose files are watched: its index, name and files.
struct Watched {
    idx: usize,
    name: String,
    paths: Vec<PathBuf>,
    seen: Vec<Option<SystemTime>>,
}

/// The models with `hot_reload`, and their manifest and ONNX files.
fn watched(config: &Config) -> Vec<Watched> {
    config
        .models
        .iter()
        .enumerate()
        .filter(|(_, (_, m))| m.hot_reload)
        .map(|(idx, (name, m))| {
            let onnx = reflex_models::Manifest::load(&m.manifest)
                .ok()
                .and_then(|man| man.file_path(&m.manifest));
            let paths: Vec<PathBuf> = std::iter::once(m.manifest.clone()).chain(onnx).collect();
            Watched {
                idx,
                name: name.clone(),
                seen: paths.iter().map(mtime).collect(),
                paths,
            }
        })
        .collect()
}

/// What a reload changes of the routes: the table the stages read, the client that
/// subscribes on the live connection, and the link state that counts subscriptions.
pub struct LiveRoutes {
    /// The route table shared with the stages.
    pub table: SharedRoutes,
    /// The feature plans of its route versions, registered before a table is stored.
    pub plans: Arc<RoutePlans>,
    /// The MQTT client (subscribe, unsubscribe; awaited here, never in the intake).
    pub client: rumqttc::AsyncClient,
    /// Readiness's count of subscriptions.
    pub link: Arc<LinkState>,
}

/// What reloads the configuration and models: the engine, the workers' reload channels
/// and the monitor.
pub struct Reloader {
    /// The running configuration.
    pub config: Config,
    /// Where it was read from; `None`: SIGHUP reloads the models only.
    pub sources: Option<Sources>,
    /// The engine whose model slots are swapped.
    pub engine: Arc<Engine>,
    /// One per worker.
    pub txs: Vec<flume::Sender<Reload>>,
    /// The live monitor, whose reference profiles follow the models.
    pub monitor: Option<Arc<LiveMonitor>>,
    /// The routes a reload changes.
    pub routes: LiveRoutes,
}

impl Reloader {
    /// Reloads models on SIGHUP or when a file changes: load, verify, calibrate, then swap.
    /// Returns at `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut watched = watched(&self.config);
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let forced = tokio::select! {
                _ = stop.cancelled() => return,
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
                _ = tick.tick() => false,
            };
            let mut changed_models = Vec::new();
            if forced && self.sources.is_some() {
                if let Some(models) = self.reload_config().await {
                    watched = crate::service::reload::watched(&self.config);
                    changed_models = models;
                }
            }
            for (idx, name) in self.config.models.keys().enumerate() {
                let is_watched = watched.iter().any(|w| w.idx == idx);
                if changed_models.contains(name) && !is_watched {
                    self.reload(idx, name).await;
                }
            }
            for w in &mut watched {
                let now: Vec<Option<SystemTime>> = w.paths.iter().map(mtime).collect();
                if !forced && now == w.seen {
                    continue;
                }
                w.seen = now;
                self.reload(w.idx, &w.name).await;
            }
        }
    }

    /// Reads and validates the configuration's layers again and applies it when only
    /// reloadable settings changed; returns the models to load again, or `None` when
    /// it was refused (logged, counted) and the old configuration kept.
    async fn reload_config(&mut self) -> Option<Vec<String>> {
        let sources = self.sources.clone()?;
        let loaded = tokio::task::spawn_blocking(move || {
            let layered = load_layered(&sources, std::env::vars())
                .map_err(|e| ReloadRefused::Invalid(e.to_string()))?;
            let file_errors = layered.config.check_files();
            if !file_errors.is_empty() {
                let lines: Vec<String> = layered
                    .attribute(file_errors)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                return Err(ReloadRefused::Invalid(lines.join("; ")));
            }
            Ok(layered.config)
        })
        .await;
        let result = match loaded {
            Ok(Ok(new)) => plan(&self.config, &new)
                .and_then(|p| self.prepare(&new, &p).map(|table| (new, p, table))),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(ReloadRefused::Invalid(format!(
                "the reload task failed: {e}"
            ))),
        };
        let metrics = &self.engine.metrics;
        match result {
            Ok((new, p, table)) => {
                let old = std::mem::replace(&mut self.config, new);
                self.apply(&old, &p, table).await;
                metrics.config_reload(true);
                tracing::info!(
                    changed = p.changed.join(", "),
                    models = p.models.join(", "),
                    added = p.added.join(", "),
                    removed = p.removed.join(", "),
                    "configuration reloaded"
                );
                Some(p.models)
            }
            Err(e) => {
                metrics.config_reload(false);
                tracing::error!(error = %e, "configuration reload refused; the old configuration keeps running");
                None
            }
        }
    }

    /// The checks a plan must pass that need the running daemon (the models' calibration,
    /// the metrics' route slots), and the route table it will swap in. Changes nothing.
    fn prepare(
        &self,
        new: &Config,
        p: &ReloadPlan,
    ) -> Result<(RouteTable, Fallbacks), ReloadRefused> {
        if p.check_budgets {
            let p999 = |model: &str| {
                let idx = new.models.keys().position(|m| m == model)?;
                let d = self.engine.models.get(idx)?.expected(1);
                (!d.is_zero()).then_some(d)
            };
            let (refuse, warn) = unmeetable_budgets(new, p999);
            if !refuse.is_empty() {
                return Err(ReloadRefused::BudgetUnmeetable(refuse));
            }
            for w in warn {
                tracing::warn!(route = %w, "budget cannot be met by the model; the fallback will answer");
            }
        }
        let table = self
            .routes
            .table
            .load()
            .next(new)
            .map_err(|e| ReloadRefused::Invalid(e.to_string()))?;
        for r in table.active() {
            if !self.engine.metrics.route_slot_free(r.slot, &r.name) {
                return Err(ReloadRefused::NoRouteSlot(r.name.clone()));
            }
        }
        // Routes added, or whose model or fallback changed, get their fallback built and
        // timed here; the others keep theirs.
        let running = self.engine.fallbacks();
        let fallbacks = route_fallbacks(
            new,
            &table,
            |m| self.engine.models[m].input.get(),
            Some((&self.config, &running)),
        )
        .map_err(|e| ReloadRefused::Invalid(format!("{e:#}")))?;
        Ok((table, fallbacks))
    }

    /// Applies a prepared plan: margin, monitor judgement, route table, subscriptions.
    async fn apply(
        &self,
        old: &Config,
        p: &ReloadPlan,
        (table, fallbacks): (RouteTable, Fallbacks),
    ) {
        let metrics = &self.engine.metrics;
        if p.margin {
            let margin = self.config.scheduler.safety_margin();
            self.engine.set_margin(margin);
            metrics.set_safety_margin(margin);
        }
        if let (true, Some(m)) = (p.monitor, &self.monitor) {
            if let Err(e) = m.set_judgement(&self.config.monitor) {
                tracing::error!(error = %e, "the monitor kept its judgement settings");
            }
        }
        if !p.routes {
            return;
        }
        for r in table.active() {
            metrics.add_route(r.slot, &r.name);
            metrics.set_route_budget(r.slot, r.budget);
            let slot = &self.engine.models[r.model];
            let current = slot.current.lock().expect("model ref lock").clone();
            let p999 = u64::try_from(slot.expected(1).as_nanos()).unwrap_or(u64::MAX);
            metrics.set_model_info(r.slot, &current.name, &current.version, p999);
        }
        let table = Arc::new(table);
        // The fallbacks and feature plans first: an event accepted under the new table
        // finds its route's.
        self.engine.set_fallbacks(fallbacks);
        self.routes.plans.routes_changed(&table);
        self.routes.table.store(table.clone());
        self.engine.routes_changed();
        let client = &self.routes.client;
        let find = |name: &String| table.active().find(|r| r.name == *name);
        let mut renewed = 0;
        for r in p.added.iter().chain(&p.resubscribe).filter_map(find) {
            match client
                .subscribe(r.topic_filter.clone(), qos(r.qos_in))
                .await
            {
                Ok(()) => renewed += usize::from(!p.added.contains(&r.name)),
                Err(e) => tracing::error!(route = %r.name, filter = %r.topic_filter, error = %e,
                    "could not subscribe; the route is subscribed at the next connection"),
            }
        }
        for name in &p.removed {
            let Some(r) = old.routes.iter().find(|r| r.name == *name) else {
                continue;
            };
            if let Some(slot) = table.slots().iter().find(|s| s.name == *name) {
                metrics.clear_model_info(slot.slot);
                metrics.set_route_budget(slot.slot, Duration::ZERO);
            }
            // Another configured route may use the same filter (renamed): keep it.
            if table.active().any(|a| a.topic_filter == r.topic_filter) {
                continue;
            }
            if let Err(e) = client.unsubscribe(r.topic_filter.clone()).await {
                tracing::error!(route = %name, error = %e, "could not unsubscribe");
            }
        }
        self.routes
            .link
            .routes_changed(p.added.len(), p.removed.len(), renewed);
        if let Some(m) = &self.monitor {
            for r in &p.new_model {
                if let Some(route) = self.config.routes.iter().find(|c| c.name == *r) {
                    swap_reference(
                        m,
                        &self.config,
                        &table,
                        &route.model,
                        Some(std::slice::from_ref(r)),
                    );
                }
            }
        }
    }

    /// Loads model `name` (index `idx`) again and swaps it in, or refuses it.
    async fn reload(&self, idx: usize, name: &str) {
        let cfg = self.config.clone();
        let n = name.to_owned();
        let count = self.txs.len();
        let result = tokio::task::spawn_blocking(move || load_model(&cfg, &n, count)).await;
        match result {
            Ok(Ok(loaded)) => self.swap(idx, name, loaded),
            Ok(Err(e)) => {
                self.engine.metrics.model_reload(false);
                tracing::error!(
                    model = name,
                    error = format!("{e:#}"),
                    "model reload refused; the old model keeps serving"
                );
            }
            Err(e) => tracing::error!(model = name, error = %e, "model reload task failed"),
        }
    }

    fn swap(&self, idx: usize, name: &str, loaded: LoadedModel) {
        let first = loaded.first();
        let profile = *loaded.profile();
        let slot = &self.engine.models[idx];
        *slot.current.lock().expect("model ref lock") = model_ref(first.name(), first.version());
        slot.set_expected(&loaded.p999_ns());
        // Before the workers get the new model: the decode stage checks events against it.
        slot.input.set(WindowShape::of_model(first));
        let table = self.routes.table.load();
        for route in self.config.routes.iter().filter(|r| r.model == name) {
            if let Some(r) = table.active().find(|r| r.name == route.name) {
                self.engine.metrics.set_model_info(
                    r.slot,
                    first.name(),
                    first.version(),
                    profile.p999,
                );
            }
        }
        tracing::info!(
            model = name,
            version = first.version(),
            p999_us = profile.p999 / 1000,
            "model reloaded"
        );
        self.engine.metrics.model_reload(true);
        self.swap_plan(idx, name);
        // One instance per worker was loaded; events in flight finish on the old one.
        for (tx, m) in self.txs.iter().zip(loaded.instances) {
            let _ = tx.send((idx, m));
        }
        if let Some(m) = &self.monitor {
            swap_reference(m, &self.config, &table, name, None);
        }
    }

    /// The records of model `name`'s routes get the features its (possibly new) manifest
    /// declares; a manifest that cannot be read is logged and the old plan stays.
    fn swap_plan(&self, idx: usize, name: &str) {
        match reflex_models::Manifest::load(&self.config.models[name].manifest) {
            Ok(m) => self
                .routes
                .plans
                .model_changed(idx, crate::runner::feature_plan(name, &m)),
            Err(e) => tracing::error!(model = name, error = %e,
                "the reloaded model's declared features are not used; its records keep the old ones"),
        }
    }
}
