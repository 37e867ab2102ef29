//! `commit_message`: one transaction from spool entry to contact, ticket, message and
//! attachments.
//!
//! Everything expensive (encryption of the message and of new blobs, making a new person key)
//! happens before the transaction, because sled 0.34 runs transactions one at a time. The
//! transaction re-checks what the plan assumed (the spool entry, the contact, existing blobs)
//! and asks for a new plan when something changed meanwhile.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mailroom_spool::SpoolId;
use sha2::{Digest, Sha256};
use sled::transaction::TransactionalTree;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::crypto::{self, KeyBytes, KeyRef};
use crate::keys::now_secs;
use crate::model::{
    normalize_address, AttachmentTags, CommitOutcome, Delivery, MessageKey, MessageRef,
    ThreadDecision, TicketId, TicketStatus, Verdict,
};
use crate::records::{
    be, be2, encode, frame, from_be, meta_key, redact, stored_flags, tree, unframe, AttachmentMeta,
    AttachmentSecret, BlobMeta, ContactMeta, ContactSecret, MessageMeta, MessageSecret,
    QuarantineMeta, QuarantineSecret, StoredClassification, StoredFlag, TicketMeta, TicketSecret,
};
use crate::{Result, Store, StoreError};

/// How often a transaction re-plans after what it read changed under it.
pub(crate) const MAX_PLANS: usize = 8;

/// Why a planned transaction (commit, feedback move, release) aborted.
pub(crate) enum Abort {
    Store(StoreError),
    /// The plan no longer matches the database: plan again.
    Replan,
}

pub(crate) type TxResult<T> = std::result::Result<T, ConflictableTransactionError<Abort>>;

pub(crate) fn fail(e: StoreError) -> ConflictableTransactionError<Abort> {
    ConflictableTransactionError::Abort(Abort::Store(e))
}

pub(crate) fn replan<T>() -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(Abort::Replan))
}

/// Whether these flags make a message automatic mail (auto-reply, bounce, list): kept on its
/// ticket, but its sender does not become a participant.
pub(crate) fn automatic(flags: &[StoredFlag]) -> bool {
    flags.iter().any(|f| {
        matches!(
            f,
            StoredFlag::AutoReply | StoredFlag::Bounce | StoredFlag::Bulk
        )
    })
}

struct PreparedAttachment {
    /// Record key: message id ++ index.
    key: [u8; 12],
    blob: [u8; 32],
    size: u64,
    retention_class: String,
    sealed: Vec<u8>,
}

struct Plan {
    contact: u64,
    /// A new contact (and key file) was made for this plan.
    new_contact: bool,
    key: Arc<KeyBytes>,
    contact_hash: [u8; 32],
    /// The framed contact record, for a new contact.
    contact_value: Option<Vec<u8>>,
    /// The contact id the address was indexed under when planned (for a new contact: an
    /// erased one whose index entry it replaces).
    indexed_as: Option<u64>,
    message: u64,
    message_sealed: Vec<u8>,
    message_meta: MessageMeta,
    msgid_key: Option<[u8; 32]>,
    attachments: Vec<PreparedAttachment>,
    /// New blobs (not in the store when planned), framed and sealed, by key.
    new_blobs: Vec<([u8; 32], Vec<u8>)>,
    /// Blobs that existed when planned.
    old_blobs: HashSet<[u8; 32]>,
    received_at: u64,
    flagged: bool,
    /// The spam filter was unsure about the message.
    unsure: bool,
    /// The framed quarantine record, when the message goes to the quarantine.
    quarantine_value: Option<Vec<u8>>,
}

/// What a commit transaction did: its outcome, the spool entry it removed, and the plan's new
/// blobs it found already stored (by another message meanwhile) and kept.
type Committed = (CommitOutcome, Option<sled::IVec>, Vec<[u8; 32]>);

impl Store {
    /// Plan one message. `made` lists the contacts that earlier plans of the same batch are
    /// creating; a sender among them joins that contact (the transaction inserts it first).
    fn plan(
        &self,
        spool_id: SpoolId,
        d: &Delivery,
        address: &str,
        made: &[(u64, [u8; 32], Arc<KeyBytes>)],
    ) -> Result<Plan> {
        let t = &self.inner.t;
        let contact_hash = self.contact_hash(address);
        let now = now_secs();
        let batch_made = made
            .iter()
            .find(|(_, hash, _)| *hash == contact_hash)
            .map(|(id, _, key)| (*id, key.clone()));
        let existing = match (&batch_made, t.contact_idx.get(contact_hash)?) {
            (Some((id, _)), _) => Some(*id),
            (None, Some(id)) => Some(from_be(&id)?),
            (None, None) => None,
        };
        let existing_key = match (batch_made, existing) {
            (Some(made), _) => Some(made),
            (None, Some(id)) => match self.inner.keys.key(KeyRef::Person(id)) {
                Ok(key) => Some((id, key)),
                // That person was erased (key destroyed): the address starts a new contact.
                Err(StoreError::KeyMissing(_)) => None,
                Err(e) => return Err(e),
            },
            (None, None) => None,
        };
        let (contact, new_contact, key, contact_value) = match existing_key {
            Some((id, key)) => (id, false, key, None),
            None => {
                let id = self.inner.db.generate_id()?;
                let key = self.inner.keys.create_person_key(id)?;
                let secret = ContactSecret {
                    address: address.to_string(),
                    name: d.from.name.clone(),
                };
                let sealed = crypto::seal(
                    &key,
                    KeyRef::Person(id),
                    tree::CONTACTS,
                    &be(id),
                    &frame(&secret, &[])?,
                )?;
                let value = frame(&ContactMeta { created_at: now }, &sealed)?;
                (id, true, key, Some(value))
            }
        };
        let person = KeyRef::Person(contact);
        let m = &d.message;
        let received_at = if m.envelope.received_at > 0 {
            m.envelope.received_at
        } else {
            now
        };
        let message = self.inner.db.generate_id()?;
        let secret = MessageSecret {
            from: address.to_string(),
            from_name: d.from.name.clone(),
            subject: m.subject.clone(),
            message_id: m.message_id.clone(),
            references: m.references.clone(),
            date: m.date,
            headers: m.headers.clone(),
            text: m.text.clone(),
            html: m.html.clone(),
            envelope: m.envelope.clone(),
            flags: stored_flags(&m.flags),
            content_hash: m.content_hash,
            clues: d
                .classification
                .as_ref()
                .map(|c| c.clues.clone())
                .unwrap_or_default(),
        };
        let head = crate::records::frame_head(&secret, 0)?;
        let mut message_sealed = Vec::new();
        crypto::seal_into(
            &mut message_sealed,
            &key,
            person,
            tree::MESSAGES,
            &be(message),
            &[&head, &m.raw],
        )?;
        // From here on, a large body is in the bulk tree: `discard_stowed` drops it again.
        let message_sealed = self.stow(tree::MESSAGES, &be(message), message_sealed)?;
        let attachment_count = u32::try_from(d.attachments.len())
            .map_err(|_| StoreError::Corrupt("too many attachments".into()))?;
        let message_meta = MessageMeta {
            ticket: None,
            contact,
            received_at,
            flags: m.flags.iter().map(redact).collect(),
            has_html: m.html.is_some(),
            attachments: attachment_count,
            spool_id: spool_id.0,
            classification: d.classification.as_ref().map(|c| StoredClassification {
                score: c.score,
                verdict: c.verdict,
                algorithm: c.algorithm.clone(),
            }),
        };
        let quarantine_value = match &d.thread {
            ThreadDecision::Quarantine { ticket, subject } => {
                let sealed = crypto::seal(
                    &key,
                    person,
                    tree::QUARANTINE,
                    &be(message),
                    &frame(
                        &QuarantineSecret {
                            subject: subject.clone(),
                        },
                        &[],
                    )?,
                )?;
                let meta = QuarantineMeta {
                    ticket: ticket.map(|t| t.0),
                    contact,
                    created_at: now,
                };
                Some(frame(&meta, &sealed)?)
            }
            _ => None,
        };
        let mut attachments = Vec::with_capacity(d.attachments.len());
        let mut new_blobs: Vec<([u8; 32], Vec<u8>)> = Vec::new();
        let mut old_blobs = HashSet::new();
        for (i, a) in d.attachments.iter().enumerate() {
            let sha256: [u8; 32] = Sha256::digest(&a.data).into();
            let blob = self.blob_hash(contact, &sha256);
            if !old_blobs.contains(&blob) && !new_blobs.iter().any(|(k, _)| *k == blob) {
                if t.blobs.contains_key(blob)? {
                    old_blobs.insert(blob);
                } else {
                    let sealed = crypto::seal(&key, person, tree::BLOBS, &blob, &a.data)?;
                    let stored = self.stow(tree::BLOBS, &blob, sealed)?;
                    let value = frame(
                        &BlobMeta {
                            contact,
                            size: a.data.len() as u64,
                            created_at: now,
                        },
                        &stored,
                    )?;
                    new_blobs.push((blob, value));
                }
            }
            let mut record_key = [0u8; 12];
            record_key[..8].copy_from_slice(&be(message));
            record_key[8..].copy_from_slice(&(i as u32).to_be_bytes());
            let secret = AttachmentSecret {
                sha256,
                filename: a.filename.clone(),
                content_type: a.content_type.clone(),
            };
            let sealed = crypto::seal(
                &key,
                person,
                tree::ATTACHMENTS,
                &record_key,
                &frame(&secret, &[])?,
            )?;
            attachments.push(PreparedAttachment {
                key: record_key,
                blob,
                size: a.data.len() as u64,
                retention_class: a.retention_class.clone(),
                sealed,
            });
        }
        Ok(Plan {
            contact,
            new_contact,
            key,
            contact_hash,
            contact_value,
            indexed_as: existing,
            message,
            message_sealed,
            message_meta,
            msgid_key: m.message_id.as_deref().map(|id| self.msgid_hash(id)),
            attachments,
            new_blobs,
            old_blobs,
            received_at,
            flagged: !m.flags.is_empty(),
            unsure: d
                .classification
                .as_ref()
                .is_some_and(|c| c.verdict == Verdict::Unsure),
            quarantine_value,
        })
    }

    /// Drop the chunks a plan stowed (its transaction did not run or stored nothing).
    fn discard_stowed(&self, p: &Plan) {
        self.drop_stowed_logged(&p.message_sealed, tree::MESSAGES, &be(p.message));
        self.drop_new_blobs(p, |_| true);
    }

    /// Drop the chunks of the plan's new blobs that `unused` picks.
    fn drop_new_blobs(&self, p: &Plan, unused: impl Fn(&[u8; 32]) -> bool) {
        for (blob, value) in p.new_blobs.iter().filter(|(b, _)| unused(b)) {
            self.drop_framed_logged::<BlobMeta>(value, tree::BLOBS, blob);
        }
    }

    /// Plan and commit `items` in one transaction, in order, then make it durable (one flush).
    ///
    /// Each item is handled as [`Store::commit_message`] handles one message: an entry
    /// already gone is [`CommitOutcome::AlreadyProcessed`] and writes nothing. A sender new to
    /// the store who sends several messages of the batch becomes one contact. An item the
    /// transaction cannot store (its ticket was deleted meanwhile, say) fails the whole batch,
    /// which then writes nothing; the caller commits the items one by one to find it.
    pub(crate) fn commit_batch(
        &self,
        items: &[(SpoolId, &Delivery)],
    ) -> Result<Vec<CommitOutcome>> {
        let addresses: Vec<String> = items
            .iter()
            .map(|(_, d)| normalize_address(&d.from.address))
            .collect();
        for _ in 0..MAX_PLANS {
            let mut plans: Vec<Option<Plan>> = Vec::with_capacity(items.len());
            let mut made: Vec<(u64, [u8; 32], Arc<KeyBytes>)> = Vec::new();
            let mut planning = Ok(());
            for ((spool_id, d), address) in items.iter().zip(&addresses) {
                let planned = match self.inner.t.spool.contains_key(be(spool_id.0)) {
                    Ok(true) => self.plan(*spool_id, d, address, &made).map(Some),
                    Ok(false) => Ok(None),
                    Err(e) => Err(e.into()),
                };
                match planned {
                    Ok(plan) => {
                        if let Some(p) = plan.as_ref().filter(|p| p.new_contact) {
                            made.push((p.contact, p.contact_hash, p.key.clone()));
                        }
                        plans.push(plan);
                    }
                    Err(e) => {
                        planning = Err(e);
                        break;
                    }
                }
            }
            if let Err(e) = planning {
                self.abandon(plans.iter().flatten());
                return Err(e);
            }
            match self.run_commit(items, &plans) {
                Ok(done) => {
                    let mut outcomes = Vec::with_capacity(items.len());
                    let mut stored = false;
                    for ((spool_id, _), (plan, done)) in items.iter().zip(plans.iter().zip(done)) {
                        let (Some(plan), Some((outcome, removed, kept_existing))) = (plan, done)
                        else {
                            outcomes.push(CommitOutcome::AlreadyProcessed);
                            continue;
                        };
                        if let CommitOutcome::Stored { .. } = outcome {
                            stored = true;
                            self.inner.spool_count.fetch_sub(1, Ordering::SeqCst);
                            // The spool entry is gone, and so are any of its chunks.
                            if let Some(value) = removed {
                                self.drop_spool_value(spool_id.0, &value);
                            }
                            // A new blob that another message stored first (the transaction
                            // kept that one) leaves this plan's chunks unused.
                            self.drop_new_blobs(plan, |b| kept_existing.contains(b));
                        } else {
                            self.abandon(std::iter::once(plan));
                        }
                        outcomes.push(outcome);
                    }
                    if stored {
                        self.inner.flusher.durable_blocking(false)?;
                    }
                    return Ok(outcomes);
                }
                Err(TransactionError::Abort(Abort::Replan)) => {
                    self.abandon(plans.iter().flatten());
                    continue;
                }
                Err(TransactionError::Abort(Abort::Store(e))) => {
                    self.abandon(plans.iter().flatten());
                    return Err(e);
                }
                // Whether it took is not known: the plans' chunks and keys stay (an unused key
                // file is harmless; a stored contact without its key would be lost).
                Err(TransactionError::Storage(e)) => return Err(e.into()),
            }
        }
        Err(StoreError::Io(format!(
            "commit of {} spool entries kept conflicting",
            items.len()
        )))
    }

    /// Undo what plans that stored nothing made: their stowed chunks and new contacts' keys.
    fn abandon<'p>(&self, plans: impl IntoIterator<Item = &'p Plan>) {
        for plan in plans {
            self.discard_stowed(plan);
            if plan.new_contact {
                // The key was made for a contact that this commit did not create.
                if let Err(e) = self.inner.keys.destroy_person_key(plan.contact) {
                    tracing::warn!(error = %e, "cannot remove an unused person key");
                }
            }
        }
    }

    /// One transaction over every planned item (`None`: its entry was gone when planning).
    fn run_commit(
        &self,
        items: &[(SpoolId, &Delivery)],
        plans: &[Option<Plan>],
    ) -> std::result::Result<Vec<Option<Committed>>, TransactionError<Abort>> {
        let t = &self.inner.t;
        let trees = (
            &t.spool,
            &t.meta,
            &t.contacts,
            &t.contact_idx,
            &t.tickets,
            &t.participants,
            &t.messages,
            &t.orphans,
            &t.msgid_idx,
            &t.blobs,
            &t.attachments,
            &t.blob_refs,
            &t.quarantine,
        );
        let attachment_created = now_secs();
        trees.transaction(|views| {
            let mut done = Vec::with_capacity(plans.len());
            for ((spool_id, d), plan) in items.iter().zip(plans) {
                done.push(match plan {
                    Some(p) => Some(apply(views, *spool_id, d, p, attachment_created)?),
                    None => None,
                });
            }
            Ok(done)
        })
    }
}

/// The commit transaction's views of its trees, in the order `run_commit` lists them.
type Views = (
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
);

/// Store one planned message inside the commit transaction (it sees the batch's earlier
/// writes).
fn apply(
    views: &Views,
    spool_id: SpoolId,
    d: &Delivery,
    p: &Plan,
    attachment_created: u64,
) -> TxResult<Committed> {
    let (
        spool,
        meta,
        contacts,
        contact_idx,
        tickets,
        participants,
        messages,
        orphans,
        msgid_idx,
        blobs,
        attachments,
        blob_refs,
        quarantine,
    ) = views;
    if spool.get(be(spool_id.0))?.is_none() {
        return Ok((CommitOutcome::AlreadyProcessed, None, Vec::new()));
    }
    // Contact.
    let indexed = match contact_idx.get(p.contact_hash)? {
        Some(id) => Some(from_be(&id).map_err(fail)?),
        None => None,
    };
    match &p.contact_value {
        None if indexed == Some(p.contact) => {}
        Some(value) if indexed == p.indexed_as => {
            contacts.insert(&be(p.contact), value.as_slice())?;
            contact_idx.insert(&p.contact_hash, &be(p.contact))?;
        }
        _ => return replan(),
    }
    // Ticket.
    let (ticket, new_ticket) = match &d.thread {
        ThreadDecision::New { subject } => {
            let record = TicketMeta {
                requester: p.contact,
                status: TicketStatus::Open,
                created_at: p.received_at,
                updated_at: p.received_at,
                messages: vec![p.message],
                attachments: p.attachments.len() as u64,
                flagged: p.flagged,
                unsure: p.unsure,
                closed_at: None,
                closed_by: None,
            };
            let id = open_ticket(meta, tickets, &p.key, subject, &record)?;
            (Some(id), true)
        }
        ThreadDecision::Existing(TicketId(id)) => {
            let Some(value) = tickets.get(be(*id))? else {
                return Err(fail(StoreError::NotFound(format!("ticket {id}"))));
            };
            let (mut record, sealed): (TicketMeta, _) = unframe(&value).map_err(fail)?;
            record.messages.push(p.message);
            record.updated_at = record.updated_at.max(p.received_at);
            // A new message on a closed ticket reopens it (as help desks do), unless
            // it is automatic mail (an auto-reply to our closing note).
            if record.status == TicketStatus::Closed && !automatic(&p.message_meta.flags) {
                record.status = TicketStatus::Open;
                record.closed_at = None;
            }
            record.attachments += p.attachments.len() as u64;
            record.flagged |= p.flagged;
            record.unsure |= p.unsure;
            tickets.insert(&be(*id), frame(&record, sealed).map_err(fail)?)?;
            (Some(*id), false)
        }
        ThreadDecision::Orphan | ThreadDecision::Quarantine { .. } => (None, false),
    };
    // Automatic mail (auto-replies, bounces, list mail) is kept on the ticket but
    // does not make its sender a participant: a mailer-daemon that bounced once must
    // not be able to thread ordinary mail into the ticket later.
    let automatic = automatic(&p.message_meta.flags);
    match ticket {
        Some(id) => {
            if new_ticket || !automatic {
                participants.insert(&be2(id, p.contact), &[][..])?;
            }
        }
        None => match &p.quarantine_value {
            // Quarantined: in no ticket and not an orphan.
            Some(value) => {
                quarantine.insert(&be(p.message), value.as_slice())?;
            }
            None => {
                orphans.insert(&be(p.message), &[][..])?;
            }
        },
    }
    // Message.
    let mut message_meta = p.message_meta.clone();
    message_meta.ticket = ticket;
    messages.insert(
        &be(p.message),
        frame(&message_meta, &p.message_sealed).map_err(fail)?,
    )?;
    if let Some(key) = &p.msgid_key {
        if msgid_idx.get(key)?.is_none() {
            let r = MessageRef {
                message: MessageKey(p.message),
                ticket: ticket.map(TicketId),
            };
            msgid_idx.insert(&key[..], encode(&r).map_err(fail)?)?;
        }
    }
    // Attachments: one blob per owner and content.
    for blob in &p.old_blobs {
        if blobs.get(blob)?.is_none() {
            return replan();
        }
    }
    let mut kept_existing = Vec::new();
    for (blob, value) in &p.new_blobs {
        if blobs.get(blob)?.is_none() {
            blobs.insert(&blob[..], value.as_slice())?;
        } else {
            kept_existing.push(*blob);
        }
    }
    for a in &p.attachments {
        let record = AttachmentMeta {
            blob: a.blob,
            size: a.size,
            tags: AttachmentTags {
                contact: p.contact,
                ticket,
                message: p.message,
                retention_class: a.retention_class.clone(),
                created_at: attachment_created,
            },
        };
        attachments.insert(&a.key[..], frame(&record, &a.sealed).map_err(fail)?)?;
        let mut r = Vec::with_capacity(44);
        r.extend_from_slice(&a.blob);
        r.extend_from_slice(&a.key);
        blob_refs.insert(r, &[][..])?;
    }
    let removed = spool.remove(&be(spool_id.0))?;
    Ok((
        CommitOutcome::Stored {
            ticket: ticket.map(TicketId),
            message: MessageKey(p.message),
            new_ticket,
        },
        removed,
        kept_existing,
    ))
}

/// Open a ticket inside a transaction: take the next ticket number, seal `subject` under the
/// requester's key `key` and insert `record` (whose `requester` owns `key`). Returns the number.
pub(crate) fn open_ticket(
    meta: &TransactionalTree,
    tickets: &TransactionalTree,
    key: &KeyBytes,
    subject: &str,
    record: &TicketMeta,
) -> TxResult<u64> {
    let id = match meta.get(meta_key::NEXT_TICKET)? {
        Some(v) => from_be(&v).map_err(fail)?,
        None => 1,
    };
    meta.insert(meta_key::NEXT_TICKET, &be(id + 1))?;
    let secret = TicketSecret {
        subject: subject.to_string(),
    };
    let sealed = crypto::seal(
        key,
        KeyRef::Person(record.requester),
        tree::TICKETS,
        &be(id),
        &frame(&secret, &[]).map_err(fail)?,
    )
    .map_err(fail)?;
    tickets.insert(&be(id), frame(record, &sealed).map_err(fail)?)?;
    Ok(id)
}
