//! `mailroom serve`: wires the store, the SMTP server, the pipeline workers and the control socket
//! together, and shuts them down in order on SIGTERM / Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
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

/// The SMTP server's settings from the config (loads the TLS certificate when configured).
pub fn smtp_config(config: &Config) -> anyhow::Result<SmtpConfig> {
    let s = &config.smtp;
    let tls = match (&s.tls_cert, &s.tls_key) {
        (Some(cert), Some(key)) => Some(
            mailroom_smtp::load_tls(cert, key).context("loading smtp.tls_cert / smtp.tls_key")?,
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
        max_errors: s.max_errors,
        idle_timeout: s.idle_timeout(),
        data_timeout: s.data_timeout(),
        shutdown_grace: s.shutdown_grace(),
        tls,
    })
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MAILROOM_LOG")
        .unwrap_or_else(|_| EnvFilter::new(config.log.level.as_str()));
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
pub fn serve(config: Config, _config_path: Option<PathBuf>) -> anyhow::Result<()> {
    init_logging(&config);
    // Exactly one rustls crypto provider for the whole process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
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

    let mut listeners = Vec::new();
    for addr in &config.smtp.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding smtp.listen {addr}"))?;
        println!("smtp: listening on {}", listener.local_addr()?);
        listeners.push(listener);
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // New settings sent here apply to the next message (a reload is a later feature).
    let (_settings_tx, settings_rx) = watch::channel(Arc::new(settings));
    let workers = tokio::spawn(mailroom_pipeline::run_workers(
        store.clone(),
        config.pipeline.workers,
        settings_rx.clone(),
        shutdown_rx.clone(),
    ));
    let control = {
        let path = crate::control::socket_path(&config);
        let store = store.clone();
        let max_request = config.smtp.max_message_size / 3 * 4 + 64 * 1024;
        let rx = shutdown_rx.clone();
        let settings = settings_rx.clone();
        tokio::spawn(
            async move { crate::control::serve(&path, store, settings, max_request, rx).await },
        )
    };

    // Only new sessions read the config; a reload (a later feature) sends a new one here.
    let (_smtp_tx, smtp_rx) = watch::channel(Arc::new(smtp));
    let spool = Arc::new(store.spool());
    let mut smtp_shutdown = shutdown_rx.clone();
    let smtp_task = tokio::spawn(async move {
        mailroom_smtp::run(listeners, smtp_rx, spool, async move {
            let _ = smtp_shutdown.wait_for(|stop| *stop).await;
        })
        .await
    });

    let signal = wait_for_signal().await;
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
    if let Err(e) = workers.await {
        tracing::error!(error = %e, "pipeline workers failed");
    }
    match control.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "control socket failed"),
        Err(e) => tracing::error!(error = %e, "control socket task failed"),
    }
    tokio::task::spawn_blocking(move || store.flush()).await??;
    println!("mailroom: stopped");
    Ok(())
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}
