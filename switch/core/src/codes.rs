//! The one place where a ledger outcome becomes a response code and a reason.
//!
//! Codes and reasons are the protocol's (`wire::ResponseCode`, `wire::Reason`, listed in
//! docs/PROTOCOL.md); the core answers in that vocabulary directly.

use ledger::Outcome;

pub use crate::wire::{Reason, ResponseCode as Code};

/// The response code and reason for a ledger outcome. Every outcome maps to exactly one pair.
pub fn code_for(outcome: Outcome) -> (Code, Reason) {
    use Outcome as O;
    match outcome {
        O::Ok | O::Exists => (Code::Approved, Reason::NONE),
        O::ExistsWithDifferentFields => (Code::DuplicateWithOtherFields, Reason::ID_REUSED),
        O::AmountMustNotBeZero => (Code::InvalidAmount, Reason::AMOUNT_ZERO),
        O::ExceedsPendingTransferAmount | O::PendingTransferHasDifferentAmount => {
            (Code::InvalidAmount, Reason::EXCEEDS_AUTHORIZED)
        }
        O::AccountNotFound | O::DebitAccountNotFound | O::CreditAccountNotFound => {
            (Code::InvalidCardOrAccount, Reason::ACCOUNT_NOT_FOUND)
        }
        O::ExceedsCredits => (Code::InsufficientFunds, Reason::INSUFFICIENT_FUNDS),
        O::ExceedsDebits
        | O::OverflowsDebitsPending
        | O::OverflowsCreditsPending
        | O::OverflowsDebitsPosted
        | O::OverflowsCreditsPosted
        | O::OverflowsDebits
        | O::OverflowsCredits => (Code::ExceedsLimit, Reason::NONE),
        O::DebitAccountClosed | O::CreditAccountClosed => {
            (Code::DoNotHonour, Reason::ACCOUNT_CLOSED)
        }
        O::AccountLimitReached | O::PendingLimitReached => (Code::SystemBusy, Reason::OVERLOADED),
        // The switch builds chains itself; these mean a bug, not a bad request.
        O::LinkedEventFailed | O::LinkedEventChainOpen => {
            (Code::SystemMalfunction, Reason::INTERNAL)
        }
        O::AccountsMustHaveTheSameCurrency
        | O::CurrencyMustMatchAccounts
        | O::PendingTransferHasDifferentCurrency => {
            (Code::InvalidTransaction, Reason::CURRENCY_MISMATCH)
        }
        O::PendingTransferNotFound
        | O::PendingTransferNotPending
        | O::PendingTransferHasDifferentDebitAccount
        | O::PendingTransferHasDifferentCreditAccount => {
            (Code::InvalidTransaction, Reason::AUTHORIZATION_NOT_FOUND)
        }
        O::PendingTransferAlreadyPosted => {
            (Code::InvalidTransaction, Reason::AUTHORIZATION_CAPTURED)
        }
        O::PendingTransferAlreadyVoided => {
            (Code::InvalidTransaction, Reason::AUTHORIZATION_REVERSED)
        }
        O::PendingTransferExpired => (Code::InvalidTransaction, Reason::AUTHORIZATION_EXPIRED),
        O::FlagsAreMutuallyExclusive => (Code::InvalidTransaction, Reason::RESERVED_BITS),
        O::IdMustNotBeZero
        | O::IdMustNotBeIntMax
        | O::OwnerMustNotBeZero
        | O::PendingIdMustBeZero
        | O::PendingIdMustNotBeZero
        | O::PendingIdMustNotBeIntMax
        | O::PendingIdMustBeDifferent
        | O::DebitAccountIdMustNotBeZero
        | O::DebitAccountIdMustNotBeIntMax
        | O::CreditAccountIdMustNotBeZero
        | O::CreditAccountIdMustNotBeIntMax
        | O::AccountsMustBeDifferent => (Code::InvalidTransaction, Reason::INVALID_ID),
        O::ExpiryMustBeInTheFuture => (Code::InvalidTransaction, Reason::NONE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_one_code_and_only_successes_approve() {
        for outcome in Outcome::ALL {
            let (code, reason) = code_for(outcome);
            assert_eq!(code == Code::Approved, outcome.is_success(), "{outcome:?}");
            assert!(
                reason.name().is_some(),
                "{outcome:?} has an undocumented reason"
            );
        }
        assert_eq!(code_for(Outcome::ExceedsCredits).0, Code::InsufficientFunds);
        assert_eq!(
            code_for(Outcome::ExistsWithDifferentFields).0,
            Code::DuplicateWithOtherFields
        );
        assert_eq!(code_for(Outcome::PendingLimitReached).0, Code::SystemBusy);
        assert_eq!(
            code_for(Outcome::DebitAccountNotFound).0,
            Code::InvalidCardOrAccount
        );
    }
}
