//! One simulated replica: the node we ship — chorus-core's `NodeState` (with the real KAIROS
//! machine) over a `MemStore` as its disk — driven in turns like the node actor
//! (`chorus-node/src/actor.rs`) drives it. The world around it (`world.rs`) only moves
//! messages, time and faults.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use chorus_core::{
    EventId, SignedEvent, Timeline,
    crypto::Keypair,
    proto::node::{NodeState, Transport},
    storage::MemStore,
    sync::{SyncRequest, SyncResponse, Syncer},
};
use chorus_kairos::machine::Kairos3Sabotage;

/// The machine every simulated node runs: the one `chorus init` and `chorus swarm` make
/// timelines with (`kairos/3`), so the simulator checks the elections the node ships. Its
/// guards are on but in a run with [`Sabotage::UnguardedMachine`] ([`sim_machine`]).
pub type SimMachine = Kairos3Sabotage;

/// The machine of a run with `sabotage`.
pub fn sim_machine(sabotage: Sabotage) -> SimMachine {
    Kairos3Sabotage {
        unguarded: sabotage == Sabotage::UnguardedMachine,
    }
}
/// Its id, as the simulated genesis names it.
pub const SIM_MACHINE_ID: &str = "kairos/3";

use crate::scenario::Attack;

pub type NodeIx = usize;

/// The simulator's transport: peers are node indices; a gossip id is an index into the
/// turn's table of received gossip; a request id names the request and its sender.
pub struct SimNet;

/// An inbound request, until the node answers it.
#[derive(Debug, Clone, Copy)]
pub struct SimRequest {
    pub rid: u64,
    pub from: NodeIx,
    /// The attack it carries (the oracle's bookkeeping; the node never looks).
    pub attack: Option<Attack>,
    /// It checks the asker's own chain (a `Range` of the asker's author): what a liar with
    /// `stall_own_checks` never answers.
    pub own_check: bool,
}

impl Transport for SimNet {
    type Peer = NodeIx;
    type GossipId = usize;
    type RequestId = SimRequest;
}

/// The node state machine as the simulator runs it.
pub type Node = NodeState<SimMachine, MemStore, SimNet>;

/// What travels between nodes.
#[derive(Debug, Clone)]
pub enum Msg {
    Gossip {
        block: Arc<[u8]>,
    },
    Request {
        rid: u64,
        req: SyncRequest,
        /// The peer id the receiver sees: a made-up one (the `sybil` attack), or `None` for
        /// the sender's own. Answers go back to the sender either way.
        as_peer: Option<NodeIx>,
    },
    Response {
        rid: u64,
        resp: SyncResponse,
    },
    /// A message whose length prefix exceeds the wire limit (only adversaries send these).
    Oversized {
        bytes: usize,
    },
}

/// A message in flight, tagged with the attack it carries (the oracle's bookkeeping; the
/// receiving node never looks at the tag).
#[derive(Debug, Clone)]
pub struct Envelope {
    pub from: NodeIx,
    pub msg: Msg,
    pub attack: Option<Attack>,
}

/// How an honest node dealt with one adversarial input (oracle C4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Decoded or validated and refused (counted by error code).
    Rejected,
    /// Valid and taken in (only right for equivocations, which the order then excludes).
    Accepted,
    /// Already held: a replay changes nothing.
    Duplicate,
    /// The gossip layer had seen this message id recently.
    DroppedSeen,
    /// The sender is banned here: the connection is refused.
    DroppedBanned,
    /// A request beyond the per-peer rate or the structural bounds, answered `Refused`.
    Refused,
    /// A request within the rate, answered.
    Served,
    /// A message over the wire limit, refused before reading it.
    RefusedUnread,
    /// Lost on the way (loss, partition, receiver down) or in a crashed receiver's inbox.
    Lost,
    /// Not taken for lack of room (the pending set is full): not forwarded, not charged.
    Busy,
    /// A stranger's event held for its parents within the stranger quota: not forwarded.
    Held,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Rejected => "rejected",
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::DroppedSeen => "dropped_seen",
            Outcome::DroppedBanned => "dropped_banned",
            Outcome::Refused => "refused",
            Outcome::Served => "served",
            Outcome::RefusedUnread => "refused_unread",
            Outcome::Lost => "lost",
            Outcome::Busy => "busy",
            Outcome::Held => "held",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Up,
    Paused,
    Crashed,
}

/// A deliberately broken rule, to show the oracle catches it (never set by a scenario).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sabotage {
    #[default]
    None,
    /// Node 0 folds its state in arrival order instead of the total order (a tie-break by
    /// arrival time, taken to its end).
    ArrivalOrder,
    /// No write gate: a node writes as soon as its model answers, even with a store that lost
    /// its own events (the rule before `Syncer::own_chain_confirmed`).
    NoWriteGate,
    /// Every node ignores the blocks in sync answers, catch-up pages and `Want`s alike (a
    /// broken sync rule: only gossip is left).
    DropSyncBlocks,
    /// Light nodes acknowledge a write as soon as it is signed, before any full node stored
    /// it (the write-through rule switched off).
    LightAckAtOnce,
    /// Every node keeps its own writes out of gossip (they spread only when peers pull them
    /// by anti-entropy): an acknowledged write stays on one disk for seconds, so a wipe loses
    /// writes that the protocol would have had elsewhere.
    NoOwnGossip,
    /// No node heartbeats, whatever the scenario says: idle members hold the settled
    /// frontier (C8 must fail).
    NoHeartbeats,
    /// Every node decides `final/1` with a quorum of half the committee instead of more than
    /// two thirds: the two sides of a halves partition each finalize their own prefix (C9
    /// finality safety must fail).
    QuorumHalf,
    /// Every node makes a finality certificate of a single member's attestation: a member
    /// that attests a false state (the `false_attestation` attack) gets it certified (C9's
    /// certificate check must fail).
    CertifyAlone,
    /// Every node carries a committee vote on one member's word: the adversary's `vote_off`
    /// takes an honest member off the committee (C9's committee check must fail).
    VoteAlone,
    /// Every node takes its peers' word in sync: a catch-up stream that pages nowhere is never
    /// cut, a claim of a node's own chain is never checked. The `liar` keeps the wiped nodes'
    /// writes closed (C10 must fail).
    TrustSyncClaims,
    /// A check of a node's own chain counts as failed only at its request's two-minute
    /// timeout: the `liar` that never answers such checks keeps the wiped nodes' writes
    /// closed for six minutes (C10 must fail).
    NoOwnCheckStall,
    /// Every node treats every key as a member for its pending set: a stranger's events with
    /// made-up parents are held without a quota and forwarded (C4 must fail on the
    /// `stranger_flood` attack).
    TrustStrangers,
    /// Every node (and the oracle's reference model) folds `kairos/3` without its guards
    /// against a hostile writer (the rules of `kairos/2`): the adversary's unasked answers win,
    /// its dummies fill the council, its token bombs feed the engine (C11 must fail).
    UnguardedMachine,
    /// Every node takes an event's Lamport clock as it comes (no `lc = max(parents) + 1`
    /// check): the adversary's `low_lamport` events are held (C4 must fail).
    AnyLamport,
    /// Every node decides membership by arrival order (the rule before membership versions):
    /// the adversary's `admin_fork` splits the replicas (C1 must fail).
    MembershipArrivalOrder,
    /// Every node serves strangers from their own per-peer buckets alone, none shared: the
    /// adversary's `sybil` requests under made-up peer ids are all served (C4 must fail).
    NoStrangerBudget,
    /// Every node orders by event id alone, ignoring Lamport clocks: the replicas agree, but
    /// events come before their parents (C3 must fail).
    OrderWithoutLamport,
}

pub struct SimNode {
    pub ix: NodeIx,
    pub class: usize,
    pub key: Keypair,
    pub writer: bool,
    pub byzantine: bool,
    /// A light node (in-memory replica, writes through full nodes).
    pub light: bool,
    pub status: Status,
    /// Bumped on every crash: timers of an older incarnation are ignored.
    pub epoch: u64,
    /// The node, with its disk (`MemStore`): every block indexed or pending here. A turn's
    /// changes are committed at its end, so a crash (between turns) loses exactly what was
    /// still in the inbox.
    pub node: Node,
    pub inbox: Vec<Envelope>,
    /// Writes whose model answered, waiting for the next turn.
    pub queued_writes: u64,
    pub turn_scheduled: bool,
    /// Requests in flight: id → (peer, request).
    pub outstanding: BTreeMap<u64, (NodeIx, SyncRequest)>,
    /// Gossip message ids seen recently (gossipsub's seen cache) → when.
    pub seen: BTreeMap<EventId, u64>,
    /// Writes acknowledged, and bodies made (a turn makes the bodies of all its writes before
    /// the node appends them).
    pub writes_done: u64,
    pub bodies_made: u64,
    /// The next local write's id.
    pub next_write: u64,
    /// The newest stimulus this node knows, for the intents it writes.
    pub last_stimulus: Option<(u64, EventId)>,
    /// Requests answered `Refused`, and messages refused unread (rejected blocks are counted
    /// by the node: `node.stats().rejected_by_code`).
    pub refused_requests: u64,
    pub refused_unread: u64,
    /// Arrival order of every indexed event (for the `ArrivalOrder` sabotage).
    pub arrivals: Vec<EventId>,
    /// Simulated time of its last start (0, or its last restart).
    pub up_since: u64,
}

impl SimNode {
    pub fn live(&self) -> bool {
        self.status != Status::Crashed
    }
    pub fn tl(&self) -> &Timeline<SimMachine> {
        self.node.local().timeline()
    }
    /// The node's disk.
    pub fn store(&self) -> &MemStore {
        self.node.local().store()
    }
    pub fn syncer(&self) -> &Syncer<NodeIx> {
        self.node.syncer()
    }
    pub fn heads(&self) -> Vec<EventId> {
        self.tl().heads()
    }
    /// Events pending here (waiting for parents).
    pub fn pending(&self) -> BTreeSet<EventId> {
        self.tl().pending().map(SignedEvent::id).collect()
    }
    /// Inputs this node rejected or refused, of every kind.
    pub fn rejected_total(&self) -> u64 {
        self.node.stats().rejected_by_code.values().sum::<u64>()
            + self.refused_requests
            + self.refused_unread
    }
}
