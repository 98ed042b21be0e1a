//! reflexd serving a format-2 model it has no code for, end to end against a real
//! mosquitto on loopback: the scikit-learn motor example (`models/examples/motor`, input
//! `[N, 128]` = current and temperature × 64 samples, a score with threshold 0.5 →
//! normal/run, anomaly/stop), imported by `reflex-model import`, read from a sensor's own
//! JSON by the `json` adapter and run by tract. Every answer agrees with scikit-learn's
//! score; a window of another shape is refused and never answered; an event the model
//! cannot answer in time is answered by the fallback its route declares
//! (`[routes.fallback]`), and the command names it.
//!
//! With live monitoring in windows short enough for a test, the motor route's drift is
//! judged on the motor's own declared features, by name: the held-out windows (the rows
//! its reference was taken from) drift in none, and a fleet whose currents run three times
//! higher drifts in every current feature and in no temperature feature.
//!
//! The same for the edge model's routes: a `last_decision` fallback answers with the
//! device's last model decision, a `rules` fallback with its first rule that holds on
//! the 13 features. A deadline miss is forced honestly: a route budget (or a sensor's
//! deadline hint) shorter than any model run plus the safety margin, which admission
//! sends to the fallback at once.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use common::routes::*;
use common::*;
use reflex_models::npy::Npy;
use reflex_tests::spawn_broker;
use reflex_wire::{Action, Command, DecisionSource, SensorEvent};

const SAMPLES: usize = 64;

fn motor(file: &str) -> PathBuf {
    repo().join("models/examples/motor").join(file)
}

/// The motor example's held-out windows (current then temperature, 64 each) and
/// scikit-learn's scores of them.
fn motor_rows() -> (Vec<Vec<f32>>, Vec<f32>) {
    let samples = Npy::read(motor("samples.npy")).unwrap();
    let values = samples.f32s().unwrap();
    let rows: Vec<Vec<f32>> = values
        .chunks_exact(2 * SAMPLES)
        .map(<[f32]>::to_vec)
        .collect();
    let scores = Npy::read(motor("expected_scores.npy"))
        .unwrap()
        .f32s()
        .unwrap();
    assert_eq!(rows.len(), scores.len());
    (rows, scores)
}

/// Units per count for the adapter: the largest |value| of the samples fits in 30 000
/// counts (the internal event's i16), so every window maps without overflow.
fn resolution(rows: &[Vec<f32>]) -> f64 {
    let peak = rows
        .iter()
        .flatten()
        .fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
    peak / 30_000.0
}

/// A window as the adapter reads it: each value rounded to counts of `res`.
fn as_counted(row: &[f32], res: f64) -> Vec<f64> {
    row.iter()
        .map(|&v| (f64::from(v) / res).round() * res)
        .collect()
}

/// A motor sensor's JSON: its own field names, current in A, temperature in °C.
fn motor_json(seq: u64, current: &[f32], temperature: &[f32]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "n": seq,
        "current": current,
        "temperature": temperature,
    }))
    .unwrap()
}

/// Publishes a held-out `row` (the currents, then the temperatures) on `topic` as the
/// motor's JSON window `seq`.
fn publish_row(f: &Field, topic: &str, seq: u64, row: &[f32]) {
    let (current, temperature) = row.split_at(SAMPLES);
    publish_to(f, topic, motor_json(seq, current, temperature));
}

/// A motor route on `motors/+/<topic>` reading [`motor_json`], budget `deadline_ms`,
/// with `fallback` as its `[routes.fallback]` body.
fn motor_route(name: &str, topic: &str, deadline_ms: f64, res: f64, fallback: &str) -> String {
    format!(
        r#"
[[routes]]
name = "{name}"
topic_filter = "motors/+/{topic}"
model = "motor"
deadline_ms = {deadline_ms}
command_topic = "actuators/{{device}}/cmd"
on_budget_unmeetable = "warn"
[routes.input]
kind = "json"
seq = "/n"
channels = ["/current", "/temperature"]
resolution = {res}
[routes.fallback]
{fallback}
"#
    )
}

/// The motor model's table, served from the committed imported manifest (monitored with
/// its own declared features, as every route is by default).
fn motor_model() -> String {
    format!(
        "[models.motor]\nmanifest = \"{}\"\ncalibration_runs = 200\n",
        motor("motor.manifest.json").display()
    )
}

/// Commands for `n` events, each (device, seq) answered exactly once.
fn answers(f: &Field, n: usize) -> HashMap<(String, u64), Command> {
    let seen = f.collect(n, Duration::from_secs(20));
    assert_eq!(seen.len(), n, "answered {} of {n}: {seen:?}", seen.len());
    seen.into_iter()
        .map(|(key, mut commands)| {
            assert_eq!(commands.len(), 1, "{key:?} answered {commands:?}");
            (key, commands.pop().unwrap())
        })
        .collect()
}

#[test]
fn the_motor_model_answers_its_json_windows_as_scikit_learn_scores_them_and_a_miss_gets_the_declared_fallback(
) {
    let _serial = serial();
    let broker = spawn_broker();
    let (rows, scores) = motor_rows();
    let res = resolution(&rows);
    // Hot motors stop, heavy currents slow down, else run (features as the imported
    // manifest names them: mean, std, rms, peak over current and temperature).
    let (hot, heavy) = (90.0, 9.0);
    let rules = format!(
        r#"kind = "rules"
otherwise = "run"
rules = [
  {{ feature = "mean_temperature", above = {hot:.1}, action = "stop" }},
  {{ feature = "rms_current", above = {heavy:.1}, action = "slow_down" }},
]"#
    );
    let routes = [
        motor_route(
            "motor",
            "window",
            50.0,
            res,
            "kind = \"constant\"\naction = \"stop\"",
        ),
        // 201 µs against a 200 µs safety margin: no model run fits, every event is
        // answered by the fallback at admission.
        motor_route("motor-tight", "tight", 0.201, res, &rules),
        motor_model(),
    ]
    .concat();
    let config = write_routes(&broker, "motor", &routes);
    let (_daemon, f) = start(&broker, &config);

    // Every held-out window, from 4 motors in turn.
    let device = |i: usize| format!("motor-{}", i % 4);
    for (i, row) in rows.iter().enumerate() {
        publish_row(&f, &format!("motors/{}/window", device(i)), i as u64, row);
    }
    let answered = answers(&f, rows.len());
    let mut stops = 0;
    for (i, score) in scores.iter().enumerate() {
        let c = &answered[&(device(i), i as u64)];
        let expected = if *score > 0.5 {
            Action::Stop
        } else {
            Action::Run
        };
        assert_eq!(c.source, DecisionSource::Model, "window {i}: {c:?}");
        assert_eq!(c.model.name.as_str(), "motor", "window {i}");
        assert_eq!(
            c.action, expected,
            "window {i}, scikit-learn's score {score}"
        );
        stops += usize::from(expected == Action::Stop);
    }
    assert!(
        stops > 0 && stops < rows.len(),
        "both classes are exercised"
    );

    // A window of another shape (2 × 32: a sensor set up for another model) decodes but
    // the model cannot read it: refused, never answered, not even by the fallback; the
    // window after it is answered.
    let (current, temperature) = rows[0].split_at(SAMPLES);
    let short = motor_json(1_000, &current[..32], &temperature[..32]);
    publish_to(&f, "motors/motor-0/window", short);
    publish_to(
        &f,
        "motors/motor-0/window",
        motor_json(1_001, current, temperature),
    );
    let c = next_command(&f, "the window after the short one");
    assert_eq!(c.seq, 1_001, "the short window was answered: {c:?}");
    assert_refused(&config, &["shape_mismatch"]);

    // Misses on the tight route: the rules fallback answers, from the window's features.
    // Other motors (dedupe is per device, whatever the route).
    let device = |i: usize| format!("tight-{}", i % 4);
    let tight: Vec<usize> = (0..40).collect();
    for &i in &tight {
        publish_row(
            &f,
            &format!("motors/{}/tight", device(i)),
            i as u64,
            &rows[i],
        );
    }
    let answered = answers(&f, tight.len());
    let mut by_rule = HashMap::new();
    for &i in &tight {
        let c = &answered[&(device(i), i as u64)];
        let values = as_counted(&rows[i], res);
        let (current, temperature) = values.split_at(SAMPLES);
        let mean_t = temperature.iter().sum::<f64>() / SAMPLES as f64;
        let rms_i = (current.iter().map(|v| v * v).sum::<f64>() / SAMPLES as f64).sqrt();
        for (x, t) in [(mean_t, hot), (rms_i, heavy)] {
            assert!((x - t).abs() > 1e-3, "window {i} sits on a threshold: {x}");
        }
        let expected = if mean_t > hot {
            Action::Stop
        } else if rms_i > heavy {
            Action::SlowDown
        } else {
            Action::Run
        };
        assert_eq!(c.source, DecisionSource::Fallback, "window {i}: {c:?}");
        assert_eq!(c.model.name.as_str(), "rules", "window {i}");
        assert_eq!(
            c.action, expected,
            "window {i}: mean temperature {mean_t}, rms current {rms_i}"
        );
        *by_rule.entry(expected).or_insert(0) += 1;
    }
    assert!(
        by_rule.len() >= 2,
        "the rules decided differently: {by_rule:?}"
    );
    let m = scrape(&config);
    assert_eq!(
        present(
            &m,
            "reflexd_decisions_total{route=\"motor-tight\",source=\"fallback\"}"
        ),
        tight.len() as u64
    );
}

/// The value of gauge `series` in `m`, `None` when absent.
fn gauge(m: &str, series: &str) -> Option<f64> {
    m.lines()
        .any(|l| l.starts_with(&format!("{series} ")))
        .then(|| reflex_tests::prometheus::metric(m, series))
}

/// The drift verdict of feature `name` on the motor route (1: drifted), `None` when absent.
fn drifted(m: &str, name: &str) -> Option<f64> {
    gauge(
        m,
        &format!("reflexd_drift_feature_drifted{{route=\"motor\",feature=\"{name}\"}}"),
    )
}

/// The features `/metrics` shows a drift verdict for on route `route`, sorted.
fn judged_features(m: &str, route: &str) -> Vec<String> {
    let prefix = format!("reflexd_drift_feature_drifted{{route=\"{route}\",feature=\"");
    let mut names: Vec<String> = m
        .lines()
        .filter_map(|l| {
            l.strip_prefix(&prefix)?
                .split('"')
                .next()
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

#[test]
fn the_motor_routes_live_drift_is_judged_on_its_declared_features_by_name() {
    let _serial = serial();
    let broker = spawn_broker();
    let (rows, _) = motor_rows();
    let shifted: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r[..SAMPLES].iter_mut().for_each(|v| *v *= 3.0);
            r
        })
        .collect();
    let res = resolution(&[rows.clone(), shifted.clone()].concat());
    // A window judged once it holds every held-out row at least once (400 events).
    let monitor = "\n[monitor]\nwindow_s = 4\nmin_events = 400\n";
    let routes = [
        motor_route(
            "motor",
            "window",
            50.0,
            res,
            "kind = \"constant\"\naction = \"stop\"",
        ),
        motor_model(),
        monitor.to_owned(),
    ]
    .concat();
    let config = write_routes(&broker, "motor-drift", &routes);
    let (_daemon, f) = start(&broker, &config);
    let manifest = reflex_models::Manifest::load(motor("motor.manifest.json")).unwrap();
    let plan = reflexd::pipeline::features::FeaturePlan::of(&manifest);
    let mut names = plan
        .feature_set()
        .expect("the motor's own names")
        .set()
        .names
        .clone();
    names.sort();
    assert_eq!(names.len(), 8, "{names:?}");

    // Rounds of every row, from 4 motors, each answered before the next, until a window
    // of at least `min_events` has closed and `done` holds of the figures (within 90 s:
    // windows close on the wall clock).
    let mut seq = 0u64;
    let mut until = |rows: &[Vec<f32>], what: &str, done: &dyn Fn(&str) -> bool| -> String {
        let end = std::time::Instant::now() + Duration::from_secs(90);
        while std::time::Instant::now() < end {
            for row in rows {
                publish_row(&f, &format!("motors/motor-{}/window", seq % 4), seq, row);
                seq += 1;
            }
            answers(&f, rows.len());
            let m = scrape(&config);
            let judged = gauge(&m, "reflexd_monitor_window_events{route=\"motor\"}")
                .is_some_and(|n| n >= 400.0)
                && gauge(&m, "reflexd_drift_drifted_feature_share{route=\"motor\"}").is_some();
            if judged && done(&m) {
                return m;
            }
        }
        panic!("no judged window where {what}:\n{}", scrape(&config));
    };

    // The held-out rows: judged on the 8 declared features, none drifted.
    let m = until(&rows, "the held-out rows are judged", &|_: &str| true);
    assert_eq!(judged_features(&m, "motor"), names);
    for name in &names {
        assert_eq!(
            drifted(&m, name),
            Some(0.0),
            "{name} drifted on the reference rows"
        );
        let p = gauge(
            &m,
            &format!(
                "reflexd_drift_score{{route=\"motor\",feature=\"{name}\",statistic=\"ks_p_value\"}}"
            ),
        );
        assert!(p.is_some_and(|p| p > 0.05), "{name}: ks p-value {p:?}");
    }
    assert_eq!(
        gauge(&m, "reflexd_drift_drifted_feature_share{route=\"motor\"}"),
        Some(0.0)
    );
    assert_eq!(
        present(&m, "reflexd_monitor_record_errors_total{route=\"motor\"}"),
        0
    );

    // Currents three times higher: every current feature drifts, no temperature one.
    let current: Vec<&String> = names.iter().filter(|n| n.ends_with("_current")).collect();
    assert_eq!(current.len(), 4);
    let m = until(&shifted, "every current feature drifted", &|m: &str| {
        current.iter().all(|n| drifted(m, n) == Some(1.0))
    });
    for name in names.iter().filter(|n| n.ends_with("_temperature")) {
        assert_eq!(
            drifted(&m, name),
            Some(0.0),
            "{name}: the temperatures did not move"
        );
    }
    assert_eq!(
        gauge(&m, "reflexd_drift_drifted_feature_share{route=\"motor\"}"),
        Some(0.5)
    );
}

/// `event` with the sensor asking for an answer within 1 µs: no model run fits.
fn hurried(event: &SensorEvent) -> SensorEvent {
    let mut e = event.clone();
    e.deadline_hint_us = Some(1);
    e
}

/// An edge route (3 × 64 postcard events) on `edge/+/<topic>` whose fallback is `body`.
fn edge_route(name: &str, topic: &str, body: &str) -> String {
    format!(
        r#"
[[routes]]
name = "{name}"
topic_filter = "edge/+/{topic}"
model = "edge"
deadline_ms = 50.0
command_topic = "actuators/{{device}}/cmd"
on_budget_unmeetable = "warn"
[routes.fallback]
{body}
"#
    )
}

#[test]
fn last_decision_and_rules_fallbacks_answer_misses_through_the_real_engine() {
    let _serial = serial();
    let broker = spawn_broker();
    let routes = [
        edge_route(
            "edge-last",
            "last",
            "kind = \"last_decision\"\nmax_age_ms = 600000.0\notherwise = \"inspect\"",
        ),
        edge_route(
            "edge-rules",
            "rules",
            "kind = \"rules\"\notherwise = \"run\"\nrules = [{ feature = \"temperature\", above = 0.0, action = \"slow_down\" }]",
        ),
    ]
    .concat();
    let config = write_routes(&broker, "fallback-kinds", &routes);
    let (_daemon, f) = start(&broker, &config);

    // last_decision: a device the model answered gets that answer again on a miss; a
    // device the model never answered on this route gets `otherwise`.
    let evs = sensor_events(3, 2);
    let topic = format!("edge/{}/last", evs[0].device);
    publish_to(&f, &topic, postcard(&evs[0]));
    let by_model = next_command(&f, "the model's answer");
    assert_eq!(by_model.source, DecisionSource::Model);
    publish_to(&f, &topic, postcard(&hurried(&evs[1])));
    let reused = next_command(&f, "the hurried event");
    assert_eq!(reused.seq, evs[1].seq);
    assert_eq!(reused.source, DecisionSource::Fallback);
    assert_eq!(reused.model.name.as_str(), "last_decision");
    assert_eq!(reused.action, by_model.action);
    let stranger = &sensor_events(4, 1)[0];
    let topic = format!("edge/{}/last", stranger.device);
    publish_to(&f, &topic, postcard(&hurried(stranger)));
    let c = next_command(&f, "the stranger's hurried event");
    assert_eq!(
        (c.source, c.action),
        (DecisionSource::Fallback, Action::Inspect)
    );

    // rules on the 13 features of format 1: the simulated machines run warm (> 0 °C).
    let e = &sensor_events(5, 1)[0];
    assert!(e.temperature_c() > 0.0);
    publish_to(
        &f,
        &format!("edge/{}/rules", e.device),
        postcard(&hurried(e)),
    );
    let c = next_command(&f, "the rules route's hurried event");
    assert_eq!(c.source, DecisionSource::Fallback);
    assert_eq!(c.model.name.as_str(), "rules");
    assert_eq!(c.action, Action::SlowDown);
    // The same machine frozen: no rule holds, `otherwise` answers.
    let mut frozen = sensor_events(6, 1)[0].clone();
    frozen.temperature_centi_c = -500;
    let topic = format!("edge/{}/rules", frozen.device);
    publish_to(&f, &topic, postcard(&hurried(&frozen)));
    let c = next_command(&f, "the frozen machine's hurried event");
    assert_eq!(
        (c.source, c.action),
        (DecisionSource::Fallback, Action::Run)
    );
}
