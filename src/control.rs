//! The local control channel.
//!
//! sled lets one process open a store. While `mailroom serve` runs it holds the store and listens
//! on a Unix socket in the data directory (`mailroom.sock`, mode 0600 in a 0700 directory); the
//! other commands send it one JSON request per line and read one JSON response per line. When no
//! server runs (no socket, or nobody answers on it), the command opens the store itself and runs
//! the very same [`handle`] function.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use base64::Engine;
use mailroom_config::Config;
use mailroom_pipeline::{Filter, Settings};
use mailroom_spamfilter::Label;
use mailroom_spool::{Envelope, Source};
use mailroom_store::{
    Actor, FailedId, MessageKey, RetentionRules, Role, Store, StoreError, TicketId, TicketStatus,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A request over the control socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// All tickets.
    TicketsList,
    /// One ticket.
    TicketShow {
        /// Ticket number.
        id: u64,
    },
    /// The failed list.
    FailedList,
    /// Retry failed entries (`None`: all).
    FailedRetry {
        /// Which.
        ids: Option<Vec<u64>>,
    },
    /// Messages without a ticket.
    Orphans,
    /// One stored message's raw bytes (base64 in the answer).
    MessageRaw {
        /// Message id.
        id: u64,
    },
    /// Store counts.
    Stats,
    /// Train the filter on many messages with one flush at the end.
    FilterTrainBatch {
        /// (raw message in base64, label) pairs.
        items: Vec<(String, Label)>,
    },
    /// Untrain a message learned before.
    FilterUntrain {
        /// The raw message, base64.
        raw_b64: String,
    },
    /// Score one message (nothing is stored or learned).
    FilterClassify {
        /// The raw message, base64.
        raw_b64: String,
    },
    /// Model size and counts.
    FilterStats,
    /// Drop rare old tokens.
    FilterExpire {
        /// Days since the epoch: tokens last seen before this day may go.
        before_day: u32,
        /// Only tokens seen in at most this many messages.
        max_count: u32,
    },
    /// The model, in mailroom's portable format (base64 in the answer).
    FilterExport,
    /// Replace the model.
    FilterImport {
        /// A model file, base64.
        model_b64: String,
    },
    /// Quarantined messages.
    QuarantineList,
    /// One quarantined message.
    QuarantineShow {
        /// Message id.
        id: u64,
    },
    /// Release a quarantined message into a ticket (and learn it as ham).
    QuarantineRelease {
        /// Message id.
        id: u64,
    },
    /// Delete a quarantined message for good.
    QuarantineDelete {
        /// Message id.
        id: u64,
    },
    /// An agent's verdict on a stored message: trains at once; spam leaves its ticket for the
    /// quarantine, ham releases a quarantined message.
    Feedback {
        /// Message id.
        id: u64,
        /// `spam` or `ham`.
        label: Label,
    },
    /// Make an API token (the secret is in the answer, once).
    TokenCreate {
        /// Name.
        name: String,
        /// `agent` or `admin`.
        role: String,
        /// Unix seconds when it stops working.
        expires_at: Option<u64>,
    },
    /// API tokens (never their secrets).
    TokenList,
    /// Revoke an API token.
    TokenRevoke {
        /// Token id.
        id: u64,
    },
    /// Erase a person (see `Store::erase_person`).
    PrivacyErase {
        /// Their address.
        email: String,
        /// Only list what would go.
        dry_run: bool,
    },
    /// Export a person's data (the archive, base64, in the answer).
    PrivacyExport {
        /// Their address.
        email: String,
    },
    /// Apply retention rules.
    PrivacyRetention {
        /// The rules (from the caller's config).
        rules: RetentionRules,
        /// Apply them as at this time, Unix seconds (default: now).
        at: Option<u64>,
        /// Only list what would go.
        dry_run: bool,
    },
    /// Audit records, newest first.
    AuditList {
        /// Older than this id.
        before: Option<u64>,
        /// At most this many.
        limit: usize,
    },
    /// Write a backup into a directory (an absolute path, as the server sees it).
    Backup {
        /// The directory.
        out: PathBuf,
    },
    /// Delete an agent: revoke their tokens, anonymise their name.
    AgentDelete {
        /// The agent's name (their tokens' name).
        name: String,
    },
    /// Open or close a ticket.
    TicketStatus {
        /// Ticket number.
        id: u64,
        /// The new status.
        status: TicketStatus,
    },
    /// Spool one message read from a file.
    Ingest {
        /// Where it was read from (kept as the envelope's peer).
        origin: String,
        /// The raw message, base64.
        raw_b64: String,
    },
    /// Each IMAP account's status (the server's live view; without a server, the store's).
    ImapStatus,
    /// Make an IMAP account look for new mail now (answered by a running server only).
    ImapSync {
        /// The account's name.
        name: String,
    },
}

/// One response line: exactly one of the two fields is set.
#[derive(Debug, Serialize, Deserialize)]
struct Response {
    #[serde(skip_serializing_if = "Option::is_none")]
    ok: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Path of the control socket for a data directory.
pub fn socket_path(config: &Config) -> PathBuf {
    config.store.path.join("mailroom.sock")
}

/// The store options `config` asks for.
pub fn store_options(config: &Config) -> mailroom_store::StoreOptions {
    mailroom_store::StoreOptions {
        spool_max_entries: config.store.spool_max_entries,
        spool_key_lifetime_secs: config.store.spool_key_lifetime_hours.saturating_mul(3600),
        cache_capacity_bytes: config.store.cache_mb.saturating_mul(1024 * 1024),
    }
}

/// Open the store of `config` in this process.
pub fn open_store(config: &Config) -> anyhow::Result<Store> {
    Store::open(&config.store.path, store_options(config))
        .with_context(|| format!("opening the store in {}", config.store.path.display()))
}

/// Connect to the running server, if there is one.
pub fn connect(config: &Config) -> Option<UnixStream> {
    UnixStream::connect(socket_path(config)).ok()
}

/// Send `request` to the running server, or, when none runs, open the store and answer it here.
pub fn call(config: &Config, request: Request) -> anyhow::Result<Value> {
    call_with(config, request, false)
}

/// [`call`]; with `starter`, a store opened here that has learned nothing first loads the
/// starter model, as `serve` does (for commands that classify).
pub fn call_with(config: &Config, request: Request, starter: bool) -> anyhow::Result<Value> {
    if let Some(mut stream) = connect(config) {
        return call_remote(&mut stream, &request);
    }
    let store = open_store(config)?;
    let settings = crate::serve::settings(config)?;
    if starter {
        crate::serve::load_starter_model(config, &store)?;
    }
    handle(&store, &settings, request).map_err(|e| anyhow!(e))
}

/// Send one request over an open connection and read its answer.
pub fn call_remote(stream: &mut UnixStream, request: &Request) -> anyhow::Result<Value> {
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .context("writing to the control socket")?;
    let mut reader = BufReader::new(&*stream);
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .context("reading from the control socket")?;
    if answer.is_empty() {
        return Err(anyhow!("the server closed the control connection"));
    }
    let response: Response =
        serde_json::from_str(&answer).context("decoding the server's answer")?;
    match (response.ok, response.error) {
        (_, Some(error)) => Err(anyhow!(error)),
        (Some(value), None) => Ok(value),
        (None, None) => Err(anyhow!("empty answer from the server")),
    }
}

/// Answer a request against an open store. Used by the server and by commands run without one.
pub fn handle(store: &Store, settings: &Settings, request: Request) -> Result<Value, String> {
    fn to_value<T: Serialize>(v: T) -> Result<Value, String> {
        serde_json::to_value(v).map_err(|e| e.to_string())
    }
    let err = |e: StoreError| e.to_string();
    match request {
        Request::TicketsList => to_value(store.tickets().map_err(err)?),
        Request::TicketShow { id } => match store.ticket(TicketId(id)).map_err(err)? {
            Some(detail) => to_value(detail),
            None => Err(format!("no ticket #{id}")),
        },
        Request::FailedList => to_value(store.failed_list().map_err(err)?),
        Request::FailedRetry { ids } => {
            let ids: Vec<u64> = match ids {
                Some(ids) => ids,
                None => store
                    .failed_list()
                    .map_err(err)?
                    .into_iter()
                    .map(|f| f.id)
                    .collect(),
            };
            let mut retried = Vec::new();
            for id in ids {
                let spool_id = store.failed_retry(FailedId(id)).map_err(err)?;
                retried.push(json!({"failed": id, "spool": spool_id.0}));
            }
            Ok(Value::Array(retried))
        }
        Request::Orphans => to_value(store.orphans().map_err(err)?),
        Request::MessageRaw { id } => match store.message_raw(MessageKey(id)).map_err(err)? {
            Some(raw) => Ok(json!({
                "raw_b64": base64::engine::general_purpose::STANDARD.encode(raw)
            })),
            None => Err(format!("no message {id}")),
        },
        Request::Stats => to_value(store.counts().map_err(err)?),
        Request::FilterTrainBatch { items } => {
            let filter = filter_of(settings);
            let mut batch = Vec::with_capacity(items.len());
            for (raw_b64, label) in items {
                let raw = decode(&raw_b64)?;
                let features = filter.tokenizer().tokenize(&raw);
                batch.push((features, fingerprint(&raw), label, None));
            }
            let outcomes = store
                .filter_train_batch(filter.classifier(), &batch, today())
                .map_err(err)?;
            to_value(outcomes)
        }
        Request::FilterUntrain { raw_b64 } => {
            let raw = decode(&raw_b64)?;
            let filter = filter_of(settings);
            let features = filter.tokenizer().tokenize(&raw);
            let done = store
                .filter_untrain(filter.classifier(), &features, &fingerprint(&raw))
                .map_err(err)?;
            Ok(json!({ "untrained": done }))
        }
        Request::FilterClassify { raw_b64 } => {
            let raw = decode(&raw_b64)?;
            let classification = filter_of(settings)
                .classify(store, &raw)
                .map_err(|e| e.to_string())?;
            to_value(classification)
        }
        Request::FilterStats => to_value(store.filter_stats().map_err(err)?),
        Request::FilterExpire {
            before_day,
            max_count,
        } => {
            let removed = store.filter_expire(before_day, max_count).map_err(err)?;
            Ok(json!({ "removed": removed }))
        }
        Request::FilterExport => {
            let mut out = Vec::new();
            let tokens = store.filter_export(&mut out).map_err(err)?;
            Ok(json!({
                "tokens": tokens,
                "model_b64": base64::engine::general_purpose::STANDARD.encode(out),
            }))
        }
        Request::FilterImport { model_b64 } => {
            let model = decode(&model_b64)?;
            let tokens = store.filter_import(&mut model.as_slice()).map_err(err)?;
            Ok(json!({ "tokens": tokens }))
        }
        Request::QuarantineList => to_value(store.quarantine().map_err(err)?),
        Request::QuarantineShow { id } => {
            match store.quarantine_get(MessageKey(id)).map_err(err)? {
                Some(m) => to_value(m),
                None => Err(format!("no quarantined message {id}")),
            }
        }
        Request::QuarantineRelease { id } => {
            if store.quarantine_get(MessageKey(id)).map_err(err)?.is_none() {
                return Err(format!("no quarantined message {id}"));
            }
            let filter = filter_of(settings);
            let outcome = store
                .message_feedback(
                    MessageKey(id),
                    Label::Ham,
                    filter.tokenizer(),
                    filter.classifier(),
                    today(),
                )
                .map_err(err)?;
            to_value(outcome)
        }
        Request::QuarantineDelete { id } => {
            if !store.quarantine_delete(MessageKey(id)).map_err(err)? {
                return Err(format!("no quarantined message {id}"));
            }
            Ok(json!({ "deleted": id }))
        }
        Request::Feedback { id, label } => {
            let filter = filter_of(settings);
            let outcome = store
                .message_feedback(
                    MessageKey(id),
                    label,
                    filter.tokenizer(),
                    filter.classifier(),
                    today(),
                )
                .map_err(err)?;
            to_value(outcome)
        }
        Request::TokenCreate {
            name,
            role,
            expires_at,
        } => {
            let role: Role = role
                .parse()
                .map_err(|e: <Role as std::str::FromStr>::Err| e.to_string())?;
            let (info, secret) = store
                .token_create(&name, role, expires_at)
                .map_err(|e| e.to_string())?;
            Ok(json!({ "token": info, "secret": secret }))
        }
        Request::TokenList => to_value(store.token_list().map_err(err)?),
        Request::TokenRevoke { id } => {
            if !store.token_revoke(id).map_err(err)? {
                return Err(format!("no token {id}"));
            }
            Ok(json!({ "revoked": id }))
        }
        Request::PrivacyErase { email, dry_run } => to_value(
            store
                .erase_person(&email, dry_run, Actor::Cli)
                .map_err(err)?,
        ),
        Request::PrivacyExport { email } => {
            let Some(export) = store.export_person(&email, Actor::Cli).map_err(err)? else {
                return Err("no contact with that address".to_string());
            };
            let archive = mailroom_store::write_export_archive(&export, Vec::new())
                .map_err(|e| e.to_string())?;
            Ok(json!({
                "contact": export.contact.id,
                "tickets": export.tickets.len(),
                "messages": export.messages.len(),
                "attachments": export.attachments.len(),
                "archive_b64": base64::engine::general_purpose::STANDARD.encode(archive),
            }))
        }
        Request::PrivacyRetention { rules, at, dry_run } => to_value(
            store
                .retention_apply(rules, at.unwrap_or_else(now_secs), dry_run, Actor::Cli)
                .map_err(err)?,
        ),
        Request::AuditList { before, limit } => to_value(
            store
                .audit_list(before, limit.clamp(1, 10_000))
                .map_err(err)?,
        ),
        Request::Backup { out } => to_value(store.backup(&out, Actor::Cli).map_err(err)?),
        Request::AgentDelete { name } => {
            match store.agent_delete(&name, Actor::Cli).map_err(err)? {
                Some(done) => to_value(done),
                None => Err(format!("no agent named {name:?}")),
            }
        }
        Request::TicketStatus { id, status } => {
            match store
                .ticket_set_status(TicketId(id), status, Actor::Cli)
                .map_err(err)?
            {
                Some(summary) => to_value(summary),
                None => Err(format!("no ticket #{id}")),
            }
        }
        Request::Ingest { origin, raw_b64 } => {
            let raw = decode(&raw_b64)?;
            let id = store
                .spool_append_blocking(file_envelope(&origin), raw)
                .map_err(err)?;
            Ok(json!({"spool": id.0}))
        }
        Request::ImapStatus => crate::imap::stored_status(store),
        Request::ImapSync { name } => Err(format!(
            "no server runs: `mailroom imap sync {name}` syncs in its own process then"
        )),
    }
}

fn decode(b64: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| format!("bad base64: {e}"))
}

/// The filter to train and classify with: the configured one, or the defaults when the filter
/// is disabled for incoming mail (training by hand still works then).
fn filter_of(settings: &Settings) -> Filter {
    settings.filter.clone().unwrap_or_default()
}

/// The fingerprint that makes training idempotent: SHA-256 of the raw bytes.
pub fn fingerprint(raw: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(raw).into()
}

/// Days since the Unix epoch (the filter's clock for token expiry).
pub fn today() -> u32 {
    (now_secs() / 86_400) as u32
}

/// The envelope of a message read from a file.
pub fn file_envelope(origin: &str) -> Envelope {
    Envelope {
        source: Source::File,
        mail_from: String::new(),
        rcpt_to: Vec::new(),
        peer: origin.to_string(),
        helo: String::new(),
        received_at: now_secs(),
        tls: false,
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Serve the control socket until `shutdown` flips to true.
pub async fn serve(
    path: &Path,
    store: Store,
    settings: tokio::sync::watch::Receiver<Arc<Settings>>,
    max_request: usize,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    imap: crate::imap::Imap,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // We hold the store lock, so a socket file left here is stale (a killed server's).
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context("removing a stale control socket"),
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    println!("control: listening on {}", path.display());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        continue;
                    }
                };
                let store = store.clone();
                let settings = settings.clone();
                let imap = imap.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, store, settings, max_request, imap).await {
                        tracing::warn!(error = %e, "control connection failed");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

async fn serve_connection(
    stream: tokio::net::UnixStream,
    store: Store,
    settings: tokio::sync::watch::Receiver<Arc<Settings>>,
    max_request: usize,
    imap: crate::imap::Imap,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read).take(max_request as u64 + 1);
    loop {
        let mut line = Vec::new();
        let n = reader.read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(());
        }
        let response = if line.len() > max_request {
            Response {
                ok: None,
                error: Some(format!("request larger than {max_request} bytes")),
            }
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Err(e) => Response {
                    ok: None,
                    error: Some(format!("bad request: {e}")),
                },
                Ok(request) => {
                    let store = store.clone();
                    let settings = settings.borrow().clone();
                    let answer = match imap.answer(&request) {
                        Some(answer) => Ok(answer),
                        None => {
                            tokio::task::spawn_blocking(move || handle(&store, &settings, request))
                                .await
                        }
                    };
                    match answer {
                        Ok(Ok(v)) => Response {
                            ok: Some(v),
                            error: None,
                        },
                        Ok(Err(e)) => Response {
                            ok: None,
                            error: Some(e),
                        },
                        Err(e) => Response {
                            ok: None,
                            error: Some(format!("internal error: {e}")),
                        },
                    }
                }
            }
        };
        let mut out = serde_json::to_vec(&response)?;
        out.push(b'\n');
        write.write_all(&out).await?;
        if line.len() > max_request {
            return Ok(());
        }
        reader.set_limit(max_request as u64 + 1);
    }
}
