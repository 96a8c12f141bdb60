//! The result of every event, one variant per reason.
//!
//! When several reasons apply, the ledger reports the first in declaration order: batch
//! structure, then the event's own fields, then idempotency (`Exists*`), then the event against
//! the current state: time, the accounts (accounts, the pending transfer), then balances, then capacity. The order is part
//! of the contract: a client that sends the same bad event always gets the same answer.

/// What happened to one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Outcome {
    /// Applied.
    Ok,

    // --- batch structure ---
    /// Another event of this linked chain failed, so this one was not applied.
    LinkedEventFailed,
    /// The batch ended inside a linked chain (the last event has `linked` set).
    LinkedEventChainOpen,

    // --- the event's own fields ---
    IdMustNotBeZero,
    IdMustNotBeIntMax,
    /// An account cannot both forbid debits over credits and credits over debits.
    FlagsAreMutuallyExclusive,
    OwnerMustNotBeZero,
    PendingIdMustBeZero,
    PendingIdMustNotBeZero,
    PendingIdMustNotBeIntMax,
    PendingIdMustBeDifferent,
    DebitAccountIdMustNotBeZero,
    DebitAccountIdMustNotBeIntMax,
    CreditAccountIdMustNotBeZero,
    CreditAccountIdMustNotBeIntMax,
    AccountsMustBeDifferent,
    AmountMustNotBeZero,

    // --- idempotency ---
    /// Already applied with the same fields: nothing changed this time.
    Exists,
    /// The id is taken by an event with other fields (ISO 8583 code 94).
    ExistsWithDifferentFields,

    // --- the event against the current state (time, accounts, the pending transfer) ---
    /// A hold's expiry is at or before the `now` it was submitted with.
    ExpiryMustBeInTheFuture,
    AccountNotFound,
    DebitAccountNotFound,
    CreditAccountNotFound,
    AccountsMustHaveTheSameCurrency,
    CurrencyMustMatchAccounts,
    PendingTransferNotFound,
    PendingTransferNotPending,
    PendingTransferHasDifferentDebitAccount,
    PendingTransferHasDifferentCreditAccount,
    PendingTransferHasDifferentCurrency,
    PendingTransferAlreadyPosted,
    PendingTransferAlreadyVoided,
    PendingTransferExpired,
    ExceedsPendingTransferAmount,
    PendingTransferHasDifferentAmount,
    DebitAccountClosed,
    CreditAccountClosed,

    // --- balances ---
    OverflowsDebitsPending,
    OverflowsCreditsPending,
    OverflowsDebitsPosted,
    OverflowsCreditsPosted,
    OverflowsDebits,
    OverflowsCredits,
    /// The debit account forbids debits over credits, and this one would exceed them.
    ExceedsCredits,
    /// The credit account forbids credits over debits, and this one would exceed them.
    ExceedsDebits,

    // --- capacity (transient: never remembered, a retry may succeed) ---
    AccountLimitReached,
    PendingLimitReached,
}

impl Outcome {
    /// Every variant, in precedence order.
    pub const ALL: [Outcome; 47] = [
        Outcome::Ok,
        Outcome::LinkedEventFailed,
        Outcome::LinkedEventChainOpen,
        Outcome::IdMustNotBeZero,
        Outcome::IdMustNotBeIntMax,
        Outcome::FlagsAreMutuallyExclusive,
        Outcome::OwnerMustNotBeZero,
        Outcome::PendingIdMustBeZero,
        Outcome::PendingIdMustNotBeZero,
        Outcome::PendingIdMustNotBeIntMax,
        Outcome::PendingIdMustBeDifferent,
        Outcome::DebitAccountIdMustNotBeZero,
        Outcome::DebitAccountIdMustNotBeIntMax,
        Outcome::CreditAccountIdMustNotBeZero,
        Outcome::CreditAccountIdMustNotBeIntMax,
        Outcome::AccountsMustBeDifferent,
        Outcome::AmountMustNotBeZero,
        Outcome::Exists,
        Outcome::ExistsWithDifferentFields,
        Outcome::ExpiryMustBeInTheFuture,
        Outcome::AccountNotFound,
        Outcome::DebitAccountNotFound,
        Outcome::CreditAccountNotFound,
        Outcome::AccountsMustHaveTheSameCurrency,
        Outcome::CurrencyMustMatchAccounts,
        Outcome::PendingTransferNotFound,
        Outcome::PendingTransferNotPending,
        Outcome::PendingTransferHasDifferentDebitAccount,
        Outcome::PendingTransferHasDifferentCreditAccount,
        Outcome::PendingTransferHasDifferentCurrency,
        Outcome::PendingTransferAlreadyPosted,
        Outcome::PendingTransferAlreadyVoided,
        Outcome::PendingTransferExpired,
        Outcome::ExceedsPendingTransferAmount,
        Outcome::PendingTransferHasDifferentAmount,
        Outcome::DebitAccountClosed,
        Outcome::CreditAccountClosed,
        Outcome::OverflowsDebitsPending,
        Outcome::OverflowsCreditsPending,
        Outcome::OverflowsDebitsPosted,
        Outcome::OverflowsCreditsPosted,
        Outcome::OverflowsDebits,
        Outcome::OverflowsCredits,
        Outcome::ExceedsCredits,
        Outcome::ExceedsDebits,
        Outcome::AccountLimitReached,
        Outcome::PendingLimitReached,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Outcome> {
        Outcome::ALL.get(usize::from(code)).copied()
    }

    /// The event took effect now (`Ok`) or earlier (`Exists`).
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::Exists)
    }

    /// A capacity refusal: not remembered, so a retry with the same id may succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Outcome::AccountLimitReached | Outcome::PendingLimitReached
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_precedence_order() {
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(usize::from(outcome.code()), i, "{outcome:?}");
            assert_eq!(Outcome::from_code(outcome.code()), Some(*outcome));
        }
        assert!(Outcome::ALL.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Outcome::from_code(47), None);
    }
}
