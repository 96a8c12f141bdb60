//! Identifier, amount and time newtypes.
//!
//! Identifiers are chosen by clients (128 bits, like TigerBeetle's), so `0` and `u128::MAX` are
//! reserved as invalid: `0` is what an uninitialised field looks like on the wire, and `MAX` is
//! kept free as a sentinel.

use std::fmt;

macro_rules! id128 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u128);

        impl $name {
            pub const fn new(value: u128) -> Self {
                Self(value)
            }

            pub const fn get(self) -> u128 {
                self.0
            }

            /// Neither `0` nor `u128::MAX`.
            pub const fn is_valid(self) -> bool {
                self.0 != 0 && self.0 != u128::MAX
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:#x})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:032x}", self.0)
            }
        }
    };
}

id128!(
    /// An account, chosen by whoever creates it.
    AccountId
);
id128!(
    /// A transfer (and its idempotency key), chosen by the client that submits it.
    TransferId
);

/// A participant (bank, PSP, wallet operator) that owns accounts. `0` is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ParticipantId(pub u64);

impl ParticipantId {
    pub const fn is_valid(self) -> bool {
        self.0 != 0
    }
}

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An amount of one transfer in minor units of its currency (cents for CNY, yen for JPY).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(pub u64);

impl Amount {
    pub const ZERO: Amount = Amount(0);

    pub const fn get(self) -> u64 {
        self.0
    }
}

/// A point in time as the caller sees it: nanoseconds since the Unix epoch. The ledger never
/// reads a clock; every operation that depends on time takes one of these as an argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Used as an expiry: "never".
    pub const NEVER: Timestamp = Timestamp(0);

    pub const fn get(self) -> u64 {
        self.0
    }

    pub const fn from_secs(secs: u64) -> Self {
        Self(secs.saturating_mul(1_000_000_000))
    }
}
