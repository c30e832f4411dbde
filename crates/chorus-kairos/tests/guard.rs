//! The rules of `kairos/3` against a hostile writer (`chorus_kairos::guard`, issue 15), each
//! shown against `kairos/2`, where the attack works: a token bomb's engine work, a winner
//! nobody asked, one writer filling the council with silent dummies, registrations that never
//! expire.

use chorus_core::{AuthorId, EventId, Machine, event::kind};
use chorus_kairos::{
    Kairos2Machine, Kairos3Machine, KairosState,
    body::{Intent, Stimulus},
    council,
    guard::{self, EXPIRE_STIMULI, MAX_EMISSARIES_PER_AUTHOR, MAX_TOKENS_PER_EVENT},
    machine::EmissaryId,
};

mod common;
use common::{Fold, elect, emissaries};

fn words(n: usize) -> String {
    (0..n)
        .map(|i| format!("w{}", i % 97))
        .collect::<Vec<_>>()
        .join(" ")
}

fn intent(
    f: &mut Fold<impl Machine<State = KairosState>>,
    e: &EmissaryId,
    re: EventId,
    text: String,
) -> EventId {
    let i = Intent {
        re: Some(re),
        emissary: e.1.clone(),
        text: Some(text),
        commands: Some(vec!["say hello".into()]),
        ..Default::default()
    };
    f.event(e.0, kind::INTENT, i.to_ipld())
}

/// Engine steps one stimulus and one intent of `tokens` tokens cost.
fn steps_of_a_bomb<M: Machine<State = KairosState>>(m: M, id: &str, tokens: usize) -> (u64, u64) {
    let mut f = Fold::new(m, id);
    let e = emissaries(1).remove(0);
    f.register(&e);
    let before = f.s.engine.steps;
    let s = f.event(
        AuthorId([9; 32]),
        kind::STIMULUS,
        Stimulus::text(words(tokens)).to_ipld(),
    );
    let after_stimulus = f.s.engine.steps;
    intent(&mut f, &e, s, words(tokens));
    (after_stimulus - before, f.s.engine.steps - after_stimulus)
}

#[test]
fn a_token_bomb_feeds_the_engine_at_most_the_cap() {
    let bomb = 24_000;
    assert_eq!(
        steps_of_a_bomb(Kairos3Machine, "kairos/3", bomb),
        (MAX_TOKENS_PER_EVENT as u64, MAX_TOKENS_PER_EVENT as u64)
    );
    // Below the cap nothing changes.
    assert_eq!(steps_of_a_bomb(Kairos3Machine, "kairos/3", 40), (40, 40));
    // kairos/2: every token is a step, paid again at every replay.
    assert_eq!(
        steps_of_a_bomb(Kairos2Machine, "kairos/2", bomb),
        (bomb as u64, bomb as u64)
    );
}

/// A stimulus, then an emissary the election did not select answers first (valid), then a
/// selected one. Returns (winner, the unasked intent, the asked intent, answers counted in the
/// coherence across outputs).
fn unasked_answers_first<M: Machine<State = KairosState>>(
    m: M,
    id: &str,
) -> (EventId, EventId, EventId, u32) {
    let mut f = Fold::new(m, id);
    let all = emissaries(6);
    for e in &all {
        f.register(e);
    }
    let s = f.stimulus();
    let selected = f.record(&s).selected.clone();
    let outsider = all
        .iter()
        .find(|e| !selected.contains(e))
        .expect("6 registered, ≤ 3 asked")
        .clone();
    let unasked = intent(&mut f, &outsider, s, "first".into());
    let asked = intent(&mut f, &selected[0], s, "second".into());
    let winner = f.record(&s).winner.expect("a valid asked answer");
    (winner, unasked, asked, f.s.open.as_ref().unwrap().n)
}

#[test]
fn only_an_asked_emissary_wins_or_counts_for_the_coherence() {
    let (winner, _, asked, counted) = unasked_answers_first(Kairos3Machine, "kairos/3");
    assert_eq!(winner, asked);
    assert_eq!(
        counted, 1,
        "the unasked answer moved the coherence across outputs"
    );
    let (winner, unasked, _, counted) = unasked_answers_first(Kairos2Machine, "kairos/2");
    assert_eq!(
        winner, unasked,
        "kairos/2: the first valid intent wins, asked or not"
    );
    assert_eq!(counted, 2);
}

/// Four honest emissaries (their own authors, answering when asked) and one writer that
/// registers `dummies` names and heartbeats after every stimulus (its lease held) but never
/// answers. Elections left without a winner are escalated as a gateway would. Returns the
/// dummies registered and the stimuli of the last `stimuli / 2` that got a winner.
fn dummies_against_the_honest<M: Machine<State = KairosState>>(
    m: M,
    id: &str,
    dummies: usize,
    stimuli: usize,
) -> (usize, usize) {
    let mut f = Fold::new(m, id);
    let honest = emissaries(4);
    for e in &honest {
        f.register(e);
    }
    let attacker = AuthorId([99; 32]);
    for i in 0..dummies {
        f.register(&(attacker, format!("dummy-{i}")));
    }
    let registered = guard::registrations_of(&f.s, &attacker);
    let mut won = 0;
    for k in 0..stimuli {
        let s = f.stimulus();
        elect(&mut f, s, &|e| honest.contains(e));
        if k >= stimuli / 2 && f.record(&s).winner.is_some() {
            won += 1;
        }
        for e in &honest {
            f.heartbeat(e.0);
        }
        f.heartbeat(attacker);
    }
    (registered, won)
}

#[test]
fn one_writer_cannot_fill_the_council_with_dummies() {
    let (dummies, stimuli) = (1_000, 60);
    let (registered, won) =
        dummies_against_the_honest(Kairos3Machine, "kairos/3", dummies, stimuli);
    assert_eq!(registered, MAX_EMISSARIES_PER_AUTHOR);
    assert_eq!(
        won,
        stimuli / 2,
        "every election got a winner under kairos/3"
    );
    let (registered, won) =
        dummies_against_the_honest(Kairos2Machine, "kairos/2", dummies, stimuli);
    assert_eq!(registered, dummies);
    // kairos/2: the dummies take nearly every selection, four rounds of them.
    assert!(
        won * 2 < stimuli / 2,
        "kairos/2: {won} of {} elections won",
        stimuli / 2
    );
    println!(
        "kairos/2 with {dummies} dummies: {won} of {} elections won",
        stimuli / 2
    );
}

#[test]
fn a_silent_authors_registrations_expire_and_a_new_registration_brings_them_back() {
    let mut f = Fold::new(Kairos3Machine, "kairos/3");
    let all = emissaries(3);
    for e in &all {
        f.register(e);
    }
    let gone = &all[0];
    // The others answer nothing but heartbeat; `gone` writes nothing.
    for _ in 0..EXPIRE_STIMULI {
        f.stimulus();
        f.heartbeat(all[1].0);
        f.heartbeat(all[2].0);
    }
    assert!(f.s.emissaries.contains_key(gone), "expired too early");
    assert!(!council::leased(&f.s, &gone.0));
    f.stimulus();
    assert!(
        !f.s.emissaries.contains_key(gone),
        "silent for more than {EXPIRE_STIMULI} stimuli"
    );
    assert!(!f.s.last_active.contains_key(&gone.0));
    assert!(f.s.emissaries.contains_key(&all[1]) && f.s.emissaries.contains_key(&all[2]));
    // Back: a registration, which also renews the lease.
    f.register(gone);
    assert!(f.s.emissaries.contains_key(gone) && council::leased(&f.s, &gone.0));
    // An author at the cap registers no more, but an existing name is no new slot.
    let author = AuthorId([50; 32]);
    for i in 0..MAX_EMISSARIES_PER_AUTHOR + 3 {
        f.register(&(author, format!("e{i}")));
    }
    f.register(&(author, "e0".into()));
    assert_eq!(
        guard::registrations_of(&f.s, &author),
        MAX_EMISSARIES_PER_AUTHOR
    );
    // kairos/2 keeps a silent author's registrations for ever.
    let mut f = Fold::new(Kairos2Machine, "kairos/2");
    f.register(gone);
    for _ in 0..4 * EXPIRE_STIMULI {
        f.stimulus();
    }
    assert!(f.s.emissaries.contains_key(gone));
}

/// The state bytes of `kairos/3` carry their own magic and decode to the same state.
#[test]
fn kairos_3_state_round_trips_under_its_own_magic() {
    let mut f = Fold::new(Kairos3Machine, "kairos/3");
    for e in &emissaries(3) {
        f.register(e);
    }
    let s = f.stimulus();
    f.answer(&f.record(&s).selected[0].clone(), s, true);
    let bytes = f.m.encode_state(&f.s);
    assert_eq!(&bytes[..16], b"chorus/kairos/3\0");
    let back = f.m.decode_state(&bytes).unwrap();
    assert_eq!(f.m.encode_state(&back), bytes);
    assert!(
        Kairos2Machine.decode_state(&bytes).is_err(),
        "a kairos/2 replica must not take kairos/3 bytes"
    );
}
