//! Membership as a function of position in the admin's chain.
//!
//! Only the admin signs `member` events and its events form one chain, so "the membership state
//! in an event's causal past" is the fold of the admin's member events on the chain that past
//! holds. Each admin member event is a version; each author keeps the list of its changes
//! keyed by version; a lookup is a binary search (and, only after an admin equivocation, a
//! walk back along the branch).

use std::collections::BTreeMap;

use ipld_core::ipld::Ipld;

use crate::{
    event::{EventError, kind},
    genesis::Genesis,
    ids::{AuthorId, EventId},
};

/// The 32-byte `key` of a `member` or `vote` body.
fn body_key(m: &BTreeMap<String, Ipld>) -> Option<AuthorId> {
    match m.get("key") {
        Some(Ipld::Bytes(b)) => b.as_slice().try_into().ok().map(AuthorId),
        _ => None,
    }
}

/// What a member may do. The admin is always a member and is reported separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Admin,
    Anchor,
    Writer,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Anchor => "anchor",
            Role::Writer => "writer",
        }
    }
}

/// A parsed `member` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberOp {
    Add(AuthorId, Role),
    Remove(AuthorId),
}

impl MemberOp {
    /// Parses `{op, key, role}`.
    pub fn parse(body: &Ipld) -> Result<MemberOp, EventError> {
        let bad = |why: &str| EventError::BadBody {
            kind: kind::MEMBER.into(),
            why: why.into(),
        };
        let Ipld::Map(m) = body else {
            return Err(bad("body is not a map"));
        };
        let key = body_key(m).ok_or_else(|| bad("key must be 32 bytes"))?;
        match m.get("op") {
            Some(Ipld::String(op)) if op == "add" => {
                let role = match m.get("role") {
                    Some(Ipld::String(r)) if r == "anchor" => Role::Anchor,
                    Some(Ipld::String(r)) if r == "writer" => Role::Writer,
                    _ => return Err(bad("role must be anchor or writer")),
                };
                Ok(MemberOp::Add(key, role))
            }
            Some(Ipld::String(op)) if op == "remove" => Ok(MemberOp::Remove(key)),
            _ => Err(bad("op must be add or remove")),
        }
    }

    /// The body of this operation.
    pub fn to_body(&self) -> Ipld {
        let mut m = BTreeMap::new();
        let (op, key, role) = match self {
            MemberOp::Add(k, r) => ("add", k, Some(r)),
            MemberOp::Remove(k) => ("remove", k, None),
        };
        m.insert("op".into(), Ipld::String(op.into()));
        m.insert("key".into(), Ipld::Bytes(key.0.to_vec()));
        if let Some(r) = role {
            m.insert("role".into(), Ipld::String(r.as_str().into()));
        }
        Ipld::Map(m)
    }
}

/// A parsed `vote` body (`final/1`): `{op: "remove" | "restore", key}`. A vote changes who is
/// on the finality committee, not who may write: the admin's `member` events do that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum VoteOp {
    /// Take `key` off the committee (a silent member, the lost admin's machine).
    Remove(AuthorId),
    /// Put a member voted off back on the committee.
    Restore(AuthorId),
}

impl VoteOp {
    /// Parses `{op, key}`.
    pub fn parse(body: &Ipld) -> Result<VoteOp, EventError> {
        let bad = |why: &str| EventError::BadBody {
            kind: kind::VOTE.into(),
            why: why.into(),
        };
        let Ipld::Map(m) = body else {
            return Err(bad("body is not a map"));
        };
        if m.len() != 2 {
            return Err(bad("body must hold exactly op and key"));
        }
        let key = body_key(m).ok_or_else(|| bad("key must be 32 bytes"))?;
        match m.get("op") {
            Some(Ipld::String(op)) if op == "remove" => Ok(VoteOp::Remove(key)),
            Some(Ipld::String(op)) if op == "restore" => Ok(VoteOp::Restore(key)),
            _ => Err(bad("op must be remove or restore")),
        }
    }

    /// The body of this vote.
    pub fn to_body(&self) -> Ipld {
        let (op, key) = match self {
            VoteOp::Remove(k) => ("remove", k),
            VoteOp::Restore(k) => ("restore", k),
        };
        let mut m = BTreeMap::new();
        m.insert("op".into(), Ipld::String(op.into()));
        m.insert("key".into(), Ipld::Bytes(key.0.to_vec()));
        Ipld::Map(m)
    }

    /// The member the vote is about.
    pub fn key(&self) -> AuthorId {
        match self {
            VoteOp::Remove(k) | VoteOp::Restore(k) => *k,
        }
    }
}

/// One membership version: the genesis (version 0) or one admin `member` event held.
#[derive(Debug, Clone, Copy)]
struct Version {
    /// The admin `sq` of its member event (1 for the genesis).
    sq: u64,
    /// The version before it on the admin chain this member event is on (0 for the genesis).
    prev: u32,
    /// Whether a later version names this one as its `prev` (two that do: the admin forked).
    has_next: bool,
}

/// Membership over the admin's chain.
///
/// Only the admin signs `member` events and its events form one chain, so "the membership in
/// an event's causal past" is the fold of the member events on the admin chain that past
/// holds. Each admin `member` event held is a *version*, pointing to the version before it on
/// its own chain; every event carries the version of its past (see `Timeline::validate`).
/// An honest admin's versions form a line. An admin that equivocates makes them a tree, and
/// an event's membership is still read from its own past's branch only: every replica reaches
/// the same verdict on every event whatever order the fork's halves arrived in (arrival order
/// used to decide it — a permanent split).
#[derive(Debug, Clone)]
pub struct Membership {
    admin: AuthorId,
    /// Version 0 is the genesis; one more per admin member event, in the order they were held
    /// (a version's `prev` is always an earlier one: each member event contains its past).
    versions: Vec<Version>,
    /// author → (version, role or None for removed), ascending by version. The genesis
    /// members' entries are at version 0.
    changes: BTreeMap<AuthorId, Vec<(u32, Option<Role>)>>,
    /// Whether the versions branch (the admin equivocated in its member events).
    forked: bool,
    /// The admin event held with the highest `(sq, id)` and its version: the membership
    /// reported as "now". Deterministic for a given set of events, whatever their order.
    latest: Option<(u64, EventId, u32)>,
    /// A sabotage run's old rule (the simulator's oracle only): an event's membership is every
    /// change up to its admin `sq`, the last to arrive winning.
    arrival_order: bool,
}

impl Membership {
    pub fn from_genesis(g: &Genesis) -> Self {
        let mut changes: BTreeMap<AuthorId, Vec<(u32, Option<Role>)>> = BTreeMap::new();
        for w in &g.writers {
            changes.insert(*w, vec![(0, Some(Role::Writer))]);
        }
        for a in &g.anchors {
            changes.insert(*a, vec![(0, Some(Role::Anchor))]);
        }
        Membership {
            admin: g.admin,
            versions: vec![Version {
                sq: 1,
                prev: 0,
                has_next: false,
            }],
            changes,
            forked: false,
            latest: None,
            arrival_order: false,
        }
    }

    pub fn admin(&self) -> AuthorId {
        self.admin
    }

    /// Whether some membership change held here names `who` (or `who` is the admin): a key
    /// that was, is or will be a member. Any other key is a stranger to this replica.
    pub fn ever_named(&self, who: &AuthorId) -> bool {
        *who == self.admin || self.changes.contains_key(who)
    }

    /// Records an admin `member` event at admin sequence `sq` whose own chain's membership was
    /// `prev` (the version of the admin's previous event): returns the new version, the
    /// event's own.
    pub fn record(&mut self, prev: u32, sq: u64, op: &MemberOp) -> u32 {
        let (who, role) = match op {
            MemberOp::Add(k, r) => (*k, Some(*r)),
            MemberOp::Remove(k) => (*k, None),
        };
        let v = self.versions.len() as u32;
        let before = &mut self.versions[prev as usize];
        self.forked |= before.has_next;
        before.has_next = true;
        self.versions.push(Version {
            sq,
            prev,
            has_next: false,
        });
        self.changes.entry(who).or_default().push((v, role));
        v
    }

    /// Notes an admin event (any kind) with its version: the newest by `(sq, id)` is "now".
    pub fn note_admin_event(&mut self, sq: u64, id: EventId, version: u32) {
        if self.latest.is_none_or(|(s, i, _)| (sq, id) > (s, i)) {
            self.latest = Some((sq, id, version));
        }
    }

    /// Whether version `a` is `b` or before it on `b`'s chain.
    fn precedes(&self, a: u32, b: u32) -> bool {
        if !self.forked {
            return a <= b;
        }
        let mut v = b;
        while v > a {
            v = self.versions[v as usize].prev;
        }
        v == a
    }

    /// The role of `who` in a causal past whose membership version is `version`.
    pub fn role_at(&self, who: &AuthorId, version: u32) -> Option<Role> {
        if *who == self.admin {
            return Some(Role::Admin);
        }
        let list = self.changes.get(who)?;
        if self.arrival_order {
            let sq = self.versions[version as usize].sq;
            return list
                .iter()
                .rev()
                .find(|(v, _)| self.versions[*v as usize].sq <= sq)
                .and_then(|(_, r)| *r);
        }
        let n = list.partition_point(|(v, _)| *v <= version);
        list[..n]
            .iter()
            .rev()
            .find(|(v, _)| self.precedes(*v, version))
            .and_then(|(_, r)| *r)
    }

    /// Sabotage (the simulator's oracle only): decide membership by arrival order, the rule
    /// before versions (an admin fork splits the replicas).
    #[doc(hidden)]
    pub fn sabotage_arrival_order(&mut self) {
        self.arrival_order = true;
    }

    /// The role of `who` in the newest membership held (see `note_admin_event`).
    pub fn role_now(&self, who: &AuthorId) -> Option<Role> {
        self.role_at(who, self.version_now())
    }

    /// The version of the newest admin event held.
    pub fn version_now(&self) -> u32 {
        self.latest.map_or(0, |(_, _, v)| v)
    }

    /// Members (admin included) in a causal past whose membership version is `version`, in
    /// key order.
    pub fn members_at(&self, version: u32) -> Vec<(AuthorId, Role)> {
        let mut out: Vec<(AuthorId, Role)> = self
            .changes
            .keys()
            .filter(|k| **k != self.admin)
            .filter_map(|k| self.role_at(k, version).map(|r| (*k, r)))
            .collect();
        out.push((self.admin, Role::Admin));
        out.sort();
        out
    }

    /// Members (admin included) in the newest membership held, in key order.
    pub fn current(&self) -> Vec<(AuthorId, Role)> {
        self.members_at(self.version_now())
    }
}
