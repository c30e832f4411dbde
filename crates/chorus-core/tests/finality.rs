//! Model check of the `final/1` commit rule (`chorus_core::finality`, docs/design/finality.md):
//! random DAGs written by n authors, f of them forking at will, delivered in random order.
//! Safety: the final orders of any two causally closed views (what two authors know at the
//! end, what one knew earlier, everything) are prefix-related. Liveness: with every author
//! honest and every event delivered, something becomes final.

use std::collections::BTreeSet;

use chorus_core::finality::{Finality, Node, quorum};
use proptest::prelude::*;

/// What happens next in the random run.
#[derive(Debug, Clone)]
enum Step {
    /// Author `a` writes; a forking author may build on an older event of its own (`fork`).
    Write { a: usize, fork: u8, extra: u8 },
    /// Author `to` learns everything author `from` knows.
    Deliver { from: usize, to: usize },
}

fn steps(n: usize, len: usize) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            2 => (0..n, any::<u8>(), any::<u8>()).prop_map(|(a, fork, extra)| Step::Write { a, fork, extra }),
            3 => (0..n, 0..n).prop_map(|(from, to)| Step::Deliver { from, to }),
        ],
        len,
    )
}

/// The DAG a run writes, and what each author knows at the end, and at the half.
struct Run {
    nodes: Vec<Node>,
    known: Vec<BTreeSet<usize>>,
    known_half: Vec<BTreeSet<usize>>,
}

fn run(n: usize, byzantine: usize, steps: &[Step]) -> Run {
    let mut nodes: Vec<Node> = vec![];
    let mut known: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    let mut own: Vec<Vec<usize>> = vec![vec![]; n];
    let mut known_half = known.clone();
    for (k, step) in steps.iter().enumerate() {
        if k == steps.len() / 2 {
            known_half = known.clone();
        }
        match *step {
            Step::Write { a, fork, extra } => {
                let mut parents: BTreeSet<usize> = BTreeSet::new();
                // An honest author builds on its latest event; a forking one, often on an
                // older one (or on none), so two of its events share a predecessor.
                let mine = &own[a];
                let forks = a < byzantine && fork % 3 == 0 && !mine.is_empty();
                if forks {
                    let i = fork as usize % (mine.len() + 1);
                    if i < mine.len() {
                        parents.insert(mine[i]);
                    }
                } else if let Some(&last) = mine.last() {
                    parents.insert(last);
                }
                // The newest heads it knows (events no known event names): 2 to 16 of them, as
                // `Timeline::prepare` takes up to 16.
                let named: BTreeSet<usize> = known[a]
                    .iter()
                    .flat_map(|&x| nodes[x].parents.iter().copied())
                    .collect();
                let heads: Vec<usize> = known[a]
                    .iter()
                    .copied()
                    .filter(|x| !named.contains(x))
                    .collect();
                for (j, h) in heads.iter().rev().enumerate() {
                    if j < 2 + extra as usize % 15 && (!forks || nodes[*h].author != a) {
                        parents.insert(*h);
                    }
                }
                let i = nodes.len();
                let lc = parents.iter().map(|&p| nodes[p].lc + 1).max().unwrap_or(0);
                nodes.push(Node {
                    author: a,
                    lc,
                    key: (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    parents: parents.into_iter().collect(),
                });
                known[a].insert(i);
                own[a].push(i);
            }
            Step::Deliver { from, to } => {
                let k = known[from].clone();
                known[to].extend(k);
            }
        }
    }
    Run {
        nodes,
        known,
        known_half,
    }
}

/// The final order of the view `keep` (causally closed), as global positions.
fn final_of(nodes: &[Node], keep: &BTreeSet<usize>, n: usize, q: usize) -> Vec<usize> {
    let ids: Vec<usize> = keep.iter().copied().collect();
    let local = |g: usize| ids.binary_search(&g).expect("causally closed");
    let sub: Vec<Node> = ids
        .iter()
        .map(|&g| Node {
            parents: nodes[g].parents.iter().map(|&p| local(p)).collect(),
            ..nodes[g].clone()
        })
        .collect();
    Finality::new(&sub, n, q)
        .final_order()
        .into_iter()
        .map(|l| ids[l])
        .collect()
}

fn prefix_related(a: &[usize], b: &[usize]) -> bool {
    let m = a.len().min(b.len());
    a[..m] == b[..m]
}

/// Every view of the run: each author's at the half and at the end, and everything.
fn views(r: &Run) -> Vec<BTreeSet<usize>> {
    let mut v: Vec<BTreeSet<usize>> = r.known.clone();
    v.extend(r.known_half.iter().cloned());
    v.push((0..r.nodes.len()).collect());
    v
}

/// Whether some two views of some run disagree, with quorum `q` instead of the rule's.
fn disagreement(n: usize, byzantine: usize, steps: &[Step], q: usize) -> Option<String> {
    let r = run(n, byzantine, steps);
    let finals: Vec<Vec<usize>> = views(&r)
        .iter()
        .map(|v| final_of(&r.nodes, v, n, q))
        .collect();
    for (i, a) in finals.iter().enumerate() {
        for b in &finals[i + 1..] {
            if !prefix_related(a, b) {
                return Some(format!("{a:?} vs {b:?}"));
            }
        }
    }
    // Nothing final is taken back: an author's final order at the half is a prefix of its
    // final order at the end, which is a prefix of the whole DAG's.
    let all = final_of(&r.nodes, &(0..r.nodes.len()).collect(), n, q);
    for (half, end) in r.known_half.iter().zip(&r.known) {
        let (h, e) = (
            final_of(&r.nodes, half, n, q),
            final_of(&r.nodes, end, n, q),
        );
        if !e.starts_with(&h) || !all.starts_with(&e) {
            return Some(format!("taken back: {h:?} then {e:?} then {all:?}"));
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn any_two_views_agree_on_a_prefix(n in 4usize..=7, s in steps(7, 160)) {
        let s: Vec<Step> = s.into_iter().map(|st| match st {
            Step::Write { a, fork, extra } => Step::Write { a: a % n, fork, extra },
            Step::Deliver { from, to } => Step::Deliver { from: from % n, to: to % n },
        }).collect();
        let f = (n - 1) / 3;
        prop_assert_eq!(disagreement(n, f, &s, quorum(n)), None);
    }
}

#[test]
fn honest_authors_who_hear_each_other_finalize() {
    for n in [4usize, 5, 7] {
        let mut s = vec![];
        for round in 0..12 {
            for a in 0..n {
                s.push(Step::Write {
                    a,
                    fork: 1,
                    extra: 14 - round as u8 % 3,
                });
            }
            for from in 0..n {
                for to in 0..n {
                    s.push(Step::Deliver { from, to });
                }
            }
        }
        let r = run(n, 0, &s);
        let all: BTreeSet<usize> = (0..r.nodes.len()).collect();
        let fin = final_of(&r.nodes, &all, n, quorum(n));
        assert!(
            fin.len() > r.nodes.len() / 2,
            "n {n}: {} of {} events final",
            fin.len(),
            r.nodes.len()
        );
    }
}

/// The same random runs as above, from a fixed seed.
fn sample_runs(count: usize) -> Vec<(usize, Vec<Step>)> {
    use proptest::{strategy::ValueTree, test_runner::TestRunner};
    let mut runner = TestRunner::deterministic();
    (0..count)
        .map(|_| {
            let n = (4usize..=7).new_tree(&mut runner).unwrap().current();
            let s = steps(n, 160).new_tree(&mut runner).unwrap().current();
            (n, s)
        })
        .collect()
}

/// The safety check is not vacuous: in most runs the views finalize something, and views
/// of different sizes finalize different amounts (so "prefix-related" compares real orders).
#[test]
fn the_random_runs_finalize_enough_to_check_something() {
    let runs = sample_runs(100);
    let mut busy = 0;
    for (n, s) in &runs {
        let r = run(*n, (*n - 1) / 3, s);
        let finals: BTreeSet<usize> = views(&r)
            .iter()
            .map(|v| final_of(&r.nodes, v, *n, quorum(*n)).len())
            .collect();
        if finals.len() >= 2 && finals.iter().any(|&l| l > 0) {
            busy += 1;
        }
    }
    // 42 of these 100 runs at the time of writing.
    assert!(
        busy >= 30,
        "only {busy} of 100 runs had views that finalize different amounts"
    );
}

/// Sabotage: with a quorum of one author, some pair of views disagrees: the check can fail.
/// (With a third, these runs found no disagreement: the generator is not adversarial enough to
/// split quorums; a targeted one, an equivocating leader seen on one branch by each half, is
/// the next step of the model check.)
#[test]
fn a_quorum_of_one_lets_views_disagree() {
    let found = sample_runs(200)
        .iter()
        .find_map(|(n, s)| disagreement(*n, (*n - 1) / 3, s, 1));
    assert!(found.is_some(), "no disagreement with a quorum of one");
}
