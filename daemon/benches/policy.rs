//! What a route's decision policy costs per event on the deciding thread: the device
//! table lookup behind the route's lock, the pure decision (mapping, threshold, debounce
//! 2 of 3, cooldown, two window rules that do not match, so both compute their channel
//! statistics), and the command template rendered; next to the wire command encoded as
//! JSON and postcard, what a route without a template does.
//! Run: `cargo bench -p reflexd --bench policy` (benches/README.md has the figures).

use std::hint::black_box;
use std::sync::Mutex;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use reflex_sim::device::SimDevice;
use reflex_sim::signal::{Condition, Distortion};
use reflex_wire::{Action, Command, DecisionSource, DeviceId, ModelRef, COMMAND_FORMAT_VERSION};
use reflexd::config::Template;
use reflexd::pipeline::decide::payload::CommandValues;
use reflexd::pipeline::decide::policy::{
    Debounce, DeviceTable, Metric, Policy, Rule, Test, Verdict,
};
use reflexd::pipeline::decide::WindowSignal;

const TEMPLATE: &str = r#"{"plc":"{device}","cmd":"{action}","why":"{reason}","class":"{class_name}","p":{confidence},"seq":{seq},"at":{decided_at_us}}"#;

fn policy() -> Policy {
    let rule = |name: &str, metric| Rule {
        name: name.into(),
        metric,
        test: Test::Above(50.0),
        class: None,
        action: Action::Stop,
    };
    Policy {
        class_actions: vec![None, None, Some(Action::Stop), None],
        min_confidence: 0.6,
        debounce: Some(Debounce { n: 2, m: 3 }),
        cooldown_ns: 1_000_000_000,
        rules: vec![
            rule("shock", Metric::Peak(0)),
            rule("rumble", Metric::Rms(2)),
        ],
        ..Policy::default()
    }
}

fn per_event(c: &mut Criterion) {
    let event = SimDevice::new(1, Condition::BearingFault, 7).next_event(0, Distortion::NONE);
    let logits = [0.1f32, 0.3, 2.5, -0.4];
    // The model's answer as the worker has it; its confidence is read per event.
    let prediction = reflex_models::Prediction {
        class: 2,
        logits: logits.to_vec(),
        score: None,
        kind: reflex_models::OutputKind::Logits,
    };
    let policy = policy();
    let devices: Vec<DeviceId> = (0..100)
        .map(|i| format!("dev-{i:04}").as_str().try_into().unwrap())
        .collect();
    let table = Mutex::new(DeviceTable::new(10_000));
    let template = Template::parse(TEMPLATE).unwrap();
    let classes = ["healthy", "imbalance", "bearing_fault", "misalignment"];
    let cmd = Command {
        version: COMMAND_FORMAT_VERSION,
        device: event.device.clone(),
        seq: event.seq,
        action: Action::Stop,
        class: 2,
        source: DecisionSource::Model,
        model: ModelRef {
            name: "edge".try_into().unwrap(),
            version: "1.0.0".try_into().unwrap(),
        },
        decided_at_us: 1_700_000_000_000_000,
        latency_us: 900,
    };

    let mut g = c.benchmark_group("per_event");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    let mut now = 0u64;
    g.bench_function("policy_decide", |b| {
        b.iter(|| {
            i = (i + 1) % devices.len();
            now += 200_000;
            let conf = Some(black_box(&prediction).confidence()).filter(|c| c.is_finite());
            let v = Verdict {
                class: 2,
                action: Action::Stop,
                source: DecisionSource::Model,
                confidence: conf,
            };
            let mut t = table.lock().unwrap();
            let state = t.state(&devices[i], &policy);
            policy.decide(state, &v, &WindowSignal(&black_box(&event).window), now)
        })
    });
    g.bench_function("template_render", |b| {
        b.iter(|| {
            template.render(&CommandValues {
                cmd: black_box(&cmd),
                class_name: classes[2],
                confidence: Some(0.83),
                decision: None,
            })
        })
    });
    g.bench_function("wire_command_json", |b| {
        b.iter(|| reflex_wire::json::encode_command(black_box(&cmd)))
    });
    g.bench_function("wire_command_postcard", |b| {
        b.iter(|| {
            let mut buf = [0u8; reflex_wire::MAX_COMMAND_BYTES];
            black_box(&cmd).encode(&mut buf).unwrap().len()
        })
    });
    g.finish();
}

criterion_group!(benches, per_event);
criterion_main!(benches);
