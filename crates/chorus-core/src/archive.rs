//! Archive formats for export and import: CARv1 (what IPFS tools read) and JSONL (one event per
//! line, for people and scripts). Both carry the exact block bytes; importers check that each
//! block hashes to the CID it came under and then validate it like any other event.
//!
//! CARv1: `varint(len) ‖ dag-cbor({"roots": [CID…], "version": 1})`, then per block
//! `varint(len(cid) + len(data)) ‖ cid ‖ data` (https://ipld.io/specs/transport/car/carv1/).
//! Roots are the heads at export time; blocks are written in total order, genesis first.
//!
//! JSONL: `{"cid": "bafy…", "lc": 3, "sq": 2, "author": "<hex>", "kind": "stimulus",
//! "block": "<base64 of the block>"}` per line; only `cid` and `block` are read back.

use std::io::{self, BufRead, Read, Write};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use cid::Cid;
use serde::{Deserialize, Serialize};

use crate::{
    codec,
    event::{EventError, SignedEvent},
    ids::EventId,
    limits::MAX_EVENT_BYTES,
};

/// Largest CAR section accepted: a maximal event plus its CID.
pub const MAX_CAR_SECTION: usize = MAX_EVENT_BYTES + 64;
/// Largest CAR header accepted (roots are at most a few hundred heads).
pub const MAX_CAR_HEADER: usize = 1 << 20;
/// Longest JSONL line accepted (base64 of a maximal event plus fields).
pub const MAX_JSONL_LINE: usize = MAX_EVENT_BYTES * 4 / 3 + 1024;

#[derive(Serialize, Deserialize)]
struct CarHeader {
    roots: Vec<Cid>,
    version: u64,
}

/// Archive read failures that stop reading (a bad *block* is not one: it is returned as an item
/// error so the rest can be imported).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("not a CARv1 file: {0}")]
    BadCar(String),
    #[error("line {line}: {why}")]
    BadLine { line: u64, why: String },
}

/// Writes a CARv1 archive.
pub struct CarWriter<W: Write> {
    out: W,
}

impl<W: Write> CarWriter<W> {
    pub fn new(mut out: W, roots: &[EventId]) -> io::Result<Self> {
        let header = codec::encode(&CarHeader {
            roots: roots.iter().map(EventId::to_cid).collect(),
            version: 1,
        });
        out.write_all(unsigned_varint::encode::usize(
            header.len(),
            &mut Default::default(),
        ))?;
        out.write_all(&header)?;
        Ok(CarWriter { out })
    }

    pub fn write(&mut self, ev: &SignedEvent) -> io::Result<()> {
        self.write_block(&ev.id(), ev.bytes())
    }

    /// Any block under its id, decodable or not (a quarantine file holds events that are not).
    pub fn write_block(&mut self, id: &EventId, bytes: &[u8]) -> io::Result<()> {
        let cid = id.to_cid().to_bytes();
        let len = cid.len() + bytes.len();
        self.out
            .write_all(unsigned_varint::encode::usize(len, &mut Default::default()))?;
        self.out.write_all(&cid)?;
        self.out.write_all(bytes)
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

fn read_varint<R: Read>(r: &mut R) -> Result<Option<usize>, ArchiveError> {
    match unsigned_varint::io::read_usize(r) {
        Ok(n) => Ok(Some(n)),
        Err(unsigned_varint::io::ReadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Ok(None)
        }
        Err(e) => Err(ArchiveError::BadCar(e.to_string())),
    }
}

/// One archived block as read: the CID it came under (as written) and its bytes. Nothing is
/// checked yet; see [`RawBlock::check`].
#[derive(Debug, Clone)]
pub struct RawBlock {
    pub cid: String,
    pub bytes: Result<Vec<u8>, String>,
}

impl RawBlock {
    /// The bytes, if they hash to the claimed CID (a CIDv1 dag-cbor sha2-256).
    pub fn check_cid(&self) -> Result<&[u8], EventError> {
        let bytes = self
            .bytes
            .as_ref()
            .map_err(|e| EventError::Encoding(e.clone()))?;
        let claimed = self
            .cid
            .parse::<EventId>()
            .map_err(|_| EventError::CidMismatch {
                claimed: self.cid.clone(),
            })?;
        if EventId::of_block(bytes) != claimed {
            return Err(EventError::CidMismatch {
                claimed: self.cid.clone(),
            });
        }
        Ok(bytes)
    }

    /// CID check, then every context-free event check (canonical form, signature, …).
    pub fn check(&self) -> Result<SignedEvent, EventError> {
        SignedEvent::decode(self.check_cid()?)
    }
}

/// Streams a CARv1 archive: the header is read by [`CarReader::new`], blocks by iteration.
pub struct CarReader<R: Read> {
    r: R,
    pub roots: Vec<Cid>,
    failed: bool,
}

impl<R: Read> CarReader<R> {
    pub fn new(mut r: R) -> Result<Self, ArchiveError> {
        let hlen = read_varint(&mut r)?.ok_or_else(|| ArchiveError::BadCar("empty file".into()))?;
        if hlen > MAX_CAR_HEADER {
            return Err(ArchiveError::BadCar(format!("header of {hlen} bytes")));
        }
        let mut h = vec![0; hlen];
        r.read_exact(&mut h)?;
        let header: CarHeader = serde_ipld_dagcbor::from_slice(&h)
            .map_err(|e| ArchiveError::BadCar(format!("header: {e}")))?;
        if header.version != 1 {
            return Err(ArchiveError::BadCar(format!("version {}", header.version)));
        }
        Ok(CarReader {
            r,
            roots: header.roots,
            failed: false,
        })
    }

    fn next_block(&mut self) -> Result<Option<RawBlock>, ArchiveError> {
        let Some(len) = read_varint(&mut self.r)? else {
            return Ok(None);
        };
        if len > MAX_CAR_SECTION {
            return Err(ArchiveError::BadCar(format!("section of {len} bytes")));
        }
        let mut section = vec![0; len];
        self.r.read_exact(&mut section)?;
        let mut cursor = io::Cursor::new(&section[..]);
        let cid = Cid::read_bytes(&mut cursor).map_err(|e| ArchiveError::BadCar(e.to_string()))?;
        let data = section[cursor.position() as usize..].to_vec();
        Ok(Some(RawBlock {
            cid: cid.to_string(),
            bytes: Ok(data),
        }))
    }
}

impl<R: Read> Iterator for CarReader<R> {
    type Item = Result<RawBlock, ArchiveError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let r = self.next_block().transpose();
        if matches!(r, Some(Err(_))) {
            self.failed = true;
        }
        r
    }
}

#[derive(Serialize, Deserialize)]
struct JsonlLine {
    cid: String,
    #[serde(default)]
    lc: Option<u64>,
    #[serde(default)]
    sq: Option<u64>,
    #[serde(default)]
    author: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    block: String,
}

/// Writes one JSONL line for an event.
pub fn write_jsonl_line<W: Write>(out: &mut W, ev: &SignedEvent) -> io::Result<()> {
    let line = JsonlLine {
        cid: ev.id().to_string(),
        lc: Some(ev.lamport),
        sq: Some(ev.seq),
        author: Some(ev.author.to_string()),
        kind: Some(ev.kind.clone()),
        block: B64.encode(ev.bytes()),
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

/// Streams a JSONL archive. A line that is not JSON with `cid` and `block` is an
/// [`ArchiveError`] (the file is not a Chorus export) and ends the stream; block checks are the
/// caller's ([`RawBlock::check`]).
pub fn read_jsonl<R: BufRead>(r: R) -> impl Iterator<Item = Result<RawBlock, ArchiveError>> {
    let mut failed = false;
    r.lines().enumerate().filter_map(move |(i, line)| {
        if failed {
            return None;
        }
        let n = i as u64 + 1;
        let res = (|| {
            let line = line?;
            if line.trim().is_empty() {
                return Ok(None);
            }
            if line.len() > MAX_JSONL_LINE {
                return Err(ArchiveError::BadLine {
                    line: n,
                    why: format!("{} bytes", line.len()),
                });
            }
            let parsed: JsonlLine =
                serde_json::from_str(&line).map_err(|e| ArchiveError::BadLine {
                    line: n,
                    why: e.to_string(),
                })?;
            let bytes = B64
                .decode(parsed.block.as_bytes())
                .map_err(|e| format!("block is not base64: {e}"));
            Ok(Some(RawBlock {
                cid: parsed.cid,
                bytes,
            }))
        })();
        if res.is_err() {
            failed = true;
        }
        res.transpose()
    })
}
