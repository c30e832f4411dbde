//! The `chorus` binary as a user runs it: export checked by an independent IPFS stack, tampered
//! imports, a writer killed with SIGKILL, and `--help` everywhere.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_chorus");

fn chorus(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run chorus")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = chorus(dir, args);
    assert!(
        out.status.success(),
        "chorus {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn state(dir: &Path) -> Value {
    serde_json::from_str(&ok(dir, &["state", "--json"])).unwrap()
}

/// Two writers on two replicas append concurrently, then merge: a DAG with two heads.
fn two_writer_timeline(root: &Path) -> (PathBuf, PathBuf) {
    let a = root.join("a");
    let b = root.join("b");
    ok(
        &a,
        &["init", "--name", "cli-test", "--checkpoint-interval", "4"],
    );
    let kb = ok(&b, &["key"]);
    ok(&a, &["member", "add", kb.trim(), "--role", "writer"]);
    let x = root.join("a.car");
    ok(&a, &["export", "--car", x.to_str().unwrap()]);
    ok(&b, &["import", x.to_str().unwrap()]);
    ok(&a, &["append", "--count", "6", "a says {i} things"]);
    ok(&b, &["append", "--count", "5", "b says {i} other things"]);
    let y = root.join("b.jsonl");
    ok(&b, &["export", "--jsonl", y.to_str().unwrap()]);
    ok(&a, &["import", y.to_str().unwrap()]);
    assert_eq!(state(&a)["heads"].as_array().unwrap().len(), 2);
    (a, b)
}

fn npm_ready() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/ipfs");
    if !dir.join("node_modules/@ipld/car").exists() {
        let st = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm is needed for the IPFS-side CAR check (apt-get install nodejs npm)");
        assert!(st.success(), "npm ci in tests/ipfs failed");
    }
    dir
}

#[test]
fn car_export_passes_an_independent_ipfs_implementation() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _) = two_writer_timeline(tmp.path());
    let car = tmp.path().join("out.car");
    ok(&a, &["export", "--car", car.to_str().unwrap()]);
    let heads: Vec<String> = state(&a)["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    let js = npm_ready();
    let run = |file: &Path| {
        Command::new("node")
            .arg(js.join("check-car.mjs"))
            .arg(file)
            .args(&heads)
            .output()
            .expect("node")
    };
    let out = run(&car);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{report}");
    assert_eq!(report["blocks"], 13, "genesis + member + 6 + 5: {report}");
    assert_eq!(report["ok"], true);

    // The checker bites: one flipped byte in the last block is caught.
    let mut bytes = std::fs::read(&car).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    let bad = tmp.path().join("bad.car");
    std::fs::write(&bad, bytes).unwrap();
    assert!(!run(&bad).status.success());
}

fn tamper_jsonl_line(line: &str, recompute_cid: bool) -> String {
    let mut v: Value = serde_json::from_str(line).unwrap();
    let b64 = v["block"].as_str().unwrap();
    let mut block = base64_decode(b64);
    // Flip a bit inside the body text (well before the signature at the end).
    let i = block
        .windows(4)
        .position(|w| w == b"says")
        .expect("text present");
    block[i] ^= 0x20;
    v["block"] = Value::String(base64_encode(&block));
    if recompute_cid {
        v["cid"] = Value::String(cid_of(&block));
    }
    v.to_string()
}

#[test]
fn tampered_imports_reject_exactly_the_tampered_events() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _) = two_writer_timeline(tmp.path());
    let src = state(&a);
    let heads: Vec<String> = src["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().into())
        .collect();
    let jsonl = tmp.path().join("all.jsonl");
    ok(&a, &["export", "--jsonl", jsonl.to_str().unwrap()]);
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let total = text.lines().count();

    // Tamper both heads: one keeps its claimed CID (mismatch), one gets a recomputed CID (so the
    // signature is what catches it).
    let mut n = 0;
    let tampered: Vec<String> = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            if heads.contains(&v["cid"].as_str().unwrap().to_string()) {
                n += 1;
                tamper_jsonl_line(l, n == 2)
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_eq!(n, 2);
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, tampered.join("\n") + "\n").unwrap();
    let c = tmp.path().join("c");
    let report = ok(&c, &["import", bad.to_str().unwrap()]);
    assert!(
        report.contains(&format!(
            "new {} duplicate 1 pending 0 rejected 2",
            total - 3
        )),
        "{report}"
    );
    assert!(
        report.contains("rejected cid_mismatch: 1") && report.contains("rejected bad_signature: 1"),
        "{report}"
    );
    assert!(ok(&c, &["verify"]).starts_with("verify OK"));
    assert_eq!(state(&c)["events"], total - 2);
    let strict = chorus(&c, &["import", "--strict", bad.to_str().unwrap()]);
    assert_eq!(strict.status.code(), Some(3));

    // A tampered block in the middle of a CAR: it is rejected, its descendants wait as pending
    // (kept, never lost), and importing the genuine file completes the replica exactly.
    let car = tmp.path().join("all.car");
    ok(&a, &["export", "--car", car.to_str().unwrap()]);
    let mut bytes = std::fs::read(&car).unwrap();
    let at = bytes
        .windows(10)
        .position(|w| w == b"a says 2 t")
        .expect("event a2 present");
    bytes[at] ^= 0x20;
    let bad_car = tmp.path().join("bad.car");
    std::fs::write(&bad_car, bytes).unwrap();
    let d = tmp.path().join("d");
    let report = ok(&d, &["import", bad_car.to_str().unwrap()]);
    assert!(
        report.contains("rejected 1") && report.contains("rejected cid_mismatch: 1"),
        "{report}"
    );
    assert!(
        !report.contains("pending 0"),
        "descendants of the bad block wait: {report}"
    );
    assert!(ok(&d, &["verify"]).starts_with("verify OK"));
    ok(&d, &["import", car.to_str().unwrap()]);
    let fixed = state(&d);
    assert_eq!(fixed["pending"], 0);
    assert_eq!(fixed["state_hash"], src["state_hash"]);
    assert!(ok(&d, &["verify"]).starts_with("verify OK"));
}

/// A node whose API would listen beyond loopback without a write token refuses to start, and
/// says how to fix it, before it listens or dials anything (0.0.0.0 is never bound here).
#[test]
fn a_non_loopback_api_without_a_token_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("n");
    ok(&d, &["init"]);
    let mut child = Command::new(BIN)
        .args([
            "--data-dir",
            d.to_str().unwrap(),
            "node",
            "--api",
            "0.0.0.0:0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the node started and kept running");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the node started: {err}");
    assert!(
        err.contains("not loopback and has no write token") && err.contains("--api-token-env"),
        "{err}"
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("peer_id"), "the swarm started first: {said}");
}

/// Where each section (header first) of a CARv1 file starts.
fn car_sections(bytes: &[u8]) -> Vec<usize> {
    let mut starts = vec![];
    let mut at = 0;
    while at < bytes.len() {
        starts.push(at);
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let b = bytes[at];
            at += 1;
            len |= ((b & 0x7f) as usize) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        at += len;
    }
    starts
}

/// A CAR cut short (a copy that died, a disk that filled) fails the import with an error that
/// says so, and every block before the cut is imported: cut inside the last block's length
/// prefix (this once imported with exit 0 and said nothing) and inside the last block (this
/// once dropped every block of the unfinished chunk, 2 505 valid events in a live run).
#[test]
fn a_cut_archive_fails_loudly_and_keeps_every_block_before_the_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _) = two_writer_timeline(tmp.path());
    let total = state(&a)["events"].as_u64().unwrap();
    let car = tmp.path().join("all.car");
    ok(&a, &["export", "--car", car.to_str().unwrap()]);
    let bytes = std::fs::read(&car).unwrap();
    let last = *car_sections(&bytes).last().unwrap();
    assert!(
        bytes[last] & 0x80 != 0,
        "the last block's prefix is 2+ bytes"
    );
    for (what, cut) in [
        ("inside a length prefix", last + 1),
        ("inside a block", last + 20),
    ] {
        let short = tmp.path().join(format!("cut-{cut}.car"));
        std::fs::write(&short, &bytes[..cut]).unwrap();
        let d = tmp.path().join(format!("d-{cut}"));
        let out = chorus(&d, &["import", short.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "a CAR cut {what} imported with success: {err}"
        );
        assert!(err.contains("cut short"), "cut {what}: {err}");
        assert_eq!(
            state(&d)["events"].as_u64(),
            Some(total - 1),
            "cut {what}: every block before the cut is imported"
        );
    }
}

#[test]
fn sigkill_during_appends_loses_no_acknowledged_event() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("w");
    ok(&dir, &["init", "--checkpoint-interval", "16"]);
    let mut acknowledged: Vec<String> = vec![];
    for round in 0..3 {
        let mut child = Command::new(BIN)
            .arg("--data-dir")
            .arg(&dir)
            .args([
                "append",
                "--count",
                "1000000",
                "--batch",
                "3",
                &format!("round {round} event {{i}}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let target = 40 + 37 * round;
        for _ in 0..target {
            acknowledged.push(lines.next().unwrap().unwrap());
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Anything printed before the kill was acknowledged too.
        for l in lines.map_while(Result::ok) {
            acknowledged.push(l);
        }
    }
    let verify = ok(&dir, &["verify"]);
    assert!(verify.starts_with("verify OK"), "{verify}");
    let log = ok(&dir, &["log", "--json", "--limit", "0"]);
    let present: std::collections::BTreeSet<String> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["cid"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|c| !present.contains(*c))
        .collect();
    assert!(acknowledged.len() >= 40 + 77 + 114);
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
}

#[test]
fn every_command_has_help() {
    let tmp = tempfile::tempdir().unwrap();
    for cmd in [
        vec!["--help"],
        vec!["init", "--help"],
        vec!["key", "--help"],
        vec!["member", "add", "--help"],
        vec!["member", "remove", "--help"],
        vec!["append", "--help"],
        vec!["log", "--help"],
        vec!["state", "--help"],
        vec!["verify", "--help"],
        vec!["repair", "--help"],
        vec!["export", "--help"],
        vec!["import", "--help"],
    ] {
        let out = ok(tmp.path(), &cmd);
        assert!(out.contains("--data-dir"), "{cmd:?}: {out}");
    }
}

#[test]
fn commands_on_a_missing_store_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = chorus(&tmp.path().join("nothing"), &["state"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chorus init"));
}

// --- helpers ------------------------------------------------------------------------------

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn cid_of(b: &[u8]) -> String {
    chorus_core::EventId::of_block(b).to_string()
}

#[test]
fn verify_catches_a_forged_checkpoint() {
    use redb::ReadableTable;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("v");
    ok(&dir, &["init", "--checkpoint-interval", "4"]);
    ok(&dir, &["append", "--count", "10", "the gate {i} holds"]);
    assert!(ok(&dir, &["verify"]).contains("checkpoints checked"));
    {
        let db = redb::Database::open(dir.join("chorus.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(chorus_store::tables::CHECKPOINTS).unwrap();
            let (k, mut v) = {
                let (k, v) = t.iter().unwrap().next().unwrap().unwrap();
                (k.value().to_vec(), v.value().to_vec())
            };
            // Flip a low bit of the stored recovery variable: still decodes, different state.
            let at = 16 + 4 + "master".len() + 8 + 1 + 8 + 8;
            v[at] ^= 1;
            t.insert(k.as_slice(), v.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let out = chorus(&dir, &["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("verify FAILED") && text.contains("checkpoint at"),
        "{text}"
    );
}

#[test]
fn text_state_shows_the_election_and_the_frontier() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    ok(&dir, &["init"]);
    ok(
        &dir,
        &[
            "append",
            "--kind",
            "emissary",
            "--json",
            r#"{"name":"cli"}"#,
        ],
    );
    let stimulus = ok(&dir, &["append", "the gate is shut"]);
    let intent = ok(
        &dir,
        &["append", "--kind", "intent", r#"["say open", "knock"]"#],
    );
    let text = ok(&dir, &["state"]);
    for want in ["coherence", "dopamine", "settled", "state_hash", "election"] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    assert!(
        text.contains(stimulus.trim()) && text.contains(intent.trim()),
        "{text}"
    );
    let json = state(&dir);
    assert_eq!(json["state"]["last_election"]["winner"], intent.trim());
    let log = ok(&dir, &["log"]);
    assert_eq!(
        log.lines().count(),
        4,
        "genesis, emissary, stimulus, intent: {log}"
    );
}

/// Regression: `chorus verify` once replayed prefix by prefix and so disagreed with stored
/// checkpoints whose state already excluded events for evidence sorting later (an equivocation's
/// second branch, a removal). The golden timeline has both; its import must verify, and land on
/// the recorded state_hash.
#[test]
fn verify_accepts_a_timeline_with_equivocation_and_removal() {
    let root = tempfile::tempdir().unwrap();
    let d = root.path().join("golden");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let file = fixtures.join("golden_timeline.jsonl");
    ok(&d, &["import", file.to_str().unwrap()]);
    let out = ok(&d, &["verify"]);
    assert!(out.contains("verify OK"), "{out}");
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("golden_timeline.expected.json")).unwrap(),
    )
    .unwrap();
    let last = expected["marks"].as_array().unwrap().last().unwrap();
    assert_eq!(state(&d)["state_hash"], last["state_hash"]);
}

/// A data directory as builds before the local format checks could leave it: `chorus init`,
/// two good appends, then (through the library, as the old append path did) an event with a
/// kind no peer accepts and two more events of the same key on top of it. Returns the bad id.
fn old_build_store(dir: &Path) -> String {
    use chorus_core::{Timeline, event::kind};
    use chorus_store::{Batch, Store, replica::STORE_FILE};
    // Builds of that time made kairos/1 timelines.
    ok(dir, &["init", "--name", "old", "--machine", "kairos1"]);
    ok(dir, &["append", "good one"]);
    ok(dir, &["append", "good two"]);
    let key = chorus_store::replica::read_key(dir).unwrap().unwrap();
    let store = Store::open(&dir.join(STORE_FILE)).unwrap();
    let mut events = store.ordered_events().map(Result::unwrap);
    let mut tl = Timeline::new(events.next().unwrap(), chorus_kairos::KairosMachine).unwrap();
    for ev in events {
        tl.insert_deferred(ev).unwrap();
    }
    let text = |s: &str| {
        ipld_core::ipld::Ipld::Map(std::collections::BTreeMap::from([(
            "text".to_string(),
            ipld_core::ipld::Ipld::String(s.into()),
        )]))
    };
    let bad = tl
        .prepare(key.author(), "Bad Kind!", text("shout"))
        .sign(&key);
    tl.insert_deferred(bad.clone()).unwrap();
    let mut blocks = vec![bad.clone()];
    for s in ["after one", "after two"] {
        let ev = tl.prepare(key.author(), kind::STIMULUS, text(s)).sign(&key);
        tl.insert_deferred(ev.clone()).unwrap();
        blocks.push(ev);
    }
    store
        .commit(Batch {
            blocks,
            heads: Some(tl.heads()),
            ..Batch::default()
        })
        .unwrap();
    bad.id().to_string()
}

/// A store that an older build left holding an event no peer accepts: every command names
/// the event and the way out; `chorus repair` moves it and what depends on it to a quarantine
/// CAR file and nothing else; the node then verifies, starts and writes again.
#[test]
fn repair_quarantines_an_event_no_peer_accepts_and_nothing_else() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("old");
    let bad = old_build_store(&dir);
    for args in [&["verify"][..], &["state"], &["log"], &["node", "--no-api"]] {
        let out = chorus(&dir, args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{args:?} must fail: {text}");
        assert!(
            text.contains(&bad) && text.contains("chorus repair"),
            "{args:?} names the event and the way out: {text}"
        );
    }
    let dry = ok(&dir, &["repair", "--dry-run"]);
    assert!(dry.contains(&format!("refused   {bad}")), "{dry}");
    assert!(dry.contains("3 event(s) to quarantine"), "{dry}");
    let out = ok(&dir, &["repair"]);
    assert!(out.contains("the store opens again: 3 events"), "{out}");
    let car = dir.join("quarantine").join(format!("{bad}.car"));
    assert!(car.metadata().unwrap().len() > 0, "{out}");
    assert!(ok(&dir, &["verify"]).contains("verify OK: 3 events"));
    ok(&dir, &["append", "written again"]);
    let log = ok(&dir, &["log"]);
    assert!(
        log.contains("good two") && log.contains("written again"),
        "{log}"
    );
    assert!(!log.contains("after one"), "{log}");
    assert!(ok(&dir, &["repair"]).contains("nothing to repair"));
}
