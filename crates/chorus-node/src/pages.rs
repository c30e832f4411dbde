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
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, SyncSender, TrySendError},
    },
    thread::JoinHandle,
};

use chorus_core::sync::{self, PagePlan, SyncResponse};
use chorus_store::StoreReader;

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

/// The handle the actor keeps: queue pages, and stop (join) the thread at the end. `Id` names
/// the request a page answers (the swarm's inbound request id).
pub struct PageReader<Id> {
    tx: Option<SyncSender<(Id, PagePlan)>>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<PageStats>,
    /// Set by [`PageReader::stop`]: queued pages are dropped unanswered, and `respond` is told
    /// to give up rather than wait for a swarm that may itself be waiting for the actor.
    stopping: Arc<AtomicBool>,
}

impl<Id: Send + 'static> PageReader<Id> {
    /// Starts the reader thread over `store`. `respond` sends an answer and says whether it
    /// was taken; it may wait while the swarm's queue is full (backpressure on this thread,
    /// never on the actor), but must give up once the flag it is handed is set (shutdown).
    pub fn spawn(
        store: StoreReader,
        mut respond: impl FnMut(Id, SyncResponse, &AtomicBool) -> bool + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<(Id, PagePlan)>(PAGE_QUEUE);
        let stats = Arc::new(PageStats::default());
        let counters = stats.clone();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("chorus-pages".into())
            .spawn(move || {
                for (id, plan) in rx {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
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
                    if !respond(id, resp, &stop) {
                        break;
                    }
                }
            })?;
        Ok(PageReader {
            tx: Some(tx),
            thread: Some(thread),
            stats,
            stopping,
        })
    }

    /// Queues a page, or gives the request back when [`PAGE_QUEUE`] pages wait (or the
    /// thread is gone): answer it with [`busy`] at once.
    pub fn serve(&self, id: Id, plan: PagePlan) -> Result<(), Id> {
        let Some(tx) = &self.tx else {
            return Err(id);
        };
        match tx.try_send((id, plan)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full((id, _)) | TrySendError::Disconnected((id, _))) => {
                self.stats.busy.fetch_add(1, Ordering::Relaxed);
                Err(id)
            }
        }
    }
}

impl<Id> PageReader<Id> {
    /// Ends the thread (it holds the database open): queued pages are dropped unanswered
    /// (their askers' requests fail, as when a node stops), and an answer waiting for the
    /// swarm is given up.
    pub fn stop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<Id> Drop for PageReader<Id> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The refusal of a page request that found [`PAGE_QUEUE`] pages waiting.
pub fn busy() -> SyncResponse {
    SyncResponse::Refused {
        reason: format!("busy: {PAGE_QUEUE} pages waiting to be read"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::{EventId, SignedEvent, testkit};
    use chorus_store::Store;

    /// A store holding one block (the genesis), and that genesis.
    fn store_of_one() -> (SignedEvent, Store) {
        let admin = chorus_core::crypto::Keypair::from_seed([1; 32]);
        let genesis = testkit::genesis(&admin, &[], "counter/1", 64);
        let store = Store::create_in_memory(&genesis, "counter/1").unwrap();
        (genesis, store)
    }

    /// The queue is the bound: while the reader is stuck on one answer, [`PAGE_QUEUE`] more
    /// pages wait, the next request is given back (answered "busy" by the actor), and every
    /// queued page is still answered once the swarm takes answers again.
    #[test]
    fn a_full_queue_gives_the_request_back_and_nothing_queued_is_lost() {
        let (genesis, store) = store_of_one();
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let answered = Arc::new(std::sync::Mutex::new(vec![]));
        let log = answered.clone();
        let mut reader = PageReader::spawn(store.reader(), move |id: u64, resp, _: &AtomicBool| {
            gate_rx.recv().ok();
            log.lock().unwrap().push((id, resp));
            true
        })
        .unwrap();
        let plan = || PagePlan::Ids(vec![genesis.id(), EventId([7; 32])]);
        // The first is taken by the thread (stuck on its answer); then the queue fills.
        reader.serve(0, plan()).unwrap();
        let mut queued = 1;
        let given_back = loop {
            match reader.serve(queued, plan()) {
                Ok(()) => queued += 1,
                Err(id) => break id,
            }
            assert!(queued <= PAGE_QUEUE as u64 + 1, "the queue has no bound");
        };
        assert!(
            queued >= PAGE_QUEUE as u64,
            "refused before the queue was full"
        );
        assert_eq!(given_back, queued);
        assert_eq!(reader.stats.busy.load(Ordering::Relaxed), 1);
        for _ in 0..queued {
            gate_tx.send(()).unwrap();
        }
        let t0 = std::time::Instant::now();
        while (answered.lock().unwrap().len() as u64) < queued {
            assert!(
                t0.elapsed().as_secs() < 10,
                "queued pages were not answered"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        reader.stop();
        let answered = answered.lock().unwrap();
        assert_eq!(answered.len() as u64, queued);
        for (i, (id, resp)) in answered.iter().enumerate() {
            assert_eq!(*id, i as u64);
            // The genesis is found in the store; the unknown id is left out.
            let SyncResponse::Blocks(b) = resp else {
                panic!("{resp:?}");
            };
            assert_eq!(b.blocks.len(), 1);
        }
    }

    /// A reader whose answer cannot be taken (the swarm's queue full, and the swarm itself
    /// waiting) still stops when asked: `respond` sees the flag and gives up.
    #[test]
    fn stop_returns_while_an_answer_waits_for_a_full_queue() {
        let (genesis, store) = store_of_one();
        let mut reader = PageReader::spawn(store.reader(), |_: u64, _, stop: &AtomicBool| {
            // A queue that never drains.
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            false
        })
        .unwrap();
        for i in 0..4 {
            let _ = reader.serve(i, PagePlan::Ids(vec![genesis.id()]));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        reader.stop(); // returns: the test would hang otherwise
        assert!(reader.stats.served.load(Ordering::Relaxed) >= 1);
    }
}
