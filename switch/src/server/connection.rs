//! Connection and stream tasks: authenticate, read each stream's frames (`wire::FrameReader`),
//! answer each request frame in a task of its own (`frame.rs`), write answers back.
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
//!
//! A stream is only ever stopped between frames, never inside one: charging unfinished frames
//! to that budget, and waiting for it, would hang a client writing large frames on many
//! streams: its send buffer fills with the bytes of the streams not being read, and the
//! streams the server waits on can send nothing more (`tests/unfinished_frames.rs`). Instead,
//! every frame not yet whole holds its whole size (4 + length bytes) from one pool for all
//! connections (`unfinished_frame_bytes_max`), taken without waiting once its header is there
//! (`wire::FrameReader` asks). A frame that finds the pool spent is read through without being
//! kept and answered with a `ServerBusy` error frame; nothing in it is executed.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use rustls::pki_types::CertificateDer;
use tokio::io::AsyncReadExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use super::files::Files;
use super::stage::Queue;
use crate::config::settings::ConnectionSettings;
use crate::tls::{Identities, Identity};
use crate::wire::{self, FrameReader, Incoming};

mod frame;
use frame::handle_frame;

/// A connection may have this many largest frames read but not yet answered on the wire.
const UNWRITTEN_FRAMES_PER_CONNECTION: usize = 4;
/// What a frame costs beyond its bytes (its task, decoded requests, answer): charged so that
/// many tiny frames cannot hold more memory than a few large ones.
const FRAME_OVERHEAD_BYTES: usize = 1024;

/// The message of the error frame that answers a frame the server had no room for.
pub const SERVER_BUSY_MESSAGE: &str =
    "no room for this frame now: nothing in it was executed; send it again later";

/// The bytes of the unfinished-frame pool a frame being received holds until it is whole.
struct Reservation {
    _permit: OwnedSemaphorePermit,
    bytes: usize,
}

impl Reservation {
    /// Takes `bytes` from `pool` without waiting, if it has them.
    fn try_take(pool: &Arc<Semaphore>, bytes: usize) -> Option<Self> {
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
        let permit = pool.clone().try_acquire_many_owned(permits).ok()?;
        metrics::gauge!("switch_unfinished_frame_bytes").increment(bytes as f64);
        Some(Reservation {
            _permit: permit,
            bytes,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        metrics::gauge!("switch_unfinished_frame_bytes").decrement(self.bytes as f64);
    }
}

/// The connection's unwritten budget, in bytes.
fn unwritten_budget_bytes(frame_bytes_max: u32) -> usize {
    (frame_bytes_max as usize + FRAME_OVERHEAD_BYTES) * UNWRITTEN_FRAMES_PER_CONNECTION
}

/// An encoded frame on its way to the client, holding its share of the connection's unwritten
/// budget until it is written.
struct Outgoing {
    pub frame: Vec<u8>,
    pub budget: Option<OwnedSemaphorePermit>,
    /// The last frame before the connection closes: the stream is finished after it, and
    /// this is told once the peer has received it.
    pub last: Option<oneshot::Sender<()>>,
}

/// Where a stream's answers go: its writer task.
type Outbox = mpsc::UnboundedSender<Outgoing>;

/// What every connection task shares.
pub struct Shared {
    settings: ConnectionSettings,
    identities: Identities,
    queue: RwLock<Option<Queue>>,
    /// Route reloads and report files.
    files: Arc<Files>,
    connections: AtomicUsize,
    /// Requests received and not yet answered, over all connections.
    in_flight: AtomicUsize,
    /// The pool for frames being received and not yet whole, over all connections, in bytes
    /// (`[limits] unfinished_frame_bytes_max`).
    unfinished_pool: Arc<Semaphore>,
    draining: AtomicBool,
    /// Whether this replica leads, and where the leader is if not.
    replica: Arc<crate::server::replication::ReplicaState>,
    /// Where membership changes go (to the ledger stage).
    membership: crate::server::stage::membership::Desk,
    /// Whether new payments are shed (the ledger stage decides).
    overload: Arc<crate::server::stage::overload::Signal>,
}

impl Shared {
    pub fn new(
        settings: ConnectionSettings,
        identities: Identities,
        queue: Queue,
        files: Arc<Files>,
        replica: Arc<crate::server::replication::ReplicaState>,
        membership: crate::server::stage::membership::Desk,
        overload: Arc<crate::server::stage::overload::Signal>,
    ) -> Self {
        let unfinished_pool = Arc::new(Semaphore::new(
            settings
                .unfinished_frame_bytes_max
                .min(Semaphore::MAX_PERMITS),
        ));
        Shared {
            settings,
            identities,
            queue: RwLock::new(Some(queue)),
            files,
            connections: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            unfinished_pool,
            draining: AtomicBool::new(false),
            replica,
            membership,
            overload,
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
}

/// Accepts connections until the endpoint closes.
pub async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let max = shared.settings.connections_max;
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
                    super::telemetry::handshake_failed(&e);
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

/// The fingerprint of the certificate a client presented, if any.
fn peer_certificate(connection: &quinn::Connection) -> Option<crate::tls::Fingerprint> {
    let chain = connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    chain.first().map(crate::tls::Fingerprint::of)
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
        match peer_certificate(&connection) {
            Some(fingerprint) => super::telemetry::certificate_refused(
                &fingerprint,
                Some(connection.remote_address()),
                "it maps to no participant ([[identities]])",
            ),
            None => tracing::info!(
                remote = %connection.remote_address(),
                "refused: a client without a certificate, and no anonymous participant"
            ),
        }
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
            shared.settings.wire.frame_len_max,
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

/// One stream: its frames are read here, in order, and each request frame is answered by a
/// task of its own; answers and error frames go out through the stream's writer task.
async fn serve_stream(
    connection: quinn::Connection,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: Arc<Shared>,
    state: Arc<ConnectionState>,
) {
    let (outbox, writer) = spawn_writer(send);
    let mut stream = StreamReading {
        shared: &shared,
        state: &state,
        outbox: &outbox,
        violation: Violation {
            connection: &connection,
            shared: &shared,
            state: &state,
            outbox: &outbox,
        },
        frames: JoinSet::new(),
    };
    let mut reader = FrameReader::new(shared.settings.wire);
    while stream.step(&mut recv, &mut reader).await.is_continue() {}
    // The frames still being answered keep their own handles on the outbox.
    stream.frames.detach_all();
    drop(outbox);
    let _ = writer.await;
}

/// Starts the task that writes a stream's outgoing frames, in the order they are sent to it.
fn spawn_writer(mut send: quinn::SendStream) -> (Outbox, tokio::task::JoinHandle<()>) {
    let (outbox, mut outgoing) = mpsc::unbounded_channel::<Outgoing>();
    let writer = tokio::spawn(async move {
        while let Some(Outgoing {
            frame,
            budget,
            last,
        }) = outgoing.recv().await
        {
            if send.write_all(&frame).await.is_err() {
                return;
            }
            // Written: its share of the budget goes back.
            drop(budget);
            if let Some(received) = last {
                let _ = send.finish();
                let _ = send.stopped().await;
                let _ = received.send(());
                return;
            }
        }
        let _ = send.finish();
    });
    (outbox, writer)
}

/// What a stream being read acts on.
struct StreamReading<'a> {
    shared: &'a Arc<Shared>,
    state: &'a Arc<ConnectionState>,
    outbox: &'a Outbox,
    violation: Violation<'a>,
    /// The stream's frames being answered, so that an error about the stream's end comes
    /// after their answers. Finished ones are reaped as the stream goes on.
    frames: JoinSet<()>,
}

/// What reading a stream gave.
enum Read {
    Bytes,
    /// The client finished its side of the stream.
    Ended,
    Failed,
}

impl StreamReading<'_> {
    /// Reads once and acts on what the reader makes of it; `Break` once the stream is done.
    async fn step(
        &mut self,
        recv: &mut quinn::RecvStream,
        reader: &mut FrameReader<Reservation>,
    ) -> ControlFlow<()> {
        match read(recv, reader).await {
            Read::Bytes => {}
            Read::Failed => return ControlFlow::Break(()),
            Read::Ended => {
                self.ended(reader).await;
                return ControlFlow::Break(());
            }
        }
        loop {
            // Past the connection's last protocol error, on any of its streams, nothing more
            // is executed.
            if self.violation.closing() {
                return ControlFlow::Break(());
            }
            let pool = &self.shared.unfinished_pool;
            match reader.next(|bytes| Reservation::try_take(pool, bytes)) {
                Incoming::NeedBytes => return ControlFlow::Continue(()),
                Incoming::Frame { frame, len } => self.frame(frame, len).await?,
                Incoming::Skipped(e) => {
                    metrics::counter!("switch_malformed_frames_total").increment(1);
                    let id = e.correlation_id.unwrap_or(0);
                    if self.violation.report(id, e.code(), &e.to_string()).await {
                        return ControlFlow::Break(());
                    }
                }
                Incoming::Lost(e) => {
                    self.lost(recv, &e).await;
                    return ControlFlow::Break(());
                }
                Incoming::Refused { correlation_id, .. } => self.busy(correlation_id).await?,
            }
        }
    }

    /// A whole frame: a request batch goes to a task of its own; any other kind is a protocol
    /// error.
    async fn frame(&mut self, frame: wire::Frame, len: usize) -> ControlFlow<()> {
        match frame {
            wire::Frame::Requests {
                correlation_id,
                budget_ms,
                requests,
            } => {
                let arrival = frame::Arrival {
                    received: Instant::now(),
                    budget_ms,
                };
                self.requests(correlation_id, arrival, requests, len).await
            }
            wire::Frame::Responses { correlation_id, .. } => {
                metrics::counter!("switch_malformed_frames_total").increment(1);
                let message = "clients send request batches only: a response batch is not executed";
                let code = wire::ErrorCode::UnexpectedFrameKind;
                match self.violation.report(correlation_id, code, message).await {
                    true => ControlFlow::Break(()),
                    false => ControlFlow::Continue(()),
                }
            }
            wire::Frame::Error {
                correlation_id,
                code,
                message,
            } => {
                // Not answered: no error ping-pong.
                metrics::counter!("switch_malformed_frames_total").increment(1);
                tracing::info!(
                    remote = %self.violation.connection.remote_address(),
                    correlation_id,
                    ?code,
                    ?message,
                    "error frame from a client"
                );
                match self.violation.count() {
                    true => ControlFlow::Break(()),
                    false => ControlFlow::Continue(()),
                }
            }
        }
    }

    /// A request batch of `len` bytes: answered by a task of its own, once the connection's
    /// unwritten budget has room for it.
    async fn requests(
        &mut self,
        correlation_id: u64,
        arrival: frame::Arrival,
        requests: Vec<wire::Request>,
        len: usize,
    ) -> ControlFlow<()> {
        // Waits, and so stops reading, while the connection's answers are not being taken
        // off. `len` is at most `frame_bytes_max`, within the budget.
        let cost = u32::try_from(len + FRAME_OVERHEAD_BYTES).unwrap_or(u32::MAX);
        let Ok(budget) = self.state.unwritten.clone().acquire_many_owned(cost).await else {
            return ControlFlow::Break(());
        };
        if self.violation.closing() {
            return ControlFlow::Break(());
        }
        // Each frame runs in its own task, so the stream keeps being read while earlier
        // frames wait for the ledger stage: that is what pipelining is. The per-connection
        // in-flight limit bounds how many there are.
        self.frames.spawn(handle_frame(
            correlation_id,
            arrival,
            requests,
            self.shared.clone(),
            self.state.clone(),
            self.outbox.clone(),
            budget,
        ));
        while self.frames.try_join_next().is_some() {}
        ControlFlow::Continue(())
    }

    /// A frame the unfinished-frame pool had no room for: it is thrown away as it arrives and
    /// answered `ServerBusy` at once (not a protocol error).
    async fn busy(&mut self, correlation_id: u64) -> ControlFlow<()> {
        metrics::counter!("switch_frames_busy_total").increment(1);
        // Held like any answer until written, so that a client that does not read cannot pile
        // these up.
        let cost = u32::try_from(FRAME_OVERHEAD_BYTES).unwrap_or(u32::MAX);
        let Ok(budget) = self.state.unwritten.clone().acquire_many_owned(cost).await else {
            return ControlFlow::Break(());
        };
        let mut frame = Vec::new();
        wire::encode_error_frame(
            correlation_id,
            wire::ErrorCode::ServerBusy,
            &wire::ErrorMessage::truncated(SERVER_BUSY_MESSAGE),
            &mut frame,
        );
        let _ = self.outbox.send(Outgoing {
            frame,
            budget: Some(budget),
            last: None,
        });
        ControlFlow::Continue(())
    }

    /// The framing is lost: nothing more on this stream can be trusted. The answers to the
    /// frames before it go first, then the error.
    async fn lost(&mut self, recv: &mut quinn::RecvStream, e: &wire::WireError) {
        metrics::counter!("switch_malformed_frames_total").increment(1);
        let _ = recv.stop(quinn::VarInt::from_u32(
            wire::AppErrorCode::FrameSyncLost.as_u32(),
        ));
        while self.frames.join_next().await.is_some() {}
        let id = e.correlation_id.unwrap_or(0);
        self.violation.report(id, e.code(), &e.to_string()).await;
    }

    /// The client finished its side. Inside a frame (not one already refused or skipped),
    /// that is a protocol error, said after the answers to the frames before it.
    async fn ended(&mut self, reader: &FrameReader<Reservation>) {
        let Some(end) = reader.ended_inside() else {
            return;
        };
        while self.frames.join_next().await.is_some() {}
        let message = format!(
            "the stream ended inside a frame ({} bytes of it came)",
            end.bytes
        );
        self.violation
            .report(
                end.correlation_id,
                wire::ErrorCode::MalformedFrame,
                &message,
            )
            .await;
    }
}

/// Reads what comes next on the stream into the reader, or, while it skips a frame, takes
/// that much as the connection holds it and throws it away, without copying.
async fn read(recv: &mut quinn::RecvStream, reader: &mut FrameReader<Reservation>) -> Read {
    let skip = reader.skipping();
    if skip > 0 {
        return match recv.read_chunk(skip, true).await {
            Ok(Some(chunk)) => {
                reader.skipped(chunk.bytes.len());
                Read::Bytes
            }
            Ok(None) => Read::Ended,
            Err(_) => Read::Failed,
        };
    }
    match recv.read_buf(reader.read_buffer()).await {
        Ok(0) => Read::Ended,
        Ok(_) => Read::Bytes,
        Err(_) => Read::Failed,
    }
}

/// A connection's protocol errors: each is counted, and one past `malformed_frames_max`
/// closes the connection, once the error frame that reports it is written. From that error
/// on, on every stream of the connection, no frame read is executed and no other error is
/// counted or answered: the limit is exact however many streams send at once.
struct Violation<'a> {
    connection: &'a quinn::Connection,
    shared: &'a Shared,
    state: &'a ConnectionState,
    outbox: &'a Outbox,
}

impl Violation<'_> {
    /// Sends an error frame and counts it. Returns whether the connection is closing (then
    /// only once the client has the error frame, or a second has passed). Past the last
    /// error, sends nothing.
    async fn report(&self, correlation_id: u64, code: wire::ErrorCode, message: &str) -> bool {
        let closing = match self.tally() {
            Tally::Counted => false,
            Tally::Last => true,
            Tally::Past => return true,
        };
        let mut frame = Vec::new();
        let message = wire::ErrorMessage::truncated(message);
        wire::encode_error_frame(correlation_id, code, &message, &mut frame);
        let (received, is_received) = oneshot::channel();
        let _ = self.outbox.send(Outgoing {
            frame,
            budget: None,
            last: closing.then_some(received),
        });
        if closing {
            // A client that reads nothing does not hold the close back for long.
            let _ = tokio::time::timeout(Duration::from_secs(1), is_received).await;
            self.close();
        }
        closing
    }

    /// Counts a protocol error that is not answered. Returns whether the connection is
    /// closing.
    fn count(&self) -> bool {
        match self.tally() {
            Tally::Counted => false,
            Tally::Last => {
                self.close();
                true
            }
            Tally::Past => true,
        }
    }

    /// Counts one more protocol error, unless the connection is past its last already.
    fn tally(&self) -> Tally {
        let max = self.shared.settings.malformed_frames_max;
        match self
            .state
            .violations
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n <= max).then(|| n.saturating_add(1))
            }) {
            Err(_) => Tally::Past,
            Ok(before) if before >= max => Tally::Last,
            Ok(_) => Tally::Counted,
        }
    }

    /// Whether the connection has had its last protocol error.
    fn closing(&self) -> bool {
        self.state.violations.load(Ordering::Acquire) > self.shared.settings.malformed_frames_max
    }

    fn close(&self) {
        self.connection.close(
            quinn::VarInt::from_u32(wire::AppErrorCode::ProtocolViolation.as_u32()),
            b"too many protocol errors",
        );
    }
}

/// What counting a protocol error found.
enum Tally {
    /// Counted, within the limit.
    Counted,
    /// Counted: the one past the limit, which closes the connection.
    Last,
    /// Not counted: the connection had its last already.
    Past,
}
