//! `mailroom`: the command line. Wiring only: it reads the config, opens the store (or talks to
//! the running server over its control socket) and starts the services from the library crates.

mod control;
mod eval;
mod filter_cmd;
mod imap;
mod ingest;
mod output;
mod privacy_cmd;
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
pub(crate) struct Common {
    /// Configuration file (TOML). Without it, built-in defaults are used (data in ./data).
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub(crate) config: Option<PathBuf>,
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
    /// The spam filter: train, untrain, classify, stats, expire, export, import, eval.
    Filter {
        #[command(subcommand)]
        command: FilterCommand,
    },
    /// Messages the spam filter called spam.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// An agent's verdict on a stored message: the filter learns it at once; `spam` moves the
    /// message from its ticket to the quarantine, `ham` releases it from the quarantine.
    Feedback {
        #[command(flatten)]
        common: Common,
        /// Message id (from `tickets show` or `quarantine list`).
        message: u64,
        /// `spam` or `ham`.
        #[arg(value_parser = ["spam", "ham"])]
        label: String,
    },
    /// API tokens for agents and admins.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
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
    /// IMAP accounts: each one's state, and fetching new mail now.
    Imap {
        #[command(subcommand)]
        command: ImapCommand,
    },
    /// Check configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// A person's rights and the operator's duties: erasure, export, retention, audit log.
    Privacy {
        #[command(subcommand)]
        command: privacy_cmd::PrivacyCommand,
    },
    /// Agents (the people API tokens belong to).
    Agent {
        #[command(subcommand)]
        command: privacy_cmd::AgentCommand,
    },
    /// Write a consistent backup of the database into a new directory, while serving or not.
    /// The backup holds no keys: it can only be restored beside this data directory's keys/.
    Backup {
        #[command(flatten)]
        common: Common,
        /// The directory to write (created; must not hold a backup).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Restore a backup into the data directory (the server must be stopped). The database
    /// there is moved aside; erasures, agent deletions and token revocations made since the
    /// backup are applied again.
    Restore {
        #[command(flatten)]
        common: Common,
        /// The backup directory.
        dir: PathBuf,
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
    /// Close a ticket (closed tickets are deleted after retention.closed_ticket_days; a new
    /// message on it reopens it).
    Close {
        #[command(flatten)]
        common: Common,
        /// Ticket number.
        id: u64,
    },
    /// Reopen a closed ticket.
    Reopen {
        #[command(flatten)]
        common: Common,
        /// Ticket number.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
enum FilterCommand {
    /// Learn messages as ham and/or spam (files, directories, maildirs, mboxes). Training the
    /// same message twice is a no-op; training it with the other label relabels it.
    Train {
        #[command(flatten)]
        common: Common,
        /// Paths of ham (good mail).
        #[arg(long, num_args = 1.., value_name = "PATH")]
        ham: Vec<PathBuf>,
        /// Paths of spam.
        #[arg(long, num_args = 1.., value_name = "PATH")]
        spam: Vec<PathBuf>,
        /// A TREC-style index (`ham PATH` / `spam PATH` lines, paths relative to it): train in
        /// its order, which interleaves the labels as online learning wants.
        #[arg(long, value_name = "FILE")]
        index: Option<PathBuf>,
        /// Print the counts as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forget messages learned before (whatever their label).
    Untrain {
        #[command(flatten)]
        common: Common,
        /// Files, directories, maildirs or mboxes.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Print the counts as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Score one message: verdict, score and the tokens that decided. Nothing is stored.
    Classify {
        #[command(flatten)]
        common: Common,
        /// The message file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Messages learned, tokens, bytes on disk.
    Stats {
        #[command(flatten)]
        common: Common,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drop rare tokens not seen for a long time, to keep the model bounded.
    Expire {
        #[command(flatten)]
        common: Common,
        /// Not seen for this many days (default: filter.expire_days).
        #[arg(long)]
        days: Option<u32>,
        /// Only tokens seen in at most this many messages.
        #[arg(long, default_value_t = 1)]
        max_count: u32,
    },
    /// Write the model (token counts and totals) to a file.
    Export {
        #[command(flatten)]
        common: Common,
        /// Output file.
        file: PathBuf,
    },
    /// Replace the model with one from `filter export`.
    Import {
        #[command(flatten)]
        common: Common,
        /// Model file.
        file: PathBuf,
    },
    /// Measure accuracy with TREC's immediate-feedback protocol on a fresh temporary model.
    Eval(eval::EvalArgs),
}

#[derive(Debug, Subcommand)]
enum QuarantineCommand {
    /// List quarantined messages, newest first.
    List {
        #[command(flatten)]
        common: Common,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one quarantined message with its score and the tokens that decided.
    Show {
        #[command(flatten)]
        common: Common,
        /// Message id.
        id: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Release a message into a ticket (its old one if it still exists); the filter learns it
    /// as ham.
    Release {
        #[command(flatten)]
        common: Common,
        /// Message id.
        id: u64,
    },
    /// Delete a quarantined message for good.
    Delete {
        #[command(flatten)]
        common: Common,
        /// Message id.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token. Its secret is printed once and stored only as a hash.
    Create {
        #[command(flatten)]
        common: Common,
        /// A name to recognise it by (e.g. the agent's handle).
        #[arg(long)]
        name: String,
        /// What it may do.
        #[arg(long, value_parser = ["agent", "admin"])]
        role: String,
        /// Days until it stops working (default: never).
        #[arg(long, value_name = "DAYS")]
        expires: Option<u64>,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        common: Common,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: it stops working at once.
    Revoke {
        #[command(flatten)]
        common: Common,
        /// Token id (from `token list`).
        id: u64,
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
enum ImapCommand {
    /// Each account's state (connecting, syncing, idle, polling, or backoff with the last
    /// error), its last UID and what it has spooled.
    Status {
        #[command(flatten)]
        common: Common,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch account NAME's new mail now, with a progress bar. A running server is asked to do
    /// it; without one, it is done (and processed) here.
    Sync {
        #[command(flatten)]
        common: Common,
        /// The account's `name` in the config.
        name: String,
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

/// glibc's allocator, tuned before any thread starts (docs/memory.md). By default glibc raises
/// its mmap threshold to the size of any big block freed (up to 32 MiB), after which multi-MB
/// message buffers come from arenas that fragment and are never given back, and it makes up to
/// 8 arenas per core. A fixed 256 KiB threshold (big buffers are mapped and unmapped whole) and
/// two arenas took a stream of 4 MB messages from 412 to 170 MiB peak RSS.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // A command's output piped into `head` ends quietly, like any Unix tool, instead of
        // panicking on a broken pipe. (The server keeps Rust's default: it writes to sockets.)
        // SAFETY: called before any thread starts; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
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
            TicketsCommand::Close { common, id } => {
                privacy_cmd::ticket_status(&load_config(&common)?, id, true)
            }
            TicketsCommand::Reopen { common, id } => {
                privacy_cmd::ticket_status(&load_config(&common)?, id, false)
            }
        },
        Command::Privacy { command } => privacy_cmd::privacy(command, load_config),
        Command::Agent { command } => privacy_cmd::agent(command, load_config),
        Command::Backup { common, out } => privacy_cmd::backup(&load_config(&common)?, &out),
        Command::Restore { common, dir } => privacy_cmd::restore(&load_config(&common)?, &dir),
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
        Command::Filter { command } => {
            match command {
                FilterCommand::Train {
                    common,
                    ham,
                    spam,
                    index,
                    json,
                } => {
                    filter_cmd::train(&load_config(&common)?, &ham, &spam, index.as_deref(), json)?
                }
                FilterCommand::Untrain {
                    common,
                    paths,
                    json,
                } => filter_cmd::untrain(&load_config(&common)?, &paths, json)?,
                FilterCommand::Classify { common, file, json } => {
                    filter_cmd::classify(&load_config(&common)?, &file, json)?
                }
                FilterCommand::Stats { common, json } => {
                    filter_cmd::stats(&load_config(&common)?, json)?
                }
                FilterCommand::Expire {
                    common,
                    days,
                    max_count,
                } => filter_cmd::expire(&load_config(&common)?, days, max_count)?,
                FilterCommand::Export { common, file } => {
                    filter_cmd::export(&load_config(&common)?, &file)?
                }
                FilterCommand::Import { common, file } => {
                    filter_cmd::import(&load_config(&common)?, &file)?
                }
                FilterCommand::Eval(args) => eval::run(&args)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Quarantine { command } => {
            match command {
                QuarantineCommand::List { common, json } => {
                    filter_cmd::quarantine_list(&load_config(&common)?, json)?
                }
                QuarantineCommand::Show { common, id, json } => {
                    filter_cmd::quarantine_show(&load_config(&common)?, id, json)?
                }
                QuarantineCommand::Release { common, id } => {
                    let v = control::call(
                        &load_config(&common)?,
                        control::Request::QuarantineRelease { id },
                    )?;
                    let ticket = &v["action"]["ticket"];
                    println!("message {id} released into ticket #{ticket}; learned as ham");
                }
                QuarantineCommand::Delete { common, id } => {
                    control::call(
                        &load_config(&common)?,
                        control::Request::QuarantineDelete { id },
                    )?;
                    println!("message {id} deleted");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Feedback {
            common,
            message,
            label,
        } => {
            let label = if label == "spam" {
                mailroom_spamfilter::Label::Spam
            } else {
                mailroom_spamfilter::Label::Ham
            };
            let v = control::call(
                &load_config(&common)?,
                control::Request::Feedback { id: message, label },
            )?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { command } => {
            match command {
                TokenCommand::Create {
                    common,
                    name,
                    role,
                    expires,
                } => {
                    let expires_at = expires
                        .map(|d| control::now_secs().saturating_add(d.saturating_mul(86_400)));
                    let v = control::call(
                        &load_config(&common)?,
                        control::Request::TokenCreate {
                            name,
                            role,
                            expires_at,
                        },
                    )?;
                    println!(
                        "token {} ({}) created. Its secret, shown only now:",
                        v["token"]["id"], v["token"]["role"]
                    );
                    println!("{}", v["secret"].as_str().unwrap_or_default());
                }
                TokenCommand::List { common, json } => {
                    let v = control::call(&load_config(&common)?, control::Request::TokenList)?;
                    output::token_list(&v, json)?;
                }
                TokenCommand::Revoke { common, id } => {
                    control::call(&load_config(&common)?, control::Request::TokenRevoke { id })?;
                    println!("token {id} revoked");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
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
        Command::Imap { command } => match command {
            ImapCommand::Status { common, json } => {
                imap::status_command(&load_config(&common)?, json)
            }
            ImapCommand::Sync { common, name } => imap::sync_command(&load_config(&common)?, &name),
        },
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(&file),
    }
}

fn config_check(file: &Path) -> anyhow::Result<ExitCode> {
    match Config::load(file) {
        Ok(config) => {
            // The same loading as `serve` (and a reload) does: TLS certificates and key file
            // permissions included.
            serve::smtp_config(&config).with_context(|| file.display().to_string())?;
            serve::api_config(&config, std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
                .with_context(|| file.display().to_string())?;
            println!("{}: ok", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("{err}");
            Ok(ExitCode::from(2))
        }
    }
}
