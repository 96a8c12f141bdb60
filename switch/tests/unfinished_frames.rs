//! Large frames sent on every stream of a connection at once, each held back before its last
//! byte, over real QUIC on loopback. The server reads every stream's unfinished frame (each
//! stream may hold one, up to the frame limit: the memory bound in OPERATIONS.md), and once
//! the client finishes them, every one is answered. A server that stopped reading some
//! streams mid-frame to save memory would hang here: the client's own send buffer fills with
//! the stalled streams' bytes, and the streams the server waits on can send no more.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

#[allow(dead_code)]
mod common;
use common::{echo_frame, loopback_config};
use switch::client::Client;
use switch::server;
use switch::tls::Trust;
use switch::wire::{self, Frame, Limits};

const LIMIT: Duration = Duration::from_secs(60);
/// The default frame limit and stream count.
const FRAME_BYTES_MAX: u32 = 1 << 20;
const STREAMS: u32 = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_large_frames_on_every_stream_are_all_read_and_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = loopback_config(dir.path());
    config.limits.frame_bytes_max = FRAME_BYTES_MAX;
    config.limits.streams_per_connection_max = STREAMS;
    let running = tokio::time::timeout(LIMIT, server::start(config, None))
        .await
        .expect("start in time")
        .expect("starts");
    let trust = Trust::Fingerprint(running.fingerprint.expect("a certificate"));
    let client = tokio::time::timeout(LIMIT, Client::connect(running.quic_addr, &trust, None))
        .await
        .expect("connects in time")
        .expect("connects");

    // Every stream sends all of a large frame but its last byte, then waits to be released.
    let nearly_sent = Arc::new(AtomicU32::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let mut streams = Vec::new();
    for s in 0..u64::from(STREAMS) {
        let (mut send, mut recv) = tokio::time::timeout(LIMIT, client.connection().open_bi())
            .await
            .expect("a stream within the limit opens")
            .expect("opens");
        let frame = echo_frame(s + 1, FRAME_BYTES_MAX);
        assert!(frame.len() > FRAME_BYTES_MAX as usize * 9 / 10);
        let nearly_sent = nearly_sent.clone();
        let mut released = released.clone();
        streams.push(tokio::spawn(async move {
            let (most, last) = frame.split_at(frame.len() - 1);
            send.write_all(most)
                .await
                .expect("the server reads the frame");
            nearly_sent.fetch_add(1, Ordering::AcqRel);
            released.wait_for(|r| *r).await.expect("released");
            send.write_all(last).await.expect("writes the last byte");
            send.finish().expect("finishes");
            let limits = Limits {
                frame_len_max: wire::FRAME_LEN_MAX_LIMIT,
                batch_len_max: u16::MAX,
            };
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                if let Some((frame, _)) = wire::decode_frame(&buf, &limits).expect("decodes") {
                    return frame;
                }
                let n = recv
                    .read(&mut chunk)
                    .await
                    .expect("reads")
                    .expect("an answer before the stream ends");
                buf.extend_from_slice(&chunk[..n]);
            }
        }));
    }

    // Every stream's unfinished frame is taken off the wire.
    let started = std::time::Instant::now();
    while nearly_sent.load(Ordering::Acquire) < STREAMS && started.elapsed() < LIMIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        nearly_sent.load(Ordering::Acquire),
        STREAMS,
        "unfinished frames taken off the wire within {LIMIT:?}"
    );

    // Finished, every frame is answered.
    release.send(true).expect("released");
    let echoes = match wire::decode_frame(&echo_frame(1, FRAME_BYTES_MAX), &Limits::default()) {
        Ok(Some((Frame::Requests { requests, .. }, _))) => requests.len(),
        other => panic!("the echo frame decodes as {other:?}"),
    };
    for (s, stream) in streams.into_iter().enumerate() {
        let answer = tokio::time::timeout(LIMIT, stream)
            .await
            .unwrap_or_else(|_| panic!("stream {s} not answered within {LIMIT:?}"))
            .expect("the stream's task");
        match answer {
            Frame::Responses {
                correlation_id,
                responses,
            } => {
                assert_eq!(correlation_id, s as u64 + 1, "stream {s}");
                // One answer for every echo, each for its own request, in order.
                assert_eq!(responses.len(), echoes, "stream {s}");
                for (i, r) in responses.iter().enumerate() {
                    assert_eq!(r.request_id.0, u128::from(correlation_id) << 32 | i as u128);
                }
            }
            other => panic!("stream {s} was answered {other:?}"),
        }
    }
    client.close().await;
    running.shutdown().await.expect("clean shutdown");
}
