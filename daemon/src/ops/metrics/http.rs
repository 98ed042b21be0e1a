//! The `/metrics`, `/healthz`, `/readyz` and `/bad-input` endpoint over a deliberately tiny HTTP/1.1:
//! one request per connection, request bounded to 8 KiB and 2 s, `Connection: close`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Metrics;
use crate::ops::bad_input::BadInputLog;

/// Largest request (line and headers) read from a client.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request, and to take the response.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections handled at once; more are closed straight away.
const MAX_CONNECTIONS: usize = 16;

/// Serves `GET /metrics`, `GET /healthz`, `GET /readyz` and `GET /bad-input` on `listener` until `shutdown` is
/// cancelled, then waits for the connections in flight (each bounded by the 2 s
/// timeouts, and cut short by the shutdown) and returns.
///
/// Transient accept errors (e.g. out of file descriptors) are retried after a short
/// pause, never returned, so the endpoint cannot take the daemon down.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    bad_input: BadInputLog,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                if tracker.len() >= MAX_CONNECTIONS {
                    drop(stream);
                    continue;
                }
                let metrics = Arc::clone(&metrics);
                let bad_input = bad_input.clone();
                let shutdown = shutdown.clone();
                tracker.spawn(async move {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        _ = handle(stream, &metrics, &bad_input) => {}
                    }
                });
            }
            Err(_) => {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// One request, one response, close.
async fn handle(
    mut stream: TcpStream,
    metrics: &Metrics,
    bad_input: &BadInputLog,
) -> std::io::Result<()> {
    let Ok(request) = tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await else {
        return Ok(()); // Too slow: drop without an answer.
    };
    let response = match request? {
        None => response(
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n",
        ),
        Some(head) => route(&head, metrics, bad_input),
    };
    tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .unwrap_or(Ok(()))
}

/// Reads until the blank line ending the headers; `None` when it does not come within
/// [`MAX_REQUEST`] bytes or the client closes first.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    while len < MAX_REQUEST {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(None);
        }
        len += n;
        if let Some(end) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned()));
        }
    }
    Ok(None)
}

fn route(head: &str, metrics: &Metrics, bad_input: &BadInputLog) -> String {
    let mut parts = head.lines().next().unwrap_or("").split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => response(
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            &metrics.render(),
        ),
        ("GET", "/healthz") => response("200 OK", "text/plain; charset=utf-8", "ok\n"),
        ("GET", "/readyz") => readyz(metrics),
        ("GET", "/bad-input") => response("200 OK", "application/json", &bad_input.to_json()),
        _ => response("404 Not Found", "text/plain; charset=utf-8", "not found\n"),
    }
}

/// 200 `ready`, or 503 with one reason a line.
fn readyz(metrics: &Metrics) -> String {
    let text = "text/plain; charset=utf-8";
    match metrics.readiness().map(|r| r.check()) {
        Some(Ok(())) => response("200 OK", text, "ready\n"),
        Some(Err(reasons)) => {
            let body: String = reasons.iter().map(|r| format!("{r}\n")).collect();
            response("503 Service Unavailable", text, &body)
        }
        None => response("503 Service Unavailable", text, "starting\n"),
    }
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
