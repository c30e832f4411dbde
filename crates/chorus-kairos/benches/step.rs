//! Criterion benches of where a KAIROS fold's time goes (issue 19): one engine step per kernel,
//! the parts of a step that are not the products (a new token's phasors, the keyed noise), and
//! a whole fold of events through the timeline. `cargo bench -p chorus-kairos --bench step`.
//! The end-to-end rows (merges, late inserts, tokens/s with the bits compared across kernels)
//! are `chorus-bench`'s; these are the per-operation figures beside them.

use std::{collections::BTreeMap, hint::black_box, sync::Arc};

use chorus_core::{EventId, Timeline, crypto::Keypair, event::kind, testkit};
use chorus_kairos::{
    KairosMachine,
    encoder::{PhaseEncoder, Sha256Encoder},
    engine::{Engine, Entry, NoiseKey, Profile},
    hermitian::Kernel,
    noise,
};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const WORDS: &[&str] = &[
    "the",
    "swarm",
    "remembers",
    "what",
    "each",
    "node",
    "heard",
    "slow",
    "fast",
    "pi",
    "zero",
    "answers",
    "late",
    "but",
    "never",
    "lost",
    "phase",
    "resonance",
    "collapse",
    "window",
];

/// One step of the master profile with a full window (119 pairs), for each kernel this CPU has.
fn step(c: &mut Criterion) {
    let entries: Vec<Arc<Entry>> = (0..1_000)
        .map(|i| {
            let key = Sha256Encoder.key(&format!("{}{}", WORDS[i % WORDS.len()], i % 37));
            Arc::new(Entry::new(&Sha256Encoder, key))
        })
        .collect();
    let mut g = c.benchmark_group("kairos step, master profile, window full");
    g.throughput(Throughput::Elements(1));
    for kernel in Kernel::available() {
        g.bench_function(kernel.name(), |b| {
            let mut e = Engine::new(Profile::MASTER).with_kernel(kernel);
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                let entry = entries[i as usize % entries.len()].clone();
                black_box(e.temporalize(
                    entry,
                    NoiseKey {
                        event: [1; 32],
                        token: i,
                    },
                ))
            });
        });
    }
    g.finish();
}

/// The parts of a token's cost besides the products.
fn parts(c: &mut Criterion) {
    let mut g = c.benchmark_group("kairos parts");
    g.bench_function(
        "a new token's phasors (SHA-256 angles, 384 sin/cos pairs)",
        |b| {
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                black_box(Entry::new(
                    &Sha256Encoder,
                    Sha256Encoder.key(&format!("word{i}")),
                ))
            });
        },
    );
    g.bench_function("a token's keyed noise (119 normals: log, cos, sqrt)", |b| {
        let mut token = 0u64;
        b.iter(|| {
            token += 1;
            let mut s = 0.0;
            for pair in 1..120 {
                s += noise::normal(&[3; 32], token, pair);
            }
            black_box(s)
        });
    });
    g.finish();
}

/// A fold of 100 stimuli (10 words each) from the genesis, through the timeline (`kairos/1`).
fn fold(c: &mut Criterion) {
    let admin = Keypair::from_seed([250; 32]);
    let writer = Keypair::from_seed([1; 32]);
    let g = testkit::genesis(&admin, std::slice::from_ref(&writer), "kairos/1", 256);
    let mut builder = Timeline::new(g.clone(), testkit::NullMachine("kairos/1")).unwrap();
    let mut src: BTreeMap<EventId, Arc<[u8]>> = BTreeMap::new();
    let mut events = vec![];
    for i in 0..100 {
        let words: Vec<&str> = (0..10)
            .map(|k| WORDS[(i * 7 + k * 3) % WORDS.len()])
            .collect();
        let e = builder
            .prepare(
                writer.author(),
                kind::STIMULUS,
                testkit::text(&words.join(" ")),
            )
            .sign(&writer);
        builder.insert_deferred(e.clone()).unwrap();
        src.insert(e.id(), e.bytes_arc());
        events.push(e);
    }
    let mut grp = c.benchmark_group("kairos fold");
    grp.throughput(Throughput::Elements(events.len() as u64));
    grp.sample_size(20);
    grp.bench_function("100 stimuli of 10 words from the genesis", |b| {
        b.iter_batched(
            || Timeline::new(g.clone(), KairosMachine).unwrap(),
            |mut tl| {
                for r in tl.insert_batch(events.iter().cloned(), &src).unwrap() {
                    r.unwrap();
                }
                black_box(tl.state_hash())
            },
            BatchSize::LargeInput,
        );
    });
    grp.finish();
}

criterion_group!(benches, step, parts, fold);
criterion_main!(benches);
