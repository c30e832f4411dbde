//! The node's blocks by CID: what Bitswap serves (`chorus_net::bitswap`) and what
//! `GET /v1/blocks/{cid}` reads before it asks the network.
//!
//! A node holds three kinds of block: the payload blocks it holds
//! (`chorus_store::payloads`, files beside the store); the events of its timeline (the genesis among them),
//! DAG-CBOR blocks under CIDv1 with a sha2-256 digest, kept in the store by that digest (an
//! [`EventId`]); and, under `final/1`, its newest finality certificates with the certified
//! snapshot of each (`chorus_core::snapshot`: a root block, the state's raw chunks and, under
//! `final/2`, the chain of handovers from the genesis committee), held
//! in memory by [`Certified`] (both are rebuilt from the store after a restart). Any other CID
//! names nothing here. Store reads go through a [`StoreReader`], one read transaction a
//! block, beside the actor's writes.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use chorus_core::{EventId, finality::certificate::Certificate, snapshot::Snapshot};
use chorus_net::bitswap::BlockSource;
use chorus_store::StoreReader;
use cid::Cid;

/// Certificates (with their snapshots) kept for serving: the newest few, as a stranger may
/// have learned of one a little older than the newest.
pub const CERTIFICATES_KEPT: usize = 2;

/// One certificate as blocks: its own, and its snapshot's when this node held the certified
/// checkpoint's state.
pub struct CertifiedBlocks {
    pub cid: Cid,
    pub block: Vec<u8>,
    pub certificate: Certificate,
    pub snapshot: Option<Snapshot>,
}

/// The node's newest certificates and snapshots, by CID; the actor adds, Bitswap and the
/// API read.
#[derive(Clone, Default)]
pub struct Certified(Arc<Mutex<VecDeque<Arc<CertifiedBlocks>>>>);

impl Certified {
    /// Keeps `c` as the newest (the oldest beyond [`CERTIFICATES_KEPT`] goes).
    pub fn keep(&self, c: CertifiedBlocks) {
        let mut held = self.0.lock().unwrap();
        if held.iter().any(|h| h.cid == c.cid) {
            return;
        }
        held.push_back(Arc::new(c));
        while held.len() > CERTIFICATES_KEPT {
            held.pop_front();
        }
    }

    /// Keeps `c` as the newest, in place of a newest of the same certificate (its snapshot
    /// found since).
    pub fn replace_newest(&self, c: CertifiedBlocks) {
        {
            let mut held = self.0.lock().unwrap();
            if held.back().is_some_and(|h| h.cid == c.cid) {
                held.pop_back();
            }
        }
        self.keep(c);
    }

    pub fn newest(&self) -> Option<Arc<CertifiedBlocks>> {
        self.0.lock().unwrap().back().cloned()
    }

    fn get(&self, cid: &Cid) -> Option<Vec<u8>> {
        let held = self.0.lock().unwrap();
        held.iter().rev().find_map(|h| {
            if h.cid == *cid {
                return Some(h.block.clone());
            }
            let s = h.snapshot.as_ref()?;
            if s.root_cid == *cid {
                return Some(s.root.clone());
            }
            s.chunks
                .iter()
                .chain(&s.handovers)
                .find(|(c, _)| c == cid)
                .map(|(_, b)| b.clone())
        })
    }
}

/// The node's blocks, by CID: its store's events and its newest certificates and snapshots.
pub struct StoreBlocks {
    pub store: StoreReader,
    pub certified: Certified,
    /// Payload blocks (`None`: a light node, which holds none).
    pub payloads: Option<chorus_store::payloads::PayloadDir>,
}

impl BlockSource for StoreBlocks {
    fn get(&self, cid: &Cid) -> Option<Vec<u8>> {
        if let Some(b) = self.certified.get(cid) {
            return Some(b);
        }
        // An event's CID (v1, DAG-CBOR, sha2-256) names a block of the store…
        let event = match EventId::from_cid(cid) {
            Ok(id) => match self.store.read(|block| block(&id).map(|b| b.to_vec())) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(%cid, "block not read: the store could not be read: {e}");
                    None
                }
            },
            Err(_) => None,
        };
        // …or of a payload (a DAG-CBOR root or a raw part).
        event.or_else(|| self.payloads.as_ref()?.get(cid))
    }
}
