//! The state-machine trait every replica folds the total order through, and a trivial machine
//! (an event counter) that proves the trait is not shaped after KAIROS.

use ipld_core::ipld::Ipld;
use sha2::{Digest, Sha256};

use crate::{genesis::Genesis, ids::AuthorId, ids::EventId};

/// What a machine sees of one applied event.
#[derive(Debug, Clone, Copy)]
pub struct Applied<'a> {
    pub id: EventId,
    pub author: AuthorId,
    pub seq: u64,
    pub lamport: u64,
    pub kind: &'a str,
    pub body: &'a Ipld,
}

/// Why a stored state could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode {machine} state: {why}")]
pub struct StateDecodeError {
    pub machine: String,
    pub why: String,
}

/// A deterministic state machine.
///
/// Contract: `apply` is a pure function of (state, event); no wall clock, no ambient randomness,
/// no iteration over hash maps. `encode_state` is the canonical serialisation (the bytes
/// `state_hash` hashes and checkpoints store); `decode_state(encode_state(s))` must give a state
/// that behaves identically to `s`. Reading a state never changes it (`&State` everywhere).
pub trait Machine: Send + Sync + 'static {
    type State: Clone + Send + Sync;

    /// Id with version, as written in the genesis (`kairos/1`).
    fn id(&self) -> &'static str;
    /// Refuses a genesis this machine cannot replay faithfully (unknown profile or encoder).
    fn check_genesis(&self, _genesis: &Genesis) -> Result<(), String> {
        Ok(())
    }
    /// The state before any event.
    fn init(&self, genesis: &Genesis) -> Self::State;
    /// Folds one event into the state.
    fn apply(&self, state: &mut Self::State, event: &Applied<'_>);
    /// Canonical serialisation.
    fn encode_state(&self, state: &Self::State) -> Vec<u8>;
    fn decode_state(&self, bytes: &[u8]) -> Result<Self::State, StateDecodeError>;
    /// SHA2-256 of the canonical serialisation.
    fn state_hash(&self, state: &Self::State) -> [u8; 32] {
        Sha256::digest(self.encode_state(state)).into()
    }
    /// For a machine whose events are expensive to fold: keep a copy of the state in memory
    /// every this many positions (besides the genesis's checkpoint interval), so a late event
    /// re-applies at most this many positions more than it must. Never persisted and never
    /// part of what a timeline computes: only where a rewind starts.
    fn dense_checkpoint_every(&self) -> Option<u64> {
        None
    }
    /// A rewind replaces `from` (the state being left) with `to` (a checkpoint's state, decoded
    /// or fresh): a machine may hand over memos of pure functions that `from` holds (KAIROS: its
    /// recent noise), so the re-fold does not compute them again. Nothing that feeds the state's
    /// bytes may pass.
    fn carry_over(&self, _from: &Self::State, _to: &mut Self::State) {}
}

/// Counts applied events per kind. State bytes: for each kind in byte order,
/// `u16 LE length ‖ kind ‖ u64 LE count`, preceded by the total as u64 LE.
#[derive(Debug, Clone, Copy, Default)]
pub struct CounterMachine;

/// State of [`CounterMachine`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterState {
    pub total: u64,
    pub per_kind: std::collections::BTreeMap<String, u64>,
}

impl Machine for CounterMachine {
    type State = CounterState;

    fn id(&self) -> &'static str {
        "counter/1"
    }

    fn init(&self, _genesis: &Genesis) -> CounterState {
        CounterState::default()
    }

    fn apply(&self, state: &mut CounterState, event: &Applied<'_>) {
        state.total += 1;
        *state.per_kind.entry(event.kind.to_string()).or_insert(0) += 1;
    }

    fn encode_state(&self, state: &CounterState) -> Vec<u8> {
        let mut out = state.total.to_le_bytes().to_vec();
        for (k, n) in &state.per_kind {
            out.extend_from_slice(&(k.len() as u16).to_le_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    fn decode_state(&self, bytes: &[u8]) -> Result<CounterState, StateDecodeError> {
        let err = |why: &str| StateDecodeError {
            machine: self.id().into(),
            why: why.into(),
        };
        let take = |b: &mut &[u8], n: usize| -> Result<Vec<u8>, StateDecodeError> {
            if b.len() < n {
                return Err(err("truncated"));
            }
            let (h, t) = b.split_at(n);
            *b = t;
            Ok(h.to_vec())
        };
        let mut b = bytes;
        let total = u64::from_le_bytes(take(&mut b, 8)?.try_into().unwrap());
        let mut per_kind = std::collections::BTreeMap::new();
        while !b.is_empty() {
            let len = u16::from_le_bytes(take(&mut b, 2)?.try_into().unwrap()) as usize;
            let k = String::from_utf8(take(&mut b, len)?).map_err(|_| err("kind not utf-8"))?;
            let n = u64::from_le_bytes(take(&mut b, 8)?.try_into().unwrap());
            per_kind.insert(k, n);
        }
        Ok(CounterState { total, per_kind })
    }
}
