//! The model cache end to end: reflexd against a real mosquitto, the repository's models
//! run by tract, the cache in a real directory. A first start checks, calibrates and
//! writes the cache; the next start serves on it and verifies in the background; an entry
//! that is corrupt or was measured for something else is not used; a model whose golden
//! vectors no longer match after the cache was written is replaced by its fallback.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use reflex_tests::{spawn_broker, wait_until, Broker, ChildGuard};
use reflex_wire::DecisionSource;

/// A reflexd whose log lines are all kept.
struct Daemon {
    _guard: ChildGuard,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(config: &PathBuf) -> Daemon {
        let mut child = Command::new(REFLEXD)
            .args(["run", "--config"])
            .arg(config)
            .env("REFLEX_LOG", "info")
            .env_remove("STATE_DIRECTORY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning reflexd");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let err = child.stderr.take().expect("stderr piped");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut guard = ChildGuard::new("reflexd", child);
        guard.wait_listening(metrics_port(config), Duration::from_secs(60));
        Daemon {
            _guard: guard,
            lines,
        }
    }

    /// The first log line containing `text`, waiting up to `limit` for it.
    fn wait_for(&self, text: &str, limit: Duration) -> String {
        let mut found = None;
        let what = format!("a log line with {text:?}");
        wait_until(&what, limit, || {
            found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(text))
                .cloned();
            found.is_some()
        });
        found.unwrap()
    }

    fn logged(&self, text: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// Waits until reflexd is subscribed (its SUBACK arrived).
    fn wait_subscribed(&self) {
        self.wait_for("subscribed", Duration::from_secs(60));
    }
}

/// A config for `name` with the models in `models` and the cache in the test's directory;
/// returns the config and the cache directory.
fn cached_config(broker: &Broker, name: &str, models: &Path) -> (PathBuf, PathBuf) {
    let config = write_config_with(&format!("port = {}", broker.port), name, 20.0, "", models);
    let cache = config.parent().unwrap().join("cache");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("[model_cache]\ndir = \"{}\"\n", cache.display()));
    std::fs::write(&config, text).unwrap();
    (config, cache)
}

fn entry(cache: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(cache.join("edge.json")).expect("cache entry written");
    serde_json::from_str(&text).expect("cache entry is json")
}

/// Starts reflexd once without a cache entry and stops it once the entry is written.
fn first_start(config: &PathBuf, cache: &Path) {
    let d = Daemon::start(config);
    d.wait_for("no cached checks for the model", Duration::from_secs(5));
    d.wait_subscribed();
    assert!(cache.join("edge.json").is_file());
}

/// The value of `series` in the metrics exposition, as written.
fn raw_metric(config: &PathBuf, series: &str) -> String {
    let text = scrape(config);
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
        .unwrap_or_else(|| panic!("{series} not in:\n{text}"))
}

/// ns as the exposition writes seconds.
fn seconds(ns: u64) -> String {
    let (s, frac) = (ns / 1_000_000_000, ns % 1_000_000_000);
    if frac == 0 {
        return s.to_string();
    }
    format!("{s}.{}", format!("{frac:09}").trim_end_matches('0'))
}

#[test]
fn a_cache_written_on_the_first_start_is_used_on_the_second_with_its_profile() {
    let _serial = serial();
    let broker = spawn_broker();
    let (config, cache) = cached_config(&broker, "cache-reuse", &repo().join("models"));
    first_start(&config, &cache);
    let written = entry(&cache);
    let p999 = written["profiles"][0]["p999"].as_u64().unwrap();
    assert_eq!(written["key"]["reflexd_version"], env!("CARGO_PKG_VERSION"));

    let d = Daemon::start(&config);
    d.wait_for("model profile taken from the cache", Duration::from_secs(5));
    d.wait_subscribed();
    assert!(!d.logged("no cached checks for the model"));
    assert_eq!(
        raw_metric(
            &config,
            "reflexd_model_latency_p999_seconds{route=\"vibration\"}"
        ),
        seconds(p999),
        "the served p99.9 is the cached one"
    );
    // The checks still run, after serving started.
    d.wait_for(
        "model verified in the background; cache refreshed",
        Duration::from_secs(60),
    );
    assert_eq!(
        metric(
            &scrape(&config),
            "reflexd_model_verification_failures_total{model=\"edge\"}"
        ),
        0
    );
}

#[test]
fn the_cache_file_and_directory_are_not_readable_by_others() {
    let _serial = serial();
    let broker = spawn_broker();
    let (config, cache) = cached_config(&broker, "cache-mode", &repo().join("models"));
    first_start(&config, &cache);
    let file = std::fs::metadata(cache.join("edge.json")).unwrap();
    assert_eq!(file.permissions().mode() & 0o777, 0o640);
    let dir = std::fs::metadata(&cache).unwrap();
    assert_eq!(
        dir.permissions().mode() & 0o007,
        0,
        "{:o}",
        dir.permissions().mode()
    );
    let leftovers: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "edge.json")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_corrupt_cache_file_is_ignored_with_a_warning_and_rewritten() {
    let _serial = serial();
    let broker = spawn_broker();
    let (config, cache) = cached_config(&broker, "cache-corrupt", &repo().join("models"));
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("edge.json"), "{\"format\": 1, \"key\": ").unwrap();
    let d = Daemon::start(&config);
    let warning = d.wait_for("the model cache entry is not used", Duration::from_secs(5));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("is not a model cache entry"), "{warning}");
    d.wait_subscribed();
    assert_eq!(entry(&cache)["format"], 1);
    drop(d);

    let again = Daemon::start(&config);
    again.wait_for("model profile taken from the cache", Duration::from_secs(5));
}

#[test]
fn a_cache_entry_measured_for_another_model_reflexd_or_cpu_is_not_used() {
    let _serial = serial();
    let broker = spawn_broker();
    let (config, cache) = cached_config(&broker, "cache-key", &repo().join("models"));
    first_start(&config, &cache);
    for (field, other) in [
        ("model_sha256", "00".repeat(32)),
        ("reflexd_version", "0.0.0-other".to_owned()),
        ("cpu", "aarch64 parts 0x41/0xd03".to_owned()),
    ] {
        let mut e = entry(&cache);
        e["key"][field] = serde_json::Value::String(other.clone());
        std::fs::write(cache.join("edge.json"), e.to_string()).unwrap();
        let d = Daemon::start(&config);
        let warning = d.wait_for("the model cache entry is not used", Duration::from_secs(5));
        assert!(
            warning.contains(&format!("was measured for {field} \"{other}\"")),
            "{field}: {warning}"
        );
        d.wait_subscribed();
        assert_ne!(
            entry(&cache)["key"][field],
            other.as_str(),
            "{field} rewritten"
        );
    }
}

/// The repository's edge model, its fallback and golden vectors, copied to `dir`.
fn copy_models(dir: &Path) {
    let from = repo().join("models");
    std::fs::create_dir_all(dir.join("golden")).unwrap();
    for f in ["edge.manifest.json", "edge.onnx", "fallback.manifest.json"] {
        std::fs::copy(from.join(f), dir.join(f)).unwrap();
    }
    for e in std::fs::read_dir(from.join("golden")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join("golden").join(e.file_name())).unwrap();
    }
}

/// Adds `delta` to every value of a little-endian float32 `.npy` file, in place.
fn shift_npy_f32(path: &Path, delta: f32) {
    let mut bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let data = match bytes[6] {
        1 => 10 + usize::from(u16::from_le_bytes([bytes[8], bytes[9]])),
        _ => 12 + u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
    };
    let header = String::from_utf8_lossy(&bytes[..data]).into_owned();
    assert!(header.contains("'<f4'"), "{header}");
    for v in bytes[data..].chunks_exact_mut(4) {
        let x = f32::from_le_bytes(v.try_into().unwrap()) + delta;
        v.copy_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_model_whose_golden_vectors_fail_after_the_cache_was_written_is_replaced_by_its_fallback() {
    let _serial = serial();
    let broker = spawn_broker();
    let models = test_dir("cache-golden-models");
    copy_models(&models);
    let (config, cache) = cached_config(&broker, "cache-golden", &models);
    first_start(&config, &cache);
    let before = std::fs::read(cache.join("edge.json")).unwrap();
    // The model file and manifest are unchanged (the cache key still matches); the golden
    // logits it must reproduce are now off by far more than the tolerance.
    shift_npy_f32(&models.join("golden/edge_logits.npy"), 1.0);

    let d = Daemon::start(&config);
    d.wait_for("model profile taken from the cache", Duration::from_secs(5));
    d.wait_subscribed();
    let error = d.wait_for(
        "the model failed its background verification",
        Duration::from_secs(60),
    );
    assert!(error.contains("ERROR"), "{error}");
    assert!(error.contains("golden"), "{error}");
    let m = scrape(&config);
    assert_eq!(
        metric(
            &m,
            "reflexd_model_verification_failures_total{model=\"edge\"}"
        ),
        1
    );
    let fallback: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(models.join("fallback.manifest.json")).unwrap(),
    )
    .unwrap();
    let fallback_name = fallback["name"].as_str().unwrap();
    assert!(
        m.contains(&format!(
            "reflexd_model_info{{route=\"vibration\",model=\"{fallback_name}\""
        )),
        "{m}"
    );
    let f = field(&broker);
    let (_, cmd) = f.publish_until_answered("dev-0042", &events(42, 50));
    assert_eq!(cmd.source, DecisionSource::Fallback, "{cmd:?}");
    assert_eq!(cmd.model.name.as_str(), fallback_name);
    assert_eq!(
        std::fs::read(cache.join("edge.json")).unwrap(),
        before,
        "a failed verification leaves the cache entry as it was"
    );
    assert!(!d.logged("cache refreshed"));
}
