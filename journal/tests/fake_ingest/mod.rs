//! A small real HTTP/1.1 ingest on 127.0.0.1 that implements the upload contract of
//! `reflex_journal::upload` (until the cloud crate's ingest exists): bearer token, size
//! limit, `decode_batch` with the id header, dedupe by batch id, and a record of what it
//! stored. Modes let a test lose an ack, answer a 2xx that is no ack, or fail requests;
//! [`Ingest::start_tls`] serves HTTPS.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use reflex_journal::record::{decode_batch, JournalRecord};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

/// How the ingest answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Per the contract.
    Normal,
    /// Store the next batch, then close the connection without answering (a lost ack).
    LoseNextAck,
    /// Answer 503 to everything.
    Unavailable,
    /// Store each batch, then answer 200 with an ack naming another batch id.
    WrongAckId,
    /// Store each batch, then answer 200 with an empty body.
    EmptyAck,
}

/// What the ingest saw and stored.
#[derive(Default)]
pub struct State {
    /// Batch ids stored, in order.
    pub stored_ids: Vec<String>,
    /// Every batch id received (including duplicates and refused ones).
    pub received_ids: Vec<String>,
    /// Stored records by (node, journal sequence); a second store of a key is a bug.
    pub records: HashMap<(String, u64), JournalRecord>,
    /// Keys stored more than once (must stay empty).
    pub stored_twice: Vec<(String, u64)>,
    /// Status codes answered, in order.
    pub statuses: Vec<u16>,
    /// TLS handshakes that failed (a TLS ingest only).
    pub tls_handshake_failures: usize,
    /// Why they failed.
    pub tls_errors: Vec<String>,
}

/// A running ingest.
pub struct Ingest {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    pub mode: Arc<Mutex<Mode>>,
    pub token: String,
    pub max_body: usize,
    /// Whether it speaks TLS (see [`Ingest::start_tls`]).
    pub tls: bool,
    task: tokio::task::JoinHandle<()>,
}

impl Ingest {
    /// Starts on `addr` (port 0 for any), plain HTTP.
    pub async fn start(addr: SocketAddr, token: &str, max_body: usize) -> Ingest {
        Self::start_with(addr, token, max_body, None).await
    }

    /// Starts on `addr` speaking HTTPS with the certificate chain and key in these PEM
    /// files. Failed handshakes are counted in [`State::tls_handshake_failures`].
    pub async fn start_tls(
        addr: SocketAddr,
        token: &str,
        max_body: usize,
        cert_file: &std::path::Path,
        key_file: &std::path::Path,
    ) -> Ingest {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
            .expect("read the server certificate")
            .collect::<Result<_, _>>()
            .expect("parse the server certificate");
        let key = PrivateKeyDer::from_pem_file(key_file).expect("read the server key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate and key");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::start_with(addr, token, max_body, Some(acceptor)).await
    }

    async fn start_with(
        addr: SocketAddr,
        token: &str,
        max_body: usize,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Ingest {
        let listener = TcpListener::bind(addr).await.expect("bind ingest");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let mode = Arc::new(Mutex::new(Mode::Normal));
        let (s, m, t) = (state.clone(), mode.clone(), token.to_owned());
        let is_tls = tls.is_some();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (s, m, t, tls) = (s.clone(), m.clone(), t.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => {
                            let _ = handle(stream, &s, &m, &t, max_body).await;
                        }
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => {
                                let _ = handle(stream, &s, &m, &t, max_body).await;
                            }
                            Err(e) => {
                                let mut s = s.lock().unwrap();
                                s.tls_handshake_failures += 1;
                                s.tls_errors.push(e.to_string());
                            }
                        },
                    }
                });
            }
        });
        Ingest {
            addr,
            state,
            mode,
            token: token.to_owned(),
            max_body,
            tls: is_tls,
            task,
        }
    }

    /// The base URL (`https://127.0.0.1:port` for a TLS ingest: the certificate names
    /// IP 127.0.0.1).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops accepting (the listener closes: connections are refused).
    pub async fn stop(self) -> Arc<Mutex<State>> {
        self.task.abort();
        let _ = self.task.await;
        self.state
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
}

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        413 => "Payload Too Large",
        _ => "Service Unavailable",
    };
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(msg.as_bytes()).await?;
    stream.shutdown().await
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    state: &Mutex<State>,
    mode: &Mutex<Mode>,
    token: &str,
    max_body: usize,
) -> std::io::Result<()> {
    // Headers.
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 64 << 10 {
            return respond(&mut stream, 400, r#"{"error":"headers too large"}"#).await;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if request_line != "POST /v1/batches HTTP/1.1" {
        return respond(&mut stream, 400, r#"{"error":"unknown route"}"#).await;
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {token}")) {
        state.lock().unwrap().statuses.push(401);
        return respond(&mut stream, 401, r#"{"error":"bad token"}"#).await;
    }
    if len > max_body {
        state.lock().unwrap().statuses.push(413);
        return respond(&mut stream, 413, r#"{"error":"too large"}"#).await;
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let mut chunk = vec![0u8; len - body.len()];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let id = headers
        .get("x-reflex-batch-id")
        .cloned()
        .unwrap_or_default();
    let current = *mode.lock().unwrap();
    if current == Mode::Unavailable {
        state.lock().unwrap().statuses.push(503);
        return respond(&mut stream, 503, r#"{"error":"down"}"#).await;
    }
    let batch = match decode_batch(&body, Some(&id)) {
        Ok(b) => b,
        Err(e) => {
            {
                let mut s = state.lock().unwrap();
                s.received_ids.push(id);
                s.statuses.push(400);
            }
            let msg = format!(r#"{{"error":"{}"}}"#, e.to_string().replace('"', "'"));
            return respond(&mut stream, 400, &msg).await;
        }
    };
    let duplicate = {
        let mut s = state.lock().unwrap();
        s.received_ids.push(id.clone());
        let seen: HashSet<&String> = s.stored_ids.iter().collect();
        let duplicate = seen.contains(&id);
        if !duplicate {
            s.stored_ids.push(id.clone());
            for (seq, rec) in batch.records {
                let key = (batch.header.node.clone(), seq);
                if s.records.insert(key.clone(), rec).is_some() {
                    s.stored_twice.push(key);
                }
            }
        }
        s.statuses.push(200);
        duplicate
    };
    if current == Mode::LoseNextAck {
        *mode.lock().unwrap() = Mode::Normal;
        // Stored, but the client never hears about it.
        return Ok(());
    }
    match current {
        Mode::WrongAckId => {
            let other = "0".repeat(64);
            let msg = format!(r#"{{"batch_id":"{other}","status":"stored","records":1}}"#);
            return respond(&mut stream, 200, &msg).await;
        }
        Mode::EmptyAck => return respond(&mut stream, 200, "").await,
        _ => {}
    }
    let status = if duplicate { "duplicate" } else { "stored" };
    let msg = format!(
        r#"{{"batch_id":"{id}","status":"{status}","records":{}}}"#,
        batch.header.count
    );
    respond(&mut stream, 200, &msg).await
}
