//! Identifiers: events are named by the SHA-256 digest of their block (the CIDv1 without its
//! constant prefix), authors by their Ed25519 public key.

use std::{fmt, str::FromStr};

use cid::Cid;
use multihash::Multihash;
use sha2::{Digest, Sha256};

/// Multicodec code of DAG-CBOR.
pub const DAG_CBOR: u64 = 0x71;
/// Multihash code of SHA2-256.
pub const SHA2_256: u64 = 0x12;

/// The id of an event: SHA-256 of its encoded block. Its CID is
/// `CIDv1(dag-cbor, sha2-256(block))`; every event has that prefix, so ordering ids by their
/// bytes is ordering CIDs by their bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(pub [u8; 32]);

/// Why a CID cannot name an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidError {
    #[error("not a CID: {0}")]
    Parse(String),
    #[error(
        "CID is not v1 dag-cbor sha2-256 (version {version:?}, codec {codec:#x}, hash {hash:#x})"
    )]
    WrongKind { version: u64, codec: u64, hash: u64 },
}

impl EventId {
    /// The id of an encoded block.
    pub fn of_block(bytes: &[u8]) -> Self {
        EventId(Sha256::digest(bytes).into())
    }

    /// The CIDv1 (dag-cbor, sha2-256) of this event.
    pub fn to_cid(&self) -> Cid {
        let mh = Multihash::<64>::wrap(SHA2_256, &self.0).expect("32-byte digest fits");
        Cid::new_v1(DAG_CBOR, mh)
    }

    /// Accepts only CIDv1 dag-cbor sha2-256 with a 32-byte digest.
    pub fn from_cid(cid: &Cid) -> Result<Self, CidError> {
        let mh = cid.hash();
        let wrong = || CidError::WrongKind {
            version: cid.version() as u64,
            codec: cid.codec(),
            hash: mh.code(),
        };
        if cid.version() != cid::Version::V1 || cid.codec() != DAG_CBOR || mh.code() != SHA2_256 {
            return Err(wrong());
        }
        let digest: [u8; 32] = mh.digest().try_into().map_err(|_| wrong())?;
        Ok(EventId(digest))
    }

    /// First 10 characters of the base32 CID after the common `bafyrei` prefix, for logs.
    pub fn fmt_short(&self) -> String {
        let s = self.to_string();
        s.chars().skip(7).take(10).collect()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_cid())
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.fmt_short())
    }
}

impl FromStr for EventId {
    type Err = CidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let cid = Cid::from_str(s).map_err(|e| CidError::Parse(e.to_string()))?;
        EventId::from_cid(&cid)
    }
}

/// An author: an Ed25519 public key (32 bytes, compressed Edwards point).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AuthorId(pub [u8; 32]);

impl AuthorId {
    /// First 8 hex characters, for logs.
    pub fn fmt_short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for AuthorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hex::encode(self.0))
    }
}

impl fmt::Debug for AuthorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthorId({})", self.fmt_short())
    }
}

impl FromStr for AuthorId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s.trim()).map_err(|e| format!("author key is not hex: {e}"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("author key must be 32 bytes, got {}", b.len()))?;
        Ok(AuthorId(arr))
    }
}

/// Ids travel in sync messages as 32-byte byte strings.
macro_rules! bytes32_serde {
    ($t:ident) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let b = serde_bytes::ByteBuf::deserialize(d)?;
                let arr: [u8; 32] = b
                    .into_vec()
                    .try_into()
                    .map_err(|v: Vec<u8>| serde::de::Error::invalid_length(v.len(), &"32 bytes"))?;
                Ok($t(arr))
            }
        }
    };
}
bytes32_serde!(EventId);
bytes32_serde!(AuthorId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cid_round_trip() {
        let id = EventId::of_block(b"hello");
        let s = id.to_string();
        assert!(s.starts_with("bafyrei"), "{s}");
        assert_eq!(s.parse::<EventId>().unwrap(), id);
        // raw codec (0x55) CIDs do not name events
        let raw = Cid::new_v1(0x55, Multihash::<64>::wrap(SHA2_256, &id.0).unwrap());
        assert!(matches!(
            EventId::from_cid(&raw),
            Err(CidError::WrongKind { .. })
        ));
    }
}
