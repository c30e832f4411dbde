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

/// The API address of the node running on `dir`, if one wrote it.
pub fn running_api(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(API_ADDR_FILE))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
