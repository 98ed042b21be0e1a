//! `[mqtt]` and `[mqtt.tls]`: the broker connection, its credentials and TLS.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{show_path, ConfigError, Problems};
use super::{DEFAULT_MAX_PACKET_BYTES, MQTT_MAX_PACKET_BYTES, PUBLISH_OVERHEAD_BYTES};

/// A secret string whose `Debug` output and serialized form (`reflexd config show`) are
/// redacted, so it never reaches a log or a terminal.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

/// What a [`Secret`] serializes to.
pub const REDACTED: &str = "***";

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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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
    /// Largest MQTT packet sent, in bytes. Must hold the largest event of every route's
    /// format plus [`PUBLISH_OVERHEAD_BYTES`]. Incoming packets are read whatever their size
    /// (bound them with the broker's `message_size_limit`); a payload larger than its
    /// route's format allows is refused as bad input (`oversized`). Default: `205065`
    /// ([`DEFAULT_MAX_PACKET_BYTES`]: a JSON route's largest event plus the overhead).
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
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
            request_channel_capacity: 10_000,
            reconnect_initial_ms: 100,
            reconnect_max_ms: 5_000,
            clean_session: false,
        }
    }
}

impl MqttConfig {
    /// Checks the values; `client_id` is the effective one ([`Config::client_id`]), and
    /// `needed` the largest packet a route's event needs, MQTT overhead included.
    ///
    /// [`Config::client_id`]: super::Config::client_id
    pub(super) fn validate(&self, client_id: &str, needed: usize, p: &mut Problems) {
        let m = self;
        if m.host.trim().is_empty() || m.host.contains(char::is_whitespace) {
            p.add_str("mqtt.host", &m.host, "must be a host name or address");
        }
        if m.port == 0 {
            p.add("mqtt.port", 0, "must be in 1..=65535");
        }
        if !m.clean_session && client_id.is_empty() {
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
        let text = reflex_service::secret::read_secret_file(path)?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        Ok(Some(Secret::new(text)))
    }
}

/// `[mqtt.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
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
