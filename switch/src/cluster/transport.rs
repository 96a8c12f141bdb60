//! Messages between replicas, over QUIC with mutual TLS.
//!
//! Every member has a certificate of its own; the cluster's configuration lists each member's
//! SHA-256 fingerprint. A replica connects to each other member, pinning that member's
//! fingerprint, and presents its own certificate; it accepts a connection only from a
//! certificate whose fingerprint is a member's other than its own, and takes from it only
//! messages that member sent (`from`) to this replica (`to`). Anything else is refused.
//!
//! Each ordered pair of members has one connection, opened by the sender, which writes its
//! messages on one unidirectional stream: a kind byte (1), the sender's incarnation (`u64`, new
//! at every start of its process), then frames: a `u32` length (little-endian), then the
//! message in the Raft library's protobuf encoding. A new incarnation from a member means it
//! restarted: what this replica was writing to it went to a process that is gone, so its own
//! connection to it is made anew at once rather than left to time out. A snapshot goes on a stream of its own:
//! a header (`u64` index, `u64` file length), the snapshot file as it is on disk, then the
//! message that announces it; the receiver keeps the file (checked, synced, renamed into
//! place) before the message reaches Raft.
//!
//! Every queue is bounded. A message that finds its peer's queue full, or its peer
//! unreachable, is dropped: Raft sends again what matters, and is told (`Inbound::Unreachable`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ledger::bell::Bell;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::server::replication::ReplicaState;
use crate::tls::{self, Fingerprint, ServerIdentity, Trust};

/// The ALPN protocol id of the link between replicas.
pub const REPLICA_ALPN: &[u8] = b"pswitch-replica/1";

/// A link silent this long is given up and made again (keep-alives keep a live one busy).
const LINK_IDLE_TIMEOUT: Duration = Duration::from_secs(2);
const LINK_KEEP_ALIVE: Duration = Duration::from_millis(250);

const STREAM_MESSAGES: u8 = 1;
const STREAM_SNAPSHOT: u8 = 2;

/// A member as this replica sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: u64,
    pub address: SocketAddr,
    pub fingerprint: Fingerprint,
}

/// Bounds and places for the link.
#[derive(Clone, Debug)]
pub struct LinkSettings {
    pub id: u64,
    pub listen: SocketAddr,
    pub peers: Vec<Peer>,
    /// Largest message frame sent or accepted.
    pub frame_bytes_max: u32,
    /// Messages waiting for one peer at most; past it they are dropped.
    pub queue_messages_max: usize,
    /// Largest snapshot file accepted from the leader.
    pub snapshot_bytes_max: u64,
    /// Where snapshot files live (`snapshot_file` names).
    pub snapshot_dir: PathBuf,
    pub connect_timeout: Duration,
}

/// What the link hands to the replica.
#[derive(Debug)]
pub enum Inbound {
    Message(Message),
    /// A message to this peer was dropped: Raft should probe it again.
    Unreachable(u64),
    /// A snapshot was sent to this peer in full (`true`), or its sending failed.
    SnapshotSent {
        to: u64,
        ok: bool,
    },
}

/// Where the link puts what arrives: a bounded channel the replica drains when its bell rings.
#[derive(Clone)]
pub struct Inbox {
    pub tx: crossbeam_channel::Sender<Inbound>,
    pub bell: Arc<Bell>,
    /// The replica's published state: its committed index says which snapshots it can no
    /// longer install.
    pub replica: Arc<ReplicaState>,
}

impl Inbox {
    fn deliver(&self, inbound: Inbound) -> bool {
        let ok = self.tx.try_send(inbound).is_ok();
        if ok {
            self.bell.ring();
        } else {
            metrics::counter!("switch_replica_inbox_dropped_total").increment(1);
        }
        ok
    }
}

enum Outbound {
    Message(Vec<u8>),
    /// A snapshot message: the file at its index goes first.
    Snapshot {
        index: u64,
        message: Vec<u8>,
    },
}

/// The sending side: one bounded queue per peer. The peers change with the membership
/// (`set_peers`, on a reload of the configuration). A clone is the same link.
#[derive(Clone)]
pub struct Link {
    id: u64,
    own: Fingerprint,
    peers: Arc<parking_lot::RwLock<Vec<PeerLink>>>,
    /// The certificates the replica address accepts: the peers', kept by `set_peers`.
    members: Arc<parking_lot::RwLock<HashSet<Fingerprint>>>,
    inbox: Inbox,
    local: SocketAddr,
    endpoint: quinn::Endpoint,
    settings: Arc<LinkSettings>,
    identity: Arc<ServerIdentity>,
    /// New at every start of the process: tells the peers this one restarted.
    incarnation: u64,
}

/// A peer as the link sends to it.
struct PeerLink {
    peer: Peer,
    queue: mpsc::Sender<Outbound>,
    /// Rung when the peer speaks with a new incarnation (it restarted), so that the
    /// connection to it is made anew too rather than written into until it times out.
    reconnect: Arc<tokio::sync::Notify>,
}

impl Link {
    /// Binds the replica address and starts a sender task for each peer. Call inside a tokio
    /// runtime.
    pub fn start(
        settings: LinkSettings,
        identity: ServerIdentity,
        inbox: Inbox,
    ) -> anyhow::Result<Link> {
        let own = identity
            .fingerprint()
            .ok_or_else(|| anyhow::anyhow!("the replica certificate chain is empty"))?;
        let members = Arc::new(parking_lot::RwLock::new(HashSet::new()));
        let server = server_config(&identity, members.clone())?;
        let endpoint = quinn::Endpoint::server(server, settings.listen)
            .map_err(|e| anyhow::anyhow!("binding the replica address {}: {e}", settings.listen))?;
        let local = endpoint.local_addr()?;
        let peers = settings.peers.clone();
        // Snapshots received before a restart were announced by messages lost with it: Raft
        // will not install them.
        let removed =
            crate::server::replication::discard_received(&settings.snapshot_dir, |_| true)
                .map_err(|e| {
                    anyhow::anyhow!("removing snapshots received before the start: {e}")
                })?;
        if removed > 0 {
            tracing::info!(removed, "removed snapshots received before the start");
        }
        let link = Link {
            id: settings.id,
            own,
            peers: Arc::default(),
            members,
            inbox,
            local,
            endpoint,
            settings: Arc::new(settings),
            identity: Arc::new(identity),
            incarnation: incarnation(),
        };
        link.set_peers(peers);
        tokio::spawn(accept_loop(
            link.endpoint.clone(),
            link.settings.clone(),
            link.inbox.clone(),
            link.peers.clone(),
        ));
        Ok(link)
    }

    /// The members to talk to (this one may be among them): a peer new or changed (its
    /// address or certificate) gets a sender task, one gone loses it, and the replica address
    /// accepts exactly their certificates. Call inside a tokio runtime.
    pub fn set_peers(&self, peers: Vec<Peer>) {
        let peers: Vec<Peer> = peers.into_iter().filter(|p| p.id != self.id).collect();
        let mut links = self.peers.write();
        links.retain(|l| peers.contains(&l.peer));
        let new: Vec<Peer> = peers
            .iter()
            .filter(|p| !links.iter().any(|l| l.peer == **p))
            .cloned()
            .collect();
        for peer in new {
            let (queue, rx) = mpsc::channel(self.settings.queue_messages_max.max(1));
            let reconnect = Arc::new(tokio::sync::Notify::new());
            tokio::spawn(send_loop(
                Sender {
                    endpoint: self.endpoint.clone(),
                    settings: self.settings.clone(),
                    identity: self.identity.clone(),
                    inbox: self.inbox.clone(),
                    incarnation: self.incarnation,
                },
                peer.clone(),
                rx,
                reconnect.clone(),
            ));
            tracing::info!(peer = peer.id, address = %peer.address, "replica link to a member");
            links.push(PeerLink {
                peer,
                queue,
                reconnect,
            });
        }
        *self.members.write() = peers
            .iter()
            .map(|p| p.fingerprint)
            .filter(|f| *f != self.own)
            .collect();
    }

    /// The members it talks to (itself left out).
    pub fn peers(&self) -> Vec<Peer> {
        self.peers.read().iter().map(|l| l.peer.clone()).collect()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Queues a message for its peer without waiting; drops it if the queue is full.
    pub fn send(&self, message: Message) {
        let to = message.to;
        let outbound = match message.write_to_bytes() {
            Ok(bytes) if message.get_msg_type() == MessageType::MsgSnapshot => {
                let index = message.get_snapshot().get_metadata().index;
                Outbound::Snapshot {
                    index,
                    message: bytes,
                }
            }
            Ok(bytes) => Outbound::Message(bytes),
            Err(e) => {
                tracing::error!("encoding a raft message: {e}");
                return;
            }
        };
        let sent = {
            let links = self.peers.read();
            let Some(link) = links.iter().find(|l| l.peer.id == to) else {
                tracing::debug!(to, "a raft message for a replica that is not a member");
                return;
            };
            link.queue.try_send(outbound).is_ok()
        };
        if !sent {
            metrics::counter!("switch_replica_messages_dropped_total", "reason" => "queue_full")
                .increment(1);
            self.inbox.deliver(Inbound::Unreachable(to));
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"replica stopping");
    }
}

fn server_config(
    identity: &ServerIdentity,
    members: Arc<parking_lot::RwLock<HashSet<Fingerprint>>>,
) -> anyhow::Result<quinn::ServerConfig> {
    let provider = tls::provider();
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(Members { members, provider }))
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    crypto.alpn_protocols = vec![REPLICA_ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
        .map_err(|e| anyhow::anyhow!("replica QUIC TLS configuration: {e}"))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_uni_streams(16u8.into())
        .max_concurrent_bidi_streams(0u8.into())
        .max_idle_timeout(Some(LINK_IDLE_TIMEOUT.try_into()?))
        .keep_alive_interval(Some(LINK_KEEP_ALIVE));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

fn client_config(identity: &ServerIdentity, peer: &Peer) -> anyhow::Result<quinn::ClientConfig> {
    let mut crypto = tls::client_crypto(
        &Trust::Fingerprint(peer.fingerprint),
        Some(ServerIdentity {
            chain: identity.chain.clone(),
            key: identity.key.clone_key(),
        }),
    )?;
    crypto.alpn_protocols = vec![REPLICA_ALPN.to_vec()];
    let mut client = tls::quinn_client_config(crypto)?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(LINK_IDLE_TIMEOUT.try_into()?))
        .keep_alive_interval(Some(LINK_KEEP_ALIVE));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// Accepts a client certificate only if it is a member's.
#[derive(Debug)]
struct Members {
    members: Arc<parking_lot::RwLock<HashSet<Fingerprint>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ClientCertVerifier for Members {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.members.read().contains(&Fingerprint::of(end_entity)) {
            Ok(ClientCertVerified::assertion())
        } else {
            metrics::counter!("switch_replica_refused_total").increment(1);
            tracing::warn!(
                fingerprint = %Fingerprint::of(end_entity),
                "refused a replica connection: the certificate is not a member's"
            );
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Keeps a connection to `peer` and writes its queue to it, reconnecting after a failure.
/// What every sender task shares.
struct Sender {
    endpoint: quinn::Endpoint,
    settings: Arc<LinkSettings>,
    identity: Arc<ServerIdentity>,
    inbox: Inbox,
    incarnation: u64,
}

/// A number no earlier start of this process had (the clock's nanoseconds and the pid).
fn incarnation() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ u64::from(std::process::id()).rotate_left(48)
}

async fn send_loop(
    sender: Sender,
    peer: Peer,
    mut queue: mpsc::Receiver<Outbound>,
    reconnect: Arc<tokio::sync::Notify>,
) {
    let Sender {
        endpoint,
        settings,
        identity,
        inbox,
        incarnation,
    } = sender;
    let client = match client_config(&identity, &peer) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(peer = peer.id, "replica client configuration: {e:#}");
            return;
        }
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        let connecting = match endpoint.connect_with(client.clone(), peer.address, "replica") {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(peer = peer.id, "connecting to replica: {e}");
                return;
            }
        };
        let connection = match tokio::time::timeout(settings.connect_timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(peer = peer.id, "replica unreachable: {e}");
                if !drain_while_down(&mut queue, &inbox, peer.id, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            Err(_) => {
                tracing::debug!(peer = peer.id, "replica did not answer in time");
                if !drain_while_down(&mut queue, &inbox, peer.id, backoff).await {
                    return;
                }
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        tracing::info!(peer = peer.id, address = %peer.address, "connected to replica");
        tokio::select! {
            sent = send_on(&connection, &settings, &mut queue, &inbox, (peer.id, incarnation)) => match sent {
                Ok(()) => return,
                Err(e) => tracing::info!(peer = peer.id, "replica connection lost: {e}"),
            },
            () = reconnect.notified() => {
                tracing::info!(peer = peer.id, "the replica restarted: reconnecting to it");
                connection.close(0u32.into(), b"reconnecting");
            }
        }
    }
}

/// While the peer cannot be reached, what is queued for it is dropped (Raft is told).
/// Returns false once the queue is closed.
async fn drain_while_down(
    queue: &mut mpsc::Receiver<Outbound>,
    inbox: &Inbox,
    peer: u64,
    wait: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, queue.recv()).await {
            Ok(Some(outbound)) => {
                metrics::counter!("switch_replica_messages_dropped_total", "reason" => "unreachable")
                    .increment(1);
                if let Outbound::Snapshot { .. } = outbound {
                    inbox.deliver(Inbound::SnapshotSent {
                        to: peer,
                        ok: false,
                    });
                }
                inbox.deliver(Inbound::Unreachable(peer));
            }
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
}

fn frame(bytes: &[u8], max: u32) -> std::io::Result<Vec<u8>> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|&n| n <= max)
        .ok_or_else(|| std::io::Error::other(format!("a raft message of {} bytes", bytes.len())))?;
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(out)
}

async fn send_on(
    connection: &quinn::Connection,
    settings: &LinkSettings,
    queue: &mut mpsc::Receiver<Outbound>,
    inbox: &Inbox,
    (peer, incarnation): (u64, u64),
) -> anyhow::Result<()> {
    let mut stream = connection.open_uni().await?;
    let mut header = [0u8; 9];
    header[0] = STREAM_MESSAGES;
    header[1..].copy_from_slice(&incarnation.to_le_bytes());
    stream.write_all(&header).await?;
    while let Some(outbound) = queue.recv().await {
        match outbound {
            Outbound::Message(bytes) => {
                let framed = frame(&bytes, settings.frame_bytes_max)?;
                stream.write_all(&framed).await?;
                // Whatever else is queued goes in the same write.
                let mut more = Vec::new();
                while more.len() < 1 << 20 {
                    match queue.try_recv() {
                        Ok(Outbound::Message(bytes)) => {
                            more.extend_from_slice(&frame(&bytes, settings.frame_bytes_max)?)
                        }
                        Ok(snapshot @ Outbound::Snapshot { .. }) => {
                            stream.write_all(&more).await?;
                            more.clear();
                            send_snapshot(connection, settings, snapshot, inbox, peer).await;
                        }
                        Err(_) => break,
                    }
                }
                if !more.is_empty() {
                    stream.write_all(&more).await?;
                }
            }
            snapshot @ Outbound::Snapshot { .. } => {
                send_snapshot(connection, settings, snapshot, inbox, peer).await;
            }
        }
    }
    let _ = stream.finish();
    Ok(())
}

/// Sends a snapshot file and its message on a stream of their own, in the background, and
/// tells Raft how it went.
async fn send_snapshot(
    connection: &quinn::Connection,
    settings: &LinkSettings,
    snapshot: Outbound,
    inbox: &Inbox,
    peer: u64,
) {
    let Outbound::Snapshot { index, message } = snapshot else {
        return;
    };
    let connection = connection.clone();
    let path = settings
        .snapshot_dir
        .join(ledger::snapshot_file::snapshot_file_name(index));
    let frame_max = settings.frame_bytes_max;
    let inbox = inbox.clone();
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let sent = async {
            let mut file = tokio::fs::File::open(&path).await?;
            let len = file.metadata().await?.len();
            let mut stream = connection.open_uni().await?;
            let mut header = vec![STREAM_SNAPSHOT];
            header.extend_from_slice(&index.to_le_bytes());
            header.extend_from_slice(&len.to_le_bytes());
            stream.write_all(&header).await?;
            let mut buf = vec![0u8; 1 << 20];
            let mut left = len;
            while left > 0 {
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    anyhow::bail!("{} ended early", path.display());
                }
                stream.write_all(&buf[..n]).await?;
                left = left.saturating_sub(n as u64);
            }
            stream.write_all(&frame(&message, frame_max)?).await?;
            stream.finish()?;
            let _ = stream.stopped().await;
            anyhow::Ok(len)
        };
        match sent.await {
            Ok(bytes) => {
                metrics::counter!("switch_replica_snapshot_bytes_sent_total").increment(bytes);
                tracing::info!(
                    peer,
                    index,
                    bytes,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "snapshot sent to replica"
                );
                inbox.deliver(Inbound::SnapshotSent { to: peer, ok: true });
            }
            Err(e) => {
                let refused = matches!(
                    e.downcast_ref::<quinn::WriteError>(),
                    Some(quinn::WriteError::Stopped(code)) if *code == SNAPSHOT_REFUSED.into()
                );
                if refused {
                    tracing::debug!(
                        peer,
                        index,
                        "the replica refused the snapshot: it has it, is receiving one, or has \
                         committed past it"
                    );
                } else {
                    tracing::warn!(peer, index, "sending a snapshot to replica failed: {e:#}");
                }
                inbox.deliver(Inbound::SnapshotSent {
                    to: peer,
                    ok: false,
                });
            }
        }
    });
}

/// The snapshot this replica is receiving: one at a time. A leader sends a snapshot again when
/// the follower has not yet answered from it, which for a large one is while the first copy
/// is still arriving or being checked: the second stream is refused rather than let two write
/// one file (each would truncate what the other wrote). Another index is refused too, so that
/// at most one snapshot's bytes are in flight to the disk (and, checked, in memory).
#[derive(Clone, Default)]
struct Receiving(Arc<parking_lot::Mutex<Option<u64>>>);

/// The snapshot being received; another may come once this is dropped.
struct Claim {
    receiving: Receiving,
}

impl Receiving {
    fn claim(&self, index: u64) -> Option<Claim> {
        let mut current = self.0.lock();
        if current.is_some() {
            return None;
        }
        *current = Some(index);
        Some(Claim {
            receiving: self.clone(),
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let was = self.receiving.0.lock().take();
        debug_assert!(was.is_some(), "a snapshot claim released twice");
    }
}

/// The code a refused snapshot stream is stopped with.
const SNAPSHOT_REFUSED: u32 = 1;

async fn accept_loop(
    endpoint: quinn::Endpoint,
    settings: Arc<LinkSettings>,
    inbox: Inbox,
    peers: Arc<parking_lot::RwLock<Vec<PeerLink>>>,
) {
    // Each member's incarnation, as last heard.
    let heard: Arc<parking_lot::Mutex<std::collections::HashMap<u64, u64>>> = Arc::default();
    let receiving = Receiving::default();
    while let Some(incoming) = endpoint.accept().await {
        let (settings, inbox, peers) = (settings.clone(), inbox.clone(), peers.clone());
        let (heard, receiving) = (heard.clone(), receiving.clone());
        tokio::spawn(async move {
            let connection = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("replica handshake failed: {e}");
                    return;
                }
            };
            let Some(from) = member_of(&connection, &peers) else {
                connection.close(1u32.into(), b"not a member");
                return;
            };
            while let Ok(stream) = connection.accept_uni().await {
                let (settings, inbox) = (settings.clone(), inbox.clone());
                let (peers, heard) = (peers.clone(), heard.clone());
                let receiving = receiving.clone();
                tokio::spawn(async move {
                    // A member heard with a new incarnation restarted: what this replica has
                    // been writing to it went to a process that is gone.
                    let restarted = move |incarnation: u64| {
                        let before = heard.lock().insert(from, incarnation);
                        if before.is_some_and(|b| b != incarnation)
                            && let Some(l) = peers.read().iter().find(|l| l.peer.id == from)
                        {
                            l.reconnect.notify_one();
                        }
                    };
                    let received = receive(stream, from, &settings, &inbox, &receiving, restarted);
                    match received.await {
                        Ok(()) => {}
                        Err(Ended::Snapshot(e)) => {
                            tracing::warn!(peer = from, "receiving a snapshot failed: {e:#}");
                        }
                        Err(Ended::Messages(e)) => {
                            tracing::debug!(peer = from, "replica stream ended: {e:#}");
                        }
                    }
                });
            }
        });
    }
}

/// The member a connection's certificate belongs to (the verifier admitted only members).
fn member_of(
    connection: &quinn::Connection,
    peers: &parking_lot::RwLock<Vec<PeerLink>>,
) -> Option<u64> {
    let chain = connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    let fingerprint = Fingerprint::of(chain.first()?);
    peers
        .read()
        .iter()
        .find(|l| l.peer.fingerprint == fingerprint)
        .map(|l| l.peer.id)
}

/// Why a stream from a replica ended early: a message stream ends whenever a connection does
/// (said at debug), a snapshot that does not arrive is worth a warning.
enum Ended {
    Messages(anyhow::Error),
    Snapshot(anyhow::Error),
}

async fn receive(
    mut stream: quinn::RecvStream,
    from: u64,
    settings: &LinkSettings,
    inbox: &Inbox,
    receiving: &Receiving,
    incarnation: impl FnOnce(u64),
) -> Result<(), Ended> {
    let kind = stream
        .read_u8()
        .await
        .map_err(|e| Ended::Messages(e.into()))?;
    match kind {
        STREAM_MESSAGES => {
            let messages = async {
                incarnation(stream.read_u64_le().await?);
                loop {
                    let Some(message) = read_message(&mut stream, from, settings).await? else {
                        return Ok(());
                    };
                    inbox.deliver(Inbound::Message(message));
                }
            };
            messages.await.map_err(Ended::Messages)
        }
        STREAM_SNAPSHOT => {
            let index = stream
                .read_u64_le()
                .await
                .map_err(|e| Ended::Snapshot(e.into()))?;
            let name = ledger::snapshot_file::snapshot_file_name(index);
            let Some(claim) = receiving.claim(index) else {
                // The copy already arriving will do (or, for another index, the leader sends
                // again after this one); this one is not read.
                let _ = stream.stop(SNAPSHOT_REFUSED.into());
                return Ok(());
            };
            let committed = inbox.replica.committed();
            if index <= committed || settings.snapshot_dir.join(&name).exists() {
                // Raft installs no snapshot at or below the committed index; one under its own
                // name is installed already (or being loaded): the leader has not heard yet.
                let _ = stream.stop(SNAPSHOT_REFUSED.into());
                return Ok(());
            }
            // What earlier receptions left that Raft can no longer install. (A failed one
            // removes its own files; a start removes them all.)
            discard(settings, move |i| i <= committed).await;
            let kept = receive_snapshot(&mut stream, from, index, settings, inbox).await;
            if kept.is_err() {
                // The leader sends it again.
                discard(settings, move |i| i == index).await;
            }
            drop(claim);
            kept.map_err(Ended::Snapshot)
        }
        other => Err(Ended::Messages(anyhow::anyhow!(
            "stream kind {other} from replica {from}"
        ))),
    }
}

/// The rest of a snapshot stream: its length, the file, and the message announcing it, which
/// goes to Raft once the file is kept.
async fn receive_snapshot(
    stream: &mut quinn::RecvStream,
    from: u64,
    index: u64,
    settings: &LinkSettings,
    inbox: &Inbox,
) -> anyhow::Result<()> {
    let len = stream.read_u64_le().await?;
    anyhow::ensure!(
        len <= settings.snapshot_bytes_max,
        "a snapshot of {len} bytes from replica {from} is over the limit of {}",
        settings.snapshot_bytes_max
    );
    keep_snapshot(stream, index, len, settings).await?;
    let message = read_message(stream, from, settings)
        .await?
        .ok_or_else(|| anyhow::anyhow!("a snapshot without its message"))?;
    anyhow::ensure!(
        message.get_msg_type() == MessageType::MsgSnapshot
            && message.get_snapshot().get_metadata().index == index,
        "the message after snapshot {index} does not announce it"
    );
    anyhow::ensure!(
        inbox.deliver(Inbound::Message(message)),
        "snapshot {index} kept, but the ledger stage's inbox was full: dropped"
    );
    Ok(())
}

/// Removes the received and half-received snapshots whose index is `stale`, off the network
/// threads (`replication::discard_received`).
async fn discard(settings: &LinkSettings, stale: impl Fn(u64) -> bool + Send + 'static) {
    let dir = settings.snapshot_dir.clone();
    let removed = tokio::task::spawn_blocking(move || {
        crate::server::replication::discard_received(&dir, stale)
    })
    .await;
    if let Ok(Err(e)) = removed {
        tracing::warn!("removing snapshots received from a leader: {e}");
    }
}

/// The next message of a stream, checked to come from `from` to this replica; `None` at the
/// stream's end.
async fn read_message(
    stream: &mut quinn::RecvStream,
    from: u64,
    settings: &LinkSettings,
) -> anyhow::Result<Option<Message>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len);
    anyhow::ensure!(
        len <= settings.frame_bytes_max,
        "a frame of {len} bytes from replica {from}"
    );
    let mut bytes = vec![0u8; len as usize];
    stream.read_exact(&mut bytes).await?;
    let message = Message::parse_from_bytes(&bytes)?;
    anyhow::ensure!(
        message.from == from && message.to == settings.id,
        "a message from {} to {} on replica {from}'s connection",
        message.from,
        message.to
    );
    Ok(Some(message))
}

/// Writes a snapshot file from the stream under a temporary name, checking it as it arrives
/// (`snapshot_file::StreamCheck`: a header that is not snapshot `index`'s stops the reception
/// at once, and nothing is held but a piece at a time), syncs it and renames it into place.
async fn keep_snapshot(
    stream: &mut quinn::RecvStream,
    index: u64,
    len: u64,
    settings: &LinkSettings,
) -> anyhow::Result<()> {
    let name = ledger::snapshot_file::snapshot_file_name(index);
    let receiving = format!("{name}{}", crate::server::replication::RECEIVING_SUFFIX);
    let tmp = settings.snapshot_dir.join(&receiving);
    let mut file = tokio::fs::File::create(&tmp).await?;
    let mut check = ledger::snapshot_file::StreamCheck::new(index);
    let bad = |e| anyhow::anyhow!("snapshot {index} from the leader: {e}");
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = stream
            .read(&mut buf[..want])
            .await?
            .ok_or_else(|| anyhow::anyhow!("snapshot {index} ended after {} bytes", len - left))?;
        check.update(&buf[..n]).map_err(bad)?;
        file.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    check.finish().map_err(bad)?;
    file.sync_all().await?;
    drop(file);
    let dir = settings.snapshot_dir.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let storage = ledger::storage::FileStorage::open(&dir)?;
        // Kept aside until Raft installs it (`replication::FileDisk::install_snapshot`): a
        // snapshot under its own name is one this replica's log starts from.
        let received = format!("{name}{}", crate::server::replication::RECEIVED_SUFFIX);
        ledger::storage::Storage::rename(&storage, &receiving, &received)?;
        ledger::storage::Storage::sync_dir(&storage)?;
        Ok(())
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_snapshot_is_received_at_a_time() {
        let receiving = Receiving::default();
        let first = receiving.claim(7).expect("nothing is being received");
        assert!(
            receiving.claim(7).is_none(),
            "a second copy of 7 while 7 arrives"
        );
        assert!(
            receiving.claim(8).is_none(),
            "another snapshot while 7 arrives"
        );
        drop(first);
        let next = receiving
            .claim(8)
            .expect("free once the copy of 7 is kept or failed");
        drop(next);
        assert!(receiving.0.lock().is_none());
    }
}
