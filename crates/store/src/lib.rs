//! mailroom's storage. This is the only crate that names `sled`; no sled type crosses its API.
//!
//! Layout of a data directory:
//! - `lock`: held (flock) while a process has the store open.
//! - `db/`: the sled database (spool, contacts, tickets, messages, attachments, indexes,
//!   quarantine, the spam filter's state, token-count snapshot and journal, and learned-message
//!   records; see [`filter`]).
//! - `keys/`: key files, outside the sled files so that destroying one really destroys it:
//!   `index.key` (keyed-hash lookups), `person/<contact>.key` (per-person data keys) and
//!   `spool/<epoch ms>.key` (short-lived spool keys).
//!
//! Personal data is encrypted (XChaCha20-Poly1305) under the key of the person it belongs to;
//! lookup indexes use HMAC-SHA256 under `index.key`, never plaintext addresses or ids.
//!
//! Durability: every method that writes returns only after a flush (fsync) that started after
//! its write. Flushes are shared between concurrent callers by one flusher thread (group
//! commit). The blocking methods are meant to be called from threads that may block (for
//! example inside `tokio::task::spawn_blocking`).

#![warn(missing_docs)]

mod agent_ops;
mod audit;
mod backup;
mod bulk;
mod commit;
mod crypto;
pub mod filter;
mod flusher;
mod imap_state;
mod keys;
pub mod model;
mod privacy;
mod read;
mod records;
mod spool;
mod tokens;

pub use agent_ops::{
    AttachmentDownload, FeedbackAction, FeedbackOutcome, QuarantineEntry, QuarantinePage, Release,
    TicketPage, TicketQuery,
};
pub use audit::{Actor, AgentDeletion, AuditAction, AuditEntry};
pub use backup::{BackupReport, RestoreReport};
pub use filter::{write_model, FilterStats, TokenView, TrainOutcome};
pub use imap_state::{ImapAccountRecord, ImapAppend, ImapSyncState};
pub use privacy::{
    write_export_archive, ErasureReport, PersonExport, RetentionReport, RetentionRules,
};
pub use tokens::{validate_token_name, Role, TokenError, TokenInfo, TOKEN_LEN, TOKEN_PREFIX};

pub use model::*;

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mailroom_spool::SpoolId;

use crate::flusher::Flusher;
use crate::keys::{create_private_dir, io_err, IndexKey, Keyring};
use crate::records::{meta_key, tree};

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database or a key file could not be read or written.
    #[error("store I/O error: {0}")]
    Io(String),
    /// Another process has the store open.
    #[error("the store at {0} is in use by another process")]
    Locked(String),
    /// A record could not be decoded or decrypted.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A person's key is gone (erased): their data cannot be read.
    #[error("key {0} not found")]
    KeyMissing(String),
    /// No such ticket, message or entry.
    #[error("not found: {0}")]
    NotFound(String),
    /// The spool holds `spool_max_entries` unprocessed entries (backpressure; try later).
    #[error("spool is full")]
    SpoolFull,
    /// The spam filter's counts do not allow the update (e.g. untraining would take a count
    /// below zero); nothing was changed.
    #[error("spam filter: {0}")]
    Filter(String),
    /// A model file given to [`Store::filter_import`] is not a valid mailroom model; nothing was
    /// changed.
    #[error("invalid model file: {0}")]
    InvalidModel(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

/// Result alias.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Options for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// At most this many unprocessed spool entries; appends beyond it fail with `Full`
    /// ([`mailroom_spool::SpoolError::Full`], or [`StoreError::SpoolFull`] when blocking).
    pub spool_max_entries: usize,
    /// A new spool key is made after this many seconds; old ones are destroyed once no entry
    /// uses them.
    pub spool_key_lifetime_secs: u64,
    /// Size of sled's page cache in bytes (sled's own default is 1 GiB). sled overshoots it
    /// somewhat; the spam filter's model snapshot (28 bytes a token) stays in memory on top,
    /// shared by sled and the filter's table (see [`filter`]).
    pub cache_capacity_bytes: u64,
}

/// Default of [`StoreOptions::cache_capacity_bytes`]: 16 MiB.
pub const DEFAULT_CACHE_CAPACITY_BYTES: u64 = 16 * 1024 * 1024;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            spool_max_entries: 10_000,
            spool_key_lifetime_secs: 24 * 3600,
            cache_capacity_bytes: DEFAULT_CACHE_CAPACITY_BYTES,
        }
    }
}

/// The store. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// The sled trees.
struct Trees {
    meta: sled::Tree,
    spool: sled::Tree,
    failed: sled::Tree,
    contacts: sled::Tree,
    contact_idx: sled::Tree,
    tickets: sled::Tree,
    participants: sled::Tree,
    messages: sled::Tree,
    orphans: sled::Tree,
    msgid_idx: sled::Tree,
    blobs: sled::Tree,
    attachments: sled::Tree,
    blob_refs: sled::Tree,
    filter_meta: sled::Tree,
    filter_journal: sled::Tree,
    filter_snapshot: sled::Tree,
    learned: sled::Tree,
    quarantine: sled::Tree,
    audit: sled::Tree,
    agents: sled::Tree,
    agent_idx: sled::Tree,
    imap_state: sled::Tree,
    imap_seen: sled::Tree,
    /// Chunks of large sealed values (see `bulk`).
    bulk: sled::Tree,
}

struct Inner {
    // Fields drop in order: the flusher thread (which holds a `Db` handle) stops first, the
    // lock file is released last.
    flusher: Flusher,
    db: sled::Db,
    t: Trees,
    keys: Keyring,
    /// The data directory (for sizes on disk).
    dir: PathBuf,
    filter: filter::FilterState,
    options: StoreOptions,
    spool_count: AtomicUsize,
    notify: Arc<tokio::sync::Notify>,
    /// Held shared (recursively) by every method that writes, and exclusively by erasure,
    /// retention and backup, which so see and leave one consistent state.
    gate: parking_lot::RwLock<()>,
    _lock: File,
}

/// A handle that implements [`mailroom_spool::Spool`] over this store, with group commit.
#[derive(Clone)]
pub struct SpoolHandle {
    store: Store,
}

fn lock_data_dir(dir: &Path) -> Result<File> {
    let path = dir.join("lock");
    let mut options = OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(&path).map_err(|e| io_err(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked(dir.display().to_string())),
        Err(TryLockError::Error(e)) => Err(io_err(&path, e)),
    }
}

/// sled reports its own lock as an I/O error "could not acquire lock on ...".
fn map_sled_open_error(e: sled::Error, dir: &Path) -> StoreError {
    match &e {
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock") =>
        {
            StoreError::Locked(dir.display().to_string())
        }
        _ => StoreError::Io(format!("{}: {e}", dir.display())),
    }
}

/// How long [`Store::open`] waits for sled's own lock once it holds the store's lock file.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Open the sled database in `db_dir`. The caller holds `DIR/lock`, so no other store has the
/// database open; sled's own file lock can still be held for a moment by a background write of
/// a handle this process has just dropped (sled's thread pool keeps the file until it is done),
/// so a lock conflict is retried for up to [`SLED_LOCK_WAIT`].
fn open_sled(db_dir: &Path, dir: &Path, cache_capacity: u64) -> Result<sled::Db> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    loop {
        let opened = sled::Config::new()
            .path(db_dir)
            .cache_capacity(cache_capacity)
            .open();
        match opened.map_err(|e| map_sled_open_error(e, dir)) {
            Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl Store {
    /// Open (or create) the store in data directory `dir`.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store> {
        create_private_dir(dir)?;
        let lock = lock_data_dir(dir)?;
        let db_dir: PathBuf = dir.join("db");
        create_private_dir(&db_dir)?;
        let db = open_sled(&db_dir, dir, options.cache_capacity_bytes)?;
        let t = Trees {
            meta: db.open_tree(tree::META)?,
            spool: db.open_tree(tree::SPOOL)?,
            failed: db.open_tree(tree::FAILED)?,
            contacts: db.open_tree(tree::CONTACTS)?,
            contact_idx: db.open_tree(tree::CONTACT_IDX)?,
            tickets: db.open_tree(tree::TICKETS)?,
            participants: db.open_tree(tree::PARTICIPANTS)?,
            messages: db.open_tree(tree::MESSAGES)?,
            orphans: db.open_tree(tree::ORPHANS)?,
            msgid_idx: db.open_tree(tree::MSGID_IDX)?,
            blobs: db.open_tree(tree::BLOBS)?,
            attachments: db.open_tree(tree::ATTACHMENTS)?,
            blob_refs: db.open_tree(tree::BLOB_REFS)?,
            filter_meta: db.open_tree(tree::FILTER_META)?,
            filter_journal: db.open_tree(tree::FILTER_JOURNAL)?,
            filter_snapshot: db.open_tree(tree::FILTER_SNAPSHOT)?,
            learned: db.open_tree(tree::LEARNED)?,
            quarantine: db.open_tree(tree::QUARANTINE)?,
            audit: db.open_tree(tree::AUDIT)?,
            agents: db.open_tree(tree::AGENTS)?,
            agent_idx: db.open_tree(tree::AGENT_IDX)?,
            imap_state: db.open_tree(imap_state::STATE_TREE)?,
            imap_seen: db.open_tree(imap_state::SEEN_TREE)?,
            bulk: db.open_tree(records::tree::BULK)?,
        };
        let filter = filter::FilterState::open(&t)?;
        let initialised = t.meta.contains_key(meta_key::INDEX_KEY)?;
        let index = if initialised {
            IndexKey::MustExist
        } else {
            IndexKey::CreateIfMissing
        };
        let keys = Keyring::open(&dir.join("keys"), index, options.spool_key_lifetime_secs)?;
        if !initialised {
            t.meta.insert(meta_key::INDEX_KEY, &[1u8][..])?;
            db.flush()?;
        }
        let notify = Arc::new(tokio::sync::Notify::new());
        let log_path = db_dir.join("db");
        let log = File::open(&log_path).map_err(|e| keys::io_err(&log_path, e))?;
        let flusher = Flusher::start(db.clone(), &db_dir, Some(log), notify.clone())?;
        let spool_count = AtomicUsize::new(t.spool.len());
        let store = Store {
            inner: Arc::new(Inner {
                flusher,
                db,
                t,
                keys,
                dir: dir.to_path_buf(),
                filter,
                options,
                spool_count,
                notify,
                gate: parking_lot::RwLock::new(()),
                _lock: lock,
            }),
        };
        store.sweep_spool_keys()?;
        store.resume_erasures()?;
        Ok(store)
    }

    /// The spool, for SMTP/IMAP/ingest.
    pub fn spool(&self) -> SpoolHandle {
        SpoolHandle {
            store: self.clone(),
        }
    }

    /// Append synchronously (for `ingest` and tests): durable when it returns. Fails with
    /// [`StoreError::SpoolFull`] when the spool holds `spool_max_entries` entries.
    pub fn spool_append_blocking(
        &self,
        envelope: mailroom_spool::Envelope,
        raw: Vec<u8>,
    ) -> Result<SpoolId> {
        let id = self.spool_insert(&envelope, &raw)?;
        match self.inner.flusher.durable_blocking(true) {
            Ok(()) => Ok(id),
            Err(e) => {
                self.spool_unwind(id);
                Err(e)
            }
        }
    }

    /// Ids of unprocessed spool entries, oldest first.
    pub fn spool_pending(&self) -> Result<Vec<SpoolId>> {
        self.inner
            .t
            .spool
            .iter()
            .keys()
            .map(|k| Ok(SpoolId(records::from_be(&k?)?)))
            .collect()
    }

    /// Number of unprocessed spool entries.
    pub fn spool_len(&self) -> usize {
        self.inner.spool_count.load(Ordering::SeqCst)
    }

    /// Read and decrypt one spool entry (`None` if already processed).
    pub fn spool_get(&self, id: SpoolId) -> Result<Option<SpoolEntry>> {
        self.spool_read(id)
    }

    /// Notified whenever an entry is appended to the spool (wakes the pipeline workers).
    ///
    /// After each flush that made appends durable, every task waiting at that moment is woken
    /// and one permit is stored for the next `notified()`.
    pub fn spool_notify(&self) -> Arc<tokio::sync::Notify> {
        self.inner.notify.clone()
    }

    /// Find a stored message by its `Message-ID` (without angle brackets).
    pub fn find_message_id(&self, message_id: &str) -> Result<Option<MessageRef>> {
        let key = self.msgid_hash(message_id);
        match self.inner.t.msgid_idx.get(key)? {
            Some(v) => Ok(Some(records::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Whether ticket `id` exists.
    pub fn ticket_exists(&self, id: TicketId) -> Result<bool> {
        Ok(self.inner.t.tickets.contains_key(records::be(id.0))?)
    }

    /// Whether the (normalised) address is the requester of, or has sent a message to, ticket
    /// `id`.
    pub fn is_participant(&self, id: TicketId, address: &str) -> Result<bool> {
        let key = self.contact_hash(&normalize_address(address));
        let Some(contact) = self.inner.t.contact_idx.get(key)? else {
            return Ok(false);
        };
        let contact = records::from_be(&contact)?;
        Ok(self
            .inner
            .t
            .participants
            .contains_key(records::be2(id.0, contact))?)
    }

    /// In one transaction: upsert the sender's contact, open or update the ticket, store the
    /// message and its attachments (one blob per owner and content), index its `Message-ID`, and
    /// remove spool entry `spool_id`. If that entry is already gone, write nothing and return
    /// [`CommitOutcome::AlreadyProcessed`].
    pub fn commit_message(&self, spool_id: SpoolId, delivery: Delivery) -> Result<CommitOutcome> {
        let _gate = self.writing();
        let mut outcomes = self.commit_batch(&[(spool_id, &delivery)])?;
        Ok(outcomes.pop().unwrap_or(CommitOutcome::AlreadyProcessed))
    }

    /// [`Store::commit_message`] for several messages in one transaction and one flush: the
    /// pipeline's group commit. Outcomes come in the order of `batch`; a later message sees
    /// what an earlier one wrote (a new contact, a ticket it opened). When one message cannot
    /// be stored, nothing is and the error is returned: commit them one by one to find it.
    pub fn commit_messages(&self, batch: &[(SpoolId, Delivery)]) -> Result<Vec<CommitOutcome>> {
        let _gate = self.writing();
        let items: Vec<(SpoolId, &Delivery)> = batch.iter().map(|(id, d)| (*id, d)).collect();
        self.commit_batch(&items)
    }

    /// Move spool entry `spool_id` to the failed list with `reason` (one transaction).
    pub fn fail_spool_entry(&self, spool_id: SpoolId, reason: &str) -> Result<Option<FailedId>> {
        let _gate = self.writing();
        self.fail_entry(spool_id, reason)
    }

    /// The failed list, oldest first.
    pub fn failed_list(&self) -> Result<Vec<FailedEntry>> {
        self.list_failed()
    }

    /// Put a failed entry back in the spool for another try; returns its new spool id.
    pub fn failed_retry(&self, id: FailedId) -> Result<SpoolId> {
        let _gate = self.writing();
        self.retry_failed(id)
    }

    /// All tickets, newest first.
    pub fn tickets(&self) -> Result<Vec<TicketSummary>> {
        self.list_tickets()
    }

    /// One ticket with its messages and attachments.
    pub fn ticket(&self, id: TicketId) -> Result<Option<TicketDetail>> {
        self.ticket_detail(id)
    }

    /// Messages kept without a ticket (auto-replies and bounces that thread nowhere). Quarantined
    /// messages are not orphans (see [`Store::quarantine`]).
    pub fn orphans(&self) -> Result<Vec<MessageView>> {
        self.list_orphans()
    }

    /// The raw bytes of stored message `id`, exactly as spooled (with our `Received:` header).
    pub fn message_raw(&self, id: MessageKey) -> Result<Option<Vec<u8>>> {
        self.raw_message(id.0)
    }

    /// Bytes of one attachment blob of `contact` with hex SHA-256 `sha256`.
    pub fn attachment_bytes(&self, contact: ContactId, sha256: &str) -> Result<Option<Vec<u8>>> {
        self.blob_bytes(contact, sha256)
    }

    /// Counts for `stats`: tickets, messages, contacts, attachment blobs, spool, failed,
    /// quarantine. (sled counts a tree by walking it: this is for a stats command, not a hot
    /// path.)
    pub fn counts(&self) -> Result<Counts> {
        let t = &self.inner.t;
        Ok(Counts {
            tickets: t.tickets.len() as u64,
            messages: t.messages.len() as u64,
            contacts: t.contacts.len() as u64,
            blobs: t.blobs.len() as u64,
            spool: self.spool_len() as u64,
            failed: t.failed.len() as u64,
            quarantined: t.quarantine.len() as u64,
        })
    }

    /// How many chunks of large values the `bulk` tree holds (docs/memory.md). It walks the
    /// whole tree: for tests and diagnosis, not for `stats`.
    pub fn chunk_count(&self) -> Result<u64> {
        Ok(self.inner.t.bulk.len() as u64)
    }

    /// Flush everything to disk.
    pub fn flush(&self) -> Result<()> {
        self.inner.flusher.durable_blocking(false)
    }

    /// Number of flushes (fsyncs) the group-commit flusher has done since the store was opened.
    /// Concurrent appends share flushes, so under load this grows slower than the appends.
    pub fn flush_count(&self) -> u64 {
        self.inner.flusher.count()
    }

    /// Destroy every spool key file that is past its lifetime and used by no spool or failed
    /// entry; returns how many were destroyed. Runs at open and whenever a new spool key is
    /// made; a periodic sweeper may call it too.
    pub fn sweep_spool_keys(&self) -> Result<usize> {
        let _gate = self.writing();
        self.inner.keys.sweep_spool_keys(
            || self.spool_keys_in_use(),
            || self.inner.flusher.durable_blocking(false),
        )
    }

    fn contact_hash(&self, normalised: &str) -> [u8; 32] {
        crypto::index_hash(self.inner.keys.index(), "contact", &[normalised.as_bytes()])
    }

    fn msgid_hash(&self, message_id: &str) -> [u8; 32] {
        let id = message_id
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .trim();
        crypto::index_hash(self.inner.keys.index(), "message-id", &[id.as_bytes()])
    }

    fn blob_hash(&self, contact: u64, sha256: &[u8; 32]) -> [u8; 32] {
        crypto::index_hash(
            self.inner.keys.index(),
            "blob",
            &[&contact.to_be_bytes(), sha256],
        )
    }

    /// Decrypt a sealed value stored under `tree`/`record_key` with the key its header names.
    fn open_sealed(&self, sealed: &[u8], tree: &str, record_key: &[u8]) -> Result<Vec<u8>> {
        let key = self.inner.keys.key(crypto::key_ref(sealed)?)?;
        let sealed = self.unstow(sealed, tree, record_key)?;
        crypto::open(&key, &sealed, tree, record_key)
    }
}

/// Record counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Tickets.
    pub tickets: u64,
    /// Messages (with and without ticket).
    pub messages: u64,
    /// Contacts.
    pub contacts: u64,
    /// Distinct attachment blobs.
    pub blobs: u64,
    /// Unprocessed spool entries.
    pub spool: u64,
    /// Failed entries.
    pub failed: u64,
    /// Messages in the quarantine.
    #[serde(default)]
    pub quarantined: u64,
}

fn to_spool_error(e: StoreError) -> mailroom_spool::SpoolError {
    match e {
        StoreError::SpoolFull => mailroom_spool::SpoolError::Full,
        other => mailroom_spool::SpoolError::Io(other.to_string()),
    }
}

impl mailroom_spool::Spool for SpoolHandle {
    /// Encrypts and inserts the entry on the calling task (no runtime needed), then awaits the
    /// shared flush.
    fn append(
        &self,
        envelope: mailroom_spool::Envelope,
        raw: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<SpoolId, mailroom_spool::SpoolError>> + Send {
        let store = self.store.clone();
        async move {
            let id = store
                .spool_insert(&envelope, &raw)
                .map_err(to_spool_error)?;
            drop((envelope, raw));
            let wait = match store.inner.flusher.durable_async(true) {
                Ok(wait) => wait,
                Err(_) => {
                    store.spool_unwind(id);
                    return Err(mailroom_spool::SpoolError::Closed);
                }
            };
            match wait.wait().await {
                Ok(()) => Ok(id),
                Err(e) => {
                    store.spool_unwind(id);
                    Err(to_spool_error(e))
                }
            }
        }
    }
}
