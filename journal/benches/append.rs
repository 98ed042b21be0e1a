//! Journal throughput on this machine's disk, printed as figures (no criterion: each case is
//! one timed run over tens of thousands of ~1.1 KiB records, like real ones).
//!
//! ```sh
//! cargo bench -p reflex-journal --bench append            # BENCH_RECORDS=50000 by default
//! ```
//!
//! Cases: the `Appender` with its default group commit (256 records / 5 ms) under fsync and
//! flush-only durability; plain batches of N inserts + sync for N in 1, 64, 1000 (flush only
//! and flush + fsync); the drain (scan + delete in chunks of 1000); and the same
//! append/scan/delete workload on redb (commit = fsync) for comparison.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reflex_journal::record::{
    DeadlineOutcome, DecisionSource, JournalRecord, ModelId, StageTimings,
};
use reflex_journal::store::{Appender, Durability, GroupCommit, Journal, Quota, StoreConfig};

fn record(i: u64) -> Vec<u8> {
    JournalRecord {
        node: "board-01".into(),
        device: format!("press-{:02}", i % 20),
        seq: i,
        arrival_unix_us: 1_764_000_000_000_000 + i * 1000,
        payload: (0..420).map(|k| ((i + k) % 251) as u8).collect(),
        model_input: (0..192).map(|k| ((i + k) as f32 * 0.37).sin()).collect(),
        features: (0..13).map(|k| (k as f32 + i as f32).cos()).collect(),
        logits: vec![2.0, -1.0, 0.5, -0.3],
        class: (i % 4) as u8,
        command: vec![1; 60],
        model: ModelId {
            name: "edge-cnn".into(),
            version: "3".into(),
        },
        source: DecisionSource::Model,
        timings: StageTimings {
            decode_us: 12,
            queue_us: 40,
            infer_us: 25,
            publish_us: 30,
            end_to_end_us: 110,
            budget_us: 5000,
        },
        outcome: DeadlineOutcome::OnTime,
    }
    .encode()
}

fn cfg(dir: &std::path::Path, durability: Durability) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.durability = durability;
    c.quota = Quota {
        quota_bytes: u64::MAX,
        min_free_bytes: 0,
        ..Quota::default()
    };
    c
}

fn rate(n: u64, d: Duration) -> String {
    format!(
        "{:>9.0} records/s ({:.2} s)",
        n as f64 / d.as_secs_f64(),
        d.as_secs_f64()
    )
}

fn base_dir() -> tempfile::TempDir {
    // On the disk, not a tmpfs: fsync must cost what it costs.
    tempfile::tempdir_in("/var/tmp").expect("temp dir in /var/tmp")
}

fn appender(records: &[Vec<u8>], durability: Durability, policy: GroupCommit) {
    let dir = base_dir();
    let (j, _) = Journal::open(cfg(dir.path(), durability)).unwrap();
    let j = Arc::new(j);
    let app = Appender::start(j.clone(), policy, |_| {});
    let t = Instant::now();
    let mut last = 0;
    for r in records {
        last = app.append_encoded(r).unwrap();
    }
    assert!(app.wait_durable(last, Duration::from_secs(600)));
    let d = t.elapsed();
    let s = j.stats();
    let syncs = s.syncs.load(std::sync::atomic::Ordering::Relaxed);
    let sync_us = s.sync_us.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "sled Appender {:?} {}/{:?}: {}  ({} group commits, mean {:.0} µs each)",
        durability,
        policy.max_records,
        policy.max_delay,
        rate(records.len() as u64, d),
        syncs,
        sync_us as f64 / syncs.max(1) as f64
    );
    app.close().unwrap();
}

fn sled_batches(records: &[Vec<u8>], durability: Durability, batch: usize) -> tempfile::TempDir {
    let dir = base_dir();
    let (j, _) = Journal::open(cfg(dir.path(), durability)).unwrap();
    let t = Instant::now();
    for chunk in records.chunks(batch) {
        for r in chunk {
            j.append(r).unwrap();
        }
        j.sync().unwrap();
    }
    println!(
        "sled append, sync every {batch:>4} ({durability:?}): {}",
        rate(records.len() as u64, t.elapsed())
    );
    // Drain: scan + delete in chunks of 1000.
    let t = Instant::now();
    let mut n = 0u64;
    loop {
        let chunk = j.scan(0, 1000, usize::MAX).unwrap();
        let Some(last) = chunk.last() else { break };
        n += chunk.len() as u64;
        j.delete_through(last.0).unwrap();
    }
    j.sync().unwrap();
    let space = j.space().unwrap();
    println!(
        "sled drain (scan + delete, chunks of 1000):   {}  files after drain {:.1} MiB",
        rate(n, t.elapsed()),
        space.files_bytes as f64 / (1 << 20) as f64
    );
    dir
}

fn redb(records: &[Vec<u8>], batch: usize) {
    use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
    const T: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
    let dir = base_dir();
    let db = Database::create(dir.path().join("j.redb")).unwrap();
    let t = Instant::now();
    let mut seq = 0u64;
    for chunk in records.chunks(batch) {
        let tx = db.begin_write().unwrap();
        {
            let mut table = tx.open_table(T).unwrap();
            for r in chunk {
                seq += 1;
                table.insert(seq, r.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    println!(
        "redb append, commit every {batch:>4} (fsync):   {}",
        rate(records.len() as u64, t.elapsed())
    );
    let t = Instant::now();
    let mut n = 0u64;
    loop {
        let keys: Vec<u64> = {
            let rtx = db.begin_read().unwrap();
            let table = rtx.open_table(T).unwrap();
            table
                .iter()
                .unwrap()
                .take(1000)
                .map(|kv| {
                    let (k, v) = kv.unwrap();
                    std::hint::black_box(v.value().len());
                    k.value()
                })
                .collect()
        };
        let Some(&last) = keys.last() else { break };
        n += keys.len() as u64;
        let tx = db.begin_write().unwrap();
        {
            let mut table = tx.open_table(T).unwrap();
            table.retain_in(..=last, |_, _| false).unwrap();
        }
        tx.commit().unwrap();
    }
    let size = std::fs::metadata(dir.path().join("j.redb")).unwrap().len();
    println!(
        "redb drain (scan + delete, chunks of 1000):   {}  file after drain {:.1} MiB",
        rate(n, t.elapsed()),
        size as f64 / (1 << 20) as f64
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we need.
    let n: u64 = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000);
    let records: Vec<Vec<u8>> = (0..n).map(record).collect();
    let mean = records.iter().map(Vec::len).sum::<usize>() / records.len().max(1);
    println!("{n} records of {mean} bytes on average, journal under /var/tmp");
    let default = GroupCommit::default();
    appender(&records, Durability::Fsync, default);
    appender(&records, Durability::Flush, default);
    let small = n.min(5_000) as usize;
    sled_batches(&records[..small], Durability::Flush, 1);
    sled_batches(&records[..small], Durability::Fsync, 1);
    for batch in [64, 1000] {
        sled_batches(&records, Durability::Flush, batch);
        sled_batches(&records, Durability::Fsync, batch);
    }
    redb(&records[..small], 1);
    redb(&records, 64);
    redb(&records, 1000);
}
