//! A command's values as a route's command template shows them
//! ([`crate::config::Template`]): text values are JSON-escaped by the template's writer,
//! numbers are written bare, a missing confidence is `null`. Pure.

use std::fmt::{self, Write};

use reflex_records::DecisionTrace;
use reflex_wire::{Action, Command, DecisionSource};

use crate::config::policy::{JsonEscaped, Placeholder, TemplateValues};

/// The snake_case name of `a`, as in the wire's JSON and the policy configuration.
pub fn action_name(a: Action) -> &'static str {
    match a {
        Action::Run => "run",
        Action::SlowDown => "slow_down",
        Action::Inspect => "inspect",
        Action::Stop => "stop",
    }
}

/// `model`, `fallback` or `rule`.
pub fn source_name(s: DecisionSource) -> &'static str {
    match s {
        DecisionSource::Model => "model",
        DecisionSource::Fallback => "fallback",
        DecisionSource::Rule => "rule",
    }
}

/// One command's template values.
pub struct CommandValues<'a> {
    /// The command as the wire would carry it.
    pub cmd: &'a Command,
    /// The name of the class acted on (empty: none).
    pub class_name: &'a str,
    /// The model's probability of its class.
    pub confidence: Option<f32>,
    /// What the policy decided, on a route with one.
    pub decision: Option<&'a DecisionTrace>,
}

impl TemplateValues for CommandValues<'_> {
    fn write(&self, p: Placeholder, out: &mut JsonEscaped<'_>) -> fmt::Result {
        let c = self.cmd;
        match p {
            Placeholder::Device => out.write_str(&c.device),
            Placeholder::Action => out.write_str(action_name(c.action)),
            Placeholder::Class => write!(out, "{}", c.class),
            Placeholder::ClassName => out.write_str(self.class_name),
            Placeholder::Confidence => match self.confidence {
                Some(x) => write!(out, "{x:.4}"),
                None => out.write_str("null"),
            },
            Placeholder::Seq => write!(out, "{}", c.seq),
            Placeholder::Model => out.write_str(&c.model.name),
            Placeholder::Source => out.write_str(source_name(c.source)),
            Placeholder::Reason => match self.decision {
                Some(d) if !d.rule.is_empty() => write!(out, "{}:{}", d.reason, d.rule),
                Some(d) => out.write_str(&d.reason),
                None => out.write_str(source_name(c.source)),
            },
            Placeholder::DecidedAtUs => write!(out, "{}", c.decided_at_us),
            Placeholder::LatencyUs => write!(out, "{}", c.latency_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Template;
    use reflex_wire::ModelRef;

    fn command(device: &str, action: Action, source: DecisionSource) -> Command {
        Command {
            version: reflex_wire::COMMAND_FORMAT_VERSION,
            device: device.try_into().unwrap(),
            seq: 42,
            action,
            class: 2,
            source,
            model: ModelRef {
                name: "edge".try_into().unwrap(),
                version: "1.0.0".try_into().unwrap(),
            },
            decided_at_us: 1_700_000_000_000_000,
            latency_us: 850,
        }
    }

    const PLC: &str = r#"{"plc":"{device}","cmd":"{action}","why":"{reason}","class":{class},"name":"{class_name}","p":{confidence},"seq":{seq},"model":"{model}","by":"{source}","at":{decided_at_us},"lat":{latency_us}}"#;

    #[test]
    fn a_plc_template_renders_every_placeholder() {
        let cmd = command("press-7", Action::Stop, DecisionSource::Rule);
        let trace = DecisionTrace {
            reason: "rule".into(),
            rule: "shock".into(),
            proposed: "run".into(),
            confidence: Some(0.91234),
        };
        let got = Template::parse(PLC).unwrap().render(&CommandValues {
            cmd: &cmd,
            class_name: "bearing_fault",
            confidence: Some(0.91234),
            decision: Some(&trace),
        });
        assert_eq!(
            got,
            r#"{"plc":"press-7","cmd":"stop","why":"rule:shock","class":2,"name":"bearing_fault","p":0.9123,"seq":42,"model":"edge","by":"rule","at":1700000000000000,"lat":850}"#
        );
    }

    #[test]
    fn a_fallback_renders_a_null_confidence_and_its_source() {
        let cmd = command("a\"b\\c", Action::SlowDown, DecisionSource::Fallback);
        let got =
            Template::parse(r#"{"d":"{device}","a":"{action}","p":{confidence},"why":"{reason}"}"#)
                .unwrap()
                .render(&CommandValues {
                    cmd: &cmd,
                    class_name: "",
                    confidence: None,
                    decision: None,
                });
        assert_eq!(
            got,
            r#"{"d":"a\"b\\c","a":"slow_down","p":null,"why":"fallback"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v["d"], "a\"b\\c", "the device id survives the escaping");
    }
}
