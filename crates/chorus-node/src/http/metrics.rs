//! `GET /metrics`: Prometheus text exposition of the node's status and the gateway and
//! emissary counters.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering},
};

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::Value;

use super::shared::{Api, error};

/// Prometheus text exposition of the node's status and the gateway and emissary counters.
pub async fn metrics(State(api): State<Api>) -> Response {
    let snap = match api.status.get(&api.node).await {
        Ok(s) => s,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let st = &snap.status;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        out.push_str(&format!(
            "# HELP chorus_{name} {help}\n# TYPE chorus_{name} {kind}\n"
        ));
        for (labels, v) in samples {
            out.push_str(&format!("chorus_{name}{labels} {v}\n"));
        }
    };
    // The machine's description: a number for KAIROS, null (0 here) for other machines.
    let n = |v: &Value| v.as_f64().unwrap_or(0.0);
    let one = |v: f64| vec![(String::new(), v)];
    metric(
        "events",
        "gauge",
        "Events in the timeline.",
        one(st.events as f64),
    );
    metric(
        "pending",
        "gauge",
        "Events waiting for their parents.",
        one(st.pending as f64),
    );
    metric(
        "peers",
        "gauge",
        "Connected peers.",
        one(st.peers.len() as f64),
    );
    metric(
        "settled",
        "gauge",
        "Events behind the settled frontier.",
        one(st.settled as f64),
    );
    if let Some(f) = &st.finality {
        metric(
            "final_positions",
            "gauge",
            "Events in the final prefix (final/1 timelines).",
            one(f.final_positions as f64),
        );
        metric(
            "finality_epoch",
            "gauge",
            "Membership epochs of the finality committee since the genesis.",
            one(f64::from(f.epoch)),
        );
        metric(
            "certified_positions",
            "gauge",
            "Positions covered by the newest finality certificate (0: none yet).",
            one(f.certified_positions.unwrap_or(0) as f64),
        );
        metric(
            "finality_conflicts_total",
            "counter",
            "Attestations that disagreed with another committee member's for one position \
             (a member lies, or determinism is broken): alert when it moves.",
            one(f.conflicts as f64),
        );
    }
    metric(
        "appended_total",
        "counter",
        "Events signed by this node.",
        one(st.appended as f64),
    );
    metric(
        "gossip_received_total",
        "counter",
        "Gossip messages received.",
        one(st.received.gossip as f64),
    );
    metric(
        "sync_blocks_received_total",
        "counter",
        "Blocks received by sync.",
        one(st.received.sync_blocks as f64),
    );
    metric(
        "sync_lag_events",
        "gauge",
        "Events the most advanced peer has beyond ours.",
        one(st.sync.lag_events as f64),
    );
    metric(
        "requests_served_total",
        "counter",
        "Sync requests served.",
        one(st.sync.requests_served as f64),
    );
    metric(
        "sync_streams_cut_total",
        "counter",
        "Catch-up streams cut because their pages brought nothing new (a peer that pages \
         nowhere; another peer was asked).",
        one(st.sync.streams_cut as f64),
    );
    metric(
        "sync_stranger_requests_refused_total",
        "counter",
        "Requests of peers that are no member refused because all strangers' shared budget \
         was spent.",
        one(st.sync.stranger_requests_refused as f64),
    );
    metric(
        "sync_pages_served_total",
        "counter",
        "Pages of blocks read and answered off the actor thread.",
        one(st.sync.pages_served as f64),
    );
    metric(
        "sync_pages_busy_total",
        "counter",
        "Page requests refused at once because the page reader's queue was full.",
        one(st.sync.pages_busy as f64),
    );
    metric(
        "sync_own_claims_capped_total",
        "counter",
        "Claims of this node's own chain that a peer could not back with its events.",
        one(st.sync.own_claims_capped as f64),
    );
    metric(
        "stranger_pending",
        "gauge",
        "Pending events of keys no membership change names, held within a small quota.",
        one(st.stranger_pending as f64),
    );
    // A `{code: count}` map of the status as one labelled series per code.
    let by_code = |counts: &BTreeMap<String, u64>| -> Vec<(String, f64)> {
        counts
            .iter()
            .map(|(k, v)| (format!("{{code=\"{k}\"}}"), *v as f64))
            .collect()
    };
    metric(
        "rejected_total",
        "counter",
        "Invalid inputs rejected, by reason.",
        by_code(&st.received.rejected_by_code),
    );
    metric(
        "refused_writes_total",
        "counter",
        "Local writes refused because every peer would refuse them, by reason.",
        by_code(&st.refused_writes),
    );
    metric(
        "coherence",
        "gauge",
        "KAIROS coherence |T_tau|^2.",
        one(n(&st.coherence)),
    );
    metric(
        "dopamine",
        "gauge",
        "KAIROS dopamine.",
        one(n(&st.dopamine)),
    );
    metric(
        "build_info",
        "gauge",
        "The build: version and git commit (value 1).",
        vec![(
            format!(
                "{{version=\"{}\",commit=\"{}\"}}",
                label_value(env!("CARGO_PKG_VERSION")),
                label_value(crate::COMMIT)
            ),
            1.0,
        )],
    );
    metric(
        "state_divergence_total",
        "counter",
        "Peer summaries with this node's heads and another state_hash: a determinism bug, or a \
         peer that lies (alert on any increase; status names the last peer).",
        one(st.state_divergences as f64),
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
        "gateway_escalations_total",
        "counter",
        "escalate events written: elections without a valid answer by their deadline.",
        one(l(&g.escalations)),
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
                    format!("{{emissary=\"{}\"}}", label_value(&e.name)),
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

/// A label value in the text exposition format: backslash, double quote and line feed
/// escaped (`\\`, `\"`, `\n`), everything else as it is (names come from other members).
pub fn label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::label_value;

    #[test]
    fn label_values_escape_what_the_format_says() {
        assert_eq!(label_value("mira"), "mira");
        assert_eq!(label_value("a\"b"), "a\\\"b");
        assert_eq!(label_value("back\\slash"), "back\\\\slash");
        assert_eq!(label_value("two\nlines"), "two\\nlines");
    }
}
