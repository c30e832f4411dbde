//! # The node's protocol, without I/O
//!
//! What a node decides about its writes and its peers, as plain state machines that take
//! inputs (with the time as a number) and return what to do. The actor in `chorus-node` maps
//! the network and the API onto them; the simulator drives the same types.
//!
//! * [`write`]: what a local write answers ([`WriteId`], [`WriteError`]).
//! * [`outbox`]: a light node's writes waiting for a full node to store them.
//! * [`node`]: the node state machine ([`node::NodeState`]) that uses them.

pub mod node;
pub mod outbox;
pub mod write;

pub use write::{WriteError, WriteId, WriteResult};
