//! What a full node advertises in the DHT as their provider, so that a stranger who knows one
//! CID and one peer finds the rest (docs/design/ipfs.md, "Content routing").
//!
//! Besides the timeline's own record (the genesis digest: "I replicate this timeline",
//! `chorus_net`), a full node provides, by their multihash as IPFS does: the genesis block, its
//! current heads (the first [`MAX_HEADS_ADVERTISED`] by id: a stranger walks the DAG from any
//! of them), its newest finality certificate and that certificate's snapshot root, and the roots
//! of the payloads it has on disk (the first [`MAX_PAYLOADS_ADVERTISED`] by CID; their parts are
//! fetched from whoever sends the root). The set is looked at every
//! [`ADVERTISE_INTERVAL`] and handed to the swarm; the swarm announces what is new and stops
//! republishing what left (records already in others' stores expire after
//! `chorus_net::PROVIDER_RECORD_TTL`, and what they name stays here: events are never
//! deleted). Light nodes advertise nothing.

use std::time::{Duration, Instant};

use chorus_core::EventId;
use cid::Cid;

/// How often the advertised set is looked at.
pub const ADVERTISE_INTERVAL: Duration = Duration::from_secs(60);
/// Heads advertised at most (a timeline rarely has more than one per active writer).
pub const MAX_HEADS_ADVERTISED: usize = 8;
/// Payload roots advertised at most (the first by CID of those on disk).
pub const MAX_PAYLOADS_ADVERTISED: usize = 256;

#[derive(Default)]
pub struct Advertiser {
    last: Option<Instant>,
}

impl Advertiser {
    /// Whether the set is to be handed to the swarm now: every [`ADVERTISE_INTERVAL`], changed
    /// or not (the swarm acts only on what changed, and a set lost on a full queue is sent
    /// again).
    pub fn due(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < ADVERTISE_INTERVAL)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// The CIDs a full node advertises: the genesis, the first [`MAX_HEADS_ADVERTISED`] heads by
/// id, the newest certificate and its snapshot's root, the payload roots it holds.
pub fn advertised(
    genesis: EventId,
    heads: &[EventId],
    certificate: Option<Cid>,
    snapshot: Option<Cid>,
    payloads: Vec<Cid>,
) -> Vec<Cid> {
    let mut heads = heads.to_vec();
    heads.sort();
    std::iter::once(genesis.to_cid())
        .chain(heads.iter().take(MAX_HEADS_ADVERTISED).map(EventId::to_cid))
        .chain(certificate)
        .chain(snapshot)
        .chain(payloads.into_iter().take(MAX_PAYLOADS_ADVERTISED))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> EventId {
        EventId([n; 32])
    }

    #[test]
    fn the_set_goes_out_once_an_interval_with_the_lowest_heads() {
        let mut a = Advertiser::default();
        let t = Instant::now();
        assert!(a.due(t));
        assert!(!a.due(t + Duration::from_secs(1)));
        assert!(a.due(t + ADVERTISE_INTERVAL));
        let heads: Vec<EventId> = (1..=20).rev().map(id).collect();
        let set = advertised(id(0), &heads, None, None, vec![]);
        // Genesis, then the 8 lowest heads in order.
        assert_eq!(set.len(), 1 + MAX_HEADS_ADVERTISED);
        assert_eq!(set[0], id(0).to_cid());
        assert_eq!(set[1], id(1).to_cid());
        let (cert, root) = (id(99).to_cid(), id(98).to_cid());
        assert_eq!(
            advertised(id(0), &[id(30)], Some(cert), Some(root), vec![]),
            vec![id(0).to_cid(), id(30).to_cid(), cert, root]
        );
        // Payload roots last, at most MAX_PAYLOADS_ADVERTISED.
        let payloads: Vec<Cid> = (0..300u64)
            .map(|i| EventId::of_block(&i.to_le_bytes()).to_cid())
            .collect();
        let set = advertised(id(0), &[], None, None, payloads.clone());
        assert_eq!(set.len(), 1 + MAX_PAYLOADS_ADVERTISED);
        assert_eq!(set[1..], payloads[..MAX_PAYLOADS_ADVERTISED]);
    }
}
