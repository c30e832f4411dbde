//! The commands that read a data directory, run against the node that holds it: a running
//! node locks its store (redb), so `chorus state`, `log`, `verify` and `export` ask its HTTP
//! API instead (found through `DATA_DIR/api.addr`, token from `CHORUS_API_TOKEN`). A stale
//! `api.addr` (the node was killed) falls back to opening the store.

use std::{
    fs::File,
    io::{BufRead, BufReader, BufWriter, Read, Write},
    path::Path,
};

use anyhow::{Context, Result, bail};
use chorus_core::{EventId, archive};
use chorus_node::{
    describe::Describe,
    machines::{self, WithMachine},
};
use serde_json::Value;

use crate::{ExportArgs, LogArgs, http, progress::Progress, progress::Stages};

/// Whether an error says the node could not be reached at all (so the store may be free).
pub fn unreachable(e: &anyhow::Error) -> bool {
    e.to_string().starts_with("cannot reach")
}

/// `chorus state` through the node: `GET /v1/state`.
pub fn state(api: &str, json: bool) -> Result<i32> {
    let v = http::get(api, "/v1/state")?;
    crate::show::print_state(&v, json)
}

/// `chorus log` through the node: pages of `GET /v1/events` (each page starts at the last
/// event of the one before, which is skipped).
pub fn log(api: &str, a: &LogArgs) -> Result<i32> {
    let mut from = a.from.clone();
    let mut skip_first = false;
    let mut left = if a.limit == 0 {
        u64::MAX
    } else {
        a.limit as u64
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    while left > 0 {
        // Pages of 200: a page of events with long texts stays far below the client's bound on
        // an answer's size.
        let ask = left.saturating_add(u64::from(skip_first)).min(200);
        let path = match &from {
            Some(c) => format!("/v1/events?from={c}&limit={ask}"),
            None => format!("/v1/events?limit={ask}"),
        };
        let page = http::get(api, &path)?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        let fresh: Vec<&Value> = events.iter().skip(usize::from(skip_first)).collect();
        if fresh.is_empty() {
            break;
        }
        for e in &fresh {
            if a.json {
                writeln!(out, "{e}")?;
            } else {
                writeln!(
                    out,
                    "{:>6} lc={:<5} {} {} {:<9} {}{}",
                    e["pos"],
                    e["lc"].as_u64().unwrap_or(0),
                    e["cid"].as_str().unwrap_or("?"),
                    e["author"].as_str().unwrap_or("").get(..8).unwrap_or(""),
                    e["kind"].as_str().unwrap_or("?"),
                    if e["excluded"] == true {
                        "[excluded] "
                    } else {
                        ""
                    },
                    e["line"].as_str().unwrap_or("")
                )?;
            }
            left -= 1;
            if left == 0 {
                break;
            }
        }
        from = fresh
            .last()
            .and_then(|e| e["cid"].as_str())
            .map(String::from);
        skip_first = true;
        // Done at the end of the order (a light node's page skips what it forgot, so a short
        // page is no end).
        let total = page["total"].as_u64().unwrap_or(0);
        let last_pos = fresh.last().and_then(|e| e["pos"].as_u64()).unwrap_or(0);
        if last_pos + 1 >= total {
            break;
        }
    }
    out.flush()?;
    Ok(0)
}

/// Copies what is read into a file as it goes.
struct Tee<R, W> {
    r: R,
    w: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.r.read(buf)?;
        self.w.write_all(&buf[..n])?;
        Ok(n)
    }
}

fn events_header(s: &http::Stream) -> Result<u64> {
    s.header("chorus-events")
        .and_then(|v| v.parse().ok())
        .context("the node's export has no chorus-events header (an older node?)")
}

/// `chorus export` through the node: `GET /v1/export`, written to the file as it arrives; the
/// blocks are counted as they pass (a CAR is parsed on the way) and must be as many as the node
/// said, then the file is synced.
pub fn export(api: &str, a: &ExportArgs) -> Result<i32> {
    let (path, format) = match (&a.car, &a.jsonl) {
        (Some(p), _) => (p.as_path(), "car"),
        (None, Some(p)) => (p.as_path(), "jsonl"),
        (None, None) => bail!("give --car FILE or --jsonl FILE"),
    };
    // Written beside the target and renamed over it once whole and synced: an export that
    // fails leaves the file that was there (yesterday's backup) as it was.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = std::path::PathBuf::from(tmp);
    match export_to(api, &tmp, format) {
        Ok(code) => {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            Ok(code)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn export_to(api: &str, path: &Path, format: &str) -> Result<i32> {
    let s = http::get_stream(api, &format!("/v1/export?format={format}"))?;
    let total = events_header(&s)?;
    let f = File::create(path).with_context(|| path.display().to_string())?;
    let mut tee = Tee {
        r: s.body,
        w: BufWriter::new(f),
    };
    let mut progress = Progress::new("export", Some(total));
    let mut n = 0u64;
    if format == "car" {
        let reader = archive::CarReader::new(&mut tee).context("reading the node's export")?;
        for block in reader {
            block.context("reading the node's export")?;
            n += 1;
            progress.add(1);
        }
    } else {
        let mut lines = BufReader::new(&mut tee);
        let mut line = Vec::new();
        while lines
            .read_until(b'\n', &mut line)
            .context("reading the node's export")?
            > 0
        {
            line.clear();
            n += 1;
            progress.add(1);
        }
    }
    progress.finish();
    if n != total {
        bail!("the node's export ended after {n} of {total} events: nothing written");
    }
    tee.w
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
        .with_context(|| path.display().to_string())?;
    eprintln!("exported {n} events (from the running node at {api})");
    Ok(0)
}

/// `chorus verify` through the node: its CAR export is re-derived here from the bytes alone
/// (`chorus_store::audit::verify_archive`: every CID and signature, a replay from genesis with
/// the timeline's machine, heads = the archive's roots), and the replay's state hash must be
/// the one the node claims at those heads. What the node's own store holds beyond the events
/// (checkpoints, the stored state) is checked by `chorus verify` with the node stopped.
pub fn verify(api: &str) -> Result<i32> {
    // The node names no state hash while it folds in slices: ask again a few times.
    for attempt in 0..5 {
        let s = http::get_stream(api, "/v1/export?format=car")?;
        let Some(claimed) = s.header("chorus-state-hash").map(String::from) else {
            eprintln!(
                "the node's state is not folded over its stored events yet (a fold under way); \
                 asking again (attempt {})",
                attempt + 1
            );
            std::thread::sleep(std::time::Duration::from_secs(1));
            continue;
        };
        let machine = s
            .header("chorus-machine")
            .context("the node's export names no machine")?
            .to_string();
        struct Replay {
            body: Box<dyn Read + Send>,
        }
        impl WithMachine for Replay {
            type Output = Result<Result<chorus_store::audit::ArchiveVerified, String>>;
            fn run<M: Describe>(self) -> Self::Output {
                let reader = archive::CarReader::new(BufReader::new(self.body))
                    .context("reading the node's export")?;
                let roots = reader
                    .roots
                    .iter()
                    .map(|c| c.to_string().parse::<EventId>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow::anyhow!("a root of the export: {e}"))?;
                Ok(chorus_store::audit::verify_archive::<M>(
                    reader,
                    &roots,
                    &mut Stages::default(),
                )?
                .map_err(|m| m.to_string()))
            }
        }
        let replayed = machines::dispatch(&machine, Replay { body: s.body })??;
        return Ok(match replayed {
            Ok(v) if hex::encode(v.state_hash) == claimed => {
                println!(
                    "verify OK (through the running node at {api}): {} events, {} signatures \
                     re-checked, replayed from genesis with {machine} to the node's state_hash {claimed}",
                    v.events, v.events
                );
                0
            }
            Ok(v) => {
                println!(
                    "verify FAILED: the node's events replay to state_hash {}, the node claims {claimed}",
                    hex::encode(v.state_hash)
                );
                1
            }
            Err(m) => {
                println!("verify FAILED: {m}");
                1
            }
        });
    }
    bail!(
        "the node's state stayed behind its stored events: no state hash to compare with; try again"
    )
}

/// Runs `cmd` through the node at `api` when it reads the data directory's store; `None`: not
/// such a command.
pub fn through_node(api: &str, cmd: &crate::Command) -> Option<Result<i32>> {
    Some(match cmd {
        crate::Command::State { json } => state(api, *json),
        crate::Command::Log(a) => log(api, a),
        crate::Command::Export(a) => export(api, a),
        crate::Command::Verify => verify(api),
        _ => return None,
    })
}
