//! # What a replica needs from its storage
//!
//! A node's protocol ([`crate::local::Local`], and the node state machine built on it) writes
//! through this small trait, so the same code runs on redb (`chorus-store`'s `Store`, durable)
//! and in memory ([`MemStore`], the simulator's disks and the tests). One [`Batch`] is one
//! atomic, durable commit: a write is acknowledged only once the commit that holds it returned.

use std::{collections::BTreeMap, sync::Arc};

use crate::{
    AuthorId, EventId, SignedEvent,
    timeline::{BlockSource, CheckpointChange, OrderKey},
};

/// Everything written in one transaction.
#[derive(Debug, Default)]
pub struct Batch {
    /// Newly indexed events.
    pub blocks: Vec<SignedEvent>,
    /// Events now waiting for parents.
    pub pending_put: Vec<SignedEvent>,
    /// Pending events that got indexed (or rejected).
    pub pending_del: Vec<EventId>,
    /// The new set of heads, replacing the old one.
    pub heads: Option<Vec<EventId>>,
    pub checkpoints: Vec<CheckpointChange>,
    /// The new membership mirror, replacing the old one.
    pub membership: Option<Vec<(AuthorId, &'static str)>>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
            && self.pending_put.is_empty()
            && self.pending_del.is_empty()
            && self.heads.is_none()
            && self.checkpoints.is_empty()
            && self.membership.is_none()
    }
}

/// What [`Storage::prune_through`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub blocks: u64,
    pub checkpoints: u64,
    /// More blocks are at or before the horizon (the per-call bound was hit).
    pub more: bool,
}

/// Most blocks one [`Storage::prune_through`] deletes (a light node prunes a little per tick).
pub const MAX_PRUNE_PER_CALL: usize = 4_096;

/// A replica's storage: blocks and checkpoints to read ([`BlockSource`]), persisted pending
/// events, and atomic commits.
pub trait Storage: BlockSource {
    type Error: std::error::Error + Send + Sync + 'static;
    /// A persisted pending event's block (an event whose parents had not arrived).
    fn get_pending(&self, id: &EventId) -> Option<Arc<[u8]>>;
    /// Writes `batch` atomically and durably; nothing of it is visible on failure.
    fn commit(&mut self, batch: Batch) -> Result<(), Self::Error>;
    /// Deletes the blocks ordered at or before `horizon` (never the genesis), at most
    /// [`MAX_PRUNE_PER_CALL`] of them, and the checkpoints before it; the checkpoint *at*
    /// `horizon` stays, so the state can be rebuilt from there with the blocks after it.
    fn prune_through(&mut self, horizon: OrderKey) -> Result<Pruned, Self::Error>;
    /// Whether this store holds every event its node's key ever signed because it was there
    /// from the key's first signature: made by `chorus init` (the key signed the genesis into
    /// it) or together with a key created for it. Its node writes at once. Any other store
    /// (`join` or `import` with a key made before, a wiped disk, a light node's memory) proves
    /// nothing about what its key signed elsewhere until it holds own events: its node waits
    /// for its confirmed peers before writing (`proto::node`'s write gate). The genesis alone
    /// proves nothing either: every replica holds it, a wiped admin's too.
    fn own_chain_complete(&self) -> bool {
        false
    }
    /// Whether the node's key may have signed events this store never saw (the same data
    /// directory ran as a light node in memory): then neither [`own_chain_complete`] nor own
    /// events held here tell the next sequence number, and the node waits for its confirmed
    /// peers before writing, as a wiped node does.
    ///
    /// [`own_chain_complete`]: Storage::own_chain_complete
    fn own_chain_elsewhere(&self) -> bool {
        false
    }
}

/// Storage in memory: what the simulator uses as a node's disk (a wipe is
/// [`MemStore::wipe`]), and what tests compare the redb store against. It cannot fail.
#[derive(Debug, Clone)]
pub struct MemStore {
    genesis: EventId,
    /// Indexed blocks by id, with their order key.
    blocks: BTreeMap<EventId, (u64, Arc<[u8]>)>,
    pending: BTreeMap<EventId, Arc<[u8]>>,
    checkpoints: BTreeMap<OrderKey, Arc<Vec<u8>>>,
    heads: Vec<EventId>,
    membership: Vec<(AuthorId, &'static str)>,
    own_chain_complete: bool,
    /// Commits so far (tests count group commits with it).
    commits: u64,
}

/// [`MemStore`] never fails.
#[derive(Debug, thiserror::Error)]
#[error("unreachable: the in-memory store cannot fail")]
pub enum Never {}

impl MemStore {
    /// A store holding only `genesis`.
    pub fn new(genesis: &SignedEvent) -> Self {
        let id = genesis.id();
        MemStore {
            genesis: id,
            blocks: BTreeMap::from([(id, (genesis.lamport, genesis.bytes_arc()))]),
            pending: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
            heads: vec![id],
            membership: vec![],
            own_chain_complete: false,
            commits: 0,
        }
    }

    /// Commits made so far.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// A store there from its key's first signature (see [`Storage::own_chain_complete`]): the
    /// key signed `genesis` into it, or was made with it.
    pub fn with_complete_own_chain(genesis: &SignedEvent) -> Self {
        MemStore {
            own_chain_complete: true,
            ..Self::new(genesis)
        }
    }

    /// Whether the store holds this event, indexed or pending.
    pub fn holds(&self, id: &EventId) -> bool {
        self.blocks.contains_key(id) || self.pending.contains_key(id)
    }

    /// Every block held, indexed or pending, in id order.
    pub fn all_blocks(&self) -> impl Iterator<Item = &Arc<[u8]>> {
        let indexed = self.blocks.values().map(|(_, b)| b);
        indexed.chain(self.pending.values())
    }

    /// The indexed events in the total order (for a restart).
    pub fn ordered_blocks(&self) -> Vec<Arc<[u8]>> {
        let mut v: Vec<(OrderKey, &Arc<[u8]>)> = self
            .blocks
            .iter()
            .map(|(id, (lc, b))| ((*lc, *id), b))
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v.into_iter().map(|(_, b)| b.clone()).collect()
    }

    /// The persisted pending events' blocks.
    pub fn pending_blocks(&self) -> Vec<Arc<[u8]>> {
        self.pending.values().cloned().collect()
    }

    /// The persisted checkpoints, oldest first.
    pub fn checkpoints(&self) -> Vec<(OrderKey, Vec<u8>)> {
        self.checkpoints
            .iter()
            .map(|(k, s)| (*k, s.as_ref().clone()))
            .collect()
    }

    pub fn heads(&self) -> &[EventId] {
        &self.heads
    }

    pub fn membership(&self) -> &[(AuthorId, &'static str)] {
        &self.membership
    }

    /// Number of indexed blocks (the genesis included).
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// A wiped disk: everything but the genesis is gone.
    pub fn wipe(&mut self) {
        let g = self.genesis;
        self.blocks.retain(|id, _| *id == g);
        self.pending.clear();
        self.checkpoints.clear();
        self.heads = vec![g];
        self.membership.clear();
    }
}

impl BlockSource for MemStore {
    fn get_block(&self, id: &EventId) -> Option<Arc<[u8]>> {
        self.blocks.get(id).map(|(_, b)| b.clone())
    }
    fn get_checkpoint(&self, key: &OrderKey) -> Option<Arc<Vec<u8>>> {
        self.checkpoints.get(key).cloned()
    }
}

impl Storage for MemStore {
    type Error = Never;

    fn get_pending(&self, id: &EventId) -> Option<Arc<[u8]>> {
        self.pending.get(id).cloned()
    }

    fn commit(&mut self, batch: Batch) -> Result<(), Never> {
        self.commits += 1;
        for ev in batch.blocks {
            self.blocks.insert(ev.id(), (ev.lamport, ev.bytes_arc()));
        }
        for id in &batch.pending_del {
            self.pending.remove(id);
        }
        for ev in batch.pending_put {
            self.pending.insert(ev.id(), ev.bytes_arc());
        }
        if let Some(h) = batch.heads {
            self.heads = h;
        }
        for change in batch.checkpoints {
            match change {
                CheckpointChange::Put { key, state } => {
                    self.checkpoints.insert(key, state);
                }
                CheckpointChange::DropFrom { key } => {
                    self.checkpoints.retain(|k, _| *k < key);
                }
            }
        }
        if let Some(m) = batch.membership {
            self.membership = m;
        }
        Ok(())
    }

    fn prune_through(&mut self, horizon: OrderKey) -> Result<Pruned, Never> {
        let mut doomed: Vec<OrderKey> = self
            .blocks
            .iter()
            .map(|(id, (lc, _))| (*lc, *id))
            .filter(|k| *k <= horizon && k.1 != self.genesis)
            .collect();
        doomed.sort();
        let more = doomed.len() > MAX_PRUNE_PER_CALL;
        doomed.truncate(MAX_PRUNE_PER_CALL);
        for (_, id) in &doomed {
            self.blocks.remove(id);
        }
        let before = self.checkpoints.len();
        self.checkpoints.retain(|k, _| *k >= horizon);
        Ok(Pruned {
            blocks: doomed.len() as u64,
            checkpoints: (before - self.checkpoints.len()) as u64,
            more,
        })
    }
    fn own_chain_complete(&self) -> bool {
        self.own_chain_complete
    }
}
