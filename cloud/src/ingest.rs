//! `reflex-cloud serve`: the HTTP ingest the boards' uploaders post batches to. It
//! implements exactly the contract in `reflex_journal::upload`:
//!
//! | check, in order | answer |
//! |---|---|
//! | `Authorization: Bearer <token>`: its SHA-256 compared in constant time with every configured hash (one or two per node); `X-Reflex-Node`, if sent, must be the token's node | 401, **before any of the body is read** |
//! | `X-Reflex-Batch-Id` is 64 lowercase hex | 400 |
//! | `X-Reflex-Batch-Format`, if sent, is [`BATCH_FORMAT_VERSION`] or [`BATCH_FORMAT_VERSION_WITH_FEATURE_SETS`] | 415 (the board keeps the batch and retries) |
//! | body (`Content-Length`, or what arrives) within `max_body_bytes` | 413 |
//! | the whole body arrives within `body_timeout_ms` | 408 (connection closed) |
//! | `X-Reflex-Batch-Format`, if sent, is the body's own format (its first byte) | 400 `format_mismatch` |
//! | zstd frame, decompressed size within the journal's bound (else 413), batch format readable (else 415), decodes, hashes to the id, `X-Reflex-Records`, if sent, is the record count | 400 |
//! | `X-Reflex-Ack-Version` absent (an older board): every record valid ([`check_record`]) | 400 |
//! | the batch header and **every record** name the token's node; every record's device is in the node's `devices` allow-list, if it has one | 403 |
//! | stored before (its marker exists) | 200 `duplicate`, nothing written, the same `refused` list |
//! | every monitoring window of the batch decodes | 400 |
//! | `X-Reflex-Board-Clock-Us`, if sent, is a number | 400 |
//! | the valid records' Parquet files and then the marker written durably ([`crate::storage`]) | 200 `stored`; records that fail [`check_record`] are listed in `refused` (index, journal sequence, device, device sequence, reason) and not stored |
//! | storage failed | 500 (the uploader retries; no marker, so nothing counts as stored) |
//! | not answered within `request_timeout_ms` | 503 (the board retries) |
//!
//! Nothing is written before every check has passed, so a 4xx stores nothing. Error bodies
//! are `{"error": "..."}` naming the bad value. Each 4xx is counted by its kind in
//! `reflex_cloud_refusals_total{reason}` ([`IngestError::reason`]).
//!
//! # Per-record refusals
//!
//! A record the batch format reads but the cloud cannot store (a device id that cannot name a
//! path, no features because the board could not compute them, a number of features other
//! than its feature set names (the 13 demo features for a record without a set, see
//! `reflex_records`):
//! [`check_record`], reasons [`RefusalReason`]) does not sink its batch: to an uploader that
//! sends `X-Reflex-Ack-Version: 2` the ingest stores the other records and answers 200 with
//! the refused ones in the ack's `refused` list (ack body version 2, see
//! `reflex_journal::upload`). The board keeps those in its journal's dead-letter range. The
//! checks depend on the record alone, so a re-sent batch is refused the same way, and the
//! batch marker (written once, by id) keeps a retried batch from being stored twice; the
//! marker's `records` counts the records stored. An uploader without the header (a board
//! older than this) would take any 200 as an ack of every record, so it gets the 400 of
//! old for a batch with an invalid record. Counted in [`IngestStats::records_refused`].
//!
//! # Board clocks
//!
//! A record stamped at an implausible time (before `ingest.clock_not_before_unix_s`, by
//! default this build's date, or more than `ingest.clock_max_future_s` ahead) is stored
//! under `arrival at the ingest − its age on the board's clock` (the age from the board's
//! clock at sending, `X-Reflex-Board-Clock-Us`), flagged `clock_suspect`: see
//! [`crate::clock`]. Counted in [`IngestStats::records_clock_suspect`].
//!
//! # Why 403 for a node or device the token may not upload
//!
//! The board's uploader answers a 413 by dropping the batch and rebuilding it smaller; a
//! 400, 401 or 403 it retries with backoff, **keeping** the in-flight batch (a board older
//! than per-record refusals set a 400 batch aside and moved past it). A batch naming another node, or a device missing from the allow-list, is
//! a matter of configuration (the board's `node`, its token, or the cloud's `devices`), not
//! of corrupt bytes: once it is fixed the same batch goes through. So it is 403 (the token
//! is valid, it is not allowed this data), never 400: refusing it loses nothing on the
//! board. Each is counted in [`IngestStats::forbidden`] and logged at warn.
//!
//! # Holding the ingest
//!
//! The server is hyper's HTTP/1 on a loop of our own (not `axum::serve`, which sets no
//! timer, so no header timeout), over TLS when `tls_cert_file`/`tls_key_file` are set
//! ([`crate::tls`]):
//!
//! - With TLS, the handshake must complete within `header_timeout_ms`; a failed or late
//!   handshake closes the connection and is counted in
//!   [`IngestStats::tls_handshake_failures`].
//! - `max_connections` connections are served at once; the next waits in the listen
//!   backlog until one closes.
//! - The request head must arrive within `header_timeout_ms` (hyper's header read timeout,
//!   which also closes a keep-alive connection idle that long); else the connection is
//!   closed. Counted in [`IngestStats::timed_out`].
//! - An unauthenticated request is answered 401 on its headers alone; its body is never
//!   read (the connection is closed after the answer). An authenticated request refused
//!   before its body (400/413/415 on headers) has up to [`DRAIN_CAP`] of its body read and
//!   discarded, within the body timeout, so that the board gets the answer rather than a
//!   reset.
//! - The body must be complete within `body_timeout_ms` of the handler starting: a body
//!   dribbled in (slow loris) is cut off there with 408, whatever its pace. This is a
//!   deadline, not an idle timeout (tower-http's `RequestBodyTimeout` resets on every
//!   frame, so a byte a second keeps it alive).
//! - The whole request, storage included, must be answered within `request_timeout_ms`;
//!   else 503 and the handler is dropped between writes. The marker is the commit point:
//!   the batch counts as stored only if its marker was written, and the board's re-send is
//!   then answered `duplicate`; otherwise it is stored by the re-send.
//!
//! # Other routes
//!
//! `GET /metrics` (Prometheus text, [`crate::metrics`]) and `GET /healthz` are answered
//! without a token: they carry counts only, no node, device or token. Every answer of
//! every route is counted by status ([`IngestStats::responses`]).
//!
//! # The node table
//!
//! Each request is authenticated against the table current when it arrives
//! ([`crate::tokens::Tokens`]); `serve` replaces it on SIGHUP or when its files change.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use reflex_records::{
    decode_batch, AckStatus, BatchAck, DecodedBatch, FeatureSet, FormatError, JournalRecord,
    RefusalReason, RefusedRecord, ACK_VERSION, ACK_VERSION_HEADER, BATCHES_PATH,
    BATCH_FORMAT_HEADER, BATCH_FORMAT_VERSION, BATCH_FORMAT_VERSION_WITH_FEATURE_SETS,
    BATCH_ID_HEADER, BOARD_CLOCK_HEADER, NODE_HEADER, N_FEATURES, RECORDS_HEADER,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{ClockFix, ClockPolicy};
use crate::config::{IngestConfig, NodeAuth};
use crate::layout::{valid_batch_id, valid_device_id};
use crate::storage::{Storage, StorageError, Stored};
use crate::tokens::Tokens;

/// Why a request was refused, or the server failed. Each request error maps to one status.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No, or an unknown, bearer token.
    #[error("missing or unknown bearer token")]
    Unauthorized,
    /// A valid token used for another node.
    #[error("the token is not valid for node {node:?}")]
    WrongNode {
        /// The node the request named.
        node: String,
    },
    /// The batch header or a record names another node than the token's: 403, which the
    /// board retries keeping the batch (see the module doc).
    #[error("{what} names node {named:?}, the token is for {node:?}")]
    ForeignNode {
        /// `batch header` or `record <journal seq>`.
        what: String,
        /// The node it names.
        named: String,
        /// The token's node.
        node: String,
    },
    /// A record's device is not in its node's allow-list: 403, as [`IngestError::ForeignNode`].
    #[error("record {seq}: device {device:?} is not in the allow-list of node {node:?}")]
    DeviceNotAllowed {
        /// Journal sequence of the record.
        seq: u64,
        /// The device.
        device: String,
        /// The token's node.
        node: String,
    },
    /// A header is missing or malformed.
    #[error("header {name}: {problem}")]
    BadHeader {
        /// Header name.
        name: &'static str,
        /// What is wrong, with the value.
        problem: String,
    },
    /// A batch format this ingest does not read (a board newer or older than the cloud):
    /// 415, which the board retries with backoff, keeping the batch, until the cloud is
    /// upgraded; not 400, which would make it set the batch aside.
    #[error("batch format {0}, this ingest reads {BATCH_FORMAT_VERSION} and {BATCH_FORMAT_VERSION_WITH_FEATURE_SETS}")]
    UnsupportedFormat(String),
    /// `X-Reflex-Batch-Format` names another format than the body's own first byte: a
    /// board (or proxy) that labels its batches wrongly. 400, the batch is not read.
    #[error(
        "header {BATCH_FORMAT_HEADER} says batch format {header}, the body is batch format {body}"
    )]
    FormatMismatch {
        /// The header's format.
        header: u8,
        /// The body's format (its first byte once decompressed).
        body: u8,
    },
    /// Body over the limit.
    #[error("body of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size seen (or at least this).
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The body could not be read completely.
    #[error("body unreadable: {0}")]
    Body(String),
    /// The body did not arrive completely in time.
    #[error("body not complete within {ms} ms ({received} bytes received)")]
    BodyTimeout {
        /// `body_timeout_ms`.
        ms: u64,
        /// Bytes received by then.
        received: usize,
    },
    /// The request was not answered in time (storage slow).
    #[error("request not answered within {ms} ms")]
    RequestTimeout {
        /// `request_timeout_ms`.
        ms: u64,
    },
    /// The batch does not decode, or its id does not match.
    #[error("corrupt batch: {0}")]
    Corrupt(#[source] FormatError),
    /// Decoded, but a record or the header is unacceptable.
    #[error("invalid batch: {0}")]
    Invalid(String),
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The ingest configuration is unusable (e.g. a token file open to others).
    #[error("ingest configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// Binding or serving failed.
    #[error("server on {addr}: {source}")]
    Serve {
        /// Address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// A worker task died.
    #[error("ingest task failed: {0}")]
    Task(String),
}

impl IngestError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::Unauthorized | IngestError::WrongNode { .. } => StatusCode::UNAUTHORIZED,
            IngestError::ForeignNode { .. } | IngestError::DeviceNotAllowed { .. } => {
                StatusCode::FORBIDDEN
            }
            IngestError::TooLarge { .. } | IngestError::Corrupt(FormatError::TooLarge) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            IngestError::UnsupportedFormat(_)
            | IngestError::Corrupt(FormatError::BatchVersion(_)) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            IngestError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            IngestError::RequestTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            IngestError::BadHeader { .. }
            | IngestError::FormatMismatch { .. }
            | IngestError::Body(_)
            | IngestError::Corrupt(_)
            | IngestError::Invalid(_) => StatusCode::BAD_REQUEST,
            IngestError::Storage(_)
            | IngestError::Config(_)
            | IngestError::Serve { .. }
            | IngestError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IngestError {
    /// The refusal's reason, as `reflex_cloud_refusals_total{reason}` counts it: one name
    /// per kind of 4xx answer; `None` for the answers that are no refusal (5xx).
    pub fn reason(&self) -> Option<&'static str> {
        Some(match self {
            IngestError::Unauthorized => "unauthorized",
            IngestError::WrongNode { .. } => "wrong_node",
            IngestError::ForeignNode { .. } => "foreign_node",
            IngestError::DeviceNotAllowed { .. } => "device_not_allowed",
            IngestError::BadHeader { .. } => "bad_header",
            IngestError::UnsupportedFormat(_)
            | IngestError::Corrupt(FormatError::BatchVersion(_)) => "unsupported_format",
            IngestError::FormatMismatch { .. } => "format_mismatch",
            IngestError::TooLarge { .. } | IngestError::Corrupt(FormatError::TooLarge) => {
                "too_large"
            }
            IngestError::Body(_) => "body_unreadable",
            IngestError::BodyTimeout { .. } => "body_timeout",
            IngestError::Corrupt(_) => "corrupt",
            IngestError::Invalid(_) => "invalid",
            IngestError::RequestTimeout { .. }
            | IngestError::Storage(_)
            | IngestError::Config(_)
            | IngestError::Serve { .. }
            | IngestError::Task(_) => return None,
        })
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "ingest failed");
        } else if status == StatusCode::FORBIDDEN {
            tracing::warn!(error = %self, status = status.as_u16(), "batch refused");
        } else {
            tracing::info!(error = %self, status = status.as_u16(), "request refused");
        }
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

/// Counters, for the log and the benchmark.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Requests received.
    pub requests: AtomicU64,
    /// Batches stored (new).
    pub batches_stored: AtomicU64,
    /// Batches answered `duplicate`.
    pub batches_duplicate: AtomicU64,
    /// Records stored (new batches only).
    pub records_stored: AtomicU64,
    /// Records refused one by one (new batches only; the rest of their batch stored).
    pub records_refused: AtomicU64,
    /// Records stored under an arrival-based estimate because their board's timestamp was
    /// implausible (new batches only; [`crate::clock`]).
    pub records_clock_suspect: AtomicU64,
    /// Compressed bytes of stored batches.
    pub bytes_stored: AtomicU64,
    /// Requests answered 4xx.
    pub refused: AtomicU64,
    /// Of those, 403: a batch naming another node than its token's, or a device outside
    /// the node's allow-list.
    pub forbidden: AtomicU64,
    /// Requests and connections cut off by a timeout: head (connection closed), body (408)
    /// or whole request (503).
    pub timed_out: AtomicU64,
    /// TLS handshakes that failed or did not complete within `header_timeout_ms`.
    pub tls_handshake_failures: AtomicU64,
    /// Answers of every route, by HTTP status.
    pub responses: std::sync::Mutex<std::collections::BTreeMap<u16, u64>>,
    /// Upload requests answered 4xx, by [`IngestError::reason`].
    pub refusals: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl IngestStats {
    /// Counts one answer with this status.
    pub fn count_response(&self, status: u16) {
        let mut map = self.responses.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(status).or_default() += 1;
    }

    /// Answers by status so far.
    pub fn responses(&self) -> std::collections::BTreeMap<u16, u64> {
        self.responses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts one refused upload request by its reason.
    pub fn count_refusal(&self, reason: &'static str) {
        let mut map = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(reason).or_default() += 1;
    }

    /// Refused upload requests by reason so far.
    pub fn refusals(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// SHA-256 of a token as lowercase hex (what the config stores).
pub fn hash_token(token: &str) -> String {
    reflex_models::model::sha256_hex(token.as_bytes())
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The configured nodes, their token hashes (one or two each) and device allow-lists.
#[derive(Debug, Clone)]
pub struct TokenTable {
    entries: Vec<(String, [u8; 32])>,
    devices: HashMap<String, BTreeSet<String>>,
}

impl TokenTable {
    /// From resolved nodes ([`IngestConfig::resolve_nodes`]; hashes already validated, a bad
    /// one never matches).
    pub fn new(nodes: &[NodeAuth]) -> TokenTable {
        TokenTable {
            entries: nodes
                .iter()
                .flat_map(|n| {
                    n.token_sha256
                        .iter()
                        .map(|h| (n.node.clone(), unhex32(h).unwrap_or([0; 32])))
                })
                .collect(),
            devices: nodes
                .iter()
                .filter_map(|n| Some((n.node.clone(), n.devices.clone()?)))
                .collect(),
        }
    }

    /// The node whose token this is. Every entry is compared, in constant time each, so the
    /// time taken does not depend on which entry (if any) matches or on how much of a hash
    /// matches.
    pub fn node_of(&self, token: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (node, hash) in &self.entries {
            if bool::from(hash.ct_eq(&digest)) {
                found = Some(node.as_str());
            }
        }
        found
    }

    /// Whether `node` may upload records of `device` (no allow-list: any).
    pub fn device_allowed(&self, node: &str, device: &str) -> bool {
        self.devices.get(node).is_none_or(|d| d.contains(device))
    }
}

struct AppState {
    storage: Storage,
    clock: ClockPolicy,
    tokens: Arc<Tokens>,
    /// Where rescore runs land (their index feeds the "last rescore" metrics), if known.
    reports_dir: std::sync::OnceLock<std::path::PathBuf>,
    max_body: usize,
    body_timeout: Duration,
    request_timeout: Duration,
    stats: Arc<IngestStats>,
}

/// The ingest server, bound and ready to [`run`](Ingest::run).
pub struct Ingest {
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<AppState>,
    grace: Duration,
    header_timeout: Duration,
    max_connections: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Ingest {
    /// Binds `cfg.listen` (port 0: any free port; see [`Ingest::local_addr`]). Resolves the
    /// nodes first: a token file that is missing or open to others
    /// ([`crate::config::TOKEN_FILE_FORBIDDEN_MODE`]) is [`IngestError::Config`], and so is
    /// a TLS certificate or key that cannot be used ([`crate::tls`]).
    pub async fn bind(cfg: &IngestConfig, storage: Storage) -> Result<Ingest, IngestError> {
        let (nodes, errors) = cfg.resolve_nodes();
        if !errors.is_empty() {
            return Err(IngestError::Config(errors));
        }
        // `validate` reports this with every other error; checked again for embedders.
        let beyond_loopback = cfg
            .listen
            .parse::<SocketAddr>()
            .is_ok_and(|a| !a.ip().is_loopback());
        if beyond_loopback && cfg.tls().is_none() && !cfg.allow_plain_http {
            return Err(IngestError::Config(vec![format!(
                "ingest.listen: {:?} is not loopback and serves plain HTTP without \
                 allow_plain_http",
                cfg.listen
            )]));
        }
        let tls = match cfg.tls() {
            Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(
                crate::tls::server_config(cert, key)
                    .map_err(|e| IngestError::Config(vec![e.to_string()]))?,
            )),
            None => None,
        };
        let serve_err = |source| IngestError::Serve {
            addr: cfg.listen.clone(),
            source,
        };
        let listener = TcpListener::bind(&cfg.listen).await.map_err(serve_err)?;
        let addr = listener.local_addr().map_err(serve_err)?;
        Ok(Ingest {
            listener,
            addr,
            state: Arc::new(AppState {
                storage,
                clock: ClockPolicy {
                    not_before_us: cfg.clock_not_before_unix_s.saturating_mul(1_000_000),
                    max_future_us: cfg.clock_max_future_s.saturating_mul(1_000_000),
                },
                tokens: Tokens::new(TokenTable::new(&nodes), nodes.len()),
                reports_dir: std::sync::OnceLock::new(),
                max_body: cfg.max_body_bytes,
                body_timeout: Duration::from_millis(cfg.body_timeout_ms),
                request_timeout: Duration::from_millis(cfg.request_timeout_ms),
                stats: Arc::new(IngestStats::default()),
            }),
            grace: Duration::from_millis(cfg.grace_period_ms),
            header_timeout: Duration::from_millis(cfg.header_timeout_ms),
            max_connections: cfg.max_connections.max(1),
            tls,
        })
    }

    /// Whether this ingest speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The node table, to reload it ([`crate::tokens::watch`]).
    pub fn tokens(&self) -> Arc<Tokens> {
        self.state.tokens.clone()
    }

    /// Where rescore runs are written: `/metrics` then reports the last run from its
    /// `index.json` ([`crate::runs`]).
    pub fn with_reports_dir(self, dir: std::path::PathBuf) -> Ingest {
        let _ = self.state.reports_dir.set(dir);
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters.
    pub fn stats(&self) -> Arc<IngestStats> {
        self.state.stats.clone()
    }

    /// The routes, for embedding in another server.
    fn router(state: Arc<AppState>) -> Router {
        let stats = state.stats.clone();
        Router::new()
            .route(BATCHES_PATH, post(post_batch))
            .route("/metrics", get(get_metrics))
            .route("/healthz", get(get_healthz))
            .with_state(state)
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let stats = stats.clone();
                    async move {
                        let response = next.run(req).await;
                        stats.count_response(response.status().as_u16());
                        response
                    }
                },
            ))
    }

    /// Serves until `shutdown` is cancelled; then stops accepting, lets in-flight requests
    /// finish for the grace period, and aborts what is left (an aborted request wrote no
    /// marker, so its batch does not count as stored and the board re-sends it).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), IngestError> {
        let addr = self.addr;
        tracing::info!(
            %addr,
            scheme = if self.tls.is_some() { "https" } else { "http" },
            storage = self.state.storage.description(),
            max_connections = self.max_connections,
            "ingest listening"
        );
        let stats = self.state.stats.clone();
        let router = Ingest::router(self.state);
        let permits = Arc::new(Semaphore::new(self.max_connections));
        let connections = TaskTracker::new();
        // Cancelled when the grace period is over: every connection still open is dropped.
        let abort = CancellationToken::new();
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = shutdown.cancelled() => break,
            };
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = shutdown.cancelled() => break,
            };
            let stream = match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin,
                    // as axum::serve does.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(router.clone());
            let (shutdown, abort, stats) = (shutdown.clone(), abort.clone(), stats.clone());
            let header_timeout = self.header_timeout;
            let tls = self.tls.clone();
            connections.spawn(async move {
                let _permit = permit;
                let Some(acceptor) = tls else {
                    let io = TokioIo::new(stream);
                    return serve_connection(io, service, header_timeout, shutdown, abort, stats)
                        .await;
                };
                let handshake = tokio::select! {
                    h = tokio::time::timeout(header_timeout, acceptor.accept(stream)) => h,
                    _ = shutdown.cancelled() => return,
                };
                match handshake {
                    Ok(Ok(tls_stream)) => {
                        let io = TokioIo::new(tls_stream);
                        serve_connection(io, service, header_timeout, shutdown, abort, stats).await
                    }
                    Ok(Err(e)) => {
                        stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("TLS handshake not complete in time");
                    }
                }
            });
        }
        drop(self.listener);
        connections.close();
        if tokio::time::timeout(self.grace, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_ms = self.grace.as_millis() as u64,
                "grace period over; aborting in-flight requests"
            );
            abort.cancel();
            connections.wait().await;
        }
        Ok(())
    }
}

/// Serves HTTP/1 on one connection (plain or TLS) until it ends; on `shutdown` lets the
/// request under way finish, until `abort`.
async fn serve_connection<I>(
    io: TokioIo<I>,
    service: TowerToHyperService<Router>,
    header_timeout: Duration,
    shutdown: CancellationToken,
    abort: CancellationToken,
    stats: Arc<IngestStats>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                _ = abort.cancelled() => return,
            }
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
            tracing::info!("connection closed: request head not complete in time");
        } else {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// `GET /metrics`: the counters, the node table and the last rescore run, as Prometheus
/// text ([`crate::metrics`]).
async fn get_metrics(State(s): State<Arc<AppState>>) -> Response {
    let last_run = match s.reports_dir.get() {
        Some(dir) => {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || crate::runs::last_run(&dir))
                .await
                .ok()
                .flatten()
        }
        None => None,
    };
    let text = crate::metrics::render(&crate::metrics::Snapshot::of(
        &s.stats,
        &s.tokens,
        last_run.as_ref(),
    ));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        text,
    )
        .into_response()
}

/// `GET /healthz`: 200 while the server runs (liveness; no token needed).
async fn get_healthz(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "nodes": s.tokens.nodes() }))
}

/// Accept errors that concern one connection only (the peer gave up before the accept).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

fn header_str<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<Option<&'a str>, IngestError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| IngestError::BadHeader {
                name,
                problem: "not visible ascii".into(),
            })
        })
        .transpose()
}

/// Authentication: the node the token belongs to.
fn authenticate<'a>(tokens: &'a TokenTable, headers: &HeaderMap) -> Result<&'a str, IngestError> {
    let auth = header_str(headers, "authorization")
        .map_err(|_| IngestError::Unauthorized)?
        .ok_or(IngestError::Unauthorized)?;
    let token = auth
        .strip_prefix("Bearer ")
        .ok_or(IngestError::Unauthorized)?;
    let node = tokens
        .node_of(token.trim())
        .ok_or(IngestError::Unauthorized)?;
    if let Some(claimed) =
        header_str(headers, NODE_HEADER).map_err(|_| IngestError::Unauthorized)?
    {
        if claimed != node {
            return Err(IngestError::WrongNode {
                node: claimed.to_owned(),
            });
        }
    }
    Ok(node)
}

/// Why one decoded record cannot be stored (pure): `None` when it can. `set` is the
/// record's feature set (`None`: the [`N_FEATURES`] demo features); its features must be
/// exactly as many as the set names.
pub fn check_record(r: &JournalRecord, set: Option<&FeatureSet>) -> Option<RefusalReason> {
    let expected = set.map_or(N_FEATURES, |s| s.names.len());
    if !valid_device_id(&r.device) {
        Some(RefusalReason::DeviceId)
    } else if r.features.is_empty() {
        Some(RefusalReason::FeaturesMissing)
    } else if r.features.len() != expected {
        Some(RefusalReason::FeatureCount)
    } else {
        None
    }
}

/// The records of `batch` that cannot be stored, with why, in batch order (pure; the same
/// batch always gives the same answer, which is what makes a re-sent batch's refusals
/// idempotent).
pub fn refusals(batch: &DecodedBatch) -> Vec<RefusedRecord> {
    batch
        .records
        .iter()
        .enumerate()
        .filter_map(|(index, (journal_seq, r))| {
            check_record(r, batch.feature_set(index)).map(|reason| RefusedRecord {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                journal_seq: *journal_seq,
                device: r.device.clone(),
                seq: r.seq,
                reason,
            })
        })
        .collect()
}

/// The whole-batch check for an uploader that does not read per-record refusals (no
/// [`ACK_VERSION_HEADER`]): the first invalid record makes the batch a 400, as before.
pub fn check_batch(batch: &DecodedBatch) -> Result<(), IngestError> {
    match refusals(batch).first() {
        None => Ok(()),
        Some(r) => Err(IngestError::Invalid(match r.reason {
            RefusalReason::DeviceId => format!(
                "record {}: device id {:?} is not 1-32 bytes of [A-Za-z0-9_.:-]",
                r.journal_seq, r.device
            ),
            RefusalReason::FeaturesMissing | RefusalReason::FeatureCount => format!(
                "record {}: {} features, expected {}",
                r.journal_seq,
                batch.records[r.index as usize].1.features.len(),
                batch
                    .feature_set(r.index as usize)
                    .map_or(N_FEATURES, |s| s.names.len())
            ),
        })),
    }
}

/// `batch` without the `refused` records (what is stored): the header's `count` becomes the
/// number of records kept (the marker's `records`); the id, sequence range and windows stay.
pub fn without_refused(mut batch: DecodedBatch, refused: &[RefusedRecord]) -> DecodedBatch {
    if refused.is_empty() {
        return batch;
    }
    let dropped: BTreeSet<usize> = refused.iter().map(|r| r.index as usize).collect();
    let all = batch.records.len();
    retain_kept(&mut batch.records, &dropped);
    // The per-record lists stay aligned with the records (a list of another length, from
    // a batch built by hand, is left as it is).
    if batch.record_sets.len() == all {
        retain_kept(&mut batch.record_sets, &dropped);
    }
    if batch.decisions.len() == all {
        retain_kept(&mut batch.decisions, &dropped);
    }
    batch.header.count = u32::try_from(batch.records.len()).unwrap_or(u32::MAX);
    batch
}

/// Keeps the items of `v` whose index is not in `dropped`.
fn retain_kept<T>(v: &mut Vec<T>, dropped: &BTreeSet<usize>) {
    let mut index = 0usize;
    v.retain(|_| {
        let keep = !dropped.contains(&index);
        index += 1;
        keep
    });
}

/// The board's clock at sending ([`BOARD_CLOCK_HEADER`]), if sent.
fn board_clock(headers: &HeaderMap) -> Result<Option<u64>, IngestError> {
    header_str(headers, BOARD_CLOCK_HEADER)?
        .map(|v| {
            v.parse::<u64>().map_err(|_| IngestError::BadHeader {
                name: BOARD_CLOCK_HEADER,
                problem: format!("{v:?} is not µs since the Unix epoch"),
            })
        })
        .transpose()
}

fn unix_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Per record of `batch`, where to file it if its board timestamp is implausible (pure).
pub fn clock_fixes(
    policy: &ClockPolicy,
    batch: &DecodedBatch,
    board_clock_us: Option<u64>,
    received_us: u64,
) -> Vec<Option<ClockFix>> {
    batch
        .records
        .iter()
        .map(|(_, r)| policy.fix(r.arrival_unix_us, board_clock_us, received_us))
        .collect()
}

/// Whether the uploader reads per-record refusals ([`ACK_VERSION_HEADER`] ≥ 2).
fn reads_refusals(headers: &HeaderMap) -> Result<bool, IngestError> {
    match header_str(headers, ACK_VERSION_HEADER)? {
        None => Ok(false),
        Some(v) => v
            .parse::<u32>()
            .map(|v| v >= 2)
            .map_err(|_| IngestError::BadHeader {
                name: ACK_VERSION_HEADER,
                problem: format!("{v:?} is not a version number"),
            }),
    }
}

/// Whether the token's `node` may upload this batch (403 when not): the batch header (which
/// also names the node of its monitoring windows) and every record name `node`, and every
/// record's device is in the node's allow-list, if it has one.
pub fn check_allowed(
    batch: &DecodedBatch,
    node: &str,
    tokens: &TokenTable,
) -> Result<(), IngestError> {
    if batch.header.node != node {
        return Err(IngestError::ForeignNode {
            what: "batch header".into(),
            named: batch.header.node.clone(),
            node: node.to_owned(),
        });
    }
    for (seq, r) in &batch.records {
        if r.node != node {
            return Err(IngestError::ForeignNode {
                what: format!("record {seq}"),
                named: r.node.clone(),
                node: node.to_owned(),
            });
        }
        if !tokens.device_allowed(node, &r.device) {
            return Err(IngestError::DeviceNotAllowed {
                seq: *seq,
                device: r.device.clone(),
                node: node.to_owned(),
            });
        }
    }
    Ok(())
}

async fn post_batch(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<BatchAck>, IngestError> {
    s.stats.requests.fetch_add(1, Ordering::Relaxed);
    let result = match tokio::time::timeout(s.request_timeout, handle(&s, &headers, body)).await {
        Ok(r) => r,
        Err(_) => Err(IngestError::RequestTimeout {
            ms: s.request_timeout.as_millis() as u64,
        }),
    };
    if let Err(e) = &result {
        let status = e.status();
        if status.is_client_error() {
            s.stats.refused.fetch_add(1, Ordering::Relaxed);
            if let Some(reason) = e.reason() {
                s.stats.count_refusal(reason);
            }
        }
        if status == StatusCode::FORBIDDEN {
            s.stats.forbidden.fetch_add(1, Ordering::Relaxed);
        }
        if matches!(
            e,
            IngestError::BodyTimeout { .. } | IngestError::RequestTimeout { .. }
        ) {
            s.stats.timed_out.fetch_add(1, Ordering::Relaxed);
        }
    }
    result.map(Json)
}

/// Most bytes of a refused, authenticated request's body read and discarded before
/// answering, so that a board still sending gets the answer rather than a reset
/// connection. An unauthenticated request's body is never read.
pub const DRAIN_CAP: usize = 64 << 20;

/// Reads and discards up to [`DRAIN_CAP`] bytes of a body, for at most `within`.
async fn drain(body: Body, within: Duration) {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    let _ = tokio::time::timeout(within, async {
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > DRAIN_CAP {
                return;
            }
        }
    })
    .await;
}

async fn handle(s: &AppState, headers: &HeaderMap, body: Body) -> Result<BatchAck, IngestError> {
    let declared: Option<usize> = header_str(headers, "content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse().ok());
    // Authentication on the headers alone: a stranger's body is never read (hyper closes
    // the connection after the answer, since the body was left unread).
    let tokens = s.tokens.current();
    let node = authenticate(&tokens, headers)?.to_owned();
    match check_headers(s, headers, declared) {
        Ok(id) => receive(s, &tokens, headers, body, declared, node, id).await,
        Err(e) => {
            if declared.is_some_and(|d| d <= DRAIN_CAP) {
                drain(body, s.body_timeout).await;
            }
            Err(e)
        }
    }
}

/// Everything else that can be checked before reading the body: the batch id.
fn check_headers(
    s: &AppState,
    headers: &HeaderMap,
    declared: Option<usize>,
) -> Result<String, IngestError> {
    let id = header_str(headers, BATCH_ID_HEADER)?
        .ok_or_else(|| IngestError::BadHeader {
            name: BATCH_ID_HEADER,
            problem: "missing".into(),
        })?
        .to_owned();
    if !valid_batch_id(&id) {
        return Err(IngestError::BadHeader {
            name: BATCH_ID_HEADER,
            problem: format!("{id:?} is not 64 lowercase hex digits"),
        });
    }
    if let Some(v) = header_str(headers, BATCH_FORMAT_HEADER)? {
        if v != BATCH_FORMAT_VERSION.to_string()
            && v != BATCH_FORMAT_VERSION_WITH_FEATURE_SETS.to_string()
        {
            return Err(IngestError::UnsupportedFormat(format!("{v:?}")));
        }
    }
    if let Some(len) = declared.filter(|&l| l > s.max_body) {
        return Err(IngestError::TooLarge {
            bytes: len,
            limit: s.max_body,
        });
    }
    Ok(id)
}

/// `X-Reflex-Batch-Format`, when sent (and already one this ingest reads), is the body's
/// own format: its first byte, read by decompressing no further. A body that is no zstd
/// frame is left to the decoder, which names that problem.
fn check_declared_format(headers: &HeaderMap, compressed: &[u8]) -> Result<(), IngestError> {
    let Some(header) = header_str(headers, BATCH_FORMAT_HEADER)?.and_then(|v| v.parse().ok())
    else {
        return Ok(());
    };
    match reflex_records::batch_format_of(compressed) {
        Some(body) if body != header => Err(IngestError::FormatMismatch { header, body }),
        _ => Ok(()),
    }
}

async fn receive(
    s: &AppState,
    tokens: &TokenTable,
    headers: &HeaderMap,
    body: Body,
    declared: Option<usize>,
    node: String,
    id: String,
) -> Result<BatchAck, IngestError> {
    let bytes = read_body(body, s.max_body, s.body_timeout, declared).await?;
    let compressed_len = bytes.len();
    check_declared_format(headers, &bytes)?;
    let batch = {
        let id = id.clone();
        tokio::task::spawn_blocking(move || decode_batch(&bytes, Some(&id)))
            .await
            .map_err(|e| IngestError::Task(e.to_string()))?
            .map_err(IngestError::Corrupt)?
    };
    let per_record = reads_refusals(headers)?;
    if !per_record {
        check_batch(&batch)?;
    }
    if let Some(n) = header_str(headers, RECORDS_HEADER)? {
        if n != batch.header.count.to_string() {
            return Err(IngestError::Invalid(format!(
                "{RECORDS_HEADER} says {n}, the batch has {} records",
                batch.header.count
            )));
        }
    }
    check_allowed(&batch, &node, tokens)?;
    let records = batch.header.count;
    let refused = if per_record {
        refusals(&batch)
    } else {
        Vec::new()
    };
    let batch = without_refused(batch, &refused);
    let kept = batch.header.count;
    let fixes = clock_fixes(&s.clock, &batch, board_clock(headers)?, unix_now_us());
    let suspect = fixes.iter().flatten().count() as u64;
    let stored = match s.storage.store_batch_clocked(Arc::new(batch), fixes).await {
        // Found while encoding, before any write: the board's fault, nothing stored.
        Err(e @ StorageError::Window { .. }) => return Err(IngestError::Invalid(e.to_string())),
        other => other?,
    };
    let status = match stored {
        Stored::New => {
            s.stats.batches_stored.fetch_add(1, Ordering::Relaxed);
            s.stats
                .records_stored
                .fetch_add(u64::from(kept), Ordering::Relaxed);
            s.stats
                .records_refused
                .fetch_add(refused.len() as u64, Ordering::Relaxed);
            s.stats
                .records_clock_suspect
                .fetch_add(suspect, Ordering::Relaxed);
            if !refused.is_empty() {
                tracing::warn!(batch = %id, %node, refused = refused.len(), first_reason = refused[0].reason.as_str(), "records refused; the rest of the batch stored");
            }
            s.stats
                .bytes_stored
                .fetch_add(compressed_len as u64, Ordering::Relaxed);
            tracing::debug!(batch = %id, %node, records, "batch stored");
            AckStatus::Stored
        }
        Stored::Duplicate => {
            s.stats.batches_duplicate.fetch_add(1, Ordering::Relaxed);
            AckStatus::Duplicate
        }
    };
    Ok(BatchAck {
        batch_id: id,
        status,
        records,
        version: ACK_VERSION,
        refused,
    })
}

/// The whole body, at most `limit` bytes, complete within `within`.
async fn read_body(
    body: Body,
    limit: usize,
    within: Duration,
    declared: Option<usize>,
) -> Result<bytes::Bytes, IngestError> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    let read = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| IngestError::Body(e.to_string()))?;
            if buf.len() + chunk.len() > limit {
                return Err(IngestError::TooLarge {
                    bytes: buf.len() + chunk.len(),
                    limit,
                });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(within, read).await {
        Ok(r) => r.map(|()| buf.freeze()),
        Err(_) => Err(IngestError::BodyTimeout {
            ms: within.as_millis() as u64,
            received: buf.len(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, tokens: &[&str], devices: Option<&[&str]>) -> NodeAuth {
        NodeAuth {
            node: name.into(),
            token_sha256: tokens.iter().map(|t| hash_token(t)).collect(),
            devices: devices.map(|d| d.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn a_token_maps_to_its_node_and_an_unknown_one_to_none() {
        let t = TokenTable::new(&[
            node("a", &["alpha"], None),
            node("b", &["beta", "beta-next"], None),
        ]);
        assert_eq!(t.node_of("alpha"), Some("a"));
        assert_eq!(t.node_of("beta"), Some("b"));
        assert_eq!(t.node_of("beta-next"), Some("b"), "either of two hashes");
        assert_eq!(t.node_of("gamma"), None);
        assert_eq!(t.node_of(""), None);
    }

    #[test]
    fn a_device_allow_list_admits_only_its_devices_and_no_list_admits_any() {
        let t = TokenTable::new(&[
            node("a", &["alpha"], Some(&["dev-1"])),
            node("b", &["beta"], None),
        ]);
        assert!(t.device_allowed("a", "dev-1"));
        assert!(!t.device_allowed("a", "dev-2"));
        assert!(t.device_allowed("b", "anything"));
    }

    #[test]
    fn the_token_hash_is_sha256_hex() {
        assert_eq!(
            hash_token("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert_eq!(unhex32(&hash_token("x")).map(|h| h.len()), Some(32));
        assert_eq!(unhex32("zz"), None);
    }

    const FEATURE_COUNT: usize = N_FEATURES;

    fn rec(device: &str, seq: u64, features: usize) -> JournalRecord {
        JournalRecord {
            node: "a".into(),
            device: device.into(),
            seq,
            arrival_unix_us: 1_767_225_600_000_000,
            payload: vec![1],
            model_input: vec![0.0; 4],
            features: vec![0.5; features],
            logits: vec![],
            class: 0,
            command: vec![],
            model: reflex_records::ModelId {
                name: "m".into(),
                version: "1".into(),
            },
            source: reflex_records::DecisionSource::Fallback,
            timings: Default::default(),
            outcome: reflex_records::DeadlineOutcome::OnTime,
        }
    }

    fn decoded(records: Vec<JournalRecord>) -> DecodedBatch {
        DecodedBatch {
            id: "0".repeat(64),
            header: reflex_records::BatchHeader {
                node: "a".into(),
                first_seq: 10,
                last_seq: 10 + records.len() as u64 - 1,
                count: records.len() as u32,
                windows: 0,
            },
            records: records
                .into_iter()
                .enumerate()
                .map(|(i, r)| (10 + i as u64, r))
                .collect(),
            windows: vec![],
            feature_sets: vec![],
            record_sets: vec![],
            decisions: vec![],
        }
    }

    #[test]
    fn each_bad_record_is_refused_by_its_own_reason() {
        assert_eq!(check_record(&rec("dev-1", 1, FEATURE_COUNT), None), None);
        assert_eq!(
            check_record(&rec("dev/1", 1, FEATURE_COUNT), None),
            Some(RefusalReason::DeviceId)
        );
        assert_eq!(
            check_record(&rec("dev-1", 1, 0), None),
            Some(RefusalReason::FeaturesMissing)
        );
        assert_eq!(
            check_record(&rec("dev-1", 1, 3), None),
            Some(RefusalReason::FeatureCount)
        );
    }

    #[test]
    fn a_record_with_a_feature_set_needs_as_many_features_as_it_names() {
        let set = FeatureSet {
            model: reflex_records::ModelId {
                name: "motor".into(),
                version: "1".into(),
            },
            names: vec!["rms_current".into(), "rms_temperature".into(), "t".into()],
        };
        assert_eq!(check_record(&rec("dev-1", 1, 3), Some(&set)), None);
        assert_eq!(
            check_record(&rec("dev-1", 1, FEATURE_COUNT), Some(&set)),
            Some(RefusalReason::FeatureCount)
        );
        assert_eq!(
            check_record(&rec("dev-1", 1, 0), Some(&set)),
            Some(RefusalReason::FeaturesMissing)
        );
        let mut b = decoded(vec![
            rec("dev-1", 100, 3),
            rec("dev-2", 200, FEATURE_COUNT),
            rec("dev-3", 300, 2),
        ]);
        b.feature_sets = vec![set];
        b.record_sets = vec![Some(0), None, Some(0)];
        b.decisions = vec![None; 3];
        let refused = refusals(&b);
        assert_eq!(
            refused
                .iter()
                .map(|r| (r.index, r.reason))
                .collect::<Vec<_>>(),
            [(2, RefusalReason::FeatureCount)]
        );
        assert!(check_batch(&b)
            .unwrap_err()
            .to_string()
            .contains("record 12: 2 features, expected 3"));
        let kept = without_refused(b, &refused);
        assert_eq!(
            kept.record_sets,
            [Some(0), None],
            "aligned with the records"
        );
        assert_eq!(kept.feature_set(0).map(|s| s.names.len()), Some(3));
        assert_eq!(kept.feature_set(1), None);
    }

    #[test]
    fn refusals_name_index_sequences_and_reason_and_the_rest_is_kept() {
        let b = decoded(vec![
            rec("dev-1", 100, FEATURE_COUNT),
            rec("dev-2", 200, 0),
            rec("dev-3", 300, FEATURE_COUNT),
            rec("bad id", 400, FEATURE_COUNT),
        ]);
        let refused = refusals(&b);
        assert_eq!(
            refused,
            vec![
                RefusedRecord {
                    index: 1,
                    journal_seq: 11,
                    device: "dev-2".into(),
                    seq: 200,
                    reason: RefusalReason::FeaturesMissing,
                },
                RefusedRecord {
                    index: 3,
                    journal_seq: 13,
                    device: "bad id".into(),
                    seq: 400,
                    reason: RefusalReason::DeviceId,
                },
            ]
        );
        assert_eq!(refusals(&b), refused, "the same batch, the same answer");
        assert!(check_batch(&b)
            .unwrap_err()
            .to_string()
            .contains("record 11"));
        let kept = without_refused(b, &refused);
        assert_eq!(kept.header.count, 2);
        assert_eq!((kept.header.first_seq, kept.header.last_seq), (10, 13));
        let seqs: Vec<u64> = kept.records.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [10, 12]);
    }

    #[test]
    fn the_ack_version_header_says_whether_refusals_are_read() {
        let mut h = HeaderMap::new();
        assert!(!reads_refusals(&h).unwrap());
        h.insert(ACK_VERSION_HEADER, "2".parse().unwrap());
        assert!(reads_refusals(&h).unwrap());
        h.insert(ACK_VERSION_HEADER, "1".parse().unwrap());
        assert!(!reads_refusals(&h).unwrap());
        h.insert(ACK_VERSION_HEADER, "two".parse().unwrap());
        assert_eq!(reads_refusals(&h).unwrap_err().status(), 400);
    }

    #[test]
    fn each_refusal_has_the_status_of_the_contract() {
        assert_eq!(IngestError::Unauthorized.status(), 401);
        let foreign = IngestError::ForeignNode {
            what: "record 3".into(),
            named: "b".into(),
            node: "a".into(),
        };
        assert_eq!(foreign.status(), 403, "kept and retried by the board");
        let device = IngestError::DeviceNotAllowed {
            seq: 3,
            device: "d".into(),
            node: "a".into(),
        };
        assert_eq!(device.status(), 403);
        let late = IngestError::BodyTimeout { ms: 1, received: 0 };
        assert_eq!(late.status(), 408);
        assert_eq!(IngestError::RequestTimeout { ms: 1 }.status(), 503);
        assert_eq!(IngestError::TooLarge { bytes: 2, limit: 1 }.status(), 413);
        assert_eq!(IngestError::Corrupt(FormatError::TooLarge).status(), 413);
        assert_eq!(IngestError::Corrupt(FormatError::Empty).status(), 400);
        assert_eq!(IngestError::Invalid("x".into()).status(), 400);
        assert_eq!(IngestError::UnsupportedFormat("\"1\"".into()).status(), 415);
        assert_eq!(
            IngestError::Corrupt(FormatError::BatchVersion(1)).status(),
            415
        );
        assert_eq!(IngestError::Task("x".into()).status(), 500);
    }
}
