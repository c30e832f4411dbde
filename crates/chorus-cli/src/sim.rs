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

fn announce(sc: &Scenario, seed: u64) {
    println!(
        "== {} seed {seed} (replay: chorus sim run --scenario {} --seed {seed})",
        sc.name, sc.name
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
            file,
        } => {
            let suite = load(file)?;
            let Some(sc) = suite.get(&scenario) else {
                let names: Vec<&str> = suite.scenarios.iter().map(|s| s.name.as_str()).collect();
                bail!("no scenario {scenario:?}; there are: {}", names.join(", "));
            };
            let seed = seed.unwrap_or(sc.seed);
            announce(sc, seed);
            let sabotage = match sabotage {
                SabotageArg::None => Sabotage::None,
                SabotageArg::ArrivalOrder => Sabotage::ArrivalOrder,
                SabotageArg::DropSyncBlocks => Sabotage::DropSyncBlocks,
                SabotageArg::NoWriteGate => Sabotage::NoWriteGate,
            };
            let r = chorus_sim::run(sc, seed, sabotage);
            println!("{}", table_header());
            println!("{}", table_row(&r));
            print_details(&r);
            Ok(if r.passed() { 0 } else { 1 })
        }
        SimCmd::Suite { seeds, only, file } => {
            let suite = load(file)?;
            let mut runs: Vec<(&Scenario, u64)> = vec![];
            for sc in &suite.scenarios {
                if only.is_empty() || only.contains(&sc.name) {
                    runs.extend((0..seeds.max(1)).map(|k| (sc, sc.seed + k)));
                }
            }
            for reg in &suite.regressions {
                let Some(sc) = suite.get(&reg.scenario) else {
                    bail!("regression names no scenario {:?}", reg.scenario);
                };
                if (only.is_empty() || only.contains(&sc.name))
                    && !runs
                        .iter()
                        .any(|(s, seed)| s.name == sc.name && *seed == reg.seed)
                {
                    runs.push((sc, reg.seed));
                }
            }
            let t0 = std::time::Instant::now();
            let mut reports = vec![];
            for (sc, seed) in runs {
                announce(sc, seed);
                let r = chorus_sim::run(sc, seed, Sabotage::None);
                println!("{}", table_row(&r));
                print_details(&r);
                reports.push(r);
            }
            println!();
            println!("{}", table_header());
            for r in &reports {
                println!("{}", table_row(r));
            }
            let failed = reports.iter().filter(|r| !r.passed()).count();
            println!(
                "{} runs, {failed} failed, {:.0} s wall",
                reports.len(),
                t0.elapsed().as_secs_f64()
            );
            Ok(if failed == 0 { 0 } else { 1 })
        }
    }
}
