//! Token counts and the [`TokenStore`] trait the classifier reads and writes through.
//!
//! The store keeps, per token hash, a [`Counts`] record, and one [`Totals`] record. Every write
//! is one [`Update`]: the deduplicated, sorted token hashes of one message, its label, a
//! direction (learn or unlearn) and the logistic-regression step for that message. The classifier
//! only ever issues one batched read ([`TokenStore::get_counts`]) per classification and one
//! batched read plus one batched write ([`TokenStore::apply`]) per training, so a persistent
//! implementation (the sled one in `mailroom-store`) can make each a single transaction.
//!
//! The arithmetic of an update is defined here, once ([`Counts::updated`], [`Totals::updated`]),
//! so that every implementation applies it identically.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

use crate::error::MemoryStoreError;

/// The true class of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    /// Wanted mail.
    Ham,
    /// Unwanted mail.
    Spam,
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Label::Ham => "ham",
            Label::Spam => "spam",
        })
    }
}

/// Whether an update adds a message to the model or takes it out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Train: add the message's counts and LR step.
    Learn,
    /// Untrain: subtract exactly what [`Direction::Learn`] added.
    Unlearn,
}

/// What the store keeps for one token (one hash).
///
/// A record whose `ham` and `spam` are both zero is absent from the store (and then its
/// `lr_weight` is zero too: a token's weight is the sum of the LR steps of the learned messages
/// that contain it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Counts {
    /// Number of learned ham messages that contain the token.
    pub ham: u32,
    /// Number of learned spam messages that contain the token.
    pub spam: u32,
    /// Day number (caller-defined, e.g. days since 1970-01-01) the token was last learned; used
    /// to expire rare old tokens. Unlearning leaves it unchanged.
    pub last_seen_day: u32,
    /// Logistic-regression weight in fixed point ([`LR_WEIGHT_SCALE`] units = 1.0).
    pub lr_weight: i64,
}

/// Fixed-point scale of [`Counts::lr_weight`] and [`Totals::lr_bias`]: the stored integer divided
/// by this is the weight. Integers make untraining exact (no floating-point drift).
pub const LR_WEIGHT_SCALE: f64 = (1u64 << 24) as f64;

impl Counts {
    /// Number of learned messages that contain the token.
    pub fn total(&self) -> u64 {
        u64::from(self.ham) + u64::from(self.spam)
    }

    /// The record after `update`, or `None` if unlearning would take the count below zero.
    /// A result with `ham == 0 && spam == 0` means the record is to be removed.
    pub fn updated(self, update: &Update<'_>) -> Option<Counts> {
        let mut c = self;
        let slot = match update.label {
            Label::Ham => &mut c.ham,
            Label::Spam => &mut c.spam,
        };
        match update.direction {
            Direction::Learn => {
                *slot = slot.checked_add(1)?;
                c.lr_weight = c.lr_weight.wrapping_add(update.lr_step);
                c.last_seen_day = c.last_seen_day.max(update.day);
            }
            Direction::Unlearn => {
                *slot = slot.checked_sub(1)?;
                c.lr_weight = c.lr_weight.wrapping_sub(update.lr_step);
            }
        }
        if c.ham == 0 && c.spam == 0 {
            // Exact by construction; normalise anyway so an absent record is all zero.
            c = Counts::default();
        }
        Some(c)
    }
}

/// Model-wide totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Totals {
    /// Ham messages learned.
    pub ham_messages: u64,
    /// Spam messages learned.
    pub spam_messages: u64,
    /// Sum of `ham` over all tokens (for multinomial naive Bayes).
    pub ham_tokens: u64,
    /// Sum of `spam` over all tokens (for multinomial naive Bayes).
    pub spam_tokens: u64,
    /// Number of tokens present in the store (vocabulary size).
    pub distinct_tokens: u64,
    /// Logistic-regression bias in fixed point ([`LR_WEIGHT_SCALE`]).
    pub lr_bias: i64,
}

impl Totals {
    /// The totals after `update`, given how many of its tokens were created (absent before) and
    /// removed (absent after). `None` if a total would go below zero.
    pub fn updated(self, update: &Update<'_>, created: u64, removed: u64) -> Option<Totals> {
        let mut t = self;
        let n = update.hashes.len() as u64;
        let (msgs, toks) = match update.label {
            Label::Ham => (&mut t.ham_messages, &mut t.ham_tokens),
            Label::Spam => (&mut t.spam_messages, &mut t.spam_tokens),
        };
        match update.direction {
            Direction::Learn => {
                *msgs = msgs.checked_add(1)?;
                *toks = toks.checked_add(n)?;
                t.lr_bias = t.lr_bias.wrapping_add(update.lr_step);
            }
            Direction::Unlearn => {
                *msgs = msgs.checked_sub(1)?;
                *toks = toks.checked_sub(n)?;
                t.lr_bias = t.lr_bias.wrapping_sub(update.lr_step);
            }
        }
        t.distinct_tokens = t
            .distinct_tokens
            .checked_add(created)?
            .checked_sub(removed)?;
        Some(t)
    }
}

/// One message's write: learn or unlearn its token set with a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Update<'a> {
    /// The message's token hashes, sorted and without duplicates.
    pub hashes: &'a [u64],
    /// The label learned or unlearned.
    pub label: Label,
    /// Learn or unlearn.
    pub direction: Direction,
    /// Logistic-regression step (fixed point) added to every token's weight and to the bias on
    /// learn, subtracted on unlearn.
    pub lr_step: i64,
    /// Today's day number, recorded as `last_seen_day` on learn.
    pub day: u32,
}

/// Where token counts live. Implemented in memory here ([`MemoryStore`]) and on sled in
/// `mailroom-store`.
///
/// Contract:
/// - [`get_counts`](TokenStore::get_counts) is one batched read: `out` is cleared and gets one
///   entry per hash, in the same order; an absent token reads as `Counts::default()`.
/// - [`apply`](TokenStore::apply) is one atomic batched write: every token of the update and the
///   totals change together, using [`Counts::updated`] and [`Totals::updated`]; records that
///   become zero are removed. If any count would go below zero, nothing changes and an error is
///   returned.
///
/// Stores that synchronise internally (e.g. a sled handle shared between threads) can implement
/// the trait for a shared reference (`impl TokenStore for &MyStore`).
pub trait TokenStore {
    /// The store's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Reads the counts of `hashes` into `out` (cleared first), in order.
    fn get_counts(&self, hashes: &[u64], out: &mut Vec<Counts>) -> Result<(), Self::Error>;

    /// Reads the model totals.
    fn totals(&self) -> Result<Totals, Self::Error>;

    /// Applies one message's update atomically.
    fn apply(&mut self, update: &Update<'_>) -> Result<(), Self::Error>;
}

/// A `Hasher` for keys that are already uniformly distributed hashes (our xxh3 token ids).
#[derive(Default, Clone, Copy)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }
}

/// `BuildHasher` for [`IdentityHasher`].
pub type BuildIdentityHasher = BuildHasherDefault<IdentityHasher>;

/// An in-memory [`TokenStore`] (a `HashMap`), for tests, evaluation and building models.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStore {
    tokens: HashMap<u64, Counts, BuildIdentityHasher>,
    totals: Totals,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of tokens stored.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True if no token is stored.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The record of one token, if present.
    pub fn get(&self, hash: u64) -> Option<&Counts> {
        self.tokens.get(&hash)
    }

    /// All records (unordered).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Counts)> + '_ {
        self.tokens.iter().map(|(h, c)| (*h, c))
    }

    /// The totals (infallible form of [`TokenStore::totals`]).
    pub fn current_totals(&self) -> Totals {
        self.totals
    }
}

impl TokenStore for MemoryStore {
    type Error = MemoryStoreError;

    fn get_counts(&self, hashes: &[u64], out: &mut Vec<Counts>) -> Result<(), Self::Error> {
        out.clear();
        out.extend(
            hashes
                .iter()
                .map(|h| self.tokens.get(h).copied().unwrap_or_default()),
        );
        Ok(())
    }

    fn totals(&self) -> Result<Totals, Self::Error> {
        Ok(self.totals)
    }

    fn apply(&mut self, update: &Update<'_>) -> Result<(), Self::Error> {
        // Check everything first so a failed update changes nothing.
        let mut created = 0u64;
        let mut removed = 0u64;
        for &h in update.hashes {
            let before = self.tokens.get(&h).copied().unwrap_or_default();
            let after = before
                .updated(update)
                .ok_or(MemoryStoreError::Underflow { hash: h })?;
            if before.total() == 0 {
                created += 1;
            }
            if after.total() == 0 {
                removed += 1;
            }
        }
        let totals = self
            .totals
            .updated(update, created, removed)
            .ok_or(MemoryStoreError::Underflow { hash: 0 })?;
        for &h in update.hashes {
            let before = self.tokens.get(&h).copied().unwrap_or_default();
            match before.updated(update) {
                Some(after) if after.total() > 0 => {
                    self.tokens.insert(h, after);
                }
                _ => {
                    self.tokens.remove(&h);
                }
            }
        }
        self.totals = totals;
        Ok(())
    }
}
