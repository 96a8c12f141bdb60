//! Payments: authorizations, captures, reversals, sales, refunds, and the expiry of holds.
//!
//! An authorization or a sale is remembered as its `Original` (who acquired and who issued it,
//! what it held or moved, where it stands), which the requests that act on it read. A new one
//! reserves its amount against the issuer's net debit cap when it is planned (`reserve`); the
//! reservation becomes the authorization's hold once the ledger applies it, and goes back in
//! every other case.

use ledger::clearing::Kind;
use ledger::{AccountId, Amount, Currency, Timestamp, TransferId, TransferRecord, TransferState};

use super::{
    Body, Capture, Core, Finish, Original, PaymentState, Plan, ROLE_ACQUIRER, Refund, RequestId,
    Response, Reverse, transfer,
};
use crate::codes::{Code, Reason};
use crate::identity::Identity;

/// What an authorization or a sale asks for, once routed.
#[derive(Clone, Copy, Debug)]
pub(super) struct Payment {
    card: AccountId,
    merchant: AccountId,
    amount: Amount,
    currency: Currency,
}

impl Payment {
    pub(super) fn new(
        card: AccountId,
        merchant: AccountId,
        amount: Amount,
        currency: Currency,
    ) -> Self {
        Payment {
            card,
            merchant,
            amount,
            currency,
        }
    }
}

impl Core {
    /// When an authorization asking for a hold of `seconds` (0: the default) made at `now`
    /// expires; 12 past `expiry_seconds_max`.
    pub(super) fn expires_at(
        &self,
        id: RequestId,
        seconds: u32,
        now: Timestamp,
    ) -> Result<Timestamp, Response> {
        let seconds = match seconds {
            0 => self.config.default_expiry_seconds,
            s if s > self.config.expiry_seconds_max => {
                return Err(Response::new(id, Code::InvalidTransaction, Reason::NONE));
            }
            s => s,
        };
        Ok(Timestamp(
            now.0.saturating_add(u64::from(seconds) * 1_000_000_000),
        ))
    }

    pub(super) fn plan_authorize(
        &mut self,
        id: RequestId,
        who: Identity,
        p: Payment,
        expires_at: Timestamp,
    ) -> Result<Plan, Response> {
        let original = self.acquire(id, who, &p)?;
        // A reversal that came first voids the acquirer's own late authorization; another
        // participant's reversal of the same id does not.
        if self.early_reversals.voids(id.0, who.participant) {
            return Err(Response::new(
                id,
                Code::InvalidTransaction,
                Reason::AUTHORIZATION_REVERSED,
            ));
        }
        self.reserve(id, &original)?;
        let kind = ledger::TransferKind::Pending { expires_at };
        let op = transfer(id, p.card, p.merchant, p.amount, p.currency, kind);
        Plan::apply(op, Finish::Authorize(original))
    }

    pub(super) fn plan_sale(
        &mut self,
        id: RequestId,
        who: Identity,
        p: Payment,
    ) -> Result<Plan, Response> {
        let original = self.acquire(id, who, &p)?;
        self.reserve(id, &original)?;
        let kind = ledger::TransferKind::Single;
        let op = transfer(id, p.card, p.merchant, p.amount, p.currency, kind);
        let sold = Original {
            state: PaymentState::Sold,
            captured: p.amount,
            ..original
        };
        Plan::apply(op, Finish::Sale(sold))
    }

    pub(super) fn plan_capture(
        &mut self,
        id: RequestId,
        who: Identity,
        c: &Capture,
    ) -> Result<Plan, Response> {
        let original = self.original_of(id, who, c.authorization)?;
        let refuse = |reason| Err(Response::new(id, Code::InvalidTransaction, reason));
        match original.state {
            PaymentState::Held => {}
            PaymentState::Captured => return refuse(Reason::AUTHORIZATION_CAPTURED),
            PaymentState::Sold => return refuse(Reason::NONE),
            PaymentState::Reversed => return refuse(Reason::AUTHORIZATION_REVERSED),
            PaymentState::Expired => return refuse(Reason::AUTHORIZATION_EXPIRED),
        }
        let kind = ledger::TransferKind::Post {
            pending_id: TransferId(c.authorization.0),
        };
        let (none, currency) = (AccountId(0), original.currency);
        let op = transfer(id, none, none, c.amount, currency, kind);
        let finish = Finish::Capture {
            authorization: c.authorization,
            amount: c.amount,
        };
        Plan::apply(op, finish)
    }

    pub(super) fn plan_reverse(
        &mut self,
        id: RequestId,
        who: Identity,
        r: &Reverse,
    ) -> Result<Plan, Response> {
        let authorization = r.authorization;
        let Some(original) = self.originals.get(&authorization.0).copied() else {
            return Plan::answer(self.reverse_unknown(id, who, authorization));
        };
        if original.acquirer != who.participant {
            return Err(Response::new(id, Code::NotPermitted, Reason::NOT_OWNER));
        }
        match original.state {
            PaymentState::Held => {}
            // The hold is already gone: what the reversal asks for is true.
            PaymentState::Reversed | PaymentState::Expired => {
                return Plan::answer(Response::approved(id, Body::None));
            }
            PaymentState::Captured | PaymentState::Sold => {
                return Err(Response::new(
                    id,
                    Code::InvalidTransaction,
                    Reason::AUTHORIZATION_CAPTURED,
                ));
            }
        }
        let kind = ledger::TransferKind::Void {
            pending_id: TransferId(authorization.0),
        };
        let none = AccountId(0);
        let op = transfer(id, none, none, Amount::ZERO, original.currency, kind);
        Plan::apply(op, Finish::Reverse(authorization))
    }

    /// A reversal of an authorization the switch does not remember.
    fn reverse_unknown(
        &mut self,
        id: RequestId,
        who: Identity,
        authorization: RequestId,
    ) -> Response {
        if let Some(record) = self.ledger.transfer(TransferId(authorization.0)) {
            return self.reverse_forgotten(id, who, &record);
        }
        // Before (or without) its authorization: remember it, so that a late authorization
        // with that id from the same participant is declined instead of held.
        self.early_reversals
            .insert(authorization.0, who.participant);
        Response::new(id, Code::Approved, Reason::AUTHORIZATION_REVERSED)
    }

    /// A reversal of a payment the switch has forgotten (it was resolved: live holds are never
    /// forgotten) but the ledger still holds: the ledger says what became of it. A captured
    /// authorization or a sale is not reversed, and is not taken for an early reversal either.
    fn reverse_forgotten(&self, id: RequestId, who: Identity, record: &TransferRecord) -> Response {
        let acquirer = self
            .ledger
            .account(record.credit_account_id)
            .map(|a| a.owner);
        if acquirer != Some(who.participant) {
            return Response::new(id, Code::NotPermitted, Reason::NOT_OWNER);
        }
        match record.state {
            TransferState::PendingVoided { .. } | TransferState::PendingExpired => {
                Response::approved(id, Body::None)
            }
            TransferState::Pending => Response::new(id, Code::SystemMalfunction, Reason::INTERNAL),
            _ => Response::new(id, Code::InvalidTransaction, Reason::AUTHORIZATION_CAPTURED),
        }
    }

    pub(super) fn plan_refund(
        &mut self,
        id: RequestId,
        who: Identity,
        r: &Refund,
    ) -> Result<Plan, Response> {
        let original = self.original_of(id, who, r.original)?;
        let refuse = |code, reason| Err(Response::new(id, code, reason));
        if !matches!(original.state, PaymentState::Captured | PaymentState::Sold) {
            return refuse(Code::InvalidTransaction, Reason::AUTHORIZATION_NOT_FOUND);
        }
        if r.currency != original.currency {
            return refuse(Code::InvalidTransaction, Reason::CURRENCY_MISMATCH);
        }
        let refundable = original.captured.0 - original.refunded.0;
        if r.amount == Amount::ZERO || r.amount.0 > refundable {
            return refuse(Code::InvalidAmount, Reason::EXCEEDS_REFUNDABLE);
        }
        let kind = ledger::TransferKind::Single;
        let (from, to) = (original.merchant, original.card);
        let op = transfer(id, from, to, r.amount, r.currency, kind);
        let finish = Finish::Refund {
            original: r.original,
            of: original,
            amount: r.amount,
        };
        Plan::apply(op, finish)
    }

    /// Counts a new authorization or sale against its issuer's net debit cap: declined 61 if
    /// what the issuer owes in the open window, plus its live holds, plus this would exceed
    /// it; otherwise reserved until the ledger decides.
    fn reserve(&mut self, id: RequestId, original: &Original) -> Result<(), Response> {
        let cap = self
            .limits
            .get(&(original.issuer, original.currency))
            .copied()
            .unwrap_or(Amount::ZERO);
        if cap != Amount::ZERO {
            let exposure = self.clearing.exposure(original.issuer, original.currency);
            let after = exposure
                .total()
                .saturating_add(i128::from(original.amount.0));
            if after > i128::from(cap.0) {
                return Err(Response::new(id, Code::ExceedsLimit, Reason::NET_DEBIT_CAP));
            }
        }
        self.clearing
            .hold(original.issuer, original.currency, original.amount.0);
        self.reservations += 1;
        Ok(())
    }

    /// A reservation of `reserve` goes back: the request did not make a hold.
    pub(super) fn return_reservation(&mut self, o: &Original) {
        self.end_reservation();
        self.clearing.release(o.issuer, o.currency, o.amount.0);
    }

    /// A reservation of `reserve` ends, applied or returned.
    fn end_reservation(&mut self) {
        debug_assert!(self.reservations > 0, "a reservation ends once");
        self.reservations = self.reservations.saturating_sub(1);
    }

    /// Checks for a new authorization or sale: the merchant is the sender's own, and the sender
    /// is an acquirer. The admin identity is no exception: it acts for its own participant only.
    /// Returns the payment as it will be remembered, held.
    fn acquire(&self, id: RequestId, who: Identity, p: &Payment) -> Result<Original, Response> {
        let not_found = || Response::new(id, Code::InvalidCardOrAccount, Reason::ACCOUNT_NOT_FOUND);
        let m = self.ledger.account(p.merchant).ok_or_else(not_found)?;
        if m.owner != who.participant {
            return Err(Response::new(id, Code::NotPermitted, Reason::NOT_OWNER));
        }
        if !self.has_role(m.owner, ROLE_ACQUIRER) {
            return Err(Response::new(id, Code::NotPermitted, Reason::ROLE_MISSING));
        }
        let c = self.ledger.account(p.card).ok_or_else(not_found)?;
        Ok(Original {
            fingerprint: 0,
            acquirer: m.owner,
            issuer: c.owner,
            card: p.card,
            merchant: p.merchant,
            currency: p.currency,
            amount: p.amount,
            captured: Amount::ZERO,
            refunded: Amount::ZERO,
            state: PaymentState::Held,
        })
    }

    /// The authorization or sale `of` that a request from `who` acts on: its acquirer's only.
    fn original_of(
        &self,
        id: RequestId,
        who: Identity,
        of: RequestId,
    ) -> Result<Original, Response> {
        let original = self.originals.get(&of.0).copied().ok_or_else(|| {
            Response::new(
                id,
                Code::InvalidTransaction,
                Reason::AUTHORIZATION_NOT_FOUND,
            )
        })?;
        if original.acquirer != who.participant {
            return Err(Response::new(id, Code::NotPermitted, Reason::NOT_OWNER));
        }
        Ok(original)
    }

    /// The hold is made: the reservation is its hold now, until a capture, a reversal or its
    /// expiry releases it.
    pub(super) fn finish_authorize(
        &mut self,
        id: RequestId,
        fingerprint: u64,
        original: Original,
    ) -> Response {
        let original = Original {
            fingerprint,
            ..original
        };
        debug_assert_eq!(original.state, PaymentState::Held);
        // The reservation is the hold now, until a capture, a reversal or its expiry.
        self.end_reservation();
        self.originals
            .insert(id.0, original, |o| o.state == PaymentState::Held);
        Response::moved(id, original.amount, original.currency)
    }

    pub(super) fn finish_sale(
        &mut self,
        id: RequestId,
        fingerprint: u64,
        original: Original,
    ) -> Response {
        let o = Original {
            fingerprint,
            ..original
        };
        self.originals
            .insert(id.0, o, |o| o.state == PaymentState::Held);
        // Sold: what the issuer owes is in the window's position now, not held.
        self.return_reservation(&o);
        self.clearing
            .clear(Kind::Purchase, o.acquirer, o.issuer, o.currency, o.amount.0);
        self.record_moved(id, Kind::Purchase);
        Response::moved(id, o.amount, o.currency)
    }

    pub(super) fn finish_capture(
        &mut self,
        id: RequestId,
        authorization: RequestId,
        amount: Amount,
    ) -> Response {
        let o = self
            .originals
            .get_mut(&authorization.0)
            .expect("a live hold's authorization is never forgotten");
        debug_assert_eq!(o.state, PaymentState::Held, "a hold is released once");
        o.state = PaymentState::Captured;
        o.captured = amount;
        let o = *o;
        self.clearing.release(o.issuer, o.currency, o.amount.0);
        self.clearing
            .clear(Kind::Purchase, o.acquirer, o.issuer, o.currency, amount.0);
        self.record_moved(id, Kind::Purchase);
        Response::moved(id, amount, o.currency)
    }

    pub(super) fn finish_reverse(&mut self, id: RequestId, authorization: RequestId) -> Response {
        let o = self
            .originals
            .get_mut(&authorization.0)
            .expect("a live hold's authorization is never forgotten");
        debug_assert_eq!(o.state, PaymentState::Held, "a hold is released once");
        o.state = PaymentState::Reversed;
        let (amount, currency, issuer) = (o.amount, o.currency, o.issuer);
        self.clearing.release(issuer, currency, amount.0);
        Response::moved(id, amount, currency)
    }

    /// `of` is the capture or sale `original` as it was planned.
    pub(super) fn finish_refund(
        &mut self,
        id: RequestId,
        original: RequestId,
        of: &Original,
        amount: Amount,
    ) -> Response {
        if let Some(o) = self.originals.get_mut(&original.0) {
            o.refunded = Amount(o.refunded.0 + amount.0);
        }
        let currency = of.currency;
        self.clearing
            .clear(Kind::Refund, of.acquirer, of.issuer, currency, amount.0);
        self.record_moved(id, Kind::Refund);
        Response::moved(id, amount, currency)
    }

    /// Reads back from the ledger what a capture, sale or refund moved, for reconciliation.
    fn record_moved(&mut self, id: RequestId, kind: Kind) {
        let Some(record) = self.ledger.transfer(TransferId(id.0)) else {
            return;
        };
        let owner = |account| self.ledger.account(account).map(|a| a.owner);
        if let (Some(debited), Some(credited)) = (
            owner(record.debit_account_id),
            owner(record.credit_account_id),
        ) {
            self.clearing.moved(
                kind,
                debited,
                credited,
                record.event.currency,
                record.event.amount.0,
            );
        }
    }

    /// The ledger still holds this very transfer, with the same fields, though the switch has
    /// forgotten the request (the two forget on their own bounds): it was done before. Its
    /// repeat hears the approval again and changes nothing: no second clearing, no refundable
    /// amount set back, no hold remembered again. What it reserved against the net debit cap
    /// goes back.
    pub(super) fn done_before(&mut self, id: RequestId, finish: &Finish) -> Response {
        if let Some(o) = finish.reserved() {
            self.return_reservation(o);
        }
        match self.ledger.transfer(TransferId(id.0)) {
            Some(r) => Response::moved(id, r.event.amount, r.event.currency),
            None => Response::approved(id, Body::None),
        }
    }

    /// `expire`, returning how many holds expired.
    pub fn expire_holds(&mut self, now: Timestamp, at_most: Option<u32>) -> usize {
        if self.ledger.next_expiry().is_none_or(|at| at > now) {
            return 0;
        }
        let limit = at_most.map_or(usize::MAX, |n| n as usize);
        let expired = self.ledger.expire_at_most(now, limit);
        for e in &expired {
            if let Some(original) = self.originals.get_mut(&e.id.0) {
                // The ledger expires live holds only, whose authorizations are held here.
                debug_assert_eq!(
                    original.state,
                    PaymentState::Held,
                    "a hold is released once"
                );
                if original.state == PaymentState::Held {
                    let (issuer, currency, amount) =
                        (original.issuer, original.currency, original.amount);
                    self.clearing.release(issuer, currency, amount.0);
                }
                original.state = PaymentState::Expired;
            }
        }
        expired.len()
    }
}
