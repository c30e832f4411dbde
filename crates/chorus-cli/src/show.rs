//! How the CLI prints what it reads, from the JSON views the store and a running node's API
//! share (`chorus_node::describe`).

use anyhow::Result;
use serde_json::Value;

/// `chorus state` from the state's JSON (the store's, or a running node's `GET /v1/state`).
pub fn print_state(v: &Value, as_json: bool) -> Result<i32> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(0);
    }
    let s = &v["state"];
    if let Some(f) = v.get("from_snapshot") {
        println!(
            "snapshot     state certified at {} positions, from snapshot {}; the history is \
             still replaying here ({} positions final so far)",
            f["positions"],
            f["root"].as_str().unwrap_or(""),
            f["replayed_positions"]
        );
    }
    if v["folding"] == true {
        println!(
            "folding      new events are being folded; below is the state of the last complete fold"
        );
    }
    println!(
        "timeline     {} ({})",
        v["timeline"].as_str().unwrap_or(""),
        v["machine"].as_str().unwrap_or("")
    );
    println!(
        "events       {} ({} pending, {} heads)",
        v["events"],
        v["pending"],
        v["heads"].as_array().map_or(0, |h| h.len())
    );
    if s.get("coherence").is_some() {
        println!("coherence    {}", s["coherence"]);
        println!(
            "collapsed    {} ({} collapses, recovery {})",
            s["collapsed"], s["collapses"], s["recovery"]
        );
        println!(
            "dopamine     {} ({}; next N = {})",
            s["dopamine"],
            s["cognitive_state"].as_str().unwrap_or(""),
            s["next_n"]
        );
        println!(
            "integrations {} events, {} tokens",
            s["integrations"], s["tokens"]
        );
        // Value indexing yields Null for a missing key: the text view never panics.
        let l = &s["last_election"];
        if l.is_object() {
            println!(
                "election     stimulus {} → winner {} ({} intents, {} valid, N = {})",
                l["stimulus"].as_str().unwrap_or("?"),
                l["winner"].as_str().unwrap_or("none yet"),
                l["intents"],
                l["valid"],
                l["n"]
            );
        }
    } else {
        println!("counts       {}", s);
    }
    let f = &v["settled_frontier"];
    print!("settled      {} events", f["settled"]);
    let h = &f["held_by"];
    if h.is_object() {
        let latest = match h["latest_lc"].as_u64() {
            Some(lc) => format!("its latest event has lc {lc}"),
            None => "it has published nothing yet".into(),
        };
        print!(
            "; held by {} {} ({latest})",
            h["role"].as_str().unwrap_or("?"),
            h["member"].as_str().unwrap_or("?"),
        );
        if let Some(lc) = f["first_unsettled"]["lc"].as_u64() {
            print!(", first unsettled event at lc {lc}");
        }
    }
    println!();
    println!("state_hash   {}", v["state_hash"].as_str().unwrap_or(""));
    Ok(0)
}
