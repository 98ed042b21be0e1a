//! The fallback of each route: what answers an accepted event its model cannot answer in
//! time (the deadline timer, a full queue, a failed run). One per route, of the kind its
//! `[routes.fallback]` declares (`config::fallback`); built and timed at load
//! (`service::models`), where a fallback slower than `scheduler.safety_margin_us` is
//! refused.
//!
//! Contracts:
//! - **It always answers.** [`RouteFallback::answer`] returns an action for every event;
//!   the window was checked against the route model's shape before the engine accepted
//!   it, so every kind can read it.
//! - **Short on the timer thread.** No kind allocates once warmed up, except the
//!   `manifest` kind (one window copy, as it always did) and the `onnx` kind (tract's
//!   run); the locks are held for one lookup, one feature computation or one model run,
//!   and only the timer and the workers take them.
//! - `last_decision` reuses the device's last *model* decision on the route (the engine's
//!   verdict, before the route's policy) while it is younger than `max_age_ms`
//!   ([`reuse_last`]); a decision as old or older is never reused. At most
//!   [`MAX_REMEMBERED_DEVICES`] devices are remembered per route; a device beyond them
//!   gets `otherwise`.
//! - `rules` evaluates its rules in order on the window's monitoring features, computed
//!   as the route's model manifest declares them (`reflex_models::stats`; format 1: the
//!   13 features); the first that holds decides ([`first_rule`]), else `otherwise`. A
//!   scalar feature named `temperature` is the event's temperature; any other scalar is
//!   NaN, which no rule holds on. A comparison with NaN never holds.
//!
//! The rule evaluation and the aging are pure functions with their own tests.

use std::collections::HashMap;
use std::sync::Mutex;

use reflex_models::stats::WindowStats;
use reflex_models::{Fallback, Model};
use reflex_wire::{Action, DeviceId, ModelRef, SensorEvent};

use crate::pipeline::types::{window_g, Nanos};

/// Devices whose last model decision a `last_decision` fallback remembers, per route.
pub const MAX_REMEMBERED_DEVICES: usize = 65_536;

/// A rule's comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Test {
    /// Holds when the feature is strictly above.
    Above(f64),
    /// Holds when the feature is strictly below.
    Below(f64),
}

impl Test {
    /// Whether `x` passes (never for NaN).
    pub fn holds(self, x: f64) -> bool {
        match self {
            Test::Above(t) => x > t,
            Test::Below(t) => x < t,
        }
    }
}

/// One rule of a `rules` fallback: feature `feature` (its index among the model's
/// monitoring features) passes `test` → `action`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    /// Index into the feature vector.
    pub feature: usize,
    /// The comparison.
    pub test: Test,
    /// The answer when it holds.
    pub action: Action,
}

/// The index of the first rule that holds on `features` (a rule whose feature is out of
/// range never holds).
pub fn first_rule(rules: &[Rule], features: &[f64]) -> Option<usize> {
    rules
        .iter()
        .position(|r| features.get(r.feature).is_some_and(|&x| r.test.holds(x)))
}

/// The action of the first rule that holds, else `otherwise`.
pub fn evaluate_rules(rules: &[Rule], features: &[f64], otherwise: Action) -> Action {
    first_rule(rules, features).map_or(otherwise, |k| rules[k].action)
}

/// The last model decision `last` (action, when) if it is younger than `max_age` at
/// `now`, else `otherwise`. A decision stamped after `now` (another thread's clock
/// reading) is as young as can be.
pub fn reuse_last(
    last: Option<(Action, Nanos)>,
    now: Nanos,
    max_age: Nanos,
    otherwise: Action,
) -> Action {
    match last {
        Some((action, at)) if now.saturating_sub(at) < max_age => action,
        _ => otherwise,
    }
}

/// The 13 features of format 1 as a window-stats spec (`reflex_models::stats` computes
/// them bit for bit as `features::compute`).
pub fn format1_stats() -> WindowStats {
    use reflex_models::stats::Stat;
    WindowStats {
        stats: vec![Stat::Mean, Stat::Std, Stat::Peak, Stat::Kurtosis],
        channels: ["x", "y", "z"].map(String::from).to_vec(),
        scalars: vec!["temperature".into()],
    }
}

/// The window and feature buffers of a `rules` fallback, reused for every answer (opaque).
#[derive(Debug, Default)]
pub struct Scratch {
    window: Vec<f32>,
    scalars: Vec<f64>,
    features: Vec<f64>,
}

/// How one route's fallback answers.
pub enum FallbackKind {
    /// The linear model of `fallback_manifest` on the 13 features.
    Manifest(Box<Fallback>),
    /// Always this action.
    Constant(Action),
    /// The device's last model decision while younger than `max_age`, else `otherwise`.
    LastDecision {
        /// Oldest decision reused, ns.
        max_age: Nanos,
        /// Else this.
        otherwise: Action,
        /// Each device's last model decision on the route (action, when).
        last: Mutex<HashMap<DeviceId, (Action, Nanos)>>,
    },
    /// The first rule that holds on the window's features, else `otherwise`.
    Rules {
        /// In order.
        rules: Vec<Rule>,
        /// Else this.
        otherwise: Action,
        /// The route model's monitoring features.
        stats: WindowStats,
        /// Reused buffers.
        scratch: Mutex<Scratch>,
    },
    /// A second ONNX model.
    Onnx(Box<Mutex<Model>>),
}

/// A route's fallback and its identity in commands and the journal.
pub struct RouteFallback {
    /// Name and version recorded with its answers: the manifest's or ONNX model's own,
    /// or `constant` / `last_decision` / `rules`.
    pub model: ModelRef,
    /// How it answers.
    pub kind: FallbackKind,
}

/// A fallback's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallbackAnswer {
    /// What the device is told.
    pub action: Action,
    /// The class of a model fallback (`manifest`, `onnx`); `usize::MAX` for the others
    /// (no class), and when a model fallback could not read the window (then `stop`).
    pub class: usize,
}

impl RouteFallback {
    /// A `rules` fallback over features `stats` for windows of `window_len` values.
    pub fn rules(
        model: ModelRef,
        rules: Vec<Rule>,
        otherwise: Action,
        stats: WindowStats,
        window_len: usize,
    ) -> RouteFallback {
        let scratch = Scratch {
            window: Vec::with_capacity(window_len),
            scalars: Vec::with_capacity(stats.scalars.len()),
            features: Vec::with_capacity(stats.len()),
        };
        RouteFallback {
            model,
            kind: FallbackKind::Rules {
                rules,
                otherwise,
                stats,
                scratch: Mutex::new(scratch),
            },
        }
    }

    /// A `last_decision` fallback.
    pub fn last_decision(model: ModelRef, max_age: Nanos, otherwise: Action) -> RouteFallback {
        RouteFallback {
            model,
            kind: FallbackKind::LastDecision {
                max_age,
                otherwise,
                last: Mutex::new(HashMap::new()),
            },
        }
    }

    /// The answer for `event` at `now` (pipeline clock).
    pub fn answer(&self, event: &SensorEvent, now: Nanos) -> FallbackAnswer {
        let none = |action| FallbackAnswer {
            action,
            class: usize::MAX,
        };
        match &self.kind {
            FallbackKind::Manifest(f) => {
                let g = window_g(event);
                let class = match <&[f32; reflex_models::WINDOW_LEN]>::try_from(g.as_slice()) {
                    Ok(w) => f.predict_window(w, event.temperature_c()),
                    Err(_) => usize::MAX,
                };
                FallbackAnswer {
                    action: f.action(class).unwrap_or(Action::Stop),
                    class,
                }
            }
            FallbackKind::Constant(a) => none(*a),
            FallbackKind::LastDecision {
                max_age,
                otherwise,
                last,
            } => {
                let seen = lock(last).get(&event.device).copied();
                none(reuse_last(seen, now, *max_age, *otherwise))
            }
            FallbackKind::Rules {
                rules,
                otherwise,
                stats,
                scratch,
            } => {
                let mut s = lock(scratch);
                let Scratch {
                    window,
                    scalars,
                    features,
                } = &mut *s;
                window.clear();
                window.extend(event.window.values());
                scalars.clear();
                scalars.extend(stats.scalars.iter().map(|n| {
                    if n == "temperature" {
                        f64::from(event.temperature_c())
                    } else {
                        f64::NAN
                    }
                }));
                let samples = usize::from(event.window.samples_per_channel);
                match stats.compute(window, samples, scalars, features) {
                    Ok(()) => none(evaluate_rules(rules, features, *otherwise)),
                    // Checked at load against the model's shape: only an event accepted
                    // just before a reload changed the shape gets here.
                    Err(_) => none(*otherwise),
                }
            }
            FallbackKind::Onnx(m) => {
                let mut model = lock(m);
                let g = window_g(event);
                match model.predict(&g, event.temperature_c()) {
                    Ok(p) => FallbackAnswer {
                        action: model.action(p.class).unwrap_or(Action::Stop),
                        class: p.class,
                    },
                    Err(_) => none(Action::Stop),
                }
            }
        }
    }

    /// The model answered `device` with `action` at `at`: a `last_decision` fallback
    /// remembers it (nothing for the other kinds).
    pub fn model_answered(&self, device: &DeviceId, action: Action, at: Nanos) {
        if let FallbackKind::LastDecision { last, .. } = &self.kind {
            let mut last = lock(last);
            let full = last.len() >= MAX_REMEMBERED_DEVICES;
            match last.get_mut(device) {
                Some(entry) => *entry = (action, at),
                None if !full => {
                    last.insert(device.clone(), (action, at));
                }
                None => {}
            }
        }
    }
}

/// A lock a panicking holder left poisoned is still usable: each guarded value is
/// rewritten whole by its users.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ACTIONS: [Action; 4] = [Action::Run, Action::SlowDown, Action::Inspect, Action::Stop];

    fn action() -> impl Strategy<Value = Action> {
        (0usize..4).prop_map(|i| ACTIONS[i])
    }

    fn rule() -> impl Strategy<Value = Rule> {
        (0usize..6, any::<bool>(), -10.0f64..10.0, action()).prop_map(|(feature, above, t, a)| {
            Rule {
                feature,
                test: if above {
                    Test::Above(t)
                } else {
                    Test::Below(t)
                },
                action: a,
            }
        })
    }

    #[test]
    fn the_first_rule_that_holds_decides_and_otherwise_answers_when_none_does() {
        let rules = [
            Rule {
                feature: 0,
                test: Test::Above(5.0),
                action: Action::Stop,
            },
            Rule {
                feature: 1,
                test: Test::Below(1.0),
                action: Action::Inspect,
            },
            Rule {
                feature: 1,
                test: Test::Below(2.0),
                action: Action::SlowDown,
            },
        ];
        assert_eq!(
            evaluate_rules(&rules, &[6.0, 0.0], Action::Run),
            Action::Stop
        );
        assert_eq!(
            evaluate_rules(&rules, &[5.0, 0.5], Action::Run),
            Action::Inspect
        );
        assert_eq!(
            evaluate_rules(&rules, &[5.0, 1.5], Action::Run),
            Action::SlowDown
        );
        assert_eq!(
            evaluate_rules(&rules, &[5.0, 2.0], Action::Run),
            Action::Run
        );
        // Thresholds are exclusive, NaN never holds, a missing feature never holds.
        assert_eq!(
            evaluate_rules(&rules, &[f64::NAN, f64::NAN], Action::Run),
            Action::Run
        );
        assert_eq!(evaluate_rules(&rules, &[], Action::Run), Action::Run);
    }

    #[test]
    fn a_last_decision_is_reused_only_while_younger_than_the_max_age() {
        let last = Some((Action::Stop, 1_000));
        assert_eq!(reuse_last(last, 1_000, 500, Action::Run), Action::Stop);
        assert_eq!(reuse_last(last, 1_499, 500, Action::Run), Action::Stop);
        assert_eq!(reuse_last(last, 1_500, 500, Action::Run), Action::Run);
        assert_eq!(reuse_last(None, 0, 500, Action::Inspect), Action::Inspect);
        // Stamped by another thread just after this one read the clock: young.
        assert_eq!(reuse_last(last, 900, 500, Action::Run), Action::Stop);
    }

    proptest! {
        #[test]
        fn a_rule_that_holds_always_answers_before_otherwise(
            rules in prop::collection::vec(rule(), 0..6),
            features in prop::collection::vec(-10.0f64..10.0, 6),
            otherwise in action(),
        ) {
            let answer = evaluate_rules(&rules, &features, otherwise);
            match rules.iter().position(|r| r.test.holds(features[r.feature])) {
                Some(k) => {
                    prop_assert_eq!(answer, rules[k].action);
                    // No earlier rule held.
                    prop_assert!(rules[..k].iter().all(|r| !r.test.holds(features[r.feature])));
                }
                None => prop_assert_eq!(answer, otherwise),
            }
        }

        #[test]
        fn a_decision_older_than_max_age_is_never_reused(
            at in 0u64..1_000_000,
            age in 0u64..2_000_000,
            max_age in 1u64..1_000_000,
            last in action(),
            otherwise in action(),
        ) {
            prop_assume!(last != otherwise);
            let answer = reuse_last(Some((last, at)), at + age, max_age, otherwise);
            if age >= max_age {
                prop_assert_eq!(answer, otherwise);
            } else {
                prop_assert_eq!(answer, last);
            }
        }
    }
}
