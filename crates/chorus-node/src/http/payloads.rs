//! Payloads over the API (`crate::payloads`; docs/design/ipfs.md, "Payloads"):
//! `POST /v1/payloads` stores bytes as a payload and answers its root CID, which an event then
//! names (`"payload": {"/": CID}` in its body); `GET /v1/payloads/{cid}` reads one back, from
//! this node or over Bitswap; `GET /v1/payloads` lists the referenced payloads with their
//! holders as this node ranks them.

use std::time::Duration;

use axum::{
    Json,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chorus_core::payload::{self, MAX_PAYLOAD_BYTES};
use cid::Cid;
use serde::Deserialize;
use serde_json::json;

use super::shared::{Api, error};
use crate::payloads::ReadError;

/// How long an upload's body may take to arrive whole (16 MiB at ~300 KiB/s).
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Most payloads `GET /v1/payloads` lists.
pub const MAX_LISTED: usize = 1_000;

#[utoipa::path(post, path = "/v1/payloads", tag = "ipfs", request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The payload's bytes (1 to 16 MiB)"), responses(
    (status = 200, description = "Stored durably here: `{cid, size, parts, copies}`; name it in an event's body as `\"payload\": {\"/\": cid}`", body = serde_json::Value),
    (status = 400, description = "Empty, or sent to a light node (which holds no payloads)", body = super::shared::ApiError),
    (status = 401, description = "The node has a write token and the request does not carry it", body = super::shared::ApiError),
    (status = 408, description = "The body did not arrive within 60 s", body = super::shared::ApiError),
    (status = 413, description = "More than 16 MiB", body = super::shared::ApiError),
    (status = 503, description = "2 uploads are running on this node", body = super::shared::ApiError),
), security(("token" = [])))]
pub async fn upload(State(api): State<Api>, body: Body) -> Response {
    let Some(dir) = api.payloads.dir().cloned() else {
        return error(
            StatusCode::BAD_REQUEST,
            "a light node holds no payloads: upload to a full node",
        );
    };
    let Some(_slot) = api.payloads.upload_slot() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} uploads are running on this node: try again once one ends",
                crate::payloads::MAX_UPLOADS
            ),
        );
    };
    let bytes = match tokio::time::timeout(
        UPLOAD_TIMEOUT,
        axum::body::to_bytes(body, MAX_PAYLOAD_BYTES),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the payload could not be read whole within {MAX_PAYLOAD_BYTES} bytes: {e}"
                ),
            );
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!("the payload did not arrive within {UPLOAD_TIMEOUT:?}"),
            );
        }
    };
    let p = match payload::split(&bytes) {
        Ok(p) => p,
        Err(e @ payload::PayloadError::TooLarge { .. }) => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string());
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let (size, parts, root) = (bytes.len(), p.parts.len(), p.root_cid);
    let stored = tokio::task::spawn_blocking(move || dir.put_payload(&p)).await;
    match stored {
        Ok(Ok(())) => {
            tracing::info!(%root, size, "payload uploaded");
            Json(json!({
                "cid": root.to_string(),
                "size": size,
                "parts": parts,
                "copies": api.payloads.copies(),
            }))
            .into_response()
        }
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the payload could not be written: {e}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// How long to wait for each block from a peer, in ms (default 10 000, at most 120 000).
    timeout_ms: Option<u64>,
}

#[utoipa::path(get, path = "/v1/payloads/{cid}", tag = "ipfs", params(("cid" = String, Path, description = "The payload's root CID"), ReadQuery), responses(
    (status = 200, description = "The payload's bytes; header `chorus-payload-source`: `store` (every block here) or `network`", content_type = "application/octet-stream"),
    (status = 400, description = "Not a CID, or not a DAG-CBOR one (a payload root is DAG-CBOR)", body = super::shared::ApiError),
    (status = 404, description = "A block of it is not held here and no peer asked has it", body = super::shared::ApiError),
    (status = 502, description = "The block under the CID is no payload root, or a part does not fit it", body = super::shared::ApiError),
    (status = 503, description = "4 payload reads are running here, or too many Bitswap fetches are open", body = super::shared::ApiError),
    (status = 504, description = "No peer sent a block within the timeout", body = super::shared::ApiError),
))]
pub async fn read(
    State(api): State<Api>,
    Path(cid): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Response {
    let root = match Cid::try_from(cid.as_str()) {
        Ok(c) if c.codec() == chorus_core::ids::DAG_CBOR => c,
        Ok(c) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{c} is not a payload root (a root is a DAG-CBOR block)"),
            );
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a CID: {cid:?}: {e}")),
    };
    let timeout = super::blocks::fetch_timeout(q.timeout_ms);
    let Some(_slot) = api.payloads.read_slot() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} payload reads are running on this node: try again once one ends",
                crate::payloads::MAX_READS
            ),
        );
    };
    match api.payloads.read(root, timeout).await {
        Ok((bytes, local)) => {
            let mut r = bytes.into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r.headers_mut().insert(
                "chorus-payload-source",
                HeaderValue::from_static(if local { "store" } else { "network" }),
            );
            r
        }
        Err(ReadError::Bad(e)) => error(StatusCode::BAD_GATEWAY, e),
        Err(ReadError::Fetch(e)) => super::blocks::fetch_failed(&e),
    }
}

#[utoipa::path(get, path = "/v1/payloads", tag = "ipfs", responses(
    (status = 200, description = "`{copies, referenced, listed: [{cid, held, holder, holders}], held_bytes, fetched, fetch_failures, dropped, orphans_removed, bad_roots}`: the payloads events reference (the first 1 000 by CID), whether this node holds each, and the holders as it ranks them", body = serde_json::Value),
))]
pub async fn list(State(api): State<Api>) -> Response {
    let p = api.payloads.clone();
    let Ok((listed, referenced, bytes)) = tokio::task::spawn_blocking(move || {
        let (listed, referenced) = p.view(MAX_LISTED);
        (listed, referenced, p.dir().map(|d| d.bytes()))
    })
    .await
    else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "listing failed");
    };
    let s = api.payloads.stats();
    let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    Json(json!({
        "copies": api.payloads.copies(),
        "referenced": referenced,
        "listed": listed,
        "held_bytes": bytes,
        "fetched": n(&s.fetched),
        "fetch_failures": n(&s.fetch_failures),
        "dropped": n(&s.dropped),
        "orphans_removed": n(&s.orphans_removed),
        "bad_roots": n(&s.bad_roots),
    }))
    .into_response()
}
