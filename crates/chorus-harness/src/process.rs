//! One `chorus node` process: how it is started, how its addresses are learned, how it stops.
//!
//! A node prints `listening <multiaddr>` and `api http://<host:port>` on stdout once it is
//! ready (`chorus node` guarantees these lines); every stdout line is kept, so a test can also
//! wait for lines of its own (`printed`). stderr (the log) goes to a file when one is given.

use std::{
    ffi::OsString,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::api::Api;

/// How to start a node: `[prefix…] BIN --data-dir DIR node --listen … --api …
/// --heartbeat-ms MS [extra…] [--bootstrap ADDR…]`.
pub struct NodeCommand {
    bin: PathBuf,
    prefix: Vec<OsString>,
    dir: PathBuf,
    ip: String,
    bootstrap: Vec<String>,
    extra: Vec<OsString>,
    env: Vec<(String, String)>,
    log: Option<PathBuf>,
    ready_within: Duration,
    heartbeat_ms: u64,
}

impl NodeCommand {
    /// `bin` on data dir `dir`, p2p and API on `ip` with ports the kernel picks.
    pub fn new(bin: impl Into<PathBuf>, dir: &Path, ip: &str) -> NodeCommand {
        NodeCommand {
            bin: bin.into(),
            prefix: vec![],
            dir: dir.into(),
            ip: ip.into(),
            bootstrap: vec![],
            extra: vec![],
            env: vec![],
            log: None,
            ready_within: Duration::from_secs(60),
            heartbeat_ms: 0,
        }
    }

    /// Run the binary under another program (`ip netns exec NS`, `qemu-aarch64 -L …`).
    pub fn prefix<S: Into<OsString>>(mut self, prefix: impl IntoIterator<Item = S>) -> Self {
        self.prefix = prefix.into_iter().map(Into::into).collect();
        self
    }

    pub fn bootstrap(mut self, addrs: &[String]) -> Self {
        self.bootstrap.extend(addrs.iter().cloned());
        self
    }

    /// More `chorus node` arguments.
    pub fn args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.extra.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Append the node's stderr (its log) to this file; without it, stderr is dropped.
    pub fn log_to(mut self, file: impl Into<PathBuf>) -> Self {
        self.log = Some(file.into());
        self
    }

    /// Heartbeats every `ms` (`chorus node --heartbeat-ms`). Off unless asked for: a node
    /// appends heartbeats on its own, and most tests count the events they wrote exactly.
    pub fn heartbeat_ms(mut self, ms: u64) -> Self {
        self.heartbeat_ms = ms;
        self
    }

    /// How long to wait for the ready lines (default 60 s; emulators need more).
    pub fn ready_within(mut self, d: Duration) -> Self {
        self.ready_within = d;
        self
    }

    /// Starts the node and waits until it printed its addresses.
    pub fn start(self) -> Result<NodeProcess> {
        let mut cmd = match self.prefix.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("--data-dir")
            .arg(&self.dir)
            .arg("node")
            .args(["--listen", &format!("/ip4/{}/tcp/0", self.ip)])
            .args(["--api", &format!("{}:0", self.ip)])
            .args(["--heartbeat-ms", &self.heartbeat_ms.to_string()])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        for b in &self.bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        // The tests' network namespaces are networks the test closes itself: an API on one of
        // their addresses needs no token (a node refuses an open non-loopback API otherwise).
        if self
            .ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| !ip.is_loopback())
        {
            cmd.arg("--api-open");
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        match &self.log {
            Some(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("open the node log {}", path.display()))?;
                cmd.stderr(f);
            }
            None => {
                cmd.stderr(Stdio::null());
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {}", self.bin.display()))?;
        let out = child.stdout.take().context("the node's stdout")?;
        let lines = Arc::new(Mutex::new(vec![]));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(l);
            }
        });
        let mut n = NodeProcess {
            child: Some(child),
            lines,
            log: self.log,
            addr: String::new(),
            api: String::new(),
        };
        n.addr = n.ready_line("listening ", self.ready_within)?;
        n.api = n
            .ready_line("api ", self.ready_within)?
            .trim_start_matches("http://")
            .to_string();
        Ok(n)
    }
}

/// A running (or stopped) node process. Dropping it SIGKILLs the process.
pub struct NodeProcess {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    log: Option<PathBuf>,
    /// The p2p multiaddr it listens on.
    pub addr: String,
    /// Its API, `host:port`.
    pub api: String,
}

impl NodeProcess {
    /// The first stdout line starting with `prefix`, without it; an error if the process exits
    /// first (with the end of its log) or nothing comes within `within`.
    fn ready_line(&mut self, prefix: &str, within: Duration) -> Result<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.find(|l| l.strip_prefix(prefix).map(str::to_string)) {
                return Ok(l);
            }
            if let Some(c) = self.child.as_mut()
                && let Some(st) = c.try_wait()?
            {
                bail!(
                    "the node exited ({st}) before printing {prefix:?}:\n{}",
                    self.log_tail(30)
                );
            }
            if Instant::now() > deadline {
                bail!("the node printed no {prefix:?} line within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn find<T>(&self, f: impl FnMut(&String) -> Option<T>) -> Option<T> {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find_map(f)
    }

    /// Waits up to `within` for a stdout line starting with `prefix`; the whole line.
    pub fn printed(&self, prefix: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let hit = self.find(|l| l.starts_with(prefix).then(|| l.clone()));
            if hit.is_some() || Instant::now() > deadline {
                return hit;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A client for its API whose calls give up after `timeout`.
    pub fn api(&self, timeout: Duration) -> Api {
        Api::new(&self.api, timeout)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (the node's graceful shutdown), and wait up to `within` for it to exit.
    pub fn stop(&mut self, within: Duration) -> Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        let graceful = (|| -> Result<()> {
            let sent = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()?;
            if !sent.success() {
                bail!("kill -TERM {} failed", c.id());
            }
            let deadline = Instant::now() + within;
            while c.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    bail!("the node ignored SIGTERM for {within:?} (killed)");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })();
        // Whatever went wrong, the process is not left running or unreaped.
        if graceful.is_err() {
            let _ = c.kill();
            let _ = c.wait();
        }
        graceful
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last `n` lines of its log file (empty without one).
    pub fn log_tail(&self, n: usize) -> String {
        let log = self
            .log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(n).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Resident memory now, in MiB (NaN once it has exited).
    pub fn rss_mb(&self) -> f64 {
        self.proc_status_mb("VmRSS:")
    }

    /// Peak resident memory since it started, in MiB.
    pub fn peak_rss_mb(&self) -> f64 {
        self.proc_status_mb("VmHWM:")
    }

    fn proc_status_mb(&self, field: &str) -> f64 {
        let Some(pid) = self.pid() else {
            return f64::NAN;
        };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
