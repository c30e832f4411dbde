//! The node's blocks by CID: what Bitswap serves (`chorus_net::bitswap`) and what
//! `GET /v1/blocks/{cid}` reads before it asks the network.
//!
//! A node holds two kinds of block: the events of its timeline (the genesis among them),
//! DAG-CBOR blocks under CIDv1 with a sha2-256 digest, kept in the store by that digest (an
//! [`EventId`]); and its newest finality certificates ([`Certificates`], in memory: a
//! certificate is rebuilt from the heartbeats after a restart). Any other CID names nothing
//! here. Store reads go through a [`StoreReader`], one read transaction a block, beside the
//! actor's writes.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use chorus_core::EventId;
use chorus_net::bitswap::BlockSource;
use chorus_store::StoreReader;
use cid::Cid;

/// Certificate blocks kept for serving: the newest few (a stranger may have learned of one a
/// little older than the newest).
pub const CERTIFICATES_KEPT: usize = 4;

/// The node's newest finality certificate blocks, by CID; the actor adds, Bitswap reads.
#[derive(Clone, Default)]
pub struct Certificates(Arc<Mutex<VecDeque<Held>>>);

/// A certificate block under its CID.
type Held = (Cid, Arc<Vec<u8>>);

impl Certificates {
    /// Keeps `block` under `cid` (the newest; the oldest beyond [`CERTIFICATES_KEPT`] goes).
    pub fn keep(&self, cid: Cid, block: Vec<u8>) {
        let mut held = self.0.lock().unwrap();
        if held.iter().any(|(c, _)| *c == cid) {
            return;
        }
        held.push_back((cid, Arc::new(block)));
        while held.len() > CERTIFICATES_KEPT {
            held.pop_front();
        }
    }

    pub fn newest(&self) -> Option<Cid> {
        self.0.lock().unwrap().back().map(|(c, _)| *c)
    }

    fn get(&self, cid: &Cid) -> Option<Vec<u8>> {
        let held = self.0.lock().unwrap();
        held.iter()
            .find(|(c, _)| c == cid)
            .map(|(_, b)| b.as_ref().clone())
    }
}

/// The node's blocks, by CID: its store's events and its newest certificates.
pub struct StoreBlocks {
    pub store: StoreReader,
    pub certificates: Certificates,
}

impl BlockSource for StoreBlocks {
    fn get(&self, cid: &Cid) -> Option<Vec<u8>> {
        if let Some(b) = self.certificates.get(cid) {
            return Some(b);
        }
        // Any CID but an event's (v1, DAG-CBOR, sha2-256) names nothing here.
        let id = EventId::from_cid(cid).ok()?;
        match self.store.read(|block| block(&id).map(|b| b.to_vec())) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(%cid, "block not read: the store could not be read: {e}");
                None
            }
        }
    }
}
