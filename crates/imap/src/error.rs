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
        Error::No(text) => format!("the server said NO: {}", server_text(&text)),
        Error::Bad(text) => format!("the server said BAD: {}", server_text(&text)),
        Error::ConnectionLost => "the connection was lost".to_owned(),
        Error::Io(e) => format!("I/O error: {e}"),
        other => other.to_string(),
    }
}

/// The server's text from the client library's NO or BAD error. async-imap 0.12 spells it
/// `code: {code:?}, info: {information:?}` (e.g. `code: None, info: Some("[AUTHENTICATIONFAILED]
/// Authentication failed.")`), which is no text to show an operator: this gives back the text
/// the server sent, with a response code the library took out (e.g. `TryCreate`) in brackets
/// before it (codes it does not know, like Dovecot's, stay in the text). Any other spelling is
/// returned as it is.
pub(crate) fn server_text(text: &str) -> String {
    let Some((code, info)) = text
        .strip_prefix("code: ")
        .and_then(|t| t.split_once(", info: "))
    else {
        return text.to_owned();
    };
    let info = match info {
        "None" => Some(String::new()),
        _ => info
            .strip_prefix("Some(\"")
            .and_then(|i| i.strip_suffix("\")"))
            .and_then(unescape_debug),
    };
    let code = match code {
        "None" => Some(None),
        _ => code
            .strip_prefix("Some(")
            .and_then(|c| c.strip_suffix(')'))
            .map(Some),
    };
    match (code, info) {
        (Some(None), Some(info)) => info,
        (Some(Some(code)), Some(info)) => format!("[{code}] {info}").trim_end().to_owned(),
        _ => text.to_owned(),
    }
}

/// Undo the escapes of a string's `Debug` spelling; `None` if it holds one we do not know.
fn unescape_debug(quoted: &str) -> Option<String> {
    let mut out = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '\\' => out.push('\\'),
            '"' => out.push('"'),
            '\'' => out.push('\''),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            '0' => out.push('\0'),
            'u' => {
                let rest = chars.as_str().strip_prefix('{')?;
                let (hex, after) = rest.split_once('}')?;
                out.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
                chars = after.chars();
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    /// Stands in for `imap_proto::ResponseCode` (same `Debug` spelling).
    #[derive(Debug)]
    enum ResponseCode {
        TryCreate,
    }

    /// What async-imap 0.12 makes of a tagged NO or BAD (`check_status_ok`).
    fn library_text(code: Option<ResponseCode>, information: Option<&str>) -> String {
        let information = information.map(Cow::Borrowed);
        format!("code: {code:?}, info: {information:?}")
    }

    #[test]
    fn the_servers_own_words_come_back_out_of_the_library_error() {
        assert_eq!(
            server_text(&library_text(
                None,
                Some("[AUTHENTICATIONFAILED] Authentication failed.")
            )),
            "[AUTHENTICATIONFAILED] Authentication failed."
        );
        assert_eq!(
            server_text(&library_text(
                None,
                Some("say \"hi\" \\ tab\there é \u{7f}")
            )),
            "say \"hi\" \\ tab\there é \u{7f}"
        );
        assert_eq!(
            server_text(&library_text(
                Some(ResponseCode::TryCreate),
                Some("Mailbox doesn't exist: X")
            )),
            "[TryCreate] Mailbox doesn't exist: X"
        );
        assert_eq!(server_text(&library_text(None, None)), "");
        // Not the library's spelling: as it is.
        assert_eq!(server_text("something else"), "something else");
        assert_eq!(
            server_text("code: None, info: Some(\"bad \\q escape\")"),
            "code: None, info: Some(\"bad \\q escape\")"
        );
    }
}
