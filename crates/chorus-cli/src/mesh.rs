//! The mesh subcommands: `node`, `join`, `status`, `swarm`.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use chorus_core::{Machine, genesis::Genesis, membership::Role};
use chorus_kairos::Kairos3Machine;
use chorus_llm::BackendConfig;
use chorus_net::Addr;
use chorus_node::{
    NodeConfig,
    describe::Describe,
    emissary::{EmissaryConfig, EmissaryFile},
    machines::{self, WithMachine},
};
use chorus_store::{Replica, Store, replica::STORE_FILE, replica::load_or_create_key};
use serde_json::{Value, json};

use crate::{NodeArgs, SwarmArgs, http};

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn parse_addrs(v: &[String], what: &str) -> Result<Vec<Addr>> {
    v.iter()
        .map(|s| {
            s.parse::<Addr>()
                .with_context(|| format!("{what} {s:?} is not a multiaddr"))
        })
        .collect()
}

/// `chorus node`.
pub fn node(dir: &Path, a: NodeArgs) -> Result<i32> {
    let store_path = dir.join(STORE_FILE);
    if let Some(file) = &a.genesis {
        let genesis = crate::archive_file::genesis_of(file)
            .with_context(|| format!("--genesis {}", file.display()))?;
        if !store_path.exists() {
            machines::create_from_genesis(dir, genesis.clone())?;
            eprintln!(
                "created a replica of timeline {} in {} from {}",
                genesis.id(),
                dir.display(),
                file.display()
            );
        } else {
            let held = Store::open(&store_path)?.genesis_id();
            if held != genesis.id() {
                bail!(
                    "{} holds a replica of timeline {held}, and --genesis {} names timeline {}: \
                     give this node another data directory",
                    dir.display(),
                    file.display(),
                    genesis.id()
                );
            }
        }
    }
    if !store_path.exists() {
        bail!(
            "{} holds no timeline: run `chorus init` or `chorus join MULTIADDR` first, or give \
             `chorus node --genesis FILE`",
            dir.display()
        );
    }
    let store = Store::open(&store_path)?;
    let machine = store.machine_id().to_string();
    drop(store);
    struct RunNode<'a>(&'a Path, NodeArgs);
    impl WithMachine for RunNode<'_> {
        type Output = Result<i32>;
        fn run<M: Describe>(self) -> Result<i32> {
            run_node::<M>(self.0, self.1)
        }
    }
    machines::dispatch(&machine, RunNode(dir, a))?
}

fn run_node<M: Describe>(dir: &Path, a: NodeArgs) -> Result<i32> {
    // A light node in memory catches up from full nodes at each start (the data dir only
    // gives it its key and the genesis); one on disk opens its replica as a full node does,
    // with a small page cache.
    let replica = if a.light && a.in_memory {
        Replica::in_memory(dir, M::default())?
    } else if a.light {
        Replica::open_light(dir, M::default())?
    } else {
        Replica::open(dir, M::default())?
    };
    let me = replica.key().author();
    if a.anchor && replica.timeline().membership().role_now(&me) != Some(Role::Anchor) {
        eprintln!(
            "warning: --anchor, but {me} is not an anchor of this timeline \
             (the admin adds it with `chorus member add {me} --role anchor`)"
        );
    }
    let api = if a.no_api {
        None
    } else {
        Some(
            a.api
                .parse()
                .with_context(|| format!("--api {:?} is not HOST:PORT", a.api))?,
        )
    };
    let cfg = NodeConfig {
        listen: parse_addrs(&a.listen, "--listen")?,
        bootstrap: parse_addrs(&a.bootstrap, "--bootstrap")?,
        external: parse_addrs(&a.external_address, "--external-address")?,
        cors_origins: a.cors_origin.clone(),
        api,
        metrics: a
            .metrics_listen
            .as_deref()
            .map(|m| {
                m.parse()
                    .with_context(|| format!("--metrics-listen {m:?} is not HOST:PORT"))
            })
            .transpose()?,
        gateway_rate: a.gateway_rate,
        light: a.light,
        api_addr_file: Some(dir.join(http::API_ADDR_FILE)),
        api_token: match &a.api_token_env {
            Some(var) => Some(
                std::env::var(var)
                    .ok()
                    .filter(|t| !t.is_empty())
                    .with_context(|| format!("--api-token-env: {var} is not set"))?,
            ),
            None => std::env::var(http::TOKEN_ENV)
                .ok()
                .filter(|t| !t.is_empty()),
        },
        api_open: a.api_open,
        emissaries: emissaries_of(&a)?,
        heartbeat_ms: (a.heartbeat_ms > 0).then_some(a.heartbeat_ms),
        from_snapshot: a
            .from_snapshot
            .as_deref()
            .map(|r| {
                ipld_core::cid::Cid::try_from(r)
                    .with_context(|| format!("--from-snapshot {r:?} is not a CID"))
            })
            .transpose()?,
    };
    println!(
        "opened {} events, state_hash {}",
        replica.timeline().len(),
        hex::encode(replica.timeline().state_hash())
    );
    let rt = runtime()?;
    let replica = rt.block_on(chorus_node::run(replica, cfg, chorus_node::signal()))?;
    println!(
        "stopped: events {} state_hash {}",
        replica.timeline().len(),
        hex::encode(replica.timeline().state_hash())
    );
    Ok(0)
}

/// The emissaries a node runs: those of `--emissaries FILE`, then one embedded-model
/// emissary per `--emissary NAME`.
fn emissaries_of(a: &NodeArgs) -> Result<Vec<EmissaryConfig>> {
    let mut out = vec![];
    if let Some(f) = &a.emissaries {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let file: EmissaryFile = toml::from_str(&text)
            .with_context(|| format!("{}: not an emissary file", f.display()))?;
        out.extend(file.emissary);
    }
    for name in &a.emissary {
        out.push(EmissaryConfig {
            name: name.clone(),
            role: "Cryptic Being".into(),
            backstory: "You exist.".into(),
            backend: BackendConfig::Embedded {
                model_path: String::new(),
                threads: chorus_llm::model::default_threads(),
            },
            temperature: 0.0,
            seed: 0,
        });
    }
    let mut names: Vec<&str> = out.iter().map(|e| e.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!("two emissaries are named {:?}", w[0]);
    }
    Ok(out)
}

/// `chorus join`.
pub fn join(dir: &Path, addr: &str) -> Result<i32> {
    let addr: Addr = addr
        .parse()
        .with_context(|| format!("{addr:?} is not a multiaddr"))?;
    if dir.join(STORE_FILE).exists() {
        bail!("{} already holds a timeline", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = load_or_create_key(dir)?;
    let joined = runtime()?.block_on(machines::join(dir, addr.clone(), key.seed()))?;
    let (id, g) = (joined.genesis.id(), joined.body);
    println!(
        "joined timeline {id} ({:?}, machine {})",
        g.body.name, g.body.machine
    );
    println!("node key {}", key.author());
    println!(
        "next: chorus --data-dir {} node --bootstrap {addr}",
        dir.display()
    );
    Ok(0)
}

pub fn api_of(dir: &Path, api: Option<String>) -> Result<String> {
    api.or_else(|| http::running_api(dir)).with_context(|| {
        format!(
            "no running node found for {} (no {}): give --api HOST:PORT",
            dir.display(),
            http::API_ADDR_FILE
        )
    })
}

/// `chorus status`.
pub fn status(dir: &Path, api: Option<String>, as_json: bool) -> Result<i32> {
    let api = api_of(dir, api)?;
    let s = http::get(&api, "/v1/status")?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(0);
    }
    let get = |k: &str| s.get(k).cloned().unwrap_or(Value::Null);
    println!("peer        {}", get("peer_id").as_str().unwrap_or("?"));
    println!("timeline    {}", get("timeline").as_str().unwrap_or("?"));
    println!("events      {} (pending {})", get("events"), get("pending"));
    println!("state_hash  {}", get("state_hash").as_str().unwrap_or("?"));
    match get("finality") {
        Value::Object(f) => println!(
            "final       {} events in {} segments (epoch {}, committee {}, quorum {})",
            f["final_positions"], f["segments"], f["epoch"], f["committee"], f["quorum"]
        ),
        _ => println!(
            "settled     {} (first unsettled lc {})",
            get("settled"),
            get("first_unsettled_lc")
        ),
    }
    let heads = get("heads");
    println!("heads       {}", heads.as_array().map_or(0, |h| h.len()));
    let peers = get("peers");
    println!("peers       {}", peers.as_array().map_or(0, |p| p.len()));
    for p in peers.as_array().into_iter().flatten() {
        println!("  {}", p.as_str().unwrap_or("?"));
    }
    let sync = get("sync");
    println!(
        "sync lag    {} events{}",
        sync["lag_events"],
        if sync["catching_up"].as_bool() == Some(true) {
            " (catching up)"
        } else {
            ""
        }
    );
    println!("rejected    {}", get("received")["rejected_by_code"]);
    Ok(0)
}

/// `chorus append` through a running node's API.
pub fn append_via_api(api: &str, kind: &str, body: Value, count: u64) -> Result<i32> {
    let mut req = json!({ "kind": kind, "count": count });
    match body {
        Value::String(t) => req["text"] = Value::String(t),
        b => req["body"] = b,
    }
    let r = http::post(api, "/v1/events", &req)?;
    for id in r["ids"].as_array().into_iter().flatten() {
        println!("{}", id.as_str().unwrap_or("?"));
    }
    Ok(0)
}

/// A node process started by `chorus swarm`.
struct Proc {
    name: String,
    dir: PathBuf,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(name: &str, dir: &Path, args: &[String]) -> Result<Proc> {
        let exe = std::env::current_exe().context("locating the chorus binary")?;
        let log = std::fs::File::create(dir.join("node.log"))?;
        let mut cmd = Command::new(exe);
        cmd.arg("--data-dir")
            .arg(dir)
            .arg("node")
            .args(args)
            .env(
                "CHORUS_LOG",
                std::env::var("CHORUS_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        // Own process group: Ctrl-C reaches the swarm, which stops the nodes in order.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let mut child = cmd.spawn().context("starting a node process")?;
        let out = child.stdout.take().expect("piped");
        let lines = Arc::new(Mutex::new(vec![]));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        Ok(Proc {
            name: name.into(),
            dir: dir.to_path_buf(),
            child,
            lines,
        })
    }

    /// The value of the first stdout line starting with `prefix `, waiting up to `wait`.
    fn line(&mut self, prefix: &str, wait: Duration) -> Result<String> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find_map(|l| l.strip_prefix(&format!("{prefix} ")).map(str::to_string))
            {
                return Ok(l);
            }
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "{} exited ({st}) before printing {prefix:?}; see {}",
                    self.name,
                    self.dir.join("node.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!("{} printed no {prefix:?} within {wait:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn terminate(&mut self) {
        // SIGTERM: the node finishes its in-flight commit and exits.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }
}

struct Mesh {
    procs: Vec<Proc>,
    apis: Vec<String>,
}

impl Mesh {
    fn statuses(&self) -> Vec<Option<Value>> {
        self.apis
            .iter()
            .map(|a| http::get(a, "/v1/status").ok())
            .collect()
    }

    fn stop(&mut self) -> Vec<Option<String>> {
        for p in &mut self.procs {
            p.terminate();
        }
        let mut finals = vec![];
        for p in &mut self.procs {
            let deadline = Instant::now() + Duration::from_secs(20);
            while p.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if p.child.try_wait().ok().flatten().is_none() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
            // Let the reader thread take the last lines.
            std::thread::sleep(Duration::from_millis(50));
            finals.push(
                p.lines
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .find_map(|l| l.strip_prefix("stopped: ").map(str::to_string)),
            );
        }
        finals
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if p.child.try_wait().ok().flatten().is_none() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }
}

fn prepare_dir(dir: &Path) -> Result<()> {
    const MARKER: &str = ".chorus-swarm";
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            bail!(
                "{} exists and was not made by `chorus swarm`; choose another --dir",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(MARKER),
        "made by chorus swarm; cleared at its next run\n",
    )?;
    Ok(())
}

fn summary_line(t0: Instant, st: &[Option<Value>]) -> (String, bool) {
    let live: Vec<&Value> = st.iter().flatten().collect();
    let events: Vec<u64> = live
        .iter()
        .map(|s| s["events"].as_u64().unwrap_or(0))
        .collect();
    let peers: Vec<usize> = live
        .iter()
        .map(|s| s["peers"].as_array().map_or(0, |p| p.len()))
        .collect();
    let mut hashes: Vec<&str> = live
        .iter()
        .map(|s| s["state_hash"].as_str().unwrap_or(""))
        .collect();
    hashes.sort();
    hashes.dedup();
    // A node folding in slices reports the state of fewer events than it holds.
    let converged = live.len() == st.len()
        && hashes.len() == 1
        && live
            .iter()
            .all(|s| s["pending"].as_u64() == Some(0) && s["folding"].is_null());
    (
        format!(
            "[{:>6.1}s] nodes {}/{} · events {}..{} · peers {}..{} · {}",
            t0.elapsed().as_secs_f64(),
            live.len(),
            st.len(),
            events.iter().min().unwrap_or(&0),
            events.iter().max().unwrap_or(&0),
            peers.iter().min().unwrap_or(&0),
            peers.iter().max().unwrap_or(&0),
            if converged {
                "converged".to_string()
            } else {
                format!("{} distinct state hashes", hashes.len())
            }
        ),
        converged,
    )
}

/// The scene the swarm plays: who speaks and what they hear.
const SCENE: &[(&str, &str)] = &[
    (
        "Mira the innkeeper",
        "A stranger in a wet cloak enters the tavern and asks for a room.",
    ),
    (
        "Old Tomas",
        "Someone knocks over your mug of ale and laughs.",
    ),
    (
        "Mira the innkeeper",
        "The stranger asks whether anyone has seen a silver ring.",
    ),
    (
        "Sera the bard",
        "The crowd falls silent and looks at you, waiting for a song.",
    ),
    (
        "Old Tomas",
        "A guard walks in and says the north gate is closed tonight.",
    ),
    (
        "Sera the bard",
        "The stranger leaves a gold coin on your table without a word.",
    ),
];

/// How long the swarm's gateway requests wait for a winner (below the client's API timeout).
const INTENT_TIMEOUT_MS: u64 = 50_000;

/// Waits until every node's emissary is registered in the replicated state (its emissary
/// event replicated everywhere), so the first stimuli already see all of them.
fn wait_for_emissaries(mesh: &Mesh, n: usize, stop: &AtomicBool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let registered: Vec<usize> = mesh
            .apis
            .iter()
            .map(|api| {
                http::get(api, "/v1/state")
                    .map(|s| s["state"]["emissaries"].as_array().map_or(0, Vec::len))
                    .unwrap_or(0)
            })
            .collect();
        if registered.iter().all(|&r| r >= n) {
            println!("{n} emissaries registered on every node");
            return Ok(());
        }
        if Instant::now() > deadline || stop.load(Ordering::SeqCst) {
            bail!("emissaries registered per node: {registered:?} (expected {n})");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether every node's state names the same winner for every elected stimulus.
/// Every node's `GET /v1/swarm/elections` (`null` for a node that does not answer).
fn election_views(mesh: &Mesh) -> Vec<Value> {
    mesh.apis
        .iter()
        .map(|api| http::get(api, "/v1/swarm/elections").unwrap_or(Value::Null))
        .collect()
}

fn elections_agree(mesh: &Mesh, elected: &[(String, String)]) -> bool {
    let views = election_views(mesh);
    let winner_at = |v: &Value, s: &str| -> Option<String> {
        v["elections"]
            .as_array()?
            .iter()
            .find(|e| e["stimulus"] == s)
            .and_then(|e| e["winner"].as_str().map(str::to_string))
    };
    let mut all = true;
    for (s, _) in elected {
        let winners: Vec<Option<String>> = views.iter().map(|v| winner_at(v, s)).collect();
        if winners.iter().any(|w| w.is_none() || *w != winners[0]) {
            println!(
                "  stimulus {}: winners differ across nodes: {winners:?}",
                short(s)
            );
            all = false;
        }
    }
    all
}

/// How long `chorus swarm` waits, after convergence, for the elections to settle.
const SETTLE_WAIT: Duration = Duration::from_secs(15);

/// The emissaries the elections of node 0 asked (every node asks the same: the selection is
/// replicated).
fn asked_emissaries(mesh: &Mesh) -> std::collections::BTreeSet<String> {
    let views = election_views(mesh);
    let Some(first) = views.first() else {
        return Default::default();
    };
    first["elections"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["selected"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect()
}

/// How many of the elected stimuli have a settled winner on every node.
fn settled_everywhere(mesh: &Mesh, elected: &[(String, String)]) -> usize {
    let views = election_views(mesh);
    elected
        .iter()
        .filter(|(s, _)| {
            views.iter().all(|v| {
                v["elections"].as_array().is_some_and(|es| {
                    es.iter()
                        .any(|e| e["stimulus"] == s.as_str() && e["settled"] == true)
                })
            })
        })
        .count()
}

fn short(cid: &str) -> &str {
    &cid[cid.len().saturating_sub(10)..]
}

/// `chorus swarm`.
pub fn swarm(a: SwarmArgs) -> Result<i32> {
    if a.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(chorus_node::signal());
                stop.store(true, Ordering::SeqCst);
            }
        });
    }
    let t0 = Instant::now();
    prepare_dir(&a.dir)?;
    let dirs: Vec<PathBuf> = (0..a.nodes)
        .map(|i| a.dir.join(format!("node{i}")))
        .collect();
    let mut keys = vec![];
    for d in &dirs {
        std::fs::create_dir_all(d)?;
        keys.push(load_or_create_key(d)?);
    }
    let writers: Vec<serde_bytes::ByteBuf> = keys
        .iter()
        .map(|k| serde_bytes::ByteBuf::from(k.author().0.to_vec()))
        .collect();
    let genesis = Replica::init(
        &dirs[0],
        |admin| {
            let mut b = Genesis::new_body("swarm", admin.author(), Kairos3Machine.id());
            b.writers = writers;
            // Finality by quorum: a winner is final once more than two thirds of the nodes
            // have built on it, whoever is slow or gone.
            b.order = Some(chorus_core::genesis::ORDER_FINAL_2.into());
            b
        },
        Kairos3Machine,
    )?
    .timeline()
    .genesis_id();
    println!(
        "swarm: {} nodes in {}, timeline {genesis}",
        a.nodes,
        a.dir.display()
    );

    // Every node runs emissaries: one on the embedded model by default, or those of
    // --emissaries FILE (the same file for every node; each node's copies sign with its key).
    let per_node = match &a.emissaries {
        Some(f) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let file: EmissaryFile = toml::from_str(&text)
                .with_context(|| format!("{}: not an emissary file", f.display()))?;
            file.emissary.len()
        }
        None => {
            let p = chorus_llm::model::ensure_default()?;
            println!("embedded model: {}", p.display());
            1
        }
    };
    let emissary_file = a.emissaries.clone();
    let node_args = |i: usize, bootstrap: Option<&str>| {
        // Heartbeats every 500 ms while work is not final: a round takes about one, and a
        // block is final three to four rounds after it (docs/design/finality.md, Liveness).
        let mut v: Vec<String> = [
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api",
            "127.0.0.1:0",
            "--heartbeat-ms",
            "500",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(b) = bootstrap {
            v.extend(["--bootstrap".to_string(), b.to_string()]);
        }
        match &emissary_file {
            Some(f) => v.extend(["--emissaries".to_string(), f.display().to_string()]),
            None => v.extend(["--emissary".to_string(), format!("npc-{i}")]),
        }
        v
    };
    let wait = Duration::from_secs(30);
    let mut mesh = Mesh {
        procs: vec![],
        apis: vec![],
    };
    let mut first = Proc::spawn("node0", &dirs[0], &node_args(0, None))?;
    let boot = first.line("listening", wait)?;
    mesh.apis.push(
        first
            .line("api", wait)?
            .trim_start_matches("http://")
            .to_string(),
    );
    mesh.procs.push(first);
    println!("node0 (bootstrap) at {boot}");
    let exe = std::env::current_exe()?;
    for (i, d) in dirs.iter().enumerate().skip(1) {
        let out = Command::new(&exe)
            .arg("--data-dir")
            .arg(d)
            .args(["join", &boot])
            .output()
            .context("running chorus join")?;
        if !out.status.success() {
            bail!(
                "node{i}: join failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut p = Proc::spawn(&format!("node{i}"), d, &node_args(i, Some(&boot)))?;
        mesh.apis.push(
            p.line("api", wait)?
                .trim_start_matches("http://")
                .to_string(),
        );
        mesh.procs.push(p);
    }
    println!("{} nodes started; waiting for the mesh", a.nodes);
    let deadline = Instant::now() + wait;
    loop {
        let st = mesh.statuses();
        let connected = st
            .iter()
            .flatten()
            .filter(|s| s["peers"].as_array().is_some_and(|p| !p.is_empty()))
            .count();
        if connected == a.nodes || a.nodes == 1 {
            break;
        }
        if Instant::now() > deadline || stop.load(Ordering::SeqCst) {
            bail!("only {connected} of {} nodes found a peer", a.nodes);
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // The scripted scene: each stimulus goes to the gateway of the next node; the emissaries the
    // replicated dynamic-N rule selects answer with their models; the gateway returns the
    // first valid intent in the total order.
    wait_for_emissaries(&mesh, a.nodes * per_node, &stop)?;
    let mut last_print = Instant::now();
    let mut posted = 0u64;
    let mut elected: Vec<(String, String)> = vec![];
    // Which emissaries won, and how often: under kairos/2 and later the council changes per stimulus.
    let mut winners_by: std::collections::BTreeMap<String, usize> = Default::default();
    for r in 0..a.rounds {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let w = r % a.nodes;
        let (npc, context) = SCENE[r % SCENE.len()];
        let t = Instant::now();
        let res = http::post(
            &mesh.apis[w],
            "/v1/swarm/intent",
            &json!({
                "npc_name": npc, "role": "Tavern regular", "backstory": "You have lived in Emberfall all your life.",
                "context": context, "timeout_ms": INTENT_TIMEOUT_MS,
            }),
        );
        posted += 1;
        match res {
            Ok(v) => {
                println!(
                    "[{:>6.1}s] stimulus {r} via node{w}: {npc}: {context:?}\n           elected {} from {} ({}) in {:.1} s ({}, {} intent(s) so far): {}",
                    t0.elapsed().as_secs_f64(),
                    v["winner"].as_str().map_or("-", short),
                    v["emissary"].as_str().unwrap_or("?"),
                    v["model"].as_str().unwrap_or("?"),
                    t.elapsed().as_secs_f64(),
                    if v["settled"] == true {
                        "final"
                    } else {
                        "tentative"
                    },
                    v["intents"],
                    v["commands"],
                );
                if let (Some(s), Some(wi)) = (v["stimulus"].as_str(), v["winner"].as_str()) {
                    elected.push((s.to_string(), wi.to_string()));
                    let by = v["emissary"].as_str().unwrap_or("?").to_string();
                    *winners_by.entry(by).or_default() += 1;
                }
            }
            Err(e) => println!(
                "[{:>6.1}s] stimulus {r} via node{w}: no winner: {e:#}",
                t0.elapsed().as_secs_f64()
            ),
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let st = mesh.statuses();
            let mood = st.iter().flatten().next().map(|s| {
                format!(
                    " · coherence {:.4} dopamine {:+.4} ({})",
                    s["coherence"].as_f64().unwrap_or(0.0),
                    s["dopamine"].as_f64().unwrap_or(0.0),
                    s["cognitive_state"].as_str().unwrap_or("-")
                )
            });
            println!("{}{}", summary_line(t0, &st).0, mood.unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(a.pace_ms));
    }
    if stop.load(Ordering::SeqCst) {
        println!("interrupted after {posted} events; stopping the nodes");
    } else {
        println!("scene done: {posted} stimuli posted; waiting for convergence");
    }
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let mut converged = false;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let (line, ok) = summary_line(t0, &mesh.statuses());
        if ok || last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            println!("{line}");
        }
        if ok {
            converged = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let st = mesh.statuses();
    if let Some(s) = st.iter().flatten().next() {
        println!(
            "coherence {:.4}, dopamine {:+.4} ({})",
            s["coherence"].as_f64().unwrap_or(f64::NAN),
            s["dopamine"].as_f64().unwrap_or(f64::NAN),
            s["cognitive_state"].as_str().unwrap_or("-"),
        );
    }
    let agree = elections_agree(&mesh, &elected);
    println!(
        "elections: {} of {} stimuli elected; every node names the same winner for each: {agree}",
        elected.len(),
        posted
    );
    let asked = asked_emissaries(&mesh);
    println!(
        "council: {} distinct emissaries asked ({}); {} won: {}",
        asked.len(),
        asked.iter().cloned().collect::<Vec<_>>().join(", "),
        winners_by.len(),
        winners_by
            .iter()
            .map(|(e, n)| format!("{e} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Final (the swarm's timeline is final/1): a quorum of the nodes built on the winner, so
    // nothing can ever sort before it. Idle nodes get there by heartbeats.
    let wait = Instant::now();
    let mut settled = settled_everywhere(&mesh, &elected);
    while settled < elected.len() && wait.elapsed() < SETTLE_WAIT && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        settled = settled_everywhere(&mesh, &elected);
    }
    println!(
        "final on every node: {settled} of {} elections ({:.1} s after convergence)",
        elected.len(),
        wait.elapsed().as_secs_f64()
    );
    let finals = mesh.stop();
    println!("final state of every node:");
    let mut hashes = vec![];
    for (p, f) in mesh.procs.iter().zip(&finals) {
        println!(
            "  {:<6} {}",
            p.name,
            f.as_deref().unwrap_or("(no final line)")
        );
        hashes.push(f.clone());
    }
    hashes.dedup();
    let equal = hashes.len() == 1 && hashes[0].is_some();
    // Interrupted: the nodes still exchange what they hold before they stop; what counts is
    // whether they ended equal.
    let interrupted = stop.load(Ordering::SeqCst);
    if equal && agree && (converged || interrupted) {
        println!("all {} nodes ended with the same state_hash", a.nodes);
        Ok(0)
    } else {
        println!(
            "the nodes did NOT converge (logs: {}/node*/node.log)",
            a.dir.display()
        );
        Ok(1)
    }
}
