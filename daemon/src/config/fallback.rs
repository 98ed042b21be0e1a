//! `[routes.fallback]`: what answers a route's event when its model cannot in time (the
//! deadline timer, a full queue, a failed run). One kind per route:
//!
//! | `kind` | answers | fields |
//! |---|---|---|
//! | `"manifest"` (default) | the linear model of `models.<model>.fallback_manifest` on the 13 vibration features | none |
//! | `"constant"` | `action`, at once | `action` |
//! | `"last_decision"` | the device's last *model* decision on this route if younger than `max_age_ms`, else `otherwise` | `max_age_ms`, `otherwise` |
//! | `"rules"` | the first rule that holds on the window's monitoring features (as the route's model manifest names them), else `otherwise` | `rules`, `otherwise` |
//! | `"onnx"` | a second ONNX model (format 1 or 2) reading the same window shape | `manifest` |
//!
//! [`FallbackConfig::validate`] checks what needs no file (actions, ages, rule thresholds);
//! what needs the model's manifest (feature names, window shape) and the fallback's answer
//! time (measured at load, against `scheduler.safety_margin_us`) is checked when the route
//! is loaded (`service::models`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::Problems;
use super::policy::{action_of, ACTION_NAMES};

/// Longest `max_age_ms` accepted: one day.
pub const MAX_LAST_DECISION_AGE_MS: f64 = 86_400_000.0;

/// `[routes.fallback]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FallbackConfig {
    /// Today's linear fallback from `models.<model>.fallback_manifest` (which must be
    /// set): what a route without `[routes.fallback]` gets.
    #[default]
    Manifest,
    /// Always `action`.
    Constant {
        /// One of `run`, `slow_down`, `inspect`, `stop`.
        action: String,
    },
    /// The device's last model decision on this route, while younger than `max_age_ms`.
    LastDecision {
        /// Oldest model decision reused, ms: finite, > 0, <= 86400000.
        max_age_ms: f64,
        /// The action when there is none as young.
        otherwise: String,
    },
    /// The first rule that holds, else `otherwise`.
    Rules {
        /// Evaluated in order on the window's monitoring features; at least one.
        rules: Vec<FallbackRule>,
        /// The action when no rule holds.
        otherwise: String,
    },
    /// A second (small) ONNX model.
    Onnx {
        /// Its manifest (format 1 or 2); it must read the route model's window shape.
        manifest: PathBuf,
    },
}

/// One rule of a `rules` fallback: `feature` above (or below) a threshold → `action`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackRule {
    /// A monitoring feature of the route's model (`Model::feature_names`, e.g.
    /// `rms_current` or, for format 1, `kurt_x`).
    pub feature: String,
    /// Holds when the feature is strictly above this (exclusive with `below`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Holds when the feature is strictly below this (exclusive with `above`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// The action when it holds.
    pub action: String,
}

impl FallbackConfig {
    /// True for the default (`manifest`), which `config show` leaves out.
    pub fn is_default(&self) -> bool {
        *self == FallbackConfig::Manifest
    }

    /// The kind's name, as written in `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            FallbackConfig::Manifest => "manifest",
            FallbackConfig::Constant { .. } => "constant",
            FallbackConfig::LastDecision { .. } => "last_decision",
            FallbackConfig::Rules { .. } => "rules",
            FallbackConfig::Onnx { .. } => "onnx",
        }
    }

    /// Checks route `route`'s fallback (`has_manifest`: its model names a
    /// `fallback_manifest`), every problem into `p`.
    pub(super) fn validate(&self, route: usize, has_manifest: bool, p: &mut Problems) {
        let f = |name: &str| format!("routes[{route}].fallback.{name}");
        let action = |p: &mut Problems, field: String, name: &str| {
            if action_of(name).is_none() {
                p.add_str(field, name, format!("must be one of {ACTION_NAMES:?}"));
            }
        };
        match self {
            FallbackConfig::Manifest => {
                if !has_manifest {
                    p.add_str(
                        f("kind"),
                        "manifest",
                        "the route's model has no fallback_manifest: set models.<model>.fallback_manifest or declare another [routes.fallback] kind",
                    );
                }
            }
            FallbackConfig::Constant { action: a } => action(p, f("action"), a),
            FallbackConfig::LastDecision {
                max_age_ms,
                otherwise,
            } => {
                let m = *max_age_ms;
                if !(m.is_finite() && m > 0.0 && m <= MAX_LAST_DECISION_AGE_MS) {
                    p.add(
                        f("max_age_ms"),
                        m,
                        format!("must be finite, > 0 and <= {MAX_LAST_DECISION_AGE_MS}"),
                    );
                }
                action(p, f("otherwise"), otherwise);
            }
            FallbackConfig::Rules { rules, otherwise } => {
                if rules.is_empty() {
                    p.add(f("rules"), "[]", "at least one rule is required");
                }
                for (k, r) in rules.iter().enumerate() {
                    let rf = |name: &str| f(&format!("rules[{k}].{name}"));
                    if r.feature.is_empty() {
                        p.add_str(
                            rf("feature"),
                            "",
                            "must name a monitoring feature of the route's model",
                        );
                    }
                    match (r.above, r.below) {
                        (Some(_), Some(_)) => p.add(
                            rf("above"),
                            "both above and below",
                            "exactly one of above and below",
                        ),
                        (None, None) => p.add(
                            rf("above"),
                            "neither above nor below",
                            "exactly one of above and below",
                        ),
                        (Some(x), None) | (None, Some(x)) if !x.is_finite() => p.add(
                            rf(if r.above.is_some() { "above" } else { "below" }),
                            x,
                            "must be finite",
                        ),
                        _ => {}
                    }
                    action(p, rf("action"), &r.action);
                }
                action(p, f("otherwise"), otherwise);
            }
            FallbackConfig::Onnx { manifest } => {
                if manifest.as_os_str().is_empty() {
                    p.add_str(f("manifest"), "", "must be a path to a json manifest");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(fb: &FallbackConfig, has_manifest: bool) -> Vec<(String, String)> {
        let mut p = Problems::default();
        fb.validate(0, has_manifest, &mut p);
        p.0.into_iter().map(|e| (e.field, e.value)).collect()
    }

    #[test]
    fn every_bad_field_of_a_rules_fallback_is_reported_at_once_with_its_path() {
        let fb = FallbackConfig::Rules {
            rules: vec![
                FallbackRule {
                    feature: "rms_current".into(),
                    above: Some(1.0),
                    below: Some(2.0),
                    action: "halt".into(),
                },
                FallbackRule {
                    feature: String::new(),
                    above: None,
                    below: Some(f64::NAN),
                    action: "stop".into(),
                },
            ],
            otherwise: "go".into(),
        };
        let fields: Vec<String> = problems(&fb, true).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "routes[0].fallback.rules[0].above",
                "routes[0].fallback.rules[0].action",
                "routes[0].fallback.rules[1].feature",
                "routes[0].fallback.rules[1].below",
                "routes[0].fallback.otherwise",
            ]
        );
    }

    #[test]
    fn a_last_decision_fallback_needs_a_positive_finite_age_and_a_known_action() {
        let fb = FallbackConfig::LastDecision {
            max_age_ms: 0.0,
            otherwise: "explode".into(),
        };
        assert_eq!(
            problems(&fb, true),
            [
                ("routes[0].fallback.max_age_ms".to_owned(), "0".to_owned()),
                (
                    "routes[0].fallback.otherwise".to_owned(),
                    "\"explode\"".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn the_manifest_kind_is_refused_when_the_model_has_no_fallback_manifest() {
        assert!(problems(&FallbackConfig::Manifest, true).is_empty());
        let p = problems(&FallbackConfig::Manifest, false);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, "routes[0].fallback.kind");
        let constant = FallbackConfig::Constant {
            action: "stop".into(),
        };
        assert!(problems(&constant, false).is_empty());
    }
}
