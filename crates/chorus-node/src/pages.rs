//! The page reader: reads and packs the blocks of sync pages off the actor thread.
//!
//! A `Since`, `Range` or `Want` answer holds up to 4 MiB of blocks (`MAX_PAGE_BYTES`). The
//! node machine decides what a page holds from its in-memory order
//! ([`chorus_core::sync::plan`]: ids and cursors, no block read) and hands the plan out as an
//! `Output::ServePage`; this thread reads the blocks from a read snapshot of the redb store
//! (every planned event is committed: the machine plans after its turn's commit), packs them
//! with the same [`chorus_core::sync::pack`] the simulator runs, and sends the answer to the
//! swarm. The actor thread, which folds the machine and takes every write, never reads a page.
//!
//! Bounded: at most [`PAGE_QUEUE`] pages wait; a request beyond that is refused at once
//! ("busy", counted as `pages_busy`) and the asker moves on to its next peer, as after any
//! refusal. One thread: on a small machine a second reader would take the core the actor
//! needs.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, SyncSender, TrySendError},
    },
    thread::JoinHandle,
};

use chorus_core::sync::{self, PagePlan, SyncResponse};
use chorus_net::{InboundId, NetCommand};
use chorus_store::StoreReader;
use tokio::sync::mpsc as tokio_mpsc;

/// Pages waiting for the reader at most.
pub const PAGE_QUEUE: usize = 32;

/// Counters of the page reader.
#[derive(Debug, Default)]
pub struct PageStats {
    /// Pages read and answered.
    pub served: AtomicU64,
    /// Requests refused because [`PAGE_QUEUE`] pages were waiting.
    pub busy: AtomicU64,
    /// Pages whose read snapshot could not be opened (answered with a refusal).
    pub read_failed: AtomicU64,
}

/// The handle the actor keeps: queue pages, and stop (join) the thread at the end.
pub struct PageReader {
    tx: Option<SyncSender<(InboundId, PagePlan)>>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<PageStats>,
}

impl PageReader {
    /// Starts the reader thread over `store`, answering on `net`.
    pub fn spawn(store: StoreReader, net: tokio_mpsc::Sender<NetCommand>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<(InboundId, PagePlan)>(PAGE_QUEUE);
        let stats = Arc::new(PageStats::default());
        let counters = stats.clone();
        let thread = std::thread::Builder::new()
            .name("chorus-pages".into())
            .spawn(move || {
                for (id, plan) in rx {
                    let resp = match store.read(|block| sync::pack(&plan, block)) {
                        Ok(resp) => {
                            counters.served.fetch_add(1, Ordering::Relaxed);
                            resp
                        }
                        Err(e) => {
                            counters.read_failed.fetch_add(1, Ordering::Relaxed);
                            tracing::error!("page not served: the store could not be read: {e}");
                            SyncResponse::Refused {
                                reason: "store read failed".into(),
                            }
                        }
                    };
                    // Waits while the swarm's queue is full (backpressure on this thread,
                    // never on the actor); gone means the swarm stopped.
                    if net.blocking_send(NetCommand::Respond { id, resp }).is_err() {
                        break;
                    }
                }
            })?;
        Ok(PageReader {
            tx: Some(tx),
            thread: Some(thread),
            stats,
        })
    }

    /// Queues a page, or gives back the answer to send at once when [`PAGE_QUEUE`] pages wait
    /// (or the thread is gone).
    pub fn serve(&self, id: InboundId, plan: PagePlan) -> Result<(), (InboundId, SyncResponse)> {
        let Some(tx) = &self.tx else {
            return Err((id, busy()));
        };
        match tx.try_send((id, plan)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full((id, _)) | TrySendError::Disconnected((id, _))) => {
                self.stats.busy.fetch_add(1, Ordering::Relaxed);
                Err((id, busy()))
            }
        }
    }

    /// Answers what is queued, then ends the thread (it holds the database open).
    pub fn stop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for PageReader {
    fn drop(&mut self) {
        self.stop();
    }
}

fn busy() -> SyncResponse {
    SyncResponse::Refused {
        reason: format!("busy: {PAGE_QUEUE} pages waiting to be read"),
    }
}
