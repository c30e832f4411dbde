//! Latency histograms a node keeps for `/metrics` (prometheus-client), in seconds:
//!
//! * `chorus_gateway_wait_seconds`: a gateway request (`/v1/swarm/intent`, chat completions)
//!   from its arrival to the winner it returns.
//! * `chorus_emissary_model_seconds{emissary}`: one model call of one of this node's
//!   emissaries.
//! * `chorus_propagation_round_trip_seconds`: a stimulus this node wrote, out to another
//!   node's emissary and its answer back here, less the model's own time (the answer's
//!   `model_ms`): two crossings of the mesh plus the other node's queueing, all on this node's
//!   clock. One-way propagation is not measured: events carry no wall-clock time (the state
//!   never depends on a clock), and two machines' clocks cannot be compared to a millisecond.
//!
//! The counters and gauges of `/metrics` come from the node's status at each scrape
//! (`http::metrics`); only what needs a distribution is kept here.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use chorus_core::{AuthorId, EventId, SignedEvent, event::kind};
use ipld_core::ipld::Ipld;
use prometheus_client::metrics::{
    family::Family,
    histogram::{Histogram, exponential_buckets},
};
use tokio::sync::broadcast::error::RecvError;

use crate::handle::NodeHandle;

/// Label set of a per-emissary series.
pub type EmissaryLabel = Vec<(String, String)>;
type HistogramOf = fn() -> Histogram;

/// The node's latency histograms (cheap to clone: shared).
#[derive(Clone, Debug)]
pub struct Telemetry {
    pub gateway_wait: Histogram,
    pub model: Family<EmissaryLabel, Histogram, HistogramOf>,
    pub propagation: Histogram,
}

/// 50 ms … 410 s: a GPU's 2 s answer and a Pi Zero's 45 s one land in different buckets.
fn answer_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

/// 5 ms … 41 s: loopback meshes and slow links alike.
fn propagation_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            gateway_wait: answer_buckets(),
            model: Family::new_with_constructor(answer_buckets as HistogramOf),
            propagation: propagation_buckets(),
        }
    }
}

impl Telemetry {
    /// The model-call histogram of the emissary `name`.
    pub fn model_of(&self, name: &str) -> Histogram {
        self.model
            .get_or_create_owned(&vec![("emissary".to_owned(), name.to_owned())])
    }
}

/// Stimuli of this node whose answers are timed (the newest; older ones are forgotten).
pub const TRACKED_STIMULI: usize = 1024;
/// How long a stimulus's answers are timed after it was written.
pub const TRACKED_FOR: Duration = Duration::from_secs(600);

/// Times the round trips of this node's stimuli ([`Telemetry::propagation`]) from the node's
/// feed of new events, until the node stops.
pub fn spawn_round_trips(node: NodeHandle, me: AuthorId, into: Histogram) {
    let mut feed = node.subscribe();
    tokio::spawn(async move {
        let mut trips = RoundTrips::new(me);
        loop {
            match feed.recv().await {
                Ok(ev) => {
                    if let Some(s) = trips.see(&ev, Instant::now()) {
                        into.observe(s);
                    }
                }
                // Missed events only leave some round trips out.
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
    });
}

/// This node's recent stimuli and when each was seen here.
struct RoundTrips {
    me: AuthorId,
    written: BTreeMap<EventId, Instant>,
    order: VecDeque<EventId>,
}

impl RoundTrips {
    fn new(me: AuthorId) -> Self {
        RoundTrips {
            me,
            written: BTreeMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Takes one new event; returns a round trip in seconds when it is another node's answer
    /// to a tracked stimulus.
    fn see(&mut self, ev: &SignedEvent, now: Instant) -> Option<f64> {
        while let Some(old) = self.order.front() {
            let stale = self
                .written
                .get(old)
                .is_none_or(|t| now.duration_since(*t) > TRACKED_FOR);
            if !stale && self.order.len() < TRACKED_STIMULI {
                break;
            }
            self.written.remove(old);
            self.order.pop_front();
        }
        if ev.author == self.me {
            if ev.kind == kind::STIMULUS {
                self.written.insert(ev.id(), now);
                self.order.push_back(ev.id());
            }
            return None;
        }
        let (re, model_ms) = answer(ev)?;
        let at = self.written.get(&re)?;
        let trip = now.duration_since(*at).as_secs_f64() - model_ms as f64 / 1000.0;
        Some(trip.max(0.0))
    }
}

/// The stimulus an intent answers, and its model's time in ms.
fn answer(ev: &SignedEvent) -> Option<(EventId, u64)> {
    if ev.kind != kind::INTENT {
        return None;
    }
    let Ipld::Map(m) = &ev.body else { return None };
    let re = match m.get("re") {
        Some(Ipld::Link(c)) => EventId::from_cid(c).ok()?,
        _ => return None,
    };
    let model_ms = match m.get("model_ms") {
        Some(Ipld::Integer(i)) => u64::try_from(*i).ok()?,
        _ => 0,
    };
    Some((re, model_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::{crypto::Keypair, event::UnsignedEvent};

    fn event(by: &Keypair, kind: &str, body: Ipld) -> SignedEvent {
        UnsignedEvent {
            timeline: None,
            author: by.author(),
            seq: 1,
            lamport: 1,
            parents: vec![],
            kind: kind.into(),
            body,
        }
        .sign(by)
    }

    #[test]
    fn an_answer_of_another_node_times_the_round_trip_less_the_model() {
        let (me, other) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
        let stimulus = event(&me, kind::STIMULUS, Ipld::String("hi".into()));
        let answer_of = |by: &Keypair, ms: i128| {
            let mut m = BTreeMap::new();
            m.insert("re".to_owned(), Ipld::Link(stimulus.id().to_cid()));
            m.insert("model_ms".to_owned(), Ipld::Integer(ms));
            event(by, kind::INTENT, Ipld::Map(m))
        };
        let mut trips = RoundTrips::new(me.author());
        let t0 = Instant::now();
        assert_eq!(trips.see(&stimulus, t0), None);
        let s = trips
            .see(&answer_of(&other, 1_500), t0 + Duration::from_millis(1_750))
            .unwrap();
        assert!((s - 0.25).abs() < 1e-9, "{s}");
        // This node's own emissary's answer crosses no network.
        assert_eq!(trips.see(&answer_of(&me, 10), t0), None);
        // A model time longer than the trip (clock steps, rounding) is no negative latency.
        assert_eq!(
            trips.see(&answer_of(&other, 9_000), t0 + Duration::from_secs(1)),
            Some(0.0)
        );
        // After TRACKED_FOR the stimulus is forgotten.
        assert_eq!(
            trips.see(
                &answer_of(&other, 0),
                t0 + TRACKED_FOR + Duration::from_secs(1)
            ),
            None
        );
    }
}
