//! The ledger: a sharded, double-entry state machine.
//!
//! It does no I/O and never reads a clock: batches of events go in with the time they happen
//! at, outcomes come out, and the same batches in the same order always give the same state
//! (checked by `Ledger::digest`). Persistence, networking and time belong to the caller.

mod account;
mod currency;
mod digest;
mod event;
mod ledger;
mod outcome;
pub mod snapshot_file;
pub mod storage;
mod transfer;
mod types;
pub mod wal;

pub use account::{Account, AccountFlags, Balances, NewAccount};
pub use currency::{AmountError, Currency, balance_to_decimal};
pub use digest::Digest;
pub use event::{Event, Op};
pub use ledger::{BatchError, Config, ConfigError, Ledger, SHARDS_MAX, Stats, Totals};
pub use outcome::Outcome;
pub use transfer::{Expired, Transfer, TransferKind, TransferRecord, TransferState};
pub use types::{AccountId, Amount, ParticipantId, Timestamp, TransferId};
