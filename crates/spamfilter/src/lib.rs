//! mailroom's spam filter: pure functions, no I/O, no async.
//!
//! - [`tokenizer`]: raw RFC 5322 message -> hashed features ([`Features`]), with texts kept for
//!   explanations.
//! - [`store`]: the [`TokenStore`] trait (batched reads and atomic per-message writes of
//!   [`Counts`] and [`Totals`]) and an in-memory implementation ([`MemoryStore`]).
//! - [`classifier`]: Robinson/Fisher (bogofilter style), multinomial naive Bayes, online
//!   logistic regression and their fusion ([`Algorithm`]); verdicts with explanations; exact
//!   train/untrain.
//! - [`eval`]: TREC immediate-feedback runs, 1-ROCA %, FPR/FNR at the cutoffs, ROC points.
//!
//! ```
//! use mailroom_spamfilter::{Classifier, Label, MemoryStore, Tokenizer};
//! # fn main() -> Result<(), mailroom_spamfilter::FilterError> {
//! let tokenizer = Tokenizer::default();
//! let classifier = Classifier::default();
//! let mut store = MemoryStore::new();
//! let spam = tokenizer.tokenize(b"Subject: cheap pills\r\n\r\nBuy cheap pills now!\r\n");
//! let ham = tokenizer.tokenize(b"Subject: meeting\r\n\r\nSee you at the meeting.\r\n");
//! let receipt = classifier.train(&mut store, &spam, Label::Spam, 0)?;
//! classifier.train(&mut store, &ham, Label::Ham, 0)?;
//! let msg = tokenizer.tokenize_with_text(b"Subject: pills\r\n\r\ncheap pills\r\n");
//! let verdict = classifier.classify(&store, &msg)?;
//! assert!(verdict.score > 0.5 && verdict.score <= 1.0);
//! classifier.untrain(&mut store, &spam, &receipt)?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![deny(clippy::unwrap_used)]

pub mod classifier;
pub mod error;
pub mod eval;
pub mod store;
pub mod tokenizer;

pub use classifier::{
    Algorithm, Class, Classifier, ClassifierConfig, Clue, FisherParams, FusionParams,
    LogisticParams, NaiveBayesParams, Scores, TrainReceipt, Verdict,
};
pub use error::{FilterError, MemoryStoreError};
pub use eval::{one_minus_roca_percent, rates, roc_points, run_online, Judged, Rates, RocPoint};
pub use store::{Counts, Direction, Label, MemoryStore, TokenStore, Totals, Update};
pub use tokenizer::{token_hash, Features, Tokenizer, TokenizerConfig};
