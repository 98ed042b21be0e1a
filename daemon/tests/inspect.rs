//! `reflexd journal tail|export|clear-dead-letter`, the real binary against a real sled
//! journal on disk: JSON lines that read back into the records the journal holds, the
//! dead-letter range exported with its reasons, a time range, and, with reflexd running,
//! an error naming the lock that changes nothing. Records of a model with its own
//! features (format 3, the motor example) are exported with them by name, and the export
//! reads back as `reflex-model import`'s samples.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{spawn_daemon, test_dir, write_config_with, REFLEXD};
use reflex_journal::record::{
    encode_batch, DeadlineOutcome, DecisionSource, JournalRecord, ModelId,
};
use reflex_journal::store::{InFlight, Journal, StoreConfig};

const T0_US: u64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

fn record(seq: u64) -> JournalRecord {
    JournalRecord {
        node: "board-1".into(),
        device: format!("dev-{}", seq % 2),
        seq,
        arrival_unix_us: T0_US + seq * 1_000_000,
        payload: vec![seq as u8, 0xff],
        model_input: vec![0.25; 6],
        features: if seq == 2 { vec![] } else { vec![0.5; 13] },
        logits: vec![1.0, -1.5],
        class: 1,
        command: b"stop".to_vec(),
        model: ModelId {
            name: "edge".into(),
            version: "1.0.0".into(),
        },
        source: DecisionSource::Model,
        timings: Default::default(),
        outcome: DeadlineOutcome::Miss {
            cause: "model_too_slow".into(),
        },
    }
}

/// A journal of records 1..=5 whose first three went out in a batch the cloud acked,
/// refusing record 2: 4 and 5 remain, 2 is in the dead-letter range.
fn journal_after_a_refusal(dir: &Path) {
    let (j, _) = Journal::open(StoreConfig::new(dir)).unwrap();
    for s in 1..=5 {
        assert_eq!(j.append(&record(s).encode()).unwrap(), s);
    }
    j.sync().unwrap();
    let recs = j.scan(1, 3, 1 << 20).unwrap();
    let b = encode_batch("board-1", recs.iter().map(|(s, v)| (*s, v.as_slice())));
    let inflight = InFlight {
        id: b.id,
        first_seq: 1,
        last_seq: 3,
        count: 3,
        compressed: b.compressed,
        windows: vec![],
    };
    j.set_inflight(&inflight).unwrap();
    j.ack_with_refusals(&inflight, &[(2, "features_missing".into())], T0_US)
        .unwrap();
}

fn config_for(name: &str, mqtt: &str, journal: &Path) -> PathBuf {
    // Its own directory: `write_config_with` starts from an empty one.
    let path = write_config_with(
        mqtt,
        &format!("{name}-config"),
        20.0,
        "",
        &common::repo().join("models"),
    );
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!("\n[journal]\ndir = \"{}\"\n", journal.display()));
    std::fs::write(&path, text).unwrap();
    path
}

fn reflexd_journal(config: &Path, args: &[&str]) -> Output {
    Command::new(REFLEXD)
        .arg("journal")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("reflexd runs")
}

/// The JSON lines of `text`: (journal sequence, record, dead-letter part).
fn lines(text: &str) -> Vec<(u64, JournalRecord, serde_json::Value)> {
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a json line");
            let r: JournalRecord = serde_json::from_value(v["record"].clone()).expect("a record");
            (
                v["journal_seq"].as_u64().unwrap(),
                r,
                v["dead_letter"].clone(),
            )
        })
        .collect()
}

#[test]
fn tail_and_export_read_back_exactly_what_the_journal_holds() {
    let dir = test_dir("inspect-export");
    let jdir = dir.join("journal");
    journal_after_a_refusal(&jdir);
    let config = config_for("inspect-export", "port = 1", &jdir);

    let out = reflexd_journal(&config, &["tail", "-n", "10"]);
    assert!(out.status.success(), "{out:?}");
    let tail = lines(&String::from_utf8(out.stdout).unwrap());
    let seqs: Vec<u64> = tail.iter().map(|l| l.0).collect();
    assert_eq!(seqs, [4, 5]);
    assert_eq!(tail[0].1, record(4), "a line reads back into the record");
    let out = reflexd_journal(&config, &["tail", "-n", "1"]);
    assert_eq!(lines(&String::from_utf8(out.stdout).unwrap())[0].0, 5);

    let all = dir.join("all.jsonl");
    let out = reflexd_journal(
        &config,
        &["export", "--format", "jsonl", "-o", all.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    let exported = lines(&std::fs::read_to_string(&all).unwrap());
    assert_eq!(
        exported
            .iter()
            .map(|l| (l.0, l.1.clone()))
            .collect::<Vec<_>>(),
        [(4, record(4)), (5, record(5))]
    );

    let dead = dir.join("dead.jsonl");
    let out = reflexd_journal(
        &config,
        &[
            "export",
            "--format",
            "jsonl",
            "--dead-letter",
            "-o",
            dead.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let exported = lines(&std::fs::read_to_string(&dead).unwrap());
    assert_eq!(exported.len(), 1);
    assert_eq!((exported[0].0, &exported[0].1), (2, &record(2)));
    assert_eq!(exported[0].2["reason"], "features_missing");

    // Arrivals in [T0 + 5 s, …): record 5 only.
    let late = dir.join("late.jsonl");
    let out = reflexd_journal(
        &config,
        &[
            "export",
            "--from",
            "2026-01-01T00:00:05Z",
            "-o",
            late.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let exported = lines(&std::fs::read_to_string(&late).unwrap());
    assert_eq!(exported.iter().map(|l| l.0).collect::<Vec<_>>(), [5]);

    let out = reflexd_journal(&config, &["clear-dead-letter", "--through", "2"]);
    assert!(out.status.success(), "{out:?}");
    let (j, _) = Journal::open(StoreConfig::new(&jdir)).unwrap();
    assert_eq!(j.dead_letter_len().unwrap(), 0);
    assert_eq!(j.len(), 2, "the journal's records untouched");
}

/// The motor example's held-out windows (current then temperature, 64 each).
fn motor_rows() -> Vec<Vec<f32>> {
    let path = common::repo().join("models/examples/motor/samples.npy");
    let npy = reflex_models::npy::Npy::read(path).unwrap();
    npy.f32s()
        .unwrap()
        .chunks_exact(128)
        .map(<[f32]>::to_vec)
        .collect()
}

#[test]
fn records_with_a_feature_set_export_their_features_by_name_and_import_reads_the_export() {
    let dir = test_dir("inspect-feature-sets");
    let jdir = dir.join("journal");
    let manifest = reflex_models::Manifest::load(
        common::repo().join("models/examples/motor/motor.manifest.json"),
    )
    .unwrap();
    // As reflexd journals a motor route's decisions: the plan of its manifest.
    let plan = reflexd::pipeline::features::FeaturePlan::of(&manifest);
    let set = plan.feature_set().expect("the motor's own names").clone();
    let rows: Vec<Vec<f32>> = motor_rows().into_iter().take(3).collect();
    let motor: Vec<JournalRecord> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let mut features = Vec::new();
            assert!(plan.compute(row, 40.0, &mut features));
            JournalRecord {
                model_input: row.clone(),
                features: features.iter().map(|&f| f as f32).collect(),
                model: ModelId {
                    name: "motor".into(),
                    version: "1.0.0".into(),
                },
                ..record(10 + i as u64)
            }
        })
        .collect();
    {
        let (j, _) = Journal::open(StoreConfig::new(&jdir)).unwrap();
        // A demo record (13 features, 6 input values) between the motor's.
        j.append(&motor[0].encode_full(None, Some(&set))).unwrap();
        j.append(&record(1).encode()).unwrap();
        for r in &motor[1..] {
            j.append(&r.encode_full(None, Some(&set))).unwrap();
        }
        j.sync().unwrap();
    }
    let config = config_for("inspect-feature-sets", "port = 1", &jdir);
    let path = dir.join("motor.jsonl");
    let out = reflexd_journal(&config, &["export", "-o", path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&path).unwrap();
    let values: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(values.len(), 4);

    let names = set.set().names.clone();
    assert_eq!(names.len(), 8, "4 statistics × 2 channels: {names:?}");
    let motor_lines: Vec<&serde_json::Value> = [0, 2, 3].iter().map(|&i| &values[i]).collect();
    for (line, r) in motor_lines.iter().zip(&motor) {
        let named = line["features"].as_object().expect("features by name");
        let got: Vec<&str> = named.keys().map(String::as_str).collect();
        let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
        want.sort_unstable();
        let mut got_sorted = got.clone();
        got_sorted.sort_unstable();
        assert_eq!(got_sorted, want);
        for (name, value) in names.iter().zip(&r.features) {
            assert_eq!(named[name].as_f64(), Some(f64::from(*value)), "{name}");
        }
        assert_eq!(line["feature_set"]["names"], serde_json::json!(names));
        assert_eq!(line["feature_set"]["model"]["name"], "motor");
        let back: JournalRecord = serde_json::from_value(line["record"].clone()).unwrap();
        assert_eq!(&back, r, "the record reads back as journaled");
    }
    // The demo record: its 13 features under the demo names, no set.
    let demo = &values[1];
    assert!(demo.get("feature_set").is_none(), "{demo}");
    assert_eq!(
        demo["features"]["mean_x"].as_f64(),
        Some(0.5),
        "named as the demo features: {demo}"
    );

    // `reflex-model import --samples motor.jsonl`: the motor's windows, the demo record
    // (another input length) skipped and counted.
    let samples = reflex_models::samples::read(&path, &[128]).unwrap();
    assert_eq!(samples.rows, 3);
    assert_eq!(samples.values, rows.concat());
    assert_eq!(samples.skipped.by_length.get(&6), Some(&1));
}

#[test]
fn with_reflexd_running_the_journal_commands_name_the_lock_and_change_nothing() {
    let _serial = common::serial();
    let broker = reflex_tests::spawn_broker();
    let dir = test_dir("inspect-locked");
    let jdir = dir.join("journal");
    journal_after_a_refusal(&jdir);
    let config = config_for("inspect-locked", &format!("port = {}", broker.port), &jdir);
    let daemon = spawn_daemon(&config);
    // The journal is open (and locked) once its figures are on /metrics.
    reflex_tests::wait_until(
        "reflexd's journal open",
        std::time::Duration::from_secs(30),
        || common::scrape(&config).contains("reflexd_journal_appended_total"),
    );
    let out = reflexd_journal(&config, &["tail"]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked by a running reflexd"), "{err}");
    assert!(err.contains(jdir.to_str().unwrap()), "{err}");
    drop(daemon);
    let (j, _) = Journal::open(StoreConfig::new(&jdir)).unwrap();
    assert_eq!(j.dead_letter_len().unwrap(), 1);
    assert_eq!(j.len(), 2);
}

#[cfg(feature = "parquet-export")]
#[test]
fn a_parquet_export_reads_back_the_records_and_the_dead_letter_reasons() {
    let dir = test_dir("inspect-parquet");
    let jdir = dir.join("journal");
    journal_after_a_refusal(&jdir);
    let config = config_for("inspect-parquet", "port = 1", &jdir);
    let out_path = dir.join("records.parquet");
    let out = reflexd_journal(
        &config,
        &[
            "export",
            "--format",
            "parquet",
            "-o",
            out_path.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let rows = reflexd::inspect::parquet::read_back(&out_path).unwrap();
    let expected: Vec<_> = [4u64, 5]
        .iter()
        .map(|&s| {
            let r = record(s);
            (s, r.device, r.seq, r.arrival_unix_us, r.features, None)
        })
        .collect();
    assert_eq!(rows, expected);

    let dead_path = dir.join("dead.parquet");
    let out = reflexd_journal(
        &config,
        &[
            "export",
            "--format",
            "parquet",
            "--dead-letter",
            "-o",
            dead_path.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let rows = reflexd::inspect::parquet::read_back(&dead_path).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, 2);
    assert!(rows[0].4.is_empty(), "the record without features");
    assert_eq!(rows[0].5.as_deref(), Some("features_missing"));
}
