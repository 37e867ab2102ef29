//! IMAP in the binary: the store behind `mailroom-imap`'s [`ImapStore`], the accounts from the
//! config, the running fetchers (started by `serve`, changed by a reload), and the
//! `imap status` / `imap sync` commands.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use mailroom_config::{Config, ImapAccount, ImapAfter, ImapTls};
use mailroom_imap::{
    AccountConfig, AccountStatus, After, Appended, Fetchers, ImapStore, Limits, Secret, StatusCell,
    SyncState, TlsMode,
};
use mailroom_spool::{Envelope, SpoolError};
use mailroom_store::{ImapAppend, ImapSyncState, Store};
use serde_json::{json, Value};

use crate::control::{self, Request};

/// How long a stopped account may take to finish its batch (shutdown, reload).
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The store, as the IMAP workers see it.
pub struct StoreImap(pub Store);

fn io(e: impl std::fmt::Display) -> SpoolError {
    SpoolError::Io(e.to_string())
}

impl ImapStore for StoreImap {
    fn append(
        &self,
        account: &str,
        envelope: Envelope,
        raw: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Appended, SpoolError>> + Send {
        let append = self.0.imap_append(account, envelope, raw);
        async move {
            Ok(match append.await? {
                ImapAppend::Spooled(id) => Appended::New(id),
                ImapAppend::Duplicate => Appended::Duplicate,
            })
        }
    }

    fn load_state(
        &self,
        account: &str,
        identity: &str,
    ) -> impl std::future::Future<Output = Result<Option<SyncState>, SpoolError>> + Send {
        let (store, account, identity) = (self.0.clone(), account.to_owned(), identity.to_owned());
        async move {
            let state = tokio::task::spawn_blocking(move || store.imap_state(&account, &identity))
                .await
                .map_err(io)?
                .map_err(io)?;
            Ok(state.map(|s| SyncState {
                uid_validity: s.uid_validity,
                last_uid: s.last_uid,
            }))
        }
    }

    fn save_state(
        &self,
        account: &str,
        identity: &str,
        state: SyncState,
    ) -> impl std::future::Future<Output = Result<(), SpoolError>> + Send {
        let (store, account, identity) = (self.0.clone(), account.to_owned(), identity.to_owned());
        async move {
            let state = ImapSyncState {
                uid_validity: state.uid_validity,
                last_uid: state.last_uid,
            };
            tokio::task::spawn_blocking(move || store.imap_set_state(&account, &identity, state))
                .await
                .map_err(io)?
                .map_err(io)
        }
    }
}

/// One `[[imap]]` account as its worker needs it.
pub fn account(config: &Config, a: &ImapAccount) -> AccountConfig {
    let secret = match (&a.password_env, &a.password_file, &a.xoauth2_token_file) {
        (Some(var), _, _) => Secret::PasswordEnv(var.clone()),
        (None, Some(file), _) => Secret::PasswordFile(file.clone()),
        (None, None, Some(file)) => Secret::Xoauth2TokenFile(file.clone()),
        // Validation requires one; an empty variable name fails at login, clearly.
        (None, None, None) => Secret::PasswordEnv(String::new()),
    };
    AccountConfig {
        name: a.name.clone(),
        host: a.host.clone(),
        port: a.port(),
        tls: match a.tls {
            ImapTls::Implicit => TlsMode::Implicit,
            ImapTls::Starttls => TlsMode::StartTls,
            ImapTls::None => TlsMode::None,
        },
        ca_file: a.ca_file.clone(),
        username: a.username.clone(),
        secret,
        mailbox: a.mailbox.clone(),
        after: match a.after() {
            ImapAfter::Seen => After::Seen,
            ImapAfter::Move(folder) => After::Move(folder),
            ImapAfter::Delete => After::Delete,
        },
        poll_interval: a.poll_interval(),
        limits: Limits {
            max_message_size: config.smtp.max_message_size as u64,
            ..Limits::default()
        },
    }
}

/// Every account of `config`.
pub fn accounts(config: &Config) -> Vec<AccountConfig> {
    config.imap.iter().map(|a| account(config, a)).collect()
}

/// The running account workers, shared by the control socket and the reload loop.
#[derive(Clone)]
pub struct Imap(Arc<Mutex<Option<Fetchers<StoreImap>>>>);

impl Imap {
    /// Start a worker for every account of `config` (inside the runtime).
    pub fn start(config: &Config, store: &Store) -> Imap {
        let mut fetchers = Fetchers::new(Arc::new(StoreImap(store.clone())), STOP_GRACE);
        let (started, _, _) = fetchers.apply(accounts(config));
        if !started.is_empty() {
            println!("imap: fetching {}", started.join(", "));
        }
        Imap(Arc::new(Mutex::new(Some(fetchers))))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Fetchers<StoreImap>) -> T) -> Option<T> {
        let mut guard = match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.as_mut().map(f)
    }

    /// After a reload: start added accounts, stop removed ones, restart changed ones (the
    /// others keep their connection). Prints what changed.
    pub fn apply(&self, config: &Config) {
        let changed = self.with(|f| f.apply(accounts(config)));
        if let Some((started, stopped, restarted)) = changed {
            for (what, names) in [
                ("started", started),
                ("stopped", stopped),
                ("restarted", restarted),
            ] {
                if !names.is_empty() {
                    tracing::info!(accounts = ?names, "IMAP accounts {what}");
                    println!("imap: {what} {}", names.join(", "));
                }
            }
        }
    }

    /// Every account's status.
    pub fn status(&self) -> Vec<AccountStatus> {
        self.with(|f| f.status()).unwrap_or_default()
    }

    /// Stop every account (each may finish its batch within the grace period).
    pub async fn shutdown(&self) {
        let fetchers = match self.0.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(f) = fetchers {
            f.shutdown().await;
        }
    }

    /// Answer the IMAP requests of the control socket; `None` for any other request.
    pub fn answer(&self, request: &Request) -> Option<Result<Value, String>> {
        match request {
            Request::ImapStatus => Some(Ok(json!({
                "running": true,
                "accounts": self.status(),
            }))),
            Request::ImapSync { name } => Some(
                self.with(|f| f.sync_now(name))
                    .flatten()
                    .ok_or_else(|| format!("no IMAP account named {name:?}"))
                    .and_then(|s| serde_json::to_value(s).map_err(|e| e.to_string())),
            ),
            _ => None,
        }
    }
}

/// `imap status` when no server runs: what the store holds.
pub fn stored_status(store: &Store) -> Result<Value, String> {
    let stored = store.imap_accounts().map_err(|e| e.to_string())?;
    Ok(json!({ "running": false, "stored": stored }))
}

/// `mailroom imap status [--json]`.
pub fn status_command(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let v = control::call(config, Request::ImapStatus)?;
    let rows: Vec<Value> = if v["running"].as_bool() == Some(true) {
        v["accounts"].as_array().cloned().unwrap_or_default()
    } else {
        // No server: the configured accounts, with what the store remembers of each.
        let stored = v["stored"].as_array().cloned().unwrap_or_default();
        config
            .imap
            .iter()
            .map(|a| {
                let s = stored.iter().find(|s| s["account"] == a.name.as_str());
                json!({
                    "name": a.name,
                    "state": "not running",
                    "uid_validity": s.map(|s| s["uid_validity"].clone()),
                    "last_uid": s.map(|s| s["last_uid"].clone()),
                    "messages": s.map(|s| s["messages"].clone()),
                    "last_sync_at": s.map(|s| s["updated_at"].clone()),
                })
            })
            .collect()
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&Value::Array(rows))?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no IMAP accounts configured");
        return Ok(ExitCode::SUCCESS);
    }
    let cell = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!(
        "{:<20} {:<12} {:>10} {:>8} {:>10} {:>8}  LAST ERROR",
        "ACCOUNT", "STATE", "LAST UID", "SPOOLED", "DUPLICATES", "ERRORS"
    );
    for r in &rows {
        println!(
            "{:<20} {:<12} {:>10} {:>8} {:>10} {:>8}  {}",
            cell(&r["name"]),
            cell(&r["state"]),
            cell(&r["last_uid"]),
            cell(if r["spooled"].is_null() {
                &r["messages"]
            } else {
                &r["spooled"]
            }),
            cell(&r["duplicates"]),
            cell(&r["errors_total"]),
            cell(&r["last_error"]),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `mailroom imap sync NAME`: fetch new mail of one account now, with a progress bar. With a
/// running server, it asks the server and follows the account's progress; without, it syncs
/// here and processes what it spooled, as `ingest` does.
pub fn sync_command(config: &Config, name: &str) -> anyhow::Result<ExitCode> {
    let Some(a) = config.imap.iter().find(|a| a.name == name) else {
        bail!("no [[imap]] account named {name:?} in the config");
    };
    let bar = crate::output::progress(0, "fetching", false);
    if let Some(mut stream) = control::connect(config) {
        let before: AccountStatus = serde_json::from_value(control::call_remote(
            &mut stream,
            &Request::ImapSync {
                name: name.to_owned(),
            },
        )?)
        .context("decoding the account's status")?;
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let v = control::call_remote(&mut stream, &Request::ImapStatus)?;
            let now: AccountStatus = v["accounts"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["name"] == name))
                .map(|s| serde_json::from_value(s.clone()))
                .transpose()?
                .ok_or_else(|| anyhow!("the server no longer runs account {name:?}"))?;
            if let Some(p) = now.progress {
                bar.set_length(p.total);
                bar.set_position(p.done);
            }
            if now.errors_total > before.errors_total {
                bar.abandon();
                bail!(
                    "account {name}: {}",
                    now.last_error.unwrap_or_else(|| "failed".to_owned())
                );
            }
            if now.syncs > before.syncs {
                bar.finish_and_clear();
                println!(
                    "{name}: synced up to UID {} ({} spooled, {} already spooled, {} left on the server as too large, since the server started); the running server is processing them",
                    now.last_uid.unwrap_or(0),
                    now.spooled,
                    now.duplicates,
                    now.skipped
                );
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    let store = control::open_store(config)?;
    let account = account(config, a);
    let status = StatusCell::new(name);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let imap_store = StoreImap(store.clone());
    let report = runtime.block_on(async {
        let sync = mailroom_imap::sync_once(&account, &imap_store, &status);
        tokio::pin!(sync);
        loop {
            tokio::select! {
                r = &mut sync => break r,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if let Some(p) = status.snapshot().progress {
                        bar.set_length(p.total);
                        bar.set_position(p.done);
                    }
                }
            }
        }
    });
    bar.finish_and_clear();
    let report = report.with_context(|| format!("account {name}"))?;
    let pending = store.spool_len() as u64;
    let bar = crate::output::progress(pending, "processing", false);
    let settings = crate::serve::settings(config)?;
    crate::serve::load_starter_model(config, &store)?;
    let drained = mailroom_pipeline::drain(&store, &settings, |_| bar.inc(1))?;
    bar.finish_and_clear();
    store.flush()?;
    println!(
        "{name}: synced up to UID {} ({} spooled, {} already spooled, {} left on the server as too large); {drained}",
        report.last_uid, report.spooled, report.duplicates, report.skipped
    );
    Ok(ExitCode::SUCCESS)
}
