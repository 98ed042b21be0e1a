use proptest::prelude::*;

use super::*;

const MS: u64 = 1_000_000;

fn model(class: usize, action: Action, confidence: f32) -> Verdict {
    Verdict {
        class,
        action,
        source: DecisionSource::Model,
        confidence: Some(confidence),
    }
}

fn fallback(action: Action) -> Verdict {
    Verdict {
        class: usize::MAX,
        action,
        source: DecisionSource::Fallback,
        confidence: None,
    }
}

/// A quiet window: 3 channels of small values.
fn quiet() -> Vec<Vec<f32>> {
    vec![vec![0.01, -0.01, 0.02, -0.02]; 3]
}

fn debounced(n: usize, m: usize) -> Policy {
    Policy {
        debounce: Some(Debounce { n, m }),
        ..Policy::default()
    }
}

#[test]
fn a_single_odd_window_is_held_back_by_debounce() {
    let p = debounced(2, 3);
    let mut s = DeviceState::new(&p);
    let w = quiet();
    let d = p.decide(&mut s, &model(2, Action::Stop, 0.9), &w[..], 0);
    assert_eq!((d.action, d.reason), (Action::Run, Reason::Debounce));
    assert_eq!(d.proposed, Action::Stop);
    let d = p.decide(&mut s, &model(0, Action::Run, 0.9), &w[..], MS);
    assert_eq!((d.action, d.reason), (Action::Run, Reason::Model));
    // Second stop within the last 3: fires.
    let d = p.decide(&mut s, &model(2, Action::Stop, 0.9), &w[..], 2 * MS);
    assert_eq!((d.action, d.reason), (Action::Stop, Reason::Model));
    assert_eq!(s.current, Action::Stop);
}

#[test]
fn the_default_action_is_never_debounced() {
    let p = debounced(3, 3);
    let mut s = DeviceState::new(&p);
    s.current = Action::Stop;
    let d = p.decide(&mut s, &model(0, Action::Run, 0.9), &quiet()[..], 0);
    assert_eq!((d.action, d.reason), (Action::Run, Reason::Model));
}

#[test]
fn the_policy_mapping_overrides_the_manifest() {
    let p = Policy {
        class_actions: vec![None, None, Some(Action::Inspect)],
        ..Policy::default()
    };
    let mut s = DeviceState::new(&p);
    let d = p.decide(&mut s, &model(2, Action::Stop, 0.9), &quiet()[..], 0);
    assert_eq!((d.action, d.reason), (Action::Inspect, Reason::Model));
    let d = p.decide(&mut s, &model(1, Action::SlowDown, 0.9), &quiet()[..], 0);
    assert_eq!(d.action, Action::SlowDown, "unmapped class: the manifest's");
}

#[test]
fn below_the_threshold_the_device_keeps_its_action_or_gets_the_configured_one() {
    let mut p = Policy {
        min_confidence: 0.8,
        ..Policy::default()
    };
    let mut s = DeviceState::new(&p);
    s.current = Action::SlowDown;
    let d = p.decide(&mut s, &model(2, Action::Stop, 0.79), &quiet()[..], 0);
    assert_eq!(
        (d.action, d.reason),
        (Action::SlowDown, Reason::BelowConfidence)
    );
    p.below_confidence = Some(Action::Inspect);
    let d = p.decide(&mut s, &model(2, Action::Stop, 0.5), &quiet()[..], 0);
    assert_eq!(
        (d.action, d.reason),
        (Action::Inspect, Reason::BelowConfidence)
    );
    let d = p.decide(&mut s, &model(2, Action::Stop, 0.8), &quiet()[..], 0);
    assert_eq!((d.action, d.reason), (Action::Stop, Reason::Model));
}

#[test]
fn cooldown_holds_a_change_until_it_has_passed() {
    let p = Policy {
        cooldown_ns: 100 * MS,
        ..Policy::default()
    };
    let mut s = DeviceState::new(&p);
    let w = quiet();
    assert_eq!(
        p.decide(&mut s, &model(1, Action::SlowDown, 1.0), &w[..], 0)
            .action,
        Action::SlowDown,
        "the first change is not held"
    );
    let d = p.decide(&mut s, &model(2, Action::Stop, 1.0), &w[..], 99 * MS);
    assert_eq!((d.action, d.reason), (Action::SlowDown, Reason::Cooldown));
    let d = p.decide(&mut s, &model(2, Action::Stop, 1.0), &w[..], 100 * MS);
    assert_eq!((d.action, d.reason), (Action::Stop, Reason::Model));
}

fn peak_rule(channel: usize, above: f32, action: Action) -> Rule {
    Rule {
        name: "shock".into(),
        metric: Metric::Peak(channel),
        test: Test::Above(above),
        class: None,
        action,
    }
}

#[test]
fn a_rule_wins_over_the_model_the_fallback_debounce_and_cooldown() {
    let p = Policy {
        debounce: Some(Debounce { n: 3, m: 3 }),
        cooldown_ns: u64::MAX,
        rules: vec![peak_rule(1, 2.0, Action::Stop)],
        ..Policy::default()
    };
    let mut s = DeviceState::new(&p);
    let mut loud = quiet();
    loud[1][2] = -2.5;
    let d = p.decide(&mut s, &model(0, Action::Run, 1.0), &loud[..], 0);
    assert_eq!(
        (d.action, d.source, d.reason),
        (Action::Stop, DecisionSource::Rule, Reason::Rule(0))
    );
    let d = p.decide(&mut s, &fallback(Action::SlowDown), &loud[..], 1);
    assert_eq!((d.action, d.source), (Action::Stop, DecisionSource::Rule));
    let d = p.decide(&mut s, &model(0, Action::Run, 1.0), &quiet()[..], 2);
    assert_eq!(
        (d.action, d.reason),
        (Action::Stop, Reason::Cooldown),
        "after the rule, cooldown holds the device in the rule's action"
    );
}

#[test]
fn a_rule_on_a_missing_channel_or_a_fallback_confidence_never_matches() {
    let conf = Rule {
        name: "unsure".into(),
        metric: Metric::Confidence,
        test: Test::Below(0.5),
        class: None,
        action: Action::Inspect,
    };
    let p = Policy {
        rules: vec![peak_rule(7, -1.0, Action::Stop), conf],
        ..Policy::default()
    };
    let mut s = DeviceState::new(&p);
    let d = p.decide(&mut s, &fallback(Action::SlowDown), &quiet()[..], 0);
    assert_eq!((d.action, d.reason), (Action::SlowDown, Reason::Fallback));
    let d = p.decide(&mut s, &model(0, Action::Run, 0.4), &quiet()[..], 0);
    assert_eq!((d.action, d.reason), (Action::Inspect, Reason::Rule(1)));
}

#[test]
fn a_rule_with_a_class_matches_only_that_class() {
    let p = Policy {
        rules: vec![Rule {
            class: Some(1),
            ..peak_rule(0, 0.0, Action::Stop)
        }],
        ..Policy::default()
    };
    let mut s = DeviceState::new(&p);
    let w = quiet();
    assert_eq!(
        p.decide(&mut s, &model(0, Action::Run, 1.0), &w[..], 0)
            .source,
        DecisionSource::Model
    );
    assert_eq!(
        p.decide(&mut s, &model(1, Action::SlowDown, 1.0), &w[..], 0)
            .source,
        DecisionSource::Rule
    );
}

#[test]
fn channel_statistics_are_rms_peak_and_mean() {
    let s = ChannelStats::of([3.0f32, -4.0].into_iter());
    assert!((s.rms - 12.5f32.sqrt()).abs() < 1e-6);
    assert_eq!(s.peak, 4.0);
    assert_eq!(s.mean, -0.5);
}

#[test]
fn the_device_table_forgets_the_least_recently_seen_device_first() {
    let p = Policy::default();
    let mut t = DeviceTable::new(2);
    let id = |s: &str| DeviceId::try_from(s).unwrap();
    t.state(&id("a"), &p).current = Action::Stop;
    t.state(&id("b"), &p).current = Action::Stop;
    t.state(&id("a"), &p);
    t.state(&id("c"), &p);
    assert_eq!(t.len(), 2);
    assert_eq!(t.state(&id("a"), &p).current, Action::Stop, "a was kept");
    assert_eq!(
        t.state(&id("b"), &p).current,
        Action::Run,
        "b was forgotten"
    );
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        Just(Action::Run),
        Just(Action::SlowDown),
        Just(Action::Inspect),
        Just(Action::Stop)
    ]
}

/// A stream of model verdicts: (class, manifest action, confidence, ms since the last).
fn verdicts() -> impl Strategy<Value = Vec<(usize, Action, f32, u64)>> {
    prop::collection::vec((0usize..4, action(), 0.0f32..=1.0, 0u64..50), 1..200)
}

proptest! {
    #[test]
    fn debounce_never_fires_an_action_before_n_of_the_last_m_proposed_it(
        n in 1usize..6, extra in 0usize..6, stream in verdicts(),
    ) {
        let m = n + extra;
        let p = debounced(n, m);
        let mut s = DeviceState::new(&p);
        let mut proposals: Vec<Action> = Vec::new();
        let (w, mut now) = (quiet(), 0);
        for (class, a, c, dt) in stream {
            now += dt * MS;
            let before = s.current;
            let d = p.decide(&mut s, &model(class, a, c), &w[..], now);
            proposals.push(a);
            if d.action != before && d.action != p.default_action {
                let recent = &proposals[proposals.len().saturating_sub(m)..];
                let agree = recent.iter().filter(|x| **x == d.action).count();
                prop_assert!(agree >= n, "{:?} fired with {agree} of the last {m}", d.action);
            }
        }
    }

    #[test]
    fn two_changes_of_a_device_s_action_are_never_closer_than_the_cooldown(
        cooldown_ms in 0u64..200, stream in verdicts(),
    ) {
        let p = Policy { cooldown_ns: cooldown_ms * MS, ..Policy::default() };
        let mut s = DeviceState::new(&p);
        let (w, mut now, mut last_change) = (quiet(), 0, None::<u64>);
        for (class, a, c, dt) in stream {
            now += dt * MS;
            let before = s.current;
            let d = p.decide(&mut s, &model(class, a, c), &w[..], now);
            if d.action != before {
                if let Some(t) = last_change {
                    prop_assert!(now - t >= p.cooldown_ns, "changed after {} ns", now - t);
                }
                last_change = Some(now);
            }
        }
    }

    #[test]
    fn a_matching_rule_always_decides(
        stream in verdicts(), peaks in prop::collection::vec(0.0f32..4.0, 200),
        debounce in prop::option::of((1usize..4, 0usize..4)), cooldown_ms in 0u64..100,
        rule_action in action(), min_confidence in 0.0f32..1.0,
    ) {
        let p = Policy {
            min_confidence,
            debounce: debounce.map(|(n, extra)| Debounce { n, m: n + extra }),
            cooldown_ns: cooldown_ms * MS,
            rules: vec![peak_rule(0, 2.0, rule_action)],
            ..Policy::default()
        };
        let mut s = DeviceState::new(&p);
        let mut now = 0;
        for ((class, a, c, dt), peak) in stream.into_iter().zip(peaks) {
            now += dt * MS;
            let mut w = quiet();
            w[0][0] = peak;
            let v = if c < 0.1 { fallback(a) } else { model(class, a, c) };
            let d = p.decide(&mut s, &v, &w[..], now);
            if peak > 2.0 {
                prop_assert_eq!((d.action, d.source), (rule_action, DecisionSource::Rule));
            } else {
                prop_assert_ne!(d.source, DecisionSource::Rule);
            }
        }
    }

    #[test]
    fn a_window_below_the_threshold_never_sends_the_action_it_proposed(
        min_confidence in 0.01f32..=1.0, stream in verdicts(),
        below in prop::option::of(action()),
    ) {
        let p = Policy { min_confidence, below_confidence: below, ..Policy::default() };
        let mut s = DeviceState::new(&p);
        let w = quiet();
        for (class, a, c, _) in stream {
            let before = s.current;
            let d = p.decide(&mut s, &model(class, a, c), &w[..], 0);
            if c < min_confidence {
                prop_assert_eq!(d.reason, Reason::BelowConfidence);
                prop_assert_eq!(d.action, below.unwrap_or(before));
            } else {
                prop_assert_eq!((d.action, d.reason), (a, Reason::Model));
            }
        }
    }
}
