//! # What a local write answers
//!
//! Every local write (the API's `POST /v1/events`, the gateway's stimuli, the emissaries'
//! intents and registrations) is a list of items `(kind, body)` with a [`WriteId`] chosen by
//! the caller, and comes back as the ids of the durable events or one of these errors. The
//! HTTP edge maps an error to a status (`chorus-node`'s `write::http_status`).

use crate::{EventError, EventId};

/// The caller's name for one local write: its outcome comes back under the same id. Unique
/// among the writes one node has in flight (the actor counts them up from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteId(pub u64);

/// A local write's outcome: the ids of its events, in order, or why not.
pub type WriteResult = Result<Vec<EventId>, WriteError>;

/// Why a local write was not acknowledged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    /// An event every peer would refuse (too large, bad kind, bad body): not signed, not
    /// stored. The message names the bound.
    #[error("{message}")]
    Refused { error: EventError, message: String },
    /// More than one write may carry here (a light node submits a write to a full node in one
    /// message): never retry it as it is.
    #[error("{0}")]
    TooLarge(String),
    /// This node's key is not (yet) a member in its view of the timeline: every peer would
    /// refuse its events. Retry once the admin's `member add` has arrived.
    #[error("{0}")]
    NotMember(String),
    /// The node takes no writes right now (its write gate is closed, a light node's outbox is
    /// full or no full node stored the write in time): retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The write failed on this node (store I/O) or a full node refused a light node's events.
    #[error("{0}")]
    Failed(String),
}
