//! Real `chorus node` processes on 127.0.0.x for the mesh tests: start, join, write through
//! the HTTP API, SIGKILL, restart, wipe, and wait for convergence.

#![allow(dead_code)]

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub mod netns;

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_chorus");

pub fn chorus(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run chorus")
}

pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = chorus(dir, args);
    assert!(
        out.status.success(),
        "chorus {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .new_agent()
}

/// A response as JSON; `Err(status and body)` unless it is a success.
fn json_of(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Value, String> {
    let mut r = r.map_err(|e| e.to_string())?;
    let status = r.status();
    let text = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {text}"));
    }
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// GET as JSON; `Err(status or transport error)` otherwise.
pub fn get(api: &str, path: &str) -> Result<Value, String> {
    json_of(agent().get(format!("http://{api}{path}")).call())
}

pub fn post(api: &str, path: &str, body: &Value) -> Result<Value, String> {
    json_of(
        agent()
            .post(format!("http://{api}{path}"))
            .header("content-type", "application/json")
            .send(body.to_string()),
    )
}

/// One node process.
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub ip: String,
    pub child: Option<Child>,
    pub api: String,
    pub addr: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Node {
    /// Starts `chorus node` on `dir` listening on `ip`; waits for its address and API.
    pub fn start(name: &str, dir: &Path, ip: &str, bootstrap: &[String]) -> Node {
        Self::start_with(name, dir, ip, bootstrap, &[], None)
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
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .unwrap();
        let mut cmd = match prefix {
            Some(p) => {
                let mut c = Command::new(p[0]);
                c.args(&p[1..]).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.arg("--data-dir")
            .arg(dir)
            .arg("node")
            .args(["--listen", &format!("/ip4/{ip}/tcp/0")])
            .args(["--api", &format!("{ip}:0")])
            .args(extra)
            .env("CHORUS_LOG", "info,libp2p=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        for b in bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        let mut child = cmd.spawn().expect("start chorus node");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(vec![]));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        let mut n = Node {
            name: name.into(),
            dir: dir.into(),
            ip: ip.into(),
            child: Some(child),
            api: String::new(),
            addr: String::new(),
            lines,
        };
        n.addr = n.line("listening");
        n.api = n.line("api").trim_start_matches("http://").to_string();
        n
    }

    fn line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find_map(|l| l.strip_prefix(&format!("{prefix} ")).map(str::to_string))
            {
                return l;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{} exited ({st}) before {prefix:?}: {}",
                    self.name,
                    std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {prefix:?} line",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `within` for a stdout line starting with `prefix`.
    pub fn printed(&self, prefix: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let hit = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.starts_with(prefix))
                .cloned();
            if hit.is_some() || Instant::now() > deadline {
                return hit;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn status(&self) -> Option<Value> {
        get(&self.api, "/v1/status").ok()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: the node's graceful shutdown.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "{} ignored SIGTERM", self.name);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Every event id this node holds, paging through `GET /v1/events`.
    pub fn ids(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut from: Option<String> = None;
        loop {
            let path = match &from {
                Some(f) => format!("/v1/events?from={f}&limit=1000"),
                None => "/v1/events?limit=1000".to_string(),
            };
            let page = get(&self.api, &path).expect("events page");
            let evs = page["events"].as_array().unwrap();
            let before = out.len();
            let mut last = None;
            for e in evs {
                let cid = e["cid"].as_str().unwrap().to_string();
                last = Some(cid.clone());
                out.insert(cid);
            }
            if out.len() == before || evs.len() < 2 {
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

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
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
/// pending events, and the same `state_hash`. Returns that hash.
pub fn converge(nodes: &mut [&mut Node], min_events: u64, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut last = vec![];
    loop {
        let st: Vec<Option<Value>> = nodes.iter().map(|n| n.status()).collect();
        // The state_hash is the state of `events` only once no fold is under way.
        let summary: Vec<(u64, u64, String, bool)> = st
            .iter()
            .map(|s| match s {
                Some(s) => (
                    s["events"].as_u64().unwrap(),
                    s["pending"].as_u64().unwrap(),
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
