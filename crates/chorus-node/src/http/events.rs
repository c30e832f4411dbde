//! `GET /v1/events` (a page of the total order, or with `stream=true` the live feed as SSE)
//! and `POST /v1/events` (local appends, refused whole when a peer would refuse any event).

use std::convert::Infallible;

use axum::{
    Json,
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// The CID of the first event of the page (inclusive); the timeline's start without it.
    from: Option<String>,
    /// Events per page (default 100).
    limit: Option<usize>,
    /// An SSE stream of new events instead of a page.
    #[serde(default)]
    stream: bool,
}

#[utoipa::path(get, path = "/v1/events", tag = "timeline", params(EventsQuery), responses(
    (status = 200, description = "A page of events in total order (`{\"events\": [...], \"next\": CID}`); with `stream=true` an SSE stream (`text/event-stream`) of new events, each with its CID as `id:` (resume with `Last-Event-ID`)", body = serde_json::Value),
    (status = 400, description = "`from` is no CID", body = super::shared::ApiError),
    (status = 404, description = "`from` names no event this node holds", body = super::shared::ApiError),
))]
pub async fn events(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Response {
    if q.stream {
        return event_stream(&api, &headers).await;
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

/// Events to sign and append: `{"kind": "stimulus", "text": "…"}` or `{"kind": …, "body":
/// {…}}`, `count` times (`{i}` in the text is replaced by the index).
#[derive(Deserialize, utoipa::ToSchema)]
pub struct AppendBody {
    /// The event kind (default `stimulus`).
    #[serde(default = "default_kind")]
    kind: String,
    /// The body `{"text": …}`.
    text: Option<String>,
    /// A body of its own (JSON, stored as DAG-CBOR).
    body: Option<Value>,
    /// How many events (default 1).
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

#[utoipa::path(post, path = "/v1/events", tag = "timeline", request_body = AppendBody, security(("token" = [])), responses(
    (status = 200, description = "`{\"ids\": [CID, ...]}` once the events are durable", body = serde_json::Value),
    (status = 400, description = "Not JSON, or neither/both of `text` and `body`", body = super::shared::ApiError),
    (status = 401, description = "The node has a token and the request does not carry it", body = super::shared::ApiError),
    (status = 413, description = "A size bound crossed (named in the message)", body = super::shared::ApiError),
    (status = 422, description = "A kind or body every peer would refuse; nothing stored", body = super::shared::ApiError),
    (status = 503, description = "The node's write gate is closed (its own chain not confirmed yet)", body = super::shared::ApiError),
))]
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

/// Events a resumed stream replays at most (`Last-Event-ID`); beyond, it says `lagged`.
pub const MAX_RESUME_EVENTS: usize = 256;

/// `GET /v1/events?stream=true`: every new event as one SSE `event` (JSON data) whose `id:` is
/// its CID; a lagging client gets an `event: lagged` with how many it missed (page `GET
/// /v1/events` for them). A client that reconnects with `Last-Event-ID: CID` (EventSource does
/// on its own) first gets the events after that one in the total order (at most
/// [`MAX_RESUME_EVENTS`], else `lagged`), then the live ones. Delivery is at least once: an
/// event seen before the last one but sorting after it comes again (deduplicate by CID), and
/// one that arrived late and sorts before it is not replayed, nor what a light node forgot:
/// page `GET /v1/events` for a complete view.
async fn event_stream(api: &Api, headers: &HeaderMap) -> Response {
    let slot = match api.stream_slot() {
        Ok(s) => s,
        Err(r) => return *r,
    };
    // Subscribed before the backlog is read: nothing falls between the two.
    let rx = api.node.subscribe();
    let mut first: Vec<SseEvent> = vec![];
    let mut replayed = std::collections::BTreeSet::new();
    let last_seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::parse::<EventId>);
    match last_seen {
        None => {}
        Some(Err(_)) => first.push(
            SseEvent::default()
                .event("lagged")
                .data(json!({"resume": "Last-Event-ID is not a CID"}).to_string()),
        ),
        Some(Ok(id)) => {
            let backlog = api
                .ask(|reply| ApiRequest::After {
                    id,
                    limit: MAX_RESUME_EVENTS + 1,
                    reply,
                })
                .await;
            match backlog {
                Err(r) => return r,
                Ok(None) => first.push(SseEvent::default().event("lagged").data(
                    json!({"resume": format!("{id} is not in this node's order")}).to_string(),
                )),
                Ok(Some(evs)) => {
                    for ev in evs.iter().take(MAX_RESUME_EVENTS) {
                        replayed.insert(ev.id());
                        first.push(event_of(ev));
                    }
                    if evs.len() > MAX_RESUME_EVENTS {
                        first.push(SseEvent::default().event("lagged").data(
                            json!({"resume": format!(
                                "more than {MAX_RESUME_EVENTS} events since {id}: page GET /v1/events"
                            )})
                            .to_string(),
                        ));
                    }
                }
            }
        }
    }
    let backlog = futures_util::stream::iter(first.into_iter().map(Ok::<_, Infallible>));
    let live = futures_util::stream::unfold(
        (rx, slot, replayed),
        |(mut rx, slot, mut replayed)| async move {
            loop {
                let ev = match rx.recv().await {
                    Ok(ev) => {
                        if !replayed.is_empty() && replayed.remove(&ev.id()) {
                            continue;
                        }
                        event_of(&ev)
                    }
                    Err(RecvError::Lagged(n)) => SseEvent::default()
                        .event("lagged")
                        .data(json!({"missed": n}).to_string()),
                    Err(RecvError::Closed) => return None,
                };
                return Some((Ok::<_, Infallible>(ev), (rx, slot, replayed)));
            }
        },
    );
    Sse::new(futures_util::StreamExt::chain(backlog, live))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn event_of(ev: &chorus_core::SignedEvent) -> SseEvent {
    SseEvent::default()
        .event("event")
        .id(ev.id().to_string())
        .data(crate::describe::feed_json(ev).to_string())
}
