#![no_main]
//! See `ledger::fuzz_check::log_record` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ledger::fuzz_check::log_record(data));
