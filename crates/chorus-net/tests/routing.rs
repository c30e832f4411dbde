//! Content routing between real swarms on loopback: a node that knows one peer and one CID
//! finds the block's provider through the DHT, dials it and fetches the block over Bitswap.
//!
//! `holder` (a full node) holds a block and advertises it (`NetCommand::Provide`); `relay` (a
//! full node of the same timeline) holds nothing; `stranger` (a client: no timeline, so no
//! discovery of its own) knows only `relay`'s address. Asking its connected peers only, the
//! stranger gets `NotFound` (the relay said `DontHave`); the full fetch asks the DHT, which
//! names the holder, dials it and takes the block.

mod common;

use std::{sync::Arc, time::Duration};

use chorus_core::EventId;
use chorus_net::{NetCommand, NetEvent, NetHandle, Peer, bitswap::FetchError};
use common::{One, listening, raw_cid};
use sha2::{Digest, Sha256};

fn swarm(
    seed: u8,
    genesis: Option<EventId>,
    blocks: Option<Arc<dyn chorus_net::bitswap::BlockSource>>,
    bootstrap: Vec<chorus_net::Addr>,
) -> NetHandle {
    common::node(seed, genesis, blocks, bootstrap, Default::default())
}

/// Waits for `peer` to connect (true) or disconnect (false).
async fn until(h: &mut NetHandle, peer: Peer, up: bool) {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match h.events.recv().await {
                Some(NetEvent::PeerUp(p)) if p == peer && up => return,
                Some(NetEvent::PeerDown(p)) if p == peer && !up => return,
                Some(_) => {}
                None => panic!("the swarm stopped"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{peer} never went {}", if up { "up" } else { "down" }));
}

/// Drains the events that came so far; true if `peer` ended up connected.
fn connected_after_draining(h: &mut NetHandle, peer: Peer, mut connected: bool) -> bool {
    while let Ok(ev) = h.events.try_recv() {
        match ev {
            NetEvent::PeerUp(p) if p == peer => connected = true,
            NetEvent::PeerDown(p) if p == peer => connected = false,
            _ => {}
        }
    }
    connected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_that_knows_one_peer_finds_the_provider_of_a_cid_and_fetches_it() {
    let timeline = Some(EventId(Sha256::digest(b"a timeline").into()));
    let bytes = b"a block only the holder has".to_vec();
    let cid = raw_cid(&bytes);

    let mut relay = swarm(1, timeline, None, vec![]);
    let relay_addr = listening(&mut relay).await;
    // The stranger first: its Kademlia bootstrap (when the relay enters its table) then knows
    // no one but the relay, and nothing afterwards tells it of the holder but a lookup (the
    // stranger is a DHT client, so the others never list it as a peer to ask).
    let mut stranger = swarm(3, None, None, vec![relay_addr.clone()]);
    until(&mut stranger, relay.peer_id, true).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut holder = swarm(
        2,
        timeline,
        Some(Arc::new(One(bytes.clone()))),
        vec![relay_addr],
    );
    until(&mut holder, relay.peer_id, true).await;
    holder
        .commands
        .send(NetCommand::Provide(vec![cid]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !connected_after_draining(&mut stranger, holder.peer_id, false),
        "the stranger must not know the holder before the lookup (the setup is broken)"
    );
    let bs = stranger.bitswap.clone();

    // The connected peers alone: the relay says DontHave.
    let r = bs.fetch_from_connected(cid, Duration::from_secs(5)).await;
    assert!(
        matches!(r, Err(FetchError::NotFound { asked: 1, .. })),
        "{r:?}"
    );

    // With the DHT: the holder's record (sent to the relay when it advertised; that is
    // asynchronous, so a first lookup may come before it) names the holder, which is dialled
    // (by the lookup's query, which contacts the providers it learns of, or by the driver)
    // and asked. A fetch may fail only while the record has not arrived: one that fails after
    // its lookup connected the holder answered too early, and fails the test.
    let t = std::time::Instant::now();
    let got = loop {
        match bs.fetch(cid, Duration::from_secs(10)).await {
            Ok(got) => break got,
            Err(e) => {
                assert!(
                    !connected_after_draining(&mut stranger, holder.peer_id, false),
                    "the fetch ended ({e}) although its lookup had connected the holder"
                );
                assert!(t.elapsed() < Duration::from_secs(30), "never found: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    assert_eq!(got, bytes);
    assert!(
        connected_after_draining(&mut stranger, holder.peer_id, false),
        "the holder was dialled because the DHT named it"
    );

    // A CID nobody advertises: the lookup ends with nothing, the relay said DontHave.
    let r = bs
        .fetch(raw_cid(b"nobody has this"), Duration::from_secs(10))
        .await;
    assert!(matches!(r, Err(FetchError::NotFound { .. })), "{r:?}");
}
