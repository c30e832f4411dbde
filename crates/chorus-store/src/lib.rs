//! # chorus-store
//!
//! Durable storage of one Chorus replica on redb (`docs/design/store.md`), and [`Replica`]:
//! node key + store + timeline, the synchronous core a node or the CLI drives. Also the long
//! offline work on a replica: [`import`] (an archive, pipelined) and [`audit`] (`chorus
//! verify`), reporting through [`progress::Progress`].

pub mod audit;
pub mod import;
pub mod payloads;
pub mod progress;
pub mod quarantine;
pub mod replica;
pub mod store;
pub mod tables;

pub use replica::{IngestReport, Replica, ReplicaError};
pub use store::{Batch, IntegrityReport, Pruned, Store, StoreError, StoreReader, StoreSnapshot};

pub mod verify;
pub use verify::{check_raw_parallel, decode_parallel};
