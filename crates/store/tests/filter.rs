//! The spam filter's storage: exact train/untrain, idempotence, relabel, differential against
//! the in-memory reference, reopen, export/import, expiry, quarantine and classification views.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use mailroom_spamfilter::{
    Classifier, Counts, Features, Label, MemoryStore, TokenStore, Tokenizer, Totals, Update,
};
use mailroom_store::{
    write_model, Classification, ClueView, CommitOutcome, ContactId, MessageKey, Store, StoreError,
    ThreadDecision, TicketId, TrainOutcome, Verdict,
};
use sha2::{Digest, Sha256};

/// A corpus message: label, raw bytes, features (with texts).
struct Mail {
    label: Label,
    raw: Vec<u8>,
    features: Features,
}

impl Mail {
    fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(&self.raw).into()
    }
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../corpus/spamassassin")
}

/// The first `n` messages of the SpamAssassin corpus index, tokenized (keeping token texts
/// when `with_text`).
fn load_corpus(n: usize, with_text: bool) -> Vec<Mail> {
    let dir = corpus_dir();
    let index = std::fs::read_to_string(dir.join("index")).unwrap();
    let tokenizer = Tokenizer::default();
    index
        .lines()
        .take(n)
        .map(|line| {
            let (label, path) = line.split_once(' ').unwrap();
            let raw = std::fs::read(dir.join(path)).unwrap();
            Mail {
                label: if label == "spam" {
                    Label::Spam
                } else {
                    Label::Ham
                },
                features: if with_text {
                    tokenizer.tokenize_with_text(&raw)
                } else {
                    tokenizer.tokenize(&raw)
                },
                raw,
            }
        })
        .collect()
}

/// The first 80 messages of the SpamAssassin corpus index, tokenized once.
fn corpus() -> &'static [Mail] {
    static MAILS: OnceLock<Vec<Mail>> = OnceLock::new();
    MAILS.get_or_init(|| load_corpus(80, true))
}

fn other(label: Label) -> Label {
    match label {
        Label::Ham => Label::Spam,
        Label::Spam => Label::Ham,
    }
}

fn export(store: &Store) -> Vec<u8> {
    let mut out = Vec::new();
    store.filter_export(&mut out).unwrap();
    out
}

/// Compare two model files without dumping megabytes on a mismatch.
#[track_caller]
fn assert_model_eq(a: &[u8], b: &[u8]) {
    if a != b {
        let (ta, ra) = parse_model(a);
        let (tb, rb) = parse_model(b);
        assert_eq!(ta, tb, "model totals differ");
        assert_eq!(ra.len(), rb.len(), "model record counts differ");
        let first = ra.iter().zip(&rb).find(|(x, y)| x != y);
        panic!("model records differ, first: {first:?}");
    }
}

/// The model file of an in-memory reference store.
fn memory_model(mem: &MemoryStore) -> Vec<u8> {
    let mut records: Vec<(u64, Counts)> = mem.iter().map(|(h, c)| (h, *c)).collect();
    records.sort_by_key(|r| r.0);
    let mut out = Vec::new();
    write_model(&mem.current_totals(), records, &mut out).unwrap();
    out
}

/// Parse a model file (test-side reader of the documented format).
fn parse_model(bytes: &[u8]) -> (Totals, Vec<(u64, Counts)>) {
    assert_eq!(&bytes[..4], b"MRFM");
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let totals = Totals {
        ham_messages: u64_at(8),
        spam_messages: u64_at(16),
        ham_tokens: u64_at(24),
        spam_tokens: u64_at(32),
        distinct_tokens: u64_at(40),
        lr_bias: u64_at(48) as i64,
    };
    let n = u64_at(56) as usize;
    assert_eq!(bytes.len(), 64 + 28 * n + 32);
    let records = (0..n)
        .map(|i| {
            let at = 64 + 28 * i;
            (
                u64_at(at),
                Counts {
                    ham: u32_at(at + 8),
                    spam: u32_at(at + 12),
                    last_seen_day: u32_at(at + 16),
                    lr_weight: u64_at(at + 20) as i64,
                },
            )
        })
        .collect();
    let digest: [u8; 32] = Sha256::digest(&bytes[..bytes.len() - 32]).into();
    assert_eq!(&bytes[bytes.len() - 32..], &digest);
    (totals, records)
}

fn train(store: &Store, c: &Classifier, m: &Mail, label: Label, day: u32) -> TrainOutcome {
    store
        .filter_train(c, &m.features, &m.fingerprint(), label, None, day)
        .unwrap()
}

fn scores(store: &Store, c: &Classifier, mails: &[Mail]) -> Vec<f64> {
    mails
        .iter()
        .map(|m| {
            c.classify(&store.filter_tokens(), &m.features)
                .unwrap()
                .score
        })
        .collect()
}

#[test]
fn train_then_untrain_restores_every_count_and_total() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let c = Classifier::default();
    let mails = corpus();
    assert!(store.filter_is_empty().unwrap());
    let empty = export(&store);
    // A baseline, then more messages learned on later days and untrained again.
    let mut mem = MemoryStore::new();
    for m in &mails[..30] {
        assert_eq!(train(&store, &c, m, m.label, 100), TrainOutcome::Learned);
        c.train(&mut mem, &m.features, m.label, 100).unwrap();
    }
    assert!(!store.filter_is_empty().unwrap());
    let baseline = export(&store);
    assert_model_eq(&baseline, &memory_model(&mem));
    for m in &mails[30..45] {
        assert_eq!(train(&store, &c, m, m.label, 100), TrainOutcome::Learned);
    }
    assert!(export(&store) != baseline);
    for m in mails[30..45].iter().rev() {
        assert!(store
            .filter_untrain(&c, &m.features, &m.fingerprint())
            .unwrap());
        assert_eq!(store.filter_learned(&m.fingerprint()).unwrap(), None);
    }
    assert_model_eq(&export(&store), &baseline);
    // Untraining in another order than training restores too (counts and LR weights are sums).
    for m in &mails[..30] {
        assert!(store
            .filter_untrain(&c, &m.features, &m.fingerprint())
            .unwrap());
    }
    assert_model_eq(&export(&store), &empty);
    assert!(store.filter_is_empty().unwrap());
    assert_eq!(store.filter_stats().unwrap().learned_records, 0);
}

#[test]
fn store_matches_the_memory_reference_with_later_days_and_untraining() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let c = Classifier::default();
    let mails = corpus();
    let mut mem = MemoryStore::new();
    let mut receipts = Vec::new();
    for (i, m) in mails[..50].iter().enumerate() {
        let day = 19_000 + i as u32;
        train(&store, &c, m, m.label, day);
        receipts.push(c.train(&mut mem, &m.features, m.label, day).unwrap());
    }
    for i in (0..50).step_by(3) {
        let m = &mails[i];
        assert!(store
            .filter_untrain(&c, &m.features, &m.fingerprint())
            .unwrap());
        c.untrain(&mut mem, &m.features, &receipts[i]).unwrap();
    }
    assert_model_eq(&export(&store), &memory_model(&mem));
    // Same verdicts (score, logit, clues) through the store's view as on the reference.
    let view = store.filter_tokens();
    for m in &mails[50..] {
        let a = c.classify(&view, &m.features).unwrap();
        let b = c.classify(&mem, &m.features).unwrap();
        assert_eq!(a.score.to_bits(), b.score.to_bits());
        assert_eq!(a, b);
    }
    let stats = store.filter_stats().unwrap();
    let t = mem.current_totals();
    assert_eq!(
        (stats.ham_messages, stats.spam_messages, stats.tokens),
        (t.ham_messages, t.spam_messages, t.distinct_tokens)
    );
    assert_eq!(stats.learned_records, 50 - 17);
    assert!(stats.bytes_on_disk > 0);
}

#[test]
fn training_twice_is_already_learned_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let c = Classifier::default();
    let mails = corpus();
    for m in &mails[..20] {
        train(&store, &c, m, m.label, 7);
    }
    let before = export(&store);
    for m in &mails[..20] {
        assert_eq!(
            train(&store, &c, m, m.label, 9),
            TrainOutcome::AlreadyLearned
        );
        assert_eq!(
            store.filter_learned(&m.fingerprint()).unwrap(),
            Some(m.label)
        );
    }
    assert_model_eq(&export(&store), &before);
    assert_eq!(store.filter_stats().unwrap().learned_records, 20);
}

#[test]
fn relabel_equals_training_the_new_label_only() {
    let c = Classifier::default();
    let mails = corpus();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (relabeled, direct) = (open(d1.path()), open(d2.path()));
    for m in &mails[..25] {
        train(&relabeled, &c, m, m.label, 3);
        train(&direct, &c, m, m.label, 3);
    }
    for m in &mails[25..35] {
        assert_eq!(train(&relabeled, &c, m, m.label, 3), TrainOutcome::Learned);
    }
    for m in &mails[25..35] {
        let to = other(m.label);
        assert_eq!(train(&relabeled, &c, m, to, 3), TrainOutcome::Relabeled);
        assert_eq!(
            relabeled.filter_learned(&m.fingerprint()).unwrap(),
            Some(to)
        );
    }
    // `direct` learns the later messages with the other label, in the order the relabeled
    // store ended up with them.
    for m in &mails[25..35] {
        train(&direct, &c, m, other(m.label), 3);
    }
    // Relabeling one at a time re-trains in order, so the first relabel saw the other nine
    // still learned with the old label: compare counts (exact) rather than LR steps.
    let (ta, ra) = parse_model(&export(&relabeled));
    let (tb, rb) = parse_model(&export(&direct));
    let strip = |t: Totals| (t.ham_messages, t.spam_messages, t.ham_tokens, t.spam_tokens);
    assert_eq!(strip(ta), strip(tb));
    assert_eq!(ta.distinct_tokens, tb.distinct_tokens);
    let counts = |r: &[(u64, Counts)]| -> Vec<(u64, u32, u32)> {
        r.iter().map(|(h, c)| (*h, c.ham, c.spam)).collect()
    };
    assert_eq!(counts(&ra), counts(&rb));

    // One relabel right after learning is exactly the same as learning the new label.
    let (d3, d4) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(d3.path()), open(d4.path()));
    for m in &mails[..25] {
        train(&a, &c, m, m.label, 3);
        train(&b, &c, m, m.label, 3);
    }
    let x = &mails[40];
    train(&a, &c, x, x.label, 3);
    assert_eq!(train(&a, &c, x, other(x.label), 3), TrainOutcome::Relabeled);
    train(&b, &c, x, other(x.label), 3);
    assert_model_eq(&export(&a), &export(&b));
}

#[test]
fn untraining_what_was_never_learned_is_false() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let c = Classifier::default();
    let mails = corpus();
    for m in &mails[..10] {
        train(&store, &c, m, m.label, 1);
    }
    let before = export(&store);
    let m = &mails[10];
    assert!(!store
        .filter_untrain(&c, &m.features, &m.fingerprint())
        .unwrap());
    assert_eq!(store.filter_learned(&m.fingerprint()).unwrap(), None);
    // A second untrain of a learned message is false too. (The last one learned, so that
    // learning it again takes the same LR step.)
    let m = &mails[9];
    assert!(store
        .filter_untrain(&c, &m.features, &m.fingerprint())
        .unwrap());
    assert!(!store
        .filter_untrain(&c, &m.features, &m.fingerprint())
        .unwrap());
    train(&store, &c, m, m.label, 1);
    assert_model_eq(&export(&store), &before);
}

#[test]
fn counts_never_go_negative() {
    // A learned record whose tokens do not hold the message (other features than trained):
    // untraining is refused and nothing changes.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let c = Classifier::default();
    let a = Features::from_texts(["alpha", "beta"]);
    let b = Features::from_texts(["gamma"]);
    let fp = [7u8; 32];
    store
        .filter_train(&c, &a, &fp, Label::Spam, None, 1)
        .unwrap();
    let before = export(&store);
    let err = store.filter_untrain(&c, &b, &fp).unwrap_err();
    assert!(matches!(err, StoreError::Filter(_)), "{err}");
    let err = store
        .filter_train(&c, &b, &fp, Label::Ham, None, 1)
        .unwrap_err();
    assert!(matches!(err, StoreError::Filter(_)), "{err}");
    assert_model_eq(&export(&store), &before);
    assert_eq!(store.filter_learned(&fp).unwrap(), Some(Label::Spam));
}

#[test]
fn the_token_view_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut view = store.filter_tokens();
    let update = Update {
        hashes: &[1, 2],
        label: Label::Ham,
        direction: mailroom_spamfilter::Direction::Learn,
        lr_step: 0,
        day: 0,
    };
    assert!(view.apply(&update).is_err());
    let mut out = vec![Counts {
        ham: 9,
        ..Counts::default()
    }];
    view.get_counts(&[1, 2, 3], &mut out).unwrap();
    assert_eq!(out, vec![Counts::default(); 3]);
    assert_eq!(view.totals().unwrap(), Totals::default());
}

#[test]
fn reopen_keeps_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let c = Classifier::default();
    let mails = corpus();
    let (model, before) = {
        let store = open(dir.path());
        for m in &mails[..40] {
            train(&store, &c, m, m.label, 5);
        }
        (export(&store), scores(&store, &c, &mails[40..]))
    };
    let store = open(dir.path());
    assert_model_eq(&export(&store), &model);
    assert_eq!(scores(&store, &c, &mails[40..]), before);
    assert_eq!(
        store.filter_learned(&mails[3].fingerprint()).unwrap(),
        Some(mails[3].label)
    );
    assert_eq!(
        train(&store, &c, &mails[3], mails[3].label, 6),
        TrainOutcome::AlreadyLearned
    );
}

#[test]
fn export_import_gives_identical_scores() {
    let c = Classifier::default();
    let mails = corpus();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = open(d1.path());
    for m in &mails[..50] {
        train(&source, &c, m, m.label, 11);
    }
    let model = export(&source);
    let n = parse_model(&model).1.len() as u64;
    // Into a fresh store.
    let target = open(d2.path());
    assert_eq!(target.filter_import(&mut model.as_slice()).unwrap(), n);
    assert_eq!(
        scores(&target, &c, &mails[50..]),
        scores(&source, &c, &mails[50..])
    );
    assert_model_eq(&export(&target), &model);
    assert_eq!(target.filter_stats().unwrap().learned_records, 0);
    drop(target);
    let target = open(d2.path());
    assert_model_eq(&export(&target), &model);
    assert_eq!(
        scores(&target, &c, &mails[50..]),
        scores(&source, &c, &mails[50..])
    );
    // Training on top of an imported model works like training on the original.
    let x = &mails[60];
    train(&target, &c, x, x.label, 12);
    train(&source, &c, x, x.label, 12);
    assert_model_eq(&export(&target), &export(&source));
}

#[test]
fn import_replaces_a_trained_model_and_forgets_learned_records() {
    let c = Classifier::default();
    let mails = corpus();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = open(d1.path());
    for m in &mails[..30] {
        train(&source, &c, m, m.label, 11);
    }
    let model = export(&source);
    let target = open(d2.path());
    for m in &mails[40..70] {
        train(&target, &c, m, m.label, 11);
    }
    target.filter_import(&mut model.as_slice()).unwrap();
    assert_model_eq(&export(&target), &model);
    let m = &mails[45];
    assert_eq!(target.filter_learned(&m.fingerprint()).unwrap(), None);
    assert!(!target
        .filter_untrain(&c, &m.features, &m.fingerprint())
        .unwrap());
    assert_eq!(target.filter_stats().unwrap().learned_records, 0);
    // It can be learned again into the new model.
    assert_eq!(train(&target, &c, m, m.label, 12), TrainOutcome::Learned);
    assert_eq!(target.filter_stats().unwrap().learned_records, 1);
    drop(target);
    let target = open(d2.path());
    assert_eq!(
        target.filter_learned(&m.fingerprint()).unwrap(),
        Some(m.label)
    );
}

/// Refresh the SHA-256 trailer of an edited model file.
fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    let n = bytes.len() - 32;
    let digest: [u8; 32] = Sha256::digest(&bytes[..n]).into();
    bytes[n..].copy_from_slice(&digest);
    bytes
}

#[test]
fn bad_model_files_are_refused_and_change_nothing() {
    let c = Classifier::default();
    let mails = corpus();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = open(d1.path());
    for m in &mails[..30] {
        train(&source, &c, m, m.label, 11);
    }
    let good = export(&source);
    let target = open(d2.path());
    for m in &mails[40..60] {
        train(&target, &c, m, m.label, 11);
    }
    let before = export(&target);
    let before_scores = scores(&target, &c, &mails[60..]);

    let mut bad: Vec<(&str, Vec<u8>)> = Vec::new();
    bad.push(("empty", Vec::new()));
    for len in [
        3,
        10,
        63,
        64,
        64 + 28 * 5 + 3,
        good.len() - 33,
        good.len() - 1,
    ] {
        bad.push(("truncated", good[..len].to_vec()));
    }
    let mut flipped = good.clone();
    flipped[64 + 28 * 7 + 9] ^= 0x10;
    bad.push(("flipped count", flipped));
    let mut flipped = good.clone();
    flipped[20] ^= 1;
    bad.push(("flipped total", flipped));
    let mut magic = good.clone();
    magic[0] = b'X';
    bad.push(("magic", reseal(magic)));
    let mut version = good.clone();
    version[4] = 2;
    bad.push(("version", reseal(version)));
    let mut flags = good.clone();
    flags[6] = 1;
    bad.push(("flags", reseal(flags)));
    let mut trailing = good.clone();
    trailing.push(0);
    bad.push(("trailing byte", trailing));
    let mut absurd = good.clone();
    absurd[56..64].copy_from_slice(&(1u64 << 40).to_le_bytes());
    absurd[40..48].copy_from_slice(&(1u64 << 40).to_le_bytes());
    bad.push(("absurd count", reseal(absurd)));
    // Records swapped (out of order), with a valid checksum.
    let mut swapped = good.clone();
    let (a, b) = (64 + 28 * 2, 64 + 28 * 3);
    let rec_a = swapped[a..a + 28].to_vec();
    let rec_b = swapped[b..b + 28].to_vec();
    swapped[a..a + 28].copy_from_slice(&rec_b);
    swapped[b..b + 28].copy_from_slice(&rec_a);
    bad.push(("out of order", reseal(swapped)));
    // Totals that are not the sums of the records, with a valid checksum.
    let mut sums = good.clone();
    let ham_tokens = u64::from_le_bytes(sums[24..32].try_into().unwrap());
    sums[24..32].copy_from_slice(&(ham_tokens + 1).to_le_bytes());
    bad.push(("sums", reseal(sums)));
    // Count that disagrees with distinct_tokens.
    let mut count = good.clone();
    let n = u64::from_le_bytes(count[56..64].try_into().unwrap());
    count[56..64].copy_from_slice(&(n - 1).to_le_bytes());
    bad.push(("count", reseal(count)));

    for (what, bytes) in &bad {
        let err = target.filter_import(&mut bytes.as_slice()).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidModel(_)),
            "{what}: expected InvalidModel, got {err}"
        );
        assert!(export(&target) == before, "{what} changed the model");
    }
    assert_eq!(scores(&target, &c, &mails[60..]), before_scores);
    assert_eq!(target.filter_stats().unwrap().learned_records, 20);
    assert_eq!(
        train(&target, &c, &mails[45], mails[45].label, 12),
        TrainOutcome::AlreadyLearned
    );
    // The good file still imports afterwards, and the store reopens cleanly.
    target.filter_import(&mut good.as_slice()).unwrap();
    assert_model_eq(&export(&target), &good);
    drop(target);
    assert_model_eq(&export(&open(d2.path())), &good);
}

#[test]
fn write_model_refuses_unsorted_or_empty_records() {
    let totals = Totals {
        ham_messages: 1,
        ham_tokens: 2,
        distinct_tokens: 2,
        ..Totals::default()
    };
    let one = Counts {
        ham: 1,
        ..Counts::default()
    };
    let mut out = Vec::new();
    assert!(write_model(&totals, [(5, one), (3, one)], &mut out).is_err());
    assert!(write_model(&totals, [(3, one), (5, Counts::default())], &mut out).is_err());
    assert!(write_model(&totals, [(3, one)], &mut out).is_err());
    let mut out = Vec::new();
    assert_eq!(
        write_model(&totals, [(3, one), (5, one)], &mut out).unwrap(),
        2
    );
    assert_eq!(out.len(), 64 + 2 * 28 + 32);
}

#[test]
fn expire_removes_only_rare_old_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let c = Classifier::default();
    let h = mailroom_spamfilter::token_hash;
    // (features, fingerprint, label, day)
    let m1 = Features::from_texts(["common", "old1", "old2"]);
    let m2 = Features::from_texts(["common", "recent"]);
    let m3 = Features::from_texts(["common", "older", "pair"]);
    let m4 = Features::from_texts(["pair", "edge"]);
    store
        .filter_train(&c, &m1, &[1; 32], Label::Ham, None, 10)
        .unwrap();
    store
        .filter_train(&c, &m2, &[2; 32], Label::Spam, None, 20)
        .unwrap();
    store
        .filter_train(&c, &m3, &[3; 32], Label::Ham, None, 5)
        .unwrap();
    store
        .filter_train(&c, &m4, &[4; 32], Label::Spam, None, 15)
        .unwrap();
    let (t0, r0) = parse_model(&export(&store));
    assert_eq!(r0.len(), 7);
    // Nothing is old enough before day 5; "edge" was last seen on day 15 (not before 15).
    assert_eq!(store.filter_expire(5, 1).unwrap(), 0);
    assert_eq!(export(&store).len(), 64 + 7 * 28 + 32);
    // Before day 15, seen at most once: old1, old2 (day 10), older (day 5). Not "common" (3
    // messages), not "pair" (2), not "recent" (day 20), not "edge" (day 15).
    assert_eq!(store.filter_expire(15, 1).unwrap(), 3);
    let (t1, r1) = parse_model(&export(&store));
    let mut left: Vec<u64> = r1.iter().map(|r| r.0).collect();
    let mut want: Vec<u64> = ["common", "recent", "pair", "edge"].map(h).to_vec();
    left.sort_unstable();
    want.sort_unstable();
    assert_eq!(left, want);
    // Totals: 3 fewer tokens, 3 fewer ham token counts; messages and bias unchanged.
    assert_eq!(t1.distinct_tokens, t0.distinct_tokens - 3);
    assert_eq!(t1.ham_tokens, t0.ham_tokens - 3);
    assert_eq!(t1.spam_tokens, t0.spam_tokens);
    assert_eq!(
        (t1.ham_messages, t1.spam_messages, t1.lr_bias),
        (t0.ham_messages, t0.spam_messages, t0.lr_bias)
    );
    // Kept records are untouched.
    for (hash, counts) in &r1 {
        assert_eq!(r0.iter().find(|r| r.0 == *hash).unwrap().1, *counts);
    }
    // A bigger max_count takes "pair" (2 messages, day 15) only when before_day passes 15.
    assert_eq!(store.filter_expire(16, 2).unwrap(), 2); // pair, edge
    assert_eq!(store.filter_stats().unwrap().tokens, 2);
    // Messages learned before an expiry still untrain: their surviving tokens exactly.
    assert!(store.filter_untrain(&c, &m1, &[1; 32]).unwrap());
    assert!(store.filter_untrain(&c, &m3, &[3; 32]).unwrap());
    assert!(store.filter_untrain(&c, &m4, &[4; 32]).unwrap());
    let (t2, r2) = parse_model(&export(&store));
    assert_eq!((t2.ham_messages, t2.spam_messages), (0, 1));
    assert_eq!(
        (t2.ham_tokens, t2.spam_tokens, t2.distinct_tokens),
        (0, 2, 2)
    );
    let common = r2.iter().find(|r| r.0 == h("common")).unwrap().1;
    assert_eq!((common.ham, common.spam), (0, 1));
    // What is left is exactly m2 learned alone (counts and LR weights sum to its step).
    assert!(store.filter_untrain(&c, &m2, &[2; 32]).unwrap());
    let (t3, r3) = parse_model(&export(&store));
    assert!(r3.is_empty());
    assert_eq!(t3, Totals::default());
}

#[test]
fn concurrent_training_keeps_counts_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mails = corpus();
    std::thread::scope(|s| {
        for chunk in mails[..40].chunks(10) {
            let store = store.clone();
            s.spawn(move || {
                let c = Classifier::default();
                for m in chunk {
                    train(&store, &c, m, m.label, 1);
                    train(&store, &c, m, m.label, 1);
                }
            });
        }
    });
    let model = export(&store);
    let (t, records) = parse_model(&model);
    let ham = mails[..40].iter().filter(|m| m.label == Label::Ham).count() as u64;
    assert_eq!((t.ham_messages, t.spam_messages), (ham, 40 - ham));
    // Counts are those of the 40 messages, in whatever order they were learned.
    let mut mem = MemoryStore::new();
    let c = Classifier::default();
    for m in &mails[..40] {
        c.train(&mut mem, &m.features, m.label, 1).unwrap();
    }
    let mut want: Vec<(u64, u32, u32)> = mem.iter().map(|(h, c)| (h, c.ham, c.spam)).collect();
    want.sort_unstable();
    let got: Vec<(u64, u32, u32)> = records.iter().map(|(h, c)| (*h, c.ham, c.spam)).collect();
    assert_eq!(got, want);
    // And the file passes the import checks (sums match the totals).
    let d2 = tempfile::tempdir().unwrap();
    open(d2.path())
        .filter_import(&mut model.as_slice())
        .unwrap();
}

fn classification(verdict: Verdict, score: f64, clue: &str) -> Classification {
    Classification {
        score,
        verdict,
        algorithm: "fusion".into(),
        clues: vec![ClueView {
            token: Some(clue.to_string()),
            probability: 0.99,
            ham: 1,
            spam: 30,
        }],
    }
}

fn stored(outcome: CommitOutcome) -> (Option<TicketId>, u64) {
    match outcome {
        CommitOutcome::Stored {
            ticket, message, ..
        } => (ticket, message.0),
        CommitOutcome::AlreadyProcessed => panic!("expected Stored"),
    }
}

fn commit(store: &Store, m: &Msg<'_>, c: Option<Classification>) -> (Option<TicketId>, u64) {
    let id = m.spool(store);
    let mut d = m.delivery();
    d.classification = c;
    stored(store.commit_message(id, d).unwrap())
}

#[test]
fn quarantine_commit_list_get_and_target() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let m = Msg::new("alice@example.com", "Printer broken");
    let (ticket, first) = commit(
        &store,
        &m,
        Some(classification(Verdict::Ham, 0.01, "printer")),
    );
    assert_eq!(ticket, Some(TicketId(1)));
    // Spam that threads into ticket 1, and spam that would open a new ticket.
    let mut s1 = Msg::new("alice@example.com", "Re: Printer broken");
    s1.message_id = Some("spam1@example.com");
    s1.thread = ThreadDecision::Quarantine {
        ticket: Some(TicketId(1)),
        subject: "Re: Printer broken".into(),
    };
    let (t1, q1) = commit(
        &store,
        &s1,
        Some(classification(Verdict::Spam, 0.99, "viagra")),
    );
    let mut s2 = Msg::new("spammer@example.net", "Cheap pills");
    s2.thread = ThreadDecision::Quarantine {
        ticket: None,
        subject: "Cheap pills".into(),
    };
    let (t2, q2) = commit(
        &store,
        &s2,
        Some(classification(Verdict::Spam, 0.97, "pills")),
    );
    assert_eq!((t1, t2), (None, None));

    let list = store.quarantine().unwrap();
    assert_eq!(list.iter().map(|v| v.id).collect::<Vec<_>>(), vec![q2, q1]);
    for v in &list {
        assert!(v.quarantined);
        assert_eq!(v.ticket, None);
        assert_eq!(v.classification.as_ref().unwrap().verdict, Verdict::Spam);
    }
    let v = store.quarantine_get(MessageKey(q2)).unwrap().unwrap();
    assert_eq!(v.subject, "Cheap pills");
    assert_eq!(v.from, "spammer@example.net");
    assert_eq!(
        v.classification,
        Some(classification(Verdict::Spam, 0.97, "pills"))
    );
    assert!(store.quarantine_get(MessageKey(first)).unwrap().is_none());
    assert!(store.quarantine_get(MessageKey(999_999)).unwrap().is_none());
    assert_eq!(
        store.quarantine_target(MessageKey(q1)).unwrap(),
        Some(Some(TicketId(1)))
    );
    assert_eq!(store.quarantine_target(MessageKey(q2)).unwrap(), Some(None));
    assert_eq!(store.quarantine_target(MessageKey(first)).unwrap(), None);
    // Not in any ticket, not orphans.
    let t = store.ticket(TicketId(1)).unwrap().unwrap();
    assert_eq!(t.summary.messages, 1);
    assert_eq!(
        t.thread.iter().map(|v| v.id).collect::<Vec<_>>(),
        vec![first]
    );
    assert!(!t.thread[0].quarantined);
    assert_eq!(store.tickets().unwrap().len(), 1);
    assert!(store.orphans().unwrap().is_empty());
    let counts = store.counts().unwrap();
    assert_eq!(
        (counts.tickets, counts.messages, counts.quarantined),
        (1, 3, 2)
    );
    // Its Message-ID is known, with no ticket.
    let r = store.find_message_id("spam1@example.com").unwrap().unwrap();
    assert_eq!((r.message.0, r.ticket), (q1, None));
    // The raw message is kept.
    assert!(store.message_raw(MessageKey(q1)).unwrap().is_some());
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.quarantine().unwrap().len(), 2);
    assert_eq!(
        store.quarantine_target(MessageKey(q1)).unwrap(),
        Some(Some(TicketId(1)))
    );
}

#[test]
fn classification_is_shown_and_unsure_marks_the_ticket() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let m = Msg::new("bob@example.com", "Invoice question");
    let (ticket, first) = commit(
        &store,
        &m,
        Some(classification(Verdict::Ham, 0.05, "invoice")),
    );
    let ticket = ticket.unwrap();
    assert!(!store.tickets().unwrap()[0].unsure);
    let mut r = Msg::new("bob@example.com", "Re: Invoice question");
    r.thread = ThreadDecision::Existing(ticket);
    let (_, second) = commit(
        &store,
        &r,
        Some(classification(Verdict::Unsure, 0.5, "refund")),
    );
    let mut n = Msg::new("bob@example.com", "Re: Invoice question");
    n.thread = ThreadDecision::Existing(ticket);
    let (_, third) = commit(&store, &n, None);
    let summary = &store.tickets().unwrap()[0];
    assert!(summary.unsure);
    assert!(!summary.flagged);
    let detail = store.ticket(ticket).unwrap().unwrap();
    assert!(detail.summary.unsure);
    let views: Vec<_> = detail
        .thread
        .iter()
        .map(|v| (v.id, v.classification.clone()))
        .collect();
    assert_eq!(
        views,
        vec![
            (first, Some(classification(Verdict::Ham, 0.05, "invoice"))),
            (second, Some(classification(Verdict::Unsure, 0.5, "refund"))),
            (third, None),
        ]
    );
    // A new ticket opened by an unsure message is unsure from the start.
    let u = Msg::new("carol@example.com", "Hello");
    let (t2, _) = commit(
        &store,
        &u,
        Some(classification(Verdict::Unsure, 0.4, "hello")),
    );
    let t2 = store.ticket(t2.unwrap()).unwrap().unwrap();
    assert!(t2.summary.unsure);
    drop(store);
    let store = open(dir.path());
    assert!(store.ticket(ticket).unwrap().unwrap().summary.unsure);
}

/// The store's sled database, opened directly (the store must be closed; sled's own lock can
/// stay held a moment by the background thread of a handle just dropped).
fn raw_db(data: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::open(data.join("db")) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() > deadline => panic!("cannot open the db: {e}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

/// Key of a snapshot chunk (`seq u64 BE | chunk u32 BE`).
fn chunk_key(seq: u64, chunk: u32) -> Vec<u8> {
    [&seq.to_be_bytes()[..], &chunk.to_be_bytes()].concat()
}

/// The snapshots in `filter_snapshot`: seq and chunk count, ascending.
fn snapshots_in(db: &sled::Db) -> Vec<(u64, u32)> {
    let mut out: Vec<(u64, u32)> = Vec::new();
    for key in db.open_tree("filter_snapshot").unwrap().iter().keys() {
        let key = key.unwrap();
        assert_eq!(key.len(), 12);
        let seq = u64::from_be_bytes(key[..8].try_into().unwrap());
        match out.last_mut() {
            Some((s, n)) if *s == seq => *n += 1,
            _ => out.push((seq, 1)),
        }
    }
    out
}

/// The snapshots of a closed store.
fn snapshots(data: &Path) -> Vec<(u64, u32)> {
    snapshots_in(&raw_db(data))
}

/// The chunks of snapshot `seq`, concatenated (the model file).
fn snapshot_bytes(db: &sled::Db, seq: u64) -> Vec<u8> {
    let tree = db.open_tree("filter_snapshot").unwrap();
    tree.scan_prefix(seq.to_be_bytes())
        .values()
        .flat_map(|v| v.unwrap().to_vec())
        .collect()
}

/// A synthetic model of `n` tokens (several snapshot chunks from ~2,400 tokens).
fn synthetic_model(n: u64) -> Vec<u8> {
    let mut hashes: Vec<u64> = (0..n)
        .map(|i| mailroom_spamfilter::token_hash(&format!("synthetic{i}")))
        .collect();
    hashes.sort_unstable();
    hashes.dedup();
    let counts = |h: u64| Counts {
        ham: (h % 3) as u32,
        spam: ((h >> 8) % 3) as u32 + 1,
        last_seen_day: 100,
        lr_weight: (h >> 40) as i64 - (1 << 23),
    };
    let mut totals = Totals {
        ham_messages: 50,
        spam_messages: 70,
        distinct_tokens: hashes.len() as u64,
        lr_bias: -12_345,
        ..Totals::default()
    };
    for &h in &hashes {
        totals.ham_tokens += u64::from(counts(h).ham);
        totals.spam_tokens += u64::from(counts(h).spam);
    }
    let mut out = Vec::new();
    write_model(&totals, hashes.iter().map(|&h| (h, counts(h))), &mut out).unwrap();
    out
}

#[test]
fn snapshots_and_journal_replay_keep_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let c = Classifier::default();
    let mails = corpus();
    let mut mem = MemoryStore::new();
    let mut receipts = Vec::new();
    {
        let store = open(dir.path());
        for m in &mails[..20] {
            train(&store, &c, m, m.label, 30);
            receipts.push(c.train(&mut mem, &m.features, m.label, 30).unwrap());
        }
    }
    // Journal only; nothing under the data directory but the database and the keys.
    assert!(snapshots(dir.path()).is_empty());
    assert!(!dir.path().join("filter").exists());
    let after = {
        let store = open(dir.path());
        assert_model_eq(&export(&store), &memory_model(&mem));
        store.filter_compact().unwrap();
        assert_model_eq(&export(&store), &memory_model(&mem));
        // Untrain one learned before the snapshot, learn more after it.
        assert!(store
            .filter_untrain(&c, &mails[4].features, &mails[4].fingerprint())
            .unwrap());
        c.untrain(&mut mem, &mails[4].features, &receipts[4])
            .unwrap();
        for m in &mails[20..30] {
            train(&store, &c, m, m.label, 31);
            c.train(&mut mem, &m.features, m.label, 31).unwrap();
        }
        export(&store)
    };
    assert_model_eq(&after, &memory_model(&mem));
    let first = {
        let db = raw_db(dir.path());
        let first = snapshots_in(&db);
        assert_eq!(first.len(), 1);
        // The snapshot is the model file, cut into chunks.
        let bytes = snapshot_bytes(&db, first[0].0);
        parse_model(&bytes);
        first
    };
    // Snapshot + journal replay.
    let store = open(dir.path());
    assert_model_eq(&export(&store), &after);
    assert_eq!(
        scores(&store, &c, &mails[30..]),
        mails[30..]
            .iter()
            .map(|m| c.classify(&mem, &m.features).unwrap().score)
            .collect::<Vec<_>>()
    );
    // A second snapshot replaces the first (whose chunks are removed).
    store.filter_compact().unwrap();
    assert_model_eq(&export(&store), &after);
    drop(store);
    let second = snapshots(dir.path());
    assert_eq!(second.len(), 1);
    assert_ne!(first, second);
    let store = open(dir.path());
    assert_model_eq(&export(&store), &after);
    assert_eq!(
        train(&store, &c, &mails[25], mails[25].label, 32),
        TrainOutcome::AlreadyLearned
    );
    assert!(store
        .filter_untrain(&c, &mails[25].features, &mails[25].fingerprint())
        .unwrap());
}

/// What a crash at each point of a snapshot switch leaves behind (made by hand in the closed
/// database): open uses the snapshot the state names and removes the rest.
#[test]
fn leftovers_of_an_interrupted_switch_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let c = Classifier::default();
    let mails = corpus();
    let (model, live) = {
        let store = open(dir.path());
        store
            .filter_import(&mut synthetic_model(6_000).as_slice())
            .unwrap();
        for m in &mails[..10] {
            train(&store, &c, m, m.label, 30);
        }
        store.filter_compact().unwrap();
        for m in &mails[10..15] {
            train(&store, &c, m, m.label, 30);
        }
        drop(store);
        let live = snapshots(dir.path());
        assert_eq!(live.len(), 1);
        assert!(live[0].1 > 3, "several record chunks: {live:?}");
        (export(&open(dir.path())), live)
    };
    let (seq, chunks) = live[0];
    {
        let db = raw_db(dir.path());
        let tree = db.open_tree("filter_snapshot").unwrap();
        let journal = db.open_tree("filter_journal").unwrap();
        // A crash after the switch, before the old snapshot was removed: an older complete
        // snapshot, and a journal entry the live snapshot holds (garbage: it must not be read).
        for (k, v) in tree.scan_prefix(seq.to_be_bytes()).map(|r| r.unwrap()) {
            tree.insert([&(seq - 1).to_be_bytes()[..], &k[8..]].concat(), v)
                .unwrap();
        }
        journal.insert(seq.to_be_bytes(), &b"garbage"[..]).unwrap();
        // A crash while writing the next snapshot (not switched to): some of its chunks, one
        // of them under the live seq's successor and one far above.
        let first = tree.get(chunk_key(seq, 0)).unwrap().unwrap();
        tree.insert(chunk_key(seq + 5, 0), first.clone()).unwrap();
        tree.insert(chunk_key(seq + 5, 1), &b"partial"[..]).unwrap();
        tree.insert(chunk_key(u64::MAX, 0), first).unwrap();
        db.flush().unwrap();
    }
    {
        let store = open(dir.path());
        assert_model_eq(&export(&store), &model);
        assert_eq!(
            train(&store, &c, &mails[3], mails[3].label, 31),
            TrainOutcome::AlreadyLearned
        );
    }
    let db = raw_db(dir.path());
    assert_eq!(snapshots_in(&db), vec![(seq, chunks)]);
    let journal = db.open_tree("filter_journal").unwrap();
    assert!(journal.get(seq.to_be_bytes()).unwrap().is_none());
    assert_eq!(journal.len(), 5);
}

/// A damaged, missing, short or extra chunk is an error at open, not a silently different
/// model.
#[test]
fn a_damaged_snapshot_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .filter_import(&mut synthetic_model(6_000).as_slice())
            .unwrap();
    }
    let (seq, chunks) = snapshots(dir.path())[0];
    let tree = || raw_db(dir.path()).open_tree("filter_snapshot").unwrap();
    type Damage = Box<dyn Fn(&sled::Tree, u64, u32)>;
    let cases: Vec<(&str, Damage)> = vec![
        (
            "checksum",
            Box::new(|t: &sled::Tree, seq, _| {
                let mut v = t.get(chunk_key(seq, 2)).unwrap().unwrap().to_vec();
                v[9] ^= 1;
                t.insert(chunk_key(seq, 2), v).unwrap();
            }),
        ),
        (
            "chunk 2 is missing",
            Box::new(|t: &sled::Tree, seq, _| {
                t.remove(chunk_key(seq, 2)).unwrap();
            }),
        ),
        (
            "chunk 1 has",
            Box::new(|t: &sled::Tree, seq, _| {
                let v = t.get(chunk_key(seq, 1)).unwrap().unwrap();
                t.insert(chunk_key(seq, 1), &v[..v.len() - 28]).unwrap();
            }),
        ),
        (
            "after the last",
            Box::new(|t: &sled::Tree, seq, chunks| {
                t.insert(chunk_key(seq, chunks), &[0u8; 32][..]).unwrap();
            }),
        ),
        (
            "is missing",
            Box::new(|t: &sled::Tree, seq, chunks| {
                for i in 0..chunks {
                    t.remove(chunk_key(seq, i)).unwrap();
                }
            }),
        ),
    ];
    for (want, damage) in cases {
        let saved: Vec<_> = tree()
            .scan_prefix(seq.to_be_bytes())
            .map(|r| r.unwrap())
            .collect();
        {
            let t = tree();
            damage(&t, seq, chunks);
            t.flush().unwrap();
        }
        match Store::open(dir.path(), mailroom_store::StoreOptions::default()) {
            Err(StoreError::Corrupt(m)) => assert!(m.contains(want), "{want}: {m}"),
            Err(e) => panic!("{want}: expected Corrupt, got {e}"),
            Ok(_) => panic!("{want}: a damaged snapshot was accepted"),
        }
        let t = tree();
        for key in t.scan_prefix(seq.to_be_bytes()).keys() {
            t.remove(key.unwrap()).unwrap();
        }
        for (k, v) in saved {
            t.insert(k, v).unwrap();
        }
        t.flush().unwrap();
        drop(t);
        drop(open(dir.path()));
    }
}

/// `(features, fingerprint, label, owner)` items for [`Store::filter_train_batch`].
fn batch_items(mails: &[Mail]) -> Vec<(Features, [u8; 32], Label, Option<ContactId>)> {
    mails
        .iter()
        .map(|m| (m.features.clone(), m.fingerprint(), m.label, None))
        .collect()
}

#[test]
fn a_batch_trains_exactly_like_one_by_one() {
    let c = Classifier::default();
    let mails = corpus();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let single = open(d1.path());
    let batch = open(d2.path());
    // Some learned before, one of them to be relabelled by the batch.
    for m in &mails[..10] {
        train(&single, &c, m, m.label, 40);
    }
    assert_eq!(
        batch
            .filter_train_batch(&c, &batch_items(&mails[..10]), 40)
            .unwrap(),
        vec![TrainOutcome::Learned; 10]
    );
    assert_model_eq(&export(&batch), &export(&single));
    let mut items = batch_items(&mails[5..60]);
    items[2].2 = other(mails[7].label);
    let want: Vec<TrainOutcome> = items
        .iter()
        .map(|(f, fp, label, owner)| single.filter_train(&c, f, fp, *label, *owner, 41).unwrap())
        .collect();
    assert_eq!(
        want[..6],
        [
            TrainOutcome::AlreadyLearned,
            TrainOutcome::AlreadyLearned,
            TrainOutcome::Relabeled,
            TrainOutcome::AlreadyLearned,
            TrainOutcome::AlreadyLearned,
            TrainOutcome::Learned
        ]
    );
    let flushes = batch.flush_count();
    assert_eq!(batch.filter_train_batch(&c, &items, 41).unwrap(), want);
    assert!(
        batch.flush_count() - flushes <= 2,
        "one flush for the batch, not one per message"
    );
    assert_model_eq(&export(&batch), &export(&single));
    assert_eq!(
        batch.filter_stats().unwrap().learned_records,
        single.filter_stats().unwrap().learned_records
    );
    // Durable and identical after reopening.
    drop(batch);
    let batch = open(d2.path());
    assert_model_eq(&export(&batch), &export(&single));
    assert_eq!(
        batch.filter_learned(&mails[7].fingerprint()).unwrap(),
        Some(other(mails[7].label))
    );
    assert!(batch.filter_train_batch(&c, &[], 42).unwrap().is_empty());
}

#[test]
fn a_batch_with_the_same_message_twice_counts_it_once() {
    let c = Classifier::default();
    let mails = corpus();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let single = open(d1.path());
    let batch = open(d2.path());
    for m in &mails[..3] {
        train(&single, &c, m, m.label, 50);
    }
    let mut items = batch_items(&mails[..3]);
    items.push(items[1].clone());
    assert_eq!(
        batch.filter_train_batch(&c, &items, 50).unwrap(),
        vec![
            TrainOutcome::Learned,
            TrainOutcome::Learned,
            TrainOutcome::Learned,
            TrainOutcome::AlreadyLearned
        ]
    );
    assert_model_eq(&export(&batch), &export(&single));
    assert_eq!(batch.filter_stats().unwrap().learned_records, 3);
    // The same message with the other label later in the batch: learned, then relabelled.
    let m = &mails[3];
    let items = vec![
        (m.features.clone(), m.fingerprint(), m.label, None),
        (m.features.clone(), m.fingerprint(), other(m.label), None),
    ];
    assert_eq!(
        batch.filter_train_batch(&c, &items, 51).unwrap(),
        vec![TrainOutcome::Learned, TrainOutcome::Relabeled]
    );
    train(&single, &c, m, other(m.label), 51);
    assert_model_eq(&export(&batch), &export(&single));
}

#[test]
fn a_batch_that_fails_keeps_what_came_before_durably() {
    let c = Classifier::default();
    let mails = corpus();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let single = open(d1.path());
    let store = open(d2.path());
    let fp = [7u8; 32];
    let a = Features::from_texts(["alpha", "beta"]);
    for s in [&single, &store] {
        s.filter_train(&c, &a, &fp, Label::Spam, None, 1).unwrap();
    }
    // The third item relabels `fp` with features it was not learned with: untraining them
    // would take counts below zero, so it is refused (as `filter_train` refuses it).
    let mut items = batch_items(&mails[..4]);
    items[2] = (Features::from_texts(["gamma"]), fp, Label::Ham, None);
    let err = store.filter_train_batch(&c, &items, 2).unwrap_err();
    assert!(matches!(err, StoreError::Filter(_)), "{err}");
    for m in &mails[..2] {
        train(&single, &c, m, m.label, 2);
    }
    assert_model_eq(&export(&store), &export(&single));
    assert_eq!(store.filter_learned(&fp).unwrap(), Some(Label::Spam));
    assert_eq!(store.filter_learned(&mails[3].fingerprint()).unwrap(), None);
    drop(store);
    let store = open(d2.path());
    assert_model_eq(&export(&store), &export(&single));
}

/// The model the crash test starts from: big enough that a snapshot takes a while to write.
fn crash_base_model() -> &'static [u8] {
    static MODEL: OnceLock<Vec<u8>> = OnceLock::new();
    MODEL.get_or_init(|| synthetic_model(40_000))
}

const CRASH_DIR: &str = "MAILROOM_FILTER_CRASH_DIR";
const CRASH_ROUND: &str = "MAILROOM_FILTER_CRASH_ROUND";

/// Run by `killed_while_training_and_compacting_reopens_consistent` in a child process: import
/// the base model (first round), then train the corpus in batches of four with a snapshot
/// after each, recording how many messages were acknowledged, until killed.
#[test]
fn child_trains_until_killed() {
    let (Ok(dir), Ok(round)) = (std::env::var(CRASH_DIR), std::env::var(CRASH_ROUND)) else {
        return; // Not the child.
    };
    let dir = PathBuf::from(dir);
    let store = open(&dir.join("data"));
    let c = Classifier::default();
    if store.filter_is_empty().unwrap() {
        store.filter_import(&mut &crash_base_model()[..]).unwrap();
    }
    let mails = corpus();
    std::fs::write(dir.join(format!("ready-{round}")), b"").unwrap();
    for (i, batch) in mails.chunks(4).enumerate() {
        store
            .filter_train_batch(&c, &batch_items(batch), 7)
            .unwrap();
        let tmp = dir.join("acked.tmp");
        std::fs::write(&tmp, ((i + 1) * 4).to_string()).unwrap();
        std::fs::rename(&tmp, dir.join(format!("acked-{round}"))).unwrap();
        store.filter_compact().unwrap();
    }
}

/// SIGKILL while batches are trained and snapshots written: every acknowledged message is
/// learned, the learned messages are a prefix, the store opens (snapshot + journal give the
/// recorded totals) with one snapshot left, and the model is exactly that of training the
/// prefix without a crash.
#[test]
fn killed_while_training_and_compacting_reopens_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let c = Classifier::default();
    let mails = corpus();
    let reference_dir = tempfile::tempdir().unwrap();
    let reference = open(reference_dir.path());
    reference
        .filter_import(&mut &crash_base_model()[..])
        .unwrap();
    let mut reference_learned = 0;
    let mut report = Vec::new();
    for (round, delay_ms) in [40u64, 110, 190, 300, 450].into_iter().enumerate() {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_trains_until_killed", "--test-threads=1"])
            .env(CRASH_DIR, dir.path())
            .env(CRASH_ROUND, round.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while !dir.path().join(format!("ready-{round}")).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the child did not start"
            );
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the child exited early: {status}");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        let acked: usize = std::fs::read_to_string(dir.path().join(format!("acked-{round}")))
            .map(|s| s.parse().unwrap())
            .unwrap_or(0);
        let data = dir.path().join("data");
        // Two snapshots: killed while writing one, or before the old one was removed.
        let left = snapshots(&data).len();
        let store = open(&data);
        let learned: Vec<bool> = mails
            .iter()
            .map(|m| store.filter_learned(&m.fingerprint()).unwrap().is_some())
            .collect();
        let k = learned.iter().take_while(|&&l| l).count();
        assert!(
            learned[k..].iter().all(|&l| !l),
            "round {round}: not a prefix"
        );
        assert!(
            k >= acked,
            "round {round}: {acked} acknowledged, {k} learned"
        );
        for m in &mails[reference_learned..k] {
            train(&reference, &c, m, m.label, 7);
        }
        reference_learned = k;
        assert_model_eq(&export(&store), &export(&reference));
        drop(store);
        assert_eq!(snapshots(&data).len(), 1, "round {round}");
        report.push(format!("{acked}/{k}/{left}"));
    }
    eprintln!(
        "acknowledged/learned messages/snapshots found after each kill: {}",
        report.join(", ")
    );
}

#[test]
fn classifying_while_training_sees_whole_messages() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mails = corpus();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let c = Classifier::default();
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for m in &mails[60..70] {
                    let v = c.classify(&store.filter_tokens(), &m.features).unwrap();
                    assert!((0.0..=1.0).contains(&v.score));
                    n += 1;
                }
            }
            n
        });
        let c = Classifier::default();
        for m in &mails[..30] {
            train(&store, &c, m, m.label, 1);
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    });
}

/// Bulk-training rate, for the record (no assertion on time; meaningful in release builds):
/// `cargo test -p mailroom-store --release --test filter -- --ignored --nocapture training_rate`
#[test]
#[ignore]
fn training_rate() {
    let start = std::time::Instant::now();
    let mails: Vec<Mail> = load_corpus(600, false);
    let tokenize = mails.len() as f64 / start.elapsed().as_secs_f64();
    let c = Classifier::default();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let single = open(d1.path());
    let start = std::time::Instant::now();
    for m in &mails[..100] {
        train(&single, &c, m, m.label, 1);
    }
    let one_by_one = 100.0 / start.elapsed().as_secs_f64();
    let batch = open(d2.path());
    let items = batch_items(&mails[100..]);
    let mut rates = Vec::new();
    for chunk in items.chunks(250) {
        let start = std::time::Instant::now();
        batch.filter_train_batch(&c, chunk, 1).unwrap();
        rates.push(format!(
            "{:.0}",
            chunk.len() as f64 / start.elapsed().as_secs_f64()
        ));
    }
    eprintln!(
        "filter_train one by one: {one_by_one:.0} msgs/s; filter_train_batch of 250 (then the \
         rest): {} msgs/s; tokenizing: {tokenize:.0} msgs/s",
        rates.join(", ")
    );
}
