//! What a client sees while a node folds a late KAIROS event 10 000 positions back: the
//! latency of local appends and of status queries, probed open-loop (a probe every 25 ms,
//! whether or not the earlier ones were answered, so a blocked node shows as what it is).
//! Runs the node actor in-process (no network: the late block is handed to it as a sync
//! answer), once folding in one go (the behaviour before slices) and once in slices.
//!
//! `cargo run --release -p chorus-bench --bin fold-bench` (docs/benchmarks.md)

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use chorus_core::{
    SignedEvent, Timeline,
    crypto::Keypair,
    event::kind,
    genesis::Genesis,
    sync::{Blocks, SyncRequest, SyncResponse},
    testkit,
};
use chorus_kairos::KairosMachine;
use chorus_net::{NetEvent, Peer};
use chorus_node::actor::{Actor, ApiRequest, NODE_QUEUE, NodeMsg, TICK};
use chorus_store::Replica;
use tokio::sync::{mpsc, oneshot};

const HISTORY: usize = 10_000;
const PROBE_EVERY: Duration = Duration::from_millis(25);
const WINDOW: Duration = Duration::from_secs(16);

struct Run {
    append_ms: Vec<f64>,
    status_ms: Vec<f64>,
    /// From the late block's arrival to the first status that shows the state complete again.
    fold_s: Option<f64>,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

fn history(
    dir: &std::path::Path,
    late_key: &Keypair,
) -> Result<(Replica<KairosMachine>, SignedEvent)> {
    let late_author = late_key.author();
    let mut r = Replica::init(
        dir,
        |k| {
            let mut b = Genesis::new_body("fold-bench", k.author(), "kairos/1");
            b.writers
                .push(serde_bytes::ByteBuf::from(late_author.0.to_vec()));
            b
        },
        KairosMachine,
    )?;
    r.set_deferred_fold(true);
    for chunk in 0..HISTORY / 1_000 {
        let items = (0..1_000)
            .map(|i| {
                (
                    kind::STIMULUS.to_string(),
                    testkit::text(&format!("gpu {chunk} {i} the swarm keeps speaking")),
                )
            })
            .collect();
        r.append_batch(items)?;
    }
    r.fold()?;
    // Signed on a timeline holding only the genesis: lamport 1, it sorts before all of them.
    let g = r
        .timeline()
        .load(&r.timeline().genesis_id(), r.store())
        .context("genesis")?;
    let fresh = Timeline::new(g, KairosMachine)?;
    let late = fresh.sign_local(late_key, kind::STIMULUS, testkit::text("from the pi zero"))?;
    Ok((r, late))
}

fn run(sliced: bool) -> Result<Run> {
    let dir = tempfile::tempdir()?;
    let late_key = Keypair::from_seed([9; 32]);
    let (replica, late) = history(dir.path(), &late_key)?;
    let (net_tx, mut net_rx) = mpsc::channel(1 << 16);
    std::thread::spawn(move || while net_rx.blocking_recv().is_some() {});
    let (tx, rx) = mpsc::channel::<NodeMsg>(NODE_QUEUE);
    let mut actor = Actor::new(replica, net_tx, Peer::random(), false, None);
    if !sliced {
        actor = actor.fold_in_one_go();
    }
    let node = std::thread::spawn(move || actor.run(rx));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (tx, stop) = (tx.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                if tx.blocking_send(NodeMsg::Tick).is_err() {
                    break;
                }
            }
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()?;
    let out = rt.block_on(async {
        let arrived = Instant::now();
        tx.send(NodeMsg::Net(Box::new(NetEvent::Response {
            peer: Peer::random(),
            req: SyncRequest::Want {
                ids: vec![late.id()],
            },
            resp: SyncResponse::Blocks(Blocks {
                blocks: vec![serde_bytes::ByteBuf::from(late.bytes().to_vec())],
                next: None,
            }),
        })))
        .await?;
        let mut probes = vec![];
        let mut k = 0u64;
        while arrived.elapsed() < WINDOW {
            k += 1;
            let tx = tx.clone();
            probes.push(tokio::spawn(async move {
                let t = Instant::now();
                let (otx, orx) = oneshot::channel();
                let append = k.is_multiple_of(2);
                let msg = if append {
                    let items = vec![(
                        kind::STIMULUS.to_string(),
                        testkit::text(&format!("probe {k}")),
                    )];
                    let (wtx, wrx) = oneshot::channel();
                    tx.send(NodeMsg::Api(ApiRequest::Append { items, reply: wtx }))
                        .await
                        .ok()?;
                    wrx.await.ok()?.ok()?;
                    return Some((append, t.elapsed().as_secs_f64() * 1e3, None));
                } else {
                    NodeMsg::Api(ApiRequest::Status(otx))
                };
                tx.send(msg).await.ok()?;
                let v = orx.await.ok()?;
                // What `GET /v1/status` pays besides the actor: serializing the typed view.
                serde_json::to_string(&*v).ok()?;
                let done = v.folding.is_none() && v.events > HISTORY + 1;
                Some((
                    append,
                    t.elapsed().as_secs_f64() * 1e3,
                    Some((done, Instant::now())),
                ))
            }));
            tokio::time::sleep(PROBE_EVERY).await;
        }
        let mut r = Run {
            append_ms: vec![],
            status_ms: vec![],
            fold_s: None,
        };
        for p in probes {
            let Some((append, ms, status)) = p.await? else {
                continue;
            };
            if append {
                r.append_ms.push(ms);
            } else {
                r.status_ms.push(ms);
            }
            if let Some((true, at)) = status {
                let s = at.duration_since(arrived).as_secs_f64();
                r.fold_s = Some(r.fold_s.map_or(s, |x: f64| x.min(s)));
            }
        }
        anyhow::Ok(r)
    })?;
    stop.store(true, Ordering::Relaxed);
    tx.blocking_send(NodeMsg::Shutdown)?;
    drop(tx);
    let replica = node
        .join()
        .map_err(|_| anyhow::anyhow!("the actor panicked"))?;
    anyhow::ensure!(
        replica.timeline().contains(&late.id()),
        "the late event was ingested"
    );
    Ok(out)
}

fn main() -> Result<()> {
    println!(
        "| node folding a late KAIROS event {HISTORY} back | append p50 / p99 / max ms | status p50 / p99 / max ms | probes | fold done after s |"
    );
    println!("|---|---|---|---|---|");
    for sliced in [false, true] {
        let mut r = run(sliced)?;
        let (a50, a99, amax) = (
            percentile(&mut r.append_ms, 0.5),
            percentile(&mut r.append_ms, 0.99),
            percentile(&mut r.append_ms, 1.0),
        );
        let (s50, s99, smax) = (
            percentile(&mut r.status_ms, 0.5),
            percentile(&mut r.status_ms, 0.99),
            percentile(&mut r.status_ms, 1.0),
        );
        println!(
            "| {} | {a50:.1} / {a99:.1} / {amax:.1} | {s50:.1} / {s99:.1} / {smax:.1} | {} + {} | {} |",
            if sliced {
                "in slices of ≤ 10 ms (now)"
            } else {
                "in one go (before)"
            },
            r.append_ms.len(),
            r.status_ms.len(),
            r.fold_s
                .map_or("not within the window".into(), |s| format!("{s:.1}")),
        );
    }
    Ok(())
}
