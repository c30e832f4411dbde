//! A light node (`chorus node --light`) among real full node processes on 127.0.0.x: it
//! follows the timeline to the same state_hash, acknowledges its own writes only once a full
//! node stored them, and keeps retrying a write no full node took until one does. In memory
//! (`--in-memory`) it forgets blocks behind the settled horizon and starts empty; on disk (the
//! default) it restarts from its own replica and hands on the writes a crash left unsettled.

mod common;

use std::{thread, time::Duration};

use common::*;
use serde_json::Value;

/// Whether the node at `api` holds the event `id`.
fn holds(api: &str, id: &str) -> bool {
    get(api, &format!("/v1/events?from={id}&limit=1")).is_ok_and(|v| {
        v["events"]
            .as_array()
            .is_some_and(|e| e.first().is_some_and(|e| e["cid"] == id))
    })
}

fn light_status(n: &Node) -> Value {
    n.status().expect("light node status")["light_node"].clone()
}

#[test]
fn light_node_in_memory_follows_prunes_and_writes_through_full_nodes() {
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 4, 4);
    let mut n0 = Node::start("n0", &dirs[0], "127.0.0.71", &[]);
    let boot = vec![n0.addr.clone()];
    join(&dirs[1], &n0.addr);
    join(&dirs[2], &n0.addr);
    join(&dirs[3], &n0.addr);
    let mut n1 = Node::start("n1", &dirs[1], "127.0.0.72", &boot);
    let mut n2 = Node::start("n2", &dirs[2], "127.0.0.73", &boot);
    let mut light = Node::start_with(
        "light",
        &dirs[3],
        "127.0.0.74",
        &boot,
        &["--light", "--in-memory"],
        None,
    );
    meshed(&[&n0, &n1, &n2, &light], Duration::from_secs(30));
    initial_sync(&mut [&mut n0, &mut n1, &mut n2, &mut light], 4);
    assert_eq!(light.status().unwrap()["light"], true);

    // Every member writes in rounds (the settled frontier only moves when all members have
    // published past an event); the light node's writes come back acknowledged only after a
    // full node stored them — so right after each ack some full node already holds them.
    let full_apis = [n0.api.clone(), n1.api.clone(), n2.api.clone()];
    let mut light_ids = vec![];
    for round in 0..6 {
        for (i, n) in [&n0, &n1, &n2].iter().enumerate() {
            n.append(&format!("round {round} full {i} event {{i}}"), 50)
                .expect("full append");
        }
        let ids = light
            .append(&format!("round {round} light event {{i}}"), 5)
            .expect("light append acknowledged");
        for id in &ids {
            assert!(
                full_apis.iter().any(|a| holds(a, id)),
                "acknowledged light write {id} is on no full node"
            );
        }
        light_ids.extend(ids);
        thread::sleep(Duration::from_millis(300));
    }
    // 4 setup events + 6 × (150 + 5)
    let hash = converge(
        &mut [&mut n0, &mut n1, &mut n2, &mut light],
        934,
        Duration::from_secs(120),
    );
    for id in &light_ids {
        assert!(
            full_apis.iter().all(|a| holds(a, id)),
            "{id} missing somewhere"
        );
    }
    // The light node forgot most of the past: blocks behind its horizon are gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let ls = loop {
        let ls = light_status(&light);
        if ls["pruned_blocks"].as_u64().unwrap_or(0) > 500 || std::time::Instant::now() > deadline {
            break ls;
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert!(ls["pruned_blocks"].as_u64().unwrap() > 500, "{ls}");
    assert!(ls["horizon"].is_string(), "{ls}");
    assert_eq!(ls["stored_by_full_nodes"], 6, "{ls}");
    assert_eq!(ls["on_disk"], false, "{ls}");
    assert_eq!(ls["outbox"], 0, "{ls}");
    eprintln!("light node: {ls}");

    // A light node serves no blocks; a full node it asks for nothing but summaries. And it
    // restarts empty: it catches up from the full nodes again, to the same state.
    light.stop();
    light = Node::start_with(
        "light",
        &dirs[3],
        "127.0.0.74",
        &boot,
        &["--light", "--in-memory"],
        None,
    );
    let again = converge(&mut [&mut n0, &mut light], 934, Duration::from_secs(120));
    assert_eq!(again, hash);

    // No full node reachable: the write is not acknowledged (clear error after the timeout),
    // but it is not lost either: the light node keeps it and hands it to the first full node
    // that comes back.
    let n0_listen = n0.addr.split("/p2p/").next().unwrap().to_string();
    n1.stop();
    n2.stop();
    n0.stop();
    let err = light
        .append("written while every full node is down {i}", 1)
        .expect_err("no full node: no acknowledgment");
    assert!(err.contains("no full node stored"), "{err}");
    let ls = light_status(&light);
    assert_eq!(ls["outbox"], 1, "{ls}");
    // n0 comes back on its old address (the light node redials its bootstrap when alone).
    let n0 = Node::start_with(
        "n0",
        &dirs[0],
        "127.0.0.71",
        &[],
        &["--listen", &n0_listen],
        None,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ls = light_status(&light);
        if ls["outbox"] == 0 {
            assert_eq!(ls["stored_by_full_nodes"], 1, "{ls}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the write never reached n0: {ls}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let total = n0.status().unwrap()["events"].as_u64().unwrap();
    assert_eq!(total, 935, "n0 holds the write made while it was down");
}

/// A light node on disk (`--light` alone) restarts from its own replica: with no full node
/// reachable it is back at once with every event it held, and its writes are open (its first
/// run's peers confirmed its own chain, and every own event since is on its disk). A write it
/// made just before a SIGKILL, which no full node had stored (the request was still waiting
/// for one), is on its disk; once the full node returns and says what it holds of the light
/// node's chain, the light node hands the write to it. Without that hand-on the event would
/// stay on the light node alone (it serves no blocks) and the two would never converge.
#[test]
fn a_light_node_on_disk_restarts_from_its_replica_and_hands_on_an_unsettled_write() {
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 2, 2);
    let mut n0 = Node::start("n0", &dirs[0], "127.0.0.76", &[]);
    let boot = vec![n0.addr.clone()];
    join(&dirs[1], &n0.addr);
    let mut light = Node::start_with("light", &dirs[1], "127.0.0.77", &boot, &["--light"], None);
    meshed(&[&n0, &light], Duration::from_secs(30));
    initial_sync(&mut [&mut n0, &mut light], 2);
    n0.append("full event {i}", 300).expect("full append");
    light
        .append("light event {i}", 3)
        .expect("light append acknowledged");
    let hash = converge(&mut [&mut n0, &mut light], 305, Duration::from_secs(60));
    let ls = light_status(&light);
    assert_eq!(ls["on_disk"], true, "{ls}");
    assert_eq!(ls["pruned_blocks"], 0, "{ls}");

    // Every full node down; a write the light node signs and stores but no full node takes:
    // the light node dies while the request still waits for one.
    let n0_listen = n0.addr.split("/p2p/").next().unwrap().to_string();
    n0.stop();
    let api = light.api.clone();
    let writer = thread::spawn(move || {
        post(
            &api,
            "/v1/events",
            &serde_json::json!({"kind": "stimulus", "text": "written just before a crash"}),
        )
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while light_status(&light)["outbox"].as_u64() < Some(1) {
        assert!(
            std::time::Instant::now() < deadline,
            "the write never reached the outbox: {}",
            light_status(&light)
        );
        thread::sleep(Duration::from_millis(50));
    }
    // What it holds when it dies, the write included (it is on the disk before it is sent).
    let held = light.status().unwrap()["events"].as_u64().unwrap();
    light.kill();
    let answer = writer.join().unwrap();
    assert!(
        answer.is_err(),
        "a write no full node stored was acknowledged: {answer:?}"
    );

    // Back with no full node reachable: everything it held, and the write, from its own disk.
    light = Node::start_with("light", &dirs[1], "127.0.0.77", &boot, &["--light"], None);
    let s = light.status().unwrap();
    assert_eq!(s["events"].as_u64(), Some(held), "{s}");
    assert_eq!(s["light_node"]["full_peers"], 0, "{s}");
    assert_eq!(s["writes_open"], true, "{s}");
    assert_eq!(s["light_node"]["resubmitted_since_start"], 0, "{s}");

    // The full node returns on its old address: the write reaches it.
    let mut n0 = Node::start_with(
        "n0",
        &dirs[0],
        "127.0.0.76",
        &[],
        &["--listen", &n0_listen],
        None,
    );
    let after = converge(&mut [&mut n0, &mut light], held, Duration::from_secs(60));
    assert_ne!(after, hash, "the write is in the state");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ls = loop {
        let ls = light_status(&light);
        if ls["outbox"] == 0 || std::time::Instant::now() > deadline {
            break ls;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ls["outbox"], 0, "{ls}");
    assert!(ls["resubmitted_since_start"].as_u64() >= Some(1), "{ls}");
}
