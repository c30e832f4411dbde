//! # The node actor
//!
//! One OS thread owns the replica (timeline + redb store) and the sync decisions. Everything
//! else talks to it through one bounded channel of [`NodeMsg`]. Each turn it drains what is
//! queued (up to [`MAX_DRAIN`]), ingests every event block that arrived (gossip and sync pages)
//! in **one** group commit, then answers: sync requests are served from the state after the
//! commit, local appends are acknowledged once durable, gossip verdicts go back to gossipsub.
//!
//! The actor never blocks on the network: commands go out with `try_send`, and a full command
//! queue drops the command (counted as `net_commands_dropped`); the sync logic treats a dropped
//! request as a failed one, and anti-entropy repairs a dropped gossip publish.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use chorus_core::{
    EventId, SignedEvent,
    event::EventError,
    proto::{WriteId, WriteResult, outbox::Outbox},
    sync::{self, Action, SyncRequest, SyncResponse, Syncer},
    timeline::OrderKey,
};
use chorus_net::{GossipId, InboundId, NetCommand, NetEvent, Peer};
use chorus_store::{Replica, ReplicaError, verify::decode_parallel};
use ipld_core::ipld::Ipld;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::{
    describe::{Describe, event_json, state_json},
    write::{Reply, WriteError},
};

/// Messages the actor takes per turn (one group commit).
pub const MAX_DRAIN: usize = 1_024;
/// Messages queued for the actor before senders wait.
pub const NODE_QUEUE: usize = 8_192;
/// Most events one `POST /v1/events` may append.
pub const MAX_APPEND_PER_REQUEST: usize = 1_000;
/// Most events one `GET /v1/events` returns.
pub const MAX_EVENTS_PER_PAGE: usize = 1_000;
/// How often the actor runs the sync timers and folds the state.
pub const TICK: Duration = Duration::from_millis(200);
/// Local writes held while this node waits for its peers to confirm its own chain (see
/// `Syncer::own_chain_confirmed`); more are refused at once.
pub const MAX_GATED_WRITES: usize = 64;
/// A held write fails with a clear error after this long.
pub const WRITE_GATE_TIMEOUT_MS: u64 = 15_000;

/// A request from the HTTP API.
pub enum ApiRequest {
    Status(oneshot::Sender<Value>),
    State(oneshot::Sender<Value>),
    Events {
        from: Option<EventId>,
        limit: usize,
        reply: oneshot::Sender<Result<Value, String>>,
    },
    Append {
        items: Vec<(String, Ipld)>,
        reply: crate::write::Reply,
    },
    /// The election of one stimulus (`None`: not a tracked stimulus here, yet or any more).
    Election {
        stimulus: EventId,
        reply: oneshot::Sender<Option<Value>>,
    },
    /// Every tracked election, oldest first.
    Elections(oneshot::Sender<Value>),
}

/// New events (ingested or appended here), in the order they were committed; what
/// `GET /v1/events?stream=true` and the emissaries follow. Bounded: a subscriber that falls
/// this far behind is told it lagged (and pages `GET /v1/events` to catch up).
pub const FEED_CAPACITY: usize = 4_096;

/// The sender side of the live feed, and a count of the times the timeline grew (which tells
/// the API's status cache that a snapshot is out of date without asking the actor).
#[derive(Clone)]
pub struct Feed {
    events: tokio::sync::broadcast::Sender<std::sync::Arc<SignedEvent>>,
    changes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Feed {
    pub fn new(capacity: usize) -> Self {
        Self {
            events: tokio::sync::broadcast::channel(capacity).0,
            changes: Default::default(),
        }
    }

    /// New events from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<SignedEvent>> {
        self.events.subscribe()
    }

    fn listening(&self) -> bool {
        self.events.receiver_count() > 0
    }

    fn timeline_grew(&self) {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// How many times the timeline grew so far.
    pub fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Everything the actor reacts to.
pub enum NodeMsg {
    /// Boxed: network events are large, the queue holds many messages.
    Net(Box<NetEvent>),
    Api(ApiRequest),
    Tick,
    Shutdown,
}

/// Where an ingested block came from: who to charge if it is invalid.
#[derive(Clone)]
enum Source {
    Gossip(GossipId, Peer),
    Page(Peer),
}

impl Source {
    fn peer(&self) -> Peer {
        match self {
            Source::Gossip(_, p) | Source::Page(p) => *p,
        }
    }
}

#[derive(Default)]
struct Counters {
    gossip_received: u64,
    blocks_received: u64,
    oversize: u64,
    invalid_by_peer: BTreeMap<Peer, u64>,
    rejected_by_code: BTreeMap<&'static str, u64>,
    requests_served: u64,
    net_commands_dropped: u64,
    appended: u64,
    /// Local writes refused because a peer would refuse them, per error code.
    refused_writes: BTreeMap<&'static str, u64>,
}

/// A local write held by the write gate: its items, who to answer, since when (ms).
type HeldWrite = (Vec<(String, Ipld)>, Reply, u64);

pub struct Actor<M: Describe> {
    replica: Replica<M>,
    syncer: Syncer<Peer>,
    net: mpsc::Sender<NetCommand>,
    started: Instant,
    peer_id: Peer,
    listen: Vec<String>,
    counters: Counters,
    /// Events held by each peer at its last summary (for the sync lag).
    remote_events: BTreeMap<Peer, u64>,
    /// Peers whose last summary had our heads and our state_hash.
    in_sync: BTreeSet<Peer>,
    light: bool,
    /// Peers whose last summary said they are full nodes (where a light node writes through).
    full_peers: BTreeSet<Peer>,
    /// Light nodes: own writes not yet stored by a full node.
    outbox: Outbox<Peer>,
    /// Light nodes: who waits for each write in the outbox.
    waiting: BTreeMap<WriteId, Reply>,
    next_write: u64,
    /// Light nodes: the order key up to which blocks were forgotten, and how many.
    horizon: Option<OrderKey>,
    pruned_blocks: u64,
    /// False while this node's store holds none of its own events and no full peer has yet
    /// confirmed that it holds its whole own chain: writing then could reuse a sequence
    /// number (an equivocation that excludes all its later events). Writes wait in `gated`.
    writes_open: bool,
    gated: Vec<HeldWrite>,
    feed: Feed,
}

impl<M: Describe> Actor<M> {
    pub fn new(
        replica: Replica<M>,
        net: mpsc::Sender<NetCommand>,
        peer_id: Peer,
        light: bool,
    ) -> Self {
        let mut replica = replica;
        replica.set_deferred_fold(true);
        let me = replica.key().author();
        let mut syncer = Syncer::default();
        syncer.watch_own_chain(me);
        // Own events in a durable store: every one we signed is there (appends are
        // acknowledged only after their commit), so the next sequence number is known.
        let writes_open = replica
            .timeline()
            .version_vector()
            .get(&me)
            .is_some_and(|&sq| sq > 0);
        Actor {
            replica,
            syncer,
            net,
            started: Instant::now(),
            peer_id,
            listen: vec![],
            counters: Counters::default(),
            remote_events: BTreeMap::new(),
            in_sync: Default::default(),
            light,
            full_peers: BTreeSet::new(),
            outbox: Outbox::default(),
            waiting: BTreeMap::new(),
            next_write: 0,
            horizon: None,
            pruned_blocks: 0,
            writes_open,
            gated: vec![],
            feed: Feed::new(1),
        }
    }

    /// Publishes every new event on `feed`.
    pub fn with_feed(mut self, feed: Feed) -> Self {
        self.feed = feed;
        self
    }

    fn announce(&self, evs: impl IntoIterator<Item = SignedEvent>) {
        for e in evs {
            // No subscriber is not an error.
            let _ = self.feed.events.send(std::sync::Arc::new(e));
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn send(&mut self, cmd: NetCommand) {
        if let Err(e) = self.net.try_send(cmd) {
            self.counters.net_commands_dropped += 1;
            if let mpsc::error::TrySendError::Full(NetCommand::Request { peer, req }) = e {
                self.syncer.request_failed(&peer, &req);
            }
        }
    }

    fn act(&mut self, actions: Vec<Action<Peer>>) {
        for a in actions {
            match a {
                Action::Send(peer, req) => self.send(NetCommand::Request { peer, req }),
                Action::Ban { peer, until } => {
                    tracing::warn!(%peer, until_ms = until, "banning peer: too many invalid blocks");
                    self.send(NetCommand::Ban(peer));
                    self.send(NetCommand::Disconnect(peer));
                }
                Action::Unban(peer) => self.send(NetCommand::Unban(peer)),
                Action::Disconnect(peer) => self.send(NetCommand::Disconnect(peer)),
            }
        }
    }

    /// Runs until `Shutdown` or until every sender is gone. The in-flight turn (and its commit)
    /// always completes.
    pub fn run(mut self, mut inbox: mpsc::Receiver<NodeMsg>) -> Replica<M> {
        let mut stop = false;
        while !stop {
            let Some(first) = inbox.blocking_recv() else {
                break;
            };
            let mut turn = vec![first];
            while turn.len() < MAX_DRAIN {
                match inbox.try_recv() {
                    Ok(m) => turn.push(m),
                    Err(_) => break,
                }
            }
            stop = self.turn(turn);
        }
        self.fold();
        self.replica
    }

    /// One turn; true when asked to stop.
    fn turn(&mut self, msgs: Vec<NodeMsg>) -> bool {
        let mut stop = false;
        let mut blocks: Vec<(Vec<u8>, Source)> = vec![];
        let mut pages: Vec<(Peer, Option<sync::Cursor>, usize, usize)> = vec![];
        let mut requests: Vec<(Peer, InboundId, SyncRequest)> = vec![];
        // Submits: who, the request to answer, the ids of its blocks.
        let mut submits: Vec<(Peer, InboundId, Vec<EventId>)> = vec![];
        let mut appends = vec![];
        let mut queries = vec![];
        let mut tick = false;
        for m in msgs {
            match m {
                NodeMsg::Shutdown => stop = true,
                NodeMsg::Tick => tick = true,
                NodeMsg::Api(ApiRequest::Append { items, reply }) => appends.push((items, reply)),
                NodeMsg::Api(q) => queries.push(q),
                NodeMsg::Net(ev) => match *ev {
                    NetEvent::Listening(a) => {
                        println!("listening {a}");
                        self.listen.push(a.to_string());
                    }
                    NetEvent::PeerUp(p) => {
                        tracing::info!(peer = %p, "peer connected");
                        let now = self.now();
                        let a = self.syncer.peer_up(p, now);
                        self.act(a);
                    }
                    NetEvent::PeerDown(p) => {
                        tracing::info!(peer = %p, "peer disconnected");
                        self.syncer.peer_down(&p);
                        self.full_peers.remove(&p);
                        self.outbox.peer_down(&p);
                        self.in_sync.remove(&p);
                        self.remote_events.remove(&p);
                    }
                    NetEvent::Gossip { id, from, block } => {
                        self.counters.gossip_received += 1;
                        blocks.push((block, Source::Gossip(id, from)));
                    }
                    NetEvent::Request {
                        peer,
                        id,
                        req: req @ SyncRequest::Submit { .. },
                    } => match self.admit_submit(&peer, &req) {
                        Ok(()) => {
                            let SyncRequest::Submit { blocks: submitted } = req else {
                                unreachable!("matched as a Submit above")
                            };
                            let ids = submitted.iter().map(|b| EventId::of_block(b)).collect();
                            self.counters.blocks_received += submitted.len() as u64;
                            blocks.extend(
                                submitted
                                    .into_iter()
                                    .map(|b| (b.into_vec(), Source::Page(peer))),
                            );
                            submits.push((peer, id, ids));
                        }
                        Err(reason) => self.send(NetCommand::Respond {
                            id,
                            resp: SyncResponse::Refused { reason },
                        }),
                    },
                    NetEvent::Request { peer, id, req } => requests.push((peer, id, req)),
                    NetEvent::Response {
                        peer,
                        req: SyncRequest::Submit { blocks: sent },
                        resp,
                    } => {
                        let first = sent.first().map(|b| EventId::of_block(b));
                        if let Some(first) = first {
                            match resp {
                                SyncResponse::Stored { ids } => {
                                    if let Some((w, r)) = self.outbox.on_stored(&peer, &first, &ids)
                                    {
                                        self.answer(w, r);
                                    }
                                }
                                other => {
                                    tracing::debug!(%peer, "submit not stored: {other:?}");
                                    self.outbox.on_failed(&peer, &first);
                                }
                            }
                        }
                    }
                    NetEvent::Response { peer, req, resp } => match resp {
                        SyncResponse::Summary(s) => {
                            if s.light {
                                self.full_peers.remove(&peer);
                            } else {
                                self.full_peers.insert(peer);
                            }
                            self.remote_events.insert(peer, s.events);
                            self.compare_state(&peer, &s);
                            let now = self.now();
                            let a = self
                                .syncer
                                .on_summary(&peer, &s, self.replica.timeline(), now);
                            self.act(a);
                        }
                        SyncResponse::Blocks(b) => {
                            let start = blocks.len();
                            self.counters.blocks_received += b.blocks.len() as u64;
                            blocks.extend(
                                b.blocks
                                    .into_iter()
                                    .map(|x| (x.into_vec(), Source::Page(peer))),
                            );
                            if matches!(req, SyncRequest::Since { .. }) {
                                pages.push((peer, b.next, start, blocks.len()));
                            } else {
                                self.syncer.on_blocks(&peer);
                            }
                        }
                        SyncResponse::Refused { reason } => {
                            tracing::debug!(%peer, "request refused: {reason}");
                            self.syncer.request_failed(&peer, &req);
                        }
                        SyncResponse::Stored { .. } => {
                            tracing::debug!(%peer, "a Stored answer to a request that was no Submit");
                            self.syncer.request_failed(&peer, &req);
                        }
                    },
                    NetEvent::RequestFailed { peer, req, error } => {
                        tracing::debug!(%peer, "sync request failed: {error}");
                        match &req {
                            SyncRequest::Submit { blocks: sent } => {
                                if let Some(b) = sent.first() {
                                    self.outbox.on_failed(&peer, &EventId::of_block(b));
                                }
                            }
                            _ => self.syncer.request_failed(&peer, &req),
                        }
                    }
                },
            }
        }
        let (new_at, committed) = self.ingest(blocks);
        for (peer, id, ids) in submits {
            let resp = if committed {
                let tl = self.replica.timeline();
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
            tracing::debug!(%peer, "answered a submit");
            self.send(NetCommand::Respond { id, resp });
        }
        for (peer, next, start, end) in pages {
            let new = new_at[start..end].iter().filter(|n| **n).count() as u64;
            let now = self.now();
            let a = self
                .syncer
                .on_page(&peer, next, new, self.replica.timeline(), now);
            self.act(a);
        }
        self.open_writes_if_confirmed();
        for (items, reply) in appends {
            self.append(items, reply);
        }
        for (peer, id, req) in requests {
            let resp = self.serve(&peer, &req);
            self.send(NetCommand::Respond { id, resp });
        }
        // Every status asked in one turn sees the same state: build it once (a burst of a
        // thousand monitoring requests costs one fold and one snapshot, not a thousand).
        let mut status: Option<Value> = None;
        for q in queries {
            match q {
                ApiRequest::Status(reply) => {
                    if status.is_none() {
                        self.fold();
                        status = Some(self.status());
                    }
                    let _ = reply.send(status.clone().unwrap_or_default());
                }
                q => self.query(q),
            }
        }
        if tick {
            self.fold();
            let now = self.now();
            let a = self.syncer.tick(now);
            self.act(a);
            if self.light {
                self.prune();
                for (w, r) in self.outbox.expire(now) {
                    self.answer(w, r);
                }
            }
            self.expire_gated(now);
        }
        for (peer, blocks) in self.outbox.dispatch(&self.full_peers) {
            let blocks = blocks.into_iter().map(serde_bytes::ByteBuf::from).collect();
            self.send(NetCommand::Request {
                peer,
                req: SyncRequest::Submit { blocks },
            });
        }
        stop
    }

    /// A rebuilding (or any) node reports when its state equals a peer's over the same heads;
    /// equal heads with a different hash would be a determinism bug, logged loudly.
    fn compare_state(&mut self, peer: &Peer, s: &sync::Summary) {
        let Some(theirs) = &s.state_hash else { return };
        if s.heads != self.replica.timeline().heads() {
            self.in_sync.remove(peer);
            return;
        }
        self.fold();
        let mine = self.replica.timeline().state_hash();
        if theirs.as_slice() == mine {
            if self.in_sync.insert(*peer) {
                println!(
                    "in sync with {peer}: {} events, state_hash {}",
                    self.replica.timeline().len(),
                    hex::encode(mine)
                );
            }
        } else {
            self.in_sync.remove(peer);
            tracing::error!(%peer, "same heads but a different state_hash: determinism violated");
        }
    }

    /// Decodes, verifies and ingests the blocks of this turn in one commit; returns, per
    /// block, whether it was new here, and whether the commit succeeded.
    fn ingest(&mut self, blocks: Vec<(Vec<u8>, Source)>) -> (Vec<bool>, bool) {
        let mut new_at = vec![false; blocks.len()];
        if blocks.is_empty() {
            return (new_at, true);
        }
        let now = self.now();
        // The decoder refuses oversize blocks on their length, before parsing.
        let (raw, sources): (Vec<Vec<u8>>, Vec<Source>) = blocks.into_iter().unzip();
        let decoded = decode_parallel(&raw);
        drop(raw);
        let mut events: Vec<SignedEvent> = vec![];
        let mut event_pos: Vec<usize> = vec![];
        let mut invalid: Vec<(usize, EventError)> = vec![];
        for (i, r) in decoded.into_iter().enumerate() {
            match r {
                Ok(ev) => {
                    events.push(ev);
                    event_pos.push(i);
                }
                Err(e) => {
                    if matches!(e, EventError::TooLarge { .. }) {
                        self.counters.oversize += 1;
                    }
                    invalid.push((i, e));
                }
            }
        }
        let mut bad = vec![false; sources.len()];
        for (i, e) in &invalid {
            bad[*i] = true;
            *self.counters.rejected_by_code.entry(e.code()).or_insert(0) += 1;
            tracing::debug!(peer = %sources[*i].peer(), "invalid block: {e}");
        }
        let ids: Vec<EventId> = events.iter().map(|e| e.id()).collect();
        // Copies for the live feed only while someone listens.
        let copies = self.feed.listening().then(|| events.clone());
        match self.replica.ingest(events) {
            Ok(report) => {
                for (code, n) in &report.rejected {
                    *self.counters.rejected_by_code.entry(code).or_insert(0) += n;
                }
                for p in &report.rejected_at {
                    bad[event_pos[*p]] = true;
                }
                let indexed: std::collections::BTreeSet<EventId> =
                    report.indexed.iter().copied().collect();
                for (k, id) in ids.iter().enumerate() {
                    new_at[event_pos[k]] = indexed.contains(id);
                }
                if !report.indexed.is_empty() {
                    self.feed.timeline_grew();
                }
                if let Some(copies) = copies {
                    self.announce(copies.into_iter().filter(|e| indexed.contains(&e.id())));
                }
                self.syncer.arrived(report.indexed.iter().copied());
            }
            Err(e) => {
                // A store failure: nothing of this turn is acknowledged; peers resend it.
                tracing::error!("ingest failed: {e}");
                return (new_at, false);
            }
        }
        // Charge peers for invalid blocks; gossip verdicts.
        let mut charged: BTreeMap<Peer, u32> = BTreeMap::new();
        let mut gossip_from: Vec<Peer> = vec![];
        for (i, src) in sources.into_iter().enumerate() {
            if bad[i] {
                *charged.entry(src.peer()).or_insert(0) += 1;
            }
            if let Source::Gossip(id, from) = src {
                self.send(NetCommand::Validated { id, valid: !bad[i] });
                if !bad[i] {
                    gossip_from.push(from);
                }
            }
        }
        for (peer, n) in charged {
            *self.counters.invalid_by_peer.entry(peer).or_insert(0) += n as u64;
            let a = self.syncer.on_invalid(&peer, n, now);
            self.act(a);
        }
        // Gossip that went pending: ask its sender for the missing parents.
        let wanted = self.replica.timeline().wanted();
        if !wanted.is_empty() {
            gossip_from.sort();
            gossip_from.dedup();
            for p in gossip_from {
                let a = self.syncer.on_missing(&p, wanted.clone(), now);
                self.act(a);
            }
        }
        (new_at, true)
    }

    /// Opens writes once the peers have confirmed our own chain, and runs the held ones.
    fn open_writes_if_confirmed(&mut self) {
        if self.writes_open {
            return;
        }
        let Some(sq) = self.syncer.own_chain_confirmed(self.replica.timeline()) else {
            return;
        };
        self.writes_open = true;
        println!("own chain confirmed by peers (last sq {sq}): writes open");
        for (items, reply, _) in std::mem::take(&mut self.gated) {
            self.append(items, reply);
        }
    }

    fn expire_gated(&mut self, now: u64) {
        let (late, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.gated)
            .into_iter()
            .partition(|(_, _, since)| now >= since + WRITE_GATE_TIMEOUT_MS);
        self.gated = keep;
        for (_, reply, _) in late {
            let _ = reply.send(Err(WriteError::Unavailable(Self::gate_error())));
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

    /// A local write: durable here (full node) or on a full node (light node, through the
    /// outbox) before `reply` gets the ids. Held while writes are not open yet.
    fn append(&mut self, items: Vec<(String, Ipld)>, reply: Reply) {
        if !self.writes_open {
            if self.gated.len() >= MAX_GATED_WRITES {
                let _ = reply.send(Err(WriteError::Unavailable(Self::gate_error())));
            } else {
                let now = self.now();
                self.gated.push((items, reply, now));
            }
            return;
        }
        if self.light {
            // Checked before anything is signed, with every event at its largest envelope: a
            // write the outbox takes now still fits one submission once signed.
            let bytes = items
                .iter()
                .map(|(_, b)| {
                    chorus_core::codec::encode(b).len() + chorus_core::limits::MAX_ENVELOPE_BYTES
                })
                .sum();
            if let Err(e) = self.outbox.admit(items.len(), bytes) {
                let _ = reply.send(Err(e));
                return;
            }
        }
        let evs = match self.replica.append_batch(items) {
            Ok(evs) => evs,
            Err(e) => {
                if let ReplicaError::Refused { error, .. } = &e {
                    *self
                        .counters
                        .refused_writes
                        .entry(error.code())
                        .or_insert(0) += 1;
                    tracing::warn!(code = error.code(), "local write refused: {e}");
                } else {
                    tracing::error!("local write failed: {e}");
                }
                let _ = reply.send(Err(e.into()));
                return;
            }
        };
        self.counters.appended += evs.len() as u64;
        let ids: Vec<EventId> = evs.iter().map(|e| e.id()).collect();
        self.feed.timeline_grew();
        if self.feed.listening() {
            self.announce(evs.iter().cloned());
        }
        for e in &evs {
            self.send(NetCommand::Publish(e.bytes().to_vec()));
        }
        if !self.light {
            let _ = reply.send(Ok(ids));
            return;
        }
        // Admitted above with an upper bound on these very bytes, in this same turn.
        let blocks: Vec<Vec<u8>> = evs.iter().map(|e| e.bytes().to_vec()).collect();
        let now = self.now();
        let write = WriteId(self.next_write);
        self.next_write += 1;
        self.waiting.insert(write, reply);
        self.outbox.push(ids, blocks, write, now);
    }

    /// A light node's write is done (stored by a full node, refused by one, or late).
    fn answer(&mut self, write: WriteId, result: WriteResult) {
        if let Err(e) = &result {
            tracing::warn!(write = write.0, "light-node write not acknowledged: {e}");
        }
        if let Some(reply) = self.waiting.remove(&write) {
            let _ = reply.send(result);
        }
    }

    /// Whether this node takes this `Submit` from `peer` (full node, rate, structural bounds).
    fn admit_submit(&mut self, peer: &Peer, req: &SyncRequest) -> Result<(), String> {
        if self.light {
            return Err("light node: writes go to full nodes".into());
        }
        let now = self.now();
        if !self.syncer.admit_request(peer, now) {
            return Err("rate limited".into());
        }
        req.check()
    }

    /// Light nodes: forget the blocks behind the settled horizon.
    fn prune(&mut self) {
        match self.replica.prune() {
            Ok((h, p)) => {
                if p.blocks > 0 {
                    tracing::debug!(blocks = p.blocks, "pruned behind the settled horizon");
                }
                self.pruned_blocks += p.blocks;
                if h.is_some() {
                    self.horizon = h;
                }
            }
            Err(e) => tracing::error!("pruning failed: {e}"),
        }
    }

    fn serve(&mut self, peer: &Peer, req: &SyncRequest) -> SyncResponse {
        let now = self.now();
        if !self.syncer.admit_request(peer, now) {
            return SyncResponse::Refused {
                reason: "rate limited".into(),
            };
        }
        if self.light && !matches!(req, SyncRequest::Summary) {
            return SyncResponse::Refused {
                reason: "light node: not a replica".into(),
            };
        }
        self.counters.requests_served += 1;
        let mut resp = sync::serve(self.replica.timeline(), self.replica.store(), req);
        if let SyncResponse::Summary(s) = &mut resp {
            s.light = self.light;
        }
        resp
    }

    /// Folds the state over what arrived since the last fold (see `Replica::set_deferred_fold`):
    /// on every tick and before the state is read, so a burst of late events costs one rewind.
    fn fold(&mut self) {
        if let Err(e) = self.replica.fold() {
            tracing::error!("folding the state failed: {e}");
        }
    }

    fn query(&mut self, q: ApiRequest) {
        if matches!(
            q,
            ApiRequest::Status(_)
                | ApiRequest::State(_)
                | ApiRequest::Election { .. }
                | ApiRequest::Elections(_)
        ) {
            self.fold();
        }
        match q {
            ApiRequest::Status(reply) => {
                let _ = reply.send(self.status());
            }
            ApiRequest::State(reply) => {
                let _ = reply.send(state_json(&self.replica));
            }
            ApiRequest::Events { from, limit, reply } => {
                let _ = reply.send(self.events(from, limit));
            }
            ApiRequest::Election { stimulus, reply } => {
                let tl = self.replica.timeline();
                let view = M::elections(tl.state())
                    .into_iter()
                    .find(|e| e.stimulus == stimulus);
                let _ = reply.send(view.map(|v| self.election_json(&v)));
            }
            ApiRequest::Elections(reply) => {
                let views = M::elections(self.replica.timeline().state());
                let all: Vec<Value> = views.iter().map(|v| self.election_json(v)).collect();
                let _ = reply.send(json!({ "elections": all }));
            }
            ApiRequest::Append { .. } => unreachable!("appends are handled in the turn"),
        }
    }

    /// An election with what a client needs: the winner's commands and emissary, and whether
    /// the winner is settled (no event can ever sort before it) or still tentative.
    fn election_json(&self, v: &crate::describe::ElectionView) -> Value {
        let tl = self.replica.timeline();
        let winner = v
            .winner
            .and_then(|w| tl.load(&w, self.replica.store()).ok());
        let field = |k: &str| match winner.as_ref().map(|e| &e.body) {
            Some(Ipld::Map(m)) => match m.get(k) {
                Some(Ipld::String(s)) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        };
        let commands = winner
            .as_ref()
            .and_then(|e| chorus_kairos::ward::valid_commands(&e.body));
        json!({
            "stimulus": v.stimulus.to_string(),
            "n": v.n,
            "selected": v.selected.iter().map(|(a, n)| json!({"author": a.to_string(), "name": n}))
                .collect::<Vec<_>>(),
            "intents": v.intents,
            "valid": v.valid,
            "winner": v.winner.map(|w| w.to_string()),
            "winner_author": winner.as_ref().map(|e| e.author.to_string()),
            "emissary": field("emissary"),
            "model": field("model"),
            "commands": commands,
            "text": field("text"),
            "settled": v.winner.is_some_and(|w| tl.is_settled(&w)),
        })
    }

    fn events(&self, from: Option<EventId>, limit: usize) -> Result<Value, String> {
        let tl = self.replica.timeline();
        let start = match from {
            Some(id) => tl
                .position_of(&id)
                .ok_or_else(|| format!("{id} is not in this timeline"))?,
            None => 0,
        };
        let mut out = vec![];
        for (pos, id) in tl
            .order()
            .enumerate()
            .skip(start)
            .take(limit.min(MAX_EVENTS_PER_PAGE))
        {
            let ev = match tl.load(&id, self.replica.store()) {
                Ok(ev) => ev,
                // Behind a light node's horizon: forgotten here, full nodes have it.
                Err(_) if self.light => continue,
                Err(e) => return Err(e.to_string()),
            };
            out.push(event_json(&self.replica, pos, &ev));
        }
        Ok(json!({ "events": out, "total": tl.len() }))
    }

    fn status(&self) -> Value {
        let tl = self.replica.timeline();
        let f = tl.frontier();
        let peers: Vec<String> = self.syncer.peers().map(|p| p.to_string()).collect();
        let lag = self
            .remote_events
            .values()
            .max()
            .map(|m| m.saturating_sub(tl.len() as u64))
            .unwrap_or(0);
        let s = self.syncer.stats();
        let described = M::describe(tl.state());
        json!({
            "peer_id": self.peer_id.to_string(),
            "coherence": described["coherence"],
            "dopamine": described["dopamine"],
            "cognitive_state": described["cognitive_state"],
            "author": self.replica.key().author().to_string(),
            "listen": self.listen,
            "light": self.light,
            "writes_open": self.writes_open,
            "writes_held": self.gated.len(),
            "light_node": self.light.then(|| json!({
                "horizon_lc": self.horizon.map(|h| h.0),
                "horizon": self.horizon.map(|h| h.1.to_string()),
                "pruned_blocks": self.pruned_blocks,
                "outbox": self.outbox.len(),
                "stored_by_full_nodes": self.outbox.stored,
                "unacknowledged_in_time": self.outbox.late,
                "full_peers": self.full_peers.len(),
            })),
            "timeline": tl.genesis_id().to_string(),
            "machine": tl.machine().id(),
            "events": tl.len(),
            "pending": tl.pending_len(),
            "heads": tl.heads().iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            "state_hash": hex::encode(tl.state_hash()),
            "settled": f.settled,
            "first_unsettled_lc": f.first_unsettled.map(|(_, lc)| lc),
            "peers": peers,
            "in_sync_with": self.in_sync.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "sync": {
                "catching_up": self.syncer.catching_up(),
                "lag_events": lag,
                "summaries_sent": s.summaries_sent,
                "pages_received": s.pages_received,
                "wants_sent": s.wants_sent,
                "requests_refused": s.requests_refused,
                "requests_served": self.counters.requests_served,
                "bans": s.bans,
            },
            "received": {
                "gossip": self.counters.gossip_received,
                "sync_blocks": self.counters.blocks_received,
                "oversize": self.counters.oversize,
                "invalid_by_peer": self.counters.invalid_by_peer.iter()
                    .map(|(p, n)| (p.to_string(), *n)).collect::<BTreeMap<_, _>>(),
                "rejected_by_code": self.counters.rejected_by_code,
            },
            "appended": self.counters.appended,
            "refused_writes": self.counters.refused_writes,
            "net_commands_dropped": self.counters.net_commands_dropped,
            "uptime_ms": self.now(),
        })
    }
}
