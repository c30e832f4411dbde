//! # A light node's write-through outbox
//!
//! A light node keeps only the recent past in memory, so its own events are not durable until
//! a full node holds them. A local append is therefore signed, applied and gossiped at once,
//! but **acknowledged** only when [`WRITE_THROUGH_COPIES`] full nodes (or every full node the
//! light node knows, if fewer) answered the `Submit` of those blocks with `Stored` (each
//! answers after its durable commit): one lying full node alone cannot acknowledge a write it
//! then drops (issue 15). Until then the submission sits here and is retried against the next
//! full peers; a write that waited [`SUBMIT_TIMEOUT_MS`] is answered with an error saying so,
//! and the retries go on (the events exist, and must reach the full nodes) until enough store
//! them.
//!
//! Sans-IO: the caller passes the time and the set of full peers, sends what [`Outbox::dispatch`]
//! returns, and delivers the outcomes that [`Outbox::on_stored`], [`Outbox::settle`] and
//! [`Outbox::expire`] return.

use std::collections::{BTreeSet, VecDeque};

use super::write::{WriteError, WriteId, WriteResult};
use crate::{
    EventId,
    sync::{MAX_PAGE_BYTES, MAX_SUBMIT_BLOCKS},
};

/// Full nodes that must store a light write before it is acknowledged, when the light node
/// knows that many (with one full peer known, that one is enough: a write never waits for a
/// full node that does not exist).
pub const WRITE_THROUGH_COPIES: usize = 2;

/// Copies a submission needs, given the full peers known now and those that stored it already.
fn copies_wanted<P: Ord>(full_peers: &BTreeSet<P>, stored_by: &BTreeSet<P>) -> usize {
    let known = full_peers.union(stored_by).count();
    WRITE_THROUGH_COPIES.min(known.max(1))
}

/// Most submissions waiting for a full node; appends beyond it are refused (back-pressure).
pub const MAX_OUTBOX: usize = 64;
/// How long a write waits for a full node to store it before it is answered with an error.
pub const SUBMIT_TIMEOUT_MS: u64 = 15_000;
/// A submission unanswered this long is also sent to the next full peer (the first answer
/// counts; storing twice is harmless). Without it a lost request or answer holds the write
/// until the request times out, far beyond [`SUBMIT_TIMEOUT_MS`] (the simulator's `light`
/// scenario found writes answered "not stored in time" that way).
pub const SUBMIT_RETRY_MS: u64 = 3_000;

struct Submission<P> {
    ids: Vec<EventId>,
    blocks: Vec<Vec<u8>>,
    /// `None` once the write was answered (late): the retries go on without anyone waiting.
    write: Option<WriteId>,
    deadline: u64,
    /// Peers asked that have not answered yet, and when it was last sent.
    in_flight: BTreeSet<P>,
    last_sent: u64,
    tried: BTreeSet<P>,
    /// Full peers that answered `Stored` for every event.
    stored_by: BTreeSet<P>,
}

/// The pending writes of a light node, keyed by the peer type of the transport.
pub struct Outbox<P> {
    queue: VecDeque<Submission<P>>,
    /// Submissions a full node stored.
    pub stored: u64,
    /// Submissions answered with an error because no full node stored them in time.
    pub late: u64,
}

impl<P> Default for Outbox<P> {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            stored: 0,
            late: 0,
        }
    }
}

impl<P: Ord + Clone + std::fmt::Display> Outbox<P> {
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Submissions queued that no write waits for.
    pub fn unanswered_len(&self) -> usize {
        self.queue.iter().filter(|s| s.write.is_none()).count()
    }

    /// Whether a write of `n` events of at most `bytes` bytes once signed can be queued.
    pub fn admit(&self, n: usize, bytes: usize) -> Result<(), WriteError> {
        if n > MAX_SUBMIT_BLOCKS || bytes > MAX_PAGE_BYTES {
            return Err(WriteError::TooLarge(format!(
                "light node: one write may carry at most {MAX_SUBMIT_BLOCKS} events and \
                 {MAX_PAGE_BYTES} bytes (got {n} events, up to {bytes} bytes once signed)"
            )));
        }
        if self.queue.len() >= MAX_OUTBOX {
            return Err(WriteError::Unavailable(format!(
                "light node: {MAX_OUTBOX} writes are still waiting for a full node; retry later"
            )));
        }
        Ok(())
    }

    /// Queues the signed events of `write` (admitted with [`Outbox::admit`] first).
    pub fn push(&mut self, ids: Vec<EventId>, blocks: Vec<Vec<u8>>, write: WriteId, now: u64) {
        self.queue.push_back(Submission {
            ids,
            blocks,
            write: Some(write),
            deadline: now + SUBMIT_TIMEOUT_MS,
            in_flight: BTreeSet::new(),
            last_sent: 0,
            tried: BTreeSet::new(),
            stored_by: BTreeSet::new(),
        });
    }

    /// Queues signed events that no write waits for (retried until a full node stores them,
    /// answering no one).
    pub fn push_unanswered(&mut self, ids: Vec<EventId>, blocks: Vec<Vec<u8>>, now: u64) {
        self.queue.push_back(Submission {
            ids,
            blocks,
            write: None,
            deadline: now + SUBMIT_TIMEOUT_MS,
            in_flight: BTreeSet::new(),
            last_sent: 0,
            tried: BTreeSet::new(),
            stored_by: BTreeSet::new(),
        });
    }

    /// Submissions to send now: each goes to as many full peers it has not tried yet as it
    /// still needs copies, less those asked already; one asked for [`SUBMIT_RETRY_MS`] without
    /// an answer also goes to one more (all tried: start over, never to a peer still asked or
    /// that stored it). Returns (peer, blocks).
    pub fn dispatch(&mut self, full_peers: &BTreeSet<P>, now: u64) -> Vec<(P, Vec<Vec<u8>>)> {
        let mut out = vec![];
        if full_peers.is_empty() {
            return out;
        }
        for s in self.queue.iter_mut() {
            let missing = copies_wanted(full_peers, &s.stored_by).saturating_sub(s.stored_by.len());
            let mut send = missing.saturating_sub(s.in_flight.len());
            if !s.in_flight.is_empty() && now >= s.last_sent + SUBMIT_RETRY_MS {
                send = send.max(1);
            }
            if send == 0 {
                continue;
            }
            let fresh = |s: &Submission<P>, p: &P| {
                !s.tried.contains(p) && !s.in_flight.contains(p) && !s.stored_by.contains(p)
            };
            if full_peers.iter().filter(|p| fresh(s, p)).count() < send {
                s.tried.clear();
            }
            let to: Vec<P> = full_peers
                .iter()
                .filter(|p| fresh(s, p))
                .take(send)
                .cloned()
                .collect();
            for p in to {
                s.in_flight.insert(p.clone());
                s.tried.insert(p.clone());
                s.last_sent = now;
                out.push((p, s.blocks.clone()));
            }
        }
        out
    }

    fn find(&self, peer: &P, first: &EventId) -> Option<usize> {
        self.queue
            .iter()
            .position(|s| s.in_flight.contains(peer) && s.ids.first() == Some(first))
    }

    /// `peer` stored `ids` of the submission starting with `first`. Once enough full nodes
    /// did (see [`WRITE_THROUGH_COPIES`]; `full_peers` are those known now) the submission is
    /// done, and its write's outcome is returned unless it was already answered (late). A full
    /// node that did not store every event refused some: the write fails, naming them.
    pub fn on_stored(
        &mut self,
        peer: &P,
        first: &EventId,
        ids: &[EventId],
        full_peers: &BTreeSet<P>,
    ) -> Option<(WriteId, WriteResult)> {
        let i = self.find(peer, first)?;
        let held: BTreeSet<&EventId> = ids.iter().collect();
        let missing: Vec<String> = self.queue[i]
            .ids
            .iter()
            .filter(|id| !held.contains(id))
            .map(|id| id.to_string())
            .collect();
        if !missing.is_empty() {
            let s = self.queue.remove(i)?;
            return Some((
                s.write?,
                Err(WriteError::Failed(format!(
                    "full node {peer} rejected events {missing:?}"
                ))),
            ));
        }
        let s = &mut self.queue[i];
        s.in_flight.remove(peer);
        s.stored_by.insert(peer.clone());
        if s.stored_by.len() < copies_wanted(full_peers, &s.stored_by) {
            return None;
        }
        self.done(i)
    }

    /// Removes the stored submission at `i`; its write's outcome unless answered already.
    fn done(&mut self, i: usize) -> Option<(WriteId, WriteResult)> {
        let s = self.queue.remove(i)?;
        self.stored += 1;
        Some((s.write?, Ok(s.ids)))
    }

    /// The submissions that have all the copies they need now that `full_peers` are the full
    /// nodes known (fewer than before: a write stored by the only full node left is done).
    pub fn settle(&mut self, full_peers: &BTreeSet<P>) -> Vec<(WriteId, WriteResult)> {
        let mut out = vec![];
        let mut i = 0;
        while i < self.queue.len() {
            let s = &self.queue[i];
            if !s.stored_by.is_empty()
                && s.stored_by.len() >= copies_wanted(full_peers, &s.stored_by)
            {
                out.extend(self.done(i));
            } else {
                i += 1;
            }
        }
        out
    }

    /// The submission starting with `first` sent to `peer` failed (refused, timed out, peer
    /// gone): it goes to another full peer on the next dispatch.
    pub fn on_failed(&mut self, peer: &P, first: &EventId) {
        if let Some(i) = self.find(peer, first) {
            self.queue[i].in_flight.remove(peer);
        }
    }

    /// A peer went away: whatever was in flight to it is sent elsewhere.
    pub fn peer_down(&mut self, peer: &P) {
        for s in self.queue.iter_mut() {
            s.in_flight.remove(peer);
        }
    }

    /// The writes whose deadline passed with no full node storing them, answered with an
    /// error; each submission stays and is retried.
    pub fn expire(&mut self, now: u64) -> Vec<(WriteId, WriteResult)> {
        let mut out = vec![];
        for s in self.queue.iter_mut() {
            if now >= s.deadline
                && let Some(w) = s.write.take()
            {
                self.late += 1;
                out.push((
                    w,
                    Err(WriteError::Unavailable(format!(
                        "light node: no full node stored the write within {} s; it stays \
                         queued here and is retried (ids {:?})",
                        SUBMIT_TIMEOUT_MS / 1000,
                        s.ids.iter().map(|i| i.to_string()).collect::<Vec<_>>()
                    ))),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> EventId {
        EventId::of_block(&[n])
    }

    fn peers(ps: &[u8]) -> BTreeSet<u8> {
        ps.iter().copied().collect()
    }

    #[test]
    fn stored_acknowledges_and_missing_ids_fail_the_write() {
        let mut o: Outbox<u8> = Outbox::default();
        o.push(vec![id(1), id(2)], vec![vec![1], vec![2]], WriteId(7), 0);
        o.push(vec![id(3)], vec![vec![3]], WriteId(8), 0);
        let sent = o.dispatch(&peers(&[1]), 0);
        assert_eq!(sent.len(), 2);
        assert!(sent.iter().all(|(p, _)| *p == 1));
        assert!(o.dispatch(&peers(&[1]), 0).is_empty(), "nothing sent twice");
        // The wrong peer or the wrong first id changes nothing.
        let full = peers(&[1]);
        assert_eq!(o.on_stored(&2, &id(1), &[id(1), id(2)], &full), None);
        assert_eq!(o.on_stored(&1, &id(2), &[id(1), id(2)], &full), None);
        assert_eq!(
            o.on_stored(&1, &id(1), &[id(1), id(2)], &full),
            Some((WriteId(7), Ok(vec![id(1), id(2)])))
        );
        match o.on_stored(&1, &id(3), &[], &full) {
            Some((WriteId(8), Err(WriteError::Failed(m)))) => {
                assert!(m.contains(&id(3).to_string()), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(o.is_empty());
        assert_eq!(o.stored, 1);
    }

    #[test]
    fn a_failure_retries_the_next_full_peer_then_starts_over() {
        let mut o: Outbox<u8> = Outbox::default();
        o.push(vec![id(1)], vec![vec![1]], WriteId(0), 0);
        let full = peers(&[1, 2, 3]);
        let to =
            |sent: Vec<(u8, Vec<Vec<u8>>)>| sent.into_iter().map(|(p, _)| p).collect::<Vec<_>>();
        assert_eq!(to(o.dispatch(&full, 0)), vec![1, 2], "two copies at once");
        o.on_failed(&1, &id(1));
        assert_eq!(to(o.dispatch(&full, 0)), vec![3]);
        o.peer_down(&2);
        assert_eq!(
            to(o.dispatch(&full, 0)),
            vec![1],
            "every peer tried: start over"
        );
        assert!(o.dispatch(&BTreeSet::new(), 0).is_empty());
    }

    #[test]
    fn an_unanswered_submission_also_goes_to_the_next_peer_and_any_answers_count() {
        let mut o: Outbox<u8> = Outbox::default();
        o.push(vec![id(1)], vec![vec![1]], WriteId(4), 0);
        let full = peers(&[1, 2, 3]);
        assert_eq!(o.dispatch(&full, 0).len(), 2);
        assert!(o.dispatch(&full, SUBMIT_RETRY_MS - 1).is_empty());
        let again = o.dispatch(&full, SUBMIT_RETRY_MS);
        assert_eq!(again.len(), 1);
        assert_eq!(
            again[0].0, 3,
            "the next peer, while peers 1 and 2 are still asked"
        );
        // All asked, all silent: nothing more to send until one answers or fails.
        assert!(o.dispatch(&full, 2 * SUBMIT_RETRY_MS).is_empty());
        // Late answers still count: the first and the last peer make two copies.
        assert_eq!(o.on_stored(&1, &id(1), &[id(1)], &full), None);
        assert_eq!(
            o.on_stored(&3, &id(1), &[id(1)], &full),
            Some((WriteId(4), Ok(vec![id(1)])))
        );
        assert!(o.is_empty());
    }

    /// Issue 15: one full node's word no longer acknowledges a light write when another full
    /// node is known; with only one known, its copy is enough; and a write one full node
    /// stored is done once it is the only full node left.
    #[test]
    fn one_full_nodes_stored_acknowledges_only_when_it_is_the_only_one() {
        let mut o: Outbox<u8> = Outbox::default();
        o.push(vec![id(1)], vec![vec![1]], WriteId(1), 0);
        let two = peers(&[1, 2]);
        assert_eq!(o.dispatch(&two, 0).len(), 2);
        assert_eq!(
            o.on_stored(&1, &id(1), &[id(1)], &two),
            None,
            "one copy of two"
        );
        assert!(o.settle(&two).is_empty());
        // Peer 2 is gone: peer 1's copy is all there can be.
        o.peer_down(&2);
        assert_eq!(o.settle(&peers(&[1])), vec![(WriteId(1), Ok(vec![id(1)]))]);
        // With one full peer known from the start, one copy acknowledges.
        o.push(vec![id(2)], vec![vec![2]], WriteId(2), 0);
        let one = peers(&[1]);
        assert_eq!(o.dispatch(&one, 0).len(), 1);
        assert_eq!(
            o.on_stored(&1, &id(2), &[id(2)], &one),
            Some((WriteId(2), Ok(vec![id(2)])))
        );
        assert_eq!(o.stored, 2);
    }

    #[test]
    fn expiry_answers_once_and_keeps_retrying() {
        let mut o: Outbox<u8> = Outbox::default();
        o.push(vec![id(1)], vec![vec![1]], WriteId(3), 100);
        assert!(o.expire(100 + SUBMIT_TIMEOUT_MS - 1).is_empty());
        let late = o.expire(100 + SUBMIT_TIMEOUT_MS);
        assert!(matches!(
            late.as_slice(),
            [(WriteId(3), Err(WriteError::Unavailable(_)))]
        ));
        assert!(o.expire(10 * SUBMIT_TIMEOUT_MS).is_empty(), "answered once");
        assert_eq!((o.len(), o.late), (1, 1));
        // Still retried; a late store is counted but answers no one.
        let _ = o.dispatch(&peers(&[1]), 0);
        assert_eq!(o.on_stored(&1, &id(1), &[id(1)], &peers(&[1])), None);
        assert_eq!((o.len(), o.stored), (0, 1));
    }

    #[test]
    fn a_full_outbox_and_an_oversized_write_are_refused() {
        let mut o: Outbox<u8> = Outbox::default();
        assert!(matches!(
            o.admit(MAX_SUBMIT_BLOCKS + 1, 10),
            Err(WriteError::TooLarge(_))
        ));
        assert!(matches!(
            o.admit(1, MAX_PAGE_BYTES + 1),
            Err(WriteError::TooLarge(_))
        ));
        for i in 0..MAX_OUTBOX {
            assert!(o.admit(1, 10).is_ok());
            o.push(vec![id(i as u8)], vec![vec![i as u8]], WriteId(i as u64), 0);
        }
        assert!(matches!(o.admit(1, 10), Err(WriteError::Unavailable(_))));
    }
}
