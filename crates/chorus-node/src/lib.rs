//! # chorus-node
//!
//! The runtime of one Chorus node: tokio tasks and one actor thread wired by bounded channels.
//!
//! ```text
//!  libp2p swarm task ──NetEvent──▶ forwarder ──┐
//!  (chorus-net)      ◀──NetCommand── actor     │ NodeMsg (bounded, NODE_QUEUE)
//!  axum API ──────────ApiRequest───────────────┤
//!  ticker (TICK) ──────────────────────────────┘──▶ actor thread: an I/O shell around
//!                                       chorus-core's NodeState (every protocol decision)
//!                                       over Local (timeline + redb store + key)
//! ```
//!
//! Shutdown (SIGINT/SIGTERM, or the future given to [`run`]): the API stops taking requests,
//! the actor finishes its turn (an in-flight commit completes), then the swarm stops.

pub mod access;
pub mod actor;
pub mod advertise;
pub mod blocks;
pub mod bootstrap;
pub mod catch_up;
pub mod describe;
pub mod election;
pub mod emissary;
pub mod feed;
pub mod handle;
pub mod http;
pub mod machines;
pub mod pages;
pub mod payloads;
pub mod status;
pub mod telemetry;
pub mod write;

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::{Context, Result, bail};
use chorus_core::{SignedEvent, event::kind, sync::SyncRequest, sync::SyncResponse};
use chorus_net::{Addr, NetCommand, NetConfig, NetEvent};
use chorus_store::Replica;
use tokio::sync::mpsc;

use crate::{
    actor::{Actor, NODE_QUEUE, NodeMsg, TICK},
    describe::Describe,
};

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub listen: Vec<Addr>,
    pub bootstrap: Vec<Addr>,
    /// Addresses announced to peers besides the listen addresses (`--external-address`).
    pub external: Vec<Addr>,
    /// Origins whose web pages may call the API from a browser (`--cors-origin`; `*`: any).
    pub cors_origins: Vec<String>,
    /// Where the local HTTP API listens (`None`: no API).
    pub api: Option<SocketAddr>,
    /// Gateway requests a minute per client address (0: no limit; `http::ratelimit`).
    pub gateway_rate: u32,
    /// Where `/metrics` is served alone, without a token (`--metrics-listen`; `None`: only
    /// on the API).
    pub metrics: Option<SocketAddr>,
    /// Light node: not a replica (no provider record, serves no blocks, writes through full
    /// nodes). Give it a `Replica::open_light` (on disk: restarts from its own checkpoint)
    /// or a `Replica::in_memory` (prunes behind the settled horizon, catches up at each
    /// start).
    pub light: bool,
    /// Where to write the API's bound address while the node runs (removed at exit).
    pub api_addr_file: Option<std::path::PathBuf>,
    /// Bearer token that API writes must carry. Required when the API is not on loopback,
    /// unless `api_open`.
    pub api_token: Option<String>,
    /// Serve an API that is not on loopback without a write token: anyone who reaches it can
    /// write. Only for networks the operator closes itself (the tests' network namespaces).
    pub api_open: bool,
    /// Emissaries to run beside the node.
    pub emissaries: Vec<emissary::EmissaryConfig>,
    /// Heartbeats while this node's member key has events to cover (see
    /// `chorus_core::proto::node::Config::heartbeat_ms`); `None`: never.
    pub heartbeat_ms: Option<u64>,
    /// Serve this certified snapshot's state at once while the history replays (`bootstrap`);
    /// only for a node that holds no final position yet.
    pub from_snapshot: Option<cid::Cid>,
}

/// The git commit this build comes from (`build.rs`; "unknown" outside a clone).
pub const COMMIT: &str = env!("CHORUS_COMMIT");

/// The default heartbeat interval of a node (`chorus node --heartbeat-ms`).
pub const DEFAULT_HEARTBEAT_MS: u64 = 2_000;

/// How long `chorus join` waits for the peer.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the node until `shutdown` resolves; returns the replica after the last commit.
pub async fn run<M: Describe>(
    replica: Replica<M>,
    cfg: NodeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<Replica<M>> {
    // Before anything listens or dials: a refused configuration touches no network.
    if let Some(addr) = cfg.api
        && !addr.ip().is_loopback()
        && cfg.api_token.is_none()
    {
        if !cfg.api_open {
            bail!(
                "the API on {addr} is not loopback and has no write token: anyone who reaches \
                 it could write. Give a token with --api-token-env VAR, bind the API to \
                 loopback, or, on a network you close yourself, pass --api-open"
            );
        }
        eprintln!(
            "warning: the API on {addr} is not loopback and has no write token (--api-open): \
             anyone who reaches it can write"
        );
    }
    if let Some(most) = M::EMISSARIES_PER_AUTHOR
        && cfg.emissaries.len() > most
    {
        bail!(
            "{} emissaries configured, and the timeline's machine ({}) registers at most {most} \
             for one node key: run the others on another node",
            cfg.emissaries.len(),
            M::default().id()
        );
    }
    let genesis = replica.timeline().genesis_id();
    let genesis_body = replica.timeline().genesis().clone();
    let final_order = replica.timeline().genesis().is_final_order();
    // A snapshot only for a node that has no final prefix yet: one that has replayed serves
    // its own.
    let from_snapshot = match cfg.from_snapshot {
        Some(_) if !final_order => {
            bail!("--from-snapshot: this timeline orders by lc-cid/1, which certifies no state")
        }
        Some(_) if cfg.light => bail!(
            "--from-snapshot: full nodes only for now (a light node keeps no checkpoints to \
             compare its replay with, and restarting a light node from a snapshot is not built)"
        ),
        Some(root)
            if replica
                .timeline()
                .finality()
                .is_some_and(|f| f.final_positions > 0) =>
        {
            println!("snapshot {root} not used: this node already holds a final prefix");
            None
        }
        other => other,
    };
    let private = replica.timeline().genesis().is_private();
    let certified = blocks::Certified::default();
    // A light node holds no payloads (it fetches them when asked).
    let payload_dir = match cfg.light {
        true => None,
        false => Some(
            chorus_store::payloads::PayloadDir::open(replica.dir()).with_context(|| {
                format!(
                    "opening the payload directory under {}",
                    replica.dir().display()
                )
            })?,
        ),
    };
    let blocks: std::sync::Arc<dyn chorus_net::bitswap::BlockSource> =
        std::sync::Arc::new(blocks::StoreBlocks {
            store: replica.store().reader(),
            certified: certified.clone(),
            payloads: payload_dir.clone(),
        });
    let net = chorus_net::spawn(NetConfig {
        seed: replica.key().seed(),
        listen: cfg.listen.clone(),
        bootstrap: cfg.bootstrap.clone(),
        genesis: Some(genesis),
        replica: !cfg.light,
        members_only: access::allowed(replica.timeline()),
        external: cfg.external.clone(),
        blocks: Some(blocks.clone()),
        bitswap: Default::default(),
    })?;
    println!("peer_id {}", net.peer_id);
    println!("timeline {genesis}");
    let (node_tx, node_rx) = mpsc::channel(NODE_QUEUE);

    let mut net_events = net.events;
    let fwd = node_tx.clone();
    tokio::spawn(async move {
        while let Some(ev) = net_events.recv().await {
            if fwd.send(NodeMsg::Net(Box::new(ev))).await.is_err() {
                break;
            }
        }
    });
    let tick = node_tx.clone();
    tokio::spawn(async move {
        let mut t = tokio::time::interval(TICK);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            if tick.send(NodeMsg::Tick).await.is_err() {
                break;
            }
        }
    });

    let feed = feed::Feed::default();
    let node = handle::NodeHandle::new(node_tx.clone(), feed.clone());
    let telemetry = telemetry::Telemetry::default();
    telemetry::spawn_round_trips(node.clone(), replica.key().author(), telemetry.clone());
    let mut emissaries = vec![];
    for e in &cfg.emissaries {
        let backend = chorus_llm::build(&e.backend)
            .with_context(|| format!("emissary {:?}: backend", e.name))?;
        println!("emissary {} on {}", e.name, backend.name());
        let model_seconds = telemetry.model_of(&e.name);
        emissaries.push(emissary::spawn(
            e.clone(),
            backend,
            node.clone(),
            model_seconds,
        ));
    }
    let (payloads, indexed) = payloads::Payloads::new(
        payload_dir,
        chorus_core::payload::DEFAULT_COPIES,
        net.peer_id,
        net.bitswap.clone(),
    );
    tokio::spawn(payloads::run(
        payloads.clone(),
        replica.store().reader(),
        indexed,
    ));
    let actor = Actor::new(
        replica,
        net.commands.clone(),
        net.peer_id,
        cfg.light,
        cfg.heartbeat_ms,
    )
    .with_feed(feed)
    .with_certified(certified.clone())
    .with_payloads(payloads.clone());
    let actor = match from_snapshot {
        Some(root) => {
            bootstrap::spawn::<M, _>(
                root,
                genesis,
                genesis_body.clone(),
                net.bitswap.clone(),
                node_tx.clone(),
                NodeMsg::Bootstrapped,
            );
            actor.with_bootstrap(root)
        }
        None => actor,
    };
    let actor = std::thread::Builder::new()
        .name("chorus-node".into())
        .spawn(move || actor.run(node_rx))
        .context("starting the node actor")?;

    // Both HTTP servers stop on one signal.
    let (http_stop_tx, http_stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = http_stop_rx.clone();
        async move {
            let _ = rx.changed().await;
        }
    };
    let api_listener = match cfg.api {
        Some(addr) => Some(bind(addr, "the API", "--api or CHORUS_API_LISTEN").await?),
        None => None,
    };
    let api = http::Api::new(http::ApiShared {
        node: node.clone(),
        gateway: Default::default(),
        telemetry: telemetry.clone(),
        emissaries: std::sync::Arc::new(emissaries),
        token: cfg.api_token.as_deref().map(std::sync::Arc::from),
        status: Default::default(),
        escalates: M::ESCALATES,
        final_order,
        loopback: match &api_listener {
            Some(l) => l.local_addr()?.ip().is_loopback(),
            None => true,
        },
        private,
        streams: http::stream_slots(),
        exports: http::export_slots(),
        keys: Default::default(),
        rate: std::sync::Arc::new(http::ratelimit::GatewayRate::per_minute(cfg.gateway_rate)),
        bitswap: net.bitswap.clone(),
        blocks: Some(blocks),
        certified,
        payloads,
    });
    let mut http_tasks = vec![];
    if let Some(addr) = cfg.metrics {
        let listener = bind(addr, "the metrics", "--metrics-listen").await?;
        println!("metrics http://{}/metrics", listener.local_addr()?);
        let loopback = listener.local_addr()?.ip().is_loopback();
        let app = http::metrics_router(api.clone(), loopback);
        http_tasks.push(tokio::spawn(http::serve::serve(listener, app, stopped())));
    }
    if let Some(listener) = api_listener {
        let bound = listener.local_addr()?;
        println!("api http://{bound}");
        if let Some(f) = &cfg.api_addr_file {
            std::fs::write(f, format!("{bound}\n"))
                .with_context(|| format!("writing {}", f.display()))?;
        }
        if cfg.cors_origins.iter().any(|o| o == "*") && cfg.api_token.is_none() {
            anyhow::bail!(
                "--cors-origin '*' lets every web page a user opens call this API; without a \
                 token (CHORUS_API_TOKEN) any page could write: give a token, or name the \
                 origins"
            );
        }
        let app = http::router(api);
        let app = match http::cors::layer(&cfg.cors_origins)? {
            Some(cors) => app.layer(cors),
            None => app,
        };
        http_tasks.push(tokio::spawn(http::serve::serve(listener, app, stopped())));
    }

    shutdown.await;
    tracing::info!("shutting down");
    let _ = http_stop_tx.send(true);
    for t in http_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let _ = node_tx.send(NodeMsg::Shutdown).await;
    drop(node_tx);
    let replica = tokio::task::spawn_blocking(move || actor.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the node actor panicked"))?;
    let _ = net.commands.send(NetCommand::Shutdown).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), net.task).await;
    if let Some(f) = &cfg.api_addr_file {
        let _ = std::fs::remove_file(f);
    }
    Ok(replica)
}

/// A listener on `addr` for `what`, or an error that says how to choose another address.
async fn bind(addr: SocketAddr, what: &str, option: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "binding {what} on {addr} (another node on this machine? give this one another \
             address with {option}, port 0 for a free one)"
        )
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let term = async {
        #[cfg(unix)]
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
            return;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Fetches the genesis of the timeline a peer replicates (`chorus join`): asks the peer for
/// its summary, then for the genesis block it names, and checks the block is that genesis.
/// Only the peer the address names (`…/p2p/<id>`) is asked: any other the network meets on the
/// way (Kademlia, identify) could name another timeline, or answer with nothing. An address
/// without `/p2p/<id>` names no identity: then the first peer that answers is believed, as the
/// user asked. (A joiner is no member yet, so a peer flooded by strangers may refuse it as
/// "rate limited" for a moment: the join then fails and says so.)
pub async fn fetch_genesis(peer_addr: Addr, seed: [u8; 32]) -> Result<SignedEvent> {
    let named = match peer_addr.iter().last() {
        Some(chorus_net::Protocol::P2p(p)) => Some(p),
        _ => None,
    };
    let mut net = chorus_net::spawn(NetConfig {
        seed,
        listen: vec![],
        bootstrap: vec![peer_addr.clone()],
        genesis: None,
        replica: false,
        members_only: None,
        external: vec![],
        blocks: None,
        bitswap: Default::default(),
    })?;
    let work = async {
        let mut wanted = None;
        while let Some(ev) = net.events.recv().await {
            match ev {
                NetEvent::PeerUp(peer) if named.is_none_or(|n| n == peer) => {
                    net.commands
                        .send(NetCommand::Request {
                            peer,
                            req: SyncRequest::Summary,
                        })
                        .await?;
                }
                NetEvent::Response { peer, resp, .. } if named.is_none_or(|n| n == peer) => {
                    match resp {
                        SyncResponse::Summary(s) => {
                            wanted = Some(s.genesis);
                            net.commands
                                .send(NetCommand::Request {
                                    peer,
                                    req: SyncRequest::Want {
                                        ids: vec![s.genesis],
                                    },
                                })
                                .await?;
                        }
                        SyncResponse::Blocks(b) => {
                            let block = b.blocks.first().context("the peer sent no genesis")?;
                            let ev = SignedEvent::decode(block)?;
                            if Some(ev.id()) != wanted || ev.kind != kind::GENESIS {
                                bail!("the peer sent a block that is not the genesis it named");
                            }
                            return Ok(ev);
                        }
                        SyncResponse::Refused { reason } => bail!("the peer refused: {reason}"),
                        SyncResponse::Stored { .. } => bail!("the peer answered with Stored"),
                    }
                }
                NetEvent::RequestFailed { peer, error, .. } if named.is_none_or(|n| n == peer) => {
                    bail!("request failed: {error}")
                }
                _ => {}
            }
        }
        bail!("the network task stopped")
    };
    let r = tokio::time::timeout(JOIN_TIMEOUT, work)
        .await
        .with_context(|| format!("no answer from {peer_addr} within {JOIN_TIMEOUT:?}"))?;
    let _ = net.commands.send(NetCommand::Shutdown).await;
    r
}
