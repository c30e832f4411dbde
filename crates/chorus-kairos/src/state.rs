//! The replicated KAIROS state: the engine, the qualia (dopamine, coherence across outputs),
//! the registered emissaries with their weights and the elections of the last stimuli. What
//! each event does to it is in [`crate::machine`]; its canonical bytes in
//! [`crate::state_codec`] (both use this module; it uses neither).

use std::collections::{BTreeMap, VecDeque};

use chorus_core::{AuthorId, EventId};

use crate::engine::Engine;

/// EMA smoothing of the coherence across outputs.
pub const DOPAMINE_ALPHA: f64 = 0.2;
/// Dopamine above which one emissary answers, below whose negative three do.
pub const DOPAMINE_BAND: f64 = 0.05;
/// Stimuli whose election is tracked in the state (older ones are final; their late intents
/// still move the engine but no longer the election).
pub const MAX_TRACKED_STIMULI: usize = 256;
/// Registered emissaries kept (registrations beyond it are ignored).
pub const MAX_EMISSARIES: usize = 1024;
/// Weight of a new emissary.
pub const INITIAL_WEIGHT: f64 = 1.0;

/// Which rules a fold follows (the machine id a genesis names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `kairos/1`: the top N by weight.
    Kairos1,
    /// `kairos/2`: the council of [`crate::council`].
    Kairos2,
    /// `kairos/3`: the council of `kairos/2` with the rules against a hostile writer of
    /// [`crate::council`] (winners only from the asked, per-author slots, expiry, a token cap).
    Kairos3,
}

impl Version {
    /// Whether the council of [`crate::council`] chooses who answers (`kairos/2` and later).
    pub fn has_council(self) -> bool {
        self != Version::Kairos1
    }
    /// Whether the rules against a hostile writer hold (`kairos/3`).
    pub fn guarded(self) -> bool {
        self == Version::Kairos3
    }
}

/// An emissary: the key that signs its intents and its name.
pub type EmissaryId = (AuthorId, String);

/// Election bookkeeping of one stimulus.
#[derive(Debug, Clone, PartialEq)]
pub struct StimulusRecord {
    pub id: EventId,
    /// N chosen by the dopamine rule when the stimulus was applied.
    pub n: u8,
    /// The emissaries asked to answer: `kairos/1` best weight first; `kairos/2` in the order
    /// of its selection, each escalation round appending its own.
    pub selected: Vec<EmissaryId>,
    /// `kairos/2`: escalation rounds taken (0 = only the first selection).
    pub round: u8,
    /// `kairos/2`: bit `i` set once `selected[i]` has answered (any intent, valid or not).
    pub answered: u32,
    /// `kairos/2`: an escalation found no emissary left to ask.
    pub exhausted: bool,
    /// Intents answering it, and how many of those were valid.
    pub intents: u32,
    pub valid: u32,
    /// First valid intent in total order.
    pub winner: Option<EventId>,
}

/// Intents answering the open stimulus (the one applied last).
#[derive(Debug, Clone, PartialEq)]
pub struct OpenStimulus {
    pub id: EventId,
    pub sum: (f64, f64),
    pub n: u32,
}

/// The replicated KAIROS state: the "phase vector of the WE".
#[derive(Debug, Clone)]
pub struct KairosState {
    pub engine: Engine,
    /// Events that fed the engine (stimuli and intents).
    pub integrations: u64,
    pub ema: Option<f64>,
    pub dopamine: f64,
    /// Coherence across outputs of the last closed stimulus.
    pub last_cross_coherence: f64,
    pub open: Option<OpenStimulus>,
    pub emissaries: BTreeMap<EmissaryId, f64>,
    pub stimuli: VecDeque<StimulusRecord>,
    /// `kairos/2`: stimuli applied since genesis (the council's clock: leases count in it).
    pub stimuli_applied: u64,
    /// `kairos/2`: for each author with a registered emissary, `stimuli_applied` at its last
    /// event of any kind (its emissaries' lease; bounded by the registered emissaries).
    pub last_active: BTreeMap<AuthorId, u64>,
}

impl KairosState {
    pub fn coherence(&self) -> f64 {
        self.engine.coherence
    }
    pub fn collapsed(&self) -> bool {
        self.engine.collapsed
    }
    /// The N the next stimulus would get.
    pub fn next_n(&self) -> u8 {
        n_for(self.dopamine)
    }
    /// A word for the mood, as the original's papers name it.
    pub fn cognitive_state(&self) -> &'static str {
        let c = self.last_cross_coherence;
        match (c >= 0.5, self.dopamine) {
            (true, d) if d > DOPAMINE_BAND => "crystalline flow",
            (false, d) if d < -DOPAMINE_BAND => "frustration",
            (_, d) if d > DOPAMINE_BAND => "rising",
            (_, d) if d < -DOPAMINE_BAND => "falling",
            _ => "steady",
        }
    }
    /// A fresh state around `engine` (no emissary, no stimulus, no qualia yet).
    pub fn new(engine: Engine) -> KairosState {
        KairosState {
            engine,
            integrations: 0,
            ema: None,
            dopamine: 0.0,
            last_cross_coherence: 0.0,
            open: None,
            emissaries: BTreeMap::new(),
            stimuli: VecDeque::new(),
            stimuli_applied: 0,
            last_active: BTreeMap::new(),
        }
    }
    pub fn stimulus(&self, id: &EventId) -> Option<&StimulusRecord> {
        self.stimuli.iter().find(|s| s.id == *id)
    }
}

/// Dynamic N: dopamine > 0.05 → 1, < −0.05 → 3, else 2.
pub fn n_for(dopamine: f64) -> u8 {
    if dopamine > DOPAMINE_BAND {
        1
    } else if dopamine < -DOPAMINE_BAND {
        3
    } else {
        2
    }
}
