//! The systemd units of cross/ as far as they can run here. systemd is not PID 1 on the
//! test machines, so `systemd-run --on-active` (or starting the timer) cannot run: instead
//! the command line the timer starts is read from the unit files themselves (the timer's
//! `Unit=`, that service's `ExecStart=`), the packaged config path is replaced by a test
//! config, and it runs against a store holding events of the last hours. The run's report
//! and its entry in the index of runs must appear. `systemd-analyze verify` of the units
//! is in cross/ci.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{batch_of, record, write_cloud_config};
use reflex_cloud::Storage;
use reflex_records::decode_batch;

fn cross_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../cross"))
}

/// The values of `key=` in a unit file, in order (any section; comments skipped).
fn unit_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
        .collect()
}

fn read_unit(name: &str) -> String {
    let path = cross_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const PACKAGED_BIN: &str = "/usr/bin/reflex-cloud";
const PACKAGED_CONFIG: &str = "/etc/reflex-cloud/cloud.toml";

/// The command line of the service `timer` starts, with the binary and config replaced
/// for this test.
fn timer_command(timer: &str, config: &Path) -> (Vec<String>, Vec<i32>) {
    let timer = read_unit(timer);
    let service_name = unit_values(&timer, "Unit")
        .pop()
        .expect("the timer names its service");
    let service = read_unit(&service_name);
    assert_eq!(unit_values(&service, "Type"), ["oneshot"]);
    let exec = unit_values(&service, "ExecStart");
    assert_eq!(exec.len(), 1, "one ExecStart in {service_name}: {exec:?}");
    let mut args: Vec<String> = exec[0].split_whitespace().map(str::to_owned).collect();
    assert_eq!(args[0], PACKAGED_BIN, "{exec:?}");
    args[0] = env!("CARGO_BIN_EXE_reflex-cloud").to_owned();
    let at = args
        .iter()
        .position(|a| a == PACKAGED_CONFIG)
        .unwrap_or_else(|| panic!("{PACKAGED_CONFIG} not in {exec:?}"));
    args[at] = config.display().to_string();
    let success: Vec<i32> = std::iter::once(0)
        .chain(
            unit_values(&service, "SuccessExitStatus")
                .iter()
                .flat_map(|v| v.split_whitespace().map(|c| c.parse::<i32>().unwrap()))
                .collect::<Vec<_>>(),
        )
        .collect();
    (args, success)
}

#[tokio::test]
async fn the_timers_command_line_rescores_the_last_hour_and_adds_the_run_to_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let runs = dir.path().join("runs");
    let config = dir.path().join("cloud.toml");
    write_cloud_config(&config, &store, &runs, "workers = 2\n");
    let (args, success) = timer_command("reflex-cloud-rescore.timer", &config);

    // Events from the start of the previous hour until now: whichever hour is the last
    // complete one when the command runs (this one or, across a boundary, the next), it
    // holds events.
    let now_us = jiff::Timestamp::now().as_microsecond() as u64;
    let hour_us = 3_600_000_000;
    let from_us = now_us - now_us % hour_us - hour_us;
    let n = 900u64;
    let step = (now_us - from_us) / n;
    let records: Vec<_> = (0..n)
        .map(|i| record(&format!("dev-{:04}", i % 3), i, from_us + i * step))
        .collect();
    let storage = Storage::local(store.clone()).unwrap();
    for (k, chunk) in records.chunks(300).enumerate() {
        let b = batch_of(chunk, 1 + 300 * k as u64);
        let decoded = decode_batch(&b.compressed, Some(&b.id)).unwrap();
        storage.store_batch(Arc::new(decoded)).await.unwrap();
    }

    let out = Command::new(&args[0]).args(&args[1..]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().expect("exited");
    assert!(success.contains(&code), "{args:?} exited {code}: {stderr}");
    let run_dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(run_dir.join("report.html").is_file(), "{stderr}");
    assert!(run_dir.join("report.json").is_file());
    let run_id = run_dir.file_name().unwrap().to_str().unwrap().to_owned();

    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs.join("index.json")).unwrap()).unwrap();
    let entries = index["runs"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{index}");
    let e = &entries[0];
    assert_eq!(e["run_id"], run_id.as_str());
    let (from, to) = (e["from_us"].as_u64().unwrap(), e["to_us"].as_u64().unwrap());
    assert_eq!(to - from, hour_us, "one hour");
    assert_eq!(to % hour_us, 0, "aligned on the hour");
    assert!(
        to <= jiff::Timestamp::now().as_microsecond() as u64,
        "complete"
    );
    assert!(e["events"].as_u64().unwrap() > 0, "{e}");
    assert_eq!(e["drift_detected"].as_bool(), Some(code == 3));
    let html = std::fs::read_to_string(runs.join("index.html")).unwrap();
    assert!(
        html.contains(&format!("<a href=\"{run_id}/report.html\">{run_id}</a>")),
        "{html}"
    );

    // The same command again within the hour plans the same snapshot: the same run, still
    // one entry (unless the hour turned meanwhile: then a second run of the next hour).
    let again = Command::new(&args[0]).args(&args[1..]).output().unwrap();
    assert!(success.contains(&again.status.code().unwrap()));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs.join("index.json")).unwrap()).unwrap();
    let ids: Vec<&str> = index["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["run_id"].as_str().unwrap())
        .collect();
    let second = PathBuf::from(String::from_utf8_lossy(&again.stdout).trim());
    if second == run_dir {
        assert_eq!(ids, [run_id.as_str()]);
    } else {
        assert_eq!(ids.len(), 2, "{ids:?}");
    }
}

#[tokio::test]
async fn the_compaction_timers_command_line_merges_yesterdays_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let config = dir.path().join("cloud.toml");
    write_cloud_config(&config, &store, &dir.path().join("runs"), "");
    let (args, success) = timer_command("reflex-cloud-compact.timer", &config);
    assert_eq!(success, [0]);

    // Ten batches stamped in the middle of yesterday (UTC), over three devices. Should the
    // day turn while this runs, the day before is compacted by the same command too.
    let now_us = jiff::Timestamp::now().as_microsecond() as u64;
    let day_us = 86_400_000_000;
    let noon_yesterday = now_us - now_us % day_us - day_us / 2;
    let storage = Storage::local(store.clone()).unwrap();
    for k in 0..10u64 {
        let records: Vec<_> = (0..9)
            .map(|i| {
                record(
                    &format!("dev-{:04}", i % 3),
                    k * 9 + i,
                    noon_yesterday + k * 9 + i,
                )
            })
            .collect();
        let b = batch_of(&records, 1 + 9 * k);
        let decoded = decode_batch(&b.compressed, Some(&b.id)).unwrap();
        storage.store_batch(Arc::new(decoded)).await.unwrap();
    }

    let out = Command::new(&args[0]).args(&args[1..]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        success.contains(&out.status.code().unwrap()),
        "{args:?}: {stderr}"
    );
    let merges: Vec<&str> = stdout.lines().collect();
    assert_eq!(merges.len(), 3, "one merge per device: {stdout}{stderr}");
    assert!(
        merges
            .iter()
            .all(|l| l.contains(" 10 files ") && l.contains(" 30 rows")),
        "{stdout}"
    );
    // Within the grace the replaced files stay (a rescore may be reading them).
    assert!(
        stderr.contains("0 replaced files deleted (30 kept in grace)"),
        "{stderr}"
    );
}

#[test]
fn the_service_reloads_with_sighup_and_the_packaged_paths_match_the_timer() {
    let service = read_unit("reflex-cloud.service");
    assert_eq!(
        unit_values(&service, "ExecReload"),
        ["/bin/kill -HUP $MAINPID"]
    );
    assert_eq!(
        unit_values(&service, "ExecStart"),
        [format!("{PACKAGED_BIN} serve --config {PACKAGED_CONFIG}")]
    );
    assert_eq!(
        unit_values(&service, "ExecStartPre"),
        [format!(
            "{PACKAGED_BIN} validate --config {PACKAGED_CONFIG}"
        )]
    );
    assert_eq!(unit_values(&service, "RestartPreventExitStatus"), ["64"]);
}
