//! `GET /v1/events` (a page of the total order, or with `stream=true` the live feed as SSE)
//! and `POST /v1/events` (local appends, refused whole when a peer would refuse any event).

use std::convert::Infallible;

use axum::{
    Json,
    extract::{Query, State},
    http::StatusCode,
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use chorus_core::{EventId, event::kind};
use ipld_core::ipld::Ipld;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::shared::{Api, MAX_APPEND_REQUEST_BYTES, error, json_body, write_error};
use crate::{
    actor::{ApiRequest, MAX_APPEND_PER_REQUEST},
    describe::json_to_ipld,
    write::WriteError,
};

#[derive(Deserialize)]
pub struct EventsQuery {
    from: Option<String>,
    limit: Option<usize>,
    #[serde(default)]
    stream: bool,
}

pub async fn events(State(api): State<Api>, Query(q): Query<EventsQuery>) -> Response {
    if q.stream {
        return event_stream(&api);
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
pub struct AppendBody {
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

pub async fn append(
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

/// `GET /v1/events?stream=true`: every new event as one SSE `event` (JSON data); a lagging
/// client gets an `event: lagged` with how many it missed (page `GET /v1/events` for them).
fn event_stream(api: &Api) -> Response {
    let slot = match api.stream_slot() {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let rx = api.node.subscribe();
    let stream = futures_util::stream::unfold((rx, slot), |(mut rx, slot)| async move {
        let ev = match rx.recv().await {
            Ok(ev) => SseEvent::default()
                .event("event")
                .data(crate::describe::feed_json(&ev).to_string()),
            Err(RecvError::Lagged(n)) => SseEvent::default()
                .event("lagged")
                .data(json!({"missed": n}).to_string()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(ev), (rx, slot)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
