//! Abusive clients against one switch, over real QUIC on loopback, while a well-behaved client
//! keeps working: one that opens connections beyond the limit, one that opens streams beyond
//! the limit, one that sends oversized frames, and one that sends requests and never reads
//! the answers. The well-behaved client must keep getting correct answers in bounded time,
//! each abuser must be stopped by its limit, and the server's memory must stay bounded.
//!
//! The server runs in this process, so its memory is this process's resident set
//! (`/proc/self/status`, VmRSS); the abusive clients themselves hold little.
//! One test per file: the resident set is the whole process's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::{CNY, echo_frame, loopback_config, req, setup_requests};
use switch::client::{Client, Stream};
use switch::config::Config;
use switch::server::{self, Running};
use switch::tls::Trust;
use switch::wire::{
    self, AccountId, Amount, AppErrorCode, CardNumber, ErrorCode, Frame, Limits, Operation,
    Request, ResponseCode as Code,
};

const LIMIT: Duration = Duration::from_secs(30);
/// The longest a well-behaved request may wait for its answer while the abuse goes on.
const ANSWER_MAX: Duration = Duration::from_secs(3);
const CONNECTIONS_MAX: u32 = 8;
const STREAMS_MAX: u32 = 4;
const FRAME_BYTES_MAX: u32 = 64 * 1024;
const MALFORMED_MAX: u32 = 3;
/// How long the abuse lasts.
const ABUSE: Duration = Duration::from_secs(5);

fn config(dir: &std::path::Path) -> Config {
    let mut config = loopback_config(dir);
    config.limits.connections_max = CONNECTIONS_MAX;
    config.limits.streams_per_connection_max = STREAMS_MAX;
    config.limits.frame_bytes_max = FRAME_BYTES_MAX;
    config.limits.malformed_frames_max = MALFORMED_MAX;
    config
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

async fn connect(running: &Running) -> Result<Client, switch::client::ClientError> {
    let trust = Trust::Fingerprint(running.fingerprint.expect("a certificate"));
    match tokio::time::timeout(LIMIT, Client::connect(running.quic_addr, &trust, None)).await {
        Ok(result) => result,
        Err(_) => panic!("connecting took longer than {LIMIT:?}"),
    }
}

fn sale(id: u128) -> Request {
    req(
        id,
        Operation::Sale {
            number: CardNumber::new("6200000000000001").expect("digits"),
            merchant: AccountId(300),
            amount: Amount(1),
            currency: CNY,
        },
    )
}

/// Sales one after the other until `stop`; every one must be approved within `ANSWER_MAX`.
/// Returns how many were approved and the slowest answer.
async fn well_behaved(stream: Stream, first: u128, stop: Arc<AtomicBool>) -> (u64, Duration) {
    let mut approved = 0;
    let mut slowest = Duration::ZERO;
    let mut id = first;
    while !stop.load(Ordering::Acquire) {
        let started = Instant::now();
        let answer = tokio::time::timeout(ANSWER_MAX, stream.call(&[sale(id)]))
            .await
            .unwrap_or_else(|_| panic!("sale {id} not answered within {ANSWER_MAX:?}"))
            .expect("answered");
        assert_eq!(answer[0].code, Code::Approved, "sale {id}: {answer:?}");
        slowest = slowest.max(started.elapsed());
        approved += 1;
        id += 1;
    }
    (approved, slowest)
}

/// Writes echo frames on every stream it may open and never reads an answer, until aborted;
/// `sent` counts the bytes the server took.
async fn never_reads(client: Client, sent: Arc<AtomicU64>) {
    let mut writers = Vec::new();
    for s in 0..STREAMS_MAX {
        let (mut send, recv) = client.connection().open_bi().await.expect("a stream");
        let sent = sent.clone();
        writers.push(tokio::spawn(async move {
            let _unread = recv;
            let mut correlation_id = u64::from(s) << 32;
            loop {
                correlation_id += 1;
                let frame = echo_frame(correlation_id, FRAME_BYTES_MAX);
                // Blocks for good once flow control says the server stopped reading.
                if send.write_all(&frame).await.is_err() {
                    return;
                }
                sent.fetch_add(frame.len() as u64, Ordering::AcqRel);
            }
        }));
    }
    for writer in writers {
        let _ = writer.await;
    }
    drop(client);
}

/// Sends frames whose length prefix is far beyond the limit, on new streams, until the server
/// closes the connection. Returns how many it sent and the close reason.
async fn oversized(client: Client) -> (u32, Option<quinn::ConnectionError>) {
    let limits = Limits {
        frame_len_max: u32::MAX,
        batch_len_max: u16::MAX,
    };
    let mut sent = 0;
    for _ in 0..MALFORMED_MAX + 5 {
        let Ok((mut send, mut recv)) = client.connection().open_bi().await else {
            break;
        };
        let mut header = Vec::new();
        header.extend_from_slice(&(100u32 << 20).to_le_bytes());
        header.extend_from_slice(&[wire::VERSION, 1, 0, 0]);
        header.extend_from_slice(&7u64.to_le_bytes());
        if send.write_all(&header).await.is_err() {
            break;
        }
        sent += 1;
        // The answer is an error frame, before any of the 100 MiB could be sent.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let frame = tokio::time::timeout(LIMIT, async {
            loop {
                if let Ok(Some((frame, _))) = wire::decode_frame(&buf, &limits) {
                    return Some(frame);
                }
                match recv.read(&mut chunk).await {
                    Ok(Some(n)) => buf.extend_from_slice(&chunk[..n]),
                    _ => return None,
                }
            }
        })
        .await
        .expect("answered in time");
        match frame {
            Some(Frame::Error { code, .. }) => assert_eq!(code, ErrorCode::FrameTooLarge),
            Some(other) => panic!("an oversized frame answered with {other:?}"),
            None => break,
        }
    }
    let closed = tokio::time::timeout(LIMIT, client.connection().closed())
        .await
        .ok();
    (sent, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_clients_are_cut_off_and_well_behaved_ones_keep_being_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = tokio::time::timeout(LIMIT, server::start(config(dir.path()), None))
        .await
        .expect("start in time")
        .expect("starts");

    let good = connect(&running)
        .await
        .expect("the well-behaved client connects");
    let stream = good.stream().await.expect("a stream");
    for r in setup_requests(1_000_000_000) {
        let answer = stream.call(&[r]).await.expect("answered");
        assert_eq!(answer[0].code, Code::Approved, "{answer:?}");
    }
    // Warm up, so that idle memory includes what serving costs anyway.
    let warm = Arc::new(AtomicBool::new(false));
    let warmer = tokio::spawn(well_behaved(stream.clone(), 10_000, warm.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    warm.store(true, Ordering::Release);
    let (warm_approved, _) = warmer.await.expect("warm-up");
    assert!(warm_approved > 0);
    let idle_kib = rss_kib();

    let stop = Arc::new(AtomicBool::new(false));
    let serving = tokio::spawn(well_behaved(stream.clone(), 1_000_000, stop.clone()));

    // The client that never reads.
    let silent = connect(&running).await.expect("connects");
    let silent_sent = Arc::new(AtomicU64::new(0));
    let silent_task = tokio::spawn(never_reads(silent, silent_sent.clone()));

    // The client that sends oversized frames.
    let big = connect(&running).await.expect("connects");
    let oversized_task = tokio::spawn(oversized(big));

    // The client that opens streams beyond the limit: the ones past it are never granted.
    let streamer = connect(&running).await.expect("connects");
    let mut open_streams = Vec::new();
    for _ in 0..STREAMS_MAX {
        let (mut send, recv) = tokio::time::timeout(LIMIT, streamer.connection().open_bi())
            .await
            .expect("a stream within the limit opens")
            .expect("opens");
        // A stream exists for the server once something is sent on it.
        send.write_all(&echo_frame(1, FRAME_BYTES_MAX))
            .await
            .expect("writes");
        open_streams.push((send, recv));
    }
    let past_limit =
        tokio::time::timeout(Duration::from_secs(1), streamer.connection().open_bi()).await;
    assert!(past_limit.is_err(), "a stream past the limit was granted");

    // The client that opens connections beyond the limit (four are open already, one of which
    // may be closed by now): the ones past it are refused.
    let mut flood = Vec::new();
    let mut refused = 0;
    for _ in 0..CONNECTIONS_MAX + 4 {
        match connect(&running).await {
            Ok(client) => flood.push(client),
            Err(_) => refused += 1,
        }
    }
    assert!(
        refused >= 4,
        "only {refused} connections past the limit were refused"
    );
    assert!(
        flood.len() <= CONNECTIONS_MAX as usize - 3,
        "{} extra connections were accepted",
        flood.len()
    );

    let mut peak_kib = idle_kib;
    let started = Instant::now();
    let mut silent_half = None;
    while started.elapsed() < ABUSE {
        peak_kib = peak_kib.max(rss_kib());
        tokio::time::sleep(Duration::from_millis(100)).await;
        if silent_half.is_none() && started.elapsed() >= ABUSE / 2 {
            silent_half = Some(silent_sent.load(Ordering::Acquire));
        }
    }
    let silent_half = silent_half.expect("sampled half-way");
    let (sent, closed) = oversized_task.await.expect("oversized client");
    stop.store(true, Ordering::Release);
    let (approved, slowest) = serving.await.expect("the well-behaved client");
    peak_kib = peak_kib.max(rss_kib());
    let silent_bytes = silent_sent.load(Ordering::Acquire);
    silent_task.abort();

    println!(
        "RSS idle {} MiB, peak under abuse {} MiB; well-behaved: {approved} sales approved, \
         slowest {slowest:?}; silent client got {:.1} MiB accepted ({:.1} MiB half-way); oversized client: {sent} \
         frames then {closed:?}; connections refused: {refused}",
        idle_kib / 1024,
        peak_kib / 1024,
        silent_bytes as f64 / (1 << 20) as f64,
        silent_half as f64 / (1 << 20) as f64
    );
    assert!(approved > 0, "the well-behaved client was served");
    assert!(slowest < ANSWER_MAX);
    // The oversized client is cut off by the malformed-frame limit. The close waits until the
    // client has the error frame that goes past the limit, so one more frame may be sent
    // meanwhile.
    assert!(
        sent <= MALFORMED_MAX + 2,
        "{sent} oversized frames before the close"
    );
    match closed {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => assert_eq!(
            close.error_code,
            quinn::VarInt::from_u32(AppErrorCode::ProtocolViolation.as_u32())
        ),
        other => panic!("the oversized client's connection ended with {other:?}"),
    }
    // The silent client is stopped by flow control once its unwritten answers fill the
    // connection's budget: what it could send is a few frames plus the QUIC windows, all of
    // it early; in the second half of the abuse it gets nothing more through.
    assert!(
        silent_bytes < 32 << 20,
        "the server took {silent_bytes} bytes from a client that reads nothing"
    );
    assert!(
        silent_bytes - silent_half <= u64::from(FRAME_BYTES_MAX) * 2,
        "a client that reads nothing kept sending: {silent_half} bytes half-way, \
         {silent_bytes} at the end"
    );
    assert!(
        peak_kib < idle_kib + 128 * 1024,
        "RSS grew from {idle_kib} KiB to {peak_kib} KiB under abuse"
    );

    drop(open_streams);
    for client in flood {
        client.close().await;
    }
    good.close().await;
    running.shutdown().await.expect("clean shutdown");
}
