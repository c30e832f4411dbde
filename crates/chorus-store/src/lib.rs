//! # chorus-store
//!
//! Durable storage of one Chorus replica on redb (`docs/design/store.md`), and [`Replica`]:
//! node key + store + timeline, the synchronous core a node or the CLI drives.

pub mod quarantine;
pub mod replica;
pub mod store;
pub mod tables;

pub use replica::{IngestReport, Replica, ReplicaError};
pub use store::{Batch, IntegrityReport, Pruned, Store, StoreError};

pub mod verify;
pub use verify::{check_raw_parallel, decode_parallel};
