//! Replica on a real redb file: durability across reopen, checkpoint restore, pending
//! persistence, integrity check.

use chorus_core::{event::kind, genesis::Genesis, testkit};
use chorus_kairos::KairosMachine;
use chorus_store::{Replica, Store, StoreError, replica::STORE_FILE, tables};
use redb::ReadableTable;

fn init(dir: &std::path::Path, interval: u64) -> Replica<KairosMachine> {
    Replica::init(
        dir,
        |k| {
            let mut b = Genesis::new_body("t", k.author(), "kairos/1");
            b.checkpoint_interval = interval;
            b
        },
        KairosMachine,
    )
    .unwrap()
}

#[test]
fn reopen_restores_order_and_state_from_the_newest_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = init(dir.path(), 16);
    for i in 0..10 {
        let items = (0..10)
            .map(|j| {
                (
                    kind::STIMULUS.to_string(),
                    testkit::text(&format!("batch {i} event {j} speaks")),
                )
            })
            .collect();
        r.append_batch(items).unwrap();
    }
    let (hash, heads, order) = (
        r.timeline().state_hash(),
        r.timeline().heads(),
        r.timeline().order().collect::<Vec<_>>(),
    );
    assert_eq!(order.len(), 101);
    drop(r);

    let r = Replica::open(dir.path(), KairosMachine).unwrap();
    assert_eq!(r.timeline().state_hash(), hash);
    assert_eq!(r.timeline().heads(), heads);
    assert_eq!(r.timeline().order().collect::<Vec<_>>(), order);
    // 101 events, checkpoint every 16 positions: the newest covers 96, so at most 5 (+genesis at
    // construction) were applied on open.
    assert!(
        r.timeline().stats().applied <= 6,
        "{:?}",
        r.timeline().stats()
    );
    assert!(!r.store().checkpoints().unwrap().is_empty());
}

#[test]
fn pending_events_survive_a_restart_and_apply_when_parents_come() {
    let src_dir = tempfile::tempdir().unwrap();
    let mut src = init(src_dir.path(), 8);
    let evs: Vec<_> = (0..20)
        .map(|i| {
            src.append(kind::STIMULUS, testkit::text(&format!("e{i}")))
                .unwrap()
        })
        .collect();
    let genesis = src.store().genesis().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut r = Replica::create_from_genesis(dir.path(), genesis, KairosMachine).unwrap();
    let report = r.ingest(evs[10..].to_vec()).unwrap();
    assert_eq!((report.new, report.pending), (0, 10));
    drop(r);
    let mut r = Replica::open(dir.path(), KairosMachine).unwrap();
    assert_eq!(r.timeline().pending_len(), 10, "pending was persisted");
    let report = r.ingest(evs[..10].to_vec()).unwrap();
    assert_eq!(report.new, 20);
    assert_eq!(r.timeline().pending_len(), 0);
    assert_eq!(r.timeline().state_hash(), src.timeline().state_hash());
    drop(r);
    let r = Replica::open(dir.path(), KairosMachine).unwrap();
    assert_eq!(r.timeline().pending_len(), 0);
    assert_eq!(r.timeline().state_hash(), src.timeline().state_hash());
}

#[test]
fn integrity_check_names_the_first_bad_block() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = init(dir.path(), 8);
    let ev = r
        .append(kind::STIMULUS, testkit::text("to be damaged"))
        .unwrap();
    drop(r);
    {
        let db = redb::Database::open(dir.path().join(STORE_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(tables::EVENTS).unwrap();
            let key = tables::order_key(ev.lamport, &ev.id().0);
            let mut bytes = t.get(key.as_slice()).unwrap().unwrap().value().to_vec();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            t.insert(key.as_slice(), bytes.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
    match store.integrity_check() {
        Err(StoreError::Corrupt { block: Some(b), .. }) => assert_eq!(b, ev.id()),
        other => panic!("expected corruption at {}, got {other:?}", ev.id()),
    }
    drop(store);
    let err = Replica::open(dir.path(), KairosMachine)
        .err()
        .expect("open refuses");
    assert!(err.to_string().contains(&ev.id().to_string()), "{err}");
}

#[test]
fn integrity_check_finds_a_block_missing_from_the_id_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = init(dir.path(), 8);
    let ev = r
        .append(kind::STIMULUS, testkit::text("to be unindexed"))
        .unwrap();
    drop(r);
    {
        let db = redb::Database::open(dir.path().join(STORE_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(tables::IDS)
            .unwrap()
            .remove(ev.id().0.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
    match store.integrity_check() {
        Err(StoreError::Corrupt {
            block: Some(b),
            why,
        }) => {
            assert_eq!(b, ev.id(), "{why}");
        }
        other => panic!("expected corruption at {}, got {other:?}", ev.id()),
    }
}

/// A batch larger than the timeline's recent-block cache, whose events sort before events
/// already applied (a rewind), and a local batch larger than the cache: the fold must find
/// every block although none of the batch is committed yet.
#[test]
fn batches_larger_than_the_block_cache_fold_correctly() {
    use chorus_core::{
        Timeline, crypto::Keypair, limits::RECENT_BLOCK_CACHE, testkit::NullMachine,
    };
    let admin = Keypair::from_seed([1; 32]);
    let writers: Vec<Keypair> = (0..2).map(|i| Keypair::from_seed([10 + i; 32])).collect();
    let g = testkit::genesis(&admin, &writers, "kairos/1", 64);
    let solo = |k: &Keypair, n: usize| {
        let mut t = Timeline::new(g.clone(), NullMachine("kairos/1")).unwrap();
        (0..n)
            .map(|i| {
                let e = t
                    .prepare(k.author(), kind::STIMULUS, testkit::text(&format!("e {i}")))
                    .sign(k);
                t.insert_deferred(e.clone()).unwrap();
                e
            })
            .collect::<Vec<_>>()
    };
    let a = solo(&writers[0], 300);
    let b = solo(&writers[1], RECENT_BLOCK_CACHE + 500);
    let dir = tempfile::tempdir().unwrap();
    let mut r = Replica::create_from_genesis(dir.path(), g.clone(), KairosMachine).unwrap();
    r.ingest(a.clone()).unwrap();
    let report = r.ingest(b.clone()).unwrap();
    assert_eq!(report.new as usize, b.len());
    let mut fresh = Timeline::new(g, KairosMachine).unwrap();
    let mut all: Vec<_> = a.into_iter().chain(b).collect();
    all.sort_by_key(|e| (e.lamport, e.id()));
    fresh.insert_batch(all, r.store()).unwrap();
    assert_eq!(fresh.state_hash(), r.timeline().state_hash());

    // A local group commit larger than the cache.
    let dir = tempfile::tempdir().unwrap();
    let mut r = init(dir.path(), 64);
    let items = (0..RECENT_BLOCK_CACHE + 100)
        .map(|i| {
            (
                kind::HEARTBEAT.to_string(),
                testkit::text(&format!("h {i}")),
            )
        })
        .collect();
    r.append_batch(items).unwrap();
    assert_eq!(r.timeline().len(), RECENT_BLOCK_CACHE + 101);
}

/// Only the newest checkpoints stay in memory; a late event far back rewinds from an evicted
/// one read back from the store (not from genesis) and lands on the from-scratch state.
#[test]
fn deep_rewind_reads_an_evicted_checkpoint_from_the_store() {
    use chorus_core::{SignedEvent, timeline::CHECKPOINTS_IN_MEMORY};
    let da = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let mut a = init(da.path(), 16);
    let kb = chorus_store::replica::load_or_create_key(db.path()).unwrap();
    a.append(
        kind::MEMBER,
        chorus_core::membership::MemberOp::Add(kb.author(), chorus_core::membership::Role::Writer)
            .to_body(),
    )
    .unwrap();
    let stim = |n: usize, tag: &str| -> Vec<(String, ipld_core::ipld::Ipld)> {
        (0..n)
            .map(|i| {
                (
                    kind::STIMULUS.to_string(),
                    testkit::text(&format!("{tag} {i} word")),
                )
            })
            .collect()
    };
    let mut all: Vec<SignedEvent> = a.append_batch(stim(100, "early")).unwrap();
    let genesis = a.store().genesis().unwrap();
    let mut b = Replica::create_from_genesis(db.path(), genesis.clone(), KairosMachine).unwrap();
    let mut early: Vec<SignedEvent> = a.store().ordered_events().map(|e| e.unwrap()).collect();
    early.remove(0);
    b.ingest(early.clone()).unwrap();
    let late = b
        .append(kind::STIMULUS, testkit::text("late word"))
        .unwrap();
    all.extend(a.append_batch(stim(300, "later")).unwrap());
    assert!(a.timeline().checkpoint_keys().len() > CHECKPOINTS_IN_MEMORY + 8);
    let before = a.timeline().stats().reapplied;
    a.ingest(vec![late.clone()]).unwrap();
    let reapplied = a.timeline().stats().reapplied - before;
    // From the checkpoint just before the late event (~ position 96), not from genesis (402).
    assert!(reapplied < 330, "re-applied {reapplied}");

    let dc = tempfile::tempdir().unwrap();
    let mut c = Replica::create_from_genesis(dc.path(), genesis, KairosMachine).unwrap();
    let mut everything = early;
    everything.extend(all.into_iter().skip(100));
    everything.push(late);
    c.ingest(everything).unwrap();
    assert_eq!(c.timeline().len(), a.timeline().len());
    assert_eq!(c.timeline().state_hash(), a.timeline().state_hash());
}

#[test]
fn light_replica_lives_in_memory_and_forgets_blocks_behind_the_settled_horizon() {
    let full_dir = tempfile::tempdir().unwrap();
    let mut full = init(full_dir.path(), 16);
    let light_dir = tempfile::tempdir().unwrap();
    let genesis = full.store().genesis().unwrap();
    drop(Replica::create_from_genesis(light_dir.path(), genesis, KairosMachine).unwrap());
    let mut light = Replica::in_memory(light_dir.path(), KairosMachine).unwrap();
    light.set_deferred_fold(true);

    let mut sent = 0;
    let mut round = |full: &mut Replica<KairosMachine>, light: &mut Replica<KairosMachine>| {
        let items = (0..100)
            .map(|j| {
                (
                    kind::STIMULUS.to_string(),
                    testkit::text(&format!("round event {j} the gate speaks")),
                )
            })
            .collect();
        full.append_batch(items).unwrap();
        let order: Vec<_> = full.timeline().order().skip(sent + 1).collect();
        sent += order.len();
        let evs = order
            .iter()
            .map(|id| full.timeline().load(id, full.store()).unwrap())
            .collect();
        let rep = light.ingest(evs).unwrap();
        assert_eq!(rep.rejected_total(), 0);
        light.fold().unwrap();
        light.prune().unwrap()
    };
    let (h1, p1) = round(&mut full, &mut light);
    let h1 = h1.expect("a single-member timeline settles at once");
    assert!(p1.blocks >= 90, "{p1:?}");
    assert_eq!(light.timeline().state_hash(), full.timeline().state_hash());
    // Behind the horizon the stored blocks are gone (the genesis stays); after it they are
    // held. (The timeline's small cache of recently seen blocks is not the store.)
    use chorus_core::timeline::BlockSource;
    let order: Vec<_> = full.timeline().order().collect();
    assert!(light.store().get_block(&order[5]).is_none());
    assert!(light.store().get_block(&order[0]).is_some());
    assert!(light.store().get_block(order.last().unwrap()).is_some());
    let cks = light.store().checkpoints().unwrap();
    assert_eq!(
        cks.first().map(|c| c.0),
        Some(h1),
        "older checkpoints are gone"
    );

    // It keeps following the timeline after pruning, state for state.
    let (h2, _) = round(&mut full, &mut light);
    assert!(h2.unwrap() > h1);
    assert_eq!(light.timeline().len(), full.timeline().len());
    assert_eq!(light.timeline().state_hash(), full.timeline().state_hash());

    // Nothing of it reached the disk: the light dir's store holds the genesis only.
    drop(light);
    let on_disk = Store::open(&light_dir.path().join(STORE_FILE)).unwrap();
    assert_eq!(on_disk.integrity_check().unwrap().events, 1);
}

/// A late event that sorts before stored checkpoints, ingested with the fold deferred (as the
/// node does), then the process dies before the fold: on reopen those checkpoints must not be
/// trusted. The invalidation is committed with the event itself. (Found by the SIGKILL mesh
/// test: a restarted node had the same events and heads as its peers but another state_hash.)
#[test]
fn checkpoints_behind_a_late_event_are_invalidated_in_the_same_commit() {
    use chorus_core::membership::{MemberOp, Role};
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let mut a = init(a_dir.path(), 16);
    let genesis = a.store().genesis().unwrap();
    let mut b = Replica::create_from_genesis(b_dir.path(), genesis, KairosMachine).unwrap();
    let add = a
        .append(
            kind::MEMBER,
            MemberOp::Add(b.key().author(), Role::Writer).to_body(),
        )
        .unwrap();
    b.ingest(vec![add]).unwrap();
    // B writes early (low lc) but A only hears of it much later.
    let late = b
        .append(kind::STIMULUS, testkit::text("an early word from b"))
        .unwrap();
    for i in 0..5 {
        let items = (0..20)
            .map(|j| {
                (
                    kind::STIMULUS.to_string(),
                    testkit::text(&format!("a speaks {i} {j}")),
                )
            })
            .collect();
        a.append_batch(items).unwrap();
    }
    assert!(a.store().checkpoints().unwrap().len() >= 5);
    // The node's mode: ingest commits, the fold waits for the next tick — which never comes.
    a.set_deferred_fold(true);
    let report = a.ingest(vec![late]).unwrap();
    assert_eq!(report.new, 1);
    drop(a);

    // The truth: everything, folded from scratch.
    let evs: Vec<_> = {
        let a = Replica::open(a_dir.path(), KairosMachine).unwrap();
        let order: Vec<_> = a.timeline().order().skip(1).collect();
        order
            .iter()
            .map(|id| a.timeline().load(id, a.store()).unwrap())
            .collect()
    };
    let fresh_dir = tempfile::tempdir().unwrap();
    let mut fresh = Replica::create_from_genesis(
        fresh_dir.path(),
        b.store().genesis().unwrap(),
        KairosMachine,
    )
    .unwrap();
    fresh.ingest(evs).unwrap();
    let reopened = Replica::open(a_dir.path(), KairosMachine).unwrap();
    assert_eq!(reopened.timeline().len(), fresh.timeline().len());
    assert_eq!(
        hex(reopened.timeline().state_hash()),
        hex(fresh.timeline().state_hash()),
        "a reopened replica trusted a checkpoint the late event made stale"
    );
}

fn hex(b: [u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn a_page_read_by_another_thread_is_the_page_read_in_place_while_the_owner_writes() {
    use chorus_core::sync::{self, Planned, SyncRequest};
    let dir = tempfile::tempdir().unwrap();
    let mut r = init(dir.path(), 16);
    let batch = |i: usize| -> Vec<_> {
        (0..50)
            .map(|j| {
                (
                    kind::STIMULUS.to_string(),
                    testkit::text(&format!("batch {i} event {j} speaks")),
                )
            })
            .collect()
    };
    for i in 0..4 {
        r.append_batch(batch(i)).unwrap();
    }
    let req = SyncRequest::Since {
        have: vec![],
        after: None,
    };
    let in_place = sync::serve(r.timeline(), r.store(), &req);
    let Planned::Page(plan) = sync::plan(r.timeline(), &req) else {
        panic!("a Since is a page");
    };
    assert_eq!(plan.len(), 201);
    let reader = r.store().reader();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        // Waits until the owner has committed more: the snapshot is newer than the plan.
        rx.recv().unwrap();
        reader.read(|block| sync::pack(&plan, block)).unwrap()
    });
    r.append_batch(batch(9)).unwrap();
    tx.send(()).unwrap();
    let off_thread = t.join().unwrap();
    assert_eq!(off_thread, in_place);
    let sync::SyncResponse::Blocks(b) = off_thread else {
        panic!("blocks");
    };
    assert_eq!(b.blocks.len(), 201);
    assert_eq!(b.next, None);
}

/// A directory whose key was made there claims its whole own chain once a store takes it
/// (`chorus key`, then `join`). Run as a light node in memory, the key signs events that store
/// never sees: the same directory opened on disk later must not take its next sequence number
/// from the store (it would write from sequence number 2 again: an equivocation).
#[test]
fn a_directory_run_in_memory_is_known_to_miss_own_events_on_disk() {
    use chorus_core::storage::Storage;
    let full_dir = tempfile::tempdir().unwrap();
    let full = init(full_dir.path(), 16);
    let genesis = full.store().genesis().unwrap();
    let light_dir = tempfile::tempdir().unwrap();
    // A key made here (`chorus key`): it leaves the unused-key marker the first store takes.
    chorus_store::replica::load_or_create_key(light_dir.path()).unwrap();
    drop(Replica::create_from_genesis(light_dir.path(), genesis, KairosMachine).unwrap());
    let store_path = light_dir.path().join(STORE_FILE);
    assert!(Store::open(&store_path).unwrap().own_chain_complete());
    let fresh = Replica::open(light_dir.path(), KairosMachine).unwrap();
    assert!(!fresh.store().own_chain_elsewhere());
    drop(fresh);
    drop(Replica::in_memory(light_dir.path(), KairosMachine).unwrap());
    let reopened = Replica::open(light_dir.path(), KairosMachine).unwrap();
    assert!(reopened.store().own_chain_elsewhere());
    // Its peers confirmed its chain: the marker goes, the next open trusts the store again.
    chorus_store::replica::own_chain_held_again(light_dir.path()).unwrap();
    drop(reopened);
    let again = Replica::open(light_dir.path(), KairosMachine).unwrap();
    assert!(!again.store().own_chain_elsewhere());
}
