//! `[models.<name>]`: the models routes refer to, by name.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::{check_name, Problems};

/// One `[models.<name>]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Path to the model's JSON manifest. Required.
    pub manifest: PathBuf,
    /// Path to the JSON manifest of the linear fallback (format 1, on the 13 vibration
    /// features) that answers when the model cannot in time, on every route of this
    /// model that declares no other `[routes.fallback]`. Optional; a route of this model
    /// without `[routes.fallback]` needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_manifest: Option<PathBuf>,
    /// Timed inference runs per calibration round to measure p99.9 latency,
    /// 100..=1000000 (below 1000, p99.9 is the slowest run). Three rounds run at start-up
    /// and on every reload; the quietest counts. Default: `2000`.
    #[serde(default = "calibration_runs_default")]
    pub calibration_runs: u32,
    /// Reload the model when its manifest changes. Default: `true`.
    #[serde(default = "true_default")]
    pub hot_reload: bool,
}

fn calibration_runs_default() -> u32 {
    2_000
}

fn true_default() -> bool {
    true
}

/// Checks every model entry.
pub(super) fn validate_models(models: &BTreeMap<String, ModelConfig>, p: &mut Problems) {
    for (name, m) in models {
        let f = |field: &str| format!("models.{name}.{field}");
        check_name(p, &format!("models.{name}"), name);
        for (field, path) in [
            ("manifest", Some(&m.manifest)),
            ("fallback_manifest", m.fallback_manifest.as_ref()),
        ] {
            if path.is_some_and(|path| path.as_os_str().is_empty()) {
                p.add_str(f(field), "", "must be a path to a json manifest");
            }
        }
        p.range(&f("calibration_runs"), m.calibration_runs, 100, 1_000_000);
    }
}
