//! `reflexd`'s TOML configuration: what to subscribe to, which model answers it within
//! which budget, and how the daemon runs.
//!
//! Three steps, each with its own error:
//! 1. [`parse`]: TOML syntax, unknown fields (every table refuses them) and wrong types
//!    give one [`ConfigError::Parse`] naming the field, with the toml crate's message.
//! 2. [`Config::validate`]: pure checks of values and of references between sections;
//!    collects *every* problem as a [`ValidationError`] naming the field path (e.g.
//!    `routes[1].deadline_ms`), the bad value and why. Each section checks its own values
//!    into the one collector ([`error`]); this module checks what spans sections.
//! 3. Typed accessors ([`RouteConfig::budget`], [`Config::client_id`], ...) build what the
//!    daemon uses.
//!
//! [`load`] reads one file and does 1 and 2. The daemon reads its configuration in
//! layers instead ([`layers`]: the `--config` file, `conf.d/*.toml`, `REFLEX_*`
//! environment variables, merged by figment), where 1 and 2 name the layer of each bad
//! value; [`show`] prints the merged result with the layer of each value, and [`reload`]
//! decides what of a changed configuration applies at run time. [`Config::check_files`] is separate because it
//! does I/O: it checks that the referenced files (manifests, TLS, password, upload token
//! and CA) are readable.
//! Relative paths are resolved against the daemon's working directory.
//!
//! `daemon/reflex.example.toml` is a complete, commented example.
//!
//! One submodule per TOML section. This module depends on nothing else in the daemon:
//! the limits it enforces (topic length, dedupe window, real-time priority, alert topic)
//! are defined here and read by the modules that apply them.

mod bad_input;
mod devices;
pub mod error;
pub mod fallback;
pub mod input;
mod journal;
pub mod layers;
mod metrics;
mod model_cache;
mod models;
pub mod monitor;
mod mqtt;
mod node;
pub mod policy;
pub mod reload;
mod routes;
mod scheduler;
pub mod show;
mod shutdown;
mod upload;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use bad_input::BadInputConfig;
pub use devices::{DevicesConfig, MAX_DEDUPE_WINDOW};
pub use error::{ConfigError, ValidationError};
pub use fallback::{FallbackConfig, FallbackRule};
pub use input::{AssembleConfig, InputConfig, InputKind};
pub use journal::{JournalConfig, JournalDurability, WhenFull};
pub use layers::{load_layered, Layered, Sources};
pub use metrics::MetricsConfig;
pub use model_cache::ModelCacheConfig;
pub use models::ModelConfig;
pub use monitor::{MonitorSection, DEFAULT_ALERT_TOPIC, NODE_PLACEHOLDER};
pub use mqtt::{MqttConfig, Secret, TlsConfig};
pub use node::NodeConfig;
pub use policy::{DebounceConfig, PolicyConfig, RuleConfig, Template};
pub use routes::{
    check_topic_filter, filters_overlap, Format, OnBudgetUnmeetable, RouteConfig,
    DEVICE_PLACEHOLDER,
};
pub use scheduler::{SchedulerConfig, MAX_REALTIME_PRIORITY};
pub use shutdown::ShutdownConfig;
pub use upload::{parse_upload_window, UploadConfig};

use error::Problems;

/// Longest MQTT topic (filter or concrete topic) the daemon accepts in its configuration,
/// in bytes; also the topic allowance in [`PUBLISH_OVERHEAD_BYTES`].
pub const MAX_TOPIC_BYTES: usize = 256;

/// Bytes an MQTT PUBLISH adds around its payload, at most: fixed header (5), topic length
/// (2), topic ([`MAX_TOPIC_BYTES`]) and packet id (2).
pub const PUBLISH_OVERHEAD_BYTES: usize = 5 + 2 + MAX_TOPIC_BYTES + 2;

/// Default of `mqtt.max_packet_bytes`: the largest event of either route format (JSON's
/// [`reflex_wire::json::MAX_JSON_EVENT_BYTES`], 200 KiB since events' format version 2 carries
/// 8 × 1024 samples) plus [`PUBLISH_OVERHEAD_BYTES`], so that any route validates with it.
pub const DEFAULT_MAX_PACKET_BYTES: usize =
    reflex_wire::json::MAX_JSON_EVENT_BYTES + PUBLISH_OVERHEAD_BYTES;

/// Largest packet MQTT can express (the remaining-length field's limit).
pub const MQTT_MAX_PACKET_BYTES: usize = 268_435_455;

/// The whole configuration. Every section may be omitted (its defaults apply) except
/// `[[routes]]` and the `[models.<name>]` they use.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[node]`: this daemon's identity.
    pub node: NodeConfig,
    /// `[mqtt]`: the broker connection.
    pub mqtt: MqttConfig,
    /// `[[routes]]`: which topics are answered by which model, within which budget. At
    /// least one; no default.
    pub routes: Vec<RouteConfig>,
    /// `[models.<name>]`: the models routes refer to, by name. No default.
    pub models: BTreeMap<String, ModelConfig>,
    /// `[model_cache]`: the models' start-up checks kept between starts.
    pub model_cache: ModelCacheConfig,
    /// `[scheduler]`: inference workers and the deadline queue.
    pub scheduler: SchedulerConfig,
    /// `[devices]`: per-device sequence tracking.
    pub devices: DevicesConfig,
    /// `[bad_input]`: what is kept and logged of undecodable payloads.
    pub bad_input: BadInputConfig,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// `[shutdown]`: graceful stop.
    pub shutdown: ShutdownConfig,
    /// `[journal]`: the durable record of every decided event. Absent: no journal (events
    /// are acked as soon as they are handled).
    pub journal: Option<JournalConfig>,
    /// `[monitor]`: live drift and SLO monitoring per route (on by default).
    pub monitor: MonitorSection,
    /// `[upload]`: bulk upload of the journal to the cloud ingest. Needs `[journal]`.
    /// Absent: records stay on the board (within the journal's quota).
    pub upload: Option<UploadConfig>,
}

/// Parses TOML text into a [`Config`] (defaults filled in), without validating values.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_from(text, "<string>")
}

fn parse_from(text: &str, origin: &str) -> Result<Config, ConfigError> {
    reflex_service::parse_toml(text).map_err(|e| ConfigError::Parse {
        origin: origin.to_owned(),
        field: e.field,
        message: e.message,
    })
}

/// Reads, parses and validates the configuration file at `path` (no file checks: see
/// [`Config::check_files`]).
pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let config = parse_from(&text, &path.display().to_string())?;
    config.validate().map_err(ConfigError::Invalid)?;
    Ok(config)
}

impl Config {
    /// The MQTT client id: `mqtt.client_id`, or `reflexd-{node.name}` when absent.
    pub fn client_id(&self) -> String {
        match &self.mqtt.client_id {
            Some(id) => id.clone(),
            None => format!("reflexd-{}", self.node.name),
        }
    }

    /// The model of `route`, if it exists (always, on a validated config).
    pub fn model_of(&self, route: &RouteConfig) -> Option<&ModelConfig> {
        self.models.get(&route.model)
    }

    /// Checks every value and cross-reference; returns all problems found. The only
    /// outside fact used is the number of cores (for `scheduler.workers`); see
    /// [`Config::validate_with_cores`] for the fully pure form.
    pub fn validate(&self) -> Result<(), Vec<ValidationError>> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.validate_with_cores(cores)
    }

    /// [`Config::validate`] for a machine with `cores` cores. Pure.
    pub fn validate_with_cores(&self, cores: usize) -> Result<(), Vec<ValidationError>> {
        let mut p = Problems::default();
        self.node.validate(&mut p);
        let needed = self
            .routes
            .iter()
            .map(|r| r.format.max_event_bytes())
            .max()
            .unwrap_or(reflex_wire::MAX_EVENT_BYTES)
            + PUBLISH_OVERHEAD_BYTES;
        self.mqtt.validate(&self.client_id(), needed, &mut p);
        routes::validate_routes(
            &self.routes,
            &self.models,
            self.scheduler.safety_margin_us,
            &mut p,
        );
        models::validate_models(&self.models, &mut p);
        self.model_cache.validate(&mut p);
        self.scheduler.validate(cores, &mut p);
        self.devices.validate(&mut p);
        self.bad_input.validate(&mut p);
        self.monitor.validate_into(&mut p);
        if let Some(j) = &self.journal {
            j.validate(&mut p);
        }
        if let Some(u) = &self.upload {
            u.validate(self.journal.is_some(), &mut p);
        }
        self.metrics.validate(&mut p);
        p.into_result()
    }

    /// Checks that every file the configuration names (model and fallback manifests, TLS
    /// files when enabled, the password file, the upload token) is a readable regular
    /// file, and that `upload.ca_file` holds at least one PEM certificate. Does I/O.
    pub fn check_files(&self) -> Vec<ValidationError> {
        let mut files: Vec<(String, &Path)> = Vec::new();
        for (name, m) in &self.models {
            files.push((format!("models.{name}.manifest"), &m.manifest));
            if let Some(f) = &m.fallback_manifest {
                files.push((format!("models.{name}.fallback_manifest"), f));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if let FallbackConfig::Onnx { manifest } = &r.fallback {
                files.push((format!("routes[{i}].fallback.manifest"), manifest));
            }
        }
        let t = &self.mqtt.tls;
        if t.enabled {
            for (field, file) in [
                ("mqtt.tls.ca_file", &t.ca_file),
                ("mqtt.tls.client_cert_file", &t.client_cert_file),
                ("mqtt.tls.client_key_file", &t.client_key_file),
            ] {
                if let Some(path) = file {
                    files.push((field.into(), path));
                }
            }
        }
        if let Some(path) = &self.mqtt.password_file {
            files.push(("mqtt.password_file".into(), path));
        }
        if let Some(u) = &self.upload {
            files.push(("upload.token_file".into(), &u.token_file));
        }
        let mut p = Problems::default();
        self.check_policy_classes(&mut p);
        for (field, path) in files {
            let shown = format!("{:?}", path.display().to_string());
            match std::fs::File::open(path).and_then(|f| f.metadata()) {
                Err(e) => p.add(field, shown, format!("cannot open: {e}")),
                Ok(meta) if !meta.is_file() => p.add(field, shown, "not a regular file"),
                Ok(_) => {}
            }
        }
        if let Some(path) = self.upload.as_ref().and_then(|u| u.ca_file.as_ref()) {
            if let Err(e) = reflex_journal::upload::read_ca_file(path) {
                let reason = match e {
                    reflex_journal::upload::UploadError::CaFile { reason, .. } => reason,
                    other => other.to_string(),
                };
                p.add(
                    "upload.ca_file",
                    format!("{:?}", path.display().to_string()),
                    reason,
                );
            }
        }
        p.0
    }

    /// Each route policy's class names and rule channels against its model's manifest
    /// (a manifest that does not load is reported by the other file checks or at start).
    fn check_policy_classes(&self, p: &mut Problems) {
        for (i, r) in self.routes.iter().enumerate() {
            let (Some(policy), Some(model)) = (&r.policy, self.model_of(r)) else {
                continue;
            };
            let Ok(manifest) = reflex_models::manifest::Manifest::load(&model.manifest) else {
                continue;
            };
            let channels = manifest
                .input
                .as_ref()
                .and_then(|inp| match inp.shape.get(1) {
                    Some(reflex_models::manifest::Dim::Fixed(n)) => Some(*n),
                    _ => None,
                });
            policy::check_policy_files(i, policy, &manifest.classes, channels, p);
        }
    }
}

#[cfg(test)]
mod tests;
