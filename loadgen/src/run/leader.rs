//! The connections to the switch and every call on them, and, against a cluster (several
//! `--target` addresses), following its leader.
//!
//! A call that a cluster leaves without an answer (a replica that does not lead answered with
//! error frame 9, the connection or the stream was lost, the answer timed out) is not a
//! result: the link reconnects to the leader (the one the error names first, then the other
//! targets, the replica it lost last) and sends the same requests again, unchanged, same ids
//! (PROTOCOL.md 10.4). One reconnection serves every lane: a lane that failed on a connection
//! already replaced just sends again on the new one. Only when no leader answers within
//! `--failover-secs` does the call fail as a lost connection, which stops the run.
//!
//! Against one target nothing is retried: a call's failure is returned as it came, and a
//! lost connection stops the run, as it always has.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use parking_lot::Mutex;
use switch::client::{Client, ClientError, Stream, Timeouts};
use switch::tls::{ServerIdentity, Trust};
use switch::wire::{ErrorCode, Request, Response};

use super::sessions::Failure;
use super::spawning::Endpoint;
use crate::config::Options;
use crate::report::{ClusterReport, ReconnectionReport};

/// Reconnections listed one by one in the report (all are counted).
const RECONNECTIONS_KEPT_MAX: usize = 1000;

/// Pause between two rounds of looking for a leader when a round found one that then failed.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Why a call brought no answers.
#[derive(Debug, thiserror::Error)]
pub(super) enum CallError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("no answer within {} s (--timeout-secs)", .0.as_secs_f64())]
    TimedOut(Duration),
    /// Against a cluster: no leader answered within `--failover-secs`.
    #[error("{0}")]
    NoLeader(String),
}

impl CallError {
    /// What the failure says about the requests of the frame.
    pub(super) fn failure(&self) -> Failure {
        match self {
            CallError::Client(ClientError::ErrorFrame {
                code: ErrorCode::ServerBusy,
                ..
            }) => Failure::Busy,
            CallError::Client(
                e @ (ClientError::Connection(_)
                | ClientError::Closed
                | ClientError::Write(_)
                | ClientError::Undecodable(_)),
            ) => Failure::Lost(e.to_string()),
            e @ CallError::NoLeader(_) => Failure::Lost(e.to_string()),
            _ => Failure::Other,
        }
    }

    /// Against a cluster: whether the leader is to be found again and the frame sent to it,
    /// with the address the error names, if any.
    fn follows_leader(&self) -> Option<Option<SocketAddr>> {
        match self {
            CallError::Client(e) => {
                if let Some(leader) = e.not_leader() {
                    Some(leader)
                } else if e.is_retriable()
                    || matches!(e, ClientError::Write(_) | ClientError::Undecodable(_))
                {
                    Some(None)
                } else {
                    None
                }
            }
            CallError::TimedOut(_) => Some(None),
            CallError::NoLeader(_) => None,
        }
    }
}

/// A call's outcome.
pub(super) struct Called {
    pub(super) result: Result<Vec<Response>, CallError>,
    /// The answer's hint of when to send again what it refused for overload, milliseconds
    /// (0: none, or no answer).
    pub(super) retry_after_ms: u16,
    /// The requests went more than once (after a failover): an earlier attempt may have run
    /// them, so an answer saying this attempt did not run (91, a busy frame) says nothing of
    /// the earlier one.
    pub(super) resent: bool,
}

impl Called {
    /// The answers, or what their absence says about the requests; and `resent`.
    pub(super) fn answers(self) -> (Result<Vec<Response>, Failure>, bool) {
        let answers = self.result.map_err(|e| e.failure());
        (answers, self.resent)
    }

    /// `answers`, with the retry-after hint.
    pub(super) fn answers_hinted(self) -> (Result<Vec<Response>, Failure>, u16, bool) {
        let hint = self.retry_after_ms;
        let (answers, resent) = self.answers();
        (answers, hint, resent)
    }
}

/// The connections of one generation and their streams (the lanes).
struct Connected {
    /// 0 at the start, one more at each reconnection.
    generation: u64,
    /// The address of the replica the connections reached.
    leader: SocketAddr,
    clients: Vec<Client>,
    lanes: Vec<Stream>,
}

/// One reconnection, as it happened.
struct Reconnection {
    from: SocketAddr,
    to: SocketAddr,
    at: Instant,
    /// When the earliest request the old connection left unanswered was sent.
    unanswered_since: Instant,
    /// The first answer on the new connection.
    first_answer: Option<Instant>,
}

/// What the report says of the failovers.
struct Record {
    /// The generation now in use.
    generation: u64,
    leader_at_start: SocketAddr,
    /// The earliest send time of a request the current generation left unanswered.
    unanswered_since: Option<Instant>,
    /// The reconnection to generation g is at index g - 1 (the first ones only).
    reconnections: Vec<Reconnection>,
    reconnections_total: u64,
    failovers: u64,
    frames_resent: u64,
    requests_resent: u64,
}

impl Record {
    fn unanswered(&mut self, generation: u64, sent_at: Instant) {
        if generation == self.generation {
            let since = self.unanswered_since.map_or(sent_at, |s| s.min(sent_at));
            self.unanswered_since = Some(since);
        } else if let Some(r) = usize::try_from(generation)
            .ok()
            .and_then(|g| self.reconnections.get_mut(g))
        {
            // A frame of an older connection, failed after another lane had reconnected: the
            // outage that reconnection ended began no later than this frame was sent.
            r.unanswered_since = r.unanswered_since.min(sent_at);
        }
    }

    fn answered(&mut self, generation: u64, at: Instant) {
        let Some(r) = generation
            .checked_sub(1)
            .and_then(|g| usize::try_from(g).ok())
            .and_then(|g| self.reconnections.get_mut(g))
        else {
            return;
        };
        if r.first_answer.is_none() {
            r.first_answer = Some(at);
        }
    }

    /// The reconnections kept, with times in seconds from `origin`.
    fn reports(&self, origin: Instant) -> Vec<ReconnectionReport> {
        let secs = |at: Instant| {
            if at >= origin {
                at.duration_since(origin).as_secs_f64()
            } else {
                -origin.duration_since(at).as_secs_f64()
            }
        };
        self.reconnections
            .iter()
            .map(|r| ReconnectionReport {
                at_secs: secs(r.at),
                from: r.from.to_string(),
                to: r.to.to_string(),
                new_leader: r.from != r.to,
                failover_ms: r.first_answer.map(|a| {
                    a.saturating_duration_since(r.unanswered_since)
                        .as_secs_f64()
                        * 1000.0
                }),
            })
            .collect()
    }

    fn reconnected(&mut self, from: SocketAddr, to: SocketAddr, at: Instant) {
        let mut since = self.unanswered_since.take().unwrap_or(at);
        // The previous reconnection brought no answer before this one: the outage goes on.
        if let Some(previous) = usize::try_from(self.generation)
            .ok()
            .and_then(|g| g.checked_sub(1))
            .and_then(|g| self.reconnections.get(g))
            .filter(|r| r.first_answer.is_none())
        {
            since = since.min(previous.unanswered_since);
        }
        self.generation += 1;
        self.reconnections_total += 1;
        if from != to {
            self.failovers += 1;
        }
        if self.reconnections.len() < RECONNECTIONS_KEPT_MAX
            && self.reconnections.len() as u64 + 1 == self.generation
        {
            self.reconnections.push(Reconnection {
                from,
                to,
                at,
                unanswered_since: since,
                first_answer: None,
            });
        }
    }
}

/// The connections a run sends on, replaced by new ones to the leader when a cluster's
/// leader changes or is lost.
pub(super) struct Link {
    /// Several: a cluster's replicas, and the link follows the leader.
    targets: Vec<String>,
    follow: bool,
    trust: Trust,
    identity: Option<ServerIdentity>,
    shape: Shape,
    /// The longest search for a leader (`--failover-secs`).
    deadline: Duration,
    current: Mutex<Arc<Connected>>,
    /// Held while reconnecting, so that one reconnection serves every lane.
    reconnecting: tokio::sync::Mutex<()>,
    /// Set when no leader was found in time: every later failover fails at once.
    gave_up: OnceLock<String>,
    record: Mutex<Record>,
}

/// What each generation of connections is made of.
#[derive(Clone, Copy)]
struct Shape {
    connections: usize,
    streams: usize,
    /// The longest wait for a connection and for an answer (`--timeout-secs`).
    timeout: Duration,
    /// Silence after which a connection is lost (`--silence-secs`).
    silence: Duration,
}

impl Shape {
    fn timeouts(&self) -> Timeouts {
        Timeouts {
            timeout: self.timeout,
            silence: self.silence,
        }
    }
}

fn clone_identity(identity: Option<&ServerIdentity>) -> Option<ServerIdentity> {
    identity.map(|i| ServerIdentity {
        chain: i.chain.clone(),
        key: i.key.clone_key(),
    })
}

impl Link {
    /// Connects `options.connections` connections of `options.streams` streams each: to the
    /// one target, or to the leader of the cluster the targets name.
    pub(super) async fn connect(options: &Options, endpoint: &Endpoint) -> anyhow::Result<Link> {
        let identity = endpoint.identity()?;
        let targets = endpoint.targets.clone();
        let follow = targets.len() > 1;
        let shape = Shape {
            connections: options.connections,
            streams: options.streams,
            timeout: options.timeout,
            silence: options.silence,
        };
        let link_of = |clients: Vec<Client>, lanes: Vec<Stream>, leader: SocketAddr| Link {
            follow,
            trust: endpoint.trust.clone(),
            identity: clone_identity(identity.as_ref()),
            shape,
            deadline: options.failover_deadline,
            current: Mutex::new(Arc::new(Connected {
                generation: 0,
                leader,
                clients,
                lanes,
            })),
            reconnecting: tokio::sync::Mutex::new(()),
            gave_up: OnceLock::new(),
            record: Mutex::new(Record {
                generation: 0,
                leader_at_start: leader,
                unanswered_since: None,
                reconnections: Vec::new(),
                reconnections_total: 0,
                failovers: 0,
                frames_resent: 0,
                requests_resent: 0,
            }),
            targets: targets.clone(),
        };
        if follow {
            let (clients, lanes) = find_leader(
                &targets,
                &endpoint.trust,
                identity.as_ref(),
                &shape,
                options.failover_deadline,
            )
            .await
            .with_context(|| {
                format!(
                    "finding the leader of the cluster at {} (--failover-secs {}, \
                     --timeout-secs {})",
                    targets.join(","),
                    options.failover_deadline.as_secs_f64(),
                    options.timeout.as_secs_f64()
                )
            })?;
            let leader = leader_of(&clients)?;
            return Ok(link_of(clients, lanes, leader));
        }
        let target = targets.first().context("no --target")?;
        let mut clients: Vec<Client> = Vec::with_capacity(options.connections);
        let mut lanes = Vec::with_capacity(options.lanes());
        for _ in 0..options.connections {
            // The first connection finds the address that answers; the others go there.
            let to = match clients.first() {
                Some(first) => first.connection().remote_address().to_string(),
                None => target.clone(),
            };
            let client = Client::connect_to(
                &to,
                &endpoint.trust,
                clone_identity(identity.as_ref()),
                shape.timeouts(),
            )
            .await
            .with_context(|| {
                format!(
                    "connecting to {target} (--timeout-secs {})",
                    options.timeout.as_secs_f64()
                )
            })?;
            for _ in 0..options.streams {
                lanes.push(client.stream().await.context("opening a stream")?);
            }
            clients.push(client);
        }
        let leader = leader_of(&clients)?;
        Ok(link_of(clients, lanes, leader))
    }

    /// Lanes: connections × streams.
    pub(super) fn lanes(&self) -> usize {
        self.current.lock().lanes.len()
    }

    fn lane(&self, lane: usize) -> Option<(u64, Stream)> {
        let current = self.current.lock();
        let n = current.lanes.len();
        let stream = current.lanes.get(lane.checked_rem(n)?)?.clone();
        Some((current.generation, stream))
    }

    /// Sends `requests` as one frame on lane `lane` and waits at most the timeout for the
    /// answers; against a cluster, sends them again to the leader until a leader answers.
    pub(super) async fn call(&self, lane: usize, requests: &[Request]) -> Called {
        self.call_within(lane, 0, requests).await
    }

    /// `call`, the frame carrying a budget of `budget_ms` milliseconds (0: none).
    pub(super) async fn call_within(
        &self,
        lane: usize,
        budget_ms: u16,
        requests: &[Request],
    ) -> Called {
        let mut resent = false;
        let mut first_failure: Option<Instant> = None;
        loop {
            let Some((generation, stream)) = self.lane(lane) else {
                return Called {
                    result: Err(CallError::Client(ClientError::Closed)),
                    retry_after_ms: 0,
                    resent,
                };
            };
            let sent_at = Instant::now();
            let call = stream.call_within(budget_ms, requests);
            let error = match tokio::time::timeout(self.shape.timeout, call).await {
                Ok(Ok(reply)) => {
                    if generation > 0 {
                        self.record.lock().answered(generation, Instant::now());
                    }
                    return Called {
                        result: Ok(reply.responses),
                        retry_after_ms: reply.retry_after_ms,
                        resent,
                    };
                }
                Ok(Err(e)) => CallError::Client(e),
                Err(_) => CallError::TimedOut(self.shape.timeout),
            };
            let Some(named) = self.follow.then(|| error.follows_leader()).flatten() else {
                return Called {
                    result: Err(error),
                    retry_after_ms: 0,
                    resent,
                };
            };
            self.record.lock().unanswered(generation, sent_at);
            let first = *first_failure.get_or_insert_with(Instant::now);
            if first.elapsed() > self.deadline {
                let reason = format!(
                    "no leader of the cluster at {} answered a frame within {} s \
                     (--failover-secs): {error}",
                    self.targets.join(","),
                    self.deadline.as_secs_f64()
                );
                let _ = self.gave_up.set(reason.clone());
                return Called {
                    result: Err(CallError::NoLeader(reason)),
                    retry_after_ms: 0,
                    resent,
                };
            }
            if let Err(reason) = self.failover(generation, named).await {
                return Called {
                    result: Err(CallError::NoLeader(reason)),
                    retry_after_ms: 0,
                    resent,
                };
            }
            resent = true;
            let mut record = self.record.lock();
            record.frames_resent += 1;
            record.requests_resent += requests.len() as u64;
        }
    }

    /// Replaces the connections of generation `seen` by new ones to the leader (`named`
    /// first), unless another lane has already done so.
    async fn failover(&self, seen: u64, named: Option<SocketAddr>) -> Result<(), String> {
        let _one = self.reconnecting.lock().await;
        if let Some(reason) = self.gave_up.get() {
            return Err(reason.clone());
        }
        let old = self.current.lock().clone();
        if old.generation != seen {
            return Ok(());
        }
        let order = search_order(&self.targets, named, old.leader);
        let found = find_leader(
            &order,
            &self.trust,
            self.identity.as_ref(),
            &self.shape,
            self.deadline,
        )
        .await;
        let (clients, lanes) = match found {
            Ok(found) => found,
            Err(e) => {
                let reason = format!(
                    "lost the leader of the cluster at {} and found no other within {} s \
                     (--failover-secs): {e}",
                    self.targets.join(","),
                    self.deadline.as_secs_f64()
                );
                let _ = self.gave_up.set(reason.clone());
                return Err(reason);
            }
        };
        let leader = clients
            .first()
            .map_or(old.leader, |c| c.connection().remote_address());
        *self.current.lock() = Arc::new(Connected {
            generation: seen + 1,
            leader,
            clients,
            lanes,
        });
        self.record
            .lock()
            .reconnected(old.leader, leader, Instant::now());
        // Calls still waiting on the old connections fail now and go again on the new ones.
        for c in &old.clients {
            c.connection().close(0u32.into(), b"following the leader");
        }
        Ok(())
    }

    /// Against a cluster, what the report says of its leaders; `None` against one switch.
    /// Times are in seconds from `origin`, the start of the load.
    pub(super) fn report(&self, origin: Instant) -> Option<ClusterReport> {
        if !self.follow {
            return None;
        }
        let leader_at_end = self.current.lock().leader;
        let record = self.record.lock();
        let reconnections = record.reports(origin);
        let failover_max_ms = reconnections
            .iter()
            .filter_map(|r| r.failover_ms)
            .fold(None, |max: Option<f64>, ms| {
                Some(max.map_or(ms, |m| m.max(ms)))
            });
        Some(ClusterReport {
            targets: self.targets.clone(),
            leader_at_start: record.leader_at_start.to_string(),
            leader_at_end: leader_at_end.to_string(),
            failovers: record.failovers,
            reconnections_total: record.reconnections_total,
            failover_max_ms,
            frames_resent: record.frames_resent,
            requests_resent: record.requests_resent,
            reconnections,
        })
    }

    /// Closes the connections, waiting for the switch to hear it; no lane is left.
    pub(super) async fn close(&self) {
        let taken = {
            let mut current = self.current.lock();
            let emptied = Arc::new(Connected {
                generation: current.generation,
                leader: current.leader,
                clients: Vec::new(),
                lanes: Vec::new(),
            });
            std::mem::replace(&mut *current, emptied)
        };
        match Arc::try_unwrap(taken) {
            Ok(connected) => {
                drop(connected.lanes);
                for c in connected.clients {
                    c.close().await;
                }
            }
            // A call still holds them (none should, once the run is over): close without
            // waiting.
            Err(shared) => {
                for c in &shared.clients {
                    c.connection().close(0u32.into(), b"done");
                }
            }
        }
    }
}

fn leader_of(clients: &[Client]) -> anyhow::Result<SocketAddr> {
    clients
        .first()
        .map(|c| c.connection().remote_address())
        .context("no connection")
}

/// Where to look for the leader: the one an answer named first, then the other targets in
/// their order, the replica just lost last (most likely the one that is gone).
fn search_order(targets: &[String], named: Option<SocketAddr>, lost: SocketAddr) -> Vec<String> {
    let lost = lost.to_string();
    let mut order: Vec<String> = named.iter().map(SocketAddr::to_string).collect();
    for lost_pass in [false, true] {
        for t in targets {
            if (*t == lost) == lost_pass && !order.contains(t) {
                order.push(t.clone());
            }
        }
    }
    order
}

/// Connects to the leader among `order` (asked in that order; a replica that does not lead
/// names the leader, asked next): `shape.connections` connections and their streams, within
/// `deadline`.
async fn find_leader(
    order: &[String],
    trust: &Trust,
    identity: Option<&ServerIdentity>,
    shape: &Shape,
    deadline: Duration,
) -> Result<(Vec<Client>, Vec<Stream>), ClientError> {
    let give_up = Instant::now() + deadline;
    let mut left = deadline;
    loop {
        let attempt = async {
            let (first, _) =
                Client::connect_leader(order, trust, identity, shape.timeouts(), left).await?;
            let leader = first.connection().remote_address().to_string();
            let mut clients = vec![first];
            for _ in 1..shape.connections {
                let identity = clone_identity(identity);
                clients.push(Client::connect_to(&leader, trust, identity, shape.timeouts()).await?);
            }
            let mut lanes = Vec::with_capacity(shape.connections * shape.streams);
            for client in &clients {
                for _ in 0..shape.streams {
                    lanes.push(client.stream().await?);
                }
            }
            Ok::<_, ClientError>((clients, lanes))
        };
        match attempt.await {
            Ok(connected) => return Ok(connected),
            // The leader found was lost again while the other connections were made: look
            // again while time is left.
            Err(_) if Instant::now() + RETRY_PAUSE < give_up => {
                tokio::time::sleep(RETRY_PAUSE).await;
                left = give_up.saturating_duration_since(Instant::now());
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn record() -> Record {
        Record {
            generation: 0,
            leader_at_start: addr(1),
            unanswered_since: None,
            reconnections: Vec::new(),
            reconnections_total: 0,
            failovers: 0,
            frames_resent: 0,
            requests_resent: 0,
        }
    }

    /// A failover's time runs from the earliest request the lost leader left unanswered (a
    /// late failure of the old connection included) to the first answer after it; a
    /// reconnection that brought no answer before the next one carries its start over; a
    /// reconnection to the same replica is counted but is not a failover.
    #[test]
    fn a_failover_is_timed_from_the_first_unanswered_request_to_the_first_answer() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut r = record();
        r.answered(0, at(10)); // answers before any reconnection time nothing
        r.unanswered(0, at(300));
        r.unanswered(0, at(100));
        r.reconnected(addr(1), addr(2), at(2_000));
        // A frame sent on the old connection at 50 ms fails only now.
        r.unanswered(0, at(50));
        r.answered(1, at(2_400));
        r.answered(1, at(2_500)); // only the first answer counts
        let reports = r.reports(t0);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].failover_ms, Some(2_350.0));
        assert!(reports[0].new_leader);
        assert_eq!(reports[0].at_secs, 2.0);

        // Lost again at 5 s; the replica found first fails before answering, the next answers.
        r.unanswered(1, at(5_000));
        r.reconnected(addr(2), addr(3), at(6_000));
        r.unanswered(2, at(6_100));
        r.reconnected(addr(3), addr(3), at(7_000));
        r.answered(3, at(7_200));
        let reports = r.reports(at(1_000));
        assert_eq!(reports.len(), 3);
        assert_eq!(reports[1].failover_ms, None);
        assert_eq!(reports[2].failover_ms, Some(2_200.0));
        assert!(!reports[2].new_leader);
        assert_eq!(reports[0].at_secs, 1.0);
        assert_eq!(r.failovers, 2);
        assert_eq!(r.reconnections_total, 3);
        // Seconds before the origin (setup) are negative.
        assert_eq!(r.reports(at(3_000))[0].at_secs, -1.0);
    }

    /// The leader an answer names is asked first, the replica just lost last.
    #[test]
    fn the_search_asks_the_named_leader_first_and_the_lost_one_last() {
        let targets: Vec<String> = (1..=3).map(|p| addr(p).to_string()).collect();
        let order = |named, lost| search_order(&targets, named, lost);
        assert_eq!(
            order(None, addr(1)),
            [addr(2), addr(3), addr(1)].map(|a| a.to_string())
        );
        assert_eq!(
            order(Some(addr(3)), addr(1)),
            [addr(3), addr(2), addr(1)].map(|a| a.to_string())
        );
        // A leader named that is not among the targets is still asked, first.
        assert_eq!(
            order(Some(addr(9)), addr(2)),
            [addr(9), addr(1), addr(3), addr(2)].map(|a| a.to_string())
        );
    }

    /// Which failures send the frame to the leader again: not leader (with the leader it
    /// names), a lost connection or stream, a timeout; not a busy switch or a refused frame,
    /// which are answers.
    #[test]
    fn only_a_lost_leader_or_answer_sends_the_frame_again() {
        let frame = |code, message: &str| {
            CallError::Client(ClientError::ErrorFrame {
                code,
                message: message.into(),
            })
        };
        assert_eq!(
            frame(ErrorCode::NotLeader, "127.0.0.1:4432").follows_leader(),
            Some(Some(addr(4432)))
        );
        assert_eq!(frame(ErrorCode::NotLeader, "").follows_leader(), Some(None));
        assert_eq!(
            CallError::Client(ClientError::Closed).follows_leader(),
            Some(None)
        );
        assert_eq!(
            CallError::TimedOut(Duration::from_secs(1)).follows_leader(),
            Some(None)
        );
        for code in ErrorCode::ALL {
            if code != ErrorCode::NotLeader {
                assert_eq!(frame(code, "m").follows_leader(), None, "{code:?}");
            }
        }
        assert_eq!(CallError::NoLeader("gone".into()).follows_leader(), None);
    }
}
