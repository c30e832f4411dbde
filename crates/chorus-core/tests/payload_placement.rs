//! Payload placement as a model of six full nodes taking turns (`payload::step`, the decision
//! the node runtime carries out): whatever the order of turns and whichever node is killed or
//! comes back, no referenced payload is ever held by no living node, and once the membership
//! stays still every payload is on exactly its `k` ranked holders. With the defence switched
//! off (letting go without asking the holders) the uploader drops a payload before any holder
//! fetched it: lost.

use std::collections::BTreeSet;

use chorus_core::payload::{self, PlacementSabotage, Step, split};
use cid::Cid;
use proptest::prelude::*;

const K: usize = 3;

struct Model {
    ids: Vec<Vec<u8>>,
    alive: Vec<bool>,
    /// The roots each node holds whole (dead nodes keep their disks).
    held: Vec<BTreeSet<Cid>>,
    roots: Vec<Cid>,
    sabotage: PlacementSabotage,
}

impl Model {
    fn new(n: usize, roots: Vec<Cid>, uploader: usize, sabotage: PlacementSabotage) -> Model {
        let mut held = vec![BTreeSet::new(); n];
        held[uploader] = roots.iter().copied().collect();
        Model {
            ids: (0..n).map(|i| format!("node-{i}").into_bytes()).collect(),
            alive: vec![true; n],
            held,
            roots,
            sabotage,
        }
    }

    fn living(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.ids.len()).filter(|i| self.alive[*i])
    }

    /// Node `i` takes its turn: one step for each root.
    fn turn(&mut self, i: usize) -> Result<(), String> {
        if !self.alive[i] {
            return Ok(());
        }
        let candidates: Vec<Vec<u8>> = self.living().map(|j| self.ids[j].clone()).collect();
        for root in self.roots.clone() {
            let whole = self.held[i].contains(&root);
            let step = payload::step(
                &root,
                &self.ids[i],
                candidates.iter().map(Vec::as_slice),
                K,
                whole,
                whole,
            );
            match step {
                Step::Fetch => {
                    // Bitswap: from any living node that has it.
                    if self.living().any(|j| self.held[j].contains(&root)) {
                        self.held[i].insert(root);
                    }
                }
                Step::LetGoOnceHeld(holders) => {
                    let answers: Vec<Option<bool>> = holders
                        .iter()
                        .map(|h| {
                            let j = self.ids.iter().position(|id| id == h).unwrap();
                            self.alive[j].then(|| self.held[j].contains(&root))
                        })
                        .collect();
                    if payload::may_let_go(&answers, self.sabotage) {
                        self.held[i].remove(&root);
                    }
                }
                Step::Nothing => {}
            }
            if !self.living().any(|j| self.held[j].contains(&root)) {
                return Err(format!("{root} lost after node {i}'s turn"));
            }
        }
        Ok(())
    }

    fn round(&mut self, order: &[usize]) -> Result<(), String> {
        for &i in order {
            self.turn(i)?;
        }
        Ok(())
    }

    /// Every root on exactly its ranked holders among the living.
    fn placed_exactly(&self) -> Result<(), String> {
        let living: Vec<&[u8]> = self.living().map(|j| self.ids[j].as_slice()).collect();
        for root in &self.roots {
            let want: BTreeSet<usize> = payload::holders(root, living.iter().copied(), K)
                .into_iter()
                .map(|h| self.ids.iter().position(|id| id == h).unwrap())
                .collect();
            let on: BTreeSet<usize> = self
                .living()
                .filter(|j| self.held[*j].contains(root))
                .collect();
            if on != want {
                return Err(format!("{root} on {on:?}, ranked {want:?}"));
            }
        }
        Ok(())
    }
}

fn roots(n: usize, salt: u64) -> Vec<Cid> {
    (0..n as u64)
        .map(|i| {
            split(&[salt.to_le_bytes(), i.to_le_bytes()].concat())
                .unwrap()
                .root_cid
        })
        .collect()
}

/// One event between rounds: a node killed, one brought back, or nothing.
#[derive(Debug, Clone)]
enum Churn {
    Kill(usize),
    Revive(usize),
    Quiet,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_payload_is_ever_lost_and_a_still_mesh_holds_each_on_exactly_its_k_holders(
        payloads in 1usize..6,
        salt in any::<u64>(),
        uploader in 0usize..6,
        orders in proptest::collection::vec(Just((0..6).collect::<Vec<usize>>()).prop_shuffle(), 12),
        churn in proptest::collection::vec(
            prop_oneof![2 => (0usize..6).prop_map(Churn::Kill), 1 => (0usize..6).prop_map(Churn::Revive), 2 => Just(Churn::Quiet)],
            8,
        ),
    ) {
        let mut m = Model::new(6, roots(payloads, salt), uploader, PlacementSabotage::default());
        m.round(&orders[0]).map_err(TestCaseError::fail)?;
        for (round, c) in churn.iter().enumerate() {
            match *c {
                // One node down at a time (k = 3 keeps two copies through it), and a round
                // to put the third back before the next.
                Churn::Kill(i) if m.alive.iter().all(|a| *a) => m.alive[i] = false,
                Churn::Revive(i) => m.alive[i] = true,
                _ => {}
            }
            m.round(&orders[1 + round % 11]).map_err(TestCaseError::fail)?;
        }
        // Still: two more rounds settle every payload on its holders.
        m.round(&orders[10]).map_err(TestCaseError::fail)?;
        m.round(&orders[11]).map_err(TestCaseError::fail)?;
        m.placed_exactly().map_err(TestCaseError::fail)?;
    }
}

/// Sabotage: letting go without asking loses a payload whose uploader is no holder and
/// takes its turn first; the same turns with the defence keep it and place it.
#[test]
fn letting_go_without_asking_the_holders_loses_the_payload() {
    let ids: Vec<Vec<u8>> = (0..6).map(|i| format!("node-{i}").into_bytes()).collect();
    let root = (0..)
        .map(|s| roots(1, s)[0])
        .find(|r| {
            !payload::holders(r, ids.iter().map(Vec::as_slice), K).contains(&ids[0].as_slice())
        })
        .unwrap();
    let order: Vec<usize> = (0..6).collect();
    let mut honest = Model::new(6, vec![root], 0, PlacementSabotage::default());
    honest.round(&order).unwrap();
    honest.round(&order).unwrap();
    honest.placed_exactly().unwrap();
    let mut sabotaged = Model::new(
        6,
        vec![root],
        0,
        PlacementSabotage {
            let_go_unconfirmed: true,
        },
    );
    let e = sabotaged.round(&order).unwrap_err();
    assert!(e.contains("lost after node 0's turn"), "{e}");
}
