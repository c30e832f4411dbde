//! `GET /v1/export?format=car|jsonl`: the whole timeline as a streamed archive, read from one
//! store snapshot beside the node's writes — the backup of a running node (`chorus export`
//! goes through it while a node holds the data directory).
//!
//! * `format=car` (default): CARv1, `application/vnd.ipld.car; version=1`, roots = the heads at
//!   the snapshot, blocks in (lc, id) order, parents first — byte for byte what `chorus export
//!   --car` writes from the same store.
//! * `format=jsonl`: one JSON object per event, `application/x-ndjson`.
//!
//! Headers: `chorus-events` (blocks that follow), `chorus-machine`, `chorus-timeline` (the
//! genesis CID) and, unless a fold was under way, `chorus-state-hash`: the node's state hash at
//! exactly those heads, which `chorus verify` re-derives from the archive alone.
//!
//! The archive is written on a blocking thread into a channel of [`EXPORT_CHUNKS`] chunks of
//! [`EXPORT_CHUNK_BYTES`]; a client that stops reading stalls the thread until the connection's
//! write-stall bound closes it, which ends the export. At most [`MAX_EXPORTS`] run at once,
//! and on a node with a token an export needs it even where reads are open: it holds a thread
//! and a store snapshot as long as its client reads.

use std::io::Write;

use axum::{
    body::{Body, Bytes},
    extract::{Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chorus_core::{SignedEvent, archive};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::shared::{Api, MAX_EXPORTS, error};
use crate::actor::{ApiRequest, ExportStart};

/// Bytes per chunk handed to the connection.
pub const EXPORT_CHUNK_BYTES: usize = 64 * 1024;
/// Chunks written ahead of the client.
pub const EXPORT_CHUNKS: usize = 8;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `car` (default) or `jsonl`.
    format: Option<String>,
}

#[derive(Clone, Copy)]
enum Format {
    Car,
    Jsonl,
}

#[utoipa::path(get, path = "/v1/export", tag = "timeline", params(ExportQuery), security(("token" = [])), responses(
    (status = 200, description = "The whole timeline from one store snapshot, streamed: a CAR (`application/vnd.ipld.car`) or JSON lines; headers `chorus-events`, `chorus-machine`, `chorus-timeline`, `chorus-state-hash` (when folded over exactly the snapshot's heads). A failure midway aborts the body", content_type = "application/vnd.ipld.car"),
    (status = 400, description = "An unknown format", body = super::shared::ApiError),
    (status = 401, description = "The node has a token and the request does not carry it", body = super::shared::ApiError),
    (status = 503, description = "Two exports are running already", body = super::shared::ApiError),
))]
pub async fn export(State(api): State<Api>, Query(q): Query<ExportQuery>) -> Response {
    let format = match q.format.as_deref() {
        None | Some("car") => Format::Car,
        Some("jsonl") => Format::Jsonl,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("format {other:?}: give car or jsonl"),
            );
        }
    };
    let Ok(permit) = api.exports.clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_EXPORTS} exports are running on this node: try again once one ends"),
        );
    };
    let start = match api.ask(ApiRequest::Export).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return error(StatusCode::CONFLICT, e),
        Err(r) => return r,
    };
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(EXPORT_CHUNKS);
    let mut headers = vec![
        (
            header::CONTENT_TYPE,
            match format {
                Format::Car => "application/vnd.ipld.car; version=1",
                Format::Jsonl => "application/x-ndjson",
            }
            .to_string(),
        ),
        (
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"{}.{}\"",
                start.genesis,
                match format {
                    Format::Car => "car",
                    Format::Jsonl => "jsonl",
                }
            ),
        ),
    ];
    let mut extra = vec![
        ("chorus-events", start.snapshot.len().to_string()),
        ("chorus-machine", start.machine.clone()),
        ("chorus-timeline", start.genesis.to_string()),
    ];
    if let Some(h) = start.state_hash {
        extra.push(("chorus-state-hash", hex::encode(h)));
    }
    let started = std::thread::Builder::new()
        .name("chorus-export".into())
        .spawn(move || {
            // A panic midway must abort the body like an error, never end it cleanly.
            let _guard = AbortOnUnwind(tx.clone());
            write_archive(start, format, tx, permit);
        });
    if let Err(e) = started {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot start the export thread: {e}"),
        );
    }
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    let mut resp = body.into_response();
    for (name, value) in headers.drain(..) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
    for (name, value) in extra {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

/// Sends an error down the body when dropped by a panic; dropped normally, it only lets go of
/// its sender (the body then ends once the writer's is gone too).
struct AbortOnUnwind(mpsc::Sender<std::io::Result<Bytes>>);

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Waits for room like any chunk (a client that stopped reading is cut by the
            // connection's write-stall bound, which ends this wait too).
            let _ = self
                .0
                .blocking_send(Err(std::io::Error::other("the export thread failed")));
        }
    }
}

/// Hands what is written to the connection in chunks; fails once the connection is gone.
struct ChunkWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.buf.reserve(EXPORT_CHUNK_BYTES);
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= EXPORT_CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Writes the archive. A failure midway aborts the body (the connection closes without the
/// chunked encoding's last chunk), so the client sees an error, never a short archive that
/// looks whole.
fn write_archive(
    start: ExportStart,
    format: Format,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    _permit: OwnedSemaphorePermit,
) {
    let out = ChunkWriter {
        tx: tx.clone(),
        buf: Vec::with_capacity(EXPORT_CHUNK_BYTES),
    };
    let snap = &start.snapshot;
    let result = (|| -> Result<(), String> {
        let blocks = snap.ordered_blocks().map_err(|e| e.to_string())?;
        match format {
            Format::Car => {
                let mut w =
                    archive::CarWriter::new(out, snap.heads()).map_err(|e| e.to_string())?;
                for b in blocks {
                    let (id, bytes) = b.map_err(|e| e.to_string())?;
                    w.write_block(&id, &bytes).map_err(|e| e.to_string())?;
                }
                w.finish()
                    .map_err(|e| e.to_string())?
                    .flush()
                    .map_err(|e| e.to_string())
            }
            Format::Jsonl => {
                let mut w = out;
                for b in blocks {
                    let (id, bytes) = b.map_err(|e| e.to_string())?;
                    let ev = SignedEvent::decode_trusted(&bytes)
                        .map_err(|e| format!("block {id}: {e}"))?;
                    archive::write_jsonl_line(&mut w, &ev).map_err(|e| e.to_string())?;
                }
                w.flush().map_err(|e| e.to_string())
            }
        }
    })();
    match result {
        Ok(()) => tracing::info!(events = snap.len(), "export streamed"),
        Err(e) => {
            tracing::warn!("export ended early: {e}");
            let _ = tx.blocking_send(Err(std::io::Error::other(e)));
        }
    }
}
