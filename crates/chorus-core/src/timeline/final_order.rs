//! # `final/1` inside a timeline: segments, the final prefix, the committee's epochs
//!
//! The rule is [`Engine`] (docs/design/finality.md); this module feeds it the timeline's events
//! and turns the blocks it commits into the order:
//!
//! * **Order.** An event's rank is `(tier, lc, id)`: the tier is the index of the final segment
//!   that holds it, or `TENTATIVE`. Committing block `b` appends a segment: `b` and every event
//!   of its past that no segment holds yet, sorted by `(lc, id)`. Tentative events follow the
//!   final prefix by `(lc, id)`; an event that arrives late sorts after the final prefix however
//!   low its `lc`. Nothing in the final prefix ever moves.
//! * **Exclusion.** A final event's exclusion is decided once, walking its segment in order: an
//!   author whose `sq` repeats one already final has forked, and that event and every later
//!   final event of the author are excluded; a removal in the final prefix excludes the removed
//!   member's later final events the admin had not seen (the `lc-cid/1` rule, restricted to the
//!   final prefix). Tentative events keep the rule over every event held.
//! * **Epochs.** The committee is every member (admin, anchors, writers) in the final prefix's
//!   membership. When a segment changes it, a new epoch begins at the segment's block: a fresh
//!   engine whose only round-0 event is that block, fed the block's descendants (docs/design/
//!   finality.md, "Membership changes"). Decisions of the old engine after the block are
//!   dropped.
//! * **The fold.** Appending a segment can move tentative events (those the block's past lacks
//!   go behind it) and change exclusions; the state rewinds to the first position that changed.
//!   Checkpoints inside the final prefix are persisted and never go stale; checkpoints after it
//!   live in memory and are persisted once their position becomes final unchanged.
//!
//! Cost: the engine keeps `n` rounds per event of the current epoch (see [`Engine`]); each
//! segment walks its own events and re-sorts the tentative ones.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use super::{AdminKey, Rank, TENTATIVE, Timeline};
use ipld_core::ipld::Ipld;

use crate::{
    EventId,
    event::{SignedEvent, kind},
    finality::{
        Decision, Engine, Node, OUTSIDER,
        certificate::{Attestation, Attestations},
        handover::{HandoverClaim, Handovers},
    },
    genesis::{FinalityParams, Genesis},
    ids::AuthorId,
    machine::Machine,
    membership::{MemberOp, Membership, VoteOp},
    timeline::CheckpointChange,
};

/// An event outside the current epoch's engine.
const NOT_IN_ENGINE: u32 = u32::MAX;

/// What `final/1` keeps beside the timeline's own indexes (see the module doc).
pub(super) struct FinalState {
    /// The genesis's quorum fraction.
    params: FinalityParams,
    /// A sabotage run's quorum instead of `params` (the simulator's oracle only).
    sabotaged: Option<fn(usize) -> usize>,
    epoch: u32,
    /// The current epoch's committee, sorted by key: authors `0..n` of its engine.
    committee: Vec<AuthorId>,
    engine: Engine,
    /// Per event index: its position in the current epoch's engine, or `NOT_IN_ENGINE`.
    engine_pos: Vec<u32>,
    /// Engine position → event index.
    event_at: Vec<u32>,
    /// Per event index: the newest epoch whose first block is the event or in its past.
    epoch_of: Vec<u32>,
    /// How many of the current engine's decisions are applied.
    consumed: usize,
    /// Per event index: the final segment holding it, or `TENTATIVE`.
    seg_of: Vec<u64>,
    segments: u64,
    final_len: usize,
    /// Per event index, meaningful for final events only.
    final_excluded: Vec<bool>,
    /// Per event index: not a heartbeat.
    is_work: Vec<bool>,
    /// Events that are not heartbeats and not final: while any exists, the committee
    /// heartbeats.
    tentative_work: usize,
    /// Per author index: the highest `sq` in the final prefix.
    final_sq: BTreeMap<u32, u64>,
    /// Authors seen to fork inside the final prefix.
    forked: BTreeSet<u32>,
    /// Per removed author index: `(highest sq the removal saw, admin sq of the removal)`, for
    /// removals in the final prefix.
    final_removals: BTreeMap<u32, Vec<(u64, u64)>>,
    /// Every indexed removal event: event index → (removed author index, seen, admin sq).
    pub(super) removal_at: BTreeMap<u32, (u32, u64, u64)>,
    /// The newest admin event by `(sq, id)` in the final prefix's pasts, and its membership
    /// version: the committee's membership.
    final_admin: Option<(AdminKey, u32)>,
    /// Every event index sorted by `(lc, id)`: what sync pages through.
    pub(super) lc_order: Vec<u32>,
    /// The committee's attestations, the newest certificate, conflicts.
    attestations: Attestations,
    /// A sabotage run's certificate quorum (the simulator's oracle only).
    certificate_quorum: Option<usize>,
    /// `final/2`: the committee's attestations of its own changes.
    handovers: Option<Handovers>,
    /// Every indexed `vote` event: event index → the vote.
    pub(super) vote_at: BTreeMap<u32, VoteOp>,
    /// Every indexed admin `member` event: event index → the member it is about.
    pub(super) member_event_at: BTreeMap<u32, AuthorId>,
    /// Votes in the final prefix not carried yet: the vote → the committee members who cast it.
    votes: BTreeMap<VoteOp, BTreeSet<AuthorId>>,
    /// Members the committee voted off (and not restored, nor named by a later admin `member`
    /// event): left out of the committee whatever the admin's membership says.
    voted_off: BTreeSet<AuthorId>,
    /// A sabotage run's vote quorum (the simulator's oracle only).
    vote_quorum: Option<usize>,
}

/// The committee: every member in the admin's membership at `version` (admin included, in
/// key order) but those the committee voted off — unless that leaves nobody (the admin's
/// removals can take away every member the votes left), in which case the votes do not count
/// and the membership is the committee: a committee is never empty, or nothing would ever be
/// final again.
fn committee_at(
    membership: &Membership,
    version: u32,
    voted_off: &BTreeSet<AuthorId>,
) -> Vec<AuthorId> {
    let members: Vec<AuthorId> = membership
        .members_at(version)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let kept: Vec<AuthorId> = members
        .iter()
        .filter(|k| !voted_off.contains(k))
        .copied()
        .collect();
    if kept.is_empty() { members } else { kept }
}

impl FinalState {
    pub(super) fn new(genesis_id: EventId, genesis: &Genesis, membership: &Membership) -> Self {
        // The genesis is the admin's first event: its membership is the genesis's own.
        let committee = committee_at(membership, 0, &BTreeSet::new());
        let n = committee.len();
        let params = genesis.finality_quorum();
        let handovers = genesis
            .has_handovers()
            .then(|| Handovers::new(genesis_id, params, committee.clone()));
        FinalState {
            engine: Engine::new(n, params.quorum(n)),
            params,
            sabotaged: None,
            epoch: 0,
            committee,
            engine_pos: vec![],
            event_at: vec![],
            epoch_of: vec![],
            consumed: 0,
            seg_of: vec![],
            segments: 0,
            final_len: 0,
            final_excluded: vec![],
            is_work: vec![],
            tentative_work: 0,
            final_sq: BTreeMap::new(),
            forked: BTreeSet::new(),
            final_removals: BTreeMap::new(),
            removal_at: BTreeMap::new(),
            final_admin: None,
            lc_order: vec![],
            attestations: Attestations::default(),
            certificate_quorum: None,
            handovers,
            vote_at: BTreeMap::new(),
            member_event_at: BTreeMap::new(),
            votes: BTreeMap::new(),
            voted_off: BTreeSet::new(),
            vote_quorum: None,
        }
    }

    /// A vote by `voter` that just became final (docs/design/finality.md, "Membership
    /// changes"). It counts if the voter is on the committee and the vote can take effect: a
    /// removal of a committee member that leaves at least one other, a restore of a member
    /// voted off. Once a quorum of the committee cast the same vote, it takes effect (the
    /// caller starts a new epoch at the end of the segment) and its opposite's tally is dropped.
    fn count_vote(&mut self, voter: AuthorId, vote: VoteOp) {
        if self.committee.binary_search(&voter).is_err() || !self.vote_applies(vote) {
            return;
        }
        self.votes.entry(vote).or_default().insert(voter);
        self.carry_if_ready(vote);
    }

    /// Whether `vote` can take effect now: a removal of a committee member that leaves at
    /// least one other, a restore of a member voted off.
    fn vote_applies(&self, vote: VoteOp) -> bool {
        let staying = self
            .committee
            .iter()
            .filter(|k| !self.voted_off.contains(k))
            .count();
        match vote {
            VoteOp::Remove(k) => {
                self.committee.binary_search(&k).is_ok()
                    && !self.voted_off.contains(&k)
                    && staying > 1
            }
            VoteOp::Restore(k) => self.voted_off.contains(&k),
        }
    }

    /// Carries `vote` if a quorum of the current committee cast it and it still applies.
    fn carry_if_ready(&mut self, vote: VoteOp) {
        let quorum = self
            .vote_quorum
            .unwrap_or_else(|| self.quorum(self.committee.len()));
        let cast = self.votes.get(&vote).map_or(0, BTreeSet::len);
        if cast < quorum || !self.vote_applies(vote) {
            return;
        }
        let opposite = match vote {
            VoteOp::Remove(k) => {
                self.voted_off.insert(k);
                VoteOp::Restore(k)
            }
            VoteOp::Restore(k) => {
                self.voted_off.remove(&k);
                VoteOp::Remove(k)
            }
        };
        self.votes.remove(&vote);
        self.votes.remove(&opposite);
    }

    /// At the end of a segment: open tallies that reached the quorum of a committee that
    /// shrank since they were cast (a new epoch trims them to its members) are carried now,
    /// not only when someone votes again.
    fn carry_ready_votes(&mut self) {
        let open: Vec<VoteOp> = self.votes.keys().copied().collect();
        for vote in open {
            self.carry_if_ready(vote);
        }
    }

    /// An admin `member` event about `who` became final: the admin's word replaces any vote
    /// about `who` (a member the admin adds again is back on the committee).
    fn admin_named(&mut self, who: AuthorId) {
        self.voted_off.remove(&who);
        self.votes.retain(|v, _| v.key() != who);
    }

    fn quorum(&self, n: usize) -> usize {
        match self.sabotaged {
            Some(q) => q(n),
            None => self.params.quorum(n),
        }
    }

    /// The event's tier in its rank: its segment, or `TENTATIVE`.
    pub(super) fn tier(&self, idx: u32) -> u64 {
        self.seg_of[idx as usize]
    }

    /// A final event's exclusion, fixed by the final prefix; `None` for a tentative event.
    pub(super) fn final_exclusion(&self, idx: u32) -> Option<bool> {
        (self.seg_of[idx as usize] != TENTATIVE).then(|| self.final_excluded[idx as usize])
    }

    pub(super) fn owes_heartbeat(&self, member: &AuthorId) -> bool {
        self.tentative_work > 0 && self.committee.binary_search(member).is_ok()
    }

    /// Events in the final prefix.
    pub(super) fn final_len(&self) -> usize {
        self.final_len
    }

    /// Final segments so far, and the current epoch.
    pub(super) fn progress(&self) -> (u64, u32) {
        (self.segments, self.epoch)
    }

    /// The current epoch's committee, in key order.
    pub(super) fn committee(&self) -> &[AuthorId] {
        &self.committee
    }

    fn insert_in_engine(&mut self, idx: u32, author: AuthorId, lc: u64, parents: &[u32]) {
        let engine_parents: Vec<usize> = parents
            .iter()
            .map(|&p| self.engine_pos[p as usize])
            .filter(|&e| e != NOT_IN_ENGINE)
            .map(|e| e as usize)
            .collect();
        let author = self.committee.binary_search(&author).unwrap_or(OUTSIDER);
        let pos = self.engine.insert(Node {
            author,
            lc,
            key: u64::from(idx),
            parents: engine_parents,
        });
        self.engine_pos[idx as usize] = pos as u32;
        debug_assert_eq!(self.event_at.len(), pos);
        self.event_at.push(idx);
    }
}

impl<M: Machine> Timeline<M> {
    fn fin_mut(&mut self) -> &mut FinalState {
        self.fin.as_mut().expect("a final/1 timeline")
    }

    /// Called by `index` for every event of a `final/1` timeline (parents indexed first).
    pub(super) fn final_on_index(&mut self, idx: u32, is_work: bool) {
        let key = self.key(idx);
        let parents = self.parents(idx).to_vec();
        let m = self.metas[idx as usize];
        let author = self.authors[m.author as usize];
        let at = {
            let f = self.fin.as_ref().expect("final/1");
            f.lc_order.partition_point(|&i| self.key(i) < key)
        };
        let f = self.fin_mut();
        f.lc_order.insert(at, idx);
        f.seg_of.push(TENTATIVE);
        f.final_excluded.push(false);
        f.is_work.push(is_work);
        if is_work {
            f.tentative_work += 1;
        }
        let epoch = parents
            .iter()
            .map(|&p| f.epoch_of[p as usize])
            .max()
            .unwrap_or(0);
        f.epoch_of.push(epoch);
        f.engine_pos.push(NOT_IN_ENGINE);
        if epoch == f.epoch {
            f.insert_in_engine(idx, author, m.lc, &parents);
        }
    }

    /// A heartbeat's attestation, counted if its author is on the current committee (a
    /// malformed one is not counted, and the heartbeat stays valid: its body is not checked).
    pub(super) fn note_attestation(&mut self, heartbeat: EventId, author: AuthorId, body: &Ipld) {
        let timeline = self.genesis_id;
        let f = self.fin_mut();
        if let Some(h) = &mut f.handovers
            && let Some(Ok(claim)) = HandoverClaim::from_body(body)
        {
            // Each epoch begins with a final member or vote event: no more epochs than those
            // held can come.
            let changes = f.member_event_at.len() + f.vote_at.len();
            let reachable = f
                .epoch
                .saturating_add(u32::try_from(changes).unwrap_or(u32::MAX));
            h.note(author, heartbeat, claim, reachable);
        }
        let Some(Ok(att)) = Attestation::from_body(body) else {
            return;
        };
        let quorum = f
            .certificate_quorum
            .unwrap_or_else(|| f.quorum(f.committee.len()));
        f.attestations.note(
            timeline,
            f.epoch,
            &f.committee,
            quorum,
            author,
            heartbeat,
            att,
        );
    }

    /// Records a `vote` (validated: its body parses) and an admin `member` event: the
    /// committee reads them once they are final.
    pub(super) fn note_committee_event(&mut self, idx: u32, ev: &SignedEvent) {
        let admin = self.membership.admin();
        let f = self.fin_mut();
        if ev.kind == kind::VOTE {
            if let Ok(vote) = VoteOp::parse(&ev.body) {
                f.vote_at.insert(idx, vote);
            }
        } else if ev.kind == kind::MEMBER
            && ev.author == admin
            && let Ok(MemberOp::Add(who, _) | MemberOp::Remove(who)) = MemberOp::parse(&ev.body)
        {
            f.member_event_at.insert(idx, who);
        }
    }

    /// `final/1`: what this replica attests in its next heartbeat — the newest checkpoint it
    /// holds inside the final prefix (positions, its last event, the `state_hash` there).
    /// `None` under `lc-cid/1` or before such a checkpoint exists.
    pub fn attestation(&self) -> Option<Attestation> {
        self.fin.as_ref()?;
        self.checkpoints
            .iter()
            .rev()
            .filter(|(r, _)| r.0 != TENTATIVE)
            .find_map(|(r, _)| self.attestation_of(r))
    }

    /// `final/1`: what this replica would attest for the final prefix of `positions` events,
    /// if it holds a checkpoint there in memory (the newest few are kept).
    pub fn attestation_at(&self, positions: u64) -> Option<Attestation> {
        self.fin.as_ref()?;
        let pos = usize::try_from(positions.checked_sub(1)?).ok()?;
        let idx = *self.order.get(pos)?;
        let rank = self.rank(idx);
        (rank.0 != TENTATIVE).then(|| self.attestation_of(&rank))?
    }

    /// `final/1`: the state bytes of the final checkpoint that ends at exactly `positions`
    /// events with the event `last` (what a certificate of those positions attests): from
    /// memory, or read back from `src` (the store persists final checkpoints). `None` when no
    /// such checkpoint is held, or this replica's event at that position is another.
    pub fn final_checkpoint_state(
        &self,
        positions: u64,
        last: EventId,
        src: &impl super::BlockSource,
    ) -> Option<Arc<Vec<u8>>> {
        self.fin.as_ref()?;
        let pos = usize::try_from(positions.checked_sub(1)?).ok()?;
        let idx = *self.order.get(pos)?;
        if self.ids[idx as usize] != last {
            return None;
        }
        let rank = self.rank(idx);
        if rank.0 == TENTATIVE {
            return None;
        }
        let ck = self.checkpoints.get(&rank)?;
        match (&ck.bytes, &ck.live) {
            (Some(b), _) => Some(b.clone()),
            (None, Some(live)) => Some(Arc::new(self.machine.encode_state(live))),
            (None, None) => src.get_checkpoint(&super::order_key(&rank)),
        }
    }

    fn attestation_of(&self, rank: &Rank) -> Option<Attestation> {
        let ck = self.checkpoints.get(rank)?;
        let state = match (ck.hash.get(), &ck.live, &ck.bytes) {
            (_, None, None) => return None,
            (Some(hash), ..) => *hash,
            (None, Some(live), _) => *ck.hash.get_or_init(|| self.machine.state_hash(live)),
            (None, None, Some(bytes)) => {
                let state = self.machine.decode_state(bytes).ok()?;
                *ck.hash.get_or_init(|| self.machine.state_hash(&state))
            }
        };
        let pos = self.lower_bound(rank);
        Some(Attestation {
            positions: pos as u64 + 1,
            last: self.ids[self.order[pos] as usize],
            state,
        })
    }

    /// `final/1`: where a light node may forget blocks (pruning deletes every block at or below
    /// a `(lc, id)` key): the largest key such that every event held at or below it sits at or
    /// before the newest final checkpoint in the order, and no larger than that checkpoint's
    /// own key (so the checkpoint the state restarts from is kept). Nothing at or before the
    /// checkpoint is ever folded again (a final prefix never moves); an event that arrives
    /// later with a lower key sorts after the final prefix, and the walk stops below it.
    /// `None` under `lc-cid/1` or before a final checkpoint exists. Cost: a walk over the
    /// events up to the checkpoint's key.
    pub fn final_prune_horizon(&self) -> Option<super::OrderKey> {
        let f = self.fin.as_ref()?;
        let checkpoint = *self.checkpoints.keys().rev().find(|r| r.0 != TENTATIVE)?;
        let checkpoint_key = super::order_key(&checkpoint);
        let mut horizon = None;
        for &i in &f.lc_order {
            let key = self.key(i);
            if key > checkpoint_key || self.rank(i) > checkpoint {
                break;
            }
            horizon = Some(key);
        }
        horizon
    }

    /// `final/2`: the handover claim `member`'s next heartbeat carries, once it claimed epochs
    /// up to `after`: the lowest later committee change this replica reached whose handover it
    /// does not hold certified, if `member` was on the committee before it. `None` otherwise
    /// (and under `lc-cid/1` and `final/1`).
    pub fn handover_owed(&self, member: &AuthorId, after: u32) -> Option<HandoverClaim> {
        self.fin.as_ref()?.handovers.as_ref()?.owed(member, after)
    }

    /// `final/2`: the handovers this replica gathered (`None` under other orders).
    pub fn handovers(&self) -> Option<&Handovers> {
        self.fin.as_ref()?.handovers.as_ref()
    }

    /// **Sabotage, for the simulator's oracle only**: certify a handover claim once `quorum`
    /// members of the old committee made it, true or not. `false` unless `final/2`.
    pub fn sabotage_handover_quorum(&mut self, quorum: usize) -> bool {
        match self.fin.as_mut().and_then(|f| f.handovers.as_mut()) {
            Some(h) => {
                h.sabotage(quorum);
                true
            }
            None => false,
        }
    }

    /// `final/1`: the attestations this replica's heartbeats hold, its newest certificate and
    /// the conflicts seen (`None` under `lc-cid/1`).
    pub fn attestations(&self) -> Option<&Attestations> {
        self.fin.as_ref().map(|f| &f.attestations)
    }

    /// `final/1`: decides what the events held allow and appends the segments of every newly
    /// committed block, starting a new epoch where a segment changes the committee. Returns
    /// how many events became final (0 under `lc-cid/1`). The fold does this first; a node
    /// that defers its fold calls it on its tick so that finality (and its heartbeats) move
    /// without a fold. It moves the order only: the state catches up at the next fold.
    pub fn advance_finality(&mut self) -> usize {
        let Some(f) = &self.fin else {
            return 0;
        };
        let before = f.final_len;
        self.decide_segments();
        self.fin.as_ref().map_or(0, |f| f.final_len - before)
    }

    fn decide_segments(&mut self) {
        loop {
            let f = self.fin_mut();
            f.engine.advance();
            let fresh: Vec<Decision> = f.engine.decided()[f.consumed..].to_vec();
            let mut new_epoch = None;
            for d in fresh {
                let f = self.fin_mut();
                f.consumed += 1;
                if let Decision::Commit(b) = d {
                    let block = f.event_at[b];
                    self.append_final_segment(block);
                    let f = self.fin.as_ref().expect("final/1");
                    let version = f.final_admin.map_or(0, |(_, v)| v);
                    let next = committee_at(&self.membership, version, &f.voted_off);
                    if next != f.committee {
                        new_epoch = Some((block, next));
                        break;
                    }
                }
            }
            match new_epoch {
                Some((block, committee)) => self.start_epoch(block, committee),
                None => return,
            }
        }
    }

    /// A new epoch from `block` (just committed) on: a fresh engine for `committee`, fed the
    /// block and its descendants in index order (a topological order).
    fn start_epoch(&mut self, block: u32, committee: Vec<AuthorId>) {
        let n = committee.len();
        let events: Vec<(u32, AuthorId, u64, Vec<u32>)> = (block..self.metas.len() as u32)
            .map(|i| {
                let m = self.metas[i as usize];
                (
                    i,
                    self.authors[m.author as usize],
                    m.lc,
                    self.parents(i).to_vec(),
                )
            })
            .collect();
        let block_id = self.ids[block as usize];
        let f = self.fin_mut();
        f.epoch += 1;
        // Open tallies keep only the votes of the new committee's members.
        for tally in f.votes.values_mut() {
            tally.retain(|v| committee.binary_search(v).is_ok());
        }
        f.votes.retain(|_, tally| !tally.is_empty());
        if let Some(h) = &mut f.handovers {
            h.epoch_started(block_id, committee.clone());
        }
        f.committee = committee;
        f.engine = Engine::new(n, f.quorum(n));
        f.consumed = 0;
        f.event_at.clear();
        f.engine_pos.fill(NOT_IN_ENGINE);
        let epoch = f.epoch;
        for (i, author, lc, parents) in events {
            let descends = i == block || parents.iter().any(|&p| f.epoch_of[p as usize] == epoch);
            if descends {
                f.epoch_of[i as usize] = epoch;
                f.insert_in_engine(i, author, lc, &parents);
            }
        }
    }

    /// Appends block `b`'s segment to the final prefix and fixes the order, the fold and the
    /// checkpoints after it (see the module doc).
    fn append_final_segment(&mut self, b: u32) {
        let f = self.fin.as_ref().expect("final/1");
        let old_len = f.final_len;
        // The segment: `b` and its past not final yet, by `(lc, id)`.
        let mut seg: Vec<u32> = vec![];
        let mut visited: BTreeSet<u32> = BTreeSet::new();
        let mut stack = vec![b];
        while let Some(x) = stack.pop() {
            if f.seg_of[x as usize] != TENTATIVE || !visited.insert(x) {
                continue;
            }
            seg.push(x);
            stack.extend(self.parents(x));
        }
        seg.sort_by_key(|&x| self.key(x));
        let was_excluded: Vec<bool> = seg.iter().map(|&x| self.excluded(x)).collect();

        // Positions in the order before the change.
        let applied_pos = self.applied_key.map(|k| self.lower_bound(&k));
        let rewind_pos = self.rewind_from.map(|k| self.lower_bound(&k));
        // The common case, and the one that must not cost the whole tentative part per
        // segment (a replica opening a million events commits segment after segment): the
        // segment is already the front of the tentative part, in order. The order does not
        // move, and only the checkpoints inside the segment change rank; the others keep
        // theirs (same event, same position, still tentative).
        let seg_end = old_len + seg.len();
        let seg_is_front = !seg.is_empty()
            && seg_end <= self.order.len()
            && self.order[old_len..seg_end] == seg[..];
        let front_rank = seg_is_front.then(|| self.rank(self.order[seg_end - 1]));
        let tentative_checkpoints: Vec<(Rank, usize)> = match &front_rank {
            Some(last) => self
                .checkpoints
                .range(..=*last)
                .map(|(r, _)| *r)
                .filter(|r| r.0 == TENTATIVE)
                .map(|r| (r, self.lower_bound(&r)))
                .collect(),
            None => self
                .checkpoints
                .keys()
                .filter(|r| r.0 == TENTATIVE)
                .map(|r| (*r, self.lower_bound(r)))
                .collect(),
        };

        // The new tentative part: the segment first, then the rest in their order.
        let old_tail = &self.order[old_len..];
        let (new_tail, mut unchanged) = if seg_is_front {
            (None, old_tail.len())
        } else {
            let in_seg: BTreeSet<u32> = seg.iter().copied().collect();
            let mut new_tail = seg.clone();
            new_tail.extend(old_tail.iter().copied().filter(|i| !in_seg.contains(i)));
            let unchanged = old_tail
                .iter()
                .zip(&new_tail)
                .take_while(|(a, b)| a == b)
                .count();
            (Some(new_tail), unchanged)
        };

        // Mark the segment final and decide its exclusions, in order.
        let metas: Vec<(u32, u64, AdminKey, u32)> = seg
            .iter()
            .map(|&x| {
                let m = self.metas[x as usize];
                let tip = self.admin_key(m.admin_tip);
                (m.author, m.sq, tip, m.version)
            })
            .collect();
        let keys: Vec<AuthorId> = metas
            .iter()
            .map(|&(a, ..)| self.authors[a as usize])
            .collect();
        let f = self.fin_mut();
        let segment = f.segments;
        for (k, (&x, &(author, sq, tip, version))) in seg.iter().zip(&metas).enumerate() {
            let admin_seen = tip.0;
            f.seg_of[x as usize] = segment;
            if f.is_work[x as usize] {
                f.tentative_work -= 1;
            }
            if f.final_admin.is_none_or(|(t, _)| tip > t) {
                f.final_admin = Some((tip, version));
            }
            let repeats = f.final_sq.get(&author).is_some_and(|&h| sq <= h);
            if repeats {
                f.forked.insert(author);
            }
            let excluded = f.forked.contains(&author)
                || f.final_removals.get(&author).is_some_and(|rs| {
                    rs.iter()
                        .any(|&(seen, admin_sq)| sq > seen && admin_seen < admin_sq)
                });
            if !repeats {
                f.final_sq.insert(author, sq);
            }
            f.final_excluded[x as usize] = excluded;
            if excluded != was_excluded[k] {
                unchanged = unchanged.min(k);
            }
            if let Some(&(removed, seen, admin_sq)) = f.removal_at.get(&x) {
                f.final_removals
                    .entry(removed)
                    .or_default()
                    .push((seen, admin_sq));
            }
            if !excluded && let Some(&who) = f.member_event_at.get(&x) {
                f.admin_named(who);
            }
            if !excluded && let Some(&vote) = f.vote_at.get(&x) {
                f.count_vote(keys[k], vote);
            }
        }
        f.carry_ready_votes();
        f.segments += 1;
        f.final_len += seg.len();
        let final_len = f.final_len;
        if let Some(new_tail) = new_tail {
            self.order.splice(old_len.., new_tail);
        }
        self.settled = final_len;

        // The fold: positions before `first_changed` hold the same events with the same
        // exclusions (some now final); from there on the state must be rebuilt.
        let first_changed = old_len + unchanged;
        let mut rewind = rewind_pos;
        if applied_pos.is_some_and(|a| a >= first_changed) {
            rewind = Some(rewind.map_or(first_changed, |r| r.min(first_changed)));
        }
        self.applied_key = applied_pos.map(|a| self.rank(self.order[a]));
        self.rewind_from = rewind
            .filter(|&r| r < self.order.len())
            .map(|r| self.rank(self.order[r]));

        // Checkpoints after the old final prefix: re-ranked where unchanged (and persisted if
        // now final), dropped where the order changed. In the common case those beyond the
        // segment were not listed: they keep their rank unless an exclusion inside the segment
        // changed, and then they are all after the change and go.
        if let Some(last) = front_rank
            && first_changed < seg_end
        {
            let beyond: Vec<Rank> = self
                .checkpoints
                .range((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded))
                .map(|(r, _)| *r)
                .filter(|r| r.0 == TENTATIVE)
                .collect();
            for r in beyond {
                self.checkpoints.remove(&r);
            }
        }
        for (old, pos) in tentative_checkpoints {
            let ck = self.checkpoints.remove(&old).expect("listed above");
            if pos >= first_changed {
                continue;
            }
            let rank = self.rank(self.order[pos]);
            if rank.0 != TENTATIVE {
                let Some(bytes) = ck.bytes.clone() else {
                    continue;
                };
                self.checkpoint_log.push(CheckpointChange::Put {
                    key: super::order_key(&rank),
                    state: bytes,
                });
            }
            self.checkpoints.insert(rank, ck);
        }
    }

    /// **Sabotage, for the simulator's oracle only**: certify an attestation once `quorum`
    /// members made it (one: any member's word is a certificate, which the oracle's
    /// certificate check must catch when a member lies). Returns whether it took.
    #[doc(hidden)]
    pub fn sabotage_certificate_quorum(&mut self, quorum: usize) -> bool {
        match &mut self.fin {
            Some(f) => {
                f.certificate_quorum = Some(quorum);
                true
            }
            None => false,
        }
    }

    /// **Sabotage, for the simulator's oracle only**: decide finality with `quorum_of(n)`
    /// instead of more than two thirds (a quorum of a half lets two partition sides finalize
    /// different prefixes, which the finality safety check must catch). Only on a timeline
    /// holding nothing but its genesis; returns whether it took.
    #[doc(hidden)]
    pub fn sabotage_finality_quorum(&mut self, quorum_of: fn(usize) -> usize) -> bool {
        if self.len() != 1 {
            return false;
        }
        let Some(f) = &mut self.fin else {
            return false;
        };
        let n = f.committee.len();
        f.sabotaged = Some(quorum_of);
        f.engine = Engine::new(n, quorum_of(n));
        f.event_at.clear();
        f.engine_pos.fill(NOT_IN_ENGINE);
        let genesis = self.metas[0];
        let author = self.authors[genesis.author as usize];
        self.fin_mut().insert_in_engine(0, author, genesis.lc, &[]);
        true
    }

    /// **Sabotage, for the simulator's oracle only**: carry a committee vote once `quorum`
    /// members cast it (one: any member alone votes another off, which the oracle's committee
    /// check must catch). Returns whether it took.
    #[doc(hidden)]
    pub fn sabotage_vote_quorum(&mut self, quorum: usize) -> bool {
        match &mut self.fin {
            Some(f) => {
                f.vote_quorum = Some(quorum);
                true
            }
            None => false,
        }
    }

    /// `final/1`: events in the final prefix, final segments, and the committee's epoch
    /// (`None` under `lc-cid/1`).
    pub fn finality(&self) -> Option<FinalityStatus> {
        let f = self.fin.as_ref()?;
        let (segments, epoch) = f.progress();
        Some(FinalityStatus {
            final_positions: f.final_len() as u64,
            segments,
            epoch,
            committee: f.committee().to_vec(),
            quorum: f.quorum(f.committee().len()),
            voted_off: f.voted_off.iter().copied().collect(),
            open_votes: f.votes.iter().map(|(v, t)| (*v, t.len())).collect(),
        })
    }
}

/// Where finality stands on a replica (see [`Timeline::finality`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalityStatus {
    /// Events in the final prefix: the first positions of the order, never reordered.
    pub final_positions: u64,
    /// Final segments (committed blocks) so far.
    pub segments: u64,
    /// Membership epochs begun since the genesis.
    pub epoch: u32,
    /// The current epoch's committee, in key order.
    pub committee: Vec<AuthorId>,
    /// Distinct committee authors needed for a round, a vote quorum, a certificate.
    pub quorum: usize,
    /// Members the committee voted off (in key order): off the committee until a quorum
    /// restores them or the admin names them in a `member` event.
    pub voted_off: Vec<AuthorId>,
    /// Votes in the final prefix short of a quorum so far, with how many members cast each.
    pub open_votes: Vec<(VoteOp, usize)>,
}
