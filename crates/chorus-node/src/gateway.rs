//! # The gateway: the original swarm API and "ask the chorus" over Chorus
//!
//! * `POST /v1/swarm/intent` — the original request (`npc_name`, `role`, `backstory`,
//!   `context`) becomes a `stimulus` event; the reply comes as soon as the replicated election
//!   has a winner (the first valid intent in the total order), never waiting for the slowest
//!   emissary: `{commands, winner, stimulus, settled, emissary, n, intents, elapsed_ms}`. No
//!   winner within the timeout → 504 with what is known.
//! * `POST /v1/chat/completions` — OpenAI-compatible (also `"stream": true`, SSE chunks and
//!   `data: [DONE]`): the conversation is the stimulus's context, the elected answer the
//!   assistant message.
//! * `GET /v1/swarm/elections` — every election the state tracks, with winners and
//!   settledness (what tests compare across replicas).
//! * `GET /metrics` — Prometheus text.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use axum::{
    Json,
    extract::State,
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

use crate::{
    api::{Api, error, json_body},
    handle::NodeGone,
    write::WriteError,
};

/// How long a gateway request waits for a winner unless it asks for less.
pub const DEFAULT_INTENT_TIMEOUT_MS: u64 = 60_000;
/// The longest wait a request may ask for.
pub const MAX_INTENT_TIMEOUT_MS: u64 = 600_000;
/// Bytes of UTF-8 the gateway takes in `npc_name` and in `role`. The field bounds are in bytes and derived from the event bounds: the
/// largest request the gateway takes always fits one event, so a request is either refused
/// here with a 413 that names the field, or stored.
pub const MAX_NAME_BYTES: usize = 256;
/// Bytes of `backstory` (for `/v1/chat/completions`: the system messages, joined).
pub const MAX_BACKSTORY_BYTES: usize = 8 * 1024;
/// Bytes of `context` (for `/v1/chat/completions`: the other messages as `role: text` lines).
/// The stimulus stores it twice: as `context`, and as `text`, which the engine integrates.
pub const MAX_CONTEXT_BYTES: usize = 16 * 1024;
/// DAG-CBOR around the five strings of a stimulus body: the map header, the five keys and
/// five string headers (3 bytes each below 64 KiB).
const STIMULUS_MAP_OVERHEAD: usize = 64;
const _: () = assert!(
    2 * MAX_NAME_BYTES + MAX_BACKSTORY_BYTES + 2 * MAX_CONTEXT_BYTES + STIMULUS_MAP_OVERHEAD
        <= chorus_core::limits::MAX_BODY_BYTES
);
/// Re-check the election at least this often while waiting (in case the feed lagged).
const RECHECK: Duration = Duration::from_millis(250);
/// Characters per streamed content chunk.
const STREAM_CHUNK_CHARS: usize = 16;

/// Gateway counters.
#[derive(Debug, Default)]
pub struct GatewayStats {
    pub intent_requests: AtomicU64,
    pub chat_requests: AtomicU64,
    pub elected: AtomicU64,
    pub timeouts: AtomicU64,
    pub wait_ms_total: AtomicU64,
}

#[derive(Debug, Deserialize)]
pub struct IntentRequest {
    #[serde(default = "unknown_npc")]
    npc_name: String,
    #[serde(default = "cryptic")]
    role: String,
    #[serde(default = "exists")]
    backstory: String,
    #[serde(default)]
    context: String,
    timeout_ms: Option<u64>,
}
fn unknown_npc() -> String {
    "Unknown NPC".into()
}
fn cryptic() -> String {
    "Cryptic Being".into()
}
fn exists() -> String {
    "You exist.".into()
}

/// `field` within `max` bytes, or the 413 that says which field and which bound.
fn bounded(field: &str, value: &str, max: usize) -> Result<(), Box<Response>> {
    if value.len() > max {
        return Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{field} is {} bytes of UTF-8, more than the gateway's {max}-byte bound (a \
                 stimulus must fit one event)",
                value.len()
            ),
        )));
    }
    Ok(())
}

/// The stimulus event's body, or a 413 when a field is over its bound.
fn stimulus_body(
    npc: &str,
    role: &str,
    backstory: &str,
    context: &str,
) -> Result<Ipld, Box<Response>> {
    bounded("npc_name", npc, MAX_NAME_BYTES)?;
    bounded("role", role, MAX_NAME_BYTES)?;
    bounded("backstory", backstory, MAX_BACKSTORY_BYTES)?;
    bounded("context", context, MAX_CONTEXT_BYTES)?;
    let mut m = BTreeMap::new();
    m.insert("npc_name".to_string(), Ipld::String(npc.into()));
    m.insert("role".to_string(), Ipld::String(role.into()));
    m.insert("backstory".to_string(), Ipld::String(backstory.into()));
    m.insert("context".to_string(), Ipld::String(context.into()));
    // The engine integrates `text`: the context is what the swarm hears.
    m.insert("text".to_string(), Ipld::String(context.into()));
    Ok(Ipld::Map(m))
}

/// Why no election result came back.
enum Wait {
    Gone(NodeGone),
    Refused(WriteError),
    Timeout { stimulus: EventId, last: Value },
}

impl Wait {
    fn response(self, stats: &GatewayStats) -> Response {
        match self {
            Wait::Gone(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            Wait::Refused(e) => crate::api::write_error(e),
            Wait::Timeout { stimulus, last } => {
                stats.timeouts.fetch_add(1, Ordering::Relaxed);
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    Json(json!({
                        "error": "no emissary produced a valid intent in time",
                        "stimulus": stimulus.to_string(),
                        "election": last,
                    })),
                )
                    .into_response()
            }
        }
    }
}

/// Appends the stimulus and waits for its election to have a winner.
async fn elect(api: &Api, body: Ipld, timeout: Duration) -> Result<(Value, u64), Wait> {
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    // Subscribe before appending: an intent can come back faster than the append's reply.
    let mut feed = api.node.subscribe();
    let stimulus = match api
        .node
        .append(vec![(kind::STIMULUS.into(), body)])
        .await
        .map_err(Wait::Gone)?
    {
        Ok(ids) => ids[0],
        Err(e) => return Err(Wait::Refused(e)),
    };
    let mut last = Value::Null;
    loop {
        if let Some(e) = api.node.election(stimulus).await.map_err(Wait::Gone)? {
            if e["winner"].is_string() {
                let ms = t0.elapsed().as_millis() as u64;
                api.gateway.elected.fetch_add(1, Ordering::Relaxed);
                api.gateway.wait_ms_total.fetch_add(ms, Ordering::Relaxed);
                return Ok((e, ms));
            }
            last = e;
        }
        // Wake on the next intent (any: cheap to re-check), the re-check period, or the end.
        let wake = tokio::time::Instant::now() + RECHECK;
        loop {
            tokio::select! {
                r = feed.recv() => match r {
                    Ok(ev) if ev.kind == kind::INTENT => break,
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return Err(Wait::Gone(NodeGone)),
                },
                _ = tokio::time::sleep_until(wake.min(deadline)) => break,
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Wait::Timeout { stimulus, last });
        }
    }
}

fn timeout_of(ms: Option<u64>) -> Duration {
    Duration::from_millis(
        ms.unwrap_or(DEFAULT_INTENT_TIMEOUT_MS)
            .clamp(1, MAX_INTENT_TIMEOUT_MS),
    )
}

pub async fn swarm_intent(
    State(api): State<Api>,
    body: Result<Json<IntentRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let r = match json_body(body) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    api.gateway.intent_requests.fetch_add(1, Ordering::Relaxed);
    let body = match stimulus_body(&r.npc_name, &r.role, &r.backstory, &r.context) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    match elect(&api, body, timeout_of(r.timeout_ms)).await {
        Ok((e, ms)) => Json(json!({
            "commands": e["commands"],
            "winner": e["winner"],
            "stimulus": e["stimulus"],
            "settled": e["settled"],
            "emissary": e["emissary"],
            "model": e["model"],
            "n": e["n"],
            "intents": e["intents"],
            "elapsed_ms": ms,
        }))
        .into_response(),
        Err(w) => w.response(&api.gateway),
    }
}

pub async fn elections(State(api): State<Api>) -> Response {
    match api.node.ask(crate::actor::ApiRequest::Elections).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
pub struct ChatBody {
    messages: Vec<ChatMsg>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    model: Option<String>,
    /// Chorus extension: how long to wait for the election.
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ChatMsg {
    role: String,
    #[serde(default)]
    content: Value,
}

impl ChatMsg {
    /// `content` as text: a string, or the text parts of a content array.
    fn text(&self) -> String {
        match &self.content {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        }
    }
}

pub async fn chat_completions(
    State(api): State<Api>,
    body: Result<Json<ChatBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let r = match json_body(body) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    if r.messages.is_empty() {
        return error(StatusCode::BAD_REQUEST, "messages must not be empty");
    }
    api.gateway.chat_requests.fetch_add(1, Ordering::Relaxed);
    let system: Vec<String> = r
        .messages
        .iter()
        .filter(|m| m.role == "system")
        .map(ChatMsg::text)
        .collect();
    let context: Vec<String> = r
        .messages
        .iter()
        .filter(|m| m.role != "system")
        .map(|m| format!("{}: {}", m.role, m.text()))
        .collect();
    let backstory = if system.is_empty() {
        exists()
    } else {
        system.join("\n")
    };
    let conversation = context.join("\n");
    let body = match bounded("the system messages", &backstory, MAX_BACKSTORY_BYTES)
        .and_then(|_| bounded("the conversation", &conversation, MAX_CONTEXT_BYTES))
        .and_then(|_| {
            stimulus_body(
                "Chorus",
                "The voice of the swarm",
                &backstory,
                &conversation,
            )
        }) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let model = r.model.unwrap_or_else(|| "chorus".into());
    let (e, ms) = match elect(&api, body, timeout_of(r.timeout_ms)).await {
        Ok(x) => x,
        Err(w) => return w.response(&api.gateway),
    };
    let content = e["text"].as_str().unwrap_or_default().to_string();
    let id = format!(
        "chatcmpl-{}",
        e["stimulus"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .rev()
            .take(16)
            .collect::<String>()
    );
    let chorus = json!({
        "stimulus": e["stimulus"], "winner": e["winner"], "emissary": e["emissary"],
        "settled": e["settled"], "commands": e["commands"], "elapsed_ms": ms,
    });
    if !r.stream {
        return Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }],
            "usage": {
                "prompt_tokens": context.iter().map(|c| c.split_whitespace().count()).sum::<usize>(),
                "completion_tokens": content.split_whitespace().count(),
                "total_tokens": 0,
            },
            "chorus": chorus,
        }))
        .into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    let chars: Vec<char> = content.chars().collect();
    for piece in chars.chunks(STREAM_CHUNK_CHARS) {
        events.push(chunk(
            json!({"content": piece.iter().collect::<String>()}),
            Value::Null,
        ));
    }
    let mut last = chunk(json!({}), json!("stop"));
    last["chorus"] = chorus;
    events.push(last);
    let stream = futures_util::stream::iter(
        events
            .into_iter()
            .map(|v| Ok::<_, Infallible>(SseEvent::default().data(v.to_string())))
            .chain(std::iter::once(Ok(SseEvent::default().data("[DONE]")))),
    );
    Sse::new(stream).into_response()
}

/// `GET /v1/events?stream=true`: every new event as one SSE `event` (JSON data); a lagging
/// client gets an `event: lagged` with how many it missed (page `GET /v1/events` for them).
pub fn event_stream(api: &Api) -> Response {
    let rx = api.node.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let ev = match rx.recv().await {
            Ok(ev) => SseEvent::default()
                .event("event")
                .data(crate::describe::feed_json(&ev).to_string()),
            Err(RecvError::Lagged(n)) => SseEvent::default()
                .event("lagged")
                .data(json!({"missed": n}).to_string()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(ev), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Prometheus text exposition of the node's status and the gateway and emissary counters.
pub async fn metrics(State(api): State<Api>) -> Response {
    let st = match api.node.status().await {
        Ok(s) => s,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        out.push_str(&format!(
            "# HELP chorus_{name} {help}\n# TYPE chorus_{name} {kind}\n"
        ));
        for (labels, v) in samples {
            out.push_str(&format!("chorus_{name}{labels} {v}\n"));
        }
    };
    let n = |v: &Value| v.as_f64().unwrap_or(0.0);
    let one = |v: f64| vec![(String::new(), v)];
    metric(
        "events",
        "gauge",
        "Events in the timeline.",
        one(n(&st["events"])),
    );
    metric(
        "pending",
        "gauge",
        "Events waiting for their parents.",
        one(n(&st["pending"])),
    );
    metric(
        "peers",
        "gauge",
        "Connected peers.",
        one(st["peers"].as_array().map_or(0, Vec::len) as f64),
    );
    metric(
        "settled",
        "gauge",
        "Events behind the settled frontier.",
        one(n(&st["settled"])),
    );
    metric(
        "appended_total",
        "counter",
        "Events signed by this node.",
        one(n(&st["appended"])),
    );
    metric(
        "gossip_received_total",
        "counter",
        "Gossip messages received.",
        one(n(&st["received"]["gossip"])),
    );
    metric(
        "sync_blocks_received_total",
        "counter",
        "Blocks received by sync.",
        one(n(&st["received"]["sync_blocks"])),
    );
    metric(
        "sync_lag_events",
        "gauge",
        "Events the most advanced peer has beyond ours.",
        one(n(&st["sync"]["lag_events"])),
    );
    metric(
        "requests_served_total",
        "counter",
        "Sync requests served.",
        one(n(&st["sync"]["requests_served"])),
    );
    // A `{code: count}` object of the status as one labelled series per code.
    let by_code = |counts: &Value| -> Vec<(String, f64)> {
        counts
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (format!("{{code=\"{k}\"}}"), n(v)))
                    .collect()
            })
            .unwrap_or_default()
    };
    metric(
        "rejected_total",
        "counter",
        "Invalid inputs rejected, by reason.",
        by_code(&st["received"]["rejected_by_code"]),
    );
    metric(
        "refused_writes_total",
        "counter",
        "Local writes refused because every peer would refuse them, by reason.",
        by_code(&st["refused_writes"]),
    );
    metric(
        "coherence",
        "gauge",
        "KAIROS coherence |T_tau|^2.",
        one(n(&st["coherence"])),
    );
    metric(
        "dopamine",
        "gauge",
        "KAIROS dopamine.",
        one(n(&st["dopamine"])),
    );
    let g = &api.gateway;
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    metric(
        "gateway_intent_requests_total",
        "counter",
        "POST /v1/swarm/intent requests.",
        one(l(&g.intent_requests)),
    );
    metric(
        "gateway_chat_requests_total",
        "counter",
        "POST /v1/chat/completions requests.",
        one(l(&g.chat_requests)),
    );
    metric(
        "gateway_elected_total",
        "counter",
        "Gateway requests answered with a winner.",
        one(l(&g.elected)),
    );
    metric(
        "gateway_timeouts_total",
        "counter",
        "Gateway requests without a winner in time.",
        one(l(&g.timeouts)),
    );
    metric(
        "gateway_wait_ms_total",
        "counter",
        "Milliseconds gateway requests waited for winners.",
        one(l(&g.wait_ms_total)),
    );
    let per = |f: fn(&crate::emissary::EmissaryStats) -> &AtomicU64| {
        api.emissaries
            .iter()
            .map(|e| {
                (
                    format!("{{emissary=\"{}\"}}", e.name.replace('"', "'")),
                    l(f(&e.stats)),
                )
            })
            .collect::<Vec<_>>()
    };
    metric(
        "emissary_intents_total",
        "counter",
        "Valid intents published.",
        per(|s| &s.intents),
    );
    metric(
        "emissary_failures_total",
        "counter",
        "Failures published (timeouts, unparsable, ward, busy).",
        per(|s| &s.failures),
    );
    metric(
        "emissary_in_flight",
        "gauge",
        "Model calls running.",
        per(|s| &s.in_flight),
    );
    metric(
        "emissary_model_ms_total",
        "counter",
        "Milliseconds spent in model calls.",
        per(|s| &s.model_ms_total),
    );
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bounds' promise: the largest stimulus the gateway takes (every field at its bound,
    /// in 4-byte characters) is a body a peer accepts.
    #[test]
    fn the_largest_request_fits_one_event() {
        let fill = |bytes: usize| "\u{1F600}".repeat(bytes / 4);
        let body = stimulus_body(
            &fill(MAX_NAME_BYTES),
            &fill(MAX_NAME_BYTES),
            &fill(MAX_BACKSTORY_BYTES),
            &fill(MAX_CONTEXT_BYTES),
        )
        .expect("within the bounds");
        chorus_core::event::check_content(kind::STIMULUS, &body).expect("fits one event");
        assert!(stimulus_body("n", "r", "b", &fill(MAX_CONTEXT_BYTES + 4)).is_err());
        assert!(stimulus_body(&fill(MAX_NAME_BYTES + 4), "r", "b", "c").is_err());
    }
}
