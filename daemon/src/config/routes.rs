//! `[[routes]]`: which topics are answered by which model, within which budget; the
//! payload formats; MQTT topic filter and command topic rules.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{check_name, Problems};
use super::fallback::FallbackConfig;
use super::input::InputConfig;
use super::models::ModelConfig;
use super::policy::{validate_policy, PolicyConfig};
use super::MAX_TOPIC_BYTES;

/// Placeholder in a route's `command_topic` replaced by the event's device id.
pub const DEVICE_PLACEHOLDER: &str = "{device}";

/// Payload format of a route's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The postcard binary form ([`reflex_wire::SensorEvent::decode`]).
    #[default]
    Postcard,
    /// The JSON form ([`reflex_wire::json::decode_event`]).
    Json,
}

impl Format {
    /// Largest accepted event payload in this format, in bytes.
    pub fn max_event_bytes(self) -> usize {
        match self {
            Format::Postcard => reflex_wire::MAX_EVENT_BYTES,
            Format::Json => reflex_wire::json::MAX_JSON_EVENT_BYTES,
        }
    }
}

/// What to do at start-up when calibration says a route's model cannot meet its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBudgetUnmeetable {
    /// Refuse to start.
    #[default]
    Refuse,
    /// Start anyway and log a warning; most events will be answered by the fallback.
    Warn,
}

/// One `[[routes]]` entry. A reload (SIGHUP) may add or remove whole routes (matched by
/// name) and change `model`, `deadline_ms`, `command_topic`, `qos_in`, `qos_out` and
/// `on_budget_unmeetable`; the other fields need a restart (see [`super::reload`]).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique route name, used in logs and metrics labels; 1..=64 bytes of
    /// `[A-Za-z0-9_.-]`. Required.
    pub name: String,
    /// MQTT topic filter to subscribe to, e.g. `"sensors/+/vibration"`; `+` and `#` only
    /// as whole levels, `#` only last. Must not overlap another route's. Required.
    pub topic_filter: String,
    /// Name of the `[models.<name>]` entry that answers this route. Required.
    pub model: String,
    /// Payload format, `"postcard"` or `"json"`. Default: `"postcard"`.
    #[serde(default)]
    pub format: Format,
    /// Per-event budget from arrival to command, in ms: finite, > 0, <= 10000, and above
    /// `scheduler.safety_margin_us`. A sensor's deadline hint may only shorten it.
    /// Required.
    pub deadline_ms: f64,
    /// Topic commands are published to; must contain `{device}` (replaced by the event's
    /// device id) and no `+`, `#` or other `{...}`. Required.
    pub command_topic: String,
    /// QoS of the subscription, 0 or 1. Default: `1`.
    #[serde(default = "qos_default")]
    pub qos_in: u8,
    /// QoS of published commands, 0 or 1. Default: `1`.
    #[serde(default = "qos_default")]
    pub qos_out: u8,
    /// `"refuse"` or `"warn"` when calibration shows the model cannot meet the budget.
    /// Default: `"refuse"`.
    #[serde(default)]
    pub on_budget_unmeetable: OnBudgetUnmeetable,
    /// `[routes.input]`: the input adapter reading this route's payloads. Default:
    /// `kind = "reflex"` (reflex's own event in `format`, as before adapters existed).
    #[serde(default, skip_serializing_if = "InputConfig::is_default")]
    pub input: InputConfig,
    /// `[routes.policy]`: the route's decision policy (class → action, confidence
    /// threshold, debounce, cooldown, rules; see [`super::policy`]). Default: none (the
    /// model manifest's actions, as is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyConfig>,
    /// `[routes.fallback]`: what answers when the model cannot in time (see
    /// [`super::fallback`]). Default: `kind = "manifest"`, the model's
    /// `fallback_manifest`.
    #[serde(default, skip_serializing_if = "FallbackConfig::is_default")]
    pub fallback: FallbackConfig,
    /// The command payload as a JSON template with placeholders (`{device}`, `{action}`,
    /// ...; see [`super::policy::Template`]), instead of the wire command in `format`.
    /// Default: none (the wire command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_template: Option<String>,
}

fn qos_default() -> u8 {
    1
}

impl RouteConfig {
    /// The per-event budget. Only meaningful on a validated config.
    pub fn budget(&self) -> Duration {
        Duration::try_from_secs_f64(self.deadline_ms / 1_000.0).unwrap_or(Duration::ZERO)
    }

    /// The concrete command topic for `device`.
    pub fn command_topic_for(&self, device: &str) -> String {
        self.command_topic.replace(DEVICE_PLACEHOLDER, device)
    }
}

/// Checks MQTT topic filter syntax: non-empty, at most [`MAX_TOPIC_BYTES`], no NUL, `+`
/// and `#` only as whole levels, `#` only as the last level.
pub fn check_topic_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("topic filter is empty".into());
    }
    if filter.len() > MAX_TOPIC_BYTES {
        return Err(format!(
            "topic filter of {} bytes exceeds {MAX_TOPIC_BYTES}",
            filter.len()
        ));
    }
    if filter.contains('\0') {
        return Err("topic filter contains a nul character".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "level {i} `{level}`: '#' must be a whole level and the last one"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("level {i} `{level}`: '+' must be a whole level"));
        }
    }
    Ok(())
}

/// Whether some topic matches both (valid) filters, so both routes would receive it.
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let mut a = a.split('/');
    let mut b = b.split('/');
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            // One filter is longer and its next level is not '#' ("x/#" also matches "x",
            // caught above).
            (Some(_), None) | (None, Some(_)) => return false,
            (Some(x), Some(y)) => {
                if x != "+" && y != "+" && x != y {
                    return false;
                }
            }
        }
    }
}

fn check_command_topic(template: &str) -> Result<(), String> {
    if !template.contains(DEVICE_PLACEHOLDER) {
        return Err(format!("must contain {DEVICE_PLACEHOLDER}"));
    }
    if template.contains(['+', '#']) {
        return Err("must not contain the wildcards '+' or '#'".into());
    }
    if template.contains('\0') {
        return Err("must not contain a nul character".into());
    }
    if template
        .replace(DEVICE_PLACEHOLDER, "")
        .contains(['{', '}'])
    {
        return Err(format!(
            "{DEVICE_PLACEHOLDER} is the only placeholder allowed"
        ));
    }
    let longest = template
        .replace(
            DEVICE_PLACEHOLDER,
            &"x".repeat(reflex_wire::MAX_DEVICE_ID_LEN),
        )
        .len();
    if longest > MAX_TOPIC_BYTES {
        return Err(format!(
            "with a {}-byte device id the topic is {longest} bytes, over {MAX_TOPIC_BYTES}",
            reflex_wire::MAX_DEVICE_ID_LEN
        ));
    }
    Ok(())
}

/// Checks every route, and its references to `models`; a deadline must exceed the
/// scheduler's `safety_margin_us`.
pub(super) fn validate_routes(
    routes: &[RouteConfig],
    models: &BTreeMap<String, ModelConfig>,
    safety_margin_us: u64,
    p: &mut Problems,
) {
    if routes.is_empty() {
        p.add("routes", "[]", "at least one [[routes]] entry is required");
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let margin_ms = safety_margin_us as f64 / 1_000.0;
    for (i, r) in routes.iter().enumerate() {
        let f = |name: &str| format!("routes[{i}].{name}");
        check_name(p, &f("name"), &r.name);
        if let Some(first) = names.insert(&r.name, i) {
            p.add_str(
                f("name"),
                &r.name,
                format!("duplicate route name (also routes[{first}])"),
            );
        }
        match check_topic_filter(&r.topic_filter) {
            Err(why) => p.add_str(f("topic_filter"), &r.topic_filter, why),
            Ok(()) => {
                for (j, other) in routes[..i].iter().enumerate() {
                    if check_topic_filter(&other.topic_filter).is_ok()
                        && filters_overlap(&r.topic_filter, &other.topic_filter)
                    {
                        p.add_str(
                                f("topic_filter"),
                                &r.topic_filter,
                                format!(
                                    "overlaps routes[{j}].topic_filter {:?}: an event would be answered twice",
                                    other.topic_filter
                                ),
                            );
                    }
                }
            }
        }
        if let Some(m) = models.get(&r.model) {
            r.fallback.validate(i, m.fallback_manifest.is_some(), p);
        } else {
            let known: Vec<&str> = models.keys().map(String::as_str).collect();
            p.add_str(
                f("model"),
                &r.model,
                format!("no [models.{}] entry (known: {known:?})", r.model),
            );
        }
        let d = r.deadline_ms;
        if !(d.is_finite() && d > 0.0 && d <= 10_000.0) {
            p.add(f("deadline_ms"), d, "must be finite, > 0 and <= 10000");
        } else if d <= margin_ms {
            p.add(
                    f("deadline_ms"),
                    d,
                    format!(
                        "must exceed scheduler.safety_margin_us ({} µs), or the fallback could not be sent in time",
                        safety_margin_us
                    ),
                );
        }
        if let Err(why) = check_command_topic(&r.command_topic) {
            p.add_str(f("command_topic"), &r.command_topic, why);
        }
        let plus = r.topic_filter.split('/').filter(|l| *l == "+").count();
        r.input.validate(i, plus, p);
        r.input.validate_topic_filter(i, &r.topic_filter, p);
        for (name, qos) in [("qos_in", r.qos_in), ("qos_out", r.qos_out)] {
            if qos > 1 {
                p.add(f(name), qos, "must be 0 or 1 (qos 2 is not supported)");
            }
        }
        validate_policy(i, r.policy.as_ref(), r.command_template.as_deref(), p);
    }
}
