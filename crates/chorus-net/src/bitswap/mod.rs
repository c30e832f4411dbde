//! Bitswap 1.2.0 (`/ipfs/bitswap/1.2.0`), the block exchange of IPFS: any peer may ask this
//! node for a block by CID, and this node may ask its peers for one.
//!
//! Why our own and not `beetswap`: beetswap 0.5.0 (the newest) implements libp2p-swarm 0.47's
//! `NetworkBehaviour`, and Chorus runs libp2p 0.57 (swarm 0.48); a behaviour of the other
//! version cannot be composed into our swarm, and going back a libp2p version would undo the
//! fixes we took it for. What Chorus needs of Bitswap is small — serve what the store holds,
//! fetch one block by CID from connected peers — so it is written here on `libp2p-stream`
//! (generic streams of the same libp2p release): ~400 lines, the wire format in [`wire`].
//!
//! How it behaves:
//! * **Streams**: messages to a peer go out in order on one long-lived stream (reopened after
//!   an error), from a bounded queue per peer, as go-bitswap does; inbound streams are read
//!   message after message until the peer closes them or is idle for [`IDLE_STREAM`]. One
//!   stream per peer matters: `libp2p-stream` hands inbound streams over one at a time and
//!   drops those that arrive while the last is still being taken.
//! * **Serving** is stateless: a want is answered at once from the [`BlockSource`] (the block,
//!   `Have`, or, when asked for, `DontHave`) and not remembered, so a peer that wants a block
//!   this node does not have yet must ask again (Helia and go-bitswap do, on a timer). This
//!   keeps no per-peer ledger to bound.
//! * **Fetching** ([`Bitswap::fetch`]) sends `want-block` with `send-dont-have` to every
//!   connected peer (and to peers that connect while the want is open) and takes the first
//!   block whose bytes hash to the CID asked for; the block's sender names no CID (its CID is
//!   computed here, [`wire::cid_of`]), so no peer can pass one block off as another. The want
//!   is sent again every [`WANT_RESEND`] to the peers that have not answered (a message lost
//!   on the way costs one interval, not the fetch). When every peer asked said `DontHave` the
//!   fetch fails at once with [`FetchError::NotFound`]; otherwise at its deadline. A fetch also
//!   asks the DHT who provides the CID ([`Lookup`], run by the swarm's driver), which dials
//!   the providers found; each is asked as it connects, and `DontHave` from everyone counts
//!   only once the lookup and its dials are over. However it
//!   ends (the block, `DontHave` everywhere, the deadline, the caller gone), the want is
//!   cancelled at every peer asked. Only sha2-256 CIDs are fetched (what this node can check).
//! * **Bounds**: [`MAX_MESSAGE_BYTES`] a message, and [`READ_BUDGET_BYTES`] of messages read
//!   and decoded at once, all peers together (taken as the bytes arrive, [`wire::read`]); [`MAX_WANTS_PER_MESSAGE`] distinct wants
//!   answered a message; answers of at most [`MAX_ANSWER_BYTES`] each, built one at a time,
//!   [`ANSWER_BUDGET_BYTES`] of them waiting to be written at once, all peers together;
//!   [`PEER_QUEUE`] messages queued for one peer; [`MAX_INBOUND_STREAMS`] inbound streams read at
//!   once ([`MAX_STREAMS_PER_PEER`] a peer; a peer's first stream is always taken, so the
//!   connection limits bound those); [`MAX_OPEN_FETCHES`] CIDs being fetched.

pub mod wire;

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use cid::Cid;
use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use libp2p_stream::OpenStreamError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use wire::{Block, BlockPresence, Entry, Message, PresenceType, WantType, Wantlist};

/// The protocol this node speaks (1.2.0: wants for presence, `DontHave`).
pub const BITSWAP_PROTOCOL: StreamProtocol = StreamProtocol::new("/ipfs/bitswap/1.2.0");
/// Largest message read (go-bitswap's and Helia's bound).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Largest block served or taken (the IPFS convention; a Chorus event is at most 64 KiB).
pub const MAX_BLOCK_BYTES: usize = 2 * 1024 * 1024;
/// Blocks are packed into answers of at most this many bytes (one block alone may be larger).
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Wants answered from one message; the rest of a longer wantlist is ignored (and counted).
pub const MAX_WANTS_PER_MESSAGE: usize = 1024;
/// Inbound streams read at once, all peers together.
pub const MAX_INBOUND_STREAMS: usize = 64;
/// Inbound streams read at once from one peer.
pub const MAX_STREAMS_PER_PEER: usize = 4;
/// An inbound stream with no message for this long is closed (the peer opens another).
pub const IDLE_STREAM: Duration = Duration::from_secs(60);
/// Opening a stream and writing one message must finish within this.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// CIDs being fetched at once.
pub const MAX_OPEN_FETCHES: usize = 256;
/// An open want is sent again this often to the peers that have not answered it.
pub const WANT_RESEND: Duration = Duration::from_secs(2);
/// Messages queued for one peer; a message beyond is dropped (and counted): wants are sent
/// again, answers asked for again.
pub const PEER_QUEUE: usize = 8;
/// Bytes of inbound messages read and decoded at once, all peers together (a decoded wantlist
/// takes some 20 times its wire size).
pub const READ_BUDGET_BYTES: usize = 8 * 1024 * 1024;
/// Bytes of answers built and not yet written, all peers together.
pub const ANSWER_BUDGET_BYTES: usize = 16 * 1024 * 1024;

/// Where served blocks come from: the node's store.
pub trait BlockSource: Send + Sync + 'static {
    /// The bytes of the block `cid` names, if this node holds it. Called off the async
    /// runtime (it may read a disk).
    fn get(&self, cid: &Cid) -> Option<Vec<u8>>;
}

/// Counters of the Bitswap engine (`/metrics`).
#[derive(Debug, Default)]
pub struct BitswapStats {
    /// Blocks sent to peers that wanted them.
    pub blocks_served: AtomicU64,
    pub bytes_served: AtomicU64,
    /// `DontHave` answers sent.
    pub dont_have_sent: AtomicU64,
    /// Blocks fetched from peers (checked against their CID).
    pub blocks_fetched: AtomicU64,
    /// Received blocks dropped: nobody here wanted the CID their bytes hash to (a forged or
    /// late block), or their hash cannot be checked here.
    pub blocks_unwanted: AtomicU64,
    /// Messages or streams refused: malformed, too large, too many streams, wants beyond
    /// [`MAX_WANTS_PER_MESSAGE`], wants of a paused peer.
    pub refused: AtomicU64,
    /// Messages not written to a peer within [`SEND_TIMEOUT`].
    pub send_timeouts: AtomicU64,
    /// Peers paused for not taking an answer within [`SEND_TIMEOUT`] ([`Limits`]).
    pub peers_paused: AtomicU64,
}

/// How much of the shared answer budget one peer may hold, and for how long a peer that does
/// not read its answers is not answered. A peer that never reads would otherwise keep its
/// queue full of answers, each holding budget until its write times out, and a few such peers
/// would hold all of [`ANSWER_BUDGET_BYTES`], so that no one else got an answer.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Answer bytes built and not yet written for one peer (default 4 MiB: two answers being
    /// built, or many small ones queued).
    pub answer_bytes_per_peer: usize,
    /// A peer whose answer could not be written within [`SEND_TIMEOUT`] has its queued
    /// answers dropped and its wants ignored for this long (default 60 s).
    pub stalled_peer_pause: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            answer_bytes_per_peer: 4 * 1024 * 1024,
            stalled_peer_pause: Duration::from_secs(60),
        }
    }
}

impl Limits {
    /// No per-peer share and no pause: the engine before these defences (for the test that
    /// shows what they stop).
    pub fn unguarded() -> Limits {
        Limits {
            answer_bytes_per_peer: ANSWER_BUDGET_BYTES,
            stalled_peer_pause: Duration::ZERO,
        }
    }
}

/// Most CIDs looked up in the DHT at once; a fetch beyond them asks its connected peers only.
pub const MAX_LOOKUPS: usize = 64;

/// A request to the swarm's driver: find the providers of `cid` in the DHT and dial them;
/// `done` is answered (or dropped) once the lookup has ended and every provider it dialled has
/// connected (and so been asked, by [`Bitswap::peer_up`]) or failed.
#[derive(Debug)]
pub struct Lookup {
    pub cid: Cid,
    pub done: oneshot::Sender<()>,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    #[error("{0}: only sha2-256 CIDs can be checked, so only those are fetched")]
    UncheckableHash(Cid),
    #[error("no peer to ask for {0}: none is connected, and the DHT named no provider")]
    NoPeers(Cid),
    #[error(
        "none of the {asked} peers asked has {cid} (the connected ones, and the providers the DHT named)"
    )]
    NotFound { cid: Cid, asked: usize },
    #[error("no peer sent {cid} within {after:?}")]
    Timeout { cid: Cid, after: Duration },
    #[error("{0} CIDs are being fetched already: try again shortly")]
    Busy(usize),
}

/// The engine; cheap to clone (one shared state).
#[derive(Clone)]
pub struct Bitswap {
    inner: Arc<Inner>,
}

struct Inner {
    control: Mutex<libp2p_stream::Control>,
    source: Option<Arc<dyn BlockSource>>,
    /// Where fetches ask for DHT lookups (`None`: connected peers only).
    lookups: Option<mpsc::Sender<Lookup>>,
    wants: Mutex<HashMap<Cid, Want>>,
    /// Open presence questions ([`Bitswap::has`]), by peer and CID.
    probes: Mutex<HashMap<(PeerId, Cid), Vec<Probe>>>,
    /// Numbers the lookups ([`LookupTask::generation`]).
    lookups_started: AtomicU64,
    peers: Mutex<BTreeSet<PeerId>>,
    /// The queue of each connected peer's writer task.
    outbound: Mutex<HashMap<PeerId, mpsc::Sender<Outgoing>>>,
    streams: Arc<Semaphore>,
    streams_of: Mutex<HashMap<PeerId, usize>>,
    /// [`READ_BUDGET_BYTES`] and [`ANSWER_BUDGET_BYTES`], one permit a KiB.
    read_budget: Arc<Semaphore>,
    answer_budget: Arc<Semaphore>,
    /// Each peer's share of the answer budget ([`Limits::answer_bytes_per_peer`]), one permit a
    /// KiB; dropped when the peer disconnects.
    answer_shares: Mutex<HashMap<PeerId, Arc<Semaphore>>>,
    /// Peers not answered until then: their answers could not be written.
    paused: Mutex<HashMap<PeerId, std::time::Instant>>,
    limits: Limits,
    stats: BitswapStats,
}

/// Where the answer to one presence question goes: `Have` or not.
type Probe = oneshot::Sender<bool>;

/// A message for a peer's writer, with the answer budget it holds until written.
type Outgoing = (Message, Option<AnswerBudget>);

/// The budget an answer holds until it is written: its share of the peer's and of everyone's.
struct AnswerBudget {
    _shared: OwnedSemaphorePermit,
    _peer: OwnedSemaphorePermit,
}

/// One CID being fetched.
struct Want {
    /// Each gets the block, or how many peers were asked when none had it.
    waiters: Vec<oneshot::Sender<Result<Vec<u8>, usize>>>,
    asked: BTreeSet<PeerId>,
    dont_have: BTreeSet<PeerId>,
    /// The DHT lookup for the CID while it runs: `DontHave` from everyone asked so far is
    /// not the end yet. Dropped with the want, which stops the lookup.
    lookup: Option<LookupTask>,
}

impl Want {
    /// Nobody can send the block any more: every peer asked said `DontHave` (or is gone) and
    /// no lookup can bring another.
    fn hopeless(&self) -> bool {
        self.lookup.is_none() && self.dont_have.len() == self.asked.len()
    }
}

/// The task waiting for a want's lookup to end. However the want goes (its block, `DontHave`
/// from everyone, its last waiter gone) the task is aborted with it, which drops its end of
/// the lookup's channel: the driver sees that and stops the Kademlia query.
struct LookupTask {
    /// Tells this lookup apart from a later one for the same CID (a want ended and a new fetch
    /// of the CID started while the first lookup still ran).
    generation: u64,
    task: Option<tokio::task::AbortHandle>,
}

impl Drop for LookupTask {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Ends a fetch however its future ends (an answer, the deadline, or the caller dropping it):
/// forgets its waiter, and with the last waiter the want, cancelled at every peer asked.
struct FetchGuard<'a> {
    bitswap: &'a Bitswap,
    cid: Cid,
}

impl Drop for FetchGuard<'_> {
    fn drop(&mut self) {
        let asked = {
            let mut wants = self.bitswap.inner.wants.lock().unwrap();
            match wants.get_mut(&self.cid) {
                Some(w) => {
                    w.waiters.retain(|tx| !tx.is_closed());
                    if w.waiters.is_empty() {
                        wants.remove(&self.cid).map(|w| w.asked)
                    } else {
                        None
                    }
                }
                None => None,
            }
        };
        for peer in asked.into_iter().flatten() {
            self.bitswap.queue(peer, cancel_of(self.cid));
        }
    }
}

/// Takes a peer's stream slot back when its reading task ends, however it ends.
struct StreamSlot {
    inner: Arc<Inner>,
    peer: PeerId,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut per = self.inner.streams_of.lock().unwrap();
        if let Some(n) = per.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.peer);
            }
        }
    }
}

impl Bitswap {
    /// Starts serving `/ipfs/bitswap/1.2.0` on `streams` (the swarm's stream behaviour) from
    /// `source` (`None`: answer every want with `DontHave`, still fetch), within `limits`.
    /// Fetches send their DHT lookups to `lookups` (`None`: connected peers only). Needs a
    /// tokio runtime.
    pub fn start(
        streams: &libp2p_stream::Behaviour,
        source: Option<Arc<dyn BlockSource>>,
        lookups: Option<mpsc::Sender<Lookup>>,
        limits: Limits,
    ) -> Bitswap {
        let mut control = streams.new_control();
        let incoming = control
            .accept(BITSWAP_PROTOCOL)
            .expect("the Bitswap protocol is registered once, here");
        let me = Bitswap::with(control, source, lookups, limits);
        // The accepting task holds the engine weakly: when the node drops its last handle the
        // engine (and its control of the swarm's streams) goes, and with the swarm gone too the
        // incoming streams end and so does the task.
        tokio::spawn(accept(Arc::downgrade(&me.inner), incoming));
        tokio::spawn(resend_wants(Arc::downgrade(&me.inner)));
        me
    }

    fn with(
        control: libp2p_stream::Control,
        source: Option<Arc<dyn BlockSource>>,
        lookups: Option<mpsc::Sender<Lookup>>,
        limits: Limits,
    ) -> Bitswap {
        Bitswap {
            inner: Arc::new(Inner {
                control: Mutex::new(control),
                source,
                lookups,
                wants: Default::default(),
                probes: Default::default(),
                lookups_started: AtomicU64::new(0),
                peers: Default::default(),
                outbound: Default::default(),
                streams: Arc::new(Semaphore::new(MAX_INBOUND_STREAMS)),
                streams_of: Default::default(),
                read_budget: Arc::new(Semaphore::new(READ_BUDGET_BYTES / 1024)),
                answer_budget: Arc::new(Semaphore::new(ANSWER_BUDGET_BYTES / 1024)),
                answer_shares: Default::default(),
                paused: Default::default(),
                limits,
                stats: Default::default(),
            }),
        }
    }

    /// An engine on no swarm: no peer ever connects, so it serves nothing and every fetch
    /// fails with [`FetchError::NoPeers`] (an API without a network, in tests).
    pub fn unconnected() -> Bitswap {
        Bitswap::with(
            libp2p_stream::Behaviour::new().new_control(),
            None,
            None,
            Limits::default(),
        )
    }

    pub fn stats(&self) -> &BitswapStats {
        &self.inner.stats
    }

    /// A peer connected: it is asked for every open want too.
    pub fn peer_up(&self, peer: PeerId) {
        {
            let _out = self.inner.outbound.lock().unwrap();
            self.inner.peers.lock().unwrap().insert(peer);
        }
        let open: Vec<Cid> = {
            let mut wants = self.inner.wants.lock().unwrap();
            wants
                .iter_mut()
                .filter_map(|(cid, w)| w.asked.insert(peer).then_some(*cid))
                .collect()
        };
        if !open.is_empty() {
            self.queue(peer, want_blocks(&open));
        }
    }

    /// A peer disconnected: a want it was the last hope of fails now, a question to it has
    /// no answer.
    pub fn peer_down(&self, peer: PeerId) {
        self.inner
            .probes
            .lock()
            .unwrap()
            .retain(|(p, _), _| *p != peer);
        // Under the writers' lock, as `writer` reads both: no writer is made for it after this.
        {
            let mut out = self.inner.outbound.lock().unwrap();
            self.inner.peers.lock().unwrap().remove(&peer);
            // Its writer task ends with its queue.
            out.remove(&peer);
        }
        // Its share goes once no answer holds it; a pause outlives the connection (or a
        // reconnect would lift it), and goes when it expires.
        self.inner
            .answer_shares
            .lock()
            .unwrap()
            .retain(|p, s| *p != peer || Arc::strong_count(s) > 1);
        let mut wants = self.inner.wants.lock().unwrap();
        let cids: Vec<Cid> = wants.keys().copied().collect();
        for cid in cids {
            let w = wants.get_mut(&cid).expect("listed above");
            if w.asked.remove(&peer) {
                w.dont_have.remove(&peer);
                if w.hopeless() {
                    let w = wants.remove(&cid).expect("listed above");
                    for tx in w.waiters {
                        let _ = tx.send(Err(w.asked.len()));
                    }
                }
            }
        }
    }

    /// Fetches the block `cid`: the first block whose bytes hash to `cid`, within `timeout`,
    /// from the connected peers and the providers a DHT lookup finds.
    pub async fn fetch(&self, cid: Cid, timeout: Duration) -> Result<Vec<u8>, FetchError> {
        self.fetch_with(cid, timeout, true).await
    }

    /// [`Bitswap::fetch`] from the peers connected now (and those that connect while it runs),
    /// without asking the DHT.
    pub async fn fetch_from_connected(
        &self,
        cid: Cid,
        timeout: Duration,
    ) -> Result<Vec<u8>, FetchError> {
        self.fetch_with(cid, timeout, false).await
    }

    async fn fetch_with(
        &self,
        cid: Cid,
        timeout: Duration,
        route: bool,
    ) -> Result<Vec<u8>, FetchError> {
        if !wire::checkable(&cid) {
            return Err(FetchError::UncheckableHash(cid));
        }
        let (tx, rx) = oneshot::channel();
        let ask = {
            let mut wants = self.inner.wants.lock().unwrap();
            match wants.get_mut(&cid) {
                Some(w) => {
                    w.waiters.push(tx);
                    // A routed fetch joining a want that asks its connected peers only.
                    if route && w.lookup.is_none() {
                        w.lookup = self.look_up(cid);
                    }
                    vec![]
                }
                None => {
                    if wants.len() >= MAX_OPEN_FETCHES {
                        return Err(FetchError::Busy(MAX_OPEN_FETCHES));
                    }
                    let lookup = route.then(|| self.look_up(cid)).flatten();
                    let peers = self.inner.peers.lock().unwrap().clone();
                    if peers.is_empty() && lookup.is_none() {
                        return Err(FetchError::NoPeers(cid));
                    }
                    wants.insert(
                        cid,
                        Want {
                            waiters: vec![tx],
                            asked: peers.clone(),
                            dont_have: BTreeSet::new(),
                            lookup,
                        },
                    );
                    peers.into_iter().collect::<Vec<_>>()
                }
            }
        };
        for peer in ask {
            self.queue(peer, want_blocks(&[cid]));
        }
        let _guard = FetchGuard { bitswap: self, cid };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(block))) => Ok(block),
            Ok(Ok(Err(0))) | Ok(Err(_)) => Err(FetchError::NoPeers(cid)),
            Ok(Ok(Err(asked))) => Err(FetchError::NotFound { cid, asked }),
            Err(_) => Err(FetchError::Timeout {
                cid,
                after: timeout,
            }),
        }
    }

    /// Asks `peer` whether it holds `cid` (a want-have asking for `DontHave` too): `Some` with
    /// its answer, `None` when it is not connected, its queue is full, [`MAX_OPEN_FETCHES`]
    /// questions are open, or it does not answer within `timeout`. The answer is the peer's
    /// word: nothing is fetched.
    pub async fn has(&self, peer: PeerId, cid: Cid, timeout: Duration) -> Option<bool> {
        if !self.inner.peers.lock().unwrap().contains(&peer) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut probes = self.inner.probes.lock().unwrap();
            probes.retain(|_, waiting| {
                waiting.retain(|tx| !tx.is_closed());
                !waiting.is_empty()
            });
            if probes.len() >= MAX_OPEN_FETCHES && !probes.contains_key(&(peer, cid)) {
                return None;
            }
            probes.entry((peer, cid)).or_default().push(tx);
        }
        self.queue(peer, want_have(cid));
        tokio::time::timeout(timeout, rx).await.ok()?.ok()
    }

    /// Asks the swarm's driver to look `cid` up in the DHT, and starts the task that marks
    /// the end of that lookup on the want; `None` when there is no DHT or [`MAX_LOOKUPS`] are
    /// queued.
    fn look_up(&self, cid: Cid) -> Option<LookupTask> {
        let lookups = self.inner.lookups.as_ref()?;
        let (done, ended) = oneshot::channel();
        lookups.try_send(Lookup { cid, done }).ok()?;
        let generation = self.inner.lookups_started.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(lookup_ended(
            Arc::downgrade(&self.inner),
            cid,
            generation,
            ended,
        ));
        Some(LookupTask {
            generation,
            task: Some(task.abort_handle()),
        })
    }

    async fn read_stream(&self, peer: PeerId, mut stream: Stream) {
        loop {
            let read = wire::read(&mut stream, MAX_MESSAGE_BYTES, &self.inner.read_budget);
            match tokio::time::timeout(IDLE_STREAM, read).await {
                Ok(Ok(Some((msg, permit)))) => self.on_message(peer, msg, permit).await,
                Ok(Ok(None)) | Err(_) => break,
                Ok(Err(e)) => {
                    self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "Bitswap message refused: {e}");
                    break;
                }
            }
        }
    }

    /// One message from `peer`; `read` is its share of the read budget, given back once the
    /// message is sorted (before any answer waits for room).
    async fn on_message(&self, peer: PeerId, msg: Message, read: OwnedSemaphorePermit) {
        let stats = &self.inner.stats;
        for block in msg.payload {
            self.take_block(peer, block);
        }
        if !msg.blocks.is_empty() {
            // Bitswap 1.0.0 blocks (CIDv0, dag-pb): never asked for by this node.
            stats
                .blocks_unwanted
                .fetch_add(msg.blocks.len() as u64, Ordering::Relaxed);
        }
        for p in msg.block_presences {
            let Ok(cid) = Cid::try_from(p.cid.as_slice()) else {
                continue;
            };
            let have = p.r#type == PresenceType::Have as i32;
            if let Some(asking) = self.inner.probes.lock().unwrap().remove(&(peer, cid)) {
                for tx in asking {
                    let _ = tx.send(have);
                }
            }
            if p.r#type == PresenceType::DontHave as i32 {
                self.dont_have(peer, cid);
            }
        }
        let Some(list) = msg.wantlist else { return };
        if self.is_paused(peer) {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut seen = BTreeSet::new();
        let mut wants: Vec<Entry> = list
            .entries
            .into_iter()
            .filter(|e| !e.cancel && seen.insert(e.block.clone()))
            .collect();
        drop(seen);
        if wants.len() > MAX_WANTS_PER_MESSAGE {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            wants.truncate(MAX_WANTS_PER_MESSAGE);
        }
        drop(read);
        // One answer at a time: read up to MAX_ANSWER_BYTES of blocks, queue it, go on. The
        // answer budget is taken before the blocks are read and given back once written.
        let mut rest: std::collections::VecDeque<Entry> = wants.into();
        let reserve = (MAX_ANSWER_BYTES.max(MAX_BLOCK_BYTES) / 1024) as u32;
        let share = self.share_of(peer);
        while !rest.is_empty() {
            // The peer's own share first: a peer that does not read waits on its own share,
            // and holds at most that much of everyone's.
            let Ok(mut mine) = share.clone().acquire_many_owned(reserve).await else {
                return;
            };
            let Ok(mut permit) = self
                .inner
                .answer_budget
                .clone()
                .acquire_many_owned(reserve)
                .await
            else {
                return;
            };
            if self.is_paused(peer) {
                return;
            }
            let source = self.inner.source.clone();
            let Ok((msg, left)) =
                tokio::task::spawn_blocking(move || answer(source.as_deref(), rest)).await
            else {
                return;
            };
            rest = left;
            // Keep only the budget the answer takes.
            let size = msg.as_ref().map_or(0, prost::Message::encoded_len);
            let keep = size.div_ceil(1024).max(1);
            drop(permit.split(permit.num_permits().saturating_sub(keep)));
            drop(mine.split(mine.num_permits().saturating_sub(keep)));
            let budget = AnswerBudget {
                _shared: permit,
                _peer: mine,
            };
            if let Some(msg) = msg {
                for b in &msg.payload {
                    stats.blocks_served.fetch_add(1, Ordering::Relaxed);
                    stats
                        .bytes_served
                        .fetch_add(b.data.len() as u64, Ordering::Relaxed);
                }
                let dont = msg
                    .block_presences
                    .iter()
                    .filter(|p| p.r#type == PresenceType::DontHave as i32)
                    .count();
                stats
                    .dont_have_sent
                    .fetch_add(dont as u64, Ordering::Relaxed);
                if !self.queue_waiting(peer, msg, budget).await {
                    return;
                }
            }
        }
    }

    /// `peer`'s share of the answer budget (made on first use; the share is at least one
    /// answer's reserve, or no answer could ever be built).
    fn share_of(&self, peer: PeerId) -> Arc<Semaphore> {
        // A reserve, plus the framing a block's answer adds to it.
        let reserve = MAX_ANSWER_BYTES.max(MAX_BLOCK_BYTES) + 64 * 1024;
        let kib = self.inner.limits.answer_bytes_per_peer.max(reserve) / 1024;
        self.inner
            .answer_shares
            .lock()
            .unwrap()
            .entry(peer)
            .or_insert_with(|| Arc::new(Semaphore::new(kib)))
            .clone()
    }

    /// Whether `peer`'s wants are being ignored (its answers could not be written).
    fn is_paused(&self, peer: PeerId) -> bool {
        let mut paused = self.inner.paused.lock().unwrap();
        match paused.get(&peer) {
            Some(until) if std::time::Instant::now() < *until => true,
            Some(_) => {
                paused.remove(&peer);
                false
            }
            None => false,
        }
    }

    /// `peer` did not take an answer within [`SEND_TIMEOUT`]: its wants are ignored for
    /// [`Limits::stalled_peer_pause`].
    fn pause(&self, peer: PeerId) {
        let pause = self.inner.limits.stalled_peer_pause;
        if pause.is_zero() {
            return;
        }
        self.inner
            .stats
            .peers_paused
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, "Bitswap peer does not read its answers: ignored for {pause:?}");
        let now = std::time::Instant::now();
        let mut paused = self.inner.paused.lock().unwrap();
        // Expired pauses go here (peers that never come back): the map holds only live ones,
        // at most one a peer that stalled within the last pause.
        paused.retain(|_, until| *until > now);
        paused.insert(peer, now + pause);
    }

    /// A received block: handed to whoever wants the CID its bytes hash to, or dropped.
    fn take_block(&self, from: PeerId, block: Block) {
        let stats = &self.inner.stats;
        let cid = (block.data.len() <= MAX_BLOCK_BYTES)
            .then(|| wire::cid_of(&block))
            .flatten();
        let want = cid.and_then(|cid| self.inner.wants.lock().unwrap().remove(&cid));
        let Some(want) = want else {
            stats.blocks_unwanted.fetch_add(1, Ordering::Relaxed);
            return;
        };
        stats.blocks_fetched.fetch_add(1, Ordering::Relaxed);
        for tx in want.waiters {
            let _ = tx.send(Ok(block.data.clone()));
        }
        // The others asked may still hold the want in their ledger: cancel it there.
        let cid = cid.expect("a want was found under it");
        for peer in want.asked.into_iter().filter(|p| *p != from) {
            self.queue(peer, cancel_of(cid));
        }
    }

    /// Ends a hopeless want (taken out of the map): its fetches fail with how many peers were
    /// asked, and the want is cancelled at each of them.
    fn give_up(&self, cid: Cid, w: Want) {
        for tx in w.waiters {
            let _ = tx.send(Err(w.asked.len()));
        }
        for peer in w.asked {
            self.queue(peer, cancel_of(cid));
        }
    }

    fn dont_have(&self, peer: PeerId, cid: Cid) {
        let mut wants = self.inner.wants.lock().unwrap();
        let Some(w) = wants.get_mut(&cid) else { return };
        if w.asked.contains(&peer) {
            w.dont_have.insert(peer);
        }
        if w.hopeless() {
            let w = wants.remove(&cid).expect("looked up above");
            drop(wants);
            self.give_up(cid, w);
        }
    }

    /// Queues `msg` for `peer` without waiting; dropped (and counted) when its queue is full.
    fn queue(&self, peer: PeerId, msg: Message) {
        let Some(tx) = self.writer(peer, true) else {
            return; // disconnected: nothing to say to it
        };
        if tx.try_send((msg, None)).is_err() {
            self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "Bitswap message dropped: the peer's queue is full");
        }
    }

    /// Queues `msg` for `peer`, waiting for room (backpressure on the peer's own reading
    /// task); false when the peer is gone.
    async fn queue_waiting(&self, peer: PeerId, msg: Message, budget: AnswerBudget) -> bool {
        // The peer just sent us the message this answers: connected, even if the swarm's
        // event saying so has not reached `peer_up` yet (streams come on the connection's own
        // task, and can come first).
        let Some(tx) = self.writer(peer, false) else {
            return false;
        };
        tx.send((msg, Some(budget))).await.is_ok()
    }

    /// The queue of `peer`'s writer task, started on first use. With `connected`, `None` for a
    /// peer `peer_up` has not named (a writer then would dial it, and could outlive
    /// `peer_down`, which ends writers); answers skip that check (see `queue_waiting`).
    fn writer(&self, peer: PeerId, connected: bool) -> Option<mpsc::Sender<Outgoing>> {
        let mut out = self.inner.outbound.lock().unwrap();
        if let Some(tx) = out.get(&peer).filter(|tx| !tx.is_closed()) {
            return Some(tx.clone());
        }
        if connected && !self.inner.peers.lock().unwrap().contains(&peer) {
            return None;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        out.insert(peer, tx.clone());
        let control = self.inner.control.lock().unwrap().clone();
        tokio::spawn(write_to(Arc::downgrade(&self.inner), peer, control, rx));
        Some(tx)
    }

    /// `peer` cannot take `msg` (it speaks no Bitswap): the wants in it are answered for it.
    fn undeliverable(&self, peer: PeerId, msg: &Message) {
        for e in msg.wantlist.iter().flat_map(|l| &l.entries) {
            if !e.cancel
                && let Ok(cid) = Cid::try_from(e.block.as_slice())
            {
                self.dont_have(peer, cid);
            }
        }
    }
}

/// A fetch's DHT lookup ended (its providers dialled, and asked if they connected): from now
/// on `DontHave` from everyone asked ends the fetch.
async fn lookup_ended(inner: Weak<Inner>, cid: Cid, generation: u64, ended: oneshot::Receiver<()>) {
    let _ = ended.await;
    let Some(inner) = inner.upgrade() else { return };
    let me = Bitswap { inner };
    let mut wants = me.inner.wants.lock().unwrap();
    let Some(w) = wants.get_mut(&cid) else { return };
    match &mut w.lookup {
        Some(l) if l.generation == generation => {
            // This task is ending: nothing to abort.
            l.task = None;
            w.lookup = None;
        }
        // Another fetch's lookup (or none): not this one's to end.
        _ => return,
    }
    if w.hopeless() {
        let w = wants.remove(&cid).expect("looked up above");
        drop(wants);
        me.give_up(cid, w);
    }
}

/// Takes the inbound Bitswap streams of every peer and reads each in a task of its own.
async fn accept(inner: Weak<Inner>, mut incoming: libp2p_stream::IncomingStreams) {
    while let Some((peer, stream)) = incoming.next().await {
        let Some(inner) = inner.upgrade() else { return };
        let first = {
            let mut per = inner.streams_of.lock().unwrap();
            let n = per.entry(peer).or_default();
            if *n >= MAX_STREAMS_PER_PEER {
                None
            } else {
                *n += 1;
                Some(*n == 1)
            }
        };
        let Some(first) = first else {
            inner.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "Bitswap stream refused: {MAX_STREAMS_PER_PEER} open");
            continue;
        };
        // A peer's first stream is always read (the connection limits bound how many peers
        // there are); further ones share MAX_INBOUND_STREAMS.
        let permit = match inner.streams.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) if first => None,
            Err(_) => {
                let _slot = StreamSlot {
                    inner: inner.clone(),
                    peer,
                    _permit: None,
                };
                inner.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "Bitswap stream refused: {MAX_INBOUND_STREAMS} open");
                continue;
            }
        };
        let slot = StreamSlot {
            inner: inner.clone(),
            peer,
            _permit: permit,
        };
        let me = Bitswap { inner };
        tokio::spawn(async move {
            let _slot = slot;
            me.read_stream(peer, stream).await;
        });
    }
}

/// A peer's writer: its messages in order on one stream, reopened after an error. Ends with
/// its queue (the peer disconnected) or the engine.
async fn write_to(
    inner: Weak<Inner>,
    peer: PeerId,
    mut control: libp2p_stream::Control,
    mut queue: mpsc::Receiver<Outgoing>,
) {
    let mut stream: Option<Stream> = None;
    // The budget an answer holds is given back once it is written (or given up).
    while let Some((msg, budget)) = queue.recv().await {
        let Some(engine) = inner.upgrade().map(|inner| Bitswap { inner }) else {
            return;
        };
        let answer = budget.is_some();
        if answer && engine.is_paused(peer) {
            // An answer queued before the pause (it waited for room): dropped unwritten. Our
            // own wants and cancels still go.
            continue;
        }
        let written = tokio::time::timeout(SEND_TIMEOUT, async {
            if stream.is_none() {
                stream = Some(control.open_stream(peer, BITSWAP_PROTOCOL).await?);
            }
            let s = stream.as_mut().expect("opened above");
            wire::write(s, &msg).await.map_err(OpenStreamError::Io)
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(OpenStreamError::UnsupportedProtocol(_))) => {
                tracing::debug!(%peer, "the peer speaks no Bitswap");
                engine.undeliverable(peer, &msg);
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, "Bitswap message not sent: {e}");
                stream = None;
            }
            Err(_) => {
                tracing::debug!(%peer, "Bitswap message not sent within {SEND_TIMEOUT:?}");
                engine
                    .inner
                    .stats
                    .send_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                stream = None;
                // A peer that does not take an answer: the answers waiting for it are dropped
                // (their budget given back at once), and its wants are ignored for a while.
                // Our own wants and cancels in the queue stay.
                if answer && !engine.inner.limits.stalled_peer_pause.is_zero() {
                    engine.pause(peer);
                    let mut kept = vec![];
                    while let Ok(m) = queue.try_recv() {
                        if m.1.is_none() {
                            kept.push(m);
                        }
                    }
                    for m in kept {
                        if let Some(tx) = engine.inner.outbound.lock().unwrap().get(&peer) {
                            let _ = tx.try_send(m);
                        }
                    }
                }
            }
        }
    }
    if let Some(mut s) = stream {
        let _ = s.close().await;
    }
}

/// Sends every open want again, every [`WANT_RESEND`], to the peers asked that have not said
/// `DontHave` (a want or its answer lost on the way costs one interval).
async fn resend_wants(inner: Weak<Inner>) {
    let mut every = tokio::time::interval(WANT_RESEND);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(engine) = inner.upgrade().map(|inner| Bitswap { inner }) else {
            return;
        };
        let mut per_peer: HashMap<PeerId, Vec<Cid>> = HashMap::new();
        for (cid, w) in engine.inner.wants.lock().unwrap().iter() {
            for p in w.asked.difference(&w.dont_have) {
                per_peer.entry(*p).or_default().push(*cid);
            }
        }
        for (peer, cids) in per_peer {
            engine.queue(peer, want_blocks(&cids));
        }
    }
}

/// The next answer to a peer's wants, from `source`: wants are taken from the front of `wants`
/// until the blocks in the answer reach [`MAX_ANSWER_BYTES`] (a larger block goes alone); the
/// wants left are handed back. `None` when nothing in the wants taken calls for an answer.
fn answer(
    source: Option<&dyn BlockSource>,
    mut wants: std::collections::VecDeque<Entry>,
) -> (Option<Message>, std::collections::VecDeque<Entry>) {
    let mut msg = Message::default();
    let mut bytes = 0;
    while let Some(e) = wants.pop_front() {
        let Ok(cid) = Cid::try_from(e.block.as_slice()) else {
            continue;
        };
        let held = source
            .and_then(|s| s.get(&cid))
            .filter(|b| b.len() <= MAX_BLOCK_BYTES);
        match held {
            Some(data) if e.want_type == WantType::Block as i32 => {
                if bytes > 0 && bytes + data.len() > MAX_ANSWER_BYTES {
                    wants.push_front(e);
                    break;
                }
                bytes += data.len();
                msg.payload.push(Block {
                    prefix: wire::prefix_of(&cid),
                    data,
                });
            }
            Some(_) => msg.block_presences.push(BlockPresence {
                cid: e.block,
                r#type: PresenceType::Have as i32,
            }),
            None if e.send_dont_have => msg.block_presences.push(BlockPresence {
                cid: e.block,
                r#type: PresenceType::DontHave as i32,
            }),
            None => {}
        }
    }
    let any = !msg.payload.is_empty() || !msg.block_presences.is_empty();
    (any.then_some(msg), wants)
}

fn want_blocks(cids: &[Cid]) -> Message {
    Message {
        wantlist: Some(Wantlist {
            entries: cids
                .iter()
                .map(|c| Entry {
                    block: c.to_bytes(),
                    priority: 1,
                    cancel: false,
                    want_type: WantType::Block as i32,
                    send_dont_have: true,
                })
                .collect(),
            full: false,
        }),
        ..Default::default()
    }
}

fn want_have(cid: Cid) -> Message {
    Message {
        wantlist: Some(Wantlist {
            entries: vec![Entry {
                block: cid.to_bytes(),
                priority: 1,
                cancel: false,
                want_type: WantType::Have as i32,
                send_dont_have: true,
            }],
            full: false,
        }),
        ..Default::default()
    }
}

fn cancel_of(cid: Cid) -> Message {
    Message {
        wantlist: Some(Wantlist {
            entries: vec![Entry {
                block: cid.to_bytes(),
                cancel: true,
                ..Default::default()
            }],
            full: false,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn raw_cid(data: &[u8]) -> Cid {
        let mh = multihash::Multihash::<64>::wrap(wire::SHA2_256, &Sha256::digest(data)).unwrap();
        Cid::new_v1(0x55, mh)
    }

    struct Held(Vec<Vec<u8>>);
    impl BlockSource for Held {
        fn get(&self, cid: &Cid) -> Option<Vec<u8>> {
            self.0.iter().find(|b| raw_cid(b) == *cid).cloned()
        }
    }

    /// A fetch's lookup lives as long as the fetch: when the fetch ends (here at its
    /// deadline) the lookup's channel closes, which is how the driver knows to stop the query;
    /// a lookup that ends while no fetch waits changes nothing; a later fetch of the same CID
    /// gets a lookup of its own, and `DontHave` from everyone waits for that lookup's end.
    #[tokio::test]
    async fn a_lookup_ends_with_its_fetch_and_holds_back_not_found_until_it_ends() {
        let (tx, mut rx) = mpsc::channel(MAX_LOOKUPS);
        let bs = Bitswap::with(
            libp2p_stream::Behaviour::new().new_control(),
            None,
            Some(tx),
            Limits::default(),
        );
        let cid = raw_cid(b"x");
        let r = bs.fetch(cid, Duration::from_millis(50)).await;
        assert!(matches!(r, Err(FetchError::Timeout { .. })), "{r:?}");
        let mut first = rx.try_recv().expect("the fetch asked for a lookup");
        tokio::time::timeout(Duration::from_secs(5), first.done.closed())
            .await
            .expect("the ended fetch let go of its lookup");

        // A second fetch, one peer: its DontHave does not end the fetch while the lookup runs.
        let peer = PeerId::random();
        bs.inner.peers.lock().unwrap().insert(peer);
        let fetch = tokio::spawn({
            let bs = bs.clone();
            async move { bs.fetch(cid, Duration::from_secs(10)).await }
        });
        let second = loop {
            if let Ok(l) = rx.try_recv() {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        bs.dont_have(peer, cid);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!fetch.is_finished(), "NotFound before the lookup ended");
        // The lookup ends having found no one else: now the fetch fails at once.
        second.done.send(()).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), fetch)
            .await
            .expect("ends once the lookup did")
            .unwrap();
        assert_eq!(r, Err(FetchError::NotFound { cid, asked: 1 }));
    }

    fn entry(cid: &Cid, want_type: WantType, send_dont_have: bool) -> Entry {
        Entry {
            block: cid.to_bytes(),
            want_type: want_type as i32,
            send_dont_have,
            ..Default::default()
        }
    }

    #[test]
    fn answers_are_packed_one_bounded_message_at_a_time() {
        let blocks: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 600 * 1024]).collect();
        let source = Held(blocks.clone());
        let missing = raw_cid(b"not here");
        let mut wants: std::collections::VecDeque<Entry> = blocks
            .iter()
            .map(|b| entry(&raw_cid(b), WantType::Block, true))
            .collect();
        wants.push_front(entry(&missing, WantType::Block, true));
        wants.push_front(entry(&raw_cid(&blocks[2]), WantType::Have, false));
        wants.push_back(entry(&missing, WantType::Have, false));

        let mut messages = vec![];
        while !wants.is_empty() {
            let (msg, rest) = answer(Some(&source), wants);
            wants = rest;
            messages.extend(msg);
        }
        // 600 KiB blocks: one a message (two would pass MAX_ANSWER_BYTES).
        assert_eq!(messages.len(), 3);
        for (m, b) in messages.iter().zip(&blocks) {
            assert_eq!(m.payload.len(), 1);
            assert_eq!(m.payload[0].data, *b);
            assert_eq!(wire::cid_of(&m.payload[0]), Some(raw_cid(b)));
        }
        // The presences ride with the first answer: Have for the want-have of a held block,
        // DontHave only where it was asked for.
        let p = &messages[0].block_presences;
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].r#type, PresenceType::Have as i32);
        assert_eq!(p[1].r#type, PresenceType::DontHave as i32);
        assert_eq!(p[1].cid, missing.to_bytes());
        // Without a source: DontHave where asked, nothing else.
        let (msg, rest) = answer(None, [entry(&missing, WantType::Block, false)].into());
        assert!(msg.is_none() && rest.is_empty());
    }
}
