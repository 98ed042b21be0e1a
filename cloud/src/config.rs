//! The `reflex-cloud` configuration file (TOML). Every table refuses unknown keys; a file
//! that parses is then validated as a whole and every problem is reported at once
//! ([`ConfigError::Invalid`]); `main` exits 64 on either.
//!
//! ```toml
//! [ingest]
//! listen = "127.0.0.1:8480"          # loopback by default
//! # tls_cert_file = "/etc/reflex-cloud/tls/fullchain.pem"   # HTTPS served by reflex-cloud:
//! # tls_key_file = "/etc/reflex-cloud/tls/key.pem"          # key mode at most 0640
//! # allow_plain_http = true          # plain HTTP on a non-loopback address: only behind a
//!                                    # TLS reverse proxy (else `validate` refuses it)
//! token_reload_poll_ms = 5000        # node table re-read when the file changes; 0: SIGHUP only
//! max_body_bytes = 8388608           # compressed body; larger → 413
//! grace_period_ms = 10000            # in-flight requests finish within this on SIGTERM
//! header_timeout_ms = 10000          # request head (and an idle keep-alive) within this
//! body_timeout_ms = 60000            # the whole body within this, else 408
//! request_timeout_ms = 120000        # the whole request, storage included, else 503
//! max_connections = 256              # more wait in the listen backlog
//!
//! [[ingest.nodes]]                   # one per board; the token is stored hashed
//! node = "board-1"
//! token_sha256 = "<64 hex>"          # `reflex-cloud hash-token` prints it; or a list of
//!                                    # two while the token is rotated: ["<old>", "<new>"]
//! # token_sha256_file = "/etc/reflex-cloud/board-1.sha256"   # instead: one or two hashes,
//!                                    # mode at most 0640 (see `TOKEN_FILE_FORBIDDEN_MODE`)
//! # devices = ["dev-0001", "dev-0002"]  # optional allow-list; absent: any valid device id
//!
//! [storage]
//! kind = "local"                     # a directory, every object fsynced before the ack
//! path = "/var/lib/reflex-cloud"
//! # kind = "s3"                       # or an S3-compatible bucket, shared by N ingests:
//! # bucket = "reflex-journal"
//! # region = "eu-west-1"
//! # endpoint = "https://s3.example.net"   # http:// only to loopback, with allow_http = true
//! # prefix = "fleet-a"
//! # credentials_file = "/etc/reflex-cloud/s3.toml"  # access_key_id, secret_access_key
//! #                                  # (mode at most 0640); absent: AWS_* environment
//!
//! [rescore]
//! model_manifest = "models/cloud.manifest.json"
//! out_dir = "/var/lib/reflex-cloud/runs"
//! batch_size = 32                    # smallest on the throughput plateau (cloud/README.md)
//! window_s = 3600                    # "drift over time" windows
//! device_baseline_s = 3600           # each device's baseline: its first hour in the snapshot
//! min_events = 200                   # fewer events: not judged
//! [rescore.thresholds]               # reflex-drift's DriftThresholds (defaults: KS p<0.05 …)
//!
//! [ballista.scheduler]               # `reflex-cloud scheduler` (feature `ballista`)
//! listen = "127.0.0.1:50050"         # gRPC of executors and `rescore --engine ballista`
//! [ballista.executor]                # `reflex-cloud executor` (feature `ballista`)
//! listen = "127.0.0.1:50051"         # Arrow Flight: results and shuffle data
//! # advertise_host = "10.0.0.12"     # what the scheduler and clients dial; default: listen's
//! scheduler = "http://127.0.0.1:50050"
//! model_manifest = "models/cloud.manifest.json"   # this machine's copy of the cloud model
//! vcores = 0                         # concurrent tasks; 0: the machine's cores
//! # work_dir = "/var/lib/reflex-cloud/ballista"   # shuffle files; default: a temp directory
//! # allow_plaintext = true            # Ballista's gRPC and Flight are plain text: a
//!                                    # non-loopback listen needs this (private network only)
//! ```

use std::collections::BTreeSet;
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
    /// The Ballista scheduler and executor processes (used with the `ballista` feature).
    #[serde(default)]
    pub ballista: BallistaConfig,
}

/// `[ballista]`: the processes of a Ballista cluster that rescores (`cloud/README.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BallistaConfig {
    /// `reflex-cloud scheduler`.
    pub scheduler: SchedulerSection,
    /// `reflex-cloud executor`.
    pub executor: ExecutorSection,
}

/// `[ballista.scheduler]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerSection {
    /// gRPC address (`ip:port`; port 0: any free port, printed at start).
    pub listen: String,
    /// Ballista's gRPC is plain text: a non-loopback `listen` needs this.
    pub allow_plaintext: bool,
}

impl Default for SchedulerSection {
    fn default() -> Self {
        SchedulerSection {
            listen: "127.0.0.1:50050".into(),
            allow_plaintext: false,
        }
    }
}

/// `[ballista.executor]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorSection {
    /// Arrow Flight address (`ip:port`; port 0: any free port): the scheduler's client and
    /// the other executors fetch task outputs here.
    pub listen: String,
    /// The host the scheduler hands out for this executor; default: `listen`'s address
    /// (required when that is unspecified, `0.0.0.0` or `::`).
    pub advertise_host: Option<String>,
    /// The scheduler: `http://host:port`.
    pub scheduler: String,
    /// This machine's copy of the cloud model. A task runs only if its ONNX and manifest
    /// hashes are the job's (the run manifest's).
    pub model_manifest: PathBuf,
    /// Tasks run at once; 0: the machine's cores.
    pub vcores: usize,
    /// Shuffle and spill files; default: a temporary directory removed at exit.
    pub work_dir: Option<PathBuf>,
    /// Arrow Flight is plain text: a non-loopback `listen` needs this.
    pub allow_plaintext: bool,
}

impl Default for ExecutorSection {
    fn default() -> Self {
        ExecutorSection {
            listen: "127.0.0.1:50051".into(),
            advertise_host: None,
            scheduler: "http://127.0.0.1:50050".into(),
            model_manifest: PathBuf::from("models/cloud.manifest.json"),
            vcores: 0,
            work_dir: None,
            allow_plaintext: false,
        }
    }
}

/// Splits `http://host:port` into host and port.
pub fn scheduler_host_port(url: &str) -> Result<(String, u16), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("{url:?} is not http://host:port (Ballista's gRPC is plain text)")
    })?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{url:?} has no port"))?;
    let port: u16 = port
        .trim_end_matches('/')
        .parse()
        .map_err(|_| format!("{url:?} has no valid port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(format!("{url:?} needs a host and a non-zero port"));
    }
    Ok((host.to_owned(), port))
}

impl BallistaConfig {
    /// Every problem with the values, each naming the key and the bad value.
    pub fn errors(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut listen = |key: &str, value: &str, allow_plaintext: bool| -> Option<SocketAddr> {
            match value.parse::<SocketAddr>() {
                Err(_) => {
                    errors.push(format!("{key}: {value:?} is not an ip:port address"));
                    None
                }
                Ok(a) if !a.ip().is_loopback() && !allow_plaintext => {
                    errors.push(format!(
                        "{key}: {value:?} is not a loopback address; Ballista's gRPC is plain \
                         text: set allow_plaintext = true on a private network only"
                    ));
                    Some(a)
                }
                Ok(a) => Some(a),
            }
        };
        let s = &self.scheduler;
        listen("ballista.scheduler.listen", &s.listen, s.allow_plaintext);
        let e = &self.executor;
        let addr = listen("ballista.executor.listen", &e.listen, e.allow_plaintext);
        if let Some(a) = addr {
            if a.ip().is_unspecified() && e.advertise_host.is_none() {
                errors.push(format!(
                    "ballista.executor.advertise_host: required when listen is {:?}",
                    e.listen
                ));
            }
        }
        if let Some(h) = &e.advertise_host {
            if h.is_empty() || h.contains(['/', ' ', '@']) {
                errors.push(format!(
                    "ballista.executor.advertise_host: {h:?} is not a host name or address"
                ));
            }
        }
        if let Err(m) = scheduler_host_port(&e.scheduler) {
            errors.push(format!("ballista.executor.scheduler: {m}"));
        }
        errors
    }
}

/// A board allowed to upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeToken {
    /// Node name (the `X-Reflex-Node` header, the batch header and every record must say
    /// this).
    pub node: String,
    /// Lowercase hex SHA-256 of the bearer token: one, or two while the token is rotated
    /// (either authenticates). In TOML a string or a list of one or two strings.
    #[serde(
        default,
        deserialize_with = "one_or_more",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub token_sha256: Vec<String>,
    /// Instead of `token_sha256`: a file holding one or two such hashes (separated by
    /// whitespace). Refused unless its mode is within 0640 ([`TOKEN_FILE_FORBIDDEN_MODE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256_file: Option<PathBuf>,
    /// The only device ids this node may upload records of. Absent: any valid device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
}

impl NodeToken {
    /// A node with one inline token hash, no allow-list.
    pub fn new(node: impl Into<String>, token_sha256: impl Into<String>) -> NodeToken {
        NodeToken {
            node: node.into(),
            token_sha256: vec![token_sha256.into()],
            token_sha256_file: None,
            devices: None,
        }
    }
}

/// A string, or a list of strings.
fn one_or_more<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a hash or a list of one or two hashes")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.to_owned()])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = a.next_element::<String>()? {
                out.push(s);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// Mode bits a `token_sha256_file` must not have (the rule of every secret file). The file
/// holds verifiers, not tokens, but whoever can write it can add a hash of their own and
/// upload as that node, and whoever can read it can guess a weak token offline.
pub use reflex_service::secret::SECRET_FILE_FORBIDDEN_MODE as TOKEN_FILE_FORBIDDEN_MODE;
pub use reflex_service::secret::{read_secret_file, SecretFileError};

/// A node as the ingest checks it: its token hashes (inline or read from its file) and its
/// device allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAuth {
    /// Node name.
    pub node: String,
    /// One or two lowercase hex SHA-256.
    pub token_sha256: Vec<String>,
    /// Allowed device ids; `None`: any.
    pub devices: Option<BTreeSet<String>>,
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
    /// The request line and headers must arrive within this, ms; it also closes a
    /// keep-alive connection idle this long. Else the connection is closed.
    pub header_timeout_ms: u64,
    /// The whole body must arrive within this from the end of the headers, ms; else 408.
    pub body_timeout_ms: u64,
    /// The whole request, storage included, must be answered within this, ms; else 503
    /// (the board retries).
    pub request_timeout_ms: u64,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// PEM certificate chain served for HTTPS (with `tls_key_file`). Absent: plain HTTP.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`; refused when others may read it.
    pub tls_key_file: Option<PathBuf>,
    /// Plain HTTP on a non-loopback `listen` address: only when a TLS reverse proxy
    /// terminates HTTPS in front of it. Without TLS and without this, a non-loopback
    /// address is a configuration error.
    pub allow_plain_http: bool,
    /// How often the configuration file and the token files are checked for changes, ms;
    /// a change reloads the node table (as SIGHUP does). 0: only on SIGHUP.
    pub token_reload_poll_ms: u64,
    /// Boards and their hashed tokens.
    pub nodes: Vec<NodeToken>,
    /// Records stamped before this (Unix seconds) are taken as stamped by a wrong board
    /// clock: filed under an arrival-based estimate and flagged (`reflex_cloud::clock`).
    /// Default: the build date of this reflex-cloud. Lower it to accept older records
    /// as stamped (e.g. a backlog from before an upgrade).
    pub clock_not_before_unix_s: u64,
    /// Records stamped more than this many seconds ahead of the ingest's clock are taken
    /// as stamped by a wrong board clock, likewise. Default: 300.
    pub clock_max_future_s: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: "127.0.0.1:8480".into(),
            max_body_bytes: 8 << 20,
            grace_period_ms: 10_000,
            header_timeout_ms: 10_000,
            body_timeout_ms: 60_000,
            request_timeout_ms: 120_000,
            max_connections: 256,
            tls_cert_file: None,
            tls_key_file: None,
            allow_plain_http: false,
            token_reload_poll_ms: 5_000,
            nodes: Vec::new(),
            clock_not_before_unix_s: crate::clock::BUILD_UNIX_S,
            clock_max_future_s: 300,
        }
    }
}

/// Most token hashes per node (the current one and the one being rotated in).
pub const MAX_TOKENS_PER_NODE: usize = 2;

impl IngestConfig {
    /// Whether `serve` speaks HTTPS itself.
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        Some((
            self.tls_cert_file.as_deref()?,
            self.tls_key_file.as_deref()?,
        ))
    }

    /// Problems with how `serve` is reached on `addr`: the TLS files (read and checked,
    /// the key's mode included) and plain HTTP beyond loopback without `allow_plain_http`.
    fn transport_errors(&self, addr: SocketAddr) -> Vec<String> {
        let mut errors = Vec::new();
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                if let Err(e) = crate::tls::server_config(cert, key) {
                    let field = match e {
                        crate::tls::TlsError::Certificate { .. } => "tls_cert_file",
                        crate::tls::TlsError::Pair { .. } => "tls_cert_file/tls_key_file",
                        _ => "tls_key_file",
                    };
                    errors.push(format!("ingest.{field}: {e}"));
                }
                if self.allow_plain_http {
                    errors.push(
                        "ingest.allow_plain_http: true, but tls_cert_file and tls_key_file \
                         are set (HTTPS is served); remove one or the other"
                            .into(),
                    );
                }
            }
            (Some(cert), None) => errors.push(format!(
                "ingest.tls_cert_file: {} is set without tls_key_file",
                cert.display()
            )),
            (None, Some(key)) => errors.push(format!(
                "ingest.tls_key_file: {} is set without tls_cert_file",
                key.display()
            )),
            (None, None) => {
                if !addr.ip().is_loopback() && !self.allow_plain_http {
                    errors.push(format!(
                        "ingest.listen: {:?} is not loopback and serves plain HTTP: set \
                         tls_cert_file and tls_key_file, or put a TLS reverse proxy in front \
                         and set allow_plain_http = true",
                        self.listen
                    ));
                }
            }
        }
        errors
    }

    /// Every node with its token hashes, reading each `token_sha256_file` (mode checked),
    /// and every problem found, each naming the key and the bad value. A node with a
    /// problem is left out.
    pub fn resolve_nodes(&self) -> (Vec<NodeAuth>, Vec<String>) {
        let mut errors = Vec::new();
        let mut nodes = Vec::new();
        let mut seen_hashes: Vec<(String, usize)> = Vec::new();
        for (k, n) in self.nodes.iter().enumerate() {
            let before = errors.len();
            let at = format!("ingest.nodes[{k}]");
            if !valid_device_id(&n.node) {
                errors.push(format!(
                    "{at}.node: {:?} is not 1-32 bytes of [A-Za-z0-9_.:-]",
                    n.node
                ));
            }
            if self.nodes[..k].iter().any(|m| m.node == n.node) {
                errors.push(format!("{at}.node: {:?} is listed twice", n.node));
            }
            // (hashes, key they came from, whether that source was usable)
            let (hashes, key, usable) = match (&n.token_sha256_file, n.token_sha256.is_empty()) {
                (None, true) => {
                    errors.push(format!(
                        "{at}: node {:?} has neither token_sha256 nor token_sha256_file",
                        n.node
                    ));
                    (Vec::new(), "token_sha256", false)
                }
                (Some(path), false) => {
                    errors.push(format!(
                        "{at}: node {:?} has both token_sha256 and token_sha256_file {}",
                        n.node,
                        path.display()
                    ));
                    (Vec::new(), "token_sha256", false)
                }
                (None, false) => (n.token_sha256.clone(), "token_sha256", true),
                (Some(path), true) => match read_secret_file(path) {
                    Ok(text) => (
                        text.split_whitespace().map(str::to_owned).collect(),
                        "token_sha256_file",
                        true,
                    ),
                    Err(e) => {
                        errors.push(format!("{at}.token_sha256_file: {e}"));
                        (Vec::new(), "token_sha256_file", false)
                    }
                },
            };
            if usable && !(1..=MAX_TOKENS_PER_NODE).contains(&hashes.len()) {
                errors.push(format!(
                    "{at}.{key}: {} hashes, must be 1 or {MAX_TOKENS_PER_NODE}",
                    hashes.len()
                ));
            }
            for h in &hashes {
                if !is_hex64(h) {
                    errors.push(format!("{at}.{key}: {h:?} is not 64 lowercase hex digits"));
                } else if let Some((_, j)) = seen_hashes.iter().find(|(s, _)| s == h) {
                    errors.push(format!(
                        "{at}.{key}: {h:?} is listed twice (also ingest.nodes[{j}]); a \
                         token names exactly one node"
                    ));
                } else {
                    seen_hashes.push((h.clone(), k));
                }
            }
            let devices = n.devices.as_ref().map(|list| {
                if list.is_empty() {
                    errors.push(format!(
                        "{at}.devices: empty; omit it to allow every device"
                    ));
                }
                let mut set = BTreeSet::new();
                for d in list {
                    if !valid_device_id(d) {
                        errors.push(format!(
                            "{at}.devices: {d:?} is not 1-32 bytes of [A-Za-z0-9_.:-]"
                        ));
                    } else if !set.insert(d.clone()) {
                        errors.push(format!("{at}.devices: {d:?} is listed twice"));
                    }
                }
                set
            });
            if errors.len() == before {
                nodes.push(NodeAuth {
                    node: n.node.clone(),
                    token_sha256: hashes,
                    devices,
                });
            }
        }
        (nodes, errors)
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
    /// An S3-compatible bucket. Credentials from `credentials_file` (a secret file, mode at
    /// most 0640: [`S3Credentials`]) or, without it, from the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, an instance role …); never from this
    /// file.
    S3 {
        /// Bucket.
        bucket: String,
        /// Region.
        #[serde(default)]
        region: Option<String>,
        /// Endpoint of an S3-compatible service (MinIO, Ceph, moto, …): `https://host[:port]`,
        /// or `http://` to a loopback host with `allow_http`.
        #[serde(default)]
        endpoint: Option<String>,
        /// Allow a plain-HTTP endpoint: only a loopback one (`validate` refuses others).
        #[serde(default)]
        allow_http: bool,
        /// Key prefix inside the bucket.
        #[serde(default)]
        prefix: Option<String>,
        /// TOML secret file holding [`S3Credentials`].
        #[serde(default)]
        credentials_file: Option<PathBuf>,
    },
}

/// The contents of `storage.credentials_file` (TOML, mode at most 0640).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    #[serde(default)]
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Credentials {
    /// Reads and parses a credentials file, refusing one open to others
    /// (`reflex_service::secret`).
    pub fn load(path: &Path) -> Result<S3Credentials, String> {
        let text = reflex_service::secret::read_secret_file(path).map_err(|e| e.to_string())?;
        let creds: S3Credentials = reflex_service::parse_toml(&text)
            .map_err(|e| format!("{}: {}: {}", path.display(), e.field, e.message))?;
        if creds.access_key_id.is_empty() || creds.secret_access_key.is_empty() {
            return Err(format!(
                "{}: access_key_id and secret_access_key must not be empty",
                path.display()
            ));
        }
        Ok(creds)
    }
}

/// The host of an `http://` or `https://` endpoint URL and whether it is plain HTTP, or why
/// the URL is unusable. Pure: no name resolution (`localhost` counts as loopback by name).
pub fn endpoint_host(endpoint: &str) -> Result<(String, bool), String> {
    let (rest, http) = if let Some(r) = endpoint.strip_prefix("http://") {
        (r, true)
    } else if let Some(r) = endpoint.strip_prefix("https://") {
        (r, false)
    } else {
        return Err("must start with http:// or https://".into());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("must not carry credentials".into());
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("").to_owned()
    } else {
        authority.split(':').next().unwrap_or("").to_owned()
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    Ok((host, http))
}

/// Whether `host` (from [`endpoint_host`]) is a loopback address or `localhost`.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl StorageConfig {
    /// Every problem of `[storage]`, each naming the key and the value.
    pub fn errors(&self) -> Vec<String> {
        let mut errors = Vec::new();
        match self {
            StorageConfig::Local { path } if path.as_os_str().is_empty() => {
                errors.push("storage.path: empty".into())
            }
            StorageConfig::Local { .. } => {}
            StorageConfig::S3 {
                bucket,
                endpoint,
                allow_http,
                prefix,
                credentials_file,
                ..
            } => {
                if bucket.is_empty() {
                    errors.push("storage.bucket: empty".into());
                }
                match endpoint.as_deref().map(endpoint_host) {
                    None if *allow_http => errors.push(
                        "storage.allow_http: true without an endpoint (AWS itself is HTTPS)".into(),
                    ),
                    None => {}
                    Some(Err(why)) => errors.push(format!("storage.endpoint: {endpoint:?} {why}")),
                    Some(Ok((_, true))) if !*allow_http => errors.push(format!(
                        "storage.endpoint: {endpoint:?} is plain HTTP; use https:// (or \
                         allow_http = true for a loopback endpoint)"
                    )),
                    Some(Ok((host, _))) if *allow_http && !is_loopback_host(&host) => {
                        errors.push(format!(
                            "storage.allow_http: true with endpoint {endpoint:?}: plain HTTP \
                             only to a loopback host (credentials and data would cross the \
                             network in clear)"
                        ))
                    }
                    Some(Ok(_)) => {}
                }
                if let Some(p) = prefix {
                    if p.is_empty() || p.starts_with('/') || p.ends_with('/') || p.contains("//") {
                        errors.push(format!(
                            "storage.prefix: {p:?}, must be non-empty path segments \
                             without leading, trailing or doubled '/'"
                        ));
                    }
                }
                if let Some(f) = credentials_file {
                    if let Err(e) = S3Credentials::load(f) {
                        errors.push(format!("storage.credentials_file: {e}"));
                    }
                }
            }
        }
        errors
    }
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
    /// Every problem with the values, each naming the key and the bad value. Reads each
    /// `token_sha256_file` (and checks its mode): a token file that is missing, unreadable
    /// or open to others is a configuration error.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let i = &self.ingest;
        match i.listen.parse::<SocketAddr>() {
            Err(_) => errors.push(format!(
                "ingest.listen: {:?} is not an ip:port address",
                i.listen
            )),
            Ok(addr) => errors.extend(i.transport_errors(addr)),
        }
        if i.max_body_bytes == 0 {
            errors.push("ingest.max_body_bytes: 0, must be positive".into());
        }
        for (key, v) in [
            ("header_timeout_ms", i.header_timeout_ms),
            ("body_timeout_ms", i.body_timeout_ms),
            ("request_timeout_ms", i.request_timeout_ms),
        ] {
            if v == 0 {
                errors.push(format!("ingest.{key}: 0, must be positive"));
            }
        }
        if i.body_timeout_ms > i.request_timeout_ms {
            errors.push(format!(
                "ingest.body_timeout_ms: {}, must not exceed request_timeout_ms ({})",
                i.body_timeout_ms, i.request_timeout_ms
            ));
        }
        if i.max_connections == 0 {
            errors.push("ingest.max_connections: 0, must be at least 1".into());
        }
        errors.extend(i.resolve_nodes().1);
        errors.extend(self.storage.errors());
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
        errors.extend(self.ballista.errors());
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
    fn the_ballista_sections_default_to_loopback_and_refuse_unknown_keys() {
        let c = parse(GOOD, "t").unwrap();
        assert_eq!(c.ballista, BallistaConfig::default());
        assert_eq!(c.ballista.scheduler.listen, "127.0.0.1:50050");
        assert_eq!(c.ballista.executor.listen, "127.0.0.1:50051");
        let e = parse(&format!("{GOOD}\n[ballista.executor]\nvcore = 2\n"), "t").unwrap_err();
        assert!(e.to_string().contains("vcore"), "{e}");
    }

    #[test]
    fn every_bad_ballista_value_is_reported_with_its_field_path_and_value() {
        let text = format!(
            "{GOOD}\n[ballista.scheduler]\nlisten = \"10.0.0.1:50050\"\n\
             [ballista.executor]\nlisten = \"0.0.0.0:50051\"\nallow_plaintext = true\n\
             scheduler = \"https://sched:50050\"\n"
        );
        let errors = parse(&text, "t").unwrap().validate();
        let all = errors.join("\n");
        for needle in [
            "ballista.scheduler.listen: \"10.0.0.1:50050\" is not a loopback address",
            "ballista.executor.advertise_host: required when listen is \"0.0.0.0:50051\"",
            "ballista.executor.scheduler: \"https://sched:50050\" is not http://host:port",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(errors.len(), 3, "{all}");
        let ok = format!(
            "{GOOD}\n[ballista.scheduler]\nlisten = \"10.0.0.1:50050\"\nallow_plaintext = true\n\
             [ballista.executor]\nlisten = \"0.0.0.0:50051\"\nadvertise_host = \"10.0.0.2\"\n\
             allow_plaintext = true\nscheduler = \"http://10.0.0.1:50050\"\n"
        );
        let errors = parse(&ok, "t").unwrap().validate();
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn a_scheduler_url_is_http_with_a_host_and_a_port() {
        assert_eq!(
            scheduler_host_port("http://10.0.0.1:50050"),
            Ok(("10.0.0.1".to_owned(), 50050))
        );
        assert_eq!(
            scheduler_host_port("http://[::1]:7/"),
            Ok(("::1".to_owned(), 7))
        );
        for bad in [
            "10.0.0.1:50050",
            "https://h:1",
            "http://h",
            "http://h:0",
            "http://:1",
            "http://h:x",
        ] {
            let e = scheduler_host_port(bad).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
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

    const H1: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const H2: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
    const H3: &str = "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9";

    fn with_node(node_toml: &str) -> Config {
        let text = format!(
            "[[ingest.nodes]]\n{node_toml}\n[storage]\nkind = \"local\"\npath = \"/tmp/x\"\n"
        );
        parse(&text, "t").unwrap()
    }

    #[test]
    fn a_node_takes_one_or_two_token_hashes_and_resolves_to_all_of_them() {
        let c = with_node(&format!(
            "node = \"a\"\ntoken_sha256 = [\"{H1}\", \"{H2}\"]"
        ));
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let (nodes, errors) = c.ingest.resolve_nodes();
        assert!(errors.is_empty());
        assert_eq!(nodes[0].token_sha256, [H1, H2]);
        let c = with_node(&format!("node = \"a\"\ntoken_sha256 = \"{H1}\""));
        assert_eq!(c.ingest.resolve_nodes().0[0].token_sha256, [H1]);
    }

    #[test]
    fn three_hashes_no_hash_both_sources_or_a_hash_of_two_nodes_are_refused() {
        let c = with_node(&format!(
            "node = \"a\"\ntoken_sha256 = [\"{H1}\", \"{H2}\", \"{H3}\"]"
        ));
        assert!(c.validate().join("\n").contains("3 hashes, must be 1 or 2"));
        let c = with_node("node = \"a\"");
        assert!(c.validate().join("\n").contains("neither token_sha256"));
        let c = with_node(&format!(
            "node = \"a\"\ntoken_sha256 = \"{H1}\"\ntoken_sha256_file = \"/x\""
        ));
        assert!(c.validate().join("\n").contains("both token_sha256"));
        let c = with_node(&format!(
            "node = \"a\"\ntoken_sha256 = \"{H1}\"\n[[ingest.nodes]]\nnode = \"b\"\n\
             token_sha256 = [\"{H2}\", \"{H1}\"]"
        ));
        let all = c.validate().join("\n");
        assert!(
            all.contains(&format!(
                "ingest.nodes[1].token_sha256: \"{H1}\" is listed twice"
            )),
            "{all}"
        );
    }

    #[test]
    fn a_device_allow_list_is_validated_and_resolved() {
        let c = with_node(&format!(
            "node = \"a\"\ntoken_sha256 = \"{H1}\"\ndevices = [\"dev-1\", \"x/y\", \"dev-1\"]"
        ));
        let all = c.validate().join("\n");
        assert!(all.contains("devices: \"x/y\" is not"), "{all}");
        assert!(all.contains("devices: \"dev-1\" is listed twice"), "{all}");
        let c = with_node(&format!(
            "node = \"a\"\ntoken_sha256 = \"{H1}\"\ndevices = []"
        ));
        assert!(c.validate().join("\n").contains("devices: empty"));
        let c = with_node(&format!(
            "node = \"a\"\ntoken_sha256 = \"{H1}\"\ndevices = [\"dev-1\", \"dev-2\"]"
        ));
        let nodes = c.ingest.resolve_nodes().0;
        let devices: Vec<_> = nodes[0].devices.iter().flatten().cloned().collect();
        assert_eq!(devices, ["dev-1", "dev-2"]);
    }

    #[test]
    fn timeouts_must_be_positive_and_the_body_one_within_the_request_one() {
        let mut c = parse(GOOD, "t").unwrap();
        c.ingest.header_timeout_ms = 0;
        c.ingest.body_timeout_ms = 5_000;
        c.ingest.request_timeout_ms = 1_000;
        c.ingest.max_connections = 0;
        let all = c.validate().join("\n");
        for needle in [
            "ingest.header_timeout_ms: 0",
            "ingest.body_timeout_ms: 5000, must not exceed request_timeout_ms (1000)",
            "ingest.max_connections: 0",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in\n{all}");
        }
    }

    #[test]
    fn plain_http_is_refused_beyond_loopback_unless_allowed_and_tls_needs_both_files() {
        let mut c = parse(GOOD, "t").unwrap();
        c.ingest.listen = "0.0.0.0:8480".into();
        let all = c.validate().join("\n");
        assert!(
            all.contains("ingest.listen: \"0.0.0.0:8480\" is not loopback"),
            "{all}"
        );
        c.ingest.listen = "[::1]:8480".into();
        assert!(c.validate().is_empty(), "IPv6 loopback");
        c.ingest.listen = "10.0.0.5:8480".into();
        c.ingest.allow_plain_http = true;
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        c.ingest.allow_plain_http = false;
        c.ingest.tls_key_file = Some("/k.pem".into());
        let all = c.validate().join("\n");
        assert!(
            all.contains("ingest.tls_key_file: /k.pem is set without tls_cert_file"),
            "{all}"
        );
        assert!(!all.contains("not loopback"), "one error, not two: {all}");
        c.ingest.tls_cert_file = Some("/nonexistent/cert.pem".into());
        let all = c.validate().join("\n");
        assert!(
            all.contains("ingest.tls_cert_file: certificate file /nonexistent/cert.pem"),
            "{all}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_token_file_is_refused_when_group_may_write_it_or_others_may_touch_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sha256");
        std::fs::write(&path, format!("{H1}\n{H2}\n")).unwrap();
        let c = with_node(&format!(
            "node = \"a\"\ntoken_sha256_file = \"{}\"",
            path.display()
        ));
        for (mode, ok) in [
            (0o600, true),
            (0o640, true),
            (0o644, false),
            (0o660, false),
            (0o604, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let errors = c.validate();
            assert_eq!(errors.is_empty(), ok, "mode {mode:o}: {errors:?}");
            if !ok {
                let all = errors.join("\n");
                assert!(all.contains(&path.display().to_string()), "{all}");
                assert!(all.contains(&format!("mode {mode:04o}")), "{all}");
            }
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(c.ingest.resolve_nodes().0[0].token_sha256, [H1, H2]);
    }

    fn s3(extra: &str) -> StorageConfig {
        let text = format!(
            "[[ingest.nodes]]\nnode = \"b\"\ntoken_sha256 = \"{H1}\"\n\
             [storage]\nkind = \"s3\"\nbucket = \"reflex\"\n{extra}"
        );
        parse(&text, "t").unwrap().storage
    }

    #[test]
    fn plain_http_to_s3_is_allowed_only_to_a_loopback_endpoint() {
        for ok in [
            "endpoint = \"http://127.0.0.1:9000\"\nallow_http = true",
            "endpoint = \"http://[::1]:9000/\"\nallow_http = true",
            "endpoint = \"http://localhost:9000\"\nallow_http = true",
            "endpoint = \"https://s3.example.net\"",
            "",
        ] {
            assert_eq!(s3(ok).errors(), Vec::<String>::new(), "{ok}");
        }
        let e = s3("endpoint = \"http://10.0.0.5:9000\"\nallow_http = true").errors();
        assert!(
            e[0].contains("storage.allow_http") && e[0].contains("10.0.0.5"),
            "{e:?}"
        );
        let e = s3("endpoint = \"http://127.0.0.1:9000\"").errors();
        assert!(
            e[0].contains("storage.endpoint") && e[0].contains("plain HTTP"),
            "{e:?}"
        );
        let e = s3("allow_http = true").errors();
        assert!(e[0].contains("without an endpoint"), "{e:?}");
        let e = s3("endpoint = \"ftp://x\"\nprefix = \"/a/\"").errors();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].contains("\"ftp://x\"") && e[1].contains("\"/a/\""),
            "{e:?}"
        );
    }

    #[test]
    fn s3_credentials_come_from_a_file_closed_to_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s3.toml");
        std::fs::write(
            &path,
            "access_key_id = \"AKID\"\nsecret_access_key = \"very-secret\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cfg = s3(&format!(
            "credentials_file = {:?}",
            path.display().to_string()
        ));
        let e = cfg.errors();
        assert!(
            e[0].contains("storage.credentials_file") && e[0].contains("0644"),
            "{e:?}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(cfg.errors(), Vec::<String>::new());
        let creds = S3Credentials::load(&path).unwrap();
        assert_eq!(creds.access_key_id, "AKID");
        assert!(!format!("{creds:?}").contains("very-secret"), "{creds:?}");
        std::fs::write(&path, "access_key_id = \"AKID\"\n").unwrap();
        let e = cfg.errors();
        assert!(e[0].contains("secret_access_key"), "{e:?}");
    }
}
