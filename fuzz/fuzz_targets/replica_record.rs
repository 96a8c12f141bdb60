#![no_main]
//! See `switch::fuzz_check::replica_record` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| switch::fuzz_check::replica_record(data));
