//! `GET /metrics`: the node in the OpenMetrics text format (prometheus-client), which
//! Prometheus scrapes as it is: the status's figures as gauges and counters read at each
//! scrape, the latency histograms of [`crate::telemetry`], `chorus_build_info`, and the
//! standard `process_*` metrics (Linux). Label values (emissary names come from the operator's
//! file, rejection codes from the node) are escaped by the encoder.
//!
//! The same exposition is served on a separate address of its own with `--metrics-listen`
//! (`super::metrics_router`): a scraper there needs no API token and reaches nothing else.

use std::{collections::BTreeMap, fmt::Debug, sync::atomic::Ordering};

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use prometheus_client::{
    encoding::{EncodeGaugeValue, text::encode},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        info::Info,
    },
    registry::{Registry, Unit},
};
use serde_json::Value;

use super::shared::{Api, error};

/// The media type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The node's metrics (see the module docs).
#[utoipa::path(get, path = "/metrics", tag = "operators", responses(
    (status = 200, description = "The node's metrics in the OpenMetrics text format", body = String, content_type = "application/openmetrics-text"),
    (status = 503, description = "The node is shutting down", body = super::shared::ApiError),
))]
pub async fn metrics(State(api): State<Api>) -> Response {
    let snap = match api.status.get(&api.node).await {
        Ok(s) => s,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let st = &snap.status;
    let mut root = Registry::default();
    process::register(&mut root);
    let r = root.sub_registry_with_prefix("chorus");
    // The machine's description: a number for KAIROS, null (0 here) for other machines.
    let n = |v: &Value| v.as_f64().unwrap_or(0.0);
    gauge(r, "events", "Events in the timeline", st.events);
    gauge(r, "pending", "Events waiting for their parents", st.pending);
    gauge(r, "peers", "Connected peers", st.peers.len() as u64);
    gauge(
        r,
        "settled",
        "Events behind the settled frontier",
        st.settled,
    );
    if let Some(b) = &st.bootstrap {
        gauge(
            r,
            "snapshot_bootstrap_mismatch",
            "Started from a certified snapshot, and the replay of the history computed another \
             state at the certified position (1): determinism broken here, or a quorum \
             certified a false state. Alert on it",
            u64::from(b.phase == "mismatch"),
        );
        gauge(
            r,
            "snapshot_bootstrap_serving",
            "Started from a certified snapshot, whose state /v1/state serves while the history \
             replays (1); 0 once the replay agreed, or the snapshot was refused",
            u64::from(b.phase == "serving"),
        );
    }
    if let Some(f) = &st.finality {
        gauge(
            r,
            "final_positions",
            "Events in the final prefix (final/1 timelines)",
            f.final_positions,
        );
        gauge(
            r,
            "finality_epoch",
            "Membership epochs of the finality committee since the genesis",
            u64::from(f.epoch),
        );
        gauge(
            r,
            "certified_positions",
            "Positions covered by the newest finality certificate (0: none yet)",
            f.certified_positions.unwrap_or(0),
        );
        counter(
            r,
            "finality_conflicts",
            "Attestations that disagreed with another committee member's for one position \
             (a member lies, or determinism is broken): alert when it moves",
            f.conflicts,
        );
        if let Some(h) = f.handovers {
            gauge(
                r,
                "finality_handovers",
                "final/2: committee changes whose handover (the old committee attesting the \
                 new one) this node holds certified",
                u64::from(h),
            );
            counter(
                r,
                "finality_handover_conflicts",
                "final/2: handover claims of old committee members that are not what this \
                 node's final prefix says: alert when it moves",
                f.handover_conflicts,
            );
        }
    }
    counter(r, "appended", "Events signed by this node", st.appended);
    counter(
        r,
        "gossip_received",
        "Gossip messages received",
        st.received.gossip,
    );
    counter(
        r,
        "sync_blocks_received",
        "Blocks received by sync",
        st.received.sync_blocks,
    );
    gauge(
        r,
        "sync_lag_events",
        "Events the most advanced peer has beyond ours",
        st.sync.lag_events,
    );
    counter(
        r,
        "sync_requests_served",
        "Sync requests served",
        st.sync.requests_served,
    );
    counter(
        r,
        "sync_streams_cut",
        "Catch-up streams cut because their pages brought nothing new (a peer that pages \
         nowhere; another peer was asked)",
        st.sync.streams_cut,
    );
    counter(
        r,
        "sync_stranger_requests_refused",
        "Requests of peers that are no member refused because all strangers' shared budget \
         was spent",
        st.sync.stranger_requests_refused,
    );
    counter(
        r,
        "sync_pages_served",
        "Pages of blocks read and answered off the actor thread",
        st.sync.pages_served,
    );
    counter(
        r,
        "sync_pages_busy",
        "Page requests refused at once because the page reader's queue was full",
        st.sync.pages_busy,
    );
    counter(
        r,
        "sync_own_claims_capped",
        "Claims of this node's own chain that a peer could not back with its events",
        st.sync.own_claims_capped,
    );
    counter(
        r,
        "sync_own_checks_stalled",
        "Checks of a peer's claim of this node's own chain that went unanswered for 20 s \
         (counted as failed checks)",
        st.sync.own_checks_stalled,
    );
    gauge(
        r,
        "stranger_pending",
        "Pending events of keys no membership change names, held within a small quota",
        st.stranger_pending,
    );
    labelled(
        r,
        "rejected",
        "Invalid inputs rejected, by reason",
        "code",
        &st.received.rejected_by_code,
    );
    labelled(
        r,
        "refused_writes",
        "Local writes refused because every peer would refuse them, by reason",
        "code",
        &st.refused_writes,
    );
    gauge(
        r,
        "coherence",
        "KAIROS coherence |T_tau|^2",
        n(&st.coherence),
    );
    gauge(r, "dopamine", "KAIROS dopamine", n(&st.dopamine));
    r.register(
        "build",
        "The build: version and git commit",
        Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit", crate::COMMIT),
        ]),
    );
    counter(
        r,
        "state_divergence",
        "Peer summaries with this node's heads and another state_hash: a determinism bug, or \
         a peer that lies (alert on any increase; status names the last peer)",
        st.state_divergences,
    );

    let g = &api.gateway;
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    counter(
        r,
        "gateway_intent_requests",
        "POST /v1/swarm/intent requests",
        l(&g.intent_requests),
    );
    counter(
        r,
        "gateway_chat_requests",
        "POST /v1/chat/completions requests",
        l(&g.chat_requests),
    );
    counter(
        r,
        "gateway_elected",
        "Gateway requests answered with a winner",
        l(&g.elected),
    );
    counter(
        r,
        "gateway_timeouts",
        "Gateway requests without a winner in time",
        l(&g.timeouts),
    );
    counter(
        r,
        "gateway_escalations",
        "escalate events written: elections without a valid answer by their deadline",
        l(&g.escalations),
    );
    counter(
        r,
        "gateway_rate_limited",
        "Gateway requests refused (429) because their client address's rate was spent",
        l(&g.rate_limited),
    );
    let b = api.bitswap.stats();
    counter(
        r,
        "bitswap_blocks_served",
        "Blocks sent over Bitswap to peers that wanted them",
        l(&b.blocks_served),
    );
    counter(
        r,
        "bitswap_served_bytes",
        "Bytes of blocks sent over Bitswap",
        l(&b.bytes_served),
    );
    counter(
        r,
        "bitswap_dont_have_sent",
        "DontHave answers sent over Bitswap (wants of blocks this node does not hold)",
        l(&b.dont_have_sent),
    );
    counter(
        r,
        "bitswap_blocks_fetched",
        "Blocks fetched over Bitswap, each checked against its CID",
        l(&b.blocks_fetched),
    );
    counter(
        r,
        "bitswap_blocks_unwanted",
        "Blocks received over Bitswap and dropped: their bytes hash to no CID wanted here \
         (forged, late, or a hash this node cannot check)",
        l(&b.blocks_unwanted),
    );
    counter(
        r,
        "bitswap_refused",
        "Bitswap messages or streams refused: malformed, too large, too many streams, or \
         wants beyond the bound of one message",
        l(&b.refused),
    );
    let p = api.payloads.stats();
    counter(
        r,
        "payloads_fetched",
        "Payloads fetched whole because this node is one of their holders",
        l(&p.fetched),
    );
    counter(
        r,
        "payload_fetch_failures",
        "Payload fetches that failed (tried again the next round)",
        l(&p.fetch_failures),
    );
    counter(
        r,
        "payloads_dropped",
        "Payloads let go by a node that is not one of their holders, once every holder had it",
        l(&p.dropped),
    );
    counter(
        r,
        "payload_orphans_removed",
        "Uploaded payloads removed because no event referenced them in time",
        l(&p.orphans_removed),
    );
    counter(
        r,
        "payload_bad_roots",
        "Payload roots fetched and refused (not a payload/1 root)",
        l(&p.bad_roots),
    );
    let t = &api.telemetry;
    r.register_with_unit(
        "gateway_wait",
        "Gateway requests from their arrival to the winner they return",
        Unit::Seconds,
        t.gateway_wait.clone(),
    );
    r.register_with_unit(
        "propagation_round_trip",
        "A stimulus this node wrote, out to another node's emissary and its answer back, \
         less the model's time (this node's clock only)",
        Unit::Seconds,
        t.propagation.clone(),
    );
    r.register_with_unit(
        "emissary_model",
        "Model calls of this node's emissaries",
        Unit::Seconds,
        t.model.clone(),
    );
    let per = |f: fn(&crate::emissary::EmissaryStats) -> &std::sync::atomic::AtomicU64| {
        api.emissaries
            .iter()
            .map(|e| (e.name.clone(), l(f(&e.stats))))
            .collect::<BTreeMap<_, _>>()
    };
    labelled(
        r,
        "emissary_intents",
        "Valid intents published",
        "emissary",
        &per(|s| &s.intents),
    );
    labelled(
        r,
        "emissary_failures",
        "Failures published (timeouts, unparsable, ward, busy)",
        "emissary",
        &per(|s| &s.failures),
    );
    let in_flight: Family<Vec<(String, String)>, prometheus_client::metrics::gauge::Gauge> =
        Family::default();
    for (name, v) in per(|s| &s.in_flight) {
        in_flight
            .get_or_create(&vec![("emissary".into(), name)])
            .set(v as i64);
    }
    r.register("emissary_in_flight", "Model calls running", in_flight);

    let mut out = String::new();
    if let Err(e) = encode(&mut out, &root) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding: {e}"));
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], out).into_response()
}

fn gauge<N>(r: &mut Registry, name: &str, help: &str, v: N)
where
    N: EncodeGaugeValue + Debug + Send + Sync + 'static,
{
    r.register(name, help, ConstGauge::new(v));
}

/// A counter; the exposition names it `NAME_total`.
fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    r.register(name, help, ConstCounter::new(v));
}

/// One counter series per key of `counts`, under the label `label`.
fn labelled(r: &mut Registry, name: &str, help: &str, label: &str, counts: &BTreeMap<String, u64>) {
    let family: Family<Vec<(String, String)>, Counter> = Family::default();
    for (k, v) in counts {
        family
            .get_or_create(&vec![(label.to_owned(), k.clone())])
            .inc_by(*v);
    }
    r.register(name, help, family);
}

/// The standard `process_*` metrics of the Prometheus client libraries, from `/proc/self`.
#[cfg(target_os = "linux")]
mod process {
    use procfs::process::{LimitValue, Process};
    use prometheus_client::{
        metrics::{counter::ConstCounter, gauge::ConstGauge},
        registry::{Registry, Unit},
    };

    pub fn register(r: &mut Registry) {
        let Ok(me) = Process::myself() else { return };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            r.register_with_unit(
                "process_cpu",
                "Total user and system CPU time spent",
                Unit::Seconds,
                ConstCounter::new((stat.utime + stat.stime) as f64 / ticks),
            );
            r.register_with_unit(
                "process_resident_memory",
                "Resident memory size",
                Unit::Bytes,
                ConstGauge::new(stat.rss * procfs::page_size()),
            );
            r.register_with_unit(
                "process_virtual_memory",
                "Virtual memory size",
                Unit::Bytes,
                ConstGauge::new(stat.vsize),
            );
            if let Ok(boot) = procfs::boot_time_secs() {
                r.register_with_unit(
                    "process_start_time",
                    "Start time of the process since the Unix epoch",
                    Unit::Seconds,
                    ConstGauge::new(boot as f64 + stat.starttime as f64 / ticks),
                );
            }
        }
        if let Ok(fds) = me.fd_count() {
            r.register(
                "process_open_fds",
                "Open file descriptors",
                ConstGauge::new(fds as u64),
            );
        }
        if let Ok(limits) = me.limits()
            && let LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            r.register(
                "process_max_fds",
                "Most open file descriptors allowed",
                ConstGauge::new(max),
            );
        }
    }
}

/// No `/proc` here: no process metrics.
#[cfg(not(target_os = "linux"))]
mod process {
    pub fn register(_: &mut prometheus_client::registry::Registry) {}
}
