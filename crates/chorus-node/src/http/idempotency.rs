//! Idempotency keys on the gateway's writes (`POST /v1/swarm/intent`, `POST
//! /v1/chat/completions`): a request that carries `Idempotency-Key: K` appends its stimulus
//! once; a retry with the same key and the same request waits for the first stimulus's
//! election and answers with it (header `Idempotent-Replayed: true`) — an SDK that retries a
//! 504 never appends a second permanent stimulus. The same key with another request is refused
//! (422). Keys are remembered per route for [`KEY_TTL`], at most [`MAX_KEYS`] (the oldest are
//! forgotten first), in memory: a restarted node has forgotten them.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use axum::http::HeaderMap;
use chorus_core::EventId;

/// The request header (case-insensitive, as every HTTP header).
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// The response header on an answer to a retry.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Keys remembered at once.
pub const MAX_KEYS: usize = 4_096;
/// How long a key is remembered.
pub const KEY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest key taken.
pub const MAX_KEY_BYTES: usize = 255;

/// A keyed request: the route and key, and a digest of what it asks (its stimulus's body).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Keyed {
    pub route: &'static str,
    pub key: String,
    pub request: [u8; 32],
}

/// What a keyed request finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time: append, then [`Keys::remember`].
    New,
    /// A retry: the stimulus the first request appended.
    Retry(EventId),
    /// The key came with another request.
    Conflict,
}

struct Entry {
    request: [u8; 32],
    stimulus: EventId,
    at: Instant,
}

/// The remembered keys.
#[derive(Default)]
pub struct Keys {
    entries: BTreeMap<(&'static str, String), Entry>,
    order: VecDeque<((&'static str, String), Instant)>,
}

impl Keys {
    pub fn seen(&mut self, k: &Keyed, now: Instant) -> Seen {
        self.expire(now);
        match self.entries.get(&(k.route, k.key.clone())) {
            None => Seen::New,
            Some(e) if e.request == k.request => Seen::Retry(e.stimulus),
            Some(_) => Seen::Conflict,
        }
    }

    pub fn remember(&mut self, k: Keyed, stimulus: EventId, now: Instant) {
        self.expire(now);
        while self.entries.len() >= MAX_KEYS {
            let Some((old, _)) = self.order.pop_front() else {
                break;
            };
            self.entries.remove(&old);
        }
        let id = (k.route, k.key);
        self.order.push_back((id.clone(), now));
        self.entries.insert(
            id,
            Entry {
                request: k.request,
                stimulus,
                at: now,
            },
        );
    }

    fn expire(&mut self, now: Instant) {
        while let Some((id, at)) = self.order.front() {
            if now.duration_since(*at) < KEY_TTL {
                break;
            }
            if self.entries.get(id).is_some_and(|e| e.at == *at) {
                self.entries.remove(id);
            }
            self.order.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The request's key, if it has one; why not when it is not a short printable token (the
/// caller answers 400 with it).
pub fn key_of(headers: &HeaderMap) -> Result<Option<String>, String> {
    let Some(v) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let bad =
        || format!("{IDEMPOTENCY_HEADER} must be 1..={MAX_KEY_BYTES} printable ASCII characters");
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty() || s.len() > MAX_KEY_BYTES || !s.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(bad());
    }
    Ok(Some(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(key: &str, request: u8) -> Keyed {
        Keyed {
            route: "intent",
            key: key.into(),
            request: [request; 32],
        }
    }

    #[test]
    fn a_retry_finds_its_stimulus_another_request_conflicts_and_old_keys_go() {
        let mut keys = Keys::default();
        let t = Instant::now();
        assert_eq!(keys.seen(&keyed("a", 1), t), Seen::New);
        keys.remember(keyed("a", 1), EventId([9; 32]), t);
        assert_eq!(keys.seen(&keyed("a", 1), t), Seen::Retry(EventId([9; 32])));
        assert_eq!(keys.seen(&keyed("a", 2), t), Seen::Conflict);
        let other_route = Keyed {
            route: "chat",
            ..keyed("a", 1)
        };
        assert_eq!(keys.seen(&other_route, t), Seen::New);
        assert_eq!(keys.seen(&keyed("a", 1), t + KEY_TTL), Seen::New, "expired");
        assert!(keys.is_empty());
        for i in 0..MAX_KEYS + 10 {
            keys.remember(keyed(&i.to_string(), 1), EventId([1; 32]), t);
        }
        assert_eq!(keys.len(), MAX_KEYS, "bounded");
        assert_eq!(
            keys.seen(&keyed("0", 1), t),
            Seen::New,
            "the oldest forgotten first"
        );
        let last = (MAX_KEYS + 9).to_string();
        assert_eq!(
            keys.seen(&keyed(&last, 1), t),
            Seen::Retry(EventId([1; 32]))
        );
    }
}
