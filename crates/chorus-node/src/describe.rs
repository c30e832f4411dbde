//! JSON views of a replica shared by the CLI and the node's HTTP API: the state of each
//! machine, the replica summary, events; and JSON → IPLD for event bodies given as JSON.

use anyhow::{Context, Result};
use chorus_core::{
    AuthorId, EventId, Machine, SignedEvent, Timeline, event::kind, genesis::Genesis,
    machine::CounterMachine, membership::MemberOp,
};
use chorus_kairos::{Kairos2Machine, Kairos3Machine, KairosMachine, KairosState};
use ipld_core::ipld::Ipld;
use serde_json::{Value, json};

/// A machine a node can run and describe.
pub trait Describe: Machine + Copy + Default + Send + 'static {
    /// Machine-specific fields of `chorus state` and `GET /v1/state`.
    fn describe(state: &Self::State) -> Value;
    /// The elections the state tracks, oldest first (machines without stimuli have none).
    fn elections(_state: &Self::State) -> Vec<ElectionView> {
        vec![]
    }
    /// Whether an `escalate` event widens an election (the gateway writes one only then).
    const ESCALATES: bool = false;
    /// Emissaries the machine registers for one author (`None`: no bound of its own).
    const EMISSARIES_PER_AUTHOR: Option<usize> = None;
}

/// One stimulus's election as the replicated state has it.
#[derive(Debug, Clone, PartialEq)]
pub struct ElectionView {
    pub stimulus: EventId,
    /// N of the dynamic-N rule when the stimulus was applied.
    pub n: u8,
    /// The emissaries asked to answer: (author, name), in the machine's order of selection.
    pub selected: Vec<(AuthorId, String)>,
    pub intents: u32,
    pub valid: u32,
    /// The first valid intent in the total order.
    pub winner: Option<EventId>,
    /// Escalation rounds taken (`kairos/2`; 0 otherwise).
    pub round: u8,
    /// An escalation found nobody left to ask (`kairos/2`).
    pub exhausted: bool,
}

/// `chorus state` and `GET /v1/state` of a KAIROS state (both versions).
fn describe_kairos(s: &KairosState) -> Value {
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

fn kairos_elections(s: &KairosState) -> Vec<ElectionView> {
    s.stimuli
        .iter()
        .map(|r| ElectionView {
            stimulus: r.id,
            n: r.n,
            selected: r.selected.clone(),
            intents: r.intents,
            valid: r.valid,
            winner: r.winner,
            round: r.round,
            exhausted: r.exhausted,
        })
        .collect()
}

impl Describe for KairosMachine {
    fn describe(s: &Self::State) -> Value {
        describe_kairos(s)
    }
    fn elections(s: &Self::State) -> Vec<ElectionView> {
        kairos_elections(s)
    }
}

/// The council's view (`kairos/2` and later): its clock and who holds a lease.
fn describe_council(s: &KairosState) -> Value {
    let mut v = describe_kairos(s);
    v["stimuli_applied"] = json!(s.stimuli_applied);
    v["leases"] = json!(
        s.last_active
            .keys()
            .map(|a| json!({
                "author": a.to_string(),
                "leased": chorus_kairos::council::leased(s, a),
            }))
            .collect::<Vec<_>>()
    );
    v
}

impl Describe for Kairos2Machine {
    const ESCALATES: bool = true;
    fn describe(s: &Self::State) -> Value {
        describe_council(s)
    }
    fn elections(s: &Self::State) -> Vec<ElectionView> {
        kairos_elections(s)
    }
}

impl Describe for Kairos3Machine {
    const ESCALATES: bool = true;
    const EMISSARIES_PER_AUTHOR: Option<usize> =
        Some(chorus_kairos::guard::MAX_EMISSARIES_PER_AUTHOR);
    fn describe(s: &Self::State) -> Value {
        describe_council(s)
    }
    fn elections(s: &Self::State) -> Vec<ElectionView> {
        kairos_elections(s)
    }
}

fn election(r: &chorus_kairos::machine::StimulusRecord) -> Value {
    json!({
        "stimulus": r.id.to_string(), "n": r.n, "intents": r.intents, "valid": r.valid,
        "selected": r.selected.iter().map(|(a, n)| format!("{}/{n}", a.fmt_short())).collect::<Vec<_>>(),
        "winner": r.winner.map(|w| w.to_string()),
        "round": r.round, "exhausted": r.exhausted,
    })
}

impl Describe for CounterMachine {
    fn describe(s: &Self::State) -> Value {
        json!({ "total": s.total, "per_kind": s.per_kind })
    }
}

/// An event body given as JSON. Integers stay integers; other numbers become floats;
/// `{"/": CID}` is a link (DAG-JSON).
pub fn json_to_ipld(v: Value) -> Result<Ipld> {
    Ok(match v {
        Value::Null => Ipld::Null,
        Value::Bool(b) => Ipld::Bool(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Ipld::Integer(i.into()),
            None => match n.as_u64() {
                Some(u) => Ipld::Integer(u.into()),
                None => Ipld::Float(n.as_f64().context("number")?),
            },
        },
        Value::String(s) => Ipld::String(s),
        Value::Array(a) => Ipld::List(a.into_iter().map(json_to_ipld).collect::<Result<_>>()?),
        // DAG-JSON's link form: {"/": "bafy…"}.
        Value::Object(o) if o.len() == 1 && o.get("/").is_some_and(Value::is_string) => {
            let s = o["/"].as_str().unwrap_or_default();
            Ipld::Link(s.parse().with_context(|| format!("{s:?} is not a CID"))?)
        }
        Value::Object(o) => Ipld::Map(
            o.into_iter()
                .map(|(k, v)| Ok((k, json_to_ipld(v)?)))
                .collect::<Result<_>>()?,
        ),
    })
}

/// An event body as JSON (DAG-JSON conventions: links `{"/": CID}`, bytes
/// `{"/": {"bytes": base64}}`); the inverse of [`json_to_ipld`] for what that accepts.
pub fn ipld_to_json(v: &Ipld) -> Value {
    use base64::Engine;
    match v {
        Ipld::Null => Value::Null,
        Ipld::Bool(b) => json!(b),
        Ipld::Integer(i) => match i64::try_from(*i) {
            Ok(i) => json!(i),
            Err(_) => json!(i.to_string()),
        },
        Ipld::Float(f) => json!(f),
        Ipld::String(s) => json!(s),
        Ipld::Bytes(b) => {
            json!({"/": {"bytes": base64::engine::general_purpose::STANDARD_NO_PAD.encode(b)}})
        }
        Ipld::List(l) => Value::Array(l.iter().map(ipld_to_json).collect()),
        Ipld::Map(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), ipld_to_json(v)))
                .collect(),
        ),
        Ipld::Link(c) => json!({"/": c.to_string()}),
    }
}

/// A new event as the live feed carries it (`GET /v1/events?stream=true`, emissaries).
pub fn feed_json(ev: &SignedEvent) -> Value {
    json!({
        "cid": ev.id().to_string(), "lc": ev.lamport, "author": ev.author.to_string(),
        "sq": ev.seq, "kind": ev.kind, "text": ev.text(), "body": ipld_to_json(&ev.body),
    })
}

/// The replica's summary and its machine's state.
pub fn state_json<M: Describe>(tl: &Timeline<M>) -> Value {
    let f = tl.frontier();
    json!({
        "timeline": tl.genesis_id().to_string(),
        "machine": tl.machine().id(),
        "events": tl.len(),
        "pending": tl.pending_len(),
        "heads": tl.heads().iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        "state_hash": hex::encode(tl.state_hash()),
        "settled_frontier": {
            "settled": f.settled,
            "last": f.last.map(|(id, lc)| json!({"cid": id.to_string(), "lc": lc})),
            "held_by": f.held_by.map(|(a, role, latest)| json!({
                "member": a.to_string(), "role": role.as_str(), "latest_lc": latest })),
            "first_unsettled": f.first_unsettled.map(|(id, lc)| json!({"cid": id.to_string(), "lc": lc})),
        },
        "members": tl.membership().current().iter().map(|(a, r)| json!({
            "key": a.to_string(), "role": r.as_str() })).collect::<Vec<_>>(),
        "equivocations": tl.equivocations().len(),
        "rejected": tl.stats().rejected,
        "state": M::describe(tl.state()),
    })
}

/// One event as JSON (`chorus log --json`, `GET /v1/events`).
pub fn event_json<M: Machine>(tl: &Timeline<M>, pos: usize, ev: &SignedEvent) -> Value {
    let id = ev.id();
    json!({
        "pos": pos, "cid": id.to_string(), "lc": ev.lamport, "author": ev.author.to_string(),
        "sq": ev.seq, "kind": ev.kind, "text": ev.text(), "excluded": tl.is_excluded(&id),
        "settled": tl.is_settled(&id), "line": event_line(ev),
    })
}

/// One line of text for an event (`chorus log`): a genesis's name, machine and admin, a
/// membership change, the text of a text body, else the body's IPLD; control characters
/// blanked, cut at 80 characters.
pub fn event_line(ev: &SignedEvent) -> String {
    let t = if ev.kind == kind::GENESIS {
        match Genesis::from_event(ev) {
            Ok(g) => format!(
                "{:?} machine {} admin {}",
                g.body.name,
                g.body.machine,
                g.admin.fmt_short()
            ),
            Err(e) => format!("invalid genesis: {e}"),
        }
    } else if ev.kind == kind::MEMBER {
        match MemberOp::parse(&ev.body) {
            Ok(MemberOp::Add(k, r)) => format!("add {} {}", r.as_str(), k),
            Ok(MemberOp::Remove(k)) => format!("remove {k}"),
            Err(e) => e.to_string(),
        }
    } else {
        match ev.text() {
            Some(t) => t.to_string(),
            None => match &ev.body {
                Ipld::Null => String::new(),
                b => format!("{b:?}"),
            },
        }
    };
    let one_line: String = t
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() > 80 {
        format!("{}…", one_line.chars().take(79).collect::<String>())
    } else {
        one_line
    }
}
