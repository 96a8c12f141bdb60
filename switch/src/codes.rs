//! ISO 8583 response codes, and the one place where a ledger outcome becomes one.

use ledger::Outcome;

/// A response code, with its ISO 8583 meaning. The discriminant is the two-digit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Code {
    Approved = 0,
    DoNotHonour = 5,
    InvalidTransaction = 12,
    InvalidAmount = 13,
    InvalidAccount = 14,
    InsufficientFunds = 51,
    NotPermitted = 57,
    ExceedsLimit = 61,
    Busy = 91,
    CannotRoute = 92,
    Duplicate = 94,
    Malfunction = 96,
}

impl Code {
    pub const ALL: [Code; 12] = [
        Code::Approved,
        Code::DoNotHonour,
        Code::InvalidTransaction,
        Code::InvalidAmount,
        Code::InvalidAccount,
        Code::InsufficientFunds,
        Code::NotPermitted,
        Code::ExceedsLimit,
        Code::Busy,
        Code::CannotRoute,
        Code::Duplicate,
        Code::Malfunction,
    ];

    pub fn as_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(value: u8) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_u8() == value)
    }

    /// The two digits as they are written: `"00"`, `"51"`.
    pub fn digits(self) -> String {
        format!("{:02}", self.as_u8())
    }
}

/// Why a request got its code, finer than the code. `0` means nothing more to say; values from
/// `LEDGER_BASE` on are `LEDGER_BASE + Outcome::code()`; the others are the switch's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reason(pub u8);

impl Reason {
    pub const NONE: Reason = Reason(0);
    pub const UNKNOWN_NUMBER: Reason = Reason(1);
    pub const NO_ROUTE: Reason = Reason(2);
    pub const NOT_OWNER: Reason = Reason(3);
    pub const NOT_ADMIN: Reason = Reason(4);
    pub const ORIGINAL_NOT_FOUND: Reason = Reason(5);
    pub const REVERSED_BEFORE_AUTHORIZATION: Reason = Reason(6);
    pub const ALREADY_CAPTURED: Reason = Reason(7);
    pub const NOT_CAPTURED: Reason = Reason(8);
    pub const REFUND_EXCEEDS_CAPTURED: Reason = Reason(9);
    pub const EXPIRY_TOO_LONG: Reason = Reason(10);
    pub const CURRENCY_MISMATCH: Reason = Reason(11);
    pub const QUEUE_FULL: Reason = Reason(12);
    pub const LOG_FAILED: Reason = Reason(13);
    pub const PARTICIPANT_NOT_FOUND: Reason = Reason(14);
    pub const NUMBER_TAKEN: Reason = Reason(15);
    pub const SHUTTING_DOWN: Reason = Reason(16);
    pub const NET_DEBIT_CAP: Reason = Reason(17);
    pub const LEDGER_BASE: u8 = 100;

    pub fn ledger(outcome: Outcome) -> Reason {
        Reason(Reason::LEDGER_BASE + outcome.code())
    }

    pub fn outcome(self) -> Option<Outcome> {
        self.0
            .checked_sub(Reason::LEDGER_BASE)
            .and_then(Outcome::from_code)
    }
}

/// The response code for a ledger outcome. Every outcome maps to exactly one code, here.
pub fn code_for(outcome: Outcome) -> Code {
    use Outcome as O;
    match outcome {
        O::Ok | O::Exists => Code::Approved,
        O::ExistsWithDifferentFields => Code::Duplicate,
        O::AmountMustNotBeZero
        | O::ExceedsPendingTransferAmount
        | O::PendingTransferHasDifferentAmount => Code::InvalidAmount,
        O::AccountNotFound | O::DebitAccountNotFound | O::CreditAccountNotFound => {
            Code::InvalidAccount
        }
        O::ExceedsCredits => Code::InsufficientFunds,
        O::ExceedsDebits
        | O::OverflowsDebitsPending
        | O::OverflowsCreditsPending
        | O::OverflowsDebitsPosted
        | O::OverflowsCreditsPosted
        | O::OverflowsDebits
        | O::OverflowsCredits => Code::ExceedsLimit,
        O::DebitAccountClosed | O::CreditAccountClosed => Code::DoNotHonour,
        O::AccountLimitReached | O::PendingLimitReached => Code::Busy,
        // The switch builds chains itself; these mean a bug, not a bad request.
        O::LinkedEventFailed | O::LinkedEventChainOpen => Code::Malfunction,
        O::IdMustNotBeZero
        | O::IdMustNotBeIntMax
        | O::FlagsAreMutuallyExclusive
        | O::OwnerMustNotBeZero
        | O::PendingIdMustBeZero
        | O::PendingIdMustNotBeZero
        | O::PendingIdMustNotBeIntMax
        | O::PendingIdMustBeDifferent
        | O::ExpiryMustBeInTheFuture
        | O::DebitAccountIdMustNotBeZero
        | O::DebitAccountIdMustNotBeIntMax
        | O::CreditAccountIdMustNotBeZero
        | O::CreditAccountIdMustNotBeIntMax
        | O::AccountsMustBeDifferent
        | O::AccountsMustHaveTheSameCurrency
        | O::CurrencyMustMatchAccounts
        | O::PendingTransferNotFound
        | O::PendingTransferNotPending
        | O::PendingTransferHasDifferentDebitAccount
        | O::PendingTransferHasDifferentCreditAccount
        | O::PendingTransferHasDifferentCurrency
        | O::PendingTransferAlreadyPosted
        | O::PendingTransferAlreadyVoided
        | O::PendingTransferExpired => Code::InvalidTransaction,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_print_as_two_digits() {
        for code in Code::ALL {
            assert_eq!(Code::from_u8(code.as_u8()), Some(code));
        }
        assert_eq!(Code::from_u8(1), None);
        assert_eq!(Code::Approved.digits(), "00");
        assert_eq!(Code::InsufficientFunds.digits(), "51");
    }

    #[test]
    fn every_outcome_has_a_code_and_a_reason() {
        for outcome in Outcome::ALL {
            let code = code_for(outcome);
            assert_eq!(code == Code::Approved, outcome.is_success(), "{outcome:?}");
            assert_eq!(Reason::ledger(outcome).outcome(), Some(outcome));
        }
        assert_eq!(code_for(Outcome::ExceedsCredits), Code::InsufficientFunds);
        assert_eq!(
            code_for(Outcome::ExistsWithDifferentFields),
            Code::Duplicate
        );
        assert_eq!(code_for(Outcome::PendingLimitReached), Code::Busy);
        assert_eq!(Reason::NOT_OWNER.outcome(), None);
    }
}
