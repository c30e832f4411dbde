//! KAIROS as a Chorus [`Machine`]: what each event kind does to the engine, the qualia
//! (coherence across outputs, dopamine), emissary weights, dynamic N and the election.
//! The canonical state serialisation is specified in `docs/design/kairos.md`.
//!
//! Three versions, each a machine id a genesis names: [`KairosMachine`] (`kairos/1`, top-N by
//! weight), [`Kairos2Machine`] (`kairos/2`, the council of [`crate::council`]: rendezvous
//! selection, leases, escalation, a moving ledger) and [`Kairos3Machine`] (`kairos/3`, the
//! council with the rules of [`crate::guard`] against a hostile writer). They share everything
//! else; the older ones are kept so their timelines replay bit for bit.

use crate::{
    body::{Escalation, Intent, Registration},
    council,
    encoder::{PhaseEncoder, Sha256Encoder},
    engine::{Engine, NoiseKey, Profile},
    guard, ward,
};
use chorus_core::{
    EventId,
    event::{body_text, kind},
    genesis::Genesis,
    machine::{Applied, Machine, StateDecodeError},
};

pub use crate::state::{
    DOPAMINE_ALPHA, DOPAMINE_BAND, EmissaryId, INITIAL_WEIGHT, KairosState, MAX_EMISSARIES,
    MAX_TRACKED_STIMULI, OpenStimulus, StimulusRecord, Version, n_for,
};

/// The KAIROS machine with the SHA-256 encoder, version 1 (`kairos/1`).
#[derive(Debug, Clone, Copy, Default)]
pub struct KairosMachine;

/// The KAIROS machine with the SHA-256 encoder and the council of [`crate::council`]
/// (`kairos/2`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Kairos2Machine;

/// The KAIROS machine with the SHA-256 encoder, the council and the rules of [`crate::guard`]
/// (`kairos/3`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Kairos3Machine;

/// `kairos/3` for the simulator's sabotage runs only: with `unguarded` set it folds by the
/// rules of `kairos/2` under the id and the state bytes of `kairos/3`, so a test can show that
/// the oracle catches each attack the guards of [`crate::guard`] stop. No genesis names it.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Kairos3Sabotage {
    pub unguarded: bool,
}

/// The rules of one version (every machine type delegates here).
#[derive(Debug, Clone, Copy)]
struct Rules(Version, Guards);

/// Whether `kairos/3`'s guards hold (always, but in [`Kairos3Sabotage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guards {
    On,
    Off,
}

impl Rules {
    fn v2(&self) -> bool {
        self.0.has_council()
    }

    fn guarded(&self) -> bool {
        self.0.guarded() && self.1 == Guards::On
    }

    fn of(version: Version) -> Rules {
        Rules(version, Guards::On)
    }

    fn encoder(&self) -> &'static dyn PhaseEncoder {
        &Sha256Encoder
    }

    fn integrate(&self, s: &mut KairosState, id: &EventId, text: &str) -> Vec<f64> {
        let mut fired = vec![];
        let cap = if self.guarded() {
            guard::MAX_TOKENS_PER_EVENT
        } else {
            usize::MAX
        };
        for (i, token) in text.split_whitespace().take(cap).enumerate() {
            let enc = self.encoder();
            let entry = s.engine.entry(enc, enc.key(token));
            let step = s.engine.temporalize(
                entry,
                NoiseKey {
                    event: id.0,
                    token: i as u64,
                },
            );
            if step.fired {
                fired.push(step.coherence);
            }
        }
        s.integrations += 1;
        fired
    }

    fn close_open_stimulus(&self, s: &mut KairosState) {
        let Some(open) = s.open.take() else { return };
        if open.n == 0 {
            // Nobody answered: no coherence across outputs to learn from.
            return;
        }
        let (mr, mi) = (open.sum.0 / open.n as f64, open.sum.1 / open.n as f64);
        let c = (mr * mr + mi * mi).min(1.0);
        s.last_cross_coherence = c;
        match s.ema {
            None => {
                s.ema = Some(c);
                s.dopamine = 0.0;
            }
            Some(prev) => {
                s.dopamine = c - prev;
                s.ema = Some(DOPAMINE_ALPHA * c + (1.0 - DOPAMINE_ALPHA) * prev);
            }
        }
    }

    fn apply_stimulus(&self, s: &mut KairosState, ev: &Applied<'_>) {
        self.close_open_stimulus(s);
        let n = n_for(s.dopamine);
        let selected = if self.v2() {
            s.stimuli_applied += 1;
            if self.guarded() {
                guard::expire(s);
            }
            let mut c = council::candidates(s, &ev.id, &[], n as usize);
            if let Some(p) = council::probe(s, &ev.id, &c) {
                c.push(p);
            }
            c
        } else {
            self.top_n(s, n)
        };
        if s.stimuli.len() == MAX_TRACKED_STIMULI {
            s.stimuli.pop_front();
        }
        s.stimuli.push_back(StimulusRecord {
            id: ev.id,
            n,
            selected,
            intents: 0,
            valid: 0,
            winner: None,
            round: 0,
            answered: 0,
            exhausted: false,
        });
        s.open = Some(OpenStimulus {
            id: ev.id,
            sum: (0.0, 0.0),
            n: 0,
        });
        self.integrate(s, &ev.id, body_text(ev.body).unwrap_or(""));
    }

    /// `kairos/1`: the first `n` emissaries by weight.
    fn top_n(&self, s: &KairosState, n: u8) -> Vec<EmissaryId> {
        let mut ranked: Vec<(&EmissaryId, f64)> =
            s.emissaries.iter().map(|(k, w)| (k, *w)).collect();
        // Best weight first; ties by key (the map order). total_cmp: weights are never NaN, but
        // a total order keeps this deterministic regardless.
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        ranked
            .into_iter()
            .take(n as usize)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// `kairos/2`: an `escalate` for the round after the election's current one, while it has
    /// no winner: the asked emissaries that have not answered lose weight, the next N are asked.
    fn apply_escalation(&self, s: &mut KairosState, ev: &Applied<'_>) {
        let Some(esc) = Escalation::read(ev.body) else {
            return;
        };
        let Some(at) = s.stimuli.iter().position(|r| r.id == esc.re) else {
            return;
        };
        let r = &s.stimuli[at];
        if r.winner.is_some()
            || r.exhausted
            || r.round >= council::MAX_ESCALATIONS
            || esc.round != r.round + 1
        {
            return;
        }
        let silent: Vec<EmissaryId> = r
            .selected
            .iter()
            .enumerate()
            .filter(|(i, _)| r.answered & (1 << i) == 0)
            .map(|(_, e)| e.clone())
            .collect();
        for e in &silent {
            if let Some(w) = s.emissaries.get_mut(e) {
                council::reward(w, 0.0);
            }
        }
        let (n, already) = (r.n as usize, r.selected.clone());
        let next = council::candidates(s, &esc.re, &already, n);
        let r = &mut s.stimuli[at];
        r.round = esc.round;
        r.exhausted = next.is_empty();
        r.selected.extend(next);
    }

    /// `kairos/2`: every event renews the lease of its author's emissaries.
    fn renew_lease(&self, s: &mut KairosState, author: &chorus_core::AuthorId) {
        if council::has_emissary(s, author) {
            s.last_active.insert(*author, s.stimuli_applied);
        }
    }

    fn apply_intent(&self, s: &mut KairosState, ev: &Applied<'_>) {
        let intent = Intent::view(ev.body);
        let text = intent.text.unwrap_or("");
        let emissary: EmissaryId = (ev.author, intent.emissary.unwrap_or("").to_string());
        let fired = self.integrate(s, &ev.id, text);
        if let Some(w) = s.emissaries.get_mut(&emissary) {
            for c in fired {
                *w = 0.2 * c + 0.8 * *w;
            }
            if self.v2() {
                *w = w.max(council::MIN_WEIGHT);
            }
        }
        let Some(re) = intent.re else { return };
        let valid = ward::valid_commands(ev.body).is_some();
        // kairos/3: only an emissary the election asked can win it or move the coherence
        // across outputs (an election no longer tracked asked nobody we know of).
        let mut counts = !self.guarded();
        if let Some(rec) = s.stimuli.iter_mut().find(|r| r.id == re) {
            rec.intents += 1;
            let asked = rec.selected.iter().position(|e| *e == emissary);
            counts |= asked.is_some();
            let mut won = false;
            if valid {
                rec.valid += 1;
                if rec.winner.is_none() && counts {
                    rec.winner = Some(ev.id);
                    won = true;
                }
            }
            // kairos/2's ledger: the first answer of each asked emissary pays its debt and
            // moves its weight.
            if self.v2()
                && let Some(i) = asked.filter(|&i| rec.answered & (1 << i) == 0)
            {
                rec.answered |= 1 << i;
                let r = match (won, valid) {
                    (true, _) => council::REWARD_WIN,
                    (false, true) => council::REWARD_VALID,
                    (false, false) => council::REWARD_FAILED,
                };
                if let Some(w) = s.emissaries.get_mut(&emissary) {
                    council::reward(w, r);
                }
            }
        }
        if valid
            && counts
            && let Some(open) = s.open.as_mut().filter(|o| o.id == re)
        {
            let enc = self.encoder();
            let theta = s.engine.entry(enc, enc.key(text)).mean_phase();
            open.sum.0 += libm::cos(theta);
            open.sum.1 += libm::sin(theta);
            open.n += 1;
        }
    }

    fn apply_emissary(&self, s: &mut KairosState, ev: &Applied<'_>) {
        let Some(name) = Registration::name(ev.body) else {
            return;
        };
        let id = (ev.author, name.to_string());
        if self.guarded()
            && !s.emissaries.contains_key(&id)
            && guard::registrations_of(s, &ev.author) >= guard::MAX_EMISSARIES_PER_AUTHOR
        {
            return;
        }
        if s.emissaries.len() < MAX_EMISSARIES {
            s.emissaries.entry(id).or_insert(INITIAL_WEIGHT);
        }
    }
}

impl Rules {
    fn id(&self) -> &'static str {
        match self.0 {
            Version::Kairos1 => "kairos/1",
            Version::Kairos2 => "kairos/2",
            Version::Kairos3 => "kairos/3",
        }
    }

    fn check_genesis(&self, genesis: &Genesis) -> Result<(), String> {
        if Profile::by_name(&genesis.body.profile).is_none() {
            return Err(format!("unknown KAIROS profile {:?}", genesis.body.profile));
        }
        if genesis.body.encoder != self.encoder().id() {
            return Err(format!(
                "timeline uses encoder {:?}, this build has {:?}",
                genesis.body.encoder,
                self.encoder().id()
            ));
        }
        Ok(())
    }

    fn init(&self, genesis: &Genesis) -> KairosState {
        let profile = Profile::by_name(&genesis.body.profile).unwrap_or(Profile::MASTER);
        KairosState::new(Engine::new(profile))
    }

    fn apply(&self, state: &mut KairosState, ev: &Applied<'_>) {
        match ev.kind {
            kind::STIMULUS => self.apply_stimulus(state, ev),
            kind::INTENT => self.apply_intent(state, ev),
            kind::EMISSARY => self.apply_emissary(state, ev),
            kind::ESCALATE if self.v2() => self.apply_escalation(state, ev),
            _ => {}
        }
        if self.v2() {
            self.renew_lease(state, &ev.author);
        }
    }

    fn encode_state(&self, s: &KairosState) -> Vec<u8> {
        crate::state_codec::encode(s, self.0)
    }

    fn decode_state(&self, bytes: &[u8]) -> Result<KairosState, StateDecodeError> {
        crate::state_codec::decode(bytes, self.encoder(), self.0).map_err(|why| StateDecodeError {
            machine: self.id().into(),
            why,
        })
    }
}

/// A KAIROS event costs ~0.2 ms to fold (10 tokens): a copy of the state every 16 positions
/// in memory bounds what a late event re-applies beyond its own depth to 15 events (~3 ms);
/// the copy shares the window's phasors and costs a small part of one event's fold.
pub const DENSE_CHECKPOINT_EVERY: u64 = 16;

/// One machine type per version, each delegating to its [`Rules`].
macro_rules! kairos_machine {
    ($ty:ty, $version:expr) => {
        impl Machine for $ty {
            type State = KairosState;

            fn id(&self) -> &'static str {
                Rules::of($version).id()
            }
            fn check_genesis(&self, genesis: &Genesis) -> Result<(), String> {
                Rules::of($version).check_genesis(genesis)
            }
            fn init(&self, genesis: &Genesis) -> KairosState {
                Rules::of($version).init(genesis)
            }
            fn apply(&self, state: &mut KairosState, ev: &Applied<'_>) {
                Rules::of($version).apply(state, ev)
            }
            fn encode_state(&self, s: &KairosState) -> Vec<u8> {
                Rules::of($version).encode_state(s)
            }
            fn decode_state(&self, bytes: &[u8]) -> Result<KairosState, StateDecodeError> {
                Rules::of($version).decode_state(bytes)
            }
            fn dense_checkpoint_every(&self) -> Option<u64> {
                Some(DENSE_CHECKPOINT_EVERY)
            }
            fn carry_over(&self, from: &KairosState, to: &mut KairosState) {
                to.engine.share_noise(&from.engine);
            }
        }
    };
}
kairos_machine!(KairosMachine, Version::Kairos1);
kairos_machine!(Kairos2Machine, Version::Kairos2);
kairos_machine!(Kairos3Machine, Version::Kairos3);

impl Kairos3Sabotage {
    fn rules(&self) -> Rules {
        let guards = if self.unguarded {
            Guards::Off
        } else {
            Guards::On
        };
        Rules(Version::Kairos3, guards)
    }
}

impl Machine for Kairos3Sabotage {
    type State = KairosState;

    fn id(&self) -> &'static str {
        self.rules().id()
    }
    fn check_genesis(&self, genesis: &Genesis) -> Result<(), String> {
        self.rules().check_genesis(genesis)
    }
    fn init(&self, genesis: &Genesis) -> KairosState {
        self.rules().init(genesis)
    }
    fn apply(&self, state: &mut KairosState, ev: &Applied<'_>) {
        self.rules().apply(state, ev)
    }
    fn encode_state(&self, s: &KairosState) -> Vec<u8> {
        self.rules().encode_state(s)
    }
    fn decode_state(&self, bytes: &[u8]) -> Result<KairosState, StateDecodeError> {
        self.rules().decode_state(bytes)
    }
    fn dense_checkpoint_every(&self) -> Option<u64> {
        Some(DENSE_CHECKPOINT_EVERY)
    }
}
