//! Issue 15, real processes: a private timeline (`chorus init --private`, genesis access
//! `members/1`) lets no stranger in. A stranger node holds the right genesis (a copy of the
//! admin's store as `init` left it) and the bootstrap address: it must get no event, no
//! summary, no connection. Beside it a reader node, set up the same way in every respect but
//! one — its key is a `--reader` of the genesis — must replicate everything: the same run
//! shows the check can fail, and that the stranger is refused for its identity alone.

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use chorus_store::replica::STORE_FILE;
use common::*;

/// Events the admin writes while the stranger is trying to get in.
const WRITES: usize = 30;
/// How long the stranger keeps trying after the reader has everything (its node redials the
/// bootstrap address every 2 s while it has no peer).
const STRANGER_GRACE: Duration = Duration::from_secs(8);

/// A data directory holding `admin`'s store as `init` left it (the genesis only), and a key of
/// its own (already made by `chorus key`).
fn copy_genesis_store(admin: &Path, to: &Path) {
    std::fs::copy(admin.join(STORE_FILE), to.join(STORE_FILE)).expect("copying the store");
}

#[test]
fn a_private_timeline_gives_a_stranger_nothing_and_a_named_reader_everything() {
    let root = tempfile::tempdir().unwrap();
    let [admin, member, reader, stranger] =
        ["admin", "member", "reader", "stranger"].map(|n| root.path().join(n));
    let reader_key = ok(&reader, &["key"]);
    ok(&stranger, &["key"]);
    let created = chorus(
        &admin,
        &[
            "init",
            "--name",
            "private-test",
            "--private",
            "--reader",
            reader_key.trim(),
        ],
    );
    assert!(created.status.success(), "{created:?}");
    let told = String::from_utf8_lossy(&created.stderr);
    assert!(told.contains("private: members only"), "init said: {told}");
    copy_genesis_store(&admin, &reader);
    copy_genesis_store(&admin, &stranger);
    let member_key = ok(&member, &["key"]);
    ok(
        &admin,
        &["member", "add", member_key.trim(), "--role", "writer"],
    );

    let mut n0 = Node::start("admin", &admin, "127.0.0.61", &[]);
    let boot = vec![n0.addr.clone()];
    // A member joins as any member does: it fetches the genesis from the bootstrap node.
    join(&member, &boot[0]);
    let mut n1 = Node::start("member", &member, "127.0.0.62", &boot);
    // The reader and the stranger know the admin's genesis only, and bootstrap from the member
    // added after it: the reader must still reach it (its own membership does not name it
    // yet; the bootstrap peer is the operator's choice), the stranger must be refused by it.
    let via_member = vec![n1.addr.clone()];
    let mut r = Node::start("reader", &reader, "127.0.0.63", &via_member);
    let s = Node::start("stranger", &stranger, "127.0.0.64", &via_member);
    n0.append("private {i}", WRITES).unwrap();
    n1.append("member {i}", WRITES).unwrap();
    // genesis + the member's add + both writers' events
    let all = 2 + 2 * WRITES as u64;
    let hash = converge(
        &mut [&mut n0, &mut n1, &mut r],
        all,
        Duration::from_secs(60),
    );
    eprintln!("admin, member and reader converged on {all} events, state_hash {hash}");

    let until = Instant::now() + STRANGER_GRACE;
    while Instant::now() < until {
        let st = s.status().expect("the stranger's node answers its own API");
        assert_eq!(
            st["events"].as_u64(),
            Some(1),
            "the stranger got events of a private timeline: {st}"
        );
        assert_eq!(
            st["peers"].as_array().map(|p| p.len()),
            Some(0),
            "the stranger is connected to someone: {st}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for n in [&n0, &n1, &r] {
        let st = n.status().unwrap();
        let peers = st["peers"].to_string();
        let stranger_id = s.status().unwrap()["peer_id"].as_str().unwrap().to_string();
        assert!(
            !peers.contains(&stranger_id),
            "{} lists the stranger among its peers: {peers}",
            n.name
        );
    }
    // The reader replicates but cannot write: its events would be refused everywhere.
    let refused = r.append("reader {i}", 1);
    assert!(
        refused.is_err(),
        "a reader's write was acknowledged: {refused:?}"
    );
}
