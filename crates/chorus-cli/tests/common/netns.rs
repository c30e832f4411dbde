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
