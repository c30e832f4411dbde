//! Signature verification on every core: decoding a block (CID, canonical form, Ed25519) is the
//! dominant cost of ingesting foreign events, and it is independent per block, so a batch is
//! split across scoped threads. Results keep the input order; validity does not depend on how
//! the batch is split (each block is checked alone, with `verify_strict`).

use chorus_core::{EventError, SignedEvent, crypto::KeyCache};

/// Most threads used for verification.
pub const MAX_VERIFY_THREADS: usize = 8;
/// Below this many blocks a batch is decoded on the calling thread.
pub const PARALLEL_MIN_BLOCKS: usize = 64;

/// Decodes and verifies every block, in parallel when the batch is large enough.
pub fn decode_parallel<B: AsRef<[u8]> + Sync>(
    blocks: &[B],
) -> Vec<Result<SignedEvent, EventError>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_VERIFY_THREADS);
    if threads == 1 || blocks.len() < PARALLEL_MIN_BLOCKS {
        let mut keys = KeyCache::default();
        return blocks
            .iter()
            .map(|b| SignedEvent::decode_cached(b.as_ref(), &mut keys))
            .collect();
    }
    let per = blocks.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = blocks
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    let mut keys = KeyCache::default();
                    chunk
                        .iter()
                        .map(|b| SignedEvent::decode_cached(b.as_ref(), &mut keys))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("decoding does not panic"))
            .collect()
    })
}

/// Checks archived blocks (CID, then every context-free event check) in parallel. Each block
/// is hashed once; only blocks whose CID matches go on to the signature check.
pub fn check_raw_parallel(
    raw: &[chorus_core::archive::RawBlock],
) -> Vec<Result<SignedEvent, EventError>> {
    let cids: Vec<Result<&[u8], EventError>> = raw.iter().map(|r| r.check_cid()).collect();
    let good: Vec<&[u8]> = cids
        .iter()
        .filter_map(|c| c.as_ref().ok().copied())
        .collect();
    let mut decoded = decode_parallel(&good).into_iter();
    cids.into_iter()
        .map(|c| match c {
            Ok(_) => decoded.next().expect("one decode per matching block"),
            Err(e) => Err(e),
        })
        .collect()
}
