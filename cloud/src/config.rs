//! The `reflex-cloud` configuration file (TOML). Every table refuses unknown keys; a file
//! that parses is then validated as a whole and every problem is reported at once
//! ([`ConfigError::Invalid`]); `main` exits 64 on either.
//!
//! ```toml
//! [ingest]
//! listen = "127.0.0.1:8480"          # loopback by default; put TLS in front of it
//! max_body_bytes = 8388608           # compressed body; larger → 413
//! grace_period_ms = 10000            # in-flight requests finish within this on SIGTERM
//!
//! [[ingest.nodes]]                   # one per board; the token is stored hashed
//! node = "board-1"
//! token_sha256 = "<64 hex>"          # `reflex-cloud hash-token` prints it
//!
//! [storage]
//! kind = "local"                     # or "s3" (bucket, region, endpoint, allow_http, prefix)
//! path = "/var/lib/reflex-cloud"
//!
//! [rescore]
//! model_manifest = "models/cloud.manifest.json"
//! out_dir = "/var/lib/reflex-cloud/runs"
//! batch_size = 32                    # smallest on the throughput plateau (cloud/README.md)
//! window_s = 3600                    # "drift over time" windows
//! device_baseline_s = 3600           # each device's baseline: its first hour in the snapshot
//! min_events = 200                   # fewer events: not judged
//! [rescore.thresholds]               # reflex-drift's DriftThresholds (defaults: KS p<0.05 …)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use reflex_drift::stats::verdict::DriftThresholds;
use serde::{Deserialize, Serialize};

use crate::layout::valid_device_id;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not TOML of this shape.
    #[error("{origin}: at {field}: {message}")]
    Parse {
        /// File name.
        origin: String,
        /// Path of the offending key.
        field: String,
        /// What the parser said.
        message: String,
    },
    /// Parsed, but values are wrong: every problem found.
    #[error("{} error(s):\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP ingest.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// Where batches are stored.
    pub storage: StorageConfig,
    /// The rescore job.
    #[serde(default)]
    pub rescore: RescoreConfig,
}

/// A board allowed to upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeToken {
    /// Node name (the `X-Reflex-Node` header and the batch header must say this).
    pub node: String,
    /// Lowercase hex SHA-256 of the bearer token.
    pub token_sha256: String,
}

/// `[ingest]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Listen address.
    pub listen: String,
    /// Largest compressed body accepted, bytes.
    pub max_body_bytes: usize,
    /// How long in-flight requests may run after a shutdown signal, ms.
    pub grace_period_ms: u64,
    /// Boards and their hashed tokens.
    pub nodes: Vec<NodeToken>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: "127.0.0.1:8480".into(),
            max_body_bytes: 8 << 20,
            grace_period_ms: 10_000,
            nodes: Vec::new(),
        }
    }
}

/// `[storage]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StorageConfig {
    /// A local directory.
    Local {
        /// Root directory.
        path: PathBuf,
    },
    /// An S3-compatible bucket; credentials from the environment (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, …), never from this file.
    S3 {
        /// Bucket.
        bucket: String,
        /// Region.
        #[serde(default)]
        region: Option<String>,
        /// Endpoint of an S3-compatible service (MinIO, Ceph, …).
        #[serde(default)]
        endpoint: Option<String>,
        /// Allow a plain-HTTP endpoint.
        #[serde(default)]
        allow_http: bool,
        /// Key prefix inside the bucket.
        #[serde(default)]
        prefix: Option<String>,
    },
}

/// `[rescore]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RescoreConfig {
    /// The cloud model's manifest.
    pub model_manifest: PathBuf,
    /// Where runs write their outputs (one directory per run).
    pub out_dir: PathBuf,
    /// Windows per tract run.
    pub batch_size: usize,
    /// Partition files scanned in parallel (each worker loads its own model).
    pub workers: usize,
    /// Length of the "drift over time" windows, s.
    pub window_s: u64,
    /// Each device's baseline: its events in the first this-many seconds of the snapshot.
    pub device_baseline_s: u64,
    /// Events needed (per feature sample) before a distribution is judged.
    pub min_events: u64,
    /// Drift thresholds (reflex-drift defaults).
    pub thresholds: DriftThresholds,
}

impl Default for RescoreConfig {
    fn default() -> Self {
        RescoreConfig {
            model_manifest: PathBuf::from("models/cloud.manifest.json"),
            out_dir: PathBuf::from("runs"),
            batch_size: 32,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            window_s: 3600,
            device_baseline_s: 3600,
            min_events: 200,
            thresholds: DriftThresholds::default(),
        }
    }
}

/// Largest batch size accepted.
pub const MAX_BATCH_SIZE: usize = 4096;

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Config {
    /// Every problem with the values, each naming the key and the bad value.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let i = &self.ingest;
        if i.listen.parse::<SocketAddr>().is_err() {
            errors.push(format!(
                "ingest.listen: {:?} is not an ip:port address",
                i.listen
            ));
        }
        if i.max_body_bytes == 0 {
            errors.push("ingest.max_body_bytes: 0, must be positive".into());
        }
        for (k, n) in i.nodes.iter().enumerate() {
            if !valid_device_id(&n.node) {
                errors.push(format!(
                    "ingest.nodes[{k}].node: {:?} is not 1-32 bytes of [A-Za-z0-9_.:-]",
                    n.node
                ));
            }
            if !is_hex64(&n.token_sha256) {
                errors.push(format!(
                    "ingest.nodes[{k}].token_sha256: {:?} is not 64 lowercase hex digits",
                    n.token_sha256
                ));
            }
            if i.nodes[..k].iter().any(|m| m.node == n.node) {
                errors.push(format!(
                    "ingest.nodes[{k}].node: {:?} is listed twice",
                    n.node
                ));
            }
        }
        match &self.storage {
            StorageConfig::Local { path } if path.as_os_str().is_empty() => {
                errors.push("storage.path: empty".into())
            }
            StorageConfig::S3 { bucket, .. } if bucket.is_empty() => {
                errors.push("storage.bucket: empty".into())
            }
            _ => {}
        }
        let r = &self.rescore;
        if !(1..=MAX_BATCH_SIZE).contains(&r.batch_size) {
            errors.push(format!(
                "rescore.batch_size: {}, must be 1..={MAX_BATCH_SIZE}",
                r.batch_size
            ));
        }
        if r.workers == 0 {
            errors.push("rescore.workers: 0, must be at least 1".into());
        }
        if r.window_s == 0 {
            errors.push("rescore.window_s: 0, must be positive".into());
        }
        if r.min_events == 0 {
            errors.push("rescore.min_events: 0, must be positive".into());
        }
        if let Err(e) = r.thresholds.validate() {
            errors.push(format!("rescore.thresholds: {e}"));
        }
        errors
    }
}

/// Parses TOML text (no validation of values).
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    reflex_service::parse_toml(text).map_err(|e| ConfigError::Parse {
        origin: origin.to_owned(),
        field: e.field,
        message: e.message,
    })
}

/// Reads, parses and validates a configuration file.
pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let config = parse(&text, &path.display().to_string())?;
    let errors = config.validate();
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[ingest]
listen = "127.0.0.1:0"
[[ingest.nodes]]
node = "board-1"
token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
[storage]
kind = "local"
path = "/tmp/x"
"#;

    #[test]
    fn a_minimal_file_parses_with_defaults_and_validates() {
        let c = parse(GOOD, "t").unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.rescore.batch_size, 32);
        assert_eq!(c.ingest.max_body_bytes, 8 << 20);
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_path() {
        let e = parse(&GOOD.replace("[storage]", "[storage]\ncolour = 1"), "t").unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = parse(&format!("{GOOD}\n[rescore]\nbatchsize = 3\n"), "t").unwrap_err();
        assert!(e.to_string().contains("batchsize"), "{e}");
    }

    #[test]
    fn every_bad_value_is_reported_at_once_with_the_value() {
        let text = r#"
[ingest]
listen = "nowhere"
max_body_bytes = 0
[[ingest.nodes]]
node = "a/b"
token_sha256 = "XYZ"
[[ingest.nodes]]
node = "a/b"
token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
[storage]
kind = "s3"
bucket = ""
[rescore]
batch_size = 0
workers = 0
window_s = 0
[rescore.thresholds]
ks_p_value = 2.0
"#;
        let errors = parse(text, "t").unwrap().validate();
        let all = errors.join("\n");
        for needle in [
            "\"nowhere\"",
            "max_body_bytes",
            "\"a/b\" is not",
            "\"XYZ\"",
            "listed twice",
            "storage.bucket",
            "batch_size: 0",
            "workers",
            "window_s",
            "ks_p_value",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in\n{all}");
        }
        assert_eq!(errors.len(), 11, "{all}");
    }
}
