//! Transfers as clients submit them, and as the ledger remembers them.

use crate::currency::Currency;
use crate::outcome::Outcome;
use crate::types::{AccountId, Amount, Timestamp, TransferId};

/// What kind of transfer an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransferKind {
    /// Single phase: posted at once (a sale, a deposit, a refund, a settlement).
    Single,
    /// A hold: reserves `amount` until it is posted, voided, or expires at `expires_at`
    /// (`Timestamp::NEVER` for a hold that only ends by post or void).
    Pending { expires_at: Timestamp },
    /// Posts a pending transfer: `amount` (at most the held amount) moves, the rest is released.
    Post { pending_id: TransferId },
    /// Voids a pending transfer: the whole hold is released. `amount` is 0 or the held amount.
    Void { pending_id: TransferId },
}

impl TransferKind {
    pub fn pending_id(&self) -> Option<TransferId> {
        match *self {
            TransferKind::Post { pending_id } | TransferKind::Void { pending_id } => {
                Some(pending_id)
            }
            TransferKind::Single | TransferKind::Pending { .. } => None,
        }
    }
}

/// A transfer event. For `Post` and `Void` the debit and credit account may be left zero, which
/// means "those of the pending transfer"; if given they must match it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Transfer {
    pub id: TransferId,
    pub debit_account_id: AccountId,
    pub credit_account_id: AccountId,
    pub amount: Amount,
    pub currency: Currency,
    pub kind: TransferKind,
    /// Free for the client: the switch stores its transaction type here.
    pub code: u16,
}

/// What became of a transfer the ledger remembers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransferState {
    /// A single-phase transfer, or the post event of a two-phase one: money moved.
    Posted,
    /// A hold that is still live.
    Pending,
    /// A hold that was posted by `by` (for `amount`, at most the held amount).
    PendingPosted { by: TransferId, amount: Amount },
    /// A hold that was voided by `by`.
    PendingVoided { by: TransferId },
    /// A hold that expired.
    PendingExpired,
    /// The void event of a two-phase transfer.
    Voided,
    /// Refused; a resubmission with the same fields gets this outcome again.
    Declined(Outcome),
}

/// A transfer as the ledger remembers it. Post and void events store the accounts they
/// resolved from the pending transfer, so `transfer` is whole whatever the client left zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TransferRecord {
    /// Exactly what was submitted (the idempotency comparison is against this).
    pub event: Transfer,
    pub debit_account_id: AccountId,
    pub credit_account_id: AccountId,
    pub state: TransferState,
    pub created_at: Timestamp,
}

impl TransferRecord {
    /// The outcome a resubmission with the same fields gets.
    pub fn original_outcome(&self) -> Outcome {
        match self.state {
            TransferState::Declined(outcome) => outcome,
            _ => Outcome::Exists,
        }
    }
}

/// A hold that `Ledger::expire` voided, for the caller to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Expired {
    pub id: TransferId,
    pub debit_account_id: AccountId,
    pub credit_account_id: AccountId,
    pub amount: Amount,
    pub currency: Currency,
    pub expires_at: Timestamp,
}
