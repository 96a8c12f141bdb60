//! Model-based test: the sharded ledger against a plain single-threaded reference model.
//!
//! Random operations (account creation, valid and invalid transfers, holds, full and partial
//! posts, voids, expiry, resubmissions with the same and other fields, linked chains with a
//! failing member) drive both. After every step the outcomes, every account and every remembered
//! transfer must be identical, and the invariants must hold: per-currency conservation, no
//! balance flag violated, no hold resolved twice.
//!
//! The model shares no code with the ledger: it keeps everything in `BTreeMap`s and undoes a
//! failed chain by restoring a clone of itself.

use std::collections::BTreeMap;

use ledger::{
    AccountFlags, AccountId, Amount, Config, Currency, Event, Ledger, LogRecord, NewAccount, Op,
    Outcome, ParticipantId, Timestamp, Transfer, TransferId, TransferKind, TransferState,
};
use proptest::prelude::*;

const ACCOUNT_IDS: u128 = 7;
const DMNEC: u16 = 1;
const CMNED: u16 = 2;
const CLOSED: u16 = 4;

#[derive(Clone, Debug, PartialEq, Eq)]
struct MAccount {
    currency: Currency,
    owner: u64,
    flags: u16,
    debits_pending: u128,
    debits_posted: u128,
    credits_pending: u128,
    credits_posted: u128,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct MTransfer {
    event: Transfer,
    debit: u128,
    credit: u128,
    state: TransferState,
}

#[derive(Clone, Debug, Default)]
struct Model {
    accounts: BTreeMap<u128, MAccount>,
    transfers: BTreeMap<u128, MTransfer>,
}

impl Model {
    fn apply(&mut self, events: &[Event], now: Timestamp) -> Vec<Outcome> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < events.len() {
            let mut j = i;
            while events[j].linked && j + 1 < events.len() {
                j += 1;
            }
            let chain = &events[i..=j];
            if chain[chain.len() - 1].linked {
                for _ in 0..chain.len() - 1 {
                    out.push(Outcome::LinkedEventFailed);
                }
                out.push(Outcome::LinkedEventChainOpen);
            } else {
                let before = self.clone();
                let mut results = Vec::new();
                let mut failed = None;
                for (k, e) in chain.iter().enumerate() {
                    let r = self.apply_one(e, now);
                    results.push(r);
                    if r != Outcome::Ok && r != Outcome::Exists {
                        failed = Some(k);
                        break;
                    }
                }
                if let Some(f) = failed {
                    *self = before;
                    let mut final_results = Vec::new();
                    for (k, e) in chain.iter().enumerate() {
                        let r = if k == f {
                            results[f]
                        } else {
                            self.original(e).unwrap_or(Outcome::LinkedEventFailed)
                        };
                        final_results.push(r);
                    }
                    let transient = matches!(
                        results[f],
                        Outcome::AccountLimitReached | Outcome::PendingLimitReached
                    );
                    if !transient || chain.len() == 1 {
                        for (e, r) in chain.iter().zip(&final_results) {
                            self.remember(e, *r);
                        }
                    }
                    results = final_results;
                }
                out.extend(results);
            }
            i = j + 1;
        }
        out
    }

    fn original(&self, e: &Event) -> Option<Outcome> {
        let Op::Transfer(t) = &e.op else { return None };
        let r = self.transfers.get(&t.id.0)?;
        (r.event == *t).then_some(match r.state {
            TransferState::Declined(o) => o,
            _ => Outcome::Exists,
        })
    }

    fn remember(&mut self, e: &Event, outcome: Outcome) {
        let Op::Transfer(t) = &e.op else { return };
        let skip = matches!(
            outcome,
            Outcome::Ok
                | Outcome::Exists
                | Outcome::ExistsWithDifferentFields
                | Outcome::LinkedEventChainOpen
                | Outcome::AccountLimitReached
                | Outcome::PendingLimitReached
        );
        if skip || t.id.0 == 0 || t.id.0 == u128::MAX || self.transfers.contains_key(&t.id.0) {
            return;
        }
        self.transfers.insert(
            t.id.0,
            MTransfer {
                event: *t,
                debit: t.debit_account_id.0,
                credit: t.credit_account_id.0,
                state: TransferState::Declined(outcome),
            },
        );
    }

    fn apply_one(&mut self, e: &Event, now: Timestamp) -> Outcome {
        match self.apply_op(&e.op, now) {
            Ok(()) => Outcome::Ok,
            Err(o) => o,
        }
    }

    fn apply_op(&mut self, op: &Op, now: Timestamp) -> Result<(), Outcome> {
        match op {
            Op::CreateAccount(a) => {
                if a.id.0 == 0 {
                    return Err(Outcome::IdMustNotBeZero);
                }
                if a.id.0 == u128::MAX {
                    return Err(Outcome::IdMustNotBeIntMax);
                }
                if a.flags.bits() & 3 == 3 {
                    return Err(Outcome::FlagsAreMutuallyExclusive);
                }
                if a.owner.0 == 0 {
                    return Err(Outcome::OwnerMustNotBeZero);
                }
                if let Some(x) = self.accounts.get(&a.id.0) {
                    return Err(
                        if x.currency == a.currency
                            && x.owner == a.owner.0
                            && x.flags == a.flags.bits()
                        {
                            Outcome::Exists
                        } else {
                            Outcome::ExistsWithDifferentFields
                        },
                    );
                }
                self.accounts.insert(
                    a.id.0,
                    MAccount {
                        currency: a.currency,
                        owner: a.owner.0,
                        flags: a.flags.bits(),
                        debits_pending: 0,
                        debits_posted: 0,
                        credits_pending: 0,
                        credits_posted: 0,
                    },
                );
                Ok(())
            }
            Op::SetAccountClosed { id, closed } => {
                if id.0 == 0 {
                    return Err(Outcome::IdMustNotBeZero);
                }
                if id.0 == u128::MAX {
                    return Err(Outcome::IdMustNotBeIntMax);
                }
                let a = self
                    .accounts
                    .get_mut(&id.0)
                    .ok_or(Outcome::AccountNotFound)?;
                if *closed {
                    a.flags |= CLOSED;
                } else {
                    a.flags &= !CLOSED;
                }
                Ok(())
            }
            Op::Transfer(t) => self.transfer(t, now),
        }
    }

    fn transfer(&mut self, t: &Transfer, now: Timestamp) -> Result<(), Outcome> {
        let id = t.id.0;
        if id == 0 {
            return Err(Outcome::IdMustNotBeZero);
        }
        if id == u128::MAX {
            return Err(Outcome::IdMustNotBeIntMax);
        }
        let (resolves, void, pending_id) = match t.kind {
            TransferKind::Post { pending_id } => (true, false, pending_id.0),
            TransferKind::Void { pending_id } => (true, true, pending_id.0),
            TransferKind::Pending { .. } | TransferKind::Single => (false, false, 0),
        };
        if resolves {
            if pending_id == 0 {
                return Err(Outcome::PendingIdMustNotBeZero);
            }
            if pending_id == u128::MAX {
                return Err(Outcome::PendingIdMustNotBeIntMax);
            }
            if pending_id == id {
                return Err(Outcome::PendingIdMustBeDifferent);
            }
        }
        let (d, c) = (t.debit_account_id.0, t.credit_account_id.0);
        if d == 0 && !resolves {
            return Err(Outcome::DebitAccountIdMustNotBeZero);
        }
        if d == u128::MAX {
            return Err(Outcome::DebitAccountIdMustNotBeIntMax);
        }
        if c == 0 && !resolves {
            return Err(Outcome::CreditAccountIdMustNotBeZero);
        }
        if c == u128::MAX {
            return Err(Outcome::CreditAccountIdMustNotBeIntMax);
        }
        if d == c && d != 0 {
            return Err(Outcome::AccountsMustBeDifferent);
        }
        if t.amount.0 == 0 && !void {
            return Err(Outcome::AmountMustNotBeZero);
        }
        if let Some(r) = self.transfers.get(&id) {
            return Err(if r.event == *t {
                match r.state {
                    TransferState::Declined(o) => o,
                    _ => Outcome::Exists,
                }
            } else {
                Outcome::ExistsWithDifferentFields
            });
        }
        if let TransferKind::Pending { expires_at } = t.kind
            && expires_at.0 != 0
            && expires_at <= now
        {
            return Err(Outcome::ExpiryMustBeInTheFuture);
        }
        let amount = u128::from(t.amount.0);
        if !resolves {
            let da = self
                .accounts
                .get(&d)
                .ok_or(Outcome::DebitAccountNotFound)?
                .clone();
            let ca = self
                .accounts
                .get(&c)
                .ok_or(Outcome::CreditAccountNotFound)?
                .clone();
            if da.currency != ca.currency {
                return Err(Outcome::AccountsMustHaveTheSameCurrency);
            }
            if t.currency != da.currency {
                return Err(Outcome::CurrencyMustMatchAccounts);
            }
            if da.flags & CLOSED != 0 {
                return Err(Outcome::DebitAccountClosed);
            }
            if ca.flags & CLOSED != 0 {
                return Err(Outcome::CreditAccountClosed);
            }
            if da.flags & DMNEC != 0
                && da.debits_pending + da.debits_posted + amount > da.credits_posted
            {
                return Err(Outcome::ExceedsCredits);
            }
            if ca.flags & CMNED != 0
                && ca.credits_pending + ca.credits_posted + amount > ca.debits_posted
            {
                return Err(Outcome::ExceedsDebits);
            }
            let pending = matches!(t.kind, TransferKind::Pending { .. });
            let da = self.accounts.get_mut(&d).expect("checked");
            if pending {
                da.debits_pending += amount;
            } else {
                da.debits_posted += amount;
            }
            let ca = self.accounts.get_mut(&c).expect("checked");
            if pending {
                ca.credits_pending += amount;
            } else {
                ca.credits_posted += amount;
            }
            self.transfers.insert(
                id,
                MTransfer {
                    event: *t,
                    debit: d,
                    credit: c,
                    state: if pending {
                        TransferState::Pending
                    } else {
                        TransferState::Posted
                    },
                },
            );
            return Ok(());
        }

        let p = match self.transfers.get(&pending_id) {
            None => return Err(Outcome::PendingTransferNotFound),
            Some(r) if matches!(r.state, TransferState::Declined(_)) => {
                return Err(Outcome::PendingTransferNotFound);
            }
            Some(r) => r.clone(),
        };
        let TransferKind::Pending { expires_at } = p.event.kind else {
            return Err(Outcome::PendingTransferNotPending);
        };
        if d != 0 && d != p.debit {
            return Err(Outcome::PendingTransferHasDifferentDebitAccount);
        }
        if c != 0 && c != p.credit {
            return Err(Outcome::PendingTransferHasDifferentCreditAccount);
        }
        if t.currency != p.event.currency {
            return Err(Outcome::PendingTransferHasDifferentCurrency);
        }
        match p.state {
            TransferState::PendingPosted { .. } => {
                return Err(Outcome::PendingTransferAlreadyPosted);
            }
            TransferState::PendingVoided { .. } => {
                return Err(Outcome::PendingTransferAlreadyVoided);
            }
            TransferState::PendingExpired => return Err(Outcome::PendingTransferExpired),
            _ => {}
        }
        if expires_at.0 != 0 && expires_at <= now {
            return Err(Outcome::PendingTransferExpired);
        }
        let held = u128::from(p.event.amount.0);
        if !void && amount > held {
            return Err(Outcome::ExceedsPendingTransferAmount);
        }
        if void && amount != 0 && amount != held {
            return Err(Outcome::PendingTransferHasDifferentAmount);
        }
        if !void && self.accounts[&p.debit].flags & CLOSED != 0 {
            return Err(Outcome::DebitAccountClosed);
        }
        if !void && self.accounts[&p.credit].flags & CLOSED != 0 {
            return Err(Outcome::CreditAccountClosed);
        }
        let moved = if void { 0 } else { amount };
        let da = self
            .accounts
            .get_mut(&p.debit)
            .expect("hold accounts exist");
        da.debits_pending -= held;
        da.debits_posted += moved;
        let ca = self
            .accounts
            .get_mut(&p.credit)
            .expect("hold accounts exist");
        ca.credits_pending -= held;
        ca.credits_posted += moved;
        self.transfers
            .get_mut(&pending_id)
            .expect("read above")
            .state = if void {
            TransferState::PendingVoided { by: t.id }
        } else {
            TransferState::PendingPosted {
                by: t.id,
                amount: t.amount,
            }
        };
        self.transfers.insert(
            id,
            MTransfer {
                event: *t,
                debit: p.debit,
                credit: p.credit,
                state: if void {
                    TransferState::Voided
                } else {
                    TransferState::Posted
                },
            },
        );
        Ok(())
    }

    fn expire(&mut self, now: Timestamp) -> Vec<(u64, u128)> {
        let mut due: Vec<(u64, u128)> = self
            .transfers
            .iter()
            .filter_map(|(id, r)| match (r.state, r.event.kind) {
                (TransferState::Pending, TransferKind::Pending { expires_at })
                    if expires_at.0 != 0 && expires_at <= now =>
                {
                    Some((expires_at.0, *id))
                }
                _ => None,
            })
            .collect();
        due.sort();
        for &(_, id) in &due {
            let r = self.transfers.get_mut(&id).expect("listed");
            r.state = TransferState::PendingExpired;
            let (d, c, held) = (r.debit, r.credit, u128::from(r.event.amount.0));
            self.accounts.get_mut(&d).expect("exists").debits_pending -= held;
            self.accounts.get_mut(&c).expect("exists").credits_pending -= held;
        }
        due
    }
}

/// An id as the generator chooses it; resolved against what was submitted so far.
#[derive(Clone, Copy, Debug)]
enum IdChoice {
    Fresh,
    /// The n-th id submitted so far (modulo their number).
    Earlier(usize),
    Zero,
    Max,
}

#[derive(Clone, Copy, Debug)]
enum KindChoice {
    Single,
    /// Expiry in ticks from now (`None`: never); small values land in the past.
    Pending(Option<u64>),
    /// Post the n-th hold created so far: `amount_pct` of it, or (over 100) one to three
    /// units more than it.
    Post(IdChoice, u64),
    Void(IdChoice, bool),
}

#[derive(Clone, Debug)]
enum Spec {
    Transfer {
        id: IdChoice,
        debit: u128,
        credit: u128,
        amount: u64,
        other_currency: bool,
        kind: KindChoice,
        code: u16,
    },
    /// The n-th transfer event submitted so far, again: unchanged, or with another amount.
    Resubmit(usize, bool),
    CreateAccount(u128, Currency, u64, u16),
    SetClosed(u128, bool),
}

#[derive(Clone, Debug)]
enum Step {
    Batch(Vec<(Spec, bool)>),
    Expire,
    Advance(u64),
}

fn account_id() -> impl Strategy<Value = u128> {
    prop_oneof![
        40 => 1..=ACCOUNT_IDS,
        1 => Just(0u128),
        1 => Just(u128::MAX),
    ]
}

fn id_choice() -> impl Strategy<Value = IdChoice> {
    prop_oneof![
        30 => Just(IdChoice::Fresh),
        6 => any::<usize>().prop_map(IdChoice::Earlier),
        1 => Just(IdChoice::Zero),
        1 => Just(IdChoice::Max),
    ]
}

fn ref_choice() -> impl Strategy<Value = IdChoice> {
    prop_oneof![
        30 => any::<usize>().prop_map(IdChoice::Earlier),
        1 => Just(IdChoice::Fresh),
        1 => Just(IdChoice::Zero),
        1 => Just(IdChoice::Max),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    let kind = prop_oneof![
        5 => Just(KindChoice::Single),
        4 => prop::option::weighted(0.8, 0u64..40).prop_map(KindChoice::Pending),
        4 => (ref_choice(), prop_oneof![4 => Just(100u64), 4 => 1u64..100, 1 => 101u64..104])
            .prop_map(|(r, pct)| KindChoice::Post(r, pct)),
        2 => (ref_choice(), any::<bool>()).prop_map(|(r, full)| KindChoice::Void(r, full)),
    ];
    let transfer = (
        id_choice(),
        prop_oneof![6 => account_id(), 1 => Just(0u128)],
        prop_oneof![6 => account_id(), 1 => Just(0u128)],
        prop_oneof![1 => Just(0u64), 24 => 1u64..60, 8 => 1_000u64..1_006],
        prop::bool::weighted(0.05),
        kind,
        0u16..2,
    )
        .prop_map(
            |(id, debit, credit, amount, other_currency, kind, code)| Spec::Transfer {
                id,
                debit,
                credit,
                amount,
                other_currency,
                kind,
                code,
            },
        );
    prop_oneof![
        20 => transfer,
        3 => (any::<usize>(), prop::bool::weighted(0.3)).prop_map(|(i, d)| Spec::Resubmit(i, d)),
        2 => (account_id(), prop_oneof![5 => Just(Currency::CNY), 1 => Just(Currency::JPY)],
              prop_oneof![10 => Just(1u64), 1 => Just(0u64)], 0u16..8)
            .prop_map(|(id, c, owner, flags)| Spec::CreateAccount(id, c, owner, flags)),
        1 => (account_id(), prop::bool::weighted(0.3)).prop_map(|(id, c)| Spec::SetClosed(id, c)),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => prop::collection::vec((spec(), prop::bool::weighted(0.15)), 1..7).prop_map(Step::Batch),
        2 => Just(Step::Expire),
        3 => (1u64..15).prop_map(Step::Advance),
    ]
}

/// Turns generated choices into concrete events, given what was submitted so far.
#[derive(Default)]
struct Resolver {
    next_id: u128,
    ids: Vec<u128>,
    holds: Vec<u128>,
    submitted: Vec<Transfer>,
}

impl Resolver {
    fn id(&mut self, choice: IdChoice, from: &[u128]) -> u128 {
        match choice {
            IdChoice::Fresh => {
                self.next_id += 1;
                self.next_id
            }
            IdChoice::Earlier(n) if !from.is_empty() => from[n % from.len()],
            IdChoice::Earlier(_) => 999_999,
            IdChoice::Zero => 0,
            IdChoice::Max => u128::MAX,
        }
    }

    fn resolve(&mut self, model: &Model, now: Timestamp, spec: &Spec) -> Op {
        match *spec {
            Spec::CreateAccount(id, currency, owner, flags) => Op::CreateAccount(NewAccount {
                id: AccountId(id),
                currency,
                owner: ParticipantId(owner),
                // Closed at birth only rarely; mostly the balance rules (3 = both: refused).
                flags: AccountFlags::from_bits(if flags == 7 { CLOSED } else { flags & 3 })
                    .expect("known bits"),
            }),
            Spec::SetClosed(id, closed) => Op::SetAccountClosed {
                id: AccountId(id),
                closed,
            },
            Spec::Resubmit(n, change) if !self.submitted.is_empty() => {
                let mut t = self.submitted[n % self.submitted.len()];
                if change {
                    t.amount = Amount(t.amount.0 + 1);
                }
                Op::Transfer(t)
            }
            Spec::Resubmit(..) => Op::SetAccountClosed {
                id: AccountId(1),
                closed: false,
            },
            Spec::Transfer {
                id,
                debit,
                credit,
                amount,
                other_currency,
                kind,
                code,
            } => {
                let ids = self.ids.clone();
                let id = self.id(id, &ids);
                let holds = self.holds.clone();
                let (kind, debit, credit, amount, currency) = match kind {
                    KindChoice::Single | KindChoice::Pending(_) => {
                        // 1000..1003 stand for "the debit account's headroom - 1, +0, +1", and
                        // 1003..1006 the same for the credit account: the balance rules' edges.
                        let headroom = |a: Option<&MAccount>, debit_side: bool| {
                            a.map(|a| {
                                if debit_side {
                                    a.credits_posted
                                        .saturating_sub(a.debits_pending + a.debits_posted)
                                } else {
                                    a.debits_posted
                                        .saturating_sub(a.credits_pending + a.credits_posted)
                                }
                            })
                        };
                        let edge = match amount {
                            1_000..=1_002 => headroom(model.accounts.get(&debit), true)
                                .map(|h| (h, amount - 1_000)),
                            1_003..=1_005 => headroom(model.accounts.get(&credit), false)
                                .map(|h| (h, amount - 1_003)),
                            _ => None,
                        };
                        let amount = match edge {
                            Some((h, delta)) => u64::try_from(h)
                                .expect("small")
                                .saturating_add(delta)
                                .saturating_sub(1),
                            None => amount,
                        };
                        let currency = model
                            .accounts
                            .get(&debit)
                            .map_or(Currency::CNY, |a| a.currency);
                        let kind = match kind {
                            KindChoice::Pending(expiry) => {
                                self.holds.push(id);
                                TransferKind::Pending {
                                    expires_at: Timestamp(
                                        expiry.map_or(0, |e| (now.0 + e).saturating_sub(5)),
                                    ),
                                }
                            }
                            _ => TransferKind::Single,
                        };
                        (kind, debit, credit, amount, currency)
                    }
                    KindChoice::Post(r, pct) => {
                        let pending_id = self.id(r, &holds);
                        let held = model
                            .transfers
                            .get(&pending_id)
                            .map_or(10, |p| p.event.amount.0);
                        let currency = model
                            .transfers
                            .get(&pending_id)
                            .map_or(Currency::CNY, |p| p.event.currency);
                        // Mostly inherit the accounts; sometimes name them (rightly or not).
                        let (d, c) = if debit % 3 == 0 {
                            (debit, credit)
                        } else {
                            (0, 0)
                        };
                        (
                            TransferKind::Post {
                                pending_id: TransferId(pending_id),
                            },
                            d,
                            c,
                            (held * pct / 100).max(amount.min(1)),
                            currency,
                        )
                    }
                    KindChoice::Void(r, full) => {
                        let pending_id = self.id(r, &holds);
                        let held = model
                            .transfers
                            .get(&pending_id)
                            .map_or(10, |p| p.event.amount.0);
                        let currency = model
                            .transfers
                            .get(&pending_id)
                            .map_or(Currency::CNY, |p| p.event.currency);
                        let (d, c) = if debit % 3 == 0 {
                            (debit, credit)
                        } else {
                            (0, 0)
                        };
                        let amount = if full {
                            held
                        } else if amount % 4 == 0 {
                            amount
                        } else {
                            0
                        };
                        (
                            TransferKind::Void {
                                pending_id: TransferId(pending_id),
                            },
                            d,
                            c,
                            amount,
                            currency,
                        )
                    }
                };
                let currency = if other_currency {
                    if currency == Currency::CNY {
                        Currency::JPY
                    } else {
                        Currency::CNY
                    }
                } else {
                    currency
                };
                let t = Transfer {
                    id: TransferId(id),
                    debit_account_id: AccountId(debit),
                    credit_account_id: AccountId(credit),
                    amount: Amount(amount),
                    currency,
                    kind,
                    code,
                };
                self.ids.push(id);
                self.submitted.push(t);
                Op::Transfer(t)
            }
        }
    }
}

/// Accounts 1..=6 exist from the start: 1 and 2 without rules (they fund the others), 3 and 4
/// may not be overdrawn, 5 may not take more than it gave, 6 is in yen.
fn setup() -> Vec<Event> {
    let flags = [0, 0, DMNEC, DMNEC, CMNED, 0];
    let mut events: Vec<Event> = (1..=6u128)
        .map(|id| {
            Event::from(NewAccount {
                id: AccountId(id),
                currency: if id == 6 {
                    Currency::JPY
                } else {
                    Currency::CNY
                },
                owner: ParticipantId(1),
                flags: AccountFlags::from_bits(flags[id as usize - 1]).expect("known bits"),
            })
        })
        .collect();
    for (id, credit, amount) in [(1_000_001, 3, 200), (1_000_002, 4, 100)] {
        events.push(Event::from(Transfer {
            id: TransferId(id),
            debit_account_id: AccountId(1),
            credit_account_id: AccountId(credit),
            amount: Amount(amount),
            currency: Currency::CNY,
            kind: TransferKind::Single,
            code: 0,
        }));
    }
    events
}

fn check_same(ledger: &Ledger, model: &Model, resolver: &Resolver) -> Result<(), TestCaseError> {
    for id in 0..=ACCOUNT_IDS + 1 {
        let got = ledger.account(AccountId(id)).map(|a| MAccount {
            currency: a.currency,
            owner: a.owner.0,
            flags: a.flags.bits(),
            debits_pending: a.balances.debits_pending,
            debits_posted: a.balances.debits_posted,
            credits_pending: a.balances.credits_pending,
            credits_posted: a.balances.credits_posted,
        });
        prop_assert_eq!(got.as_ref(), model.accounts.get(&id), "account {}", id);
        if let Some(a) = got {
            let debits = a.debits_pending + a.debits_posted;
            let credits = a.credits_pending + a.credits_posted;
            prop_assert!(
                a.flags & DMNEC == 0 || debits <= a.credits_posted,
                "flag violated"
            );
            prop_assert!(
                a.flags & CMNED == 0 || credits <= a.debits_posted,
                "flag violated"
            );
        }
    }
    for &id in resolver.ids.iter().chain(&[1_000_001, 1_000_002]) {
        let got = ledger.transfer(TransferId(id)).map(|r| MTransfer {
            event: r.event,
            debit: r.debit_account_id.0,
            credit: r.credit_account_id.0,
            state: r.state,
        });
        prop_assert_eq!(got.as_ref(), model.transfers.get(&id), "transfer {}", id);
    }
    for (currency, totals) in ledger.totals() {
        prop_assert!(totals.is_balanced(), "{currency}: {totals:?}");
    }
    // Every resolved hold was resolved by exactly one post or void, and a live one by none.
    for (id, r) in &model.transfers {
        if !matches!(r.event.kind, TransferKind::Pending { .. }) {
            continue;
        }
        let resolutions: Vec<_> = model
            .transfers
            .values()
            .filter(|x| {
                !matches!(x.state, TransferState::Declined(_))
                    && x.event.kind.pending_id() == Some(TransferId(*id))
            })
            .collect();
        let expected = match r.state {
            TransferState::PendingPosted { .. } | TransferState::PendingVoided { .. } => 1,
            _ => 0,
        };
        prop_assert_eq!(
            resolutions.len(),
            expected,
            "hold {} resolved {:?}",
            id,
            resolutions
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ledger::proptest_config!("ledger_model.txt", 96))]

    #[test]
    fn ledger_matches_model(steps in prop::collection::vec(step(), 1..60), shards_log2 in 0u32..4, preallocate_at in 0usize..60) {
        let config = Config { shards: 1 << shards_log2, ..Config::default() };
        // Not compared with the model (it forgets old transfers), only with its own replay and
        // snapshot: forgetting must be as deterministic as everything else.
        let forgetful_config = Config { transfers_remembered_max: 16, ..config.clone() };
        let forgetful = Ledger::new(forgetful_config.clone()).expect("valid config");
        // Reserves its memory ahead at some step (`Ledger::preallocate`): nothing it answers
        // or holds may differ from the forgetful ledger that grows as it goes.
        let preallocated = Ledger::new(forgetful_config.clone()).expect("valid config");
        let ledger = Ledger::new(config.clone()).expect("valid config");
        let twin = Ledger::new(config.clone()).expect("valid config");
        let mut model = Model::default();
        let mut resolver = Resolver::default();
        let mut log: Vec<u8> = Vec::new();
        let mut log_lengths: Vec<usize> = Vec::new();
        let mut now = Timestamp(1_000);
        let setup = setup();
        let got = ledger.apply(&setup, now).expect("batch within limit");
        twin.apply(&setup, now).expect("batch within limit");
        forgetful.apply(&setup, now).expect("batch within limit");
        preallocated.apply(&setup, now).expect("batch within limit");
        prop_assert_eq!(got, model.apply(&setup, now));
        LogRecord::encode_batch(now, &setup, &mut log);
        log_lengths.push(log.len());
        for (n, step) in steps.into_iter().enumerate() {
            if n == preallocate_at {
                let bytes = preallocated.preallocate();
                prop_assert!(bytes > 0);
                prop_assert_eq!(preallocated.preallocate(), bytes, "idempotent");
            }
            match step {
                Step::Batch(specs) => {
                    let events: Vec<Event> = specs
                        .iter()
                        .map(|(spec, linked)| Event { op: resolver.resolve(&model, now, spec), linked: *linked })
                        .collect();
                    let got = ledger.apply(&events, now).expect("batch within limit");
                    twin.apply(&events, now).expect("batch within limit");
                    let forgot = forgetful.apply(&events, now).expect("batch within limit");
                    prop_assert_eq!(preallocated.apply(&events, now).expect("batch within limit"), forgot);
                    let want = model.apply(&events, now);
                    prop_assert_eq!(&got, &want, "batch {:?}", events);
                    LogRecord::encode_batch(now, &events, &mut log);
                    log_lengths.push(log.len());
                    if std::env::var_os("MODEL_OUTCOMES").is_some() {
                        for o in &got {
                            eprintln!("OUTCOME {o:?}");
                        }
                    }
                }
                Step::Expire => {
                    let got: Vec<(u64, u128)> =
                        ledger.expire(now).iter().map(|e| (e.expires_at.0, e.id.0)).collect();
                    twin.expire(now);
                    prop_assert_eq!(preallocated.expire(now), forgetful.expire(now));
                    prop_assert_eq!(got, model.expire(now));
                    LogRecord::encode_expire(now, &mut log);
                    log_lengths.push(log.len());
                }
                Step::Advance(dt) => now = Timestamp(now.0 + dt),
            }
            check_same(&ledger, &model, &resolver)?;
            prop_assert_eq!(ledger.digest(), twin.digest());
            prop_assert_eq!(preallocated.digest(), forgetful.digest());
            prop_assert_eq!(preallocated.stats(), forgetful.stats());
        }

        // The same command log gives the same state.
        for (original, config) in [(&ledger, &config), (&forgetful, &forgetful_config)] {
            let replayed = Ledger::new(config.clone()).expect("valid config");
            let mut start = 0;
            for &end in &log_lengths {
                match LogRecord::decode(&log[start..end]).expect("what was encoded decodes") {
                    LogRecord::Batch { now, events } => {
                        replayed.apply(&events, now).expect("batch within limit");
                    }
                    LogRecord::Expire { now } => {
                        replayed.expire(now);
                    }
                }
                start = end;
            }
            prop_assert_eq!(replayed.digest(), original.digest());
            prop_assert_eq!(replayed.stats(), original.stats());
            let mut bytes = Vec::new();
            original.capture().encode(&mut bytes);
            let restored = Ledger::restore(config.clone(), &bytes).expect("a capture restores");
            prop_assert_eq!(restored.digest(), original.digest());
        }
        // A snapshot restores to the same state, and the restored ledger goes on identically.
        let mut bytes = Vec::new();
        ledger.capture().encode(&mut bytes);
        let restored = Ledger::restore(config.clone(), &bytes).expect("a capture restores");
        prop_assert_eq!(restored.digest(), ledger.digest());
        prop_assert_eq!(restored.stats(), ledger.stats());
        check_same(&restored, &model, &resolver)?;
        let later = Timestamp(now.0 + 1_000);
        prop_assert_eq!(restored.expire(later), ledger.expire(later));
        prop_assert_eq!(restored.digest(), ledger.digest());
        let wrong = Config { shards: config.shards * 2, ..config };
        prop_assert!(Ledger::restore(wrong, &bytes).is_err());
    }
}
