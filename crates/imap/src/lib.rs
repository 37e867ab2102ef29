//! IMAP ingestion: mailroom pulls mail from existing mailboxes into the same durable spool and
//! pipeline as SMTP.
//!
//! Each configured account runs as its own task ([`Fetchers`]): connect (implicit TLS,
//! STARTTLS or plaintext), log in (password, or `AUTHENTICATE XOAUTH2` with a bearer token),
//! `SELECT` the mailbox, compare its UIDVALIDITY with the stored [`SyncState`], then fetch every
//! message above the last processed UID in bounded batches ([`Limits`]). A message is handed to
//! [`ImapStore::append`], and only once that resolves (the spool write is durable) is it flagged
//! `\Seen`, moved or deleted on the server; then the last UID is recorded. After a sync the
//! account waits with `IDLE` when the server has it (re-issued every [`Limits::idle_refresh`]),
//! else polls. Errors end the connection; the account reconnects with exponential backoff and
//! jitter, and one account's trouble never touches another's.
//!
//! Exactly once: [`ImapStore::append`] must refuse (as [`Appended::Duplicate`]) a message whose
//! bytes this account spooled before, in the same durable write as the spool entry. Then a
//! crash anywhere, a lost state, or a UIDVALIDITY change (the mailbox is read again from the
//! first message) neither loses nor duplicates mail.
//!
//! Like `mailroom-smtp`, this crate knows nothing of tickets or storage: its only mailroom
//! dependency is `mailroom-spool`.

#![warn(missing_docs)]

mod backoff;
mod connect;
mod error;
mod status;
mod sync;
mod worker;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use mailroom_spool::{Envelope, SpoolError, SpoolId};

pub use backoff::Backoff;
pub use error::ImapError;
pub use status::{AccountState, AccountStatus, StatusCell, SyncProgress};
pub use sync::uid_set;
pub use worker::{sync_once, Fetchers, SyncReport};

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS from the first byte (IMAPS).
    Implicit,
    /// A plain connection upgraded with `STARTTLS` before login.
    StartTls,
    /// No TLS.
    None,
}

/// Where the account's secret comes from. Only the source is kept; the secret itself is read
/// at each connection and dropped after login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// A password in this environment variable.
    PasswordEnv(String),
    /// A password in this file (a trailing newline is ignored).
    PasswordFile(PathBuf),
    /// An OAuth 2 bearer token in this file, for `AUTHENTICATE XOAUTH2`.
    Xoauth2TokenFile(PathBuf),
}

/// What happens to a message on the server once it is durably spooled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    /// Flag it `\Seen`.
    Seen,
    /// Move it to this mailbox (`MOVE`, or `COPY` + `\Deleted` + `EXPUNGE` without it).
    Move(String),
    /// Flag it `\Deleted` and expunge it.
    Delete,
}

/// Bounds on one account's work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most messages fetched (and appended, and marked) in one batch.
    pub batch_messages: usize,
    /// Most message bytes held in memory in one batch (a single bigger message, up to
    /// `max_message_size`, is a batch of its own).
    pub batch_bytes: u64,
    /// UIDs covered by one `UID SEARCH` (bounds the size of its answer).
    pub search_window: u32,
    /// Larger messages are left on the server, not fetched (reported, logged by UID).
    pub max_message_size: u64,
    /// Longest wait for any one server reply (and for the TCP/TLS connection).
    pub io_timeout: Duration,
    /// `IDLE` is ended and re-issued this often (RFC 2177 asks for less than 29 minutes); each
    /// time the mailbox is checked too.
    pub idle_refresh: Duration,
    /// First reconnection delay; doubled at each failure in a row.
    pub backoff_base: Duration,
    /// Longest reconnection delay.
    pub backoff_max: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            batch_messages: 100,
            batch_bytes: 16 * 1024 * 1024,
            search_window: 10_000,
            max_message_size: 25 * 1024 * 1024,
            io_timeout: Duration::from_secs(120),
            idle_refresh: Duration::from_secs(10 * 60),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(5 * 60),
        }
    }
}

/// One account, as its worker needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountConfig {
    /// The account's name (logs, status, the store's key).
    pub name: String,
    /// Server host name or IP address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// TLS mode.
    pub tls: TlsMode,
    /// PEM file of CA certificates to trust instead of the WebPKI roots.
    pub ca_file: Option<PathBuf>,
    /// Login name.
    pub username: String,
    /// Where the password or token comes from.
    pub secret: Secret,
    /// The mailbox to fetch from.
    pub mailbox: String,
    /// What to do with a message once spooled.
    pub after: After,
    /// How often to look for mail when the server has no `IDLE`.
    pub poll_interval: Duration,
    /// Bounds.
    pub limits: Limits,
}

impl AccountConfig {
    /// A stable spelling of the mailbox this account reads (server, user, mailbox): the store
    /// keeps a keyed hash of it beside the sync state, so that pointing an account at another
    /// mailbox starts over instead of skipping messages.
    pub fn identity(&self) -> String {
        format!(
            "{}:{}/{}/{}",
            self.host.to_ascii_lowercase(),
            self.port,
            self.username,
            self.mailbox
        )
    }
}

/// Where an account is in its mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncState {
    /// The mailbox's UIDVALIDITY.
    pub uid_validity: u32,
    /// Every message up to this UID has been spooled (or skipped, and reported).
    pub last_uid: u32,
}

/// What [`ImapStore::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Spooled, durably.
    New(SpoolId),
    /// This account spooled these exact bytes before (durably); nothing new was written.
    Duplicate,
}

/// What an account worker needs from storage: the spool (with exactly-once by content) and a
/// place for each account's sync state. `mailroom serve` implements it over the store.
pub trait ImapStore: Send + Sync + 'static {
    /// Spool `raw` for `account`, unless this account spooled the same bytes before; resolve
    /// only once the outcome is durable. The spool entry and the record that the account
    /// spooled these bytes must be written together (a crash leaves both or neither).
    fn append(
        &self,
        account: &str,
        envelope: Envelope,
        raw: Vec<u8>,
    ) -> impl Future<Output = Result<Appended, SpoolError>> + Send;

    /// The stored sync state of `account` for mailbox `identity` (see
    /// [`AccountConfig::identity`]); `None` when there is none for that mailbox.
    fn load_state(
        &self,
        account: &str,
        identity: &str,
    ) -> impl Future<Output = Result<Option<SyncState>, SpoolError>> + Send;

    /// Record `account`'s sync state, durably.
    fn save_state(
        &self,
        account: &str,
        identity: &str,
        state: SyncState,
    ) -> impl Future<Output = Result<(), SpoolError>> + Send;
}
