//! A real S3-compatible server for tests: moto's server mode (PyPI `moto[server]`, pinned
//! and installed by `scripts/test`), on a free 127.0.0.1 port, in memory, killed on drop.
//!
//! moto answers the S3 REST API reflex-cloud uses (PUT, GET, HEAD, LIST, and PUT with
//! `If-None-Match: *`, which fails with 412 when the key exists: object_store's
//! `PutMode::Create`). It does not check request signatures, so any credentials do; the
//! tests still pass them through a secret file as an operator would.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{free_port, ChildGuard};

/// The moto version `scripts/test` installs.
pub const MOTO_VERSION: &str = "5.2.1";

/// The credentials the tests configure (moto accepts any).
pub const ACCESS_KEY_ID: &str = "reflex-test";
/// See [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str = "reflex-test-secret";

/// A running moto S3 server with one bucket.
pub struct S3Server {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The bucket created at start.
    pub bucket: String,
    guard: ChildGuard,
}

impl S3Server {
    /// `http://127.0.0.1:<port>`, the `storage.endpoint` to configure (with `allow_http`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `[storage]` table of a reflex-cloud config using `prefix` in this server's
    /// bucket with the credentials file `credentials_file` (see [`write_credentials`]).
    pub fn storage_toml(&self, credentials_file: &std::path::Path, prefix: &str) -> String {
        format!(
            "[storage]\nkind = \"s3\"\nbucket = \"{}\"\nregion = \"us-east-1\"\n\
             endpoint = \"{}\"\nallow_http = true\nprefix = \"{prefix}\"\n\
             credentials_file = {:?}\n",
            self.bucket,
            self.endpoint(),
            credentials_file.display().to_string()
        )
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.guard.child.try_wait(), Ok(None))
    }
}

/// Writes a credentials file (mode 0600) for [`S3Server`] at `path`.
pub fn write_credentials(path: &std::path::Path) {
    crate::write_secret(
        path,
        &format!(
            "access_key_id = \"{ACCESS_KEY_ID}\"\nsecret_access_key = \"{SECRET_ACCESS_KEY}\"\n"
        ),
    );
}

/// `moto_server` on PATH, or a panic saying how to install it: a test that needs the S3
/// server fails loudly without it.
pub fn moto_server() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("moto_server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`moto_server` not found on PATH: install it \
                 (pip install 'moto[server]=={MOTO_VERSION}') or run scripts/test"
            )
        })
}

/// Starts moto's S3 server on a free loopback port and creates `bucket` in it.
pub fn spawn_s3_server(bucket: &str) -> S3Server {
    let port = free_port();
    let child = Command::new(moto_server())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning moto_server");
    let mut guard = ChildGuard::new("moto_server", child);
    guard.wait_listening(port, Duration::from_secs(60));
    let status = http_status(port, "PUT", &format!("/{bucket}"));
    assert_eq!(status, 200, "creating bucket {bucket} on moto_server");
    S3Server {
        port,
        bucket: bucket.to_owned(),
        guard,
    }
}

/// Sends an empty unsigned request and returns the status code (moto checks no signature).
fn http_status(port: u16, method: &str, path: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to moto_server");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )
    .expect("writing to moto_server");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status from moto_server: {answer:?}"))
}
