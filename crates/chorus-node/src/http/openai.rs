//! `POST /v1/chat/completions`: OpenAI-compatible (also `"stream": true`, SSE chunks and
//! `data: [DONE]`). The conversation is a stimulus's context ([`super::swarm::elect`]), the
//! elected answer the assistant message.
//!
//! Errors on the OpenAI routes (`/v1/chat/completions`, `/v1/models`), whoever refused the
//! request (the token check, the rate limit, the handler), are OpenAI's error object
//! ([`error_shape`]): `{"error": {"message", "type", "param", "code"}}`.

use std::{convert::Infallible, sync::atomic::Ordering};

use axum::{
    Json,
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, Sse},
    },
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    idempotency::key_of,
    shared::{Api, error, json_body},
    swarm::{
        Consistency, MAX_BACKSTORY_BYTES, MAX_CONTEXT_BYTES, bounded, elect, escalate_after_of,
        exists, replayed_header, stimulus_body, timeout_of,
    },
};

/// Most bytes of an error body [`error_shape`] reads.
const MAX_ERROR_BODY_BYTES: usize = super::MAX_API_BODY_BYTES * 4;

/// The OpenAI routes, whose errors [`error_shape`] rewrites.
const OPENAI_ROUTES: [&str; 2] = ["/v1/chat/completions", "/v1/models"];

/// Rewrites an error answer of an OpenAI route (`{"error": "text", …}`, or any body) as
/// OpenAI's error object, with a `type` (and for some a `code`) by status: what an OpenAI SDK
/// reads into its exception's message. The original's other fields (a 504's `stimulus` and
/// `election`: the client can follow the election that goes on) stay, under `error.chorus`.
pub async fn error_shape(req: Request, next: Next) -> Response {
    let openai = OPENAI_ROUTES.contains(&req.uri().path());
    let r = next.run(req).await;
    let status = r.status();
    if !openai || !(status.is_client_error() || status.is_server_error()) {
        return r;
    }
    let (mut parts, body) = r.into_parts();
    // The largest error body is a 504's election (its intents' texts are bounded).
    let original = match axum::body::to_bytes(body, MAX_ERROR_BODY_BYTES).await {
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes)
            .unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&bytes) })),
        Err(_) => json!({
            "error": format!("{} (the error's body was over {MAX_ERROR_BODY_BYTES} bytes)", status)
        }),
    };
    let message = match &original["error"] {
        Value::String(s) if !s.is_empty() => s.clone(),
        _ => status.to_string(),
    };
    let extra: serde_json::Map<String, Value> = original
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| *k != "error")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let (kind, code) = match status.as_u16() {
        401 => ("authentication_error", Some("invalid_api_key")),
        403 => ("permission_error", None),
        404 => ("not_found_error", None),
        429 => ("rate_limit_error", Some("rate_limit_exceeded")),
        503 => ("server_error", Some("unavailable")),
        504 => ("server_error", Some("timeout")),
        s if s >= 500 => ("server_error", None),
        _ => ("invalid_request_error", None),
    };
    let mut error = json!({"message": message, "type": kind, "param": null, "code": code});
    if !extra.is_empty() {
        error["chorus"] = Value::Object(extra);
    }
    let body = json!({ "error": error });
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}

/// Characters per streamed content chunk.
const STREAM_CHUNK_CHARS: usize = 16;

/// OpenAI's chat request: system messages are the backstory, the others the context.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ChatBody {
    messages: Vec<ChatMsg>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    model: Option<String>,
    /// Chorus extension: how long to wait for the election.
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct ChatMsg {
    role: String,
    /// A string, or an array of parts whose `text` fields are joined.
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

/// `GET /v1/models`: what an OpenAI client lists. The swarm is one model, `chorus`: whichever
/// emissary the election picks answers (the `model` of a request is echoed, never used).
#[utoipa::path(get, path = "/v1/models", tag = "openai", responses(
    (status = 200, description = "OpenAI's model list: the one model, `chorus`", body = serde_json::Value),
))]
pub async fn models() -> Response {
    Json(json!({
        "object": "list",
        "data": [{"id": "chorus", "object": "model", "created": 0, "owned_by": "chorus"}],
    }))
    .into_response()
}

#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", request_body = ChatBody, security(("token" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key appends nothing and answers with the first request's election")),
    responses(
    (status = 200, description = "OpenAI's chat.completion (or with `stream: true` its SSE chunks and `data: [DONE]`), with a `chorus` object: winner, stimulus, emissary, settled", body = serde_json::Value),
    (status = "4XX", description = "OpenAI's error object `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`", body = serde_json::Value),
    (status = 504, description = "No winner in time, as OpenAI's error object (code `timeout`)", body = serde_json::Value),
))]
pub async fn chat_completions(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Result<Json<ChatBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let r = match json_body(body) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    if r.messages.is_empty() {
        return error(StatusCode::BAD_REQUEST, "messages must not be empty");
    }
    let key = match key_of(&headers) {
        Ok(k) => k.map(|k| ("chat", k)),
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
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
    let (e, ms, replayed) = match elect(
        &api,
        body,
        timeout_of(r.timeout_ms),
        escalate_after_of(None),
        Consistency::Fast,
        key,
    )
    .await
    {
        Ok(x) => x,
        Err(w) => return w.response(&api.gateway),
    };
    let content = e.text.clone().unwrap_or_default();
    let stimulus = e.stimulus.to_string();
    let id = format!(
        "chatcmpl-{}",
        stimulus.chars().rev().take(16).collect::<String>()
    );
    let chorus = json!({
        "stimulus": stimulus, "winner": e.winner.map(|w| w.to_string()), "emissary": e.emissary,
        "settled": e.settled, "commands": e.commands, "elapsed_ms": ms,
    });
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let prompt_tokens: usize = context.iter().map(|c| c.split_whitespace().count()).sum();
    let completion_tokens = content.split_whitespace().count();
    if !r.stream {
        return replayed_header(
            replayed,
            Json(json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }],
                // Words, not model tokens: the swarm's answer comes from whichever emissary won.
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
                "chorus": chorus,
            })),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
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
    replayed_header(replayed, Sse::new(stream))
}
