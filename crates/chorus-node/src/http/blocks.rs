//! `GET /v1/blocks/{cid}`: one IPFS block by CID — from this node's store when it holds it,
//! otherwise fetched over Bitswap from the connected peers and the providers a DHT lookup
//! names (`chorus_net::bitswap`), checked against the CID (only sha2-256 CIDs are fetched: what
//! can be checked here).
//!
//! The body is the block's bytes (`application/vnd.ipld.raw`, as an IPFS gateway answers
//! `?format=raw`); the header `chorus-block-source` says `store` or `network`. A fetched block
//! is not kept (where payload blocks live is decided elsewhere).

use std::time::Duration;

use axum::{
    extract::{Path, Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chorus_net::bitswap::FetchError;
use cid::Cid;
use serde::Deserialize;

use super::shared::{Api, error};

/// How long a fetch waits for a peer by default…
pub const DEFAULT_FETCH_MS: u64 = 10_000;
/// …and at most.
pub const MAX_FETCH_MS: u64 = 120_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BlockQuery {
    /// How long to wait for a peer to send the block, in ms (default 10 000, at most 120 000).
    timeout_ms: Option<u64>,
}

#[utoipa::path(get, path = "/v1/blocks/{cid}", tag = "ipfs", params(("cid" = String, Path, description = "The block's CID (any multibase)"), BlockQuery), responses(
    (status = 200, description = "The block's bytes; header `chorus-block-source`: `store` or `network`", content_type = "application/vnd.ipld.raw"),
    (status = 400, description = "Not a CID, or a hash other than sha2-256", body = super::shared::ApiError),
    (status = 401, description = "A private timeline's node with a token, and the request does not carry it", body = super::shared::ApiError),
    (status = 404, description = "Not held here, and every peer asked (the connected ones, and the providers the DHT named) answered that it does not have it (or there was nobody to ask)", body = super::shared::ApiError),
    (status = 503, description = "Too many fetches open", body = super::shared::ApiError),
    (status = 504, description = "No peer sent it within the timeout", body = super::shared::ApiError),
))]
pub async fn block(
    State(api): State<Api>,
    Path(cid): Path<String>,
    Query(q): Query<BlockQuery>,
) -> Response {
    let cid = match Cid::try_from(cid.as_str()) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a CID: {cid:?}: {e}")),
    };
    let timeout = fetch_timeout(q.timeout_ms);
    if let Some(source) = api.blocks.clone() {
        let held = tokio::task::spawn_blocking(move || source.get(&cid))
            .await
            .ok()
            .flatten();
        if let Some(bytes) = held {
            return raw(bytes, "store");
        }
    }
    match api.bitswap.fetch(cid, timeout).await {
        Ok(bytes) => raw(bytes, "network"),
        Err(e) => fetch_failed(&e),
    }
}

/// The answer to a failed Bitswap fetch (here and for payloads).
pub fn fetch_failed(e: &FetchError) -> Response {
    let code = match e {
        FetchError::UncheckableHash(_) => StatusCode::BAD_REQUEST,
        FetchError::NoPeers(_) | FetchError::NotFound { .. } => StatusCode::NOT_FOUND,
        FetchError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        FetchError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(code, e.to_string())
}

/// How long a fetch may wait for a peer: `timeout_ms` as asked, or the default, at most the
/// bound.
pub fn fetch_timeout(timeout_ms: Option<u64>) -> Duration {
    Duration::from_millis(timeout_ms.unwrap_or(DEFAULT_FETCH_MS).min(MAX_FETCH_MS))
}

fn raw(bytes: Vec<u8>, from: &'static str) -> Response {
    let mut r = bytes.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.ipld.raw"),
    );
    r.headers_mut()
        .insert("chorus-block-source", HeaderValue::from_static(from));
    r
}
