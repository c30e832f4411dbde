//! # Quarantine: taking out of a store the events no peer accepts
//!
//! Builds before the fix of "one API request can break a node's own store" signed and stored
//! local events without the context-free checks a peer runs (`MAX_EVENT_BYTES`,
//! `MAX_BODY_BYTES`, the kind's syntax). Such an event is refused by every peer, and a store
//! that holds one cannot be opened (`StoreError::Refused` names it). `chorus repair` uses this
//! module to move it out:
//!
//! 1. [`Store::quarantine_plan`] scans the order once and finds every stored event that fails
//!    [`SignedEvent::decode`] (a *refused* event) and every event with a quarantined parent (a
//!    *dependent*: it can never be indexed by a peer either, as its causal past is incomplete
//!    everywhere). Nothing else is touched.
//! 2. The caller writes the quarantined blocks somewhere safe (the CLI: a CAR file).
//! 3. [`Store::quarantine`] removes them in one transaction: their rows in the order, the id
//!    and author indexes, the checkpoints from the first of them on (those states include
//!    them), and sets the heads to what remains.
//!
//! Since no peer ever accepted a refused event, no peer holds a valid chain through it: the
//! author (this node's key, in practice) re-signs the quarantined sequence numbers without an
//! equivocation anywhere. Peers that hold the author's later events in their pending sets keep
//! them until pending expiry; they can never be indexed.

use std::collections::{BTreeMap, BTreeSet};

use chorus_core::{EventError, EventId, timeline::OrderKey};
use redb::ReadableMultimapTable;

use crate::{
    store::{Store, StoreError, dberr},
    tables::*,
    verify::decode_parallel,
};

/// Why an event is quarantined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// It fails the checks every peer runs.
    Refused(EventError),
    /// One of its parents is quarantined.
    DependsOn(EventId),
}

/// One quarantined event: where it sorted, and why. Its block stays in the store until
/// [`Store::quarantine`]; read it with `BlockSource::get_block` to save it first.
#[derive(Debug, Clone)]
pub struct QuarantinedEvent {
    pub key: OrderKey,
    pub reason: Reason,
    /// Its author, when the block decodes far enough to say (a refused block may not).
    pub author: Option<chorus_core::AuthorId>,
}

/// What [`Store::quarantine`] would do.
#[derive(Debug, Clone, Default)]
pub struct QuarantinePlan {
    /// In total order.
    pub events: Vec<QuarantinedEvent>,
    /// The heads once they are gone.
    pub heads_after: Vec<EventId>,
}

impl QuarantinePlan {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// Events decoded per batch of the scan (signatures are checked in parallel).
const SCAN_PAGE: usize = 4096;

impl Store {
    /// Finds every stored event a peer would refuse and everything that depends on it (see the
    /// module docs). Reads only. Memory: the quarantined events, plus two ids per kept event
    /// (to find the heads that remain; a refused block's own parents may not be readable).
    pub fn quarantine_plan(&self) -> Result<QuarantinePlan, StoreError> {
        let mut plan = QuarantinePlan::default();
        let mut doomed: BTreeSet<EventId> = BTreeSet::new();
        let mut kept: Vec<EventId> = vec![];
        let mut referenced: BTreeSet<EventId> = BTreeSet::new();
        self.scan_order(|page| {
            let blocks: Vec<&[u8]> = page.iter().map(|(_, b)| b.as_slice()).collect();
            for ((key, _), decoded) in page.iter().zip(decode_parallel(&blocks)) {
                let reason = match &decoded {
                    Err(e) => Reason::Refused(e.clone()),
                    Ok(ev) => match ev.parents.iter().find(|p| doomed.contains(p)) {
                        Some(p) => Reason::DependsOn(*p),
                        None => {
                            referenced.extend(ev.parents.iter().copied());
                            kept.push(key.1);
                            continue;
                        }
                    },
                };
                doomed.insert(key.1);
                plan.events.push(QuarantinedEvent {
                    key: *key,
                    reason,
                    author: decoded.as_ref().ok().map(|e| e.author),
                });
            }
            Ok(())
        })?;
        if !plan.events.is_empty() {
            plan.heads_after = kept
                .into_iter()
                .filter(|id| !referenced.contains(id))
                .collect();
            plan.heads_after.sort();
        }
        Ok(plan)
    }

    /// Calls `f` with the order, a page at a time.
    fn scan_order(
        &self,
        mut f: impl FnMut(&[(OrderKey, Vec<u8>)]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut after = None;
        loop {
            let page = self.ordered_page(after, SCAN_PAGE)?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.0);
            f(&page)?;
            if page.len() < SCAN_PAGE {
                return Ok(());
            }
        }
    }

    /// Removes the planned events from the store in one durable transaction (see the module
    /// docs). Save their blocks first: this is the only copy.
    pub fn quarantine(&self, plan: &QuarantinePlan) -> Result<(), StoreError> {
        let Some(first) = plan.events.first() else {
            return Ok(());
        };
        let ids: BTreeSet<[u8; 32]> = plan.events.iter().map(|q| q.key.1.0).collect();
        let txn = self.db.begin_write().map_err(dberr)?;
        {
            let mut events = txn.open_table(EVENTS).map_err(dberr)?;
            let mut index = txn.open_table(IDS).map_err(dberr)?;
            for q in &plan.events {
                events
                    .remove(order_key(q.key.0, &q.key.1.0).as_slice())
                    .map_err(dberr)?;
                index.remove(q.key.1.0.as_slice()).map_err(dberr)?;
            }
            // A refused block may not decode far enough to name its author and sq: find its
            // author-index rows by value.
            let mut authors = txn.open_multimap_table(AUTHORS).map_err(dberr)?;
            let mut rows: BTreeMap<Vec<u8>, Vec<[u8; 32]>> = BTreeMap::new();
            for item in authors.iter().map_err(dberr)? {
                let (k, values) = item.map_err(dberr)?;
                for v in values {
                    let v = v.map_err(dberr)?;
                    if let Ok(id) = <[u8; 32]>::try_from(v.value())
                        && ids.contains(&id)
                    {
                        rows.entry(k.value().to_vec()).or_default().push(id);
                    }
                }
            }
            for (k, vs) in rows {
                for v in vs {
                    authors.remove(k.as_slice(), v.as_slice()).map_err(dberr)?;
                }
            }
            let from = order_key(first.key.0, &first.key.1.0);
            let mut cks = txn.open_table(CHECKPOINTS).map_err(dberr)?;
            cks.retain(|k, _| k < from.as_slice()).map_err(dberr)?;
            let mut heads = txn.open_table(HEADS).map_err(dberr)?;
            heads.retain(|_, _| false).map_err(dberr)?;
            for h in &plan.heads_after {
                heads.insert(h.0.as_slice(), ()).map_err(dberr)?;
            }
        }
        txn.commit().map_err(dberr)?;
        Ok(())
    }
}
