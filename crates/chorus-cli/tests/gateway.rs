//! The gateway and the emissaries with real node processes on 127.0.0.x:
//! - `POST /v1/swarm/intent` answers with the first valid intent while a slow emissary is
//!   still running its model call;
//! - the command ward's refusals are published as failures that never win;
//! - on a 5-node mesh with emissaries of very different speeds, 50 stimuli get the same
//!   winner on every node;
//! - on a 5-node mesh where one emissary's node is SIGKILLed mid-run, 50 gateway requests
//!   all get a winner (the dead emissary costs one escalation deadline at most twice), every
//!   node names the same winners, and every live emissary is asked;
//! - an election whose asked emissaries give no valid answer is escalated by the gateway
//!   until a valid one answers, and ends `exhausted` (504) when nobody is left;
//! - the `openai` Python client talks to `/v1/chat/completions`, streaming and not.
//!
//! Timing-independent backends (`scripted`: a fixed reply after a fixed delay) stand in for
//! models where the subject is the election, not the model; the OpenAI-client test runs the
//! embedded model.

mod common;

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use common::*;
use serde_json::{Value, json};

fn scripted(name: &str, reply: &str, delay_ms: u64) -> String {
    format!(
        "[[emissary]]\nname = {name:?}\nbackend = {{ kind = \"scripted\", reply = {reply:?}, delay_ms = {delay_ms} }}\n"
    )
}

fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// The lines of an SSE stream at `path`, read by a thread of their own.
fn sse_lines(api: &str, path: &str) -> std::sync::mpsc::Receiver<String> {
    sse_lines_with(api, path, "")
}

/// As [`sse_lines`], with more request header lines (each ending in `\r\n`).
fn sse_lines_with(api: &str, path: &str, headers: &str) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (api, path, headers) = (api.to_string(), path.to_string(), headers.to_string());
    std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::net::TcpStream::connect(&api).unwrap();
        // The Host a client names for a loopback API: its address (a loopback API refuses
        // any other name, against DNS rebinding).
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {api}\r\nAccept: text/event-stream\r\n{headers}\r\n"
        )
        .unwrap();
        for line in BufReader::new(s).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Whether python3 can import `module` (of the PyPI package `package`); without it a test
/// says it is skipped, which CI forbids (`CHORUS_REQUIRE_OPENAI` covers the Python packages
/// the tests use).
fn python_has(module: &str, package: &str) -> bool {
    let has = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        assert!(
            std::env::var("CHORUS_REQUIRE_OPENAI").is_err(),
            "CHORUS_REQUIRE_OPENAI is set but python3 cannot import {module}"
        );
        eprintln!("skipped: the Python package {package} is not installed (pip install {package})");
    }
    has
}

/// Whether python3 can import the official `openai` package.
fn openai_installed() -> bool {
    python_has("openai", "openai")
}

/// n0 (admin) and n1 (writer) on `ip0`/`ip1`; n0 runs the emissaries of `file`.
fn pair(root: &Path, ip: u8, file: &str) -> (Node, Node) {
    let dirs = timeline(root, 2, 2);
    let n0 = Node::start_with(
        "n0",
        &dirs[0],
        &format!("127.0.0.{ip}"),
        &[],
        &["--emissaries", file],
        None,
    );
    join(&dirs[1], &n0.addr);
    let n1 = Node::start(
        "n1",
        &dirs[1],
        &format!("127.0.0.{}", ip + 1),
        std::slice::from_ref(&n0.addr),
    );
    meshed(&[&n0, &n1], Duration::from_secs(60));
    (n0, n1)
}

/// Waits until `n` emissaries are registered in the node's state.
fn registered(node: &Node, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let k = get(&node.api, "/v1/state")
            .map(|s| s["state"]["emissaries"].as_array().map_or(0, Vec::len))
            .unwrap_or(0);
        if k >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{k} of {n} emissaries registered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn election(node: &Node, stimulus: &str) -> Value {
    get(&node.api, "/v1/swarm/elections").unwrap()["elections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["stimulus"] == stimulus)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn the_gateway_answers_with_the_first_valid_intent_while_the_slow_emissary_runs() {
    let root = tempfile::tempdir().unwrap();
    let file = write_file(
        root.path(),
        "emissaries.toml",
        &(scripted("gpu", r#"["say Welcome, traveller!", "bow"]"#, 2_000)
            + &scripted("pi-zero", r#"["say ...hello?"]"#, 45_000)),
    );
    let (n0, _n1) = pair(root.path(), 81, &file);
    registered(&n0, 2);
    let t = Instant::now();
    let r = post(
        &n0.api,
        "/v1/swarm/intent",
        &json!({"npc_name": "Mira", "role": "Innkeeper", "backstory": "Runs the inn.",
                "context": "A stranger enters.", "timeout_ms": 30_000}),
    )
    .expect("intent");
    let took = t.elapsed();
    assert_eq!(r["emissary"], "gpu", "{r}");
    assert_eq!(r["commands"], json!(["say Welcome, traveller!", "bow"]));
    assert_eq!(r["n"], 2, "dopamine 0 selects two emissaries: {r}");
    // The slow emissary is still inside its 45 s model call: the reply did not wait for it.
    let st = get(&n0.api, "/v1/status").unwrap();
    assert_eq!(st["active_emissaries"], json!(["pi-zero"]), "{st}");
    let e = election(&n0, r["stimulus"].as_str().unwrap());
    assert_eq!(e["intents"], 1, "only the fast intent exists yet: {e}");
    eprintln!(
        "gateway answered in {took:?} (fast 2 s, slow 45 s); settled {}",
        r["settled"]
    );
}

#[test]
fn the_ward_refuses_the_originals_dangerous_forms_and_such_intents_never_win() {
    let root = tempfile::tempdir().unwrap();
    let file = write_file(
        root.path(),
        "emissaries.toml",
        &(scripted(
            "a-rogue",
            r#"["py import os; os.system('rm -rf /')", "@py self.delete()", "say evennia.search_object('x')", "caller.msg('pwned')"]"#,
            0,
        ) + &scripted("b-honest", r#"["say Good evening.", "py", "look"]"#, 500)),
    );
    let (n0, _n1) = pair(root.path(), 84, &file);
    registered(&n0, 2);
    let r = post(
        &n0.api,
        "/v1/swarm/intent",
        &json!({"npc_name": "Tomas", "context": "Someone spills your ale.", "timeout_ms": 30_000}),
    )
    .expect("intent");
    // The rogue answered first, but everything it said was refused: it cannot win.
    assert_eq!(r["emissary"], "b-honest", "{r}");
    assert_eq!(
        r["commands"],
        json!(["say Good evening.", "look"]),
        "`py` stripped"
    );
    let sid = r["stimulus"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let e = loop {
        let e = election(&n0, sid);
        if e["intents"] == 2 || Instant::now() > deadline {
            break e;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        (e["intents"].clone(), e["valid"].clone()),
        (json!(2), json!(1)),
        "{e}"
    );
    // The failure is in the timeline, with its reason.
    let evs = get(&n0.api, &format!("/v1/events?from={sid}&limit=100")).unwrap();
    let n = evs["events"].as_array().unwrap().len();
    assert!(n >= 3, "stimulus and two intents: {evs}");
    let st = get(&n0.api, "/v1/status").unwrap();
    let rogue = st["emissaries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "a-rogue")
        .unwrap()
        .clone();
    assert_eq!(rogue["refused_commands"], 4, "{rogue}");
    assert_eq!(rogue["failures"], 1, "{rogue}");
}

#[test]
fn fifty_stimuli_elect_the_same_winner_on_every_node_of_five() {
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 5, 5);
    // Very different speeds: 0 ms, 50 ms, 300 ms, 1 s and 3 s per answer. Which of them the
    // dynamic-N rule selects depends on weights and keys; a selected slow emissary with 4 calls
    // running answers `busy` (a failure, never a winner): some stimuli rightly have no winner.
    let delays = [0u64, 50, 300, 1_000, 3_000];
    let files: Vec<String> = delays
        .iter()
        .enumerate()
        .map(|(i, d)| {
            write_file(
                root.path(),
                &format!("e{i}.toml"),
                &scripted(
                    &format!("e{i}-{d}ms"),
                    &format!("[\"say I am e{i}\", \"wave\"]"),
                    *d,
                ),
            )
        })
        .collect();
    let mut n0 = Node::start_with(
        "n0",
        &dirs[0],
        "127.0.0.91",
        &[],
        &["--emissaries", &files[0]],
        None,
    );
    let boot = vec![n0.addr.clone()];
    let mut others: Vec<Node> = (1..5)
        .map(|i| {
            join(&dirs[i], &boot[0]);
            Node::start_with(
                &format!("n{i}"),
                &dirs[i],
                &format!("127.0.0.{}", 91 + i),
                &boot,
                &["--emissaries", &files[i]],
                None,
            )
        })
        .collect();
    {
        let all: Vec<&Node> = std::iter::once(&n0).chain(others.iter()).collect();
        meshed(&all, Duration::from_secs(60));
        for n in &all {
            registered(n, 5);
        }
    }
    let mut stimuli = vec![];
    for k in 0..50 {
        let node = if k % 5 == 0 { &n0 } else { &others[k % 5 - 1] };
        let r = post(
            &node.api,
            "/v1/events",
            &json!({"kind": "stimulus", "body": {"npc_name": "Mira", "context": format!("scene {k}"), "text": format!("scene {k} the gate creaks")}}),
        )
        .expect("stimulus");
        stimuli.push(r["ids"][0].as_str().unwrap().to_string());
        std::thread::sleep(Duration::from_millis(300));
    }
    // Wait until every selected emissary has answered every stimulus everywhere (the slow
    // one is busy-refused beyond 4 in flight: a failure intent, still an answer).
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut nodes: Vec<&mut Node> = std::iter::once(&mut n0).chain(others.iter_mut()).collect();
    loop {
        let done = nodes.iter().all(|n| {
            let all = get(&n.api, "/v1/swarm/elections").unwrap_or(Value::Null);
            let by: BTreeMap<String, Value> = all["elections"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .map(|e| (e["stimulus"].as_str().unwrap_or("").to_string(), e.clone()))
                        .collect()
                })
                .unwrap_or_default();
            stimuli.iter().all(|s| {
                by.get(s)
                    .is_some_and(|e| e["intents"].as_u64() >= e["n"].as_u64())
            })
        });
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every stimulus was answered in 180 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let hash = converge(&mut nodes, 1, Duration::from_secs(60));
    let winners: Vec<Vec<(String, Value, Value)>> = nodes
        .iter()
        .map(|n| {
            let all = get(&n.api, "/v1/swarm/elections").unwrap();
            stimuli
                .iter()
                .map(|s| {
                    let e = all["elections"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|e| e["stimulus"] == s.as_str())
                        .cloned()
                        .unwrap();
                    (s.clone(), e["winner"].clone(), e["emissary"].clone())
                })
                .collect()
        })
        .collect();
    for w in &winners[1..] {
        assert_eq!(w, &winners[0], "winners differ between nodes");
    }
    let elected = winners[0].iter().filter(|(_, w, _)| w.is_string()).count();
    let mut by_emissary: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, e) in &winners[0] {
        *by_emissary
            .entry(e.as_str().unwrap_or("none").to_string())
            .or_default() += 1;
    }
    eprintln!(
        "5 nodes agree on 50 elections ({elected} with a winner) at state_hash {hash}: {by_emissary:?}"
    );
    assert!(
        elected >= 45,
        "{elected} of 50 stimuli elected a winner: {by_emissary:?}"
    );
}

#[test]
fn a_dead_emissary_costs_a_deadline_never_a_stall() {
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 5, 5);
    let delays = [0u64, 40, 80, 120, 160];
    let files: Vec<String> = delays
        .iter()
        .enumerate()
        .map(|(i, d)| {
            write_file(
                root.path(),
                &format!("e{i}.toml"),
                &scripted(&format!("e{i}"), &format!("[\"say I am e{i}\"]"), *d),
            )
        })
        .collect();
    // Heartbeats on: they are what renews an idle emissary's lease.
    let start = |i: usize, boot: &[String]| {
        Node::start_heartbeating_with(
            &format!("n{i}"),
            &dirs[i],
            &format!("127.0.2.{}", 11 + i),
            boot,
            &["--emissaries", &files[i]],
            300,
        )
    };
    let mut nodes = vec![start(0, &[])];
    let boot = vec![nodes[0].addr.clone()];
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        join(dir, &boot[0]);
        nodes.push(start(i, &boot));
    }
    {
        let all: Vec<&Node> = nodes.iter().collect();
        meshed(&all, Duration::from_secs(60));
        for n in &all {
            registered(n, 5);
        }
    }
    // Which emissary dies: n4's. Requests go to the others, one at a time, as a game would.
    let (killed, kill_at) = (4usize, 10usize);
    let mut stimuli = vec![];
    let mut rounds = 0;
    for k in 0..50 {
        if k == kill_at {
            nodes[killed].kill();
        }
        let at = &nodes[k % 4];
        let t = Instant::now();
        let r = post(
            &at.api,
            "/v1/swarm/intent",
            &json!({"npc_name": "Mira", "context": format!("scene {k}: the gate creaks"),
                    "timeout_ms": 30_000, "escalate_after_ms": 1_500}),
        )
        .unwrap_or_else(|e| panic!("request {k} ({:?} in): {e}", t.elapsed()));
        assert!(r["winner"].is_string(), "request {k}: {r}");
        rounds += r["round"].as_u64().unwrap_or(0);
        stimuli.push(r["stimulus"].as_str().unwrap().to_string());
    }
    let mut live: Vec<&mut Node> = nodes
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| *i != killed)
        .map(|(_, n)| n)
        .collect();
    let hash = converge(&mut live, 1, Duration::from_secs(60));
    let views: Vec<BTreeMap<String, Value>> = live
        .iter()
        .map(|n| {
            get(&n.api, "/v1/swarm/elections").unwrap()["elections"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e["stimulus"].as_str().unwrap().to_string(), e.clone()))
                .collect()
        })
        .collect();
    let winners = |v: &BTreeMap<String, Value>| -> Vec<Value> {
        stimuli.iter().map(|s| v[s]["winner"].clone()).collect()
    };
    for v in &views[1..] {
        assert_eq!(
            winners(v),
            winners(&views[0]),
            "winners differ between nodes"
        );
    }
    let mut asked: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (k, s) in stimuli.iter().enumerate() {
        for e in views[0][s]["selected"].as_array().unwrap() {
            let slot = asked
                .entry(e["name"].as_str().unwrap().to_string())
                .or_default();
            if k < kill_at {
                slot.0 += 1;
            } else {
                slot.1 += 1;
            }
        }
    }
    eprintln!(
        "50 requests, 0 timeouts, {rounds} escalation rounds; asked (before, after the kill): \
         {asked:?}; state_hash {hash}"
    );
    for i in (0..5).filter(|&i| i != killed) {
        let (before, after) = asked.get(&format!("e{i}")).copied().unwrap_or_default();
        assert!(
            before + after > 0,
            "live emissary e{i} was never asked: {asked:?}"
        );
    }
    // Asked until it owes MAX_OWED answers, then only as the probe beside the others (one
    // lapsed emissary every LEASE_STIMULI stimuli).
    let dead_after = asked.get(&format!("e{killed}")).map_or(0, |a| a.1);
    let probes = (50 - kill_at) / chorus_kairos::council::LEASE_STIMULI as usize + 1;
    assert!(
        dead_after <= chorus_kairos::council::MAX_OWED + probes,
        "the dead emissary was asked {dead_after} times after it died: {asked:?}"
    );
}

#[test]
fn an_election_without_a_valid_answer_escalates_until_one_comes() {
    let root = tempfile::tempdir().unwrap();
    // Two emissaries whose every answer the ward refuses (failures: they answer, never win)
    // and one honest one. N = 2: whenever the two rogues are asked, only an escalation can
    // bring a winner.
    let file = write_file(
        root.path(),
        "emissaries.toml",
        &(scripted("rogue-a", r#"["py import os"]"#, 0)
            + &scripted("rogue-b", r#"["@py self.delete()"]"#, 0)
            + &scripted("honest", r#"["say Good evening."]"#, 0)),
    );
    let (n0, n1) = pair(root.path(), 61, &file);
    registered(&n0, 3);
    // A client of the other node follows the elections as they change (SSE).
    let lines = sse_lines(&n1.api, "/v1/swarm/elections?stream=true");
    std::thread::sleep(Duration::from_millis(300));
    let mut rounds = vec![];
    let mut stimuli = vec![];
    for k in 0..12 {
        let r = post(
            &n0.api,
            "/v1/swarm/intent",
            &json!({"npc_name": "Tomas", "context": format!("scene {k}"),
                    "timeout_ms": 20_000, "escalate_after_ms": 300}),
        )
        .unwrap_or_else(|e| panic!("request {k}: {e}"));
        assert_eq!(r["emissary"], "honest", "{r}");
        rounds.push(r["round"].as_u64().unwrap());
        stimuli.push(r["stimulus"].as_str().unwrap().to_string());
    }
    // Every election's changes reached the follower, each winner named as one.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got: Vec<String> = vec![];
    let mut winners = 0;
    while Instant::now() < deadline && !stimuli.iter().all(|s| got.iter().any(|l| l.contains(s))) {
        if let Ok(l) = lines.recv_timeout(Duration::from_millis(200)) {
            winners += (l == "event: winner") as usize;
            got.push(l);
        }
    }
    for s in &stimuli {
        assert!(
            got.iter().any(|l| l.starts_with("data:") && l.contains(s)),
            "{s} never streamed"
        );
    }
    assert!(winners > 0, "no `winner` event among {} lines", got.len());
    let m = api(&n0.api).get_answer("/metrics").unwrap().body;
    let m = m.as_str().unwrap_or_default();
    eprintln!("escalation rounds per request: {rounds:?}");
    let escalations: u64 = rounds.iter().sum();
    assert!(
        m.lines()
            .any(|l| l == format!("chorus_gateway_escalations_total {escalations}")),
        "the gateway counts the {escalations} escalations it wrote"
    );
}

#[test]
fn a_client_can_wait_for_a_winner_no_event_can_displace() {
    let root = tempfile::tempdir().unwrap();
    let file = write_file(
        root.path(),
        "emissaries.toml",
        &scripted("honest", r#"["say Good evening."]"#, 0),
    );
    let dirs = timeline(root.path(), 2, 2);
    // Heartbeats: an idle member covers what it has seen, so winners settle.
    let n0 = Node::start_heartbeating_with(
        "n0",
        &dirs[0],
        "127.0.2.41",
        &[],
        &["--emissaries", &file],
        200,
    );
    join(&dirs[1], &n0.addr);
    let n1 = Node::start_heartbeating(
        "n1",
        &dirs[1],
        "127.0.2.42",
        std::slice::from_ref(&n0.addr),
        200,
    );
    meshed(&[&n0, &n1], Duration::from_secs(60));
    // n1 writes the stimulus, so it must first know it is a member: the admin's `member add`
    // precedes n0's registration in n0's chain, so seeing the emissary on n1 implies it.
    registered(&n1, 1);
    let r = post(
        &n1.api,
        "/v1/swarm/intent",
        &json!({"context": "the lamps go out", "consistency": "settled", "timeout_ms": 30_000}),
    )
    .expect("a settled winner");
    assert_eq!(
        (r["emissary"].clone(), r["settled"].clone()),
        (json!("honest"), json!(true)),
        "{r}"
    );
    let a = api(&n1.api)
        .post_answer(
            "/v1/swarm/intent",
            &json!({"context": "x", "consistency": "final"}),
        )
        .unwrap();
    // An lc-cid/1 timeline has no quorum finality: the 400 says so and what to use.
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.body["error"].as_str().unwrap().contains("lc-cid/1"),
        "{}",
        a.body
    );
    assert_eq!(r["final"], false, "{r}");
}

/// On a final/1 timeline (`chorus init --order final`) `"consistency": "final"` waits for a
/// winner a quorum of the members has finalized, and the reply says it is final.
#[test]
fn a_client_can_wait_for_a_final_winner_on_a_final_timeline() {
    let root = tempfile::tempdir().unwrap();
    let file = write_file(
        root.path(),
        "emissaries.toml",
        &scripted("honest", r#"["say Good evening."]"#, 0),
    );
    let dir = root.path().join("n0");
    ok(
        &dir,
        &["init", "--name", "final-gateway", "--order", "final"],
    );
    let n0 =
        Node::start_heartbeating_with("n0", &dir, "127.0.2.45", &[], &["--emissaries", &file], 200);
    registered(&n0, 1);
    let r = post(
        &n0.api,
        "/v1/swarm/intent",
        &json!({"context": "the lamps go out", "consistency": "final", "timeout_ms": 30_000}),
    )
    .expect("a final winner");
    assert_eq!(
        (
            r["emissary"].clone(),
            r["settled"].clone(),
            r["final"].clone()
        ),
        (json!("honest"), json!(true), json!(true)),
        "{r}"
    );
    let st = get(&n0.api, "/v1/status").unwrap();
    assert_eq!(st["order"], "final/2");
    assert!(
        st["finality"]["final_positions"].as_u64().unwrap() >= 3,
        "{st}"
    );
}

#[test]
fn an_election_nobody_valid_can_answer_ends_exhausted() {
    let root = tempfile::tempdir().unwrap();
    let file = write_file(
        root.path(),
        "emissaries.toml",
        &(scripted("rogue-a", r#"["py import os"]"#, 0)
            + &scripted("rogue-b", r#"["@py self.delete()"]"#, 0)),
    );
    let (n0, _n1) = pair(root.path(), 64, &file);
    registered(&n0, 2);
    let a = api(&n0.api)
        .post_answer(
            "/v1/swarm/intent",
            &json!({"context": "hello?", "timeout_ms": 3_000, "escalate_after_ms": 200}),
        )
        .expect("a reply");
    let body = a.body;
    assert_eq!(a.status, 504, "{body}");
    let e = &body["election"];
    assert_eq!(
        (
            e["round"].clone(),
            e["exhausted"].clone(),
            e["valid"].clone()
        ),
        (json!(1), json!(true), json!(0)),
        "both asked, both refused, one escalation found nobody left: {body}"
    );
}

#[test]
fn the_openai_python_client_talks_to_a_node() {
    if !openai_installed() {
        return;
    }
    chorus_llm::model::ensure_default().expect("fetching the embedded model");
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 2, 2);
    let n0 = Node::start_with(
        "n0",
        &dirs[0],
        "127.0.0.87",
        &[],
        &["--emissary", "smol-a", "--emissary", "smol-b"],
        None,
    );
    join(&dirs[1], &n0.addr);
    let n1 = Node::start("n1", &dirs[1], "127.0.0.88", std::slice::from_ref(&n0.addr));
    meshed(&[&n0, &n1], Duration::from_secs(60));
    registered(&n0, 2);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(format!("http://{}/v1", n0.api))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the openai client failed");
    assert!(stdout.contains("non-streaming ok") && stdout.contains("streaming ok"));
}

#[test]
fn event_stream_metrics_and_write_tokens() {
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 2, 2);
    // The token reaches the node through its environment only (`env VAR=… chorus …`).
    let n0 = Node::start_with(
        "n0",
        &dirs[0],
        "127.0.0.85",
        &[],
        &["--api-token-env", "CHORUS_TEST_API_TOKEN"],
        Some(&["env", "CHORUS_TEST_API_TOKEN=s3cret-token"]),
    );
    join(&dirs[1], &n0.addr);
    let n1 = Node::start("n1", &dirs[1], "127.0.0.86", std::slice::from_ref(&n0.addr));
    meshed(&[&n0, &n1], Duration::from_secs(60));

    // Writes without the token are refused; reads stay open.
    let body = json!({"kind": "stimulus", "text": "hello"});
    let e = post(&n0.api, "/v1/events", &body).unwrap_err();
    assert!(e.starts_with("401"), "{e}");
    assert!(get(&n0.api, "/v1/status").is_ok());

    // The SSE stream of n1 shows an event written through n0 (with the token).
    let rx = sse_lines(&n1.api, "/v1/events?stream=true");
    std::thread::sleep(Duration::from_millis(300));
    let mut resp = ureq::post(format!("http://{}/v1/events", n0.api))
        .header("content-type", "application/json")
        .header("authorization", "Bearer s3cret-token")
        .send(json!({"kind": "stimulus", "text": "seen on the stream"}).to_string())
        .unwrap();
    let ids: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    let cid = ids["ids"][0].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = false;
    while Instant::now() < deadline && !seen {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen = l.starts_with("data:") && l.contains(&cid) && l.contains("seen on the stream");
        }
    }
    assert!(seen, "the event {cid} did not appear on n1's SSE stream");

    // Prometheus text with the node's figures.
    let mut m = ureq::get(format!("http://{}/metrics", n1.api))
        .call()
        .unwrap();
    let text = m.body_mut().read_to_string().unwrap();
    assert!(text.contains("# TYPE chorus_events gauge"), "{text}");
    let events: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("chorus_events "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(events >= 3.0, "genesis, membership, the stimulus: {text}");
    assert!(text.contains("# TYPE chorus_gateway_intent_requests counter"));
}

/// `/v1/status` is shared between requests for a few milliseconds (so a thousand monitors cost
/// the node one status), but never hides a write: with other clients keeping the shared
/// snapshot warm, every append is in the very next status.
#[test]
fn status_under_load_still_shows_each_write_at_once() {
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 1, 1);
    let n0 = Node::start("n0", &dirs[0], "127.0.0.84", &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pollers: Vec<_> = (0..4)
        .map(|_| {
            let (api, stop) = (n0.api.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    get(&api, "/v1/status").unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut events = get(&n0.api, "/v1/status").unwrap()["events"]
        .as_u64()
        .unwrap();
    for i in 0..40 {
        let r = post(
            &n0.api,
            "/v1/events",
            &json!({"kind": "stimulus", "text": format!("write {i}")}),
        )
        .unwrap();
        let id = r["ids"][0].as_str().unwrap().to_string();
        let s = get(&n0.api, "/v1/status").unwrap();
        events += 1;
        assert_eq!(s["events"].as_u64(), Some(events), "write {i}: {s}");
        assert!(
            s["heads"].as_array().unwrap().iter().any(|h| h == &id),
            "write {i}: {id} is not a head in {s}"
        );
        assert_eq!(s["mesh_size"], 1);
        assert!(s["active_emissaries"].is_array());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let polled: u64 = pollers.into_iter().map(|p| p.join().unwrap()).sum();
    assert!(
        polled > 40,
        "the pollers kept the snapshot warm ({polled} requests)"
    );
}

/// The OpenAI Python client retries a request that timed out (504) — by default, with the same
/// `Idempotency-Key` on every attempt when the caller gives one. The node appends one stimulus
/// for all the attempts and answers the retry with the first attempt's election; another
/// request under the same key is refused (422); usage and `created` are filled in.
#[test]
fn an_sdk_retry_with_an_idempotency_key_appends_one_stimulus() {
    if !openai_installed() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let file = write_file(
        root.path(),
        "emissaries.toml",
        &(scripted("slow-a", r#"["ring the bell"]"#, 1_200)
            + &scripted("slow-b", r#"["open the door"]"#, 1_200)),
    );
    let (n0, _n1) = pair(root.path(), 91, &file);
    registered(&n0, 2);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_retry.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(format!("http://{}/v1", n0.api))
        .arg("bell-1")
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the openai client failed");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["retries"].as_u64().unwrap() >= 1, "the SDK retried: {r}");
    assert_eq!(r["replayed"], "true", "{r}");
    assert!(r["total_tokens"].as_u64().unwrap() > 0, "{r}");
    assert!(r["created"].as_u64().unwrap() > 1_700_000_000, "{r}");
    let metrics = ureq::get(format!("http://{}/metrics", n0.api))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let attempts = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chorus_gateway_chat_requests_total "))
        .unwrap();
    assert_eq!(
        attempts.parse::<f64>().unwrap(),
        1.0 + r["retries"].as_f64().unwrap()
    );
    // One stimulus for every attempt.
    let stimuli: Vec<Value> = get(&n0.api, "/v1/events?limit=1000").unwrap()["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "stimulus")
        .cloned()
        .collect();
    assert_eq!(stimuli.len(), 1, "{stimuli:?}");
    assert_eq!(stimuli[0]["cid"], r["stimulus"]);

    // The same key with another request: refused, nothing appended.
    let other = ureq::post(format!("http://{}/v1/chat/completions", n0.api))
        .header("content-type", "application/json")
        .header("idempotency-key", "bell-1")
        .config()
        .http_status_as_error(false)
        .build()
        .send(json!({"messages": [{"role": "user", "content": "Something else."}]}).to_string())
        .unwrap();
    assert_eq!(other.status().as_u16(), 422);
    let after = get(&n0.api, "/v1/events?limit=1000").unwrap()["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "stimulus")
        .count();
    assert_eq!(after, 1);
}

/// What API consumers need beside the swarm's answer: CORS for the origins the node names
/// (a preflight from one is answered, from another it is not), `GET /v1/models`, and one
/// election by its stimulus (404 for an id that is no stimulus here).
#[test]
fn cors_for_named_origins_the_model_list_and_one_election() {
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 1, 1);
    let file = write_file(
        root.path(),
        "emissaries.toml",
        &scripted("quick", r#"["nod"]"#, 50),
    );
    let n0 = Node::start_with(
        "n0",
        &dirs[0],
        "127.0.0.93",
        &[],
        &["--emissaries", &file, "--cors-origin", "http://app.example"],
        None,
    );
    registered(&n0, 1);
    let preflight = |origin: &str| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent()
            .options(format!("http://{}/v1/swarm/intent", n0.api))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, idempotency-key",
            )
            .call()
            .unwrap()
    };
    let allowed = preflight("http://app.example");
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    let refused = preflight("http://evil.example");
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "another origin gets no CORS grant"
    );

    let models = get(&n0.api, "/v1/models").unwrap();
    assert_eq!(models["data"][0]["id"], "chorus");

    let r = post(
        &n0.api,
        "/v1/swarm/intent",
        &json!({"context": "A cat walks in.", "timeout_ms": 10_000}),
    )
    .unwrap();
    let stimulus = r["stimulus"].as_str().unwrap();
    let one = get(&n0.api, &format!("/v1/swarm/elections/{stimulus}")).unwrap();
    assert_eq!(one["stimulus"], stimulus);
    assert_eq!(one["emissary"], "quick");
    let winner = r["winner"].as_str().unwrap();
    let e = get(&n0.api, &format!("/v1/swarm/elections/{winner}")).unwrap_err();
    assert!(e.starts_with("404"), "an intent is no election: {e}");
}

/// An event stream resumes where the client left it: every event carries its CID as SSE
/// `id:`, and a reconnection with `Last-Event-ID` first replays the events after that one in
/// the total order, then goes on live, none twice.
#[test]
fn the_event_stream_resumes_from_last_event_id() {
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 1, 1);
    let n0 = Node::start("n0", &dirs[0], "127.0.0.95", &[]);
    let ids = n0.append("before the reconnection {i}", 5).unwrap();
    let rx = sse_lines_with(
        &n0.api,
        "/v1/events?stream=true",
        &format!("Last-Event-ID: {}\r\n", ids[1]),
    );
    let next_id = || loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("an SSE line");
        if let Some(id) = line.strip_prefix("id:") {
            return id.trim().to_string();
        }
    };
    let replayed: Vec<String> = (0..3).map(|_| next_id()).collect();
    assert_eq!(
        replayed,
        ids[2..],
        "the events after the last one seen, in order"
    );
    let live = n0.append("after the reconnection", 1).unwrap();
    assert_eq!(next_id(), live[0], "then live, nothing replayed twice");
}

/// `/metrics` through the official Prometheus client's OpenMetrics parser.
fn parsed_metrics(url: &str) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/parse_metrics.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The samples of `family` whose name is `sample` (e.g. `…_count` of a histogram).
fn samples<'a>(m: &'a Value, family: &str, sample: &str) -> Vec<&'a Value> {
    m[family]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {family} in {m}"))
        .iter()
        .filter(|s| s[0] == sample)
        .collect()
}

#[test]
fn metrics_parse_as_openmetrics_with_histograms_and_an_emissary_name_to_escape() {
    if !python_has("prometheus_client", "prometheus-client") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    // A quote, a backslash and a line feed: each must be escaped in a label value.
    let name = "say \"hi\" \\ then\na new line";
    let file = write_file(
        root.path(),
        "emissaries.toml",
        &scripted(name, r#"["ring the bell"]"#, 300),
    );
    let dirs = timeline(root.path(), 2, 2);
    let mut n0 = Node::start_with(
        "n0",
        &dirs[0],
        "127.0.0.71",
        &[],
        &["--emissaries", &file, "--metrics-listen", "127.0.0.71:0"],
        None,
    );
    join(&dirs[1], &n0.addr);
    let mut n1 = Node::start("n1", &dirs[1], "127.0.0.72", std::slice::from_ref(&n0.addr));
    meshed(&[&n0, &n1], Duration::from_secs(60));
    registered(&n0, 1);
    // Genesis, n1's membership, the emissary's registration: n1 may write once it holds them.
    initial_sync(&mut [&mut n0, &mut n1], 3);
    // A stimulus written by n1, answered by n0's emissary: a round trip for n1.
    let r = post(
        &n1.api,
        "/v1/swarm/intent",
        &json!({"npc_name": "Mira", "context": "A bell.", "timeout_ms": 30_000}),
    )
    .expect("intent");
    assert_eq!(r["emissary"], name, "{r}");

    // n0 on its separate metrics address: no token, nothing but /metrics.
    let line = n0
        .process
        .printed("metrics http://", Duration::from_secs(5))
        .expect("n0 printed its metrics address");
    let url = line.trim_start_matches("metrics ").trim().to_string();
    let m0 = parsed_metrics(&url);
    let intents = samples(
        &m0,
        "chorus_emissary_intents",
        "chorus_emissary_intents_total",
    );
    assert_eq!(intents.len(), 1, "{m0}");
    assert_eq!(
        intents[0][1]["emissary"], name,
        "the label value round-trips"
    );
    assert_eq!(intents[0][2], 1.0);
    let calls = samples(
        &m0,
        "chorus_emissary_model_seconds",
        "chorus_emissary_model_seconds_count",
    );
    assert_eq!(calls[0][1]["emissary"], name);
    assert_eq!(calls[0][2], 1.0, "one model call: {m0}");
    let took = samples(
        &m0,
        "chorus_emissary_model_seconds",
        "chorus_emissary_model_seconds_sum",
    );
    assert!(
        took[0][2].as_f64().unwrap() >= 0.3,
        "the scripted delay: {m0}"
    );
    assert_eq!(m0["chorus_emissary_model_seconds"]["type"], "histogram");
    assert!(
        samples(
            &m0,
            "process_resident_memory_bytes",
            "process_resident_memory_bytes"
        )[0][2]
            .as_f64()
            .unwrap()
            > 1e6
    );
    let build = samples(&m0, "chorus_build", "chorus_build_info");
    assert_eq!(build[0][1]["version"], env!("CARGO_PKG_VERSION"));
    let status = ureq::get(url.replace("/metrics", "/v1/status")).call();
    assert!(status.is_err(), "the metrics address serves nothing else");

    // n1 through its API: the gateway's wait and the round trip, one each (the round trip is
    // timed off the node's event feed: it may come a moment after the answer).
    let deadline = Instant::now() + Duration::from_secs(10);
    let m1 = loop {
        let m = parsed_metrics(&format!("http://{}/metrics", n1.api));
        let counted = samples(
            &m,
            "chorus_propagation_round_trip_seconds",
            "chorus_propagation_round_trip_seconds_count",
        )[0][2]
            == 1.0;
        if counted || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let waits = samples(
        &m1,
        "chorus_gateway_wait_seconds",
        "chorus_gateway_wait_seconds_count",
    );
    assert_eq!(waits[0][2], 1.0, "{m1}");
    let trips = samples(
        &m1,
        "chorus_propagation_round_trip_seconds",
        "chorus_propagation_round_trip_seconds_count",
    );
    assert_eq!(trips[0][2], 1.0, "{m1}");
    let divergence = samples(
        &m1,
        "chorus_state_divergence",
        "chorus_state_divergence_total",
    );
    assert_eq!(divergence[0][2], 0.0);
}

#[test]
fn the_gateway_limits_each_client_and_openai_routes_answer_openai_errors() {
    if !openai_installed() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 1, 1);
    // 4 a minute, bursts of 1: the second request in a row is refused.
    let n0 = Node::start_with(
        "n0",
        &dirs[0],
        "127.0.0.73",
        &[],
        &["--gateway-rate", "4"],
        None,
    );
    let (ok, stdout) = run_openai_errors(&n0);
    assert!(ok, "the openai client failed");
    assert!(stdout.contains("400 ok") && stdout.contains("429 ok"));

    // The swarm API shares the bucket: refused before anything is appended.
    let events = get(&n0.api, "/v1/status").unwrap()["events"].clone();
    let e = post(
        &n0.api,
        "/v1/swarm/intent",
        &json!({"npc_name": "Mira", "context": "A bell.", "timeout_ms": 1_000}),
    )
    .unwrap_err();
    assert!(e.starts_with("429"), "{e}");
    assert_eq!(get(&n0.api, "/v1/status").unwrap()["events"], events);
    let metrics = ureq::get(format!("http://{}/metrics", n0.api))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "chorus_gateway_rate_limited_total 2"),
        "{metrics}"
    );

    // The check bites: the same client against a node without the limit (`--gateway-rate 0`)
    // gets its second request through (a 504: no emissary answers), and the script fails.
    let open_root = tempfile::tempdir().unwrap();
    let open_dirs = timeline(open_root.path(), 1, 1);
    let n1 = Node::start_with(
        "n1",
        &open_dirs[0],
        "127.0.0.77",
        &[],
        &["--gateway-rate", "0"],
        None,
    );
    let (ok, stdout) = run_openai_errors(&n1);
    assert!(!ok, "without the limit the 429 check must fail: {stdout}");
    assert!(
        stdout.contains("400 ok") && !stdout.contains("429 ok"),
        "{stdout}"
    );
}

#[test]
fn the_openapi_document_validates_and_describes_every_route_with_its_guard() {
    if !python_has("openapi_spec_validator", "openapi-spec-validator") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 1, 1);
    // A token: the document's guards are checked against what the node does without it.
    let n0 = Node::start_env(
        "n0",
        &dirs[0],
        "127.0.0.75",
        &[],
        &[("CHORUS_API_TOKEN", "openapi-test-token")],
    );
    let text = ureq::get(format!("http://{}/openapi.json", n0.api))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let file = root.path().join("openapi.json");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the document is not valid OpenAPI: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    // The routes a client of the README uses, each documented (the router is built from the
    // same annotations: a served route is a documented one).
    for (path, method) in [
        ("/v1/status", "get"),
        ("/v1/events", "get"),
        ("/v1/events", "post"),
        ("/v1/members", "post"),
        ("/v1/swarm/intent", "post"),
        ("/v1/swarm/elections/{stimulus}", "get"),
        ("/v1/chat/completions", "post"),
        ("/v1/models", "get"),
        ("/v1/export", "get"),
        ("/metrics", "get"),
        ("/health", "get"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} not in the document"
        );
    }
    // Writes name the bearer token; reads do not (a public timeline). And the node does what
    // the document says: every operation that names the token refuses a request without it
    // (401), and no other one does.
    let secured = |path: &str, method: &str| paths[path][method]["security"].is_array();
    assert!(secured("/v1/swarm/intent", "post") && secured("/v1/events", "post"));
    assert!(secured("/v1/export", "get") && !secured("/v1/status", "get"));
    let mut checked = 0;
    for (path, ops) in paths {
        for (method, _) in ops.as_object().unwrap() {
            let concrete = path
                .replace(
                    "{stimulus}",
                    "bafyreigfeyn76hlf2s3emi3vk5fqcy7ilekgdpzpriurnbqjzsjst46erm",
                )
                .replace("{name}", "dashboard.js");
            let status = status_without_token(&n0.api, method, &concrete);
            if secured(path, method) {
                assert_eq!(
                    status, 401,
                    "{method} {path} is documented as needing the token"
                );
            } else {
                assert_ne!(status, 401, "{method} {path} is documented as open");
            }
            checked += 1;
        }
    }
    assert!(checked >= 18, "{checked} operations");
    assert_eq!(
        doc["components"]["securitySchemes"]["token"]["scheme"],
        "bearer"
    );
    // Request bodies are the handlers' own types.
    let intent = &doc["components"]["schemas"]["IntentRequest"]["properties"];
    assert!(
        intent["npc_name"].is_object() && intent["timeout_ms"].is_object(),
        "{intent}"
    );
    let responses = &paths["/v1/swarm/intent"]["post"]["responses"];
    assert!(responses["429"].is_object() && responses["504"].is_object());
}

/// The status of `METHOD path` sent with no token and an empty body (headers only are read).
fn status_without_token(api: &str, method: &str, path: &str) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{} {path} HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n",
        method.to_uppercase()
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status line in {line:?}"))
}

/// `openai_errors.py` against `node`: whether it passed, and what it printed.
fn run_openai_errors(node: &Node) -> (bool, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_errors.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(format!("http://{}/v1", node.api))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.success(), stdout)
}
