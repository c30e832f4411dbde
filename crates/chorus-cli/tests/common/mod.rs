//! Real `chorus node` processes on 127.0.0.x for the mesh tests: start, join, write through
//! the HTTP API, SIGKILL, restart, wipe, and wait for convergence.

#![allow(dead_code)]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

pub mod netns;

use chorus_harness::{Api, NodeCommand, NodeProcess};
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_chorus");

pub fn chorus(dir: &Path, args: &[&str]) -> Output {
    chorus_env(dir, args, &[])
}

/// As [`chorus`], with environment variables set.
pub fn chorus_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run chorus")
}

/// As [`ok`], with environment variables set.
pub fn ok_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = chorus_env(dir, args, env);
    assert!(
        out.status.success(),
        "chorus {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn ok(dir: &Path, args: &[&str]) -> String {
    ok_env(dir, args, &[])
}

pub fn api(base: &str) -> Api {
    Api::new(base, Duration::from_secs(60))
}

/// GET as JSON; `Err(status or transport error)` otherwise.
pub fn get(base: &str, path: &str) -> Result<Value, String> {
    api(base).get(path)
}

/// `GET /v1/blocks/{cid}`: status, the `chorus-block-source` header, the body.
pub fn get_block(api: &str, cid: &str, timeout_ms: u64) -> (u16, String, Vec<u8>) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent();
    let base = api.trim_start_matches("http://");
    let mut r = agent
        .get(format!(
            "http://{base}/v1/blocks/{cid}?timeout_ms={timeout_ms}"
        ))
        .call()
        .expect("GET /v1/blocks");
    let source = r
        .headers()
        .get("chorus-block-source")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = r.body_mut().read_to_vec().unwrap();
    (r.status().as_u16(), source, body)
}

pub fn post(base: &str, path: &str, body: &Value) -> Result<Value, String> {
    api(base).post(path, body)
}

/// One node process (the harness's), with the name and place a test knows it by.
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub ip: String,
    pub process: NodeProcess,
    pub api: String,
    pub addr: String,
}

impl Node {
    /// Starts `chorus node` on `dir` listening on `ip`; waits for its address and API.
    pub fn start(name: &str, dir: &Path, ip: &str, bootstrap: &[String]) -> Node {
        Self::start_with(name, dir, ip, bootstrap, &[], None)
    }

    /// As [`Node::start`], with heartbeats every `heartbeat_ms` (the harness turns them off
    /// unless asked: most tests count the events they wrote).
    pub fn start_heartbeating(
        name: &str,
        dir: &Path,
        ip: &str,
        bootstrap: &[String],
        heartbeat_ms: u64,
    ) -> Node {
        Self::launch(name, dir, ip, bootstrap, &[], None, heartbeat_ms, &[])
    }

    /// As [`Node::start_heartbeating`], with extra node arguments.
    pub fn start_heartbeating_with(
        name: &str,
        dir: &Path,
        ip: &str,
        bootstrap: &[String],
        extra: &[&str],
        heartbeat_ms: u64,
    ) -> Node {
        Self::launch(name, dir, ip, bootstrap, extra, None, heartbeat_ms, &[])
    }

    /// As [`Node::start`], with extra node arguments and an optional command prefix (e.g.
    /// `ip netns exec NS`).
    pub fn start_with(
        name: &str,
        dir: &Path,
        ip: &str,
        bootstrap: &[String],
        extra: &[&str],
        prefix: Option<&[&str]>,
    ) -> Node {
        Self::launch(name, dir, ip, bootstrap, extra, prefix, 0, &[])
    }

    /// As [`Node::start`], with environment variables set for the node.
    pub fn start_env(
        name: &str,
        dir: &Path,
        ip: &str,
        bootstrap: &[String],
        env: &[(&str, &str)],
    ) -> Node {
        Self::launch(name, dir, ip, bootstrap, &[], None, 0, env)
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        name: &str,
        dir: &Path,
        ip: &str,
        bootstrap: &[String],
        extra: &[&str],
        prefix: Option<&[&str]>,
        heartbeat_ms: u64,
        env: &[(&str, &str)],
    ) -> Node {
        let mut cmd = NodeCommand::new(BIN, dir, ip);
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        let process = cmd
            .heartbeat_ms(heartbeat_ms)
            .prefix(prefix.unwrap_or_default().iter().copied())
            .bootstrap(bootstrap)
            .args(extra.iter().copied())
            .env("CHORUS_LOG", "info,libp2p=warn")
            .log_to(dir.with_extension("log"))
            .start()
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        Node {
            name: name.into(),
            dir: dir.into(),
            ip: ip.into(),
            api: process.api.clone(),
            addr: process.addr.clone(),
            process,
        }
    }

    /// Waits up to `within` for a stdout line starting with `prefix`.
    pub fn printed(&self, prefix: &str, within: Duration) -> Option<String> {
        self.process.printed(prefix, within)
    }

    pub fn status(&self) -> Option<Value> {
        get(&self.api, "/v1/status").ok()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM and wait: the node's graceful shutdown.
    pub fn stop(&mut self) {
        let name = &self.name;
        self.process
            .stop(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }

    pub fn alive(&mut self) -> bool {
        self.process.alive()
    }

    /// Every event id this node holds, paging through `GET /v1/events`.
    pub fn ids(&self) -> BTreeSet<String> {
        self.ids_where(|_| true)
    }

    /// The ids of the events this node holds whose JSON (`GET /v1/events`) passes `keep`.
    pub fn ids_where(&self, keep: impl Fn(&Value) -> bool) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut seen = 0usize;
        let mut from: Option<String> = None;
        loop {
            let path = match &from {
                Some(f) => format!("/v1/events?from={f}&limit=1000"),
                None => "/v1/events?limit=1000".to_string(),
            };
            let page = get(&self.api, &path).expect("events page");
            let evs = page["events"].as_array().unwrap();
            let before = seen;
            let mut last = None;
            for e in evs {
                let cid = e["cid"].as_str().unwrap().to_string();
                last = Some(cid.clone());
                if Some(&cid) != from.as_ref() {
                    seen += 1;
                }
                if keep(e) {
                    out.insert(cid);
                }
            }
            if seen == before || evs.len() < 2 {
                return out;
            }
            from = last;
        }
    }

    /// Appends `count` events of `kind` with a text (`{i}` numbered); returns the acked ids.
    pub fn append(&self, text: &str, count: usize) -> Result<Vec<String>, String> {
        let r = post(
            &self.api,
            "/v1/events",
            &json!({"kind": "stimulus", "text": text, "count": count}),
        )?;
        Ok(r["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect())
    }
}

/// A timeline with `writers` node keys as writers: returns the data dirs, the first holding
/// the genesis (its key is admin), the others empty but for their keys.
pub fn timeline(root: &Path, nodes: usize, writers: usize) -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = (0..nodes).map(|i| root.join(format!("n{i}"))).collect();
    ok(
        &dirs[0],
        &["init", "--name", "mesh-test", "--checkpoint-interval", "64"],
    );
    for d in dirs.iter().take(writers).skip(1) {
        let k = ok(d, &["key"]);
        ok(&dirs[0], &["member", "add", k.trim(), "--role", "writer"]);
    }
    dirs
}

/// Joins `dir` to the timeline through `addr` (fetches the genesis).
pub fn join(dir: &Path, addr: &str) {
    ok(dir, &["join", addr]);
}

/// Waits until every running node reports the same event count (at least `min_events`), no
/// pending events (but strangers' held within their quota), and the same `state_hash`.
/// Returns that hash.
pub fn converge(nodes: &mut [&mut Node], min_events: u64, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut last = vec![];
    loop {
        let st: Vec<Option<Value>> = nodes.iter().map(|n| n.status()).collect();
        // The state_hash is the state of `events` only once no fold is under way.
        let summary: Vec<(u64, u64, String, bool)> = st
            .iter()
            .map(|s| match s {
                // Strangers' events held within their quota are not the timeline's: they
                // may wait for made-up parents forever.
                Some(s) => (
                    s["events"].as_u64().unwrap(),
                    s["pending"].as_u64().unwrap() - s["stranger_pending"].as_u64().unwrap(),
                    s["state_hash"].as_str().unwrap().to_string(),
                    s["folding"].is_null(),
                ),
                None => (0, 0, "down".into(), false),
            })
            .collect();
        let first = &summary[0];
        if first.0 >= min_events
            && summary
                .iter()
                .all(|s| s.0 == first.0 && s.1 == 0 && s.2 == first.2 && s.3)
        {
            return first.2.clone();
        }
        last = summary;
        if Instant::now() > deadline {
            let logs = log_tails(nodes.iter().map(|n| &**n), 15);
            panic!("no convergence within {within:?}: (events, pending, hash) = {last:#?}\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until every node holds the timeline's first `n` events (genesis and the membership
/// events that make the writers writers): a node that appends before it has seen its own
/// membership is rightly refused.
pub fn initial_sync(nodes: &mut [&mut Node], n: u64) {
    converge(nodes, n, Duration::from_secs(60));
}

/// Waits until every node has at least one peer.
pub fn meshed(nodes: &[&Node], within: Duration) {
    peers_at_least(nodes, 1, within)
}

/// Waits until every node is connected to at least `k` peers (found through Kademlia: the
/// nodes were only given the bootstrap's address).
pub fn peers_at_least(nodes: &[&Node], k: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let ready = nodes.iter().all(|n| {
            n.status()
                .is_some_and(|s| s["peers"].as_array().is_some_and(|p| p.len() >= k))
        });
        if ready {
            return;
        }
        if Instant::now() > deadline {
            let seen: Vec<String> = nodes
                .iter()
                .map(|n| match n.status() {
                    Some(s) => format!("{}: peers {}", n.name, s["peers"]),
                    None => format!("{}: no status", n.name),
                })
                .collect();
            let logs = log_tails(nodes.iter().copied(), 25);
            panic!("nodes did not find {k} peers each within {within:?}: {seen:#?}\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last `n` lines of each node's log, for a failure message.
pub fn log_tails<'a>(nodes: impl Iterator<Item = &'a Node>, n: usize) -> String {
    nodes
        .map(|node| {
            let log = std::fs::read_to_string(node.dir.with_extension("log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(n).collect();
            format!(
                "--- {} ---\n{}\n",
                node.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect()
}

/// Waits until every node's `final/1` committee (`/v1/status` `finality.committee`) has `n`
/// members: on a timeline made by `chorus init --order final` and `member add`, the committee
/// grows by epochs as each addition becomes final.
pub fn committee_of_all(nodes: &[Node], n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let sizes: Vec<u64> = nodes
            .iter()
            .map(|x| {
                x.status()
                    .and_then(|s| s["finality"]["committee"].as_u64())
                    .unwrap_or(0)
            })
            .collect();
        if sizes.iter().all(|&s| s == n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "committees {sizes:?}\n{}",
            log_tails(nodes.iter(), 20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
