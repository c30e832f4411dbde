//! # One replica's synchronous core: timeline + storage + key
//!
//! [`Local`] is what a node holds of its timeline: the in-memory [`Timeline`], the
//! [`Storage`] it commits to, and the node key it signs with. It is the one place where events
//! enter a replica and become durable — local writes ([`Local::append_batch`]) and foreign
//! events (gossip, sync pages, imports: [`Local::ingest`]) — so the node on redb
//! (`chorus-store`'s `Replica`), the simulator on [`MemStore`](crate::storage::MemStore) and
//! the tests all run the same code.
//!
//! Invariant: what [`Local::append_batch`] and [`Local::ingest`] return is committed; the
//! timeline never indexes an event that its storage would not hold after a restart, except
//! between the insert and the commit of the same call.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use ipld_core::ipld::Ipld;

use crate::{
    ErrorClass, EventError, EventId, Machine, SignedEvent, Timeline,
    crypto::Keypair,
    event::{check_content, kind},
    storage::{Batch, Pruned, Storage},
    timeline::{BlockSource, Inserted, OrderKey, TimelineError},
};

/// Why a [`Local`] call failed; `E` is the storage's error.
#[derive(Debug, thiserror::Error)]
pub enum LocalError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Store(E),
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    #[error("invalid event: {0}")]
    Invalid(#[from] EventError),
    /// A broken invariant of this replica (a bug), never the input's fault.
    #[error("internal error: {0}")]
    Internal(String),
    /// A local write that a peer would refuse: nothing of it was signed or stored but the
    /// first `stored` items of its batch (see [`Local::append_batch`]).
    #[error("{}", refused_message(*index, *stored, error))]
    Refused {
        index: usize,
        stored: usize,
        error: EventError,
    },
}

/// What a refused local write says: which item, why, and what of the batch was stored.
pub fn refused_message(index: usize, stored: usize, error: &EventError) -> String {
    let what = match error {
        EventError::UnknownAuthor(_) => {
            "this node's key is not a member of the timeline (the admin adds it: chorus member add KEY)"
                .to_string()
        }
        e => e.to_string(),
    };
    let stored = match stored {
        0 => "nothing was stored".to_string(),
        n => format!("the {n} event(s) before it were stored"),
    };
    format!(
        "not written: event {index} of the request would be refused by every peer: {what}; {stored}"
    )
}

/// Counts of an ingest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Indexed now (including pending events they released).
    pub new: u64,
    pub duplicate: u64,
    /// Held for missing parents (persisted; applied when the parents come).
    pub pending: u64,
    /// Not taken, per error code (back-pressure included), with the first few ids and reasons.
    pub rejected: BTreeMap<&'static str, u64>,
    pub rejected_examples: Vec<(EventId, String)>,
    /// Positions in the ingested batch of the events rejected as invalid (decode or
    /// validation errors: a node charges the peer that sent each one).
    pub rejected_at: Vec<usize>,
    /// Positions of the events not taken because of back-pressure (the pending set is full):
    /// nothing is wrong with them, nobody is charged, sync brings them again later.
    pub busy_at: Vec<usize>,
    /// Ids indexed by this ingest, including released pending events.
    pub indexed: Vec<EventId>,
}

impl IngestReport {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
    fn reject(&mut self, id: EventId, e: &EventError) {
        *self.rejected.entry(e.code()).or_insert(0) += 1;
        if self.rejected_examples.len() < 20 {
            self.rejected_examples.push((id, e.to_string()));
        }
    }
}

/// Blocks a fold may need while a batch is being inserted: the batch itself (not yet
/// committed), then the storage's events and persisted pending events.
struct Overlay<'a, S> {
    batch: HashMap<EventId, Arc<[u8]>>,
    store: &'a S,
}

impl<S: Storage> BlockSource for Overlay<'_, S> {
    fn get_checkpoint(&self, key: &OrderKey) -> Option<Arc<Vec<u8>>> {
        self.store.get_checkpoint(key)
    }
    fn get_block(&self, id: &EventId) -> Option<Arc<[u8]>> {
        self.batch
            .get(id)
            .cloned()
            .or_else(|| self.store.get_block(id))
            .or_else(|| self.store.get_pending(id))
    }
}

impl<'a, S> Overlay<'a, S> {
    fn new(store: &'a S, events: &[SignedEvent]) -> Self {
        Overlay {
            batch: events.iter().map(|e| (e.id(), e.bytes_arc())).collect(),
            store,
        }
    }
}

/// See the module docs.
pub struct Local<M: Machine, S: Storage> {
    timeline: Timeline<M>,
    store: S,
    key: Keypair,
    /// Leave folding the state to [`Local::fold`] (see [`Local::set_deferred_fold`]).
    deferred_fold: bool,
}

impl<M: Machine, S: Storage> Local<M, S> {
    /// A replica from a timeline that matches `store` (restored from it, or both fresh).
    pub fn new(mut timeline: Timeline<M>, store: S, key: Keypair) -> Self {
        // Our own events are never a stranger's, even before the admin's addition of our key
        // has arrived (a wiped writer added after the genesis gets its chain back first).
        timeline.set_local_author(key.author());
        Local {
            timeline,
            store,
            key,
            deferred_fold: false,
        }
    }

    /// After a restart: re-ingests the persisted pending events, then persists the checkpoints
    /// the restore took.
    pub fn resume(&mut self, pending: Vec<SignedEvent>) -> Result<(), LocalError<S::Error>> {
        if !pending.is_empty() {
            self.ingest(pending)?;
        }
        self.persist(Batch::default(), false)
    }

    pub fn key(&self) -> &Keypair {
        &self.key
    }
    pub fn store(&self) -> &S {
        &self.store
    }
    pub fn timeline(&self) -> &Timeline<M> {
        &self.timeline
    }
    /// See [`Timeline::advance_finality`]. Checkpoints it re-keys into the final prefix are
    /// persisted with the next fold.
    pub fn advance_finality(&mut self) -> usize {
        self.timeline.advance_finality()
    }
    /// Takes the parts back (the simulator's crash keeps only the storage).
    pub fn into_parts(self) -> (Timeline<M>, S, Keypair) {
        (self.timeline, self.store, self.key)
    }

    /// In deferred mode ingest and append index and commit events but do not fold the machine
    /// state; the owner calls [`fold`](Self::fold) before reading the state, and
    /// periodically. Events are durable either way; only the state computation waits.
    pub fn set_deferred_fold(&mut self, on: bool) {
        self.deferred_fold = on;
    }

    /// Whether folding is left to [`fold`](Self::fold) (see [`set_deferred_fold`](Self::set_deferred_fold)).
    pub fn deferred_fold(&self) -> bool {
        self.deferred_fold
    }

    /// See [`Timeline::set_auto_fold`]: off for an owner that folds in slices.
    pub fn set_auto_fold(&mut self, on: bool) {
        self.timeline.set_auto_fold(on);
    }

    /// Brings the state up to date and persists the checkpoints taken meanwhile.
    pub fn fold(&mut self) -> Result<(), LocalError<S::Error>> {
        if !self.timeline.needs_catch_up() {
            return Ok(());
        }
        self.timeline.catch_up(&self.store)?;
        self.persist(Batch::default(), false)
    }

    /// One slice of [`fold`](Self::fold): at most `positions` positions of the order applied,
    /// and the checkpoints taken persisted. Returns whether the state is up to date; until it
    /// is, the timeline's state is part-way through the order (see
    /// [`Timeline::catch_up_step`]).
    pub fn fold_step(&mut self, positions: usize) -> Result<bool, LocalError<S::Error>> {
        if !self.timeline.needs_catch_up() {
            return Ok(true);
        }
        let done = self.timeline.catch_up_step(positions, &self.store)?;
        self.persist(Batch::default(), false)?;
        Ok(done)
    }

    /// Where a light node may forget the past: the newest checkpoint inside the settled prefix
    /// of the order (no member can add an event before it any more, so the state never has to
    /// be rebuilt from further back). `None` while nothing with a checkpoint is settled.
    /// Under `final/1` the order is not `(lc, id)`, which pruning goes by: the horizon is the
    /// largest key below which everything is final and before the newest final checkpoint
    /// ([`Timeline::final_prune_horizon`]).
    pub fn light_horizon(&self) -> Option<OrderKey> {
        if self.timeline.needs_catch_up() {
            return None;
        }
        if self.timeline.genesis().is_final_order() {
            return self.timeline.final_prune_horizon();
        }
        let (id, lc) = self.timeline.frontier().last?;
        let last: OrderKey = (lc, id);
        self.timeline
            .checkpoint_keys()
            .into_iter()
            .rev()
            .find(|k| *k <= last)
    }

    /// Light nodes: deletes the blocks and checkpoints behind [`light_horizon`](Self::light_horizon).
    pub fn prune(&mut self) -> Result<(Option<OrderKey>, Pruned), LocalError<S::Error>> {
        let Some(h) = self.light_horizon() else {
            return Ok((None, Pruned::default()));
        };
        let pruned = self.store.prune_through(h).map_err(LocalError::Store)?;
        Ok((Some(h), pruned))
    }

    /// Signs and appends one local event; returns after it is durable.
    pub fn append(&mut self, kind: &str, body: Ipld) -> Result<SignedEvent, LocalError<S::Error>> {
        Ok(self.append_batch(vec![(kind.to_string(), body)])?.remove(0))
    }

    /// Signs and appends several local events, each on top of the previous, and commits them in
    /// one durable transaction (group commit). All are acknowledged together.
    ///
    /// Every event is made by [`Timeline::sign_local`], so it passes the checks a peer runs;
    /// one that would not is refused ([`LocalError::Refused`]) and never signed or stored.
    /// The kind and body of every item are checked before the first is signed, so a batch
    /// refused for what the writer chose leaves the replica unchanged. Only a check that
    /// depends on the timeline (this key's membership, the counters' range) can refuse an item
    /// after earlier ones were indexed; those earlier ones are then committed, so storage and
    /// timeline agree, and the error says how many were.
    pub fn append_batch(
        &mut self,
        items: Vec<(String, Ipld)>,
    ) -> Result<Vec<SignedEvent>, LocalError<S::Error>> {
        let (out, refused) = self.sign_write(items);
        match refused {
            None => self.commit_signed(out),
            Some(e) => {
                if !out.is_empty() {
                    self.commit_signed(out)?;
                }
                Err(e)
            }
        }
    }

    /// The signing half of [`append_batch`](Self::append_batch): every item's kind and body
    /// checked, then each signed and indexed on top of the previous; nothing committed. On a
    /// refusal the events indexed before it come back with the error: the timeline holds them,
    /// so the caller commits them ([`commit_signed`](Self::commit_signed)) like the others.
    pub fn sign_write(
        &mut self,
        items: Vec<(String, Ipld)>,
    ) -> (Vec<SignedEvent>, Option<LocalError<S::Error>>) {
        for (index, (k, body)) in items.iter().enumerate() {
            if let Err(error) = check_content(k, body) {
                let refused = LocalError::Refused {
                    index,
                    stored: 0,
                    error,
                };
                return (vec![], Some(refused));
            }
        }
        let mut out = Vec::with_capacity(items.len());
        for (index, (k, body)) in items.into_iter().enumerate() {
            match self.sign_and_insert(&k, body) {
                Ok(ev) => out.push(ev),
                Err(failed) => {
                    let stored = out.len();
                    let e = match failed {
                        LocalError::Invalid(error) => LocalError::Refused {
                            index,
                            stored,
                            error,
                        },
                        other => other,
                    };
                    return (out, Some(e));
                }
            }
        }
        (out, None)
    }

    /// The committing half: events signed by [`sign_write`](Self::sign_write), of one write or
    /// of many (a node commits every write of a turn together), in one durable transaction.
    pub fn commit_signed(
        &mut self,
        out: Vec<SignedEvent>,
    ) -> Result<Vec<SignedEvent>, LocalError<S::Error>> {
        self.commit_local(out)
    }

    /// One local event, signed, checked and indexed (not yet committed). A refusal is
    /// `LocalError::Invalid`.
    fn sign_and_insert(
        &mut self,
        kind: &str,
        body: Ipld,
    ) -> Result<SignedEvent, LocalError<S::Error>> {
        let ev = self.timeline.sign_local(&self.key, kind, body)?;
        match self.timeline.insert_deferred(ev.clone())? {
            Inserted::Indexed { .. } => Ok(ev),
            // Its parents are this timeline's heads and its sq is new: neither can happen.
            other => Err(LocalError::Internal(format!(
                "a local event was not indexed ({other:?})"
            ))),
        }
    }

    /// Folds (unless deferred) and commits indexed local events in one transaction.
    fn commit_local(
        &mut self,
        out: Vec<SignedEvent>,
    ) -> Result<Vec<SignedEvent>, LocalError<S::Error>> {
        // Not committed yet: the overlay serves the batch to the fold.
        if !self.deferred_fold {
            self.timeline.catch_up(&Overlay::new(&self.store, &out))?;
        }
        let has_member = out.iter().any(|e| e.kind == kind::MEMBER);
        self.persist(
            Batch {
                blocks: out.clone(),
                ..Batch::default()
            },
            has_member,
        )?;
        Ok(out)
    }

    /// Ingests foreign events (imports, gossip, sync pages) through the same path as local
    /// ones, then commits once.
    pub fn ingest(
        &mut self,
        events: Vec<SignedEvent>,
    ) -> Result<IngestReport, LocalError<S::Error>> {
        let mut report = IngestReport::default();
        let mut batch = Batch::default();
        let mut has_member = false;
        // The batch is not committed before the fold runs; the overlay serves its blocks.
        let overlay = Overlay::new(&self.store, &events);
        let results = if self.deferred_fold {
            self.timeline
                .insert_batch_deferred(events.iter().cloned(), &overlay)?
        } else {
            self.timeline
                .insert_batch(events.iter().cloned(), &overlay)?
        };
        for (pos, (ev, res)) in events.into_iter().zip(results).enumerate() {
            match res {
                Ok(Inserted::Indexed { released }) => {
                    report.new += 1 + released.len() as u64;
                    report.indexed.push(ev.id());
                    report.indexed.extend(released.iter().copied());
                    has_member |= ev.kind == kind::MEMBER;
                    for id in released {
                        let r = self.timeline.load(&id, &overlay)?;
                        has_member |= r.kind == kind::MEMBER;
                        batch.pending_del.push(id);
                        batch.blocks.push(r);
                    }
                    batch.blocks.push(ev);
                }
                Ok(Inserted::Pending { .. }) => {
                    report.pending += 1;
                    batch.pending_put.push(ev);
                }
                Ok(Inserted::Duplicate) => report.duplicate += 1,
                Err(e) => {
                    report.reject(ev.id(), &e);
                    match e.class() {
                        ErrorClass::BackPressure => report.busy_at.push(pos),
                        ErrorClass::Decode | ErrorClass::Validation => report.rejected_at.push(pos),
                    }
                }
            }
        }
        for (id, e) in self.timeline.take_dropped_pending() {
            report.reject(id, &e);
            batch.pending_del.push(id);
        }
        // Events released from pending in this batch were counted as pending when they arrived
        // earlier in the same batch; they are new now.
        let released_now: BTreeSet<EventId> = batch.pending_del.iter().copied().collect();
        let before = batch.pending_put.len();
        batch
            .pending_put
            .retain(|e| !released_now.contains(&e.id()));
        report.pending -= (before - batch.pending_put.len()) as u64;
        self.persist(batch, has_member)?;
        Ok(report)
    }

    /// Rewrites the storage's membership mirror from the timeline (after `chorus repair` took
    /// events out).
    pub fn rewrite_membership_mirror(&mut self) -> Result<(), LocalError<S::Error>> {
        self.persist(Batch::default(), true)
    }

    fn persist(
        &mut self,
        mut batch: Batch,
        membership_changed: bool,
    ) -> Result<(), LocalError<S::Error>> {
        batch.checkpoints = self.timeline.take_checkpoint_changes();
        if !batch.blocks.is_empty() {
            batch.heads = Some(self.timeline.heads());
        }
        if membership_changed {
            batch.membership = Some(
                self.timeline
                    .membership()
                    .current()
                    .into_iter()
                    .map(|(a, r)| (a, r.as_str()))
                    .collect(),
            );
        }
        self.store.commit(batch).map_err(LocalError::Store)
    }
}
