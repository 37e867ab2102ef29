//! Typed records and views that cross the store's API. No sled type appears here.

use mailroom_spool::{Envelope, SpoolId};
use serde::{Deserialize, Serialize};

/// A ticket's number, as shown to people (`[#42]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TicketId(pub u64);

/// A stored message's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageKey(pub u64);

/// A contact's id (one per normalised address). It also names the person's encryption key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContactId(pub u64);

/// An entry in the failed list (a message that could not be processed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FailedId(pub u64);

/// A mailbox address as parsed from a header: `address` is already normalised
/// (see [`normalize_address`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// Normalised address, e.g. `alice@example.com`.
    pub address: String,
    /// Display name, if the header had one.
    pub name: Option<String>,
}

/// Flags recorded on a message. Flagged messages never open a ticket of their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MessageFlag {
    /// `Auto-Submitted` other than `no`, `X-Autoreply`, `X-Autorespond`, ... (vacation replies).
    AutoReply,
    /// A delivery status notification (`multipart/report; report-type=delivery-status`) or a
    /// message with an empty return path.
    Bounce,
    /// Mailing-list or bulk mail (`List-Id`, `List-Unsubscribe`, `Precedence: bulk|junk|list`).
    Bulk,
    /// The message claimed to belong to `claimed` (by `In-Reply-To`/`References` or a `[#N]`
    /// subject tag) but its sender is not on that ticket: it was not added there.
    UnverifiedThread {
        /// The ticket the message pointed at.
        claimed: TicketId,
    },
    /// The parser had to guess (broken MIME, bad encoding); the text says what.
    ParseWarning {
        /// What was wrong.
        detail: String,
    },
}

/// Where the pipeline decided a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ThreadDecision {
    /// Append to this existing ticket.
    Existing(TicketId),
    /// Open a new ticket with this subject; the sender becomes its requester.
    New {
        /// The ticket's subject (the message's subject, without `Re:` noise is fine).
        subject: String,
    },
    /// Keep the message but attach it to no ticket (auto-reply or bounce that threads nowhere).
    Orphan,
    /// The spam filter called it spam: keep it in the quarantine, not in a ticket. `ticket` is
    /// where it would have gone (so that releasing it can put it there), `subject` the subject a
    /// new ticket would get.
    Quarantine {
        /// The ticket it would have joined, if it threads.
        ticket: Option<TicketId>,
        /// The subject of the ticket a release would open.
        subject: String,
    },
}

/// The spam filter's verdict class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Below `ham_cutoff`.
    Ham,
    /// Between the cutoffs: a ticket marked unsure.
    Unsure,
    /// At or above `spam_cutoff`: quarantined.
    Spam,
}

/// One token that decided a verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClueView {
    /// The token (e.g. `subject:invoice`, `url:example.com`), when known.
    pub token: Option<String>,
    /// Its spam probability (Robinson's f(w)).
    pub probability: f64,
    /// Learned ham messages containing it.
    pub ham: u32,
    /// Learned spam messages containing it.
    pub spam: u32,
}

/// The spam filter's result for one message, as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// Spam score in [0, 1].
    pub score: f64,
    /// Ham, unsure or spam at the cutoffs in force when it was classified.
    pub verdict: Verdict,
    /// Which combiner decided (`fusion`, `fisher`, ...).
    pub algorithm: String,
    /// The tokens that decided, most significant first.
    pub clues: Vec<ClueView>,
}

/// One attachment of a message being committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAttachment {
    /// File name from `Content-Disposition`/`Content-Type`, if any (as sent; never used as a path).
    pub filename: Option<String>,
    /// MIME type, e.g. `application/pdf`.
    pub content_type: String,
    /// Decoded bytes.
    pub data: Vec<u8>,
    /// Retention class (`attachment` unless the pipeline says otherwise).
    pub retention_class: String,
}

/// A parsed message being committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// `Message-ID` without angle brackets, if present.
    pub message_id: Option<String>,
    /// `In-Reply-To` ids followed by `References` ids, without angle brackets.
    pub references: Vec<String>,
    /// `Subject` (decoded).
    pub subject: String,
    /// `Date` as Unix seconds, if it parsed.
    pub date: Option<i64>,
    /// All header fields in order, as (name, decoded value).
    pub headers: Vec<(String, String)>,
    /// Text body (first text/plain part, or HTML rendered to text).
    pub text: Option<String>,
    /// HTML body, if any.
    pub html: Option<String>,
    /// The raw message exactly as spooled (with our `Received:` line).
    pub raw: Vec<u8>,
    /// The envelope it arrived with.
    pub envelope: Envelope,
    /// Flags found by the pipeline.
    pub flags: Vec<MessageFlag>,
    /// SHA-256 of `raw`.
    pub content_hash: [u8; 32],
}

/// Everything the pipeline hands to [`crate::Store::commit_message`].
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The sender (`From`, else `Sender`, else the envelope's reverse path).
    pub from: Address,
    /// Which ticket, if any.
    pub thread: ThreadDecision,
    /// The message itself.
    pub message: NewMessage,
    /// Its attachments (duplicates allowed: the store keeps one blob per owner and content).
    pub attachments: Vec<NewAttachment>,
    /// The spam filter's verdict, if the message was classified.
    pub classification: Option<Classification>,
}

/// What [`crate::Store::commit_message`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommitOutcome {
    /// Stored now.
    Stored {
        /// The ticket it went to, if any.
        ticket: Option<TicketId>,
        /// The new message's id.
        message: MessageKey,
        /// Whether the ticket was opened by this message.
        new_ticket: bool,
    },
    /// The spool entry was already gone: processed before (e.g. before a crash). Nothing was
    /// written.
    AlreadyProcessed,
}

/// A decrypted spool entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolEntry {
    /// Its id.
    pub id: SpoolId,
    /// How it arrived.
    pub envelope: Envelope,
    /// Raw bytes.
    pub raw: Vec<u8>,
}

/// An existing message found by its `Message-ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRef {
    /// The message.
    pub message: MessageKey,
    /// Its ticket, if it has one.
    pub ticket: Option<TicketId>,
}

/// Ticket state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    /// Waiting for an agent.
    Open,
    /// Done.
    Closed,
}

/// A ticket as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketSummary {
    /// Ticket number.
    pub id: u64,
    /// Subject of the first message.
    pub subject: String,
    /// Requester's address.
    pub requester: String,
    /// Number of messages.
    pub messages: usize,
    /// Number of attachments over all messages.
    pub attachments: usize,
    /// Open or closed.
    pub status: TicketStatus,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds of the last message.
    pub updated_at: u64,
    /// Whether any message on it carries a flag.
    pub flagged: bool,
    /// Whether the spam filter was unsure about any message on it.
    #[serde(default)]
    pub unsure: bool,
    /// When it was closed, Unix seconds (`None` while open).
    #[serde(default)]
    pub closed_at: Option<u64>,
    /// The agent who closed it: their name, or `agent-N` once that agent was deleted.
    #[serde(default)]
    pub closed_by: Option<String>,
}

/// The tags an attachment carries so that erasure and retention can find it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentTags {
    /// Owner (the sender of the message it came with).
    pub contact: u64,
    /// Ticket, if the message has one.
    pub ticket: Option<u64>,
    /// Message it came with.
    pub message: u64,
    /// Retention class.
    pub retention_class: String,
    /// Unix seconds.
    pub created_at: u64,
}

/// An attachment as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentView {
    /// Hex SHA-256 of the content.
    pub sha256: String,
    /// File name as sent.
    pub filename: Option<String>,
    /// MIME type.
    pub content_type: String,
    /// Size in bytes.
    pub size: u64,
    /// Its tags.
    pub tags: AttachmentTags,
}

/// A message as shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageView {
    /// Message id.
    pub id: u64,
    /// Ticket, if any.
    pub ticket: Option<u64>,
    /// Sender address.
    pub from: String,
    /// Sender display name.
    pub from_name: Option<String>,
    /// Subject.
    pub subject: String,
    /// `Message-ID`.
    pub message_id: Option<String>,
    /// `Date` header, Unix seconds.
    pub date: Option<i64>,
    /// When we accepted it, Unix seconds.
    pub received_at: u64,
    /// Flags.
    pub flags: Vec<MessageFlag>,
    /// Text body.
    pub text: Option<String>,
    /// Whether it had an HTML body.
    pub has_html: bool,
    /// Attachments.
    pub attachments: Vec<AttachmentView>,
    /// The spam filter's verdict, score and explanation.
    #[serde(default)]
    pub classification: Option<Classification>,
    /// Whether it sits in the quarantine.
    #[serde(default)]
    pub quarantined: bool,
}

/// A ticket with its messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketDetail {
    /// The summary.
    #[serde(flatten)]
    pub summary: TicketSummary,
    /// Messages, oldest first.
    pub thread: Vec<MessageView>,
}

/// An entry of the failed list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedEntry {
    /// Its id (for `failed retry`).
    pub id: u64,
    /// The spool entry it came from.
    pub spool_id: u64,
    /// Why processing failed.
    pub reason: String,
    /// Size of the raw message.
    pub size: u64,
    /// When it was accepted, Unix seconds.
    pub received_at: u64,
    /// When it failed, Unix seconds.
    pub failed_at: u64,
}

/// Normalise an address for contact lookup: trim, strip angle brackets, lowercase the domain;
/// the local part is lowercased too (help desks treat `Bob@` and `bob@` as one person).
pub fn normalize_address(addr: &str) -> String {
    let a = addr
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    a.to_lowercase()
}
