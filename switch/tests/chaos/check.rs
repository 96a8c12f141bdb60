//! The switch's state as observed, against the journal: what each request did (from its
//! answer, or for one in flight at a kill from what a read-only pass saw), the statuses that
//! follow, every balance, and conservation. Pure: nothing here talks to the switch.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use switch::wire::{
    AccountId, Amount, CardNumber, Currency, Movement, Operation, Request, RequestId, ResponseBody,
    ResponseCode as Code, Status, TransferState,
};

use crate::journal::{Entry, Journal};
use crate::world::{CARDS, CNY, ISSUER, all_accounts, card_account, card_number, funding};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An acknowledged operation is missing or answers differently.
    Lost,
    /// Anything else that does not add up.
    Mismatch,
}

#[derive(Clone, Debug)]
pub struct Problem {
    pub kind: Kind,
    pub id: Option<u128>,
    pub what: String,
}

pub fn lost(id: u128, what: String) -> Problem {
    Problem {
        kind: Kind::Lost,
        id: Some(id),
        what,
    }
}

pub fn mismatch(id: Option<u128>, what: String) -> Problem {
    Problem {
        kind: Kind::Mismatch,
        id,
        what,
    }
}

/// What the switch showed in a read-only pass.
#[derive(Default)]
pub struct Observed {
    pub status: HashMap<u128, Status>,
    pub balances: HashMap<AccountId, (i128, i128)>,
    /// Holds seen expired by an earlier pass: expiry is for good, also across a restart.
    pub known_expired: HashSet<u128>,
    /// Every expiring hold was due well before this pass: none may still be pending.
    pub all_due: bool,
}

pub fn amount_of(request: &Request) -> u64 {
    match &request.operation {
        Operation::Authorize { amount, .. }
        | Operation::Sale { amount, .. }
        | Operation::Capture { amount, .. }
        | Operation::Refund { amount, .. }
        | Operation::Fund { amount, .. } => amount.0,
        _ => 0,
    }
}

pub fn expiry_secs_of(request: &Request) -> u32 {
    match request.operation {
        Operation::Authorize { expiry_secs, .. } => expiry_secs,
        _ => 0,
    }
}

/// Whether the hold of authorization `id` may be gone by expiry: in that case, whether it
/// is live is read from its status, never assumed.
pub fn expires(journal: &Journal, id: u128) -> bool {
    journal
        .get(id)
        .is_some_and(|e| expiry_secs_of(&e.request) > 0)
}

/// An authorization or sale and what happened to it, as the journal says.
#[derive(Clone, Copy, Debug, Default)]
struct Original {
    is_sale: bool,
    card: u128,
    merchant: AccountId,
    amount: u64,
    /// Took effect (approved, or found applied).
    applied: bool,
    /// Whether the answer to it was received (else its effect was inferred).
    acknowledged: bool,
    captured: Option<(u128, u64)>,
    reversed: Option<u128>,
    refunded: u64,
    /// A hold that expires by itself (0: the server's default of days, never in a run).
    expiry_secs: u32,
    sent_at: Option<Instant>,
}

/// Did a request take effect, and with what amount? From its answer if it has one; else
/// (in flight at a kill) from what the read-only pass saw.
fn effect(entry: &Entry, journal: &Journal, observed: &Observed) -> Result<Option<u64>, String> {
    match &entry.response {
        Some(response) if response.code != Code::Approved => Ok(None),
        Some(response) => approved_effect(&entry.request, &response.body, journal),
        None => inferred_effect(&entry.request, journal, observed),
    }
}

/// What an approval says was moved, which must be what was asked.
fn approved_effect(
    request: &Request,
    body: &ResponseBody,
    journal: &Journal,
) -> Result<Option<u64>, String> {
    let movement = match (&request.operation, body) {
        (Operation::Authorize { .. }, ResponseBody::Authorize(m))
        | (Operation::Sale { .. }, ResponseBody::Sale(m))
        | (Operation::Capture { .. }, ResponseBody::Capture(m))
        | (Operation::Reverse { .. }, ResponseBody::Reverse(m))
        | (Operation::Refund { .. }, ResponseBody::Refund(m))
        | (Operation::Fund { .. }, ResponseBody::Fund(m)) => *m,
        (Operation::Echo { .. }, _)
        | (Operation::CreateParticipant { .. }, _)
        | (Operation::CreateAccount { .. }, _) => return Ok(None),
        _ => return Err(format!("answer of the wrong shape {body:?}")),
    };
    let expected_amount = match &request.operation {
        Operation::Reverse { authorization } => {
            if movement == Movement::default() {
                // Nothing was held any more (or yet): approved, and nothing released.
                return Ok(None);
            }
            journal
                .get(authorization.0)
                .map_or(0, |a| amount_of(&a.request))
        }
        _ => amount_of(request),
    };
    let expected = Movement {
        transfer: switch::wire::TransferId(request.id.0),
        amount: Amount(expected_amount),
        currency: CNY,
    };
    if movement != expected {
        return Err(format!("approved with {movement:?}, expected {expected:?}"));
    }
    Ok(Some(expected_amount))
}

/// What a request in flight at a kill did, as the statuses read say.
fn inferred_effect(
    request: &Request,
    journal: &Journal,
    observed: &Observed,
) -> Result<Option<u64>, String> {
    let status_of = |id: RequestId| {
        observed
            .status
            .get(&id.0)
            .ok_or_else(|| format!("no status read for {:#x}", id.0))
    };
    let held = |authorization: &RequestId| {
        journal
            .get(authorization.0)
            .map_or(0, |a| amount_of(&a.request))
    };
    Ok(match &request.operation {
        Operation::Authorize { .. }
        | Operation::Sale { .. }
        | Operation::Refund { .. }
        | Operation::Fund { .. } => {
            (status_of(request.id)?.state != TransferState::NotFound).then(|| amount_of(request))
        }
        Operation::Capture {
            authorization,
            amount,
        } => {
            let s = status_of(*authorization)?;
            (s.state == TransferState::Captured
                && s.captured == *amount
                && amount.0 <= held(authorization))
            .then_some(amount.0)
        }
        Operation::Reverse { authorization } => {
            let held = held(authorization);
            let s = status_of(*authorization)?;
            (s.state == TransferState::Reversed && held > 0).then_some(held)
        }
        _ => None,
    })
}

/// The status ids a read-only pass needs to decide what the unknown requests did.
pub fn status_ids_for(journal: &Journal, ids: &[u128]) -> Vec<u128> {
    let mut out = Vec::new();
    for id in ids {
        let Some(entry) = journal.get(*id) else {
            continue;
        };
        match &entry.request.operation {
            Operation::Authorize { .. } | Operation::Sale { .. } | Operation::Fund { .. } => {
                out.push(*id)
            }
            Operation::Refund { original, .. } => {
                out.push(*id);
                out.push(original.0);
            }
            Operation::Capture { authorization, .. } | Operation::Reverse { authorization } => {
                out.push(authorization.0)
            }
            _ => {}
        }
    }
    out
}

/// Checks the switch's state as observed against the journal: statuses of the ids that were
/// read, every balance, conservation. Returns, for each request without an answer, whether
/// it was found to have taken effect.
pub fn check(journal: &Journal, observed: &Observed, problems: &mut Vec<Problem>) -> HashSet<u128> {
    let expected = Expected::from_journal(journal, observed, problems);
    let held = expected.live_holds(observed, problems);
    expected.compare_statuses(journal, observed, problems);
    compare_balances(observed, &expected.ledger, &held, problems);
    expected.applied_unknown
}

/// `check`, each problem found labelled with the cycle and the moment.
pub fn check_into(
    journal: &Journal,
    observed: &Observed,
    problems: &mut Vec<Problem>,
    cycle: u32,
    when: &str,
) -> HashSet<u128> {
    let mut found = Vec::new();
    let applied = check(journal, observed, &mut found);
    problems.extend(found.into_iter().map(|mut p| {
        p.what = format!("cycle {cycle}, {when}: {}", p.what);
        p
    }));
    applied
}

/// What the journal says the switch holds.
#[derive(Default)]
struct Expected {
    originals: HashMap<u128, Original>,
    /// Each account's posted balance (credits less debits).
    ledger: HashMap<AccountId, i128>,
    /// Requests without an answer that were found to have taken effect.
    applied_unknown: HashSet<u128>,
}

impl Expected {
    /// Every request in the journal, in the order sent: first the authorizations, sales and
    /// fundings, then what acts on them.
    fn from_journal(journal: &Journal, observed: &Observed, problems: &mut Vec<Problem>) -> Self {
        let mut expected = Expected::default();
        for pass in 0..2 {
            for id in &journal.order {
                let Some(entry) = journal.get(*id) else {
                    continue;
                };
                let first = matches!(
                    entry.request.operation,
                    Operation::Authorize { .. } | Operation::Sale { .. } | Operation::Fund { .. }
                );
                if first != (pass == 0) {
                    continue;
                }
                match effect(entry, journal, observed) {
                    Ok(amount) => expected.apply(*id, entry, amount, problems),
                    Err(what) => problems.push(mismatch(Some(*id), format!("{id:#x}: {what}"))),
                }
            }
        }
        expected
    }

    /// One request's effect: `amount` moved, or nothing (`None`).
    fn apply(&mut self, id: u128, entry: &Entry, amount: Option<u64>, problems: &mut Vec<Problem>) {
        if entry.response.is_none() && amount.is_some() {
            self.applied_unknown.insert(id);
        }
        match &entry.request.operation {
            Operation::Fund {
                account, amount: a, ..
            } if amount.is_some() => {
                *self.ledger.entry(*account).or_default() += i128::from(a.0);
                *self.ledger.entry(funding(ISSUER)).or_default() -= i128::from(a.0);
            }
            Operation::Authorize { .. } | Operation::Sale { .. } => {
                self.original(id, entry, amount.is_some(), problems);
            }
            Operation::Capture { authorization, .. } | Operation::Reverse { authorization } => {
                if let Some(moved) = amount {
                    let is_capture = matches!(entry.request.operation, Operation::Capture { .. });
                    self.resolve(id, authorization.0, is_capture, moved, problems);
                }
            }
            Operation::Refund { original, .. } => {
                if let Some(moved) = amount {
                    self.refund(id, original.0, moved, problems);
                }
            }
            _ => {}
        }
    }

    /// An authorization or a sale.
    fn original(&mut self, id: u128, entry: &Entry, applied: bool, problems: &mut Vec<Problem>) {
        let (Operation::Authorize {
            number,
            merchant,
            amount,
            ..
        }
        | Operation::Sale {
            number,
            merchant,
            amount,
            ..
        }) = &entry.request.operation
        else {
            return;
        };
        let is_sale = matches!(entry.request.operation, Operation::Sale { .. });
        let Some(card) = card_of(number) else {
            if applied {
                problems.push(mismatch(
                    Some(id),
                    format!("{id:#x}: approved for a number that has no account"),
                ));
            }
            return;
        };
        self.originals.insert(
            id,
            Original {
                is_sale,
                card,
                merchant: *merchant,
                amount: amount.0,
                applied,
                acknowledged: entry.response.is_some(),
                expiry_secs: expiry_secs_of(&entry.request),
                sent_at: Some(entry.sent_at),
                ..Original::default()
            },
        );
        if is_sale && applied {
            *self.ledger.entry(card_account(card)).or_default() -= i128::from(amount.0);
            *self.ledger.entry(*merchant).or_default() += i128::from(amount.0);
        }
    }

    /// A capture or a reversal `id` of `authorization` that took effect, moving `moved`.
    fn resolve(
        &mut self,
        id: u128,
        authorization: u128,
        is_capture: bool,
        moved: u64,
        problems: &mut Vec<Problem>,
    ) {
        let Some(o) = self
            .originals
            .get_mut(&authorization)
            .filter(|o| o.applied && !o.is_sale)
        else {
            problems.push(mismatch(
                Some(id),
                format!("{id:#x}: took effect on {authorization:#x}, which holds nothing"),
            ));
            return;
        };
        if let Some(other) = o.captured.map(|c| c.0).or(o.reversed) {
            problems.push(mismatch(
                Some(id),
                format!(
                    "authorization {authorization:#x} resolved twice: by {other:#x} and by \
                     {id:#x}"
                ),
            ));
            return;
        }
        if is_capture {
            o.captured = Some((id, moved));
            let (card, merchant) = (card_account(o.card), o.merchant);
            *self.ledger.entry(card).or_default() -= i128::from(moved);
            *self.ledger.entry(merchant).or_default() += i128::from(moved);
        } else {
            o.reversed = Some(id);
        }
    }

    /// A refund `id` of `original` that took effect, moving `moved`.
    fn refund(&mut self, id: u128, original: u128, moved: u64, problems: &mut Vec<Problem>) {
        let Some(o) = self.originals.get_mut(&original) else {
            problems.push(mismatch(
                Some(id),
                format!("refund {id:#x} took effect on unknown {original:#x}"),
            ));
            return;
        };
        let refundable = if o.is_sale {
            o.amount
        } else {
            o.captured.map_or(0, |c| c.1)
        };
        o.refunded += moved;
        if o.refunded > refundable {
            problems.push(mismatch(
                Some(id),
                format!(
                    "{original:#x} refunded {} of {refundable} (refund {id:#x})",
                    o.refunded
                ),
            ));
        }
        let (card, merchant) = (card_account(o.card), o.merchant);
        *self.ledger.entry(merchant).or_default() -= i128::from(moved);
        *self.ledger.entry(card).or_default() += i128::from(moved);
    }

    /// Holds: approved authorizations neither captured nor reversed. Holds that expire by
    /// themselves are live as long as their status says so. The amount held per account.
    fn live_holds(
        &self,
        observed: &Observed,
        problems: &mut Vec<Problem>,
    ) -> HashMap<AccountId, i128> {
        let mut held: HashMap<AccountId, i128> = HashMap::new();
        for (id, o) in &self.originals {
            if !o.applied || o.is_sale || o.captured.is_some() || o.reversed.is_some() {
                continue;
            }
            let live = o.expiry_secs == 0 || expiring_is_live(*id, o, observed, problems);
            if live {
                *held.entry(card_account(o.card)).or_default() += i128::from(o.amount);
            }
        }
        held
    }

    /// Statuses of the ids that were read.
    fn compare_statuses(
        &self,
        journal: &Journal,
        observed: &Observed,
        problems: &mut Vec<Problem>,
    ) {
        for (id, seen) in &observed.status {
            let Some(entry) = journal.get(*id) else {
                continue;
            };
            let original = self.originals.get(id);
            let Some(expected) = expected_status(*id, entry, original, journal, observed) else {
                continue;
            };
            let comparable = |s: &Status| (s.state, s.amount, s.captured, s.refunded);
            if comparable(seen) == comparable(&expected) {
                continue;
            }
            let what = format!(
                "{id:#x} ({:?}): the switch says (state, amount, captured, refunded) = {:?}, \
                 the journal {:?}",
                entry.request.operation.op(),
                comparable(seen),
                comparable(&expected)
            );
            let acknowledged = original.is_none_or(|o| o.acknowledged) && entry.response.is_some();
            problems.push(
                if acknowledged && expected.state != TransferState::NotFound {
                    lost(*id, what)
                } else {
                    mismatch(Some(*id), what)
                },
            );
        }
    }
}

fn card_of(number: &CardNumber) -> Option<u128> {
    (0..CARDS).find(|i| card_number(*i) == *number)
}

/// Whether a hold that expires by itself is live, as its status says; a hold expired early,
/// held again after it was seen expired, or held long after it was due is a mismatch.
fn expiring_is_live(
    id: u128,
    o: &Original,
    observed: &Observed,
    problems: &mut Vec<Problem>,
) -> bool {
    let known_expired = observed.known_expired.contains(&id);
    match observed.status.get(&id).map(|s| s.state) {
        Some(TransferState::Expired) => {
            let due = Duration::from_secs(u64::from(o.expiry_secs));
            if o.sent_at.is_some_and(|t| t.elapsed() < due) {
                problems.push(mismatch(
                    Some(id),
                    format!("{id:#x} expired before its {}s were up", o.expiry_secs),
                ));
            }
            false
        }
        Some(TransferState::Pending) if known_expired => {
            problems.push(mismatch(
                Some(id),
                format!("{id:#x} was seen expired, and is held again"),
            ));
            true
        }
        Some(TransferState::Pending) if observed.all_due => {
            problems.push(mismatch(
                Some(id),
                format!("{id:#x} is still held, long after its {}s", o.expiry_secs),
            ));
            true
        }
        Some(_) => true,
        None if known_expired => false,
        None => {
            problems.push(mismatch(
                Some(id),
                format!("no status read for the expiring hold {id:#x}"),
            ));
            true
        }
    }
}

/// Every account's balance against the journal (posted, and held), no card overdrawn, and
/// conservation: the posted balances sum to zero, and the holds to what the journal holds.
fn compare_balances(
    observed: &Observed,
    ledger: &HashMap<AccountId, i128>,
    held: &HashMap<AccountId, i128>,
    problems: &mut Vec<Problem>,
) {
    let mut ledger_sum: i128 = 0;
    let mut held_sum: i128 = 0;
    for account in all_accounts() {
        let Some(&(available, seen_ledger)) = observed.balances.get(&account) else {
            problems.push(mismatch(None, format!("no balance read for {account:?}")));
            continue;
        };
        let want_ledger = ledger.get(&account).copied().unwrap_or(0);
        let want_held = held.get(&account).copied().unwrap_or(0);
        ledger_sum += seen_ledger;
        held_sum += seen_ledger - available;
        if (seen_ledger, seen_ledger - available) != (want_ledger, want_held) {
            problems.push(mismatch(
                None,
                format!(
                    "{account:?}: ledger {seen_ledger} held {}, journal says ledger \
                     {want_ledger} held {want_held}",
                    seen_ledger - available
                ),
            ));
        }
        if account.0 >= 0x1000 && account.0 < 0x1000 + CARDS && available < 0 {
            problems.push(mismatch(
                None,
                format!("{account:?} is overdrawn: available {available}"),
            ));
        }
    }
    if ledger_sum != 0 {
        problems.push(mismatch(
            None,
            format!("money is not conserved: balances sum to {ledger_sum}"),
        ));
    }
    let holds: i128 = held.values().sum();
    if held_sum != holds {
        problems.push(mismatch(
            None,
            format!("holds sum to {held_sum}, journal says {holds}"),
        ));
    }
}

fn expected_status(
    id: u128,
    entry: &Entry,
    original: Option<&Original>,
    journal: &Journal,
    observed: &Observed,
) -> Option<Status> {
    let status = |state, amount: u64, captured: u64, refunded: u64| Status {
        state,
        currency: CNY,
        transfer: switch::wire::TransferId(id),
        amount: Amount(amount),
        captured: Amount(captured),
        refunded: Amount(refunded),
    };
    let not_found = Status {
        state: TransferState::NotFound,
        currency: Currency(0),
        transfer: switch::wire::TransferId(0),
        amount: Amount(0),
        captured: Amount(0),
        refunded: Amount(0),
    };
    Some(match &entry.request.operation {
        Operation::Authorize { .. } | Operation::Sale { .. } => {
            let o = original?;
            if !o.applied {
                not_found
            } else if o.is_sale {
                status(TransferState::Posted, o.amount, 0, o.refunded)
            } else if let Some((_, c)) = o.captured {
                status(TransferState::Captured, o.amount, c, o.refunded)
            } else if o.reversed.is_some() {
                status(TransferState::Reversed, o.amount, 0, 0)
            } else if o.expiry_secs > 0
                && observed
                    .status
                    .get(&id)
                    .is_some_and(|s| s.state == TransferState::Expired)
            {
                // Whether it was due is checked with the balances.
                status(TransferState::Expired, o.amount, 0, 0)
            } else {
                status(TransferState::Pending, o.amount, 0, 0)
            }
        }
        Operation::Refund { .. } | Operation::Fund { .. } => {
            match effect(entry, journal, observed).ok()? {
                Some(amount) => status(TransferState::Posted, amount, 0, 0),
                None => not_found,
            }
        }
        _ => return None,
    })
}
