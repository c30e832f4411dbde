//! `chorus verify`: re-derive a replica from its bytes and compare it with what is stored.
//!
//! 1. The store's integrity check (every block hashes to its key, the tables agree).
//! 2. Every stored and every pending block decodes, in canonical form, with a good signature.
//! 3. A fresh timeline takes every event (in the stored order, so parents come first), then
//!    the state at each stored checkpoint's key must hash to the checkpoint, and the final
//!    order, heads and state hash must equal the stored ones. All events go in before any
//!    checkpoint is compared: exclusions (equivocation, removal) are functions of the whole
//!    event set, so a checkpoint's state depends on events that sort after it.
//!
//! A mismatch is a [`Mismatch`] that says what differs; an error reading the store is a
//! [`ReplicaError`]. Neither is ever a panic.

use std::path::Path;

use chorus_core::{EventId, Machine, SignedEvent, Timeline};

use crate::{Replica, ReplicaError, Store, progress::Progress};

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub events: u64,
    pub checkpoints: u64,
    pub pending: u64,
    pub state_hash: [u8; 32],
}

/// Where the replica and its bytes disagree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("integrity check: {0}")]
    Integrity(String),
    #[error("block {id}: {why}")]
    Block { id: EventId, why: String },
    #[error("pending block {id}: {why}")]
    PendingBlock { id: EventId, why: String },
    #[error("opening the stored state: {0}")]
    StoredState(String),
    #[error("the store holds no events")]
    Empty,
    #[error("checkpoint at {0} names no stored event")]
    CheckpointWithoutEvent(EventId),
    #[error("checkpoint at {0} differs from the replay")]
    Checkpoint(EventId),
    #[error("the replayed order differs from the stored order")]
    Order,
    #[error("heads differ between replay, timeline and store")]
    Heads,
    #[error("state hash of the replay {replay} differs from the stored state {stored}")]
    StateHash { replay: String, stored: String },
}

/// Verifies the replica in `dir` whose store is `store` (see the module docs). `Ok(Err(_))`:
/// the replica disagrees with its bytes.
pub fn verify<M: Machine + Default>(
    dir: &Path,
    store: Store,
    progress: &mut dyn Progress,
) -> Result<Result<Verified, Mismatch>, ReplicaError> {
    let report = match store.integrity_check() {
        Ok(r) => r,
        Err(e) => return Ok(Err(Mismatch::Integrity(e.to_string()))),
    };
    progress.stage("verify signatures", Some(report.events));
    let mut events = Vec::with_capacity(report.events as usize);
    for ev in store.ordered_events() {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => return Ok(Err(Mismatch::Integrity(e.to_string()))),
        };
        if let Err(e) = SignedEvent::decode(ev.bytes()) {
            let why = e.to_string();
            return Ok(Err(Mismatch::Block { id: ev.id(), why }));
        }
        events.push(ev);
        progress.add(1);
    }
    for ev in store.pending()? {
        if let Err(e) = SignedEvent::decode(ev.bytes()) {
            let why = e.to_string();
            return Ok(Err(Mismatch::PendingBlock { id: ev.id(), why }));
        }
    }
    let checkpoints = store.checkpoints()?;
    let stored = match Replica::open_checked(dir, store, M::default()) {
        Ok(r) => r,
        Err(e) => return Ok(Err(Mismatch::StoredState(e.to_string()))),
    };

    progress.stage("replay", Some(events.len() as u64));
    let Some(genesis) = events.first().cloned() else {
        return Ok(Err(Mismatch::Empty));
    };
    let mut fresh = Timeline::new(genesis, M::default())?;
    for ev in events.iter().skip(1) {
        if let Err(e) = fresh.insert_deferred(ev.clone()) {
            let why = e.to_string();
            return Ok(Err(Mismatch::Block { id: ev.id(), why }));
        }
        progress.add(1);
    }
    let mut checked = 0;
    if let Some((key, _)) = checkpoints.iter().find(|(k, _)| !fresh.contains(&k.1)) {
        return Ok(Err(Mismatch::CheckpointWithoutEvent(key.1)));
    }
    // In the order of the timeline's own rule: under final/1 a later final segment can start
    // with an event whose (lc, id) sorts before an earlier segment's checkpoint.
    fresh.advance_finality();
    let mut checkpoints = checkpoints;
    checkpoints.sort_by_key(|(k, _)| fresh.position_of(&k.1));
    for (key, bytes) in &checkpoints {
        fresh.catch_up_until(Some(*key), stored.store())?;
        // A checkpoint's state hash is the SHA-256 of its bytes, which is the block digest.
        if fresh.state_hash() != EventId::of_block(bytes).0 {
            return Ok(Err(Mismatch::Checkpoint(key.1)));
        }
        checked += 1;
    }
    fresh.catch_up(stored.store())?;
    progress.finish();
    let st = stored.timeline();
    if !fresh.order().eq(st.order()) {
        return Ok(Err(Mismatch::Order));
    }
    if fresh.heads() != st.heads() || fresh.heads() != stored.store().heads()? {
        return Ok(Err(Mismatch::Heads));
    }
    if fresh.state_hash() != st.state_hash() {
        return Ok(Err(Mismatch::StateHash {
            replay: hex::encode(fresh.state_hash()),
            stored: hex::encode(st.state_hash()),
        }));
    }
    Ok(Ok(Verified {
        events: events.len() as u64,
        checkpoints: checked,
        pending: st.pending_len() as u64,
        state_hash: st.state_hash(),
    }))
}

/// What [`verify_archive`] derived from an archive: what its events fold to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveVerified {
    pub events: u64,
    pub heads: Vec<EventId>,
    pub state_hash: [u8; 32],
}

/// Re-derives a timeline from an exported archive alone (`chorus verify` against a running
/// node, whose store it cannot open): every block must hash to its CID and pass every event
/// check (canonical form, signature), the first must be a genesis, every event must be taken by
/// a fresh timeline of machine `M` with nothing left waiting for a parent, and the replay's heads
/// must be the archive's roots. The caller compares the replay's state hash with the one the
/// node claims for those heads. The blocks are held in memory for the replay.
pub fn verify_archive<M: Machine + Default>(
    blocks: impl Iterator<
        Item = Result<chorus_core::archive::RawBlock, chorus_core::archive::ArchiveError>,
    >,
    roots: &[EventId],
    progress: &mut dyn Progress,
) -> Result<Result<ArchiveVerified, Mismatch>, ReplicaError> {
    use std::{collections::BTreeMap, sync::Arc};
    let mut held: BTreeMap<EventId, Arc<[u8]>> = BTreeMap::new();
    let mut timeline: Option<Timeline<M>> = None;
    progress.stage("verify and replay", None);
    for raw in blocks {
        let raw = match raw {
            Ok(r) => r,
            Err(e) => {
                return Ok(Err(Mismatch::Integrity(format!(
                    "reading the archive: {e}"
                ))));
            }
        };
        let ev = match raw.check() {
            Ok(ev) => ev,
            Err(e) => {
                let id = raw.cid.parse().unwrap_or(EventId([0; 32]));
                return Ok(Err(Mismatch::Block {
                    id,
                    why: e.to_string(),
                }));
            }
        };
        let id = ev.id();
        held.insert(id, ev.bytes().into());
        match &mut timeline {
            None => match Timeline::new(ev, M::default()) {
                Ok(t) => timeline = Some(t),
                Err(e) => {
                    let why = format!("the first block is not this machine's genesis: {e}");
                    return Ok(Err(Mismatch::Block { id, why }));
                }
            },
            Some(t) => {
                if let Err(e) = t.insert_deferred(ev) {
                    return Ok(Err(Mismatch::Block {
                        id,
                        why: e.to_string(),
                    }));
                }
            }
        }
        progress.add(1);
    }
    let Some(mut fresh) = timeline else {
        return Ok(Err(Mismatch::Empty));
    };
    if fresh.pending_len() > 0 {
        let missing = fresh
            .wanted()
            .into_iter()
            .next()
            .unwrap_or(EventId([0; 32]));
        return Ok(Err(Mismatch::Block {
            id: missing,
            why: format!(
                "{} events wait for parents the archive does not hold (it is not closed)",
                fresh.pending_len()
            ),
        }));
    }
    fresh.advance_finality();
    fresh.catch_up(&held)?;
    progress.finish();
    let mut heads = fresh.heads();
    let mut want = roots.to_vec();
    heads.sort();
    want.sort();
    if heads != want {
        return Ok(Err(Mismatch::Heads));
    }
    Ok(Ok(ArchiveVerified {
        events: fresh.len() as u64,
        heads,
        state_hash: fresh.state_hash(),
    }))
}
