//! # chorus-net
//!
//! The rust-libp2p transport of a Chorus node, and nothing more: it turns bytes on the wire
//! into core messages ([`SyncRequest`], [`SyncResponse`], raw event blocks) and back. What to
//! do with them is decided by `chorus-core` (`sync`, `timeline`) in the node actor.
//!
//! Stack: TCP + Noise + Yamux; identify; gossipsub on the topic named by the genesis CID (one
//! message = one event block; message id = the event's CID; application-level validation,
//! because events carry their own signatures, so gossip messages are anonymous rather than
//! signed twice; peer scoring on); request-response with a CBOR codec for anti-entropy;
//! Kademlia (server mode on full nodes) with a provider record under the genesis CID saying
//! "I replicate this timeline"; a block list for banned peers; connection limits; for a
//! private timeline, an allow list of the members' identities (connections from anyone else
//! are denied during the handshake, before any protocol runs); and Bitswap 1.2.0 on generic
//! streams ([`bitswap`]: blocks by CID, to and from any IPFS peer that may connect).
//!
//! The swarm runs in its own tokio task ([`spawn`]); the node talks to it through two bounded
//! channels ([`NET_COMMAND_QUEUE`], [`NET_EVENT_QUEUE`]). A full event channel back-pressures
//! the swarm (it stops reading sockets) rather than dropping anything.

pub mod bitswap;
pub mod providers;

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use chorus_core::{
    EventId,
    limits::MAX_EVENT_BYTES,
    sync::{MAX_SYNC_MESSAGE_BYTES, SyncRequest, SyncResponse},
};
use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, allow_block_list, connection_limits, gossipsub,
    identify, identity, kad, noise,
    request_response::{self, OutboundRequestId, ResponseChannel},
    swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle, dial_opts::DialOpts},
    tcp, yamux,
};
use tokio::sync::mpsc;

pub use libp2p::{Multiaddr as Addr, PeerId as Peer, multiaddr::Protocol};

/// Commands the node may queue before the swarm task blocks it.
pub const NET_COMMAND_QUEUE: usize = 4_096;
/// Events the swarm may queue before it stops reading the network.
pub const NET_EVENT_QUEUE: usize = 4_096;
/// Largest gossip message: one event block plus protobuf framing. Bigger ones are dropped by
/// gossipsub before they reach us.
pub const MAX_GOSSIP_BYTES: usize = MAX_EVENT_BYTES + 1_024;
/// A sync request without an answer after this long fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(chorus_core::sync::REQUEST_TIMEOUT_MS);
/// Concurrent request streams per connection.
pub const MAX_CONCURRENT_STREAMS: usize = 64;
/// How often to look for other replicas through Kademlia while below [`TARGET_PEERS`]…
pub const DISCOVERY_INTERVAL_FEW_PEERS: Duration = Duration::from_secs(2);
/// …and once enough are connected.
pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(30);
/// The node stops dialling discovered replicas at this many connected peers.
pub const TARGET_PEERS: usize = 12;
/// An idle connection (no stream for this long) is closed.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Most inbound connections established at once (peer ids are free: without a bound, one host
/// could hold a task and buffers per made-up identity).
pub const MAX_INCOMING_CONNECTIONS: u32 = 256;
/// Most inbound connections in their handshake at once.
pub const MAX_PENDING_INCOMING: u32 = 64;
/// Most connections to one peer (two nodes dialling each other at once make two).
pub const MAX_CONNECTIONS_PER_PEER: u32 = 4;
/// Most listen addresses taken into Kademlia from one peer's identify message.
pub const MAX_IDENTIFY_ADDRS: usize = 8;

pub const SYNC_PROTOCOL: &str = "/chorus/sync/1";
pub const KAD_PROTOCOL: &str = "/chorus/kad/1";
/// Most block CIDs a node advertises as their provider at once ([`NetCommand::Provide`]).
pub const MAX_PROVIDED_BLOCKS: usize = 31;
/// A provider record lives this long in others' stores unless republished…
pub const PROVIDER_RECORD_TTL: Duration = Duration::from_secs(30 * 60);
/// …and a node republishes its own this often. Shorter than libp2p's defaults (48 h, 12 h):
/// Chorus advertises heads, which change, and a stale record should not outlive its use long.
pub const PROVIDER_REPUBLISH: Duration = Duration::from_secs(10 * 60);
/// Providers one fetch's lookup dials.
pub const MAX_PROVIDERS_DIALLED: usize = 8;
/// A Kademlia query (a lookup, an advertisement) gives up after this long.
pub const KAD_QUERY_TIMEOUT: Duration = Duration::from_secs(20);
pub const IDENTIFY_PROTOCOL: &str = "/chorus/id/1";

/// Names an inbound request until the node answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InboundId(u64);

/// Names a gossip message until the node says whether it was valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipId {
    msg: gossipsub::MessageId,
    from: PeerId,
}

/// What gossipsub does with a validated message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    /// Valid: forward it to the mesh.
    Forward,
    /// Neither forward it nor penalise the sender (the node could not take it now).
    Ignore,
    /// Invalid: drop it and penalise the sender's score.
    Reject,
}

/// What the node tells the swarm to do.
#[derive(Debug)]
pub enum NetCommand {
    /// Gossip one event block.
    Publish(Vec<u8>),
    /// Send a sync request; the answer comes back as [`NetEvent::Response`].
    Request {
        peer: PeerId,
        req: SyncRequest,
    },
    Respond {
        id: InboundId,
        resp: SyncResponse,
    },
    /// The verdict on a gossip message: what gossipsub does with it.
    Validated {
        id: GossipId,
        verdict: Acceptance,
    },
    Ban(PeerId),
    Unban(PeerId),
    Disconnect(PeerId),
    Dial(Multiaddr),
    /// Advertise this node as a provider of exactly these blocks (besides the timeline's own
    /// record): new CIDs are announced to the DHT, CIDs left out are no longer republished.
    /// At most [`MAX_PROVIDED_BLOCKS`] (the rest ignored); only full nodes advertise.
    Provide(Vec<cid::Cid>),
    /// A private timeline's members changed: connect to these identities only (existing
    /// connections to anyone else are closed). Ignored by a public timeline's swarm.
    AllowOnly(Vec<PeerId>),
    /// Stop the swarm task.
    Shutdown,
}

/// What the swarm tells the node.
#[derive(Debug)]
pub enum NetEvent {
    Listening(Multiaddr),
    PeerUp(PeerId),
    PeerDown(PeerId),
    Gossip {
        id: GossipId,
        from: PeerId,
        block: Vec<u8>,
    },
    Request {
        peer: PeerId,
        id: InboundId,
        req: SyncRequest,
    },
    Response {
        peer: PeerId,
        req: SyncRequest,
        resp: SyncResponse,
    },
    RequestFailed {
        peer: PeerId,
        req: SyncRequest,
        error: String,
    },
}

/// How to run the swarm.
pub struct NetConfig {
    /// The node's Ed25519 seed: the libp2p identity is the same key as the event author.
    pub seed: [u8; 32],
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    /// The timeline replicated (gossip topic and provider key). `None`: a client that only
    /// makes requests (`chorus join`).
    pub genesis: Option<EventId>,
    /// Full node: Kademlia server mode and a provider record. Light nodes and clients are
    /// Kademlia clients and never advertise themselves as replicas.
    pub replica: bool,
    /// A private timeline: the only identities allowed to connect (see
    /// [`NetCommand::AllowOnly`]), besides the peers the bootstrap addresses name. `None`:
    /// anyone may connect.
    pub members_only: Option<Vec<PeerId>>,
    /// Addresses others reach this node at, announced besides its listen addresses (behind
    /// NAT, a container's published port, a Kubernetes Service).
    pub external: Vec<Multiaddr>,
    /// The blocks served over Bitswap (the node's store). `None`: the node serves none (every
    /// want is answered `DontHave`) and still fetches.
    pub blocks: Option<Arc<dyn bitswap::BlockSource>>,
    /// Bitswap's per-peer limits (the defaults suit every deployment; tests switch them off).
    pub bitswap: bitswap::Limits,
}

/// Errors setting up the swarm.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("libp2p setup: {0}")]
    Setup(String),
    #[error(
        "cannot listen on {addr}: {why} (another node on this machine? give this one another \
         port with --listen or CHORUS_LISTEN)"
    )]
    Listen { addr: Multiaddr, why: String },
}

/// The handle the node keeps.
pub struct NetHandle {
    pub peer_id: PeerId,
    pub commands: mpsc::Sender<NetCommand>,
    pub events: mpsc::Receiver<NetEvent>,
    pub task: tokio::task::JoinHandle<()>,
    /// Fetches blocks by CID from the connected peers (and serves the node's own).
    pub bitswap: bitswap::Bitswap,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    members: Toggle<allow_block_list::Behaviour<allow_block_list::AllowedPeers>>,
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    identify: identify::Behaviour,
    gossip: gossipsub::Behaviour,
    sync: request_response::cbor::Behaviour<SyncRequest, SyncResponse>,
    kad: kad::Behaviour<providers::ProviderStore>,
    /// Generic streams: Bitswap runs on them ([`bitswap`]).
    streams: libp2p_stream::Behaviour,
}

/// The libp2p peer id of a node key.
pub fn peer_id_of(seed: [u8; 32]) -> PeerId {
    keypair_of(seed).public().to_peer_id()
}

/// The peer ids that bootstrap addresses end with (`…/p2p/<id>`).
fn bootstrap_peers(addrs: &[Multiaddr]) -> Vec<PeerId> {
    addrs
        .iter()
        .filter_map(|a| match a.iter().last() {
            Some(Protocol::P2p(p)) => Some(p),
            _ => None,
        })
        .collect()
}

/// The libp2p peer id of a member's public key (an event author): the identity a node with
/// that key has. `None` for bytes that are not an Ed25519 point.
pub fn peer_id_of_author(author: &[u8; 32]) -> Option<PeerId> {
    let key = identity::ed25519::PublicKey::try_from_bytes(author).ok()?;
    Some(identity::PublicKey::from(key).to_peer_id())
}

/// The member key a peer id proves (the inverse of [`peer_id_of_author`]): `None` for an id
/// that is no inlined Ed25519 key.
pub fn author_of_peer(peer: &PeerId) -> Option<[u8; 32]> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    // Ed25519 ids inline their public key (multihash code 0, "identity").
    if mh.code() != 0 {
        return None;
    }
    let key = identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(key.try_into_ed25519().ok()?.to_bytes())
}

fn keypair_of(seed: [u8; 32]) -> identity::Keypair {
    identity::Keypair::ed25519_from_bytes(seed).expect("32-byte seed is a valid ed25519 secret")
}

/// The gossip topic of a timeline: its genesis CID.
pub fn topic_of(genesis: &EventId) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("/chorus/{genesis}"))
}

/// Gossipsub peer scoring, tuned for Chorus:
/// * invalid messages (our application-level verdict) weigh heavily: one puts the sender under
///   the graylist threshold until it decays;
/// * no penalty for a mesh peer that delivers little: slow nodes (a Pi Zero behind a 45 s
///   link) must never be pruned for being slow;
/// * no IP-colocation penalty: our users run many honest nodes behind one address (a home lab
///   behind NAT, a cluster, or one machine's loopback).
fn score_params(topic: Option<&gossipsub::IdentTopic>) -> gossipsub::PeerScoreParams {
    let mut p = gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    };
    if let Some(t) = topic {
        p.topics.insert(
            t.hash(),
            gossipsub::TopicScoreParams {
                topic_weight: 1.0,
                time_in_mesh_quantum: Duration::from_secs(1),
                mesh_message_deliveries_weight: 0.0,
                mesh_failure_penalty_weight: 0.0,
                invalid_message_deliveries_weight: -100.0,
                invalid_message_deliveries_decay: 0.3,
                ..Default::default()
            },
        );
    }
    p
}

fn build_swarm(cfg: &NetConfig) -> Result<Swarm<Behaviour>, NetError> {
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    let replica = cfg.replica;
    // The bootstrap peers are always allowed: the operator named them, and a node whose own
    // membership is behind (a light node starts with the genesis only; a wiped or new member
    // too) would otherwise refuse a member it has not learned of yet, and so never learn it.
    let members_only = cfg.members_only.clone().map(|m| {
        m.into_iter()
            .chain(bootstrap_peers(&cfg.bootstrap))
            .collect::<Vec<_>>()
    });
    let topic = cfg.genesis.as_ref().map(topic_of);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair_of(cfg.seed))
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| setup(&e))?
        // `/dns4/…`, `/dns6/…` and `/dns/…` addresses (a bootstrap peer named by a Kubernetes
        // Service or a compose service), resolved with the system's resolver configuration.
        .with_dns()
        .map_err(|e| NetError::Setup(format!("DNS resolver (from /etc/resolv.conf): {e}")))?
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            let gossip_cfg = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Anonymous)
                .validate_messages()
                .max_transmit_size(MAX_GOSSIP_BYTES)
                .heartbeat_interval(Duration::from_millis(500))
                .message_id_fn(|m: &gossipsub::Message| {
                    gossipsub::MessageId::new(&EventId::of_block(&m.data).0)
                })
                .build()
                .map_err(|e| e.to_string())?;
            let mut gossip =
                gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_cfg)?;
            gossip.with_peer_score(score_params(topic.as_ref()), Default::default())?;
            let codec = request_response::cbor::codec::Codec::default()
                .set_request_size_maximum(MAX_SYNC_MESSAGE_BYTES as u64)
                .set_response_size_maximum(MAX_SYNC_MESSAGE_BYTES as u64);
            let sync = request_response::Behaviour::with_codec(
                codec,
                [(
                    StreamProtocol::new(SYNC_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default()
                    .with_request_timeout(REQUEST_TIMEOUT)
                    .with_max_concurrent_streams(MAX_CONCURRENT_STREAMS),
            );
            let mut kad_cfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
            kad_cfg
                .set_provider_record_ttl(Some(PROVIDER_RECORD_TTL))
                .set_provider_publication_interval(Some(PROVIDER_REPUBLISH))
                .set_query_timeout(KAD_QUERY_TIMEOUT);
            let mut kad = kad::Behaviour::with_config(
                peer_id,
                providers::ProviderStore::new(peer_id),
                kad_cfg,
            );
            kad.set_mode(Some(if replica {
                kad::Mode::Server
            } else {
                kad::Mode::Client
            }));
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version(format!("chorus/{}", env!("CARGO_PKG_VERSION"))),
            );
            let limits = connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established_incoming(Some(MAX_INCOMING_CONNECTIONS))
                    .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                    .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER)),
            );
            let members = members_only.map(|allowed| {
                let mut list =
                    allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
                for p in allowed {
                    list.allow_peer(p);
                }
                list
            });
            Ok(Behaviour {
                limits,
                members: Toggle::from(members),
                blocked: Default::default(),
                identify,
                gossip,
                sync,
                kad,
                streams: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    Ok(swarm)
}

/// Starts the swarm task: listens, dials the bootstrap addresses, subscribes to the timeline's
/// topic and advertises it. Must be called inside a tokio runtime.
pub fn spawn(cfg: NetConfig) -> Result<NetHandle, NetError> {
    let mut swarm = build_swarm(&cfg)?;
    for addr in &cfg.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen {
                addr: addr.clone(),
                why: e.to_string(),
            })?;
    }
    for addr in &cfg.external {
        swarm.add_external_address(addr.clone());
    }
    let topic = cfg.genesis.as_ref().map(topic_of);
    if let Some(t) = &topic {
        swarm
            .behaviour_mut()
            .gossip
            .subscribe(t)
            .map_err(|e| NetError::Setup(e.to_string()))?;
    }
    for addr in &cfg.bootstrap {
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, "cannot dial bootstrap address: {e}");
        }
    }
    let peer_id = *swarm.local_peer_id();
    let (lookup_tx, lookup_rx) = mpsc::channel(bitswap::MAX_LOOKUPS);
    let bitswap = bitswap::Bitswap::start(
        &swarm.behaviour().streams,
        cfg.blocks.clone(),
        Some(lookup_tx),
        cfg.bitswap,
    );
    let (cmd_tx, cmd_rx) = mpsc::channel(NET_COMMAND_QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(NET_EVENT_QUEUE);
    let provider_key = cfg.genesis.map(|g| kad::RecordKey::new(&g.0));
    let task = tokio::spawn(
        Driver {
            swarm,
            events: ev_tx,
            topic,
            provider_key,
            replica: cfg.replica,
            inbound: HashMap::new(),
            next_inbound: 0,
            outbound: HashMap::new(),
            providing: false,
            bootstrap: cfg.bootstrap.clone(),
            bitswap: bitswap.clone(),
            wanted: Default::default(),
            provided: Default::default(),
            lookups: HashMap::new(),
        }
        .run(cmd_rx, lookup_rx),
    );
    Ok(NetHandle {
        peer_id,
        commands: cmd_tx,
        events: ev_rx,
        task,
        bitswap,
    })
}

/// Hands an event to the node, waiting while its queue is full; false when the node is gone.
async fn emit(events: &mpsc::Sender<NetEvent>, ev: NetEvent) -> bool {
    events.send(ev).await.is_ok()
}

struct Driver {
    swarm: Swarm<Behaviour>,
    events: mpsc::Sender<NetEvent>,
    topic: Option<gossipsub::IdentTopic>,
    provider_key: Option<kad::RecordKey>,
    replica: bool,
    inbound: HashMap<InboundId, ResponseChannel<SyncResponse>>,
    next_inbound: u64,
    outbound: HashMap<OutboundRequestId, (PeerId, SyncRequest)>,
    providing: bool,
    /// Dialled again whenever the node has no peer at all (every peer restarted or was
    /// unreachable for a while): the only addresses known without a routing table.
    bootstrap: Vec<Multiaddr>,
    /// Told who is connected: its wants go to every connected peer.
    bitswap: bitswap::Bitswap,
    /// The block CIDs to advertise ([`NetCommand::Provide`])…
    wanted: std::collections::HashSet<kad::RecordKey>,
    /// …and those announced so far (once a peer is connected to announce them to).
    provided: std::collections::HashSet<kad::RecordKey>,
    /// Bitswap's DHT lookups in flight.
    lookups: HashMap<kad::QueryId, Lookup>,
}

/// One fetch's DHT lookup: answered once the query has ended and every provider dialled has
/// connected or failed.
struct Lookup {
    done: tokio::sync::oneshot::Sender<()>,
    key: kad::RecordKey,
    query_over: bool,
    dialling: BTreeSet<PeerId>,
    dialled: usize,
}

/// The DHT key a block's providers are filed under: its multihash, as in IPFS.
pub fn provider_key(cid: &cid::Cid) -> kad::RecordKey {
    kad::RecordKey::new(&cid.hash().to_bytes())
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<NetCommand>,
        mut lookups: mpsc::Receiver<bitswap::Lookup>,
    ) {
        let mut discovery = tokio::time::interval(DISCOVERY_INTERVAL_FEW_PEERS);
        let mut last_slow_discovery = tokio::time::Instant::now();
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    None | Some(NetCommand::Shutdown) => break,
                    Some(cmd) => self.command(cmd),
                },
                Some(l) = lookups.recv() => self.look_up(l),
                ev = self.swarm.select_next_some() => {
                    if !self.swarm_event(ev).await {
                        break;
                    }
                }
                _ = discovery.tick() => {
                    let few = self.swarm.connected_peers().count() < TARGET_PEERS;
                    if few || last_slow_discovery.elapsed() >= DISCOVERY_INTERVAL {
                        last_slow_discovery = tokio::time::Instant::now();
                        self.discover();
                    }
                }
            }
        }
        tracing::debug!("network task stopped");
    }

    fn discover(&mut self) {
        let Some(key) = self.provider_key.clone() else {
            return;
        };
        if self.swarm.connected_peers().next().is_none() {
            for addr in self.bootstrap.clone() {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::debug!(%addr, "redialling bootstrap address: {e}");
                }
            }
            return;
        }
        if self.replica && !self.providing {
            match self.swarm.behaviour_mut().kad.start_providing(key.clone()) {
                Ok(_) => self.providing = true,
                Err(e) => tracing::warn!("cannot advertise the timeline: {e}"),
            }
        }
        self.sync_provided();
        let _ = self.swarm.behaviour_mut().kad.bootstrap();
        self.swarm.behaviour_mut().kad.get_providers(key);
    }

    /// Starts a fetch's DHT lookup (or drops it, which the fetch takes as "nothing found",
    /// when [`bitswap::MAX_LOOKUPS`] are running already).
    fn look_up(&mut self, l: bitswap::Lookup) {
        let gone: Vec<kad::QueryId> = self
            .lookups
            .iter()
            .filter(|(_, w)| w.done.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.stop_lookup(id);
        }
        if self.lookups.len() >= bitswap::MAX_LOOKUPS {
            return;
        }
        let key = provider_key(&l.cid);
        let id = self.swarm.behaviour_mut().kad.get_providers(key.clone());
        self.lookups.insert(
            id,
            Lookup {
                done: l.done,
                key,
                query_over: false,
                dialling: BTreeSet::new(),
                dialled: 0,
            },
        );
    }

    /// Forgets a lookup whose fetch ended and stops its query.
    fn stop_lookup(&mut self, id: kad::QueryId) {
        self.lookups.remove(&id);
        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            q.finish();
        }
    }

    /// Providers a lookup found: dialled (while the query still holds their addresses), up to
    /// [`MAX_PROVIDERS_DIALLED`]; connected ones were asked when they connected.
    fn dial_providers(&mut self, id: kad::QueryId, providers: impl IntoIterator<Item = PeerId>) {
        let me = *self.swarm.local_peer_id();
        for p in providers {
            let Some(l) = self.lookups.get(&id) else {
                return;
            };
            if p == me || self.swarm.is_connected(&p) || l.dialled >= MAX_PROVIDERS_DIALLED {
                continue;
            }
            // Addresses from our own store's record too, for providers it held before the query.
            let addrs: Vec<Multiaddr> = {
                use kad::store::RecordStore;
                let key = l.key.clone();
                let kad = &mut self.swarm.behaviour_mut().kad;
                kad.store_mut()
                    .providers(&key)
                    .into_iter()
                    .filter(|r| r.provider == p)
                    .flat_map(|r| r.addresses)
                    .take(MAX_IDENTIFY_ADDRS)
                    .collect()
            };
            let dial = DialOpts::peer_id(p).addresses(addrs).build();
            let l = self.lookups.get_mut(&id).expect("looked up above");
            l.dialled += 1;
            match self.swarm.dial(dial) {
                // Already being dialled (by Kademlia's own query, or discovery): that dial's
                // end is awaited all the same.
                Ok(()) | Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {
                    l.dialling.insert(p);
                }
                Err(e) => tracing::debug!(peer = %p, "cannot dial a provider: {e}"),
            }
        }
    }

    /// A peer connected or could not be reached: lookups waiting on it may be over.
    fn dial_ended(&mut self, peer: &PeerId) {
        let over: Vec<kad::QueryId> = self
            .lookups
            .iter_mut()
            .filter_map(|(id, l)| {
                l.dialling.remove(peer);
                (l.query_over && l.dialling.is_empty()).then_some(*id)
            })
            .collect();
        for id in over {
            if let Some(l) = self.lookups.remove(&id) {
                let _ = l.done.send(());
            }
        }
    }

    fn command(&mut self, cmd: NetCommand) {
        let b = self.swarm.behaviour_mut();
        match cmd {
            NetCommand::Publish(block) => {
                if let Some(t) = &self.topic {
                    // No mesh peers yet is normal at start; anti-entropy covers it.
                    if let Err(e) = b.gossip.publish(t.clone(), block) {
                        tracing::debug!("gossip publish: {e}");
                    }
                }
            }
            NetCommand::Request { peer, req } => {
                let id = b.sync.send_request(&peer, req.clone());
                self.outbound.insert(id, (peer, req));
            }
            NetCommand::Respond { id, resp } => {
                if let Some(ch) = self.inbound.remove(&id) {
                    let _ = b.sync.send_response(ch, resp);
                }
            }
            NetCommand::Validated { id, verdict } => {
                let verdict = match verdict {
                    Acceptance::Forward => gossipsub::MessageAcceptance::Accept,
                    Acceptance::Ignore => gossipsub::MessageAcceptance::Ignore,
                    Acceptance::Reject => gossipsub::MessageAcceptance::Reject,
                };
                b.gossip
                    .report_message_validation_result(&id.msg, &id.from, verdict);
            }
            NetCommand::Ban(peer) => {
                b.blocked.block_peer(peer);
            }
            NetCommand::Unban(peer) => {
                b.blocked.unblock_peer(peer);
            }
            NetCommand::Disconnect(peer) => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            NetCommand::Dial(addr) => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::warn!(%addr, "dial: {e}");
                }
            }
            NetCommand::AllowOnly(peers) => {
                if let Some(list) = b.members.as_mut() {
                    let now: std::collections::HashSet<PeerId> = peers
                        .into_iter()
                        .chain(bootstrap_peers(&self.bootstrap))
                        .collect();
                    let gone: Vec<PeerId> = list
                        .allowed_peers()
                        .iter()
                        .filter(|p| !now.contains(p))
                        .copied()
                        .collect();
                    for p in gone {
                        // Closes its connections too.
                        list.disallow_peer(p);
                    }
                    for p in now {
                        list.allow_peer(p);
                    }
                }
            }
            NetCommand::Provide(cids) => self.provide(cids),
            NetCommand::Shutdown => {}
        }
    }

    /// Makes the advertised blocks exactly `cids` (full nodes only): announced now if a peer
    /// is connected, else at the next discovery round that finds one (an announcement into an
    /// empty routing table would reach nobody until the republication, 10 min later).
    fn provide(&mut self, cids: Vec<cid::Cid>) {
        if !self.replica {
            return;
        }
        self.wanted = cids
            .iter()
            .take(MAX_PROVIDED_BLOCKS)
            .map(provider_key)
            .collect();
        if self.swarm.connected_peers().next().is_some() {
            self.sync_provided();
        }
    }

    /// Announces the wanted keys not announced yet, and stops republishing the others.
    fn sync_provided(&mut self) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let gone: Vec<kad::RecordKey> = self.provided.difference(&self.wanted).cloned().collect();
        for key in gone {
            kad.stop_providing(&key);
            self.provided.remove(&key);
        }
        let new: Vec<kad::RecordKey> = self.wanted.difference(&self.provided).cloned().collect();
        for key in new {
            match kad.start_providing(key.clone()) {
                Ok(_) => {
                    self.provided.insert(key);
                }
                Err(e) => tracing::warn!("cannot advertise a block: {e}"),
            }
        }
    }

    /// Handles one swarm event; false when the node has gone away.
    async fn swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) -> bool {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address
                    .clone()
                    .with(Protocol::P2p(*self.swarm.local_peer_id()));
                return emit(&self.events, NetEvent::Listening(full)).await;
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } => {
                if num_established.get() == 1 {
                    // Before any lookup waiting on this peer ends: its fetch asks it first.
                    self.bitswap.peer_up(peer_id);
                    self.dial_ended(&peer_id);
                    return emit(&self.events, NetEvent::PeerUp(peer_id)).await;
                }
                self.dial_ended(&peer_id);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                ..
            } => self.dial_ended(&peer),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.bitswap.peer_down(peer_id);
                return emit(&self.events, NetEvent::PeerDown(peer_id)).await;
            }
            SwarmEvent::Behaviour(b) => return self.behaviour_event(b).await,
            _ => {}
        }
        true
    }

    async fn behaviour_event(&mut self, ev: BehaviourEvent) -> bool {
        match ev {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                // Let Kademlia route to the peer's listen addresses (not loopback-only
                // observed ones): this is how a node that knows one bootstrap address learns
                // the rest of the mesh. Only from a peer that speaks our Kademlia protocol (a
                // Chorus node; anyone else's addresses are not worth dialling), and a few
                // addresses each: the routing table is no store for whatever a peer claims.
                let kad = StreamProtocol::new(KAD_PROTOCOL);
                if info.protocols.contains(&kad) {
                    for addr in info.listen_addrs.into_iter().take(MAX_IDENTIFY_ADDRS) {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
            }
            BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                return emit(
                    &self.events,
                    NetEvent::Gossip {
                        id: GossipId {
                            msg: message_id,
                            from: propagation_source,
                        },
                        from: propagation_source,
                        block: message.data,
                    },
                )
                .await;
            }
            BehaviourEvent::Sync(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        let id = InboundId(self.next_inbound);
                        self.next_inbound += 1;
                        self.inbound.insert(id, channel);
                        return emit(
                            &self.events,
                            NetEvent::Request {
                                peer,
                                id,
                                req: request,
                            },
                        )
                        .await;
                    }
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => {
                        if let Some((peer, req)) = self.outbound.remove(&request_id) {
                            return emit(
                                &self.events,
                                NetEvent::Response {
                                    peer,
                                    req,
                                    resp: response,
                                },
                            )
                            .await;
                        }
                    }
                }
            }
            BehaviourEvent::Sync(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) => {
                if let Some((peer, req)) = self.outbound.remove(&request_id) {
                    return emit(
                        &self.events,
                        NetEvent::RequestFailed {
                            peer,
                            req,
                            error: error.to_string(),
                        },
                    )
                    .await;
                }
            }
            BehaviourEvent::Sync(request_response::Event::InboundFailure {
                peer, error, ..
            }) => {
                tracing::debug!(%peer, "inbound sync request failed: {error}");
                // Responses that never went out leave their channel dropped; forget stale ids.
                self.inbound.retain(|_, ch| ch.is_open());
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            }) if self.lookups.contains_key(&id) => {
                if self.lookups[&id].done.is_closed() {
                    // The fetch ended (block, deadline, caller gone): stop asking.
                    self.stop_lookup(id);
                    return true;
                }
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
                    self.dial_providers(id, providers);
                }
                if step.last {
                    let l = self.lookups.get_mut(&id).expect("checked above");
                    l.query_over = true;
                    if l.dialling.is_empty() {
                        let l = self.lookups.remove(&id).expect("checked above");
                        let _ = l.done.send(());
                    }
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                result:
                    kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                        key,
                        providers,
                    })),
                ..
            }) if Some(&key) == self.provider_key.as_ref() => {
                // Replicas of the timeline (a stopped block lookup's late results are not).
                let me = *self.swarm.local_peer_id();
                for p in providers {
                    let connected = self.swarm.is_connected(&p);
                    if p != me && !connected && self.swarm.connected_peers().count() < TARGET_PEERS
                    {
                        let _ = self.swarm.dial(DialOpts::peer_id(p).build());
                    }
                }
            }
            _ => {}
        }
        true
    }
}
