//! `[[imap]]`: mailboxes mailroom fetches mail from, and their checks.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::{is_domain, Problem};

/// Most `[[imap]]` accounts one config may list.
pub const MAX_IMAP_ACCOUNTS: usize = 256;

/// `[[imap]]`: one mailbox to fetch mail from over IMAP. Every account is fetched by its own
/// task; one that fails never stops the others or the SMTP server.
///
/// The secret comes from exactly one of `password_env`, `password_file` or
/// `xoauth2_token_file`; it is read when the account connects (so a changed file is used at the
/// next connection) and never written to a log or shown by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImapAccount {
    /// `imap[N].name`: the account's name in logs, `mailroom imap status` and the store
    /// (required; letters, digits, `.`, `_` and `-`, at most 64; unique).
    pub name: String,
    /// `imap[N].host`: the IMAP server's host name or IP address (required).
    pub host: String,
    /// `imap[N].port`: the server's port (default 993 with `tls = "implicit"`, else 143).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `imap[N].tls`: `implicit` (TLS from the first byte, the default), `starttls` (plain,
    /// then STARTTLS before logging in) or `none` (plaintext: only for a server on this host).
    pub tls: ImapTls,
    /// `imap[N].ca_file`: PEM file of the certificate authorities to trust for this server
    /// instead of the built-in WebPKI roots (default: not set), e.g. for a private CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// `imap[N].username`: the login name (required).
    pub username: String,
    /// `imap[N].password_env`: the name of an environment variable holding the password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// `imap[N].password_file`: a file holding the password (one line; a trailing newline is
    /// ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// `imap[N].xoauth2_token_file`: a file holding an OAuth 2 bearer token: the account then
    /// logs in with `AUTHENTICATE XOAUTH2` (for providers that need it). Whatever refreshes the
    /// token rewrites the file; it is read at every connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xoauth2_token_file: Option<PathBuf>,
    /// `imap[N].mailbox`: the mailbox to fetch from (default `INBOX`; printable ASCII).
    pub mailbox: String,
    /// `imap[N].after`: what happens to a message on the server once it is durably in our
    /// spool: `seen` (flag it `\Seen`, the default), `move:FOLDER` (move it to FOLDER) or
    /// `delete` (expunge it). See [`ImapAccount::after`].
    pub after: String,
    /// `imap[N].poll_seconds`: how often to look for new mail when the server has no IDLE
    /// (default 60, 5 to 3600). With IDLE, new mail is fetched as it arrives.
    pub poll_seconds: u64,
}

impl Default for ImapAccount {
    fn default() -> Self {
        ImapAccount {
            name: String::new(),
            host: String::new(),
            port: None,
            tls: ImapTls::Implicit,
            ca_file: None,
            username: String::new(),
            password_env: None,
            password_file: None,
            xoauth2_token_file: None,
            mailbox: "INBOX".to_owned(),
            after: "seen".to_owned(),
            poll_seconds: 60,
        }
    }
}

/// How an IMAP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImapTls {
    /// `implicit`: TLS from the first byte (IMAPS, usually port 993).
    #[default]
    Implicit,
    /// `starttls`: a plain connection upgraded with `STARTTLS` before login (usually 143).
    Starttls,
    /// `none`: no TLS at all.
    None,
}

impl ImapTls {
    /// The name as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ImapTls::Implicit => "implicit",
            ImapTls::Starttls => "starttls",
            ImapTls::None => "none",
        }
    }
}

/// What happens to a message on the server once it is durably spooled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImapAfter {
    /// Set the `\Seen` flag.
    Seen,
    /// Move it to this mailbox.
    Move(String),
    /// Delete (expunge) it.
    Delete,
}

impl ImapAfter {
    /// Parse `seen`, `delete` or `move:FOLDER`.
    pub fn parse(text: &str) -> Result<ImapAfter, String> {
        match text {
            "seen" => Ok(ImapAfter::Seen),
            "delete" => Ok(ImapAfter::Delete),
            _ => match text.strip_prefix("move:") {
                Some(folder) => {
                    check_mailbox_name(folder).map_err(|e| format!("folder of `move:`: {e}"))?;
                    Ok(ImapAfter::Move(folder.to_owned()))
                }
                None => Err(format!(
                    "must be `seen`, `delete` or `move:FOLDER` (got `{}`)",
                    text.escape_debug()
                )),
            },
        }
    }
}

impl ImapAccount {
    /// The port to connect to: `port`, or 993 for implicit TLS and 143 otherwise.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            ImapTls::Implicit => 993,
            ImapTls::Starttls | ImapTls::None => 143,
        })
    }

    /// `after`, parsed. A validated config always parses; should it not, `Seen` (the action
    /// that loses nothing) is returned.
    pub fn after(&self) -> ImapAfter {
        ImapAfter::parse(&self.after).unwrap_or(ImapAfter::Seen)
    }

    /// `poll_seconds` as a [`Duration`].
    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.poll_seconds)
    }
}

/// A mailbox name we can send as an IMAP quoted string: printable ASCII, not empty.
fn check_mailbox_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if !name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!(
            "`{}` must be printable ASCII (write other names in IMAP's modified UTF-7)",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// Every problem with the `[[imap]]` accounts.
pub(crate) fn check(accounts: &[ImapAccount]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut fail = |i: usize, key: &str, message: String| {
        problems.push(Problem {
            key: format!("imap[{i}].{key}"),
            index: None,
            message,
        });
    };
    if accounts.len() > MAX_IMAP_ACCOUNTS {
        fail(
            MAX_IMAP_ACCOUNTS,
            "name",
            format!("at most {MAX_IMAP_ACCOUNTS} accounts may be listed"),
        );
    }
    let mut names = HashSet::new();
    for (i, a) in accounts.iter().enumerate() {
        if a.name.is_empty() {
            fail(i, "name", "must be set".to_owned());
        } else if a.name.len() > 64
            || !a
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            fail(
                i,
                "name",
                format!(
                    "`{}` must be 1 to 64 letters, digits, `.`, `_` or `-`",
                    a.name.escape_debug()
                ),
            );
        } else if !names.insert(a.name.as_str()) {
            fail(
                i,
                "name",
                format!("`{}` is used by another account", a.name),
            );
        }
        if a.host.is_empty() {
            fail(i, "host", "must be set".to_owned());
        } else if !is_domain(&a.host) && a.host.parse::<IpAddr>().is_err() {
            fail(
                i,
                "host",
                format!(
                    "`{}` is not a host name or an IP address",
                    a.host.escape_debug()
                ),
            );
        }
        if a.port == Some(0) {
            fail(i, "port", "must be at least 1 (got 0)".to_owned());
        }
        if let Some(ca) = &a.ca_file {
            if ca.as_os_str().is_empty() {
                fail(i, "ca_file", "must not be empty".to_owned());
            } else if a.tls == ImapTls::None {
                fail(
                    i,
                    "ca_file",
                    "is set but `tls` is \"none\": it would never be used".to_owned(),
                );
            }
        }
        if a.username.is_empty() {
            fail(i, "username", "must be set".to_owned());
        } else if a.username.chars().any(char::is_control) {
            fail(
                i,
                "username",
                "must not contain control characters".to_owned(),
            );
        }
        let secrets: Vec<&str> = [
            a.password_env.as_ref().map(|_| "password_env"),
            a.password_file.as_ref().map(|_| "password_file"),
            a.xoauth2_token_file.as_ref().map(|_| "xoauth2_token_file"),
        ]
        .into_iter()
        .flatten()
        .collect();
        match secrets.as_slice() {
            [] => fail(
                i,
                "password_env",
                "one of `password_env`, `password_file` or `xoauth2_token_file` must be set"
                    .to_owned(),
            ),
            [_] => {}
            [first, rest @ ..] => fail(
                i,
                rest[0],
                format!("only one secret may be set, and `{first}` is set too"),
            ),
        }
        if let Some(var) = &a.password_env {
            let ok = var
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                fail(
                    i,
                    "password_env",
                    format!(
                        "`{}` is not an environment variable name (letters, digits and `_`)",
                        var.escape_debug()
                    ),
                );
            }
        }
        for (key, path) in [
            ("password_file", &a.password_file),
            ("xoauth2_token_file", &a.xoauth2_token_file),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                fail(i, key, "must not be empty".to_owned());
            }
        }
        if let Err(e) = check_mailbox_name(&a.mailbox) {
            fail(i, "mailbox", e);
        }
        match ImapAfter::parse(&a.after) {
            Err(e) => fail(i, "after", e),
            Ok(ImapAfter::Move(folder)) if folder == a.mailbox => fail(
                i,
                "after",
                format!("moves to `{folder}`, the mailbox fetched from"),
            ),
            Ok(_) => {}
        }
        if a.poll_seconds < 5 {
            fail(
                i,
                "poll_seconds",
                format!("must be at least 5 (got {})", a.poll_seconds),
            );
        } else if a.poll_seconds > 3600 {
            fail(
                i,
                "poll_seconds",
                format!("must be at most 3600 (got {})", a.poll_seconds),
            );
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_parses() {
        assert_eq!(ImapAfter::parse("seen"), Ok(ImapAfter::Seen));
        assert_eq!(ImapAfter::parse("delete"), Ok(ImapAfter::Delete));
        assert_eq!(
            ImapAfter::parse("move:Archive/Done"),
            Ok(ImapAfter::Move("Archive/Done".into()))
        );
        assert!(ImapAfter::parse("move:").is_err());
        assert!(ImapAfter::parse("move:a\r\nb").is_err());
        assert!(ImapAfter::parse("Seen").is_err());
        assert!(ImapAfter::parse("archive").is_err());
    }

    #[test]
    fn default_port_follows_tls() {
        let mut a = ImapAccount::default();
        assert_eq!(a.port(), 993);
        a.tls = ImapTls::Starttls;
        assert_eq!(a.port(), 143);
        a.port = Some(10143);
        assert_eq!(a.port(), 10143);
    }
}
