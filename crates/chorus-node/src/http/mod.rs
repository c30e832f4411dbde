//! # The node's local HTTP API (axum)
//!
//! Bound to 127.0.0.1 by default. Used by `chorus status`, `chorus append --api` and the tests.
//!
//! * `GET /` → the live dashboard (and `/assets/…`), fed by `GET /v1/dashboard/stream`
//!   ([`dashboard`])
//! * `GET /health` → `ok` while the node's actor runs, else 503
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
//! * `GET /v1/export?format=car|jsonl` → the whole timeline as a streamed archive from one
//!   store snapshot, with the state hash at its heads ([`export`])
//! * `POST /v1/members` with `{"op": "add"|"remove", "key": HEX, "role": "writer"|"anchor"}` →
//!   `{"id": CID}`: a membership change through the running node (the admin's) ([`members`])
//! * `POST /v1/swarm/intent`, `GET /v1/swarm/elections`: the swarm API ([`swarm`])
//! * `GET /v1/swarm/elections/{stimulus}`: one election; `GET /v1/models`: the model list an
//!   OpenAI client asks for
//! * `POST /v1/chat/completions`: OpenAI-compatible ([`openai`]); both take an
//!   `Idempotency-Key` ([`idempotency`]): a retried request never appends a second stimulus
//! * `GET /metrics`: OpenMetrics text for Prometheus ([`metrics`]; also alone on
//!   `--metrics-listen`)
//!
//! One module per group of routes, each using only [`shared`] (and `openai` the swarm's
//! election wait); this module wires them into the router and holds the write token check.
//!
//! Writes (every `POST`) need `Authorization: Bearer TOKEN` when the node has an API token
//! (`chorus node --api-token-env VAR`); the token is only ever compared, never served.

pub mod cors;
mod dashboard;
mod events;
mod export;
mod idempotency;
mod members;
pub mod metrics;
mod node;
mod openai;
pub mod ratelimit;
pub mod serve;
mod shared;
mod swarm;

use axum::{
    Router,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};

pub use shared::{
    Api, GatewayStats, MAX_API_BODY_BYTES, MAX_APPEND_REQUEST_BYTES, MAX_EXPORTS, MAX_STREAMS,
    error, export_slots, json_body, stream_slots, write_error,
};
pub use swarm::{
    DEFAULT_INTENT_TIMEOUT_MS, MAX_BACKSTORY_BYTES, MAX_CONTEXT_BYTES, MAX_INTENT_TIMEOUT_MS,
    MAX_NAME_BYTES,
};

/// The router.
pub fn router(api: Api) -> Router {
    // The rate limit refuses before the body is read; the token check before both.
    let gateway = Router::new()
        .route("/v1/swarm/intent", post(swarm::swarm_intent))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route_layer(middleware::from_fn(body_within_deadline))
        .route_layer(middleware::from_fn_with_state(
            api.clone(),
            ratelimit::limit,
        ));
    let writes = Router::new()
        .route("/v1/events", post(events::append))
        .route("/v1/members", post(members::change))
        .route_layer(middleware::from_fn(body_within_deadline))
        .merge(gateway)
        // A whole-store read that holds a thread and a snapshot: guarded like a write.
        .route("/v1/export", get(export::export))
        .route_layer(middleware::from_fn_with_state(api.clone(), authorize));
    let reads = Router::new()
        .route("/v1/status", get(node::status))
        .route("/v1/state", get(node::state))
        .route("/v1/finality/certificate", get(node::certificate))
        .route("/v1/events", get(events::events))
        .route("/v1/dashboard/stream", get(dashboard::stream))
        .route("/v1/swarm/elections", get(swarm::elections))
        .route("/v1/swarm/elections/{stimulus}", get(swarm::one_election))
        .route("/v1/models", get(openai::models))
        .route("/metrics", get(metrics::metrics))
        .route_layer(middleware::from_fn_with_state(api.clone(), authorize_reads));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/", get(dashboard::index))
        .route("/assets/{name}", get(dashboard::asset))
        .merge(reads)
        .merge(writes)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_API_BODY_BYTES))
        .layer(middleware::from_fn_with_state(api.clone(), loopback_host))
        .layer(middleware::from_fn(openai::error_shape))
        .with_state(api)
}

/// How long a write's request body may take to arrive whole (after its headers, which
/// [`serve::HEADER_TIMEOUT`] bounds). A client that trickles a body a byte at a time would
/// otherwise hold its connection, and one of [`serve::MAX_CONNECTIONS`], for as long as it likes.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads a write's body whole within [`BODY_TIMEOUT`] and [`MAX_API_BODY_BYTES`] before the
/// handler runs (408 or 413 otherwise, saying which bound). Runs after the token check, so an
/// unauthorised client is refused before anything of its body is read.
async fn body_within_deadline(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, MAX_API_BODY_BYTES);
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, bytes.into())).await,
        Ok(Err(e)) => {
            let too_long = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_long {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is over {MAX_API_BODY_BYTES} bytes"),
                )
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body: {e}"),
                )
            }
        }
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive whole within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// `GET /health`: `ok` while the node's actor runs, 503 once it has stopped (the API would
/// otherwise answer `ok` for a node that can no longer take, serve or sync anything).
async fn health(State(api): State<Api>) -> Response {
    if api.node.is_alive() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node's actor has stopped: this process serves nothing; restart it",
        )
    }
}

/// Events a node may be behind its most advanced peer and still be ready: under write load a
/// summary often overtakes gossip and opens a short catch-up stream, which is no reason to take
/// the node out of a load balancer.
pub const READY_LAG_EVENTS: u64 = 1_024;

/// `GET /ready`: 200 once the node can do its work — its actor runs, its writes are open (its
/// own chain confirmed by its peers, docs/design/sync.md) and it is not catching up more than
/// [`READY_LAG_EVENTS`] behind — and 503 with every reason it is not, otherwise. For a readiness probe or a load balancer; `/health`
/// is the liveness one. Open like `/health` (it says nothing of the timeline's contents).
async fn ready(State(api): State<Api>) -> Response {
    let snap = match api.status.get(&api.node).await {
        Ok(s) => s,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let st = &snap.status;
    let mut not_ready = vec![];
    if !st.writes_open {
        not_ready.push(
            "writes closed: no peer has confirmed this node's own chain yet (a node that \
             restarted empty waits for its peers)"
                .to_string(),
        );
    }
    if st.sync.catching_up && st.sync.lag_events > READY_LAG_EVENTS {
        not_ready.push(format!(
            "catching up: {} events behind its most advanced peer",
            st.sync.lag_events
        ));
    }
    if not_ready.is_empty() {
        let body = serde_json::json!({ "ready": true, "events": st.events });
        (StatusCode::OK, axum::Json(body)).into_response()
    } else {
        let body = serde_json::json!({ "ready": false, "why": not_ready });
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a `Host` header names a loopback address (`localhost`, `127.0.0.0/8`, `::1`), with
/// or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// On a loopback API, requests must name a loopback host: a web page on another site whose
/// name an attacker points at 127.0.0.1 (DNS rebinding) sends its own name as `Host` and is
/// refused, so no page a user visits can read or write the node. (An API on another address
/// is reached by name or address as its operator chose; it is guarded by its token.)
async fn loopback_host(State(api): State<Api>, req: Request, next: Next) -> Response {
    if api.loopback {
        let host = req
            .headers()
            .get(header::HOST)
            .map(|v| v.to_str().unwrap_or("(not text)"));
        if let Some(h) = host
            && !is_loopback_host(h)
        {
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "Host {h:?} is not a loopback name: this API listens on loopback only \
                     (a page on another site may not reach it by a rebound DNS name)"
                ),
            );
        }
    }
    next.run(req).await
}

/// Whether the request carries the API's token (true when there is none).
fn carries_token(api: &Api, req: &Request) -> bool {
    let Some(token) = &api.token else {
        return true;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    given.is_some_and(|g| same(g.as_bytes(), token.as_bytes()))
}

async fn authorize(State(api): State<Api>, req: Request, next: Next) -> Response {
    if !carries_token(&api, &req) {
        return error(
            StatusCode::UNAUTHORIZED,
            "writes need an Authorization: Bearer token",
        );
    }
    next.run(req).await
}

/// Reads of a public timeline are open (any peer may replicate the same events). A private
/// timeline's reads need the token, when the node has one: its events are for members only.
async fn authorize_reads(State(api): State<Api>, req: Request, next: Next) -> Response {
    if api.private && !carries_token(&api, &req) {
        return error(
            StatusCode::UNAUTHORIZED,
            "this timeline is private: reads need an Authorization: Bearer token",
        );
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{feed::Feed, handle::NodeHandle};

    fn api(node: NodeHandle) -> Api {
        Api {
            node,
            gateway: Default::default(),
            telemetry: Default::default(),
            emissaries: Default::default(),
            token: None,
            status: Default::default(),
            escalates: false,
            final_order: false,
            loopback: true,
            private: false,
            streams: stream_slots(),
            exports: export_slots(),
            keys: Default::default(),
            rate: Default::default(),
        }
    }

    #[test]
    fn loopback_hosts_are_told_apart_from_any_other_name() {
        for h in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.41:33415",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:80",
            "[2001:db8::1]:80",
            "",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[tokio::test]
    async fn health_is_ok_while_the_actor_runs_and_503_once_it_stopped() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let a = api(NodeHandle::new(tx, Feed::default()));
        assert_eq!(health(State(a.clone())).await.status(), StatusCode::OK);
        drop(rx); // the actor thread is gone
        assert_eq!(
            health(State(a)).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    /// A private timeline's reads need the token (a public one's do not); `/health` never.
    #[tokio::test]
    async fn a_private_timelines_reads_need_the_token() {
        use tower::ServiceExt;
        let get = |path: &str, token: Option<&str>| {
            let mut rq = axum::http::Request::get(path).header(header::HOST, "127.0.0.1");
            if let Some(t) = token {
                rq = rq.header(header::AUTHORIZATION, format!("Bearer {t}"));
            }
            rq.body(axum::body::Body::empty()).unwrap()
        };
        // What answers past the gate does not matter here (the actor is gone: 503, or a stream
        // that waits); only whether the gate let the request through.
        let status = |app: Router, rq: Request| async move {
            match tokio::time::timeout(std::time::Duration::from_secs(2), app.oneshot(rq)).await {
                Ok(r) => r.unwrap().status(),
                Err(_) => StatusCode::OK,
            }
        };
        for private in [true, false] {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            drop(rx);
            let mut a = api(NodeHandle::new(tx, Feed::default()));
            a.token = Some("s3cret".into());
            a.private = private;
            let app = router(a);
            for path in ["/v1/status", "/v1/state", "/v1/events", "/metrics"] {
                let none = status(app.clone(), get(path, None)).await;
                assert_eq!(
                    none == StatusCode::UNAUTHORIZED,
                    private,
                    "{path} (private {private}): {none}"
                );
                let wrong = status(app.clone(), get(path, Some("guess"))).await;
                assert_eq!(
                    wrong == StatusCode::UNAUTHORIZED,
                    private,
                    "{path}: {wrong}"
                );
                let right = status(app.clone(), get(path, Some("s3cret"))).await;
                assert_ne!(right, StatusCode::UNAUTHORIZED, "{path}");
            }
            let health = status(app.clone(), get("/health", None)).await;
            assert_ne!(health, StatusCode::UNAUTHORIZED);
        }
    }
}
