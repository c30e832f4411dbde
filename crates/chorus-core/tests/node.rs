//! The node state machine on its own: a few `NodeState`s over `MemStore`, joined by an
//! in-process network that delivers every message at the next step. No actor, no simulator.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chorus_core::{
    EventError, EventId, SignedEvent, Timeline, UnsignedEvent,
    crypto::Keypair,
    event::kind,
    limits::MAX_PENDING_BYTES,
    local::Local,
    machine::CounterMachine,
    proto::{
        WriteError, WriteId, WriteResult,
        node::{
            Config, Input, MAX_GATED_WRITES, NodeState, Output, Transport, Verdict,
            WRITE_GATE_TIMEOUT_MS,
        },
    },
    storage::MemStore,
    sync::{MAX_INVALID_PER_PEER, SyncRequest, SyncResponse},
    testkit,
};

struct Net;
impl Transport for Net {
    type Peer = u8;
    type GossipId = u64;
    type RequestId = u64;
}

type Node = NodeState<CounterMachine, MemStore, Net>;

/// Nodes, a message queue, and what came out.
struct Mesh {
    nodes: Vec<Node>,
    now: u64,
    inbox: Vec<VecDeque<Input<Net>>>,
    /// Gossip blocks by id, to relay them.
    gossip: BTreeMap<u64, Vec<u8>>,
    /// Requests in flight: id → (requester, responder, request).
    requests: BTreeMap<u64, (u8, u8, SyncRequest)>,
    next_id: u64,
    /// Links that deliver nothing (a, b) with a < b.
    cut: BTreeSet<(u8, u8)>,
    /// Requests sent over a cut link: they fail (time out) when the cut heals.
    lost: Vec<(u8, u8, SyncRequest)>,
    done: BTreeMap<(u8, WriteId), WriteResult>,
    verdicts: Vec<(u8, u8, Verdict)>,
    bans: Vec<(u8, u8)>,
    in_sync: Vec<(u8, u8)>,
}

fn decode(blocks: &[Vec<u8>]) -> Vec<Result<SignedEvent, EventError>> {
    blocks.iter().map(|b| SignedEvent::decode(b)).collect()
}

impl Mesh {
    fn new(nodes: Vec<Node>) -> Self {
        let n = nodes.len();
        let mut m = Mesh {
            nodes,
            now: 0,
            inbox: (0..n).map(|_| VecDeque::new()).collect(),
            gossip: BTreeMap::new(),
            requests: BTreeMap::new(),
            next_id: 0,
            cut: BTreeSet::new(),
            lost: vec![],
            done: BTreeMap::new(),
            verdicts: vec![],
            bans: vec![],
            in_sync: vec![],
        };
        for a in 0..n as u8 {
            for b in 0..n as u8 {
                if a != b {
                    let key = Some(m.nodes[b as usize].local().key().author());
                    m.inbox[a as usize].push_back(Input::PeerUp { peer: b, key });
                }
            }
        }
        m
    }

    /// Every link works again; what was sent over a cut link has timed out.
    fn heal(&mut self) {
        self.cut.clear();
        for (me, peer, req) in std::mem::take(&mut self.lost) {
            self.inbox[me as usize].push_back(Input::RequestFailed { peer, req });
        }
    }

    fn linked(&self, a: u8, b: u8) -> bool {
        !self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn gossip_to(&mut self, from: u8, block: Vec<u8>, except: u8) {
        for to in 0..self.nodes.len() as u8 {
            if to != from && to != except && self.linked(from, to) {
                let id = self.next_id;
                self.next_id += 1;
                self.gossip.insert(id, block.clone());
                self.inbox[to as usize].push_back(Input::Gossip {
                    from,
                    id,
                    block: block.clone(),
                });
            }
        }
    }

    /// One turn of every node that has input; true if any had.
    fn step(&mut self) -> bool {
        let mut any = false;
        for i in 0..self.nodes.len() {
            let inputs: Vec<Input<Net>> = self.inbox[i].drain(..).collect();
            if inputs.is_empty() {
                continue;
            }
            any = true;
            let now = self.now;
            for input in inputs {
                self.nodes[i].handle(now, input);
            }
            self.nodes[i].end_turn(now, &mut decode);
            while let Some(o) = self.nodes[i].poll_output() {
                self.effect(i as u8, o);
            }
        }
        any
    }

    fn effect(&mut self, me: u8, o: Output<Net>) {
        match o {
            Output::Send { peer, req } => {
                let id = self.next_id;
                self.next_id += 1;
                if self.linked(me, peer) {
                    self.requests.insert(id, (me, peer, req.clone()));
                    self.inbox[peer as usize].push_back(Input::Request { peer: me, id, req });
                } else {
                    self.lost.push((me, peer, req));
                }
            }
            Output::Respond { id, resp } => {
                if let Some((asker, _, req)) = self.requests.remove(&id) {
                    self.inbox[asker as usize].push_back(Input::Response {
                        peer: me,
                        req,
                        resp,
                    });
                }
            }
            Output::Validated { id, from, verdict } => {
                self.verdicts.push((me, from, verdict));
                let block = self.gossip.remove(&id).expect("a gossip id we made");
                if matches!(verdict, Verdict::Accepted | Verdict::Pending) {
                    self.gossip_to(me, block, from);
                }
            }
            Output::Publish(ev) => self.gossip_to(me, ev.bytes().to_vec(), me),
            Output::WriteDone { write, result } => {
                assert!(
                    self.done.insert((me, write), result).is_none(),
                    "answered once"
                );
            }
            Output::Ban { peer, .. } => self.bans.push((me, peer)),
            Output::InSync { peer, .. } => self.in_sync.push((me, peer)),
            Output::Diverged { peer } => panic!("{me} diverged from {peer}"),
            Output::StoreFailed(e) => panic!("{e}"),
            Output::ServePage { .. } => panic!("pages are read here: `pages_outside` is off"),
            Output::Unban(_)
            | Output::Disconnect(_)
            | Output::Indexed(_)
            | Output::WritesOpen { .. } => {}
        }
    }

    /// Steps until quiet, then ticks `ticks` times 1 s apart.
    fn settle(&mut self, ticks: u32) {
        for _ in 0..=ticks {
            let mut steps = 0;
            while self.step() {
                steps += 1;
                assert!(steps < 10_000, "the mesh does not go quiet");
            }
            self.now += 1_000;
            for q in &mut self.inbox {
                q.push_back(Input::Tick);
            }
        }
    }

    fn append(&mut self, node: u8, write: u64, text: &str) {
        self.inbox[node as usize].push_back(Input::Append {
            write: WriteId(write),
            items: vec![(kind::STIMULUS.to_string(), testkit::text(text))],
        });
    }
}

fn keys(n: u8) -> Vec<Keypair> {
    keys_from(n, 1)
}

/// `n` keys from seeds `first`, `first + 1`, … (distinct from [`keys`] when `first > n`).
fn keys_from(n: u8, first: u8) -> Vec<Keypair> {
    (first..first + n)
        .map(|i| Keypair::from_seed([i; 32]))
        .collect()
}

/// A new node: its key was made with its store, which holds all the key will sign (a light
/// node keeps its timeline in memory and waits for its peers at every start).
fn node(g: &SignedEvent, key: &Keypair, cfg: Config) -> Node {
    let tl = Timeline::new(g.clone(), CounterMachine).unwrap();
    let store = if cfg.light {
        MemStore::new(g)
    } else {
        MemStore::with_complete_own_chain(g)
    };
    NodeState::new(Local::new(tl, store, key.clone()), cfg)
}

/// `n` events `key` signed in a row (its chain after the genesis).
fn chain(g: &SignedEvent, key: &Keypair, n: usize) -> Vec<SignedEvent> {
    let mut tl = Timeline::new(g.clone(), CounterMachine).unwrap();
    (0..n)
        .map(|i| {
            let ev = tl
                .sign_local(key, kind::STIMULUS, testkit::text(&format!("old {i}")))
                .unwrap();
            tl.insert_deferred(ev.clone()).unwrap();
            ev
        })
        .collect()
}

/// A node that kept its disk from the start, now holding `events` (its own and others').
fn node_with(g: &SignedEvent, key: &Keypair, events: &[SignedEvent]) -> Node {
    let tl = Timeline::new(g.clone(), CounterMachine).unwrap();
    let mut l = Local::new(tl, MemStore::with_complete_own_chain(g), key.clone());
    l.ingest(events.to_vec()).unwrap();
    NodeState::new(l, Config::default())
}

/// A node whose key signed before on a disk now lost, restarted on a store holding `events`.
fn restored(g: &SignedEvent, key: &Keypair, events: &[SignedEvent]) -> Node {
    let tl = Timeline::new(g.clone(), CounterMachine).unwrap();
    let mut l = Local::new(tl, MemStore::new(g), key.clone());
    l.ingest(events.to_vec()).unwrap();
    NodeState::new(l, Config::default())
}

/// A node whose disk was wiped: its key signed events that only its peers may hold.
fn wiped(g: &SignedEvent, key: &Keypair) -> Node {
    restored(g, key, &[])
}

#[test]
fn three_nodes_converge_through_gossip_and_anti_entropy() {
    let ks = keys(3);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 16);
    let nodes = ks.iter().map(|k| node_with(&g, k, &[])).collect();
    let mut m = Mesh::new(nodes);
    // New nodes (keys made with their stores) write at once.
    m.settle(1);
    assert!(m.nodes.iter().all(|n| n.writes_open()));
    // Node 2 is cut off while everyone writes: it gets nothing by gossip.
    m.cut.insert((0, 2));
    m.cut.insert((1, 2));
    for i in 0..20u64 {
        m.append((i % 3) as u8, i, &format!("w{i}"));
        m.step();
    }
    m.settle(0);
    assert_eq!(m.done.len(), 20);
    assert!(m.done.values().all(|r| r.is_ok()), "{:?}", m.done);
    assert_ne!(
        m.nodes[2].local().timeline().heads(),
        m.nodes[0].local().timeline().heads()
    );
    // Healed: anti-entropy (summaries on the tick) brings node 2 up, and it brings its own.
    m.heal();
    m.settle(8);
    let heads = m.nodes[0].local().timeline().heads();
    for n in &m.nodes {
        assert_eq!(n.local().timeline().heads(), heads);
        assert_eq!(n.local().timeline().len(), 21);
    }
    // Nothing is folded until asked; then summaries with equal heads say "in sync".
    for n in &mut m.nodes {
        n.fold();
    }
    let hash = m.nodes[0].local().timeline().state_hash();
    assert!(
        m.nodes
            .iter()
            .all(|n| n.local().timeline().state_hash() == hash)
    );
    m.settle(4);
    assert!(
        m.in_sync.len() >= 3,
        "each node hears a folded peer: {:?}",
        m.in_sync
    );
}

#[test]
fn invalid_gossip_is_rejected_then_its_sender_banned() {
    let ks = keys(2);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 16);
    let mut m = Mesh::new(vec![
        node(&g, &ks[0], Config::default()),
        node(&g, &ks[1], Config::default()),
    ]);
    m.settle(1);
    for i in 0..MAX_INVALID_PER_PEER as u64 {
        m.inbox[0].push_back(Input::Gossip {
            from: 1,
            id: 1_000 + i,
            block: vec![0xff, i as u8],
        });
        m.gossip.insert(1_000 + i, vec![]);
    }
    m.step();
    let rejected = m
        .verdicts
        .iter()
        .filter(|(me, from, v)| (*me, *from, *v) == (0, 1, Verdict::Rejected))
        .count();
    assert_eq!(rejected, MAX_INVALID_PER_PEER as usize);
    assert_eq!(m.bans, vec![(0, 1)]);
    assert_eq!(
        m.nodes[0].stats().invalid_by_peer.get("1"),
        Some(&(MAX_INVALID_PER_PEER as u64))
    );
}

#[test]
fn a_wiped_writer_holds_its_writes_until_the_peers_confirm_its_chain() {
    let ks = keys(3);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 16);
    // Node 1's key wrote 5 events before its disk was wiped; nodes 0 and 2 hold them.
    let before = chain(&g, &ks[1], 5);
    let nodes = vec![
        node_with(&g, &ks[0], &before),
        wiped(&g, &ks[1]),
        node_with(&g, &ks[2], &before),
    ];
    let mut m = Mesh::new(nodes);
    // Writes before any peer answered: held (MAX_GATED_WRITES of them), the next refused.
    for i in 0..=MAX_GATED_WRITES as u64 {
        m.append(1, i, &format!("new {i}"));
    }
    // Cut node 1 off before its PeerUp summaries can be answered.
    m.cut.insert((0, 1));
    m.cut.insert((1, 2));
    m.step();
    assert!(!m.nodes[1].writes_open());
    assert_eq!(m.nodes[1].writes_held(), MAX_GATED_WRITES);
    assert!(matches!(
        m.done.get(&(1, WriteId(MAX_GATED_WRITES as u64))),
        Some(Err(WriteError::Unavailable(_)))
    ));
    // Past the gate's timeout, with still no answer, every held write fails clearly.
    m.now += WRITE_GATE_TIMEOUT_MS;
    m.inbox[1].push_back(Input::Tick);
    m.step();
    assert_eq!(m.nodes[1].writes_held(), 0);
    assert_eq!(
        m.done
            .iter()
            .filter(|((n, _), r)| *n == 1 && r.is_err())
            .count(),
        MAX_GATED_WRITES + 1
    );
    // Healed: the peers' summaries say its chain is at 5; it catches up, then writes seq 6.
    m.heal();
    for p in [0, 2] {
        m.inbox[1].push_back(Input::PeerDown(p));
        let key = Some(m.nodes[p as usize].local().key().author());
        m.inbox[1].push_back(Input::PeerUp { peer: p, key });
    }
    m.append(1, 500, "after");
    m.settle(10);
    assert!(m.nodes[1].writes_open());
    let ids = match m.done.get(&(1, WriteId(500))) {
        Some(Ok(ids)) => ids.clone(),
        other => panic!("{other:?}"),
    };
    let meta = m.nodes[0].local().timeline().meta_of(&ids[0]);
    assert!(meta.is_some(), "the write reached node 0");
    assert_eq!(
        m.nodes[0].local().timeline().version_vector()[&ks[1].author()],
        6,
        "no sequence number reused"
    );
    assert!(m.nodes[0].local().timeline().equivocations().is_empty());
}

/// The admin's wiped disk still "holds" its genesis (every replica does): that must not open
/// its writes, or it signs its next event with sequence number 2 again (found by
/// `chorus sim run --scenario wipe --seed 33756 --order final/1`, where a wiped admin
/// heartbeated at once: 41 of its events duplicated).
#[test]
fn a_wiped_admin_holds_its_writes_until_the_peers_confirm_its_chain() {
    let ks = keys(3);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 16);
    let before = chain(&g, &ks[0], 4);
    let wiped_admin = wiped(&g, &ks[0]);
    assert!(
        !wiped_admin.writes_open(),
        "a store holding only the genesis says nothing of what else the admin signed"
    );
    let mut m = Mesh::new(vec![
        wiped_admin,
        node_with(&g, &ks[1], &before),
        node_with(&g, &ks[2], &before),
    ]);
    m.append(0, 1, "after the wipe");
    m.settle(10);
    assert!(m.nodes[0].writes_open());
    assert!(matches!(m.done.get(&(0, WriteId(1))), Some(Ok(_))));
    let tl = m.nodes[1].local().timeline();
    assert_eq!(
        tl.version_vector()[&ks[0].author()],
        6,
        "genesis, 4 old events, then the new one: no sequence number reused"
    );
    assert!(tl.equivocations().is_empty());
    // An admin whose disk kept its own events writes at once, as before; so does one whose
    // store signed the genesis (`chorus init`), which holds all it ever signed.
    assert!(restored(&g, &ks[0], &before).writes_open());
    let tl = Timeline::new(g.clone(), CounterMachine).unwrap();
    let fresh: Node = NodeState::new(
        Local::new(tl, MemStore::with_complete_own_chain(&g), ks[0].clone()),
        Config::default(),
    );
    assert!(fresh.writes_open());
}

/// Peers that are recovering themselves (wiped too, not confirmed yet) know nothing of a wiped
/// writer's chain: a majority of them answering is no confirmation. The writer waits for a
/// confirmed peer (found by `chorus sim run --scenario posterity --order final/1`: 99 of 100
/// nodes came back empty, and wiped writers confirmed by wiped neighbours reused their
/// sequence numbers).
#[test]
fn a_wiped_writer_is_not_confirmed_by_peers_that_are_recovering_too() {
    let ks = keys(4);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 16);
    let before = chain(&g, &ks[1], 5);
    // Node 0 survived with everything; nodes 1 (the writer), 2 and 3 were wiped.
    let mut m = Mesh::new(vec![
        node_with(&g, &ks[0], &before),
        wiped(&g, &ks[1]),
        wiped(&g, &ks[2]),
        wiped(&g, &ks[3]),
    ]);
    for other in 1..4u8 {
        m.cut.insert((0, other));
    }
    m.append(1, 1, "after the wipe");
    m.settle(2);
    assert!(m.nodes[0].writes_open());
    for i in 1..4 {
        assert!(
            !m.nodes[i].writes_open(),
            "node {i}: confirmed by recovering peers only"
        );
    }
    assert!(!m.done.contains_key(&(1, WriteId(1))));
    // The survivor is back: it confirms 2 and 3, they learn the writer's chain, and the
    // writer continues at 6.
    m.heal();
    for p in 0..4u8 {
        for q in 0..4u8 {
            if p != q {
                m.inbox[p as usize].push_back(Input::PeerDown(q));
                let key = Some(m.nodes[q as usize].local().key().author());
                m.inbox[p as usize].push_back(Input::PeerUp { peer: q, key });
            }
        }
    }
    m.settle(12);
    assert!(m.nodes.iter().all(Node::writes_open));
    assert!(
        matches!(m.done.get(&(1, WriteId(1))), Some(Ok(_))),
        "{:?}",
        m.done
    );
    let tl = m.nodes[0].local().timeline();
    assert_eq!(
        tl.version_vector()[&ks[1].author()],
        6,
        "no sequence number reused"
    );
    assert!(tl.equivocations().is_empty());
}

#[test]
fn a_light_node_acknowledges_only_once_a_full_node_stored_the_write() {
    let ks = keys(2);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 16);
    let light = Config {
        light: true,
        fold_on_tick: true,
        ..Config::default()
    };
    let mut m = Mesh::new(vec![
        node(&g, &ks[0], Config::default()),
        node(&g, &ks[1], light),
    ]);
    m.settle(1);
    assert!(m.nodes[1].writes_open());
    // The full node's answers are held back: the write is signed and gossiped, not acknowledged.
    m.append(1, 1, "from the edge");
    m.cut.insert((0, 1));
    m.settle(0);
    assert!(!m.done.contains_key(&(1, WriteId(1))));
    assert_eq!(m.nodes[1].outbox().len(), 1);
    m.heal();
    m.settle(2);
    match m.done.get(&(1, WriteId(1))) {
        Some(Ok(ids)) => assert!(m.nodes[0].local().timeline().contains(&ids[0])),
        other => panic!("{other:?}"),
    }
    assert_eq!(m.nodes[1].outbox().len(), 0);
    // A light node serves nothing but summaries, and takes no Submit.
    m.inbox[1].push_back(Input::Request {
        peer: 0,
        id: 9_999,
        req: SyncRequest::Want { ids: vec![] },
    });
    m.requests
        .insert(9_999, (0, 1, SyncRequest::Want { ids: vec![] }));
    m.step();
    let refused = m.inbox[0].iter().any(|i| {
        matches!(i, Input::Response { resp: SyncResponse::Refused { reason }, .. } if reason.contains("light"))
    });
    assert!(refused);
}

/// A valid event whose parent nobody holds: it can only wait in the pending set. Only the
/// parent differs with `n`, so a small orphan is never larger than a small honest event.
fn orphan(g: &SignedEvent, key: &Keypair, n: u64, body_bytes: usize) -> SignedEvent {
    UnsignedEvent {
        timeline: Some(g.id()),
        author: key.author(),
        seq: 2,
        lamport: 5,
        parents: vec![EventId::of_block(format!("nobody holds {n}").as_bytes())],
        kind: kind::STIMULUS.into(),
        body: testkit::text(&"x".repeat(body_bytes)),
    }
    .sign(key)
}

#[test]
fn a_full_pending_set_is_back_pressure_and_charges_no_honest_forwarder() {
    let ks = keys(3);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 16);
    let nodes = ks.iter().map(|k| node_with(&g, k, &[])).collect();
    let mut m = Mesh::new(nodes);
    m.settle(1);
    // Node 1 writes two events in a chain; node 0 gets the second first.
    m.cut.insert((0, 1));
    m.cut.insert((0, 2));
    m.append(1, 1, "first");
    m.append(1, 2, "second");
    m.settle(0);
    let tl1 = m.nodes[1].local().timeline();
    let order: Vec<EventId> = tl1.order().collect();
    let load = |id: &EventId| tl1.load(id, m.nodes[1].local().store()).unwrap();
    let (first, second) = (load(&order[order.len() - 2]), load(&order[order.len() - 1]));
    assert_eq!(second.parents, vec![first.id()], "node 1's chain of two");
    // Fill node 0's pending set to its byte bound with orphans (the link to their sender is
    // cut, so nobody relays them and node 0's asks for their parents go nowhere).
    let body = 46 * 1024;
    let fill = MAX_PENDING_BYTES / (body + 200) + 1;
    for n in 0..fill as u64 {
        let id = 10_000 + n;
        m.gossip.insert(id, vec![]);
        m.inbox[0].push_back(Input::Gossip {
            from: 1,
            id,
            block: orphan(&g, &ks[2], n, body).bytes().to_vec(),
        });
        if n % 64 == 63 {
            m.step();
        }
    }
    m.step();
    // The byte bound leaves room for a small event after the last big one: fill that too.
    let mut n = fill as u64;
    loop {
        let id = 10_000 + n;
        m.gossip.insert(id, vec![]);
        m.inbox[0].push_back(Input::Gossip {
            from: 1,
            id,
            block: orphan(&g, &ks[2], n, 0).bytes().to_vec(),
        });
        m.step();
        n += 1;
        if m.verdicts.last() == Some(&(0, 1, Verdict::Busy)) {
            break;
        }
        assert!(n < fill as u64 + 2_000, "the pending set never fills");
    }
    let busy_from_1 = m
        .verdicts
        .iter()
        .filter(|v| **v == (0, 1, Verdict::Busy))
        .count();
    // Honest node 2 forwards node 1's second event before the first: node 0 cannot take it
    // now, which is nobody's fault.
    m.gossip.insert(1, vec![]);
    m.inbox[0].push_back(Input::Gossip {
        from: 2,
        id: 1,
        block: second.bytes().to_vec(),
    });
    m.step();
    assert_eq!(m.verdicts.last(), Some(&(0, 2, Verdict::Busy)));
    assert!(!Verdict::Busy.forward() && !Verdict::Busy.blame());
    assert_eq!(m.nodes[0].stats().invalid_by_peer.get("2"), None);
    assert_eq!(m.nodes[0].stats().invalid_by_peer.get("1"), None);
    // A light node's Submit that meets the full pending set is refused (so the light node
    // submits it again), never answered as stored without it (which means "rejected").
    let now = m.now;
    m.nodes[0].handle(
        now,
        Input::Request {
            peer: 2,
            id: 7_777,
            req: SyncRequest::Submit {
                blocks: vec![serde_bytes::ByteBuf::from(second.bytes().to_vec())],
            },
        },
    );
    m.nodes[0].end_turn(now, &mut decode);
    let mut answered = None;
    while let Some(o) = m.nodes[0].poll_output() {
        if let Output::Respond { id: 7_777, resp } = o {
            answered = Some(resp);
        }
    }
    assert!(
        matches!(&answered, Some(SyncResponse::Refused { reason }) if reason.contains("pending set full")),
        "{answered:?}"
    );
    assert_eq!(
        m.nodes[0]
            .stats()
            .rejected_by_code
            .get("pending_full")
            .copied(),
        // node 1's orphans, then node 2's gossip and its Submit of the same event
        Some(busy_from_1 as u64 + 2)
    );
    assert!(
        m.bans.is_empty(),
        "nobody is banned for back-pressure: {:?}",
        m.bans
    );
    assert!(!m.nodes[0].local().timeline().contains(&second.id()));
    // In order, both are taken at once: the bound holds only what waits for parents.
    m.heal();
    m.settle(8);
    assert!(m.nodes[0].local().timeline().contains(&first.id()));
    assert!(m.nodes[0].local().timeline().contains(&second.id()));
    assert!(m.bans.is_empty(), "{:?}", m.bans);
}

/// Four members, one of them writing: with heartbeats the idle three cover the writes, which
/// settle everywhere, and then the mesh goes quiet (heartbeats never ask for heartbeats).
/// Without them, the idle members hold the settled frontier for as long as they stay idle.
fn writes_by_one_member(heartbeat_ms: Option<u64>) -> (Mesh, Vec<EventId>) {
    writes_by_one_member_with(heartbeat_ms, None)
}

/// As above, with member `light` (if any) on a light node.
fn writes_by_one_member_with(
    heartbeat_ms: Option<u64>,
    light: Option<usize>,
) -> (Mesh, Vec<EventId>) {
    let ks = keys(4);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 16);
    let cfg = |i| Config {
        heartbeat_ms,
        light: light == Some(i),
        fold_on_tick: light == Some(i),
        ..Config::default()
    };
    let nodes = ks
        .iter()
        .enumerate()
        .map(|(i, k)| node(&g, k, cfg(i)))
        .collect();
    let mut m = Mesh::new(nodes);
    m.settle(2);
    for i in 0..3u64 {
        m.append(1, i, &format!("w{i}"));
    }
    m.settle(6);
    let ids = m
        .done
        .values()
        .flat_map(|r| r.clone().expect("written"))
        .collect();
    (m, ids)
}

#[test]
fn idle_members_heartbeat_until_every_write_is_settled_then_go_quiet() {
    let (mut m, ids) = writes_by_one_member(Some(2_000));
    assert_eq!(ids.len(), 3);
    for (i, n) in m.nodes.iter().enumerate() {
        let tl = n.local().timeline();
        for id in &ids {
            assert!(tl.is_settled(id), "node {i}: {id} not settled");
        }
    }
    // The writer's own event covers what it wrote: only the idle members owed heartbeats.
    assert!(m.nodes.iter().enumerate().all(|(i, n)| {
        let hb = n.stats().heartbeats;
        if i == 1 { hb <= 1 } else { hb >= 1 }
    }));
    let before: Vec<(u64, usize)> = m
        .nodes
        .iter()
        .map(|n| (n.stats().heartbeats, n.local().timeline().len()))
        .collect();
    m.settle(20);
    let after: Vec<(u64, usize)> = m
        .nodes
        .iter()
        .map(|n| (n.stats().heartbeats, n.local().timeline().len()))
        .collect();
    assert_eq!(before, after, "an idle mesh goes quiet");
}

/// A light member is a member: the frontier (and a final/1 committee) counts it, so it
/// heartbeats too, through its outbox, acknowledged by no one but stored by a full node
/// (before, a third of the members light and idle held finality for good: `chorus sim run
/// --scenario light --order final/1`).
#[test]
fn an_idle_light_member_heartbeats_through_a_full_node() {
    let (mut m, ids) = writes_by_one_member_with(Some(2_000), Some(3));
    assert_eq!(ids.len(), 3);
    assert!(m.nodes[3].stats().heartbeats >= 1);
    assert_eq!(m.nodes[3].outbox().len(), 0, "its heartbeats were stored");
    let light = m.nodes[3].local().key().author();
    for (i, n) in m.nodes.iter().enumerate() {
        let tl = n.local().timeline();
        assert!(tl.version_vector().contains_key(&light), "node {i}");
        for id in &ids {
            assert!(tl.is_settled(id), "node {i}: {id} not settled");
        }
    }
    let before: Vec<usize> = m.nodes.iter().map(|n| n.local().timeline().len()).collect();
    m.settle(20);
    let after: Vec<usize> = m.nodes.iter().map(|n| n.local().timeline().len()).collect();
    assert_eq!(
        before, after,
        "an idle mesh goes quiet, the light member too"
    );
}

#[test]
fn without_heartbeats_idle_members_hold_the_settled_frontier() {
    let (m, ids) = writes_by_one_member(None);
    assert_eq!(ids.len(), 3);
    for n in &m.nodes {
        assert_eq!(n.stats().heartbeats, 0);
        assert!(ids.iter().all(|id| !n.local().timeline().is_settled(id)));
    }
}

/// Ten writes by four members in turn, then ticks until everything is final and certified.
fn write_ten_until_final(m: &mut Mesh) {
    for i in 0..10u64 {
        m.append((i % 4) as u8, i, &format!("w{i}"));
        m.settle(1);
    }
    m.settle(20);
}

/// Four members of a `final/1` counter timeline (checkpoints every 4 positions) that wrote ten
/// events and heartbeat until all were final: every node holds a certificate.
fn certified_mesh() -> (Vec<Keypair>, SignedEvent, Mesh) {
    let ks = keys(4);
    let g = testkit::genesis_ordered(&ks[0], &ks, "counter/1", 4, Some("final/1"));
    let cfg = Config {
        heartbeat_ms: Some(1_000),
        fold_on_tick: true,
        ..Config::default()
    };
    let mut m = Mesh::new(ks.iter().map(|k| node(&g, k, cfg)).collect());
    m.settle(2);
    write_ten_until_final(&mut m);
    (ks, g, m)
}

/// `final/1`: the members' heartbeats attest the newest checkpoint inside their final prefix;
/// once a quorum attested the same values every node holds a certificate, which a stranger
/// checks with nothing but the genesis, the committee and the named heartbeats. A member that
/// attests a false state is a conflict, and certifies nothing on its own.
#[test]
fn heartbeats_attest_final_checkpoints_and_a_quorum_certifies_them() {
    use chorus_core::finality::certificate::{Attestation, Certificate, CertificateError};
    let (ks, g, mut m) = certified_mesh();
    let certs: Vec<Certificate> = m
        .nodes
        .iter()
        .map(|n| {
            let tl = n.local().timeline();
            assert_eq!(tl.attestations().unwrap().conflicts(), 0);
            tl.attestations()
                .unwrap()
                .certificate()
                .cloned()
                .expect("a certificate")
        })
        .collect();
    let newest = certs.iter().map(|c| c.att.positions).max().unwrap();
    // Everything is final: the certificate reaches the last checkpoint (every 4 positions)
    // inside the final prefix, on every node.
    for (i, n) in m.nodes.iter().enumerate() {
        let final_positions = n.local().timeline().finality().unwrap().final_positions;
        assert_eq!(certs[i].att.positions, final_positions / 4 * 4, "node {i}");
    }
    // The certified values are what this replica computes for that final prefix.
    let n0 = m.nodes[0].local();
    let tl = n0.timeline();
    let c = certs.iter().find(|c| c.att.positions == newest).unwrap();
    assert!(tl.finality().unwrap().final_positions >= c.att.positions);
    let last_pos = tl.order().position(|id| id == c.att.last).unwrap();
    assert_eq!(last_pos as u64 + 1, c.att.positions);
    // Checked by a stranger: the block round-trips, the heartbeats are loaded by id.
    let block = c.to_block();
    let back = Certificate::from_block(&block).unwrap();
    assert_eq!(&back, c);
    let get = |id: &EventId| tl.load(id, n0.store()).ok();
    let params = tl.genesis().finality_quorum();
    back.verify(g.id(), params, get).unwrap();
    // Tampered: one signer short, another state, a signer twice.
    let mut short = back.clone();
    short.by.truncate(2);
    assert!(matches!(
        short.verify(g.id(), params, get),
        Err(CertificateError::NoQuorum {
            have: 2,
            need: 3,
            ..
        })
    ));
    let mut lie = back.clone();
    lie.att.state[0] ^= 1;
    assert!(matches!(
        lie.verify(g.id(), params, get),
        Err(CertificateError::OtherValues { .. })
    ));
    let mut twice = back.clone();
    twice.by = vec![back.by[0], back.by[0], back.by[1]];
    assert!(matches!(
        twice.verify(g.id(), params, get),
        Err(CertificateError::SameAuthor(_))
    ));
    assert!(matches!(
        back.verify(EventId([7; 32]), params, get),
        Err(CertificateError::OtherTimeline(_))
    ));

    // Member 3 heartbeats a false state for the next checkpoint: the others count a conflict.
    let false_att = Attestation {
        positions: newest,
        last: c.att.last,
        state: [0xee; 32],
    };
    m.inbox[3].push_back(Input::Append {
        write: WriteId(900),
        items: vec![(kind::HEARTBEAT.to_string(), false_att.to_body())],
    });
    m.settle(3);
    assert!(matches!(m.done.get(&(3, WriteId(900))), Some(Ok(_))));
    for (i, n) in m.nodes.iter().enumerate() {
        let a = n.local().timeline().attestations().unwrap();
        assert_eq!(a.conflicts(), 1, "node {i}");
        assert_eq!(a.last_conflict().unwrap().by, ks[3].author());
        assert_ne!(a.certificate().unwrap().att.state, [0xee; 32]);
    }
}

/// A certified snapshot (`snapshot/1`): built from the certified final checkpoint, checked by
/// a stranger that fetches every block by CID and knows only the genesis and the epoch's
/// committee; refused with a typed error when its certificate lacks a quorum, is signed by
/// non-members, or its state bytes do not hash to the certified value.
#[test]
fn a_certified_snapshot_is_checked_by_a_stranger_and_every_forgery_is_refused() {
    use chorus_core::{
        AuthorId,
        finality::certificate::{Certificate, CertificateError},
        snapshot::{self, Snapshot, SnapshotError},
    };
    let (ks, g, m) = certified_mesh();
    let n0 = m.nodes[0].local();
    let tl = n0.timeline();
    let cert = tl.attestations().unwrap().certificate().cloned().unwrap();
    let state = tl
        .final_checkpoint_state(cert.att.positions, cert.att.last, n0.store())
        .expect("the certified checkpoint's state is held");
    let snap = Snapshot::build(&cert, None, &state);

    // What a stranger can fetch by CID: the snapshot's blocks and the timeline's events.
    let mut blocks: BTreeMap<cid::Cid, Vec<u8>> = BTreeMap::new();
    let put = |blocks: &mut BTreeMap<cid::Cid, Vec<u8>>, s: &Snapshot| {
        blocks.insert(s.root_cid, s.root.clone());
        blocks.insert(s.certificate.cid(), s.certificate.to_block());
        for (c, b) in &s.chunks {
            blocks.insert(*c, b.clone());
        }
    };
    put(&mut blocks, &snap);
    for id in tl.order() {
        let ev = tl.load(&id, n0.store()).unwrap();
        blocks.insert(id.to_cid(), ev.bytes().to_vec());
    }
    // The stranger knows the genesis committee (epoch 0, the four members here).
    let members: Vec<AuthorId> = ks.iter().map(|k| k.author()).collect();
    let epoch0 = |e: u32| (e == 0).then(|| members.clone());
    let machine = CounterMachine;
    let check = |blocks: &BTreeMap<cid::Cid, Vec<u8>>, root: cid::Cid| {
        snapshot::verify(
            &machine,
            g.id(),
            tl.genesis(),
            root,
            |c| blocks.get(c).cloned(),
            epoch0,
        )
    };
    let ok = check(&blocks, snap.root_cid)
        .map_err(|e| e.to_string())
        .unwrap();
    assert_eq!(ok.certificate, cert);
    assert_eq!(ok.state_bytes, *state);
    assert_eq!(
        chorus_core::Machine::state_hash(&machine, &ok.state),
        cert.att.state
    );

    // Lacks a quorum: two of four heartbeats.
    let mut short = cert.clone();
    short.by.truncate(2);
    let s = Snapshot::build(&short, None, &state);
    put(&mut blocks, &s);
    assert!(matches!(
        check(&blocks, s.root_cid),
        Err(SnapshotError::Certificate(CertificateError::NoQuorum {
            have: 2,
            need: 3,
            ..
        }))
    ));

    // Signed by non-members: four outsiders' heartbeats attest the values, under a committee
    // of their own, then under the real committee's name.
    let outsiders = keys_from(4, 100);
    let mut by: Vec<EventId> = vec![];
    for k in &outsiders {
        let hb = UnsignedEvent {
            timeline: Some(g.id()),
            author: k.author(),
            seq: 1,
            lamport: 1,
            parents: vec![g.id()],
            kind: kind::HEARTBEAT.into(),
            body: cert.att.to_body(),
        }
        .sign(k);
        blocks.insert(hb.id().to_cid(), hb.bytes().to_vec());
        by.push(hb.id());
    }
    by.sort();
    let mut committee: Vec<AuthorId> = outsiders.iter().map(|k| k.author()).collect();
    committee.sort();
    let forged = Certificate {
        committee,
        by: by.clone(),
        ..cert.clone()
    };
    // Sabotage: the certificate's own check trusts the committee it names, and passes.
    let hb = |id: &EventId| {
        blocks
            .get(&id.to_cid())
            .and_then(|b| SignedEvent::decode(b).ok())
    };
    assert!(
        forged
            .verify(g.id(), tl.genesis().finality_quorum(), hb)
            .is_ok()
    );
    let s = Snapshot::build(&forged, None, &state);
    put(&mut blocks, &s);
    assert!(matches!(
        check(&blocks, s.root_cid),
        Err(SnapshotError::NotTheCommittee { epoch: 0 })
    ));
    let posing = Certificate { by, ..cert.clone() };
    let s = Snapshot::build(&posing, None, &state);
    put(&mut blocks, &s);
    assert!(matches!(
        check(&blocks, s.root_cid),
        Err(SnapshotError::Certificate(CertificateError::Outsider(_)))
    ));

    // State bytes that do not hash to the certified value.
    let mut other = state.to_vec();
    other[0] ^= 1;
    let s = Snapshot::build(&cert, None, &other);
    put(&mut blocks, &s);
    assert!(matches!(
        check(&blocks, s.root_cid),
        Err(SnapshotError::StateMismatch { .. })
    ));

    // A block swapped on the way, one missing, an epoch the stranger cannot place.
    let mut swapped = blocks.clone();
    swapped.insert(snap.chunks[0].0, other.clone());
    assert_eq!(
        check(&swapped, snap.root_cid).err(),
        Some(SnapshotError::BlockMismatch(snap.chunks[0].0))
    );
    let mut missing = blocks.clone();
    missing.remove(&cert.by[0].to_cid());
    assert_eq!(
        check(&missing, snap.root_cid).err(),
        Some(SnapshotError::Missing(cert.by[0].to_cid()))
    );
    let nobody = snapshot::verify(
        &machine,
        g.id(),
        tl.genesis(),
        snap.root_cid,
        |c| blocks.get(c).cloned(),
        |_| None,
    );
    assert!(matches!(nobody, Err(SnapshotError::UnknownEpoch(0))));

    // Another timeline's snapshot; a root that is no DAG-CBOR block.
    let other = snapshot::verify(
        &machine,
        EventId([9; 32]),
        tl.genesis(),
        snap.root_cid,
        |c| blocks.get(c).cloned(),
        epoch0,
    );
    assert!(
        matches!(other, Err(SnapshotError::OtherTimeline(_))),
        "{other:?}"
    );
    let raw_root = snapshot::chunk_cid(&snap.root);
    blocks.insert(raw_root, snap.root.clone());
    assert!(matches!(
        check(&blocks, raw_root),
        Err(SnapshotError::Decode(_))
    ));

    // Roots made by hand (the root is unsigned: anyone can wrap a real certificate): a size
    // over the bound, and chunks that are not the one layout, refused before any chunk is
    // fetched or any byte reserved.
    let hand_root = |blocks: &mut BTreeMap<cid::Cid, Vec<u8>>, size: u64, chunks: Vec<cid::Cid>| {
        let root = chorus_core::codec::encode(&ipld_core::ipld::Ipld::Map(BTreeMap::from([
            ("v".to_string(), ipld_core::ipld::Ipld::Integer(1)),
            (
                "tl".to_string(),
                ipld_core::ipld::Ipld::Link(g.id().to_cid()),
            ),
            ("cert".to_string(), ipld_core::ipld::Ipld::Link(cert.cid())),
            (
                "size".to_string(),
                ipld_core::ipld::Ipld::Integer(size.into()),
            ),
            (
                "chunks".to_string(),
                ipld_core::ipld::Ipld::List(
                    chunks
                        .into_iter()
                        .map(ipld_core::ipld::Ipld::Link)
                        .collect(),
                ),
            ),
        ])));
        let cid = EventId::of_block(&root).to_cid();
        blocks.insert(cid, root);
        cid
    };
    let huge = hand_root(&mut blocks, snapshot::MAX_SNAPSHOT_BYTES + 1, vec![]);
    assert!(matches!(
        check(&blocks, huge),
        Err(SnapshotError::TooLarge { .. })
    ));
    let empty_chunk = snapshot::chunk_cid(b"");
    blocks.insert(empty_chunk, vec![]);
    let padded = hand_root(
        &mut blocks,
        state.len() as u64,
        vec![snap.chunks[0].0, empty_chunk, empty_chunk],
    );
    assert!(matches!(
        check(&blocks, padded),
        Err(SnapshotError::Decode(_))
    ));
    let short_chunk = snapshot::chunk_cid(&state[..state.len() - 1]);
    blocks.insert(short_chunk, state[..state.len() - 1].to_vec());
    let cut = hand_root(&mut blocks, state.len() as u64, vec![short_chunk]);
    assert!(matches!(
        check(&blocks, cut),
        Err(SnapshotError::SizeMismatch { .. })
    ));

    // A heartbeat listed twice, and one whose signature does not hold.
    let mut twice = cert.clone();
    twice.by = vec![cert.by[0], cert.by[0], cert.by[1], cert.by[2]];
    let s = Snapshot::build(&twice, None, &state);
    put(&mut blocks, &s);
    assert!(matches!(
        check(&blocks, s.root_cid),
        Err(SnapshotError::Decode(_))
    ));
    let hb0 = blocks[&cert.by[0].to_cid()].clone();
    let mut forged_sig = hb0.clone();
    let n = forged_sig.len();
    forged_sig[n - 3] ^= 1;
    let forged_id = EventId::of_block(&forged_sig);
    blocks.insert(forged_id.to_cid(), forged_sig);
    let mut bad = cert.clone();
    bad.by[0] = forged_id;
    bad.by.sort();
    let s = Snapshot::build(&bad, None, &state);
    put(&mut blocks, &s);
    let r = check(&blocks, s.root_cid);
    assert!(
        matches!(r, Err(SnapshotError::BadHeartbeat { .. })),
        "{r:?}"
    );

    // A quorum of the real members certifying bytes the machine refuses, or bytes it reads
    // but would not write (two kinds out of order): the signatures hold, the state does not.
    let certify = |blocks: &mut BTreeMap<cid::Cid, Vec<u8>>, bytes: &[u8], seq: u64| {
        let att = chorus_core::finality::certificate::Attestation {
            state: EventId::of_block(bytes).0,
            ..cert.att
        };
        let mut by: Vec<EventId> = ks[..3]
            .iter()
            .map(|k| {
                let hb = UnsignedEvent {
                    timeline: Some(g.id()),
                    author: k.author(),
                    seq,
                    lamport: seq,
                    parents: vec![g.id()],
                    kind: kind::HEARTBEAT.into(),
                    body: att.to_body(),
                }
                .sign(k);
                blocks.insert(hb.id().to_cid(), hb.bytes().to_vec());
                hb.id()
            })
            .collect();
        by.sort();
        let c = Certificate {
            att,
            by,
            ..cert.clone()
        };
        let s = Snapshot::build(&c, None, bytes);
        put(blocks, &s);
        s.root_cid
    };
    let garbage = certify(&mut blocks, b"not a counter state", 1_000);
    let r = check(&blocks, garbage);
    assert!(matches!(r, Err(SnapshotError::State(_))), "{r:?}");
    let mut unordered = 2u64.to_le_bytes().to_vec();
    for k in ["b", "a"] {
        unordered.extend_from_slice(&1u16.to_le_bytes());
        unordered.extend_from_slice(k.as_bytes());
        unordered.extend_from_slice(&1u64.to_le_bytes());
    }
    let unordered = certify(&mut blocks, &unordered, 1_001);
    let r = check(&blocks, unordered);
    assert!(matches!(r, Err(SnapshotError::NotCanonical)), "{r:?}");
}

/// A `final/2` timeline started as `chorus init` starts one (the admin alone), then joined by
/// three writers, one committee change (epoch) each; the four write until everything is final.
fn handover_mesh() -> (Vec<Keypair>, SignedEvent, Mesh) {
    handover_mesh_with(false, false, false)
}

/// [`handover_mesh`]; `liar`: once it joined, member 1 also heartbeats a false claim for the
/// next committee change (the committee handed to itself alone); `sabotaged`: every replica
/// certifies a claim on one member's word, unchecked against its own epochs; `churn`: then
/// the admin removes member 3 and adds it back, one by one (epochs 4 to 7).
fn handover_mesh_with(
    liar: bool,
    sabotaged: bool,
    churn: bool,
) -> (Vec<Keypair>, SignedEvent, Mesh) {
    use chorus_core::{
        finality::handover::{HandoverClaim, committee_hash, heartbeat_body},
        membership::{MemberOp, Role},
    };
    let ks = keys(4);
    let g = testkit::genesis_ordered(&ks[0], &[], "counter/1", 4, Some("final/2"));
    let cfg = Config {
        heartbeat_ms: Some(1_000),
        fold_on_tick: true,
        ..Config::default()
    };
    let mut m = Mesh::new(
        ks.iter()
            .map(|k| {
                let mut tl = Timeline::new(g.clone(), CounterMachine).unwrap();
                if sabotaged {
                    assert!(tl.sabotage_handover_quorum(1));
                }
                let store = MemStore::with_complete_own_chain(&g);
                NodeState::new(Local::new(tl, store, k.clone()), cfg)
            })
            .collect(),
    );
    m.settle(2);
    for (i, k) in ks.iter().enumerate().skip(1) {
        if liar && i == 2 {
            // Member 1 is on epoch 1's committee, which hands over to epoch 2 next.
            let n = m.nodes[1].local_mut();
            let claim = HandoverClaim {
                epoch: 2,
                block: g.id(),
                next: committee_hash(&[ks[1].author()]),
            };
            let ev = n
                .timeline()
                .prepare(
                    ks[1].author(),
                    kind::HEARTBEAT,
                    heartbeat_body(None, Some(&claim)),
                )
                .sign(&ks[1]);
            n.ingest(vec![ev.clone()]).unwrap();
            m.gossip_to(1, ev.bytes().to_vec(), 1);
            m.settle(1);
        }
        m.inbox[0].push_back(Input::Append {
            write: WriteId(100 + i as u64),
            items: vec![(
                kind::MEMBER.to_string(),
                MemberOp::Add(k.author(), Role::Writer).to_body(),
            )],
        });
        m.settle(10);
    }
    if churn {
        for round in 0..2u64 {
            for (j, op) in [
                MemberOp::Remove(ks[3].author()),
                MemberOp::Add(ks[3].author(), Role::Writer),
            ]
            .into_iter()
            .enumerate()
            {
                m.inbox[0].push_back(Input::Append {
                    write: WriteId(200 + 2 * round + j as u64),
                    items: vec![(kind::MEMBER.to_string(), op.to_body())],
                });
                m.settle(10);
            }
        }
    }
    write_ten_until_final(&mut m);
    (ks, g, m)
}

/// `final/2`: after each committee change the old committee's heartbeats attest it (a
/// handover), every node certifies the same chain, and a stranger holding only the genesis
/// walks it to the committee of the newest epoch and trusts a snapshot certified there —
/// which under `final/1` it could not (the committee of epoch 3 is not the genesis's). A
/// forged step (outsiders handing the committee to themselves) stops the walk.
#[test]
fn final_2_handovers_let_a_stranger_with_only_the_genesis_trust_a_later_epoch() {
    use chorus_core::{
        AuthorId,
        finality::{
            certificate::CertificateError,
            handover::{self, Handover, HandoverClaim, committee_hash, heartbeat_body},
        },
        snapshot::{self, Snapshot, SnapshotError},
    };
    let (ks, g, m) = handover_mesh();
    let mut members: Vec<AuthorId> = ks.iter().map(|k| k.author()).collect();
    members.sort();
    let chains: Vec<Vec<Handover>> = m
        .nodes
        .iter()
        .map(|n| {
            let tl = n.local().timeline();
            let f = tl.finality().unwrap();
            assert_eq!(f.epoch, 3, "one epoch per member added");
            assert_eq!(f.committee, members);
            let h = tl.handovers().unwrap();
            assert_eq!(h.conflicts(), 0);
            h.chain_to(3)
                .expect("every handover certified")
                .into_iter()
                .cloned()
                .collect()
        })
        .collect();
    // Every node certified the same claims (the signers may differ).
    for c in &chains[1..] {
        let claims = |c: &[Handover]| c.iter().map(|h| h.claim).collect::<Vec<_>>();
        assert_eq!(claims(c), claims(&chains[0]));
    }
    // The committees grow one member an epoch, from the admin alone.
    let sizes: Vec<usize> = chains[0].iter().map(|h| h.next.len()).collect();
    assert_eq!(sizes, vec![2, 3, 4]);
    assert_eq!(chains[0][0].committee, vec![ks[0].author()]);

    let n0 = m.nodes[0].local();
    let tl = n0.timeline();
    let cert = tl.attestations().unwrap().certificate().cloned().unwrap();
    assert_eq!(cert.epoch, 3);
    let state = tl
        .final_checkpoint_state(cert.att.positions, cert.att.last, n0.store())
        .expect("the certified checkpoint's state is held");
    let chain: Vec<&Handover> = chains[0].iter().collect();
    let snap = Snapshot::build(&cert, Some(&chain), &state);
    assert_eq!(snap.handovers.len(), 3);

    let mut blocks: BTreeMap<cid::Cid, Vec<u8>> = BTreeMap::new();
    let put = |blocks: &mut BTreeMap<cid::Cid, Vec<u8>>, s: &Snapshot| {
        blocks.insert(s.root_cid, s.root.clone());
        blocks.insert(s.certificate.cid(), s.certificate.to_block());
        for (c, b) in s.chunks.iter().chain(&s.handovers) {
            blocks.insert(*c, b.clone());
        }
    };
    put(&mut blocks, &snap);
    for id in tl.order() {
        let ev = tl.load(&id, n0.store()).unwrap();
        blocks.insert(id.to_cid(), ev.bytes().to_vec());
    }
    let machine = CounterMachine;
    // The stranger knows nothing but the genesis: `committee_of` answers for no epoch.
    let check = |blocks: &BTreeMap<cid::Cid, Vec<u8>>, root: cid::Cid| {
        snapshot::verify(
            &machine,
            g.id(),
            tl.genesis(),
            root,
            |c| blocks.get(c).cloned(),
            |_| None,
        )
    };
    let ok = check(&blocks, snap.root_cid)
        .map_err(|e| e.to_string())
        .unwrap();
    assert_eq!(ok.certificate, cert);
    assert_eq!(ok.state_bytes, *state);
    // A checker that knows the epoch's committee from its own replay narrows the walk: the
    // real one passes, another (as a chain forked by a former committee would reach) or
    // none (an epoch it has moved past) is refused.
    for (own, ok) in [
        (members.clone(), true),
        (members[..3].to_vec(), false),
        (vec![], false),
    ] {
        let r = snapshot::verify(
            &machine,
            g.id(),
            tl.genesis(),
            snap.root_cid,
            |c| blocks.get(c).cloned(),
            |_| Some(own.clone()),
        );
        match ok {
            true => assert!(r.is_ok(), "{r:?}"),
            false => assert!(
                matches!(r, Err(SnapshotError::NotTheCommittee { epoch: 3 })),
                "{r:?}"
            ),
        }
    }
    // A certificate of a position that is no checkpoint (the replay could never compare its
    // own state there): refused before anything else is fetched.
    let off = chorus_core::finality::certificate::Certificate {
        att: chorus_core::finality::certificate::Attestation {
            positions: cert.att.positions + 1,
            ..cert.att
        },
        ..cert.clone()
    };
    let s = Snapshot::build(&off, Some(&chain), &state);
    put(&mut blocks, &s);
    let r = check(&blocks, s.root_cid);
    assert!(
        matches!(r, Err(SnapshotError::NotACheckpoint { interval: 4, .. })),
        "{r:?}"
    );
    // Without the chain (a v1 root) the same stranger cannot place epoch 3.
    let v1 = Snapshot::build(&cert, None, &state);
    put(&mut blocks, &v1);
    assert!(matches!(
        check(&blocks, v1.root_cid),
        Err(SnapshotError::UnknownEpoch(3))
    ));

    // A forged first step: four outsiders claim the admin handed the committee to them, and
    // certify the state under their own committee.
    let outsiders = keys_from(4, 100);
    let mut theirs: Vec<AuthorId> = outsiders.iter().map(|k| k.author()).collect();
    theirs.sort();
    let claim = HandoverClaim {
        next: committee_hash(&theirs),
        ..chains[0][0].claim
    };
    let mut by: Vec<EventId> = outsiders
        .iter()
        .map(|k| {
            let hb = UnsignedEvent {
                timeline: Some(g.id()),
                author: k.author(),
                seq: 1,
                lamport: 1,
                parents: vec![g.id()],
                kind: kind::HEARTBEAT.into(),
                body: heartbeat_body(None, Some(&claim)),
            }
            .sign(k);
            blocks.insert(hb.id().to_cid(), hb.bytes().to_vec());
            hb.id()
        })
        .collect();
    by.sort();
    let forged = Handover {
        timeline: g.id(),
        claim,
        committee: theirs.clone(),
        next: theirs.clone(),
        by: by.clone(),
    };
    let hb = |id: &EventId| {
        blocks
            .get(&id.to_cid())
            .and_then(|b| SignedEvent::decode(b).ok())
    };
    let params = tl.genesis().finality_quorum();
    // Sabotage: checked against the committee it names itself, the forged step passes.
    assert!(forged.verify(g.id(), params, &theirs, hb).is_ok());
    // Walked from the genesis committee (the admin alone), it does not.
    let genesis_committee = vec![ks[0].author()];
    let r = handover::walk(
        g.id(),
        params,
        genesis_committee.clone(),
        std::slice::from_ref(&forged),
        hb,
    );
    assert!(matches!(r, Err((1, CertificateError::Decode(_)))), "{r:?}");
    // Under the admin's name, the outsiders' heartbeats are outsiders'.
    let posing = Handover {
        committee: genesis_committee.clone(),
        ..forged.clone()
    };
    let r = handover::walk(
        g.id(),
        params,
        genesis_committee.clone(),
        std::slice::from_ref(&posing),
        hb,
    );
    assert!(
        matches!(r, Err((1, CertificateError::Outsider(_)))),
        "{r:?}"
    );
    // The honest chain walks to the committee of epoch 3.
    let real = handover::walk(g.id(), params, genesis_committee, &chains[0], hb).unwrap();
    assert_eq!(real, members);

    // As a snapshot: the outsiders' certificate of the state behind the forged step.
    let att_by: Vec<EventId> = {
        let mut v: Vec<EventId> = outsiders
            .iter()
            .map(|k| {
                let hb = UnsignedEvent {
                    timeline: Some(g.id()),
                    author: k.author(),
                    seq: 2,
                    lamport: 2,
                    parents: vec![g.id()],
                    kind: kind::HEARTBEAT.into(),
                    body: heartbeat_body(Some(&cert.att), None),
                }
                .sign(k);
                blocks.insert(hb.id().to_cid(), hb.bytes().to_vec());
                hb.id()
            })
            .collect();
        v.sort();
        v
    };
    let their_cert = chorus_core::finality::certificate::Certificate {
        epoch: 1,
        committee: theirs.clone(),
        by: att_by,
        ..cert.clone()
    };
    let s = Snapshot::build(&their_cert, Some(&[&posing]), &state);
    put(&mut blocks, &s);
    // Four heartbeats named for a committee of one: refused before any is fetched.
    let r = check(&blocks, s.root_cid);
    assert!(
        matches!(
            r,
            Err(SnapshotError::Handover {
                epoch: 1,
                why: CertificateError::Decode(_)
            })
        ),
        "{r:?}"
    );
    // One: fetched, and an outsider's.
    let posing_one = Handover {
        by: vec![posing.by[0]],
        ..posing.clone()
    };
    let s = Snapshot::build(&their_cert, Some(&[&posing_one]), &state);
    put(&mut blocks, &s);
    let r = check(&blocks, s.root_cid);
    assert!(
        matches!(
            r,
            Err(SnapshotError::Handover {
                epoch: 1,
                why: CertificateError::Outsider(_)
            })
        ),
        "{r:?}"
    );
    // A chain one short of the certificate's epoch, and a v2 root on a final/1 timeline.
    let short = Snapshot::build(&cert, Some(&chain[..2]), &state);
    put(&mut blocks, &short);
    let r = check(&blocks, short.root_cid);
    assert!(matches!(r, Err(SnapshotError::Decode(_))), "{r:?}");
    let (_, g1, m1) = certified_mesh();
    let tl1 = m1.nodes[0].local().timeline();
    let cert1 = tl1.attestations().unwrap().certificate().cloned().unwrap();
    let s = Snapshot::build(&cert1, Some(&[]), &state);
    let mut b1 = BTreeMap::new();
    put(&mut b1, &s);
    let r = snapshot::verify(
        &machine,
        g1.id(),
        tl1.genesis(),
        s.root_cid,
        |c| b1.get(c).cloned(),
        |_| None,
    );
    assert!(matches!(r, Err(SnapshotError::Decode(_))), "{r:?}");
}

/// The attacker of the handover tally: a member of the old committee claims, before the
/// change, that the next committee is itself alone. Every replica counts it as a conflict and
/// certifies the true handover, so the chain walks from the genesis committee to the real
/// members. The sabotage (a claim certified on one member's word, unchecked against the
/// replica's own epochs) certifies the lie, and the same walk fails.
#[test]
fn a_false_handover_claim_is_a_conflict_and_its_sabotage_certifies_the_lie() {
    use chorus_core::{AuthorId, finality::handover};
    let walk_all = |liar: bool, sabotaged: bool| {
        let (ks, g, m) = handover_mesh_with(liar, sabotaged, false);
        let mut members: Vec<AuthorId> = ks.iter().map(|k| k.author()).collect();
        members.sort();
        m.nodes
            .iter()
            .map(|n| {
                let tl = n.local().timeline();
                let h = tl.handovers().unwrap();
                let chain: Vec<handover::Handover> = h
                    .chain_to(tl.finality().unwrap().epoch)
                    .expect("every handover certified")
                    .into_iter()
                    .cloned()
                    .collect();
                let get = |id: &EventId| tl.load(id, n.local().store()).ok();
                let walked = handover::walk(
                    g.id(),
                    tl.genesis().finality_quorum(),
                    vec![ks[0].author()],
                    &chain,
                    get,
                );
                (h.conflicts(), walked.map(|c| c == members))
            })
            .collect::<Vec<_>>()
    };
    for (conflicts, walked) in walk_all(true, false) {
        assert!(conflicts >= 1, "the lie is seen");
        assert_eq!(walked, Ok(true), "the true chain is certified");
    }
    // Sabotaged, the lie (claimed before the change, so the first claim each replica tallies
    // for epoch 2) is certified on the liar's word alone, and a stranger's walk finds one
    // signer of a committee of two.
    for (_, walked) in walk_all(true, true) {
        assert!(
            matches!(
                walked,
                Err((
                    2,
                    chorus_core::finality::certificate::CertificateError::NoQuorum {
                        have: 1,
                        need: 2,
                        n: 2
                    }
                ))
            ),
            "sabotaged, the lie is certified and the walk fails at it: {walked:?}"
        );
    }
}

/// `final/2` across seven committee changes: every node certifies every handover, goes quiet
/// once all are (a handover is claimed once, not every interval), and a node restarted from
/// its store (`Timeline::restore`: every event indexed before finality is decided, so every
/// claim arrives before its epoch) certifies the same chain again.
#[test]
fn final_2_handovers_survive_a_restart_and_the_mesh_goes_quiet() {
    use chorus_core::finality::handover::Handover;
    let (_ks, g, mut m) = handover_mesh_with(false, false, true);
    let epoch = m.nodes[0].local().timeline().finality().unwrap().epoch;
    assert_eq!(
        epoch, 7,
        "three additions, then two removals and two additions"
    );
    let claims = |tl: &Timeline<CounterMachine>| -> Vec<_> {
        tl.handovers()
            .unwrap()
            .chain_to(epoch)
            .expect("every handover certified")
            .into_iter()
            .map(|h: &Handover| h.claim)
            .collect()
    };
    let want = claims(m.nodes[0].local().timeline());
    for n in &m.nodes {
        assert_eq!(claims(n.local().timeline()), want);
    }
    let events = |m: &Mesh| {
        m.nodes
            .iter()
            .map(|n| n.local().timeline().len())
            .sum::<usize>()
    };
    let before = events(&m);
    m.settle(30);
    assert_eq!(
        events(&m),
        before,
        "an idle final/2 mesh heartbeats no more"
    );

    let n0 = m.nodes[0].local();
    let store = n0.store();
    let blocks: Vec<SignedEvent> = store
        .ordered_blocks()
        .iter()
        .map(|b| SignedEvent::decode(b).unwrap())
        .collect();
    let restored = Timeline::restore(
        g.clone(),
        CounterMachine,
        blocks,
        store.checkpoints(),
        store,
    )
    .unwrap();
    assert_eq!(restored.state_hash(), n0.timeline().state_hash());
    assert_eq!(claims(&restored), want);
}

/// Peer ids are free: the per-peer list of invalid blocks keeps only the most charged peers
/// within its bound, and the total counts every peer's.
#[test]
fn the_invalid_peer_list_keeps_the_most_charged_within_its_bound() {
    use chorus_core::proto::node::{MAX_INVALID_PEERS_LISTED, NodeStats};
    let mut s = NodeStats::default();
    let mut total = 0;
    for i in 0..1000u64 {
        let n = 1 + i % 7;
        total += n;
        s.charge_invalid(format!("peer {i}"), n);
    }
    assert_eq!(s.invalid_by_peer.len(), MAX_INVALID_PEERS_LISTED);
    assert_eq!(s.invalid_total, total);
    for i in (0..1000u64).filter(|i| i % 7 == 6) {
        assert_eq!(
            s.invalid_by_peer.get(&format!("peer {i}")),
            Some(&7),
            "peer {i}"
        );
    }
    // A known peer's count grows whatever the bound.
    s.charge_invalid("peer 6".into(), 3);
    assert_eq!(s.invalid_by_peer["peer 6"], 10);
}

/// A light node on disk restarted holding 600 own events of which its full peer has the first
/// 300 (the rest sat in its outbox, gone with the restart): it hands on exactly the 300 the
/// full node's summary says it lacks, one submission of at most 256 events a tick, never more
/// than `RESUBMIT_QUEUED` queued. A light node serves no blocks, so without the hand-on
/// (`light_on_disk: false`, the in-memory light node, whose restart loses such events with its
/// memory) the full node never gets them.
#[test]
fn a_restarted_light_node_on_disk_hands_on_the_own_events_its_full_peer_lacks() {
    let ks = keys(2);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 16);
    let own = chain(&g, &ks[1], 600);
    for on_disk in [true, false] {
        let light = Config {
            light: true,
            light_on_disk: on_disk,
            fold_on_tick: true,
            ..Config::default()
        };
        let tl = Timeline::new(g.clone(), CounterMachine).unwrap();
        let mut l = Local::new(tl, MemStore::with_complete_own_chain(&g), ks[1].clone());
        l.ingest(own.clone()).unwrap();
        let mut m = Mesh::new(vec![
            node_with(&g, &ks[0], &own[..300]),
            NodeState::new(l, light),
        ]);
        let mut last = 0;
        for _ in 0..60 {
            // One tick each: at most one submission handed on.
            m.settle(0);
            let now = m.nodes[1].resubmitted;
            assert!(now - last <= 256, "{} in one tick", now - last);
            assert!(
                m.nodes[1].outbox().unanswered_len() <= chorus_core::proto::node::RESUBMIT_QUEUED
            );
            last = now;
        }
        let held = own
            .iter()
            .filter(|e| m.nodes[0].local().timeline().contains(&e.id()))
            .count();
        if on_disk {
            assert_eq!(held, 600, "every own event handed on");
            assert_eq!(
                m.nodes[1].resubmitted, 300,
                "only what the full node lacked"
            );
            assert_eq!(m.nodes[1].outbox().len(), 0);
            m.nodes[0].fold();
            m.nodes[1].fold();
            assert_eq!(
                m.nodes[0].local().timeline().state_hash(),
                m.nodes[1].local().timeline().state_hash()
            );
        } else {
            assert_eq!(held, 300, "a light node serves no blocks");
            assert_eq!(m.nodes[1].resubmitted, 0);
        }
    }
}

/// Every write of a turn is signed and checked on its own and committed in one transaction:
/// many clients appending one event each cost one commit a turn. A write refused for its
/// content is refused alone.
#[test]
fn the_writes_of_a_turn_are_committed_together_and_refused_alone() {
    let ks = keys(1);
    let g = testkit::genesis(&ks[0], &[], "counter/1", 64);
    let mut n = node(&g, &ks[0], Config::default());
    let before = n.local().store().commits();
    for w in 0..64u64 {
        let kind = if w == 7 {
            "no such kind!"
        } else {
            kind::STIMULUS
        };
        n.handle(
            0,
            Input::Append {
                write: WriteId(w),
                items: vec![(kind.to_string(), testkit::text(&format!("client {w}")))],
            },
        );
    }
    n.end_turn(0, &mut decode);
    let mut done = BTreeMap::new();
    while let Some(o) = n.poll_output() {
        if let Output::WriteDone { write, result } = o {
            done.insert(write.0, result);
        }
    }
    assert_eq!(done.len(), 64, "every write answered");
    assert_eq!(
        n.local().store().commits() - before,
        1,
        "one commit for the turn's writes"
    );
    for (w, result) in &done {
        match result {
            Ok(ids) if *w != 7 => {
                assert_eq!(ids.len(), 1);
                assert!(n.local().store().holds(&ids[0]), "write {w} is durable");
            }
            Err(WriteError::Refused { .. }) if *w == 7 => {}
            other => panic!("write {w}: {other:?}"),
        }
    }
    assert_eq!(n.local().timeline().len(), 1 + 63);
}
