//! The background verification of models that started serving on cached checks
//! ([`crate::service::model_cache`]): once serving has started, one thread loads each such
//! model again and runs its golden vectors under `SCHED_IDLE` (only when no other thread
//! wants the core: never ahead of the workers, the MQTT thread or the broker), then
//! calibrates it the way a start without a cache does (on the workers' scheduling class).
//!
//! - Golden vectors reproduced: the cache entry is rewritten with the fresh profiles. The
//!   serving profiles stay the cached ones until the next reload or start.
//! - Golden check failed (or the model no longer loads): the model's routes are answered
//!   by its fallback from then on (its expected latencies become unbounded, so admission
//!   sends every event to the fallback), `reflexd_model_verification_failures_total{model}`
//!   counts it and an ERROR names the mismatch. A later hot reload that passes its checks
//!   puts a model back. The cache entry is left as it was: the next start serves on it
//!   and re-checks again.
//!
//! The thread stops between models and between steps once `stop` fires; it is not
//! joined (a calibration in progress ends with the process).

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use reflex_models::golden::GoldenReport;
use reflex_models::Batches;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pipeline::infer::{realtime, Engine};
use crate::service::models::{cache_key, calibrate_all, check_golden, load_instances, store};

/// What the verifier needs.
pub struct Verifier {
    /// The configuration.
    pub config: Config,
    /// The cache the models' profiles came from.
    pub cache_dir: PathBuf,
    /// This machine's CPU string (as in the cache key).
    pub cpu: String,
    /// The engine whose model slots a failed model is taken out of.
    pub engine: Arc<Engine>,
    /// Names of the models to verify, in configuration order.
    pub models: Vec<String>,
}

impl Verifier {
    /// Starts the verification thread (none when there is nothing to verify).
    pub fn spawn(self, stop: CancellationToken) -> std::io::Result<Option<JoinHandle<()>>> {
        if self.models.is_empty() {
            return Ok(None);
        }
        std::thread::Builder::new()
            .name("reflex-verify".into())
            .spawn(move || self.run(&stop))
            .map(Some)
    }

    fn run(&self, stop: &CancellationToken) {
        for name in &self.models {
            if stop.is_cancelled() {
                return;
            }
            match self.golden_at_idle(name) {
                Ok((model, golden)) => self.recalibrate(name, model, golden.as_ref(), stop),
                Err(e) => self.fall_back(name, &e),
            }
        }
    }

    /// Loads one instance of `name` and runs its golden vectors, on a `SCHED_IDLE` thread.
    fn golden_at_idle(&self, name: &str) -> anyhow::Result<(Batches, Option<GoldenReport>)> {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("reflex-verify-idle".into())
                .spawn_scoped(scope, || {
                    if let Err(e) = realtime::enter_idle() {
                        tracing::debug!(error = %e, "SCHED_IDLE refused; verifying at normal priority");
                    }
                    let mut model = load_instances(&self.config, name, 1)?.remove(0);
                    let golden = check_golden(name, &mut model)?;
                    Ok((model, golden))
                })?
                .join()
                .map_err(|_| anyhow::anyhow!("the verification thread panicked"))?
        })
    }

    /// Calibrates `name` again and rewrites its cache entry.
    fn recalibrate(
        &self,
        name: &str,
        mut model: Batches,
        golden: Option<&GoldenReport>,
        stop: &CancellationToken,
    ) {
        if stop.is_cancelled() {
            return;
        }
        let refreshed = cache_key(&self.config, name, model.first(), &self.cpu).and_then(|key| {
            let profiles = calibrate_all(&self.config, name, &mut model)?;
            Ok((key, profiles))
        });
        match refreshed {
            Ok((key, profiles)) if !stop.is_cancelled() => {
                store(&self.cache_dir, name, key, golden, &profiles);
                tracing::info!(
                    model = name,
                    p999_us = profiles[0].p999 / 1000,
                    "model verified in the background; cache refreshed"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                model = name,
                error = format!("{e:#}"),
                "background calibration failed; the cache entry is kept"
            ),
        }
    }

    /// Takes model `name` out of service: its routes get the fallback.
    fn fall_back(&self, name: &str, error: &anyhow::Error) {
        let Some(idx) = self.config.models.keys().position(|m| m == name) else {
            return;
        };
        let slot = &self.engine.models[idx];
        slot.set_expected(&vec![u64::MAX; slot.expected_ns.len()]);
        let metrics = &self.engine.metrics;
        metrics.model_verification_failed(name);
        for (r, _) in self
            .config
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.model == name)
        {
            if let Some(f) = self.engine.fallback(r) {
                metrics.set_model_info(r, &f.model.name, &f.model.version, 0);
            }
        }
        tracing::error!(
            model = name,
            error = format!("{error:#}"),
            "the model failed its background verification; its fallback answers its routes until a reload passes"
        );
    }
}
