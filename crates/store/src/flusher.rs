//! Group commit: one thread makes writes durable for every waiter at once.
//!
//! A writer inserts first and then enqueues a waiter, so the flush that completes it starts
//! after its insert. The thread takes every pending waiter, calls `Db::flush` (which fsyncs)
//! once, and completes them all: concurrent SMTP sessions share one fsync.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use tokio::sync::{oneshot, Notify};

use crate::{Result, StoreError};

type FlushResult = std::result::Result<(), String>;

enum Reply {
    Async(oneshot::Sender<FlushResult>),
    Blocking(mpsc::SyncSender<FlushResult>),
}

struct Waiter {
    reply: Reply,
    /// Whether this waiter appended to the spool (the pipeline is woken after the flush).
    spool_append: bool,
}

/// The group-commit flusher of one store. Dropping it stops and joins the thread.
pub(crate) struct Flusher {
    tx: Option<mpsc::Sender<Waiter>>,
    thread: Option<JoinHandle<()>>,
    flushes: Arc<AtomicU64>,
}

/// A pending durable-write confirmation for async callers.
pub(crate) struct AsyncWait(oneshot::Receiver<FlushResult>);

impl AsyncWait {
    /// Resolves once the flush that covers this write is done.
    pub(crate) async fn wait(self) -> Result<()> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Io(format!("flush failed: {e}"))),
            Err(_) => Err(StoreError::Io("the store is closing".into())),
        }
    }
}

impl Flusher {
    /// Start the flusher thread for `db`; `notify` is woken after each flush that made a spool
    /// append durable.
    /// `log` is sled's log file (`db/db`), synced after every flush.
    pub(crate) fn start(
        db: sled::Db,
        log: Option<std::fs::File>,
        notify: Arc<Notify>,
    ) -> Result<Flusher> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let flushes = Arc::new(AtomicU64::new(0));
        let counter = flushes.clone();
        let thread = std::thread::Builder::new()
            .name("mailroom-store-flush".into())
            .spawn(move || run(db, log, rx, counter, notify))
            .map_err(|e| StoreError::Io(format!("cannot start the flusher thread: {e}")))?;
        Ok(Flusher {
            tx: Some(tx),
            thread: Some(thread),
            flushes,
        })
    }

    fn send(&self, waiter: Waiter) -> Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(waiter).ok())
            .ok_or_else(|| StoreError::Io("the store is closing".into()))
    }

    /// Wait (blocking the thread) until a flush that starts after this call is done.
    pub(crate) fn durable_blocking(&self, spool_append: bool) -> Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Waiter {
            reply: Reply::Blocking(tx),
            spool_append,
        })?;
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Io(format!("flush failed: {e}"))),
            Err(_) => Err(StoreError::Io("the store is closing".into())),
        }
    }

    /// Ask for a flush that starts after this call; await the result.
    pub(crate) fn durable_async(&self, spool_append: bool) -> Result<AsyncWait> {
        let (tx, rx) = oneshot::channel();
        self.send(Waiter {
            reply: Reply::Async(tx),
            spool_append,
        })?;
        Ok(AsyncWait(rx))
    }

    /// How many flushes the thread has done.
    pub(crate) fn count(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it has served everything queued.
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the store flusher thread panicked");
            }
        }
    }
}

fn run(
    db: sled::Db,
    log: Option<std::fs::File>,
    rx: mpsc::Receiver<Waiter>,
    flushes: Arc<AtomicU64>,
    notify: Arc<Notify>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        // sled 0.34 makes its log durable with sync_file_range(2) on Linux, which neither
        // flushes the disk's write cache nor the file's size: an fdatasync of the log file
        // after the flush does (fdatasync acts on the file, whatever the descriptor).
        let result: FlushResult =
            db.flush()
                .map(|_| ())
                .map_err(|e| e.to_string())
                .and_then(|()| match &log {
                    Some(f) => f
                        .sync_data()
                        .map_err(|e| format!("fdatasync of the log: {e}")),
                    None => Ok(()),
                });
        flushes.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = &result {
            tracing::error!(error = %e, waiters = batch.len(), "store flush failed");
        }
        let wake = result.is_ok() && batch.iter().any(|w| w.spool_append);
        for waiter in batch {
            match waiter.reply {
                Reply::Async(tx) => {
                    let _ = tx.send(result.clone());
                }
                Reply::Blocking(tx) => {
                    let _ = tx.send(result.clone());
                }
            }
        }
        if wake {
            // Wake every worker waiting now, and leave a permit for one that is about to wait.
            notify.notify_waiters();
            notify.notify_one();
        }
    }
}
