//! # The `final/1` commit rule, on its own (docs/design/finality.md)
//!
//! **Not wired into the timeline yet.** This is the rule of the design document, written once
//! over an abstract DAG as a model ([`Finality`], everything recomputed per view) and once as
//! the incremental [`Engine`] a timeline will run, so that it can be model-checked (`tests/finality.rs`: random DAGs with
//! equivocating authors, every pair of causally closed subsets gives prefix-related final
//! orders) before the order of a real timeline depends on it.
//!
//! Events are given as a slice in a topological order (parents before children), each with its
//! author's index in the committee, its `lc`, a tiebreak key standing for its CID, and its
//! parents' positions. Everything is a function of the causal past, which is computed here as
//! one bitset per event: fine for a model of a few hundred events, not for a timeline.

use std::collections::{BTreeMap, BTreeSet};

pub mod certificate;
pub mod engine;
pub mod handover;
pub use engine::{Engine, OUTSIDER};

/// One event of the abstract DAG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The author's index in the committee (`0..n`).
    pub author: usize,
    pub lc: u64,
    /// Stands for the CID in the `(lc, cid)` order.
    pub key: u64,
    /// Positions of the parents (all lower than this event's). The first event of an author
    /// has no parent by it; an honest author's later events name its previous one.
    pub parents: Vec<usize>,
}

/// The quorum of a committee of `n`: more than two thirds (`⌊2n/3⌋ + 1`).
pub fn quorum(n: usize) -> usize {
    2 * n / 3 + 1
}

/// What a slot came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Committed to its block (an event position).
    Commit(usize),
    Skip,
    Undecided,
}

/// The rule evaluated over one causally closed set of events.
pub struct Finality<'a> {
    nodes: &'a [Node],
    n: usize,
    q: usize,
    /// `past[i]`: the strict causal past of event `i`, as a bitset over positions.
    past: Vec<Vec<u64>>,
    round: Vec<u64>,
    /// (author, round) → its witnesses of that round (see [`Finality::witnesses`]).
    witnesses: BTreeMap<(usize, u64), Vec<usize>>,
}

fn has(set: &[u64], i: usize) -> bool {
    set[i / 64] >> (i % 64) & 1 == 1
}

impl<'a> Finality<'a> {
    /// `nodes` must be causally closed (every parent present) and topologically ordered;
    /// `n` is the committee size and `q` the quorum (normally [`quorum`]`(n)`; a test may break
    /// it on purpose).
    pub fn new(nodes: &'a [Node], n: usize, q: usize) -> Self {
        let words = nodes.len().div_ceil(64);
        let mut past: Vec<Vec<u64>> = Vec::with_capacity(nodes.len());
        let mut round = Vec::with_capacity(nodes.len());
        for (i, e) in nodes.iter().enumerate() {
            let mut p = vec![0u64; words];
            for &x in &e.parents {
                assert!(x < i, "parents come first");
                p[x / 64] |= 1 << (x % 64);
                for (w, v) in p.iter_mut().zip(&past[x]) {
                    *w |= v;
                }
            }
            // The round: the parents' highest, plus one once the past holds events of at
            // least that round by a quorum of distinct authors.
            let r = e.parents.iter().map(|&x| round[x]).max().unwrap_or(0);
            let authors: BTreeSet<usize> = (0..i)
                .filter(|&x| has(&p, x) && round[x] >= r)
                .map(|x| nodes[x].author)
                .collect();
            round.push(if !e.parents.is_empty() && authors.len() >= q {
                r + 1
            } else {
                r
            });
            past.push(p);
        }
        // An author's witness of a round: its event of that round none of whose own earlier
        // events in its past has that round (one for an honest author, more for a fork).
        let mut witnesses: BTreeMap<(usize, u64), Vec<usize>> = BTreeMap::new();
        for (i, e) in nodes.iter().enumerate() {
            let r = round[i];
            let first =
                !(0..i).any(|x| nodes[x].author == e.author && round[x] == r && has(&past[i], x));
            if first {
                witnesses.entry((e.author, r)).or_default().push(i);
            }
        }
        Finality {
            nodes,
            n,
            q,
            past,
            round,
            witnesses,
        }
    }

    pub fn round(&self, i: usize) -> u64 {
        self.round[i]
    }

    /// Whether `x` is in the strict causal past of `i`.
    pub fn sees(&self, i: usize, x: usize) -> bool {
        has(&self.past[i], x)
    }

    /// The witnesses of round `r` by `author` (one for an honest author, more for one that
    /// forked).
    fn witnesses(&self, author: usize, r: u64) -> Vec<usize> {
        self.witnesses
            .get(&(author, r))
            .cloned()
            .unwrap_or_default()
    }

    /// Every witness of round `r`, by author.
    fn all_witnesses(&self, r: u64) -> Vec<(usize, usize)> {
        (0..self.n)
            .flat_map(|a| self.witnesses(a, r).into_iter().map(move |w| (a, w)))
            .collect()
    }

    fn leader(&self, r: u64) -> usize {
        (r % self.n as u64) as usize
    }

    /// The leader's round-`r` block that witness `v` (of round `r + 1`) votes for, or `None`
    /// (a blame: it sees none, or two).
    fn vote(&self, v: usize, r: u64) -> Option<usize> {
        let seen: Vec<usize> = self
            .witnesses(self.leader(r), r)
            .into_iter()
            .filter(|&b| self.sees(v, b))
            .collect();
        (seen.len() == 1).then(|| seen[0])
    }

    /// Whether witness `c` (of round `r + 2`) certifies block `b` of slot `r`: its past holds
    /// votes for `b` by a quorum of distinct authors.
    fn certifies(&self, c: usize, b: usize, r: u64) -> bool {
        let voters: BTreeSet<usize> = self
            .all_witnesses(r + 1)
            .into_iter()
            .filter(|&(_, v)| self.sees(c, v) && self.vote(v, r) == Some(b))
            .map(|(a, _)| a)
            .collect();
        voters.len() >= self.q
    }

    /// The direct rules for slot `r`.
    fn direct(&self, r: u64) -> Decision {
        for b in self.witnesses(self.leader(r), r) {
            let certifiers: BTreeSet<usize> = self
                .all_witnesses(r + 2)
                .into_iter()
                .filter(|&(_, c)| self.certifies(c, b, r))
                .map(|(a, _)| a)
                .collect();
            if certifiers.len() >= self.q {
                return Decision::Commit(b);
            }
        }
        let blamers: BTreeSet<usize> = self
            .all_witnesses(r + 1)
            .into_iter()
            .filter(|&(_, v)| self.vote(v, r).is_none())
            .map(|(a, _)| a)
            .collect();
        if blamers.len() >= self.q {
            return Decision::Skip;
        }
        Decision::Undecided
    }

    /// Every slot's decision, from round 1 to the highest round present.
    pub fn decisions(&self) -> Vec<Decision> {
        let top = self.round.iter().copied().max().unwrap_or(0);
        let mut d: BTreeMap<u64, Decision> = BTreeMap::new();
        for r in (1..=top).rev() {
            let mut dec = self.direct(r);
            if dec == Decision::Undecided {
                // The anchor: the lowest slot of round r + 3 or later that is not skipped.
                let anchor = d
                    .range(r + 3..)
                    .find(|(_, x)| **x != Decision::Skip)
                    .map(|(_, x)| *x);
                dec = match anchor {
                    Some(Decision::Commit(a)) => {
                        let certified = self.witnesses(self.leader(r), r).into_iter().find(|&b| {
                            self.all_witnesses(r + 2)
                                .into_iter()
                                .any(|(_, c)| self.sees(a, c) && self.certifies(c, b, r))
                        });
                        match certified {
                            Some(b) => Decision::Commit(b),
                            None => Decision::Skip,
                        }
                    }
                    _ => Decision::Undecided,
                };
            }
            d.insert(r, dec);
        }
        d.into_values().collect()
    }

    /// The final prefix: for each committed slot of the decided run from round 1 (up to the
    /// first undecided slot), the block's causal past and itself not yet ordered, sorted by
    /// `(lc, key)`. Returns event positions.
    pub fn final_order(&self) -> Vec<usize> {
        let mut out = vec![];
        let mut done = vec![false; self.nodes.len()];
        for dec in self.decisions() {
            match dec {
                Decision::Undecided => break,
                Decision::Skip => {}
                Decision::Commit(b) => {
                    let mut seg: Vec<usize> = (0..self.nodes.len())
                        .filter(|&x| !done[x] && (x == b || self.sees(b, x)))
                        .collect();
                    seg.sort_by_key(|&x| (self.nodes[x].lc, self.nodes[x].key));
                    for &x in &seg {
                        done[x] = true;
                    }
                    out.extend(seg);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorums_of_committees_overlap_in_more_than_f() {
        for n in 1..200 {
            let f = (n - 1) / 3;
            assert!(2 * quorum(n) > n + f, "n {n}");
            assert!(quorum(n) <= n - f, "n {n}: a quorum of the honest exists");
        }
    }
}
