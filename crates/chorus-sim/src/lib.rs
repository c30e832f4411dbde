//! # chorus-sim
//!
//! A deterministic discrete-event simulator of a Chorus mesh. Each simulated node runs the real
//! `chorus-core` code — event validation, the timeline and its total order, the `Syncer`'s
//! anti-entropy decisions, the `serve` function — with the real KAIROS machine, over an
//! in-memory store and a virtual network with per-link latency and jitter, loss, duplication,
//! reordering, partitions (halves, bridge, one-way, ring), crashes that lose what the node had
//! not committed, restarts with wiped stores, pauses, and adversarial members. Time and
//! randomness come only from the run's seed: the same seed and scenario replay the same run,
//! bit for bit ([`oracle`] C6).
//!
//! What is not simulated: libp2p itself (connections are up or down per link; gossip is a
//! flood to overlay neighbours with a seen-cache, like gossipsub's mesh), disk I/O timing, and
//! the light-node write path. The real-process tests cover those.

pub mod node;
pub mod oracle;
pub mod rng;
pub mod scenario;
pub mod world;

use std::time::Instant;

pub use node::Sabotage;
pub use scenario::{Scenario, Suite};

use crate::{node::NodeIx, oracle::Findings, world::World};

/// Everything a run reports (one row of the suite's table).
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub nodes: usize,
    /// Acknowledged writes (honest).
    pub events: u64,
    pub faults: u64,
    pub sim_s: f64,
    /// From the last write/fault to agreement.
    pub converge_s: Option<f64>,
    pub findings: Findings,
    pub trace: [u8; 32],
    pub messages: u64,
    pub wall_s: f64,
    /// Scenario-specific figures and checks (disparity ratio, C6, …).
    pub notes: Vec<String>,
    /// Extra verdicts from the runner (C6, the disparity checks).
    pub extra: Vec<oracle::Verdict>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }
    pub fn failures(&self) -> impl Iterator<Item = &oracle::Verdict> {
        self.findings
            .verdicts
            .iter()
            .chain(&self.extra)
            .filter(|v| v.failure.is_some())
    }
}

/// One simulation of `sc` with `seed`, judged by the oracle (C1–C5, C7 with light nodes, C8
/// with heartbeats).
pub fn simulate(sc: &Scenario, seed: u64, sabotage: Sabotage) -> (Report, World) {
    let t0 = Instant::now();
    let mut w = World::new(sc, seed, sabotage);
    w.run();
    let findings = oracle::judge(&mut w);
    let mut notes = vec![];
    if w.stats.crashes > 0 {
        notes.push(format!(
            "{} crashes; {} writes were in a crashed node's queue, never acknowledged (lost by design)",
            w.stats.crashes, w.stats.writes_lost_in_crash
        ));
    }
    if w.stats.replays_new_to_receiver > 0 {
        notes.push(format!(
            "{} replayed blocks reached a node that lacked them (wiped): valid deliveries, \
             not judged as replays",
            w.stats.replays_new_to_receiver
        ));
    }
    if sc.classes.iter().any(|c| c.light && c.count > 0) {
        let light_acked = w.acked.values().filter(|(n, _)| w.nodes[*n].light).count();
        let unacked = w
            .light_signed
            .keys()
            .filter(|id| !w.acked.contains_key(id))
            .count();
        notes.push(format!(
            "light nodes: {light_acked} writes acknowledged once a full node stored them, \
             {unacked} signed but never acknowledged (crashed or late: {} answered late); {} \
             blocks forgotten behind their horizons",
            w.stats.light_writes_late, findings.light_pruned_blocks
        ));
    }
    if sc.order.is_some() {
        notes.push(format!(
            "final/1: {} live honest nodes hold a finality certificate (the newest covers {} \
             positions)",
            findings.certified_nodes, findings.certified_positions
        ));
    }
    let r = Report {
        scenario: sc.name.clone(),
        seed,
        nodes: sc.nodes(),
        events: w.acked_honest(),
        faults: w.stats.faults,
        sim_s: w.now as f64 / 1000.0,
        converge_s: w
            .converged_at
            .zip(w.quiet_since)
            .map(|(c, q)| (c - q) as f64 / 1000.0),
        findings,
        trace: w.trace_digest(),
        messages: w.stats.messages,
        wall_s: t0.elapsed().as_secs_f64(),
        notes,
        extra: vec![],
    };
    (r, w)
}

/// A full scenario run: the simulation, its replay with the same seed (C6) unless the scenario
/// leaves it out, and the scenario's own comparisons (the disparity baseline).
pub fn run(sc: &Scenario, seed: u64, sabotage: Sabotage) -> Report {
    let mut r = run_with(sc, seed, sabotage, sc.replay);
    if !sc.replay {
        r.notes
            .push("C6 not checked: the scenario sets `replay = false`".into());
    }
    r
}

/// [`run`], with the replay (C6) only when `replay` is set: a sweep over many seeds on every
/// core leaves it out (C6 is a property of the simulator, checked by every `run` and `suite`).
pub fn run_with(sc: &Scenario, seed: u64, sabotage: Sabotage, replay: bool) -> Report {
    let (mut r, w) = if replay {
        // The replay runs beside the first run (the two share nothing; each is deterministic).
        let ((mut r, w), (again, _)) = std::thread::scope(|s| {
            let replay = s.spawn(|| simulate(sc, seed, sabotage));
            let first = simulate(sc, seed, sabotage);
            (first, replay.join().expect("the replay thread"))
        });
        let same = again.trace == r.trace && again.findings.state_hash == r.findings.state_hash;
        r.extra.push(oracle::Verdict {
            check: "C6 same seed, same run",
            failure: (!same).then(|| {
                format!(
                    "trace {} vs {}",
                    &hex::encode(r.trace)[..12],
                    &hex::encode(again.trace)[..12]
                )
            }),
        });
        r.wall_s = r.wall_s.max(again.wall_s);
        (r, w)
    } else {
        simulate(sc, seed, sabotage)
    };
    if sc.compare_without_adversary {
        adversary_cost(sc, seed, &w, &mut r);
    }
    if let Some(slow) = &sc.baseline_without {
        disparity(sc, seed, slow, &w, &mut r);
    }
    r
}

/// The fast writers' append rate with and without the slow class (≥ 0.95), and every slow
/// write in the converged order, not excluded.
fn disparity(sc: &Scenario, seed: u64, slow: &str, with: &World, r: &mut Report) {
    let slow_class = sc.classes.iter().position(|c| c.name == slow);
    let (base_report, without) = simulate(&sc.without(slow), seed, Sabotage::None);
    r.wall_s += base_report.wall_s;
    let fast_acks = |w: &World, slow_class: Option<usize>| -> Vec<u64> {
        let mut t: Vec<u64> = w
            .acked
            .values()
            .filter(|(n, _)| Some(w.nodes[*n].class) != slow_class && !w.nodes[*n].byzantine)
            .map(|(_, t)| *t)
            .collect();
        t.sort();
        t
    };
    let a = fast_acks(with, slow_class);
    let b = fast_acks(&without, None);
    let (rate_a, rate_b, ratio) = append_rates(&a, &b);
    r.notes.push(format!(
        "fast writers' append rate with/without {slow}: {:.2}/{:.2} events/s = {ratio:.3}",
        rate_a * 1000.0,
        rate_b * 1000.0
    ));
    let mut fails = vec![];
    if ratio < 0.95 {
        fails.push(format!("append-rate ratio {ratio:.3} < 0.95"));
    }
    if !base_report.passed() {
        fails.push("the baseline run (without the slow class) failed its own checks".into());
    }
    let slow_ids: Vec<_> = with
        .acked
        .iter()
        .filter(|(_, (n, _))| Some(with.nodes[*n].class) == slow_class)
        .map(|(id, _)| *id)
        .collect();
    let mut orphaned = 0;
    for n in with.honest().filter(|n| n.live()) {
        orphaned += slow_ids
            .iter()
            .filter(|id| !n.tl().contains(id) || n.tl().is_excluded(id))
            .count();
    }
    r.notes.push(format!(
        "{} slow-node writes, {orphaned} missing or excluded across replicas",
        slow_ids.len()
    ));
    if slow_ids.is_empty() {
        fails.push("the slow class wrote nothing".into());
    }
    if orphaned > 0 {
        fails.push(format!("{orphaned} slow-node writes orphaned"));
    }
    r.extra.push(oracle::Verdict {
        check: "disparity",
        failure: (!fails.is_empty()).then(|| fails.join("; ")),
    });
}

/// What the adversaries cost the honest nodes (`compare_without_adversary`): the same seed
/// without them must show an honest append rate at most 10 % higher and a convergence time at
/// most twice as short (or one check interval, the measure's grain), and no honest node may
/// have banned another.
fn adversary_cost(sc: &Scenario, seed: u64, with: &World, r: &mut Report) {
    let (base_report, without) = simulate(&sc.without_adversary(), seed, Sabotage::None);
    r.wall_s += base_report.wall_s;
    let honest_acks = |w: &World| -> Vec<u64> {
        let mut t: Vec<u64> = w
            .acked
            .values()
            .filter(|(n, _)| !w.nodes[*n].byzantine)
            .map(|(_, t)| *t)
            .collect();
        t.sort();
        t
    };
    let (a, b) = (honest_acks(with), honest_acks(&without));
    let (rate_a, rate_b, ratio) = append_rates(&a, &b);
    let mut fails = vec![];
    if ratio < 0.90 {
        fails.push(format!("honest append rate ratio {ratio:.3} < 0.90"));
    }
    let grain = world::CHECK_MS as f64 / 1000.0;
    match (r.converge_s, base_report.converge_s) {
        (Some(c), Some(base)) => {
            r.notes.push(format!(
                "with/without the adversaries: honest append rate {:.2}/{:.2} events/s = \
                 {ratio:.3}; convergence {c:.1}/{base:.1} s",
                rate_a * 1000.0,
                rate_b * 1000.0
            ));
            if c > (2.0 * base).max(base + grain) {
                fails.push(format!(
                    "convergence {c:.1} s > 2 × {base:.1} s without the adversaries"
                ));
            }
        }
        (None, _) => fails.push("no convergence with the adversaries".into()),
        (_, None) => fails.push("no convergence without the adversaries".into()),
    }
    if !base_report.passed() {
        fails.push("the run without the adversaries failed its own checks".into());
    }
    let honest: Vec<NodeIx> = with.honest().map(|n| n.ix).collect();
    for n in with.honest().filter(|n| n.live()) {
        let banned: Vec<NodeIx> = honest
            .iter()
            .copied()
            .filter(|p| *p != n.ix && n.syncer().is_banned(p))
            .collect();
        if !banned.is_empty() {
            fails.push(format!("node {} banned honest {banned:?}", n.ix));
        }
    }
    r.extra.push(oracle::Verdict {
        check: "adversary cost",
        failure: (!fails.is_empty()).then(|| fails.join("; ")),
    });
}

/// The suite's table header and one row per report.
pub fn table_header() -> String {
    format!(
        "{:<11} {:>6} {:>5} {:>6} {:>6} {:>8} {:>9} {:>21} {:>8} {:>7} {}",
        "scenario",
        "seed",
        "nodes",
        "events",
        "faults",
        "sim s",
        "conv s",
        "lost/unexp/dup",
        "rejected",
        "wall s",
        "result"
    )
}

pub fn table_row(r: &Report) -> String {
    let f = &r.findings;
    let result = if r.passed() {
        "PASS".to_string()
    } else {
        let failed: Vec<&str> = r.failures().map(|v| v.check).collect();
        format!("FAIL ({})", failed.join(", "))
    };
    format!(
        "{:<11} {:>6} {:>5} {:>6} {:>6} {:>8.1} {:>9} {:>21} {:>8} {:>7.1} {}",
        r.scenario,
        r.seed,
        r.nodes,
        r.events,
        r.faults,
        r.sim_s,
        r.converge_s.map_or("—".into(), |c| format!("{c:.1}")),
        format!("{}/{}/{}", f.lost, f.unexpected, f.duplicated),
        f.rejected,
        r.wall_s,
        result
    )
}

/// Two runs' append rates (events per simulated ms) over their common writing window — until
/// the earlier run's last acknowledged write — and the first's ratio to the second's. `a` and
/// `b` are sorted acknowledgment times.
fn append_rates(a: &[u64], b: &[u64]) -> (f64, f64, f64) {
    let window = a
        .last()
        .copied()
        .unwrap_or(0)
        .min(b.last().copied().unwrap_or(0));
    let rate = |t: &[u64]| t.iter().filter(|x| **x <= window).count() as f64 / window.max(1) as f64;
    let (ra, rb) = (rate(a), rate(b));
    (ra, rb, ra / rb.max(f64::MIN_POSITIVE))
}
