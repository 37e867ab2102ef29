//! No plaintext on disk, crypto-shredding, spool key rotation, group commit.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mailroom_spool::Spool;
use mailroom_store::{
    CommitOutcome, ContactId, Store, StoreError, StoreOptions, ThreadDecision, TicketId,
};

const MARKER: &str = "zqxmarker7731";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| contains(&std::fs::read(p).unwrap(), needle))
        .collect()
}

#[test]
fn no_personal_plaintext_in_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("{MARKER}@example.com");
    let subject = format!("subject {MARKER}");
    let body = format!("body {MARKER}");
    let message_id = format!("{MARKER}-id@example.com");
    let attachment_data = format!("attachment {MARKER}").repeat(50);
    {
        let store = open(dir.path());
        let mut m = Msg::new(&address, &subject);
        m.body = &body;
        m.message_id = Some(&message_id);
        m.attachments = vec![attachment(
            &format!("{MARKER}.txt"),
            attachment_data.as_bytes(),
        )];
        let id = m.spool(&store);
        // While spooled.
        store.flush().unwrap();
        assert_eq!(
            files_containing(&dir.path().join("db"), MARKER.as_bytes()),
            Vec::<std::path::PathBuf>::new()
        );
        let mut d = m.delivery();
        d.from.name = Some(format!("Name {MARKER}"));
        d.message.html = Some(format!("<p>{MARKER}</p>"));
        d.message.envelope.helo = MARKER.to_string();
        store.commit_message(id, d).unwrap();
        // A failed entry and its reason.
        let f = store
            .spool_append_blocking(envelope(&address), body.clone().into_bytes())
            .unwrap();
        store
            .fail_spool_entry(f, &format!("cannot parse {MARKER}"))
            .unwrap();
        store.flush().unwrap();
        // Sanity: it is all readable through the store.
        let t = store.ticket(TicketId(1)).unwrap().unwrap();
        assert_eq!(t.summary.subject, subject);
        assert_eq!(t.summary.requester, address);
        assert!(store.find_message_id(&message_id).unwrap().is_some());
        assert!(store.failed_list().unwrap()[0].reason.contains(MARKER));
    }
    let hits = files_containing(&dir.path().join("db"), MARKER.as_bytes());
    assert!(hits.is_empty(), "plaintext marker found in {hits:?}");
    assert!(!files_under(&dir.path().join("db")).is_empty());
}

#[test]
fn plaintext_scan_detects_unencrypted_data() {
    // The scan used above really finds a marker written in plain form by sled.
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        db.insert(b"k", MARKER.as_bytes()).unwrap();
        db.flush().unwrap();
    }
    assert!(!files_containing(&dir.path().join("db"), MARKER.as_bytes()).is_empty());
}

#[test]
fn destroyed_person_key_reads_as_erased() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, sha);
    {
        let store = open(dir.path());
        let mut m = Msg::new("alice@example.com", "Alice's ticket");
        m.message_id = Some("alice@example.com-1");
        m.attachments = vec![attachment("secret.pdf", b"SECRET")];
        m.store(&store);
        let mut reply = Msg::new("bob@example.com", "Bob replies");
        reply.thread = ThreadDecision::Existing(TicketId(1));
        reply.store(&store);
        Msg::new("bob@example.com", "Bob's ticket").store(&store);
        let t = store.ticket(TicketId(1)).unwrap().unwrap();
        alice = t.thread[0].attachments[0].tags.contact;
        sha = t.thread[0].attachments[0].sha256.clone();
        let mut orphan = Msg::new("alice@example.com", "auto reply");
        orphan.thread = ThreadDecision::Orphan;
        orphan.store(&store);
    }
    std::fs::remove_file(dir.path().join(format!("keys/person/{alice}.key"))).unwrap();
    let store = open(dir.path());

    let list = store.tickets().unwrap();
    assert_eq!(list.len(), 2);
    let t1 = list.iter().find(|t| t.id == 1).unwrap();
    assert_eq!(
        (t1.subject.as_str(), t1.requester.as_str()),
        ("[erased]", "[erased]")
    );
    assert_eq!(t1.messages, 2);
    let t2 = list.iter().find(|t| t.id == 2).unwrap();
    assert_eq!(t2.subject, "Bob's ticket");
    assert_eq!(t2.requester, "bob@example.com");

    let detail = store.ticket(TicketId(1)).unwrap().unwrap();
    let first = &detail.thread[0];
    assert_eq!(
        (first.from.as_str(), first.subject.as_str()),
        ("[erased]", "[erased]")
    );
    assert_eq!(first.text, None);
    assert_eq!(first.attachments.len(), 1);
    assert_eq!(first.attachments[0].filename, None);
    assert_eq!(first.attachments[0].tags.contact, alice);
    // Bob's reply on Alice's ticket is still readable.
    assert_eq!(detail.thread[1].from, "bob@example.com");
    assert_eq!(detail.thread[1].subject, "Bob replies");
    let orphans = store.orphans().unwrap();
    assert_eq!(orphans[0].from, "[erased]");

    match store.attachment_bytes(ContactId(alice), &sha) {
        Err(StoreError::KeyMissing(_)) => {}
        other => panic!("expected KeyMissing, got {other:?}"),
    }
    // Lookups by keyed hash still work (they hold no personal data).
    assert!(store
        .find_message_id("alice@example.com-1")
        .unwrap()
        .is_some());

    // Mail from the same address again starts a new, readable contact.
    let mut again = Msg::new("alice@example.com", "I'm back");
    again.attachments = vec![attachment("secret.pdf", b"SECRET")];
    let outcome = again.store(&store);
    let CommitOutcome::Stored {
        ticket: Some(t), ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    let detail = store.ticket(t).unwrap().unwrap();
    assert_eq!(detail.summary.requester, "alice@example.com");
    let new_alice = detail.thread[0].attachments[0].tags.contact;
    assert_ne!(new_alice, alice);
    assert_eq!(
        store
            .attachment_bytes(ContactId(new_alice), &sha)
            .unwrap()
            .unwrap(),
        b"SECRET"
    );
    assert!(store.is_participant(t, "alice@example.com").unwrap());
    assert!(!store
        .is_participant(TicketId(1), "alice@example.com")
        .unwrap());
}

#[test]
fn missing_spool_key_is_key_missing() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let store = open(dir.path());
        id = Msg::new("a@example.com", "s").spool(&store);
    }
    for k in spool_keys(dir.path()) {
        std::fs::remove_file(k).unwrap();
    }
    let store = open(dir.path());
    assert!(matches!(
        store.spool_get(id),
        Err(StoreError::KeyMissing(_))
    ));
    // It can still be moved to the failed list; its reason is sealed under a live key.
    let f = store.fail_spool_entry(id, "unreadable").unwrap().unwrap();
    assert_eq!(store.failed_list().unwrap()[0].reason, "unreadable");
    assert!(matches!(
        store.failed_retry(f),
        Err(StoreError::KeyMissing(_))
    ));
}

#[test]
fn spool_keys_rotate_and_are_destroyed_when_unused() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        spool_key_lifetime_secs: 0,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), options.clone()).unwrap();
    // Lifetime 0: every append makes a new key; old ones stay while an entry uses them.
    let a = Msg::new("a@example.com", "a").spool(&store);
    let b = Msg::new("b@example.com", "b").spool(&store);
    assert_eq!(spool_keys(dir.path()).len(), 2);
    store
        .commit_message(a, Msg::new("a@example.com", "a").delivery())
        .unwrap();
    assert_eq!(store.sweep_spool_keys().unwrap(), 1);
    assert_eq!(spool_keys(dir.path()).len(), 1);
    assert!(store.spool_get(b).unwrap().is_some());
    // A failed entry keeps its key alive.
    let f = store.fail_spool_entry(b, "x").unwrap().unwrap();
    let c = Msg::new("c@example.com", "c").spool(&store);
    assert_eq!(spool_keys(dir.path()).len(), 2);
    assert_eq!(store.failed_list().unwrap()[0].reason, "x");
    // Retry re-seals it under a new key; then the old one goes.
    let b2 = store.failed_retry(f).unwrap();
    store.sweep_spool_keys().unwrap();
    assert_eq!(spool_keys(dir.path()).len(), 2); // c's and b2's
    assert_eq!(
        store.spool_get(b2).unwrap().unwrap().raw,
        raw("b@example.com", "b", "hello")
    );
    assert!(store.spool_get(c).unwrap().is_some());
    for id in [b2, c] {
        let mut m = Msg::new("z@example.com", "z");
        m.thread = ThreadDecision::Orphan;
        store.commit_message(id, m.delivery()).unwrap();
    }
    assert_eq!(store.sweep_spool_keys().unwrap(), 2);
    assert!(spool_keys(dir.path()).is_empty());
    drop(store);

    // With a long lifetime one key serves many appends, and survives reopening.
    let store = open(dir.path());
    for i in 0..5 {
        Msg::new("a@example.com", &i.to_string()).spool(&store);
    }
    assert_eq!(spool_keys(dir.path()).len(), 1);
    drop(store);
    let store = open(dir.path());
    Msg::new("a@example.com", "more").spool(&store);
    assert_eq!(spool_keys(dir.path()).len(), 1);
    assert_eq!(store.sweep_spool_keys().unwrap(), 0);
}

#[test]
fn concurrent_appends_share_flushes() {
    const TASKS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    let before = store.flush_count();
    let spool = store.spool();
    let ids = rt.block_on(async {
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let mut handles = Vec::new();
        for i in 0..TASKS {
            let spool = spool.clone();
            let barrier = barrier.clone();
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                spool
                    .append(
                        envelope("a@example.com"),
                        format!("message {i}").into_bytes(),
                    )
                    .await
                    .unwrap()
            }));
        }
        let mut ids = Vec::new();
        for h in handles {
            ids.push(h.await.unwrap());
        }
        ids
    });
    let flushes = store.flush_count() - before;
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), TASKS);
    assert_eq!(store.spool_len(), TASKS);
    assert!(flushes >= 1);
    assert!(
        (flushes as usize) < TASKS,
        "{flushes} flushes for {TASKS} appends: no group commit"
    );
    eprintln!("{TASKS} concurrent appends, {flushes} flushes");
    // Durable: all there after reopening.
    drop(spool);
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.spool_len(), TASKS);
    assert_eq!(store.spool_pending().unwrap(), unique);
}

#[test]
fn blocking_appends_from_threads_share_flushes() {
    const THREADS: usize = 8;
    const EACH: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let before = store.flush_count();
    let barrier = std::sync::Barrier::new(THREADS);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            let store = store.clone();
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                for i in 0..EACH {
                    store
                        .spool_append_blocking(envelope("a@example.com"), vec![i as u8; 100])
                        .unwrap();
                }
            });
        }
    });
    let flushes = store.flush_count() - before;
    assert_eq!(store.spool_len(), THREADS * EACH);
    assert!((flushes as usize) < THREADS * EACH, "{flushes} flushes");
}

#[test]
fn notify_wakes_a_waiting_worker() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let notify = store.spool_notify();
        let waiter = tokio::spawn(async move { notify.notified().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        store
            .spool()
            .append(envelope("a@example.com"), b"x".to_vec())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("worker not woken")
            .unwrap();
        // A worker that starts waiting just after an append is not left asleep either.
        store
            .spool()
            .append(envelope("a@example.com"), b"y".to_vec())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), store.spool_notify().notified())
            .await
            .expect("permit not kept");
    });
}

#[test]
fn no_personal_plaintext_from_the_spam_filter() {
    use mailroom_spamfilter::{Classifier, Features, Label};
    use mailroom_store::{Classification, ClueView, MessageKey, Verdict};

    let dir = tempfile::tempdir().unwrap();
    let fingerprint: [u8; 32] = *b"fp-zqxmarker7731-fingerprint-32b";
    {
        let store = open(dir.path());
        let classification = Classification {
            score: 0.99,
            verdict: Verdict::Spam,
            algorithm: "fusion".into(),
            clues: vec![ClueView {
                token: Some(format!("subject:{MARKER}")),
                probability: 0.99,
                ham: 0,
                spam: 3,
            }],
        };
        // A quarantined message (its would-be subject is sealed too) and a ticket message, both
        // with clues.
        let mut q = Msg::new("spam@example.net", "quarantined");
        q.thread = ThreadDecision::Quarantine {
            ticket: None,
            subject: format!("would-be {MARKER}"),
        };
        let id = q.spool(&store);
        let mut d = q.delivery();
        d.classification = Some(classification.clone());
        let q_id = match store.commit_message(id, d).unwrap() {
            CommitOutcome::Stored { message, .. } => message,
            CommitOutcome::AlreadyProcessed => panic!(),
        };
        let t = Msg::new("bob@example.com", "ticket");
        let id = t.spool(&store);
        let mut d = t.delivery();
        d.classification = Some(classification.clone());
        store.commit_message(id, d).unwrap();
        // Training: the fingerprint and the token texts never reach the disk.
        let c = Classifier::default();
        let features = Features::from_texts([format!("subject:{MARKER}"), MARKER.to_string()]);
        store
            .filter_train(&c, &features, &fingerprint, Label::Spam, None, 1)
            .unwrap();
        store.filter_compact().unwrap();
        store
            .filter_train(
                &c,
                &Features::from_texts(["other"]),
                &[9; 32],
                Label::Ham,
                None,
                1,
            )
            .unwrap();
        store.flush().unwrap();
        // Sanity: readable through the store.
        let v = store.quarantine_get(q_id).unwrap().unwrap();
        assert_eq!(v.classification, Some(classification.clone()));
        assert_eq!(
            store.filter_learned(&fingerprint).unwrap(),
            Some(Label::Spam)
        );
        assert!(store
            .quarantine_get(MessageKey(q_id.0 + 1000))
            .unwrap()
            .is_none());
    }
    // Everything the filter keeps (snapshot, journal, learned records) is in the database.
    assert!(!dir.path().join("filter").exists());
    let db = dir.path().join("db");
    let hits = files_containing(&db, MARKER.as_bytes());
    assert!(hits.is_empty(), "plaintext marker found in {hits:?}");
    let hits = files_containing(&db, &fingerprint);
    assert!(hits.is_empty(), "message fingerprint found in {hits:?}");
    // Sanity: the snapshot is there (token hashes are stored, the token texts are not).
    let hash = mailroom_spamfilter::token_hash(MARKER).to_le_bytes();
    assert!(!files_containing(&db, &hash).is_empty());
}
