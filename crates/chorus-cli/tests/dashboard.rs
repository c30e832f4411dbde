//! The dashboard in a real browser: Debian's `chromium`, driven headless by `playwright-core`
//! (`tests/dashboard/check-dashboard.mjs`), loads `/` from one node of a live 3-node mesh while
//! the swarm answers stimuli, and the test checks that every plot and table shows the node's
//! live values. A full-page screenshot lands in `$CARGO_TARGET_TMPDIR/dashboard.png` (the
//! README's `docs/dashboard.png` is one).
//!
//! Without `chromium` or `npm` the test says so and passes only if `CHORUS_REQUIRE_BROWSER` is
//! unset (CI sets it).

mod common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use serde_json::{Value, json};

fn browser_ready() -> Option<(PathBuf, PathBuf)> {
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into()));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/dashboard");
    let have_npm = Command::new("npm").arg("--version").output().is_ok();
    if !chromium.exists() || !have_npm {
        assert!(
            std::env::var("CHORUS_REQUIRE_BROWSER").is_err(),
            "CHORUS_REQUIRE_BROWSER is set but {} or npm is missing (apt-get install chromium npm)",
            chromium.display()
        );
        eprintln!("SKIPPED: the dashboard browser test needs chromium and npm");
        return None;
    }
    if !dir.join("node_modules/playwright-core").exists() {
        let st = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm ci in tests/dashboard");
        assert!(st.success(), "npm ci in tests/dashboard failed");
    }
    Some((chromium, dir))
}

fn scripted(name: &str, reply: &str, delay_ms: u64) -> String {
    format!(
        "[[emissary]]\nname = {name:?}\nbackend = {{ kind = \"scripted\", reply = {reply:?}, delay_ms = {delay_ms} }}\n"
    )
}

#[test]
fn the_dashboard_shows_a_live_mesh_in_a_real_browser() {
    let Some((chromium, js)) = browser_ready() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let dirs = timeline(root.path(), 3, 3);
    let em0 = root.path().join("n0-emissaries.toml");
    std::fs::write(
        &em0,
        scripted("gpu", r#"["say Welcome, traveller!", "bow"]"#, 300)
            + &scripted("pi-zero", r#"["say ...hello?"]"#, 1_500),
    )
    .unwrap();
    let em1 = root.path().join("n1-emissaries.toml");
    std::fs::write(&em1, scripted("edge", r#"["wave"]"#, 700)).unwrap();
    let n0 = Node::start_with(
        "n0",
        &dirs[0],
        "127.0.2.51",
        &[],
        &["--emissaries", em0.to_str().unwrap()],
        None,
    );
    let boot = [n0.addr.clone()];
    join(&dirs[1], &n0.addr);
    join(&dirs[2], &n0.addr);
    let n1 = Node::start_with(
        "n1",
        &dirs[1],
        "127.0.2.52",
        &boot,
        &["--emissaries", em1.to_str().unwrap()],
        None,
    );
    let n2 = Node::start("n2", &dirs[2], "127.0.2.53", &boot);
    meshed(&[&n0, &n1, &n2], Duration::from_secs(60));

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let mut browser = Command::new("node")
        .arg(js.join("check-dashboard.mjs"))
        .arg(format!("http://{}/", n0.api))
        .arg(&shot)
        .arg("12")
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node");
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    let first = lines
        .next()
        .expect("the browser check printed nothing")
        .unwrap();
    assert_eq!(first, r#"{"connected":true}"#, "{first}");

    // The page is live: the swarm answers three stimuli and a writer appends, while it watches.
    for context in [
        "A stranger enters.",
        "The stranger orders wine.",
        "A fight breaks out.",
    ] {
        let r = post(
            &n0.api,
            "/v1/swarm/intent",
            &json!({"npc_name": "Mira", "role": "Innkeeper", "backstory": "Runs the inn.",
                    "context": context, "timeout_ms": 10_000}),
        )
        .expect("the swarm answers");
        assert!(r["winner"].is_string(), "{r}");
    }
    post(
        &n2.api,
        "/v1/events",
        &json!({"kind": "note", "text": "a traveller's note {i}", "count": 50}),
    )
    .unwrap();

    let report = lines
        .next()
        .expect("the browser check printed no report")
        .unwrap();
    assert!(
        browser.wait().unwrap().success(),
        "the browser check failed"
    );
    let shown: Value = serde_json::from_str(&report).unwrap();
    eprintln!("the page showed: {shown}");
    assert!(shown["problems"].as_array().unwrap().is_empty(), "{shown}");
    assert_eq!(shown["live"], "live");
    assert!(shown["csp"].as_str().unwrap().contains("script-src 'self'"));

    // Every plot's series has a point per tick (uPlot's own data).
    for (plot, series) in [("kairos", 2), ("n", 1), ("rate", 1)] {
        let points = shown["plots"][plot].as_array().unwrap();
        assert_eq!(points.len(), series, "{plot}: {shown}");
        for p in points {
            assert!(
                p.as_u64().unwrap() >= 12,
                "plot {plot} stayed short: {shown}"
            );
        }
    }
    // The mesh: both peers, each row named.
    assert_eq!(shown["peers"].as_array().unwrap().len(), 2, "{shown}");
    // The elections: three, each with a winner, the latencies of the answers seen live.
    let elections = shown["elections"].as_array().unwrap();
    assert_eq!(elections.len(), 3, "{shown}");
    for e in elections {
        let winner = e[4].as_str().unwrap();
        assert!(
            ["gpu", "pi-zero", "edge"]
                .iter()
                .any(|n| winner.starts_with(n)),
            "{e}"
        );
        assert!(e[3].as_str().unwrap().contains(" ms"), "no latency: {e}");
    }
    // The emissaries of this node, with what they answered.
    let names: Vec<&str> = shown["emissaries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gpu", "pi-zero"], "{shown}");
    // The values are the node's: the last tick came after the last write.
    let state = get(&n0.api, "/v1/state").unwrap();
    assert_eq!(
        shown["cards"]["events"].as_str().unwrap(),
        state["events"].to_string(),
        "{shown}"
    );
    let coherence = state["state"]["coherence"].as_f64().unwrap();
    assert_eq!(shown["cards"]["coherence"].as_f64().unwrap(), coherence);
    assert!(shot.exists());
    eprintln!("screenshot: {}", shot.display());
}
