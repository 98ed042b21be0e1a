//! The whole pipeline end to end, every stage a real process: `reflex-sim` fleet → mosquitto →
//! `reflexd run` (journal + uploader) → `reflex-cloud serve` (Parquet) → `reflex-cloud
//! rescore` (report, exit 3 on drift).
//!
//! The in-process counterparts are in `cloud/tests/` (`rescore.rs` builds the board's
//! records in-process; `ingest.rs` drives the HTTP contract); these tests run the binaries
//! the way they are deployed, configured through their files, and check the figures they
//! expose: reflexd's `/metrics`, the cloud's files and the rescore's `report.json`.
//!
//! Timing: waits are bounded conditions ([`wait_until`], and `Daemon::wait_metrics`, which
//! polls reflexd's `/metrics` and shows its journal and upload figures when the bound
//! passes), never sleeps. The drift test
//! needs the time structure of a real run (a per-device baseline period, then a drift that
//! starts and ramps in the simulator's clock), so it waits for the wall clock to pass a whole
//! second before starting the fleet, which makes the rescore's range start exactly at the
//! fleet's start.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reflex_sim::device::SimDevice;
use reflex_sim::signal::{Condition, Distortion};
use reflex_tests::{
    bins, free_port, hash_token, spawn_broker, spawn_reflexd, wait_until, Broker, ChildGuard,
};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

/// The board's upload token (the cloud config keeps only its hash, made by
/// `reflex-cloud hash-token`).
const TOKEN: &str = "pipeline-board-1-token";
const NODE: &str = "board-1";
/// The probe device: outside the fleet's `dev-0000…`, so its sequence numbers never
/// collide with a fleet device's in reflexd's dedupe.
const PROBE_DEVICE_INDEX: u32 = 99;

/// These tests start several processes each on a 2-core machine: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn unix_now_s_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// A fresh directory for one test's files; removed when the test passes.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> TestDir {
        let dir =
            std::env::temp_dir().join(format!("reflex-pipeline-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the test dir");
        TestDir(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        // Kept after a failure, for a look at the journal, the Parquet and the report.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------------------------------
// reflex-cloud

/// `reflex-cloud`'s configuration and, while it runs, its `serve` process.
struct Cloud {
    config: PathBuf,
    port: u16,
    store: PathBuf,
    serve: Option<ChildGuard>,
}

impl Cloud {
    /// Writes the config: ingest on a free loopback port for node `board-1` (token hashed
    /// by the binary itself), local storage in `dir/store`, rescore outputs in `dir/runs`
    /// with `rescore` as the `[rescore]` settings other than model and output.
    fn configure(dir: &Path, rescore: &str) -> Cloud {
        Cloud::configure_with(dir, &repo().join("models/cloud.manifest.json"), rescore)
    }

    /// As [`Cloud::configure`], with `manifest` as the cloud model.
    fn configure_with(dir: &Path, manifest: &Path, rescore: &str) -> Cloud {
        let port = free_port();
        let store = dir.join("store");
        let text = format!(
            r#"[ingest]
listen = "127.0.0.1:{port}"
max_body_bytes = 8388608
grace_period_ms = 2000

[[ingest.nodes]]
node = "{NODE}"
token_sha256 = "{hash}"

[storage]
kind = "local"
path = "{store}"

[rescore]
model_manifest = "{manifest}"
out_dir = "{runs}"
{rescore}
"#,
            hash = hash_token(TOKEN),
            store = store.display(),
            manifest = manifest.display(),
            runs = dir.join("runs").display(),
        );
        let config = dir.join("cloud.toml");
        std::fs::write(&config, text).expect("writing cloud.toml");
        let out = Command::new(bins::reflex_cloud())
            .args(["validate", "--config"])
            .arg(&config)
            .output()
            .expect("running reflex-cloud validate");
        assert!(
            out.status.success(),
            "reflex-cloud validate refused the test's config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cloud {
            config,
            port,
            store,
            serve: None,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts `reflex-cloud serve` and waits until it accepts connections.
    fn start(&mut self) {
        assert!(self.serve.is_none(), "serve is already running");
        let child = Command::new(bins::reflex_cloud())
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("REFLEX_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning reflex-cloud serve");
        let mut guard = ChildGuard::new("reflex-cloud serve", child);
        guard.wait_listening(self.port, Duration::from_secs(30));
        self.serve = Some(guard);
    }

    /// SIGKILL, as a crash or an OOM kill would: no grace period, no cleanup.
    fn kill(&mut self) {
        let mut guard = self.serve.take().expect("serve is running");
        guard.child.kill().expect("SIGKILL reflex-cloud serve");
        guard.child.wait().expect("reaping reflex-cloud serve");
    }

    /// `reflex-cloud rescore --from --to`: (exit status, run directory, stderr).
    fn rescore(&self, from_s: u64, to_s: u64) -> (ExitStatus, PathBuf, String) {
        let out = Command::new(bins::reflex_cloud())
            .args(["rescore", "--config"])
            .arg(&self.config)
            .args(["--from", &from_s.to_string(), "--to", &to_s.to_string()])
            .env("REFLEX_LOG", "warn")
            .output()
            .expect("running reflex-cloud rescore");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let run_dir = stdout
            .lines()
            .last()
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("rescore printed no run directory; stderr:\n{stderr}"));
        (out.status, run_dir, stderr)
    }
}

/// What the ingest committed: every row of every event file named by a batch marker, and
/// the event files no marker names.
struct Stored {
    /// (device, seq, journal_seq) of every committed row.
    rows: Vec<(String, u64, u64)>,
    /// Journal sequence range of each committed batch, by batch id.
    batches: BTreeMap<String, (u64, u64, u64)>,
    /// Event files without a marker (a crash between files and marker leaves these).
    orphans: Vec<String>,
}

fn files_under(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(root, &p, out);
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.display().to_string());
        }
    }
}

fn read_store(store: &Path) -> Stored {
    let mut markers = Vec::new();
    files_under(store, &store.join("batches"), &mut markers);
    let mut committed_files = BTreeSet::new();
    let mut batches = BTreeMap::new();
    for m in markers.iter().filter(|m| m.ends_with(".json")) {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(store.join(m)).expect("reading a marker"))
                .expect("a marker is JSON");
        let id = v["batch_id"].as_str().expect("batch_id").to_owned();
        let range = (
            v["first_seq"].as_u64().expect("first_seq"),
            v["last_seq"].as_u64().expect("last_seq"),
            v["records"].as_u64().expect("records"),
        );
        for f in v["files"].as_array().expect("files") {
            committed_files.insert(f.as_str().expect("file path").to_owned());
        }
        batches.insert(id, range);
    }
    let mut event_files = Vec::new();
    files_under(store, &store.join("events"), &mut event_files);
    // object_store stages writes as hidden/temporary names before the rename: only
    // .parquet files are event files.
    event_files.retain(|f| f.ends_with(".parquet"));
    let orphans = event_files
        .iter()
        .filter(|f| !committed_files.contains(*f))
        .cloned()
        .collect();
    let mut rows = Vec::new();
    for f in &committed_files {
        let bytes = std::fs::read(store.join(f))
            .unwrap_or_else(|e| panic!("a marker names {f}, which cannot be read: {e}"));
        for batch in reflex_cloud::table::read_parquet(bytes.into()).expect("Parquet reads") {
            let c = reflex_cloud::table::EventColumns::of(&batch).expect("events table");
            for i in 0..c.len {
                rows.push((
                    c.device.value(i).to_owned(),
                    c.seq.value(i),
                    c.journal_seq.value(i),
                ));
            }
        }
    }
    Stored {
        rows,
        batches,
        orphans,
    }
}

/// Exactly-once figures of what was stored against what was journaled.
#[derive(Default)]
struct OnceCheck {
    rows: usize,
    /// Rows whose (device, seq) appeared before.
    duplicate_events: usize,
    /// Rows whose journal sequence appeared before.
    duplicate_journal_seqs: usize,
    /// Journal sequences in 1..=journaled with no row.
    missing_journal_seqs: usize,
    /// Rows per device.
    per_device: BTreeMap<String, BTreeSet<u64>>,
}

impl std::fmt::Debug for OnceCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per_device: BTreeMap<&str, usize> = self
            .per_device
            .iter()
            .map(|(d, seqs)| (d.as_str(), seqs.len()))
            .collect();
        f.debug_struct("OnceCheck")
            .field("rows", &self.rows)
            .field("duplicate_events", &self.duplicate_events)
            .field("duplicate_journal_seqs", &self.duplicate_journal_seqs)
            .field("missing_journal_seqs", &self.missing_journal_seqs)
            .field("rows_per_device", &per_device)
            .finish()
    }
}

fn once_check(stored: &Stored, journaled: u64) -> OnceCheck {
    let mut c = OnceCheck {
        rows: stored.rows.len(),
        ..OnceCheck::default()
    };
    let mut seqs = BTreeSet::new();
    for (device, seq, jseq) in &stored.rows {
        if !c.per_device.entry(device.clone()).or_default().insert(*seq) {
            c.duplicate_events += 1;
        }
        if !seqs.insert(*jseq) {
            c.duplicate_journal_seqs += 1;
        }
    }
    c.missing_journal_seqs = (1..=journaled).filter(|s| !seqs.contains(s)).count();
    c
}

/// Committed batches' journal ranges must tile 1..=last without overlap.
fn assert_batches_tile(stored: &Stored, journaled: u64) {
    let mut ranges: Vec<(u64, u64, u64)> = stored.batches.values().copied().collect();
    ranges.sort();
    let mut next = 1;
    for (first, last, records) in &ranges {
        assert_eq!(
            *first, next,
            "committed batches do not tile the journal: {ranges:?}"
        );
        assert_eq!(last - first + 1, *records, "{ranges:?}");
        next = last + 1;
    }
    assert_eq!(next, journaled + 1, "committed batches end at {}", next - 1);
}

// ---------------------------------------------------------------------------------------
// reflexd

/// reflexd's config, its metrics port, and the running daemon.
struct Daemon {
    metrics_port: u16,
    guard: ChildGuard,
}

impl Daemon {
    /// Writes a config (one route, the repository's edge model and fallback, journal in
    /// `dir/journal`, `upload` as the `[upload]` settings besides url and token) and starts
    /// `reflexd run`, waiting for its metrics endpoint.
    fn start(dir: &Path, broker: &Broker, cloud: &Cloud, upload: &str) -> Daemon {
        Daemon::start_with(dir, broker, cloud, upload, "")
    }

    /// As [`Daemon::start`], with `first` (routes and models, TOML) ahead of the vibration
    /// route: their subscriptions go to the broker first, so that an answered probe on the
    /// vibration route ([`wait_subscribed`]) means they are in place too.
    fn start_with(dir: &Path, broker: &Broker, cloud: &Cloud, upload: &str, first: &str) -> Daemon {
        let metrics_port = free_port();
        let token_file = dir.join("upload.token");
        reflex_tests::write_secret(&token_file, &format!("{TOKEN}\n"));
        let models = repo().join("models");
        let text = format!(
            r#"[node]
name = "{NODE}"

[mqtt]
port = {port}
client_id = "reflexd-pipeline-{pid}-{metrics_port}"

[metrics]
listen = "127.0.0.1:{metrics_port}"

{first}
[[routes]]
name = "vibration"
topic_filter = "sensors/+/vibration"
model = "edge"
# Generous on a loaded 2-core machine: these tests are about what is journaled and
# stored, not about deadlines (the fallback answers whatever the model cannot).
deadline_ms = 20.0
command_topic = "actuators/{{device}}/cmd"
on_budget_unmeetable = "warn"

[models.edge]
manifest = "{models}/edge.manifest.json"
fallback_manifest = "{models}/fallback.manifest.json"
calibration_runs = 500

# Windows of 1 s, so that the board's own monitoring windows close during the test and
# ride with the uploads (reflexd's default is 60 s).
[monitor]
window_s = 1

[journal]
dir = "{journal}"

[upload]
url = "{url}"
token_file = "{token}"
{upload}
"#,
            port = broker.port,
            pid = std::process::id(),
            models = models.display(),
            journal = dir.join("journal").display(),
            url = cloud.url(),
            token = token_file.display(),
        );
        let config = dir.join("reflex.toml");
        std::fs::write(&config, text).expect("writing reflex.toml");
        let out = Command::new(bins::reflexd())
            .args(["validate", "--config"])
            .arg(&config)
            .output()
            .expect("running reflexd validate");
        assert!(
            out.status.success(),
            "reflexd validate refused the test's config: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let guard = spawn_reflexd(&bins::reflexd(), &config, metrics_port, Some("warn"));
        Daemon {
            metrics_port,
            guard,
        }
    }

    /// The current `/metrics` exposition.
    fn scrape(&mut self) -> Metrics {
        if let Ok(Some(status)) = self.guard.child.try_wait() {
            panic!(
                "reflexd exited: {status}; its stderr ended with:\n{}",
                self.guard.stderr_tail()
            );
        }
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port))
            .expect("connecting to reflexd's metrics");
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .expect("sending the request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("reading /metrics");
        Metrics(text)
    }
}

struct Metrics(String);

impl Metrics {
    /// The value of the unlabelled series `name` (0 when absent).
    fn get(&self, name: &str) -> u64 {
        reflex_tests::prometheus::metric(&self.0, name) as u64
    }

    fn appended(&self) -> u64 {
        self.get("reflexd_journal_appended_total")
    }
    fn uploaded(&self) -> u64 {
        self.get("reflexd_upload_records_total")
    }
    fn backlog(&self) -> u64 {
        self.get("reflexd_upload_backlog_records")
    }
    fn batches(&self) -> u64 {
        self.get("reflexd_upload_batches_total")
    }
    fn failures(&self) -> u64 {
        self.get("reflexd_upload_failures_total")
    }
    fn duplicate_batches(&self) -> u64 {
        self.get("reflexd_upload_duplicate_batches_total")
    }
    fn rejected(&self) -> u64 {
        self.get("reflexd_upload_rejected_total")
    }

    /// The journal and upload series, for failure messages.
    fn journal_lines(&self) -> String {
        let lines: Vec<&str> = self
            .0
            .lines()
            .filter(|l| {
                l.starts_with("reflexd_journal_")
                    || l.starts_with("reflexd_upload_")
                    || l.starts_with("reflexd_events_received_total")
                    || l.starts_with("reflexd_commands_published_total")
            })
            .collect();
        lines.join("\n")
    }
}

impl Daemon {
    /// Polls `/metrics` until `cond` holds, up to `limit`; panics with the journal and
    /// upload figures and reflexd's stderr otherwise. Returns the metrics that satisfied it.
    fn wait_metrics(
        &mut self,
        what: &str,
        limit: Duration,
        mut cond: impl FnMut(&Metrics) -> bool,
    ) -> Metrics {
        let mut last = None;
        let mut met = false;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let m = self.scrape();
            met = cond(&m);
            last = Some(m);
            if met {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let m = last.expect("scraped at least once");
        assert!(
            met,
            "timed out after {limit:?} waiting for {what}; reflexd's figures:\n{}\n\
             reflexd's stderr ended with:\n{}",
            m.journal_lines(),
            self.guard.stderr_tail()
        );
        m
    }
}

/// Waits until reflexd is subscribed: publishes events of a probe device (one every
/// 200 ms at most) until one is answered. Events before the subscription are dropped by
/// the broker, the rest are answered and journaled like any other; returns when the first
/// answer is in.
fn wait_subscribed(broker: &Broker) {
    let mut opts = MqttOptions::new(
        format!("pipeline-probe-{}", free_port()),
        "127.0.0.1",
        broker.port,
    );
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(opts, 100);
    let mut probe = SimDevice::new(PROBE_DEVICE_INDEX, Condition::Healthy, 1);
    client
        .subscribe(reflex_sim::command_topic(probe.id()), QoS::AtLeastOnce)
        .expect("subscribing to the probe's commands");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            let msg = match ev {
                Ok(Event::Incoming(Packet::SubAck(_))) => "suback",
                Ok(Event::Incoming(Packet::Publish(_))) => "command",
                Ok(_) => continue,
                Err(_) => break,
            };
            if tx.send(msg).is_err() {
                break;
            }
        }
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)),
        Ok("suback"),
        "the probe subscribed"
    );
    let topic = reflex_sim::event_topic(probe.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "reflexd answered no probe event within 60 s"
        );
        let now_us = (unix_now_s_f64() * 1e6) as u64;
        let (_, bytes) = probe.next_encoded(now_us, Distortion::NONE);
        client
            .publish(topic.clone(), QoS::AtLeastOnce, false, bytes.to_vec())
            .expect("publishing a probe event");
        if rx.recv_timeout(Duration::from_millis(200)) == Ok("command") {
            break;
        }
    }
    // Dropping the client ends the poller's connection.
    let _ = client.disconnect();
}

// ---------------------------------------------------------------------------------------
// reflex-sim

/// `reflex-sim <args>` against `broker`, stdout piped.
fn spawn_fleet(broker: &Broker, args: &[String]) -> ChildGuard {
    let child = Command::new(bins::reflex_sim())
        .args(args)
        .args(["--broker", &broker.addr(), "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning reflex-sim");
    ChildGuard::new("reflex-sim", child)
}

/// Waits for the fleet to end successfully; returns its stdout.
fn fleet_output(mut fleet: ChildGuard, limit: Duration) -> String {
    let lines = fleet.stdout_lines();
    let status = fleet.wait_exit(limit);
    let out: Vec<String> = lines.iter().collect();
    assert!(
        status.success(),
        "reflex-sim failed: {status}\nstdout:\n{}\nstderr:\n{}",
        out.join("\n"),
        fleet.stderr_tail()
    );
    out.join("\n")
}

/// `published N events` from the fleet's summary.
fn published(out: &str) -> u64 {
    out.lines()
        .find_map(|l| {
            l.strip_prefix("published ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no `published N events` line in:\n{out}"))
}

/// A figure of `reflex-sim load`'s report (`label    value`).
fn report_figure(out: &str, label: &str) -> u64 {
    out.lines()
        .find(|l| l.starts_with(label))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or_else(|| panic!("no `{label}` in:\n{out}"))
}

fn device(i: u32) -> String {
    format!("dev-{i:04}")
}

// ---------------------------------------------------------------------------------------
// The tests

/// Fleet shape of the drift test.
const DEVICES: u32 = 8;
const DRIFT_DEVICES: u32 = 2;
const RATE_PER_DEVICE: f64 = 50.0;
const FLEET_S: f64 = 15.0;
/// Each device's baseline: the first this-many seconds of the range (= of the fleet).
const BASELINE_S: u64 = 6;

/// Simulator seed; `REFLEX_PIPELINE_SEED` overrides it (for a sweep over seeds).
fn seed() -> u64 {
    std::env::var("REFLEX_PIPELINE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(11)
}

/// 8 devices at 50 events/s for 15 s; the first 2 follow the firmware-sim drift scenario
/// (gain, offset and noise ramping to the default target over 2 s, starting 0.5 s after
/// the 6 s baseline), the other 6 are clean. Every event is answered once (the fleet's own
/// command tracking), journaled, uploaded and stored once; the rescore over the fleet's
/// time range counts exactly the events reflexd answered, exits 3, and flags the two
/// drifted devices and no clean one.
///
/// False alarms: one seed runs here (the chain takes ~18 s of a test's ~60 s budget on a
/// 2-core machine); `clean_devices_are_not_flagged_over_several_seeds_and_drifted_ones_are`
/// in cloud/tests/rescore.rs sweeps seeds in-process. Through the real chain, with
/// `REFLEX_PIPELINE_SEED=<n>` (measured 2026-11-28, seeds 1-6 and 11): 1 false alarm of
/// 42 clean devices (2.4%; seed 5 flags dev-0005 with 7 of 13 features, just over the
/// 50% rule: its std and peak features, which share the window's fault amplitude, shifted
/// a little; the mechanism is worked out at the rescore.rs sweep), and all
/// 14 drifted devices flagged (11-12 of 13 features); clean devices otherwise show 0-1
/// drifted features. The default seed, 11, is not a borderline one.
#[test]
fn a_fleet_with_drifting_devices_is_flagged_end_to_end_and_clean_devices_are_not() {
    let _serial = serial();
    let started = Instant::now();
    let seed = seed();
    let dir = TestDir::new("drift");
    let broker = spawn_broker();
    let mut cloud = Cloud::configure(
        &dir.0,
        &format!(
            "batch_size = 32\nworkers = 2\nwindow_s = 3\ndevice_baseline_s = {BASELINE_S}\nmin_events = 200\n"
        ),
    );
    cloud.start();
    let mut daemon = Daemon::start(
        &dir.0,
        &broker,
        &cloud,
        "batch_records = 500\nbatch_age_s = 1\n",
    );
    wait_subscribed(&broker);

    // The range starts on a whole second (rescore's --from resolution) after the probe's
    // events, and the fleet starts just after it: its clock and the range's agree to a
    // few ms, so the baseline period holds no drift.
    let from_s = unix_now_s_f64().floor() as u64 + 2;
    wait_until(
        "the wall clock to reach the range start",
        Duration::from_secs(3),
        || unix_now_s_f64() >= from_s as f64,
    );
    let fleet = spawn_fleet(
        &broker,
        &[
            "load".into(),
            format!("--devices={DEVICES}"),
            format!("--rate={RATE_PER_DEVICE}"),
            format!("--duration-s={FLEET_S}"),
            "--scenario=drift".into(),
            format!("--drift-devices={DRIFT_DEVICES}"),
            format!("--drift-start-s={}", BASELINE_S as f64 + 0.5),
            "--drift-ramp-s=2".into(),
            format!("--seed={seed}"),
            "--deadline-ms=20".into(),
            "--drain-s=20".into(),
        ],
    );
    let out = fleet_output(fleet, Duration::from_secs(60));
    let sent = published(&out);
    let answered = report_figure(&out, "commands matched");
    assert_eq!(report_figure(&out, "commands missing"), 0, "{out}");
    assert_eq!(report_figure(&out, "unexpected commands"), 0, "{out}");
    assert_eq!(answered, sent, "{out}");
    let expected_events = (DEVICES as f64 * RATE_PER_DEVICE * FLEET_S) as u64;
    assert!(
        sent + sent / 10 >= expected_events,
        "the fleet published {sent} of ~{expected_events} events"
    );
    let fleet_done = started.elapsed();

    // Everything journaled is acknowledged by the ingest (stored durably before the ack).
    let m = daemon.wait_metrics(
        "reflexd to upload its whole journal",
        Duration::from_secs(30),
        |m| m.appended() > sent && m.uploaded() == m.appended() && m.backlog() == 0,
    );
    let journaled = m.appended();
    assert_eq!(m.rejected(), 0, "{}", m.journal_lines());
    let stored = read_store(&cloud.store);
    let once = once_check(&stored, journaled);
    assert_eq!(once.rows as u64, journaled, "{once:?}");
    assert_eq!(once.duplicate_events, 0, "{once:?}");
    assert_eq!(once.duplicate_journal_seqs, 0, "{once:?}");
    assert_eq!(once.missing_journal_seqs, 0, "{once:?}");
    assert_batches_tile(&stored, journaled);
    assert!(stored.orphans.is_empty(), "{:?}", stored.orphans);
    let fleet_rows: usize = (0..DEVICES)
        .map(|i| once.per_device.get(&device(i)).map_or(0, BTreeSet::len))
        .sum();
    assert_eq!(
        fleet_rows as u64, sent,
        "every answered fleet event stored once"
    );
    let upload_done = started.elapsed();

    // Rescore the fleet's range: exit 3 (drift), the drifted devices flagged, no other.
    let to_s = unix_now_s_f64().ceil() as u64 + 1;
    let (status, run_dir, stderr) = cloud.rescore(from_s, to_s);
    let rescore_s = started.elapsed() - upload_done;
    assert_eq!(status.code(), Some(3), "rescore: {status}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("report.json")).expect("report.json"))
            .expect("report.json is JSON");
    assert!(run_dir.join("report.html").is_file());
    let figures = &report["figures"];
    assert_eq!(
        figures["fleet"]["events"].as_u64(),
        Some(sent),
        "the rescore counts each answered event once"
    );
    let flagged: BTreeSet<String> = report["verdict"]["flagged_devices"]
        .as_array()
        .expect("flagged_devices")
        .iter()
        .map(|d| {
            assert_eq!(d["node"], NODE, "{d}");
            d["device"].as_str().expect("device id").to_owned()
        })
        .collect();
    let drifted: BTreeSet<String> = (0..DRIFT_DEVICES).map(device).collect();
    let mut judged = BTreeMap::new();
    for d in figures["devices"].as_array().expect("devices") {
        let id = d["device"].as_str().expect("device").to_owned();
        let drift = &d["drift"];
        judged.insert(
            id.clone(),
            (
                d["counts"]["events"].as_u64().unwrap_or(0),
                drift["baseline_events"].as_u64(),
                drift["current_events"].as_u64(),
                drift["dataset"]["drifted_features"].as_u64(),
            ),
        );
    }
    for i in 0..DEVICES {
        let (_, baseline, current, _) = judged[&device(i)];
        assert!(
            baseline.is_some() && current.is_some(),
            "{} was not judged: {judged:?}",
            device(i)
        );
    }
    let clean = (DEVICES - DRIFT_DEVICES) as usize;
    let false_alarms = flagged.difference(&drifted).count();
    println!(
        "seed {seed}: {sent} events answered, {journaled} journaled (incl. probe), {} batches, \
         {} stored rows; flagged {flagged:?}; false alarms {false_alarms} of {clean} clean \
         devices; per device (events, baseline, later, drifted features of 13): {judged:?}",
        m.batches(),
        once.rows
    );
    println!(
        "timings: fleet done at {:.1} s, uploaded at {:.1} s, rescore {:.1} s, total {:.1} s; \
         rescore said: {}",
        fleet_done.as_secs_f64(),
        upload_done.as_secs_f64(),
        rescore_s.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        stderr.trim()
    );
    assert_eq!(flagged, drifted, "{:#?}", report["verdict"]);
    assert_eq!(report["verdict"]["drift_detected"], true);

    // The board's own monitoring windows rode with the uploads: the rescore shows them
    // next to its batch view. Windows close every second; the last one or two close after
    // the last batch went and wait for the next upload, so they hold most, not all, events.
    let board = &report["board"];
    let windows = board["windows_read"].as_u64().unwrap_or(0);
    let board_events = board["routes"][0]["events"].as_u64().unwrap_or(0);
    println!(
        "board view: {windows} windows, {board_events} of {sent} events, nodes {}",
        board["nodes"]
    );
    assert!(
        windows >= (FLEET_S as u64) / 2,
        "{windows} board windows stored for a {FLEET_S} s run: {board:#}"
    );
    assert_eq!(board["nodes"], serde_json::json!([NODE]), "{board:#}");
    assert_eq!(board["routes"][0]["route"], "vibration", "{board:#}");
    assert!(
        board_events >= sent / 2 && board_events <= sent,
        "board windows hold {board_events} events of {sent}: {board:#}"
    );
}

/// How many times the ingest is killed and restarted while reflexd uploads, at least.
const KILLS: usize = 3;
/// More kills, up to this many, until one has landed while a batch was being written.
const MAX_KILLS: usize = 8;
/// How long a kill waits for a batch to be in the middle of its write before it fires
/// anyway.
const AIM_LIMIT: Duration = Duration::from_secs(3);

/// Batches the ingest is in the middle of writing: ids whose event files are on disk
/// without their marker. The ingest writes a batch's event files, then its marker, then
/// answers, all inside the request, so such a batch belongs to a request that has not
/// been answered yet (or, after a kill, never will be).
fn unmarked_batches(store: &Path) -> BTreeSet<String> {
    let mut events = Vec::new();
    files_under(store, &store.join("events"), &mut events);
    let mut markers = Vec::new();
    files_under(store, &store.join("batches"), &mut markers);
    let marked: BTreeSet<&str> = markers
        .iter()
        .filter_map(|m| m.rsplit('/').next()?.strip_suffix(".json"))
        .collect();
    events
        .iter()
        .filter_map(|f| f.rsplit('/').next()?.strip_suffix(".parquet"))
        .filter(|id| !marked.contains(id))
        .map(str::to_owned)
        .collect()
}

/// reflexd uploads in batches of 20 while a fleet of 4 devices publishes 1200 events/s
/// for 5 s; each batch is several fsynced Parquet files and a marker, so on this 2-core
/// machine a backlog of thousands of records builds up behind the uploads (measured
/// 2026-11-28: 1261, 2595 and 3503 records at the three kills; 300 batches in ~20 s).
/// Each kill waits until three more batches have been acknowledged with a backlog behind
/// them, then aims: it polls the store (up to [`AIM_LIMIT`]) until a batch's event files
/// are there without its marker, i.e. the ingest is inside a request, writing, and
/// SIGKILLs `reflex-cloud serve` at once. What the kill left on disk shows whether it
/// landed mid-request: [`unmarked_batches`] after the kill are batches whose request was
/// cut (the marker can no longer come). There are [`KILLS`] kills, and more, up to
/// [`MAX_KILLS`], until one of them has cut a request; the test fails if none did
/// (measured 2026-11-29: 3 of 3 kills cut one; aimed between writes instead, 0 of 8).
/// After each kill reflexd's next attempt fails and serve is started again on the same
/// port over the same storage. reflexd keeps answering every event meanwhile (the fleet
/// tracks its commands), re-sends the in-flight batch under its id and uploads the rest:
/// every batch a kill cut is committed later under the same id (its files then named by
/// its marker), every journaled record ends up in exactly one committed Parquet row, none
/// missing, none twice (by journal sequence and by (device, seq)), the committed batches
/// tile the journal, and no uncommitted file is left behind.
#[test]
fn killing_the_ingest_mid_upload_loses_nothing_and_stores_everything_once() {
    let _serial = serial();
    let started = Instant::now();
    let dir = TestDir::new("kill-ingest");
    let broker = spawn_broker();
    let mut cloud = Cloud::configure(&dir.0, "");
    cloud.start();
    let mut daemon = Daemon::start(
        &dir.0,
        &broker,
        &cloud,
        "batch_records = 20\nbatch_age_s = 1\n",
    );
    wait_subscribed(&broker);

    let fleet = spawn_fleet(
        &broker,
        &[
            "load".into(),
            "--devices=4".into(),
            "--rate=300".into(),
            "--duration-s=5".into(),
            "--seed=5".into(),
            "--deadline-ms=20".into(),
            "--drain-s=20".into(),
        ],
    );
    let mut kills = Vec::new();
    // Batch ids whose request a kill cut mid-write.
    let mut cut: BTreeSet<String> = BTreeSet::new();
    let mut acked_before = 0;
    while kills.len() < KILLS || (cut.is_empty() && kills.len() < MAX_KILLS) {
        let m = daemon.wait_metrics(
            "acknowledged batches with a backlog behind them",
            Duration::from_secs(30),
            |m| m.batches() >= acked_before + 3 && m.backlog() > 0,
        );
        // Aim: poll the store until a batch is being written, then kill at once.
        let aim = Instant::now();
        while unmarked_batches(&cloud.store).is_empty() && aim.elapsed() < AIM_LIMIT {
            std::thread::yield_now();
        }
        cloud.kill();
        let at = started.elapsed();
        let cut_now = unmarked_batches(&cloud.store);
        let on_disk = read_store(&cloud.store);
        let failures_before = daemon.scrape().failures();
        // The daemon notices: its attempt against the dead port fails, to be retried.
        daemon.wait_metrics(
            "a failed upload attempt while the ingest is down",
            Duration::from_secs(30),
            |m| m.failures() > failures_before,
        );
        cloud.start();
        kills.push(format!(
            "at {:.1} s: {} batches acked, backlog {}, {} committed batches, {} request(s) \
             cut mid-write ({} uncommitted files), up again after {:.2} s",
            at.as_secs_f64(),
            m.batches(),
            m.backlog(),
            on_disk.batches.len(),
            cut_now.len(),
            on_disk.orphans.len(),
            (started.elapsed() - at).as_secs_f64()
        ));
        cut.extend(cut_now);
        acked_before = m.batches();
    }

    let out = fleet_output(fleet, Duration::from_secs(60));
    let sent = published(&out);
    assert_eq!(report_figure(&out, "commands missing"), 0, "{out}");
    assert_eq!(report_figure(&out, "unexpected commands"), 0, "{out}");
    assert_eq!(report_figure(&out, "commands matched"), sent, "{out}");
    let m = daemon.wait_metrics(
        "reflexd to upload its whole journal after the restarts",
        Duration::from_secs(60),
        |m| m.appended() > sent && m.uploaded() == m.appended() && m.backlog() == 0,
    );
    let journaled = m.appended();
    let stored = read_store(&cloud.store);
    let once = once_check(&stored, journaled);
    println!(
        "{sent} events published and answered, {journaled} journaled (incl. probe); kills:\n  \
         {}\n{} request(s) cut mid-write by a kill; {} upload failures, {} batches acked \
         ({} answered duplicate, {} rejected); stored rows {}, duplicate events {}, \
         duplicate journal seqs {}, missing {}; total {:.1} s",
        kills.join("\n  "),
        cut.len(),
        m.failures(),
        m.batches(),
        m.duplicate_batches(),
        m.rejected(),
        once.rows,
        once.duplicate_events,
        once.duplicate_journal_seqs,
        once.missing_journal_seqs,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(m.rejected(), 0, "{}", m.journal_lines());
    assert_eq!(once.duplicate_events, 0, "{once:?}");
    assert_eq!(once.duplicate_journal_seqs, 0, "{once:?}");
    assert_eq!(once.missing_journal_seqs, 0, "{once:?}");
    assert_eq!(once.rows as u64, journaled, "{once:?}");
    assert_batches_tile(&stored, journaled);
    assert!(
        stored.orphans.is_empty(),
        "uncommitted files left: {:?}",
        stored.orphans
    );
    // A kill landed inside a request, and the batch it cut was re-sent under its id and
    // committed (once: the batches tile the journal).
    assert!(
        !cut.is_empty(),
        "none of {} kills landed while a batch was being written:\n  {}",
        kills.len(),
        kills.join("\n  ")
    );
    for id in &cut {
        assert!(
            stored.batches.contains_key(id),
            "batch {id}, cut mid-write by a kill, was never committed under its id"
        );
    }
    // Every published fleet event was journaled, so stored, once.
    let fleet_rows: usize = (0..4)
        .map(|i| once.per_device.get(&device(i)).map_or(0, BTreeSet::len))
        .sum();
    assert_eq!(fleet_rows as u64, sent, "{:?}", once.per_device.keys());
}

// ---------------------------------------------------------------------------------------
// A model made by another tool, across the processes

/// The motor example (scikit-learn, imported with `reflex-model import`): its directory.
fn motor_dir() -> PathBuf {
    repo().join("models/examples/motor")
}

/// Channels × samples of the motor model's window.
const MOTOR_SAMPLES: usize = 64;
/// Devices the motor rows are spread over.
const MOTOR_DEVICES: usize = 10;

#[test]
fn a_scikit_learn_model_is_served_journaled_uploaded_and_rescored_by_feature_name() {
    let _serial = serial();
    let dir = TestDir::new("motor");
    let broker = spawn_broker();
    let manifest = motor_dir().join("motor.manifest.json");
    let mut cloud = Cloud::configure_with(
        &dir.0,
        &manifest,
        "batch_size = 32\nworkers = 1\nmin_events = 100\n",
    );
    cloud.start();
    let motor = format!(
        r#"[[routes]]
name = "motor"
topic_filter = "motors/+/window"
model = "motor"
deadline_ms = 20.0
command_topic = "actuators/{{device}}/cmd"
on_budget_unmeetable = "warn"
[routes.input]
kind = "json"
seq = "/n"
channels = ["/current", "/temperature"]
resolution = 0.005
[routes.fallback]
kind = "constant"
action = "stop"

[models.motor]
manifest = "{}"
calibration_runs = 200
"#,
        manifest.display()
    );
    let mut daemon = Daemon::start_with(
        &dir.0,
        &broker,
        &cloud,
        "batch_records = 100\nbatch_age_s = 1\n",
        &motor,
    );
    wait_subscribed(&broker);

    // The range starts on a whole second after the probe's events.
    let from_s = unix_now_s_f64().floor() as u64 + 2;
    wait_until(
        "the wall clock to reach the range start",
        Duration::from_secs(3),
        || unix_now_s_f64() >= from_s as f64,
    );

    // The 400 sample windows, as a motor sensor publishes them: its own JSON.
    let rows: Vec<f32> = reflex_models::npy::Npy::read(motor_dir().join("samples.npy"))
        .expect("samples.npy")
        .f32s()
        .expect("float samples");
    let rows: Vec<&[f32]> = rows.chunks_exact(2 * MOTOR_SAMPLES).collect();
    assert_eq!(rows.len(), 400);
    let mut opts = MqttOptions::new(
        format!("pipeline-motor-{}", free_port()),
        "127.0.0.1",
        broker.port,
    );
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(opts, 1000);
    client
        .subscribe("actuators/+/cmd", QoS::AtLeastOnce)
        .expect("subscribing to the commands");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            let msg = match ev {
                Ok(Event::Incoming(Packet::SubAck(_))) => None,
                Ok(Event::Incoming(Packet::Publish(p))) => Some(p.topic),
                Ok(_) => continue,
                Err(_) => break,
            };
            if tx.send(msg).is_err() {
                break;
            }
        }
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)),
        Ok(None),
        "subscribed to the commands"
    );
    for (i, row) in rows.iter().enumerate() {
        let device = format!("motor-{:02}", i % MOTOR_DEVICES);
        let payload = serde_json::json!({
            "n": i / MOTOR_DEVICES + 1,
            "current": &row[..MOTOR_SAMPLES],
            "temperature": &row[MOTOR_SAMPLES..],
        });
        client
            .publish(
                format!("motors/{device}/window"),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&payload).expect("json"),
            )
            .expect("publishing a motor window");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answered = 0;
    while answered < rows.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Some(topic)) if topic.contains("/motor-") => answered += 1,
            Ok(_) => {}
            Err(_) => panic!("{answered} of {} motor windows answered", rows.len()),
        }
    }
    let _ = client.disconnect();

    // Journaled with the model's named features, and uploaded whole.
    let m = daemon.wait_metrics(
        "reflexd to upload its whole journal",
        Duration::from_secs(30),
        |m| m.appended() > rows.len() as u64 && m.uploaded() == m.appended() && m.backlog() == 0,
    );
    assert_eq!(m.rejected(), 0, "{}", m.journal_lines());

    // Rescored with the same model as the cloud model: the same inputs, the same answers,
    // drift judged on the manifest's own feature names.
    let to_s = unix_now_s_f64().ceil() as u64 + 1;
    let (status, run_dir, stderr) = cloud.rescore(from_s, to_s);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("report.json")).expect("report.json"))
            .expect("report.json is JSON");
    let names: Vec<String> = reflex_models::Manifest::load(&manifest)
        .expect("the motor manifest")
        .feature_names();
    assert_eq!(names.len(), 8, "{names:?}");
    assert_eq!(report["features"], serde_json::json!(names), "{report:#}");
    let figures = &report["figures"];
    assert_eq!(
        figures["fleet"]["events"].as_u64(),
        Some(400),
        "{figures:#}"
    );
    assert_eq!(figures["unscorable"].as_u64(), Some(0), "{figures:#}");
    assert_eq!(figures["fleet"]["agree"].as_u64(), Some(400), "{figures:#}");
    let judged: Vec<&str> = figures["fleet_drift"]["features"]
        .as_array()
        .unwrap_or_else(|| panic!("fleet drift judged: {figures:#}"))
        .iter()
        .map(|f| f["name"].as_str().expect("feature name"))
        .collect();
    assert_eq!(judged, names, "every declared feature judged by name");
    // The windows are the reference's own samples: nothing drifts.
    assert_eq!(
        figures["fleet_drift"]["dataset"]["drifted"], false,
        "{figures:#}"
    );
    assert!(status.success(), "rescore: {status}\n{stderr}");
}
