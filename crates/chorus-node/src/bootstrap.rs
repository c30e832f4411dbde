//! Starting a full node from a certified snapshot (`chorus node --from-snapshot ROOT`;
//! docs/design/ipfs.md, "Bootstrap from a snapshot").
//!
//! A node that holds no final position yet fetches the snapshot's blocks by CID over Bitswap
//! (its peers, and the providers the DHT names), checks them with
//! [`chorus_core::snapshot::verify`] against the genesis alone (a `final/2` root carries the
//! committee chain; under `final/1` only an epoch-0 certificate can be checked this way), and
//! `GET /v1/state` serves the certified state at once. Meanwhile the node syncs and folds the
//! history as any node does: that is the verification in the background. Once its own fold
//! holds the certified checkpoint, the two must agree — `agreed`, or a `mismatch` that is loud
//! (an error log, `chorus_snapshot_bootstrap_mismatch`, `/v1/status`), after which the node
//! serves its own replay. A snapshot that is refused, or not fetched within
//! [`FETCH_DEADLINE`], changes nothing but the status: the node replays, as it would without
//! the flag. Full nodes only (a light node keeps no checkpoints to compare).

use std::time::{Duration, Instant};

use chorus_core::{
    EventId, Machine, finality::certificate::Certificate, genesis::Genesis, snapshot,
};
use chorus_net::bitswap::{Bitswap, FetchError};
use cid::Cid;
use serde::Serialize;
use tokio::sync::mpsc;

/// How long one block is waited for (then asked again, within [`FETCH_DEADLINE`]).
pub const BLOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the whole fetch may take (no peer connected yet at start, a peer that has not
/// got a block yet): past it, a block not had refuses the snapshot.
pub const FETCH_DEADLINE: Duration = Duration::from_secs(120);

/// What the fetch and the check came to (`Result<(Certificate, M::State), String>`, boxed so
/// that the actor's messages stay free of the machine's type): the certificate and the
/// certified state, decoded, or why the snapshot was refused.
pub type Fetched = Box<dyn std::any::Any + Send + Sync>;

/// Fetches and checks the snapshot `root` on a blocking thread; the outcome reaches the actor
/// as `wrap(outcome)` (its message for it) through `to_actor`. Stops asking once `to_actor`
/// is closed (the node is shutting down).
pub fn spawn<M: Machine + Default + Send + 'static, T: Send + 'static>(
    root: Cid,
    genesis_id: EventId,
    genesis: Genesis,
    bitswap: Bitswap,
    to_actor: mpsc::Sender<T>,
    wrap: fn(Fetched) -> T,
) {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let get = |cid: &Cid| -> Option<Vec<u8>> {
            loop {
                // The node is shutting down: stop asking (the runtime waits for this thread).
                if to_actor.is_closed() {
                    return None;
                }
                let fetch = bitswap.fetch(*cid, BLOCK_TIMEOUT);
                let r = handle.block_on(async {
                    tokio::select! {
                        r = fetch => Some(r),
                        _ = to_actor.closed() => None,
                    }
                })?;
                match r {
                    Ok(b) => return Some(b),
                    Err(e)
                        if started.elapsed() < FETCH_DEADLINE
                            && !matches!(e, FetchError::UncheckableHash(_)) =>
                    {
                        tracing::debug!(%cid, "snapshot block not had yet: {e}");
                        std::thread::sleep(Duration::from_millis(250));
                    }
                    Err(e) => {
                        tracing::warn!(%cid, "snapshot block not fetched: {e}");
                        return None;
                    }
                }
            }
        };
        let epoch0 = snapshot::genesis_committee(&genesis);
        let r = snapshot::verify(&M::default(), genesis_id, &genesis, root, get, |e| {
            (e == 0).then(|| epoch0.clone())
        })
        .map(|v| (v.certificate, v.state))
        .map_err(|e| e.to_string());
        let _ = to_actor.blocking_send(wrap(Box::new(r)));
    });
}

/// Where a bootstrap stands.
pub enum Phase<S> {
    /// The snapshot's blocks are being fetched and checked.
    Fetching,
    /// Checked: `/v1/state` serves it until the node's own fold agrees.
    Serving {
        certificate: Certificate,
        state: S,
        ready_ms: u64,
        replayed_at_ready: u64,
    },
    /// The node's own fold computed the certified state: it serves its own from now on.
    Agreed {
        certificate: Certificate,
        ready_ms: u64,
        replayed_at_ready: u64,
        verified_ms: u64,
    },
    /// The node's own fold computed another state (or another event) at the certified
    /// position: determinism is broken, or a quorum signed a lie. Loud; the node serves its
    /// own replay.
    Mismatch {
        certificate: Certificate,
        own: String,
    },
    /// Refused or not fetched: the node replays as without a snapshot.
    Refused(String),
    /// The replay folded past the certified position and holds no checkpoint there to compare
    /// (a light node keeps none, or its bytes were dropped): loud; the node serves its own.
    Unchecked {
        certificate: Certificate,
        why: String,
    },
}

/// A bootstrap from `root`, begun at `started`.
pub struct Bootstrap<S> {
    pub root: Cid,
    pub started: Instant,
    pub phase: Phase<S>,
}

/// `/v1/status`'s `bootstrap`.
#[derive(Debug, Clone, Serialize)]
pub struct BootstrapView {
    pub root: String,
    /// `fetching`, `serving` (the certified state, while the history replays), `agreed`,
    /// `mismatch`, `unchecked` (the replay passed it with no checkpoint there), `refused`.
    pub phase: &'static str,
    /// The certified positions, state and epoch (once checked).
    pub positions: Option<u64>,
    pub state_hash: Option<String>,
    pub epoch: Option<u32>,
    /// From the start to serving the certified state, and to the replay agreeing (ms).
    pub ready_ms: Option<u64>,
    pub verified_ms: Option<u64>,
    /// The replay's progress: positions of the final prefix this node holds (of `positions`).
    pub replayed_positions: u64,
    /// The replay's final positions when the certified state began to be served (how far
    /// ahead of the replay the snapshot put the node).
    pub replayed_at_ready: Option<u64>,
    /// Why it was refused, or what the replay computed instead.
    pub why: Option<String>,
}

impl<S> Bootstrap<S> {
    pub fn view(&self, replayed_positions: u64) -> BootstrapView {
        let cert = match &self.phase {
            Phase::Serving { certificate, .. }
            | Phase::Agreed { certificate, .. }
            | Phase::Mismatch { certificate, .. }
            | Phase::Unchecked { certificate, .. } => Some(certificate),
            _ => None,
        };
        BootstrapView {
            root: self.root.to_string(),
            phase: match &self.phase {
                Phase::Fetching => "fetching",
                Phase::Serving { .. } => "serving",
                Phase::Agreed { .. } => "agreed",
                Phase::Mismatch { .. } => "mismatch",
                Phase::Refused(_) => "refused",
                Phase::Unchecked { .. } => "unchecked",
            },
            positions: cert.map(|c| c.att.positions),
            state_hash: cert.map(|c| hex::encode(c.att.state)),
            epoch: cert.map(|c| c.epoch),
            ready_ms: match &self.phase {
                Phase::Serving { ready_ms, .. } | Phase::Agreed { ready_ms, .. } => Some(*ready_ms),
                _ => None,
            },
            replayed_at_ready: match &self.phase {
                Phase::Serving {
                    replayed_at_ready, ..
                }
                | Phase::Agreed {
                    replayed_at_ready, ..
                } => Some(*replayed_at_ready),
                _ => None,
            },
            verified_ms: match &self.phase {
                Phase::Agreed { verified_ms, .. } => Some(*verified_ms),
                _ => None,
            },
            replayed_positions,
            why: match &self.phase {
                Phase::Mismatch { own, .. } => Some(own.clone()),
                Phase::Unchecked { why, .. } => Some(why.clone()),
                Phase::Refused(why) => Some(why.clone()),
                _ => None,
            },
        }
    }
}
