//! What every HTTP handler shares: the [`Api`] state, the bounds on request bodies, the
//! gateway's counters, and the error responses (`{"error": "…"}` with the status a refusal
//! calls for).

use std::sync::{Arc, atomic::AtomicU64};

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::{
    actor::ApiRequest, emissary::EmissaryInfo, handle::NodeHandle, status::StatusCache,
    write::WriteError,
};

/// Largest request body the API reads.
pub const MAX_API_BODY_BYTES: usize = 1024 * 1024;
/// Most bytes of event bodies one `POST /v1/events` may make (`count` × body), checked before
/// the bodies are made.
pub const MAX_APPEND_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// What every handler shares: a handle to [`ApiShared`]. axum clones the state for every
/// extractor and middleware of every request; one reference count a clone, instead of one a
/// field (a profile of 64 clients appending showed the field-by-field clone and drop as the
/// HTTP workers' top entries).
#[derive(Clone)]
pub struct Api(Arc<ApiShared>);

impl Api {
    pub fn new(shared: ApiShared) -> Api {
        Api(Arc::new(shared))
    }
}

impl std::ops::Deref for Api {
    type Target = ApiShared;
    fn deref(&self) -> &ApiShared {
        &self.0
    }
}

/// The handlers' shared state, behind [`Api`].
#[derive(Clone)]
pub struct ApiShared {
    pub node: NodeHandle,
    pub gateway: Arc<GatewayStats>,
    /// The latency histograms of `/metrics`.
    pub telemetry: crate::telemetry::Telemetry,
    pub emissaries: Arc<Vec<EmissaryInfo>>,
    /// Bearer token that writes must carry (`None`: writes are open, loopback only).
    pub token: Option<Arc<str>>,
    /// `GET /v1/status`'s shared snapshot.
    pub status: Arc<StatusCache>,
    /// The timeline's machine widens an election on an `escalate` event (`kairos/2`).
    pub escalates: bool,
    /// The timeline orders by `final/1`: its settled prefix is the final prefix.
    pub final_order: bool,
    /// The API listens on a loopback address: requests must name a loopback host.
    pub loopback: bool,
    /// The timeline is private: with a token, reads need it too (but `/health`).
    pub private: bool,
    /// One permit per live SSE stream ([`MAX_STREAMS`]).
    pub streams: Arc<Semaphore>,
    /// One permit per running export ([`MAX_EXPORTS`]).
    pub exports: Arc<Semaphore>,
    /// The gateway's buckets per client (`super::ratelimit`).
    pub rate: Arc<super::ratelimit::GatewayRate>,
    /// The gateway's idempotency keys (`super::idempotency`).
    pub keys: Arc<tokio::sync::Mutex<super::idempotency::Keys>>,
    /// Blocks by CID from the connected peers (`GET /v1/blocks/{cid}`).
    pub bitswap: chorus_net::bitswap::Bitswap,
    /// The node's own blocks by CID (`None`: it keeps none to serve).
    pub blocks: Option<Arc<dyn chorus_net::bitswap::BlockSource>>,
    /// The newest certificates and snapshots (`GET /v1/snapshot`).
    pub certified: crate::blocks::Certified,
    /// Payloads: upload, read, placement (`GET /v1/payloads`).
    pub payloads: crate::payloads::Payloads,
}

/// Most SSE streams open at once (events and elections together). A client that never reads
/// holds its stream's buffers: a live run of 1 000 such clients raised a node from 75 to
/// 182 MB. Beyond the bound a new stream is refused (503) until one ends.
pub const MAX_STREAMS: usize = 256;

/// A fresh set of stream permits.
pub fn stream_slots() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_STREAMS))
}

/// Most exports streaming at once (`GET /v1/export`; each holds a thread and a store
/// snapshot).
pub const MAX_EXPORTS: usize = 2;

/// A fresh set of export permits.
pub fn export_slots() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_EXPORTS))
}

/// Gateway counters.
#[derive(Debug, Default)]
pub struct GatewayStats {
    pub intent_requests: AtomicU64,
    pub chat_requests: AtomicU64,
    pub elected: AtomicU64,
    pub timeouts: AtomicU64,
    /// `escalate` events this gateway wrote (an election without a valid answer by its
    /// deadline).
    pub escalations: AtomicU64,
    /// Requests refused because their client address's rate was spent (`super::ratelimit`).
    pub rate_limited: AtomicU64,
}

/// A JSON request body, or the 400 that says why it is not one.
pub fn json_body<T>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, Box<Response>> {
    body.map(|Json(b)| b)
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, e.body_text())))
}

/// A refused or failed local write, with the status its kind calls for
/// ([`crate::write::http_status`]).
pub fn write_error(e: WriteError) -> Response {
    let code = StatusCode::from_u16(crate::write::http_status(&e))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(code, e.to_string())
}

/// Every refusal's body (the OpenAI routes answer OpenAI's error object instead).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ApiError {
    /// Why, in words: the bound crossed, the field that is wrong, what to do.
    pub error: String,
}

pub fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(ApiError { error: msg.into() })).into_response()
}

impl Api {
    /// A permit for one more SSE stream, held as long as the stream lives; a 503 that says
    /// why when [`MAX_STREAMS`] are open.
    pub fn stream_slot(&self) -> Result<OwnedSemaphorePermit, Box<Response>> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            Box::new(error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{MAX_STREAMS} streams are open on this node: try again once one ends"),
            ))
        })
    }

    /// Asks the actor; a 503 when the node is shutting down.
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> ApiRequest,
    ) -> Result<T, Response> {
        self.node
            .ask(make)
            .await
            .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
    }
}
