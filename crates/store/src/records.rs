//! What the trees hold: plaintext metadata (postcard) framed with sealed personal data.
//!
//! A framed value is `u32 big-endian length || postcard(meta) || tail`, where the tail is raw
//! bytes (a sealed value, or the raw message inside a sealed value). Big byte strings never go
//! through serde.

use mailroom_spool::Envelope;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::{AttachmentTags, ClueView, MessageFlag, TicketId, TicketStatus, Verdict};
use crate::{Result, StoreError};

/// Tree names. They are also bound into every sealed value's associated data.
pub(crate) mod tree {
    pub(crate) const META: &str = "meta";
    pub(crate) const SPOOL: &str = "spool";
    pub(crate) const FAILED: &str = "failed";
    pub(crate) const FAILED_REASON: &str = "failed.reason";
    pub(crate) const CONTACTS: &str = "contacts";
    pub(crate) const CONTACT_IDX: &str = "contact_idx";
    pub(crate) const TICKETS: &str = "tickets";
    pub(crate) const PARTICIPANTS: &str = "participants";
    pub(crate) const MESSAGES: &str = "messages";
    pub(crate) const ORPHANS: &str = "orphans";
    pub(crate) const MSGID_IDX: &str = "msgid_idx";
    pub(crate) const BLOBS: &str = "blobs";
    pub(crate) const ATTACHMENTS: &str = "attachments";
    pub(crate) const BLOB_REFS: &str = "blob_refs";
    pub(crate) const FILTER_META: &str = "filter_meta";
    pub(crate) const FILTER_JOURNAL: &str = "filter_journal";
    pub(crate) const FILTER_SNAPSHOT: &str = "filter_snapshot";
    pub(crate) const LEARNED: &str = "learned";
    pub(crate) const QUARANTINE: &str = "quarantine";
    pub(crate) const AUDIT: &str = "audit";
    pub(crate) const AGENTS: &str = "agents";
    pub(crate) const AGENT_IDX: &str = "agent_idx";
    /// Chunks of large sealed values (see `bulk`).
    pub(crate) const BULK: &str = "bulk";
}

/// Keys in the `meta` tree.
pub(crate) mod meta_key {
    /// The next ticket number (u64 big endian); absent means 1.
    pub(crate) const NEXT_TICKET: &[u8] = b"next_ticket";
    /// Present once the index key was made for this database.
    pub(crate) const INDEX_KEY: &[u8] = b"index_key";
    /// Prefix of an erasure in progress: `erasing/<contact id, u64 big endian>`.
    pub(crate) const ERASING: &[u8] = b"erasing/";
    /// The next audit record id (u64 big endian); absent means 1.
    pub(crate) const NEXT_AUDIT: &[u8] = b"next_audit";
    /// The next agent id (u64 big endian); absent means 1.
    pub(crate) const NEXT_AGENT: &[u8] = b"next_agent";
}

/// Frame `meta` with `tail`.
pub(crate) fn frame<M: Serialize>(meta: &M, tail: &[u8]) -> Result<Vec<u8>> {
    let mut out = frame_head(meta, tail.len())?;
    out.extend_from_slice(tail);
    Ok(out)
}

/// The head of a frame (length and meta) with room for a tail of `tail_len` bytes.
pub(crate) fn frame_head<M: Serialize>(meta: &M, tail_len: usize) -> Result<Vec<u8>> {
    let meta = postcard::to_stdvec(meta).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let len = u32::try_from(meta.len())
        .map_err(|_| StoreError::Corrupt("record metadata too large".into()))?;
    let mut out = Vec::with_capacity(4 + meta.len() + tail_len);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&meta);
    Ok(out)
}

/// Split a framed value into its meta and tail.
pub(crate) fn unframe<M: DeserializeOwned>(bytes: &[u8]) -> Result<(M, &[u8])> {
    let corrupt = || StoreError::Corrupt("truncated record".into());
    let len_bytes: [u8; 4] = bytes
        .get(..4)
        .ok_or_else(corrupt)?
        .try_into()
        .map_err(|_| corrupt())?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let meta = bytes.get(4..4 + len).ok_or_else(corrupt)?;
    let meta = postcard::from_bytes(meta).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok((meta, &bytes[4 + len..]))
}

/// Encode a plain postcard value.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Decode a plain postcard value.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A big-endian u64 record key or value.
pub(crate) fn be(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// Read a big-endian u64 (the first eight bytes).
pub(crate) fn from_be(bytes: &[u8]) -> Result<u64> {
    let b: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| StoreError::Corrupt("bad id".into()))?;
    Ok(u64::from_be_bytes(b))
}

/// Concatenation of two big-endian ids (participants: ticket ++ contact).
pub(crate) fn be2(a: u64, b: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

/// `spool` value: `frame(SpoolMeta, sealed(frame(Envelope, raw)))` under a spool key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SpoolMeta {
    /// Accepted at, Unix seconds.
    pub received_at: u64,
    /// Size of the raw message.
    pub size: u64,
}

/// `failed` value: `frame(FailedMeta, sealed reason || sealed payload)`. The payload is the
/// spool entry's sealed value moved as it was (still bound to `spool`/`spool_id`, which is never
/// reused); the reason is sealed under the same spool key when it is readable.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct FailedMeta {
    /// The spool entry it came from.
    pub spool_id: u64,
    /// Accepted at, Unix seconds.
    pub received_at: u64,
    /// Size of the raw message.
    pub size: u64,
    /// Failed at, Unix seconds.
    pub failed_at: u64,
    /// Length of the sealed reason at the start of the tail.
    pub reason_len: u32,
}

/// `contacts` value: `frame(ContactMeta, sealed(frame(ContactSecret, [])))` under the
/// person's key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ContactMeta {
    /// Created at, Unix seconds.
    pub created_at: u64,
}

/// The personal part of a contact.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ContactSecret {
    pub address: String,
    pub name: Option<String>,
}

/// `tickets` value: `frame(TicketMeta, sealed(frame(TicketSecret, [])))` under the requester's
/// key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TicketMeta {
    pub requester: u64,
    pub status: TicketStatus,
    pub created_at: u64,
    pub updated_at: u64,
    /// Message ids, oldest first.
    pub messages: Vec<u64>,
    /// Attachments over all messages.
    pub attachments: u64,
    /// Whether any message carries a flag.
    pub flagged: bool,
    /// Whether the spam filter was unsure about any message.
    pub unsure: bool,
    /// When it was last closed, Unix seconds (`None` while open).
    pub closed_at: Option<u64>,
    /// The agent who closed it (an id in `agents`; the name goes when the agent is deleted).
    pub closed_by: Option<u64>,
}

/// The personal part of a ticket.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TicketSecret {
    pub subject: String,
}

/// `messages` value: `frame(MessageMeta, sealed(frame(MessageSecret, raw)))` under the sender's
/// key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MessageMeta {
    pub ticket: Option<u64>,
    /// The sender (owner).
    pub contact: u64,
    pub received_at: u64,
    /// Flags with personal detail removed (`ParseWarning` text); the full ones are sealed.
    pub flags: Vec<StoredFlag>,
    pub has_html: bool,
    pub attachments: u32,
    /// The spool entry it was committed from.
    pub spool_id: u64,
    /// The spam filter's score, verdict and combiner (the clues, words of the message, are
    /// sealed in [`MessageSecret::clues`]).
    pub classification: Option<StoredClassification>,
}

/// The plaintext part of a [`crate::model::Classification`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredClassification {
    pub score: f64,
    pub verdict: Verdict,
    pub algorithm: String,
}

/// `quarantine` value (key: message id, big endian):
/// `frame(QuarantineMeta, sealed(frame(QuarantineSecret, [])))` under the sender's key. The
/// message itself is in `messages` (with no ticket) and in neither `orphans` nor a ticket.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct QuarantineMeta {
    /// The ticket it would have joined, if it threads.
    pub ticket: Option<u64>,
    /// The sender (owner), for erasure.
    pub contact: u64,
    /// Quarantined at, Unix seconds.
    pub created_at: u64,
}

/// The personal part of a quarantine entry.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct QuarantineSecret {
    /// Subject of the ticket a release would open.
    pub subject: String,
}

/// The personal part of a message.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MessageSecret {
    pub from: String,
    pub from_name: Option<String>,
    pub subject: String,
    pub message_id: Option<String>,
    pub references: Vec<String>,
    pub date: Option<i64>,
    pub headers: Vec<(String, String)>,
    pub text: Option<String>,
    pub html: Option<String>,
    pub envelope: Envelope,
    pub flags: Vec<StoredFlag>,
    pub content_hash: [u8; 32],
    /// The spam filter's clues (tokens are words of the message).
    pub clues: Vec<ClueView>,
}

/// `attachments` value (key: message id ++ index u32, both big endian):
/// `frame(AttachmentMeta, sealed(frame(AttachmentSecret, [])))` under the owner's key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AttachmentMeta {
    /// Key of the blob in `blobs`.
    pub blob: [u8; 32],
    pub size: u64,
    pub tags: AttachmentTags,
}

/// The personal part of an attachment.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AttachmentSecret {
    pub sha256: [u8; 32],
    pub filename: Option<String>,
    pub content_type: String,
}

/// `blobs` value (key: HMAC(index key, owner, sha256)): `frame(BlobMeta, sealed(bytes))` under
/// the owner's key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct BlobMeta {
    pub contact: u64,
    pub size: u64,
    pub created_at: u64,
}

/// [`MessageFlag`] as stored. The API type is internally tagged for JSON, which postcard
/// (not self-describing) cannot read back, so records use this externally tagged mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum StoredFlag {
    AutoReply,
    Bounce,
    Bulk,
    UnverifiedThread(u64),
    ParseWarning(String),
}

impl From<&MessageFlag> for StoredFlag {
    fn from(flag: &MessageFlag) -> Self {
        match flag {
            MessageFlag::AutoReply => StoredFlag::AutoReply,
            MessageFlag::Bounce => StoredFlag::Bounce,
            MessageFlag::Bulk => StoredFlag::Bulk,
            MessageFlag::UnverifiedThread { claimed } => StoredFlag::UnverifiedThread(claimed.0),
            MessageFlag::ParseWarning { detail } => StoredFlag::ParseWarning(detail.clone()),
        }
    }
}

impl From<StoredFlag> for MessageFlag {
    fn from(flag: StoredFlag) -> Self {
        match flag {
            StoredFlag::AutoReply => MessageFlag::AutoReply,
            StoredFlag::Bounce => MessageFlag::Bounce,
            StoredFlag::Bulk => MessageFlag::Bulk,
            StoredFlag::UnverifiedThread(id) => MessageFlag::UnverifiedThread {
                claimed: TicketId(id),
            },
            StoredFlag::ParseWarning(detail) => MessageFlag::ParseWarning { detail },
        }
    }
}

/// Stored flags of `flags`.
pub(crate) fn stored_flags(flags: &[MessageFlag]) -> Vec<StoredFlag> {
    flags.iter().map(StoredFlag::from).collect()
}

/// API flags of stored `flags`.
pub(crate) fn api_flags(flags: Vec<StoredFlag>) -> Vec<MessageFlag> {
    flags.into_iter().map(MessageFlag::from).collect()
}

/// A flag with any personal detail removed, for the plaintext metadata.
pub(crate) fn redact(flag: &MessageFlag) -> StoredFlag {
    match flag {
        MessageFlag::ParseWarning { .. } => StoredFlag::ParseWarning(String::new()),
        other => StoredFlag::from(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip() {
        let meta = SpoolMeta {
            received_at: 5,
            size: 3,
        };
        let bytes = frame(&meta, b"abc").unwrap();
        let (back, tail): (SpoolMeta, _) = unframe(&bytes).unwrap();
        assert_eq!((back.received_at, back.size, tail), (5, 3, &b"abc"[..]));
        assert!(unframe::<SpoolMeta>(&bytes[..2]).is_err());
        assert!(unframe::<SpoolMeta>(&[0, 0, 0, 9, 1]).is_err());
    }

    #[test]
    fn flags_round_trip_through_postcard() {
        let flags = vec![
            MessageFlag::AutoReply,
            MessageFlag::Bounce,
            MessageFlag::Bulk,
            MessageFlag::UnverifiedThread {
                claimed: TicketId(7),
            },
            MessageFlag::ParseWarning {
                detail: "bad".into(),
            },
        ];
        let bytes = encode(&stored_flags(&flags)).unwrap();
        assert_eq!(api_flags(decode(&bytes).unwrap()), flags);
        assert_eq!(redact(&flags[4]), StoredFlag::ParseWarning(String::new()));
    }
}
