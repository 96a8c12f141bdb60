//! Queries, which change nothing: balances, a transfer's status, the windows and their reports.

use ledger::{Account, Amount, TransferId, TransferKind, TransferState};

use super::{
    Batch, Body, Core, KeptBody, Original, PaymentState, Request, RequestId, Response, Status,
    Target, WINDOWS_LISTED_MAX, is_system_account,
};
use crate::clearing::Window;
use crate::codes::{Code, Reason};
use crate::identity::Identity;

impl Core {
    /// Answers a request that changes nothing; `None` for any other request.
    pub(super) fn query(
        &mut self,
        batch: &mut Batch,
        id: RequestId,
        who: Identity,
        request: &mut Request,
    ) -> Option<Response> {
        // Each reads what the requests before it did: the wave is applied first.
        let response = match request {
            Request::Echo { payload } => {
                Response::approved(id, Body::Echo(std::mem::take(payload)))
            }
            Request::BalanceInquiry { target } => {
                self.flush(batch);
                self.balance(id, who, target)
            }
            Request::TransferStatus { of } => {
                self.flush(batch);
                self.status(id, who, *of)
            }
            Request::ListWindows => {
                self.flush(batch);
                self.list_windows(id, who)
            }
            Request::WindowReport { window } => {
                self.flush(batch);
                self.window_report(id, who, *window)
            }
            Request::CreateParticipant(_)
            | Request::CreateAccount(_)
            | Request::Fund(_)
            | Request::SetLimits(_)
            | Request::Authorize { .. }
            | Request::Capture(_)
            | Request::Reverse(_)
            | Request::Sale { .. }
            | Request::Refund(_)
            | Request::CloseWindow { .. } => return None,
        };
        Some(response)
    }

    /// Whether `who` may read `account`'s balance: its owner, or the admin (oversight).
    pub(super) fn may_read(&self, who: Identity, account: &Account) -> bool {
        who.admin || account.owner == who.participant
    }

    pub(super) fn list_windows(&self, id: RequestId, who: Identity) -> Response {
        if !who.admin {
            return Response::new(id, Code::NotPermitted, Reason::ADMIN_REQUIRED);
        }
        // A listed window is its record only: its positions are not copied.
        let record = |w: &Window| Window {
            positions: Vec::new(),
            ..*w
        };
        let mut windows = vec![record(&self.clearing.open_view())];
        windows.extend(
            self.clearing
                .closed
                .iter()
                .rev()
                .take(WINDOWS_LISTED_MAX - 1)
                .map(record),
        );
        Response::approved(id, Body::Windows(windows))
    }

    pub(super) fn window_report(&self, id: RequestId, who: Identity, window: u64) -> Response {
        if !who.admin {
            return Response::new(id, Code::NotPermitted, Reason::ADMIN_REQUIRED);
        }
        let found = if window == self.clearing.open.id {
            // Live positions: what a close now would settle, with the fees a close would use.
            match self.clearing.open_report(&self.config.fees) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::error!(window, "clearing: {e}");
                    return Response::new(id, Code::SystemMalfunction, Reason::INTERNAL);
                }
            }
        } else {
            self.clearing.find(window).cloned()
        };
        match found {
            Some(w) => Response::approved(id, Body::WindowReport(w)),
            None => Response::new(id, Code::InvalidTransaction, Reason::WINDOW_NOT_FOUND),
        }
    }

    pub(super) fn balance(&self, id: RequestId, who: Identity, target: &Target) -> Response {
        let account = match target {
            Target::Account(account) => *account,
            Target::Number(number) => match self.route(id, number) {
                Ok(account) => account,
                Err(response) => return response,
            },
        };
        let Some(a) = self.ledger.account(account) else {
            return Response::new(id, Code::InvalidCardOrAccount, Reason::NONE);
        };
        // Only the owner may ask (by number, that is the issuer the number routes to), and the
        // admin.
        if !self.may_read(who, &a) {
            return Response::new(id, Code::NotPermitted, Reason::NOT_OWNER);
        }
        Response::approved(
            id,
            Body::Balance {
                account,
                currency: a.currency,
                balances: a.balances,
            },
        )
    }

    /// What a TransferStatus of `of` from `who` reads, without a request of its own.
    pub fn read_status(&self, who: Identity, of: RequestId) -> Response {
        self.status(of, who, of)
    }

    /// What became of an earlier request, for its sender and the admin. Anything else is "not
    /// found" (an approved answer with no status), so that request ids do not leak.
    pub(super) fn status(&self, id: RequestId, who: Identity, of: RequestId) -> Response {
        let status = match self.originals.get(&of.0) {
            Some(o) => self.payment_status(who, of, o),
            None => self.transfer_status(who, of),
        };
        Response::approved(id, status.map_or(Body::None, Body::Status))
    }

    /// An authorization or sale, as its acquirer (`acquire`: the merchant is the sender's)
    /// and the admin see it.
    fn payment_status(&self, who: Identity, of: RequestId, o: &Original) -> Option<Status> {
        if !(who.admin || o.acquirer == who.participant) {
            return None;
        }
        Some(Status {
            transfer: TransferId(of.0),
            state: o.state,
            currency: o.currency,
            amount: o.amount,
            // A sale keeps its amount as `captured` (what refunds may take back), but the
            // protocol reports captures of authorizations only.
            captured: if o.state == PaymentState::Sold {
                Amount::ZERO
            } else {
                o.captured
            },
            refunded: o.refunded,
        })
    }

    /// Captures, reversals, refunds and funds: the transfer each made under its own id, while
    /// the request's answer is remembered. The ledger forgets on its own bound, shard by
    /// shard, so it may still hold the transfer of a sale forgotten here, without what was
    /// refunded of it: that is "not found", not a sale reported unrefunded. (Originals restored
    /// from a version 1 snapshot keep their answers among the responses; one of those
    /// forgotten before its answer would still be reported from the ledger.)
    fn transfer_status(&self, who: Identity, of: RequestId) -> Option<Status> {
        let kept = self.responses.get(&of.0)?;
        let KeptBody::OwnTransfer { amount, currency } = kept.body else {
            return None;
        };
        if kept.code != Code::Approved {
            return None;
        }
        let record = self.ledger.transfer(TransferId(of.0))?;
        let owner = |account| self.ledger.account(account).map(|a| a.owner);
        // Who sent it, from the accounts: a capture or a reversal credits, and a refund debits,
        // the merchant, and only its acquirer may send them; only the admin funds.
        let (sender, state) = match (record.event.kind, record.state) {
            (TransferKind::Post { .. }, TransferState::Posted) => {
                (owner(record.credit_account_id), PaymentState::Sold)
            }
            (TransferKind::Void { .. }, TransferState::Voided) => {
                (owner(record.credit_account_id), PaymentState::Reversed)
            }
            (TransferKind::Single, TransferState::Posted)
                if is_system_account(record.debit_account_id) =>
            {
                (None, PaymentState::Sold)
            }
            (TransferKind::Single, TransferState::Posted) => {
                (owner(record.debit_account_id), PaymentState::Sold)
            }
            _ => return None,
        };
        if !(who.admin || sender == Some(who.participant)) {
            return None;
        }
        Some(Status {
            transfer: TransferId(of.0),
            state,
            currency,
            amount,
            captured: Amount::ZERO,
            refunded: Amount::ZERO,
        })
    }
}
