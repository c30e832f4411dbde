//! The API's connection loop: what `axum::serve` does, plus the two bounds it lacks. A live run
//! held 19 950 half-open connections that never sent a request (each a task and a socket,
//! forever); here a connection must send a request's headers within [`HEADER_TIMEOUT`] (also
//! between requests on a kept-alive connection), and at most [`MAX_CONNECTIONS`] are served at
//! once (more wait in the kernel's accept backlog until one ends). A response being streamed
//! (SSE) is not a wait for headers: it lasts as long as its client reads — and a client that
//! stops reading altogether (its receive window shut) fails its connection once nothing could
//! be written for [`WRITE_STALL_TIMEOUT`] ([`StallGuard`]). A write's body must arrive whole
//! within [`super::BODY_TIMEOUT`] (the router's `body_within_deadline`).

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::Semaphore,
    time::Sleep,
};
use tower::ServiceExt;

/// Most API connections served at once.
pub const MAX_CONNECTIONS: usize = 512;
/// How long a connection may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may go without being able to write anything to its client.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for requests in flight (a stream never ends by itself).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `stop` resolves, then waits for the requests in flight (for
/// at most [`SHUTDOWN_GRACE`]; the process exits soon after, ending any still running).
pub async fn serve(listener: TcpListener, app: Router, stop: impl Future<Output = ()>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut stop => break,
        };
        let (stream, client) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, as axum::serve does.
                    tracing::warn!(error = %e, "API: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(
                TokioIo::new(StallGuard::new(stream, WRITE_STALL_TIMEOUT)),
                // The client's address, for the handlers that ask (the gateway's rate limit).
                TowerToHyperService::new(app.clone().map_request(
                    move |mut r: axum::http::Request<hyper::body::Incoming>| {
                        r.extensions_mut().insert(ConnectInfo(client));
                        r
                    },
                )),
            );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A connection's end (closed, timed out, broken) is no error of the node's.
            let _ = conn.await;
            drop(permit);
        });
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
}

/// A connection's socket that fails a write once it could send nothing for `limit`: the
/// client reads nothing (its receive window is shut), so the server's buffers would hold the
/// response, and the connection its slot, for ever. Any progress restarts the clock; reads are
/// untouched (headers and bodies have their own deadlines).
pub struct StallGuard<T> {
    io: T,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> StallGuard<T> {
    pub fn new(io: T, limit: Duration) -> Self {
        StallGuard {
            io,
            limit,
            stalled: None,
        }
    }

    /// Passes `r` on, starting the stall clock on `Pending` and failing once it ran out.
    fn watch<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let limit = self.limit;
        let clock = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if clock.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {} s", limit.as_secs_f64()),
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMIT: Duration = Duration::from_millis(300);

    /// A client that never reads: the write fails once the pipe is full for the limit.
    #[tokio::test]
    async fn a_client_that_reads_nothing_fails_the_write_after_the_limit() {
        let (server, _client) = tokio::io::duplex(1024);
        let mut guarded = StallGuard::new(server, LIMIT);
        let started = std::time::Instant::now();
        let e = guarded
            .write_all(&vec![7u8; 64 * 1024])
            .await
            .expect_err("nobody reads");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(took >= LIMIT && took < LIMIT * 10, "{took:?}");
    }

    /// A slow client that keeps reading (a pause shorter than the limit between reads) is
    /// served whole, however long it takes in all.
    #[tokio::test]
    async fn a_slow_client_that_keeps_reading_is_served_whole() {
        let (server, mut client) = tokio::io::duplex(1024);
        let mut guarded = StallGuard::new(server, LIMIT);
        let total = 8 * 1024;
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 1024];
            while got < total {
                tokio::time::sleep(LIMIT / 3).await;
                got += client.read(&mut buf).await.unwrap();
            }
            got
        });
        guarded.write_all(&vec![7u8; total]).await.unwrap();
        assert_eq!(reader.await.unwrap(), total);
    }
}
