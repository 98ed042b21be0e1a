//! Shared test fixtures: a real ingest on 127.0.0.1 port 0 over a temp directory, and a
//! simulated fleet turned into journal records the way reflexd journals them (window in g,
//! the 13 features, the edge model's decision through tract, the fallback for some events).
//!
//! `Fleet` computes the board's decisions in-process, so these tests control the data
//! exactly; the same chain through a real reflexd journal and uploader is
//! tests/tests/pipeline.rs.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use reflex_cloud::config::{IngestConfig, NodeToken, RescoreConfig};
use reflex_cloud::{hash_token, Ingest, IngestStats, Storage};
use reflex_models::{features, Fallback, Model, WINDOW_LEN};
use reflex_records::{
    encode_batch, DeadlineOutcome, DecisionSource, EncodedBatch, JournalRecord, ModelId,
    StageTimings,
};
use reflex_sim::device::SimDevice;
use reflex_sim::scenario::Scenario;
use reflex_sim::signal::{Condition, Distortion};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "board-1-secret";
pub const NODE: &str = "board-1";
/// 2026-01-01T00:00:00Z, µs.
pub const T0_US: u64 = 1_767_225_600_000_000;
/// The test ingests' `clock_not_before_unix_s` (2025-01-01): the records of these tests are
/// stamped [`T0_US`], which may be older than the build of reflex-cloud (the default).
pub const CLOCK_NOT_BEFORE_S: u64 = 1_735_689_600;

pub fn models_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models"))
}

/// Writes a `reflex-cloud` config at `path`: the local store at `store`, rescoring with the
/// cloud model into `runs`, then `rescore_extra` (more `[rescore]` lines, or "").
pub fn write_cloud_config(path: &Path, store: &Path, runs: &Path, rescore_extra: &str) {
    std::fs::write(
        path,
        format!(
            "[storage]\nkind = \"local\"\npath = \"{}\"\n[rescore]\nmodel_manifest = \"{}\"\n\
             out_dir = \"{}\"\n{rescore_extra}",
            store.display(),
            models_dir().join("cloud.manifest.json").display(),
            runs.display()
        ),
    )
    .unwrap();
}

/// A running ingest.
pub struct Server {
    pub addr: SocketAddr,
    pub storage: Storage,
    pub root: PathBuf,
    pub stats: Arc<IngestStats>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), reflex_cloud::IngestError>>,
}

impl Server {
    pub async fn start(root: &Path, max_body_bytes: usize) -> Server {
        Server::start_with_nodes(root, max_body_bytes, &[(NODE, TOKEN)]).await
    }

    /// An ingest that knows every `(node, token)` of `nodes`.
    pub async fn start_with_nodes(
        root: &Path,
        max_body_bytes: usize,
        nodes: &[(&str, &str)],
    ) -> Server {
        let cfg = IngestConfig {
            listen: "127.0.0.1:0".into(),
            max_body_bytes,
            grace_period_ms: 2_000,
            nodes: nodes
                .iter()
                .map(|(node, token)| NodeToken::new(*node, hash_token(token)))
                .collect(),
            clock_not_before_unix_s: CLOCK_NOT_BEFORE_S,
            ..IngestConfig::default()
        };
        Server::start_config(root, &cfg).await
    }

    /// An ingest with exactly this configuration (`listen` should be port 0).
    pub async fn start_config(root: &Path, cfg: &IngestConfig) -> Server {
        let storage = Storage::local(root.to_owned()).expect("local storage");
        Server::start_storage_at(storage, root, cfg).await
    }

    /// An ingest on any storage (an S3 bucket: `files` then lists nothing).
    pub async fn start_storage(storage: Storage, cfg: &IngestConfig) -> Server {
        Server::start_storage_at(storage, Path::new("/nonexistent"), cfg).await
    }

    async fn start_storage_at(storage: Storage, root: &Path, cfg: &IngestConfig) -> Server {
        let ingest = Ingest::bind(cfg, storage.clone()).await.expect("bind");
        let addr = ingest.local_addr();
        let stats = ingest.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(ingest.run(shutdown.clone()));
        Server {
            addr,
            storage,
            root: root.to_owned(),
            stats,
            shutdown,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("join").expect("ingest ran cleanly");
    }

    /// Every regular file under the storage root, relative, sorted.
    pub fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.root, &self.root, &mut out);
        out.sort();
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().display().to_string());
        }
    }
}

/// A POST of a raw batch body with the contract's headers, as `node`, on `client`.
pub fn batch_request(
    client: &reqwest::Client,
    url: &str,
    node: &str,
    token: &str,
    id: &str,
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    client
        .post(format!("{url}/v1/batches"))
        .bearer_auth(token)
        .header("content-type", reflex_records::CONTENT_TYPE)
        .header("x-reflex-batch-id", id)
        .header(
            "x-reflex-batch-format",
            // The body's own format, as the board's uploader sends it.
            reflex_records::batch_format_of(&body)
                .unwrap_or(reflex_records::BATCH_FORMAT_VERSION)
                .to_string(),
        )
        .header("x-reflex-node", node)
        .body(body)
}

/// POSTs a raw body with the contract's headers, as [`NODE`].
pub async fn post(url: &str, token: &str, id: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    post_as(url, NODE, token, id, body).await
}

/// POSTs a raw body with the contract's headers, as `node`.
pub async fn post_as(
    url: &str,
    node: &str,
    token: &str,
    id: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let resp = batch_request(&reqwest::Client::new(), url, node, token, id, body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// A small hand-made record (no model involved).
pub fn record(device: &str, seq: u64, arrival_unix_us: u64) -> JournalRecord {
    JournalRecord {
        node: NODE.into(),
        device: device.into(),
        seq,
        arrival_unix_us,
        payload: vec![seq as u8; 40],
        model_input: (0..WINDOW_LEN)
            .map(|k| ((k as f32) * 0.1).sin() * 0.05)
            .collect(),
        features: vec![0.5; 13],
        logits: vec![2.0, 0.1, 0.1, 0.1],
        class: 0,
        command: b"cmd".to_vec(),
        model: ModelId {
            name: "edge".into(),
            version: "1.0.0".into(),
        },
        source: DecisionSource::Model,
        timings: StageTimings {
            end_to_end_us: 800,
            budget_us: 5_000,
            ..StageTimings::default()
        },
        outcome: DeadlineOutcome::OnTime,
    }
}

/// Encodes records as one batch with the journal's own encoder (journal sequences from
/// `first_seq`).
pub fn batch_of(records: &[JournalRecord], first_seq: u64) -> EncodedBatch {
    let encoded: Vec<Vec<u8>> = records.iter().map(JournalRecord::encode).collect();
    encode_batch(
        NODE,
        encoded
            .iter()
            .enumerate()
            .map(|(i, r)| (first_seq + i as u64, r.as_slice())),
    )
}

/// A simulated fleet as the board would journal it.
pub struct Fleet {
    pub seed: u64,
    pub devices: u32,
    /// The first `drift_devices` devices follow the drift scenario.
    pub drift_devices: u32,
    pub events_per_device: u64,
    /// Time between a device's events, µs.
    pub period_us: u64,
    /// When drift starts and how long it ramps, s after T0.
    pub drift_start_s: f64,
    pub drift_ramp_s: f64,
}

impl Fleet {
    pub fn duration_us(&self) -> u64 {
        self.events_per_device * self.period_us
    }

    /// Every device's events, in time order, decided by the edge model (one in ten by the
    /// fallback, which also counts as a deadline miss).
    pub fn records(&self) -> Vec<JournalRecord> {
        let mut edge = Model::load(models_dir().join("edge.manifest.json")).expect("edge model");
        let fallback =
            Fallback::load(models_dir().join("fallback.manifest.json")).expect("fallback");
        let scenario = Scenario::Drift {
            start_s: self.drift_start_s,
            ramp_s: self.drift_ramp_s,
            target: Scenario::DEFAULT_DRIFT_TARGET,
        };
        let mut sims: Vec<SimDevice> = (0..self.devices)
            .map(|i| SimDevice::new(i, Condition::ALL[i as usize % 4], self.seed))
            .collect();
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        for k in 0..self.events_per_device {
            for (i, sim) in sims.iter_mut().enumerate() {
                let t_us = T0_US + k * self.period_us + i as u64 * 7;
                let t_s = (k * self.period_us) as f64 / 1e6;
                let distortion = if (i as u32) < self.drift_devices {
                    scenario.distortion(t_s)
                } else {
                    Distortion::NONE
                };
                let event = sim.next_event(t_us, distortion);
                let payload = event.encode(&mut buf).expect("encode").to_vec();
                let window: Vec<f32> = event.window.values().collect();
                let temperature = event.temperature_c();
                let w: &[f32; WINDOW_LEN] = window.as_slice().try_into().expect("3x64 window");
                let f = features::compute(w, temperature);
                let use_fallback = (k + i as u64).is_multiple_of(10);
                let (class, logits, source, model, outcome) = if use_fallback {
                    (
                        fallback.predict(&f),
                        Vec::new(),
                        DecisionSource::Fallback,
                        ModelId {
                            name: "fallback".into(),
                            version: fallback.manifest().version.clone(),
                        },
                        DeadlineOutcome::Miss {
                            cause: "model_too_slow".into(),
                        },
                    )
                } else {
                    let p = edge.predict(&window, temperature).expect("edge predict");
                    (
                        p.class,
                        p.logits,
                        DecisionSource::Model,
                        ModelId {
                            name: edge.name().into(),
                            version: edge.version().into(),
                        },
                        DeadlineOutcome::OnTime,
                    )
                };
                out.push(JournalRecord {
                    node: NODE.into(),
                    device: sim.id().to_owned(),
                    seq: event.seq,
                    arrival_unix_us: t_us + 300,
                    payload,
                    model_input: window,
                    features: f.iter().map(|&v| v as f32).collect(),
                    logits,
                    class: class as u8,
                    command: vec![class as u8],
                    model,
                    source,
                    timings: StageTimings {
                        decode_us: 4,
                        queue_us: 20 + (k % 50) as u32,
                        infer_us: if use_fallback { 0 } else { 30 },
                        publish_us: 15,
                        end_to_end_us: 300 + (i as u32) * 40 + (k % 97) as u32,
                        budget_us: 5_000,
                    },
                    outcome,
                });
            }
        }
        out
    }
}

/// A rescore configuration for tests: windows of a tenth of the run, baseline the first
/// third.
pub fn rescore_config(out_dir: &Path, fleet: &Fleet, batch_size: usize) -> RescoreConfig {
    let duration_s = fleet.duration_us() / 1_000_000;
    RescoreConfig {
        model_manifest: models_dir().join("cloud.manifest.json"),
        out_dir: out_dir.to_owned(),
        batch_size,
        workers: 2,
        window_s: (duration_s / 10).max(1),
        device_baseline_s: (duration_s / 3).max(1),
        min_events: 200,
        ..RescoreConfig::default()
    }
}
