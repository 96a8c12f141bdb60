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

/// Opens `streams` streams on `client`, sends on each all of a largest frame but its last byte
/// (correlation id: the stream's number from 1), waits until every one has been taken off the
/// wire, then sends the last bytes and returns each stream's one answer, in stream order,
/// with the streams themselves, still open.
async fn held_back_frames(client: &Client, streams: u64) -> (Vec<Frame>, Vec<Open>) {
    let nearly_sent = Arc::new(AtomicU32::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for s in 0..streams {
        let (mut send, mut recv) = tokio::time::timeout(LIMIT, client.connection().open_bi())
            .await
            .expect("a stream within the limit opens")
            .expect("opens");
        let frame = echo_frame(s + 1, FRAME_BYTES_MAX);
        assert!(frame.len() > FRAME_BYTES_MAX as usize * 9 / 10);
        let nearly_sent = nearly_sent.clone();
        let mut released = released.clone();
        tasks.push(tokio::spawn(async move {
            let (most, last) = frame.split_at(frame.len() - 1);
            send.write_all(most)
                .await
                .expect("the server reads the frame");
            nearly_sent.fetch_add(1, Ordering::AcqRel);
            released.wait_for(|r| *r).await.expect("released");
            send.write_all(last).await.expect("writes the last byte");
            let limits = Limits {
                frame_len_max: wire::FRAME_LEN_MAX_LIMIT,
                batch_len_max: u16::MAX,
            };
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                if let Some((frame, _)) = wire::decode_frame(&buf, &limits).expect("decodes") {
                    return (frame, (send, recv));
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
    let want = u32::try_from(streams).expect("few streams");
    let started = std::time::Instant::now();
    while nearly_sent.load(Ordering::Acquire) < want && started.elapsed() < LIMIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        nearly_sent.load(Ordering::Acquire),
        want,
        "unfinished frames taken off the wire within {LIMIT:?}"
    );

    release.send(true).expect("released");
    let mut answers = Vec::new();
    let mut open = Vec::new();
    for (s, task) in tasks.into_iter().enumerate() {
        let (answer, stream) = tokio::time::timeout(LIMIT, task)
            .await
            .unwrap_or_else(|_| panic!("stream {s} not answered within {LIMIT:?}"))
            .expect("the stream's task");
        answers.push(answer);
        open.push(stream);
    }
    (answers, open)
}

/// A stream kept open (dropping its sending side would finish it).
type Open = (quinn::SendStream, quinn::RecvStream);

/// Echoes in one largest echo frame.
fn echoes_per_frame() -> usize {
    match wire::decode_frame(&echo_frame(1, FRAME_BYTES_MAX), &Limits::default()) {
        Ok(Some((Frame::Requests { requests, .. }, _))) => requests.len(),
        other => panic!("the echo frame decodes as {other:?}"),
    }
}

/// Whether `answer` is the whole answer to stream `s`'s echo frame.
fn is_echo_answer(s: usize, answer: &Frame) -> bool {
    match answer {
        Frame::Responses {
            correlation_id,
            responses,
            ..
        } => {
            assert_eq!(*correlation_id, s as u64 + 1, "stream {s}");
            // One answer for every echo, each for its own request, in order.
            assert_eq!(responses.len(), echoes_per_frame(), "stream {s}");
            for (i, r) in responses.iter().enumerate() {
                assert_eq!(
                    r.request_id.0,
                    u128::from(*correlation_id) << 32 | i as u128
                );
            }
            true
        }
        _ => false,
    }
}

fn assert_all_echo_answers(answers: &[Frame]) {
    for (s, answer) in answers.iter().enumerate() {
        assert!(
            is_echo_answer(s, answer),
            "stream {s} was answered {answer:?}"
        );
    }
}

async fn start(dir: &std::path::Path, room: u64) -> (server::Running, Client) {
    let mut config = loopback_config(dir);
    config.limits.frame_bytes_max = FRAME_BYTES_MAX;
    config.limits.streams_per_connection_max = STREAMS;
    config.limits.unfinished_frame_bytes_max = room;
    let running = tokio::time::timeout(LIMIT, server::start(config, None))
        .await
        .expect("start in time")
        .expect("starts");
    let trust = Trust::Fingerprint(running.fingerprint.expect("a certificate"));
    let client = tokio::time::timeout(LIMIT, Client::connect(running.quic_addr, &trust, None))
        .await
        .expect("connects in time")
        .expect("connects");
    (running, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_large_frames_on_every_stream_are_all_read_and_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The default room holds a largest frame on every stream of a connection.
    let (running, client) = start(
        dir.path(),
        switch::config::Limits::default().unfinished_frame_bytes_max,
    )
    .await;
    let (answers, _open) = held_back_frames(&client, u64::from(STREAMS)).await;
    assert_all_echo_answers(&answers);
    client.close().await;
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_past_the_room_are_answered_busy_and_the_room_comes_back() {
    const ROOM_FRAMES: usize = 3;
    let dir = tempfile::tempdir().expect("tempdir");
    let (running, client) =
        start(dir.path(), ROOM_FRAMES as u64 * u64::from(FRAME_BYTES_MAX)).await;

    // Three frames fit; every other one is read through and answered busy, not held back
    // (the client's writes would not finish otherwise) and not counted as a protocol error
    // (61 of them would close the connection).
    let (answers, open) = held_back_frames(&client, u64::from(STREAMS)).await;
    let mut answered = 0;
    for (s, answer) in answers.iter().enumerate() {
        if is_echo_answer(s, answer) {
            answered += 1;
            continue;
        }
        match answer {
            Frame::Error {
                correlation_id,
                code: wire::ErrorCode::ServerBusy,
                ..
            } => assert_eq!(*correlation_id, s as u64 + 1, "stream {s}"),
            other => panic!("stream {s} was answered {other:?}"),
        }
    }
    assert_eq!(answered, ROOM_FRAMES, "frames given room");

    // Whole, the frames gave their room back, though their streams stay open: all of it is
    // there for three more. (Only 64 streams may be open at once.)
    let _given_room: Vec<Open> = open
        .into_iter()
        .zip(&answers)
        .filter(|(_, answer)| matches!(answer, Frame::Responses { .. }))
        .map(|(stream, _)| stream)
        .collect();
    let (answers, _open) = held_back_frames(&client, ROOM_FRAMES as u64).await;
    assert_all_echo_answers(&answers);
    client.close().await;
    running.shutdown().await.expect("clean shutdown");
}
