//! `chorus snapshot`: show and check certified snapshots (`snapshot/1`,
//! docs/design/ipfs.md "Certified snapshots") through a running node.
//!
//! `verify` fetches every block of a snapshot by CID through the node's `GET /v1/blocks/{cid}`
//! (the node's own blocks, or Bitswap from its peers and the providers the DHT names) and runs
//! `chorus_core::snapshot::verify` here, in this process: the genesis is fetched by the
//! timeline's CID (its bytes checked against it), the committee of the certificate's epoch is
//! the genesis's for epoch 0 and, for a later epoch, the one the node's own newest certificate
//! names when it is of that epoch (your own node's view, derived from its own replay). What the
//! serving peers say about any of it is checked, never taken.

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
pub fn verify(dir: &Path, root: Option<String>, api: Option<String>) -> Result<i32> {
    let api = crate::mesh::api_of(dir, api)?;
    let root: Cid = match root {
        Some(r) => r.parse().with_context(|| format!("{r:?} is not a CID"))?,
        None => http::get(&api, "/v1/snapshot")?["root"]
            .as_str()
            .context("the node's /v1/snapshot names no root")?
            .parse()?,
    };
    let status = http::get(&api, "/v1/status")?;
    let timeline: EventId = status["timeline"]
        .as_str()
        .context("the node's status names no timeline")?
        .parse::<Cid>()
        .map_err(|e| anyhow!("the node's timeline id: {e}"))
        .and_then(|c| EventId::from_cid(&c).map_err(|e| anyhow!("{e}")))?;
    let genesis_block = http::get_bytes(&api, &format!("/v1/blocks/{}", timeline.to_cid()))?;
    if EventId::of_block(&genesis_block) != timeline {
        bail!("the genesis block the node sent does not hash to the timeline's CID");
    }
    let genesis_ev = SignedEvent::decode(&genesis_block).context("the genesis block")?;
    let genesis = Genesis::from_event(&genesis_ev).context("the genesis block")?;
    // The node's own view of its newest certificate's epoch: its committee, from its replay.
    let own = http::get(&api, "/v1/finality/certificate")
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
    let task = Check {
        api: &api,
        root,
        timeline,
        genesis_ev,
        genesis,
        own,
    };
    machines::dispatch(&task.genesis.body.machine.clone(), task)?
}

struct Check<'a> {
    api: &'a str,
    root: Cid,
    timeline: EventId,
    genesis_ev: SignedEvent,
    genesis: Genesis,
    own: Option<(u32, Vec<AuthorId>)>,
}

impl WithMachine for Check<'_> {
    type Output = Result<i32>;

    fn run<M: Describe>(self) -> Result<i32> {
        // Epoch 0's committee, as a replica holding nothing but the genesis computes it.
        let fresh = Timeline::new(self.genesis_ev.clone(), M::default())
            .map_err(|e| anyhow!("the genesis: {e}"))?;
        let epoch0 = fresh.finality().map(|f| f.committee);
        let committee_of = |e: u32| -> Option<Vec<AuthorId>> {
            match (&self.own, e) {
                (_, 0) => epoch0.clone(),
                (Some((own, keys)), e) if *own == e => Some(keys.clone()),
                _ => None,
            }
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
                let hint = match e {
                    SnapshotError::UnknownEpoch(_) => {
                        " (a node that has replayed to that epoch knows its committee: ask through it with --api)"
                    }
                    _ => "",
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
        println!(
            "fetched     {} blocks, {} bytes, in {:.1} s",
            blocks.get(),
            bytes.get(),
            started.elapsed().as_secs_f64()
        );
        Ok(0)
    }
}
