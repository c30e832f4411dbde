//! # The node's local HTTP API (axum)
//!
//! Bound to 127.0.0.1 by default. Used by `chorus status`, `chorus append --api` and the tests.
//!
//! * `GET /health` → `ok`
//! * `GET /v1/status` → peers, heads, event count, settled frontier, `state_hash`, sync lag,
//!   rejection counters
//! * `GET /v1/state` → the replicated state (as `chorus state --json`)
//! * `GET /v1/events?from=CID&limit=N` → events in total order from `from` (inclusive)
//! * `POST /v1/events` with `{"kind": "stimulus", "text": "…"}` or `{"kind": …, "body": {…}}`,
//!   optionally `"count": n` (`{i}` in the text is replaced by the index) → `{"ids": [CID…]}`
//!   once the events are durable. An event a peer would refuse is refused here and nothing of
//!   the request is stored: 413 when a size bound is crossed (a body over 48 KiB, `count` ×
//!   body over [`MAX_APPEND_REQUEST_BYTES`]), 422 for a bad kind or body, with a message that
//!   names the bound; 503 while the node's write gate is closed.
//! * `GET /v1/events?stream=true` → an SSE stream of new events
//! * `POST /v1/members` with `{"op": "add"|"remove", "key": HEX, "role": "writer"|"anchor"}` →
//!   `{"id": CID}`: a membership change through the running node (the admin's) ([`members`])
//! * `POST /v1/swarm/intent`, `GET /v1/swarm/elections`: the swarm API ([`swarm`])
//! * `POST /v1/chat/completions`: OpenAI-compatible ([`openai`])
//! * `GET /metrics`: Prometheus text ([`metrics`])
//!
//! One module per group of routes, each using only [`shared`] (and `openai` the swarm's
//! election wait); this module wires them into the router and holds the write token check.
//!
//! Writes (every `POST`) need `Authorization: Bearer TOKEN` when the node has an API token
//! (`chorus node --api-token-env VAR`); the token is only ever compared, never served.

mod events;
mod members;
mod metrics;
mod node;
mod openai;
mod shared;
mod swarm;

use axum::{
    Router,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};

pub use shared::{
    Api, GatewayStats, MAX_API_BODY_BYTES, MAX_APPEND_REQUEST_BYTES, error, json_body, write_error,
};
pub use swarm::{
    DEFAULT_INTENT_TIMEOUT_MS, MAX_BACKSTORY_BYTES, MAX_CONTEXT_BYTES, MAX_INTENT_TIMEOUT_MS,
    MAX_NAME_BYTES,
};

/// The router.
pub fn router(api: Api) -> Router {
    let writes = Router::new()
        .route("/v1/events", post(events::append))
        .route("/v1/members", post(members::change))
        .route("/v1/swarm/intent", post(swarm::swarm_intent))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route_layer(middleware::from_fn_with_state(api.clone(), authorize));
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/v1/status", get(node::status))
        .route("/v1/state", get(node::state))
        .route("/v1/finality/certificate", get(node::certificate))
        .route("/v1/events", get(events::events))
        .route("/v1/swarm/elections", get(swarm::elections))
        .route("/metrics", get(metrics::metrics))
        .merge(writes)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_API_BODY_BYTES))
        .with_state(api)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(api): State<Api>, req: Request, next: Next) -> Response {
    if let Some(token) = &api.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            return error(
                StatusCode::UNAUTHORIZED,
                "writes need an Authorization: Bearer token",
            );
        }
    }
    next.run(req).await
}
