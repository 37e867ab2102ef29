//! Classifier behaviour: verdicts, cutoffs, explanations, extremes.

use mailroom_spamfilter::{
    Algorithm, Class, Classifier, ClassifierConfig, Label, MemoryStore, Tokenizer, TokenizerConfig,
};

fn trained(clf: &Classifier) -> (Tokenizer, MemoryStore) {
    let tok = Tokenizer::default();
    let mut store = MemoryStore::new();
    for i in 0..30 {
        let spam = format!(
            "From: promo{i}@deals.example\r\nSubject: cheap pills offer {i}\r\n\r\nBuy cheap pills now, only $19.99! Click http://pills.example.biz/buy\r\n"
        );
        let ham = format!(
            "From: colleague{i}@example.com\r\nSubject: project meeting {i}\r\n\r\nThe project meeting moved to Tuesday; please review the report.\r\n"
        );
        clf.train(&mut store, &tok.tokenize(spam.as_bytes()), Label::Spam, i)
            .unwrap();
        clf.train(&mut store, &tok.tokenize(ham.as_bytes()), Label::Ham, i)
            .unwrap();
    }
    (tok, store)
}

#[test]
fn every_algorithm_separates_obvious_mail() {
    for algorithm in Algorithm::ALL {
        let clf = Classifier::new(ClassifierConfig {
            algorithm,
            ..Default::default()
        })
        .unwrap();
        let (tok, store) = trained(&clf);
        let spam = tok.tokenize_with_text(b"From: x@deals.example\r\nSubject: cheap pills\r\n\r\nOnly $19.99 pills, click http://pills.example.biz/\r\n");
        let ham = tok.tokenize_with_text(b"From: y@example.com\r\nSubject: meeting\r\n\r\nPlease review the project report before the meeting.\r\n");
        let vs = clf.classify(&store, &spam).unwrap();
        let vh = clf.classify(&store, &ham).unwrap();
        assert_eq!(vs.class, Class::Spam, "{algorithm:?} {vs:?}");
        assert_eq!(vh.class, Class::Ham, "{algorithm:?} {vh:?}");
        assert!(vs.logit > vh.logit);
        assert_eq!(vs.algorithm, algorithm);
    }
}

#[test]
fn explanation_names_the_deciding_tokens() {
    let clf = Classifier::new(ClassifierConfig {
        algorithm: Algorithm::Fisher,
        ..Default::default()
    })
    .unwrap();
    let (tok, store) = trained(&clf);
    let f = tok.tokenize_with_text(b"Subject: cheap pills\r\n\r\ncheap pills\r\n");
    let v = clf.classify(&store, &f).unwrap();
    assert!(!v.clues.is_empty() && v.clues.len() <= clf.config().explain_tokens);
    let texts: Vec<&str> = v.clues.iter().filter_map(|c| c.text.as_deref()).collect();
    assert!(
        texts.contains(&"subject:pills") || texts.contains(&"pills"),
        "{texts:?}"
    );
    for c in &v.clues {
        assert!(c.text.is_some());
        assert!((c.probability - 0.5).abs() > clf.config().fisher.min_dev);
        assert!(c.probability > 0.5, "only spam evidence here: {c:?}");
        assert!(c.spam > 0);
    }
    // Most decisive first.
    assert!(v
        .clues
        .windows(2)
        .all(|w| (w[0].probability - 0.5).abs() >= (w[1].probability - 0.5).abs()));
    // Without texts kept, clues still carry hashes and counts.
    let v = clf
        .classify(
            &store,
            &tok.tokenize(b"Subject: cheap pills\r\n\r\ncheap pills\r\n"),
        )
        .unwrap();
    assert!(v.clues.iter().all(|c| c.text.is_none() && c.spam > 0));
}

#[test]
fn cutoffs_decide_the_class() {
    let clf = Classifier::new(ClassifierConfig {
        ham_cutoff: 0.3,
        spam_cutoff: 0.8,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(clf.class_of(0.0), Class::Ham);
    assert_eq!(clf.class_of(0.2999), Class::Ham);
    assert_eq!(clf.class_of(0.3), Class::Unsure);
    assert_eq!(clf.class_of(0.7999), Class::Unsure);
    assert_eq!(clf.class_of(0.8), Class::Spam);
    assert_eq!(clf.class_of(1.0), Class::Spam);
    assert!(Classifier::new(ClassifierConfig {
        ham_cutoff: 0.9,
        spam_cutoff: 0.5,
        ..Default::default()
    })
    .is_err());
}

#[test]
fn empty_model_and_empty_message_are_unsure() {
    let clf = Classifier::default();
    let tok = Tokenizer::default();
    let store = MemoryStore::new();
    let v = clf
        .classify(&store, &tok.tokenize(b"Subject: hi\r\n\r\nhello\r\n"))
        .unwrap();
    assert_eq!((v.score, v.class), (0.5, Class::Unsure));
    let (_, store) = trained(&clf);
    let v = clf.classify(&store, &tok.tokenize(b"")).unwrap();
    assert_eq!(v.class, Class::Unsure);
    assert!(v.score.is_finite());
}

#[test]
fn huge_message_scores_finite() {
    for algorithm in Algorithm::ALL {
        let clf = Classifier::new(ClassifierConfig {
            algorithm,
            ..Default::default()
        })
        .unwrap();
        let (_, store) = trained(&clf);
        let tok = Tokenizer::new(TokenizerConfig {
            max_tokens: 200_000,
            max_part_bytes: 4 << 20,
            ..Default::default()
        });
        let mut raw = String::from("Subject: cheap pills\r\n\r\n");
        for _ in 0..50_000 {
            raw.push_str("cheap pills now only $19.99 click ");
        }
        let v = clf.classify(&store, &tok.tokenize(raw.as_bytes())).unwrap();
        assert!(v.score.is_finite() && (0.0..=1.0).contains(&v.score) && v.logit.is_finite());
        assert_eq!(v.class, Class::Spam, "{algorithm:?}");
    }
}
