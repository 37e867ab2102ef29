//! Property tests: exact train/untrain, scores always in [0, 1].

use mailroom_spamfilter::{
    Algorithm, Classifier, ClassifierConfig, Counts, FilterError, Label, MemoryStore, Tokenizer,
    Totals,
};
use proptest::prelude::*;

const WORDS: &[&str] = &[
    "free",
    "money",
    "meeting",
    "invoice",
    "viagra",
    "hello",
    "project",
    "deadline",
    "cheap",
    "offer",
    "click",
    "unsubscribe",
    "lunch",
    "report",
    "winner",
    "prize",
    "patch",
    "kernel",
    "$100",
    "50%",
    "http://spam.example.com/x",
    "<b>bold</b>",
];

fn message() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(WORDS), 0..6),
        prop::collection::vec(prop::sample::select(WORDS), 0..40),
        prop::sample::select(&["a@example.com", "b@spam.example", "c@example.org"][..]),
    )
        .prop_map(|(subj, body, from)| {
            format!(
                "From: {from}\r\nSubject: {}\r\n\r\n{}\r\n",
                subj.join(" "),
                body.join(" ")
            )
        })
}

fn labelled() -> impl Strategy<Value = (bool, String)> {
    (any::<bool>(), message())
}

fn label(spam: bool) -> Label {
    if spam {
        Label::Spam
    } else {
        Label::Ham
    }
}

/// Everything but `last_seen_day` (a date, not a count: untraining leaves it).
fn snapshot(s: &MemoryStore) -> (Vec<(u64, u32, u32, i64)>, Totals) {
    let mut v: Vec<_> = s
        .iter()
        .map(|(h, c): (u64, &Counts)| (h, c.ham, c.spam, c.lr_weight))
        .collect();
    v.sort_unstable();
    (v, s.current_totals())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn train_then_untrain_restores_every_count(
        history in prop::collection::vec(labelled(), 0..20),
        extra in labelled(),
        day in 0u32..100_000,
    ) {
        let tok = Tokenizer::default();
        let clf = Classifier::default();
        let mut store = MemoryStore::new();
        for (i, (spam, m)) in history.iter().enumerate() {
            clf.train(&mut store, &tok.tokenize(m.as_bytes()), label(*spam), i as u32).unwrap();
        }
        let before = snapshot(&store);
        let f = tok.tokenize(extra.1.as_bytes());
        let receipt = clf.train(&mut store, &f, label(extra.0), day).unwrap();
        clf.untrain(&mut store, &f, &receipt).unwrap();
        prop_assert_eq!(snapshot(&store), before);
    }

    #[test]
    fn untraining_everything_empties_the_store(
        history in prop::collection::vec(labelled(), 1..20),
        order_seed in any::<u64>(),
    ) {
        let tok = Tokenizer::default();
        let clf = Classifier::default();
        let mut store = MemoryStore::new();
        let mut learned = Vec::new();
        for (spam, m) in &history {
            let f = tok.tokenize(m.as_bytes());
            let r = clf.train(&mut store, &f, label(*spam), 1).unwrap();
            learned.push((f, r));
        }
        // Untrain in a shuffled order.
        let n = learned.len();
        let mut order: Vec<usize> = (0..n).collect();
        let mut x = order_seed | 1;
        for i in (1..n).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        for i in order {
            let (f, r) = &learned[i];
            clf.untrain(&mut store, f, r).unwrap();
        }
        prop_assert!(store.is_empty());
        prop_assert_eq!(store.current_totals(), Totals::default());
    }

    #[test]
    fn scores_are_finite_and_in_unit_interval(
        history in prop::collection::vec(labelled(), 0..30),
        raw in prop::collection::vec(any::<u8>(), 0..2000),
        text in message(),
        algorithm in prop::sample::select(&Algorithm::ALL[..]),
        warmup in 0u64..3,
    ) {
        let tok = Tokenizer::default();
        let clf = Classifier::new(ClassifierConfig {
            algorithm,
            warmup_messages: warmup,
            ..ClassifierConfig::default()
        }).unwrap();
        let mut store = MemoryStore::new();
        for (spam, m) in &history {
            clf.train(&mut store, &tok.tokenize(m.as_bytes()), label(*spam), 0).unwrap();
        }
        for input in [raw.as_slice(), text.as_bytes(), b"".as_slice()] {
            let f = tok.tokenize_with_text(input);
            let v = clf.classify(&store, &f).unwrap();
            prop_assert!(v.score.is_finite() && (0.0..=1.0).contains(&v.score), "{}", v.score);
            prop_assert!(v.logit.is_finite());
            let all = clf.score_all(&store, &f).unwrap();
            for a in Algorithm::ALL {
                let (s, l) = all.get(a);
                prop_assert!(s.is_finite() && (0.0..=1.0).contains(&s) && l.is_finite());
            }
        }
    }
}

#[test]
fn untraining_an_unlearned_message_fails_and_changes_nothing() {
    let tok = Tokenizer::default();
    let clf = Classifier::default();
    let mut store = MemoryStore::new();
    let a = tok.tokenize(b"Subject: one\r\n\r\nhello world\r\n");
    let b = tok.tokenize(b"Subject: two\r\n\r\nother words entirely\r\n");
    let r = clf.train(&mut store, &a, Label::Ham, 3).unwrap();
    let before = store.clone();
    let wrong_label = mailroom_spamfilter::TrainReceipt {
        label: Label::Spam,
        ..r
    };
    assert!(matches!(
        clf.untrain(&mut store, &a, &wrong_label),
        Err(FilterError::NotLearned { label: Label::Spam })
    ));
    assert!(clf.untrain(&mut store, &b, &r).is_err());
    assert_eq!(store, before);
    clf.untrain(&mut store, &a, &r).unwrap();
    assert!(store.is_empty());
    assert!(clf.untrain(&mut store, &a, &r).is_err(), "twice is refused");
}
