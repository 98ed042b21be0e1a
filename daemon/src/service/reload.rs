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

use crate::config::Config;
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

/// What reloads models: the engine, the workers' reload channels and the monitor.
pub struct Reloader {
    /// The configuration.
    pub config: Config,
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
    pub async fn run(self, stop: CancellationToken) {
        let mut watched = watched(&self.config);
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let forced = tokio::select! {
                _ = stop.cancelled() => return,
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
                _ = tick.tick() => false,
            };
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
