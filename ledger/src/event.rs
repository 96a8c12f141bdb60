//! Events: what a batch submitted to `Ledger::apply` is made of.

use crate::account::NewAccount;
use crate::transfer::Transfer;
use crate::types::AccountId;

/// One operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    CreateAccount(NewAccount),
    Transfer(Transfer),
    /// Closes (`closed = true`) or reopens an account. A closed account takes no new transfers
    /// and no posts; its holds can still be voided or expire.
    SetAccountClosed {
        id: AccountId,
        closed: bool,
    },
}

/// An operation and whether it is linked to the next one. A run of linked events ending with
/// an unlinked one is a chain: all of it applies, or none of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    pub op: Op,
    pub linked: bool,
}

impl Event {
    pub fn new(op: Op) -> Self {
        Event { op, linked: false }
    }

    pub fn linked(op: Op) -> Self {
        Event { op, linked: true }
    }
}

impl From<Transfer> for Event {
    fn from(t: Transfer) -> Self {
        Event::new(Op::Transfer(t))
    }
}

impl From<NewAccount> for Event {
    fn from(a: NewAccount) -> Self {
        Event::new(Op::CreateAccount(a))
    }
}
