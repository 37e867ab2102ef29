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

use anyhow::{anyhow, Context};
use base64::Engine;
use mailroom_config::Config;
use mailroom_spool::{Envelope, Source};
use mailroom_store::{FailedId, MessageKey, Store, StoreError, TicketId};
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
    /// Spool one message read from a file.
    Ingest {
        /// Where it was read from (kept as the envelope's peer).
        origin: String,
        /// The raw message, base64.
        raw_b64: String,
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

/// Open the store of `config` in this process.
pub fn open_store(config: &Config) -> anyhow::Result<Store> {
    let options = mailroom_store::StoreOptions {
        spool_max_entries: config.store.spool_max_entries,
        spool_key_lifetime_secs: config.store.spool_key_lifetime_hours.saturating_mul(3600),
    };
    Store::open(&config.store.path, options)
        .with_context(|| format!("opening the store in {}", config.store.path.display()))
}

/// Connect to the running server, if there is one.
pub fn connect(config: &Config) -> Option<UnixStream> {
    UnixStream::connect(socket_path(config)).ok()
}

/// Send `request` to the running server, or, when none runs, open the store and answer it here.
pub fn call(config: &Config, request: Request) -> anyhow::Result<Value> {
    if let Some(mut stream) = connect(config) {
        return call_remote(&mut stream, &request);
    }
    let store = open_store(config)?;
    handle(&store, request).map_err(|e| anyhow!(e))
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
pub fn handle(store: &Store, request: Request) -> Result<Value, String> {
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
        Request::Ingest { origin, raw_b64 } => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(raw_b64.as_bytes())
                .map_err(|e| format!("bad base64: {e}"))?;
            let id = store
                .spool_append_blocking(file_envelope(&origin), raw)
                .map_err(err)?;
            Ok(json!({"spool": id.0}))
        }
    }
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
    max_request: usize,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
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
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, store, max_request).await {
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
    max_request: usize,
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
                    match tokio::task::spawn_blocking(move || handle(&store, request)).await {
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
