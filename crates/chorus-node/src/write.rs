//! # What a local write answers, at the HTTP edge
//!
//! Every local write (the API's `POST /v1/events`, the gateway's stimuli, the emissaries'
//! intents and registrations) goes to the actor as items `(kind, body)` and comes back as the
//! ids of the durable events or a [`WriteError`] (defined with the node's protocol in
//! `chorus_core::proto`), which the API maps to an HTTP status with [`http_status`].

pub use chorus_core::proto::{WriteError, WriteId};
use chorus_core::{ErrorClass, EventError, EventId};
use tokio::sync::oneshot;

/// Where the actor sends a local write's outcome.
pub type Reply = oneshot::Sender<Result<Vec<EventId>, WriteError>>;

/// The HTTP status the API answers a write error with: 413 for a size bound, 422 for any other
/// invalid event, 403 while this node's key is not a member, 503 when the node cannot take
/// writes now (back-pressure included), 500 for a failure.
pub fn http_status(e: &WriteError) -> u16 {
    match e {
        WriteError::Refused {
            error: EventError::TooLarge { .. } | EventError::BodyTooLarge { .. },
            ..
        } => 413,
        WriteError::TooLarge(_) => 413,
        WriteError::Refused { error, .. } if error.class() == ErrorClass::BackPressure => 503,
        WriteError::Refused { .. } => 422,
        WriteError::NotMember(_) => 403,
        WriteError::Unavailable(_) => 503,
        WriteError::Failed(_) => 500,
    }
}
