//! Payments: authorizations, captures, reversals, sales, refunds, and the expiry of holds.

use ledger::clearing::Kind;
use ledger::{AccountId, Amount, Currency, Timestamp, TransferId, TransferRecord, TransferState};

use super::{Body, Core, Finish, Original, ROLE_ACQUIRER, RequestId, Response, Stage};
use crate::codes::{Code, Reason};
use crate::identity::Identity;

impl Core {
    /// `expire`, returning how many holds expired.
    pub fn expire_holds(&mut self, now: Timestamp) -> usize {
        if self.ledger.next_expiry().is_none_or(|at| at > now) {
            return 0;
        }
        let expired = self.ledger.expire(now);
        for e in &expired {
            if let Some(original) = self.originals.get_mut(&e.id.0) {
                if original.stage == Stage::Held {
                    let (issuer, currency, amount) =
                        (original.issuer, original.currency, original.amount);
                    self.clearing.release(issuer, currency, amount.0);
                }
                original.stage = Stage::Expired;
            }
        }
        expired.len()
    }

    /// A reversal of a payment the switch has forgotten (it was resolved: live holds are never
    /// forgotten) but the ledger still holds: the ledger says what became of it. A captured
    /// authorization or a sale is not reversed, and is not taken for an early reversal either.
    pub(super) fn reverse_forgotten(
        &self,
        id: RequestId,
        who: Identity,
        record: &TransferRecord,
    ) -> Response {
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

    /// Counts a new authorization or sale against its issuer's net debit cap: declined 61 if
    /// what the issuer owes in the open window, plus its live holds, plus this would exceed
    /// it; otherwise reserved until the ledger decides.
    pub(super) fn reserve(&mut self, id: RequestId, original: &Original) -> Result<(), Response> {
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
        Ok(())
    }

    /// Reads back from the ledger what a capture, sale or refund moved, for reconciliation.
    pub(super) fn record_moved(&mut self, id: RequestId, kind: Kind) {
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

    /// Checks for a new authorization or sale: the merchant is the sender's own, and the sender
    /// is an acquirer. The admin identity is no exception: it acts for its own participant only.
    pub(super) fn acquire(
        &self,
        id: RequestId,
        who: Identity,
        card: AccountId,
        merchant: AccountId,
        amount: Amount,
        currency: Currency,
    ) -> Result<Original, Response> {
        let Some(m) = self.ledger.account(merchant) else {
            return Err(Response::new(
                id,
                Code::InvalidCardOrAccount,
                Reason::ACCOUNT_NOT_FOUND,
            ));
        };
        if m.owner != who.participant {
            return Err(Response::new(id, Code::NotPermitted, Reason::NOT_OWNER));
        }
        if !self.has_role(m.owner, ROLE_ACQUIRER) {
            return Err(Response::new(id, Code::NotPermitted, Reason::ROLE_MISSING));
        }
        let Some(c) = self.ledger.account(card) else {
            return Err(Response::new(
                id,
                Code::InvalidCardOrAccount,
                Reason::ACCOUNT_NOT_FOUND,
            ));
        };
        Ok(Original {
            fingerprint: 0,
            acquirer: m.owner,
            issuer: c.owner,
            card,
            merchant,
            currency,
            amount,
            captured: Amount::ZERO,
            refunded: Amount::ZERO,
            stage: Stage::Held,
        })
    }

    pub(super) fn original_of(
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

    /// The ledger still holds this very transfer, with the same fields, though the switch has
    /// forgotten the request (the two forget on their own bounds): it was done before. Its
    /// repeat hears the approval again and changes nothing: no second clearing, no refundable
    /// amount set back, no hold remembered again. What it reserved against the net debit cap
    /// goes back.
    pub(super) fn done_before(&mut self, id: RequestId, finish: Finish) -> Response {
        if let Finish::Authorize(o) | Finish::Sale(o) = finish {
            self.clearing.release(o.issuer, o.currency, o.amount.0);
        }
        match self.ledger.transfer(TransferId(id.0)) {
            Some(r) => Response::approved(
                id,
                Body::Transfer {
                    transfer: TransferId(id.0),
                    amount: r.event.amount,
                    currency: r.event.currency,
                },
            ),
            None => Response::approved(id, Body::None),
        }
    }
}
