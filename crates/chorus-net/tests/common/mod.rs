//! What the swarm tests share: raw blocks by CID, a node on loopback, its listen address.

#![allow(dead_code)] // each test file uses its part

use std::{sync::Arc, time::Duration};

use chorus_core::EventId;
use chorus_net::{
    Addr, NetConfig, NetEvent, NetHandle,
    bitswap::{BlockSource, Limits},
    spawn,
};
use cid::Cid;
use sha2::{Digest, Sha256};

/// The CID of a raw block (CIDv1, raw, sha2-256).
pub fn raw_cid(data: &[u8]) -> Cid {
    let mh = multihash::Multihash::<64>::wrap(0x12, &Sha256::digest(data)).unwrap();
    Cid::new_v1(0x55, mh)
}

/// Holds one raw block.
pub struct One(pub Vec<u8>);
impl BlockSource for One {
    fn get(&self, cid: &Cid) -> Option<Vec<u8>> {
        (*cid == raw_cid(&self.0)).then(|| self.0.clone())
    }
}

/// A swarm on 127.0.0.1 (a full node of `genesis` when one is given, else a client).
pub fn node(
    seed: u8,
    genesis: Option<EventId>,
    blocks: Option<Arc<dyn BlockSource>>,
    bootstrap: Vec<Addr>,
    bitswap: Limits,
) -> NetHandle {
    spawn(NetConfig {
        seed: [seed; 32],
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap,
        genesis,
        replica: genesis.is_some(),
        members_only: None,
        external: vec![],
        blocks,
        bitswap,
    })
    .unwrap()
}

/// The address `h` listens at.
pub async fn listening(h: &mut NetHandle) -> Addr {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match h.events.recv().await {
                Some(NetEvent::Listening(a)) => return a,
                Some(_) => {}
                None => panic!("the swarm stopped"),
            }
        }
    })
    .await
    .expect("listening within 20 s")
}
