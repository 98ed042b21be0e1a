//! What the decode stage's shape check costs per event on the MQTT thread: the window's
//! shape against the route's model shape read from the engine's atomic word
//! (`InputShape`), next to the same check reading a `Mutex` (uncontended: its best case;
//! contended, it would wait on whoever holds it), and to decoding the event itself.
//! Then the hand-off of a 3 × 64 event from decode to the journal record: before the wire's
//! version 2, a 600-byte event (`SensorEvent<256>`) moved into its job and cloned into its
//! record; now a full-capacity event (8 × 1024 samples, 16 KiB inline) is put in an `Arc`
//! once and shared by the job and the record.
//! Run: `cargo bench -p reflexd --bench shape_check` (benches/README.md has the figures).

use std::hint::black_box;
use std::sync::{Arc, Mutex};

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
    g.bench_function("decode_to_record_capacity_256_by_value", |b| {
        b.iter(|| {
            let event = SensorEvent::<256>::decode_with_capacity(black_box(&encoded)).unwrap();
            let job = Arc::new((black_box(0u64), event));
            let record = Box::new(job.1.clone());
            (job, record)
        })
    });
    g.bench_function("decode_to_record_full_capacity_shared", |b| {
        b.iter(|| {
            let event = Arc::new(SensorEvent::decode(black_box(&encoded)).unwrap());
            let job = Arc::new((black_box(0u64), event.clone()));
            let record = Box::new(event);
            (job, record)
        })
    });
    g.finish();
}

criterion_group!(benches, shape_check);
criterion_main!(benches);
