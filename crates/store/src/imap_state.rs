//! IMAP fetch state: where each account is in its mailbox, and what it has taken in.
//!
//! - `imap_state`: account name -> the mailbox's UIDVALIDITY and the last UID processed, with a
//!   keyed hash of the mailbox's identity (server, user, mailbox), so that an account pointed at
//!   another mailbox starts over instead of skipping.
//! - `imap_seen`: `len(name) | name | HMAC(index key, account, SHA-256 of the raw message)` ->
//!   when. One record per message ever spooled from that account: no plaintext, not even the
//!   message's hash (which could confirm a guessed message).
//!
//! **Exactly once.** [`Store::imap_append`] writes the spool entry and the message's `imap_seen`
//! record in one sled transaction, and resolves only after a flush that began after it. So a
//! crash leaves both or neither: a message whose append was not confirmed is fetched again and
//! spooled (nothing lost); one whose append was confirmed is recognised by its record when it is
//! fetched again (after a crash before the server was told, a restart, or a UIDVALIDITY change)
//! and not spooled twice. The alternatives fail: recording the hash after the append can
//! duplicate (crash in between), recording it before can lose the message (same crash).
//! Identical bytes fetched twice from one account are one message (a server that really
//! delivered the same bytes twice is deduplicated too, which is what a help desk wants).

use std::sync::atomic::Ordering;

use mailroom_spool::{Envelope, SpoolError, SpoolId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use crate::crypto;
use crate::keys::now_secs;
use crate::records::{be, decode, encode};
use crate::spool::tx_error;
use crate::{Result, Store, StoreError};

/// Tree names (also bound into nothing sealed: these trees hold no sealed values).
pub(crate) const STATE_TREE: &str = "imap_state";
/// See [`STATE_TREE`].
pub(crate) const SEEN_TREE: &str = "imap_seen";

/// Where one IMAP account is in its mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImapSyncState {
    /// The mailbox's UIDVALIDITY when `last_uid` was processed.
    pub uid_validity: u32,
    /// Every message with a UID up to this one has been spooled (or skipped, and said so).
    pub last_uid: u32,
}

/// What [`Store::imap_append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImapAppend {
    /// A new spool entry, durable.
    Spooled(SpoolId),
    /// This account has spooled these exact bytes before; nothing was written (the earlier
    /// record is durable).
    Duplicate,
}

/// One account's stored state, for `mailroom imap status` when no server runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImapAccountRecord {
    /// The account's name.
    pub account: String,
    /// UIDVALIDITY of the mailbox last synced.
    pub uid_validity: u32,
    /// The last UID processed.
    pub last_uid: u32,
    /// When the state was last written, Unix seconds.
    pub updated_at: u64,
    /// Messages this account has spooled, ever.
    pub messages: u64,
}

/// `imap_state` value.
#[derive(Debug, Serialize, Deserialize)]
struct StateRecord {
    /// HMAC of the mailbox's identity (server, user, mailbox).
    identity: [u8; 32],
    uid_validity: u32,
    last_uid: u32,
    updated_at: u64,
}

/// `imap_seen` value.
#[derive(Debug, Serialize, Deserialize)]
struct SeenRecord {
    /// When the message was spooled, Unix seconds (for a future retention rule).
    at: u64,
}

/// Key prefix of one account's `imap_seen` records.
fn seen_prefix(account: &str) -> Vec<u8> {
    let name = account.as_bytes();
    let mut key = Vec::with_capacity(1 + name.len() + 32);
    key.push(name.len().min(255) as u8);
    key.extend_from_slice(&name[..name.len().min(255)]);
    key
}

impl Store {
    fn imap_seen_key(&self, account: &str, raw: &[u8]) -> Vec<u8> {
        let sha: [u8; 32] = Sha256::digest(raw).into();
        let mac = crypto::index_hash(
            self.inner.keys.index(),
            "imap-seen",
            &[account.as_bytes(), &sha],
        );
        let mut key = seen_prefix(account);
        key.extend_from_slice(&mac);
        key
    }

    fn imap_identity(&self, identity: &str) -> [u8; 32] {
        crypto::index_hash(
            self.inner.keys.index(),
            "imap-identity",
            &[identity.as_bytes()],
        )
    }

    /// The sync state of `account` for the mailbox `identity` names (server, user and mailbox,
    /// in any stable spelling). `None` when the account never synced, or synced another
    /// mailbox: then it starts from the first message (and [`Store::imap_append`] recognises
    /// what it spooled before).
    pub fn imap_state(&self, account: &str, identity: &str) -> Result<Option<ImapSyncState>> {
        let Some(value) = self.inner.t.imap_state.get(account.as_bytes())? else {
            return Ok(None);
        };
        let record: StateRecord = decode(&value)?;
        if record.identity != self.imap_identity(identity) {
            return Ok(None);
        }
        Ok(Some(ImapSyncState {
            uid_validity: record.uid_validity,
            last_uid: record.last_uid,
        }))
    }

    /// Record `account`'s sync state; durable when it returns.
    pub fn imap_set_state(
        &self,
        account: &str,
        identity: &str,
        state: ImapSyncState,
    ) -> Result<()> {
        let record = StateRecord {
            identity: self.imap_identity(identity),
            uid_validity: state.uid_validity,
            last_uid: state.last_uid,
            updated_at: now_secs(),
        };
        {
            let _gate = self.writing();
            self.inner
                .t
                .imap_state
                .insert(account.as_bytes(), encode(&record)?)?;
        }
        self.inner.flusher.durable_blocking(false)
    }

    /// Every account with a stored state, by name, with how many messages each has spooled.
    pub fn imap_accounts(&self) -> Result<Vec<ImapAccountRecord>> {
        let mut out = Vec::new();
        for item in self.inner.t.imap_state.iter() {
            let (key, value) = item?;
            let account = String::from_utf8_lossy(&key).into_owned();
            let record: StateRecord = decode(&value)?;
            let messages = self
                .inner
                .t
                .imap_seen
                .scan_prefix(seen_prefix(&account))
                .count() as u64;
            out.push(ImapAccountRecord {
                account,
                uid_validity: record.uid_validity,
                last_uid: record.last_uid,
                updated_at: record.updated_at,
                messages,
            });
        }
        Ok(out)
    }

    /// Spool `raw` fetched by `account` unless this account spooled the same bytes before; in
    /// one transaction with the record that says it did (see the module's docs). Resolves only
    /// once the outcome is durable. Encrypts and inserts on the calling task, then awaits the
    /// shared flush.
    pub fn imap_append(
        &self,
        account: &str,
        envelope: Envelope,
        raw: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<ImapAppend, SpoolError>> + Send + 'static {
        let store = self.clone();
        let account = account.to_owned();
        async move {
            let inserted = store
                .imap_insert(&account, &envelope, &raw)
                .map_err(crate::to_spool_error)?;
            drop((envelope, raw));
            let spooled = matches!(inserted.0, ImapAppend::Spooled(_));
            let wait = match store.inner.flusher.durable_async(spooled) {
                Ok(wait) => wait,
                Err(_) => {
                    store.imap_unwind(&inserted);
                    return Err(SpoolError::Closed);
                }
            };
            match wait.wait().await {
                Ok(()) => Ok(inserted.0),
                Err(e) => {
                    store.imap_unwind(&inserted);
                    Err(crate::to_spool_error(e))
                }
            }
        }
    }

    /// [`Store::imap_append`], blocking the calling thread (for tests and tools).
    pub fn imap_append_blocking(
        &self,
        account: &str,
        envelope: Envelope,
        raw: Vec<u8>,
    ) -> Result<ImapAppend> {
        let inserted = self.imap_insert(account, &envelope, &raw)?;
        let spooled = matches!(inserted.0, ImapAppend::Spooled(_));
        match self.inner.flusher.durable_blocking(spooled) {
            Ok(()) => Ok(inserted.0),
            Err(e) => {
                self.imap_unwind(&inserted);
                Err(e)
            }
        }
    }

    /// Insert (not yet durable) the spool entry and the seen record, or find the record.
    fn imap_insert(
        &self,
        account: &str,
        envelope: &Envelope,
        raw: &[u8],
    ) -> Result<(ImapAppend, Vec<u8>)> {
        let key = self.imap_seen_key(account, raw);
        let t = &self.inner.t;
        if t.imap_seen.contains_key(&key)? {
            return Ok((ImapAppend::Duplicate, key));
        }
        let max = self.inner.options.spool_max_entries;
        self.inner
            .spool_count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| StoreError::SpoolFull)?;
        let seen = encode(&SeenRecord { at: now_secs() })?;
        let inserted = (|| {
            let _write = self.writing();
            let _gate = self.inner.keys.gate_shared();
            let id = self.inner.db.generate_id()?;
            let (value, rotated) = self.seal_spool_value(id, envelope, raw)?;
            let fresh = (&t.spool, &t.imap_seen)
                .transaction(|(spool, seen_tree)| {
                    if seen_tree.get(key.as_slice())?.is_some() {
                        return Ok(false);
                    }
                    seen_tree.insert(key.as_slice(), seen.as_slice())?;
                    spool.insert(&be(id), value.as_slice())?;
                    Ok::<_, ConflictableTransactionError<StoreError>>(true)
                })
                .map_err(tx_error)?;
            if !fresh {
                // Spooled before: this copy's chunks (if any) go.
                self.drop_spool_value(id, &value);
            }
            Ok::<_, StoreError>((fresh.then_some(SpoolId(id)), rotated))
        })();
        match inserted {
            Ok((Some(id), rotated)) => {
                if rotated {
                    self.sweep_after_rotation();
                }
                Ok((ImapAppend::Spooled(id), key))
            }
            Ok((None, rotated)) => {
                self.inner.spool_count.fetch_sub(1, Ordering::SeqCst);
                if rotated {
                    self.sweep_after_rotation();
                }
                Ok((ImapAppend::Duplicate, key))
            }
            Err(e) => {
                self.inner.spool_count.fetch_sub(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Take back an append whose flush failed (it was not confirmed): the entry and its seen
    /// record together, so that the next fetch spools the message again. Best effort.
    fn imap_unwind(&self, inserted: &(ImapAppend, Vec<u8>)) {
        let (ImapAppend::Spooled(id), key) = inserted else {
            return;
        };
        let t = &self.inner.t;
        let removed = (&t.spool, &t.imap_seen)
            .transaction(|(spool, seen)| {
                seen.remove(key.as_slice())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(spool.remove(&be(id.0))?)
            })
            .map_err(tx_error);
        match removed {
            Ok(Some(value)) => {
                self.inner.spool_count.fetch_sub(1, Ordering::SeqCst);
                self.drop_spool_value(id.0, &value);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(spool_id = %id, error = %e, "cannot take back an unconfirmed IMAP append")
            }
        }
    }
}
