//! `[upload]`: bulk upload of the journal to the cloud ingest.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::{ConfigError, Problems};
use super::mqtt::Secret;

/// `[upload]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    /// Base URL of the cloud ingest, `https://…` (`http://` only to a loopback host);
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
        let text = reflex_service::secret::read_secret_file(&self.token_file)?;
        Ok(Secret::new(text.trim_end_matches(['\n', '\r']).to_owned()))
    }
}

/// Whether `url` may be used: any `https://` URL, and `http://` only to a loopback host.
pub fn plain_http_allowed(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return true;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    let loopback_ip = host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback());
    loopback_ip || host.eq_ignore_ascii_case("localhost")
}

impl UploadConfig {
    /// Checks the values; `has_journal` tells whether a `[journal]` exists to upload from.
    pub(super) fn validate(&self, has_journal: bool, p: &mut Problems) {
        if !has_journal {
            p.add_str("upload", "[upload]", "needs a [journal] to upload from");
        }
        let scheme_ok = self.url.starts_with("https://") || self.url.starts_with("http://");
        if !scheme_ok || self.url.contains(char::is_whitespace) {
            p.add_str(
                "upload.url",
                &self.url,
                "must be an http:// or https:// URL",
            );
        } else if !plain_http_allowed(&self.url) {
            p.add_str(
                "upload.url",
                &self.url,
                "plain http:// only to a loopback host (127.0.0.1, ::1, localhost): the token and the records would cross the network in clear; use https://",
            );
        }
        p.range("upload.batch_records", self.batch_records, 1, 1_000_000);
        p.range("upload.batch_kib", self.batch_kib, 1, 1 << 20);
        p.range("upload.batch_age_s", self.batch_age_s, 1, 86_400);
        p.range("upload.request_timeout_s", self.request_timeout_s, 1, 3_600);
        if let Some(w) = &self.window {
            if parse_upload_window(w).is_none() {
                p.add_str("upload.window", w, "must be \"HH:MM-HH:MM\" (UTC)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::plain_http_allowed;

    #[test]
    fn plain_http_is_allowed_only_to_a_loopback_host() {
        for ok in [
            "https://cloud.example.com",
            "http://127.0.0.1:8080",
            "http://127.9.9.9/x",
            "http://[::1]:80/",
            "http://localhost:9000",
            "http://user@127.0.0.1",
        ] {
            assert!(plain_http_allowed(ok), "{ok}");
        }
        for refused in [
            "http://cloud.example.com",
            "http://10.0.0.5:8080",
            "http://[2001:db8::1]/",
            "http://127.0.0.1.evil.com/",
            "http://localhost.evil.com",
        ] {
            assert!(!plain_http_allowed(refused), "{refused}");
        }
    }
}
