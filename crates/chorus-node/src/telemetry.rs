//! Latency histograms a node keeps for `/metrics` (prometheus-client), in seconds:
//!
//! * `chorus_gateway_wait_seconds`: a gateway request (`/v1/swarm/intent`, chat completions)
//!   from its arrival to the winner it returns.
//! * `chorus_emissary_model_seconds{emissary}`: one model call of one of this node's
//!   emissaries.
//! * `chorus_propagation_round_trip_seconds`: a stimulus this node's gateway wrote, from its
//!   append to the first answer of another node's emissary indexed here, less that answer's
//!   model time (its `model_ms`): two crossings of the mesh plus what the other node does
//!   around the model call (its selection of the emissary — longer when the answer comes from
//!   an escalation round —, reading its state, publishing) and this node's indexing; one
//!   sample per stimulus, all on this node's clock. One-way propagation is not measured:
//!   events carry no wall-clock time (the state never depends on a clock), and two machines'
//!   clocks cannot be compared to a millisecond. Only stimuli appended through this gateway
//!   count: a stimulus of this key that comes back from peers (a node restarted empty) is not
//!   timed.
//!
//! The counters and gauges of `/metrics` come from the node's status at each scrape
//! (`http::metrics`); only what needs a distribution is kept here.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
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
    /// The gateway's stimuli waiting for their first answer from another node.
    trips: Arc<Mutex<RoundTrips>>,
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
            trips: Default::default(),
        }
    }
}

impl Telemetry {
    /// The model-call histogram of the emissary `name`.
    pub fn model_of(&self, name: &str) -> Histogram {
        self.model
            .get_or_create_owned(&vec![("emissary".to_owned(), name.to_owned())])
    }

    /// The gateway appended `stimulus` just now: time its first answer from another node.
    pub fn wrote_stimulus(&self, stimulus: EventId) {
        let mut trips = self.trips.lock().unwrap_or_else(|e| e.into_inner());
        trips.wrote(stimulus, Instant::now());
    }
}

/// Stimuli of this node whose answers are timed (the newest; older ones are forgotten).
pub const TRACKED_STIMULI: usize = 1024;
/// How long a stimulus's answers are timed after it was written.
pub const TRACKED_FOR: Duration = Duration::from_secs(600);

/// Times the round trips of the gateway's stimuli ([`Telemetry::propagation`]) from the
/// node's feed of new events, until the node stops. `me`: this node's key (its own
/// emissaries' answers cross no network).
pub fn spawn_round_trips(node: NodeHandle, me: AuthorId, telemetry: Telemetry) {
    let mut feed = node.subscribe();
    tokio::spawn(async move {
        loop {
            match feed.recv().await {
                Ok(ev) if ev.author != me => {
                    let trip = {
                        let mut trips = telemetry.trips.lock().unwrap_or_else(|e| e.into_inner());
                        trips.answered(&ev, Instant::now())
                    };
                    if let Some(s) = trip {
                        telemetry.propagation.observe(s);
                    }
                }
                Ok(_) => {}
                // Missed events only leave some round trips out.
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
    });
}

/// The gateway's recent stimuli without an answer from another node yet, and when each was
/// appended (at most [`TRACKED_STIMULI`], none older than [`TRACKED_FOR`]).
#[derive(Debug, Default)]
struct RoundTrips {
    written: BTreeMap<EventId, Instant>,
    order: VecDeque<EventId>,
}

impl RoundTrips {
    fn wrote(&mut self, stimulus: EventId, now: Instant) {
        self.forget_old(now);
        if self.order.len() == TRACKED_STIMULI
            && let Some(oldest) = self.order.pop_front()
        {
            self.written.remove(&oldest);
        }
        if self.written.insert(stimulus, now).is_none() {
            self.order.push_back(stimulus);
        }
    }

    /// Takes another node's new event; the round trip in seconds when it is the first answer
    /// to a tracked stimulus (which is tracked no more).
    fn answered(&mut self, ev: &SignedEvent, now: Instant) -> Option<f64> {
        self.forget_old(now);
        let (re, model_ms) = answer(ev)?;
        let at = self.written.remove(&re)?;
        self.order.retain(|s| *s != re);
        let trip = now.duration_since(at).as_secs_f64() - model_ms as f64 / 1000.0;
        // A model time longer than the whole trip (a clock step, rounding) is no negative
        // latency.
        Some(trip.max(0.0))
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some(old) = self.order.front() {
            match self.written.get(old) {
                Some(t) if now.duration_since(*t) <= TRACKED_FOR => break,
                _ => {
                    self.written.remove(old);
                    self.order.pop_front();
                }
            }
        }
    }
}

/// An intent's body fields and the stimulus it answers (`re`); `None` for any other event.
pub fn intent_of(ev: &SignedEvent) -> Option<(EventId, &BTreeMap<String, Ipld>)> {
    if ev.kind != kind::INTENT {
        return None;
    }
    let Ipld::Map(m) = &ev.body else { return None };
    match m.get("re") {
        Some(Ipld::Link(c)) => Some((EventId::from_cid(c).ok()?, m)),
        _ => None,
    }
}

/// The stimulus an intent answers, and its model's time in ms.
fn answer(ev: &SignedEvent) -> Option<(EventId, u64)> {
    let (re, m) = intent_of(ev)?;
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
    fn the_first_answer_of_another_node_times_the_round_trip_less_the_model() {
        let (me, other, third) = (
            Keypair::from_seed([1; 32]),
            Keypair::from_seed([2; 32]),
            Keypair::from_seed([3; 32]),
        );
        let stimulus = event(&me, kind::STIMULUS, Ipld::String("hi".into()));
        let answer_of = |by: &Keypair, ms: i128| {
            let mut m = BTreeMap::new();
            m.insert("re".to_owned(), Ipld::Link(stimulus.id().to_cid()));
            m.insert("model_ms".to_owned(), Ipld::Integer(ms));
            event(by, kind::INTENT, Ipld::Map(m))
        };
        let mut trips = RoundTrips::default();
        let t0 = Instant::now();
        // Not written through the gateway: not timed.
        assert_eq!(trips.answered(&answer_of(&other, 0), t0), None);
        trips.wrote(stimulus.id(), t0);
        let s = trips
            .answered(&answer_of(&other, 1_500), t0 + Duration::from_millis(1_750))
            .unwrap();
        assert!((s - 0.25).abs() < 1e-9, "{s}");
        // One sample per stimulus: a second answer is not timed.
        assert_eq!(
            trips.answered(&answer_of(&third, 10), t0 + Duration::from_secs(2)),
            None
        );
        // A model time longer than the trip is no negative latency.
        trips.wrote(stimulus.id(), t0);
        assert_eq!(
            trips.answered(&answer_of(&other, 9_000), t0 + Duration::from_secs(1)),
            Some(0.0)
        );
        // After TRACKED_FOR the stimulus is forgotten.
        trips.wrote(stimulus.id(), t0);
        let late = t0 + TRACKED_FOR + Duration::from_secs(1);
        assert_eq!(trips.answered(&answer_of(&other, 0), late), None);
        assert!(trips.written.is_empty() && trips.order.is_empty());
    }

    #[test]
    fn at_most_tracked_stimuli_are_kept() {
        let mut trips = RoundTrips::default();
        let t0 = Instant::now();
        for i in 0..TRACKED_STIMULI as u64 + 10 {
            trips.wrote(EventId::of_block(&i.to_le_bytes()), t0);
        }
        assert_eq!(trips.written.len(), TRACKED_STIMULI);
        assert_eq!(trips.order.len(), TRACKED_STIMULI);
    }
}
