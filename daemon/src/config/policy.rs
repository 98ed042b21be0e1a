//! `[routes.policy]` and `command_template`: how a route turns the model's verdict into
//! the action it sends, and what the command payload looks like.
//!
//! A policy is declared per route (`[routes.policy]`, inline: each route has its own
//! devices, model and classes, so a shared named policy would only move the class names
//! away from the model they name). Every field is optional; a route without
//! `[routes.policy]` acts exactly as before (the manifest's class → action, no threshold,
//! no debounce, no cooldown, no rule).
//!
//! Everything here is text as written in TOML (actions, metrics and class names are
//! strings), so that [`validate_policy`] reports every bad value at once with its field
//! path (`routes[0].policy.debounce.n = 0: ...`) instead of the parser stopping at the
//! first. The pipeline builds its pure policy from a validated config. Class names and
//! rule channels need the model's manifest: [`check_policy_files`] checks them with the
//! other file checks.
//!
//! The command template is parsed here too ([`Template::parse`]): placeholders are
//! checked at validate time, and a template must render to JSON with any values.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::error::{check_name, Problems};

/// Most rules a route's policy may have (they are evaluated in order on every event).
pub const MAX_RULES: usize = 16;
/// Largest debounce window `m` (decisions remembered per device).
pub const MAX_DEBOUNCE_M: u32 = 64;
/// Longest cooldown, ms (one hour).
pub const MAX_COOLDOWN_MS: u64 = 3_600_000;
/// Longest command template, bytes.
pub const MAX_TEMPLATE_BYTES: usize = 2_048;
/// Highest window channel a rule may read (the wire carries at most 16 channels).
pub const MAX_RULE_CHANNEL: u32 = 15;

/// The action names a policy accepts (the wire's [`reflex_wire::Action`], snake_case).
pub const ACTION_NAMES: [&str; 4] = ["run", "slow_down", "inspect", "stop"];
/// What `below_confidence` may say besides an action: keep the device's current action.
pub const KEEP: &str = "keep";
/// The metrics a rule may read.
pub const METRIC_NAMES: [&str; 4] = ["confidence", "rms", "peak", "mean"];

/// `[routes.policy]`: a route's decision policy.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The device's resting action: a device starts in it, debounce never holds it back.
    /// Default: `"run"`.
    #[serde(default = "default_action")]
    pub default_action: String,
    /// Class name → action, overriding the model manifest's `actions` for these classes.
    /// Default: none (the manifest's mapping).
    #[serde(default)]
    pub actions: BTreeMap<String, String>,
    /// The model's softmax probability of its class must be at least this, 0..=1, or
    /// `below_confidence` answers. Default: `0` (off).
    #[serde(default)]
    pub min_confidence: f64,
    /// What a window below `min_confidence` answers: `"keep"` (the device's current
    /// action) or an action. Default: `"keep"`.
    #[serde(default = "keep")]
    pub below_confidence: String,
    /// Debounce: an action other than `default_action` fires only when `n` of the
    /// device's last `m` windows proposed it. Default: none.
    #[serde(default)]
    pub debounce: Option<DebounceConfig>,
    /// Least time between two changes of a device's action, ms, 0..=3600000 (rules and
    /// the fallback are not held back). Default: `0`.
    #[serde(default)]
    pub cooldown_ms: u64,
    /// `[[routes.policy.rules]]`, evaluated in order before the model's answer; the first
    /// that matches decides. At most [`MAX_RULES`]. Default: none.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

fn default_action() -> String {
    "run".into()
}

fn keep() -> String {
    KEEP.into()
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            default_action: default_action(),
            actions: BTreeMap::new(),
            min_confidence: 0.0,
            below_confidence: keep(),
            debounce: None,
            cooldown_ms: 0,
            rules: Vec::new(),
        }
    }
}

/// `[routes.policy.debounce]`: `n` of the last `m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DebounceConfig {
    /// Windows that must agree, 1..=m. Required.
    pub n: u32,
    /// Windows remembered per device, 1..=64. Required.
    pub m: u32,
}

/// One `[[routes.policy.rules]]` entry: `metric` (of `channel`) compared with a
/// threshold, optionally only when the model said `class`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Rule name, in the journal and the `{reason}` placeholder; 1..=64 bytes of
    /// `[A-Za-z0-9_.-]`, unique in the policy. Required.
    pub name: String,
    /// `"confidence"` (the model's softmax probability of its class), or a statistic of
    /// one channel of the event's window in g: `"rms"`, `"peak"` (largest |x|),
    /// `"mean"`. Required.
    pub metric: String,
    /// The window channel a window metric reads (0-based); required for `rms`, `peak`,
    /// `mean`, refused for `confidence`.
    #[serde(default)]
    pub channel: Option<u32>,
    /// Matches when the metric is above this (strictly). Exactly one of `above`/`below`.
    #[serde(default)]
    pub above: Option<f64>,
    /// Matches when the metric is below this (strictly).
    #[serde(default)]
    pub below: Option<f64>,
    /// Also requires the model's class to be this (a class name of the route's model).
    #[serde(default)]
    pub class: Option<String>,
    /// The action sent when the rule matches. Required.
    pub action: String,
}

/// Checks route `i`'s policy and template into `p` (everything that needs no file).
pub(super) fn validate_policy(
    i: usize,
    policy: Option<&PolicyConfig>,
    template: Option<&str>,
    p: &mut Problems,
) {
    if let Some(t) = template {
        if let Err(e) = Template::parse(t) {
            p.add_str(format!("routes[{i}].command_template"), t, e.to_string());
        }
    }
    let Some(pol) = policy else {
        return;
    };
    let f = |name: &str| format!("routes[{i}].policy.{name}");
    check_action(p, &f("default_action"), &pol.default_action, false);
    for (class, action) in &pol.actions {
        check_action(p, &f(&format!("actions.{class}")), action, false);
    }
    let c = pol.min_confidence;
    if !(c.is_finite() && (0.0..=1.0).contains(&c)) {
        p.add(f("min_confidence"), c, "must be finite and in 0..=1");
    }
    check_action(p, &f("below_confidence"), &pol.below_confidence, true);
    if let Some(d) = pol.debounce {
        p.range(&f("debounce.m"), d.m, 1, MAX_DEBOUNCE_M);
        if d.n < 1 || d.n > d.m {
            p.add(
                f("debounce.n"),
                d.n,
                format!("must be in 1..=debounce.m ({})", d.m),
            );
        }
    }
    p.range(&f("cooldown_ms"), pol.cooldown_ms, 0, MAX_COOLDOWN_MS);
    if pol.rules.len() > MAX_RULES {
        p.add(
            f("rules"),
            format!("[{} rules]", pol.rules.len()),
            format!("at most {MAX_RULES} rules"),
        );
    }
    let mut names = HashSet::new();
    for (j, r) in pol.rules.iter().enumerate() {
        let g = |name: &str| f(&format!("rules[{j}].{name}"));
        check_name(p, &g("name"), &r.name);
        if !names.insert(r.name.as_str()) {
            p.add_str(g("name"), &r.name, "duplicate rule name");
        }
        check_action(p, &g("action"), &r.action, false);
        let window_metric = match r.metric.as_str() {
            "confidence" => false,
            "rms" | "peak" | "mean" => true,
            other => {
                p.add_str(
                    g("metric"),
                    other,
                    format!("must be one of {METRIC_NAMES:?}"),
                );
                false
            }
        };
        match (window_metric, r.channel) {
            (true, None) => p.add(
                g("channel"),
                "(none)",
                format!("required for metric {:?}", r.metric),
            ),
            (false, Some(ch)) if r.metric == "confidence" => {
                p.add(g("channel"), ch, "not allowed for metric \"confidence\"")
            }
            (true, Some(ch)) => p.range(&g("channel"), ch, 0, MAX_RULE_CHANNEL),
            _ => {}
        }
        match (r.above, r.below) {
            (Some(_), Some(_)) | (None, None) => p.add(
                g("above"),
                r.above.map_or("(none)".into(), |v| v.to_string()),
                "exactly one of `above` and `below` is required",
            ),
            (Some(v), None) | (None, Some(v)) if !v.is_finite() => {
                let which = if r.above.is_some() { "above" } else { "below" };
                p.add(g(which), v, "must be finite");
            }
            _ => {}
        }
        if let Some(class) = &r.class {
            if class.is_empty() {
                p.add_str(g("class"), class, "must name a class of the route's model");
            }
        }
    }
}

fn check_action(p: &mut Problems, field: &str, action: &str, keep_allowed: bool) {
    if ACTION_NAMES.contains(&action) || (keep_allowed && action == KEEP) {
        return;
    }
    let allowed = if keep_allowed {
        format!("\"keep\" or one of {ACTION_NAMES:?}")
    } else {
        format!("one of {ACTION_NAMES:?}")
    };
    p.add_str(field, action, format!("must be {allowed}"));
}

/// The action named `name` (one of [`ACTION_NAMES`]); `None` for anything else.
pub fn action_of(name: &str) -> Option<reflex_wire::Action> {
    use reflex_wire::Action;
    match name {
        "run" => Some(Action::Run),
        "slow_down" => Some(Action::SlowDown),
        "inspect" => Some(Action::Inspect),
        "stop" => Some(Action::Stop),
        _ => None,
    }
}

/// Checks route `i`'s policy against its model's manifest (`classes`, and `channels` of
/// its input window): every class named exists, every rule channel is in the window.
pub(super) fn check_policy_files(
    i: usize,
    policy: &PolicyConfig,
    classes: &[String],
    channels: Option<usize>,
    p: &mut Problems,
) {
    let known = |c: &str| classes.iter().any(|k| k == c);
    for class in policy.actions.keys() {
        if !known(class) {
            p.add_str(
                format!("routes[{i}].policy.actions"),
                class,
                format!("no such class in the route's model (classes: {classes:?})"),
            );
        }
    }
    for (j, r) in policy.rules.iter().enumerate() {
        if let Some(c) = r.class.as_deref().filter(|c| !known(c)) {
            p.add_str(
                format!("routes[{i}].policy.rules[{j}].class"),
                c,
                format!("no such class in the route's model (classes: {classes:?})"),
            );
        }
        if let (Some(ch), Some(n)) = (r.channel, channels) {
            if ch as usize >= n {
                p.add(
                    format!("routes[{i}].policy.rules[{j}].channel"),
                    ch,
                    format!("the route's model reads {n} channel(s)"),
                );
            }
        }
    }
}

/// A value a command template can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placeholder {
    /// The device id (JSON-escaped text).
    Device,
    /// The action sent, e.g. `slow_down`.
    Action,
    /// The class index acted on (a number; 255 when none).
    Class,
    /// The class name acted on (text; empty when none).
    ClassName,
    /// The model's softmax probability of its class (a number, or `null` when no model
    /// answered).
    Confidence,
    /// The event's sequence number.
    Seq,
    /// The deciding model's name (text).
    Model,
    /// `model`, `fallback` or `rule`.
    Source,
    /// Why the policy answered what it did (text, e.g. `debounce`, `rule:overheat`).
    Reason,
    /// Daemon wall clock at the decision, µs since the Unix epoch.
    DecidedAtUs,
    /// Arrival → decision, µs.
    LatencyUs,
}

impl Placeholder {
    /// Every placeholder, with its name in a template.
    pub const ALL: [(&'static str, Placeholder); 11] = [
        ("device", Placeholder::Device),
        ("action", Placeholder::Action),
        ("class", Placeholder::Class),
        ("class_name", Placeholder::ClassName),
        ("confidence", Placeholder::Confidence),
        ("seq", Placeholder::Seq),
        ("model", Placeholder::Model),
        ("source", Placeholder::Source),
        ("reason", Placeholder::Reason),
        ("decided_at_us", Placeholder::DecidedAtUs),
        ("latency_us", Placeholder::LatencyUs),
    ];

    fn named(name: &str) -> Option<Placeholder> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
    }
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Text copied as is.
    Text(String),
    /// A value, JSON-escaped when it is text (the template supplies the quotes).
    Value(Placeholder),
}

/// A parsed command template: `{name}` is a placeholder when `name` is lowercase letters,
/// digits and `_`; `{{` and `}}` are a literal brace; any other brace is copied as is, so
/// JSON objects need no escaping (`{"cmd":"{action}"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The pieces, in order.
    pub segments: Vec<Segment>,
}

/// Why a command template is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Over [`MAX_TEMPLATE_BYTES`].
    #[error("template of {0} bytes exceeds {MAX_TEMPLATE_BYTES}")]
    TooLong(usize),
    /// A `{name}` that is no placeholder.
    #[error("unknown placeholder {{{0}}} (known: {known})", known = known_names())]
    Unknown(String),
    /// Rendered with sample values, it is not JSON.
    #[error("does not render to JSON ({0}); text placeholders need quotes: \"{{device}}\"")]
    NotJson(String),
}

fn known_names() -> String {
    Placeholder::ALL
        .iter()
        .map(|(n, _)| format!("{{{n}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Template {
    /// Parses `text`; every placeholder must be known, and the template must render to
    /// JSON with any values (checked with samples, including a `null` confidence and a
    /// device id that needs escaping).
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        if text.len() > MAX_TEMPLATE_BYTES {
            return Err(TemplateError::TooLong(text.len()));
        }
        let mut segments = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if rest.starts_with("{{") || rest.starts_with("}}") {
                lit.push(c);
                rest = &rest[2..];
                continue;
            }
            if c == '{' {
                let end = rest[1..]
                    .find(|ch: char| !(ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_'))
                    .map(|k| k + 1);
                if let Some(end) = end.filter(|&e| e > 1 && rest[e..].starts_with('}')) {
                    let name = &rest[1..end];
                    let ph = Placeholder::named(name)
                        .ok_or_else(|| TemplateError::Unknown(name.to_owned()))?;
                    if !lit.is_empty() {
                        segments.push(Segment::Text(std::mem::take(&mut lit)));
                    }
                    segments.push(Segment::Value(ph));
                    rest = &rest[end + 1..];
                    continue;
                }
            }
            lit.push(c);
            rest = &rest[c.len_utf8()..];
        }
        if !lit.is_empty() {
            segments.push(Segment::Text(lit));
        }
        let t = Template { segments };
        for sample in [SampleValues::TYPICAL, SampleValues::AWKWARD] {
            let rendered = t.render(&sample);
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&rendered) {
                return Err(TemplateError::NotJson(e.to_string()));
            }
        }
        Ok(t)
    }

    /// The template with `values`, text values JSON-escaped.
    pub fn render(&self, values: &impl TemplateValues) -> String {
        let mut out = String::with_capacity(128);
        self.render_into(values, &mut out);
        out
    }

    /// [`Template::render`] appended to `out`.
    pub fn render_into(&self, values: &impl TemplateValues, out: &mut String) {
        for s in &self.segments {
            match s {
                Segment::Text(t) => out.push_str(t),
                // Writing to a String cannot fail.
                Segment::Value(p) => {
                    let _ = values.write(*p, &mut JsonEscaped(out));
                }
            }
        }
    }
}

/// The values of one command, as a template shows them.
pub trait TemplateValues {
    /// Writes the value of `p`; text through `out` is JSON-escaped by it.
    fn write(&self, p: Placeholder, out: &mut JsonEscaped<'_>) -> fmt::Result;
}

/// A writer that escapes what it is given for the inside of a JSON string.
pub struct JsonEscaped<'a>(pub &'a mut String);

impl fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.0, "\\u{:04x}", c as u32);
                }
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

/// Sample values a template is checked with at validate time.
struct SampleValues {
    text: &'static str,
    confidence: Option<f32>,
}

impl SampleValues {
    const TYPICAL: SampleValues = SampleValues {
        text: "dev-1",
        confidence: Some(0.5),
    };
    const AWKWARD: SampleValues = SampleValues {
        text: "a\"b\\c",
        confidence: None,
    };
}

impl TemplateValues for SampleValues {
    fn write(&self, p: Placeholder, out: &mut JsonEscaped<'_>) -> fmt::Result {
        use std::fmt::Write;
        match p {
            Placeholder::Confidence => match self.confidence {
                Some(c) => write!(out, "{c}"),
                None => out.write_str("null"),
            },
            Placeholder::Class
            | Placeholder::Seq
            | Placeholder::DecidedAtUs
            | Placeholder::LatencyUs => out.write_str("12"),
            _ => out.write_str(self.text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_template_parses_into_text_and_values() {
        let t = Template::parse(r#"{"id":"{device}","n":{seq},"b":"{{x}}"}"#).unwrap();
        assert_eq!(
            t.segments,
            vec![
                Segment::Text(r#"{"id":""#.into()),
                Segment::Value(Placeholder::Device),
                Segment::Text(r#"","n":"#.into()),
                Segment::Value(Placeholder::Seq),
                Segment::Text(r#","b":"{x}"}"#.into()),
            ]
        );
    }

    #[test]
    fn an_unknown_placeholder_is_refused_by_name() {
        let e = Template::parse(r#"{"a":"{devise}"}"#).unwrap_err();
        assert_eq!(e, TemplateError::Unknown("devise".into()));
        assert!(e.to_string().contains("{devise}"), "{e}");
    }

    #[test]
    fn a_text_placeholder_without_quotes_is_not_json() {
        let e = Template::parse(r#"{"a":{device}}"#).unwrap_err();
        assert!(matches!(e, TemplateError::NotJson(_)), "{e:?}");
    }

    #[test]
    fn a_confidence_that_may_be_null_must_not_be_quoted_as_a_number() {
        // `{confidence}` renders `null` when the fallback answered: bare is JSON either way.
        Template::parse(r#"{"p":{confidence}}"#).unwrap();
    }

    #[test]
    fn a_too_long_template_is_refused() {
        let long = format!("\"{}\"", "x".repeat(MAX_TEMPLATE_BYTES));
        assert!(matches!(
            Template::parse(&long),
            Err(TemplateError::TooLong(_))
        ));
    }

    fn problems(policy: &PolicyConfig) -> Vec<(String, String)> {
        let mut p = Problems::default();
        validate_policy(0, Some(policy), None, &mut p);
        p.0.into_iter().map(|e| (e.field, e.value)).collect()
    }

    #[test]
    fn the_default_policy_is_valid() {
        assert!(problems(&PolicyConfig::default()).is_empty());
    }

    #[test]
    fn every_bad_policy_value_is_reported_at_once_with_its_path() {
        let policy = PolicyConfig {
            default_action: "halt".into(),
            actions: [("bearing_fault".to_owned(), "explode".to_owned())].into(),
            min_confidence: 1.5,
            below_confidence: "wait".into(),
            debounce: Some(DebounceConfig { n: 0, m: 65 }),
            cooldown_ms: MAX_COOLDOWN_MS + 1,
            rules: vec![RuleConfig {
                name: "hot rule".into(),
                metric: "temperature".into(),
                channel: None,
                above: None,
                below: None,
                class: None,
                action: "stop".into(),
            }],
        };
        let got = problems(&policy);
        let fields: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "routes[0].policy.default_action",
                "routes[0].policy.actions.bearing_fault",
                "routes[0].policy.min_confidence",
                "routes[0].policy.below_confidence",
                "routes[0].policy.debounce.m",
                "routes[0].policy.debounce.n",
                "routes[0].policy.cooldown_ms",
                "routes[0].policy.rules[0].name",
                "routes[0].policy.rules[0].metric",
                "routes[0].policy.rules[0].above",
            ]
        );
        assert_eq!(got[0].1, "\"halt\"");
        assert_eq!(got[5].1, "0");
    }

    #[test]
    fn a_window_rule_needs_a_channel_and_a_confidence_rule_refuses_one() {
        let rule = |metric: &str, channel| RuleConfig {
            name: "r".into(),
            metric: metric.into(),
            channel,
            above: Some(1.0),
            below: None,
            class: None,
            action: "stop".into(),
        };
        let mut policy = PolicyConfig {
            rules: vec![rule("rms", None)],
            ..PolicyConfig::default()
        };
        assert_eq!(problems(&policy)[0].0, "routes[0].policy.rules[0].channel");
        policy.rules = vec![rule("confidence", Some(1))];
        assert_eq!(problems(&policy)[0].0, "routes[0].policy.rules[0].channel");
        policy.rules = vec![rule("peak", Some(2)), rule("confidence", None)];
        assert_eq!(
            problems(&policy),
            [(
                "routes[0].policy.rules[1].name".to_owned(),
                "\"r\"".to_owned()
            )]
        );
    }

    #[test]
    fn class_names_and_channels_are_checked_against_the_model() {
        let policy = PolicyConfig {
            actions: [("bearing_falt".to_owned(), "stop".to_owned())].into(),
            rules: vec![RuleConfig {
                name: "r".into(),
                metric: "rms".into(),
                channel: Some(3),
                above: Some(1.0),
                below: None,
                class: Some("healthy".into()),
                action: "stop".into(),
            }],
            ..PolicyConfig::default()
        };
        let mut p = Problems::default();
        let classes = vec!["healthy".to_owned(), "bearing_fault".to_owned()];
        check_policy_files(0, &policy, &classes, Some(3), &mut p);
        let fields: Vec<&str> = p.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "routes[0].policy.actions",
                "routes[0].policy.rules[0].channel"
            ]
        );
    }
}
