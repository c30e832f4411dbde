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
//! * **Streams**: every message goes out on a stream of its own, opened, written and closed
//!   (as the spec allows; go-bitswap and Helia read every message of every inbound stream).
//!   Inbound streams are read message after message until the peer closes them or is idle
//!   for [`IDLE_STREAM`].
//! * **Serving** is stateless: a want is answered at once from the [`BlockSource`] (the block,
//!   `Have`, or, when asked for, `DontHave`) and not remembered, so a peer that wants a block
//!   this node does not have yet must ask again (Helia and go-bitswap do, on a timer). This
//!   keeps no per-peer ledger to bound.
//! * **Fetching** ([`Bitswap::fetch`]) sends `want-block` with `send-dont-have` to every
//!   connected peer (and to peers that connect while the want is open) and takes the first
//!   block whose bytes hash to the CID asked for; the block's sender names no CID (its CID is
//!   computed here, [`wire::cid_of`]), so no peer can pass one block off as another. When every
//!   peer asked said `DontHave` the fetch fails at once with [`FetchError::NotFound`];
//!   otherwise at its deadline. Only sha2-256 CIDs are fetched (what this node can check).
//! * **Bounds**: [`MAX_MESSAGE_BYTES`] a message, [`MAX_WANTS_PER_MESSAGE`] wants answered a
//!   message, [`MAX_INBOUND_STREAMS`] inbound streams read at once ([`MAX_STREAMS_PER_PEER`] a
//!   peer), [`MAX_OPEN_FETCHES`] CIDs being fetched, answers of at most
//!   [`MAX_ANSWER_BYTES`] each.

pub mod wire;

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use cid::Cid;
use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::{Semaphore, oneshot};

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
    /// [`MAX_WANTS_PER_MESSAGE`].
    pub refused: AtomicU64,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    #[error("{0}: only sha2-256 CIDs can be checked, so only those are fetched")]
    UncheckableHash(Cid),
    #[error("no peer is connected to ask for {0}")]
    NoPeers(Cid),
    #[error("none of the {asked} connected peers has {cid}")]
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
    wants: Mutex<HashMap<Cid, Want>>,
    peers: Mutex<BTreeSet<PeerId>>,
    streams: Arc<Semaphore>,
    streams_of: Mutex<HashMap<PeerId, usize>>,
    stats: BitswapStats,
}

/// One CID being fetched.
struct Want {
    waiters: Vec<oneshot::Sender<Option<Vec<u8>>>>,
    asked: BTreeSet<PeerId>,
    dont_have: BTreeSet<PeerId>,
}

impl Bitswap {
    /// Starts serving `/ipfs/bitswap/1.2.0` on `streams` (the swarm's stream behaviour) from
    /// `source` (`None`: answer every want with `DontHave`, still fetch). Needs a tokio
    /// runtime.
    pub fn start(
        streams: &libp2p_stream::Behaviour,
        source: Option<Arc<dyn BlockSource>>,
    ) -> Bitswap {
        let mut control = streams.new_control();
        let incoming = control
            .accept(BITSWAP_PROTOCOL)
            .expect("the Bitswap protocol is registered once, here");
        let me = Bitswap {
            inner: Arc::new(Inner {
                control: Mutex::new(control),
                source,
                wants: Default::default(),
                peers: Default::default(),
                streams: Arc::new(Semaphore::new(MAX_INBOUND_STREAMS)),
                streams_of: Default::default(),
                stats: Default::default(),
            }),
        };
        tokio::spawn(me.clone().accept(incoming));
        me
    }

    /// An engine on no swarm: no peer ever connects, so it serves nothing and every fetch
    /// fails with [`FetchError::NoPeers`] (an API without a network, in tests).
    pub fn unconnected() -> Bitswap {
        Bitswap {
            inner: Arc::new(Inner {
                control: Mutex::new(libp2p_stream::Behaviour::new().new_control()),
                source: None,
                wants: Default::default(),
                peers: Default::default(),
                streams: Arc::new(Semaphore::new(MAX_INBOUND_STREAMS)),
                streams_of: Default::default(),
                stats: Default::default(),
            }),
        }
    }

    pub fn stats(&self) -> &BitswapStats {
        &self.inner.stats
    }

    /// A peer connected: it is asked for every open want too.
    pub fn peer_up(&self, peer: PeerId) {
        self.inner.peers.lock().unwrap().insert(peer);
        let open: Vec<Cid> = {
            let mut wants = self.inner.wants.lock().unwrap();
            wants
                .iter_mut()
                .filter_map(|(cid, w)| w.asked.insert(peer).then_some(*cid))
                .collect()
        };
        if !open.is_empty() {
            self.send_in_background(peer, want_blocks(&open));
        }
    }

    /// A peer disconnected: a want it was the last hope of fails now.
    pub fn peer_down(&self, peer: PeerId) {
        self.inner.peers.lock().unwrap().remove(&peer);
        let mut wants = self.inner.wants.lock().unwrap();
        let cids: Vec<Cid> = wants.keys().copied().collect();
        for cid in cids {
            let w = wants.get_mut(&cid).expect("listed above");
            if w.asked.remove(&peer) {
                w.dont_have.remove(&peer);
                if w.dont_have.len() == w.asked.len() {
                    for tx in wants.remove(&cid).expect("listed above").waiters {
                        let _ = tx.send(None);
                    }
                }
            }
        }
    }

    /// Fetches the block `cid` from the connected peers: the first block whose bytes hash to
    /// `cid`, within `timeout`.
    pub async fn fetch(&self, cid: Cid, timeout: Duration) -> Result<Vec<u8>, FetchError> {
        if !wire::checkable(&cid) {
            return Err(FetchError::UncheckableHash(cid));
        }
        let (tx, rx) = oneshot::channel();
        let (ask, asked) = {
            let mut wants = self.inner.wants.lock().unwrap();
            match wants.get_mut(&cid) {
                Some(w) => {
                    w.waiters.push(tx);
                    (vec![], w.asked.len())
                }
                None => {
                    if wants.len() >= MAX_OPEN_FETCHES {
                        return Err(FetchError::Busy(MAX_OPEN_FETCHES));
                    }
                    let peers = self.inner.peers.lock().unwrap().clone();
                    if peers.is_empty() {
                        return Err(FetchError::NoPeers(cid));
                    }
                    wants.insert(
                        cid,
                        Want {
                            waiters: vec![tx],
                            asked: peers.clone(),
                            dont_have: BTreeSet::new(),
                        },
                    );
                    let n = peers.len();
                    (peers.into_iter().collect::<Vec<_>>(), n)
                }
            }
        };
        for peer in ask {
            self.send_in_background(peer, want_blocks(&[cid]));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Some(block))) => Ok(block),
            Ok(Ok(None)) | Ok(Err(_)) => Err(FetchError::NotFound { cid, asked }),
            Err(_) => {
                // Forget this waiter; the last one gone cancels the want at every peer asked.
                let cancel = {
                    let mut wants = self.inner.wants.lock().unwrap();
                    match wants.get_mut(&cid) {
                        Some(w) => {
                            w.waiters.retain(|tx| !tx.is_closed());
                            if w.waiters.is_empty() {
                                wants.remove(&cid).map(|w| w.asked)
                            } else {
                                None
                            }
                        }
                        None => None,
                    }
                };
                for peer in cancel.into_iter().flatten() {
                    self.send_in_background(peer, cancel_of(cid));
                }
                Err(FetchError::Timeout {
                    cid,
                    after: timeout,
                })
            }
        }
    }

    async fn accept(self, mut incoming: libp2p_stream::IncomingStreams) {
        while let Some((peer, stream)) = incoming.next().await {
            let Ok(permit) = self.inner.streams.clone().try_acquire_owned() else {
                self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "Bitswap stream refused: {MAX_INBOUND_STREAMS} open");
                continue;
            };
            {
                let mut per = self.inner.streams_of.lock().unwrap();
                let n = per.entry(peer).or_default();
                if *n >= MAX_STREAMS_PER_PEER {
                    self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "Bitswap stream refused: {MAX_STREAMS_PER_PEER} open");
                    continue;
                }
                *n += 1;
            }
            let me = self.clone();
            tokio::spawn(async move {
                me.read_stream(peer, stream).await;
                let mut per = me.inner.streams_of.lock().unwrap();
                if let Some(n) = per.get_mut(&peer) {
                    *n -= 1;
                    if *n == 0 {
                        per.remove(&peer);
                    }
                }
                drop(permit);
            });
        }
    }

    async fn read_stream(&self, peer: PeerId, mut stream: Stream) {
        loop {
            match tokio::time::timeout(IDLE_STREAM, wire::read(&mut stream, MAX_MESSAGE_BYTES))
                .await
            {
                Ok(Ok(Some(msg))) => self.on_message(peer, msg).await,
                Ok(Ok(None)) | Err(_) => break,
                Ok(Err(e)) => {
                    self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "Bitswap message refused: {e}");
                    break;
                }
            }
        }
    }

    async fn on_message(&self, peer: PeerId, msg: Message) {
        let stats = &self.inner.stats;
        for block in msg.payload {
            self.take_block(block);
        }
        if !msg.blocks.is_empty() {
            // Bitswap 1.0.0 blocks (CIDv0, dag-pb): never asked for by this node.
            stats
                .blocks_unwanted
                .fetch_add(msg.blocks.len() as u64, Ordering::Relaxed);
        }
        for p in msg.block_presences {
            if p.r#type == PresenceType::DontHave as i32
                && let Ok(cid) = Cid::try_from(p.cid.as_slice())
            {
                self.dont_have(peer, cid);
            }
        }
        let Some(list) = msg.wantlist else { return };
        let mut wants: Vec<Entry> = list.entries.into_iter().filter(|e| !e.cancel).collect();
        if wants.len() > MAX_WANTS_PER_MESSAGE {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            wants.truncate(MAX_WANTS_PER_MESSAGE);
        }
        if wants.is_empty() {
            return;
        }
        let source = self.inner.source.clone();
        let Ok(answers) =
            tokio::task::spawn_blocking(move || answer(source.as_deref(), wants)).await
        else {
            return;
        };
        for msg in answers {
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
            if let Err(e) = self.send(peer, &msg).await {
                tracing::debug!(%peer, "Bitswap answer not sent: {e}");
                break;
            }
        }
    }

    /// A received block: handed to whoever wants the CID its bytes hash to, or dropped.
    fn take_block(&self, block: Block) {
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
            let _ = tx.send(Some(block.data.clone()));
        }
    }

    fn dont_have(&self, peer: PeerId, cid: Cid) {
        let mut wants = self.inner.wants.lock().unwrap();
        let Some(w) = wants.get_mut(&cid) else { return };
        if w.asked.contains(&peer) {
            w.dont_have.insert(peer);
        }
        if w.dont_have.len() == w.asked.len() {
            for tx in wants.remove(&cid).expect("looked up above").waiters {
                let _ = tx.send(None);
            }
        }
    }

    fn send_in_background(&self, peer: PeerId, msg: Message) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.send(peer, &msg).await {
                tracing::debug!(%peer, "Bitswap message not sent: {e}");
                // A peer that cannot take the want cannot answer it either.
                for e in msg.wantlist.iter().flat_map(|l| &l.entries) {
                    if let Ok(cid) = Cid::try_from(e.block.as_slice()) {
                        me.dont_have(peer, cid);
                    }
                }
            }
        });
    }

    /// One message on a stream of its own.
    async fn send(&self, peer: PeerId, msg: &Message) -> std::io::Result<()> {
        let mut control = self.inner.control.lock().unwrap().clone();
        let io = async {
            let mut stream = control
                .open_stream(peer, BITSWAP_PROTOCOL)
                .await
                .map_err(std::io::Error::other)?;
            wire::write(&mut stream, msg).await?;
            stream.close().await
        };
        tokio::time::timeout(SEND_TIMEOUT, io)
            .await
            .map_err(|_| std::io::Error::other("timed out"))?
    }
}

/// The answers to a peer's wants, from `source`, in messages of at most [`MAX_ANSWER_BYTES`]
/// of blocks (a larger block goes alone).
fn answer(source: Option<&dyn BlockSource>, wants: Vec<Entry>) -> Vec<Message> {
    let mut out = vec![Message::default()];
    let mut bytes = 0;
    for e in wants {
        let Ok(cid) = Cid::try_from(e.block.as_slice()) else {
            continue;
        };
        let held = source
            .and_then(|s| s.get(&cid))
            .filter(|b| b.len() <= MAX_BLOCK_BYTES);
        let msg = out.last_mut().expect("never empty");
        match held {
            Some(data) if e.want_type == WantType::Block as i32 => {
                if bytes > 0 && bytes + data.len() > MAX_ANSWER_BYTES {
                    out.push(Message::default());
                    bytes = 0;
                }
                bytes += data.len();
                out.last_mut().expect("never empty").payload.push(Block {
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
    out.retain(|m| !m.payload.is_empty() || !m.block_presences.is_empty());
    out
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
