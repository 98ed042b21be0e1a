//! What each input adapter costs per event on the MQTT thread: reading one 3 × 64 window
//! in reflex's own formats (postcard, JSON), as vendor JSON through a JSON-pointer mapping,
//! as a packed i16 binary frame, as a Sparkplug B DDATA (three FloatArrays and a Float by
//! alias, after the device's DBIRTH), and one scalar reading fed to window assembly (the
//! amortised cost of a window is 64 of those, one completing it).
//! Run: `cargo bench -p reflexd --bench adapters` (benches/README.md has the figures).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use reflex_sim::device::SimDevice;
use reflex_sim::signal::{Condition, Distortion};
use reflex_wire::{DeviceId, SensorEvent, MAX_EVENT_BYTES};
use reflexd::config::input::{InputConfig, InputKind, SampleType};
use reflexd::config::AssembleConfig;
use reflexd::pipeline::decode::adapters::sparkplug::{Births, Outcome};
use reflexd::pipeline::decode::adapters::Mapping;
use reflexd::pipeline::decode::assembly::{Assembler, Limits};
use reflexd::pipeline::types::WindowShape;

fn channel_g(e: &SensorEvent, c: usize) -> Vec<f64> {
    let g = f64::from(e.window.scale);
    e.window
        .channel(c)
        .iter()
        .map(|&v| f64::from(v) * g)
        .collect()
}

fn adapters(c: &mut Criterion) {
    let event = SimDevice::new(1, Condition::BearingFault, 7).next_event(0, Distortion::NONE);
    let g = f64::from(event.window.scale);
    let mut buf = [0u8; MAX_EVENT_BYTES];
    let postcard = event.encode(&mut buf).unwrap().to_vec();
    let reflex_json = reflex_wire::json::encode_event(&event);
    let vendor = serde_json::to_vec(&serde_json::json!({
        "n": event.seq, "ts": 1_765_000_000_000u64,
        "ax": channel_g(&event, 0), "ay": channel_g(&event, 1), "az": channel_g(&event, 2),
        "temp": 41.2,
    }))
    .unwrap();
    let json_map = Mapping::of(&InputConfig {
        kind: InputKind::Json,
        seq: Some("/n".into()),
        timestamp: Some("/ts".into()),
        channels: vec!["/ax".into(), "/ay".into(), "/az".into()],
        temperature: Some("/temp".into()),
        resolution: g,
        ..InputConfig::default()
    })
    .unwrap();
    let mut frame = (event.seq as u32).to_le_bytes().to_vec();
    for v in &event.window.samples {
        frame.extend(v.to_le_bytes());
    }
    let binary_map = Mapping::of(&InputConfig {
        kind: InputKind::Binary,
        sample_type: SampleType::I16,
        channel_count: Some(3),
        samples: Some(64),
        header_bytes: 4,
        seq_offset: Some(0),
        scale: g,
        resolution: g,
        ..InputConfig::default()
    })
    .unwrap();
    let scalar_input = InputConfig {
        kind: InputKind::Json,
        channels: vec!["/ax".into(), "/ay".into(), "/az".into()],
        resolution: g,
        assemble: Some(AssembleConfig::default()),
        ..InputConfig::default()
    };
    let scalar_map = Mapping::of(&scalar_input).unwrap();
    let scalar = br#"{"ax": 0.0123, "ay": -0.25, "az": 1.002}"#;
    let sparkplug_map = Mapping::of(&InputConfig {
        kind: InputKind::SparkplugB,
        channels: reflex_sim::edge_node::CHANNEL_METRICS
            .map(String::from)
            .to_vec(),
        temperature: Some(reflex_sim::edge_node::TEMPERATURE_METRIC.into()),
        resolution: g,
        ..InputConfig::default()
    })
    .unwrap();
    let mut node = reflex_sim::edge_node::EdgeNode::new(0);
    let mut births = Births::new(1024);
    let (birth_topic, birth) = node.dbirth(&event.device, 1_765_000_000_000);
    births.read(&sparkplug_map, &birth_topic, &birth).unwrap();
    let (ddata_topic, ddata) = node.ddata(&event);
    let device = DeviceId::try_from("pump-1").unwrap();
    let shape = WindowShape::new(3, 64);

    let mut group = c.benchmark_group("adapter_per_event");
    group.throughput(Throughput::Elements(1));
    group.bench_function("reflex_postcard", |b| {
        b.iter(|| SensorEvent::decode(black_box(&postcard)).unwrap())
    });
    group.bench_function("reflex_json", |b| {
        b.iter(|| reflex_wire::json::decode_event(black_box(&reflex_json)).unwrap())
    });
    group.bench_function("vendor_json_mapped", |b| {
        b.iter(|| {
            let r = json_map.read(black_box(&vendor)).unwrap();
            r.into_event(device.clone(), 1, 1, &json_map).unwrap()
        })
    });
    group.bench_function("vendor_json_parse_only", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&vendor)).unwrap())
    });
    group.bench_function("vendor_json_typed_floats", |b| {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Vendor {
            n: u64,
            ts: u64,
            ax: Vec<f64>,
            ay: Vec<f64>,
            az: Vec<f64>,
            temp: f64,
        }
        b.iter(|| serde_json::from_slice::<Vendor>(black_box(&vendor)).unwrap())
    });
    group.bench_function("binary_i16_frame", |b| {
        b.iter(|| {
            let r = binary_map.read(black_box(&frame)).unwrap();
            r.into_event(device.clone(), 1, 1, &binary_map).unwrap()
        })
    });
    group.bench_function("sparkplug_ddata_by_alias", |b| {
        b.iter(|| {
            let Ok(Outcome::Data(r)) =
                births.read(&sparkplug_map, black_box(&ddata_topic), black_box(&ddata))
            else {
                panic!("not data")
            };
            r.into_event(device.clone(), 1, 1, &sparkplug_map).unwrap()
        })
    });
    group.bench_function("scalar_reading_assembled", |b| {
        let limits = Limits::of(scalar_input.assemble.as_ref().unwrap());
        let mut assembler = Assembler::new(limits);
        let mut ts = 0u64;
        b.iter(|| {
            ts += 1_000;
            let r = scalar_map.read(black_box(scalar)).unwrap();
            assembler
                .feed(&device, None, ts, r.channels, &r.counts, shape)
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, adapters);
criterion_main!(benches);
