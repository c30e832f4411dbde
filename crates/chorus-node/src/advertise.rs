//! What a full node advertises in the DHT as their provider, so that a stranger who knows one
//! CID and one peer finds the rest (docs/design/ipfs.md, "Content routing").
//!
//! Besides the timeline's own record (the genesis digest: "I replicate this timeline",
//! `chorus_net`), a full node provides, by their multihash as IPFS does: the genesis block, its
//! current heads (the first [`MAX_HEADS_ADVERTISED`] by id: a stranger walks the DAG from any
//! of them), its newest finality certificate and that certificate's snapshot root. The set is looked at every
//! [`ADVERTISE_INTERVAL`] and handed to the swarm when it changed; the swarm announces what is
//! new and stops republishing what left (records already in others' stores expire after
//! `chorus_net::PROVIDER_RECORD_TTL`, and what they name stays here: events are never
//! deleted). Light nodes advertise nothing.

use std::time::{Duration, Instant};

use chorus_core::EventId;
use cid::Cid;

/// How often the advertised set is looked at.
pub const ADVERTISE_INTERVAL: Duration = Duration::from_secs(60);
/// Heads advertised at most (a timeline rarely has more than one per active writer).
pub const MAX_HEADS_ADVERTISED: usize = 8;

#[derive(Default)]
pub struct Advertiser {
    last: Option<Instant>,
    set: Vec<Cid>,
}

impl Advertiser {
    /// The set to hand the swarm now, if the interval has passed and the set changed.
    pub fn due(
        &mut self,
        now: Instant,
        genesis: EventId,
        heads: &[EventId],
        certificate: Option<Cid>,
        snapshot: Option<Cid>,
    ) -> Option<Vec<Cid>> {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < ADVERTISE_INTERVAL)
        {
            return None;
        }
        self.last = Some(now);
        let mut heads = heads.to_vec();
        heads.sort();
        let set: Vec<Cid> = std::iter::once(genesis.to_cid())
            .chain(heads.iter().take(MAX_HEADS_ADVERTISED).map(EventId::to_cid))
            .chain(certificate)
            .chain(snapshot)
            .collect();
        if set == self.set {
            return None;
        }
        self.set = set.clone();
        Some(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> EventId {
        EventId([n; 32])
    }

    #[test]
    fn the_set_goes_out_when_it_changed_and_at_most_once_an_interval() {
        let mut a = Advertiser::default();
        let t = Instant::now();
        let heads: Vec<EventId> = (1..=20).rev().map(id).collect();
        let first = a.due(t, id(0), &heads, None, None).unwrap();
        // Genesis, then the 8 lowest heads in order.
        assert_eq!(first.len(), 1 + MAX_HEADS_ADVERTISED);
        assert_eq!(first[0], id(0).to_cid());
        assert_eq!(first[1], id(1).to_cid());
        // Changed, but within the interval: nothing.
        assert_eq!(
            a.due(t + Duration::from_secs(1), id(0), &[id(30)], None, None),
            None
        );
        // Unchanged after the interval: nothing either.
        let later = t + ADVERTISE_INTERVAL;
        assert_eq!(a.due(later, id(0), &heads, None, None), None);
        let (cert, root) = (id(99).to_cid(), id(98).to_cid());
        let next = a
            .due(
                later + ADVERTISE_INTERVAL,
                id(0),
                &[id(30)],
                Some(cert),
                Some(root),
            )
            .unwrap();
        assert_eq!(next, vec![id(0).to_cid(), id(30).to_cid(), cert, root]);
    }
}
