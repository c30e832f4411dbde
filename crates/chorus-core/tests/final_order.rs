//! `final/1` in the timeline: replicas that exchange events and heartbeats finalize the same
//! prefix, never reorder it, go quiet once the work is final, keep finalizing without a dead
//! member, and order a late event after the final prefix (docs/design/finality.md).

use std::{collections::BTreeMap, sync::Arc};

use chorus_core::{
    crypto::Keypair,
    event::{SignedEvent, UnsignedEvent, kind},
    genesis::{FinalityParams, Genesis, ORDER_FINAL_1},
    ids::EventId,
    machine::{Applied, Machine, StateDecodeError},
    membership::{MemberOp, Role, VoteOp},
    testkit::{Rng, text},
    timeline::{CheckpointChange, Timeline},
};
use ipld_core::ipld::Ipld;
use sha2::{Digest, Sha256};

/// A machine whose state is a hash chain over the applied ids: any change of order or of the
/// applied set changes it.
#[derive(Clone, Copy)]
struct ChainMachine;
impl Machine for ChainMachine {
    type State = [u8; 32];
    fn id(&self) -> &'static str {
        "counter/1"
    }
    fn init(&self, _: &Genesis) -> [u8; 32] {
        [0; 32]
    }
    fn apply(&self, s: &mut [u8; 32], e: &Applied<'_>) {
        let mut h = Sha256::new();
        h.update(*s);
        h.update(e.id.0);
        *s = h.finalize().into();
    }
    fn encode_state(&self, s: &[u8; 32]) -> Vec<u8> {
        s.to_vec()
    }
    fn decode_state(&self, b: &[u8]) -> Result<[u8; 32], StateDecodeError> {
        b.try_into().map_err(|_| StateDecodeError {
            machine: "chain".into(),
            why: "len".into(),
        })
    }
}

fn final_genesis(admin: &Keypair, writers: &[Keypair], interval: u64) -> SignedEvent {
    final_genesis_with(admin, writers, interval, None)
}

fn final_genesis_with(
    admin: &Keypair,
    writers: &[Keypair],
    interval: u64,
    quorum: Option<[u64; 2]>,
) -> SignedEvent {
    let mut body = Genesis::new_body("final", admin.author(), "counter/1");
    body.finality = quorum.map(|quorum| FinalityParams { quorum });
    body.writers = writers
        .iter()
        .map(|k| serde_bytes::ByteBuf::from(k.author().0.to_vec()))
        .collect();
    body.checkpoint_interval = interval;
    body.order = Some(ORDER_FINAL_1.into());
    sign_genesis(admin, &body)
}

/// The genesis event of `body`, signed by its admin.
fn sign_genesis(admin: &Keypair, body: &chorus_core::genesis::GenesisBody) -> SignedEvent {
    UnsignedEvent {
        timeline: None,
        author: admin.author(),
        seq: 1,
        lamport: 0,
        parents: vec![],
        kind: kind::GENESIS.into(),
        body: Genesis::body_ipld(body),
    }
    .sign(admin)
}

type Blocks = BTreeMap<EventId, Arc<[u8]>>;

/// Replicas, one per key (key 0 is the admin), exchanging events by hand.
struct Mesh {
    keys: Vec<Keypair>,
    reps: Vec<Timeline<ChainMachine>>,
    blocks: Blocks,
    genesis: SignedEvent,
}

impl Mesh {
    /// The admin and `writers` writers, all in the genesis.
    fn new(writers: usize, interval: u64) -> Mesh {
        let keys: Vec<Keypair> = (0..=writers)
            .map(|i| Keypair::from_seed([i as u8 + 1; 32]))
            .collect();
        let genesis = final_genesis(&keys[0], &keys[1..], interval);
        Mesh::with_genesis(keys, genesis)
    }

    fn with_genesis(keys: Vec<Keypair>, genesis: SignedEvent) -> Mesh {
        let reps = keys
            .iter()
            .map(|_| Timeline::new(genesis.clone(), ChainMachine).unwrap())
            .collect();
        let blocks = BTreeMap::from([(genesis.id(), genesis.bytes_arc())]);
        Mesh {
            keys,
            reps,
            blocks,
            genesis,
        }
    }

    fn write(&mut self, i: usize, kind: &str, body: Ipld) -> SignedEvent {
        let ev = self.reps[i].sign_local(&self.keys[i], kind, body).unwrap();
        self.blocks.insert(ev.id(), ev.bytes_arc());
        self.reps[i].insert(ev.clone(), &self.blocks).unwrap();
        ev
    }

    /// Gives `to` every event `from` holds.
    fn deliver(&mut self, from: usize, to: usize) {
        let mut fresh: Vec<SignedEvent> = self.reps[from]
            .order()
            .filter(|id| !self.reps[to].contains(id))
            .map(|id| SignedEvent::decode(&self.blocks[&id]).unwrap())
            .collect();
        fresh.sort_by_key(|e| e.lamport);
        for r in self.reps[to].insert_batch(fresh, &self.blocks).unwrap() {
            r.unwrap();
        }
    }

    /// Everyone hears everyone among `alive`.
    fn gossip(&mut self, alive: &[usize]) {
        for &a in alive {
            for &b in alive {
                if a != b {
                    self.deliver(a, b);
                }
            }
        }
    }

    /// One heartbeat round: each of `alive` publishes a heartbeat if it owes one, then they
    /// all gossip. Returns how many heartbeats were published.
    fn heartbeat_round(&mut self, alive: &[usize]) -> usize {
        let mut n = 0;
        for &i in alive {
            if self.reps[i].owes_heartbeat(&self.keys[i].author()) {
                self.write(i, kind::HEARTBEAT, Ipld::Null);
                n += 1;
            }
        }
        self.gossip(alive);
        n
    }

    /// Heartbeat rounds until nobody owes one (at most 60). Returns the rounds taken.
    fn quiet(&mut self, alive: &[usize]) -> usize {
        for round in 0..60 {
            if self.heartbeat_round(alive) == 0 {
                return round;
            }
        }
        panic!(
            "heartbeats among {alive:?} never stopped: final {:?}",
            alive.iter().map(|&i| self.final_len(i)).collect::<Vec<_>>()
        );
    }

    fn final_len(&self, i: usize) -> usize {
        self.reps[i].finality().unwrap().final_positions as usize
    }

    fn final_prefix(&self, i: usize) -> Vec<EventId> {
        self.reps[i].order().take(self.final_len(i)).collect()
    }

    /// A fresh replica fed every event held by `i` in a shuffled causal-then-random order:
    /// its order and state must be `i`'s (the order is a function of the event set).
    fn replay_shuffled(&self, i: usize, seed: u64) -> Timeline<ChainMachine> {
        let mut evs: Vec<SignedEvent> = self.reps[i]
            .order()
            .map(|id| SignedEvent::decode(&self.blocks[&id]).unwrap())
            .collect();
        Rng(seed | 1).shuffle(&mut evs);
        let mut tl = Timeline::new(self.genesis.clone(), ChainMachine).unwrap();
        // Out of causal order: children wait as pending until their parents come.
        for e in evs {
            tl.insert_deferred(e).unwrap();
        }
        tl.catch_up(&self.blocks).unwrap();
        assert_eq!(tl.pending_len(), 0);
        tl
    }
}

fn is_prefix(a: &[EventId], b: &[EventId]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

#[test]
fn members_that_heartbeat_finalize_the_work_and_then_go_quiet() {
    let mut m = Mesh::new(3, 16);
    let all = [0, 1, 2, 3];
    let mut work = vec![];
    for i in all {
        work.push(m.write(i, kind::STIMULUS, text(&format!("w{i}"))));
    }
    m.gossip(&all);
    let mut rounds = 0;
    while m.heartbeat_round(&all) > 0 {
        rounds += 1;
        assert!(rounds < 20, "heartbeats never stopped");
    }
    // Every work event is final on every replica, and the final prefixes agree.
    for i in all {
        for w in &work {
            assert!(
                m.reps[i].is_settled(&w.id()),
                "replica {i}: {w:?} not final"
            );
        }
        assert_eq!(m.final_prefix(i), m.final_prefix(0));
        assert_eq!(m.reps[i].state_hash(), m.reps[0].state_hash());
        assert!(!m.reps[i].owes_heartbeat(&m.keys[i].author()));
    }
    assert!(rounds >= 3, "finality took {rounds} heartbeat rounds");
    // An idle mesh is quiet: nothing is owed, round after round.
    assert_eq!(m.heartbeat_round(&all), 0);
    let f = m.reps[0].finality().unwrap();
    assert_eq!((f.committee.len(), f.quorum, f.epoch), (4, 3, 0));
}

#[test]
fn a_dead_member_does_not_hold_finality() {
    let mut m = Mesh::new(3, 16);
    let alive = [0, 1, 2]; // member 3 never writes (a quorum of 3 of 4 is left)
    let mut work = vec![];
    for k in 0..6 {
        let i = alive[k % 3];
        work.push(m.write(i, kind::STIMULUS, text(&format!("w{k}"))));
        m.heartbeat_round(&alive);
    }
    let mut rounds = 0;
    while m.heartbeat_round(&alive) > 0 {
        rounds += 1;
        assert!(rounds < 30, "finality stalled without member 3");
    }
    for w in &work {
        assert!(m.reps[0].is_settled(&w.id()));
    }
    // With two members down, no quorum: nothing more becomes final.
    let before = m.final_len(0);
    let late = m.write(0, kind::STIMULUS, text("alone"));
    for _ in 0..10 {
        m.heartbeat_round(&[0, 1]);
    }
    assert!(!m.reps[0].is_settled(&late.id()));
    assert_eq!(m.final_len(0), before);
}

#[test]
fn a_late_event_sorts_after_the_final_prefix_and_nothing_final_moves() {
    let mut m = Mesh::new(4, 8);
    // Member 4 writes early, in isolation (a low lc), and is heard only much later.
    let early = m.write(4, kind::STIMULUS, text("from the far side"));
    let four = [0, 1, 2, 3];
    for k in 0..12 {
        m.write(k % 4, kind::STIMULUS, text(&format!("w{k}")));
        m.heartbeat_round(&four);
    }
    m.quiet(&four);
    let prefix = m.final_prefix(0);
    assert!(prefix.len() > 12, "finalized {}", prefix.len());
    assert!(
        m.reps[0].key_of(&prefix[prefix.len() - 1]).unwrap().0 > early.lamport,
        "the late event would sort inside the final prefix by (lc, id)"
    );
    m.deliver(4, 0);
    let after = m.final_prefix(0);
    assert!(is_prefix(&prefix, &after) && after.len() >= prefix.len());
    let pos = m.reps[0].position_of(&early.id()).unwrap();
    assert!(
        pos >= prefix.len(),
        "late event at {pos}, inside the final prefix"
    );
    // The state is the fold of that order, as a fresh replica computes it.
    let fresh = m.replay_shuffled(0, 7);
    assert_eq!(
        fresh.order().collect::<Vec<_>>(),
        m.reps[0].order().collect::<Vec<_>>()
    );
    assert_eq!(fresh.state_hash(), m.reps[0].state_hash());
    // And it becomes final in a later segment once the members heartbeat over it.
    m.gossip(&[0, 1, 2, 3, 4]);
    m.quiet(&[0, 1, 2, 3, 4]);
    assert!(m.reps[0].is_settled(&early.id()));
    assert!(is_prefix(&prefix, &m.final_prefix(0)));
}

/// Random writes, heartbeats and partial gossip among five members: at every step, every two
/// replicas' final prefixes are prefix-related, no replica's final prefix ever shrinks or
/// changes, and any replica's order and state equal a fresh replay of its events.
#[test]
fn random_runs_never_disagree_on_what_is_final() {
    let mut finalized_something = 0;
    for seed in 1..=12u64 {
        let mut m = Mesh::new(4, 8);
        let mut rng = Rng(seed * 7919);
        let all = [0, 1, 2, 3, 4];
        let mut seen: Vec<Vec<EventId>> = vec![vec![]; 5];
        for step in 0..160 {
            let i = rng.below(5);
            match rng.below(10) {
                0..=2 => {
                    m.write(i, kind::STIMULUS, text(&format!("s{seed}-{step}")));
                }
                3..=5 => {
                    if m.reps[i].owes_heartbeat(&m.keys[i].author()) {
                        m.write(i, kind::HEARTBEAT, Ipld::Null);
                    }
                }
                _ => {
                    let j = rng.below(5);
                    if i != j {
                        m.deliver(i, j);
                    }
                }
            }
            for (r, before) in seen.iter_mut().enumerate() {
                let now = m.final_prefix(r);
                assert!(
                    is_prefix(before, &now) && now.len() >= before.len(),
                    "seed {seed} step {step}: replica {r}'s final prefix changed"
                );
                *before = now;
            }
            for a in 0..5 {
                for b in a + 1..5 {
                    assert!(
                        is_prefix(&seen[a], &seen[b]),
                        "seed {seed} step {step}: replicas {a} and {b} disagree"
                    );
                }
            }
        }
        m.gossip(&all);
        m.quiet(&all);
        let lens: Vec<usize> = (0..5).map(|i| m.final_len(i)).collect();
        finalized_something += usize::from(lens[0] > 1);
        for i in 0..5 {
            assert_eq!(m.final_prefix(i), m.final_prefix(0), "seed {seed}");
            assert_eq!(m.reps[i].state_hash(), m.reps[0].state_hash());
        }
        let fresh = m.replay_shuffled(2, seed);
        assert_eq!(fresh.state_hash(), m.reps[2].state_hash(), "seed {seed}");
    }
    assert_eq!(finalized_something, 12);
}

#[test]
fn a_committee_grows_by_epochs_and_finalizes_without_the_admin() {
    // Genesis: the admin alone. It adds three writers; once the additions are final, the
    // committee is the four, and three of them finalize without the admin.
    let keys: Vec<Keypair> = (0..4)
        .map(|i| Keypair::from_seed([i as u8 + 40; 32]))
        .collect();
    let g = final_genesis(&keys[0], &[], 16);
    let mut m = Mesh::with_genesis(keys, g);
    for i in 1..4 {
        let k = m.keys[i].author();
        m.write(0, kind::MEMBER, MemberOp::Add(k, Role::Writer).to_body());
    }
    // The admin alone is the committee of epoch 0: its heartbeats finalize the first
    // addition. From then on each new member is in the committee once its addition is final.
    m.heartbeat_round(&[0]);
    m.heartbeat_round(&[0]);
    assert!(m.reps[0].finality().unwrap().epoch >= 1);
    m.gossip(&[0, 1, 2, 3]);
    m.quiet(&[0, 1, 2, 3]);
    let f = m.reps[0].finality().unwrap();
    assert_eq!((f.committee.len(), f.quorum), (4, 3), "{f:?}");
    let epoch = f.epoch;
    let writers = [1, 2, 3];
    let w = m.write(1, kind::STIMULUS, text("without the admin"));
    let mut rounds = 0;
    while m.heartbeat_round(&writers) > 0 {
        rounds += 1;
        assert!(
            rounds < 30,
            "the writers could not finalize without the admin"
        );
    }
    for i in writers {
        assert!(m.reps[i].is_settled(&w.id()), "replica {i}");
        assert_eq!(m.reps[i].finality().unwrap().epoch, epoch);
    }
    // The admin hears it all later and agrees.
    m.deliver(1, 0);
    assert_eq!(m.final_prefix(0), m.final_prefix(1));
    assert_eq!(m.reps[0].state_hash(), m.reps[1].state_hash());
}

/// Heartbeat rounds among `alive` until `ev` is final on each of them (at most 40).
fn settle(m: &mut Mesh, alive: &[usize], ev: &SignedEvent) {
    for _ in 0..40 {
        if alive.iter().all(|&i| m.reps[i].is_settled(&ev.id())) {
            return;
        }
        m.heartbeat_round(alive);
    }
    panic!(
        "{:?} never became final among {alive:?}: {:?}",
        ev.id(),
        m.reps[alive[0]].finality()
    );
}

#[test]
fn a_quorum_votes_the_lost_admin_off_the_committee_and_finality_survives_one_more_loss() {
    // The admin and four writers: a committee of 5, quorum 4. The admin's machine is lost.
    let mut m = Mesh::new(4, 16);
    let admin = m.keys[0].author();
    let writers = [1, 2, 3, 4];
    for &i in &writers {
        m.write(i, kind::VOTE, VoteOp::Remove(admin).to_body());
    }
    m.gossip(&writers);
    m.quiet(&writers);
    for &i in &writers {
        let f = m.reps[i].finality().unwrap();
        assert_eq!((f.committee.len(), f.quorum), (4, 3), "replica {i}: {f:?}");
        assert_eq!(f.voted_off, vec![admin]);
        assert!(f.open_votes.is_empty());
        assert_eq!(f.epoch, 1);
    }
    // The committee is the four writers: a fourth loss leaves 3 of 4, still a quorum (with the
    // admin still counted, 3 of 5 could not finalize anything).
    let alive = [1, 2, 3];
    let w = m.write(2, kind::STIMULUS, text("after the admin"));
    m.gossip(&alive);
    settle(&mut m, &alive, &w);

    // One member's vote is not a quorum's: nothing changes, the vote stays open.
    let lone = m.write(1, kind::VOTE, VoteOp::Remove(m.keys[3].author()).to_body());
    m.gossip(&alive);
    settle(&mut m, &alive, &lone);
    let f = m.reps[2].finality().unwrap();
    assert_eq!(f.committee.len(), 4, "{f:?}");
    assert_eq!(f.open_votes, vec![(VoteOp::Remove(m.keys[3].author()), 1)]);

    // The admin's machine comes back: a quorum puts it back on the committee.
    let back = [0, 1, 2, 3];
    m.gossip(&back);
    for i in [1, 2, 3] {
        m.write(i, kind::VOTE, VoteOp::Restore(admin).to_body());
    }
    m.gossip(&back);
    m.quiet(&back);
    for &i in &back {
        let f = m.reps[i].finality().unwrap();
        assert_eq!((f.committee.len(), f.quorum), (5, 4), "replica {i}: {f:?}");
        assert!(f.voted_off.is_empty());
        assert_eq!(m.final_prefix(i), m.final_prefix(1));
    }
    // The committee is a function of the event set: a replica fed everything out of order
    // derives the same final prefix, committee and state.
    let replay = m.replay_shuffled(1, 7);
    assert_eq!(replay.finality(), m.reps[1].finality());
    assert_eq!(replay.state_hash(), m.reps[1].state_hash());
}

#[test]
fn votes_of_non_members_or_for_the_last_member_change_nothing_and_bad_votes_are_refused() {
    let mut m = Mesh::new(1, 16);
    let (admin, writer) = (m.keys[0].author(), m.keys[1].author());
    // A committee of two: the writer votes the admin off (a quorum of 2 of 2 needs the admin's
    // own vote too); the admin votes itself off: carried, the writer is the committee.
    m.write(1, kind::VOTE, VoteOp::Remove(admin).to_body());
    m.write(0, kind::VOTE, VoteOp::Remove(admin).to_body());
    m.gossip(&[0, 1]);
    m.quiet(&[0, 1]);
    let f = m.reps[0].finality().unwrap();
    assert_eq!(f.committee, vec![writer], "{f:?}");
    // The last member cannot vote itself off: the committee is never empty.
    let last = m.write(1, kind::VOTE, VoteOp::Remove(writer).to_body());
    settle(&mut m, &[1], &last);
    assert_eq!(m.reps[1].finality().unwrap().committee, vec![writer]);
    // A vote off the committee counts for nothing (the admin is voted off): no open tally.
    let off = m.write(0, kind::VOTE, VoteOp::Restore(admin).to_body());
    m.gossip(&[0, 1]);
    settle(&mut m, &[1], &off);
    let f = m.reps[1].finality().unwrap();
    assert!(f.open_votes.is_empty(), "{f:?}");
    assert_eq!(f.voted_off, vec![admin]);
    // A malformed vote is refused with a typed error, under final/1.
    let bad = m.reps[1]
        .sign_local(&m.keys[1], kind::VOTE, text("off with their heads"))
        .unwrap();
    let refused = m.reps[1].insert(bad, &m.blocks);
    assert!(
        matches!(refused, Err(ref e) if e.to_string().contains("vote")),
        "{refused:?}"
    );
}

/// Every event held at or below `h` in `(lc, id)` sits before `positions` in the order.
fn all_before(tl: &Timeline<ChainMachine>, h: (u64, EventId), positions: u64) -> bool {
    tl.order().enumerate().all(|(p, id)| {
        let (_, _, lc) = tl.meta_of(&id).unwrap();
        (lc, id) > h || (p as u64) < positions
    })
}

#[test]
fn a_light_horizon_covers_only_the_final_prefix_up_to_its_newest_checkpoint() {
    let mut m = Mesh::new(3, 4);
    // Member 3 writes early and is cut off: its event arrives after the rest is final.
    let late = m.write(3, kind::STIMULUS, text("early, delivered late"));
    let live = [0, 1, 2];
    for k in 0..24 {
        m.write(k % 3, kind::STIMULUS, text(&format!("w{k}")));
        m.heartbeat_round(&live);
    }
    m.quiet(&live);
    let tl = &m.reps[0];
    let h = tl.final_prune_horizon().expect("a final checkpoint exists");
    let at = tl.attestation().expect("a final checkpoint").positions;
    assert!(at as usize <= m.final_len(0));
    assert!(
        all_before(tl, h, at),
        "horizon {h:?} covers events after position {at}"
    );
    assert!(h.0 >= 4, "horizon {h:?} covers almost nothing");
    // The late event has a lower `lc` than much of the final prefix, yet sorts after it: the
    // horizon never covers it.
    assert!(
        late.lamport < h.0,
        "the late event's lc is below the old horizon"
    );
    m.deliver(3, 0);
    let tl = &m.reps[0];
    let p = tl.position_of(&late.id()).unwrap();
    assert!(p >= m.final_len(0), "the late event is tentative");
    let h2 = tl.final_prune_horizon().unwrap();
    assert!(
        (late.lamport, late.id()) > h2,
        "{h2:?} covers the late event"
    );
    assert!(all_before(tl, h2, tl.attestation().unwrap().positions));
}

#[test]
fn a_restored_replica_starts_from_a_final_checkpoint_and_gets_the_same_state() {
    let mut m = Mesh::new(3, 4);
    let all = [0, 1, 2, 3];
    for k in 0..20 {
        m.write(k % 4, kind::STIMULUS, text(&format!("w{k}")));
        m.heartbeat_round(&all);
    }
    m.quiet(&all);
    let changes = m.reps[0].take_checkpoint_changes();
    let mut persisted: BTreeMap<(u64, EventId), Vec<u8>> = BTreeMap::new();
    for c in changes {
        match c {
            CheckpointChange::Put { key, state } => {
                // Only final positions reach the store.
                let p = m.reps[0].position_of(&key.1).unwrap();
                assert!(p < m.final_len(0), "checkpoint at {p} is not final");
                persisted.insert(key, state.to_vec());
            }
            CheckpointChange::DropFrom { .. } => panic!("a final checkpoint was dropped"),
        }
    }
    assert!(persisted.len() >= 3, "{} checkpoints", persisted.len());
    let events: Vec<SignedEvent> = m.reps[0]
        .order()
        .map(|id| SignedEvent::decode(&m.blocks[&id]).unwrap())
        .collect();
    let mut by_lc = events.clone();
    by_lc.sort_by_key(|e| (e.lamport, e.id()));
    let restored =
        Timeline::restore(m.genesis.clone(), ChainMachine, by_lc, persisted, &m.blocks).unwrap();
    assert_eq!(restored.state_hash(), m.reps[0].state_hash());
    assert_eq!(
        restored.order().collect::<Vec<_>>(),
        m.reps[0].order().collect::<Vec<_>>()
    );
    // It started from a checkpoint: fewer applications than events.
    assert!(
        (restored.stats().applied as usize) < events.len() / 2,
        "applied {} of {}",
        restored.stats().applied,
        events.len()
    );
}

#[test]
fn an_unknown_order_rule_is_refused_and_old_geneses_keep_their_bytes() {
    let admin = Keypair::from_seed([9; 32]);
    let mut body = Genesis::new_body("x", admin.author(), "counter/1");
    let plain = Genesis::body_ipld(&body);
    // No `order` key in the bytes of a genesis that names none.
    let Ipld::Map(keys) = &plain else {
        panic!("a map")
    };
    assert!(!keys.contains_key("order"));
    body.order = Some("fastest/9".into());
    let ev = sign_genesis(&admin, &body);
    let err = Timeline::new(ev, ChainMachine).err().expect("refused");
    assert!(err.to_string().contains("fastest/9"), "{err}");
}

/// A genesis may fix a majority quorum (members that crash, never lie): then the three of a
/// 2 | 3 partition finalize and the two do not; after the heal nothing final moves and the
/// two agree. With the default (more than two thirds: 4 of 5) neither side finalizes.
#[test]
fn a_majority_quorum_lets_the_larger_side_of_a_partition_finalize() {
    for (quorum, three_finalize) in [(Some([1, 2]), true), (None, false)] {
        let keys: Vec<Keypair> = (0..5)
            .map(|i| Keypair::from_seed([i as u8 + 60; 32]))
            .collect();
        let g = final_genesis_with(&keys[0], &keys[1..], 16, quorum);
        let mut m = Mesh::with_genesis(keys, g);
        let all = [0, 1, 2, 3, 4];
        m.write(0, kind::STIMULUS, text("before"));
        m.gossip(&all);
        m.quiet(&all);
        let (two, three) = ([0, 1], [2, 3, 4]);
        let before = m.final_len(0);
        let a = m.write(0, kind::STIMULUS, text("side of two"));
        let b = m.write(3, kind::STIMULUS, text("side of three"));
        for _ in 0..12 {
            m.heartbeat_round(&two);
            m.heartbeat_round(&three);
        }
        assert!(!m.reps[1].is_settled(&a.id()), "{quorum:?}: two finalized");
        assert_eq!(m.final_len(1), before);
        assert_eq!(m.reps[4].is_settled(&b.id()), three_finalize, "{quorum:?}");
        let cut = m.final_prefix(4);
        m.gossip(&all);
        m.quiet(&all);
        for i in all {
            assert!(
                is_prefix(&cut, &m.final_prefix(i)),
                "{quorum:?}: replica {i}"
            );
            assert!(m.reps[i].is_settled(&a.id()) && m.reps[i].is_settled(&b.id()));
            assert_eq!(m.reps[i].state_hash(), m.reps[0].state_hash());
        }
        assert_eq!(
            m.reps[0].finality().unwrap().quorum,
            if three_finalize { 3 } else { 4 }
        );
    }
}

#[test]
fn finality_parameters_are_checked() {
    let admin = Keypair::from_seed([9; 32]);
    for (order, quorum, ok) in [
        (Some(ORDER_FINAL_1), [1, 2], true),
        (Some(ORDER_FINAL_1), [2, 3], true),
        (Some(ORDER_FINAL_1), [1, 3], false),
        (Some(ORDER_FINAL_1), [3, 3], false),
        (Some(ORDER_FINAL_1), [0, 0], false),
        (None, [2, 3], false),
    ] {
        let mut body = Genesis::new_body("x", admin.author(), "counter/1");
        body.order = order.map(str::to_string);
        body.finality = Some(FinalityParams { quorum });
        let ev = sign_genesis(&admin, &body);
        assert_eq!(
            Timeline::new(ev, ChainMachine).is_ok(),
            ok,
            "{order:?} {quorum:?}"
        );
    }
}
