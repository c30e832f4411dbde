//! KAIROS as a Chorus [`Machine`]: what each event kind does to the engine, the qualia
//! (coherence across outputs, dopamine), emissary weights, dynamic N and the election.
//! The canonical state serialisation is specified in `docs/design/kairos.md`.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use crate::{
    body::{Intent, Registration},
    encoder::{PhaseEncoder, Sha256Encoder},
    engine::{Engine, Entry, NoiseKey, Profile},
    ward,
};
use chorus_core::{
    EventId,
    event::{body_text, kind},
    genesis::Genesis,
    machine::{Applied, Machine, StateDecodeError},
};

pub use crate::state::{
    DOPAMINE_ALPHA, DOPAMINE_BAND, EmissaryId, INITIAL_WEIGHT, KairosState, MAX_EMISSARIES,
    MAX_TRACKED_STIMULI, OpenStimulus, StimulusRecord, n_for,
};

/// The KAIROS machine with the SHA-256 encoder.
#[derive(Debug, Clone, Copy, Default)]
pub struct KairosMachine;

impl KairosMachine {
    fn encoder(&self) -> &'static dyn PhaseEncoder {
        &Sha256Encoder
    }

    fn entry(&self, token: &str) -> Arc<Entry> {
        let enc = self.encoder();
        Arc::new(Entry::new(enc, enc.key(token)))
    }

    fn integrate(&self, s: &mut KairosState, id: &EventId, text: &str) -> Vec<f64> {
        let mut fired = vec![];
        for (i, token) in text.split_whitespace().enumerate() {
            let step = s.engine.temporalize(
                self.entry(token),
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
        let mut ranked: Vec<(&EmissaryId, f64)> =
            s.emissaries.iter().map(|(k, w)| (k, *w)).collect();
        // Best weight first; ties by key (the map order). total_cmp: weights are never NaN, but
        // a total order keeps this deterministic regardless.
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let selected = ranked
            .into_iter()
            .take(n as usize)
            .map(|(k, _)| k.clone())
            .collect();
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
        });
        s.open = Some(OpenStimulus {
            id: ev.id,
            sum: (0.0, 0.0),
            n: 0,
        });
        self.integrate(s, &ev.id, body_text(ev.body).unwrap_or(""));
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
        }
        let Some(re) = intent.re else { return };
        let valid = ward::valid_commands(ev.body).is_some();
        if let Some(rec) = s.stimuli.iter_mut().find(|r| r.id == re) {
            rec.intents += 1;
            if valid {
                rec.valid += 1;
                if rec.winner.is_none() {
                    rec.winner = Some(ev.id);
                }
            }
        }
        if valid && let Some(open) = s.open.as_mut().filter(|o| o.id == re) {
            let theta = self.entry(text).mean_phase();
            open.sum.0 += libm::cos(theta);
            open.sum.1 += libm::sin(theta);
            open.n += 1;
        }
    }

    fn apply_emissary(&self, s: &mut KairosState, ev: &Applied<'_>) {
        let Some(name) = Registration::name(ev.body) else {
            return;
        };
        if s.emissaries.len() < MAX_EMISSARIES {
            s.emissaries
                .entry((ev.author, name.to_string()))
                .or_insert(INITIAL_WEIGHT);
        }
    }
}

impl Machine for KairosMachine {
    type State = KairosState;

    fn id(&self) -> &'static str {
        "kairos/1"
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
        KairosState {
            engine: Engine::new(profile),
            integrations: 0,
            ema: None,
            dopamine: 0.0,
            last_cross_coherence: 0.0,
            open: None,
            emissaries: BTreeMap::new(),
            stimuli: VecDeque::new(),
        }
    }

    fn apply(&self, state: &mut KairosState, ev: &Applied<'_>) {
        match ev.kind {
            kind::STIMULUS => self.apply_stimulus(state, ev),
            kind::INTENT => self.apply_intent(state, ev),
            kind::EMISSARY => self.apply_emissary(state, ev),
            _ => {}
        }
    }

    fn encode_state(&self, s: &KairosState) -> Vec<u8> {
        crate::state_codec::encode(s)
    }

    fn decode_state(&self, bytes: &[u8]) -> Result<KairosState, StateDecodeError> {
        crate::state_codec::decode(bytes, self.encoder()).map_err(|why| StateDecodeError {
            machine: self.id().into(),
            why,
        })
    }
}
