//! What agents do to stored mail (through the HTTP API or the CLI): feedback that trains the
//! filter and moves a message between its ticket and the quarantine, release and delete from
//! the quarantine, paged ticket and quarantine listings, attachment downloads.
//!
//! Each move is one sled transaction. As in `commit`, the expensive or scanning part (sealing,
//! listing a message's attachment records or a ticket's participants) happens before the
//! transaction, which re-reads what it changes and plans again when something moved meanwhile.
//! (sled 0.34 runs a transaction's closure under its global write lock, where a plain tree read
//! or scan would deadlock: inside, only the transactional views are read.)
//!
//! Training and moving are two steps: [`Store::message_feedback`] trains first (its own
//! transaction in the filter's trees), then moves. Both steps are idempotent, so repeating the
//! same feedback after a crash between them finishes the move and trains nothing twice.

use std::collections::HashMap;

use mailroom_spamfilter::{Classifier, Label, Tokenizer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{IVec, Transactional};

use crate::commit::{fail, open_ticket, replan, Abort, MAX_PLANS};
use crate::crypto::{self, KeyRef};
use crate::filter::TrainOutcome;
use crate::keys::now_secs;
use crate::model::{
    normalize_address, ContactId, MessageKey, MessageRef, MessageView, TicketId, TicketStatus,
    TicketSummary, Verdict,
};
use crate::records::{
    be, be2, decode, encode, frame, from_be, tree, unframe, AttachmentMeta, AttachmentSecret,
    BlobMeta, MessageMeta, MessageSecret, QuarantineMeta, QuarantineSecret, TicketMeta,
    TicketSecret,
};
use crate::{Result, Store, StoreError};

/// What [`Store::message_feedback`] did besides training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeedbackAction {
    /// The message stays where it is (ham on a ticket or orphan message, spam on a message
    /// already in the quarantine).
    Unchanged,
    /// Spam: the message left its ticket (or the orphans) for the quarantine.
    Quarantined {
        /// The ticket it left; a release puts it back there while that ticket exists.
        from_ticket: Option<TicketId>,
        /// It was the ticket's only message, so the ticket is gone.
        ticket_deleted: bool,
    },
    /// Ham on a quarantined message: released into this ticket.
    Released {
        /// The ticket it joined.
        ticket: TicketId,
        /// Whether that ticket was opened for it.
        new_ticket: bool,
    },
}

/// What [`Store::message_feedback`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackOutcome {
    /// What training did (`already_learned` when the same feedback came before).
    pub training: TrainOutcome,
    /// Where the message went.
    pub action: FeedbackAction,
}

/// What [`Store::quarantine_release`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The ticket the message joined.
    pub ticket: TicketId,
    /// Whether that ticket was opened for it (its would-be ticket was gone, or it had none).
    pub new_ticket: bool,
}

/// Filters and position for [`Store::ticket_page`]. Filters combine with "and".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TicketQuery {
    /// Only tickets with this status.
    pub status: Option<TicketStatus>,
    /// Only tickets opened by this address (matched by keyed hash, never stored in clear).
    pub requester: Option<String>,
    /// Only tickets that are (or are not) flagged.
    pub flagged: Option<bool>,
    /// Only tickets the filter was (or was not) unsure about.
    pub unsure: Option<bool>,
    /// Only tickets numbered below this one (the cursor of the previous page).
    pub before: Option<TicketId>,
    /// At most this many tickets (at least one is returned when any match).
    pub limit: usize,
}

/// One page of tickets, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketPage {
    /// The tickets.
    pub tickets: Vec<TicketSummary>,
    /// Pass as [`TicketQuery::before`] for the next page; `None` on the last page.
    pub next: Option<TicketId>,
}

/// A quarantined message with where it would go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    /// The message.
    pub message: MessageView,
    /// The ticket it would have joined (a release puts it there while that ticket exists).
    pub target_ticket: Option<TicketId>,
    /// When it was quarantined, Unix seconds.
    pub quarantined_at: u64,
}

/// One page of the quarantine, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantinePage {
    /// The entries.
    pub entries: Vec<QuarantineEntry>,
    /// Pass as `before` for the next page; `None` on the last page.
    pub next: Option<MessageKey>,
}

/// An attachment's bytes with what its record says about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentDownload {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// File name as sent (untrusted: sanitise before use in a header or a path).
    pub filename: Option<String>,
    /// MIME type as sent (untrusted).
    pub content_type: String,
}

/// Run `attempt` until it does not ask for a new plan (at most [`MAX_PLANS`] times).
fn with_replans<T>(
    what: &str,
    mut attempt: impl FnMut() -> Result<std::result::Result<T, TransactionError<Abort>>>,
) -> Result<T> {
    for _ in 0..MAX_PLANS {
        match attempt()? {
            Ok(v) => return Ok(v),
            Err(TransactionError::Abort(Abort::Replan)) => continue,
            Err(TransactionError::Abort(Abort::Store(e))) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        }
    }
    Err(StoreError::Io(format!("{what} kept conflicting")))
}

/// A stored message, decrypted.
struct Loaded {
    meta: MessageMeta,
    secret: MessageSecret,
    raw: Vec<u8>,
}

/// Whether a message is automatic mail (see `commit::automatic`).
fn automatic(meta: &MessageMeta) -> bool {
    crate::commit::automatic(&meta.flags)
}

fn unsure(meta: &MessageMeta) -> bool {
    meta.classification
        .as_ref()
        .is_some_and(|c| c.verdict == Verdict::Unsure)
}

/// Key of a `blob_refs` entry: blob ++ attachment record key.
fn blob_ref(blob: &[u8; 32], attachment: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(32 + attachment.len());
    r.extend_from_slice(blob);
    r.extend_from_slice(attachment);
    r
}

/// `Ok(None)` for a key that is gone (erased person).
fn readable<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::KeyMissing(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Store {
    /// Read and decrypt message `id`; `None` if there is no such message.
    fn load_message(&self, id: u64) -> Result<Option<Loaded>> {
        let Some(value) = self.inner.t.messages.get(be(id))? else {
            return Ok(None);
        };
        let (meta, sealed): (MessageMeta, _) = unframe(&value)?;
        let plain = self.open_sealed(sealed, tree::MESSAGES, &be(id))?;
        let (secret, raw): (MessageSecret, _) = unframe(&plain)?;
        Ok(Some(Loaded {
            meta,
            secret,
            raw: raw.to_vec(),
        }))
    }

    /// Keys of the attachment records of message `id` (fixed once the message is stored).
    fn attachment_keys(&self, id: u64) -> Result<Vec<IVec>> {
        self.inner
            .t
            .attachments
            .scan_prefix(be(id))
            .keys()
            .map(|k| Ok(k?))
            .collect()
    }

    /// Feedback on stored message `message`: train the filter with `label` at once (idempotent:
    /// the fingerprint is the SHA-256 of the stored raw message, its features those of
    /// `tokenizer`, as `filter train` computes them), then:
    /// - spam on a message in a ticket (or an orphan): move it into the quarantine, remembering
    ///   its ticket for a release (a ticket left with no message is removed);
    /// - ham on a quarantined message: release it ([`Store::quarantine_release`]).
    ///
    /// The same feedback twice trains nothing and moves nothing. `NotFound` if there is no
    /// such message; `KeyMissing` if its sender was erased.
    pub fn message_feedback(
        &self,
        message: MessageKey,
        label: Label,
        tokenizer: &Tokenizer,
        classifier: &Classifier,
        day: u32,
    ) -> Result<FeedbackOutcome> {
        let _gate = self.writing();
        let Some(loaded) = self.load_message(message.0)? else {
            return Err(StoreError::NotFound(format!("message {}", message.0)));
        };
        let fingerprint: [u8; 32] = Sha256::digest(&loaded.raw).into();
        let features = tokenizer.tokenize(&loaded.raw);
        let training = self.filter_train(
            classifier,
            &features,
            &fingerprint,
            label,
            Some(ContactId(loaded.meta.contact)),
            day,
        )?;
        let quarantined = self.inner.t.quarantine.contains_key(be(message.0))?;
        let action = match (label, quarantined) {
            (Label::Spam, false) => self.move_to_quarantine(message.0, &loaded)?,
            (Label::Ham, true) => {
                let r = self.release(message.0, Some(&loaded))?;
                FeedbackAction::Released {
                    ticket: r.ticket,
                    new_ticket: r.new_ticket,
                }
            }
            _ => FeedbackAction::Unchanged,
        };
        Ok(FeedbackOutcome { training, action })
    }

    /// The subject a release would give a new ticket: the ticket's own subject when the
    /// message opened it, else the message's.
    fn quarantine_subject(&self, id: u64, loaded: &Loaded) -> Result<String> {
        if let Some(t) = loaded.meta.ticket {
            if let Some(value) = self.inner.t.tickets.get(be(t))? {
                let (meta, sealed): (TicketMeta, _) = unframe(&value)?;
                if meta.messages.first() == Some(&id) {
                    if let Some(s) =
                        readable(self.open_secret::<TicketSecret>(sealed, tree::TICKETS, &be(t)))?
                    {
                        return Ok(s.subject);
                    }
                }
            }
        }
        Ok(loaded.secret.subject.clone())
    }

    fn move_to_quarantine(&self, id: u64, loaded: &Loaded) -> Result<FeedbackAction> {
        let t = &self.inner.t;
        let contact = loaded.meta.contact;
        let key = self.inner.keys.key(KeyRef::Person(contact))?;
        let msgid_key = loaded
            .secret
            .message_id
            .as_deref()
            .map(|m| self.msgid_hash(m));
        let attachment_keys = self.attachment_keys(id)?;
        let outcome = with_replans("moving a message to the quarantine", || {
            // Plan: where the message is now, the ticket's participants, the sealed subject.
            let Some(value) = t.messages.get(be(id))? else {
                return Err(StoreError::NotFound(format!("message {id}")));
            };
            let (meta, _): (MessageMeta, _) = unframe(&value)?;
            let planned_ticket = meta.ticket;
            let participants: Vec<IVec> = match planned_ticket {
                Some(tk) => t
                    .participants
                    .scan_prefix(be(tk))
                    .keys()
                    .collect::<std::result::Result<_, _>>()?,
                None => Vec::new(),
            };
            let subject = self.quarantine_subject(id, loaded)?;
            let sealed = crypto::seal(
                &key,
                KeyRef::Person(contact),
                tree::QUARANTINE,
                &be(id),
                &frame(&QuarantineSecret { subject }, &[])?,
            )?;
            let record = frame(
                &QuarantineMeta {
                    ticket: planned_ticket,
                    contact,
                    created_at: now_secs(),
                },
                &sealed,
            )?;
            Ok((
                &t.tickets,
                &t.participants,
                &t.messages,
                &t.orphans,
                &t.msgid_idx,
                &t.attachments,
                &t.quarantine,
            )
                .transaction(
                    |(
                        tickets,
                        participant_tree,
                        messages,
                        orphans,
                        msgid_idx,
                        attachments,
                        quarantine,
                    )| {
                        if quarantine.get(be(id))?.is_some() {
                            return Ok(FeedbackAction::Unchanged);
                        }
                        let Some(value) = messages.get(be(id))? else {
                            return Err(fail(StoreError::NotFound(format!("message {id}"))));
                        };
                        let (mut meta, sealed_message): (MessageMeta, _) =
                            unframe(&value).map_err(fail)?;
                        if meta.ticket != planned_ticket {
                            return replan();
                        }
                        let mut ticket_deleted = false;
                        match meta.ticket {
                            Some(tk) => {
                                if let Some(tv) = tickets.get(be(tk))? {
                                    let (mut tm, tsealed): (TicketMeta, _) =
                                        unframe(&tv).map_err(fail)?;
                                    tm.messages.retain(|m| *m != id);
                                    if tm.messages.is_empty() {
                                        tickets.remove(&be(tk))?;
                                        for p in &participants {
                                            participant_tree.remove(p.clone())?;
                                        }
                                        participant_tree.remove(&be2(tk, contact))?;
                                        ticket_deleted = true;
                                    } else {
                                        tm.attachments = tm
                                            .attachments
                                            .saturating_sub(u64::from(meta.attachments));
                                        let (mut flagged, mut any_unsure) = (false, false);
                                        let mut sender_stays = contact == tm.requester;
                                        for other in &tm.messages {
                                            let Some(ov) = messages.get(be(*other))? else {
                                                continue;
                                            };
                                            let (om, _): (MessageMeta, _) =
                                                unframe(&ov).map_err(fail)?;
                                            flagged |= !om.flags.is_empty();
                                            any_unsure |= unsure(&om);
                                            sender_stays |= om.contact == contact;
                                        }
                                        tm.flagged = flagged;
                                        tm.unsure = any_unsure;
                                        if !sender_stays {
                                            participant_tree.remove(&be2(tk, contact))?;
                                        }
                                        tickets
                                            .insert(&be(tk), frame(&tm, tsealed).map_err(fail)?)?;
                                    }
                                }
                            }
                            None => {
                                orphans.remove(&be(id))?;
                            }
                        }
                        meta.ticket = None;
                        messages.insert(&be(id), frame(&meta, sealed_message).map_err(fail)?)?;
                        for k in &attachment_keys {
                            if let Some(av) = attachments.get(k)? {
                                let (mut am, asealed): (AttachmentMeta, _) =
                                    unframe(&av).map_err(fail)?;
                                am.tags.ticket = None;
                                attachments.insert(k, frame(&am, asealed).map_err(fail)?)?;
                            }
                        }
                        if let Some(mk) = &msgid_key {
                            if let Some(rv) = msgid_idx.get(mk)? {
                                let r: MessageRef = decode(&rv).map_err(fail)?;
                                if r.message.0 == id {
                                    let r = MessageRef {
                                        message: r.message,
                                        ticket: None,
                                    };
                                    msgid_idx.insert(&mk[..], encode(&r).map_err(fail)?)?;
                                }
                            }
                        }
                        quarantine.insert(&be(id), record.as_slice())?;
                        Ok(FeedbackAction::Quarantined {
                            from_ticket: planned_ticket.map(TicketId),
                            ticket_deleted,
                        })
                    },
                ))
        })?;
        if outcome != FeedbackAction::Unchanged {
            self.inner.flusher.durable_blocking(false)?;
        }
        Ok(outcome)
    }

    /// Release quarantined message `message`: into the ticket it would have joined while that
    /// ticket exists, else into a new ticket whose requester is the sender; in one
    /// transaction. Does not train (the API and CLI train ham through
    /// [`Store::message_feedback`], which releases too). `NotFound` if it is not in the
    /// quarantine.
    pub fn quarantine_release(&self, message: MessageKey) -> Result<Release> {
        let _gate = self.writing();
        self.release(message.0, None)
    }

    fn release(&self, id: u64, loaded: Option<&Loaded>) -> Result<Release> {
        let t = &self.inner.t;
        let not_found = || StoreError::NotFound(format!("quarantined message {id}"));
        let Some(qv) = t.quarantine.get(be(id))? else {
            return Err(not_found());
        };
        let (qmeta, qsealed): (QuarantineMeta, _) = unframe(&qv)?;
        let contact = qmeta.contact;
        let subject = self
            .open_secret::<QuarantineSecret>(qsealed, tree::QUARANTINE, &be(id))?
            .subject;
        let key = self.inner.keys.key(KeyRef::Person(contact))?;
        let message_id = match loaded {
            Some(l) => l.secret.message_id.clone(),
            None => match self.load_message(id)? {
                Some(l) => l.secret.message_id,
                None => return Err(StoreError::NotFound(format!("message {id}"))),
            },
        };
        let msgid_key = message_id.as_deref().map(|m| self.msgid_hash(m));
        let attachment_keys = self.attachment_keys(id)?;
        let released = with_replans("releasing a message", || {
            Ok((
                &t.meta,
                &t.tickets,
                &t.participants,
                &t.messages,
                &t.msgid_idx,
                &t.attachments,
                &t.quarantine,
            )
                .transaction(
                    |(
                        meta_tree,
                        tickets,
                        participants,
                        messages,
                        msgid_idx,
                        attachments,
                        quarantine,
                    )| {
                        let Some(current) = quarantine.get(be(id))? else {
                            return Err(fail(not_found()));
                        };
                        let (current, _): (QuarantineMeta, _) = unframe(&current).map_err(fail)?;
                        let Some(value) = messages.get(be(id))? else {
                            return Err(fail(StoreError::NotFound(format!("message {id}"))));
                        };
                        let (mut meta, sealed_message): (MessageMeta, _) =
                            unframe(&value).map_err(fail)?;
                        let existing = match current.ticket {
                            Some(tk) => tickets.get(be(tk))?.map(|v| (tk, v)),
                            None => None,
                        };
                        let (ticket, new_ticket) = match existing {
                            Some((tk, tv)) => {
                                let (mut tm, tsealed): (TicketMeta, _) =
                                    unframe(&tv).map_err(fail)?;
                                if !tm.messages.contains(&id) {
                                    let at = tm.messages.partition_point(|m| *m < id);
                                    tm.messages.insert(at, id);
                                    tm.attachments += u64::from(meta.attachments);
                                }
                                tm.flagged |= !meta.flags.is_empty();
                                tm.unsure |= unsure(&meta);
                                tm.updated_at = tm.updated_at.max(meta.received_at);
                                tickets.insert(&be(tk), frame(&tm, tsealed).map_err(fail)?)?;
                                if !automatic(&meta) {
                                    participants.insert(&be2(tk, contact), &[][..])?;
                                }
                                (tk, false)
                            }
                            None => {
                                let tm = TicketMeta {
                                    requester: contact,
                                    status: TicketStatus::Open,
                                    created_at: meta.received_at,
                                    updated_at: meta.received_at,
                                    messages: vec![id],
                                    attachments: u64::from(meta.attachments),
                                    flagged: !meta.flags.is_empty(),
                                    unsure: unsure(&meta),
                                    closed_at: None,
                                    closed_by: None,
                                };
                                let tk = open_ticket(meta_tree, tickets, &key, &subject, &tm)?;
                                participants.insert(&be2(tk, contact), &[][..])?;
                                (tk, true)
                            }
                        };
                        meta.ticket = Some(ticket);
                        messages.insert(&be(id), frame(&meta, sealed_message).map_err(fail)?)?;
                        for k in &attachment_keys {
                            if let Some(av) = attachments.get(k)? {
                                let (mut am, asealed): (AttachmentMeta, _) =
                                    unframe(&av).map_err(fail)?;
                                am.tags.ticket = Some(ticket);
                                attachments.insert(k, frame(&am, asealed).map_err(fail)?)?;
                            }
                        }
                        if let Some(mk) = &msgid_key {
                            if let Some(rv) = msgid_idx.get(mk)? {
                                let r: MessageRef = decode(&rv).map_err(fail)?;
                                if r.message.0 == id {
                                    let r = MessageRef {
                                        message: r.message,
                                        ticket: Some(TicketId(ticket)),
                                    };
                                    msgid_idx.insert(&mk[..], encode(&r).map_err(fail)?)?;
                                }
                            }
                        }
                        quarantine.remove(&be(id))?;
                        Ok(Release {
                            ticket: TicketId(ticket),
                            new_ticket,
                        })
                    },
                ))
        })?;
        self.inner.flusher.durable_blocking(false)?;
        Ok(released)
    }

    /// Delete quarantined message `message` for good: its quarantine entry, the message, its
    /// attachment records and references, and every blob no other attachment uses. `false` if
    /// it is not in the quarantine. (What the filter learned from it stays learned.)
    pub fn quarantine_delete(&self, message: MessageKey) -> Result<bool> {
        let _gate = self.writing();
        let t = &self.inner.t;
        let id = message.0;
        if !t.quarantine.contains_key(be(id))? {
            return Ok(false);
        }
        let msgid_key = match readable(self.load_message(id))? {
            Some(Some(l)) => l.secret.message_id.as_deref().map(|m| self.msgid_hash(m)),
            _ => None,
        };
        // Each attachment record with its blob, and the blobs no other record refers to.
        let mut mine: Vec<(IVec, [u8; 32])> = Vec::new();
        for item in t.attachments.scan_prefix(be(id)) {
            let (k, v) = item?;
            let (am, _): (AttachmentMeta, _) = unframe(&v)?;
            mine.push((k, am.blob));
        }
        let unshared = |blob: &[u8; 32]| -> Result<bool> {
            for r in t.blob_refs.scan_prefix(blob).keys() {
                let r = r?;
                if !mine.iter().any(|(k, b)| b == blob && r[32..] == k[..]) {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        let mut doomed: Vec<[u8; 32]> = Vec::new();
        for (_, blob) in &mine {
            if !doomed.contains(blob) && unshared(blob)? {
                doomed.push(*blob);
            }
        }
        let removed = (
            &t.messages,
            &t.quarantine,
            &t.attachments,
            &t.blob_refs,
            &t.blobs,
            &t.msgid_idx,
        )
            .transaction(
                |(messages, quarantine, attachments, blob_refs, blobs, msgid_idx)| {
                    if quarantine.remove(&be(id))?.is_none() {
                        return Ok(None);
                    }
                    let message_value = messages.remove(&be(id))?;
                    for (k, blob) in &mine {
                        attachments.remove(k.clone())?;
                        blob_refs.remove(blob_ref(blob, k))?;
                    }
                    let mut saved = Vec::new();
                    for blob in &doomed {
                        if let Some(v) = blobs.remove(&blob[..])? {
                            saved.push((*blob, v));
                        }
                    }
                    if let Some(mk) = &msgid_key {
                        if let Some(rv) = msgid_idx.get(mk)? {
                            let r: MessageRef = decode(&rv).map_err(crate::spool::abort)?;
                            if r.message.0 == id {
                                msgid_idx.remove(&mk[..])?;
                            }
                        }
                    }
                    Ok(Some((saved, message_value)))
                },
            )
            .map_err(crate::spool::tx_error)?;
        let Some((saved, message_value)) = removed else {
            return Ok(false);
        };
        if let Some(value) = message_value {
            self.drop_framed_logged::<MessageMeta>(&value, tree::MESSAGES, &be(id));
        }
        // A message committed between the scan above and the transaction may have started to
        // use one of the removed blobs (same sender, same content): put such a blob back.
        for (blob, value) in saved {
            if t.blob_refs.scan_prefix(blob).next().is_some() {
                t.blobs
                    .transaction(|blobs| {
                        if blobs.get(blob)?.is_none() {
                            blobs.insert(&blob[..], value.clone())?;
                        }
                        Ok::<_, ConflictableTransactionError<StoreError>>(())
                    })
                    .map_err(crate::spool::tx_error)?;
            }
            // Unless it was put back, the removed blob's chunks go.
            if t.blobs.get(blob)?.as_ref() != Some(&value) {
                self.drop_framed_logged::<BlobMeta>(&value, tree::BLOBS, &blob);
            }
        }
        self.inner.flusher.durable_blocking(false)?;
        Ok(true)
    }

    /// One page of tickets matching `query`, newest first. Filters are applied to the plain
    /// metadata before anything is decrypted; the requester is matched by keyed hash.
    pub fn ticket_page(&self, query: &TicketQuery) -> Result<TicketPage> {
        let t = &self.inner.t;
        let limit = query.limit.max(1);
        let requester = match &query.requester {
            Some(address) => {
                let hash = self.contact_hash(&normalize_address(address));
                match t.contact_idx.get(hash)? {
                    Some(id) => Some(from_be(&id)?),
                    None => {
                        return Ok(TicketPage {
                            tickets: Vec::new(),
                            next: None,
                        })
                    }
                }
            }
            None => None,
        };
        let iter = match query.before {
            Some(b) => t.tickets.range(..be(b.0)),
            None => t.tickets.iter(),
        };
        let mut cache = HashMap::new();
        let mut tickets = Vec::new();
        let mut next = None;
        for item in iter.rev() {
            let (key, value) = item?;
            let id = from_be(&key)?;
            let (meta, _): (TicketMeta, _) = unframe(&value)?;
            if query.status.is_some_and(|s| s != meta.status)
                || requester.is_some_and(|r| r != meta.requester)
                || query.flagged.is_some_and(|f| f != meta.flagged)
                || query.unsure.is_some_and(|u| u != meta.unsure)
            {
                continue;
            }
            if tickets.len() == limit {
                next = tickets.last().map(|s: &TicketSummary| TicketId(s.id));
                break;
            }
            tickets.push(self.summary(id, &value, &mut cache)?.0);
        }
        Ok(TicketPage { tickets, next })
    }

    fn quarantine_entry_of(&self, id: u64, value: &[u8]) -> Result<Option<QuarantineEntry>> {
        let (meta, _): (QuarantineMeta, _) = unframe(value)?;
        Ok(self.message_view(id)?.map(|message| QuarantineEntry {
            message,
            target_ticket: meta.ticket.map(TicketId),
            quarantined_at: meta.created_at,
        }))
    }

    /// One quarantined message with its would-be ticket; `None` if it is not in the
    /// quarantine.
    pub fn quarantine_entry(&self, message: MessageKey) -> Result<Option<QuarantineEntry>> {
        match self.inner.t.quarantine.get(be(message.0))? {
            Some(value) => self.quarantine_entry_of(message.0, &value),
            None => Ok(None),
        }
    }

    /// One page of the quarantine, newest first: at most `limit` entries with ids below
    /// `before`.
    pub fn quarantine_page(
        &self,
        before: Option<MessageKey>,
        limit: usize,
    ) -> Result<QuarantinePage> {
        let t = &self.inner.t;
        let limit = limit.max(1);
        let iter = match before {
            Some(b) => t.quarantine.range(..be(b.0)),
            None => t.quarantine.iter(),
        };
        let mut entries = Vec::new();
        let mut next = None;
        for item in iter.rev() {
            let (key, value) = item?;
            if entries.len() == limit {
                next = entries
                    .last()
                    .map(|e: &QuarantineEntry| MessageKey(e.message.id));
                break;
            }
            if let Some(entry) = self.quarantine_entry_of(from_be(&key)?, &value)? {
                entries.push(entry);
            }
        }
        Ok(QuarantinePage { entries, next })
    }

    /// The bytes of `contact`'s attachment blob with hex SHA-256 `sha256`, with the file name
    /// and type of an attachment record that uses it. `None` if there is no such blob (or the
    /// digest is not 64 hex digits); `KeyMissing` if the contact was erased.
    pub fn attachment_download(
        &self,
        contact: ContactId,
        sha256: &str,
    ) -> Result<Option<AttachmentDownload>> {
        let Some(digest) = (sha256.len() == 64)
            .then(|| hex::decode(sha256).ok())
            .flatten()
            .and_then(|d| <[u8; 32]>::try_from(d).ok())
        else {
            return Ok(None);
        };
        let Some(bytes) = self.attachment_bytes(contact, sha256)? else {
            return Ok(None);
        };
        let blob = self.blob_hash(contact.0, &digest);
        let mut filename = None;
        let mut content_type = "application/octet-stream".to_string();
        for r in self.inner.t.blob_refs.scan_prefix(blob).keys() {
            let r = r?;
            let record_key = &r[32..];
            let Some(value) = self.inner.t.attachments.get(record_key)? else {
                continue;
            };
            let (_meta, sealed): (AttachmentMeta, _) = unframe(&value)?;
            let secret: AttachmentSecret =
                self.open_secret(sealed, tree::ATTACHMENTS, record_key)?;
            if secret.sha256 != digest {
                continue;
            }
            filename = secret.filename;
            content_type = secret.content_type;
            break;
        }
        Ok(Some(AttachmentDownload {
            bytes,
            filename,
            content_type,
        }))
    }
}
