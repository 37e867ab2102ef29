//! The person's rights and the operator's duties: erasure, retention and export.
//!
//! Erasure and retention run under the store's maintenance gate (no other write runs
//! meanwhile), so what they plan is what they remove. Erasure is resumable: an
//! `erasing/<contact id>` marker in `meta` is written (durably) before anything is removed and
//! taken away after the person's key is destroyed; [`Store::open`] finishes any erasure a crash
//! interrupted. Removing records is not enough in a log-structured store (old values stay in its
//! files until they are compacted, and backups keep everything): every personal record is
//! sealed under the person's key, so destroying `keys/person/<id>.key` makes each copy
//! unreadable, in these files and in every backup (backups never hold keys; see `backup`).
//! Spool and failed entries are sealed under spool keys shared by everyone; erasure removes the
//! person's entries, then re-seals the others under a new spool key and destroys the old keys.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;

use serde::{Deserialize, Serialize};
use sled::IVec;

use crate::audit::{Actor, AuditAction};
use crate::crypto;
use crate::filter::LearnedRecord;
use crate::keys::now_secs;
use crate::model::{normalize_address, MessageRef, MessageView, TicketId, TicketStatus};
use crate::records::{
    be, decode, frame, frame_head, from_be, meta_key, tree, unframe, AttachmentMeta, BlobMeta,
    ContactMeta, ContactSecret, FailedMeta, MessageMeta, QuarantineMeta, SpoolMeta, TicketMeta,
};
use crate::spool::{abort, tx_error};
use crate::{Result, Store, StoreError};

thread_local! {
    /// The store (by address of its shared state) whose maintenance gate this thread holds.
    static MAINTAINING: Cell<usize> = const { Cell::new(0) };
}

/// The shared side of the maintenance gate (nothing when this thread holds the exclusive side).
pub(crate) struct WriteGuard<'a>(#[allow(dead_code)] Option<parking_lot::RwLockReadGuard<'a, ()>>);

/// The exclusive side of the maintenance gate.
pub(crate) struct MaintenanceGuard<'a> {
    _guard: parking_lot::RwLockWriteGuard<'a, ()>,
    previous: usize,
}

impl Drop for MaintenanceGuard<'_> {
    fn drop(&mut self) {
        MAINTAINING.with(|m| m.set(self.previous));
    }
}

/// What an erasure removed (or, in a dry run, would remove). Counts and ids only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The person's key was destroyed.
    pub key_destroyed: bool,
    /// Spool keys destroyed after the other entries were re-sealed under a new one.
    pub spool_keys_destroyed: u64,
    /// The audit record written.
    pub audit_id: Option<u64>,
}

/// Retention periods in days per class; 0 keeps that class for ever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionRules {
    /// Quarantined messages.
    pub quarantine_days: u32,
    /// Closed tickets (counted from when they were closed).
    pub closed_ticket_days: u32,
    /// Attachments.
    pub attachment_days: u32,
    /// Audit records.
    pub audit_days: u32,
}

/// What a retention run removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// The time the rules were applied at, Unix seconds.
    pub now: u64,
    /// Quarantined messages removed.
    pub quarantine: Vec<u64>,
    /// Closed tickets removed.
    pub closed_tickets: Vec<u64>,
    /// Messages removed with those tickets.
    pub messages: Vec<u64>,
    /// Attachments removed, as `message/index`.
    pub attachments: Vec<String>,
    /// Stored attachment contents removed.
    pub blobs: u64,
    /// Audit records removed.
    pub audit: u64,
}

/// A person's contact as exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportContact {
    /// Contact id.
    pub id: u64,
    /// Address.
    pub address: String,
    /// Display name, if any was seen.
    pub name: Option<String>,
    /// First seen, Unix seconds.
    pub created_at: u64,
}

/// Everything stored about one person (right of access).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonExport {
    /// The contact.
    pub contact: ExportContact,
    /// Tickets the person opened (summaries; the thread's messages of the person are in
    /// `messages`).
    pub tickets: Vec<crate::model::TicketSummary>,
    /// Ids of other people's tickets the person wrote into.
    pub participated: Vec<u64>,
    /// Every message of the person (in tickets, orphans and the quarantine).
    #[serde(skip)]
    pub messages: Vec<(MessageView, Vec<u8>)>,
    /// Every attachment of the person: the view and the bytes.
    #[serde(skip)]
    pub attachments: Vec<(crate::model::AttachmentView, Vec<u8>)>,
}

/// What one removal pass takes out.
#[derive(Default)]
struct Removal {
    tickets: BTreeSet<u64>,
    messages: BTreeSet<u64>,
    /// Attachment records (key) with their blob.
    attachments: Vec<(IVec, [u8; 32])>,
    /// Extra blobs to remove whatever refers to them (all of an erased person's).
    blobs_of_owner: Option<u64>,
    /// Tickets of others with messages taken out: ticket -> removed messages.
    updated: BTreeMap<u64, Vec<u64>>,
    /// Participant keys to remove.
    participants: Vec<IVec>,
}

/// Counts of a removal pass.
#[derive(Default)]
struct Removed {
    attachments: u64,
    blobs: u64,
    quarantined: u64,
    orphans: u64,
}

/// Seconds in a day.
const DAY: u64 = 86_400;

/// Whether the raw message's header block names `address` as its sender (`From`, `Sender`,
/// `Reply-To`, `Return-Path`), case-insensitively.
fn header_names(raw: &[u8], address: &str) -> bool {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n"))
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
    let mut current = String::new();
    let mut fields = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            current.push_str(line);
        } else {
            fields.push(std::mem::take(&mut current));
            current = line.to_owned();
        }
    }
    fields.push(current);
    fields.iter().any(|f| {
        ["from:", "sender:", "reply-to:", "return-path:"]
            .iter()
            .any(|name| f.starts_with(name))
            && f.split(|c: char| c == '<' || c == '>' || c == ',' || c.is_whitespace())
                .any(|word| word == address)
    })
}

impl Store {
    /// The shared side of the maintenance gate, taken by every method that writes. Recursive,
    /// so a writing method may call another while a maintenance task waits; nothing when this
    /// thread runs a maintenance task itself.
    pub(crate) fn writing(&self) -> WriteGuard<'_> {
        let me = std::sync::Arc::as_ptr(&self.inner) as usize;
        if MAINTAINING.with(|m| m.get()) == me {
            return WriteGuard(None);
        }
        WriteGuard(Some(self.inner.gate.read_recursive()))
    }

    /// The exclusive side of the maintenance gate: no other write runs while it is held.
    pub(crate) fn maintenance(&self) -> MaintenanceGuard<'_> {
        let guard = self.inner.gate.write();
        let me = std::sync::Arc::as_ptr(&self.inner) as usize;
        let previous = MAINTAINING.with(|m| m.replace(me));
        MaintenanceGuard {
            _guard: guard,
            previous,
        }
    }

    /// The contact id of `address`, if it is a contact.
    pub(crate) fn contact_of(&self, address: &str) -> Result<Option<u64>> {
        let hash = self.contact_hash(&normalize_address(address));
        match self.inner.t.contact_idx.get(hash)? {
            Some(id) => Ok(Some(from_be(&id)?)),
            None => Ok(None),
        }
    }

    /// Erase the person with `address`: their contact, the tickets they opened (with every
    /// message on them), their messages elsewhere, attachments, quarantine, orphan, spool and
    /// failed entries, learned-message records; then destroy their key and write an audit
    /// record (counts only). With `dry_run`, only report what would go.
    pub fn erase_person(
        &self,
        address: &str,
        dry_run: bool,
        actor: Actor,
    ) -> Result<ErasureReport> {
        let address = normalize_address(address);
        let _gate = self.maintenance();
        let contact = self.contact_of(&address)?;
        let mut report = self.erase_locked(contact, Some(&address), dry_run)?;
        if !dry_run {
            report.audit_id = Some(self.audit(
                AuditAction::Erase,
                actor,
                &[
                    ("contacts", report.contacts),
                    ("tickets", report.tickets.len() as u64),
                    ("tickets_updated", report.tickets_updated.len() as u64),
                    ("messages", report.messages.len() as u64),
                    ("attachments", report.attachments),
                    ("blobs", report.blobs),
                    ("quarantined", report.quarantined),
                    ("spool", report.spool),
                    ("failed", report.failed),
                    ("learned", report.learned),
                ],
            )?);
            if let Some(c) = contact {
                self.inner.t.meta.remove(erasing_key(c))?;
            }
            self.inner.flusher.durable_blocking(false)?;
        }
        Ok(report)
    }

    /// Finish erasures a crash interrupted (called by [`Store::open`]).
    pub(crate) fn resume_erasures(&self) -> Result<()> {
        let pending: Vec<u64> = self
            .inner
            .t
            .meta
            .scan_prefix(meta_key::ERASING)
            .keys()
            .map(|k| from_be(&k?[meta_key::ERASING.len()..]))
            .collect::<Result<_>>()?;
        for contact in pending {
            tracing::warn!(contact, "finishing an interrupted erasure");
            let _gate = self.maintenance();
            let address = self.readable_address(contact)?;
            self.erase_locked(Some(contact), address.as_deref(), false)?;
            self.audit(AuditAction::Erase, Actor::System, &[("resumed", 1)])?;
            self.inner.t.meta.remove(erasing_key(contact))?;
            self.inner.flusher.durable_blocking(false)?;
        }
        Ok(())
    }

    /// Contact `id`'s address while their key and record exist.
    fn readable_address(&self, id: u64) -> Result<Option<String>> {
        let Some(value) = self.inner.t.contacts.get(be(id))? else {
            return Ok(None);
        };
        let (_m, sealed): (ContactMeta, _) = unframe(&value)?;
        match self.open_secret::<ContactSecret>(sealed, tree::CONTACTS, &be(id)) {
            Ok(c) => Ok(Some(c.address)),
            Err(StoreError::KeyMissing(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Erase by contact id (and address, for spool and failed entries), under the gate.
    pub(crate) fn erase_locked(
        &self,
        contact: Option<u64>,
        address: Option<&str>,
        dry_run: bool,
    ) -> Result<ErasureReport> {
        let t = &self.inner.t;
        let mut report = ErasureReport {
            dry_run,
            found: contact.is_some(),
            ..ErasureReport::default()
        };
        if let (Some(c), false) = (contact, dry_run) {
            t.meta.insert(erasing_key(c), &[][..])?;
            self.inner.flusher.durable_blocking(false)?;
        }
        // Spool and failed entries first: they are found by address, which the contact record
        // still gives when resuming.
        if let Some(address) = address {
            let (spool, failed) = self.erase_spool_entries(address, dry_run)?;
            report.spool = spool;
            report.failed = failed;
        }
        let Some(c) = contact else {
            if !dry_run && report.spool + report.failed > 0 {
                report.spool_keys_destroyed = self.reseal_spool()?;
            }
            return Ok(report);
        };

        let mut removal = Removal {
            blobs_of_owner: Some(c),
            ..Removal::default()
        };
        for item in t.tickets.iter() {
            let (k, v) = item?;
            let (meta, _): (TicketMeta, _) = unframe(&v)?;
            if meta.requester == c {
                removal.tickets.insert(from_be(&k)?);
                removal.messages.extend(meta.messages);
            }
        }
        for item in t.messages.iter() {
            let (k, v) = item?;
            let (meta, _): (MessageMeta, _) = unframe(&v)?;
            if meta.contact != c {
                continue;
            }
            let id = from_be(&k)?;
            removal.messages.insert(id);
            if let Some(tk) = meta.ticket {
                if !removal.tickets.contains(&tk) {
                    removal.updated.entry(tk).or_default().push(id);
                }
            }
        }
        for k in t.participants.iter().keys() {
            let k = k?;
            if k.len() == 16 && from_be(&k[8..])? == c {
                removal.participants.push(k);
            }
        }
        let mut learned = Vec::new();
        for item in t.learned.iter() {
            let (k, v) = item?;
            let r: LearnedRecord = decode(&v)?;
            if r.owner == Some(c) {
                learned.push(k);
            }
        }
        self.plan_attachments(&mut removal, |_| true)?;
        report.tickets = removal.tickets.iter().copied().collect();
        report.tickets_updated = removal.updated.keys().copied().collect();
        report.messages = removal.messages.iter().copied().collect();
        report.learned = learned.len() as u64;
        report.contacts = u64::from(t.contacts.contains_key(be(c))?);
        if dry_run {
            let counted = self.count_removal(&removal)?;
            report.attachments = counted.attachments;
            report.blobs = counted.blobs;
            report.quarantined = counted.quarantined;
            report.orphans = counted.orphans;
            return Ok(report);
        }
        let removed = self.apply_removal(&removal)?;
        report.attachments = removed.attachments;
        report.blobs = removed.blobs;
        report.quarantined = removed.quarantined;
        report.orphans = removed.orphans;
        let mut batch = sled::Batch::default();
        for k in learned {
            batch.remove(k);
        }
        t.learned.apply_batch(batch)?;
        let hash = address.map(|a| self.contact_hash(&normalize_address(a)));
        t.contacts.remove(be(c))?;
        match hash {
            Some(h) => {
                t.contact_idx.remove(h)?;
            }
            None => {
                // Resuming without the address: find the index entry by value.
                for item in t.contact_idx.iter() {
                    let (k, v) = item?;
                    if from_be(&v)? == c {
                        t.contact_idx.remove(k)?;
                    }
                }
            }
        }
        self.inner.flusher.durable_blocking(false)?;
        self.inner.keys.destroy_person_key(c)?;
        report.key_destroyed = true;
        self.inner.keys.ledger_append(&format!("contact {c}"))?;
        report.spool_keys_destroyed = self.reseal_spool()?;
        Ok(report)
    }

    /// Remove (or count) spool and failed entries whose envelope sender or sender headers are
    /// `address`.
    fn erase_spool_entries(&self, address: &str, dry_run: bool) -> Result<(u64, u64)> {
        let t = &self.inner.t;
        let mut spool = Vec::new();
        for item in t.spool.iter() {
            let (k, v) = item?;
            let (_m, sealed): (SpoolMeta, _) = unframe(&v)?;
            let id = from_be(&k)?;
            match self.open_sealed(sealed, tree::SPOOL, &be(id)) {
                Ok(plain) => {
                    let (env, raw): (mailroom_spool::Envelope, _) = unframe(&plain)?;
                    if normalize_address(&env.mail_from) == address || header_names(raw, address) {
                        spool.push(k);
                    }
                }
                Err(StoreError::KeyMissing(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let mut failed = Vec::new();
        for item in t.failed.iter() {
            let (k, v) = item?;
            let (meta, tail): (FailedMeta, _) = unframe(&v)?;
            let payload = tail.get(meta.reason_len as usize..).unwrap_or_default();
            match self.open_sealed(payload, tree::SPOOL, &be(meta.spool_id)) {
                Ok(plain) => {
                    let (env, raw): (mailroom_spool::Envelope, _) = unframe(&plain)?;
                    if normalize_address(&env.mail_from) == address || header_names(raw, address) {
                        failed.push(k);
                    }
                }
                Err(StoreError::KeyMissing(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let counts = (spool.len() as u64, failed.len() as u64);
        if !dry_run {
            for k in spool {
                if let Some(value) = t.spool.remove(&k)? {
                    self.inner
                        .spool_count
                        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    self.drop_spool_value(from_be(&k)?, &value);
                }
            }
            for k in failed {
                if let Some(value) = t.failed.remove(k)? {
                    self.drop_failed_value(&value);
                }
            }
            self.inner.flusher.durable_blocking(false)?;
        }
        Ok(counts)
    }

    /// Re-seal every spool and failed entry under a new spool key, then destroy the older
    /// keys, so that copies of removed entries left in the database files (or backups) cannot
    /// be read. Returns how many keys were destroyed. Under the gate.
    fn reseal_spool(&self) -> Result<u64> {
        let t = &self.inner.t;
        let old = self.inner.keys.spool_key_ids();
        if old.is_empty() {
            return Ok(0);
        }
        let (key_ref, key) = self.inner.keys.rotate_spool_key()?;
        let reseal = |sealed: &[u8], tree_name: &str, record: &[u8]| -> Result<Option<Vec<u8>>> {
            match self.open_sealed(sealed, tree_name, record) {
                Ok(plain) => Ok(Some(crypto::seal(
                    &key, key_ref, tree_name, record, &plain,
                )?)),
                Err(StoreError::KeyMissing(_)) => Ok(None),
                Err(e) => Err(e),
            }
        };
        for item in t.spool.iter() {
            let (k, v) = item?;
            let (meta, sealed): (SpoolMeta, _) = unframe(&v)?;
            if let Some(new) = reseal(sealed, tree::SPOOL, &k)? {
                // New chunks first, then the record, then the old chunks (see `bulk`).
                let new = self.stow(tree::SPOOL, &k, new)?;
                t.spool.insert(&k, frame(&meta, &new)?)?;
                self.drop_stowed(sealed, tree::SPOOL, &k)?;
            }
        }
        for item in t.failed.iter() {
            let (k, v) = item?;
            let (mut meta, tail): (FailedMeta, _) = unframe(&v)?;
            let split = (meta.reason_len as usize).min(tail.len());
            let (reason, payload) = tail.split_at(split);
            let reason =
                reseal(reason, tree::FAILED_REASON, &k)?.unwrap_or_else(|| reason.to_vec());
            let resealed = reseal(payload, tree::SPOOL, &be(meta.spool_id))?
                .map(|new| self.stow(tree::SPOOL, &be(meta.spool_id), new))
                .transpose()?;
            let new_payload = resealed.as_deref().unwrap_or(payload);
            meta.reason_len = u32::try_from(reason.len())
                .map_err(|_| StoreError::Corrupt("reason too long".into()))?;
            let mut value = frame_head(&meta, reason.len() + new_payload.len())?;
            value.extend_from_slice(&reason);
            value.extend_from_slice(new_payload);
            t.failed.insert(&k, value)?;
            if resealed.is_some() {
                self.drop_stowed(payload, tree::SPOOL, &be(meta.spool_id))?;
            }
        }
        self.inner.flusher.durable_blocking(false)?;
        self.inner.keys.destroy_spool_keys(&old)?;
        Ok(old.len() as u64)
    }

    /// Add the attachment records of every message in `removal` (and, with `keep`, only those
    /// it accepts) to it.
    fn plan_attachments(
        &self,
        removal: &mut Removal,
        mut keep: impl FnMut(&AttachmentMeta) -> bool,
    ) -> Result<()> {
        for &m in &removal.messages {
            for item in self.inner.t.attachments.scan_prefix(be(m)) {
                let (k, v) = item?;
                let (am, _): (AttachmentMeta, _) = unframe(&v)?;
                if keep(&am) {
                    removal.attachments.push((k, am.blob));
                }
            }
        }
        Ok(())
    }

    /// The blobs `removal` leaves without any reference (plus every blob of its owner).
    fn doomed_blobs(&self, removal: &Removal) -> Result<BTreeSet<[u8; 32]>> {
        let t = &self.inner.t;
        let going: HashSet<&[u8]> = removal.attachments.iter().map(|(k, _)| &k[..]).collect();
        let mut doomed = BTreeSet::new();
        let mut seen = HashSet::new();
        for (_, blob) in &removal.attachments {
            if !seen.insert(*blob) {
                continue;
            }
            let mut used = false;
            for r in t.blob_refs.scan_prefix(blob).keys() {
                let r = r?;
                if !going.contains(&r[32..]) {
                    used = true;
                    break;
                }
            }
            if !used {
                doomed.insert(*blob);
            }
        }
        if let Some(owner) = removal.blobs_of_owner {
            for item in t.blobs.iter() {
                let (k, v) = item?;
                let (bm, _): (BlobMeta, _) = unframe(&v)?;
                if bm.contact == owner {
                    let mut b = [0u8; 32];
                    if k.len() == 32 {
                        b.copy_from_slice(&k);
                        doomed.insert(b);
                    }
                }
            }
        }
        Ok(doomed)
    }

    fn count_removal(&self, removal: &Removal) -> Result<Removed> {
        let t = &self.inner.t;
        let mut out = Removed {
            attachments: removal.attachments.len() as u64,
            blobs: self.doomed_blobs(removal)?.len() as u64,
            ..Removed::default()
        };
        for &m in &removal.messages {
            out.quarantined += u64::from(t.quarantine.contains_key(be(m))?);
            out.orphans += u64::from(t.orphans.contains_key(be(m))?);
        }
        Ok(out)
    }

    /// Remove what `removal` names. Each tree's part is one batch; the caller holds the gate and
    /// makes the whole resumable.
    fn apply_removal(&self, removal: &Removal) -> Result<Removed> {
        let t = &self.inner.t;
        let blobs = self.doomed_blobs(removal)?;
        // The records whose chunks go once the records are gone.
        let mut gone_messages = Vec::new();
        for &m in &removal.messages {
            if let Some(v) = t.messages.get(be(m))? {
                gone_messages.push((m, v));
            }
        }
        let mut gone_blobs = Vec::new();
        for b in &blobs {
            if let Some(v) = t.blobs.get(b)? {
                gone_blobs.push((*b, v));
            }
        }
        let mut out = Removed {
            attachments: removal.attachments.len() as u64,
            blobs: blobs.len() as u64,
            ..Removed::default()
        };
        // Message-ID index entries that point at a removed message.
        let mut msgid = sled::Batch::default();
        for item in t.msgid_idx.iter() {
            let (k, v) = item?;
            let r: MessageRef = decode(&v)?;
            if removal.messages.contains(&r.message.0) {
                msgid.remove(k);
            }
        }
        t.msgid_idx.apply_batch(msgid)?;

        let mut attachments = sled::Batch::default();
        let mut refs = sled::Batch::default();
        for (k, blob) in &removal.attachments {
            attachments.remove(k.clone());
            let mut r = Vec::with_capacity(32 + k.len());
            r.extend_from_slice(blob);
            r.extend_from_slice(k);
            refs.remove(r);
        }
        t.blob_refs.apply_batch(refs)?;
        t.attachments.apply_batch(attachments)?;
        let mut blob_batch = sled::Batch::default();
        for b in &blobs {
            blob_batch.remove(&b[..]);
        }
        t.blobs.apply_batch(blob_batch)?;

        let mut messages = sled::Batch::default();
        let mut quarantine = sled::Batch::default();
        let mut orphans = sled::Batch::default();
        for &m in &removal.messages {
            messages.remove(&be(m)[..]);
            if t.quarantine.contains_key(be(m))? {
                out.quarantined += 1;
                quarantine.remove(&be(m)[..]);
            }
            if t.orphans.contains_key(be(m))? {
                out.orphans += 1;
                orphans.remove(&be(m)[..]);
            }
        }
        t.quarantine.apply_batch(quarantine)?;
        t.orphans.apply_batch(orphans)?;

        // Other people's tickets: take the removed messages out (a ticket left empty goes).
        let mut emptied = Vec::new();
        for (&tk, gone) in &removal.updated {
            let kept_empty = t
                .tickets
                .transaction(|tickets| {
                    let Some(value) = tickets.get(be(tk))? else {
                        return Ok(false);
                    };
                    let (mut meta, sealed): (TicketMeta, _) = unframe(&value).map_err(abort)?;
                    meta.messages.retain(|m| !gone.contains(m));
                    if meta.messages.is_empty() {
                        tickets.remove(&be(tk))?;
                        return Ok(true);
                    }
                    meta.attachments = meta.attachments.saturating_sub(
                        removal
                            .attachments
                            .iter()
                            .filter(|(k, _)| k.len() >= 8 && gone.iter().any(|g| k[..8] == be(*g)))
                            .count() as u64,
                    );
                    tickets.insert(&be(tk), frame(&meta, sealed).map_err(abort)?)?;
                    Ok(false)
                })
                .map_err(tx_error)?;
            if kept_empty {
                emptied.push(tk);
            }
        }
        let mut tickets = sled::Batch::default();
        let mut participants = sled::Batch::default();
        for k in &removal.participants {
            participants.remove(k.clone());
        }
        for &tk in removal.tickets.iter().chain(&emptied) {
            tickets.remove(&be(tk)[..]);
            for k in t.participants.scan_prefix(be(tk)).keys() {
                participants.remove(k?);
            }
        }
        t.participants.apply_batch(participants)?;
        t.tickets.apply_batch(tickets)?;
        t.messages.apply_batch(messages)?;
        for (m, value) in gone_messages {
            self.drop_framed::<MessageMeta>(&value, tree::MESSAGES, &be(m))?;
        }
        for (b, value) in gone_blobs {
            self.drop_framed::<BlobMeta>(&value, tree::BLOBS, &b)?;
        }
        Ok(out)
    }

    /// Apply the retention `rules` as at `now` (Unix seconds): delete quarantined messages,
    /// closed tickets, attachments and audit records older than their class allows. With
    /// `dry_run`, only list what would go (the real run at the same `now` deletes exactly
    /// that, unless something changes meanwhile).
    pub fn retention_apply(
        &self,
        rules: RetentionRules,
        now: u64,
        dry_run: bool,
        actor: Actor,
    ) -> Result<RetentionReport> {
        let _gate = self.maintenance();
        let t = &self.inner.t;
        let cutoff = |days: u32| (days > 0).then(|| now.saturating_sub(u64::from(days) * DAY));
        let mut report = RetentionReport {
            dry_run,
            now,
            ..RetentionReport::default()
        };
        let mut removal = Removal::default();
        if let Some(before) = cutoff(rules.quarantine_days) {
            for item in t.quarantine.iter() {
                let (k, v) = item?;
                let (qm, _): (QuarantineMeta, _) = unframe(&v)?;
                if qm.created_at < before {
                    let id = from_be(&k)?;
                    report.quarantine.push(id);
                    removal.messages.insert(id);
                }
            }
        }
        if let Some(before) = cutoff(rules.closed_ticket_days) {
            for item in t.tickets.iter() {
                let (k, v) = item?;
                let (tm, _): (TicketMeta, _) = unframe(&v)?;
                let closed_at = tm.closed_at.unwrap_or(tm.updated_at);
                if tm.status == TicketStatus::Closed && closed_at < before {
                    let id = from_be(&k)?;
                    report.closed_tickets.push(id);
                    removal.tickets.insert(id);
                    report.messages.extend(tm.messages.iter().copied());
                    removal.messages.extend(tm.messages);
                }
            }
        }
        self.plan_attachments(&mut removal, |_| true)?;
        if let Some(before) = cutoff(rules.attachment_days) {
            let planned: HashSet<IVec> =
                removal.attachments.iter().map(|(k, _)| k.clone()).collect();
            for item in t.attachments.iter() {
                let (k, v) = item?;
                let (am, _): (AttachmentMeta, _) = unframe(&v)?;
                if am.tags.created_at < before && !planned.contains(&k) {
                    removal.attachments.push((k.clone(), am.blob));
                }
            }
        }
        report.attachments = removal
            .attachments
            .iter()
            .filter(|(k, _)| k.len() == 12)
            .map(|(k, _)| {
                let m = from_be(&k[..8]).unwrap_or_default();
                let i = u32::from_be_bytes([k[8], k[9], k[10], k[11]]);
                format!("{m}/{i}")
            })
            .collect();
        report.quarantine.sort_unstable();
        report.closed_tickets.sort_unstable();
        report.messages.sort_unstable();
        report.attachments.sort();
        if let Some(before) = cutoff(rules.audit_days) {
            report.audit = self.audit_expire(before, true)?;
        }
        if dry_run {
            report.blobs = self.count_removal(&removal)?.blobs;
            return Ok(report);
        }
        let removed = self.apply_removal(&removal)?;
        report.blobs = removed.blobs;
        if let Some(before) = cutoff(rules.audit_days) {
            report.audit = self.audit_expire(before, false)?;
        }
        let total = report.quarantine.len()
            + report.closed_tickets.len()
            + report.attachments.len()
            + report.audit as usize;
        if total > 0 {
            self.audit(
                AuditAction::Retention,
                actor,
                &[
                    ("quarantine", report.quarantine.len() as u64),
                    ("closed_tickets", report.closed_tickets.len() as u64),
                    ("messages", report.messages.len() as u64),
                    ("attachments", report.attachments.len() as u64),
                    ("blobs", report.blobs),
                    ("audit", report.audit),
                ],
            )?;
        }
        self.inner.flusher.durable_blocking(false)?;
        Ok(report)
    }

    /// Everything stored about the person with `address`; `None` if they are not a contact
    /// (or were erased). Writes an audit record (counts only).
    pub fn export_person(&self, address: &str, actor: Actor) -> Result<Option<PersonExport>> {
        let address = normalize_address(address);
        let Some(c) = self.contact_of(&address)? else {
            return Ok(None);
        };
        let t = &self.inner.t;
        let Some(value) = t.contacts.get(be(c))? else {
            return Ok(None);
        };
        let (cm, sealed): (ContactMeta, _) = unframe(&value)?;
        let secret: ContactSecret = match self.open_secret(sealed, tree::CONTACTS, &be(c)) {
            Ok(s) => s,
            Err(StoreError::KeyMissing(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut tickets = Vec::new();
        for item in t.tickets.iter() {
            let (k, v) = item?;
            let (tm, _): (TicketMeta, _) = unframe(&v)?;
            if tm.requester == c {
                if let Some(d) = self.ticket(TicketId(from_be(&k)?))? {
                    tickets.push(d.summary);
                }
            }
        }
        let mut messages = Vec::new();
        let mut participated = BTreeSet::new();
        let mut attachments = Vec::new();
        let mut seen_blobs = HashSet::new();
        for item in t.messages.iter() {
            let (k, v) = item?;
            let (mm, _): (MessageMeta, _) = unframe(&v)?;
            if mm.contact != c {
                continue;
            }
            let id = from_be(&k)?;
            if let Some(tk) = mm.ticket {
                if !tickets.iter().any(|s| s.id == tk) {
                    participated.insert(tk);
                }
            }
            let Some(view) = self.message_view(id)? else {
                continue;
            };
            let raw = self.raw_message(id)?.unwrap_or_default();
            for a in &view.attachments {
                if a.tags.contact == c && seen_blobs.insert(a.sha256.clone()) {
                    if let Some(bytes) = self.blob_bytes(crate::model::ContactId(c), &a.sha256)? {
                        attachments.push((a.clone(), bytes));
                    }
                }
            }
            messages.push((view, raw));
        }
        self.audit(
            AuditAction::Export,
            actor,
            &[
                ("tickets", tickets.len() as u64),
                ("messages", messages.len() as u64),
                ("attachments", attachments.len() as u64),
            ],
        )?;
        self.inner.flusher.durable_blocking(false)?;
        Ok(Some(PersonExport {
            contact: ExportContact {
                id: c,
                address: secret.address,
                name: secret.name,
                created_at: cm.created_at,
            },
            tickets,
            participated: participated.into_iter().collect(),
            messages,
            attachments,
        }))
    }
}

fn erasing_key(contact: u64) -> Vec<u8> {
    let mut k = meta_key::ERASING.to_vec();
    k.extend_from_slice(&be(contact));
    k
}

/// A file name safe inside an archive: no path separators, no control characters, no leading
/// dots, at most 100 bytes.
fn safe_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches('.').trim();
    let mut out = String::new();
    for c in cleaned.chars() {
        if out.len() + c.len_utf8() > 100 {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        "attachment".to_owned()
    } else {
        out
    }
}

/// Write `export` as a gzip-compressed tar archive: `person.json` (contact, tickets, other
/// tickets written into), `messages/<id>.json` and `messages/<id>.eml` per message,
/// `attachments/<sha256>/<file name>` per attachment, and `manifest.json` listing every file.
pub fn write_export_archive<W: Write>(export: &PersonExport, out: W) -> std::io::Result<W> {
    fn json<T: Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
        serde_json::to_vec_pretty(value).map_err(std::io::Error::other)
    }
    fn add<W: Write>(
        tar: &mut tar::Builder<W>,
        files: &mut Vec<String>,
        path: String,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(now_secs());
        header.set_cksum();
        tar.append_data(&mut header, &path, bytes)?;
        files.push(path);
        Ok(())
    }
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut files: Vec<String> = Vec::new();
    add(&mut tar, &mut files, "person.json".into(), &json(export)?)?;
    for (view, raw) in &export.messages {
        add(
            &mut tar,
            &mut files,
            format!("messages/{}.json", view.id),
            &json(view)?,
        )?;
        add(
            &mut tar,
            &mut files,
            format!("messages/{}.eml", view.id),
            raw,
        )?;
    }
    for (view, bytes) in &export.attachments {
        let name = safe_name(view.filename.as_deref().unwrap_or("attachment"));
        let path = format!("attachments/{}/{name}", view.sha256);
        add(&mut tar, &mut files, path, bytes)?;
    }
    let manifest = json(&serde_json::json!({
        "format": "mailroom-export-1",
        "contact": export.contact.id,
        "files": files,
    }))?;
    add(&mut tar, &mut Vec::new(), "manifest.json".into(), &manifest)?;
    tar.into_inner()?.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_headers_are_matched_whole() {
        let raw = b"Received: from x\r\nFrom: Alice <alice@example.com>\r\nTo: desk@h\r\n\r\nbody alice@example.com";
        assert!(header_names(raw, "alice@example.com"));
        assert!(!header_names(raw, "lice@example.com"));
        assert!(!header_names(raw, "desk@h"));
        let folded = b"From: \"A\"\r\n <bob@example.org>\r\n\r\n";
        assert!(header_names(folded, "bob@example.org"));
    }

    #[test]
    fn archive_names_are_safe() {
        assert_eq!(safe_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_name("..."), "attachment");
        assert_eq!(safe_name("a\u{0}b.pdf"), "a_b.pdf");
        assert!(safe_name(&"x".repeat(300)).len() <= 100);
    }
}
