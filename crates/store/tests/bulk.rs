//! Large message bodies and attachments live in 4 KiB chunks outside their records (so that
//! sled's pages stay small and its cache bounds memory, docs/memory.md), and the chunks go with
//! their records: when a spool entry is processed, re-sealed, or a person erased.

mod common;

use common::*;
use mailroom_store::{Actor, CommitOutcome, MessageKey, Store, ThreadDecision};

/// A body of `n` bytes that does not compress.
fn body(n: usize, seed: u32) -> String {
    (0..n as u32)
        .map(|i| char::from(b'a' + ((i.wrapping_mul(2_654_435_761) ^ seed) >> 27) as u8 % 26))
        .collect()
}

fn chunk_count(store: &Store) -> u64 {
    store.chunk_count().unwrap()
}

fn message(outcome: CommitOutcome) -> MessageKey {
    match outcome {
        CommitOutcome::Stored { message, .. } => message,
        CommitOutcome::AlreadyProcessed => panic!("not stored"),
    }
}

#[test]
fn large_values_are_chunked_and_their_chunks_go_with_their_records() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    assert_eq!(chunk_count(&store), 0);

    // Small mail stays inline.
    message(Msg::new("carol@example.com", "small").store(&store));
    assert_eq!(chunk_count(&store), 0, "a small message was chunked");

    // A 100 KB message: its spool entry is chunked, and reads back intact.
    let big = body(100_000, 1);
    let mut m = Msg::new("alice@example.com", "big");
    m.body = &big;
    let id = m.spool(&store);
    let spooled = chunk_count(&store);
    assert!(spooled >= 100_000 / 4096, "spool entry in {spooled} chunks");
    let entry = store.spool_get(id).unwrap().expect("spool entry");
    assert_eq!(entry.raw, raw("alice@example.com", "big", &big));

    // Processed: the spool entry's chunks go, the message's (and its attachment's) come.
    let data = body(60_000, 2).into_bytes();
    m.attachments = vec![attachment("scan.bin", &data)];
    let stored = message(store.commit_message(id, m.delivery()).unwrap());
    let after = chunk_count(&store);
    assert!(after > 0);
    assert_eq!(
        store.message_raw(stored).unwrap().expect("raw"),
        raw("alice@example.com", "big", &big)
    );
    let reopened_count = after;

    // Everything survives a reopen.
    drop(store);
    let store = open(tmp.path());
    assert_eq!(chunk_count(&store), reopened_count);
    assert_eq!(
        store
            .message_raw(stored)
            .unwrap()
            .expect("raw after reopen"),
        raw("alice@example.com", "big", &big)
    );

    // Bob's big message waits in the spool while Alice is erased: the erasure re-seals the
    // spool under a new key (new chunks, old ones dropped), and Bob's entry still reads back.
    let bob_body = body(50_000, 3);
    let mut b = Msg::new("bob@example.com", "bob big");
    b.body = &bob_body;
    let bob_spool = b.spool(&store);
    let with_bob = chunk_count(&store);
    let report = store
        .erase_person("alice@example.com", false, Actor::Cli)
        .unwrap();
    assert_eq!(report.messages.len(), 1);
    assert!(store.message_raw(stored).unwrap().is_none());
    let bob_chunks = with_bob - reopened_count;
    assert_eq!(
        chunk_count(&store),
        bob_chunks,
        "after erasing Alice only Bob's spool entry should have chunks"
    );
    let entry = store.spool_get(bob_spool).unwrap().expect("bob's entry");
    assert_eq!(entry.raw, raw("bob@example.com", "bob big", &bob_body));

    // Bob's message quarantined and deleted: nothing is left.
    b.thread = ThreadDecision::Quarantine {
        ticket: None,
        subject: "bob big".into(),
    };
    let bm = message(store.commit_message(bob_spool, b.delivery()).unwrap());
    assert!(chunk_count(&store) > 0);
    assert!(store.quarantine_delete(bm).unwrap());
    assert_eq!(
        chunk_count(&store),
        0,
        "chunks left after the quarantine delete"
    );
}

#[test]
fn a_duplicate_commit_leaves_no_chunks_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let big = body(30_000, 4);
    let mut m = Msg::new("dan@example.com", "twice");
    m.body = &big;
    let id = m.spool(&store);
    let first = message(store.commit_message(id, m.delivery()).unwrap());
    let after_first = chunk_count(&store);
    // Processing the same entry again (as after a crash) stores nothing and leaves nothing.
    assert!(matches!(
        store.commit_message(id, m.delivery()).unwrap(),
        CommitOutcome::AlreadyProcessed
    ));
    assert_eq!(chunk_count(&store), after_first);
    assert!(store.message_raw(first).unwrap().is_some());
}

#[test]
fn a_backup_carries_the_chunks_and_a_restore_that_replays_an_erasure_drops_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let backup = dir.path().join("backup");
    let store = open(&data);
    let alice_body = body(40_000, 5);
    let bob_body = body(40_000, 6);
    let mut a = Msg::new("alice@example.com", "alice big");
    a.body = &alice_body;
    let alice = message(a.store(&store));
    let mut b = Msg::new("bob@example.com", "bob big");
    b.body = &bob_body;
    let bob = message(b.store(&store));
    let with_both = chunk_count(&store);
    store.backup(&backup, Actor::Cli).unwrap();
    store
        .erase_person("alice@example.com", false, Actor::Cli)
        .unwrap();
    let bobs = chunk_count(&store);
    assert!(bobs > 0 && bobs < with_both, "{bobs} of {with_both}");
    drop(store);

    // The backup holds Alice's chunks too; the restore replays her erasure and drops them.
    let report =
        mailroom_store::Store::restore(&backup, &data, mailroom_store::StoreOptions::default())
            .unwrap();
    assert_eq!(report.contacts_erased, 1);
    let store = open(&data);
    assert_eq!(chunk_count(&store), bobs);
    assert!(store.message_raw(alice).unwrap().is_none());
    assert_eq!(
        store.message_raw(bob).unwrap().expect("bob's raw message"),
        raw("bob@example.com", "bob big", &bob_body)
    );
}
