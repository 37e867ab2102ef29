//! Parse + ticket creation: the pipeline's cost per message on the real store (sled, fsync on).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mailroom_pipeline::{process_batch, process_entry, Settings, MAX_BATCH};
use mailroom_spool::{Envelope, Source};
use mailroom_store::{Store, StoreOptions};

fn corpus() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/spamassassin");
    let index = std::fs::read_to_string(format!("{dir}/index")).expect("corpus index");
    index
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .take(200)
        .map(|p| std::fs::read(format!("{dir}/{p}")).expect("corpus message"))
        .collect()
}

fn envelope() -> Envelope {
    Envelope {
        source: Source::File,
        mail_from: "bench@example.org".into(),
        rcpt_to: vec!["help@support.example.com".into()],
        peer: "bench".into(),
        helo: "bench".into(),
        received_at: 1_795_470_632,
        tls: false,
    }
}

fn bench(c: &mut Criterion) {
    let messages = corpus();
    let bytes: usize = messages.iter().map(Vec::len).sum();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreOptions::default()).expect("store");
    let settings = Settings {
        filter: Some(mailroom_pipeline::Filter::default()),
        ..Settings::default()
    };
    let limits = settings.limits.clone();

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("spool+parse+classify+ticket (one message, fsync)", |b| {
        b.iter_batched(
            || {
                i = (i + 1) % messages.len();
                store
                    .spool_append_blocking(envelope(), messages[i].clone())
                    .expect("spool")
            },
            |id| process_entry(&store, id, &settings).expect("process"),
            BatchSize::SmallInput,
        )
    });
    group.finish();

    // The workers' group commit: MAX_BATCH messages, one transaction and one flush.
    let mut group = c.benchmark_group("pipeline-batch");
    group.throughput(Throughput::Elements(MAX_BATCH as u64));
    group.bench_function(
        "spool+parse+classify+ticket (batch of 32, one flush)",
        |b| {
            b.iter_batched(
                || {
                    (0..MAX_BATCH)
                        .map(|_| {
                            i = (i + 1) % messages.len();
                            store
                                .spool_append_blocking(envelope(), messages[i].clone())
                                .expect("spool")
                        })
                        .collect::<Vec<_>>()
                },
                |ids| {
                    for (_, r) in process_batch(&store, &ids, &settings) {
                        r.expect("process");
                    }
                },
                BatchSize::SmallInput,
            )
        },
    );
    group.finish();

    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Bytes((bytes / messages.len()) as u64));
    let mut j = 0usize;
    group.bench_function("analyze (one corpus message)", |b| {
        b.iter(|| {
            j = (j + 1) % messages.len();
            let entry = mailroom_store::SpoolEntry {
                id: mailroom_spool::SpoolId(j as u64),
                envelope: envelope(),
                raw: messages[j].clone(),
            };
            mailroom_pipeline::analyze(&entry, &limits).ok()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
