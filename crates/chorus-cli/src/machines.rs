//! What the CLI shows of each machine's state.

use chorus_core::{Machine, machine::CounterMachine};
use chorus_kairos::KairosMachine;
use serde_json::{Value, json};

/// A machine the CLI can open and describe.
pub trait CliMachine: Machine + Copy + Default {
    /// Machine-specific fields of `chorus state`.
    fn describe(state: &Self::State) -> Value;
}

impl CliMachine for KairosMachine {
    fn describe(s: &Self::State) -> Value {
        let e = &s.engine;
        json!({
            "coherence": e.coherence,
            "t_tau": [e.t_tau.0, e.t_tau.1],
            "collapsed": e.collapsed,
            "collapses": e.collapses,
            "recovery": e.recovery,
            "dopamine": s.dopamine,
            "cognitive_state": s.cognitive_state(),
            "next_n": s.next_n(),
            "integrations": s.integrations,
            "tokens": e.steps,
            "window": e.window.len(),
            "emissaries": s.emissaries.iter().map(|((a, n), w)| json!({
                "author": a.to_string(), "name": n, "weight": w })).collect::<Vec<_>>(),
            "last_stimulus": s.stimuli.back().map(election),
            "last_election": s.stimuli.iter().rev().find(|r| r.winner.is_some()).map(election),
        })
    }
}

fn election(r: &chorus_kairos::machine::StimulusRecord) -> Value {
    json!({
        "stimulus": r.id.to_string(), "n": r.n, "intents": r.intents, "valid": r.valid,
        "selected": r.selected.iter().map(|(a, n)| format!("{}/{n}", a.fmt_short())).collect::<Vec<_>>(),
        "winner": r.winner.map(|w| w.to_string()),
    })
}

impl CliMachine for CounterMachine {
    fn describe(s: &Self::State) -> Value {
        json!({ "total": s.total, "per_kind": s.per_kind })
    }
}
