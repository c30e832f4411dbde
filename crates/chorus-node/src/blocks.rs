//! The node's blocks by CID: what Bitswap serves (`chorus_net::bitswap`) and what
//! `GET /v1/blocks/{cid}` reads before it asks the network.
//!
//! Today a node holds one kind of block, the events of its timeline (the genesis among them):
//! DAG-CBOR blocks under CIDv1 with a sha2-256 digest, kept in the store by that digest (an
//! [`EventId`]). Any other CID names nothing here. Reads go through a [`StoreReader`], one
//! read transaction a block, beside the actor's writes.

use chorus_core::EventId;
use chorus_net::bitswap::BlockSource;
use chorus_store::StoreReader;
use cid::Cid;

/// The store's event blocks, by CID.
pub struct StoreBlocks(pub StoreReader);

impl BlockSource for StoreBlocks {
    fn get(&self, cid: &Cid) -> Option<Vec<u8>> {
        // Any CID but an event's (v1, DAG-CBOR, sha2-256) names nothing here.
        let id = EventId::from_cid(cid).ok()?;
        match self.0.read(|block| block(&id).map(|b| b.to_vec())) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(%cid, "block not read: the store could not be read: {e}");
                None
            }
        }
    }
}
