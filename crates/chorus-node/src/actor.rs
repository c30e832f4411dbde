//! # The node actor: an I/O shell around the node state machine
//!
//! One OS thread owns the node: chorus-core's [`NodeState`] over the redb store, which makes
//! every protocol decision (`chorus_core::proto::node`). Everything else talks to the thread
//! through one bounded channel of [`NodeMsg`]. Each turn it drains what is queued (up to
//! [`MAX_DRAIN`]), hands the network events and local writes to the node as inputs, lets it
//! work off the turn (every event block of the turn ingested in **one** group commit, block
//! signatures checked on every core), and carries out what comes out: sync requests and
//! answers, gossip verdicts and publishes, bans, write acknowledgments, the live feed. Then it
//! answers the API's queries from the state after the commit.
//!
//! The actor never blocks on the network: commands go out with `try_send`, and a full command
//! queue drops the command (counted as `net_commands_dropped`); a dropped request is reported
//! to the node as a failed one, and anti-entropy repairs a dropped gossip publish.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use chorus_core::{
    AuthorId, EventId, SignedEvent,
    membership::VoteOp,
    proto::{
        WriteError, WriteId, WriteResult,
        node::{Config, Input, NodeState, Output, Transport},
    },
    storage::Storage,
    sync,
};
use chorus_kairos::body::Intent;
use chorus_net::{Acceptance, GossipId, InboundId, NetCommand, NetEvent, Peer};
use chorus_store::{Replica, Store, StoreSnapshot, verify::decode_parallel};
use ipld_core::ipld::Ipld;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::{
    describe::{Describe, ElectionView, event_json, state_json},
    election::{Election, ElectionList, Published, Selected},
    feed::Feed,
    pages::PageReader,
    status::{FinalityView, FoldStats, Folding, LightNodeStatus, NodeStatus, Received, SyncStatus},
    write::Reply,
};

/// Messages the actor takes per turn (one group commit).
pub const MAX_DRAIN: usize = 1_024;
/// Messages queued for the actor before senders wait.
pub const NODE_QUEUE: usize = 8_192;
/// Most events one `POST /v1/events` may append.
pub const MAX_APPEND_PER_REQUEST: usize = 1_000;
/// Most events one `GET /v1/events` returns.
pub const MAX_EVENTS_PER_PAGE: usize = 1_000;
/// Positions of the order one `GET /v1/events` page looks at, at most (a light node's forgotten
/// past is skipped, not counted in the page).
pub const MAX_SCANNED_PER_PAGE: usize = 65_536;
/// How often the actor runs the sync timers and folds the state.
pub const TICK: Duration = Duration::from_millis(200);
/// A fold longer than this many positions of the order (a late event far back) runs in
/// slices between turns, so appends and queries are answered meanwhile (queries from the last
/// complete fold). With KAIROS one position costs ~1 ms (docs/benchmarks.md).
pub const FOLD_AT_ONCE_POSITIONS: usize = 32;
/// One slice folds for about this long (in steps of [`FOLD_STEP_POSITIONS`]) before the actor
/// takes its next turn: a bound on what a request waits for, whatever the machine costs.
pub const FOLD_SLICE: Duration = Duration::from_millis(10);
/// Positions per step of a slice.
pub const FOLD_STEP_POSITIONS: usize = 8;
/// While a catch-up stream brings events that sort before what is folded, a fold waits for the
/// stream's end (each page would restart it from further back: a merge streamed in pages would
/// cost a rewind per page), but no longer than this in all, counted from the stream's first
/// wait: then folds run as if no stream were running until it ends, and each later page that
/// sorts before what is folded costs a rewind again.
pub const MAX_FOLD_WAIT: Duration = Duration::from_secs(10);

/// A request from the HTTP API.
pub enum ApiRequest {
    Status(oneshot::Sender<Arc<NodeStatus>>),
    /// A read snapshot of the store for an export, with the state at it
    /// (`Err`: this node cannot export, and why).
    Export(oneshot::Sender<Result<ExportStart, String>>),
    /// The newest finality certificate (`final/1`), as JSON with its block.
    Certificate(oneshot::Sender<Option<Value>>),
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
        reply: oneshot::Sender<Option<Election>>,
    },
    /// Every tracked election, oldest first.
    Elections(oneshot::Sender<ElectionList>),
    /// At most `limit` events after `id` in the total order (`None`: `id` is not in it).
    After {
        id: EventId,
        limit: usize,
        reply: oneshot::Sender<Option<Vec<Arc<SignedEvent>>>>,
    },
    /// One event by id (`None`: not held here).
    Event {
        id: EventId,
        reply: oneshot::Sender<Option<Arc<SignedEvent>>>,
    },
}

/// What an export streams: the store as committed at the end of a turn, and what the node's
/// state is at it.
pub struct ExportStart {
    pub snapshot: StoreSnapshot,
    pub machine: String,
    pub genesis: EventId,
    /// The state hash at the snapshot's heads; `None` while a fold runs in slices (the state is
    /// then behind the store) — the export is whole, only this claim is missing.
    pub state_hash: Option<[u8; 32]>,
}

/// Everything the actor reacts to.
pub enum NodeMsg {
    /// Boxed: network events are large, the queue holds many messages.
    Net(Box<NetEvent>),
    Api(ApiRequest),
    Tick,
    Shutdown,
    /// The snapshot `--from-snapshot` named, fetched and checked, or why not (`bootstrap`).
    Bootstrapped(crate::bootstrap::Fetched),
}

/// What queries are answered from while a fold runs in slices: the views of the last complete
/// fold (the machine state itself is part-way through the order then).
struct Snapshot {
    /// Events in the order at that fold, and its heads: what the state is the state of.
    events: usize,
    heads: Vec<EventId>,
    state_hash: [u8; 32],
    described: Value,
    state: Value,
    elections: Vec<Election>,
}

/// The libp2p transport's names for peers, gossip messages and inbound requests.
pub struct Libp2p;

impl Transport for Libp2p {
    type Peer = Peer;
    type GossipId = GossipId;
    type RequestId = InboundId;
}

pub struct Actor<M: Describe> {
    /// The data directory, to hand the replica back at the end.
    dir: std::path::PathBuf,
    node: NodeState<M, Store, Libp2p>,
    /// The data directory's store may miss own events (`replica::OWN_CHAIN_ELSEWHERE_FILE`):
    /// its marker goes once the write gate opens.
    own_chain_elsewhere: bool,
    net: mpsc::Sender<NetCommand>,
    started: Instant,
    peer_id: Peer,
    listen: Vec<String>,
    net_commands_dropped: u64,
    /// Peers' summaries with our heads and another state hash (`Output::Diverged`).
    divergences: u64,
    last_divergence: Option<Peer>,
    /// A long catch-up's progress in the log.
    catch_up: crate::catch_up::CatchUp,
    /// Who waits for each local write.
    waiting: BTreeMap<WriteId, Reply>,
    next_write: u64,
    feed: Feed,
    /// Fold long rewinds in slices (false: always in one go, blocking).
    fold_slices: bool,
    /// Set while a fold runs in slices.
    snapshot: Option<Snapshot>,
    /// When the running catch-up stream first made a fold wait (see [`MAX_FOLD_WAIT`]); kept
    /// until the stream ends, so the bound is on the stream's waits together.
    fold_waiting_since: Option<Instant>,
    /// Folds that waited for a catch-up stream to end (status `fold.waited_for_catch_up`).
    fold_waits: u64,
    /// The elections as last pushed on the feed.
    published: Published,
    /// The timeline grew since the last complete fold.
    grew: bool,
    /// A private timeline: the membership version whose members the swarm allows.
    access_version: Option<u32>,
    /// Reads sync pages off this thread (`None`: its thread could not start; pages are then
    /// read here).
    pages: Option<PageReader<InboundId>>,
    /// A full node advertises its heads and certificate in the DHT (`crate::advertise`).
    advertiser: Option<crate::advertise::Advertiser>,
    /// The certificates and snapshots served by CID.
    certified: crate::blocks::Certified,
    /// Payload placement: told what was indexed and who the full peers are.
    payloads: Option<crate::payloads::Payloads>,
    /// The members' libp2p identities, as of this membership version (payload candidates).
    member_peers: Option<(u32, std::collections::BTreeSet<chorus_net::Peer>)>,
    /// A certificate whose checkpoint this node holds with another state: not tried again
    /// (nor logged again) on every tick.
    refused_snapshot: Option<chorus_core::finality::certificate::Certificate>,
    /// Starting from a certified snapshot (`chorus node --from-snapshot`), while it matters.
    bootstrap: Option<crate::bootstrap::Bootstrap<M::State>>,
}

impl<M: Describe> Actor<M> {
    pub fn new(
        replica: Replica<M>,
        net: mpsc::Sender<NetCommand>,
        peer_id: Peer,
        light: bool,
        heartbeat_ms: Option<u64>,
    ) -> Self {
        // A light node's replica is on disk unless it was made in memory (`--in-memory`).
        let light_on_disk = light && replica.store().is_durable();
        let access_version = replica
            .timeline()
            .genesis()
            .is_private()
            .then(|| replica.timeline().membership().version_now());
        let (dir, local) = replica.into_local();
        let answers = net.clone();
        // Waits while the swarm's queue is full, but gives up at shutdown: the swarm may be
        // waiting for this thread's actor then, and would never drain it.
        let respond = move |id, resp, stopping: &std::sync::atomic::AtomicBool| {
            let mut cmd = NetCommand::Respond { id, resp };
            loop {
                match answers.try_send(cmd) {
                    Ok(()) => return true,
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                    Err(mpsc::error::TrySendError::Full(c)) => {
                        if stopping.load(std::sync::atomic::Ordering::Relaxed) {
                            return false;
                        }
                        cmd = c;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        };
        let pages = match PageReader::spawn(local.store().reader(), respond) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(
                    "page reader thread not started ({e}): pages are read on the actor thread"
                );
                None
            }
        };
        // The actor folds itself, on its tick and before queries (in slices when long).
        let cfg = Config {
            light,
            light_on_disk,
            fold_on_tick: false,
            sliced_fold: true,
            heartbeat_ms,
            pages_outside: pages.is_some(),
        };
        let own_chain_elsewhere = local.store().own_chain_elsewhere();
        Actor {
            dir,
            own_chain_elsewhere,
            node: NodeState::new(local, cfg),
            net,
            started: Instant::now(),
            peer_id,
            listen: vec![],
            net_commands_dropped: 0,
            divergences: 0,
            last_divergence: None,
            catch_up: Default::default(),
            waiting: BTreeMap::new(),
            next_write: 0,
            feed: Feed::new(1),
            fold_slices: true,
            snapshot: None,
            fold_waiting_since: None,
            fold_waits: 0,
            published: Published::default(),
            grew: false,
            access_version,
            pages,
            advertiser: (!light).then(Default::default),
            certified: Default::default(),
            payloads: None,
            member_peers: None,
            refused_snapshot: None,
            bootstrap: None,
        }
    }

    /// Starts from the snapshot `root` (`chorus node --from-snapshot`): its fetch runs
    /// elsewhere ([`crate::bootstrap::spawn`]); the outcome comes as
    /// [`NodeMsg::Bootstrapped`].
    pub fn with_bootstrap(mut self, root: cid::Cid) -> Self {
        self.bootstrap = Some(crate::bootstrap::Bootstrap {
            root,
            started: Instant::now(),
            phase: crate::bootstrap::Phase::Fetching,
        });
        self
    }

    /// The snapshot was fetched and checked (or not): serve it, or say why not.
    fn bootstrapped(&mut self, fetched: crate::bootstrap::Fetched) {
        use crate::bootstrap::Phase;
        let Some(b) = &mut self.bootstrap else {
            return;
        };
        let ms = b.started.elapsed().as_millis() as u64;
        let decoded = match fetched.downcast::<Result<(chorus_core::finality::certificate::Certificate, M::State), String>>() {
            Ok(r) => *r,
            Err(_) => Err("the fetch sent another machine's state".into()),
        };
        let replayed_at_ready = self
            .node
            .local()
            .timeline()
            .finality()
            .map_or(0, |f| f.final_positions);
        b.phase = match decoded {
            Ok((certificate, state)) => {
                tracing::info!(
                    root = %b.root,
                    positions = certificate.att.positions,
                    epoch = certificate.epoch,
                    "serving the certified state of the snapshot after {ms} ms; the history \
                     replays behind it"
                );
                Phase::Serving {
                    certificate,
                    state,
                    ready_ms: ms,
                    replayed_at_ready,
                }
            }
            Err(why) => {
                tracing::warn!(root = %b.root, "snapshot refused: {why}; replaying the history instead");
                Phase::Refused(why)
            }
        };
    }

    /// On a tick: once the replay holds the certified checkpoint, its state must be the
    /// certified one.
    fn check_bootstrap(&mut self) {
        use crate::bootstrap::Phase;
        let Some(b) = &mut self.bootstrap else {
            return;
        };
        let Phase::Serving {
            certificate,
            ready_ms,
            replayed_at_ready,
            ..
        } = &b.phase
        else {
            return;
        };
        let (certificate, ready_ms, replayed_at_ready) =
            (certificate.clone(), *ready_ms, *replayed_at_ready);
        let local = self.node.local();
        let tl = local.timeline();
        let att = certificate.att;
        let final_positions = tl.finality().map_or(0, |f| f.final_positions);
        if final_positions < att.positions {
            return;
        }
        // A slice index, not a walk of the order (a million positions on a large timeline).
        let at = att.positions as usize;
        let own_last = tl
            .order_range(at.saturating_sub(1), at)
            .next()
            .filter(|_| at > 0);
        let verdict = if own_last != Some(att.last) {
            Some(Err(format!(
                "the replay's event at position {} is {}, the snapshot's {}",
                att.positions,
                own_last.map_or("none".into(), |e| e.to_string()),
                att.last
            )))
        } else {
            tl.final_checkpoint_state(att.positions, att.last, local.store())
                .map(|state| {
                    let own = EventId::of_block(&state).0;
                    if own == att.state {
                        Ok(())
                    } else {
                        Err(format!(
                            "the replay folds to state {} at position {}, the snapshot's is {}",
                            hex::encode(own),
                            att.positions,
                            hex::encode(att.state)
                        ))
                    }
                })
        };
        let ms = b.started.elapsed().as_millis() as u64;
        // The fold passed the position and no checkpoint state is held there: nothing to
        // compare with, ever (checkpoint bytes dropped); say so rather than serve forever.
        let folded_past = tl.folded_at().0 as u64 >= att.positions && !tl.needs_catch_up();
        match verdict {
            None if folded_past => {
                let why = format!(
                    "the replay folded past position {} and holds no checkpoint there to compare",
                    att.positions
                );
                tracing::warn!(root = %b.root, "snapshot unchecked: {why}; serving the node's own replay");
                b.phase = Phase::Unchecked { certificate, why };
            }
            None => {} // the fold has not reached the checkpoint yet
            Some(Ok(())) => {
                tracing::info!(
                    root = %b.root,
                    "the replay agrees with the snapshot after {ms} ms: serving the node's own state"
                );
                b.phase = Phase::Agreed {
                    certificate,
                    ready_ms,
                    replayed_at_ready,
                    verified_ms: ms,
                };
            }
            Some(Err(own)) => {
                tracing::error!(
                    root = %b.root,
                    "SNAPSHOT MISMATCH: {own} (determinism broken here, or a quorum certified a \
                     false state); serving the node's own replay"
                );
                b.phase = Phase::Mismatch { certificate, own };
            }
        }
    }

    /// `GET /v1/state` while the certified state is served in place of the replay's.
    fn bootstrap_state(&self) -> Option<Value> {
        let b = self.bootstrap.as_ref()?;
        let crate::bootstrap::Phase::Serving {
            certificate, state, ..
        } = &b.phase
        else {
            return None;
        };
        let tl = self.node.local().timeline();
        Some(json!({
            "timeline": tl.genesis_id().to_string(),
            "machine": tl.machine().id(),
            // The node's own: what it holds so far (the state below is of `positions`).
            "events": tl.len(),
            "pending": tl.pending_len(),
            "heads": tl.heads().iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            "positions": certificate.att.positions,
            "state_hash": hex::encode(certificate.att.state),
            "state": M::describe(state),
            "from_snapshot": {
                "root": b.root.to_string(),
                "certificate": certificate.cid().to_string(),
                "positions": certificate.att.positions,
                "last": certificate.att.last.to_string(),
                "epoch": certificate.epoch,
                "replayed_positions": tl.finality().map_or(0, |f| f.final_positions),
            },
        }))
    }

    /// Keeps the newest finality certificates and their snapshots in `certified`, to be
    /// served by CID.
    pub fn with_certified(mut self, certified: crate::blocks::Certified) -> Self {
        self.certified = certified;
        self
    }

    pub fn with_payloads(mut self, payloads: crate::payloads::Payloads) -> Self {
        self.payloads = Some(payloads);
        self
    }

    /// On a tick: a new certificate is kept for serving with its snapshot (the certified
    /// checkpoint's state, from memory or the store; tried again on later ticks while not
    /// held), and the advertised set is handed to the swarm when due.
    fn advertise(&mut self) {
        let local = self.node.local();
        let tl = local.timeline();
        if let Some(c) = tl.attestations().and_then(|a| a.certificate()) {
            let newest = self.certified.newest();
            let fresh = newest.as_ref().is_none_or(|n| n.certificate != *c);
            let retry = newest.as_ref().is_some_and(|n| n.snapshot.is_none())
                && self.refused_snapshot.as_ref() != Some(c);
            if fresh || retry {
                // Under final/2 the snapshot carries the handovers up to the certificate's
                // epoch: none is built (tried again on later ticks, without reading the
                // state) until all are certified.
                let chain = match tl.handovers() {
                    None => Some(None),
                    Some(h) => h.chain_to(c.epoch).map(Some),
                };
                let state = chain.as_ref().and_then(|_| {
                    tl.final_checkpoint_state(c.att.positions, c.att.last, local.store())
                });
                let snapshot = match state {
                    // sha2-256 of the bytes, as the state hash is.
                    Some(state) if EventId::of_block(&state).0 == c.att.state => chain
                        .map(|ch| chorus_core::snapshot::Snapshot::build(c, ch.as_deref(), &state)),
                    Some(_) => {
                        // Our own state there is not the one a quorum certified: serve none.
                        self.refused_snapshot = Some(c.clone());
                        tracing::error!(
                            positions = c.att.positions,
                            "this node's state at the certified checkpoint differs from the \
                             certified state: no snapshot served (determinism broken here?)"
                        );
                        None
                    }
                    None => None,
                };
                if fresh || snapshot.is_some() {
                    self.certified
                        .replace_newest(crate::blocks::CertifiedBlocks {
                            cid: c.cid(),
                            block: c.to_block(),
                            certificate: c.clone(),
                            snapshot,
                        });
                }
            }
        }
        if !self
            .advertiser
            .as_mut()
            .is_some_and(|a| a.due(Instant::now()))
        {
            return;
        }
        let newest = self.certified.newest();
        let set = crate::advertise::advertised(
            tl.genesis_id(),
            &tl.heads(),
            newest.as_ref().map(|c| c.cid),
            newest
                .as_ref()
                .and_then(|c| c.snapshot.as_ref())
                .map(|s| s.root_cid),
            self.payloads.as_ref().map_or(vec![], |p| {
                p.on_disk(crate::advertise::MAX_PAYLOADS_ADVERTISED)
            }),
        );
        self.send(NetCommand::Provide(set));
    }

    /// Folds every rewind in one go, however long, blocking appends and queries meanwhile
    /// (the behaviour before slicing; for the benchmark that compares the two).
    pub fn fold_in_one_go(mut self) -> Self {
        self.fold_slices = false;
        self.node.local_mut().set_auto_fold(true);
        self
    }

    /// Publishes every new event on `feed`.
    pub fn with_feed(mut self, feed: Feed) -> Self {
        self.feed = feed;
        self
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn light(&self) -> bool {
        self.node.config().light
    }

    fn send(&mut self, cmd: NetCommand) {
        if let Err(e) = self.net.try_send(cmd) {
            self.net_commands_dropped += 1;
            if let mpsc::error::TrySendError::Full(NetCommand::Request { peer, req }) = e {
                let now = self.now();
                self.node.handle(now, Input::RequestFailed { peer, req });
            }
        }
    }

    /// Runs until `Shutdown` or until every sender is gone. The in-flight turn (and its commit)
    /// always completes.
    pub fn run(mut self, mut inbox: mpsc::Receiver<NodeMsg>) -> Replica<M> {
        let mut stop = false;
        while !stop {
            // While a fold runs in slices, a slice goes between turns: take what is queued
            // without waiting for more (unless the fold waits for a catch-up stream: then the
            // next message, at the latest the tick, is waited for).
            let first = if self.snapshot.is_some() && !self.fold_waits_for_stream() {
                match inbox.try_recv() {
                    Ok(m) => Some(m),
                    Err(mpsc::error::TryRecvError::Empty) => None,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            } else {
                match inbox.blocking_recv() {
                    Some(m) => Some(m),
                    None => break,
                }
            };
            let Some(first) = first else {
                self.fold_slice();
                continue;
            };
            let mut turn = vec![first];
            while turn.len() < MAX_DRAIN {
                match inbox.try_recv() {
                    Ok(m) => turn.push(m),
                    Err(_) => break,
                }
            }
            stop = self.turn(turn);
            if self.snapshot.is_some() {
                self.fold_slice();
            }
        }
        self.node.fold();
        self.carry_out();
        self.folded();
        // Answers the queued pages and lets go of the database before the replica is handed
        // back (it may be opened again at once).
        if let Some(mut p) = self.pages.take() {
            p.stop();
        }
        Replica::from_local(self.dir, self.node.into_local())
    }

    /// One turn; true when asked to stop.
    fn turn(&mut self, msgs: Vec<NodeMsg>) -> bool {
        let mut stop = false;
        let mut queries = vec![];
        let mut tick = false;
        let now = self.now();
        for m in msgs {
            let input = match m {
                NodeMsg::Shutdown => {
                    stop = true;
                    continue;
                }
                NodeMsg::Tick => {
                    tick = true;
                    Input::Tick
                }
                NodeMsg::Bootstrapped(fetched) => {
                    self.bootstrapped(fetched);
                    continue;
                }
                NodeMsg::Api(ApiRequest::Append { items, reply }) => {
                    let write = WriteId(self.next_write);
                    self.next_write += 1;
                    self.waiting.insert(write, reply);
                    Input::Append { write, items }
                }
                NodeMsg::Api(q) => {
                    queries.push(q);
                    continue;
                }
                NodeMsg::Net(ev) => match *ev {
                    NetEvent::Listening(a) => {
                        println!("listening {a}");
                        self.listen.push(a.to_string());
                        continue;
                    }
                    NetEvent::PeerUp(p) => {
                        tracing::info!(peer = %p, "peer connected");
                        let key = chorus_net::author_of_peer(&p).map(AuthorId);
                        Input::PeerUp { peer: p, key }
                    }
                    NetEvent::PeerDown(p) => {
                        tracing::info!(peer = %p, "peer disconnected");
                        Input::PeerDown(p)
                    }
                    NetEvent::Gossip { id, from, block } => Input::Gossip { from, id, block },
                    NetEvent::Request { peer, id, req } => Input::Request { peer, id, req },
                    NetEvent::Response { peer, req, resp } => Input::Response { peer, req, resp },
                    NetEvent::RequestFailed { peer, req, error } => {
                        tracing::debug!(%peer, "sync request failed: {error}");
                        Input::RequestFailed { peer, req }
                    }
                },
            };
            self.node.handle(now, input);
        }
        self.node.end_turn(now, &mut |raw| decode_parallel(raw));
        self.carry_out();
        self.follow_membership();
        if self.own_chain_elsewhere && self.node.writes_open() {
            // The peers confirmed the own chain and this store holds it: from here on every
            // own event is committed here first.
            self.own_chain_elsewhere = false;
            if let Err(e) = chorus_store::replica::own_chain_held_again(&self.dir) {
                tracing::warn!("{e} (the next start waits for its peers again before writing)");
            }
        }
        // Elections are pushed after a fold: while anyone follows them, every turn that grew
        // the timeline folds (a new intent reaches the gateway in the turn it arrived).
        let push = self.grew && self.feed.following_elections();
        if tick || push || !queries.is_empty() {
            self.fold();
        }
        if tick {
            self.check_bootstrap();
            self.advertise();
            self.tell_payload_candidates();
            let (events, lag) = (self.node.local().timeline().len() as u64, self.node.lag());
            let catching_up = self.node.syncer().catching_up();
            if let Some(line) = self.catch_up.tick(Instant::now(), events, lag, catching_up) {
                tracing::info!("{line}");
            }
        }
        // Every status asked in one turn sees the same state: build it once (a burst of a
        // thousand monitoring requests costs one fold and one snapshot, not a thousand).
        let mut status: Option<Arc<NodeStatus>> = None;
        for q in queries {
            match q {
                ApiRequest::Status(reply) => {
                    let s = status.get_or_insert_with(|| Arc::new(self.status()));
                    let _ = reply.send(s.clone());
                }
                q => self.query(q),
            }
        }
        stop
    }

    /// Carries out what the node asked for.
    fn carry_out(&mut self) {
        while let Some(o) = self.node.poll_output() {
            match o {
                Output::Send { peer, req } => self.send(NetCommand::Request { peer, req }),
                Output::Respond { id, resp } => self.send(NetCommand::Respond { id, resp }),
                Output::ServePage { id, plan } => match &self.pages {
                    Some(p) => {
                        if let Err(id) = p.serve(id, plan) {
                            let resp = crate::pages::busy();
                            self.send(NetCommand::Respond { id, resp });
                        }
                    }
                    None => {
                        let (tl, store) = (self.node.local().timeline(), self.node.local().store());
                        let resp = sync::pack(&plan, &|id: &EventId| tl.block(id, store));
                        self.send(NetCommand::Respond { id, resp });
                    }
                },
                Output::Validated { id, verdict, .. } => self.send(NetCommand::Validated {
                    id,
                    verdict: if verdict.forward() {
                        Acceptance::Forward
                    } else if verdict.blame() {
                        Acceptance::Reject
                    } else {
                        Acceptance::Ignore
                    },
                }),
                Output::Ban { peer, until } => {
                    tracing::warn!(%peer, until_ms = until, "banning peer: too many invalid blocks");
                    self.send(NetCommand::Ban(peer));
                    self.send(NetCommand::Disconnect(peer));
                }
                Output::Unban(peer) => self.send(NetCommand::Unban(peer)),
                Output::Disconnect(peer) => self.send(NetCommand::Disconnect(peer)),
                Output::Publish(ev) => self.send(NetCommand::Publish(ev.bytes().to_vec())),
                Output::WriteDone { write, result } => self.answer(write, result),
                Output::Indexed(ids) => self.announce(&ids),
                Output::InSync {
                    peer,
                    events,
                    state_hash,
                } => println!(
                    "in sync with {peer}: {events} events, state_hash {}",
                    hex::encode(state_hash)
                ),
                Output::Diverged { peer } => {
                    self.divergences += 1;
                    self.last_divergence = Some(peer);
                    tracing::error!(
                        %peer,
                        "same heads but a different state_hash: determinism violated (or the \
                         peer lies)"
                    )
                }
                Output::WritesOpen { last_sq } => {
                    println!("own chain confirmed by peers (last sq {last_sq}): writes open")
                }
                Output::StoreFailed(e) => tracing::error!("{e}"),
            }
        }
    }

    /// Payload placement's candidates: the connected full peers that are members, and this
    /// node if it is one (a member's identity is its key: an outsider cannot make up ids that
    /// rank first for a payload and then claim to hold it).
    fn tell_payload_candidates(&mut self) {
        let Some(p) = &self.payloads else { return };
        let m = self.node.local().timeline().membership();
        let version = m.version_now();
        if self
            .member_peers
            .as_ref()
            .is_none_or(|(v, _)| *v != version)
        {
            let peers = m
                .current()
                .into_iter()
                .filter_map(|(k, _)| chorus_net::peer_id_of_author(&k.0))
                .collect();
            self.member_peers = Some((version, peers));
        }
        let members = &self.member_peers.as_ref().expect("set above").1;
        let full: std::collections::BTreeSet<chorus_net::Peer> = self
            .node
            .full_peers()
            .iter()
            .filter(|peer| members.contains(peer))
            .copied()
            .collect();
        p.set_candidates(full, members.contains(&self.peer_id));
    }

    /// A private timeline's membership changed: the swarm connects to the new members only.
    fn follow_membership(&mut self) {
        let Some(seen) = self.access_version else {
            return;
        };
        let tl = self.node.local().timeline();
        let now = tl.membership().version_now();
        if now == seen {
            return;
        }
        let Some(peers) = crate::access::allowed(tl) else {
            return;
        };
        let n = peers.len();
        // Only a command the swarm took counts: a full queue (catch-up, when membership
        // events arrive) leaves the version unseen, and the next turn sends it again.
        match self.net.try_send(NetCommand::AllowOnly(peers)) {
            Ok(()) => {
                self.access_version = Some(now);
                tracing::info!(members = n, "membership changed: allowed peers updated");
            }
            Err(_) => self.net_commands_dropped += 1,
        }
    }

    /// A local write is done: tell whoever waits.
    fn answer(&mut self, write: WriteId, result: WriteResult) {
        match &result {
            Err(e @ (WriteError::Refused { .. } | WriteError::NotMember(_))) => {
                tracing::warn!("local write refused: {e}")
            }
            Err(e @ WriteError::Failed(_)) => tracing::error!("local write failed: {e}"),
            Err(e) => tracing::debug!("local write not acknowledged: {e}"),
            Ok(_) => {}
        }
        if let Some(reply) = self.waiting.remove(&write) {
            let _ = reply.send(result);
        }
    }

    /// New events on the live feed (loaded only while someone listens).
    fn announce(&mut self, ids: &[EventId]) {
        if let Some(p) = &self.payloads {
            p.indexed(ids);
        }
        self.grew = true;
        self.feed.timeline_grew();
        if !self.feed.listening() {
            return;
        }
        let local = self.node.local();
        for id in ids {
            if let Ok(e) = local.timeline().load(id, local.store()) {
                self.feed.event(e);
            }
        }
    }

    /// A fold completed: push every election that changed since the last one.
    fn folded(&mut self) {
        self.grew = false;
        let tl = self.node.local().timeline();
        let views = M::elections(tl.state())
            .into_iter()
            .map(|v| {
                let settled = v.winner.is_some_and(|w| tl.is_settled(&w));
                (v, settled)
            })
            .collect();
        let changed = self.published.changes(views);
        // Build (and load each winner) only for someone to receive it.
        if self.feed.following_elections() {
            for (view, _) in changed {
                self.feed.election(self.election(&view));
            }
        }
    }

    /// Folds the state over what arrived since the last fold: on every tick and before the
    /// state is read, so a burst of late events costs one rewind. A short fold runs at once; a
    /// long one (a late event far back) starts a fold in slices, and until it ends queries are
    /// answered from a snapshot of the views at the last complete fold.
    fn fold(&mut self) {
        if self.snapshot.is_some() {
            return; // under way: the run loop folds the next slice
        }
        let tl = self.node.local().timeline();
        if self.fold_slices && tl.fold_cost() > FOLD_AT_ONCE_POSITIONS {
            // The state is still the last complete fold's: keep its views.
            tracing::debug!(positions = tl.fold_cost(), "folding in slices");
            self.snapshot = Some(self.take_snapshot());
        } else {
            // Also when nothing is left to fold: summaries that waited for a fold are
            // compared then.
            self.node.fold();
            self.carry_out();
            self.folded();
        }
    }

    /// Whether the fold under way should wait: a catch-up stream is running and brought events
    /// that sort before what is folded (the fold would start over at each of its pages). At
    /// most [`MAX_FOLD_WAIT`] after the stream's first wait; queries are answered from the
    /// last complete fold meanwhile, as during any sliced fold.
    fn fold_waits_for_stream(&mut self) -> bool {
        if !self.node.syncer().catching_up() {
            self.fold_waiting_since = None;
            return false;
        }
        if !self.node.local().timeline().rewind_pending() {
            return false;
        }
        let since = *self.fold_waiting_since.get_or_insert_with(|| {
            self.fold_waits += 1;
            Instant::now()
        });
        since.elapsed() < MAX_FOLD_WAIT
    }

    /// One slice of a fold under way: steps until the fold is done or the slice's time is up.
    fn fold_slice(&mut self) {
        if self.fold_waits_for_stream() {
            return;
        }
        let start = Instant::now();
        loop {
            if self.node.fold_step(FOLD_STEP_POSITIONS) {
                self.snapshot = None;
                self.folded();
                break;
            }
            if start.elapsed() >= FOLD_SLICE {
                break;
            }
        }
        self.carry_out();
    }

    fn take_snapshot(&self) -> Snapshot {
        let tl = self.node.local().timeline();
        // What the state is the state of: the order and heads at the last complete fold (the
        // events that came since are indexed, not folded).
        let (events, heads) = tl.folded_at();
        let mut state = state_json(tl);
        state["events"] = json!(events);
        state["heads"] = json!(heads.iter().map(|h| h.to_string()).collect::<Vec<_>>());
        Snapshot {
            events,
            heads,
            state_hash: tl.state_hash(),
            described: M::describe(tl.state()),
            state,
            elections: M::elections(tl.state())
                .iter()
                .map(|v| self.election(v))
                .collect(),
        }
    }

    /// Answers a query; the state views come from the snapshot while a fold runs in slices.
    fn query(&mut self, q: ApiRequest) {
        if let Some(snap) = &self.snapshot {
            match q {
                ApiRequest::State(reply) if self.bootstrap_state().is_some() => {
                    let _ = reply.send(self.bootstrap_state().expect("just seen"));
                }
                ApiRequest::State(reply) => {
                    let mut v = snap.state.clone();
                    v["folding"] = json!(true);
                    let _ = reply.send(v);
                }
                ApiRequest::Election { stimulus, reply } => {
                    let view = snap.elections.iter().find(|e| e.stimulus == stimulus);
                    let _ = reply.send(view.cloned());
                }
                ApiRequest::Elections(reply) => {
                    let _ = reply.send(ElectionList {
                        elections: snap.elections.clone(),
                        folding: true,
                    });
                }
                other => self.query_live(other),
            }
            return;
        }
        self.query_live(q)
    }

    fn query_live(&mut self, q: ApiRequest) {
        match q {
            ApiRequest::Status(reply) => {
                let _ = reply.send(Arc::new(self.status()));
            }
            ApiRequest::State(reply) => {
                let _ = reply.send(
                    self.bootstrap_state()
                        .unwrap_or_else(|| state_json(self.node.local().timeline())),
                );
            }
            ApiRequest::Events { from, limit, reply } => {
                let _ = reply.send(self.events(from, limit));
            }
            ApiRequest::Export(reply) => {
                let _ = reply.send(self.export_start());
            }
            ApiRequest::After { id, limit, reply } => {
                let local = self.node.local();
                let tl = local.timeline();
                let after = tl.position_of(&id).map(|pos| {
                    tl.order()
                        .skip(pos + 1)
                        .take(limit)
                        // Behind a light node's horizon: forgotten here.
                        .filter_map(|id| tl.load(&id, local.store()).ok().map(Arc::new))
                        .collect()
                });
                let _ = reply.send(after);
            }
            ApiRequest::Election { stimulus, reply } => {
                let tl = self.node.local().timeline();
                let view = M::elections(tl.state())
                    .into_iter()
                    .find(|e| e.stimulus == stimulus);
                let _ = reply.send(view.map(|v| self.election(&v)));
            }
            ApiRequest::Elections(reply) => {
                let views = M::elections(self.node.local().timeline().state());
                let _ = reply.send(ElectionList {
                    elections: views.iter().map(|v| self.election(v)).collect(),
                    folding: false,
                });
            }
            ApiRequest::Event { id, reply } => {
                let local = self.node.local();
                let ev = local.timeline().load(&id, local.store()).ok();
                let _ = reply.send(ev.map(std::sync::Arc::new));
            }
            ApiRequest::Certificate(reply) => {
                let tl = self.node.local().timeline();
                let quorum = tl.genesis().finality_quorum();
                let view = tl.attestations().and_then(|a| a.certificate()).map(|c| {
                    use base64::Engine as _;
                    json!({
                        "cid": c.cid().to_string(),
                        "timeline": c.timeline.to_string(),
                        "positions": c.att.positions,
                        "last": c.att.last.to_string(),
                        "state_hash": hex::encode(c.att.state),
                        "epoch": c.epoch,
                        "committee": c.committee.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                        "quorum": quorum.quorum(c.committee.len()),
                        "by": c.by.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
                        "block_base64": base64::engine::general_purpose::STANDARD.encode(c.to_block()),
                    })
                });
                let _ = reply.send(view);
            }
            ApiRequest::Append { .. } => unreachable!("appends are handled in the turn"),
        }
    }

    /// An election with what a client needs: the winner's commands and emissary, and whether
    /// the winner is settled (no event can ever sort before it) or still tentative.
    fn election(&self, v: &ElectionView) -> Election {
        let local = self.node.local();
        let tl = local.timeline();
        let winner = v.winner.and_then(|w| tl.load(&w, local.store()).ok());
        let intent = winner.as_ref().map(|e| Intent::view(&e.body));
        Election {
            stimulus: v.stimulus,
            n: v.n,
            selected: v
                .selected
                .iter()
                .map(|(author, name)| Selected {
                    author: *author,
                    name: name.clone(),
                })
                .collect(),
            round: v.round,
            exhausted: v.exhausted,
            intents: v.intents,
            valid: v.valid,
            winner: v.winner,
            winner_author: winner.as_ref().map(|e| e.author),
            emissary: intent.and_then(|i| i.emissary).map(str::to_string),
            model: intent.and_then(|i| i.model).map(str::to_string),
            commands: winner
                .as_ref()
                .and_then(|e| chorus_kairos::ward::valid_commands(&e.body)),
            text: intent.and_then(|i| i.text).map(str::to_string),
            settled: v.winner.is_some_and(|w| tl.is_settled(&w)),
        }
    }

    /// Opens the store snapshot an export streams from. Asked between turns, so the store holds
    /// everything the timeline orders (each turn commits before queries are answered).
    fn export_start(&self) -> Result<ExportStart, String> {
        if self.light() {
            return Err(
                "a light node forgets history behind its horizon and has no whole \
                        timeline to export: export from a full node"
                    .into(),
            );
        }
        let local = self.node.local();
        let tl = local.timeline();
        let snapshot = local
            .store()
            .reader()
            .snapshot()
            .map_err(|e| format!("opening a read snapshot of the store: {e}"))?;
        let mut at = snapshot.heads().to_vec();
        let mut heads = tl.heads();
        at.sort();
        heads.sort();
        // Claimed only for a state folded over exactly the snapshot's events: not while a fold
        // runs in slices, nor after one a store error cut short.
        let state_hash = (self.snapshot.is_none() && at == heads && !tl.needs_catch_up())
            .then(|| tl.state_hash());
        Ok(ExportStart {
            snapshot,
            machine: local.store().machine_id().to_string(),
            genesis: tl.genesis_id(),
            state_hash,
        })
    }

    fn events(&self, from: Option<EventId>, limit: usize) -> Result<Value, String> {
        let local = self.node.local();
        let tl = local.timeline();
        let start = match from {
            Some(id) => tl
                .position_of(&id)
                .ok_or_else(|| format!("{id} is not in this timeline"))?,
            None => 0,
        };
        let mut out = vec![];
        let want = limit.min(MAX_EVENTS_PER_PAGE);
        // A light node skips what it forgot (full nodes have it) without counting it: a page
        // holds `limit` events it has, scanning at most MAX_SCANNED_PER_PAGE positions.
        for (pos, id) in tl
            .order()
            .enumerate()
            .skip(start)
            .take(MAX_SCANNED_PER_PAGE)
        {
            if out.len() == want {
                break;
            }
            let ev = match tl.load(&id, local.store()) {
                Ok(ev) => ev,
                Err(_) if self.light() => continue,
                Err(e) => return Err(e.to_string()),
            };
            out.push(event_json(tl, pos, &ev));
        }
        Ok(json!({ "events": out, "total": tl.len() }))
    }

    /// The status as typed data: counters and short lists copied out of the node (the HTTP
    /// task that asked serializes it).
    fn status(&self) -> NodeStatus {
        let node = &self.node;
        let local = node.local();
        let tl = local.timeline();
        let f = tl.frontier();
        let certificate = tl.attestations().and_then(|a| a.certificate());
        let s = node.syncer().stats();
        let c = node.stats();
        let light = self.light();
        let (horizon, pruned_blocks) = node.horizon();
        let outbox = node.outbox();
        let text = |ids: &[EventId]| ids.iter().map(|h| h.to_string()).collect::<Vec<_>>();
        let by_code =
            |m: &BTreeMap<&'static str, u64>| m.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        // `events` and `heads` are always what this node holds (a write acknowledged is
        // counted at once). While a fold runs in slices the machine state is part-way through
        // the order: the state's fields then come from the last complete fold, and `folding`
        // says which events and heads they are the state of (absent: of `events` and `heads`).
        let (described, state_hash) = match &self.snapshot {
            Some(s) => (s.described.clone(), s.state_hash),
            None => (M::describe(tl.state()), tl.state_hash()),
        };
        NodeStatus {
            peer_id: self.peer_id.to_string(),
            coherence: described["coherence"].clone(),
            dopamine: described["dopamine"].clone(),
            cognitive_state: described["cognitive_state"].clone(),
            author: local.key().author().to_string(),
            listen: self.listen.clone(),
            light,
            writes_open: node.writes_open(),
            writes_held: node.writes_held(),
            bootstrap: self
                .bootstrap
                .as_ref()
                .map(|b| b.view(tl.finality().map_or(0, |f| f.final_positions))),
            light_node: light.then(|| LightNodeStatus {
                horizon_lc: horizon.map(|h| h.0),
                horizon: horizon.map(|h| h.1.to_string()),
                pruned_blocks,
                on_disk: node.config().light_on_disk,
                resubmitted_since_start: node.resubmitted,
                outbox: outbox.len(),
                stored_by_full_nodes: outbox.stored,
                unacknowledged_in_time: outbox.late,
                full_peers: node.full_peers().len(),
            }),
            timeline: tl.genesis_id().to_string(),
            machine: tl.machine().id().to_string(),
            events: tl.len(),
            pending: tl.pending_len(),
            stranger_pending: tl.stranger_pending(),
            heads: text(&tl.heads()),
            state_hash: hex::encode(state_hash),
            folding: self.snapshot.as_ref().map(|s| Folding {
                state_of_events: s.events,
                state_of_heads: text(&s.heads),
                positions_left: tl.fold_cost(),
                waiting_for_catch_up: self.node.syncer().catching_up()
                    && tl.rewind_pending()
                    && self
                        .fold_waiting_since
                        .is_some_and(|t| t.elapsed() < MAX_FOLD_WAIT),
            }),
            fold: FoldStats {
                applied: tl.stats().applied,
                reapplied: tl.stats().reapplied,
                rewinds: tl.stats().rewinds,
                waited_for_catch_up: self.fold_waits,
            },
            order: tl
                .genesis()
                .body
                .order
                .clone()
                .unwrap_or_else(|| chorus_core::genesis::ORDER_LC_CID_1.into()),
            settled: f.settled,
            first_unsettled_lc: f.first_unsettled.map(|(_, lc)| lc),
            finality: tl.finality().map(|x| FinalityView {
                final_positions: x.final_positions,
                segments: x.segments,
                epoch: x.epoch,
                committee: x.committee.len(),
                quorum: x.quorum,
                certified_positions: certificate.map(|c| c.att.positions),
                certificate: certificate.map(|c| c.cid().to_string()),
                conflicts: tl.attestations().map_or(0, |a| a.conflicts()),
                last_conflict: tl.attestations().and_then(|a| a.last_conflict()).map(|c| {
                    format!(
                        "{} attested {} positions with state {}, against {}",
                        c.by,
                        c.attested.positions,
                        hex::encode(c.attested.state),
                        hex::encode(c.against.state)
                    )
                }),
                handovers: tl.handovers().map(|h| h.certified().len() as u32),
                handover_conflicts: tl.handovers().map_or(0, |h| h.conflicts()),
                voted_off: x.voted_off.iter().map(|k| k.to_string()).collect(),
                open_votes: x
                    .open_votes
                    .iter()
                    .map(|(v, n)| {
                        let what = match v {
                            VoteOp::Remove(k) => format!("remove {k}"),
                            VoteOp::Restore(k) => format!("restore {k}"),
                        };
                        (what, *n)
                    })
                    .collect(),
            }),
            peers: node.syncer().peers().map(|p| p.to_string()).collect(),
            in_sync_with: node.in_sync().iter().map(|p| p.to_string()).collect(),
            sync: SyncStatus {
                catching_up: node.syncer().catching_up(),
                lag_events: node.lag(),
                summaries_sent: s.summaries_sent,
                pages_received: s.pages_received,
                wants_sent: s.wants_sent,
                requests_refused: s.requests_refused,
                requests_served: c.requests_served,
                bans: s.bans,
                streams_cut: s.streams_cut,
                own_claims_capped: s.own_claims_capped,
                own_checks_stalled: s.own_checks_stalled,
                stranger_requests_refused: s.stranger_requests_refused,
                pages_served: self.pages.as_ref().map_or(0, |p| {
                    p.stats.served.load(std::sync::atomic::Ordering::Relaxed)
                }),
                pages_busy: self.pages.as_ref().map_or(0, |p| {
                    p.stats.busy.load(std::sync::atomic::Ordering::Relaxed)
                }),
            },
            received: Received {
                gossip: c.gossip_received,
                sync_blocks: c.blocks_received,
                oversize: c.oversize,
                invalid_by_peer: c.invalid_by_peer.clone(),
                invalid: c.invalid_total,
                rejected_by_code: by_code(&c.rejected_by_code),
            },
            appended: c.appended,
            refused_writes: by_code(&c.refused_writes),
            net_commands_dropped: self.net_commands_dropped,
            state_divergences: self.divergences,
            last_divergence_peer: self.last_divergence.map(|p| p.to_string()),
            uptime_ms: self.now(),
        }
    }
}
