//! # One node, sans-IO
//!
//! [`NodeState`] is everything a Chorus node decides: what it does with a gossiped block, a
//! sync request or answer, a local write, a peer that comes or goes, and the passing of time.
//! The node actor (`chorus-node`) and the simulator (`chorus-sim`) both drive this type; they
//! only move bytes and time in and effects out, so the simulator's oracle checks the node we
//! ship.
//!
//! ## Driving it
//!
//! A *turn* is: [`handle`](NodeState::handle) every input that arrived (cheap: it only
//! records), then [`end_turn`](NodeState::end_turn) once, then drain
//! [`poll_output`](NodeState::poll_output). `end_turn` does the work in a fixed order:
//!
//! 1. decode every block of the turn (the caller's decoder: the actor checks signatures on
//!    every core, the simulator caches) and ingest them in **one** commit;
//! 2. answer `Submit`s (`Stored` only after that commit), advance catch-up streams;
//! 3. open the write gate if the peers now confirm this node's own chain;
//! 4. run local writes (acknowledged once durable here, or for a light node once a full node
//!    stored them);
//! 5. serve requests from the state after the commit;
//! 6. on a tick: sync timers, pruning (light), expiry of held and unstored writes;
//! 7. hand a light node's pending writes to full peers.
//!
//! Time is the `now` argument (ms, any epoch, never decreasing); there is no randomness. The
//! machine state is folded only by [`fold`](NodeState::fold) (or on a tick when
//! [`Config::fold_on_tick`] is set): a burst of late events costs one rewind, and a caller
//! that never reads the state (the simulator) never pays for it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ipld_core::ipld::Ipld;

use super::{
    outbox::Outbox,
    write::{WriteError, WriteId, WriteResult},
};
use crate::{
    AuthorId, EventError, EventId, Machine, SignedEvent,
    local::{Local, LocalError},
    storage::Storage,
    sync::{self, Action, Cursor, Planned, SyncRequest, SyncResponse, Syncer},
    timeline::OrderKey,
};

/// Local writes held while this node waits for its peers to confirm its own chain (see
/// [`Syncer::own_chain_confirmed`]); more are refused at once.
pub const MAX_GATED_WRITES: usize = 64;
/// A held write fails with a clear error after this long.
pub const WRITE_GATE_TIMEOUT_MS: u64 = 15_000;

/// Bytes of own events one submission handed on after a light node's restart carries at most
/// (at least one event; see [`NodeState::resubmit_step`]).
pub const RESUBMIT_BYTES: usize = 1024 * 1024;
/// No further submission is handed on while this many that no write waits for are queued.
pub const RESUBMIT_QUEUED: usize = 2;

/// Reads of an own event to hand on that may fail before the hand-on gives up (until the
/// next start).
pub const RESUBMIT_READ_TRIES: u32 = 5;

/// A light node on disk handing its own events on after a start.
#[derive(Debug, Clone)]
struct Resubmit<P> {
    /// The highest own sequence number held at start.
    upto: u64,
    /// The next one to hand on; `None` until a full peer said what it holds.
    next: Option<u64>,
    /// Each connected full peer's figure for this key's chain, as last counted.
    counted: BTreeMap<P, u64>,
    read_failures: u32,
}

/// The identifiers of one transport: who a peer is, and the handles by which a gossiped
/// message and an inbound request are answered.
pub trait Transport {
    type Peer: Ord + Clone + std::fmt::Display + std::fmt::Debug;
    type GossipId: std::fmt::Debug;
    type RequestId: std::fmt::Debug;
}

/// How a node runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Config {
    /// A light node: not a replica (serves only summaries, writes through full nodes,
    /// forgets the settled past unless [`light_on_disk`](Self::light_on_disk)).
    pub light: bool,
    /// A light node whose replica is on disk (`chorus node --light` without `--in-memory`):
    /// it forgets nothing (its blocks cost disk, not memory, and a replica reopened from disk
    /// needs every block to index its events again), so it restarts from its own newest
    /// checkpoint instead of catching up from nothing. Its outbox does not survive a restart:
    /// it hands the own events its full peers lack to the outbox again
    /// ([`NodeState::resubmit_step`]). Ignored for full nodes.
    pub light_on_disk: bool,
    /// Fold the machine state on every tick (so summaries carry a `state_hash` and a light
    /// node can prune). The simulator sets it for light nodes only; the actor folds itself.
    pub fold_on_tick: bool,
    /// The shell folds long rewinds in slices ([`NodeState::fold_step`]): an ingest never
    /// folds on its own (see `Timeline::set_auto_fold`).
    pub sliced_fold: bool,
    /// Heartbeats: a full node whose key is a member appends a `heartbeat` event (naming the
    /// current heads) when its latest event leaves out an event that is not a heartbeat, at
    /// most once per this many ms and not within this many ms of its own last write, so the
    /// settled frontier moves while members are idle
    /// ([`Timeline::owes_heartbeat`](crate::Timeline::owes_heartbeat)). `None`: never.
    pub heartbeat_ms: Option<u64>,
    /// Pages of blocks are read by the shell: a request for blocks is answered by an
    /// [`Output::ServePage`] (planned from the in-memory order here, its blocks read and
    /// packed by the shell with [`sync::pack`], e.g. off the actor thread) instead of an
    /// [`Output::Respond`] read here.
    pub pages_outside: bool,
}

/// What arrives at a node.
#[derive(Debug)]
pub enum Input<T: Transport> {
    /// A connection, and the signing key its identity proves when the shell knows one
    /// (libp2p: a node's identity is its member key). A peer whose key is no current member's
    /// nor a genesis reader's is a stranger: its requests share one budget.
    PeerUp {
        peer: T::Peer,
        key: Option<AuthorId>,
    },
    PeerDown(T::Peer),
    /// A gossiped event block; answered by an [`Output::Validated`] with the same `id`.
    Gossip {
        from: T::Peer,
        id: T::GossipId,
        block: Vec<u8>,
    },
    /// A sync request; answered by an [`Output::Respond`] with the same `id`.
    Request {
        peer: T::Peer,
        id: T::RequestId,
        req: SyncRequest,
    },
    /// The answer to a request this node sent.
    Response {
        peer: T::Peer,
        req: SyncRequest,
        resp: SyncResponse,
    },
    /// A request this node sent failed (timed out, connection gone, not sent at all).
    RequestFailed {
        peer: T::Peer,
        req: SyncRequest,
    },
    /// A local write: items `(kind, body)`; answered by an [`Output::WriteDone`].
    Append {
        write: WriteId,
        items: Vec<(String, Ipld)>,
    },
    /// Time passed: run the timers at the next `end_turn`.
    Tick,
}

/// What the node made of one gossiped block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// New here, and indexed.
    Accepted,
    /// New here, valid so far, waiting for its parents.
    Pending,
    /// Already held.
    Duplicate,
    /// Invalid (the sender is charged).
    Rejected,
    /// Not taken for lack of room (back-pressure: the pending set is full). Nothing is wrong
    /// with it or its sender: it is neither forwarded nor charged, and sync brings it again.
    Busy,
    /// New here, waiting for its parents, by a key no membership change held here names (a
    /// stranger, or a member whose addition has not arrived yet): held within the stranger
    /// quota, but not forwarded, and its parents are not asked for. Anyone can sign events
    /// with made-up parents; a member's own gossip reaches every node anyway.
    Held,
}

impl Verdict {
    /// Whether gossip should carry it on: anything valid, a duplicate too (which is how
    /// gossipsub scores a peer that forwards what it got).
    pub fn forward(self) -> bool {
        matches!(
            self,
            Verdict::Accepted | Verdict::Pending | Verdict::Duplicate
        )
    }
    /// Whether the sender is to blame.
    pub fn blame(self) -> bool {
        self == Verdict::Rejected
    }
}

/// What the node asks its shell to do.
#[derive(Debug)]
pub enum Output<T: Transport> {
    /// Send a sync request to a peer.
    Send {
        peer: T::Peer,
        req: SyncRequest,
    },
    /// Answer an inbound request.
    Respond {
        id: T::RequestId,
        resp: SyncResponse,
    },
    /// Answer an inbound request with a page of blocks: read them (every one is committed)
    /// and pack them with [`sync::pack`], then respond. Only with [`Config::pages_outside`].
    ServePage {
        id: T::RequestId,
        plan: sync::PagePlan,
    },
    /// The verdict on a gossiped block.
    Validated {
        id: T::GossipId,
        from: T::Peer,
        verdict: Verdict,
    },
    /// Disconnect from a peer and refuse it until `until` (ms).
    Ban {
        peer: T::Peer,
        until: u64,
    },
    /// A ban expired.
    Unban(T::Peer),
    Disconnect(T::Peer),
    /// Gossip this node's own new event.
    Publish(SignedEvent),
    /// A local write's outcome.
    WriteDone {
        write: WriteId,
        result: WriteResult,
    },
    /// These events were indexed here (ingested, released from pending, or written locally),
    /// in the order they were indexed.
    Indexed(Vec<EventId>),
    /// This node's state equals a peer's over the same heads (printed once per peer).
    InSync {
        peer: T::Peer,
        events: usize,
        state_hash: [u8; 32],
    },
    /// Same heads as a peer, a different `state_hash`: a determinism bug, to shout about.
    Diverged {
        peer: T::Peer,
    },
    /// The peers confirmed this node's own chain: it writes from now on.
    WritesOpen {
        last_sq: u64,
    },
    /// A commit failed; nothing of the turn's blocks was acknowledged (peers resend).
    StoreFailed(String),
}

/// Most peers [`NodeStats::invalid_by_peer`] names: peer ids are free, so an attacker with
/// many would otherwise grow it (and every status that lists it) without end.
pub const MAX_INVALID_PEERS_LISTED: usize = 256;

/// Counters, for status and metrics.
#[derive(Debug, Clone, Default)]
pub struct NodeStats {
    pub gossip_received: u64,
    pub blocks_received: u64,
    /// Blocks over the size bound (refused on their length).
    pub oversize: u64,
    /// Invalid blocks charged to each peer: the [`MAX_INVALID_PEERS_LISTED`] most charged
    /// (a peer with fewer is forgotten to make room); `invalid_total` counts them all.
    pub invalid_by_peer: BTreeMap<String, u64>,
    pub invalid_total: u64,
    pub rejected_by_code: BTreeMap<&'static str, u64>,
    /// Requests admitted (within the rate) and answered (the answer may still refuse one out
    /// of bounds); refusals for the rate are the syncer's `requests_refused`.
    pub requests_served: u64,
    pub appended: u64,
    /// Local writes refused because a peer would refuse them, per error code.
    pub refused_writes: BTreeMap<&'static str, u64>,
    /// How often the timeline grew.
    pub grew: u64,
    /// Heartbeats appended (see [`Config::heartbeat_ms`]), and those the store refused.
    pub heartbeats: u64,
    pub heartbeats_failed: u64,
}

impl NodeStats {
    /// Charges `n` invalid blocks to `peer`, keeping the list within its bound.
    pub fn charge_invalid(&mut self, peer: String, n: u64) {
        self.invalid_total += n;
        if let Some(c) = self.invalid_by_peer.get_mut(&peer) {
            *c += n;
            return;
        }
        if self.invalid_by_peer.len() >= MAX_INVALID_PEERS_LISTED {
            // The least charged gives way (the first in key order among equals): one scan,
            // only when a new peer is charged with the list full.
            let least = self
                .invalid_by_peer
                .iter()
                .min_by_key(|(_, c)| **c)
                .map(|(p, c)| (p.clone(), *c));
            match least {
                Some((_, c)) if c > n => return,
                Some((p, _)) => {
                    self.invalid_by_peer.remove(&p);
                }
                None => {}
            }
        }
        self.invalid_by_peer.insert(peer, n);
    }
}

/// A switched-off defence, for the simulator's sabotage tests only.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeSabotage {
    #[default]
    None,
    /// Write before the peers confirm the own chain.
    NoWriteGate,
    /// A light node acknowledges a write once signed, before a full node stored it.
    AckBeforeStored,
    /// Take every peer's word in sync: no catch-up stream is cut for paging nowhere, no claim
    /// of our own chain is checked.
    TrustSyncClaims,
    /// Strangers' requests draw only on their own per-peer buckets, none shared.
    NoStrangerBudget,
    /// A check of our own chain fails only at its request's two-minute timeout.
    NoOwnCheckStall,
}

/// Where an ingested block came from: who to charge if it is invalid.
#[derive(Debug)]
enum Source<T: Transport> {
    Gossip(T::GossipId, T::Peer),
    Page(T::Peer),
}

impl<T: Transport> Source<T> {
    fn peer(&self) -> &T::Peer {
        match self {
            Source::Gossip(_, p) | Source::Page(p) => p,
        }
    }
}

/// The shell's decoder: raw blocks → events (context-free checks and signatures), one result
/// per block, in order. The actor spreads it over every core; the simulator caches.
pub type Decoder<'a> = dyn FnMut(&[Vec<u8>]) -> Vec<Result<SignedEvent, EventError>> + 'a;

/// A local write waiting for the write gate: who, what, since when.
type Held = (WriteId, Vec<(String, Ipld)>, u64);

/// What one turn collected, worked off by `end_turn`.
/// A catch-up page: who, the cursor asked for, the next cursor, and the range of its blocks
/// in the turn's `blocks`.
type PageAnswer<P> = (P, Option<Cursor>, Option<Cursor>, usize, usize);

struct Turn<T: Transport> {
    blocks: Vec<(Vec<u8>, Source<T>)>,
    pages: Vec<PageAnswer<T::Peer>>,
    /// Answers to checks of our own chain: who, and the range of their blocks in `blocks`.
    own_checks: Vec<(T::Peer, usize, usize)>,
    requests: Vec<(T::Peer, T::RequestId, SyncRequest)>,
    /// Submits: who, the request to answer, the ids of its blocks.
    submits: Vec<(T::Peer, T::RequestId, Vec<EventId>)>,
    appends: Vec<(WriteId, Vec<(String, Ipld)>)>,
    tick: bool,
}

impl<T: Transport> Default for Turn<T> {
    fn default() -> Self {
        Turn {
            blocks: vec![],
            pages: vec![],
            own_checks: vec![],
            requests: vec![],
            submits: vec![],
            appends: vec![],
            tick: false,
        }
    }
}

/// What a turn's ingest made of its blocks, by block: whether it was new here; whether the
/// commit held; the ids refused for back-pressure; and, for each block that decoded with a
/// good signature, its author and `sq` (what the sender proved it holds, whatever this node
/// then made of it).
type Ingested = (
    Vec<bool>,
    bool,
    BTreeSet<EventId>,
    Vec<Option<(AuthorId, u64)>>,
);

/// See the module docs.
pub struct NodeState<M: Machine, S: Storage, T: Transport> {
    local: Local<M, S>,
    cfg: Config,
    /// The signing key each connected peer's identity proves (see [`Input::PeerUp`]); only
    /// tracked peers, so bounded by the syncer's `MAX_PEERS`.
    peer_keys: BTreeMap<T::Peer, AuthorId>,
    syncer: Syncer<T::Peer>,
    turn: Turn<T>,
    out: VecDeque<Output<T>>,
    stats: NodeStats,
    /// Events held by each peer at its last summary (for the sync lag).
    remote_events: BTreeMap<T::Peer, u64>,
    /// Peers whose last summary had our heads and our state_hash.
    in_sync: BTreeSet<T::Peer>,
    /// Summaries with our heads that arrived while our state was not folded: compared at the
    /// next fold.
    unconfirmed: BTreeMap<T::Peer, (Vec<EventId>, Vec<u8>)>,
    /// Peers whose last summary said they are full nodes (where a light node writes through).
    full_peers: BTreeSet<T::Peer>,
    /// Light nodes: own writes not yet stored by a full node.
    outbox: Outbox<T::Peer>,
    /// Light nodes: the order key up to which blocks were forgotten, and how many.
    horizon: Option<OrderKey>,
    pruned_blocks: u64,
    /// A light node on disk, after a start: own events still to be handed to the outbox again
    /// (see [`NodeState::resubmit_step`]).
    resubmit: Option<Resubmit<T::Peer>>,
    /// How many own events were handed to the outbox again since the start.
    pub resubmitted: u64,
    /// False while this node's storage holds none of its own events and its peers have not
    /// yet confirmed that it holds its whole own chain: writing then could reuse a sequence
    /// number (an equivocation that excludes all its later events). Writes wait in `gated`.
    writes_open: bool,
    gated: Vec<Held>,
    /// No heartbeat before this time (ms).
    next_heartbeat: u64,
    /// Under final/1: the positions of the newest attestation this node's heartbeats made.
    attested: u64,
    /// `final/2`: the newest epoch whose handover this node's heartbeats claimed.
    handed: u32,
    sabotage: NodeSabotage,
}

impl<M: Machine, S: Storage, T: Transport> NodeState<M, S, T> {
    /// A node over `local` (fresh, or restored from its storage). Folding is deferred to
    /// [`fold`](Self::fold).
    pub fn new(mut local: Local<M, S>, cfg: Config) -> Self {
        local.set_deferred_fold(true);
        if cfg.sliced_fold {
            local.set_auto_fold(false);
        }
        let me = local.key().author();
        let mut syncer = Syncer::default();
        syncer.watch_own_chain(me);
        // Own events in durable storage: every one we signed is there (writes are
        // acknowledged only after their commit), so the next sequence number is known. The
        // genesis does not count: every replica holds it, a wiped admin's too, and it proves
        // nothing about what else the admin signed (a wiped admin that wrote at once reused
        // its sequence numbers: `chorus sim run --scenario wipe --seed 33756 --order final/1`).
        // A store there from the key's first signature needs no proof.
        let genesis_sq = u64::from(local.timeline().genesis().admin == me);
        // Unless the key may have signed events elsewhere that this store never saw (the
        // directory ran as a light node in memory): then only the peers can tell.
        let writes_open = !local.store().own_chain_elsewhere()
            && (local.store().own_chain_complete()
                || local
                    .timeline()
                    .version_vector()
                    .get(&me)
                    .is_some_and(|&sq| sq > genesis_sq));
        if writes_open {
            syncer.own_chain_settled();
        }
        let resubmit = (cfg.light && cfg.light_on_disk)
            .then(|| local.timeline().version_vector().get(&me).copied())
            .flatten()
            .map(|upto| Resubmit {
                upto,
                next: None,
                counted: BTreeMap::new(),
                read_failures: 0,
            });
        NodeState {
            local,
            cfg,
            syncer,
            peer_keys: BTreeMap::new(),
            turn: Turn::default(),
            out: VecDeque::new(),
            stats: NodeStats::default(),
            remote_events: BTreeMap::new(),
            in_sync: BTreeSet::new(),
            unconfirmed: BTreeMap::new(),
            full_peers: BTreeSet::new(),
            outbox: Outbox::default(),
            horizon: None,
            pruned_blocks: 0,
            resubmit,
            resubmitted: 0,
            writes_open,
            gated: vec![],
            next_heartbeat: 0,
            attested: 0,
            handed: 0,
            sabotage: NodeSabotage::None,
        }
    }

    // ------------------------------------------------------------------ views

    pub fn local(&self) -> &Local<M, S> {
        &self.local
    }
    /// The replica itself, bypassing the protocol: for the simulator's adversaries (which
    /// break the rules on purpose) and its oracle (which folds every state at the end).
    #[doc(hidden)]
    pub fn local_mut(&mut self) -> &mut Local<M, S> {
        &mut self.local
    }
    pub fn into_local(self) -> Local<M, S> {
        self.local
    }
    pub fn config(&self) -> Config {
        self.cfg
    }
    pub fn syncer(&self) -> &Syncer<T::Peer> {
        &self.syncer
    }
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }
    pub fn writes_open(&self) -> bool {
        self.writes_open
    }
    /// Local writes held by the write gate.
    pub fn writes_held(&self) -> usize {
        self.gated.len()
    }
    pub fn in_sync(&self) -> &BTreeSet<T::Peer> {
        &self.in_sync
    }
    pub fn full_peers(&self) -> &BTreeSet<T::Peer> {
        &self.full_peers
    }
    pub fn outbox(&self) -> &Outbox<T::Peer> {
        &self.outbox
    }
    /// Light nodes: where the past was forgotten, and how many blocks.
    pub fn horizon(&self) -> (Option<OrderKey>, u64) {
        (self.horizon, self.pruned_blocks)
    }
    /// How many events the peer that holds the most has beyond this node (from summaries).
    pub fn lag(&self) -> u64 {
        let mine = self.local.timeline().len() as u64;
        self.remote_events
            .values()
            .max()
            .map_or(0, |m| m.saturating_sub(mine))
    }

    #[doc(hidden)]
    pub fn sabotage(&mut self, s: NodeSabotage) {
        if s == NodeSabotage::TrustSyncClaims {
            self.syncer.sabotage_trust_claims();
        }
        if s == NodeSabotage::NoStrangerBudget {
            self.syncer.sabotage_no_stranger_budget();
        }
        if s == NodeSabotage::NoOwnCheckStall {
            self.syncer.sabotage_no_own_check_stall();
        }
        self.sabotage = s;
    }

    // ------------------------------------------------------------------ driving

    /// The next effect to carry out, in order.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output<T>> {
        self.out.pop_front()
    }

    fn act(&mut self, actions: Vec<Action<T::Peer>>) {
        for a in actions {
            self.out.push_back(match a {
                Action::Send(peer, req) => Output::Send { peer, req },
                Action::Ban { peer, until } => Output::Ban { peer, until },
                Action::Unban(peer) => Output::Unban(peer),
                Action::Disconnect(peer) => Output::Disconnect(peer),
            });
        }
    }

    /// Takes one input. Inputs that need the turn's commit (blocks, requests, writes) are
    /// worked off by [`end_turn`](Self::end_turn).
    pub fn handle(&mut self, now: u64, input: Input<T>) {
        match input {
            Input::PeerUp { peer, key } => {
                let a = self.syncer.peer_up(peer.clone(), now);
                if !a.contains(&Action::Disconnect(peer.clone()))
                    && let Some(k) = key
                {
                    self.peer_keys.insert(peer, k);
                }
                self.act(a);
            }
            Input::PeerDown(p) => {
                self.peer_keys.remove(&p);
                self.syncer.peer_down(&p);
                self.full_peers.remove(&p);
                self.outbox.peer_down(&p);
                self.in_sync.remove(&p);
                self.unconfirmed.remove(&p);
                self.remote_events.remove(&p);
            }
            Input::Gossip { from, id, block } => {
                self.stats.gossip_received += 1;
                self.turn.blocks.push((block, Source::Gossip(id, from)));
            }
            Input::Request { peer, id, req } if matches!(req, SyncRequest::Submit { .. }) => {
                self.submit(now, peer, id, req)
            }
            Input::Request { peer, id, req } => self.turn.requests.push((peer, id, req)),
            Input::Response {
                peer,
                req: SyncRequest::Submit { blocks: sent },
                resp,
            } => {
                if let Some(first) = sent.first().map(|b| EventId::of_block(b)) {
                    match resp {
                        SyncResponse::Stored { ids } => {
                            let done = self.outbox.on_stored(&peer, &first, &ids, &self.full_peers);
                            if let Some((w, r)) = done {
                                self.out.push_back(Output::WriteDone {
                                    write: w,
                                    result: r,
                                });
                            }
                        }
                        _ => self.outbox.on_failed(&peer, &first),
                    }
                }
            }
            Input::Response { peer, req, resp } => match resp {
                SyncResponse::Summary(s) if matches!(req, SyncRequest::Summary) => {
                    if s.light {
                        self.full_peers.remove(&peer);
                    } else {
                        self.full_peers.insert(peer.clone());
                    }
                    self.remote_events.insert(peer.clone(), s.events);
                    self.compare_state(&peer, &s);
                    let a = self
                        .syncer
                        .on_summary(&peer, &s, self.local.timeline(), now);
                    self.act(a);
                }
                SyncResponse::Blocks(b) if !matches!(req, SyncRequest::Summary) => {
                    let start = self.turn.blocks.len();
                    self.stats.blocks_received += b.blocks.len() as u64;
                    self.turn.blocks.extend(
                        b.blocks
                            .into_iter()
                            .map(|x| (x.into_vec(), Source::Page(peer.clone()))),
                    );
                    let end = self.turn.blocks.len();
                    if let SyncRequest::Since { after, .. } = req {
                        self.turn.pages.push((peer, after, b.next, start, end));
                    } else {
                        self.syncer.on_blocks(&peer);
                        if self.syncer.is_own_check(&req) {
                            self.turn.own_checks.push((peer, start, end));
                        }
                    }
                }
                // A refusal, a `Stored` to a request that was no `Submit`, or an answer of
                // another kind than the request's (a peer that answers a check of our chain
                // with a summary must not leave the check open for good).
                _ => {
                    let a = self.syncer.request_failed(&peer, &req);
                    self.act(a);
                }
            },
            Input::RequestFailed { peer, req } => match &req {
                SyncRequest::Submit { blocks: sent } => {
                    if let Some(b) = sent.first() {
                        self.outbox.on_failed(&peer, &EventId::of_block(b));
                    }
                }
                _ => {
                    let a = self.syncer.request_failed(&peer, &req);
                    self.act(a);
                }
            },
            Input::Append { write, items } => self.turn.appends.push((write, items)),
            Input::Tick => self.turn.tick = true,
        }
    }

    /// Works off the turn (see the module docs for the order). `decode` turns raw blocks into
    /// events (context-free checks and signatures), one result per block, in order.
    pub fn end_turn(&mut self, now: u64, decode: &mut Decoder<'_>) {
        let turn = std::mem::take(&mut self.turn);
        let (new_at, committed, busy, signed_at) = self.ingest(now, turn.blocks, decode);
        for (_, id, ids) in turn.submits {
            let resp = if committed && ids.iter().any(|i| busy.contains(i)) {
                // Back-pressure: nothing is wrong with the write, this node has no room for
                // it now. A refusal (not a `Stored` without it, which means "rejected") makes
                // the light node submit it again, here or to another full node.
                SyncResponse::Refused {
                    reason: "pending set full: submit again later".into(),
                }
            } else if committed {
                let tl = self.local.timeline();
                let ids = ids
                    .into_iter()
                    .filter(|i| tl.contains(i) || tl.is_pending(i))
                    .collect();
                SyncResponse::Stored { ids }
            } else {
                SyncResponse::Refused {
                    reason: "store failure; nothing of it was stored".into(),
                }
            };
            self.out.push_back(Output::Respond { id, resp });
        }
        for (peer, asked, next, start, end) in turn.pages {
            let new = new_at[start..end].iter().filter(|n| **n).count() as u64;
            let a = self.syncer.on_page(
                &peer,
                asked,
                next,
                end - start,
                new,
                self.local.timeline(),
                now,
            );
            self.act(a);
        }
        for (peer, start, end) in turn.own_checks {
            let sent: Vec<(AuthorId, u64)> =
                signed_at[start..end].iter().flatten().copied().collect();
            let a = self.syncer.on_own_check(&peer, Some(&sent));
            self.act(a);
        }
        self.open_writes_if_confirmed(now);
        self.append_group(now, turn.appends);
        for (peer, id, req) in turn.requests {
            let out = match self.serve(&peer, now, &req) {
                Planned::Answer(resp) => Output::Respond { id, resp },
                Planned::Page(plan) if self.cfg.pages_outside => Output::ServePage { id, plan },
                Planned::Page(plan) => {
                    let (tl, store) = (self.local.timeline(), self.local.store());
                    let resp = sync::pack(&plan, &|id: &EventId| tl.block(id, store));
                    Output::Respond { id, resp }
                }
            };
            self.out.push_back(out);
        }
        if turn.tick {
            if self.cfg.fold_on_tick {
                self.fold();
            }
            let a = self.syncer.tick(now, self.local.timeline());
            self.act(a);
            if self.cfg.light {
                self.resubmit_step(now);
                self.prune();
                let settled = self.outbox.settle(&self.full_peers);
                for (write, result) in settled.into_iter().chain(self.outbox.expire(now)) {
                    self.out.push_back(Output::WriteDone { write, result });
                }
            }
            self.expire_gated(now);
            self.heartbeat(now);
        }
        for (peer, blocks) in self.outbox.dispatch(&self.full_peers, now) {
            let blocks = blocks.into_iter().map(serde_bytes::ByteBuf::from).collect();
            self.out.push_back(Output::Send {
                peer,
                req: SyncRequest::Submit { blocks },
            });
        }
    }

    /// Brings the machine state up to date (one rewind for everything that arrived since the
    /// last fold), then compares it with the summaries that waited for it.
    pub fn fold(&mut self) {
        self.fold_step(usize::MAX);
    }

    /// One slice of [`fold`](Self::fold), at most `positions` positions of the order; returns
    /// whether the state is up to date. Until it is, the machine state is part-way through
    /// the order: a shell that folds in slices answers state queries from what it kept of the
    /// last complete fold.
    pub fn fold_step(&mut self, positions: usize) -> bool {
        match self.local.fold_step(positions) {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                self.out.push_back(Output::StoreFailed(format!(
                    "folding the state failed: {e}"
                )));
                return true;
            }
        }
        let heads = self.local.timeline().heads();
        for (peer, (their_heads, hash)) in std::mem::take(&mut self.unconfirmed) {
            if their_heads == heads {
                self.judge_state(&peer, &hash);
            }
        }
        // A light node forgets the settled past as soon as the state allows it (the horizon
        // needs a folded state; the tick may have come before the fold).
        if self.cfg.light {
            self.prune();
        }
        true
    }

    // ------------------------------------------------------------------ the network half

    /// A peer's summary with our heads says what our state must be; equal heads with a
    /// different hash would be a determinism bug.
    fn compare_state(&mut self, peer: &T::Peer, s: &sync::Summary) {
        let Some(theirs) = &s.state_hash else { return };
        if s.heads != self.local.timeline().heads() {
            self.in_sync.remove(peer);
            self.unconfirmed.remove(peer);
            return;
        }
        if self.local.timeline().needs_catch_up() {
            self.unconfirmed
                .insert(peer.clone(), (s.heads.clone(), theirs.to_vec()));
            return;
        }
        self.judge_state(peer, theirs);
    }

    fn judge_state(&mut self, peer: &T::Peer, theirs: &[u8]) {
        let tl = self.local.timeline();
        let mine = tl.state_hash();
        if theirs == mine {
            if self.in_sync.insert(peer.clone()) {
                self.out.push_back(Output::InSync {
                    peer: peer.clone(),
                    events: tl.len(),
                    state_hash: mine,
                });
            }
        } else {
            self.in_sync.remove(peer);
            self.out.push_back(Output::Diverged { peer: peer.clone() });
        }
    }

    /// Decodes and ingests the turn's blocks in one commit; returns, per block, whether it
    /// was new here, whether the commit succeeded, and the ids not taken for back-pressure.
    fn ingest(
        &mut self,
        now: u64,
        blocks: Vec<(Vec<u8>, Source<T>)>,
        decode: &mut Decoder<'_>,
    ) -> Ingested {
        let mut new_at = vec![false; blocks.len()];
        let mut signed_at = vec![None; blocks.len()];
        if blocks.is_empty() {
            return (new_at, true, BTreeSet::new(), signed_at);
        }
        let (raw, sources): (Vec<Vec<u8>>, Vec<Source<T>>) = blocks.into_iter().unzip();
        let decoded = decode(&raw);
        drop(raw);
        let mut events: Vec<SignedEvent> = vec![];
        let mut event_pos: Vec<usize> = vec![];
        let mut bad = vec![false; sources.len()];
        let mut busy = vec![false; sources.len()];
        for (i, r) in decoded.into_iter().enumerate() {
            match r {
                Ok(ev) => {
                    signed_at[i] = Some((ev.author, ev.seq));
                    events.push(ev);
                    event_pos.push(i);
                }
                Err(e) => {
                    if matches!(e, EventError::TooLarge { .. }) {
                        self.stats.oversize += 1;
                    }
                    bad[i] = true;
                    *self.stats.rejected_by_code.entry(e.code()).or_insert(0) += 1;
                }
            }
        }
        let ids: Vec<EventId> = events.iter().map(|e| e.id()).collect();
        let authors: Vec<AuthorId> = events.iter().map(|e| e.author).collect();
        let report = match self.local.ingest(events) {
            Ok(r) => r,
            Err(e) => {
                // Nothing of this turn is acknowledged; peers resend it.
                self.out
                    .push_back(Output::StoreFailed(format!("ingest failed: {e}")));
                return (new_at, false, BTreeSet::new(), signed_at);
            }
        };
        for (code, n) in &report.rejected {
            *self.stats.rejected_by_code.entry(code).or_insert(0) += n;
        }
        for p in &report.rejected_at {
            bad[event_pos[*p]] = true;
        }
        let mut busy_ids = BTreeSet::new();
        for p in &report.busy_at {
            busy[event_pos[*p]] = true;
            busy_ids.insert(ids[*p]);
        }
        let indexed: BTreeSet<EventId> = report.indexed.iter().copied().collect();
        let mut id_at: Vec<Option<EventId>> = vec![None; sources.len()];
        let mut stranger_at = vec![false; sources.len()];
        for (k, id) in ids.iter().enumerate() {
            new_at[event_pos[k]] = indexed.contains(id);
            id_at[event_pos[k]] = Some(*id);
            stranger_at[event_pos[k]] = self.local.timeline().is_stranger(&authors[k]);
        }
        if !report.indexed.is_empty() {
            self.stats.grew += 1;
            self.syncer.arrived(report.indexed.iter().copied());
            self.out.push_back(Output::Indexed(report.indexed));
        }
        // Charge peers for invalid blocks; gossip verdicts.
        let mut charged: BTreeMap<T::Peer, u32> = BTreeMap::new();
        let mut gossip_from: BTreeSet<T::Peer> = BTreeSet::new();
        for (i, src) in sources.into_iter().enumerate() {
            if bad[i] {
                *charged.entry(src.peer().clone()).or_insert(0) += 1;
            }
            if let Source::Gossip(id, from) = src {
                let verdict = if bad[i] {
                    Verdict::Rejected
                } else if busy[i] {
                    Verdict::Busy
                } else if new_at[i] {
                    Verdict::Accepted
                } else if id_at[i].is_some_and(|x| self.local.timeline().is_pending(&x)) {
                    if stranger_at[i] {
                        Verdict::Held
                    } else {
                        Verdict::Pending
                    }
                } else {
                    Verdict::Duplicate
                };
                if verdict.forward() {
                    gossip_from.insert(from.clone());
                }
                self.out.push_back(Output::Validated { id, from, verdict });
            }
        }
        for (peer, n) in charged {
            self.stats.charge_invalid(peer.to_string(), n as u64);
            let a = self.syncer.on_invalid(&peer, n, now);
            self.act(a);
        }
        // Gossip that went pending: ask its sender for the missing parents.
        let wanted = self.local.timeline().wanted();
        if !wanted.is_empty() {
            for p in gossip_from {
                let a = self.syncer.on_missing(&p, wanted.clone(), now);
                self.act(a);
            }
        }
        (new_at, true, busy_ids, signed_at)
    }

    /// A light node's `Submit`: its blocks join the turn's ingest, and the answer (`Stored`)
    /// waits for the commit. Refused at once from a light node, over the rate or the bounds.
    fn submit(&mut self, now: u64, peer: T::Peer, id: T::RequestId, req: SyncRequest) {
        let admitted = if self.cfg.light {
            Err("light node: writes go to full nodes".to_string())
        } else if !self
            .syncer
            .admit_request(&peer, now, self.is_stranger(&peer))
        {
            Err("rate limited".to_string())
        } else {
            req.check()
        };
        let SyncRequest::Submit { blocks } = req else {
            return;
        };
        if let Err(reason) = admitted {
            self.out.push_back(Output::Respond {
                id,
                resp: SyncResponse::Refused { reason },
            });
            return;
        }
        let ids = blocks.iter().map(|b| EventId::of_block(b)).collect();
        self.stats.blocks_received += blocks.len() as u64;
        self.turn.blocks.extend(
            blocks
                .into_iter()
                .map(|b| (b.into_vec(), Source::Page(peer.clone()))),
        );
        self.turn.submits.push((peer, id, ids));
    }

    fn serve(&mut self, peer: &T::Peer, now: u64, req: &SyncRequest) -> Planned {
        if !self.syncer.admit_request(peer, now, self.is_stranger(peer)) {
            return Planned::Answer(SyncResponse::Refused {
                reason: "rate limited".into(),
            });
        }
        if self.cfg.light && !matches!(req, SyncRequest::Summary) {
            return Planned::Answer(SyncResponse::Refused {
                reason: "light node: not a replica".into(),
            });
        }
        self.stats.requests_served += 1;
        let mut planned = sync::plan(self.local.timeline(), req);
        if let Planned::Answer(SyncResponse::Summary(s)) = &mut planned {
            s.light = self.cfg.light;
            s.recovering = !self.writes_open;
        }
        planned
    }

    /// Whether `peer` is a stranger: its key unknown, or neither a current member's nor a
    /// reader's the genesis names. Asked at each request, so a member added while connected
    /// stops being one at once.
    fn is_stranger(&self, peer: &T::Peer) -> bool {
        let tl = self.local.timeline();
        !self.peer_keys.get(peer).is_some_and(|k| {
            tl.membership().role_now(k).is_some() || tl.genesis().readers.contains(k)
        })
    }

    /// Light nodes in memory: forget the blocks behind the settled horizon (a light node on
    /// disk keeps them: reopening needs every block).
    fn prune(&mut self) {
        if self.cfg.light_on_disk {
            return;
        }
        match self.local.prune() {
            Ok((h, p)) => {
                self.pruned_blocks += p.blocks;
                // The highest horizon pruned through: under `final/1` a newer one can be lower
                // (a late event, or a newer checkpoint on an event of lower `lc`), and what was
                // pruned stays pruned.
                if h > self.horizon {
                    self.horizon = h;
                }
            }
            Err(e) => self
                .out
                .push_back(Output::StoreFailed(format!("pruning failed: {e}"))),
        }
    }

    /// A light node on disk, on its ticks after a start: its own events that the full nodes
    /// may lack go to the outbox again. Before the restart they may have sat in an outbox no
    /// full node had answered yet; without this they would stay on this disk alone (a light
    /// node serves no blocks), and every later own event, naming them as parents, would wait on
    /// the full nodes for good.
    ///
    /// Which ones: from just above what a full peer's summary holds of this key's chain up to
    /// the highest sequence number held at start (later writes take the outbox's usual way).
    /// Every full peer's figure is counted when it first arrives and again when it changes,
    /// and a lower one moves the start back: a full node that claims more than it holds, or
    /// answers first, cannot keep the events from a lagging one (and full nodes pass them on
    /// among themselves). Nothing is sent before a full peer answered. One submission of at
    /// most [`MAX_SUBMIT_BLOCKS`](sync::MAX_SUBMIT_BLOCKS) events and [`RESUBMIT_BYTES`] per
    /// tick, none while [`RESUBMIT_QUEUED`] submissions no write waits for are queued (light
    /// heartbeats and timed-out writes count too; full nodes answer them as they store them):
    /// the memory it takes is bounded whatever the backlog.
    fn resubmit_step(&mut self, now: u64) {
        let Some(r) = &mut self.resubmit else {
            return;
        };
        let me = self.local.key().author();
        r.counted.retain(|p, _| self.full_peers.contains(p));
        for p in &self.full_peers {
            let Some(held) = self.syncer.own_chain_held_by(p) else {
                continue;
            };
            if r.counted.get(p) == Some(&held) {
                continue;
            }
            r.counted.insert(p.clone(), held);
            let from = held.saturating_add(1);
            if r.next.is_none_or(|n| from < n) {
                r.next = Some(from);
            }
        }
        let Some(next) = r.next else {
            return;
        };
        let upto = r.upto;
        if next > upto || self.outbox.unanswered_len() >= RESUBMIT_QUEUED {
            return;
        }
        let tl = self.local.timeline();
        let end = upto.min(next.saturating_add(sync::MAX_SUBMIT_BLOCKS as u64 - 1));
        let Some(span) = tl.chain_span(&me, next, end) else {
            // This key forked its own chain: its events from the fork on are excluded
            // everywhere, and which branch to hand on is no question worth answering.
            self.resubmit = None;
            return;
        };
        let (mut ids, mut blocks, mut bytes) = (vec![], vec![], 0);
        for id in span {
            let Some(block) = tl.block(&id, self.local.store()) else {
                // A read that failed: tried again on the next ticks, a few times.
                r.read_failures += 1;
                if r.read_failures >= RESUBMIT_READ_TRIES {
                    self.resubmit = None;
                }
                self.out.push_back(Output::StoreFailed(format!(
                    "own event {id}, to be submitted again, could not be read"
                )));
                return;
            };
            if !ids.is_empty() && bytes + block.len() > RESUBMIT_BYTES {
                break;
            }
            bytes += block.len();
            ids.push(id);
            blocks.push(block.to_vec());
        }
        // Fewer own events held than the start said (an empty span): nothing more to hand on
        // until a peer's figure moves the start back.
        r.next = Some(if ids.is_empty() {
            upto + 1
        } else {
            next + ids.len() as u64
        });
        if ids.is_empty() {
            return;
        }
        self.resubmitted += ids.len() as u64;
        self.outbox.push_unanswered(ids, blocks, now);
    }

    // ------------------------------------------------------------------ the write half

    /// Opens writes once the peers have confirmed our own chain, and runs the held ones.
    fn open_writes_if_confirmed(&mut self, now: u64) {
        if self.writes_open {
            return;
        }
        let Some(last_sq) = self.syncer.own_chain_confirmed(self.local.timeline()) else {
            return;
        };
        self.writes_open = true;
        self.syncer.own_chain_settled();
        self.out.push_back(Output::WritesOpen { last_sq });
        let held = std::mem::take(&mut self.gated)
            .into_iter()
            .map(|(write, items, _)| (write, items))
            .collect();
        self.append_group(now, held);
    }

    fn expire_gated(&mut self, now: u64) {
        let (late, keep): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.gated)
            .into_iter()
            .partition(|(_, _, since)| now >= since + WRITE_GATE_TIMEOUT_MS);
        self.gated = keep;
        for (write, _, _) in late {
            self.out.push_back(Output::WriteDone {
                write,
                result: Err(WriteError::Unavailable(gate_error())),
            });
        }
    }

    /// The local writes of a turn: each durable here (full node) or on a full node (light
    /// node, through the outbox) before it is acknowledged; held while writes are not open
    /// yet. Every write is signed and checked on its own (a refusal is that write's alone),
    /// then all are committed in **one** durable transaction (group commit): many clients
    /// appending one event each cost one commit a turn, not one each.
    fn append_group(&mut self, now: u64, writes: Vec<(WriteId, Vec<(String, Ipld)>)>) {
        if self.cfg.light && writes.len() > 1 {
            // A light node's outbox admits a write against what the writes before it queued:
            // one write at a time (a light node's writes go out through its full peers anyway).
            for w in writes {
                self.append_group(now, vec![w]);
            }
            return;
        }
        let mut signed = Vec::with_capacity(writes.len());
        for (write, items) in writes {
            if let Some(items) = self.admit_write(now, write, items) {
                let (evs, refused) = self.local.sign_write(items);
                signed.push((write, evs, refused));
            }
        }
        if signed.is_empty() {
            return;
        }
        // The events move into one batch and come back from the commit, split by write again.
        let mut all = Vec::new();
        let mut parts = Vec::with_capacity(signed.len());
        for (write, evs, refused) in signed {
            parts.push((write, evs.len(), refused));
            all.extend(evs);
        }
        let (committed, mut durable) = if all.is_empty() {
            (Ok(()), Vec::new().into_iter())
        } else {
            match self.local.commit_signed(all) {
                Ok(evs) => (Ok(()), evs.into_iter()),
                Err(e) => (Err(e.to_string()), Vec::new().into_iter()),
            }
        };
        for (write, n, refused) in parts {
            let evs: Vec<SignedEvent> = durable.by_ref().take(n).collect();
            let result = match refused {
                // The write's own refusal: what of it was signed is durable, or nothing of it
                // was signed (whatever became of the others).
                Some(e) if committed.is_ok() || n == 0 => {
                    if let LocalError::Refused { error, .. } = &e {
                        *self.stats.refused_writes.entry(error.code()).or_insert(0) += 1;
                    }
                    Err(e.into())
                }
                _ => match &committed {
                    // Nothing of the turn's writes is durable: none is acknowledged.
                    Err(e) => Err(WriteError::Failed(e.clone())),
                    Ok(()) => Ok(evs),
                },
            };
            match result {
                Ok(evs) => self.written(now, write, evs),
                Err(e) => self.out.push_back(Output::WriteDone {
                    write,
                    result: Err(e),
                }),
            }
        }
    }

    /// Whether a write goes ahead now: held while writes are not open (refused once too many
    /// are held), refused when a light node's outbox has no room for it. The items back when
    /// it goes ahead.
    fn admit_write(
        &mut self,
        now: u64,
        write: WriteId,
        items: Vec<(String, Ipld)>,
    ) -> Option<Vec<(String, Ipld)>> {
        if !self.writes_open && self.sabotage != NodeSabotage::NoWriteGate {
            if self.gated.len() >= MAX_GATED_WRITES {
                self.out.push_back(Output::WriteDone {
                    write,
                    result: Err(WriteError::Unavailable(gate_error())),
                });
            } else {
                self.gated.push((write, items, now));
            }
            return None;
        }
        if self.cfg.light {
            // Checked before anything is signed, with every event at its largest envelope: a
            // write the outbox takes now still fits one submission once signed.
            let bytes = items
                .iter()
                .map(|(_, b)| crate::codec::encode(b).len() + crate::limits::MAX_ENVELOPE_BYTES)
                .sum();
            if let Err(e) = self.outbox.admit(items.len(), bytes) {
                self.out.push_back(Output::WriteDone {
                    write,
                    result: Err(e),
                });
                return None;
            }
        }
        Some(items)
    }

    /// A write signed and durable here (full node) or signed and handed to the outbox (light
    /// node, which acknowledges it once a full node stored it): indexed, published, answered.
    fn written(&mut self, now: u64, write: WriteId, evs: Vec<SignedEvent>) {
        self.stats.appended += evs.len() as u64;
        self.stats.grew += 1;
        // An own write covers the heads as a heartbeat would: the next heartbeat is owed one
        // interval after it at the earliest.
        if let Some(every) = self.cfg.heartbeat_ms {
            self.next_heartbeat = self.next_heartbeat.max(now + every);
        }
        let ids: Vec<EventId> = evs.iter().map(|e| e.id()).collect();
        self.out.push_back(Output::Indexed(ids.clone()));
        let blocks: Vec<Vec<u8>> = if self.cfg.light {
            evs.iter().map(|e| e.bytes().to_vec()).collect()
        } else {
            vec![]
        };
        for e in evs {
            self.out.push_back(Output::Publish(e));
        }
        if !self.cfg.light {
            self.out.push_back(Output::WriteDone {
                write,
                result: Ok(ids),
            });
            return;
        }
        // Admitted above with an upper bound on these very bytes, in this same turn.
        if self.sabotage == NodeSabotage::AckBeforeStored {
            self.outbox.push_unanswered(ids.clone(), blocks, now);
            self.out.push_back(Output::WriteDone {
                write,
                result: Ok(ids),
            });
            return;
        }
        self.outbox.push(ids, blocks, write, now);
    }
}

impl<M: Machine, S: Storage, T: Transport> NodeState<M, S, T> {
    /// On a tick: a heartbeat if one is owed and the interval has passed (see
    /// [`Config::heartbeat_ms`]). Not before the write gate opens (a heartbeat is a write like
    /// any other: it must not reuse a sequence number). A light member heartbeats too, through
    /// its outbox like its other writes: it is a member, so the settled frontier and the
    /// `final/1` committee count it, and a third of the members light and silent would hold
    /// finality for good (found by `chorus sim run --scenario light --order final/1`).
    fn heartbeat(&mut self, now: u64) {
        let Some(every) = self.cfg.heartbeat_ms else {
            return;
        };
        if !self.writes_open || now < self.next_heartbeat {
            return;
        }
        // A light node whose outbox is full already has writes on the way that name its heads.
        if self.cfg.light
            && self
                .outbox
                .admit(1, crate::limits::MAX_ENVELOPE_BYTES)
                .is_err()
        {
            return;
        }
        let me = self.local.key().author();
        // Under final/1 what is owed depends on what is final, which moves with the events
        // held whether or not the state was folded since.
        self.local.advance_finality();
        let tl = self.local.timeline();
        // Under final/1 a heartbeat attests the newest final checkpoint held
        // (finality/certificate.rs); a committee member owes one more heartbeat when it holds
        // a newer one than it attested, or the last checkpoint of a burst of work would never
        // be certified. It ends: attesting makes no event final.
        let att = tl.attestation();
        let owes_attestation = att.is_some_and(|a| a.positions > self.attested)
            && tl
                .finality()
                .is_some_and(|f| f.committee.binary_search(&me).is_ok());
        // Under final/2 a member of a committee that changed owes the new one's handover
        // (finality/handover.rs): one heartbeat claims it, one epoch at a time (after a
        // restart, again the ones not certified).
        let hand = tl.handover_owed(&me, self.handed);
        let owes_handover = hand.is_some();
        if !tl.owes_heartbeat(&me) && !owes_attestation && !owes_handover {
            return;
        }
        self.next_heartbeat = now + every;
        let body = crate::finality::handover::heartbeat_body(att.as_ref(), hand.as_ref());
        let items = vec![(crate::event::kind::HEARTBEAT.to_string(), body)];
        match self.local.append_batch(items) {
            Ok(evs) => {
                self.stats.heartbeats += 1;
                if let Some(a) = att {
                    self.attested = a.positions;
                }
                if let Some(h) = hand {
                    self.handed = self.handed.max(h.epoch);
                }
                self.stats.grew += 1;
                let ids: Vec<EventId> = evs.iter().map(|e| e.id()).collect();
                self.out.push_back(Output::Indexed(ids.clone()));
                if self.cfg.light {
                    // Stored by a full node before it counts anywhere; no one waits for it.
                    let blocks = evs.iter().map(|e| e.bytes().to_vec()).collect();
                    self.outbox.push_unanswered(ids, blocks, now);
                }
                for e in evs {
                    self.out.push_back(Output::Publish(e));
                }
            }
            Err(e) => {
                // Nothing to answer: the next interval tries again. A store failure is
                // reported like any other.
                self.stats.heartbeats_failed += 1;
                if !matches!(e, LocalError::Refused { .. } | LocalError::Invalid(_)) {
                    self.out
                        .push_back(Output::StoreFailed(format!("heartbeat not written: {e}")));
                }
            }
        }
    }
}

fn gate_error() -> String {
    format!(
        "not written: this node holds none of its own events and no full peer has confirmed \
         its sequence number within {} s (a wiped or in-memory replica must hear from its \
         full peers before it writes, or it would reuse its own sequence numbers)",
        WRITE_GATE_TIMEOUT_MS / 1000
    )
}

impl<E: std::error::Error + 'static> From<LocalError<E>> for WriteError {
    fn from(e: LocalError<E>) -> Self {
        match e {
            LocalError::Refused {
                error: EventError::UnknownAuthor(_),
                ..
            } => WriteError::NotMember(e.to_string()),
            LocalError::Refused { ref error, .. } => WriteError::Refused {
                error: error.clone(),
                message: e.to_string(),
            },
            other => WriteError::Failed(other.to_string()),
        }
    }
}
