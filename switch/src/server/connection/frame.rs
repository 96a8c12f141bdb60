//! Answering one request frame: admission (the connection's in-flight limit, draining), each
//! request in the frame's order (to the ledger stage in segments, or to the files service),
//! the room of the response frame, the stage's answers as wire responses with their metrics,
//! and the response frame.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::{ConnectionState, Outbox, Outgoing, Shared};
use crate::codes::{Code, Reason};
use crate::core::{Item, Prepared, RequestId};
use crate::server::stage::{Answered, Job, Refusal};
use crate::server::telemetry;
use crate::tls::Identity;
use crate::translate::{self, Translated};
use crate::wire;

/// How long a membership change may take to commit before the asker hears 91 (a majority of
/// the old and of the new members must have it).
const MEMBERSHIP_CHANGE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// When a request frame was read, and the budget its header gave (0: none).
pub(super) struct Arrival {
    pub(super) received: Instant,
    pub(super) budget_ms: u16,
}

/// Answers a request frame: every request gets a response, in the frame's order, and the
/// response frame is sent once the last is known.
pub(super) async fn handle_frame(
    correlation_id: u64,
    arrival: Arrival,
    requests: Vec<wire::Request>,
    shared: Arc<Shared>,
    state: Arc<ConnectionState>,
    outbox: Outbox,
    budget: OwnedSemaphorePermit,
) {
    // A replica that does not lead runs nothing: the client sends the frame to the leader.
    if let Some(leader) = shared.replica.not_leader() {
        send_not_leader(&outbox, correlation_id, leader, budget);
        return;
    }
    let admitted = Admitted::admit(&shared, &state, requests.len());
    let mut frame = FrameAnswers::new(&shared, state.who, &requests, arrival);
    for (i, r) in requests.iter().enumerate() {
        if i < admitted.count && frame.not_leader.is_none() {
            frame.answer(i, r).await;
        } else {
            frame.set(i, busy(r, Reason::OVERLOADED));
        }
    }
    let (responses, not_leader) = frame.finish(&requests).await;
    // Every request admitted is answered once the frame is sent.
    drop(admitted);
    // The leadership went while the frame was being answered (PROTOCOL.md 10.4).
    if let Some(leader) = not_leader {
        send_not_leader(&outbox, correlation_id, leader, budget);
        return;
    }
    let frame_len_max = shared.settings.wire.frame_len_max as usize;
    // Any result shed says when to come back (PROTOCOL.md 8.2).
    let retry_after_ms = if responses.iter().any(is_shed) {
        shared.overload.retry_after_ms()
    } else {
        0
    };
    send_response_frame(
        &outbox,
        correlation_id,
        retry_after_ms,
        responses,
        budget,
        frame_len_max,
    );
}

fn is_shed(r: &wire::Response) -> bool {
    r.code == Code::SystemBusy && r.reason == Reason::SHED
}

/// The requests of a frame counted in the connection's requests in flight, until the frame
/// is answered.
struct Admitted<'a> {
    state: &'a ConnectionState,
    count: usize,
}

impl<'a> Admitted<'a> {
    /// All of a frame or none of it: a frame that would take the connection past its
    /// in-flight limit, or that comes while the switch drains, is answered 91 whole, and
    /// nothing in it is executed.
    fn admit(shared: &Shared, state: &'a ConnectionState, n: usize) -> Self {
        let none = Admitted { state, count: 0 };
        if shared.draining.load(Ordering::Acquire) {
            return none;
        }
        let n32 = u32::try_from(n).unwrap_or(u32::MAX);
        let before = state.in_flight.fetch_add(n32, Ordering::AcqRel);
        if before as usize + n > shared.settings.in_flight_per_connection_max {
            state.in_flight.fetch_sub(n32, Ordering::AcqRel);
            metrics::counter!("switch_in_flight_limit_total").increment(1);
            return none;
        }
        Admitted { state, count: n }
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let n = u32::try_from(self.count).unwrap_or(u32::MAX);
        self.state.in_flight.fetch_sub(n, Ordering::AcqRel);
    }
}

fn busy(r: &wire::Request, reason: Reason) -> wire::Response {
    wire::Response::declined(r.id, r.operation.op(), Code::SystemBusy, reason)
}

/// A request frame being answered: its responses so far, the room its results have left,
/// and its requests for the ledger stage not yet sent there.
///
/// The response frame stays within the frame limit: every result takes at least its smallest
/// form (its declined one; the configuration makes a full batch of those fit), and the
/// results that can be larger draw on what is left, in order. One that does not fit is
/// answered 91, reason 27.
struct FrameAnswers<'a> {
    shared: &'a Shared,
    who: Identity,
    answers: Vec<Option<wire::Response>>,
    /// Bytes the frame's results may take beyond their smallest forms, less what is reserved.
    result_bytes_left: usize,
    segment: Segment,
    /// When the frame was read: the start of its operations' queueing delay and deadlines.
    received: Instant,
    /// The frame's budget: every operation's deadline; none: each op's default.
    budget: Option<Instant>,
    /// New payments are refused for overload, as the stage said when the frame came.
    shedding: bool,
    /// New payments this frame refused so, counted once the frame is answered.
    shed: Tally<wire::Op>,
    /// The routing table is reloaded at most once a frame.
    reloaded: Option<Result<usize, String>>,
    /// The stage refused a segment because this replica does not lead (any more): the whole
    /// frame goes to the leader, named here if known.
    not_leader: Option<Option<std::net::SocketAddr>>,
}

impl<'a> FrameAnswers<'a> {
    fn new(
        shared: &'a Shared,
        who: Identity,
        requests: &[wire::Request],
        arrival: Arrival,
    ) -> Self {
        let smallest = wire::HEADER_LEN
            + 2
            + requests
                .iter()
                .map(|r| r.operation.op().result_len_min())
                .sum::<usize>();
        let frame_len_max = shared.settings.wire.frame_len_max as usize;
        FrameAnswers {
            shared,
            who,
            answers: vec![None; requests.len()],
            result_bytes_left: frame_len_max.saturating_sub(smallest),
            segment: Segment::default(),
            received: arrival.received,
            budget: (arrival.budget_ms > 0)
                .then(|| arrival.received + Duration::from_millis(u64::from(arrival.budget_ms))),
            shedding: shared.overload.shedding(),
            shed: Tally::default(),
            reloaded: None,
            not_leader: None,
        }
    }

    fn set(&mut self, i: usize, response: wire::Response) {
        if let Some(answer) = self.answers.get_mut(i) {
            *answer = Some(response);
        }
    }

    /// Answers request `i`, or queues it in the segment for the ledger stage.
    async fn answer(&mut self, i: usize, r: &wire::Request) {
        let op = r.operation.op();
        // Refused before it is queued, so that the queue stays short for what is not shed.
        if self.shedding && matches!(op, wire::Op::Authorize | wire::Op::Sale) {
            self.shed.add(op, 1);
            self.set(i, busy(r, Reason::SHED));
            return;
        }
        if matches!(
            op,
            wire::Op::ReloadRoutes | wire::Op::ReportFile | wire::Op::ChangeMembership
        ) && !is_valid_id(r.id)
        {
            let declined =
                wire::Response::declined(r.id, op, Code::InvalidTransaction, Reason::INVALID_ID);
            self.set(i, declined);
            return;
        }
        match translate::request(r) {
            Translated::Core(request) => self.for_stage(i, r, request).await,
            Translated::ReloadRoutes => {
                let response = self.reload_routes(r.id).await;
                self.set(i, response);
            }
            Translated::ChangeMembership { remove, add } => {
                let response = self.change_membership(r.id, remove, add).await;
                self.set(i, response);
            }
            Translated::ReportFile {
                window,
                file,
                offset,
            } => {
                let response = self.report_file(r.id, window, file, offset).await;
                self.set(i, response);
            }
            Translated::Answer(response) => self.set(i, response),
        }
    }

    /// Queues request `i` for the ledger stage, with room reserved for its result.
    async fn for_stage(&mut self, i: usize, r: &wire::Request, request: crate::core::Request) {
        // The most the result can take beyond its smallest form: an echo's payload; up to
        // `WINDOWS_LISTED_MAX` window records; a report is known only once built. (Only the
        // admin gets more than the smallest form of the last two.)
        let (most, exact) = match &r.operation {
            wire::Operation::Echo { payload } => (payload.as_bytes().len(), true),
            wire::Operation::ListWindows if self.who.admin => (LIST_WINDOWS_EXTRA_BYTES, false),
            wire::Operation::WindowReport { .. } if self.who.admin => (usize::MAX, false),
            _ => (0, true),
        };
        // What is reserved for results not yet built comes back once they are.
        if most > self.result_bytes_left && self.segment.reserves() {
            self.run().await;
        }
        if exact && most > self.result_bytes_left {
            self.set(i, busy(r, Reason::RESPONSE_TOO_LARGE));
            return;
        }
        let reserved = most.min(self.result_bytes_left);
        self.result_bytes_left -= reserved;
        // The fingerprint is computed here, off the ledger stage.
        let item = Prepared::new(Item {
            id: RequestId(r.id.0),
            who: self.who,
            request,
        });
        let op = r.operation.op();
        let deadline = self.budget.or_else(|| {
            let default = self.shared.settings.deadlines.of(op)?;
            Some(self.received + default)
        });
        self.segment.push(item, op, i, reserved, deadline);
        // A result that may not fit in what is left is built before anything after it:
        // whether it fits decides what room the rest has.
        if reserved < most {
            self.run().await;
        }
    }

    /// A ReloadRoutes: after the frame's operations before it, like every operation.
    async fn reload_routes(&mut self, id: wire::RequestId) -> wire::Response {
        let op = wire::Op::ReloadRoutes;
        if !self.who.admin {
            return wire::Response::declined(id, op, Code::NotPermitted, Reason::ADMIN_REQUIRED);
        }
        self.run().await;
        if self.reloaded.is_none() {
            self.reloaded = Some(self.shared.files.reload_routes_blocking().await);
        }
        match &self.reloaded {
            Some(Ok(count)) => wire::Response {
                request_id: id,
                code: Code::Approved,
                reason: Reason::NONE,
                body: wire::ResponseBody::ReloadRoutes {
                    route_count: u32::try_from(*count).unwrap_or(u32::MAX),
                },
            },
            _ => wire::Response::declined(id, op, Code::SystemMalfunction, Reason::ROUTES_INVALID),
        }
    }

    /// A ChangeMembership: after the frame's operations before it, made by the leader's stage
    /// and answered once committed (or refused, or 91 if not committed in time: asked again
    /// with the same id, a change already made is approved).
    async fn change_membership(
        &mut self,
        id: wire::RequestId,
        remove: u64,
        add: u64,
    ) -> wire::Response {
        use crate::server::stage::membership::ChangeRefusal;
        let op = wire::Op::ChangeMembership;
        let declined = |code, reason| wire::Response::declined(id, op, code, reason);
        if !self.who.admin {
            return declined(Code::NotPermitted, Reason::ADMIN_REQUIRED);
        }
        self.run().await;
        if self.not_leader.is_some() {
            return declined(Code::SystemBusy, Reason::OVERLOADED);
        }
        let member = |m: u64| (m != 0).then_some(m);
        let answered = match self.shared.membership.ask(member(remove), member(add)) {
            Ok(answered) => match tokio::time::timeout(MEMBERSHIP_CHANGE_WAIT, answered).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err(ChangeRefusal::Failed("the stage stopped".into())),
                Err(_) => Err(ChangeRefusal::Busy),
            },
            Err(refusal) => Err(refusal),
        };
        match answered {
            Ok(index) => wire::Response {
                request_id: id,
                code: Code::Approved,
                reason: Reason::NONE,
                body: wire::ResponseBody::ChangeMembership { index },
            },
            Err(ChangeRefusal::NotLeader(leader)) => {
                self.not_leader = Some(leader);
                declined(Code::SystemBusy, Reason::OVERLOADED)
            }
            Err(ChangeRefusal::Invalid(why)) => {
                tracing::warn!(remove, add, "membership change refused: {why}");
                declined(Code::InvalidTransaction, Reason::MEMBERSHIP_INVALID)
            }
            Err(ChangeRefusal::Changing) => declined(Code::SystemBusy, Reason::MEMBERSHIP_CHANGING),
            Err(ChangeRefusal::Busy) => declined(Code::SystemBusy, Reason::OVERLOADED),
            Err(ChangeRefusal::Failed(why)) => {
                tracing::error!(remove, add, "membership change failed: {why}");
                declined(Code::SystemMalfunction, Reason::INTERNAL)
            }
        }
    }

    /// A ReportFile: after the frame's operations before it (a close among them), a piece of
    /// the file as large as the room their results really left, or 91, reason 27 if not one
    /// byte fits.
    async fn report_file(
        &mut self,
        id: wire::RequestId,
        window: u64,
        file: u8,
        offset: u64,
    ) -> wire::Response {
        let op = wire::Op::ReportFile;
        let declined = |(code, reason)| wire::Response::declined(id, op, code, reason);
        if !self.who.admin {
            return declined((Code::NotPermitted, Reason::ADMIN_REQUIRED));
        }
        self.run().await;
        let len_max = wire::ReportChunk::LEN_MAX.min(self.result_bytes_left);
        let files = &self.shared.files;
        let piece = match files.report_piece(window, file, offset, len_max).await {
            Ok(piece) => piece,
            // Its close may be logged and its files not yet written.
            Err((_, Reason::WINDOW_NOT_FOUND)) if self.is_closed(id, window).await => {
                return declined((Code::SystemBusy, Reason::REPORT_NOT_READY));
            }
            Err(refused) => return declined(refused),
        };
        if piece.bytes.is_empty() && offset < piece.total_len {
            return declined((Code::SystemBusy, Reason::RESPONSE_TOO_LARGE));
        }
        self.result_bytes_left = self.result_bytes_left.saturating_sub(piece.bytes.len());
        match wire::ReportChunk::new(piece.bytes) {
            Ok(chunk) => wire::Response {
                request_id: id,
                code: Code::Approved,
                reason: Reason::NONE,
                body: wire::ResponseBody::ReportFile {
                    total_len: piece.total_len,
                    chunk,
                },
            },
            Err(_) => declined((Code::SystemMalfunction, Reason::INTERNAL)),
        }
    }

    /// Runs what is left of the segment and gives every response, in order; a request left
    /// unanswered (none should be) is answered 96.
    /// And whether a segment was turned away because this replica does not lead (any more).
    async fn finish(
        mut self,
        requests: &[wire::Request],
    ) -> (Vec<wire::Response>, Option<Option<std::net::SocketAddr>>) {
        self.run().await;
        let responses: Vec<wire::Response> = self
            .answers
            .into_iter()
            .zip(requests)
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
        let cut = responses
            .iter()
            .filter(|r| r.code == Code::SystemBusy && r.reason == Reason::RESPONSE_TOO_LARGE)
            .count();
        if cut > 0 {
            metrics::counter!("switch_responses_too_large_total").increment(cut as u64);
        }
        for (op, n) in self.shed.0 {
            telemetry::shed(op, telemetry::ShedReason::Shed).increment(n);
        }
        (responses, self.not_leader)
    }

    /// Runs the segment on the ledger stage and waits for its answers. A result larger than
    /// what was reserved for it (a report that does not fit) is answered 91, reason 27; what
    /// the others reserved and did not take is left for the results after them.
    async fn run(&mut self) {
        let Segment {
            items,
            asked,
            slots,
            deadlines,
        } = std::mem::take(&mut self.segment);
        if items.is_empty() {
            return;
        }
        let answered = ask_stage(self.shared, items, deadlines, self.received).await;
        if let Err(Refusal::NotLeader(leader)) = answered {
            self.not_leader = Some(leader);
        }
        let responses = wire_answers(answered, &asked, self.received);
        for ((slot, reserved), mut response) in slots.into_iter().zip(responses) {
            let op = response.body.op();
            let extra = response.encoded_len().saturating_sub(op.result_len_min());
            if extra > reserved {
                response = wire::Response::declined(
                    response.request_id,
                    op,
                    Code::SystemBusy,
                    Reason::RESPONSE_TOO_LARGE,
                );
                self.result_bytes_left = self.result_bytes_left.saturating_add(reserved);
            } else {
                self.result_bytes_left = self.result_bytes_left.saturating_add(reserved - extra);
            }
            self.set(slot, response);
        }
    }

    /// Whether `window` is closed, as the ledger stage knows it: a window before the open one.
    async fn is_closed(&self, id: wire::RequestId, window: u64) -> bool {
        if window == 0 {
            return false;
        }
        let item = Prepared::new(Item {
            id: RequestId(id.0),
            who: self.who,
            request: crate::core::Request::ListWindows,
        });
        let answered = ask_stage(self.shared, vec![item], Vec::new(), self.received).await;
        let responses = wire_answers(answered, &[(id, wire::Op::ListWindows)], self.received);
        match responses.first().map(|r| (r.code, &r.body)) {
            // Newest first: the open window leads.
            Some((Code::Approved, wire::ResponseBody::ListWindows(windows))) => {
                windows.first().is_some_and(|open| window < open.window.0)
            }
            _ => false,
        }
    }
}

/// Answers a frame with error code 9 (not leader), naming the leader's client address if known
/// (PROTOCOL.md 10.4). Not a protocol error: it counts only in its own metric.
fn send_not_leader(
    outbox: &Outbox,
    correlation_id: u64,
    leader: Option<std::net::SocketAddr>,
    budget: OwnedSemaphorePermit,
) {
    metrics::counter!("switch_not_leader_frames_total").increment(1);
    let mut frame = Vec::new();
    wire::encode_error_frame(
        correlation_id,
        wire::ErrorCode::NotLeader,
        &wire::not_leader_message(leader),
        &mut frame,
    );
    let _ = outbox.send(Outgoing {
        frame,
        budget: Some(budget),
        last: None,
    });
}

/// Encodes and sends a response frame; a client that went away is not an error. Read-only
/// results that would take the frame past `frame_len_max` are answered 91, reason 27 instead.
fn send_response_frame(
    outbox: &Outbox,
    correlation_id: u64,
    retry_after_ms: u16,
    mut responses: Vec<wire::Response>,
    budget: OwnedSemaphorePermit,
    frame_len_max: usize,
) {
    let replaced = wire::fit_responses(&mut responses, frame_len_max);
    if replaced > 0 {
        metrics::counter!("switch_responses_too_large_total").increment(replaced as u64);
    }
    let mut frame = Vec::with_capacity(64 * responses.len());
    if let Err(e) =
        wire::encode_response_frame_retry(correlation_id, retry_after_ms, &responses, &mut frame)
    {
        // A count past its field (over 65,535 positions in a report): every read-only result
        // goes, so that the frame's other answers still reach the client.
        tracing::error!("encoding a response frame: {e}");
        wire::fit_responses(&mut responses, 0);
        frame.clear();
        if let Err(e) = wire::encode_response_frame_retry(
            correlation_id,
            retry_after_ms,
            &responses,
            &mut frame,
        ) {
            tracing::error!("encoding a response frame without read-only results: {e}");
            return;
        }
    }
    let _ = outbox.send(Outgoing {
        frame,
        budget: Some(budget),
        last: None,
    });
}

/// Consecutive requests of a frame for the ledger stage, sent as one job. A frame is cut into
/// several only where an answer is needed before it can go on (a result whose size decides
/// the room of those after it, a ReloadRoutes, a ReportFile), so its operations still run in
/// order.
#[derive(Default)]
struct Segment {
    items: Vec<Prepared>,
    /// Per item: its request id and operation, which shape its wire response.
    asked: Vec<(wire::RequestId, wire::Op)>,
    /// Per item: its place in the frame, and the bytes reserved for its result beyond its
    /// smallest form.
    slots: Vec<(usize, usize)>,
    /// Per item: its deadline, if it has one.
    deadlines: Vec<Option<Instant>>,
}

impl Segment {
    fn push(
        &mut self,
        item: Prepared,
        op: wire::Op,
        slot: usize,
        reserved: usize,
        deadline: Option<Instant>,
    ) {
        self.asked.push((wire::RequestId(item.item.id.0), op));
        self.items.push(item);
        self.slots.push((slot, reserved));
        self.deadlines.push(deadline);
    }

    fn reserves(&self) -> bool {
        self.slots.iter().any(|&(_, reserved)| reserved > 0)
    }
}

/// Queues requests for the ledger stage, each with its deadline (or none: `deadlines` empty),
/// and waits for its answer. Counts them in the server's requests in flight meanwhile.
async fn ask_stage(
    shared: &Shared,
    items: Vec<Prepared>,
    deadlines: Vec<Option<Instant>>,
    received: Instant,
) -> Answered {
    let (answer, answered) = oneshot::channel();
    let count = items.len();
    shared.in_flight.fetch_add(count, Ordering::AcqRel);
    let queue = shared.queue.read().clone();
    let job = Job::new(items, deadlines, received, answer);
    let pushed = match queue {
        Some(queue) => queue.try_push(job),
        None => Err((job, Refusal::Busy)),
    };
    let answered = match pushed {
        Ok(()) => answered.await.unwrap_or(Err(Refusal::Stopped)),
        Err((_, refusal)) => Err(refusal),
    };
    shared.in_flight.fetch_sub(count, Ordering::AcqRel);
    answered
}

/// The stage's answer as wire responses, one for each of `asked` (request id and operation),
/// in order. What the stage answered counts in `switch_requests_total` and
/// `switch_request_seconds` (from `received`, the frame's arrival); a refusal counts in
/// neither.
fn wire_answers(
    answered: Answered,
    asked: &[(wire::RequestId, wire::Op)],
    received: Instant,
) -> Vec<wire::Response> {
    let responses = match answered {
        Ok(responses) => responses,
        Err(refusal) => {
            if refusal == Refusal::Busy {
                let mut full = Tally::default();
                for &(_, op) in asked {
                    full.add(op, 1);
                }
                for (op, n) in full.0 {
                    telemetry::shed(op, telemetry::ShedReason::QueueFull).increment(n);
                }
            }
            return asked
                .iter()
                .map(|&(id, op)| wire::Response::declined(id, op, refusal.code(), refusal.reason()))
                .collect();
        }
    };
    debug_assert_eq!(responses.len(), asked.len(), "a response for each request");
    let mut answered = Tally::default();
    let mut refused = Tally::default();
    let wire_responses = asked
        .iter()
        .zip(&responses)
        .map(|(&(_, op), r)| {
            answered.add((op, r.code), 1);
            // The stage's refusals of single items (PROTOCOL.md 8.1, 8.2).
            let why = match (r.code, r.reason) {
                (Code::SystemBusy, Reason::DEADLINE_PASSED) => {
                    Some(telemetry::ShedReason::Deadline)
                }
                (Code::SystemBusy, Reason::SHED) => Some(telemetry::ShedReason::Shed),
                _ => None,
            };
            if let Some(why) = why {
                refused.add((op, why), 1);
            }
            translate::response(op, r)
        })
        .collect();
    metrics::histogram!("switch_request_seconds").record(received.elapsed().as_secs_f64());
    for ((op, code), n) in answered.0 {
        telemetry::requests_answered(op, code).increment(n);
    }
    for ((op, why), n) in refused.0 {
        telemetry::shed(op, why).increment(n);
    }
    wire_responses
}

/// Counts by key, so that a frame looks each counter up once, not once per request: the
/// lookup (labels hashed in the registry) costs more than the count.
struct Tally<K>(Vec<(K, u64)>);

impl<K> Default for Tally<K> {
    fn default() -> Self {
        Tally(Vec::new())
    }
}

impl<K: Copy + PartialEq> Tally<K> {
    fn add(&mut self, key: K, n: u64) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, count)) => *count += n,
            None => self.0.push((key, n)),
        }
    }
}

/// A ListWindows result past its smallest form: up to `WINDOWS_LISTED_MAX` window records.
const LIST_WINDOWS_EXTRA_BYTES: usize = crate::core::WINDOWS_LISTED_MAX * wire::WindowRecord::LEN;

/// Request ids the switch executes nothing for (as the core answers them): 0, 2^128 - 1, and
/// the range it keeps for itself.
fn is_valid_id(id: wire::RequestId) -> bool {
    id.0 != 0 && id.0 != u128::MAX && !crate::clearing::is_system_id(id.0)
}
