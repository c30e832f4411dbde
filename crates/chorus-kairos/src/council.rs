//! # The council of `kairos/2`: who answers a stimulus
//!
//! `kairos/1` asked the top N emissaries by weight, ties by key, and its weights moved only on a
//! collapse, which practically never fires: the same emissaries answered everything and a dead
//! one was asked forever. `kairos/2` replaces that with four rules, each a pure function of the
//! replicated state (no clock: the council's clock is the count of stimuli applied).
//!
//! * **Selection per stimulus, proportional to weight** — weighted rendezvous hashing: each
//!   emissary `e` gets `score = −ln(u) / w`, `u ∈ (0, 1]` from SHA-256 of the stimulus id and
//!   `e`; the lowest scores are asked. `e` comes first with probability `w / Σw`, so over many
//!   stimuli every emissary is asked in proportion to its weight, and the choice differs from
//!   one stimulus to the next.
//! * **Liveness from the log** — an emissary's *lease* is renewed by every event its node
//!   writes (heartbeats included) and lapses after [`LEASE_STIMULI`] stimuli without one; an
//!   emissary *owes* an answer for each of the last [`LEASE_STIMULI`] stimuli that asked it and
//!   that it has not answered (valid or not). Candidates rank in tiers: lease held and fewer than
//!   [`MAX_OWED`] owed, then lease held, then the rest; a lower tier is asked only when the
//!   higher ones are empty. A 45 s emissary that answers keeps its lease and pays its debts;
//!   a dead node's emissaries fall to the last tier. Every [`LEASE_STIMULI`]-th stimulus also
//!   asks one lapsed emissary beside the others ([`probe`]), so one that lapsed while alive
//!   (its node writes nothing unless asked) gets back.
//! * **Escalation** — an `escalate` event (written by a node whose request saw no valid answer
//!   by its deadline) asks the next N candidates in the same ranking, at most
//!   [`MAX_ESCALATIONS`] times per stimulus; with nobody left the election is *exhausted*.
//! * **A weight ledger that moves** — each answer from an asked emissary moves its weight
//!   `w ← (1 − α)·w + α·r` with `α` = [`LEDGER_ALPHA`] and `r` = [`REWARD_WIN`] for the answer
//!   that became the winner when applied, [`REWARD_VALID`] for another valid answer,
//!   [`REWARD_FAILED`] for a failure; an escalation moves every asked emissary that has not
//!   answered with `r = 0`. Weights stay at or above [`MIN_WEIGHT`] (a rendezvous score needs
//!   `w > 0`, and a recovered emissary must be able to earn its place back).

use chorus_core::{AuthorId, EventId};
use sha2::{Digest, Sha256};

use crate::state::{EmissaryId, KairosState};

/// Stimuli an emissary's lease lasts without an event from its node; also how far back debts
/// (selections not answered) count.
pub const LEASE_STIMULI: u64 = 16;
/// Debts at which an emissary drops to the second tier.
pub const MAX_OWED: usize = 2;
/// Escalations one stimulus may take.
pub const MAX_ESCALATIONS: u8 = 3;
/// Emissaries one election may ask in all: N ≤ 3 per round, the first and every escalation, and
/// one probe.
pub const MAX_SELECTED: usize = 3 * (1 + MAX_ESCALATIONS as usize) + 1;
/// Smoothing of the weight ledger.
pub const LEDGER_ALPHA: f64 = 0.2;
/// Rewards of the ledger.
pub const REWARD_WIN: f64 = 2.0;
pub const REWARD_VALID: f64 = 1.0;
pub const REWARD_FAILED: f64 = 0.25;
/// The lowest weight.
pub const MIN_WEIGHT: f64 = 0.05;

const _: () = assert!(
    MAX_SELECTED <= 32,
    "answered is a u32 bitmask over selected"
);

/// `u ∈ (0, 1]` of emissary `e` for stimulus `stimulus`: the top 53 bits of
/// SHA-256(`"chorus/kairos/2 rendezvous" ‖ stimulus id ‖ author ‖ name`), plus one, over 2^53.
pub fn rendezvous_u(stimulus: &EventId, e: &EmissaryId) -> f64 {
    let mut h = Sha256::new();
    h.update(b"chorus/kairos/2 rendezvous");
    h.update(stimulus.0);
    h.update(e.0.0);
    h.update(e.1.as_bytes());
    let d = h.finalize();
    let top = u64::from_be_bytes(d[..8].try_into().expect("8 bytes")) >> 11;
    (top + 1) as f64 / (1u64 << 53) as f64
}

/// The rendezvous score (lower is asked first).
pub fn score(stimulus: &EventId, e: &EmissaryId, weight: f64) -> f64 {
    -libm::log(rendezvous_u(stimulus, e)) / weight.max(MIN_WEIGHT)
}

/// Whether `author`'s emissaries hold their lease (the state's clock as it is now).
pub fn leased(s: &KairosState, author: &AuthorId) -> bool {
    s.last_active
        .get(author)
        .is_some_and(|&at| s.stimuli_applied.saturating_sub(at) <= LEASE_STIMULI)
}

/// Answers `e` owes: the last [`LEASE_STIMULI`] elections that asked it and that it has not
/// answered, `skip` (the election being decided) left out.
pub fn owed(s: &KairosState, e: &EmissaryId, skip: Option<&EventId>) -> usize {
    s.stimuli
        .iter()
        .rev()
        .filter(|r| Some(&r.id) != skip)
        .take(LEASE_STIMULI as usize)
        .filter(|r| {
            r.selected
                .iter()
                .position(|x| x == e)
                .is_some_and(|i| r.answered & (1 << i) == 0)
        })
        .count()
}

/// The tier of `e` (0 is asked first).
fn tier(s: &KairosState, e: &EmissaryId, skip: Option<&EventId>) -> u8 {
    match (leased(s, &e.0), owed(s, e, skip) < MAX_OWED) {
        (true, true) => 0,
        (true, false) => 1,
        (false, _) => 2,
    }
}

/// The next `n` emissaries to ask for `stimulus`, none of `already`: the best tier that has any
/// candidate, lowest score first, ties by key.
pub fn candidates(
    s: &KairosState,
    stimulus: &EventId,
    already: &[EmissaryId],
    n: usize,
) -> Vec<EmissaryId> {
    let mut ranked: Vec<(u8, f64, &EmissaryId)> = s
        .emissaries
        .iter()
        .filter(|(e, _)| !already.contains(e))
        .map(|(e, w)| (tier(s, e, Some(stimulus)), score(stimulus, e, *w), e))
        .collect();
    ranked.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| a.1.total_cmp(&b.1))
            .then_with(|| a.2.cmp(b.2))
    });
    let best = ranked.first().map(|r| r.0);
    ranked
        .into_iter()
        .take_while(|r| Some(r.0) == best)
        .take(n)
        .map(|r| r.2.clone())
        .collect()
}

/// The probe of the stimulus that makes `stimuli_applied` a multiple of [`LEASE_STIMULI`]: the
/// best-scored emissary whose lease lapsed, asked *beside* the N candidates (so a dead one
/// costs nothing: the others answer). An emissary that lapsed only because its node writes
/// nothing while it is not asked (a light node, a node without heartbeats, stimuli faster than
/// heartbeats) answers, which renews its lease: passed over, never shut out for good.
pub fn probe(s: &KairosState, stimulus: &EventId, already: &[EmissaryId]) -> Option<EmissaryId> {
    if !s.stimuli_applied.is_multiple_of(LEASE_STIMULI) {
        return None;
    }
    s.emissaries
        .iter()
        .filter(|(e, _)| !already.contains(e) && !leased(s, &e.0))
        .map(|(e, w)| (score(stimulus, e, *w), e))
        .min_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)))
        .map(|(_, e)| e.clone())
}

/// The ledger: `w ← (1 − α)·w + α·r`, never below [`MIN_WEIGHT`].
pub fn reward(w: &mut f64, r: f64) {
    *w = ((1.0 - LEDGER_ALPHA) * *w + LEDGER_ALPHA * r).max(MIN_WEIGHT);
}

/// Whether `author` has a registered emissary (only those authors' leases are kept).
pub fn has_emissary(s: &KairosState, author: &AuthorId) -> bool {
    s.emissaries
        .range((*author, String::new())..)
        .next()
        .is_some_and(|((a, _), _)| a == author)
}
