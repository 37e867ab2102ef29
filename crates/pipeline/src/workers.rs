//! The long-running pipeline: one dispatcher and N workers over the spool.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mailroom_spool::SpoolId;
use mailroom_store::Store;
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio::time::Instant;

use crate::{process_batch, Outcome, PipelineError, Processed, Settings, MAX_BATCH};

/// How often the dispatcher looks at the spool even without a notification.
const RECHECK: Duration = Duration::from_secs(2);
/// First retry delay after an error; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long a worker waits for more entries to commit with the first one it took.
const BATCH_WAIT: Duration = Duration::from_millis(10);

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
/// once, and hands ids over a bounded channel to `workers` tasks. Each takes a batch (the first
/// id and what else arrives within 10 ms, up to [`MAX_BATCH`]) and runs
/// [`process_batch`] on it, on a thread of its own at a lower CPU priority: one store
/// transaction and one flush for the batch. When idle it waits for
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
    // Room for a full batch per worker, so that a worker gathering one finds it queued.
    let (work_tx, work_rx) = mpsc::channel::<SpoolId>(workers * MAX_BATCH);
    let work_rx = Arc::new(Mutex::new(work_rx));
    // Each worker reports each id it took exactly once; at most `2 * workers * MAX_BATCH` ids
    // are out (queued or in a worker's batch).
    let (done_tx, done_rx) = mpsc::channel::<(SpoolId, bool)>(workers * MAX_BATCH * 2 + 1);

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
    let thread = match BatchThread::start(n, store) {
        Ok(thread) => thread,
        Err(e) => {
            tracing::error!(worker = n, error = %e, "cannot start a pipeline thread");
            return;
        }
    };
    loop {
        if stopping(&shutdown) {
            break;
        }
        let batch = {
            let mut rx = work_rx.lock().await;
            let first = tokio::select! {
                biased;
                _ = shutdown.changed() => None,
                id = rx.recv() => id,
            };
            match first {
                Some(id) => Some(gather(id, &mut rx, &mut shutdown).await),
                None => None,
            }
        };
        let Some(batch) = batch else {
            if stopping(&shutdown) || work_rx.lock().await.is_closed() {
                break;
            }
            continue;
        };
        if stopping(&shutdown) {
            // Not started: they stay in the spool for the next start.
            for id in batch {
                let _ = done_tx.send((id, true)).await;
            }
            break;
        }
        // The settings in force now: a config reload applies to the next batch.
        let current = settings.borrow().clone();
        let results = thread.run(batch.clone(), current).await;
        let reports: Vec<(SpoolId, bool)> = match results {
            Ok(results) => results
                .into_iter()
                .map(|(id, result)| match result {
                    Ok(processed) => {
                        count(&processed);
                        (id, true)
                    }
                    Err(e) => {
                        ERRORS.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(worker = n, spool_id = id.0, error = %e, "processing failed");
                        (id, false)
                    }
                })
                .collect(),
            Err(e) => {
                let e = PipelineError::Worker(e);
                batch
                    .into_iter()
                    .map(|id| {
                        ERRORS.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(worker = n, spool_id = id.0, error = %e, "processing failed");
                        (id, false)
                    })
                    .collect()
            }
        };
        for report in reports {
            if done_tx.send(report).await.is_err() {
                // The dispatcher is gone (shutting down); nothing to report to.
                break;
            }
        }
    }
}

/// What a [`BatchThread`] answers: each id's result, or why the batch did not run.
type BatchResults = Result<Vec<(SpoolId, Result<Processed, PipelineError>)>, String>;
type Job = (Vec<SpoolId>, Arc<Settings>, oneshot::Sender<BatchResults>);

/// The thread that runs one worker's batches, at a lower CPU priority ([`PIPELINE_NICE`]).
///
/// Accepting mail (SMTP sessions, the store's flusher) keeps the normal priority, so that under
/// load a sender is answered first and the pipeline takes the CPU time that is left; its backlog
/// stays in the spool, which is bounded (`store.spool_max_entries`, then `451 4.3.2`). A thread
/// of its own, because a niced thread of tokio's blocking pool would stay niced for whatever
/// else runs there later (API requests, the control socket), and only a privileged process may
/// lower the value again.
struct BatchThread {
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl BatchThread {
    fn start(n: usize, store: Store) -> std::io::Result<BatchThread> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let handle = std::thread::Builder::new()
            .name(format!("mailroom-pipeline-{n}"))
            .spawn(move || {
                lower_priority();
                for (ids, settings, reply) in rx {
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        process_batch(&store, &ids, &settings)
                    }));
                    let _ = reply.send(ran.map_err(|panic| {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        format!("panicked: {what}")
                    }));
                }
            })?;
        Ok(BatchThread {
            jobs: Some(jobs),
            handle: Some(handle),
        })
    }

    /// Run [`process_batch`] on the thread; resolves when it is done.
    async fn run(&self, ids: Vec<SpoolId>, settings: Arc<Settings>) -> BatchResults {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send((ids, settings, reply)).is_ok());
        if !sent {
            return Err("the pipeline thread is gone".into());
        }
        answer
            .await
            .map_err(|_| "the pipeline thread is gone".to_string())?
    }
}

impl Drop for BatchThread {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop. A batch still running (the worker's
        // future was dropped while awaiting it) is finished first, and with it the thread's
        // hold on the store.
        drop(self.jobs.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// The nice value of the pipeline threads (0 is normal, 19 the lowest priority).
const PIPELINE_NICE: i32 = 10;

/// Give the calling thread the nice value [`PIPELINE_NICE`] (Linux sets it per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
        let failed = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, PIPELINE_NICE) != 0
        };
        if failed {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "cannot lower the pipeline thread's priority"
            );
        }
    }
}

/// A batch for one worker: `first`, and what else arrives within [`BATCH_WAIT`] of it, up to
/// [`MAX_BATCH`] ids. Under load the ids are already queued and the batch fills at once; a
/// lone message waits [`BATCH_WAIT`] at most.
async fn gather(
    first: SpoolId,
    rx: &mut mpsc::Receiver<SpoolId>,
    shutdown: &mut watch::Receiver<bool>,
) -> Vec<SpoolId> {
    let mut batch = vec![first];
    let deadline = Instant::now() + BATCH_WAIT;
    while batch.len() < MAX_BATCH {
        if let Ok(id) = rx.try_recv() {
            batch.push(id);
            continue;
        }
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            next = tokio::time::timeout_at(deadline, rx.recv()) => match next {
                Ok(Some(id)) => batch.push(id),
                // The wait is over, or no more work comes.
                Ok(None) | Err(_) => break,
            },
        }
    }
    batch
}

fn count(processed: &Processed) {
    match processed.outcome {
        Outcome::Failed { .. } => FAILED.fetch_add(1, Ordering::Relaxed),
        _ => PROCESSED.fetch_add(1, Ordering::Relaxed),
    };
}
