//! Timeline behaviour: order invariance, pending, equivocation, removal, late inserts, frontier.

use std::collections::BTreeMap;

use chorus_core::{
    crypto::Keypair,
    event::{EventError, SignedEvent, kind},
    genesis::Genesis,
    ids::EventId,
    machine::{Applied, Machine, StateDecodeError},
    membership::{MemberOp, Role},
    testkit::{self, Rng, text},
    timeline::{Inserted, NoBlocks, Timeline},
};
use ipld_core::ipld::Ipld;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

/// A machine whose state is a hash chain over the applied ids: any change of order or of the
/// applied set changes its hash. (The counter machine would not notice a reordering.)
#[derive(Clone, Copy)]
struct ChainMachine;
impl Machine for ChainMachine {
    type State = [u8; 32];
    fn id(&self) -> &'static str {
        "counter/1" // reuses the genesis machine id of the fixtures below
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

/// [`ChainMachine`] with a state kept in memory every 3 positions
/// ([`Machine::dense_checkpoint_every`]): rewinds start from those when they are closer.
#[derive(Clone, Copy)]
struct DenseChainMachine;
impl Machine for DenseChainMachine {
    type State = [u8; 32];
    fn id(&self) -> &'static str {
        ChainMachine.id()
    }
    fn init(&self, g: &Genesis) -> [u8; 32] {
        ChainMachine.init(g)
    }
    fn apply(&self, s: &mut [u8; 32], e: &Applied<'_>) {
        ChainMachine.apply(s, e)
    }
    fn encode_state(&self, s: &[u8; 32]) -> Vec<u8> {
        ChainMachine.encode_state(s)
    }
    fn decode_state(&self, b: &[u8]) -> Result<[u8; 32], StateDecodeError> {
        ChainMachine.decode_state(b)
    }
    fn dense_checkpoint_every(&self) -> Option<u64> {
        Some(3)
    }
}

/// Reference model: fold the chain over the given ids sorted by (lc, id), skipping `excluded`.
fn reference_hash(events: &[SignedEvent], excluded: &dyn Fn(&SignedEvent) -> bool) -> [u8; 32] {
    let mut by_key: BTreeMap<(u64, EventId), &SignedEvent> = BTreeMap::new();
    for e in events {
        by_key.insert((e.lamport, e.id()), e);
    }
    let mut s = [0u8; 32];
    for e in by_key.values() {
        if !excluded(e) {
            let mut h = Sha256::new();
            h.update(s);
            h.update(e.id().0);
            s = h.finalize().into();
        }
    }
    s
}

fn genesis(admin: &Keypair, writers: &[&Keypair], interval: u64) -> SignedEvent {
    let writers: Vec<Keypair> = writers.iter().map(|k| (*k).clone()).collect();
    testkit::genesis(admin, &writers, "counter/1", interval)
}

/// Several writers appending concurrently and syncing now and then; returns the genesis and all
/// events in creation order (a valid causal order).
fn history(
    seed: u64,
    writers: usize,
    events: usize,
    interval: u64,
) -> (SignedEvent, Vec<SignedEvent>) {
    let admin = Keypair::from_seed([200; 32]);
    let keys: Vec<Keypair> = (0..writers)
        .map(|i| Keypair::from_seed([i as u8 + 1; 32]))
        .collect();
    let g = testkit::genesis(&admin, &keys, "counter/1", interval);
    let all = testkit::history(&g, "counter/1", &keys, events, seed, |made, _| {
        (kind::STIMULUS, text(&format!("e{}", made.len())))
    });
    (g, all)
}

fn fingerprint<M: Machine>(tl: &Timeline<M>) -> (Vec<EventId>, Vec<EventId>, [u8; 32]) {
    (tl.heads(), tl.order().collect(), tl.state_hash())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any permutation, duplication and batching of one event set gives the same heads, order
    /// and state hash — and that hash is the reference model's.
    #[test]
    fn order_is_invariant_under_delivery(
        seed in 1u64..u64::MAX,
        perm_seed in 1u64..u64::MAX,
        batch in 1usize..40,
        dup_every in 2usize..9,
    ) {
        let (g, evs) = history(seed, 4, 120, 7);
        let mut in_order = Timeline::new(g.clone(), ChainMachine).unwrap();
        for e in &evs {
            in_order.insert(e.clone(), &NoBlocks).unwrap();
        }
        let mut shuffled: Vec<SignedEvent> = evs.clone();
        let mut rng = Rng(perm_seed);
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.below(i + 1));
        }
        let dups: Vec<SignedEvent> = shuffled.iter().step_by(dup_every).cloned().collect();
        shuffled.extend(dups);
        let mut other = Timeline::new(g.clone(), ChainMachine).unwrap();
        for chunk in shuffled.chunks(batch) {
            for r in other.insert_batch(chunk.iter().cloned(), &NoBlocks).unwrap() {
                prop_assert!(r.is_ok(), "{r:?}");
            }
        }
        prop_assert_eq!(other.pending_len(), 0);
        prop_assert_eq!(fingerprint(&in_order), fingerprint(&other));
        // Rewinds that start from the dense in-memory states fold to the same state.
        let mut dense = Timeline::new(g, DenseChainMachine).unwrap();
        for chunk in shuffled.chunks(batch) {
            dense.insert_batch(chunk.iter().cloned(), &NoBlocks).unwrap();
        }
        prop_assert_eq!(fingerprint(&in_order), fingerprint(&dense));
        let mut with_genesis = vec![];
        with_genesis.extend(evs.iter().cloned());
        let reference = {
            let genesis_first: Vec<SignedEvent> =
                std::iter::once(in_order.load(&in_order.genesis_id(), &NoBlocks).unwrap())
                    .chain(with_genesis)
                    .collect();
            reference_hash(&genesis_first, &|_| false)
        };
        prop_assert_eq!(*other.state(), reference);
    }
}

#[test]
fn children_before_parents_wait_as_pending_then_apply() {
    let (g, evs) = history(42, 3, 60, 5);
    let mut tl = Timeline::new(g, ChainMachine).unwrap();
    let mut pending = 0;
    for e in evs.iter().rev() {
        if let Inserted::Pending { missing } = tl.insert(e.clone(), &NoBlocks).unwrap() {
            assert!(!missing.is_empty());
            pending += 1;
        }
    }
    assert!(pending > 0);
    assert_eq!(tl.pending_len(), 0, "every pending event was released");
    assert_eq!(tl.len(), evs.len() + 1);
}

#[test]
fn contextual_errors_are_typed() {
    let admin = Keypair::from_seed([200; 32]);
    let w = Keypair::from_seed([1; 32]);
    let stranger = Keypair::from_seed([66; 32]);
    let g = genesis(&admin, &[&w], 4);
    let mut tl = Timeline::new(g.clone(), ChainMachine).unwrap();

    let mut bad_lc = tl.prepare(w.author(), kind::STIMULUS, text("x"));
    bad_lc.lamport += 5;
    let err = tl.insert(bad_lc.sign(&w), &NoBlocks).unwrap_err();
    assert!(
        matches!(
            err.clone().into_event(),
            Some(EventError::BadLamport { .. })
        ),
        "{err}"
    );

    let mut bad_sq = tl.prepare(w.author(), kind::STIMULUS, text("x"));
    bad_sq.seq = 3;
    let err = tl.insert(bad_sq.sign(&w), &NoBlocks).unwrap_err();
    assert!(matches!(err.into_event(), Some(EventError::BadSeq { .. })));

    let alien = tl.prepare(stranger.author(), kind::STIMULUS, text("x"));
    let err = tl.insert(alien.sign(&stranger), &NoBlocks).unwrap_err();
    assert!(matches!(
        err.into_event(),
        Some(EventError::UnknownAuthor(_))
    ));

    let coup = tl.prepare(
        w.author(),
        kind::MEMBER,
        MemberOp::Add(stranger.author(), Role::Anchor).to_body(),
    );
    let err = tl.insert(coup.sign(&w), &NoBlocks).unwrap_err();
    assert!(matches!(err.into_event(), Some(EventError::NotAdmin)));

    let mut other_tl = tl.prepare(w.author(), kind::STIMULUS, text("x"));
    other_tl.timeline = Some(EventId::of_block(b"elsewhere"));
    let err = tl.insert(other_tl.sign(&w), &NoBlocks).unwrap_err();
    assert!(matches!(
        err.into_event(),
        Some(EventError::WrongTimeline { .. })
    ));

    let rejected = &tl.stats().rejected;
    for code in [
        "bad_lamport",
        "bad_seq",
        "unknown_author",
        "not_admin",
        "wrong_timeline",
    ] {
        assert_eq!(rejected.get(code), Some(&1), "{code}: {rejected:?}");
    }
    assert_eq!(tl.len(), 1, "nothing invalid was indexed");
}

trait IntoEvent {
    fn into_event(self) -> Option<EventError>;
}
impl IntoEvent for chorus_core::timeline::TimelineError {
    fn into_event(self) -> Option<EventError> {
        match self {
            chorus_core::timeline::TimelineError::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

#[test]
fn equivocation_is_excluded_identically_whatever_the_arrival_order() {
    let admin = Keypair::from_seed([200; 32]);
    let w = Keypair::from_seed([1; 32]);
    let honest = Keypair::from_seed([2; 32]);
    let g = genesis(&admin, &[&w, &honest], 3);
    let mut base = Timeline::new(g.clone(), ChainMachine).unwrap();
    let mut common = vec![];
    for i in 0..5 {
        let e = base
            .prepare(w.author(), kind::STIMULUS, text(&format!("c{i}")))
            .sign(&w);
        base.insert(e.clone(), &NoBlocks).unwrap();
        common.push(e);
    }
    // Two branches from the same point, each three events long, plus honest work on each.
    let branch = |tag: &str, honest_too: bool| {
        let mut t = Timeline::new(g.clone(), ChainMachine).unwrap();
        for e in &common {
            t.insert(e.clone(), &NoBlocks).unwrap();
        }
        let mut out = vec![];
        for i in 0..3 {
            let e = t
                .prepare(w.author(), kind::STIMULUS, text(&format!("{tag}{i}")))
                .sign(&w);
            t.insert(e.clone(), &NoBlocks).unwrap();
            out.push(e);
            if !honest_too {
                continue;
            }
            let h = t
                .prepare(honest.author(), kind::STIMULUS, text(&format!("h{tag}{i}")))
                .sign(&honest);
            t.insert(h.clone(), &NoBlocks).unwrap();
            out.push(h);
        }
        out
    };
    let a = branch("a", true);
    let b_writer = branch("b", false);

    let mut r1 = Timeline::new(g.clone(), ChainMachine).unwrap();
    let mut r2 = Timeline::new(g.clone(), ChainMachine).unwrap();
    for e in common.iter().chain(&a).chain(&b_writer) {
        r1.insert(e.clone(), &NoBlocks).unwrap();
    }
    for e in common.iter().chain(&b_writer).chain(&a) {
        r2.insert(e.clone(), &NoBlocks).unwrap();
    }
    // One piece of evidence per conflicting sq (6, 7, 8) on both replicas; the fork is at 6.
    assert_eq!(r1.equivocations().len(), 3);
    assert_eq!(r2.equivocations().len(), 3);
    assert_eq!(r1.equivocations().iter().map(|e| e.seq).min(), Some(6));
    assert_eq!(fingerprint(&r1), fingerprint(&r2));
    for e in a.iter().chain(&b_writer) {
        assert_eq!(r1.is_excluded(&e.id()), e.author == w.author(), "{e:?}");
        assert_eq!(r1.is_excluded(&e.id()), r2.is_excluded(&e.id()));
    }
    // The state equals the reference model that skips the forked author from sq 6.
    let all: Vec<SignedEvent> = std::iter::once(g)
        .chain(common)
        .chain(a)
        .chain(b_writer)
        .collect();
    let wa = w.author();
    assert_eq!(
        *r1.state(),
        reference_hash(&all, &|e| e.author == wa && e.seq >= 6)
    );
}

#[test]
fn late_event_ten_thousand_back_equals_replay_from_scratch() {
    let admin = Keypair::from_seed([200; 32]);
    let fast = Keypair::from_seed([1; 32]);
    let slow = Keypair::from_seed([2; 32]);
    let g = genesis(&admin, &[&fast, &slow], 256);
    let mut tl = Timeline::new(g.clone(), ChainMachine).unwrap();
    let late = tl
        .prepare(slow.author(), kind::STIMULUS, text("from the pi zero"))
        .sign(&slow);
    let mut src: BTreeMap<EventId, std::sync::Arc<[u8]>> = BTreeMap::new();
    src.insert(g.id(), g.bytes_arc());
    let mut evs = vec![];
    for i in 0..10_001 {
        let e = tl
            .prepare(fast.author(), kind::STIMULUS, text(&format!("gpu {i}")))
            .sign(&fast);
        src.insert(e.id(), e.bytes_arc());
        tl.insert(e.clone(), &src).unwrap();
        evs.push(e);
    }
    let before = tl.stats().reapplied;
    src.insert(late.id(), late.bytes_arc());
    tl.insert(late.clone(), &src).unwrap();
    let pos = tl.position_of(&late.id()).unwrap();
    assert!(pos <= 2, "lc 1 sorts right after the genesis, at {pos}");
    let after = tl.len() - pos - 1;
    assert!(
        after >= 10_000,
        "{after} events sort after it: at least 10 000 back"
    );
    assert!(
        tl.stats().reapplied - before >= 9_999,
        "replayed from before the insertion point"
    );

    let mut fresh = Timeline::new(g, ChainMachine).unwrap();
    fresh.insert(late, &NoBlocks).unwrap();
    for e in evs {
        fresh.insert(e, &src).unwrap();
    }
    assert_eq!(fingerprint(&tl), fingerprint(&fresh));
}

#[test]
fn removal_freezes_the_member_at_the_removal_past() {
    let admin = Keypair::from_seed([200; 32]);
    let w = Keypair::from_seed([1; 32]);
    let g = genesis(&admin, &[&w], 4);
    let mut tl = Timeline::new(g.clone(), ChainMachine).unwrap();
    let e1 = tl
        .prepare(w.author(), kind::STIMULUS, text("seen"))
        .sign(&w);
    tl.insert(e1.clone(), &NoBlocks).unwrap();
    // The admin removes w having seen e1; w concurrently writes e2 and e3 (not seen).
    let mut writer_view = Timeline::new(g.clone(), ChainMachine).unwrap();
    writer_view.insert(e1.clone(), &NoBlocks).unwrap();
    let e2 = writer_view
        .prepare(w.author(), kind::STIMULUS, text("unseen"))
        .sign(&w);
    writer_view.insert(e2.clone(), &NoBlocks).unwrap();
    let e3 = writer_view
        .prepare(w.author(), kind::STIMULUS, text("unseen 2"))
        .sign(&w);
    let removal = tl
        .prepare(
            admin.author(),
            kind::MEMBER,
            MemberOp::Remove(w.author()).to_body(),
        )
        .sign(&admin);

    let mut r1 = Timeline::new(g.clone(), ChainMachine).unwrap();
    let mut r2 = Timeline::new(g.clone(), ChainMachine).unwrap();
    for e in [&e1, &e2, &e3, &removal] {
        r1.insert((*e).clone(), &NoBlocks).unwrap();
    }
    for e in [&e1, &removal, &e2, &e3] {
        r2.insert((*e).clone(), &NoBlocks).unwrap();
    }
    assert_eq!(fingerprint(&r1), fingerprint(&r2));
    assert!(!r1.is_excluded(&e1.id()));
    assert!(r1.is_excluded(&e2.id()) && r1.is_excluded(&e3.id()));
    // After the removal, w may not write at all.
    let after = r1
        .prepare(w.author(), kind::STIMULUS, text("too late"))
        .sign(&w);
    assert!(r1.insert(after, &NoBlocks).is_err());
}

/// A member removed before this replica saw anything of it: its events made concurrently with
/// the removal are excluded whichever of the two arrives first (the removal used to be
/// forgotten when the removed key had not written yet here, and the replicas disagreed).
#[test]
fn a_removal_that_arrives_before_the_removed_members_first_event_still_excludes_it() {
    let admin = Keypair::from_seed([200; 32]);
    let w = Keypair::from_seed([1; 32]);
    let g = genesis(&admin, &[&w], 4);
    let base = Timeline::new(g.clone(), ChainMachine).unwrap();
    let e1 = base
        .prepare(w.author(), kind::STIMULUS, text("concurrent"))
        .sign(&w);
    let removal = base
        .prepare(
            admin.author(),
            kind::MEMBER,
            MemberOp::Remove(w.author()).to_body(),
        )
        .sign(&admin);
    let mut r1 = Timeline::new(g.clone(), ChainMachine).unwrap();
    let mut r2 = Timeline::new(g.clone(), ChainMachine).unwrap();
    for e in [&e1, &removal] {
        r1.insert((*e).clone(), &NoBlocks).unwrap();
    }
    for e in [&removal, &e1] {
        r2.insert((*e).clone(), &NoBlocks).unwrap();
    }
    assert!(r1.is_excluded(&e1.id()) && r2.is_excluded(&e1.id()));
    assert_eq!(fingerprint(&r1), fingerprint(&r2));
    assert_eq!(r1.version_vector(), r2.version_vector());
}

#[test]
fn frontier_waits_for_every_member_and_names_the_holder() {
    let admin = Keypair::from_seed([200; 32]);
    let fast = Keypair::from_seed([1; 32]);
    let slow = Keypair::from_seed([2; 32]);
    let g = genesis(&admin, &[&fast, &slow], 4);
    let mut tl = Timeline::new(g, ChainMachine).unwrap();
    let e = tl
        .prepare(fast.author(), kind::STIMULUS, text("hi"))
        .sign(&fast);
    tl.insert(e.clone(), &NoBlocks).unwrap();
    let f = tl.frontier();
    assert!(!tl.is_settled(&e.id()));
    assert!(f.held_by.is_some());
    // An event's own author has seen it; the admin and the slow writer have not.
    let hb = tl
        .prepare(admin.author(), kind::HEARTBEAT, Ipld::Null)
        .sign(&admin);
    tl.insert(hb, &NoBlocks).unwrap();
    assert!(!tl.is_settled(&e.id()));
    let (holder, role, latest) = tl.frontier().held_by.unwrap();
    assert_eq!((holder, role, latest), (slow.author(), Role::Writer, None));
    let hb = tl
        .prepare(slow.author(), kind::HEARTBEAT, Ipld::Null)
        .sign(&slow);
    tl.insert(hb, &NoBlocks).unwrap();
    assert!(tl.is_settled(&e.id()));
    let f = tl.frontier();
    let (holder, _, _) = f.held_by.expect("the newest events are not settled yet");
    assert!([admin.author(), fast.author()].contains(&holder));
}

/// A fold in slices, with late events arriving between the slices, ends in the state of one
/// fold from scratch; and `fold_cost` says how far a rewind goes before it is run.
#[test]
fn a_fold_in_slices_with_late_events_between_equals_one_fold() {
    let (g, evs) = history(9, 3, 600, 16);
    let mut src: BTreeMap<EventId, std::sync::Arc<[u8]>> = BTreeMap::new();
    src.insert(g.id(), g.bytes_arc());
    for e in &evs {
        src.insert(e.id(), e.bytes_arc());
    }
    // Every fifth event held back, to arrive late while a sliced fold is under way.
    let held_back = |i: usize| i % 5 == 4;
    let early = evs.iter().enumerate().filter(|(i, _)| !held_back(*i));
    let late: Vec<SignedEvent> = evs
        .iter()
        .enumerate()
        .filter(|(i, _)| held_back(*i))
        .map(|(_, e)| e.clone())
        .collect();
    let mut sliced = Timeline::new(g.clone(), ChainMachine).unwrap();
    sliced
        .insert_batch_deferred(early.map(|(_, e)| e.clone()), &src)
        .unwrap();
    sliced.catch_up(&src).unwrap();
    let mut late = late.into_iter();
    let mut slices = 0;
    loop {
        if let Some(e) = late.next() {
            sliced.insert_deferred(e).unwrap();
            assert!(sliced.fold_cost() > 0);
        }
        slices += 1;
        assert!(slices < 10_000);
        if sliced.catch_up_step(7, &src).unwrap() && late.len() == 0 {
            break;
        }
    }
    assert!(slices > 100, "it took many slices: {slices}");
    assert_eq!(sliced.fold_cost(), 0);
    let mut whole = Timeline::new(g, ChainMachine).unwrap();
    whole.insert_batch(evs.iter().cloned(), &src).unwrap();
    assert_eq!(fingerprint(&sliced), fingerprint(&whole));
    // A late event near the start: the cost is (about) everything after it.
    let mut tl = Timeline::new(
        whole.load(&whole.genesis_id(), &NoBlocks).unwrap(),
        ChainMachine,
    )
    .unwrap();
    tl.insert_batch(evs[1..].iter().cloned(), &src).unwrap();
    assert_eq!(tl.fold_cost(), 0);
    tl.insert_deferred(evs[0].clone()).unwrap();
    assert!(tl.fold_cost() >= evs.len() - 1, "{}", tl.fold_cost());
}

/// Settled means contained by every member's latest event, the admin's included: a removal
/// excludes only what the admin had not seen, so nothing settled can be excluded later. (A rule
/// by `lc` alone — "every member wrote something as late" — would settle `e` below, and the
/// admin's concurrent removal would then exclude a settled event.)
#[test]
fn an_event_the_admin_has_not_seen_is_not_settled_and_a_removal_may_still_exclude_it() {
    let admin = Keypair::from_seed([200; 32]);
    let w = Keypair::from_seed([1; 32]);
    let g = genesis(&admin, &[&w], 4);
    let mut tl = Timeline::new(g.clone(), ChainMachine).unwrap();
    let mut admin_view = Timeline::new(g.clone(), ChainMachine).unwrap();
    // w writes e; the admin, not having seen it, heartbeats at the same lc and then removes w.
    let e = tl.prepare(w.author(), kind::STIMULUS, text("e")).sign(&w);
    let hb = admin_view
        .prepare(admin.author(), kind::HEARTBEAT, Ipld::Null)
        .sign(&admin);
    admin_view.insert(hb.clone(), &NoBlocks).unwrap();
    let removal = admin_view
        .prepare(
            admin.author(),
            kind::MEMBER,
            MemberOp::Remove(w.author()).to_body(),
        )
        .sign(&admin);
    tl.insert(e.clone(), &NoBlocks).unwrap();
    tl.insert(hb, &NoBlocks).unwrap();
    // Both members' latest events are at least as late as e; neither the admin's contains it.
    assert!(
        !tl.is_settled(&e.id()),
        "settled without the admin having seen it"
    );
    assert!(tl.owes_heartbeat(&admin.author()));
    tl.insert(removal, &NoBlocks).unwrap();
    assert!(tl.is_excluded(&e.id()));
    assert!(!tl.is_settled(&e.id()));
}

/// Heartbeats owe heartbeats only for what sorts among the writes: a member must cover another
/// member's heartbeat that sorts before a write, never one that sorts after every write.
#[test]
fn a_heartbeat_is_owed_for_what_sorts_before_the_newest_write_only() {
    let admin = Keypair::from_seed([200; 32]);
    let a = Keypair::from_seed([1; 32]);
    let b = Keypair::from_seed([2; 32]);
    let g = genesis(&admin, &[&a, &b], 4);
    let mut tl = Timeline::new(g.clone(), ChainMachine).unwrap();
    let wa = tl.prepare(a.author(), kind::STIMULUS, text("a")).sign(&a);
    tl.insert(wa, &NoBlocks).unwrap();
    for k in [&admin, &b] {
        let hb = tl.prepare(k.author(), kind::HEARTBEAT, Ipld::Null).sign(k);
        tl.insert(hb, &NoBlocks).unwrap();
    }
    // The two heartbeats sort after a's write: a owes nothing for them, and the write is
    // settled (every member's latest contains it).
    assert!(!tl.owes_heartbeat(&a.author()));
    assert!(tl.frontier().settled >= 2);
    // A write by b now sorts after the admin's heartbeat: a and the admin owe one.
    let wb = tl.prepare(b.author(), kind::STIMULUS, text("b")).sign(&b);
    tl.insert(wb.clone(), &NoBlocks).unwrap();
    assert!(tl.owes_heartbeat(&a.author()) && tl.owes_heartbeat(&admin.author()));
    assert!(!tl.owes_heartbeat(&b.author()));
    for k in [&a, &admin] {
        let hb = tl.prepare(k.author(), kind::HEARTBEAT, Ipld::Null).sign(k);
        tl.insert(hb, &NoBlocks).unwrap();
    }
    assert!(tl.is_settled(&wb.id()));
    assert!(
        [&a, &admin, &b]
            .iter()
            .all(|k| !tl.owes_heartbeat(&k.author()))
    );
}

/// An event with made-up parents, signed by `key`.
fn orphan(g: &SignedEvent, key: &Keypair, k: u64) -> SignedEvent {
    let fake = EventId(Sha256::digest(k.to_le_bytes()).into());
    chorus_core::event::UnsignedEvent {
        timeline: Some(g.id()),
        author: key.author(),
        seq: k + 2,
        lamport: 100 + k,
        parents: vec![fake],
        kind: kind::STIMULUS.into(),
        body: text("let me in"),
    }
    .sign(key)
}

/// Issue 15, "pending flood by a non-member": anyone can sign events with made-up parents, and
/// they went to the pending set before any membership check, up to its whole size. A key that
/// no membership change names now holds at most `MAX_PENDING_PER_STRANGER` pending events,
/// and all such keys `MAX_PENDING_FROM_STRANGERS`; over it the refusal is back-pressure (not
/// charged). Members' out-of-order events still wait as before, and a key the admin names
/// later is no stranger any more.
#[test]
fn strangers_hold_a_small_quota_of_the_pending_set_and_members_are_not_crowded_out() {
    use chorus_core::limits::{MAX_PENDING_FROM_STRANGERS, MAX_PENDING_PER_STRANGER};
    let (g, evs) = history(7, 2, 40, 8);
    let mut tl = Timeline::new(g.clone(), ChainMachine).unwrap();
    let stranger = Keypair::from_seed([66; 32]);
    for k in 0..MAX_PENDING_PER_STRANGER as u64 {
        let r = tl.insert_deferred(orphan(&g, &stranger, k)).unwrap();
        assert!(matches!(r, Inserted::Pending { .. }), "{r:?}");
    }
    let over = tl.insert_deferred(orphan(&g, &stranger, 1_000));
    assert!(
        matches!(over, Err(EventError::StrangerQuota { held, .. }) if held == MAX_PENDING_PER_STRANGER),
        "{over:?}"
    );
    assert_eq!(
        EventError::StrangerQuota {
            author: String::new(),
            held: 0,
            total: 0
        }
        .class(),
        chorus_core::event::ErrorClass::BackPressure
    );
    // Many strangers: together they stop at the total quota.
    let mut held = MAX_PENDING_PER_STRANGER;
    for s in 0..(MAX_PENDING_FROM_STRANGERS / MAX_PENDING_PER_STRANGER + 2) as u64 {
        let key = Keypair::from_seed(Sha256::digest(s.to_le_bytes()).into());
        for k in 0..MAX_PENDING_PER_STRANGER as u64 {
            if tl.insert_deferred(orphan(&g, &key, k)).is_ok() {
                held += 1;
            }
        }
    }
    assert_eq!(held, MAX_PENDING_FROM_STRANGERS);
    assert_eq!(tl.stranger_pending(), MAX_PENDING_FROM_STRANGERS);
    // A member's events out of order still wait, and all arrive.
    for e in evs.iter().rev() {
        tl.insert(e.clone(), &NoBlocks).unwrap();
    }
    assert_eq!(tl.len(), evs.len() + 1);
    assert_eq!(tl.pending_len(), MAX_PENDING_FROM_STRANGERS);
}

/// An admin that equivocates in its member events: at sq 2 one branch adds `k`, the other
/// removes it (and then removes `w` at sq 3). Which events are valid must follow each event's
/// own past, never the order the two halves arrived in (the membership used to be recorded in
/// arrival order: `k`'s event was taken on one replica and refused on the other, a permanent
/// split).
#[test]
fn an_admin_fork_gives_every_replica_the_same_membership_whatever_the_arrival_order() {
    let admin = Keypair::from_seed([200; 32]);
    let w = Keypair::from_seed([1; 32]);
    let k = Keypair::from_seed([3; 32]);
    let g = genesis(&admin, &[&w], 3);
    let on = |events: &[&SignedEvent]| {
        let mut t = Timeline::new(g.clone(), ChainMachine).unwrap();
        for e in events {
            t.insert((*e).clone(), &NoBlocks).unwrap();
        }
        t
    };
    let make = |t: &Timeline<ChainMachine>, who: &Keypair, kind: &str, body: Ipld| {
        t.prepare(who.author(), kind, body).sign(who)
    };
    let w1 = make(&on(&[]), &w, kind::STIMULUS, text("before the fork"));
    // Branch a: the admin adds k, then writes on; k writes having seen the addition.
    let add_k = make(
        &on(&[&w1]),
        &admin,
        kind::MEMBER,
        MemberOp::Add(k.author(), Role::Writer).to_body(),
    );
    let a3 = make(&on(&[&w1, &add_k]), &admin, kind::STIMULUS, text("a3"));
    let k1 = make(&on(&[&w1, &add_k]), &k, kind::STIMULUS, text("k on a"));
    // Branch b: at the same sq 2 the admin removes k, then w at sq 3; w writes having seen
    // the first only.
    let remove_k = make(
        &on(&[&w1]),
        &admin,
        kind::MEMBER,
        MemberOp::Remove(k.author()).to_body(),
    );
    let remove_w = make(
        &on(&[&w1, &remove_k]),
        &admin,
        kind::MEMBER,
        MemberOp::Remove(w.author()).to_body(),
    );
    assert_eq!((add_k.seq, remove_k.seq, remove_w.seq), (2, 2, 3));
    let w2 = make(&on(&[&w1, &remove_k]), &w, kind::STIMULUS, text("w on b"));
    // Events of w and of k that saw both halves.
    let both = on(&[&w1, &add_k, &a3, &k1, &remove_k, &remove_w, &w2]);
    let w3 = make(&both, &w, kind::STIMULUS, text("w saw both"));
    let k2 = make(&both, &k, kind::STIMULUS, text("k saw both"));
    let all = [w1, add_k, a3, k1, remove_k, remove_w, w2, w3, k2];

    let replay = |order: &[usize]| {
        let mut t = Timeline::new(g.clone(), ChainMachine).unwrap();
        for &i in order {
            // A refusal is an outcome like any other here: what matters is that it is the same
            // everywhere (an invalid event waiting for its parents is dropped when released).
            let _ = t.insert(all[i].clone(), &NoBlocks);
        }
        let held: Vec<bool> = all.iter().map(|e| t.contains(&e.id())).collect();
        let excluded: Vec<bool> = all
            .iter()
            .map(|e| t.contains(&e.id()) && t.is_excluded(&e.id()))
            .collect();
        (held, excluded, t.membership().current(), fingerprint(&t))
    };
    let first = replay(&[0, 1, 2, 3, 4, 5, 6, 7, 8]);
    // k's event on branch a is valid (its past added k) and w's on branch b too (its past
    // removed k, not w), whatever else the replica holds.
    assert!(
        first.0[3],
        "k's event on the branch that added k must be taken"
    );
    assert!(
        first.0[6],
        "w's event on the branch that had not removed w must be taken"
    );
    // The two halves in the opposite order, and every other arrival order tried at random.
    let opposite = replay(&[0, 4, 5, 6, 1, 2, 3, 7, 8]);
    assert_eq!(first, opposite);
    let mut rng = Rng(0x5eed);
    for _ in 0..200 {
        let mut order: Vec<usize> = (0..all.len()).collect();
        rng.shuffle(&mut order);
        assert_eq!(replay(&order), first, "arrival order {order:?}");
    }
}

/// A late event a few positions back re-applies only from the dense state before it, not from
/// the persisted checkpoint far behind.
#[test]
fn a_late_event_rewinds_to_the_dense_state_before_it() {
    let (g, evs) = history(9, 3, 90, 64);
    // A head of the history (no event names it as a parent) that sorts before the tip: held
    // back, it arrives last and lands that many positions back.
    let named: std::collections::BTreeSet<EventId> =
        evs.iter().flat_map(|e| e.parents.clone()).collect();
    let late = evs
        .iter()
        .filter(|e| !named.contains(&e.id()))
        .min_by_key(|e| (e.lamport, e.id()))
        .unwrap()
        .clone();
    let back = evs
        .iter()
        .filter(|e| (e.lamport, e.id()) > (late.lamport, late.id()))
        .count() as u64;
    assert!((2..60).contains(&back), "{back} positions back");
    let early: Vec<SignedEvent> = evs
        .iter()
        .filter(|e| e.id() != late.id())
        .cloned()
        .collect();
    fn reapplied<M: Machine>(
        m: M,
        g: &SignedEvent,
        early: &[SignedEvent],
        late: &SignedEvent,
    ) -> (u64, [u8; 32]) {
        let mut tl = Timeline::new(g.clone(), m).unwrap();
        tl.insert_batch(early.to_vec(), &NoBlocks).unwrap();
        let before = tl.stats().reapplied;
        tl.insert(late.clone(), &NoBlocks).unwrap();
        (tl.stats().reapplied - before, tl.state_hash())
    }
    let (sparse, h1) = reapplied(ChainMachine, &g, &early, &late);
    let (dense, h2) = reapplied(DenseChainMachine, &g, &early, &late);
    assert_eq!(h1, h2);
    assert!(
        dense <= back + 3,
        "{dense} re-applied, {back} back, a state every 3"
    );
    assert!(
        sparse > back + 3,
        "{sparse} re-applied from the checkpoint at 64 or the genesis"
    );
}
