//! The discrete-event loop: virtual time in milliseconds, one ordered queue of timed events
//! (ties broken by insertion number), the virtual network with its faults, the writers, the
//! adversaries, and the end-of-run convergence watch.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use chorus_core::{
    EventId, SignedEvent, Timeline,
    crypto::Keypair,
    event::{EventError, kind},
    ids::AuthorId,
    limits::DEFAULT_CHECKPOINT_INTERVAL,
    local::Local,
    membership::{MemberOp, Role},
    proto::{
        WriteError, WriteId,
        node::{Config, Input, NodeSabotage, NodeState, Output, Verdict},
    },
    storage::MemStore,
    sync::{
        self, ANTI_ENTROPY_INTERVAL_MS, MAX_SYNC_MESSAGE_BYTES, MAX_WANT_IDS, REQUEST_TIMEOUT_MS,
        SyncRequest, SyncResponse,
    },
    testkit,
};
use chorus_kairos::body::{Intent, Registration, Stimulus};
use ipld_core::ipld::Ipld;
use sha2::{Digest, Sha256};

use crate::{
    node::{
        Envelope, Msg, Node, NodeIx, Outcome, SIM_MACHINE_ID, Sabotage, SimMachine, SimNode,
        SimRequest, Status, sim_machine,
    },
    rng::Rng,
    scenario::{Attack, PartitionKind, Scenario},
};

/// How often each node runs its periodic work (the node's tick).
pub const TICK_MS: u64 = 200;
/// How long gossipsub remembers a message id.
pub const SEEN_TTL_MS: u64 = 120_000;
/// How often the seen cache drops expired ids (it holds at most TTL + this much).
pub const SEEN_PRUNE_MS: u64 = 10_000;
/// How often the watch compares replicas once the run is quiet.
pub const CHECK_MS: u64 = 1_000;
/// Most events processed in one run (a runaway guard; the suite's largest uses ~10 M).
pub const MAX_STEPS: u64 = 200_000_000;
/// Longest simulated time of one run (a runaway guard: a run that never goes quiet fails here).
pub const MAX_SIM_MS: u64 = 6 * 3_600_000;
/// Requests an adversary's flood sends at once.
pub const FLOOD_REQUESTS: usize = 1_000;
/// Blocks an adversary replays at once.
pub const REPLAY_BLOCKS: usize = 20;
/// Whole-chain `Range` requests one `range_scan` attack sends.
pub const RANGE_SCANS: usize = 4;
/// Requests one `sybil` attack sends, each under a fresh made-up peer id.
pub const SYBIL_REQUESTS: usize = 1_000;
/// Made-up peer ids start here (far above any node's index).
pub const SYBIL_BASE: NodeIx = 1 << 40;
/// Registrations one `slot_fill` attack writes.
pub const SLOT_FILL_REGISTRATIONS: usize = 8;
/// Tokens of one `token_bomb` stimulus.
pub const TOKEN_BOMB_TOKENS: usize = 4_000;
/// Events of one fresh non-member key an adversary floods at once (more than the per-key
/// stranger quota, `MAX_PENDING_PER_STRANGER`).
pub const STRANGER_FLOOD_EVENTS: u64 = 100;
/// Anti-entropy rounds the oracle allows for a write on lossy links before it must be on a
/// second disk (see `World::replication_window_ms`).
pub const LOSSY_REPAIR_ROUNDS: u64 = 5;

/// A timed event.
#[derive(Debug, Clone)]
pub enum Ev {
    Deliver {
        to: NodeIx,
        env: Envelope,
    },
    Turn {
        node: NodeIx,
        epoch: u64,
    },
    Tick {
        node: NodeIx,
        epoch: u64,
    },
    /// A writer's model has answered: one write is queued.
    Think {
        node: NodeIx,
        epoch: u64,
    },
    ReqTimeout {
        node: NodeIx,
        epoch: u64,
        rid: u64,
    },
    PartitionStart(PartitionKind),
    PartitionEnd,
    Crash {
        nodes: Vec<NodeIx>,
        wipe: bool,
    },
    Restart {
        nodes: Vec<NodeIx>,
    },
    Pause {
        nodes: Vec<NodeIx>,
    },
    Resume {
        nodes: Vec<NodeIx>,
    },
    Attack {
        node: NodeIx,
        round: u64,
    },
    Check,
}

/// Counters of the run, for the report and the oracle.
#[derive(Debug, Default, Clone)]
pub struct RunStats {
    pub messages: u64,
    pub lost_messages: u64,
    pub faults: u64,
    pub writes_lost_in_crash: u64,
    pub crashes: u64,
    /// Adversarial inputs sent, per attack.
    pub attacks_sent: BTreeMap<Attack, u64>,
    /// …and what became of each.
    pub attack_outcomes: BTreeMap<(Attack, Outcome), u64>,
    /// Replayed blocks that reached a receiver lacking them (after a wipe): deliveries, not
    /// replays, so not judged by C4.
    pub replays_new_to_receiver: u64,
    /// Ids of invalid blocks the adversaries made (none may appear in an honest replica).
    pub forged_ids: BTreeSet<EventId>,
    /// Acknowledged writes whose only copy was on a disk that was wiped (a wipe defeats
    /// durability: these may be gone, and C2 does not count them as lost).
    pub wiped_unreplicated: BTreeSet<EventId>,
    /// Light nodes' writes acknowledged while no full node held them (the promise broken).
    pub light_acked_unstored: u64,
    /// Light nodes' writes answered "not stored in time" (not acknowledged; still retried).
    pub light_writes_late: u64,
    /// C9: final positions a replica held differently from another (at most 16 kept).
    pub finality_violations: Vec<String>,
}

pub struct World {
    pub sc: Scenario,
    pub seed: u64,
    pub sabotage: Sabotage,
    pub now: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    next_seq: u64,
    pub nodes: Vec<SimNode>,
    /// Each node's timers held while it is paused (fired when it resumes).
    held_timers: Vec<Vec<Ev>>,
    pub genesis: SignedEvent,
    /// Overlay links (a < b), fixed for the run.
    pub links: BTreeSet<(NodeIx, NodeIx)>,
    /// Links whose connection is currently up (a < b)…
    conns: BTreeSet<(NodeIx, NodeIx)>,
    /// …and the same per node.
    adjacent: Vec<BTreeSet<NodeIx>>,
    partition: Option<PartitionKind>,
    /// When the current partition began.
    partition_since: u64,
    /// When the last partition or pause ended (replication may have been held up until then).
    disrupted_until: u64,
    net_rng: Rng,
    fault_rng: Rng,
    byz_rng: Rng,
    /// Adversaries whose `unasked_answer` emissary is registered.
    byz_registered: BTreeSet<NodeIx>,
    /// Dummy emissaries the `slot_fill` attacks registered.
    byz_dummies: u64,
    /// Made-up peer ids used so far (`sybil`).
    sybil_ids: usize,
    writer_rngs: Vec<Rng>,
    next_rid: u64,
    /// Acknowledged writes: id → (author node, ack time).
    pub acked: BTreeMap<EventId, (NodeIx, u64)>,
    /// …and the events themselves (the oracle's reference model folds these).
    pub acked_events: BTreeMap<EventId, SignedEvent>,
    /// Events honest light nodes signed and gossiped: each may spread without ever being
    /// acknowledged (the node crashed, or no full node stored it in time) and is then neither
    /// lost nor unexpected.
    pub light_signed: BTreeMap<EventId, SignedEvent>,
    /// Acknowledged writes of honest nodes.
    acked_honest: u64,
    /// Writes queued in some node's turn and not yet acknowledged or lost.
    writes_in_flight: u64,
    /// Faults still to start or end.
    faults_open: u64,
    /// When the last write was acknowledged or the last fault ended.
    pub quiet_since: Option<u64>,
    /// When the watch first saw every live replica agree (after quiet).
    pub converged_at: Option<u64>,
    /// The posterity crash: when, and the survivors' state hash just before it.
    pub posterity: Option<(u64, [u8; 32])>,
    pub stats: RunStats,
    /// Decoding is a pure function of the bytes: identical blocks decode once per run (an
    /// optimisation of the simulator; every distinct block is decoded and verified for real).
    decoded: BTreeMap<EventId, Result<SignedEvent, EventError>>,
    /// The gossip of the turn being worked off: what `Output::Validated`'s id points at
    /// (block, sender, attack), to relay it and to account for the attack.
    turn_gossip: Vec<(Arc<[u8]>, NodeIx, Option<Attack>)>,
    /// `admin_fork` attacks run so far (each lets in a newcomer key of its own).
    admin_forks: u64,
    /// The keys the adversary let in with an admin fork (adversaries' keys, for C5).
    pub newcomers: BTreeSet<AuthorId>,
    trace: Sha256,
    steps: u64,
    pub deadline: u64,
    /// `final/1` runs: the final prefix as the first replica to finalize each position had
    /// it (C9), and per node how much of its own final prefix was checked against it.
    pub final_canon: Vec<EventId>,
    final_checked: Vec<usize>,
    /// Every finality certificate an honest node held at some point of the run (node, when,
    /// what it certifies), judged by C9 at the end: a certificate replaced later may have been
    /// false while it stood.
    pub certificates_held: Vec<(NodeIx, u64, chorus_core::finality::certificate::Attestation)>,
    last_certificate: Vec<Option<chorus_core::finality::certificate::Attestation>>,
}

fn key_for(seed: u64, what: &str) -> Keypair {
    let d: [u8; 32] = Sha256::new()
        .chain_update(seed.to_le_bytes())
        .chain_update(what.as_bytes())
        .finalize()
        .into();
    Keypair::from_seed(d)
}

fn text_body(map: Vec<(&str, Ipld)>) -> Ipld {
    Ipld::Map(map.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

const WORDS: [&str; 16] = [
    "gate", "road", "ember", "tide", "lantern", "moss", "river", "stone", "crow", "harbor", "wind",
    "ash", "bell", "salt", "thorn", "echo",
];

impl World {
    pub fn new(sc: &Scenario, seed: u64, sabotage: Sabotage) -> World {
        let n = sc.nodes();
        let mut classes = vec![];
        for (ci, c) in sc.classes.iter().enumerate() {
            classes.extend(std::iter::repeat_n(ci, c.count));
        }
        let byz_count = sc.byzantine.as_ref().map_or(0, |b| b.nodes);
        let last_class_start = n - sc.classes.last().map_or(0, |c| c.count);
        let keys: Vec<Keypair> = (0..n).map(|i| key_for(seed, &format!("node{i}"))).collect();
        // The admin is a member too. In the scenarios with heartbeats it is node 0's key (as
        // with `chorus init`): a member with no node would hold the settled frontier forever.
        // The others keep a key of its own, so their traces stay as they were.
        let byzantine = |i: usize| i >= last_class_start && i < last_class_start + byz_count;
        // A stolen admin key (the `admin_fork` attack) is the first adversary's own.
        let admin_stolen = byz_count > 0
            && sc
                .byzantine
                .as_ref()
                .is_some_and(|b| b.attacks.contains(&Attack::AdminFork));
        let admin = if admin_stolen {
            keys[last_class_start].clone()
        } else if sc.heartbeat_ms.is_some() {
            keys[0].clone()
        } else {
            key_for(seed, "admin")
        };
        let writer = |i: usize| sc.classes[classes[i]].writes || byzantine(i);
        let light = |i: usize| sc.classes[classes[i]].light;
        let writer_keys: Vec<Keypair> = (0..n)
            .filter(|&i| writer(i))
            .map(|i| keys[i].clone())
            .collect();
        let genesis = testkit::genesis_ordered(
            &admin,
            &writer_keys,
            SIM_MACHINE_ID,
            DEFAULT_CHECKPOINT_INTERVAL,
            sc.order.as_deref(),
        );
        let nodes: Vec<SimNode> = keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| {
                // Every key is new, made with its node's disk (`chorus init`, or `chorus key`
                // then `join`): the disk holds all the key will sign. A light node keeps its
                // timeline in memory and waits for its peers at every start.
                let store = if !light(i) {
                    MemStore::with_complete_own_chain(&genesis)
                } else {
                    MemStore::new(&genesis)
                };
                let local = Local::new(fresh_timeline(&genesis, sabotage), store, key.clone());
                SimNode {
                    ix: i,
                    class: classes[i],
                    key,
                    writer: writer(i),
                    byzantine: byzantine(i),
                    light: light(i),
                    status: Status::Up,
                    epoch: 0,
                    node: node_over(
                        local,
                        sabotage,
                        light(i),
                        heartbeat_of(sc, sabotage),
                        sc.fold,
                    ),
                    inbox: vec![],
                    queued_writes: 0,
                    turn_scheduled: false,
                    outstanding: BTreeMap::new(),
                    seen: BTreeMap::new(),
                    writes_done: 0,
                    bodies_made: 0,
                    next_write: 0,
                    last_stimulus: None,
                    refused_requests: 0,
                    refused_unread: 0,
                    arrivals: vec![],
                    up_since: 0,
                }
            })
            .collect();
        let mut topo_rng = Rng::stream(seed, "topology");
        let mut links = BTreeSet::new();
        if n <= sc.degree + 1 {
            for a in 0..n {
                for b in a + 1..n {
                    links.insert((a, b));
                }
            }
        } else {
            for a in 0..n {
                links.insert(ordered(a, (a + 1) % n));
                for _ in 0..sc.degree / 2 {
                    let b = topo_rng.below(n as u64) as usize;
                    if b != a {
                        links.insert(ordered(a, b));
                    }
                }
            }
        }
        let writer_rngs = (0..n)
            .map(|i| Rng::stream(seed, &format!("writer{i}")))
            .collect();
        World {
            sc: sc.clone(),
            seed,
            sabotage,
            now: 0,
            queue: BTreeMap::new(),
            next_seq: 0,
            held_timers: vec![vec![]; nodes.len()],
            nodes,
            genesis,
            links,
            conns: BTreeSet::new(),
            adjacent: vec![BTreeSet::new(); n],
            partition: None,
            partition_since: 0,
            disrupted_until: 0,
            net_rng: Rng::stream(seed, "network"),
            fault_rng: Rng::stream(seed, "faults"),
            byz_rng: Rng::stream(seed, "byzantine"),
            byz_registered: BTreeSet::new(),
            byz_dummies: 0,
            sybil_ids: 0,
            writer_rngs,
            next_rid: 0,
            acked: BTreeMap::new(),
            acked_events: BTreeMap::new(),
            light_signed: BTreeMap::new(),
            acked_honest: 0,
            writes_in_flight: 0,
            faults_open: 0,
            quiet_since: None,
            converged_at: None,
            posterity: None,
            stats: RunStats::default(),
            decoded: BTreeMap::new(),
            turn_gossip: vec![],
            admin_forks: 0,
            newcomers: BTreeSet::new(),
            trace: Sha256::new(),
            steps: 0,
            deadline: u64::MAX,
            final_canon: vec![],
            final_checked: vec![0; n],
            certificates_held: vec![],
            last_certificate: vec![None; n],
        }
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.queue.insert((t, self.next_seq), ev);
        self.next_seq += 1;
    }

    /// The trace digest: every processed event's time and kind, in order (C6).
    pub fn trace_digest(&self) -> [u8; 32] {
        self.trace.clone().finalize().into()
    }

    pub fn honest(&self) -> impl Iterator<Item = &SimNode> {
        self.nodes.iter().filter(|n| !n.byzantine)
    }

    // ------------------------------------------------------------------ set-up and the loop

    /// `k` of `candidates`, drawn from the fault stream.
    fn pick(&mut self, candidates: &mut [NodeIx], k: usize) -> Vec<NodeIx> {
        self.fault_rng.shuffle(candidates);
        candidates[..k].to_vec()
    }

    /// A fault that starts at `from_s` and ends at `to_s` (both still open until they run).
    fn window(&mut self, from_s: u64, to_s: u64, start: Ev, end: Ev) {
        self.at(from_s * 1000, start);
        self.at(to_s * 1000, end);
        self.faults_open += 2;
    }

    fn schedule_faults(&mut self) {
        let sc = self.sc.clone();
        let n = self.nodes.len();
        for p in &sc.partitions {
            self.at(p.at_s * 1000, Ev::PartitionStart(p.kind));
            self.at((p.at_s + p.for_s) * 1000, Ev::PartitionEnd);
            self.faults_open += 2;
        }
        let mut candidates: Vec<NodeIx> = (0..n).filter(|&i| !self.nodes[i].byzantine).collect();
        if let Some(c) = &sc.crashes {
            let mut candidates: Vec<NodeIx> = match &c.class {
                Some(name) => candidates
                    .iter()
                    .copied()
                    .filter(|&i| &sc.classes[self.nodes[i].class].name == name)
                    .collect(),
                None => candidates.clone(),
            };
            for k in 0..c.cycles {
                self.fault_rng.shuffle(&mut candidates);
                let nodes: Vec<NodeIx> = candidates[..c.nodes].to_vec();
                let t = (c.at_s + k * c.every_s) * 1000;
                self.at(
                    t,
                    Ev::Crash {
                        nodes: nodes.clone(),
                        wipe: false,
                    },
                );
                self.at(t + c.down_s * 1000, Ev::Restart { nodes });
                self.faults_open += 2;
            }
        }
        if let Some(w) = &sc.wipe {
            let nodes = self.pick(&mut candidates, w.nodes);
            let start = Ev::Crash {
                nodes: nodes.clone(),
                wipe: true,
            };
            self.window(w.at_s, w.at_s + w.down_s, start, Ev::Restart { nodes });
        }
        if let Some(p) = &sc.pause {
            let nodes = self.pick(&mut candidates, p.nodes);
            let start = Ev::Pause {
                nodes: nodes.clone(),
            };
            self.window(p.at_s, p.at_s + p.for_s, start, Ev::Resume { nodes });
        }
        if let Some(b) = &sc.byzantine {
            let byz: Vec<NodeIx> = (0..n).filter(|&i| self.nodes[i].byzantine).collect();
            // The last `quiet_liars` adversaries run no attack: they only lie in sync.
            let attackers = byz.len().saturating_sub(b.quiet_liars);
            for node in byz.into_iter().take(attackers) {
                self.at(b.every_s * 1000, Ev::Attack { node, round: 0 });
            }
        }
    }

    /// Runs to the end: every write acknowledged, every fault over, and every live honest
    /// replica in agreement — or the scenario's convergence bound passed.
    pub fn run(&mut self) {
        for i in 0..self.nodes.len() {
            let t = self.writer_rngs[i].below(TICK_MS);
            self.at(t, Ev::Tick { node: i, epoch: 0 });
            if self.nodes[i].writer {
                let model = self.sc.classes[self.nodes[i].class].model_ms;
                let t = self.writer_rngs[i].jitter(model, 25);
                self.at(t, Ev::Think { node: i, epoch: 0 });
            }
        }
        let links: Vec<_> = self.links.iter().copied().collect();
        for (a, b) in links {
            self.connect(a, b);
        }
        self.schedule_faults();
        while let Some(((t, _), ev)) = self.queue.pop_first() {
            self.now = t;
            self.steps += 1;
            self.trace.update(t.to_le_bytes());
            self.trace.update([ev_tag(&ev)]);
            if self.steps > MAX_STEPS || t > self.deadline || t > MAX_SIM_MS {
                break;
            }
            if self.handle(ev) {
                break;
            }
        }
    }

    /// Returns true when the run is over.
    fn handle(&mut self, ev: Ev) -> bool {
        match ev {
            Ev::Deliver { to, env } => self.deliver(to, env),
            Ev::Turn { node, epoch } => {
                if self.timer_ok(node, epoch, &ev_turn(node, epoch)) {
                    self.nodes[node].turn_scheduled = false;
                    self.turn(node);
                }
            }
            Ev::Tick { node, epoch } => {
                if self.timer_ok(node, epoch, &Ev::Tick { node, epoch }) {
                    self.tick(node);
                    self.at(self.now + TICK_MS, Ev::Tick { node, epoch });
                }
            }
            Ev::Think { node, epoch } => {
                if self.timer_ok(node, epoch, &Ev::Think { node, epoch }) {
                    self.think(node, epoch);
                }
            }
            Ev::ReqTimeout { node, epoch, rid } => {
                if self.timer_ok(node, epoch, &Ev::ReqTimeout { node, epoch, rid })
                    && let Some((peer, req)) = self.nodes[node].outstanding.remove(&rid)
                {
                    self.input(node, Input::RequestFailed { peer, req });
                }
            }
            Ev::PartitionStart(k) => {
                self.stats.faults += 1;
                self.partition = Some(k);
                self.partition_since = self.now;
                self.faults_open -= 1;
                self.refresh_conns();
            }
            Ev::PartitionEnd => {
                self.partition = None;
                self.disrupted_until = self.now;
                self.fault_done();
                self.refresh_conns();
            }
            Ev::Crash { nodes, wipe } => {
                self.stats.faults += 1;
                self.faults_open -= 1;
                if wipe {
                    self.note_wiped(&nodes);
                }
                for i in nodes {
                    self.crash(i, wipe);
                }
            }
            Ev::Restart { nodes } => {
                for i in nodes {
                    self.restart(i);
                }
                self.fault_done();
            }
            Ev::Pause { nodes } => {
                self.stats.faults += 1;
                self.faults_open -= 1;
                for i in nodes {
                    self.nodes[i].status = Status::Paused;
                }
            }
            Ev::Resume { nodes } => {
                self.disrupted_until = self.now;
                for i in nodes {
                    self.nodes[i].status = Status::Up;
                    let deferred = std::mem::take(&mut self.held_timers[i]);
                    for ev in deferred {
                        self.at(self.now, ev);
                    }
                }
                self.fault_done();
            }
            Ev::Attack { node, round } => self.attack(node, round),
            Ev::Check => return self.check(),
        }
        false
    }

    /// A node's own timer: ignored after a crash, held while paused.
    fn timer_ok(&mut self, node: NodeIx, epoch: u64, ev: &Ev) -> bool {
        let n = &self.nodes[node];
        if n.epoch != epoch || n.status == Status::Crashed {
            return false;
        }
        if n.status == Status::Paused {
            self.held_timers[node].push(ev.clone());
            return false;
        }
        true
    }

    fn fault_done(&mut self) {
        self.faults_open -= 1;
        self.maybe_quiet();
    }

    fn maybe_quiet(&mut self) {
        let writes_done = self.acked_honest() >= self.sc.events && self.writes_in_flight == 0;
        if self.quiet_since.is_none() && writes_done && self.faults_open == 0 {
            self.quiet_since = Some(self.now);
            self.deadline = self.now + self.sc.converge_within_s * 1000;
            self.at(self.now + CHECK_MS, Ev::Check);
        }
    }

    pub fn acked_honest(&self) -> u64 {
        self.acked_honest
    }

    /// Whether `a` is an adversary's key: its own, or one it let in with an admin fork.
    pub fn adversary_key(&self, a: &AuthorId) -> bool {
        self.newcomers.contains(a)
            || self
                .nodes
                .iter()
                .any(|n| n.byzantine && n.key.author() == *a)
    }

    /// Events pending at `n` that must drain before the replicas agree. Not counted:
    /// strangers' events, which wait for parents that never come (held within their quota,
    /// no part of what replicas must agree on); and, where the adversaries lie in sync, their
    /// own events, whose parents they may have gossiped to nobody and withhold from every
    /// answer. (An honest node never builds on a pending event, so no honest event waits for
    /// a withheld one.)
    pub fn undrained_pending(&self, n: &SimNode) -> usize {
        let withholding = self.sc.byzantine.as_ref().is_some_and(|b| b.lies);
        n.tl()
            .pending()
            .filter(|e| !n.tl().is_stranger(&e.author))
            .filter(|e| !(withholding && self.adversary_key(&e.author)))
            .count()
    }

    /// The watch: once quiet, every live honest replica must hold the same heads.
    fn check(&mut self) -> bool {
        let live: Vec<&SimNode> = self.honest().filter(|n| n.live()).collect();
        let first = live[0].heads();
        // With heartbeats, quiet also means no full node still owes one (else the run would
        // end before the last round of heartbeats, which C8 waits for).
        let heartbeats = heartbeat_of(&self.sc, self.sabotage).is_some();
        let agree = live.iter().all(|n| {
            n.heads() == first
                && self.undrained_pending(n) == 0
                && !(heartbeats && !n.light && n.tl().owes_heartbeat(&n.key.author()))
        });
        if !agree {
            self.at(self.now + CHECK_MS, Ev::Check);
            return false;
        }
        if let Some(p) = self.sc.posterity.clone()
            && self.posterity.is_none()
        {
            // Everything written has spread: now lose all but the survivors.
            let mut honest: Vec<NodeIx> = self.honest().map(|n| n.ix).collect();
            self.fault_rng.shuffle(&mut honest);
            let survivors: Vec<NodeIx> = honest[..p.survivors].to_vec();
            let s = survivors[0];
            let hash = {
                let n = &mut self.nodes[s];
                n.node.local_mut().fold().expect("blocks held");
                n.tl().state_hash()
            };
            self.posterity = Some((self.now, hash));
            let victims: Vec<NodeIx> = (0..self.nodes.len())
                .filter(|i| !survivors.contains(i))
                .collect();
            self.stats.faults += 1;
            self.note_wiped(&victims);
            for &i in &victims {
                self.crash(i, true);
            }
            self.faults_open += 1;
            self.quiet_since = None;
            self.deadline = u64::MAX;
            self.at(self.now + p.down_s * 1000, Ev::Restart { nodes: victims });
            return false;
        }
        self.converged_at = Some(self.now);
        true
    }

    // ------------------------------------------------------------------ the network

    fn blocked(&self, from: NodeIx, to: NodeIx) -> bool {
        let n = self.nodes.len();
        let half = |i: NodeIx| i < n / 2;
        match self.partition {
            None => false,
            Some(PartitionKind::Halves) => half(from) != half(to),
            Some(PartitionKind::OneWay) => half(from) && !half(to),
            Some(PartitionKind::Bridge) => {
                // Node n/2 - 1 is the bridge; it reaches both sides.
                let bridge = n / 2 - 1;
                from != bridge && to != bridge && half(from) != half(to)
            }
            Some(PartitionKind::IsolateLast) => from == n - 1 || to == n - 1,
            Some(PartitionKind::Ring) => {
                let d = from.abs_diff(to);
                d.min(n - d) > n / 4
            }
        }
    }

    fn latency(&mut self, from: NodeIx, to: NodeIx) -> u64 {
        let c = &self.sc.classes;
        let base = c[self.nodes[from].class]
            .one_way_ms
            .max(c[self.nodes[to].class].one_way_ms);
        self.net_rng.jitter(base, self.sc.jitter_pct).max(1)
    }

    fn send(&mut self, from: NodeIx, to: NodeIx, msg: Msg, attack: Option<Attack>) {
        self.stats.messages += 1;
        if let Some(a) = attack {
            *self.stats.attacks_sent.entry(a).or_insert(0) += 1;
        }
        let lossy = self.net_rng.chance(self.sc.loss);
        if self.blocked(from, to) || lossy {
            self.stats.lost_messages += 1;
            self.outcome(attack, Outcome::Lost);
            return;
        }
        let dup = self.net_rng.chance(self.sc.duplicate);
        let t = self.now + self.latency(from, to);
        let env = Envelope { from, msg, attack };
        if dup {
            // The copy is not an adversary's input of its own: count it once.
            let mut copy = env.clone();
            copy.attack = None;
            let t2 = self.now + self.latency(from, to);
            self.at(t2, Ev::Deliver { to, env: copy });
        }
        self.at(t, Ev::Deliver { to, env });
    }

    fn outcome(&mut self, attack: Option<Attack>, o: Outcome) {
        if let Some(a) = attack {
            *self.stats.attack_outcomes.entry((a, o)).or_insert(0) += 1;
        }
    }

    fn conn_possible(&self, a: NodeIx, b: NodeIx) -> bool {
        let (na, nb) = (&self.nodes[a], &self.nodes[b]);
        na.live()
            && nb.live()
            && !(self.blocked(a, b) && self.blocked(b, a))
            && !na.syncer().is_banned(&b)
            && !nb.syncer().is_banned(&a)
    }

    fn connect(&mut self, a: NodeIx, b: NodeIx) {
        if !self.conn_possible(a, b) || !self.conns.insert(ordered(a, b)) {
            return;
        }
        self.adjacent[a].insert(b);
        self.adjacent[b].insert(a);
        // A connection proves each side's key (libp2p: the identity is the member key).
        for (x, y) in [(a, b), (b, a)] {
            let key = Some(self.nodes[y].key.author());
            self.input(x, Input::PeerUp { peer: y, key });
        }
    }

    fn disconnect(&mut self, a: NodeIx, b: NodeIx) {
        if !self.conns.remove(&ordered(a, b)) {
            return;
        }
        self.adjacent[a].remove(&b);
        self.adjacent[b].remove(&a);
        for (x, y) in [(a, b), (b, a)] {
            if self.nodes[x].live() {
                self.input(x, Input::PeerDown(y));
                // In-flight requests on the closed connection fail.
                let failed: Vec<u64> = self.nodes[x]
                    .outstanding
                    .iter()
                    .filter(|(_, (p, _))| *p == y)
                    .map(|(r, _)| *r)
                    .collect();
                for r in failed {
                    if let Some((peer, req)) = self.nodes[x].outstanding.remove(&r) {
                        self.input(x, Input::RequestFailed { peer, req });
                    }
                }
            }
        }
    }

    fn refresh_conns(&mut self) {
        let links: Vec<_> = self.links.iter().copied().collect();
        for (a, b) in links {
            if self.conn_possible(a, b) {
                self.connect(a, b);
            } else {
                self.disconnect(a, b);
            }
        }
    }

    fn neighbours(&self, a: NodeIx) -> Vec<NodeIx> {
        self.adjacent[a].iter().copied().collect()
    }

    fn deliver(&mut self, to: NodeIx, env: Envelope) {
        let n = &self.nodes[to];
        if n.status == Status::Crashed || !self.conns.contains(&ordered(to, env.from)) {
            // No connection: a crashed or banned peer, or the link went down meanwhile.
            let o = if n.syncer().is_banned(&env.from) {
                Outcome::DroppedBanned
            } else {
                Outcome::Lost
            };
            self.outcome(env.attack, o);
            return;
        }
        if let Msg::Gossip { block } = &env.msg {
            let id = EventId::of_block(block);
            let now = self.now;
            let n = &mut self.nodes[to];
            if n.seen.contains_key(&id) {
                self.outcome(env.attack, Outcome::DroppedSeen);
                return;
            }
            n.seen.insert(id, now);
        }
        self.nodes[to].inbox.push(env);
        self.schedule_turn(to);
    }

    /// A replayed block the receiver does not hold (a wipe took it, or it never had it) is
    /// no attack on that receiver: it is a valid event delivered, and taking it in is right.
    /// Only a replay of a block the receiver holds is judged as a replay (C4: never taken
    /// twice).
    fn replay_or_delivery(
        &mut self,
        node: NodeIx,
        block: &[u8],
        attack: Option<Attack>,
    ) -> Option<Attack> {
        if attack != Some(Attack::Replay) {
            return attack;
        }
        let id = EventId::of_block(block);
        let tl = self.nodes[node].tl();
        if tl.contains(&id) || tl.is_pending(&id) {
            attack
        } else {
            // Counted as a delivery, no longer as a replay sent.
            self.stats.replays_new_to_receiver += 1;
            if let Some(n) = self.stats.attacks_sent.get_mut(&Attack::Replay) {
                *n -= 1;
            }
            None
        }
    }

    fn schedule_turn(&mut self, node: NodeIx) {
        let n = &mut self.nodes[node];
        if !n.turn_scheduled {
            n.turn_scheduled = true;
            let epoch = n.epoch;
            // The turn's commit is durable this long after its first message arrived: until
            // then a crash loses the turn (its writes were never acknowledged).
            self.at(self.now + self.sc.commit_ms, ev_turn(node, epoch));
        }
    }

    /// One input outside a turn (a connection came or went, a request timed out), and what
    /// the node makes of it.
    fn input(&mut self, node: NodeIx, input: Input<crate::node::SimNet>) {
        let now = self.now;
        self.nodes[node].node.handle(now, input);
        self.carry_out(node);
    }

    /// Sends `node`'s answer to a request (a lie when it is a lying adversary).
    fn respond(&mut self, node: NodeIx, id: SimRequest, mut resp: SyncResponse) {
        let liar = self.nodes[node]
            .byzantine
            .then_some(())
            .and(self.sc.byzantine.as_ref());
        if liar.is_some_and(|b| b.lies && b.stall_own_checks) && id.own_check {
            return; // never answered: the asker's deadline must end the check
        }
        if liar.is_some_and(|b| b.lies) {
            resp = self.lie(resp);
        }
        if let SyncResponse::Refused { .. } = resp {
            self.nodes[node].refused_requests += 1;
            self.outcome(id.attack, Outcome::Refused);
        } else {
            self.outcome(id.attack, Outcome::Served);
        }
        self.send(node, id.from, Msg::Response { rid: id.rid, resp }, None);
    }

    /// Carries out what `node` asked for: the shell's half of the node, as the actor's
    /// `carry_out` does it with libp2p.
    fn carry_out(&mut self, node: NodeIx) {
        while let Some(o) = self.nodes[node].node.poll_output() {
            match o {
                Output::Send { peer, req } => self.request(node, peer, req, None),
                // A page is read from the store alone, as the actor's page reader does it.
                Output::ServePage { id, plan } => {
                    let store = self.nodes[node].node.local().store();
                    let resp = sync::pack(&plan, &|id: &EventId| {
                        chorus_core::timeline::BlockSource::get_block(store, id)
                    });
                    self.respond(node, id, resp);
                }
                Output::Respond { id, resp } => self.respond(node, id, resp),
                Output::Validated { id, from, verdict } => {
                    let (block, _, attack) = self.turn_gossip[id].clone();
                    let o = match verdict {
                        Verdict::Accepted | Verdict::Pending => Outcome::Accepted,
                        Verdict::Duplicate => Outcome::Duplicate,
                        Verdict::Rejected => Outcome::Rejected,
                        Verdict::Busy => Outcome::Busy,
                        Verdict::Held => Outcome::Held,
                    };
                    self.outcome(attack, o);
                    // Gossipsub forwards a validated new message to the mesh.
                    if matches!(verdict, Verdict::Accepted | Verdict::Pending) {
                        for peer in self.neighbours(node) {
                            if peer != from {
                                let block = block.clone();
                                self.send(node, peer, Msg::Gossip { block }, None);
                            }
                        }
                    }
                }
                Output::Ban { peer, .. } | Output::Disconnect(peer) => self.disconnect(node, peer),
                Output::Unban(peer) => self.connect(node, peer),
                Output::Publish(ev) => {
                    let id = ev.id();
                    self.nodes[node].seen.insert(id, self.now);
                    // A light node's heartbeat is no write: the oracle counts it with the
                    // other heartbeats wherever it arrived.
                    if self.nodes[node].light
                        && !self.nodes[node].byzantine
                        && ev.kind != chorus_core::event::kind::HEARTBEAT
                    {
                        self.light_signed.insert(id, ev.clone());
                    }
                    if self.sabotage == Sabotage::NoOwnGossip {
                        continue; // only anti-entropy will spread it
                    }
                    for peer in self.neighbours(node) {
                        let block = ev.bytes_arc();
                        self.send(node, peer, Msg::Gossip { block }, None);
                    }
                }
                Output::WriteDone { result, .. } => {
                    let light = self.nodes[node].light;
                    let ids = match result {
                        Ok(ids) => ids,
                        Err(WriteError::Unavailable(_)) if light => {
                            // No full node stored it in time: not acknowledged, still retried.
                            self.stats.light_writes_late += 1;
                            continue;
                        }
                        Err(e) => panic!("the scenario made a write the node refused: {e}"),
                    };
                    for id in ids {
                        // A light node's promise: a full node holds the write now.
                        let on_full_node =
                            |m: &SimNode| !m.light && !m.byzantine && m.store().holds(&id);
                        if light && !self.nodes.iter().any(on_full_node) {
                            self.stats.light_acked_unstored += 1;
                        }
                        let n = &mut self.nodes[node];
                        let ev = n
                            .tl()
                            .load(&id, n.store())
                            .expect("an acknowledged write is stored");
                        n.writes_done += 1;
                        self.acked.insert(id, (node, self.now));
                        if !n.byzantine {
                            self.acked_honest += 1;
                        }
                        self.acked_events.insert(id, ev);
                    }
                }
                Output::Indexed(ids) => {
                    let n = &mut self.nodes[node];
                    for id in ids {
                        n.arrivals.push(id);
                        if let Some((_, _, lc)) = n.tl().meta_of(&id)
                            && n.last_stimulus.is_none_or(|(l, x)| (lc, id) > (l, x))
                            && n.tl()
                                .load(&id, n.store())
                                .is_ok_and(|e| e.kind == kind::STIMULUS)
                        {
                            n.last_stimulus = Some((lc, id));
                        }
                    }
                }
                Output::StoreFailed(e) => panic!("the in-memory store failed: {e}"),
                Output::InSync { .. } | Output::Diverged { .. } | Output::WritesOpen { .. } => {}
            }
        }
    }

    fn request(&mut self, node: NodeIx, peer: NodeIx, req: SyncRequest, attack: Option<Attack>) {
        let rid = self.next_rid;
        self.next_rid += 1;
        if attack.is_none() {
            self.nodes[node]
                .outstanding
                .insert(rid, (peer, req.clone()));
            let epoch = self.nodes[node].epoch;
            self.at(
                self.now + REQUEST_TIMEOUT_MS,
                Ev::ReqTimeout { node, epoch, rid },
            );
        }
        let msg = Msg::Request {
            rid,
            req,
            as_peer: None,
        };
        self.send(node, peer, msg, attack);
    }

    // ------------------------------------------------------------------ node behaviour

    fn decode(&mut self, block: &Arc<[u8]>) -> (EventId, Result<SignedEvent, EventError>) {
        let id = EventId::of_block(block);
        let r = self
            .decoded
            .entry(id)
            .or_insert_with(|| SignedEvent::decode(block))
            .clone();
        (id, r)
    }

    /// Ends `node`'s turn: the node works off what it was handed (see `NodeState::end_turn`),
    /// decoding through the run's cache, and the world carries out what it asks for.
    fn end_turn(&mut self, node: NodeIx) {
        let now = self.now;
        let decoded = &mut self.decoded;
        let mut decode = |raw: &[Vec<u8>]| -> Vec<Result<SignedEvent, EventError>> {
            raw.iter()
                .map(|b| {
                    decoded
                        .entry(EventId::of_block(b))
                        .or_insert_with(|| SignedEvent::decode(b))
                        .clone()
                })
                .collect()
        };
        self.nodes[node].node.end_turn(now, &mut decode);
        self.carry_out(node);
        self.turn_gossip.clear();
        self.check_final_prefix(node);
    }

    /// C9 finality safety, as the run goes: the positions `node` newly holds final must be
    /// those every replica holds final there (the first replica to finalize a position fixes
    /// it for the run). A replica never takes back a final position: positions it held final
    /// before are not checked again unless it restarted (then from its first position).
    fn check_final_prefix(&mut self, node: NodeIx) {
        let tl = self.nodes[node].tl();
        let Some(f) = tl.finality() else {
            return;
        };
        let cert = tl
            .attestations()
            .and_then(|a| a.certificate())
            .map(|c| c.att);
        if cert.is_some() && cert != self.last_certificate[node] && !self.nodes[node].byzantine {
            self.last_certificate[node] = cert;
            if let Some(att) = cert {
                self.certificates_held.push((node, self.now, att));
            }
        }
        // No honest member leaves the committee: honest nodes never vote here, and at most f
        // adversaries' votes are never a quorum.
        if !f.voted_off.is_empty() && !self.nodes[node].byzantine {
            for off in &f.voted_off {
                let honest = self
                    .nodes
                    .iter()
                    .any(|n| !n.byzantine && n.key.author() == *off);
                if honest && self.stats.finality_violations.len() < 16 {
                    self.stats.finality_violations.push(format!(
                        "node {node} at {} ms: honest member {off} voted off the committee",
                        self.now
                    ));
                }
            }
        }
        let len = f.final_positions as usize;
        let from = self.final_checked[node];
        if len < from {
            self.stats.finality_violations.push(format!(
                "node {node} at {} ms: its final prefix shrank from {from} to {len}",
                self.now
            ));
            self.final_checked[node] = len;
            return;
        }
        for (p, id) in tl.order_range(from, len).enumerate() {
            let p = from + p;
            match self.final_canon.get(p) {
                Some(c) if *c != id => {
                    if self.stats.finality_violations.len() < 16 {
                        self.stats.finality_violations.push(format!(
                            "node {node} at {} ms: final position {p} holds {id}, another replica finalized {c} there",
                            self.now
                        ));
                    }
                    self.final_checked[node] = len;
                    return;
                }
                Some(_) => {}
                None => self.final_canon.push(id),
            }
        }
        self.final_checked[node] = len;
    }

    /// One actor turn: everything in the inbox and the writes whose model answered go to the
    /// node as inputs, then the node works them off.
    fn turn(&mut self, node: NodeIx) {
        let inbox = std::mem::take(&mut self.nodes[node].inbox);
        let now = self.now;
        self.turn_gossip.clear();
        for env in inbox {
            let from = env.from;
            let input = match env.msg {
                Msg::Gossip { block } => {
                    let id = self.turn_gossip.len();
                    let attack = self.replay_or_delivery(node, &block, env.attack);
                    self.turn_gossip.push((block.clone(), from, attack));
                    Input::Gossip {
                        from,
                        id,
                        block: block.to_vec(),
                    }
                }
                Msg::Oversized { .. } => {
                    self.nodes[node].refused_unread += 1;
                    self.outcome(env.attack, Outcome::RefusedUnread);
                    continue;
                }
                Msg::Request { rid, req, as_peer } => Input::Request {
                    peer: as_peer.unwrap_or(from),
                    id: SimRequest {
                        rid,
                        from,
                        attack: env.attack,
                        own_check: matches!(&req, SyncRequest::Range { author, .. }
                            if *author == self.nodes[from].key.author()),
                    },
                    req,
                },
                Msg::Response { rid, mut resp } => {
                    let Some((peer, req)) = self.nodes[node].outstanding.remove(&rid) else {
                        continue; // timed out already, or never asked
                    };
                    if let SyncResponse::Blocks(b) = &mut resp
                        && self.sabotage == Sabotage::DropSyncBlocks
                    {
                        b.blocks.clear();
                    }
                    Input::Response { peer, req, resp }
                }
            };
            self.nodes[node].node.handle(now, input);
        }
        let writes = std::mem::take(&mut self.nodes[node].queued_writes);
        for _ in 0..writes {
            self.writes_in_flight -= 1;
            let (k, body) = self.next_body(node);
            let n = &mut self.nodes[node];
            let write = WriteId(n.next_write);
            n.next_write += 1;
            n.node.handle(
                now,
                Input::Append {
                    write,
                    items: vec![(k.to_string(), body)],
                },
            );
        }
        self.end_turn(node);
        self.maybe_quiet();
    }

    fn think(&mut self, node: NodeIx, epoch: u64) {
        if self.acked_honest() >= self.sc.events {
            return; // every write is done: the writer stops
        }
        // Writes in flight may still be lost in a crash: keep thinking, queue only what is
        // still missing (adversaries write regardless).
        let enough = self.acked_honest() + self.writes_in_flight >= self.sc.events;
        let gate_open =
            self.nodes[node].node.writes_open() || self.sabotage == Sabotage::NoWriteGate;
        if gate_open && (!enough || self.nodes[node].byzantine) {
            self.nodes[node].queued_writes += 1;
            self.writes_in_flight += 1;
            self.schedule_turn(node);
        }
        let model = self.sc.classes[self.nodes[node].class].model_ms;
        let t = self.writer_rngs[node].jitter(model, 25);
        self.at(self.now + t, Ev::Think { node, epoch });
    }

    /// The body of a writer's next event: its emissary first, then stimuli and intents.
    fn next_body(&mut self, node: NodeIx) -> (&'static str, Ipld) {
        let words = self.sc.words;
        let rng = &mut self.writer_rngs[node];
        let text: Vec<&str> = (0..words)
            .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
            .collect();
        let text = text.join(" ");
        let n = &mut self.nodes[node];
        let made = n.bodies_made;
        n.bodies_made += 1;
        let name = format!("e{node}");
        if made == 0 {
            return (kind::EMISSARY, Registration::named(name).to_ipld());
        }
        let stimulus =
            n.last_stimulus.is_none() || (node.is_multiple_of(4) && made.is_multiple_of(3));
        match n.last_stimulus.filter(|_| !stimulus) {
            None => (kind::STIMULUS, Stimulus::text(text).to_ipld()),
            Some((_, re)) => (
                kind::INTENT,
                Intent {
                    re: Some(re),
                    emissary: name,
                    text: Some(text),
                    commands: Some(vec![format!("say {}", WORDS[node % 16])]),
                    ..Default::default()
                }
                .to_ipld(),
            ),
        }
    }

    /// The node's tick, as its own turn: timers, the write gate, expiries.
    fn tick(&mut self, node: NodeIx) {
        let now = self.now;
        let n = &mut self.nodes[node];
        if now % SEEN_PRUNE_MS < TICK_MS {
            n.seen.retain(|_, t| now < *t + SEEN_TTL_MS);
        }
        n.node.handle(now, Input::Tick);
        self.end_turn(node);
    }

    /// Before the disks of `batch` are wiped, all at once: the acknowledged writes that are
    /// stored only on those disks, and were acknowledged too recently to be anywhere else,
    /// are gone with them. What an acknowledgment promises (docs/resilience.md): the write is
    /// durable on its writer's disk, and offered to its peers at once, so it is on another
    /// disk within [`replication_window_ms`](Self::replication_window_ms). A write held only
    /// by wiped disks but older than that is counted lost (C2): a node that replicated too
    /// slowly is caught, not excused. The whole batch is judged before any disk is cleared:
    /// judged one node at a time, a write held by two nodes of the batch was excused by
    /// neither (issue 20: wipe seeds 62485, 102080, 33756).
    fn note_wiped(&mut self, batch: &[NodeIx]) {
        let window = self.replication_window_ms();
        let now = self.now;
        // The clock of a write starts at its acknowledgment, or when the last partition or
        // pause ended if that is later; while a partition holds, every write acknowledged from
        // one window before it began on may be cut off.
        let (partitioned, since, until) = (
            self.partition.is_some(),
            self.partition_since,
            self.disrupted_until,
        );
        let young = |at: u64| {
            if partitioned {
                at + window >= since
            } else {
                now.saturating_sub(at.max(until)) <= window
            }
        };
        let nodes = &self.nodes;
        let held = |id: &EventId, inside: bool| {
            nodes
                .iter()
                .any(|n| batch.contains(&n.ix) == inside && n.store().holds(id))
        };
        let gone: Vec<EventId> = self
            .acked
            .iter()
            .filter(|(id, (_, at))| young(*at) && held(id, true) && !held(id, false))
            .map(|(id, _)| *id)
            .collect();
        self.stats.wiped_unreplicated.extend(gone);
    }

    /// The longest an honest, acknowledged write stays on its writer's disk alone: one hop of
    /// the slowest link (with its jitter) plus the receiver's commit; on lossy links, where
    /// every gossip copy can be lost, a few anti-entropy rounds more (a summary, a `Want` and
    /// the block each). Partitions and pauses are accounted for by the caller.
    pub fn replication_window_ms(&self) -> u64 {
        let slowest = self
            .sc
            .classes
            .iter()
            .map(|c| c.one_way_ms)
            .max()
            .unwrap_or(0);
        let hop = slowest * (100 + self.sc.jitter_pct) / 100 + 1;
        let first = hop + self.sc.commit_ms;
        if self.sc.loss == 0.0 {
            return first;
        }
        first + LOSSY_REPAIR_ROUNDS * (ANTI_ENTROPY_INTERVAL_MS + 3 * hop + self.sc.commit_ms)
    }

    fn crash(&mut self, i: NodeIx, wipe: bool) {
        self.stats.crashes += 1;
        let lost_inbox: Vec<Option<Attack>> =
            self.nodes[i].inbox.iter().map(|e| e.attack).collect();
        for a in lost_inbox {
            self.outcome(a, Outcome::Lost);
        }
        let n = &mut self.nodes[i];
        self.writes_in_flight -= n.queued_writes;
        self.stats.writes_lost_in_crash += n.queued_writes;
        n.queued_writes = 0;
        n.inbox.clear();
        self.held_timers[i].clear();
        n.outstanding.clear();
        n.turn_scheduled = false;
        n.epoch += 1;
        if wipe || self.nodes[i].light {
            // The disk is gone (a light node's replica is in memory: a crash is a wipe); what
            // the node held in memory is gone with the crash anyway.
            let n = &mut self.nodes[i];
            let blank = Local::new(
                Timeline::new(self.genesis.clone(), sim_machine(self.sabotage))
                    .expect("the sim's genesis"),
                MemStore::new(&self.genesis),
                n.key.clone(),
            );
            n.node = node_over(
                blank,
                self.sabotage,
                n.light,
                heartbeat_of(&self.sc, self.sabotage),
                self.sc.fold,
            );
        }
        let peers = self.neighbours(i);
        for p in peers {
            self.disconnect(i, p);
        }
        // Status last: `disconnect` tells the peers, not the dead node.
        self.nodes[i].status = Status::Crashed;
    }

    /// Restart on whatever the disk kept: the timeline is rebuilt from its blocks (indexed in
    /// the order, then the pending ones), as `Replica::open` does on redb.
    fn restart(&mut self, i: NodeIx) {
        let genesis = self.genesis.clone();
        let now = self.now;
        let n = &mut self.nodes[i];
        n.status = Status::Up;
        n.up_since = now;
        n.seen.clear();
        let blank = Local::new(
            fresh_timeline(&genesis, self.sabotage),
            MemStore::new(&genesis),
            n.key.clone(),
        );
        let heartbeat = heartbeat_of(&self.sc, self.sabotage);
        let old = std::mem::replace(
            &mut n.node,
            node_over(blank, self.sabotage, n.light, heartbeat, false),
        );
        let (_, store, key) = old.into_local().into_parts();
        let indexed: Vec<Arc<[u8]>> = store.ordered_blocks();
        let pending: Vec<Arc<[u8]>> = store.pending_blocks();
        let mut decode = |bs: Vec<Arc<[u8]>>| -> Vec<SignedEvent> {
            bs.iter()
                .filter_map(|b| self.decode(b).1.ok())
                .filter(|e| e.id() != genesis.id())
                .collect()
        };
        let indexed = decode(indexed);
        let pending = decode(pending);
        let mut tl = fresh_timeline(&genesis, self.sabotage);
        let results = tl
            .insert_batch_deferred(indexed.iter().cloned(), &store)
            .expect("restart from the sim's own disk");
        for (e, r) in indexed.iter().zip(results) {
            // What the disk held indexed indexes again, as `Timeline::restore` demands.
            assert!(
                matches!(r, Ok(chorus_core::timeline::Inserted::Indexed { .. })),
                "stored event {} did not index again at restart: {r:?}",
                e.id()
            );
        }
        let mut local = Local::new(tl, store, key);
        local.set_deferred_fold(true);
        local
            .resume(pending)
            .expect("restart from the sim's own disk");
        // The restarted replica's final prefix is checked from its first position again.
        self.final_checked[i] = 0;
        let n = &mut self.nodes[i];
        n.arrivals = indexed.iter().map(SignedEvent::id).collect();
        n.node = node_over(
            local,
            self.sabotage,
            n.light,
            heartbeat_of(&self.sc, self.sabotage),
            self.sc.fold,
        );
        let epoch = n.epoch;
        self.at(self.now + 1, Ev::Tick { node: i, epoch });
        if self.nodes[i].writer {
            let model = self.sc.classes[self.nodes[i].class].model_ms;
            let t = self.writer_rngs[i].jitter(model, 25);
            self.at(self.now + t, Ev::Think { node: i, epoch });
        }
        let links: Vec<_> = self
            .links
            .iter()
            .copied()
            .filter(|&(a, b)| a == i || b == i)
            .collect();
        for (a, b) in links {
            self.connect(a, b);
        }
    }

    // ------------------------------------------------------------------ adversaries

    fn attack(&mut self, node: NodeIx, round: u64) {
        let Some(b) = self.sc.byzantine.clone() else {
            return;
        };
        if self.quiet_since.is_none() && !b.attacks.is_empty() {
            let a = b.attacks[(round % b.attacks.len() as u64) as usize];
            if self.nodes[node].status == Status::Up {
                self.stats.faults += 1;
                self.run_attack(node, a);
            }
            self.at(
                self.now + b.every_s * 1000,
                Ev::Attack {
                    node,
                    round: round + 1,
                },
            );
        }
    }

    /// The keys of the honest writers (the adversary's victims).
    fn honest_writers(&self) -> Vec<AuthorId> {
        self.honest()
            .filter(|n| n.writer)
            .map(|n| n.key.author())
            .collect()
    }

    /// An adversary writes a valid event of its own (kept by its own node, which takes it as
    /// an honest one would) and gossips it to each of `peers`.
    fn adversary_write(
        &mut self,
        node: NodeIx,
        peers: &[NodeIx],
        kind: &str,
        body: Ipld,
        a: Attack,
    ) {
        let n = &mut self.nodes[node];
        let ev = n.tl().prepare(n.key.author(), kind, body).sign(&n.key);
        let _ = n.node.local_mut().ingest(vec![ev.clone()]);
        self.gossip_attack(node, peers, ev.bytes_arc(), a);
    }

    /// An adversary gossips `block` to each of `peers` (every send accounted to `a`).
    fn gossip_attack(&mut self, node: NodeIx, peers: &[NodeIx], block: Arc<[u8]>, a: Attack) {
        for &p in peers {
            self.send(
                node,
                p,
                Msg::Gossip {
                    block: block.clone(),
                },
                Some(a),
            );
        }
    }

    /// A lying node's answer instead of `resp` (see [`Byzantine::lies`](crate::scenario::
    /// Byzantine::lies)).
    fn lie(&self, resp: SyncResponse) -> SyncResponse {
        match resp {
            SyncResponse::Summary(mut s) => {
                let mut vv: BTreeMap<AuthorId, u64> = s.version_vector.iter().copied().collect();
                for n in self.honest() {
                    *vv.entry(n.key.author()).or_insert(0) += 1_000;
                }
                s.version_vector = vv.into_iter().collect();
                SyncResponse::Summary(s)
            }
            // An empty page whose cursor never gets past the first event.
            SyncResponse::Blocks(_) => SyncResponse::Blocks(chorus_core::sync::Blocks {
                blocks: vec![],
                next: Some((0, self.genesis.id())),
            }),
            other => other,
        }
    }

    fn run_attack(&mut self, node: NodeIx, a: Attack) {
        let peers = self.neighbours(node);
        if peers.is_empty() {
            return;
        }
        let target = peers[self.byz_rng.below(peers.len() as u64) as usize];
        let held: Vec<Arc<[u8]>> = self.nodes[node].store().all_blocks().cloned().collect();
        match a {
            Attack::BitFlip => {
                let Some(src) = (!held.is_empty())
                    .then(|| held[self.byz_rng.below(held.len() as u64) as usize].clone())
                else {
                    return;
                };
                let mut bytes = src.to_vec();
                let bit = self.byz_rng.below(bytes.len() as u64 * 8);
                bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
                let block: Arc<[u8]> = bytes.into();
                self.stats.forged_ids.insert(EventId::of_block(&block));
                self.gossip_attack(node, &peers, block, a);
            }
            Attack::ForgedAuthor => {
                let victims: Vec<NodeIx> =
                    self.honest().filter(|n| n.writer).map(|n| n.ix).collect();
                let v = victims[self.byz_rng.below(victims.len() as u64) as usize];
                let n = &self.nodes[node];
                let victim = self.nodes[v].key.author();
                let mut ev = n.tl().prepare(
                    victim,
                    kind::INTENT,
                    text_body(vec![("text", Ipld::String("[\"say forged\"]".into()))]),
                );
                ev.author = victim;
                let signed = ev.sign(&n.key);
                self.stats.forged_ids.insert(signed.id());
                self.gossip_attack(node, &peers, signed.bytes_arc(), a);
            }
            Attack::Equivocate => {
                let n = &mut self.nodes[node];
                let author = n.key.author();
                let fork = |text: &str| {
                    n.tl()
                        .prepare(
                            author,
                            kind::STIMULUS,
                            text_body(vec![("text", Ipld::String(text.into()))]),
                        )
                        .sign(&n.key)
                };
                let (one, two) = (fork("fork one"), fork("fork two"));
                // The adversary keeps one fork itself, bypassing its own node's checks.
                let _ = n.node.local_mut().ingest(vec![one.clone()]);
                for (k, p) in peers.into_iter().enumerate() {
                    let ev = if k % 2 == 0 { &one } else { &two };
                    self.send(
                        node,
                        p,
                        Msg::Gossip {
                            block: ev.bytes_arc(),
                        },
                        Some(a),
                    );
                }
            }
            Attack::FalseAttestation => {
                // A heartbeat attesting a state nobody computes, for the next checkpoint after
                // its own newest final one: honest members attest the true state there later.
                let n = &mut self.nodes[node];
                let tl = n.tl();
                let interval = tl.genesis().body.checkpoint_interval;
                let positions = tl
                    .attestation()
                    .map_or(interval, |a| a.positions + interval);
                let lie = chorus_core::finality::certificate::Attestation {
                    positions,
                    last: tl.genesis_id(),
                    state: [0xee; 32],
                };
                let ev = tl
                    .prepare(n.key.author(), kind::HEARTBEAT, lie.to_body())
                    .sign(&n.key);
                let _ = n.node.local_mut().ingest(vec![ev.clone()]);
                self.gossip_attack(node, &peers, ev.bytes_arc(), a);
            }
            Attack::VoteOff => {
                let victims = self.honest_writers();
                if victims.is_empty() {
                    return;
                }
                let victim = victims[self.byz_rng.below(victims.len() as u64) as usize];
                let n = &mut self.nodes[node];
                let tl = n.tl();
                let ev = tl
                    .prepare(
                        n.key.author(),
                        kind::VOTE,
                        chorus_core::membership::VoteOp::Remove(victim).to_body(),
                    )
                    .sign(&n.key);
                let _ = n.node.local_mut().ingest(vec![ev.clone()]);
                self.gossip_attack(node, &peers, ev.bytes_arc(), a);
            }
            Attack::StrangerFlood => {
                // A key no membership change names, new each time, and events whose parents
                // nobody has: only the signature is real.
                let mut seed = [0u8; 32];
                for chunk in seed.chunks_mut(8) {
                    chunk.copy_from_slice(&self.byz_rng.below(u64::MAX).to_le_bytes());
                }
                let stranger = Keypair::from_seed(seed);
                let genesis = self.genesis.id();
                let mut blocks = vec![];
                for k in 0..STRANGER_FLOOD_EVENTS {
                    let mut h = Sha256::new();
                    h.update(seed);
                    h.update(k.to_le_bytes());
                    let fake = EventId(h.finalize().into());
                    let ev = chorus_core::event::UnsignedEvent {
                        timeline: Some(genesis),
                        author: stranger.author(),
                        seq: k + 2,
                        lamport: 1_000 + k,
                        parents: vec![fake],
                        kind: kind::STIMULUS.into(),
                        body: text_body(vec![("text", Ipld::String("let me in".into()))]),
                    }
                    .sign(&stranger);
                    blocks.push(ev.bytes_arc());
                }
                for b in blocks {
                    self.gossip_attack(node, &peers, b, a);
                }
            }
            Attack::AdminFork => {
                // Under final/1 every member added sits on the finality committee: a stolen
                // admin key that adds silent members is a liveness attack the committee's
                // votes answer (docs/design/finality.md), not this one, and the final/1
                // reference model keeps the genesis committee. The fork's determinism is
                // judged under lc-cid/1.
                if self.sc.order.is_some() {
                    return;
                }
                let n = &mut self.nodes[node];
                if n.key.author() != n.tl().membership().admin() {
                    return; // only the adversary that holds the admin key
                }
                self.admin_forks += 1;
                let newcomer = key_for(
                    self.seed,
                    &format!("admin-fork newcomer {}", self.admin_forks),
                );
                self.newcomers.insert(newcomer.author());
                let n = &mut self.nodes[node];
                let member = |op: MemberOp| {
                    n.tl()
                        .prepare(n.key.author(), kind::MEMBER, op.to_body())
                        .sign(&n.key)
                };
                let add = member(MemberOp::Add(newcomer.author(), Role::Writer));
                let remove = member(MemberOp::Remove(newcomer.author()));
                // The adversary keeps the addition itself, bypassing its own node's checks,
                // and writes as the newcomer on top of it.
                let _ = n.node.local_mut().ingest(vec![add.clone()]);
                let newcomers = n
                    .tl()
                    .prepare(
                        newcomer.author(),
                        kind::STIMULUS,
                        text_body(vec![("text", Ipld::String("let in by a fork".into()))]),
                    )
                    .sign(&newcomer);
                let _ = n.node.local_mut().ingest(vec![newcomers.clone()]);
                for (k, &p) in peers.iter().enumerate() {
                    let first = if k % 2 == 0 { &add } else { &remove };
                    self.send(
                        node,
                        p,
                        Msg::Gossip {
                            block: first.bytes_arc(),
                        },
                        Some(a),
                    );
                }
                self.gossip_attack(node, &peers, newcomers.bytes_arc(), a);
            }
            Attack::UnaskedAnswer => {
                // Its emissary first (registered once), then an answer to the newest stimulus.
                let name = "byz-answer";
                if self.byz_registered.insert(node) {
                    let body = Registration::named(name).to_ipld();
                    self.adversary_write(node, &peers, kind::EMISSARY, body, a);
                }
                let Some((_, re)) = self.nodes[node].last_stimulus else {
                    return;
                };
                let body = Intent {
                    re: Some(re),
                    emissary: name.into(),
                    text: Some("first valid answer".into()),
                    commands: Some(vec!["say mine".into()]),
                    ..Default::default()
                }
                .to_ipld();
                self.adversary_write(node, &peers, kind::INTENT, body, a);
            }
            Attack::SlotFill => {
                for _ in 0..SLOT_FILL_REGISTRATIONS {
                    let k = self.byz_dummies;
                    self.byz_dummies += 1;
                    let body = Registration::named(format!("dummy-{k}")).to_ipld();
                    self.adversary_write(node, &peers, kind::EMISSARY, body, a);
                }
            }
            Attack::TokenBomb => {
                let text = vec![WORDS[0]; TOKEN_BOMB_TOKENS].join(" ");
                let body = Stimulus::text(text).to_ipld();
                self.adversary_write(node, &peers, kind::STIMULUS, body, a);
            }
            Attack::LowLamport => {
                let n = &self.nodes[node];
                let mut ev = n.tl().prepare(
                    n.key.author(),
                    kind::STIMULUS,
                    Stimulus::text("from the distant past").to_ipld(),
                );
                // `lc = 1` is right for an event on the genesis alone: only a clock below
                // what the parents demand is an attack.
                if ev.lamport < 2 {
                    return;
                }
                ev.lamport = 1;
                let signed = ev.sign(&n.key);
                self.stats.forged_ids.insert(signed.id());
                self.gossip_attack(node, &peers, signed.bytes_arc(), a);
            }
            Attack::Replay => {
                for _ in 0..REPLAY_BLOCKS.min(held.len()) {
                    let b = held[self.byz_rng.below(held.len() as u64) as usize].clone();
                    self.send(node, target, Msg::Gossip { block: b }, Some(a));
                }
            }
            Attack::OversizedBlock => {
                let n = &self.nodes[node];
                let big = "x".repeat(chorus_core::limits::MAX_EVENT_BYTES + 100);
                let ev = n
                    .tl()
                    .prepare(
                        n.key.author(),
                        kind::STIMULUS,
                        text_body(vec![("text", Ipld::String(big))]),
                    )
                    .sign(&n.key);
                self.stats.forged_ids.insert(ev.id());
                self.send(
                    node,
                    target,
                    Msg::Gossip {
                        block: ev.bytes_arc(),
                    },
                    Some(a),
                );
            }
            Attack::OversizedMessage => {
                self.send(
                    node,
                    target,
                    Msg::Oversized {
                        bytes: MAX_SYNC_MESSAGE_BYTES + 1,
                    },
                    Some(a),
                );
            }
            Attack::RangeScan => {
                let victims = self.honest_writers();
                if victims.is_empty() {
                    return;
                }
                for _ in 0..RANGE_SCANS {
                    let author = victims[self.byz_rng.below(victims.len() as u64) as usize];
                    let req = SyncRequest::Range {
                        author,
                        from_sq: 1,
                        to_sq: u64::MAX,
                    };
                    self.request(node, target, req, Some(a));
                }
            }
            Attack::Sybil => {
                for _ in 0..SYBIL_REQUESTS {
                    let alias = SYBIL_BASE + self.sybil_ids;
                    self.sybil_ids += 1;
                    let rid = self.next_rid;
                    self.next_rid += 1;
                    let msg = Msg::Request {
                        rid,
                        req: SyncRequest::Summary,
                        as_peer: Some(alias),
                    };
                    self.send(node, target, msg, Some(a));
                }
            }
            Attack::Flood => {
                for _ in 0..FLOOD_REQUESTS {
                    self.request(node, target, SyncRequest::Summary, Some(a));
                }
            }
            Attack::BadRequest => {
                let ids = (0..=MAX_WANT_IDS as u64)
                    .map(|k| EventId(Sha256::digest(k.to_le_bytes()).into()))
                    .collect();
                self.request(node, target, SyncRequest::Want { ids }, Some(a));
            }
        }
    }
}

/// A replica holding only the genesis, with the run's sabotage of the finality quorum.
fn fresh_timeline(genesis: &SignedEvent, sabotage: Sabotage) -> Timeline<SimMachine> {
    let mut tl = Timeline::new(genesis.clone(), sim_machine(sabotage)).expect("the sim's genesis");
    if sabotage == Sabotage::QuorumHalf {
        tl.sabotage_finality_quorum(|n| (n / 2).max(1));
    }
    if sabotage == Sabotage::CertifyAlone {
        tl.sabotage_certificate_quorum(1);
    }
    if sabotage == Sabotage::VoteAlone {
        tl.sabotage_vote_quorum(1);
    }
    if sabotage == Sabotage::TrustStrangers {
        tl.sabotage_trust_strangers();
    }
    if sabotage == Sabotage::MembershipArrivalOrder {
        tl.sabotage_membership_arrival_order();
    }
    if sabotage == Sabotage::OrderWithoutLamport {
        tl.sabotage_order_without_lamport();
    }
    if sabotage == Sabotage::AnyLamport {
        tl.sabotage_any_lamport();
    }
    tl
}

/// The scenario's heartbeat interval, unless the run switches heartbeats off.
fn heartbeat_of(sc: &Scenario, sabotage: Sabotage) -> Option<u64> {
    sc.heartbeat_ms
        .filter(|_| sabotage != Sabotage::NoHeartbeats)
}

/// A node over `local`, with the run's sabotage of the node's own defences. A light node
/// folds on its tick (so it can prune, as the actor does); a full node leaves the fold to the
/// oracle at the end (KAIROS folds are the simulator's most expensive work), unless the
/// scenario says `fold` (see [`Scenario::fold`]).
fn node_over(
    local: Local<SimMachine, MemStore>,
    sabotage: Sabotage,
    light: bool,
    heartbeat_ms: Option<u64>,
    fold: bool,
) -> Node {
    let cfg = Config {
        light,
        // The simulator's light nodes keep their replica in memory (`--in-memory`).
        light_on_disk: false,
        fold_on_tick: light || fold,
        sliced_fold: false,
        heartbeat_ms,
        pages_outside: true,
    };
    let mut node = NodeState::new(local, cfg);
    match sabotage {
        Sabotage::NoWriteGate => node.sabotage(NodeSabotage::NoWriteGate),
        Sabotage::LightAckAtOnce => node.sabotage(NodeSabotage::AckBeforeStored),
        Sabotage::TrustSyncClaims => node.sabotage(NodeSabotage::TrustSyncClaims),
        Sabotage::NoStrangerBudget => node.sabotage(NodeSabotage::NoStrangerBudget),
        Sabotage::NoOwnCheckStall => node.sabotage(NodeSabotage::NoOwnCheckStall),
        _ => {}
    }
    node
}

fn ordered(a: NodeIx, b: NodeIx) -> (NodeIx, NodeIx) {
    (a.min(b), a.max(b))
}

fn ev_turn(node: NodeIx, epoch: u64) -> Ev {
    Ev::Turn { node, epoch }
}

fn ev_tag(ev: &Ev) -> u8 {
    match ev {
        Ev::Deliver { .. } => 1,
        Ev::Turn { .. } => 2,
        Ev::Tick { .. } => 3,
        Ev::Think { .. } => 4,
        Ev::ReqTimeout { .. } => 5,
        Ev::PartitionStart(_) => 6,
        Ev::PartitionEnd => 7,
        Ev::Crash { .. } => 8,
        Ev::Restart { .. } => 9,
        Ev::Pause { .. } => 10,
        Ev::Resume { .. } => 11,
        Ev::Attack { .. } => 12,
        Ev::Check => 13,
    }
}
