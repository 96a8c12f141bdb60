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

// A decline travels as `Err(Response)`: built once per request, it is cheaper moved than boxed.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use ledger::clearing::{FeeSchedule, Kind, Settlement};
use ledger::{
    AccountFlags, AccountId, Amount, Currency, Event, Ledger, NewAccount, Op, Outcome,
    ParticipantId, Timestamp, Transfer, TransferId, TransferKind,
};

use crate::clearing::{Clearing, is_system_id};
use crate::codes::{Code, Reason};
use crate::identity::Identity;
use crate::journal::NAME_LEN_MAX;
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

use early::EarlyReversals;
pub use remembered::FORGET_LOOKS_MAX;
use remembered::{Kept, KeptBody, Order, REMEMBERED_PARTS, Remembered, TOUCH_AHEAD, TouchAhead};
pub use types::*;

/// What to do with a command's ledger outcomes once its wave is applied.
#[derive(Clone, Copy, Debug)]
enum Finish {
    CreateAccount,
    Fund,
    Authorize(Original),
    Capture(RequestId, Amount),
    Reverse(RequestId),
    Sale(Original),
    Refund(RequestId, Original, Amount, Currency),
    CloseWindow,
}

struct Planned {
    slot: usize,
    id: RequestId,
    fingerprint: u64,
    events: std::ops::Range<usize>,
    finish: Finish,
    number: Option<(String, AccountId)>,
}

#[derive(Default)]
struct Wave {
    events: Vec<Event>,
    planned: Vec<Planned>,
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
        let mut out: Vec<Option<Response>> = vec![None; items.len()];
        let mut logged = Vec::new();
        let mut wave = std::mem::take(&mut self.wave);
        let (mut closes_logged, mut closes) = (0, 0);
        let reports_room = self
            .clearing
            .reports_max
            .saturating_sub(self.clearing.reports.len());
        for (slot, prepared) in items.into_iter().enumerate() {
            ahead.to(slot, &ids, |id| self.touch_remembered(id));
            let Prepared {
                item: Item { id, who, request },
                fingerprint,
            } = prepared;
            if id.0 == 0 || id.0 == u128::MAX || (is_system_id(id.0) && who != SYSTEM) {
                out[slot] = Some(Response::new(
                    id,
                    Code::InvalidTransaction,
                    Reason::INVALID_ID,
                ));
                continue;
            }
            let command = match request {
                Request::BalanceInquiry { target } => {
                    self.flush(&mut wave, now, &mut out);
                    out[slot] = Some(self.balance(id, who, &target));
                    continue;
                }
                Request::TransferStatus { of } => {
                    self.flush(&mut wave, now, &mut out);
                    out[slot] = Some(self.status(id, who, of));
                    continue;
                }
                Request::Echo { payload } => {
                    out[slot] = Some(Response::approved(id, Body::Echo(payload)));
                    continue;
                }
                Request::ListWindows => {
                    self.flush(&mut wave, now, &mut out);
                    out[slot] = Some(self.list_windows(id, who));
                    continue;
                }
                Request::WindowReport { window } => {
                    self.flush(&mut wave, now, &mut out);
                    out[slot] = Some(self.window_report(id, who, window));
                    continue;
                }
                request => {
                    // A repeat hears its original answer, whatever the routes or the limits
                    // say now: an approved sale is not answered 92 after a route goes away.
                    if let Some(response) = self.remembered(id, fingerprint) {
                        out[slot] = Some(response);
                        continue;
                    }
                    match self.resolve(id, request, now) {
                        Ok(command) => command,
                        Err(response) => {
                            out[slot] = Some(response);
                            continue;
                        }
                    }
                }
            };
            // The batch's log record stays within the log's record limit, and its closes'
            // reports within what the stage hands to the report writer after the batch.
            if let Command::CloseWindow { .. } = command {
                let len = crate::journal::logged_len(&command);
                if closes_logged + len > self.config.closes_logged_bytes_max
                    || closes >= reports_room
                {
                    out[slot] = Some(Response::new(id, Code::SystemBusy, Reason::OVERLOADED));
                    continue;
                }
                closes_logged += len;
                closes += 1;
            }
            // Checked here and not in `plan`, so that a log written under a larger bound
            // replays whole.
            if let Command::CreateParticipant(CreateParticipant { participant, .. }) = &command
                && self.participants.len() >= self.config.participants_max
                && !self.participants.contains_key(participant)
            {
                out[slot] = Some(Response::new(id, Code::SystemBusy, Reason::OVERLOADED));
                continue;
            }
            if self.submit(
                &mut wave,
                slot,
                id,
                who,
                fingerprint,
                &command,
                now,
                &mut out,
            ) {
                logged.push(Logged {
                    id,
                    who,
                    fingerprint,
                    command,
                });
            }
        }
        self.flush(&mut wave, now, &mut out);
        self.wave = wave;
        self.grow_ahead();
        let responses = out
            .into_iter()
            .map(|r| r.expect("every item is answered"))
            .collect();
        Executed { responses, logged }
    }

    /// Re-executes logged commands (recovery). Gives the same state as when they were logged.
    pub fn replay(&mut self, commands: &[Logged], now: Timestamp) {
        let mut out: Vec<Option<Response>> = vec![None; commands.len()];
        let mut wave = std::mem::take(&mut self.wave);
        for (slot, c) in commands.iter().enumerate() {
            // Never a repeat: the log holds only what was not remembered when it ran.
            if let Some(response) = self.remembered(c.id, c.fingerprint) {
                out[slot] = Some(response);
                continue;
            }
            self.submit(
                &mut wave,
                slot,
                c.id,
                c.who,
                c.fingerprint,
                &c.command,
                now,
                &mut out,
            );
        }
        self.flush(&mut wave, now, &mut out);
        self.wave = wave;
    }

    /// Expires due holds through the ledger; true if anything expired (and must be logged).
    pub fn expire(&mut self, now: Timestamp) -> bool {
        self.expire_holds(now) > 0
    }

    /// Routing and field checks that need no state change: number to account, expiry.
    fn resolve(
        &self,
        id: RequestId,
        request: Request,
        now: Timestamp,
    ) -> Result<Command, Response> {
        let reject = |code, reason| Err(Response::new(id, code, reason));
        Ok(match request {
            Request::Authorize {
                number,
                merchant,
                amount,
                currency,
                expiry_seconds,
            } => {
                let card = self.route(id, &number)?;
                let seconds = match expiry_seconds {
                    0 => self.config.default_expiry_seconds,
                    s if s > self.config.expiry_seconds_max => {
                        return reject(Code::InvalidTransaction, Reason::NONE);
                    }
                    s => s,
                };
                let expires_at =
                    Timestamp(now.0.saturating_add(u64::from(seconds) * 1_000_000_000));
                Command::Authorize {
                    card,
                    merchant,
                    amount,
                    currency,
                    expires_at,
                }
            }
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
            // Only the roles version 1 knows (issuer, acquirer), and a name.
            Request::CreateParticipant(CreateParticipant { roles, .. })
                if roles & !ROLES_KNOWN != 0 =>
            {
                return reject(Code::InvalidTransaction, Reason::RESERVED_BITS);
            }
            Request::CreateParticipant(CreateParticipant { name, .. })
                if name.is_empty() || name.len() > NAME_LEN_MAX =>
            {
                return reject(Code::InvalidTransaction, Reason::NONE);
            }
            Request::CreateAccount(CreateAccount {
                number: Some(number),
                ..
            }) if !is_valid_number(&number) => {
                return reject(Code::InvalidCardOrAccount, Reason::UNKNOWN_NUMBER);
            }
            Request::CreateParticipant(p) => Command::CreateParticipant(p),
            Request::CreateAccount(a) => Command::CreateAccount(a),
            Request::Fund(f) => Command::Fund(f),
            Request::SetLimits(l) => Command::SetLimits(l),
            Request::Capture(c) => Command::Capture(c),
            Request::Reverse(r) => Command::Reverse(r),
            Request::CloseWindow { window } => Command::CloseWindow {
                window: if window == 0 {
                    self.clearing.open.id
                } else {
                    window
                },
                fees: self.config.fees.clone(),
            },
            Request::Refund(r) => Command::Refund(r),
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

    /// Plans one command into the wave (or answers it at once). Returns whether it is new
    /// (and so must be logged). The caller has answered repeats of remembered request ids.
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &mut self,
        wave: &mut Wave,
        slot: usize,
        id: RequestId,
        who: Identity,
        fingerprint: u64,
        command: &Command,
        now: Timestamp,
        out: &mut [Option<Response>],
    ) -> bool {
        // The caller has answered a repeat of a remembered request (`remembered`) without
        // closing the wave: it is not logged, so a replay would not close it there either, and
        // must build the same state (forgetting order too).
        if wave.keys.contains(&id.0)
            && let Some(planned) = wave.planned.iter().find(|p| p.id == id)
        {
            wave.repeats.push(Repeat {
                slot,
                id,
                fingerprint,
                of: planned.slot,
            });
            return false;
        }
        let conflict = command.original().is_some_and(|o| wave.keys.contains(&o.0))
            || wave.keys.contains(&id.0)
            || command.is_admin()
            || wave.events.len() + 3 > self.ledger.config().batch_len_max;
        if conflict {
            self.flush(wave, now, out);
        }
        // The first window opens with the first command logged (so replay agrees).
        self.clearing.start(now);
        match self.plan(id, who, command, now) {
            Err(response) => {
                self.remember(id, fingerprint, &response);
                out[slot] = Some(response);
            }
            Ok((events, finish, number)) => {
                let start = wave.events.len();
                let n = events.len();
                for (i, op) in events.into_iter().enumerate() {
                    wave.events.push(Event {
                        op,
                        linked: i + 1 < n,
                    });
                }
                wave.keys.insert(id.0);
                if let Some(original) = command.original() {
                    wave.keys.insert(original.0);
                }
                wave.planned.push(Planned {
                    slot,
                    id,
                    fingerprint,
                    events: start..wave.events.len(),
                    finish,
                    number,
                });
                if command.is_admin() {
                    self.flush(wave, now, out);
                }
            }
        }
        true
    }

    /// Decides a command against the state: ledger events to apply, or an answer now.
    #[allow(clippy::type_complexity)]
    fn plan(
        &mut self,
        id: RequestId,
        who: Identity,
        command: &Command,
        now: Timestamp,
    ) -> Result<(Vec<Op>, Finish, Option<(String, AccountId)>), Response> {
        let reject = |code, reason| Err(Response::new(id, code, reason));
        if command.is_admin() && !who.admin {
            return reject(Code::NotPermitted, Reason::ADMIN_REQUIRED);
        }
        let transfer = |debit, credit, amount, currency, kind| {
            Op::Transfer(Transfer {
                id: TransferId(id.0),
                debit_account_id: debit,
                credit_account_id: credit,
                amount,
                currency,
                kind,
                code: 0,
            })
        };
        match command {
            Command::CreateParticipant(CreateParticipant {
                participant,
                name,
                roles,
            }) => {
                if !participant.is_valid() {
                    return reject(Code::InvalidTransaction, Reason::ACCOUNT_NOT_FOUND);
                }
                let new = Participant {
                    name: name.clone(),
                    roles: *roles,
                };
                match self.participants.get(participant) {
                    Some(existing) if *existing == new => {}
                    Some(_) => return reject(Code::DuplicateWithOtherFields, Reason::ID_REUSED),
                    None => {
                        self.participants.insert(*participant, new);
                    }
                }
                Err(Response::approved(id, Body::None))
            }
            Command::SetLimits(SetLimits {
                participant,
                currency,
                net_debit_cap,
            }) => {
                if !self.participants.contains_key(participant) {
                    return reject(Code::InvalidTransaction, Reason::ACCOUNT_NOT_FOUND);
                }
                self.limits
                    .insert((*participant, *currency), *net_debit_cap);
                Err(Response::approved(id, Body::None))
            }
            Command::CreateAccount(CreateAccount {
                account,
                owner,
                currency,
                flags,
                number,
            }) => {
                if !self.participants.contains_key(owner) {
                    return reject(Code::InvalidTransaction, Reason::ACCOUNT_NOT_FOUND);
                }
                if is_system_account(*account) {
                    return reject(Code::InvalidCardOrAccount, Reason::NONE);
                }
                let number = match number {
                    None => None,
                    Some(n) if !is_valid_number(n) => {
                        return reject(Code::InvalidCardOrAccount, Reason::UNKNOWN_NUMBER);
                    }
                    Some(n) => match self.directory.get(n) {
                        Some(existing) if existing != account => {
                            return reject(Code::InvalidTransaction, Reason::ALREADY_EXISTS);
                        }
                        _ => Some((n.clone(), *account)),
                    },
                };
                let op = Op::CreateAccount(NewAccount {
                    id: *account,
                    currency: *currency,
                    owner: *owner,
                    flags: *flags,
                });
                Ok((vec![op], Finish::CreateAccount, number))
            }
            Command::Fund(Fund {
                account,
                amount,
                currency,
            }) => {
                let Some(target) = self.ledger.account(*account) else {
                    return reject(Code::InvalidCardOrAccount, Reason::NONE);
                };
                let funding = funding_account(target.owner, *currency);
                let mut ops = Vec::with_capacity(2);
                if self.ledger.account(funding).is_none() {
                    ops.push(Op::CreateAccount(NewAccount {
                        id: funding,
                        currency: *currency,
                        owner: target.owner,
                        flags: AccountFlags::empty(),
                    }));
                }
                ops.push(transfer(
                    funding,
                    *account,
                    *amount,
                    *currency,
                    TransferKind::Single,
                ));
                Ok((ops, Finish::Fund, None))
            }
            Command::Authorize {
                card,
                merchant,
                amount,
                currency,
                expires_at,
            } => {
                let original = self.acquire(id, who, *card, *merchant, *amount, *currency)?;
                // A reversal that came first voids the acquirer's own late authorization; another
                // participant's reversal of the same id does not.
                if self.early_reversals.voids(id.0, who.participant) {
                    return reject(Code::InvalidTransaction, Reason::AUTHORIZATION_REVERSED);
                }
                self.reserve(id, &original)?;
                let op = transfer(
                    *card,
                    *merchant,
                    *amount,
                    *currency,
                    TransferKind::Pending {
                        expires_at: *expires_at,
                    },
                );
                Ok((
                    vec![op],
                    Finish::Authorize(Original {
                        stage: Stage::Held,
                        ..original
                    }),
                    None,
                ))
            }
            Command::Sale {
                card,
                merchant,
                amount,
                currency,
            } => {
                let original = self.acquire(id, who, *card, *merchant, *amount, *currency)?;
                self.reserve(id, &original)?;
                let op = transfer(*card, *merchant, *amount, *currency, TransferKind::Single);
                Ok((
                    vec![op],
                    Finish::Sale(Original {
                        stage: Stage::Sold,
                        captured: *amount,
                        ..original
                    }),
                    None,
                ))
            }
            Command::Capture(Capture {
                authorization,
                amount,
            }) => {
                let original = self.original_of(id, who, *authorization)?;
                match original.stage {
                    Stage::Held => {}
                    Stage::Captured => {
                        return reject(Code::InvalidTransaction, Reason::AUTHORIZATION_CAPTURED);
                    }
                    Stage::Sold => return reject(Code::InvalidTransaction, Reason::NONE),
                    Stage::Reversed => {
                        return reject(Code::InvalidTransaction, Reason::AUTHORIZATION_REVERSED);
                    }
                    Stage::Expired => {
                        return reject(Code::InvalidTransaction, Reason::AUTHORIZATION_EXPIRED);
                    }
                }
                let amount = *amount;
                let op = transfer(
                    AccountId(0),
                    AccountId(0),
                    amount,
                    original.currency,
                    TransferKind::Post {
                        pending_id: TransferId(authorization.0),
                    },
                );
                Ok((vec![op], Finish::Capture(*authorization, amount), None))
            }
            Command::Reverse(Reverse { authorization }) => {
                let Some(original) = self.originals.get(&authorization.0).copied() else {
                    if let Some(record) = self.ledger.transfer(TransferId(authorization.0)) {
                        return Err(self.reverse_forgotten(id, who, &record));
                    }
                    // Before (or without) its authorization: remember it, so that a late
                    // authorization with that id from the same participant is declined
                    // instead of held.
                    self.early_reversals
                        .insert(authorization.0, who.participant);
                    return Err(Response::new(
                        id,
                        Code::Approved,
                        Reason::AUTHORIZATION_REVERSED,
                    ));
                };
                if original.acquirer != who.participant {
                    return reject(Code::NotPermitted, Reason::NOT_OWNER);
                }
                match original.stage {
                    Stage::Held => {}
                    // The hold is already gone: what the reversal asks for is true.
                    Stage::Reversed | Stage::Expired => {
                        return Err(Response::approved(id, Body::None));
                    }
                    Stage::Captured | Stage::Sold => {
                        return reject(Code::InvalidTransaction, Reason::AUTHORIZATION_CAPTURED);
                    }
                }
                let op = transfer(
                    AccountId(0),
                    AccountId(0),
                    Amount::ZERO,
                    original.currency,
                    TransferKind::Void {
                        pending_id: TransferId(authorization.0),
                    },
                );
                Ok((vec![op], Finish::Reverse(*authorization), None))
            }
            Command::Refund(Refund {
                original: original_id,
                amount,
                currency,
            }) => {
                let original = self.original_of(id, who, *original_id)?;
                if !matches!(original.stage, Stage::Captured | Stage::Sold) {
                    return reject(Code::InvalidTransaction, Reason::AUTHORIZATION_NOT_FOUND);
                }
                if *currency != original.currency {
                    return reject(Code::InvalidTransaction, Reason::CURRENCY_MISMATCH);
                }
                let refundable = original.captured.0 - original.refunded.0;
                if *amount == Amount::ZERO || amount.0 > refundable {
                    return reject(Code::InvalidAmount, Reason::EXCEEDS_REFUNDABLE);
                }
                let op = transfer(
                    original.merchant,
                    original.card,
                    *amount,
                    *currency,
                    TransferKind::Single,
                );
                Ok((
                    vec![op],
                    Finish::Refund(*original_id, original, *amount, *currency),
                    None,
                ))
            }
            Command::CloseWindow { window, fees } => self.plan_close(id, *window, fees, now),
        }
    }

    /// Applies the wave's events in one ledger batch and answers its requests.
    fn flush(&mut self, wave: &mut Wave, now: Timestamp, out: &mut [Option<Response>]) {
        if wave.planned.is_empty() {
            return;
        }
        let outcomes = match self.ledger.apply(&wave.events, now) {
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
            ahead.to(k, &ids, |id| self.touch_remembered(id));
            let results = &outcomes[planned.events.clone()];
            // The member that decided the chain: the first failure, or the last success.
            let outcome = results
                .iter()
                .copied()
                .find(|o| !o.is_success() && *o != Outcome::LinkedEventFailed)
                .unwrap_or_else(|| *results.last().expect("a planned command has events"));
            let response = self.finish(
                planned.id,
                planned.fingerprint,
                planned.finish,
                outcome,
                planned.number,
                now,
            );
            // An approved authorization or sale is answered from its original (see
            // `Original::fingerprint`).
            let in_original = planned.fingerprint != 0
                && response.code == Code::Approved
                && matches!(planned.finish, Finish::Authorize(_) | Finish::Sale(_));
            if !in_original {
                self.remember(planned.id, planned.fingerprint, &response);
            }
            out[planned.slot] = Some(response);
        }
        for repeat in wave.repeats.drain(..) {
            out[repeat.slot] = Some(match self.remembered(repeat.id, repeat.fingerprint) {
                Some(response) => response,
                // Not remembered (busy): nothing was done, and the repeat hears the same.
                None => out[repeat.of]
                    .clone()
                    .expect("the repeated request was answered"),
            });
        }
        wave.events.clear();
        wave.keys.clear();
    }

    fn finish(
        &mut self,
        id: RequestId,
        fingerprint: u64,
        finish: Finish,
        outcome: Outcome,
        number: Option<(String, AccountId)>,
        now: Timestamp,
    ) -> Response {
        if !outcome.is_success() {
            // A hold due but not yet expired by the clock's tick is gone all the same, as the
            // reversal asks: it hears what it would hear after the tick (see `plan`).
            if outcome == Outcome::PendingTransferExpired && matches!(finish, Finish::Reverse(_)) {
                return Response::approved(id, Body::None);
            }
            match finish {
                // The reservation against the net debit cap goes with the request.
                Finish::Authorize(o) | Finish::Sale(o) => {
                    self.clearing.release(o.issuer, o.currency, o.amount.0)
                }
                Finish::CloseWindow => {
                    self.closing = None;
                    tracing::error!(?outcome, "clearing: the settlement batch failed");
                }
                _ => {}
            }
            return Response::from_outcome(id, outcome);
        }
        let transfer = TransferId(id.0);
        if outcome == Outcome::Exists
            && let Finish::Authorize(_)
            | Finish::Sale(_)
            | Finish::Capture(..)
            | Finish::Reverse(_)
            | Finish::Refund(..) = finish
        {
            return self.done_before(id, finish);
        }
        let moved = |amount: Amount, currency: Currency| {
            Response::approved(
                id,
                Body::Transfer {
                    transfer,
                    amount,
                    currency,
                },
            )
        };
        match finish {
            Finish::CreateAccount => {
                if let Some((number, account)) = number {
                    // The account exists already with the same fields: a number it is not
                    // bound to is another field, not a second binding.
                    if outcome == Outcome::Exists && self.directory.get(&number) != Some(&account) {
                        return Response::new(
                            id,
                            Code::DuplicateWithOtherFields,
                            Reason::ID_REUSED,
                        );
                    }
                    self.directory.insert(number, account);
                }
                Response::approved(id, Body::None)
            }
            Finish::Fund => match self.ledger.transfer(transfer) {
                Some(r) => moved(r.event.amount, r.event.currency),
                None => Response::approved(id, Body::None),
            },
            Finish::Authorize(original) => {
                let original = Original {
                    fingerprint,
                    ..original
                };
                self.originals
                    .insert(id.0, original, |o| o.stage == Stage::Held);
                moved(original.amount, original.currency)
            }
            Finish::Sale(original) => {
                let original = Original {
                    fingerprint,
                    ..original
                };
                self.originals
                    .insert(id.0, original, |o| o.stage == Stage::Held);
                let (o, amount) = (original, original.amount);
                self.clearing.release(o.issuer, o.currency, amount.0);
                self.clearing
                    .clear(Kind::Purchase, o.acquirer, o.issuer, o.currency, amount.0);
                self.record_moved(id, Kind::Purchase);
                moved(amount, o.currency)
            }
            Finish::CloseWindow => {
                let window = self.clearing.open.id;
                if let Some((settlement, fees)) = self.closing.take() {
                    self.clearing.close(now, settlement, fees);
                }
                Response::approved(id, Body::WindowClosed(window))
            }
            Finish::Capture(authorization, amount) => {
                let o = self
                    .originals
                    .get_mut(&authorization.0)
                    .expect("a live hold's authorization is never forgotten");
                o.stage = Stage::Captured;
                o.captured = amount;
                let o = *o;
                self.clearing.release(o.issuer, o.currency, o.amount.0);
                self.clearing
                    .clear(Kind::Purchase, o.acquirer, o.issuer, o.currency, amount.0);
                self.record_moved(id, Kind::Purchase);
                moved(amount, o.currency)
            }
            Finish::Reverse(authorization) => {
                let o = self
                    .originals
                    .get_mut(&authorization.0)
                    .expect("a live hold's authorization is never forgotten");
                o.stage = Stage::Reversed;
                let (amount, currency, issuer) = (o.amount, o.currency, o.issuer);
                self.clearing.release(issuer, currency, amount.0);
                moved(amount, currency)
            }
            Finish::Refund(original, o, amount, currency) => {
                if let Some(o) = self.originals.get_mut(&original.0) {
                    o.refunded = Amount(o.refunded.0 + amount.0);
                }
                self.clearing
                    .clear(Kind::Refund, o.acquirer, o.issuer, currency, amount.0);
                self.record_moved(id, Kind::Refund);
                moved(amount, currency)
            }
        }
    }
}

// Snapshots of the switch: the layout and its encoding are in `core/snapshot.rs`. Core state
// added above must be added there too (`snapshot::capture` and `snapshot::restore` name every
// field of `Core`, so the compiler points at both).

impl Core {
    /// The core's own state (the ledger's is `Ledger::capture`), encoded for a snapshot. Call
    /// it between batches: the state must be exactly what the log holds.
    pub fn capture(&self) -> snapshot::CoreCapture {
        snapshot::capture(self)
    }

    /// Rebuilds a core, its ledger included, from a snapshot payload (`snapshot::Capture`);
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
