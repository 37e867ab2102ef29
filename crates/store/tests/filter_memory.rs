//! Memory bound: a store with a million spam-filter tokens classifies in well under 100 MiB of
//! resident memory (sled's page cache is bounded by `StoreOptions::cache_capacity_bytes`).
//!
//! In a file of its own so that the test has the process (and its RSS) to itself.

use std::fs::File;
use std::io::BufWriter;

use mailroom_spamfilter::{token_hash, Classifier, Counts, Features, Totals};
use mailroom_store::{write_model, Store, StoreOptions};

const TOKENS: u64 = 1_000_000;
const LIMIT_KIB: u64 = 100 * 1024;

/// A field of `/proc/self/status` in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn counts_of(hash: u64) -> Counts {
    let ham = (hash % 5) as u32;
    let spam = ((hash >> 8) % 5) as u32;
    Counts {
        ham,
        spam: if ham == 0 && spam == 0 { 1 } else { spam },
        last_seen_day: 19_000 + (hash >> 16) as u32 % 100,
        lr_weight: ((hash >> 24) % 2_000_001) as i64 - 1_000_000,
    }
}

#[test]
fn a_million_tokens_classify_in_under_100_mib() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.mrfm");
    {
        let mut hashes: Vec<u64> = (0..TOKENS).map(|i| token_hash(&format!("w{i}"))).collect();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len() as u64, TOKENS);
        let mut totals = Totals {
            ham_messages: 40_000,
            spam_messages: 60_000,
            distinct_tokens: TOKENS,
            lr_bias: -3_000_000,
            ..Totals::default()
        };
        for &h in &hashes {
            let c = counts_of(h);
            totals.ham_tokens += u64::from(c.ham);
            totals.spam_tokens += u64::from(c.spam);
        }
        let mut out = BufWriter::new(File::create(&path).unwrap());
        let records = hashes.iter().map(|&h| (h, counts_of(h)));
        assert_eq!(write_model(&totals, records, &mut out).unwrap(), TOKENS);
    }
    let before_open = status_kib("VmRSS:");
    let store = Store::open(dir.path().join("data").as_path(), StoreOptions::default()).unwrap();
    let imported = store
        .filter_import(&mut File::open(&path).unwrap())
        .unwrap();
    assert_eq!(imported, TOKENS);
    assert_eq!(store.filter_stats().unwrap().tokens, TOKENS);
    let after_import = status_kib("VmRSS:");

    let first = classify(&store, 1_000);
    // Reopen: the model is loaded from its snapshot.
    drop(store);
    let store = Store::open(dir.path().join("data").as_path(), StoreOptions::default()).unwrap();
    assert_eq!(store.filter_stats().unwrap().tokens, TOKENS);
    let after_reopen = status_kib("VmRSS:");
    let second = classify(&store, 1_000);
    eprintln!(
        "RSS KiB: before open {before_open}, after import {after_import}, classifying {}, \
         after reopen {after_reopen}, classifying {}, peak {}; {:.0} and {:.0} messages/s \
         (320 tokens each)",
        first.0,
        second.0,
        status_kib("VmHWM:"),
        first.1,
        second.1,
    );
    for rss in [after_import, first.0, after_reopen, second.0] {
        assert!(
            rss < LIMIT_KIB,
            "RSS {rss} KiB with {TOKENS} tokens (limit {LIMIT_KIB} KiB)"
        );
    }
}

/// Classify `messages` messages of 300 known and 20 unknown tokens spread over the whole model;
/// the highest RSS seen (KiB) and the rate (messages a second; meaningful in release builds).
fn classify(store: &Store, messages: u64) -> (u64, f64) {
    let classifier = Classifier::default();
    // 100 distinct messages, classified `messages / 100` times each (a few MiB of test data).
    let features: Vec<Features> = (0..100)
        .map(|j| {
            let texts = (0..300u64)
                .map(|k| format!("w{}", (j * 7_919 + k * 104_729) % TOKENS))
                .chain((0..20u64).map(|k| format!("unknown{j}-{k}")));
            Features::from_texts(texts)
        })
        .collect();
    let mut max_rss = status_kib("VmRSS:");
    let start = std::time::Instant::now();
    for (j, f) in features.iter().cycle().take(messages as usize).enumerate() {
        let verdict = classifier.classify(&store.filter_tokens(), f).unwrap();
        assert!((0.0..=1.0).contains(&verdict.score));
        assert!(verdict.tokens_used > 0);
        if j % 100 == 0 {
            max_rss = max_rss.max(status_kib("VmRSS:"));
        }
    }
    let rate = messages as f64 / start.elapsed().as_secs_f64();
    (max_rss.max(status_kib("VmRSS:")), rate)
}
