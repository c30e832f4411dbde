//! Fuzz target: see `chorus_core::fuzz::event_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chorus_core::fuzz::event_decode(data));
