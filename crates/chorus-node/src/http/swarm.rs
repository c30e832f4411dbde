//! # The swarm API: the original swarm server's request over Chorus
//!
//! * `POST /v1/swarm/intent` — the original request (`npc_name`, `role`, `backstory`,
//!   `context`) becomes a `stimulus` event; the reply comes as soon as the replicated election
//!   has a winner (the first valid intent in the total order), never waiting for the slowest
//!   emissary: `{commands, winner, stimulus, settled, emissary, n, intents, round,
//!   elapsed_ms}`. On a `kairos/2` timeline an election without a valid answer after
//!   `escalate_after_ms` is escalated (an `escalate` event: the machine asks the next
//!   candidates), again after each further period, until nobody is left to ask. With
//!   `"consistency": "settled"` the reply waits until the winner is settled (it can no longer
//!   be displaced); the default `"fast"` replies with the first valid answer and says whether it
//!   is settled. No winner within the timeout → 504 with what is known.
//! * `GET /v1/swarm/elections` — every election the state tracks, with winners and
//!   settledness (what tests compare across replicas); with `?stream=true`, every change as
//!   SSE: `winner`, `replaced` (a tentative winner displaced), `settled`, `election`.
//!
//! [`elect`] is also how `POST /v1/chat/completions` ([`super::openai`]) asks the chorus.

use std::{
    convert::Infallible,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

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
use chorus_kairos::{
    body::{Escalation, Stimulus},
    council::MAX_ESCALATIONS,
};
use ipld_core::ipld::Ipld;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::{
    idempotency::{Keyed, REPLAYED_HEADER, Seen, key_of},
    shared::{Api, GatewayStats, error, json_body, write_error},
};
use crate::{
    election::{ChangeKind, Election, Follower},
    handle::NodeGone,
    write::WriteError,
};

/// How long a gateway request waits for a winner unless it asks for less.
pub const DEFAULT_INTENT_TIMEOUT_MS: u64 = 60_000;
/// The longest wait a request may ask for.
pub const MAX_INTENT_TIMEOUT_MS: u64 = 600_000;
/// How long an election may go without a valid answer before the gateway escalates it, unless
/// the request asks otherwise: long enough for a CPU model's answer (the embedded model takes a
/// few seconds on 2 cores), short enough that a dead emissary costs a fraction of the timeout.
pub const DEFAULT_ESCALATE_AFTER_MS: u64 = 15_000;
/// The shortest escalation period a request may ask for.
pub const MIN_ESCALATE_AFTER_MS: u64 = 100;
/// The longest: every round must fall inside the window in which an emissary still answers a
/// stimulus it was not asked at first ([`crate::emissary::RESELECT_WINDOW`]).
pub const MAX_ESCALATE_AFTER_MS: u64 =
    crate::emissary::RESELECT_WINDOW.as_millis() as u64 / (1 + MAX_ESCALATIONS as u64);
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

/// A stimulus for the swarm: who speaks, and what happens (the original's request).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct IntentRequest {
    #[serde(default = "unknown_npc")]
    npc_name: String,
    #[serde(default = "cryptic")]
    role: String,
    #[serde(default = "exists")]
    backstory: String,
    #[serde(default)]
    context: String,
    /// How long to wait for a winner (default and bound in the docs).
    timeout_ms: Option<u64>,
    /// When to widen an election without a valid answer (`kairos/2` and later).
    escalate_after_ms: Option<u64>,
    /// `"fast"` (default): reply with the first valid answer, maybe tentative; `"settled"`:
    /// reply once the winner is settled (no event can sort before it any more).
    consistency: Option<String>,
}

/// When a gateway request replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Consistency {
    /// The first valid answer in the node's current order (it may still be replaced).
    Fast,
    /// A winner behind the settled frontier: every replica names it, for good.
    Settled,
}

impl Consistency {
    /// `final_order`: the timeline orders by `final/1`, where the settled prefix is the final
    /// prefix, so `"final"` waits as `"settled"` does.
    pub(super) fn parse(v: Option<&str>, final_order: bool) -> Result<Consistency, Box<Response>> {
        match v {
            None | Some("fast") => Ok(Consistency::Fast),
            Some("settled") => Ok(Consistency::Settled),
            Some("final") if final_order => Ok(Consistency::Settled),
            Some("final") => Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                "consistency \"final\": this timeline orders by lc-cid/1, which has no quorum \
                 finality (a timeline made with `chorus init --order final` has); \"settled\" \
                 waits for a winner every member has seen"
                    .to_string(),
            ))),
            Some(other) => Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                format!(
                    "consistency {other:?}: this node offers \"fast\" (the first valid answer), \
                     \"settled\" (a winner no event can displace) and, on a final/1 timeline, \
                     \"final\" (a winner a quorum of the members has finalized)"
                ),
            ))),
        }
    }
}
fn unknown_npc() -> String {
    "Unknown NPC".into()
}
fn cryptic() -> String {
    "Cryptic Being".into()
}
pub(super) fn exists() -> String {
    "You exist.".into()
}

/// `field` within `max` bytes, or the 413 that says which field and which bound.
pub(super) fn bounded(field: &str, value: &str, max: usize) -> Result<(), Box<Response>> {
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
pub(super) fn stimulus_body(
    npc: &str,
    role: &str,
    backstory: &str,
    context: &str,
) -> Result<Ipld, Box<Response>> {
    bounded("npc_name", npc, MAX_NAME_BYTES)?;
    bounded("role", role, MAX_NAME_BYTES)?;
    bounded("backstory", backstory, MAX_BACKSTORY_BYTES)?;
    bounded("context", context, MAX_CONTEXT_BYTES)?;
    Ok(Stimulus {
        // The engine integrates `text`: the context is what the swarm hears.
        text: context.into(),
        npc_name: Some(npc.into()),
        role: Some(role.into()),
        backstory: Some(backstory.into()),
        context: Some(context.into()),
    }
    .to_ipld())
}

/// Why no election result came back.
pub(super) enum Wait {
    Gone(NodeGone),
    Refused(WriteError),
    /// The idempotency key came with another request.
    KeyReused,
    /// A retry of a request whose stimulus the state no longer tracks (older than its bound).
    Forgotten(EventId),
    Timeout {
        stimulus: EventId,
        last: Option<Arc<Election>>,
    },
}

impl Wait {
    pub(super) fn response(self, stats: &GatewayStats) -> Response {
        match self {
            Wait::Gone(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            Wait::Refused(e) => write_error(e),
            Wait::Forgotten(stimulus) => error(
                StatusCode::GONE,
                format!(
                    "this Idempotency-Key's request was taken as stimulus {stimulus}, whose \
                     election is older than the state keeps: see GET /v1/events for its intents"
                ),
            ),
            Wait::KeyReused => error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "this Idempotency-Key came with another request: a key names one request",
            ),
            Wait::Timeout { stimulus, last } => {
                stats.timeouts.fetch_add(1, Ordering::Relaxed);
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    Json(json!({
                        "error": "no emissary produced a valid intent in time",
                        "stimulus": stimulus.to_string(),
                        "election": last.as_deref(),
                    })),
                )
                    .into_response()
            }
        }
    }
}

/// Appends the stimulus and waits for its election to have a winner: the node pushes every
/// change of an election after the fold that made it, so this wakes once per change of its
/// own election (and once per other election's change), never on a timer — but for the
/// escalation deadline: with no valid answer `escalate_after` after the stimulus (or after the
/// last escalation) and candidates left, it appends an `escalate` for the next round.
///
/// With an idempotency key (`route` and the request's `Idempotency-Key`, see
/// [`super::idempotency`]), a retry of a request already taken appends nothing and waits for the
/// first request's stimulus instead; the returned flag says so.
pub(super) async fn elect(
    api: &Api,
    body: Ipld,
    timeout: Duration,
    escalate_after: Duration,
    consistency: Consistency,
    key: Option<(&'static str, String)>,
) -> Result<(Arc<Election>, u64, bool), Wait> {
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut escalate_at = tokio::time::Instant::now() + escalate_after;
    // Subscribe before appending: the election can change before the append's reply comes.
    let mut changes = api.node.subscribe_elections();
    let append = |body: Ipld| async {
        match api
            .node
            .append(vec![(kind::STIMULUS.into(), body)])
            .await
            .map_err(Wait::Gone)?
        {
            Ok(ids) => {
                api.telemetry.wrote_stimulus(ids[0]);
                Ok(ids[0])
            }
            Err(e) => Err(Wait::Refused(e)),
        }
    };
    let mut last: Option<Arc<Election>> = None;
    let mut replayed = false;
    let stimulus = match key {
        None => append(body).await?,
        Some((route, key)) => {
            let keyed = Keyed {
                route,
                key,
                request: EventId::of_block(&chorus_core::codec::encode(&body)).0,
            };
            // Held across the append: a retry that overtakes the first request waits for it.
            let mut keys = api.keys.lock().await;
            match keys.seen(&keyed, Instant::now()) {
                Seen::Conflict => return Err(Wait::KeyReused),
                Seen::Retry(stimulus) => {
                    drop(keys);
                    replayed = true;
                    // Queries are answered after a fold: a stimulus taken here is tracked by now,
                    // unless it is older than the state keeps — nothing would ever come then.
                    match api.node.election(stimulus).await.map_err(Wait::Gone)? {
                        Some(e) => last = Some(Arc::new(e)),
                        None => return Err(Wait::Forgotten(stimulus)),
                    }
                    stimulus
                }
                Seen::New => {
                    let stimulus = append(body).await?;
                    keys.remember(keyed, stimulus, Instant::now());
                    stimulus
                }
            }
        }
    };
    loop {
        let done = |e: &&Arc<Election>| {
            e.winner.is_some() && (consistency == Consistency::Fast || e.settled)
        };
        if let Some(e) = last.as_ref().filter(done) {
            let waited = t0.elapsed();
            let ms = waited.as_millis() as u64;
            api.gateway.elected.fetch_add(1, Ordering::Relaxed);
            api.telemetry.gateway_wait.observe(waited.as_secs_f64());
            return Ok((e.clone(), ms, replayed));
        }
        // Only an election without a winner is widened (a settled-consistency request may
        // wait on a tentative winner: nothing to escalate then).
        let can_escalate = api.escalates
            && last
                .as_ref()
                .is_some_and(|e| e.winner.is_none() && !e.exhausted && e.round < MAX_ESCALATIONS);
        tokio::select! {
            r = changes.recv() => match r {
                Ok(e) if e.stimulus == stimulus => last = Some(e),
                Ok(_) => {}
                // Fell behind the pushes: ask once for where the election stands.
                Err(RecvError::Lagged(_)) => {
                    if let Some(e) = api.node.election(stimulus).await.map_err(Wait::Gone)? {
                        last = Some(Arc::new(e));
                    }
                }
                Err(RecvError::Closed) => return Err(Wait::Gone(NodeGone)),
            },
            _ = tokio::time::sleep_until(escalate_at), if can_escalate => {
                let round = last.as_ref().map_or(0, |e| e.round) + 1;
                let body = Escalation { re: stimulus, round }.to_ipld();
                // Within the request's deadline: a closed write gate must not hold it longer.
                let append = api.node.append(vec![(kind::ESCALATE.into(), body)]);
                match tokio::time::timeout_at(deadline, append).await {
                    Ok(Ok(Ok(_))) => {
                        api.gateway.escalations.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%stimulus, round, "no valid answer yet: escalated");
                    }
                    Ok(Ok(Err(e))) => tracing::warn!(%stimulus, "escalation not written: {e}"),
                    Ok(Err(e)) => return Err(Wait::Gone(e)),
                    Err(_) => return Err(Wait::Timeout { stimulus, last }),
                }
                escalate_at = tokio::time::Instant::now() + escalate_after;
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(Wait::Timeout { stimulus, last });
            }
        }
    }
}

/// The escalation period a request asked for, within its bounds.
pub(super) fn escalate_after_of(ms: Option<u64>) -> Duration {
    Duration::from_millis(
        ms.unwrap_or(DEFAULT_ESCALATE_AFTER_MS)
            .clamp(MIN_ESCALATE_AFTER_MS, MAX_ESCALATE_AFTER_MS),
    )
}

pub(super) fn timeout_of(ms: Option<u64>) -> Duration {
    Duration::from_millis(
        ms.unwrap_or(DEFAULT_INTENT_TIMEOUT_MS)
            .clamp(1, MAX_INTENT_TIMEOUT_MS),
    )
}

#[utoipa::path(post, path = "/v1/swarm/intent", tag = "swarm", request_body = IntentRequest, security(("token" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key appends nothing and answers with the first request's election")),
    responses(
    (status = 200, description = "The elected intent: winner, emissary, model, commands, text, settled, stimulus", body = serde_json::Value),
    (status = 400, description = "Not JSON, a bad field, or a bad Idempotency-Key", body = super::shared::ApiError),
    (status = 401, description = "The node has a token and the request does not carry it", body = super::shared::ApiError),
    (status = 410, description = "A keyed retry whose election the state no longer tracks", body = super::shared::ApiError),
    (status = 413, description = "A field over its bound", body = super::shared::ApiError),
    (status = 422, description = "The Idempotency-Key was used for another request", body = super::shared::ApiError),
    (status = 429, description = "This client's gateway rate is spent (Retry-After)", body = super::shared::ApiError),
    (status = 504, description = "No winner within the timeout (the stimulus stays; its election goes on)", body = super::shared::ApiError),
))]
pub async fn swarm_intent(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Result<Json<IntentRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let r = match json_body(body) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let key = match key_of(&headers) {
        Ok(k) => k.map(|k| ("intent", k)),
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    api.gateway.intent_requests.fetch_add(1, Ordering::Relaxed);
    let body = match stimulus_body(&r.npc_name, &r.role, &r.backstory, &r.context) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let escalate_after = escalate_after_of(r.escalate_after_ms);
    let consistency = match Consistency::parse(r.consistency.as_deref(), api.final_order) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    match elect(
        &api,
        body,
        timeout_of(r.timeout_ms),
        escalate_after,
        consistency,
        key,
    )
    .await
    {
        Ok((e, ms, replayed)) => replayed_header(
            replayed,
            Json(json!({
                "commands": e.commands,
                "winner": e.winner.map(|w| w.to_string()),
                "stimulus": e.stimulus.to_string(),
                "settled": e.settled,
                // Final by quorum: only on a final/1 timeline, where settled means final.
                "final": api.final_order && e.settled,
                "emissary": e.emissary,
                "model": e.model,
                "n": e.n,
                "intents": e.intents,
                "round": e.round,
                "elapsed_ms": ms,
            })),
        ),
        Err(w) => w.response(&api.gateway),
    }
}

/// The answer, marked `Idempotent-Replayed: true` when it answers a retry.
pub(super) fn replayed_header(replayed: bool, answer: impl IntoResponse) -> Response {
    let mut resp = answer.into_response();
    if replayed {
        resp.headers_mut().insert(
            REPLAYED_HEADER,
            axum::http::HeaderValue::from_static("true"),
        );
    }
    resp
}

/// `GET /v1/swarm/elections/{stimulus}`: one election, or 404 when the stimulus is not one the
/// state tracks (not here yet, not a stimulus, or older than the state keeps).
#[utoipa::path(get, path = "/v1/swarm/elections/{stimulus}", tag = "swarm",
    params(("stimulus" = String, Path, description = "The stimulus's CID")),
    responses(
    (status = 200, description = "The election: selected, intents, winner, settled", body = serde_json::Value),
    (status = 400, description = "Not a CID", body = super::shared::ApiError),
    (status = 404, description = "No election this node tracks", body = super::shared::ApiError),
))]
pub async fn one_election(
    State(api): State<Api>,
    axum::extract::Path(stimulus): axum::extract::Path<String>,
) -> Response {
    let id = match stimulus.parse::<EventId>() {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{stimulus}: {e}")),
    };
    match api.node.election(id).await {
        Ok(Some(e)) => Json(e).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!(
                "{id} is not an election this node tracks: not received yet, not a stimulus, or \
                 older than the state keeps"
            ),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ElectionsQuery {
    /// An SSE stream of the elections' changes instead of the list.
    #[serde(default)]
    stream: bool,
}

#[utoipa::path(get, path = "/v1/swarm/elections", tag = "swarm", params(ElectionsQuery), responses(
    (status = 200, description = "Every election the state tracks; with `stream=true` an SSE stream (`text/event-stream`) of their changes: `winner`, `replaced`, `settled`, `election`, `lagged`", body = serde_json::Value),
    (status = 503, description = "The node is shutting down, or too many streams are open", body = super::shared::ApiError),
))]
pub async fn elections(State(api): State<Api>, Query(q): Query<ElectionsQuery>) -> Response {
    if q.stream {
        return election_stream(&api).await;
    }
    match api.node.elections().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `GET /v1/swarm/elections?stream=true`: every change of an election as one SSE event, named
/// for what it means to the client ([`ChangeKind`]): `winner`, `replaced` (the data's
/// `previous_winner` names the displaced one), `settled`, or `election`; a lagging client gets
/// `lagged` (then `GET /v1/swarm/elections` has every election).
async fn election_stream(api: &Api) -> Response {
    let slot = match api.stream_slot() {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let rx = api.node.subscribe_elections();
    // What the client could already know: elections that exist when it connects are not new
    // to it, and one first seen after this is (a `winner` if it has one).
    let mut follower = Follower::default();
    match api.node.elections().await {
        Ok(list) => list.elections.iter().for_each(|e| follower.remember(e)),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
    let stream = futures_util::stream::unfold(
        (rx, follower, slot),
        |(mut rx, mut follower, slot)| async move {
            let ev = match rx.recv().await {
                Ok(e) => {
                    let kind = follower.classify(&e);
                    let mut data = serde_json::to_value(&*e).unwrap_or_default();
                    if let ChangeKind::Replaced { previous } = kind {
                        data["previous_winner"] = json!(previous.to_string());
                    }
                    SseEvent::default()
                        .event(kind.name())
                        .data(data.to_string())
                }
                Err(RecvError::Lagged(n)) => SseEvent::default()
                    .event("lagged")
                    .data(json!({"missed": n}).to_string()),
                Err(RecvError::Closed) => return None,
            };
            Some((Ok::<_, Infallible>(ev), (rx, follower, slot)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
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
