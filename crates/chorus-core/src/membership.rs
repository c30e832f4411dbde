//! Membership as a function of position in the admin's chain.
//!
//! Only the admin signs `member` events and its events form one chain, so "the membership state
//! in an event's causal past" is the fold of the admin's member events with `sq <= admin_seen`,
//! where `admin_seen` is the highest admin `sq` in that past. Each author keeps the list of its
//! changes keyed by admin `sq`; a lookup is a binary search.

use std::collections::BTreeMap;

use ipld_core::ipld::Ipld;

use crate::{
    event::{EventError, kind},
    genesis::Genesis,
    ids::AuthorId,
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

/// Membership over the admin's chain.
#[derive(Debug, Clone)]
pub struct Membership {
    admin: AuthorId,
    /// author → changes as (admin sq at which it takes effect, role or None for removed),
    /// ascending by admin sq. The genesis entries take effect at admin sq 1.
    changes: BTreeMap<AuthorId, Vec<(u64, Option<Role>)>>,
}

impl Membership {
    pub fn from_genesis(g: &Genesis) -> Self {
        let mut changes: BTreeMap<AuthorId, Vec<(u64, Option<Role>)>> = BTreeMap::new();
        for w in &g.writers {
            changes.insert(*w, vec![(1, Some(Role::Writer))]);
        }
        for a in &g.anchors {
            changes.insert(*a, vec![(1, Some(Role::Anchor))]);
        }
        Membership {
            admin: g.admin,
            changes,
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

    /// Records a member event by the admin at admin sequence `admin_sq`. Admin events arrive in
    /// chain order (each contains the previous), so pushes are ascending.
    pub fn record(&mut self, admin_sq: u64, op: &MemberOp) {
        let (who, role) = match op {
            MemberOp::Add(k, r) => (*k, Some(*r)),
            MemberOp::Remove(k) => (*k, None),
        };
        let list = self.changes.entry(who).or_default();
        debug_assert!(list.last().is_none_or(|(s, _)| *s <= admin_sq));
        list.push((admin_sq, role));
    }

    /// The role of `who` in a causal past that contains admin events up to `admin_seen`.
    pub fn role_at(&self, who: &AuthorId, admin_seen: u64) -> Option<Role> {
        if *who == self.admin {
            return Some(Role::Admin);
        }
        let list = self.changes.get(who)?;
        let n = list.partition_point(|(s, _)| *s <= admin_seen);
        if n == 0 { None } else { list[n - 1].1 }
    }

    /// Members (admin included) in a causal past that contains admin events up to
    /// `admin_seen`, in key order.
    pub fn members_at(&self, admin_seen: u64) -> Vec<(AuthorId, Role)> {
        let mut out: Vec<(AuthorId, Role)> = self
            .changes
            .keys()
            .filter(|k| **k != self.admin)
            .filter_map(|k| self.role_at(k, admin_seen).map(|r| (*k, r)))
            .collect();
        out.push((self.admin, Role::Admin));
        out.sort();
        out
    }

    /// Members (admin included) at the tip of the admin chain, in key order.
    pub fn current(&self) -> Vec<(AuthorId, Role)> {
        let mut out: Vec<(AuthorId, Role)> = self
            .changes
            .iter()
            .filter_map(|(k, l)| l.last().and_then(|(_, r)| r.map(|r| (*k, r))))
            .filter(|(k, _)| *k != self.admin)
            .collect();
        out.push((self.admin, Role::Admin));
        out.sort();
        out
    }
}
