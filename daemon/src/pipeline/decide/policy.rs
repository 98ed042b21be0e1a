//! A route's decision policy: what a device is told, from the engine's verdict (the
//! model's class and confidence, or the fallback's answer), cheap statistics of the
//! event's window and what the device was told before. Pure: no I/O, no clock (time is
//! passed in), no lock; the decide stage keeps one [`DeviceTable`] per route behind a lock.
//!
//! # Order of evaluation, per event
//!
//! 1. **Rules**, in order: the first whose condition holds decides (`source = rule`,
//!    reason `rule`). A rule always wins over the model and the fallback, and is never
//!    held back by debounce or cooldown. A rule reads only what is on the real-time path
//!    already: the model's class and confidence (when the model answered; a confidence
//!    rule never matches a fallback answer) and per-channel rms / peak (largest |x|) / mean
//!    of the window in g, computed from the event on demand ([`ChannelStats`]).
//! 2. **Fallback**: when the model missed its deadline the fallback's action is sent as
//!    is (reason `fallback`): it is the safety net, never debounced or cooled down.
//! 3. **Class → action**: the policy's mapping of the model's class, else the manifest's.
//! 4. **Confidence threshold**: below `min_confidence` the window proposes nothing and
//!    the policy answers `below_confidence` (an action, or the device's current action),
//!    reason `below_confidence`.
//! 5. **Debounce** (`n` of `m`): an action other than the default one is sent only when at
//!    least `n` of the device's last `m` windows (this one included) proposed it; else the
//!    device keeps its current action, reason `debounce`. A window below the threshold
//!    counts among the `m` but proposes nothing.
//! 6. **Cooldown**: a change of the device's action sooner than `cooldown` after its last
//!    change is held (the device keeps its current action), reason `cooldown`.
//!
//! # Device state
//!
//! Per device: its current action (it starts in the default action), the time of its last
//! change, and the proposals of its last `m` windows. At most `max_devices` devices are
//! remembered (the `[devices] max_tracked` limit); the least recently seen is forgotten
//! first and starts again from the default action when it comes back.

use std::collections::{BTreeMap, HashMap, VecDeque};

use reflex_wire::{Action, DecisionSource, DeviceId};

use crate::pipeline::types::Nanos;

/// What a rule reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// The model's softmax probability of its class.
    Confidence,
    /// Root mean square of a channel, g.
    Rms(usize),
    /// Largest absolute value of a channel, g.
    Peak(usize),
    /// Mean of a channel, g.
    Mean(usize),
}

/// How a rule compares its metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Test {
    /// Strictly above.
    Above(f32),
    /// Strictly below.
    Below(f32),
}

/// One rule: `metric` passes `test` (and the model said `class`, when set) → `action`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Its name (journal, `{reason}`).
    pub name: String,
    /// What it reads.
    pub metric: Metric,
    /// How it compares.
    pub test: Test,
    /// The model's class it also requires.
    pub class: Option<usize>,
    /// What it sends.
    pub action: Action,
}

/// `n` of the last `m` windows must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debounce {
    /// Agreeing windows needed, 1..=m.
    pub n: usize,
    /// Windows remembered, 1..=64.
    pub m: usize,
}

/// A route's policy, built from a validated `[routes.policy]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Action by class index; `None`: the engine's (the manifest's) action.
    pub class_actions: Vec<Option<Action>>,
    /// The resting action: never debounced; where a device starts.
    pub default_action: Action,
    /// Least confidence for the model's class to count.
    pub min_confidence: f32,
    /// Below the threshold: this action, or `None` to keep the current one.
    pub below_confidence: Option<Action>,
    /// Debounce, if any.
    pub debounce: Option<Debounce>,
    /// Least time between two changes of a device's action, ns (0: none).
    pub cooldown_ns: u64,
    /// Rules, in order.
    pub rules: Vec<Rule>,
}

impl Default for Policy {
    /// No mapping, threshold, debounce, cooldown or rule: the engine's verdict as is.
    fn default() -> Self {
        Policy {
            class_actions: Vec::new(),
            default_action: Action::Run,
            min_confidence: 0.0,
            below_confidence: None,
            debounce: None,
            cooldown_ns: 0,
            rules: Vec::new(),
        }
    }
}

/// Statistics of one channel of a window, in g.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelStats {
    /// Root mean square.
    pub rms: f32,
    /// Largest |x|.
    pub peak: f32,
    /// Mean.
    pub mean: f32,
}

impl ChannelStats {
    /// The statistics of `values` (all 0 for none).
    pub fn of(values: impl Iterator<Item = f32>) -> Self {
        let (mut n, mut sum, mut sq, mut peak) = (0u32, 0f64, 0f64, 0f32);
        for v in values {
            n += 1;
            sum += f64::from(v);
            sq += f64::from(v) * f64::from(v);
            peak = peak.max(v.abs());
        }
        if n == 0 {
            return ChannelStats {
                rms: 0.0,
                peak: 0.0,
                mean: 0.0,
            };
        }
        let n = f64::from(n);
        ChannelStats {
            rms: (sq / n).sqrt() as f32,
            peak,
            mean: (sum / n) as f32,
        }
    }
}

/// The event's window as rules see it.
pub trait Signal {
    /// Statistics of `channel`; `None` when the window has no such channel.
    fn stats(&self, channel: usize) -> Option<ChannelStats>;
}

/// A window given as channels of values (tests, benchmarks).
impl Signal for [Vec<f32>] {
    fn stats(&self, channel: usize) -> Option<ChannelStats> {
        self.get(channel)
            .map(|c| ChannelStats::of(c.iter().copied()))
    }
}

/// The engine's verdict on one event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// The class acted on (`usize::MAX`: none).
    pub class: usize,
    /// The engine's action (the manifest's for the class, or the fallback's).
    pub action: Action,
    /// Model or fallback.
    pub source: DecisionSource,
    /// The model's probability of `class`; `None` when no model answered.
    pub confidence: Option<f32>,
}

/// Why the policy answered what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The model's class, mapped, passed every check.
    Model,
    /// The fallback answered; sent as is.
    Fallback,
    /// Rule number `.0` matched.
    Rule(usize),
    /// The model's confidence was below the threshold.
    BelowConfidence,
    /// Debounce held the proposed action back.
    Debounce,
    /// Cooldown held a change back.
    Cooldown,
}

impl Reason {
    /// The stable name: `model`, `fallback`, `rule`, `below_confidence`, `debounce`,
    /// `cooldown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Model => "model",
            Reason::Fallback => "fallback",
            Reason::Rule(_) => "rule",
            Reason::BelowConfidence => "below_confidence",
            Reason::Debounce => "debounce",
            Reason::Cooldown => "cooldown",
        }
    }
}

/// What the policy decided for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// What the device is told.
    pub action: Action,
    /// Who decided: a rule, else the engine's source.
    pub source: DecisionSource,
    /// Why.
    pub reason: Reason,
    /// What the model's class mapped to (the engine's action for the fallback).
    pub proposed: Action,
}

/// One device's memory.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceState {
    /// The action it was last told.
    pub current: Action,
    /// When that action last changed (`None`: never).
    pub changed_at: Option<Nanos>,
    /// What its last `m` windows proposed (`None`: below the threshold), oldest first.
    pub history: VecDeque<Option<Action>>,
}

impl DeviceState {
    /// A device never seen: in `policy`'s default action.
    pub fn new(policy: &Policy) -> Self {
        DeviceState {
            current: policy.default_action,
            changed_at: None,
            history: VecDeque::with_capacity(policy.debounce.map_or(0, |d| d.m)),
        }
    }

    fn tell(&mut self, action: Action, now: Nanos) {
        if action != self.current {
            self.current = action;
            self.changed_at = Some(now);
        }
    }
}

impl Rule {
    /// Whether the rule holds for `v` on `signal`.
    pub fn matches(&self, v: &Verdict, signal: &(impl Signal + ?Sized)) -> bool {
        if let Some(c) = self.class {
            if v.source != DecisionSource::Model || v.class != c {
                return false;
            }
        }
        let value = match self.metric {
            Metric::Confidence => match (v.source, v.confidence) {
                (DecisionSource::Model, Some(c)) => Some(c),
                _ => None,
            },
            Metric::Rms(ch) => signal.stats(ch).map(|s| s.rms),
            Metric::Peak(ch) => signal.stats(ch).map(|s| s.peak),
            Metric::Mean(ch) => signal.stats(ch).map(|s| s.mean),
        };
        match (value, self.test) {
            (Some(x), Test::Above(t)) => x > t,
            (Some(x), Test::Below(t)) => x < t,
            (None, _) => false,
        }
    }
}

impl Policy {
    /// The decision for verdict `v` on `signal` at `now`, for the device in `state`
    /// (updated). See the module docs for the order of evaluation.
    pub fn decide(
        &self,
        state: &mut DeviceState,
        v: &Verdict,
        signal: &(impl Signal + ?Sized),
        now: Nanos,
    ) -> Decision {
        if let Some(k) = self.rules.iter().position(|r| r.matches(v, signal)) {
            let action = self.rules[k].action;
            state.tell(action, now);
            return Decision {
                action,
                source: DecisionSource::Rule,
                reason: Reason::Rule(k),
                proposed: self.proposed(v),
            };
        }
        if v.source != DecisionSource::Model {
            state.tell(v.action, now);
            return Decision {
                action: v.action,
                source: v.source,
                reason: Reason::Fallback,
                proposed: v.action,
            };
        }
        let proposed = self.proposed(v);
        let confident = v.confidence.unwrap_or(0.0) >= self.min_confidence;
        if let Some(d) = self.debounce {
            if state.history.len() >= d.m {
                state.history.pop_front();
            }
            state.history.push_back(confident.then_some(proposed));
        }
        let (mut action, mut reason) = if !confident {
            (
                self.below_confidence.unwrap_or(state.current),
                Reason::BelowConfidence,
            )
        } else {
            match self.debounce {
                Some(d)
                    if proposed != self.default_action
                        && state
                            .history
                            .iter()
                            .filter(|p| **p == Some(proposed))
                            .count()
                            < d.n =>
                {
                    (state.current, Reason::Debounce)
                }
                _ => (proposed, Reason::Model),
            }
        };
        if action != state.current
            && state
                .changed_at
                .is_some_and(|t| now.saturating_sub(t) < self.cooldown_ns)
        {
            action = state.current;
            reason = Reason::Cooldown;
        }
        state.tell(action, now);
        Decision {
            action,
            source: DecisionSource::Model,
            reason,
            proposed,
        }
    }

    /// The action the model's class maps to.
    fn proposed(&self, v: &Verdict) -> Action {
        match v.source {
            DecisionSource::Model => self
                .class_actions
                .get(v.class)
                .copied()
                .flatten()
                .unwrap_or(v.action),
            _ => v.action,
        }
    }
}

/// The state of every device of a route, at most `max_devices` of them (the least
/// recently seen is forgotten first).
#[derive(Debug)]
pub struct DeviceTable {
    max_devices: usize,
    tick: u64,
    devices: HashMap<DeviceId, (DeviceState, u64)>,
    by_age: BTreeMap<u64, DeviceId>,
}

impl DeviceTable {
    /// An empty table for at most `max_devices` devices (at least 1).
    pub fn new(max_devices: usize) -> Self {
        DeviceTable {
            max_devices: max_devices.max(1),
            tick: 0,
            devices: HashMap::new(),
            by_age: BTreeMap::new(),
        }
    }

    /// Devices remembered.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// True when no device is remembered.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The state of `device` (new in `policy`'s default action if not remembered),
    /// marked as the most recently seen.
    pub fn state(&mut self, device: &DeviceId, policy: &Policy) -> &mut DeviceState {
        self.tick += 1;
        let tick = self.tick;
        if let Some((_, seen)) = self.devices.get_mut(device) {
            self.by_age.remove(seen);
            *seen = tick;
        } else {
            if self.devices.len() >= self.max_devices {
                if let Some((_, oldest)) = self.by_age.pop_first() {
                    self.devices.remove(&oldest);
                }
            }
            self.devices
                .insert(device.clone(), (DeviceState::new(policy), tick));
        }
        self.by_age.insert(tick, device.clone());
        // Inserted or found just above.
        &mut self.devices.get_mut(device).expect("present").0
    }
}

#[cfg(test)]
mod tests;
