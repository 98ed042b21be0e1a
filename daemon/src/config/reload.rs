//! What of a changed configuration applies at run time (SIGHUP): [`plan`] compares the
//! running configuration with a newly loaded, validated one. Pure, like
//! [`unmeetable_budgets`], the budget check a plan that touches routes must pass.
//!
//! Contract: a reload is all or nothing. When every changed setting is one of
//! [`RELOADABLE`], the plan says what to apply; when any other setting changed, the whole
//! reload is refused with the list of those settings, each with why it needs a restart
//! ([`restart_reason`]), and the daemon keeps running on its old configuration. A plan
//! that adds a route or changes a budget, a route's model or the safety margin is applied
//! only if every route's model, as calibrated now, meets its budget
//! (`p99.9 + safety margin < budget`) or the route says `on_budget_unmeetable = "warn"`.
//! Routes are compared by name: reordering `[[routes]]` changes nothing.
//!
//! What applies, and why it is safe:
//! - `models.<name>.manifest` and `.calibration_runs` go through the same path as a model
//!   hot reload: the new model is loaded, verified (checksum, golden vectors), calibrated
//!   and budget-checked against its routes *before* it replaces the old one, which keeps
//!   serving if any check fails. `models.<name>.hot_reload` only changes which files the
//!   reloader watches.
//! - A route's `deadline_ms`, `model` (another model already loaded), `command_topic`,
//!   `qos_out` and `on_budget_unmeetable`: the route table the stages read is swapped
//!   whole; each event keeps the route version it was accepted under, so an event is
//!   never answered half by the old and half by the new settings. `qos_in`: the filter is
//!   subscribed again with the new QoS.
//! - A whole route added (subscribed after the new table is in place) or removed
//!   (unsubscribed; its events already accepted, or sent by the broker before the
//!   unsubscription, are answered with its last settings).
//!   A route keeps its metrics series across reloads; a removed one keeps its counters.
//!   Per-device dedupe state is per device, not per route, and is kept: a device may
//!   publish on several routes, and forgetting it could answer a redelivery twice.
//! - `scheduler.safety_margin_us`: the engine reads it per event (one atomic); events
//!   accepted after the reload are planned with it.
//! - `bad_input.log_every_s`: the decode stage reads it from the route table.
//! - The `[monitor]` settings that judge a closed window ([`MONITOR_JUDGEMENT`]:
//!   `thresholds`, `raise_after`, `clear_after`, `min_events`, `slo_min_events`, the two
//!   objectives): they apply from the next window each route closes; open windows and
//!   alert states carry over.
//!
//! What needs a restart, and why ([`restart_reason`] words it for the refusal):
//! - `node`, `mqtt`: the broker connection and client id are set up once.
//! - A route's `topic_filter` and `format`: the dedupe and the events in flight are tied
//!   to them, and an event must be answered in its own format; to move a route, add it
//!   under a new name and remove the old one (both in one reload). Likewise its
//!   `[routes.input]`: the decode stage holds the adapter and its per-device windows
//!   (numbering, assembly) for the route's slot; and its `[routes.policy]` and
//!   `command_template`: the decide stage builds them at start against the model's
//!   classes and holds each device's debounce state, so a route that has one can neither
//!   be added by a reload nor change its model.
//! - `models` other than the above (adding or removing a model, a fallback): the engine
//!   holds the set of models, their worker instances and fallbacks.
//! - `scheduler` other than the margin: threads, their priority, the queue and the
//!   calibrated batch sizes are set up once.
//! - `devices`: the dedupe table is sized at start; shrinking it would forget devices
//!   whose redeliveries must stay duplicates.
//! - `bad_input.keep_last`: the ring is allocated at start.
//! - `monitor` window shape (`enabled`, `window_s`, `sketch_k`) and alert topic/QoS,
//!   `keep_closed_windows`: open windows and the publisher are built from them.
//! - `journal`, `upload`, `model_cache`: the open store, the uploader task and the start
//!   cache hold them; `metrics`: the endpoint's socket; `shutdown`: the stop sequence.

use std::time::Duration;

use super::{Config, OnBudgetUnmeetable};

/// The settings a reload applies; `*` is any model or route name (routes are matched by
/// name, so reordering `[[routes]]` changes nothing).
pub const RELOADABLE: [&str; 13] = [
    "models.*.manifest",
    "models.*.calibration_runs",
    "models.*.hot_reload",
    "routes[*]",
    "routes[*].model",
    "routes[*].deadline_ms",
    "routes[*].command_topic",
    "routes[*].qos_in",
    "routes[*].qos_out",
    "routes[*].on_budget_unmeetable",
    "scheduler.safety_margin_us",
    "bad_input.log_every_s",
    "monitor.<judgement>",
];

/// The `[monitor]` settings that judge a closed window, reloadable: they apply from the
/// next window closed; the open windows, their sketches and alert states carry over.
pub const MONITOR_JUDGEMENT: [&str; 7] = [
    "thresholds",
    "raise_after",
    "clear_after",
    "min_events",
    "slo_min_events",
    "deadline_miss_objective",
    "fallback_objective",
];

/// What a reload applies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadPlan {
    /// Every setting that changed, as field paths (`models.edge.manifest`,
    /// `routes[vibration].deadline_ms`).
    pub changed: Vec<String>,
    /// The models whose manifest or calibration changed: loaded again.
    pub models: Vec<String>,
    /// Routes added (by name): subscribed.
    pub added: Vec<String>,
    /// Routes removed (by name): unsubscribed; their events in flight are still answered.
    pub removed: Vec<String>,
    /// Routes kept whose subscription QoS changed: subscribed again.
    pub resubscribe: Vec<String>,
    /// Routes (kept) whose model changed: their monitor reference follows the new model.
    pub new_model: Vec<String>,
    /// The route table is built again (a route or `bad_input.log_every_s` changed).
    pub routes: bool,
    /// Every route's budget is checked against its model's calibration first (a route
    /// was added, or a deadline, model, `on_budget_unmeetable` or the margin changed).
    pub check_budgets: bool,
    /// `scheduler.safety_margin_us` changed.
    pub margin: bool,
    /// A `[monitor]` judgement setting changed.
    pub monitor: bool,
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
    /// Routes whose model cannot meet their budget and that refuse it.
    #[error("budgets the models cannot meet (on_budget_unmeetable = \"refuse\"): {}", .0.join("; "))]
    BudgetUnmeetable(Vec<String>),
    /// More routes were added over the life of the process than metrics have slots for.
    #[error("no route slot left for route {0}: adding more routes needs a restart")]
    NoRouteSlot(String),
}

/// Why a setting needs a restart, for the refusal's list (one short reason per section).
pub fn restart_reason(path: &str) -> &'static str {
    let section = path.split(['.', '[']).next().unwrap_or(path);
    match section {
        "node" | "mqtt" => "the broker connection and client id are set up once",
        "routes" if path.ends_with(".topic_filter") => {
            "dedupe and in-flight events are tied to a route's filter; add a route under a new name instead"
        }
        "routes" if path.contains(".input") => {
            "the decode stage holds the route's input adapter and its per-device windows; add a route under a new name instead"
        }
        "routes" if path.contains(".policy") || path.ends_with(".command_template") => {
            "the decide stage holds the route's policy, its per-device debounce state and its template; add a route under a new name instead"
        }
        "routes" if path.ends_with(".format") => {
            "an event must be answered in the format it came in; add a route under a new name instead"
        }
        "routes" => "the stages read this route setting once",
        "models" => "the set of models and their fallbacks are held by the engine",
        "scheduler" => "workers, their queue, priority and calibrated batch sizes are set up once",
        "devices" => "the dedupe table is sized at start; shrinking it would forget devices whose redeliveries must stay duplicates",
        "bad_input" => "the bad-input ring is allocated at start",
        "monitor" => "open windows and their sketches are shaped by it",
        "journal" => "the store is open with these settings",
        "upload" => "the uploader holds its connection and batching settings",
        "model_cache" => "the start-up cache is read once",
        "metrics" => "the endpoint's socket is bound once",
        "shutdown" => "the stop sequence is set up at start",
        _ => "not reloadable",
    }
}

/// A field path from its levels: `routes`, `[vibration]`, `deadline_ms` →
/// `routes[vibration].deadline_ms`.
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

/// The route fields a reload applies.
const ROUTE_RELOADABLE: [&str; 6] = [
    "model",
    "deadline_ms",
    "command_topic",
    "qos_in",
    "qos_out",
    "on_budget_unmeetable",
];

fn is_reloadable(levels: &[String]) -> bool {
    match levels {
        [models, _, field] if models == "models" => {
            matches!(
                field.as_str(),
                "manifest" | "calibration_runs" | "hot_reload"
            )
        }
        // A whole route added or removed.
        [routes, _] if routes == "routes" => true,
        [routes, _, field] if routes == "routes" => ROUTE_RELOADABLE.contains(&field.as_str()),
        [s, f] if s == "scheduler" => f == "safety_margin_us",
        [s, f] if s == "bad_input" => f == "log_every_s",
        [s, f, ..] if s == "monitor" => MONITOR_JUDGEMENT.contains(&f.as_str()),
        _ => false,
    }
}

/// `config` as TOML, with `[[routes]]` keyed by name (`routes.<name>`) so that routes
/// are compared by name, not position.
fn keyed(config: &Config) -> toml::Value {
    let mut v = toml::Value::try_from(config).expect("a config serializes to TOML");
    if let Some(t) = v.as_table_mut() {
        let routes: toml::Table = config
            .routes
            .iter()
            .map(|r| {
                let route = toml::Value::try_from(r).expect("a route serializes to TOML");
                (format!("[{}]", r.name), route)
            })
            .collect();
        t.insert("routes".into(), toml::Value::Table(routes));
    }
    v
}

/// What reloading `new` over the running `old` applies, or every changed setting that
/// needs a restart. Both should be validated.
pub fn plan(old: &Config, new: &Config) -> Result<ReloadPlan, ReloadRefused> {
    let mut changed = Vec::new();
    diff(
        Some(&keyed(old)),
        Some(&keyed(new)),
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
        .map(|l| {
            let path = field_path(l);
            format!("{path} ({})", restart_reason(&path))
        })
        .collect();
    if !restart.is_empty() {
        return Err(ReloadRefused::RestartOnly(restart));
    }
    // A route's policy and template are built at start against its model's classes
    // (`pipeline::decide`): a route that has one cannot be added, nor change model.
    let decides: Vec<String> = new
        .routes
        .iter()
        .filter(|r| r.policy.is_some() || r.command_template.is_some())
        .filter_map(|r| match old.routes.iter().find(|o| o.name == r.name) {
            None => Some(format!(
                "routes[{}] (added with a policy or command_template: {})",
                r.name,
                restart_reason("routes.policy")
            )),
            Some(o) if o.model != r.model => Some(format!(
                "routes[{}].model (the route has a policy or command_template: {})",
                r.name,
                restart_reason("routes.policy")
            )),
            Some(_) => None,
        })
        .collect();
    if !decides.is_empty() {
        return Err(ReloadRefused::RestartOnly(decides));
    }
    let mut p = ReloadPlan {
        changed: changed.iter().map(|l| field_path(l)).collect(),
        ..ReloadPlan::default()
    };
    let name = |level: &str| {
        level
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    };
    let has = |c: &Config, n: &str| c.routes.iter().any(|r| r.name == n);
    for l in &changed {
        match (l[0].as_str(), l.get(1), l.get(2).map(String::as_str)) {
            ("models", Some(m), Some(f)) if f != "hot_reload" => p.models.push(m.clone()),
            ("routes", Some(r), field) => {
                let r = name(r);
                p.routes = true;
                match field {
                    None if has(new, &r) => {
                        p.added.push(r);
                        p.check_budgets = true;
                    }
                    None => p.removed.push(r),
                    Some("qos_in") => p.resubscribe.push(r),
                    Some("model") => {
                        p.new_model.push(r);
                        p.check_budgets = true;
                    }
                    Some("deadline_ms" | "on_budget_unmeetable") => p.check_budgets = true,
                    Some(_) => {}
                }
            }
            ("scheduler", ..) => {
                p.margin = true;
                p.check_budgets = true;
            }
            ("bad_input", ..) => p.routes = true,
            ("monitor", ..) => p.monitor = true,
            _ => {}
        }
    }
    p.models.dedup();
    Ok(p)
}

/// Every route of `config` whose model cannot meet its budget, given the calibrated
/// p99.9 of a one-window run of each model serving now (`p999`, by model name; a model
/// without one fails): the same rule as at start (`p99.9 + safety margin < budget`).
/// Returns the routes that refuse (`on_budget_unmeetable = "refuse"`: the reload is
/// refused) and those that only warn, each as `route: why`. Pure.
pub fn unmeetable_budgets(
    config: &Config,
    p999: impl Fn(&str) -> Option<Duration>,
) -> (Vec<String>, Vec<String>) {
    let margin = config.scheduler.safety_margin();
    let (mut refuse, mut warn) = (Vec::new(), Vec::new());
    for r in &config.routes {
        let why = match p999(&r.model) {
            None => format!("model {} has no calibration", r.model),
            Some(p) if p.saturating_add(margin) < r.budget() => continue,
            Some(p) => format!(
                "model {} p99.9 {p:?} + safety margin {margin:?} is not below the budget of {:?}",
                r.model,
                r.budget()
            ),
        };
        let line = format!("route {}: {why}", r.name);
        match r.on_budget_unmeetable {
            OnBudgetUnmeetable::Refuse => refuse.push(line),
            OnBudgetUnmeetable::Warn => warn.push(line),
        }
    }
    (refuse, warn)
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
        new.routes[0].format = crate::config::Format::Json;
        let fields = match plan(&base(), &new) {
            Err(ReloadRefused::RestartOnly(f)) => f,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let paths: Vec<&str> = fields
            .iter()
            .map(|f| f.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            paths,
            ["mqtt.keep_alive_s", "node.name", "routes[vibration].format"]
        );
        assert!(fields[2].contains("new name"), "{}", fields[2]);
    }

    #[test]
    fn adding_a_model_a_fallback_a_filter_or_a_password_needs_a_restart() {
        let mut new = base();
        let edge = new.models["edge"].clone();
        new.models.insert("third".into(), edge);
        let mut route = base();
        route.routes[0].topic_filter = "sensors/+/temp".into();
        let mut fallback = base();
        fallback.models.get_mut("edge").unwrap().fallback_manifest = Some("f2.json".into());
        let mut secret = base();
        secret.mqtt.password = Some(super::super::Secret::new("new"));
        for (changed, what) in [
            (new, "models.third"),
            (route, "routes[vibration].topic_filter"),
            (fallback, "models.edge.fallback_manifest"),
            (secret, "mqtt.password"),
        ] {
            match plan(&base(), &changed) {
                Err(ReloadRefused::RestartOnly(fields)) => {
                    assert_eq!(fields.len(), 1, "{fields:?}");
                    assert!(fields[0].starts_with(&format!("{what} (")), "{fields:?}");
                }
                other => panic!("{what}: expected a refusal, got {other:?}"),
            }
        }
    }

    fn second_route(c: &mut Config, name: &str, filter: &str) {
        let mut r = c.routes[0].clone();
        r.name = name.into();
        r.topic_filter = filter.into();
        c.routes.push(r);
    }

    #[test]
    fn route_settings_apply_and_are_named_by_route() {
        let mut new = base();
        let r = &mut new.routes[0];
        r.deadline_ms = 7.0;
        r.command_topic = "moved/{device}/cmd".into();
        r.qos_out = 0;
        r.qos_in = 0;
        r.model = "other".into();
        r.on_budget_unmeetable = OnBudgetUnmeetable::Warn;
        let p = plan(&base(), &new).unwrap();
        assert_eq!(
            p.changed,
            [
                "routes[vibration].command_topic",
                "routes[vibration].deadline_ms",
                "routes[vibration].model",
                "routes[vibration].on_budget_unmeetable",
                "routes[vibration].qos_in",
                "routes[vibration].qos_out",
            ]
        );
        assert!(p.routes && p.check_budgets);
        assert_eq!(
            (p.resubscribe.as_slice(), p.new_model.as_slice()),
            (&["vibration".to_owned()][..], &["vibration".to_owned()][..])
        );
        assert!(p.added.is_empty() && p.removed.is_empty() && p.models.is_empty());
    }

    #[test]
    fn a_command_topic_alone_needs_no_budget_check() {
        let mut new = base();
        new.routes[0].command_topic = "moved/{device}/cmd".into();
        let p = plan(&base(), &new).unwrap();
        assert!(p.routes && !p.check_budgets && !p.margin);
    }

    #[test]
    fn a_policy_or_template_is_set_at_start_only() {
        let mut with_policy = base();
        with_policy.routes[0].command_template = Some(r#"{"cmd":"{action}"}"#.into());
        // Changing it, adding a route with one, or moving such a route to another model.
        let mut changed = with_policy.clone();
        changed.routes[0].command_template = Some(r#"{"c":"{action}"}"#.into());
        let mut added = base();
        second_route(&mut added, "temp", "sensors/+/temp");
        added.routes[1].policy = Some(Default::default());
        let mut moved = with_policy.clone();
        moved.routes[0].model = "other".into();
        for (old, new, what) in [
            (
                &base(),
                &with_policy,
                "routes[vibration].command_template (",
            ),
            (
                &with_policy,
                &changed,
                "routes[vibration].command_template (",
            ),
            (&base(), &added, "routes[temp] (added with a policy"),
            (
                &with_policy,
                &moved,
                "routes[vibration].model (the route has",
            ),
        ] {
            match plan(old, new) {
                Err(ReloadRefused::RestartOnly(fields)) => {
                    assert_eq!(fields.len(), 1, "{fields:?}");
                    assert!(fields[0].starts_with(what), "{fields:?}");
                    assert!(fields[0].contains("decide stage"), "{fields:?}");
                }
                other => panic!("{what}: expected a refusal, got {other:?}"),
            }
        }
        // Other settings of such a route still apply.
        let mut deadline = with_policy.clone();
        deadline.routes[0].deadline_ms = 7.0;
        assert!(plan(&with_policy, &deadline).is_ok());
    }

    #[test]
    fn whole_routes_are_added_and_removed_by_name_and_order_does_not_count() {
        let mut old = base();
        second_route(&mut old, "temp", "sensors/+/temp");
        let mut reordered = old.clone();
        reordered.routes.reverse();
        assert_eq!(plan(&old, &reordered), Ok(ReloadPlan::default()));

        let mut new = base();
        second_route(&mut new, "pressure", "sensors/+/pressure");
        let p = plan(&old, &new).unwrap();
        assert_eq!(p.added, ["pressure"]);
        assert_eq!(p.removed, ["temp"]);
        assert_eq!(p.changed, ["routes[pressure]", "routes[temp]"]);
        assert!(p.routes && p.check_budgets);
    }

    #[test]
    fn the_margin_the_log_interval_and_monitor_judgement_apply() {
        let mut new = base();
        new.scheduler.safety_margin_us += 100;
        new.bad_input.log_every_s += 1;
        new.monitor.raise_after += 1;
        new.monitor.deadline_miss_objective = 0.02;
        let p = plan(&base(), &new).unwrap();
        assert!(
            p.margin && p.check_budgets && p.routes && p.monitor,
            "{p:?}"
        );
        let mut window = base();
        window.monitor.window_s += 1;
        window.bad_input.keep_last += 1;
        window.scheduler.workers += 1;
        match plan(&base(), &window) {
            Err(ReloadRefused::RestartOnly(f)) => assert_eq!(f.len(), 3, "{f:?}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn budgets_follow_the_start_rule_and_only_refusing_routes_refuse() {
        let mut c = base();
        second_route(&mut c, "temp", "sensors/+/temp");
        c.routes[1].on_budget_unmeetable = OnBudgetUnmeetable::Warn;
        let margin = c.scheduler.safety_margin();
        let fits = Duration::from_millis(5) - margin - Duration::from_nanos(1);
        assert_eq!(unmeetable_budgets(&c, |_| Some(fits)), (vec![], vec![]));
        let (refuse, warn) = unmeetable_budgets(&c, |_| Some(fits + Duration::from_nanos(1)));
        assert_eq!((refuse.len(), warn.len()), (1, 1));
        assert!(
            refuse[0].starts_with("route vibration: model edge p99.9"),
            "{refuse:?}"
        );
        assert!(warn[0].starts_with("route temp:"), "{warn:?}");
        let (refuse, _) = unmeetable_budgets(&c, |_| None);
        assert!(refuse[0].contains("no calibration"), "{refuse:?}");
    }

    proptest::proptest! {
        /// Whatever mix of route changes, the plan is refused exactly when a
        /// restart-only setting changed, and otherwise lists every change it applies.
        #[test]
        fn a_plan_is_refused_exactly_when_a_restart_only_setting_changed(
            deadline in proptest::option::of(1.0f64..100.0),
            topic in proptest::bool::ANY,
            filter in proptest::bool::ANY,
            format in proptest::bool::ANY,
            add in proptest::bool::ANY,
            keep_alive in proptest::bool::ANY,
        ) {
            let mut new = base();
            if let Some(d) = deadline { new.routes[0].deadline_ms = d; }
            if topic { new.routes[0].command_topic = "x/{device}".into(); }
            if filter { new.routes[0].topic_filter = "sensors/+/other".into(); }
            if format { new.routes[0].format = crate::config::Format::Json; }
            if add { second_route(&mut new, "added", "sensors/+/added"); }
            if keep_alive { new.mqtt.keep_alive_s += 1; }
            let restart = usize::from(filter) + usize::from(format) + usize::from(keep_alive);
            match plan(&base(), &new) {
                Err(ReloadRefused::RestartOnly(f)) => proptest::prop_assert_eq!(f.len(), restart),
                Ok(p) => {
                    proptest::prop_assert_eq!(restart, 0);
                    let applied = usize::from(deadline.is_some_and(|d| d != 5.0))
                        + usize::from(topic) + usize::from(add);
                    proptest::prop_assert_eq!(p.changed.len(), applied);
                    proptest::prop_assert_eq!(p.added.len(), usize::from(add));
                }
                Err(e) => proptest::prop_assert!(false, "{e}"),
            }
        }
    }
}
