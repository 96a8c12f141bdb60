//! The operator's HTTP endpoint: Prometheus `/metrics`, `/healthz` (the process is up) and
//! `/readyz` (recovery finished, the switch is taking traffic, and its log has not failed).
//!
//! Deliberately tiny: GET only, one request per connection, request head capped at 8 KiB, so
//! nothing a scraper sends can make it allocate without bound.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use super::replication::ReplicaState;
use super::telemetry::Scrape;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HEAD_BYTES_MAX: usize = 8 * 1024;

/// Serves until the listener fails; `ready` flips `/readyz` to 200, a non-zero `failed` (the
/// ledger stage's log failed) back to 503 for good.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Scrape>,
    ready: Arc<AtomicBool>,
    failed: Arc<AtomicU8>,
    replica: Arc<ReplicaState>,
) {
    let endpoints = Arc::new(Endpoints {
        metrics,
        ready,
        failed,
        replica,
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(endpoints.clone().answer(stream));
    }
}

/// What the endpoints read.
struct Endpoints {
    metrics: Arc<Scrape>,
    ready: Arc<AtomicBool>,
    failed: Arc<AtomicU8>,
    replica: Arc<ReplicaState>,
}

/// A response: status line, content type, body.
type Response = (&'static str, &'static str, String);

impl Endpoints {
    /// Reads one request's head (at most `HEAD_BYTES_MAX`, within five seconds) and answers it.
    async fn answer(self: Arc<Self>, mut stream: TcpStream) {
        let Ok(head) = tokio::time::timeout(Duration::from_secs(5), read_head(&mut stream)).await
        else {
            return;
        };
        let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut parts = line.split(' ');
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (status, content_type, body) = match (method, path) {
            ("GET", "/metrics") => self.metrics().await,
            ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
            ("GET", "/readyz") => self.readyz(),
            ("GET", "/cluster") => (
                "200 OK",
                "application/json",
                serde_json::to_string(&self.replica.view()).unwrap_or_default() + "\n",
            ),
            ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
            _ => (
                "405 Method Not Allowed",
                "text/plain",
                "GET only\n".to_string(),
            ),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    async fn metrics(&self) -> Response {
        let metrics = self.metrics.clone();
        // A scrape reads files (the process's, the log's): off the network threads.
        match tokio::task::spawn_blocking(move || metrics.render()).await {
            Ok(text) => ("200 OK", "text/plain; version=0.0.4", text),
            Err(_) => (
                "500 Internal Server Error",
                "text/plain",
                "rendering the metrics failed\n".to_string(),
            ),
        }
    }

    fn readyz(&self) -> Response {
        if self.failed.load(Ordering::Acquire) != 0 {
            (
                "503 Service Unavailable",
                "text/plain",
                "storage failed: not acknowledging; restart after fixing the disk\n".to_string(),
            )
        } else if self.ready.load(Ordering::Acquire) {
            ("200 OK", "text/plain", "ready\n".to_string())
        } else {
            (
                "503 Service Unavailable",
                "text/plain",
                "not ready\n".to_string(),
            )
        }
    }
}

/// A request's head: up to the blank line, the end of the stream, or `HEAD_BYTES_MAX`.
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < HEAD_BYTES_MAX {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
