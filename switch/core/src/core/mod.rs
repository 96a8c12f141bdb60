//! The switch's state machine: authorization lifecycle, participants, the number directory and
//! request idempotency, on top of the ledger. No I/O and no clock, like the ledger: the server
//! hands it batches of requests with `now` and logs what it returns.
//!
//! A batch runs in *waves*: consecutive requests that concern different transfers share one
//! `Ledger::apply`, so a busy switch takes the ledger's locks once per wave rather than once per
//! request. A request that concerns a transfer already in the wave (a capture of an
//! authorization in the same batch, say) closes the wave first, so every decision sees the
//! state left by everything before it, exactly as if requests ran one by one.
//!
//! What is logged is the `Command`, the request after routing: a reload of the routing table
//! cannot change what replaying the log does.
//!
//! This file holds the `Core`, the run of a batch (`execute`, `replay`: admission, `submit`,
//! `flush`) and the one `match` over commands (`plan`, and `finish` for their outcomes). Each
//! job has a file: `admin.rs`, `payments.rs`, `close.rs`, `queries.rs`; the vocabulary is in
//! `types.rs` and what is remembered of requests in `remembered.rs`. An operation is a
//! `Request` and a `Command` variant (`types.rs`), an arm of `resolve`, `plan` and, if the
//! ledger has work for it, of `Finish` and `finish` here, and its planner and finisher in its
//! job's file (with its log layout in `journal.rs` and its wire form in `translate.rs`).

// A decline travels as `Err(Response)`: built once per request, it is cheaper moved than boxed.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use ledger::clearing::{FeeSchedule, Settlement};
use ledger::{
    AccountId, Amount, Currency, Event, Ledger, Op, Outcome, ParticipantId, Timestamp, Transfer,
    TransferId, TransferKind,
};

use crate::clearing::{Clearing, is_system_id};
use crate::codes::{Code, Reason};
use crate::routing::{RouteTable, is_valid_number};

// Keys are client-chosen: a seeded hasher, and a fast one (this is the hot path).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

mod admin;
mod close;
mod early;
mod payments;
mod queries;
mod remembered;
pub mod snapshot;
mod types;

use admin::{valid_account, valid_participant};
use close::CloseRoom;
use early::EarlyReversals;
use payments::Payment;
pub use remembered::FORGET_LOOKS_MAX;
use remembered::{Kept, KeptBody, Order, REMEMBERED_PARTS, Remembered, TOUCH_AHEAD, TouchAhead};
pub use types::*;

/// The state machine.
pub struct Core {
    ledger: Arc<Ledger>,
    config: CoreConfig,
    routes: Arc<RouteTable>,
    participants: HashMap<ParticipantId, Participant>,
    limits: HashMap<(ParticipantId, Currency), Amount>,
    directory: HashMap<String, AccountId>,
    originals: Remembered<Original>,
    /// Reversals that came before their authorization: the id and who sent it.
    early_reversals: EarlyReversals,
    responses: Remembered<Kept>,
    clearing: Clearing,
    /// The settlement of a close in the wave being applied.
    closing: Option<(Settlement, Arc<FeeSchedule>)>,
    /// Batches executed, to take turns growing the remembered maps.
    batches: usize,
    /// Reservations against net debit caps held by requests in the wave: one for each
    /// authorization or sale planned, until the ledger's outcome applies it (an
    /// authorization's hold) or returns it; none between waves (checked in debug builds).
    reservations: usize,
    /// Scratch for `execute` and `replay`, empty between calls; kept so that its buffers
    /// are not grown again for every batch.
    wave: Wave,
}

/// The result of a batch: a response per item, and the commands to log (empty if nothing
/// changed). Responses may leave only once the log holds the commands.
pub struct Executed {
    pub responses: Vec<Response>,
    pub logged: Vec<Logged>,
}

/// What planning a command gives. A planner returns `Err` for a decline, which is answered
/// as `Answer` is.
enum Plan {
    /// Ledger events for the wave, one linked chain, and what to do with their outcome.
    Apply { events: Vec<Op>, finish: Finish },
    /// The answer now, with nothing for the ledger to do: an approval that changes only the
    /// core's own state (a participant, a limit, a window closed with nothing to settle).
    Answer(Response),
}

impl Plan {
    /// One ledger event.
    fn apply(op: Op, finish: Finish) -> Result<Plan, Response> {
        Ok(Plan::Apply {
            events: vec![op],
            finish,
        })
    }

    fn answer(response: Response) -> Result<Plan, Response> {
        Ok(Plan::Answer(response))
    }
}

/// What to do with a command's ledger outcome once its wave is applied.
#[derive(Clone, Debug)]
enum Finish {
    /// The number to bind to the account in the directory, if any.
    CreateAccount(Option<(String, AccountId)>),
    Fund,
    Authorize(Original),
    Capture {
        authorization: RequestId,
        amount: Amount,
    },
    Reverse(RequestId),
    Sale(Original),
    /// A refund of `amount` of the capture or sale `original`, which was `of` when planned.
    Refund {
        original: RequestId,
        of: Original,
        amount: Amount,
    },
    CloseWindow,
}

impl Finish {
    /// A new authorization or sale, which holds a reservation against its issuer's net debit
    /// cap until its outcome is known.
    fn reserved(&self) -> Option<&Original> {
        match self {
            Finish::Authorize(o) | Finish::Sale(o) => Some(o),
            _ => None,
        }
    }
}

/// A command planned into the wave.
struct Planned {
    slot: usize,
    id: RequestId,
    fingerprint: u64,
    events: std::ops::Range<usize>,
    finish: Finish,
}

/// Commands planned since the last `Ledger::apply`, and their events.
#[derive(Default)]
struct Wave {
    events: Vec<Event>,
    planned: Vec<Planned>,
    /// The requests planned and the earlier ones they act on.
    keys: HashSet<u128>,
    /// Repeats of a request planned in this wave, answered once it is applied.
    repeats: Vec<Repeat>,
}

/// A repeat waiting for the answer to the request it repeats.
struct Repeat {
    slot: usize,
    id: RequestId,
    fingerprint: u64,
    /// The slot of the request it repeats.
    of: usize,
}

impl Wave {
    fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.planned.is_empty()
            && self.keys.is_empty()
            && self.repeats.is_empty()
    }

    /// Holds `c` for the answer of the request with its id planned in this wave, if there is
    /// one. Such a repeat is not logged, so a replay would not close the wave there either,
    /// and must build the same state (forgetting order too): the wave stays open.
    fn hold_repeat(&mut self, slot: usize, c: &Logged) -> bool {
        if !self.keys.contains(&c.id.0) {
            return false;
        }
        let Some(planned) = self.planned.iter().find(|p| p.id == c.id) else {
            return false;
        };
        self.repeats.push(Repeat {
            slot,
            id: c.id,
            fingerprint: c.fingerprint,
            of: planned.slot,
        });
        true
    }

    /// Whether the wave must be applied before `c` is planned: `c` acts on a transfer in it,
    /// is administration (which runs alone), or could take it past the ledger's batch limit.
    fn must_apply_before(&self, c: &Logged, batch_len_max: usize) -> bool {
        c.command
            .original()
            .is_some_and(|o| self.keys.contains(&o.0))
            || self.keys.contains(&c.id.0)
            || c.command.is_admin()
            || self.events.len() + 3 > batch_len_max
    }

    fn push(&mut self, slot: usize, c: &Logged, events: Vec<Op>, finish: Finish) {
        let start = self.events.len();
        let n = events.len();
        debug_assert!(n > 0, "a planned command has events");
        for (i, op) in events.into_iter().enumerate() {
            self.events.push(Event {
                op,
                linked: i + 1 < n,
            });
        }
        self.keys.insert(c.id.0);
        if let Some(original) = c.command.original() {
            self.keys.insert(original.0);
        }
        self.planned.push(Planned {
            slot,
            id: c.id,
            fingerprint: c.fingerprint,
            events: start..self.events.len(),
            finish,
        });
    }
}

/// An answer per request of a batch, by its place in it.
struct Answers(Vec<Option<Response>>);

impl Answers {
    fn set(&mut self, slot: usize, response: Response) {
        let answer = &mut self.0[slot];
        debug_assert!(
            answer.is_none(),
            "request {slot} of the batch answered twice"
        );
        *answer = Some(response);
    }

    /// Every answer, in the order of the requests.
    fn into_responses(self) -> Vec<Response> {
        self.0
            .into_iter()
            .map(|r| r.expect("every item is answered"))
            .collect()
    }
}

/// One batch on its way through the core: its time, its answers, and the wave being planned.
struct Batch {
    now: Timestamp,
    answers: Answers,
    wave: Wave,
}

/// The ledger transfer a request makes, under the request's own id.
fn transfer(
    id: RequestId,
    debit: AccountId,
    credit: AccountId,
    amount: Amount,
    currency: Currency,
    kind: TransferKind,
) -> Op {
    Op::Transfer(Transfer {
        id: TransferId(id.0),
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        currency,
        kind,
        code: 0,
    })
}

/// The member of a linked chain's outcomes that decided it: the first failure, or the last
/// success.
fn deciding(outcomes: &[Outcome]) -> Outcome {
    outcomes
        .iter()
        .copied()
        .find(|o| !o.is_success() && *o != Outcome::LinkedEventFailed)
        .or_else(|| outcomes.last().copied())
        .expect("a planned command has events")
}

impl Core {
    pub fn new(ledger: Arc<Ledger>, config: CoreConfig, routes: Arc<RouteTable>) -> Self {
        let max = config.requests_remembered_max.max(1);
        Core {
            ledger,
            routes,
            participants: HashMap::default(),
            limits: HashMap::default(),
            directory: HashMap::default(),
            originals: Remembered::new(max),
            early_reversals: EarlyReversals::new(max),
            responses: Remembered::new(max),
            clearing: Clearing::new(config.windows_kept),
            closing: None,
            batches: 0,
            reservations: 0,
            wave: Wave::default(),
            config,
        }
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Swaps in a new routing table; requests already executed are unaffected.
    pub fn set_routes(&mut self, routes: Arc<RouteTable>) {
        self.routes = routes;
    }

    pub fn net_debit_cap(&self, participant: ParticipantId, currency: Currency) -> Option<Amount> {
        self.limits.get(&(participant, currency)).copied()
    }

    pub fn clearing(&self) -> &Clearing {
        &self.clearing
    }

    /// Closed windows whose reports are to be written (each is handed out once).
    pub fn take_reports(&mut self) -> Vec<Arc<crate::clearing::WindowDetails>> {
        std::mem::take(&mut self.clearing.reports)
    }

    /// The switch's own close of the open window, for a schedule: an item to execute.
    pub fn scheduled_close(&self) -> Item {
        let window = self.clearing.open.id;
        Item {
            id: RequestId(crate::clearing::scheduled_close_id(window)),
            who: SYSTEM,
            request: Request::CloseWindow { window },
        }
    }

    /// Executes a batch of live requests at `now`.
    pub fn execute(&mut self, items: Vec<Item>, now: Timestamp) -> Executed {
        self.execute_prepared(items.into_iter().map(Prepared::new).collect(), now)
    }

    /// `execute` for items whose fingerprints are already computed.
    pub fn execute_prepared(&mut self, items: Vec<Prepared>, now: Timestamp) -> Executed {
        let ids: Vec<u128> = items.iter().map(|p| p.item.id.0).collect();
        let mut ahead = TouchAhead::default();
        let mut batch = self.begin(now, items.len());
        let mut room = CloseRoom::new(self);
        let mut logged = Vec::new();
        for (slot, prepared) in items.into_iter().enumerate() {
            ahead.to(slot, &ids, |&id| id, |id| self.touch_remembered(id));
            let Some(command) = self.admit(&mut batch, &mut room, slot, prepared) else {
                continue;
            };
            if self.submit(&mut batch, slot, &command) {
                logged.push(command);
            }
        }
        let responses = self.end(batch);
        self.grow_ahead();
        Executed { responses, logged }
    }

    /// Re-executes logged commands (recovery). Gives the same state as when they were logged.
    pub fn replay(&mut self, commands: &[Logged], now: Timestamp) {
        // Read ahead as `execute_prepared` does: a follower replays every batch the leader
        // executes, and without it waits on the remembered maps' memory once per command.
        let mut ahead = TouchAhead::default();
        let mut batch = self.begin(now, commands.len());
        for (slot, c) in commands.iter().enumerate() {
            ahead.to(slot, commands, |c| c.id.0, |id| self.touch_remembered(id));
            // Never a repeat: the log holds only what was not remembered when it ran.
            if let Some(response) = self.remembered(c.id, c.fingerprint) {
                batch.answers.set(slot, response);
                continue;
            }
            self.submit(&mut batch, slot, c);
        }
        self.end(batch);
    }

    /// Expires due holds through the ledger (with `at_most`, the first that many in (expiry,
    /// id) order); true if anything expired (and must be logged).
    pub fn expire(&mut self, now: Timestamp, at_most: Option<u32>) -> bool {
        self.expire_holds(now, at_most) > 0
    }

    fn begin(&mut self, now: Timestamp, len: usize) -> Batch {
        debug_assert!(self.wave.is_empty(), "no wave is open between batches");
        Batch {
            now,
            answers: Answers(vec![None; len]),
            wave: std::mem::take(&mut self.wave),
        }
    }

    /// Applies what is left of the batch's last wave and returns its answers, one a request.
    fn end(&mut self, mut batch: Batch) -> Vec<Response> {
        self.flush(&mut batch);
        debug_assert!(batch.wave.is_empty(), "a batch leaves its wave empty");
        debug_assert_eq!(self.reservations, 0, "a batch leaves no reservation");
        self.wave = batch.wave;
        batch.answers.into_responses()
    }

    /// Takes a live request as far as the command it is, or answers it: an invalid id, a
    /// query, a repeat of a remembered request, a request routing refuses, or one the batch
    /// has no room for.
    fn admit(
        &mut self,
        batch: &mut Batch,
        room: &mut CloseRoom,
        slot: usize,
        prepared: Prepared,
    ) -> Option<Logged> {
        let Prepared {
            item:
                Item {
                    id,
                    who,
                    mut request,
                },
            fingerprint,
        } = prepared;
        let answer = if id.0 == 0 || id.0 == u128::MAX || (is_system_id(id.0) && who != SYSTEM) {
            Response::new(id, Code::InvalidTransaction, Reason::INVALID_ID)
        } else if let Some(response) = self.query(batch, id, who, &mut request) {
            response
        } else if let Some(response) = self.remembered(id, fingerprint) {
            // A repeat hears its original answer, whatever the routes or the limits say now:
            // an approved sale is not answered 92 after a route goes away.
            response
        } else {
            match self.resolve(id, request, batch.now) {
                Err(response) => response,
                Ok(command) => {
                    if self.take_room(room, &command) {
                        return Some(Logged {
                            id,
                            who,
                            fingerprint,
                            command,
                        });
                    }
                    Response::new(id, Code::SystemBusy, Reason::OVERLOADED)
                }
            }
        };
        batch.answers.set(slot, answer);
        None
    }

    /// Takes the room `command` needs in the batch, if there is room: a close within what its
    /// log record and the report writer can take, a new participant within
    /// `participants_max`. Checked here and not in `plan`, so that a log written under a
    /// larger bound replays whole.
    fn take_room(&self, room: &mut CloseRoom, command: &Command) -> bool {
        match command {
            Command::CloseWindow { .. } => room.take(command),
            Command::CreateParticipant(p) => self.has_room_for_participant(p.participant),
            _ => true,
        }
    }

    /// Routing and field checks that need no state change: number to account, expiry.
    fn resolve(
        &self,
        id: RequestId,
        request: Request,
        now: Timestamp,
    ) -> Result<Command, Response> {
        Ok(match request {
            Request::Authorize {
                number,
                merchant,
                amount,
                currency,
                expiry_seconds,
            } => Command::Authorize {
                card: self.route(id, &number)?,
                merchant,
                amount,
                currency,
                expires_at: self.expires_at(id, expiry_seconds, now)?,
            },
            Request::Sale {
                number,
                merchant,
                amount,
                currency,
            } => Command::Sale {
                card: self.route(id, &number)?,
                merchant,
                amount,
                currency,
            },
            Request::CreateParticipant(p) => Command::CreateParticipant(valid_participant(id, p)?),
            Request::CreateAccount(a) => Command::CreateAccount(valid_account(id, a)?),
            Request::Fund(f) => Command::Fund(f),
            Request::SetLimits(l) => Command::SetLimits(l),
            Request::Capture(c) => Command::Capture(c),
            Request::Reverse(r) => Command::Reverse(r),
            Request::Refund(r) => Command::Refund(r),
            Request::CloseWindow { window } => self.close_command(window),
            Request::BalanceInquiry { .. }
            | Request::TransferStatus { .. }
            | Request::ListWindows
            | Request::WindowReport { .. }
            | Request::Echo { .. } => {
                unreachable!("queries are answered before resolution")
            }
        })
    }

    /// A card or wallet number to its account: 92 without a route, 14 without an account.
    fn route(&self, id: RequestId, number: &str) -> Result<AccountId, Response> {
        if !is_valid_number(number) {
            return Err(Response::new(
                id,
                Code::InvalidCardOrAccount,
                Reason::UNKNOWN_NUMBER,
            ));
        }
        let Some(route) = self.routes.route(number) else {
            return Err(Response::new(id, Code::CannotRoute, Reason::NO_ROUTE));
        };
        let account = route
            .pooled_account
            .or_else(|| self.directory.get(number).copied())
            .ok_or_else(|| Response::new(id, Code::InvalidCardOrAccount, Reason::UNKNOWN_NUMBER))?;
        match self.ledger.account(account) {
            Some(a) if a.owner == route.issuer => {
                if self.has_role(route.issuer, ROLE_ISSUER) {
                    Ok(account)
                } else {
                    Err(Response::new(id, Code::CannotRoute, Reason::ROLE_MISSING))
                }
            }
            Some(_) => Err(Response::new(id, Code::CannotRoute, Reason::NO_ROUTE)),
            None => Err(Response::new(
                id,
                Code::InvalidCardOrAccount,
                Reason::UNKNOWN_NUMBER,
            )),
        }
    }

    /// Plans one command into the wave, or answers it at once. Returns whether it is new (and
    /// so must be logged). The caller has answered repeats of remembered request ids.
    fn submit(&mut self, batch: &mut Batch, slot: usize, c: &Logged) -> bool {
        // The caller has answered a repeat of a remembered request (`remembered`) without
        // applying the wave; a repeat of one planned in it waits for its answer the same way.
        if batch.wave.hold_repeat(slot, c) {
            return false;
        }
        if batch
            .wave
            .must_apply_before(c, self.ledger.config().batch_len_max)
        {
            self.flush(batch);
        }
        // The first window opens with the first command logged (so replay agrees).
        self.clearing.start(batch.now);
        let reserved = self.reservations;
        match self.plan(c, batch.now) {
            Plan::Answer(response) => {
                debug_assert_eq!(self.reservations, reserved, "an answer reserves nothing");
                self.remember(c.id, c.fingerprint, &response);
                batch.answers.set(slot, response);
            }
            Plan::Apply { events, finish } => {
                batch.wave.push(slot, c, events, finish);
                if c.command.is_admin() {
                    self.flush(batch);
                }
            }
        }
        true
    }

    /// Decides a command against the state: ledger events to apply, or an answer now.
    fn plan(&mut self, c: &Logged, now: Timestamp) -> Plan {
        let (id, who) = (c.id, c.who);
        if c.command.is_admin() && !who.admin {
            return Plan::Answer(Response::new(
                id,
                Code::NotPermitted,
                Reason::ADMIN_REQUIRED,
            ));
        }
        let planned = match &c.command {
            Command::CreateParticipant(p) => self.plan_create_participant(id, p),
            Command::SetLimits(l) => self.plan_set_limits(id, l),
            Command::CreateAccount(a) => self.plan_create_account(id, a),
            Command::Fund(f) => self.plan_fund(id, f),
            Command::Authorize {
                card,
                merchant,
                amount,
                currency,
                expires_at,
            } => {
                let payment = Payment::new(*card, *merchant, *amount, *currency);
                self.plan_authorize(id, who, payment, *expires_at)
            }
            Command::Sale {
                card,
                merchant,
                amount,
                currency,
            } => self.plan_sale(id, who, Payment::new(*card, *merchant, *amount, *currency)),
            Command::Capture(capture) => self.plan_capture(id, who, capture),
            Command::Reverse(reverse) => self.plan_reverse(id, who, reverse),
            Command::Refund(refund) => self.plan_refund(id, who, refund),
            Command::CloseWindow { window, fees } => self.plan_close(id, *window, fees, now),
        };
        planned.unwrap_or_else(Plan::Answer)
    }

    /// Applies the wave's events in one ledger batch and answers its requests.
    fn flush(&mut self, batch: &mut Batch) {
        let Batch { now, answers, wave } = batch;
        if wave.planned.is_empty() {
            return;
        }
        debug_assert_eq!(
            self.reservations,
            wave.planned
                .iter()
                .filter(|p| p.finish.reserved().is_some())
                .count(),
            "one reservation for each authorization or sale in the wave"
        );
        let outcomes = match self.ledger.apply(&wave.events, *now) {
            Ok(outcomes) => outcomes,
            // Waves are cut below the ledger's batch limit (see `submit`).
            Err(e) => unreachable!("wave over the ledger's batch limit: {e}"),
        };
        // A wave of one read-ahead's worth is still in cache from the request loop's; a larger
        // one is read again as it is remembered (none read: nothing to read ahead).
        let ids: Vec<u128> = if wave.planned.len() > TOUCH_AHEAD {
            wave.planned.iter().map(|p| p.id.0).collect()
        } else {
            Vec::new()
        };
        let mut ahead = TouchAhead::default();
        for (k, planned) in wave.planned.drain(..).enumerate() {
            ahead.to(k, &ids, |&id| id, |id| self.touch_remembered(id));
            let outcome = deciding(&outcomes[planned.events.clone()]);
            let Planned {
                slot,
                id,
                fingerprint,
                finish,
                ..
            } = planned;
            // An approved authorization or sale is answered from its original (see
            // `Original::fingerprint`).
            let reserved = finish.reserved().is_some();
            let response = self.finish(id, fingerprint, finish, outcome, *now);
            if !(fingerprint != 0 && response.code == Code::Approved && reserved) {
                self.remember(id, fingerprint, &response);
            }
            answers.set(slot, response);
        }
        self.answer_repeats(wave, answers);
        wave.events.clear();
        wave.keys.clear();
        debug_assert_eq!(
            self.reservations, 0,
            "every reservation of the wave was applied or returned, once"
        );
    }

    /// Answers the repeats of requests of the wave just applied, as their originals were.
    fn answer_repeats(&self, wave: &mut Wave, answers: &mut Answers) {
        for repeat in wave.repeats.drain(..) {
            let response = match self.remembered(repeat.id, repeat.fingerprint) {
                Some(response) => response,
                // Not remembered (busy): nothing was done, and the repeat hears the same.
                None => answers.0[repeat.of]
                    .clone()
                    .expect("the repeated request was answered"),
            };
            answers.set(repeat.slot, response);
        }
    }

    /// Takes a planned command's ledger outcome to its answer, changing the core's state to
    /// match.
    fn finish(
        &mut self,
        id: RequestId,
        fingerprint: u64,
        finish: Finish,
        outcome: Outcome,
        now: Timestamp,
    ) -> Response {
        if !outcome.is_success() {
            return self.finish_declined(id, &finish, outcome);
        }
        if outcome == Outcome::Exists
            && let Finish::Authorize(_)
            | Finish::Sale(_)
            | Finish::Capture { .. }
            | Finish::Reverse(_)
            | Finish::Refund { .. } = finish
        {
            return self.done_before(id, &finish);
        }
        match finish {
            Finish::CreateAccount(number) => self.finish_create_account(id, number, outcome),
            Finish::Fund => self.finish_fund(id),
            Finish::Authorize(original) => self.finish_authorize(id, fingerprint, original),
            Finish::Sale(original) => self.finish_sale(id, fingerprint, original),
            Finish::Capture {
                authorization,
                amount,
            } => self.finish_capture(id, authorization, amount),
            Finish::Reverse(authorization) => self.finish_reverse(id, authorization),
            Finish::Refund {
                original,
                of,
                amount,
            } => self.finish_refund(id, original, &of, amount),
            Finish::CloseWindow => self.finish_close(id, now),
        }
    }

    /// A command the ledger declined: what it reserved or prepared goes back.
    fn finish_declined(&mut self, id: RequestId, finish: &Finish, outcome: Outcome) -> Response {
        // A hold due but not yet expired by the clock's tick is gone all the same, as the
        // reversal asks: it hears what it would hear after the tick (see `plan_reverse`).
        if outcome == Outcome::PendingTransferExpired && matches!(finish, Finish::Reverse(_)) {
            return Response::approved(id, Body::None);
        }
        match finish {
            // The reservation against the net debit cap goes with the request.
            Finish::Authorize(o) | Finish::Sale(o) => self.return_reservation(o),
            Finish::CloseWindow => {
                self.closing = None;
                tracing::error!(?outcome, "clearing: the settlement batch failed");
            }
            _ => {}
        }
        Response::from_outcome(id, outcome)
    }
}

// Snapshots of the switch: the layout and its encoding are in `core/snapshot.rs`. Core state
// added above must be added there too (`snapshot::capture` and `snapshot::restore` name every
// field of `Core`, so the compiler points at both).

impl Core {
    /// The core's own state (the ledger's is `Ledger::capture`), encoded for a snapshot. Call
    /// it between batches: the state must be exactly what the log holds.
    pub fn capture(&self) -> snapshot::CoreImage {
        snapshot::capture(self)
    }

    /// Rebuilds a core, its ledger included, from a snapshot payload (`snapshot::Image`);
    /// returns it with the last log sequence the snapshot covers, which must equal
    /// `file_sequence`.
    pub fn restore(
        bytes: &[u8],
        file_sequence: u64,
        config: snapshot::RestoreConfig,
    ) -> Result<(Core, u64), snapshot::SnapshotError> {
        snapshot::restore(bytes, file_sequence, config)
    }
}
