//! Every bound of the core, as a named constant. Changing one of the event-format limits is a
//! format change (see `docs/design/event-format.md`).

/// Largest accepted encoded event block, checked on the raw length before decoding.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Largest accepted DAG-CBOR encoding of an event body; bigger content goes in a blob.
pub const MAX_BODY_BYTES: usize = 48 * 1024;
/// Most bytes the envelope around a body can take (16 parents, the largest counters, the
/// longest kind, signature, author, timeline id): a body of at most `MAX_BODY_BYTES` always
/// fits `MAX_EVENT_BYTES`. Checked by a test on a worst-case event.
pub const MAX_ENVELOPE_BYTES: usize = 1024;
/// Most parents an event may name.
pub const MAX_PARENTS: usize = 16;
/// Longest kind string, in bytes.
pub const MAX_KIND_BYTES: usize = 32;
/// Largest `sq` / `lc` accepted: 2^53 - 1 so that JSON readers see exact integers.
pub const MAX_COUNTER: u64 = (1 << 53) - 1;
/// Most events held while waiting for their parents.
pub const MAX_PENDING_EVENTS: usize = 65_536;
/// Most bytes held in the pending set.
pub const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
/// Most pending events of one key that no membership change names (a stranger, or a member
/// whose addition has not arrived yet). Anyone can make keys and sign events with made-up
/// parents: without this, a non-member filled the whole pending set, and honest peers'
/// out-of-order gossip was refused (issue 15).
pub const MAX_PENDING_PER_STRANGER: usize = 64;
/// Most pending events of all such keys together.
pub const MAX_PENDING_FROM_STRANGERS: usize = 4_096;
/// Recently inserted blocks kept in memory so replays near the tip need no store reads.
pub const RECENT_BLOCK_CACHE: usize = 4_096;
/// Default number of ordered events between two machine checkpoints.
pub const DEFAULT_CHECKPOINT_INTERVAL: u64 = 256;
/// Signing domain prefix of event signatures (the NUL byte is part of it).
pub const EVENT_SIGNING_DOMAIN: &[u8] = b"chorus/event/v1\0";
