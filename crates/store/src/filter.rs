//! The spam filter's state: token counts, totals, learned-message records, and the quarantine.
//! The arithmetic lives in `mailroom-spamfilter` (pure); this is only storage.
//!
//! # Where the token counts live
//!
//! Classification reads a few hundred token counts per message, thousands of messages a second,
//! and a model holds up to millions of tokens. Kept as one sled key per token, a million tokens
//! cost sled ~45 MiB of resident memory just to open and ~160 MiB once read (its page cache
//! overshoots `cache_capacity`), and each lookup ~6 µs (measured, release build). So the counts
//! are held in memory in a compact table (28 bytes a token: a sorted array of hashes and packed
//! counts, plus a small hash map of changes since the last snapshot), and persisted as:
//!
//! - a **snapshot file** `DIR/filter/model-<seq>.mrfm` in the model file format below (the same
//!   bytes `filter_export` writes), and
//! - a **journal** in sled: every training appends one entry (the exact updates applied) in the
//!   same transaction that writes the learned-message record and the new totals. At open the
//!   snapshot is loaded and the journal replayed (`Counts::updated`, `Totals::updated`), and the
//!   result must equal the totals on record.
//!
//! When the journal passes 4 MiB or 131,072 changed tokens, the next training writes a new
//! snapshot (temporary file, fsync, rename, fsync of the directory), then points the state at it
//! and drops the journal entries it holds. Expiry and import write a new snapshot directly.
//! Token hashes are hashed words counted over many messages, not personal data: the snapshot is
//! not encrypted.
//!
//! # Records
//!
//! - `filter_meta`, key `state`: 81 bytes, little endian: `version u8 (1) | generation u64 |
//!   expiry epoch u64 | snapshot seq u64 (0: none, empty model) | last seq u64 | ham_messages u64
//!   | spam_messages u64 | ham_tokens u64 | spam_tokens u64 | distinct_tokens u64 | lr_bias i64`.
//!   Absent means an empty model. Totals are those of the live model (snapshot + journal). The
//!   generation goes up by one with every import; the expiry epoch with every expiry that
//!   removed tokens.
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
//! record are then written in one sled transaction, made durable, and applied to the table.
//! Training, expiry, export, import and compaction are serialised by one mutex; classification
//! takes a shared lock and reads memory only.
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
//! The input is streamed into a new snapshot file while it is checked (memory does not depend
//! on what the count says); the file is loaded (its length must be exactly what the count
//! implies) and only then does one write switch the model (and the generation, which retires
//! every learned-message record). On any error the new file is removed and the live model is
//! untouched.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use mailroom_spamfilter::store::BuildIdentityHasher;
use mailroom_spamfilter::{
    Classifier, Counts, Direction, Features, FilterError, Label, TokenStore, Totals, TrainReceipt,
    Update,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::Transactional;

use crate::keys::{create_private_dir, create_private_file, fsync_dir, io_err};
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

/// Counts as held in memory: ham, spam, last_seen_day, lr_weight (low, high).
type Packed = [u32; 5];

fn pack(c: &Counts) -> Packed {
    let w = c.lr_weight as u64;
    [c.ham, c.spam, c.last_seen_day, w as u32, (w >> 32) as u32]
}

fn unpack(p: &Packed) -> Counts {
    Counts {
        ham: p[0],
        spam: p[1],
        last_seen_day: p[2],
        lr_weight: (u64::from(p[3]) | (u64::from(p[4]) << 32)) as i64,
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

/// The token counts in memory: a base (sorted hashes with packed counts, as of the snapshot)
/// and the changes since (all-zero counts: removed).
#[derive(Default)]
struct TokenTable {
    keys: Vec<u64>,
    vals: Vec<Packed>,
    delta: HashMap<u64, Counts, BuildIdentityHasher>,
}

impl TokenTable {
    fn get(&self, hash: u64) -> Counts {
        if !self.delta.is_empty() {
            if let Some(c) = self.delta.get(&hash) {
                return *c;
            }
        }
        match self.keys.binary_search(&hash) {
            Ok(i) => unpack(&self.vals[i]),
            Err(_) => Counts::default(),
        }
    }

    fn set(&mut self, hash: u64, counts: Counts) {
        self.delta.insert(hash, counts);
    }

    /// Every token with a count, in ascending hash order.
    fn merged(&self) -> Merged<'_> {
        let mut delta: Vec<(u64, Counts)> = self.delta.iter().map(|(h, c)| (*h, *c)).collect();
        delta.sort_unstable_by_key(|d| d.0);
        Merged {
            keys: &self.keys,
            vals: &self.vals,
            i: 0,
            delta,
            j: 0,
        }
    }

    /// Fold the changes into the base, in place (merging from the back).
    fn merge(&mut self) {
        if self.delta.is_empty() {
            return;
        }
        let mut changes: Vec<(u64, Counts)> = self.delta.drain().collect();
        changes.sort_unstable_by_key(|c| c.0);
        let inserts = changes
            .iter()
            .filter(|(h, c)| c.total() > 0 && self.keys.binary_search(h).is_err())
            .count();
        let old_len = self.keys.len();
        let new_end = old_len + inserts;
        self.keys.reserve_exact(inserts);
        self.vals.reserve_exact(inserts);
        self.keys.resize(new_end, 0);
        self.vals.resize(new_end, [0; 5]);
        // Invariant: w - i >= inserts still to place, so a write never lands on an unread base
        // entry.
        let (mut i, mut j, mut w) = (old_len, changes.len(), new_end);
        while i > 0 || j > 0 {
            let base = (i > 0).then(|| self.keys[i - 1]);
            let change = (j > 0).then(|| changes[j - 1]);
            let (hash, packed) = match (base, change) {
                (Some(b), Some((h, c))) if h == b => {
                    i -= 1;
                    j -= 1;
                    (h, (c.total() > 0).then(|| pack(&c)))
                }
                (b, Some((h, c))) if b.is_none_or(|b| h > b) => {
                    j -= 1;
                    (h, (c.total() > 0).then(|| pack(&c)))
                }
                (Some(b), _) => {
                    i -= 1;
                    (b, Some(self.vals[i]))
                }
                (None, None) => break,
                (None, Some(_)) => unreachable!("handled by the arm above"),
            };
            if let Some(p) = packed {
                w -= 1;
                self.keys[w] = hash;
                self.vals[w] = p;
            }
        }
        if w > 0 {
            self.keys.copy_within(w.., 0);
            self.vals.copy_within(w.., 0);
            self.keys.truncate(new_end - w);
            self.vals.truncate(new_end - w);
        }
        if self.keys.capacity() > self.keys.len() + self.keys.len() / 4 + 1024 {
            self.keys.shrink_to_fit();
            self.vals.shrink_to_fit();
        }
    }
}

/// Iterator over base and changes in hash order, skipping removed tokens.
struct Merged<'a> {
    keys: &'a [u64],
    vals: &'a [Packed],
    i: usize,
    delta: Vec<(u64, Counts)>,
    j: usize,
}

impl Iterator for Merged<'_> {
    type Item = (u64, Counts);

    fn next(&mut self) -> Option<(u64, Counts)> {
        loop {
            let base = self.keys.get(self.i).copied();
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
                    let c = unpack(&self.vals[self.i]);
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
    /// `DIR/filter`: snapshot files.
    dir: PathBuf,
    /// Serialises everything that changes the model (training, expiry, import, compaction) and
    /// export.
    train: Mutex<()>,
    /// Replaced only while `train` is held.
    model: RwLock<Model>,
}

fn snapshot_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("model-{seq}.mrfm"))
}

impl FilterState {
    /// Load the snapshot, replay the journal, check the totals, and drop leftovers of an
    /// interrupted snapshot or import.
    pub(crate) fn open(data_dir: &Path, t: &Trees) -> Result<FilterState> {
        let dir = data_dir.join("filter");
        create_private_dir(&dir)?;
        let state = match t.filter_meta.get(STATE_KEY)? {
            Some(v) => ModelState::decode(&v)?,
            None => ModelState::default(),
        };
        let (mut totals, mut table) = if state.snapshot == 0 {
            (Totals::default(), TokenTable::default())
        } else {
            load_snapshot(&snapshot_path(&dir, state.snapshot))?
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
        // Leftovers: journal entries inside the snapshot, other snapshot files.
        for key in t.filter_journal.range(..=be(state.snapshot)).keys() {
            t.filter_journal.remove(key?)?;
        }
        let keep = (state.snapshot != 0).then(|| snapshot_path(&dir, state.snapshot));
        for entry in std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
            let path = entry.map_err(|e| io_err(&dir, e))?.path();
            if Some(&path) != keep.as_ref() {
                tracing::info!(file = %path.display(), "removing a stale model snapshot");
                std::fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
            }
        }
        Ok(FilterState {
            dir,
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
                StoreError::Io(format!("reading the model: {e}"))
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
    fn finish(mut self) -> Result<Totals> {
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
                Err(e) => return Err(StoreError::Io(format!("reading the model: {e}"))),
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

/// Load a snapshot file into a table (exact allocation: the file length must match the count).
fn load_snapshot(path: &Path) -> Result<(Totals, TokenTable)> {
    let corrupt = |e: StoreError| match e {
        StoreError::InvalidModel(m) => {
            StoreError::Corrupt(format!("model snapshot {}: {m}", path.display()))
        }
        other => other,
    };
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let len = file.metadata().map_err(|e| io_err(path, e))?.len();
    let mut reader =
        ModelReader::new(BufReader::with_capacity(64 * 1024, file)).map_err(corrupt)?;
    let expected =
        (MODEL_HEADER_LEN + MODEL_TRAILER_LEN) as u64 + reader.count * MODEL_RECORD_LEN as u64;
    if len != expected {
        return Err(corrupt(invalid(format!(
            "{} bytes, but {} records make {expected}",
            len, reader.count
        ))));
    }
    let n = reader.count as usize;
    let mut table = TokenTable {
        keys: Vec::with_capacity(n),
        vals: Vec::with_capacity(n),
        delta: HashMap::default(),
    };
    while let Some((h, c)) = reader.next_record().map_err(corrupt)? {
        table.keys.push(h);
        table.vals.push(pack(&c));
    }
    let totals = reader.finish().map_err(corrupt)?;
    Ok((totals, table))
}

/// Write a snapshot file durably (temporary file, fsync, rename, fsync of the directory).
fn write_snapshot(
    dir: &Path,
    seq: u64,
    totals: &Totals,
    records: impl Iterator<Item = (u64, Counts)>,
) -> Result<PathBuf> {
    let path = snapshot_path(dir, seq);
    let tmp = dir.join(format!("model-{seq}.tmp"));
    let written = (|| {
        let mut file = create_private_file(&tmp, true).map_err(|e| io_err(&tmp, e))?;
        write_model(totals, records, &mut file)?;
        file.sync_all().map_err(|e| io_err(&tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        fsync_dir(dir)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(path)
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
    /// remove it), in one transaction, provided the learned record still is `expected`; make it
    /// durable, apply it to the table, and write a snapshot when the journal is long.
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
    ) -> Result<()> {
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
        let compact = {
            let mut model = self.model_write();
            for (h, c) in changed {
                model.table.set(h, c);
            }
            model.state = new_state;
            model.journal_bytes += entry.len() as u64;
            model.journal_bytes >= JOURNAL_COMPACT_BYTES
                || model.table.delta.len() >= DELTA_COMPACT_ENTRIES
        };
        self.inner.flusher.durable_blocking(false)?;
        if compact {
            // The training is durable in the journal; a failed snapshot is tried again later.
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
        let path = write_snapshot(
            &self.inner.filter.dir,
            seq,
            &state.totals,
            model.table.merged(),
        )?;
        drop(model);
        let new_state = ModelState {
            snapshot: seq,
            ..state
        };
        self.switch_state(&new_state, &path)?;
        {
            let mut model = self.model_write();
            model.table.merge();
            model.state = new_state;
            model.journal_bytes = 0;
        }
        self.drop_old_model(state.snapshot, seq);
        Ok(())
    }

    /// Point the state at a new snapshot file durably; on failure the file is removed.
    fn switch_state(&self, state: &ModelState, snapshot: &Path) -> Result<()> {
        let switched = self
            .inner
            .t
            .filter_meta
            .insert(STATE_KEY, state.encode())
            .map_err(StoreError::from)
            .and_then(|_| self.inner.flusher.durable_blocking(false));
        if switched.is_err() {
            let _ = std::fs::remove_file(snapshot);
        }
        switched
    }

    /// After a new snapshot `seq`: drop the journal entries it holds and the old snapshot file
    /// (best effort; `FilterState::open` finishes it after a crash).
    fn drop_old_model(&self, old_snapshot: u64, seq: u64) {
        let journal = &self.inner.t.filter_journal;
        let dropped = journal
            .range(..=be(seq))
            .keys()
            .try_for_each(|k| journal.remove(k?).map(|_| ()));
        if let Err(e) = dropped {
            tracing::warn!(error = %e, "cannot drop journal entries");
        }
        if old_snapshot != 0 && old_snapshot != seq {
            let old = snapshot_path(&self.inner.filter.dir, old_snapshot);
            if let Err(e) = std::fs::remove_file(&old) {
                tracing::warn!(error = %e, file = %old.display(), "cannot remove an old snapshot");
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
        let _train = self.train_lock();
        let key = self.learned_key(fingerprint);
        let model = self.model_read();
        let state = model.state;
        let (raw, prior) = self.learned_record(&key, &state)?;
        let mut overlay = Overlay::new(&model.table, state.totals);
        let outcome = match prior {
            Some(r) if r.label == label => return Ok(TrainOutcome::AlreadyLearned),
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
        self.commit_training(
            state,
            changed,
            totals,
            &updates,
            &key,
            raw,
            Some(encode(&record)?),
        )?;
        Ok(outcome)
    }

    /// Untrain a message learned before; `false` (and nothing changed) if it was not learned.
    pub fn filter_untrain(
        &self,
        classifier: &Classifier,
        features: &Features,
        fingerprint: &[u8; 32],
    ) -> Result<bool> {
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
        self.commit_training(state, changed, totals, &updates, &key, raw, None)?;
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
        let files = dir_size(&self.inner.dir.join("keys")) + dir_size(&self.inner.filter.dir);
        Ok(FilterStats {
            ham_messages: state.totals.ham_messages,
            spam_messages: state.totals.spam_messages,
            tokens: state.totals.distinct_tokens,
            learned_records,
            bytes_on_disk: self.inner.db.size_on_disk()? + files,
        })
    }

    /// Write a snapshot of the model now and drop the journal it replaces (training does this
    /// by itself when the journal grows past 4 MiB or 131,072 changed tokens).
    pub fn filter_compact(&self) -> Result<()> {
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
        let path = write_snapshot(
            &self.inner.filter.dir,
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
        self.switch_state(&new_state, &path)?;
        {
            let mut model = self.model_write();
            for &h in &victims {
                model.table.set(h, Counts::default());
            }
            model.table.merge();
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
        let _train = self.train_lock();
        let state = self.model_read().state;
        let dir = &self.inner.filter.dir;
        let seq = state.last_seq + 1;
        let path = snapshot_path(dir, seq);
        let tmp = dir.join(format!("model-{seq}.tmp"));
        // Check the input while copying it to a new snapshot file, then load that.
        let staged = (|| {
            let mut reader = ModelReader::new(BufReader::with_capacity(64 * 1024, input))?;
            let mut file = create_private_file(&tmp, true).map_err(|e| io_err(&tmp, e))?;
            let mut writer = ModelWriter::new(&mut file, &reader.totals)?;
            while let Some((h, c)) = reader.next_record()? {
                writer.record(h, &c)?;
            }
            reader.finish()?;
            writer.finish()?;
            file.sync_all().map_err(|e| io_err(&tmp, e))?;
            drop(file);
            std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
            fsync_dir(dir)?;
            load_snapshot(&path)
        })();
        let (totals, table) = match staged {
            Ok(loaded) => loaded,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                let _ = std::fs::remove_file(&path);
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
        self.switch_state(&new_state, &path)?;
        let count = table.keys.len() as u64;
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
            assert_eq!(unpack(&pack(&x)), x);
            assert_eq!(counts_from_bytes(&counts_bytes(&x)), x);
        }
    }

    #[test]
    fn table_merge_matches_a_map() {
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
        for round in 0..40 {
            for _ in 0..200 {
                let h = next() % 1_000;
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
            for h in 0..1_000 {
                assert_eq!(table.get(h), reference.get(&h).copied().unwrap_or_default());
            }
            let merged: Vec<_> = table.merged().collect();
            let want: Vec<_> = reference.iter().map(|(h, c)| (*h, *c)).collect();
            assert_eq!(merged, want, "round {round}");
            if round % 3 != 2 {
                table.merge();
                assert!(table.delta.is_empty());
                assert_eq!(table.keys, reference.keys().copied().collect::<Vec<_>>());
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
