//! The live dashboard every node serves at `/`: one HTML page, its script and style, and uPlot
//! (a maintained plotting library, MIT, vendored in `assets/dashboard/` with its licence) —
//! all compiled into the binary, nothing to build or fetch. The page is read-only: it opens
//! `GET /v1/dashboard/stream` (SSE) and draws what each `tick` brings.
//!
//! A tick, every [`DASHBOARD_TICK`]: `{"at": unix ms, "status": GET /v1/status, "state": GET
//! /v1/state, "elections": [... newest last, each with "answers"]}`. `answers` are the intents
//! this stream saw answer the stimulus since it opened (emissary, model, model_ms, failure):
//! the latencies per election (the replicated state keeps counts, not timings). At most
//! [`ANSWERED_STIMULI`] stimuli × [`ANSWERS_PER_STIMULUS`] are kept per stream.
//!
//! The page and its assets are as open as `/health` (they hold no data); the stream is a read
//! like `/v1/status`. On a private timeline with a token the stream needs the token, which a
//! browser's EventSource cannot send: the page then says it cannot connect (use the CLI or
//! the API there). The page sends a Content-Security-Policy that allows only this origin's
//! scripts and connections.

use std::{collections::BTreeMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{Path, State},
    http::{StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use chorus_core::{EventId, SignedEvent};
use ipld_core::ipld::Ipld;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::shared::{Api, error};
use crate::actor::ApiRequest;

/// How often the dashboard's stream sends a tick.
pub const DASHBOARD_TICK: Duration = Duration::from_secs(1);
/// Stimuli whose answers one stream remembers (the newest).
pub const ANSWERED_STIMULI: usize = 64;
/// Answers remembered per stimulus.
pub const ANSWERS_PER_STIMULUS: usize = 32;
/// Characters kept of an answer's emissary, model and failure code.
pub const ANSWER_TEXT_CHARS: usize = 64;
/// Elections a tick carries (the newest).
pub const TICK_ELECTIONS: usize = 20;

const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/dashboard/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/dashboard/dashboard.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/dashboard/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/dashboard/uPlot.min.css"),
    ),
];

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

/// `GET /`: the page.
#[utoipa::path(get, path = "/", tag = "operators", responses(
    (status = 200, description = "The live dashboard (HTML)", body = String, content_type = "text/html"),
))]
pub async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

/// `GET /assets/{name}`: the page's script, style and uPlot.
#[utoipa::path(get, path = "/assets/{name}", tag = "operators",
    params(("name" = String, Path, description = "dashboard.js, dashboard.css, uPlot.iife.min.js or uPlot.min.css")),
    responses(
    (status = 200, description = "The dashboard's script, style or plotting library", body = String),
    (status = 404, description = "No such asset", body = super::shared::ApiError),
))]
pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, mime, body)) => (
            [
                (header::CONTENT_TYPE, *mime),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no asset {name:?}")),
    }
}

/// One intent as the dashboard shows it under its election.
fn answer_of(ev: &SignedEvent) -> Option<(EventId, Value)> {
    let (re, m) = crate::telemetry::intent_of(ev)?;
    // Cut: these come from any member's events, and a stream keeps many of them.
    let text = |k: &str| match m.get(k) {
        Some(Ipld::String(s)) => Some(s.chars().take(ANSWER_TEXT_CHARS).collect::<String>()),
        _ => None,
    };
    let model_ms = match m.get("model_ms") {
        Some(Ipld::Integer(i)) => u64::try_from(*i).ok(),
        _ => None,
    };
    // A failed answer carries its failure's code (and error) in place of a text.
    let failure = text("code");
    Some((
        re,
        json!({
            "cid": ev.id().to_string(), "author": ev.author.to_string(),
            "emissary": text("emissary"), "model": text("model"),
            "model_ms": model_ms, "failure": failure,
        }),
    ))
}

/// What one stream remembers between ticks.
struct Watch {
    api: Api,
    events: tokio::sync::broadcast::Receiver<Arc<SignedEvent>>,
    answers: BTreeMap<EventId, Vec<Value>>,
    /// Stimuli in the order their first answer came (to forget the oldest).
    seen: std::collections::VecDeque<EventId>,
    ticks: tokio::time::Interval,
}

impl Watch {
    fn remember(&mut self, re: EventId, answer: Value) {
        if !self.answers.contains_key(&re) {
            if self.seen.len() == ANSWERED_STIMULI
                && let Some(old) = self.seen.pop_front()
            {
                self.answers.remove(&old);
            }
            self.seen.push_back(re);
        }
        let list = self.answers.entry(re).or_default();
        if list.len() < ANSWERS_PER_STIMULUS {
            list.push(answer);
        }
    }

    /// The tick's JSON text. The status comes as the shared snapshot's serialized text (what
    /// `GET /v1/status` sends) and goes in as it is, not parsed and serialized again.
    async fn tick(&self) -> String {
        let status = super::node::status_json(&self.api)
            .await
            .unwrap_or_else(|_| "null".into());
        let state = self.api.ask(ApiRequest::State).await.unwrap_or(Value::Null);
        let mut elections = vec![];
        if let Ok(list) = self.api.node.elections().await {
            let skip = list.elections.len().saturating_sub(TICK_ELECTIONS);
            for e in list.elections.iter().skip(skip) {
                let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
                v["answers"] = json!(self.answers.get(&e.stimulus).cloned().unwrap_or_default());
                elections.push(v);
            }
        }
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        format!(
            "{{\"at\":{at},\"status\":{status},\"state\":{state},\"elections\":{}}}",
            Value::Array(elections)
        )
    }
}

/// `GET /v1/dashboard/stream`: a `tick` every [`DASHBOARD_TICK`] (see the module docs).
#[utoipa::path(get, path = "/v1/dashboard/stream", tag = "operators", responses(
    (status = 200, description = "SSE: a `tick` a second with status, state and elections with their answers' latencies", body = String, content_type = "text/event-stream"),
    (status = 503, description = "Too many streams are open", body = super::shared::ApiError),
))]
pub async fn stream(State(api): State<Api>) -> Response {
    let slot = match api.stream_slot() {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let mut ticks = tokio::time::interval(DASHBOARD_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let watch = Watch {
        events: api.node.subscribe(),
        api,
        answers: BTreeMap::new(),
        seen: Default::default(),
        ticks,
    };
    let stream = futures_util::stream::unfold((watch, slot), |(mut w, slot)| async move {
        loop {
            tokio::select! {
                ev = w.events.recv() => match ev {
                    Ok(ev) => {
                        if let Some((re, a)) = answer_of(&ev) {
                            w.remember(re, a);
                        }
                    }
                    // Missed answers only leave latencies out; the counts come from the state.
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                },
                _ = w.ticks.tick() => {
                    let data = w.tick().await;
                    let ev = SseEvent::default().event("tick").data(data);
                    return Some((Ok::<_, Infallible>(ev), (w, slot)));
                }
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
