//! Helpers for tests and benchmarks of crates built on the core (feature `testkit`): a genesis
//! builder, a tiny deterministic RNG and a generator of concurrent multi-writer histories.

use std::collections::BTreeMap;

use ipld_core::ipld::Ipld;

use crate::{
    crypto::Keypair,
    event::{SignedEvent, UnsignedEvent, kind},
    genesis::Genesis,
    machine::{Applied, Machine, StateDecodeError},
    timeline::Timeline,
};

/// A genesis administered by `admin` with `writers`, for `machine_id`.
pub fn genesis(
    admin: &Keypair,
    writers: &[Keypair],
    machine_id: &str,
    interval: u64,
) -> SignedEvent {
    genesis_ordered(admin, writers, machine_id, interval, None)
}

/// As [`genesis`], naming an order rule (`None`: the genesis has no `order` key).
pub fn genesis_ordered(
    admin: &Keypair,
    writers: &[Keypair],
    machine_id: &str,
    interval: u64,
    order: Option<&str>,
) -> SignedEvent {
    let mut body = Genesis::new_body("testkit", admin.author(), machine_id);
    body.order = order.map(str::to_string);
    body.writers = writers
        .iter()
        .map(|k| serde_bytes::ByteBuf::from(k.author().0.to_vec()))
        .collect();
    body.checkpoint_interval = interval;
    UnsignedEvent {
        timeline: None,
        author: admin.author(),
        seq: 1,
        lamport: 0,
        parents: vec![],
        kind: kind::GENESIS.into(),
        body: Genesis::body_ipld(&body),
    }
    .sign(admin)
}

/// `{"text": s}`.
pub fn text(s: &str) -> Ipld {
    let mut m = BTreeMap::new();
    m.insert("text".to_string(), Ipld::String(s.into()));
    Ipld::Map(m)
}

/// xorshift64: deterministic, seedable, good enough for shuffles.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// A machine that does nothing, under any id (to build histories for any genesis).
#[derive(Clone, Copy)]
pub struct NullMachine(pub &'static str);
impl Machine for NullMachine {
    type State = ();
    fn id(&self) -> &'static str {
        self.0
    }
    fn init(&self, _: &Genesis) {}
    fn apply(&self, _: &mut (), _: &Applied<'_>) {}
    fn encode_state(&self, _: &()) -> Vec<u8> {
        vec![]
    }
    fn decode_state(&self, _: &[u8]) -> Result<(), StateDecodeError> {
        Ok(())
    }
}

/// Writers appending concurrently, each on its own replica, syncing with a random other one
/// 30 % of the time. `body(created, rng)` gives the kind and body of the next event, seeing the
/// events created so far. Returns the events in
/// creation order (a causal order).
pub fn history(
    genesis: &SignedEvent,
    machine_id: &'static str,
    keys: &[Keypair],
    events: usize,
    seed: u64,
    mut body: impl FnMut(&[SignedEvent], &mut Rng) -> (&'static str, Ipld),
) -> Vec<SignedEvent> {
    let mut replicas: Vec<Timeline<NullMachine>> = keys
        .iter()
        .map(|_| Timeline::new(genesis.clone(), NullMachine(machine_id)).expect("valid genesis"))
        .collect();
    // Per replica, the indices (into `all`) of the events it holds, in the order it got them
    // (a causal order); and per (receiver, sender) how much of the sender's list was taken.
    let mut held: Vec<Vec<usize>> = vec![vec![]; keys.len()];
    let mut cursor = vec![vec![0usize; keys.len()]; keys.len()];
    let mut all: Vec<SignedEvent> = vec![];
    let mut rng = Rng(seed | 1);
    while all.len() < events {
        let w = rng.below(keys.len());
        if rng.below(10) < 3 {
            let other = rng.below(keys.len());
            if other != w {
                let fresh: Vec<usize> = held[other][cursor[w][other]..].to_vec();
                cursor[w][other] = held[other].len();
                for i in fresh {
                    if !replicas[w].contains(&all[i].id()) {
                        replicas[w].insert_deferred(all[i].clone()).expect("valid");
                        held[w].push(i);
                    }
                }
            }
        } else {
            let (k, b) = body(&all, &mut rng);
            let ev = replicas[w].prepare(keys[w].author(), k, b).sign(&keys[w]);
            replicas[w].insert_deferred(ev.clone()).expect("valid");
            held[w].push(all.len());
            all.push(ev);
        }
    }
    all
}
