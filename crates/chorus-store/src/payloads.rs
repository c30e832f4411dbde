//! Payload blocks on disk (`chorus_core::payload`): one file a block under
//! `<data dir>/payloads/`, named by its CID (base32), beside the redb store and not in it — a
//! payload is held by `k` nodes, fetched and dropped as holders come and go, and its
//! megabytes have no business in the timeline's transactions.
//!
//! Invariants:
//! * A file's bytes hash to the CID it is named by: written to a temporary name, synced, then
//!   renamed (and the directory synced), so a crash leaves the block whole or absent; a read
//!   checks the hash again and treats a damaged file as absent (and removes it).
//! * A payload is **held** when its root block and every part it names are here. Its parts are
//!   written before its root, so a root on disk means the parts were all written.
//! * Only sha2-256 CIDs of raw or DAG-CBOR blocks are kept: what can be checked here.
//! * Writes of whole payloads and removals take one lock (per directory handle and its
//!   clones), so a removal never takes a part that an upload running beside it shares.

use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use chorus_core::payload::{Payload, Root};
use cid::Cid;

/// The directory under a node's data dir.
pub const PAYLOAD_DIR: &str = "payloads";

/// The payload blocks of one node.
#[derive(Debug, Clone)]
pub struct PayloadDir {
    dir: PathBuf,
    /// Held by whole-payload writes and removals.
    lock: Arc<Mutex<()>>,
}

/// Tells temporary files apart (two writes of one block at once, e.g. an upload beside a
/// fetch, never share one).
static TEMP: AtomicU64 = AtomicU64::new(0);

/// Whether `bytes` hash to `cid` (sha2-256 only).
pub fn matches(cid: &Cid, bytes: &[u8]) -> bool {
    use sha2::Digest;
    cid.hash().code() == 0x12 && cid.hash().digest() == sha2::Sha256::digest(bytes).as_slice()
}

impl PayloadDir {
    /// The payload directory of the data dir `data`, made if missing.
    pub fn open(data: &Path) -> std::io::Result<PayloadDir> {
        let dir = data.join(PAYLOAD_DIR);
        std::fs::create_dir_all(&dir)?;
        // Temporary files of writes a crash cut short.
        for e in std::fs::read_dir(&dir)?.flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(PayloadDir {
            dir,
            lock: Default::default(),
        })
    }

    fn path(&self, cid: &Cid) -> PathBuf {
        self.dir.join(cid.to_string())
    }

    /// Writes one block, durably; `false` (nothing written) when its bytes do not hash to `cid`.
    /// A block already here is not written again, but its time is renewed (an upload of the
    /// same bytes starts its grace again).
    pub fn put(&self, cid: &Cid, bytes: &[u8]) -> std::io::Result<bool> {
        if !matches(cid, bytes) {
            return Ok(false);
        }
        let path = self.path(cid);
        if path.exists() {
            let f = std::fs::File::options().write(true).open(&path)?;
            f.set_modified(SystemTime::now())?;
            return Ok(true);
        }
        let n = TEMP.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!("{cid}.{}.{n}.tmp", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(true)
    }

    /// Writes a whole payload: its parts, then its root.
    pub fn put_payload(&self, p: &Payload) -> std::io::Result<()> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        for (cid, bytes) in &p.parts {
            self.put(cid, bytes)?;
        }
        self.put(&p.root_cid, &p.root)?;
        Ok(())
    }

    /// One block, if held whole.
    pub fn get(&self, cid: &Cid) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.path(cid)).ok()?;
        if matches(cid, &bytes) {
            return Some(bytes);
        }
        tracing::warn!(%cid, "payload block damaged on disk: removed");
        let _ = std::fs::remove_file(self.path(cid));
        None
    }

    /// Whether the block is here (not read).
    pub fn has(&self, cid: &Cid) -> bool {
        self.path(cid).exists()
    }

    /// The decoded root of payload `root`, if its root block is here.
    pub fn root(&self, root: &Cid) -> Option<Root> {
        Root::decode(root, &self.get(root)?).ok()
    }

    /// Whether payload `root` is held whole (its root and every part).
    pub fn holds(&self, root: &Cid) -> bool {
        self.root(root)
            .is_some_and(|r| r.parts.iter().all(|p| self.has(p)))
    }

    /// When the root block of `root` was written (its file's time), if here.
    pub fn written(&self, root: &Cid) -> Option<SystemTime> {
        std::fs::metadata(self.path(root)).ok()?.modified().ok()
    }

    /// Writes the root of a payload whose parts are all here (a fetch's last step), under the
    /// lock, so a removal beside it cannot take a part in between.
    pub fn put_root(&self, root: &Cid, bytes: &[u8]) -> std::io::Result<bool> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.put(root, bytes)
    }

    /// The parts named by the roots on disk but `except`.
    fn named_parts(&self, except: Option<&Cid>) -> BTreeSet<Cid> {
        self.roots()
            .iter()
            .filter(|o| Some(*o) != except)
            .filter_map(|o| self.root(o))
            .flat_map(|o| o.parts)
            .collect()
    }

    /// Removes payload `root`: its root first (so it no longer counts as held), then the parts
    /// no other root on disk names. Returns the bytes freed.
    pub fn remove(&self, root: &Cid) -> u64 {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let Some(r) = self.root(root) else {
            return 0;
        };
        let mut freed = 0;
        let kept = self.named_parts(Some(root));
        for c in std::iter::once(root).chain(r.parts.iter().filter(|p| !kept.contains(p))) {
            let len = std::fs::metadata(self.path(c)).map_or(0, |m| m.len());
            if std::fs::remove_file(self.path(c)).is_ok() {
                freed += len;
            }
        }
        freed
    }

    /// Removes the parts no root on disk names that were written more than `older_than` ago
    /// (left by a fetch that never finished). Returns how many.
    pub fn remove_stray_parts(&self, older_than: Duration) -> usize {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let named = self.named_parts(None);
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let Some(cid) = e.file_name().to_str().and_then(|n| n.parse::<Cid>().ok()) else {
                continue;
            };
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > older_than);
            if cid.codec() == chorus_core::snapshot::RAW
                && old
                && !named.contains(&cid)
                && std::fs::remove_file(e.path()).is_ok()
            {
                removed += 1;
            }
        }
        removed
    }

    /// The roots held here (DAG-CBOR blocks on disk), in CID order.
    pub fn roots(&self) -> Vec<Cid> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return vec![];
        };
        let mut roots: Vec<Cid> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<Cid>().ok())
            .filter(|c| c.codec() == chorus_core::ids::DAG_CBOR)
            .collect();
        roots.sort();
        roots
    }

    /// Bytes held, all blocks together.
    pub fn bytes(&self) -> u64 {
        std::fs::read_dir(&self.dir).map_or(0, |d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::payload::split;

    #[test]
    fn a_payload_is_held_once_every_block_is_written_and_a_damaged_block_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let d = PayloadDir::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..600_000u32).map(|i| (i % 253) as u8).collect();
        let p = split(&bytes).unwrap();
        assert!(!d.holds(&p.root_cid));
        // A block under another block's CID is not written.
        assert!(!d.put(&p.root_cid, &p.parts[0].1).unwrap());
        d.put_payload(&p).unwrap();
        assert!(d.holds(&p.root_cid));
        assert_eq!(d.roots(), vec![p.root_cid]);
        assert_eq!(d.bytes(), (bytes.len() + p.root.len()) as u64);
        // Damage a part: it is not served, and the payload is no longer held.
        let part = p.parts[1].0;
        std::fs::write(dir.path().join(PAYLOAD_DIR).join(part.to_string()), b"rot").unwrap();
        assert_eq!(d.get(&part), None);
        assert!(!d.holds(&p.root_cid));
        d.put(&part, &p.parts[1].1).unwrap();
        assert!(d.holds(&p.root_cid));
        // Two payloads share a part: removing one keeps the other whole.
        let q = split(&bytes[..PART_BYTES_FOR_TEST]).unwrap();
        assert_eq!(q.parts[0].0, p.parts[0].0);
        d.put_payload(&q).unwrap();
        assert!(d.remove(&p.root_cid) > 0);
        assert!(!d.holds(&p.root_cid));
        assert!(d.holds(&q.root_cid));
        assert_eq!(d.roots(), vec![q.root_cid]);
        // A part no root names: removed once old enough, never while a root names it.
        let stray = split(&[7u8; 1000]).unwrap();
        d.put(&stray.parts[0].0, &stray.parts[0].1).unwrap();
        assert_eq!(d.remove_stray_parts(Duration::from_secs(3600)), 0);
        assert_eq!(d.remove_stray_parts(Duration::ZERO), 1);
        assert!(!d.has(&stray.parts[0].0));
        assert!(d.holds(&q.root_cid), "a named part stays");
    }

    const PART_BYTES_FOR_TEST: usize = chorus_core::payload::PART_BYTES;
}
