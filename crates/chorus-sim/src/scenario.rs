//! Scenarios: what a run simulates, as checked-in TOML (`scenarios.toml` beside this crate).
//! Every field has a default, so a scenario states only what makes it what it is. The run
//! prints the seed and these derived options; the pair replays the run exactly.

use serde::{Deserialize, Serialize};

/// The checked-in suite (the PR tier), compiled into the binary.
pub const SUITE_TOML: &str = include_str!("../scenarios.toml");

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    #[serde(rename = "scenario")]
    pub scenarios: Vec<Scenario>,
    /// Seeds that once failed, replayed by every suite run.
    #[serde(default, rename = "regression")]
    pub regressions: Vec<Regression>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Regression {
    pub scenario: String,
    pub seed: u64,
    /// What went wrong, for the reader.
    pub note: String,
}

impl Suite {
    pub fn builtin() -> Suite {
        Suite::parse(SUITE_TOML).expect("the checked-in scenarios.toml parses (tested)")
    }
    pub fn parse(text: &str) -> Result<Suite, String> {
        let s: Suite = toml::from_str(text).map_err(|e| e.to_string())?;
        for sc in &s.scenarios {
            sc.validate()
                .map_err(|e| format!("scenario {:?}: {e}", sc.name))?;
        }
        Ok(s)
    }
    pub fn get(&self, name: &str) -> Option<&Scenario> {
        self.scenarios.iter().find(|s| s.name == name)
    }
}

/// A class of nodes: how fast its model answers and how far away it is.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeClass {
    pub name: String,
    pub count: usize,
    /// One model answer (one write) takes this long.
    #[serde(default = "d_model_ms")]
    pub model_ms: u64,
    /// One-way latency of every link touching a node of this class (a link takes the larger of
    /// its two ends).
    #[serde(default = "d_one_way_ms")]
    pub one_way_ms: u64,
    /// Whether these nodes write (run a model).
    #[serde(default = "d_true")]
    pub writes: bool,
    /// Light nodes: an in-memory replica (a crash loses all of it), writes acknowledged only
    /// once a full node stored them, never fetched from.
    #[serde(default)]
    pub light: bool,
}

fn d_model_ms() -> u64 {
    2_000
}
fn d_one_way_ms() -> u64 {
    10
}
fn d_true() -> bool {
    true
}
fn d_jitter() -> u64 {
    20
}
fn d_degree() -> usize {
    8
}
fn d_converge() -> u64 {
    300
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionKind {
    /// Two halves, no traffic between them.
    Halves,
    /// Two groups that reach each other only through one bridge node.
    Bridge,
    /// Traffic from the first half to the second is dropped; the reverse flows.
    OneWay,
    /// The last node (of the last class) is cut off from every other (a flaky uplink).
    IsolateLast,
    /// Each node reaches only its ring neighbours within a quarter of the ring: overlapping
    /// majorities, no global one.
    Ring,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub kind: PartitionKind,
    pub at_s: u64,
    pub for_s: u64,
}

/// Crash/restart cycles: every `every_s` from `at_s`, `nodes` random nodes crash (losing what
/// their actor had not committed) and come back `down_s` later on their stores.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Crashes {
    pub cycles: u64,
    pub at_s: u64,
    pub every_s: u64,
    pub down_s: u64,
    #[serde(default = "d_one")]
    pub nodes: usize,
    /// Only nodes of this class crash (default: any honest node).
    #[serde(default)]
    pub class: Option<String>,
}
fn d_one() -> usize {
    1
}

/// `nodes` random nodes crash at `at_s` and restart `down_s` later with empty stores.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Wipe {
    pub nodes: usize,
    pub at_s: u64,
    pub down_s: u64,
}

/// `nodes` random nodes stop (SIGSTOP) at `at_s` for `for_s`; what reaches them waits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pause {
    pub nodes: usize,
    pub at_s: u64,
    pub for_s: u64,
}

/// Once every write is done and the mesh has converged, all but `survivors` nodes crash at
/// once and restart `down_s` later with empty stores.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Posterity {
    pub survivors: usize,
    pub down_s: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attack {
    /// A held block with one bit flipped, gossiped.
    BitFlip,
    /// An event claiming an honest writer as author, signed with the attacker's key.
    ForgedAuthor,
    /// Two different events at the attacker's next sequence number, to different peers.
    Equivocate,
    /// Old valid blocks sent again.
    Replay,
    /// A signed event larger than the event size limit.
    OversizedBlock,
    /// A sync message larger than the wire limit.
    OversizedMessage,
    /// A burst of requests far above the per-peer rate.
    Flood,
    /// A request beyond the structural bounds (too many ids).
    BadRequest,
    /// A heartbeat attesting a false state for a coming checkpoint (`final/1`: a conflict,
    /// never a certificate; under `lc-cid/1` an ordinary heartbeat).
    FalseAttestation,
    /// A vote to take a random honest member off the finality committee (`final/1`: one
    /// member's vote is never a quorum; under `lc-cid/1` an event of a kind nothing reads).
    VoteOff,
    /// Events of a fresh non-member key with made-up parents, gossiped (held within the
    /// stranger quota, never forwarded, never charged to the honest).
    StrangerFlood,
    /// The admin key in the adversary's hands (a scenario with this attack makes the first
    /// adversary the admin): two `member` events at one admin `sq`, one adding a fresh key and
    /// one removing it, to different peers; then an event of the new key. Every replica must
    /// decide each event by its own past, whatever order the halves arrive in.
    AdminFork,
    /// The adversary's emissary answers the newest stimulus it holds at once, with a valid
    /// intent, asked or not (`kairos/3`: only an emissary the election asked can win).
    UnaskedAnswer,
    /// Eight more emissary registrations under the adversary's key each time (`kairos/3`: an
    /// author holds at most four).
    SlotFill,
    /// A stimulus of 4 000 tokens (`kairos/3`: the first 256 feed the engine).
    TokenBomb,
    /// An event with a Lamport clock far below its parents' (it would sort before nearly
    /// everything and force every replica to fold again from the start): refused by the
    /// decoder's rule `lc = max(parents) + 1`.
    LowLamport,
    /// `Range` requests for the whole chain of a random honest author (answered through the
    /// author's chain: the cost is what the answer holds, within the wire limit and the rate).
    RangeScan,
    /// A thousand `Summary` requests at once, each under a fresh made-up peer id (peer ids
    /// are free): every stranger's request draws from one shared budget besides its own
    /// bucket, so at most that budget is served, and members are never refused for it.
    Sybil,
}

impl Attack {
    pub const ALL: [Attack; 18] = [
        Attack::BitFlip,
        Attack::ForgedAuthor,
        Attack::Equivocate,
        Attack::Replay,
        Attack::OversizedBlock,
        Attack::OversizedMessage,
        Attack::Flood,
        Attack::BadRequest,
        Attack::FalseAttestation,
        Attack::VoteOff,
        Attack::StrangerFlood,
        Attack::AdminFork,
        Attack::UnaskedAnswer,
        Attack::SlotFill,
        Attack::TokenBomb,
        Attack::LowLamport,
        Attack::RangeScan,
        Attack::Sybil,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Attack::BitFlip => "bit_flip",
            Attack::ForgedAuthor => "forged_author",
            Attack::Equivocate => "equivocate",
            Attack::Replay => "replay",
            Attack::OversizedBlock => "oversized_block",
            Attack::OversizedMessage => "oversized_message",
            Attack::Flood => "flood",
            Attack::BadRequest => "bad_request",
            Attack::FalseAttestation => "false_attestation",
            Attack::VoteOff => "vote_off",
            Attack::StrangerFlood => "stranger_flood",
            Attack::AdminFork => "admin_fork",
            Attack::UnaskedAnswer => "unasked_answer",
            Attack::SlotFill => "slot_fill",
            Attack::TokenBomb => "token_bomb",
            Attack::LowLamport => "low_lamport",
            Attack::RangeScan => "range_scan",
            Attack::Sybil => "sybil",
        }
    }
}

/// Adversarial nodes: members that also run every attack in `attacks`, in turn, every
/// `every_s` (the first `nodes` of the last class).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Byzantine {
    pub nodes: usize,
    pub attacks: Vec<Attack>,
    pub every_s: u64,
    /// They also lie in every sync answer: summaries that claim far more of every author
    /// (the asker's own chain included) than exists, catch-up pages that are empty and never
    /// end, ranges and wants answered with nothing.
    #[serde(default)]
    pub lies: bool,
    /// Of the adversaries, the last this many run no attack and only lie (with `lies`): a
    /// second identity the attacker keeps clean, so no ban ever silences its lies.
    #[serde(default)]
    pub quiet_liars: usize,
    /// Liars also never answer a check of the asker's own chain (a `Range` of its author):
    /// the check fails only by the asker's deadline.
    #[serde(default)]
    pub stall_own_checks: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// The committed seed of the PR tier.
    pub seed: u64,
    pub classes: Vec<NodeClass>,
    /// Acknowledged writes to reach (the writers stop then).
    pub events: u64,
    /// Words per event body fed to KAIROS (each costs ~85 µs per replica fold).
    #[serde(default = "d_words")]
    pub words: usize,
    /// Latency jitter, percent either way (reorders messages).
    #[serde(default = "d_jitter")]
    pub jitter_pct: u64,
    /// Probability each message is lost.
    #[serde(default)]
    pub loss: f64,
    /// Probability each message is delivered twice.
    #[serde(default)]
    pub duplicate: f64,
    /// How long a node's turn takes from its first message to its durable commit (batching
    /// window + fsync; an SD card is slow). A crash in between loses the turn.
    #[serde(default = "d_commit_ms")]
    pub commit_ms: u64,
    /// Gossip/overlay degree: each node keeps links to this many others (plus ring links).
    #[serde(default = "d_degree")]
    pub degree: usize,
    /// C1: every live replica must agree within this long after the last write and fault.
    #[serde(default = "d_converge")]
    pub converge_within_s: u64,
    #[serde(default)]
    pub partitions: Vec<Partition>,
    pub crashes: Option<Crashes>,
    pub wipe: Option<Wipe>,
    pub pause: Option<Pause>,
    pub posterity: Option<Posterity>,
    pub byzantine: Option<Byzantine>,
    /// Also run without this class and compare the other writers' append rate (disparity).
    pub baseline_without: Option<String>,
    /// Member nodes (light ones too) heartbeat at most this often (`NodeState`'s `Config::heartbeat_ms`);
    /// with it, C8 checks that every acknowledged write ends up settled everywhere. Off by
    /// default: heartbeats add events, and the scenarios tuned before them keep their traces.
    pub heartbeat_ms: Option<u64>,
    /// The genesis's order rule (`"final/1"`; absent: `lc-cid/1`). Under `final/1` the oracle
    /// also checks finality safety (C9), C5's model orders by `final/1`, and C8 asks every
    /// acknowledged write to be final on every live member.
    #[serde(default)]
    pub order: Option<String>,
    /// Full nodes fold as they go, on their tick as the actor does, instead of leaving the fold
    /// to the oracle at the end: under `final/1` their heartbeats then attest the checkpoints
    /// of their fold, and C9 checks the finality certificates they make. Costly: each time
    /// finality reorders a replica's tentative tail, the tail is folded again (wipe seed 33756
    /// on final/1: 185 s instead of 5 s; posterity: 776 s instead of 80 s), so only where
    /// certificates are the point.
    #[serde(default)]
    pub fold: bool,
    /// Replay the run with the same seed and compare (C6) in `run` and `suite`. Only the
    /// 100-node `posterity` leaves it out: its replay is CI's single most expensive check, and
    /// every code path it runs is replayed by the smaller scenarios.
    #[serde(default = "d_true")]
    pub replay: bool,
    /// Also run without the adversaries (their nodes left out, the rest as it is) and bound
    /// what they cost the honest: append rate ≥ 90 % and convergence time ≤ 2× of the run
    /// without them, and no honest node banned by another.
    #[serde(default)]
    pub compare_without_adversary: bool,
}
/// Heartbeat interval given to a scenario that had none when it is run on `final/1`
/// (`chorus swarm` uses the same).
pub const FINAL_HEARTBEAT_MS: u64 = 500;

fn d_commit_ms() -> u64 {
    5
}
fn d_words() -> usize {
    3
}

impl Scenario {
    pub fn nodes(&self) -> usize {
        self.classes.iter().map(|c| c.count).sum()
    }
    pub fn validate(&self) -> Result<(), String> {
        let n = self.nodes();
        if n < 2 {
            return Err("needs at least 2 nodes".into());
        }
        if self.commit_ms == 0 || self.commit_ms > 10_000 {
            return Err("commit_ms must be 1..=10000".into());
        }
        if n > 1_000 {
            return Err(format!("{n} nodes (max 1000)"));
        }
        if !self.classes.iter().any(|c| c.writes && c.count > 0) {
            return Err("no class writes".into());
        }
        if !(0.0..1.0).contains(&self.loss) || !(0.0..1.0).contains(&self.duplicate) {
            return Err("loss and duplicate are probabilities below 1".into());
        }
        let crashed = self.crashes.as_ref().map_or(0, |c| c.nodes)
            + self.wipe.as_ref().map_or(0, |w| w.nodes)
            + self.pause.as_ref().map_or(0, |p| p.nodes);
        if crashed >= n {
            return Err("faults would take every node at once".into());
        }
        if let Some(p) = &self.posterity
            && (p.survivors == 0 || p.survivors >= n)
        {
            return Err("posterity needs 1..nodes survivors".into());
        }
        if let Some(b) = &self.baseline_without
            && !self.classes.iter().any(|c| &c.name == b)
        {
            return Err(format!("baseline_without names no class {b:?}"));
        }
        if let Some(c) = self.crashes.as_ref().and_then(|c| c.class.as_ref()) {
            let count = self.classes.iter().find(|k| &k.name == c).map(|k| k.count);
            match count {
                None => return Err(format!("crashes name no class {c:?}")),
                Some(k) if k < self.crashes.as_ref().map_or(0, |c| c.nodes) => {
                    return Err(format!("crashes take more nodes than class {c:?} has"));
                }
                _ => {}
            }
        }
        match self.order.as_deref() {
            None
            | Some(chorus_core::genesis::ORDER_FINAL_1 | chorus_core::genesis::ORDER_FINAL_2) => {}
            Some(o) => return Err(format!("order {o:?} unknown (final/1, final/2, or none)")),
        }
        if self.order.is_some() && self.heartbeat_ms.is_none() {
            return Err("final/1 needs heartbeats (heartbeat_ms): rounds advance by them".into());
        }
        if self.classes.iter().all(|c| c.light || c.count == 0) {
            return Err("a mesh of light nodes only has no replica".into());
        }
        Ok(())
    }
    /// The same scenario on the `final/2` order (`chorus sim … --order final/2`; `final/1`'s
    /// order and state, with handovers in the heartbeats, as `chorus init` makes): every
    /// scenario must also pass finality safety (C9) and liveness (C8 on final positions).
    /// A scenario without heartbeats gets them every `FINAL_HEARTBEAT_MS`.
    pub fn on_final_order(&self) -> Scenario {
        self.on_order(chorus_core::genesis::ORDER_FINAL_2)
    }
    /// The same scenario on the finality order `order` (`final/1` or `final/2`).
    pub fn on_order(&self, order: &str) -> Scenario {
        let mut s = self.clone();
        s.order = Some(order.to_string());
        s.heartbeat_ms.get_or_insert(FINAL_HEARTBEAT_MS);
        s
    }
    /// The same scenario without one class (the disparity baseline).
    /// The same scenario without its adversaries: the byzantine nodes (the first of the last
    /// class) left out, every honest node where it was.
    pub fn without_adversary(&self) -> Scenario {
        let mut s = self.clone();
        let byz = s.byzantine.take().map_or(0, |b| b.nodes);
        if let Some(last) = s.classes.last_mut() {
            last.count = last.count.saturating_sub(byz);
        }
        s.classes.retain(|c| c.count > 0);
        s.compare_without_adversary = false;
        s
    }

    pub fn without(&self, class: &str) -> Scenario {
        let mut s = self.clone();
        s.classes.retain(|c| c.name != class);
        s.baseline_without = None;
        s
    }
}
