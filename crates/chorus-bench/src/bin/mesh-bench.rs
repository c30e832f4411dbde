//! Mesh benchmarks with real release `chorus node` processes on 127.0.0.x, for
//! `docs/benchmarks.md`:
//!
//! * `propagation [NODES] [EVENTS]` — a new event, appended through one node's API, until every
//!   node holds it (polled through each node's API every 1 ms): p50 / p99 / max.
//! * `catchup [EVENTS] [counter|kairos]` — a fresh node joins a peer holding EVENTS events: time
//!   until it holds them all (verified, durable), and until its `state_hash` equals the peer's.
//! * `idle` — RSS of idle full nodes (a fresh timeline, and one holding 100 000 events).
//! * `light [EVENTS] [RUNNER...]` — a light node in memory (`--light --in-memory`) catches up
//!   with a full node holding EVENTS KAIROS events: peak RSS (VmHWM) and RSS after 10 s idle.
//!   RUNNER (e.g. `qemu-arm -cpu arm1176 dist/arm-unknown-linux-musleabihf/chorus`) runs the
//!   light node's binary.
//! * `light-restart [EVENTS]` — a light node on disk (`--light`) holding EVENTS KAIROS events
//!   is SIGKILLed and started again: time from the new process's start until it is current
//!   (the full node's events and `state_hash`, no fold in flight), its peak RSS; beside it its
//!   first start on an empty disk (every event from the full node), which is what every start
//!   of a light node in memory (`--in-memory`) costs.
//! * `soak [NODES] [MINUTES]` — NODES processes under a trickle of writes: every 10 s all alive,
//!   RSS, peers; convergence at the end.
//!
//! * `gateway [REQUESTS] [CONCURRENT]` — one node with a fast (2 s) and a slow (45 s) scripted
//!   emissary: `POST /v1/swarm/intent` latency (REQUESTS sequential, each must come back with
//!   the fast emissary's intent while the slow one still runs); then CONCURRENT simultaneous
//!   `GET /v1/status` from one async client thread, each on its own connection: a cold burst
//!   (all connecting at once), then warm bursts on the kept-alive connections: p50 / p99 / max.
//!
//! * `finality [NODES] [WRITES] [HEARTBEAT_MS]` — a `final/1` timeline made as a user makes it
//!   (`chorus init --order final`, `member add`), NODES nodes heartbeating every HEARTBEAT_MS
//!   (default 500, as `chorus swarm`): heartbeats per minute while the mesh is idle and final;
//!   then WRITES writes, one at a time from rotating writers, each timed from its
//!   acknowledgment until every node reports it final (p50 / p99 / max); heartbeats per write.
//! * `order-append [NODES] [EVENTS] [ROUNDS]` — append throughput (single-event `POST
//!   /v1/events`, one client) on a NODES-node mesh heartbeating every 500 ms, on a `lc-cid/1`
//!   timeline and on a `final/1` one, ROUNDS alternations in one run: what ordering by quorum
//!   costs a writer.
//!
//! * `snapshot-join [EVENTS]` — a `final/2` timeline of EVENTS counter events (one member: a
//!   committee of one certifies alone); a fresh full node started with the member's newest
//!   certified snapshot (`--from-snapshot`): time from its start until it serves the certified
//!   state, until its replay of the whole history agrees, its peak RSS; and beside it, in the
//!   same run, a fresh node without the snapshot: time until it has the same state.
//!
//! Build first: `cargo build --release -p chorus-cli -p chorus-bench`, then
//! `target/release/mesh-bench NAME`. The `chorus` binary is taken from the same directory.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use chorus_harness::{NodeCommand, NodeProcess};
use serde_json::{Value, json};

fn chorus_bin() -> Result<PathBuf> {
    let p = std::env::current_exe()?.with_file_name("chorus");
    if !p.exists() {
        bail!(
            "{} not found: run `cargo build --release -p chorus-cli -p chorus-bench` first",
            p.display()
        );
    }
    Ok(p)
}

fn run(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(chorus_bin()?)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("chorus {args:?} failed");
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(120)))
        .http_status_as_error(false)
        .build()
        .new_agent()
}

fn get(agent: &ureq::Agent, api: &str, path: &str) -> Option<Value> {
    let mut r = agent.get(format!("http://{api}{path}")).call().ok()?;
    if !r.status().is_success() {
        return None;
    }
    serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()
}

fn post(agent: &ureq::Agent, api: &str, body: &Value) -> Result<Value> {
    let mut r = agent
        .post(format!("http://{api}/v1/events"))
        .header("content-type", "application/json")
        .send(body.to_string())?;
    let text = r.body_mut().read_to_string()?;
    if !r.status().is_success() {
        bail!("append: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

type Node = NodeProcess;

/// A release `chorus node` on `dir`, listening on `ip`, bootstrapping from `boot`.
fn node(dir: &Path, ip: &str, boot: Option<&str>) -> Result<NodeCommand> {
    let boot: Vec<String> = boot.into_iter().map(str::to_string).collect();
    Ok(NodeCommand::new(chorus_bin()?, dir, ip)
        .bootstrap(&boot)
        .ready_within(Duration::from_secs(120)))
}

/// `n` data dirs, all keys writers, the first holding the genesis.
fn timeline(root: &Path, n: usize, machine: &str) -> Result<Vec<PathBuf>> {
    let dirs: Vec<PathBuf> = (0..n).map(|i| root.join(format!("n{i}"))).collect();
    run(&dirs[0], &["init", "--machine", machine, "--name", "bench"])?;
    for d in &dirs[1..] {
        let k = run(d, &["key"])?;
        run(&dirs[0], &["member", "add", k.trim(), "--role", "writer"])?;
    }
    Ok(dirs)
}

fn mesh(dirs: &[PathBuf], base_ip: u8) -> Result<Vec<Node>> {
    let n0 = node(&dirs[0], &format!("127.0.1.{base_ip}"), None)?.start()?;
    let boot = n0.addr.clone();
    let mut nodes = vec![n0];
    for (i, d) in dirs.iter().enumerate().skip(1) {
        run(d, &["join", &boot])?;
        nodes.push(node(d, &format!("127.0.1.{}", base_ip as usize + i), Some(&boot))?.start()?);
    }
    Ok(nodes)
}

fn wait_peers(nodes: &[Node], k: usize, within: Duration) -> Result<()> {
    let a = agent();
    let deadline = Instant::now() + within;
    loop {
        let ok = nodes.iter().all(|n| {
            get(&a, &n.api, "/v1/status")
                .is_some_and(|s| s["peers"].as_array().is_some_and(|p| p.len() >= k))
        });
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nodes did not reach {k} peers");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn propagation(nodes_n: usize, events: usize) -> Result<()> {
    let root = tempfile::tempdir()?;
    let dirs = timeline(root.path(), nodes_n, "kairos")?;
    let nodes = mesh(&dirs, 10)?;
    wait_peers(&nodes, (nodes_n - 1).min(5), Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(3)); // let gossipsub build its mesh
    let a = agent();
    let mut to_all = vec![];
    for e in 0..events {
        let w = e % nodes_n;
        let r = post(
            &a,
            &nodes[w].api,
            &json!({"text": format!("propagate {e}")}),
        )?;
        let acked = Instant::now();
        let id = r["ids"][0].as_str().unwrap().to_string();
        let seen = until_every_node(&nodes, acked, Duration::from_secs(30), 1, |a, n| {
            get(a, &n.api, &format!("/v1/events?from={id}&limit=1")).is_some()
        });
        to_all.push(seen.iter().max().unwrap().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(50));
    }
    to_all.sort_by(f64::total_cmp);
    println!(
        "ROW|propagation of a new event to all {nodes_n} node processes (p50)|{:.1}|ms|≤ 50|{events} events, writer rotating, from the append's ack; polled every 1 ms through each node's API",
        pct(&to_all, 0.5)
    );
    println!(
        "ROW|propagation to all {nodes_n} (p99)|{:.1}|ms|≤ 250|max {:.1} ms",
        pct(&to_all, 0.99),
        to_all.last().unwrap()
    );
    Ok(())
}

/// For each node, from its own thread polling every `poll_ms`: the time from `since` until
/// `seen(agent, node)` holds (`within` if it never does).
fn until_every_node(
    nodes: &[Node],
    since: Instant,
    within: Duration,
    poll_ms: u64,
    seen: impl Fn(&ureq::Agent, &Node) -> bool + Sync,
) -> Vec<Duration> {
    std::thread::scope(|s| {
        let hs: Vec<_> = nodes
            .iter()
            .map(|n| {
                let seen = &seen;
                s.spawn(move || {
                    let a = agent();
                    while !seen(&a, n) {
                        if since.elapsed() > within {
                            return within;
                        }
                        std::thread::sleep(Duration::from_millis(poll_ms));
                    }
                    since.elapsed()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn wait_until(api: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Result<Duration> {
    let a = agent();
    let t0 = Instant::now();
    loop {
        if get(&a, api, "/v1/status").is_some_and(|s| pred(&s)) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > within {
            bail!("condition not reached within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Appends `n` events with `text` (`{i}` numbered) to the timeline in `dir`, 1 000 per commit,
/// through `chorus append` (no node running).
fn write_events(dir: &Path, n: usize, text: &str) -> Result<()> {
    eprintln!("writing {n} events …");
    let out = Command::new(chorus_bin()?)
        .arg("--data-dir")
        .arg(dir)
        .args(["append", "--count", &n.to_string(), "--batch", "1000", text])
        .stdout(Stdio::null())
        .status()?;
    if !out.success() {
        bail!("append failed");
    }
    Ok(())
}

fn catchup(events: usize, machine: &str) -> Result<()> {
    let root = tempfile::tempdir()?;
    let dirs = timeline(root.path(), 1, machine)?;
    write_events(&dirs[0], events, "event {i}")?;
    let src = node(&dirs[0], "127.0.1.50", None)?.start()?;
    let a = agent();
    let s = get(&a, &src.api, "/v1/status").context("status")?;
    let total = s["events"].as_u64().unwrap();
    let hash = s["state_hash"].as_str().unwrap().to_string();
    let fresh_dir = root.path().join("fresh");
    run(&fresh_dir, &["join", &src.addr])?;
    let t0 = Instant::now();
    let fresh = node(&fresh_dir, "127.0.1.51", Some(&src.addr))?.start()?;
    let start = t0.elapsed();
    let all = wait_until(&fresh.api, Duration::from_secs(600), |s| {
        s["events"].as_u64() == Some(total)
    })? + start;
    let same = wait_until(&fresh.api, Duration::from_secs(900), |s| {
        s["state_hash"].as_str() == Some(hash.as_str())
    })? + all;
    let rate = (total - 1) as f64 / all.as_secs_f64();
    println!(
        "ROW|catch-up of a fresh node from one peer, {machine} machine|{rate:.0}|events/s|≥ 10 000|{total} events held (verified, durable) after {:.2} s from process start; same state_hash after {:.2} s",
        all.as_secs_f64(),
        same.as_secs_f64()
    );
    println!(
        "ROW|RSS of the caught-up node ({total} events, {machine})|{:.1}|MB|—|VmRSS after catch-up",
        fresh.rss_mb()
    );
    Ok(())
}

/// A light node (`--light`) catches up with a full node holding `events` KAIROS stimuli of 12
/// tokens, then idles 10 s; peak and final RSS. `runner` runs the light node's binary (e.g.
/// `qemu-arm -cpu arm1176 dist/arm-unknown-linux-musleabihf/chorus`, measured with the
/// emulator's own memory included); empty = the native `chorus` beside this binary.
fn light(events: usize, runner: &[String]) -> Result<()> {
    let root = tempfile::tempdir()?;
    let (src, total, hash, light_dir) = kairos_source_and_light_dir(root.path(), events, 60)?;
    let (cmd, what) = match runner.split_last() {
        None => (
            node(&light_dir, "127.0.1.61", Some(&src.addr))?,
            "native".to_string(),
        ),
        Some((bin, prefix)) => (
            NodeCommand::new(bin, &light_dir, "127.0.1.61")
                .prefix(prefix)
                .bootstrap(std::slice::from_ref(&src.addr))
                .ready_within(Duration::from_secs(120)),
            runner.join(" "),
        ),
    };
    let t0 = Instant::now();
    let node = cmd.args(["--light", "--in-memory"]).start()?;
    // Under emulation, the guest's own pages, sampled (the process's peak includes qemu).
    let pid = node.pid().context("the light node's pid")?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let guest_peak_kb = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = (!runner.is_empty()).then(|| {
        let (stop, peak) = (stop.clone(), guest_peak_kb.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(kb) = guest_rss_kb(pid) {
                    peak.fetch_max(kb, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    });
    let same = wait_until(&node.api, Duration::from_secs(3600), |s| {
        s["events"].as_u64() == Some(total)
            && s["folding"].is_null()
            && s["state_hash"].as_str() == Some(hash.as_str())
    })?;
    let caught_up = t0.elapsed().max(same);
    std::thread::sleep(Duration::from_secs(10));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(h) = sampler {
        let _ = h.join();
    }
    let pruned = get(&agent(), &node.api, "/v1/status")
        .and_then(|s| s["light_node"]["pruned_blocks"].as_u64())
        .unwrap_or(0);
    println!(
        "ROW|light node holding {total} KAIROS events ({what})|{:.1}|MB peak RSS|≤ 64|after {} s idle: {:.1} MB; caught up with the full node's state_hash in {:.1} s; {pruned} blocks pruned",
        node.peak_rss_mb(),
        10,
        node.rss_mb(),
        caught_up.as_secs_f64()
    );
    let guest = guest_peak_kb.load(std::sync::atomic::Ordering::Relaxed);
    if guest > 0 {
        println!(
            "ROW|the same, the emulated guest's own memory (sampled every 250 ms)|{:.1}|MB peak RSS|≤ 64|qemu's own heap, translation cache and libraries excluded; now {:.1} MB",
            guest as f64 / 1024.0,
            guest_rss_kb(pid).unwrap_or(0) as f64 / 1024.0
        );
    }
    Ok(())
}

/// A full node on 127.0.1.`ip` holding `events` KAIROS stimuli of 12 tokens (written offline,
/// 1 000 per commit), and a data dir under `root` joined to it for a light node: the running
/// source, its event count and `state_hash`, the light node's dir.
fn kairos_source_and_light_dir(
    root: &Path,
    events: usize,
    ip: u8,
) -> Result<(Node, u64, String, PathBuf)> {
    let dirs = timeline(root, 1, "kairos")?;
    write_events(
        &dirs[0],
        events,
        "stimulus {i} the traveller asks the gate keeper for the old road",
    )?;
    let src = node(&dirs[0], &format!("127.0.1.{ip}"), None)?.start()?;
    let s = get(&agent(), &src.api, "/v1/status").context("status")?;
    let total = s["events"].as_u64().context("status: events")?;
    let hash = s["state_hash"]
        .as_str()
        .context("status: state_hash")?
        .to_string();
    let light_dir = root.join("light");
    run(&light_dir, &["join", &src.addr])?;
    Ok((src, total, hash, light_dir))
}

/// See the module docs (`light-restart`).
fn light_restart(events: usize) -> Result<()> {
    let root = tempfile::tempdir()?;
    let (src, total, hash, light_dir) = kairos_source_and_light_dir(root.path(), events, 64)?;
    let current = |s: &Value| {
        s["events"].as_u64() == Some(total)
            && s["folding"].is_null()
            && s["state_hash"].as_str() == Some(hash.as_str())
    };
    let t0 = Instant::now();
    let mut first = node(&light_dir, "127.0.1.65", Some(&src.addr))?
        .args(["--light"])
        .start()?;
    wait_until(&first.api, Duration::from_secs(3600), current)?;
    let first_current = t0.elapsed();
    let first_peak = first.peak_rss_mb();
    // Let the newest checkpoints reach the disk, as they do on a light node that runs a while.
    std::thread::sleep(Duration::from_secs(5));
    first.kill();
    let t1 = Instant::now();
    let again = node(&light_dir, "127.0.1.65", Some(&src.addr))?
        .args(["--light"])
        .start()?;
    let api_up = t1.elapsed();
    wait_until(&again.api, Duration::from_secs(600), current)?;
    let current_again = t1.elapsed();
    let peak = again.peak_rss_mb();
    std::thread::sleep(Duration::from_secs(5));
    println!(
        "ROW|light node on disk holding {total} KAIROS events, SIGKILLed and restarted: current again|{:.2}|s|≤ 5|API up after {:.2} s; the first start on an empty disk (what every start of a light node in memory costs) was current after {:.1} s",
        current_again.as_secs_f64(),
        api_up.as_secs_f64(),
        first_current.as_secs_f64()
    );
    println!(
        "ROW|the restarted light node's peak RSS|{peak:.1}|MB peak RSS|≤ 64|{:.1} MB 5 s later; {first_peak:.1} MB peak during the first start",
        again.rss_mb()
    );
    Ok(())
}

/// Resident memory of a 32-bit guest under qemu-user: qemu maps the guest's address space at
/// guest_base 0 when it can (it did on these machines), so the guest's pages are the mappings
/// below 4 GiB, and qemu's own (heap, translation cache, libraries) lie above. `None` when the
/// guest binary is not mapped below 4 GiB (another guest_base: not measurable this way).
fn guest_rss_kb(pid: u32) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut below, mut kb, mut guest_seen) = (false, 0u64, false);
    for line in smaps.lines() {
        let head = line.split_whitespace().next().unwrap_or("");
        if let Some((start, _)) = head.split_once('-')
            && let Ok(start) = u64::from_str_radix(start, 16)
        {
            below = start < 1 << 32;
            guest_seen |= below && line.trim_end().ends_with("/chorus");
        } else if below && let Some(v) = line.strip_prefix("Rss:") {
            kb += v
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    guest_seen.then_some(kb)
}

fn idle() -> Result<()> {
    let root = tempfile::tempdir()?;
    let dirs = timeline(root.path(), 3, "kairos")?;
    let nodes = mesh(&dirs, 60)?;
    wait_peers(&nodes, 2, Duration::from_secs(30))?;
    let a = agent();
    post(&a, &nodes[0].api, &json!({"text": "e {i}", "count": 100}))?;
    std::thread::sleep(Duration::from_secs(10));
    let rss: Vec<f64> = nodes.iter().map(Node::rss_mb).collect();
    println!(
        "ROW|idle full node RSS (3-node mesh, 104 events, 10 s idle)|{:.1}|MB|≤ 40|max of 3; all: {}",
        rss.iter().copied().fold(0.0, f64::max),
        rss.iter()
            .map(|r| format!("{r:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn soak(nodes_n: usize, minutes: u64) -> Result<()> {
    let root = tempfile::tempdir()?;
    let dirs = timeline(root.path(), nodes_n, "kairos")?;
    let mut nodes = mesh(&dirs, 100)?;
    wait_peers(&nodes, 1, Duration::from_secs(60))?;
    let a = agent();
    let t0 = Instant::now();
    // genesis + one membership event per other node
    let mut written = nodes_n as u64;
    let mut first_rss: Option<Vec<f64>> = None;
    let mut next_report = Instant::now();
    while t0.elapsed() < Duration::from_secs(minutes * 60) {
        let w = (written as usize) % 5.min(nodes_n);
        post(
            &a,
            &nodes[w].api,
            &json!({"text": format!("soak {written}")}),
        )?;
        written += 1;
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(10);
            let mut alive = 0;
            for n in nodes.iter_mut() {
                if n.alive() {
                    alive += 1;
                }
            }
            let rss: Vec<f64> = nodes.iter().map(Node::rss_mb).collect();
            first_rss.get_or_insert(rss.clone());
            let st: Vec<Value> = nodes
                .iter()
                .filter_map(|n| get(&a, &n.api, "/v1/status"))
                .collect();
            let events: Vec<u64> = st
                .iter()
                .map(|s| s["events"].as_u64().unwrap_or(0))
                .collect();
            eprintln!(
                "[{:>5.0}s] alive {alive}/{nodes_n} · rss {:.1}..{:.1} MB · events {}..{} · written {written}",
                t0.elapsed().as_secs_f64(),
                rss.iter().copied().fold(f64::MAX, f64::min),
                rss.iter().copied().fold(0.0, f64::max),
                events.iter().min().unwrap_or(&0),
                events.iter().max().unwrap_or(&0),
            );
            if alive < nodes_n {
                bail!("a node died");
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st: Vec<Value> = nodes
            .iter()
            .filter_map(|n| get(&a, &n.api, "/v1/status"))
            .collect();
        let mut hashes: Vec<&str> = st
            .iter()
            .map(|s| s["state_hash"].as_str().unwrap_or(""))
            .collect();
        hashes.sort();
        hashes.dedup();
        if st.len() == nodes_n
            && hashes.len() == 1
            && st
                .iter()
                .all(|s| s["events"].as_u64() == Some(written) && s["folding"].is_null())
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("no convergence after the soak");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let rss: Vec<f64> = nodes.iter().map(Node::rss_mb).collect();
    println!(
        "ROW|{nodes_n} node processes for {minutes} min under a trickle of writes|{nodes_n}|alive|all {nodes_n} stable|{written} events, all converged; RSS {:.1}..{:.1} MB at the end (first sample {:.1}..{:.1})",
        rss.iter().copied().fold(f64::MAX, f64::min),
        rss.iter().copied().fold(0.0, f64::max),
        first_rss
            .as_ref()
            .map_or(0.0, |r| r.iter().copied().fold(f64::MAX, f64::min)),
        first_rss
            .as_ref()
            .map_or(0.0, |r| r.iter().copied().fold(0.0, f64::max)),
    );
    Ok(())
}

fn gateway(requests: usize, concurrent: usize) -> Result<()> {
    let root = tempfile::tempdir()?;
    let dirs = timeline(root.path(), 2, "kairos")?;
    let file = root.path().join("emissaries.toml");
    std::fs::write(
        &file,
        "[[emissary]]\nname = \"gpu-2s\"\nbackend = { kind = \"scripted\", reply = '[\"say hello\"]', delay_ms = 2000 }\n\
         [[emissary]]\nname = \"pi-45s\"\nbackend = { kind = \"scripted\", reply = '[\"say ...\"]', delay_ms = 45000 }\n",
    )?;
    let f = file.display().to_string();
    let n0 = node(&dirs[0], "127.0.1.61", None)?
        .args(["--emissaries", &f])
        .start()?;
    run(&dirs[1], &["join", &n0.addr])?;
    let n1 = node(&dirs[1], "127.0.1.62", Some(&n0.addr))?.start()?;
    let nodes = [n0, n1];
    wait_peers(&nodes, 1, Duration::from_secs(60))?;
    let a = agent();
    wait_until(&nodes[0].api, Duration::from_secs(60), |s| {
        s["emissaries"].as_array().is_some_and(|e| e.len() == 2)
    })?;
    let registered = Instant::now() + Duration::from_secs(60);
    while get(&a, &nodes[0].api, "/v1/state").is_none_or(|s| {
        s["state"]["emissaries"]
            .as_array()
            .is_none_or(|e| e.len() < 2)
    }) {
        if Instant::now() > registered {
            bail!("emissaries not registered");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut lat = vec![];
    for k in 0..requests {
        let t = Instant::now();
        let mut r = a
            .post(format!("http://{}/v1/swarm/intent", nodes[0].api))
            .header("content-type", "application/json")
            .send(
                json!({"npc_name": "Mira", "context": format!("scene {k}"), "timeout_ms": 30000})
                    .to_string(),
            )?;
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string()?)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if v["emissary"] != "gpu-2s" {
            bail!("request {k}: {v}");
        }
        lat.push(ms);
    }
    let active = get(&a, &nodes[0].api, "/v1/status").map(|s| s["active_emissaries"].clone());
    lat.sort_by(f64::total_cmp);
    println!(
        "swarm/intent, fast 2 s + slow 45 s emissary, {requests} requests: p50 {:.0} ms, max {:.0} ms (slow still running: {})",
        pct(&lat, 0.5),
        lat[lat.len() - 1],
        active.unwrap_or_default()
    );
    let base = format!("http://{}", nodes[0].api);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // The same cold burst on `/health` (a constant "ok"): what the connections alone cost.
    rt.block_on(burst(&base, "/health", concurrent, 0))?;
    rt.block_on(burst(&base, "/v1/status", concurrent, STATUS_ROUNDS))
}

/// Rounds of the warm `/v1/status` burst after the cold one.
const STATUS_ROUNDS: usize = 20;

/// `concurrent` clients, each on its own connection, ask `path` at the same moment:
/// first cold (every client connects then), then `rounds` times warm (kept-alive connections,
/// every client sends its next request as soon as the whole previous round has come back).
/// The client is one async thread, so it takes as little of the node's CPU as it can.
async fn burst(base: &str, path: &str, concurrent: usize, rounds: usize) -> Result<()> {
    let url = format!("{base}{path}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrent)
        .timeout(Duration::from_secs(30))
        .build()?;
    let one = |c: reqwest::Client, url: String| async move {
        let t = Instant::now();
        let ok = match c.get(&url).send().await {
            Ok(r) if r.status().is_success() => r.bytes().await.is_ok_and(|b| !b.is_empty()),
            _ => false,
        };
        (ok, t.elapsed().as_secs_f64() * 1e3)
    };
    let mut warm = Vec::with_capacity(concurrent * rounds);
    let mut walls = Vec::with_capacity(rounds);
    for round in 0..=rounds {
        let t = Instant::now();
        let tasks: Vec<_> = (0..concurrent)
            .map(|_| tokio::spawn(one(client.clone(), url.clone())))
            .collect();
        let mut lat = Vec::with_capacity(concurrent);
        for t in tasks {
            match t.await? {
                (true, ms) => lat.push(ms),
                (false, _) => bail!("round {round}: a request failed"),
            }
        }
        let wall = t.elapsed().as_secs_f64() * 1e3;
        if round == 0 {
            lat.sort_by(f64::total_cmp);
            println!(
                "{concurrent} concurrent GET {path}, cold (each connects): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; burst served in {wall:.0} ms",
                pct(&lat, 0.5),
                pct(&lat, 0.99),
                lat[lat.len() - 1]
            );
        } else {
            warm.extend(lat);
            walls.push(wall);
        }
    }
    if warm.is_empty() {
        return Ok(());
    }
    warm.sort_by(f64::total_cmp);
    walls.sort_by(f64::total_cmp);
    println!(
        "{concurrent} concurrent GET {path}, warm (kept-alive, {rounds} bursts, {} requests): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; a burst served in {:.0} ms (median)",
        warm.len(),
        pct(&warm, 0.5),
        pct(&warm, 0.99),
        warm[warm.len() - 1],
        pct(&walls, 0.5)
    );
    Ok(())
}

/// `n` data dirs of one timeline ordered by `order` ("final" or "lc-cid"), all keys writers.
fn timeline_ordered(root: &Path, n: usize, order: &str) -> Result<Vec<PathBuf>> {
    let dirs: Vec<PathBuf> = (0..n).map(|i| root.join(format!("n{i}"))).collect();
    run(&dirs[0], &["init", "--name", "bench", "--order", order])?;
    for d in &dirs[1..] {
        let k = run(d, &["key"])?;
        run(&dirs[0], &["member", "add", k.trim(), "--role", "writer"])?;
    }
    Ok(dirs)
}

fn mesh_heartbeating(dirs: &[PathBuf], base_ip: u8, heartbeat_ms: u64) -> Result<Vec<Node>> {
    let start = |d: &Path, ip: String, boot: Option<&str>| -> Result<Node> {
        node(d, &ip, boot)?.heartbeat_ms(heartbeat_ms).start()
    };
    let n0 = start(&dirs[0], format!("127.0.1.{base_ip}"), None)?;
    let boot = n0.addr.clone();
    let mut nodes = vec![n0];
    for (i, d) in dirs.iter().enumerate().skip(1) {
        run(d, &["join", &boot])?;
        nodes.push(start(
            d,
            format!("127.0.1.{}", base_ip as usize + i),
            Some(&boot),
        )?);
    }
    Ok(nodes)
}

fn status_u64(a: &ureq::Agent, n: &Node, f: impl Fn(&Value) -> Option<u64>) -> Option<u64> {
    get(a, &n.api, "/v1/status").and_then(|s| f(&s))
}

/// Until every node's committee holds all `n` members and the mesh is quiet: no node's event
/// count moved for 3 s (the work is final and the last attestations are written; heartbeats
/// after the last work stay tentative, so `final_positions` stays a little below `events`).
fn wait_all_final(nodes: &[Node], within: Duration) -> Result<()> {
    let a = agent();
    let deadline = Instant::now() + within;
    let mut last: Vec<u64> = vec![];
    let mut still_since = Instant::now();
    loop {
        let now: Vec<u64> = nodes
            .iter()
            .map(|n| {
                get(&a, &n.api, "/v1/status")
                    .filter(|s| s["finality"]["committee"].as_u64() == Some(nodes.len() as u64))
                    .and_then(|s| s["events"].as_u64())
                    .unwrap_or(0)
            })
            .collect();
        if now != last || now.contains(&0) {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() >= Duration::from_secs(3) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the mesh did not go quiet with the whole committee within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn is_final(a: &ureq::Agent, n: &Node, id: &str) -> bool {
    get(a, &n.api, &format!("/v1/events?from={id}&limit=1"))
        .and_then(|p| p["events"][0]["settled"].as_bool())
        .unwrap_or(false)
}

fn finality_bench(nodes_n: usize, writes: usize, heartbeat_ms: u64) -> Result<()> {
    let root = tempfile::tempdir()?;
    let dirs = timeline_ordered(root.path(), nodes_n, "final")?;
    let nodes = mesh_heartbeating(&dirs, 80, heartbeat_ms)?;
    wait_peers(&nodes, (nodes_n - 1).min(5), Duration::from_secs(60))?;
    wait_all_final(&nodes, Duration::from_secs(120))?;
    let a = agent();
    let events = |a: &ureq::Agent| -> u64 {
        nodes
            .iter()
            .filter_map(|n| status_u64(a, n, |s| s["events"].as_u64()))
            .max()
            .unwrap_or(0)
    };
    // Idle: everything is final; the mesh should write nothing at all.
    let idle_s = 60;
    let before = events(&a);
    std::thread::sleep(Duration::from_secs(idle_s));
    let idle_hb = events(&a) - before;
    println!(
        "ROW|heartbeats in an idle, final {nodes_n}-node mesh|{:.1}|per minute|0|{idle_hb} events written by the whole mesh in {idle_s} s once every event was final (heartbeats every {heartbeat_ms} ms while work is tentative)",
        idle_hb as f64 * 60.0 / idle_s as f64
    );
    let before = events(&a);
    let mut to_final = vec![];
    for e in 0..writes {
        let w = e % nodes_n;
        let r = post(&a, &nodes[w].api, &json!({"text": format!("final {e}")}))?;
        let acked = Instant::now();
        let id = r["ids"][0].as_str().context("an id")?.to_string();
        let each = until_every_node(&nodes, acked, Duration::from_secs(60), 5, |a, n| {
            is_final(a, n, &id)
        });
        to_final.push(each.iter().max().unwrap().as_secs_f64() * 1000.0);
    }
    wait_all_final(&nodes, Duration::from_secs(60))?;
    let during = events(&a) - before - writes as u64;
    to_final.sort_by(f64::total_cmp);
    println!(
        "ROW|time from acknowledgment to final on all {nodes_n} nodes (p50)|{:.0}|ms|—|{writes} writes one at a time, writer rotating; heartbeats every {heartbeat_ms} ms; final/1, quorum more than 2/3",
        pct(&to_final, 0.5)
    );
    println!(
        "ROW|time to final on all {nodes_n} (p99)|{:.0}|ms|≤ 3 000|max {:.0} ms; {:.1} heartbeats per write ({during} in all)",
        pct(&to_final, 0.99),
        to_final.last().unwrap(),
        during as f64 / writes as f64
    );
    Ok(())
}

fn order_append(nodes_n: usize, events: usize, rounds: usize) -> Result<()> {
    let mut rates: Vec<(&str, f64)> = vec![];
    for round in 0..rounds {
        for order in ["lc-cid", "final"] {
            let root = tempfile::tempdir()?;
            let dirs = timeline_ordered(root.path(), nodes_n, order)?;
            let base = 100 + (2 * round + usize::from(order == "final")) as u8 * 10;
            let nodes = mesh_heartbeating(&dirs, base, 500)?;
            wait_peers(&nodes, (nodes_n - 1).min(5), Duration::from_secs(60))?;
            if order == "final" {
                wait_all_final(&nodes, Duration::from_secs(120))?;
            }
            let a = agent();
            let t0 = Instant::now();
            for e in 0..events {
                post(&a, &nodes[0].api, &json!({"text": format!("append {e}")}))?;
            }
            let rate = events as f64 / t0.elapsed().as_secs_f64();
            eprintln!("round {round}: {order}: {rate:.0} appends/s");
            rates.push((order, rate));
        }
    }
    let mean = |o: &str| {
        let r: Vec<f64> = rates
            .iter()
            .filter(|(k, _)| *k == o)
            .map(|(_, r)| *r)
            .collect();
        r.iter().sum::<f64>() / r.len() as f64
    };
    let (lc, fin) = (mean("lc-cid"), mean("final"));
    println!(
        "ROW|single-event appends, {nodes_n}-node mesh heartbeating, lc-cid/1|{lc:.0}|events/s|—|{events} sequential POST /v1/events to one node, mean of {rounds} runs alternated with the next row"
    );
    println!(
        "ROW|the same on final/1|{fin:.0}|events/s|overhead ≤ 5 %|{:+.1} % against lc-cid/1; every run: {}",
        (fin / lc - 1.0) * 100.0,
        rates
            .iter()
            .map(|(o, r)| format!("{o} {r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// See the module docs (`snapshot-join`).
fn snapshot_join(events: usize) -> Result<()> {
    let root = tempfile::tempdir()?;
    let src_dir = root.path().join("n0");
    run(
        &src_dir,
        &[
            "init",
            "--machine",
            "counter",
            "--order",
            "final",
            "--name",
            "bench",
        ],
    )?;
    write_events(&src_dir, events, "event {i}")?;
    let t = Instant::now();
    let src = node(&src_dir, "127.0.1.70", None)?
        .heartbeat_ms(500)
        .start()?;
    let a = agent();
    // The newest snapshot within two checkpoints of the end (heartbeats after the last event
    // stay tentative, so the last checkpoint may be one short).
    let want = events.saturating_sub(512) as u64;
    let snap = loop {
        if let Some(s) = get(&a, &src.api, "/v1/snapshot")
            .filter(|s| s["positions"].as_u64().is_some_and(|p| p >= want))
        {
            break s;
        }
        if t.elapsed() > Duration::from_secs(900) {
            bail!("no snapshot of ≥ {want} positions within 900 s");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let (snap_root, certified) = (
        snap["root"].as_str().unwrap().to_string(),
        snap["state_hash"].as_str().unwrap().to_string(),
    );
    let positions = snap["positions"].as_u64().unwrap();
    eprintln!(
        "snapshot {snap_root} of {positions} positions after {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let fresh_dir = root.path().join("fresh");
    run(&fresh_dir, &["join", &src.addr])?;
    let t0 = Instant::now();
    let fresh = node(&fresh_dir, "127.0.1.71", Some(&src.addr))?
        .args(["--from-snapshot", snap_root.as_str()])
        .start()?;
    let started = t0.elapsed();
    let phase = |p: &'static str| move |s: &Value| s["bootstrap"]["phase"] == p;
    let serving = wait_until(&fresh.api, Duration::from_secs(120), |s| {
        phase("serving")(s) || phase("agreed")(s)
    })? + started;
    let st = get(&a, &fresh.api, "/v1/status").context("status")?;
    let served = st["bootstrap"]["state_hash"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let replayed_at_ready = st["bootstrap"]["replayed_at_ready"].as_u64().unwrap_or(0);
    if served != certified {
        bail!("served state {served}, certified {certified}");
    }
    let agreed = wait_until(&fresh.api, Duration::from_secs(1800), |s| {
        let p = &s["bootstrap"]["phase"];
        p == "agreed" || p == "mismatch" || p == "unchecked" || p == "refused"
    })? + serving;
    let st = get(&a, &fresh.api, "/v1/status").context("status")?;
    if st["bootstrap"]["phase"] != "agreed" {
        bail!("the replay did not agree: {}", st["bootstrap"]);
    }
    let peak = fresh.peak_rss_mb();
    drop(fresh);

    // The same join without the snapshot: until the same certified state is the replay's.
    let plain_dir = root.path().join("plain");
    run(&plain_dir, &["join", &src.addr])?;
    let t1 = Instant::now();
    let plain = node(&plain_dir, "127.0.1.72", Some(&src.addr))?.start()?;
    let total = get(&a, &src.api, "/v1/status").context("status")?["events"]
        .as_u64()
        .unwrap();
    let caught_up = wait_until(&plain.api, Duration::from_secs(1800), |s| {
        s["events"].as_u64() == Some(total) && s["folding"].is_null()
    })? + t1.elapsed();
    let plain_peak = plain.peak_rss_mb();
    println!(
        "ROW|fresh full node started from a certified snapshot, {events} counter events: certified state served|{:.2}|s|≤ 15|state_hash = the certificate's ({positions} positions); the replay held {replayed_at_ready} final positions then|",
        serving.as_secs_f64()
    );
    println!(
        "ROW|its background replay of the whole history agrees with the snapshot|{:.1}|s|—|from the process start; every event fetched, verified, folded; the state at position {positions} hashes to the certified one|",
        agreed.as_secs_f64()
    );
    println!(
        "ROW|peak RSS of the node started from the snapshot|{peak:.0}|MB|—|VmHWM, through the replay|"
    );
    println!(
        "ROW|the same join without a snapshot: all {total} events held and folded|{:.1}|s|—|nothing served from a certified state meanwhile; peak RSS {plain_peak:.0} MB|",
        caught_up.as_secs_f64()
    );
    Ok(())
}

/// `clients` concurrent clients, each on its own kept-alive connection, sending the request
/// `make` builds in a loop for `secs` seconds; returns the successful requests per second. The
/// clients are tasks on one async thread, so they take as little of the node's two cores as
/// they can.
fn hammer(
    clients: usize,
    secs: f64,
    make: impl Fn(&reqwest::Client, usize, usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
) -> Result<f64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(clients)
            .timeout(Duration::from_secs(30))
            .build()?;
        let make = std::sync::Arc::new(make);
        let until = Instant::now() + Duration::from_secs_f64(secs);
        let t = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let (client, make) = (client.clone(), make.clone());
                tokio::spawn(async move {
                    let (mut done, mut failed) = (0u64, 0u64);
                    let mut i = 0;
                    while Instant::now() < until {
                        let ok = match make(&client, c, i).send().await {
                            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                            Err(_) => false,
                        };
                        if ok {
                            done += 1;
                        } else {
                            failed += 1;
                        }
                        i += 1;
                    }
                    (done, failed)
                })
            })
            .collect();
        let (mut done, mut failed) = (0, 0);
        for task in tasks {
            let (d, f) = task.await?;
            done += d;
            failed += f;
        }
        if failed > 0 {
            bail!("{failed} requests failed");
        }
        Ok(done as f64 / t.elapsed().as_secs_f64())
    })
}

/// Many HTTP clients appending one event per request to one node (issue 19): durable events
/// a second, beside what the same clients get from a request that does no work (their own
/// cost and the HTTP stack's, on the same two cores).
fn concurrent_appends(clients: usize, secs: u64, machine: &str) -> Result<()> {
    let root = tempfile::tempdir()?;
    let dirs = timeline(root.path(), 1, machine)?;
    let n0 = node(&dirs[0], "127.0.1.81", None)?.start()?;
    let api = n0.api.clone();
    let secs = secs as f64;
    let health = format!("http://{api}/health");
    let floor = hammer(clients, secs, move |c, _, _| c.get(&health))?;
    let a = agent();
    let before = get(&a, &api, "/v1/status").context("status")?["events"]
        .as_u64()
        .unwrap_or(0);
    let events = format!("http://{api}/v1/events");
    let appends = hammer(clients, secs, move |c, client, i| {
        c.post(&events)
            .header("content-type", "application/json")
            .body(
                json!({"kind": "stimulus", "text": format!("client {client} says {i}")})
                    .to_string(),
            )
    })?;
    let after = get(&a, &api, "/v1/status").context("status")?["events"]
        .as_u64()
        .unwrap_or(0);
    let held = after - before;
    if (held as f64) < appends * secs * 0.99 {
        bail!("{held} events held after {appends:.0}/s acknowledged for {secs} s");
    }
    println!(
        "ROW|{clients} concurrent HTTP clients, one {machine} event per request: durable events acknowledged|{appends:.0}|events/s|≥ 20 000|{secs:.0} s, {held} events held after; the same clients (one async thread) against GET /health, which does no work: {floor:.0} requests/s|"
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    match args.first().map(String::as_str) {
        Some("propagation") => propagation(num(1, 10), num(2, 200)),
        Some("catchup") => catchup(
            num(1, 100_000),
            args.get(2).map_or("counter", String::as_str),
        ),
        Some("idle") => idle(),
        Some("light") => light(num(1, 10_000), &args[2.min(args.len())..]),
        Some("light-restart") => light_restart(num(1, 100_000)),
        Some("soak") => soak(num(1, 20), num(2, 10) as u64),
        Some("gateway") => gateway(num(1, 10), num(2, 1_000)),
        Some("finality") => finality_bench(num(1, 5), num(2, 40), num(3, 500) as u64),
        Some("order-append") => order_append(num(1, 5), num(2, 1_000), num(3, 3)),
        Some("snapshot-join") => snapshot_join(num(1, 1_000_000)),
        Some("appends") => concurrent_appends(
            num(1, 64),
            num(2, 10) as u64,
            args.get(3).map_or("counter", String::as_str),
        ),
        _ => bail!(
            "usage: mesh-bench propagation|catchup|idle|light|light-restart|soak|gateway|finality|order-append|snapshot-join|appends [args]"
        ),
    }
}
