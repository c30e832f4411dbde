//! `GET /v1/status` and `GET /v1/state`: the node's summary and the replicated state.

use std::sync::atomic::Ordering;

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::shared::{Api, error};
use crate::{actor::ApiRequest, emissary::EmissaryInfo, status::merge_objects};

/// The node's status plus the original swarm's fields (`coherence`, `dopamine`, `mesh_size`,
/// `active_emissaries`) and the emissaries' counters.
#[utoipa::path(get, path = "/v1/status", tag = "node", responses(
    (status = 200, description = "Peers, heads, events, settled frontier, state_hash, sync, rejections, emissaries", body = serde_json::Value),
    (status = 503, description = "The node is shutting down", body = super::shared::ApiError),
))]
pub async fn status(State(api): State<Api>) -> Response {
    match status_json(&api).await {
        Ok(v) => ([(header::CONTENT_TYPE, "application/json")], v).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// The body of `GET /v1/status` (also the dashboard's feed).
pub async fn status_json(api: &Api) -> Result<String, String> {
    let snap = api.status.get(&api.node).await.map_err(|e| e.to_string())?;
    let live = json!({
        "mesh_size": snap.status.peers.len() + 1,
        "active_emissaries": api.emissaries
            .iter()
            .filter(|e| e.stats.in_flight.load(Ordering::Relaxed) > 0)
            .map(|e| e.name.clone())
            .collect::<Vec<_>>(),
        "emissaries": api.emissaries.iter().map(EmissaryInfo::json).collect::<Vec<_>>(),
    });
    Ok(merge_objects(&snap.json, &live))
}

#[utoipa::path(get, path = "/v1/state", tag = "node", responses(
    (status = 200, description = "The replicated state (as `chorus state --json`)", body = serde_json::Value),
    (status = 503, description = "The node is shutting down", body = super::shared::ApiError),
))]
pub async fn state(State(api): State<Api>) -> Response {
    match api.ask(ApiRequest::State).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

/// `GET /v1/snapshot`: the newest certified snapshot this node serves (`snapshot/1`,
/// docs/design/ipfs.md): its root CID, which any IPFS node or `chorus snapshot verify` fetches
/// and checks, with what its certificate says. 404 when the node holds none.
#[utoipa::path(get, path = "/v1/snapshot", tag = "ipfs", responses(
    (status = 200, description = "The newest certified snapshot: its root CID and what it certifies", body = serde_json::Value),
    (status = 404, description = "None: the timeline is not ordered by finality (final/1, final/2), no certificate yet, or the certified checkpoint's state is not held here", body = super::shared::ApiError),
))]
pub async fn snapshot(State(api): State<Api>) -> Response {
    let newest = api.certified.newest();
    let Some((c, s)) = newest
        .as_ref()
        .and_then(|c| c.snapshot.as_ref().map(|s| (c, s)))
    else {
        return error(
            StatusCode::NOT_FOUND,
            "no certified snapshot here: the timeline is not ordered by finality (final/1, final/2), no quorum has certified \
             a checkpoint yet, or this node does not hold the certified checkpoint's state",
        );
    };
    Json(serde_json::json!({
        "root": s.root_cid.to_string(),
        "certificate": c.cid.to_string(),
        "positions": c.certificate.att.positions,
        "last": c.certificate.att.last.to_string(),
        "state_hash": hex::encode(c.certificate.att.state),
        "epoch": c.certificate.epoch,
        "size": s.chunks.iter().map(|(_, b)| b.len() as u64).sum::<u64>(),
        "chunks": s.chunks.iter().map(|(c, _)| c.to_string()).collect::<Vec<_>>(),
        // final/2: the handovers from the genesis committee to the certificate's (epochs 1…).
        "handovers": s.handovers.iter().map(|(c, _)| c.to_string()).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// `GET /v1/finality/certificate`: the newest finality certificate this node holds (a quorum
/// of the committee attested the state after `positions`), with its DAG-CBOR block; 404 when
/// it holds none yet, or the timeline is not `final/1`.
#[utoipa::path(get, path = "/v1/finality/certificate", tag = "node", responses(
    (status = 200, description = "The newest finality certificate, with its DAG-CBOR block", body = serde_json::Value),
    (status = 404, description = "None yet, or the timeline is not ordered by finality (final/1, final/2)", body = super::shared::ApiError),
))]
pub async fn certificate(State(api): State<Api>) -> Response {
    match api.ask(ApiRequest::Certificate).await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "no finality certificate here yet: the timeline is not ordered by finality (final/1, final/2), or no quorum of \
             its committee has attested a checkpoint inside the final prefix",
        ),
        Err(r) => r,
    }
}
