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

/// A length prefix, or `None` at a clean end of the file (no byte left). A file that ends
/// inside a prefix was cut short: that is an error, not the end.
fn read_varint<R: Read>(r: &mut R) -> Result<Option<usize>, ArchiveError> {
    let mut first = [0u8; 1];
    loop {
        match r.read(&mut first) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    match unsigned_varint::io::read_usize(&mut (&first[..]).chain(r)) {
        Ok(n) => Ok(Some(n)),
        Err(unsigned_varint::io::ReadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Err(ArchiveError::BadCar(
                "the file ends inside a length prefix (cut short?)".into(),
            ))
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
        self.r
            .read_exact(&mut section)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => ArchiveError::BadCar(format!(
                    "the file ends inside a block of {len} bytes (cut short?)"
                )),
                _ => e.into(),
            })?;
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
/// caller's ([`RawBlock::check`]). A line is never read past [`MAX_JSONL_LINE`] bytes: a file
/// that is one endless line is refused at the bound, not loaded whole.
pub fn read_jsonl<R: BufRead>(r: R) -> impl Iterator<Item = Result<RawBlock, ArchiveError>> {
    let mut r = r;
    let mut n = 0u64;
    let mut failed = false;
    let mut buf = Vec::new();
    std::iter::from_fn(move || {
        loop {
            if failed {
                return None;
            }
            n += 1;
            buf.clear();
            let res = (|| {
                let read = (&mut r)
                    .take(MAX_JSONL_LINE as u64 + 1)
                    .read_until(b'\n', &mut buf)?;
                if read == 0 {
                    return Ok(None);
                }
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                } else if buf.len() > MAX_JSONL_LINE {
                    return Err(ArchiveError::BadLine {
                        line: n,
                        why: format!("longer than {MAX_JSONL_LINE} bytes"),
                    });
                }
                let line = std::str::from_utf8(&buf).map_err(|e| ArchiveError::BadLine {
                    line: n,
                    why: format!("not UTF-8: {e}"),
                })?;
                if line.trim().is_empty() {
                    return Ok(Some(None));
                }
                let parsed: JsonlLine =
                    serde_json::from_str(line).map_err(|e| ArchiveError::BadLine {
                        line: n,
                        why: e.to_string(),
                    })?;
                let bytes = B64
                    .decode(parsed.block.as_bytes())
                    .map_err(|e| format!("block is not base64: {e}"));
                Ok(Some(Some(RawBlock {
                    cid: parsed.cid,
                    bytes,
                })))
            })();
            match res {
                Ok(None) => return None,
                Ok(Some(None)) => continue,
                Ok(Some(Some(b))) => return Some(Ok(b)),
                Err(e) => {
                    failed = true;
                    return Some(Err(e));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the bytes a reader hands out.
    struct Counted<R> {
        inner: R,
        read: usize,
    }

    impl<R: Read> Read for Counted<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n;
            Ok(n)
        }
    }

    /// A JSONL "line" of 64 MiB without a newline is refused at the bound, having read little
    /// more than the bound (a live run once read 300 MB whole before the check).
    #[test]
    fn an_endless_jsonl_line_is_refused_at_the_bound() {
        let mut src = Counted {
            inner: io::repeat(b'x').take(64 << 20),
            read: 0,
        };
        let items: Vec<_> = read_jsonl(io::BufReader::new(&mut src)).collect();
        assert_eq!(items.len(), 1);
        match &items[0] {
            Err(ArchiveError::BadLine { line: 1, why }) => assert!(why.contains("longer"), "{why}"),
            other => panic!("expected a refused line, got {other:?}"),
        }
        assert!(src.read < 2 * MAX_JSONL_LINE, "read {} bytes", src.read);
    }

    /// Blank lines are skipped, a last line without a newline is read, and the line numbers
    /// of errors count every line.
    #[test]
    fn jsonl_lines_are_numbered_and_blank_ones_skipped() {
        let text =
            "\n{\"cid\": \"x\", \"block\": \"AAEC\"}\n\n{\"cid\": \"y\", \"block\": \"AwQ=\"}";
        let got: Vec<_> = read_jsonl(text.as_bytes()).map(|b| b.unwrap()).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].bytes.as_deref(), Ok(&[0u8, 1, 2][..]));
        assert_eq!(got[1].cid, "y");
        let bad = "{\"cid\": \"x\", \"block\": \"AAEC\"}\n\nnot json\n";
        let got: Vec<_> = read_jsonl(bad.as_bytes()).collect();
        assert!(
            matches!(got[1], Err(ArchiveError::BadLine { line: 3, .. })),
            "{got:?}"
        );
    }

    /// A CAR cut anywhere ends with an error, except exactly between two sections: the reader
    /// never takes a cut file for a complete one.
    #[test]
    fn a_car_cut_anywhere_but_between_blocks_is_an_error() {
        let blocks: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 200 + i as usize]).collect();
        let ids: Vec<EventId> = blocks.iter().map(|b| EventId::of_block(b)).collect();
        let mut w = CarWriter::new(Vec::new(), &ids[..1]).unwrap();
        let mut boundaries = vec![];
        let mut file = vec![];
        for (id, b) in ids.iter().zip(&blocks) {
            file = w.finish().unwrap();
            boundaries.push(file.len());
            w = CarWriter { out: file.clone() };
            w.write_block(id, b).unwrap();
        }
        file = w.finish().unwrap();
        boundaries.push(file.len());
        for cut in boundaries[0]..=file.len() {
            let r = CarReader::new(&file[..cut]).unwrap();
            let items: Vec<_> = r.collect();
            let complete = items.iter().take_while(|i| i.is_ok()).count();
            let failed = items.iter().any(|i| i.is_err());
            assert_eq!(
                failed,
                !boundaries.contains(&cut),
                "cut at {cut} of {} (boundaries {boundaries:?}): {items:?}",
                file.len()
            );
            assert_eq!(
                complete,
                boundaries.iter().filter(|&&b| b <= cut).count() - 1
            );
        }
    }
}
