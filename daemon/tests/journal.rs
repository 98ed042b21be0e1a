//! reflexd with its journal, end to end against a real mosquitto and a real sled journal on
//! disk: acknowledged means journaled, across `kill -9`; a journal that cannot be opened is
//! moved aside and reflexd serves anyway.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use reflex_journal::record::JournalRecord;
use reflex_journal::store::{Journal, StoreConfig};
use reflex_tests::{spawn_broker, wait_until, Broker};
use rumqttc::QoS;

/// A config with a `[journal]` in `journal_dir`.
fn journal_config(broker: &Broker, name: &str, journal_dir: &Path) -> PathBuf {
    let config = write_config(broker, name, 5.0, "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[journal]\ndir = \"{}\"\ngroup_commit_ms = 5\n",
        journal_dir.display()
    ));
    std::fs::write(&config, text).unwrap();
    config
}

/// Every record in the journal at `dir`, as (device, seq) → how many times.
fn journaled(dir: &Path) -> HashMap<(String, u64), usize> {
    let (journal, report) = Journal::open(StoreConfig::new(dir)).expect("journal opens");
    assert!(report.moved_aside.is_none(), "{report:?}");
    let mut out = HashMap::new();
    let mut from = 0;
    loop {
        let chunk = journal.scan(from, 10_000, 64 << 20).unwrap();
        let Some((last, _)) = chunk.last() else { break };
        from = last + 1;
        for (_, bytes) in &chunk {
            let r = JournalRecord::decode(bytes).expect("every record decodes");
            *out.entry((r.device, r.seq)).or_default() += 1;
        }
    }
    out
}

#[test]
fn every_event_is_journaled_exactly_once_across_kill_9_restarts() {
    let _serial = serial();
    let broker = spawn_broker();
    let dir = test_dir("journal-crash");
    let jdir = dir.join("journal");
    let config = journal_config(&broker, "journal-crash-config", &jdir);
    let mut daemon = spawn_daemon(&config);
    let f = field(&broker);

    // Four devices, 750 events each, interleaved.
    let per_device: Vec<Vec<(u64, Vec<u8>)>> = (0..4).map(|d| events(20 + d, 750)).collect();
    let device = |d: usize| format!("dev-{:04}", 20 + d);
    // Events published before the daemon subscribed never reached it: start counting from
    // the first answered one.
    let (warm, _) = f.publish_until_answered(&device(0), &per_device[0][..100]);
    let mut expected: HashSet<(String, u64)> = HashSet::new();
    let mut queue = Vec::new();
    for (d, evs) in per_device.iter().enumerate() {
        let skip = if d == 0 { warm } else { 0 };
        if d == 0 {
            expected.insert((device(0), evs[warm - 1].0));
        }
        for (seq, bytes) in &evs[skip..] {
            expected.insert((device(d), *seq));
            queue.push((device(d), bytes.clone(), *seq));
        }
    }
    // Interleave devices.
    queue.sort_by_key(|(_, _, seq)| *seq);
    let publisher = {
        let client = f.client.clone();
        std::thread::spawn(move || {
            // ~2000 events/s: kills land while events flow.
            let start = Instant::now();
            for (i, (dev, bytes, _)) in queue.into_iter().enumerate() {
                client
                    .publish(
                        format!("sensors/{dev}/vibration"),
                        QoS::AtLeastOnce,
                        false,
                        bytes,
                    )
                    .unwrap();
                let due = start + Duration::from_micros(500 * i as u64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        })
    };

    // kill -9 at pseudo-random points while the load runs, restarting each time.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut rng = seed | 1;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // The warm-up's answered event counts as answered.
    let mut answered: HashSet<(String, u64)> = HashSet::new();
    answered.insert((device(0), per_device[0][warm - 1].0));
    let mut commands = 0usize;
    let kills = 3;
    for k in 0..kills {
        let threshold = (k + 1) * 600 + (next() % 300) as usize;
        while answered.len() < threshold {
            let c = f
                .commands
                .recv_timeout(Duration::from_secs(30))
                .expect("reflexd answers under load");
            commands += 1;
            answered.insert((c.device.to_string(), c.seq));
        }
        daemon.child.kill().expect("kill -9");
        daemon.child.wait().unwrap();
        println!(
            "kill -9 #{} after {} distinct answers",
            k + 1,
            answered.len()
        );
        daemon = spawn_daemon(&config);
    }
    publisher.join().unwrap();
    let limit = Instant::now() + Duration::from_secs(60);
    while !expected.iter().all(|k| answered.contains(k)) {
        let left = limit.saturating_duration_since(Instant::now());
        let c = f.commands.recv_timeout(left).unwrap_or_else(|_| {
            let missing = expected.iter().filter(|k| !answered.contains(*k)).count();
            panic!("{missing} events never answered (seed {seed})")
        });
        commands += 1;
        answered.insert((c.device.to_string(), c.seq));
    }
    daemon.terminate();
    let status = daemon.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "reflexd exited with {status}");

    let records = journaled(&jdir);
    println!(
        "seed {seed}: {} events, {commands} commands received, {} journal records, {kills} kills",
        expected.len(),
        records.values().sum::<usize>()
    );
    let missing: Vec<_> = expected
        .iter()
        .filter(|k| !records.contains_key(*k))
        .collect();
    let twice: Vec<_> = records.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty(),
        "{} answered events not in the journal (seed {seed}): {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(twice.is_empty(), "journaled twice (seed {seed}): {twice:?}");
}

#[test]
fn a_journal_that_cannot_be_opened_is_moved_aside_and_reflexd_serves_anyway() {
    let _serial = serial();
    let broker = spawn_broker();
    let dir = test_dir("journal-garbage");
    let jdir = dir.join("journal");
    std::fs::create_dir_all(jdir.join("blobs")).unwrap();
    let garbage: Vec<u8> = (0..100_000u32)
        .map(|i| i.wrapping_mul(2_654_435_761) as u8)
        .collect();
    std::fs::write(jdir.join("db"), &garbage).unwrap();
    std::fs::write(jdir.join("conf"), b"segment_size: banana\n").unwrap();
    let config = journal_config(&broker, "journal-garbage-config", &jdir);
    let mut daemon = spawn_daemon(&config);
    let f = field(&broker);
    let (_, cmd) = f.publish_until_answered("dev-0030", &events(30, 100));
    assert_eq!(cmd.device.as_str(), "dev-0030");
    assert_eq!(
        metric(&scrape(&config), "reflexd_journal_moved_aside_total"),
        1
    );
    wait_until(
        "the record to be journaled",
        Duration::from_secs(10),
        || metric(&scrape(&config), "reflexd_journal_durable_through") >= 1,
    );
    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    // The damaged directory is kept, byte for byte, next to the fresh journal.
    let aside: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("journal.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(aside[0].join("db")).unwrap(), garbage);
    assert!(journaled(&jdir).contains_key(&("dev-0030".to_string(), cmd.seq)));
}
