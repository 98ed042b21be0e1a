//! `reflexd`'s TOML configuration: what to subscribe to, which model answers it within
//! which budget, and how the daemon runs.
//!
//! Three steps, each with its own error:
//! 1. [`parse`]: TOML syntax, unknown fields (every table refuses them) and wrong types
//!    give one [`ConfigError::Parse`] naming the field, with the toml crate's message.
//! 2. [`Config::validate`]: pure checks of values and of references between sections;
//!    collects *every* problem as a [`ValidationError`] naming the field path (e.g.
//!    `routes[1].deadline_ms`), the bad value and why.
//! 3. Typed accessors ([`RouteConfig::budget`], [`Config::client_id`], ...) build what the
//!    daemon uses.
//!
//! [`load`] reads a file and does 1 and 2. [`Config::check_files`] is separate because it
//! does I/O: it checks that the referenced files (manifests, TLS, password, upload token
//! and CA) are readable.
//! Relative paths are resolved against the daemon's working directory.
//!
//! `daemon/reflex.example.toml` is a complete, commented example.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::device_state::MAX_DEDUPE_WINDOW;

/// Longest MQTT topic (filter or concrete topic) the daemon accepts in its configuration,
/// in bytes; also the topic allowance in [`PUBLISH_OVERHEAD_BYTES`].
pub const MAX_TOPIC_BYTES: usize = 256;

/// Bytes an MQTT PUBLISH adds around its payload, at most: fixed header (5), topic length
/// (2), topic ([`MAX_TOPIC_BYTES`]) and packet id (2).
pub const PUBLISH_OVERHEAD_BYTES: usize = 5 + 2 + MAX_TOPIC_BYTES + 2;

/// Largest packet MQTT can express (the remaining-length field's limit).
pub const MQTT_MAX_PACKET_BYTES: usize = 268_435_455;

/// Placeholder in a route's `command_topic` replaced by the event's device id.
pub const DEVICE_PLACEHOLDER: &str = "{device}";

/// The whole configuration. Every section may be omitted (its defaults apply) except
/// `[[routes]]` and the `[models.<name>]` they use.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[node]`: this daemon's identity.
    pub node: NodeConfig,
    /// `[mqtt]`: the broker connection.
    pub mqtt: MqttConfig,
    /// `[[routes]]`: which topics are answered by which model, within which budget. At
    /// least one; no default.
    pub routes: Vec<RouteConfig>,
    /// `[models.<name>]`: the models routes refer to, by name. No default.
    pub models: BTreeMap<String, ModelConfig>,
    /// `[scheduler]`: inference workers and the deadline queue.
    pub scheduler: SchedulerConfig,
    /// `[devices]`: per-device sequence tracking.
    pub devices: DevicesConfig,
    /// `[bad_input]`: what is kept and logged of undecodable payloads.
    pub bad_input: BadInputConfig,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// `[shutdown]`: graceful stop.
    pub shutdown: ShutdownConfig,
    /// `[journal]`: the durable record of every decided event. Absent: no journal (events
    /// are acked as soon as they are handled).
    pub journal: Option<JournalConfig>,
    /// `[monitor]`: live drift and SLO monitoring per route (on by default).
    pub monitor: crate::monitor::MonitorSection,
    /// `[upload]`: bulk upload of the journal to the cloud ingest. Needs `[journal]`.
    /// Absent: records stay on the board (within the journal's quota).
    pub upload: Option<UploadConfig>,
}

/// `[journal]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// Directory of the sled journal (created if missing; under systemd,
    /// `/var/lib/reflex/journal`). Required.
    pub dir: PathBuf,
    /// `"fsync"`: a record acked to the broker survives a power cut (on a disk that honours
    /// flushes); `"flush"`: only a process crash. Default: `"fsync"`.
    #[serde(default)]
    pub durability: JournalDurability,
    /// Group commit: flush after this many records... Default: `256`.
    #[serde(default = "group_commit_records_default")]
    pub group_commit_records: usize,
    /// ...or this long after the oldest unflushed record, whichever first. Default: `5`.
    #[serde(default = "group_commit_ms_default")]
    pub group_commit_ms: u64,
    /// sled page cache, MiB (sled's own default is 1 GiB). Default: `16`.
    #[serde(default = "cache_mib_default")]
    pub cache_mib: u64,
    /// What the journal keeps, MiB (sled's files run at about twice the live data and do
    /// not shrink; give the filesystem several times this). Default: `256`.
    #[serde(default = "quota_mib_default")]
    pub quota_mib: u64,
    /// Free space the filesystem must keep, MiB: below it the journal sheds records, below
    /// half of it appends are refused, so sled never meets ENOSPC. Default: `64`.
    #[serde(default = "min_free_mib_default")]
    pub min_free_mib: u64,
    /// When full and nothing uploaded is left to delete: `"drop-oldest"` (counted) or
    /// `"backpressure"` (stop acking; the broker keeps the events). Default: `"drop-oldest"`.
    #[serde(default)]
    pub when_full: WhenFull,
    /// Keep records after their upload ack (deleted first when space is needed).
    /// Default: `false`.
    #[serde(default)]
    pub keep_uploaded: bool,
    /// Journal records read at start to re-learn which events were already decided (so a
    /// redelivery after a crash is answered and journaled once). Default: `100000`.
    #[serde(default = "dedupe_scan_records_default")]
    pub dedupe_scan_records: usize,
}

/// `journal.durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalDurability {
    /// flush + fsync.
    #[default]
    Fsync,
    /// flush (sync_file_range) only.
    Flush,
}

/// `journal.when_full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Delete the oldest records, counted.
    #[default]
    DropOldest,
    /// Refuse appends (and so acks) until uploads free space.
    Backpressure,
}

fn group_commit_records_default() -> usize {
    256
}
fn group_commit_ms_default() -> u64 {
    5
}
fn cache_mib_default() -> u64 {
    16
}
fn quota_mib_default() -> u64 {
    256
}
fn min_free_mib_default() -> u64 {
    64
}
fn dedupe_scan_records_default() -> usize {
    100_000
}

/// `[upload]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    /// Base URL of the cloud ingest, `https://…` (or `http://` on loopback for tests);
    /// batches go to `<url>/v1/batches`. Required.
    pub url: String,
    /// File holding this board's bearer token (trailing newline ignored). Required.
    pub token_file: PathBuf,
    /// Most records per batch. Default: `2000`.
    #[serde(default = "batch_records_default")]
    pub batch_records: usize,
    /// Most bytes of records per batch before compression, KiB. Default: `4096`.
    #[serde(default = "batch_kib_default")]
    pub batch_kib: usize,
    /// Send a partial batch once its oldest record is this old, seconds. Default: `30`.
    #[serde(default = "batch_age_s_default")]
    pub batch_age_s: u64,
    /// Bandwidth cap, bytes/s of compressed upload; 0 = none. Default: `0`.
    #[serde(default)]
    pub bandwidth_bytes_per_s: u64,
    /// Daily window (UTC) when uploads may run, `"HH:MM-HH:MM"`; absent = always.
    #[serde(default)]
    pub window: Option<String>,
    /// Timeout of one request, seconds. Default: `30`.
    #[serde(default = "request_timeout_s_default")]
    pub request_timeout_s: u64,
    /// PEM file of extra CA certificates to trust for the ingest's HTTPS certificate (a
    /// private CA), on top of the built-in webpki roots; checked at start (readable, at
    /// least one certificate). Default: none (webpki roots only).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn batch_records_default() -> usize {
    2000
}
fn batch_kib_default() -> usize {
    4096
}
fn batch_age_s_default() -> u64 {
    30
}
fn request_timeout_s_default() -> u64 {
    30
}

/// Parses `"HH:MM-HH:MM"` into minutes of the day.
pub fn parse_upload_window(text: &str) -> Option<(u16, u16)> {
    let minute = |hm: &str| -> Option<u16> {
        let (h, m) = hm.trim().split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    let (a, b) = text.split_once('-')?;
    Some((minute(a)?, minute(b)?))
}

impl UploadConfig {
    /// Reads the bearer token (I/O).
    pub fn read_token(&self) -> Result<Secret, ConfigError> {
        let text =
            std::fs::read_to_string(&self.token_file).map_err(|source| ConfigError::Read {
                path: self.token_file.clone(),
                source,
            })?;
        Ok(Secret::new(text.trim_end_matches(['\n', '\r']).to_owned()))
    }
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Name of this node, used in the default MQTT client id and in metrics; 1..=64 bytes
    /// of `[A-Za-z0-9_.-]`. Default: `"reflex"`.
    pub name: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: "reflex".into(),
        }
    }
}

/// A secret string whose `Debug` output is redacted, so it never reaches a log.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `[mqtt]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Broker host name or address. Default: `"127.0.0.1"`.
    pub host: String,
    /// Broker port, 1..=65535. Default: `1883` (use 8883 with TLS).
    pub port: u16,
    /// MQTT client id. Default: `"reflexd-{node.name}"` (see [`Config::client_id`]).
    /// Must not be empty unless `clean_session` is true: the broker keeps a persistent
    /// session by client id.
    pub client_id: Option<String>,
    /// User name. Default: none.
    pub username: Option<String>,
    /// Password (requires `username`; exclusive with `password_file`). Default: none.
    pub password: Option<Secret>,
    /// File holding the password (trailing newline ignored; requires `username`;
    /// exclusive with `password`). Default: none.
    pub password_file: Option<PathBuf>,
    /// `[mqtt.tls]`: TLS to the broker. Default: disabled.
    pub tls: TlsConfig,
    /// Keep-alive interval in seconds, 1..=65535 (rumqttc panics below 1 s). Default: `5`.
    pub keep_alive_s: u64,
    /// Largest MQTT packet accepted or sent, in bytes. Must hold the largest event of every
    /// route's format plus [`PUBLISH_OVERHEAD_BYTES`]. Default: `16384`.
    pub max_packet_bytes: usize,
    /// Capacity of the client's request channel (outgoing publishes and acks), >= 1.
    /// Default: `10000`.
    pub request_channel_capacity: usize,
    /// First reconnect delay after losing the broker, in ms, >= 1; doubled per failed
    /// attempt. Default: `100`.
    pub reconnect_initial_ms: u64,
    /// Longest reconnect delay, in ms, >= `reconnect_initial_ms`. Default: `5000`.
    pub reconnect_max_ms: u64,
    /// Start a clean session. Default: `false`: a persistent session, so the broker holds
    /// QoS 1 events for us while we are down (requires a non-empty client id).
    pub clean_session: bool,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: None,
            username: None,
            password: None,
            password_file: None,
            tls: TlsConfig::default(),
            keep_alive_s: 5,
            max_packet_bytes: 16_384,
            request_channel_capacity: 10_000,
            reconnect_initial_ms: 100,
            reconnect_max_ms: 5_000,
            clean_session: false,
        }
    }
}

impl MqttConfig {
    /// The keep-alive interval.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_s)
    }

    /// The reconnect backoff: (first delay, longest delay).
    pub fn reconnect_backoff(&self) -> (Duration, Duration) {
        (
            Duration::from_millis(self.reconnect_initial_ms),
            Duration::from_millis(self.reconnect_max_ms),
        )
    }

    /// The password, from `password` or read from `password_file` (I/O; trailing `\n` or
    /// `\r\n` removed).
    pub fn resolve_password(&self) -> Result<Option<Secret>, ConfigError> {
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        Ok(Some(Secret::new(text)))
    }
}

/// `[mqtt.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Use TLS. Default: `false`. The file fields below may only be set when enabled.
    pub enabled: bool,
    /// PEM file of the CA that signed the broker's certificate; required when enabled.
    /// Default: none.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with `client_key_file`). Default: none.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`. Default: none.
    pub client_key_file: Option<PathBuf>,
}

/// Payload format of a route's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The postcard binary form ([`reflex_wire::SensorEvent::decode`]).
    #[default]
    Postcard,
    /// The JSON form ([`reflex_wire::json::decode_event`]).
    Json,
}

impl Format {
    /// Largest accepted event payload in this format, in bytes.
    pub fn max_event_bytes(self) -> usize {
        match self {
            Format::Postcard => reflex_wire::MAX_EVENT_BYTES,
            Format::Json => reflex_wire::json::MAX_JSON_EVENT_BYTES,
        }
    }
}

/// What to do at start-up when calibration says a route's model cannot meet its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBudgetUnmeetable {
    /// Refuse to start.
    #[default]
    Refuse,
    /// Start anyway and log a warning; most events will be answered by the fallback.
    Warn,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique route name, used in logs and metrics labels; 1..=64 bytes of
    /// `[A-Za-z0-9_.-]`. Required.
    pub name: String,
    /// MQTT topic filter to subscribe to, e.g. `"sensors/+/vibration"`; `+` and `#` only
    /// as whole levels, `#` only last. Must not overlap another route's. Required.
    pub topic_filter: String,
    /// Name of the `[models.<name>]` entry that answers this route. Required.
    pub model: String,
    /// Payload format, `"postcard"` or `"json"`. Default: `"postcard"`.
    #[serde(default)]
    pub format: Format,
    /// Per-event budget from arrival to command, in ms: finite, > 0, <= 10000, and above
    /// `scheduler.safety_margin_us`. A sensor's deadline hint may only shorten it.
    /// Required.
    pub deadline_ms: f64,
    /// Topic commands are published to; must contain `{device}` (replaced by the event's
    /// device id) and no `+`, `#` or other `{...}`. Required.
    pub command_topic: String,
    /// QoS of the subscription, 0 or 1. Default: `1`.
    #[serde(default = "qos_default")]
    pub qos_in: u8,
    /// QoS of published commands, 0 or 1. Default: `1`.
    #[serde(default = "qos_default")]
    pub qos_out: u8,
    /// `"refuse"` or `"warn"` when calibration shows the model cannot meet the budget.
    /// Default: `"refuse"`.
    #[serde(default)]
    pub on_budget_unmeetable: OnBudgetUnmeetable,
}

fn qos_default() -> u8 {
    1
}

impl RouteConfig {
    /// The per-event budget. Only meaningful on a validated config.
    pub fn budget(&self) -> Duration {
        Duration::try_from_secs_f64(self.deadline_ms / 1_000.0).unwrap_or(Duration::ZERO)
    }

    /// The concrete command topic for `device`.
    pub fn command_topic_for(&self, device: &str) -> String {
        self.command_topic.replace(DEVICE_PLACEHOLDER, device)
    }
}

/// One `[models.<name>]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Path to the model's JSON manifest. Required.
    pub manifest: PathBuf,
    /// Path to the JSON manifest of the fallback that answers when the model cannot in
    /// time. Required.
    pub fallback_manifest: PathBuf,
    /// Timed inference runs per calibration round to measure p99.9 latency,
    /// 100..=1000000 (below 1000, p99.9 is the slowest run). Three rounds run at start-up
    /// and on every reload; the quietest counts. Default: `2000`.
    #[serde(default = "calibration_runs_default")]
    pub calibration_runs: u32,
    /// Reload the model when its manifest changes. Default: `true`.
    #[serde(default = "true_default")]
    pub hot_reload: bool,
}

fn calibration_runs_default() -> u32 {
    2_000
}

fn true_default() -> bool {
    true
}

/// `[scheduler]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Inference worker threads, 1..=cores. Default: `1`.
    pub workers: usize,
    /// Most events waiting for a worker, 1..=1000000; beyond, events get the fallback at
    /// once (cause `queue_full`). Default: `4096`.
    pub queue_capacity: usize,
    /// The fallback is issued this long before the deadline so it gets out on time, in µs;
    /// below every route's budget. Default: `200`.
    pub safety_margin_us: u64,
    /// SCHED_FIFO priority of the worker and deadline-timer threads, 0..=50; `0` keeps
    /// them on the normal scheduler. Needs CAP_SYS_NICE or `LimitRTPRIO=` (the systemd
    /// unit sets it); when the kernel refuses, reflexd logs it once and serves at normal
    /// priority. Default: `10`.
    pub realtime_priority: u8,
    /// Most queued events a worker runs through the model in one call, 1..=64. Events that
    /// arrive together (a fleet sampling on the same tick) then wait for one run instead of
    /// one run each; a batch only grows while its calibrated run time still meets the
    /// earliest deadline in it, and each batch size is planned, checked to answer every
    /// event exactly as alone, and calibrated at load. `1` runs events one at a time.
    /// Default: `8`.
    pub max_batch: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            queue_capacity: 4_096,
            safety_margin_us: 200,
            realtime_priority: 10,
            max_batch: 8,
        }
    }
}

impl SchedulerConfig {
    /// The safety margin.
    pub fn safety_margin(&self) -> Duration {
        Duration::from_micros(self.safety_margin_us)
    }
}

/// `[devices]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// Most devices whose sequence numbers are tracked, 1..=10000000; the least recently
    /// seen is forgotten first. Default: `10000`.
    pub max_tracked: usize,
    /// Sequence numbers remembered per device for duplicate detection, 1..=65536 (one bit
    /// each). Default: `1024`.
    pub dedupe_window: u64,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        Self {
            max_tracked: 10_000,
            dedupe_window: 1_024,
        }
    }
}

/// `[bad_input]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BadInputConfig {
    /// Most recent undecodable payloads kept for inspection, 0..=10000. Default: `100`.
    pub keep_last: usize,
    /// At most one log line per this many seconds about bad input, >= 1. Default: `10`.
    pub log_every_s: u64,
}

impl Default for BadInputConfig {
    fn default() -> Self {
        Self {
            keep_last: 100,
            log_every_s: 10,
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics. Default: `true`.
    pub enabled: bool,
    /// Socket address to serve on, `ip:port`. Default: `"127.0.0.1:9464"` (loopback
    /// only); any address is accepted, but exposing metrics beyond the host must be
    /// chosen explicitly here.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl MetricsConfig {
    /// The listen address. Only fails on a config that did not pass validation.
    pub fn listen_addr(&self) -> Result<SocketAddr, std::net::AddrParseError> {
        self.listen.parse()
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// On SIGTERM/SIGINT, how long in-flight events may take to be answered before the
    /// daemon exits, in ms. Default: `5000`.
    pub grace_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace_ms: 5_000 }
    }
}

impl ShutdownConfig {
    /// The grace period.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }
}

/// One problem found by [`Config::validate`] or [`Config::check_files`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value}: {reason}")]
pub struct ValidationError {
    /// Path of the field, e.g. `routes[1].deadline_ms`.
    pub field: String,
    /// The bad value, as written in TOML (strings quoted).
    pub value: String,
    /// Why it is refused.
    pub reason: String,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown field or a wrong type.
    #[error("invalid config in {origin}{}: {message}", at_field(field))]
    Parse {
        /// The file name, or `<string>` for [`parse`].
        origin: String,
        /// Path of the offending field (`.` for the document root).
        field: String,
        /// The toml crate's message, with line, column and excerpt.
        message: String,
    },
    /// Values that break the rules; all of them, one per line.
    #[error("invalid config: {} problem(s):\n{}", .0.len(), join_lines(.0))]
    Invalid(Vec<ValidationError>),
}

fn at_field(field: &str) -> String {
    if field == "." {
        String::new()
    } else {
        format!(" at `{field}`")
    }
}

fn join_lines(errors: &[ValidationError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses TOML text into a [`Config`] (defaults filled in), without validating values.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_from(text, "<string>")
}

fn parse_from(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let parse_error = |field: String, err: &toml::de::Error| ConfigError::Parse {
        origin: origin.to_owned(),
        field,
        message: err.to_string().trim_end().to_owned(),
    };
    let de = toml::Deserializer::parse(text).map_err(|e| parse_error(".".into(), &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        parse_error(field, e.inner())
    })
}

/// Reads, parses and validates the configuration file at `path` (no file checks: see
/// [`Config::check_files`]).
pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let config = parse_from(&text, &path.display().to_string())?;
    config.validate().map_err(ConfigError::Invalid)?;
    Ok(config)
}

/// Collects validation errors.
#[derive(Default)]
struct Problems(Vec<ValidationError>);

impl Problems {
    fn add(
        &mut self,
        field: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) {
        self.0.push(ValidationError {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        });
    }

    /// `value` as a TOML string literal.
    fn add_str(&mut self, field: impl Into<String>, value: &str, reason: impl Into<String>) {
        self.add(field, format!("{value:?}"), reason);
    }

    fn range<T: PartialOrd + fmt::Display>(&mut self, field: &str, value: T, min: T, max: T) {
        if value < min || value > max {
            self.add(field, &value, format!("must be in {min}..={max}"));
        }
    }
}

fn check_name(p: &mut Problems, field: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        p.add_str(field, name, "must be 1..=64 bytes of [A-Za-z0-9_.-]");
    }
}

/// Checks MQTT topic filter syntax: non-empty, at most [`MAX_TOPIC_BYTES`], no NUL, `+`
/// and `#` only as whole levels, `#` only as the last level.
pub fn check_topic_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("topic filter is empty".into());
    }
    if filter.len() > MAX_TOPIC_BYTES {
        return Err(format!(
            "topic filter of {} bytes exceeds {MAX_TOPIC_BYTES}",
            filter.len()
        ));
    }
    if filter.contains('\0') {
        return Err("topic filter contains a nul character".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "level {i} `{level}`: '#' must be a whole level and the last one"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("level {i} `{level}`: '+' must be a whole level"));
        }
    }
    Ok(())
}

/// Whether some topic matches both (valid) filters, so both routes would receive it.
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let mut a = a.split('/');
    let mut b = b.split('/');
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            // One filter is longer and its next level is not '#' ("x/#" also matches "x",
            // caught above).
            (Some(_), None) | (None, Some(_)) => return false,
            (Some(x), Some(y)) => {
                if x != "+" && y != "+" && x != y {
                    return false;
                }
            }
        }
    }
}

fn check_command_topic(template: &str) -> Result<(), String> {
    if !template.contains(DEVICE_PLACEHOLDER) {
        return Err(format!("must contain {DEVICE_PLACEHOLDER}"));
    }
    if template.contains(['+', '#']) {
        return Err("must not contain the wildcards '+' or '#'".into());
    }
    if template.contains('\0') {
        return Err("must not contain a nul character".into());
    }
    if template
        .replace(DEVICE_PLACEHOLDER, "")
        .contains(['{', '}'])
    {
        return Err(format!(
            "{DEVICE_PLACEHOLDER} is the only placeholder allowed"
        ));
    }
    let longest = template
        .replace(
            DEVICE_PLACEHOLDER,
            &"x".repeat(reflex_wire::MAX_DEVICE_ID_LEN),
        )
        .len();
    if longest > MAX_TOPIC_BYTES {
        return Err(format!(
            "with a {}-byte device id the topic is {longest} bytes, over {MAX_TOPIC_BYTES}",
            reflex_wire::MAX_DEVICE_ID_LEN
        ));
    }
    Ok(())
}

impl Config {
    /// The MQTT client id: `mqtt.client_id`, or `reflexd-{node.name}` when absent.
    pub fn client_id(&self) -> String {
        match &self.mqtt.client_id {
            Some(id) => id.clone(),
            None => format!("reflexd-{}", self.node.name),
        }
    }

    /// The model of `route`, if it exists (always, on a validated config).
    pub fn model_of(&self, route: &RouteConfig) -> Option<&ModelConfig> {
        self.models.get(&route.model)
    }

    /// Checks every value and cross-reference; returns all problems found. The only
    /// outside fact used is the number of cores (for `scheduler.workers`); see
    /// [`Config::validate_with_cores`] for the fully pure form.
    pub fn validate(&self) -> Result<(), Vec<ValidationError>> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.validate_with_cores(cores)
    }

    /// [`Config::validate`] for a machine with `cores` cores. Pure.
    pub fn validate_with_cores(&self, cores: usize) -> Result<(), Vec<ValidationError>> {
        let mut p = Problems::default();
        check_name(&mut p, "node.name", &self.node.name);
        self.validate_mqtt(&mut p);
        self.validate_routes(&mut p);
        self.validate_models(&mut p);

        let s = &self.scheduler;
        p.range("scheduler.workers", s.workers, 1, cores.max(1));
        p.range("scheduler.queue_capacity", s.queue_capacity, 1, 1_000_000);
        p.range("scheduler.max_batch", s.max_batch, 1, 64);
        p.range(
            "scheduler.realtime_priority",
            s.realtime_priority,
            0,
            crate::realtime::MAX_PRIORITY,
        );

        let d = &self.devices;
        p.range("devices.max_tracked", d.max_tracked, 1, 10_000_000);
        p.range(
            "devices.dedupe_window",
            d.dedupe_window,
            1,
            MAX_DEDUPE_WINDOW,
        );

        p.range("bad_input.keep_last", self.bad_input.keep_last, 0, 10_000);
        if self.bad_input.log_every_s == 0 {
            p.add(
                "bad_input.log_every_s",
                0,
                "must be at least 1: hostile input must not flood the log",
            );
        }
        for (field, value, reason) in self.monitor.validate() {
            p.add(field, value, reason);
        }
        if let Some(j) = &self.journal {
            if j.dir.as_os_str().is_empty() {
                p.add_str("journal.dir", "", "must name a directory");
            }
            p.range(
                "journal.group_commit_records",
                j.group_commit_records,
                1,
                100_000,
            );
            p.range("journal.group_commit_ms", j.group_commit_ms, 1, 10_000);
            p.range("journal.cache_mib", j.cache_mib, 1, 4096);
            p.range("journal.quota_mib", j.quota_mib, 1, 1 << 20);
            p.range("journal.min_free_mib", j.min_free_mib, 0, 1 << 20);
            p.range(
                "journal.dedupe_scan_records",
                j.dedupe_scan_records,
                0,
                10_000_000,
            );
        }
        if let Some(u) = &self.upload {
            if self.journal.is_none() {
                p.add_str("upload", "[upload]", "needs a [journal] to upload from");
            }
            let scheme_ok = u.url.starts_with("https://") || u.url.starts_with("http://");
            if !scheme_ok || u.url.contains(char::is_whitespace) {
                p.add_str("upload.url", &u.url, "must be an http:// or https:// URL");
            }
            p.range("upload.batch_records", u.batch_records, 1, 1_000_000);
            p.range("upload.batch_kib", u.batch_kib, 1, 1 << 20);
            p.range("upload.batch_age_s", u.batch_age_s, 1, 86_400);
            p.range("upload.request_timeout_s", u.request_timeout_s, 1, 3_600);
            if let Some(w) = &u.window {
                if parse_upload_window(w).is_none() {
                    p.add_str("upload.window", w, "must be \"HH:MM-HH:MM\" (UTC)");
                }
            }
        }
        if let Err(e) = self.metrics.listen_addr() {
            p.add_str(
                "metrics.listen",
                &self.metrics.listen,
                format!("not an ip:port socket address ({e})"),
            );
        }
        if p.0.is_empty() {
            Ok(())
        } else {
            Err(p.0)
        }
    }

    fn validate_mqtt(&self, p: &mut Problems) {
        let m = &self.mqtt;
        if m.host.trim().is_empty() || m.host.contains(char::is_whitespace) {
            p.add_str("mqtt.host", &m.host, "must be a host name or address");
        }
        if m.port == 0 {
            p.add("mqtt.port", 0, "must be in 1..=65535");
        }
        if !m.clean_session && self.client_id().is_empty() {
            p.add_str(
                "mqtt.client_id",
                "",
                "must not be empty when clean_session is false (the broker keeps the session by client id)",
            );
        }
        if m.password.is_some() && m.password_file.is_some() {
            p.add(
                "mqtt.password_file",
                format!(
                    "{:?}",
                    m.password_file
                        .as_deref()
                        .unwrap_or(Path::new(""))
                        .display()
                ),
                "set either password or password_file, not both",
            );
        }
        if m.username.is_none() && (m.password.is_some() || m.password_file.is_some()) {
            p.add("mqtt.username", "(none)", "a password requires a username");
        }
        let t = &m.tls;
        let tls_files = [
            ("mqtt.tls.ca_file", &t.ca_file),
            ("mqtt.tls.client_cert_file", &t.client_cert_file),
            ("mqtt.tls.client_key_file", &t.client_key_file),
        ];
        if t.enabled {
            if t.ca_file.is_none() {
                p.add(
                    "mqtt.tls.ca_file",
                    "(none)",
                    "required when tls.enabled is true",
                );
            }
            if t.client_cert_file.is_some() != t.client_key_file.is_some() {
                p.add(
                    "mqtt.tls.client_key_file",
                    show_path(&t.client_key_file),
                    "client_cert_file and client_key_file go together",
                );
            }
        } else {
            for (field, file) in tls_files {
                if file.is_some() {
                    p.add(
                        field,
                        show_path(file),
                        "set while tls.enabled is false: the connection would silently be unencrypted",
                    );
                }
            }
        }
        p.range("mqtt.keep_alive_s", m.keep_alive_s, 1, 65_535);
        let needed = self
            .routes
            .iter()
            .map(|r| r.format.max_event_bytes())
            .max()
            .unwrap_or(reflex_wire::MAX_EVENT_BYTES)
            + PUBLISH_OVERHEAD_BYTES;
        if m.max_packet_bytes < needed || m.max_packet_bytes > MQTT_MAX_PACKET_BYTES {
            p.add(
                "mqtt.max_packet_bytes",
                m.max_packet_bytes,
                format!(
                    "must be in {needed}..={MQTT_MAX_PACKET_BYTES}: the largest event of the routes' formats plus {PUBLISH_OVERHEAD_BYTES} bytes of MQTT overhead"
                ),
            );
        }
        if m.request_channel_capacity == 0 {
            p.add("mqtt.request_channel_capacity", 0, "must be at least 1");
        }
        if m.reconnect_initial_ms == 0 {
            p.add("mqtt.reconnect_initial_ms", 0, "must be at least 1");
        }
        if m.reconnect_max_ms < m.reconnect_initial_ms {
            p.add(
                "mqtt.reconnect_max_ms",
                m.reconnect_max_ms,
                format!(
                    "must be at least reconnect_initial_ms ({})",
                    m.reconnect_initial_ms
                ),
            );
        }
    }

    fn validate_routes(&self, p: &mut Problems) {
        if self.routes.is_empty() {
            p.add("routes", "[]", "at least one [[routes]] entry is required");
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let margin_ms = self.scheduler.safety_margin_us as f64 / 1_000.0;
        for (i, r) in self.routes.iter().enumerate() {
            let f = |name: &str| format!("routes[{i}].{name}");
            check_name(p, &f("name"), &r.name);
            if let Some(first) = names.insert(&r.name, i) {
                p.add_str(
                    f("name"),
                    &r.name,
                    format!("duplicate route name (also routes[{first}])"),
                );
            }
            match check_topic_filter(&r.topic_filter) {
                Err(why) => p.add_str(f("topic_filter"), &r.topic_filter, why),
                Ok(()) => {
                    for (j, other) in self.routes[..i].iter().enumerate() {
                        if check_topic_filter(&other.topic_filter).is_ok()
                            && filters_overlap(&r.topic_filter, &other.topic_filter)
                        {
                            p.add_str(
                                f("topic_filter"),
                                &r.topic_filter,
                                format!(
                                    "overlaps routes[{j}].topic_filter {:?}: an event would be answered twice",
                                    other.topic_filter
                                ),
                            );
                        }
                    }
                }
            }
            if !self.models.contains_key(&r.model) {
                let known: Vec<&str> = self.models.keys().map(String::as_str).collect();
                p.add_str(
                    f("model"),
                    &r.model,
                    format!("no [models.{}] entry (known: {known:?})", r.model),
                );
            }
            let d = r.deadline_ms;
            if !(d.is_finite() && d > 0.0 && d <= 10_000.0) {
                p.add(f("deadline_ms"), d, "must be finite, > 0 and <= 10000");
            } else if d <= margin_ms {
                p.add(
                    f("deadline_ms"),
                    d,
                    format!(
                        "must exceed scheduler.safety_margin_us ({} µs), or the fallback could not be sent in time",
                        self.scheduler.safety_margin_us
                    ),
                );
            }
            if let Err(why) = check_command_topic(&r.command_topic) {
                p.add_str(f("command_topic"), &r.command_topic, why);
            }
            for (name, qos) in [("qos_in", r.qos_in), ("qos_out", r.qos_out)] {
                if qos > 1 {
                    p.add(f(name), qos, "must be 0 or 1 (qos 2 is not supported)");
                }
            }
        }
    }

    fn validate_models(&self, p: &mut Problems) {
        for (name, m) in &self.models {
            let f = |field: &str| format!("models.{name}.{field}");
            check_name(p, &format!("models.{name}"), name);
            for (field, path) in [
                ("manifest", &m.manifest),
                ("fallback_manifest", &m.fallback_manifest),
            ] {
                if path.as_os_str().is_empty() {
                    p.add_str(f(field), "", "must be a path to a json manifest");
                }
            }
            p.range(&f("calibration_runs"), m.calibration_runs, 100, 1_000_000);
        }
    }

    /// Checks that every file the configuration names (model and fallback manifests, TLS
    /// files when enabled, the password file, the upload token) is a readable regular
    /// file, and that `upload.ca_file` holds at least one PEM certificate. Does I/O.
    pub fn check_files(&self) -> Vec<ValidationError> {
        let mut files: Vec<(String, &Path)> = Vec::new();
        for (name, m) in &self.models {
            files.push((format!("models.{name}.manifest"), &m.manifest));
            files.push((
                format!("models.{name}.fallback_manifest"),
                &m.fallback_manifest,
            ));
        }
        let t = &self.mqtt.tls;
        if t.enabled {
            for (field, file) in [
                ("mqtt.tls.ca_file", &t.ca_file),
                ("mqtt.tls.client_cert_file", &t.client_cert_file),
                ("mqtt.tls.client_key_file", &t.client_key_file),
            ] {
                if let Some(path) = file {
                    files.push((field.into(), path));
                }
            }
        }
        if let Some(path) = &self.mqtt.password_file {
            files.push(("mqtt.password_file".into(), path));
        }
        if let Some(u) = &self.upload {
            files.push(("upload.token_file".into(), &u.token_file));
        }
        let mut p = Problems::default();
        for (field, path) in files {
            let shown = format!("{:?}", path.display().to_string());
            match std::fs::File::open(path).and_then(|f| f.metadata()) {
                Err(e) => p.add(field, shown, format!("cannot open: {e}")),
                Ok(meta) if !meta.is_file() => p.add(field, shown, "not a regular file"),
                Ok(_) => {}
            }
        }
        if let Some(path) = self.upload.as_ref().and_then(|u| u.ca_file.as_ref()) {
            if let Err(e) = reflex_journal::upload::read_ca_file(path) {
                let reason = match e {
                    reflex_journal::upload::UploadError::CaFile { reason, .. } => reason,
                    other => other.to_string(),
                };
                p.add(
                    "upload.ca_file",
                    format!("{:?}", path.display().to_string()),
                    reason,
                );
            }
        }
        p.0
    }
}

fn show_path(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("{:?}", p.display().to_string()),
        None => "(none)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../reflex.example.toml");

    const MINIMAL: &str = r#"
        [[routes]]
        name = "vibration"
        topic_filter = "sensors/+/vibration"
        model = "edge"
        deadline_ms = 5.0
        command_topic = "actuators/{device}/cmd"

        [models.edge]
        manifest = "models/edge.manifest.json"
        fallback_manifest = "models/fallback.manifest.json"
    "#;

    fn parse_err(text: &str) -> (String, String) {
        match parse(text) {
            Err(ConfigError::Parse { field, message, .. }) => (field, message),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    fn invalid(config: &Config) -> Vec<ValidationError> {
        config
            .validate_with_cores(2)
            .expect_err("expected validation errors")
    }

    fn fields(errors: &[ValidationError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    fn minimal() -> Config {
        parse(MINIMAL).unwrap()
    }

    #[test]
    fn example_file_parses_and_validates() {
        let config = parse(EXAMPLE).unwrap();
        config.validate_with_cores(1).unwrap();
        assert_eq!(config.routes.len(), 1);
        let route = &config.routes[0];
        assert_eq!(route.name, "vibration");
        assert_eq!(route.topic_filter, "sensors/+/vibration");
        assert_eq!(route.budget(), Duration::from_millis(5));
        assert_eq!(route.command_topic_for("pump-7"), "actuators/pump-7/cmd");
        let model = config.model_of(route).unwrap();
        assert_eq!(model.manifest, Path::new("models/edge.manifest.json"));
        assert_eq!(
            model.fallback_manifest,
            Path::new("models/fallback.manifest.json")
        );
    }

    #[test]
    fn example_file_states_the_defaults() {
        // Everything the example spells out is the default, apart from routes and models.
        let example = parse(EXAMPLE).unwrap();
        let minimal = minimal();
        assert_eq!(example, minimal);
    }

    #[test]
    fn defaults_are_what_the_docs_say() {
        let c = minimal();
        c.validate_with_cores(1).unwrap();
        assert_eq!(c.node.name, "reflex");
        assert_eq!(c.client_id(), "reflexd-reflex");
        let m = &c.mqtt;
        assert_eq!((m.host.as_str(), m.port), ("127.0.0.1", 1883));
        assert_eq!(
            (&m.client_id, &m.username, &m.password, &m.password_file),
            (&None, &None, &None, &None)
        );
        assert_eq!(m.tls, TlsConfig::default());
        assert!(!m.tls.enabled);
        assert_eq!(m.keep_alive(), Duration::from_secs(5));
        assert_eq!(m.max_packet_bytes, 16_384);
        assert_eq!(m.request_channel_capacity, 10_000);
        assert_eq!(
            m.reconnect_backoff(),
            (Duration::from_millis(100), Duration::from_millis(5_000))
        );
        assert!(!m.clean_session);
        let r = &c.routes[0];
        assert_eq!(r.format, Format::Postcard);
        assert_eq!((r.qos_in, r.qos_out), (1, 1));
        assert_eq!(r.on_budget_unmeetable, OnBudgetUnmeetable::Refuse);
        let model = &c.models["edge"];
        assert_eq!((model.calibration_runs, model.hot_reload), (2_000, true));
        assert_eq!(c.scheduler.workers, 1);
        assert_eq!(c.scheduler.max_batch, 8);
        assert_eq!(c.scheduler.queue_capacity, 4_096);
        assert_eq!(c.scheduler.safety_margin(), Duration::from_micros(200));
        assert_eq!(
            (c.devices.max_tracked, c.devices.dedupe_window),
            (10_000, 1_024)
        );
        assert_eq!((c.bad_input.keep_last, c.bad_input.log_every_s), (100, 10));
        assert!(c.metrics.enabled);
        assert_eq!(
            c.metrics.listen_addr().unwrap(),
            "127.0.0.1:9464".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(c.shutdown.grace(), Duration::from_millis(5_000));
    }

    #[test]
    fn unknown_field_is_refused_naming_it() {
        let (field, message) = parse_err(&format!("{MINIMAL}\n[scheduler]\nworkres = 2\n"));
        assert!(field.starts_with("scheduler"), "{field}");
        assert!(message.contains("unknown field `workres`"), "{message}");
        let err = parse(&MINIMAL.replace("deadline_ms", "deadline_msec")).unwrap_err();
        assert!(err.to_string().contains("deadline_msec"), "{err}");
    }

    #[test]
    fn unknown_section_is_refused_naming_it() {
        let (_, message) = parse_err(&format!("{MINIMAL}\n[metrix]\nenabled = false\n"));
        assert!(message.contains("metrix"), "{message}");
    }

    #[test]
    fn wrong_type_is_refused_naming_the_field() {
        let (field, message) = parse_err(&format!("{MINIMAL}\n[mqtt]\nport = \"1883\"\n"));
        assert_eq!(field, "mqtt.port");
        assert!(message.contains("invalid type"), "{message}");
        let (field, _) = parse_err(&MINIMAL.replace("5.0", "\"fast\""));
        assert_eq!(field, "routes[0].deadline_ms");
    }

    #[test]
    fn toml_syntax_error_is_reported_with_its_line() {
        let err = parse("[mqtt\nport = 1").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 1"), "{text}");
    }

    #[test]
    fn three_distinct_errors_are_all_reported_with_their_field_paths() {
        let mut c = minimal();
        c.routes.push(RouteConfig {
            name: "temperature".into(),
            topic_filter: "sensors/+/temperature".into(),
            model: "edge".into(),
            format: Format::Json,
            deadline_ms: 0.0,
            command_topic: "actuators/{device}/cmd".into(),
            qos_in: 1,
            qos_out: 1,
            on_budget_unmeetable: OnBudgetUnmeetable::Warn,
        });
        c.mqtt.keep_alive_s = 0;
        c.metrics.listen = "localhost".into();
        let errors = invalid(&c);
        assert_eq!(
            fields(&errors),
            [
                "mqtt.keep_alive_s",
                "routes[1].deadline_ms",
                "metrics.listen"
            ]
        );
        let text = ConfigError::Invalid(errors).to_string();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(
            text.contains("routes[1].deadline_ms = 0: must be finite"),
            "{text}"
        );
        assert!(text.contains("metrics.listen = \"localhost\""), "{text}");
    }

    #[test]
    fn bad_topic_filters_are_refused() {
        for bad in [
            "",
            "sensors/#/vibration",
            "sensors/a+/x",
            "sensors/+x",
            "sensors/x#",
            "a\0b",
        ] {
            assert!(check_topic_filter(bad).is_err(), "{bad:?} accepted");
            let mut c = minimal();
            c.routes[0].topic_filter = bad.into();
            let errors = invalid(&c);
            assert_eq!(fields(&errors), ["routes[0].topic_filter"], "{bad:?}");
            assert!(errors[0].value.contains(&format!("{bad:?}")));
        }
        for good in [
            "#",
            "+",
            "sensors/+/vibration",
            "sensors/#",
            "+/+/x",
            "/a",
            "$SYS/#",
        ] {
            assert_eq!(check_topic_filter(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn overlapping_route_filters_are_refused() {
        assert!(filters_overlap("sensors/+/vibration", "sensors/pump-1/+"));
        assert!(filters_overlap("sensors/#", "sensors"));
        assert!(filters_overlap("a/b", "a/b"));
        assert!(!filters_overlap(
            "sensors/+/vibration",
            "sensors/+/temperature"
        ));
        assert!(!filters_overlap("a/+", "a"));
        assert!(!filters_overlap("a/b/c", "a/b"));
        let mut c = minimal();
        let mut second = c.routes[0].clone();
        second.name = "all".into();
        second.topic_filter = "sensors/#".into();
        c.routes.push(second);
        assert_eq!(fields(&invalid(&c)), ["routes[1].topic_filter"]);
    }

    #[test]
    fn route_rules_are_enforced() {
        let mut c = minimal();
        let mut r = c.routes[0].clone();
        r.topic_filter = "other/+".into();
        r.model = "missing".into();
        r.deadline_ms = f64::NAN;
        r.command_topic = "actuators/+/cmd".into();
        r.qos_in = 2;
        c.routes.push(r);
        let errors = invalid(&c);
        assert_eq!(
            fields(&errors),
            [
                "routes[1].name",
                "routes[1].model",
                "routes[1].deadline_ms",
                "routes[1].command_topic",
                "routes[1].qos_in"
            ]
        );
        assert!(errors[0].reason.contains("duplicate"));
    }

    #[test]
    fn command_topic_needs_the_device_placeholder_and_nothing_else() {
        for bad in [
            "actuators/cmd",
            "actuators/{device}/{id}",
            "actuators/{device}/#",
        ] {
            let mut c = minimal();
            c.routes[0].command_topic = bad.into();
            assert_eq!(fields(&invalid(&c)), ["routes[0].command_topic"], "{bad}");
        }
    }

    #[test]
    fn no_routes_is_refused() {
        let c = parse("[models.edge]\nmanifest = \"a\"\nfallback_manifest = \"b\"\n").unwrap();
        assert_eq!(fields(&invalid(&c)), ["routes"]);
    }

    #[test]
    fn deadline_must_leave_room_for_the_safety_margin() {
        let mut c = minimal();
        c.routes[0].deadline_ms = 0.2;
        assert_eq!(fields(&invalid(&c)), ["routes[0].deadline_ms"]);
        c.routes[0].deadline_ms = 10_000.5;
        assert_eq!(fields(&invalid(&c)), ["routes[0].deadline_ms"]);
    }

    #[test]
    fn max_packet_must_hold_the_largest_event_of_the_route_format() {
        let mut c = minimal();
        c.mqtt.max_packet_bytes = reflex_wire::MAX_EVENT_BYTES + PUBLISH_OVERHEAD_BYTES;
        c.validate_with_cores(1).unwrap();
        c.routes[0].format = Format::Json;
        assert_eq!(fields(&invalid(&c)), ["mqtt.max_packet_bytes"]);
    }

    #[test]
    fn persistent_session_needs_a_client_id() {
        let mut c = minimal();
        c.mqtt.client_id = Some(String::new());
        assert_eq!(fields(&invalid(&c)), ["mqtt.client_id"]);
        c.mqtt.clean_session = true;
        c.validate_with_cores(1).unwrap();
    }

    #[test]
    fn credentials_and_tls_must_be_consistent() {
        let mut c = minimal();
        c.mqtt.password = Some(Secret::new("hunter2"));
        c.mqtt.password_file = Some("/run/pw".into());
        c.mqtt.tls.ca_file = Some("ca.pem".into());
        let errors = invalid(&c);
        assert_eq!(
            fields(&errors),
            ["mqtt.password_file", "mqtt.username", "mqtt.tls.ca_file"]
        );
        c.mqtt.username = Some("reflexd".into());
        c.mqtt.password_file = None;
        c.mqtt.tls.enabled = true;
        c.mqtt.tls.client_cert_file = Some("c.pem".into());
        assert_eq!(fields(&invalid(&c)), ["mqtt.tls.client_key_file"]);
        c.mqtt.tls.client_key_file = Some("c.key".into());
        c.validate_with_cores(1).unwrap();
    }

    #[test]
    fn password_never_shows_in_debug_output() {
        let mut c = minimal();
        c.mqtt.password = Some(Secret::new("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(
            c.mqtt.resolve_password().unwrap().unwrap().expose(),
            "hunter2"
        );
    }

    #[test]
    fn realtime_priority_above_fifty_is_refused_and_zero_turns_it_off() {
        let mut c = minimal();
        assert_eq!(c.scheduler.realtime_priority, 10);
        c.scheduler.realtime_priority = 51;
        assert_eq!(fields(&invalid(&c)), ["scheduler.realtime_priority"]);
        c.scheduler.realtime_priority = 0;
        c.validate_with_cores(4).unwrap();
    }

    #[test]
    fn workers_are_bounded_by_the_cores() {
        let mut c = minimal();
        c.scheduler.workers = 3;
        assert_eq!(fields(&invalid(&c)), ["scheduler.workers"]);
        c.validate_with_cores(4).unwrap();
        c.scheduler.workers = 0;
        assert_eq!(fields(&invalid(&c)), ["scheduler.workers"]);
    }

    #[test]
    fn section_limits_are_enforced() {
        let mut c = minimal();
        c.node.name = "bad name".into();
        c.scheduler.queue_capacity = 0;
        c.scheduler.max_batch = 65;
        c.devices.max_tracked = 0;
        c.devices.dedupe_window = MAX_DEDUPE_WINDOW + 1;
        c.bad_input.log_every_s = 0;
        c.mqtt.reconnect_max_ms = 50;
        c.models.get_mut("edge").unwrap().calibration_runs = 10;
        assert_eq!(
            fields(&invalid(&c)),
            [
                "node.name",
                "mqtt.reconnect_max_ms",
                "models.edge.calibration_runs",
                "scheduler.queue_capacity",
                "scheduler.max_batch",
                "devices.max_tracked",
                "devices.dedupe_window",
                "bad_input.log_every_s"
            ]
        );
    }

    #[test]
    fn metrics_may_listen_on_any_address_chosen_explicitly() {
        let mut c = minimal();
        c.metrics.listen = "0.0.0.0:9464".into();
        c.validate_with_cores(1).unwrap();
        c.metrics.listen = "[::1]:9464".into();
        c.validate_with_cores(1).unwrap();
    }

    #[test]
    fn load_reports_every_problem_of_a_file() {
        let dir = std::env::temp_dir().join(format!("reflexd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(
            &path,
            MINIMAL.replace("5.0", "-1.0").replace("{device}", "x"),
        )
        .unwrap();
        let err = load(&path).unwrap_err();
        match &err {
            ConfigError::Invalid(errors) => assert_eq!(
                fields(errors),
                ["routes[0].deadline_ms", "routes[0].command_topic"]
            ),
            other => panic!("{other:?}"),
        }
        let missing = load(dir.join("missing.toml")).unwrap_err();
        assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn check_files_reports_unreadable_manifests() {
        let dir = std::env::temp_dir().join(format!("reflexd-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = dir.join("edge.manifest.json");
        std::fs::write(&manifest, "{}").unwrap();
        let mut c = minimal();
        let m = c.models.get_mut("edge").unwrap();
        m.manifest = manifest;
        m.fallback_manifest = dir.join("nope.json");
        let problems = c.check_files();
        assert_eq!(fields(&problems), ["models.edge.fallback_manifest"]);
        assert!(problems[0].reason.starts_with("cannot open"));
        c.models.get_mut("edge").unwrap().fallback_manifest = dir.clone();
        assert_eq!(c.check_files()[0].reason, "not a regular file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `minimal()` with a journal and an upload section (files not checked by `validate`).
    fn with_upload(extra: &str) -> Config {
        let text = format!(
            "{MINIMAL}\n[journal]\ndir = \"/tmp/j\"\n\n[upload]\nurl = \"https://ingest.example\"\n\
             token_file = \"/nonexistent/token\"\n{extra}\n"
        );
        parse(&text).unwrap()
    }

    #[test]
    fn parse_upload_window_reads_utc_hh_mm_ranges_and_refuses_anything_else() {
        assert_eq!(parse_upload_window("01:00-02:30"), Some((60, 150)));
        assert_eq!(parse_upload_window("22:00-06:00"), Some((1320, 360)));
        assert_eq!(parse_upload_window("00:00-23:59"), Some((0, 1439)));
        assert_eq!(parse_upload_window(" 7:05 - 8:00 "), Some((425, 480)));
        for bad in [
            "",
            "01:00",
            "01:00-",
            "24:00-01:00",
            "01:00-01:60",
            "0100-0200",
            "1h-2h",
            "01:00-02:00-03:00",
            "-01:00-02:00",
            "01:00–02:00", // an en dash
        ] {
            assert_eq!(parse_upload_window(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_bad_upload_window_is_reported_with_its_field_and_value() {
        with_upload("window = \"23:00-06:00\"")
            .validate_with_cores(2)
            .unwrap();
        let errors = invalid(&with_upload("window = \"25:00-06:00\""));
        assert_eq!(fields(&errors), ["upload.window"]);
        assert!(errors[0].value.contains("25:00-06:00"), "{:?}", errors[0]);
        let text = errors[0].to_string();
        assert!(
            text.contains("upload.window") && text.contains("25:00-06:00"),
            "{text}"
        );
    }

    #[test]
    fn an_upload_ca_file_must_be_readable_and_hold_a_certificate() {
        let dir = std::env::temp_dir().join(format!("reflexd-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "t0ken\n").unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let certs = reflex_tests::make_test_certs(&dir);
        let check = |ca: Option<&Path>| {
            let mut c = with_upload("");
            let u = c.upload.as_mut().unwrap();
            u.token_file = token.clone();
            u.ca_file = ca.map(Path::to_path_buf);
            c.check_files()
                .into_iter()
                .filter(|e| e.field.starts_with("upload."))
                .collect::<Vec<_>>()
        };
        assert!(check(None).is_empty(), "default: webpki roots only");
        assert!(check(Some(&certs.ca_file)).is_empty());
        for (path, why) in [
            (dir.join("missing.pem"), "cannot read"),
            (empty.clone(), "no PEM certificate"),
            (certs.key_file.clone(), "no PEM certificate"),
        ] {
            let problems = check(Some(&path));
            assert_eq!(fields(&problems), ["upload.ca_file"], "{path:?}");
            assert!(problems[0].reason.contains(why), "{:?}", problems[0]);
            assert!(
                problems[0].value.contains(&path.display().to_string()),
                "{:?}",
                problems[0]
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
