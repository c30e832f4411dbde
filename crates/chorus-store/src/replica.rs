//! A replica: one data directory = node key + redb store + the in-memory timeline folded from
//! it. The logic (appends, ingest, fold, pruning) is chorus-core's `Local` over the redb
//! [`Store`]; this type adds the directory: creating, opening and the node key. The CLI uses
//! it directly, the node actor owns one.
//!
//! Data directory layout:
//! ```text
//! <dir>/node.key      32-byte Ed25519 seed, hex, mode 0600
//! <dir>/chorus.redb   the store (docs/design/store.md)
//! ```

use std::{
    fs,
    path::{Path, PathBuf},
};

pub use chorus_core::local::IngestReport;
use chorus_core::{
    EventError, Machine, SignedEvent, Timeline, UnsignedEvent,
    crypto::Keypair,
    event::kind,
    genesis::{Genesis, GenesisBody},
    local::{Local, LocalError, refused_message},
    timeline::{OrderKey, TimelineError},
};
use ipld_core::ipld::Ipld;

use crate::store::{Pruned, Store, StoreError};

pub const STORE_FILE: &str = "chorus.redb";
pub const KEY_FILE: &str = "node.key";
/// Beside a key this directory made and no store used yet (`chorus key` before `chorus join`):
/// the first store made here holds every event the key will sign, so its node writes at once.
/// A key copied in from elsewhere has no such file: its node waits for confirmed peers.
pub const KEY_UNUSED_FILE: &str = "node.key.unused";

/// Beside a store that may not hold every event its key signed: the directory ran as a light
/// node in memory (whose events never reach this store), or as a light node made by a build
/// that kept light nodes in memory only. Its node waits for its confirmed peers before
/// writing (`Storage::own_chain_elsewhere`); once they confirmed, the node holds its whole own
/// chain again and removes the file ([`own_chain_held_again`]).
pub const OWN_CHAIN_ELSEWHERE_FILE: &str = "own-chain.elsewhere";

/// `meta-v1` flag: this store was opened by a light node on disk before (see
/// [`Replica::open_light`]).
const LIGHT_ON_DISK_FLAG: &str = "light-on-disk";
/// Positions a [`Replica::fold_once`] folds between two progress reports.
pub const FOLD_ONCE_STEP: usize = 1024;

/// Writes the [`OWN_CHAIN_ELSEWHERE_FILE`] marker, durably, before the key signs anything the
/// store will not see.
fn mark_own_chain_elsewhere(dir: &Path) -> Result<(), ReplicaError> {
    let path = dir.join(OWN_CHAIN_ELSEWHERE_FILE);
    let f = fs::File::create(&path).map_err(io(&path))?;
    f.sync_all().map_err(io(&path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// The node's peers confirmed its own chain and it holds it: every event its key signs from
/// now on is committed here first, so the [`OWN_CHAIN_ELSEWHERE_FILE`] marker goes.
pub fn own_chain_held_again(dir: &Path) -> Result<(), ReplicaError> {
    let path = dir.join(OWN_CHAIN_ELSEWHERE_FILE);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&path)(e)),
    }
}

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

impl From<LocalError<StoreError>> for ReplicaError {
    fn from(e: LocalError<StoreError>) -> Self {
        match e {
            LocalError::Store(e) => ReplicaError::Store(e),
            LocalError::Timeline(e) => ReplicaError::Timeline(e),
            LocalError::Invalid(e) => ReplicaError::Invalid(e),
            LocalError::Internal(m) => ReplicaError::Internal(m),
            LocalError::Refused {
                index,
                stored,
                error,
            } => ReplicaError::Refused {
                index,
                stored,
                error,
            },
        }
    }
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
    // The marker first: a crash between the two leaves a marker without a key, which the
    // next key made here makes true again.
    let unused = dir.join(KEY_UNUSED_FILE);
    fs::write(&unused, b"").map_err(io(&unused))?;
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

/// See the module docs.
pub struct Replica<M: Machine> {
    dir: PathBuf,
    /// Timeline + store + key: everything but the directory lives in chorus-core's `Local`.
    local: Local<M, Store>,
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
        // The key signed the genesis into this store: it holds every event of the key's chain
        // on this timeline (`Storage::own_chain_complete`).
        Self::fresh(dir, genesis, machine, true, |g, m| {
            let mut store = Store::create(&dir.join(STORE_FILE), g, m)?;
            store.mark_own_chain_complete()?;
            Ok(store)
        })
    }

    /// Creates a replica of an existing timeline from its genesis (`chorus import` into an empty
    /// directory, and later `chorus join`).
    pub fn create_from_genesis(
        dir: &Path,
        genesis: SignedEvent,
        machine: M,
    ) -> Result<Self, ReplicaError> {
        Self::fresh(dir, genesis, machine, true, |g, m| {
            Store::create(&dir.join(STORE_FILE), g, m)
        })
    }

    /// A replica holding only `genesis`, its key from `dir`, its store made by `create`
    /// (`durable`: on disk; `false`: a light node's memory, remade at every start).
    fn fresh(
        dir: &Path,
        genesis: SignedEvent,
        machine: M,
        durable: bool,
        create: impl FnOnce(&SignedEvent, &str) -> Result<Store, StoreError>,
    ) -> Result<Self, ReplicaError> {
        let key = load_or_create_key(dir)?;
        let timeline = Timeline::new(genesis.clone(), machine)?;
        let mut store = create(&genesis, timeline.machine().id())?;
        // A key made in this directory and used by no store yet has signed nothing anywhere:
        // this store will hold all it signs. (Not for a light node's memory: it is remade at
        // every start, and the key has signed since.)
        let unused = dir.join(KEY_UNUSED_FILE);
        if durable && unused.exists() {
            store.mark_own_chain_complete()?;
            fs::remove_file(&unused).map_err(io(&unused))?;
        }
        Ok(Replica {
            dir: dir.to_path_buf(),
            local: Local::new(timeline, store, key),
        })
    }

    /// A light node's replica: the node key and the genesis come from `dir` (made by `chorus
    /// join` or `init`), the timeline itself lives in memory ([`Store::create_in_memory`]) and is
    /// caught up from full nodes. Nothing of it is written to `dir`.
    pub fn in_memory(dir: &Path, machine: M) -> Result<Self, ReplicaError> {
        let genesis = Store::open(&dir.join(STORE_FILE))?.genesis()?;
        // This key now signs events the store on disk never sees: should the directory later
        // run on disk (a full node, or a light node without `--in-memory`), it must not take
        // its next sequence number from that store (it would reuse one).
        mark_own_chain_elsewhere(dir)?;
        Self::fresh(dir, genesis, machine, false, Store::create_in_memory)
    }

    /// Where a light node may forget the past (see [`Local::light_horizon`]).
    pub fn light_horizon(&self) -> Option<OrderKey> {
        self.local.light_horizon()
    }

    /// Light nodes: deletes the blocks and checkpoints behind [`light_horizon`](Self::light_horizon).
    pub fn prune(&mut self) -> Result<(Option<OrderKey>, Pruned), ReplicaError> {
        Ok(self.local.prune()?)
    }

    /// Opens a replica: integrity check, then the state from the newest checkpoint (only the
    /// events after it are applied), then the persisted pending events.
    pub fn open(dir: &Path, machine: M) -> Result<Self, ReplicaError> {
        let store = Store::open(&dir.join(STORE_FILE))?;
        store.integrity_check()?;
        Self::open_checked(dir, store, machine)
    }

    /// [`Replica::open`] for a light node on disk: the same replica, with a small page cache
    /// ([`crate::store::LIGHT_STORE_CACHE_BYTES`]).
    pub fn open_light(dir: &Path, machine: M) -> Result<Self, ReplicaError> {
        let store =
            Store::open_with_cache(&dir.join(STORE_FILE), crate::store::LIGHT_STORE_CACHE_BYTES)?;
        store.integrity_check()?;
        // The first time on disk: an earlier build ran light nodes in memory only, so this
        // key may have signed what the store never saw (once the peers confirm, it holds it).
        if !store.flag(LIGHT_ON_DISK_FLAG)? {
            mark_own_chain_elsewhere(dir)?;
            store.set_flag(LIGHT_ON_DISK_FLAG)?;
        }
        Self::open_checked(dir, store, machine)
    }

    /// Opens an already-opened and checked store.
    pub fn open_checked(dir: &Path, mut store: Store, machine: M) -> Result<Self, ReplicaError> {
        store.set_own_chain_elsewhere(dir.join(OWN_CHAIN_ELSEWHERE_FILE).exists());
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
        let pending = store.pending()?;
        let mut local = Local::new(timeline?, store, key);
        // The pending events, then the checkpoints taken while catching up since the newest
        // stored one.
        local.resume(pending)?;
        Ok(Replica {
            dir: dir.to_path_buf(),
            local,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn key(&self) -> &Keypair {
        self.local.key()
    }
    pub fn store(&self) -> &Store {
        self.local.store()
    }
    pub fn timeline(&self) -> &Timeline<M> {
        self.local.timeline()
    }
    /// The timeline, store and key as chorus-core's `Local`.
    pub fn local(&self) -> &Local<M, Store> {
        &self.local
    }
    /// The directory and the `Local` (the node actor runs the `Local` in its state machine).
    pub fn into_local(self) -> (PathBuf, Local<M, Store>) {
        (self.dir, self.local)
    }
    /// Back from [`into_local`](Self::into_local).
    pub fn from_local(dir: PathBuf, local: Local<M, Store>) -> Self {
        Replica { dir, local }
    }

    /// In deferred mode ingest and append index and commit events but do not fold the machine
    /// state; the owner calls [`fold`](Self::fold) before reading the state, and
    /// periodically. Events are durable either way; only the state computation waits.
    pub fn set_deferred_fold(&mut self, on: bool) {
        self.local.set_deferred_fold(on);
    }

    pub fn deferred_fold(&self) -> bool {
        self.local.deferred_fold()
    }

    /// Brings the state up to date and persists the checkpoints taken meanwhile.
    pub fn fold(&mut self) -> Result<(), ReplicaError> {
        Ok(self.local.fold()?)
    }

    /// One slice of [`fold`](Self::fold): at most `positions` positions applied. Returns
    /// whether the state is up to date.
    pub fn fold_step(&mut self, positions: usize) -> Result<bool, ReplicaError> {
        Ok(self.local.fold_step(positions)?)
    }

    /// Runs `session` (ingests, appends) with folding deferred, then folds once: events that
    /// sort before what is folded cost one rewind from the earliest of them, not one per
    /// ingest. Events in order still fold as they come (while their blocks are cached). The
    /// fold runs even when the session fails (what it committed stays), reporting its progress
    /// as the stage `fold`.
    pub fn fold_once<T, E: From<ReplicaError>>(
        &mut self,
        progress: &mut dyn crate::progress::Progress,
        session: impl FnOnce(&mut Self, &mut dyn crate::progress::Progress) -> Result<T, E>,
    ) -> Result<T, E> {
        let was = self.deferred_fold();
        self.set_deferred_fold(true);
        let out = session(self, progress);
        self.set_deferred_fold(was);
        let folded = self.fold_reporting(progress);
        // The session's own error first: it is why the session stopped.
        let out = out?;
        folded?;
        Ok(out)
    }

    /// Folds to the end in steps of [`FOLD_ONCE_STEP`], reported as the stage `fold`.
    fn fold_reporting(
        &mut self,
        progress: &mut dyn crate::progress::Progress,
    ) -> Result<(), ReplicaError> {
        let mut left = self.timeline().fold_cost();
        if left == 0 {
            return Ok(());
        }
        progress.stage("fold", Some(left as u64));
        loop {
            let done = self.fold_step(FOLD_ONCE_STEP)?;
            let step = FOLD_ONCE_STEP.min(left);
            progress.add(step as u64);
            left -= step;
            if done {
                return Ok(());
            }
        }
    }

    /// Signs and appends one local event; returns after it is durable.
    pub fn append(&mut self, kind: &str, body: Ipld) -> Result<SignedEvent, ReplicaError> {
        Ok(self.local.append(kind, body)?)
    }

    /// Signs and appends several local events in one durable transaction (see
    /// [`Local::append_batch`]: every event passes the checks a peer runs, or the batch is
    /// refused with [`ReplicaError::Refused`]).
    pub fn append_batch(
        &mut self,
        items: Vec<(String, Ipld)>,
    ) -> Result<Vec<SignedEvent>, ReplicaError> {
        Ok(self.local.append_batch(items)?)
    }

    /// Ingests foreign events (imports, peers) through the same path as local ones, then
    /// commits once.
    pub fn ingest(
        &mut self,
        events: Vec<chorus_core::SignedEvent>,
    ) -> Result<IngestReport, ReplicaError> {
        Ok(self.local.ingest(events)?)
    }

    /// Rewrites the store's membership mirror from the timeline (after `chorus repair` took
    /// events out).
    pub fn rewrite_membership_mirror(&mut self) -> Result<(), ReplicaError> {
        Ok(self.local.rewrite_membership_mirror()?)
    }
}
