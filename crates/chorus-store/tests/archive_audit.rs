//! `verify_archive` (what `chorus verify` runs against a running node) and the store snapshot an
//! export reads from: the export of a snapshot replays to the replica's state, and an archive
//! with a block missing, a block altered or roots that are not its heads is refused, each with
//! what is wrong.

use chorus_core::{
    EventId,
    archive::{CarReader, CarWriter},
    event::kind,
    genesis::Genesis,
    machine::CounterMachine,
    testkit,
};
use chorus_store::{Replica, audit};

fn replica(dir: &std::path::Path, events: usize) -> Replica<CounterMachine> {
    let mut r = Replica::init(
        dir,
        |k| Genesis::new_body("audit", k.author(), "counter/1"),
        CounterMachine,
    )
    .unwrap();
    for i in 0..events {
        r.append(kind::STIMULUS, testkit::text(&format!("event {i}")))
            .unwrap();
    }
    r
}

/// The CAR of a snapshot, with `edit` applied to its (id, bytes) blocks first.
fn car_of(
    snap: &chorus_store::StoreSnapshot,
    roots: &[EventId],
    edit: impl FnOnce(&mut Vec<(EventId, Vec<u8>)>),
) -> Vec<u8> {
    let mut blocks: Vec<_> = snap.ordered_blocks().unwrap().map(Result::unwrap).collect();
    edit(&mut blocks);
    let mut w = CarWriter::new(Vec::new(), roots).unwrap();
    for (id, bytes) in &blocks {
        w.write_block(id, bytes).unwrap();
    }
    w.finish().unwrap()
}

fn verify(car: &[u8]) -> Result<audit::ArchiveVerified, audit::Mismatch> {
    let reader = CarReader::new(car).unwrap();
    let roots: Vec<EventId> = reader
        .roots
        .iter()
        .map(|c| c.to_string().parse().unwrap())
        .collect();
    audit::verify_archive::<CounterMachine>(reader, &roots, &mut ()).unwrap()
}

#[test]
fn a_snapshot_export_replays_to_the_replica_state_while_the_owner_writes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = replica(dir.path(), 30);
    let (hash, heads) = (r.timeline().state_hash(), r.timeline().heads());
    let snap = r.store().reader().snapshot().unwrap();
    // Writes after the snapshot are not in it.
    r.append(kind::STIMULUS, testkit::text("after the snapshot"))
        .unwrap();
    assert_eq!(snap.len(), 31);
    assert_eq!(snap.heads(), heads.as_slice());
    let v = verify(&car_of(&snap, snap.heads(), |_| {})).expect("the export verifies");
    assert_eq!(v.events, 31);
    assert_eq!(v.heads, heads);
    assert_eq!(v.state_hash, hash);
    assert_ne!(v.state_hash, r.timeline().state_hash());
}

#[test]
fn an_archive_with_a_block_missing_altered_or_other_roots_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = replica(dir.path(), 12);
    let snap = r.store().reader().snapshot().unwrap();
    let heads = snap.heads().to_vec();

    let missing = verify(&car_of(&snap, &heads, |b| {
        b.remove(5);
    }))
    .unwrap_err();
    assert!(
        missing.to_string().contains("wait for parents"),
        "{missing}"
    );

    let altered = verify(&car_of(&snap, &heads, |b| {
        let last = b[7].1.len() - 1;
        b[7].1[last] ^= 1;
    }))
    .unwrap_err();
    assert!(
        matches!(altered, audit::Mismatch::Block { .. }),
        "{altered}"
    );

    let roots = [snap.ordered_blocks().unwrap().nth(3).unwrap().unwrap().0];
    let other_roots = verify(&car_of(&snap, &roots, |_| {})).unwrap_err();
    assert_eq!(other_roots, audit::Mismatch::Heads);

    let empty = verify(&car_of(&snap, &heads, |b| b.clear())).unwrap_err();
    assert_eq!(empty, audit::Mismatch::Empty);
}
