//! Views: tickets, messages, attachments. Fields of a person whose key is gone read as
//! `[erased]`; single records (`attachment_bytes`, `spool_get`) give `KeyMissing`.

use std::collections::HashMap;

use crate::model::{
    AttachmentView, Classification, ContactId, MessageView, TicketDetail, TicketId, TicketSummary,
};
use crate::records::{
    api_flags, be, from_be, tree, unframe, AttachmentMeta, AttachmentSecret, BlobMeta, ContactMeta,
    ContactSecret, MessageMeta, MessageSecret, TicketMeta, TicketSecret,
};
use crate::spool::UNREADABLE;
use crate::{Result, Store, StoreError};

/// `Ok(None)` for a missing key, so callers can show a placeholder.
fn readable<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::KeyMissing(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Store {
    /// Decrypt a framed secret (`frame(S, [])`) sealed under `tree`/`key`.
    pub(crate) fn open_secret<S: serde::de::DeserializeOwned>(
        &self,
        sealed: &[u8],
        tree: &str,
        key: &[u8],
    ) -> Result<S> {
        let plain = self.open_sealed(sealed, tree, key)?;
        let (secret, _): (S, _) = unframe(&plain)?;
        Ok(secret)
    }

    /// A contact's address, or `[erased]` when the contact or its key is gone.
    pub(crate) fn contact_address(
        &self,
        id: u64,
        cache: &mut HashMap<u64, String>,
    ) -> Result<String> {
        if let Some(a) = cache.get(&id) {
            return Ok(a.clone());
        }
        let address = match self.inner.t.contacts.get(be(id))? {
            Some(value) => {
                let (_meta, sealed): (ContactMeta, _) = unframe(&value)?;
                readable(self.open_secret::<ContactSecret>(sealed, tree::CONTACTS, &be(id)))?
                    .map(|c| c.address)
                    .unwrap_or_else(|| UNREADABLE.to_string())
            }
            None => UNREADABLE.to_string(),
        };
        cache.insert(id, address.clone());
        Ok(address)
    }

    pub(crate) fn summary(
        &self,
        id: u64,
        value: &[u8],
        cache: &mut HashMap<u64, String>,
    ) -> Result<(TicketSummary, TicketMeta)> {
        let (meta, sealed): (TicketMeta, _) = unframe(value)?;
        let subject = readable(self.open_secret::<TicketSecret>(sealed, tree::TICKETS, &be(id)))?
            .map(|s| s.subject)
            .unwrap_or_else(|| UNREADABLE.to_string());
        let summary = TicketSummary {
            id,
            subject,
            requester: self.contact_address(meta.requester, cache)?,
            messages: meta.messages.len(),
            attachments: meta.attachments as usize,
            status: meta.status,
            created_at: meta.created_at,
            updated_at: meta.updated_at,
            flagged: meta.flagged,
            unsure: meta.unsure,
            closed_at: meta.closed_at,
            closed_by: match meta.closed_by {
                Some(agent) => Some(self.agent_name(agent)?),
                None => None,
            },
        };
        Ok((summary, meta))
    }

    pub(crate) fn list_tickets(&self) -> Result<Vec<TicketSummary>> {
        let mut cache = HashMap::new();
        let mut out = Vec::new();
        for item in self.inner.t.tickets.iter().rev() {
            let (key, value) = item?;
            out.push(self.summary(from_be(&key)?, &value, &mut cache)?.0);
        }
        Ok(out)
    }

    pub(crate) fn ticket_detail(&self, id: TicketId) -> Result<Option<TicketDetail>> {
        let Some(value) = self.inner.t.tickets.get(be(id.0))? else {
            return Ok(None);
        };
        let (summary, meta) = self.summary(id.0, &value, &mut HashMap::new())?;
        let mut thread = Vec::with_capacity(meta.messages.len());
        for message in meta.messages {
            if let Some(view) = self.message_view(message)? {
                thread.push(view);
            }
        }
        Ok(Some(TicketDetail { summary, thread }))
    }

    pub(crate) fn list_orphans(&self) -> Result<Vec<MessageView>> {
        let mut out = Vec::new();
        for key in self.inner.t.orphans.iter().keys() {
            if let Some(view) = self.message_view(from_be(&key?)?)? {
                out.push(view);
            }
        }
        Ok(out)
    }

    /// One message as shown; `None` if it is gone.
    pub(crate) fn message_view(&self, id: u64) -> Result<Option<MessageView>> {
        let Some(value) = self.inner.t.messages.get(be(id))? else {
            return Ok(None);
        };
        let (meta, sealed): (MessageMeta, _) = unframe(&value)?;
        let secret = match readable(self.open_sealed(sealed, tree::MESSAGES, &be(id)))? {
            Some(plain) => Some(unframe::<MessageSecret>(&plain)?.0),
            None => None,
        };
        let quarantined = self.inner.t.quarantine.contains_key(be(id))?;
        let classification = |clues| {
            meta.classification.as_ref().map(|c| Classification {
                score: c.score,
                verdict: c.verdict,
                algorithm: c.algorithm.clone(),
                clues,
            })
        };
        let mut attachments = Vec::with_capacity(meta.attachments as usize);
        for item in self.inner.t.attachments.scan_prefix(be(id)) {
            let (key, value) = item?;
            let (a, sealed): (AttachmentMeta, _) = unframe(&value)?;
            let secret =
                readable(self.open_secret::<AttachmentSecret>(sealed, tree::ATTACHMENTS, &key))?;
            attachments.push(match secret {
                Some(s) => AttachmentView {
                    sha256: hex::encode(s.sha256),
                    filename: s.filename,
                    content_type: s.content_type,
                    size: a.size,
                    tags: a.tags,
                },
                None => AttachmentView {
                    sha256: UNREADABLE.to_string(),
                    filename: None,
                    content_type: UNREADABLE.to_string(),
                    size: a.size,
                    tags: a.tags,
                },
            });
        }
        Ok(Some(match secret {
            Some(s) => MessageView {
                id,
                ticket: meta.ticket,
                from: s.from,
                from_name: s.from_name,
                subject: s.subject,
                message_id: s.message_id,
                date: s.date,
                received_at: meta.received_at,
                flags: api_flags(s.flags),
                text: s.text,
                has_html: meta.has_html,
                attachments,
                classification: classification(s.clues),
                quarantined,
            },
            None => MessageView {
                id,
                ticket: meta.ticket,
                from: UNREADABLE.to_string(),
                from_name: None,
                subject: UNREADABLE.to_string(),
                message_id: None,
                date: None,
                received_at: meta.received_at,
                flags: api_flags(meta.flags.clone()),
                text: None,
                has_html: meta.has_html,
                attachments,
                classification: classification(Vec::new()),
                quarantined,
            },
        }))
    }

    /// The raw message as spooled (our `Received:` line first); `None` if there is no such
    /// message, `KeyMissing` if its owner's key is gone.
    pub(crate) fn raw_message(&self, id: u64) -> Result<Option<Vec<u8>>> {
        let Some(value) = self.inner.t.messages.get(be(id))? else {
            return Ok(None);
        };
        let (_meta, sealed): (MessageMeta, _) = unframe(&value)?;
        let plain = self.open_sealed(sealed, tree::MESSAGES, &be(id))?;
        let (_secret, raw): (MessageSecret, _) = unframe(&plain)?;
        Ok(Some(raw.to_vec()))
    }

    pub(crate) fn blob_bytes(&self, contact: ContactId, sha256: &str) -> Result<Option<Vec<u8>>> {
        let Some(digest) = hex::decode(sha256.trim())
            .ok()
            .and_then(|d| <[u8; 32]>::try_from(d).ok())
        else {
            return Ok(None);
        };
        let key = self.blob_hash(contact.0, &digest);
        let Some(value) = self.inner.t.blobs.get(key)? else {
            return Ok(None);
        };
        let (meta, sealed): (BlobMeta, _) = unframe(&value)?;
        if meta.contact != contact.0 {
            return Err(StoreError::Corrupt(format!(
                "blob of contact {} filed under contact {}",
                meta.contact, contact.0
            )));
        }
        Ok(Some(self.open_sealed(sealed, tree::BLOBS, &key)?))
    }
}
