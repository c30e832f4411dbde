//! Payloads (`payload/1`): bytes that should not live on every disk — an attachment, a long
//! document, a model output above the event bound — kept as IPFS blocks beside the timeline,
//! referenced from an event by CID, and held by `k` full nodes chosen deterministically
//! (docs/design/ipfs.md, "Payloads").
//!
//! ```text
//! root:  { "v": 1, "size": uint, "parts": [link(raw part), …] }   (DAG-CBOR, canonical)
//! part:  raw bytes (codec 0x55, sha2-256), each PART_BYTES but the last;
//!        their concatenation is the payload
//! event: any body with "payload": link(root)
//! ```
//!
//! The machine never sees a payload's bytes, only the link in the event's body: the state
//! hash cannot depend on whether a node holds the payload. Who holds it is
//! [`holders`]: rendezvous hashing of the root CID with each candidate's id, the `k` highest
//! scores; every node that sees the same candidates names the same holders, and a candidate
//! leaving moves only the payloads it held (each to the next-ranked candidate).

use std::collections::BTreeMap;

use ipld_core::ipld::Ipld;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{codec, ids::DAG_CBOR, snapshot::chunk_cid};

/// Bytes per part: a quarter of a MiB, well inside any IPFS node's block bound (1–2 MiB).
pub const PART_BYTES: usize = 256 * 1024;
/// The largest payload taken (64 parts).
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;
/// The most parts a root may name.
pub const MAX_PARTS: usize = MAX_PAYLOAD_BYTES / PART_BYTES;
/// How many full nodes hold each payload, by default.
pub const DEFAULT_COPIES: usize = 3;
/// The body key whose link names an event's payload.
pub const BODY_KEY: &str = "payload";

#[derive(Serialize, Deserialize)]
struct RootWire {
    v: u64,
    size: u64,
    parts: Vec<cid::Cid>,
}

/// A payload cut into blocks, ready to store and serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub root_cid: cid::Cid,
    pub root: Vec<u8>,
    /// The parts in order, with their CIDs.
    pub parts: Vec<(cid::Cid, Vec<u8>)>,
}

/// A payload's root, decoded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub size: u64,
    pub parts: Vec<cid::Cid>,
}

/// Why a payload or its root is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("a payload of {size} bytes: at most {MAX_PAYLOAD_BYTES} are taken")]
    TooLarge { size: u64 },
    #[error("an empty payload: there is nothing to keep")]
    Empty,
    #[error("{0} is not a payload root: a root is a DAG-CBOR block")]
    NotARoot(String),
    #[error("payload root {cid}: {why}")]
    Decode { cid: String, why: String },
    #[error("payload {cid}: part {index} is not a raw sha2-256 block ({part})")]
    BadPart {
        cid: String,
        index: usize,
        part: String,
    },
    #[error("payload {cid}: part {index} holds {got} bytes, {want} expected")]
    PartSize {
        cid: String,
        index: usize,
        got: usize,
        want: usize,
    },
}

/// Cuts `bytes` into a payload's blocks.
pub fn split(bytes: &[u8]) -> Result<Payload, PayloadError> {
    if bytes.is_empty() {
        return Err(PayloadError::Empty);
    }
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(PayloadError::TooLarge {
            size: bytes.len() as u64,
        });
    }
    let parts: Vec<(cid::Cid, Vec<u8>)> = bytes
        .chunks(PART_BYTES)
        .map(|c| (chunk_cid(c), c.to_vec()))
        .collect();
    let root = codec::encode(&RootWire {
        v: 1,
        size: bytes.len() as u64,
        parts: parts.iter().map(|(c, _)| *c).collect(),
    });
    let root_cid = crate::EventId::of_block(&root).to_cid();
    Ok(Payload {
        root_cid,
        root,
        parts,
    })
}

impl Root {
    /// Decodes the root block `bytes` of `cid` (whose hash the caller has checked, as Bitswap
    /// and the store do): canonical DAG-CBOR, version 1, raw sha2-256 parts whose count fits
    /// `size`, within the bounds.
    pub fn decode(cid: &cid::Cid, bytes: &[u8]) -> Result<Root, PayloadError> {
        if cid.codec() != DAG_CBOR {
            return Err(PayloadError::NotARoot(cid.to_string()));
        }
        let bad = |why: String| PayloadError::Decode {
            cid: cid.to_string(),
            why,
        };
        let w: RootWire = codec::decode_canonical(bytes).map_err(|e| bad(e.to_string()))?;
        if w.v != 1 {
            return Err(bad(format!("version {} (this build reads 1)", w.v)));
        }
        if w.size == 0 || w.size > MAX_PAYLOAD_BYTES as u64 {
            return Err(bad(format!(
                "size {} (1 to {MAX_PAYLOAD_BYTES} bytes are taken)",
                w.size
            )));
        }
        let want = (w.size as usize).div_ceil(PART_BYTES);
        if w.parts.len() != want {
            return Err(bad(format!(
                "{} parts for {} bytes ({want} expected)",
                w.parts.len(),
                w.size
            )));
        }
        for (index, part) in w.parts.iter().enumerate() {
            if part.codec() != crate::snapshot::RAW || part.hash().code() != 0x12 {
                return Err(PayloadError::BadPart {
                    cid: cid.to_string(),
                    index,
                    part: part.to_string(),
                });
            }
        }
        Ok(Root {
            size: w.size,
            parts: w.parts,
        })
    }

    /// How many bytes part `index` must hold.
    pub fn part_len(&self, index: usize) -> usize {
        let start = index * PART_BYTES;
        (self.size as usize - start).min(PART_BYTES)
    }

    /// Checks part `index`'s length (its hash is the fetcher's or the store's to check).
    pub fn check_part(
        &self,
        cid: &cid::Cid,
        index: usize,
        bytes: &[u8],
    ) -> Result<(), PayloadError> {
        let want = self.part_len(index);
        if bytes.len() != want {
            return Err(PayloadError::PartSize {
                cid: cid.to_string(),
                index,
                got: bytes.len(),
                want,
            });
        }
        Ok(())
    }
}

/// The payload an event's body names: `"payload": link` to a DAG-CBOR block.
pub fn referenced(body: &Ipld) -> Option<cid::Cid> {
    let Ipld::Map(m) = body else { return None };
    match m.get(BODY_KEY) {
        Some(Ipld::Link(c)) if c.codec() == DAG_CBOR => Some(*c),
        _ => None,
    }
}

/// Who holds payload `root`: the `k` candidates (ids as bytes, e.g. libp2p peer ids) with the
/// highest sha2-256(root CID bytes ‖ id), highest first; all of them when there are `k` or
/// fewer. Duplicates count once.
pub fn holders<'a>(
    root: &cid::Cid,
    candidates: impl IntoIterator<Item = &'a [u8]>,
    k: usize,
) -> Vec<&'a [u8]> {
    let key = root.to_bytes();
    let mut scored: BTreeMap<[u8; 32], &'a [u8]> = BTreeMap::new();
    for c in candidates {
        let mut h = Sha256::new();
        h.update(&key);
        h.update(c);
        scored.insert(h.finalize().into(), c);
    }
    let mut seen = std::collections::BTreeSet::new();
    scored
        .into_iter()
        .rev()
        .map(|(_, c)| c)
        .filter(|c| seen.insert(*c))
        .take(k)
        .collect()
}

/// What a node does about one referenced payload in a placement round (the decision; the
/// node's runtime carries it out: `chorus-node`'s `payloads`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<'a> {
    /// This node is a holder and misses blocks of it: fetch them.
    Fetch,
    /// Nothing to do: a holder with the payload whole, or a non-holder without it.
    Nothing,
    /// Not a holder, and it has the payload: let go once each of these holders answers that it
    /// has the root (a holder writes the root last).
    LetGoOnceHeld(Vec<&'a [u8]>),
}

/// Switches the placement defence off, for sabotage tests only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlacementSabotage {
    /// Let go of a payload as soon as this node is not a holder, without asking the holders.
    pub let_go_unconfirmed: bool,
}

/// The placement decision for `root` on node `me` among `candidates` (this node included if it
/// holds payloads at all), `k` copies; `whole`: this node holds the payload whole; `some`:
/// it holds any of its blocks.
pub fn step<'a>(
    root: &cid::Cid,
    me: &[u8],
    candidates: impl IntoIterator<Item = &'a [u8]>,
    k: usize,
    whole: bool,
    some: bool,
) -> Step<'a> {
    let holders = holders(root, candidates, k);
    if holders.contains(&me) {
        return if whole { Step::Nothing } else { Step::Fetch };
    }
    // Fewer candidates than copies would make every candidate a holder, this one too.
    if !some || holders.len() < k {
        return Step::Nothing;
    }
    Step::LetGoOnceHeld(holders)
}

/// Whether a node may let go, given each holder's answer to "do you have the root?" (`None`:
/// no answer).
pub fn may_let_go(answers: &[Option<bool>], sabotage: PlacementSabotage) -> bool {
    sabotage.let_go_unconfirmed || (!answers.is_empty() && answers.iter().all(|a| *a == Some(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_is_cut_into_bounded_raw_parts_that_the_root_names_in_order() {
        let bytes: Vec<u8> = (0..(5 * 1024 * 1024 + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let p = split(&bytes).unwrap();
        assert_eq!(p.parts.len(), 21);
        assert!(p.parts[..20].iter().all(|(_, b)| b.len() == PART_BYTES));
        assert_eq!(p.parts[20].1.len(), 5 * 1024 * 1024 + 17 - 20 * PART_BYTES);
        let root = Root::decode(&p.root_cid, &p.root).unwrap();
        assert_eq!(root.size, bytes.len() as u64);
        assert_eq!(
            root.parts,
            p.parts.iter().map(|(c, _)| *c).collect::<Vec<_>>()
        );
        for (i, (c, b)) in p.parts.iter().enumerate() {
            assert_eq!(chunk_cid(b), *c);
            root.check_part(c, i, b).unwrap();
        }
        let whole: Vec<u8> = p.parts.iter().flat_map(|(_, b)| b.clone()).collect();
        assert_eq!(whole, bytes);
        assert_eq!(crate::EventId::of_block(&p.root).to_cid(), p.root_cid);
        // The same bytes, the same CIDs.
        assert_eq!(split(&bytes).unwrap().root_cid, p.root_cid);
    }

    #[test]
    fn bad_payloads_and_roots_are_refused_with_their_reason() {
        assert_eq!(split(&[]), Err(PayloadError::Empty));
        assert!(matches!(
            split(&vec![0; MAX_PAYLOAD_BYTES + 1]),
            Err(PayloadError::TooLarge { .. })
        ));
        let p = split(b"hello").unwrap();
        // A raw block is no root.
        let raw = p.parts[0].0;
        assert_eq!(
            Root::decode(&raw, &p.parts[0].1),
            Err(PayloadError::NotARoot(raw.to_string()))
        );
        // A root whose parts do not fit its size.
        let lying = codec::encode(&RootWire {
            v: 1,
            size: (PART_BYTES + 1) as u64,
            parts: vec![raw],
        });
        let cid = crate::EventId::of_block(&lying).to_cid();
        assert!(matches!(
            Root::decode(&cid, &lying),
            Err(PayloadError::Decode { .. })
        ));
        // A root naming a DAG-CBOR block as a part.
        let bad = codec::encode(&RootWire {
            v: 1,
            size: 5,
            parts: vec![p.root_cid],
        });
        let cid = crate::EventId::of_block(&bad).to_cid();
        assert!(matches!(
            Root::decode(&cid, &bad),
            Err(PayloadError::BadPart { .. })
        ));
        // A part of the wrong length.
        let root = Root::decode(&p.root_cid, &p.root).unwrap();
        assert!(matches!(
            root.check_part(&raw, 0, b"hell"),
            Err(PayloadError::PartSize {
                got: 4,
                want: 5,
                ..
            })
        ));
        // Not canonical, another version.
        let v2 = codec::encode(&RootWire {
            v: 2,
            size: 5,
            parts: vec![raw],
        });
        let cid = crate::EventId::of_block(&v2).to_cid();
        assert!(matches!(
            Root::decode(&cid, &v2),
            Err(PayloadError::Decode { .. })
        ));
    }

    #[test]
    fn holders_are_the_same_whatever_the_candidates_order_and_a_leaver_moves_only_its_own() {
        let ids: Vec<Vec<u8>> = (0u8..6).map(|i| vec![i; 8]).collect();
        let mut moved = 0;
        for n in 0..200u32 {
            let root = split(&n.to_le_bytes()).unwrap().root_cid;
            let all = holders(&root, ids.iter().map(Vec::as_slice), 3);
            let reversed = holders(&root, ids.iter().rev().map(Vec::as_slice), 3);
            assert_eq!(all, reversed);
            assert_eq!(all.len(), 3);
            // Candidate 0 leaves: the others keep theirs, and one newcomer at most.
            let rest = holders(&root, ids[1..].iter().map(Vec::as_slice), 3);
            let kept: Vec<_> = all.iter().filter(|c| c[0] != 0).copied().collect();
            assert!(kept.iter().all(|c| rest.contains(c)));
            if all.len() != kept.len() {
                moved += 1;
            }
        }
        // Candidate 0 held about half of them (3 of 6).
        assert!((60..140).contains(&moved), "{moved}");
        // Fewer candidates than copies: all of them.
        let root = split(b"x").unwrap().root_cid;
        assert_eq!(holders(&root, [&b"a"[..], b"b"], 3).len(), 2);
        assert_eq!(holders(&root, [&b"a"[..], b"a"], 3).len(), 1);
    }

    #[test]
    fn only_a_link_under_the_payload_key_to_a_dag_cbor_block_is_a_reference() {
        let p = split(b"hello").unwrap();
        let body = |v: Ipld| Ipld::Map(BTreeMap::from([(BODY_KEY.to_string(), v)]));
        assert_eq!(referenced(&body(Ipld::Link(p.root_cid))), Some(p.root_cid));
        assert_eq!(referenced(&body(Ipld::Link(p.parts[0].0))), None);
        assert_eq!(
            referenced(&body(Ipld::String(p.root_cid.to_string()))),
            None
        );
        assert_eq!(referenced(&Ipld::Link(p.root_cid)), None);
    }
}
