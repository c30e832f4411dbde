//! # chorus-core
//!
//! The pure, deterministic core of Chorus: no I/O, no clocks, no ambient randomness, no async
//! runtime. Everything a replica decides — whether an event is valid, where it sorts, which
//! events the state skips, what the state is — is computed here, so the node, the store, the
//! simulator and the tests all run the same code.
//!
//! * [`event`]: the envelope (`docs/design/event-format.md`), signing, context-free checks.
//! * [`timeline`]: DAG, pending set, total order `(lc, cid)`, exclusion, checkpoints, replay,
//!   settled frontier.
//! * [`machine`]: the state-machine trait and a trivial counter machine.
//! * [`storage`]: what a replica needs from its disk ([`storage::Storage`]; redb in
//!   `chorus-store`, [`storage::MemStore`] in memory); [`local`]: timeline + storage + key.
//! * [`sync`]: the sync protocol's messages and decisions; [`proto`]: the node's writes.
//!
//! ```
//! use chorus_core::{crypto::Keypair, genesis::Genesis, event::{UnsignedEvent, kind},
//!                   machine::CounterMachine, timeline::{Timeline, NoBlocks}};
//! let admin = Keypair::from_seed([1; 32]);
//! let body = Genesis::body_ipld(&Genesis::new_body("demo", admin.author(), "counter/1"));
//! let genesis = UnsignedEvent { timeline: None, author: admin.author(), seq: 1, lamport: 0,
//!     parents: vec![], kind: kind::GENESIS.into(), body }.sign(&admin);
//! let mut a = Timeline::new(genesis.clone(), CounterMachine).unwrap();
//! let mut b = Timeline::new(genesis, CounterMachine).unwrap();
//! let ev = a.prepare(admin.author(), kind::STIMULUS, "hello".into()).sign(&admin);
//! a.insert(ev.clone(), &NoBlocks).unwrap();
//! b.insert(ev, &NoBlocks).unwrap();
//! assert_eq!(a.state_hash(), b.state_hash());
//! ```

pub mod archive;
pub mod codec;
pub mod crypto;
pub mod event;
pub mod finality;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
pub mod genesis;
mod id_index;
pub mod ids;
pub mod limits;
pub mod local;
pub mod machine;
pub mod membership;
pub mod payload;
pub mod proto;
pub mod snapshot;
pub mod storage;
pub mod sync;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod timeline;

pub use event::{ErrorClass, EventError, SignedEvent, UnsignedEvent};
pub use ids::{AuthorId, EventId};
pub use machine::Machine;
pub use timeline::Timeline;
