//! # Anti-entropy, sans-IO
//!
//! The messages replicas exchange to repair what gossip dropped, and every decision about
//! them: what to ask whom, when, how much, and when a peer has misbehaved enough to be cut
//! off. No sockets and no clocks here — the caller passes `now` (milliseconds on any
//! monotonic clock) and carries the [`Action`]s out — so the libp2p node and the simulator run
//! the same logic.
//!
//! ## Protocol (`docs/design/sync.md` has the bytes)
//! * `Summary` → the peer's genesis, version vector (author → highest contiguous `sq`), heads.
//! * `Since { have, after }` → a page of the peer's events in total order after the cursor
//!   `after`, leaving out every `(author, sq)` covered by `have`. Because the order is by
//!   Lamport clock, parents always come before children: a node offline for days catches up
//!   in pages, each inserted without a pending set. The response's `next` is the cursor of
//!   the following page (`None`: done).
//! * `Want { ids }` → those blocks (missing parents, unknown heads, forks of an equivocation).
//! * `Range { author, from_sq, to_sq }` → one author's events in that span.
//!
//! ## Decisions ([`Syncer`])
//! * On a new peer, and every [`ANTI_ENTROPY_INTERVAL_MS`] to the next peer in turn: ask
//!   for its summary.
//! * A summary whose version vector is ahead of ours starts a bulk catch-up (`Since`) from
//!   that peer, one stream at a time for the whole node, with the next page requested as
//!   soon as the previous arrives. A summary naming heads we lack, while we are not behind,
//!   asks for those heads with `Want`.
//! * A gossiped event waiting for parents asks the peer that sent it for them (each id asked
//!   once per [`WANT_TIMEOUT_MS`]).
//! * Inbound requests pass a per-peer token bucket; invalid blocks are counted per peer and a
//!   peer with [`MAX_INVALID_PER_PEER`] of them is banned for [`BAN_MS`].

use std::{collections::BTreeMap, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{
    Machine, Timeline,
    ids::{AuthorId, EventId},
    limits::MAX_EVENT_BYTES,
    timeline::{BlockSource, OrderKey},
};

/// Most ids in one `Want`.
pub const MAX_WANT_IDS: usize = 512;
/// Most events in one page of blocks.
pub const MAX_PAGE_EVENTS: usize = 2_048;
/// Most block bytes in one page (a page always holds at least one block).
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Most order positions a server examines for one `Since` page (bounds the work of a request
/// whose events the requester mostly has).
pub const MAX_SCAN_PER_PAGE: usize = 65_536;
/// Most heads in a summary.
pub const MAX_SUMMARY_HEADS: usize = 1_024;
/// Most authors in a version vector on the wire.
pub const MAX_VV_AUTHORS: usize = 4_096;
/// Largest sync message on the wire, either direction; bigger ones are refused unread.
pub const MAX_SYNC_MESSAGE_BYTES: usize =
    MAX_PAGE_BYTES + MAX_EVENT_BYTES + (MAX_VV_AUTHORS + MAX_SUMMARY_HEADS) * 48 + 4096;
/// How often a node compares summaries with one of its peers.
pub const ANTI_ENTROPY_INTERVAL_MS: u64 = 1_000;
/// After this long a `Want` for an id may be sent again (to another peer if need be).
pub const WANT_TIMEOUT_MS: u64 = 5_000;
/// A request with no answer for this long has failed (the transport's request timeout; the
/// simulator applies the same one). It must exceed the slowest link's round trip: a Pi Zero
/// behind a 45 s RTT link never caught up after an outage with the earlier 30 s, because every
/// request it made timed out before its answer could arrive (found by `chorus sim run
/// --scenario disparity`).
pub const REQUEST_TIMEOUT_MS: u64 = 120_000;
/// A catch-up stream with no response for this long is abandoned, and the next summary
/// starts another (with any peer). Much shorter than [`REQUEST_TIMEOUT_MS`]: a page lost on the
/// way must not hold the catch-up for two minutes. A slow peer is not cut off by it: the blocks
/// of its late answer are ingested all the same, whichever stream is current.
pub const CATCH_UP_STALL_MS: u64 = 20_000;
/// At most one stream resumed per this interval after streams that ended early: a peer that
/// refuses or fails at once is asked again once a second, not at every tick.
pub const STREAM_RESUME_INTERVAL_MS: u64 = 1_000;
/// Most requests in flight to one peer.
pub const MAX_IN_FLIGHT_PER_PEER: usize = 4;
/// How long a writer waits for a peer's answer to a summary before it asks again, while that
/// peer has never answered one (see [`Syncer::own_chain_confirmed`]). The write gate of a
/// wiped, restarted or light node waits on those answers; without a retry a single lost
/// summary keeps it closed until [`REQUEST_TIMEOUT_MS`] (the simulator's `disparity` seed
/// 20261218 caught a slow node closed for 210 s that way). Bounded by
/// [`MAX_IN_FLIGHT_PER_PEER`].
pub const OWN_CHAIN_RETRY_MS: u64 = 5_000;
/// Invalid blocks a peer may send before it is banned.
pub const MAX_INVALID_PER_PEER: u32 = 8;
/// How long a banned peer is kept out.
pub const BAN_MS: u64 = 60_000;
/// Inbound requests per second a peer may make (token bucket rate)…
pub const REQUESTS_PER_SEC: u64 = 200;
/// …and the bucket's depth (a burst).
pub const REQUEST_BURST: u64 = 400;
/// Inbound requests per second all *strangers* together may make — peers whose key is no
/// current member's nor a reader's the genesis names, or unknown — on top of each one's own
/// bucket. Peer ids are free: without this, a thousand made-up identities get a thousand
/// buckets. Members never draw from it, so strangers cannot crowd them out.
pub const STRANGER_REQUESTS_PER_SEC: u64 = REQUESTS_PER_SEC;
/// …and that shared bucket's depth.
pub const STRANGER_REQUEST_BURST: u64 = REQUEST_BURST;
/// Most blocks in one `Submit` (a light node's write, relayed to a full node).
pub const MAX_SUBMIT_BLOCKS: usize = 256;
/// Most peers tracked at once.
pub const MAX_PEERS: usize = 256;
/// Pages in a row that bring a catch-up stream nowhere before it is cut and another peer is
/// asked: a page is useful when it holds a block new here, or when it is empty because the
/// server scanned [`MAX_SCAN_PER_PAGE`] positions this replica holds (the only way an honest
/// server sends an empty page that is not the last). A peer whose summary claims to be ahead
/// and that answers with empty or repeated pages kept the one stream for good before (every
/// page counted as activity), and with it every other way of catching up.
pub const MAX_USELESS_PAGES: u32 = 4;
/// A peer that claims more of *our own* chain than we hold is asked for it (`Range`) before
/// the claim may keep our writes closed; this many answers in a row that bring none of it (or
/// fail) and the claim is capped at what we hold. One lying peer kept a wiped node's writes
/// closed for good before.
pub const MAX_UNBACKED_OWN_CLAIMS: u32 = 3;
/// Most of our own chain asked for in one check.
pub const OWN_CHECK_SPAN: u64 = 1_024;
/// A check of our own chain with no answer for this long — or for twice the slowest summary
/// round trip seen from that peer, if longer — counts as one that brought nothing (and the
/// next is sent). Much shorter than [`REQUEST_TIMEOUT_MS`]: a peer that claims more of our
/// chain and then never answers the check held a wiped writer's writes closed for
/// [`MAX_UNBACKED_OWN_CLAIMS`] × two minutes (`chorus sim run --scenario hostile --seed
/// 590636380`: one check to the quiet liar lost on the way, two minutes of a wiped writer's
/// writes gone). A slow honest peer is not capped for being slow: its deadline follows its
/// own round trip (the 45 s link of `disparity`: 90 s), and an answer that comes late still
/// backs the claim, even after a cap (judged by the events it carries, whichever check it
/// answers).
pub const OWN_CHECK_STALL_MS: u64 = 20_000;

/// A position in the total order, `(lc, id)` (the [`OrderKey`] on the wire).
pub type Cursor = (u64, EventId);

/// A request from one replica to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncRequest {
    Summary,
    Want {
        ids: Vec<EventId>,
    },
    Range {
        author: AuthorId,
        from_sq: u64,
        to_sq: u64,
    },
    Since {
        have: Vec<(AuthorId, u64)>,
        after: Option<Cursor>,
    },
    /// A light node's own new events, to be stored durably by a full node before the light
    /// node acknowledges them (write-through). Answered with `Stored` after the commit.
    Submit {
        blocks: Vec<serde_bytes::ByteBuf>,
    },
}

/// A replica's summary of what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub genesis: EventId,
    pub version_vector: Vec<(AuthorId, u64)>,
    pub heads: Vec<EventId>,
    pub events: u64,
    /// The state hash over exactly these heads, when the sender's state is folded up to them
    /// (a rebuilding node compares it with its own to report that it is in sync).
    pub state_hash: Option<serde_bytes::ByteBuf>,
    /// The sender is a light node: it keeps only the recent past and serves no blocks (a light
    /// node sends its writes to peers whose summary says `false`).
    #[serde(default)]
    pub light: bool,
    /// The sender does not know yet that it holds all its own events (a wiped disk, a node
    /// that joined with a key made before and is not confirmed yet): how much it holds of
    /// others' chains is no evidence that they hold all of theirs. A writer's gate counts
    /// only confirmed peers ([`Syncer::own_chain_confirmed`]).
    #[serde(default)]
    pub recovering: bool,
}

/// A page of raw event blocks; `next` continues a `Since` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocks {
    pub blocks: Vec<serde_bytes::ByteBuf>,
    pub next: Option<Cursor>,
}

/// The answer to a [`SyncRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncResponse {
    Summary(Summary),
    Blocks(Blocks),
    /// The ids of a `Submit` this node now holds durably (indexed, or persisted while waiting
    /// for parents); an id missing here was rejected.
    Stored {
        ids: Vec<EventId>,
    },
    /// Not served: rate limited, malformed, or this node does not replicate the timeline.
    Refused {
        reason: String,
    },
}

impl SyncRequest {
    /// Structural bounds, checked before a request is served.
    pub fn check(&self) -> Result<(), String> {
        match self {
            SyncRequest::Want { ids } if ids.len() > MAX_WANT_IDS => {
                Err(format!("want of {} ids (max {MAX_WANT_IDS})", ids.len()))
            }
            SyncRequest::Since { have, .. } if have.len() > MAX_VV_AUTHORS => Err(format!(
                "version vector of {} authors (max {MAX_VV_AUTHORS})",
                have.len()
            )),
            SyncRequest::Range { from_sq, to_sq, .. } if from_sq > to_sq => {
                Err(format!("empty range {from_sq}..={to_sq}"))
            }
            SyncRequest::Submit { blocks } if blocks.len() > MAX_SUBMIT_BLOCKS => Err(format!(
                "submit of {} blocks (max {MAX_SUBMIT_BLOCKS})",
                blocks.len()
            )),
            _ => Ok(()),
        }
    }
}

/// The summary of a timeline.
pub fn summarize<M: Machine>(tl: &Timeline<M>) -> Summary {
    let mut heads = tl.heads();
    heads.truncate(MAX_SUMMARY_HEADS);
    let mut version_vector: Vec<_> = tl.version_vector().into_iter().collect();
    version_vector.truncate(MAX_VV_AUTHORS);
    Summary {
        genesis: tl.genesis_id(),
        version_vector,
        heads,
        events: tl.len() as u64,
        state_hash: (!tl.needs_catch_up())
            .then(|| serde_bytes::ByteBuf::from(tl.state_hash().to_vec())),
        light: false,
        recovering: false,
    }
}

/// Answers one request from the timeline and its block source. Pure: the same timeline and
/// request give the same response. [`plan`] then [`pack`], in one go.
pub fn serve<M: Machine>(
    tl: &Timeline<M>,
    src: &dyn BlockSource,
    req: &SyncRequest,
) -> SyncResponse {
    match plan(tl, req) {
        Planned::Answer(resp) => resp,
        Planned::Page(p) => pack(&p, &|id: &EventId| tl.block(id, src)),
    }
}

/// What a page of blocks will hold, decided from the in-memory order alone (no block is
/// read): the events to send, in order, and where the page's cursor goes. Reading the blocks
/// is [`pack`]'s, which the node may run off its actor thread against a read snapshot of the
/// store (every planned event is committed: the node plans between turns, after the commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PagePlan {
    /// A `Since` page: each event with the cursor of the position scanned just before it
    /// (where the next page starts if this event does not fit), and the cursor of a page that
    /// takes every event (`None`: the scan reached the end of the order).
    Since {
        events: Vec<(Option<OrderKey>, OrderKey, EventId)>,
        then: Option<OrderKey>,
    },
    /// A `Want` or `Range` page: as many of these as fit, in order; no cursor.
    Ids(Vec<EventId>),
}

impl PagePlan {
    /// Events the page may hold.
    pub fn len(&self) -> usize {
        match self {
            PagePlan::Since { events, .. } => events.len(),
            PagePlan::Ids(ids) => ids.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A request answered at once, or a page to pack.
#[derive(Debug)]
pub enum Planned {
    Answer(SyncResponse),
    Page(PagePlan),
}

/// Decides the answer to one request from the timeline's in-memory indexes. Costs what the
/// page holds (at most [`MAX_PAGE_EVENTS`]), plus at most [`MAX_SCAN_PER_PAGE`] positions of
/// the order for a `Since`.
pub fn plan<M: Machine>(tl: &Timeline<M>, req: &SyncRequest) -> Planned {
    if let Err(reason) = req.check() {
        return Planned::Answer(SyncResponse::Refused { reason });
    }
    let ids: Vec<EventId> = match req {
        SyncRequest::Summary => return Planned::Answer(SyncResponse::Summary(summarize(tl))),
        SyncRequest::Want { ids } => ids.iter().filter(|id| tl.contains(id)).copied().collect(),
        SyncRequest::Range {
            author,
            from_sq,
            to_sq,
        } => {
            // Through the author's chain: a request costs what it returns (at most a page),
            // not a scan of the whole order. An author that forked is scanned for (rare, and
            // every block of the fork is wanted).
            let ids: Box<dyn Iterator<Item = EventId> + '_> =
                match tl.chain_span(author, *from_sq, *to_sq) {
                    Some(ids) => Box::new(ids),
                    None => Box::new(
                        tl.scan_after(None)
                            .filter(|(_, a, sq)| a == author && (*from_sq..=*to_sq).contains(sq))
                            .map(|(key, _, _)| key.1),
                    ),
                };
            ids.take(MAX_PAGE_EVENTS).collect()
        }
        SyncRequest::Since { have, after } => {
            let have: BTreeMap<AuthorId, u64> = have.iter().copied().collect();
            let mut events = vec![];
            let mut last: Option<OrderKey> = None;
            let mut scanned = 0usize;
            let mut iter = tl.scan_after(*after).peekable();
            while let Some((key, author, sq)) = iter.next() {
                scanned += 1;
                let covered = have.get(&author).is_some_and(|h| sq <= *h);
                if !covered {
                    events.push((last, key, key.1));
                }
                last = Some(key);
                if (events.len() >= MAX_PAGE_EVENTS || scanned >= MAX_SCAN_PER_PAGE)
                    && iter.peek().is_some()
                {
                    return Planned::Page(PagePlan::Since { events, then: last });
                }
            }
            return Planned::Page(PagePlan::Since { events, then: None });
        }
        // Storing needs the node's store and a commit: the node runtime answers it after
        // ingesting the blocks, never this read-only function.
        SyncRequest::Submit { .. } => {
            return Planned::Answer(SyncResponse::Refused {
                reason: "submit is answered by the node after its commit".into(),
            });
        }
    };
    Planned::Page(PagePlan::Ids(ids))
}

/// Reads a planned page's blocks through `block` and packs them within [`MAX_PAGE_BYTES`] and
/// [`MAX_PAGE_EVENTS`]. A `Since` page that fills up ends at the last block it took (its
/// `next` names it); a block that does not fit starts the next page. A block `block` cannot
/// find is left out (the planner only names indexed, committed events).
pub fn pack(plan: &PagePlan, block: &dyn Fn(&EventId) -> Option<Arc<[u8]>>) -> SyncResponse {
    let mut page = Page::default();
    match plan {
        PagePlan::Ids(ids) => {
            for b in ids.iter().filter_map(block) {
                if !page.push(&b) {
                    break;
                }
            }
            SyncResponse::Blocks(Blocks {
                blocks: page.blocks,
                next: None,
            })
        }
        PagePlan::Since { events, then } => {
            for (i, (before, key, id)) in events.iter().enumerate() {
                let Some(b) = block(id) else {
                    continue;
                };
                if !page.push(&b) {
                    // Did not fit: the next page starts at this event.
                    return SyncResponse::Blocks(Blocks {
                        blocks: page.blocks,
                        next: *before,
                    });
                }
                let more = i + 1 < events.len() || then.is_some();
                if page.full() && more {
                    return SyncResponse::Blocks(Blocks {
                        blocks: page.blocks,
                        next: Some(*key),
                    });
                }
            }
            SyncResponse::Blocks(Blocks {
                blocks: page.blocks,
                next: *then,
            })
        }
    }
}

#[derive(Default)]
struct Page {
    blocks: Vec<serde_bytes::ByteBuf>,
    bytes: usize,
}

impl Page {
    /// Adds a block unless the page is full; a page always takes its first block.
    fn push(&mut self, b: &[u8]) -> bool {
        if !self.blocks.is_empty()
            && (self.blocks.len() >= MAX_PAGE_EVENTS || self.bytes + b.len() > MAX_PAGE_BYTES)
        {
            return false;
        }
        self.bytes += b.len();
        self.blocks.push(serde_bytes::ByteBuf::from(b.to_vec()));
        true
    }
    fn full(&self) -> bool {
        self.blocks.len() >= MAX_PAGE_EVENTS || self.bytes >= MAX_PAGE_BYTES - MAX_EVENT_BYTES
    }
}

/// What the caller must do for the [`Syncer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<P> {
    Send(P, SyncRequest),
    /// Disconnect and refuse the peer until `until` (ms).
    Ban {
        peer: P,
        until: u64,
    },
    /// The ban has expired.
    Unban(P),
    /// The peer replicates another timeline: disconnect, do not ban.
    Disconnect(P),
}

/// What the syncer needs to know about the local replica.
pub trait LocalView {
    fn genesis(&self) -> EventId;
    fn version_vector(&self) -> BTreeMap<AuthorId, u64>;
    fn contains(&self, id: &EventId) -> bool;
    /// Events held with a `(lc, id)` key in `(after, upto]`, counted up to `at_most`.
    fn held_between(&self, after: Option<Cursor>, upto: Cursor, at_most: usize) -> usize;
    /// The highest `sq` of `author` held or waiting in the pending set.
    fn highest_sq_known(&self, author: &AuthorId) -> u64;
}

impl<M: Machine> LocalView for Timeline<M> {
    fn genesis(&self) -> EventId {
        self.genesis_id()
    }
    fn version_vector(&self) -> BTreeMap<AuthorId, u64> {
        Timeline::version_vector(self)
    }
    fn contains(&self, id: &EventId) -> bool {
        Timeline::contains(self, id)
    }
    fn held_between(&self, after: Option<Cursor>, upto: Cursor, at_most: usize) -> usize {
        self.scan_after(after)
            .take_while(|(k, _, _)| *k <= upto)
            .take(at_most)
            .count()
    }
    fn highest_sq_known(&self, author: &AuthorId) -> u64 {
        let held = Timeline::version_vector(self)
            .get(author)
            .copied()
            .unwrap_or(0);
        let pending = self
            .pending()
            .filter(|e| e.author == *author)
            .map(|e| e.seq)
            .max()
            .unwrap_or(0);
        held.max(pending)
    }
}

#[derive(Debug, Default)]
struct PeerState {
    in_flight: usize,
    invalid: u32,
    banned_until: Option<u64>,
    /// Its own request bucket ([`REQUESTS_PER_SEC`]).
    requests: Bucket,
    /// When a `Since` stream from this peer last ended without bringing anything new.
    idle_stream_at: Option<u64>,
    /// The highest contiguous sequence number of *our own* chain in this peer's last summary
    /// (see [`Syncer::own_chain_confirmed`]); `None` until it answers one.
    own_sq: Option<u64>,
    /// When to ask this peer for a summary again while `own_sq` is `None` (writers only).
    own_retry_at: u64,
    /// The peer said it is a light node (its version vector is not a replica's).
    light: bool,
    /// Its last summary said it is not confirmed itself (see [`Summary::recovering`]).
    recovering: bool,
    /// Its last summary named events this replica lacked: a peer to catch up from.
    ahead: bool,
    /// A `Range` of our own chain is out to this peer, to back its claim of `own_sq`: what we
    /// knew of our chain when it was sent.
    own_check_from: Option<u64>,
    /// Checks of its claim in a row that brought nothing (see [`MAX_UNBACKED_OWN_CLAIMS`]).
    own_unbacked: u32,
    /// What its last summary claimed of our chain (`own_sq` is this unless capped).
    own_claim: u64,
    /// Its claim was capped at what we hold (it could not back it): until it backs a claim,
    /// its summaries count for what we hold, never more.
    own_capped: bool,
    /// When the check out to it (`own_check_from`) counts as failed: [`OWN_CHECK_STALL_MS`]
    /// (or twice `round_trip_ms`) after the first tick that saw it out.
    own_check_deadline: Option<u64>,
    /// Checks given up on at their deadline whose request is still out: their answer or
    /// failure, when it comes, was counted already (unless it backs the claim).
    own_checks_abandoned: u32,
    /// `from` of the last check sent: what a late answer is judged against.
    own_check_last_from: u64,
    /// When the oldest summary request still out to it was sent.
    summary_sent_at: Option<u64>,
    /// The slowest summary round trip seen from it.
    round_trip_ms: u64,
}

#[derive(Debug)]
struct Stream<P> {
    peer: P,
    /// The last useful page (the stall timer runs from it).
    last_activity: u64,
    new_blocks: u64,
    /// The cursor of the page asked for last (`None`: the first).
    after: Option<Cursor>,
    /// Pages in a row that brought nothing (see [`MAX_USELESS_PAGES`]).
    useless: u32,
}

/// Counters, for status and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub summaries_sent: u64,
    pub pages_received: u64,
    pub wants_sent: u64,
    pub requests_refused: u64,
    pub invalid_blocks: u64,
    pub bans: u64,
    /// Catch-up streams cut for bringing nothing (a peer that claimed to be ahead and was not).
    pub streams_cut: u64,
    /// Claims of our own chain capped because the peer could not back them.
    pub own_claims_capped: u64,
    /// Checks of our own chain that went unanswered for [`OWN_CHECK_STALL_MS`] (counted as
    /// failed checks).
    pub own_checks_stalled: u64,
    /// Requests refused because all strangers' shared bucket was empty (also counted in
    /// `requests_refused`; a stranger's own bucket or a ban is counted there alone).
    pub stranger_requests_refused: u64,
}

/// The per-node sync decision maker. `P` is the caller's peer id type.
#[derive(Debug)]
pub struct Syncer<P: Ord + Clone> {
    peers: BTreeMap<P, PeerState>,
    stream: Option<Stream<P>>,
    wants: BTreeMap<EventId, u64>,
    next_round: u64,
    round_robin: usize,
    stats: SyncStats,
    /// This replica's author, when it writes (for [`Syncer::own_chain_confirmed`]).
    me: Option<AuthorId>,
    /// A catch-up stream ended before its last page (stalled, failed or refused): the next
    /// tick starts another at once, with the next peer known to be ahead, rather than waiting
    /// for a summary round (on a lossy network that wait made a wiped node miss its bound).
    resume: bool,
    /// The peer of the last stream started: the next one starts after it in key order.
    last_stream_peer: Option<P>,
    /// No stream is resumed before this time (see [`STREAM_RESUME_INTERVAL_MS`]).
    next_resume: u64,
    /// **Sabotage, for the simulator's oracle only**: take every peer's word (no stream is cut
    /// for useless pages, no claim of our own chain is checked).
    trust_claims: bool,
    /// Our writes are open (see [`Syncer::own_chain_settled`]).
    own_settled: bool,
    /// The bucket every stranger's request draws from ([`STRANGER_REQUESTS_PER_SEC`]).
    strangers: Bucket,
    /// **Sabotage, for the simulator's oracle only**: strangers draw only from their own
    /// buckets (made-up identities each get a full one).
    no_stranger_budget: bool,
    /// Sabotage: checks of our own chain wait for their request's own timeout.
    no_own_check_stall: bool,
}

/// A token bucket: `tokens` at `at` (ms), refilled at a rate up to a depth.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    tokens: u64,
    at: u64,
}

impl Bucket {
    fn full(depth: u64, now: u64) -> Self {
        Bucket {
            tokens: depth,
            at: now,
        }
    }
    /// Takes a token if there is one, after refilling.
    fn take(&mut self, now: u64, per_sec: u64, depth: u64) -> bool {
        let refill = now.saturating_sub(self.at) * per_sec / 1000;
        if refill > 0 {
            self.tokens = (self.tokens + refill).min(depth);
            self.at = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

impl<P: Ord + Clone> Default for Syncer<P> {
    fn default() -> Self {
        Syncer {
            peers: BTreeMap::new(),
            stream: None,
            wants: BTreeMap::new(),
            next_round: 0,
            round_robin: 0,
            stats: SyncStats::default(),
            me: None,
            resume: false,
            last_stream_peer: None,
            next_resume: 0,
            trust_claims: false,
            strangers: Bucket::full(STRANGER_REQUEST_BURST, 0),
            no_stranger_budget: false,
            no_own_check_stall: false,
            own_settled: false,
        }
    }
}

fn vv_ahead(remote: &[(AuthorId, u64)], local: &BTreeMap<AuthorId, u64>) -> bool {
    remote
        .iter()
        .any(|(a, sq)| *sq > local.get(a).copied().unwrap_or(0))
}

impl<P: Ord + Clone> Syncer<P> {
    /// **Sabotage, for the simulator's oracle only**: see `trust_claims`.
    #[doc(hidden)]
    pub fn sabotage_no_stranger_budget(&mut self) {
        self.no_stranger_budget = true;
    }

    /// **Sabotage, for the simulator's oracle only**: a check of our own chain counts as
    /// failed only at its request's timeout ([`REQUEST_TIMEOUT_MS`]), not after
    /// [`OWN_CHECK_STALL_MS`].
    #[doc(hidden)]
    pub fn sabotage_no_own_check_stall(&mut self) {
        self.no_own_check_stall = true;
    }

    /// **Sabotage, for the simulator's oracle only**: see `trust_claims`.
    pub fn sabotage_trust_claims(&mut self) {
        self.trust_claims = true;
    }

    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }
    /// The highest sequence number of our own chain that `peer`'s last summary held (its
    /// word, unchecked), once it answered one.
    pub fn own_chain_held_by(&self, peer: &P) -> Option<u64> {
        self.peers
            .get(peer)
            .filter(|s| s.own_sq.is_some())
            .map(|s| s.own_claim)
    }
    /// Peers currently connected and not banned.
    pub fn peers(&self) -> impl Iterator<Item = &P> {
        self.peers
            .iter()
            .filter(|(_, s)| s.banned_until.is_none())
            .map(|(p, _)| p)
    }
    pub fn is_banned(&self, p: &P) -> bool {
        self.peers.get(p).is_some_and(|s| s.banned_until.is_some())
    }
    /// True while a bulk catch-up stream is running.
    pub fn catching_up(&self) -> bool {
        self.stream.is_some()
    }
    /// Invalid blocks received per peer.
    pub fn invalid_counts(&self) -> impl Iterator<Item = (&P, u32)> {
        self.peers.iter().map(|(p, s)| (p, s.invalid))
    }

    fn send(&mut self, out: &mut Vec<Action<P>>, p: &P, req: SyncRequest) {
        let Some(st) = self.peers.get_mut(p) else {
            return;
        };
        if st.banned_until.is_some() || st.in_flight >= MAX_IN_FLIGHT_PER_PEER {
            return;
        }
        st.in_flight += 1;
        match &req {
            SyncRequest::Summary => self.stats.summaries_sent += 1,
            SyncRequest::Want { .. } => self.stats.wants_sent += 1,
            _ => {}
        }
        out.push(Action::Send(p.clone(), req));
    }

    /// A summary request, timed: its answer gives the peer's round trip.
    fn send_summary(&mut self, out: &mut Vec<Action<P>>, p: &P, now: u64) {
        let before = out.len();
        self.send(out, p, SyncRequest::Summary);
        if out.len() > before
            && let Some(st) = self.peers.get_mut(p)
        {
            st.summary_sent_at.get_or_insert(now);
        }
    }

    /// Track how far peers have seen `me`'s own chain (a writer calls this once).
    pub fn watch_own_chain(&mut self, me: AuthorId) {
        self.me = Some(me);
    }

    /// Whether this replica holds all of its own chain that its peers know of: a strict
    /// majority of the connected full peers that are themselves confirmed has answered a
    /// summary, and no answer (confirmed or not) knows a higher sequence number of ours than
    /// we hold. Returns our highest sequence number then.
    ///
    /// A replica whose store holds none of its own events (wiped, restored from nothing, or a
    /// light node, which keeps its timeline in memory) must not write before this holds: its
    /// next event would reuse a sequence number it already signed, which is an equivocation,
    /// and every event of ours from there on would be excluded from the state for good.
    ///
    /// A majority, not all: one peer behind a 45 s link must not hold a fast node's writes
    /// (the simulator's `disparity` scenario caught that); and not just the first answer,
    /// which may come from another wiped peer that knows nothing of us. Peers that say they
    /// are recovering themselves count for nothing: when 99 of 100 nodes come back empty at
    /// once, a wiped writer's neighbours are mostly wiped too, and a majority of them knows
    /// nothing of its chain (`chorus sim run --scenario posterity --order final/1`, where the
    /// wiped writers' heartbeats reused their sequence numbers). It waits for a confirmed
    /// peer: the survivor, or a node the survivor confirmed first.
    pub fn own_chain_confirmed(&self, local: &dyn LocalView) -> Option<u64> {
        let me = self.me?;
        let full: Vec<&PeerState> = self
            .peers
            .values()
            .filter(|s| s.banned_until.is_none() && !s.light)
            .collect();
        let confirmed: Vec<&&PeerState> = full.iter().filter(|s| !s.recovering).collect();
        let answered = confirmed.iter().filter(|s| s.own_sq.is_some()).count();
        if answered == 0 || 2 * answered <= confirmed.len() {
            return None;
        }
        let highest = full.iter().filter_map(|s| s.own_sq).max().unwrap_or(0);
        let mine = local.version_vector().get(&me).copied().unwrap_or(0);
        (mine >= highest).then_some(mine)
    }

    /// A connection to `p` is up: ask for its summary.
    pub fn peer_up(&mut self, p: P, now: u64) -> Vec<Action<P>> {
        if self.is_banned(&p) {
            return vec![Action::Disconnect(p)];
        }
        if !self.peers.contains_key(&p) && self.peers.len() >= MAX_PEERS {
            return vec![Action::Disconnect(p)];
        }
        self.peers.entry(p.clone()).or_insert(PeerState {
            requests: Bucket::full(REQUEST_BURST, now),
            own_retry_at: now + OWN_CHAIN_RETRY_MS,
            ..PeerState::default()
        });
        let mut out = vec![];
        self.send_summary(&mut out, &p, now);
        out
    }

    /// The last connection to `p` closed. A ban outlives the connection.
    pub fn peer_down(&mut self, p: &P) {
        if let Some(st) = self.peers.get_mut(p) {
            if st.banned_until.is_none() {
                self.peers.remove(p);
            } else {
                st.in_flight = 0;
            }
        }
        if self.stream.as_ref().is_some_and(|s| &s.peer == p) {
            self.stream = None;
            self.resume = true;
        }
    }

    /// A request to `p` failed or timed out.
    pub fn request_failed(&mut self, p: &P, req: &SyncRequest) -> Vec<Action<P>> {
        self.done(p);
        if matches!(req, SyncRequest::Since { .. })
            && self.stream.as_ref().is_some_and(|s| &s.peer == p)
        {
            self.stream = None;
            self.resume = true;
        }
        if let SyncRequest::Want { ids } = req {
            for id in ids {
                self.wants.remove(id);
            }
        }
        if self.is_own_check(req) {
            return self.on_own_check(p, None);
        }
        vec![]
    }

    fn done(&mut self, p: &P) {
        if let Some(st) = self.peers.get_mut(p) {
            st.in_flight = st.in_flight.saturating_sub(1);
        }
    }

    /// Whether a stream from `p` ended with nothing new a short while ago.
    fn recently_idle(&self, p: &P, now: u64) -> bool {
        self.peers
            .get(p)
            .and_then(|st| st.idle_stream_at)
            .is_some_and(|t| now < t + ANTI_ENTROPY_INTERVAL_MS * 5)
    }

    /// Starts a catch-up stream from `p`: the first `Since` page. False if the request could
    /// not go out (banned, or its in-flight bound reached).
    fn start_stream(
        &mut self,
        out: &mut Vec<Action<P>>,
        p: &P,
        vv: BTreeMap<AuthorId, u64>,
        now: u64,
    ) -> bool {
        let before = out.len();
        let have = vv.into_iter().collect();
        self.send(out, p, SyncRequest::Since { have, after: None });
        if out.len() == before {
            return false;
        }
        self.stream = Some(Stream {
            peer: p.clone(),
            last_activity: now,
            new_blocks: 0,
            after: None,
            useless: 0,
        });
        self.last_stream_peer = Some(p.clone());
        self.resume = false;
        true
    }

    /// After a stream ended early: a new one from the next peer (in key order after the last
    /// stream's) whose last summary was ahead. With none to ask, `resume` stays set and the
    /// next summary that shows a peer ahead starts one as usual.
    fn resume_stream(&mut self, out: &mut Vec<Action<P>>, local: &dyn LocalView, now: u64) {
        let ahead: Vec<P> = self
            .peers
            .iter()
            .filter(|(_, st)| st.ahead && !st.light && st.banned_until.is_none())
            .map(|(p, _)| p.clone())
            .filter(|p| !self.recently_idle(p, now))
            .collect();
        let start = match &self.last_stream_peer {
            Some(last) => ahead.iter().position(|p| p > last).unwrap_or(0),
            None => 0,
        };
        let vv = local.version_vector();
        for i in 0..ahead.len() {
            let p = &ahead[(start + i) % ahead.len()];
            if self.start_stream(out, p, vv.clone(), now) {
                return;
            }
        }
    }

    /// `p` answered our `Summary`.
    pub fn on_summary(
        &mut self,
        p: &P,
        s: &Summary,
        local: &dyn LocalView,
        now: u64,
    ) -> Vec<Action<P>> {
        self.done(p);
        let mut out = vec![];
        if s.genesis != local.genesis() {
            self.peers.remove(p);
            out.push(Action::Disconnect(p.clone()));
            return out;
        }
        let vv = local.version_vector();
        let ahead = !s.light && vv_ahead(&s.version_vector, &vv);
        let mut check_own = None;
        if let Some(st) = self.peers.get_mut(p) {
            if let Some(t) = st.summary_sent_at.take() {
                st.round_trip_ms = st.round_trip_ms.max(now.saturating_sub(t));
            }
            st.light = s.light;
            st.recovering = s.recovering;
            st.ahead = ahead;
            if let Some(me) = self.me {
                let sq = s.version_vector.iter().find(|(a, _)| *a == me);
                let claim = sq.map_or(0, |(_, sq)| *sq);
                st.own_claim = claim;
                // More of our chain than we know of: ask for it before the claim may hold our
                // writes (a peer that cannot back it is capped, see `on_own_check`). Once our
                // writes are open the claim no longer matters.
                let known = local.highest_sq_known(&me);
                let unproven = claim > known && !self.trust_claims && !s.light && !self.own_settled;
                st.own_sq = Some(if unproven && st.own_capped {
                    known
                } else {
                    claim
                });
                if unproven && st.own_check_from.is_none() {
                    st.own_check_from = Some(known);
                    check_own = Some((me, known, claim));
                }
            }
        }
        if let Some((me, known, claim)) = check_own {
            self.send_own_check(&mut out, p, me, known, claim);
        }
        if s.light {
            // A light node serves no blocks: nothing to fetch from it. Its own events reach
            // full nodes by gossip and by its write-through `Submit`.
            return out;
        }
        if ahead && !self.recently_idle(p, now) {
            if self.stream.is_none() {
                self.start_stream(&mut out, p, vv, now);
            }
            return out;
        }
        let unknown: Vec<EventId> = s
            .heads
            .iter()
            .filter(|h| !local.contains(h))
            .copied()
            .collect();
        self.want(&mut out, p, unknown, now);
        out
    }

    fn want(&mut self, out: &mut Vec<Action<P>>, p: &P, ids: Vec<EventId>, now: u64) {
        let ids: Vec<EventId> = ids
            .into_iter()
            .filter(|id| {
                self.wants
                    .get(id)
                    .is_none_or(|t| now >= t + WANT_TIMEOUT_MS)
            })
            .take(MAX_WANT_IDS)
            .collect();
        if ids.is_empty() || self.is_banned(p) {
            return;
        }
        let before = out.len();
        self.send(out, p, SyncRequest::Want { ids: ids.clone() });
        if out.len() > before {
            for id in ids {
                self.wants.insert(id, now);
            }
        }
    }

    /// `p` answered a `Since` page of `blocks` blocks; `new` of them were new here. Asks for
    /// the next page, or, at the end of the stream, for a fresh summary to check nothing is
    /// left. A stream that pages without getting anywhere is cut (see [`MAX_USELESS_PAGES`]).
    /// `asked` is the cursor of the request this page answers: a late page of an earlier
    /// stream (from the same peer, after a stall) is not this stream's.
    #[allow(clippy::too_many_arguments)]
    pub fn on_page(
        &mut self,
        p: &P,
        asked: Option<Cursor>,
        next: Option<Cursor>,
        blocks: usize,
        new: u64,
        local: &dyn LocalView,
        now: u64,
    ) -> Vec<Action<P>> {
        self.done(p);
        self.stats.pages_received += 1;
        let mut out = vec![];
        let trust = self.trust_claims;
        let Some(stream) = self
            .stream
            .as_mut()
            .filter(|s| &s.peer == p && s.after == asked)
        else {
            return out;
        };
        stream.new_blocks += new;
        // Useful: something new, or an empty page over a full scan of positions we hold.
        // A cursor that does not move forward is never honest.
        let forward = next.is_none_or(|c| stream.after.is_none_or(|a| c > a));
        let scanned = next.is_some_and(|c| {
            blocks == 0
                && local.held_between(stream.after, c, MAX_SCAN_PER_PAGE) >= MAX_SCAN_PER_PAGE
        });
        if trust || (forward && (new > 0 || scanned)) {
            stream.useless = 0;
            stream.last_activity = now;
        } else {
            stream.useless += 1;
        }
        if next.is_some() && (!forward || stream.useless >= MAX_USELESS_PAGES) && !trust {
            // It claimed to be ahead and pages nowhere: ask someone else, and not it again for
            // a while (its next summary may claim the same).
            self.stream = None;
            self.resume = true;
            self.stats.streams_cut += 1;
            if let Some(st) = self.peers.get_mut(p) {
                st.idle_stream_at = Some(now);
                st.ahead = false;
            }
            return out;
        }
        stream.after = next;
        match next {
            Some(after) => {
                let have = local.version_vector().into_iter().collect();
                self.send(
                    &mut out,
                    p,
                    SyncRequest::Since {
                        have,
                        after: Some(after),
                    },
                );
                if out.is_empty() {
                    self.stream = None;
                    self.resume = true;
                }
            }
            None => {
                let idle = stream.new_blocks == 0;
                self.stream = None;
                self.resume = false;
                if let Some(st) = self.peers.get_mut(p) {
                    st.idle_stream_at = idle.then_some(now);
                }
                self.send_summary(&mut out, p, now);
            }
        }
        out
    }

    /// `p` answered a `Want` or `Range`.
    pub fn on_blocks(&mut self, p: &P) {
        self.done(p);
    }

    fn send_own_check(
        &mut self,
        out: &mut Vec<Action<P>>,
        p: &P,
        me: AuthorId,
        known: u64,
        claim: u64,
    ) {
        let before = out.len();
        let to_sq = claim.min(known.saturating_add(OWN_CHECK_SPAN));
        self.send(
            out,
            p,
            SyncRequest::Range {
                author: me,
                from_sq: known + 1,
                to_sq,
            },
        );
        if let Some(st) = self.peers.get_mut(p) {
            if out.len() == before {
                st.own_check_from = None; // not sent (in-flight bound): the next summary asks
            } else {
                st.own_check_last_from = known;
            }
        }
    }

    /// Whether `req` is a check of our own chain (a `Range` of our author).
    pub fn is_own_check(&self, req: &SyncRequest) -> bool {
        matches!(req, SyncRequest::Range { author, .. } if Some(*author) == self.me)
    }

    /// `p` answered a check of our own chain with blocks: `sent` holds the author and `sq` of
    /// each that decoded with a good signature (`None`: the check failed, or was answered with
    /// something else). The answer is judged by what the peer *sent*, never by what this node
    /// then took in (its own pending bounds may refuse genuine events): one genuine event of
    /// ours beyond what we held when we asked backs the claim for good, and the next part is
    /// asked for only by the next summary. [`MAX_UNBACKED_OWN_CLAIMS`] answers in a row
    /// without one cap the claim at what we held.
    pub fn on_own_check(&mut self, p: &P, sent: Option<&[(AuthorId, u64)]>) -> Vec<Action<P>> {
        let out = vec![];
        let Some(me) = self.me else {
            return out;
        };
        let Some(st) = self.peers.get_mut(p) else {
            return out;
        };
        let backs = |from: u64| sent.is_some_and(|s| s.iter().any(|&(a, sq)| a == me && sq > from));
        let Some(from) = st.own_check_from.take() else {
            // No check out: the late answer of one given up on. Counted already as failed,
            // but one that brings our events still backs the claim (and lifts a cap).
            st.own_checks_abandoned = st.own_checks_abandoned.saturating_sub(1);
            if backs(st.own_check_last_from) && !self.own_settled {
                st.own_unbacked = 0;
                st.own_capped = false;
                st.own_sq = Some(st.own_claim);
            }
            return out;
        };
        let backed = backs(from);
        if !backed && st.own_checks_abandoned > 0 {
            // Most likely the answer (or the timeout) of a check given up on, which was
            // counted when it was: the current check is still out.
            st.own_checks_abandoned -= 1;
            st.own_check_from = Some(from);
            return out;
        }
        self.judge_own_check(p, me, from, backed)
    }

    /// The end of the check of our chain sent from `from` to `p`: backed, or one more that
    /// brought nothing (the claim capped after [`MAX_UNBACKED_OWN_CLAIMS`] in a row; otherwise
    /// the next check is sent).
    fn judge_own_check(&mut self, p: &P, me: AuthorId, from: u64, backed: bool) -> Vec<Action<P>> {
        let mut out = vec![];
        let Some(st) = self.peers.get_mut(p) else {
            return out;
        };
        st.own_check_deadline = None;
        if backed {
            st.own_unbacked = 0;
            st.own_capped = false;
            st.own_sq = Some(st.own_claim);
            return out;
        }
        st.own_unbacked += 1;
        if st.own_unbacked >= MAX_UNBACKED_OWN_CLAIMS {
            st.own_unbacked = 0;
            if st.own_claim > from {
                st.own_sq = Some(from);
                st.own_capped = true;
                self.stats.own_claims_capped += 1;
            }
            return out;
        }
        if st.own_claim > from && !self.own_settled {
            let claim = st.own_claim;
            st.own_check_from = Some(from);
            self.send_own_check(&mut out, p, me, from, claim);
        }
        out
    }

    /// Our writes are open: claims of our chain no longer matter, and are not checked.
    pub fn own_chain_settled(&mut self) {
        self.own_settled = true;
    }

    /// Events from `p` are waiting for these parents: ask `p` for them.
    pub fn on_missing(&mut self, p: &P, missing: Vec<EventId>, now: u64) -> Vec<Action<P>> {
        let mut out = vec![];
        // During a bulk catch-up the stream brings the parents in order.
        if self.stream.is_none() {
            self.want(&mut out, p, missing, now);
        }
        out
    }

    /// The ids arrived (from anyone): no need to ask again.
    pub fn arrived(&mut self, ids: impl IntoIterator<Item = EventId>) {
        if self.wants.is_empty() {
            return;
        }
        for id in ids {
            self.wants.remove(&id);
        }
    }

    /// `p` sent `n` invalid blocks. Bans it at the threshold.
    pub fn on_invalid(&mut self, p: &P, n: u32, now: u64) -> Vec<Action<P>> {
        self.stats.invalid_blocks += n as u64;
        let Some(st) = self.peers.get_mut(p) else {
            return vec![];
        };
        st.invalid = st.invalid.saturating_add(n);
        if st.invalid >= MAX_INVALID_PER_PEER && st.banned_until.is_none() {
            let until = now + BAN_MS;
            st.banned_until = Some(until);
            st.in_flight = 0;
            self.stats.bans += 1;
            if self.stream.as_ref().is_some_and(|s| &s.peer == p) {
                self.stream = None;
                self.resume = true;
            }
            return vec![Action::Ban {
                peer: p.clone(),
                until,
            }];
        }
        vec![]
    }

    /// Whether to serve an inbound request from `p` now: a token bucket per peer and, for a
    /// `stranger`, also the one all strangers share ([`STRANGER_REQUESTS_PER_SEC`]). A request
    /// from a peer not tracked (it raced its connection notice, or the shell has no connection
    /// for it) has no bucket of its own and is served only from the strangers' one: nothing is
    /// stored for it, so made-up peer ids cost no memory.
    pub fn admit_request(&mut self, p: &P, now: u64, stranger: bool) -> bool {
        // Whether the peer's own bucket (none for an untracked peer) lets it through, then
        // whether the strangers' shared one does.
        let own = match self.peers.get_mut(p) {
            None => true,
            Some(st) if st.banned_until.is_some() => false,
            Some(st) => st.requests.take(now, REQUESTS_PER_SEC, REQUEST_BURST),
        };
        let shared_from = stranger || !self.peers.contains_key(p);
        let shared = !own
            || !shared_from
            || self.no_stranger_budget
            || self
                .strangers
                .take(now, STRANGER_REQUESTS_PER_SEC, STRANGER_REQUEST_BURST);
        let admitted = own && shared;
        if !admitted {
            self.stats.requests_refused += 1;
        }
        if !shared {
            self.stats.stranger_requests_refused += 1;
        }
        admitted
    }

    /// Periodic work: lift expired bans, drop a stalled stream, forget old wants, and compare
    /// summaries with the next peer in turn.
    pub fn tick(&mut self, now: u64, local: &dyn LocalView) -> Vec<Action<P>> {
        let mut out = vec![];
        let expired: Vec<P> = self
            .peers
            .iter()
            .filter(|(_, s)| s.banned_until.is_some_and(|t| now >= t))
            .map(|(p, _)| p.clone())
            .collect();
        for p in expired {
            self.peers.remove(&p);
            out.push(Action::Unban(p));
        }
        if self
            .stream
            .as_ref()
            .is_some_and(|s| now >= s.last_activity + CATCH_UP_STALL_MS)
        {
            let p = self.stream.take().map(|s| s.peer);
            if let Some(st) = p.and_then(|p| self.peers.get_mut(&p)) {
                st.in_flight = 0;
            }
            self.resume = true;
        }
        if self.resume && self.stream.is_none() && now >= self.next_resume {
            self.next_resume = now + STREAM_RESUME_INTERVAL_MS;
            self.resume_stream(&mut out, local, now);
        }
        self.wants.retain(|_, t| now < *t + WANT_TIMEOUT_MS);
        if self.me.is_some() {
            // A writer's gate waits on summaries of confirmed peers; ask again those that
            // never answered, and those that were recovering themselves (confirmed since?).
            let silent: Vec<P> = self
                .peers
                .iter_mut()
                .filter(|(_, s)| s.banned_until.is_none() && (s.own_sq.is_none() || s.recovering))
                .filter(|(_, s)| now >= s.own_retry_at)
                .map(|(p, s)| {
                    s.own_retry_at = now + OWN_CHAIN_RETRY_MS;
                    p.clone()
                })
                .collect();
            for p in silent {
                self.send_summary(&mut out, &p, now);
            }
            // Checks of our chain unanswered too long count as failed. The request itself
            // stays out (and holds its in-flight slot) until it is answered or times out; that
            // completion is then not counted again (`own_checks_abandoned`).
            let stalled: Vec<P> = self
                .peers
                .iter_mut()
                .filter(|(_, s)| s.own_check_from.is_some() && !self.no_own_check_stall)
                .filter_map(|(p, s)| match s.own_check_deadline {
                    None => {
                        let wait = OWN_CHECK_STALL_MS.max(2 * s.round_trip_ms);
                        s.own_check_deadline = Some(now + wait.min(REQUEST_TIMEOUT_MS));
                        None
                    }
                    Some(d) if now >= d => Some(p.clone()),
                    Some(_) => None,
                })
                .collect();
            let me = self.me.expect("checked above");
            for p in stalled {
                self.stats.own_checks_stalled += 1;
                let Some(from) = self.peers.get_mut(&p).and_then(|st| {
                    st.own_checks_abandoned += 1;
                    st.own_check_from.take()
                }) else {
                    continue;
                };
                out.extend(self.judge_own_check(&p, me, from, false));
            }
        }
        if now >= self.next_round {
            self.next_round = now + ANTI_ENTROPY_INTERVAL_MS;
            let live: Vec<P> = self.peers().cloned().collect();
            if !live.is_empty() {
                self.round_robin = (self.round_robin + 1) % live.len();
                let p = live[self.round_robin].clone();
                let busy = self.peers.get(&p).is_some_and(|s| s.in_flight > 0);
                if !busy {
                    self.send_summary(&mut out, &p, now);
                }
            }
        }
        out
    }
}
