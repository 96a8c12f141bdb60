#![no_main]
//! See `switch::fuzz_check::wire_frames` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| switch::fuzz_check::wire_frames(data));
