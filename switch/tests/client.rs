//! The client against fake servers on loopback: plain QUIC endpoints that speak the ALPN and
//! answer (or fail to answer) as each test needs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switch::client::{Client, ClientError, Stream};
use switch::tls::{self, ServerIdentity, Trust};
use switch::wire::{
    self, EchoPayload, Frame, Operation, Reason, Request, RequestId, Response, ResponseBody,
    ResponseCode,
};

/// Bound on every wait: connecting, a call that must be answered or fail, closing.
const LIMIT: Duration = Duration::from_secs(5);

/// A QUIC endpoint on 127.0.0.1 with a fresh self-signed certificate; every stream a client
/// opens is given to `handler`.
struct FakeServer {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    trust: Trust,
}

impl FakeServer {
    fn start<F, Fut>(handler: F) -> FakeServer
    where
        F: Fn(quinn::SendStream, quinn::RecvStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let generated =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
        let identity = ServerIdentity {
            chain: vec![generated.cert.der().clone()],
            key: rustls::pki_types::PrivateKeyDer::try_from(generated.signing_key.serialize_der())
                .expect("key der"),
        };
        let trust = Trust::Fingerprint(identity.fingerprint().expect("a certificate"));
        let crypto =
            tls::server_crypto(tls::ServerTls::without_client_auth(identity)).expect("server TLS");
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).expect("QUIC TLS");
        let config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("literal"))
            .expect("bind 127.0.0.1:0");
        let addr = endpoint.local_addr().expect("local address");
        let handler = Arc::new(handler);
        let accepting = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let handler = handler.clone();
                tokio::spawn(async move {
                    let Ok(connection) = incoming.await else {
                        return;
                    };
                    while let Ok((send, recv)) = connection.accept_bi().await {
                        tokio::spawn(handler(send, recv));
                    }
                });
            }
        });
        FakeServer {
            endpoint,
            addr,
            trust,
        }
    }

    async fn connect(&self) -> Client {
        tokio::time::timeout(LIMIT, Client::connect(self.addr, &self.trust, None))
            .await
            .expect("connected in time")
            .expect("connected")
    }

    async fn stop(self, client: Client) {
        tokio::time::timeout(LIMIT, client.close())
            .await
            .expect("client closed in time");
        self.endpoint.close(0u32.into(), b"done");
    }
}

/// Reads the next request frame of the stream, or `None` once the stream ends or breaks.
async fn next_request_frame(
    recv: &mut quinn::RecvStream,
    buf: &mut Vec<u8>,
) -> Option<(u64, Vec<Request>)> {
    let mut chunk = [0u8; 4096];
    loop {
        match wire::decode_frame(buf, &wire::Limits::DEFAULT) {
            Ok(Some((frame, used))) => {
                buf.drain(..used);
                if let Frame::Requests {
                    correlation_id,
                    requests,
                    ..
                } = frame
                {
                    return Some((correlation_id, requests));
                }
            }
            Ok(None) => {
                let n = recv.read(&mut chunk).await.ok()??;
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(_) => return None,
        }
    }
}

/// Calls with one Echo request.
async fn call_echo(stream: &Stream, id: u128) -> Result<Vec<Response>, ClientError> {
    stream.call(&[echo(id)]).await
}

fn echo(id: u128) -> Request {
    Request {
        id: RequestId(id),
        operation: Operation::Echo {
            payload: EchoPayload::new(id.to_le_bytes().to_vec()).expect("short"),
        },
    }
}

/// The response frame a switch would send to a frame of Echo requests.
fn echo_answer(correlation_id: u64, requests: &[Request]) -> Vec<u8> {
    let responses: Vec<Response> = requests
        .iter()
        .map(|r| Response {
            request_id: r.id,
            code: ResponseCode::Approved,
            reason: Reason::NONE,
            body: match &r.operation {
                Operation::Echo { payload } => ResponseBody::Echo(payload.clone()),
                _ => ResponseBody::Echo(EchoPayload::default()),
            },
        })
        .collect();
    let mut frame = Vec::new();
    wire::encode_response_frame(correlation_id, &responses, &mut frame).expect("encodes");
    frame
}

/// Answers every Echo frame, like a switch.
async fn echo_server(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let mut buf = Vec::new();
    while let Some((correlation_id, requests)) = next_request_frame(&mut recv, &mut buf).await {
        if send
            .write_all(&echo_answer(correlation_id, &requests))
            .await
            .is_err()
        {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_and_calls_on_loopback() {
    let server = FakeServer::start(echo_server);
    let client = server.connect().await;
    let stream = tokio::time::timeout(LIMIT, client.stream())
        .await
        .expect("stream in time")
        .expect("stream");
    let responses = tokio::time::timeout(LIMIT, stream.call(&[echo(1), echo(2)]))
        .await
        .expect("answered in time")
        .expect("answered");
    let ids: Vec<RequestId> = responses.iter().map(|r| r.request_id).collect();
    assert_eq!(ids, [RequestId(1), RequestId(2)]);
    assert_eq!(
        responses[1].body,
        ResponseBody::Echo(EchoPayload::new(2u128.to_le_bytes().to_vec()).expect("short"))
    );
    server.stop(client).await;
}

/// Bytes that are not a response frame: the length prefix (29, the bytes' own length) is
/// plausible, but the version byte (offset 4) is not 1.
const GARBAGE: &[u8] = b"\x1d\x00\x00\x00\x09 is not a response frame";

/// Answers the frame holding request 1 properly, then, once a second frame has arrived, sends
/// garbage after that answer (in the same write).
async fn garbage_server(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    while frames.len() < 2 {
        match next_request_frame(&mut recv, &mut buf).await {
            Some(frame) => frames.push(frame),
            None => return,
        }
    }
    let Some((correlation_id, requests)) = frames
        .iter()
        .find(|(_, requests)| requests.iter().any(|r| r.id == RequestId(1)))
    else {
        return;
    };
    let mut bytes = echo_answer(*correlation_id, requests);
    bytes.extend_from_slice(GARBAGE);
    if send.write_all(&bytes).await.is_err() {
        return;
    }
    // Keep reading (and the stream open) until the client goes away.
    while next_request_frame(&mut recv, &mut buf).await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_response_fails_the_stream_instead_of_stalling_it() {
    let server = FakeServer::start(garbage_server);
    let client = server.connect().await;
    let stream = tokio::time::timeout(LIMIT, client.stream())
        .await
        .expect("stream in time")
        .expect("stream");
    let (answered, abandoned) = tokio::time::timeout(LIMIT, async {
        tokio::join!(call_echo(&stream, 1), call_echo(&stream, 2))
    })
    .await
    .expect("both calls end in time, none hangs");
    // The frame before the garbage is still delivered.
    let answered = answered.expect("the answer before the garbage");
    assert_eq!(answered[0].request_id, RequestId(1));
    let abandoned = abandoned.expect_err("no answer after the garbage");
    assert!(
        matches!(abandoned, ClientError::Undecodable(_)),
        "{abandoned:?}"
    );
    assert!(
        abandoned.to_string().contains("version"),
        "names what is wrong: {abandoned}"
    );
    // Later calls on the stream fail at once, without waiting for an answer.
    let later = tokio::time::timeout(LIMIT, call_echo(&stream, 3))
        .await
        .expect("a later call ends in time")
        .expect_err("the stream is abandoned");
    assert!(matches!(later, ClientError::Undecodable(_)), "{later:?}");
    // Other streams of the connection are not affected.
    let other = tokio::time::timeout(LIMIT, client.stream())
        .await
        .expect("stream in time")
        .expect("stream");
    let (one, two) = tokio::time::timeout(LIMIT, async {
        tokio::join!(call_echo(&other, 1), call_echo(&other, 4))
    })
    .await
    .expect("both calls end in time");
    assert_eq!(one.expect("answered")[0].request_id, RequestId(1));
    assert!(matches!(two, Err(ClientError::Undecodable(_))), "{two:?}");
    server.stop(client).await;
}

/// Reads every frame and answers none.
async fn silent_server(send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let mut buf = Vec::new();
    while next_request_frame(&mut recv, &mut buf).await.is_some() {}
    drop(send);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_given_up_leave_nothing_pending() {
    const CALLS: u128 = 50;
    let server = FakeServer::start(silent_server);
    let client = server.connect().await;
    let stream = tokio::time::timeout(LIMIT, client.stream())
        .await
        .expect("stream in time")
        .expect("stream");
    // A call in flight is counted, and no longer once the caller drops it.
    let mut call = Box::pin(call_echo(&stream, 1));
    let waited = tokio::time::timeout(Duration::from_millis(50), &mut call).await;
    assert!(waited.is_err(), "the silent server answered: {waited:?}");
    assert_eq!(stream.pending_len(), 1);
    drop(call);
    assert_eq!(stream.pending_len(), 0);
    // As when loadgen's timeout fires, many times over.
    for id in 2..2 + CALLS {
        let waited = tokio::time::timeout(Duration::from_millis(10), call_echo(&stream, id)).await;
        assert!(waited.is_err(), "the silent server answered: {waited:?}");
    }
    assert_eq!(stream.pending_len(), 0);
    // A call that gives up leaves alone a later call that reused its correlation id.
    let correlation_id = stream.reserve_correlation_id();
    let mut frame = Vec::new();
    wire::encode_request_frame(correlation_id, &[echo(100)], &mut frame).expect("encodes");
    let mut first = Box::pin(stream.call_raw(correlation_id, &frame));
    let waited = tokio::time::timeout(Duration::from_millis(10), &mut first).await;
    assert!(waited.is_err(), "the silent server answered: {waited:?}");
    let mut second = Box::pin(stream.call_raw(correlation_id, &frame));
    let waited = tokio::time::timeout(Duration::from_millis(10), &mut second).await;
    assert!(waited.is_err(), "the silent server answered: {waited:?}");
    drop(first);
    assert_eq!(stream.pending_len(), 1);
    drop(second);
    assert_eq!(stream.pending_len(), 0);
    server.stop(client).await;
}

/// Stops reading the stream (STOP_SENDING) once it has answered the first frame, and keeps its
/// own side open.
async fn stop_reading_server(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let mut buf = Vec::new();
    let Some((correlation_id, requests)) = next_request_frame(&mut recv, &mut buf).await else {
        return;
    };
    let _ = recv.stop(0u32.into());
    if send
        .write_all(&echo_answer(correlation_id, &requests))
        .await
        .is_err()
    {
        return;
    }
    // Until the client goes away.
    let _ = send.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_leaves_nothing_pending() {
    let server = FakeServer::start(stop_reading_server);
    let client = server.connect().await;
    let stream = tokio::time::timeout(LIMIT, client.stream())
        .await
        .expect("stream in time")
        .expect("stream");
    tokio::time::timeout(LIMIT, call_echo(&stream, 1))
        .await
        .expect("answered in time")
        .expect("answered");
    // The server's STOP_SENDING came with the answer or just before it; should a write still
    // get through before it arrives, that call is unanswered and given up after a while.
    let mut failed = None;
    for id in 2..20 {
        match tokio::time::timeout(Duration::from_millis(250), call_echo(&stream, id)).await {
            Ok(Err(e)) => {
                failed = Some(e);
                break;
            }
            Ok(Ok(answer)) => panic!("the server stopped reading, yet answered: {answer:?}"),
            Err(_) => {}
        }
    }
    let failed = failed.expect("a write fails once the server stopped reading");
    assert!(matches!(failed, ClientError::Write(_)), "{failed:?}");
    assert_eq!(stream.pending_len(), 0);
    server.stop(client).await;
}

/// A pinned fingerprint that is not the server's: the error shows both, so that whoever
/// pinned the wrong one can see which one the server has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_fingerprint_is_refused_naming_both_fingerprints() {
    let server = FakeServer::start(echo_server);
    let Trust::Fingerprint(right) = server.trust.clone() else {
        panic!("the fake server is pinned by fingerprint");
    };
    let mut wrong = right;
    wrong.0[0] ^= 0xff;
    let refused = tokio::time::timeout(
        LIMIT,
        Client::connect_to(
            &server.addr.to_string(),
            &Trust::Fingerprint(wrong),
            None,
            LIMIT,
        ),
    )
    .await
    .expect("refused in time");
    let message = refused.err().expect("refused").to_string();
    assert!(
        message.contains(&right.to_string()) && message.contains(&wrong.to_string()),
        "{message}"
    );
    let client = server.connect().await;
    server.stop(client).await;
}

/// A host name is resolved, and every address it has is tried: `localhost` may come first as
/// `::1` while the server listens on 127.0.0.1 only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_is_resolved_and_the_address_that_answers_is_kept() {
    let server = FakeServer::start(echo_server);
    let target = format!("localhost:{}", server.addr.port());
    let client = tokio::time::timeout(
        LIMIT,
        Client::connect_to(&target, &server.trust, None, LIMIT),
    )
    .await
    .expect("connected in time")
    .expect("connected");
    assert_eq!(client.connection().remote_address(), server.addr);
    let stream = client.stream().await.expect("a stream");
    let answered = tokio::time::timeout(LIMIT, call_echo(&stream, 7))
        .await
        .expect("answered in time")
        .expect("answered");
    assert_eq!(answered[0].request_id, RequestId(7));
    let bad = Client::connect_to("no port here", &server.trust, None, LIMIT).await;
    assert!(
        matches!(bad, Err(ClientError::Resolve { .. })),
        "{:?}",
        bad.err()
    );
    server.stop(client).await;
}

/// Nothing answers at the address: the attempt ends after the timeout it was given, and says
/// so with the time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_times_out_when_told_and_says_so() {
    // A socket that receives and never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("address");
    let trust = Trust::Fingerprint(tls::Fingerprint([7; 32]));
    let started = std::time::Instant::now();
    let refused = tokio::time::timeout(
        LIMIT,
        Client::connect_to(&addr.to_string(), &trust, None, Duration::from_millis(300)),
    )
    .await
    .expect("gave up in time");
    let waited = started.elapsed();
    let message = refused.err().expect("nothing answers").to_string();
    assert_eq!(message, format!("no answer from {addr} within 0.3 s"));
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}
