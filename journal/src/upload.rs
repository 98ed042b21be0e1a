//! The bulk uploader: ships the journal to the cloud ingest in compressed, content-addressed
//! batches, exactly once in effect.
//!
//! # How a batch goes out
//!
//! 1. A cursor reads the records after the upload watermark, bounded by count and bytes
//!    ([`BatchPolicy`]); it waits for more unless the batch is full or its oldest record is
//!    older than `max_age`.
//! 2. The batch is encoded ([`crate::record::encode_batch`]), zstd-compressed and named by
//!    the sha256 of its uncompressed body. The id, sequence range and compressed bytes are
//!    persisted (journal meta `inflight`, fsynced) **before** the first send, so a restart
//!    re-sends the same bytes under the same id, whatever the quota deleted meanwhile.
//! 3. POST; only a 2xx whose JSON body names the same batch id counts as an ack. Then the
//!    watermark advances and the in-flight batch is cleared in one sled batch, and the
//!    uploaded records are deleted (unless `keep_uploaded`).
//! 4. Failures retry with exponential backoff and full jitter ([`Backoff`]); an optional
//!    token bucket caps bandwidth ([`TokenBucket`]) and an optional daily window
//!    ([`UploadWindow`]) says when uploads may run.
//!
//! # HTTP contract (the cloud ingest implements exactly this)
//!
//! ```text
//! POST {base_url}/v1/batches
//! Authorization: Bearer <device token>
//! Content-Type: application/vnd.reflex.batch+zstd
//! X-Reflex-Batch-Id: <64 lowercase hex: sha256 of the uncompressed body>
//! X-Reflex-Batch-Format: <the body's batch format version: 2, or 3 with feature sets>
//! X-Reflex-Node: <node>
//! X-Reflex-Records: <record count>
//! X-Reflex-Ack-Version: 2
//! X-Reflex-Board-Clock-Us: <the board's wall clock at sending, µs since the Unix epoch>
//! body: one zstd frame of the batch body (see crate::record)
//! ```
//!
//! | status | meaning | body | uploader does |
//! |---|---|---|---|
//! | 200 | stored durably, or already stored (duplicate id); records the cloud cannot store are listed in `refused` and not stored | `{"batch_id": "<id>", "status": "stored" \| "duplicate", "records": n, "version": 2, "refused": [{"index": i, "journal_seq": s, "device": "<id>", "seq": n, "reason": "<reason>"}]}` | files the refused records in the journal's dead-letter range (synced), then acks: advances the watermark, deletes the batch's records; a full dead-letter range: acks nothing, retries with backoff |
//! | 400 | the whole request unreadable: not zstd, does not decode, or id mismatch; nothing stored | `{"error": "..."}` | keeps the batch (nothing deleted), counts it, retries with backoff |
//! | 401 | missing or wrong bearer token; nothing stored | `{"error": "..."}` | retries with backoff (token may be fixed) |
//! | 403 | the token's node may not send this batch (a record names another node, or a device outside the node's allow-list); nothing stored | `{"error": "..."}` | keeps the batch and retries with backoff, like 401 (the cloud's config may be fixed) |
//! | 413 | body (or decompressed body) over the ingest's limit; nothing stored | `{"error": "..."}` | drops the in-flight batch, halves its batch bounds, rebuilds |
//! | 415 | a batch format the ingest does not read (board and cloud versions differ); nothing stored | `{"error": "..."}` | retries with backoff, keeping the batch, until the cloud reads it |
//! | other | transient (5xx, 429, …) | any | retries with backoff |
//!
//! `X-Reflex-Board-Clock-Us` is not part of the batch (a re-send carries the clock of its
//! own send): with it the cloud knows each record's age on the board's clock and files a
//! record stamped at an implausible time (a board clock in 1970) under `its arrival at the
//! cloud − age`, flagged (`reflex_cloud::clock`).
//!
//! Ack body version 2 ([`crate::record::ACK_VERSION`], sent in `X-Reflex-Ack-Version`) adds
//! `version` and `refused`; a body without them reads as version 1 refusing nothing. The
//! reasons are [`crate::record::RefusalReason`] (`device_id`, `features_missing`,
//! `feature_count`); a record is refused by its content alone, so a re-sent batch is
//! refused the same way, and `refused` must name distinct records of the batch in journal
//! order ([`check_refusals`]; otherwise the ack is unreadable and the batch is sent again).
//! An ingest must not answer a per-record refusal to an uploader that did not send the
//! header (it would take the 200 as an ack of every record): it answers 400, as before.
//!
//! The names (path, headers, content type) and the ack body ([`crate::record::BatchAck`])
//! live in [`crate::record`], so the ingest uses them with `default-features = false`.
//! The server must (a) write a batch durably before answering 200, (b) dedupe by batch id —
//! a re-sent id is answered 200 `duplicate` and stored once, with the same `refused` list —
//! and (c) store nothing for a 4xx. `decode_batch(body, Some(id))` from [`crate::record`] is the validation to run.
//! Any 2xx whose body does not name the batch id is treated as a failure and retried.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::record::{
    encode_batch_with_windows, AckStatus, BatchAck, JournalRecord, ACK_VERSION, ACK_VERSION_HEADER,
    BOARD_CLOCK_HEADER,
};
use crate::store::{InFlight, Journal, StoreError};

/// Most bytes of window summaries one batch carries (the rest wait for the next batch).
pub const MAX_WINDOW_BYTES_PER_BATCH: usize = 1 << 20;

pub use crate::record::{
    BATCHES_PATH, BATCH_FORMAT_HEADER, BATCH_ID_HEADER, CONTENT_TYPE, NODE_HEADER, RECORDS_HEADER,
};

/// How batches are cut (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Most records per batch.
    pub max_records: usize,
    /// Most bytes of encoded records per batch (at least one record is always taken).
    pub max_bytes: usize,
    /// Send a partial batch once its oldest record is this old.
    pub max_age: Duration,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            max_records: 2000,
            max_bytes: 4 << 20,
            max_age: Duration::from_secs(30),
        }
    }
}

/// Whether a batch should go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Nothing to send.
    Empty,
    /// Send it.
    Send,
    /// Wait this long for more records (or for the oldest to age).
    Wait(Duration),
}

impl BatchPolicy {
    /// Readiness of a batch of `count` records and `bytes` bytes whose oldest record is
    /// `oldest_age` old; `more` says records beyond the batch's bounds are waiting.
    pub fn readiness(
        &self,
        count: usize,
        bytes: usize,
        oldest_age: Duration,
        more: bool,
    ) -> Readiness {
        if count == 0 {
            Readiness::Empty
        } else if more
            || count >= self.max_records
            || bytes >= self.max_bytes
            || oldest_age >= self.max_age
        {
            Readiness::Send
        } else {
            Readiness::Wait(self.max_age - oldest_age)
        }
    }
}

/// Exponential backoff with full jitter (pure): attempt `n` waits a uniform random time in
/// `[0, min(max, base × 2^n))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First cap.
    pub base: Duration,
    /// Largest cap.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The cap for attempt `attempt` (0-based).
    pub fn cap(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay before retry `attempt`, given `unit` uniform in `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        self.cap(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A token bucket in bytes (pure: the caller passes the time). A send larger than the
/// bucket goes through after waiting for its debt to refill.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket of `burst` bytes refilling at `bytes_per_s`, at time `now`.
    pub fn new(bytes_per_s: u64, burst: u64, now: Duration) -> TokenBucket {
        TokenBucket {
            rate: bytes_per_s.max(1) as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: now,
        }
    }

    /// Takes `bytes` at `now`; returns how long to wait before sending them.
    pub fn reserve(&mut self, bytes: u64, now: Duration) -> Duration {
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// A daily upload window in UTC minutes of the day (pure). `start == end` means always
/// open; `start > end` wraps past midnight (e.g. 22:00–06:00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadWindow {
    /// Opens at this minute of the day (0–1439).
    pub start_minute: u16,
    /// Closes at this minute of the day (0–1439).
    pub end_minute: u16,
}

impl UploadWindow {
    /// How long until the window is open at `unix_secs` (zero when open).
    pub fn wait(&self, unix_secs: u64) -> Duration {
        const DAY: u64 = 86_400;
        let s = u64::from(self.start_minute % 1440) * 60;
        let e = u64::from(self.end_minute % 1440) * 60;
        let t = unix_secs % DAY;
        let open = if s == e {
            true
        } else if s < e {
            (s..e).contains(&t)
        } else {
            t >= s || t < e
        };
        if open {
            Duration::ZERO
        } else {
            Duration::from_secs((s + DAY - t) % DAY)
        }
    }
}

/// Uploader configuration.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    /// Base URL of the ingest, e.g. `https://ingest.example` (no trailing path).
    pub base_url: String,
    /// The device's bearer token.
    pub token: String,
    /// This board's node name (goes into every batch header).
    pub node: String,
    /// Batch bounds.
    pub batching: BatchPolicy,
    /// Retry backoff.
    pub backoff: Backoff,
    /// Optional bandwidth cap: (bytes per second, burst bytes).
    pub bandwidth: Option<(u64, u64)>,
    /// Optional daily window.
    pub window: Option<UploadWindow>,
    /// PEM file of extra CA certificates to trust for the ingest (a private CA), on top of
    /// the built-in webpki roots. Default: none (webpki roots only).
    pub ca_file: Option<PathBuf>,
    /// Timeout of one request.
    pub request_timeout: Duration,
    /// How often to look for new records when there is nothing to send.
    pub idle_poll: Duration,
}

impl UploadConfig {
    /// Defaults for an ingest at `base_url`.
    pub fn new(
        base_url: impl Into<String>,
        token: impl Into<String>,
        node: impl Into<String>,
    ) -> Self {
        UploadConfig {
            base_url: base_url.into(),
            token: token.into(),
            node: node.into(),
            batching: BatchPolicy::default(),
            backoff: Backoff::default(),
            bandwidth: None,
            window: None,
            ca_file: None,
            request_timeout: Duration::from_secs(30),
            idle_poll: Duration::from_secs(1),
        }
    }
}

/// An upload failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    /// The journal failed.
    #[error("journal: {0}")]
    Store(#[from] StoreError),
    /// The request did not complete (connect, TLS, timeout, reset).
    #[error("request to {url} failed: {detail}")]
    Http {
        /// The URL.
        url: String,
        /// reqwest's error with its causes (e.g. `invalid peer certificate: UnknownIssuer`).
        detail: String,
        /// reqwest's error.
        #[source]
        source: reqwest::Error,
    },
    /// `ca_file` cannot be used.
    #[error("ca_file {path:?}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// 401/403.
    #[error("the ingest refused the token (http {status})")]
    Unauthorized {
        /// The status.
        status: u16,
    },
    /// 413.
    #[error("the ingest refused batch {id} of {bytes} bytes as too large (http 413)")]
    TooLarge {
        /// Batch id.
        id: String,
        /// Compressed size.
        bytes: usize,
    },
    /// 400.
    #[error("the ingest rejected batch {id} as corrupt (http 400): {body}")]
    Rejected {
        /// Batch id.
        id: String,
        /// What the ingest said.
        body: String,
    },
    /// Any other non-2xx.
    #[error("unexpected http {status} from the ingest: {body}")]
    Status {
        /// The status.
        status: u16,
        /// What the ingest said (truncated).
        body: String,
    },
    /// A 2xx that names another batch.
    #[error("ack names batch {got:?}, expected {expected}")]
    AckMismatch {
        /// The batch sent.
        expected: String,
        /// What the ack named.
        got: String,
    },
    /// A 2xx whose body is not the ack JSON.
    #[error("unreadable ack body {body:?}")]
    BadAck {
        /// The body (truncated).
        body: String,
    },
    /// The configuration cannot work.
    #[error("bad upload configuration: {0}")]
    Config(String),
    /// A blocking journal task died.
    #[error("journal task failed: {0}")]
    Task(String),
}

/// Progress and backlog, for the daemon's metrics.
#[derive(Debug, Default)]
pub struct UploadStats {
    /// Batches acknowledged.
    pub batches_acked: AtomicU64,
    /// Of those, answered `duplicate` (a re-send after a lost ack).
    pub batches_duplicate: AtomicU64,
    /// Of those, batches salvaged from a journal moved aside (sent under their own id).
    pub salvaged_batches_acked: AtomicU64,
    /// Records acknowledged.
    pub records_uploaded: AtomicU64,
    /// Window summaries acknowledged (that rode with acknowledged batches).
    pub windows_uploaded: AtomicU64,
    /// Compressed bytes acknowledged.
    pub bytes_uploaded: AtomicU64,
    /// Uncompressed bytes acknowledged.
    pub bytes_uncompressed: AtomicU64,
    /// POST attempts.
    pub attempts: AtomicU64,
    /// Failed attempts (any cause).
    pub failures: AtomicU64,
    /// 400 answers (the whole request unreadable): the batch is kept and retried.
    pub rejected: AtomicU64,
    /// Records the cloud refused one by one (filed in the journal's dead-letter range).
    pub records_refused: AtomicU64,
    /// Acks not recorded because the dead-letter range was full (batch kept, retried).
    pub dead_letter_full: AtomicU64,
    /// 413 answers.
    pub too_large: AtomicU64,
    /// 401/403 answers.
    pub unauthorized: AtomicU64,
    /// Records not yet acknowledged (gauge).
    pub backlog_records: AtomicU64,
    /// The watermark (gauge).
    pub watermark: AtomicU64,
    /// 1 while a batch is in flight (gauge).
    pub inflight: AtomicU64,
    /// Unix seconds of the last ack (gauge).
    pub last_ack_unix_s: AtomicU64,
    /// 1 while the upload window is closed (gauge).
    pub window_closed: AtomicU64,
    /// Steps that found the upload window closed and sent nothing.
    pub window_waits: AtomicU64,
}

/// What one [`Uploader::step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A batch was acknowledged.
    Acked {
        /// Its id.
        id: String,
        /// Records in it.
        records: u32,
        /// The server said it already had it.
        duplicate: bool,
        /// Of `records`, those the server refused (filed in the dead-letter range).
        refused: u32,
    },
    /// Nothing to send yet; ask again after this.
    Wait(Duration),
    /// The journal is drained.
    Idle,
}

/// The uploader. Build with [`Uploader::new`], run with [`Uploader::run`].
pub struct Uploader {
    journal: Arc<Journal>,
    cfg: UploadConfig,
    url: String,
    client: reqwest::Client,
    stats: Arc<UploadStats>,
    limits: BatchPolicy,
    bucket: Option<TokenBucket>,
    epoch: Instant,
    /// The journal operations under way on blocking threads (each holds the journal):
    /// [`Uploader::run`] waits for them before it returns, so that a stop in the middle of
    /// an ack lets the ack finish and the journal go, instead of leaving both to a
    /// detached thread.
    journal_ops: TaskTracker,
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `e` and its causes, joined by ": " (reqwest's own message hides e.g. the TLS reason).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Reads `path` as PEM CA certificates (DER each): it must hold at least one certificate,
/// and each must parse as an X.509 trust anchor. Used by [`Uploader::new`] and by config
/// validation.
pub fn read_ca_file(path: &Path) -> Result<Vec<Vec<u8>>, UploadError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bad = |reason: String| UploadError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut ders = Vec::new();
    for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| bad(format!("certificate {}: not PEM: {e}", i + 1)))?;
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| bad(format!("certificate {}: not a usable CA: {e}", i + 1)))?;
        ders.push(cert.as_ref().to_vec());
    }
    if ders.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(ders)
}

/// Whether the refusals of `ack` can be filed (pure): each names a distinct record of
/// `batch`'s sequence range, in increasing order, no more than the batch holds.
pub fn check_refusals(ack: &BatchAck, batch: &InFlight) -> Result<(), UploadError> {
    let mut last = None;
    for r in &ack.refused {
        let in_range = (batch.first_seq..=batch.last_seq).contains(&r.journal_seq);
        if !in_range || last.is_some_and(|l| l >= r.journal_seq) {
            return Err(UploadError::BadAck {
                body: format!(
                    "refused journal sequence {} is not a distinct record of batch {} ({}..={})",
                    r.journal_seq, batch.id, batch.first_seq, batch.last_seq
                ),
            });
        }
        last = Some(r.journal_seq);
    }
    if ack.refused.len() > batch.count as usize {
        return Err(UploadError::BadAck {
            body: format!(
                "{} records refused, the batch has {}",
                ack.refused.len(),
                batch.count
            ),
        });
    }
    Ok(())
}

fn truncated(s: &str) -> String {
    s.chars().take(200).collect()
}

async fn blocking<T: Send + 'static>(
    ops: &TaskTracker,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, UploadError> {
    ops.spawn_blocking(f)
        .await
        .map_err(|e| UploadError::Task(e.to_string()))?
        .map_err(UploadError::Store)
}

impl Uploader {
    /// An uploader for `journal` (rustls with ring; the webpki roots plus `ca_file`; no
    /// system TLS).
    pub fn new(journal: Arc<Journal>, cfg: UploadConfig) -> Result<Uploader, UploadError> {
        if !(cfg.base_url.starts_with("https://") || cfg.base_url.starts_with("http://")) {
            return Err(UploadError::Config(format!(
                "base_url {:?} is not an http(s) URL",
                cfg.base_url
            )));
        }
        if cfg.batching.max_records == 0 || cfg.batching.max_bytes == 0 {
            return Err(UploadError::Config(format!(
                "batch bounds must be positive: {:?}",
                cfg.batching
            )));
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(cfg.request_timeout);
        if let Some(path) = &cfg.ca_file {
            for der in read_ca_file(path)? {
                let cert =
                    reqwest::Certificate::from_der(&der).map_err(|e| UploadError::CaFile {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| UploadError::Config(format!("http client: {e}")))?;
        let epoch = Instant::now();
        Ok(Uploader {
            url: format!("{}{BATCHES_PATH}", cfg.base_url.trim_end_matches('/')),
            bucket: cfg
                .bandwidth
                .map(|(rate, burst)| TokenBucket::new(rate, burst, Duration::ZERO)),
            limits: cfg.batching,
            journal,
            cfg,
            client,
            stats: Arc::new(UploadStats::default()),
            epoch,
            journal_ops: TaskTracker::new(),
        })
    }

    /// Shared counters.
    pub fn stats(&self) -> Arc<UploadStats> {
        self.stats.clone()
    }

    fn refresh_gauges(&self, watermark: u64) {
        let last = self.journal.last_seq();
        self.stats.watermark.store(watermark, Ordering::Relaxed);
        self.stats
            .backlog_records
            .store(last.saturating_sub(watermark), Ordering::Relaxed);
    }

    /// The in-flight batch, else a batch salvaged from a journal moved aside (with its key
    /// in the journal's `salvaged_batches`), else a new one cut from the journal (persisted
    /// before returning).
    async fn next_batch(
        &mut self,
    ) -> Result<Result<(InFlight, Option<u64>), Duration>, UploadError> {
        let journal = self.journal.clone();
        if let Some(b) = blocking(&self.journal_ops, move || journal.inflight()).await? {
            return Ok(Ok((b, None)));
        }
        let journal = self.journal.clone();
        if let Some((key, b)) =
            blocking(&self.journal_ops, move || journal.salvaged_batch()).await?
        {
            return Ok(Ok((b, Some(key))));
        }
        let journal = self.journal.clone();
        let limits = self.limits;
        let node = self.cfg.node.clone();
        blocking(&self.journal_ops, move || {
            let wm = journal.watermark()?;
            // One more than the bounds, to know whether more is waiting.
            let mut recs = journal.scan(wm + 1, limits.max_records + 1, limits.max_bytes)?;
            let more = recs.len() > limits.max_records
                || journal.last_seq() > recs.last().map_or(wm, |r| r.0);
            recs.truncate(limits.max_records);
            let bytes: usize = recs.iter().map(|r| r.1.len()).sum();
            let age = recs
                .first()
                .and_then(|(_, v)| JournalRecord::decode(v).ok())
                .map_or(limits.max_age, |r| {
                    Duration::from_micros(unix_us().saturating_sub(r.arrival_unix_us))
                });
            match limits.readiness(recs.len(), bytes, age, more) {
                Readiness::Empty => Ok(Err(Duration::ZERO)),
                Readiness::Wait(d) => Ok(Err(d)),
                Readiness::Send => {
                    // The live-monitoring windows closed so far ride along (bounded).
                    let windows = journal.pending_windows(MAX_WINDOW_BYTES_PER_BATCH)?;
                    let window_bytes: Vec<&[u8]> =
                        windows.iter().map(|(_, w)| w.as_slice()).collect();
                    let b = encode_batch_with_windows(
                        &node,
                        recs.iter().map(|(s, v)| (*s, v.as_slice())),
                        &window_bytes,
                    );
                    let inflight = InFlight {
                        id: b.id,
                        first_seq: b.header.first_seq,
                        last_seq: b.header.last_seq,
                        count: b.header.count,
                        compressed: b.compressed,
                        windows: windows.iter().map(|(k, _)| *k).collect(),
                    };
                    journal.set_inflight(&inflight)?;
                    Ok(Ok((inflight, None)))
                }
            }
        })
        .await
    }

    /// One attempt: cut or resume a batch, send it, handle the answer.
    pub async fn step(&mut self) -> Result<Step, UploadError> {
        if let Some(w) = self.cfg.window {
            let wait = w.wait(unix_secs());
            let closed = !wait.is_zero();
            self.stats
                .window_closed
                .store(u64::from(closed), Ordering::Relaxed);
            if closed {
                self.stats.window_waits.fetch_add(1, Ordering::Relaxed);
                return Ok(Step::Wait(wait));
            }
        }
        let (batch, salvaged) = match self.next_batch().await? {
            Ok(b) => b,
            Err(wait) => {
                let journal = self.journal.clone();
                let wm = blocking(&self.journal_ops, move || journal.watermark()).await?;
                self.refresh_gauges(wm);
                return Ok(if wait.is_zero() {
                    Step::Idle
                } else {
                    Step::Wait(wait)
                });
            }
        };
        self.stats.inflight.store(1, Ordering::Relaxed);
        if let Some(bucket) = &mut self.bucket {
            let wait = bucket.reserve(batch.compressed.len() as u64, self.epoch.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        let result = self.send(&batch).await;
        match result {
            Ok(ack) => {
                let duplicate = ack.status == AckStatus::Duplicate;
                let refused: Vec<(u64, String)> = ack
                    .refused
                    .iter()
                    .map(|r| (r.journal_seq, r.reason.as_str().to_owned()))
                    .collect();
                let n_refused = refused.len() as u64;
                let journal = self.journal.clone();
                let b = batch.clone();
                // A crash between the two re-sends the windows with a later batch; the
                // cloud stores them content-addressed, so once.
                let filed = blocking(&self.journal_ops, move || match salvaged {
                    // A batch of a salvaged journal: its sequences are not this journal's.
                    Some(key) => journal.ack_salvaged(key, &b, &refused, unix_us()),
                    None => {
                        journal.ack_with_refusals(&b, &refused, unix_us())?;
                        journal.delete_windows(&b.windows)
                    }
                })
                .await;
                if let Err(e) = filed {
                    // Dead-letter range full (or the journal failed): nothing changed, the
                    // batch stays in flight and is sent again after a backoff.
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    if matches!(e, UploadError::Store(StoreError::DeadLetterFull { .. })) {
                        self.stats.dead_letter_full.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(e);
                }
                self.stats
                    .records_refused
                    .fetch_add(n_refused, Ordering::Relaxed);
                self.stats
                    .windows_uploaded
                    .fetch_add(batch.windows.len() as u64, Ordering::Relaxed);
                let s = &self.stats;
                s.batches_acked.fetch_add(1, Ordering::Relaxed);
                if duplicate {
                    s.batches_duplicate.fetch_add(1, Ordering::Relaxed);
                }
                s.records_uploaded.fetch_add(
                    u64::from(batch.count).saturating_sub(n_refused),
                    Ordering::Relaxed,
                );
                s.bytes_uploaded
                    .fetch_add(batch.compressed.len() as u64, Ordering::Relaxed);
                s.last_ack_unix_s.store(unix_secs(), Ordering::Relaxed);
                s.inflight.store(0, Ordering::Relaxed);
                if salvaged.is_some() {
                    s.salvaged_batches_acked.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.refresh_gauges(batch.last_seq);
                }
                // A successful send at reduced bounds: grow back towards the configured ones.
                self.limits.max_records =
                    (self.limits.max_records * 2).min(self.cfg.batching.max_records);
                self.limits.max_bytes =
                    (self.limits.max_bytes * 2).min(self.cfg.batching.max_bytes);
                Ok(Step::Acked {
                    id: batch.id,
                    records: batch.count,
                    duplicate,
                    refused: n_refused as u32,
                })
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                match &e {
                    UploadError::TooLarge { .. } => {
                        self.stats.too_large.fetch_add(1, Ordering::Relaxed);
                        // Nothing was stored: rebuild from the journal, smaller.
                        self.limits.max_records = (batch.count as usize / 2).max(1);
                        self.limits.max_bytes = (self.limits.max_bytes / 2).max(1);
                        let journal = self.journal.clone();
                        let b = batch.clone();
                        blocking(&self.journal_ops, move || match salvaged {
                            // Its records go back to the journal, to be cut smaller.
                            Some(key) => journal.unbatch_salvaged(key, &b).map(|_| ()),
                            None => journal.clear_inflight(),
                        })
                        .await?;
                        self.stats.inflight.store(0, Ordering::Relaxed);
                    }
                    UploadError::Rejected { .. } => {
                        // Nothing stored and nothing deleted: the batch stays in flight and
                        // is sent again after a backoff (the cloud may be fixed).
                        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    }
                    UploadError::Unauthorized { .. } => {
                        self.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                Err(e)
            }
        }
    }

    /// POSTs `batch`; the ack when it is valid (names the batch; refuses only records of
    /// the batch).
    async fn send(&self, batch: &InFlight) -> Result<BatchAck, UploadError> {
        let http = |source: reqwest::Error| UploadError::Http {
            url: self.url.clone(),
            detail: with_causes(&source),
            source,
        };
        let resp = self
            .client
            .post(&self.url)
            .bearer_auth(&self.cfg.token)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .header(BATCH_ID_HEADER, &batch.id)
            .header(
                BATCH_FORMAT_HEADER,
                // The body's own version: 3 when a record carries a feature set.
                crate::record::batch_format_of(&batch.compressed)
                    .unwrap_or(crate::record::BATCH_FORMAT_VERSION)
                    .to_string(),
            )
            .header(NODE_HEADER, &self.cfg.node)
            .header(RECORDS_HEADER, batch.count.to_string())
            .header(ACK_VERSION_HEADER, ACK_VERSION.to_string())
            .header(BOARD_CLOCK_HEADER, unix_us().to_string())
            .body(batch.compressed.clone())
            .send()
            .await
            .map_err(http)?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(http)?;
        match status {
            200..=299 => {
                let ack: BatchAck =
                    serde_json::from_str(&body).map_err(|_| UploadError::BadAck {
                        body: truncated(&body),
                    })?;
                if ack.batch_id != batch.id {
                    return Err(UploadError::AckMismatch {
                        expected: batch.id.clone(),
                        got: ack.batch_id,
                    });
                }
                check_refusals(&ack, batch)?;
                Ok(ack)
            }
            400 => Err(UploadError::Rejected {
                id: batch.id.clone(),
                body: truncated(&body),
            }),
            401 | 403 => Err(UploadError::Unauthorized { status }),
            413 => Err(UploadError::TooLarge {
                id: batch.id.clone(),
                bytes: batch.compressed.len(),
            }),
            _ => Err(UploadError::Status {
                status,
                body: truncated(&body),
            }),
        }
    }

    /// Uploads until `shutdown` is cancelled; an interrupted send is resumed (same id) by
    /// the next run. Returns once no journal operation of the uploader is under way: the
    /// journal is no longer held when it returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.run_until(&shutdown).await;
        self.journal_ops.close();
        self.journal_ops.wait().await;
    }

    async fn run_until(&mut self, shutdown: &CancellationToken) {
        let mut attempt = 0u32;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let step = tokio::select! {
                _ = shutdown.cancelled() => return,
                s = self.step() => s,
            };
            let delay = match step {
                Ok(Step::Acked { .. }) => {
                    attempt = 0;
                    Duration::ZERO
                }
                Ok(Step::Wait(d)) => {
                    attempt = 0;
                    d.min(self.cfg.idle_poll)
                }
                Ok(Step::Idle) => {
                    attempt = 0;
                    self.cfg.idle_poll
                }
                Err(e @ UploadError::TooLarge { .. }) => {
                    tracing::warn!(error = %e, "upload batch refused; continuing with the next one");
                    Duration::ZERO
                }
                Err(e) => {
                    let d = self.cfg.backoff.delay(attempt, fastrand::f64());
                    tracing::warn!(error = %e, attempt, retry_in_ms = d.as_millis() as u64, "upload failed");
                    attempt = attempt.saturating_add(1);
                    d
                }
            };
            if !delay.is_zero() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
