//! The API's wire types (JSON), with their OpenAPI schemas. They mirror the store's views
//! but are the API's own, so that the wire format changes only on purpose.

use std::collections::BTreeMap;

use mailroom_store::{
    AgentDeletion, AttachmentView, AuditAction as StoreAuditAction, AuditEntry as StoreAuditEntry,
    Classification as StoreClassification, ErasureReport as StoreErasureReport, FeedbackAction,
    FeedbackOutcome, FilterStats as StoreFilterStats, MessageFlag, MessageView,
    QuarantineEntry as StoreEntry, TicketDetail as StoreTicketDetail, TicketStatus as StoreStatus,
    TicketSummary as StoreTicketSummary, TrainOutcome, Verdict as StoreVerdict,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Open or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    /// Waiting for an agent.
    Open,
    /// Done.
    Closed,
}

impl From<StoreStatus> for TicketStatus {
    fn from(s: StoreStatus) -> Self {
        match s {
            StoreStatus::Open => TicketStatus::Open,
            StoreStatus::Closed => TicketStatus::Closed,
        }
    }
}

impl From<TicketStatus> for StoreStatus {
    fn from(s: TicketStatus) -> Self {
        match s {
            TicketStatus::Open => StoreStatus::Open,
            TicketStatus::Closed => StoreStatus::Closed,
        }
    }
}

/// A ticket as listed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TicketSummary {
    /// Ticket number.
    pub id: u64,
    /// Subject.
    pub subject: String,
    /// Requester's address (`[erased]` after erasure).
    pub requester: String,
    /// Number of messages.
    pub messages: u64,
    /// Number of attachments.
    pub attachments: u64,
    /// Open or closed.
    pub status: TicketStatus,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds of the last message.
    pub updated_at: u64,
    /// Whether any message carries a flag.
    pub flagged: bool,
    /// Whether the spam filter was unsure about any message.
    pub unsure: bool,
    /// When it was closed, Unix seconds; null while open.
    pub closed_at: Option<u64>,
    /// The agent who closed it (their name, or `agent-N` once that agent was deleted); null
    /// while open, or when it was closed from the command line.
    pub closed_by: Option<String>,
}

impl From<StoreTicketSummary> for TicketSummary {
    fn from(s: StoreTicketSummary) -> Self {
        TicketSummary {
            id: s.id,
            subject: s.subject,
            requester: s.requester,
            messages: s.messages as u64,
            attachments: s.attachments as u64,
            status: s.status.into(),
            created_at: s.created_at,
            updated_at: s.updated_at,
            flagged: s.flagged,
            unsure: s.unsure,
            closed_at: s.closed_at,
            closed_by: s.closed_by,
        }
    }
}

/// A page of tickets, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TicketList {
    /// The tickets.
    pub tickets: Vec<TicketSummary>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A ticket with its messages.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TicketDetail {
    /// The ticket.
    pub ticket: TicketSummary,
    /// Its messages, oldest first.
    pub messages: Vec<Message>,
}

impl From<StoreTicketDetail> for TicketDetail {
    fn from(d: StoreTicketDetail) -> Self {
        TicketDetail {
            ticket: d.summary.into(),
            messages: d.thread.into_iter().map(Message::from).collect(),
        }
    }
}

/// A flag on a message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Flag {
    /// `auto_reply`, `bounce`, `bulk`, `unverified_thread` or `parse_warning`.
    pub kind: String,
    /// For `unverified_thread`: the ticket the message claimed to belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed: Option<u64>,
    /// For `parse_warning`: what was wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl From<MessageFlag> for Flag {
    fn from(f: MessageFlag) -> Self {
        let (kind, claimed, detail) = match f {
            MessageFlag::AutoReply => ("auto_reply", None, None),
            MessageFlag::Bounce => ("bounce", None, None),
            MessageFlag::Bulk => ("bulk", None, None),
            MessageFlag::UnverifiedThread { claimed } => {
                ("unverified_thread", Some(claimed.0), None)
            }
            MessageFlag::ParseWarning { detail } => ("parse_warning", None, Some(detail)),
        };
        Flag {
            kind: kind.to_string(),
            claimed,
            detail,
        }
    }
}

/// An attachment of a message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Attachment {
    /// Hex SHA-256 of the content.
    pub sha256: String,
    /// File name as sent (untrusted).
    pub filename: Option<String>,
    /// MIME type as sent.
    pub content_type: String,
    /// Size in bytes.
    pub size: u64,
    /// The owner (sender) contact id.
    pub contact: u64,
    /// Where to download it: `/v1/attachments/{contact}/{sha256}`.
    pub download: String,
}

impl From<AttachmentView> for Attachment {
    fn from(a: AttachmentView) -> Self {
        Attachment {
            download: format!("/v1/attachments/{}/{}", a.tags.contact, a.sha256),
            sha256: a.sha256,
            filename: a.filename,
            content_type: a.content_type,
            size: a.size,
            contact: a.tags.contact,
        }
    }
}

/// The spam filter's verdict class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Below the ham cutoff.
    Ham,
    /// Between the cutoffs.
    Unsure,
    /// At or above the spam cutoff.
    Spam,
}

impl From<StoreVerdict> for Verdict {
    fn from(v: StoreVerdict) -> Self {
        match v {
            StoreVerdict::Ham => Verdict::Ham,
            StoreVerdict::Unsure => Verdict::Unsure,
            StoreVerdict::Spam => Verdict::Spam,
        }
    }
}

/// One token that decided a verdict.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Clue {
    /// The token, when known.
    pub token: Option<String>,
    /// Its spam probability.
    pub probability: f64,
    /// Learned ham messages containing it.
    pub ham: u32,
    /// Learned spam messages containing it.
    pub spam: u32,
}

/// The spam filter's result for a message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Classification {
    /// Spam score in [0, 1].
    pub score: f64,
    /// Verdict at the cutoffs in force then.
    pub verdict: Verdict,
    /// The combiner that decided.
    pub algorithm: String,
    /// The deciding tokens, most significant first.
    pub clues: Vec<Clue>,
}

impl From<StoreClassification> for Classification {
    fn from(c: StoreClassification) -> Self {
        Classification {
            score: if c.score.is_finite() { c.score } else { 0.5 },
            verdict: c.verdict.into(),
            algorithm: c.algorithm,
            clues: c
                .clues
                .into_iter()
                .map(|c| Clue {
                    token: c.token,
                    probability: if c.probability.is_finite() {
                        c.probability
                    } else {
                        0.5
                    },
                    ham: c.ham,
                    spam: c.spam,
                })
                .collect(),
        }
    }
}

/// A stored message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Message {
    /// Message id.
    pub id: u64,
    /// Its ticket, if any.
    pub ticket: Option<u64>,
    /// Sender address.
    pub from: String,
    /// Sender display name.
    pub from_name: Option<String>,
    /// Subject.
    pub subject: String,
    /// `Message-ID` header.
    pub message_id: Option<String>,
    /// `Date` header, Unix seconds.
    pub date: Option<i64>,
    /// Accepted at, Unix seconds.
    pub received_at: u64,
    /// Flags.
    pub flags: Vec<Flag>,
    /// Text body.
    pub text: Option<String>,
    /// Whether it had an HTML body.
    pub has_html: bool,
    /// Attachments.
    pub attachments: Vec<Attachment>,
    /// The spam filter's verdict.
    pub classification: Option<Classification>,
    /// Whether it is in the quarantine.
    pub quarantined: bool,
}

impl From<MessageView> for Message {
    fn from(m: MessageView) -> Self {
        Message {
            id: m.id,
            ticket: m.ticket,
            from: m.from,
            from_name: m.from_name,
            subject: m.subject,
            message_id: m.message_id,
            date: m.date,
            received_at: m.received_at,
            flags: m.flags.into_iter().map(Flag::from).collect(),
            text: m.text,
            has_html: m.has_html,
            attachments: m.attachments.into_iter().map(Attachment::from).collect(),
            classification: m.classification.map(Classification::from),
            quarantined: m.quarantined,
        }
    }
}

/// A quarantined message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QuarantineEntry {
    /// The message.
    pub message: Message,
    /// The ticket it would have joined; a release puts it there while that ticket exists.
    pub target_ticket: Option<u64>,
    /// When it was quarantined, Unix seconds.
    pub quarantined_at: u64,
}

impl From<StoreEntry> for QuarantineEntry {
    fn from(e: StoreEntry) -> Self {
        QuarantineEntry {
            message: e.message.into(),
            target_ticket: e.target_ticket.map(|t| t.0),
            quarantined_at: e.quarantined_at,
        }
    }
}

/// A page of the quarantine, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QuarantineList {
    /// The entries.
    pub entries: Vec<QuarantineEntry>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Spam or not spam.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackLabel {
    /// Unwanted: train spam; a message in a ticket moves to the quarantine.
    Spam,
    /// Wanted: train ham; a quarantined message is released.
    Ham,
}

/// Body of `POST /v1/messages/{id}/feedback`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// The label.
    pub label: FeedbackLabel,
}

/// What training did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Training {
    /// Learned now.
    Learned,
    /// Already learned with this label: nothing changed.
    AlreadyLearned,
    /// Had been learned with the other label: untrained first, then learned.
    Relabeled,
}

impl From<TrainOutcome> for Training {
    fn from(t: TrainOutcome) -> Self {
        match t {
            TrainOutcome::Learned => Training::Learned,
            TrainOutcome::AlreadyLearned => Training::AlreadyLearned,
            TrainOutcome::Relabeled => Training::Relabeled,
        }
    }
}

/// Where feedback moved the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackMove {
    /// It stays where it was.
    Unchanged,
    /// It left its ticket for the quarantine.
    Quarantined,
    /// It left the quarantine for a ticket.
    Released,
}

/// Result of feedback.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FeedbackResponse {
    /// The message.
    pub message: u64,
    /// The label given.
    pub label: FeedbackLabel,
    /// What training did.
    pub training: Training,
    /// Where the message went.
    pub action: FeedbackMove,
    /// `quarantined`: the ticket it left; `released`: the ticket it joined.
    pub ticket: Option<u64>,
    /// `quarantined`: the ticket had no other message and is gone.
    pub ticket_deleted: bool,
    /// `released`: the ticket was opened for it.
    pub new_ticket: bool,
}

impl FeedbackResponse {
    /// The response for `outcome`.
    pub fn new(message: u64, label: FeedbackLabel, outcome: FeedbackOutcome) -> Self {
        let (action, ticket, ticket_deleted, new_ticket) = match outcome.action {
            FeedbackAction::Unchanged => (FeedbackMove::Unchanged, None, false, false),
            FeedbackAction::Quarantined {
                from_ticket,
                ticket_deleted,
            } => (
                FeedbackMove::Quarantined,
                from_ticket.map(|t| t.0),
                ticket_deleted,
                false,
            ),
            FeedbackAction::Released { ticket, new_ticket } => {
                (FeedbackMove::Released, Some(ticket.0), false, new_ticket)
            }
        };
        FeedbackResponse {
            message,
            label,
            training: outcome.training.into(),
            action,
            ticket,
            ticket_deleted,
            new_ticket,
        }
    }
}

/// Result of a release.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReleaseResponse {
    /// The message.
    pub message: u64,
    /// The ticket it joined.
    pub ticket: u64,
    /// Whether that ticket was opened for it.
    pub new_ticket: bool,
    /// What training it as ham did.
    pub training: Training,
}

/// The spam filter's model size and counts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FilterStats {
    /// Ham messages learned.
    pub ham_messages: u64,
    /// Spam messages learned.
    pub spam_messages: u64,
    /// Distinct tokens with counts.
    pub tokens: u64,
    /// Learned-message records.
    pub learned_records: u64,
    /// Bytes the store takes on disk.
    pub bytes_on_disk: u64,
}

impl From<StoreFilterStats> for FilterStats {
    fn from(s: StoreFilterStats) -> Self {
        FilterStats {
            ham_messages: s.ham_messages,
            spam_messages: s.spam_messages,
            tokens: s.tokens,
            learned_records: s.learned_records,
            bytes_on_disk: s.bytes_on_disk,
        }
    }
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` while the server answers.
    pub status: String,
}

/// Query of `GET /v1/tickets`. Filters combine with "and".
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TicketParams {
    /// Only tickets with this status.
    pub status: Option<TicketStatus>,
    /// Only tickets opened by this address. Personal data: it is matched by keyed hash and
    /// never logged.
    pub requester: Option<String>,
    /// Only flagged (true) or unflagged (false) tickets.
    pub flagged: Option<bool>,
    /// Only tickets the filter was (true) or was not (false) unsure about.
    pub unsure: Option<bool>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,19}$")]
    pub cursor: Option<String>,
}

/// Query of `GET /v1/quarantine`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,19}$")]
    pub cursor: Option<String>,
}

/// Body of `PATCH /v1/tickets/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketUpdate {
    /// The new status. Closing records when and by which agent; reopening clears both.
    pub status: TicketStatus,
}

/// Longest email address accepted, in bytes (RFC 5321: 64 for the local part, 255 for the
/// domain, and the `@`).
pub const MAX_EMAIL_BYTES: usize = 320;

/// The pattern an email field must match: one `@` with something on each side, no control
/// characters. [`check_email`] checks it, and the byte length.
pub const EMAIL_PATTERN: &str = "^[^@\\x00-\\x1f\\x7f-\\x9f]+@[^@\\x00-\\x1f\\x7f-\\x9f]+$";

/// Check an email field: at most [`MAX_EMAIL_BYTES`] bytes, exactly one `@` with something on
/// each side, no control characters. The error never repeats the address.
pub fn check_email(email: &str) -> Result<(), &'static str> {
    if email.len() > MAX_EMAIL_BYTES {
        return Err("email must be at most 320 bytes");
    }
    if email.chars().any(char::is_control) {
        return Err("email must not contain control characters");
    }
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
        {
            Ok(())
        }
        _ => Err("email must contain exactly one @ with text on each side"),
    }
}

/// Body of `POST /v1/privacy/erase`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseRequest {
    /// The person's address (matched case-insensitively). Personal data: it is sent in the
    /// body so that it stays out of access logs, and it is never logged.
    #[schema(
        max_length = 320,
        pattern = "^[^@\\x00-\\x1f\\x7f-\\x9f]+@[^@\\x00-\\x1f\\x7f-\\x9f]+$",
        example = "alice@example.com"
    )]
    pub email: String,
    /// Only report what would be removed (default false: erase).
    #[serde(default)]
    pub dry_run: bool,
}

/// Body of `POST /v1/privacy/export`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// The person's address (matched case-insensitively). Never logged.
    #[schema(
        max_length = 320,
        pattern = "^[^@\\x00-\\x1f\\x7f-\\x9f]+@[^@\\x00-\\x1f\\x7f-\\x9f]+$",
        example = "alice@example.com"
    )]
    pub email: String,
}

/// The body of `POST /v1/privacy/export`'s answer: a gzip-compressed tar archive (only for
/// the OpenAPI document).
#[derive(Debug, Clone, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct ExportArchive(pub Vec<u8>);

/// What an erasure removed (or, in a dry run, would remove). Counts and ids only.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErasureReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// The address belongs to a contact.
    pub found: bool,
    /// Tickets the person opened (removed with all their messages).
    pub tickets: Vec<u64>,
    /// Other people's tickets the person wrote into (their messages taken out; a ticket left
    /// empty is removed).
    pub tickets_updated: Vec<u64>,
    /// Messages removed.
    pub messages: Vec<u64>,
    /// Attachment records removed.
    pub attachments: u64,
    /// Stored attachment contents removed (a content also sent by someone else stays theirs).
    pub blobs: u64,
    /// Quarantine entries removed.
    pub quarantined: u64,
    /// Orphan entries removed.
    pub orphans: u64,
    /// Unprocessed spool entries from the person removed.
    pub spool: u64,
    /// Failed entries from the person removed.
    pub failed: u64,
    /// Learned-message records removed (the filter's token counts stay).
    pub learned: u64,
    /// Contact records removed (0 or 1).
    pub contacts: u64,
    /// The person's key was destroyed: every copy of their data, in backups too, is
    /// unreadable.
    pub key_destroyed: bool,
    /// Spool keys destroyed after the other entries were re-sealed under a new one.
    pub spool_keys_destroyed: u64,
    /// The audit record written (null in a dry run).
    pub audit_id: Option<u64>,
}

impl From<StoreErasureReport> for ErasureReport {
    fn from(r: StoreErasureReport) -> Self {
        ErasureReport {
            dry_run: r.dry_run,
            found: r.found,
            tickets: r.tickets,
            tickets_updated: r.tickets_updated,
            messages: r.messages,
            attachments: r.attachments,
            blobs: r.blobs,
            quarantined: r.quarantined,
            orphans: r.orphans,
            spool: r.spool,
            failed: r.failed,
            learned: r.learned,
            contacts: r.contacts,
            key_destroyed: r.key_destroyed,
            spool_keys_destroyed: r.spool_keys_destroyed,
            audit_id: r.audit_id,
        }
    }
}

/// What an audit record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// A person was erased.
    Erase,
    /// A person's data was exported.
    Export,
    /// Retention rules were applied.
    Retention,
    /// A backup was written.
    Backup,
    /// A backup was restored.
    Restore,
    /// An agent was deleted.
    AgentDelete,
}

impl From<StoreAuditAction> for AuditAction {
    fn from(a: StoreAuditAction) -> Self {
        match a {
            StoreAuditAction::Erase => AuditAction::Erase,
            StoreAuditAction::Export => AuditAction::Export,
            StoreAuditAction::Retention => AuditAction::Retention,
            StoreAuditAction::Backup => AuditAction::Backup,
            StoreAuditAction::Restore => AuditAction::Restore,
            StoreAuditAction::AgentDelete => AuditAction::AgentDelete,
        }
    }
}

/// One audit record: ids and counts only, never an address, subject or content.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Its id (increasing); pass as `before` to page.
    pub id: u64,
    /// Unix seconds.
    pub at: u64,
    /// What kind of action.
    pub action: AuditAction,
    /// Who: `cli` (an operator on the box), `system` (the retention sweeper) or `token` (an
    /// API token).
    pub actor: String,
    /// The API token, when a token did it.
    pub token: Option<u64>,
    /// The token's agent: their name, or `agent-N` once that agent was deleted.
    pub agent: Option<String>,
    /// How many of each kind of record the action touched.
    pub counts: BTreeMap<String, u64>,
}

impl From<StoreAuditEntry> for AuditEntry {
    fn from(e: StoreAuditEntry) -> Self {
        AuditEntry {
            id: e.id,
            at: e.at,
            action: e.action.into(),
            actor: e.actor,
            token: e.token,
            agent: e.agent,
            counts: e.counts,
        }
    }
}

/// A page of the audit log, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    /// The records.
    pub entries: Vec<AuditEntry>,
    /// Pass as `before` to get the next page; null on the last page.
    pub next: Option<u64>,
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only records older than this id (the `next` of the previous page).
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    pub before: Option<u64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Result of `DELETE /v1/agents/{name}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub struct AgentDeleted {
    /// The agent's id: tickets they closed and audit records of what they did now show
    /// `agent-N`.
    pub agent: u64,
    /// Tokens of theirs revoked now (those not revoked already).
    pub tokens_revoked: u64,
}

impl From<AgentDeletion> for AgentDeleted {
    fn from(d: AgentDeletion) -> Self {
        AgentDeleted {
            agent: d.agent,
            tokens_revoked: d.tokens_revoked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_without_repeating_them() {
        for ok in ["a@b", "Alice <alice@example.com>", "ü@example.de"] {
            assert_eq!(check_email(ok), Ok(()), "{ok}");
        }
        let long = format!("{}@example.com", "x".repeat(309));
        for bad in [
            "",
            "@",
            "a@",
            "@b",
            "a@b@c",
            "a\n@b",
            "a@b\u{7f}",
            "a\u{9f}@b",
            &long,
        ] {
            let err = check_email(bad).unwrap_err();
            assert!(bad.len() < 4 || !err.contains(bad), "{bad:?}");
        }
        assert_eq!(check_email(&long[1..]), Ok(()), "320 bytes");
    }

    #[test]
    fn the_documented_pattern_is_the_checked_one() {
        let doc: serde_json::Value =
            serde_json::from_slice(&crate::openapi::document_json()).unwrap();
        for schema in ["EraseRequest", "ExportRequest"] {
            let email = &doc["components"]["schemas"][schema]["properties"]["email"];
            assert_eq!(email["pattern"], EMAIL_PATTERN, "{schema}");
            assert_eq!(email["maxLength"], MAX_EMAIL_BYTES, "{schema}");
        }
    }
}
