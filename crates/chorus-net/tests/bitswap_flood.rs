//! Bitswap under a flood: peers that ask for every block a node holds, again and again, and
//! never read the answers. Each answer holds part of the node's answer budget until it is
//! written (until the write times out, 10 s), so without a defence the attackers hold all of it
//! and an honest peer's want waits behind every answer queued for them: 24 attackers held an
//! honest fetch ~37 s here, and the wait grows with their number. With the defences
//! (`bitswap::Limits`: a share of the budget per peer, and a peer whose answer cannot be written
//! within the send timeout has its queue dropped and its wants ignored for a while) the wait is
//! bounded by the send timeout however many they are (7 to 17 s here, one or two timeouts): with
//! 32 attackers the honest fetch succeeds within its 30 s deadline; with the defences switched
//! off (`Limits::unguarded`) the same fetch misses it. Real swarms
//! on loopback; the attackers are bare libp2p swarms speaking Bitswap's wire format.

use std::{sync::Arc, time::Duration};

use chorus_net::{
    Addr, NetConfig, NetEvent, NetHandle, Peer,
    bitswap::{
        BITSWAP_PROTOCOL, BlockSource, FetchError, Limits,
        wire::{self, Entry, Message, WantType, Wantlist},
    },
    spawn,
};
use cid::Cid;
use futures::StreamExt;
use sha2::{Digest, Sha256};

const BLOCKS: usize = 48;
const BLOCK_BYTES: usize = 512 * 1024;
const ATTACKERS: usize = 32;

fn raw_cid(data: &[u8]) -> Cid {
    let mh = multihash::Multihash::<64>::wrap(0x12, &Sha256::digest(data)).unwrap();
    Cid::new_v1(0x55, mh)
}

/// Holds [`BLOCKS`] blocks of 512 KiB.
struct Held(Vec<(Cid, Vec<u8>)>);
impl BlockSource for Held {
    fn get(&self, cid: &Cid) -> Option<Vec<u8>> {
        self.0
            .iter()
            .find(|(c, _)| c == cid)
            .map(|(_, b)| b.clone())
    }
}

fn node(
    seed: u8,
    blocks: Option<Arc<dyn BlockSource>>,
    bootstrap: Vec<Addr>,
    limits: Limits,
) -> NetHandle {
    spawn(NetConfig {
        seed: [seed; 32],
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap,
        genesis: None,
        replica: false,
        members_only: None,
        external: vec![],
        blocks,
        bitswap: limits,
    })
    .unwrap()
}

async fn listening(h: &mut NetHandle) -> Addr {
    loop {
        if let Some(NetEvent::Listening(a)) = h.events.recv().await {
            return a;
        }
    }
}

/// A peer that wants every block, every 100 ms, and takes the answer streams without ever
/// reading them (so the node's writes to it stall once the connection's buffers are full).
fn attacker(target: Addr, target_peer: Peer, cids: Vec<Cid>) {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    let mut control = swarm.behaviour().new_control();
    let mut incoming = control.accept(BITSWAP_PROTOCOL).unwrap();
    swarm.dial(target).unwrap();
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    tokio::spawn(async move {
        let mut held = vec![];
        while let Some((_, s)) = incoming.next().await {
            held.push(s);
        }
    });
    let want_all = Message {
        wantlist: Some(Wantlist {
            entries: cids
                .iter()
                .map(|c| Entry {
                    block: c.to_bytes(),
                    priority: 1,
                    cancel: false,
                    want_type: WantType::Block as i32,
                    send_dont_have: false,
                })
                .collect(),
            full: false,
        }),
        ..Default::default()
    };
    tokio::spawn(async move {
        let mut s = loop {
            match control.open_stream(target_peer, BITSWAP_PROTOCOL).await {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        while wire::write(&mut s, &want_all).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// Floods a node holding the blocks and returns what an honest peer's fetch of one block gets.
async fn honest_fetch_under_flood(limits: Limits) -> Result<Vec<u8>, FetchError> {
    let blocks: Vec<(Cid, Vec<u8>)> = (0..BLOCKS)
        .map(|i| {
            let b: Vec<u8> = (0..BLOCK_BYTES).map(|j| (i * 7 + j) as u8).collect();
            (raw_cid(&b), b)
        })
        .collect();
    let cids: Vec<Cid> = blocks.iter().map(|(c, _)| *c).collect();
    let mut target = node(1, Some(Arc::new(Held(blocks))), vec![], limits);
    let addr = listening(&mut target).await;
    for _ in 0..ATTACKERS {
        attacker(addr.clone(), target.peer_id, cids.clone());
    }
    // Let the flood fill the node's answer budget.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut honest = node(2, None, vec![addr], Limits::default());
    loop {
        if let Some(NetEvent::PeerUp(p)) = honest.events.recv().await
            && p == target.peer_id
        {
            break;
        }
    }
    honest
        .bitswap
        .fetch_from_connected(cids[BLOCKS / 2], Duration::from_secs(30))
        .await
}

/// Both runs in one test, one after the other: in parallel they share two cores with 48
/// attackers, and the timing both sides are judged by would be the machine's, not the engine's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_fetch_gets_through_a_flood_of_peers_that_never_read_and_not_without_the_defences()
 {
    let t = std::time::Instant::now();
    let got = honest_fetch_under_flood(Limits::default()).await;
    eprintln!(
        "with the defences: {:?} after {:?}",
        got.as_ref().map(Vec::len),
        t.elapsed()
    );
    assert_eq!(got.map(|b| b.len()), Ok(BLOCK_BYTES));

    // The sabotage: the same flood against the engine without its defences holds the honest
    // peer's fetch past its deadline.
    let t = std::time::Instant::now();
    let got = honest_fetch_under_flood(Limits::unguarded()).await;
    eprintln!(
        "without: {:?} after {:?}",
        got.as_ref().map(Vec::len),
        t.elapsed()
    );
    assert!(
        matches!(got, Err(FetchError::Timeout { .. })),
        "{:?}",
        got.map(|b| b.len())
    );
}
