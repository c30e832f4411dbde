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
//!   once the events are durable.

use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use chorus_core::{EventId, event::kind};
use ipld_core::ipld::Ipld;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::{
    actor::{ApiRequest, MAX_APPEND_PER_REQUEST, NodeMsg},
    describe::json_to_ipld,
};

/// Largest request body the API reads.
pub const MAX_API_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
struct Api {
    node: mpsc::Sender<NodeMsg>,
}

/// The router, talking to the node actor through `node`.
pub fn router(node: mpsc::Sender<NodeMsg>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/v1/status", get(status))
        .route("/v1/state", get(state))
        .route("/v1/events", get(events).post(append))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_API_BODY_BYTES))
        .with_state(Api { node })
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({ "error": msg.into() }))).into_response()
}

impl Api {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> ApiRequest,
    ) -> Result<T, Response> {
        let (tx, rx) = oneshot::channel();
        let unavailable = || error(StatusCode::SERVICE_UNAVAILABLE, "node is shutting down");
        self.node
            .send(NodeMsg::Api(make(tx)))
            .await
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())
    }
}

async fn status(State(api): State<Api>) -> Response {
    match api.ask(ApiRequest::Status).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
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
}

async fn events(State(api): State<Api>, Query(q): Query<EventsQuery>) -> Response {
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
    let Json(a) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if a.count == 0 || a.count > MAX_APPEND_PER_REQUEST {
        return error(
            StatusCode::BAD_REQUEST,
            format!("count must be 1..={MAX_APPEND_PER_REQUEST}"),
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
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(r) => r,
    }
}
