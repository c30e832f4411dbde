//! `chorus snapshot`: show and check certified snapshots (`snapshot/1`,
//! docs/design/ipfs.md "Certified snapshots") through a running node.
//!
//! `verify` fetches every block of a snapshot by CID through a node's `GET /v1/blocks/{cid}`
//! (the node's own blocks, or Bitswap from its peers and the providers the DHT names) and runs
//! `chorus_core::snapshot::verify` here, in this process. Every block is checked against its
//! CID, every signature against the committee; what is trusted is the timeline and the
//! committee:
//! * through **your own node** (the one running on `--data-dir`, recognised by its key): its
//!   timeline, and the committee of its newest certificate's epoch (from its own replay); the
//!   genesis committee only while that epoch is 0;
//! * through **another node** (`--api`): the timeline you name (`--timeline`), and the genesis
//!   committee alone: under `final/2` the snapshot carries the handovers from it to the
//!   certificate's epoch, each checked against the committee reached so far; under `final/1`
//!   a certificate of a later epoch is refused as unknown. A quorum of a former committee
//!   could sign a false handover or certificate after it left (the long-range problem of
//!   every committee-signed checkpoint): check through a node you run to rule that out.
//!
//! Under `final/2` the handover chain is always walked (from the genesis committee), through
//! your own node too; the committee that walk reaches must be the certificate's.

use std::{cell::Cell, path::Path, time::Instant};

use anyhow::{Context, Result, anyhow, bail};
use chorus_core::{
    AuthorId, EventId, SignedEvent, Timeline,
    genesis::Genesis,
    snapshot::{self, SnapshotError},
};
use chorus_node::{
    describe::Describe,
    machines::{self, WithMachine},
};
use ipld_core::cid::Cid;

use crate::http;

/// `chorus snapshot show`: the newest snapshot the node serves.
pub fn show(dir: &Path, api: Option<String>) -> Result<i32> {
    let api = crate::mesh::api_of(dir, api)?;
    let s = http::get(&api, "/v1/snapshot")?;
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(0)
}

/// `chorus snapshot verify [ROOT]`: checks the snapshot `root` (default: the node's newest).
pub fn verify(
    dir: &Path,
    root: Option<String>,
    timeline: Option<String>,
    api: Option<String>,
) -> Result<i32> {
    let own = api.is_none();
    if !own && timeline.is_none() {
        bail!(
            "through another node (--api), name the timeline the snapshot must be of with \
             --timeline CID: that node's word for it is not taken"
        );
    }
    let api = crate::mesh::api_of(dir, api)?;
    let root: Cid = match root {
        Some(r) => r.parse().with_context(|| format!("{r:?} is not a CID"))?,
        None => http::get(&api, "/v1/snapshot")?["root"]
            .as_str()
            .context("the node's /v1/snapshot names no root")?
            .parse()?,
    };
    let status = http::get(&api, "/v1/status")?;
    let served = status["timeline"]
        .as_str()
        .context("the node's status names no timeline")?;
    let timeline: EventId = timeline
        .as_deref()
        .unwrap_or(served)
        .parse::<Cid>()
        .map_err(|e| anyhow!("the timeline id: {e}"))
        .and_then(|c| EventId::from_cid(&c).map_err(|e| anyhow!("the timeline id: {e}")))?;
    if served != timeline.to_string() {
        bail!("the node at {api} replicates {served}, not {timeline}");
    }
    let genesis_block = http::get_bytes(&api, &format!("/v1/blocks/{}", timeline.to_cid()))?;
    if EventId::of_block(&genesis_block) != timeline {
        bail!("the genesis block the node sent does not hash to the timeline's CID");
    }
    let genesis_ev = SignedEvent::decode(&genesis_block).context("the genesis block")?;
    let genesis = Genesis::from_event(&genesis_ev).context("the genesis block")?;
    // Your own node's view (never another's): its current epoch, and that epoch's committee
    // when its newest certificate is of it (built from its own replay).
    let known = if own {
        let now = status["finality"]["epoch"]
            .as_u64()
            .and_then(|e| u32::try_from(e).ok());
        let committee = http::get(&api, "/v1/finality/certificate")
            .ok()
            .and_then(|c| {
                let epoch = u32::try_from(c["epoch"].as_u64()?).ok()?;
                let keys = c["committee"]
                    .as_array()?
                    .iter()
                    .map(|k| k.as_str()?.parse::<AuthorId>().ok())
                    .collect::<Option<Vec<_>>>()?;
                Some((epoch, keys))
            });
        match (now, committee) {
            (Some(now), Some((e, keys))) if e == now => Known::Committee(e, keys),
            (Some(now), _) => Known::Epoch(now),
            (None, _) => Known::Genesis,
        }
    } else {
        Known::Genesis
    };
    let task = Check {
        api: &api,
        root,
        timeline,
        genesis_ev,
        genesis,
        known,
    };
    machines::dispatch(&task.genesis.body.machine.clone(), task)?
}

struct Check<'a> {
    api: &'a str,
    root: Cid,
    timeline: EventId,
    genesis_ev: SignedEvent,
    genesis: Genesis,
    known: Known,
}

/// What the checker knows of the committees.
enum Known {
    /// Nothing beyond the genesis: epoch 0's committee is trusted.
    Genesis,
    /// The timeline is at this epoch, whose committee is not known here: only epoch 0's, and
    /// only while it is 0.
    Epoch(u32),
    /// The timeline is at this epoch, and this is its committee.
    Committee(u32, Vec<AuthorId>),
}

impl WithMachine for Check<'_> {
    type Output = Result<i32>;

    fn run<M: Describe>(self) -> Result<i32> {
        // Epoch 0's committee, as a replica holding nothing but the genesis computes it.
        let fresh = Timeline::new(self.genesis_ev.clone(), M::default())
            .map_err(|e| anyhow!("the genesis: {e}"))?;
        let epoch0 = fresh.finality().map(|f| f.committee);
        // Only the epoch known to be in force: the own node's current one, or the genesis's
        // while no later one is known.
        let committee_of = |e: u32| -> Option<Vec<AuthorId>> {
            match &self.known {
                Known::Committee(now, keys) if *now == e => Some(keys.clone()),
                Known::Genesis | Known::Epoch(0) if e == 0 => epoch0.clone(),
                // Your own node is at another epoch: no committee of that one is trusted
                // (under final/2 a walked chain that ends there is refused too).
                Known::Committee(now, _) | Known::Epoch(now) if *now != e => Some(vec![]),
                _ => None,
            }
        };
        let now = match &self.known {
            Known::Committee(now, _) | Known::Epoch(now) => Some(*now),
            Known::Genesis => None,
        };
        let (blocks, bytes) = (Cell::new(0u64), Cell::new(0u64));
        let started = Instant::now();
        let get = |c: &Cid| {
            let b = http::get_bytes(self.api, &format!("/v1/blocks/{c}?timeout_ms=30000"))
                .map_err(|e| eprintln!("block {c}: {e:#}"))
                .ok()?;
            blocks.set(blocks.get() + 1);
            bytes.set(bytes.get() + b.len() as u64);
            if blocks.get() % 64 == 0 {
                eprintln!("fetched {} blocks ({} bytes)", blocks.get(), bytes.get());
            }
            Some(b)
        };
        let v = match snapshot::verify(
            &M::default(),
            self.timeline,
            &self.genesis,
            self.root,
            get,
            committee_of,
        ) {
            Ok(v) => v,
            Err(e) => {
                let hint = match (&e, now) {
                    (SnapshotError::UnknownEpoch(_), _) => " (a node that has replayed to that \
                        epoch knows its committee: ask through it with --api)"
                        .to_string(),
                    (SnapshotError::NotTheCommittee { epoch }, Some(now)) if *epoch != now => {
                        format!(
                            " (your node is at epoch {now}: a certificate of epoch {epoch} is \
                             not trusted through it)"
                        )
                    }
                    _ => String::new(),
                };
                bail!("snapshot {} refused: {e}{hint}", self.root);
            }
        };
        let c = &v.certificate;
        let quorum = self.genesis.finality_quorum().quorum(c.committee.len());
        println!("snapshot    {} verified", self.root);
        println!("timeline    {}", self.timeline);
        println!("positions   {} (last {})", c.att.positions, c.att.last);
        println!("state_hash  {}", hex::encode(c.att.state));
        println!(
            "certified   epoch {}, by {} of {} members (quorum {quorum})",
            c.epoch,
            c.by.len(),
            c.committee.len()
        );
        if self.genesis.has_handovers() {
            println!(
                "committee   of epoch {} reached from the genesis's through {} handovers",
                c.epoch, c.epoch
            );
        }
        println!(
            "fetched     {} blocks, {} bytes, in {:.1} s",
            blocks.get(),
            bytes.get(),
            started.elapsed().as_secs_f64()
        );
        Ok(0)
    }
}
