//! `mailroom`: the command line. Wiring only: it reads the config, opens the store (or talks to
//! the running server over its control socket) and starts the services from the library crates.

mod control;
mod ingest;
mod output;
mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use mailroom_config::Config;

/// Help-desk mail ingestion: an SMTP server that turns mail into tickets.
#[derive(Debug, Parser)]
#[command(name = "mailroom", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options every command that uses the store takes.
#[derive(Debug, Args, Clone)]
struct Common {
    /// Configuration file (TOML). Without it, built-in defaults are used (data in ./data).
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: SMTP server, pipeline workers and the local control socket.
    Serve(Common),
    /// Feed messages from files through the same spool and pipeline as SMTP.
    ///
    /// PATH may be a message file (.eml), a directory, a maildir or an mbox. When a server is
    /// running, the messages are handed to it; otherwise they are processed here.
    Ingest {
        #[command(flatten)]
        common: Common,
        /// Files or directories to read.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// List and show tickets.
    Tickets {
        #[command(subcommand)]
        command: TicketsCommand,
    },
    /// Messages that could not be processed.
    Failed {
        #[command(subcommand)]
        command: FailedCommand,
    },
    /// Stored messages.
    Messages {
        #[command(subcommand)]
        command: MessagesCommand,
    },
    /// Auto-replies and bounces that matched no ticket (kept, never a ticket).
    Orphans {
        #[command(flatten)]
        common: Common,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Counts of what the store holds.
    Stats {
        #[command(flatten)]
        common: Common,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TicketsCommand {
    /// List tickets, newest first.
    List {
        #[command(flatten)]
        common: Common,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Show one ticket: its messages, flags and attachments with their tags.
    Show {
        #[command(flatten)]
        common: Common,
        /// Ticket number.
        id: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum MessagesCommand {
    /// Write a stored message exactly as it was received (RFC 5322, with our Received: header).
    Raw {
        #[command(flatten)]
        common: Common,
        /// Message id (from `tickets show`).
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
enum FailedCommand {
    /// List messages that failed processing, with the reason.
    List {
        #[command(flatten)]
        common: Common,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put failed messages back into the spool for another try.
    Retry {
        #[command(flatten)]
        common: Common,
        /// Ids to retry (from `failed list`).
        #[arg(value_name = "ID", required_unless_present = "all")]
        ids: Vec<u64>,
        /// Retry every failed message.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a configuration file: syntax, types, unknown keys and values.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("mailroom: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// Load the config named by `--config`, or the defaults.
fn load_config(common: &Common) -> anyhow::Result<Config> {
    match &common.config {
        Some(path) => Ok(Config::load(path)?),
        None => Ok(Config::default()),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(common) => {
            let config = load_config(&common)?;
            serve::serve(config, common.config.clone())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingest { common, paths } => {
            let config = load_config(&common)?;
            ingest::ingest(&config, &paths)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tickets { command } => match command {
            TicketsCommand::List { common, json } => {
                let config = load_config(&common)?;
                let value = control::call(&config, control::Request::TicketsList)?;
                output::tickets_list(&value, json)?;
                Ok(ExitCode::SUCCESS)
            }
            TicketsCommand::Show { common, id, json } => {
                let config = load_config(&common)?;
                let value = control::call(&config, control::Request::TicketShow { id })?;
                output::ticket_show(&value, json)?;
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Failed { command } => match command {
            FailedCommand::List { common, json } => {
                let config = load_config(&common)?;
                let value = control::call(&config, control::Request::FailedList)?;
                output::failed_list(&value, json)?;
                Ok(ExitCode::SUCCESS)
            }
            FailedCommand::Retry { common, ids, all } => {
                let config = load_config(&common)?;
                let ids = if all { None } else { Some(ids) };
                let value = control::call(&config, control::Request::FailedRetry { ids })?;
                output::failed_retry(&value)?;
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Messages {
            command: MessagesCommand::Raw { common, id },
        } => {
            let config = load_config(&common)?;
            let value = control::call(&config, control::Request::MessageRaw { id })?;
            output::raw_message(&value)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Orphans { common, json } => {
            let config = load_config(&common)?;
            let value = control::call(&config, control::Request::Orphans)?;
            output::orphans(&value, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats { common, json } => {
            let config = load_config(&common)?;
            let value = control::call(&config, control::Request::Stats)?;
            output::stats(&value, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(&file),
    }
}

fn config_check(file: &Path) -> anyhow::Result<ExitCode> {
    match Config::load(file) {
        Ok(config) => {
            if let (Some(cert), Some(key)) = (&config.smtp.tls_cert, &config.smtp.tls_key) {
                mailroom_smtp::load_tls(cert, key)
                    .with_context(|| format!("{}: smtp.tls_cert / smtp.tls_key", file.display()))?;
            }
            println!("{}: ok", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("{err}");
            Ok(ExitCode::from(2))
        }
    }
}
