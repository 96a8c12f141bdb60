//! Accounts: who owns them, which currency, which balance rules, and their four balances.

use crate::codec::{self, CodecError};
use crate::currency::Currency;
use crate::types::{AccountId, ParticipantId};

/// Balance rules and state of an account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AccountFlags(u16);

impl AccountFlags {
    /// `debits_pending + debits_posted <= credits_posted` (a customer's wallet: no overdraft).
    pub const DEBITS_MUST_NOT_EXCEED_CREDITS: AccountFlags = AccountFlags(1 << 0);
    /// `credits_pending + credits_posted <= debits_posted` (a funding account that is only drawn).
    pub const CREDITS_MUST_NOT_EXCEED_DEBITS: AccountFlags = AccountFlags(1 << 1);
    /// No new transfers and no posts; holds can still be voided or expire.
    pub const CLOSED: AccountFlags = AccountFlags(1 << 2);
    const KNOWN: u16 = 0b111;

    pub const fn empty() -> Self {
        Self(0)
    }

    pub const fn bits(self) -> u16 {
        self.0
    }

    /// `None` if a bit is set that has no meaning.
    pub const fn from_bits(bits: u16) -> Option<Self> {
        if bits & !Self::KNOWN == 0 {
            Some(Self(bits))
        } else {
            None
        }
    }

    pub const fn contains(self, other: AccountFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn union(self, other: AccountFlags) -> Self {
        Self(self.0 | other.0)
    }

    pub const fn without(self, other: AccountFlags) -> Self {
        Self(self.0 & !other.0)
    }
}

/// What a client sends to create an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NewAccount {
    pub id: AccountId,
    pub currency: Currency,
    pub owner: ParticipantId,
    pub flags: AccountFlags,
}

/// The four balances, in minor units. Each only grows by checked addition, and pending
/// balances shrink only when a hold is resolved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Balances {
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
}

impl Balances {
    /// Bytes `put` writes.
    pub const ENCODED_LEN: usize = 4 * 16;

    /// The encoding snapshots and remembered responses hold: the four balances as u128,
    /// debits pending, debits posted, credits pending, credits posted.
    pub fn put(&self, out: &mut Vec<u8>) {
        let Balances {
            debits_pending,
            debits_posted,
            credits_pending,
            credits_posted,
        } = *self;
        for v in [
            debits_pending,
            debits_posted,
            credits_pending,
            credits_posted,
        ] {
            codec::put_u128(out, v);
        }
    }

    /// Reads what `put` wrote.
    pub fn read(r: &mut codec::Reader<'_>) -> Result<Balances, CodecError> {
        Ok(Balances {
            debits_pending: r.u128("debits pending")?,
            debits_posted: r.u128("debits posted")?,
            credits_pending: r.u128("credits pending")?,
            credits_posted: r.u128("credits posted")?,
        })
    }

    /// What the account holder may spend now: posted credits less posted and held debits
    /// (negative for an account that is owed more than it holds).
    pub fn available(&self) -> i128 {
        let held = self.debits_posted.saturating_add(self.debits_pending);
        let credits = i128::try_from(self.credits_posted).unwrap_or(i128::MAX);
        let held = i128::try_from(held).unwrap_or(i128::MAX);
        credits.saturating_sub(held)
    }
}

/// An account as the ledger holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Account {
    pub id: AccountId,
    pub currency: Currency,
    pub owner: ParticipantId,
    pub flags: AccountFlags,
    pub balances: Balances,
}

impl Account {
    pub(crate) fn open(new: &NewAccount) -> Self {
        Account {
            id: new.id,
            currency: new.currency,
            owner: new.owner,
            flags: new.flags,
            balances: Balances::default(),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.flags.contains(AccountFlags::CLOSED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout snapshots hold: four u128, debits pending first, credits posted last.
    #[test]
    fn balances_are_written_in_field_order_and_read_back() {
        let balances = Balances {
            debits_pending: 1,
            debits_posted: 2,
            credits_pending: 3,
            credits_posted: u128::MAX - 4,
        };
        let mut out = vec![0xee];
        balances.put(&mut out);
        assert_eq!(out.len(), 1 + Balances::ENCODED_LEN);
        let fields: Vec<u128> = out[1..]
            .chunks_exact(16)
            .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")))
            .collect();
        assert_eq!(fields, [1, 2, 3, u128::MAX - 4]);
        let mut r = codec::Reader::with_base(&out[1..], 1);
        assert_eq!(Balances::read(&mut r), Ok(balances));
        assert!(r.is_empty());
        assert_eq!(
            Balances::read(&mut codec::Reader::new(&out[1..60])),
            Err(CodecError::Truncated {
                what: "credits posted",
                at: 48,
                needed: 16,
                available: 11
            })
        );
    }
}
