//! The spam filter's place in the pipeline: tokenize the raw message, score it against the
//! token counts in the store, and turn the verdict into a routing decision (spam goes to the
//! quarantine, unsure is marked on the ticket).

use mailroom_spamfilter::{
    Algorithm, Class, Classifier, ClassifierConfig, FilterError, Tokenizer, TokenizerConfig,
};
use mailroom_store::{Classification, ClueView, Store, ThreadDecision, Verdict};

use crate::PipelineError;

/// A ready spam filter: tokenizer and classifier with their settings (cutoffs, combiner).
#[derive(Debug, Clone)]
pub struct Filter {
    tokenizer: Tokenizer,
    classifier: Classifier,
}

impl Filter {
    /// A filter with the given combiner and cutoffs (everything else at the tuned defaults).
    pub fn new(
        algorithm: Algorithm,
        ham_cutoff: f64,
        spam_cutoff: f64,
        explain_tokens: usize,
    ) -> Result<Filter, FilterError> {
        let config = ClassifierConfig {
            algorithm,
            ham_cutoff,
            spam_cutoff,
            explain_tokens,
            ..ClassifierConfig::default()
        };
        Ok(Filter {
            tokenizer: Tokenizer::new(TokenizerConfig::default()),
            classifier: Classifier::new(config)?,
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The classifier.
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Score `raw` against the store's model.
    pub fn classify(&self, store: &Store, raw: &[u8]) -> Result<Classification, PipelineError> {
        let features = self.tokenizer.tokenize_with_text(raw);
        let verdict = self
            .classifier
            .classify(&store.filter_tokens(), &features)
            .map_err(|e| PipelineError::Filter(e.to_string()))?;
        Ok(Classification {
            score: verdict.score,
            verdict: match verdict.class {
                Class::Ham => Verdict::Ham,
                Class::Unsure => Verdict::Unsure,
                Class::Spam => Verdict::Spam,
            },
            algorithm: verdict.algorithm.name().to_string(),
            clues: verdict
                .clues
                .into_iter()
                .map(|c| ClueView {
                    token: c.text,
                    probability: c.probability,
                    ham: c.ham,
                    spam: c.spam,
                })
                .collect(),
        })
    }
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            tokenizer: Tokenizer::new(TokenizerConfig::default()),
            classifier: Classifier::default(),
        }
    }
}

/// Where a message goes given its thread decision and its verdict: spam to the quarantine
/// (remembering the ticket it would have joined), everything else where threading sent it.
pub fn route(decision: ThreadDecision, verdict: Option<Verdict>, subject: &str) -> ThreadDecision {
    if verdict != Some(Verdict::Spam) {
        return decision;
    }
    match decision {
        ThreadDecision::Existing(ticket) => ThreadDecision::Quarantine {
            ticket: Some(ticket),
            subject: subject.to_string(),
        },
        ThreadDecision::New { subject } => ThreadDecision::Quarantine {
            ticket: None,
            subject,
        },
        ThreadDecision::Orphan => ThreadDecision::Quarantine {
            ticket: None,
            subject: subject.to_string(),
        },
        q @ ThreadDecision::Quarantine { .. } => q,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailroom_store::TicketId;

    #[test]
    fn spam_is_quarantined_with_its_would_be_ticket() {
        let d = route(
            ThreadDecision::Existing(TicketId(7)),
            Some(Verdict::Spam),
            "Re: x",
        );
        assert_eq!(
            d,
            ThreadDecision::Quarantine {
                ticket: Some(TicketId(7)),
                subject: "Re: x".into()
            }
        );
        let d = route(
            ThreadDecision::New {
                subject: "Cheap".into(),
            },
            Some(Verdict::Spam),
            "Cheap!!",
        );
        assert_eq!(
            d,
            ThreadDecision::Quarantine {
                ticket: None,
                subject: "Cheap".into()
            }
        );
    }

    #[test]
    fn ham_unsure_and_unclassified_keep_their_thread() {
        for v in [None, Some(Verdict::Ham), Some(Verdict::Unsure)] {
            let d = route(ThreadDecision::Existing(TicketId(3)), v, "s");
            assert_eq!(d, ThreadDecision::Existing(TicketId(3)));
        }
    }
}
