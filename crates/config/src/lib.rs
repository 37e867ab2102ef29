//! Typed, validated configuration for mailroom.
//!
//! The configuration is one TOML file with optional sections, `[store]`, `[smtp]`,
//! `[pipeline]`, `[filter]`, `[http]`, `[log]` and `[retention]`, and any number of
//! `[[imap]]` accounts. Every key is optional and has a default (see
//! `mailroom.example.toml` at the repository root, which lists every key with its default
//! value); unknown keys are errors, so a misspelt key never silently falls back to its
//! default.
//!
//! [`Config::parse`] and [`Config::load`] check the syntax, the types, and the values
//! (ranges, allowed sets, keys that must come in pairs), and every [`ConfigError`] names
//! the file, the line and column, and the dotted key path:
//!
//! ```text
//! mailroom.toml:7:20: smtp.max_message_size: must be at least 1024 (got 0)
//! ```
//!
//! This crate is pure: no async, and no I/O other than reading the file in
//! [`Config::load`].

#![warn(missing_docs)]

mod error;
mod imap;
mod locate;
mod validate;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::{ConfigError, ErrorKind};
pub use imap::{ImapAccount, ImapAfter, ImapTls, MAX_IMAP_ACCOUNTS};

/// The whole mailroom configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[store]`: where data lives and how much may wait in the spool.
    pub store: StoreConfig,
    /// `[smtp]`: the SMTP listener and its limits.
    pub smtp: SmtpConfig,
    /// `[pipeline]`: the workers that parse spooled messages into tickets.
    pub pipeline: PipelineConfig,
    /// `[filter]`: the spam filter's cutoffs and combiner.
    pub filter: FilterConfig,
    /// `[http]`: the HTTP API for agents and admins.
    pub http: HttpConfig,
    /// `[log]`: log verbosity and output format.
    pub log: LogConfig,
    /// `[retention]`: how long each class of data is kept before the sweeper deletes it.
    pub retention: RetentionConfig,
    /// `[[imap]]`: mailboxes to fetch mail from (default: none). See [`ImapAccount`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub imap: Vec<ImapAccount>,
}

/// `[retention]`: per-class retention, applied by the background sweeper and by
/// `mailroom privacy retention`. A value of 0 days keeps that class for ever. (The spool's
/// encryption keys have their own lifetime, `store.spool_key_lifetime_hours`.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// `retention.quarantine_days`: quarantined messages older than this are deleted (default
    /// 30, 0 to 36500; 0 keeps them).
    pub quarantine_days: u32,
    /// `retention.closed_ticket_days`: tickets closed for longer than this are deleted with
    /// their messages and attachments (default 365, 0 to 36500; 0 keeps them).
    pub closed_ticket_days: u32,
    /// `retention.attachment_days`: attachments older than this are deleted; the messages they
    /// came with stay, marked (default 0 = kept as long as their message, 0 to 36500).
    pub attachment_days: u32,
    /// `retention.audit_days`: audit records older than this are deleted (default 730, 0 to
    /// 36500; 0 keeps them).
    pub audit_days: u32,
    /// `retention.sweep_minutes`: how often the running server applies these rules (default
    /// 60, 1 to 10080).
    pub sweep_minutes: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            quarantine_days: 30,
            closed_ticket_days: 365,
            attachment_days: 0,
            audit_days: 730,
            sweep_minutes: 60,
        }
    }
}

/// `[store]`: the data directory and the spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `store.path`: the data directory (default `data`). A relative path is relative to
    /// the working directory of the process, not to the config file.
    pub path: PathBuf,
    /// `store.spool_max_entries`: how many received but not yet processed messages the
    /// spool may hold (default 10000, 1 to 10,000,000). When it is full, SMTP answers
    /// `451 4.3.2` and the sender retries later.
    pub spool_max_entries: usize,
    /// `store.spool_key_lifetime_hours`: how long one spool encryption key is used before
    /// a new one is made (default 24, 1 to 720). See [`StoreConfig::spool_key_lifetime`].
    pub spool_key_lifetime_hours: u64,
    /// `store.cache_mb`: the store's page cache in MiB (default 16, 8 to 65536). It bounds the
    /// memory the store uses for its data.
    pub cache_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("data"),
            spool_max_entries: 10_000,
            spool_key_lifetime_hours: 24,
            cache_mb: 16,
        }
    }
}

impl StoreConfig {
    /// `spool_key_lifetime_hours` as a [`Duration`].
    pub fn spool_key_lifetime(&self) -> Duration {
        Duration::from_secs(self.spool_key_lifetime_hours.saturating_mul(3600))
    }
}

/// `[smtp]`: the SMTP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// `smtp.listen`: the socket addresses to listen on, as `IP:port` (default
    /// `["127.0.0.1:2525"]`; at least one, no duplicates).
    pub listen: Vec<SocketAddr>,
    /// `smtp.hostname`: our name in the greeting and in `Received:` fields (default
    /// `localhost`): a domain name or an address literal such as `[192.0.2.1]`.
    pub hostname: String,
    /// `smtp.domains`: the recipient domains we accept mail for (default `["localhost"]`;
    /// at least one). Mail for any other domain is refused with `550 5.1.1`. Compared
    /// without regard to ASCII case; see [`SmtpConfig::accepts_domain`].
    pub domains: Vec<String>,
    /// `smtp.max_message_size`: the largest message accepted, in bytes, as announced in
    /// the `SIZE` extension (default 26214400 = 25 MiB, 1024 to 1 GiB).
    pub max_message_size: usize,
    /// `smtp.max_recipients`: the most `RCPT TO` accepted per message (default 100,
    /// 1 to 10,000).
    pub max_recipients: usize,
    /// `smtp.max_line_length`: the longest line accepted, in bytes without the CRLF
    /// (default 65536, 998 to 16 MiB; RFC 5321 requires at least 998).
    pub max_line_length: usize,
    /// `smtp.max_connections`: the most simultaneous SMTP sessions (default 256,
    /// 1 to 100,000). Further connections wait until a session ends.
    pub max_connections: usize,
    /// `smtp.max_message_memory`: the most bytes of message content that all SMTP sessions
    /// together hold in memory before the spool has stored it (default 134217728 = 128 MiB,
    /// 1 MiB to 64 GiB). A message that does not fit is read to its end, dropped and answered
    /// `452 4.3.1` (the sender retries later); a message alone always fits.
    pub max_message_memory: usize,
    /// `smtp.max_errors`: how many failed commands a session may send before it is
    /// closed (default 10, 1 to 1000).
    pub max_errors: usize,
    /// `smtp.idle_timeout_secs`: how long to wait for the next command (default 300,
    /// 1 to 3600). See [`SmtpConfig::idle_timeout`].
    pub idle_timeout_secs: u64,
    /// `smtp.data_timeout_secs`: how long to wait for more message data after `DATA` or
    /// `BDAT` (default 600, 1 to 3600). See [`SmtpConfig::data_timeout`].
    pub data_timeout_secs: u64,
    /// `smtp.min_data_rate`: once a message has been arriving for `data_timeout_secs`, it
    /// must keep coming at at least this many bytes per second on average, or the session
    /// gets `421 4.4.2` (default 500, 0 to 1,000,000; 0 turns the rule off). Stops a client
    /// that trickles a byte now and then from holding a session for ever.
    pub min_data_rate: u64,
    /// `smtp.shutdown_grace_secs`: on shutdown, how long sessions in progress may take to
    /// finish before they are closed (default 30, 0 to 3600). See
    /// [`SmtpConfig::shutdown_grace`].
    pub shutdown_grace_secs: u64,
    /// `smtp.tls_cert`: PEM certificate chain for STARTTLS (default: not set). STARTTLS
    /// is offered only when both `tls_cert` and `tls_key` are set; setting one without
    /// the other is an error. See [`SmtpConfig::tls`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// `smtp.tls_key`: PEM private key for `tls_cert` (default: not set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2525)],
            hostname: "localhost".to_owned(),
            domains: vec!["localhost".to_owned()],
            max_message_size: 26_214_400,
            max_recipients: 100,
            max_line_length: 65_536,
            max_connections: 256,
            max_message_memory: 134_217_728,
            max_errors: 10,
            idle_timeout_secs: 300,
            data_timeout_secs: 600,
            min_data_rate: 500,
            shutdown_grace_secs: 30,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl SmtpConfig {
    /// `idle_timeout_secs` as a [`Duration`].
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// `data_timeout_secs` as a [`Duration`].
    pub fn data_timeout(&self) -> Duration {
        Duration::from_secs(self.data_timeout_secs)
    }

    /// `shutdown_grace_secs` as a [`Duration`].
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// The certificate and key paths when STARTTLS is configured (both set), else `None`.
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        }
    }

    /// Whether `domain` is one of [`SmtpConfig::domains`], ignoring ASCII case and one
    /// trailing dot.
    pub fn accepts_domain(&self, domain: &str) -> bool {
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// `[pipeline]`: the workers that turn spooled messages into tickets, and the limits on
/// what they will parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// `pipeline.workers`: how many messages are processed at once (default 2, 1 to 256).
    pub workers: usize,
    /// `pipeline.max_mime_parts`: the most MIME parts parsed in one message (default 1000,
    /// 1 to 100,000).
    pub max_mime_parts: usize,
    /// `pipeline.max_header_fields`: the most header fields read in one message or part
    /// (default 1000, 1 to 100,000).
    pub max_header_fields: usize,
    /// `pipeline.max_nesting_depth`: how deeply multiparts and attached messages may nest
    /// (default 20, 1 to 100).
    pub max_nesting_depth: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            workers: 2,
            max_mime_parts: 1000,
            max_header_fields: 1000,
            max_nesting_depth: 20,
        }
    }
}

/// `[http]`: the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `http.listen`: socket addresses for the API (default `["127.0.0.1:8025"]`; an empty list
    /// turns the API off).
    pub listen: Vec<SocketAddr>,
    /// `http.agent_networks`: CIDR networks agents' requests may come from (default loopback
    /// only).
    pub agent_networks: Vec<String>,
    /// `http.admin_networks`: CIDR networks admins' requests may come from (default loopback
    /// only).
    pub admin_networks: Vec<String>,
    /// `http.max_body_bytes`: the largest request body (default 1 MiB, 1 KiB to 64 MiB); larger
    /// gets 413.
    pub max_body_bytes: usize,
    /// `http.auth_failures_per_minute`: failed authentications allowed per client address per
    /// minute before 429 (default 10, 1 to 10000).
    pub auth_failures_per_minute: u32,
    /// `http.tls_cert`: PEM certificate chain; the API speaks HTTPS when both this and
    /// `http.tls_key` are set.
    pub tls_cert: Option<PathBuf>,
    /// `http.tls_key`: PEM private key for `http.tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8025))],
            agent_networks: vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()],
            admin_networks: vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()],
            max_body_bytes: 1024 * 1024,
            auth_failures_per_minute: 10,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// `[filter]`: the spam filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    /// `filter.enabled`: classify incoming mail (default true). When false every message is a
    /// ticket and nothing is quarantined.
    pub enabled: bool,
    /// `filter.algorithm`: the combiner whose score decides (default `fusion`: Robinson-Fisher
    /// fused with an online logistic regression; also `fisher`, `naive-bayes`, `logistic`).
    pub algorithm: FilterAlgorithm,
    /// `filter.ham_cutoff`: scores below this are ham (default 0.2, 0 to 1).
    pub ham_cutoff: f64,
    /// `filter.spam_cutoff`: scores at or above this are spam and go to the quarantine; between
    /// the cutoffs a ticket is marked unsure (default 0.9, 0 to 1, not below `ham_cutoff`).
    pub spam_cutoff: f64,
    /// `filter.explain_tokens`: how many deciding tokens each verdict keeps (default 12, 1 to
    /// 100).
    pub explain_tokens: usize,
    /// `filter.starter_model`: a model file (`mailroom filter export`) loaded when the store has
    /// learned nothing yet. Unset: the starter model built into the binary.
    pub starter_model: Option<PathBuf>,
    /// `filter.expire_days`: `mailroom filter expire` drops tokens seen in at most one message
    /// and not seen for this many days (default 180, 1 to 36500).
    pub expire_days: u32,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            enabled: true,
            algorithm: FilterAlgorithm::Fusion,
            ham_cutoff: 0.2,
            spam_cutoff: 0.9,
            explain_tokens: 12,
            starter_model: None,
            expire_days: 180,
        }
    }
}

/// The spam filter's combiner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FilterAlgorithm {
    /// `fusion`: Fisher and logistic regression, averaged in logit space (the default).
    #[default]
    Fusion,
    /// `fisher`: Robinson's f(w) with Fisher's chi-square combining (bogofilter style).
    Fisher,
    /// `naive-bayes`: multinomial naive Bayes.
    NaiveBayes,
    /// `logistic`: online logistic regression on the same features.
    Logistic,
}

impl FilterAlgorithm {
    /// The name as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            FilterAlgorithm::Fusion => "fusion",
            FilterAlgorithm::Fisher => "fisher",
            FilterAlgorithm::NaiveBayes => "naive-bayes",
            FilterAlgorithm::Logistic => "logistic",
        }
    }
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `log.level`: the least severe level written (default `info`).
    pub level: LogLevel,
    /// `log.format`: how log lines are written (default `text`).
    pub format: LogFormat,
}

/// A log verbosity level, from least to most verbose.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// `error`: only errors.
    Error,
    /// `warn`: errors and warnings.
    Warn,
    /// `info`: also normal operational events (the default).
    #[default]
    Info,
    /// `debug`: also details useful when diagnosing a problem.
    Debug,
    /// `trace`: everything.
    Trace,
}

impl LogLevel {
    /// The level as written in the config file (`error`, `warn`, `info`, `debug`,
    /// `trace`), which is also the directive `tracing-subscriber` filters accept.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The format of log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `text`: human-readable lines (the default).
    #[default]
    Text,
    /// `json`: one JSON object per line.
    Json,
}

impl LogFormat {
    /// The format as written in the config file (`text` or `json`).
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Config {
    /// Reads and parses the config file at `path`; errors name the file as `path` shows.
    ///
    /// This is the only function of the crate that does I/O.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| ConfigError {
            kind: ErrorKind::Io,
            origin: origin.clone(),
            line: None,
            column: None,
            key: None,
            message: format!("cannot read config file: {e}"),
            source: Some(e),
        })?;
        match std::str::from_utf8(&bytes) {
            Ok(text) => Config::parse(text, &origin),
            Err(e) => {
                // Everything before the bad byte is valid UTF-8, so its position is exact.
                let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
                let (line, column) = locate::line_column(valid, valid.len());
                Err(ConfigError {
                    kind: ErrorKind::Syntax,
                    origin,
                    line: Some(line),
                    column: Some(column),
                    key: None,
                    message: "the file is not valid UTF-8".to_owned(),
                    source: None,
                })
            }
        }
    }

    /// Parses and validates config `text`; `origin` (usually the file name) is what
    /// errors name as the file. An empty text gives [`Config::default`].
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let at = |kind, pos: Option<usize>, key: Option<String>, message: String| {
            let (line, column) = match pos {
                Some(pos) => {
                    let (l, c) = locate::line_column(text, pos);
                    (Some(l), Some(c))
                }
                None => (None, None),
            };
            ConfigError {
                kind,
                origin: origin.to_owned(),
                line,
                column,
                key,
                message,
                source: None,
            }
        };

        let (doc, syntax_errors) = toml::de::DeTable::parse_recoverable(text);
        if let Some(e) = syntax_errors.into_iter().next() {
            let pos = e.span().map(|s| s.start);
            let key = pos.and_then(|p| {
                locate::path_at(doc.get_ref(), p).or_else(|| locate::guess_path_from_text(text, p))
            });
            return Err(at(ErrorKind::Syntax, pos, key, e.message().to_owned()));
        }

        let config =
            Config::deserialize(toml::de::Deserializer::from(doc.clone())).map_err(|e| {
                let pos = e.span().map(|s| s.start);
                let key = pos.and_then(|p| locate::path_at(doc.get_ref(), p));
                let (kind, message) = validate::describe_serde_error(e.message());
                at(kind, pos, key, message)
            })?;

        let mut problems: Vec<(Option<usize>, validate::Problem)> = validate::check(&config)
            .into_iter()
            .map(|p| (p.locate(doc.get_ref()), p))
            .collect();
        // Report the problem that comes first in the file; unlocated ones last.
        problems.sort_by_key(|(pos, _)| pos.unwrap_or(usize::MAX));
        if let Some((pos, problem)) = problems.into_iter().next() {
            return Err(at(
                ErrorKind::Invalid,
                pos,
                Some(problem.key.to_owned()),
                problem.message,
            ));
        }
        Ok(config)
    }

    /// Checks the values of a config built in code (the checks [`Config::parse`] makes
    /// after reading). The error has no line, and names `config` as its origin.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match validate::check(self).into_iter().next() {
            None => Ok(()),
            Some(problem) => Err(ConfigError {
                kind: ErrorKind::Invalid,
                origin: "config".to_owned(),
                line: None,
                column: None,
                key: Some(problem.key.to_owned()),
                message: problem.message,
                source: None,
            }),
        }
    }
}
