//! The redb tables of schema version 1. Every table name carries its version; a change of
//! layout is a new name plus a numbered migration in `store.rs`. All keys are raw bytes with the
//! layout documented here (big-endian integers in keys, so byte order is numeric order).
//! See `docs/design/store.md`.

use redb::{MultimapTableDefinition, TableDefinition};

/// Schema version written in `meta-v1["schema"]`.
pub const SCHEMA_VERSION: u64 = 1;

/// Key: UTF-8 name. Value: bytes.
/// `schema` → u64 LE schema version; `genesis` → 32-byte genesis id; `machine` → UTF-8 machine id.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta-v1");

/// Key: lc (u64 BE) ‖ event id (32). Value: the exact block bytes.
/// Iteration order is the total order, so loading, exporting and verifying a timeline are
/// sequential scans. Holds every indexed event (pending ones live in `PENDING`).
pub const EVENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("events-v1");

/// Key: 32-byte event id (SHA-256 of the block). Value: its lc as u64 BE — with the id, the key
/// of the event in `EVENTS`. Lookups by id take two B-tree reads.
pub const IDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("ids-v1");

/// Key: author (32) ‖ sq (u64 BE). Values: 32-byte event ids (more than one = equivocation).
pub const AUTHORS: MultimapTableDefinition<&[u8], &[u8]> =
    MultimapTableDefinition::new("authors-v1");

/// Key: 32-byte event id of a current head. Value: empty.
pub const HEADS: TableDefinition<&[u8], ()> = TableDefinition::new("heads-v1");

/// Key: 32-byte event id. Value: block bytes of an event waiting for its parents.
pub const PENDING: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pending-v1");

/// Key: order key (lc u64 BE ‖ id 32) of the last event the state includes.
/// Value: the machine's canonical state bytes.
pub const CHECKPOINTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("checkpoints-v1");

/// Key: 32-byte member key. Value: UTF-8 role (`admin`, `anchor`, `writer`) at the tip of the
/// admin chain. A mirror for inspection tools; the timeline recomputes it from the events.
pub const MEMBERSHIP: TableDefinition<&[u8], &str> = TableDefinition::new("membership-v1");

/// Key: peer id bytes. Value: opaque peer record (used by the mesh).
pub const PEERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("peers-v1");

/// `lc BE ‖ id`.
pub fn order_key(lc: u64, id: &[u8; 32]) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&lc.to_be_bytes());
    k[8..].copy_from_slice(id);
    k
}

/// Inverse of [`order_key`].
pub fn split_order_key(k: &[u8]) -> Option<(u64, [u8; 32])> {
    if k.len() != 40 {
        return None;
    }
    Some((
        u64::from_be_bytes(k[..8].try_into().ok()?),
        k[8..].try_into().ok()?,
    ))
}

/// `author ‖ sq BE`.
pub fn author_key(author: &[u8; 32], sq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(author);
    k[32..].copy_from_slice(&sq.to_be_bytes());
    k
}
