//! What each account is doing, shared with `mailroom imap status`.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// An account's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    /// Connecting and logging in.
    Connecting,
    /// Fetching new messages.
    Syncing,
    /// Waiting for new mail with `IDLE`.
    Idle,
    /// Waiting to poll again (the server has no `IDLE`).
    Polling,
    /// The last attempt failed; waiting before the next (see `last_error`, `retry_at`).
    Backoff,
    /// Stopped (shutdown, or removed from the config).
    Stopped,
}

impl AccountState {
    /// The name shown by `imap status`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountState::Connecting => "connecting",
            AccountState::Syncing => "syncing",
            AccountState::Idle => "idle",
            AccountState::Polling => "polling",
            AccountState::Backoff => "backoff",
            AccountState::Stopped => "stopped",
        }
    }
}

/// Progress of the sync under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SyncProgress {
    /// Messages handled so far in this sync.
    pub done: u64,
    /// Messages above the last processed UID when the sync began.
    pub total: u64,
}

/// One account's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountStatus {
    /// The account's name.
    pub name: String,
    /// What it is doing.
    pub state: AccountState,
    /// The last error, if the last attempt failed (no secret in it).
    pub last_error: Option<String>,
    /// When `last_error` happened, Unix seconds.
    pub last_error_at: Option<u64>,
    /// When the next attempt is due while in backoff, Unix seconds.
    pub retry_at: Option<u64>,
    /// Failed attempts in a row.
    pub failures: u32,
    /// Failed attempts since start.
    pub errors_total: u64,
    /// Whether the server offers `IDLE` (known once logged in).
    pub idle_supported: Option<bool>,
    /// The mailbox's UIDVALIDITY.
    pub uid_validity: Option<u32>,
    /// The last UID processed.
    pub last_uid: Option<u32>,
    /// Messages newly spooled since start.
    pub spooled: u64,
    /// Messages fetched again and recognised as spooled before (not spooled twice).
    pub duplicates: u64,
    /// Messages left on the server because they are larger than the size limit.
    pub skipped: u64,
    /// Completed syncs since start.
    pub syncs: u64,
    /// The sync under way, if any.
    pub progress: Option<SyncProgress>,
    /// When the last sync completed, Unix seconds.
    pub last_sync_at: Option<u64>,
}

impl AccountStatus {
    /// A fresh status for account `name`.
    pub fn new(name: &str) -> AccountStatus {
        AccountStatus {
            name: name.to_owned(),
            state: AccountState::Connecting,
            last_error: None,
            last_error_at: None,
            retry_at: None,
            failures: 0,
            errors_total: 0,
            idle_supported: None,
            uid_validity: None,
            last_uid: None,
            spooled: 0,
            duplicates: 0,
            skipped: 0,
            syncs: 0,
            progress: None,
            last_sync_at: None,
        }
    }
}

/// An account's status, shared between its worker and whoever asks.
#[derive(Debug)]
pub struct StatusCell(Mutex<AccountStatus>);

impl StatusCell {
    /// A cell for account `name`.
    pub fn new(name: &str) -> StatusCell {
        StatusCell(Mutex::new(AccountStatus::new(name)))
    }

    /// A copy of the status now.
    pub fn snapshot(&self) -> AccountStatus {
        match self.0.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Change the status.
    pub fn update(&self, f: impl FnOnce(&mut AccountStatus)) {
        match self.0.lock() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Set the state.
    pub fn set(&self, state: AccountState) {
        self.update(|s| s.state = state);
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
