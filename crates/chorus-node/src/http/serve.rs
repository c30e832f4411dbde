//! The API's connection loop: what `axum::serve` does, plus the two bounds it lacks. A live run
//! held 19 950 half-open connections that never sent a request (each a task and a socket,
//! forever); here a connection must send a request's headers within [`HEADER_TIMEOUT`] (also
//! between requests on a kept-alive connection), and at most [`MAX_CONNECTIONS`] are served at
//! once (more wait in the kernel's accept backlog until one ends). A response being streamed
//! (SSE) is not a wait for headers: it lasts as long as its client reads.

use std::{sync::Arc, time::Duration};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};

/// Most API connections served at once.
pub const MAX_CONNECTIONS: usize = 512;
/// How long a connection may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
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
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
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
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A connection's end (closed, timed out, broken) is no error of the node's.
            let _ = conn.await;
            drop(permit);
        });
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
}
