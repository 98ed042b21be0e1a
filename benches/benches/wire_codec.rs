//! Encode and decode cost of one simulated sensor event (3 × 64 samples, format version 1)
//! and one command, postcard and JSON; then version 2 windows (3 × 64, 3 × 1024 and the
//! 8 × 1024 maximum), and the 3 × 64 event decoded into a v1-sized event
//! (`SensorEvent<256>`, what an event cost before version 2) next to the full capacity.
//! Run: `cargo bench -p reflex-benches --bench wire_codec`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use reflex_sim::device::SimDevice;
use reflex_sim::signal::{Condition, Distortion};
use reflex_wire::{
    Action, Command, DecisionSource, ModelRef, SensorEvent, COMMAND_FORMAT_VERSION,
    EVENT_FORMAT_V2, MAX_COMMAND_BYTES, MAX_EVENT_BYTES,
};

fn codec(c: &mut Criterion) {
    let mut dev = SimDevice::new(1, Condition::BearingFault, 7);
    let event = dev.next_event(1_700_000_000_000_000, Distortion::NONE);
    let mut buf = [0u8; MAX_EVENT_BYTES];
    let encoded = event.encode(&mut buf).unwrap().to_vec();
    let json = reflex_wire::json::encode_event(&event);
    println!(
        "encoded event: {} bytes postcard, {} bytes JSON",
        encoded.len(),
        json.len()
    );

    let mut g = c.benchmark_group("event");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_postcard", |b| {
        b.iter(|| std::hint::black_box(&event).encode(&mut buf).unwrap().len())
    });
    g.bench_function("decode_postcard", |b| {
        b.iter(|| SensorEvent::decode(std::hint::black_box(&encoded)).unwrap())
    });
    g.bench_function("encode_json", |b| {
        b.iter(|| reflex_wire::json::encode_event(std::hint::black_box(&event)))
    });
    g.bench_function("decode_json", |b| {
        b.iter(|| reflex_wire::json::decode_event(std::hint::black_box(&json)).unwrap())
    });
    g.bench_function("decode_postcard_capacity_256", |b| {
        b.iter(|| SensorEvent::<256>::decode_with_capacity(std::hint::black_box(&encoded)).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("event_v2");
    g.throughput(Throughput::Elements(1));
    for (channels, samples) in [(3, 64), (3, 1024), (8, 1024)] {
        let mut dev = SimDevice::new(1, Condition::BearingFault, 7);
        dev.set_window(channels, samples).unwrap();
        let mut event = dev.next_event(1_700_000_000_000_000, Distortion::NONE);
        event.version = EVENT_FORMAT_V2;
        let mut buf = vec![0u8; MAX_EVENT_BYTES];
        let encoded = event.encode(&mut buf).unwrap().to_vec();
        let json = reflex_wire::json::encode_event(&event);
        println!(
            "v2 event {channels} × {samples}: {} bytes postcard, {} bytes JSON",
            encoded.len(),
            json.len()
        );
        let name = format!("{channels}x{samples}");
        g.bench_function(format!("encode_postcard/{name}"), |b| {
            b.iter(|| std::hint::black_box(&event).encode(&mut buf).unwrap().len())
        });
        g.bench_function(format!("decode_postcard/{name}"), |b| {
            b.iter(|| SensorEvent::decode(std::hint::black_box(&encoded)).unwrap())
        });
        g.bench_function(format!("decode_json/{name}"), |b| {
            b.iter(|| reflex_wire::json::decode_event(std::hint::black_box(&json)).unwrap())
        });
    }
    g.finish();

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
        latency_us: 420,
    };
    let mut cbuf = [0u8; MAX_COMMAND_BYTES];
    let cenc = cmd.encode(&mut cbuf).unwrap().to_vec();
    println!("encoded command: {} bytes postcard", cenc.len());
    let mut g = c.benchmark_group("command");
    g.bench_function("encode_postcard", |b| {
        b.iter(|| std::hint::black_box(&cmd).encode(&mut cbuf).unwrap().len())
    });
    g.bench_function("decode_postcard", |b| {
        b.iter(|| Command::decode(std::hint::black_box(&cenc)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
