//! `tokenizer`: raw bytes through the spam filter's tokenizer and classifier.

use std::sync::{Mutex, OnceLock};

use mailroom_spamfilter::{
    token_hash, Algorithm, Class, Classifier, Features, Label, MemoryStore, Tokenizer,
    TokenizerConfig,
};

/// Small limits, so that every cut (bytes, parts, headers, tokens) is reached by fuzz input.
fn tight() -> TokenizerConfig {
    TokenizerConfig {
        max_tokens: 64,
        max_bytes: 2048,
        max_part_bytes: 512,
        osb_window: 3,
        max_word_len: 12,
        max_headers: 8,
        max_parts: 4,
        max_header_words: 4,
    }
}

/// A model trained on 12 ham and 12 spam corpus messages, in memory.
fn model() -> &'static MemoryStore {
    static MODEL: OnceLock<MemoryStore> = OnceLock::new();
    MODEL.get_or_init(|| {
        let tokenizer = Tokenizer::default();
        let classifier = Classifier::default();
        let mut store = MemoryStore::new();
        for (label, raw) in crate::training_set() {
            classifier
                .train(&mut store, &tokenizer.tokenize(raw), *label, 20_000)
                .expect("training");
        }
        store
    })
}

/// A copy of [`model`] that the target trains and untrains (and so leaves as it was).
fn trainable() -> &'static Mutex<MemoryStore> {
    static MODEL: OnceLock<Mutex<MemoryStore>> = OnceLock::new();
    MODEL.get_or_init(|| Mutex::new(model().clone()))
}

/// Tokenize `data` as a raw message with the default and with tight limits, classify it with
/// every combiner against a small trained model, then train it and untrain it again; check:
/// the features are sorted, distinct and within the token limit, with and without texts the
/// same hashes, every text hashing to its hash; every score in [0, 1] with a finite logit and
/// the class its cutoffs give; and untraining restoring the model exactly.
pub fn tokenizer(data: &[u8]) {
    let tokenizer = Tokenizer::default();
    let features = tokenizer.tokenize_with_text(data);
    check_features(
        Some(&tokenizer.tokenize(data)),
        &features,
        tokenizer.config(),
    );
    let tight = Tokenizer::new(tight());
    check_features(None, &tight.tokenize_with_text(data), tight.config());

    let classifier = Classifier::default();
    for algorithm in Algorithm::ALL {
        let v = classifier
            .classify_with(model(), &features, algorithm)
            .expect("classify");
        assert!(
            v.score.is_finite() && (0.0..=1.0).contains(&v.score),
            "{algorithm:?}: score {}",
            v.score
        );
        assert!(v.logit.is_finite(), "{algorithm:?}: logit {}", v.logit);
        assert_eq!(
            v.class,
            classifier.class_of(v.score),
            "{algorithm:?}: class"
        );
        assert_eq!(v.algorithm, algorithm);
        assert!(
            v.tokens_used <= features.len(),
            "{algorithm:?}: tokens used"
        );
        assert!(
            v.clues.len() <= classifier.config().explain_tokens,
            "{algorithm:?}: {} clues",
            v.clues.len()
        );
        for clue in &v.clues {
            assert!(
                clue.probability.is_finite() && (0.0..=1.0).contains(&clue.probability),
                "clue probability {}",
                clue.probability
            );
            assert!(clue.weight.is_finite(), "clue weight {}", clue.weight);
            assert!(
                features.hashes().binary_search(&clue.hash).is_ok(),
                "a clue that is not a token of the message"
            );
        }
        if matches!(v.class, Class::Spam) {
            assert!(v.score >= classifier.config().spam_cutoff);
        }
    }

    // Training is exactly reversible: the message's tokens and the totals are as before.
    let mut model = trainable().lock().unwrap_or_else(|e| e.into_inner());
    let before = counts_of(&model, features.hashes());
    let totals = model.current_totals();
    let label = if data.len().is_multiple_of(2) {
        Label::Spam
    } else {
        Label::Ham
    };
    let receipt = classifier
        .train(&mut *model, &features, label, 20_001)
        .expect("train");
    classifier
        .untrain(&mut *model, &features, &receipt)
        .expect("untrain");
    assert!(
        counts_of(&model, features.hashes()) == before && model.current_totals() == totals,
        "train then untrain did not restore the model"
    );
}

/// The ham and spam counts and the weight of each token (`last_seen_day` moves forward on
/// training and is not put back by untraining, by design).
fn counts_of(model: &MemoryStore, hashes: &[u64]) -> Vec<Option<(u32, u32, i64)>> {
    hashes
        .iter()
        .map(|&h| model.get(h).map(|c| (c.ham, c.spam, c.lr_weight)))
        .collect()
}

/// Check `texts` (tokenized with texts kept) and, when given, `plain` (the same message
/// tokenized without).
fn check_features(plain: Option<&Features>, texts: &Features, config: &TokenizerConfig) {
    if let Some(plain) = plain {
        assert_eq!(
            plain.hashes(),
            texts.hashes(),
            "hashes depend on keeping texts"
        );
        assert_eq!(plain.truncated(), texts.truncated());
        assert_eq!(plain.emitted(), texts.emitted());
    }
    let hashes = texts.hashes();
    assert!(
        hashes.windows(2).all(|w| w[0] < w[1]),
        "hashes not sorted and distinct"
    );
    assert!(texts.len() <= texts.emitted(), "more tokens than emitted");
    assert!(
        texts.emitted() <= config.max_tokens,
        "{} tokens emitted, limit {}",
        texts.emitted(),
        config.max_tokens
    );
    for &h in hashes {
        let text = texts
            .text_of(h)
            .unwrap_or_else(|| panic!("no text for token {h:x}"));
        assert_eq!(
            token_hash(text),
            h,
            "text {text:?} does not hash to its token"
        );
    }
}
