//! `reflex-cloud serve`: the HTTP ingest the boards' uploaders post batches to. It
//! implements exactly the contract in `reflex_journal::upload`:
//!
//! | check, in order | answer |
//! |---|---|
//! | `Authorization: Bearer <token>`: its SHA-256 compared in constant time with every configured hash; `X-Reflex-Node`, if sent, must be the token's node | 401 |
//! | `X-Reflex-Batch-Id` is 64 lowercase hex | 400 |
//! | `X-Reflex-Batch-Format`, if sent, is [`BATCH_FORMAT_VERSION`] | 415 (the board keeps the batch and retries) |
//! | body (`Content-Length`, or what arrives) within `max_body_bytes` | 413 |
//! | zstd frame, decompressed size within the journal's bound (else 413), batch format readable (else 415), decodes, hashes to the id, records' device ids and feature counts valid, header node is the token's, `X-Reflex-Records`, if sent, is the record count | 400 |
//! | stored before (its marker exists) | 200 `duplicate`, nothing written |
//! | every monitoring window of the batch decodes | 400 |
//! | every Parquet file and then the marker written durably ([`crate::storage`]) | 200 `stored` |
//! | storage failed | 500 (the uploader retries; no marker, so nothing counts as stored) |
//!
//! Nothing is written before every check has passed, so a 4xx stores nothing. Error bodies
//! are `{"error": "..."}` naming the bad value.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use reflex_models::FEATURE_COUNT;
use reflex_records::{
    decode_batch, AckStatus, BatchAck, DecodedBatch, FormatError, BATCHES_PATH,
    BATCH_FORMAT_HEADER, BATCH_FORMAT_VERSION, BATCH_ID_HEADER, NODE_HEADER, RECORDS_HEADER,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::IngestConfig;
use crate::layout::{valid_batch_id, valid_device_id};
use crate::storage::{Storage, StorageError, Stored};

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
    #[error("batch format {0}, this ingest reads {BATCH_FORMAT_VERSION}")]
    UnsupportedFormat(String),
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
    /// The batch does not decode, or its id does not match.
    #[error("corrupt batch: {0}")]
    Corrupt(#[source] FormatError),
    /// Decoded, but a record or the header is unacceptable.
    #[error("invalid batch: {0}")]
    Invalid(String),
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
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
            IngestError::TooLarge { .. } | IngestError::Corrupt(FormatError::TooLarge) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            IngestError::UnsupportedFormat(_)
            | IngestError::Corrupt(FormatError::BatchVersion(_)) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            IngestError::BadHeader { .. }
            | IngestError::Body(_)
            | IngestError::Corrupt(_)
            | IngestError::Invalid(_) => StatusCode::BAD_REQUEST,
            IngestError::Storage(_) | IngestError::Serve { .. } | IngestError::Task(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "ingest failed");
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
    /// Compressed bytes of stored batches.
    pub bytes_stored: AtomicU64,
    /// Requests answered 4xx.
    pub refused: AtomicU64,
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

/// The configured nodes and their token hashes.
#[derive(Debug, Clone)]
pub struct TokenTable {
    entries: Vec<(String, [u8; 32])>,
}

impl TokenTable {
    /// From the config's `ingest.nodes` (hashes already validated; a bad one never matches).
    pub fn new(nodes: &[crate::config::NodeToken]) -> TokenTable {
        TokenTable {
            entries: nodes
                .iter()
                .map(|n| (n.node.clone(), unhex32(&n.token_sha256).unwrap_or([0; 32])))
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
}

struct AppState {
    storage: Storage,
    tokens: TokenTable,
    max_body: usize,
    stats: Arc<IngestStats>,
}

/// The ingest server, bound and ready to [`run`](Ingest::run).
pub struct Ingest {
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<AppState>,
    grace: Duration,
}

impl Ingest {
    /// Binds `cfg.listen` (port 0: any free port; see [`Ingest::local_addr`]).
    pub async fn bind(cfg: &IngestConfig, storage: Storage) -> Result<Ingest, IngestError> {
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
                tokens: TokenTable::new(&cfg.nodes),
                max_body: cfg.max_body_bytes,
                stats: Arc::new(IngestStats::default()),
            }),
            grace: Duration::from_millis(cfg.grace_period_ms),
        })
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
        Router::new()
            .route(BATCHES_PATH, post(post_batch))
            .with_state(state)
    }

    /// Serves until `shutdown` is cancelled; then stops accepting, lets in-flight requests
    /// finish for the grace period, and aborts what is left (an aborted request wrote no
    /// marker, so its batch does not count as stored and the board re-sends it).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), IngestError> {
        let addr = self.addr;
        tracing::info!(%addr, storage = self.state.storage.description(), "ingest listening");
        let tracker = TaskTracker::new();
        let sd = shutdown.clone();
        let router = Ingest::router(self.state);
        let mut server = tracker.spawn(async move {
            axum::serve(self.listener, router)
                .with_graceful_shutdown(sd.cancelled_owned())
                .await
        });
        tracker.close();
        let joined = tokio::select! {
            r = &mut server => Some(r),
            _ = shutdown.cancelled() => None,
        };
        let joined = match joined {
            Some(r) => r,
            None => match tokio::time::timeout(self.grace, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(
                        grace_ms = self.grace.as_millis() as u64,
                        "grace period over; aborting in-flight requests"
                    );
                    server.abort();
                    tracker.wait().await;
                    return Ok(());
                }
            },
        };
        tracker.wait().await;
        joined
            .map_err(|e| IngestError::Task(e.to_string()))?
            .map_err(|source| IngestError::Serve {
                addr: addr.to_string(),
                source,
            })
    }
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

/// Checks on a decoded batch beyond what the format itself guarantees.
pub fn check_batch(batch: &DecodedBatch, node: &str) -> Result<(), IngestError> {
    if batch.header.node != node {
        return Err(IngestError::Invalid(format!(
            "batch header names node {:?}, the token is for {node:?}",
            batch.header.node
        )));
    }
    for (seq, r) in &batch.records {
        if !valid_device_id(&r.device) {
            return Err(IngestError::Invalid(format!(
                "record {seq}: device id {:?} is not 1-32 bytes of [A-Za-z0-9_.:-]",
                r.device
            )));
        }
        if r.features.len() != FEATURE_COUNT {
            return Err(IngestError::Invalid(format!(
                "record {seq}: {} features, expected {FEATURE_COUNT}",
                r.features.len()
            )));
        }
    }
    // Window summaries are decoded (once) when the batch's files are encoded, before
    // anything is written: one that does not decode is a 400 there (see `receive`).
    Ok(())
}

async fn post_batch(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<BatchAck>, IngestError> {
    s.stats.requests.fetch_add(1, Ordering::Relaxed);
    let result = handle(&s, &headers, body).await;
    if result.as_ref().is_err_and(|e| e.status().is_client_error()) {
        s.stats.refused.fetch_add(1, Ordering::Relaxed);
    }
    result.map(Json)
}

/// Most bytes of a refused request's body read and discarded before answering, so that a
/// client still sending gets the answer rather than a reset connection.
const DRAIN_CAP: usize = 64 << 20;

/// Reads and discards up to [`DRAIN_CAP`] bytes of a body.
async fn drain(body: Body) {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    while let Some(Ok(chunk)) = stream.next().await {
        seen += chunk.len();
        if seen > DRAIN_CAP {
            return;
        }
    }
}

async fn handle(s: &AppState, headers: &HeaderMap, body: Body) -> Result<BatchAck, IngestError> {
    let declared: Option<usize> = header_str(headers, "content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse().ok());
    match check_headers(s, headers, declared) {
        Ok(checked) => receive(s, headers, body, declared, checked).await,
        Err(e) => {
            if declared.is_some_and(|d| d <= DRAIN_CAP) {
                drain(body).await;
            }
            Err(e)
        }
    }
}

/// Everything that can be checked before reading the body: (node, batch id).
fn check_headers(
    s: &AppState,
    headers: &HeaderMap,
    declared: Option<usize>,
) -> Result<(String, String), IngestError> {
    let node = authenticate(&s.tokens, headers)?.to_owned();
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
        if v != BATCH_FORMAT_VERSION.to_string() {
            return Err(IngestError::UnsupportedFormat(format!("{v:?}")));
        }
    }
    if let Some(len) = declared.filter(|&l| l > s.max_body) {
        return Err(IngestError::TooLarge {
            bytes: len,
            limit: s.max_body,
        });
    }
    Ok((node, id))
}

async fn receive(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
    declared: Option<usize>,
    (node, id): (String, String),
) -> Result<BatchAck, IngestError> {
    let bytes = axum::body::to_bytes(body, s.max_body).await.map_err(|e| {
        if declared.is_none() {
            // Without a length, a body cut at the limit is the likely cause.
            IngestError::TooLarge {
                bytes: s.max_body + 1,
                limit: s.max_body,
            }
        } else {
            IngestError::Body(e.to_string())
        }
    })?;
    let compressed_len = bytes.len();
    let batch = {
        let id = id.clone();
        tokio::task::spawn_blocking(move || decode_batch(&bytes, Some(&id)))
            .await
            .map_err(|e| IngestError::Task(e.to_string()))?
            .map_err(IngestError::Corrupt)?
    };
    check_batch(&batch, &node)?;
    if let Some(n) = header_str(headers, RECORDS_HEADER)? {
        if n != batch.header.count.to_string() {
            return Err(IngestError::Invalid(format!(
                "{RECORDS_HEADER} says {n}, the batch has {} records",
                batch.header.count
            )));
        }
    }
    let records = batch.header.count;
    let stored = match s.storage.store_batch(Arc::new(batch)).await {
        // Found while encoding, before any write: the board's fault, nothing stored.
        Err(e @ StorageError::Window { .. }) => return Err(IngestError::Invalid(e.to_string())),
        other => other?,
    };
    let status = match stored {
        Stored::New => {
            s.stats.batches_stored.fetch_add(1, Ordering::Relaxed);
            s.stats
                .records_stored
                .fetch_add(u64::from(records), Ordering::Relaxed);
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeToken;

    #[test]
    fn a_token_maps_to_its_node_and_an_unknown_one_to_none() {
        let t = TokenTable::new(&[
            NodeToken {
                node: "a".into(),
                token_sha256: hash_token("alpha"),
            },
            NodeToken {
                node: "b".into(),
                token_sha256: hash_token("beta"),
            },
        ]);
        assert_eq!(t.node_of("alpha"), Some("a"));
        assert_eq!(t.node_of("beta"), Some("b"));
        assert_eq!(t.node_of("gamma"), None);
        assert_eq!(t.node_of(""), None);
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

    #[test]
    fn each_refusal_has_the_status_of_the_contract() {
        assert_eq!(IngestError::Unauthorized.status(), 401);
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
