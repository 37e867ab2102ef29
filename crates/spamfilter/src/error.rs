//! Errors of the spam filter.

use thiserror::Error;

/// An error from classifying, training or untraining.
#[derive(Debug, Error)]
pub enum FilterError {
    /// The token store failed (a read or a batched write).
    #[error("token store: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// Untraining would take a count below zero: the message was not learned with that label
    /// (or was already untrained). Nothing was changed.
    #[error("cannot untrain: message was not learned as {label} (count would go below zero)")]
    NotLearned {
        /// The label that was asked to be untrained.
        label: crate::Label,
    },
    /// A parameter is out of its valid range.
    #[error("invalid parameter {name}: {reason}")]
    InvalidParameter {
        /// Name of the parameter, e.g. `fisher.s`.
        name: &'static str,
        /// Why the value is rejected.
        reason: String,
    },
}

impl FilterError {
    /// Wraps a store error.
    pub fn store<E: std::error::Error + Send + Sync + 'static>(e: E) -> Self {
        FilterError::Store(Box::new(e))
    }
}

/// The error of the in-memory store (it cannot fail except on an invalid update).
#[derive(Debug, Error)]
pub enum MemoryStoreError {
    /// An update would take a count below zero.
    #[error("count underflow on token {hash:#018x}")]
    Underflow {
        /// Hash of the token whose count would go negative (or 0 for the totals).
        hash: u64,
    },
}
