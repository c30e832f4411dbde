//! `chorus sim`: run the deterministic simulator's scenarios and print the oracle's verdicts.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use chorus_sim::{Report, Sabotage, Scenario, Suite, table_header, table_row};
use clap::{Subcommand, ValueEnum};

#[derive(Subcommand)]
pub enum SimCmd {
    /// Run one scenario with one seed (twice: the replay must match).
    Run {
        #[arg(long)]
        scenario: String,
        /// Default: the scenario's committed seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Break a rule on purpose, to see the oracle catch it.
        #[arg(long, value_enum, default_value = "none")]
        sabotage: SabotageArg,
        /// Full nodes fold as they go (the scenario's `fold`): with `--order final/2`, their
        /// heartbeats attest checkpoints and C9 checks the certificates they make.
        #[arg(long)]
        fold: bool,
        /// Run on this order rule instead of the scenario's own (`final/2`: finality safety
        /// C9 and liveness C8 are checked too; heartbeats every 500 ms where none were set).
        #[arg(long, value_parser = parse_order)]
        order: Option<FinalOrder>,
        /// A scenario file instead of the built-in suite.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Run every scenario on its committed seed, plus the committed regression seeds; with
    /// `--seeds N`, N seeds per scenario from the committed one on (the nightly sweep).
    Suite {
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        /// Only these scenarios.
        #[arg(long)]
        only: Vec<String>,
        /// Run on this order rule instead of the scenario's own (`final/2`: finality safety
        /// C9 and liveness C8 are checked too; heartbeats every 500 ms where none were set).
        /// Give it twice (`--order lc-cid/1 --order final/2`) to run the suite on both.
        #[arg(long, value_parser = parse_suite_order)]
        order: Vec<SuiteOrder>,
        /// Runs at once (each run is single-threaded; CI gives one per core). Each run's report
        /// is printed whole as it ends, the table in suite order at the end.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Run scenarios over many seeds on every core: one line per failure with the command that
    /// replays it, a summary per scenario, exit status 1 on any failure.
    Sweep {
        /// Seeds per scenario.
        #[arg(long, default_value_t = 20)]
        seeds: u64,
        /// The first seed (each scenario runs FROM..FROM+SEEDS); default: one picked at random
        /// and printed, so every sweep tries seeds no one tried before.
        #[arg(long)]
        from: Option<u64>,
        /// Only these scenarios (default: all).
        #[arg(long)]
        only: Vec<String>,
        /// Seeds per scenario for these scenarios instead, as NAME=N (e.g. posterity=20).
        #[arg(long, value_parser = parse_override)]
        seeds_for: Vec<(String, u64)>,
        /// Worker threads (default: every core).
        #[arg(long)]
        jobs: Option<usize>,
        /// Also replay every run to check C6 (twice the work).
        #[arg(long)]
        replay: bool,
        /// Run on this order rule instead of the scenario's own (`final/2`: finality safety
        /// C9 and liveness C8 are checked too; heartbeats every 500 ms where none were set).
        #[arg(long, value_parser = parse_order)]
        order: Option<FinalOrder>,
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// List the scenarios.
    List {
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SabotageArg {
    None,
    ArrivalOrder,
    DropSyncBlocks,
    NoWriteGate,
    NoOwnGossip,
    LightAckAtOnce,
    NoHeartbeats,
    /// final/2 with a quorum of half the committee (C9 finality safety must fail).
    QuorumHalf,
    /// final/2 certificates of one member's word (C9 must fail on a false attestation).
    CertifyAlone,
    /// final/2 committee votes carried by one member (C9 must fail on the adversary's vote).
    VoteAlone,
    /// Take every peer's word in sync (C10 must fail against the `liar`).
    TrustSyncClaims,
    /// Checks of a node's own chain wait for the two-minute request timeout (C10 must fail
    /// against the `liar`, which never answers them).
    NoOwnCheckStall,
    /// Every key a member for the pending set (C4 must fail on the stranger flood).
    TrustStrangers,
    /// Membership by arrival order (C1 must fail on the admin fork).
    MembershipArrivalOrder,
    /// kairos/3 without its guards against a hostile writer (C11 must fail on the unasked
    /// answers, the slot fill and the token bombs).
    UnguardedMachine,
    /// No Lamport clock check (C4 must fail on the low-Lamport events).
    AnyLamport,
    /// Strangers' requests without their shared budget (C4 must fail on the sybil requests).
    NoStrangerBudget,
    /// Order by event id alone, Lamport clocks ignored (C3 must fail).
    OrderWithoutLamport,
}

/// `--order final/2` (what `chorus init --order final` makes) or `final/1`: the rules a
/// scenario can be switched to (absent: `lc-cid/1`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FinalOrder(pub &'static str);

fn parse_order(s: &str) -> Result<FinalOrder, String> {
    match s {
        chorus_core::genesis::ORDER_FINAL_2 | "final" => {
            Ok(FinalOrder(chorus_core::genesis::ORDER_FINAL_2))
        }
        chorus_core::genesis::ORDER_FINAL_1 => Ok(FinalOrder(chorus_core::genesis::ORDER_FINAL_1)),
        _ => Err(format!(
            "order {s:?}: only {} or {} (scenarios are lc-cid/1 unless they say otherwise)",
            chorus_core::genesis::ORDER_FINAL_2,
            chorus_core::genesis::ORDER_FINAL_1
        )),
    }
}

/// An order a suite runs on: the scenarios' own (`lc-cid/1`) or switched to `final/2`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SuiteOrder {
    Own,
    Final(FinalOrder),
}

fn parse_suite_order(s: &str) -> Result<SuiteOrder, String> {
    match s {
        chorus_core::genesis::ORDER_LC_CID_1 | "lc-cid" => Ok(SuiteOrder::Own),
        _ => parse_order(s).map(SuiteOrder::Final).map_err(|_| {
            format!(
                "order {s:?}: {}, {} or {}",
                chorus_core::genesis::ORDER_LC_CID_1,
                chorus_core::genesis::ORDER_FINAL_2,
                chorus_core::genesis::ORDER_FINAL_1
            )
        }),
    }
}

/// The suite, every scenario switched to `final/2` when asked.
fn load_on(file: Option<PathBuf>, order: Option<FinalOrder>) -> Result<Suite> {
    let mut suite = load(file)?;
    if let Some(FinalOrder(id)) = order {
        for sc in &mut suite.scenarios {
            *sc = sc.on_order(id);
        }
    }
    Ok(suite)
}

fn parse_override(s: &str) -> Result<(String, u64), String> {
    let (name, n) = s.split_once('=').ok_or("expected NAME=N")?;
    Ok((
        name.to_string(),
        n.parse().map_err(|e| format!("{n}: {e}"))?,
    ))
}

/// `chorus sim sweep`: the runs go to `jobs` threads through a shared index; reports come back
/// in completion order and failures are printed as they come.
fn sweep(runs: Vec<(&Scenario, u64)>, jobs: usize, replay: bool) -> Vec<chorus_sim::Report> {
    use std::sync::{Mutex, atomic::AtomicUsize, atomic::Ordering};
    let next = AtomicUsize::new(0);
    let done = Mutex::new(Vec::with_capacity(runs.len()));
    let total = runs.len();
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((sc, seed)) = runs.get(i) else {
                        return;
                    };
                    let r = chorus_sim::run_with(sc, *seed, Sabotage::None, replay);
                    let mut done = done.lock().expect("no worker panics while holding it");
                    if !r.passed() {
                        println!(
                            "FAIL {}  (replay: chorus sim run --scenario {} --seed {})",
                            table_row(&r),
                            r.scenario,
                            r.seed
                        );
                    }
                    done.push(r);
                    let n = done.len();
                    if n % (total / 20).max(1) == 0 || n == total {
                        eprintln!("sweep: {n}/{total} runs done ({})", tally(&done, &runs));
                    }
                }
            });
        }
    });
    done.into_inner().expect("the workers are done")
}

/// The runs of every scenario taken in turn (the first seed of each, then the second…), so a
/// sweep stopped part-way has tried every scenario on as many seeds as it could.
fn interleave<T>(per_scenario: Vec<Vec<T>>) -> Vec<T> {
    let mut lists: Vec<std::vec::IntoIter<T>> =
        per_scenario.into_iter().map(Vec::into_iter).collect();
    let mut out = vec![];
    loop {
        let before = out.len();
        out.extend(lists.iter_mut().filter_map(Iterator::next));
        if out.len() == before {
            return out;
        }
    }
}

/// Runs done and failed per scenario so far, e.g. `wipe 40/200, crash 40/200 (1 failed)`.
fn tally(done: &[chorus_sim::Report], runs: &[(&Scenario, u64)]) -> String {
    let mut by: std::collections::BTreeMap<&str, (usize, usize, usize)> = Default::default();
    for (sc, _) in runs {
        by.entry(sc.name.as_str()).or_default().1 += 1;
    }
    for r in done {
        if let Some(t) = by.get_mut(r.scenario.as_str()) {
            t.0 += 1;
            t.2 += usize::from(!r.passed());
        }
    }
    by.iter()
        .map(|(name, (n, of, failed))| match failed {
            0 => format!("{name} {n}/{of}"),
            f => format!("{name} {n}/{of} ({f} failed)"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn load(file: Option<PathBuf>) -> Result<Suite> {
    match file {
        None => Ok(Suite::builtin()),
        Some(f) => {
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            Suite::parse(&text)
                .map_err(|e| anyhow::anyhow!(e))
                .with_context(|| format!("parsing {}", f.display()))
        }
    }
}

fn print_details(r: &Report) {
    for n in &r.notes {
        println!("    {n}");
    }
    if r.findings.lost_to_wipe > 0 {
        println!(
            "    {} acknowledged writes were only on a disk that was then wiped (not failures)",
            r.findings.lost_to_wipe
        );
    }
    for v in r.findings.verdicts.iter().chain(&r.extra) {
        match &v.failure {
            None => println!("    ok    {}", v.check),
            Some(why) => println!("    FAIL  {}: {why}", v.check),
        }
    }
    if let Some(h) = r.findings.state_hash {
        println!(
            "    state_hash {} over {} events; {} messages; trace {}",
            hex::encode(h),
            r.findings.events_in_order,
            r.messages,
            &hex::encode(r.trace)[..16]
        );
    }
}

fn announce(sc: &Scenario, seed: u64, order: Option<FinalOrder>) {
    println!(
        "== {} seed {seed} (replay: chorus sim run --scenario {} --seed {seed}{})",
        sc.name,
        sc.name,
        order.map_or(String::new(), |FinalOrder(id)| format!(" --order {id}"))
    );
    // The derived options, so a run can be reproduced from its output alone.
    let opts = toml::to_string(sc).unwrap_or_default();
    for line in opts.lines().filter(|l| !l.is_empty()) {
        println!("   | {line}");
    }
}

pub fn run(cmd: SimCmd) -> Result<i32> {
    match cmd {
        SimCmd::List { file } => {
            for s in load(file)?.scenarios {
                println!(
                    "{:<12} seed {:>4}  {} nodes, {} events",
                    s.name,
                    s.seed,
                    s.nodes(),
                    s.events
                );
            }
            Ok(0)
        }
        SimCmd::Run {
            scenario,
            seed,
            sabotage,
            fold,
            order,
            file,
        } => {
            let suite = load_on(file, order)?;
            let Some(sc) = suite.get(&scenario) else {
                let names: Vec<&str> = suite.scenarios.iter().map(|s| s.name.as_str()).collect();
                bail!("no scenario {scenario:?}; there are: {}", names.join(", "));
            };
            let mut sc = sc.clone();
            sc.fold |= fold;
            let sc = &sc;
            let seed = seed.unwrap_or(sc.seed);
            announce(sc, seed, order);
            let sabotage = match sabotage {
                SabotageArg::None => Sabotage::None,
                SabotageArg::ArrivalOrder => Sabotage::ArrivalOrder,
                SabotageArg::DropSyncBlocks => Sabotage::DropSyncBlocks,
                SabotageArg::NoWriteGate => Sabotage::NoWriteGate,
                SabotageArg::NoOwnGossip => Sabotage::NoOwnGossip,
                SabotageArg::LightAckAtOnce => Sabotage::LightAckAtOnce,
                SabotageArg::QuorumHalf => Sabotage::QuorumHalf,
                SabotageArg::CertifyAlone => Sabotage::CertifyAlone,
                SabotageArg::VoteAlone => Sabotage::VoteAlone,
                SabotageArg::TrustSyncClaims => Sabotage::TrustSyncClaims,
                SabotageArg::NoOwnCheckStall => Sabotage::NoOwnCheckStall,
                SabotageArg::TrustStrangers => Sabotage::TrustStrangers,
                SabotageArg::MembershipArrivalOrder => Sabotage::MembershipArrivalOrder,
                SabotageArg::UnguardedMachine => Sabotage::UnguardedMachine,
                SabotageArg::AnyLamport => Sabotage::AnyLamport,
                SabotageArg::NoHeartbeats => Sabotage::NoHeartbeats,
                SabotageArg::OrderWithoutLamport => Sabotage::OrderWithoutLamport,
                SabotageArg::NoStrangerBudget => Sabotage::NoStrangerBudget,
            };
            let r = chorus_sim::run(sc, seed, sabotage);
            println!("{}", table_header());
            println!("{}", table_row(&r));
            print_details(&r);
            Ok(if r.passed() { 0 } else { 1 })
        }
        SimCmd::Sweep {
            seeds,
            from,
            only,
            seeds_for,
            jobs,
            replay,
            order,
            file,
        } => {
            let suite = load_on(file, order)?;
            for name in only.iter().chain(seeds_for.iter().map(|(n, _)| n)) {
                if suite.get(name).is_none() {
                    bail!("no scenario {name:?}");
                }
            }
            // Not for the state: only where the seeds start, printed for the record.
            let from = from.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos() as u64 ^ d.as_secs())
                    % 1_000_000_000
            });
            let jobs = jobs.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            let mut per_scenario: Vec<Vec<(&Scenario, u64)>> = vec![];
            for sc in &suite.scenarios {
                if !only.is_empty() && !only.contains(&sc.name) {
                    continue;
                }
                let n = seeds_for
                    .iter()
                    .find(|(name, _)| *name == sc.name)
                    .map_or(seeds, |(_, n)| *n);
                per_scenario.push((from..from + n).map(|seed| (sc, seed)).collect());
            }
            let runs = interleave(per_scenario);
            println!(
                "sweep: {} runs, seeds from {from}, {jobs} threads{}",
                runs.len(),
                if replay { ", each replayed (C6)" } else { "" }
            );
            let t0 = std::time::Instant::now();
            let reports = sweep(runs, jobs, replay);
            println!();
            println!(
                "{:<11} {:>5} {:>7} {:>10} {:>12}",
                "scenario", "runs", "failed", "mean wall", "lost to wipe"
            );
            let mut names: Vec<&str> = reports.iter().map(|r| r.scenario.as_str()).collect();
            names.dedup();
            names.sort();
            names.dedup();
            for name in names {
                let rs: Vec<_> = reports.iter().filter(|r| r.scenario == name).collect();
                let failed = rs.iter().filter(|r| !r.passed()).count();
                let wall = rs.iter().map(|r| r.wall_s).sum::<f64>() / rs.len() as f64;
                let wiped: u64 = rs.iter().map(|r| r.findings.lost_to_wipe).sum();
                println!(
                    "{name:<11} {:>5} {failed:>7} {wall:>9.1}s {wiped:>12}",
                    rs.len()
                );
            }
            let failed: Vec<_> = reports.iter().filter(|r| !r.passed()).collect();
            println!(
                "{} runs, {} failed, {:.0} s wall (seeds {from}..; repeat with --from {from})",
                reports.len(),
                failed.len(),
                t0.elapsed().as_secs_f64()
            );
            for r in &failed {
                println!(
                    "  chorus sim run --scenario {} --seed {}{}   # {}",
                    r.scenario,
                    r.seed,
                    order.map_or(String::new(), |FinalOrder(id)| format!(" --order {id}")),
                    r.failures().map(|v| v.check).collect::<Vec<_>>().join(", ")
                );
            }
            Ok(if failed.is_empty() { 0 } else { 1 })
        }
        SimCmd::Suite {
            seeds,
            only,
            order,
            jobs,
            file,
        } => {
            let mut orders = order;
            if orders.is_empty() {
                orders.push(SuiteOrder::Own);
            }
            // Each order once, in the order given ("final" and "final/2" are one).
            let mut seen = vec![];
            orders.retain(|o| {
                let fresh = !seen.contains(o);
                seen.push(*o);
                fresh
            });
            let mut suites = vec![];
            for o in orders {
                let on = match o {
                    SuiteOrder::Final(f) => Some(f),
                    SuiteOrder::Own => None,
                };
                suites.push((on, load_on(file.clone(), on)?));
            }
            let mut runs: Vec<SuiteRun> = vec![];
            for (on, suite) in &suites {
                runs.extend(suite_runs(suite, seeds, &only, *on)?);
            }
            let t0 = std::time::Instant::now();
            let reports = run_suite(&runs, jobs);
            for (on, _) in &suites {
                println!();
                if suites.len() > 1 {
                    println!("-- on {}", order_name(*on));
                }
                println!("{}", table_header());
                for (run, r) in runs.iter().zip(&reports) {
                    if run.order == *on {
                        println!("{}", table_row(r));
                    }
                }
            }
            let failed = reports.iter().filter(|r| !r.passed()).count();
            println!(
                "{} runs, {failed} failed, {:.0} s wall ({} at once)",
                reports.len(),
                t0.elapsed().as_secs_f64(),
                jobs.max(1)
            );
            Ok(if failed == 0 { 0 } else { 1 })
        }
    }
}

/// One run of `chorus sim suite`: a scenario, a seed, the order it runs on.
struct SuiteRun<'a> {
    scenario: &'a Scenario,
    seed: u64,
    order: Option<FinalOrder>,
}

fn order_name(order: Option<FinalOrder>) -> &'static str {
    match order {
        Some(FinalOrder(id)) => id,
        None => chorus_core::genesis::ORDER_LC_CID_1,
    }
}

/// The suite's runs on one order: every scenario (or `only` those) on `seeds` seeds from its
/// committed one, then each committed regression seed not already among them.
fn suite_runs<'a>(
    suite: &'a Suite,
    seeds: u64,
    only: &[String],
    order: Option<FinalOrder>,
) -> Result<Vec<SuiteRun<'a>>> {
    let picked = |name: &String| only.is_empty() || only.contains(name);
    let mut runs: Vec<SuiteRun> = vec![];
    for sc in suite.scenarios.iter().filter(|sc| picked(&sc.name)) {
        runs.extend((0..seeds.max(1)).map(|k| SuiteRun {
            scenario: sc,
            seed: sc.seed + k,
            order,
        }));
    }
    for reg in &suite.regressions {
        let Some(sc) = suite.get(&reg.scenario) else {
            bail!("regression names no scenario {:?}", reg.scenario);
        };
        if picked(&sc.name)
            && !runs
                .iter()
                .any(|r| r.scenario.name == sc.name && r.seed == reg.seed)
        {
            runs.push(SuiteRun {
                scenario: sc,
                seed: reg.seed,
                order,
            });
        }
    }
    Ok(runs)
}

/// Runs the suite on `jobs` threads. The largest scenarios (nodes × events) start first, so
/// the longest run does not begin last and leave the other threads idle at the end. With more
/// than one job each run's announcement and report are printed together when it ends; the
/// reports come back in the runs' order.
fn run_suite(runs: &[SuiteRun], jobs: usize) -> Vec<Report> {
    use std::sync::{Mutex, atomic::AtomicUsize, atomic::Ordering};
    let mut by_size: Vec<usize> = (0..runs.len()).collect();
    if jobs > 1 {
        // Ties: final/2 first, the slower of the two orders.
        by_size.sort_by_key(|&i| {
            let sc = runs[i].scenario;
            (
                std::cmp::Reverse(sc.nodes() as u64 * sc.events),
                runs[i].order.is_none(),
            )
        });
    }
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<Option<Report>>> = Mutex::new(runs.iter().map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                while let Some(&i) = by_size.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let run = &runs[i];
                    // One at a time: announced before it runs (a run that hangs is named).
                    if jobs <= 1 {
                        announce(run.scenario, run.seed, run.order);
                    }
                    let r = chorus_sim::run(run.scenario, run.seed, Sabotage::None);
                    let mut done = done.lock().expect("no worker panics while holding it");
                    if jobs > 1 {
                        announce(run.scenario, run.seed, run.order);
                    }
                    println!("{}", table_row(&r));
                    print_details(&r);
                    done[i] = Some(r);
                }
            });
        }
    });
    done.into_inner()
        .expect("the workers are done")
        .into_iter()
        .map(|r| r.expect("every run ran"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::interleave;

    #[test]
    fn a_sweep_takes_every_scenario_in_turn() {
        let runs = interleave(vec![vec!["a1", "a2", "a3"], vec!["b1"], vec!["c1", "c2"]]);
        assert_eq!(runs, ["a1", "b1", "c1", "a2", "c2", "a3"]);
        assert!(interleave::<u8>(vec![]).is_empty());
    }
}
