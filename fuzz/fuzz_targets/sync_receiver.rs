//! Fuzz target: see `chorus_core::fuzz::sync_receiver`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chorus_core::fuzz::sync_receiver(data));
