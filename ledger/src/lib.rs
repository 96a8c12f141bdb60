//! The ledger: a sharded, double-entry state machine.
//!
//! The state machine (`Ledger`) does no I/O and never reads a clock: batches of events go in
//! with the time they happen at, outcomes come out, and the same batches in the same order
//! always give the same state (checked by `Ledger::digest`). Persistence lives beside it, behind
//! the `storage::Storage` trait: the write-ahead log (`wal`), snapshot files (`snapshot_file`),
//! and `durable::DurableLedger`, which ties them to the state machine.

/// Property-test settings for the tests of every crate here: a failure's seed persists in the
/// top-level `proptest-regressions/` file named, and `PROPTEST_CASES` overrides the number of
/// cases, whose default (256, or the one given) fits CI on two cores. Expands where it is used,
/// which needs `proptest`: `ledger::proptest_config!("name.txt")`, or `("name.txt", 48)`.
#[doc(hidden)]
#[macro_export]
macro_rules! proptest_config {
    ($file:literal) => {
        $crate::proptest_config!($file, 256)
    };
    ($file:literal, $cases:expr) => {
        $crate::proptest_config!($file, $cases, "/../")
    };
    // `$up`: from the calling crate's directory to the workspace's, e.g. "/../../" for a crate
    // two levels down.
    ($file:literal, $cases:expr, $up:literal) => {
        proptest::prelude::ProptestConfig {
            cases: std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or($cases),
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::Direct(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    $up,
                    "proptest-regressions/",
                    $file
                )),
            )),
            ..proptest::prelude::ProptestConfig::default()
        }
    };
}

mod account;
pub mod bell;
pub mod clearing;
pub mod codec;
mod currency;
mod digest;
pub mod durable;
mod event;
#[doc(hidden)]
pub mod fuzz_check;
mod ledger;
mod outcome;
pub mod position_index;
mod record;
mod snapshot;
pub mod snapshot_file;
pub mod storage;
mod store;
mod transfer;
mod types;
pub mod wal;

pub use account::{Account, AccountFlags, Balances, NewAccount};
pub use currency::{AmountError, Currency, balance_to_decimal};
pub use digest::Digest;
pub use durable::{DurableError, DurableLedger, DurableOptions, Recovery};
pub use event::{Event, Op};
pub use ledger::{
    BatchError, Config, ConfigError, Ledger, REMEMBERED_LIMIT, SHARDS_MAX, Stats, Totals,
};
pub use outcome::Outcome;
pub use record::{LogRecord, RecordError};
pub use snapshot::{Capture, SnapshotError};
pub use transfer::{Expired, Transfer, TransferKind, TransferRecord, TransferState};
pub use types::{AccountId, Amount, ParticipantId, Timestamp, TransferId};
