//! Certified snapshots (`snapshot/1`): the machine state at a certified final checkpoint, as
//! IPFS blocks, and the check a node makes before it trusts one (docs/design/ipfs.md,
//! "Certified snapshots").
//!
//! A snapshot is a root block naming a finality certificate (`finality::certificate`) and the
//! state bytes the certificate attests, cut into raw blocks:
//!
//! ```text
//! root:   { "v": 1, "tl": link(genesis), "cert": link(certificate),
//!           "size": uint, "chunks": [link(raw chunk), …] }   (DAG-CBOR, canonical)
//! root under final/2 (v 2): the same keys and "hand": [link(handover), …], the handovers
//!         of epochs 1 … the certificate's epoch, in order (finality::handover)
//! chunk:  raw bytes (codec 0x55, sha2-256), each SNAPSHOT_CHUNK_BYTES but the last;
//!         their concatenation is the machine's canonical state serialisation
//! ```
//!
//! Everything a stranger needs is fetched by CID (the root, the certificate, the heartbeats it
//! names, the chunks) and checked here against the genesis and the committee the stranger
//! knows for the certificate's epoch: the heartbeats carry the members' signatures, a quorum
//! of them must attest the same (positions, last event, state hash), and the state bytes must
//! hash to that state hash and decode to a state that serialises back to the same bytes. The
//! snapshot holds no signature of its own and needs none: every byte of it is pinned by a
//! hash a quorum signed. Under `final/2` the committee need not be known: the root carries the
//! chain of handovers from the genesis committee to the certificate's (each checked against the
//! committee the walk reached), so the genesis is all a stranger needs.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    AuthorId, EventId, SignedEvent, codec,
    finality::{
        certificate::{Certificate, CertificateError},
        handover::{self, Handover},
    },
    genesis::Genesis,
    ids::DAG_CBOR,
    machine::Machine,
};

/// Bytes per state chunk (half of Bitswap's largest block, so any IPFS node passes it on).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// The largest state a snapshot may carry (KAIROS states are hundreds of KiB).
pub const MAX_SNAPSHOT_BYTES: u64 = 256 * 1024 * 1024;
/// The multicodec of a chunk: raw bytes.
pub const RAW: u64 = 0x55;

#[derive(Serialize, Deserialize)]
struct RootWire {
    v: u64,
    tl: cid::Cid,
    cert: cid::Cid,
    size: u64,
    chunks: Vec<cid::Cid>,
    /// `v: 2` only: the handovers of epochs `1..=cert.epoch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hand: Option<Vec<cid::Cid>>,
}

/// A snapshot as blocks, ready to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub root_cid: cid::Cid,
    pub root: Vec<u8>,
    pub certificate: Certificate,
    /// The state chunks, in order, with their CIDs.
    pub chunks: Vec<(cid::Cid, Vec<u8>)>,
    /// `final/2`: the handover blocks of epochs `1..=` the certificate's, with their CIDs.
    pub handovers: Vec<(cid::Cid, Vec<u8>)>,
}

/// Why a snapshot is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("block {0} could not be had")]
    Missing(cid::Cid),
    #[error("block {0}: its bytes do not hash to its CID")]
    BlockMismatch(cid::Cid),
    #[error("snapshot root block: {0}")]
    Decode(String),
    #[error("snapshot of another timeline ({0})")]
    OtherTimeline(EventId),
    #[error("heartbeat {id}: {why}")]
    BadHeartbeat { id: EventId, why: String },
    #[error(
        "the certificate is of epoch {0}, whose committee is not known here (this node knows \
         the genesis committee and the epochs its own timeline has reached)"
    )]
    UnknownEpoch(u32),
    #[error("the certificate names a committee for epoch {epoch} that is not that epoch's members")]
    NotTheCommittee { epoch: u32 },
    #[error("certificate: {0}")]
    Certificate(#[from] CertificateError),
    #[error("the handover to epoch {epoch}: {why}")]
    Handover { epoch: u32, why: CertificateError },
    #[error(
        "the certificate attests {positions} positions, no checkpoint of this timeline (one every \
         {interval})"
    )]
    NotACheckpoint { positions: u64, interval: u64 },
    #[error("state of {size} bytes: at most {MAX_SNAPSHOT_BYTES} are taken")]
    TooLarge { size: u64 },
    #[error(
        "the chunks do not cut {size} bytes into {SNAPSHOT_CHUNK_BYTES}-byte pieces (at {got} bytes)"
    )]
    SizeMismatch { size: u64, got: u64 },
    #[error("the state bytes hash to {got}, the certificate attests {certified}")]
    StateMismatch { certified: String, got: String },
    #[error("the machine refuses the state bytes: {0}")]
    State(String),
    #[error("the state bytes are not the machine's canonical serialisation")]
    NotCanonical,
}

/// The CID of a raw chunk.
pub fn chunk_cid(bytes: &[u8]) -> cid::Cid {
    let mh = multihash::Multihash::<64>::wrap(0x12, &Sha256::digest(bytes))
        .expect("32-byte digest fits");
    cid::Cid::new_v1(RAW, mh)
}

fn dag_cbor_cid(bytes: &[u8]) -> cid::Cid {
    let id = EventId::of_block(bytes);
    let cid = id.to_cid();
    debug_assert_eq!(cid.codec(), DAG_CBOR);
    cid
}

impl Snapshot {
    /// The snapshot of `state` (the canonical bytes the certificate attests); `chain` under
    /// `final/2`: the handovers of epochs `1..=certificate.epoch` (a `v: 2` root).
    pub fn build(certificate: &Certificate, chain: Option<&[&Handover]>, state: &[u8]) -> Snapshot {
        let handovers: Vec<(cid::Cid, Vec<u8>)> = chain
            .unwrap_or_default()
            .iter()
            .map(|h| (h.cid(), h.to_block()))
            .collect();
        let chunks: Vec<(cid::Cid, Vec<u8>)> = state
            .chunks(SNAPSHOT_CHUNK_BYTES)
            .map(|c| (chunk_cid(c), c.to_vec()))
            .collect();
        let root = codec::encode(&RootWire {
            v: if chain.is_some() { 2 } else { 1 },
            tl: certificate.timeline.to_cid(),
            cert: certificate.cid(),
            size: state.len() as u64,
            chunks: chunks.iter().map(|(c, _)| *c).collect(),
            hand: chain.map(|_| handovers.iter().map(|(c, _)| *c).collect()),
        });
        Snapshot {
            root_cid: dag_cbor_cid(&root),
            root,
            certificate: certificate.clone(),
            chunks,
            handovers,
        }
    }
}

/// A snapshot that passed every check: the certificate and the state it certifies.
pub struct Verified<S> {
    pub certificate: Certificate,
    pub state_bytes: Vec<u8>,
    pub state: S,
}

impl<S> std::fmt::Debug for Verified<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("certificate", &self.certificate)
            .field("state_bytes", &self.state_bytes.len())
            .finish_non_exhaustive()
    }
}

/// Checks the snapshot `root` names, fetching every block by CID through `get` (which may
/// return anything: each block is checked against its CID here), against the timeline's
/// `genesis` and `committee_of` (the members the caller knows for an epoch: `None` when it
/// cannot tell). Nothing is trusted that a quorum of the epoch's committee did not sign.
///
/// A `v: 2` root (`final/2`) carries its own trust: the handovers from the genesis committee to
/// the certificate's epoch are walked; `committee_of` then only narrows it (when it answers,
/// the walk must reach that committee: a node that replayed the timeline is not fooled by a
/// chain a former committee forked; an empty answer refuses the epoch).
///
/// What the caller must know: `committee_of` answers for the epoch it trusts to be in force
/// at the certified positions, and for no other. The certificate's epoch is the signers'
/// claim, and heartbeats can be signed off the timeline (they need not be in its DAG to
/// verify): a quorum of a committee that has since been replaced (removed members, leaked
/// keys) could sign a certificate for any positions and state under their old epoch. A node
/// that knows the timeline has moved past an epoch must not answer for it.
pub fn verify<M: Machine>(
    machine: &M,
    genesis_id: EventId,
    genesis: &Genesis,
    root: cid::Cid,
    get: impl Fn(&cid::Cid) -> Option<Vec<u8>>,
    committee_of: impl Fn(u32) -> Option<Vec<AuthorId>>,
) -> Result<Verified<M::State>, SnapshotError> {
    let fetch = |cid: &cid::Cid| -> Result<Vec<u8>, SnapshotError> {
        let bytes = get(cid).ok_or(SnapshotError::Missing(*cid))?;
        let computed = match cid.codec() {
            RAW => chunk_cid(&bytes),
            _ => dag_cbor_cid(&bytes),
        };
        if computed != *cid {
            return Err(SnapshotError::BlockMismatch(*cid));
        }
        Ok(bytes)
    };
    if root.codec() != DAG_CBOR {
        return Err(SnapshotError::Decode(format!(
            "{root} is not a DAG-CBOR block"
        )));
    }
    let w: RootWire = codec::decode_canonical(&fetch(&root)?)
        .map_err(|e| SnapshotError::Decode(format!("{e:?}")))?;
    match (w.v, &w.hand) {
        (1, None) => {}
        (2, Some(_)) if genesis.has_handovers() => {}
        (2, Some(_)) => {
            return Err(SnapshotError::Decode(
                "a version 2 root (handovers) of a timeline whose order has none".into(),
            ));
        }
        (v, _) => {
            return Err(SnapshotError::Decode(format!(
                "version {v} with{} handovers",
                if w.hand.is_some() { "" } else { "out" }
            )));
        }
    }
    // The layout before any chunk is fetched or any byte reserved: the root is unsigned, so
    // its size and chunk list bound the work only once they are the one layout `build` makes
    // (which also makes the root the only one for a given certificate and state).
    if w.size > MAX_SNAPSHOT_BYTES {
        return Err(SnapshotError::TooLarge { size: w.size });
    }
    if w.chunks.len() as u64 != w.size.div_ceil(SNAPSHOT_CHUNK_BYTES as u64) {
        return Err(SnapshotError::Decode(format!(
            "{} chunks for {} bytes: not {SNAPSHOT_CHUNK_BYTES}-byte chunks",
            w.chunks.len(),
            w.size
        )));
    }
    if let Some(c) = w.chunks.iter().find(|c| c.codec() != RAW) {
        return Err(SnapshotError::Decode(format!(
            "chunk {c} is not a raw block"
        )));
    }
    let tl = EventId::from_cid(&w.tl).map_err(|e| SnapshotError::Decode(e.to_string()))?;
    if tl != genesis_id {
        return Err(SnapshotError::OtherTimeline(tl));
    }
    let certificate = Certificate::from_block(&fetch(&w.cert)?)?;
    // Honest members attest only checkpoint positions: a replica can compare its own state
    // there, and nowhere else.
    let interval = genesis.body.checkpoint_interval;
    if certificate.att.positions % interval != 0 {
        return Err(SnapshotError::NotACheckpoint {
            positions: certificate.att.positions,
            interval,
        });
    }
    // The committee first: a certificate checked only against the committee it names itself
    // would take any keys' word.
    let mut known = match &w.hand {
        Some(chain) => {
            let walked = walk_handovers(genesis_id, genesis, certificate.epoch, chain, &fetch)?;
            // What the caller knows still counts: a chain forked by a former committee's
            // quorum walks to a committee the caller's own replay does not have.
            if let Some(mut own) = committee_of(certificate.epoch) {
                own.sort();
                if own != walked {
                    return Err(SnapshotError::NotTheCommittee {
                        epoch: certificate.epoch,
                    });
                }
            }
            walked
        }
        None => {
            committee_of(certificate.epoch).ok_or(SnapshotError::UnknownEpoch(certificate.epoch))?
        }
    };
    known.sort();
    if known != certificate.committee {
        return Err(SnapshotError::NotTheCommittee {
            epoch: certificate.epoch,
        });
    }
    // At most one heartbeat a member, sorted (no repeats): what is fetched is bounded by the
    // committee, not by the unsigned list's length.
    if certificate.by.len() > certificate.committee.len()
        || certificate.by.windows(2).any(|w| w[0] >= w[1])
    {
        return Err(SnapshotError::Decode(format!(
            "the certificate names {} heartbeats, not at most one for each of its {} members in \
             order",
            certificate.by.len(),
            certificate.committee.len()
        )));
    }
    let heartbeats = fetch_heartbeats(&certificate.by, &fetch)?;
    certificate.verify(genesis_id, genesis.finality_quorum(), |id| {
        heartbeats.get(id).cloned()
    })?;
    // The size is bounded and the certificate holds: now the bytes are worth reserving.
    let mut state_bytes = Vec::with_capacity(w.size as usize);
    let mut hash = Sha256::new();
    for (i, c) in w.chunks.iter().enumerate() {
        let chunk = fetch(c)?;
        let expected = if i + 1 < w.chunks.len() {
            SNAPSHOT_CHUNK_BYTES as u64
        } else {
            w.size - (i as u64) * SNAPSHOT_CHUNK_BYTES as u64
        };
        if chunk.len() as u64 != expected {
            return Err(SnapshotError::SizeMismatch {
                size: w.size,
                got: state_bytes.len() as u64 + chunk.len() as u64,
            });
        }
        hash.update(&chunk);
        state_bytes.extend_from_slice(&chunk);
    }
    let got: [u8; 32] = hash.finalize().into();
    if got != certificate.att.state {
        return Err(SnapshotError::StateMismatch {
            certified: hex::encode(certificate.att.state),
            got: hex::encode(got),
        });
    }
    let state = machine
        .decode_state(&state_bytes)
        .map_err(|e| SnapshotError::State(e.to_string()))?;
    if machine.encode_state(&state) != state_bytes {
        return Err(SnapshotError::NotCanonical);
    }
    Ok(Verified {
        certificate,
        state_bytes,
        state,
    })
}

/// The heartbeats `by` names, each fetched by CID and its signature checked (whether each
/// is of the right author and claim is the certificate's or handover's check).
fn fetch_heartbeats(
    by: &[EventId],
    fetch: &impl Fn(&cid::Cid) -> Result<Vec<u8>, SnapshotError>,
) -> Result<std::collections::BTreeMap<EventId, SignedEvent>, SnapshotError> {
    by.iter()
        .map(|id| {
            let bytes = fetch(&id.to_cid())?;
            let ev = SignedEvent::decode(&bytes).map_err(|e| SnapshotError::BadHeartbeat {
                id: *id,
                why: e.to_string(),
            })?;
            Ok((*id, ev))
        })
        .collect()
}

/// Epoch 0's committee: every member the genesis names (admin, anchors, writers), in key
/// order — what the timeline's finality starts from.
pub fn genesis_committee(genesis: &Genesis) -> Vec<AuthorId> {
    crate::membership::Membership::from_genesis(genesis)
        .members_at(0)
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// The committee of `epoch`, reached by walking `chain` (handovers `1..=epoch`) from the
/// genesis committee; each handover and its heartbeats fetched by CID and checked against the
/// committee reached so far, before the next is fetched (a forged link stops the walk there).
fn walk_handovers(
    genesis_id: EventId,
    genesis: &Genesis,
    epoch: u32,
    chain: &[cid::Cid],
    fetch: &impl Fn(&cid::Cid) -> Result<Vec<u8>, SnapshotError>,
) -> Result<Vec<AuthorId>, SnapshotError> {
    if chain.len() as u64 != u64::from(epoch) {
        return Err(SnapshotError::Decode(format!(
            "{} handovers for a certificate of epoch {epoch}",
            chain.len()
        )));
    }
    let mut committee = genesis_committee(genesis);
    for (i, link) in chain.iter().enumerate() {
        let epoch = i as u32 + 1;
        let at = |why| SnapshotError::Handover { epoch, why };
        let h = Handover::from_block(&fetch(link)?).map_err(at)?;
        // Heartbeats fetched only up to one a member of the committee reached, in order.
        if h.by.len() > committee.len() || h.by.windows(2).any(|w| w[0] >= w[1]) {
            return Err(at(CertificateError::Decode(format!(
                "{} heartbeats named, not at most one for each of {} members in order",
                h.by.len(),
                committee.len()
            ))));
        }
        let heartbeats = fetch_heartbeats(&h.by, fetch)?;
        committee = handover::walk_one(
            genesis_id,
            genesis.finality_quorum(),
            epoch,
            &committee,
            &h,
            |id| heartbeats.get(id).cloned(),
        )
        .map_err(at)?;
    }
    Ok(committee)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finality::certificate::Attestation;

    #[test]
    fn state_bytes_are_cut_into_bounded_raw_chunks_in_order() {
        let cert = Certificate {
            timeline: EventId([1; 32]),
            att: Attestation {
                positions: 4,
                last: EventId([2; 32]),
                state: [3; 32],
            },
            epoch: 0,
            committee: vec![],
            by: vec![],
        };
        let state: Vec<u8> = (0..SNAPSHOT_CHUNK_BYTES * 5 / 2)
            .map(|i| (i % 251) as u8)
            .collect();
        let s = Snapshot::build(&cert, None, &state);
        let sizes: Vec<usize> = s.chunks.iter().map(|(_, b)| b.len()).collect();
        assert_eq!(
            sizes,
            vec![
                SNAPSHOT_CHUNK_BYTES,
                SNAPSHOT_CHUNK_BYTES,
                SNAPSHOT_CHUNK_BYTES / 2
            ]
        );
        let joined: Vec<u8> = s.chunks.iter().flat_map(|(_, b)| b.clone()).collect();
        assert_eq!(joined, state);
        for (c, b) in &s.chunks {
            assert_eq!(c.codec(), RAW);
            assert_eq!(*c, chunk_cid(b));
        }
        let w: RootWire = codec::decode_canonical(&s.root).unwrap();
        assert_eq!(w.size, state.len() as u64);
        assert_eq!(w.cert, cert.cid());
        assert_eq!(s.root_cid, dag_cbor_cid(&s.root));
    }
}
