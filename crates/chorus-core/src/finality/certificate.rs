//! Attestations and finality certificates (`final/1`, docs/design/finality.md "Bytes").
//!
//! A committee member's heartbeat on a `final/1` timeline attests the newest checkpoint it
//! holds inside its final prefix: how many positions that prefix has, the id of the event at
//! its last position, and the `state_hash` after folding exactly those positions. Final
//! positions never move and their state never changes, so every honest replica that holds a
//! checkpoint there attests the same three values; checkpoints sit every
//! `checkpoint_interval` positions on every replica, so their attestations line up.
//!
//! A **certificate** is what a replica builds once a quorum of the committee has attested the
//! same values: a DAG-CBOR block naming those heartbeats. Anyone holding the genesis, the
//! committee and the named heartbeat blocks checks it without the history — the snapshot
//! bootstrap (issue 18) fetches a state by it. The certificate is not part of the timeline: it
//! changes neither the order nor the state, and two replicas may hold different (equally
//! valid) certificates for one position.
//!
//! ```text
//! heartbeat body:  { "att": [positions: uint, last: link, state: bytes(32)] }
//! certificate:     { "v": 1, "tl": link(genesis), "positions": uint, "last": link,
//!                    "state": bytes(32), "epoch": uint, "committee": [bytes(32), …],
//!                    "by": [link(heartbeat), …] }     (DAG-CBOR, keys in canonical order)
//! ```

use std::collections::{BTreeMap, BTreeSet};

use ipld_core::ipld::Ipld;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::{
    AuthorId, EventId, SignedEvent, codec, event::kind, genesis::FinalityParams, ids::DAG_CBOR,
};

/// What a heartbeat attests: the final prefix up to `positions`, ending with `last`, folds to
/// `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attestation {
    pub positions: u64,
    pub last: EventId,
    pub state: [u8; 32],
}

/// Why a heartbeat body is not an attestation (the event itself stays valid: a heartbeat's
/// body is not checked, and a malformed claim is only not counted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("heartbeat attestation malformed: {0}")]
pub struct AttestationError(&'static str);

impl Attestation {
    pub fn to_body(&self) -> Ipld {
        Ipld::Map(BTreeMap::from([(
            "att".to_string(),
            Ipld::List(vec![
                Ipld::Integer(self.positions.into()),
                Ipld::Link(self.last.to_cid()),
                Ipld::Bytes(self.state.to_vec()),
            ]),
        )]))
    }

    /// `None` for a heartbeat that attests nothing (a `null` body, as under `lc-cid/1`).
    pub fn from_body(body: &Ipld) -> Option<Result<Attestation, AttestationError>> {
        let Ipld::Map(m) = body else {
            return None;
        };
        let att = m.get("att")?;
        Some(Self::parse(att))
    }

    fn parse(att: &Ipld) -> Result<Attestation, AttestationError> {
        let Ipld::List(l) = att else {
            return Err(AttestationError("not a list"));
        };
        let [Ipld::Integer(p), Ipld::Link(last), Ipld::Bytes(state)] = l.as_slice() else {
            return Err(AttestationError("not [positions, last, state]"));
        };
        let positions = u64::try_from(*p).map_err(|_| AttestationError("positions"))?;
        let last = EventId::from_cid(last).map_err(|_| AttestationError("last is no event"))?;
        let state: [u8; 32] = state
            .as_slice()
            .try_into()
            .map_err(|_| AttestationError("state is not 32 bytes"))?;
        if positions == 0 {
            return Err(AttestationError("positions 0"));
        }
        Ok(Attestation {
            positions,
            last,
            state,
        })
    }
}

/// A quorum of one epoch's committee attested the same [`Attestation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub timeline: EventId,
    pub att: Attestation,
    pub epoch: u32,
    /// The epoch's committee, sorted by key.
    pub committee: Vec<AuthorId>,
    /// The attesting heartbeats, sorted by id; one per author.
    pub by: Vec<EventId>,
}

#[derive(Serialize, Deserialize)]
struct CertificateWire {
    v: u64,
    tl: cid::Cid,
    positions: u64,
    last: cid::Cid,
    state: ByteBuf,
    epoch: u32,
    committee: Vec<ByteBuf>,
    by: Vec<cid::Cid>,
}

/// Why a certificate does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("certificate block: {0}")]
    Decode(String),
    #[error("certificate of another timeline ({0})")]
    OtherTimeline(EventId),
    #[error("heartbeat {0} not given")]
    Missing(EventId),
    #[error("{0} is not an attesting heartbeat of this timeline")]
    NotAHeartbeat(EventId),
    #[error("{id} attests {got:?}, not the certificate's values")]
    OtherValues { id: EventId, got: String },
    #[error("{0} is not in the certificate's committee")]
    Outsider(EventId),
    #[error("two heartbeats by one author ({0})")]
    SameAuthor(AuthorId),
    #[error("{have} attesting members, a quorum of {n} is {need}")]
    NoQuorum { have: usize, need: usize, n: usize },
}

impl Certificate {
    /// The block: DAG-CBOR, canonical.
    pub fn to_block(&self) -> Vec<u8> {
        codec::encode(&CertificateWire {
            v: 1,
            tl: self.timeline.to_cid(),
            positions: self.att.positions,
            last: self.att.last.to_cid(),
            state: ByteBuf::from(self.att.state.to_vec()),
            epoch: self.epoch,
            committee: self
                .committee
                .iter()
                .map(|a| ByteBuf::from(a.0.to_vec()))
                .collect(),
            by: self.by.iter().map(EventId::to_cid).collect(),
        })
    }

    /// The block's CID (v1, dag-cbor, sha2-256), as any IPFS node names it.
    pub fn cid(&self) -> cid::Cid {
        let id = EventId::of_block(&self.to_block());
        debug_assert_eq!(id.to_cid().codec(), DAG_CBOR);
        id.to_cid()
    }

    pub fn from_block(bytes: &[u8]) -> Result<Certificate, CertificateError> {
        let w: CertificateWire = codec::decode_canonical(bytes)
            .map_err(|e| CertificateError::Decode(format!("{e:?}")))?;
        let bad = |what: &str| CertificateError::Decode(what.to_string());
        if w.v != 1 {
            return Err(bad("version is not 1"));
        }
        let id = |c: &cid::Cid| EventId::from_cid(c).map_err(|e| bad(&e.to_string()));
        let committee = w
            .committee
            .iter()
            .map(|k| {
                <[u8; 32]>::try_from(k.as_slice())
                    .map(AuthorId)
                    .map_err(|_| bad("a committee key is not 32 bytes"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Certificate {
            timeline: id(&w.tl)?,
            att: Attestation {
                positions: w.positions,
                last: id(&w.last)?,
                state: w
                    .state
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("state is not 32 bytes"))?,
            },
            epoch: w.epoch,
            committee,
            by: w.by.iter().map(id).collect::<Result<_, _>>()?,
        })
    }

    /// Checks the certificate without the history: every named heartbeat is given (by
    /// `get`, which must return signature-checked events), belongs to this timeline, is by a
    /// distinct member of the certificate's committee, and attests exactly its values; and
    /// there are at least a quorum (`params`, the genesis's) of them. That the committee is
    /// the membership of that epoch is the caller's to know (docs/design/finality.md).
    pub fn verify(
        &self,
        genesis: EventId,
        params: FinalityParams,
        get: impl Fn(&EventId) -> Option<SignedEvent>,
    ) -> Result<(), CertificateError> {
        if self.timeline != genesis {
            return Err(CertificateError::OtherTimeline(self.timeline));
        }
        check_signers(genesis, params, &self.committee, &self.by, get, |ev| {
            match Attestation::from_body(&ev.body) {
                Some(Ok(a)) if a == self.att => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
    }
}

/// The check a certificate and a handover share: every heartbeat in `by` is given (by `get`,
/// which must return signature-checked events), is a heartbeat of this timeline whose body
/// `claims` accepts, is by a distinct member of `committee`; and there are at least a quorum
/// (`params`) of them.
pub(crate) fn check_signers(
    genesis: EventId,
    params: FinalityParams,
    committee: &[AuthorId],
    by: &[EventId],
    get: impl Fn(&EventId) -> Option<SignedEvent>,
    claims: impl Fn(&SignedEvent) -> Result<(), String>,
) -> Result<(), CertificateError> {
    let members: BTreeSet<AuthorId> = committee.iter().copied().collect();
    let mut authors = BTreeSet::new();
    for id in by {
        let ev = get(id).ok_or(CertificateError::Missing(*id))?;
        if ev.id() != *id || ev.kind != kind::HEARTBEAT || ev.timeline != Some(genesis) {
            return Err(CertificateError::NotAHeartbeat(*id));
        }
        if let Err(got) = claims(&ev) {
            return Err(CertificateError::OtherValues { id: *id, got });
        }
        if !members.contains(&ev.author) {
            return Err(CertificateError::Outsider(*id));
        }
        if !authors.insert(ev.author) {
            return Err(CertificateError::SameAuthor(ev.author));
        }
    }
    let n = members.len();
    let need = params.quorum(n);
    if authors.len() < need {
        return Err(CertificateError::NoQuorum {
            have: authors.len(),
            need,
            n,
        });
    }
    Ok(())
}

/// Attestations kept per committee author above the newest certificate (its lowest one goes
/// first): honest members attest ascending positions near the final prefix, and a member that
/// attests many positions crowds out no one else.
pub const MAX_OPEN_PER_AUTHOR: usize = 4;

/// Two committee members attested different values for one position: one of them lies, or
/// determinism is broken. The alert that matters most (`chorus_finality_conflicts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The member whose attestation disagreed with one seen before.
    pub by: AuthorId,
    pub attested: Attestation,
    /// What another member (or the newest certificate) attested for the same position.
    pub against: Attestation,
}

/// What a replica gathers from the heartbeats it holds: attestations by position, the newest
/// certificate, conflicts. Bounded: positions at or below the newest certificate are
/// forgotten, and at most [`MAX_OPEN_PER_AUTHOR`] others per author are kept.
#[derive(Debug, Default, Clone)]
pub struct Attestations {
    /// positions → attested values → (author → its heartbeat).
    open: BTreeMap<u64, BTreeMap<Attestation, BTreeMap<AuthorId, EventId>>>,
    certificate: Option<Certificate>,
    conflicts: u64,
    last_conflict: Option<Conflict>,
}

impl Attestations {
    /// Counts `att` by `author` (a member of `committee`, the current epoch's), and builds a
    /// certificate once `quorum` members attest the same values above the newest one.
    #[allow(clippy::too_many_arguments)]
    pub fn note(
        &mut self,
        timeline: EventId,
        epoch: u32,
        committee: &[AuthorId],
        quorum: usize,
        author: AuthorId,
        heartbeat: EventId,
        att: Attestation,
    ) {
        if committee.binary_search(&author).is_err() {
            return;
        }
        if let Some(c) = &self.certificate
            && att.positions <= c.att.positions
        {
            // Still checked against the certified values: a lie about a certified position
            // is a conflict too.
            if c.att.positions == att.positions && c.att != att {
                let against = c.att;
                self.conflict(author, att, against);
            }
            return;
        }
        let at = self.open.entry(att.positions).or_default();
        if at.get(&att).is_some_and(|s| s.contains_key(&author)) {
            return; // heard already
        }
        let against = at.keys().find(|a| **a != att).copied();
        let signers = at.entry(att).or_default();
        signers.insert(author, heartbeat);
        if signers.len() >= quorum {
            let mut by: Vec<EventId> = signers.values().copied().collect();
            by.sort();
            self.certificate = Some(Certificate {
                timeline,
                att,
                epoch,
                committee: committee.to_vec(),
                by,
            });
            self.open = self.open.split_off(&(att.positions + 1));
        }
        self.bound(author);
        if let Some(against) = against {
            self.conflict(author, att, against);
        }
    }

    fn bound(&mut self, author: AuthorId) {
        let mine: Vec<(u64, Attestation)> = self
            .open
            .iter()
            .flat_map(|(p, vals)| {
                vals.iter()
                    .filter(|(_, by)| by.contains_key(&author))
                    .map(move |(a, _)| (*p, *a))
            })
            .collect();
        for (p, a) in mine
            .iter()
            .take(mine.len().saturating_sub(MAX_OPEN_PER_AUTHOR))
        {
            let vals = self.open.get_mut(p).expect("listed above");
            let by = vals.get_mut(a).expect("listed above");
            by.remove(&author);
            if by.is_empty() {
                vals.remove(a);
            }
            if vals.is_empty() {
                self.open.remove(p);
            }
        }
    }

    fn conflict(&mut self, by: AuthorId, attested: Attestation, against: Attestation) {
        self.conflicts += 1;
        self.last_conflict = Some(Conflict {
            by,
            attested,
            against,
        });
    }
    pub fn certificate(&self) -> Option<&Certificate> {
        self.certificate.as_ref()
    }
    pub fn conflicts(&self) -> u64 {
        self.conflicts
    }
    pub fn last_conflict(&self) -> Option<&Conflict> {
        self.last_conflict.as_ref()
    }
}
