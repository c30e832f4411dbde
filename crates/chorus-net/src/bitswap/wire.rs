//! Bitswap's wire format: one protobuf `Message` per frame, each frame prefixed with its length
//! as an unsigned varint (the `message.proto` of the Bitswap 1.2.0 spec, field for field).
//!
//! ```text
//! message Message {
//!   message Wantlist {
//!     enum WantType { Block = 0; Have = 1; }
//!     message Entry {
//!       bytes block = 1;          // the CID's bytes
//!       int32 priority = 2;
//!       bool cancel = 3;
//!       WantType wantType = 4;
//!       bool sendDontHave = 5;
//!     }
//!     repeated Entry entries = 1;
//!     bool full = 2;
//!   }
//!   message Block {
//!     bytes prefix = 1;           // CID version, codec, multihash code, digest length (varints)
//!     bytes data = 2;
//!   }
//!   enum BlockPresenceType { Have = 0; DontHave = 1; }
//!   message BlockPresence { bytes cid = 1; BlockPresenceType type = 2; }
//!   Wantlist wantlist = 1;
//!   repeated bytes blocks = 2;    // Bitswap 1.0.0: CIDv0 blocks (read: ignored)
//!   repeated Block payload = 3;
//!   repeated BlockPresence blockPresences = 4;
//!   int32 pendingBytes = 5;
//! }
//! ```
//!
//! A block carries no CID: the receiver computes it from `prefix` and the hash of `data`, so a
//! peer cannot make a block pass for another.

use std::sync::Arc;

use cid::Cid;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use prost::Message as _;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The multihash code of sha2-256: the only hash this node computes to check a block.
pub const SHA2_256: u64 = 0x12;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    #[prost(message, optional, tag = "1")]
    pub wantlist: Option<Wantlist>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub blocks: Vec<Vec<u8>>,
    #[prost(message, repeated, tag = "3")]
    pub payload: Vec<Block>,
    #[prost(message, repeated, tag = "4")]
    pub block_presences: Vec<BlockPresence>,
    #[prost(int32, tag = "5")]
    pub pending_bytes: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Wantlist {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
    #[prost(bool, tag = "2")]
    pub full: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    #[prost(bytes = "vec", tag = "1")]
    pub block: Vec<u8>,
    #[prost(int32, tag = "2")]
    pub priority: i32,
    #[prost(bool, tag = "3")]
    pub cancel: bool,
    #[prost(enumeration = "WantType", tag = "4")]
    pub want_type: i32,
    #[prost(bool, tag = "5")]
    pub send_dont_have: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
pub enum WantType {
    Block = 0,
    Have = 1,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Block {
    #[prost(bytes = "vec", tag = "1")]
    pub prefix: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct BlockPresence {
    #[prost(bytes = "vec", tag = "1")]
    pub cid: Vec<u8>,
    #[prost(enumeration = "PresenceType", tag = "2")]
    pub r#type: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
pub enum PresenceType {
    Have = 0,
    DontHave = 1,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("reading: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad length prefix: {0}")]
    Length(String),
    #[error("a message of {got} bytes (at most {max})")]
    TooLarge { got: usize, max: usize },
    #[error("not a Bitswap message: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Reads one frame; `None` at a clean end of the stream (between frames). The body is read in
/// chunks of [`READ_CHUNK`], each taking its size (a permit a KiB) from `budget`, shared by
/// every reader, before it is read — so a peer that announces a large frame and sends nothing
/// holds one chunk of the budget, not the frame's size — and the body must arrive within
/// [`BODY_TIMEOUT`]. The permits come back with the message: the caller holds them while it
/// decodes and sorts the message (a decoded message can take many times its size).
pub async fn read<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    budget: &Arc<Semaphore>,
) -> Result<Option<(Message, OwnedSemaphorePermit)>, FrameError> {
    let len = match unsigned_varint::aio::read_usize(&mut *r).await {
        Ok(n) => n,
        Err(unsigned_varint::io::ReadError::Io(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            return Ok(None);
        }
        Err(unsigned_varint::io::ReadError::Io(e)) => return Err(e.into()),
        Err(e) => return Err(FrameError::Length(e.to_string())),
    };
    if len > max {
        return Err(FrameError::TooLarge { got: len, max });
    }
    let closed = |_| std::io::Error::other("the read budget is closed");
    let body = async {
        let mut permit = budget.clone().acquire_many_owned(1).await.map_err(closed)?;
        // Grows with what arrives, not with what the prefix announced.
        let mut buf = Vec::new();
        while buf.len() < len {
            let chunk = (len - buf.len()).min(READ_CHUNK);
            let need = (buf.len() + chunk).div_ceil(1024).max(1);
            if need > permit.num_permits() {
                let more = (need - permit.num_permits()) as u32;
                permit.merge(
                    budget
                        .clone()
                        .acquire_many_owned(more)
                        .await
                        .map_err(closed)?,
                );
            }
            let n = (&mut *r).take(chunk as u64).read_to_end(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
        }
        Ok((buf, permit))
    };
    let (buf, permit) = tokio::time::timeout(BODY_TIMEOUT, body)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(Some((Message::decode(buf.as_slice())?, permit)))
}

/// A frame's body is read and budgeted this much at a time.
pub const READ_CHUNK: usize = 64 * 1024;
/// A frame's body must arrive within this, once its length has.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Writes one frame.
pub async fn write<W: AsyncWrite + Unpin>(w: &mut W, msg: &Message) -> std::io::Result<()> {
    let body = msg.encode_to_vec();
    let mut len = unsigned_varint::encode::usize_buffer();
    w.write_all(unsigned_varint::encode::usize(body.len(), &mut len))
        .await?;
    w.write_all(&body).await?;
    w.flush().await
}

/// The `prefix` of a block under `cid`: everything of the CID but the digest.
pub fn prefix_of(cid: &Cid) -> Vec<u8> {
    let mut out = vec![];
    let mut b = unsigned_varint::encode::u64_buffer();
    for n in [
        u64::from(cid.version()),
        cid.codec(),
        cid.hash().code(),
        u64::from(cid.hash().size()),
    ] {
        out.extend_from_slice(unsigned_varint::encode::u64(n, &mut b));
    }
    out
}

/// The CID of a received block, computed from its prefix and the hash of its bytes. `None`
/// when the prefix is malformed or names a hash other than sha2-256 (such a block cannot be
/// checked here, so it is never taken).
pub fn cid_of(block: &Block) -> Option<Cid> {
    let (version, rest) = unsigned_varint::decode::u64(&block.prefix).ok()?;
    let (codec, rest) = unsigned_varint::decode::u64(rest).ok()?;
    let (code, rest) = unsigned_varint::decode::u64(rest).ok()?;
    let (size, rest) = unsigned_varint::decode::u64(rest).ok()?;
    if !rest.is_empty() || code != SHA2_256 || size != 32 {
        return None;
    }
    let digest = Sha256::digest(&block.data);
    let mh = multihash::Multihash::<64>::wrap(SHA2_256, &digest).ok()?;
    match version {
        0 if codec == 0x70 => Some(Cid::new_v0(mh).ok()?),
        1 => Some(Cid::new_v1(codec, mh)),
        _ => None,
    }
}

/// Whether `cid` names a hash this node can check (sha2-256, 32 bytes).
pub fn checkable(cid: &Cid) -> bool {
    cid.hash().code() == SHA2_256 && cid.hash().size() == 32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_cid(data: &[u8]) -> Cid {
        let mh = multihash::Multihash::<64>::wrap(SHA2_256, &Sha256::digest(data)).unwrap();
        Cid::new_v1(0x55, mh)
    }

    #[test]
    fn a_block_is_named_by_its_bytes_not_by_its_sender() {
        let cid = raw_cid(b"hello");
        let good = Block {
            prefix: prefix_of(&cid),
            data: b"hello".to_vec(),
        };
        assert_eq!(cid_of(&good), Some(cid));
        let forged = Block {
            prefix: prefix_of(&cid),
            data: b"hellO".to_vec(),
        };
        assert_ne!(cid_of(&forged), Some(cid));
        // A hash this node cannot compute is never taken.
        let blake = Block {
            prefix: vec![1, 0x55, 0x1e, 32],
            data: b"hello".to_vec(),
        };
        assert_eq!(cid_of(&blake), None);
        let trailing = Block {
            prefix: [prefix_of(&cid), vec![0]].concat(),
            data: b"hello".to_vec(),
        };
        assert_eq!(cid_of(&trailing), None);
    }

    #[tokio::test]
    async fn frames_round_trip_and_are_bounded() {
        {
            let msg = Message {
                wantlist: Some(Wantlist {
                    entries: vec![Entry {
                        block: raw_cid(b"x").to_bytes(),
                        want_type: WantType::Have as i32,
                        send_dont_have: true,
                        ..Default::default()
                    }],
                    full: false,
                }),
                ..Default::default()
            };
            let mut buf = vec![];
            write(&mut buf, &msg).await.unwrap();
            write(&mut buf, &msg).await.unwrap();
            let budget = Arc::new(Semaphore::new(4));
            let mut r = futures::io::Cursor::new(buf.clone());
            let (one, held) = read(&mut r, 1 << 20, &budget).await.unwrap().unwrap();
            assert_eq!(one, msg);
            assert_eq!(
                budget.available_permits(),
                3,
                "held while the message is worked on"
            );
            drop(held);
            let (two, _) = read(&mut r, 1 << 20, &budget).await.unwrap().unwrap();
            assert_eq!(two, msg);
            assert!(read(&mut r, 1 << 20, &budget).await.unwrap().is_none());
            let mut r = futures::io::Cursor::new(buf.clone());
            assert!(matches!(
                read(&mut r, 4, &budget).await,
                Err(FrameError::TooLarge { max: 4, .. })
            ));
            // A frame cut short is an error, not a message.
            let mut r = futures::io::Cursor::new(buf[..buf.len() / 2 - 1].to_vec());
            assert!(matches!(
                read(&mut r, 1 << 20, &budget).await,
                Err(FrameError::Io(_))
            ));
        }
    }
}
