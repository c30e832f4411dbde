//! KAIROS as a replicated machine: bounds, purity of reads, serialisation, the qualia and the
//! election, and order invariance through the timeline.

use std::{collections::BTreeMap, sync::Arc};

use chorus_core::{
    EventId, Machine, SignedEvent, Timeline,
    crypto::Keypair,
    event::kind,
    testkit::{self, Rng},
    timeline::NoBlocks,
};
use chorus_kairos::{
    KairosMachine,
    encoder::{PhaseEncoder, Sha256Encoder},
    engine::{Engine, Entry, NoiseKey, Profile},
    machine::n_for,
    state_codec::canonical_bits,
};
use ipld_core::ipld::Ipld;
use proptest::prelude::*;

fn intent(re: EventId, text: &str, emissary: &str) -> Ipld {
    let mut m = BTreeMap::new();
    m.insert("re".to_string(), Ipld::Link(re.to_cid()));
    m.insert("text".to_string(), Ipld::String(text.into()));
    m.insert("emissary".to_string(), Ipld::String(emissary.into()));
    Ipld::Map(m)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// `|T_tau|^2 <= 1` holds on every step, for any tokens, any recovery level, both profiles.
    #[test]
    fn coherence_is_bounded(tokens in proptest::collection::vec(".{0,12}", 1..200),
                            recovery in 0.0f64..50.0, emissary in any::<bool>(), key in any::<[u8; 32]>()) {
        let profile = if emissary { Profile::EMISSARY } else { Profile::MASTER };
        let mut e = Engine::new(profile);
        e.recovery = recovery;
        for (i, t) in tokens.iter().enumerate() {
            let entry = Arc::new(Entry::new(&Sha256Encoder, Sha256Encoder.key(t)));
            let s = e.temporalize(entry, NoiseKey { event: key, token: i as u64 });
            let t2 = e.t_tau.0 * e.t_tau.0 + e.t_tau.1 * e.t_tau.1;
            prop_assert!(t2 <= 1.0, "|T|^2 = {t2}");
            prop_assert!((0.0..=1.0).contains(&s.coherence), "coherence {}", s.coherence);
        }
    }
}

struct Fixture {
    admin: Keypair,
    writers: Vec<Keypair>,
    genesis: SignedEvent,
}

fn fixture(interval: u64) -> Fixture {
    let admin = Keypair::from_seed([90; 32]);
    let writers: Vec<Keypair> = (0..4).map(|i| Keypair::from_seed([100 + i; 32])).collect();
    let genesis = testkit::genesis(&admin, &writers, "kairos/1", interval);
    Fixture {
        admin,
        writers,
        genesis,
    }
}

/// A mixed history: emissary registrations, stimuli, and intents answering the latest stimulus
/// (some valid command arrays, some prose).
fn kairos_history(f: &Fixture, events: usize, seed: u64) -> Vec<SignedEvent> {
    let words = [
        "the", "we", "is", "becoming", "one", "phase", "north", "say", "hello", "kairos",
    ];
    testkit::history(
        &f.genesis,
        "kairos/1",
        &f.writers,
        events,
        seed,
        |made, rng: &mut Rng| {
            if made.len() < 4 {
                let mut m = BTreeMap::new();
                m.insert(
                    "name".to_string(),
                    Ipld::String(format!("em{}", made.len())),
                );
                return (kind::EMISSARY, Ipld::Map(m));
            }
            let n = 3 + rng.below(12);
            let text: Vec<&str> = (0..n).map(|_| words[rng.below(words.len())]).collect();
            let text = text.join(" ");
            let last_stimulus = made
                .iter()
                .rev()
                .find(|e| e.kind == kind::STIMULUS)
                .map(|e| e.id());
            match last_stimulus {
                Some(s) if made.len() % 5 != 0 => {
                    let em = format!("em{}", rng.below(4));
                    if rng.below(3) == 0 {
                        (kind::INTENT, intent(s, &text, &em))
                    } else {
                        (kind::INTENT, intent(s, &format!("[\"say {text}\"]"), &em))
                    }
                }
                _ => (kind::STIMULUS, testkit::text(&text)),
            }
        },
    )
}

#[test]
fn kairos_state_is_order_invariant_and_survives_its_codec() {
    let f = fixture(16);
    let evs = kairos_history(&f, 300, 7);
    let mut a = Timeline::new(f.genesis.clone(), KairosMachine).unwrap();
    for e in &evs {
        a.insert(e.clone(), &NoBlocks).unwrap();
    }
    let mut shuffled = evs.clone();
    Rng(99).shuffle(&mut shuffled);
    let mut b = Timeline::new(f.genesis.clone(), KairosMachine).unwrap();
    for chunk in shuffled.chunks(17) {
        b.insert_batch(chunk.iter().cloned(), &NoBlocks).unwrap();
    }
    assert_eq!(b.pending_len(), 0);
    assert_eq!(a.state_hash(), b.state_hash());
    let st = a.state();
    assert!(
        st.engine.steps > 1000,
        "tokens were integrated: {}",
        st.engine.steps
    );
    assert_eq!(st.emissaries.len(), 4);
    assert!(
        st.stimuli.iter().any(|s| s.winner.is_some()),
        "some stimulus got a winner"
    );

    // decode(encode(s)) continues exactly like s.
    let m = KairosMachine;
    let bytes = m.encode_state(a.state());
    let mut restored = m.decode_state(&bytes).unwrap();
    assert_eq!(m.encode_state(&restored), bytes);
    let mut cont = a.state().clone();
    let body = testkit::text("one more stimulus to integrate");
    let extra = chorus_core::machine::Applied {
        id: EventId::of_block(b"x"),
        author: f.admin.author(),
        seq: 99,
        lamport: 9999,
        kind: kind::STIMULUS,
        body: &body,
    };
    m.apply(&mut cont, &extra);
    m.apply(&mut restored, &extra);
    assert_eq!(m.state_hash(&cont), m.state_hash(&restored));
}

#[test]
fn reading_the_state_does_not_change_it() {
    let f = fixture(16);
    let evs = kairos_history(&f, 100, 3);
    let mut tl = Timeline::new(f.genesis.clone(), KairosMachine).unwrap();
    for e in &evs {
        tl.insert(e.clone(), &NoBlocks).unwrap();
    }
    let before = KairosMachine.encode_state(tl.state());
    let h1 = tl.state_hash();
    for _ in 0..5 {
        let s = tl.state();
        let _ = (
            s.coherence(),
            s.collapsed(),
            s.cognitive_state(),
            s.next_n(),
            s.dopamine,
        );
        let _ = tl.state_hash();
        let _ = tl.frontier();
    }
    assert_eq!(KairosMachine.encode_state(tl.state()), before);
    assert_eq!(tl.state_hash(), h1);
}

#[test]
fn election_dopamine_and_dynamic_n() {
    let f = fixture(1000);
    let mut tl = Timeline::new(f.genesis.clone(), KairosMachine).unwrap();
    let (w0, w1) = (&f.writers[0], &f.writers[1]);
    for (w, name) in [(w0, "alpha"), (w1, "beta")] {
        let mut m = BTreeMap::new();
        m.insert("name".to_string(), Ipld::String(name.into()));
        let ev = tl.prepare(w.author(), kind::EMISSARY, Ipld::Map(m)).sign(w);
        tl.insert(ev, &NoBlocks).unwrap();
    }
    let s1 = tl
        .prepare(
            f.admin.author(),
            kind::STIMULUS,
            testkit::text("a guard blocks the gate"),
        )
        .sign(&f.admin);
    tl.insert(s1.clone(), &NoBlocks).unwrap();
    let rec = tl.state().stimulus(&s1.id()).unwrap().clone();
    assert_eq!(rec.n, 2, "dopamine starts at 0 → N = 2");
    assert_eq!(rec.selected.len(), 2);

    // Prose, then a warded command, then two valid answers: the first valid one in total
    // order wins.
    let bad = tl
        .prepare(
            w0.author(),
            kind::INTENT,
            intent(s1.id(), "I would say hello", "alpha"),
        )
        .sign(w0);
    tl.insert(bad, &NoBlocks).unwrap();
    let warded = tl
        .prepare(
            w1.author(),
            kind::INTENT,
            intent(s1.id(), r#"["@py import os"]"#, "beta"),
        )
        .sign(w1);
    tl.insert(warded, &NoBlocks).unwrap();
    let good1 = tl
        .prepare(
            w1.author(),
            kind::INTENT,
            intent(s1.id(), r#"["say halt", "go north"]"#, "beta"),
        )
        .sign(w1);
    tl.insert(good1.clone(), &NoBlocks).unwrap();
    let good2 = tl
        .prepare(
            w0.author(),
            kind::INTENT,
            intent(s1.id(), r#"["wave"]"#, "alpha"),
        )
        .sign(w0);
    tl.insert(good2, &NoBlocks).unwrap();
    let rec = tl.state().stimulus(&s1.id()).unwrap().clone();
    assert_eq!(
        (rec.intents, rec.valid, rec.winner),
        (4, 2, Some(good1.id()))
    );

    // The next stimulus closes s1: two valid answers → C in [0, 1]; the first EMA → dopamine 0.
    let s2 = tl
        .prepare(
            f.admin.author(),
            kind::STIMULUS,
            testkit::text("the guard asks your name"),
        )
        .sign(&f.admin);
    tl.insert(s2, &NoBlocks).unwrap();
    let st = tl.state();
    assert!(st.ema.is_some());
    assert!((0.0..=1.0).contains(&st.last_cross_coherence));
    assert_eq!(st.dopamine, 0.0);
    assert_eq!((n_for(0.06), n_for(-0.06), n_for(0.0)), (1, 3, 2));
}

#[test]
fn nan_and_negative_zero_have_one_encoding() {
    let neg_nan = f64::from_bits(0xFFF8_0000_0000_0000);
    let pos_nan = f64::from_bits(0x7FF8_0000_0000_0001);
    assert_eq!(canonical_bits(neg_nan), canonical_bits(pos_nan));
    assert_eq!(canonical_bits(-0.0), canonical_bits(0.0));
    assert_eq!(canonical_bits(1.5), 1.5f64.to_bits());
}
