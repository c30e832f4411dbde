//! Done-when 4 of the mesh: a 2 | 3 partition with nftables for 30 s while both sides write,
//! then heal; all five converge to one state_hash holding both sides' events.
//!
//! Each node runs in its own network namespace (veth into a bridge in a hub namespace), so
//! every node has its own address and nftables inside a node's namespace cuts exactly the
//! links we choose. The test body runs inside the hub namespace (the test binary re-executes
//! itself there), from which every node's API is reachable over the bridge. All namespaces are
//! created by the test and deleted when it ends, whatever happens. Needs root, `ip` and `nft`;
//! without them the test says so and passes only if `CHORUS_REQUIRE_NETNS` is unset (CI sets
//! it).

mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use common::{netns::*, *};

const SUBNET: &str = "10.231.0";
const NODES: usize = 5;
/// Side A = nodes 0 and 1; side B = nodes 2, 3, 4.
const SIDE_A: usize = 2;
const PARTITION: Duration = Duration::from_secs(30);

#[test]
fn partition_two_three_then_heal() {
    if missing(&[&["ip", "netns", "list"], &["nft", "--version"]]).is_some() {
        return;
    }
    let prefix = format!("chp{}", std::process::id());
    let ns = Namespaces::create(prefix, SUBNET, NODES).expect("create the test's namespaces");
    let ok = ns.run_inside_hub("partition_inside_the_hub", "CHORUS_PARTITION_NS");
    drop(ns);
    assert!(ok, "the partition scenario failed (output above)");
}

/// The scenario, run by `partition_two_three_then_heal` inside the hub namespace.
#[test]
#[ignore = "run by partition_two_three_then_heal inside its network namespaces"]
fn partition_inside_the_hub() {
    let Ok(prefix) = std::env::var("CHORUS_PARTITION_NS") else {
        eprintln!("only runs inside the namespaces made by partition_two_three_then_heal");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), NODES, NODES);
    let mut nodes = start_mesh(&prefix, SUBNET, &dirs);
    for n in &nodes {
        n.append(&format!("{} before {{i}}", n.name), 10).unwrap();
    }
    let base = NODES as u64 + 10 * NODES as u64;
    converge(
        &mut nodes.iter_mut().collect::<Vec<_>>(),
        base,
        Duration::from_secs(60),
    );

    // Cut every link between the sides, in both directions, inside each node's namespace.
    let side = |i: usize| i < SIDE_A;
    cut_sides(&prefix, SUBNET, NODES, side);
    eprintln!("partitioned {{0,1}} | {{2,3,4}} for {PARTITION:?}");
    let t0 = Instant::now();
    let mut a_ids = BTreeSet::new();
    let mut b_ids = BTreeSet::new();
    let mut round = 0;
    while t0.elapsed() < PARTITION {
        a_ids.extend(
            nodes[0]
                .append(&format!("side A round {round} {{i}}"), 5)
                .unwrap(),
        );
        a_ids.extend(
            nodes[1]
                .append(&format!("side A' round {round} {{i}}"), 5)
                .unwrap(),
        );
        b_ids.extend(
            nodes[3]
                .append(&format!("side B round {round} {{i}}"), 5)
                .unwrap(),
        );
        round += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    // While cut, each side replicates its own writes and nothing of the other side's.
    let within = Instant::now() + Duration::from_secs(10);
    let (a_has, b_has) = loop {
        let (a_has, b_has) = (nodes[1].ids(), nodes[4].ids());
        let done =
            a_ids.iter().all(|i| a_has.contains(i)) && b_ids.iter().all(|i| b_has.contains(i));
        if done {
            break (a_has, b_has);
        }
        assert!(
            Instant::now() < within,
            "a side did not replicate its own writes while cut"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        !b_ids.iter().any(|i| a_has.contains(i)),
        "nothing crossed the partition"
    );
    assert!(
        !a_ids.iter().any(|i| b_has.contains(i)),
        "nothing crossed the partition"
    );

    heal_sides(&prefix, NODES);
    let healed = Instant::now();
    eprintln!(
        "healed; {} + {} events written on the two sides",
        a_ids.len(),
        b_ids.len()
    );
    let total = base + a_ids.len() as u64 + b_ids.len() as u64;
    let hash = converge(
        &mut nodes.iter_mut().collect::<Vec<_>>(),
        total,
        Duration::from_secs(90),
    );
    eprintln!(
        "converged {:?} after healing: state_hash {hash}",
        healed.elapsed()
    );
    for n in &nodes {
        let ids = n.ids();
        assert!(
            a_ids.iter().chain(&b_ids).all(|i| ids.contains(i)),
            "{} has both sides",
            n.name
        );
    }
}
