//! A pipelining client for the protocol, used by loadgen and the tests.
//!
//! One `Client` is one QUIC connection; `Client::stream` opens a long-lived bidirectional
//! stream on which any number of request frames may be in flight at once. Responses are
//! matched to requests by correlation id, so they may arrive in any order.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::tls::{self, ServerIdentity, Trust};
use crate::wire;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// Said in full by `describe_close`, so not chained as a source too (it would repeat).
    #[error("{}", describe_close(.0))]
    Connection(quinn::ConnectionError),
    #[error("{target}: the name does not resolve: {error}")]
    Resolve {
        target: String,
        error: std::io::Error,
    },
    #[error("{target}: the name resolves to no address")]
    NoAddress { target: String },
    #[error("no answer from {target} within {} s", timeout.as_secs_f64())]
    TimedOut { target: String, timeout: Duration },
    #[error("no address of {target} answered: {}", .errors.join("; "))]
    NoAddressAnswered { target: String, errors: Vec<String> },
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("encode: {0}")]
    Encode(#[from] wire::EncodeError),
    #[error("the server answered with an error frame: {code:?}: {message}")]
    ErrorFrame {
        code: wire::ErrorCode,
        message: String,
    },
    #[error("the stream closed before the answer arrived")]
    Closed,
    #[error("undecodable response frame, the stream is abandoned: {0}")]
    Undecodable(wire::WireError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// For an answer that a replica which does not lead gave (error frame 9): the leader it
    /// named, if any. `None` for every other error.
    pub fn not_leader(&self) -> Option<Option<SocketAddr>> {
        match self {
            ClientError::ErrorFrame {
                code: wire::ErrorCode::NotLeader,
                message,
            } => Some(wire::not_leader_address(message)),
            _ => None,
        }
    }

    /// Whether the request may have been lost with its connection or its replica, so that it
    /// is to be sent again (same ids) to the leader: a replica that does not lead, or a
    /// connection or stream that ended without the answer.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            ClientError::Connection(_)
                | ClientError::Closed
                | ClientError::TimedOut { .. }
                | ClientError::NoAddressAnswered { .. }
                | ClientError::Connect(_)
        ) || self.not_leader().is_some()
    }
}

impl From<quinn::ConnectionError> for ClientError {
    fn from(e: quinn::ConnectionError) -> Self {
        ClientError::Connection(e)
    }
}

/// How long a client waits. `timeout`: for a connection's handshake and for an answer.
/// `silence`: a connection that hears nothing from the switch this long is lost (keep-alives
/// every third of it hold an idle one open), so a switch that dies is noticed within it. A
/// client of a cluster keeps `silence` short, to leave a dead leader quickly, while still
/// giving a slow answer its full `timeout`. A bare `Duration` is both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub timeout: Duration,
    pub silence: Duration,
}

impl From<Duration> for Timeouts {
    fn from(timeout: Duration) -> Timeouts {
        Timeouts {
            timeout,
            silence: timeout,
        }
    }
}

/// A connection to a switch.
pub struct Client {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
}

type Answer = Result<Reply, ClientError>;

/// A response batch: the results, in the order of the requests, and the server's hint of how
/// long to wait before sending again the operations it refused for overload (0: none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub responses: Vec<wire::Response>,
    pub retry_after_ms: u16,
}

/// The calls waiting on a stream, shared by its callers and its reader.
#[derive(Default)]
struct Lane {
    /// By correlation id.
    pending: HashMap<u64, Waiting>,
    /// Numbers the calls, so that a call removes only its own entry (ids may be reused).
    calls: u64,
    /// Set when the reader stopped: nothing more will be answered, so calls fail at once.
    ended: Option<Ended>,
}

/// A call waiting for its answer.
struct Waiting {
    call: u64,
    tx: oneshot::Sender<Answer>,
}

/// Why a stream's reader stopped.
#[derive(Clone)]
enum Ended {
    /// The stream ended or broke.
    Closed,
    /// The connection ended, for this reason.
    Lost(quinn::ConnectionError),
    /// The server sent bytes that are not a frame; the framing of the stream is lost.
    Undecodable(wire::WireError),
}

impl Ended {
    fn error(&self) -> ClientError {
        match self {
            Ended::Closed => ClientError::Closed,
            Ended::Lost(e) => ClientError::Connection(e.clone()),
            Ended::Undecodable(e) => ClientError::Undecodable(e.clone()),
        }
    }
}

/// Why a connection ended, in words: the switch's close codes (PROTOCOL.md 7.3) by name with
/// the reason it gave, a refused TLS handshake by its alert.
pub fn describe_close(e: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    match e {
        E::ApplicationClosed(close) => {
            let code = close.error_code.into_inner();
            let name = wire::AppErrorCode::from_u64(code).map_or("unknown code", app_error_name);
            let reason = String::from_utf8_lossy(&close.reason);
            let reason = if reason.is_empty() {
                String::new()
            } else {
                format!(": {reason}")
            };
            format!("the switch closed the connection: {name} (0x{code:02x}){reason}")
        }
        E::ConnectionClosed(close) => match tls_alert(close.error_code) {
            Some(alert) => format!("the switch refused the TLS handshake: {alert}"),
            None => format!("the switch closed the connection: {close}"),
        },
        E::TransportError(error) => match tls_alert(error.code) {
            // A verifier's own error (the pinned fingerprint's) reaches here as rustls's
            // "other error: …": the prefix says nothing.
            Some(_) => format!(
                "TLS handshake failed: {}",
                error
                    .reason
                    .strip_prefix("other error: ")
                    .unwrap_or(&error.reason)
            ),
            None => format!("QUIC transport error: {error}"),
        },
        E::TimedOut => {
            "timed out: nothing heard from the switch for the connection's idle timeout (it \
             stopped, or the network between is down)"
                .to_string()
        }
        E::Reset => "reset by the switch (it no longer knows the connection: restarted?)".into(),
        E::LocallyClosed => "closed by this client".to_string(),
        other => other.to_string(),
    }
}

fn app_error_name(code: wire::AppErrorCode) -> &'static str {
    match code {
        wire::AppErrorCode::NoError => "no error",
        wire::AppErrorCode::ProtocolViolation => "protocol violation",
        wire::AppErrorCode::FrameSyncLost => "frame sync lost",
        wire::AppErrorCode::ShuttingDown => "shutting down",
        wire::AppErrorCode::Unauthenticated => "unauthenticated",
        wire::AppErrorCode::InternalError => "internal error",
    }
}

/// The TLS alert a QUIC crypto error carries (codes 0x100 to 0x1ff), in words.
fn tls_alert(code: quinn::TransportErrorCode) -> Option<String> {
    let alert = u64::from(code).checked_sub(0x100).filter(|a| *a < 0x100)?;
    let name = match alert {
        40 => "handshake failure",
        42 => "bad certificate",
        45 => "certificate expired",
        46 => "certificate unknown",
        48 => "unknown CA",
        49 => "access denied",
        116 => "certificate required",
        120 => "no application protocol",
        _ => "",
    };
    Some(if name.is_empty() {
        format!("TLS alert {alert}")
    } else {
        format!("{name} (TLS alert {alert})")
    })
}

/// One pipelined stream.
#[derive(Clone)]
pub struct Stream {
    send: Arc<tokio::sync::Mutex<quinn::SendStream>>,
    lane: Arc<Mutex<Lane>>,
    next: Arc<AtomicU64>,
}

impl Client {
    /// Connects to `addr`, trusting the server as `trust` says and presenting `identity`.
    ///
    /// The switch may be on this host or another one. The name checked against the server's
    /// certificate under `Trust::Roots` is `localhost` (a pinned fingerprint ignores names).
    pub async fn connect(
        addr: SocketAddr,
        trust: &Trust,
        identity: Option<ServerIdentity>,
    ) -> Result<Client, ClientError> {
        let crypto = tls::client_crypto(trust, identity)?;
        let config = tls::quinn_client_config(crypto)?;
        Self::connect_with(addr, config).await
    }

    async fn connect_with(
        addr: SocketAddr,
        config: quinn::ClientConfig,
    ) -> Result<Client, ClientError> {
        let mut endpoint = quinn::Endpoint::client(bind_address(addr))?;
        endpoint.set_default_client_config(config);
        let connection = endpoint.connect(addr, "localhost")?.await?;
        Ok(Client {
            endpoint,
            connection,
        })
    }

    /// Connects to `target`, an address or a host name with a port (`localhost:4433`),
    /// within `timeout`. Every address the name resolves to is tried at once and the first
    /// whose handshake completes is kept (a name may resolve to `::1` and `127.0.0.1` while
    /// the switch listens on one of them). The connection ends itself once `silence` passes
    /// without a packet from the switch (see [`Timeouts`]): calls then fail with the reason.
    pub async fn connect_to(
        target: &str,
        trust: &Trust,
        identity: Option<ServerIdentity>,
        timeouts: impl Into<Timeouts>,
    ) -> Result<Client, ClientError> {
        let Timeouts { timeout, silence } = timeouts.into();
        let addrs = resolve(target).await?;
        let crypto = tls::client_crypto(trust, identity)?;
        let mut config = tls::quinn_client_config(crypto)?;
        let mut transport = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(silence)
            .unwrap_or_else(|_| quinn::IdleTimeout::from(quinn::VarInt::MAX));
        transport
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some((silence / 3).max(Duration::from_millis(50))));
        config.transport_config(Arc::new(transport));
        let mut attempts = tokio::task::JoinSet::new();
        for &addr in &addrs {
            let config = config.clone();
            attempts.spawn(async move {
                let connected =
                    tokio::time::timeout(timeout, Self::connect_with(addr, config)).await;
                (addr, connected)
            });
        }
        let mut errors = Vec::new();
        while let Some(attempt) = attempts.join_next().await {
            let Ok((addr, connected)) = attempt else {
                continue;
            };
            let named = if addrs.len() == 1 && addr.to_string() != target {
                format!("{target} ({addr})")
            } else {
                addr.to_string()
            };
            match connected {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(ClientError::Connection(quinn::ConnectionError::TimedOut))) | Err(_) => {
                    errors.push((
                        addr,
                        ClientError::TimedOut {
                            target: named,
                            timeout,
                        },
                    ))
                }
                Ok(Err(e)) => errors.push((addr, e)),
            }
        }
        if errors.len() == 1 {
            return Err(errors.remove(0).1);
        }
        Err(ClientError::NoAddressAnswered {
            target: target.to_string(),
            errors: errors
                .iter()
                .map(|(addr, e)| match e {
                    ClientError::TimedOut { .. } => e.to_string(),
                    e => format!("{addr}: {e}"),
                })
                .collect(),
        })
    }

    /// Connects to the replica that leads a cluster (or to the one switch of a cluster of
    /// one). `targets` are its replicas' client addresses; all are asked at once, each with an
    /// Echo, and a replica that does not lead names the leader, which is asked at once. A
    /// replica that answered without leading (during an election nobody leads) is asked again
    /// on its own after a pause that doubles from 10 ms up to 50 ms, and one that is down
    /// holds up no one: its attempt runs out beside the others. One attempt per replica at a
    /// time, until `deadline`. Returns the connection and the target it reached.
    pub async fn connect_leader(
        targets: &[String],
        trust: &Trust,
        identity: Option<&ServerIdentity>,
        timeouts: impl Into<Timeouts>,
        deadline: Duration,
    ) -> Result<(Client, String), ClientError> {
        let timeouts = timeouts.into();
        let give_up = tokio::time::Instant::now() + deadline;
        let mut last = None;
        let mut asking = Asking::default();
        let mut probes = tokio::task::JoinSet::new();
        let spawn = |probes: &mut tokio::task::JoinSet<_>, target: String| {
            let trust = trust.clone();
            let identity = identity.map(|i| ServerIdentity {
                chain: i.chain.clone(),
                key: i.key.clone_key(),
            });
            probes.spawn(async move {
                let probed = probe_leader(&target, &trust, identity, timeouts).await;
                (target, probed)
            });
        };
        for target in targets {
            if asking.ask_now(target) {
                spawn(&mut probes, target.clone());
            }
        }
        loop {
            let wake = asking.next_due().map_or(give_up, |due| due.min(give_up));
            tokio::select! {
                done = probes.join_next(), if !probes.is_empty() => {
                    let Some(Ok((target, probed))) = done else {
                        continue;
                    };
                    let e = match probed {
                        Ok(client) => return Ok((client, target)),
                        Err(e) => e,
                    };
                    if let Some(Some(leader)) = e.not_leader() {
                        let leader = leader.to_string();
                        if asking.ask_now(&leader) {
                            spawn(&mut probes, leader);
                        }
                    }
                    asking.answered(&target, tokio::time::Instant::now());
                    last = Some(e);
                }
                () = tokio::time::sleep_until(wake) => {
                    let now = tokio::time::Instant::now();
                    if now >= give_up {
                        return Err(last.unwrap_or(ClientError::TimedOut {
                            target: targets.join(","),
                            timeout: deadline,
                        }));
                    }
                    for target in asking.due(now) {
                        spawn(&mut probes, target);
                    }
                }
            }
        }
    }

    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// Opens a stream and starts reading its responses.
    pub async fn stream(&self) -> Result<Stream, ClientError> {
        let (send, recv) = self.connection.open_bi().await?;
        let lane = Arc::new(Mutex::new(Lane::default()));
        tokio::spawn(read_responses(recv, lane.clone()));
        Ok(Stream {
            send: Arc::new(tokio::sync::Mutex::new(send)),
            lane,
            next: Arc::new(AtomicU64::new(1)),
        })
    }

    pub async fn close(self) {
        self.connection.close(0u32.into(), b"done");
        self.endpoint.wait_idle().await;
    }
}

/// The addresses of `target`: an address as it is, or a host name with a port, resolved.
pub async fn resolve(target: &str) -> Result<Vec<SocketAddr>, ClientError> {
    if let Ok(addr) = target.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host(target)
        .await
        .map_err(|error| ClientError::Resolve {
            target: target.to_string(),
            error,
        })?
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(ClientError::NoAddress {
            target: target.to_string(),
        });
    }
    Ok(addrs)
}

/// Reads a stream's frames and hands each answer to the call waiting for it, until the stream
/// ends (the calls still waiting fail with `Closed`) or a frame cannot be decoded. After an
/// undecodable frame the rest of the stream cannot be split into frames again: reading stops
/// (STOP_SENDING, frame sync lost) and the calls still waiting fail with the decode error.
/// Either way, calls made afterwards on the stream fail at once.
async fn read_responses(mut recv: quinn::RecvStream, lane: Arc<Mutex<Lane>>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    // The largest frame any switch may be configured to send: a corrupt length prefix
    // cannot make the client buffer more.
    let limits = wire::Limits {
        frame_len_max: wire::FRAME_LEN_MAX_LIMIT,
        batch_len_max: u16::MAX,
    };
    let ended = 'read: loop {
        let n = match recv.read(&mut chunk).await {
            Ok(Some(n)) => n,
            Err(quinn::ReadError::ConnectionLost(e)) => break Ended::Lost(e),
            _ => break Ended::Closed,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut consumed = 0;
        loop {
            let frame = match wire::decode_frame(&buf[consumed..], &limits) {
                Ok(Some((frame, used))) => {
                    consumed += used;
                    frame
                }
                Ok(None) => break,
                Err(e) => {
                    let sync_lost =
                        quinn::VarInt::from_u32(wire::AppErrorCode::FrameSyncLost.as_u32());
                    let _ = recv.stop(sync_lost);
                    break 'read Ended::Undecodable(e);
                }
            };
            let (id, result) = match frame {
                wire::Frame::Responses {
                    correlation_id,
                    retry_after_ms,
                    responses,
                } => (
                    correlation_id,
                    Ok(Reply {
                        responses,
                        retry_after_ms,
                    }),
                ),
                wire::Frame::Error {
                    correlation_id,
                    code,
                    message,
                } => (
                    correlation_id,
                    Err(ClientError::ErrorFrame {
                        code,
                        message: message.as_str().to_string(),
                    }),
                ),
                wire::Frame::Requests { .. } => continue,
            };
            let waiting = lane.lock().pending.remove(&id);
            if let Some(waiting) = waiting {
                let _ = waiting.tx.send(result);
            }
        }
        buf.drain(..consumed);
    };
    // Whatever is still waiting will never be answered on this stream.
    let pending = {
        let mut lane = lane.lock();
        lane.ended = Some(ended.clone());
        std::mem::take(&mut lane.pending)
    };
    for waiting in pending.into_values() {
        let _ = waiting.tx.send(Err(ended.error()));
    }
}

/// Removes a call's entry from its stream's pending map when the call ends without its answer:
/// the write failed, or the caller dropped the call (a timeout, say). Without it the entry of
/// a call whose answer never comes would stay in the map for the life of the stream.
struct PendingEntry<'a> {
    lane: &'a Mutex<Lane>,
    correlation_id: u64,
    call: u64,
    armed: bool,
}

impl Drop for PendingEntry<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut lane = self.lane.lock();
        // A later call with the same correlation id may have taken the place: leave it.
        if lane
            .pending
            .get(&self.correlation_id)
            .is_some_and(|w| w.call == self.call)
        {
            lane.pending.remove(&self.correlation_id);
        }
    }
}

/// The local address of a client endpoint that talks to `target`: every interface of the
/// target's address family, and a port the OS chooses. Binding to loopback instead would let
/// the client reach only a switch on this host.
pub fn bind_address(target: SocketAddr) -> SocketAddr {
    let any: IpAddr = match target {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    SocketAddr::new(any, 0)
}

impl Stream {
    /// Sends a batch and waits for its responses (other calls may be in flight meanwhile).
    pub async fn call(
        &self,
        requests: &[wire::Request],
    ) -> Result<Vec<wire::Response>, ClientError> {
        Ok(self.call_within(0, requests).await?.responses)
    }

    /// Sends a batch whose operations the server may run within `budget_ms` milliseconds of
    /// reading it (0: the server's defaults) and waits for the whole reply.
    pub async fn call_within(
        &self,
        budget_ms: u16,
        requests: &[wire::Request],
    ) -> Result<Reply, ClientError> {
        let mut frame = Vec::new();
        let correlation_id = self.next.fetch_add(1, Ordering::Relaxed);
        wire::encode_request_frame_within(correlation_id, budget_ms, requests, &mut frame)?;
        self.reply_raw(correlation_id, &frame).await
    }

    /// Sends bytes as they are (tests use it for malformed frames) and waits for the answer to
    /// `correlation_id`. Fails at once if the stream's reader has stopped (the stream ended, or
    /// the server sent an undecodable frame).
    pub async fn call_raw(
        &self,
        correlation_id: u64,
        bytes: &[u8],
    ) -> Result<Vec<wire::Response>, ClientError> {
        Ok(self.reply_raw(correlation_id, bytes).await?.responses)
    }

    /// `call_raw`, keeping the reply's retry-after hint.
    pub async fn reply_raw(&self, correlation_id: u64, bytes: &[u8]) -> Result<Reply, ClientError> {
        let (tx, rx) = oneshot::channel();
        let mut entry = {
            let mut lane = self.lane.lock();
            if let Some(ended) = &lane.ended {
                return Err(ended.error());
            }
            lane.calls = lane.calls.wrapping_add(1);
            let call = lane.calls;
            lane.pending.insert(correlation_id, Waiting { call, tx });
            PendingEntry {
                lane: &self.lane,
                correlation_id,
                call,
                armed: true,
            }
        };
        // A failed write, or the caller giving up (dropping this future), removes the entry.
        self.send
            .lock()
            .await
            .write_all(bytes)
            .await
            .map_err(|e| match e {
                quinn::WriteError::ConnectionLost(e) => ClientError::Connection(e),
                e => ClientError::Write(e),
            })?;
        let answer = rx.await;
        // Whoever answered, or dropped the sender, took the entry out of the map first.
        entry.armed = false;
        answer.map_err(|_| ClientError::Closed)?
    }

    /// How many calls on this stream are waiting for their answer (for tests and monitoring).
    pub fn pending_len(&self) -> usize {
        self.lane.lock().pending.len()
    }

    /// The next correlation id this stream would use.
    pub fn reserve_correlation_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// A connection to `target` if it leads: it answers an Echo (a replica that does not lead
/// answers error 9, naming the leader if it knows it).
async fn probe_leader(
    target: &str,
    trust: &Trust,
    identity: Option<ServerIdentity>,
    timeouts: Timeouts,
) -> Result<Client, ClientError> {
    let timeout = timeouts.timeout;
    let client = Client::connect_to(target, trust, identity, timeouts).await?;
    let probe = client.stream().await?;
    let echo = wire::Request {
        id: wire::RequestId(u128::from(rand_id()) << 64 | 1),
        operation: wire::Operation::Echo {
            payload: wire::EchoPayload::new(Vec::new()).map_err(|_| ClientError::Closed)?,
        },
    };
    match tokio::time::timeout(timeout, probe.call(&[echo])).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ClientError::TimedOut {
            target: target.to_string(),
            timeout,
        }),
    }
}

/// The first pause before a replica that answered without leading is asked again, and the
/// longest (the pause doubles from one to the other).
const PROBE_PAUSE_FIRST: Duration = Duration::from_millis(10);
const PROBE_PAUSE_MAX: Duration = Duration::from_millis(50);

/// The replicas `connect_leader` asks: at most one attempt each at a time, and when each that
/// answered without leading is due to be asked again.
#[derive(Debug, Default)]
struct Asking {
    replicas: HashMap<String, Replica>,
}

#[derive(Debug)]
struct Replica {
    /// `None` while an attempt is under way.
    due: Option<tokio::time::Instant>,
    /// The pause after its next answer.
    pause: Duration,
}

impl Asking {
    /// Whether `target` is to be asked now (its attempt then counts as under way): yes unless
    /// an attempt is already under way. A replica waiting for its pause is asked at once.
    fn ask_now(&mut self, target: &str) -> bool {
        match self.replicas.get_mut(target) {
            Some(Replica { due: None, .. }) => false,
            Some(r) => {
                r.due = None;
                true
            }
            None => {
                self.replicas.insert(
                    target.to_string(),
                    Replica {
                        due: None,
                        pause: PROBE_PAUSE_FIRST,
                    },
                );
                true
            }
        }
    }

    /// `target`'s attempt ended without a leader: it is due again after its pause, which
    /// doubles for the next time.
    fn answered(&mut self, target: &str, now: tokio::time::Instant) {
        if let Some(r) = self.replicas.get_mut(target) {
            r.due = Some(now + r.pause);
            r.pause = (r.pause * 2).min(PROBE_PAUSE_MAX);
        }
    }

    /// The earliest time a replica is due to be asked again.
    fn next_due(&self) -> Option<tokio::time::Instant> {
        self.replicas.values().filter_map(|r| r.due).min()
    }

    /// The replicas due at `now`, each counted as asked.
    fn due(&mut self, now: tokio::time::Instant) -> Vec<String> {
        let mut due = Vec::new();
        for (target, r) in &mut self.replicas {
            if r.due.is_some_and(|d| d <= now) {
                r.due = None;
                due.push(target.clone());
            }
        }
        due.sort();
        due
    }
}

/// A number that differs between calls and processes, for probe request ids.
fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_to_every_interface_of_the_target_family() {
        for (target, bind) in [
            ("127.0.0.1:4433", "0.0.0.0:0"),
            ("192.0.2.7:4433", "0.0.0.0:0"),
            ("[::1]:4433", "[::]:0"),
            ("[2001:db8::7]:4433", "[::]:0"),
            ("[::ffff:192.0.2.7]:4433", "[::]:0"),
        ] {
            let target: SocketAddr = target.parse().expect("literal");
            let bind: SocketAddr = bind.parse().expect("literal");
            assert_eq!(bind_address(target), bind, "for {target}");
        }
    }

    #[derive(Clone, Debug)]
    enum Step {
        /// A replica is named (as leader, or as a target at the start).
        Name(u8),
        /// A replica's attempt ends without a leader (if one is under way).
        Answer(u8),
        /// Time passes, in milliseconds, and the due replicas are asked.
        Pass(u8),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (0u8..4).prop_map(Step::Name),
            (0u8..4).prop_map(Step::Answer),
            any::<u8>().prop_map(Step::Pass),
        ]
    }

    proptest::proptest! {
        #![proptest_config(ledger::proptest_config!("switch_client_asking.txt"))]

        /// Against a model of each replica (an attempt under way, or the time it is due and
        /// its next pause): never two attempts at once, a named replica that waits is asked at
        /// once, one that answered is asked again exactly when its pause is over, and the
        /// pause doubles from 10 ms to at most 50 ms.
        #[test]
        fn each_replica_is_asked_once_at_a_time_and_again_after_its_pause(
            steps in proptest::collection::vec(step(), 1..200),
        ) {
            let mut now = tokio::time::Instant::now();
            let mut asking = Asking::default();
            // The model: per replica, (under way, due, next pause).
            let mut model: HashMap<String, (bool, tokio::time::Instant, Duration)> =
                HashMap::new();
            for s in steps {
                match s {
                    Step::Name(r) => {
                        let target = format!("r{r}");
                        let expect = match model.get_mut(&target) {
                            Some((under_way, ..)) if *under_way => false,
                            Some(m) => { m.0 = true; true }
                            None => {
                                model.insert(target.clone(), (true, now, PROBE_PAUSE_FIRST));
                                true
                            }
                        };
                        proptest::prop_assert_eq!(asking.ask_now(&target), expect);
                    }
                    Step::Answer(r) => {
                        let target = format!("r{r}");
                        if let Some(m) = model.get_mut(&target).filter(|m| m.0) {
                            *m = (false, now + m.2, (m.2 * 2).min(PROBE_PAUSE_MAX));
                            asking.answered(&target, now);
                        }
                    }
                    Step::Pass(ms) => {
                        now += Duration::from_millis(u64::from(ms));
                        let mut expect: Vec<String> = model
                            .iter_mut()
                            .filter(|(_, m)| !m.0 && m.1 <= now)
                            .map(|(t, m)| { m.0 = true; t.clone() })
                            .collect();
                        expect.sort();
                        proptest::prop_assert_eq!(asking.due(now), expect);
                    }
                }
                let next = model.values().filter(|m| !m.0).map(|m| m.1).min();
                proptest::prop_assert_eq!(asking.next_due(), next);
                for m in model.values() {
                    proptest::prop_assert!(m.2 >= PROBE_PAUSE_FIRST && m.2 <= PROBE_PAUSE_MAX);
                }
            }
        }
    }

    #[test]
    fn the_pause_doubles_up_to_its_cap() {
        let now = tokio::time::Instant::now();
        let mut asking = Asking::default();
        assert!(asking.ask_now("a"));
        let mut seen = Vec::new();
        for _ in 0..5 {
            asking.answered("a", now);
            seen.push(asking.next_due().expect("waiting") - now);
            assert_eq!(
                asking.due(now + Duration::from_secs(1)),
                vec!["a".to_string()]
            );
        }
        let ms: Vec<u128> = seen.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![10, 20, 40, 50, 50]);
    }
}
