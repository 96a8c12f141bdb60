//! Queries, which change nothing: balances, a transfer's status, the windows and their reports.

use ledger::{Account, Amount, TransferId, TransferKind, TransferState};

use super::{
    Body, Core, KeptBody, RequestId, Response, Stage, Status, Target, WINDOWS_LISTED_MAX,
    is_system_account,
};
use crate::clearing::Window;
use crate::codes::{Code, Reason};
use crate::identity::Identity;

impl Core {
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

    /// What became of an earlier request, for its sender and the admin. Anything else is "not
    /// found" (an approved answer with no status), so that request ids do not leak.
    pub(super) fn status(&self, id: RequestId, who: Identity, of: RequestId) -> Response {
        let not_found = Response::approved(id, Body::None);
        if let Some(o) = self.originals.get(&of.0) {
            // The acquirer sent it (`acquire`: the merchant is the sender's).
            if !(who.admin || o.acquirer == who.participant) {
                return not_found;
            }
            return Response::approved(
                id,
                Body::Status(Status {
                    transfer: TransferId(of.0),
                    stage: o.stage,
                    currency: o.currency,
                    amount: o.amount,
                    // A sale keeps its amount as `captured` (what refunds may take back), but
                    // the protocol reports captures of authorizations only.
                    captured: if o.stage == Stage::Sold {
                        Amount::ZERO
                    } else {
                        o.captured
                    },
                    refunded: o.refunded,
                }),
            );
        }
        // Captures, reversals, refunds and funds: the transfer each made under its own id,
        // while the request's answer is remembered. The ledger forgets on its own bound, shard
        // by shard, so it may still hold the transfer of a sale forgotten here, without what
        // was refunded of it: that is "not found", not a sale reported unrefunded. (Originals
        // restored from a version 1 snapshot keep their answers among the responses; one of
        // those forgotten before its answer would still be reported from the ledger.)
        let Some(kept) = self.responses.get(&of.0) else {
            return not_found;
        };
        let KeptBody::OwnTransfer { amount, currency } = kept.body else {
            return not_found;
        };
        if kept.code != Code::Approved {
            return not_found;
        }
        let Some(record) = self.ledger.transfer(TransferId(of.0)) else {
            return not_found;
        };
        let owner = |account| self.ledger.account(account).map(|a| a.owner);
        // Who sent it, from the accounts: a capture or a reversal credits, and a refund debits,
        // the merchant, and only its acquirer may send them; only the admin funds.
        let (sender, stage) = match (record.event.kind, record.state) {
            (TransferKind::Post { .. }, TransferState::Posted) => {
                (owner(record.credit_account_id), Stage::Sold)
            }
            (TransferKind::Void { .. }, TransferState::Voided) => {
                (owner(record.credit_account_id), Stage::Reversed)
            }
            (TransferKind::Single, TransferState::Posted)
                if is_system_account(record.debit_account_id) =>
            {
                (None, Stage::Sold)
            }
            (TransferKind::Single, TransferState::Posted) => {
                (owner(record.debit_account_id), Stage::Sold)
            }
            _ => return not_found,
        };
        if !(who.admin || sender == Some(who.participant)) {
            return not_found;
        }
        Response::approved(
            id,
            Body::Status(Status {
                transfer: TransferId(of.0),
                stage,
                currency,
                amount,
                captured: Amount::ZERO,
                refunded: Amount::ZERO,
            }),
        )
    }
}
