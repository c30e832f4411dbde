//! Done-when 5 of the mesh: a Byzantine libp2p peer (in this test process, on the real
//! `chorus-net` stack) gossips corrupted and forged blocks and answers sync requests with
//! corrupted, forged and oversized blocks. The honest `chorus node` processes reject and count
//! every one, ban and disconnect the peer, and keep converging.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chorus_core::{
    EventId, SignedEvent, UnsignedEvent,
    crypto::Keypair,
    event::kind,
    sync::{Blocks, Summary, SyncRequest, SyncResponse},
};
use chorus_net::{Acceptance, NetCommand, NetConfig, NetEvent, Peer};
use common::*;
use serde_bytes::ByteBuf;

fn peer_of(addr: &str) -> Peer {
    addr.rsplit("/p2p/").next().unwrap().parse().unwrap()
}

/// What the rogue saw, for the assertions.
#[derive(Default)]
struct Seen {
    up: Vec<Peer>,
    down: Vec<Peer>,
    junk_sent: usize,
}

/// Junk built from one real event: a flipped byte, a forged author (signed by the rogue's
/// key but naming a member), and a block over the 64 KiB limit.
fn junk(real: &SignedEvent, rogue: &Keypair, n: usize) -> Vec<ByteBuf> {
    let mut corrupted = real.bytes().to_vec();
    let mid = corrupted.len() / 2;
    corrupted[mid] ^= 0x40;
    let forged = UnsignedEvent {
        timeline: real.timeline,
        author: real.author,
        seq: real.seq + 1_000,
        lamport: real.lamport + 1,
        parents: vec![real.id()],
        kind: kind::STIMULUS.into(),
        body: "forged".into(),
    }
    .sign(rogue);
    let oversized = vec![0xA5u8; 70 * 1024];
    (0..n)
        .map(|i| match i % 3 {
            0 => ByteBuf::from(corrupted.clone()),
            1 => ByteBuf::from(forged.bytes().to_vec()),
            _ => ByteBuf::from(oversized.clone()),
        })
        .collect()
}

#[test]
fn byzantine_peer_is_banned_and_honest_nodes_converge() {
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 3, 3);
    let mut n0 = Node::start("n0", &dirs[0], "127.0.0.31", &[]);
    let boot = vec![n0.addr.clone()];
    join(&dirs[1], &boot[0]);
    join(&dirs[2], &boot[0]);
    let mut n1 = Node::start("n1", &dirs[1], "127.0.0.32", &boot);
    let mut n2 = Node::start("n2", &dirs[2], "127.0.0.33", &boot);
    meshed(&[&n0, &n1, &n2], Duration::from_secs(30));
    n0.append("honest {i}", 20).unwrap();
    converge(
        &mut [&mut n0, &mut n1, &mut n2],
        23,
        Duration::from_secs(30),
    );
    let genesis: EventId = n0.status().unwrap()["timeline"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let rogue_key = Keypair::from_seed([0xEE; 32]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut net = rt.block_on(async {
        chorus_net::spawn(NetConfig {
            seed: rogue_key.seed(),
            listen: vec!["/ip4/127.0.0.34/tcp/0".parse().unwrap()],
            bootstrap: [&n0, &n1, &n2]
                .iter()
                .map(|n| n.addr.parse().unwrap())
                .collect(),
            genesis: Some(genesis),
            replica: true,
            members_only: None,
            external: vec![],
            blocks: None,
            bitswap: Default::default(),
        })
        .unwrap()
    });
    let rogue_peer = net.peer_id;
    let target = peer_of(&n0.addr);
    let seen2 = seen.clone();
    rt.spawn(async move {
        let cmd = net.commands.clone();
        let mut real: Option<SignedEvent> = None;
        while let Some(ev) = net.events.recv().await {
            match ev {
                NetEvent::PeerUp(p) => {
                    seen2.lock().unwrap().up.push(p);
                    if p == target {
                        // Fetch one real event to build convincing junk from.
                        let req = SyncRequest::Since {
                            have: vec![],
                            after: None,
                        };
                        let _ = cmd.send(NetCommand::Request { peer: p, req }).await;
                    }
                }
                NetEvent::PeerDown(p) => seen2.lock().unwrap().down.push(p),
                NetEvent::Response {
                    resp: SyncResponse::Blocks(b),
                    ..
                } => {
                    let last = b.blocks.last().unwrap();
                    let ev = SignedEvent::decode(last).unwrap();
                    // Gossip junk to everyone, then keep answering requests with more.
                    for j in junk(&ev, &rogue_key, 2) {
                        let _ = cmd.send(NetCommand::Publish(j.into_vec())).await;
                    }
                    real = Some(ev);
                }
                NetEvent::Request { id, req, .. } => {
                    let resp = match (&req, &real) {
                        // Claim to be far ahead so the honest node streams from us.
                        (SyncRequest::Summary, Some(ev)) => SyncResponse::Summary(Summary {
                            genesis,
                            version_vector: vec![(ev.author, 1_000_000)],
                            heads: vec![EventId([7; 32])],
                            events: 1_000_000,
                            state_hash: None,
                            light: false,
                            recovering: false,
                        }),
                        (_, Some(ev)) => {
                            seen2.lock().unwrap().junk_sent += 6;
                            SyncResponse::Blocks(Blocks {
                                blocks: junk(ev, &rogue_key, 6),
                                next: Some((ev.lamport + 1, EventId([9; 32]))),
                            })
                        }
                        (_, None) => SyncResponse::Refused {
                            reason: "not yet".into(),
                        },
                    };
                    let _ = cmd.send(NetCommand::Respond { id, resp }).await;
                }
                NetEvent::Gossip { id, .. } => {
                    let _ = cmd
                        .send(NetCommand::Validated {
                            id,
                            verdict: Acceptance::Forward,
                        })
                        .await;
                }
                _ => {}
            }
        }
    });

    // Every honest node rejects, counts per peer, bans the rogue and drops its connection.
    let deadline = Instant::now() + Duration::from_secs(60);
    let rogue = rogue_peer.to_string();
    loop {
        let st: Vec<_> = [&n0, &n1, &n2]
            .iter()
            .map(|n| n.status().unwrap())
            .collect();
        let charged: Vec<u64> = st
            .iter()
            .map(|s| {
                s["received"]["invalid_by_peer"][&rogue]
                    .as_u64()
                    .unwrap_or(0)
            })
            .collect();
        let banned = st.iter().all(|s| {
            s["sync"]["bans"].as_u64() >= Some(1)
                && !s["peers"].as_array().unwrap().iter().any(|p| p == &rogue)
        });
        if banned && charged.iter().all(|c| *c >= 8) {
            for s in &st {
                let codes = &s["received"]["rejected_by_code"];
                eprintln!("{} rejected {codes}", s["peer_id"]);
            }
            let oversize: u64 = st
                .iter()
                .map(|s| s["received"]["oversize"].as_u64().unwrap())
                .sum();
            assert!(oversize >= 1, "oversized blocks were counted");
            let codes: Vec<String> = st
                .iter()
                .flat_map(|s| {
                    s["received"]["rejected_by_code"]
                        .as_object()
                        .unwrap()
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .collect();
            assert!(
                codes.iter().any(|c| c.contains("signature")),
                "forged blocks rejected: {codes:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rogue not banned everywhere: charged {charged:?}, statuses {st:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    {
        let s = seen.lock().unwrap();
        assert!(s.junk_sent >= 6, "the rogue served junk pages");
        for n in [&n0, &n1, &n2] {
            assert!(
                s.down.contains(&peer_of(&n.addr)),
                "{} dropped the rogue",
                n.name
            );
        }
    }
    // Honest nodes keep converging, with nothing of the junk in their state.
    let before = n0.status().unwrap()["events"].as_u64().unwrap();
    n1.append("after the attack {i}", 30).unwrap();
    n2.append("still fine {i}", 30).unwrap();
    converge(
        &mut [&mut n0, &mut n1, &mut n2],
        before + 60,
        Duration::from_secs(60),
    );
    let count = n0.status().unwrap()["events"].as_u64().unwrap();
    assert_eq!(count, before + 60, "no junk was indexed");
    rt.shutdown_background();
}
