//! Configuration and model reload.
//!
//! On SIGHUP, when the daemon was started from layered sources ([`Reloader::sources`]),
//! the configuration is read again from every layer (files, conf.d, environment) and
//! validated, files included, off the async runtime; [`crate::config::reload::plan`]
//! decides what of it applies. An invalid configuration or a changed restart-only setting
//! is refused as a whole (logged with every reason, counted in
//! `reflexd_config_reloads_total{result="refused"}`) and the old configuration keeps
//! running; otherwise the new one replaces it (`result="applied"`), the watched files
//! follow it, and the models whose settings changed are loaded again.
//!
//! Model hot reload: on SIGHUP, or when a watched model's manifest or ONNX file changes
//! (checked every second), the model is loaded, verified and calibrated like at start,
//! off the async runtime; only then are the workers given their new instances (events in
//! flight finish on the old one), the serving identity and calibrated latencies swapped,
//! and the monitor's reference profile replaced. A model that fails any check is refused
//! (logged, counted) and the old one keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::config::reload::{plan, ReloadRefused};
use crate::config::{load_layered, Config, Sources};
use crate::monitor::{reference_from_manifest, LiveMonitor};
use crate::pipeline::infer::threads::Reload;
use crate::pipeline::infer::Engine;
use crate::pipeline::types::WindowShape;
use crate::service::models::{load_model, model_ref, report_model_info, LoadedModel};

fn mtime(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The live monitor judges the routes of reloaded model `name` against its (possibly new)
/// manifest's reference profile; a reference that cannot be used is logged, the old one
/// stays.
fn swap_reference(monitor: &LiveMonitor, config: &Config, name: &str) {
    let reference = reflex_models::Manifest::load(&config.models[name].manifest)
        .map_err(anyhow::Error::from)
        .and_then(|m| reference_from_manifest(&m).map_err(anyhow::Error::from));
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
            Ok(Ok(new)) => plan(&self.config, &new).map(|p| (new, p)),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(ReloadRefused::Invalid(format!(
                "the reload task failed: {e}"
            ))),
        };
        let metrics = &self.engine.metrics;
        match result {
            Ok((new, p)) => {
                metrics.config_reload(true);
                tracing::info!(
                    changed = p.changed.join(", "),
                    models = p.models.join(", "),
                    "configuration reloaded"
                );
                self.config = new;
                Some(p.models)
            }
            Err(e) => {
                metrics.config_reload(false);
                tracing::error!(error = %e, "configuration reload refused; the old configuration keeps running");
                None
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
        report_model_info(&self.engine.metrics, &self.config, name, first, &profile);
        tracing::info!(
            model = name,
            version = first.version(),
            p999_us = profile.p999 / 1000,
            "model reloaded"
        );
        self.engine.metrics.model_reload(true);
        // One instance per worker was loaded; events in flight finish on the old one.
        for (tx, m) in self.txs.iter().zip(loaded.instances) {
            let _ = tx.send((idx, m));
        }
        if let Some(m) = &self.monitor {
            swap_reference(m, &self.config, name);
        }
    }
}
