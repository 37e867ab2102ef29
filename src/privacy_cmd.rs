//! `mailroom privacy ...`, `agent ...`, `backup`, `restore`, `tickets close|reopen`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use base64::Engine;
use clap::Subcommand;
use mailroom_config::{Config, RetentionConfig};
use mailroom_store::{AuditEntry, ErasureReport, RetentionReport, RetentionRules, TicketStatus};
use serde_json::Value;

use crate::control::{self, Request};
use crate::Common;

#[derive(Debug, Subcommand)]
pub(crate) enum PrivacyCommand {
    /// Erase a person: their contact, the tickets they opened, their messages, attachments,
    /// quarantine, spool and failed copies and learned-message records; then destroy their key
    /// so no copy (in old database files or backups) can be read. Writes an audit record.
    Erase {
        #[command(flatten)]
        common: Common,
        /// The person's address.
        #[arg(long, value_name = "ADDRESS")]
        email: String,
        /// Only list what would go.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Export a person's data (right of access): one .tar.gz with their contact, tickets and
    /// messages as JSON, the messages as .eml, and their attachments as files.
    Export {
        #[command(flatten)]
        common: Common,
        /// The person's address.
        #[arg(long, value_name = "ADDRESS")]
        email: String,
        /// The archive to write (created with mode 0600; must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Apply the [retention] rules of the config now (the running server also does every
    /// retention.sweep_minutes).
    Retention {
        #[command(flatten)]
        common: Common,
        /// Only list what would go.
        #[arg(long)]
        dry_run: bool,
        /// Apply the rules as at this time (Unix seconds), e.g. to see what will go next month.
        #[arg(long, value_name = "UNIX_SECONDS")]
        at: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The audit log, newest first: privacy actions, backups, restores, agent deletions
    /// (counts and ids only).
    Audit {
        #[command(flatten)]
        common: Common,
        /// At most this many records.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AgentCommand {
    /// Delete an agent: revoke every token with this name and remove the name from tickets
    /// and the audit log (they show `agent-N` from now on).
    Delete {
        #[command(flatten)]
        common: Common,
        /// The agent's name (the name their tokens were created with).
        name: String,
    },
}

/// The store's rules from the config's `[retention]`.
pub(crate) fn retention_rules(r: &RetentionConfig) -> RetentionRules {
    RetentionRules {
        quarantine_days: r.quarantine_days,
        closed_ticket_days: r.closed_ticket_days,
        attachment_days: r.attachment_days,
        audit_days: r.audit_days,
    }
}

pub(crate) fn privacy(
    command: PrivacyCommand,
    load: fn(&Common) -> anyhow::Result<Config>,
) -> anyhow::Result<ExitCode> {
    match command {
        PrivacyCommand::Erase {
            common,
            email,
            dry_run,
            json,
        } => {
            let v = control::call(&load(&common)?, Request::PrivacyErase { email, dry_run })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let r: ErasureReport = serde_json::from_value(v)?;
            print_erasure(&r);
        }
        PrivacyCommand::Export { common, email, out } => {
            let config = load(&common)?;
            if out.exists() {
                return Err(anyhow!("{} exists already", out.display()));
            }
            let v = control::call(&config, Request::PrivacyExport { email })?;
            let archive = base64::engine::general_purpose::STANDARD
                .decode(v["archive_b64"].as_str().unwrap_or_default())
                .context("decoding the archive")?;
            write_private(&out, &archive)?;
            println!(
                "{}: contact {}, {} tickets, {} messages, {} attachments ({} bytes)",
                out.display(),
                v["contact"],
                v["tickets"],
                v["messages"],
                v["attachments"],
                archive.len()
            );
        }
        PrivacyCommand::Retention {
            common,
            dry_run,
            at,
            json,
        } => {
            let config = load(&common)?;
            let rules = retention_rules(&config.retention);
            let v = control::call(&config, Request::PrivacyRetention { rules, at, dry_run })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let r: RetentionReport = serde_json::from_value(v)?;
            print_retention(&r);
        }
        PrivacyCommand::Audit {
            common,
            limit,
            json,
        } => {
            let v = control::call(
                &load(&common)?,
                Request::AuditList {
                    before: None,
                    limit,
                },
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let entries: Vec<AuditEntry> = serde_json::from_value(v)?;
            if entries.is_empty() {
                println!("no audit records");
            }
            for e in entries {
                let who = match (&e.agent, e.token) {
                    (Some(agent), Some(token)) => format!("token {token} ({agent})"),
                    _ => e.actor.clone(),
                };
                let counts: Vec<String> = e
                    .counts
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, n)| format!("{k}={n}"))
                    .collect();
                println!(
                    "{:>5}  {}  {:<12}  {:<24}  {}",
                    e.id,
                    crate::output::timestamp(e.at),
                    serde_json::to_value(e.action)?.as_str().unwrap_or("?"),
                    who,
                    counts.join(" ")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_erasure(r: &ErasureReport) {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    if !r.found && r.spool + r.failed == 0 {
        println!("no data held for that address");
        return;
    }
    println!(
        "{verb}: {} contact, {} tickets {:?}, {} messages, {} attachments ({} stored contents), \
         {} quarantined, {} orphans, {} spool, {} failed, {} learned records; {} other tickets updated {:?}",
        r.contacts,
        r.tickets.len(),
        r.tickets,
        r.messages.len(),
        r.attachments,
        r.blobs,
        r.quarantined,
        r.orphans,
        r.spool,
        r.failed,
        r.learned,
        r.tickets_updated.len(),
        r.tickets_updated
    );
    if !r.dry_run {
        println!(
            "person key destroyed: {}; spool keys destroyed: {}; audit record {}",
            if r.key_destroyed { "yes" } else { "no" },
            r.spool_keys_destroyed,
            r.audit_id.map_or("-".to_string(), |id| id.to_string())
        );
    }
}

fn print_retention(r: &RetentionReport) {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    println!(
        "{verb} (as at {}): {} quarantined messages {:?}, {} closed tickets {:?} ({} messages), \
         {} attachments {:?} ({} stored contents), {} audit records",
        crate::output::timestamp(r.now),
        r.quarantine.len(),
        r.quarantine,
        r.closed_tickets.len(),
        r.closed_tickets,
        r.messages.len(),
        r.attachments.len(),
        r.attachments,
        r.blobs,
        r.audit
    );
}

pub(crate) fn agent(
    command: AgentCommand,
    load: fn(&Common) -> anyhow::Result<Config>,
) -> anyhow::Result<ExitCode> {
    match command {
        AgentCommand::Delete { common, name } => {
            let v = control::call(&load(&common)?, Request::AgentDelete { name })?;
            println!(
                "agent deleted (now shown as agent-{}); {} tokens revoked",
                v["agent"], v["tokens_revoked"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn ticket_status(config: &Config, id: u64, close: bool) -> anyhow::Result<ExitCode> {
    let status = if close {
        TicketStatus::Closed
    } else {
        TicketStatus::Open
    };
    control::call(config, Request::TicketStatus { id, status })?;
    println!("ticket #{id} {}", if close { "closed" } else { "reopened" });
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn backup(config: &Config, out: &Path) -> anyhow::Result<ExitCode> {
    // The server may run elsewhere in the file system's view (its own working directory).
    let out = std::path::absolute(out).context("resolving --out")?;
    let v: Value = control::call(config, Request::Backup { out: out.clone() })?;
    let entries: u64 = v["trees"]
        .as_object()
        .map(|t| t.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    println!(
        "backup written to {}: {} entries, {} bytes, sha256 {}",
        out.display(),
        entries,
        v["bytes"],
        v["sha256"].as_str().unwrap_or_default()
    );
    println!(
        "(it holds no keys: keep {}/keys safe separately)",
        config.store.path.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn restore(config: &Config, dir: &Path) -> anyhow::Result<ExitCode> {
    if control::connect(config).is_some() {
        return Err(anyhow!(
            "a server is running on {}: stop it before restoring",
            config.store.path.display()
        ));
    }
    let report =
        mailroom_store::Store::restore(dir, &config.store.path, control::store_options(config))
            .with_context(|| format!("restoring {}", dir.display()))?;
    println!(
        "restored {} entries into {}",
        report.entries,
        config.store.path.display()
    );
    println!(
        "re-applied since the backup: {} people erased, {} agents deleted, {} tokens revoked; {} unreadable spool entries dropped",
        report.contacts_erased, report.agents_deleted, report.tokens_revoked, report.spool_unreadable
    );
    if let Some(previous) = report.previous_db {
        println!(
            "the database that was there is in {} (delete it once satisfied)",
            previous.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Write `bytes` to a new file `path` readable only by its owner.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
