//! Differential test: our multinomial naive Bayes against linfa-bayes' `MultinomialNb` on the
//! same hashed (binary) features of real messages. Same predicted class, same joint
//! log-likelihoods.
//!
//! (linfa-bayes 0.8.1 prints its model to stderr on every fit: a leftover `dbg!`.)

use std::collections::HashMap;
use std::path::Path;

use linfa::prelude::*;
use linfa_bayes::{MultinomialNb, NaiveBayes};
use mailroom_spamfilter::{
    Algorithm, Classifier, ClassifierConfig, Features, Label, MemoryStore, NaiveBayesParams,
    Tokenizer, TokenizerConfig,
};
use ndarray::{Array1, Array2};

fn corpus(n: usize) -> Vec<(Label, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../corpus/spamassassin");
    let index = std::fs::read_to_string(dir.join("index")).expect("corpus index");
    index
        .lines()
        .filter_map(|l| l.split_once(' '))
        .take(n)
        .map(|(l, p)| {
            let label = if l == "spam" { Label::Spam } else { Label::Ham };
            (label, std::fs::read(dir.join(p)).expect("corpus message"))
        })
        .collect()
}

#[test]
fn multinomial_nb_matches_linfa_bayes() {
    let alpha = 0.5;
    let clf = Classifier::new(ClassifierConfig {
        algorithm: Algorithm::NaiveBayes,
        warmup_messages: 0,
        naive_bayes: NaiveBayesParams {
            alpha,
            prior_alpha: 0.0,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    // Small feature sets keep the dense matrix (and linfa's stderr dump) small.
    let tok = Tokenizer::new(TokenizerConfig {
        max_tokens: 150,
        ..Default::default()
    });
    let msgs = corpus(90);
    let (train, test) = msgs.split_at(60);

    let mut store = MemoryStore::new();
    let mut columns: HashMap<u64, usize> = HashMap::new();
    let mut train_feats: Vec<(Label, Features)> = Vec::new();
    for (label, raw) in train {
        let f = tok.tokenize(raw);
        clf.train(&mut store, &f, *label, 0).unwrap();
        for &h in f.hashes() {
            let n = columns.len();
            columns.entry(h).or_insert(n);
        }
        train_feats.push((*label, f));
    }
    assert!(
        train_feats.iter().any(|x| x.0 == Label::Ham)
            && train_feats.iter().any(|x| x.0 == Label::Spam)
    );
    assert_eq!(
        store.len(),
        columns.len(),
        "vocabulary = distinct training tokens"
    );

    let dense = |fs: &[&Features]| {
        let mut x = Array2::<f64>::zeros((fs.len(), columns.len()));
        for (r, f) in fs.iter().enumerate() {
            for h in f.hashes() {
                if let Some(&c) = columns.get(h) {
                    x[[r, c]] = 1.0;
                }
            }
        }
        x
    };
    let xs = dense(&train_feats.iter().map(|x| &x.1).collect::<Vec<_>>());
    let ys: Array1<usize> = train_feats
        .iter()
        .map(|x| usize::from(x.0 == Label::Spam))
        .collect();
    let model = MultinomialNb::params()
        .alpha(alpha)
        .fit(&Dataset::new(xs, ys))
        .unwrap();

    let test_feats: Vec<Features> = test.iter().map(|(_, raw)| tok.tokenize(raw)).collect();
    let xt = dense(&test_feats.iter().collect::<Vec<_>>());
    let jll = model.joint_log_likelihood(xt.view());
    let pred = model.predict(&xt);
    let mut agree_with_truth = 0;
    for (i, f) in test_feats.iter().enumerate() {
        let (ours_h, ours_s) = clf.naive_bayes_log_likelihoods(&store, f).unwrap();
        let theirs_h = jll[&0usize][i];
        let theirs_s = jll[&1usize][i];
        let tol = 1e-9 * theirs_h.abs().max(1.0);
        assert!(
            (ours_h - theirs_h).abs() < tol,
            "ham jll {ours_h} vs {theirs_h}"
        );
        assert!(
            (ours_s - theirs_s).abs() < 1e-9 * theirs_s.abs().max(1.0),
            "spam jll {ours_s} vs {theirs_s}"
        );
        let ours_spam = ours_s > ours_h;
        assert_eq!(usize::from(ours_spam), pred[i], "message {i}");
        let v = clf.classify(&store, f).unwrap();
        assert_eq!(v.logit > 0.0, ours_spam);
        if ours_spam == (test[i].0 == Label::Spam) {
            agree_with_truth += 1;
        }
    }
    // Sanity: the model learned something.
    assert!(
        agree_with_truth * 10 >= test.len() * 7,
        "{agree_with_truth}/{}",
        test.len()
    );
}
