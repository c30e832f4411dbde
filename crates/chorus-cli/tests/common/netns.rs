//! Network namespaces for the fault tests (root): each node in its own namespace, a veth into
//! a bridge in a hub namespace, so a firewall rule inside a node's namespace acts on exactly
//! that node's links. The test body runs inside the hub (the test binary re-executes itself
//! there), from which every node's API is reachable. Everything is created by the test and
//! deleted on drop, whatever happens.

use std::process::Command;

/// Runs a command; its stderr on failure.
pub fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Why this machine cannot run a namespace test needing these tools (None: it can). With
/// `CHORUS_REQUIRE_NETNS` set (CI), a missing piece fails the test instead of skipping it.
pub fn missing(tools: &[&[&str]]) -> Option<String> {
    let why = if !is_root() {
        Some("not root".to_string())
    } else {
        tools
            .iter()
            .find(|t| sh(t).is_err())
            .map(|t| format!("no `{}`", t[0]))
    };
    if let Some(w) = &why {
        assert!(
            std::env::var_os("CHORUS_REQUIRE_NETNS").is_none(),
            "namespace test required but cannot run: {w}"
        );
        eprintln!("SKIPPED: this test needs root and {tools:?} ({w})");
    }
    why
}

/// Namespaces made by one test; deleted on drop.
pub struct Namespaces {
    pub prefix: String,
    pub subnet: &'static str,
    pub nodes: usize,
}

impl Namespaces {
    pub fn hub(&self) -> String {
        format!("{}h", self.prefix)
    }
    pub fn node(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }
    pub fn ip(&self, i: usize) -> String {
        ip_in(self.subnet, i)
    }
    pub fn create(prefix: String, subnet: &'static str, nodes: usize) -> Result<Self, String> {
        let ns = Namespaces {
            prefix,
            subnet,
            nodes,
        };
        let hub = ns.hub();
        sh(&["ip", "netns", "add", &hub])?;
        sh(&["ip", "-n", &hub, "link", "set", "lo", "up"])?;
        sh(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        let hub_ip = format!("{subnet}.1/24");
        sh(&["ip", "-n", &hub, "addr", "add", &hub_ip, "dev", "br0"])?;
        sh(&["ip", "-n", &hub, "link", "set", "br0", "up"])?;
        for i in 0..nodes {
            let n = ns.node(i);
            let port = format!("v{i}");
            sh(&["ip", "netns", "add", &n])?;
            sh(&["ip", "-n", &n, "link", "set", "lo", "up"])?;
            sh(&[
                "ip", "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &n,
            ])?;
            sh(&["ip", "-n", &hub, "link", "set", &port, "master", "br0"])?;
            sh(&["ip", "-n", &hub, "link", "set", &port, "up"])?;
            let addr = format!("{}/24", ns.ip(i));
            sh(&["ip", "-n", &n, "addr", "add", &addr, "dev", "eth0"])?;
            sh(&["ip", "-n", &n, "link", "set", "eth0", "up"])?;
        }
        Ok(ns)
    }

    /// Re-runs this test binary's ignored test `inner` inside the hub namespace, with
    /// `env_var` naming the prefix; true when it passed.
    pub fn run_inside_hub(&self, inner: &str, env_var: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.hub()])
            .arg(std::env::current_exe().unwrap())
            .args([inner, "--exact", "--ignored", "--nocapture"])
            .env(env_var, &self.prefix)
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for i in 0..self.nodes {
            let _ = sh(&["ip", "netns", "del", &self.node(i)]);
        }
        let _ = sh(&["ip", "netns", "del", &self.hub()]);
    }
}

pub fn ip_in(subnet: &str, i: usize) -> String {
    format!("{subnet}.{}", 10 + i)
}

/// Loads an nftables script inside a namespace.
pub fn nft_in(ns: &str, script: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft in {ns}: {script}");
}

/// Starts `chorus node` on every data dir, node `i` inside namespace `PREFIXn{i}` on
/// `subnet.(10+i)`: node 0 first, the others joined through it. Returns once every node is
/// connected to all the others (found through Kademlia from the one bootstrap address) and
/// holds the timeline's first events (genesis and memberships).
pub fn start_mesh(prefix: &str, subnet: &str, dirs: &[std::path::PathBuf]) -> Vec<super::Node> {
    start_mesh_heartbeating(prefix, subnet, dirs, 0)
}

/// As [`start_mesh`], every node heartbeating every `heartbeat_ms` (0: none).
pub fn start_mesh_heartbeating(
    prefix: &str,
    subnet: &str,
    dirs: &[std::path::PathBuf],
    heartbeat_ms: u64,
) -> Vec<super::Node> {
    use std::time::Duration;
    let start = |i: usize, boot: &[String]| {
        let ns = format!("{prefix}n{i}");
        super::Node::launch(
            &format!("n{i}"),
            &dirs[i],
            &ip_in(subnet, i),
            boot,
            &[],
            Some(&["ip", "netns", "exec", &ns]),
            heartbeat_ms,
            &[],
        )
    };
    let n0 = start(0, &[]);
    let boot = vec![n0.addr.clone()];
    let mut nodes = vec![n0];
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("{prefix}n{i}"),
                super::BIN,
                "--data-dir",
            ])
            .arg(dir)
            .args(["join", &boot[0]])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        nodes.push(start(i, &boot));
    }
    super::peers_at_least(
        &nodes.iter().collect::<Vec<_>>(),
        dirs.len() - 1,
        Duration::from_secs(30),
    );
    super::initial_sync(&mut nodes.iter_mut().collect::<Vec<_>>(), dirs.len() as u64);
    nodes
}

/// Cuts every link between the nodes on one side (`side(i)` true) and the others, both ways,
/// with an nftables table `part` inside each node's namespace `PREFIXn{i}`.
pub fn cut_sides(prefix: &str, subnet: &str, nodes: usize, side: impl Fn(usize) -> bool) {
    for i in 0..nodes {
        let set = (0..nodes)
            .filter(|j| side(*j) != side(i))
            .map(|j| ip_in(subnet, j))
            .collect::<Vec<_>>()
            .join(", ");
        nft_in(
            &format!("{prefix}n{i}"),
            &format!(
                "table ip part {{
                   chain out {{ type filter hook output priority 0; policy accept; ip daddr {{ {set} }} drop; }}
                   chain inp {{ type filter hook input priority 0; policy accept; ip saddr {{ {set} }} drop; }}
                 }}"
            ),
        );
    }
}

/// Undoes [`cut_sides`].
pub fn heal_sides(prefix: &str, nodes: usize) {
    for i in 0..nodes {
        let ns = format!("{prefix}n{i}");
        sh(&[
            "ip", "netns", "exec", &ns, "nft", "delete", "table", "ip", "part",
        ])
        .unwrap();
    }
}
