//! A replica: one data directory = node key + redb store + the in-memory timeline folded from
//! it. This is the synchronous core of a node; the CLI uses it directly, the node actor (next
//! milestone) owns one.
//!
//! Data directory layout:
//! ```text
//! <dir>/node.key      32-byte Ed25519 seed, hex, mode 0600
//! <dir>/chorus.redb   the store (docs/design/store.md)
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use chorus_core::{
    EventError, EventId, Machine, SignedEvent, Timeline, UnsignedEvent,
    crypto::Keypair,
    event::{check_content, kind},
    genesis::{Genesis, GenesisBody},
    timeline::{BlockSource, Inserted, OrderKey, TimelineError},
};
use ipld_core::ipld::Ipld;

use crate::store::{Batch, Pruned, Store, StoreError};

pub const STORE_FILE: &str = "chorus.redb";
pub const KEY_FILE: &str = "node.key";

/// Replica failures.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("node key: {0}")]
    Key(String),
    #[error("invalid event: {0}")]
    Invalid(#[from] EventError),
    /// A broken invariant of this replica (a bug), never the input's fault.
    #[error("internal error: {0}")]
    Internal(String),
    /// A local write that a peer would refuse: nothing of it was signed or stored but the
    /// first `stored` items of its batch (see [`Replica::append_batch`]).
    #[error("{}", refused_message(*index, *stored, error))]
    Refused {
        index: usize,
        stored: usize,
        error: EventError,
    },
}

impl From<ReplicaError> for chorus_core::proto::WriteError {
    fn from(e: ReplicaError) -> Self {
        use chorus_core::proto::WriteError;
        match e {
            ReplicaError::Refused {
                error: EventError::UnknownAuthor(_),
                ..
            } => WriteError::NotMember(e.to_string()),
            ReplicaError::Refused { ref error, .. } => WriteError::Refused {
                error: error.clone(),
                message: e.to_string(),
            },
            other => WriteError::Failed(other.to_string()),
        }
    }
}

fn refused_message(index: usize, stored: usize, error: &EventError) -> String {
    let what = match error {
        EventError::UnknownAuthor(_) => {
            "this node's key is not a member of the timeline (the admin adds it: chorus member add KEY)"
                .to_string()
        }
        e => e.to_string(),
    };
    let stored = match stored {
        0 => "nothing was stored".to_string(),
        n => format!("the {n} event(s) before it were stored"),
    };
    format!(
        "not written: event {index} of the request would be refused by every peer: {what}; {stored}"
    )
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReplicaError + '_ {
    move |err| ReplicaError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// Reads the node key of `dir`, if there is one.
pub fn read_key(dir: &Path) -> Result<Option<Keypair>, ReplicaError> {
    let path = dir.join(KEY_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = fs::read_to_string(&path).map_err(io(&path))?;
    let bytes = hex::decode(text.trim()).map_err(|e| ReplicaError::Key(e.to_string()))?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| ReplicaError::Key(format!("{} is not a 32-byte hex seed", path.display())))?;
    Ok(Some(Keypair::from_seed(seed)))
}

/// Reads the node key of `dir`, creating the directory and a fresh key (from the OS RNG) if
/// needed.
pub fn load_or_create_key(dir: &Path) -> Result<Keypair, ReplicaError> {
    if let Some(k) = read_key(dir)? {
        return Ok(k);
    }
    fs::create_dir_all(dir).map_err(io(dir))?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| ReplicaError::Key(e.to_string()))?;
    let key = Keypair::from_seed(seed);
    let path = dir.join(KEY_FILE);
    write_private(&path, hex::encode(seed).as_bytes()).map_err(io(&path))?;
    Ok(key)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Counts of an ingest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Indexed now (including pending events they released).
    pub new: u64,
    pub duplicate: u64,
    /// Held for missing parents (persisted; applied when the parents come).
    pub pending: u64,
    /// Rejected, per error code, with the first few ids and reasons.
    pub rejected: BTreeMap<&'static str, u64>,
    pub rejected_examples: Vec<(EventId, String)>,
    /// Positions in the ingested batch of the events rejected (so a node can charge the peer
    /// that sent each one).
    pub rejected_at: Vec<usize>,
    /// Ids indexed by this ingest, including released pending events.
    pub indexed: Vec<EventId>,
}

impl IngestReport {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
    fn reject(&mut self, id: EventId, e: &EventError) {
        *self.rejected.entry(e.code()).or_insert(0) += 1;
        if self.rejected_examples.len() < 20 {
            self.rejected_examples.push((id, e.to_string()));
        }
    }
}

/// Blocks a fold may need while a batch is being inserted: the batch itself (not yet
/// committed), then the store's events and persisted pending events.
struct Overlay<'a> {
    batch: HashMap<EventId, Arc<[u8]>>,
    store: &'a Store,
}

impl BlockSource for Overlay<'_> {
    fn get_checkpoint(&self, key: &chorus_core::timeline::OrderKey) -> Option<Arc<Vec<u8>>> {
        self.store.get_checkpoint(key)
    }
    fn get_block(&self, id: &EventId) -> Option<Arc<[u8]>> {
        self.batch
            .get(id)
            .cloned()
            .or_else(|| self.store.get_block(id))
            .or_else(|| self.store.get_pending(id))
    }
}

impl<'a> Overlay<'a> {
    fn new(store: &'a Store, events: &[SignedEvent]) -> Self {
        Overlay {
            batch: events.iter().map(|e| (e.id(), e.bytes_arc())).collect(),
            store,
        }
    }
}

/// See the module docs.
pub struct Replica<M: Machine> {
    dir: PathBuf,
    store: Store,
    timeline: Timeline<M>,
    key: Keypair,
    /// Leave folding the state to [`Replica::fold`] (see [`Replica::set_deferred_fold`]).
    deferred_fold: bool,
}

impl<M: Machine> Replica<M> {
    /// Creates a new timeline in `dir`: the node key becomes admin and first anchor.
    pub fn init(
        dir: &Path,
        genesis_body: impl FnOnce(&Keypair) -> GenesisBody,
        machine: M,
    ) -> Result<Self, ReplicaError> {
        let store_path = dir.join(STORE_FILE);
        if store_path.exists() {
            return Err(StoreError::AlreadyInitialised(store_path.display().to_string()).into());
        }
        let key = load_or_create_key(dir)?;
        let body = genesis_body(&key);
        let genesis = UnsignedEvent {
            timeline: None,
            author: key.author(),
            seq: 1,
            lamport: 0,
            parents: vec![],
            kind: kind::GENESIS.into(),
            body: Genesis::body_ipld(&body),
        }
        .sign(&key);
        // Round-trip through the decoder so a bad body is caught before anything is written.
        let genesis = SignedEvent::decode(genesis.bytes())?;
        Self::create_from_genesis(dir, genesis, machine)
    }

    /// Creates a replica of an existing timeline from its genesis (`chorus import` into an empty
    /// directory, and later `chorus join`).
    pub fn create_from_genesis(
        dir: &Path,
        genesis: SignedEvent,
        machine: M,
    ) -> Result<Self, ReplicaError> {
        Self::fresh(dir, genesis, machine, |g, m| {
            Store::create(&dir.join(STORE_FILE), g, m)
        })
    }

    /// A replica holding only `genesis`, its key from `dir`, its store made by `create`.
    fn fresh(
        dir: &Path,
        genesis: SignedEvent,
        machine: M,
        create: impl FnOnce(&SignedEvent, &str) -> Result<Store, StoreError>,
    ) -> Result<Self, ReplicaError> {
        let key = load_or_create_key(dir)?;
        let timeline = Timeline::new(genesis.clone(), machine)?;
        let store = create(&genesis, timeline.machine().id())?;
        Ok(Replica {
            dir: dir.to_path_buf(),
            store,
            timeline,
            key,
            deferred_fold: false,
        })
    }

    /// A light node's replica: the node key and the genesis come from `dir` (made by `chorus
    /// join` or `init`), the timeline itself lives in memory ([`Store::create_in_memory`]) and is
    /// caught up from full nodes. Nothing of it is written to `dir`.
    pub fn in_memory(dir: &Path, machine: M) -> Result<Self, ReplicaError> {
        let genesis = Store::open(&dir.join(STORE_FILE))?.genesis()?;
        Self::fresh(dir, genesis, machine, Store::create_in_memory)
    }

    /// Where a light node may forget the past: the newest checkpoint inside the settled prefix
    /// of the order (no member can add an event before it any more, so the state never has to
    /// be rebuilt from further back). `None` while nothing with a checkpoint is settled.
    pub fn light_horizon(&self) -> Option<OrderKey> {
        let (id, lc) = self.timeline.frontier().last?;
        let last: OrderKey = (lc, id);
        if self.timeline.needs_catch_up() {
            return None;
        }
        self.timeline
            .checkpoint_keys()
            .into_iter()
            .rev()
            .find(|k| *k <= last)
    }

    /// Light nodes: deletes the blocks and checkpoints behind [`light_horizon`](Self::light_horizon).
    pub fn prune(&mut self) -> Result<(Option<OrderKey>, Pruned), ReplicaError> {
        let Some(h) = self.light_horizon() else {
            return Ok((None, Pruned::default()));
        };
        Ok((Some(h), self.store.prune_through(h)?))
    }

    /// Opens a replica: integrity check, then the state from the newest checkpoint (only the
    /// events after it are applied), then the persisted pending events.
    pub fn open(dir: &Path, machine: M) -> Result<Self, ReplicaError> {
        let store = Store::open(&dir.join(STORE_FILE))?;
        store.integrity_check()?;
        Self::open_checked(dir, store, machine)
    }

    /// Opens an already-opened and checked store.
    pub fn open_checked(dir: &Path, store: Store, machine: M) -> Result<Self, ReplicaError> {
        let key = load_or_create_key(dir)?;
        let genesis = store.genesis()?;
        let mut first_error: Option<StoreError> = None;
        let events = store.ordered_events().map_while(|r| match r {
            Ok(ev) => Some(ev),
            Err(e) => {
                first_error = Some(e);
                None
            }
        });
        let timeline = Timeline::restore(genesis, machine, events, store.checkpoints()?, &store);
        if let Some(e) = first_error {
            return Err(e.into());
        }
        let mut replica = Replica {
            dir: dir.to_path_buf(),
            store,
            timeline: timeline?,
            key,
            deferred_fold: false,
        };
        let pending = replica.store.pending()?;
        if !pending.is_empty() {
            replica.ingest(pending)?;
        }
        // Checkpoints taken while catching up since the newest stored one.
        replica.persist(Batch::default(), false)?;
        Ok(replica)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn key(&self) -> &Keypair {
        &self.key
    }
    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn timeline(&self) -> &Timeline<M> {
        &self.timeline
    }

    /// In deferred mode ingest and append index and commit events but do not fold the machine
    /// state; the owner calls [`fold`](Self::fold) before reading the state, and
    /// periodically. Events are durable either way; only the state computation waits.
    pub fn set_deferred_fold(&mut self, on: bool) {
        self.deferred_fold = on;
    }

    /// Brings the state up to date and persists the checkpoints taken meanwhile.
    pub fn fold(&mut self) -> Result<(), ReplicaError> {
        if !self.timeline.needs_catch_up() {
            return Ok(());
        }
        self.timeline.catch_up(&self.store)?;
        self.persist(Batch::default(), false)
    }

    /// Signs and appends one local event; returns after it is durable.
    pub fn append(&mut self, kind: &str, body: Ipld) -> Result<SignedEvent, ReplicaError> {
        Ok(self.append_batch(vec![(kind.to_string(), body)])?.remove(0))
    }

    /// Signs and appends several local events, each on top of the previous, and commits them in
    /// one durable transaction (group commit). All are acknowledged together.
    ///
    /// Every event is made by [`Timeline::sign_local`], so it passes the checks a peer runs;
    /// one that would not is refused ([`ReplicaError::Refused`]) and never signed or stored.
    /// The kind and body of every item are checked before the first is signed, so a batch
    /// refused for what the writer chose leaves the replica unchanged. Only a check that
    /// depends on the timeline (this key's membership, the counters' range) can refuse an item
    /// after earlier ones were indexed; those earlier ones are then committed, so store and
    /// timeline agree, and the error says how many were.
    pub fn append_batch(
        &mut self,
        items: Vec<(String, Ipld)>,
    ) -> Result<Vec<SignedEvent>, ReplicaError> {
        for (index, (k, body)) in items.iter().enumerate() {
            check_content(k, body).map_err(|error| ReplicaError::Refused {
                index,
                stored: 0,
                error,
            })?;
        }
        let mut out = Vec::with_capacity(items.len());
        for (index, (k, body)) in items.into_iter().enumerate() {
            let failed = match self.sign_and_insert(&k, body) {
                Ok(ev) => {
                    out.push(ev);
                    continue;
                }
                Err(e) => e,
            };
            let stored = out.len();
            if stored > 0 {
                self.commit_local(out)?;
            }
            return Err(match failed {
                ReplicaError::Invalid(error) => ReplicaError::Refused {
                    index,
                    stored,
                    error,
                },
                other => other,
            });
        }
        self.commit_local(out)
    }

    /// One local event, signed, checked and indexed (not yet committed). A refusal is
    /// `ReplicaError::Invalid`.
    fn sign_and_insert(&mut self, kind: &str, body: Ipld) -> Result<SignedEvent, ReplicaError> {
        let ev = self.timeline.sign_local(&self.key, kind, body)?;
        match self.timeline.insert_deferred(ev.clone())? {
            Inserted::Indexed { .. } => Ok(ev),
            // Its parents are this timeline's heads and its sq is new: neither can happen.
            other => Err(ReplicaError::Internal(format!(
                "a local event was not indexed ({other:?})"
            ))),
        }
    }

    /// Folds (unless deferred) and commits indexed local events in one transaction.
    fn commit_local(&mut self, out: Vec<SignedEvent>) -> Result<Vec<SignedEvent>, ReplicaError> {
        // Not committed yet: the overlay serves the batch to the fold.
        if !self.deferred_fold {
            self.timeline.catch_up(&Overlay::new(&self.store, &out))?;
        }
        let has_member = out.iter().any(|e| e.kind == kind::MEMBER);
        self.persist(
            Batch {
                blocks: out.clone(),
                ..Batch::default()
            },
            has_member,
        )?;
        Ok(out)
    }

    /// Ingests foreign events (import today, peers tomorrow) through the same path as local
    /// ones, then commits once.
    pub fn ingest(&mut self, events: Vec<SignedEvent>) -> Result<IngestReport, ReplicaError> {
        let mut report = IngestReport::default();
        let mut batch = Batch::default();
        let mut has_member = false;
        // The batch is not committed before the fold runs; the overlay serves its blocks.
        let overlay = Overlay::new(&self.store, &events);
        let results = if self.deferred_fold {
            self.timeline
                .insert_batch_deferred(events.iter().cloned(), &overlay)?
        } else {
            self.timeline
                .insert_batch(events.iter().cloned(), &overlay)?
        };
        for (pos, (ev, res)) in events.into_iter().zip(results).enumerate() {
            match res {
                Ok(Inserted::Indexed { released }) => {
                    report.new += 1 + released.len() as u64;
                    report.indexed.push(ev.id());
                    report.indexed.extend(released.iter().copied());
                    has_member |= ev.kind == kind::MEMBER;
                    for id in released {
                        let r = self.timeline.load(&id, &overlay)?;
                        has_member |= r.kind == kind::MEMBER;
                        batch.pending_del.push(id);
                        batch.blocks.push(r);
                    }
                    batch.blocks.push(ev);
                }
                Ok(Inserted::Pending { .. }) => {
                    report.pending += 1;
                    batch.pending_put.push(ev);
                }
                Ok(Inserted::Duplicate) => report.duplicate += 1,
                Err(e) => {
                    report.reject(ev.id(), &e);
                    report.rejected_at.push(pos);
                }
            }
        }
        for (id, e) in self.timeline.take_dropped_pending() {
            report.reject(id, &e);
            batch.pending_del.push(id);
        }
        // Events released from pending in this batch were counted as pending when they arrived
        // earlier in the same batch; they are new now.
        let released_now: std::collections::BTreeSet<EventId> =
            batch.pending_del.iter().copied().collect();
        let before = batch.pending_put.len();
        batch
            .pending_put
            .retain(|e| !released_now.contains(&e.id()));
        report.pending -= (before - batch.pending_put.len()) as u64;
        self.persist(batch, has_member)?;
        Ok(report)
    }

    /// Rewrites the store's membership mirror from the timeline (after `chorus repair` took
    /// events out).
    pub fn rewrite_membership_mirror(&mut self) -> Result<(), ReplicaError> {
        self.persist(Batch::default(), true)
    }

    fn persist(&mut self, mut batch: Batch, membership_changed: bool) -> Result<(), ReplicaError> {
        batch.checkpoints = self.timeline.take_checkpoint_changes();
        if !batch.blocks.is_empty() {
            batch.heads = Some(self.timeline.heads());
        }
        if membership_changed {
            batch.membership = Some(
                self.timeline
                    .membership()
                    .current()
                    .into_iter()
                    .map(|(a, r)| (a, r.as_str()))
                    .collect(),
            );
        }
        self.store.commit(batch)?;
        Ok(())
    }
}
