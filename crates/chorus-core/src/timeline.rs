//! The timeline: a grow-only Merkle-DAG of signed events, its deterministic total order, and the
//! machine state folded over that order.
//!
//! Every event, local or foreign, enters through [`Timeline::insert`] (or `insert_batch`):
//!
//! 1. duplicates are recognised by id; an event of another timeline is refused;
//! 2. an event with missing parents is held *pending* (bounded) and its parents are reported as
//!    wanted; it is indexed as soon as they arrive;
//! 3. contextual checks: `sq` follows the author's chain, `lc = max(parents.lc) + 1`, the author
//!    is a member in the event's causal past, `member` events come from the admin;
//! 4. indexing: DAG, heads, author chain (a second event at the same `(au, sq)` is
//!    equivocation), the order position, exclusion changes, the members' views (settled frontier);
//! 5. the state catches up: events sorting after everything folded so far are applied directly;
//!    an event sorting earlier, or an exclusion change, rewinds to the newest checkpoint before it
//!    and re-applies to the tip (counted in [`Stats::reapplied`]).
//!
//! Order: ascending `(lc, id)`. Since `id` is the digest of the block and every CID has the same
//! prefix, this is ascending `(lc, cid bytes)`. It depends only on the event set.
//!
//! Memory: per event the index keeps ~60 bytes plus its parents (4 bytes each); bodies are not
//! kept. Replays read blocks from a small cache of recent blocks or from a [`BlockSource`].

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::{Arc, OnceLock},
};

use crate::{
    event::{EventError, SignedEvent, UnsignedEvent, kind},
    genesis::Genesis,
    id_index::IdIndex,
    ids::{AuthorId, EventId},
    limits::{
        MAX_PARENTS, MAX_PENDING_BYTES, MAX_PENDING_EVENTS, MAX_PENDING_FROM_STRANGERS,
        MAX_PENDING_PER_STRANGER, RECENT_BLOCK_CACHE,
    },
    machine::{Applied, Machine},
    membership::{MemberOp, Membership, Role, VoteOp},
};

/// An event's `(lc, id)`, compared lexicographically: its position in the total order of an
/// `lc-cid/1` timeline, and the key by which stores, checkpoints and sync name events under
/// every order rule.
pub type OrderKey = (u64, EventId);

/// Position of an event in the total order: `(tier, lc, id)`. The tier is 0 for every event of
/// an `lc-cid/1` timeline (the order is then `(lc, id)`); under `final/1` it is the index of
/// the final segment that holds the event, or [`TENTATIVE`] (docs/design/finality.md).
type Rank = (u64, u64, EventId);

/// The tier of an event no final segment holds yet.
const TENTATIVE: u64 = u64::MAX;

fn order_key(r: &Rank) -> OrderKey {
    (r.1, r.2)
}

mod final_order;
pub use final_order::FinalityStatus;

/// Where replays read blocks that are no longer in the recent-block cache.
pub trait BlockSource {
    /// The block with this id, if present.
    fn get_block(&self, id: &EventId) -> Option<Arc<[u8]>>;
    /// A persisted checkpoint's state bytes. The timeline keeps only the newest
    /// [`CHECKPOINTS_IN_MEMORY`] in memory; a deeper rewind reads older ones here (and falls back
    /// to an older one, or to genesis, when the source has none).
    fn get_checkpoint(&self, _key: &OrderKey) -> Option<Arc<Vec<u8>>> {
        None
    }
}

/// A source with no blocks: for timelines whose every block is still cached (tests, small runs).
pub struct NoBlocks;
impl BlockSource for NoBlocks {
    fn get_block(&self, _: &EventId) -> Option<Arc<[u8]>> {
        None
    }
}

impl BlockSource for BTreeMap<EventId, Arc<[u8]>> {
    fn get_block(&self, id: &EventId) -> Option<Arc<[u8]>> {
        self.get(id).cloned()
    }
}

/// Result of a successful insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// The event is indexed and ordered. `released` lists pending events that it completed and
    /// that got indexed with it (not including itself).
    Indexed { released: Vec<EventId> },
    /// Held until the listed parents arrive.
    Pending { missing: Vec<EventId> },
    /// Already known (indexed or pending).
    Duplicate,
}

/// Failure of an insert or of catching the state up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimelineError {
    #[error(transparent)]
    Invalid(#[from] EventError),
    /// A block the replay needs is neither cached nor in the block source: the store is
    /// inconsistent.
    #[error("block {0} needed for replay is missing from the store")]
    MissingBlock(EventId),
}

/// A change to the set of checkpoints, for the store to mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointChange {
    /// Store this state, which includes every event with key `<= key`.
    Put { key: OrderKey, state: Arc<Vec<u8>> },
    /// Drop every checkpoint with key `>= key` (a late event or an exclusion made them stale).
    DropFrom { key: OrderKey },
}

/// Counters, for status and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events applied to the machine, re-applications included.
    pub applied: u64,
    /// Applications of events that had been applied before (the late-insert amplification:
    /// `applied - reapplied` is the number of distinct events ever applied).
    pub reapplied: u64,
    /// Rewinds to a checkpoint.
    pub rewinds: u64,
    /// Rejected events per error code.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Events that sorted below the settled frontier when they arrived (only possible with a
    /// misbehaving member); the frontier moved back to them.
    pub frontier_regressions: u64,
}

/// Who holds the settled frontier and how far it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontier {
    /// Number of events in the settled prefix of the order.
    pub settled: u64,
    /// The last settled event and its `lc`.
    pub last: Option<(EventId, u64)>,
    /// The first member (key order) whose latest event does not yet contain the first unsettled
    /// event, with its role and the `lc` of its latest event (None: it has published nothing).
    pub held_by: Option<(AuthorId, Role, Option<u64>)>,
    /// The first unsettled event (what the holder has not yet seen).
    pub first_unsettled: Option<(EventId, u64)>,
}

/// Proof of equivocation: two events with the same author and sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Equivocation {
    pub author: AuthorId,
    pub seq: u64,
    pub first: EventId,
    pub second: EventId,
}

/// The order of admin events for "the newest in a past": `(sq, id)`.
type AdminKey = (u64, EventId);

/// What an event's causal past holds of the admin's chain (see `Membership`).
#[derive(Debug, Clone, Copy)]
struct AdminPast {
    /// The admin event of the past with the highest `(sq, id)`; `None` for an admin event,
    /// which is its own.
    tip: Option<u32>,
    /// The membership version of the past.
    version: u32,
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    lc: u64,
    sq: u64,
    /// The admin event of this event's past (itself, for an admin event) with the highest
    /// `(sq, id)`: its `sq` is the event's `admin_seen`.
    admin_tip: u32,
    /// The membership version of this event's past (see `Membership`).
    version: u32,
    author: u32,
    parents_start: u32,
    parents_len: u8,
}

/// Checkpoints whose state bytes stay in memory (the newest ones); older ones keep only their
/// key and are read back from the block source on a deep rewind. Bounds a long-running node's
/// memory: without it every checkpoint's state (hundreds of KiB for KAIROS) stays resident.
pub const CHECKPOINTS_IN_MEMORY: usize = 8;
/// States kept in memory at [`Machine::dense_checkpoint_every`] spacing, at most this many (the
/// newest): with KAIROS's 16 they cover the last 128 positions.
pub const DENSE_CHECKPOINTS: usize = 8;

struct Checkpoint<S> {
    /// `None` once evicted from memory (persisted by the store).
    bytes: Option<Arc<Vec<u8>>>,
    /// The decoded state, kept only for the newest checkpoint (restoring it is then a clone).
    live: Option<S>,
    /// The state's hash, once asked for: a `final/1` node attests its newest final checkpoint
    /// at every heartbeat tick, and that checkpoint is seldom the newest one, so without this
    /// each tick decoded a whole KAIROS state again (the simulator's final/1 runs spent ~40 %
    /// of their time there).
    hash: OnceLock<[u8; 32]>,
}

#[derive(Default)]
struct MemberView {
    latest: Option<u32>,
    /// Per author index: highest `sq` in the causal past of `latest`.
    vv: Vec<u64>,
}

/// See the module docs.
pub struct Timeline<M: Machine> {
    machine: M,
    genesis_id: EventId,
    genesis: Genesis,
    membership: Membership,
    checkpoint_interval: u64,

    ids: Vec<EventId>,
    metas: Vec<Meta>,
    by_id: IdIndex,
    parents_arena: Vec<u32>,
    authors: Vec<AuthorId>,
    author_index: HashMap<AuthorId, u32>,
    /// Per author: `chain[sq-1]` = the first indexed event with that sq.
    chains: Vec<Vec<u32>>,
    /// Per author: lowest sq at which two events exist.
    forks: BTreeMap<u32, u64>,
    equivocations: Vec<Equivocation>,
    /// Per author: (highest sq seen by the removal, admin sq of the removal).
    removals: BTreeMap<u32, Vec<(u64, u64)>>,
    heads: BTreeSet<EventId>,
    /// Event indices sorted by `(lc, id)`.
    order: Vec<u32>,

    pending: BTreeMap<EventId, SignedEvent>,
    pending_bytes: usize,
    /// Pending events per key that no membership change names (see
    /// [`MAX_PENDING_PER_STRANGER`]), and their sum.
    stranger_pending: BTreeMap<AuthorId, usize>,
    stranger_pending_total: usize,
    /// The pending events counted there (a key named later keeps its earlier ones counted).
    stranger_ids: BTreeSet<EventId>,
    /// **Sabotage, for the simulator's oracle only**: treat every key as a member for the
    /// pending set (no stranger quota).
    trust_strangers: bool,
    /// Sabotage: the order ignores Lamport clocks (by id alone).
    order_without_lamport: bool,
    /// Sabotage: an event's Lamport clock is not checked against its parents'.
    any_lamport: bool,
    /// The key of the node holding this replica: never a stranger here.
    local_author: Option<AuthorId>,
    /// Pending events that failed validation when their parents arrived (for the store to
    /// forget them too).
    dropped_pending: Vec<(EventId, EventError)>,
    /// Missing parent → pending children waiting for it.
    waiting: BTreeMap<EventId, Vec<EventId>>,

    state: M::State,
    /// Rank of the last event folded into `state` (None: nothing folded, `state` is `init`).
    applied_key: Option<Rank>,
    /// Smallest rank whose fold result changed since the last catch-up.
    rewind_from: Option<Rank>,
    /// A fold in slices ([`Timeline::catch_up_step`]) is under way.
    slicing: bool,
    /// Fold forward inside `insert_batch_deferred` once many events wait (see there); an
    /// owner that folds in slices turns it off.
    auto_fold: bool,
    /// The order's length and the heads at the last complete fold: what `state` is the
    /// state of.
    folded_at: (usize, Vec<EventId>),
    /// Under `final/1`, checkpoints inside the final prefix are persisted; those after it are
    /// kept in memory only, and are persisted once their position becomes final unchanged.
    checkpoints: BTreeMap<Rank, Checkpoint<M::State>>,
    checkpoint_log: Vec<CheckpointChange>,
    /// States at [`Machine::dense_checkpoint_every`] spacing, in memory only, oldest first, at
    /// most [`DENSE_CHECKPOINTS`]: restore points for a late event a little way back (the
    /// persisted checkpoints are further apart). `lc-cid/1` only.
    dense: VecDeque<(Rank, M::State)>,
    /// Bit per event index: applied at least once (to count re-applications).
    applied_once: Vec<u64>,
    recent: HashMap<EventId, SignedEvent>,
    recent_fifo: VecDeque<EventId>,

    views: BTreeMap<AuthorId, MemberView>,
    settled: usize,
    /// The order key of the newest event that is not a heartbeat (see `owes_heartbeat`).
    newest_work: Option<OrderKey>,
    visit_marks: Vec<u32>,
    visit_stamp: u32,

    /// `final/1` bookkeeping (None under `lc-cid/1`).
    fin: Option<Box<final_order::FinalState>>,

    stats: Stats,
}

impl<M: Machine> Timeline<M> {
    /// A timeline holding only its genesis, which must be valid (decoded and signed).
    pub fn new(genesis_event: SignedEvent, machine: M) -> Result<Self, EventError> {
        let genesis = Genesis::from_event(&genesis_event)?;
        if genesis.body.machine != machine.id() {
            return Err(EventError::BadBody {
                kind: kind::GENESIS.into(),
                why: format!(
                    "timeline uses machine {}, this replica runs {}",
                    genesis.body.machine,
                    machine.id()
                ),
            });
        }
        machine
            .check_genesis(&genesis)
            .map_err(|why| EventError::BadBody {
                kind: kind::GENESIS.into(),
                why,
            })?;
        let state = machine.init(&genesis);
        let membership = Membership::from_genesis(&genesis);
        let mut tl = Timeline {
            checkpoint_interval: genesis.body.checkpoint_interval,
            genesis_id: genesis_event.id(),
            machine,
            genesis,
            membership,
            ids: vec![],
            metas: vec![],
            by_id: IdIndex::default(),
            parents_arena: vec![],
            authors: vec![],
            author_index: HashMap::new(),
            chains: vec![],
            forks: BTreeMap::new(),
            equivocations: vec![],
            removals: BTreeMap::new(),
            heads: BTreeSet::new(),
            order: vec![],
            pending: BTreeMap::new(),
            pending_bytes: 0,
            stranger_pending: BTreeMap::new(),
            stranger_pending_total: 0,
            stranger_ids: BTreeSet::new(),
            trust_strangers: false,
            order_without_lamport: false,
            any_lamport: false,
            local_author: None,
            dropped_pending: vec![],
            waiting: BTreeMap::new(),
            state,
            applied_key: None,
            rewind_from: None,
            slicing: false,
            auto_fold: true,
            folded_at: (0, vec![]),
            checkpoints: BTreeMap::new(),
            checkpoint_log: vec![],
            dense: VecDeque::new(),
            applied_once: vec![],
            recent: HashMap::new(),
            recent_fifo: VecDeque::new(),
            views: BTreeMap::new(),
            settled: 0,
            newest_work: None,
            visit_marks: vec![],
            visit_stamp: 0,
            fin: None,
            stats: Stats::default(),
        };
        if tl.genesis.is_final_order() {
            tl.fin = Some(Box::new(final_order::FinalState::new(
                tl.genesis_id,
                &tl.genesis,
                &tl.membership,
            )));
        }
        tl.refresh_views();
        tl.index(
            &genesis_event,
            AdminPast {
                tip: None,
                version: 0,
            },
        );
        tl.cache(genesis_event);
        tl.catch_up(&NoBlocks).expect("genesis is cached");
        Ok(tl)
    }

    // ----------------------------------------------------------------- accessors

    pub fn machine(&self) -> &M {
        &self.machine
    }
    pub fn genesis_id(&self) -> EventId {
        self.genesis_id
    }
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }
    pub fn membership(&self) -> &Membership {
        &self.membership
    }
    /// The machine state after every ordered, non-excluded event. Call [`catch_up`] first if
    /// you inserted with `insert_deferred`.
    ///
    /// [`catch_up`]: Self::catch_up
    pub fn state(&self) -> &M::State {
        &self.state
    }
    pub fn state_hash(&self) -> [u8; 32] {
        self.machine.state_hash(&self.state)
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// Number of indexed (ordered) events, genesis included.
    pub fn len(&self) -> usize {
        self.order.len()
    }
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
    /// Whether `id` is held as pending (waiting for parents).
    pub fn is_pending(&self, id: &EventId) -> bool {
        self.pending.contains_key(id)
    }
    /// Pending events, in id order.
    pub fn pending(&self) -> impl Iterator<Item = &SignedEvent> {
        self.pending.values()
    }
    /// Events that pending events wait for and that are not pending themselves: what to
    /// fetch.
    /// Whether no membership change held here names `author` (nor is it the admin, nor this
    /// node's own key): its pending events count against the stranger quota, and gossip of
    /// them is not forwarded.
    pub fn is_stranger(&self, author: &AuthorId) -> bool {
        !self.trust_strangers
            && self.local_author != Some(*author)
            && !self.membership.ever_named(author)
    }

    /// The key of the node holding this replica (its own events are never a stranger's).
    pub fn set_local_author(&mut self, me: AuthorId) {
        self.local_author = Some(me);
    }

    /// Pending events of keys no membership change names.
    pub fn stranger_pending(&self) -> usize {
        self.stranger_pending_total
    }

    /// **Sabotage, for the simulator's oracle only**: no stranger quota, strangers' pending
    /// gossip forwarded like a member's.
    #[doc(hidden)]
    pub fn sabotage_trust_strangers(&mut self) {
        self.trust_strangers = true;
    }

    /// **Sabotage, for the simulator's oracle only** (before any event is inserted): the total
    /// order by event id alone, Lamport clocks ignored. Every replica with it agrees on the
    /// order, but an event may come before its parents.
    #[doc(hidden)]
    pub fn sabotage_order_without_lamport(&mut self) {
        self.order_without_lamport = true;
    }

    /// **Sabotage, for the simulator's oracle only**: an event's Lamport clock is taken as it
    /// comes, not checked against `max(parents) + 1` (a writer's low-clock event then sorts
    /// before what it saw, and is held).
    #[doc(hidden)]
    pub fn sabotage_any_lamport(&mut self) {
        self.any_lamport = true;
    }

    /// Sabotage (the simulator's oracle only): membership by arrival order, as before
    /// membership versions — an admin that equivocates splits the replicas.
    #[doc(hidden)]
    pub fn sabotage_membership_arrival_order(&mut self) {
        self.membership.sabotage_arrival_order();
    }

    /// Missing parents of pending events, but those only strangers' events wait for (their
    /// parents may be made up: asking peers for them is work an attacker chose).
    pub fn wanted(&self) -> Vec<EventId> {
        self.waiting
            .iter()
            .filter(|(id, _)| !self.pending.contains_key(id))
            .filter(|(_, children)| children.iter().any(|c| !self.stranger_ids.contains(c)))
            .map(|(id, _)| *id)
            .collect()
    }
    fn index_of(&self, id: &EventId) -> Option<u32> {
        self.by_id.get(&self.ids, id)
    }
    pub fn contains(&self, id: &EventId) -> bool {
        self.index_of(id).is_some()
    }
    /// Current heads (events no other indexed event names as parent), sorted by id.
    pub fn heads(&self) -> Vec<EventId> {
        self.heads.iter().copied().collect()
    }
    /// Version vector: author → highest contiguous sq held.
    pub fn version_vector(&self) -> BTreeMap<AuthorId, u64> {
        // Authors with nothing held (a removed key interned by its removal) are not listed.
        self.authors
            .iter()
            .zip(&self.chains)
            .filter(|(_, c)| !c.is_empty())
            .map(|(a, c)| (*a, c.len() as u64))
            .collect()
    }
    pub fn equivocations(&self) -> &[Equivocation] {
        &self.equivocations
    }
    /// Ids in total order.
    pub fn order(&self) -> impl ExactSizeIterator<Item = EventId> + '_ {
        self.order.iter().map(|&i| self.ids[i as usize])
    }
    /// Ids at positions `start..end` of the total order (clamped to its length).
    pub fn order_range(&self, start: usize, end: usize) -> impl Iterator<Item = EventId> + '_ {
        let end = end.min(self.order.len());
        self.order[start.min(end)..end]
            .iter()
            .map(|&i| self.ids[i as usize])
    }
    /// Order key of an indexed event.
    pub fn key_of(&self, id: &EventId) -> Option<OrderKey> {
        self.index_of(id).map(|i| self.key(i))
    }
    /// Position of an indexed event in the total order.
    pub fn position_of(&self, id: &EventId) -> Option<usize> {
        let idx = self.index_of(id)?;
        Some(self.lower_bound(&self.rank(idx)))
    }
    /// Whether the state skips this event (equivocation or removal).
    pub fn is_excluded(&self, id: &EventId) -> bool {
        self.index_of(id).is_some_and(|i| self.excluded(i))
    }
    /// Author, sq and lc of an indexed event.
    pub fn meta_of(&self, id: &EventId) -> Option<(AuthorId, u64, u64)> {
        self.index_of(id).map(|i| {
            let m = self.metas[i as usize];
            (self.authors[m.author as usize], m.sq, m.lc)
        })
    }
    /// The block of an indexed event, from the cache or `src`.
    pub fn load(&self, id: &EventId, src: &dyn BlockSource) -> Result<SignedEvent, TimelineError> {
        if let Some(ev) = self.recent.get(id) {
            return Ok(ev.clone());
        }
        let bytes = src.get_block(id).ok_or(TimelineError::MissingBlock(*id))?;
        SignedEvent::decode_trusted(&bytes).map_err(TimelineError::Invalid)
    }
    /// The raw block of an indexed event: from the recent cache, else from `src`.
    pub fn block(&self, id: &EventId, src: &dyn BlockSource) -> Option<Arc<[u8]>> {
        match self.recent.get(id) {
            Some(ev) => Some(ev.bytes_arc()),
            None => src.get_block(id),
        }
    }
    /// Indexed events in total order strictly after `after` (from the start when `None`), as
    /// `(key, author, sq)`: what a peer's catch-up request pages through.
    pub fn scan_after(
        &self,
        after: Option<OrderKey>,
    ) -> impl Iterator<Item = (OrderKey, AuthorId, u64)> + '_ {
        // Under `final/1` the order is not `(lc, id)`: page through the `(lc, id)` index, which
        // every peer computes the same way (sync names positions by `(lc, id)`).
        let by_key = match &self.fin {
            Some(f) => &f.lc_order[..],
            None => &self.order[..],
        };
        let start = match after {
            None => 0,
            Some(k) => by_key.partition_point(|&i| self.key(i) <= k),
        };
        by_key[start..].iter().map(|&i| {
            let m = &self.metas[i as usize];
            (self.key(i), self.authors[m.author as usize], m.sq)
        })
    }
    /// One author's indexed events with `from..=to` as their sq, ascending — found through
    /// the author's chain, without scanning the order. `None` when the author forked (two
    /// events at one sq: the chain holds only the first of each, so the caller scans).
    pub fn chain_span(
        &self,
        author: &AuthorId,
        from: u64,
        to: u64,
    ) -> Option<impl Iterator<Item = EventId> + '_> {
        let (chain, forked) = match self.author_index.get(author) {
            Some(&a) => (&self.chains[a as usize][..], self.forks.contains_key(&a)),
            None => (&[][..], false),
        };
        if forked {
            return None;
        }
        let lo = from.max(1);
        let hi = to.min(chain.len() as u64);
        let span = if lo > hi {
            &[][..]
        } else {
            &chain[(lo - 1) as usize..hi as usize]
        };
        Some(span.iter().map(|&i| self.ids[i as usize]))
    }
    /// Drains the checkpoint changes since the last call, for the store to persist.
    pub fn take_checkpoint_changes(&mut self) -> Vec<CheckpointChange> {
        std::mem::take(&mut self.checkpoint_log)
    }
    /// Drains the pending events that were rejected once their parents arrived.
    pub fn take_dropped_pending(&mut self) -> Vec<(EventId, EventError)> {
        std::mem::take(&mut self.dropped_pending)
    }
    /// Keys of the checkpoints held, in order.
    pub fn checkpoint_keys(&self) -> Vec<OrderKey> {
        self.checkpoints.keys().map(order_key).collect()
    }

    // ----------------------------------------------------------------- local events

    /// Builds the next event of `author`: parents are the current heads (at most 16, the
    /// author's own latest event always included), `sq` and `lc` follow the rules. Sign it and
    /// insert it like any other event.
    pub fn prepare(
        &self,
        author: AuthorId,
        kind: &str,
        body: ipld_core::ipld::Ipld,
    ) -> UnsignedEvent {
        let own_latest = self
            .author_index
            .get(&author)
            .and_then(|&a| self.chains[a as usize].last().copied());
        let seq = own_latest.map_or(1, |i| self.metas[i as usize].sq + 1);
        let mut parents: Vec<u32> = self
            .heads
            .iter()
            .map(|h| self.index_of(h).expect("heads are indexed"))
            .collect();
        if parents.len() > MAX_PARENTS {
            // The newest head (the event sorts after everything held: its `lc` is the same as
            // with every head), then the oldest others: the rest stay heads and are picked up
            // next time, oldest first, so no head waits forever behind a stream of newer ones
            // (a head never named is never contained, and would hold the settled frontier).
            parents.sort_by_key(|&i| self.key(i));
            let newest = parents.pop().expect("more than MAX_PARENTS");
            parents.truncate(MAX_PARENTS - 1);
            parents.push(newest);
        }
        if let Some(own) = own_latest
            && !parents.contains(&own)
        {
            if parents.len() == MAX_PARENTS {
                // Room for the own previous event: drop the second newest head (never the
                // newest, which sets the `lc`, nor the oldest, which must not starve).
                parents.sort_by_key(|&i| self.key(i));
                parents.remove(MAX_PARENTS - 2);
            }
            parents.push(own);
        }
        let lamport = parents
            .iter()
            .map(|&i| self.metas[i as usize].lc)
            .max()
            .map_or(0, |lc| lc + 1);
        let mut parent_ids: Vec<EventId> = parents.iter().map(|&i| self.ids[i as usize]).collect();
        parent_ids.sort();
        UnsignedEvent {
            timeline: Some(self.genesis_id),
            author,
            seq,
            lamport,
            parents: parent_ids,
            kind: kind.to_string(),
            body,
        }
    }

    /// The next local event of `key`, signed and checked: [`prepare`](Self::prepare) then
    /// [`UnsignedEvent::sign_checked`]. Every local write (API, gateway, CLI, emissaries) is
    /// made here, so a node never signs an event its peers would refuse; insert the result like
    /// any other event (which runs the checks that need the causal past).
    pub fn sign_local(
        &self,
        key: &crate::crypto::Keypair,
        kind: &str,
        body: ipld_core::ipld::Ipld,
    ) -> Result<SignedEvent, EventError> {
        self.prepare(key.author(), kind, body).sign_checked(key)
    }

    // ----------------------------------------------------------------- insertion

    /// Inserts one event and brings the state up to date.
    pub fn insert(
        &mut self,
        ev: SignedEvent,
        src: &dyn BlockSource,
    ) -> Result<Inserted, TimelineError> {
        let out = self.insert_deferred(ev)?;
        self.catch_up(src)?;
        Ok(out)
    }

    /// Inserts many events, then brings the state up to date once (one rewind at most, however
    /// many late events the batch holds). Returns one result per event.
    pub fn insert_batch(
        &mut self,
        evs: impl IntoIterator<Item = SignedEvent>,
        src: &dyn BlockSource,
    ) -> Result<Vec<Result<Inserted, EventError>>, TimelineError> {
        let out = self.insert_batch_deferred(evs, src)?;
        self.catch_up(src)?;
        Ok(out)
    }

    /// As [`insert_batch`](Self::insert_batch) but leaves the final fold to the caller (a node
    /// folds at most every few hundred milliseconds, so a burst of late gossip costs one rewind,
    /// not one per message).
    pub fn insert_batch_deferred(
        &mut self,
        evs: impl IntoIterator<Item = SignedEvent>,
        src: &dyn BlockSource,
    ) -> Result<Vec<Result<Inserted, EventError>>, TimelineError> {
        let mut out = vec![];
        for e in evs {
            out.push(self.insert_deferred(e));
            // Fold forward while the blocks are still cached, unless a rewind is pending (the
            // rewind then reads older blocks from `src` anyway) or the owner folds in slices
            // (a whole fold here would block it for as long as slicing was meant to avoid).
            if self.rewind_from.is_none()
                && self.auto_fold
                && !self.slicing
                && self.unfolded() >= RECENT_BLOCK_CACHE / 2
            {
                self.catch_up(src)?;
            }
        }
        Ok(out)
    }

    /// Indexes an event without touching the machine state; call [`catch_up`](Self::catch_up)
    /// before reading the state.
    pub fn insert_deferred(&mut self, ev: SignedEvent) -> Result<Inserted, EventError> {
        let res = self.try_insert(ev);
        if let Err(e) = &res {
            *self.stats.rejected.entry(e.code()).or_insert(0) += 1;
        }
        res
    }

    fn try_insert(&mut self, ev: SignedEvent) -> Result<Inserted, EventError> {
        let id = ev.id();
        if self.index_of(&id).is_some() || self.pending.contains_key(&id) {
            return Ok(Inserted::Duplicate);
        }
        if ev.timeline != Some(self.genesis_id) {
            return Err(EventError::WrongTimeline {
                found: ev
                    .timeline
                    .map_or_else(|| "none (a genesis)".into(), |t| t.to_string()),
            });
        }
        let missing: Vec<EventId> = ev
            .parents
            .iter()
            .filter(|p| self.index_of(p).is_none())
            .copied()
            .collect();
        if !missing.is_empty() {
            if self.pending.len() >= MAX_PENDING_EVENTS
                || self.pending_bytes + ev.bytes().len() > MAX_PENDING_BYTES
            {
                return Err(EventError::PendingFull {
                    events: self.pending.len(),
                });
            }
            if self.is_stranger(&ev.author) {
                let held = self.stranger_pending.get(&ev.author).copied().unwrap_or(0);
                if held >= MAX_PENDING_PER_STRANGER
                    || self.stranger_pending_total >= MAX_PENDING_FROM_STRANGERS
                {
                    return Err(EventError::StrangerQuota {
                        author: ev.author.to_string(),
                        held,
                        total: self.stranger_pending_total,
                    });
                }
                *self.stranger_pending.entry(ev.author).or_insert(0) += 1;
                self.stranger_pending_total += 1;
                self.stranger_ids.insert(id);
            }
            for m in &missing {
                self.waiting.entry(*m).or_default().push(id);
            }
            self.pending_bytes += ev.bytes().len();
            self.pending.insert(id, ev);
            return Ok(Inserted::Pending { missing });
        }
        let past = self.validate(&ev)?;
        self.index(&ev, past);
        self.cache(ev);
        let released = self.release_pending(id);
        Ok(Inserted::Indexed { released })
    }

    /// Indexes the pending events that `id` completes, transitively.
    fn release_pending(&mut self, id: EventId) -> Vec<EventId> {
        let mut released = vec![];
        let mut ready = vec![id];
        while let Some(done) = ready.pop() {
            let Some(children) = self.waiting.remove(&done) else {
                continue;
            };
            for child in children {
                let complete = self
                    .pending
                    .get(&child)
                    .is_some_and(|c| c.parents.iter().all(|p| self.index_of(p).is_some()));
                if !complete {
                    continue;
                }
                let ev = self.pending.remove(&child).expect("checked");
                self.pending_bytes -= ev.bytes().len();
                if self.stranger_ids.remove(&child)
                    && let Some(n) = self.stranger_pending.get_mut(&ev.author)
                {
                    *n -= 1;
                    self.stranger_pending_total -= 1;
                    if *n == 0 {
                        self.stranger_pending.remove(&ev.author);
                    }
                }
                match self.validate(&ev) {
                    Ok(past) => {
                        self.index(&ev, past);
                        self.cache(ev);
                        released.push(child);
                        ready.push(child);
                    }
                    Err(e) => {
                        *self.stats.rejected.entry(e.code()).or_insert(0) += 1;
                        self.dropped_pending.push((child, e));
                    }
                }
            }
        }
        released
    }

    /// Contextual checks for an event whose parents are all indexed. Returns what its past
    /// holds of the admin's chain.
    fn validate(&self, ev: &SignedEvent) -> Result<AdminPast, EventError> {
        let author = self.author_index.get(&ev.author).copied();
        let mut expected_lc = 0;
        let mut tip: Option<u32> = None;
        let mut own_previous = None;
        let mut has_own_previous = ev.seq == 1;
        for p in &ev.parents {
            let pi = self.index_of(p).expect("parents checked present");
            let m = self.metas[pi as usize];
            expected_lc = expected_lc.max(m.lc + 1);
            if tip.is_none_or(|t| self.admin_key(m.admin_tip) > self.admin_key(t)) {
                tip = Some(m.admin_tip);
            }
            if Some(m.author) == author {
                if m.sq >= ev.seq {
                    return Err(EventError::BadSeq {
                        sq: ev.seq,
                        why: "a parent by the same author has an equal or higher sq",
                    });
                }
                if m.sq + 1 == ev.seq {
                    has_own_previous = true;
                    own_previous = Some(pi);
                }
            }
        }
        if !has_own_previous {
            return Err(EventError::BadSeq {
                sq: ev.seq,
                why: "the author's previous event is not a parent",
            });
        }
        if ev.lamport != expected_lc && !self.any_lamport {
            return Err(EventError::BadLamport {
                found: ev.lamport,
                expected: expected_lc,
            });
        }
        let is_admin = ev.author == self.membership.admin();
        let past = if is_admin {
            // The admin's own membership is that of its own chain (its previous event's),
            // whatever other branch a parent may carry.
            AdminPast {
                tip: None,
                version: own_previous.map_or(0, |i| self.metas[i as usize].version),
            }
        } else {
            // Every event but the genesis has the genesis (the admin's first) in its past.
            let tip = tip.ok_or(EventError::UnknownAuthor(ev.author.to_string()))?;
            let version = self.metas[tip as usize].version;
            if self.membership.role_at(&ev.author, version).is_none() {
                return Err(EventError::UnknownAuthor(ev.author.to_string()));
            }
            AdminPast {
                tip: Some(tip),
                version,
            }
        };
        // Votes move the final/1 committee, so their body is checked there; under lc-cid/1 a
        // `vote` is one more event of a kind the order does not read (as it always was).
        if ev.kind == kind::VOTE && self.fin.is_some() {
            VoteOp::parse(&ev.body)?;
        }
        if ev.kind == kind::MEMBER {
            if !is_admin {
                return Err(EventError::NotAdmin);
            }
            let op = MemberOp::parse(&ev.body)?;
            let target = match op {
                MemberOp::Add(k, _) | MemberOp::Remove(k) => k,
            };
            if target == self.membership.admin() {
                return Err(EventError::BadBody {
                    kind: kind::MEMBER.into(),
                    why: "the admin's membership cannot change".into(),
                });
            }
        }
        Ok(past)
    }

    /// The admin event at `idx` in the order of "the newest in a past".
    fn admin_key(&self, idx: u32) -> AdminKey {
        (self.metas[idx as usize].sq, self.ids[idx as usize])
    }

    /// The highest admin `sq` in the past of the event at `idx` (its own, for an admin event).
    fn admin_seen(&self, idx: u32) -> u64 {
        self.metas[self.metas[idx as usize].admin_tip as usize].sq
    }

    fn intern_author(&mut self, a: AuthorId) -> u32 {
        if let Some(&i) = self.author_index.get(&a) {
            return i;
        }
        let i = self.authors.len() as u32;
        self.authors.push(a);
        self.author_index.insert(a, i);
        self.chains.push(vec![]);
        i
    }

    fn key(&self, idx: u32) -> OrderKey {
        (self.metas[idx as usize].lc, self.ids[idx as usize])
    }

    fn rank(&self, idx: u32) -> Rank {
        let tier = self.fin.as_ref().map_or(0, |f| f.tier(idx));
        let lc = if self.order_without_lamport {
            0
        } else {
            self.metas[idx as usize].lc
        };
        (tier, lc, self.ids[idx as usize])
    }

    fn lower_bound(&self, rank: &Rank) -> usize {
        self.order.partition_point(|&i| self.rank(i) < *rank)
    }

    /// Ordered events after the last folded one.
    /// True when the state lags the order (events indexed but not folded, or a rewind due).
    pub fn needs_catch_up(&self) -> bool {
        self.rewind_from.is_some() || self.unfolded() > 0
    }

    fn unfolded(&self) -> usize {
        match self.applied_key {
            None => self.order.len(),
            Some(k) => self.order.len() - self.lower_bound(&k) - 1,
        }
    }

    fn mark_rewind(&mut self, key: Rank) {
        if self.applied_key.is_some_and(|a| key <= a) {
            self.rewind_from = Some(self.rewind_from.map_or(key, |r| r.min(key)));
        }
        // Checkpoints at or after `key` are stale from this moment, not from the next fold:
        // the change goes into the checkpoint log now, so the store commits it together with
        // the event that made them stale. (With the fold deferred, a crash between that commit
        // and the fold would otherwise leave a stale checkpoint for the next open to trust.)
        self.drop_checkpoints_from(&key);
    }

    /// Forgets the checkpoints at or after `key` and tells the store. Under `final/1` only
    /// checkpoints after the final prefix go stale, and the store holds none of those.
    fn drop_checkpoints_from(&mut self, key: &Rank) {
        self.dense.retain(|(k, _)| k < key);
        let stale = self.checkpoints.split_off(key);
        if !stale.is_empty() && self.fin.is_none() {
            self.checkpoint_log.push(CheckpointChange::DropFrom {
                key: order_key(key),
            });
        }
        debug_assert!(
            self.fin.is_none() || stale.keys().all(|r| r.0 == TENTATIVE),
            "a final checkpoint went stale"
        );
    }

    fn excluded(&self, idx: u32) -> bool {
        if let Some(f) = &self.fin
            && let Some(final_excluded) = f.final_exclusion(idx)
        {
            return final_excluded;
        }
        self.excluded_tentatively(idx)
    }

    /// Exclusion decided by every event held: an author's events from its lowest forked `sq`
    /// on, and a removed member's events the admin had not seen. Under `final/1` this is the
    /// rule for tentative events only; a final event's exclusion is fixed by the final prefix.
    fn excluded_tentatively(&self, idx: u32) -> bool {
        let m = self.metas[idx as usize];
        if self.forks.get(&m.author).is_some_and(|&f| m.sq >= f) {
            return true;
        }
        let admin_seen = self.admin_seen(idx);
        self.removals.get(&m.author).is_some_and(|rs| {
            rs.iter()
                .any(|&(seen, admin_sq)| m.sq > seen && admin_seen < admin_sq)
        })
    }

    /// Adds a validated event (parents indexed) to every index.
    fn index(&mut self, ev: &SignedEvent, past: AdminPast) {
        let id = ev.id();
        let author = self.intern_author(ev.author);
        let idx = self.ids.len() as u32;
        let is_admin = ev.author == self.membership.admin();
        let member_op = (is_admin && ev.kind == kind::MEMBER)
            .then(|| MemberOp::parse(&ev.body).ok())
            .flatten();
        let version = match &member_op {
            Some(op) => self.membership.record(past.version, ev.seq, op),
            None => past.version,
        };
        if is_admin {
            self.membership.note_admin_event(ev.seq, id, version);
        }
        let parents_start = self.parents_arena.len() as u32;
        for p in &ev.parents {
            let pi = self.index_of(p).expect("validated: parents indexed");
            self.parents_arena.push(pi);
            self.heads.remove(p);
        }
        self.ids.push(id);
        self.metas.push(Meta {
            lc: ev.lamport,
            sq: ev.seq,
            admin_tip: past.tip.unwrap_or(idx),
            version,
            author,
            parents_start,
            parents_len: ev.parents.len() as u8,
        });
        self.by_id.insert(&self.ids, idx);
        self.heads.insert(id);
        let key = self.key(idx);
        if ev.kind != kind::HEARTBEAT && self.newest_work.is_none_or(|w| key > w) {
            self.newest_work = Some(key);
        }
        if self.fin.is_some() {
            self.final_on_index(idx, ev.kind != kind::HEARTBEAT);
            if ev.kind == kind::HEARTBEAT {
                self.note_attestation(id, ev.author, &ev.body);
            }
            self.note_committee_event(idx, ev);
        }

        let rank = self.rank(idx);
        let pos = self.lower_bound(&rank);
        self.order.insert(pos, idx);
        self.mark_rewind(rank);
        if pos < self.settled {
            self.stats.frontier_regressions += 1;
            self.settled = pos;
        }

        // Author chain and equivocation.
        let chain = &mut self.chains[author as usize];
        let slot = (ev.seq - 1) as usize;
        if slot < chain.len() {
            let first = chain[slot];
            self.equivocations.push(Equivocation {
                author: ev.author,
                seq: ev.seq,
                first: self.ids[first as usize],
                second: id,
            });
            let fork = self.forks.entry(author).or_insert(ev.seq);
            *fork = (*fork).min(ev.seq);
            let fork = *fork;
            // Final events keep their exclusion (final/1): only tentative ones can change.
            let from = self.chains[author as usize][(fork - 1) as usize..]
                .iter()
                .filter(|&&i| !self.is_final_idx(i))
                .map(|&i| self.rank(i))
                .min();
            if let Some(k) = from {
                self.mark_rewind(k);
            }
        } else {
            debug_assert_eq!(slot, chain.len(), "validated: previous sq is a parent");
            chain.push(idx);
        }

        if let Some(op) = member_op {
            if let MemberOp::Remove(k) = op {
                self.record_removal(idx, k, ev.seq);
            }
            self.refresh_views();
        }

        self.update_view(idx);
        if self.fin.is_none() {
            self.advance_frontier();
        }
    }

    /// Whether the event at `idx` is in the final prefix (never under `lc-cid/1`).
    fn is_final_idx(&self, idx: u32) -> bool {
        self.fin.as_ref().is_some_and(|f| f.tier(idx) != TENTATIVE)
    }

    /// `member remove K` at event `idx`: freeze K at the removal's causal past.
    fn record_removal(&mut self, idx: u32, removed: AuthorId, admin_sq: u64) {
        // Interned even if K has written nothing here yet: an event of K made concurrently
        // with the removal (its past lacks it) still passes the membership check and must be
        // excluded on every replica, whichever of the two arrived first.
        let k = self.intern_author(removed);
        let seen = self.highest_in_past(idx, k);
        self.removals.entry(k).or_default().push((seen, admin_sq));
        if let Some(f) = &mut self.fin {
            f.removal_at.insert(idx, (k, seen, admin_sq));
        }
        let from = self.chains[k as usize]
            .iter()
            .skip(seen as usize)
            .filter(|&&i| self.admin_seen(i) < admin_sq)
            .filter(|&&i| !self.is_final_idx(i))
            .map(|&i| self.rank(i))
            .min();
        if let Some(key) = from {
            self.mark_rewind(key);
        }
    }

    /// Highest sq of `author` in the causal past of `idx` (a full walk; removals are rare).
    fn highest_in_past(&self, idx: u32, author: u32) -> u64 {
        let mut best = 0;
        let mut seen = HashSet::new();
        let mut stack = vec![idx];
        while let Some(i) = stack.pop() {
            if !seen.insert(i) {
                continue;
            }
            let m = self.metas[i as usize];
            if m.author == author {
                best = best.max(m.sq);
            }
            stack.extend(self.parents(i));
        }
        best
    }

    fn parents(&self, idx: u32) -> &[u32] {
        let m = self.metas[idx as usize];
        &self.parents_arena
            [m.parents_start as usize..m.parents_start as usize + m.parents_len as usize]
    }

    fn cache(&mut self, ev: SignedEvent) {
        let id = ev.id();
        if self.recent.insert(id, ev).is_none() {
            self.recent_fifo.push_back(id);
        }
        while self.recent_fifo.len() > RECENT_BLOCK_CACHE {
            if let Some(old) = self.recent_fifo.pop_front() {
                self.recent.remove(&old);
            }
        }
    }

    // ----------------------------------------------------------------- settled frontier

    /// Makes `views` match the current members: new members start with an empty view.
    fn refresh_views(&mut self) {
        let current: BTreeSet<AuthorId> = self
            .membership
            .current()
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        self.views.retain(|a, _| current.contains(a));
        for a in current {
            if !self.views.contains_key(&a) {
                let mut view = MemberView::default();
                // A member that already wrote (e.g. re-added) starts from its latest event.
                if let Some(&ai) = self.author_index.get(&a)
                    && let Some(&latest) = self.chains[ai as usize].last()
                {
                    view.latest = Some(latest);
                    self.extend_view(&mut view, latest);
                }
                self.views.insert(a, view);
            }
        }
    }

    fn update_view(&mut self, idx: u32) {
        let author = self.authors[self.metas[idx as usize].author as usize];
        let Some(mut view) = self.views.remove(&author) else {
            return;
        };
        view.latest = Some(idx);
        self.extend_view(&mut view, idx);
        self.views.insert(author, view);
    }

    /// Adds the causal past of `idx` to `view.vv`. Events already covered by the old vector are
    /// not walked: their whole past is covered already (each event contains its author's
    /// previous one, so coverage of `(a, sq)` implies coverage of its past).
    fn extend_view(&mut self, view: &mut MemberView, idx: u32) {
        let covered = |vv: &Vec<u64>, a: u32, sq: u64| vv.get(a as usize).is_some_and(|&s| s >= sq);
        // Visited marks: one u32 per event, a new stamp per walk (cheaper than a hash set; a
        // member's first event walks the whole history).
        self.visit_stamp = self.visit_stamp.wrapping_add(1);
        if self.visit_stamp == 0 {
            self.visit_marks.fill(0);
            self.visit_stamp = 1;
        }
        self.visit_marks.resize(self.metas.len(), 0);
        let mut updates: Vec<(u32, u64)> = vec![];
        let mut stack = vec![idx];
        while let Some(i) = stack.pop() {
            let m = self.metas[i as usize];
            if covered(&view.vv, m.author, m.sq) || self.visit_marks[i as usize] == self.visit_stamp
            {
                continue;
            }
            self.visit_marks[i as usize] = self.visit_stamp;
            updates.push((m.author, m.sq));
            stack.extend(self.parents(i));
        }
        if view.vv.len() < self.authors.len() {
            view.vv.resize(self.authors.len(), 0);
        }
        for (a, sq) in updates {
            let slot = &mut view.vv[a as usize];
            *slot = (*slot).max(sq);
        }
    }

    fn covered_by_all(&self, idx: u32) -> Option<AuthorId> {
        let m = self.metas[idx as usize];
        self.views
            .iter()
            .find(|(_, v)| v.vv.get(m.author as usize).is_none_or(|&s| s < m.sq))
            .map(|(a, _)| *a)
    }

    fn advance_frontier(&mut self) {
        while self.settled < self.order.len()
            && self.covered_by_all(self.order[self.settled]).is_none()
        {
            self.settled += 1;
        }
    }

    /// The settled frontier and who holds it.
    pub fn frontier(&self) -> Frontier {
        let last = self
            .settled
            .checked_sub(1)
            .map(|p| self.order[p])
            .map(|i| (self.ids[i as usize], self.metas[i as usize].lc));
        let first_unsettled = self.order.get(self.settled).copied();
        // Under `final/1` the frontier is the final prefix, which no single member holds.
        let held_by = first_unsettled
            .filter(|_| self.fin.is_none())
            .and_then(|i| {
                let who = self.covered_by_all(i)?;
                let role = self.membership.role_now(&who)?;
                let latest = self.views[&who].latest.map(|l| self.metas[l as usize].lc);
                Some((who, role, latest))
            });
        Frontier {
            settled: self.settled as u64,
            last,
            held_by,
            first_unsettled: first_unsettled
                .map(|i| (self.ids[i as usize], self.metas[i as usize].lc)),
        }
    }

    /// Whether a heartbeat by `member` is owed: its latest event leaves out an event of
    /// another author that sorts at or before the newest event that is not a heartbeat. The
    /// frontier waits until every member's latest event contains an event (the containment is
    /// what keeps a settled event out of reach of a later `member remove`, which excludes only
    /// what the admin had not seen), so the heartbeats that sort among the writes must be
    /// covered too, not only the writes. A heartbeat names the newest head, so it sorts after
    /// every event it covers and owes nobody anything: once every node holds the newest
    /// write, heartbeats stop (an idle mesh goes quiet), and every member's latest event then
    /// contains every event up to that write, which is therefore settled. False for a key
    /// that is not a current member.
    ///
    /// Cost: the events of other authors past `member`'s view (an idle mesh has at most the
    /// last heartbeat of each member there).
    ///
    /// Under `final/1`: whether `member` is in the committee deciding finality and an event
    /// that is not a heartbeat is not final yet. Rounds advance only as a quorum of the
    /// committee writes, so every member publishes (at most once per interval) until the
    /// work is final; then the mesh goes quiet.
    pub fn owes_heartbeat(&self, member: &AuthorId) -> bool {
        if let Some(f) = &self.fin {
            return f.owes_heartbeat(member);
        }
        let (Some(view), Some(newest_work)) = (self.views.get(member), self.newest_work) else {
            return false;
        };
        let me = self.author_index.get(member).copied();
        self.chains.iter().enumerate().any(|(a, chain)| {
            let covered = view.vv.get(a).copied().unwrap_or(0) as usize;
            Some(a as u32) != me
                && chain
                    .iter()
                    .skip(covered)
                    .any(|&i| self.key(i) <= newest_work)
        })
    }

    /// Whether an event is behind the settled frontier.
    pub fn is_settled(&self, id: &EventId) -> bool {
        self.position_of(id).is_some_and(|p| p < self.settled)
    }

    // ----------------------------------------------------------------- state

    /// Brings the machine state up to date with the order: rewinds to the newest checkpoint
    /// before the first changed key if needed, then applies every event after the last folded
    /// one, taking a checkpoint every `checkpoint_interval` positions.
    pub fn catch_up(&mut self, src: &dyn BlockSource) -> Result<(), TimelineError> {
        self.catch_up_until(None, src)
    }

    /// As [`catch_up`](Self::catch_up), but folds only the events whose key is `<= until`:
    /// the state at that point of the order **over the whole event set** (exclusions decided
    /// by every event held, including those sorting later). `chorus verify` compares stored
    /// checkpoints with this.
    pub fn catch_up_until(
        &mut self,
        until: Option<OrderKey>,
        src: &dyn BlockSource,
    ) -> Result<(), TimelineError> {
        self.fold_some(until, usize::MAX, src)?;
        if until.is_none() {
            self.slicing = false;
        }
        Ok(())
    }

    /// One slice of [`catch_up`](Self::catch_up): rewinds if needed, then applies at most
    /// `positions` positions of the order. Returns whether the state is now up to date. A
    /// node folds a long rewind in slices so that it can answer between them; until this
    /// returns true, [`state`](Self::state) is a state *part-way* through the order and must
    /// not be read as the timeline's.
    pub fn catch_up_step(
        &mut self,
        positions: usize,
        src: &dyn BlockSource,
    ) -> Result<bool, TimelineError> {
        self.fold_some(None, positions, src)?;
        self.slicing = self.needs_catch_up();
        Ok(!self.slicing)
    }

    /// Whether `insert_batch_deferred` may fold forward on its own once
    /// `RECENT_BLOCK_CACHE / 2` events wait (on by default: it folds while their blocks are
    /// still cached). A node that folds in slices turns it off, or an ingest of a few catch-up
    /// pages would fold thousands of positions in one go.
    pub fn set_auto_fold(&mut self, on: bool) {
        self.auto_fold = on;
    }

    /// The number of events in the order and the heads at the last complete fold: what
    /// [`state`](Self::state) and [`state_hash`](Self::state_hash) are the state of while
    /// [`needs_catch_up`](Self::needs_catch_up) (a caller that shows the state shows these
    /// with it).
    pub fn folded_at(&self) -> (usize, Vec<EventId>) {
        if self.needs_catch_up() {
            self.folded_at.clone()
        } else {
            (self.len(), self.heads())
        }
    }

    /// Whether an event that sorts before what is folded arrived since the last fold step:
    /// the next step rewinds to a checkpoint before it.
    pub fn rewind_pending(&self) -> bool {
        self.rewind_from.is_some()
    }

    /// Restores the newest checkpoint whose state is at hand (in memory, or read back from
    /// `src`), else the genesis state; checkpoints whose bytes are gone are forgotten. The
    /// restored state takes over the machine's memos of the one it replaces.
    fn restore_newest_checkpoint(&mut self, src: &dyn BlockSource) {
        loop {
            let Some((key, ck)) = self.checkpoints.iter_mut().next_back() else {
                let mut fresh = self.machine.init(&self.genesis);
                self.machine.carry_over(&self.state, &mut fresh);
                self.state = fresh;
                self.applied_key = None;
                break;
            };
            let key = *key;
            let state = match (&ck.live, &ck.bytes) {
                (Some(s), _) => Some(s.clone()),
                (None, Some(b)) => self.machine.decode_state(b).ok(),
                (None, None) => src
                    .get_checkpoint(&order_key(&key))
                    .and_then(|b| self.machine.decode_state(&b).ok()),
            };
            match state {
                Some(mut state) => {
                    self.machine.carry_over(&self.state, &mut state);
                    ck.live = Some(state.clone());
                    self.state = state;
                    self.applied_key = Some(key);
                    break;
                }
                None => {
                    self.checkpoints.remove(&key);
                }
            }
        }
    }

    /// How many positions a [`catch_up`](Self::catch_up) would apply now, at most: from the
    /// newest checkpoint or dense state before a pending rewind (or from the genesis when
    /// there is none), else from the last folded position.
    pub fn fold_cost(&self) -> usize {
        let from = match self.rewind_from {
            Some(from) => {
                let persisted = self.checkpoints.range(..from).next_back().map(|(k, _)| k);
                let dense = self.dense.iter().rev().map(|(k, _)| k).find(|k| **k < from);
                match persisted.max(dense) {
                    Some(k) => self.lower_bound(k) + 1,
                    None => 0,
                }
            }
            None => return self.unfolded(),
        };
        self.order.len().saturating_sub(from)
    }

    fn fold_some(
        &mut self,
        until: Option<OrderKey>,
        positions: usize,
        src: &dyn BlockSource,
    ) -> Result<(), TimelineError> {
        if self.fin.is_some() {
            // The order the fold walks: final segments decided by the events held so far.
            self.advance_finality();
        }
        if let Some(from) = self.rewind_from.take() {
            self.stats.rewinds += 1;
            self.drop_checkpoints_from(&from);
            // A dense state newer than every checkpoint: the closest restore point.
            let newest = self.checkpoints.keys().next_back();
            let dense = self
                .dense
                .back()
                .filter(|(k, _)| newest.is_none_or(|n| k > n));
            match dense {
                Some((key, state)) => {
                    self.state = state.clone();
                    self.applied_key = Some(*key);
                }
                None => {
                    self.restore_newest_checkpoint(src);
                    // The fold takes the dense states after the restore point again: drop
                    // them, so the queue stays in key order.
                    let restored = self.applied_key;
                    self.dense
                        .retain(|(k, _)| restored.is_some_and(|r| *k <= r));
                }
            }
        }
        let start = match self.applied_key {
            None => 0,
            Some(k) => self.lower_bound(&k) + 1,
        };
        let end = match until {
            None => self.order.len(),
            Some(k) => {
                let until = match self.index_of(&k.1) {
                    Some(i) => self.rank(i),
                    None => (self.fin.as_ref().map_or(0, |_| TENTATIVE), k.0, k.1),
                };
                self.order.partition_point(|&i| self.rank(i) <= until)
            }
        };
        let end = end.min(start.saturating_add(positions));
        for pos in start..end.max(start) {
            let idx = self.order[pos];
            let key = self.rank(idx);
            if !self.excluded(idx) {
                let id = self.ids[idx as usize];
                let ev = self.load(&id, src)?;
                self.machine.apply(
                    &mut self.state,
                    &Applied {
                        id,
                        author: ev.author,
                        seq: ev.seq,
                        lamport: ev.lamport,
                        kind: &ev.kind,
                        body: &ev.body,
                    },
                );
                self.stats.applied += 1;
                let (word, bit) = (idx as usize / 64, 1u64 << (idx % 64));
                if self.applied_once.len() <= word {
                    self.applied_once.resize(word + 1, 0);
                }
                if self.applied_once[word] & bit != 0 {
                    self.stats.reapplied += 1;
                }
                self.applied_once[word] |= bit;
            }
            self.applied_key = Some(key);
            if (pos as u64 + 1).is_multiple_of(self.checkpoint_interval) {
                self.take_checkpoint(key);
            } else if let Some(every) = self.machine.dense_checkpoint_every()
                && self.fin.is_none()
                && (pos as u64 + 1).is_multiple_of(every)
            {
                if self.dense.len() == DENSE_CHECKPOINTS {
                    self.dense.pop_front();
                }
                self.dense.push_back((key, self.state.clone()));
            }
        }
        if !self.needs_catch_up() {
            self.folded_at = (self.len(), self.heads());
        }
        Ok(())
    }

    fn take_checkpoint(&mut self, key: Rank) {
        let bytes = Arc::new(self.machine.encode_state(&self.state));
        if let Some((_, newest)) = self.checkpoints.iter_mut().next_back() {
            newest.live = None;
        }
        self.checkpoints.insert(
            key,
            Checkpoint {
                bytes: Some(bytes.clone()),
                live: Some(self.state.clone()),
                hash: OnceLock::new(),
            },
        );
        self.evict_checkpoint_bytes();
        // Under `final/1` a checkpoint after the final prefix may go stale as segments are
        // decided: it stays in memory, and the store gets it once its position is final.
        if self.fin.is_none() || key.0 != TENTATIVE {
            self.checkpoint_log.push(CheckpointChange::Put {
                key: order_key(&key),
                state: bytes,
            });
        }
    }

    fn evict_checkpoint_bytes(&mut self) {
        let keep = self.checkpoints.len().saturating_sub(CHECKPOINTS_IN_MEMORY);
        for ck in self.checkpoints.values_mut().take(keep) {
            ck.bytes = None;
            ck.live = None;
        }
    }

    // ----------------------------------------------------------------- restore

    /// Rebuilds a timeline from a store: `events` in total order (genesis first, already
    /// verified when stored), `checkpoints` as persisted. The state starts from the newest
    /// checkpoint whose key is in the order; only events after it are applied.
    pub fn restore(
        genesis: SignedEvent,
        machine: M,
        events: impl IntoIterator<Item = SignedEvent>,
        checkpoints: impl IntoIterator<Item = (OrderKey, Vec<u8>)>,
        src: &dyn BlockSource,
    ) -> Result<Self, TimelineError> {
        let mut tl = Timeline::new(genesis, machine)?;
        for ev in events {
            if ev.id() == tl.genesis_id {
                continue;
            }
            match tl.try_insert(ev)? {
                Inserted::Indexed { .. } | Inserted::Duplicate => {}
                Inserted::Pending { missing } => {
                    return Err(TimelineError::MissingBlock(missing[0]));
                }
            }
        }
        if tl.fin.is_some() {
            // Decide the final prefix first: persisted checkpoints are final positions.
            tl.advance_finality();
        }
        tl.rewind_from = None;
        for (key, bytes) in checkpoints {
            let Some(idx) = tl.index_of(&key.1) else {
                continue;
            };
            let rank = tl.rank(idx);
            if tl.fin.is_some() && rank.0 == TENTATIVE {
                // Not final (yet) on this replica's events: not to be trusted.
                continue;
            }
            tl.checkpoints.insert(
                rank,
                Checkpoint {
                    bytes: Some(Arc::new(bytes)),
                    live: None,
                    hash: OnceLock::new(),
                },
            );
        }
        let newest = tl
            .checkpoints
            .iter()
            .next_back()
            .and_then(|(k, c)| Some((*k, c.bytes.clone()?)));
        if let Some((key, bytes)) = newest
            && tl.applied_key.is_none_or(|a| a < key)
        {
            tl.state = tl
                .machine
                .decode_state(&bytes)
                .map_err(|e| EventError::BadBody {
                    kind: kind::CHECKPOINT.into(),
                    why: e.to_string(),
                })?;
            tl.applied_key = Some(key);
        }
        tl.evict_checkpoint_bytes();
        tl.catch_up(src)?;
        Ok(tl)
    }
}
