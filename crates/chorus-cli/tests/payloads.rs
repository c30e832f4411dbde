//! Payloads on real processes (docs/design/ipfs.md, "Payloads"): a 5 MB payload attached to a
//! stimulus ends up on exactly 3 of 6 full nodes (the holders every node ranks alike, the
//! uploader letting go once they have it); SIGKILL one holder and it is back on 3 within a
//! bound; every node can read it by CID all along, and the state is the same on every node
//! whether it holds the payload or not.

mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use common::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const SIZE: usize = 5 * 1024 * 1024;

/// Bytes that no two runs' CIDs share by accident (the test's own pseudo-random stream).
fn payload_bytes() -> Vec<u8> {
    let mut out = Vec::with_capacity(SIZE);
    let mut block = Sha256::digest(b"chorus payload test").to_vec();
    while out.len() < SIZE {
        block = Sha256::digest(&block).to_vec();
        out.extend_from_slice(&block);
    }
    out.truncate(SIZE);
    out
}

/// This node's entry for `cid` in `GET /v1/payloads`.
fn entry(n: &Node, cid: &str) -> Option<Value> {
    let v = get(&n.api, "/v1/payloads").ok()?;
    v["listed"]
        .as_array()?
        .iter()
        .find(|e| e["cid"] == cid)
        .cloned()
}

/// The names of the nodes that hold `cid` whole, if every node lists it and ranks the same
/// holders, and those are the nodes holding it.
fn settled_holders(nodes: &[&Node], cid: &str) -> Result<BTreeSet<String>, String> {
    let mut held = BTreeSet::new();
    let mut ranked = BTreeSet::new();
    let mut names = std::collections::BTreeMap::new();
    for n in nodes {
        let peer = n.status().ok_or(format!("{} has no status", n.name))?["peer_id"]
            .as_str()
            .unwrap()
            .to_string();
        names.insert(peer, n.name.clone());
    }
    for n in nodes {
        let e = entry(n, cid).ok_or(format!("{} does not list it yet", n.name))?;
        let holders: BTreeSet<String> = e["holders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap().to_string())
            .collect();
        ranked.insert(holders);
        if e["held"] == true {
            held.insert(n.name.clone());
        }
    }
    if ranked.len() != 1 {
        return Err(format!("the nodes rank different holders: {ranked:?}"));
    }
    let ranked: BTreeSet<String> = ranked
        .pop_first()
        .unwrap()
        .iter()
        .map(|p| names.get(p).cloned().unwrap_or(format!("unknown {p}")))
        .collect();
    if ranked != held {
        return Err(format!("held by {held:?}, ranked {ranked:?}"));
    }
    Ok(held)
}

/// Waits until exactly `k` nodes hold `cid` and that has lasted 3 s; returns them and when
/// the count first reached `k` (for the bound).
fn exactly(nodes: &[&Node], cid: &str, k: usize, within: Duration) -> (BTreeSet<String>, Duration) {
    let start = Instant::now();
    let mut since: Option<(Instant, BTreeSet<String>)> = None;
    let mut last = String::new();
    loop {
        match settled_holders(nodes, cid) {
            Ok(h) if h.len() == k => match &since {
                Some((t, same)) if *same == h => {
                    if t.elapsed() >= Duration::from_secs(3) {
                        return (h, t.duration_since(start));
                    }
                }
                _ => since = Some((Instant::now(), h)),
            },
            Ok(h) => {
                since = None;
                last = format!("held by {h:?}");
            }
            Err(e) => {
                since = None;
                last = e;
            }
        }
        if start.elapsed() > within {
            let logs = log_tails(nodes.iter().copied(), 20);
            panic!("not on exactly {k} nodes within {within:?}: {last}\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `GET /v1/payloads/{cid}` on `n`: the bytes' sha2-256 and the source header.
fn read(n: &Node, cid: &str) -> (String, String) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .new_agent();
    let mut r = agent
        .get(format!(
            "http://{}/v1/payloads/{cid}",
            n.api.trim_start_matches("http://")
        ))
        .call()
        .expect("GET /v1/payloads/{cid}");
    let status = r.status().as_u16();
    let source = r
        .headers()
        .get("chorus-payload-source")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = r
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap();
    assert_eq!(
        status,
        200,
        "{}: {}",
        n.name,
        String::from_utf8_lossy(&body)
    );
    (hex::encode(Sha256::digest(&body)), source)
}

#[test]
fn a_payload_lives_on_exactly_three_of_six_full_nodes_and_returns_to_three_after_a_sigkill() {
    let root = tempfile::tempdir().unwrap();
    // Payloads are held by members: all six are (writers).
    let dirs = timeline(root.path(), 6, 6);
    let n0 = Node::start("n0", &dirs[0], "127.0.0.61", &[]);
    let mut nodes = vec![n0];
    for (i, d) in dirs.iter().enumerate().skip(1) {
        join(d, &nodes[0].addr);
        let boot = [nodes[0].addr.clone()];
        nodes.push(Node::start(
            &format!("n{i}"),
            d,
            &format!("127.0.0.{}", 61 + i),
            &boot,
        ));
    }
    peers_at_least(
        &nodes.iter().collect::<Vec<_>>(),
        5,
        Duration::from_secs(60),
    );

    // A hostile member names payloads first that no node can fetch: a CID that sorts before
    // any other (all-zero digest; nobody holds it) and the genesis event (a block, but no
    // payload root). Neither may hold up the real one.
    let zero = cid::Cid::new_v1(
        0x71,
        multihash::Multihash::<64>::wrap(0x12, &[0; 32]).unwrap(),
    );
    let genesis = get(&nodes[0].api, "/v1/status").unwrap()["timeline"]
        .as_str()
        .unwrap()
        .to_string();
    for bogus in [zero.to_string(), genesis] {
        post(
            &nodes[0].api,
            "/v1/events",
            &json!({"kind": "stimulus", "body": {"text": "nothing", "payload": {"/": bogus}}}),
        )
        .unwrap();
    }

    // Upload to n0, then name it in a stimulus.
    let bytes = payload_bytes();
    let want = hex::encode(Sha256::digest(&bytes));
    let up = api(&nodes[0].api)
        .post_bytes("/v1/payloads", "application/octet-stream", &bytes)
        .unwrap()
        .success()
        .unwrap();
    let cid = up["cid"].as_str().unwrap().to_string();
    assert_eq!(up["size"], SIZE);
    assert_eq!(up["parts"], 20);
    assert_eq!(up["copies"], 3);
    post(
        &nodes[0].api,
        "/v1/events",
        &json!({"kind": "stimulus", "body": {"text": "read the attachment", "payload": {"/": cid}}}),
    )
    .unwrap();

    let all: Vec<&Node> = nodes.iter().collect();
    let (holders, took) = exactly(&all, &cid, 3, Duration::from_secs(90));
    eprintln!("placed on {holders:?} after {took:?}");
    // The genesis named as a payload was fetched by its holders and refused as no root.
    let bad: u64 = nodes
        .iter()
        .map(|n| {
            get(&n.api, "/v1/payloads").unwrap()["bad_roots"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert!(bad >= 1, "the bogus root was tried and refused");
    // Every node reads it, from its own disk where it holds it, over Bitswap where not.
    for n in &nodes {
        let (hash, source) = read(n, &cid);
        assert_eq!(hash, want, "{}", n.name);
        let expect = if holders.contains(&n.name) {
            "store"
        } else {
            "network"
        };
        assert_eq!(source, expect, "{}", n.name);
    }
    if !holders.contains("n0") {
        let v = get(&nodes[0].api, "/v1/payloads").unwrap();
        assert!(
            v["dropped"].as_u64().unwrap() >= 1,
            "the uploader let go: {v}"
        );
    }

    // SIGKILL a holder: the survivors put a third copy back.
    let victim = nodes
        .iter()
        .position(|n| holders.contains(&n.name))
        .unwrap();
    let killed_at = Instant::now();
    nodes[victim].kill();
    let survivors: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, n)| n)
        .collect();
    let (after, took) = exactly(&survivors, &cid, 3, Duration::from_secs(60));
    let back = killed_at.elapsed();
    eprintln!(
        "{} killed; back on 3 ({after:?}) {took:?} after the kill (settled for 3 s by {back:?})",
        nodes[victim].name
    );
    assert!(
        took < Duration::from_secs(30),
        "re-replicated within 30 s (took {took:?})"
    );
    let kept: BTreeSet<&String> = holders
        .iter()
        .filter(|h| **h != nodes[victim].name)
        .collect();
    assert!(
        kept.iter().all(|h| after.contains(*h)),
        "the living holders kept theirs"
    );
    for n in &survivors {
        assert_eq!(read(n, &cid).0, want, "{}", n.name);
    }
    // Holding a payload or not, the state is the same.
    let hashes: BTreeSet<String> = survivors
        .iter()
        .map(|n| {
            n.status().unwrap()["state_hash"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(hashes.len(), 1, "{hashes:?}");

    // The holder comes back with its disk: it ranks first again, and the stand-in lets go.
    let dropped = |name: &str| {
        let n = nodes.iter().find(|n| n.name == name).unwrap();
        get(&n.api, "/v1/payloads").unwrap()["dropped"]
            .as_u64()
            .unwrap()
    };
    let stand_in: Vec<(String, u64)> = after
        .iter()
        .filter(|h| !holders.contains(*h))
        .map(|h| (h.clone(), dropped(h)))
        .collect();
    assert_eq!(stand_in.len(), 1, "one node stood in: {after:?}");
    let survivor = nodes[(victim + 1) % nodes.len()].addr.clone();
    let name = nodes[victim].name.clone();
    nodes[victim] = Node::start(
        &name,
        &dirs[victim],
        &format!("127.0.0.{}", 61 + victim),
        &[survivor],
    );
    peers_at_least(
        &nodes.iter().collect::<Vec<_>>(),
        5,
        Duration::from_secs(60),
    );
    let all: Vec<&Node> = nodes.iter().collect();
    let (again, took) = exactly(&all, &cid, 3, Duration::from_secs(60));
    eprintln!("{name} back: on {again:?} {took:?} after it was meshed");
    assert_eq!(again, holders, "the first holders again");
    for (s, before) in stand_in {
        let n = nodes.iter().find(|n| n.name == s).unwrap();
        let v = get(&n.api, "/v1/payloads").unwrap();
        assert!(v["dropped"].as_u64().unwrap() > before, "{s} let go: {v}");
    }
}
