//! The council of `kairos/2` (`chorus_kairos::council`): selection that changes from one
//! stimulus to the next and follows the weights, dead emissaries passed over, slow ones kept,
//! escalation, the ledger, the codec and order invariance through the timeline. Each behaviour
//! is checked against `kairos/1` where the old rule is the defect being fixed.

use std::collections::{BTreeMap, VecDeque};

use chorus_core::{
    AuthorId, EventId, Machine, Timeline,
    crypto::Keypair,
    event::kind,
    machine::Applied,
    testkit::{self, Rng},
    timeline::NoBlocks,
};
use chorus_kairos::{
    Kairos2Machine, KairosMachine, KairosState,
    body::{Escalation, Failure, Intent, Registration, Stimulus},
    council::{self, LEASE_STIMULI, MAX_OWED, MIN_WEIGHT},
    machine::EmissaryId,
};
use ipld_core::ipld::Ipld;

mod common;
use common::{Fold, elect, emissaries};

/// Runs `stimuli` stimuli where every selected emissary in `live` answers at once (valid) and
/// every live author heartbeats after each stimulus; an election left without a valid answer is
/// escalated as a gateway would. Returns how often each emissary was asked, and the
/// escalations written.
fn run<M: Machine<State = KairosState>>(
    f: &mut Fold<M>,
    all: &[EmissaryId],
    live: &dyn Fn(usize, &EmissaryId) -> bool,
    stimuli: usize,
) -> (BTreeMap<EmissaryId, usize>, usize) {
    let mut asked: BTreeMap<EmissaryId, usize> = all.iter().map(|e| (e.clone(), 0)).collect();
    let mut escalations = 0;
    for k in 0..stimuli {
        let s = f.stimulus();
        let (asked_now, escalated) = elect(f, s, &|e| live(k, e));
        for e in &asked_now {
            *asked.get_mut(e).unwrap() += 1;
        }
        escalations += escalated;
        assert!(
            f.record(&s).winner.is_some(),
            "stimulus {k} got no winner: {:?}",
            f.record(&s)
        );
        for e in all {
            if live(k, e) {
                f.heartbeat(e.0);
            }
        }
    }
    (asked, escalations)
}

#[test]
fn every_emissary_is_asked_and_kairos_1_asked_only_the_first_ones() {
    let all = emissaries(5);
    let mut v2 = Fold::new(Kairos2Machine, "kairos/2");
    let mut v1 = Fold::new(KairosMachine, "kairos/1");
    for e in &all {
        v2.register(e);
        v1.register(e);
    }
    let (asked2, esc2) = run(&mut v2, &all, &|_, _| true, 400);
    let (asked1, _) = run(&mut v1, &all, &|_, _| true, 400);
    assert_eq!(esc2, 0, "nobody is dead: no escalation");
    let total: usize = asked2.values().sum();
    eprintln!("asked over 400 stimuli: kairos/2 {asked2:?}; kairos/1 {asked1:?}");
    for (e, n) in &asked2 {
        // Equal weights at the start, then the ledger: each one's share stays near 1/5.
        assert!(
            *n * 10 >= total,
            "kairos/2 asked {} only {n} of {total} times: {asked2:?}",
            e.1
        );
    }
    let never = asked1.values().filter(|&&n| n == 0).count();
    assert!(
        never >= 2,
        "kairos/1 asks the top N by weight, ties by key: two of five are never asked ({asked1:?})"
    );
}

#[test]
fn a_dead_emissary_costs_at_most_two_escalations_then_is_passed_over() {
    let all = emissaries(4);
    let dead = all[1].clone();
    let died_at = 20;
    let mut f = Fold::new(Kairos2Machine, "kairos/2");
    for e in &all {
        f.register(e);
    }
    let (before, _) = run(&mut f, &all, &|_, _| true, died_at);
    assert!(before[&dead] > 0, "asked while alive");
    let is_live = |_: usize, e: &EmissaryId| *e != all[1];
    let (after, escalations) = run(&mut f, &all, &is_live, 300);
    eprintln!("after em1 died: asked {after:?}, {escalations} escalations");
    // Asked until it owes MAX_OWED answers, then only as the probe beside the others (one
    // lapsed emissary every LEASE_STIMULI stimuli), which never needs an escalation.
    let probes = 300 / LEASE_STIMULI as usize + 1;
    assert!(
        after[&dead] <= MAX_OWED + probes,
        "a dead emissary is asked until it owes {MAX_OWED} answers, then only probed: {after:?}"
    );
    assert!(escalations <= MAX_OWED, "{escalations} escalations");
    assert!(!council::leased(&f.s, &dead.0), "its lease lapsed");
    assert!(council::leased(&f.s, &all[0].0));
    // The live ones share the work.
    for e in all.iter().filter(|e| **e != dead) {
        assert!(after[e] > 30, "{} asked {} times", e.1, after[e]);
    }
    // It comes back: one event from its node renews the lease, and it is asked again.
    f.heartbeat(dead.0);
    let (back, _) = run(&mut f, &all, &|_, _| true, 100);
    assert!(back[&dead] > 10, "asked again after it came back: {back:?}");
}

#[test]
fn when_every_asked_emissary_is_dead_an_escalation_finds_a_live_one() {
    // Two of four die at once: some elections then ask only dead ones, and only an escalation
    // gets them a winner (`run` asserts every stimulus has one). The cost is bounded: each dead
    // one is asked until it owes MAX_OWED answers.
    let all = emissaries(4);
    let mut f = Fold::new(Kairos2Machine, "kairos/2");
    for e in &all {
        f.register(e);
    }
    run(&mut f, &all, &|_, _| true, 20);
    let dead = |e: &EmissaryId| *e == all[0] || *e == all[1];
    let (after, escalations) = run(&mut f, &all, &|_, e| !dead(e), 200);
    eprintln!("two of four dead: asked {after:?}, {escalations} escalations");
    let probes = 200 / LEASE_STIMULI as usize + 1;
    assert!(
        after[&all[0]] <= MAX_OWED + probes && after[&all[1]] <= MAX_OWED + probes,
        "{after:?}"
    );
    assert!(escalations <= 2 * MAX_OWED, "{escalations} escalations");
}

#[test]
fn an_emissary_that_lapsed_while_alive_is_probed_and_gets_back() {
    // em0's node writes only when asked (a light node: no heartbeats). It is away for 40
    // stimuli (its lease lapses), then answers whenever asked again. Without the probe it would
    // stay in the last tier for good: the others always fill N.
    let all = emissaries(4);
    let mut f = Fold::new(Kairos2Machine, "kairos/2");
    for e in &all {
        f.register(e);
    }
    let away = |k: usize, e: &EmissaryId| *e != all[0] || k >= 40;
    let mut asked_back = 0;
    for k in 0..200 {
        let s = f.stimulus();
        let r = f.record(&s).clone();
        for e in &r.selected {
            if away(k, e) {
                f.answer(e, s, true);
                if *e == all[0] && k >= 40 {
                    asked_back += 1;
                }
            }
        }
        // Only the other three heartbeat.
        for e in &all[1..] {
            f.heartbeat(e.0);
        }
    }
    assert!(
        asked_back > 30,
        "em0 answered {asked_back} times in the 160 stimuli after it came back"
    );
    assert!(council::leased(&f.s, &all[0].0));
}

#[test]
fn kairos_1_asks_a_dead_emissary_first_forever() {
    let all = emissaries(2);
    let mut f = Fold::new(KairosMachine, "kairos/1");
    for e in &all {
        f.register(e);
    }
    // em0 is dead; em1 answers whenever asked. Equal weights, ties by key, weights that move
    // only on a collapse: em0 is asked first for every stimulus, however long it stays silent.
    for _ in 0..50 {
        let s = f.stimulus();
        let r = f.record(&s).clone();
        assert_eq!(r.selected[0], all[0]);
        if r.selected.contains(&all[1]) {
            f.answer(&all[1], s, true);
        }
    }
}

#[test]
fn a_slow_emissary_that_answers_keeps_its_place() {
    let all = emissaries(4);
    let slow = all[3].clone();
    let mut f = Fold::new(Kairos2Machine, "kairos/2");
    for e in &all {
        f.register(e);
    }
    // The slow one answers each question three stimuli later; the others at once.
    let mut late: VecDeque<(usize, EventId)> = VecDeque::new();
    let mut asked_slow = 0;
    let stimuli = 400;
    for k in 0..stimuli {
        while late.front().is_some_and(|(at, _)| *at <= k) {
            let (_, s) = late.pop_front().unwrap();
            f.answer(&slow, s, true);
        }
        let s = f.stimulus();
        let r = f.record(&s).clone();
        for e in &r.selected {
            if *e == slow {
                asked_slow += 1;
                late.push_back((k + 3, s));
            } else {
                f.answer(e, s, true);
            }
        }
        for e in all.iter().filter(|e| **e != slow) {
            f.heartbeat(e.0);
        }
    }
    eprintln!("the slow emissary was asked {asked_slow} of {stimuli} times");
    assert!(
        council::leased(&f.s, &slow.0),
        "its answers renew its lease"
    );
    assert!(
        asked_slow * 10 >= stimuli,
        "slow is not dead: asked {asked_slow} of {stimuli}"
    );
}

#[test]
fn escalation_widens_once_per_round_and_then_is_exhausted() {
    let all = emissaries(3);
    let mut f = Fold::new(Kairos2Machine, "kairos/2");
    for e in &all {
        f.register(e);
    }
    let s = f.stimulus();
    let first = f.record(&s).selected.clone();
    assert_eq!(first.len(), 2, "N = 2 at dopamine 0");
    f.escalate(s, 2);
    assert_eq!(f.record(&s).round, 0, "a round out of turn is ignored");
    let weight_before = f.s.emissaries[&first[0]];
    f.escalate(s, 1);
    let r = f.record(&s).clone();
    assert_eq!(
        (r.round, r.selected.len()),
        (1, 3),
        "the third one is asked"
    );
    assert!(!r.selected[..2].contains(&r.selected[2]));
    assert!(
        f.s.emissaries[&first[0]] < weight_before,
        "a miss costs weight"
    );
    f.escalate(s, 1);
    assert_eq!(
        f.record(&s).selected.len(),
        3,
        "the same round twice widens once"
    );
    f.escalate(s, 2);
    let r = f.record(&s).clone();
    assert!(r.exhausted && r.round == 2, "nobody left: {r:?}");
    f.escalate(s, 3);
    assert_eq!(f.record(&s).round, 2, "an exhausted election stays so");

    // A stimulus with a winner is not widened.
    let s = f.stimulus();
    let e = f.record(&s).selected[0].clone();
    f.answer(&e, s, true);
    f.escalate(s, 1);
    assert_eq!(f.record(&s).round, 0);

    // kairos/1 ignores escalations.
    let mut v1 = Fold::new(KairosMachine, "kairos/1");
    for e in &all {
        v1.register(e);
    }
    let s = v1.stimulus();
    let before = v1.record(&s).clone();
    v1.escalate(s, 1);
    assert_eq!(*v1.record(&s), before);
}

#[test]
fn the_ledger_rewards_winners_and_costs_failures() {
    let all = emissaries(2);
    let mut f = Fold::new(Kairos2Machine, "kairos/2");
    for e in &all {
        f.register(e);
    }
    // Both asked (N = 2); em0 wins every time, em1 always fails.
    for _ in 0..40 {
        let s = f.stimulus();
        f.answer(&all[0], s, true);
        f.answer(&all[1], s, false);
    }
    let (w0, w1) = (f.s.emissaries[&all[0]], f.s.emissaries[&all[1]]);
    assert!(w0 > 1.5 && w1 < 0.5, "weights {w0} {w1}");
    assert!(w1 >= MIN_WEIGHT);
    // The weights steer the selection: the winner is asked first far more often.
    let mut first0 = 0;
    for k in 0..200u32 {
        let id = EventId::of_block(&k.to_le_bytes());
        let c = council::candidates(&f.s, &id, &[], 1);
        first0 += (c[0] == all[0]) as u32;
    }
    assert!(first0 > 150, "em0 first in {first0} of 200");
}

#[test]
fn a_lease_needs_an_event_within_the_window() {
    let all = emissaries(2);
    let mut f = Fold::new(Kairos2Machine, "kairos/2");
    for e in &all {
        f.register(e);
    }
    for _ in 0..LEASE_STIMULI {
        f.stimulus();
    }
    assert!(council::leased(&f.s, &all[0].0), "still within the window");
    f.stimulus();
    assert!(
        !council::leased(&f.s, &all[0].0),
        "one stimulus more: lapsed"
    );
    f.heartbeat(all[0].0);
    assert!(council::leased(&f.s, &all[0].0));
    // Authors without an emissary are not tracked (the lease table stays bounded).
    f.heartbeat(AuthorId([99; 32]));
    assert_eq!(f.s.last_active.len(), 2);
}

/// A v2 history through the timeline: registrations, stimuli, intents (valid and not),
/// heartbeats and escalations, in the order made and shuffled, give the same state; the codec
/// round-trips it and a restored state continues like the original.
#[test]
fn kairos_2_is_order_invariant_and_survives_its_codec() {
    let admin = Keypair::from_seed([90; 32]);
    let writers: Vec<Keypair> = (0..4).map(|i| Keypair::from_seed([100 + i; 32])).collect();
    let genesis = testkit::genesis(&admin, &writers, "kairos/2", 16);
    let evs = testkit::history(
        &genesis,
        "kairos/2",
        &writers,
        400,
        5,
        |made, rng: &mut Rng| {
            if made.len() < 4 {
                let name = format!("em{}", made.len());
                return (kind::EMISSARY, Registration::named(name).to_ipld());
            }
            let last = made
                .iter()
                .rev()
                .find(|e| e.kind == kind::STIMULUS)
                .map(|e| e.id());
            match (last, rng.below(6)) {
                (None, _) | (_, 0) => (kind::STIMULUS, Stimulus::text("say hello north").to_ipld()),
                (Some(s), 1) => (
                    kind::ESCALATE,
                    Escalation {
                        re: s,
                        round: 1 + rng.below(2) as u8,
                    }
                    .to_ipld(),
                ),
                (Some(_), 2) => (kind::HEARTBEAT, Ipld::Map(BTreeMap::new())),
                (Some(s), k) => {
                    let mut i = Intent {
                        re: Some(s),
                        emissary: format!("em{}", rng.below(4)),
                        ..Default::default()
                    };
                    if k == 3 {
                        i.failure = Some(Failure {
                            code: "x".into(),
                            error: "y".into(),
                        });
                    } else {
                        i.commands = Some(vec!["say hi".into()]);
                    }
                    (kind::INTENT, i.to_ipld())
                }
            }
        },
    );
    let mut a = Timeline::new(genesis.clone(), Kairos2Machine).unwrap();
    for e in &evs {
        a.insert(e.clone(), &NoBlocks).unwrap();
    }
    let mut shuffled = evs.clone();
    Rng(77).shuffle(&mut shuffled);
    let mut b = Timeline::new(genesis.clone(), Kairos2Machine).unwrap();
    for chunk in shuffled.chunks(13) {
        b.insert_batch(chunk.iter().cloned(), &NoBlocks).unwrap();
    }
    assert_eq!(b.pending_len(), 0);
    assert_eq!(a.state_hash(), b.state_hash());
    let st = a.state();
    assert!(st.stimuli_applied > 20, "{} stimuli", st.stimuli_applied);
    assert!(
        st.stimuli.iter().any(|r| r.round > 0),
        "some election was escalated"
    );
    assert!(!st.last_active.is_empty());

    let m = Kairos2Machine;
    let bytes = m.encode_state(st);
    assert_eq!(&bytes[..16], b"chorus/kairos/2\0");
    let mut restored = m.decode_state(&bytes).unwrap();
    assert_eq!(m.encode_state(&restored), bytes);
    assert!(
        KairosMachine.decode_state(&bytes).is_err(),
        "a kairos/1 replica refuses kairos/2 bytes"
    );
    let mut cont = st.clone();
    let body = Stimulus::text("one more").to_ipld();
    let extra = Applied {
        id: EventId::of_block(b"x"),
        author: admin.author(),
        seq: 999,
        lamport: 9999,
        kind: kind::STIMULUS,
        body: &body,
    };
    m.apply(&mut cont, &extra);
    m.apply(&mut restored, &extra);
    assert_eq!(m.state_hash(&cont), m.state_hash(&restored));
}
