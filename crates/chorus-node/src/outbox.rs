//! # A light node's write-through outbox
//!
//! A light node keeps only the recent past in memory, so its own events are not durable until
//! a full node holds them. A local append is therefore signed, applied and gossiped at once,
//! but **acknowledged** to the client only when a full node answers the `Submit` of those
//! blocks with `Stored` (it answers after its durable commit). Until then the submission sits
//! here and is retried against the next full peer; a client that waited
//! [`SUBMIT_TIMEOUT_MS`] gets an error saying so, and the retries go on (the events exist, and
//! must reach a full node) until one stores them.

use std::collections::{BTreeSet, VecDeque};

use chorus_core::{
    EventId,
    sync::{MAX_PAGE_BYTES, MAX_SUBMIT_BLOCKS},
};
use chorus_net::Peer;

/// Most submissions waiting for a full node; appends beyond it are refused (back-pressure).
pub const MAX_OUTBOX: usize = 64;
/// How long a client waits for a full node to store its write.
pub const SUBMIT_TIMEOUT_MS: u64 = 15_000;

pub use crate::write::Reply;
use crate::write::WriteError;

struct Submission {
    ids: Vec<EventId>,
    blocks: Vec<Vec<u8>>,
    reply: Option<Reply>,
    deadline: u64,
    in_flight_to: Option<Peer>,
    tried: BTreeSet<Peer>,
}

/// The pending writes of a light node.
#[derive(Default)]
pub struct Outbox {
    queue: VecDeque<Submission>,
    /// Full nodes that stored a submission.
    pub stored: u64,
    /// Submissions whose client stopped waiting before a full node stored them.
    pub late: u64,
}

impl Outbox {
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether a write of `blocks` can be queued; the error is for the client.
    pub fn admit(&self, n: usize, bytes: usize) -> Result<(), WriteError> {
        if n > MAX_SUBMIT_BLOCKS || bytes > MAX_PAGE_BYTES {
            return Err(WriteError::TooLarge(format!(
                "light node: one write may carry at most {MAX_SUBMIT_BLOCKS} events and \
                 {MAX_PAGE_BYTES} bytes (got {n} events, up to {bytes} bytes once signed)"
            )));
        }
        if self.queue.len() >= MAX_OUTBOX {
            return Err(WriteError::Unavailable(format!(
                "light node: {MAX_OUTBOX} writes are still waiting for a full node; retry later"
            )));
        }
        Ok(())
    }

    pub fn push(&mut self, ids: Vec<EventId>, blocks: Vec<Vec<u8>>, reply: Reply, now: u64) {
        self.queue.push_back(Submission {
            ids,
            blocks,
            reply: Some(reply),
            deadline: now + SUBMIT_TIMEOUT_MS,
            in_flight_to: None,
            tried: BTreeSet::new(),
        });
    }

    /// Submissions to send now: each idle one goes to a full peer it has not tried yet (all
    /// tried: start over). Returns (peer, first id, blocks).
    pub fn dispatch(&mut self, full_peers: &BTreeSet<Peer>) -> Vec<(Peer, Vec<Vec<u8>>)> {
        let mut out = vec![];
        if full_peers.is_empty() {
            return out;
        }
        for s in self.queue.iter_mut().filter(|s| s.in_flight_to.is_none()) {
            if full_peers.iter().all(|p| s.tried.contains(p)) {
                s.tried.clear();
            }
            let Some(p) = full_peers.iter().find(|p| !s.tried.contains(p)).copied() else {
                continue;
            };
            s.in_flight_to = Some(p);
            s.tried.insert(p);
            out.push((p, s.blocks.clone()));
        }
        out
    }

    fn find(&mut self, peer: &Peer, first: &EventId) -> Option<usize> {
        self.queue
            .iter()
            .position(|s| s.in_flight_to.as_ref() == Some(peer) && s.ids.first() == Some(first))
    }

    /// `peer` stored `ids` of the submission starting with `first`.
    pub fn on_stored(&mut self, peer: &Peer, first: &EventId, ids: &[EventId]) {
        let Some(i) = self.find(peer, first) else {
            return;
        };
        let s = self.queue.remove(i).expect("index from position");
        let held: BTreeSet<&EventId> = ids.iter().collect();
        let missing: Vec<String> = s
            .ids
            .iter()
            .filter(|id| !held.contains(id))
            .map(|id| id.to_string())
            .collect();
        let result = if missing.is_empty() {
            self.stored += 1;
            Ok(s.ids)
        } else {
            tracing::warn!(%peer, "a full node rejected our events: {missing:?}");
            Err(WriteError::Failed(format!(
                "full node {peer} rejected events {missing:?}"
            )))
        };
        if let Some(r) = s.reply {
            let _ = r.send(result);
        }
    }

    /// The submission starting with `first` sent to `peer` failed (refused, timed out, peer
    /// gone): it goes to another full peer on the next dispatch.
    pub fn on_failed(&mut self, peer: &Peer, first: &EventId) {
        if let Some(i) = self.find(peer, first) {
            self.queue[i].in_flight_to = None;
        }
    }

    /// A peer went away: whatever was in flight to it is sent elsewhere.
    pub fn peer_down(&mut self, peer: &Peer) {
        for s in self.queue.iter_mut() {
            if s.in_flight_to.as_ref() == Some(peer) {
                s.in_flight_to = None;
            }
        }
    }

    /// Tells clients whose deadline passed that no full node has stored their write yet; the
    /// submission stays and is retried.
    pub fn expire(&mut self, now: u64) {
        for s in self.queue.iter_mut() {
            if now >= s.deadline
                && let Some(r) = s.reply.take()
            {
                self.late += 1;
                let _ = r.send(Err(WriteError::Unavailable(format!(
                    "light node: no full node stored the write within {} s; it stays queued \
                     here and is retried (ids {:?})",
                    SUBMIT_TIMEOUT_MS / 1000,
                    s.ids.iter().map(|i| i.to_string()).collect::<Vec<_>>()
                ))));
            }
        }
    }
}
