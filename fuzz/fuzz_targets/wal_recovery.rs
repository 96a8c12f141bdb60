#![no_main]
//! See `ledger::fuzz_check::wal_recovery` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ledger::fuzz_check::wal_recovery(data));
