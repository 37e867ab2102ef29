//! Scoring, verdicts, explanations, training and untraining.
//!
//! Four combiners read the same per-token records ([`Counts`]) and totals ([`Totals`]):
//!
//! - [`Algorithm::Fisher`]: Robinson's per-token probability with a prior,
//!   `f(w) = (s*x + n*p(w)) / (s + n)` with `p(w) = (spam/S) / (spam/S + ham/H)`, only tokens with
//!   `|f - 0.5| > min_dev`, at most `max_tokens` of the most significant ones, combined with
//!   Fisher's chi-square method as bogofilter and SpamBayes do:
//!   `score = (1 + Q(-2 Σ ln f) - Q(-2 Σ ln(1-f))) / 2`, `Q` the chi-square survival function
//!   with `2N` degrees of freedom (computed in log space, so the score keeps its order even at
//!   the extremes).
//! - [`Algorithm::NaiveBayes`]: multinomial naive Bayes over the binary (present / absent) token
//!   features, Laplace/Lidstone smoothing `alpha` over the vocabulary of the store; tokens never
//!   learned are ignored. This is exactly linfa-bayes' `MultinomialNb` on the same features.
//! - [`Algorithm::Logistic`]: online logistic regression on the same hashed binary features,
//!   each message scaled to unit L2 norm (`x = 1/sqrt(N)`), trained on every message by one
//!   gradient step. Weights are stored per token in fixed point.
//! - [`Algorithm::Fusion`]: weighted sum of the Fisher logit (clamped) and the LR logit.
//!
//! # Untraining the logistic regression exactly
//!
//! Features are binary and scaled by one number per message, so a training step adds the *same*
//! amount `step = rate * (y - p) * x` to the weight of every token of the message (and to the
//! bias). [`Classifier::train`] returns that amount in a [`TrainReceipt`], which the caller keeps
//! with its learned-message record; [`Classifier::untrain`] subtracts it again. Weights are
//! integers ([`LR_WEIGHT_SCALE`]), so train-then-untrain restores every weight bit for bit, and in
//! general every weight equals the sum of the steps of the learned messages that contain the
//! token. What untrain does *not* undo is the influence the message had on the steps of messages
//! learned after it (those steps were computed with its contribution in place), exactly as an
//! online learner that had never seen it would have taken slightly different later steps. The
//! counts used by Fisher and naive Bayes are restored exactly in every case.

use serde::{Deserialize, Serialize};

use crate::error::FilterError;
use crate::store::{Counts, Direction, Label, TokenStore, Totals, Update, LR_WEIGHT_SCALE};
use crate::tokenizer::Features;

/// Which combiner produces the score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Robinson probabilities + Fisher's chi-square (bogofilter / SpamBayes).
    Fisher,
    /// Multinomial naive Bayes on binary features.
    NaiveBayes,
    /// Online logistic regression.
    Logistic,
    /// Fisher and logistic regression fused (sum of weighted logits): the measured best.
    #[default]
    Fusion,
}

impl Algorithm {
    /// All algorithms, for evaluation.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Fisher,
        Algorithm::NaiveBayes,
        Algorithm::Logistic,
        Algorithm::Fusion,
    ];

    /// Short name (`fisher`, `naive_bayes`, `logistic`, `fusion`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Fisher => "fisher",
            Algorithm::NaiveBayes => "naive_bayes",
            Algorithm::Logistic => "logistic",
            Algorithm::Fusion => "fusion",
        }
    }
}

/// Parameters of the Robinson/Fisher combiner.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FisherParams {
    /// Strength `s` of the prior (in messages).
    pub s: f64,
    /// Prior probability `x` of a token never seen.
    pub x: f64,
    /// Only tokens with `|f - 0.5| > min_dev` are combined.
    pub min_dev: f64,
    /// At most this many tokens (the farthest from 0.5) are combined.
    pub max_tokens: usize,
}

impl Default for FisherParams {
    fn default() -> Self {
        FisherParams {
            s: 0.1,
            x: 0.5,
            min_dev: 0.4,
            max_tokens: 150,
        }
    }
}

/// Parameters of multinomial naive Bayes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NaiveBayesParams {
    /// Lidstone smoothing added to every token count.
    pub alpha: f64,
    /// Added to each class's message count for the prior (0 = linfa's unsmoothed prior).
    pub prior_alpha: f64,
    /// Score = sigmoid(log-likelihood ratio / logit_scale).
    pub logit_scale: f64,
}

impl Default for NaiveBayesParams {
    fn default() -> Self {
        NaiveBayesParams {
            alpha: 0.1,
            prior_alpha: 1.0,
            logit_scale: 10.0,
        }
    }
}

/// Parameters of the online logistic regression.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogisticParams {
    /// Learning rate of the gradient step.
    pub rate: f64,
}

impl Default for LogisticParams {
    fn default() -> Self {
        LogisticParams { rate: 10.0 }
    }
}

/// Parameters of the fusion.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FusionParams {
    /// Weight of the Fisher logit.
    pub fisher_weight: f64,
    /// Weight of the LR logit.
    pub logistic_weight: f64,
    /// The Fisher logit is clamped to `[-fisher_clamp, fisher_clamp]` first.
    pub fisher_clamp: f64,
}

impl Default for FusionParams {
    fn default() -> Self {
        FusionParams {
            fisher_weight: 0.5,
            logistic_weight: 0.5,
            fisher_clamp: 5.0,
        }
    }
}

/// Everything the classifier needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifierConfig {
    /// The combiner whose score is the verdict.
    pub algorithm: Algorithm,
    /// Scores below this are ham.
    pub ham_cutoff: f64,
    /// Scores at or above this are spam (between the two: unsure).
    pub spam_cutoff: f64,
    /// Number of tokens given in an explanation.
    pub explain_tokens: usize,
    /// Cold start: until both classes have this many learned messages, every logit is scaled
    /// by `min(ham, spam) / warmup_messages` (so with no ham or no spam learned at all, every
    /// score is 0.5: unsure). 0 disables.
    pub warmup_messages: u64,
    /// Robinson/Fisher parameters.
    pub fisher: FisherParams,
    /// Naive Bayes parameters.
    pub naive_bayes: NaiveBayesParams,
    /// Logistic regression parameters.
    pub logistic: LogisticParams,
    /// Fusion parameters.
    pub fusion: FusionParams,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            algorithm: Algorithm::default(),
            ham_cutoff: 0.2,
            spam_cutoff: 0.9,
            explain_tokens: 12,
            warmup_messages: 10,
            fisher: FisherParams::default(),
            naive_bayes: NaiveBayesParams::default(),
            logistic: LogisticParams::default(),
            fusion: FusionParams::default(),
        }
    }
}

impl ClassifierConfig {
    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<(), FilterError> {
        fn bad(name: &'static str, reason: &str) -> Result<(), FilterError> {
            Err(FilterError::InvalidParameter {
                name,
                reason: reason.to_owned(),
            })
        }
        let unit = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        if !unit(self.ham_cutoff) {
            return bad("ham_cutoff", "must be in [0, 1]");
        }
        if !unit(self.spam_cutoff) || self.spam_cutoff < self.ham_cutoff {
            return bad("spam_cutoff", "must be in [ham_cutoff, 1]");
        }
        if !(self.fisher.s.is_finite() && self.fisher.s > 0.0) {
            return bad("fisher.s", "must be > 0");
        }
        if !(self.fisher.x > 0.0 && self.fisher.x < 1.0) {
            return bad("fisher.x", "must be in (0, 1)");
        }
        if !(self.fisher.min_dev >= 0.0 && self.fisher.min_dev < 0.5) {
            return bad("fisher.min_dev", "must be in [0, 0.5)");
        }
        if self.fisher.max_tokens == 0 {
            return bad("fisher.max_tokens", "must be > 0");
        }
        if !(self.naive_bayes.alpha.is_finite() && self.naive_bayes.alpha > 0.0) {
            return bad("naive_bayes.alpha", "must be > 0");
        }
        if !(self.naive_bayes.prior_alpha.is_finite() && self.naive_bayes.prior_alpha >= 0.0) {
            return bad("naive_bayes.prior_alpha", "must be >= 0");
        }
        if !(self.naive_bayes.logit_scale.is_finite() && self.naive_bayes.logit_scale > 0.0) {
            return bad("naive_bayes.logit_scale", "must be > 0");
        }
        if !(self.logistic.rate.is_finite()
            && self.logistic.rate > 0.0
            && self.logistic.rate < 100.0)
        {
            return bad("logistic.rate", "must be in (0, 100)");
        }
        let f = &self.fusion;
        if !(f.fisher_weight.is_finite()
            && f.logistic_weight.is_finite()
            && f.fisher_weight >= 0.0
            && f.logistic_weight >= 0.0
            && f.fisher_weight + f.logistic_weight > 0.0)
        {
            return bad("fusion", "weights must be >= 0 and not both 0");
        }
        if !(f.fisher_clamp.is_finite() && f.fisher_clamp > 0.0) {
            return bad("fusion.fisher_clamp", "must be > 0");
        }
        Ok(())
    }
}

/// The class of a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Score below `ham_cutoff`.
    Ham,
    /// Score between the cutoffs.
    Unsure,
    /// Score at or above `spam_cutoff`.
    Spam,
}

/// One token that decided a verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clue {
    /// Token hash.
    pub hash: u64,
    /// Token text, when the features kept texts.
    pub text: Option<String>,
    /// Robinson's `f(w)`: the token's spam probability with the prior.
    pub probability: f64,
    /// Learned ham messages containing the token.
    pub ham: u32,
    /// Learned spam messages containing the token.
    pub spam: u32,
    /// The token's logistic-regression weight.
    pub weight: f64,
}

/// The outcome of classifying one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Ham, unsure or spam, from the score and the cutoffs.
    pub class: Class,
    /// Spam score in `[0, 1]`.
    pub score: f64,
    /// Log-odds behind the score (finite; keeps the order where the score rounds to 0 or 1).
    pub logit: f64,
    /// The combiner that produced the score.
    pub algorithm: Algorithm,
    /// Tokens combined (Fisher: past `min_dev` and within `max_tokens`; others: known tokens).
    pub tokens_used: usize,
    /// The most decisive tokens, most decisive first.
    pub clues: Vec<Clue>,
}

/// Every combiner's score for one message, from one read (for evaluation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Fisher (score, logit).
    pub fisher: (f64, f64),
    /// Naive Bayes (score, logit).
    pub naive_bayes: (f64, f64),
    /// Logistic regression (score, logit).
    pub logistic: (f64, f64),
    /// Fusion (score, logit).
    pub fusion: (f64, f64),
}

impl Scores {
    /// The (score, logit) of one algorithm.
    pub fn get(&self, a: Algorithm) -> (f64, f64) {
        match a {
            Algorithm::Fisher => self.fisher,
            Algorithm::NaiveBayes => self.naive_bayes,
            Algorithm::Logistic => self.logistic,
            Algorithm::Fusion => self.fusion,
        }
    }
}

/// What training did, to be kept with the learned-message record: [`Classifier::untrain`]
/// needs it to take the message out again exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TrainReceipt {
    /// The label learned.
    pub label: Label,
    /// The logistic-regression step added to each of the message's token weights and the bias
    /// (fixed point, [`LR_WEIGHT_SCALE`]).
    pub lr_step: i64,
}

/// The classifier: pure functions of a config, a [`TokenStore`] and [`Features`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Classifier {
    cfg: ClassifierConfig,
}

/// Floor/ceiling of Robinson's f, so logs stay finite.
const F_EPS: f64 = 1e-9;
/// Logits are clamped to this magnitude so every score and logit is finite.
const MAX_LOGIT: f64 = 1e4;

impl Classifier {
    /// A classifier with a validated config.
    pub fn new(cfg: ClassifierConfig) -> Result<Self, FilterError> {
        cfg.validate()?;
        Ok(Classifier { cfg })
    }

    /// The config in use.
    pub fn config(&self) -> &ClassifierConfig {
        &self.cfg
    }

    /// The class of a score under the configured cutoffs.
    pub fn class_of(&self, score: f64) -> Class {
        if score >= self.cfg.spam_cutoff {
            Class::Spam
        } else if score < self.cfg.ham_cutoff {
            Class::Ham
        } else {
            Class::Unsure
        }
    }

    /// Classifies with the configured algorithm; one batched read from the store.
    pub fn classify<S: TokenStore>(
        &self,
        store: &S,
        features: &Features,
    ) -> Result<Verdict, FilterError> {
        self.classify_with(store, features, self.cfg.algorithm)
    }

    /// Classifies with a given algorithm.
    pub fn classify_with<S: TokenStore>(
        &self,
        store: &S,
        features: &Features,
        algorithm: Algorithm,
    ) -> Result<Verdict, FilterError> {
        let (counts, totals) = read(store, features)?;
        let (score, logit, used) = match algorithm {
            Algorithm::Fisher => {
                let (s, l, n) = self.fisher(&counts, &totals);
                (s, l, n)
            }
            Algorithm::NaiveBayes => {
                let (l, n) = self.nb_logit(&counts, &totals);
                (sigmoid(l / self.cfg.naive_bayes.logit_scale), l, n)
            }
            Algorithm::Logistic => {
                let (l, n) = self.lr_logit(&counts, &totals);
                (sigmoid(l), l, n)
            }
            Algorithm::Fusion => {
                let (_, fl, n) = self.fisher(&counts, &totals);
                let (ll, _) = self.lr_logit(&counts, &totals);
                let l = self.fuse(fl, ll);
                (sigmoid(l), l, n)
            }
        };
        let (score, logit) = self.warmup(score, logit, &totals);
        let clues = self.clues(features, &counts, &totals, algorithm);
        Ok(Verdict {
            class: self.class_of(score),
            score,
            logit,
            algorithm,
            tokens_used: used,
            clues,
        })
    }

    /// Every algorithm's (score, logit) from one read; no explanation. For evaluation.
    pub fn score_all<S: TokenStore>(
        &self,
        store: &S,
        features: &Features,
    ) -> Result<Scores, FilterError> {
        let (counts, totals) = read(store, features)?;
        let (fs, fl, _) = self.fisher(&counts, &totals);
        let (nl, _) = self.nb_logit(&counts, &totals);
        let (ll, _) = self.lr_logit(&counts, &totals);
        let ul = self.fuse(fl, ll);
        let t = &totals;
        Ok(Scores {
            fisher: self.warmup(fs, fl, t),
            naive_bayes: self.warmup(sigmoid(nl / self.cfg.naive_bayes.logit_scale), nl, t),
            logistic: self.warmup(sigmoid(ll), ll, t),
            fusion: self.warmup(sigmoid(ul), ul, t),
        })
    }

    /// Naive Bayes joint log-likelihoods `(ham, spam)`: `ln P(class) + Σ ln P(token | class)`
    /// over the message's tokens known to the store (the quantity linfa-bayes calls
    /// `joint_log_likelihood`).
    pub fn naive_bayes_log_likelihoods<S: TokenStore>(
        &self,
        store: &S,
        features: &Features,
    ) -> Result<(f64, f64), FilterError> {
        let (counts, totals) = read(store, features)?;
        let (h, s, _) = self.nb_joint(&counts, &totals);
        Ok((h, s))
    }

    /// Learns a message with a label: one batched read (for the LR prediction) and one batched
    /// write. Returns the receipt to keep for [`Classifier::untrain`]. The caller makes training
    /// idempotent (a learned-message record keyed by the message's fingerprint).
    pub fn train<S: TokenStore>(
        &self,
        store: &mut S,
        features: &Features,
        label: Label,
        day: u32,
    ) -> Result<TrainReceipt, FilterError> {
        let (counts, totals) = read(&*store, features)?;
        let (logit, _) = self.lr_logit(&counts, &totals);
        let p = sigmoid(logit);
        let y = match label {
            Label::Spam => 1.0,
            Label::Ham => 0.0,
        };
        let x = lr_x(features.len());
        let step = self.cfg.logistic.rate * (y - p) * x;
        let lr_step = (step * LR_WEIGHT_SCALE).round() as i64;
        let update = Update {
            hashes: features.hashes(),
            label,
            direction: Direction::Learn,
            lr_step,
            day,
        };
        store.apply(&update).map_err(FilterError::store)?;
        Ok(TrainReceipt { label, lr_step })
    }

    /// Takes a learned message out again: subtracts its counts and its LR step exactly.
    /// `features` must be those it was trained with (same tokenizer config). Fails without
    /// changing anything if the message's tokens are not learned with that label.
    pub fn untrain<S: TokenStore>(
        &self,
        store: &mut S,
        features: &Features,
        receipt: &TrainReceipt,
    ) -> Result<(), FilterError> {
        let (counts, totals) = read(&*store, features)?;
        let missing = match receipt.label {
            Label::Ham => totals.ham_messages == 0 || counts.iter().any(|c| c.ham == 0),
            Label::Spam => totals.spam_messages == 0 || counts.iter().any(|c| c.spam == 0),
        };
        if missing {
            return Err(FilterError::NotLearned {
                label: receipt.label,
            });
        }
        let update = Update {
            hashes: features.hashes(),
            label: receipt.label,
            direction: Direction::Unlearn,
            lr_step: receipt.lr_step,
            day: 0,
        };
        store.apply(&update).map_err(FilterError::store)
    }

    /// Cold-start shrink of (score, logit) towards (0.5, 0).
    fn warmup(&self, score: f64, logit: f64, t: &Totals) -> (f64, f64) {
        let w = self.cfg.warmup_messages;
        let have = t.ham_messages.min(t.spam_messages);
        if w == 0 || have >= w {
            return (score, logit);
        }
        let c = have as f64 / w as f64;
        // Scores of NB are sigmoid(logit / scale): shrink the score's own log-odds.
        let odds = (score.clamp(1e-300, 1.0 - 1e-16) / (1.0 - score).max(1e-300)).ln();
        (sigmoid(odds * c), logit * c)
    }

    fn fuse(&self, fisher_logit: f64, lr_logit: f64) -> f64 {
        let f = &self.cfg.fusion;
        let c = f.fisher_clamp;
        clamp_logit(f.fisher_weight * fisher_logit.clamp(-c, c) + f.logistic_weight * lr_logit)
    }

    /// Robinson's f(w) of one token.
    fn robinson(&self, c: &Counts, t: &Totals) -> f64 {
        let FisherParams { s, x, .. } = self.cfg.fisher;
        let n = c.total() as f64;
        if n == 0.0 {
            return x;
        }
        let hr = f64::from(c.ham) / (t.ham_messages.max(1) as f64);
        let sr = f64::from(c.spam) / (t.spam_messages.max(1) as f64);
        let p = if hr + sr > 0.0 { sr / (hr + sr) } else { x };
        ((s * x + n * p) / (s + n)).clamp(F_EPS, 1.0 - F_EPS)
    }

    /// Indexes of the tokens Fisher combines, most significant first.
    fn fisher_selection(&self, counts: &[Counts], totals: &Totals) -> Vec<(f64, usize)> {
        let min_dev = self.cfg.fisher.min_dev;
        let mut sel: Vec<(f64, usize)> = counts
            .iter()
            .enumerate()
            .filter(|(_, c)| c.total() > 0)
            .map(|(i, c)| (self.robinson(c, totals), i))
            .filter(|(f, _)| (f - 0.5).abs() > min_dev)
            .collect();
        let by_dev = |a: &(f64, usize), b: &(f64, usize)| {
            (b.0 - 0.5)
                .abs()
                .total_cmp(&(a.0 - 0.5).abs())
                .then(a.1.cmp(&b.1))
        };
        let n = self.cfg.fisher.max_tokens;
        if sel.len() > n {
            sel.select_nth_unstable_by(n - 1, by_dev);
            sel.truncate(n);
        }
        sel.sort_unstable_by(by_dev);
        sel
    }

    /// Fisher: (score, logit, tokens combined).
    fn fisher(&self, counts: &[Counts], totals: &Totals) -> (f64, f64, usize) {
        let sel = self.fisher_selection(counts, totals);
        let n = sel.len();
        if n == 0 {
            return (0.5, 0.0, 0);
        }
        let mut sum_ln_f = 0.0;
        let mut sum_ln_1f = 0.0;
        for &(f, _) in &sel {
            sum_ln_f += f.ln();
            sum_ln_1f += (1.0 - f).ln();
        }
        // Q_h small <=> strong ham evidence; Q_s small <=> strong spam evidence.
        let (ln_q_h, ln_p_h) = chi2_log_tails(-2.0 * sum_ln_f, n);
        let (ln_q_s, ln_p_s) = chi2_log_tails(-2.0 * sum_ln_1f, n);
        // score = (P_s + Q_h) / 2, 1 - score = (P_h + Q_s) / 2
        let ln_score = log_add_exp(ln_p_s, ln_q_h) - std::f64::consts::LN_2;
        let ln_not = log_add_exp(ln_p_h, ln_q_s) - std::f64::consts::LN_2;
        let logit = clamp_logit(ln_score - ln_not);
        let score = ln_score.exp().clamp(0.0, 1.0);
        let score = if score.is_finite() { score } else { 0.5 };
        (score, logit, n)
    }

    /// Naive Bayes joint log-likelihoods (ham, spam) and tokens used.
    fn nb_joint(&self, counts: &[Counts], t: &Totals) -> (f64, f64, usize) {
        let NaiveBayesParams {
            alpha, prior_alpha, ..
        } = self.cfg.naive_bayes;
        let v = t.distinct_tokens.max(1) as f64;
        let hm = t.ham_messages as f64 + prior_alpha;
        let sm = t.spam_messages as f64 + prior_alpha;
        let tot = hm + sm;
        let mut ll_h = if tot > 0.0 {
            (hm / tot).ln()
        } else {
            0.5f64.ln()
        };
        let mut ll_s = if tot > 0.0 {
            (sm / tot).ln()
        } else {
            0.5f64.ln()
        };
        let den_h = (t.ham_tokens as f64 + alpha * v).ln();
        let den_s = (t.spam_tokens as f64 + alpha * v).ln();
        let mut used = 0;
        for c in counts.iter().filter(|c| c.total() > 0) {
            used += 1;
            ll_h += (f64::from(c.ham) + alpha).ln() - den_h;
            ll_s += (f64::from(c.spam) + alpha).ln() - den_s;
        }
        (ll_h, ll_s, used)
    }

    fn nb_logit(&self, counts: &[Counts], t: &Totals) -> (f64, usize) {
        let (h, s, used) = self.nb_joint(counts, t);
        let l = s - h;
        // -inf - -inf (an unsmoothed prior with an empty class) is NaN: no evidence.
        (if l.is_nan() { 0.0 } else { clamp_logit(l) }, used)
    }

    fn lr_logit(&self, counts: &[Counts], t: &Totals) -> (f64, usize) {
        let x = lr_x(counts.len());
        let mut used = 0;
        let mut sum = i128::from(t.lr_bias);
        for c in counts.iter().filter(|c| c.total() > 0) {
            used += 1;
            sum += i128::from(c.lr_weight);
        }
        (clamp_logit(sum as f64 / LR_WEIGHT_SCALE * x), used)
    }

    fn clues(
        &self,
        features: &Features,
        counts: &[Counts],
        totals: &Totals,
        algorithm: Algorithm,
    ) -> Vec<Clue> {
        let k = self.cfg.explain_tokens;
        if k == 0 {
            return Vec::new();
        }
        let hashes = features.hashes();
        let make = |i: usize, f: f64| {
            let c = &counts[i];
            Clue {
                hash: hashes[i],
                text: features.text_of(hashes[i]).map(str::to_owned),
                probability: f,
                ham: c.ham,
                spam: c.spam,
                weight: c.lr_weight as f64 / LR_WEIGHT_SCALE,
            }
        };
        match algorithm {
            Algorithm::Fisher | Algorithm::Fusion => self
                .fisher_selection(counts, totals)
                .into_iter()
                .take(k)
                .map(|(f, i)| make(i, f))
                .collect(),
            Algorithm::NaiveBayes | Algorithm::Logistic => {
                let alpha = self.cfg.naive_bayes.alpha;
                let v = totals.distinct_tokens.max(1) as f64;
                let den_h = (totals.ham_tokens as f64 + alpha * v).ln();
                let den_s = (totals.spam_tokens as f64 + alpha * v).ln();
                let mut idx: Vec<(f64, usize)> = counts
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.total() > 0)
                    .map(|(i, c)| {
                        let m = if algorithm == Algorithm::Logistic {
                            c.lr_weight as f64
                        } else {
                            ((f64::from(c.spam) + alpha).ln() - den_s)
                                - ((f64::from(c.ham) + alpha).ln() - den_h)
                        };
                        (m.abs(), i)
                    })
                    .collect();
                idx.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                idx.into_iter()
                    .take(k)
                    .map(|(_, i)| make(i, self.robinson(&counts[i], totals)))
                    .collect()
            }
        }
    }
}

fn read<S: TokenStore>(
    store: &S,
    features: &Features,
) -> Result<(Vec<Counts>, Totals), FilterError> {
    let mut counts = Vec::with_capacity(features.len());
    store
        .get_counts(features.hashes(), &mut counts)
        .map_err(FilterError::store)?;
    if counts.len() != features.len() {
        counts.resize(features.len(), Counts::default());
    }
    let totals = store.totals().map_err(FilterError::store)?;
    Ok((counts, totals))
}

/// Feature value of each token of a message with `n` tokens (unit L2 norm).
fn lr_x(n: usize) -> f64 {
    1.0 / ((n.max(1)) as f64).sqrt()
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

fn clamp_logit(z: f64) -> f64 {
    if z.is_nan() {
        0.0
    } else {
        z.clamp(-MAX_LOGIT, MAX_LOGIT)
    }
}

fn log_add_exp(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// Log of the upper and lower tails of the chi-square distribution with `2n` degrees of
/// freedom at `x2`: `(ln Q, ln P)`, `Q = P(X >= x2)`, `P = 1 - Q`, both accurate even when tiny.
///
/// For even degrees of freedom, `Q = Σ_{i<n} e^-m m^i / i!` with `m = x2 / 2` (a Poisson tail).
pub fn chi2_log_tails(x2: f64, n: usize) -> (f64, f64) {
    let m = (x2 / 2.0).max(0.0);
    if n == 0 {
        return (0.0, f64::NEG_INFINITY);
    }
    if m == 0.0 {
        return (0.0, f64::NEG_INFINITY);
    }
    let ln_m = m.ln();
    // Terms in log space: t_0 = -m, t_i = t_{i-1} + ln m - ln i.
    let mut t = -m;
    let mut max = t;
    let mut acc = 1.0f64; // Σ exp(t_i - max)
    for i in 1..n {
        t += ln_m - (i as f64).ln();
        if t > max {
            acc = acc * (max - t).exp() + 1.0;
            max = t;
        } else {
            acc += (t - max).exp();
        }
    }
    let ln_q = (max + acc.ln()).min(0.0);
    if ln_q < -std::f64::consts::LN_2 {
        let ln_p = (-ln_q.exp()).ln_1p();
        return (ln_q, ln_p);
    }
    // Q >= 1/2 (so m is small compared to n): sum the lower tail P = Σ_{i>=n} directly.
    let mut t = t + ln_m - (n as f64).ln(); // t_n
    let first = t;
    let mut acc = 1.0f64;
    let mut i = n;
    while i < n + 100_000 {
        i += 1;
        t += ln_m - (i as f64).ln();
        let r = (t - first).exp();
        acc += r;
        if r < 1e-17 * acc && (i as f64) > m {
            break;
        }
    }
    let ln_p = (first + acc.ln()).min(0.0);
    let ln_q = ln_q.min((-ln_p.exp()).ln_1p());
    (ln_q, ln_p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chi2_tails_sum_to_one() {
        for &(x2, n) in &[
            (0.5, 1),
            (3.0, 2),
            (10.0, 5),
            (100.0, 10),
            (1000.0, 150),
            (5.0, 150),
        ] {
            let (q, p) = chi2_log_tails(x2, n);
            let s = q.exp() + p.exp();
            assert!((s - 1.0).abs() < 1e-9, "x2={x2} n={n} q={q} p={p}");
        }
        // chi2 with 2 dof: Q = exp(-x/2)
        let (q, _) = chi2_log_tails(4.0, 1);
        assert!((q - (-2.0)).abs() < 1e-12);
    }
}
