//! What of a changed configuration applies at run time (SIGHUP): [`plan`] compares the
//! running configuration with a newly loaded, validated one. Pure.
//!
//! Contract: a reload is all or nothing. When every changed setting is one of
//! [`RELOADABLE`], the plan says which models to load again; when any other setting
//! changed, the whole reload is refused with the list of those settings, and the daemon
//! keeps running on its old configuration until it is restarted.
//!
//! Why only these are reloadable:
//! - `models.<name>.manifest` and `.calibration_runs` go through the same path as a model
//!   hot reload: the new model is loaded, verified (checksum, golden vectors), calibrated
//!   and budget-checked against its routes *before* it replaces the old one, which keeps
//!   serving if any check fails. `models.<name>.hot_reload` only changes which files the
//!   reloader watches.
//! - Everything else is fixed when the daemon starts: the broker connection, client id and
//!   subscriptions (`node`, `mqtt`, `routes`), the engine's per-route budgets, queue and
//!   threads and the start-up budget check they passed (`routes`, `scheduler`), open
//!   stores and tasks (`journal`, `upload`, `model_cache`), the fallbacks held by the
//!   engine (`models.<name>.fallback_manifest`), the set of models (routes index them),
//!   the monitor's open windows (`monitor`), the bad-input ring and its log limiter
//!   (`bad_input`), the per-device tables (`devices`), the metrics socket (`metrics`) and
//!   the stop sequence's grace (`shutdown`).

use super::Config;

/// The settings a reload applies; `*` is any model name.
pub const RELOADABLE: [&str; 3] = [
    "models.*.manifest",
    "models.*.calibration_runs",
    "models.*.hot_reload",
];

/// What a reload applies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadPlan {
    /// Every setting that changed, as field paths (`models.edge.manifest`).
    pub changed: Vec<String>,
    /// The models whose manifest or calibration changed: loaded again.
    pub models: Vec<String>,
}

/// Why a reload was refused; the old configuration keeps running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadRefused {
    /// The new configuration does not load or validate (every problem, as reported).
    #[error("the new configuration is invalid: {0}")]
    Invalid(String),
    /// Settings that need a restart changed.
    #[error("settings that need a restart changed: {}", .0.join(", "))]
    RestartOnly(Vec<String>),
}

/// A field path from its levels: `routes`, `1`, `deadline_ms` → `routes[1].deadline_ms`.
fn field_path(levels: &[String]) -> String {
    let mut s = String::new();
    for l in levels {
        if l.starts_with('[') {
            s.push_str(l);
        } else {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(l);
        }
    }
    s
}

/// Appends to `out` the paths of the leaves that differ between `a` and `b`.
fn diff(
    a: Option<&toml::Value>,
    b: Option<&toml::Value>,
    at: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    match (a, b) {
        (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                at.push(k.clone());
                diff(x.get(k), y.get(k), at, out);
                at.pop();
            }
        }
        (Some(toml::Value::Array(x)), Some(toml::Value::Array(y))) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                at.push(format!("[{i}]"));
                diff(Some(p), Some(q), at, out);
                at.pop();
            }
        }
        (a, b) if a != b => out.push(at.clone()),
        _ => {}
    }
}

fn is_reloadable(levels: &[String]) -> bool {
    matches!(levels, [models, _, field]
        if models == "models" && matches!(field.as_str(), "manifest" | "calibration_runs" | "hot_reload"))
}

/// What reloading `new` over the running `old` applies, or every changed setting that
/// needs a restart. Both should be validated.
pub fn plan(old: &Config, new: &Config) -> Result<ReloadPlan, ReloadRefused> {
    let value = |c: &Config| toml::Value::try_from(c).expect("a config serializes to TOML");
    let mut changed = Vec::new();
    diff(
        Some(&value(old)),
        Some(&value(new)),
        &mut Vec::new(),
        &mut changed,
    );
    // Secrets serialize redacted: compared apart.
    if old.mqtt.password != new.mqtt.password {
        changed.push(vec!["mqtt".into(), "password".into()]);
        changed.sort();
        changed.dedup();
    }
    let restart: Vec<String> = changed
        .iter()
        .filter(|l| !is_reloadable(l))
        .map(|l| field_path(l))
        .collect();
    if !restart.is_empty() {
        return Err(ReloadRefused::RestartOnly(restart));
    }
    let mut models: Vec<String> = changed
        .iter()
        .filter(|l| l[2] != "hot_reload")
        .map(|l| l[1].clone())
        .collect();
    models.dedup();
    Ok(ReloadPlan {
        changed: changed.iter().map(|l| field_path(l)).collect(),
        models,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn base() -> Config {
        super::super::parse(
            r#"
[[routes]]
name = "vibration"
topic_filter = "sensors/+/vibration"
model = "edge"
deadline_ms = 5.0
command_topic = "actuators/{device}/cmd"
[models.edge]
manifest = "edge.json"
fallback_manifest = "fallback.json"
[models.other]
manifest = "other.json"
fallback_manifest = "fallback.json"
"#,
        )
        .unwrap()
    }

    #[test]
    fn an_unchanged_config_plans_nothing() {
        assert_eq!(plan(&base(), &base()), Ok(ReloadPlan::default()));
    }

    #[test]
    fn a_new_manifest_or_calibration_reloads_that_model_only() {
        let mut new = base();
        new.models.get_mut("edge").unwrap().manifest = PathBuf::from("edge-v2.json");
        new.models.get_mut("edge").unwrap().calibration_runs = 500;
        new.models.get_mut("other").unwrap().hot_reload = false;
        let p = plan(&base(), &new).unwrap();
        assert_eq!(p.models, ["edge"]);
        assert_eq!(
            p.changed,
            [
                "models.edge.calibration_runs",
                "models.edge.manifest",
                "models.other.hot_reload"
            ]
        );
    }

    #[test]
    fn a_restart_only_change_refuses_the_whole_reload_naming_each_setting() {
        let mut new = base();
        new.models.get_mut("edge").unwrap().manifest = PathBuf::from("edge-v2.json");
        new.routes[0].deadline_ms = 7.0;
        new.mqtt.keep_alive_s = 9;
        new.node.name = "renamed".into();
        assert_eq!(
            plan(&base(), &new),
            Err(ReloadRefused::RestartOnly(vec![
                "mqtt.keep_alive_s".into(),
                "node.name".into(),
                "routes[0].deadline_ms".into(),
            ]))
        );
    }

    #[test]
    fn adding_a_model_a_route_a_fallback_or_a_password_needs_a_restart() {
        let mut new = base();
        let edge = new.models["edge"].clone();
        new.models.insert("third".into(), edge);
        let mut route = base();
        route.routes.push(route.routes[0].clone());
        let mut fallback = base();
        fallback.models.get_mut("edge").unwrap().fallback_manifest = "f2.json".into();
        let mut secret = base();
        secret.mqtt.password = Some(super::super::Secret::new("new"));
        for (changed, what) in [
            (new, "models.third"),
            (route, "routes"),
            (fallback, "models.edge.fallback_manifest"),
            (secret, "mqtt.password"),
        ] {
            match plan(&base(), &changed) {
                Err(ReloadRefused::RestartOnly(fields)) => {
                    assert_eq!(fields, [what]);
                }
                other => panic!("{what}: expected a refusal, got {other:?}"),
            }
        }
    }
}
