//! Fuzz target: see `chorus_core::fuzz::wire_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chorus_core::fuzz::wire_request(data));
