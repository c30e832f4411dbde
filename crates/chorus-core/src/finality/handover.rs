//! Handovers (`final/2`): each epoch's committee certifies the next one's, so that a node
//! holding only the genesis can trust a certificate of any later epoch (docs/design/ipfs.md,
//! "Which committee"; docs/design/finality.md, "Handovers").
//!
//! When a final segment changes the committee, epoch `e` begins at that segment's block with a
//! new committee. Every member of the committee of epoch `e − 1` then attests, in a heartbeat,
//! that epoch `e` began at that block with a committee whose key list hashes to a given value:
//!
//! ```text
//! heartbeat body:  { "att": [...]?, "hand": [epoch: uint, block: link, next: bytes(32)] }
//!                  next = sha2-256 of the DAG-CBOR list of the new committee's keys, in order
//! handover:        DAG-CBOR block, keys in canonical order:
//!                  { "v": 1, "tl": link(genesis), "epoch": uint, "block": link,
//!                    "committee": [bytes(32), …],   (epoch − 1's, sorted)
//!                    "next": [bytes(32), …],        (epoch's, sorted; hashes to the claim)
//!                    "by": [link(heartbeat), …] }   (sorted, one per signer)
//! ```
//!
//! Once a quorum of the old committee attested the same claim, a replica holds a handover
//! block naming those heartbeats. A stranger walks the handovers from the genesis committee:
//! each one is checked against the committee the walk has reached so far, and hands it the
//! next. Like certificates, handovers are not part of the timeline: they change neither the
//! order nor the state.

use std::collections::BTreeMap;

use ipld_core::ipld::Ipld;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use super::certificate::{Attestation, CertificateError, check_signers};
use crate::{AuthorId, EventId, SignedEvent, codec, genesis::FinalityParams, ids::DAG_CBOR};

/// Claims kept per member and epoch before the epoch is reached (an honest member makes one).
pub const MAX_CLAIMS_PER_MEMBER_AND_EPOCH: usize = 2;

/// What an old committee member attests after a committee change: epoch `epoch` began at the
/// final block `block`, with the committee whose [`committee_hash`] is `next`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HandoverClaim {
    pub epoch: u32,
    pub block: EventId,
    pub next: [u8; 32],
}

/// The hash a handover claim names a committee by: sha2-256 of the DAG-CBOR list of its keys
/// (byte strings of 32), in key order.
pub fn committee_hash(committee: &[AuthorId]) -> [u8; 32] {
    let keys: Vec<ByteBuf> = committee
        .iter()
        .map(|a| ByteBuf::from(a.0.to_vec()))
        .collect();
    Sha256::digest(codec::encode(&keys)).into()
}

/// A heartbeat's body under `final/1` and `final/2`: its attestation and its handover claim,
/// each only when it has one; `null` when it has neither.
pub fn heartbeat_body(att: Option<&Attestation>, hand: Option<&HandoverClaim>) -> Ipld {
    let mut m = BTreeMap::new();
    if let Some(Ipld::Map(a)) = att.map(Attestation::to_body) {
        m.extend(a);
    }
    if let Some(h) = hand {
        m.insert(
            "hand".to_string(),
            Ipld::List(vec![
                Ipld::Integer(h.epoch.into()),
                Ipld::Link(h.block.to_cid()),
                Ipld::Bytes(h.next.to_vec()),
            ]),
        );
    }
    if m.is_empty() {
        Ipld::Null
    } else {
        Ipld::Map(m)
    }
}

impl HandoverClaim {
    /// `None` for a heartbeat that claims no handover.
    pub fn from_body(body: &Ipld) -> Option<Result<HandoverClaim, CertificateError>> {
        let Ipld::Map(m) = body else {
            return None;
        };
        let bad = |why: &str| CertificateError::Decode(format!("handover claim: {why}"));
        let hand = m.get("hand")?;
        let Ipld::List(l) = hand else {
            return Some(Err(bad("not a list")));
        };
        let [Ipld::Integer(e), Ipld::Link(block), Ipld::Bytes(next)] = l.as_slice() else {
            return Some(Err(bad("not [epoch, block, next]")));
        };
        Some((|| {
            let epoch = u32::try_from(*e).map_err(|_| bad("epoch"))?;
            if epoch == 0 {
                return Err(bad("epoch 0 is the genesis's"));
            }
            Ok(HandoverClaim {
                epoch,
                block: EventId::from_cid(block).map_err(|_| bad("block is no event"))?,
                next: next
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("next is not 32 bytes"))?,
            })
        })())
    }
}

/// A quorum of epoch `claim.epoch − 1`'s committee attested `claim`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    pub timeline: EventId,
    pub claim: HandoverClaim,
    /// The old committee (of `claim.epoch − 1`), sorted by key.
    pub committee: Vec<AuthorId>,
    /// The new committee, sorted by key; hashes to `claim.next`.
    pub next: Vec<AuthorId>,
    /// The attesting heartbeats, sorted by id; one per author.
    pub by: Vec<EventId>,
}

#[derive(Serialize, Deserialize)]
struct HandoverWire {
    v: u64,
    tl: cid::Cid,
    epoch: u32,
    block: cid::Cid,
    committee: Vec<ByteBuf>,
    next: Vec<ByteBuf>,
    by: Vec<cid::Cid>,
}

fn keys_wire(keys: &[AuthorId]) -> Vec<ByteBuf> {
    keys.iter().map(|a| ByteBuf::from(a.0.to_vec())).collect()
}

fn keys_from_wire(keys: &[ByteBuf], what: &str) -> Result<Vec<AuthorId>, CertificateError> {
    let keys = keys
        .iter()
        .map(|k| {
            <[u8; 32]>::try_from(k.as_slice())
                .map(AuthorId)
                .map_err(|_| CertificateError::Decode(format!("a {what} key is not 32 bytes")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() || keys.windows(2).any(|w| w[0] >= w[1]) {
        return Err(CertificateError::Decode(format!(
            "the {what} is not a non-empty list of keys in order"
        )));
    }
    Ok(keys)
}

impl Handover {
    /// The block: DAG-CBOR, canonical.
    pub fn to_block(&self) -> Vec<u8> {
        codec::encode(&HandoverWire {
            v: 1,
            tl: self.timeline.to_cid(),
            epoch: self.claim.epoch,
            block: self.claim.block.to_cid(),
            committee: keys_wire(&self.committee),
            next: keys_wire(&self.next),
            by: self.by.iter().map(EventId::to_cid).collect(),
        })
    }

    /// The block's CID (v1, dag-cbor, sha2-256).
    pub fn cid(&self) -> cid::Cid {
        let id = EventId::of_block(&self.to_block());
        debug_assert_eq!(id.to_cid().codec(), DAG_CBOR);
        id.to_cid()
    }

    /// Decodes a handover block; the claim's `next` is the hash of the block's `next` list.
    pub fn from_block(bytes: &[u8]) -> Result<Handover, CertificateError> {
        let w: HandoverWire = codec::decode_canonical(bytes)
            .map_err(|e| CertificateError::Decode(format!("handover block: {e:?}")))?;
        let bad = |what: &str| CertificateError::Decode(format!("handover block: {what}"));
        if w.v != 1 {
            return Err(bad("version is not 1"));
        }
        if w.epoch == 0 {
            return Err(bad("epoch 0 is the genesis's"));
        }
        let id = |c: &cid::Cid| EventId::from_cid(c).map_err(|e| bad(&e.to_string()));
        let next = keys_from_wire(&w.next, "next committee")?;
        Ok(Handover {
            timeline: id(&w.tl)?,
            claim: HandoverClaim {
                epoch: w.epoch,
                block: id(&w.block)?,
                next: committee_hash(&next),
            },
            committee: keys_from_wire(&w.committee, "committee")?,
            next,
            by: w.by.iter().map(id).collect::<Result<_, _>>()?,
        })
    }

    /// Checks the handover without the history: its old committee is `known` (the committee
    /// the caller trusts for epoch `claim.epoch − 1`), and every named heartbeat is given (by
    /// `get`, signature-checked events), of this timeline, by a distinct member of `known`,
    /// and claims exactly this handover; at least a quorum (`params`) of them.
    pub fn verify(
        &self,
        genesis: EventId,
        params: FinalityParams,
        known: &[AuthorId],
        get: impl Fn(&EventId) -> Option<SignedEvent>,
    ) -> Result<(), CertificateError> {
        if self.timeline != genesis {
            return Err(CertificateError::OtherTimeline(self.timeline));
        }
        if self.committee != known {
            return Err(CertificateError::Decode(format!(
                "the handover to epoch {} names another committee than epoch {}'s",
                self.claim.epoch,
                self.claim.epoch.saturating_sub(1)
            )));
        }
        check_signers(genesis, params, &self.committee, &self.by, get, |ev| {
            match HandoverClaim::from_body(&ev.body) {
                Some(Ok(c)) if c == self.claim => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
    }
}

/// What a replica gathers from the handover claims in the heartbeats it holds: every epoch's
/// start as its own final prefix fixed it, the open tallies, the handovers certified (one per
/// epoch, every epoch kept: a snapshot of epoch `e` carries handovers `1..=e`).
#[derive(Debug, Clone)]
pub struct Handovers {
    /// `epochs[e]`: the block epoch `e` began at and its committee (`[0]`: the genesis, whose
    /// id is the timeline's).
    epochs: Vec<(EventId, Vec<AuthorId>)>,
    /// The genesis's quorum fraction.
    params: FinalityParams,
    /// Claims of epochs not certified yet: epoch → claim → (author → its heartbeat). Claims
    /// for an epoch this replica has not reached wait here (its events arrive before its
    /// finality does), at most [`MAX_CLAIMS_PER_MEMBER_AND_EPOCH`] per member and epoch, for
    /// epochs the events held can reach.
    open: BTreeMap<u32, BTreeMap<HandoverClaim, BTreeMap<AuthorId, EventId>>>,
    certified: BTreeMap<u32, Handover>,
    conflicts: u64,
    /// (epoch, member) pairs already counted as conflicts.
    lied: std::collections::BTreeSet<(u32, AuthorId)>,
    /// A sabotage run's quorum (the simulator's oracle only): a claim is then certified by
    /// its signers' word, not checked against this replica's own epochs.
    sabotage_quorum: Option<usize>,
}

impl Handovers {
    pub fn new(genesis: EventId, params: FinalityParams, committee: Vec<AuthorId>) -> Self {
        Handovers {
            epochs: vec![(genesis, committee)],
            params,
            open: BTreeMap::new(),
            certified: BTreeMap::new(),
            conflicts: 0,
            lied: Default::default(),
            sabotage_quorum: None,
        }
    }

    /// The replica's own final prefix began `epoch` (the next one) at `block`.
    pub fn epoch_started(&mut self, block: EventId, committee: Vec<AuthorId>) {
        self.epochs.push((block, committee));
        let epoch = (self.epochs.len() - 1) as u32;
        // Claims that waited for this epoch: only the old committee's count, lies are
        // conflicts.
        if let Some(claims) = self.open.remove(&epoch) {
            let old = self.epochs[epoch as usize - 1].1.clone();
            for (claim, by) in claims {
                for (author, hb) in by {
                    if old.binary_search(&author).is_ok() {
                        self.tally(author, hb, claim);
                    }
                }
            }
        }
    }

    /// The truth of `epoch` as this replica's final prefix has it, once reached.
    fn truth(&self, epoch: u32) -> Option<HandoverClaim> {
        let (block, next) = self.epochs.get(epoch as usize)?;
        (epoch > 0).then(|| HandoverClaim {
            epoch,
            block: *block,
            next: committee_hash(next),
        })
    }

    /// Counts `claim` from `author`'s `heartbeat`. `reachable`: the highest epoch the events
    /// held could start (the current one plus every committee-changing event held: each
    /// epoch needs one); claims beyond it are dropped, claims below wait for their epoch.
    pub fn note(
        &mut self,
        author: AuthorId,
        heartbeat: EventId,
        claim: HandoverClaim,
        reachable: u32,
    ) {
        if claim.epoch == 0 || claim.epoch > reachable {
            return;
        }
        if let Some(c) = self.certified.get(&claim.epoch) {
            if c.claim != claim && c.committee.binary_search(&author).is_ok() {
                self.conflict(claim.epoch, author);
            }
            return;
        }
        if (claim.epoch as usize) < self.epochs.len() {
            let old = &self.epochs[claim.epoch as usize - 1].1;
            if old.binary_search(&author).is_ok() {
                self.tally(author, heartbeat, claim);
            }
            return;
        }
        // Not reached yet: kept for when it is (a replica indexes the events before its
        // finality reaches them: a restart replays them all first). An honest member makes
        // one claim an epoch; at most two are kept per member and epoch.
        let open = self.open.entry(claim.epoch).or_default();
        let mine = open.values().filter(|by| by.contains_key(&author)).count();
        if mine < MAX_CLAIMS_PER_MEMBER_AND_EPOCH {
            open.entry(claim).or_default().insert(author, heartbeat);
        }
    }

    /// A member of the old committee of `epoch` claimed something else: counted once per
    /// member and epoch.
    fn conflict(&mut self, epoch: u32, author: AuthorId) {
        if self.lied.insert((epoch, author)) {
            self.conflicts += 1;
        }
    }

    /// `author` (a member of the old committee of `claim.epoch`, which this replica reached)
    /// attests `claim`: certified at a quorum of the old committee, if it is this replica's
    /// own truth; another claim is a conflict.
    fn tally(&mut self, author: AuthorId, heartbeat: EventId, claim: HandoverClaim) {
        let truth = self.truth(claim.epoch).expect("reached");
        if claim != truth {
            self.conflict(claim.epoch, author);
            if self.sabotage_quorum.is_none() {
                return;
            }
        }
        let old = self.epochs[claim.epoch as usize - 1].1.clone();
        let quorum = self
            .sabotage_quorum
            .unwrap_or_else(|| self.params.quorum(old.len()));
        let signers = self
            .open
            .entry(claim.epoch)
            .or_default()
            .entry(claim)
            .or_default();
        signers.insert(author, heartbeat);
        if signers.len() >= quorum {
            let mut by: Vec<EventId> = signers.values().copied().collect();
            by.sort();
            // (Under sabotage a false claim's committee is not known here: the block then
            // names this replica's own beside the false hash, and the oracle sees the lie.)
            let next = self.epochs[claim.epoch as usize].1.clone();
            self.certified.insert(
                claim.epoch,
                Handover {
                    timeline: self.epochs[0].0,
                    claim,
                    committee: old,
                    next,
                    by,
                },
            );
            self.open.remove(&claim.epoch);
        }
    }

    /// What `member` owes after claiming epochs up to `after`: the lowest later epoch this
    /// replica reached whose handover is not certified and whose old committee holds
    /// `member`.
    pub fn owed(&self, member: &AuthorId, after: u32) -> Option<HandoverClaim> {
        (after + 1..self.epochs.len() as u32)
            .filter(|e| !self.certified.contains_key(e))
            .find(|&e| self.epochs[e as usize - 1].1.binary_search(member).is_ok())
            .and_then(|e| self.truth(e))
    }

    /// The handovers certified, by epoch.
    pub fn certified(&self) -> &BTreeMap<u32, Handover> {
        &self.certified
    }

    /// The chain a snapshot of a certificate of `epoch` carries: handovers `1..=epoch`, or
    /// `None` while one of them is not certified here.
    pub fn chain_to(&self, epoch: u32) -> Option<Vec<&Handover>> {
        (1..=epoch).map(|e| self.certified.get(&e)).collect()
    }

    /// Claims of a member of the old committee that differ from this replica's own epochs.
    pub fn conflicts(&self) -> u64 {
        self.conflicts
    }

    /// **Sabotage, for the simulator's oracle only**: certify a claim once `quorum` members of
    /// the old committee made it, without comparing it with this replica's own epochs.
    pub fn sabotage(&mut self, quorum: usize) {
        self.sabotage_quorum = Some(quorum);
    }
}

/// One step of a walk from the genesis committee: `h` must be the handover to `epoch`, from
/// `committee` (the one the walk reached); returns the committee it hands over to. `get`
/// gives signature-checked heartbeats.
pub fn walk_one(
    genesis: EventId,
    params: FinalityParams,
    epoch: u32,
    committee: &[AuthorId],
    h: &Handover,
    get: impl Fn(&EventId) -> Option<SignedEvent>,
) -> Result<Vec<AuthorId>, CertificateError> {
    if h.claim.epoch != epoch {
        return Err(CertificateError::Decode(format!(
            "the chain's handover {epoch} is to epoch {}",
            h.claim.epoch
        )));
    }
    h.verify(genesis, params, committee, get)?;
    Ok(h.next.clone())
}

/// Walks `chain` (handovers `1..=n`, in order) from the genesis committee, each step checked
/// by [`walk_one`]; returns the committee of epoch `n`, or the first epoch that fails and why.
pub fn walk(
    genesis: EventId,
    params: FinalityParams,
    genesis_committee: Vec<AuthorId>,
    chain: &[Handover],
    get: impl Fn(&EventId) -> Option<SignedEvent>,
) -> Result<Vec<AuthorId>, (u32, CertificateError)> {
    let mut committee = genesis_committee;
    for (i, h) in chain.iter().enumerate() {
        let epoch = i as u32 + 1;
        committee =
            walk_one(genesis, params, epoch, &committee, h, &get).map_err(|e| (epoch, e))?;
    }
    Ok(committee)
}
