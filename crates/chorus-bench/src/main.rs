//! Bench binary for `docs/benchmarks.md`.
//!
//! `cargo run --release -p chorus-bench` runs every scenario, each in its own process (so the
//! peak RSS it reports, from `/proc/self/status` VmHWM, is that scenario's alone), and prints a
//! markdown table. `cargo run --release -p chorus-bench -- NAME` runs one scenario.

use std::{
    collections::BTreeMap,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use chorus_core::{
    EventId, Machine, SignedEvent, Timeline, UnsignedEvent,
    archive::RawBlock,
    crypto::Keypair,
    event::kind,
    machine::CounterMachine,
    testkit::{self, NullMachine},
    timeline::NoBlocks,
};
use chorus_kairos::{
    KairosMachine,
    encoder::{PhaseEncoder, Sha256Encoder},
    engine::{Engine, Entry, NoiseKey, Profile},
    hermitian::Kernel,
};
use chorus_store::Replica;
use ipld_core::ipld::Ipld;
use redb::TableDefinition;

const SCENARIOS: &[&str] = &[
    "limits",
    "append",
    "ingest-counter",
    "ingest-kairos",
    "decode-parts",
    "ingest-stages",
    "late",
    "replay",
    "replay-store",
    "kairos-tokens",
    "w1",
    "w2-w3-counter",
    "w2-w3-kairos",
    "w3-final-counter",
    "w3-final-kairos",
    "store-1m",
    "open-1m",
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("all") => run_all(),
        Some(name) => run_one(name, &args[1..]),
    }
}

fn run_all() -> Result<()> {
    let exe = std::env::current_exe()?;
    let dir = tempfile::tempdir()?;
    println!("| measurement | value | unit | target | notes |");
    println!("|---|---:|---|---|---|");
    for name in SCENARIOS {
        eprintln!("running {name} …");
        let out = Command::new(&exe).arg(name).arg(dir.path()).output()?;
        if !out.status.success() {
            anyhow::bail!("{name} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(row) = line.strip_prefix("ROW|") {
                println!("| {} |", row.replace('|', " | "));
            }
        }
    }
    Ok(())
}

fn row(what: &str, value: f64, unit: &str, target: &str, notes: &str) {
    let v = if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    };
    println!("ROW|{what}|{v}|{unit}|{target}|{notes}");
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn run_one(name: &str, args: &[String]) -> Result<()> {
    let shared = args.first().map(std::path::PathBuf::from);
    match name {
        "append" => append(),
        "ingest-counter" => ingest("counter"),
        "ingest-kairos" => ingest("kairos"),
        "late" => late(),
        "replay" => replay(),
        "replay-store" => replay_store(),
        "kairos-tokens" => kairos_tokens(),
        "w1" => w1(),
        "limits" => limits(&shared.expect("shared dir")),
        "w2-w3-counter" => w2_w3(CounterMachine, "counter/1"),
        "w2-w3-kairos" => w2_w3(KairosMachine, "kairos/1"),
        "w3-final-counter" => w3_after_finality(CounterMachine, "counter/1"),
        "w3-final-kairos" => w3_after_finality(KairosMachine, "kairos/1"),
        "store-1m" => store_1m(&shared.expect("shared dir")),
        "open-1m" => open_1m(&shared.expect("shared dir")),
        "decode-parts" => decode_parts(),
        "ingest-stages" => ingest_stages(),
        other => anyhow::bail!("unknown scenario {other}; one of {SCENARIOS:?}"),
    }
}

fn new_replica<M: Machine>(dir: &std::path::Path, machine: M, id: &str) -> Result<Replica<M>> {
    Ok(Replica::init(
        dir,
        |k| chorus_core::genesis::Genesis::new_body("bench", k.author(), id),
        machine,
    )?)
}

const WORDS: [&str; 12] = [
    "the", "we", "is", "becoming", "one", "phase", "north", "gate", "guard", "fire", "night",
    "kairos",
];

fn sentence(i: usize, words: usize) -> String {
    (0..words)
        .map(|k| WORDS[(i * 7 + k * 5 + k * k) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Local append: sign + index + durable commit, for several group-commit sizes.
fn append() -> Result<()> {
    for (batch, total) in [
        (1usize, 2_000usize),
        (10, 10_000),
        (100, 20_000),
        (1000, 20_000),
    ] {
        let dir = tempfile::tempdir()?;
        let mut r = new_replica(dir.path(), CounterMachine, "counter/1")?;
        let t = Instant::now();
        append_stimuli(&mut r, total, batch)?;
        let target = if batch == 100 { "≥ 5 000/s" } else { "" };
        row(
            &format!("local append, durable, {batch} per commit (counter)"),
            rate(total, t.elapsed()),
            "events/s",
            target,
            &format!("{total} events, fsync per commit"),
        );
    }
    let dir = tempfile::tempdir()?;
    let mut r = new_replica(dir.path(), KairosMachine, "kairos/1")?;
    let t = Instant::now();
    append_stimuli(&mut r, 10_000, 100)?;
    row(
        "local append, durable, 100 per commit (KAIROS, 10 tokens/event)",
        rate(10_000, t.elapsed()),
        "events/s",
        "",
        "",
    );
    Ok(())
}

/// The physical limits under the rows that follow, measured in the same run on the same disk:
/// what one event costs at least to sign, to check, to store and to make durable. A row above
/// such a limit would be a measuring error; the distance below it is overhead of ours.
fn limits(dir: &std::path::Path) -> Result<()> {
    let key = Keypair::from_seed([9; 32]);
    let g = testkit::genesis(
        &Keypair::from_seed([250; 32]),
        std::slice::from_ref(&key),
        "counter/1",
        256,
    );
    // A typical stimulus: about the size of the bench's events.
    let events: Vec<SignedEvent> = (0..2_000u64)
        .map(|i| {
            UnsignedEvent {
                timeline: Some(g.id()),
                author: key.author(),
                seq: i + 1,
                lamport: i + 1,
                parents: vec![g.id()],
                kind: kind::STIMULUS.into(),
                body: testkit::text(&sentence(i as usize, 10)),
            }
            .sign(&key)
        })
        .collect();
    let payloads: Vec<Vec<u8>> = events.iter().map(|e| e.bytes().to_vec()).collect();
    let size = payloads.iter().map(Vec::len).sum::<usize>() / payloads.len();
    let per = |d: Duration, n: usize| d.as_secs_f64() * 1e6 / n as f64;
    // The best of three passes: the floor, not the first pass's cold caches.
    let best = |f: &mut dyn FnMut() -> Result<f64>| -> Result<f64> {
        let mut b = f64::INFINITY;
        for _ in 0..3 {
            b = b.min(f()?);
        }
        Ok(b)
    };

    let sigs: Vec<[u8; 64]> = payloads.iter().map(|p| key.sign_event(p)).collect();
    let sign = best(&mut || {
        let t = Instant::now();
        for p in &payloads {
            std::hint::black_box(key.sign_event(p));
        }
        Ok(per(t.elapsed(), payloads.len()))
    })?;
    row(
        "limit: Ed25519 sign (ed25519-dalek), one event's bytes",
        sign,
        "µs",
        "",
        &format!(
            "{size} bytes an event; {:.0} signatures/s on one core",
            1e6 / sign
        ),
    );
    let verify = best(&mut || {
        let mut keys = chorus_core::crypto::KeyCache::default();
        let t = Instant::now();
        for (p, s) in payloads.iter().zip(&sigs) {
            if chorus_core::crypto::verify_event_cached(&key.author(), p, s, &mut keys).is_err() {
                bail!("a signature of the bench's own key did not verify");
            }
        }
        Ok(per(t.elapsed(), payloads.len()))
    })?;
    row(
        "limit: Ed25519 verify (strict, the key decompressed once), one event's bytes",
        verify,
        "µs",
        "",
        &format!("{:.0} verifications/s on one core", 1e6 / verify),
    );
    let decode = best(&mut || {
        let mut keys = chorus_core::crypto::KeyCache::default();
        let t = Instant::now();
        for e in &events {
            SignedEvent::decode_cached(e.bytes(), &mut keys)?;
        }
        Ok(per(t.elapsed(), events.len()))
    })?;
    row(
        "limit: an event decoded and checked (DAG-CBOR, CID, strict verify)",
        decode,
        "µs",
        "",
        "what every received event costs before the timeline sees it",
    );

    const BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("limits");
    let path = dir.join("limits.redb");
    let db = redb::Database::create(&path)?;
    // The table is made before the passes: the first commit does not pay for it.
    {
        let txn = db.begin_write()?;
        txn.open_table(BLOCKS)?;
        txn.commit()?;
    }
    let commits = 100;
    let mut pass = 0;
    let commit = best(&mut || {
        let t = Instant::now();
        for (e, p) in events
            .iter()
            .zip(&payloads)
            .skip(pass * commits)
            .take(commits)
        {
            let txn = db.begin_write()?;
            txn.open_table(BLOCKS)?
                .insert(e.id().0.as_slice(), p.as_slice())?;
            txn.commit()?;
        }
        pass += 1;
        Ok(per(t.elapsed(), commits))
    })?;
    row(
        "limit: a durable redb commit of one event (fsync, this disk)",
        commit,
        "µs",
        "",
        &format!(
            "{:.0} commits/s: the ceiling of one event a commit; group commit shares it",
            1e6 / commit
        ),
    );
    // Three passes of 500 inserts after the 300 committed, each pass one transaction.
    let mut pass = 0;
    let insert = best(&mut || {
        let txn = db.begin_write()?;
        let t = Instant::now();
        {
            let mut table = txn.open_table(BLOCKS)?;
            let batch = events.iter().zip(&payloads).skip(3 * commits + pass * 500);
            for (e, p) in batch.take(500) {
                table.insert(e.id().0.as_slice(), p.as_slice())?;
            }
        }
        let d = per(t.elapsed(), 500);
        txn.commit()?;
        pass += 1;
        Ok(d)
    })?;
    row(
        "limit: redb insert of one event block inside a transaction",
        insert,
        "µs",
        "",
        "32-byte key; the index entries a store adds per event cost about as much each",
    );
    row(
        "ceiling: durable single-event appends on one core (sign + insert, fsync shared)",
        1e6 / (sign + insert),
        "events/s",
        "",
        "what the 64-client row could reach if the node did nothing else an event",
    );
    row(
        "ceiling: ingest of received events on one core (decode + insert)",
        1e6 / (decode + insert),
        "events/s",
        "",
        "what the ingest rows could reach if the node did nothing else an event",
    );
    drop(db);
    std::fs::remove_file(&path)?;
    Ok(())
}

struct Writers {
    admin: Keypair,
    keys: Vec<Keypair>,
}

fn writers(n: usize) -> Writers {
    Writers {
        admin: Keypair::from_seed([250; 32]),
        keys: (0..n)
            .map(|i| {
                Keypair::from_seed([
                    (i % 250) as u8 + 1,
                    (i / 250) as u8,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                ])
            })
            .collect(),
    }
}

/// `n` stimuli of 10 tokens from `writers` concurrent writers, for a genesis of `machine_id`.
fn stimuli(
    writers_n: usize,
    machine_id: &'static str,
    n: usize,
    seed: u64,
) -> (SignedEvent, Vec<SignedEvent>) {
    let w = writers(writers_n);
    let g = testkit::genesis(&w.admin, &w.keys, machine_id, 256);
    let evs = testkit::history(&g, machine_id, &w.keys, n, seed, |made, _| {
        (kind::STIMULUS, testkit::text(&sentence(made.len(), 10)))
    });
    (g, evs)
}

/// Foreign events: decode + CID + signature + store + order + apply.
fn ingest(which: &str) -> Result<()> {
    for (machine_id, n) in
        [("counter/1", 20_000usize), ("kairos/1", 5_000)] as [(&'static str, usize); 2]
    {
        if !machine_id.starts_with(which) {
            continue;
        }
        let (g, evs) = stimuli(4, machine_id, n, 11);
        // As an archive holds them: each block under the CID it claims.
        let blocks: Vec<RawBlock> = evs
            .iter()
            .map(|e| RawBlock {
                cid: e.id().to_string(),
                bytes: Ok(e.bytes().to_vec()),
            })
            .collect();
        let dir = tempfile::tempdir()?;
        let t = Instant::now();
        if machine_id == "counter/1" {
            let mut r = Replica::create_from_genesis(dir.path(), g, CounterMachine)?;
            pipelined_ingest(&mut r, blocks)?;
        } else {
            let mut r = Replica::create_from_genesis(dir.path(), g, KairosMachine)?;
            pipelined_ingest(&mut r, blocks)?;
        }
        let target = if machine_id == "counter/1" {
            "≥ 15 000/s"
        } else {
            ""
        };
        row(
            &format!("ingest foreign events ({machine_id}): decode+CID+verify+store+order+apply"),
            rate(n, t.elapsed()),
            "events/s",
            target,
            &format!("{n} events from 4 concurrent writers, 1000 per commit, 10 tokens/event"),
        );
    }
    Ok(())
}

/// Check (CID + decode + signature, all cores) one chunk ahead of ingest (order + apply +
/// durable store): `chorus import`'s own pipeline (`chorus_store::import`).
fn pipelined_ingest<M: Machine>(r: &mut Replica<M>, blocks: Vec<RawBlock>) -> Result<()> {
    let rep = chorus_store::import::import(r, blocks.into_iter().map(Ok), &mut ())?;
    if rep.rejected_total() > 0 || rep.pending > 0 {
        bail!("the bench's own events were not all taken: {rep:?}");
    }
    Ok(())
}

/// A late event d positions behind the tip: time to insert it and bring the state up to date.
/// One timeline per (machine, depth); each trial adds one more late event from a new writer,
/// whose parent is `depth` events below the fast writer's tip, so every trial is `depth` back.
fn late() -> Result<()> {
    for machine_id in ["counter/1", "kairos/1"] {
        for depth in [1usize, 100, 10_000] {
            let (median, reapplied) = if machine_id == "counter/1" {
                late_depth(CounterMachine, machine_id, depth)?
            } else {
                late_depth(KairosMachine, machine_id, depth)?
            };
            let (target, dense) = match (machine_id, depth) {
                ("counter/1", 100) => ("≤ 5 ms", ""),
                ("counter/1", _) => ("", ""),
                (_, 100) => ("≤ 20 ms", ", a state in memory every 16"),
                _ => ("", ", a state in memory every 16"),
            };
            row(
                &format!("late insert {depth} events back ({machine_id})"),
                median.as_secs_f64() * 1e3,
                "ms (median of 5)",
                target,
                &format!("checkpoint every 256{dense}; {reapplied} events re-applied per insert"),
            );
        }
    }
    Ok(())
}

fn late_depth<M: Machine>(machine: M, id: &'static str, depth: usize) -> Result<(Duration, u64)> {
    let w = writers(8);
    let fast = &w.keys[0];
    let g = testkit::genesis(&w.admin, &w.keys, id, 256);
    let n = depth + 300;
    let mut builder = Timeline::new(g.clone(), NullMachine(id))?;
    let mut src: BTreeMap<EventId, Arc<[u8]>> = BTreeMap::new();
    src.insert(g.id(), g.bytes_arc());
    let mut chain = vec![g.clone()];
    for i in 0..n {
        let e = builder
            .prepare(
                fast.author(),
                kind::STIMULUS,
                testkit::text(&sentence(i, 10)),
            )
            .sign(fast);
        src.insert(e.id(), e.bytes_arc());
        builder.insert_deferred(e.clone())?;
        chain.push(e);
    }
    let mut tl = Timeline::new(g.clone(), machine)?;
    tl.insert_batch(chain[1..].iter().cloned(), &src)?;
    // Every slow writer published one early event (parent: the genesis), so the measured
    // event is its second: parents = that early event and the fast event `depth` below the tip.
    let mut early = BTreeMap::new();
    for slow in &w.keys[1..] {
        let e = UnsignedEvent {
            timeline: Some(g.id()),
            author: slow.author(),
            seq: 1,
            lamport: 1,
            parents: vec![g.id()],
            kind: kind::HEARTBEAT.into(),
            body: Ipld::Null,
        }
        .sign(slow);
        src.insert(e.id(), e.bytes_arc());
        early.insert(slow.author(), e.id());
        tl.insert(e, &src)?;
    }
    let mut times = vec![];
    let mut reapplied = 0;
    for slow in &w.keys[1..6] {
        let parent = &chain[chain.len() - 1 - depth];
        let mut parents = vec![parent.id(), early[&slow.author()]];
        parents.sort();
        let lamport = parents
            .iter()
            .map(|p| tl.meta_of(p).expect("known").2)
            .max()
            .unwrap()
            + 1;
        let ev = UnsignedEvent {
            timeline: Some(g.id()),
            author: slow.author(),
            seq: 2,
            lamport,
            parents,
            kind: kind::STIMULUS.into(),
            body: testkit::text("from the pi zero, late"),
        }
        .sign(slow);
        src.insert(ev.id(), ev.bytes_arc());
        let before = tl.stats().reapplied;
        let t = Instant::now();
        tl.insert(ev, &src)?;
        times.push(t.elapsed());
        reapplied += tl.stats().reapplied - before;
    }
    times.sort();
    Ok((times[times.len() / 2], reapplied / times.len() as u64))
}

/// Replay from genesis: index + apply every event in order.
fn replay() -> Result<()> {
    for (machine_id, n) in [("counter/1", 100_000usize), ("kairos/1", 10_000)] {
        let (g, evs) = stimuli(4, machine_id, n, 5);
        let mut sorted = evs.clone();
        sorted.sort_by_key(|e| (e.lamport, e.id()));
        let t = Instant::now();
        let hash = if machine_id == "counter/1" {
            let mut tl = Timeline::new(g.clone(), CounterMachine)?;
            tl.insert_batch(sorted, &NoBlocks)?;
            tl.state_hash()
        } else {
            let mut tl = Timeline::new(g.clone(), KairosMachine)?;
            tl.insert_batch(sorted, &NoBlocks)?;
            tl.state_hash()
        };
        let d = t.elapsed();
        let target = if machine_id == "counter/1" {
            "≤ 15 s for 100 000"
        } else {
            ""
        };
        row(
            &format!("replay {n} events from genesis ({machine_id})"),
            d.as_secs_f64(),
            "s",
            target,
            &format!("{:.0} events/s; state {}", rate(n, d), &hex(&hash)[..12]),
        );
    }
    Ok(())
}

/// Appends `n` stimuli of 10 tokens, durably, `per_commit` per transaction.
fn append_stimuli<M: Machine>(r: &mut Replica<M>, n: usize, per_commit: usize) -> Result<()> {
    for b in 0..n / per_commit {
        let items = (0..per_commit)
            .map(|i| {
                let text = sentence(b * per_commit + i, 10);
                (kind::STIMULUS.to_string(), testkit::text(&text))
            })
            .collect();
        r.append_batch(items)?;
    }
    Ok(())
}

/// Replay from the store: every block read back, decoded, indexed and applied (no checkpoint).
fn replay_store() -> Result<()> {
    let n = 100_000;
    let dir = tempfile::tempdir()?;
    let mut r = new_replica(dir.path(), CounterMachine, "counter/1")?;
    append_stimuli(&mut r, n, 1000)?;
    let want = r.timeline().state_hash();
    drop(r);
    let store = chorus_store::Store::open(&dir.path().join(chorus_store::replica::STORE_FILE))?;
    let t = Instant::now();
    let tl = Timeline::restore(
        store.genesis()?,
        CounterMachine,
        store.ordered_events().map(|e| e.expect("readable")),
        Vec::new(),
        &store,
    )?;
    let d = t.elapsed();
    assert_eq!(tl.state_hash(), want);
    row(
        "replay 100 000 events from genesis, read from the redb store (counter/1)",
        d.as_secs_f64(),
        "s",
        "≤ 15 s",
        &format!("{:.0} events/s; no checkpoint used", rate(n + 1, d)),
    );
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn kairos_tokens() -> Result<()> {
    let n = 50_000;
    let entries: Vec<Arc<Entry>> = (0..n)
        .map(|i| {
            Arc::new(Entry::new(
                &Sha256Encoder,
                Sha256Encoder.key(WORDS[i % WORDS.len()]),
            ))
        })
        .collect();
    // Every kernel this CPU has, in one run (the ratio), each checked against the reference's
    // final bits.
    let mut reference = None;
    for kernel in Kernel::available() {
        let mut e = Engine::new(Profile::MASTER).with_kernel(kernel);
        let t = Instant::now();
        for (i, entry) in entries.iter().enumerate() {
            e.temporalize(
                entry.clone(),
                NoiseKey {
                    event: [1; 32],
                    token: i as u64,
                },
            );
        }
        let d = t.elapsed();
        let bits = (
            e.coherence.to_bits(),
            e.t_tau.0.to_bits(),
            e.recovery.to_bits(),
        );
        assert_eq!(
            *reference.get_or_insert(bits),
            bits,
            "{} differs",
            kernel.name()
        );
        row(
            &format!(
                "KAIROS temporalize, master profile (window full: 119 pairs/step), {} kernel",
                kernel.name()
            ),
            rate(n, d),
            "tokens/s",
            "≥ 40 000",
            "phasors precomputed; final state bit-identical to the scalar kernel's",
        );
    }
    let t = Instant::now();
    let mut e = Engine::new(Profile::MASTER);
    for i in 0..n {
        let entry = Arc::new(Entry::new(
            &Sha256Encoder,
            Sha256Encoder.key(&format!("token{i}")),
        ));
        e.temporalize(
            entry,
            NoiseKey {
                event: [1; 32],
                token: i as u64,
            },
        );
    }
    row(
        "KAIROS temporalize incl. SHA-256 encoder + 768 libm sin/cos per token",
        rate(n, t.elapsed()),
        "tokens/s",
        "≥ 10 000",
        "",
    );
    Ok(())
}

/// W1: one writer, 10 000 appends of 100-byte JSON payloads.
fn w1() -> Result<()> {
    let payload = |i: usize| -> Ipld {
        // {"n":i,"pad":"…"} serialised as JSON is 100 bytes.
        let base = format!("{{\"n\":{i},\"pad\":\"\"}}").len();
        let mut m = BTreeMap::new();
        m.insert("n".to_string(), Ipld::Integer(i as i128));
        m.insert("pad".to_string(), Ipld::String("x".repeat(100 - base)));
        Ipld::Map(m)
    };
    for batch in [1usize, 100] {
        let dir = tempfile::tempdir()?;
        let mut r = new_replica(dir.path(), CounterMachine, "counter/1")?;
        let t = Instant::now();
        for b in 0..10_000 / batch {
            r.append_batch(
                (0..batch)
                    .map(|i| ("note".to_string(), payload(b * batch + i)))
                    .collect(),
            )?;
        }
        let d = t.elapsed();
        row(
            &format!("W1: 1 writer × 10 000 appends of 100-byte JSON, {batch} per commit"),
            d.as_secs_f64(),
            "s",
            "",
            &format!("{:.0} events/s durable", rate(10_000, d)),
        );
    }
    Ok(())
}

/// Ingests `events` in chunks of 1 000 as one session folded once (as a sync stream's pages
/// or an import's chunks are); how long that took.
fn fold_in_chunks<M: Machine>(r: &mut Replica<M>, events: &[SignedEvent]) -> Result<Duration> {
    let t = Instant::now();
    r.fold_once(&mut (), |r, _| {
        for chunk in events.chunks(1000) {
            r.ingest(chunk.to_vec())?;
        }
        Ok::<_, chorus_store::ReplicaError>(())
    })?;
    Ok(t.elapsed())
}

/// `n` events of one writer that heard nobody (each names only its own previous one).
fn solo_chain(
    g: &SignedEvent,
    id: &'static str,
    k: &Keypair,
    n: usize,
    tag: &str,
) -> Result<Vec<SignedEvent>> {
    let mut tl = Timeline::new(g.clone(), NullMachine(id))?;
    let mut out = vec![];
    for i in 0..n {
        let e = tl
            .prepare(
                k.author(),
                kind::STIMULUS,
                testkit::text(&format!("{tag} {}", sentence(i, 10))),
            )
            .sign(k);
        tl.insert_deferred(e.clone())?;
        out.push(e);
    }
    Ok(out)
}

/// W3 on a `final/2` timeline (what `chorus swarm` and `chorus init --order final` make): the
/// four writers' W2 work is made final first (the admin and the four writers, a quorum of 5 of
/// the 6 members, heartbeat until nothing is owed), then the fifth writer is heard. Its events
/// sort after the final prefix (docs/design/finality.md), so the fold never rewinds into the
/// 10 000 final events: W3 costs the 1 000 events and the tentative tail after the prefix.
fn w3_after_finality<M: Machine + Copy>(machine: M, id: &'static str) -> Result<()> {
    let w = writers(5);
    let g = testkit::genesis_ordered(
        &w.admin,
        &w.keys,
        id,
        256,
        Some(chorus_core::genesis::ORDER_FINAL_2),
    );
    let mut w2 = vec![];
    for k in &w.keys[..4] {
        w2.push(solo_chain(&g, id, k, 2_500, "w2")?);
    }
    let w3 = solo_chain(&g, id, &w.keys[4], 1_000, "w3")?;
    let mut blocks: BTreeMap<EventId, Arc<[u8]>> = BTreeMap::new();
    for e in std::iter::once(&g).chain(w2.iter().flatten()) {
        blocks.insert(e.id(), e.bytes_arc());
    }
    // Each member's own view of W2, from which it signs its heartbeats.
    let members: Vec<&Keypair> = std::iter::once(&w.admin).chain(&w.keys[..4]).collect();
    let mut views = vec![];
    for _ in &members {
        let mut view = Timeline::new(g.clone(), NullMachine(id))?;
        for r in view.insert_batch(w2.iter().flatten().cloned(), &blocks)? {
            r?;
        }
        views.push(view);
    }
    let mut beats = vec![];
    for round in 0.. {
        if round == 60 {
            bail!("the heartbeats of the four writers and the admin never stopped");
        }
        let mut fresh = vec![];
        for (view, key) in views.iter_mut().zip(&members) {
            if view.owes_heartbeat(&key.author()) {
                let e = view.sign_local(key, kind::HEARTBEAT, Ipld::Null)?;
                blocks.insert(e.id(), e.bytes_arc());
                view.insert(e.clone(), &blocks)?;
                fresh.push(e);
            }
        }
        if fresh.is_empty() {
            break;
        }
        for view in &mut views {
            // A view's own heartbeat comes back as `Inserted::Duplicate`.
            for r in view.insert_batch(fresh.iter().cloned(), &blocks)? {
                r?;
            }
        }
        beats.extend(fresh);
    }
    let dir = tempfile::tempdir()?;
    let mut r = Replica::create_from_genesis(dir.path(), g.clone(), machine)?;
    r.fold_once(&mut (), |r, _| {
        for writer in &w2 {
            for chunk in writer.chunks(1000) {
                r.ingest(chunk.to_vec())?;
            }
        }
        r.ingest(beats.clone())
    })?;
    let final_before = r.timeline().finality().map_or(0, |f| f.final_positions);
    if final_before < 10_000 {
        bail!("only {final_before} positions final before the fifth writer");
    }
    let before = r.timeline().stats().clone();
    let d = fold_in_chunks(&mut r, &w3)?;
    let after = r.timeline().stats().clone();
    let final_after = r.timeline().finality().map_or(0, |f| f.final_positions);
    if final_after < final_before {
        bail!("the final prefix shrank: {final_before} -> {final_after}");
    }
    // Every late event is held, and after the prefix that was final when it came.
    for e in &w3 {
        match r.timeline().position_of(&e.id()) {
            Some(p) if p as u64 >= final_before => {}
            p => bail!("a late event at {p:?}, inside the final prefix of {final_before}"),
        }
    }
    // Nothing final was reordered, and the fold restarted from the newest checkpoint before
    // the end of the final prefix: what was re-applied is the tentative tail and at most one
    // checkpoint interval of final events.
    let tentative_before = r.timeline().len() as u64 - w3.len() as u64 - final_before;
    let reapplied = after.reapplied - before.reapplied;
    if reapplied > tentative_before + 256 {
        bail!(
            "{reapplied} re-applied: more than the {tentative_before} tentative positions and \
             one checkpoint interval"
        );
    }
    // The merged replica equals a from-scratch replay of the same events.
    let mut all: Vec<SignedEvent> = w2
        .into_iter()
        .flatten()
        .chain(beats.iter().cloned())
        .chain(w3)
        .collect();
    all.sort_by_key(|e| e.lamport);
    let mut fresh = Timeline::new(g, machine)?;
    for res in fresh.insert_batch(all, r.store())? {
        res?;
    }
    if fresh.state_hash() != r.timeline().state_hash() {
        bail!("the merge and a replay of the same events differ");
    }
    row(
        &format!(
            "W3 ({id}, final/2): integrate a 5th writer's 1 000 concurrent events after W2 is final"
        ),
        d.as_secs_f64() * 1e3,
        "ms",
        if id == "counter/1" {
            "≤ 30 ms"
        } else {
            "≤ 1 500 ms"
        },
        &format!(
            "{final_before} positions final before ({} heartbeats); {} applications, {} re-applied (the {tentative_before} tentative positions and the final ones after the newest checkpoint), {} rewinds",
            beats.len(),
            after.applied - before.applied,
            after.reapplied - before.reapplied,
            after.rewinds - before.rewinds
        ),
    );
    Ok(())
}

/// W2: four writers × 2 500 events created without seeing each other, merged into a fresh
/// replica; W3: a fifth writer's 1 000 events, concurrent with all of W2, integrated after.
fn w2_w3<M: Machine + Copy>(machine: M, id: &'static str) -> Result<()> {
    let w = writers(5);
    let g = testkit::genesis(&w.admin, &w.keys, id, 256);
    let mut w2 = vec![];
    for k in &w.keys[..4] {
        w2.push(solo_chain(&g, id, k, 2_500, "w2")?);
    }
    let w3 = solo_chain(&g, id, &w.keys[4], 1_000, "w3")?;
    let ingest_w2 = |r: &mut Replica<M>| -> Result<(), chorus_store::ReplicaError> {
        for writer in &w2 {
            for chunk in writer.chunks(1000) {
                r.ingest(chunk.to_vec())?;
            }
        }
        Ok(())
    };
    let w2_row = |how: &str, target: &str, d: Duration, s: &chorus_core::timeline::Stats| {
        row(
            &format!(
                "W2 ({id}): merge 4 × 2 500 concurrent events, writer after writer (chunks of 1 000), {how}"
            ),
            d.as_secs_f64(),
            "s",
            target,
            &format!(
                "{:.0} events/s; {} applications for 10 000 events ({} re-applied, {} rewinds)",
                rate(10_000, d),
                s.applied,
                s.reapplied,
                s.rewinds
            ),
        )
    };
    // Before: a fold after every chunk, so each writer's chunks rewind into the ones before.
    {
        let dir = tempfile::tempdir()?;
        let mut r = Replica::create_from_genesis(dir.path(), g.clone(), machine)?;
        let t = Instant::now();
        ingest_w2(&mut r)?;
        w2_row(
            "a fold after every chunk",
            "",
            t.elapsed(),
            r.timeline().stats(),
        );
    }
    // Now: the chunks are one session (as a sync stream's pages or an import's chunks are),
    // folded once at its end.
    let dir = tempfile::tempdir()?;
    let mut r = Replica::create_from_genesis(dir.path(), g.clone(), machine)?;
    let t = Instant::now();
    r.fold_once(&mut (), |r, _| ingest_w2(r))?;
    let s2 = r.timeline().stats().clone();
    let target = if id == "counter/1" { "" } else { "≤ 3 s" };
    w2_row("folded once", target, t.elapsed(), &s2);
    let d3 = fold_in_chunks(&mut r, &w3)?;
    let s3 = r.timeline().stats().clone();
    row(
        &format!("W3 ({id}): integrate a 5th writer's 1 000 concurrent events after W2"),
        d3.as_secs_f64(),
        "s",
        if id == "counter/1" {
            "≤ 30 ms"
        } else {
            "≤ 1.5 s"
        },
        &format!(
            "{} events re-applied (amplification {:.1}×; every one of the 10 000 sorts after some of the 1 000)",
            s3.reapplied - s2.reapplied,
            (s3.applied - s2.applied) as f64 / 1000.0
        ),
    );
    row(
        &format!("W2+W3 ({id}): peak RSS of the process"),
        peak_rss_mb(),
        "MB",
        "",
        "includes the 11 000 generated events the bench holds",
    );
    // The same W2 set handed over as one batch (as a peer's range response or an import
    // chunk would): one rewind at most.
    let dir1 = tempfile::tempdir()?;
    let mut one = Replica::create_from_genesis(dir1.path(), g.clone(), machine)?;
    let t = Instant::now();
    one.ingest(w2.iter().flatten().cloned().collect())?;
    let d = t.elapsed();
    let s1 = one.timeline().stats().clone();
    row(
        &format!("W2 ({id}): the same 10 000 events as one batch"),
        d.as_secs_f64(),
        "s",
        "",
        &format!(
            "{:.0} events/s; {} applications ({} re-applied)",
            rate(10_000, d),
            s1.applied,
            s1.reapplied
        ),
    );
    // The merged replica equals a from-scratch replay of the same set.
    let mut all: Vec<SignedEvent> = w2.into_iter().flatten().chain(w3).collect();
    all.sort_by_key(|e| (e.lamport, e.id()));
    let mut fresh = Timeline::new(g, machine)?;
    fresh.insert_batch(all, r.store())?;
    assert_eq!(
        fresh.state_hash(),
        r.timeline().state_hash(),
        "merge equals replay"
    );
    Ok(())
}

const ONE_MILLION: usize = 1_000_000;

/// Builds a store with 1 M events (used by open-1m).
fn store_1m(shared: &std::path::Path) -> Result<()> {
    let dir = shared.join("one-million");
    let _ = std::fs::remove_dir_all(&dir);
    let mut r = new_replica(&dir, CounterMachine, "counter/1")?;
    let t = Instant::now();
    append_stimuli(&mut r, ONE_MILLION, 1000)?;
    let d = t.elapsed();
    row(
        "build a 1 000 000-event store (append, 1000 per commit)",
        d.as_secs_f64(),
        "s",
        "",
        &format!("{:.0} events/s", rate(ONE_MILLION, d)),
    );
    row(
        "peak RSS while appending 1 000 000 events",
        peak_rss_mb(),
        "MB",
        "≤ 200 MB",
        "writer process",
    );
    Ok(())
}

fn open_1m(shared: &std::path::Path) -> Result<()> {
    let dir = shared.join("one-million");
    let t = Instant::now();
    let r = Replica::open(&dir, CounterMachine)?;
    let d = t.elapsed();
    row(
        "open a 1 000 000-event store: integrity check + index + newest checkpoint",
        d.as_secs_f64(),
        "s",
        "",
        &format!(
            "{} events, {} applied on open",
            r.timeline().len(),
            r.timeline().stats().applied
        ),
    );
    row(
        "peak RSS with 1 000 000 events stored (opened replica)",
        peak_rss_mb(),
        "MB",
        "≤ 200 MB",
        "",
    );
    Ok(())
}

fn ingest_stages() -> Result<()> {
    let (g, evs) = stimuli(4, "counter/1", 20_000, 11);
    let bytes: Vec<Vec<u8>> = evs.iter().map(|e| e.bytes().to_vec()).collect();
    let t = Instant::now();
    let decoded = chorus_store::decode_parallel(&bytes)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    row(
        "ingest stage 1: decode + verify on all cores",
        rate(bytes.len(), t.elapsed()),
        "events/s",
        "",
        "",
    );
    let dir = tempfile::tempdir()?;
    let mut r = Replica::create_from_genesis(dir.path(), g, CounterMachine)?;
    let t = Instant::now();
    for chunk in decoded.chunks(1000) {
        r.ingest(chunk.to_vec())?;
    }
    row(
        "ingest stage 2: order + apply + durable store (counter)",
        rate(bytes.len(), t.elapsed()),
        "events/s",
        "",
        "1000 per commit",
    );
    Ok(())
}

fn decode_parts() -> Result<()> {
    let (_genesis, evs) = stimuli(1, "counter/1", 20_000, 3);
    let t = Instant::now();
    for e in &evs {
        SignedEvent::decode_trusted(e.bytes())?;
    }
    row(
        "decode + CID, no signature check",
        rate(evs.len(), t.elapsed()),
        "events/s",
        "",
        "context for the ingest rows",
    );
    let t = Instant::now();
    for e in &evs {
        SignedEvent::decode(e.bytes())?;
    }
    row(
        "decode + CID + Ed25519 verify_strict",
        rate(evs.len(), t.elapsed()),
        "events/s",
        "",
        "single thread",
    );
    Ok(())
}
