//! Rescore throughput, embedded DataFusion against a Ballista cluster on this machine: one
//! snapshot on local disk, rescored embedded (2 workers), then on a scheduler with one
//! executor of 2 task slots, then on a scheduler with two executors of 1 slot each (all in
//! this process, on loopback: the same code as `reflex-cloud scheduler` / `executor`).
//! Every run's report must be the embedded one's (checked); the figure is the job's
//! events/s (plan, scoring, sketches, rescored Parquet).
//!
//! ```sh
//! cargo build --workspace --all-features --example ballista
//! $CARGO_TARGET_DIR/debug/examples/ballista [events] [records per batch] [devices]
//! ```

mod common;

use std::time::Instant;

use reflex_cloud::cluster::{Executor, Scheduler};
use reflex_cloud::config::{ExecutorSection, RescoreConfig, SchedulerSection};
use reflex_cloud::rescore::Engine;
use reflex_cloud::{RescoreJob, Storage};
use tokio_util::sync::CancellationToken;

use common::{models, simulated_records, store_batches, T0_US};

/// A scheduler and executors of `slots` task slots each, stopped by `shutdown`.
async fn cluster(
    storage: &Storage,
    slots: &[usize],
    shutdown: &CancellationToken,
) -> (String, Vec<Executor>, Scheduler) {
    let scheduler = Scheduler::start(
        &SchedulerSection {
            listen: "127.0.0.1:0".into(),
            ..SchedulerSection::default()
        },
        shutdown.clone(),
    )
    .await
    .expect("scheduler");
    let url = format!("http://{}", scheduler.local_addr());
    let mut executors = Vec::new();
    for &vcores in slots {
        let cfg = ExecutorSection {
            listen: "127.0.0.1:0".into(),
            scheduler: url.clone(),
            model_manifest: models().join("cloud.manifest.json"),
            vcores,
            ..ExecutorSection::default()
        };
        executors.push(
            Executor::start(&cfg, storage.clone(), shutdown.clone())
                .await
                .expect("executor"),
        );
    }
    (url, executors, scheduler)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(40_000);
    let per_batch: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let devices: u32 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(4);
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = Storage::local(dir.path().join("store")).expect("storage");
    let recs = simulated_records(n, devices, 8);
    store_batches(&storage, &recs, per_batch).await;
    let to = T0_US + recs.len() as u64 * 50_000 + 1;
    let mut reference = None;
    for (name, slots) in [
        ("embedded, 2 workers", &[][..]),
        ("ballista, 1 executor x 2 slots", &[2][..]),
        ("ballista, 2 executors x 1 slot", &[1, 1][..]),
    ] {
        let shutdown = CancellationToken::new();
        let mut running = None;
        let engine = if slots.is_empty() {
            Engine::Embedded
        } else {
            let (url, executors, scheduler) = cluster(&storage, slots, &shutdown).await;
            running = Some((executors, scheduler));
            Engine::Ballista { scheduler: url }
        };
        let rc = RescoreConfig {
            model_manifest: models().join("cloud.manifest.json"),
            out_dir: dir.path().join(format!("runs-{}", slots.len())),
            batch_size: 32,
            workers: 2,
            window_s: 600,
            device_baseline_s: 600,
            ..RescoreConfig::default()
        };
        let started = Instant::now();
        let out = RescoreJob::plan(storage.clone(), &rc, T0_US, to)
            .await
            .expect("plan")
            .with_engine(engine)
            .run(CancellationToken::new())
            .await
            .expect("rescore");
        let wall = started.elapsed().as_secs_f64();
        let t = &out.report.throughput;
        println!(
            "{name}: {} events from {} files in {:.2} s (job), {wall:.2} s (plan and job): {:.0} events/s",
            t.events, t.files, t.seconds, t.events_per_s
        );
        match &reference {
            None => reference = Some(out.report.figures.clone()),
            Some(r) => assert_eq!(&out.report.figures, r, "{name}: another report"),
        }
        shutdown.cancel();
        if let Some((executors, scheduler)) = running {
            for e in executors {
                e.join().await;
            }
            scheduler.join().await;
        }
    }
}
