//! The operator's HTTP endpoint: Prometheus `/metrics`, `/healthz` (the process is up) and
//! `/readyz` (recovery finished, the switch is taking traffic, and its log has not failed).
//!
//! Deliberately tiny: GET only, one request per connection, request head capped at 8 KiB, at
//! most `CONNECTIONS_MAX` connections at once and `EXCHANGE_TIMEOUT` for each, so nothing a
//! scraper (or anything else that can reach the address) sends can make it allocate or hold
//! descriptors without bound.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use super::replication::ReplicaState;
use super::telemetry::Scrape;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HEAD_BYTES_MAX: usize = 8 * 1024;
/// Connections served at once; one more is closed as soon as it is accepted. Scrapers and
/// probes need a handful.
pub const CONNECTIONS_MAX: usize = 64;
/// The whole exchange, from accepting to the last byte written: a client that sends nothing,
/// or never reads the answer, gives its connection up after this.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// After `accept` fails (out of descriptors, say), the pause before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

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
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let mut failing = false;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                failing = false;
                stream
            }
            Err(e) => {
                metrics::counter!("switch_http_accept_failed_total").increment(1);
                if !failing {
                    tracing::warn!("the HTTP endpoint cannot accept a connection: {e}");
                    failing = true;
                }
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("switch_http_refused_total").increment(1);
            drop(stream);
            continue;
        };
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, endpoints.answer(stream)).await;
            drop(slot);
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    async fn start() -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let scrape = Arc::new(Scrape::new(handle, Arc::new(|| None)));
        let replica = Arc::new(ReplicaState::new(1, Vec::new()));
        tokio::spawn(serve(
            listener,
            scrape,
            Arc::new(AtomicBool::new(true)),
            Arc::new(AtomicU8::new(0)),
            replica,
        ));
        addr
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut text = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut text))
            .await
            .expect("an answer in time");
        text
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_closed_at_once_and_a_freed_slot_serves_again() {
        let addr = start().await;
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        // Connections that send nothing hold every slot (each would wait out its read).
        let mut idle = Vec::new();
        for _ in 0..CONNECTIONS_MAX {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let mut one_more = TcpStream::connect(addr).await.expect("connect");
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(2), one_more.read(&mut buf))
            .await
            .expect("closed at once, not held for the head's five seconds");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // One idle connection goes: its slot serves the next request.
        drop(idle.pop());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let answer = get(addr, "/healthz").await;
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(Instant::now() < deadline, "no slot came free: {answer:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
