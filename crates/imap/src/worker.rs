//! Account workers: connect, sync, wait (IDLE or poll), and on any error back off and start
//! again. [`Fetchers`] runs one per configured account.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::connect::{connect, timed, Session};
use crate::error::ImapError;
use crate::status::{now_secs, AccountState, AccountStatus, StatusCell};
use crate::sync::{capabilities, select, sync};
use crate::{AccountConfig, ImapStore};

/// What [`sync_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// Messages newly spooled.
    pub spooled: u64,
    /// Messages recognised as spooled before (and marked on the server now).
    pub duplicates: u64,
    /// Messages left on the server because they are larger than the limit.
    pub skipped: u64,
    /// The mailbox's UIDVALIDITY.
    pub uid_validity: u32,
    /// The last UID processed.
    pub last_uid: u32,
}

/// Whether the worker should stop: asked to, or nobody is left to ask.
fn stopping(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Resolves when `stop` says stop (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn logout(session: &mut Session, config: &AccountConfig) {
    let _ = timed(config.limits.io_timeout, "LOGOUT", async {
        session
            .logout()
            .await
            .map_err(|e| ImapError::protocol("LOGOUT", e))
    })
    .await;
}

/// Connect, sync everything new once, log out. For `mailroom imap sync NAME` when no server
/// runs; `status` shows the progress meanwhile.
pub async fn sync_once<S: ImapStore>(
    config: &AccountConfig,
    store: &S,
    status: &StatusCell,
) -> Result<SyncReport, ImapError> {
    let (_keep, stop) = watch::channel(false);
    status.set(AccountState::Connecting);
    let mut session = connect(config).await?;
    let caps = capabilities(&mut session, config).await?;
    status.update(|s| s.idle_supported = Some(caps.idle));
    let mut state = select(&mut session, config, store).await?;
    status.set(AccountState::Syncing);
    let counts = sync(&mut session, config, store, status, caps, &mut state, &stop).await?;
    logout(&mut session, config).await;
    status.set(AccountState::Stopped);
    Ok(SyncReport {
        spooled: counts.spooled,
        duplicates: counts.duplicates,
        skipped: counts.skipped,
        uid_validity: state.uid_validity,
        last_uid: state.last_uid,
    })
}

/// Wait in IDLE until the server reports a change, `idle_refresh` passes, `wake` is notified
/// or `stop` is set; then end the IDLE and give the session back.
async fn idle(
    session: Session,
    config: &AccountConfig,
    wake: &Notify,
    stop: &mut watch::Receiver<bool>,
) -> Result<Session, ImapError> {
    let limit = config.limits.io_timeout;
    let mut handle = session.idle();
    timed(limit, "IDLE", async {
        handle
            .init()
            .await
            .map_err(|e| ImapError::protocol("IDLE", e))
    })
    .await?;
    let outcome = {
        let (wait, _interrupt) = handle.wait_with_timeout(config.limits.idle_refresh);
        tokio::select! {
            r = wait => Some(r),
            // The library's own timeout restarts at every keepalive: refresh on our clock.
            _ = tokio::time::sleep(config.limits.idle_refresh) => None,
            _ = wake.notified() => None,
            _ = stopped(stop) => None,
        }
    };
    if let Some(Err(e)) = outcome {
        return Err(ImapError::protocol("IDLE", e));
    }
    timed(limit, "DONE", async {
        handle
            .done()
            .await
            .map_err(|e| ImapError::protocol("IDLE DONE", e))
    })
    .await
}

/// One connection's life: connect, sync, wait, sync... until an error or `stop`.
async fn connected<S: ImapStore>(
    config: &AccountConfig,
    store: &S,
    status: &StatusCell,
    wake: &Notify,
    stop: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Result<(), ImapError> {
    let mut session = connect(config).await?;
    let caps = capabilities(&mut session, config).await?;
    status.update(|s| s.idle_supported = Some(caps.idle));
    let mut state = select(&mut session, config, store).await?;
    tracing::info!(account = %config.name, uid_validity = state.uid_validity, last_uid = state.last_uid, idle = caps.idle, "IMAP account connected");
    let mut first = true;
    loop {
        status.set(AccountState::Syncing);
        let counts = sync(&mut session, config, store, status, caps, &mut state, stop).await?;
        if first {
            first = false;
            backoff.reset();
            status.update(|s| {
                s.failures = 0;
                s.last_error = None;
                s.retry_at = None;
            });
        }
        if counts.spooled + counts.duplicates + counts.skipped > 0 {
            tracing::info!(account = %config.name, spooled = counts.spooled, duplicates = counts.duplicates, skipped = counts.skipped, last_uid = state.last_uid, "IMAP sync done");
        }
        if stopping(stop) {
            logout(&mut session, config).await;
            return Ok(());
        }
        if caps.idle {
            status.set(AccountState::Idle);
            session = idle(session, config, wake, stop).await?;
        } else {
            status.set(AccountState::Polling);
            tokio::select! {
                _ = tokio::time::sleep(config.poll_interval) => {}
                _ = wake.notified() => {}
                _ = stopped(stop) => {}
            }
            // Let the server tell us about new messages before we search.
            timed(config.limits.io_timeout, "NOOP", async {
                session
                    .noop()
                    .await
                    .map_err(|e| ImapError::protocol("NOOP", e))
            })
            .await?;
        }
        if stopping(stop) {
            logout(&mut session, config).await;
            return Ok(());
        }
    }
}

/// The worker of one account: runs until `stop`.
async fn run_account<S: ImapStore>(
    config: AccountConfig,
    store: Arc<S>,
    status: Arc<StatusCell>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(config.limits.backoff_base, config.limits.backoff_max);
    while !stopping(&stop) {
        status.update(|s| {
            s.state = AccountState::Connecting;
            s.retry_at = None;
        });
        let result = connected(&config, &*store, &status, &wake, &mut stop, &mut backoff).await;
        match result {
            Ok(()) | Err(ImapError::Stopped) => break,
            Err(e) => {
                let delay = backoff.fail();
                let text = e.to_string();
                tracing::warn!(account = %config.name, error = %text, failures = backoff.failures(), retry_in_ms = delay.as_millis() as u64, "IMAP account failed; retrying after a pause");
                let now = now_secs();
                status.update(|s| {
                    s.state = AccountState::Backoff;
                    s.last_error = Some(text);
                    s.last_error_at = Some(now);
                    s.failures = backoff.failures();
                    s.errors_total += 1;
                    s.retry_at = Some(now + delay.as_secs());
                    s.progress = None;
                });
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = wake.notified() => {}
                    _ = stopped(&mut stop) => {}
                }
            }
        }
    }
    status.update(|s| {
        s.state = AccountState::Stopped;
        s.progress = None;
    });
    tracing::info!(account = %config.name, "IMAP account stopped");
}

struct Running {
    config: AccountConfig,
    status: Arc<StatusCell>,
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The running account workers. Must be used inside a tokio runtime.
pub struct Fetchers<S: ImapStore> {
    store: Arc<S>,
    running: BTreeMap<String, Running>,
    /// How long [`Fetchers::shutdown`] and replaced workers get to finish their batch.
    grace: Duration,
}

impl<S: ImapStore> Fetchers<S> {
    /// No workers yet; `grace` is how long a stopped worker may take to finish its batch
    /// before it is aborted (safe either way: an unconfirmed batch is fetched again).
    pub fn new(store: Arc<S>, grace: Duration) -> Fetchers<S> {
        Fetchers {
            store,
            running: BTreeMap::new(),
            grace,
        }
    }

    fn start(&mut self, config: AccountConfig) {
        let status = Arc::new(StatusCell::new(&config.name));
        let wake = Arc::new(Notify::new());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_account(
            config.clone(),
            self.store.clone(),
            status.clone(),
            wake.clone(),
            stop_rx,
        ));
        self.running.insert(
            config.name.clone(),
            Running {
                config,
                status,
                wake,
                stop,
                task,
            },
        );
    }

    /// Stop a worker; it is given `grace` to finish, then aborted (in the background).
    fn retire(&self, r: Running) {
        let _ = r.stop.send(true);
        let grace = self.grace;
        let mut task = r.task;
        tokio::spawn(async move {
            if tokio::time::timeout(grace, &mut task).await.is_err() {
                task.abort();
            }
        });
    }

    /// Run exactly `accounts`: start new ones, stop removed ones, restart changed ones; leave
    /// unchanged ones alone. Returns the names started, stopped and restarted.
    pub fn apply(
        &mut self,
        accounts: Vec<AccountConfig>,
    ) -> (Vec<String>, Vec<String>, Vec<String>) {
        let (mut started, mut stopped, mut restarted) = (Vec::new(), Vec::new(), Vec::new());
        let wanted: BTreeMap<String, AccountConfig> =
            accounts.into_iter().map(|a| (a.name.clone(), a)).collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| !wanted.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(r) = self.running.remove(&name) {
                self.retire(r);
                stopped.push(name);
            }
        }
        for (name, config) in wanted {
            match self.running.get(&name) {
                Some(r) if r.config == config => {}
                Some(_) => {
                    if let Some(r) = self.running.remove(&name) {
                        self.retire(r);
                    }
                    self.start(config);
                    restarted.push(name);
                }
                None => {
                    self.start(config);
                    started.push(name);
                }
            }
        }
        (started, stopped, restarted)
    }

    /// Every account's status, by name.
    pub fn status(&self) -> Vec<AccountStatus> {
        self.running.values().map(|r| r.status.snapshot()).collect()
    }

    /// Make account `name` look for new mail now (ending its IDLE, poll wait or backoff);
    /// its status at this moment, or `None` if there is no such account.
    pub fn sync_now(&self, name: &str) -> Option<AccountStatus> {
        let r = self.running.get(name)?;
        let snapshot = r.status.snapshot();
        r.wake.notify_one();
        Some(snapshot)
    }

    /// Stop every worker: each finishes its batch within the grace period, or is aborted.
    pub async fn shutdown(mut self) {
        let running = std::mem::take(&mut self.running);
        for r in running.values() {
            let _ = r.stop.send(true);
        }
        let deadline = tokio::time::Instant::now() + self.grace;
        for (name, r) in running {
            let mut task = r.task;
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(account = %name, "IMAP account did not stop in time; aborted (its unconfirmed batch is fetched again at the next start)");
                task.abort();
            }
        }
    }
}
