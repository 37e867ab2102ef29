//! mailroom's pipeline: parse -> (classify: later) -> thread -> route.
//!
//! A spooled message goes through three steps:
//!
//! 1. [`analyze`] (pure, no I/O): parse the raw bytes once with `mail-parser` and extract all the
//!    store needs: sender, subject, ids, bodies, attachments, loop/noise flags, warnings. Only a
//!    message with no header section or no sender at all is a [`Rejection`]; anything else that
//!    is malformed is kept with a [`MessageFlag::ParseWarning`].
//! 2. [`decide`] (reads the store): which ticket the message belongs to, by `In-Reply-To` /
//!    `References` (and, for a bounce, the ids of the message it carries), then by a `[#N]`
//!    subject tag, never by subject text; the sender must be on the ticket.
//! 3. [`process_entry`]: one store transaction ([`Store::commit_message`]) that stores the
//!    message and removes the spool entry, or moves a rejected entry to the failed list.
//!
//! [`drain`] runs step 3 over the whole spool synchronously (for `mailroom ingest`);
//! [`run_workers`] is the long-running async version for `mailroom serve`. [`sources`] reads
//! message files, directories, maildirs and mboxes for `ingest`.
//!
//! Logging: one tracing span per message carrying the spool id only; addresses, subjects and
//! bodies are never logged.

#![warn(missing_docs)]

mod analyze;
mod classify;
pub mod sources;
mod thread;
mod workers;

use std::fmt;

use mailroom_spool::SpoolId;
use std::time::Instant;

use mailroom_store::{
    CommitOutcome, Delivery, FailedId, MessageKey, SpoolEntry, Store, StoreError, TicketId,
};

pub use analyze::{analyze, Analysis, Rejection};
pub use classify::{route, Filter};
pub use thread::{decide, strip_subject_noise};
pub use workers::{run_workers, worker_stats, WorkerStats};

// Re-exported so that callers of this crate can name the types of its API.
pub use mailroom_store::{MessageFlag, ThreadDecision};

/// Names of the metrics this crate records (through the `metrics` facade).
pub mod metric_names {
    /// Counter by `outcome` (`new_ticket`, `appended`, `orphan`, `quarantined`, `failed`,
    /// `already_processed`).
    pub const MESSAGES: &str = "mailroom_pipeline_messages_total";
    /// Histogram: seconds from reading a spool entry to its commit.
    pub const LATENCY: &str = "mailroom_pipeline_latency_seconds";
    /// Gauge: unprocessed spool entries.
    pub const SPOOL_DEPTH: &str = "mailroom_spool_depth";
    /// Counter by `verdict` (`ham`, `unsure`, `spam`).
    pub const VERDICTS: &str = "mailroom_filter_verdicts_total";
    /// Histogram: seconds to tokenize and classify one message.
    pub const CLASSIFY_SECONDS: &str = "mailroom_filter_classify_seconds";
}

/// Bounds on the work done for one message. Every limit is enforced by the pipeline itself,
/// whatever the parser would accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The most MIME parts read in one message (nested messages included); the rest is skipped
    /// with a warning.
    pub max_mime_parts: usize,
    /// The most header fields kept for one message; the rest is dropped with a warning.
    pub max_header_fields: usize,
    /// How deeply multiparts and attached messages may nest; deeper parts are skipped with a
    /// warning.
    pub max_nesting_depth: usize,
    /// The largest message whose body is parsed, in bytes; a larger one is kept with its
    /// headers only and a warning.
    pub max_message_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_mime_parts: 1000,
            max_header_fields: 1000,
            max_nesting_depth: 20,
            max_message_size: 25 * 1024 * 1024,
        }
    }
}

/// Pipeline errors. These are temporary from the message's point of view: the spool entry
/// stays where it is and is tried again. (A message that can never be processed is not an
/// error but a [`Rejection`], which moves it to the failed list.)
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A worker task died (panicked or was cancelled).
    #[error("pipeline worker failed: {0}")]
    Worker(String),
    /// The spam filter failed (its token store could not be read).
    #[error("spam filter: {0}")]
    Filter(String),
}

/// Everything `process_entry` needs besides the store: the limits and the spam filter. The
/// server keeps the current one behind a `watch` channel so that a config reload applies to
/// the next message.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Bounds on parsing.
    pub limits: Limits,
    /// The spam filter; `None` when `[filter] enabled = false` (every message is a ticket).
    pub filter: Option<Filter>,
}

/// What [`process_entry`] did with one spool entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    /// The spool entry.
    pub spool_id: SpoolId,
    /// What became of it.
    pub outcome: Outcome,
}

/// The fate of one spool entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The message opened a new ticket.
    NewTicket {
        /// The new ticket.
        ticket: TicketId,
        /// The stored message.
        message: MessageKey,
        /// Flags recorded on the message.
        flags: Vec<MessageFlag>,
    },
    /// The message was appended to an existing ticket.
    Appended {
        /// The ticket.
        ticket: TicketId,
        /// The stored message.
        message: MessageKey,
        /// Flags recorded on the message.
        flags: Vec<MessageFlag>,
    },
    /// The message was kept without a ticket (auto-reply, bounce or bulk mail that threads
    /// nowhere it may go).
    Orphan {
        /// The stored message.
        message: MessageKey,
        /// Flags recorded on the message.
        flags: Vec<MessageFlag>,
    },
    /// The spam filter called it spam: kept in the quarantine, in no ticket.
    Quarantined {
        /// The stored message.
        message: MessageKey,
        /// Flags recorded on the message.
        flags: Vec<MessageFlag>,
    },
    /// The message was moved to the failed list.
    Failed {
        /// The failed-list entry.
        failed: FailedId,
        /// Why (the [`Rejection`] as text).
        reason: String,
    },
    /// The entry was no longer in the spool: processed before (e.g. before a crash or by
    /// another worker). Nothing was written.
    AlreadyProcessed,
}

/// Counts of what [`drain`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Messages that opened a new ticket.
    pub tickets_created: usize,
    /// Messages appended to an existing ticket.
    pub messages_appended: usize,
    /// Messages kept without a ticket.
    pub orphans: usize,
    /// Messages quarantined as spam.
    pub quarantined: usize,
    /// Entries moved to the failed list.
    pub failed: usize,
    /// Entries that were already processed.
    pub already_processed: usize,
    /// Entries left in the spool because of an error (logged; they are tried again later).
    pub errors: usize,
}

impl DrainReport {
    /// Count one result.
    pub fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::NewTicket { .. } => self.tickets_created += 1,
            Outcome::Appended { .. } => self.messages_appended += 1,
            Outcome::Orphan { .. } => self.orphans += 1,
            Outcome::Quarantined { .. } => self.quarantined += 1,
            Outcome::Failed { .. } => self.failed += 1,
            Outcome::AlreadyProcessed => self.already_processed += 1,
        }
    }

    /// Entries looked at in total.
    pub fn total(&self) -> usize {
        self.tickets_created
            + self.messages_appended
            + self.orphans
            + self.quarantined
            + self.failed
            + self.already_processed
            + self.errors
    }
}

impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} new ticket(s), {} appended, {} orphan(s), {} quarantined, {} failed, {} already processed",
            self.tickets_created,
            self.messages_appended,
            self.orphans,
            self.quarantined,
            self.failed,
            self.already_processed
        )?;
        if self.errors > 0 {
            write!(f, ", {} left in the spool after an error", self.errors)?;
        }
        Ok(())
    }
}

/// Process one spool entry: read it, analyze it, decide its ticket and commit it in one store
/// transaction (which also removes the spool entry). A [`Rejection`] (including a panic inside
/// the parser) moves the entry to the failed list instead.
///
/// Idempotent: an entry that is already gone gives [`Outcome::AlreadyProcessed`], so running
/// it again after a crash, or twice at once, never stores a message twice.
pub fn process_entry(
    store: &Store,
    id: SpoolId,
    settings: &Settings,
) -> Result<Processed, PipelineError> {
    // A batch of one: the same steps, and `commit_message` for the commit.
    match process_batch(store, &[id], settings).pop() {
        Some((_, result)) => result,
        None => Err(PipelineError::Worker(format!(
            "no result for spool entry {id}"
        ))),
    }
}

/// At most this many messages are committed in one transaction by [`process_batch`].
pub const MAX_BATCH: usize = 32;
/// A batch is committed before its messages' raw bytes would exceed this.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// [`process_entry`] for several entries, with one store transaction and one flush for all of
/// them (group commit) instead of one each: that is most of what a message costs the store.
///
/// The entries are analyzed in order. A message whose thread could depend on one before it in
/// the batch (it refers to a `Message-ID` there, or it carries a `[#N]` tag while the batch
/// opens tickets) is not put in the same transaction: the batch so far is committed first, so
/// it is threaded exactly as [`process_entry`] one after another would thread it. When a
/// batch's transaction fails, its messages are committed one by one, so that one bad message
/// only fails itself. Every id gets its result, not necessarily in the order given.
pub fn process_batch(
    store: &Store,
    ids: &[SpoolId],
    settings: &Settings,
) -> Vec<(SpoolId, Result<Processed, PipelineError>)> {
    let mut results = Vec::with_capacity(ids.len());
    let mut batch = Batch::default();
    for &id in ids {
        let span = tracing::info_span!("message", spool_id = id.0);
        let _enter = span.enter();
        let started = Instant::now();
        let (entry, analysis) = match load(store, id, &settings.limits) {
            Ok(Loaded::Analyzed(analyzed)) => *analyzed,
            Ok(Loaded::Done(outcome)) => {
                results.push((id, Ok(finish(store, id, outcome, started))));
                continue;
            }
            Err(e) => {
                results.push((id, Err(e)));
                continue;
            }
        };
        if batch.needs_commit_before(&analysis, entry.raw.len()) {
            batch.commit(store, &mut results);
        }
        match prepare(store, settings, id, entry, analysis) {
            Ok(ready) => batch.push(ready, started),
            Err(e) => results.push((id, Err(e))),
        }
    }
    batch.commit(store, &mut results);
    results
}

/// The messages of a [`process_batch`] waiting for their commit.
#[derive(Default)]
struct Batch {
    ready: Vec<(Ready, Instant)>,
    /// The (normalized) `Message-ID`s of the messages in it.
    message_ids: std::collections::HashSet<String>,
    opens_tickets: bool,
    bytes: usize,
}

impl Batch {
    /// Whether the batch must be committed before a message with `analysis` joins it.
    fn needs_commit_before(&self, analysis: &Analysis, size: usize) -> bool {
        if self.ready.is_empty() {
            return false;
        }
        self.ready.len() >= MAX_BATCH
            || self.bytes.saturating_add(size) > MAX_BATCH_BYTES
            || (analysis.ticket_tag.is_some() && self.opens_tickets)
            || thread_keys(analysis)
                .iter()
                .any(|id| self.message_ids.contains(id))
    }

    fn push(&mut self, ready: Ready, started: Instant) {
        self.bytes = self.bytes.saturating_add(ready.delivery.message.raw.len());
        self.opens_tickets |= matches!(ready.delivery.thread, ThreadDecision::New { .. });
        if let Some(own) = ready.delivery.message.message_id.as_deref() {
            self.message_ids
                .insert(normalize_message_id(own).to_string());
        }
        self.ready.push((ready, started));
    }

    /// Commit what is waiting (one transaction), record each message's result in `results`.
    fn commit(
        &mut self,
        store: &Store,
        results: &mut Vec<(SpoolId, Result<Processed, PipelineError>)>,
    ) {
        let ready = std::mem::take(self).ready;
        if ready.is_empty() {
            return;
        }
        let mut metas = Vec::with_capacity(ready.len());
        let mut deliveries = Vec::with_capacity(ready.len());
        for (r, started) in ready {
            metas.push((r.id, r.meta, started));
            deliveries.push((r.id, r.delivery));
        }
        let committed = if deliveries.len() == 1 {
            Err(deliveries)
        } else {
            match store.commit_messages(&deliveries) {
                Ok(outcomes) => Ok(outcomes),
                Err(e) => {
                    tracing::warn!(
                        messages = deliveries.len(),
                        error = %e,
                        "batch commit failed: committing its messages one by one"
                    );
                    Err(deliveries)
                }
            }
        };
        match committed {
            Ok(outcomes) => {
                for ((id, meta, started), committed) in metas.into_iter().zip(outcomes) {
                    let span = tracing::info_span!("message", spool_id = id.0);
                    let _enter = span.enter();
                    let outcome = meta.outcome(committed);
                    results.push((id, Ok(finish(store, id, outcome, started))));
                }
            }
            Err(deliveries) => {
                for ((id, meta, started), (_, delivery)) in metas.into_iter().zip(deliveries) {
                    let span = tracing::info_span!("message", spool_id = id.0);
                    let _enter = span.enter();
                    let result = store
                        .commit_message(id, delivery)
                        .map(|committed| finish(store, id, meta.outcome(committed), started))
                        .map_err(PipelineError::from);
                    results.push((id, result));
                }
            }
        }
    }
}

/// The ids a message's thread is looked up by, and its own `Message-ID`, normalized as the
/// store's index normalizes them.
fn thread_keys(analysis: &Analysis) -> Vec<String> {
    analysis
        .thread_ids()
        .into_iter()
        .chain(analysis.message_id.as_deref())
        .map(|id| normalize_message_id(id).to_string())
        .collect()
}

fn normalize_message_id(id: &str) -> &str {
    id.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
}

/// A spool entry after [`load`].
enum Loaded {
    /// Nothing to commit: already processed, or moved to the failed list.
    Done(Outcome),
    /// Read and analyzed.
    Analyzed(Box<(SpoolEntry, Analysis)>),
}

/// Read an entry and analyze it; a [`Rejection`] moves it to the failed list.
fn load(store: &Store, id: SpoolId, limits: &Limits) -> Result<Loaded, PipelineError> {
    let Some(entry) = store.spool_get(id)? else {
        return Ok(Loaded::Done(Outcome::AlreadyProcessed));
    };
    match analyze(&entry, limits) {
        Ok(analysis) => Ok(Loaded::Analyzed(Box::new((entry, analysis)))),
        Err(rejection) => {
            let reason = rejection.to_string();
            tracing::info!(reason = %reason, "rejected: moved to the failed list");
            Ok(Loaded::Done(match store.fail_spool_entry(id, &reason)? {
                Some(failed) => Outcome::Failed { failed, reason },
                None => Outcome::AlreadyProcessed,
            }))
        }
    }
}

/// A message ready for its commit.
struct Ready {
    id: SpoolId,
    delivery: Delivery,
    meta: ReadyMeta,
}

/// What turns the store's [`CommitOutcome`] into an [`Outcome`].
struct ReadyMeta {
    flags: Vec<MessageFlag>,
    orphan: bool,
    quarantined: bool,
}

/// Decide the thread, classify, route, and build the delivery.
fn prepare(
    store: &Store,
    settings: &Settings,
    id: SpoolId,
    entry: SpoolEntry,
    analysis: Analysis,
) -> Result<Ready, PipelineError> {
    let (decision, flags) = decide(store, &analysis)?;
    let classification = match &settings.filter {
        Some(filter) => {
            let started = Instant::now();
            let c = filter.classify(store, &entry.raw)?;
            metrics::histogram!(metric_names::CLASSIFY_SECONDS)
                .record(started.elapsed().as_secs_f64());
            let verdict = match c.verdict {
                mailroom_store::Verdict::Ham => "ham",
                mailroom_store::Verdict::Unsure => "unsure",
                mailroom_store::Verdict::Spam => "spam",
            };
            metrics::counter!(metric_names::VERDICTS, "verdict" => verdict).increment(1);
            Some(c)
        }
        None => None,
    };
    let verdict = classification.as_ref().map(|c| c.verdict);
    let decision = route(decision, verdict, &strip_subject_noise(&analysis.subject));
    let orphan = matches!(decision, ThreadDecision::Orphan);
    let quarantined = matches!(decision, ThreadDecision::Quarantine { .. });
    let mut delivery = analysis.into_delivery(entry.raw, entry.envelope, decision, flags.clone());
    delivery.classification = classification;
    Ok(Ready {
        id,
        delivery,
        meta: ReadyMeta {
            flags,
            orphan,
            quarantined,
        },
    })
}

impl ReadyMeta {
    fn outcome(self, committed: CommitOutcome) -> Outcome {
        let ReadyMeta {
            flags,
            orphan,
            quarantined,
        } = self;
        match committed {
            CommitOutcome::AlreadyProcessed => Outcome::AlreadyProcessed,
            CommitOutcome::Stored {
                ticket: Some(ticket),
                message,
                new_ticket: true,
            } => Outcome::NewTicket {
                ticket,
                message,
                flags,
            },
            CommitOutcome::Stored {
                ticket: Some(ticket),
                message,
                new_ticket: false,
            } => Outcome::Appended {
                ticket,
                message,
                flags,
            },
            CommitOutcome::Stored {
                ticket: None,
                message,
                ..
            } => {
                if quarantined {
                    Outcome::Quarantined { message, flags }
                } else {
                    if !orphan {
                        tracing::warn!(
                            "store kept a message without a ticket that was not an orphan"
                        );
                    }
                    Outcome::Orphan { message, flags }
                }
            }
        }
    }
}

/// Log and count what became of an entry.
fn finish(store: &Store, id: SpoolId, outcome: Outcome, started: Instant) -> Processed {
    let label = match &outcome {
        Outcome::NewTicket { ticket, .. } => {
            tracing::info!(ticket = ticket.0, "new ticket");
            "new_ticket"
        }
        Outcome::Appended { ticket, .. } => {
            tracing::info!(ticket = ticket.0, "appended");
            "appended"
        }
        Outcome::Orphan { .. } => {
            tracing::info!("kept as orphan");
            "orphan"
        }
        Outcome::Quarantined { .. } => {
            tracing::info!("quarantined as spam");
            "quarantined"
        }
        Outcome::Failed { .. } => "failed",
        Outcome::AlreadyProcessed => {
            tracing::debug!("already processed");
            "already_processed"
        }
    };
    metrics::counter!(metric_names::MESSAGES, "outcome" => label).increment(1);
    metrics::histogram!(metric_names::LATENCY).record(started.elapsed().as_secs_f64());
    metrics::gauge!(metric_names::SPOOL_DEPTH).set(store.spool_len() as f64);
    Processed {
        spool_id: id,
        outcome,
    }
}

/// Process every pending spool entry synchronously, oldest first, in batches of [`MAX_BATCH`]
/// ([`process_batch`]), calling `progress` after each one (used by `mailroom ingest` when no
/// server runs). Entries appended while it runs are processed too.
///
/// An error on one entry is logged and counted in [`DrainReport::errors`] (the entry stays in
/// the spool); only a failure to list the spool ends the drain with an error.
pub fn drain(
    store: &Store,
    settings: &Settings,
    mut progress: impl FnMut(&Processed),
) -> Result<DrainReport, PipelineError> {
    let mut report = DrainReport::default();
    let mut tried = std::collections::HashSet::new();
    loop {
        let pending: Vec<SpoolId> = store
            .spool_pending()?
            .into_iter()
            .filter(|id| !tried.contains(id))
            .collect();
        if pending.is_empty() {
            return Ok(report);
        }
        tried.extend(pending.iter().copied());
        for ids in pending.chunks(MAX_BATCH) {
            for (id, result) in process_batch(store, ids, settings) {
                match result {
                    Ok(processed) => {
                        report.add(&processed.outcome);
                        progress(&processed);
                    }
                    Err(e) => {
                        tracing::error!(spool_id = id.0, error = %e, "processing failed; entry kept");
                        report.errors += 1;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
