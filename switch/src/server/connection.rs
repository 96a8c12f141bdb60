//! Connection and stream tasks: authenticate, decode, translate, queue; write answers back.
//!
//! Every bound is enforced here before anything is allocated for it: connections (refused past
//! the limit), streams (QUIC flow control: `max_concurrent_bidi_streams`), frame size (checked
//! from the length prefix), operations per frame, and requests in flight per connection (past
//! it, requests are answered 91 at once). Malformed frames get an error frame naming the
//! problem; past `malformed_frames_max` the connection is closed with `ProtocolViolation`.
//!
//! A client that stops reading its answers must not make the server buffer them without
//! bound: every frame read holds its length in bytes of the connection's unwritten budget
//! (`UNWRITTEN_FRAMES_PER_CONNECTION` frames' worth of `frame_bytes_max`) until its answer has
//! been written to the stream. When the budget is spent, the connection's streams stop being
//! read, and QUIC flow control stops the client.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use rustls::pki_types::CertificateDer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::stage::{self, Job, Queue};
use crate::codes::{Code, Reason};
use crate::config::Config;
use crate::core::{Item, Prepared, RequestId};
use crate::routing::RouteTable;
use crate::tls::{Identities, Identity};
use crate::translate::{self, Translated};
use crate::wire;

/// A connection may have this many largest frames read but not yet answered on the wire.
const UNWRITTEN_FRAMES_PER_CONNECTION: usize = 4;
/// What a frame costs beyond its bytes (its task, decoded requests, answer): charged so that
/// many tiny frames cannot hold more memory than a few large ones.
const FRAME_OVERHEAD_BYTES: usize = 1024;

/// The connection's unwritten budget, in bytes.
fn unwritten_budget_bytes(frame_bytes_max: u32) -> usize {
    (frame_bytes_max as usize + FRAME_OVERHEAD_BYTES) * UNWRITTEN_FRAMES_PER_CONNECTION
}

/// An encoded frame on its way to the client, holding its share of the connection's unwritten
/// budget until it is written.
pub(crate) struct Outgoing {
    pub frame: Vec<u8>,
    pub budget: Option<OwnedSemaphorePermit>,
}

/// Where a stream's answers go.
pub(crate) type Reply = mpsc::UnboundedSender<Outgoing>;

/// What every connection task shares.
pub struct Shared {
    config: Arc<Config>,
    identities: Identities,
    queue: RwLock<Option<Queue>>,
    routes: Arc<RwLock<Arc<RouteTable>>>,
    connections: AtomicUsize,
    /// Requests received and not yet answered, over all connections.
    in_flight: AtomicUsize,
    draining: AtomicBool,
    config_path: Mutex<Option<std::path::PathBuf>>,
}

impl Shared {
    pub fn new(
        config: Arc<Config>,
        identities: Identities,
        queue: Queue,
        routes: Arc<RwLock<Arc<RouteTable>>>,
        config_path: Option<std::path::PathBuf>,
    ) -> Self {
        Shared {
            config,
            identities,
            queue: RwLock::new(Some(queue)),
            routes,
            connections: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            config_path: Mutex::new(config_path),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// From now on new frames are answered 91 (shutting down); what is queued still runs.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Drops the queue's sender, so the stage ends once it has answered everything.
    pub fn close_queue(&self) {
        self.queue.write().take();
    }

    /// Re-reads the routing table from the configuration file and swaps it in.
    pub fn reload_routes(&self) -> Result<usize, String> {
        let path = self.config_path.lock().clone();
        match super::reload_routes(path.as_deref()) {
            Ok(table) => {
                let n = table.len();
                *self.routes.write() = Arc::new(table);
                tracing::info!(routes = n, "routing table reloaded");
                Ok(n)
            }
            Err(e) => {
                tracing::error!("routing table not reloaded: {e:#}");
                Err(format!("{e:#}"))
            }
        }
    }
}

/// Accepts connections until the endpoint closes.
pub async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let max = shared.config.limits.connections_max as usize;
        if shared.connections.load(Ordering::Acquire) >= max
            || shared.draining.load(Ordering::Acquire)
        {
            metrics::counter!("switch_connections_refused_total").increment(1);
            incoming.refuse();
            continue;
        }
        // The slot is taken before the handshake, so that handshakes in progress count too and
        // a burst of them cannot pass the limit.
        shared.connections.fetch_add(1, Ordering::AcqRel);
        let shared = shared.clone();
        tokio::spawn(async move {
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(e) => {
                    tracing::debug!("handshake failed: {e}");
                    shared.connections.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
            };
            metrics::gauge!("switch_connections").increment(1.0);
            serve_connection(connection, shared.clone()).await;
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            metrics::gauge!("switch_connections").decrement(1.0);
        });
    }
}

fn identify(connection: &quinn::Connection, identities: &Identities) -> Option<Identity> {
    let peer = connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok());
    identities.identify(peer.as_deref().map(Vec::as_slice))
}

/// Per connection: the limits it shares among its streams.
struct ConnectionState {
    who: Identity,
    in_flight: AtomicU32,
    violations: AtomicU32,
    /// Bytes of frames read whose answers are not yet written (see the module comment).
    unwritten: Arc<Semaphore>,
}

async fn serve_connection(connection: quinn::Connection, shared: Arc<Shared>) {
    let Some(who) = identify(&connection, &shared.identities) else {
        tracing::info!(remote = %connection.remote_address(), "refused: certificate maps to no participant");
        connection.close(
            quinn::VarInt::from_u32(wire::AppErrorCode::Unauthenticated.as_u32()),
            b"certificate maps to no participant",
        );
        return;
    };
    let state = Arc::new(ConnectionState {
        who,
        in_flight: AtomicU32::new(0),
        violations: AtomicU32::new(0),
        unwritten: Arc::new(Semaphore::new(unwritten_budget_bytes(
            shared.config.limits.frame_bytes_max,
        ))),
    });
    loop {
        let (send, recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(_) => return,
        };
        tokio::spawn(serve_stream(
            connection.clone(),
            send,
            recv,
            shared.clone(),
            state.clone(),
        ));
    }
}

async fn serve_stream(
    connection: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: Arc<Shared>,
    state: Arc<ConnectionState>,
) {
    let (reply, mut replies) = mpsc::unbounded_channel::<Outgoing>();
    let writer = tokio::spawn(async move {
        while let Some(Outgoing { frame, budget }) = replies.recv().await {
            if send.write_all(&frame).await.is_err() {
                return;
            }
            // Written: its share of the budget goes back.
            drop(budget);
        }
        let _ = send.finish();
    });
    let limits = wire::Limits {
        frame_len_max: shared.config.limits.frame_bytes_max,
        batch_len_max: shared.config.limits.batch_len_max,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    // Bytes of a rejected frame still to come, to be thrown away.
    let mut skip = 0usize;
    'read: loop {
        let n = match recv.read(&mut chunk).await {
            Ok(Some(n)) => n,
            Ok(None) | Err(_) => break,
        };
        let fresh = &chunk[..n];
        let dropped = skip.min(fresh.len());
        skip -= dropped;
        buf.extend_from_slice(&fresh[dropped..]);
        let mut consumed = 0;
        loop {
            match wire::decode_frame(&buf[consumed..], &limits) {
                Ok(None) => break,
                Ok(Some((frame, used))) => {
                    consumed += used;
                    // Waits, and so stops reading, while the connection's answers are not
                    // being taken off. `used` is at most `frame_bytes_max`, within the budget.
                    let cost = u32::try_from(used + FRAME_OVERHEAD_BYTES).unwrap_or(u32::MAX);
                    let Ok(budget) = state.unwritten.clone().acquire_many_owned(cost).await else {
                        break 'read;
                    };
                    // Each frame runs in its own task, so the stream keeps being read while
                    // earlier frames wait for the ledger stage: that is what pipelining is.
                    // The per-connection in-flight limit bounds how many there are.
                    tokio::spawn(handle_frame(
                        frame,
                        shared.clone(),
                        state.clone(),
                        reply.clone(),
                        budget,
                    ));
                }
                Err(e) => {
                    metrics::counter!("switch_malformed_frames_total").increment(1);
                    let mut frame = Vec::new();
                    let message = wire::ErrorMessage::truncated(&e.to_string());
                    wire::encode_error_frame(
                        e.correlation_id.unwrap_or(0),
                        e.code(),
                        &message,
                        &mut frame,
                    );
                    let _ = reply.send(Outgoing {
                        frame,
                        budget: None,
                    });
                    let violations = state.violations.fetch_add(1, Ordering::AcqRel) + 1;
                    if violations > shared.config.limits.malformed_frames_max {
                        connection.close(
                            quinn::VarInt::from_u32(wire::AppErrorCode::ProtocolViolation.as_u32()),
                            b"too many malformed frames",
                        );
                        break 'read;
                    }
                    let Some(frame_len) = e.frame_len else {
                        // The framing is lost: nothing more on this stream can be trusted.
                        let _ = recv.stop(quinn::VarInt::from_u32(
                            wire::AppErrorCode::FrameSyncLost.as_u32(),
                        ));
                        break 'read;
                    };
                    let here = frame_len.min(buf.len() - consumed);
                    consumed += here;
                    skip = frame_len - here;
                    if skip > 0 {
                        break;
                    }
                }
            }
        }
        buf.drain(..consumed);
    }
    drop(reply);
    let _ = writer.await;
}

async fn handle_frame(
    frame: wire::Frame,
    shared: Arc<Shared>,
    state: Arc<ConnectionState>,
    reply: Reply,
    budget: OwnedSemaphorePermit,
) {
    let (correlation_id, requests) = match frame {
        wire::Frame::Requests {
            correlation_id,
            requests,
        } => (correlation_id, requests),
        other => {
            let mut out = Vec::new();
            let message = wire::ErrorMessage::truncated("clients send request frames only");
            wire::encode_error_frame(
                other.correlation_id(),
                wire::ErrorCode::MalformedFrame,
                &message,
                &mut out,
            );
            let _ = reply.send(Outgoing {
                frame: out,
                budget: Some(budget),
            });
            return;
        }
    };
    let received = Instant::now();
    let n = requests.len();
    // Every request of the frame gets an answer, in order. Some are answered here.
    let mut answers: Vec<Option<wire::Response>> = vec![None; n];
    let mut items = Vec::with_capacity(n);
    let mut ops = Vec::with_capacity(n);
    let mut slots = Vec::with_capacity(n);
    let busy = |r: &wire::Request, reason| {
        wire::Response::declined(r.id, r.operation.op(), Code::SystemBusy, reason)
    };
    let draining = shared.draining.load(Ordering::Acquire);
    let limit = shared.config.limits.in_flight_per_connection_max;
    // All of a frame or none of it: a frame that would take the connection past its in-flight
    // limit is answered 91 whole, and nothing in it is executed.
    let admitted = if draining {
        0
    } else {
        let before = state.in_flight.fetch_add(n as u32, Ordering::AcqRel);
        if before as usize + n > limit as usize {
            state.in_flight.fetch_sub(n as u32, Ordering::AcqRel);
            metrics::counter!("switch_in_flight_limit_total").increment(1);
            0
        } else {
            n
        }
    };
    for (i, r) in requests.iter().enumerate() {
        if i >= admitted {
            answers[i] = Some(busy(r, Reason::OVERLOADED));
            continue;
        }
        match translate::request(r) {
            Translated::Core(request) => {
                // The fingerprint is computed here, off the ledger stage.
                items.push(Prepared::new(Item {
                    id: RequestId(r.id.0),
                    who: state.who,
                    request,
                }));
                ops.push(r.operation.op());
                slots.push(i);
            }
            Translated::ReloadRoutes => {
                answers[i] = Some(if !state.who.admin {
                    wire::Response::declined(
                        r.id,
                        wire::Op::ReloadRoutes,
                        Code::NotPermitted,
                        Reason::ADMIN_REQUIRED,
                    )
                } else {
                    match shared.reload_routes() {
                        Ok(count) => wire::Response {
                            request_id: r.id,
                            code: Code::Approved,
                            reason: Reason::NONE,
                            body: wire::ResponseBody::ReloadRoutes {
                                route_count: u32::try_from(count).unwrap_or(u32::MAX),
                            },
                        },
                        Err(_) => wire::Response::declined(
                            r.id,
                            wire::Op::ReloadRoutes,
                            Code::InvalidTransaction,
                            Reason::ROUTES_INVALID,
                        ),
                    }
                });
            }
            Translated::ReportFile {
                window,
                file,
                offset,
            } => {
                answers[i] = Some(if !state.who.admin {
                    wire::Response::declined(
                        r.id,
                        wire::Op::ReportFile,
                        Code::NotPermitted,
                        Reason::ADMIN_REQUIRED,
                    )
                } else {
                    report_file(&shared.config, r.id, window, file, offset).await
                });
            }
            Translated::Answer(response) => answers[i] = Some(response),
        }
    }
    let answered_here = admitted - items.len();
    state
        .in_flight
        .fetch_sub(answered_here as u32, Ordering::AcqRel);
    if items.is_empty() {
        let responses: Vec<wire::Response> = answers.into_iter().flatten().collect();
        stage::send(&reply, correlation_id, &responses, budget);
        return;
    }
    // The stage answers its part on an inner channel; the frame's answer is assembled here,
    // in request order, once it arrives.
    let (inner, inner_rx) = tokio::sync::oneshot::channel::<Vec<wire::Response>>();
    let count = items.len();
    let job = Job {
        items,
        ops,
        reply: inner,
        received,
    };
    shared.in_flight.fetch_add(count, Ordering::AcqRel);
    let queue = shared.queue.read().clone();
    let pushed = match queue {
        Some(queue) => queue.try_push(job),
        None => Err((job, Reason::OVERLOADED)),
    };
    if let Err((job, reason)) = pushed {
        stage::answer_all(job, stage::refusal_code(reason), reason);
    }
    // The stage drops the sender only if it stopped without answering: 96 below.
    let stage_responses = inner_rx.await.unwrap_or_default();
    shared.in_flight.fetch_sub(count, Ordering::AcqRel);
    state.in_flight.fetch_sub(count as u32, Ordering::AcqRel);
    let mut stage_responses = stage_responses.into_iter();
    for slot in slots {
        answers[slot] = stage_responses.next();
    }
    let responses: Vec<wire::Response> = answers
        .into_iter()
        .zip(requests.iter())
        .map(|(a, r)| {
            a.unwrap_or_else(|| {
                wire::Response::declined(
                    r.id,
                    r.operation.op(),
                    Code::SystemMalfunction,
                    Reason::INTERNAL,
                )
            })
        })
        .collect();
    stage::send(&reply, correlation_id, &responses, budget);
}

/// A piece of a closed window's report file, read from the report directory.
async fn report_file(
    config: &crate::config::Config,
    id: wire::RequestId,
    window: u64,
    file: u8,
    offset: u64,
) -> wire::Response {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let declined = |code, reason| wire::Response::declined(id, wire::Op::ReportFile, code, reason);
    let paths = crate::report::paths(&config.report_dir(), window);
    let Some(path) = usize::from(file).checked_sub(1).and_then(|i| paths.get(i)) else {
        return declined(Code::InvalidTransaction, Reason::NONE);
    };
    let Ok(mut f) = tokio::fs::File::open(path).await else {
        return declined(Code::InvalidTransaction, Reason::WINDOW_NOT_FOUND);
    };
    let Ok(total_len) = f.metadata().await.map(|m| m.len()) else {
        return declined(Code::SystemMalfunction, Reason::STORAGE_FAILURE);
    };
    if offset > total_len {
        return declined(Code::InvalidAmount, Reason::NONE);
    }
    // A chunk and its frame stay within the frame limit the switch keeps.
    let room = (config.limits.frame_bytes_max as usize).saturating_sub(64);
    let want = wire::ReportChunk::LEN_MAX
        .min(room)
        .min(usize::try_from(total_len - offset).unwrap_or(usize::MAX));
    let mut buf = vec![0u8; want];
    let read = async {
        f.seek(std::io::SeekFrom::Start(offset)).await?;
        f.read_exact(&mut buf).await
    };
    if read.await.is_err() {
        return declined(Code::SystemMalfunction, Reason::STORAGE_FAILURE);
    }
    match wire::ReportChunk::new(buf) {
        Ok(chunk) => wire::Response {
            request_id: id,
            code: Code::Approved,
            reason: Reason::NONE,
            body: wire::ResponseBody::ReportFile { total_len, chunk },
        },
        Err(_) => declined(Code::SystemMalfunction, Reason::INTERNAL),
    }
}
