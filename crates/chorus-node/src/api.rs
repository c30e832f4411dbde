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
//! * the gateway's routes (`POST /v1/swarm/intent`, `POST /v1/chat/completions`,
//!   `GET /v1/swarm/elections`, `GET /metrics`): see [`crate::gateway`]
//!
//! Writes (every `POST`) need `Authorization: Bearer TOKEN` when the node has an API token
//! (`chorus node --api-token-env VAR`); the token is only ever compared, never served.

use std::sync::{Arc, atomic::Ordering};

use axum::{
    Json, Router,
    extract::{Query, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chorus_core::{EventId, event::kind};
use ipld_core::ipld::Ipld;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::{
    actor::{ApiRequest, MAX_APPEND_PER_REQUEST},
    describe::json_to_ipld,
    emissary::EmissaryInfo,
    gateway::{self, GatewayStats},
    handle::NodeHandle,
    status::{StatusCache, merge_objects},
    write::WriteError,
};

/// Largest request body the API reads.
pub const MAX_API_BODY_BYTES: usize = 1024 * 1024;
/// Most bytes of event bodies one `POST /v1/events` may make (`count` × body), checked before
/// the bodies are made.
pub const MAX_APPEND_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct Api {
    pub node: NodeHandle,
    pub gateway: Arc<GatewayStats>,
    pub emissaries: Arc<Vec<EmissaryInfo>>,
    /// Bearer token that writes must carry (`None`: writes are open, loopback only).
    pub token: Option<Arc<str>>,
    /// `GET /v1/status`'s shared snapshot.
    pub status: Arc<StatusCache>,
}

/// The router.
pub fn router(api: Api) -> Router {
    let writes = Router::new()
        .route("/v1/events", post(append))
        .route("/v1/swarm/intent", post(gateway::swarm_intent))
        .route("/v1/chat/completions", post(gateway::chat_completions))
        .route_layer(middleware::from_fn_with_state(api.clone(), authorize));
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/v1/status", get(status))
        .route("/v1/state", get(state))
        .route("/v1/events", get(events))
        .route("/v1/swarm/elections", get(gateway::elections))
        .route("/metrics", get(gateway::metrics))
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

pub fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({ "error": msg.into() }))).into_response()
}

impl Api {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> ApiRequest,
    ) -> Result<T, Response> {
        self.node
            .ask(make)
            .await
            .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
    }
}

/// The node's status plus the original swarm's fields (`coherence`, `dopamine`, `mesh_size`,
/// `active_emissaries`) and the emissaries' counters.
async fn status(State(api): State<Api>) -> Response {
    let snap = match api.status.get(&api.node).await {
        Ok(s) => s,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let live = json!({
        "mesh_size": snap.peers + 1,
        "active_emissaries": api.emissaries
            .iter()
            .filter(|e| e.stats.in_flight.load(Ordering::Relaxed) > 0)
            .map(|e| e.name.clone())
            .collect::<Vec<_>>(),
        "emissaries": api.emissaries.iter().map(EmissaryInfo::json).collect::<Vec<_>>(),
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        merge_objects(&snap.json, &live),
    )
        .into_response()
}

async fn state(State(api): State<Api>) -> Response {
    match api.ask(ApiRequest::State).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    from: Option<String>,
    limit: Option<usize>,
    #[serde(default)]
    stream: bool,
}

async fn events(State(api): State<Api>, Query(q): Query<EventsQuery>) -> Response {
    if q.stream {
        return gateway::event_stream(&api);
    }
    let from = match q.from.as_deref().map(str::parse::<EventId>) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("from: {e}")),
    };
    let limit = q.limit.unwrap_or(100);
    match api
        .ask(|reply| ApiRequest::Events { from, limit, reply })
        .await
    {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => error(StatusCode::NOT_FOUND, e),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct AppendBody {
    #[serde(default = "default_kind")]
    kind: String,
    text: Option<String>,
    body: Option<Value>,
    #[serde(default = "one")]
    count: usize,
}
fn default_kind() -> String {
    kind::STIMULUS.into()
}
fn one() -> usize {
    1
}

fn body_of(a: &AppendBody, i: usize) -> Result<Ipld, String> {
    match (&a.text, &a.body) {
        (Some(t), None) => {
            let mut m = std::collections::BTreeMap::new();
            m.insert(
                "text".to_string(),
                Ipld::String(t.replace("{i}", &i.to_string())),
            );
            Ok(Ipld::Map(m))
        }
        (None, Some(b)) => json_to_ipld(b.clone()).map_err(|e| e.to_string()),
        _ => Err("give exactly one of \"text\" or \"body\"".into()),
    }
}

async fn append(
    State(api): State<Api>,
    body: Result<Json<AppendBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let a = match json_body(body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if a.count == 0 || a.count > MAX_APPEND_PER_REQUEST {
        return error(
            StatusCode::BAD_REQUEST,
            format!("count must be 1..={MAX_APPEND_PER_REQUEST}"),
        );
    }
    // Bound count × body before making `count` bodies: the last body has the longest index in
    // place of `{i}`, so it is the largest; it is checked as the node will check each event.
    let largest = match body_of(&a, a.count - 1) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = chorus_core::event::check_content(&a.kind, &largest) {
        let index = a.count - 1;
        return write_error(WriteError::Refused {
            message: format!("not written: event {index} of the request: {e}; nothing was stored"),
            error: e,
        });
    }
    let total = chorus_core::codec::encode(&largest).len() * a.count;
    if total > MAX_APPEND_REQUEST_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "count x body is up to {total} bytes, more than {MAX_APPEND_REQUEST_BYTES} per \
                 request; send fewer or smaller events per request"
            ),
        );
    }
    let items = match (0..a.count)
        .map(|i| Ok((a.kind.clone(), body_of(&a, i)?)))
        .collect::<Result<Vec<_>, String>>()
    {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match api.ask(|reply| ApiRequest::Append { items, reply }).await {
        Ok(Ok(ids)) => Json(json!({
            "ids": ids.iter().map(|i| i.to_string()).collect::<Vec<_>>()
        }))
        .into_response(),
        Ok(Err(e)) => write_error(e),
        Err(r) => r,
    }
}
