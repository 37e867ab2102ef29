//! The mailroom SMTP server: accepts mail for our domains and hands it to a [`Spool`].
//!
//! Two layers, as in Stalwart and mini-redis:
//!
//! - [`Session`]: a sans-IO state machine over `smtp-proto`. Bytes in, replies and
//!   [`Action`]s out ("read more", "deliver this", "start TLS", "close"). No sockets, no
//!   tokio, so it is unit-tested by feeding byte strings.
//! - [`run`]: the tokio driver. Accepts connections (a semaphore caps them), runs one session
//!   per connection with buffered reads and batched reply writes, does `STARTTLS` with
//!   tokio-rustls, enforces the timeouts, and shuts down gracefully.
//!
//! A message is acknowledged (`250`) only after [`Spool::append`] resolved `Ok`, i.e. once it
//! is durable. This crate knows nothing of tickets or storage.
//!
//! # Replies to limits and failures
//!
//! | condition | reply |
//! |---|---|
//! | `MAIL FROM … SIZE=n`, n over `max_message_size` | `552 5.3.4` |
//! | DATA/BDAT content over `max_message_size` (read to its end, discarded) | `552 5.3.4` |
//! | a content line over `max_line_length` (rejected at the end of the data) | `554 5.6.0` |
//! | a command line over `max_line_length` | `500 5.5.2` |
//! | recipients beyond `max_recipients` | `452 4.5.3` |
//! | recipient domain not in `domains` | `550 5.1.1` |
//! | non-ASCII address without `SMTPUTF8` | `553 5.6.7` |
//! | command out of sequence | `503 5.5.1` |
//! | unknown command / known but not offered (AUTH, EXPN, ETRN, …) | `500 5.5.1` / `502 5.5.1` |
//! | unsupported MAIL/RCPT parameter | `555 5.5.4` |
//! | connections beyond `max_connections` | `421 4.3.2`, closed |
//! | idle or data timeout | `421 4.4.2`, closed |
//! | more than `max_errors` client errors | `421 4.7.0`, closed |
//! | shutdown | `421 4.3.2`, closed |
//! | content that does not fit beside other sessions' in `max_message_memory` (read, dropped) | `452 4.3.1` |
//! | spool full | `451 4.3.2` |
//! | spool closed or I/O error | `451 4.3.0` |
//!
//! [`Spool`]: mailroom_spool::Spool
//! [`Spool::append`]: mailroom_spool::Spool::append

#![deny(missing_docs)]

mod config;
mod memory;
mod received;
mod server;
mod session;

pub use config::{
    check_key_permissions, load_tls, load_tls_checked, ConfigError, SmtpConfig, TlsError,
    MIN_LINE_LENGTH, TLS_VERSIONS,
};
pub use memory::{MemoryHold, MessageMemory};
pub use server::run;
pub use session::{Action, Delivery, Session};

/// Names of the metrics this crate records (through the `metrics` facade: nothing is recorded
/// until the binary installs a recorder).
pub mod metric_names {
    /// Counter: messages accepted (`250` after the spool's fsync).
    pub const ACCEPTED: &str = "mailroom_smtp_messages_accepted_total";
    /// Counter by `reason` (reply code and enhanced code, e.g. `552 5.3.4`): every 4xx/5xx reply,
    /// refused connections included.
    pub const REJECTED: &str = "mailroom_smtp_messages_rejected_total";
    /// Gauge: SMTP sessions open now.
    pub const SESSIONS: &str = "mailroom_smtp_sessions";
    /// Gauge: bytes of message content that SMTP sessions hold in memory now, until the spool
    /// has stored it (bounded by `smtp.max_message_memory`, [`crate::MessageMemory`]).
    pub const MESSAGE_MEMORY: &str = "mailroom_smtp_message_memory_bytes";
}
