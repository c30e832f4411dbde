//! Payload placement on a full node (`chorus_core::payload`; docs/design/ipfs.md,
//! "Payloads"): which payloads the timeline references, which of them this node must hold,
//! fetching those over Bitswap, and letting go of the others once their holders have them.
//!
//! Every [`PLACEMENT_INTERVAL`] the task:
//! 1. reads the events indexed since the last round (ids from the actor; a body that names a
//!    payload, `"payload": link`, adds its root to the referenced set);
//! 2. ranks, for each referenced root, the candidates — the connected full peers that are
//!    members of the timeline, and this node if it is one (the actor's view) — by
//!    [`payload::holders`], and takes [`payload::step`];
//! 3. fetches at most one missing payload it must hold (root, then its parts, each checked
//!    against its CID and length, the root written last); a root that fails waits before it
//!    is tried again (2 s, doubling to 5 min), and one that is no payload root is not tried
//!    again: one bad reference never holds up the others;
//! 4. lets go of payloads it has but need not, once every holder answers `Have` for the root
//!    ([`payload::may_let_go`]; at most [`MAX_LET_GO_PER_ROUND`] roots asked a round);
//! 5. removes uploads nothing referenced within [`ORPHAN_GRACE`], and parts of fetches that
//!    never finished, as old.
//!
//! Candidates are members only: a member's libp2p identity is its key, which the admin added,
//! so nobody can make up identities that rank first for a payload and then lie that they hold
//! it. Every node that sees the same candidates names the same holders. A holder that goes
//! away leaves the candidates of every node that saw its connection close, and the next-ranked
//! node fetches in its place; when it comes back it is a holder again and the stand-in lets go.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chorus_core::{
    EventId, SignedEvent,
    payload::{self, PlacementSabotage, Root, Step},
};
use chorus_net::{
    Peer as PeerId,
    bitswap::{Bitswap, FetchError},
};
use chorus_store::{StoreReader, payloads::PayloadDir};
use cid::Cid;
use tokio::sync::{Semaphore, mpsc};

/// How often placement runs.
pub const PLACEMENT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a fetch of one block may take.
pub const BLOCK_FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a holder may take to answer whether it holds a root.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an upload may wait for an event to reference it before it is removed (and how old
/// a part no root names must be before it goes).
pub const ORPHAN_GRACE: Duration = Duration::from_secs(600);
/// Most payload roots tracked (a bound on memory: ~100 bytes each).
pub const MAX_REFERENCED: usize = 1_000_000;
/// Batches of indexed ids queued for the task; beyond it the task rescans the store.
pub const INDEXED_QUEUE: usize = 1024;
/// Roots whose holders are asked in one round.
pub const MAX_LET_GO_PER_ROUND: usize = 16;
/// The first wait after a failed fetch, and the longest.
pub const RETRY_FIRST: Duration = Duration::from_secs(2);
pub const RETRY_MOST: Duration = Duration::from_secs(300);
/// Roots remembered as failing or bad (beyond it the oldest entries go).
pub const MAX_REMEMBERED_FAILURES: usize = 4096;
/// `GET /v1/payloads/{cid}` reads at once (each holds up to 16 MiB and Bitswap fetches).
pub const MAX_READS: usize = 4;
/// `POST /v1/payloads` uploads at once (each holds up to 32 MiB).
pub const MAX_UPLOADS: usize = 2;

/// Counters of `GET /v1/payloads` and `/metrics`.
#[derive(Debug, Default)]
pub struct PayloadStats {
    pub fetched: AtomicU64,
    pub fetch_failures: AtomicU64,
    pub dropped: AtomicU64,
    pub orphans_removed: AtomicU64,
    pub bad_roots: AtomicU64,
}

/// The node's payloads: its directory (`None` on a light node, which holds none), the
/// referenced roots, the candidates. Cheap to clone.
#[derive(Clone)]
pub struct Payloads {
    inner: Arc<Inner>,
}

/// Who may hold payloads, as the actor last said.
#[derive(Default)]
struct Candidates {
    /// Connected full peers that are members.
    peers: BTreeSet<PeerId>,
    /// This node is a member (and a full node).
    me: bool,
}

/// A root whose fetch failed: when to try again, or never (no payload root).
#[derive(Clone, Copy)]
enum Failed {
    Retry { wait: Duration, at: Instant },
    Bad,
}

struct Inner {
    dir: Option<PayloadDir>,
    copies: usize,
    me: PeerId,
    bitswap: Bitswap,
    referenced: Mutex<BTreeSet<Cid>>,
    candidates: Mutex<Candidates>,
    /// The roots on disk after the last round (what the node advertises in the DHT).
    on_disk: Mutex<Vec<Cid>>,
    failed: Mutex<BTreeMap<Cid, Failed>>,
    indexed: mpsc::Sender<Vec<EventId>>,
    /// Ids were dropped (the queue was full) or a scan failed: the next round reads the whole
    /// store, and no upload is collected as an orphan until it has.
    rescan: AtomicBool,
    pub reads: Arc<Semaphore>,
    pub uploads: Arc<Semaphore>,
    stats: PayloadStats,
}

/// One referenced payload as `GET /v1/payloads` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PayloadView {
    pub cid: String,
    /// Held whole here.
    pub held: bool,
    /// This node is one of its holders.
    pub holder: bool,
    /// Its holders as this node ranks them (peer ids).
    pub holders: Vec<String>,
}

impl Payloads {
    /// The payloads of a node with `dir` (`None`: a light node), and the receiver the
    /// placement task reads indexed ids from.
    pub fn new(
        dir: Option<PayloadDir>,
        copies: usize,
        me: PeerId,
        bitswap: Bitswap,
    ) -> (Payloads, mpsc::Receiver<Vec<EventId>>) {
        let (indexed, rx) = mpsc::channel(INDEXED_QUEUE);
        let p = Payloads {
            inner: Arc::new(Inner {
                dir,
                copies: copies.max(1),
                me,
                bitswap,
                referenced: Default::default(),
                candidates: Default::default(),
                on_disk: Default::default(),
                failed: Default::default(),
                indexed,
                rescan: true.into(),
                reads: Arc::new(Semaphore::new(MAX_READS)),
                uploads: Arc::new(Semaphore::new(MAX_UPLOADS)),
                stats: Default::default(),
            }),
        };
        (p, rx)
    }

    pub fn dir(&self) -> Option<&PayloadDir> {
        self.inner.dir.as_ref()
    }
    pub fn copies(&self) -> usize {
        self.inner.copies
    }
    pub fn stats(&self) -> &PayloadStats {
        &self.inner.stats
    }
    /// A permit for one read (`None`: [`MAX_READS`] run).
    pub fn read_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.inner.reads.clone().try_acquire_owned().ok()
    }
    /// A permit for one upload (`None`: [`MAX_UPLOADS`] run).
    pub fn upload_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.inner.uploads.clone().try_acquire_owned().ok()
    }

    /// The actor indexed `ids` (never blocks: a full queue means a rescan).
    pub fn indexed(&self, ids: &[EventId]) {
        if self.inner.dir.is_none() {
            return;
        }
        if self.inner.indexed.try_send(ids.to_vec()).is_err() {
            self.inner.rescan.store(true, Ordering::Relaxed);
        }
    }

    /// The actor's view: the connected full peers that are members, and whether this node is
    /// a member.
    pub fn set_candidates(&self, peers: BTreeSet<PeerId>, me_member: bool) {
        let mut c = self.inner.candidates.lock().unwrap();
        c.peers = peers;
        c.me = me_member && self.inner.dir.is_some();
    }

    /// The candidates' ids as bytes (what the ranking hashes), with their peer ids.
    fn candidates(&self) -> BTreeMap<Vec<u8>, PeerId> {
        let c = self.inner.candidates.lock().unwrap();
        c.peers
            .iter()
            .chain(c.me.then_some(&self.inner.me))
            .map(|p| (p.to_bytes(), *p))
            .collect()
    }

    /// Up to `most` payload roots this node has on disk (as of the last placement round).
    pub fn on_disk(&self, most: usize) -> Vec<Cid> {
        let held = self.inner.on_disk.lock().unwrap();
        held.iter().take(most).copied().collect()
    }

    /// The holders of `root` among the candidates `ids` ([`Payloads::candidates`]).
    fn holders_among(&self, root: &Cid, ids: &BTreeMap<Vec<u8>, PeerId>) -> Vec<PeerId> {
        payload::holders(root, ids.keys().map(Vec::as_slice), self.inner.copies)
            .into_iter()
            .map(|b| ids[b])
            .collect()
    }

    /// Up to `most` referenced payloads, in CID order, and how many are referenced (reads the
    /// disk: call it off the async threads).
    pub fn view(&self, most: usize) -> (Vec<PayloadView>, usize) {
        let (listed, total): (Vec<Cid>, usize) = {
            let r = self.inner.referenced.lock().unwrap();
            (r.iter().take(most).copied().collect(), r.len())
        };
        let ids = self.candidates();
        let list = listed
            .iter()
            .map(|root| {
                let holders = self.holders_among(root, &ids);
                PayloadView {
                    cid: root.to_string(),
                    held: self.dir().is_some_and(|d| d.holds(root)),
                    holder: holders.contains(&self.inner.me),
                    holders: holders.iter().map(ToString::to_string).collect(),
                }
            })
            .collect();
        (list, total)
    }

    /// The whole payload `root`: from this node's directory where it holds the blocks, the
    /// rest over Bitswap (nothing fetched is kept: holding is placement's business). `true`
    /// with it when every block was here.
    pub async fn read(&self, root: Cid, timeout: Duration) -> Result<(Vec<u8>, bool), ReadError> {
        let mut local = true;
        let root_bytes = self.block(root, timeout, &mut local).await?;
        let r = Root::decode(&root, &root_bytes).map_err(|e| ReadError::Bad(e.to_string()))?;
        let mut out = Vec::with_capacity(r.size as usize);
        for (i, part) in r.parts.iter().enumerate() {
            let bytes = self.block(*part, timeout, &mut local).await?;
            r.check_part(part, i, &bytes)
                .map_err(|e| ReadError::Bad(e.to_string()))?;
            out.extend_from_slice(&bytes);
        }
        Ok((out, local))
    }

    async fn block(
        &self,
        cid: Cid,
        timeout: Duration,
        local: &mut bool,
    ) -> Result<Vec<u8>, ReadError> {
        if let Some(d) = self.inner.dir.clone() {
            let held = tokio::task::spawn_blocking(move || d.get(&cid))
                .await
                .ok()
                .flatten();
            if let Some(b) = held {
                return Ok(b);
            }
        }
        *local = false;
        self.inner
            .bitswap
            .fetch(cid, timeout)
            .await
            .map_err(ReadError::Fetch)
    }

    /// Whether `root` may be fetched now (not bad, not waiting after a failure).
    fn due(&self, root: &Cid, now: Instant) -> bool {
        match self.inner.failed.lock().unwrap().get(root) {
            None => true,
            Some(Failed::Bad) => false,
            Some(Failed::Retry { at, .. }) => *at <= now,
        }
    }

    /// A fetch of `root` failed: wait longer before the next, or never again when `bad`.
    fn failed(&self, root: Cid, bad: bool, now: Instant) {
        let mut failed = self.inner.failed.lock().unwrap();
        let next = match (bad, failed.get(&root)) {
            (true, _) => Failed::Bad,
            (false, Some(Failed::Retry { wait, .. })) => {
                let wait = (*wait * 2).min(RETRY_MOST);
                Failed::Retry {
                    wait,
                    at: now + wait,
                }
            }
            (false, _) => Failed::Retry {
                wait: RETRY_FIRST,
                at: now + RETRY_FIRST,
            },
        };
        if failed.len() >= MAX_REMEMBERED_FAILURES && !failed.contains_key(&root) {
            // The smallest CID goes: any bound will do, a forgotten failure is only tried again.
            failed.pop_first();
        }
        failed.insert(root, next);
    }
}

/// Why a payload could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Fetch(FetchError),
    #[error("{0}")]
    Bad(String),
}

/// Runs placement until the node's channel of indexed ids closes (the actor is gone).
pub async fn run(p: Payloads, store: StoreReader, mut indexed: mpsc::Receiver<Vec<EventId>>) {
    let Some(dir) = p.inner.dir.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(PLACEMENT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut ids = vec![];
        loop {
            match indexed.try_recv() {
                Ok(batch) => ids.extend(batch),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        let rescan = p.inner.rescan.swap(false, Ordering::Relaxed);
        let reader = store.clone();
        let found = tokio::task::spawn_blocking(move || referenced_in(&reader, rescan, &ids)).await;
        match found {
            Ok(Ok(found)) => {
                let mut r = p.inner.referenced.lock().unwrap();
                for c in found {
                    if r.len() >= MAX_REFERENCED {
                        tracing::warn!("{MAX_REFERENCED} payloads tracked: no more are placed");
                        break;
                    }
                    r.insert(c);
                }
            }
            // Read again next round, whole: the ids of this round are not lost.
            Ok(Err(e)) => {
                tracing::warn!("payload references not read (the store is read again): {e}");
                p.inner.rescan.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!("payload references not read (the store is read again): {e}");
                p.inner.rescan.store(true, Ordering::Relaxed);
            }
        }
        place(&p, &dir).await;
    }
}

/// The payload roots named by the bodies of `ids` (of every stored event with `all`).
fn referenced_in(
    store: &StoreReader,
    all: bool,
    ids: &[EventId],
) -> Result<Vec<Cid>, chorus_store::StoreError> {
    // A body naming a payload holds the text key "payload" (CBOR: 0x67 then the 7 bytes):
    // only those blocks are decoded.
    const KEY: &[u8] = b"\x67payload";
    let root_of = |bytes: &[u8]| -> Option<Cid> {
        if !bytes.windows(KEY.len()).any(|w| w == KEY) {
            return None;
        }
        let ev = SignedEvent::decode_trusted(bytes).ok()?;
        payload::referenced(&ev.event().body)
    };
    if all {
        let snap = store.snapshot()?;
        let mut out = vec![];
        for b in snap.ordered_blocks()? {
            let (_, bytes) = b?;
            out.extend(root_of(&bytes));
        }
        return Ok(out);
    }
    store.read(|block| ids.iter().filter_map(|id| root_of(&block(id)?)).collect())
}

/// What the disk holds, read off the async threads: the roots on disk and those held whole.
fn on_disk(dir: &PayloadDir) -> (Vec<Cid>, BTreeSet<Cid>) {
    let roots = dir.roots();
    let whole = roots.iter().filter(|r| dir.holds(r)).copied().collect();
    (roots, whole)
}

/// One round of steps 2–5 (module docs).
async fn place(p: &Payloads, dir: &PayloadDir) {
    let referenced: Vec<Cid> = p.inner.referenced.lock().unwrap().iter().copied().collect();
    let d = dir.clone();
    let Ok((local, whole)) = tokio::task::spawn_blocking(move || on_disk(&d)).await else {
        return;
    };
    let local_set: BTreeSet<Cid> = local.iter().copied().collect();
    *p.inner.on_disk.lock().unwrap() = local.clone();
    let ids = p.candidates();
    let my_id = p.inner.me.to_bytes();
    let now = Instant::now();
    let mut to_fetch = None;
    let mut to_let_go = vec![];
    for root in &referenced {
        let step = payload::step(
            root,
            &my_id,
            ids.keys().map(Vec::as_slice),
            p.inner.copies,
            whole.contains(root),
            local_set.contains(root),
        );
        match step {
            Step::Nothing => {}
            Step::Fetch => {
                if to_fetch.is_none() && p.due(root, now) {
                    to_fetch = Some(*root);
                }
            }
            Step::LetGoOnceHeld(holders) => {
                if to_let_go.len() < MAX_LET_GO_PER_ROUND {
                    let holders: Vec<PeerId> = holders.iter().map(|h| ids[*h]).collect();
                    to_let_go.push((*root, holders));
                }
            }
        }
    }
    if let Some(root) = to_fetch {
        match fetch(p, dir, root).await {
            Ok(()) => {
                p.inner.failed.lock().unwrap().remove(&root);
                p.inner.stats.fetched.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%root, "payload fetched: this node is one of its holders");
            }
            Err((bad, e)) => {
                p.failed(root, bad, Instant::now());
                p.inner.stats.fetch_failures.fetch_add(1, Ordering::Relaxed);
                if bad {
                    p.inner.stats.bad_roots.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%root, "referenced payload refused (not tried again): {e}");
                } else {
                    tracing::warn!(%root, "payload not fetched (tried again later): {e}");
                }
            }
        }
    }
    for (root, holders) in to_let_go {
        let asked = holders
            .iter()
            .map(|h| p.inner.bitswap.has(*h, root, PROBE_TIMEOUT));
        let answers = futures_util::future::join_all(asked).await;
        if payload::may_let_go(&answers, PlacementSabotage::default()) {
            let d = dir.clone();
            let freed = tokio::task::spawn_blocking(move || d.remove(&root))
                .await
                .unwrap_or(0);
            p.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%root, freed, "payload let go: its holders have it");
        }
    }
    // Uploads nothing referenced within the grace — only while every reference is known (no
    // rescan pending, the bound not reached).
    let complete = !p.inner.rescan.load(Ordering::Relaxed) && referenced.len() < MAX_REFERENCED;
    if complete {
        let referenced: BTreeSet<Cid> = referenced.into_iter().collect();
        let orphans: Vec<Cid> = local
            .into_iter()
            .filter(|r| !referenced.contains(r))
            .collect();
        let d = dir.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let mut removed = 0;
            for root in orphans {
                let old = d
                    .written(&root)
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > ORPHAN_GRACE);
                if old {
                    d.remove(&root);
                    tracing::info!(%root, "payload removed: no event referenced it within {ORPHAN_GRACE:?}");
                    removed += 1;
                }
            }
            removed + d.remove_stray_parts(ORPHAN_GRACE)
        })
        .await
        .unwrap_or(0);
        p.inner
            .stats
            .orphans_removed
            .fetch_add(removed as u64, Ordering::Relaxed);
    }
}

/// Fetches payload `root` into `dir`: the root, each missing part (checked), then the root
/// written last. `Err((true, why))`: the root is no payload root (never worth another try).
async fn fetch(p: &Payloads, dir: &PayloadDir, root: Cid) -> Result<(), (bool, String)> {
    let bs = &p.inner.bitswap;
    let retry = |e: String| (false, e);
    let d = dir.clone();
    let held = tokio::task::spawn_blocking(move || d.get(&root))
        .await
        .map_err(|e| retry(e.to_string()))?;
    let root_bytes = match held {
        Some(b) => b,
        None => bs
            .fetch(root, BLOCK_FETCH_TIMEOUT)
            .await
            .map_err(|e| retry(e.to_string()))?,
    };
    let r = Root::decode(&root, &root_bytes).map_err(|e| (true, e.to_string()))?;
    for (i, part) in r.parts.iter().enumerate() {
        let (d, c) = (dir.clone(), *part);
        if tokio::task::spawn_blocking(move || d.has(&c))
            .await
            .unwrap_or(false)
        {
            continue;
        }
        let bytes = bs
            .fetch(*part, BLOCK_FETCH_TIMEOUT)
            .await
            .map_err(|e| retry(e.to_string()))?;
        // A part of the wrong length: the root lies about its size (its hash is the part's).
        r.check_part(part, i, &bytes)
            .map_err(|e| (true, e.to_string()))?;
        let (d, part) = (dir.clone(), *part);
        tokio::task::spawn_blocking(move || d.put(&part, &bytes))
            .await
            .map_err(|e| retry(e.to_string()))?
            .map_err(|e| retry(format!("writing part {part}: {e}")))?;
    }
    let d = dir.clone();
    tokio::task::spawn_blocking(move || d.put_root(&root, &root_bytes))
        .await
        .map_err(|e| retry(e.to_string()))?
        .map_err(|e| retry(format!("writing root {root}: {e}")))?;
    Ok(())
}
