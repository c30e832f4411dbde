//! # Elections, typed and pushed
//!
//! [`Election`] is one stimulus's election as clients and emissaries need it: who was asked,
//! how many answered, the winner (the first valid intent in the total order) with its
//! emissary, commands and text, and whether the winner is settled. The actor builds it; JSON
//! exists only at the HTTP edge (`serde`).
//!
//! Elections are **pushed**, never polled: after every complete fold the actor compares the
//! elections the state tracks with the ones it published last ([`Published::changes`]) and
//! sends each one that changed — a new stimulus, an intent counted, a winner found or replaced,
//! a winner settled — on the node's election broadcast. A gateway request waits on it for its
//! stimulus to have a winner; an emissary for an election that selects it. A subscriber that
//! falls more than [`ELECTION_FEED_CAPACITY`] changes behind is told so (`Lagged`) and asks
//! for every election once.

use std::collections::{BTreeMap, VecDeque};

use chorus_core::{AuthorId, EventId};
use serde::{Deserialize, Serialize};

use crate::describe::ElectionView;

/// Election changes a subscriber may fall behind before it is told it lagged: four times
/// the elections a KAIROS state tracks, so one fold's changes always fit.
pub const ELECTION_FEED_CAPACITY: usize = 4 * chorus_kairos::machine::MAX_TRACKED_STIMULI;

/// One emissary an election asked to answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selected {
    #[serde(with = "as_text")]
    pub author: AuthorId,
    pub name: String,
}

/// One stimulus's election, as the replicated state has it after the last complete fold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Election {
    #[serde(with = "as_text")]
    pub stimulus: EventId,
    /// N of the dynamic-N rule when the stimulus was applied.
    pub n: u8,
    /// The emissaries asked to answer, in the machine's order (`kairos/2`: each escalation
    /// round appends the ones it asks).
    pub selected: Vec<Selected>,
    /// Escalation rounds taken (`kairos/2`).
    #[serde(default)]
    pub round: u8,
    /// An escalation found nobody left to ask: no answer will come unless one already asked
    /// answers late.
    #[serde(default)]
    pub exhausted: bool,
    /// Intents counted, and how many of them were valid.
    pub intents: u32,
    pub valid: u32,
    /// The first valid intent in the total order.
    #[serde(with = "as_text_opt")]
    pub winner: Option<EventId>,
    #[serde(with = "as_text_opt")]
    pub winner_author: Option<AuthorId>,
    /// The winning intent's emissary, model, text and (ward-checked) commands.
    pub emissary: Option<String>,
    pub model: Option<String>,
    pub commands: Option<Vec<String>>,
    pub text: Option<String>,
    /// No event can ever sort before the winner any more (false while it may still change).
    pub settled: bool,
}

impl Election {
    /// Whether the election asked `author`'s emissary `name`.
    pub fn selects(&self, author: &AuthorId, name: &str) -> bool {
        self.selected
            .iter()
            .any(|s| s.author == *author && s.name == name)
    }
}

/// Every tracked election (`GET /v1/swarm/elections`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ElectionList {
    pub elections: Vec<Election>,
    /// True while a fold runs in slices: the list is the last complete fold's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub folding: bool,
}

/// What the actor last published of each election: the state's view and whether its winner
/// was settled. Bounded by the elections the state tracks (those it drops are dropped here).
#[derive(Debug, Default)]
pub struct Published {
    last: BTreeMap<EventId, (ElectionView, bool)>,
}

impl Published {
    /// The elections among `views` (the state's, with each winner's settledness) that differ
    /// from what was published last, in the state's order; remembers `views` as published.
    pub fn changes(&mut self, views: Vec<(ElectionView, bool)>) -> Vec<(ElectionView, bool)> {
        let mut next = BTreeMap::new();
        let mut changed = vec![];
        for (view, settled) in views {
            let same = self
                .last
                .get(&view.stimulus)
                .is_some_and(|(v, s)| *v == view && *s == settled);
            if !same {
                changed.push((view.clone(), settled));
            }
            next.insert(view.stimulus, (view, settled));
        }
        self.last = next;
        changed
    }
}

/// What one pushed change of an election means to a client that follows them
/// (`GET /v1/swarm/elections?stream=true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A winner, where this follower had seen none.
    Winner,
    /// A different winner than the one this follower saw: a valid intent that sorts earlier
    /// arrived (e.g. from the other side of a healed partition). `previous` names the old one.
    Replaced { previous: EventId },
    /// The winner can no longer change (settled frontier).
    Settled,
    /// Anything else: a new election without a winner, an intent counted, an escalation.
    Changed,
}

impl ChangeKind {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            ChangeKind::Winner => "winner",
            ChangeKind::Replaced { .. } => "replaced",
            ChangeKind::Settled => "settled",
            ChangeKind::Changed => "election",
        }
    }
}

/// What a follower of the election pushes last saw of each election (winner, settled), to
/// name each change. Bounded like the elections the state tracks (oldest forgotten first).
#[derive(Debug, Default)]
pub struct Follower {
    seen: BTreeMap<EventId, (Option<EventId>, bool)>,
    order: VecDeque<EventId>,
}

impl Follower {
    /// Remembers `e` as known to the client (the elections that existed when it connected).
    pub fn remember(&mut self, e: &Election) {
        self.classify(e);
    }

    /// Names the change `e` makes to what this follower saw, and remembers `e`. An election
    /// seen for the first time is new to the client: `Winner` if it already has one (its
    /// stimulus and first valid answer came in one fold), else `Changed`.
    pub fn classify(&mut self, e: &Election) -> ChangeKind {
        let now = (e.winner, e.settled);
        let kind = match self.seen.get(&e.stimulus) {
            None if e.winner.is_some() => ChangeKind::Winner,
            None => ChangeKind::Changed,
            Some(&(before, _)) if before.is_some() && before != e.winner => ChangeKind::Replaced {
                previous: before.expect("checked"),
            },
            Some(&(None, _)) if e.winner.is_some() => ChangeKind::Winner,
            Some(&(_, false)) if e.settled => ChangeKind::Settled,
            Some(_) => ChangeKind::Changed,
        };
        if self.seen.insert(e.stimulus, now).is_none() {
            self.order.push_back(e.stimulus);
            if self.order.len() > chorus_kairos::machine::MAX_TRACKED_STIMULI
                && let Some(old) = self.order.pop_front()
            {
                self.seen.remove(&old);
            }
        }
        kind
    }
}

/// Ids as their text forms (CIDs, author keys) in JSON.
mod as_text {
    use std::{fmt::Display, str::FromStr};

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

mod as_text_opt {
    use std::{fmt::Display, str::FromStr};

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<T: Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        Option::<String>::deserialize(d)?
            .map(|t| t.parse().map_err(D::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(stimulus: u8, intents: u32, winner: Option<u8>) -> ElectionView {
        ElectionView {
            stimulus: EventId([stimulus; 32]),
            n: 1,
            selected: vec![],
            intents,
            valid: intents,
            winner: winner.map(|w| EventId([w; 32])),
            round: 0,
            exhausted: false,
        }
    }

    #[test]
    fn only_what_changed_is_published_again() {
        let mut p = Published::default();
        let first = p.changes(vec![(view(1, 0, None), false), (view(2, 0, None), false)]);
        assert_eq!(first.len(), 2, "everything is new at first");
        assert!(
            p.changes(vec![(view(1, 0, None), false), (view(2, 0, None), false)])
                .is_empty(),
            "nothing changed, nothing published"
        );
        let next = p.changes(vec![
            (view(1, 1, Some(9)), false),
            (view(2, 0, None), false),
        ]);
        assert_eq!(next, vec![(view(1, 1, Some(9)), false)], "a winner found");
        let settled = p.changes(vec![(view(1, 1, Some(9)), true), (view(2, 0, None), false)]);
        assert_eq!(
            settled,
            vec![(view(1, 1, Some(9)), true)],
            "the winner settled"
        );
        // A dropped election is forgotten: seen again, it is new again.
        assert!(p.changes(vec![(view(2, 0, None), false)]).is_empty());
        assert_eq!(p.changes(vec![(view(1, 1, Some(9)), true)]).len(), 1);
    }

    #[test]
    fn an_election_reads_back_from_its_json() {
        let e = Election {
            stimulus: EventId([1; 32]),
            n: 2,
            selected: vec![Selected {
                author: AuthorId([2; 32]),
                name: "oracle".into(),
            }],
            round: 1,
            exhausted: false,
            intents: 1,
            valid: 1,
            winner: Some(EventId([3; 32])),
            winner_author: Some(AuthorId([2; 32])),
            emissary: Some("oracle".into()),
            model: None,
            commands: Some(vec!["SAY hi".into()]),
            text: None,
            settled: false,
        };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["stimulus"], EventId([1; 32]).to_string());
        assert_eq!(json["selected"][0]["author"], AuthorId([2; 32]).to_string());
        assert_eq!(json["winner_author"], AuthorId([2; 32]).to_string());
        assert_eq!(serde_json::from_value::<Election>(json).unwrap(), e);
    }

    fn election(stimulus: u8, winner: Option<u8>, settled: bool) -> Election {
        Election {
            stimulus: EventId([stimulus; 32]),
            n: 2,
            selected: vec![],
            round: 0,
            exhausted: false,
            intents: 0,
            valid: 0,
            winner: winner.map(|w| EventId([w; 32])),
            winner_author: None,
            emissary: None,
            model: None,
            commands: None,
            text: None,
            settled,
        }
    }

    #[test]
    fn a_follower_names_a_winner_a_replacement_and_settling() {
        let mut f = Follower::default();
        assert_eq!(f.classify(&election(1, None, false)), ChangeKind::Changed);
        assert_eq!(f.classify(&election(1, Some(7), false)), ChangeKind::Winner);
        assert_eq!(
            f.classify(&election(1, Some(5), false)),
            ChangeKind::Replaced {
                previous: EventId([7; 32])
            }
        );
        assert_eq!(f.classify(&election(1, Some(5), true)), ChangeKind::Settled);
        assert_eq!(f.classify(&election(1, Some(5), true)), ChangeKind::Changed);
        // Seen first with a winner: a new election whose winner came with it.
        assert_eq!(f.classify(&election(2, Some(3), true)), ChangeKind::Winner);
        // Known when the client connected: not news.
        f.remember(&election(4, Some(3), true));
        assert_eq!(f.classify(&election(4, Some(3), true)), ChangeKind::Changed);
        // Bounded: the oldest are forgotten.
        for k in 0..2 * chorus_kairos::machine::MAX_TRACKED_STIMULI {
            let mut e = election(0, None, false);
            e.stimulus = EventId::of_block(&k.to_le_bytes());
            f.classify(&e);
        }
        assert_eq!(f.seen.len(), chorus_kairos::machine::MAX_TRACKED_STIMULI);
        assert_eq!(f.order.len(), f.seen.len());
    }
}
