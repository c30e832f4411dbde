//! A small blocking client of a running node's local HTTP API (ureq, plain HTTP on loopback).

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// File in a data directory holding the address of the running node's API.
pub const API_ADDR_FILE: &str = "api.addr";
/// Longest wait for one API call.
pub const API_TIMEOUT: Duration = Duration::from_secs(60);

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(API_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .new_agent()
}

fn read(mut resp: ureq::http::Response<ureq::Body>, what: &str) -> Result<Value> {
    let status = resp.status();
    let text = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading the answer to {what}"))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{what}: the answer is not JSON: {text:.200}"))?;
    if !status.is_success() {
        bail!(
            "{what}: {status}: {}",
            v.get("error").and_then(Value::as_str).unwrap_or(&text)
        );
    }
    Ok(v)
}

/// The environment variable whose value the client sends as its bearer token (the token a
/// node was given with `--api-token-env`): needed for writes to a node that has a token, and
/// for reads too when its timeline is private.
pub const TOKEN_ENV: &str = "CHORUS_API_TOKEN";

fn bearer() -> Option<String> {
    std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
        .map(|t| format!("Bearer {t}"))
}

/// `GET http://{addr}{path}` as JSON.
pub fn get(addr: &str, path: &str) -> Result<Value> {
    let url = format!("http://{addr}{path}");
    let mut rq = agent().get(&url);
    if let Some(b) = bearer() {
        rq = rq.header("authorization", b);
    }
    let resp = rq
        .call()
        .with_context(|| format!("cannot reach the node API at {addr}"))?;
    read(resp, &url)
}

/// `GET http://{addr}{path}` as bytes (a block); an error answer is read as JSON and said.
pub fn get_bytes(addr: &str, path: &str) -> Result<Vec<u8>> {
    let url = format!("http://{addr}{path}");
    let mut rq = agent().get(&url);
    if let Some(b) = bearer() {
        rq = rq.header("authorization", b);
    }
    let mut resp = rq
        .call()
        .with_context(|| format!("cannot reach the node API at {addr}"))?;
    if !resp.status().is_success() {
        read(resp, &url)?;
        bail!("{url}: an error without a message");
    }
    resp.body_mut()
        .with_config()
        .limit(8 * 1024 * 1024)
        .read_to_vec()
        .with_context(|| format!("reading {url}"))
}

/// `POST http://{addr}{path}` with a JSON body.
pub fn post(addr: &str, path: &str, body: &Value) -> Result<Value> {
    let url = format!("http://{addr}{path}");
    let mut rq = agent()
        .post(&url)
        .header("content-type", "application/json");
    if let Some(b) = bearer() {
        rq = rq.header("authorization", b);
    }
    let resp = rq
        .send(body.to_string())
        .with_context(|| format!("cannot reach the node API at {addr}"))?;
    read(resp, &url)
}

/// The API address of the node running on `dir`, if one wrote it and it is this directory's
/// node. A node killed without cleaning up leaves its `api.addr`; with the fixed default port
/// another node may answer there later: its key is compared with this directory's, and a
/// stranger's address is not used (the store is opened instead). An address nobody answers at
/// is returned: the command then finds it unreachable and opens the store.
pub fn running_api(dir: &Path) -> Option<String> {
    static CHECKED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let addr = std::fs::read_to_string(dir.join(API_ADDR_FILE))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())?;
            let mine = chorus_store::replica::read_key(dir)
                .ok()
                .flatten()?
                .author();
            match get(&addr, "/v1/status") {
                Ok(st) if st["author"].as_str() != Some(mine.to_string().as_str()) => {
                    eprintln!(
                        "note: {} names {addr}, where another node answers (key {}): a stale \
                         file; using the data directory itself",
                        dir.join(API_ADDR_FILE).display(),
                        st["author"].as_str().unwrap_or("?")
                    );
                    None
                }
                _ => Some(addr),
            }
        })
        .clone()
}

/// A streamed answer: its headers and a reader of its body.
pub struct Stream {
    pub headers: ureq::http::HeaderMap,
    pub body: Box<dyn std::io::Read + Send>,
}

/// Longest silence while a streamed answer arrives (its whole length is not bounded: an
/// export of a large timeline takes as long as it takes).
pub const STREAM_STALL: Duration = Duration::from_secs(60);

/// `GET http://{addr}{path}` as a stream (an export); an error answer is read as JSON and said.
pub fn get_stream(addr: &str, path: &str) -> Result<Stream> {
    let url = format!("http://{addr}{path}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_response(Some(API_TIMEOUT))
        .timeout_per_read(Some(STREAM_STALL))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut rq = agent.get(&url);
    if let Some(b) = bearer() {
        rq = rq.header("authorization", b);
    }
    let resp = rq
        .call()
        .with_context(|| format!("cannot reach the node API at {addr}"))?;
    if !resp.status().is_success() {
        read(resp, &url)?;
        bail!("{url}: an error without a message");
    }
    let (parts, body) = resp.into_parts();
    Ok(Stream {
        headers: parts.headers,
        body: Box::new(body.into_reader()),
    })
}

impl Stream {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}
