//! # The node's live feeds
//!
//! What the actor pushes to the tasks beside it (the HTTP API, the gateway, the emissaries):
//! every new event (ingested or appended here, in commit order; `GET /v1/events?stream=true`),
//! every changed election ([`crate::election`]), and a count of the times the timeline grew
//! (which tells the API's status cache that its snapshot is out of date without asking the
//! actor). Both broadcasts are bounded: a subscriber that falls behind is told it lagged and
//! catches up by asking once (`GET /v1/events`, every election).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use chorus_core::SignedEvent;
use tokio::sync::broadcast;

use crate::election::{ELECTION_FEED_CAPACITY, Election};

/// New events a subscriber may fall behind before it is told it lagged.
pub const FEED_CAPACITY: usize = 4_096;

/// The sender side of the feeds; clones share them.
#[derive(Clone)]
pub struct Feed {
    events: broadcast::Sender<Arc<SignedEvent>>,
    elections: broadcast::Sender<Arc<Election>>,
    changes: Arc<AtomicU64>,
}

impl Default for Feed {
    fn default() -> Self {
        Self::new(FEED_CAPACITY)
    }
}

impl Feed {
    pub fn new(capacity: usize) -> Self {
        Self {
            events: broadcast::channel(capacity).0,
            elections: broadcast::channel(ELECTION_FEED_CAPACITY).0,
            changes: Default::default(),
        }
    }

    /// New events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<SignedEvent>> {
        self.events.subscribe()
    }

    /// Election changes from now on.
    pub fn subscribe_elections(&self) -> broadcast::Receiver<Arc<Election>> {
        self.elections.subscribe()
    }

    /// Whether anyone follows the events (the actor loads them only then).
    pub(crate) fn listening(&self) -> bool {
        self.events.receiver_count() > 0
    }

    /// Whether anyone follows the elections (the actor folds after every turn that grew the
    /// timeline only then; otherwise on its tick and before queries).
    pub(crate) fn following_elections(&self) -> bool {
        self.elections.receiver_count() > 0
    }

    pub(crate) fn event(&self, ev: SignedEvent) {
        // No subscriber is not an error.
        let _ = self.events.send(Arc::new(ev));
    }

    pub(crate) fn election(&self, e: Election) {
        let _ = self.elections.send(Arc::new(e));
    }

    pub(crate) fn timeline_grew(&self) {
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// How many times the timeline grew so far.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }
}
