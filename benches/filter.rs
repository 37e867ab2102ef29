//! The spam filter's cost per message on the project corpus (corpus/spamassassin, in its
//! `index` order): a model pre-trained on the first 400 messages in a `MemoryStore`, then
//! tokenize, classify and train over the other messages. Throughput is in messages.
//!
//! - `tokenize`: raw message -> hashed features (what training needs);
//! - `tokenize_with_text`: the same keeping token texts (what an explained verdict needs);
//! - `classify`: verdict with explanation from already tokenized features;
//! - `tokenize_and_classify`: both, as the pipeline and `mailroom filter eval` do per message;
//! - `train`: learning the messages (features ready) into a copy of the pre-trained model.
//!
//! A sled-backed variant (the store the service uses) is to be added next to these.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mailroom_spamfilter::{Classifier, Features, Label, MemoryStore, Tokenizer};

/// Messages used to pre-train the model; the rest are measured.
const PRETRAIN: usize = 400;

fn corpus() -> Vec<(Label, Vec<u8>)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/spamassassin");
    let index = std::fs::read_to_string(format!("{dir}/index")).expect("corpus index");
    index
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(label, path)| {
            let label = match label {
                "ham" => Label::Ham,
                "spam" => Label::Spam,
                other => panic!("corpus index: bad label {other:?}"),
            };
            let raw = std::fs::read(format!("{dir}/{}", path.trim())).expect("corpus message");
            (label, raw)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let messages = corpus();
    assert!(messages.len() > PRETRAIN, "corpus too small");
    let (pretrain, measured) = messages.split_at(PRETRAIN);
    let tokenizer = Tokenizer::default();
    let classifier = Classifier::default();
    let mut model = MemoryStore::new();
    for (label, raw) in pretrain {
        let f = tokenizer.tokenize(raw);
        classifier.train(&mut model, &f, *label, 0).expect("train");
    }
    let features: Vec<(Label, Features)> = measured
        .iter()
        .map(|(label, raw)| (*label, tokenizer.tokenize_with_text(raw)))
        .collect();

    let mut g = c.benchmark_group("filter");
    g.throughput(Throughput::Elements(measured.len() as u64));
    g.sample_size(20);

    g.bench_function("tokenize", |b| {
        b.iter(|| {
            for (_, raw) in measured {
                black_box(tokenizer.tokenize(black_box(raw)));
            }
        })
    });
    g.bench_function("tokenize_with_text", |b| {
        b.iter(|| {
            for (_, raw) in measured {
                black_box(tokenizer.tokenize_with_text(black_box(raw)));
            }
        })
    });
    g.bench_function("classify", |b| {
        b.iter(|| {
            for (_, f) in &features {
                black_box(classifier.classify(&model, black_box(f)).expect("classify"));
            }
        })
    });
    g.bench_function("tokenize_and_classify", |b| {
        b.iter(|| {
            for (_, raw) in measured {
                let f = tokenizer.tokenize_with_text(black_box(raw));
                black_box(classifier.classify(&model, &f).expect("classify"));
            }
        })
    });
    g.bench_function("train", |b| {
        b.iter_batched(
            || model.clone(),
            |mut store| {
                for (label, f) in &features {
                    black_box(classifier.train(&mut store, f, *label, 0).expect("train"));
                }
                store
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    // The same through the real store (sled journal + in-memory table), as the pipeline does.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = mailroom_store::Store::open(dir.path(), mailroom_store::StoreOptions::default())
        .expect("store");
    for (i, (label, raw)) in pretrain.iter().enumerate() {
        let f = tokenizer.tokenize(raw);
        let mut fp = [0u8; 32];
        fp[..8].copy_from_slice(&(i as u64).to_le_bytes());
        store
            .filter_train(&classifier, &f, &fp, *label, None, 0)
            .expect("train");
    }
    let view = store.filter_tokens();
    let mut g = c.benchmark_group("filter_store");
    g.throughput(Throughput::Elements(measured.len() as u64));
    g.sample_size(20);
    g.bench_function("classify (store)", |b| {
        b.iter(|| {
            for (_, f) in &features {
                black_box(classifier.classify(&view, black_box(f)).expect("classify"));
            }
        })
    });
    g.throughput(Throughput::Elements(50));
    g.bench_function("train durable, one fsync each (store)", |b| {
        let mut n = 1u64 << 32;
        b.iter(|| {
            // Fresh fingerprints: every iteration learns, none is a no-op.
            for (label, f) in features.iter().take(50) {
                n += 1;
                let mut fp = [0u8; 32];
                fp[..8].copy_from_slice(&n.to_le_bytes());
                black_box(
                    store
                        .filter_train(&classifier, f, &fp, *label, None, 0)
                        .expect("train"),
                );
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
