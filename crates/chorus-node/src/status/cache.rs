//! `GET /v1/status` for many monitors at once: the node's part of the answer is copied out by
//! the actor at most once per [`STATUS_MAX_AGE`], serialized once (by the request that asked,
//! not on the actor thread), and shared by every request in that window; only the emissaries'
//! live fields are added per request.
//!
//! Freshness, precisely:
//! * anything that grew the timeline (an append through any path, events from peers) makes the
//!   next request ask the actor again — the cache remembers the feed's change count it was
//!   built at, so a client that appended and then asks for the status sees its write;
//! * the rest (peers, sync counters, `uptime_ms`) is at most [`STATUS_MAX_AGE`] old, plus the
//!   time the actor takes to answer a refresh while one is under way (requests that find the
//!   snapshot only old, not outdated by a write, are served it instead of waiting);
//! * `active_emissaries` and the emissaries' counters are read at every request.
//!
//! Refreshes are single-flight: when the timeline changed, one request asks the actor and the
//! others wait for its answer, so a burst of a thousand costs the actor one status, not a
//! thousand queued questions.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::view::NodeStatus;
use crate::handle::{NodeGone, NodeHandle};

/// The longest a shared status snapshot is served without asking the actor again.
pub const STATUS_MAX_AGE: Duration = Duration::from_millis(20);

/// The node's status as the actor last copied it out, and serialized.
#[derive(Clone)]
pub struct Snapshot {
    pub status: Arc<NodeStatus>,
    /// `status` as a compact JSON object.
    pub json: Arc<str>,
    taken: Instant,
    /// The feed's change count read before the actor was asked.
    changes: u64,
}

#[derive(Default)]
pub struct StatusCache {
    latest: Mutex<Option<Snapshot>>,
    refresh: tokio::sync::Mutex<()>,
}

impl StatusCache {
    /// The cached snapshot if it was built at change count `changes`, and whether it is also
    /// younger than [`STATUS_MAX_AGE`].
    fn cached(&self, changes: u64) -> Option<(Snapshot, bool)> {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest
            .as_ref()
            .filter(|s| s.changes == changes)
            .map(|s| (s.clone(), s.taken.elapsed() <= STATUS_MAX_AGE))
    }

    /// The current snapshot, from the cache or (once for all waiting requests) from the actor.
    pub async fn get(&self, node: &NodeHandle) -> Result<Snapshot, NodeGone> {
        let refresh = match self.cached(node.timeline_changes()) {
            Some((s, true)) => return Ok(s),
            // Only old, with the timeline unchanged: while another request refreshes it, serve
            // it as it is rather than queue behind the actor (stale-while-revalidate).
            Some((s, false)) => match self.refresh.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok(s),
            },
            None => self.refresh.lock().await,
        };
        // Read before asking: a change while the actor answers leaves this snapshot marked
        // older than it is, so the next request refreshes again (never the other way round).
        let changes = node.timeline_changes();
        if let Some((s, true)) = self.cached(changes) {
            return Ok(s);
        }
        let status = node.status().await?;
        // Plain structs, and maps keyed by strings: serializing cannot fail.
        let json = serde_json::to_string(&*status).expect("a status serializes");
        let snap = Snapshot {
            status,
            json: json.into(),
            taken: Instant::now(),
            changes,
        };
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(snap.clone());
        drop(refresh);
        Ok(snap)
    }
}

/// `base` (a JSON object) with the fields of `extra` (another object, whose keys `base` does
/// not have) added, without parsing `base` again.
pub fn merge_objects(base: &str, extra: &Value) -> String {
    let extra = extra.to_string();
    let (Some(head), Some(tail)) = (base.strip_suffix('}'), extra.strip_prefix('{')) else {
        return base.to_string();
    };
    if tail == "}" {
        return base.to_string();
    }
    let sep = if head.ends_with('{') { "" } else { "," };
    format!("{head}{sep}{tail}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_adds_fields() {
        let out = merge_objects(r#"{"a":1,"b":[1,2]}"#, &json!({"c": "x", "d": {"e": null}}));
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v, json!({"a": 1, "b": [1, 2], "c": "x", "d": {"e": null}}));
    }

    #[test]
    fn merge_handles_empty_objects() {
        assert_eq!(merge_objects("{}", &json!({"c": 1})), r#"{"c":1}"#);
        assert_eq!(merge_objects(r#"{"a":1}"#, &json!({})), r#"{"a":1}"#);
    }
}
