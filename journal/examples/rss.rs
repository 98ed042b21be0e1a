//! RSS of a process journaling like reflexd, against the number of records appended.
//!
//! ```sh
//! cargo run --release -p reflex-journal --example rss -- [records] [rate/s]
//! ```
//!
//! Appends `records` (default 1 000 000) records of ~1.2 KB (reflexd's size) through an
//! [`Appender`] (group commit 256 / 5 ms, fsync) at `rate` records/s (0: as fast as it
//! goes), and prints the process's RSS (and peak RSS) and the bytes it has written (the
//! `wchar` of `/proc/self/io`: every `write`/`pwrite`, so sled's write amplification is
//! `written_bytes` over the records' bytes) every 100 000 records (`EVERY=`). Environment knobs, for
//! comparing sled settings: `CACHE_MIB` (default 16), `SEGMENT_KIB` (default 128), `QUOTA_MIB` (default 256),
//! `DRAIN=1` (delete each group once durable, like an uploader that keeps up),
//! `DURABILITY=flush`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reflex_journal::store::{Appender, Durability, GroupCommit, Journal, StoreConfig};

fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// A `/proc/self/status` figure in KiB (VmRSS: now, VmHWM: peak).
fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Bytes this process has passed to write syscalls (`/proc/self/io`, `wchar`).
fn written_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let records: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rate: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = StoreConfig::new(dir.path().join("journal"));
    cfg.cache_capacity = env_u64("CACHE_MIB", 16) << 20;
    cfg.segment_size = env_u64("SEGMENT_KIB", cfg.segment_size as u64 >> 10) as usize * 1024;
    cfg.quota.quota_bytes = env_u64("QUOTA_MIB", 256) << 20;
    if std::env::var("DURABILITY").as_deref() == Ok("flush") {
        cfg.durability = Durability::Flush;
    }
    let drain = std::env::var("DRAIN").as_deref() == Ok("1");
    let (journal, _) = Journal::open(cfg).expect("journal opens");
    let journal = Arc::new(journal);
    let appender = Appender::start(journal.clone(), GroupCommit::default(), |_| {});
    // ~1.2 KB, half of it varying like sensor data, like reflexd's records.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut value = vec![0u8; 1200];
    let every = env_u64("EVERY", 100_000).max(1);
    println!("records,rss_kib,peak_rss_kib,records_present,files_bytes,written_bytes,elapsed_s");
    let written_at_start = written_bytes();
    println!("0,{},{},0,0,0,0", rss_kib(), status_kib("VmHWM:"));
    let start = Instant::now();
    let mut drained = 0;
    for i in 1..=records {
        for b in value.iter_mut().take(600) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        value[600..608].copy_from_slice(&i.to_le_bytes());
        loop {
            match appender.append_encoded(&value) {
                Ok(_) => break,
                Err(reflex_journal::store::StoreError::Full { .. }) => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("append: {e}"),
            }
        }
        if drain && i % 1000 == 0 {
            let durable = appender.durable_through();
            if durable > drained {
                journal.delete_through(durable).expect("delete");
                drained = durable;
            }
        }
        if rate > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        if i % every == 0 {
            // Not `journal.len()`: sled counts by reading every record into its cache.
            let rss = rss_kib();
            let space = journal.space().expect("space");
            println!(
                "{i},{rss},{},{},{},{},{:.1}",
                status_kib("VmHWM:"),
                space.live_bytes / (8 + value.len() as u64),
                space.files_bytes,
                written_bytes() - written_at_start,
                start.elapsed().as_secs_f64()
            );
        }
    }
    appender.close().expect("close");
}
