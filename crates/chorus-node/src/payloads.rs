//! Payload placement on a full node (`chorus_core::payload`; docs/design/ipfs.md,
//! "Payloads"): which payloads the timeline references, which of them this node must hold,
//! fetching those over Bitswap, and letting go of the others once their holders have them.
//!
//! Every [`PLACEMENT_INTERVAL`] the task:
//! 1. reads the events indexed since the last round (ids from the actor; a body that names a
//!    payload, `"payload": link`, adds its root to the referenced set);
//! 2. ranks, for each referenced root, the candidates — this node and the connected full peers
//!    whose summary it has (the actor's view, `proto::node`'s `full_peers`) — by
//!    [`payload::holders`]; this node holds the root if it is among the first `copies`;
//! 3. fetches at most one missing payload it must hold (root, then its parts, each checked
//!    against its CID and length, written before the root);
//! 4. lets go of a payload it holds but need not, once every holder answers `Have` for its
//!    root (a holder writes the root last, so `Have` for it means the whole payload);
//! 5. removes uploads nothing referenced within [`ORPHAN_GRACE`].
//!
//! Every node that sees the same candidates names the same holders. A holder that goes away
//! leaves the candidates of every node that saw its connection close, and the next-ranked
//! node fetches in its place; when it comes back it is a holder again and the stand-in lets
//! go. Views that differ for a while (a connection not seen yet) make an extra copy or a late
//! one, never a lost one: nobody lets go before every holder of its own view says `Have`.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chorus_core::{
    EventId, SignedEvent,
    payload::{self, PlacementSabotage, Root, Step},
};
use chorus_net::Peer as PeerId;
use chorus_net::bitswap::{Bitswap, FetchError};
use chorus_store::{StoreReader, payloads::PayloadDir};
use cid::Cid;
use tokio::sync::mpsc;

/// How often placement runs.
pub const PLACEMENT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a fetch of one block may take.
pub const BLOCK_FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a holder may take to answer whether it holds a root.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an upload may wait for an event to reference it before it is removed.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(600);
/// Most payload roots tracked (a bound on memory: ~100 bytes each).
pub const MAX_REFERENCED: usize = 1_000_000;
/// Batches of indexed ids queued for the task; beyond it the task rescans the store.
pub const INDEXED_QUEUE: usize = 256;

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

struct Inner {
    dir: Option<PayloadDir>,
    copies: usize,
    me: PeerId,
    bitswap: Bitswap,
    referenced: Mutex<BTreeSet<Cid>>,
    full_peers: Mutex<BTreeSet<PeerId>>,
    /// The roots on disk after the last round (what the node advertises in the DHT).
    on_disk: Mutex<Vec<Cid>>,
    indexed: mpsc::Sender<Vec<EventId>>,
    /// Ids were dropped (the queue was full): the next round reads the whole store.
    rescan: std::sync::atomic::AtomicBool,
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
                full_peers: Default::default(),
                on_disk: Default::default(),
                indexed,
                rescan: true.into(),
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

    /// The actor indexed `ids` (never blocks: a full queue means a rescan).
    pub fn indexed(&self, ids: &[EventId]) {
        if self.inner.dir.is_none() {
            return;
        }
        if self.inner.indexed.try_send(ids.to_vec()).is_err() {
            self.inner.rescan.store(true, Ordering::Relaxed);
        }
    }

    /// The actor's connected full peers (those whose summary said `light: false`).
    pub fn set_full_peers(&self, peers: &BTreeSet<PeerId>) {
        let mut held = self.inner.full_peers.lock().unwrap();
        if *held != *peers {
            *held = peers.clone();
        }
    }

    /// The candidates: the connected full peers, and this node if it holds payloads.
    fn candidates(&self) -> BTreeSet<PeerId> {
        let mut candidates: BTreeSet<PeerId> = self.inner.full_peers.lock().unwrap().clone();
        if self.inner.dir.is_some() {
            candidates.insert(self.inner.me);
        }
        candidates
    }

    /// Up to `most` payload roots this node has on disk (as of the last placement round).
    pub fn on_disk(&self, most: usize) -> Vec<Cid> {
        let held = self.inner.on_disk.lock().unwrap();
        held.iter().take(most).copied().collect()
    }

    /// The holders of `root` as this node ranks them now.
    pub fn holders(&self, root: &Cid) -> Vec<PeerId> {
        let candidates = self.candidates();
        let ids: BTreeMap<Vec<u8>, PeerId> =
            candidates.into_iter().map(|p| (p.to_bytes(), p)).collect();
        payload::holders(root, ids.keys().map(Vec::as_slice), self.inner.copies)
            .into_iter()
            .map(|b| ids[b])
            .collect()
    }

    /// Up to `most` referenced payloads, in CID order, and how many are referenced.
    pub fn view(&self, most: usize) -> (Vec<PayloadView>, usize) {
        let referenced: Vec<Cid> = self
            .inner
            .referenced
            .lock()
            .unwrap()
            .iter()
            .copied()
            .collect();
        let list = referenced
            .iter()
            .take(most)
            .map(|root| {
                let holders = self.holders(root);
                PayloadView {
                    cid: root.to_string(),
                    held: self.dir().is_some_and(|d| d.holds(root)),
                    holder: holders.contains(&self.inner.me),
                    holders: holders.iter().map(ToString::to_string).collect(),
                }
            })
            .collect();
        (list, referenced.len())
    }

    /// The whole payload `root`: from this node's directory where it holds the blocks, the
    /// rest over Bitswap (nothing fetched is kept: holding is placement's business).
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
        let found = tokio::task::spawn_blocking(move || referenced_in(&reader, rescan, &ids))
            .await
            .unwrap_or_default();
        {
            let mut r = p.inner.referenced.lock().unwrap();
            for c in found {
                if r.len() >= MAX_REFERENCED {
                    tracing::warn!("{MAX_REFERENCED} payloads tracked: no more are placed");
                    break;
                }
                r.insert(c);
            }
        }
        place(&p, &dir).await;
    }
}

/// The payload roots named by the bodies of `ids` (of every stored event with `all`).
fn referenced_in(store: &StoreReader, all: bool, ids: &[EventId]) -> Vec<Cid> {
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
        let Ok(snap) = store.snapshot() else {
            return vec![];
        };
        let Ok(blocks) = snap.ordered_blocks() else {
            return vec![];
        };
        return blocks
            .filter_map(|b| b.ok())
            .filter_map(|(_, bytes)| root_of(&bytes))
            .collect();
    }
    store
        .read(|block| ids.iter().filter_map(|id| root_of(&block(id)?)).collect())
        .unwrap_or_default()
}

/// One round of steps 2–5 (module docs).
async fn place(p: &Payloads, dir: &PayloadDir) {
    let referenced: Vec<Cid> = p.inner.referenced.lock().unwrap().iter().copied().collect();
    let me = p.inner.me;
    let local: BTreeSet<Cid> = {
        let d = dir.clone();
        tokio::task::spawn_blocking(move || d.roots().into_iter().collect())
            .await
            .unwrap_or_default()
    };
    let candidates = p.candidates();
    let ids: BTreeMap<Vec<u8>, PeerId> = candidates.iter().map(|c| (c.to_bytes(), *c)).collect();
    let my_id = me.to_bytes();
    let mut fetched_one = false;
    for root in &referenced {
        let here = local.contains(root);
        let whole = here && dir.holds(root);
        let step = payload::step(
            root,
            &my_id,
            ids.keys().map(Vec::as_slice),
            p.inner.copies,
            whole,
            here,
        );
        match step {
            Step::Nothing => {}
            Step::Fetch if fetched_one => {}
            Step::Fetch => {
                fetched_one = true;
                match fetch(p, dir, *root).await {
                    Ok(()) => {
                        p.inner.stats.fetched.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%root, "payload fetched: this node is one of its holders");
                    }
                    Err(e) => {
                        p.inner.stats.fetch_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%root, "payload not fetched (next round tries again): {e}");
                    }
                }
            }
            Step::LetGoOnceHeld(holders) => {
                let mut answers = vec![];
                for h in holders {
                    answers.push(p.inner.bitswap.has(ids[h], *root, PROBE_TIMEOUT).await);
                }
                if payload::may_let_go(&answers, PlacementSabotage::default()) {
                    let d = dir.clone();
                    let (root, others): (Cid, Vec<Cid>) = (*root, local.iter().copied().collect());
                    let freed = tokio::task::spawn_blocking(move || d.remove(&root, &others))
                        .await
                        .unwrap_or(0);
                    p.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%root, freed, "payload let go: its holders have it");
                }
            }
        }
    }
    *p.inner.on_disk.lock().unwrap() = dir.roots();
    // Uploads nothing referenced within the grace.
    let referenced: BTreeSet<Cid> = referenced.into_iter().collect();
    for root in local.iter().filter(|r| !referenced.contains(r)) {
        let old = dir
            .written(root)
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ORPHAN_GRACE);
        if old {
            let kept: Vec<Cid> = local.iter().copied().collect();
            dir.remove(root, &kept);
            p.inner
                .stats
                .orphans_removed
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(%root, "payload removed: no event referenced it within {ORPHAN_GRACE:?}");
        }
    }
}

/// Fetches payload `root` into `dir`: the root, each missing part (checked), then the root
/// written last.
async fn fetch(p: &Payloads, dir: &PayloadDir, root: Cid) -> Result<(), String> {
    let bs = &p.inner.bitswap;
    let root_bytes = match dir.get(&root) {
        Some(b) => b,
        None => bs
            .fetch(root, BLOCK_FETCH_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?,
    };
    let r = Root::decode(&root, &root_bytes).map_err(|e| {
        p.inner.stats.bad_roots.fetch_add(1, Ordering::Relaxed);
        e.to_string()
    })?;
    for (i, part) in r.parts.iter().enumerate() {
        if dir.has(part) {
            continue;
        }
        let bytes = bs
            .fetch(*part, BLOCK_FETCH_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        r.check_part(part, i, &bytes).map_err(|e| e.to_string())?;
        let (d, part) = (dir.clone(), *part);
        tokio::task::spawn_blocking(move || d.put(&part, &bytes))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("writing part {part}: {e}"))?;
    }
    let d = dir.clone();
    tokio::task::spawn_blocking(move || d.put(&root, &root_bytes))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("writing root {root}: {e}"))?;
    Ok(())
}
