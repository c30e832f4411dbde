//! # The `final/1` rule, computed event by event
//!
//! [`Engine`] takes events one at a time, parents first (the order a timeline indexes them in),
//! and keeps what the rule needs so that nothing is recomputed from scratch: each event's round
//! and whether it is a witness are fixed when it arrives; the decided run of slots and the final
//! order only grow. It must give exactly what the model ([`super::Finality`], a bitset past per
//! event, everything recomputed per view) gives for the same events: `tests/finality.rs` checks
//! the two against each other on the model check's random and split runs.
//!
//! What it keeps per event, and why that is exact even for equivocating authors:
//!
//! * **`seen[a]`**: one more than the highest round of author `a`'s events in the event's strict
//!   past (0: none). It is the maximum over the parents of their own `seen` and of the parent
//!   itself, because the past of an event is the union of its parents and their pasts. "Author
//!   `a` has an event of round `r` or higher in `past(e)`" is `seen[a] > r`: the round rule
//!   becomes a count over `n` numbers.
//! * **the witness flag**: rounds never decrease along causality (an event's round is at least
//!   its parents'), so the author's own events in its past have rounds `≤ round(e)`, and "none of
//!   them has `round(e)`" is `seen[author] ≤ round(e)`. No chain or `sq` is assumed, so a fork
//!   is handled like any other event: each branch's first event of a round is a witness.
//!
//! Reachability ("is `b` in `past(v)`", for votes and certificates) is a walk back from `v` that
//! stops below `b`'s Lamport clock (`lc` grows strictly along every parent link, so nothing
//! below it can reach `b`): it visits the events of about two rounds, as the votes and
//! certificates of a slot live two rounds apart.
//!
//! The decided run is never revisited. That is sound because the rule is safe (a slot decided
//! in one view is decided the same way in every larger one: the safety argument of
//! docs/design/finality.md, and the model check); with a broken quorum it is not, and the
//! engine then differs from the model, which recomputes everything per view.
//!
//! Memory: `n` rounds per event (4 bytes each). Fine for the committees of a swarm (tens of
//! members); a timeline of millions of events will keep them only for events above the final
//! prefix (a later step of docs/design/finality.md's plan).

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
};

use super::{Decision, Node};

/// The author of an event by a key outside the committee (a light writer, a member added after
/// the epoch began): it carries causality like any event, and counts for nothing: no witness,
/// no vote, no part in a round's quorum.
pub const OUTSIDER: usize = usize::MAX;

/// The rule, fed one event at a time.
pub struct Engine {
    n: usize,
    q: usize,
    nodes: Vec<Node>,
    round: Vec<u32>,
    /// `seen[i * n + a]`: 1 + the highest round of author `a` in the strict past of event `i`,
    /// or 0 (see the module doc).
    seen: Vec<u32>,
    /// (round, author) → that author's witnesses of that round, in arrival order.
    witnesses: BTreeMap<(u32, usize), Vec<usize>>,
    /// Decisions of slots `1..=decided.len()`: the decided run from round 1, never revisited.
    decided: Vec<Decision>,
    in_final: Vec<bool>,
    order: Vec<usize>,
    /// Memo of [`Engine::vote`], by (round, witness), and of [`Engine::certifies`], by
    /// (round, certifier, leader block). Both read only the past of the voting or certifying
    /// block, which is fixed when it is inserted (parents come first), so an answer never goes
    /// stale. Without it every `advance` recomputed them for every undecided round: while no
    /// quorum is connected (a partition) that is all rounds since the last decision, walked
    /// again at every heartbeat tick. Entries below the decided run are dropped.
    votes: RefCell<BTreeMap<(u32, usize), Option<usize>>>,
    certificates: RefCell<BTreeMap<(u32, usize, usize), bool>>,
}

impl Engine {
    /// An empty engine for a committee of `n` authors with quorum `q` (normally
    /// [`super::quorum`]`(n)`).
    pub fn new(n: usize, q: usize) -> Self {
        Engine {
            n,
            q,
            nodes: vec![],
            round: vec![],
            seen: vec![],
            witnesses: BTreeMap::new(),
            decided: vec![],
            in_final: vec![],
            order: vec![],
            votes: RefCell::default(),
            certificates: RefCell::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Adds the next event; its parents must already be in (their positions are below its own,
    /// which is returned). Computes its round and witness flag; the final order moves only in
    /// [`Engine::advance`].
    pub fn insert(&mut self, node: Node) -> usize {
        let i = self.nodes.len();
        let n = self.n;
        assert!(
            node.author < n || node.author == OUTSIDER,
            "author outside the committee"
        );
        let mut seen = vec![0u32; n];
        let mut r = 0;
        for &p in &node.parents {
            assert!(p < i, "parents come first");
            // `sees` prunes its walk by `lc`: it must grow along every parent link.
            debug_assert!(node.lc > self.nodes[p].lc, "lc grows along parent links");
            for (s, &ps) in seen.iter_mut().zip(&self.seen[p * n..(p + 1) * n]) {
                *s = (*s).max(ps);
            }
            let a = self.nodes[p].author;
            if a < n {
                seen[a] = seen[a].max(self.round[p] + 1);
            }
            r = r.max(self.round[p]);
        }
        let authors = seen.iter().filter(|&&s| s > r).count();
        let round = if !node.parents.is_empty() && authors >= self.q {
            r + 1
        } else {
            r
        };
        if node.author < n && seen[node.author] <= round {
            self.witnesses
                .entry((round, node.author))
                .or_default()
                .push(i);
        }
        self.seen.extend(seen);
        self.round.push(round);
        self.nodes.push(node);
        self.in_final.push(false);
        i
    }

    pub fn round(&self, i: usize) -> u64 {
        u64::from(self.round[i])
    }

    /// Whether `x` is in the strict causal past of `v`.
    pub fn sees(&self, v: usize, x: usize) -> bool {
        let floor = self.nodes[x].lc;
        let mut stack: Vec<usize> = self.nodes[v].parents.clone();
        let mut visited: BTreeSet<usize> = BTreeSet::new();
        while let Some(y) = stack.pop() {
            if y == x {
                return true;
            }
            if self.nodes[y].lc <= floor || !visited.insert(y) {
                continue;
            }
            stack.extend(self.nodes[y].parents.iter().copied());
        }
        false
    }

    fn witnesses_of(&self, r: u32, author: usize) -> &[usize] {
        self.witnesses
            .get(&(r, author))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Every witness of round `r`, with its author.
    fn all_witnesses(&self, r: u32) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.witnesses
            .range((r, 0)..(r + 1, 0))
            .flat_map(|(&(_, a), ws)| ws.iter().map(move |&w| (a, w)))
    }

    fn leader(&self, r: u32) -> usize {
        (r as usize) % self.n
    }

    /// The leader's round-`r` block that witness `v` votes for, or `None` (a blame).
    fn vote(&self, v: usize, r: u32) -> Option<usize> {
        if let Some(&vote) = self.votes.borrow().get(&(r, v)) {
            return vote;
        }
        let vote = self.compute_vote(v, r);
        self.votes.borrow_mut().insert((r, v), vote);
        vote
    }

    fn compute_vote(&self, v: usize, r: u32) -> Option<usize> {
        let mut seen = self
            .witnesses_of(r, self.leader(r))
            .iter()
            .copied()
            .filter(|&b| self.sees(v, b));
        match (seen.next(), seen.next()) {
            (Some(b), None) => Some(b),
            _ => None,
        }
    }

    fn certifies(&self, c: usize, b: usize, r: u32) -> bool {
        if let Some(&certifies) = self.certificates.borrow().get(&(r, c, b)) {
            return certifies;
        }
        let certifies = self.compute_certifies(c, b, r);
        self.certificates.borrow_mut().insert((r, c, b), certifies);
        certifies
    }

    fn compute_certifies(&self, c: usize, b: usize, r: u32) -> bool {
        let voters: BTreeSet<usize> = self
            .all_witnesses(r + 1)
            .filter(|&(_, v)| self.sees(c, v) && self.vote(v, r) == Some(b))
            .map(|(a, _)| a)
            .collect();
        voters.len() >= self.q
    }

    fn direct(&self, r: u32) -> Decision {
        for &b in self.witnesses_of(r, self.leader(r)) {
            let certifiers: BTreeSet<usize> = self
                .all_witnesses(r + 2)
                .filter(|&(_, c)| self.certifies(c, b, r))
                .map(|(a, _)| a)
                .collect();
            if certifiers.len() >= self.q {
                return Decision::Commit(b);
            }
        }
        let blamers: BTreeSet<usize> = self
            .all_witnesses(r + 1)
            .filter(|&(_, v)| self.vote(v, r).is_none())
            .map(|(a, _)| a)
            .collect();
        if blamers.len() >= self.q {
            Decision::Skip
        } else {
            Decision::Undecided
        }
    }

    /// Decides what the events so far allow: the slots above the decided run, from the highest
    /// round down (the indirect rule needs the later ones), then extends the decided run and
    /// the final order by every slot decided from its end on. Returns how many events became
    /// final.
    pub fn advance(&mut self) -> usize {
        let top = self.round.iter().copied().max().unwrap_or(0);
        let first = self.decided.len() as u32 + 1;
        let mut d: BTreeMap<u32, Decision> = BTreeMap::new();
        for r in (first..=top).rev() {
            let mut dec = self.direct(r);
            if dec == Decision::Undecided {
                let anchor = d
                    .range(r + 3..)
                    .map(|(_, x)| *x)
                    .find(|x| *x != Decision::Skip);
                dec = match anchor {
                    Some(Decision::Commit(a)) => {
                        let certified =
                            self.witnesses_of(r, self.leader(r))
                                .iter()
                                .copied()
                                .find(|&b| {
                                    self.all_witnesses(r + 2)
                                        .any(|(_, c)| self.sees(a, c) && self.certifies(c, b, r))
                                });
                        certified.map_or(Decision::Skip, Decision::Commit)
                    }
                    _ => Decision::Undecided,
                };
            }
            d.insert(r, dec);
        }
        let before = self.order.len();
        for (_, dec) in d {
            match dec {
                Decision::Undecided => break,
                Decision::Skip => {}
                Decision::Commit(b) => self.append_segment(b),
            }
            self.decided.push(dec);
        }
        // Slots up to the decided run are never asked about again.
        let first = self.decided.len() as u32 + 1;
        let keep = self.votes.borrow_mut().split_off(&(first, 0));
        *self.votes.borrow_mut() = keep;
        let keep = self.certificates.borrow_mut().split_off(&(first, 0, 0));
        *self.certificates.borrow_mut() = keep;
        self.order.len() - before
    }

    /// Appends block `b`'s segment: `b` and its past not final yet, sorted by `(lc, key)`.
    fn append_segment(&mut self, b: usize) {
        let mut seg = vec![];
        let mut stack = vec![b];
        while let Some(x) = stack.pop() {
            if self.in_final[x] {
                continue;
            }
            self.in_final[x] = true;
            seg.push(x);
            stack.extend(self.nodes[x].parents.iter().copied());
        }
        seg.sort_by_key(|&x| (self.nodes[x].lc, self.nodes[x].key));
        self.order.extend(seg);
    }

    /// The final order so far (event positions), as of the last [`Engine::advance`].
    pub fn final_order(&self) -> &[usize] {
        &self.order
    }

    /// The decisions of the decided run, slot 1 first.
    pub fn decided(&self) -> &[Decision] {
        &self.decided
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finality::quorum;

    /// Four honest authors, each writing one event per round on top of everything: every
    /// round advances, and slots commit once two more rounds exist.
    fn lockstep(n: usize, rounds: usize) -> Engine {
        let mut e = Engine::new(n, quorum(n));
        let mut prev: Vec<usize> = vec![];
        for r in 0..rounds {
            let mut now = vec![];
            for a in 0..n {
                let i = e.len();
                now.push(e.insert(Node {
                    author: a,
                    lc: r as u64,
                    key: i as u64,
                    parents: prev.clone(),
                }));
            }
            prev = now;
        }
        e
    }

    #[test]
    fn lockstep_rounds_advance_and_commit_every_slot_with_two_rounds_above() {
        let mut e = lockstep(4, 6);
        for i in 0..e.len() {
            assert_eq!(e.round(i), (i / 4) as u64);
        }
        e.advance();
        // Rounds 0..=5: slots 1..=3 have their certificates (round r + 2 ≤ 5).
        assert_eq!(
            e.decided(),
            &[
                Decision::Commit(4 + 1),
                Decision::Commit(8 + 2),
                Decision::Commit(12 + 3)
            ]
        );
        // Slot 3's block has everything of rounds 0..=2 and itself in its past.
        assert_eq!(e.final_order().len(), 12 + 1);
    }

    #[test]
    fn a_dead_leader_is_skipped_and_the_order_goes_on() {
        // Author 1 (leader of round 1) writes only in round 0.
        let n = 4;
        let mut e = Engine::new(n, quorum(n));
        let mut prev: Vec<usize> = vec![];
        for r in 0..7u64 {
            let mut now = vec![];
            for a in 0..n {
                if a == 1 && r > 0 {
                    continue;
                }
                let i = e.len();
                now.push(e.insert(Node {
                    author: a,
                    lc: r,
                    key: i as u64,
                    parents: prev.clone(),
                }));
            }
            prev = now;
        }
        e.advance();
        assert_eq!(e.decided()[0], Decision::Skip);
        assert!(matches!(e.decided()[1], Decision::Commit(_)));
        assert!(!e.final_order().is_empty());
    }

    #[test]
    fn an_equivocating_author_has_a_witness_per_branch() {
        let n = 4;
        let mut e = Engine::new(n, quorum(n));
        let g: Vec<usize> = (0..n)
            .map(|a| {
                e.insert(Node {
                    author: a,
                    lc: 0,
                    key: a as u64,
                    parents: vec![],
                })
            })
            .collect();
        // Author 0 writes two events of round 1 on two branches, neither seeing the other.
        let x = e.insert(Node {
            author: 0,
            lc: 1,
            key: 10,
            parents: vec![g[0], g[1], g[2]],
        });
        let y = e.insert(Node {
            author: 0,
            lc: 1,
            key: 11,
            parents: vec![g[0], g[2], g[3]],
        });
        assert_eq!((e.round(x), e.round(y)), (1, 1));
        assert_eq!(e.witnesses_of(1, 0), &[x, y]);
        // A later event of the author that sees one branch is no witness of round 1.
        let z = e.insert(Node {
            author: 0,
            lc: 2,
            key: 12,
            parents: vec![x],
        });
        assert_eq!(e.round(z), 1);
        assert_eq!(e.witnesses_of(1, 0), &[x, y]);
        assert!(e.sees(z, g[1]) && !e.sees(z, g[3]) && !e.sees(y, x));
    }
}
