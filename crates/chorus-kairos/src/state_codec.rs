//! Canonical serialisation of [`KairosState`] (the bytes `state_hash` hashes and checkpoints
//! store), one layout per machine version. Layout in `docs/design/kairos.md`: `kairos/2`
//! writes the bytes of `kairos/1` under its own magic, with three fields more in each election
//! and the council's clock and leases at the end; `kairos/3` writes the layout of `kairos/2`
//! under its own magic. All integers little-endian; every f64 is written
//! as its IEEE-754 bits after canonicalisation: any NaN becomes `0x7FF8_0000_0000_0000` and
//! `-0.0` becomes `+0.0`, because NaN signs and zero signs differ between x86-64 and ARM.

use std::collections::{BTreeMap, VecDeque};

use chorus_core::{AuthorId, EventId};

use crate::{
    council::MAX_SELECTED,
    encoder::PhaseEncoder,
    engine::{Engine, Profile},
    state::{KairosState, OpenStimulus, StimulusRecord, Version},
};

/// First bytes of every encoded `kairos/1` state.
pub const MAGIC: &[u8; 16] = b"chorus/kairos/1\0";
/// First bytes of every encoded `kairos/2` state.
pub const MAGIC_2: &[u8; 16] = b"chorus/kairos/2\0";
/// First bytes of every encoded `kairos/3` state (the layout of `kairos/2`).
pub const MAGIC_3: &[u8; 16] = b"chorus/kairos/3\0";

fn magic(version: Version) -> &'static [u8; 16] {
    match version {
        Version::Kairos1 => MAGIC,
        Version::Kairos2 => MAGIC_2,
        Version::Kairos3 => MAGIC_3,
    }
}

/// The canonical bits of an f64.
pub fn canonical_bits(x: f64) -> u64 {
    if x.is_nan() {
        0x7FF8_0000_0000_0000
    } else if x == 0.0 {
        0
    } else {
        x.to_bits()
    }
}

struct W(Vec<u8>);
impl W {
    fn u8(&mut self, x: u8) {
        self.0.push(x);
    }
    fn u32(&mut self, x: u32) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn u64(&mut self, x: u64) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn f64(&mut self, x: f64) {
        self.u64(canonical_bits(x));
    }
    fn b32(&mut self, x: &[u8; 32]) {
        self.0.extend_from_slice(x);
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn opt_f64(&mut self, x: Option<f64>) {
        self.u8(x.is_some() as u8);
        self.f64(x.unwrap_or(0.0));
    }
}

pub fn encode(s: &KairosState, version: Version) -> Vec<u8> {
    let v2 = version.has_council();
    let mut w = W(Vec::with_capacity(512 + 32 * s.engine.window.len()));
    w.0.extend_from_slice(magic(version));
    let e = &s.engine;
    w.str(e.profile.name);
    w.u64(e.steps);
    w.u8(e.collapsed as u8);
    w.u64(e.collapse_step.unwrap_or(u64::MAX));
    w.u64(e.collapses);
    w.f64(e.recovery);
    w.f64(e.coherence);
    w.f64(e.t_tau.0);
    w.f64(e.t_tau.1);
    w.u32(e.window.len() as u32);
    for entry in &e.window {
        w.b32(&entry.key);
    }
    w.u64(s.integrations);
    w.opt_f64(s.ema);
    w.f64(s.dopamine);
    w.f64(s.last_cross_coherence);
    w.u8(s.open.is_some() as u8);
    if let Some(o) = &s.open {
        w.b32(&o.id.0);
        w.f64(o.sum.0);
        w.f64(o.sum.1);
        w.u32(o.n);
    }
    w.u32(s.emissaries.len() as u32);
    for ((author, name), weight) in &s.emissaries {
        w.b32(&author.0);
        w.str(name);
        w.f64(*weight);
    }
    w.u32(s.stimuli.len() as u32);
    for r in &s.stimuli {
        w.b32(&r.id.0);
        w.u8(r.n);
        w.u32(r.selected.len() as u32);
        for (author, name) in &r.selected {
            w.b32(&author.0);
            w.str(name);
        }
        w.u32(r.intents);
        w.u32(r.valid);
        w.u8(r.winner.is_some() as u8);
        w.b32(&r.winner.map_or([0; 32], |x| x.0));
        if v2 {
            w.u8(r.round);
            w.u32(r.answered);
            w.u8(r.exhausted as u8);
        }
    }
    if v2 {
        w.u64(s.stimuli_applied);
        w.u32(s.last_active.len() as u32);
        for (author, at) in &s.last_active {
            w.b32(&author.0);
            w.u64(*at);
        }
    }
    w.0
}

struct R<'a>(&'a [u8]);
impl R<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn f64(&mut self) -> Result<f64, String> {
        Ok(f64::from_bits(self.u64()?))
    }
    fn b32(&mut self) -> Result<[u8; 32], String> {
        Ok(self.take(32)?.try_into().unwrap())
    }
    fn str(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "string not utf-8".into())
    }
    fn count(&mut self, max: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        if n > max {
            Err(format!("count {n} over {max}"))
        } else {
            Ok(n)
        }
    }
}

pub fn decode(
    bytes: &[u8],
    encoder: &dyn PhaseEncoder,
    version: Version,
) -> Result<KairosState, String> {
    let v2 = version.has_council();
    let mut r = R(bytes);
    if r.take(16)? != magic(version) {
        return Err("bad magic".into());
    }
    let profile_name = r.str()?;
    let profile =
        Profile::by_name(&profile_name).ok_or(format!("unknown profile {profile_name}"))?;
    let mut engine = Engine::new(profile);
    engine.steps = r.u64()?;
    engine.collapsed = r.u8()? != 0;
    engine.collapse_step = Some(r.u64()?).filter(|&s| s != u64::MAX);
    engine.collapses = r.u64()?;
    engine.recovery = r.f64()?;
    engine.coherence = r.f64()?;
    engine.t_tau = (r.f64()?, r.f64()?);
    let n = r.count(profile.window)?;
    for _ in 0..n {
        let entry = engine.entry(encoder, r.b32()?);
        engine.window.push_back(entry);
    }
    let integrations = r.u64()?;
    let has_ema = r.u8()? != 0;
    let ema_v = r.f64()?;
    let dopamine = r.f64()?;
    let last_cross_coherence = r.f64()?;
    let open = if r.u8()? != 0 {
        Some(OpenStimulus {
            id: EventId(r.b32()?),
            sum: (r.f64()?, r.f64()?),
            n: r.u32()?,
        })
    } else {
        None
    };
    let mut emissaries = BTreeMap::new();
    for _ in 0..r.count(crate::state::MAX_EMISSARIES)? {
        let a = AuthorId(r.b32()?);
        let name = r.str()?;
        emissaries.insert((a, name), r.f64()?);
    }
    let mut stimuli = VecDeque::new();
    for _ in 0..r.count(crate::state::MAX_TRACKED_STIMULI)? {
        let id = EventId(r.b32()?);
        let n = r.u8()?;
        let mut selected = vec![];
        for _ in 0..r.count(if v2 { MAX_SELECTED } else { 3 })? {
            let a = AuthorId(r.b32()?);
            selected.push((a, r.str()?));
        }
        let intents = r.u32()?;
        let valid = r.u32()?;
        let has_winner = r.u8()? != 0;
        let w = r.b32()?;
        let (round, answered, exhausted) = if v2 {
            (r.u8()?, r.u32()?, r.u8()? != 0)
        } else {
            (0, 0, false)
        };
        stimuli.push_back(StimulusRecord {
            id,
            n,
            selected,
            intents,
            valid,
            winner: has_winner.then_some(EventId(w)),
            round,
            answered,
            exhausted,
        });
    }
    let mut stimuli_applied = 0;
    let mut last_active = BTreeMap::new();
    if v2 {
        stimuli_applied = r.u64()?;
        for _ in 0..r.count(crate::state::MAX_EMISSARIES)? {
            let a = AuthorId(r.b32()?);
            last_active.insert(a, r.u64()?);
        }
    }
    if !r.0.is_empty() {
        return Err("trailing bytes".into());
    }
    Ok(KairosState {
        engine,
        integrations,
        ema: has_ema.then_some(ema_v),
        dopamine,
        last_cross_coherence,
        open,
        emissaries,
        stimuli,
        stimuli_applied,
        last_active,
    })
}
