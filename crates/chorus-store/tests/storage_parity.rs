//! The same `Local` over the redb store and over chorus-core's `MemStore` (what the simulator
//! runs on) must be the same replica: the same inputs give the same reports, order, heads,
//! state, stored blocks, pending set and checkpoints, and the same state after a restart.

use chorus_core::{
    SignedEvent, Timeline,
    crypto::Keypair,
    event::kind,
    local::Local,
    machine::CounterMachine,
    storage::{MemStore, Storage},
    testkit,
    timeline::BlockSource,
};
use chorus_store::Store;

fn keys(n: u8) -> Vec<Keypair> {
    (1..=n).map(|i| Keypair::from_seed([i; 32])).collect()
}

fn views<S: Storage>(
    l: &Local<CounterMachine, S>,
) -> (Vec<chorus_core::EventId>, Vec<chorus_core::EventId>, usize) {
    let tl = l.timeline();
    (tl.order().collect(), tl.heads(), tl.pending_len())
}

#[test]
fn local_on_redb_and_in_memory_is_the_same_replica() {
    let ks = keys(4);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 16);
    // Three writers' concurrent history arrives shuffled (so some of it waits in pending);
    // the fourth key writes locally in between.
    let mut hist = testkit::history(&g, "counter/1", &ks[..3], 400, 11, |_, r| {
        (
            kind::STIMULUS,
            testkit::text(&format!("e{}", r.below(1000))),
        )
    });
    let mut rng = testkit::Rng(5);
    rng.shuffle(&mut hist);
    let store = Store::create_in_memory(&g, "counter/1").unwrap();
    let mut a = Local::new(
        Timeline::new(g.clone(), CounterMachine).unwrap(),
        store,
        ks[3].clone(),
    );
    let mut b = Local::new(
        Timeline::new(g.clone(), CounterMachine).unwrap(),
        MemStore::new(&g),
        ks[3].clone(),
    );
    let mut rest = hist.as_slice();
    let mut round = 0;
    let mut most_pending = 0;
    while !rest.is_empty() {
        round += 1;
        let n = (1 + rng.below(40)).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let ra = a.ingest(chunk.to_vec()).unwrap();
        let rb = b.ingest(chunk.to_vec()).unwrap();
        assert_eq!(ra, rb, "round {round}");
        if round % 3 == 0 {
            let items = vec![(kind::STIMULUS.to_string(), testkit::text("local"))];
            let ea = a.append_batch(items.clone()).unwrap();
            let eb = b.append_batch(items).unwrap();
            assert_eq!(ea, eb, "the same local event, byte for byte");
        }
        assert_eq!(views(&a), views(&b), "round {round}");
        most_pending = most_pending.max(a.timeline().pending_len());
    }
    assert!(
        most_pending > 10,
        "the shuffle sent events ahead of their parents"
    );
    assert_eq!(a.timeline().pending_len(), 0, "everything arrived");
    a.fold().unwrap();
    b.fold().unwrap();
    assert_eq!(a.timeline().state_hash(), b.timeline().state_hash());
    // What each storage holds.
    let stored_a: Vec<SignedEvent> = a.store().ordered_events().map(|r| r.unwrap()).collect();
    let stored_b: Vec<SignedEvent> = b
        .store()
        .ordered_blocks()
        .iter()
        .map(|x| SignedEvent::decode(x).unwrap())
        .collect();
    assert_eq!(stored_a, stored_b);
    assert_eq!(stored_a.len(), a.timeline().len());
    assert!(a.store().pending().unwrap().is_empty() && b.store().pending_blocks().is_empty());
    let cks = a.store().checkpoints().unwrap();
    assert!(!cks.is_empty(), "the run took checkpoints");
    assert_eq!(cks, b.store().checkpoints());
    assert_eq!(a.store().heads().unwrap(), b.store().heads());
    // A restart from each storage gives the same state again.
    let restart_b = |m: &MemStore| {
        let evs = m
            .ordered_blocks()
            .iter()
            .map(|x| SignedEvent::decode(x).unwrap())
            .collect::<Vec<_>>();
        let tl = Timeline::restore(g.clone(), CounterMachine, evs, m.checkpoints(), m).unwrap();
        let mut l = Local::new(tl, m.clone(), ks[3].clone());
        l.resume(vec![]).unwrap();
        l
    };
    let rb = restart_b(b.store());
    assert_eq!(rb.timeline().state_hash(), a.timeline().state_hash());
    assert_eq!(views(&rb), views(&a));
    // Pruning through the same horizon deletes the same.
    let h = a.timeline().checkpoint_keys()[0];
    let (_, store_a, _) = a.into_parts();
    let (_, store_b, _) = b.into_parts();
    let (mut store_a, mut store_b) = (store_a, store_b);
    let pa = Storage::prune_through(&mut store_a, h).unwrap();
    let pb = Storage::prune_through(&mut store_b, h).unwrap();
    assert_eq!(pa, pb);
    assert!(pa.blocks > 0);
    assert_eq!(
        store_a.get_block(&h.1).is_some(),
        store_b.get_block(&h.1).is_some()
    );
}
