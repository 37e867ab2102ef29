//! Accuracy floor on the project's own corpus (800 SpamAssassin messages, TREC
//! immediate-feedback order). Catches a broken tokenizer or combiner, not small regressions:
//! the floors are about 1.5 times the measured figures (without body words, for instance,
//! Fisher measures 0.91 % and naive Bayes 1.95 %).

use std::path::Path;

use mailroom_spamfilter::{
    one_minus_roca_percent, rates, run_online, Algorithm, Classifier, Judged, Label, MemoryStore,
    Tokenizer,
};

#[test]
fn online_accuracy_on_project_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../corpus/spamassassin");
    let index = std::fs::read_to_string(dir.join("index")).expect("corpus index");
    let msgs: Vec<(Label, Vec<u8>)> = index
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(l, p)| {
            let label = if l == "spam" { Label::Spam } else { Label::Ham };
            (label, std::fs::read(dir.join(p)).expect("corpus message"))
        })
        .collect();
    assert_eq!(msgs.len(), 800);
    let clf = Classifier::default();
    let mut store = MemoryStore::new();
    let run = run_online(&clf, &Tokenizer::default(), &mut store, msgs, 0).unwrap();
    assert_eq!(
        store.current_totals().ham_messages + store.current_totals().spam_messages,
        800
    );

    // Measured (release): fisher 0.69, naive_bayes 0.66, logistic 0.74, fusion 0.43.
    let floors = [
        (Algorithm::Fisher, 1.0),
        (Algorithm::NaiveBayes, 1.0),
        (Algorithm::Logistic, 1.1),
        (Algorithm::Fusion, 0.7),
    ];
    let cfg = clf.config();
    for (a, floor) in floors {
        let judged: Vec<Judged> = run
            .iter()
            .map(|(label, s)| {
                let (score, key) = s.get(a);
                Judged {
                    label: *label,
                    score,
                    key,
                }
            })
            .collect();
        let roca = one_minus_roca_percent(&judged).unwrap();
        let r = rates(&judged, cfg.ham_cutoff, cfg.spam_cutoff);
        eprintln!(
            "{a:?}: 1-ROCA {roca:.4} %, FPR {:.3} %, FNR {:.2} %",
            r.fpr_percent, r.fnr_percent
        );
        assert!(roca < floor, "{a:?}: 1-ROCA {roca} % >= floor {floor} %");
        if a == cfg.algorithm {
            assert!(r.fpr_percent <= 0.5, "{a:?}: FPR {} %", r.fpr_percent);
            assert!(r.fnr_percent < 40.0, "{a:?}: FNR {} %", r.fnr_percent);
        }
    }
}
