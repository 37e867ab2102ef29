//! `mailroom serve`: wires the store, the SMTP server, the pipeline workers and the control socket
//! together, and shuts them down in order on SIGTERM / Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use mailroom_api::{ApiConfig, AppState};
use mailroom_config::Config;
use mailroom_config::FilterAlgorithm;
use mailroom_pipeline::{Filter, Limits, Settings};
use mailroom_smtp::SmtpConfig;
use mailroom_spamfilter::Algorithm;
use mailroom_store::Store;
use tokio::sync::watch;

/// The pipeline's limits from the config.
pub fn limits(config: &Config) -> Limits {
    Limits {
        max_mime_parts: config.pipeline.max_mime_parts,
        max_header_fields: config.pipeline.max_header_fields,
        max_nesting_depth: config.pipeline.max_nesting_depth,
        max_message_size: config.smtp.max_message_size,
    }
}

/// The pipeline's settings (limits and spam filter) from the config.
pub fn settings(config: &Config) -> anyhow::Result<Settings> {
    let f = &config.filter;
    let filter = if f.enabled {
        let algorithm = match f.algorithm {
            FilterAlgorithm::Fusion => Algorithm::Fusion,
            FilterAlgorithm::Fisher => Algorithm::Fisher,
            FilterAlgorithm::NaiveBayes => Algorithm::NaiveBayes,
            FilterAlgorithm::Logistic => Algorithm::Logistic,
        };
        Some(
            Filter::new(algorithm, f.ham_cutoff, f.spam_cutoff, f.explain_tokens)
                .context("filter settings")?,
        )
    } else {
        None
    };
    Ok(Settings {
        limits: limits(config),
        filter,
    })
}

/// The starter model built into the binary: trained on the SpamAssassin public corpus
/// (see `models/README.md` for the recipe).
pub const BUILTIN_STARTER_MODEL: &[u8] = include_bytes!("../models/starter.mrfm");

/// When the store has learned nothing yet, load the starter model (`filter.starter_model`, or
/// the built-in one) so that a fresh installation classifies from its first message.
pub fn load_starter_model(config: &Config, store: &Store) -> anyhow::Result<()> {
    if !store.filter_is_empty()? {
        return Ok(());
    }
    let tokens = match &config.filter.starter_model {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading filter.starter_model {}", path.display()))?;
            store
                .filter_import(&mut bytes.as_slice())
                .with_context(|| format!("loading filter.starter_model {}", path.display()))?
        }
        // Only while bootstrapping (scripts/build-starter-model) is the built-in model empty.
        None if BUILTIN_STARTER_MODEL.is_empty() => return Ok(()),
        None => store
            .filter_import(&mut &BUILTIN_STARTER_MODEL[..])
            .context("loading the built-in starter model")?,
    };
    tracing::info!(tokens, "loaded the starter model");
    Ok(())
}

/// The HTTP API's settings from the config (loads the TLS certificate when configured,
/// refusing a key file that group or others may read).
pub fn api_config(config: &Config, listen: std::net::SocketAddr) -> anyhow::Result<ApiConfig> {
    let h = &config.http;
    let nets = |key: &str, list: &[String]| -> anyhow::Result<Vec<ipnet::IpNet>> {
        list.iter()
            .map(|n| {
                n.parse()
                    .with_context(|| format!("{key}: `{n}` is not a CIDR network"))
            })
            .collect()
    };
    let tls = match (&h.tls_cert, &h.tls_key) {
        (Some(cert), Some(key)) => {
            // The API speaks HTTP/1.1 only: the SMTP loader offers no ALPN, which fits.
            Some(
                mailroom_smtp::load_tls_checked(cert, key)
                    .context("loading http.tls_cert / http.tls_key")?,
            )
        }
        _ => None,
    };
    Ok(ApiConfig {
        listen,
        agent_networks: nets("http.agent_networks", &h.agent_networks)?,
        admin_networks: nets("http.admin_networks", &h.admin_networks)?,
        max_body_bytes: h.max_body_bytes,
        auth_failures_per_minute: h.auth_failures_per_minute,
        tls,
        max_connections: ApiConfig::default().max_connections,
    })
}

/// The config as admins see it over the API: secrets (key files' paths) redacted.
pub fn redacted_config(config: &Config) -> serde_json::Value {
    let mut v = serde_json::to_value(config).unwrap_or_default();
    for section in ["smtp", "http"] {
        if let Some(key) = v.get_mut(section).and_then(|s| s.get_mut("tls_key")) {
            if !key.is_null() {
                *key = serde_json::Value::String("[redacted]".into());
            }
        }
    }
    for account in v
        .get_mut("imap")
        .and_then(|a| a.as_array_mut())
        .into_iter()
        .flatten()
    {
        for key in ["password_file", "xoauth2_token_file"] {
            if let Some(path) = account.get_mut(key) {
                *path = serde_json::Value::String("[redacted]".into());
            }
        }
    }
    v
}

/// The SMTP server's settings from the config (loads the TLS certificate when configured,
/// refusing a key file that group or others may read).
pub fn smtp_config(config: &Config) -> anyhow::Result<SmtpConfig> {
    let s = &config.smtp;
    let tls = match (&s.tls_cert, &s.tls_key) {
        (Some(cert), Some(key)) => Some(
            mailroom_smtp::load_tls_checked(cert, key)
                .context("loading smtp.tls_cert / smtp.tls_key")?,
        ),
        _ => None,
    };
    Ok(SmtpConfig {
        hostname: s.hostname.clone(),
        domains: s.domains.clone(),
        max_message_size: s.max_message_size,
        max_recipients: s.max_recipients,
        max_line_length: s.max_line_length,
        max_connections: s.max_connections,
        max_message_memory: s.max_message_memory,
        max_errors: s.max_errors,
        idle_timeout: s.idle_timeout(),
        data_timeout: s.data_timeout(),
        min_data_rate: s.min_data_rate,
        shutdown_grace: s.shutdown_grace(),
        tls,
    })
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MAILROOM_LOG")
        .unwrap_or_else(|_| EnvFilter::new(config.log.level.as_str()));
    // async-imap traces every command it sends, LOGIN and AUTHENTICATE included: never log it.
    let filter = match "async_imap=off".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if config.log.format.as_str() == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Run the service until a shutdown signal.
pub fn serve(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    init_logging(&config);
    // Exactly one rustls crypto provider for the whole process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(config, config_path))
}

async fn run(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let smtp = smtp_config(&config)?;
    std::fs::create_dir_all(&config.store.path)
        .with_context(|| format!("creating {}", config.store.path.display()))?;
    let settings = settings(&config)?;
    let store = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Store> {
            let store = crate::control::open_store(&config)?;
            load_starter_model(&config, &store)?;
            Ok(store)
        })
        .await??
    };

    let metrics =
        mailroom_api::metrics::install_recorder().context("installing the metrics recorder")?;
    let mut http_listeners = Vec::new();
    for addr in &config.http.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding http.listen {addr}"))?;
        println!("http: listening on {}", listener.local_addr()?);
        http_listeners.push(listener);
    }
    let api_listen = match http_listeners.first() {
        Some(l) => l.local_addr()?,
        None => std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let (api_tx, api_rx) = watch::channel(Arc::new(api_config(&config, api_listen)?));
    let (config_json_tx, config_json_rx) = watch::channel(Arc::new(redacted_config(&config)));

    let mut listeners = Vec::new();
    for addr in &config.smtp.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding smtp.listen {addr}"))?;
        println!("smtp: listening on {}", listener.local_addr()?);
        listeners.push(listener);
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // New settings sent here apply to the next message (see `reload`).
    let (settings_tx, settings_rx) = watch::channel(Arc::new(settings));
    let workers = tokio::spawn(mailroom_pipeline::run_workers(
        store.clone(),
        config.pipeline.workers,
        settings_rx.clone(),
        shutdown_rx.clone(),
    ));
    // One task per `[[imap]]` account; none of them can stop another, or SMTP.
    let imap = crate::imap::Imap::start(&config, &store);
    // Before anything says "ready": see `ReloadTriggers` and `StopSignals`.
    let triggers = ReloadTriggers::install(config_path);
    let mut stop = StopSignals::install()?;
    let control = {
        let path = crate::control::socket_path(&config);
        let store = store.clone();
        let max_request = config.smtp.max_message_size / 3 * 4 + 64 * 1024;
        let rx = shutdown_rx.clone();
        let settings = settings_rx.clone();
        let imap = imap.clone();
        tokio::spawn(async move {
            crate::control::serve(&path, store, settings, max_request, rx, imap).await
        })
    };

    // Only new sessions read the config; a reload sends a new one here.
    let (smtp_tx, smtp_rx) = watch::channel(Arc::new(smtp));
    let state = AppState::new(
        store.clone(),
        settings_rx.clone(),
        api_rx,
        config_json_rx,
        metrics,
    );
    let mut http_tasks = Vec::new();
    for listener in http_listeners {
        let state = state.clone();
        let mut stop = shutdown_rx.clone();
        http_tasks.push(tokio::spawn(async move {
            mailroom_api::serve(listener, state, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
        }));
    }
    let (retention_tx, retention_rx) = watch::channel(Arc::new(config.retention.clone()));
    let sweeper = tokio::spawn(retention_sweeper(
        store.clone(),
        retention_rx,
        shutdown_rx.clone(),
    ));
    let reloader = tokio::spawn(reload_loop(
        triggers,
        Live {
            running: config.clone(),
            api_listen,
            smtp: smtp_tx,
            settings: settings_tx,
            api: api_tx,
            config_json: config_json_tx,
            retention: retention_tx,
            imap: imap.clone(),
        },
        shutdown_rx.clone(),
    ));
    let spool = Arc::new(store.spool());
    let mut smtp_shutdown = shutdown_rx.clone();
    let smtp_task = tokio::spawn(async move {
        mailroom_smtp::run(listeners, smtp_rx, spool, async move {
            let _ = smtp_shutdown.wait_for(|stop| *stop).await;
        })
        .await
    });

    let signal = stop.wait().await;
    tracing::info!(signal, "shutting down");
    println!("mailroom: {signal}: shutting down");
    let _ = shutdown_tx.send(true);

    // SMTP first (it lets sessions in flight finish within the grace period), then the
    // pipeline finishes the entries it holds, then the control socket goes.
    match smtp_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "smtp server stopped with an error"),
        Err(e) => tracing::error!(error = %e, "smtp server task failed"),
    }
    // IMAP accounts finish their batch (or are aborted after a grace period: safe, an
    // unconfirmed batch is fetched again and recognised).
    imap.shutdown().await;
    for task in http_tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "http api stopped with an error"),
            Err(e) => tracing::error!(error = %e, "http api task failed"),
        }
    }
    if let Err(e) = workers.await {
        tracing::error!(error = %e, "pipeline workers failed");
    }
    match control.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "control socket failed"),
        Err(e) => tracing::error!(error = %e, "control socket task failed"),
    }
    reloader.abort();
    // A sweep in progress finishes (it runs on a blocking thread); the next one never starts.
    if let Err(e) = sweeper.await {
        tracing::error!(error = %e, "retention sweeper failed");
    }
    tokio::task::spawn_blocking(move || store.flush()).await??;
    println!("mailroom: stopped");
    Ok(())
}

/// SIGTERM and SIGINT, listened for from before the service says it is ready (their default
/// action would end the process without a graceful shutdown).
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        })
    }

    async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// What a reload updates: the config in force and the channels the services read it from.
struct Live {
    running: Config,
    api_listen: std::net::SocketAddr,
    smtp: watch::Sender<Arc<SmtpConfig>>,
    settings: watch::Sender<Arc<Settings>>,
    api: watch::Sender<Arc<ApiConfig>>,
    config_json: watch::Sender<Arc<serde_json::Value>>,
    retention: watch::Sender<Arc<mailroom_config::RetentionConfig>>,
    /// Accounts added, removed or changed by a reload are started, stopped or restarted.
    imap: crate::imap::Imap,
}

/// Keys that are read once at start; a reload that changes them says a restart is needed.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.store != new.store {
        keys.push("store");
    }
    if old.smtp.listen != new.smtp.listen {
        keys.push("smtp.listen");
    }
    if old.http.listen != new.http.listen {
        keys.push("http.listen");
    }
    if old.pipeline.workers != new.pipeline.workers {
        keys.push("pipeline.workers");
    }
    if old.log != new.log {
        keys.push("log");
    }
    keys
}

impl Live {
    /// Read, check and swap in the config at `path`; a bad file is rejected and the running
    /// config kept. Prints one line (`config: reloaded` / `config: rejected: ...`).
    fn reload(&mut self, path: &std::path::Path) {
        let result = Config::load(path)
            .map_err(anyhow::Error::from)
            .and_then(|new| {
                let smtp = smtp_config(&new)?;
                let settings = settings(&new)?;
                let api = api_config(&new, self.api_listen)?;
                Ok((new, smtp, settings, api))
            });
        match result {
            Ok((new, smtp, settings, api)) => {
                let restart = restart_only_changes(&self.running, &new);
                self.smtp.send_replace(Arc::new(smtp));
                self.settings.send_replace(Arc::new(settings));
                self.api.send_replace(Arc::new(api));
                self.config_json
                    .send_replace(Arc::new(redacted_config(&new)));
                self.retention.send_replace(Arc::new(new.retention.clone()));
                self.imap.apply(&new);
                self.running = new;
                if restart.is_empty() {
                    tracing::info!("configuration reloaded");
                    println!("config: reloaded");
                } else {
                    tracing::warn!(keys = ?restart, "configuration reloaded; these keys need a restart");
                    println!(
                        "config: reloaded (restart needed for {})",
                        restart.join(", ")
                    );
                }
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "configuration rejected; keeping the running one");
                println!("config: rejected: {e:#}");
            }
        }
    }
}

/// Apply the retention rules every `retention.sweep_minutes`, and at once after a config
/// reload (the rules and the interval follow reloads), until shutdown. Logs counts only.
async fn retention_sweeper(
    store: Store,
    mut rules: watch::Receiver<Arc<mailroom_config::RetentionConfig>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let minutes = u64::from(rules.borrow().sweep_minutes.max(1));
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(minutes * 60)) => {}
            changed = rules.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
        let r = crate::privacy_cmd::retention_rules(&rules.borrow_and_update());
        let now = crate::control::now_secs();
        let store = store.clone();
        match tokio::task::spawn_blocking(move || {
            store.retention_apply(r, now, false, mailroom_store::Actor::System)
        })
        .await
        {
            Ok(Ok(report)) => tracing::info!(
                quarantine = report.quarantine.len(),
                closed_tickets = report.closed_tickets.len(),
                attachments = report.attachments.len(),
                audit = report.audit,
                "retention applied"
            ),
            Ok(Err(e)) => tracing::error!(error = %e, "retention sweep failed"),
            Err(e) => tracing::error!(error = %e, "retention sweep task failed"),
        }
    }
}

/// What makes the service reload: SIGHUP and changes of the config file. Installed before the
/// service says it is ready, so that no edit and no SIGHUP (whose default action would end the
/// process) can come too early.
struct ReloadTriggers {
    path: PathBuf,
    changes: tokio::sync::mpsc::Receiver<()>,
    /// Kept alive for the life of the loop.
    _watcher: Option<notify::RecommendedWatcher>,
    hup: Option<tokio::signal::unix::Signal>,
}

impl ReloadTriggers {
    fn install(path: Option<PathBuf>) -> Option<ReloadTriggers> {
        use tokio::signal::unix::{signal, SignalKind};
        let path = path?;
        let (tx, changes) = tokio::sync::mpsc::channel::<()>(1);
        let watcher = watch_file(&path, tx);
        let hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        Some(ReloadTriggers {
            path,
            changes,
            _watcher: watcher,
            hup,
        })
    }
}

/// Reload on SIGHUP and whenever the config file changes (editors that replace the file by a
/// rename included: the directory is watched). Without a config file there is nothing to do.
async fn reload_loop(
    triggers: Option<ReloadTriggers>,
    mut live: Live,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(mut t) = triggers else {
        return;
    };
    loop {
        tokio::select! {
            _ = async {
                match t.hup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
            Some(()) = t.changes.recv() => {
                // Let the editor finish writing (several events come for one save).
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                while t.changes.try_recv().is_ok() {}
            }
            _ = shutdown.changed() => return,
        }
        live.reload(&t.path);
    }
}

/// Watch the directory of `path` and signal `tx` when an event names the file.
fn watch_file(
    path: &std::path::Path,
    tx: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let file = path.file_name()?.to_owned();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            let ours = event
                .paths
                .iter()
                .any(|p| p.file_name() == Some(file.as_os_str()));
            let change = !matches!(event.kind, notify::EventKind::Access(_));
            if ours && change {
                let _ = tx.try_send(());
            }
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the config file; SIGHUP still reloads"))
    .ok()?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(
            |e| tracing::warn!(error = %e, "cannot watch the config file; SIGHUP still reloads"),
        )
        .ok()?;
    Some(watcher)
}
