//! Why an account's connection ended.

use std::time::Duration;

/// An account's connection failed; the worker reconnects after a backoff. The texts name no
/// secret (never the password or token) and no message content.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// `host:port`.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// TLS could not be set up (bad CA file, handshake failure, certificate not trusted).
    #[error("TLS: {0}")]
    Tls(String),
    /// The server refused the login.
    #[error("login failed: {0}")]
    Auth(String),
    /// The secret could not be read (environment variable unset, file missing).
    #[error("cannot read the {what}: {message}")]
    Secret {
        /// `password_env`, `password_file` or `xoauth2_token_file`.
        what: &'static str,
        /// Why (no secret in it).
        message: String,
    },
    /// The mailbox could not be selected, or lacks what we need (UIDVALIDITY).
    #[error("mailbox {mailbox:?}: {message}")]
    Mailbox {
        /// The mailbox name.
        mailbox: String,
        /// Why.
        message: String,
    },
    /// The server did not answer in time.
    #[error("no answer from the server within {0:?} ({1})")]
    Timeout(Duration, &'static str),
    /// A protocol error or a refused command after login.
    #[error("{context}: {message}")]
    Protocol {
        /// What we were doing.
        context: &'static str,
        /// The server's or the client library's word.
        message: String,
    },
    /// The spool refused the message (full, closing, or an I/O error); it stays on the server.
    #[error("spool: {0}")]
    Spool(#[from] mailroom_spool::SpoolError),
    /// Marking, moving or deleting spooled messages on the server failed (they are spooled;
    /// the next sync recognises them and tries again).
    #[error("after spooling ({action}): {message}")]
    After {
        /// `\Seen`, `move` or `delete`.
        action: &'static str,
        /// Why.
        message: String,
    },
    /// The account was stopped (shutdown or reload).
    #[error("stopped")]
    Stopped,
}

impl ImapError {
    /// A protocol error while doing `context`.
    pub(crate) fn protocol(context: &'static str, e: async_imap::error::Error) -> ImapError {
        ImapError::Protocol {
            context,
            message: describe(e),
        }
    }
}

/// The client library's error in an operator's words (the server's own text for NO and BAD).
pub(crate) fn describe(e: async_imap::error::Error) -> String {
    use async_imap::error::Error;
    match e {
        Error::No(text) => format!("the server said NO: {text}"),
        Error::Bad(text) => format!("the server said BAD: {text}"),
        Error::ConnectionLost => "the connection was lost".to_owned(),
        Error::Io(e) => format!("I/O error: {e}"),
        other => other.to_string(),
    }
}
