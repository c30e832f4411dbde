//! # The process harness
//!
//! What every real-process test and bench needs, once: start a `chorus node` process (directly,
//! under an emulator, or inside a network namespace), learn its addresses from the lines it
//! prints, stop it gracefully or SIGKILL it, and talk JSON to its HTTP API.
//!
//! Users: `chorus-cli`'s tests (`tests/common`), `chorus-bench`'s `mesh-bench`, and
//! `chorus-node`'s in-process tests (the HTTP client only).

pub mod api;
pub mod process;

pub use api::Api;
pub use process::{NodeCommand, NodeProcess};
