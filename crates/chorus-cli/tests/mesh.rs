//! The mesh with real `chorus node` processes on 127.0.0.x: convergence under concurrent
//! writers, SIGKILL and wiped disks, posterity from one survivor.

mod common;

use std::{
    collections::BTreeSet,
    thread,
    time::{Duration, Instant},
};

use common::*;

fn writer_threads(nodes: &[&Node], per_node: usize, batch: usize, tag: &str) -> Vec<String> {
    thread::scope(|s| {
        let hs: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let tag = tag.to_string();
                s.spawn(move || {
                    let mut ids = vec![];
                    for b in 0..per_node / batch {
                        ids.extend(
                            n.append(&format!("{tag} node {i} batch {b} event {{i}}"), batch)
                                .expect("append"),
                        );
                    }
                    ids
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

/// Done-when 1: 5 nodes, 5 writers, 2 000 events → same event count and state_hash.
#[test]
fn five_nodes_five_writers_converge() {
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 5, 5);
    let mut n0 = Node::start("n0", &dirs[0], "127.0.0.11", &[]);
    let mut others: Vec<Node> = (1..5)
        .map(|i| {
            join(&dirs[i], &n0.addr);
            Node::start(
                &format!("n{i}"),
                &dirs[i],
                &format!("127.0.0.{}", 11 + i),
                std::slice::from_ref(&n0.addr),
            )
        })
        .collect();
    let all: Vec<&Node> = std::iter::once(&n0).chain(others.iter()).collect();
    meshed(&all, Duration::from_secs(60));
    initial_sync(
        &mut std::iter::once(&mut n0)
            .chain(others.iter_mut())
            .collect::<Vec<_>>(),
        5,
    );
    let all: Vec<&Node> = std::iter::once(&n0).chain(others.iter()).collect();
    let acked = writer_threads(&all, 400, 20, "w");
    assert_eq!(acked.len(), 2000);
    let mut refs: Vec<&mut Node> = std::iter::once(&mut n0).chain(others.iter_mut()).collect();
    // genesis + 4 member events + 2 000
    let hash = converge(&mut refs, 2005, Duration::from_secs(120));
    let ids = refs[3].ids();
    assert_eq!(ids.len(), 2005);
    assert!(acked.iter().all(|a| ids.contains(a)));
    eprintln!("converged: state_hash {hash}");
}

/// Done-when 2: SIGKILL 3 of 5 while writing continues; restart them, one wiped; all converge
/// and every event acknowledged before the kills is everywhere.
#[test]
fn sigkill_three_of_five_and_wipe_one() {
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 5, 5);
    let n0 = Node::start("n0", &dirs[0], "127.0.0.21", &[]);
    let boot = vec![n0.addr.clone()];
    let mut nodes = vec![n0];
    for (i, d) in dirs.iter().enumerate().skip(1) {
        join(d, &boot[0]);
        nodes.push(Node::start(
            &format!("n{i}"),
            d,
            &format!("127.0.0.{}", 21 + i),
            &boot,
        ));
    }
    meshed(&nodes.iter().collect::<Vec<_>>(), Duration::from_secs(60));
    initial_sync(&mut nodes.iter_mut().collect::<Vec<_>>(), 5);
    // Phase 1: everyone writes; wait until it is everywhere, so the wiped node's own writes
    // are replicated before its disk is lost.
    let mut acked: BTreeSet<String> =
        writer_threads(&nodes.iter().collect::<Vec<_>>(), 100, 10, "p1")
            .into_iter()
            .collect();
    converge(
        &mut nodes.iter_mut().collect::<Vec<_>>(),
        505,
        Duration::from_secs(60),
    );
    // Phase 2: nodes 0, 1, 2 keep writing; 2, 3, 4 are SIGKILLed in the middle.
    let (survivors, victims) = nodes.split_at_mut(2);
    let more: Vec<String> = thread::scope(|s| {
        let writers: Vec<_> = survivors
            .iter()
            .map(|n| {
                s.spawn(move || {
                    let mut ids = vec![];
                    for b in 0..30 {
                        ids.extend(n.append(&format!("p2 {b} {{i}}"), 5).unwrap());
                        thread::sleep(Duration::from_millis(20));
                    }
                    ids
                })
            })
            .collect();
        // The victim node 2 writes too until it dies: what it acknowledged is on its disk.
        let mut v_ids = vec![];
        for b in 0..10 {
            v_ids.extend(victims[0].append(&format!("victim {b} {{i}}"), 5).unwrap());
        }
        thread::sleep(Duration::from_millis(200));
        for v in victims.iter_mut() {
            v.kill();
        }
        let mut ids: Vec<String> = writers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        ids.extend(v_ids);
        ids
    });
    acked.extend(more);
    // Restart: 2 and 3 with their data, 4 wiped (joins again through a survivor).
    let survivor = nodes[1].addr.clone();
    for i in 2..5 {
        if i == 4 {
            std::fs::remove_dir_all(&dirs[4]).unwrap();
            join(&dirs[4], &survivor);
        }
        nodes[i] = Node::start(
            &format!("n{i}"),
            &dirs[i],
            &format!("127.0.0.{}", 21 + i),
            std::slice::from_ref(&survivor),
        );
    }
    let n = acked.len() as u64 + 5;
    converge(
        &mut nodes.iter_mut().collect::<Vec<_>>(),
        n,
        Duration::from_secs(120),
    );
    for node in &nodes {
        let ids = node.ids();
        let lost: Vec<&String> = acked.iter().filter(|a| !ids.contains(*a)).collect();
        assert!(
            lost.is_empty(),
            "{}: lost {} acked events",
            node.name,
            lost.len()
        );
    }
}

/// Done-when 3: posterity. 20 nodes, 5 000 events, SIGKILL 19; 5 fresh empty nodes that know
/// only the survivor's address rebuild, verify, and reach the survivor's state_hash.
#[test]
fn posterity_one_survivor_rebuilds_five_fresh_nodes() {
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 20, 5);
    let n0 = Node::start("n0", &dirs[0], "127.0.0.41", &[]);
    let boot = vec![n0.addr.clone()];
    let mut nodes = vec![n0];
    for (i, d) in dirs.iter().enumerate().skip(1) {
        join(d, &boot[0]);
        nodes.push(Node::start(
            &format!("n{i}"),
            d,
            &format!("127.0.0.{}", 41 + i),
            &boot,
        ));
    }
    let t0 = std::time::Instant::now();
    meshed(&nodes.iter().collect::<Vec<_>>(), Duration::from_secs(60));
    initial_sync(&mut nodes.iter_mut().collect::<Vec<_>>(), 5);
    eprintln!("[{:?}] 20 nodes meshed and synced", t0.elapsed());
    let writers: Vec<&Node> = nodes.iter().take(5).collect();
    writer_threads(&writers, 1000, 50, "posterity");
    eprintln!("[{:?}] 5 000 events written", t0.elapsed());
    let hash = converge(
        &mut nodes.iter_mut().collect::<Vec<_>>(),
        5005,
        Duration::from_secs(180),
    );
    eprintln!("[{:?}] 20 nodes converged", t0.elapsed());
    // Keep node 13 (not the bootstrap, not a writer): no node is special.
    let mut survivor = nodes.remove(13);
    for n in nodes.iter_mut() {
        n.kill();
    }
    drop(nodes);
    let mut fresh = vec![];
    for i in 0..5 {
        let d = root.path().join(format!("fresh{i}"));
        join(&d, &survivor.addr);
        fresh.push(Node::start(
            &format!("fresh{i}"),
            &d,
            &format!("127.0.0.{}", 81 + i),
            std::slice::from_ref(&survivor.addr),
        ));
    }
    let mut all: Vec<&mut Node> = std::iter::once(&mut survivor)
        .chain(fresh.iter_mut())
        .collect();
    let rebuilt = converge(&mut all, 5005, Duration::from_secs(180));
    eprintln!("[{:?}] 5 fresh nodes rebuilt", t0.elapsed());
    assert_eq!(rebuilt, hash);
    let survivor_peer = survivor.addr.rsplit("/p2p/").next().unwrap().to_string();
    for f in &fresh {
        // The rebuilt node says so itself, comparing its state_hash with the survivor's.
        let line = f
            .printed(
                &format!("in sync with {survivor_peer}"),
                Duration::from_secs(20),
            )
            .unwrap_or_else(|| panic!("{} never reported being in sync", f.name));
        assert!(line.ends_with(&hash), "{line}");
    }
    for f in fresh.iter_mut() {
        f.stop();
        let out = ok(&f.dir, &["verify"]);
        assert!(out.contains("verify OK"), "{out}");
    }
}

/// The requests that broke a node's own store (one oversize or badly-kinded append, gateway
/// fields of 8 192 non-ASCII characters, `count` × a large body) are refused with a 4xx that
/// names the bound; afterwards `chorus verify` passes, the node restarts, and its peer stays in
/// sync and bans nobody.
#[test]
fn hostile_api_requests_are_refused_and_break_nothing() {
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 2, 2);
    let mut a = Node::start("a", &dirs[0], "127.0.0.41", &[]);
    join(&dirs[1], &a.addr);
    let mut b = Node::start("b", &dirs[1], "127.0.0.42", std::slice::from_ref(&a.addr));
    meshed(&[&a, &b], Duration::from_secs(60));
    initial_sync(&mut [&mut a, &mut b], 2);

    let refused = |path: &str, body: serde_json::Value, code: &str| {
        let e = post(&a.api, path, &body).expect_err("must be refused");
        assert!(e.starts_with(code), "{path}: expected {code}, got {e}");
        e
    };
    let e = refused(
        "/v1/events",
        serde_json::json!({"text": "x".repeat(100 * 1024)}),
        "413",
    );
    assert!(e.contains("49152-byte"), "{e}");
    let e = refused(
        "/v1/events",
        serde_json::json!({"kind": "Bad Kind!", "text": "hi"}),
        "422",
    );
    assert!(e.contains("kind"), "{e}");
    for c in ["é", "\u{1F600}"] {
        let field = c.repeat(8_192);
        let e = refused(
            "/v1/swarm/intent",
            serde_json::json!({"npc_name": field, "role": field, "backstory": field,
                               "context": field, "timeout_ms": 1}),
            "413",
        );
        assert!(e.contains("bytes"), "{e}");
    }
    refused(
        "/v1/events",
        serde_json::json!({"text": "y".repeat(40 * 1024), "count": 1000}),
        "413",
    );

    // Real work goes on, on both sides.
    a.append("after the hostile requests {i}", 5).unwrap();
    b.append("the peer writes too {i}", 5).unwrap();
    converge(&mut [&mut a, &mut b], 12, Duration::from_secs(60));
    for n in [&a, &b] {
        let st = n.status().unwrap();
        assert_eq!(st["sync"]["bans"], 0, "{}: {st}", n.name);
        assert_eq!(
            st["received"]["invalid_by_peer"],
            serde_json::json!({}),
            "{}",
            n.name
        );
    }

    // The store is sound and the node restarts.
    a.stop();
    let out = ok(&dirs[0], &["verify"]);
    assert!(out.contains("verify OK"), "{out}");
    let mut a = Node::start("a", &dirs[0], "127.0.0.41", std::slice::from_ref(&b.addr));
    a.append("after the restart", 1).unwrap();
    converge(&mut [&mut a, &mut b], 13, Duration::from_secs(60));
}

/// Heartbeats (issue 16): one member writes, two stay idle. The idle ones heartbeat, so every
/// write settles on every node within seconds (no event can sort before it any more), and then
/// the mesh goes quiet: heartbeats never ask for heartbeats.
#[test]
fn idle_members_heartbeat_so_every_write_settles_then_the_mesh_goes_quiet() {
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 3, 3);
    let mut n0 = Node::start_heartbeating("n0", &dirs[0], "127.0.1.21", &[], 500);
    let mut others: Vec<Node> = (1..3)
        .map(|i| {
            join(&dirs[i], &n0.addr);
            Node::start_heartbeating(
                &format!("n{i}"),
                &dirs[i],
                &format!("127.0.1.{}", 21 + i),
                std::slice::from_ref(&n0.addr),
                500,
            )
        })
        .collect();
    meshed(
        &std::iter::once(&n0)
            .chain(others.iter())
            .collect::<Vec<_>>(),
        Duration::from_secs(60),
    );
    initial_sync(
        &mut std::iter::once(&mut n0)
            .chain(others.iter_mut())
            .collect::<Vec<_>>(),
        3,
    );
    let acked = others[0].append("w {i}", 20).expect("append");
    assert_eq!(acked.len(), 20);
    let all: Vec<&Node> = std::iter::once(&n0).chain(others.iter()).collect();
    let t = std::time::Instant::now();
    loop {
        let unsettled: Vec<(String, usize)> = all
            .iter()
            .map(|n| {
                let settled = n.ids_where(|e| e["settled"] == true);
                let missing = acked.iter().filter(|a| !settled.contains(*a)).count();
                (n.name.clone(), missing)
            })
            .filter(|(_, m)| *m > 0)
            .collect();
        if unsettled.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "writes not settled after 15 s: {unsettled:?}\n{}",
            log_tails(all.iter().copied(), 10)
        );
        thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "every write settled on every node in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // The idle members covered the writes with heartbeats (later than every write: the ones
    // made at start, for the genesis and the member events, do not count).
    let last_write = std::cell::Cell::new(0u64);
    n0.ids_where(|e| {
        if acked.iter().any(|a| e["cid"] == a.as_str()) {
            last_write.set(last_write.get().max(e["lc"].as_u64().unwrap()));
        }
        false
    });
    let later_heartbeats =
        n0.ids_where(|e| e["kind"] == "heartbeat" && e["lc"].as_u64().unwrap() > last_write.get());
    assert!(
        later_heartbeats.len() >= 2,
        "the idle members heartbeated after the writes (n0 holds {} such)",
        later_heartbeats.len()
    );
    // Quiet: after the last heartbeats spread, nothing more is written.
    thread::sleep(Duration::from_secs(2));
    let count = |n: &Node| n.status().unwrap()["events"].as_u64().unwrap();
    let before: Vec<u64> = all.iter().map(|n| count(n)).collect();
    thread::sleep(Duration::from_secs(4));
    let after: Vec<u64> = all.iter().map(|n| count(n)).collect();
    assert_eq!(before, after, "an idle mesh goes quiet");
}

/// Membership through a running node: `chorus member add|remove` on the admin's data directory
/// while its node runs goes through `POST /v1/members` (the store is locked by the node); the
/// new member's writes are taken once the change reaches it, and refused again after the
/// removal; a node that is not the admin is refused with the timeline's reason.
#[test]
fn the_admin_changes_membership_while_its_node_runs() {
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 2, 1);
    let key1 = ok(&dirs[1], &["key"]).trim().to_string();
    let n0 = Node::start("n0", &dirs[0], "127.0.2.31", &[]);
    join(&dirs[1], &n0.addr);
    let n1 = Node::start("n1", &dirs[1], "127.0.2.32", std::slice::from_ref(&n0.addr));
    meshed(&[&n0, &n1], Duration::from_secs(60));
    assert!(n1.append("not yet a member", 1).is_err());

    let id = ok(&dirs[0], &["member", "add", &key1, "--role", "writer"]);
    assert!(
        id.trim().starts_with("bafy"),
        "prints the member event: {id}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while n1.append("now a member", 1).is_err() {
        assert!(
            Instant::now() < deadline,
            "n1 never became a writer after the admin's node added it"
        );
        thread::sleep(Duration::from_millis(100));
    }

    // n1 is not the admin: the timeline refuses its member event, and the CLI says why.
    let out = chorus(&dirs[1], &["member", "remove", &key1]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin"), "{err}");

    ok(&dirs[0], &["member", "remove", &key1]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while n1.append("removed", 1).is_ok() {
        assert!(
            Instant::now() < deadline,
            "n1 still writes after the admin's node removed it"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Every command that reads or changes a data directory works while its node runs (the node
/// locks the store): with a token set on the node (`CHORUS_API_TOKEN`, its default) and in the
/// CLI's environment, `member add`, `state`, `log` (paged past one API page), `verify` and
/// `export --car|--jsonl` go through the node's API; without the token the write is refused and
/// says why. The live CAR export is byte for byte the one the stopped node's store writes, and
/// both verifications arrive at the same state hash.
#[test]
fn store_commands_work_against_a_running_node_with_a_token() {
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 2, 1);
    let key1 = ok(&dirs[1], &["key"]).trim().to_string();
    let token = [("CHORUS_API_TOKEN", "s3cret-token")];
    let mut n0 = Node::start_env("n0", &dirs[0], "127.0.2.41", &[], &token);
    let d = &dirs[0];

    let refused = chorus(d, &["member", "add", &key1, "--role", "writer"]);
    assert!(
        !refused.status.success(),
        "a write without the token is refused"
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("401"), "{err}");
    let member = ok_env(d, &["member", "add", &key1, "--role", "writer"], &token);
    assert!(member.trim().starts_with("bafy"), "{member}");
    ok_env(d, &["append", "--count", "600", "first {i}"], &token);
    ok_env(d, &["append", "--count", "600", "second {i}"], &token);

    // The node folds 1 200 KAIROS events in slices; until then the state is the last fold's.
    let deadline = Instant::now() + Duration::from_secs(60);
    let state = loop {
        let s: serde_json::Value =
            serde_json::from_str(&ok_env(d, &["state", "--json"], &token)).unwrap();
        if s["folding"] != true {
            break s;
        }
        assert!(Instant::now() < deadline, "still folding after 60 s");
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        state["events"], 1202,
        "genesis, the member event, 1 200 appends"
    );
    let hash = state["state_hash"].as_str().unwrap().to_string();
    let text = ok_env(d, &["state"], &token);
    assert!(text.contains(&hash), "{text}");

    let log = ok_env(d, &["log", "--limit", "0", "--json"], &token);
    let positions: Vec<u64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["pos"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        positions,
        (0..1202).collect::<Vec<_>>(),
        "every event once, in order"
    );
    let tenth: serde_json::Value = serde_json::from_str(log.lines().nth(10).unwrap()).unwrap();
    let page = ok_env(
        d,
        &[
            "log",
            "--from",
            tenth["cid"].as_str().unwrap(),
            "--limit",
            "5",
        ],
        &token,
    );
    assert_eq!(page.lines().count(), 5, "{page}");
    assert!(
        page.lines().next().unwrap().trim_start().starts_with("10 "),
        "{page}"
    );
    let head = ok_env(d, &["log", "--limit", "3"], &token);
    assert!(head.contains(&format!("add writer {key1}")), "{head}");

    let verified = ok_env(d, &["verify"], &token);
    assert!(
        verified.contains("verify OK (through the running node") && verified.contains(&hash),
        "{verified}"
    );
    let live_car = root.path().join("live.car");
    let live_jsonl = root.path().join("live.jsonl");
    ok_env(d, &["export", "--car", live_car.to_str().unwrap()], &token);
    ok_env(
        d,
        &["export", "--jsonl", live_jsonl.to_str().unwrap()],
        &token,
    );
    assert_eq!(
        std::fs::read_to_string(&live_jsonl)
            .unwrap()
            .lines()
            .count(),
        1202
    );

    n0.stop();
    let offline_car = root.path().join("offline.car");
    ok(d, &["export", "--car", offline_car.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(&live_car).unwrap(),
        std::fs::read(&offline_car).unwrap(),
        "the live export is the store's export"
    );
    let offline = ok(d, &["verify"]);
    assert!(offline.contains(&hash), "{offline}");
}

/// A node configured the way a container is: its bootstrap peer by DNS name and without a
/// peer id (`CHORUS_BOOTSTRAP=/dns4/localhost/tcp/PORT`), the rest from a TOML file named by
/// `CHORUS_CONFIG` (an external address, an emissary-free node), and its replica created from
/// `--genesis FILE` on first start. It meshes with the node it named and catches up with it.
#[test]
fn a_node_configured_by_environment_and_file_finds_its_peer_by_dns_name() {
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 2, 1);
    let mut n0 = Node::start("n0", &dirs[0], "127.0.0.1", &[]);
    n0.append("before the second node", 5).unwrap();
    let port = n0
        .addr
        .split("/tcp/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    // The timeline as an operator ships it (a ConfigMap): an export; only its genesis is used.
    let genesis = root.path().join("genesis.car");
    ok(&dirs[0], &["export", "--car", genesis.to_str().unwrap()]);
    let config = root.path().join("node.toml");
    std::fs::write(
        &config,
        "external-address = [\"/dns4/n1.chorus.test/tcp/4001\"]\nemissary = []\n",
    )
    .unwrap();
    let env = [
        ("CHORUS_BOOTSTRAP", format!("/dns4/localhost/tcp/{port}")),
        ("CHORUS_CONFIG", config.display().to_string()),
        ("CHORUS_GENESIS", genesis.display().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert!(!dirs[1].join("store.redb").exists());
    let mut n1 = Node::start_env("n1", &dirs[1], "127.0.0.1", &[], &env);
    meshed(&[&n0, &n1], Duration::from_secs(60));
    converge(&mut [&mut n0, &mut n1], 6, Duration::from_secs(60));
    let log = std::fs::read_to_string(dirs[1].with_extension("log")).unwrap_or_default();
    assert!(!log.contains("cannot dial bootstrap"), "{log}");
}
