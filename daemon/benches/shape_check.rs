//! What the decode stage's shape check costs per event on the MQTT thread: the window's
//! shape against the route's model shape read from the engine's atomic word
//! (`InputShape`), next to the same check reading a `Mutex` (uncontended: its best case;
//! contended, it would wait on whoever holds it), and to decoding the event itself.
//! Run: `cargo bench -p reflexd --bench shape_check` (benches/README.md has the figures).

use std::hint::black_box;
use std::sync::Mutex;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use reflex_sim::device::SimDevice;
use reflex_sim::signal::{Condition, Distortion};
use reflex_wire::{SensorEvent, MAX_EVENT_BYTES};
use reflexd::pipeline::decode::shape::fit;
use reflexd::pipeline::types::{InputShape, WindowShape};

fn shape_check(c: &mut Criterion) {
    let event = SimDevice::new(1, Condition::BearingFault, 7).next_event(0, Distortion::NONE);
    let mut buf = [0u8; MAX_EVENT_BYTES];
    let encoded = event.encode(&mut buf).unwrap().to_vec();
    let atomic = InputShape::new(WindowShape::new(3, 64));
    let locked = Mutex::new(WindowShape::new(3, 64));

    let mut g = c.benchmark_group("per_event");
    g.throughput(Throughput::Elements(1));
    g.bench_function("shape_check_atomic", |b| {
        b.iter(|| {
            fit(
                WindowShape::of(&black_box(&event).window),
                black_box(&atomic).get(),
            )
        })
    });
    g.bench_function("shape_check_mutex_uncontended", |b| {
        b.iter(|| {
            let model = *black_box(&locked).lock().unwrap();
            fit(WindowShape::of(&black_box(&event).window), model)
        })
    });
    g.bench_function("decode_postcard", |b| {
        b.iter(|| SensorEvent::decode(black_box(&encoded)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, shape_check);
criterion_main!(benches);
