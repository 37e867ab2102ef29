//! The spool (accepted, unprocessed messages) and the failed list.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use mailroom_spool::{Envelope, SpoolId};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::crypto::{self, KeyRef};
use crate::keys::now_secs;
use crate::model::{FailedEntry, FailedId, SpoolEntry};
use crate::records::{self, be, frame, frame_head, tree, unframe, FailedMeta, SpoolMeta};
use crate::{Result, Store, StoreError};

/// Shown in place of a field that cannot be decrypted.
pub(crate) const UNREADABLE: &str = "[erased]";

/// Map a sled transaction error whose abort type is ours.
pub(crate) fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::from(e),
    }
}

/// Abort a transaction with `e`.
pub(crate) fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

impl Store {
    /// Seal a spool payload (`frame(envelope, raw)`) for spool id `id` under the current spool
    /// key, framed with its metadata. The caller holds the key gate. The flag says whether a
    /// new spool key was made (the caller sweeps old ones once it has released the gate).
    pub(crate) fn seal_spool_value(
        &self,
        id: u64,
        envelope: &Envelope,
        raw: &[u8],
    ) -> Result<(Vec<u8>, bool)> {
        let (key_ref, key, rotated) = self.inner.keys.current_spool_key()?;
        if rotated {
            tracing::info!(key = %key_ref, "new spool key");
        }
        let inner = frame_head(envelope, 0)?;
        let meta = SpoolMeta {
            received_at: envelope.received_at,
            size: raw.len() as u64,
        };
        let mut sealed = Vec::with_capacity(crypto::HEADER_LEN + inner.len() + raw.len() + 16);
        crypto::seal_into(
            &mut sealed,
            &key,
            key_ref,
            tree::SPOOL,
            &be(id),
            &[&inner, raw],
        )?;
        // A large payload goes to the bulk tree as chunks (not yet durable either).
        let stored = self.stow(tree::SPOOL, &be(id), sealed)?;
        Ok((frame(&meta, &stored)?, rotated))
    }

    /// Drop the chunks of the payload of the failed entry `value` (framed), if it has any.
    pub(crate) fn drop_failed_value(&self, value: &[u8]) {
        if let Ok((meta, tail)) = unframe::<FailedMeta>(value) {
            if let Some(payload) = tail.get(meta.reason_len as usize..) {
                self.drop_stowed_logged(payload, tree::SPOOL, &be(meta.spool_id));
            }
        }
    }

    /// Drop the chunks of the spool value `value` (framed) of spool id `id`, if it has any.
    pub(crate) fn drop_spool_value(&self, id: u64, value: &[u8]) {
        self.drop_framed_logged::<SpoolMeta>(value, tree::SPOOL, &be(id));
    }

    /// Reserve a place, encrypt and insert a spool entry (not yet durable).
    pub(crate) fn spool_insert(&self, envelope: &Envelope, raw: &[u8]) -> Result<SpoolId> {
        let _gate = self.writing();
        let max = self.inner.options.spool_max_entries;
        self.inner
            .spool_count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| StoreError::SpoolFull)?;
        let inserted = (|| {
            let _gate = self.inner.keys.gate_shared();
            let id = self.inner.db.generate_id()?;
            let (value, rotated) = self.seal_spool_value(id, envelope, raw)?;
            // (On a storage error its chunks stay: whether the insert took is not known.)
            self.inner.t.spool.insert(be(id), value)?;
            Ok((SpoolId(id), rotated))
        })();
        match inserted {
            Ok((id, rotated)) => {
                if rotated {
                    self.sweep_after_rotation();
                }
                Ok(id)
            }
            Err(e) => {
                self.inner.spool_count.fetch_sub(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Sweep old spool keys after a rotation; a failure is logged, not returned (the write
    /// that rotated succeeded, and the next sweep tries again).
    pub(crate) fn sweep_after_rotation(&self) {
        if let Err(e) = self.sweep_spool_keys() {
            tracing::warn!(error = %e, "spool key sweep failed");
        }
    }

    /// Take back an entry whose append failed (it was not acknowledged). Best effort.
    pub(crate) fn spool_unwind(&self, id: SpoolId) {
        let _gate = self.writing();
        match self.inner.t.spool.remove(be(id.0)) {
            Ok(Some(value)) => {
                self.inner.spool_count.fetch_sub(1, Ordering::SeqCst);
                self.drop_spool_value(id.0, &value);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(spool_id = %id, error = %e, "cannot remove unacknowledged spool entry")
            }
        }
    }

    /// Decrypt a spool payload sealed for spool id `spool_id`.
    fn open_spool_payload(&self, spool_id: u64, sealed: &[u8]) -> Result<(Envelope, Vec<u8>)> {
        let plain = self.open_sealed(sealed, tree::SPOOL, &be(spool_id))?;
        let (envelope, raw): (Envelope, &[u8]) = unframe(&plain)?;
        Ok((envelope, raw.to_vec()))
    }

    pub(crate) fn spool_read(&self, id: SpoolId) -> Result<Option<SpoolEntry>> {
        let Some(value) = self.inner.t.spool.get(be(id.0))? else {
            return Ok(None);
        };
        let (_meta, sealed): (SpoolMeta, _) = unframe(&value)?;
        let (envelope, raw) = self.open_spool_payload(id.0, sealed)?;
        Ok(Some(SpoolEntry { id, envelope, raw }))
    }

    pub(crate) fn fail_entry(&self, spool_id: SpoolId, reason: &str) -> Result<Option<FailedId>> {
        let _gate = self.inner.keys.gate_shared();
        let t = &self.inner.t;
        let Some(value) = t.spool.get(be(spool_id.0))? else {
            return Ok(None);
        };
        let (meta, payload): (SpoolMeta, _) = unframe(&value)?;
        let failed_id = self.inner.db.generate_id()?;
        // The reason may name people: seal it under the payload's spool key (so only one key is
        // kept alive), or under the current spool key if that one is unreadable.
        let reason_key =
            match crypto::key_ref(payload).and_then(|r| Ok((r, self.inner.keys.key(r)?))) {
                Ok(found) => found,
                Err(_) => {
                    let (r, key, _) = self.inner.keys.current_spool_key()?;
                    (r, key)
                }
            };
        let reason_sealed = crypto::seal(
            &reason_key.1,
            reason_key.0,
            tree::FAILED_REASON,
            &be(failed_id),
            reason.as_bytes(),
        )?;
        let failed_meta = FailedMeta {
            spool_id: spool_id.0,
            received_at: meta.received_at,
            size: meta.size,
            failed_at: now_secs(),
            reason_len: u32::try_from(reason_sealed.len())
                .map_err(|_| StoreError::Corrupt("reason too long".into()))?,
        };
        let mut failed_value = frame_head(&failed_meta, reason_sealed.len() + payload.len())?;
        failed_value.extend_from_slice(&reason_sealed);
        failed_value.extend_from_slice(payload);
        let moved = (&t.spool, &t.failed)
            .transaction(|(spool, failed)| {
                match spool.get(be(spool_id.0))? {
                    Some(current) if current == value => {}
                    Some(_) => {
                        return Err(abort(StoreError::Corrupt(format!(
                            "spool entry {spool_id} changed while failing it"
                        ))))
                    }
                    None => return Ok(false),
                }
                spool.remove(&be(spool_id.0))?;
                failed.insert(&be(failed_id), failed_value.as_slice())?;
                Ok(true)
            })
            .map_err(tx_error)?;
        if !moved {
            return Ok(None);
        }
        self.inner.spool_count.fetch_sub(1, Ordering::SeqCst);
        self.inner.flusher.durable_blocking(false)?;
        Ok(Some(FailedId(failed_id)))
    }

    pub(crate) fn list_failed(&self) -> Result<Vec<FailedEntry>> {
        let mut out = Vec::new();
        for item in self.inner.t.failed.iter() {
            let (key, value) = item?;
            let id = records::from_be(&key)?;
            let (meta, tail): (FailedMeta, _) = unframe(&value)?;
            let reason_sealed = tail
                .get(..meta.reason_len as usize)
                .ok_or_else(|| StoreError::Corrupt(format!("failed entry {id} truncated")))?;
            let reason = match self.open_sealed(reason_sealed, tree::FAILED_REASON, &key) {
                Ok(plain) => String::from_utf8_lossy(&plain).into_owned(),
                Err(StoreError::KeyMissing(_)) => UNREADABLE.to_string(),
                Err(e) => return Err(e),
            };
            out.push(FailedEntry {
                id,
                spool_id: meta.spool_id,
                reason,
                size: meta.size,
                received_at: meta.received_at,
                failed_at: meta.failed_at,
            });
        }
        Ok(out)
    }

    pub(crate) fn retry_failed(&self, id: FailedId) -> Result<SpoolId> {
        let gate = self.inner.keys.gate_shared();
        let t = &self.inner.t;
        let Some(value) = t.failed.get(be(id.0))? else {
            return Err(StoreError::NotFound(format!("failed entry {}", id.0)));
        };
        let (meta, tail): (FailedMeta, _) = unframe(&value)?;
        let payload = tail
            .get(meta.reason_len as usize..)
            .ok_or_else(|| StoreError::Corrupt(format!("failed entry {} truncated", id.0)))?;
        let (envelope, raw) = self.open_spool_payload(meta.spool_id, payload)?;
        let spool_id = self.inner.db.generate_id()?;
        let (spool_value, rotated) = self.seal_spool_value(spool_id, &envelope, &raw)?;
        let moved = (&t.failed, &t.spool)
            .transaction(|(failed, spool)| {
                if failed.remove(&be(id.0))?.is_none() {
                    return Ok(false);
                }
                spool.insert(&be(spool_id), spool_value.as_slice())?;
                Ok(true)
            })
            .map_err(tx_error);
        drop(gate);
        match moved {
            // The payload was re-sealed for the new spool id: the old one's chunks go.
            Ok(true) => self.drop_stowed_logged(payload, tree::SPOOL, &be(meta.spool_id)),
            Ok(false) => {
                self.drop_spool_value(spool_id, &spool_value);
                return Err(StoreError::NotFound(format!("failed entry {}", id.0)));
            }
            // Whether a failed transaction left anything is not known: its chunks stay.
            Err(e) => return Err(e),
        }
        self.inner.spool_count.fetch_add(1, Ordering::SeqCst);
        self.inner.flusher.durable_blocking(true)?;
        if rotated {
            self.sweep_after_rotation();
        }
        Ok(SpoolId(spool_id))
    }

    /// Spool keys named by any spool or failed entry.
    pub(crate) fn spool_keys_in_use(&self) -> Result<HashSet<KeyRef>> {
        let mut used = HashSet::new();
        for value in self.inner.t.spool.iter().values() {
            let value = value?;
            let (_, sealed): (SpoolMeta, _) = unframe(&value)?;
            used.insert(crypto::key_ref(sealed)?);
        }
        for value in self.inner.t.failed.iter().values() {
            let value = value?;
            let (meta, tail): (FailedMeta, _) = unframe(&value)?;
            let split = (meta.reason_len as usize).min(tail.len());
            used.insert(crypto::key_ref(&tail[..split])?);
            used.insert(crypto::key_ref(&tail[split..])?);
        }
        Ok(used)
    }
}
