//! A merge streamed in pages folds once (issue 19): two writers each hold 12 000 events the
//! other never saw; when they meet, each streams the other's in pages of 2 048 (`MAX_PAGE_EVENTS`), every page
//! sorting among what the node had folded. The fold waits for the stream's end instead of
//! starting over from further back at each page.

mod common;

use std::time::Duration;

use common::*;

const EACH: usize = 12_000;

#[test]
fn a_merge_streamed_in_pages_rewinds_once() {
    let root = tempfile::tempdir().unwrap();
    let (d0, d1) = (root.path().join("n0"), root.path().join("n1"));
    // The counter machine: the test is about how often the state is folded, not what a fold
    // costs (a debug build folds KAIROS slowly).
    ok(
        &d0,
        &[
            "init",
            "--name",
            "merge-test",
            "--machine",
            "counter",
            "--checkpoint-interval",
            "64",
        ],
    );
    let k1 = ok(&d1, &["key"]);
    ok(&d0, &["member", "add", k1.trim(), "--role", "writer"]);
    let mut n0 = Node::start("n0", &d0, "127.0.0.1", &[]);
    join(&d1, &n0.addr);
    // Node 1 fetches its own addition (it writes only as a member), then goes down.
    let mut n1 = Node::start("n1", &d1, "127.0.0.1", std::slice::from_ref(&n0.addr));
    converge(&mut [&mut n0, &mut n1], 2, Duration::from_secs(60));
    n1.stop();
    // Node 0 writes while node 1 is down; node 1 writes offline into its own store.
    for _ in 0..EACH / 1_000 {
        n0.append("a {i}", 1_000).unwrap();
    }
    ok(
        &d1,
        &[
            "append",
            "b {i}",
            "--count",
            &EACH.to_string(),
            "--batch",
            "1000",
        ],
    );
    n1 = Node::start("n1", &d1, "127.0.0.1", std::slice::from_ref(&n0.addr));
    // Genesis, node 1's addition, 2 × EACH events.
    converge(
        &mut [&mut n0, &mut n1],
        2 + 2 * EACH as u64,
        Duration::from_secs(120),
    );
    for n in [&n0, &n1] {
        let st = n.status().unwrap();
        let fold = &st["fold"];
        let pages = st["sync"]["pages_received"].as_u64().unwrap();
        eprintln!("{}: fold {fold}, pages received {pages}", n.name);
        assert!(pages >= 5, "{}: the merge came in {pages} pages", n.name);
        assert!(
            fold["rewinds"].as_u64().unwrap() <= 1,
            "{}: {fold} — the fold restarted at pages of the catch-up stream",
            n.name
        );
        assert!(
            fold["reapplied"].as_u64().unwrap() <= EACH as u64 + 100,
            "{}: {fold}",
            n.name
        );
    }
    assert!(
        n0.status().unwrap()["fold"]["waited_for_catch_up"]
            .as_u64()
            .unwrap()
            + n1.status().unwrap()["fold"]["waited_for_catch_up"]
                .as_u64()
                .unwrap()
            >= 1,
        "no fold waited for a stream: the test did not exercise the wait"
    );
}
