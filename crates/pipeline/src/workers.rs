//! The long-running pipeline: one dispatcher and N workers over the spool.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mailroom_spool::SpoolId;
use mailroom_store::Store;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::time::Instant;

use crate::{process_entry, Outcome, PipelineError, Processed, Settings};

/// How often the dispatcher looks at the spool even without a notification.
const RECHECK: Duration = Duration::from_secs(2);
/// First retry delay after an error; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

static PROCESSED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);
static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);

/// Counters of the workers in this process (since it started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Entries processed (stored, orphaned, or found already processed).
    pub processed: u64,
    /// Entries moved to the failed list.
    pub failed: u64,
    /// Errors (the entry stayed in the spool for a retry).
    pub errors: u64,
    /// Entries handed to a worker and not finished yet.
    pub in_flight: u64,
}

/// A snapshot of the workers' counters.
pub fn worker_stats() -> WorkerStats {
    WorkerStats {
        processed: PROCESSED.load(Ordering::Relaxed),
        failed: FAILED.load(Ordering::Relaxed),
        errors: ERRORS.load(Ordering::Relaxed),
        in_flight: IN_FLIGHT.load(Ordering::Relaxed),
    }
}

/// Retry state of an entry whose processing failed.
struct Retry {
    failures: u32,
    not_before: Instant,
}

/// Run the pipeline until `shutdown` turns true (or its sender is dropped).
///
/// One dispatcher lists the spool ([`Store::spool_pending`], at start too, so entries left by
/// a crash are picked up), tracks the ids in flight so that no entry is processed twice at
/// once, and hands ids over a bounded channel to `workers` tasks, each of which runs
/// [`process_entry`] in [`tokio::task::spawn_blocking`]. When idle it waits for
/// [`Store::spool_notify`], and looks again every 2 s anyway. An entry whose processing fails
/// stays in the spool and is retried with exponential backoff (1 s doubling to 5 min); errors
/// are logged with the spool id only. On shutdown no new entry is started; the ones being
/// processed are finished before this returns.
pub async fn run_workers(
    store: Store,
    workers: usize,
    settings: watch::Receiver<Arc<Settings>>,
    shutdown: watch::Receiver<bool>,
) {
    let workers = workers.max(1);
    let (work_tx, work_rx) = mpsc::channel::<SpoolId>(workers);
    let work_rx = Arc::new(Mutex::new(work_rx));
    // Each worker reports each id it took exactly once; at most `2 * workers` ids are out.
    let (done_tx, done_rx) = mpsc::channel::<(SpoolId, bool)>(workers * 2 + 1);

    let mut handles = Vec::with_capacity(workers);
    for n in 0..workers {
        handles.push(tokio::spawn(worker(
            n,
            store.clone(),
            settings.clone(),
            work_rx.clone(),
            done_tx.clone(),
            shutdown.clone(),
        )));
    }
    drop(done_tx);

    let left = dispatcher(store, work_tx, done_rx, shutdown).await;

    for h in handles {
        if let Err(e) = h.await {
            tracing::error!(error = %e, "pipeline worker task failed");
        }
    }
    // Entries handed out whose end the dispatcher did not see any more.
    IN_FLIGHT.fetch_sub(left as u64, Ordering::Relaxed);
    tracing::info!("pipeline workers stopped");
}

fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

async fn dispatcher(
    store: Store,
    work_tx: mpsc::Sender<SpoolId>,
    mut done_rx: mpsc::Receiver<(SpoolId, bool)>,
    mut shutdown: watch::Receiver<bool>,
) -> usize {
    let notify = store.spool_notify();
    let mut in_flight: HashSet<SpoolId> = HashSet::new();
    let mut retries: HashMap<SpoolId, Retry> = HashMap::new();
    let mut listing_failures = 0u32;

    'run: loop {
        if stopping(&shutdown) {
            break;
        }
        // Register for a wake-up before listing, so that an append in between is not missed.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        let listed = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.spool_pending()).await
        };
        let mut next_wake = Instant::now() + RECHECK;
        match listed {
            Ok(Ok(pending)) => {
                listing_failures = 0;
                let now = Instant::now();
                let pending_set: HashSet<SpoolId> = pending.iter().copied().collect();
                retries.retain(|id, _| pending_set.contains(id));
                for id in pending {
                    if in_flight.contains(&id) {
                        continue;
                    }
                    if let Some(r) = retries.get(&id) {
                        if r.not_before > now {
                            next_wake = next_wake.min(r.not_before);
                            continue;
                        }
                    }
                    // Wait for room in the channel, handling completions meanwhile.
                    loop {
                        tokio::select! {
                            biased;
                            _ = shutdown.changed() => {
                                if stopping(&shutdown) { break 'run; }
                            }
                            Some(done) = done_rx.recv() => {
                                finished(done, &mut in_flight, &mut retries);
                            }
                            permit = work_tx.reserve() => {
                                match permit {
                                    Ok(permit) => {
                                        in_flight.insert(id);
                                        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
                                        permit.send(id);
                                        break;
                                    }
                                    // All workers are gone.
                                    Err(_) => break 'run,
                                }
                            }
                        }
                    }
                }
            }
            Ok(Err(e)) => {
                listing_failures = listing_failures.saturating_add(1);
                tracing::error!(error = %e, "listing the spool failed");
                next_wake = Instant::now() + backoff(listing_failures);
            }
            Err(e) => {
                listing_failures = listing_failures.saturating_add(1);
                tracing::error!(error = %e, "listing the spool panicked");
                next_wake = Instant::now() + backoff(listing_failures);
            }
        }

        // Idle: wait for an append, a completion (which may free a retry or reveal more work),
        // the periodic re-check, or shutdown.
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                if stopping(&shutdown) { break 'run; }
            }
            Some(done) = done_rx.recv() => {
                finished(done, &mut in_flight, &mut retries);
                // Drain whatever else finished, then look at the spool again.
                while let Ok(done) = done_rx.try_recv() {
                    finished(done, &mut in_flight, &mut retries);
                }
            }
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(next_wake) => {}
        }
    }
    // Closing the channel tells the workers that no more work comes; the entries still queued
    // in it stay in the spool for the next start.
    drop(work_tx);
    in_flight.len()
}

fn finished(
    (id, ok): (SpoolId, bool),
    in_flight: &mut HashSet<SpoolId>,
    retries: &mut HashMap<SpoolId, Retry>,
) {
    if in_flight.remove(&id) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
    if ok {
        retries.remove(&id);
    } else {
        let r = retries.entry(id).or_insert(Retry {
            failures: 0,
            not_before: Instant::now(),
        });
        r.failures = r.failures.saturating_add(1);
        let delay = backoff(r.failures);
        r.not_before = Instant::now() + delay;
        tracing::warn!(
            spool_id = id.0,
            failures = r.failures,
            retry_in_s = delay.as_secs(),
            "entry kept in the spool for a retry"
        );
    }
}

fn backoff(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(1u32 << shift).min(MAX_BACKOFF)
}

async fn worker(
    n: usize,
    store: Store,
    settings: watch::Receiver<Arc<Settings>>,
    work_rx: Arc<Mutex<mpsc::Receiver<SpoolId>>>,
    done_tx: mpsc::Sender<(SpoolId, bool)>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if stopping(&shutdown) {
            break;
        }
        let next = {
            let mut rx = work_rx.lock().await;
            tokio::select! {
                biased;
                _ = shutdown.changed() => None,
                id = rx.recv() => id,
            }
        };
        let Some(id) = next else {
            if stopping(&shutdown) || work_rx.lock().await.is_closed() {
                break;
            }
            continue;
        };
        if stopping(&shutdown) {
            // Not started: it stays in the spool for the next start.
            let _ = done_tx.send((id, true)).await;
            break;
        }
        let result = {
            let store = store.clone();
            // The settings in force now: a config reload applies to the next message.
            let settings = settings.borrow().clone();
            tokio::task::spawn_blocking(move || process_entry(&store, id, &settings)).await
        };
        let ok = match result {
            Ok(Ok(processed)) => {
                count(&processed);
                true
            }
            Ok(Err(e)) => {
                ERRORS.fetch_add(1, Ordering::Relaxed);
                tracing::error!(worker = n, spool_id = id.0, error = %e, "processing failed");
                false
            }
            Err(e) => {
                ERRORS.fetch_add(1, Ordering::Relaxed);
                let e = PipelineError::Worker(e.to_string());
                tracing::error!(worker = n, spool_id = id.0, error = %e, "processing failed");
                false
            }
        };
        if done_tx.send((id, ok)).await.is_err() {
            // The dispatcher is gone (shutting down); nothing to report to.
            if stopping(&shutdown) {
                break;
            }
        }
    }
}

fn count(processed: &Processed) {
    match processed.outcome {
        Outcome::Failed { .. } => FAILED.fetch_add(1, Ordering::Relaxed),
        _ => PROCESSED.fetch_add(1, Ordering::Relaxed),
    };
}
