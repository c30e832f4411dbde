//! # chorus-kairos
//!
//! The KAIROS phase engine of the original system, ported as a deterministic Chorus
//! [`Machine`](chorus_core::Machine): every replica folding the same total order gets the same
//! state bit for bit, on x86-64 and ARM alike (f64 arithmetic, `libm` for every transcendental
//! function, keyed noise, canonical NaN/zero in the serialisation).
//! The math and the state layout are in `docs/design/kairos.md`.

pub mod body;
pub mod council;
pub mod encoder;
pub mod engine;
pub mod guard;
pub mod hermitian;
pub mod machine;
pub mod noise;
pub mod state;
pub mod state_codec;
pub mod ward;

pub use machine::{Kairos2Machine, Kairos3Machine, KairosMachine, KairosState};
