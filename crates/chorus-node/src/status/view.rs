//! The node's status as typed data: what the actor copies out of the node state machine at
//! one instant, and what `GET /v1/status` and `GET /metrics` read.
//!
//! The actor only fills these structs (counters and short lists); turning them into JSON or
//! Prometheus text happens on the HTTP task that asked. Field names are the JSON keys of
//! `GET /v1/status`: renaming one changes the API.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// `GET /v1/status`, the node's part (the HTTP edge adds the emissaries' live fields).
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub peer_id: String,
    /// The machine's own description of its state (KAIROS: a number; other machines: null).
    pub coherence: Value,
    pub dopamine: Value,
    pub cognitive_state: Value,
    /// This node's signing key, as text.
    pub author: String,
    pub listen: Vec<String>,
    pub light: bool,
    /// Whether this node takes local writes now (its own chain is known to be current).
    pub writes_open: bool,
    /// Local writes waiting for the write gate to open.
    pub writes_held: usize,
    /// Set on light nodes only.
    pub light_node: Option<LightNodeStatus>,
    /// Started from a certified snapshot (`chorus node --from-snapshot`): where that stands.
    pub bootstrap: Option<crate::bootstrap::BootstrapView>,
    /// The genesis id.
    pub timeline: String,
    pub machine: String,
    /// Events this node holds (a write acknowledged is counted at once).
    pub events: usize,
    /// Events waiting for their parents.
    pub pending: usize,
    /// Of those, events of keys no membership change held here names (strangers), kept
    /// within a small quota and never forwarded.
    pub stranger_pending: usize,
    pub heads: Vec<String>,
    /// The state hash of the last complete fold, hex.
    pub state_hash: String,
    /// Set while a fold runs in slices: which events the state fields are the state of.
    pub folding: Option<Folding>,
    pub fold: FoldStats,
    /// The order rule of the genesis: `lc-cid/1` or `final/1`.
    pub order: String,
    /// Events in the settled prefix of the order (under `final/1`: the final prefix).
    pub settled: u64,
    pub first_unsettled_lc: Option<u64>,
    /// Set under `final/1`: where finality stands on this node.
    pub finality: Option<FinalityView>,
    pub peers: Vec<String>,
    pub in_sync_with: Vec<String>,
    pub sync: SyncStatus,
    pub received: Received,
    /// Events signed by this node since it started.
    pub appended: u64,
    /// Local writes refused, by reason.
    pub refused_writes: BTreeMap<String, u64>,
    /// Network commands dropped on a full queue.
    pub net_commands_dropped: u64,
    /// Times a peer's summary had this node's heads and another `state_hash` (a determinism
    /// bug, or a peer that lies), and the last such peer.
    pub state_divergences: u64,
    pub last_divergence_peer: Option<String>,
    pub uptime_ms: u64,
}

/// `final/1` and `final/2`: the final prefix and the committee that decides it.
#[derive(Debug, Clone, Serialize)]
pub struct FinalityView {
    /// Events in the final prefix (the first positions of the order; never reordered).
    pub final_positions: u64,
    /// Final segments (committed blocks) so far.
    pub segments: u64,
    /// Membership epochs begun since the genesis.
    pub epoch: u32,
    /// Members of the current epoch's committee.
    pub committee: usize,
    /// Distinct committee members needed to advance a round or certify a block.
    pub quorum: usize,
    /// The newest finality certificate this node holds: a quorum of the committee attested
    /// the state after these positions (`GET /v1/finality/certificate` has the block).
    pub certified_positions: Option<u64>,
    pub certificate: Option<String>,
    /// Attestations that disagreed with another member's for one position: a member lies or
    /// determinism is broken. Should stay 0; alert on it.
    pub conflicts: u64,
    /// The newest conflict: who attested what against what.
    pub last_conflict: Option<String>,
    /// `final/2`: committee changes whose handover this node holds certified (a quorum of
    /// the old committee attested the new one); equal to `epoch` once all are. `None` under
    /// `final/1`. A snapshot is served only once every handover up to its epoch is.
    pub handovers: Option<u32>,
    /// `final/2`: handover claims by a member of the old committee that are not what this
    /// node's final prefix says. Should stay 0; alert on it.
    pub handover_conflicts: u64,
    /// Members the committee voted off (`chorus member vote-remove`), by key.
    pub voted_off: Vec<String>,
    /// Final votes short of a quorum so far: `"remove KEY"` / `"restore KEY"` → members who
    /// cast it.
    pub open_votes: BTreeMap<String, usize>,
}

/// A light node's view of what it forgot and what it still owes the full nodes.
#[derive(Debug, Clone, Serialize)]
pub struct LightNodeStatus {
    pub horizon_lc: Option<u64>,
    pub horizon: Option<String>,
    pub pruned_blocks: u64,
    /// The replica is on disk: it restarts from its own newest checkpoint and forgets
    /// nothing (false: `--in-memory`, it catches up from full nodes at every start).
    pub on_disk: bool,
    /// Own events held at start that went to the outbox again since the start because a full
    /// peer lacked them (on disk only; `NodeState::resubmit_step`).
    pub resubmitted_since_start: u64,
    /// Own events not yet stored by a full node.
    pub outbox: usize,
    pub stored_by_full_nodes: u64,
    pub unacknowledged_in_time: u64,
    pub full_peers: usize,
}

/// Which events and heads the state fields describe while a fold is part-way.
#[derive(Debug, Clone, Serialize)]
pub struct Folding {
    pub state_of_events: usize,
    pub state_of_heads: Vec<String>,
    /// Positions of the order still to fold.
    pub positions_left: usize,
    /// The fold waits for a catch-up stream that brings events sorting before what is folded
    /// (it folds once the stream ends, at most `MAX_FOLD_WAIT` later).
    pub waiting_for_catch_up: bool,
}

/// What folding the state has cost since the node started.
#[derive(Debug, Clone, Serialize)]
pub struct FoldStats {
    /// Events applied to the machine, re-applications included.
    pub applied: u64,
    /// Applications of events applied before (late events re-apply what sorts after them).
    pub reapplied: u64,
    /// Rewinds to a checkpoint.
    pub rewinds: u64,
    /// Folds that waited for a catch-up stream to end instead of starting over at each page.
    pub waited_for_catch_up: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncStatus {
    pub catching_up: bool,
    /// Events the most advanced peer has beyond ours.
    pub lag_events: u64,
    pub summaries_sent: u64,
    pub pages_received: u64,
    pub wants_sent: u64,
    pub requests_refused: u64,
    pub requests_served: u64,
    pub bans: u64,
    /// Catch-up streams cut because their pages brought nothing new (another peer asked).
    pub streams_cut: u64,
    /// Claims of this node's own chain a peer could not back, capped (the write gate did not
    /// wait for them).
    pub own_claims_capped: u64,
    /// Checks of those claims that went unanswered for 20 s (counted as failed checks).
    pub own_checks_stalled: u64,
    /// Requests of peers that are no member (or whose key is unknown) refused because all
    /// strangers' shared budget was spent.
    pub stranger_requests_refused: u64,
    /// Pages of blocks read and answered by the page reader (off the actor thread).
    pub pages_served: u64,
    /// Page requests refused because the page reader had a full queue.
    pub pages_busy: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Received {
    pub gossip: u64,
    pub sync_blocks: u64,
    pub oversize: u64,
    /// The most charged peers (at most 256); `invalid` counts every peer's.
    pub invalid_by_peer: BTreeMap<String, u64>,
    pub invalid: u64,
    pub rejected_by_code: BTreeMap<String, u64>,
}
