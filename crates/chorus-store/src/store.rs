//! The durable store of one replica: one redb file. Writes go through [`Store::commit`], one
//! transaction per batch, committed with `Durability::Immediate` (fsync) before it returns — an
//! append is acknowledged only after that. Batching many events into one commit is the group
//! commit that makes durable appends fast.

use std::{path::Path, sync::Arc};

use chorus_core::{
    EventId, SignedEvent,
    timeline::{BlockSource, CheckpointChange, OrderKey},
};
use redb::{
    Database, ReadableDatabase, ReadableMultimapTable, ReadableTable, ReadableTableMetadata,
};

use crate::tables::*;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    #[error("store is corrupt at block {}: {why}", block.map_or("-".to_string(), |b| b.to_string()))]
    Corrupt { block: Option<EventId>, why: String },
    /// An event no peer accepts, stored by an older build that signed local events without
    /// the format checks (see `crate::quarantine`).
    #[error(
        "the store holds event {block}, which every peer refuses ({error}); an older build \
         signed it without the format checks. `chorus repair` moves it and the events that \
         depend on it to a quarantine file and loses nothing else (docs/design/store.md, \
         \"Quarantine\")"
    )]
    Refused {
        block: EventId,
        error: chorus_core::EventError,
    },
    #[error("store schema version {found}, this build reads {expected}")]
    Schema { found: u64, expected: u64 },
    #[error("no Chorus store at {0} (run `chorus init` or `chorus import`)")]
    NotInitialised(String),
    #[error("a Chorus store already exists at {0}")]
    AlreadyInitialised(String),
}

pub(crate) fn dberr<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
}

/// What the integrity check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrityReport {
    /// Events (blocks) in the total order.
    pub events: u64,
    pub heads: u64,
    pub pending: u64,
    pub checkpoints: u64,
}

/// One replica's redb file.
pub struct Store {
    /// Shared with [`StoreReader`]s: redb serves read transactions beside the one writer.
    pub(crate) db: Arc<Database>,
    genesis: EventId,
    machine: String,
    /// `meta-v1` `genesis-signed-here`: made by `chorus init` (see
    /// `chorus_core::storage::Storage::own_chain_complete`).
    own_chain_complete: bool,
    /// Held in memory only ([`Store::create_in_memory`]): gone when the process ends.
    in_memory: bool,
    /// The key may have signed events this store never saw (set by the replica from the data
    /// directory's marker; see `Storage::own_chain_elsewhere`).
    own_chain_elsewhere: bool,
}

/// Events read per read transaction when streaming the order.
const LOAD_PAGE: usize = 8192;

/// redb page cache. redb defaults to 1 GiB, which a node holding a large timeline would fill
/// (the open-time integrity check reads every block); 32 MiB keeps a replica's resident memory
/// bounded while still caching the hot tail of the order.
pub const STORE_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// redb page cache of an in-memory store (light nodes): its pages are in memory already, so
/// the cache only duplicates them.
pub const MEMORY_STORE_CACHE_BYTES: usize = 1024 * 1024;

/// redb page cache of a light node's store on disk ([`Store::open_with_cache`]): a light node
/// is meant for small machines (a light node's whole process stays within 64 MB), and it
/// reads the order's tail, not pages of history for peers.
pub const LIGHT_STORE_CACHE_BYTES: usize = 4 * 1024 * 1024;

// `MAX_PRUNE_PER_CALL`: most blocks one `Store::prune_through` call deletes (one transaction;
// a light node prunes on its timer, so a long backlog is cleared over several ticks without a
// long stall). Defined with the `Storage` trait in chorus-core.
pub use chorus_core::storage::{Batch, MAX_PRUNE_PER_CALL, Pruned};

fn builder(cache_bytes: usize) -> redb::Builder {
    let mut b = Database::builder();
    b.set_cache_size(cache_bytes);
    b
}

impl Store {
    /// Creates a new store holding `genesis`.
    pub fn create(path: &Path, genesis: &SignedEvent, machine: &str) -> Result<Store, StoreError> {
        if path.exists() {
            return Err(StoreError::AlreadyInitialised(path.display().to_string()));
        }
        let db = builder(STORE_CACHE_BYTES).create(path).map_err(dberr)?;
        Self::create_in(db, genesis, machine, false)
    }

    /// A store held in memory only (light nodes: nothing of the timeline touches the disk, and
    /// a restarted light node catches up from full nodes again).
    pub fn create_in_memory(genesis: &SignedEvent, machine: &str) -> Result<Store, StoreError> {
        let mut b = Database::builder();
        b.set_cache_size(MEMORY_STORE_CACHE_BYTES);
        let db = b
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(dberr)?;
        Self::create_in(db, genesis, machine, true)
    }

    fn create_in(
        db: Database,
        genesis: &SignedEvent,
        machine: &str,
        in_memory: bool,
    ) -> Result<Store, StoreError> {
        let txn = db.begin_write().map_err(dberr)?;
        {
            let mut meta = txn.open_table(META).map_err(dberr)?;
            meta.insert("schema", SCHEMA_VERSION.to_le_bytes().as_slice())
                .map_err(dberr)?;
            meta.insert("genesis", genesis.id().0.as_slice())
                .map_err(dberr)?;
            meta.insert("machine", machine.as_bytes()).map_err(dberr)?;
            // Create every table so readers never meet a missing one.
            txn.open_table(EVENTS).map_err(dberr)?;
            txn.open_table(IDS).map_err(dberr)?;
            txn.open_multimap_table(AUTHORS).map_err(dberr)?;
            txn.open_table(HEADS).map_err(dberr)?;
            txn.open_table(PENDING).map_err(dberr)?;
            txn.open_table(CHECKPOINTS).map_err(dberr)?;
            txn.open_table(MEMBERSHIP).map_err(dberr)?;
            txn.open_table(PEERS).map_err(dberr)?;
        }
        txn.commit().map_err(dberr)?;
        let store = Store {
            db: Arc::new(db),
            genesis: genesis.id(),
            machine: machine.to_string(),
            own_chain_complete: false,
            in_memory,
            own_chain_elsewhere: false,
        };
        store.commit(Batch {
            blocks: vec![genesis.clone()],
            heads: Some(vec![genesis.id()]),
            ..Batch::default()
        })?;
        Ok(store)
    }

    /// Opens an existing store and checks its schema version (running numbered migrations when
    /// there are any; version 1 has none).
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_with_cache(path, STORE_CACHE_BYTES)
    }

    /// [`Store::open`] with a page cache of `cache_bytes` (a light node's:
    /// [`LIGHT_STORE_CACHE_BYTES`]).
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::NotInitialised(path.display().to_string()));
        }
        let db = builder(cache_bytes).open(path).map_err(dberr)?;
        let txn = db.begin_read().map_err(dberr)?;
        let meta = txn.open_table(META).map_err(dberr)?;
        let get = |k: &str| -> Result<Vec<u8>, StoreError> {
            Ok(meta
                .get(k)
                .map_err(dberr)?
                .ok_or_else(|| StoreError::Corrupt {
                    block: None,
                    why: format!("meta-v1 has no {k:?}"),
                })?
                .value()
                .to_vec())
        };
        let schema =
            u64::from_le_bytes(get("schema")?.try_into().map_err(|_| StoreError::Corrupt {
                block: None,
                why: "schema is not 8 bytes".into(),
            })?);
        if schema != SCHEMA_VERSION {
            return Err(StoreError::Schema {
                found: schema,
                expected: SCHEMA_VERSION,
            });
        }
        let genesis = EventId(
            get("genesis")?
                .try_into()
                .map_err(|_| StoreError::Corrupt {
                    block: None,
                    why: "genesis id is not 32 bytes".into(),
                })?,
        );
        let machine = String::from_utf8(get("machine")?).map_err(|_| StoreError::Corrupt {
            block: None,
            why: "machine id is not utf-8".into(),
        })?;
        let own_chain_complete = meta
            .get("own-chain-complete")
            .map_err(dberr)?
            .is_some_and(|v| v.value() == [1]);
        drop(meta);
        drop(txn);
        Ok(Store {
            db: Arc::new(db),
            genesis,
            machine,
            own_chain_complete,
            in_memory: false,
            own_chain_elsewhere: false,
        })
    }

    /// See `Storage::own_chain_elsewhere` (the replica reads it from its data directory).
    pub fn set_own_chain_elsewhere(&mut self, elsewhere: bool) {
        self.own_chain_elsewhere = elsewhere;
    }

    /// A `meta-v1` flag (`[1]`), e.g. `light-on-disk`.
    pub fn flag(&self, name: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let meta = txn.open_table(META).map_err(dberr)?;
        Ok(meta
            .get(name)
            .map_err(dberr)?
            .is_some_and(|v| v.value() == [1]))
    }

    /// Sets a `meta-v1` flag, durably.
    pub fn set_flag(&self, name: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(dberr)?;
        {
            let mut meta = txn.open_table(META).map_err(dberr)?;
            meta.insert(name, [1u8].as_slice()).map_err(dberr)?;
        }
        txn.commit().map_err(dberr)
    }

    /// Whether what is committed survives the process (false for [`Store::create_in_memory`]).
    pub fn is_durable(&self) -> bool {
        !self.in_memory
    }

    /// Records that this store holds every event its node's key signs on this timeline: the
    /// key signed the genesis into it (`chorus init`), or was made together with it (see
    /// `chorus_core::storage::Storage::own_chain_complete`). Only right after creating it.
    pub fn mark_own_chain_complete(&mut self) -> Result<(), StoreError> {
        self.set_flag("own-chain-complete")?;
        self.own_chain_complete = true;
        Ok(())
    }

    pub fn genesis_id(&self) -> EventId {
        self.genesis
    }

    pub fn machine_id(&self) -> &str {
        &self.machine
    }

    /// Writes a batch in one durable transaction.
    pub fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(dberr)?;
        {
            let mut events = txn.open_table(EVENTS).map_err(dberr)?;
            let mut ids = txn.open_table(IDS).map_err(dberr)?;
            let mut authors = txn.open_multimap_table(AUTHORS).map_err(dberr)?;
            for ev in &batch.blocks {
                let id = ev.id();
                events
                    .insert(order_key(ev.lamport, &id.0).as_slice(), ev.bytes())
                    .map_err(dberr)?;
                ids.insert(id.0.as_slice(), ev.lamport.to_be_bytes().as_slice())
                    .map_err(dberr)?;
                authors
                    .insert(author_key(&ev.author.0, ev.seq).as_slice(), id.0.as_slice())
                    .map_err(dberr)?;
            }
            let mut pending = txn.open_table(PENDING).map_err(dberr)?;
            for id in &batch.pending_del {
                pending.remove(id.0.as_slice()).map_err(dberr)?;
            }
            for ev in &batch.pending_put {
                pending
                    .insert(ev.id().0.as_slice(), ev.bytes())
                    .map_err(dberr)?;
            }
            if let Some(new_heads) = &batch.heads {
                let mut heads = txn.open_table(HEADS).map_err(dberr)?;
                heads.retain(|_, _| false).map_err(dberr)?;
                for h in new_heads {
                    heads.insert(h.0.as_slice(), ()).map_err(dberr)?;
                }
            }
            let mut cks = txn.open_table(CHECKPOINTS).map_err(dberr)?;
            for change in &batch.checkpoints {
                match change {
                    CheckpointChange::Put { key, state } => {
                        cks.insert(order_key(key.0, &key.1.0).as_slice(), state.as_slice())
                            .map_err(dberr)?;
                    }
                    CheckpointChange::DropFrom { key } => {
                        let from = order_key(key.0, &key.1.0);
                        cks.retain(|k, _| k < from.as_slice()).map_err(dberr)?;
                    }
                }
            }
            if let Some(members) = &batch.membership {
                let mut m = txn.open_table(MEMBERSHIP).map_err(dberr)?;
                m.retain(|_, _| false).map_err(dberr)?;
                for (a, role) in members {
                    m.insert(a.0.as_slice(), *role).map_err(dberr)?;
                }
            }
        }
        txn.commit().map_err(dberr)?;
        Ok(())
    }

    /// Deletes the blocks ordered at or before `horizon` (never the genesis) with their index
    /// rows, and the checkpoints before it; the checkpoint *at* `horizon` stays, so the state
    /// can still be rebuilt from there with the blocks after it. Light nodes only: a full node
    /// keeps everything. At most [`MAX_PRUNE_PER_CALL`] blocks per call.
    pub fn prune_through(&self, horizon: OrderKey) -> Result<Pruned, StoreError> {
        let end = order_key(horizon.0, &horizon.1.0);
        let mut out = Pruned::default();
        let txn = self.db.begin_write().map_err(dberr)?;
        {
            let mut events = txn.open_table(EVENTS).map_err(dberr)?;
            let mut doomed: Vec<(Vec<u8>, SignedEvent)> = vec![];
            for item in events.range::<&[u8]>(..=end.as_slice()).map_err(dberr)? {
                let (k, v) = item.map_err(dberr)?;
                let ev =
                    SignedEvent::decode_trusted(v.value()).map_err(|e| StoreError::Corrupt {
                        block: split_order_key(k.value()).map(|(_, id)| EventId(id)),
                        why: e.to_string(),
                    })?;
                if ev.id() == self.genesis {
                    continue;
                }
                if doomed.len() == MAX_PRUNE_PER_CALL {
                    out.more = true;
                    break;
                }
                doomed.push((k.value().to_vec(), ev));
            }
            let mut ids = txn.open_table(IDS).map_err(dberr)?;
            let mut authors = txn.open_multimap_table(AUTHORS).map_err(dberr)?;
            for (k, ev) in &doomed {
                let id = ev.id();
                events.remove(k.as_slice()).map_err(dberr)?;
                ids.remove(id.0.as_slice()).map_err(dberr)?;
                authors
                    .remove(author_key(&ev.author.0, ev.seq).as_slice(), id.0.as_slice())
                    .map_err(dberr)?;
            }
            out.blocks = doomed.len() as u64;
            let mut cks = txn.open_table(CHECKPOINTS).map_err(dberr)?;
            let before = cks.len().map_err(dberr)?;
            cks.retain(|k, _| k >= end.as_slice()).map_err(dberr)?;
            out.checkpoints = before - cks.len().map_err(dberr)?;
        }
        txn.commit().map_err(dberr)?;
        Ok(out)
    }

    /// The genesis block.
    pub fn genesis(&self) -> Result<SignedEvent, StoreError> {
        let bytes = self
            .get_block(&self.genesis)
            .ok_or_else(|| StoreError::Corrupt {
                block: Some(self.genesis),
                why: "genesis block missing".into(),
            })?;
        SignedEvent::decode_trusted(&bytes).map_err(|e| StoreError::Corrupt {
            block: Some(self.genesis),
            why: e.to_string(),
        })
    }

    /// Order keys and blocks after `after` (exclusive), at most `limit`, in one read
    /// transaction (a sequential scan of `events-v1`).
    pub(crate) fn ordered_page(
        &self,
        after: Option<OrderKey>,
        limit: usize,
    ) -> Result<Vec<(OrderKey, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let events = txn.open_table(EVENTS).map_err(dberr)?;
        let start = after.map(|k| order_key(k.0, &k.1.0));
        let iter = match &start {
            Some(s) => events.range::<&[u8]>(s.as_slice()..).map_err(dberr)?,
            None => events.iter().map_err(dberr)?,
        };
        let mut out = Vec::with_capacity(limit.min(LOAD_PAGE));
        for item in iter {
            let (k, v) = item.map_err(dberr)?;
            let (lc, id) = split_order_key(k.value()).ok_or_else(|| StoreError::Corrupt {
                block: None,
                why: "events key is not 40 bytes".into(),
            })?;
            let key = (lc, EventId(id));
            if Some(key) == after {
                continue;
            }
            out.push((key, v.value().to_vec()));
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    /// Streams every ordered event (decoded without re-verifying signatures) in total order,
    /// one read transaction per page.
    pub fn ordered_events(&self) -> impl Iterator<Item = Result<SignedEvent, StoreError>> + '_ {
        let mut after: Option<OrderKey> = None;
        let mut page: std::vec::IntoIter<(OrderKey, Vec<u8>)> = Vec::new().into_iter();
        let mut done = false;
        std::iter::from_fn(move || {
            loop {
                if let Some((key, bytes)) = page.next() {
                    after = Some(key);
                    // The integrity check found the bytes hash to their id: a block that does
                    // not decode was stored as it is, by a build without the local checks.
                    return Some(SignedEvent::decode_trusted(&bytes).map_err(|error| {
                        StoreError::Refused {
                            block: key.1,
                            error,
                        }
                    }));
                }
                if done {
                    return None;
                }
                match self.ordered_page(after, LOAD_PAGE) {
                    Ok(p) => {
                        done = p.len() < LOAD_PAGE;
                        page = p.into_iter();
                    }
                    Err(e) => {
                        done = true;
                        return Some(Err(e));
                    }
                }
            }
        })
    }

    /// Persisted checkpoints, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<(OrderKey, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let t = txn.open_table(CHECKPOINTS).map_err(dberr)?;
        let mut out = vec![];
        for item in t.iter().map_err(dberr)? {
            let (k, v) = item.map_err(dberr)?;
            let (lc, id) = split_order_key(k.value()).ok_or_else(|| StoreError::Corrupt {
                block: None,
                why: "checkpoint key is not 40 bytes".into(),
            })?;
            out.push(((lc, EventId(id)), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Events waiting for parents.
    pub fn pending(&self) -> Result<Vec<SignedEvent>, StoreError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let t = txn.open_table(PENDING).map_err(dberr)?;
        let mut out = vec![];
        for item in t.iter().map_err(dberr)? {
            let (k, v) = item.map_err(dberr)?;
            let id = EventId(k.value().try_into().map_err(|_| StoreError::Corrupt {
                block: None,
                why: "pending key is not 32 bytes".into(),
            })?);
            let ev = SignedEvent::decode_trusted(v.value()).map_err(|e| StoreError::Corrupt {
                block: Some(id),
                why: e.to_string(),
            })?;
            out.push(ev);
        }
        Ok(out)
    }

    /// A persisted pending block.
    pub fn get_pending(&self, id: &EventId) -> Option<Arc<[u8]>> {
        let txn = self.db.begin_read().ok()?;
        let t = txn.open_table(PENDING).ok()?;
        let v = t.get(id.0.as_slice()).ok()??;
        Some(v.value().into())
    }

    /// Heads as stored.
    pub fn heads(&self) -> Result<Vec<EventId>, StoreError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        heads_in(&txn.open_table(HEADS).map_err(dberr)?)
    }

    /// Checks the store's invariants without trusting anything, by sequential scans: every
    /// block hashes to the id in its key; `ids-v1` and `events-v1` describe the same set of
    /// (id, lc) pairs; the author index names each event exactly once; every head and the genesis
    /// are present. Set equality is checked with counts and order-independent checksums; on a
    /// mismatch a slower pass finds the first bad block to report.
    pub fn integrity_check(&self) -> Result<IntegrityReport, StoreError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let corrupt = |block: Option<EventId>, why: &str| StoreError::Corrupt {
            block,
            why: why.to_string(),
        };
        let events = txn.open_table(EVENTS).map_err(dberr)?;
        let ids = txn.open_table(IDS).map_err(dberr)?;
        let (mut n_events, mut sum_events, mut sum_ids_of_events) = (0u64, 0u64, 0u64);
        for item in events.iter().map_err(dberr)? {
            let (k, v) = item.map_err(dberr)?;
            let (lc, id) = split_order_key(k.value())
                .ok_or_else(|| corrupt(None, "events key is not 40 bytes"))?;
            if EventId::of_block(v.value()).0 != id {
                return Err(corrupt(
                    Some(EventId(id)),
                    "block bytes do not hash to its id",
                ));
            }
            n_events += 1;
            sum_events = sum_events.wrapping_add(pair_sum(&id, lc));
            sum_ids_of_events = sum_ids_of_events.wrapping_add(pair_sum(&id, 0));
        }
        let (mut n_ids, mut sum_ids) = (0u64, 0u64);
        for item in ids.iter().map_err(dberr)? {
            let (k, v) = item.map_err(dberr)?;
            let id: [u8; 32] = k
                .value()
                .try_into()
                .map_err(|_| corrupt(None, "ids key is not 32 bytes"))?;
            let lc = u64::from_be_bytes(
                v.value()
                    .try_into()
                    .map_err(|_| corrupt(Some(EventId(id)), "ids value is not 8 bytes"))?,
            );
            n_ids += 1;
            sum_ids = sum_ids.wrapping_add(pair_sum(&id, lc));
        }
        if n_ids != n_events || sum_ids != sum_events {
            // Find the first entry of either table without its counterpart.
            for item in ids.iter().map_err(dberr)? {
                let (k, v) = item.map_err(dberr)?;
                let id: [u8; 32] = k.value().try_into().unwrap_or([0; 32]);
                let lc = u64::from_be_bytes(v.value().try_into().unwrap_or([0; 8]));
                if events
                    .get(order_key(lc, &id).as_slice())
                    .map_err(dberr)?
                    .is_none()
                {
                    return Err(corrupt(Some(EventId(id)), "indexed id has no block"));
                }
            }
            for item in events.iter().map_err(dberr)? {
                let (k, _) = item.map_err(dberr)?;
                let (_, id) = split_order_key(k.value()).unwrap_or((0, [0; 32]));
                if ids.get(id.as_slice()).map_err(dberr)?.is_none() {
                    return Err(corrupt(
                        Some(EventId(id)),
                        "block missing from the id index",
                    ));
                }
            }
            return Err(corrupt(None, "id index and events disagree"));
        }
        let authors = txn.open_multimap_table(AUTHORS).map_err(dberr)?;
        let (mut n_authored, mut sum_authored) = (0u64, 0u64);
        for item in authors.iter().map_err(dberr)? {
            let (_, values) = item.map_err(dberr)?;
            for v in values {
                let v = v.map_err(dberr)?;
                let id: [u8; 32] = v
                    .value()
                    .try_into()
                    .map_err(|_| corrupt(None, "author index value is not 32 bytes"))?;
                n_authored += 1;
                sum_authored = sum_authored.wrapping_add(pair_sum(&id, 0));
            }
        }
        if n_authored != n_events || sum_authored != sum_ids_of_events {
            for item in authors.iter().map_err(dberr)? {
                let (_, values) = item.map_err(dberr)?;
                for v in values {
                    let v = v.map_err(dberr)?;
                    if ids.get(v.value()).map_err(dberr)?.is_none() {
                        let id = v.value().try_into().ok().map(EventId);
                        return Err(corrupt(id, "author index points at a missing block"));
                    }
                }
            }
            return Err(corrupt(None, "author index and events disagree"));
        }
        let heads = txn.open_table(HEADS).map_err(dberr)?;
        for item in heads.iter().map_err(dberr)? {
            let (k, _) = item.map_err(dberr)?;
            if ids.get(k.value()).map_err(dberr)?.is_none() {
                let id = k.value().try_into().ok().map(EventId);
                return Err(corrupt(id, "head has no block"));
            }
        }
        if ids.get(self.genesis.0.as_slice()).map_err(dberr)?.is_none() {
            return Err(corrupt(Some(self.genesis), "genesis block missing"));
        }
        Ok(IntegrityReport {
            events: n_events,
            heads: heads.len().map_err(dberr)?,
            pending: txn
                .open_table(PENDING)
                .map_err(dberr)?
                .len()
                .map_err(dberr)?,
            checkpoints: txn
                .open_table(CHECKPOINTS)
                .map_err(dberr)?
                .len()
                .map_err(dberr)?,
        })
    }
}

/// Order-independent checksum term of an (id, lc) pair: ids are SHA-256 digests, so their
/// first 8 bytes are uniform; lc is mixed in with a SplitMix64 step.
fn pair_sum(id: &[u8; 32], lc: u64) -> u64 {
    let head = u64::from_le_bytes(id[..8].try_into().expect("8 bytes"));
    let mut z = lc.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    head ^ z ^ (z >> 31)
}

impl chorus_core::storage::Storage for Store {
    fn own_chain_complete(&self) -> bool {
        self.own_chain_complete
    }
    fn own_chain_elsewhere(&self) -> bool {
        self.own_chain_elsewhere
    }
    type Error = StoreError;
    fn get_pending(&self, id: &EventId) -> Option<Arc<[u8]>> {
        Store::get_pending(self, id)
    }
    fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
        Store::commit(self, batch)
    }
    fn prune_through(&mut self, horizon: OrderKey) -> Result<Pruned, StoreError> {
        Store::prune_through(self, horizon)
    }
}

impl BlockSource for Store {
    fn get_checkpoint(&self, key: &OrderKey) -> Option<Arc<Vec<u8>>> {
        let txn = self.db.begin_read().ok()?;
        let t = txn.open_table(CHECKPOINTS).ok()?;
        let v = t.get(order_key(key.0, &key.1.0).as_slice()).ok()??;
        Some(Arc::new(v.value().to_vec()))
    }

    fn get_block(&self, id: &EventId) -> Option<Arc<[u8]>> {
        let txn = self.db.begin_read().ok()?;
        let lc = u64::from_be_bytes(
            txn.open_table(IDS)
                .ok()?
                .get(id.0.as_slice())
                .ok()??
                .value()
                .try_into()
                .ok()?,
        );
        let events = txn.open_table(EVENTS).ok()?;
        let v = events.get(order_key(lc, &id.0).as_slice()).ok()??;
        Some(v.value().into())
    }
}

/// Reads a store's committed blocks from another thread (the node's page reader): each
/// [`StoreReader::read`] is one read transaction, a consistent snapshot of what was committed
/// when it began, beside the node's writes.
#[derive(Clone)]
pub struct StoreReader {
    db: Arc<Database>,
}

impl Store {
    /// A reader of this store's committed blocks, for another thread.
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            db: self.db.clone(),
        }
    }
}

impl StoreReader {
    /// Calls `f` with a block lookup over one read snapshot (two B-tree reads a block, no
    /// transaction per block).
    pub fn read<R>(
        &self,
        f: impl FnOnce(&dyn Fn(&EventId) -> Option<Arc<[u8]>>) -> R,
    ) -> Result<R, StoreError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let ids = txn.open_table(IDS).map_err(dberr)?;
        let events = txn.open_table(EVENTS).map_err(dberr)?;
        let block = |id: &EventId| -> Option<Arc<[u8]>> {
            let lc = ids.get(id.0.as_slice()).ok()??;
            let lc = u64::from_be_bytes(lc.value().try_into().ok()?);
            let v = events.get(order_key(lc, &id.0).as_slice()).ok()??;
            Some(v.value().into())
        };
        Ok(f(&block))
    }

    /// One read snapshot of the whole store for a long read beside the node's writes (an
    /// export): the heads and the ordered blocks as committed when it was taken, however long
    /// the reader takes. redb keeps the snapshot's pages until it is dropped, so a snapshot
    /// held open costs the file the space of what was rewritten meanwhile.
    pub fn snapshot(&self) -> Result<StoreSnapshot, StoreError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let events = txn.open_table(EVENTS).map_err(dberr)?;
        let heads = heads_in(&txn.open_table(HEADS).map_err(dberr)?)?;
        let len = events.len().map_err(dberr)?;
        Ok(StoreSnapshot { events, heads, len })
    }
}

/// The heads in a read transaction's heads table.
fn heads_in(t: &redb::ReadOnlyTable<&[u8], ()>) -> Result<Vec<EventId>, StoreError> {
    let mut out = vec![];
    for item in t.iter().map_err(dberr)? {
        let (k, _) = item.map_err(dberr)?;
        out.push(EventId(k.value().try_into().map_err(|_| {
            StoreError::Corrupt {
                block: None,
                why: "head key is not 32 bytes".into(),
            }
        })?));
    }
    Ok(out)
}

/// See [`StoreReader::snapshot`].
pub struct StoreSnapshot {
    events: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    heads: Vec<EventId>,
    len: u64,
}

impl StoreSnapshot {
    /// The heads at the snapshot.
    pub fn heads(&self) -> &[EventId] {
        &self.heads
    }

    /// Ordered events at the snapshot.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every ordered block (id, exact bytes) in (lc, id) order: parents before children.
    pub fn ordered_blocks(
        &self,
    ) -> Result<impl Iterator<Item = Result<(EventId, Vec<u8>), StoreError>> + use<>, StoreError>
    {
        let range = self.events.range::<&[u8]>(..).map_err(dberr)?;
        Ok(range.map(|item| {
            let (k, v) = item.map_err(dberr)?;
            let (_, id) = split_order_key(k.value()).ok_or_else(|| StoreError::Corrupt {
                block: None,
                why: "events key is not 40 bytes".into(),
            })?;
            Ok((EventId(id), v.value().to_vec()))
        }))
    }
}
