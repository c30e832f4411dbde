//! A merge folds once: writers' concurrent chains ingested one writer after another (each
//! writer's events sort among the ones before) cost one rewind inside a
//! [`Replica::fold_once`] session or an import, not one per ingest.

use chorus_core::{
    SignedEvent,
    archive::RawBlock,
    crypto::Keypair,
    event::kind,
    machine::CounterMachine,
    testkit::{self, NullMachine},
    timeline::Timeline,
};
use chorus_store::{Replica, import::IMPORT_CHUNK};

const MACHINE: &str = "counter/1";

/// Three writers' chains, each from the genesis on, no writer seeing another's events.
fn three_writers(per_writer: usize) -> (SignedEvent, Vec<Vec<SignedEvent>>) {
    let admin = Keypair::from_seed([200; 32]);
    let keys: Vec<Keypair> = (1..=3).map(|i| Keypair::from_seed([i; 32])).collect();
    let g = testkit::genesis(&admin, &keys, MACHINE, 64);
    let chains = keys
        .iter()
        .map(|k| {
            let mut tl = Timeline::new(g.clone(), NullMachine(MACHINE)).unwrap();
            (0..per_writer)
                .map(|i| {
                    let e = tl
                        .prepare(k.author(), kind::STIMULUS, testkit::text(&format!("e{i}")))
                        .sign(k);
                    tl.insert_deferred(e.clone()).unwrap();
                    e
                })
                .collect()
        })
        .collect();
    (g, chains)
}

/// Applications, rewinds and state of the same events ingested in one batch.
fn one_batch(g: &SignedEvent, chains: &[Vec<SignedEvent>]) -> (u64, [u8; 32]) {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Replica::create_from_genesis(dir.path(), g.clone(), CounterMachine).unwrap();
    r.ingest(chains.iter().flatten().cloned().collect())
        .unwrap();
    (r.timeline().stats().applied, r.timeline().state_hash())
}

#[test]
fn ingests_in_a_fold_once_session_rewind_once() {
    // 3 000 events: more than the timeline lets wait unfolded while their blocks are cached
    // (`RECENT_BLOCK_CACHE / 2`), so part of the session is folded before its end and the
    // rest sorts before it.
    let (g, chains) = three_writers(1_000);
    let (applied_once, hash) = one_batch(&g, &chains);
    let session = |fold_once: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Replica::create_from_genesis(dir.path(), g.clone(), CounterMachine).unwrap();
        let ingest_all = |r: &mut Replica<CounterMachine>| {
            for chain in &chains {
                for chunk in chain.chunks(250) {
                    r.ingest(chunk.to_vec())?;
                }
            }
            Ok::<_, chorus_store::ReplicaError>(())
        };
        if fold_once {
            r.fold_once(&mut (), |r, _| ingest_all(r)).unwrap();
        } else {
            ingest_all(&mut r).unwrap();
        }
        assert!(!r.timeline().needs_catch_up());
        assert_eq!(
            r.timeline().state_hash(),
            hash,
            "the merge equals one batch"
        );
        (r.timeline().stats().rewinds, r.timeline().stats().applied)
    };
    let (rewinds, applied) = session(true);
    assert_eq!(rewinds, 1, "one rewind for the whole session");
    assert!(
        applied <= applied_once,
        "{applied} applications, one batch {applied_once}"
    );
    // The same ingests, each folded: the second and third writers rewind at every chunk.
    let (rewinds, applied) = session(false);
    assert!(rewinds >= 4, "{rewinds} rewinds");
    assert!(applied > applied_once * 3 / 2, "{applied} applications");
}

#[test]
fn an_import_of_writers_one_after_another_rewinds_once() {
    // More events than one import chunk, so the archive arrives in several chunks.
    let per_writer = IMPORT_CHUNK * 2 / 3;
    let (g, chains) = three_writers(per_writer);
    let (applied_once, hash) = one_batch(&g, &chains);
    let blocks: Vec<_> = std::iter::once(&g)
        .chain(chains.iter().flatten())
        .map(|e| {
            Ok(RawBlock {
                cid: e.id().to_string(),
                bytes: Ok(e.bytes_arc().to_vec()),
            })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut r = Replica::create_from_genesis(dir.path(), g.clone(), CounterMachine).unwrap();
    let rep = chorus_store::import::import(&mut r, blocks.into_iter(), &mut ()).unwrap();
    assert_eq!(rep.new, 3 * per_writer as u64);
    assert!(
        !r.timeline().needs_catch_up(),
        "the import folds at its end"
    );
    assert_eq!(r.timeline().state_hash(), hash);
    assert_eq!(
        r.timeline().stats().rewinds,
        1,
        "one rewind for the whole import"
    );
    assert_eq!(r.timeline().stats().applied, applied_once);
    // The state is durable: a reopen finds it.
    drop(r);
    let r = Replica::open(dir.path(), CounterMachine).unwrap();
    assert_eq!(r.timeline().state_hash(), hash);
}
