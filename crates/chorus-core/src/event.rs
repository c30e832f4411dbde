//! The event envelope of `docs/design/event-format.md`: encoding, signing and the checks that
//! need nothing but the bytes. Checks that need the timeline live in `timeline.rs`.

use std::sync::Arc;

use cid::Cid;
use ipld_core::ipld::Ipld;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::{
    codec::{self, CodecError},
    crypto::{self, KeyCache, Keypair, VerifyError},
    ids::{AuthorId, EventId},
    limits::{
        MAX_BODY_BYTES, MAX_COUNTER, MAX_ENVELOPE_BYTES, MAX_EVENT_BYTES, MAX_KIND_BYTES,
        MAX_PARENTS,
    },
};

// A body within its bound always fits an event, whatever the envelope holds (16 parents, the
// largest counters, the longest kind): so a local write refused for its size is always refused
// for its *body*, which the writer controls, never for the envelope around it.
const _: () = assert!(MAX_BODY_BYTES + MAX_ENVELOPE_BYTES <= MAX_EVENT_BYTES);

/// Well-known kinds.
pub mod kind {
    pub const GENESIS: &str = "genesis";
    pub const STIMULUS: &str = "stimulus";
    pub const INTENT: &str = "intent";
    pub const MEMBER: &str = "member";
    pub const EMISSARY: &str = "emissary";
    pub const CHECKPOINT: &str = "checkpoint";
    pub const HEARTBEAT: &str = "heartbeat";
    /// A request to widen a stimulus's election (`kairos/2`).
    pub const ESCALATE: &str = "escalate";
    /// A committee member's vote to take a member off the finality committee or put it back
    /// (`final/1`; docs/design/finality.md, "Membership changes").
    pub const VOTE: &str = "vote";
}

/// Current format version.
pub const FORMAT_VERSION: u64 = 1;

/// Every way an event can be refused. Each variant is counted separately by the timeline, and
/// belongs to one [`ErrorClass`]: whether the bytes alone are wrong, the event is wrong for
/// this timeline, or this node cannot take it now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    #[error("event is {size} bytes, more than the 65536-byte limit")]
    TooLarge { size: usize },
    #[error("bad encoding: {0}")]
    Encoding(String),
    #[error("not canonical DAG-CBOR")]
    NonCanonical,
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u64),
    #[error("bad kind {0:?}: a kind is 1 to 32 bytes of a-z, 0-9, '_' and '-'")]
    BadKind(String),
    #[error("body is {size} bytes, more than the 49152-byte limit")]
    BodyTooLarge { size: usize },
    #[error("{count} parents, more than 16")]
    TooManyParents { count: usize },
    #[error("non-genesis event without parents")]
    NoParents,
    #[error("parents are not sorted and unique")]
    ParentsNotSorted,
    #[error("genesis/timeline shape: {0}")]
    GenesisShape(&'static str),
    #[error("sq or lc out of range")]
    CounterRange,
    #[error("author key is not a valid Ed25519 public key")]
    BadAuthorKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("event belongs to timeline {found}, not this one")]
    WrongTimeline { found: String },
    #[error("sq {sq} does not follow the author's chain: {why}")]
    BadSeq { sq: u64, why: &'static str },
    #[error("lc {found} but max(parents.lc)+1 = {expected}")]
    BadLamport { found: u64, expected: u64 },
    #[error("author {0} is not a member in the event's causal past")]
    UnknownAuthor(String),
    #[error("member events must be signed by the admin")]
    NotAdmin,
    #[error("bad {kind} body: {why}")]
    BadBody { kind: String, why: String },
    #[error("block does not hash to the CID it came under ({claimed})")]
    CidMismatch { claimed: String },
    #[error("pending set is full ({events} events); event not taken, retry later")]
    PendingFull { events: usize },
    #[error(
        "{author} is named by no membership change here and already has {held} events waiting \
         for their parents (or all such keys {total}); event not taken, retry later"
    )]
    StrangerQuota {
        author: String,
        held: usize,
        total: usize,
    },
}

/// What kind of refusal an [`EventError`] is, which decides who is to blame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The bytes alone are wrong (size, encoding, shape, signature, CID): any node refuses
    /// them, whatever it holds. Whoever sent them is charged.
    Decode,
    /// Well-formed but wrong for this timeline, decided from the event's causal past (which
    /// every honest node sees the same way). Whoever sent them is charged.
    Validation,
    /// Nothing is wrong with the event: this node cannot take it now (a bound on what it
    /// holds). Nobody is charged, and it is not forwarded; the sender may retry, and sync
    /// brings it again once there is room.
    BackPressure,
}

impl EventError {
    /// Which kind of refusal this is.
    pub fn class(&self) -> ErrorClass {
        match self {
            EventError::TooLarge { .. }
            | EventError::Encoding(_)
            | EventError::NonCanonical
            | EventError::UnsupportedVersion(_)
            | EventError::BadKind(_)
            | EventError::BodyTooLarge { .. }
            | EventError::TooManyParents { .. }
            | EventError::NoParents
            | EventError::ParentsNotSorted
            | EventError::GenesisShape(_)
            | EventError::CounterRange
            | EventError::BadAuthorKey
            | EventError::BadSignature
            | EventError::CidMismatch { .. } => ErrorClass::Decode,
            EventError::WrongTimeline { .. }
            | EventError::BadSeq { .. }
            | EventError::BadLamport { .. }
            | EventError::UnknownAuthor(_)
            | EventError::NotAdmin
            | EventError::BadBody { .. } => ErrorClass::Validation,
            EventError::PendingFull { .. } | EventError::StrangerQuota { .. } => {
                ErrorClass::BackPressure
            }
        }
    }

    /// Stable name of the variant, used as the counter key and in reports.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::TooLarge { .. } => "too_large",
            EventError::Encoding(_) => "encoding",
            EventError::NonCanonical => "non_canonical",
            EventError::UnsupportedVersion(_) => "unsupported_version",
            EventError::BadKind(_) => "bad_kind",
            EventError::BodyTooLarge { .. } => "body_too_large",
            EventError::TooManyParents { .. } => "too_many_parents",
            EventError::NoParents => "no_parents",
            EventError::ParentsNotSorted => "parents_not_sorted",
            EventError::GenesisShape(_) => "genesis_shape",
            EventError::CounterRange => "counter_range",
            EventError::BadAuthorKey => "bad_author_key",
            EventError::BadSignature => "bad_signature",
            EventError::WrongTimeline { .. } => "wrong_timeline",
            EventError::BadSeq { .. } => "bad_seq",
            EventError::BadLamport { .. } => "bad_lamport",
            EventError::UnknownAuthor(_) => "unknown_author",
            EventError::NotAdmin => "not_admin",
            EventError::BadBody { .. } => "bad_body",
            EventError::CidMismatch { .. } => "cid_mismatch",
            EventError::PendingFull { .. } => "pending_full",
            EventError::StrangerQuota { .. } => "stranger_quota",
        }
    }
}

/// The wire form. Field order is irrelevant (the encoder sorts keys canonically); names are the
/// one-or-two-letter keys of the format.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    b: Ipld,
    k: String,
    v: u64,
    au: ByteBuf,
    lc: u64,
    pa: Vec<Cid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sg: Option<ByteBuf>,
    sq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tl: Option<Cid>,
}

/// The fields of an event, decoded. Build one, then [`UnsignedEvent::sign`] it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnsignedEvent {
    /// Genesis CID of the timeline; `None` only for the genesis itself.
    pub timeline: Option<EventId>,
    pub author: AuthorId,
    pub seq: u64,
    pub lamport: u64,
    /// Sorted, unique.
    pub parents: Vec<EventId>,
    pub kind: String,
    pub body: Ipld,
}

impl UnsignedEvent {
    fn to_wire(&self, sig: Option<&[u8; 64]>) -> Wire {
        Wire {
            b: self.body.clone(),
            k: self.kind.clone(),
            v: FORMAT_VERSION,
            au: ByteBuf::from(self.author.0.to_vec()),
            lc: self.lamport,
            pa: self.parents.iter().map(EventId::to_cid).collect(),
            sg: sig.map(|s| ByteBuf::from(s.to_vec())),
            sq: self.seq,
            tl: self.timeline.as_ref().map(EventId::to_cid),
        }
    }

    /// The bytes covered by the signature (the map without `sg`).
    pub fn signing_payload(&self) -> Vec<u8> {
        codec::encode(&self.to_wire(None))
    }

    /// Signs and then runs on the block every context-free check [`SignedEvent::decode`] runs
    /// for a peer's event (all but re-verifying the signature just made): the one way local
    /// events are made, so this node never signs an event its peers would refuse.
    pub fn sign_checked(self, key: &Keypair) -> Result<SignedEvent, EventError> {
        check_content(&self.kind, &self.body)?;
        let ev = self.sign(key);
        SignedEvent::decode_unverified(ev.bytes())?;
        Ok(ev)
    }

    /// Signs with `key` (whose public key must be `author`) and encodes the block, without any
    /// check: the result may be an event every peer refuses. Tests and adversaries need that;
    /// everything else uses [`sign_checked`](Self::sign_checked).
    pub fn sign(self, key: &Keypair) -> SignedEvent {
        let sig = key.sign_event(&self.signing_payload());
        let bytes: Arc<[u8]> = codec::encode(&self.to_wire(Some(&sig))).into();
        SignedEvent {
            id: EventId::of_block(&bytes),
            bytes,
            event: Arc::new(Event {
                fields: self,
                signature: sig,
            }),
        }
    }
}

/// A decoded event with its signature.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub fields: UnsignedEvent,
    pub signature: [u8; 64],
}

impl std::ops::Deref for Event {
    type Target = UnsignedEvent;
    fn deref(&self) -> &UnsignedEvent {
        &self.fields
    }
}

/// An event together with its exact block bytes and id. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SignedEvent {
    id: EventId,
    bytes: Arc<[u8]>,
    event: Arc<Event>,
}

impl PartialEq for SignedEvent {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl SignedEvent {
    /// Decodes a block and runs every check that needs only the bytes (steps 1–9 of the
    /// format's validation order), including the signature.
    pub fn decode(bytes: &[u8]) -> Result<SignedEvent, EventError> {
        Self::decode_cached(bytes, &mut KeyCache::default())
    }

    /// [`decode`](Self::decode) reusing decompressed author keys.
    pub fn decode_cached(bytes: &[u8], keys: &mut KeyCache) -> Result<SignedEvent, EventError> {
        let ev = Self::decode_unverified(bytes)?;
        let sig_payload = ev.event.signing_payload();
        crypto::verify_event_cached(&ev.event.author, &sig_payload, &ev.event.signature, keys)
            .map_err(|e| match e {
                VerifyError::BadKey => EventError::BadAuthorKey,
                VerifyError::BadSignature => EventError::BadSignature,
            })?;
        Ok(ev)
    }

    /// Like [`decode`](Self::decode) but without the signature check: for blocks read back from
    /// our own store, which were verified before they were written. `chorus verify` re-checks.
    pub fn decode_trusted(bytes: &[u8]) -> Result<SignedEvent, EventError> {
        Self::decode_unverified(bytes)
    }

    fn decode_unverified(bytes: &[u8]) -> Result<SignedEvent, EventError> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(EventError::TooLarge { size: bytes.len() });
        }
        let wire: Wire = codec::decode_canonical(bytes).map_err(|e| match e {
            CodecError::NonCanonical => EventError::NonCanonical,
            CodecError::Decode(s) => EventError::Encoding(s),
        })?;
        if wire.v != FORMAT_VERSION {
            return Err(EventError::UnsupportedVersion(wire.v));
        }
        check_kind(&wire.k)?;
        // The body is a strict part of the block, so only a block larger than the body limit
        // can hold a body over it.
        if bytes.len() > MAX_BODY_BYTES {
            let body_len = codec::encode(&wire.b).len();
            if body_len > MAX_BODY_BYTES {
                return Err(EventError::BodyTooLarge { size: body_len });
            }
        }
        let author = AuthorId(
            wire.au
                .as_slice()
                .try_into()
                .map_err(|_| EventError::Encoding("au is not 32 bytes".into()))?,
        );
        let signature: [u8; 64] = wire
            .sg
            .as_ref()
            .ok_or_else(|| EventError::Encoding("missing sg".into()))?
            .as_slice()
            .try_into()
            .map_err(|_| EventError::Encoding("sg is not 64 bytes".into()))?;
        let mut parents = Vec::with_capacity(wire.pa.len());
        for cid in &wire.pa {
            parents.push(
                EventId::from_cid(cid).map_err(|e| EventError::Encoding(format!("parent: {e}")))?,
            );
        }
        let timeline = match &wire.tl {
            Some(cid) => {
                Some(EventId::from_cid(cid).map_err(|e| EventError::Encoding(format!("tl: {e}")))?)
            }
            None => None,
        };
        if parents.len() > MAX_PARENTS {
            return Err(EventError::TooManyParents {
                count: parents.len(),
            });
        }
        if parents.windows(2).any(|w| w[0] >= w[1]) {
            return Err(EventError::ParentsNotSorted);
        }
        if wire.sq > MAX_COUNTER || wire.lc > MAX_COUNTER {
            return Err(EventError::CounterRange);
        }
        if wire.sq == 0 {
            return Err(EventError::GenesisShape("sq must be at least 1"));
        }
        if wire.k == kind::GENESIS {
            if timeline.is_some() || !parents.is_empty() || wire.sq != 1 || wire.lc != 0 {
                return Err(EventError::GenesisShape(
                    "genesis has no tl, no parents, sq 1, lc 0",
                ));
            }
        } else {
            if timeline.is_none() {
                return Err(EventError::GenesisShape("non-genesis event without tl"));
            }
            if parents.is_empty() {
                return Err(EventError::NoParents);
            }
        }
        let fields = UnsignedEvent {
            timeline,
            author,
            seq: wire.sq,
            lamport: wire.lc,
            parents,
            kind: wire.k,
            body: wire.b,
        };
        Ok(SignedEvent {
            id: EventId::of_block(bytes),
            bytes: bytes.into(),
            event: Arc::new(Event { fields, signature }),
        })
    }

    pub fn id(&self) -> EventId {
        self.id
    }

    /// The exact block bytes (what the CID hashes).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Shared handle on the block bytes.
    pub fn bytes_arc(&self) -> Arc<[u8]> {
        self.bytes.clone()
    }

    pub fn event(&self) -> &Event {
        &self.event
    }

    /// The body's `text` field, if it is a map holding one.
    pub fn text(&self) -> Option<&str> {
        body_text(&self.event.body)
    }
}

impl std::ops::Deref for SignedEvent {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.event
    }
}

/// The `text` field of a map body.
pub fn body_text(body: &Ipld) -> Option<&str> {
    match body {
        Ipld::Map(m) => match m.get("text") {
            Some(Ipld::String(s)) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// The context-free checks on what the writer of a local event chooses (the kind and the body),
/// as [`SignedEvent::decode`] runs them: a batch of local writes is checked item by item with
/// this before any of it is signed, so a refused batch changes nothing. A local event is never
/// a genesis (that is `chorus init`'s), so that kind is refused here too.
pub fn check_content(kind: &str, body: &Ipld) -> Result<(), EventError> {
    check_kind(kind)?;
    if kind == kind::GENESIS {
        return Err(EventError::GenesisShape(
            "a genesis is made only by `chorus init`, never appended",
        ));
    }
    let size = codec::encode(body).len();
    if size > MAX_BODY_BYTES {
        return Err(EventError::BodyTooLarge { size });
    }
    Ok(())
}

fn check_kind(k: &str) -> Result<(), EventError> {
    let ok = !k.is_empty()
        && k.len() <= MAX_KIND_BYTES
        && k.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(EventError::BadKind(k.chars().take(40).collect()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn sample(key: &Keypair) -> SignedEvent {
        let mut m = BTreeMap::new();
        m.insert("text".to_string(), Ipld::String("hello world".into()));
        UnsignedEvent {
            timeline: Some(EventId::of_block(b"genesis")),
            author: key.author(),
            seq: 2,
            lamport: 5,
            parents: vec![EventId::of_block(b"p1"), EventId::of_block(b"p2")]
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
            kind: kind::STIMULUS.into(),
            body: Ipld::Map(m),
        }
        .sign(key)
    }

    #[test]
    fn round_trip_is_byte_exact_and_deterministic() {
        let key = Keypair::from_seed([7; 32]);
        let ev = sample(&key);
        let back = SignedEvent::decode(ev.bytes()).unwrap();
        assert_eq!(back.id(), ev.id());
        assert_eq!(back.event(), ev.event());
        assert_eq!(sample(&key).bytes(), ev.bytes(), "signing is deterministic");
        assert_eq!(back.text(), Some("hello world"));
    }

    #[test]
    fn every_single_bit_flip_is_rejected_with_a_typed_error() {
        let key = Keypair::from_seed([9; 32]);
        let ev = sample(&key);
        let bytes = ev.bytes().to_vec();
        let mut codes = BTreeMap::new();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            let err = SignedEvent::decode(&b).expect_err("a flipped bit must be rejected");
            *codes.entry(err.code()).or_insert(0u32) += 1;
        }
        // The signature covers everything else, so most flips end there; the rest fail earlier.
        assert!(codes.contains_key("bad_signature"), "{codes:?}");
        assert!(
            codes.len() >= 3,
            "several distinct typed errors expected: {codes:?}"
        );
    }

    #[test]
    fn oversize_is_refused_before_decoding() {
        let junk = vec![0xffu8; MAX_EVENT_BYTES + 1];
        assert_eq!(
            SignedEvent::decode(&junk).unwrap_err(),
            EventError::TooLarge { size: junk.len() }
        );
    }

    /// The envelope bound behind `MAX_ENVELOPE_BYTES`: the largest envelope there is (16
    /// parents, counters at their limit, a 32-byte kind) around a body of exactly
    /// `MAX_BODY_BYTES` is a valid event.
    #[test]
    fn a_body_within_its_bound_always_fits_an_event() {
        let key = Keypair::from_seed([3; 32]);
        // A map holding one byte string, sized so the body encodes to exactly the limit.
        let body_of = |n: usize| {
            let mut m = BTreeMap::new();
            m.insert("x".to_string(), Ipld::Bytes(vec![7; n]));
            Ipld::Map(m)
        };
        let mut n = MAX_BODY_BYTES - 16;
        while codec::encode(&body_of(n + 1)).len() <= MAX_BODY_BYTES {
            n += 1;
        }
        let body = body_of(n);
        assert_eq!(codec::encode(&body).len(), MAX_BODY_BYTES);
        let mut parents: Vec<EventId> = (0..MAX_PARENTS as u8)
            .map(|i| EventId::of_block(&[i]))
            .collect();
        parents.sort();
        let ev = UnsignedEvent {
            timeline: Some(EventId::of_block(b"genesis")),
            author: key.author(),
            seq: MAX_COUNTER,
            lamport: MAX_COUNTER,
            parents,
            kind: "k".repeat(MAX_KIND_BYTES),
            body,
        };
        let signed = ev
            .clone()
            .sign_checked(&key)
            .expect("a worst-case envelope fits");
        assert!(signed.bytes().len() <= MAX_BODY_BYTES + MAX_ENVELOPE_BYTES);
        SignedEvent::decode(signed.bytes()).expect("and a peer takes it");
        // One byte more of body is refused for the body, before anything is signed.
        let mut over = ev;
        over.body = body_of(n + 1);
        assert!(matches!(
            over.sign_checked(&key).unwrap_err(),
            EventError::BodyTooLarge { .. }
        ));
    }

    #[test]
    fn sign_checked_refuses_what_decode_refuses() {
        let key = Keypair::from_seed([4; 32]);
        let mut ev = sample(&key).event().fields.clone();
        ev.kind = "Bad Kind!".into();
        let unchecked = ev.clone().sign(&key);
        assert_eq!(
            SignedEvent::decode(unchecked.bytes()).unwrap_err(),
            ev.clone().sign_checked(&key).unwrap_err()
        );
        ev.kind = kind::STIMULUS.into();
        ev.parents.reverse();
        assert_eq!(
            ev.sign_checked(&key).unwrap_err(),
            EventError::ParentsNotSorted
        );
    }

    #[test]
    fn unsorted_parents_and_bad_kinds_are_refused() {
        let key = Keypair::from_seed([1; 32]);
        let mut ev = sample(&key).event().fields.clone();
        ev.parents.reverse();
        assert_eq!(
            SignedEvent::decode(ev.clone().sign(&key).bytes()).unwrap_err(),
            EventError::ParentsNotSorted
        );
        ev.parents.reverse();
        ev.kind = "Shout!".into();
        assert!(matches!(
            SignedEvent::decode(ev.sign(&key).bytes()).unwrap_err(),
            EventError::BadKind(_)
        ));
    }
}
