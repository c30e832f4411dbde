//! What the council's tests share: a machine folding hand-made events, and emissaries.
#![allow(dead_code)] // each test file uses its own part

use std::collections::BTreeMap;

use chorus_core::{
    AuthorId, EventId, Machine, crypto::Keypair, event::kind, genesis::Genesis, machine::Applied,
    testkit,
};
use chorus_kairos::{
    KairosState,
    body::{Escalation, Failure, Intent, Registration, Stimulus},
    machine::{EmissaryId, StimulusRecord},
};
use ipld_core::ipld::Ipld;

/// A machine folding hand-made events in the order given (the timeline is not needed to test
/// what one event does to the state).
pub struct Fold<M: Machine<State = KairosState>> {
    pub m: M,
    pub s: KairosState,
    pub made: u64,
}

impl<M: Machine<State = KairosState>> Fold<M> {
    pub fn new(m: M, machine_id: &str) -> Self {
        let admin = Keypair::from_seed([1; 32]);
        let g = testkit::genesis(&admin, &[], machine_id, 16);
        let s = m.init(&Genesis::from_event(&g).unwrap());
        Fold { m, s, made: 0 }
    }

    pub fn event(&mut self, author: AuthorId, kind: &str, body: Ipld) -> EventId {
        self.made += 1;
        let id = EventId::of_block(&self.made.to_le_bytes());
        self.m.apply(
            &mut self.s,
            &Applied {
                id,
                author,
                seq: self.made,
                lamport: self.made,
                kind,
                body: &body,
            },
        );
        id
    }

    pub fn register(&mut self, e: &EmissaryId) {
        self.event(e.0, kind::EMISSARY, Registration::named(&e.1).to_ipld());
    }

    pub fn stimulus(&mut self) -> EventId {
        let t = format!("stimulus {}", self.made);
        self.event(
            AuthorId([0; 32]),
            kind::STIMULUS,
            Stimulus::text(t).to_ipld(),
        )
    }

    pub fn answer(&mut self, e: &EmissaryId, re: EventId, valid: bool) {
        let mut i = Intent {
            re: Some(re),
            emissary: e.1.clone(),
            ..Default::default()
        };
        if valid {
            i.commands = Some(vec!["say hello".into()]);
        } else {
            i.failure = Some(Failure {
                code: "timeout".into(),
                error: "the model did not answer".into(),
            });
        }
        self.event(e.0, kind::INTENT, i.to_ipld());
    }

    pub fn heartbeat(&mut self, author: AuthorId) {
        self.event(author, kind::HEARTBEAT, Ipld::Map(BTreeMap::new()));
    }

    pub fn escalate(&mut self, re: EventId, round: u8) {
        let body = Escalation { re, round }.to_ipld();
        self.event(AuthorId([0; 32]), kind::ESCALATE, body);
    }

    pub fn record(&self, id: &EventId) -> &StimulusRecord {
        self.s.stimulus(id).expect("tracked")
    }
}

pub fn emissaries(k: u8) -> Vec<EmissaryId> {
    (0..k)
        .map(|i| (AuthorId([10 + i; 32]), format!("em{i}")))
        .collect()
}

/// Decides the election of `s` as a gateway would: the asked emissaries for which `answers`
/// holds answer at once (valid); while it has no winner it is escalated, round after round.
/// Returns every emissary asked, in order, and the escalations written.
pub fn elect<M: Machine<State = KairosState>>(
    f: &mut Fold<M>,
    s: EventId,
    answers: &dyn Fn(&EmissaryId) -> bool,
) -> (Vec<EmissaryId>, usize) {
    let mut asked: Vec<EmissaryId> = vec![];
    let mut escalations = 0;
    for round in 0..=chorus_kairos::council::MAX_ESCALATIONS {
        let r = f.record(&s).clone();
        if r.winner.is_some() || r.exhausted {
            break;
        }
        if round > 0 {
            f.escalate(s, round);
            escalations += 1;
        }
        let r = f.record(&s).clone();
        for e in r.selected.iter().skip(asked.len()) {
            asked.push(e.clone());
            if answers(e) {
                f.answer(e, s, true);
            }
        }
    }
    (asked, escalations)
}
