//! Evaluation: TREC's immediate-feedback online protocol and its metrics.
//!
//! Messages are taken in a fixed order; each is classified, then trained on its true label.
//! The metrics are 1-ROCA (area above the ROC curve, in percent; ties count half), the
//! false-positive rate (ham at or above `spam_cutoff`: the costly error) and the false-negative
//! rate (spam below `spam_cutoff`, i.e. called ham or unsure) at the cutoffs, and ROC points for
//! plotting. All functions are pure; timing and file reading are the caller's.

use serde::{Deserialize, Serialize};

use crate::classifier::{Classifier, Scores};
use crate::error::FilterError;
use crate::store::{Label, TokenStore};
use crate::tokenizer::Tokenizer;

/// One judged message: its true label, the score in `[0, 1]` and the ranking key (the logit;
/// any value monotone in the score and free of rounding at the extremes).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    /// True label.
    pub label: Label,
    /// Spam score in `[0, 1]`.
    pub score: f64,
    /// Ranking key for the ROC (higher = spammier).
    pub key: f64,
}

/// Runs the immediate-feedback protocol: for each `(label, raw)` in order, score it with every
/// algorithm ([`Classifier::score_all`]), then train on `label`. Returns one [`Scores`] per
/// message, in order. `day` is passed to training unchanged.
pub fn run_online<S, I, R>(
    classifier: &Classifier,
    tokenizer: &Tokenizer,
    store: &mut S,
    messages: I,
    day: u32,
) -> Result<Vec<(Label, Scores)>, FilterError>
where
    S: TokenStore,
    I: IntoIterator<Item = (Label, R)>,
    R: AsRef<[u8]>,
{
    let mut out = Vec::new();
    for (label, raw) in messages {
        let features = tokenizer.tokenize(raw.as_ref());
        let scores = classifier.score_all(&*store, &features)?;
        classifier.train(store, &features, label, day)?;
        out.push((label, scores));
    }
    Ok(out)
}

/// 1-ROCA in percent: `100 * (1 - AUC)`, AUC = P(key of a random spam > key of a random ham),
/// ties counted half. `None` when there is no ham or no spam.
pub fn one_minus_roca_percent(judged: &[Judged]) -> Option<f64> {
    let mut v: Vec<(f64, bool)> = judged
        .iter()
        .map(|j| (j.key, j.label == Label::Spam))
        .collect();
    let spam = v.iter().filter(|x| x.1).count() as f64;
    let ham = v.len() as f64 - spam;
    if spam == 0.0 || ham == 0.0 {
        return None;
    }
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Count (ham, spam) pairs ordered wrongly: for each spam, hams with a higher key, plus half
    // the hams with an equal key.
    let mut wrong = 0.0f64;
    let mut i = 0;
    let mut ham_seen_below = 0.0f64; // hams with key strictly below the current group
    while i < v.len() {
        let mut j = i;
        let (mut g_ham, mut g_spam) = (0.0f64, 0.0f64);
        while j < v.len() && v[j].0.total_cmp(&v[i].0).is_eq() {
            if v[j].1 {
                g_spam += 1.0;
            } else {
                g_ham += 1.0;
            }
            j += 1;
        }
        let ham_above = ham - ham_seen_below - g_ham;
        wrong += g_spam * (ham_above + 0.5 * g_ham);
        ham_seen_below += g_ham;
        i = j;
    }
    Some(100.0 * wrong / (spam * ham))
}

/// One point of the ROC curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RocPoint {
    /// Messages with a key at or above this are called spam.
    pub threshold: f64,
    /// Fraction of ham called spam.
    pub fpr: f64,
    /// Fraction of spam called spam.
    pub tpr: f64,
}

/// ROC points from the strictest threshold to the loosest, one per distinct key (plus the
/// origin).
pub fn roc_points(judged: &[Judged]) -> Vec<RocPoint> {
    let mut v: Vec<(f64, bool)> = judged
        .iter()
        .map(|j| (j.key, j.label == Label::Spam))
        .collect();
    let spam = v.iter().filter(|x| x.1).count().max(1) as f64;
    let ham = (v.len() - v.iter().filter(|x| x.1).count()).max(1) as f64;
    v.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut out = vec![RocPoint {
        threshold: f64::INFINITY,
        fpr: 0.0,
        tpr: 0.0,
    }];
    let (mut fp, mut tp) = (0.0, 0.0);
    let mut i = 0;
    while i < v.len() {
        let t = v[i].0;
        while i < v.len() && v[i].0.total_cmp(&t).is_eq() {
            if v[i].1 {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            i += 1;
        }
        out.push(RocPoint {
            threshold: t,
            fpr: fp / ham,
            tpr: tp / spam,
        });
    }
    out
}

/// Error rates at the cutoffs.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Rates {
    /// Ham messages.
    pub ham: usize,
    /// Spam messages.
    pub spam: usize,
    /// Ham at or above `spam_cutoff`.
    pub false_positives: usize,
    /// Spam below `ham_cutoff`.
    pub spam_as_ham: usize,
    /// Ham between the cutoffs.
    pub ham_unsure: usize,
    /// Spam between the cutoffs.
    pub spam_unsure: usize,
    /// `false_positives / ham`, percent.
    pub fpr_percent: f64,
    /// Spam not called spam (ham or unsure) / spam, percent.
    pub fnr_percent: f64,
}

/// FPR and FNR at the cutoffs (scores, not keys).
pub fn rates(judged: &[Judged], ham_cutoff: f64, spam_cutoff: f64) -> Rates {
    let mut r = Rates::default();
    for j in judged {
        match j.label {
            Label::Ham => {
                r.ham += 1;
                if j.score >= spam_cutoff {
                    r.false_positives += 1;
                } else if j.score >= ham_cutoff {
                    r.ham_unsure += 1;
                }
            }
            Label::Spam => {
                r.spam += 1;
                if j.score < ham_cutoff {
                    r.spam_as_ham += 1;
                } else if j.score < spam_cutoff {
                    r.spam_unsure += 1;
                }
            }
        }
    }
    r.fpr_percent = 100.0 * r.false_positives as f64 / r.ham.max(1) as f64;
    r.fnr_percent = 100.0 * (r.spam_as_ham + r.spam_unsure) as f64 / r.spam.max(1) as f64;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(label: Label, key: f64) -> Judged {
        Judged {
            label,
            score: key,
            key,
        }
    }

    #[test]
    fn roca_perfect_and_inverted_and_ties() {
        let perfect = [j(Label::Ham, 0.1), j(Label::Spam, 0.9)];
        assert_eq!(one_minus_roca_percent(&perfect), Some(0.0));
        let inverted = [j(Label::Ham, 0.9), j(Label::Spam, 0.1)];
        assert_eq!(one_minus_roca_percent(&inverted), Some(100.0));
        let tie = [j(Label::Ham, 0.5), j(Label::Spam, 0.5)];
        assert_eq!(one_minus_roca_percent(&tie), Some(50.0));
        // 2 ham, 2 spam, one misordered pair of 4.
        let v = [
            j(Label::Ham, 0.1),
            j(Label::Spam, 0.3),
            j(Label::Ham, 0.4),
            j(Label::Spam, 0.9),
        ];
        assert_eq!(one_minus_roca_percent(&v), Some(25.0));
        assert_eq!(one_minus_roca_percent(&[j(Label::Ham, 0.1)]), None);
    }

    #[test]
    fn rates_at_cutoffs() {
        let v = [
            j(Label::Ham, 0.95),
            j(Label::Ham, 0.5),
            j(Label::Ham, 0.1),
            j(Label::Spam, 0.1),
            j(Label::Spam, 0.5),
            j(Label::Spam, 0.9),
        ];
        let r = rates(&v, 0.2, 0.9);
        assert_eq!(
            (
                r.false_positives,
                r.ham_unsure,
                r.spam_as_ham,
                r.spam_unsure
            ),
            (1, 1, 1, 1)
        );
        assert!((r.fpr_percent - 100.0 / 3.0).abs() < 1e-9);
        assert!((r.fnr_percent - 200.0 / 3.0).abs() < 1e-9);
        let pts = roc_points(&v);
        assert_eq!(pts.last().map(|p| (p.fpr, p.tpr)), Some((1.0, 1.0)));
    }
}
