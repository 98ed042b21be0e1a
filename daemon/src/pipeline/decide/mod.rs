//! Decide: what the command says. The engine's verdict for an event ([`Answer`]: the
//! model's prediction or the fallback's, the action, who decided and why) becomes the
//! event's one [`Command`], encoded in the route's format for the route's command topic,
//! with the [`Decided`] record the recorder journals once the command is out. Called
//! exactly once per accepted event, by the thread that claimed the event's decision.
//!
//! A route with a decision policy ([`policy`], built per route into a [`RoutePolicy`])
//! passes the verdict through it first: the policy may change the action (class mapping,
//! confidence threshold, debounce, cooldown) or decide itself (a rule: `source = rule`),
//! and what decided is journaled with the record ([`reflex_records::DecisionTrace`]). A
//! route with a command template ([`payload`]) publishes the rendered template instead of
//! the wire command. A route with neither behaves exactly as before.
//!
//! The policy's per-device state sits behind one lock per route, held for the policy's
//! pure decision only (no I/O, no allocation but a new device's entry).

pub mod payload;
pub mod policy;

use std::sync::{Arc, Mutex};

use reflex_records::{DecisionTrace, StageTimings};
use reflex_wire::{Command, Window, COMMAND_FORMAT_VERSION};

use crate::config::policy::action_of;
use crate::config::{Format, RouteConfig, Template};
use crate::ops::metrics::Metrics;
use crate::pipeline::features::{FeaturePlan, RoutePlans};
use crate::pipeline::types::{
    micros, unix_now_us, Answer, Clock, CommandSink, Decided, DecisionSink, Outbound,
};
use payload::CommandValues;
use policy::{ChannelStats, Debounce, DeviceTable, Metric, Policy, Rule, Signal, Test, Verdict};

/// A route's decision policy and command template, with the policy's device state.
#[derive(Debug)]
pub struct RoutePolicy {
    /// The policy; `None`: the engine's verdict as is.
    pub policy: Option<Policy>,
    /// The command payload template; `None`: the wire command in the route's format.
    pub template: Option<Template>,
    /// The class names of the route's model, by index (for `{class_name}`).
    pub classes: Vec<String>,
    devices: Mutex<DeviceTable>,
}

/// Why a validated route's policy could not be built against its model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A class name the route's model does not have.
    #[error("routes[{route}].policy: class {class:?} is not a class of the route's model (classes: {classes:?})")]
    UnknownClass {
        /// Route index.
        route: usize,
        /// The name.
        class: String,
        /// The model's classes.
        classes: Vec<String>,
    },
    /// A value validation refuses (the config was not validated).
    #[error("routes[{route}].{field}: invalid value {value:?} (run `reflexd validate`)")]
    Invalid {
        /// Route index.
        route: usize,
        /// Field under the route.
        field: String,
        /// The value.
        value: String,
    },
}

impl RoutePolicy {
    /// No policy and no template: the engine's verdict, as the wire command.
    pub fn none() -> Self {
        RoutePolicy {
            policy: None,
            template: None,
            classes: Vec::new(),
            devices: Mutex::new(DeviceTable::new(1)),
        }
    }

    /// The policy and template of validated route `index`, whose model has `classes`;
    /// at most `max_devices` devices are remembered.
    pub fn build(
        index: usize,
        route: &RouteConfig,
        classes: Vec<String>,
        max_devices: usize,
    ) -> Result<Self, PolicyError> {
        let invalid = |field: &str, value: &str| PolicyError::Invalid {
            route: index,
            field: field.to_owned(),
            value: value.to_owned(),
        };
        let template = route
            .command_template
            .as_deref()
            .map(|t| Template::parse(t).map_err(|_| invalid("command_template", t)))
            .transpose()?;
        let class_index = |name: &str| {
            classes
                .iter()
                .position(|c| c == name)
                .ok_or_else(|| PolicyError::UnknownClass {
                    route: index,
                    class: name.to_owned(),
                    classes: classes.clone(),
                })
        };
        let action = |field: &str, name: &str| action_of(name).ok_or_else(|| invalid(field, name));
        let policy = match &route.policy {
            None => None,
            Some(c) => {
                let mut class_actions = vec![None; classes.len()];
                for (class, a) in &c.actions {
                    class_actions[class_index(class)?] = Some(action("policy.actions", a)?);
                }
                let mut rules = Vec::with_capacity(c.rules.len());
                for r in &c.rules {
                    let ch = r.channel.unwrap_or(0) as usize;
                    let metric = match r.metric.as_str() {
                        "confidence" => Metric::Confidence,
                        "rms" => Metric::Rms(ch),
                        "peak" => Metric::Peak(ch),
                        "mean" => Metric::Mean(ch),
                        other => return Err(invalid("policy.rules.metric", other)),
                    };
                    let test = match (r.above, r.below) {
                        (Some(t), None) => Test::Above(t as f32),
                        (None, Some(t)) => Test::Below(t as f32),
                        _ => return Err(invalid("policy.rules.above", &r.name)),
                    };
                    rules.push(Rule {
                        name: r.name.clone(),
                        metric,
                        test,
                        class: r.class.as_deref().map(class_index).transpose()?,
                        action: action("policy.rules.action", &r.action)?,
                    });
                }
                Some(Policy {
                    class_actions,
                    default_action: action("policy.default_action", &c.default_action)?,
                    min_confidence: c.min_confidence as f32,
                    below_confidence: match c.below_confidence.as_str() {
                        crate::config::policy::KEEP => None,
                        other => Some(action("policy.below_confidence", other)?),
                    },
                    debounce: c.debounce.map(|d| Debounce {
                        n: d.n as usize,
                        m: d.m as usize,
                    }),
                    cooldown_ns: c.cooldown_ms.saturating_mul(1_000_000),
                    rules,
                })
            }
        };
        Ok(RoutePolicy {
            policy,
            template,
            classes,
            devices: Mutex::new(DeviceTable::new(max_devices)),
        })
    }

    /// Devices whose state the policy remembers.
    pub fn devices(&self) -> usize {
        self.devices.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// An event's window as the policy's rules read it.
pub struct WindowSignal<'a>(pub &'a Window);

impl Signal for WindowSignal<'_> {
    fn stats(&self, channel: usize) -> Option<ChannelStats> {
        if channel >= usize::from(self.0.channels) {
            return None;
        }
        let scale = self.0.scale;
        Some(ChannelStats::of(
            self.0
                .channel(channel)
                .iter()
                .map(|&c| f32::from(c) * scale),
        ))
    }
}

/// Builds each event's command and hands it to the actuate stage.
pub struct Decider {
    /// By route slot; a slot without one (a route added by a reload, which refuses a
    /// policy or template on it) decides with none.
    policies: Vec<RoutePolicy>,
    none: RoutePolicy,
    /// Each route version's feature plan, handed to the recorder with the decision.
    plans: Option<Arc<RoutePlans>>,
    demo: Arc<FeaturePlan>,
    clock: Clock,
    metrics: Arc<Metrics>,
    out: Arc<dyn CommandSink>,
}

impl Decider {
    /// Commands handed to `out`, each for the route version its event was accepted
    /// under ([`Answer::to`]).
    pub fn new(clock: Clock, metrics: Arc<Metrics>, out: Arc<dyn CommandSink>) -> Self {
        Decider {
            policies: Vec::new(),
            none: RoutePolicy::none(),
            plans: None,
            demo: Arc::new(FeaturePlan::Demo),
            clock,
            metrics,
            out,
        }
    }

    /// With a policy and template per route (by route slot; missing ones: none). A
    /// route's policy and template are set at start: a reload that changes them, or adds
    /// a route with one, is refused (`config::reload`).
    pub fn with_policies(mut self, policies: Vec<RoutePolicy>) -> Self {
        self.policies = policies;
        self
    }

    /// With the feature plans of the route versions: each decision carries the plan of
    /// the version its event was accepted under (without: [`FeaturePlan::Demo`]).
    pub fn with_feature_plans(mut self, plans: Arc<RoutePlans>) -> Self {
        self.plans = Some(plans);
        self
    }
}

/// `cmd` in `format`; None (logged) if it does not encode.
fn encode(cmd: &Command, format: Format) -> Option<Vec<u8>> {
    match format {
        Format::Json => Some(reflex_wire::json::encode_command(cmd)),
        Format::Postcard => {
            // Cannot fail: the device id was validated when the event decoded, and every
            // other field is bounded so that a command fits MAX_COMMAND_BYTES (wire's
            // round-trip property test). Were it to, answering in another format than the
            // route's would be worse than saying so loudly.
            let mut buf = [0u8; reflex_wire::MAX_COMMAND_BYTES];
            match cmd.encode(&mut buf) {
                Ok(b) => Some(b.to_vec()),
                Err(e) => {
                    tracing::error!(device = %cmd.device, seq = cmd.seq, error = %e, "bug: a command did not encode; not sent");
                    None
                }
            }
        }
    }
}

impl DecisionSink for Decider {
    fn decided(&self, a: Answer<'_>) -> bool {
        let route = a.to;
        let rp = self.policies.get(a.route).unwrap_or(&self.none);
        let now = self.clock.now();
        let confidence = a.run.as_ref().and_then(|r| r.confidence);
        let (action, source, decision) = match &rp.policy {
            None => (a.action, a.source, None),
            Some(p) => {
                let verdict = Verdict {
                    class: a.class,
                    action: a.action,
                    source: a.source,
                    confidence,
                };
                let d = {
                    let mut devices = rp.devices.lock().unwrap_or_else(|e| e.into_inner());
                    let state = devices.state(&a.event.device, p);
                    p.decide(state, &verdict, &WindowSignal(&a.event.window), now)
                };
                let rule = match d.reason {
                    policy::Reason::Rule(k) => p.rules[k].name.clone(),
                    _ => String::new(),
                };
                let trace = DecisionTrace {
                    reason: d.reason.as_str().to_owned(),
                    rule,
                    proposed: payload::action_name(d.proposed).to_owned(),
                    confidence,
                };
                (d.action, d.source, Some(trace))
            }
        };
        let cmd = Command {
            version: COMMAND_FORMAT_VERSION,
            device: a.event.device.clone(),
            seq: a.event.seq,
            action,
            class: u8::try_from(a.class).unwrap_or(u8::MAX),
            source,
            model: a.model,
            decided_at_us: unix_now_us(),
            latency_us: micros(now.saturating_sub(a.arrival)),
        };
        let payload = match &rp.template {
            Some(t) => t
                .render(&CommandValues {
                    cmd: &cmd,
                    class_name: rp.classes.get(a.class).map_or("", String::as_str),
                    confidence,
                    decision: decision.as_ref(),
                })
                .into_bytes(),
            None => match encode(&cmd, route.format) {
                Some(p) => p,
                None => return false,
            },
        };
        self.metrics.decided(a.route, source);
        let (logits, queue_ns, infer_ns) = match a.run {
            Some(r) => (r.logits, r.queue_ns, r.infer_ns),
            None => (Vec::new(), 0, 0),
        };
        let decided = Box::new(Decided {
            route: a.route,
            event: a.event.clone(),
            payload: a.payload.clone(),
            arrival_unix_us: a.arrival_unix_us,
            command: payload.clone(),
            class: a.class,
            logits,
            source,
            model: cmd.model.clone(),
            timings: StageTimings {
                decode_us: micros(a.decode_ns),
                queue_us: micros(queue_ns),
                infer_us: micros(infer_ns),
                publish_us: 0,
                end_to_end_us: 0,
                budget_us: micros(a.deadline.saturating_sub(a.arrival)),
            },
            miss: a.miss,
            ack: a.ack.cloned(),
            decision,
            features: match &self.plans {
                Some(p) => p.of(a.route, a.to),
                None => self.demo.clone(),
            },
        });
        self.out.send(Outbound {
            topic: route.topic(&a.event.device),
            payload,
            qos: route.qos_out,
            decided: now,
            arrival: a.arrival,
            record: decided,
        });
        true
    }
}
