//! # The rules of `kairos/3` against a hostile writer
//!
//! A member may write anything its key signs. Under `kairos/2` four of those writes were cheap
//! attacks on everyone (security review of 4e86c87, issue 15); `kairos/3` is `kairos/2` with one
//! rule against each, all pure functions of the replicated state like the rest of the council:
//!
//! * **Token bombs** — one 48 KiB body is ~24 000 whitespace tokens, each a KAIROS step, paid
//!   again by every replica at every replay. Only the first [`MAX_TOKENS_PER_EVENT`] tokens of
//!   a stimulus's or an intent's text feed the engine: an event's engine work is bounded.
//! * **Winners nobody asked** — the first valid intent won, whoever wrote it, so a member that
//!   answers every stimulus at once with its own emissary won every election and set the
//!   coherence across outputs. Only an emissary the election selected (first round, an
//!   escalation or the probe) can win or count towards the coherence across outputs.
//! * **Slot exhaustion** — one writer could register all 1 024 emissaries: each asked once,
//!   silent, and still in the first tier (one debt is not enough to drop it), so the dummies
//!   took the selections. An author holds at most [`MAX_EMISSARIES_PER_AUTHOR`] registrations;
//!   with that few, its silent dummies owe their way down to the second tier within a few
//!   stimuli, and escalations take their weight.
//! * **Registrations that never expire** — the emissaries of a node gone for good kept their
//!   slots for ever. An author whose lease lapsed [`EXPIRE_STIMULI`] stimuli ago loses its
//!   registrations (and its lease entry); a node that comes back registers again (the emissary
//!   task checks its registration as stimuli come, `chorus-node` `emissary.rs`).

use std::collections::BTreeSet;

use chorus_core::AuthorId;

use crate::{council::LEASE_STIMULI, state::KairosState};

/// Tokens of one event's text that feed the engine.
pub const MAX_TOKENS_PER_EVENT: usize = 256;
/// Registered emissaries one author may hold.
pub const MAX_EMISSARIES_PER_AUTHOR: usize = 4;
/// Stimuli without an event of an author after which its registrations expire.
pub const EXPIRE_STIMULI: u64 = 4 * LEASE_STIMULI;

/// Registered emissaries of `author`.
pub fn registrations_of(s: &KairosState, author: &AuthorId) -> usize {
    s.emissaries
        .range((*author, String::new())..)
        .take_while(|((a, _), _)| a == author)
        .count()
}

/// Removes the registrations (and lease entries) of every author silent for more than
/// [`EXPIRE_STIMULI`] stimuli. Returns how many authors expired.
pub fn expire(s: &mut KairosState) -> usize {
    let now = s.stimuli_applied;
    let stale: BTreeSet<AuthorId> = s
        .last_active
        .iter()
        .filter(|&(_, &at)| now.saturating_sub(at) > EXPIRE_STIMULI)
        .map(|(a, _)| *a)
        .collect();
    if stale.is_empty() {
        return 0;
    }
    for a in &stale {
        s.last_active.remove(a);
    }
    s.emissaries.retain(|(a, _), _| !stale.contains(a));
    stale.len()
}
