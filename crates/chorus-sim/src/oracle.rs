//! The oracle: what must hold at the end of every run.
//!
//! * **C1 convergence** — every live honest replica holds the same heads, order and
//!   `state_hash`, within the scenario's bound after the last write and fault (and, after a
//!   posterity crash, the survivor's hash from before it).
//! * **C2 no acknowledged event lost** (Jepsen's set checker): *lost* = acknowledged but
//!   absent (except a write whose only copy was on a disk that was then wiped, reported
//!   apart as *lost to wipe*: wiping defeats durability); *unexpected* = present but never acknowledged by an honest writer (and not an
//!   adversary's); *duplicated* = an id twice in the order, or two events of an honest author
//!   at one sequence number. All three must be 0.
//! * **C3 causal order** — in every replica's order each event comes after all its parents.
//! * **C4 adversaries** — every adversarial input is accounted for (sent = Σ outcomes), none
//!   that is invalid was accepted, no forged block is in any replica, every equivocation is
//!   known to every replica, floods were refused.
//! * **C5 reference model** — the state equals a fold, by a separate and simple
//!   implementation, of the acknowledged events (plus the adversaries' valid ones): sort by
//!   `(lc, id)`, drop every event of an equivocating author from its fork on, apply in turn.
//! * **C6 replay** (checked by the runner) — the same seed gives the same trace and hash.
//! * **C7** (scenarios with light nodes) — a light node acknowledged a write only once a full
//!   node held it.
//! * **C8** (scenarios with heartbeats, every node live at the end) — every acknowledged write
//!   is behind the settled frontier of every live honest full node. *Unexpected* in C2 does
//!   not count heartbeats: the nodes write them on their own. Under `final/1` the frontier is
//!   the final prefix, and C8 is finality liveness: with a quorum live and connected, every
//!   acknowledged write is final everywhere within the scenario's bound after the last fault.
//! * **C9 finality safety** (`final/1` scenarios) — no replica ever holds at a final
//!   position another event than any other replica held final there, and no replica's final
//!   prefix shrinks, across the whole run (restarts included); at the end every live
//!   replica's final prefix is a prefix of the longest; and every finality certificate an
//!   honest node held during the run names the state an honest replica computes there.
//! * **C10 writes reopen** (scenarios that wipe or crash nodes, or have light or adversarial
//!   ones) — every live honest writer up for [`WRITES_REOPEN_WITHIN_MS`] at the end can write:
//!   a node that came back empty (or a light node) opened its write gate once its peers
//!   confirmed its own chain, whatever an adversary claimed about that chain.
//! * **C11 guarded machine** — what `kairos/3` promises against a hostile writer, read from
//!   the folded state and the events: every election won by an emissary it asked, no author
//!   with more than four registrations, the engine fed at most 256 tokens of each event.

use std::collections::{BTreeMap, BTreeSet};

use chorus_core::{
    AuthorId, EventId, Machine, SignedEvent,
    genesis::Genesis,
    machine::Applied,
    sync::{STRANGER_REQUEST_BURST, STRANGER_REQUESTS_PER_SEC},
};
use sha2::{Digest, Sha256};

use crate::{
    node::{Outcome, Sabotage, SimMachine, SimNode},
    scenario::Attack,
    world::{SYBIL_REQUESTS, World},
};

/// One check's verdict.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub check: &'static str,
    pub failure: Option<String>,
}

/// What the oracle measured.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    pub verdicts: Vec<Verdict>,
    pub lost: u64,
    /// Acknowledged writes gone because the only disk holding them was wiped before any peer
    /// had them: a wipe defeats durability, so these are reported, not failed.
    pub lost_to_wipe: u64,
    pub unexpected: u64,
    pub duplicated: u64,
    /// Heartbeats in the order (written by the nodes themselves, never acknowledged writes).
    pub heartbeats: u64,
    pub rejected: u64,
    pub state_hash: Option<[u8; 32]>,
    pub events_in_order: u64,
    /// `final/1`: live honest nodes holding a finality certificate, and the most positions
    /// one covers.
    pub certified_nodes: u64,
    pub certified_positions: u64,
    /// Blocks the live light nodes forgot behind their horizons.
    pub light_pruned_blocks: u64,
}

/// C10: how long a node that came back (empty, or light) may take to open its writes. The
/// slowest honest case in the suite is a 45 s RTT node behind loss (`disparity`).
pub const WRITES_REOPEN_WITHIN_MS: u64 = 60_000;

fn verdict(check: &'static str, failures: Vec<String>) -> Verdict {
    Verdict {
        check,
        failure: (!failures.is_empty()).then(|| {
            let mut f = failures;
            let more = f.len().saturating_sub(3);
            f.truncate(3);
            if more > 0 {
                f.push(format!("… and {more} more"));
            }
            f.join("; ")
        }),
    }
}

/// The state hash a node reports (a sabotaged node folds its own, wrong way).
fn reported_hash(w: &World, n: &SimNode) -> [u8; 32] {
    if w.sabotage == Sabotage::ArrivalOrder && n.ix == 0 {
        let evs: Vec<SignedEvent> = n
            .arrivals
            .iter()
            .filter_map(|id| n.tl().load(id, n.store()).ok())
            .collect();
        return fold(&w.genesis, &evs, crate::node::sim_machine(w.sabotage));
    }
    n.tl().state_hash()
}

/// Folds `evs` in the given order from the genesis state.
fn fold(genesis: &SignedEvent, evs: &[SignedEvent], m: SimMachine) -> [u8; 32] {
    let g = Genesis::from_event(genesis).expect("the sim's genesis");
    let mut state = m.init(&g);
    for e in evs {
        m.apply(
            &mut state,
            &Applied {
                id: e.id(),
                author: e.author,
                seq: e.seq,
                lamport: e.lamport,
                kind: &e.kind,
                body: &e.body,
            },
        );
    }
    m.state_hash(&state)
}

/// C11, what `kairos/3` guarantees against a hostile writer, read from the folded state and
/// the events themselves: every election's winner is an intent of an emissary the election
/// asked; no author holds more registrations than [`MAX_EMISSARIES_PER_AUTHOR`]; the engine
/// took exactly `min(tokens, MAX_TOKENS_PER_EVENT)` steps for each stimulus and intent folded.
fn guarded_machine(reference: &SimNode) -> Vec<String> {
    use chorus_core::event::{body_text, kind};
    use chorus_kairos::{
        body::Intent,
        guard::{MAX_EMISSARIES_PER_AUTHOR, MAX_TOKENS_PER_EVENT},
    };
    let (tl, store) = (reference.tl(), reference.store());
    let s = tl.state();
    // One line per rule (the verdict shows three).
    let mut c11 = vec![];
    let mut unasked = vec![];
    for r in &s.stimuli {
        let Some(win) = r.winner else { continue };
        match tl.load(&win, store) {
            Ok(e) => {
                let by = (
                    e.author,
                    Intent::view(&e.body).emissary.unwrap_or("").to_string(),
                );
                if !r.selected.contains(&by) {
                    unasked.push(format!("{} by {}/{}", r.id, by.0.fmt_short(), by.1));
                }
            }
            Err(e) => unasked.push(format!("winner {win} unreadable: {e}")),
        }
    }
    if let Some(first) = unasked.first() {
        c11.push(format!(
            "{} elections won by an emissary whom its election did not ask (first: {first})",
            unasked.len()
        ));
    }
    let mut per_author: BTreeMap<AuthorId, usize> = BTreeMap::new();
    for (a, _) in s.emissaries.keys() {
        *per_author.entry(*a).or_default() += 1;
    }
    if let Some((a, k)) = per_author.iter().max_by_key(|(_, k)| **k)
        && *k > MAX_EMISSARIES_PER_AUTHOR
    {
        c11.push(format!(
            "{} holds {k} emissary registrations (most {MAX_EMISSARIES_PER_AUTHOR})",
            a.fmt_short()
        ));
    }
    let mut steps = 0u64;
    for id in tl.order() {
        if tl.is_excluded(&id) {
            continue;
        }
        let Ok(e) = tl.load(&id, store) else { continue };
        let text = match e.kind.as_str() {
            kind::STIMULUS => body_text(&e.body),
            kind::INTENT => Intent::view(&e.body).text,
            _ => continue,
        };
        let tokens = text.unwrap_or("").split_whitespace().count();
        steps += tokens.min(MAX_TOKENS_PER_EVENT) as u64;
    }
    if s.engine.steps != steps {
        c11.push(format!(
            "the engine took {} steps; the events folded allow {steps}",
            s.engine.steps
        ));
    }
    c11
}

/// The reference model (C5): order by `(lc, id)`, exclude forks, fold.
pub fn reference_hash(genesis: &SignedEvent, events: &[SignedEvent], m: SimMachine) -> [u8; 32] {
    let mut by_seq: BTreeMap<(AuthorId, u64), BTreeSet<EventId>> = BTreeMap::new();
    for e in events {
        by_seq.entry((e.author, e.seq)).or_default().insert(e.id());
    }
    let mut fork_at: BTreeMap<AuthorId, u64> = BTreeMap::new();
    for ((a, sq), ids) in &by_seq {
        if ids.len() > 1 {
            let f = fork_at.entry(*a).or_insert(*sq);
            *f = (*f).min(*sq);
        }
    }
    let mut kept: Vec<SignedEvent> = events
        .iter()
        .filter(|e| fork_at.get(&e.author).is_none_or(|f| e.seq < *f))
        .cloned()
        .collect();
    kept.sort_by_key(|e| (e.lamport, e.id()));
    fold(genesis, &kept, m)
}

/// The reference model (C5) of a `final/1` timeline, written apart from the timeline's own
/// bookkeeping: the rule's model ([`chorus_core::finality::Finality`], a bitset past per
/// event) gives the final prefix over the events in `(lc, id)` order; a final event is
/// excluded once its author repeated a final `sq`; the rest follow by `(lc, id)`, an
/// equivocating author's events excluded from its fork on. The committee is the genesis's
/// members (the simulator makes no membership changes).
pub fn reference_hash_final(
    genesis: &SignedEvent,
    events: &[SignedEvent],
    m: SimMachine,
) -> [u8; 32] {
    use chorus_core::finality::{Finality, Node, quorum};
    let g = Genesis::from_event(genesis).expect("the sim's genesis");
    let mut committee: Vec<AuthorId> = g.writers.clone();
    committee.extend(g.anchors.iter().copied());
    committee.push(g.admin);
    committee.sort();
    committee.dedup();
    let mut all: Vec<SignedEvent> = events.to_vec();
    all.push(genesis.clone());
    all.sort_by_key(|e| (e.lamport, e.id()));
    all.dedup_by_key(|e| e.id());
    let pos: BTreeMap<EventId, usize> = all.iter().enumerate().map(|(i, e)| (e.id(), i)).collect();
    let nodes: Vec<Node> = all
        .iter()
        .enumerate()
        .map(|(i, e)| Node {
            author: committee
                .binary_search(&e.author)
                .expect("every author in the sim is a member"),
            lc: e.lamport,
            key: i as u64,
            parents: e.parents.iter().map(|p| pos[p]).collect(),
        })
        .collect();
    let n = committee.len();
    let final_order = Finality::new(&nodes, n, quorum(n)).final_order();
    let mut in_final = vec![false; all.len()];
    let mut kept: Vec<SignedEvent> = vec![];
    let mut high: BTreeMap<AuthorId, u64> = BTreeMap::new();
    let mut forked: BTreeSet<AuthorId> = BTreeSet::new();
    for &i in &final_order {
        in_final[i] = true;
        let e = &all[i];
        if high.get(&e.author).is_some_and(|&h| e.seq <= h) {
            forked.insert(e.author);
        } else {
            high.insert(e.author, e.seq);
        }
        if !forked.contains(&e.author) {
            kept.push(e.clone());
        }
    }
    let mut by_seq: BTreeMap<(AuthorId, u64), usize> = BTreeMap::new();
    for e in &all {
        *by_seq.entry((e.author, e.seq)).or_default() += 1;
    }
    let mut fork_at: BTreeMap<AuthorId, u64> = BTreeMap::new();
    for ((a, sq), k) in by_seq {
        if k > 1 {
            let f = fork_at.entry(a).or_insert(sq);
            *f = (*f).min(sq);
        }
    }
    for (i, e) in all.iter().enumerate() {
        if !in_final[i] && fork_at.get(&e.author).is_none_or(|f| e.seq < *f) {
            kept.push(e.clone());
        }
    }
    // `fold` starts from the genesis state: the genesis itself is not applied by it.
    kept.retain(|e| e.id() != genesis.id());
    fold(genesis, &kept, m)
}

/// Folds every live replica's state (two threads) and runs C1–C5.
pub fn judge(w: &mut World) -> Findings {
    let mut live: Vec<&mut SimNode> = w
        .nodes
        .iter_mut()
        .filter(|n| n.live() && !n.byzantine)
        .collect();
    let half = live.len().div_ceil(2);
    std::thread::scope(|s| {
        for chunk in live.chunks_mut(half.max(1)) {
            s.spawn(move || {
                for n in chunk.iter_mut() {
                    n.node
                        .local_mut()
                        .fold()
                        .expect("every indexed block is held");
                }
            });
        }
    });
    let w = &*w;
    let live: Vec<&SimNode> = w.honest().filter(|n| n.live()).collect();
    let mut f = Findings::default();
    let author_node: BTreeMap<AuthorId, usize> =
        w.nodes.iter().map(|n| (n.key.author(), n.ix)).collect();

    // C1
    let mut c1 = vec![];
    if w.converged_at.is_none() {
        c1.push(format!(
            "replicas still disagree at {:.1} s (bound {} s after quiet at {})",
            w.now as f64 / 1000.0,
            w.sc.converge_within_s,
            w.quiet_since
                .map_or("never".into(), |q| format!("{:.1} s", q as f64 / 1000.0))
        ));
    }
    let order_digest = |n: &SimNode| -> [u8; 32] {
        let mut h = Sha256::new();
        for id in n.tl().order() {
            h.update(id.0);
        }
        h.finalize().into()
    };
    // A full node: a light one may have forgotten old blocks.
    let reference = live.iter().find(|n| !n.light).unwrap_or(&live[0]);
    let ref_hash = reported_hash(w, reference);
    let ref_order = order_digest(reference);
    for n in &live {
        let undrained = w.undrained_pending(n);
        if undrained > 0 {
            c1.push(format!("node {} holds {undrained} events pending", n.ix));
        }
    }
    for n in live.iter().filter(|n| n.ix != reference.ix) {
        if n.heads() != reference.heads() {
            c1.push(format!(
                "node {} has other heads than node {}",
                n.ix, reference.ix
            ));
        } else if order_digest(n) != ref_order {
            c1.push(format!("node {} orders the same events differently", n.ix));
        }
        let h = reported_hash(w, n);
        if h != ref_hash {
            c1.push(format!(
                "node {} state_hash {} ≠ node {} {}",
                n.ix,
                &hex::encode(h)[..12],
                reference.ix,
                &hex::encode(ref_hash)[..12]
            ));
        }
    }
    if let Some((_, survivor)) = w.posterity
        && survivor != ref_hash
    {
        c1.push(format!(
            "after the posterity crash the mesh holds {} ≠ the survivor's {}",
            &hex::encode(ref_hash)[..12],
            &hex::encode(survivor)[..12]
        ));
    }
    f.verdicts.push(verdict("C1 convergence", c1));
    f.state_hash = Some(ref_hash);

    // C2
    let order: Vec<EventId> = reference.tl().order().collect();
    f.events_in_order = order.len() as u64;
    let present: BTreeSet<EventId> = order.iter().copied().collect();
    let mut c2 = vec![];
    for (id, (node, _)) in &w.acked {
        if !w.nodes[*node].byzantine && !present.contains(id) {
            if w.stats.wiped_unreplicated.contains(id) {
                f.lost_to_wipe += 1;
            } else {
                f.lost += 1;
            }
        }
    }
    let mut honest_seqs: BTreeMap<(AuthorId, u64), u32> = BTreeMap::new();
    // The heartbeats the honest nodes wrote: part of the state under kairos/2 and kairos/3 (they renew the
    // leases of their authors' emissaries), so part of C5's model.
    let mut heartbeat_ids: Vec<EventId> = vec![];
    for id in &order {
        if *id == w.genesis.id() {
            continue;
        }
        let Some((author, sq, _)) = reference.tl().meta_of(id) else {
            continue;
        };
        let honest = author_node
            .get(&author)
            .is_some_and(|&i| !w.nodes[i].byzantine);
        if honest {
            *honest_seqs.entry((author, sq)).or_insert(0) += 1;
            if !w.acked.contains_key(id) && !w.light_signed.contains_key(id) {
                if w.sc.heartbeat_ms.is_some() && is_heartbeat(reference, id) {
                    f.heartbeats += 1;
                    heartbeat_ids.push(*id);
                } else {
                    f.unexpected += 1;
                }
            }
        }
    }
    f.duplicated = (order.len() - present.len()) as u64
        + honest_seqs.values().map(|&c| c as u64 - 1).sum::<u64>();
    if f.lost + f.unexpected + f.duplicated > 0 {
        c2.push(format!(
            "lost {} unexpected {} duplicated {}",
            f.lost, f.unexpected, f.duplicated
        ));
    }
    f.verdicts
        .push(verdict("C2 no acknowledged write lost", c2));

    // C3
    let mut c3 = vec![];
    for n in &live {
        for (pos, id) in n.tl().order().enumerate() {
            let Ok(ev) = n.tl().load(&id, n.store()) else {
                let lc = n.tl().meta_of(&id).map_or(0, |(_, _, lc)| lc);
                let forgotten = n.light && n.node.horizon().0.is_some_and(|h| (lc, id) <= h);
                if forgotten {
                    continue; // behind a light node's horizon, as it may be
                }
                c3.push(format!("node {}: block of {id} missing", n.ix));
                break;
            };
            if let Some(p) = ev
                .parents
                .iter()
                .find(|p| n.tl().position_of(p).is_none_or(|pp| pp >= pos))
            {
                c3.push(format!(
                    "node {}: {id} at {pos} before its parent {p}",
                    n.ix
                ));
                break;
            }
        }
    }
    f.verdicts.push(verdict("C3 causal order", c3));

    // C4
    f.rejected = live.iter().map(|n| n.rejected_total()).sum();
    if let Some(b) = &w.sc.byzantine {
        let mut c4 = vec![];
        let byz: Vec<AuthorId> = w
            .nodes
            .iter()
            .filter(|n| n.byzantine)
            .map(|n| n.key.author())
            .collect();
        for &a in &b.attacks {
            // The admin fork runs under lc-cid/1 only (see `World::run_attack`).
            if a == Attack::AdminFork && w.sc.order.is_some() {
                continue;
            }
            let sent = w.stats.attacks_sent.get(&a).copied().unwrap_or(0);
            let outcomes: BTreeMap<Outcome, u64> = w
                .stats
                .attack_outcomes
                .iter()
                .filter(|((x, _), _)| *x == a)
                .map(|((_, o), c)| (*o, *c))
                .collect();
            let accounted: u64 = outcomes.values().sum();
            if sent == 0 {
                c4.push(format!("{} never sent", a.name()));
                continue;
            }
            if accounted != sent {
                c4.push(format!(
                    "{}: {sent} sent, {accounted} accounted for",
                    a.name()
                ));
            }
            let judged = sent - outcomes.get(&Outcome::Lost).copied().unwrap_or(0);
            if judged == 0 {
                c4.push(format!("{}: none reached an honest node", a.name()));
            }
            let allowed: &[Outcome] = match a {
                Attack::BitFlip | Attack::ForgedAuthor | Attack::OversizedBlock => &[
                    Outcome::Rejected,
                    Outcome::DroppedBanned,
                    Outcome::DroppedSeen,
                ],
                // A low-Lamport event is signed by its member author but breaks `lc =
                // max(parents) + 1`: refused where its parents are held; where they are not it
                // waits in the pending set like any member's event (and is forwarded) until
                // they come, and is refused then. Never in a replica: the forged-block check.
                Attack::LowLamport => &[
                    Outcome::Rejected,
                    Outcome::Accepted,
                    Outcome::Busy,
                    Outcome::Duplicate,
                    Outcome::DroppedSeen,
                    Outcome::DroppedBanned,
                ],
                // A valid fork whose parents a full pending set cannot hold yet is back-
                // pressure (not taken, not charged), as for any valid block.
                Attack::Equivocate => &[
                    Outcome::Accepted,
                    Outcome::Busy,
                    Outcome::Duplicate,
                    Outcome::DroppedSeen,
                    Outcome::DroppedBanned,
                ],
                // A stranger's event: held within the quota (or over it: busy), never
                // forwarded as a member's pending event is.
                Attack::StrangerFlood => &[
                    Outcome::Held,
                    Outcome::Busy,
                    Outcome::Duplicate,
                    Outcome::DroppedSeen,
                    Outcome::DroppedBanned,
                ],
                // A valid heartbeat: taken in; what it claims is judged by C9's certificates.
                // A valid vote: taken in; what it does is judged by C9's committee check.
                // The admin's fork and the newcomer's event are valid: taken in (or held,
                // from a key the receiver has not seen named yet). Whether every replica
                // decides them alike is C1's.
                Attack::AdminFork => &[
                    Outcome::Accepted,
                    Outcome::Held,
                    Outcome::Busy,
                    Outcome::Duplicate,
                    Outcome::DroppedSeen,
                    Outcome::DroppedBanned,
                ],
                // Valid member events (an unasked answer, a registration, a token bomb): taken
                // in; what they do to the state is judged by C11.
                Attack::FalseAttestation
                | Attack::VoteOff
                | Attack::UnaskedAnswer
                | Attack::SlotFill
                | Attack::TokenBomb => &[
                    Outcome::Accepted,
                    Outcome::Busy,
                    Outcome::Duplicate,
                    Outcome::DroppedSeen,
                    Outcome::DroppedBanned,
                ],
                Attack::Replay => &[
                    Outcome::Duplicate,
                    Outcome::DroppedSeen,
                    Outcome::DroppedBanned,
                ],
                Attack::OversizedMessage => &[Outcome::RefusedUnread, Outcome::DroppedBanned],
                Attack::BadRequest => &[Outcome::Refused, Outcome::DroppedBanned],
                Attack::Flood | Attack::RangeScan | Attack::Sybil => {
                    &[Outcome::Refused, Outcome::Served, Outcome::DroppedBanned]
                }
            };
            for (o, c) in &outcomes {
                if *o != Outcome::Lost && !allowed.contains(o) {
                    c4.push(format!("{}: {c} × {}", a.name(), o.name()));
                }
            }
            if a == Attack::Flood && outcomes.get(&Outcome::Refused).copied().unwrap_or(0) == 0 {
                c4.push("flood: nothing refused".into());
            }
            if a == Attack::Sybil {
                // Each attack hits one node at once: that node serves at most the strangers'
                // burst plus a second of their rate, whatever the number of made-up ids.
                let sent = w.stats.attacks_sent.get(&a).copied().unwrap_or(0);
                let attacks = sent.div_ceil(SYBIL_REQUESTS as u64);
                let bound = attacks * (STRANGER_REQUEST_BURST + STRANGER_REQUESTS_PER_SEC);
                let served = outcomes.get(&Outcome::Served).copied().unwrap_or(0);
                if served > bound {
                    c4.push(format!(
                        "sybil: {served} requests of made-up peer ids served in {attacks} \
                         attacks (strangers' budget allows {bound})"
                    ));
                }
                if !outcomes.contains_key(&Outcome::Refused) {
                    c4.push("sybil: nothing refused".into());
                }
            }
            if a == Attack::LowLamport && !outcomes.contains_key(&Outcome::Rejected) {
                c4.push("low_lamport: never refused".into());
            }
            if a == Attack::Equivocate && outcomes.contains_key(&Outcome::Accepted) {
                for n in &live {
                    if !n
                        .tl()
                        .equivocations()
                        .iter()
                        .any(|e| byz.contains(&e.author))
                    {
                        c4.push(format!("node {} does not know the equivocation", n.ix));
                    }
                }
            }
        }
        for n in &live {
            if let Some(id) = w.stats.forged_ids.iter().find(|id| n.tl().contains(id)) {
                c4.push(format!("node {} holds the forged block {id}", n.ix));
            }
        }
        f.verdicts
            .push(verdict("C4 adversarial input rejected", c4));
    }

    // C5: the acknowledged events (whatever the replicas hold), plus the adversaries' events
    // the replicas took in (nobody acknowledges those), plus the honest nodes' heartbeats.
    let mut reference_set: Vec<SignedEvent> = w
        .acked_events
        .iter()
        .filter(|(id, _)| w.acked.get(id).is_some_and(|(n, _)| !w.nodes[*n].byzantine))
        .filter(|(id, _)| present.contains(id) || !w.stats.wiped_unreplicated.contains(id))
        .map(|(_, e)| e.clone())
        .collect();
    // A light node's write that spread unacknowledged is in every replica, so in the model.
    reference_set.extend(
        w.light_signed
            .iter()
            .filter(|(id, _)| present.contains(id) && !w.acked.contains_key(id))
            .map(|(_, e)| e.clone()),
    );
    let mut c5 = vec![];
    for id in &heartbeat_ids {
        match reference.tl().load(id, reference.store()) {
            Ok(e) => reference_set.push(e),
            Err(e) => c5.push(format!("block {id}: {e}")),
        }
    }
    for id in &present {
        let by_adversary = reference
            .tl()
            .meta_of(id)
            .is_some_and(|(a, _, _)| byz_author(w, &a));
        if by_adversary {
            match reference.tl().load(id, reference.store()) {
                Ok(e) => reference_set.push(e),
                Err(e) => c5.push(format!("block {id}: {e}")),
            }
        }
    }
    let model = if w.sc.order.is_some() {
        reference_hash_final(
            &w.genesis,
            &reference_set,
            crate::node::sim_machine(w.sabotage),
        )
    } else {
        reference_hash(
            &w.genesis,
            &reference_set,
            crate::node::sim_machine(w.sabotage),
        )
    };
    for n in &live {
        let h = reported_hash(w, n);
        if h != model {
            c5.push(format!(
                "node {} state_hash {} ≠ reference model {}",
                n.ix,
                &hex::encode(h)[..12],
                &hex::encode(model)[..12]
            ));
        }
    }
    f.verdicts.push(verdict("C5 reference model", c5));

    // C11
    let c11 = guarded_machine(reference);
    f.verdicts.push(verdict("C11 guarded machine", c11));

    // C8: with heartbeats, every acknowledged write ends up behind the settled frontier of
    // every live honest full node (idle members cover it with a heartbeat). Under lc-cid/1
    // only when every member is live at the end: a dead member holds the frontier by design.
    // Under final/1 a dead member holds nothing back: C8 is finality liveness, whoever is
    // down. A write C2 excuses (its only copy was on a disk then wiped) is excused here too.
    if w.sc.heartbeat_ms.is_some() && (w.sc.order.is_some() || w.nodes.iter().all(|n| n.live())) {
        let mut c8 = vec![];
        for n in live.iter().filter(|n| !n.light) {
            let unsettled = w
                .acked
                .iter()
                .filter(|(id, (node, _))| {
                    !w.nodes[*node].byzantine
                        && (present.contains(id) || !w.stats.wiped_unreplicated.contains(id))
                        && !n.tl().is_settled(id)
                })
                .count();
            if unsettled > 0 {
                let held = n.tl().frontier().held_by.map(|(a, _, _)| a);
                c8.push(format!(
                    "node {}: {unsettled} acknowledged writes not settled (frontier held by {})",
                    n.ix,
                    held.map_or("nobody".into(), |a| {
                        author_node
                            .get(&a)
                            .map_or(a.to_string(), |i| format!("node {i}"))
                    })
                ));
            }
        }
        f.verdicts
            .push(verdict("C8 acknowledged writes settle", c8));
    }

    // C10: every live honest writer up long enough has its writes open at the end.
    let restarts = w.sc.wipe.is_some()
        || w.sc.crashes.is_some()
        || w.sc.posterity.is_some()
        || w.sc.byzantine.is_some()
        || w.sc.classes.iter().any(|c| c.light && c.count > 0);
    if restarts {
        let closed: Vec<String> = live
            .iter()
            .filter(|n| n.writer && !n.node.writes_open())
            .filter(|n| w.now >= n.up_since + WRITES_REOPEN_WITHIN_MS)
            .map(|n| {
                format!(
                    "node {}: its writes are still closed {} s after its start",
                    n.ix,
                    (w.now - n.up_since) / 1000
                )
            })
            .collect();
        f.verdicts.push(verdict("C10 writes reopen", closed));
    }

    // C9: nothing final ever differs between replicas or moves (checked as the run went, in
    // `World::check_final_prefix`), and every live replica's final prefix is, at the end, a
    // prefix of the longest one seen.
    if w.sc.order.is_some() {
        let mut c9 = w.stats.finality_violations.clone();
        for n in &live {
            let len = n.tl().finality().map_or(0, |f| f.final_positions as usize);
            let mine: Vec<EventId> = n.tl().order_range(0, len).collect();
            let canon = &w.final_canon[..len.min(w.final_canon.len())];
            if len > w.final_canon.len() || mine[..] != canon[..] {
                c9.push(format!(
                    "node {}: its final prefix of {len} is not a prefix of the run's ({})",
                    n.ix,
                    w.final_canon.len()
                ));
            }
        }
        // Certificates: every one an honest node held during the run names what an honest
        // replica computes there. Checked against the honest replicas' own checkpoints at that
        // position (the newest few are in memory; one no honest live replica holds any more is
        // compared with the other certificates for that position).
        let honest: Vec<&&SimNode> = live.iter().filter(|n| !n.light && !n.byzantine).collect();
        let mut certified: BTreeMap<u64, chorus_core::finality::certificate::Attestation> =
            BTreeMap::new();
        let mut reported = 0;
        for (node, at, att) in &w.certificates_held {
            let expected = honest
                .iter()
                .find_map(|r| r.tl().attestation_at(att.positions))
                .or_else(|| certified.get(&att.positions).copied());
            if let Some(e) = expected
                && e != *att
            {
                reported += 1;
                if reported <= 8 {
                    c9.push(format!(
                        "node {node} at {at} ms: held a certificate for {} positions naming state \
                         {}; an honest replica computes {} there",
                        att.positions,
                        &hex::encode(att.state)[..12],
                        &hex::encode(e.state)[..12]
                    ));
                }
            }
            certified.entry(att.positions).or_insert(*att);
        }
        for n in live.iter().filter(|n| !n.byzantine) {
            if let Some(c) = n.tl().attestations().and_then(|a| a.certificate()) {
                f.certified_nodes += 1;
                f.certified_positions = f.certified_positions.max(c.att.positions);
            }
        }
        f.verdicts.push(verdict("C9 finality safety", c9));
    }

    f.light_pruned_blocks = live
        .iter()
        .filter(|n| n.light)
        .map(|n| n.node.horizon().1)
        .sum();

    // C7: a light node acknowledged a write only once a full node held it.
    if w.sc.classes.iter().any(|c| c.light && c.count > 0) {
        let mut c7 = vec![];
        if w.stats.light_acked_unstored > 0 {
            c7.push(format!(
                "{} light-node writes acknowledged while no full node held them",
                w.stats.light_acked_unstored
            ));
        }
        f.verdicts
            .push(verdict("C7 light writes stored on a full node first", c7));
    }
    f
}

fn is_heartbeat(n: &SimNode, id: &EventId) -> bool {
    n.tl()
        .load(id, n.store())
        .is_ok_and(|e| e.kind == chorus_core::event::kind::HEARTBEAT)
}

/// A key of an adversary: its own, or one it let in with an admin fork.
fn byz_author(w: &World, a: &AuthorId) -> bool {
    w.adversary_key(a)
}
