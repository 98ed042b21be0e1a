//! Models for the engine: loaded (checksum verified), checked against their golden
//! vectors, calibrated on the workers' scheduling class, checked against the budgets of
//! the routes that use them, and paired with their fallbacks; and `reflexd selftest`,
//! which does the same without serving.
//!
//! At start ([`load_all`]) with a model cache ([`StartCache`]), a model whose entry
//! matches its [`CacheKey`] skips the golden check and calibration: it serves on the
//! cached profiles (still budget-checked) and is reported in [`Serving::from_cache`], for
//! [`crate::service::verify`] to check in the background. Without a usable entry it is
//! checked and calibrated as always and the entry is written. Reloads and `selftest`
//! always check and calibrate, and neither reads nor writes the cache.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use reflex_models::golden::GoldenReport;
use reflex_models::{Batches, Fallback, Manifest, Model};
use reflex_wire::{Action, ModelRef, SensorEvent};

use crate::config::policy::action_of;
use crate::config::{Config, FallbackConfig, OnBudgetUnmeetable, RouteConfig};
use crate::ops::metrics::Metrics;
use crate::pipeline::infer::fallback::{self, FallbackKind, RouteFallback, Rule, Test};
use crate::pipeline::infer::schedule::{self, LatencyProfile};
use crate::pipeline::infer::{Fallbacks, ModelSlot};
use crate::pipeline::routes::RouteTable;
#[cfg(feature = "demo")]
use crate::pipeline::types::window_g;
use crate::pipeline::types::{Clock, InputShape, WindowShape};
use crate::service::model_cache::{
    self, CacheEntry, CacheKey, CachedGolden, CachedProfile, Lookup,
};

/// `name` and `version` as a command's model identity (truncated to the wire's limits).
pub fn model_ref(name: &str, version: &str) -> ModelRef {
    let mut n = heapless::String::new();
    let _ = n.push_str(&name[..name.len().min(reflex_wire::MAX_MODEL_NAME_LEN)]);
    let mut v = heapless::String::new();
    let _ = v.push_str(&version[..version.len().min(reflex_wire::MAX_MODEL_VERSION_LEN)]);
    ModelRef {
        name: n,
        version: v,
    }
}

/// Representative windows for calibration, with their temperatures: for a format-2
/// model its golden inputs (temperature 0: a format-2 model reads none), or
/// [`synthetic_windows`] of its input length when the manifest has none; for format 1,
/// [`format1_windows`].
fn calibration_windows(model: &Model) -> anyhow::Result<Vec<(Vec<f32>, f32)>> {
    let Some(f2) = &model.manifest().format2 else {
        return format1_windows(model);
    };
    let Some(spec) = &f2.golden else {
        return Ok(synthetic_windows(model.input_len()));
    };
    let set = reflex_models::golden::GoldenValues::load(
        spec,
        model.manifest_path(),
        model.input_dims(),
        model.output_len(),
    )?;
    Ok((0..set.len())
        .map(|i| (set.input(i).to_vec(), 0.0))
        .collect())
}

/// Format 1's calibration windows: what the simulator's devices send, one window per
/// simulated condition.
#[cfg(feature = "demo")]
fn format1_windows(_model: &Model) -> anyhow::Result<Vec<(Vec<f32>, f32)>> {
    use reflex_sim::device::SimDevice;
    use reflex_sim::signal::{Condition, Distortion};
    Ok(Condition::ALL
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let ev = SimDevice::new(i as u32, c, 1).next_event(0, Distortion::NONE);
            (window_g(&ev), ev.temperature_c())
        })
        .collect())
}

/// Format 1's calibration windows in a build without the simulator: the model's golden
/// input windows (the set its manifest names, as the golden check reads them), or
/// [`synthetic_windows`] when the manifest has none.
#[cfg(not(feature = "demo"))]
fn format1_windows(model: &Model) -> anyhow::Result<Vec<(Vec<f32>, f32)>> {
    let Some(spec) = model.manifest().golden.clone() else {
        return Ok(synthetic_windows(model.input_len()));
    };
    let set = reflex_models::golden::GoldenSet::load(
        &spec,
        model.manifest_path(),
        model.classes().len(),
    )?;
    Ok((0..set.len())
        .map(|i| (set.window(i).to_vec(), set.temperature[i]))
        .collect())
}

/// Four deterministic windows of `len` values (for 192: 3 axes × 64 samples in g,
/// channel-major), with temperatures: a sine per third of the window of a different
/// frequency and amplitude in each window, an offset of 1 on the last third (gravity).
fn synthetic_windows(len: usize) -> Vec<(Vec<f32>, f32)> {
    let per_axis = (len / 3).max(1);
    (0..4u8)
        .map(|k| {
            let window = (0..len)
                .map(|i| {
                    let (axis, t) = ((i / per_axis).min(2), i % per_axis);
                    let cycles = f32::from(1 + k) + axis as f32;
                    let phase = std::f32::consts::TAU * cycles * t as f32 / per_axis as f32;
                    let gravity = if axis == 2 { 1.0 } else { 0.0 };
                    gravity + 0.05 * f32::from(1 + k) * phase.sin()
                })
                .collect();
            (window, 25.0 + f32::from(k) * 10.0)
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
                let _ = crate::pipeline::infer::realtime::enter_fifo(realtime_priority);
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
    let examples = calibration_windows(model.first())?;
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
pub struct LoadedModel {
    /// One instance per worker, each planned for 1..=`scheduler.max_batch` windows.
    pub instances: Vec<Batches>,
    /// Calibrated latency of a run on 1, 2, … windows (index = windows − 1).
    pub profiles: Vec<LatencyProfile>,
}

impl LoadedModel {
    /// The first instance's model (its identity).
    pub fn first(&self) -> &Model {
        self.instances[0].first()
    }

    /// The single-window profile: what admission and the budget check use.
    pub fn profile(&self) -> &LatencyProfile {
        &self.profiles[0]
    }

    /// Calibrated p99.9s, ns, of runs on 1, 2, … windows.
    pub fn p999_ns(&self) -> Vec<u64> {
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
pub fn load_model(config: &Config, name: &str, count: usize) -> anyhow::Result<LoadedModel> {
    load_model_with_golden(config, name, count).map(|(loaded, _)| loaded)
}

/// [`load_model`], with the golden check's report.
fn load_model_with_golden(
    config: &Config,
    name: &str,
    count: usize,
) -> anyhow::Result<(LoadedModel, Option<GoldenReport>)> {
    let mut instances = load_instances(config, name, count)?;
    let (profiles, golden) = check_and_calibrate(config, name, &mut instances[0])?;
    Ok((
        LoadedModel {
            instances,
            profiles,
        },
        golden,
    ))
}

/// Golden check, single-window calibration, budget check, batch calibration: what a start
/// without a cache and every reload do before a model serves.
fn check_and_calibrate(
    config: &Config,
    name: &str,
    model: &mut Batches,
) -> anyhow::Result<(Vec<LatencyProfile>, Option<GoldenReport>)> {
    let golden = check_golden(name, model)?;
    let single = calibrate_single(config, name, model)?;
    check_budgets(config, name, &single)?;
    let profiles = calibrate_batches(config, name, model, single)?;
    Ok((profiles, golden))
}

/// `count` (at least one) instances of model `name`, checksum verified, planned for
/// 1..=`scheduler.max_batch` windows.
pub fn load_instances(config: &Config, name: &str, count: usize) -> anyhow::Result<Vec<Batches>> {
    let mc = &config.models[name];
    let max_batch = config.scheduler.max_batch.max(1);
    (0..count.max(1))
        .map(|_| {
            Batches::load(&mc.manifest, max_batch)
                .with_context(|| format!("loading model {name} from {}", mc.manifest.display()))
        })
        .collect()
}

/// Runs `model`'s golden vectors (logged when reproduced); an error when they are not.
/// `None`: the manifest has no golden set.
pub fn check_golden(name: &str, model: &mut Batches) -> anyhow::Result<Option<GoldenReport>> {
    let golden = reflex_models::golden::check(model.single())
        .with_context(|| format!("checking model {name} against its golden vectors"))?;
    if let Some(g) = &golden {
        tracing::info!(
            model = name,
            examples = g.examples,
            max_abs_diff = g.max_abs_diff,
            tolerance = g.tolerance,
            "golden vectors reproduced"
        );
    }
    Ok(golden)
}

/// The single-window profile: the quietest of [`CALIBRATION_ROUNDS`] rounds. A burst of
/// other work on the board during one round (a build, a log rotation) should not refuse a
/// model that meets its budget; load that lasts through every round does.
fn calibrate_single(
    config: &Config,
    name: &str,
    model: &mut Batches,
) -> anyhow::Result<LatencyProfile> {
    let runs = config.models[name].calibration_runs;
    let priority = config.scheduler.realtime_priority;
    let mut profile = calibrate(model, 1, runs, priority)?;
    for _ in 1..CALIBRATION_ROUNDS {
        let again = calibrate(model, 1, runs, priority)?;
        if again.p999 < profile.p999 {
            profile = again;
        }
    }
    Ok(profile)
}

/// `single` followed by one round for each batch size 2..=`scheduler.max_batch`.
fn calibrate_batches(
    config: &Config,
    name: &str,
    model: &mut Batches,
    single: LatencyProfile,
) -> anyhow::Result<Vec<LatencyProfile>> {
    let runs = config.models[name].calibration_runs;
    let priority = config.scheduler.realtime_priority;
    let mut profiles = vec![single];
    for k in 2..=config.scheduler.max_batch.max(1) {
        profiles.push(calibrate(model, k, runs, priority)?);
    }
    Ok(profiles)
}

/// Every profile of `model` as a start without a cache measures them (no budget check).
pub fn calibrate_all(
    config: &Config,
    name: &str,
    model: &mut Batches,
) -> anyhow::Result<Vec<LatencyProfile>> {
    let single = calibrate_single(config, name, model)?;
    calibrate_batches(config, name, model, single)
}

/// Checks every route that uses model `name` against its budget with the single-window
/// `profile`: an error for a route that refuses an unmeetable budget, a warning for one
/// that accepts it.
fn check_budgets(config: &Config, name: &str, profile: &LatencyProfile) -> anyhow::Result<()> {
    for route in config.routes.iter().filter(|r| r.model == name) {
        if let Err(e) =
            schedule::budget_check(profile, route.budget(), config.scheduler.safety_margin())
        {
            match route.on_budget_unmeetable {
                OnBudgetUnmeetable::Refuse => bail!("route {}: {e}", route.name),
                OnBudgetUnmeetable::Warn => {
                    tracing::warn!(route = %route.name, error = %e, "budget cannot be met by the model; the fallback will answer")
                }
            }
        }
    }
    Ok(())
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
    /// Each of its routes' fallback: kind, name and version, measured p99.9.
    pub fallback: String,
}

/// Loads every configured model the way `run` does (checksum, golden vectors,
/// calibration, budget check of its routes) plus its routes' fallbacks (built and timed
/// against the safety margin), without connecting to
/// anything: a conformance check for a board (or an emulator) before it serves.
pub fn selftest(config: &Config) -> anyhow::Result<Vec<SelftestReport>> {
    let mut reports = Vec::new();
    for name in config.models.keys() {
        let (mut loaded, golden) = load_model_with_golden(config, name, 1)?;
        let model = loaded.instances[0].single();
        let shape = WindowShape::of_model(model);
        let mut fallbacks = Vec::new();
        for route in config.routes.iter().filter(|r| r.model == *name) {
            let built = build_fallback(
                config,
                route,
                model.manifest(),
                shape,
                config.scheduler.safety_margin(),
            )?;
            let f = &built.fallback.model;
            fallbacks.push(format!(
                "route {}: {} {} {} p99.9 {} us",
                route.name,
                route.fallback.kind(),
                f.name,
                f.version,
                built.profile.p999.div_ceil(1000)
            ));
        }
        reports.push(SelftestReport {
            model: name.clone(),
            version: model.version().to_owned(),
            golden,
            profile: *loaded.profile(),
            batch_profiles: loaded.profiles,
            fallback: if fallbacks.is_empty() {
                "none (no route)".to_owned()
            } else {
                fallbacks.join("; ")
            },
        });
    }
    Ok(reports)
}

/// Publishes the serving model's identity and calibrated p99.9 on every route that uses
/// the configured model `name` (at start and after each reload).
pub fn report_model_info(
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

/// The model cache at start: its directory and this machine's CPU string.
pub struct StartCache {
    /// Directory of the entries.
    pub dir: PathBuf,
    /// [`model_cache::this_cpu`], read once.
    pub cpu: String,
}

impl StartCache {
    /// The cache in `dir`, for this machine.
    pub fn new(dir: PathBuf) -> StartCache {
        StartCache {
            dir,
            cpu: model_cache::this_cpu(),
        }
    }
}

/// Which windows calibration runs on in this build (part of the cache key).
const CALIBRATION_INPUTS: &str = if cfg!(feature = "demo") {
    "simulator"
} else {
    "golden"
};

/// The cache key of configured model `name`, loaded as `model`, on a machine with `cpu`.
/// Reads the manifest file (its hash is part of the key).
pub fn cache_key(
    config: &Config,
    name: &str,
    model: &Model,
    cpu: &str,
) -> anyhow::Result<CacheKey> {
    let manifest = std::fs::read(model.manifest_path())
        .with_context(|| format!("reading {}", model.manifest_path().display()))?;
    Ok(CacheKey {
        model_sha256: model.manifest().sha256.clone().unwrap_or_default(),
        manifest_sha256: reflex_models::model::sha256_hex(&manifest),
        cpu: cpu.to_owned(),
        reflexd_version: env!("CARGO_PKG_VERSION").to_owned(),
        calibration_inputs: CALIBRATION_INPUTS.to_owned(),
        calibration_runs: config.models[name].calibration_runs,
        calibration_rounds: CALIBRATION_ROUNDS,
        max_batch: config.scheduler.max_batch.max(1),
        realtime_priority: config.scheduler.realtime_priority,
    })
}

/// Writes the cache entry of model `name`; a failure is logged (the cache is an
/// optimisation: serving goes on without it).
pub fn store(
    dir: &Path,
    name: &str,
    key: CacheKey,
    golden: Option<&GoldenReport>,
    profiles: &[LatencyProfile],
) {
    let entry = CacheEntry {
        format: model_cache::FORMAT,
        key,
        golden: golden.map(|g| CachedGolden {
            examples: g.examples,
            max_abs_diff: g.max_abs_diff,
            tolerance: g.tolerance,
        }),
        profiles: profiles.iter().map(CachedProfile::from).collect(),
    };
    match model_cache::write(dir, name, &entry) {
        Ok(()) => {
            tracing::debug!(model = name, path = %model_cache::entry_path(dir, name).display(), "model cache written")
        }
        Err(e) => {
            tracing::warn!(model = name, error = %e, "the model cache could not be written; the next start checks and calibrates again")
        }
    }
}

/// Loads model `name` for serving: with a usable cache entry, its profiles are taken as
/// they are (true: the golden check and calibration are owed in the background); without
/// one, the model is checked and calibrated as [`load_model`] does and the entry written.
fn load_for_start(
    config: &Config,
    name: &str,
    count: usize,
    cache: Option<&StartCache>,
) -> anyhow::Result<(LoadedModel, bool)> {
    let Some(cache) = cache else {
        return Ok((load_model(config, name, count)?, false));
    };
    let mut instances = load_instances(config, name, count)?;
    let key = cache_key(config, name, instances[0].first(), &cache.cpu)?;
    let path = model_cache::entry_path(&cache.dir, name);
    match model_cache::read(&cache.dir, name, &key) {
        Lookup::Hit(entry) => {
            let profiles = entry.latency_profiles();
            check_budgets(config, name, &profiles[0])?;
            tracing::info!(model = name, path = %path.display(),
                "model profile taken from the cache; golden vectors and calibration run again in the background");
            return Ok((
                LoadedModel {
                    instances,
                    profiles,
                },
                true,
            ));
        }
        Lookup::Absent => tracing::info!(model = name, path = %path.display(),
            "no cached checks for the model: checking and calibrating before serving"),
        Lookup::Unusable(e) => tracing::warn!(model = name, error = %e,
            "the model cache entry is not used: checking and calibrating before serving"),
    }
    let (profiles, golden) = check_and_calibrate(config, name, &mut instances[0])?;
    store(&cache.dir, name, key, golden.as_ref(), &profiles);
    Ok((
        LoadedModel {
            instances,
            profiles,
        },
        false,
    ))
}

/// The models as the engine takes them.
pub struct Serving {
    /// One slot per configured model (identity, calibrated latencies), in
    /// configuration order.
    pub slots: Vec<ModelSlot>,
    /// Each route's fallback, by route slot (configuration order at start).
    pub fallbacks: Fallbacks,
    /// One instance per worker of each model (outer: by worker; inner: by model).
    pub per_worker: Vec<Vec<Batches>>,
    /// The models that serve on cached profiles: their checks are owed in the background
    /// ([`crate::service::verify`]).
    pub from_cache: Vec<String>,
}

/// Every configured model for the engine, with `cache` when there is one (see
/// [`load_for_start`]).
pub fn load_all(
    config: &Config,
    workers: usize,
    metrics: &Metrics,
    cache: Option<&StartCache>,
) -> anyhow::Result<Serving> {
    metrics.track_models(&config.models.keys().cloned().collect::<Vec<_>>());
    let mut per_worker: Vec<Vec<Batches>> = (0..workers).map(|_| Vec::new()).collect();
    let mut slots = Vec::new();
    let mut from_cache = Vec::new();
    for name in config.models.keys() {
        let (loaded, cached) = load_for_start(config, name, workers, cache)?;
        let profile = *loaded.profile();
        let first = loaded.first();
        tracing::info!(
            model = name,
            version = first.version(),
            from_cache = cached,
            p50_us = profile.p50 / 1000,
            p999_us = profile.p999 / 1000,
            batch_p999_us = ?loaded.p999_ns().iter().map(|ns| ns / 1000).collect::<Vec<_>>(),
            "model calibrated"
        );
        report_model_info(metrics, config, name, first, &profile);
        slots.push(ModelSlot {
            current: Mutex::new(model_ref(first.name(), first.version())),
            expected_ns: loaded.p999_ns().into_iter().map(AtomicU64::new).collect(),
            input: InputShape::new(WindowShape::of_model(first)),
        });
        if cached {
            from_cache.push(name.clone());
        }
        for (w, m) in loaded.instances.into_iter().enumerate() {
            per_worker[w].push(m);
        }
    }
    let table = RouteTable::of(config)?;
    let fallbacks = route_fallbacks(config, &table, |m| slots[m].input.get(), None)?;
    Ok(Serving {
        slots,
        fallbacks,
        per_worker,
        from_cache,
    })
}

/// Why a route's fallback cannot serve: refused at load (start or reload).
#[derive(Debug, thiserror::Error)]
pub enum FallbackError {
    /// `kind = "manifest"` on a model without `fallback_manifest` (validation catches it;
    /// kept for a configuration built in code).
    #[error("route {route}: fallback kind manifest, but model {model} has no fallback_manifest")]
    NoManifest {
        /// The route.
        route: String,
        /// Its model.
        model: String,
    },
    /// A fallback model that cannot be loaded.
    #[error("route {route}: loading fallback {path}: {source}")]
    Load {
        /// The route.
        route: String,
        /// The fallback's manifest.
        path: String,
        /// Why.
        source: reflex_models::ModelError,
    },
    /// A fallback model that reads another window shape than the route's model.
    #[error(
        "route {route}: fallback {path} reads {fallback} windows, the route's model reads {model}"
    )]
    Shape {
        /// The route.
        route: String,
        /// The fallback's manifest.
        path: String,
        /// What the fallback reads.
        fallback: WindowShape,
        /// What the model reads.
        model: WindowShape,
    },
    /// A rule names a feature the route's model does not declare.
    #[error("route {route}: fallback.rules[{rule}].feature {feature:?} is not a monitoring feature of model {model} (features: {known:?})")]
    UnknownFeature {
        /// The route.
        route: String,
        /// The rule's index.
        rule: usize,
        /// The name given.
        feature: String,
        /// The route's model.
        model: String,
        /// Its features.
        known: Vec<String>,
    },
    /// The model's monitoring channels do not split its window.
    #[error("route {route}: fallback rules read model {model}'s {declared} monitoring channels, its windows have {channels}")]
    Channels {
        /// The route.
        route: String,
        /// The route's model.
        model: String,
        /// Channels its manifest declares.
        declared: usize,
        /// Channels of its window shape.
        channels: usize,
    },
    /// An action name validation should have refused.
    #[error(
        "route {route}: fallback action {action:?} is not one of run, slow_down, inspect, stop"
    )]
    Action {
        /// The route.
        route: String,
        /// The name given.
        action: String,
    },
    /// The fallback cannot answer within the safety margin.
    #[error("route {route}: the {kind} fallback answers in {p999_us} µs (p99.9 of {runs} runs), not within scheduler.safety_margin_us = {margin_us} µs")]
    TooSlow {
        /// The route.
        route: String,
        /// Its kind.
        kind: &'static str,
        /// Measured p99.9, µs.
        p999_us: u64,
        /// Runs timed.
        runs: usize,
        /// The margin, µs.
        margin_us: u64,
    },
}

/// Timed answers per fallback measuring round; the quietest of
/// [`CALIBRATION_ROUNDS`] rounds counts, as for the models.
pub const FALLBACK_TIMING_RUNS: usize = 1_000;

/// A route's fallback, built and timed.
pub struct BuiltFallback {
    /// The fallback.
    pub fallback: Arc<RouteFallback>,
    /// Its measured answer time.
    pub profile: LatencyProfile,
}

/// Builds route `route`'s fallback (`[routes.fallback]`) for its model, described by
/// `manifest` (as loaded from `models.<model>.manifest`) and reading `shape`, and times
/// its answer ([`FALLBACK_TIMING_RUNS`] answers to synthetic windows of `shape`, the
/// quietest of three rounds' p99.9); refused when that is not below `margin`.
pub fn build_fallback(
    config: &Config,
    route: &RouteConfig,
    manifest: &Manifest,
    shape: WindowShape,
    margin: Duration,
) -> Result<BuiltFallback, FallbackError> {
    let fallback = Arc::new(fallback_of(config, route, manifest, shape)?);
    let events = timing_events(shape);
    let clock = Clock::new();
    let mut profile: Option<LatencyProfile> = None;
    for _ in 0..CALIBRATION_ROUNDS {
        let mut samples: Vec<u64> = Vec::with_capacity(FALLBACK_TIMING_RUNS);
        for ev in events.iter().cycle().take(FALLBACK_TIMING_RUNS) {
            let start = Instant::now();
            std::hint::black_box(fallback.answer(ev, clock.now()));
            samples.push(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        let round = schedule::calibrate(&mut samples);
        if profile.is_none_or(|p| round.p999 < p.p999) {
            profile = Some(round);
        }
    }
    let profile = profile.expect("at least one round");
    if Duration::from_nanos(profile.p999) >= margin {
        return Err(FallbackError::TooSlow {
            route: route.name.clone(),
            kind: route.fallback.kind(),
            p999_us: profile.p999.div_ceil(1000),
            runs: FALLBACK_TIMING_RUNS,
            margin_us: u64::try_from(margin.as_micros()).unwrap_or(u64::MAX),
        });
    }
    Ok(BuiltFallback { fallback, profile })
}

/// Events of `shape` for timing a fallback: [`synthetic_windows`] of its length, as
/// counts at a scale that fits them.
fn timing_events(shape: WindowShape) -> Vec<SensorEvent> {
    synthetic_windows(shape.len())
        .into_iter()
        .enumerate()
        .map(|(i, (values, temperature))| {
            let peak = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = if peak > 0.0 { peak / 30_000.0 } else { 1e-3 };
            let samples = values
                .iter()
                .take(reflex_wire::MAX_SAMPLES)
                .map(|v| (v / scale).round() as i16)
                .collect::<heapless::Vec<i16, { reflex_wire::MAX_SAMPLES }>>();
            let mut device = heapless::String::new();
            let _ = device.push_str("fallback-timing");
            SensorEvent {
                version: reflex_wire::EVENT_FORMAT_VERSION,
                device,
                seq: i as u64,
                timestamp_us: 0,
                kind: reflex_wire::EventKind::Periodic,
                window: reflex_wire::Window {
                    channels: u8::try_from(shape.channels).unwrap_or(u8::MAX),
                    samples_per_channel: u16::try_from(shape.samples).unwrap_or(u16::MAX),
                    sample_rate_hz: 1_000,
                    scale,
                    samples,
                },
                temperature_centi_c: (temperature * 100.0) as i16,
                deadline_hint_us: None,
            }
        })
        .collect()
}

/// The action named `name`, or the error naming it.
fn fallback_action(route: &RouteConfig, name: &str) -> Result<Action, FallbackError> {
    action_of(name).ok_or_else(|| FallbackError::Action {
        route: route.name.clone(),
        action: name.to_owned(),
    })
}

/// `name` with version `builtin`, the identity of a fallback that is no model.
fn builtin_ref(name: &str) -> ModelRef {
    model_ref(name, "builtin")
}

fn fallback_of(
    config: &Config,
    route: &RouteConfig,
    manifest: &Manifest,
    shape: WindowShape,
) -> Result<RouteFallback, FallbackError> {
    let name = || route.name.clone();
    Ok(match &route.fallback {
        FallbackConfig::Manifest => {
            let path = config
                .models
                .get(&route.model)
                .and_then(|m| m.fallback_manifest.clone())
                .ok_or_else(|| FallbackError::NoManifest {
                    route: name(),
                    model: route.model.clone(),
                })?;
            let shown = path.display().to_string();
            let f = Fallback::load(&path).map_err(|source| FallbackError::Load {
                route: name(),
                path: shown.clone(),
                source,
            })?;
            let reads = WindowShape::new(reflex_models::CHANNELS, reflex_models::WINDOW);
            if shape != reads {
                return Err(FallbackError::Shape {
                    route: name(),
                    path: shown,
                    fallback: reads,
                    model: shape,
                });
            }
            RouteFallback {
                model: model_ref(&f.manifest().name, &f.manifest().version),
                kind: FallbackKind::Manifest(Box::new(f)),
            }
        }
        FallbackConfig::Constant { action } => RouteFallback {
            model: builtin_ref("constant"),
            kind: FallbackKind::Constant(fallback_action(route, action)?),
        },
        FallbackConfig::LastDecision {
            max_age_ms,
            otherwise,
        } => RouteFallback::last_decision(
            builtin_ref("last_decision"),
            schedule::nanos(
                Duration::try_from_secs_f64(max_age_ms / 1_000.0).unwrap_or(Duration::ZERO),
            ),
            fallback_action(route, otherwise)?,
        ),
        FallbackConfig::Rules { rules, otherwise } => {
            let stats = match &manifest.format2 {
                Some(f) => f.monitoring.stats(),
                None => fallback::format1_stats(),
            };
            let known = stats.names();
            let declared = stats.channels.len();
            if declared > 0 && !stats.stats.is_empty() && declared != shape.channels {
                return Err(FallbackError::Channels {
                    route: name(),
                    model: manifest.name.clone(),
                    declared,
                    channels: shape.channels,
                });
            }
            let compiled = rules
                .iter()
                .enumerate()
                .map(|(k, r)| {
                    let feature = known.iter().position(|n| *n == r.feature).ok_or_else(|| {
                        FallbackError::UnknownFeature {
                            route: name(),
                            rule: k,
                            feature: r.feature.clone(),
                            model: manifest.name.clone(),
                            known: known.clone(),
                        }
                    })?;
                    let test = match (r.above, r.below) {
                        (Some(x), _) => Test::Above(x),
                        (None, Some(x)) => Test::Below(x),
                        // Validation requires one; a rule with neither never holds.
                        (None, None) => Test::Above(f64::INFINITY),
                    };
                    Ok(Rule {
                        feature,
                        test,
                        action: fallback_action(route, &r.action)?,
                    })
                })
                .collect::<Result<Vec<_>, FallbackError>>()?;
            RouteFallback::rules(
                builtin_ref("rules"),
                compiled,
                fallback_action(route, otherwise)?,
                stats,
                shape.len(),
            )
        }
        FallbackConfig::Onnx { manifest: path } => {
            let shown = path.display().to_string();
            let m = Model::load(path).map_err(|source| FallbackError::Load {
                route: name(),
                path: shown.clone(),
                source,
            })?;
            let reads = WindowShape::of_model(&m);
            if reads != shape {
                return Err(FallbackError::Shape {
                    route: name(),
                    path: shown,
                    fallback: reads,
                    model: shape,
                });
            }
            RouteFallback {
                model: model_ref(m.name(), m.version()),
                kind: FallbackKind::Onnx(Box::new(Mutex::new(m))),
            }
        }
    })
}

/// Every route's fallback of `table` (by slot) for `config`, each route's model read from
/// its manifest and `shape_of(model index)`: a slot whose route and model did not change
/// since `previous` (the running configuration and its fallbacks) keeps its fallback (and
/// a `last_decision` fallback its memory; a changed safety margin times every fallback
/// again); a slot not in `config` (a removed route,
/// draining) keeps its last one. Logs each new fallback's measured answer time.
pub fn route_fallbacks(
    config: &Config,
    table: &RouteTable,
    shape_of: impl Fn(usize) -> WindowShape,
    previous: Option<(&Config, &Fallbacks)>,
) -> anyhow::Result<Fallbacks> {
    let mut out: Fallbacks = previous.map_or_else(Vec::new, |(_, f)| f.clone());
    out.resize(table.slots().len(), None);
    let margin = config.scheduler.safety_margin();
    let mut manifests: BTreeMap<&str, Manifest> = BTreeMap::new();
    for live in table.active() {
        let Some(route) = config.routes.iter().find(|r| r.name == live.name) else {
            continue;
        };
        let unchanged = previous.is_some_and(|(old, fallbacks)| {
            old.scheduler.safety_margin_us == config.scheduler.safety_margin_us
                && old.routes.iter().any(|o| {
                    o.name == route.name && o.model == route.model && o.fallback == route.fallback
                })
                && fallbacks.get(live.slot).is_some_and(Option::is_some)
        });
        if unchanged {
            continue;
        }
        let mc = config
            .models
            .get(&route.model)
            .with_context(|| format!("route {}: no model {}", route.name, route.model))?;
        if !manifests.contains_key(route.model.as_str()) {
            let m = Manifest::load(&mc.manifest)
                .with_context(|| format!("loading {}", mc.manifest.display()))?;
            manifests.insert(route.model.as_str(), m);
        }
        let manifest = &manifests[route.model.as_str()];
        let built = build_fallback(config, route, manifest, shape_of(live.model), margin)?;
        tracing::info!(
            route = %route.name,
            kind = route.fallback.kind(),
            fallback = %built.fallback.model.name,
            p50_ns = built.profile.p50,
            p999_ns = built.profile.p999,
            "route fallback timed"
        );
        out[live.slot] = Some(built.fallback);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
    }

    /// A config with one route on the motor example whose `[routes.fallback]` is
    /// `fallback`, and the edge model's fallback manifest on the motor model.
    fn motor_config(fallback: &str) -> Config {
        let m = models_dir();
        crate::config::parse(&format!(
            r#"
[[routes]]
name = "motor"
topic_filter = "motors/+/window"
model = "motor"
deadline_ms = 5.0
command_topic = "actuators/{{device}}/cmd"
[routes.fallback]
{fallback}
[models.motor]
manifest = "{m}/examples/motor/motor.manifest.json"
fallback_manifest = "{m}/fallback.manifest.json"
"#,
            m = m.display()
        ))
        .unwrap()
    }

    fn build(config: &Config, margin: Duration) -> Result<BuiltFallback, FallbackError> {
        let route = &config.routes[0];
        let path = &config.models["motor"].manifest;
        let manifest = Manifest::load(path).unwrap();
        build_fallback(config, route, &manifest, WindowShape::new(2, 64), margin)
    }

    #[test]
    fn a_rules_fallback_reads_the_features_the_models_manifest_names() {
        let config = motor_config(
            "kind = \"rules\"\notherwise = \"run\"\nrules = [{ feature = \"rms_current\", above = 9.0, action = \"stop\" }]",
        );
        let built = build(&config, Duration::from_secs(1)).unwrap();
        assert_eq!(built.fallback.model.name.as_str(), "rules");
        assert!(built.profile.p999 > 0);
        let config = motor_config(
            "kind = \"rules\"\notherwise = \"run\"\nrules = [{ feature = \"kurt_x\", above = 9.0, action = \"stop\" }]",
        );
        let err = build(&config, Duration::from_secs(1)).err().unwrap();
        assert!(
            matches!(&err, FallbackError::UnknownFeature { feature, rule: 0, .. } if feature == "kurt_x"),
            "{err}"
        );
        assert!(
            err.to_string().contains("rms_current"),
            "names the known ones: {err}"
        );
    }

    #[test]
    fn a_fallback_that_cannot_answer_within_the_safety_margin_is_refused() {
        let config = motor_config("kind = \"constant\"\naction = \"stop\"");
        let err = build(&config, Duration::from_nanos(1)).err().unwrap();
        assert!(
            matches!(
                err,
                FallbackError::TooSlow {
                    kind: "constant",
                    margin_us: 0,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("scheduler.safety_margin_us"),
            "{err}"
        );
    }

    #[test]
    fn the_linear_fallback_is_refused_for_a_model_that_reads_another_window_shape() {
        let config = motor_config("kind = \"manifest\"");
        let err = build(&config, Duration::from_secs(1)).err().unwrap();
        assert!(
            matches!(err, FallbackError::Shape { fallback, model, .. }
                if fallback == WindowShape::new(3, 64) && model == WindowShape::new(2, 64)),
            "{err}"
        );
    }

    #[test]
    fn an_onnx_fallback_must_read_the_models_window_shape() {
        let m = models_dir();
        let edge = format!(
            "kind = \"onnx\"\nmanifest = \"{}/edge.manifest.json\"",
            m.display()
        );
        let err = build(&motor_config(&edge), Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(matches!(err, FallbackError::Shape { .. }), "{err}");
        // The motor model as its own fallback reads its shape, and answers as it does.
        let motor = format!(
            "kind = \"onnx\"\nmanifest = \"{}/examples/motor/motor.manifest.json\"",
            m.display()
        );
        let built = build(&motor_config(&motor), Duration::from_secs(1)).unwrap();
        assert_eq!(built.fallback.model.name.as_str(), "motor");
    }

    #[test]
    fn format2_calibration_reads_the_golden_inputs_of_the_models_length() {
        let model = Model::load(models_dir().join("examples/motor/motor.manifest.json")).unwrap();
        let windows = calibration_windows(&model).unwrap();
        assert_eq!(windows.len(), 24);
        assert!(windows.iter().all(|(w, _)| w.len() == 128));
    }

    #[test]
    fn synthetic_windows_of_192_values_are_three_axes_with_gravity_on_the_last() {
        for (w, _) in synthetic_windows(192) {
            assert_eq!(w.len(), 192);
            let mean = |c: usize| w[c * 64..(c + 1) * 64].iter().sum::<f32>() / 64.0;
            assert!(mean(0).abs() < 0.01 && mean(1).abs() < 0.01);
            assert!((mean(2) - 1.0).abs() < 0.01);
        }
        assert!(synthetic_windows(128).iter().all(|(w, _)| w.len() == 128));
    }
}
