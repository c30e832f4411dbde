//! Importing an archive (CARv1 or JSONL blocks, `chorus_core::archive`) into a replica,
//! pipelined: a second thread reads the blocks and checks them (CID, then every context-free
//! check and the signature, on every core) one chunk ahead of the ingest (order, apply, durable
//! commit) on the calling thread. `chorus import` and the ingest bench both run this.
//!
//! Nothing in an archive is trusted: a block whose bytes do not hash to its CID, or that fails
//! a check, is counted by error code (with its CID in the first examples) and the rest goes on.
//! Events whose parents the replica lacks are kept as pending, as from any peer.

use std::sync::mpsc::sync_channel;

use chorus_core::{
    EventError, EventId, Machine, SignedEvent,
    archive::{ArchiveError, RawBlock},
};

use crate::{IngestReport, Replica, ReplicaError, progress::Progress, verify::check_raw_parallel};

/// Blocks checked and ingested per chunk (one group commit each).
pub const IMPORT_CHUNK: usize = 4096;
/// Checked chunks waiting for the ingest: the reader runs at most this far ahead.
const CHUNKS_AHEAD: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading the archive: {0}")]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

/// One checked chunk: each block's CID as the archive named it, and what its check gave.
type Checked = Vec<(String, Result<SignedEvent, EventError>)>;

/// Imports every block of `blocks` into `r`. Returns what the ingest made of them, with
/// `pending` the replica's pending events afterwards. A read error of the archive stops the
/// import; what was ingested before it stays (each chunk is durable on its own).
pub fn import<M: Machine>(
    r: &mut Replica<M>,
    blocks: impl Iterator<Item = Result<RawBlock, ArchiveError>> + Send,
    progress: &mut dyn Progress,
) -> Result<IngestReport, ImportError> {
    // One fold at the end: an archive whose events sort before what is folded (writers one
    // after another, a merge of two exports) costs one rewind, not one per chunk.
    let out = r.fold_once(progress, |r, progress| import_chunks(r, blocks, progress));
    progress.finish();
    out
}

fn import_chunks<M: Machine>(
    r: &mut Replica<M>,
    blocks: impl Iterator<Item = Result<RawBlock, ArchiveError>> + Send,
    progress: &mut dyn Progress,
) -> Result<IngestReport, ImportError> {
    let genesis = r.timeline().genesis_id();
    let mut total = IngestReport::default();
    progress.stage("import", None);
    std::thread::scope(|s| -> Result<(), ImportError> {
        let (tx, rx) = sync_channel::<Checked>(CHUNKS_AHEAD);
        let reader = s.spawn(move || -> Result<(), ArchiveError> {
            let mut raw: Vec<RawBlock> = Vec::with_capacity(IMPORT_CHUNK);
            let send = |raw: &mut Vec<RawBlock>| {
                let checked = check_raw_parallel(raw);
                let out = raw.drain(..).map(|b| b.cid).zip(checked).collect();
                tx.send(out).is_ok()
            };
            for item in blocks {
                match item {
                    Ok(b) => raw.push(b),
                    Err(e) => {
                        // What came before the bad spot is imported; then the error.
                        send(&mut raw);
                        return Err(e);
                    }
                }
                // The ingest stopped (it failed): nothing more to read.
                if raw.len() == IMPORT_CHUNK && !send(&mut raw) {
                    return Ok(());
                }
            }
            send(&mut raw);
            Ok(())
        });
        for chunk in rx {
            progress.add(chunk.len() as u64);
            let mut events = Vec::with_capacity(chunk.len());
            for (cid, res) in chunk {
                match res {
                    Ok(ev) if ev.id() == genesis => total.duplicate += 1,
                    Ok(ev) => events.push(ev),
                    Err(e) => {
                        *total.rejected.entry(e.code()).or_insert(0) += 1;
                        if total.rejected_examples.len() < 20 {
                            total
                                .rejected_examples
                                .push((EventId([0; 32]), format!("{cid}: {e}")));
                        }
                    }
                }
            }
            let rep = r.ingest(events)?;
            total.new += rep.new;
            total.duplicate += rep.duplicate;
            for (k, v) in rep.rejected {
                *total.rejected.entry(k).or_insert(0) += v;
            }
            total.rejected_examples.extend(rep.rejected_examples);
        }
        reader.join().expect("the archive reader does not panic")?;
        Ok(())
    })?;
    total.pending = r.timeline().pending_len() as u64;
    Ok(total)
}
