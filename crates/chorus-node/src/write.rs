//! # What a local write answers
//!
//! Every local write (the API's `POST /v1/events`, the gateway's stimuli, the emissaries'
//! intents and registrations) goes to the actor as items `(kind, body)` and comes back as the
//! ids of the durable events or one of these errors, which the API maps to an HTTP status.

use chorus_core::{EventError, EventId};
use chorus_store::ReplicaError;
use tokio::sync::oneshot;

/// Where the actor sends a local write's outcome.
pub type Reply = oneshot::Sender<Result<Vec<EventId>, WriteError>>;

/// Why a local write was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// An event every peer would refuse (too large, bad kind, bad body, a key that is not a
    /// member): not signed, not stored. The message names the bound.
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

impl WriteError {
    /// The HTTP status the API answers with: 413 for a size bound, 422 for any other refusal,
    /// 403 while this node's key is not a member, 503 when the node cannot take writes now,
    /// 500 for a failure.
    pub fn http_status(&self) -> u16 {
        match self {
            WriteError::Refused {
                error: EventError::TooLarge { .. } | EventError::BodyTooLarge { .. },
                ..
            } => 413,
            WriteError::TooLarge(_) => 413,
            WriteError::Refused { .. } => 422,
            WriteError::NotMember(_) => 403,
            WriteError::Unavailable(_) => 503,
            WriteError::Failed(_) => 500,
        }
    }
}

impl From<ReplicaError> for WriteError {
    fn from(e: ReplicaError) -> Self {
        match e {
            ReplicaError::Refused {
                error: EventError::UnknownAuthor(_),
                ..
            } => WriteError::NotMember(e.to_string()),
            ReplicaError::Refused { ref error, .. } => WriteError::Refused {
                error: error.clone(),
                message: e.to_string(),
            },
            other => WriteError::Failed(other.to_string()),
        }
    }
}
