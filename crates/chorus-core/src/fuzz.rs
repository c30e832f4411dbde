//! The bodies of the fuzz targets (`fuzz/fuzz_targets/`, run with cargo-fuzz), here so the
//! tests replay every committed input (`fuzz/regressions/TARGET/*`) through exactly the same
//! code. Each takes arbitrary bytes; a panic is a finding. Besides "no panic", each checks what
//! must hold of anything a decoder accepts.

use std::{cell::RefCell, collections::BTreeMap, sync::Arc};

use crate::{
    EventId, SignedEvent, Timeline,
    crypto::Keypair,
    event::kind,
    machine::CounterMachine,
    sync::{self, Action, MAX_SYNC_MESSAGE_BYTES, SyncRequest, SyncResponse, Syncer},
    testkit,
};

type Blocks = BTreeMap<EventId, Arc<[u8]>>;

/// A small fixed timeline (3 writers, 40 events) and its blocks, built once per thread.
struct Fixture {
    genesis: SignedEvent,
    events: Vec<SignedEvent>,
    timeline: Timeline<CounterMachine>,
    blocks: Blocks,
}

fn fixture() -> Fixture {
    let keys: Vec<Keypair> = (1..=3u8).map(|i| Keypair::from_seed([i; 32])).collect();
    let genesis = testkit::genesis(&keys[0], &keys, "counter/1", 8);
    let events = testkit::history(&genesis, "counter/1", &keys, 40, 5, |_, _| {
        (kind::STIMULUS, testkit::text("fuzz"))
    });
    let blocks: Blocks = events.iter().map(|e| (e.id(), e.bytes_arc())).collect();
    let mut timeline = Timeline::new(genesis.clone(), CounterMachine).expect("valid genesis");
    for r in timeline
        .insert_batch(events.iter().cloned(), &blocks)
        .expect("valid history")
    {
        r.expect("valid event");
    }
    Fixture {
        genesis,
        events,
        timeline,
        blocks,
    }
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

fn with_fixture<R>(f: impl FnOnce(&Fixture) -> R) -> R {
    FIXTURE.with(|c| {
        let mut c = c.borrow_mut();
        f(c.get_or_insert_with(fixture))
    })
}

/// The event decoder (gossip, pages, imports). Anything it accepts is canonical: the block is
/// exactly the encoding of the decoded event, and its id is the block's hash.
pub fn event_decode(data: &[u8]) {
    if let Ok(ev) = SignedEvent::decode(data) {
        assert_eq!(ev.bytes(), data, "accepted a non-canonical block");
        assert_eq!(ev.id(), EventId::of_block(data));
        let again = SignedEvent::decode_trusted(ev.bytes()).expect("re-decodes");
        assert_eq!(again.id(), ev.id());
    }
}

/// A sync request off the wire (the libp2p CBOR codec), answered by `serve` on a real
/// timeline: no panic, and every answer within the wire limit.
pub fn wire_request(data: &[u8]) {
    if data.len() > MAX_SYNC_MESSAGE_BYTES {
        return; // the codec refuses it unread
    }
    let Ok(req) = cbor4ii::serde::from_slice::<SyncRequest>(data) else {
        return;
    };
    let _ = req.check();
    with_fixture(|fx| {
        let resp = sync::serve(&fx.timeline, &fx.blocks, &req);
        let bytes = cbor4ii::serde::to_vec(Vec::new(), &resp).expect("encodes");
        assert!(
            bytes.len() <= MAX_SYNC_MESSAGE_BYTES,
            "answer over the wire limit"
        );
    });
}

/// A sync response off the wire, taken in the way a node takes one: a summary goes to the
/// `Syncer`; blocks are decoded, inserted into a replica that holds part of the fixture, and
/// reported as a page. No panic; invalid blocks are rejected and counted, never indexed.
pub fn sync_receiver(data: &[u8]) {
    if data.len() > MAX_SYNC_MESSAGE_BYTES {
        return;
    }
    let Ok(resp) = cbor4ii::serde::from_slice::<SyncResponse>(data) else {
        return;
    };
    with_fixture(|fx| {
        let mut local = Timeline::new(fx.genesis.clone(), CounterMachine).expect("genesis");
        let half: Vec<SignedEvent> = fx.events[..20].to_vec();
        let mut store: Blocks = half.iter().map(|e| (e.id(), e.bytes_arc())).collect();
        for r in local.insert_batch(half, &store).expect("valid") {
            r.expect("valid");
        }
        let mut syncer: Syncer<u8> = Syncer::default();
        let _ = syncer.peer_up(1, 0);
        match resp {
            SyncResponse::Summary(s) => {
                for a in syncer.on_summary(&1, &s, &local, 10) {
                    if let Action::Send(_, req) = a {
                        assert!(
                            req.check().is_ok(),
                            "the syncer asked out of bounds: {req:?}"
                        );
                    }
                }
            }
            SyncResponse::Blocks(b) => {
                let mut evs = vec![];
                let mut invalid = 0u32;
                for x in &b.blocks {
                    match SignedEvent::decode(x) {
                        Ok(e) => evs.push(e),
                        Err(_) => invalid += 1,
                    }
                }
                for e in &evs {
                    store.insert(e.id(), e.bytes_arc());
                }
                let results = local
                    .insert_batch(evs.iter().cloned(), &store)
                    .expect("the store holds every block");
                for (e, r) in evs.iter().zip(results) {
                    if r.is_err() {
                        assert!(!local.contains(&e.id()), "a rejected event was indexed");
                    }
                }
                let _ = syncer.on_invalid(&1, invalid, 10);
                let _ = syncer.on_page(
                    &1,
                    None,
                    b.next,
                    b.blocks.len(),
                    evs.len() as u64,
                    &local,
                    10,
                );
                // Whatever arrived, the replica is still a valid timeline of the fixture's
                // genesis: every indexed event is one of the fixture's (nothing else is signed
                // by its keys here, short of forging ed25519).
                let known: std::collections::BTreeSet<EventId> =
                    fx.events.iter().map(|e| e.id()).collect();
                assert!(
                    local
                        .order()
                        .all(|id| id == fx.genesis.id() || known.contains(&id))
                );
            }
            SyncResponse::Stored { ids } => {
                let _ = ids.len();
            }
            SyncResponse::Refused { reason } => {
                syncer.request_failed(&1, &SyncRequest::Summary);
                let _ = reason.len();
            }
        }
    });
}

/// The archive readers (`chorus import`): the bytes as a CARv1 file, then as JSONL. Neither
/// panics; every block a CAR yields is within its section bound; each reader's stream ends at
/// its first error (nothing is read past a refused spot); whatever a block is, its check gives
/// a verdict (never a panic).
pub fn archive_read(data: &[u8]) {
    use crate::archive::{CarReader, MAX_CAR_SECTION, read_jsonl};
    if let Ok(r) = CarReader::new(data) {
        let mut failed = false;
        for item in r {
            assert!(!failed, "the CAR reader went on after an error");
            match item {
                Ok(b) => {
                    let n = b.bytes.as_ref().map_or(0, Vec::len);
                    assert!(n <= MAX_CAR_SECTION, "a CAR block of {n} bytes");
                    let _ = b.check();
                }
                Err(_) => failed = true,
            }
        }
    }
    let mut failed = false;
    for item in read_jsonl(data) {
        assert!(!failed, "the JSONL reader went on after an error");
        match item {
            Ok(b) => {
                let _ = b.check();
            }
            Err(_) => failed = true,
        }
    }
}

/// Valid inputs to start the fuzzers from (`cargo fuzz` corpus seeds): a real event block, a
/// request of each kind and a page of real blocks.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    with_fixture(|fx| {
        let mut out = vec![];
        for e in fx.events.iter().take(3) {
            out.push(("event_decode", e.bytes().to_vec()));
        }
        let reqs = [
            SyncRequest::Summary,
            SyncRequest::Want {
                ids: fx.events.iter().take(3).map(|e| e.id()).collect(),
            },
            SyncRequest::Since {
                have: fx.timeline.version_vector().into_iter().collect(),
                after: None,
            },
        ];
        let mut car = crate::archive::CarWriter::new(Vec::new(), &[fx.genesis.id()])
            .expect("writes to memory");
        let mut jsonl = Vec::new();
        for e in std::iter::once(&fx.genesis).chain(fx.events.iter().take(5)) {
            car.write(e).expect("writes to memory");
            crate::archive::write_jsonl_line(&mut jsonl, e).expect("writes to memory");
        }
        out.push(("archive_read", car.finish().expect("writes to memory")));
        out.push(("archive_read", jsonl));
        for r in &reqs {
            out.push((
                "wire_request",
                cbor4ii::serde::to_vec(Vec::new(), r).expect("encodes"),
            ));
            let resp = sync::serve(&fx.timeline, &fx.blocks, r);
            out.push((
                "sync_receiver",
                cbor4ii::serde::to_vec(Vec::new(), &resp).expect("encodes"),
            ));
        }
        out
    })
}
