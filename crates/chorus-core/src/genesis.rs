//! The genesis body: who administers the timeline, who may write, and which machine (with which
//! profile and phase encoder) folds it. Changing any of these makes a different timeline id, so
//! a replay can never silently switch machine or encoder.

use ipld_core::ipld::Ipld;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::{
    codec,
    event::{EventError, SignedEvent, kind},
    ids::AuthorId,
    limits::DEFAULT_CHECKPOINT_INTERVAL,
};

/// The only writer policy of format 1: members (admin, anchors, writers) may write.
pub const WRITER_POLICY_MEMBERS: &str = "members";

/// Parsed genesis body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisBody {
    pub name: String,
    pub admin: ByteBuf,
    pub anchors: Vec<ByteBuf>,
    pub writers: Vec<ByteBuf>,
    pub writer_policy: String,
    /// Machine id with version, e.g. `kairos/1` or `counter/1`.
    pub machine: String,
    /// Machine profile, e.g. `master`.
    pub profile: String,
    /// Phase encoder id with version, e.g. `sha256-fallback/1`.
    pub encoder: String,
    /// Ordered events between machine checkpoints (a local performance knob recorded here so
    /// every replica of a timeline checkpoints at the same keys).
    pub checkpoint_interval: u64,
    /// The order rule: absent (or `lc-cid/1`) for ascending `(lc, cid)` with the settled
    /// frontier, [`ORDER_FINAL_1`] for finality by quorum (docs/design/finality.md). Absent
    /// keys are not encoded, so every genesis made before the field existed keeps its bytes
    /// and its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// `final/1` only: its parameters (absent: a quorum of more than two thirds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finality: Option<FinalityParams>,
    /// Who the nodes talk to: absent for a public timeline (anyone may connect and sync, only
    /// members write), [`ACCESS_MEMBERS_1`] for a private one. Not part of what the timeline
    /// computes (no state depends on it); absent keys are not encoded, so every genesis made
    /// before the field existed keeps its bytes and its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessParams>,
}

/// A private timeline's access rule, fixed in the genesis (docs/design/sync.md, "Private
/// timelines").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessParams {
    /// [`ACCESS_MEMBERS_1`]: a node connects to (and serves sync and gossip to) only peers
    /// whose libp2p identity is a current member's key or one of `readers`.
    pub rule: String,
    /// Read-only keys the admin named: they may connect and replicate, never write.
    #[serde(default)]
    pub readers: Vec<ByteBuf>,
}

/// The members-only access rule.
pub const ACCESS_MEMBERS_1: &str = "members/1";

/// Most read-only keys a genesis may name (each is a libp2p identity nodes keep in memory).
pub const MAX_READERS: usize = 1024;

/// `final/1`'s parameters, fixed in the genesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinalityParams {
    /// `[num, den]`: a quorum is more than `num/den` of the committee, `⌊n·num/den⌋ + 1`
    /// members. `[2, 3]` (the default) is safe with up to `f` Byzantine members of `3f + 1`;
    /// `[1, 2]` (a majority) only with members that crash but never lie, and lets a majority
    /// side of a partition finalize. At least one half, below one.
    pub quorum: [u64; 2],
}

impl FinalityParams {
    /// The quorum of a committee of `n`.
    pub fn quorum(&self, n: usize) -> usize {
        let [num, den] = self.quorum;
        ((n as u64 * num / den + 1) as usize).min(n.max(1))
    }
}

/// The default `final/1` quorum: more than two thirds.
pub const QUORUM_TWO_THIRDS: [u64; 2] = [2, 3];

/// The order rule of a timeline whose genesis names none: ascending `(lc, cid)`.
pub const ORDER_LC_CID_1: &str = "lc-cid/1";
/// Finality by quorum: final segments first, each sorted by `(lc, cid)`, then the tentative
/// events by `(lc, cid)` (docs/design/finality.md).
pub const ORDER_FINAL_1: &str = "final/1";
/// `final/1`'s order, and heartbeats that also attest each committee change (handovers,
/// `finality::handover`), so that a node holding only the genesis can trust a certificate
/// of any later epoch. The order and the state are `final/1`'s, bit for bit; only what
/// heartbeats carry differs.
pub const ORDER_FINAL_2: &str = "final/2";

/// A validated genesis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Genesis {
    pub body: GenesisBody,
    pub admin: AuthorId,
    pub anchors: Vec<AuthorId>,
    pub writers: Vec<AuthorId>,
    /// A private timeline's read-only keys (empty when public).
    pub readers: Vec<AuthorId>,
}

fn key(b: &ByteBuf, what: &str) -> Result<AuthorId, EventError> {
    b.as_slice()
        .try_into()
        .map(AuthorId)
        .map_err(|_| EventError::BadBody {
            kind: kind::GENESIS.into(),
            why: format!("{what} key is not 32 bytes"),
        })
}

impl Genesis {
    /// A genesis body for a new timeline administered (and anchored) by `admin`.
    pub fn new_body(name: &str, admin: AuthorId, machine: &str) -> GenesisBody {
        GenesisBody {
            name: name.to_string(),
            admin: ByteBuf::from(admin.0.to_vec()),
            anchors: vec![ByteBuf::from(admin.0.to_vec())],
            writers: vec![],
            writer_policy: WRITER_POLICY_MEMBERS.into(),
            machine: machine.into(),
            profile: "master".into(),
            encoder: "sha256-fallback/1".into(),
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            order: None,
            finality: None,
            access: None,
        }
    }

    /// The `final/1` quorum fraction `[num, den]` of this genesis.
    pub fn finality_quorum(&self) -> FinalityParams {
        self.body.finality.unwrap_or(FinalityParams {
            quorum: QUORUM_TWO_THIRDS,
        })
    }

    /// Whether the timeline orders by finality (`final/1` or `final/2`; else `lc-cid/1`).
    pub fn is_final_order(&self) -> bool {
        matches!(
            self.body.order.as_deref(),
            Some(ORDER_FINAL_1 | ORDER_FINAL_2)
        )
    }

    /// Whether the committee attests its own changes (`final/2`).
    pub fn has_handovers(&self) -> bool {
        self.body.order.as_deref() == Some(ORDER_FINAL_2)
    }

    /// Whether only members (and the named readers) may connect (`members/1`).
    pub fn is_private(&self) -> bool {
        self.body.access.is_some()
    }

    /// The body as IPLD, ready to put in an event.
    pub fn body_ipld(body: &GenesisBody) -> Ipld {
        let bytes = codec::encode(body);
        serde_ipld_dagcbor::from_slice(&bytes).expect("re-decodes")
    }

    /// Parses and checks a genesis event (whose envelope already passed `SignedEvent::decode`).
    pub fn from_event(ev: &SignedEvent) -> Result<Genesis, EventError> {
        let bad = |why: String| EventError::BadBody {
            kind: kind::GENESIS.into(),
            why,
        };
        if ev.kind != kind::GENESIS {
            return Err(EventError::GenesisShape("first event must be a genesis"));
        }
        let bytes = codec::encode(&ev.body);
        let body: GenesisBody =
            serde_ipld_dagcbor::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        let admin = key(&body.admin, "admin")?;
        if admin != ev.author {
            return Err(bad("genesis must be signed by its admin".into()));
        }
        if body.writer_policy != WRITER_POLICY_MEMBERS {
            return Err(bad(format!(
                "writer_policy {:?} unsupported",
                body.writer_policy
            )));
        }
        match body.order.as_deref() {
            None | Some(ORDER_LC_CID_1 | ORDER_FINAL_1 | ORDER_FINAL_2) => {}
            Some(other) => {
                return Err(bad(format!(
                    "order {other:?} unknown (this build knows {ORDER_LC_CID_1:?}, {ORDER_FINAL_1:?} and {ORDER_FINAL_2:?})"
                )));
            }
        }
        if let Some(f) = &body.finality {
            let [num, den] = f.quorum;
            if !matches!(body.order.as_deref(), Some(ORDER_FINAL_1 | ORDER_FINAL_2)) {
                return Err(bad(
                    "finality parameters need order final/1 or final/2".into()
                ));
            }
            if den == 0 || den > 1000 || num >= den || 2 * num < den {
                return Err(bad(format!(
                    "finality quorum {num}/{den}: must be at least 1/2 and below 1 (denominator up to 1000)"
                )));
            }
        }
        if body.checkpoint_interval == 0 {
            return Err(bad("checkpoint_interval must be > 0".into()));
        }
        let anchors = body
            .anchors
            .iter()
            .map(|k| key(k, "anchor"))
            .collect::<Result<Vec<_>, _>>()?;
        let writers = body
            .writers
            .iter()
            .map(|k| key(k, "writer"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut readers = vec![];
        if let Some(a) = &body.access {
            if a.rule != ACCESS_MEMBERS_1 {
                return Err(bad(format!(
                    "access rule {:?} unknown (this build knows {ACCESS_MEMBERS_1:?})",
                    a.rule
                )));
            }
            if a.readers.len() > MAX_READERS {
                return Err(bad(format!(
                    "{} readers: at most {MAX_READERS}",
                    a.readers.len()
                )));
            }
            readers = a
                .readers
                .iter()
                .map(|k| key(k, "reader"))
                .collect::<Result<Vec<_>, _>>()?;
        }
        Ok(Genesis {
            body,
            admin,
            anchors,
            writers,
            readers,
        })
    }
}
