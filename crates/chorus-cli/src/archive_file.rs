//! Archive files the CLI reads (`chorus import`, `chorus node --genesis`): CARv1 or JSONL.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::Path,
};

use anyhow::{Context, Result, bail};
use chorus_core::{
    SignedEvent,
    archive::{self, RawBlock},
    event::kind,
};

/// Blocks of a CAR or JSONL file, told apart by the first byte (`{`: JSONL).
pub fn open(
    path: &Path,
) -> Result<Box<dyn Iterator<Item = Result<RawBlock, archive::ArchiveError>> + Send>> {
    let mut f = BufReader::new(File::open(path).with_context(|| path.display().to_string())?);
    let first = f.fill_buf()?.first().copied();
    Ok(match first {
        Some(b'{') => Box::new(archive::read_jsonl(f)),
        Some(_) => Box::new(archive::CarReader::new(f)?),
        None => bail!("{} is empty", path.display()),
    })
}

/// The first valid genesis event in an archive file.
pub fn genesis_of(path: &Path) -> Result<SignedEvent> {
    for item in open(path)? {
        if let Ok(ev) = item?.check()
            && ev.kind == kind::GENESIS
        {
            return Ok(ev);
        }
    }
    bail!("{} holds no valid genesis", path.display())
}
