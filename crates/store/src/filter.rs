//! The spam filter's state: token counts, totals, learned-message records, and the quarantine.
//! The arithmetic lives in `mailroom-spamfilter` (pure); this is only storage.
//!
//! # Where the token counts live
//!
//! Classification reads a few hundred token counts per message, thousands of messages a second,
//! and a model holds up to millions of tokens. Kept as one sled key per token, a million tokens
//! cost sled ~45 MiB of resident memory just to open and ~160 MiB once read (its page cache
//! overshoots `cache_capacity`), and each lookup ~6 µs (measured, release build). So sled
//! holds the counts in a few large values, and classification reads them from a table in memory
//! (never through sled), rebuilt at open:
//!
//! - a **snapshot** in the tree `filter_snapshot`: the model file format below (the same bytes
//!   `filter_export` writes) cut at record boundaries into values of at most 64 KiB, and
//! - a **journal** in the tree `filter_journal`: every training appends one entry (the exact
//!   updates applied) in the same transaction that writes the learned-message record and the
//!   new totals. At open the snapshot is loaded and the journal replayed (`Counts::updated`,
//!   `Totals::updated`), and the result must equal the totals on record.
//!
//! The table is the snapshot's record chunks as sled returned them (sled's values are
//! reference-counted: the table shares sled's cached copy instead of copying it; 28 bytes a
//! token, looked up by binary search over the chunks' first hashes, then within a chunk) plus a
//! hash map of the changes since the snapshot. sled 0.34's page cache in practice never evicts
//! these few large pages (its LRU has 256 shards), so a copy would double the model's memory.
//!
//! When the journal passes 4 MiB or 131,072 changed tokens, the next training writes a new
//! snapshot, then points the state at it and drops the journal entries it holds. Expiry and
//! import write a new snapshot directly. Token hashes are hashed words counted over many
//! messages, not personal data: the snapshot is not encrypted.
//!
//! ## Switching snapshots (crash safety)
//!
//! A new snapshot gets a seq above the live one (compaction: the last journal seq; expiry and
//! import: one past it); chunks an earlier failed attempt left under that seq are removed first.
//! Its chunks are written with plain inserts and flushed (fsync); only then is the `state` record
//! that names it written (one insert) and flushed; only after that are the old snapshot's chunks
//! and the journal entries the new snapshot holds removed. A crash before the state insert is
//! durable leaves the old state with its snapshot and journal untouched; a crash after it leaves
//! the new state with a complete, durable snapshot (and at worst journal entries it already
//! holds). At open, every chunk of a seq other than the state's snapshot (unfinished or replaced)
//! and every journal entry at or below it is removed. (Snapshot files under `DIR/filter/`, the
//! layout before this one, are not read: there was no deployed data to migrate.)
//!
//! # Records
//!
//! - `filter_meta`, key `state`: 81 bytes, little endian: `version u8 (1) | generation u64 |
//!   expiry epoch u64 | snapshot seq u64 (0: none, empty model) | last seq u64 | ham_messages u64
//!   | spam_messages u64 | ham_tokens u64 | spam_tokens u64 | distinct_tokens u64 | lr_bias i64`.
//!   Absent means an empty model. Totals are those of the live model (snapshot + journal). The
//!   generation goes up by one with every import; the expiry epoch with every expiry that
//!   removed tokens.
//! - `filter_snapshot`: key `seq u64 | chunk u32` (big endian; chunks numbered from 0). Values,
//!   in order, are the snapshot's model file: chunk 0 its 64-byte header, then the records, 2,340
//!   a chunk (65,520 bytes; the last record chunk may hold fewer, none is empty), then the
//!   32-byte checksum alone. Loading checks that every chunk is there with exactly that length
//!   for the header's count, and every check of an import. Only the chunks of the state's
//!   snapshot seq are current.
//! - `filter_journal`: key seq (u64 big endian, contiguous after the snapshot seq up to the last
//!   seq). Value: `version u8 (1) | update count u8 | updates`, each `label u8 (0 ham, 1 spam) |
//!   direction u8 (0 learn, 1 unlearn) | lr_step i64 | day u32 | n u32 | n token hashes u64`,
//!   little endian. Token hashes only.
//! - `learned`: key `HMAC-SHA256(index key, "learned", fingerprint)` (the fingerprint, a SHA-256
//!   of the raw message, is never stored). Value: postcard of `LearnedRecord`: `label`,
//!   `lr_step` (the [`TrainReceipt`], needed to untrain exactly), `owner` (contact id, for
//!   erasure), `day`, `generation`, `expiry_epoch`. Ids and numbers only, no personal data. A
//!   record of another generation than the live model is stale (the model it was learned into
//!   was replaced by an import) and reads as absent.
//! - `quarantine`: key message id (u64 big endian). Value: `frame(QuarantineMeta { ticket,
//!   contact, created_at }, sealed(frame(QuarantineSecret { subject }, [])))` under the sender's
//!   key. The message itself is in `messages` with no ticket.
//!
//! Training (train, untrain, relabel) runs the pure classifier against an overlay that reads the
//! table and buffers the updates; the journal entry, the new totals and the learned-message
//! record are then written in one sled transaction, applied to the table, and made durable
//! ([`Store::filter_train_batch`] commits one transaction per message and flushes once at the
//! end). Training, expiry, export, import and compaction are serialised by one mutex;
//! classification takes a shared lock and reads memory only.
//!
//! # Expiry and totals
//!
//! [`Store::filter_expire`] removes token records; it subtracts their ham and spam counts from
//! `ham_tokens` and `spam_tokens` and one each from `distinct_tokens`, so those three stay the
//! sums over the stored records. `ham_messages`, `spam_messages` and `lr_bias` do not change (the
//! messages stay learned; only rare tokens of them are forgotten). Untraining a message learned
//! before an expiry skips the tokens that no longer hold a count for its label (they were
//! expired); the rest is subtracted exactly. A token expired and later learned again from other
//! messages may then keep one count too many for that message; expired tokens are rare ones, so
//! this is bounded and small.
//!
//! # Model file (export / import / snapshot)
//!
//! Portable between installations (no learned-message records, no personal data). All integers
//! little endian:
//!
//! ```text
//! offset  size  field
//!      0     4  magic "MRFM"
//!      4     2  version (1)
//!      6     2  flags (0; anything else is refused)
//!      8    48  totals: ham_messages u64, spam_messages u64, ham_tokens u64, spam_tokens u64,
//!               distinct_tokens u64, lr_bias i64
//!     56     8  record count N (u64; must equal distinct_tokens)
//!     64  28*N  records, strictly ascending by hash:
//!               hash u64, ham u32, spam u32, last_seen_day u32, lr_weight i64
//!               (ham + spam > 0 in every record)
//!  64+28N   32  SHA-256 of every byte before it
//! ```
//!
//! Import checks the magic, version, flags, the count (at most [`MAX_MODEL_TOKENS`], equal to
//! `distinct_tokens`), the order and non-zero counts of the records, that `ham_tokens` and
//! `spam_tokens` are the sums of the records' counts, the checksum, and that nothing follows it.
//! The input is streamed into the chunks of a new snapshot while it is checked (a chunk at a
//! time: memory does not depend on what the count says); the snapshot is then loaded back from
//! sled with every check again (the table shares its chunks) and only then does one write switch
//! the model (and the generation, which retires every learned-message
//! record). On any error the new chunks are removed and the live model is untouched.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use mailroom_spamfilter::store::BuildIdentityHasher;
use mailroom_spamfilter::{
    Classifier, Counts, Direction, Features, FilterError, Label, TokenStore, Totals, TrainReceipt,
    Update,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::Transactional;

use crate::model::{ContactId, MessageKey, MessageView, TicketId};
use crate::records::{be, decode, encode, from_be, unframe, QuarantineMeta};
use crate::spool::{abort, tx_error};
use crate::{crypto, Result, Store, StoreError, Trees};

/// What [`Store::filter_train`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainOutcome {
    /// Learned now.
    Learned,
    /// Already learned with this label: nothing changed.
    AlreadyLearned,
    /// Had been learned with the other label: untrained that first, then learned this one.
    Relabeled,
}

/// Model size and counts for `filter stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FilterStats {
    /// Ham messages learned.
    pub ham_messages: u64,
    /// Spam messages learned.
    pub spam_messages: u64,
    /// Distinct tokens with counts.
    pub tokens: u64,
    /// Learned-message records (for idempotent train/untrain).
    pub learned_records: u64,
    /// Bytes the whole store takes on disk.
    pub bytes_on_disk: u64,
}

/// Magic bytes at the start of a model file.
pub const MODEL_MAGIC: &[u8; 4] = b"MRFM";
/// Version of the model file format written by [`write_model`].
pub const MODEL_VERSION: u16 = 1;
/// Largest record count a model file may declare (the model is held in memory, 28 bytes a
/// token).
pub const MAX_MODEL_TOKENS: u64 = 50_000_000;

const MODEL_HEADER_LEN: usize = 64;
const MODEL_RECORD_LEN: usize = 28;
const MODEL_TRAILER_LEN: usize = 32;
const TOTALS_LEN: usize = 48;
const STATE_KEY: &[u8] = b"state";
const STATE_VERSION: u8 = 1;
const STATE_LEN: usize = 1 + 4 * 8 + TOTALS_LEN;
const JOURNAL_VERSION: u8 = 1;
/// A snapshot is written when the journal holds this many bytes...
const JOURNAL_COMPACT_BYTES: u64 = 4 << 20;
/// ... or this many tokens changed since the last snapshot.
const DELTA_COMPACT_ENTRIES: usize = 1 << 17;

/// A learned-message record (`learned` tree, postcard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LearnedRecord {
    /// Label learned.
    pub label: Label,
    /// The logistic-regression step of the training ([`TrainReceipt::lr_step`]).
    pub lr_step: i64,
    /// The contact the message belongs to, when known.
    pub owner: Option<u64>,
    /// Day it was learned.
    pub day: u32,
    /// Model generation it was learned into.
    pub generation: u64,
    /// Expiry epoch of the model when it was learned.
    pub expiry_epoch: u64,
}

/// The `filter_meta` `state` record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ModelState {
    generation: u64,
    expiry_epoch: u64,
    /// Seq of the snapshot file (0: none, the model starts empty).
    snapshot: u64,
    /// Seq of the last journal entry (or of the snapshot, if none follows it).
    last_seq: u64,
    totals: Totals,
}

fn put_totals(out: &mut Vec<u8>, t: &Totals) {
    for v in [
        t.ham_messages,
        t.spam_messages,
        t.ham_tokens,
        t.spam_tokens,
        t.distinct_tokens,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&t.lr_bias.to_le_bytes());
}

/// Little-endian u64 at `at` (the caller checked the length).
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Little-endian u32 at `at` (the caller checked the length).
fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Totals from 48 bytes (the caller checked the length).
fn get_totals(b: &[u8]) -> Totals {
    Totals {
        ham_messages: le_u64(b, 0),
        spam_messages: le_u64(b, 8),
        ham_tokens: le_u64(b, 16),
        spam_tokens: le_u64(b, 24),
        distinct_tokens: le_u64(b, 32),
        lr_bias: le_u64(b, 40) as i64,
    }
}

impl ModelState {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(STATE_LEN);
        out.push(STATE_VERSION);
        for v in [
            self.generation,
            self.expiry_epoch,
            self.snapshot,
            self.last_seq,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        put_totals(&mut out, &self.totals);
        out
    }

    fn decode(b: &[u8]) -> Result<ModelState> {
        if b.len() != STATE_LEN || b[0] != STATE_VERSION {
            return Err(StoreError::Corrupt("filter state record".into()));
        }
        Ok(ModelState {
            generation: le_u64(b, 1),
            expiry_epoch: le_u64(b, 9),
            snapshot: le_u64(b, 17),
            last_seq: le_u64(b, 25),
            totals: get_totals(&b[33..]),
        })
    }
}

/// Record bytes (without the hash) of the model file.
fn counts_bytes(c: &Counts) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[0..4].copy_from_slice(&c.ham.to_le_bytes());
    out[4..8].copy_from_slice(&c.spam.to_le_bytes());
    out[8..12].copy_from_slice(&c.last_seen_day.to_le_bytes());
    out[12..20].copy_from_slice(&c.lr_weight.to_le_bytes());
    out
}

fn counts_from_bytes(b: &[u8]) -> Counts {
    Counts {
        ham: le_u32(b, 0),
        spam: le_u32(b, 4),
        last_seen_day: le_u32(b, 8),
        lr_weight: le_u64(b, 12) as i64,
    }
}

/// Records in each record chunk of a snapshot (65,520 bytes; the last record chunk may hold
/// fewer).
const RECORDS_PER_CHUNK: usize = 2_340;

/// Bytes of chunk `index` of a snapshot of `count` records, 0 past the last (see the module
/// docs: header, record chunks, checksum).
fn chunk_len(count: u64, index: u32) -> usize {
    let per = RECORDS_PER_CHUNK as u64;
    let record_chunks = count.div_ceil(per);
    match u64::from(index) {
        0 => MODEL_HEADER_LEN,
        i if i <= record_chunks => ((count - (i - 1) * per).min(per) as usize) * MODEL_RECORD_LEN,
        i if i == record_chunks + 1 => MODEL_TRAILER_LEN,
        _ => 0,
    }
}

/// The token counts in memory: a base (the record chunks of the live snapshot, shared with
/// sled's cache: not a copy) and the changes since (all-zero counts: removed).
#[derive(Default)]
struct TokenTable {
    /// Record chunks: each a whole number of 28-byte records, ascending by hash.
    chunks: Vec<sled::IVec>,
    /// Hash of the first record of each chunk.
    firsts: Vec<u64>,
    /// Records in the base.
    len: u64,
    delta: HashMap<u64, Counts, BuildIdentityHasher>,
}

/// Hash of record `i` of a record chunk.
fn record_hash(chunk: &[u8], i: usize) -> u64 {
    le_u64(chunk, i * MODEL_RECORD_LEN)
}

/// Counts of record `i` of a record chunk.
fn record_counts(chunk: &[u8], i: usize) -> Counts {
    counts_from_bytes(&chunk[i * MODEL_RECORD_LEN + 8..(i + 1) * MODEL_RECORD_LEN])
}

impl TokenTable {
    /// A table over the record chunks of a checked snapshot.
    fn from_chunks(chunks: Vec<sled::IVec>) -> TokenTable {
        TokenTable {
            firsts: chunks.iter().map(|c| record_hash(c, 0)).collect(),
            len: chunks
                .iter()
                .map(|c| (c.len() / MODEL_RECORD_LEN) as u64)
                .sum(),
            chunks,
            delta: HashMap::default(),
        }
    }

    fn base_get(&self, hash: u64) -> Counts {
        let i = self.firsts.partition_point(|&f| f <= hash);
        let Some(chunk) = i.checked_sub(1).map(|i| &self.chunks[i][..]) else {
            return Counts::default();
        };
        let (mut lo, mut hi) = (0, chunk.len() / MODEL_RECORD_LEN);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match record_hash(chunk, mid).cmp(&hash) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return record_counts(chunk, mid),
            }
        }
        Counts::default()
    }

    fn get(&self, hash: u64) -> Counts {
        if !self.delta.is_empty() {
            if let Some(c) = self.delta.get(&hash) {
                return *c;
            }
        }
        self.base_get(hash)
    }

    fn set(&mut self, hash: u64, counts: Counts) {
        self.delta.insert(hash, counts);
    }

    /// Every token with a count, in ascending hash order.
    fn merged(&self) -> Merged<'_> {
        let mut delta: Vec<(u64, Counts)> = self.delta.iter().map(|(h, c)| (*h, *c)).collect();
        delta.sort_unstable_by_key(|d| d.0);
        Merged {
            chunks: &self.chunks,
            chunk: 0,
            i: 0,
            delta,
            j: 0,
        }
    }
}

/// Iterator over base and changes in hash order, skipping removed tokens.
struct Merged<'a> {
    chunks: &'a [sled::IVec],
    chunk: usize,
    /// Record in `chunks[chunk]`.
    i: usize,
    delta: Vec<(u64, Counts)>,
    j: usize,
}

impl Merged<'_> {
    fn base(&mut self) -> Option<u64> {
        while let Some(c) = self.chunks.get(self.chunk) {
            if self.i < c.len() / MODEL_RECORD_LEN {
                return Some(record_hash(c, self.i));
            }
            self.chunk += 1;
            self.i = 0;
        }
        None
    }
}

impl Iterator for Merged<'_> {
    type Item = (u64, Counts);

    fn next(&mut self) -> Option<(u64, Counts)> {
        loop {
            let base = self.base();
            let change = self.delta.get(self.j).copied();
            let (hash, counts) = match (base, change) {
                (None, None) => return None,
                (Some(b), Some((h, c))) if h == b => {
                    self.i += 1;
                    self.j += 1;
                    (h, c)
                }
                (b, Some((h, c))) if b.is_none_or(|b| h < b) => {
                    self.j += 1;
                    (h, c)
                }
                (Some(b), _) => {
                    let c = record_counts(&self.chunks[self.chunk], self.i);
                    self.i += 1;
                    (b, c)
                }
                (None, Some(_)) => unreachable!("handled by the arm above"),
            };
            if counts.total() > 0 {
                return Some((hash, counts));
            }
        }
    }
}

/// One update as journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
struct JournalUpdate {
    label: Label,
    direction: Direction,
    lr_step: i64,
    day: u32,
    hashes: Vec<u64>,
}

impl JournalUpdate {
    fn as_update(&self) -> Update<'_> {
        Update {
            hashes: &self.hashes,
            label: self.label,
            direction: self.direction,
            lr_step: self.lr_step,
            day: self.day,
        }
    }
}

fn encode_journal(updates: &[JournalUpdate]) -> Vec<u8> {
    let len = 2 + updates
        .iter()
        .map(|u| 18 + 8 * u.hashes.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.push(JOURNAL_VERSION);
    out.push(updates.len() as u8);
    for u in updates {
        out.push(match u.label {
            Label::Ham => 0,
            Label::Spam => 1,
        });
        out.push(match u.direction {
            Direction::Learn => 0,
            Direction::Unlearn => 1,
        });
        out.extend_from_slice(&u.lr_step.to_le_bytes());
        out.extend_from_slice(&u.day.to_le_bytes());
        out.extend_from_slice(&(u.hashes.len() as u32).to_le_bytes());
        for h in &u.hashes {
            out.extend_from_slice(&h.to_le_bytes());
        }
    }
    out
}

fn decode_journal(b: &[u8]) -> Result<Vec<JournalUpdate>> {
    let bad = || StoreError::Corrupt("filter journal entry".into());
    if b.len() < 2 || b[0] != JOURNAL_VERSION {
        return Err(bad());
    }
    let mut updates = Vec::with_capacity(usize::from(b[1]));
    let mut at = 2;
    for _ in 0..b[1] {
        let head = b.get(at..at + 18).ok_or_else(bad)?;
        let label = match head[0] {
            0 => Label::Ham,
            1 => Label::Spam,
            _ => return Err(bad()),
        };
        let direction = match head[1] {
            0 => Direction::Learn,
            1 => Direction::Unlearn,
            _ => return Err(bad()),
        };
        let n = le_u32(head, 14) as usize;
        at += 18;
        let body = b
            .get(
                at..at
                    .checked_add(n.checked_mul(8).ok_or_else(bad)?)
                    .ok_or_else(bad)?,
            )
            .ok_or_else(bad)?;
        updates.push(JournalUpdate {
            label,
            direction,
            lr_step: le_u64(head, 2) as i64,
            day: le_u32(head, 10),
            hashes: body.chunks_exact(8).map(|c| le_u64(c, 0)).collect(),
        });
        at += 8 * n;
    }
    if at != b.len() {
        return Err(bad());
    }
    Ok(updates)
}

/// The table, the state and the journal size.
struct Model {
    table: TokenTable,
    state: ModelState,
    /// Bytes of journal entries after the snapshot.
    journal_bytes: u64,
}

/// The filter's part of a [`Store`].
pub(crate) struct FilterState {
    /// Serialises everything that changes the model (training, expiry, import, compaction) and
    /// export.
    train: Mutex<()>,
    /// Replaced only while `train` is held.
    model: RwLock<Model>,
}

/// Key of chunk `chunk` of snapshot `seq` in `filter_snapshot`.
fn chunk_key(seq: u64, chunk: u32) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&seq.to_be_bytes());
    key[8..].copy_from_slice(&chunk.to_be_bytes());
    key
}

/// Remove every key `keys` yields from `tree`.
fn remove_keys(
    tree: &sled::Tree,
    keys: impl Iterator<Item = sled::Result<sled::IVec>>,
) -> Result<()> {
    for key in keys {
        tree.remove(key?)?;
    }
    Ok(())
}

/// Remove every chunk of snapshot `seq`.
fn remove_snapshot(snapshots: &sled::Tree, seq: u64) -> Result<()> {
    remove_keys(snapshots, snapshots.scan_prefix(be(seq)).keys())
}

impl FilterState {
    /// Load the snapshot, replay the journal, check the totals, and drop leftovers of an
    /// interrupted snapshot, import or switch.
    pub(crate) fn open(t: &Trees) -> Result<FilterState> {
        let state = match t.filter_meta.get(STATE_KEY)? {
            Some(v) => ModelState::decode(&v)?,
            None => ModelState::default(),
        };
        let (mut totals, mut table) = if state.snapshot == 0 {
            (Totals::default(), TokenTable::default())
        } else {
            load_snapshot(&t.filter_snapshot, state.snapshot)?
        };
        let mut journal_bytes = 0u64;
        let mut next = state.snapshot + 1;
        for item in t.filter_journal.range(be(state.snapshot + 1)..) {
            let (key, value) = item?;
            if from_be(&key)? != next {
                return Err(StoreError::Corrupt(format!(
                    "filter journal: entry {} where {next} was expected",
                    from_be(&key)?
                )));
            }
            let updates = decode_journal(&value)?;
            apply_updates(&mut table, &mut totals, &updates)?;
            journal_bytes += value.len() as u64;
            next += 1;
        }
        if next != state.last_seq + 1 || totals != state.totals {
            return Err(StoreError::Corrupt(format!(
                "filter model: snapshot {} and journal up to {} do not give the recorded totals",
                state.snapshot,
                next - 1
            )));
        }
        // Leftovers: journal entries inside the snapshot, chunks of other snapshots (replaced,
        // or written but never switched to). Keys of `state.snapshot` sort between the two
        // ranges.
        remove_keys(
            &t.filter_journal,
            t.filter_journal.range(..=be(state.snapshot)).keys(),
        )?;
        let snapshots = &t.filter_snapshot;
        let stale = snapshots
            .range(..be(state.snapshot))
            .keys()
            .chain(snapshots.range(be(state.snapshot + 1)..).keys());
        let mut removed = 0u64;
        for key in stale {
            snapshots.remove(key?)?;
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(chunks = removed, "removed chunks of stale model snapshots");
        }
        Ok(FilterState {
            train: Mutex::new(()),
            model: RwLock::new(Model {
                table,
                state,
                journal_bytes,
            }),
        })
    }
}

/// Apply journaled updates to `table` and `totals` (all or nothing).
fn apply_updates(
    table: &mut TokenTable,
    totals: &mut Totals,
    updates: &[JournalUpdate],
) -> Result<()> {
    let mut overlay = Overlay::new(table, *totals);
    for u in updates {
        overlay.apply(&u.as_update())?;
    }
    let Overlay {
        changed,
        totals: after,
        ..
    } = overlay;
    for (h, c) in changed {
        table.set(h, c);
    }
    *totals = after;
    Ok(())
}

/// Map a classifier error to a store error (the store's own errors come back as they were).
fn filter_error(e: FilterError) -> StoreError {
    match e {
        FilterError::Store(inner) => match inner.downcast::<StoreError>() {
            Ok(e) => *e,
            Err(other) => StoreError::Filter(other.to_string()),
        },
        other => StoreError::Filter(other.to_string()),
    }
}

/// A [`TokenStore`] over the table that buffers writes: the pure classifier trains and untrains
/// against it, and the store then journals and applies the result.
struct Overlay<'a> {
    table: &'a TokenTable,
    totals: Totals,
    /// Counts after the buffered updates (all zero: removed).
    changed: HashMap<u64, Counts, BuildIdentityHasher>,
    /// The updates, in order, for the journal.
    updates: Vec<JournalUpdate>,
}

impl<'a> Overlay<'a> {
    fn new(table: &'a TokenTable, totals: Totals) -> Self {
        Overlay {
            table,
            totals,
            changed: HashMap::default(),
            updates: Vec::new(),
        }
    }

    fn get(&self, hash: u64) -> Counts {
        match self.changed.get(&hash) {
            Some(c) => *c,
            None => self.table.get(hash),
        }
    }
}

impl TokenStore for Overlay<'_> {
    type Error = StoreError;

    fn get_counts(&self, hashes: &[u64], out: &mut Vec<Counts>) -> Result<()> {
        out.clear();
        out.extend(hashes.iter().map(|&h| self.get(h)));
        Ok(())
    }

    fn totals(&self) -> Result<Totals> {
        Ok(self.totals)
    }

    fn apply(&mut self, update: &Update<'_>) -> Result<()> {
        // Everything is checked before anything is buffered, so a refused update changes
        // nothing.
        let mut after = Vec::with_capacity(update.hashes.len());
        let (mut created, mut removed) = (0u64, 0u64);
        for &h in update.hashes {
            let before = self.get(h);
            let next = before.updated(update).ok_or_else(|| {
                StoreError::Filter(format!(
                    "{} count of token {h:#018x} would go below zero",
                    update.label
                ))
            })?;
            created += u64::from(before.total() == 0);
            removed += u64::from(next.total() == 0);
            after.push((h, next));
        }
        self.totals = self
            .totals
            .updated(update, created, removed)
            .ok_or_else(|| StoreError::Filter("a model total would go below zero".into()))?;
        self.changed.extend(after);
        self.updates.push(JournalUpdate {
            label: update.label,
            direction: update.direction,
            lr_step: update.lr_step,
            day: update.day,
            hashes: update.hashes.to_vec(),
        });
        Ok(())
    }
}

/// A read-only view of the token counts for classification (implements [`TokenStore`]; its
/// `apply` refuses: training goes through [`Store::filter_train`]).
///
/// Reads are from memory. A classification that races a training may see that training's
/// counts with the totals from just before it (or the reverse), never a half-applied message.
pub struct TokenView {
    store: Store,
}

impl TokenStore for TokenView {
    type Error = crate::StoreError;

    fn get_counts(&self, hashes: &[u64], out: &mut Vec<Counts>) -> Result<(), Self::Error> {
        out.clear();
        let model = self.store.model_read();
        out.extend(hashes.iter().map(|&h| model.table.get(h)));
        Ok(())
    }

    fn totals(&self) -> Result<Totals, Self::Error> {
        Ok(self.store.model_read().state.totals)
    }

    fn apply(&mut self, _update: &Update<'_>) -> Result<(), Self::Error> {
        Err(StoreError::Filter(
            "the token view is read-only: train through Store::filter_train".into(),
        ))
    }
}

/// Writes a model file (see the module docs) incrementally.
struct ModelWriter<'a> {
    out: BufWriter<&'a mut dyn Write>,
    hasher: Sha256,
    expected: u64,
    written: u64,
    last: Option<u64>,
}

fn write_err(e: std::io::Error) -> StoreError {
    StoreError::Io(format!("writing the model: {e}"))
}

impl<'a> ModelWriter<'a> {
    fn new(out: &'a mut dyn Write, totals: &Totals) -> Result<Self> {
        let mut header = Vec::with_capacity(MODEL_HEADER_LEN);
        header.extend_from_slice(MODEL_MAGIC);
        header.extend_from_slice(&MODEL_VERSION.to_le_bytes());
        header.extend_from_slice(&0u16.to_le_bytes());
        put_totals(&mut header, totals);
        header.extend_from_slice(&totals.distinct_tokens.to_le_bytes());
        let mut w = ModelWriter {
            out: BufWriter::with_capacity(64 * 1024, out),
            hasher: Sha256::new(),
            expected: totals.distinct_tokens,
            written: 0,
            last: None,
        };
        w.put(&header)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.out.write_all(bytes).map_err(write_err)
    }

    fn record(&mut self, hash: u64, c: &Counts) -> Result<()> {
        if self.last.is_some_and(|last| last >= hash) {
            return Err(StoreError::Filter(format!(
                "model records must be in ascending hash order ({hash:#018x})"
            )));
        }
        if c.total() == 0 {
            return Err(StoreError::Filter(format!(
                "token {hash:#018x} has no count: absent tokens are not written"
            )));
        }
        self.last = Some(hash);
        self.written += 1;
        let mut rec = [0u8; MODEL_RECORD_LEN];
        rec[..8].copy_from_slice(&hash.to_le_bytes());
        rec[8..].copy_from_slice(&counts_bytes(c));
        self.put(&rec)
    }

    fn finish(mut self) -> Result<u64> {
        if self.written != self.expected {
            return Err(StoreError::Filter(format!(
                "{} token records but the totals say {} distinct tokens",
                self.written, self.expected
            )));
        }
        let digest: [u8; 32] = self.hasher.finalize_reset().into();
        self.out.write_all(&digest).map_err(write_err)?;
        self.out.flush().map_err(write_err)?;
        Ok(self.written)
    }
}

/// Write a model file (the format [`Store::filter_export`] writes and [`Store::filter_import`]
/// reads; see the module docs) from `totals` and `records`, which must be in strictly ascending
/// hash order, without all-zero counts, and number `totals.distinct_tokens`. For building a
/// model without a store (e.g. the starter model from a `MemoryStore`: sort its records by
/// hash). Returns the number of records. On an error the output is incomplete and must be
/// discarded.
pub fn write_model(
    totals: &Totals,
    records: impl IntoIterator<Item = (u64, Counts)>,
    out: &mut dyn Write,
) -> Result<u64> {
    let mut w = ModelWriter::new(out, totals)?;
    for (hash, counts) in records {
        w.record(hash, &counts)?;
    }
    w.finish()
}

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::InvalidModel(msg.into())
}

/// A read error: bad data (a snapshot's chunks out of order) is an invalid model, anything else
/// I/O.
fn read_err(e: std::io::Error) -> StoreError {
    if e.kind() == ErrorKind::InvalidData {
        invalid(e.to_string())
    } else {
        StoreError::Io(format!("reading the model: {e}"))
    }
}

/// Reads and checks a model file record by record.
struct ModelReader<R: Read> {
    r: R,
    hasher: Sha256,
    totals: Totals,
    count: u64,
    read: u64,
    last: Option<u64>,
    ham: u64,
    spam: u64,
}

impl<R: Read> ModelReader<R> {
    /// `read_exact`, with a short file reported as truncated.
    fn fill(&mut self, buf: &mut [u8], what: &dyn Fn() -> String) -> Result<()> {
        self.r.read_exact(buf).map_err(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                invalid(format!("truncated: the file ends in {}", what()))
            } else {
                read_err(e)
            }
        })
    }

    fn new(r: R) -> Result<Self> {
        let mut m = ModelReader {
            r,
            hasher: Sha256::new(),
            totals: Totals::default(),
            count: 0,
            read: 0,
            last: None,
            ham: 0,
            spam: 0,
        };
        let mut header = [0u8; MODEL_HEADER_LEN];
        m.fill(&mut header, &|| "the header".into())?;
        m.hasher.update(header);
        if &header[..4] != MODEL_MAGIC {
            return Err(invalid("not a mailroom model (bad magic)"));
        }
        let version = u16::from_le_bytes([header[4], header[5]]);
        if version != MODEL_VERSION {
            return Err(invalid(format!(
                "format version {version} (this build reads version {MODEL_VERSION})"
            )));
        }
        if header[6..8] != [0, 0] {
            return Err(invalid("unknown flags"));
        }
        m.totals = get_totals(&header[8..8 + TOTALS_LEN]);
        m.count = le_u64(&header, 56);
        if m.count > MAX_MODEL_TOKENS {
            return Err(invalid(format!(
                "{} records (at most {MAX_MODEL_TOKENS})",
                m.count
            )));
        }
        if m.count != m.totals.distinct_tokens {
            return Err(invalid(format!(
                "{} records but {} distinct tokens in the totals",
                m.count, m.totals.distinct_tokens
            )));
        }
        Ok(m)
    }

    /// The next record, checked for order and a non-zero count; `None` after the last.
    fn next_record(&mut self) -> Result<Option<(u64, Counts)>> {
        if self.read == self.count {
            return Ok(None);
        }
        let (n, count) = (self.read + 1, self.count);
        let mut rec = [0u8; MODEL_RECORD_LEN];
        self.fill(&mut rec, &|| format!("record {n} of {count}"))?;
        self.hasher.update(rec);
        let hash = le_u64(&rec, 0);
        let c = counts_from_bytes(&rec[8..]);
        if self.last.is_some_and(|l| l >= hash) {
            return Err(invalid(format!(
                "record {n} is out of order (hashes must ascend)"
            )));
        }
        if c.total() == 0 {
            return Err(invalid(format!("record {n} has no count")));
        }
        self.last = Some(hash);
        self.ham += u64::from(c.ham);
        self.spam += u64::from(c.spam);
        self.read = n;
        Ok(Some((hash, c)))
    }

    /// After the last record: the checksum, nothing after it, and the sums.
    fn finish(&mut self) -> Result<Totals> {
        if self.read != self.count {
            return Err(invalid("not every record was read"));
        }
        let mut digest = [0u8; MODEL_TRAILER_LEN];
        self.fill(&mut digest, &|| "the checksum".into())?;
        if self.hasher.finalize_reset()[..] != digest[..] {
            return Err(invalid("checksum mismatch (the file is damaged)"));
        }
        let mut extra = [0u8; 1];
        loop {
            match self.r.read(&mut extra) {
                Ok(0) => break,
                Ok(_) => return Err(invalid("data after the checksum")),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_err(e)),
            }
        }
        if self.ham != self.totals.ham_tokens || self.spam != self.totals.spam_tokens {
            return Err(invalid(
                "the token totals are not the sums of the records' counts",
            ));
        }
        Ok(self.totals)
    }
}

/// Cuts a snapshot's model file into chunks (see [`chunk_len`]) and inserts them into
/// `filter_snapshot` (`None`: only keeps them, for tests). Keeps the record chunks for the table.
struct ChunkWriter<'a> {
    tree: Option<&'a sled::Tree>,
    seq: u64,
    count: u64,
    next: u32,
    buf: Vec<u8>,
    records: Vec<sled::IVec>,
}

impl<'a> ChunkWriter<'a> {
    /// For a snapshot `seq` of `count` records.
    fn new(tree: Option<&'a sled::Tree>, seq: u64, count: u64) -> Self {
        ChunkWriter {
            tree,
            seq,
            count,
            next: 0,
            buf: Vec::with_capacity(chunk_len(count, 1).max(MODEL_HEADER_LEN)),
            records: Vec::new(),
        }
    }

    fn put_chunk(&mut self) -> std::io::Result<()> {
        let chunk = sled::IVec::from(&self.buf[..]);
        self.buf.clear();
        if let Some(tree) = self.tree {
            tree.insert(chunk_key(self.seq, self.next), chunk.clone())
                .map_err(std::io::Error::other)?;
        }
        if self.next > 0 && chunk_len(self.count, self.next + 1) > 0 {
            self.records.push(chunk);
        }
        self.next += 1;
        Ok(())
    }

    /// Check that the whole file was written; the record chunks.
    fn finish(self) -> Result<Vec<sled::IVec>> {
        if !self.buf.is_empty() || chunk_len(self.count, self.next) != 0 {
            return Err(StoreError::Filter("incomplete model snapshot".into()));
        }
        Ok(self.records)
    }
}

impl Write for ChunkWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let len = chunk_len(self.count, self.next);
        if len == 0 {
            return Err(std::io::Error::other("more bytes than the model holds"));
        }
        let n = data.len().min(len - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == len {
            self.put_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads a snapshot's model file back from its chunks, checking that they are numbered from 0
/// with no gap and each has the length [`chunk_len`] gives for the count in the header (an error
/// of kind `InvalidData` otherwise). Keeps the record chunks for the table.
struct ChunkReader {
    iter: sled::Iter,
    seq: u64,
    /// Record count from the header (read with chunk 0).
    count: u64,
    next: u32,
    cur: sled::IVec,
    pos: usize,
    records: Vec<sled::IVec>,
}

impl ChunkReader {
    fn new(snapshots: &sled::Tree, seq: u64) -> Self {
        ChunkReader {
            iter: snapshots.scan_prefix(be(seq)),
            seq,
            count: 0,
            next: 0,
            cur: sled::IVec::default(),
            pos: 0,
            records: Vec::new(),
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let bad = |m: String| std::io::Error::new(ErrorKind::InvalidData, m);
        while self.pos == self.cur.len() {
            let n = self.next;
            let len = if n == 0 {
                MODEL_HEADER_LEN
            } else {
                chunk_len(self.count, n)
            };
            let Some(item) = self.iter.next() else {
                return if len == 0 {
                    Ok(0)
                } else {
                    Err(bad(format!("chunk {n} is missing")))
                };
            };
            let (key, value) = item.map_err(std::io::Error::other)?;
            if len == 0 {
                return Err(bad(format!("a chunk after the last ({n})")));
            }
            if key[..] != chunk_key(self.seq, n) {
                return Err(bad(format!("chunk {n} is missing")));
            }
            if value.len() != len {
                return Err(bad(format!(
                    "chunk {n} has {} bytes, not {len}",
                    value.len()
                )));
            }
            if n == 0 {
                self.count = le_u64(&value, 56).min(MAX_MODEL_TOKENS);
            } else if chunk_len(self.count, n + 1) > 0 {
                self.records.push(value.clone());
            }
            self.next = n + 1;
            self.cur = value;
            self.pos = 0;
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Load and check snapshot `seq` from `filter_snapshot`: its totals and a table over its record
/// chunks (sled's values, not copies).
fn load_snapshot(snapshots: &sled::Tree, seq: u64) -> Result<(Totals, TokenTable)> {
    let corrupt = |e: StoreError| match e {
        StoreError::InvalidModel(m) => StoreError::Corrupt(format!("model snapshot {seq}: {m}")),
        other => other,
    };
    let mut reader = ModelReader::new(ChunkReader::new(snapshots, seq)).map_err(corrupt)?;
    while reader.next_record().map_err(corrupt)?.is_some() {}
    let totals = reader.finish().map_err(corrupt)?;
    Ok((totals, TokenTable::from_chunks(reader.r.records)))
}

/// Total size of the regular files under `dir` (0 if it does not exist).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

impl Store {
    fn train_lock(&self) -> MutexGuard<'_, ()> {
        self.inner
            .filter
            .train
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn model_read(&self) -> RwLockReadGuard<'_, Model> {
        self.inner
            .filter
            .model
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn model_write(&self) -> RwLockWriteGuard<'_, Model> {
        self.inner
            .filter
            .model
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn learned_key(&self, fingerprint: &[u8; 32]) -> [u8; 32] {
        crypto::index_hash(self.inner.keys.index(), "learned", &[fingerprint])
    }

    /// The raw learned record under `key` and, if it belongs to the live model, its contents.
    fn learned_record(
        &self,
        key: &[u8; 32],
        state: &ModelState,
    ) -> Result<(Option<sled::IVec>, Option<LearnedRecord>)> {
        let raw = self.inner.t.learned.get(key)?;
        let record = match &raw {
            Some(v) => {
                let r: LearnedRecord = decode(v)?;
                (r.generation == state.generation).then_some(r)
            }
            None => None,
        };
        Ok((raw, record))
    }

    /// Buffer the untraining of a learned message in `overlay`.
    fn unlearn(
        overlay: &mut Overlay<'_>,
        classifier: &Classifier,
        features: &Features,
        r: &LearnedRecord,
        state: &ModelState,
    ) -> Result<()> {
        let receipt = TrainReceipt {
            label: r.label,
            lr_step: r.lr_step,
        };
        if r.expiry_epoch == state.expiry_epoch {
            return classifier
                .untrain(overlay, features, &receipt)
                .map_err(filter_error);
        }
        // Tokens were expired since it was learned: take it out of the tokens that still hold it.
        let kept: Vec<u64> = features
            .hashes()
            .iter()
            .copied()
            .filter(|&h| {
                let c = overlay.get(h);
                match r.label {
                    Label::Ham => c.ham > 0,
                    Label::Spam => c.spam > 0,
                }
            })
            .collect();
        overlay.apply(&Update {
            hashes: &kept,
            label: r.label,
            direction: Direction::Unlearn,
            lr_step: r.lr_step,
            day: 0,
        })
    }

    /// Journal what an overlay buffered, with the new totals and the learned record (`None`:
    /// remove it), in one transaction, provided the learned record still is `expected`, and
    /// apply it to the table. Not yet durable: the caller flushes (then
    /// [`Store::finish_training`]). Returns whether a snapshot is due.
    #[allow(clippy::too_many_arguments)]
    fn commit_training(
        &self,
        state: ModelState,
        changed: HashMap<u64, Counts, BuildIdentityHasher>,
        totals: Totals,
        updates: &[JournalUpdate],
        key: &[u8; 32],
        expected: Option<sled::IVec>,
        record: Option<Vec<u8>>,
    ) -> Result<bool> {
        let seq = state.last_seq + 1;
        let entry = encode_journal(updates);
        let new_state = ModelState {
            last_seq: seq,
            totals,
            ..state
        };
        let state_bytes = new_state.encode();
        let t = &self.inner.t;
        (&t.filter_meta, &t.filter_journal, &t.learned)
            .transaction(|(meta, journal, learned)| {
                if learned.get(key)? != expected {
                    return Err(abort(StoreError::Filter(
                        "the learned-message record changed during training".into(),
                    )));
                }
                journal.insert(&be(seq), entry.as_slice())?;
                meta.insert(STATE_KEY, state_bytes.as_slice())?;
                match &record {
                    Some(r) => {
                        learned.insert(&key[..], r.as_slice())?;
                    }
                    None => {
                        learned.remove(&key[..])?;
                    }
                }
                Ok(())
            })
            .map_err(tx_error)?;
        let mut model = self.model_write();
        for (h, c) in changed {
            model.table.set(h, c);
        }
        model.state = new_state;
        model.journal_bytes += entry.len() as u64;
        Ok(model.journal_bytes >= JOURNAL_COMPACT_BYTES
            || model.table.delta.len() >= DELTA_COMPACT_ENTRIES)
    }

    /// Make the trainings committed so far durable, then write a snapshot if `compact` (a
    /// failed snapshot is logged and tried again after the next training: the trainings are
    /// durable in the journal). The caller holds the train lock.
    fn finish_training(&self, compact: bool) -> Result<()> {
        self.inner.flusher.durable_blocking(false)?;
        if compact {
            if let Err(e) = self.compact_locked() {
                tracing::warn!(error = %e, "cannot write a model snapshot");
            }
        }
        Ok(())
    }

    /// Write a snapshot of the model and drop the journal it holds. The caller holds the train
    /// lock.
    fn compact_locked(&self) -> Result<()> {
        let model = self.model_read();
        let state = model.state;
        if state.last_seq == state.snapshot {
            return Ok(());
        }
        let seq = state.last_seq;
        let chunks = self.write_snapshot(seq, &state.totals, model.table.merged())?;
        drop(model);
        let new_state = ModelState {
            snapshot: seq,
            ..state
        };
        self.switch_state(&new_state)?;
        {
            // The train lock is held: the table did not change since it was written out.
            let mut model = self.model_write();
            model.table = TokenTable::from_chunks(chunks);
            model.state = new_state;
            model.journal_bytes = 0;
        }
        self.drop_old_model(state.snapshot, seq);
        Ok(())
    }

    /// Write the chunks of snapshot `seq` (not yet durable, not yet current; see the module
    /// docs); returns its record chunks. `seq` is above the live snapshot; chunks a failed
    /// attempt left under it are replaced. On failure what was written is removed.
    fn write_snapshot(
        &self,
        seq: u64,
        totals: &Totals,
        records: impl Iterator<Item = (u64, Counts)>,
    ) -> Result<Vec<sled::IVec>> {
        let snapshots = &self.inner.t.filter_snapshot;
        let written = remove_snapshot(snapshots, seq).and_then(|()| {
            let mut chunks = ChunkWriter::new(Some(snapshots), seq, totals.distinct_tokens);
            write_model(totals, records, &mut chunks)?;
            chunks.finish()
        });
        if written.is_err() {
            let _ = remove_snapshot(snapshots, seq);
        }
        written
    }

    /// Make the snapshot `state` names (written by [`Store::write_snapshot`]) current: flush its
    /// chunks, then write the state and flush it. If it fails before the state is written, the
    /// chunks are removed; after, they stay (the state may be durable; `FilterState::open`
    /// removes whichever snapshot the state on disk does not name).
    fn switch_state(&self, state: &ModelState) -> Result<()> {
        let snapshots = &self.inner.t.filter_snapshot;
        let written = self.inner.flusher.durable_blocking(false).and_then(|()| {
            self.inner
                .t
                .filter_meta
                .insert(STATE_KEY, state.encode())
                .map_err(StoreError::from)
        });
        if let Err(e) = written {
            let _ = remove_snapshot(snapshots, state.snapshot);
            return Err(e);
        }
        self.inner.flusher.durable_blocking(false)
    }

    /// After switching to snapshot `seq`: drop the journal entries it holds and the old
    /// snapshot's chunks (best effort; `FilterState::open` finishes it after a crash).
    fn drop_old_model(&self, old_snapshot: u64, seq: u64) {
        let t = &self.inner.t;
        let journal = remove_keys(&t.filter_journal, t.filter_journal.range(..=be(seq)).keys());
        if let Err(e) = journal {
            tracing::warn!(error = %e, "cannot drop journal entries");
        }
        if old_snapshot != 0 && old_snapshot != seq {
            if let Err(e) = remove_snapshot(&t.filter_snapshot, old_snapshot) {
                tracing::warn!(error = %e, seq = old_snapshot, "cannot remove an old snapshot");
            }
        }
    }

    /// A view of the token counts for classifying.
    pub fn filter_tokens(&self) -> TokenView {
        TokenView {
            store: self.clone(),
        }
    }

    /// Train `features` as `label`, idempotently, keyed by `fingerprint` (SHA-256 of the raw
    /// message): the same label twice is a no-op; the other label untrains the old one first.
    /// Counts, totals and the learned-message record change in one transaction. `owner` is the
    /// contact the message belongs to (so erasure can remove the record), when known.
    pub fn filter_train(
        &self,
        classifier: &Classifier,
        features: &Features,
        fingerprint: &[u8; 32],
        label: Label,
        owner: Option<ContactId>,
        day: u32,
    ) -> Result<TrainOutcome> {
        let _gate = self.writing();
        let _train = self.train_lock();
        let (outcome, compact) =
            self.train_locked(classifier, features, fingerprint, label, owner, day)?;
        if outcome != TrainOutcome::AlreadyLearned {
            self.finish_training(compact)?;
        }
        Ok(outcome)
    }

    /// Train many messages, each exactly as [`Store::filter_train`] would (idempotent, relabel,
    /// one transaction per message with its learned-message record), in order, with one flush
    /// (fsync) at the end instead of one per message: for bulk training. The same message twice
    /// in `items` is learned once (the second is [`TrainOutcome::AlreadyLearned`]). Items are
    /// `(features, fingerprint, label, owner)`; outcomes are in the same order.
    ///
    /// On an error the messages before the failing one stay learned (and are made durable
    /// before the error is returned); the failing one and those after it change nothing.
    pub fn filter_train_batch(
        &self,
        classifier: &Classifier,
        items: &[(Features, [u8; 32], Label, Option<ContactId>)],
        day: u32,
    ) -> Result<Vec<TrainOutcome>> {
        let _gate = self.writing();
        let _train = self.train_lock();
        let mut outcomes = Vec::with_capacity(items.len());
        let mut pending = false;
        for (features, fingerprint, label, owner) in items {
            match self.train_locked(classifier, features, fingerprint, *label, *owner, day) {
                Ok((outcome, compact)) => {
                    outcomes.push(outcome);
                    pending |= outcome != TrainOutcome::AlreadyLearned;
                    if compact {
                        self.finish_training(true)?;
                        pending = false;
                    }
                }
                Err(e) => {
                    if pending {
                        self.inner.flusher.durable_blocking(false)?;
                    }
                    return Err(e);
                }
            }
        }
        if pending {
            self.finish_training(false)?;
        }
        Ok(outcomes)
    }

    /// Train one message and commit it (not yet durable); the caller holds the train lock.
    /// Returns the outcome and whether a snapshot is due.
    fn train_locked(
        &self,
        classifier: &Classifier,
        features: &Features,
        fingerprint: &[u8; 32],
        label: Label,
        owner: Option<ContactId>,
        day: u32,
    ) -> Result<(TrainOutcome, bool)> {
        let key = self.learned_key(fingerprint);
        let model = self.model_read();
        let state = model.state;
        let (raw, prior) = self.learned_record(&key, &state)?;
        let mut overlay = Overlay::new(&model.table, state.totals);
        let outcome = match prior {
            Some(r) if r.label == label => return Ok((TrainOutcome::AlreadyLearned, false)),
            Some(r) => {
                Self::unlearn(&mut overlay, classifier, features, &r, &state)?;
                TrainOutcome::Relabeled
            }
            None => TrainOutcome::Learned,
        };
        let receipt = classifier
            .train(&mut overlay, features, label, day)
            .map_err(filter_error)?;
        let record = LearnedRecord {
            label: receipt.label,
            lr_step: receipt.lr_step,
            owner: owner.map(|c| c.0),
            day,
            generation: state.generation,
            expiry_epoch: state.expiry_epoch,
        };
        let Overlay {
            changed,
            totals,
            updates,
            ..
        } = overlay;
        drop(model);
        let compact = self.commit_training(
            state,
            changed,
            totals,
            &updates,
            &key,
            raw,
            Some(encode(&record)?),
        )?;
        Ok((outcome, compact))
    }

    /// Untrain a message learned before; `false` (and nothing changed) if it was not learned.
    pub fn filter_untrain(
        &self,
        classifier: &Classifier,
        features: &Features,
        fingerprint: &[u8; 32],
    ) -> Result<bool> {
        let _gate = self.writing();
        let _train = self.train_lock();
        let key = self.learned_key(fingerprint);
        let model = self.model_read();
        let state = model.state;
        let (raw, prior) = self.learned_record(&key, &state)?;
        let Some(r) = prior else {
            return Ok(false);
        };
        let mut overlay = Overlay::new(&model.table, state.totals);
        Self::unlearn(&mut overlay, classifier, features, &r, &state)?;
        let Overlay {
            changed,
            totals,
            updates,
            ..
        } = overlay;
        drop(model);
        let compact = self.commit_training(state, changed, totals, &updates, &key, raw, None)?;
        self.finish_training(compact)?;
        Ok(true)
    }

    /// The label a message was learned with, if any.
    pub fn filter_learned(&self, fingerprint: &[u8; 32]) -> Result<Option<Label>> {
        let state = self.model_read().state;
        let (_, record) = self.learned_record(&self.learned_key(fingerprint), &state)?;
        Ok(record.map(|r| r.label))
    }

    /// Whether no message has been learned yet (then the starter model is loaded).
    pub fn filter_is_empty(&self) -> Result<bool> {
        let t = self.model_read().state.totals;
        Ok(t.ham_messages == 0 && t.spam_messages == 0 && t.distinct_tokens == 0)
    }

    /// Counts and size.
    pub fn filter_stats(&self) -> Result<FilterStats> {
        let state = self.model_read().state;
        let mut learned_records = 0;
        for value in self.inner.t.learned.iter().values() {
            let r: LearnedRecord = decode(&value?)?;
            learned_records += u64::from(r.generation == state.generation);
        }
        Ok(FilterStats {
            ham_messages: state.totals.ham_messages,
            spam_messages: state.totals.spam_messages,
            tokens: state.totals.distinct_tokens,
            learned_records,
            bytes_on_disk: self.inner.db.size_on_disk()? + dir_size(&self.inner.dir.join("keys")),
        })
    }

    /// Write a snapshot of the model now and drop the journal it replaces (training does this
    /// by itself when the journal grows past 4 MiB or 131,072 changed tokens).
    pub fn filter_compact(&self) -> Result<()> {
        let _gate = self.writing();
        let _train = self.train_lock();
        self.compact_locked()
    }

    /// Drop tokens seen in at most `max_count` messages whose last sighting is before
    /// `before_day` (days since the Unix epoch). Returns how many went.
    ///
    /// Totals: `distinct_tokens`, `ham_tokens` and `spam_tokens` lose what the removed records
    /// held (they stay the sums over the records); message counts and the LR bias stay. The
    /// result is written as a new snapshot (one switch: all or nothing).
    pub fn filter_expire(&self, before_day: u32, max_count: u32) -> Result<u64> {
        let _gate = self.writing();
        let _train = self.train_lock();
        let model = self.model_read();
        let state = model.state;
        let (mut victims, mut ham, mut spam) = (Vec::new(), 0u64, 0u64);
        for (h, c) in model.table.merged() {
            if c.total() <= u64::from(max_count) && c.last_seen_day < before_day {
                victims.push(h);
                ham += u64::from(c.ham);
                spam += u64::from(c.spam);
            }
        }
        if victims.is_empty() {
            return Ok(0);
        }
        let mut totals = state.totals;
        let (Some(h), Some(s), Some(d)) = (
            totals.ham_tokens.checked_sub(ham),
            totals.spam_tokens.checked_sub(spam),
            totals.distinct_tokens.checked_sub(victims.len() as u64),
        ) else {
            return Err(StoreError::Corrupt(
                "model totals are smaller than the token counts".into(),
            ));
        };
        (
            totals.ham_tokens,
            totals.spam_tokens,
            totals.distinct_tokens,
        ) = (h, s, d);
        let seq = state.last_seq + 1;
        let chunks = self.write_snapshot(
            seq,
            &totals,
            model
                .table
                .merged()
                .filter(|(h, _)| victims.binary_search(h).is_err()),
        )?;
        drop(model);
        let new_state = ModelState {
            expiry_epoch: state.expiry_epoch.wrapping_add(1),
            snapshot: seq,
            last_seq: seq,
            totals,
            ..state
        };
        self.switch_state(&new_state)?;
        {
            let mut model = self.model_write();
            model.table = TokenTable::from_chunks(chunks);
            model.state = new_state;
            model.journal_bytes = 0;
        }
        self.drop_old_model(state.snapshot, seq);
        Ok(victims.len() as u64)
    }

    /// Write the model (totals and token counts; no learned-message records, which are personal
    /// to this installation) in mailroom's portable model format.
    pub fn filter_export(&self, out: &mut dyn Write) -> Result<u64> {
        let _train = self.train_lock();
        let model = self.model_read();
        write_model(&model.state.totals, model.table.merged(), out).map_err(|e| match e {
            StoreError::Filter(m) => StoreError::Corrupt(m),
            other => other,
        })
    }

    /// Replace the model with one written by [`Store::filter_export`]; returns tokens read.
    ///
    /// Learned-message records are dropped (they describe the replaced model). A file that is
    /// not a valid model gives [`StoreError::InvalidModel`] and changes nothing.
    pub fn filter_import(&self, input: &mut dyn Read) -> Result<u64> {
        let _gate = self.writing();
        let _train = self.train_lock();
        let state = self.model_read().state;
        let seq = state.last_seq + 1;
        let snapshots = &self.inner.t.filter_snapshot;
        // Check the input while copying it into the chunks of a new snapshot, then load that.
        let staged = remove_snapshot(snapshots, seq).and_then(|()| {
            let mut reader = ModelReader::new(BufReader::with_capacity(64 * 1024, input))?;
            let mut chunks = ChunkWriter::new(Some(snapshots), seq, reader.totals.distinct_tokens);
            let mut writer = ModelWriter::new(&mut chunks, &reader.totals)?;
            while let Some((h, c)) = reader.next_record()? {
                writer.record(h, &c)?;
            }
            reader.finish()?;
            writer.finish()?;
            chunks.finish()?;
            load_snapshot(snapshots, seq)
        });
        let (totals, table) = match staged {
            Ok(loaded) => loaded,
            Err(e) => {
                let _ = remove_snapshot(snapshots, seq);
                return Err(e);
            }
        };
        let new_state = ModelState {
            generation: state.generation.wrapping_add(1),
            expiry_epoch: state.expiry_epoch,
            snapshot: seq,
            last_seq: seq,
            totals,
        };
        self.switch_state(&new_state)?;
        let count = table.len;
        {
            let mut model = self.model_write();
            model.table = table;
            model.state = new_state;
            model.journal_bytes = 0;
        }
        // Every learned record belongs to the replaced model (stale by generation already).
        if let Err(e) = self.inner.t.learned.clear() {
            tracing::warn!(error = %e, "cannot drop stale learned-message records");
        }
        self.drop_old_model(state.snapshot, seq);
        self.inner.flusher.durable_blocking(false)?;
        Ok(count)
    }

    /// Quarantined messages, newest first.
    pub fn quarantine(&self) -> Result<Vec<MessageView>> {
        let mut out = Vec::new();
        for key in self.inner.t.quarantine.iter().keys().rev() {
            if let Some(view) = self.message_view(from_be(&key?)?)? {
                out.push(view);
            }
        }
        Ok(out)
    }

    /// One quarantined message.
    pub fn quarantine_get(&self, id: MessageKey) -> Result<Option<MessageView>> {
        if !self.inner.t.quarantine.contains_key(be(id.0))? {
            return Ok(None);
        }
        self.message_view(id.0)
    }

    /// The ticket a quarantined message would have joined (for release, a later issue).
    pub fn quarantine_target(&self, id: MessageKey) -> Result<Option<Option<TicketId>>> {
        let Some(value) = self.inner.t.quarantine.get(be(id.0))? else {
            return Ok(None);
        };
        let (meta, _sealed): (QuarantineMeta, _) = unframe(&value)?;
        Ok(Some(meta.ticket.map(TicketId)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(ham: u32, spam: u32, w: i64) -> Counts {
        Counts {
            ham,
            spam,
            last_seen_day: ham.wrapping_add(spam),
            lr_weight: w,
        }
    }

    #[test]
    fn packing_round_trips() {
        for w in [0, 1, -1, i64::MAX, i64::MIN, 1 << 40, -(1 << 33) + 7] {
            let x = c(3, u32::MAX, w);
            assert_eq!(counts_from_bytes(&counts_bytes(&x)), x);
        }
    }

    /// The table rebuilt over the chunks of a snapshot of itself, as compaction does.
    fn rebuilt(table: &TokenTable, totals: &Totals) -> TokenTable {
        let mut chunks = ChunkWriter::new(None, 1, totals.distinct_tokens);
        write_model(totals, table.merged(), &mut chunks).unwrap();
        TokenTable::from_chunks(chunks.finish().unwrap())
    }

    #[test]
    fn chunk_layout_cuts_the_model_file_at_records() {
        let per = RECORDS_PER_CHUNK as u64;
        for count in [0, 1, per - 1, per, per + 1, 5 * per + 17] {
            let lens: Vec<usize> = (0..)
                .map(|i| chunk_len(count, i))
                .take_while(|&l| l > 0)
                .collect();
            assert_eq!(lens.len() as u64, 2 + count.div_ceil(per), "{count}");
            assert_eq!(lens.iter().sum::<usize>() as u64, 64 + 28 * count + 32);
            assert_eq!((lens[0], *lens.last().unwrap()), (64, 32));
            assert!(lens[1..lens.len() - 1]
                .iter()
                .all(|&l| l > 0 && l % 28 == 0));
            assert!(lens.iter().all(|&l| l <= 64 * 1024));
        }
    }

    #[test]
    fn table_matches_a_map_across_chunks_and_rebuilds() {
        use std::collections::BTreeMap;
        let mut reference: BTreeMap<u64, Counts> = BTreeMap::new();
        let mut table = TokenTable::default();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        const HASHES: u64 = 12_000;
        for round in 0..24 {
            for _ in 0..1_500 {
                let h = next() % HASHES;
                let v = next();
                let counts = if v % 4 == 0 {
                    Counts::default()
                } else {
                    c((v % 3) as u32, ((v >> 8) % 3) as u32 + 1, v as i64 >> 3)
                };
                table.set(h, counts);
                if counts.total() == 0 {
                    reference.remove(&h);
                } else {
                    reference.insert(h, counts);
                }
            }
            for h in 0..=HASHES {
                assert_eq!(table.get(h), reference.get(&h).copied().unwrap_or_default());
            }
            let merged: Vec<_> = table.merged().collect();
            let want: Vec<_> = reference.iter().map(|(h, c)| (*h, *c)).collect();
            assert_eq!(merged, want, "round {round}");
            if round % 3 != 2 {
                let totals = Totals {
                    distinct_tokens: want.len() as u64,
                    ..Totals::default()
                };
                table = rebuilt(&table, &totals);
                assert!(table.delta.is_empty());
                assert_eq!(table.len, want.len() as u64);
                assert!(table.chunks.len() > 1 || round < 2, "round {round}");
                assert_eq!(table.merged().collect::<Vec<_>>(), want);
            }
        }
    }

    #[test]
    fn journal_round_trips_and_refuses_garbage() {
        let updates = vec![
            JournalUpdate {
                label: Label::Ham,
                direction: Direction::Unlearn,
                lr_step: -5,
                day: 7,
                hashes: vec![1, 2, u64::MAX],
            },
            JournalUpdate {
                label: Label::Spam,
                direction: Direction::Learn,
                lr_step: 1 << 40,
                day: 8,
                hashes: vec![],
            },
        ];
        let bytes = encode_journal(&updates);
        assert_eq!(decode_journal(&bytes).unwrap(), updates);
        assert!(decode_journal(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_journal(&longer).is_err());
        assert!(decode_journal(&[]).is_err());
    }

    #[test]
    fn state_round_trips() {
        let s = ModelState {
            generation: 1,
            expiry_epoch: 2,
            snapshot: 3,
            last_seq: 4,
            totals: Totals {
                ham_messages: 5,
                spam_messages: 6,
                ham_tokens: 7,
                spam_tokens: 8,
                distinct_tokens: 9,
                lr_bias: -10,
            },
        };
        assert_eq!(ModelState::decode(&s.encode()).unwrap(), s);
    }
}
