//! The bodies of the swarm's events, typed: a stimulus, an intent (an emissary's answer to a
//! stimulus) and an emissary's registration. One definition, used by everyone who writes them
//! (the gateway, the emissaries, the CLI, the simulator) and everyone who reads them (this
//! machine, the node's election view, the emissaries' prompts).
//!
//! # On the wire
//!
//! Each is a DAG-CBOR map with text keys (`docs/design/emissaries.md` lists them). Optional
//! fields are absent, never null, so a body built here has the same bytes as the hand-built
//! maps of earlier builds (the golden timelines replay bit for bit).
//!
//! # Reading is lenient
//!
//! Bodies come from the timeline, written by any member: a reader takes what it understands
//! and ignores the rest: a field of the wrong type reads as absent. What makes an intent *count* in an election is the ward's rule
//! ([`crate::ward::valid_commands`]), not the reader's.

use std::collections::BTreeMap;

use chorus_core::EventId;
use ipld_core::ipld::Ipld;

/// A text field of a map body, if it is one.
fn text_of<'a>(m: &'a BTreeMap<String, Ipld>, key: &str) -> Option<&'a str> {
    match m.get(key) {
        Some(Ipld::String(s)) => Some(s),
        _ => None,
    }
}

fn map_of(body: &Ipld) -> Option<&BTreeMap<String, Ipld>> {
    match body {
        Ipld::Map(m) => Some(m),
        _ => None,
    }
}

fn put(m: &mut BTreeMap<String, Ipld>, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        m.insert(key.to_string(), Ipld::String(v.to_string()));
    }
}

fn put_list(m: &mut BTreeMap<String, Ipld>, key: &str, items: &[String]) {
    m.insert(
        key.to_string(),
        Ipld::List(items.iter().cloned().map(Ipld::String).collect()),
    );
}

/// Something the swarm is asked to answer. The machine integrates `text`; the gateway also
/// stores who asks (`npc_name`, `role`, `backstory`) and the conversation (`context`), which
/// the emissaries' prompts use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stimulus {
    pub text: String,
    pub npc_name: Option<String>,
    pub role: Option<String>,
    pub backstory: Option<String>,
    pub context: Option<String>,
}

impl Stimulus {
    /// A stimulus that is only text.
    pub fn text(text: impl Into<String>) -> Self {
        Stimulus {
            text: text.into(),
            ..Default::default()
        }
    }

    pub fn to_ipld(&self) -> Ipld {
        let mut m = BTreeMap::new();
        put(&mut m, "text", Some(&self.text));
        put(&mut m, "npc_name", self.npc_name.as_deref());
        put(&mut m, "role", self.role.as_deref());
        put(&mut m, "backstory", self.backstory.as_deref());
        put(&mut m, "context", self.context.as_deref());
        Ipld::Map(m)
    }

    pub fn read(body: &Ipld) -> Self {
        let Some(m) = map_of(body) else {
            return Stimulus::default();
        };
        let opt = |k: &str| text_of(m, k).map(str::to_string);
        Stimulus {
            text: text_of(m, "text").unwrap_or("").to_string(),
            npc_name: opt("npc_name"),
            role: opt("role"),
            backstory: opt("backstory"),
            context: opt("context"),
        }
    }
}

/// Why an emissary published no commands: a stable code (`timeout`, `unparsable`, `ward`,
/// `busy`, or a backend's error code) and a bounded explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: String,
    pub error: String,
}

/// An emissary's answer to a stimulus. A valid answer carries `commands` (and `text`, the same
/// commands as a JSON array, which the machine integrates); a failure carries [`Failure`] and
/// no commands. Both count as the emissary's answer (the stimulus's `intents`), only a valid
/// one can win.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intent {
    /// The stimulus answered.
    pub re: Option<EventId>,
    /// The emissary's name (its author is the event's author).
    pub emissary: String,
    pub text: Option<String>,
    pub commands: Option<Vec<String>>,
    /// Commands the ward took out before publishing.
    pub refused: Vec<String>,
    /// The model that answered, as the backend named it.
    pub model: Option<String>,
    /// How long the model took.
    pub model_ms: Option<u64>,
    pub failure: Option<Failure>,
}

impl Intent {
    pub fn to_ipld(&self) -> Ipld {
        let mut m = BTreeMap::new();
        if let Some(re) = self.re {
            m.insert("re".to_string(), Ipld::Link(re.to_cid()));
        }
        put(&mut m, "emissary", Some(&self.emissary));
        put(&mut m, "text", self.text.as_deref());
        if let Some(c) = &self.commands {
            put_list(&mut m, "commands", c);
        }
        if !self.refused.is_empty() {
            put_list(&mut m, "refused", &self.refused);
        }
        put(&mut m, "model", self.model.as_deref());
        if let Some(ms) = self.model_ms {
            m.insert("model_ms".to_string(), Ipld::Integer(ms.into()));
        }
        if let Some(f) = &self.failure {
            put(&mut m, "code", Some(&f.code));
            put(&mut m, "error", Some(&f.error));
        }
        Ipld::Map(m)
    }

    /// The fields the machine and the election views need, borrowed.
    pub fn view(body: &Ipld) -> IntentView<'_> {
        let m = map_of(body);
        let text = |k: &str| m.and_then(|m| text_of(m, k));
        IntentView {
            re: match m.and_then(|m| m.get("re")) {
                Some(Ipld::Link(cid)) => EventId::from_cid(cid).ok(),
                _ => None,
            },
            emissary: text("emissary"),
            text: text("text"),
            model: text("model"),
            code: text("code"),
        }
    }
}

/// An intent as read from the timeline (see [`Intent::view`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntentView<'a> {
    pub re: Option<EventId>,
    pub emissary: Option<&'a str>,
    pub text: Option<&'a str>,
    pub model: Option<&'a str>,
    /// The failure code, on a failure.
    pub code: Option<&'a str>,
}

/// An emissary's registration: after it, the emissary can be selected (its weight starts at
/// the machine's initial weight). Only `name` is read by the machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registration {
    pub name: String,
    pub role: Option<String>,
    pub backstory: Option<String>,
}

impl Registration {
    /// Only a name.
    pub fn named(name: impl Into<String>) -> Self {
        Registration {
            name: name.into(),
            ..Default::default()
        }
    }

    pub fn to_ipld(&self) -> Ipld {
        let mut m = BTreeMap::new();
        put(&mut m, "name", Some(&self.name));
        put(&mut m, "role", self.role.as_deref());
        put(&mut m, "backstory", self.backstory.as_deref());
        Ipld::Map(m)
    }

    /// The registered name, if the body has one.
    pub fn name(body: &Ipld) -> Option<&str> {
        map_of(body).and_then(|m| text_of(m, "name"))
    }
}

/// A request to widen a stimulus's election (`kairos/2`): no valid answer had arrived by the
/// deadline of the node that writes it, so the machine selects the next candidates. `round`
/// is the escalation this asks for (1 for the first): the machine takes only the round that
/// follows the election's current one, so the same deadline noticed on many nodes widens the
/// election once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escalation {
    pub re: EventId,
    pub round: u8,
}

impl Escalation {
    pub fn to_ipld(&self) -> Ipld {
        let mut m = BTreeMap::new();
        m.insert("re".to_string(), Ipld::Link(self.re.to_cid()));
        m.insert("round".to_string(), Ipld::Integer(self.round.into()));
        Ipld::Map(m)
    }

    /// The escalation a body holds, if it is one (a link `re` and a `round` from 1 to 255).
    pub fn read(body: &Ipld) -> Option<Escalation> {
        let m = map_of(body)?;
        let re = match m.get("re")? {
            Ipld::Link(cid) => EventId::from_cid(cid).ok()?,
            _ => return None,
        };
        let round = match m.get("round")? {
            Ipld::Integer(r) => u8::try_from(*r).ok().filter(|&r| r >= 1)?,
            _ => return None,
        };
        Some(Escalation { re, round })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(b: &Ipld) -> Vec<&str> {
        match b {
            Ipld::Map(m) => m.keys().map(String::as_str).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn absent_fields_are_absent_not_null() {
        assert_eq!(keys(&Stimulus::text("hi").to_ipld()), ["text"]);
        let i = Intent {
            re: Some(EventId([7; 32])),
            emissary: "npc".into(),
            failure: Some(Failure {
                code: "timeout".into(),
                error: "late".into(),
            }),
            model_ms: Some(3),
            ..Default::default()
        };
        assert_eq!(
            keys(&i.to_ipld()),
            ["code", "emissary", "error", "model_ms", "re"]
        );
    }

    #[test]
    fn a_stimulus_and_an_intent_read_back() {
        let s = Stimulus {
            text: "the door".into(),
            npc_name: Some("Guard".into()),
            role: None,
            backstory: Some("old".into()),
            context: Some("the door".into()),
        };
        assert_eq!(Stimulus::read(&s.to_ipld()), s);
        let i = Intent {
            re: Some(EventId([1; 32])),
            emissary: "npc-1".into(),
            text: Some(r#"["say hi"]"#.into()),
            commands: Some(vec!["say hi".into()]),
            refused: vec!["py x".into()],
            model: Some("m".into()),
            model_ms: Some(12),
            failure: None,
        };
        let body = i.to_ipld();
        let v = Intent::view(&body);
        assert_eq!(v.re, i.re);
        assert_eq!(
            (v.emissary, v.text, v.model, v.code),
            (Some("npc-1"), Some(r#"["say hi"]"#), Some("m"), None)
        );
        assert_eq!(
            crate::ward::valid_commands(&body),
            Some(vec!["say hi".to_string()])
        );
    }

    #[test]
    fn wrong_types_read_as_absent() {
        let mut m = BTreeMap::new();
        m.insert("re".to_string(), Ipld::String("not a link".into()));
        m.insert("emissary".to_string(), Ipld::Integer(3));
        m.insert("text".to_string(), Ipld::Bool(true));
        let body = Ipld::Map(m);
        let v = Intent::view(&body);
        assert_eq!((v.re, v.emissary, v.text), (None, None, None));
        assert_eq!(Stimulus::read(&Ipld::Null), Stimulus::default());
        assert_eq!(Registration::name(&body), None);
    }

    #[test]
    fn an_escalation_reads_back_and_a_bad_one_reads_as_none() {
        let e = Escalation {
            re: EventId([4; 32]),
            round: 2,
        };
        assert_eq!(Escalation::read(&e.to_ipld()), Some(e));
        let mut zero = e.to_ipld();
        if let Ipld::Map(m) = &mut zero {
            m.insert("round".into(), Ipld::Integer(0));
        }
        assert_eq!(Escalation::read(&zero), None, "round 0 is no escalation");
        let mut big = e.to_ipld();
        if let Ipld::Map(m) = &mut big {
            m.insert("round".into(), Ipld::Integer(300));
        }
        assert_eq!(Escalation::read(&big), None);
        assert_eq!(Escalation::read(&Ipld::String("x".into())), None);
    }
}
