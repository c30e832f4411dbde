//! The oracle bites: break an ordering rule or a sync rule on purpose and the oracle must fail
//! the run (a check that cannot fail proves nothing). And the committed suite file parses.

use chorus_sim::{Sabotage, Suite, scenario::Attack, simulate};

/// The committed `wipe` scenario, made small enough for a unit test.
fn small_wipe() -> chorus_sim::Scenario {
    let mut sc = Suite::builtin().get("wipe").expect("wipe scenario").clone();
    sc.events = 800;
    sc.wipe.as_mut().expect("wipe").at_s = 15;
    sc
}

fn failed_checks(r: &chorus_sim::Report) -> Vec<&'static str> {
    r.failures().map(|v| v.check).collect()
}

#[test]
fn the_unbroken_small_scenario_passes() {
    let (r, _) = simulate(&small_wipe(), 11, Sabotage::None);
    assert!(r.passed(), "{:?}", r.failures().collect::<Vec<_>>());
    assert!(r.events >= 800);
    assert_eq!(
        r.findings.lost + r.findings.unexpected + r.findings.duplicated,
        0
    );
}

/// C3 bites: ordering by event id alone (Lamport clocks ignored) is a rule every replica can
/// agree on, yet it puts events before their parents. The unbroken run passes C3 (the test
/// above).
#[test]
fn ordering_without_lamport_clocks_breaks_causal_order() {
    let (r, _) = simulate(&small_wipe(), 11, Sabotage::OrderWithoutLamport);
    let failed = failed_checks(&r);
    assert!(failed.contains(&"C3 causal order"), "{failed:?}");
}

#[test]
fn ordering_by_arrival_time_is_caught() {
    let (r, _) = simulate(&small_wipe(), 11, Sabotage::ArrivalOrder);
    let failed = failed_checks(&r);
    assert!(failed.contains(&"C1 convergence"), "{failed:?}");
    assert!(failed.contains(&"C5 reference model"), "{failed:?}");
}

#[test]
fn a_sync_rule_that_ignores_fetched_blocks_is_caught() {
    let (r, _) = simulate(&small_wipe(), 11, Sabotage::DropSyncBlocks);
    let failed = failed_checks(&r);
    // The wiped nodes never get the history back.
    assert!(failed.contains(&"C1 convergence"), "{failed:?}");
}

#[test]
fn writing_before_the_own_chain_is_confirmed_is_caught() {
    let (r, _) = simulate(&small_wipe(), 11, Sabotage::NoWriteGate);
    let failed = failed_checks(&r);
    assert!(
        failed.contains(&"C2 no acknowledged write lost"),
        "{failed:?}"
    );
    assert!(
        r.findings.duplicated > 0,
        "wiped writers reused their sequence numbers"
    );
}

#[test]
fn the_same_seed_replays_the_same_run_and_another_seed_does_not() {
    let sc = small_wipe();
    let (a, _) = simulate(&sc, 11, Sabotage::None);
    let (b, _) = simulate(&sc, 11, Sabotage::None);
    let (c, _) = simulate(&sc, 12, Sabotage::None);
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.findings.state_hash, b.findings.state_hash);
    assert_ne!(a.trace, c.trace);
}

#[test]
fn the_committed_suite_parses_and_holds_every_required_scenario() {
    let s = Suite::builtin();
    for name in [
        "disparity",
        "partition",
        "crash",
        "wipe",
        "posterity",
        "byzantine",
        "light",
    ] {
        assert!(s.get(name).is_some(), "{name} missing");
    }
    let p = s.get("posterity").unwrap();
    assert_eq!((p.nodes(), p.events), (100, 5000));
    assert!(Suite::parse("[[scenario]]\nname = \"x\"\n").is_err());
}

/// Issue 20: the exemption for writes only on wiped disks cannot hide a real loss. With every
/// node keeping its own writes out of gossip (they spread only by anti-entropy, seconds later),
/// a wipe loses writes that honest replication would have had on another disk: C2 must fail.
#[test]
fn writes_kept_out_of_gossip_are_lost_to_a_wipe_and_caught() {
    let (r, _) = simulate(&small_wipe(), 11, Sabotage::NoOwnGossip);
    let failed = failed_checks(&r);
    assert!(
        failed.contains(&"C2 no acknowledged write lost"),
        "{failed:?}"
    );
    assert!(r.findings.lost > 0);
}

/// Issue 20's seeds: three disks wiped at the same instant, a write held by two or three of
/// them and nowhere else. Judged one disk at a time, the oracle excused it on none and failed
/// C2 and C5; judged as one batch, it is a write the wipe took.
#[test]
fn a_write_held_only_by_disks_wiped_together_is_lost_to_the_wipe_not_to_chorus() {
    let sc = Suite::builtin().get("wipe").expect("wipe").clone();
    let (r, _) = simulate(&sc, 62485, Sabotage::None);
    assert!(r.passed(), "{:?}", r.failures().collect::<Vec<_>>());
    assert!(r.findings.lost_to_wipe > 0);
}

/// Light nodes write through full nodes and lose their whole replica in a crash; the
/// committed `light` scenario holds every check, C7 included.
#[test]
fn the_light_scenario_passes() {
    let sc = Suite::builtin().get("light").expect("light").clone();
    let (r, w) = simulate(&sc, sc.seed, Sabotage::None);
    assert!(r.passed(), "{:?}", r.failures().collect::<Vec<_>>());
    let checks: Vec<&str> = r.findings.verdicts.iter().map(|v| v.check).collect();
    assert!(checks.contains(&"C7 light writes stored on a full node first"));
    let light_acked = w.acked.values().filter(|(n, _)| w.nodes[*n].light).count();
    assert!(light_acked > 50, "light nodes wrote: {light_acked}");
    assert!(w.stats.crashes >= 6, "light nodes crashed and came back");
}

/// With the write-through rule off (a light node acknowledges once it signed), C7 fails.
#[test]
fn a_light_node_that_acknowledges_before_a_full_node_stored_is_caught() {
    let sc = Suite::builtin().get("light").expect("light").clone();
    let (r, _) = simulate(&sc, sc.seed, Sabotage::LightAckAtOnce);
    let failed = failed_checks(&r);
    assert!(
        failed.contains(&"C7 light writes stored on a full node first"),
        "{failed:?}"
    );
}

/// Heartbeats (issue 16): in the `settle` scenario every acknowledged write ends up settled on
/// every node (C8). With heartbeats switched off, members that stopped writing hold the settled
/// frontier and C8 fails.
#[test]
fn without_heartbeats_writes_never_settle_and_c8_fails() {
    let sc = Suite::builtin()
        .get("settle")
        .expect("settle scenario")
        .clone();
    let (r, _) = simulate(&sc, sc.seed, Sabotage::None);
    assert!(r.passed(), "{:?}", r.failures().collect::<Vec<_>>());
    assert!(
        r.findings
            .verdicts
            .iter()
            .any(|v| v.check == "C8 acknowledged writes settle")
    );
    let (r, _) = simulate(&sc, sc.seed, Sabotage::NoHeartbeats);
    assert_eq!(
        failed_checks(&r),
        vec!["C8 acknowledged writes settle"],
        "only C8 fails"
    );
}

/// Finality by quorum (issue 16): in the `final` scenario (halves partition with no quorum on
/// either side, a node cut off, crashes) every acknowledged write ends up final everywhere (C8)
/// and no replica ever finalizes a position differently (C9), with the state the `final/1`
/// reference model computes (C5). With a quorum of half the committee, the two sides of the
/// partition each finalize their own prefix: C9 fails.
#[test]
fn final_positions_never_differ_and_a_half_quorum_is_caught() {
    let sc = Suite::builtin()
        .get("final")
        .expect("final scenario")
        .clone();
    let (r, w) = simulate(&sc, sc.seed, Sabotage::None);
    assert!(r.passed(), "{:?}", r.failures().collect::<Vec<_>>());
    let checks: Vec<&str> = r.findings.verdicts.iter().map(|v| v.check).collect();
    assert!(checks.contains(&"C9 finality safety"), "{checks:?}");
    assert!(
        w.final_canon.len() as u64 > w.acked_honest(),
        "final prefix {} of {} writes",
        w.final_canon.len(),
        w.acked_honest()
    );
    let (r, _) = simulate(&sc, sc.seed, Sabotage::QuorumHalf);
    let failed = failed_checks(&r);
    assert!(failed.contains(&"C9 finality safety"), "{failed:?}");
}

/// The Byzantine scenario on `final/1`: the adversary's heartbeats attest a false state for a
/// coming checkpoint. Honest nodes certify only what a quorum attested, the true state (C9);
/// with certificates of a single member's word (`certify-alone`) the lie is certified and C9
/// fails.
#[test]
fn a_false_attestation_is_never_certified_unless_one_word_is_enough() {
    let mut sc = Suite::builtin()
        .get("byzantine")
        .expect("byzantine scenario")
        .on_final_order();
    sc.fold = true;
    let (r, _) = simulate(&sc, sc.seed, Sabotage::None);
    assert!(r.passed(), "{:?}", r.failures().collect::<Vec<_>>());
    assert!(
        r.findings.certified_nodes >= 7,
        "{}",
        r.findings.certified_nodes
    );
    let (r, _) = simulate(&sc, sc.seed, Sabotage::CertifyAlone);
    let failed = failed_checks(&r);
    assert!(failed.contains(&"C9 finality safety"), "{failed:?}");
}

/// The Byzantine scenario on `final/1`: the adversary votes honest members off the finality
/// committee. One member's vote is never a quorum, so no honest member ever leaves it (C9's
/// committee check); with votes carried by one member (`vote-alone`) one does and C9 fails.
#[test]
fn a_lone_vote_never_takes_an_honest_member_off_the_committee_unless_one_vote_is_enough() {
    let mut sc = Suite::builtin()
        .get("byzantine")
        .expect("byzantine scenario")
        .on_final_order();
    sc.byzantine.as_mut().expect("an adversary").attacks = vec![Attack::VoteOff];
    let (r, _) = simulate(&sc, sc.seed, Sabotage::None);
    assert!(r.passed(), "{:?}", r.failures().collect::<Vec<_>>());
    let (r, _) = simulate(&sc, sc.seed, Sabotage::VoteAlone);
    let failed = failed_checks(&r);
    assert!(failed.contains(&"C9 finality safety"), "{failed:?}");
}

/// Issue 15: an adversary that lies in every sync answer (summaries far ahead of everyone,
/// the asker's own chain included; catch-up pages that are empty and never end) while three
/// nodes come back empty. They catch up from honest peers and write again; when every peer's
/// word is taken (`trust-sync-claims`), the wiped nodes' writes stay closed and C10 fails.
#[test]
fn a_lying_peer_neither_stalls_a_catch_up_nor_keeps_writes_closed_unless_believed() {
    let sc = Suite::builtin().get("liar").expect("liar scenario").clone();
    let (r, _) = simulate(&sc, sc.seed, Sabotage::None);
    assert!(r.passed(), "{:?}", r.failures().collect::<Vec<_>>());
    let (r, _) = simulate(&sc, sc.seed, Sabotage::TrustSyncClaims);
    let failed = failed_checks(&r);
    assert!(failed.contains(&"C10 writes reopen"), "{failed:?}");
}

/// A liar that also never answers a check of the asker's own chain: each check fails by the
/// asker's own deadline (`OWN_CHECK_STALL_MS`), so the wiped nodes write again within a minute;
/// when a check fails only by the two-minute request timeout (`no-own-check-stall`), their
/// writes are still closed when the run ends and C10 fails.
#[test]
fn a_liar_that_never_answers_the_check_of_a_nodes_chain_holds_its_writes_a_minute_at_most() {
    let sc = Suite::builtin().get("liar").expect("liar scenario").clone();
    assert!(sc.byzantine.as_ref().is_some_and(|b| b.stall_own_checks));
    let (r, _) = simulate(&sc, sc.seed, Sabotage::None);
    assert!(r.passed(), "{:?}", r.failures().collect::<Vec<_>>());
    let (r, _) = simulate(&sc, sc.seed, Sabotage::NoOwnCheckStall);
    let failed = failed_checks(&r);
    assert!(failed.contains(&"C10 writes reopen"), "{failed:?}");
}

/// Issue 15: a non-member floods events with made-up parents (a fresh key each time, more
/// events than a stranger's quota). Honest nodes hold them within the quota and never forward
/// them (C4's `held`, `busy`); when every key is treated as a member
/// (`trust-strangers`), they are taken like a member's pending events and forwarded, and C4
/// fails.
#[test]
fn a_strangers_flood_is_held_within_its_quota_and_never_forwarded_unless_trusted() {
    let mut sc = Suite::builtin()
        .get("byzantine")
        .expect("byzantine scenario")
        .clone();
    sc.byzantine.as_mut().expect("an adversary").attacks = vec![Attack::StrangerFlood];
    let (r, _) = simulate(&sc, sc.seed, Sabotage::None);
    assert!(r.passed(), "{:?}", r.failures().collect::<Vec<_>>());
    let (r, _) = simulate(&sc, sc.seed, Sabotage::TrustStrangers);
    let failed = failed_checks(&r);
    assert!(
        failed.contains(&"C4 adversarial input rejected"),
        "{failed:?}"
    );
}

/// Issue 15: peer ids are free. The adversary sends a thousand requests at once, each under a
/// fresh made-up peer id; every stranger draws from one shared budget besides its own bucket,
/// so a node serves at most that budget, and no member is ever refused for it (every
/// strangers' refusal is one of the made-up ids'). With the shared budget switched off
/// (`no-stranger-budget`) each made-up id is served in full and C4 fails, and nothing else.
#[test]
fn made_up_peer_ids_share_one_budget_unless_it_is_switched_off() {
    let mut sc = Suite::builtin()
        .get("byzantine")
        .expect("byzantine scenario")
        .clone();
    sc.byzantine.as_mut().expect("an adversary").attacks = vec![Attack::Sybil];
    let (r, w) = simulate(&sc, sc.seed, Sabotage::None);
    assert!(r.passed(), "{:?}", r.failures().collect::<Vec<_>>());
    let refused = w
        .stats
        .attack_outcomes
        .get(&(Attack::Sybil, chorus_sim::node::Outcome::Refused))
        .copied()
        .unwrap_or(0);
    let stranger_refusals: u64 = w
        .nodes
        .iter()
        .filter(|n| !n.byzantine)
        .map(|n| n.syncer().stats().stranger_requests_refused)
        .sum();
    assert!(
        refused > 0,
        "the attack was never refused: it proves nothing"
    );
    assert_eq!(
        stranger_refusals, refused,
        "a member's request was refused as a stranger's"
    );
    let (r, _) = simulate(&sc, sc.seed, Sabotage::NoStrangerBudget);
    assert_eq!(failed_checks(&r), vec!["C4 adversarial input rejected"]);
}

/// Issue 15: the adversary holds the admin key and forks the admin chain at one `sq` (one half
/// adds a fresh key, the other removes it, to different peers), then writes as the new key.
/// Every replica decides each event by its own past and they converge; with membership by
/// arrival order (`membership-arrival-order`, the rule before membership versions) the
/// replicas that saw the removal last refuse the new key's events and the mesh splits.
#[test]
fn an_admin_fork_splits_no_replica_unless_membership_follows_arrival_order() {
    let mut sc = Suite::builtin()
        .get("byzantine")
        .expect("byzantine scenario")
        .clone();
    sc.byzantine.as_mut().expect("an adversary").attacks = vec![Attack::AdminFork];
    let (r, w) = simulate(&sc, sc.seed, Sabotage::None);
    assert!(r.passed(), "{:?}", r.failures().collect::<Vec<_>>());
    assert!(!w.newcomers.is_empty(), "the attack let nobody in");
    let (r, _) = simulate(&sc, sc.seed, Sabotage::MembershipArrivalOrder);
    let failed = failed_checks(&r);
    assert!(failed.contains(&"C1 convergence"), "{failed:?}");
}

/// Issue 15: a member writes what `kairos/3` guards against — answers nobody asked for,
/// eight emissary registrations at a time, 4 000-token stimuli — and events with a Lamport
/// clock far below their parents'. The guards hold (C11) and the low-Lamport events are
/// refused (C4); folding without the guards (`unguarded-machine`, the rules of `kairos/2`)
/// fails C11 on each of the three, and nothing else; without the Lamport clock check
/// (`any-lamport`) the low-clock events are held and C4 fails.
#[test]
fn a_hostile_writer_meets_the_machines_guards_unless_they_are_switched_off() {
    let mut sc = Suite::builtin()
        .get("byzantine")
        .expect("byzantine scenario")
        .clone();
    sc.byzantine.as_mut().expect("an adversary").attacks = vec![
        Attack::UnaskedAnswer,
        Attack::SlotFill,
        Attack::TokenBomb,
        Attack::LowLamport,
    ];
    let (r, _) = simulate(&sc, sc.seed, Sabotage::None);
    assert!(r.passed(), "{:?}", r.failures().collect::<Vec<_>>());
    let (r, _) = simulate(&sc, sc.seed, Sabotage::UnguardedMachine);
    assert_eq!(failed_checks(&r), vec!["C11 guarded machine"]);
    let why = r
        .failures()
        .map(|f| format!("{f:?}"))
        .collect::<Vec<_>>()
        .join(" ");
    println!("unguarded: {why}");
    // The Lamport clock check switched off: the adversary's low-clock events are held.
    sc.byzantine.as_mut().expect("an adversary").attacks = vec![Attack::LowLamport];
    let (r, _) = simulate(&sc, sc.seed, Sabotage::AnyLamport);
    let failed = failed_checks(&r);
    assert!(
        failed.contains(&"C4 adversarial input rejected"),
        "{failed:?}"
    );
    for sign in [
        "whom its election did not ask",
        "emissary registrations",
        "steps",
    ] {
        assert!(why.contains(sign), "C11 did not report {sign:?}: {why}");
    }
}

/// Issue 15's `hostile` scenario: every attack at once against 12 honest nodes, two of them
/// wiped. The honest append rate and convergence time are bounded against the same seed
/// without the adversaries ("adversary cost"); taking the peers' word in sync
/// (`trust-sync-claims`) lets the attacker's clean liar keep the wiped nodes' writes closed,
/// and both C10 and the adversary cost fail.
#[test]
fn every_attack_at_once_costs_the_honest_little_unless_a_defence_is_off() {
    let sc = Suite::builtin()
        .get("hostile")
        .expect("hostile scenario")
        .clone();
    let r = chorus_sim::run(&sc, sc.seed, Sabotage::None);
    assert!(r.passed(), "{:?}", r.failures().collect::<Vec<_>>());
    assert!(
        r.extra.iter().any(|v| v.check == "adversary cost"),
        "the cost was not measured"
    );
    let r = chorus_sim::run(&sc, sc.seed, Sabotage::TrustSyncClaims);
    let failed = failed_checks(&r);
    assert!(failed.contains(&"C10 writes reopen"), "{failed:?}");
    assert!(failed.contains(&"adversary cost"), "{failed:?}");
}
