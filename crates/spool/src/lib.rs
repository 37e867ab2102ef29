//! The hand-off point between ingestion and processing.
//!
//! SMTP, IMAP and the `ingest` command know nothing of tickets: they hand the raw bytes of a
//! message and its [`Envelope`] to a [`Spool`]. A spool implementation must make the entry
//! durable (on disk, fsynced) before the future returned by [`Spool::append`] resolves with
//! `Ok`, because the caller acknowledges the message (SMTP `250`) only after that.

use std::future::Future;

use serde::{Deserialize, Serialize};

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// Relayed to our SMTP server.
    Smtp,
    /// Fetched from a mailbox over IMAP.
    Imap,
    /// Read from a file by `mailroom ingest`.
    File,
}

/// The SMTP envelope and transport facts of one message, kept beside its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Where the message came from.
    pub source: Source,
    /// Reverse path (`MAIL FROM`); empty for the null sender `<>` (bounces).
    pub mail_from: String,
    /// Forward paths (`RCPT TO`), in the order given.
    pub rcpt_to: Vec<String>,
    /// Peer address (`ip:port`) for SMTP, account name for IMAP, file path for `ingest`.
    pub peer: String,
    /// The name the client gave in `EHLO`/`HELO` (empty when not SMTP).
    pub helo: String,
    /// Seconds since the Unix epoch when the message was accepted.
    pub received_at: u64,
    /// Whether the message arrived over TLS.
    pub tls: bool,
}

/// Identifier of a spool entry: unique and increasing within one store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SpoolId(pub u64);

impl std::fmt::Display for SpoolId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Why a spool could not take a message. Every variant is temporary from the sender's point of
/// view: SMTP answers `451 4.3.x` and the sender retries; nothing acknowledged is lost.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The spool holds as many unprocessed entries as it may (backpressure).
    #[error("spool is full")]
    Full,
    /// The spool is shutting down.
    #[error("spool is closed")]
    Closed,
    /// The write or the flush failed.
    #[error("spool I/O error: {0}")]
    Io(String),
}

/// Durable storage for accepted, not yet processed messages.
pub trait Spool: Send + Sync + 'static {
    /// Store `raw` with `envelope`, and resolve only once both are durable on disk.
    ///
    /// Concurrent calls should share one flush (group commit).
    fn append(
        &self,
        envelope: Envelope,
        raw: Vec<u8>,
    ) -> impl Future<Output = Result<SpoolId, SpoolError>> + Send;
}
