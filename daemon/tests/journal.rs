//! reflexd with its journal, end to end against a real mosquitto and a real sled journal on
//! disk: acknowledged means journaled, across `kill -9` (and, with uploads on, every event
//! reaches the cloud, none twice by journal sequence or by event); a journal that cannot be
//! opened is moved aside and reflexd serves anyway, and what a moved journal still holds is
//! salvaged into the fresh one (counted); a quota smaller than the load drops the
//! oldest (counted) or, under backpressure, stops acking and loses nothing, both answering
//! every event within its budget (the product's 5 ms for drop-oldest); a cloud that is down
//! for a while receives everything once it is back; a real ENOSPC (the journal on a small
//! tmpfs) neither stops reflexd nor makes a command late, and once space returns the journal is
//! reopened without a restart and every event is journaled once (also when there was no
//! space to open it at start).
//!
//! The cloud here is the journal crate's test ingest (`journal/tests/fake_ingest`, a real
//! HTTP/1.1 server on 127.0.0.1 implementing the upload contract with `decode_batch`), not
//! `reflex-cloud serve`: it records every stored record, so exactly-once is checked per
//! (device, seq) without reading Parquet back.

mod common;
#[path = "../../journal/tests/fake_ingest/mod.rs"]
mod fake_ingest;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use reflex_journal::store::{Journal, StoreConfig};
use reflex_records::JournalRecord;
use reflex_tests::{mount_tmpfs, spawn_broker, spawn_broker_on, wait_until, Broker};
use rumqttc::QoS;

/// The route budget of the drop-oldest and no-space-at-start tests: the product's 5 ms.
const DEADLINE_TEST_BUDGET_MS: f64 = 5.0;

/// The budget of the tests where acks stop and resume with more events held than the
/// broker's in-flight window (backpressure, full disk): once acks resume, the broker sends
/// the held events at once (a burst of a thousand or more), and the deadline timer answers
/// what the model cannot, one after another, starting early enough to answer every
/// pending one by its fire time (`schedule::timer_start`). Every command is still checked
/// against this budget.
const REDELIVERY_BURST_BUDGET_MS: f64 = 20.0;

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

/// A config with a `[journal]` in `journal_dir` plus `journal_extra` lines in it, a route
/// budget of `deadline_ms`, and `sections` (e.g. `[upload]`) appended.
fn journal_config_with(
    broker: &Broker,
    name: &str,
    journal_dir: &Path,
    deadline_ms: f64,
    journal_extra: &str,
    sections: &str,
) -> PathBuf {
    let config = write_config(broker, name, deadline_ms, "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[journal]\ndir = \"{}\"\ngroup_commit_ms = 5\n{journal_extra}\n{sections}\n",
        journal_dir.display()
    ));
    std::fs::write(&config, text).unwrap();
    config
}

/// An `[upload]` section to `http://127.0.0.1:{port}` with its token file in `dir`.
fn upload_section(dir: &Path, port: u16) -> String {
    let token = dir.join("upload.token");
    reflex_tests::write_secret(&token, TOKEN);
    format!(
        "[upload]\nurl = \"http://127.0.0.1:{port}\"\ntoken_file = \"{}\"\nbatch_records = 200\nbatch_age_s = 1\nrequest_timeout_s = 5\n",
        token.display()
    )
}

const TOKEN: &str = "journal-test-token";

/// `n` events from each of `devices` devices (indices from `first`), interleaved.
fn fleet(first: u32, devices: u32, n: usize) -> Vec<(String, u64, Vec<u8>)> {
    let mut out = Vec::new();
    for d in first..first + devices {
        for (seq, bytes) in events(d, n) {
            out.push((format!("dev-{d:04}"), seq, bytes));
        }
    }
    out.sort_by_key(|(_, seq, _)| *seq);
    out
}

/// Publishes `events` at about `per_s` events/s.
fn publish_paced(f: &Field, events: &[(String, u64, Vec<u8>)], per_s: u64) {
    let events = events
        .iter()
        .map(|(dev, _, bytes)| (dev.clone(), bytes.clone()));
    publish_every(&f.client, events, Duration::from_secs(1) / per_s as u32);
}

/// Publishes each (device, payload) on its device's topic, QoS 1, one every `every`.
fn publish_every(
    client: &rumqttc::Client,
    events: impl IntoIterator<Item = (String, Vec<u8>)>,
    every: Duration,
) {
    let start = Instant::now();
    for (i, (dev, bytes)) in events.into_iter().enumerate() {
        client
            .publish(
                format!("sensors/{dev}/vibration"),
                QoS::AtLeastOnce,
                false,
                bytes,
            )
            .unwrap();
        let due = start + every * i as u32;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
}

/// Waits until reflexd answers a warm-up device (so it is subscribed).
fn warm_up(f: &Field) {
    f.publish_until_answered("dev-0099", &events(99, 200));
}

/// Collects commands for `expected` (others are ignored) until each has one, within
/// `limit`; then keeps listening for `quiet` to catch a second command for any of them.
fn commands_for(
    f: &Field,
    expected: &HashSet<(String, u64)>,
    limit: Duration,
    quiet: Duration,
) -> HashMap<(String, u64), Vec<reflex_wire::Command>> {
    let mut got: HashMap<(String, u64), Vec<reflex_wire::Command>> = HashMap::new();
    let deadline = Instant::now() + limit;
    while expected.iter().any(|k| !got.contains_key(k)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match f.commands.recv_timeout(left) {
            Ok(c) => {
                let k = (c.device.to_string(), c.seq);
                if expected.contains(&k) {
                    got.entry(k).or_default().push(c);
                }
            }
            Err(_) => break,
        }
    }
    while let Ok(c) = f.commands.recv_timeout(quiet) {
        let k = (c.device.to_string(), c.seq);
        if expected.contains(&k) {
            got.entry(k).or_default().push(c);
        }
    }
    got
}

/// Every command in `got` came within `budget_ms` of its event, end to end.
fn assert_none_late(got: &HashMap<(String, u64), Vec<reflex_wire::Command>>, budget_ms: f64) {
    let late: Vec<_> = got
        .values()
        .flatten()
        .filter(|c| c.latency_us as f64 > budget_ms * 1000.0)
        .map(|c| (c.device.to_string(), c.seq, c.latency_us, c.source))
        .collect();
    assert!(late.is_empty(), "answered after the deadline: {late:?}");
}

/// Polls `cond` every 20 ms until it holds (true) or `limit` passes (false).
fn holds_within(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
    let config = journal_config_with(&broker, "journal-crash-config", &jdir, 5.0, "", "");
    let mut run = kill_9_under_load(&broker, &config);
    let m = scrape(&config);
    run.daemon.terminate();
    let status = run.daemon.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "reflexd exited with {status}");
    let records = journaled(&jdir);
    println!(
        "seed {}: {} events, {} commands received, {} journal records, {} kills",
        run.seed,
        run.expected.len(),
        run.commands,
        records.values().sum::<usize>(),
        run.kills
    );
    assert_all_answered(&run.unanswered, run.seed, &m, |k| {
        records.contains_key(k).then_some("in the journal")
    });
    let missing: Vec<_> = run
        .expected
        .iter()
        .filter(|k| !records.contains_key(*k))
        .collect();
    let twice: Vec<_> = records.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty(),
        "{} answered events not in the journal (seed {}): {:?}",
        missing.len(),
        run.seed,
        &missing[..missing.len().min(10)]
    );
    assert!(
        twice.is_empty(),
        "journaled twice (seed {}): {twice:?}",
        run.seed
    );
}

#[test]
fn with_uploads_on_every_event_reaches_the_cloud_once_across_kill_9_restarts() {
    let _serial = serial();
    let broker = spawn_broker();
    let dir = test_dir("journal-crash-upload");
    let jdir = dir.join("journal");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ingest = rt.block_on(fake_ingest::Ingest::start(
        ([127, 0, 0, 1], 0).into(),
        TOKEN,
        64 << 20,
    ));
    let config = journal_config_with(
        &broker,
        "journal-crash-upload-config",
        &jdir,
        5.0,
        "",
        &upload_section(&dir, ingest.addr.port()),
    );
    let run = kill_9_under_load(&broker, &config);
    // The backlog drains: every published event reaches the cloud (stronger than "every
    // PUBACKed one is in the journal or at the cloud").
    let at_cloud = |ingest: &fake_ingest::Ingest| stored_per_event(&ingest.state.lock().unwrap());
    let drained = holds_within(Duration::from_secs(120), || {
        let up = at_cloud(&ingest);
        run.expected.iter().all(|k| up.contains_key(k))
    });
    let m = scrape(&config);
    let mut daemon = run.daemon;
    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    {
        let up = at_cloud(&ingest);
        let records = journaled(&jdir);
        assert_all_answered(&run.unanswered, run.seed, &m, |k| {
            if records.contains_key(k) {
                Some("in the journal")
            } else if up.contains_key(k) {
                Some("only at the cloud (uploaded, deleted from the journal)")
            } else {
                None
            }
        });
    }
    if !drained {
        let up = at_cloud(&ingest);
        let records = journaled(&jdir);
        let missing: Vec<_> = run
            .expected
            .iter()
            .filter(|k| !up.contains_key(*k))
            .collect();
        let lost: Vec<_> = missing
            .iter()
            .filter(|k| !records.contains_key(**k))
            .collect();
        panic!(
            "{} events not at the cloud after 120 s, {} of them in neither the cloud nor the journal (seed {}): {:?}",
            missing.len(),
            lost.len(),
            run.seed,
            &lost[..lost.len().min(10)]
        );
    }
    let st = rt.block_on(ingest.stop());
    let st = st.lock().unwrap();
    assert!(
        st.stored_twice.is_empty(),
        "journal sequences stored twice at the cloud (seed {}): {:?}",
        run.seed,
        st.stored_twice
    );
    let n = stored_per_event(&st);
    let twice: Vec<_> = n.iter().filter(|(_, c)| **c > 1).collect();
    println!(
        "seed {}: {} events, {} commands, {} kills, {} records in {} batches at the cloud ({} batches received)",
        run.seed,
        run.expected.len(),
        run.commands,
        run.kills,
        st.records.len(),
        st.stored_ids.len(),
        st.received_ids.len()
    );
    assert!(
        twice.is_empty(),
        "events stored twice at the cloud (seed {}): {twice:?}",
        run.seed
    );
    let missing = run.expected.iter().filter(|k| !n.contains_key(*k)).count();
    assert_eq!(missing, 0, "seed {}", run.seed);
}

/// No event is `unanswered`; otherwise panics saying where each unanswered one is kept
/// (`kept`: e.g. "in the journal"; decided and kept, only its command is missing) or that
/// it is nowhere (lost), with the seed and the last reflexd's dedupe counters (`metrics`).
fn assert_all_answered(
    unanswered: &[(String, u64)],
    seed: u64,
    metrics: &str,
    kept: impl Fn(&(String, u64)) -> Option<&'static str>,
) {
    if unanswered.is_empty() {
        return;
    }
    let mut by_place: std::collections::BTreeMap<&str, Vec<&(String, u64)>> = Default::default();
    for k in unanswered {
        by_place
            .entry(kept(k).unwrap_or("nowhere"))
            .or_default()
            .push(k);
    }
    let places: Vec<String> = by_place
        .iter()
        .map(|(place, keys)| format!("{} {place} {:?}", keys.len(), &keys[..keys.len().min(5)]))
        .collect();
    panic!(
        "{} events never answered (KILL_SEED={seed}): {}; last reflexd: {} duplicates, {} \
         commands sent again",
        unanswered.len(),
        places.join(", "),
        metric(metrics, "reflexd_duplicate_events_total{"),
        metric(metrics, "reflexd_commands_resent_total"),
    );
}

/// What [`kill_9_under_load`] leaves: the daemon still running, and what was published.
struct CrashRun {
    daemon: reflex_tests::ChildGuard,
    /// Every event published after reflexd first answered.
    expected: HashSet<(String, u64)>,
    /// Events of `expected` no command was received for (within 60 s of the last publish).
    unanswered: Vec<(String, u64)>,
    /// Commands received (with repeats).
    commands: usize,
    kills: usize,
    seed: u64,
}

/// Starts reflexd on `config`, publishes 4 × 2000 QoS 1 events at ~1000/s, kills it with
/// SIGKILL ten times at pseudo-random answer counts (restarting it each time), and waits
/// (bounded) until every event was answered. Returns with the last reflexd running.
fn kill_9_under_load(broker: &Broker, config: &PathBuf) -> CrashRun {
    let mut daemon = spawn_daemon(config);
    let f = field(broker);
    // Four devices, 2000 events each, interleaved.
    let per_device: Vec<Vec<(u64, Vec<u8>)>> = (0..4).map(|d| events(20 + d, 2000)).collect();
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
        // ~1000 events/s: kills land while events flow.
        let events = queue.into_iter().map(|(dev, bytes, _)| (dev, bytes));
        std::thread::spawn(move || publish_every(&client, events, Duration::from_millis(1)))
    };

    // kill -9 at pseudo-random points while the load runs, restarting each time.
    // `KILL_SEED` replays a run's kill points (the seed is printed either way).
    let seed = std::env::var("KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64
        });
    eprintln!("kill_9_under_load: KILL_SEED={seed}");
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
    let kills = 10;
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
        daemon = spawn_daemon(config);
    }
    publisher.join().unwrap();
    let limit = Instant::now() + Duration::from_secs(60);
    while !expected.iter().all(|k| answered.contains(k)) {
        let left = limit.saturating_duration_since(Instant::now());
        let Ok(c) = f.commands.recv_timeout(left) else {
            break;
        };
        commands += 1;
        answered.insert((c.device.to_string(), c.seq));
    }
    let mut unanswered: Vec<(String, u64)> = expected
        .iter()
        .filter(|k| !answered.contains(*k))
        .cloned()
        .collect();
    unanswered.sort();
    CrashRun {
        daemon,
        expected,
        unanswered,
        commands,
        kills,
        seed,
    }
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
    let m = scrape(&config);
    assert_eq!(metric(&m, "reflexd_journal_moved_aside_total"), 1);
    // Garbage holds no journal: nothing salvaged, the failure counted.
    assert_eq!(metric(&m, "reflexd_journal_salvage_failures_total"), 1);
    assert_eq!(metric(&m, "reflexd_journal_salvaged_records_total"), 0);
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

/// A decided record of `device`'s event `seq`, as reflexd journals it.
fn decided_record(device: &str, seq: u64) -> JournalRecord {
    JournalRecord {
        node: "board-1".into(),
        device: device.into(),
        seq,
        arrival_unix_us: 1_767_225_600_000_000 + seq,
        payload: vec![seq as u8; 16],
        model_input: vec![0.25; 6],
        features: vec![0.5; 13],
        logits: vec![1.0, -1.5],
        class: 1,
        command: b"stop".to_vec(),
        model: reflex_records::ModelId {
            name: "edge".into(),
            version: "1.0.0".into(),
        },
        source: reflex_records::DecisionSource::Model,
        timings: Default::default(),
        outcome: reflex_records::DeadlineOutcome::OnTime,
    }
}

#[test]
fn a_journal_moved_aside_is_salvaged_at_start_and_its_records_counted_and_kept() {
    let _serial = serial();
    let broker = spawn_broker();
    let dir = test_dir("journal-salvage");
    let jdir = dir.join("journal");
    // A journal of 30 decided events, opened twice (sled writes a snapshot at the second
    // open), then damaged as a full filesystem does: sled's next snapshot cut short.
    let (j, _) = Journal::open(StoreConfig::new(&jdir)).unwrap();
    for seq in 1..=30 {
        j.append(&decided_record("dev-0900", seq).encode()).unwrap();
    }
    j.sync().unwrap();
    drop(j);
    drop(Journal::open(StoreConfig::new(&jdir)).unwrap());
    let mut snaps: Vec<PathBuf> = std::fs::read_dir(&jdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snap.")
        })
        .collect();
    snaps.sort();
    let newest = snaps.pop().expect("sled wrote a snapshot");
    let lsn = u64::from_str_radix(
        newest
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("snap."),
        16,
    )
    .unwrap();
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(
        jdir.join(format!("snap.{:016X}.generating", lsn + 1)),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();

    let config = journal_config(&broker, "journal-salvage-config", &jdir);
    let mut daemon = spawn_daemon(&config);
    let f = field(&broker);
    let (_, cmd) = f.publish_until_answered("dev-0031", &events(31, 100));
    let m = scrape(&config);
    assert_eq!(metric(&m, "reflexd_journal_moved_aside_total"), 1);
    assert_eq!(metric(&m, "reflexd_journal_salvaged_records_total"), 30);
    assert_eq!(metric(&m, "reflexd_journal_salvage_failures_total"), 0);
    wait_until(
        "the record to be journaled",
        Duration::from_secs(10),
        || metric(&scrape(&config), "reflexd_journal_durable_through") >= 31,
    );
    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    let kept = journaled(&jdir);
    for seq in 1..=30 {
        assert_eq!(
            kept.get(&("dev-0900".to_string(), seq)),
            Some(&1),
            "event {seq}"
        );
    }
    assert!(kept.contains_key(&("dev-0031".to_string(), cmd.seq)));
    let salvaged = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("journal.salvaged-")
        })
        .count();
    assert_eq!(salvaged, 1, "the moved journal is kept, marked salvaged");
}

#[test]
fn a_journal_quota_smaller_than_the_load_drops_the_oldest_and_keeps_answering_on_time() {
    let _serial = serial();
    let broker = spawn_broker();
    let dir = test_dir("journal-drop-oldest");
    let jdir = dir.join("journal");
    let budget_ms = DEADLINE_TEST_BUDGET_MS;
    // 1 MiB: full once ~380 records of ~1.4 KB are live (× amplification 2), then back to
    // 90 % of half the quota (store's module doc, Quota).
    let config = journal_config_with(
        &broker,
        "journal-drop-oldest-config",
        &jdir,
        budget_ms,
        "quota_mib = 1\nmin_free_mib = 1\nwhen_full = \"drop-oldest\"",
        "",
    );
    let mut daemon = spawn_daemon(&config);
    let f = field(&broker);
    warm_up(&f);
    let load = fleet(40, 4, 750);
    let expected: HashSet<(String, u64)> = load.iter().map(|(d, s, _)| (d.clone(), *s)).collect();
    let started = Instant::now();
    publish_paced(&f, &load, 1000);
    let got = commands_for(
        &f,
        &expected,
        Duration::from_secs(60),
        Duration::from_millis(500),
    );
    println!(
        "{} events published in {:?}, {} answered",
        load.len(),
        started.elapsed(),
        got.len()
    );
    let missing = expected.iter().filter(|k| !got.contains_key(*k)).count();
    assert_eq!(missing, 0, "{missing} events never answered");
    let twice: Vec<_> = got
        .iter()
        .filter(|(_, c)| c.len() > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(twice.is_empty(), "answered twice: {twice:?}");
    assert_none_late(&got, budget_ms);
    wait_until(
        "every record to be durable",
        Duration::from_secs(20),
        || metric(&scrape(&config), "reflexd_journal_durable_through") >= expected.len() as u64,
    );
    // Every PUBACK waited for its record: each is observed as the `ack` stage.
    let acks = "reflexd_stage_latency_seconds_count{stage=\"ack\"}";
    wait_until(
        "every held PUBACK to be sent",
        Duration::from_secs(20),
        || metric(&scrape(&config), acks) >= expected.len() as u64,
    );
    let m = scrape(&config);
    assert!(
        reflex_tests::prometheus::metric(&m, "reflexd_stage_latency_seconds_sum{stage=\"ack\"}")
            > 0.0,
        "acks held for no time at all"
    );
    let dropped = metric(&m, "reflexd_journal_dropped_records_total");
    let live = metric(&m, "reflexd_journal_live_bytes");
    let files = metric(&m, "reflexd_journal_files_bytes");
    println!("dropped {dropped}, live {live} B, files {files} B");
    assert!(dropped >= 1000, "only {dropped} records dropped");
    assert_eq!(metric(&m, "reflexd_journal_refused_total"), 0);
    // At most the quota / amplification after each check, plus one group commit (256
    // records) of overshoot.
    assert!(live <= (1 << 20) / 2 + 256 * 1500, "{live} live bytes");
    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    // What is left is the newest records, each once.
    let records = journaled(&jdir);
    assert!(records.values().all(|n| *n == 1), "a record kept twice");
    let kept: Vec<_> = load
        .iter()
        .filter(|(d, s, _)| records.contains_key(&(d.clone(), *s)))
        .collect();
    assert!(!kept.is_empty() && kept.len() < 800, "{} kept", kept.len());
    let newest_kept = load
        .iter()
        .rev()
        .take(50)
        .filter(|(d, s, _)| records.contains_key(&(d.clone(), *s)))
        .count();
    assert_eq!(newest_kept, 50, "the newest records are kept");
}

#[test]
fn a_full_journal_with_backpressure_stops_acking_and_loses_nothing_once_space_returns() {
    let _serial = serial();
    let broker = spawn_broker();
    let dir = test_dir("journal-backpressure");
    let jdir = dir.join("journal");
    let cloud_port = reflex_tests::free_port();
    let budget_ms = REDELIVERY_BURST_BUDGET_MS;
    let config = journal_config_with(
        &broker,
        "journal-backpressure-config",
        &jdir,
        budget_ms,
        "quota_mib = 1\nmin_free_mib = 1\nwhen_full = \"backpressure\"",
        &upload_section(&dir, cloud_port),
    );
    let mut daemon = spawn_daemon(&config);
    let f = field(&broker);
    warm_up(&f);
    // 3000 events, more than the journal (~380) plus the broker's in-flight window (1000).
    let load = fleet(50, 4, 750);
    let expected: HashSet<(String, u64)> = load.iter().map(|(d, s, _)| (d.clone(), *s)).collect();
    publish_paced(&f, &load, 1000);
    // The cloud is down: the journal fills and refuses; the events stay unacked.
    wait_until(
        "the journal to refuse records",
        Duration::from_secs(30),
        || metric(&scrape(&config), "reflexd_journal_refused_total") > 0,
    );
    let m = scrape(&config);
    let durable = metric(&m, "reflexd_journal_durable_through");
    println!(
        "journal full: durable through {durable}, {} refused, {} commands published",
        metric(&m, "reflexd_journal_refused_total"),
        metric(&m, "reflexd_commands_published_total"),
    );
    assert!(durable < expected.len() as u64, "durable through {durable}");
    // The cloud comes up: uploads free space, the refused records go in, acks resume and
    // the broker sends the rest.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ingest = rt.block_on(fake_ingest::Ingest::start(
        ([127, 0, 0, 1], cloud_port).into(),
        TOKEN,
        64 << 20,
    ));
    let uploaded = |ingest: &fake_ingest::Ingest| stored_per_event(&ingest.state.lock().unwrap());
    wait_until(
        "every event to reach the cloud",
        Duration::from_secs(120),
        || {
            let up = uploaded(&ingest);
            expected.iter().all(|k| up.contains_key(k))
        },
    );
    // Every event answered exactly once: the refused ones were kept and journaled, not
    // decided again.
    let got = commands_for(
        &f,
        &expected,
        Duration::from_secs(10),
        Duration::from_millis(500),
    );
    let unanswered = expected.iter().filter(|k| !got.contains_key(*k)).count();
    assert_eq!(unanswered, 0);
    let twice = got.values().filter(|c| c.len() > 1).count();
    assert_eq!(twice, 0, "{twice} events answered twice");
    let m = scrape(&config);
    for l in m.lines().filter(|l| {
        l.starts_with("reflexd_deadline_misses_total")
            || l.starts_with("reflexd_realtime")
            || l.starts_with("reflexd_late_model")
    }) {
        println!("{l}");
    }
    println!(
        "{} fallback answers, the timer's estimate of one {:.1} µs",
        got.values()
            .flatten()
            .filter(|c| c.source == reflex_wire::DecisionSource::Fallback)
            .count(),
        reflex_tests::prometheus::metric(&m, "reflexd_fallback_answer_cost_seconds") * 1e6,
    );
    // Refusing records (and holding their acks) never delays a command.
    assert_none_late(&got, budget_ms);
    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    let st = rt.block_on(ingest.stop());
    let st = st.lock().unwrap();
    assert!(st.stored_twice.is_empty(), "{:?}", st.stored_twice);
    let mut everywhere = stored_per_event(&st);
    for (k, n) in journaled(&jdir) {
        *everywhere.entry(k).or_default() += n;
    }
    let once = expected
        .iter()
        .filter(|k| everywhere.get(*k) == Some(&1))
        .count();
    println!(
        "{} events, {} batches, {} journaled exactly once (cloud + journal)",
        expected.len(),
        st.stored_ids.len(),
        once
    );
    assert_eq!(
        once,
        expected.len(),
        "not every event journaled exactly once"
    );
}

#[test]
fn the_cloud_down_for_a_while_then_back_receives_everything_once() {
    let _serial = serial();
    let broker = spawn_broker();
    let dir = test_dir("journal-cloud-down");
    let jdir = dir.join("journal");
    let cloud_port = reflex_tests::free_port();
    let config = journal_config_with(
        &broker,
        "journal-cloud-down-config",
        &jdir,
        20.0,
        "",
        &upload_section(&dir, cloud_port),
    );
    let mut daemon = spawn_daemon(&config);
    let f = field(&broker);
    warm_up(&f);
    let load = fleet(60, 4, 250);
    let expected: HashSet<(String, u64)> = load.iter().map(|(d, s, _)| (d.clone(), *s)).collect();
    publish_paced(&f, &load, 1000);
    // Nothing listens on the port: connections are refused, the uploader backs off.
    wait_until("uploads to fail", Duration::from_secs(30), || {
        metric(&scrape(&config), "reflexd_upload_failures_total") >= 2
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ingest = rt.block_on(fake_ingest::Ingest::start(
        ([127, 0, 0, 1], cloud_port).into(),
        TOKEN,
        64 << 20,
    ));
    wait_until(
        "every event to reach the cloud",
        Duration::from_secs(120),
        || {
            let st = ingest.state.lock().unwrap();
            let up: HashSet<(String, u64)> = st
                .records
                .values()
                .map(|r| (r.device.clone(), r.seq))
                .collect();
            expected.iter().all(|k| up.contains(k))
        },
    );
    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    let st = rt.block_on(ingest.stop());
    let st = st.lock().unwrap();
    assert!(st.stored_twice.is_empty(), "{:?}", st.stored_twice);
    let n = stored_per_event(&st);
    let twice: Vec<_> = n.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    println!(
        "{} events, {} batches stored, statuses {:?}",
        expected.len(),
        st.stored_ids.len(),
        st.statuses
            .iter()
            .fold(HashMap::<u16, usize>::new(), |mut m, s| {
                *m.entry(*s).or_default() += 1;
                m
            })
    );
}

#[test]
fn a_full_disk_holds_acks_and_every_event_is_answered_and_journaled_once_when_space_returns() {
    let _serial = serial();
    let broker = spawn_broker();
    let dir = test_dir("journal-enospc");
    let mnt = dir.join("mnt");
    let _mount = mount_tmpfs(&mnt, "16m");
    // A filler leaves the journal about 2 MiB: room for ~700 records before a real ENOSPC
    // (no quota, no free-space floor to keep it away).
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![0xA5u8; 14 << 20]).unwrap();
    let jdir = mnt.join("journal");
    let budget_ms = REDELIVERY_BURST_BUDGET_MS;
    let config = journal_config_with(
        &broker,
        "journal-enospc-config",
        &jdir,
        budget_ms,
        "quota_mib = 1024\nmin_free_mib = 0",
        "",
    );
    let mut daemon = spawn_daemon(&config);
    let f = field(&broker);
    warm_up(&f);
    // 2000 events: more than fit. An event is acked only once journaled, so while the
    // disk is full the broker's in-flight window (20, its default) fills and it keeps the
    // rest until acks resume.
    let load = fleet(70, 4, 500);
    let expected: HashSet<(String, u64)> = load.iter().map(|(d, s, _)| (d.clone(), *s)).collect();
    let publisher = {
        let client = f.client.clone();
        let events = load.into_iter().map(|(dev, _, bytes)| (dev, bytes));
        std::thread::spawn(move || publish_every(&client, events, Duration::from_millis(1)))
    };
    wait_until("the journal to hit ENOSPC", Duration::from_secs(30), || {
        metric(&scrape(&config), "reflexd_journal_errors_total") > 0
    });
    let m = scrape(&config);
    let durable_full = metric(&m, "reflexd_journal_durable_through");
    println!(
        "ENOSPC: durable through {durable_full}, {} commands published, {} journal errors, {} append failures",
        metric(&m, "reflexd_commands_published_total"),
        metric(&m, "reflexd_journal_errors_total"),
        metric(&m, "reflexd_journal_append_failures_total"),
    );
    assert!(
        durable_full < expected.len() as u64,
        "durable through {durable_full}: the disk never filled"
    );
    // Still up while the disk is full, and not retrying the journal into a full disk.
    assert!(daemon.child.try_wait().unwrap().is_none(), "reflexd exited");
    assert!(
        metric(&scrape(&config), "reflexd_journal_reopens_total") == 0,
        "the journal reopened while the disk was still full"
    );
    publisher.join().unwrap();
    // Nothing unjournaled was acked: the broker still holds events back.
    let answered_while_full = metric(&scrape(&config), "reflexd_commands_published_total");
    assert!(
        answered_while_full < expected.len() as u64,
        "all {answered_while_full} events answered while the disk was full: acked unjournaled"
    );
    // Space returns: the journal is reopened, the records it refused or lost go in, acks
    // resume and the broker sends the rest.
    std::fs::remove_file(&filler).unwrap();
    let got = commands_for(
        &f,
        &expected,
        Duration::from_secs(60),
        Duration::from_millis(500),
    );
    let unanswered = expected.iter().filter(|k| !got.contains_key(*k)).count();
    assert_eq!(unanswered, 0, "{unanswered} events never answered");
    let twice = got.values().filter(|c| c.len() > 1).count();
    assert_eq!(twice, 0, "{twice} events answered twice");
    assert_none_late(&got, budget_ms);
    wait_until("the journal to reopen", Duration::from_secs(30), || {
        metric(&scrape(&config), "reflexd_journal_reopens_total") >= 1
    });
    let m = scrape(&config);
    println!(
        "space back: {} reopens, {} failed reopens, {} moved aside",
        metric(&m, "reflexd_journal_reopens_total"),
        metric(&m, "reflexd_journal_reopen_failures_total"),
        metric(&m, "reflexd_journal_moved_aside_total"),
    );
    let moved_aside = metric(&m, "reflexd_journal_moved_aside_total");
    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    if moved_aside > 0 {
        assert_moved_aside_once(&mnt, &jdir, moved_aside);
        return;
    }
    assert_journaled_once(&jdir, &expected);
}

/// sled 0.34 now and then reads the log an ENOSPC cut short as damaged when it is reopened
/// (journal store doc, Corruption). That is its own corruption report, and the journal's
/// answer is the one for any damaged journal: kept whole beside a fresh one. What still
/// holds then: every event answered once and on time, reflexd up, the damaged journal
/// kept, moved aside once, and the fresh journal journaling.
fn assert_moved_aside_once(mnt: &Path, jdir: &Path, moved_aside: u64) {
    assert_eq!(moved_aside, 1);
    let aside = std::fs::read_dir(mnt)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            // Renamed `.salvaged-*` once what it held was taken into the fresh journal.
            name.starts_with("journal.corrupt-") || name.starts_with("journal.salvaged-")
        })
        .count();
    assert_eq!(aside, 1, "the damaged journal is kept beside the fresh one");
    assert!(
        !journaled(jdir).is_empty(),
        "the fresh journal took records"
    );
    println!("sled read the ENOSPC-cut log as damaged: moved aside (kept), fresh journal");
}

/// Fills the (16 MiB tmpfs) filesystem at `mnt` to the last byte; returns the filler.
fn fill_to_the_last_byte(mnt: &Path) -> PathBuf {
    use std::io::Write;
    let filler = mnt.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0xA5u8; 64 << 10];
    let mut written = 0usize;
    let full = loop {
        match file.write(&chunk) {
            Ok(0) => break None,
            Ok(n) => written += n,
            Err(e) => break Some(e),
        }
        assert!(written <= 17 << 20, "wrote past the tmpfs size");
    };
    let full = full.expect("the tmpfs fills up");
    assert_eq!(full.raw_os_error(), Some(28), "{full}"); // ENOSPC
    filler
}

/// How many times the cloud stored each event, by (device, seq).
fn stored_per_event(st: &fake_ingest::State) -> HashMap<(String, u64), usize> {
    let mut out = HashMap::new();
    for r in st.records.values() {
        *out.entry((r.device.clone(), r.seq)).or_default() += 1;
    }
    out
}

/// Every event of `expected` is in the journal in `jdir`, once.
fn assert_journaled_once(jdir: &Path, expected: &HashSet<(String, u64)>) {
    let records = journaled(jdir);
    let missing: Vec<_> = expected
        .iter()
        .filter(|k| !records.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "{} events not journaled: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let twice: Vec<_> = records.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "journaled twice: {twice:?}");
}

#[test]
fn a_journal_with_no_space_to_open_holds_acks_and_every_event_is_answered_once_it_opens() {
    let _serial = serial();
    let broker = spawn_broker();
    let dir = test_dir("journal-enospc-start");
    let mnt = dir.join("mnt");
    let _mount = mount_tmpfs(&mnt, "16m");
    let filler = fill_to_the_last_byte(&mnt);
    let jdir = mnt.join("journal");
    let budget_ms = DEADLINE_TEST_BUDGET_MS;
    let config = journal_config_with(
        &broker,
        "journal-enospc-start-config",
        &jdir,
        budget_ms,
        "quota_mib = 1024\nmin_free_mib = 0",
        "",
    );
    let mut daemon = spawn_daemon(&config);
    let f = field(&broker);
    warm_up(&f);
    let load = fleet(80, 2, 150);
    let expected: HashSet<(String, u64)> = load.iter().map(|(d, s, _)| (d.clone(), *s)).collect();
    publish_paced(&f, &load, 1000);
    // Without a journal nothing is acked: the broker's in-flight window (20) fills and it
    // keeps the rest. reflexd is up, trying to open the journal.
    wait_until(
        "a failed try to open the journal",
        Duration::from_secs(30),
        || metric(&scrape(&config), "reflexd_journal_reopen_failures_total") >= 1,
    );
    assert!(daemon.child.try_wait().unwrap().is_none(), "reflexd exited");
    let m = scrape(&config);
    assert_eq!(metric(&m, "reflexd_journal_reopens_total"), 0);
    assert_eq!(metric(&m, "reflexd_journal_durable_through"), 0);
    let answered = metric(&m, "reflexd_commands_published_total");
    assert!(
        answered < expected.len() as u64,
        "all {answered} events answered without a journal: acked unjournaled"
    );
    // Space returns: the journal opens, the records waiting in reflexd go in, acks resume
    // and the broker sends the rest.
    std::fs::remove_file(&filler).unwrap();
    let got = commands_for(
        &f,
        &expected,
        Duration::from_secs(60),
        Duration::from_millis(500),
    );
    let unanswered = expected.iter().filter(|k| !got.contains_key(*k)).count();
    assert_eq!(unanswered, 0, "{unanswered} events never answered");
    assert_none_late(&got, budget_ms);
    wait_until("the journal to open", Duration::from_secs(30), || {
        metric(&scrape(&config), "reflexd_journal_reopens_total") >= 1
    });
    let m = scrape(&config);
    println!(
        "opened after {} failed tries; {} moved aside",
        metric(&m, "reflexd_journal_reopen_failures_total"),
        metric(&m, "reflexd_journal_moved_aside_total")
    );
    assert!(metric(&m, "reflexd_journal_reopen_failures_total") >= 1);
    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    let records = journaled(&jdir);
    let missing = expected
        .iter()
        .filter(|k| !records.contains_key(*k))
        .count();
    assert_eq!(missing, 0, "{missing} events not journaled");
    let twice: Vec<_> = records.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "journaled twice: {twice:?}");
}

#[test]
fn with_a_request_channel_of_one_every_event_is_answered_and_journaled_once() {
    let _serial = serial();
    let broker = spawn_broker();
    let dir = test_dir("journal-tiny-channel");
    let jdir = dir.join("journal");
    // One slot for every packet reflexd sends: commands and PUBACKs find it full all the
    // time. A PUBACK that is dropped then holds one of the broker's 20 in-flight slots for
    // good, and after 20 of them the broker sends nothing more.
    let config = write_config_with(
        &format!("port = {}\nrequest_channel_capacity = 1", broker.port),
        "journal-tiny-channel-config",
        DEADLINE_TEST_BUDGET_MS,
        "",
        &repo().join("models"),
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[journal]\ndir = \"{}\"\ngroup_commit_ms = 5\n",
        jdir.display()
    ));
    std::fs::write(&config, text).unwrap();
    let mut daemon = spawn_daemon(&config);
    let f = field(&broker);
    warm_up(&f);
    let load = fleet(60, 4, 500);
    let expected: HashSet<(String, u64)> = load.iter().map(|(d, s, _)| (d.clone(), *s)).collect();
    publish_paced(&f, &load, 1000);
    let got = commands_for(
        &f,
        &expected,
        Duration::from_secs(60),
        Duration::from_millis(500),
    );
    let unanswered = expected.iter().filter(|k| !got.contains_key(*k)).count();
    assert_eq!(unanswered, 0, "{unanswered} events never answered");
    let twice = got.values().filter(|c| c.len() > 1).count();
    assert_eq!(twice, 0, "{twice} events answered twice");
    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    assert_journaled_once(&jdir, &expected);
}

#[test]
fn acks_held_when_the_broker_loses_the_session_are_dropped_and_later_events_are_kept() {
    let _serial = serial();
    let mut broker = spawn_broker();
    let port = broker.port;
    let dir = test_dir("journal-session-lost");
    let mnt = dir.join("mnt");
    let _mount = mount_tmpfs(&mnt, "16m");
    // No room for the journal: every answered event's PUBACK is held.
    let filler = fill_to_the_last_byte(&mnt);
    let jdir = mnt.join("journal");
    let config = journal_config_with(
        &broker,
        "journal-session-lost-config",
        &jdir,
        DEADLINE_TEST_BUDGET_MS,
        "quota_mib = 1024\nmin_free_mib = 0",
        "",
    );
    let mut daemon = spawn_daemon(&config);
    {
        let f = field(&broker);
        warm_up(&f);
        publish_paced(&f, &fleet(70, 2, 10), 1000);
    }
    wait_until(
        "answers with their acks held",
        Duration::from_secs(30),
        || metric(&scrape(&config), "reflexd_commands_published_total") >= 10,
    );
    // The broker dies before it ever saved its state: it comes back without our session
    // and numbers its messages from 1 again.
    broker.kill();
    let broker = spawn_broker_on(port);
    let f = field(&broker);
    warm_up(&f);
    // Space returns: the held records go in, and their acks, of a session the broker
    // forgot, are dropped rather than sent.
    std::fs::remove_file(&filler).unwrap();
    wait_until("held acks dropped", Duration::from_secs(30), || {
        metric(&scrape(&config), "reflexd_acks_dropped_session_lost_total") >= 10
    });
    let load = fleet(80, 2, 200);
    let expected: HashSet<(String, u64)> = load.iter().map(|(d, s, _)| (d.clone(), *s)).collect();
    publish_paced(&f, &load, 1000);
    let got = commands_for(
        &f,
        &expected,
        Duration::from_secs(30),
        Duration::from_millis(300),
    );
    let unanswered = expected.iter().filter(|k| !got.contains_key(*k)).count();
    assert_eq!(unanswered, 0, "{unanswered} events never answered");
    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    assert_journaled_once(&jdir, &expected);
}

#[test]
fn a_broker_restarted_under_load_loses_no_event_and_journals_each_once() {
    let _serial = serial();
    let mut broker = spawn_broker();
    let port = broker.port;
    let dir = test_dir("journal-broker-restart");
    let jdir = dir.join("journal");
    let config = journal_config(&broker, "journal-broker-restart-config", &jdir);
    let mut daemon = spawn_daemon(&config);
    let f = persistent_field(&broker);
    warm_up(&f);
    let load = fleet(90, 4, 500);
    let expected: HashSet<(String, u64)> = load.iter().map(|(d, s, _)| (d.clone(), *s)).collect();
    let publisher = {
        let client = f.client.clone();
        let events: Vec<(String, Vec<u8>)> = load
            .iter()
            .map(|(d, _, b)| (d.clone(), b.clone()))
            .collect();
        std::thread::spawn(move || publish_every(&client, events, Duration::from_millis(1)))
    };
    // Restart the broker (persistence on, as Debian ships it) while events flow: it saves
    // the sessions and queued events, and both clients reconnect to it.
    let mut got: HashMap<(String, u64), usize> = HashMap::new();
    while got.len() < 500 {
        let c = f
            .commands
            .recv_timeout(Duration::from_secs(30))
            .expect("reflexd answers under load");
        *got.entry((c.device.to_string(), c.seq)).or_default() += 1;
    }
    broker.stop();
    let _broker = spawn_broker_on(port);
    publisher.join().unwrap();
    let limit = Instant::now() + Duration::from_secs(60);
    while expected.iter().any(|k| !got.contains_key(k)) {
        let left = limit.saturating_duration_since(Instant::now());
        let Ok(c) = f.commands.recv_timeout(left) else {
            break;
        };
        *got.entry((c.device.to_string(), c.seq)).or_default() += 1;
    }
    let unanswered = expected.iter().filter(|k| !got.contains_key(*k)).count();
    assert_eq!(unanswered, 0, "{unanswered} events never answered");
    assert!(
        metric(&scrape(&config), "reflexd_mqtt_reconnects_total") >= 1,
        "reflexd never saw the broker go"
    );
    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    assert_journaled_once(&jdir, &expected);
}

#[test]
fn events_already_uploaded_and_deleted_are_not_answered_again_after_a_restart() {
    let _serial = serial();
    let broker = spawn_broker();
    let dir = test_dir("journal-marks");
    let jdir = dir.join("journal");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ingest = rt.block_on(fake_ingest::Ingest::start(
        ([127, 0, 0, 1], 0).into(),
        TOKEN,
        64 << 20,
    ));
    let config = journal_config_with(
        &broker,
        "journal-marks-config",
        &jdir,
        DEADLINE_TEST_BUDGET_MS,
        "",
        &upload_section(&dir, ingest.addr.port()),
    );
    let mut daemon = spawn_daemon(&config);
    let f = field(&broker);
    warm_up(&f);
    let load = fleet(110, 2, 150);
    let expected: HashSet<(String, u64)> = load.iter().map(|(d, s, _)| (d.clone(), *s)).collect();
    publish_paced(&f, &load, 1000);
    let got = commands_for(&f, &expected, Duration::from_secs(30), Duration::ZERO);
    assert_eq!(got.len(), expected.len(), "not every event was answered");
    // Uploaded, acknowledged by the cloud, and deleted from the board.
    wait_until(
        "the journal to be uploaded and emptied",
        Duration::from_secs(30),
        || {
            let m = scrape(&config);
            metric(&m, "reflexd_upload_backlog_records") == 0
                && metric(&m, "reflexd_journal_live_bytes") == 0
        },
    );
    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    // The same events again, as a broker redelivers them after a crash (but for each
    // device's seq 1: published afresh, without the DUP flag a redelivery carries, that is
    // a device restart), then new ones. Published while reflexd starts: its persistent
    // session queues them.
    let _daemon = spawn_daemon(&config);
    let (old, new): (Vec<_>, Vec<_>) = fleet(110, 2, 160)
        .into_iter()
        .filter(|(_, s, _)| *s > 1)
        .partition(|(d, s, _)| expected.contains(&(d.clone(), *s)));
    let fresh: HashSet<(String, u64)> = new.iter().map(|(d, s, _)| (d.clone(), *s)).collect();
    publish_paced(&f, &old, 1000);
    publish_paced(&f, &new, 1000);
    let (mut answered_fresh, mut answered_old) = (HashSet::new(), 0usize);
    let limit = Instant::now() + Duration::from_secs(30);
    while answered_fresh.len() < fresh.len() {
        let left = limit.saturating_duration_since(Instant::now());
        let Ok(c) = f.commands.recv_timeout(left) else {
            break;
        };
        let k = (c.device.to_string(), c.seq);
        if fresh.contains(&k) {
            answered_fresh.insert(k);
        } else if expected.contains(&k) {
            answered_old += 1;
        }
    }
    assert_eq!(
        answered_fresh.len(),
        fresh.len(),
        "the new events were not all answered"
    );
    assert_eq!(
        answered_old, 0,
        "{answered_old} events decided before were answered again"
    );
    let st = rt.block_on(ingest.stop());
    let st = st.lock().unwrap();
    let n = stored_per_event(&st);
    let twice: Vec<_> = n.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "stored twice at the cloud: {twice:?}");
}
