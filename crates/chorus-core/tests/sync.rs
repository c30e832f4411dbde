//! The anti-entropy decisions and the server, driven in memory: requests from a `Syncer` are
//! answered by `serve` on the other timeline and the answers fed back, until nothing is left to
//! do.

use std::{collections::BTreeMap, sync::Arc};

use chorus_core::{
    EventId, SignedEvent, Timeline,
    crypto::Keypair,
    event::kind,
    machine::CounterMachine,
    sync::{
        Action, BAN_MS, CATCH_UP_STALL_MS, MAX_INVALID_PER_PEER, MAX_PAGE_EVENTS, REQUEST_BURST,
        STREAM_RESUME_INTERVAL_MS, SyncRequest, SyncResponse, Syncer, WANT_TIMEOUT_MS, serve,
    },
    testkit,
    timeline::{Inserted, NoBlocks},
};

fn keys(n: u8) -> Vec<Keypair> {
    (1..=n).map(|i| Keypair::from_seed([i; 32])).collect()
}

/// Every block ever seen, shared by the test's timelines (a stand-in for their stores).
type Blocks = BTreeMap<EventId, Arc<[u8]>>;

fn timeline(genesis: &SignedEvent, events: &[SignedEvent]) -> Timeline<CounterMachine> {
    let mut t = Timeline::new(genesis.clone(), CounterMachine).unwrap();
    let store = blocks_of(events);
    for r in t.insert_batch(events.iter().cloned(), &store).unwrap() {
        r.unwrap();
    }
    t
}

fn blocks_of(events: &[SignedEvent]) -> Blocks {
    events.iter().map(|e| (e.id(), e.bytes_arc())).collect()
}

/// Runs `syncer` (on `local`) against `remote` until no action is left; returns the number of
/// requests sent and the largest pending set seen locally.
fn drive(
    syncer: &mut Syncer<u8>,
    first: Vec<Action<u8>>,
    local: &mut Timeline<CounterMachine>,
    remote: &Timeline<CounterMachine>,
    store: &Blocks,
    now: u64,
) -> (usize, usize) {
    let mut queue = first;
    let mut sent = 0;
    let mut max_pending = 0;
    while let Some(a) = queue.pop() {
        let Action::Send(p, req) = a else {
            panic!("unexpected action {a:?}")
        };
        sent += 1;
        assert!(sent < 10_000, "sync does not terminate");
        match serve(remote, store, &req) {
            SyncResponse::Summary(s) => queue.extend(syncer.on_summary(&p, &s, local, now)),
            SyncResponse::Blocks(b) => {
                let evs: Vec<SignedEvent> = b
                    .blocks
                    .iter()
                    .map(|x| SignedEvent::decode(x).unwrap())
                    .collect();
                let mut new = 0;
                for r in local.insert_batch(evs, store).unwrap() {
                    if let Ok(Inserted::Indexed { released }) = r {
                        new += 1 + released.len() as u64;
                    }
                }
                max_pending = max_pending.max(local.pending_len());
                if let SyncRequest::Since { after, .. } = req {
                    queue.extend(syncer.on_page(
                        &p,
                        after,
                        b.next,
                        b.blocks.len(),
                        new,
                        local,
                        now,
                    ));
                } else {
                    syncer.on_blocks(&p);
                }
            }
            SyncResponse::Refused { reason } => panic!("refused: {reason}"),
            SyncResponse::Stored { .. } => panic!("Stored answers only a Submit"),
        }
    }
    (sent, max_pending)
}

#[test]
fn empty_node_catches_up_in_causal_pages_without_pending() {
    let ks = keys(4);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 64);
    let hist = testkit::history(&g, "counter/1", &ks, 3 * MAX_PAGE_EVENTS + 17, 7, |_, _| {
        (kind::STIMULUS, testkit::text("x"))
    });
    let full = timeline(&g, &hist);
    let mut empty = timeline(&g, &[]);
    let mut s = Syncer::default();
    let first = s.peer_up(1u8, 0);
    let (sent, max_pending) = drive(&mut s, first, &mut empty, &full, &blocks_of(&hist), 0);
    assert_eq!(empty.len(), full.len());
    assert_eq!(empty.state_hash(), full.state_hash());
    assert_eq!(empty.heads(), full.heads());
    assert_eq!(max_pending, 0, "pages arrive in causal order");
    // summary, 4 pages, final summary
    assert_eq!(sent, 6, "paged, not one fetch per event");
    assert_eq!(s.stats().pages_received, 4);
    assert!(!s.catching_up());
}

#[test]
fn since_leaves_out_what_the_requester_has() {
    let ks = keys(2);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 64);
    let hist = testkit::history(&g, "counter/1", &ks, 400, 3, |_, _| {
        (kind::STIMULUS, testkit::text("y"))
    });
    let full = timeline(&g, &hist);
    let half = timeline(&g, &hist[..200]);
    let have = half.version_vector().into_iter().collect();
    let store = blocks_of(&hist);
    let SyncResponse::Blocks(b) = serve(&full, &store, &SyncRequest::Since { have, after: None })
    else {
        panic!()
    };
    assert_eq!(b.blocks.len(), 200);
    assert_eq!(b.next, None);
    for x in &b.blocks {
        assert!(!half.contains(&SignedEvent::decode(x).unwrap().id()));
    }
}

#[test]
fn partitioned_nodes_converge_both_ways() {
    let ks = keys(3);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 16);
    let shared = testkit::history(&g, "counter/1", &ks, 300, 1, |_, _| {
        (kind::STIMULUS, testkit::text("s"))
    });
    let mut a = timeline(&g, &shared);
    let mut b = timeline(&g, &shared);
    // each side writes on its own during a partition
    let mut written = shared.clone();
    for i in 0..150 {
        let ea = a.prepare(
            ks[1].author(),
            kind::STIMULUS,
            testkit::text(&format!("a{i}")),
        );
        let ea = ea.sign(&ks[1]);
        a.insert(ea.clone(), &NoBlocks).unwrap();
        written.push(ea);
        if i < 140 {
            let eb = b.prepare(
                ks[2].author(),
                kind::STIMULUS,
                testkit::text(&format!("b{i}")),
            );
            let eb = eb.sign(&ks[2]);
            b.insert(eb.clone(), &NoBlocks).unwrap();
            written.push(eb);
        }
    }
    let store = blocks_of(&written);
    assert_ne!(a.state_hash(), b.state_hash());
    let mut sa = Syncer::default();
    let first = sa.peer_up(2u8, 0);
    drive(&mut sa, first, &mut a, &b, &store, 0);
    let mut sb = Syncer::default();
    let first = sb.peer_up(1u8, 0);
    drive(&mut sb, first, &mut b, &a, &store, 0);
    assert_eq!(a.len(), 300 + 150 + 140 + 1);
    assert_eq!(a.state_hash(), b.state_hash());
    assert_eq!(a.heads(), b.heads());
}

#[test]
fn other_timeline_is_disconnected() {
    let ks = keys(1);
    let g1 = testkit::genesis(&ks[0], &ks, "counter/1", 16);
    let g2 = testkit::genesis(&ks[0], &ks, "counter/1", 17);
    let a = timeline(&g1, &[]);
    let b = timeline(&g2, &[]);
    let mut s = Syncer::default();
    s.peer_up(9u8, 0);
    let SyncResponse::Summary(sum) = serve(&b, &NoBlocks, &SyncRequest::Summary) else {
        panic!()
    };
    assert_eq!(s.on_summary(&9, &sum, &a, 0), vec![Action::Disconnect(9)]);
}

#[test]
fn missing_parents_are_asked_of_the_announcer_once_per_timeout() {
    let mut s: Syncer<u8> = Syncer::default();
    s.peer_up(1, 0);
    s.request_failed(&1, &SyncRequest::Summary);
    let id = chorus_core::EventId([7; 32]);
    let a = s.on_missing(&1, vec![id], 10);
    assert_eq!(
        a,
        vec![Action::Send(1, SyncRequest::Want { ids: vec![id] })]
    );
    s.on_blocks(&1);
    assert!(s.on_missing(&1, vec![id], 20).is_empty(), "asked already");
    assert_eq!(s.on_missing(&1, vec![id], 20 + WANT_TIMEOUT_MS).len(), 1);
}

#[test]
fn invalid_blocks_ban_the_peer_then_the_ban_expires() {
    let ks = keys(1);
    let blank = timeline(&testkit::genesis(&ks[0], &ks, "counter/1", 64), &[]);
    let mut s: Syncer<u8> = Syncer::default();
    s.peer_up(3, 0);
    for _ in 1..MAX_INVALID_PER_PEER {
        assert!(s.on_invalid(&3, 1, 5).is_empty());
    }
    assert_eq!(
        s.on_invalid(&3, 1, 5),
        vec![Action::Ban {
            peer: 3,
            until: 5 + BAN_MS
        }]
    );
    assert!(s.is_banned(&3));
    assert!(!s.admit_request(&3, 6, false));
    assert_eq!(s.peer_up(3, 7), vec![Action::Disconnect(3)]);
    assert!(s.tick(5 + BAN_MS, &blank).contains(&Action::Unban(3)));
    assert!(!s.is_banned(&3));
}

/// Peer ids are free: strangers (connected or not) share one bucket beside their own, and a
/// member's requests never draw from it. An untracked peer leaves no state behind.
#[test]
fn strangers_share_one_budget_and_members_keep_theirs() {
    use chorus_core::sync::STRANGER_REQUEST_BURST;
    let mut s: Syncer<u32> = Syncer::default();
    s.peer_up(1, 0);
    // A thousand made-up ids, a request each, untracked: the shared burst and no more.
    let admitted = (1_000..2_000u32)
        .filter(|p| s.admit_request(p, 0, true))
        .count() as u64;
    assert_eq!(admitted, STRANGER_REQUEST_BURST);
    assert_eq!(s.peers().count(), 1, "made-up ids left state behind");
    // A connected stranger has its own bucket, but the shared one is empty.
    s.peer_up(2, 0);
    assert!(!s.admit_request(&2, 0, true));
    // A member is served from its own bucket alone.
    assert!(s.admit_request(&1, 0, false));
    assert_eq!(
        s.stats().stranger_requests_refused,
        1_000 - STRANGER_REQUEST_BURST + 1
    );
    // A second later the shared bucket has refilled at its rate.
    assert!(s.admit_request(&2, 1_000, true));
}

#[test]
fn request_flood_is_rate_limited_and_refills() {
    let mut s: Syncer<u8> = Syncer::default();
    s.peer_up(4, 0);
    let admitted = (0..2 * REQUEST_BURST)
        .filter(|_| s.admit_request(&4, 0, false))
        .count() as u64;
    assert_eq!(admitted, REQUEST_BURST);
    assert!(!s.admit_request(&4, 1, false));
    assert!(s.admit_request(&4, 1_000, false));
    assert_eq!(s.stats().requests_refused, REQUEST_BURST + 1);
}

#[test]
fn oversized_wants_are_refused_by_the_server() {
    let ks = keys(1);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 16);
    let t = timeline(&g, &[]);
    let ids = vec![chorus_core::EventId([1; 32]); 10_000];
    assert!(matches!(
        serve(&t, &NoBlocks, &SyncRequest::Want { ids }),
        SyncResponse::Refused { .. }
    ));
}

#[test]
fn nothing_is_fetched_from_a_light_node_and_submits_are_bounded() {
    let ks = keys(2);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 16);
    let hist = testkit::history(&g, "counter/1", &ks, 50, 3, |_, _| {
        (kind::STIMULUS, testkit::text("x"))
    });
    let ahead = timeline(&g, &hist);
    let empty = timeline(&g, &[]);
    let mut summary = chorus_core::sync::summarize(&ahead);
    let mut s = Syncer::default();
    let _ = s.peer_up(1u8, 0);
    // The same summary from a full node starts a catch-up; from a light node, nothing.
    summary.light = true;
    assert!(s.on_summary(&1, &summary, &empty, 0).is_empty());
    assert!(!s.catching_up());
    summary.light = false;
    let a = s.on_summary(&1, &summary, &empty, 0);
    assert!(matches!(
        a.as_slice(),
        [Action::Send(1, SyncRequest::Since { .. })]
    ));

    // A Submit is refused by the read-only server (the node answers it after its commit) and
    // refused outright beyond its bound.
    let blocks = vec![serde_bytes::ByteBuf::from(hist[0].bytes().to_vec())];
    assert!(matches!(
        serve(&ahead, &NoBlocks, &SyncRequest::Submit { blocks }),
        SyncResponse::Refused { .. }
    ));
    let many = SyncRequest::Submit {
        blocks: vec![serde_bytes::ByteBuf::new(); chorus_core::sync::MAX_SUBMIT_BLOCKS + 1],
    };
    assert!(many.check().is_err());
}

#[test]
fn a_wiped_writer_may_write_only_once_its_full_peers_confirm_its_own_chain() {
    let ks = keys(3);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 64);
    let hist = testkit::history(&g, "counter/1", &ks, 200, 3, |_, _| {
        (kind::STIMULUS, testkit::text("x"))
    });
    let me = ks[1].author();
    let full = timeline(&g, &hist);
    let theirs = full.version_vector()[&me];
    assert!(theirs > 0);
    let blank = timeline(&g, &[]);
    let mut wiped = timeline(&g, &[]);
    let mut s: Syncer<u8> = Syncer::default();
    s.watch_own_chain(me);
    assert_eq!(s.own_chain_confirmed(&wiped), None, "no peer heard yet");
    // Two peers: one wiped as well (it knows nothing of us), one that holds our chain.
    s.peer_up(1, 0);
    s.peer_up(2, 0);
    let empty_summary = summary_of(&blank);
    let _ = s.on_summary(&1, &empty_summary, &wiped, 0);
    assert_eq!(
        s.own_chain_confirmed(&wiped),
        None,
        "one blank peer of two is no majority"
    );
    let full_summary = summary_of(&full);
    let _ = s.on_summary(&2, &full_summary, &wiped, 0);
    assert_eq!(
        s.own_chain_confirmed(&wiped),
        None,
        "peer 2 knows more of our chain"
    );
    let store = blocks_of(&hist);
    for r in wiped.insert_batch(hist.iter().cloned(), &store).unwrap() {
        r.unwrap();
    }
    assert_eq!(s.own_chain_confirmed(&wiped), Some(theirs));
    // A majority is enough: a third peer that has not answered yet (a slow link) holds
    // nothing up; with two of four answered it would.
    s.peer_up(4, 0);
    assert_eq!(s.own_chain_confirmed(&wiped), Some(theirs));
    s.peer_up(5, 0);
    assert_eq!(s.own_chain_confirmed(&wiped), None);
    // A light peer's summary does not count either way.
    let mut light = empty_summary.clone();
    light.light = true;
    let mut t: Syncer<u8> = Syncer::default();
    t.watch_own_chain(me);
    t.peer_up(3, 0);
    let _ = t.on_summary(&3, &light, &blank, 0);
    assert_eq!(t.own_chain_confirmed(&blank), None);
}

#[test]
fn a_writer_asks_again_for_a_summary_that_was_lost() {
    use chorus_core::sync::OWN_CHAIN_RETRY_MS;
    let summaries_to = |out: &[Action<u8>], to: u8| {
        out.iter()
            .filter(|a| matches!(a, Action::Send(p, SyncRequest::Summary) if *p == to))
            .count()
    };
    let ks = keys(2);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 64);
    let blank = timeline(&g, &[]);
    let summary = summary_of(&blank);
    let mut s: Syncer<u8> = Syncer::default();
    s.watch_own_chain(ks[1].author());
    assert_eq!(summaries_to(&s.peer_up(1, 0), 1), 1);
    assert_eq!(summaries_to(&s.peer_up(2, 0), 2), 1);
    // Peer 2 answers; peer 1's answer is lost (no failure is reported before the request
    // timeout). Before the retry interval nothing is re-sent to peer 1 (the round robin
    // skips a peer with a request in flight).
    let _ = s.on_summary(&2, &summary, &blank, 0);
    let early = s.tick(OWN_CHAIN_RETRY_MS - 1, &blank);
    assert_eq!(summaries_to(&early, 1), 0, "{early:?}");
    let retry = s.tick(OWN_CHAIN_RETRY_MS, &blank);
    assert_eq!(summaries_to(&retry, 1), 1, "the silent peer is asked again");
    assert_eq!(summaries_to(&retry, 2), 0, "the peer that answered is not");
    let _ = s.on_summary(&1, &summary, &blank, OWN_CHAIN_RETRY_MS + 10);
    assert_eq!(s.own_chain_confirmed(&blank), Some(0));
    // Once every peer has answered, no more retries.
    let later = s.tick(10 * OWN_CHAIN_RETRY_MS, &blank);
    assert!(
        summaries_to(&later, 1) + summaries_to(&later, 2) <= 1,
        "{later:?}"
    );
    // A replica that does not write never retries.
    let mut r: Syncer<u8> = Syncer::default();
    let _ = r.peer_up(1, 0);
    let quiet = r.tick(OWN_CHAIN_RETRY_MS, &blank);
    assert!(summaries_to(&quiet, 1) <= 1);
}

/// Found by `chorus sim sweep` (lossy-wipe seed 20261216): a wiped node on a network that loses
/// one message in five waited for a summary round after each stalled stream, and its lost
/// summaries held the peers' request slots for the whole request timeout, so it caught up
/// only after the scenario's bound. A stream that ends before its last page now resumes at the
/// next tick with the next peer known to be ahead.
#[test]
fn a_stalled_catch_up_resumes_at_once_with_the_next_peer_ahead() {
    let ks = keys(3);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 64);
    let hist = testkit::history(&g, "counter/1", &ks, 50, 3, |_, _| {
        (kind::STIMULUS, testkit::text("x"))
    });
    let full = timeline(&g, &hist);
    let wiped = timeline(&g, &[]);
    let summary = summary_of(&full);
    let since_to = |actions: &[Action<u8>]| -> Vec<u8> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(p, SyncRequest::Since { after: None, .. }) => Some(*p),
                _ => None,
            })
            .collect()
    };
    let mut s: Syncer<u8> = Syncer::default();
    for p in [1, 2, 3] {
        s.peer_up(p, 0);
    }
    // Peers 1 and 2 are ahead; peer 3 is as blank as we are.
    let first = s.on_summary(&1, &summary, &wiped, 0);
    assert_eq!(since_to(&first), vec![1]);
    assert!(
        s.on_summary(&2, &summary, &wiped, 10).is_empty(),
        "one stream"
    );
    let blank = summary_of(&wiped);
    let _ = s.on_summary(&3, &blank, &wiped, 20);
    // The first page is lost: the stream stalls, and the same tick asks peer 2.
    let quiet = s.tick(CATCH_UP_STALL_MS - 1, &wiped);
    assert!(since_to(&quiet).is_empty(), "{quiet:?}");
    let resumed = s.tick(CATCH_UP_STALL_MS, &wiped);
    assert_eq!(since_to(&resumed), vec![2], "{resumed:?}");
    assert!(s.catching_up());
    // Peer 2's request fails too: the next tick goes back to peer 1, never to blank peer 3.
    s.request_failed(
        &2,
        &SyncRequest::Since {
            have: vec![],
            after: None,
        },
    );
    assert!(!s.catching_up());
    // At most one resumption per interval: a peer that fails at once is not asked at every
    // tick.
    let soon = s.tick(CATCH_UP_STALL_MS + 200, &wiped);
    assert!(since_to(&soon).is_empty(), "{soon:?}");
    let again = s.tick(CATCH_UP_STALL_MS + STREAM_RESUME_INTERVAL_MS, &wiped);
    assert_eq!(since_to(&again), vec![1], "{again:?}");
}

fn summary_of(tl: &Timeline<CounterMachine>) -> chorus_core::sync::Summary {
    match serve(tl, &NoBlocks, &SyncRequest::Summary) {
        SyncResponse::Summary(x) => x,
        other => panic!("{other:?}"),
    }
}

/// Issue 15, "catch-up stream hijack": a peer whose summary claims to be ahead of everyone
/// and that answers the catch-up with empty pages that never end kept the one stream for good
/// (each page counted as activity), and with it every other way to catch up. A stream that
/// pages nowhere is now cut after a few pages, and the next peer ahead catches us up.
#[test]
fn a_peer_that_pages_nowhere_loses_the_stream_and_an_honest_one_catches_us_up() {
    use chorus_core::sync::MAX_USELESS_PAGES;
    let ks = keys(3);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 64);
    let hist = testkit::history(&g, "counter/1", &ks, 300, 3, |_, _| {
        (kind::STIMULUS, testkit::text("x"))
    });
    let full = timeline(&g, &hist);
    let store = blocks_of(&hist);
    let mut wiped = timeline(&g, &[]);
    // The liar claims far more of every author than exists.
    let mut lie = summary_of(&full);
    for (_, sq) in &mut lie.version_vector {
        *sq += 1_000;
    }
    let mut s: Syncer<u8> = Syncer::default();
    s.peer_up(1, 0);
    s.peer_up(2, 0);
    let first = s.on_summary(&1, &lie, &wiped, 0);
    assert!(
        matches!(&first[..], [Action::Send(1, SyncRequest::Since { .. })]),
        "{first:?}"
    );
    let _ = s.on_summary(&2, &summary_of(&full), &wiped, 0);
    // Empty pages with a cursor that never moves past the start.
    let fake = Some((0, g.id()));
    let mut pages = 0;
    let mut asked = None;
    while s.catching_up() {
        pages += 1;
        assert!(pages <= MAX_USELESS_PAGES + 1, "the liar keeps the stream");
        let _ = s.on_page(&1, asked, fake, 0, 0, &wiped, 10 + pages as u64);
        asked = fake;
    }
    assert_eq!(s.stats().streams_cut, 1);
    // The next tick resumes with the honest peer, which catches us up completely.
    let resumed = s.tick(STREAM_RESUME_INTERVAL_MS, &wiped);
    assert!(
        resumed
            .iter()
            .any(|a| matches!(a, Action::Send(2, SyncRequest::Since { .. }))),
        "{resumed:?}"
    );
    let only_since: Vec<Action<u8>> = resumed
        .into_iter()
        .filter(|a| matches!(a, Action::Send(2, SyncRequest::Since { .. })))
        .collect();
    drive(
        &mut s,
        only_since,
        &mut wiped,
        &full,
        &store,
        STREAM_RESUME_INTERVAL_MS,
    );
    assert_eq!(wiped.heads(), full.heads());
    assert_eq!(wiped.state_hash(), full.state_hash());
}

/// A timeline of three writers, the replica of writer 1 (`me`) that holds all of it (`wiped`:
/// it came back empty and caught up), and a summary that claims 1 000 more of `me`'s chain
/// than exists (`lie`).
struct OwnChainLie {
    g: SignedEvent,
    hist: Vec<SignedEvent>,
    me: chorus_core::AuthorId,
    full: Timeline<CounterMachine>,
    mine: u64,
    wiped: Timeline<CounterMachine>,
    lie: chorus_core::sync::Summary,
}

/// A replica that holds half the timeline, and of `me`'s chain less than all (`known`).
fn own_chain_lie_behind(
    g: &SignedEvent,
    hist: &[SignedEvent],
    me: chorus_core::AuthorId,
    mine: u64,
) -> (Timeline<CounterMachine>, u64) {
    let partial: Vec<SignedEvent> = hist
        .iter()
        .filter(|e| e.author != me || e.seq < mine)
        .cloned()
        .collect();
    let behind = timeline(g, &partial[..partial.len() / 2]);
    let known = behind.version_vector().get(&me).copied().unwrap_or(0);
    (behind, known)
}

fn own_chain_lie() -> OwnChainLie {
    let ks = keys(3);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 64);
    let hist = testkit::history(&g, "counter/1", &ks, 90, 3, |_, _| {
        (kind::STIMULUS, testkit::text("x"))
    });
    let me = ks[1].author();
    let full = timeline(&g, &hist);
    let mine = full.version_vector()[&me];
    let store = blocks_of(&hist);
    let mut wiped = timeline(&g, &[]);
    for r in wiped.insert_batch(hist.iter().cloned(), &store).unwrap() {
        r.unwrap();
    }
    let mut lie = summary_of(&full);
    for (a, sq) in &mut lie.version_vector {
        if *a == me {
            *sq += 1_000;
        }
    }
    OwnChainLie {
        g,
        hist,
        me,
        full,
        mine,
        wiped,
        lie,
    }
}

/// Issue 15, "a single lying peer keeps a wiped node's writes closed": its summary claims more
/// of our own chain than exists. The claim is now checked (a `Range` of our chain); a peer
/// that cannot back it in a few answers is capped at what we hold, and the gate opens on the
/// honest peers' word.
#[test]
fn a_peer_that_cannot_back_its_claim_of_our_chain_does_not_keep_our_writes_closed() {
    use chorus_core::sync::MAX_UNBACKED_OWN_CLAIMS;
    let OwnChainLie {
        g,
        hist,
        me,
        full,
        mine,
        wiped,
        lie,
    } = own_chain_lie();
    let mut s: Syncer<u8> = Syncer::default();
    s.watch_own_chain(me);
    s.peer_up(1, 0);
    s.peer_up(2, 0);
    let _ = s.on_summary(&2, &summary_of(&full), &wiped, 0);
    let mut out = s.on_summary(&1, &lie, &wiped, 0);
    assert_eq!(
        s.own_chain_confirmed(&wiped),
        None,
        "the claim holds until checked"
    );
    // Each check asks the liar for our chain after what we hold; it answers with nothing.
    let mut checks = 0;
    while let Some(pos) = out.iter().position(|a| {
        matches!(a, Action::Send(1, SyncRequest::Range { author, from_sq, .. })
            if *author == me && *from_sq == mine + 1)
    }) {
        out.remove(pos);
        checks += 1;
        assert!(checks <= MAX_UNBACKED_OWN_CLAIMS, "checked forever");
        s.on_blocks(&1);
        out.extend(s.on_own_check(&1, Some(&[])));
    }
    assert_eq!(checks, MAX_UNBACKED_OWN_CLAIMS);
    assert_eq!(s.stats().own_claims_capped, 1);
    assert_eq!(s.own_chain_confirmed(&wiped), Some(mine));
    // Its next summary claims the same: it counts for what we hold.
    let _ = s.on_summary(&1, &lie, &wiped, 100);
    assert_eq!(s.own_chain_confirmed(&wiped), Some(mine));

    // An honest peer that holds more of our chain than we do sends genuine events of it: the
    // claim is backed for good, even if this node could not take them in (its pending bounds),
    // and the gate waits until we hold them.
    let (behind, known) = own_chain_lie_behind(&g, &hist, me, mine);
    assert!(known < mine);
    let mut t: Syncer<u8> = Syncer::default();
    t.watch_own_chain(me);
    t.peer_up(1, 0);
    let mut out = t.on_summary(&1, &summary_of(&full), &behind, 0);
    for _ in 0..2 * MAX_UNBACKED_OWN_CLAIMS {
        let Some(pos) = out
            .iter()
            .position(|a| matches!(a, Action::Send(1, SyncRequest::Range { .. })))
        else {
            break;
        };
        out.remove(pos);
        t.on_blocks(&1);
        out.extend(t.on_own_check(&1, Some(&[(me, known + 1)])));
        let _ = t.on_summary(&1, &summary_of(&full), &behind, 0);
    }
    assert_eq!(t.stats().own_claims_capped, 0);
    assert_eq!(
        t.own_chain_confirmed(&behind),
        None,
        "we lack our own events"
    );
}

/// A peer that claims more of our chain and then never answers the checks: each check counts
/// as failed once it has been out for `OWN_CHECK_STALL_MS` (not the two-minute request
/// timeout), so the claim is capped within a minute; an answer that then comes late and backs
/// the claim still counts.
#[test]
fn a_peer_that_never_answers_the_check_of_our_chain_is_capped_within_a_minute() {
    use chorus_core::sync::{MAX_UNBACKED_OWN_CLAIMS, OWN_CHECK_STALL_MS, REQUEST_TIMEOUT_MS};
    let OwnChainLie {
        g,
        hist,
        me,
        full,
        mine,
        wiped,
        lie,
    } = own_chain_lie();
    let mut s: Syncer<u8> = Syncer::default();
    s.watch_own_chain(me);
    s.peer_up(1, 0);
    s.peer_up(2, 0);
    let _ = s.on_summary(&2, &summary_of(&full), &wiped, 0);
    let out = s.on_summary(&1, &lie, &wiped, 0);
    let checks_in = |out: &[Action<u8>]| {
        out.iter()
            .filter(|a| matches!(a, Action::Send(1, SyncRequest::Range { author, .. }) if *author == me))
            .count()
    };
    let mut sent = checks_in(&out);
    assert_eq!(sent, 1);
    // Nothing ever comes back; the node ticks every second.
    let mut now = 0;
    while s.own_chain_confirmed(&wiped).is_none() {
        now += 1_000;
        assert!(now < REQUEST_TIMEOUT_MS, "still closed after {now} ms");
        sent += checks_in(&s.tick(now, &wiped));
    }
    assert!(
        now <= (u64::from(MAX_UNBACKED_OWN_CLAIMS) + 1) * OWN_CHECK_STALL_MS,
        "{now} ms"
    );
    assert_eq!(
        sent, MAX_UNBACKED_OWN_CLAIMS as usize,
        "one check per failure, no more"
    );
    assert_eq!(
        s.stats().own_checks_stalled,
        u64::from(MAX_UNBACKED_OWN_CLAIMS)
    );
    assert_eq!(s.stats().own_claims_capped, 1);
    assert_eq!(s.own_chain_confirmed(&wiped), Some(mine));

    // A slow honest peer: its answer to the first check comes after two stalls, with genuine
    // events of our chain beyond what we hold; the claim is backed, never capped.
    let (behind, known) = own_chain_lie_behind(&g, &hist, me, mine);
    let mut t: Syncer<u8> = Syncer::default();
    t.watch_own_chain(me);
    t.peer_up(1, 0);
    let _ = t.on_summary(&1, &summary_of(&full), &behind, 0);
    let mut now = 0;
    while t.stats().own_checks_stalled < 2 {
        now += 1_000;
        assert!(now < REQUEST_TIMEOUT_MS);
        let _ = t.tick(now, &behind);
    }
    t.on_blocks(&1);
    let _ = t.on_own_check(&1, Some(&[(me, known + 1)]));
    for _ in 0..200 {
        now += 1_000;
        let _ = t.tick(now, &behind);
    }
    assert_eq!(t.stats().own_claims_capped, 0);
    assert_eq!(
        t.own_chain_confirmed(&behind),
        None,
        "we lack our own events"
    );

    // A peer whose summaries take 45 s to come back gets 90 s a check, not 20 s; and an answer
    // that comes after its claim was capped still backs it (the cap is lifted).
    let mut u: Syncer<u8> = Syncer::default();
    u.watch_own_chain(me);
    u.peer_up(1, 0);
    let _ = u.on_summary(&1, &summary_of(&full), &behind, 45_000);
    let mut now = 45_000;
    while u.stats().own_checks_stalled == 0 {
        now += 1_000;
        assert!(now < 45_000 + REQUEST_TIMEOUT_MS, "never stalled");
        let _ = u.tick(now, &behind);
    }
    assert!(now >= 45_000 + 90_000, "stalled after {} ms", now - 45_000);
    while u.stats().own_claims_capped == 0 {
        now += 1_000;
        assert!(now < 10 * REQUEST_TIMEOUT_MS, "never capped");
        let _ = u.tick(now, &behind);
    }
    assert!(
        u.own_chain_confirmed(&behind).is_some(),
        "capped: the gate would open"
    );
    u.on_blocks(&1);
    let _ = u.on_own_check(&1, Some(&[(me, known + 1)]));
    assert_eq!(
        u.own_chain_confirmed(&behind),
        None,
        "the late answer lifted the cap"
    );
}

/// `Range` is answered through the author's chain (no scan of the order): every span gives
/// exactly the author's events with sq in it, ascending, as a brute-force filter finds them.
#[test]
fn range_answers_exactly_the_authors_span() {
    let ks = keys(3);
    let g = testkit::genesis(&ks[0], &ks, "counter/1", 64);
    let hist = testkit::history(&g, "counter/1", &ks, 300, 5, |_, _| {
        (kind::STIMULUS, testkit::text("r"))
    });
    let tl = timeline(&g, &hist);
    let store = blocks_of(&hist);
    for k in &ks {
        let author = k.author();
        for (from_sq, to_sq) in [
            (0, 3),
            (1, 1),
            (5, 40),
            (90, 1_000),
            (2_000, 3_000),
            (1, u64::MAX),
        ] {
            let SyncResponse::Blocks(b) = serve(
                &tl,
                &store,
                &SyncRequest::Range {
                    author,
                    from_sq,
                    to_sq,
                },
            ) else {
                panic!("Range was refused")
            };
            let got: Vec<u64> = b
                .blocks
                .iter()
                .map(|x| SignedEvent::decode(x).unwrap())
                .inspect(|e| assert_eq!(e.author, author))
                .map(|e| e.seq)
                .collect();
            // The genesis is the admin's first event.
            let mut want: Vec<u64> = std::iter::once(&g)
                .chain(&hist)
                .filter(|e| e.author == author && (from_sq..=to_sq).contains(&e.seq))
                .map(|e| e.seq)
                .collect();
            want.sort();
            // A page holds far more than an author's ~100 small events here: all of them.
            assert_eq!(got, want, "{author} {from_sq}..={to_sq}");
        }
    }
}
