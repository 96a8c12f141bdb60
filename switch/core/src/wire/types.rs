//! Field types of the wire protocol: ids, amounts, codes and bounded strings.
//!
//! These are deliberately not the ledger's types: the wire is a contract with clients and
//! changes only with a new protocol version, the ledger may change whenever it likes. The
//! switch translates between the two in one place.
//!
//! Bounded fields (numbers, names, payloads, messages) can only be built within their bounds,
//! so anything that encodes also decodes.

use std::fmt;

/// What went wrong with one field's value, when building it or when decoding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("{len} bytes, at most {max} allowed")]
    TooLong { len: usize, max: usize },
    #[error("not ASCII digits 0-9")]
    NotDigits,
    #[error("not valid UTF-8")]
    InvalidUtf8,
    #[error("unknown value {value}")]
    UnknownValue { value: u64 },
}

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub $inner);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:#x})", stringify!($name), self.0)
            }
        }
    };
}

id_newtype!(
    /// The client-chosen 128-bit id of one operation; also its idempotency key.
    RequestId(u128)
);
id_newtype!(
    /// A ledger account.
    AccountId(u128)
);
id_newtype!(
    /// A ledger transfer, as assigned by the switch.
    TransferId(u128)
);
id_newtype!(
    /// A participant: a bank, PSP or wallet operator.
    ParticipantId(u64)
);
id_newtype!(
    /// A clearing window.
    WindowId(u64)
);

/// An amount in minor units of its currency (cents for CNY, yen for JPY).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(pub u64);

/// An ISO 4217 numeric currency code (156 = CNY). The codec carries any value; the switch
/// answers a currency it does not know with response code 12.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Currency(pub u16);

/// Nanoseconds since the Unix epoch; 0 means "not yet" (a window that is still open).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

/// What a participant does, as bits. Bits other than the two below are reserved: the codec
/// carries them, the switch answers them with response code 12.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Roles(pub u8);

impl Roles {
    pub const ISSUER: Roles = Roles(1 << 0);
    pub const ACQUIRER: Roles = Roles(1 << 1);

    pub const fn contains(self, other: Roles) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Balance rules of an account, as bits (the same meanings as the ledger's). Other bits are
/// reserved: the codec carries them, the switch answers them with response code 12.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AccountFlags(pub u16);

impl AccountFlags {
    /// Debits (pending and posted) must not exceed posted credits: no overdraft.
    pub const DEBITS_MUST_NOT_EXCEED_CREDITS: AccountFlags = AccountFlags(1 << 0);
    /// Credits (pending and posted) must not exceed posted debits.
    pub const CREDITS_MUST_NOT_EXCEED_DEBITS: AccountFlags = AccountFlags(1 << 1);
    /// No new transfers.
    pub const CLOSED: AccountFlags = AccountFlags(1 << 2);

    pub const fn contains(self, other: AccountFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// A card or wallet number (PAN): 0 to 19 ASCII digits. Stored inline, so copying one never
/// allocates. `Debug` masks all but the first six and last four digits, so that numbers do
/// not end up in logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CardNumber {
    len: u8,
    digits: [u8; CardNumber::LEN_MAX],
}

impl CardNumber {
    pub const LEN_MAX: usize = 19;
    pub const EMPTY: CardNumber = CardNumber {
        len: 0,
        digits: [0; CardNumber::LEN_MAX],
    };

    /// Accepts 0 to 19 ASCII digits.
    pub fn new(digits: &str) -> Result<Self, FieldError> {
        Self::from_bytes(digits.as_bytes())
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FieldError> {
        check_len(bytes.len(), Self::LEN_MAX)?;
        if !bytes.iter().all(u8::is_ascii_digit) {
            return Err(FieldError::NotDigits);
        }
        let mut number = CardNumber::EMPTY;
        for (to, from) in number.digits.iter_mut().zip(bytes) {
            *to = *from;
        }
        number.len = u8::try_from(bytes.len()).map_err(|_| FieldError::TooLong {
            len: bytes.len(),
            max: Self::LEN_MAX,
        })?;
        Ok(number)
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.digits.get(..usize::from(self.len)).unwrap_or_default()
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits get in, so this never falls back.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN_HEAD: usize = 6;
        const SHOWN_TAIL: usize = 4;
        let digits = self.as_str();
        f.write_str("CardNumber(")?;
        if digits.len() > SHOWN_HEAD + SHOWN_TAIL {
            let head = digits.get(..SHOWN_HEAD).unwrap_or_default();
            let tail = digits.get(digits.len() - SHOWN_TAIL..).unwrap_or_default();
            f.write_str(head)?;
            for _ in 0..digits.len() - SHOWN_HEAD - SHOWN_TAIL {
                f.write_str("*")?;
            }
            f.write_str(tail)?;
        } else {
            for _ in 0..digits.len() {
                f.write_str("*")?;
            }
        }
        f.write_str(")")
    }
}

/// A participant's display name: at most 64 bytes of UTF-8.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct ParticipantName(String);

impl ParticipantName {
    pub const LEN_MAX: usize = 64;

    pub fn new(name: impl Into<String>) -> Result<Self, FieldError> {
        let name = name.into();
        check_len(name.len(), Self::LEN_MAX)?;
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The payload of an echo: at most 256 bytes, returned unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct EchoPayload(Vec<u8>);

impl EchoPayload {
    pub const LEN_MAX: usize = 256;

    pub fn new(payload: impl Into<Vec<u8>>) -> Result<Self, FieldError> {
        let payload = payload.into();
        check_len(payload.len(), Self::LEN_MAX)?;
        Ok(Self(payload))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A piece of a report file: at most 32 768 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct ReportChunk(Vec<u8>);

impl ReportChunk {
    pub const LEN_MAX: usize = 32_768;

    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, FieldError> {
        let bytes = bytes.into();
        check_len(bytes.len(), Self::LEN_MAX)?;
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The human-readable part of an error frame: at most 255 bytes of UTF-8.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct ErrorMessage(String);

impl ErrorMessage {
    pub const LEN_MAX: usize = 255;

    pub fn new(message: impl Into<String>) -> Result<Self, FieldError> {
        let message = message.into();
        check_len(message.len(), Self::LEN_MAX)?;
        Ok(Self(message))
    }

    /// Cuts `message` at the last character boundary within the bound, for messages built
    /// from something the peer sent.
    pub fn truncated(message: &str) -> Self {
        let mut end = message.len().min(Self::LEN_MAX);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        Self(message.get(..end).unwrap_or_default().to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_len(len: usize, max: usize) -> Result<(), FieldError> {
    if len > max {
        Err(FieldError::TooLong { len, max })
    } else {
        Ok(())
    }
}

/// The ISO 8583 response code of one operation, carried as its two-digit decimal value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ResponseCode {
    /// 00: done. Repeating the request returns the same response.
    Approved = 0,
    /// 05: declined by the issuer or the switch, no finer reason given.
    DoNotHonour = 5,
    /// 12: the operation is not valid here (unknown authorization, wrong state, bad field value).
    InvalidTransaction = 12,
    /// 13: the amount is zero, too large, or more than may be captured or refunded.
    InvalidAmount = 13,
    /// 14: no such card, wallet or account.
    InvalidCardOrAccount = 14,
    /// 51: not enough available balance.
    InsufficientFunds = 51,
    /// 57: the caller may not do this (not the owner, not the admin).
    NotPermitted = 57,
    /// 61: a participant's net debit cap would be exceeded.
    ExceedsLimit = 61,
    /// 91: overloaded or unavailable: nothing was done, retry later with the same request id.
    SystemBusy = 91,
    /// 92: the number resolves to no issuer.
    CannotRoute = 92,
    /// 94: the request id was used before with other fields.
    DuplicateWithOtherFields = 94,
    /// 96: an internal failure: nothing was done.
    SystemMalfunction = 96,
}

impl ResponseCode {
    pub const ALL: [ResponseCode; 12] = [
        ResponseCode::Approved,
        ResponseCode::DoNotHonour,
        ResponseCode::InvalidTransaction,
        ResponseCode::InvalidAmount,
        ResponseCode::InvalidCardOrAccount,
        ResponseCode::InsufficientFunds,
        ResponseCode::NotPermitted,
        ResponseCode::ExceedsLimit,
        ResponseCode::SystemBusy,
        ResponseCode::CannotRoute,
        ResponseCode::DuplicateWithOtherFields,
        ResponseCode::SystemMalfunction,
    ];

    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.as_u8() == value)
    }
}

/// A finer-grained reason beside the response code. Informative only: clients may log and
/// display it but must decide on the response code alone, and must accept values not listed
/// here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Reason(pub u8);

impl Reason {
    pub const NONE: Reason = Reason(0);
    pub const UNKNOWN_NUMBER: Reason = Reason(1);
    pub const NO_ROUTE: Reason = Reason(2);
    pub const ACCOUNT_NOT_FOUND: Reason = Reason(3);
    pub const ACCOUNT_CLOSED: Reason = Reason(4);
    pub const CURRENCY_MISMATCH: Reason = Reason(5);
    pub const UNKNOWN_CURRENCY: Reason = Reason(6);
    pub const AMOUNT_ZERO: Reason = Reason(7);
    pub const INSUFFICIENT_FUNDS: Reason = Reason(8);
    pub const NET_DEBIT_CAP: Reason = Reason(9);
    pub const AUTHORIZATION_NOT_FOUND: Reason = Reason(10);
    pub const AUTHORIZATION_EXPIRED: Reason = Reason(11);
    pub const AUTHORIZATION_CAPTURED: Reason = Reason(12);
    pub const AUTHORIZATION_REVERSED: Reason = Reason(13);
    pub const EXCEEDS_AUTHORIZED: Reason = Reason(14);
    pub const EXCEEDS_REFUNDABLE: Reason = Reason(15);
    pub const NOT_OWNER: Reason = Reason(16);
    pub const ADMIN_REQUIRED: Reason = Reason(17);
    pub const ID_REUSED: Reason = Reason(18);
    pub const INVALID_ID: Reason = Reason(19);
    pub const RESERVED_BITS: Reason = Reason(20);
    pub const ALREADY_EXISTS: Reason = Reason(21);
    pub const OVERLOADED: Reason = Reason(22);
    pub const STORAGE_FAILURE: Reason = Reason(23);
    pub const WINDOW_NOT_FOUND: Reason = Reason(24);
    pub const ROUTES_INVALID: Reason = Reason(25);
    pub const INTERNAL: Reason = Reason(26);
    pub const RESPONSE_TOO_LARGE: Reason = Reason(27);
    /// The log's disk is full: nothing more is acknowledged until space is freed and the
    /// switch restarted; a retry with the same request id is then safe.
    pub const STORAGE_FULL: Reason = Reason(28);
    /// A ReportFile of a window that is closed but whose reports are not written yet: retry.
    pub const REPORT_NOT_READY: Reason = Reason(29);
    /// The participant lacks the role the operation needs: the acquirer role to own the
    /// merchant side of a payment, the issuer role to be a route's issuer.
    pub const ROLE_MISSING: Reason = Reason(30);
    /// A membership change the cluster cannot make: a member not in the leader's
    /// configuration, one to remove that is not a voter, one to add that is one already, or
    /// no voter left.
    pub const MEMBERSHIP_INVALID: Reason = Reason(31);
    /// A membership change is still being made: retry once it is done.
    pub const MEMBERSHIP_CHANGING: Reason = Reason(32);
    /// The operation's deadline (the frame's budget, or the server's default for the
    /// operation) passed before the switch got to it: nothing was done.
    pub const DEADLINE_PASSED: Reason = Reason(33);
    /// Shed for overload: the ledger stage's queueing delay is over its target, and new
    /// payments give way to operations on money already held. Nothing was done; the
    /// response frame's retry-after hint says when to send it again.
    pub const SHED: Reason = Reason(34);

    const NAMES: [&'static str; 35] = [
        "none",
        "unknown number",
        "no route",
        "account not found",
        "account closed",
        "currency mismatch",
        "unknown currency",
        "amount zero",
        "insufficient funds",
        "net debit cap",
        "authorization not found",
        "authorization expired",
        "authorization captured",
        "authorization reversed",
        "exceeds authorized",
        "exceeds refundable",
        "not owner",
        "admin required",
        "id reused",
        "invalid id",
        "reserved bits",
        "already exists",
        "overloaded",
        "storage failure",
        "window not found",
        "routes invalid",
        "internal",
        "response too large",
        "storage full",
        "report not ready",
        "role missing",
        "membership invalid",
        "membership changing",
        "deadline passed",
        "shed",
    ];

    /// The listed name of this reason, if it has one.
    pub fn name(self) -> Option<&'static str> {
        Self::NAMES.get(usize::from(self.0)).copied()
    }
}

/// Which account a balance inquiry asks about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BalanceTarget {
    Account(AccountId),
    Number(CardNumber),
}

impl BalanceTarget {
    pub(crate) const ACCOUNT_TAG: u8 = 1;
    pub(crate) const NUMBER_TAG: u8 = 2;
}

/// What became of the request a status inquiry looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TransferState {
    /// No request with that id (or none the caller may see).
    NotFound = 0,
    /// An authorization whose hold is live.
    Pending = 1,
    /// An authorization that was captured, fully or partly.
    Captured = 2,
    /// An authorization that was reversed.
    Reversed = 3,
    /// An authorization whose hold expired.
    Expired = 4,
    /// A single-phase transfer (sale, refund, fund) that moved money.
    Posted = 5,
    /// A request that was declined.
    Declined = 6,
}

impl TransferState {
    pub const ALL: [TransferState; 7] = [
        TransferState::NotFound,
        TransferState::Pending,
        TransferState::Captured,
        TransferState::Reversed,
        TransferState::Expired,
        TransferState::Posted,
        TransferState::Declined,
    ];

    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|state| *state as u8 == value)
    }
}

/// The state of a clearing window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum WindowState {
    /// No window: only in a result that is not approved, whose fields are all zero. An
    /// approved result with it is rejected.
    None = 0,
    /// Collecting captures, sales and refunds.
    Open = 1,
    /// Cut off, netted and settled.
    Closed = 2,
}

impl WindowState {
    pub const ALL: [WindowState; 3] = [WindowState::None, WindowState::Open, WindowState::Closed];

    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|state| *state as u8 == value)
    }
}
