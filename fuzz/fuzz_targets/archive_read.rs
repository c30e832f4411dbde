//! Fuzz target: see `chorus_core::fuzz::archive_read`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chorus_core::fuzz::archive_read(data));
