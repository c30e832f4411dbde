//! The subcommands. Each opens the data directory's replica with the machine its genesis names.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufWriter, Write},
    path::Path,
};

use anyhow::{Context, Result, bail};
use chorus_core::{
    AuthorId, EventId, Machine, archive,
    event::kind,
    genesis::Genesis,
    machine::CounterMachine,
    membership::{MemberOp, Role, VoteOp},
};
use chorus_kairos::{
    Kairos2Machine, Kairos3Machine, KairosMachine,
    body::{Intent, Stimulus},
};
use chorus_store::{Replica, Store, replica::STORE_FILE};
use ipld_core::ipld::Ipld;
use serde_json::Value;

use chorus_node::{
    describe::{Describe, event_json, event_line, json_to_ipld, state_json},
    machines::{self, WithMachine},
};

use crate::{
    AppendArgs, Cli, Command, ExportArgs, ImportArgs, InitArgs, LogArgs, MachineArg, MemberCmd,
    OrderArg, RoleArg,
    progress::{Progress, Stages},
};

pub fn run(cli: Cli) -> Result<i32> {
    let dir = cli.data_dir.as_path();
    match cli.command {
        Command::Init(a) => init(dir, a),
        Command::Key => {
            let key = chorus_store::replica::load_or_create_key(dir)?;
            println!("{}", key.author());
            Ok(0)
        }
        Command::Import(a) => import(dir, a),
        Command::Node(a) => crate::mesh::node(dir, a),
        Command::Join { multiaddr } => crate::mesh::join(dir, &multiaddr),
        Command::Status { api, json } => crate::mesh::status(dir, api, json),
        Command::Snapshot { cmd, api } => match cmd {
            crate::SnapshotCmd::Show => crate::snapshot::show(dir, api),
            crate::SnapshotCmd::Verify { root, timeline } => {
                crate::snapshot::verify(dir, root, timeline, api)
            }
        },
        Command::Swarm(a) => crate::mesh::swarm(a),
        Command::Sim { cmd } => crate::sim::run(cmd),
        Command::Model { cmd } => model(cmd),
        Command::Append(a) if a.api.is_some() || crate::http::running_api(dir).is_some() => {
            append_remote(dir, a)
        }
        Command::Member { op, api } if api.is_some() || crate::http::running_api(dir).is_some() => {
            member_remote(dir, op, api)
        }
        other => match crate::http::running_api(dir) {
            Some(api) => match crate::live::through_node(&api, &other) {
                Some(Err(e)) if crate::live::unreachable(&e) => on_store(dir, other),
                Some(r) => r,
                None => on_store(dir, other),
            },
            None => on_store(dir, other),
        },
    }
}

/// A subcommand that opens the data directory's store, run with the machine its genesis names.
struct OnStore<'a> {
    dir: &'a Path,
    store: Store,
    cmd: Command,
}

impl WithMachine for OnStore<'_> {
    type Output = Result<i32>;
    fn run<M: Describe>(self) -> Result<i32> {
        with_machine::<M>(self.dir, self.store, self.cmd)
    }
}

fn on_store(dir: &Path, cmd: Command) -> Result<i32> {
    let store = Store::open(&dir.join(STORE_FILE))?;
    let machine = store.machine_id().to_string();
    machines::dispatch(&machine, OnStore { dir, store, cmd })?
}

/// `chorus append` while a node runs on the data directory (its store is locked by it): the
/// node appends, signs with its key and gossips. A stale `api.addr` (the node was killed)
/// falls back to opening the store.
fn append_remote(dir: &Path, a: AppendArgs) -> Result<i32> {
    let explicit = a.api.is_some();
    let api = a
        .api
        .clone()
        .or_else(|| crate::http::running_api(dir))
        .unwrap_or_default();
    if a.kind == kind::INTENT && a.json.is_none() {
        bail!(
            "through a running node, give an intent's body with --json (with \"re\": {{\"/\": CID}})"
        );
    }
    let body = match (&a.json, &a.text) {
        (Some(j), _) => serde_json::from_str(j).context("--json is not valid JSON")?,
        (None, Some(t)) => Value::String(t.clone()),
        (None, None) => bail!("give the event's TEXT or --json BODY"),
    };
    match crate::mesh::append_via_api(&api, &a.kind, body, a.count) {
        Err(e) if !explicit && e.to_string().starts_with("cannot reach") => {
            on_store(dir, Command::Append(a))
        }
        r => r,
    }
}

/// `chorus member` while a node runs on the data directory: `POST /v1/members` (the node signs
/// with its key, which must be the admin's). A stale `api.addr` falls back to the store.
fn member_remote(dir: &Path, op: MemberCmd, api: Option<String>) -> Result<i32> {
    let explicit = api.is_some();
    let addr = api
        .or_else(|| crate::http::running_api(dir))
        .unwrap_or_default();
    let req = match &op {
        MemberCmd::Add { key, role } => serde_json::json!({
            "op": "add", "key": key,
            "role": match role { RoleArg::Anchor => "anchor", RoleArg::Writer => "writer" },
        }),
        MemberCmd::Remove { key } => serde_json::json!({ "op": "remove", "key": key }),
        MemberCmd::VoteRemove { key } => serde_json::json!({ "op": "vote-remove", "key": key }),
        MemberCmd::VoteRestore { key } => serde_json::json!({ "op": "vote-restore", "key": key }),
    };
    match crate::http::post(&addr, "/v1/members", &req) {
        Ok(r) => {
            println!("{}", r["id"].as_str().unwrap_or("?"));
            Ok(0)
        }
        Err(e) if !explicit && e.to_string().starts_with("cannot reach") => {
            on_store(dir, Command::Member { op, api: None })
        }
        Err(e) => Err(e),
    }
}

fn with_machine<M: Describe>(dir: &Path, store: Store, cmd: Command) -> Result<i32> {
    if let Command::Verify = cmd {
        return verify::<M>(dir, store);
    }
    if let Command::Repair { dry_run } = cmd {
        return repair::<M>(dir, store, dry_run);
    }
    store.integrity_check()?;
    let mut replica = Replica::open_checked(dir, store, M::default())?;
    if matches!(cmd, Command::Member { .. } | Command::Append(_))
        && chorus_core::storage::Storage::own_chain_elsewhere(replica.store())
    {
        bail!(
            "this directory's key may have signed events its store does not hold (it ran as a \
             light node in memory, or as a light node of an earlier build): writing offline \
             could reuse a sequence number, which excludes every later event of this key. \
             Start `chorus node` on it until its peers have confirmed its own chain (its \
             status says writes_open: true), then write through it or offline"
        );
    }
    match cmd {
        Command::Member { op, .. } => member(&mut replica, op),
        Command::Append(a) => append(&mut replica, a),
        Command::Log(a) => log(&replica, a),
        Command::State { json } => state(&replica, json),
        Command::Export(a) => export(&replica, a),
        Command::Init(_)
        | Command::Key
        | Command::Import(_)
        | Command::Verify
        | Command::Repair { .. }
        | Command::Node(_)
        | Command::Join { .. }
        | Command::Status { .. }
        | Command::Snapshot { .. }
        | Command::Swarm(_)
        | Command::Sim { .. }
        | Command::Model { .. } => unreachable!("dispatched in run"),
    }
}

fn init(dir: &Path, a: InitArgs) -> Result<i32> {
    let machine_id = match a.machine {
        MachineArg::Kairos => Kairos3Machine.id(),
        MachineArg::Kairos2 => Kairos2Machine.id(),
        MachineArg::Kairos1 => KairosMachine.id(),
        MachineArg::Counter => CounterMachine.id(),
    };
    let readers = a
        .readers
        .iter()
        .map(|k| {
            k.parse::<AuthorId>()
                .map(|k| serde_bytes::ByteBuf::from(k.0.to_vec()))
                .map_err(|e| anyhow::anyhow!("--reader {k}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let body = |k: &chorus_core::crypto::Keypair| {
        let mut b = Genesis::new_body(&a.name, k.author(), machine_id);
        if a.private {
            b.access = Some(chorus_core::genesis::AccessParams {
                rule: chorus_core::genesis::ACCESS_MEMBERS_1.into(),
                readers: readers.clone(),
            });
        }
        b.checkpoint_interval = a.checkpoint_interval;
        if matches!(a.order, OrderArg::Final) {
            b.order = Some(chorus_core::genesis::ORDER_FINAL_2.into());
            if a.quorum != chorus_core::genesis::QUORUM_TWO_THIRDS {
                b.finality = Some(chorus_core::genesis::FinalityParams { quorum: a.quorum });
            }
        }
        b
    };
    let (id, key) = match a.machine {
        MachineArg::Kairos => {
            let r = Replica::init(dir, body, Kairos3Machine)?;
            (r.timeline().genesis_id(), r.key().author())
        }
        MachineArg::Kairos2 => {
            let r = Replica::init(dir, body, Kairos2Machine)?;
            (r.timeline().genesis_id(), r.key().author())
        }
        MachineArg::Kairos1 => {
            let r = Replica::init(dir, body, KairosMachine)?;
            (r.timeline().genesis_id(), r.key().author())
        }
        MachineArg::Counter => {
            let r = Replica::init(dir, body, CounterMachine)?;
            (r.timeline().genesis_id(), r.key().author())
        }
    };
    let order = match a.order {
        OrderArg::Final => chorus_core::genesis::ORDER_FINAL_2,
        OrderArg::LcCid => chorus_core::genesis::ORDER_LC_CID_1,
    };
    let access = if a.private {
        "private: members only"
    } else {
        "public"
    };
    eprintln!(
        "created timeline {:?} in {} (machine {machine_id}, order {order}, {access}); admin and anchor: {key}",
        a.name,
        dir.display()
    );
    println!("{id}");
    Ok(0)
}

fn member<M: Describe>(r: &mut Replica<M>, op: MemberCmd) -> Result<i32> {
    let parse = |k: &str| k.parse::<AuthorId>().map_err(|e| anyhow::anyhow!(e));
    let op = match op {
        MemberCmd::Add { key, role } => MemberOp::Add(
            parse(&key)?,
            match role {
                RoleArg::Anchor => Role::Anchor,
                RoleArg::Writer => Role::Writer,
            },
        ),
        MemberCmd::Remove { key } => MemberOp::Remove(parse(&key)?),
        MemberCmd::VoteRemove { key } => return vote(r, VoteOp::Remove(parse(&key)?)),
        MemberCmd::VoteRestore { key } => return vote(r, VoteOp::Restore(parse(&key)?)),
    };
    if r.key().author() != r.timeline().membership().admin() {
        bail!(
            "only the admin ({}) can change membership; this node is {}",
            r.timeline().membership().admin(),
            r.key().author()
        );
    }
    let ev = r.append(kind::MEMBER, op.to_body())?;
    println!("{}", ev.id());
    Ok(0)
}

/// `chorus member vote-remove|vote-restore` on the store: this node's member votes.
fn vote<M: Describe>(r: &mut Replica<M>, vote: VoteOp) -> Result<i32> {
    if !r.timeline().genesis().is_final_order() {
        bail!(
            "committee votes need a final/1 or final/2 timeline (this one orders by lc-cid/1, where only the admin changes membership)"
        );
    }
    let ev = r.append(kind::VOTE, vote.to_body())?;
    println!("{}", ev.id());
    Ok(0)
}

/// JSON → IPLD for `--json` bodies.
fn latest_stimulus<M: Machine>(r: &Replica<M>) -> Result<Option<EventId>> {
    let order: Vec<EventId> = r.timeline().order().collect();
    for id in order.iter().rev().take(100_000) {
        if r.timeline().load(id, r.store())?.kind == kind::STIMULUS {
            return Ok(Some(*id));
        }
    }
    Ok(None)
}

fn append<M: Describe>(r: &mut Replica<M>, a: AppendArgs) -> Result<i32> {
    let re = match (&a.re, a.kind == kind::INTENT) {
        (Some(c), _) => Some(
            c.parse::<EventId>()
                .map_err(|e| anyhow::anyhow!("--re: {e}"))?,
        ),
        (None, true) => latest_stimulus(r)?,
        (None, false) => None,
    };
    let body_for = |i: u64| -> Result<Ipld> {
        if let Some(j) = &a.json {
            return json_to_ipld(serde_json::from_str(j).context("--json is not valid JSON")?);
        }
        let text = a
            .text
            .clone()
            .unwrap_or_default()
            .replace("{i}", &i.to_string());
        Ok(if a.kind == kind::INTENT {
            Intent {
                re,
                emissary: a.emissary.clone(),
                text: Some(text),
                ..Default::default()
            }
            .to_ipld()
        } else {
            // A stimulus, or any other kind with a text body (the same map).
            Stimulus::text(text).to_ipld()
        })
    };
    if a.text.is_none() && a.json.is_none() {
        bail!("give the event's TEXT or --json BODY");
    }
    let batch = a.batch.max(1);
    let stdout = std::io::stdout();
    let mut i = 0;
    while i < a.count {
        let n = batch.min(a.count - i);
        let items = (i..i + n)
            .map(|j| Ok((a.kind.clone(), body_for(j)?)))
            .collect::<Result<Vec<_>>>()?;
        let evs = r.append_batch(items)?;
        // Durable now: acknowledge.
        let mut out = stdout.lock();
        for ev in evs {
            writeln!(out, "{}", ev.id())?;
        }
        out.flush()?;
        i += n;
    }
    Ok(0)
}

fn log<M: Describe>(r: &Replica<M>, a: LogArgs) -> Result<i32> {
    let tl = r.timeline();
    let start = match &a.from {
        Some(c) => {
            let id = c
                .parse::<EventId>()
                .map_err(|e| anyhow::anyhow!("--from: {e}"))?;
            tl.position_of(&id)
                .with_context(|| format!("{id} is not in this timeline"))?
        }
        None => 0,
    };
    let limit = if a.limit == 0 { usize::MAX } else { a.limit };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for (pos, id) in tl.order().enumerate().skip(start).take(limit) {
        let ev = tl.load(&id, r.store())?;
        let excluded = tl.is_excluded(&id);
        if a.json {
            writeln!(out, "{}", event_json(r.timeline(), pos, &ev))?;
        } else {
            writeln!(
                out,
                "{pos:>6} lc={:<5} {} {} {:<9} {}{}",
                ev.lamport,
                id,
                ev.author.fmt_short(),
                ev.kind,
                if excluded { "[excluded] " } else { "" },
                event_line(&ev)
            )?;
        }
    }
    Ok(0)
}

fn state<M: Describe>(r: &Replica<M>, as_json: bool) -> Result<i32> {
    crate::show::print_state(&state_json(r.timeline()), as_json)
}

fn export<M: Describe>(r: &Replica<M>, a: ExportArgs) -> Result<i32> {
    let tl = r.timeline();
    let mut progress = Progress::new("export", Some(tl.len() as u64));
    let mut n = 0u64;
    if let Some(path) = &a.car {
        let f = File::create(path).with_context(|| path.display().to_string())?;
        let mut w = archive::CarWriter::new(BufWriter::new(f), &tl.heads())?;
        for ev in r.store().ordered_events() {
            w.write(&ev?)?;
            n += 1;
            progress.add(1);
        }
        w.finish()?
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
    } else if let Some(path) = &a.jsonl {
        let f = File::create(path).with_context(|| path.display().to_string())?;
        let mut w = BufWriter::new(f);
        for ev in r.store().ordered_events() {
            archive::write_jsonl_line(&mut w, &ev?)?;
            n += 1;
            progress.add(1);
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    progress.finish();
    eprintln!("exported {n} events");
    Ok(0)
}

fn import(dir: &Path, a: ImportArgs) -> Result<i32> {
    let store_path = dir.join(STORE_FILE);
    let machine = if store_path.exists() {
        Store::open(&store_path)?.machine_id().to_string()
    } else {
        // A fresh directory takes the timeline from the file's genesis.
        let mut found = None;
        for item in crate::archive_file::open(&a.file)? {
            if let Ok(ev) = item?.check()
                && ev.kind == kind::GENESIS
            {
                found = Some(ev);
                break;
            }
        }
        let g = found.context("the data directory is empty and the file holds no valid genesis")?;
        let m = Genesis::from_event(&g)?.body.machine;
        machines::create_from_genesis(dir, g)?;
        eprintln!("created a replica of timeline from {}", a.file.display());
        m
    };
    struct Import<'a>(&'a Path, ImportArgs);
    impl WithMachine for Import<'_> {
        type Output = Result<i32>;
        fn run<M: Describe>(self) -> Result<i32> {
            import_into::<M>(self.0, self.1)
        }
    }
    machines::dispatch(&machine, Import(dir, a))?
}

fn import_into<M: Describe>(dir: &Path, a: ImportArgs) -> Result<i32> {
    let mut r = Replica::open(dir, M::default())?;
    let total = chorus_store::import::import(
        &mut r,
        crate::archive_file::open(&a.file)?,
        &mut Stages::default(),
    )?;
    println!(
        "new {} duplicate {} pending {} rejected {}",
        total.new,
        total.duplicate,
        total.pending,
        total.rejected_total()
    );
    for (code, n) in &total.rejected {
        println!("  rejected {code}: {n}");
    }
    for (_, why) in total.rejected_examples.iter().take(20) {
        println!("  - {why}");
    }
    if total.pending > 0 {
        println!(
            "  pending events wait for parents that are not in this replica (kept, applied when they arrive):"
        );
        for id in r.timeline().wanted().iter().take(10) {
            println!("  - missing {id}");
        }
    }
    Ok(if a.strict && total.rejected_total() > 0 {
        3
    } else {
        0
    })
}

/// Re-verifies everything from the bytes (`chorus_store::audit`): block hashes, canonical
/// encoding and signatures of every event, then a replay from genesis that must reproduce the
/// order, the heads, every stored checkpoint and the stored state.
fn verify<M: Describe>(dir: &Path, store: Store) -> Result<i32> {
    match chorus_store::audit::verify::<M>(dir, store, &mut Stages::default())? {
        Ok(v) => {
            println!(
                "verify OK: {} events, {} signatures, {} checkpoints checked, {} pending, \
                 state_hash {}",
                v.events,
                v.events,
                v.checkpoints,
                v.pending,
                hex::encode(v.state_hash)
            );
            Ok(0)
        }
        Err(m) => {
            println!("verify FAILED: {m}");
            Ok(1)
        }
    }
}

/// `chorus repair`: see `chorus_store::quarantine`. The quarantined blocks are written to a
/// CAR file (roots: the refused events) and synced before the store changes.
fn repair<M: Describe>(dir: &Path, store: Store, dry_run: bool) -> Result<i32> {
    use chorus_store::quarantine::Reason;
    store.integrity_check()?;
    let plan = store.quarantine_plan()?;
    if plan.is_empty() {
        println!("nothing to repair: every stored event passes the checks a peer runs");
        return Ok(0);
    }
    let own = chorus_store::replica::read_key(dir)?.map(|k| k.author());
    let mut by_author: BTreeMap<String, u64> = BTreeMap::new();
    let mut roots = vec![];
    for q in &plan.events {
        let who = match q.author {
            Some(a) if Some(a) == own => "this node's key".to_string(),
            Some(a) => a.to_string(),
            None => "unknown author".to_string(),
        };
        *by_author.entry(who).or_insert(0) += 1;
        match &q.reason {
            Reason::Refused(e) => {
                roots.push(q.key.1);
                println!("refused   {} (lc {}): {e}", q.key.1, q.key.0);
            }
            Reason::DependsOn(p) => println!("dependent {} (lc {}): parent {p}", q.key.1, q.key.0),
        }
    }
    println!(
        "{} event(s) to quarantine ({} refused, the rest depend on them), by author: {by_author:?}",
        plan.events.len(),
        roots.len()
    );
    if dry_run {
        println!("dry run: nothing changed");
        return Ok(0);
    }
    // The file is the only copy once the store lets go: it, its directory and the data
    // directory are synced before the store changes.
    let qdir = dir.join("quarantine");
    std::fs::create_dir_all(&qdir).with_context(|| qdir.display().to_string())?;
    let path = qdir.join(format!("{}.car", roots[0]));
    let f = File::create(&path).with_context(|| path.display().to_string())?;
    let mut w = archive::CarWriter::new(BufWriter::new(f), &roots)?;
    for q in &plan.events {
        use chorus_core::timeline::BlockSource;
        let block = store
            .get_block(&q.key.1)
            .with_context(|| format!("reading block {}", q.key.1))?;
        w.write_block(&q.key.1, &block)?;
    }
    w.finish()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    File::open(&qdir)?.sync_all()?;
    File::open(dir)?.sync_all()?;
    store.quarantine(&plan)?;
    drop(store);
    let mut replica = Replica::open(dir, M::default())?;
    replica.rewrite_membership_mirror()?;
    println!(
        "moved to {}; the store opens again: {} events, state_hash {}",
        path.display(),
        replica.timeline().len(),
        hex::encode(replica.timeline().state_hash())
    );
    println!(
        "consequence: the quarantined events are not in the timeline (their blocks stay in the \
         file above; re-append what you need within the bounds). This node's key signs its \
         next event with the first quarantined sequence number again: no peer accepted the \
         refused event, so none holds a chain through it, and this is no equivocation."
    );
    Ok(0)
}

/// `chorus model fetch|path`.
fn model(cmd: crate::ModelCmd) -> Result<i32> {
    match cmd {
        crate::ModelCmd::Fetch => {
            let p = chorus_llm::model::ensure_default()?;
            println!("{}", p.display());
        }
        crate::ModelCmd::Path => println!("{}", chorus_llm::model::default_path().display()),
    }
    Ok(0)
}
