//! Round trips of every store method, dedup, idempotence, reopen, locking.

mod common;

use common::*;
use mailroom_spool::SpoolId;
use mailroom_store::{
    CommitOutcome, ContactId, Counts, FailedId, MessageFlag, Store, StoreError, StoreOptions,
    ThreadDecision, TicketId, TicketStatus,
};

fn stored(outcome: CommitOutcome) -> (Option<TicketId>, u64, bool) {
    match outcome {
        CommitOutcome::Stored {
            ticket,
            message,
            new_ticket,
        } => (ticket, message.0, new_ticket),
        CommitOutcome::AlreadyProcessed => panic!("expected Stored"),
    }
}

#[test]
fn spool_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.spool_len(), 0);
    let a = store
        .spool_append_blocking(envelope("a@x.example"), b"raw one".to_vec())
        .unwrap();
    let b = store
        .spool_append_blocking(envelope("b@x.example"), b"raw two".to_vec())
        .unwrap();
    assert!(b > a);
    assert_eq!(store.spool_len(), 2);
    assert_eq!(store.spool_pending().unwrap(), vec![a, b]);
    let entry = store.spool_get(a).unwrap().unwrap();
    assert_eq!(entry.id, a);
    assert_eq!(entry.envelope, envelope("a@x.example"));
    assert_eq!(entry.raw, b"raw one");
    assert!(store.spool_get(SpoolId(999_999)).unwrap().is_none());
    assert_eq!(store.counts().unwrap().spool, 2);
}

#[test]
fn commit_new_ticket_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut m = Msg::new("Alice@Example.COM", "Printer on fire");
    m.body = "It is really on fire.";
    m.message_id = Some("m1@example.com");
    m.attachments = vec![attachment("photo.jpg", b"JPEGDATA")];
    let spool_id = m.spool(&store);
    let (ticket, message, new_ticket) =
        stored(store.commit_message(spool_id, m.delivery()).unwrap());
    assert_eq!(ticket, Some(TicketId(1)));
    assert!(new_ticket);
    assert_eq!(store.spool_len(), 0);
    assert!(store.spool_get(spool_id).unwrap().is_none());
    assert!(store.spool_pending().unwrap().is_empty());

    assert!(store.ticket_exists(TicketId(1)).unwrap());
    assert!(!store.ticket_exists(TicketId(2)).unwrap());
    assert!(store
        .is_participant(TicketId(1), "alice@example.com")
        .unwrap());
    assert!(store
        .is_participant(TicketId(1), "<ALICE@example.com>")
        .unwrap());
    assert!(!store
        .is_participant(TicketId(1), "mallory@example.com")
        .unwrap());
    assert!(!store
        .is_participant(TicketId(2), "alice@example.com")
        .unwrap());

    let r = store.find_message_id("m1@example.com").unwrap().unwrap();
    assert_eq!((r.message.0, r.ticket), (message, Some(TicketId(1))));
    assert_eq!(store.find_message_id("<m1@example.com>").unwrap(), Some(r));
    assert!(store
        .find_message_id("other@example.com")
        .unwrap()
        .is_none());

    let list = store.tickets().unwrap();
    assert_eq!(list.len(), 1);
    let s = &list[0];
    assert_eq!(s.id, 1);
    assert_eq!(s.subject, "Printer on fire");
    assert_eq!(s.requester, "alice@example.com");
    assert_eq!((s.messages, s.attachments), (1, 1));
    assert_eq!(s.status, TicketStatus::Open);
    assert_eq!((s.created_at, s.updated_at), (1_700_000_000, 1_700_000_000));
    assert!(!s.flagged);

    let detail = store.ticket(TicketId(1)).unwrap().unwrap();
    assert_eq!(&detail.summary, s);
    assert_eq!(detail.thread.len(), 1);
    let v = &detail.thread[0];
    assert_eq!(v.id, message);
    assert_eq!(v.ticket, Some(1));
    assert_eq!(v.from, "alice@example.com");
    assert_eq!(v.from_name.as_deref(), Some("Name of Alice@Example.COM"));
    assert_eq!(v.subject, "Printer on fire");
    assert_eq!(v.message_id.as_deref(), Some("m1@example.com"));
    assert_eq!(v.date, Some(1_700_000_000));
    assert_eq!(v.received_at, 1_700_000_000);
    assert_eq!(v.text.as_deref(), Some("It is really on fire."));
    assert!(!v.has_html);
    assert_eq!(v.attachments.len(), 1);
    let a = &v.attachments[0];
    assert_eq!(a.filename.as_deref(), Some("photo.jpg"));
    assert_eq!(a.content_type, "application/octet-stream");
    assert_eq!(a.size, 8);
    assert_eq!(a.sha256.len(), 64);
    assert_eq!(a.tags.ticket, Some(1));
    assert_eq!(a.tags.message, message);
    assert_eq!(a.tags.retention_class, "attachment");
    assert!(a.tags.created_at > 0);
    let bytes = store
        .attachment_bytes(ContactId(a.tags.contact), &a.sha256)
        .unwrap()
        .unwrap();
    assert_eq!(bytes, b"JPEGDATA");
    assert!(store
        .attachment_bytes(ContactId(a.tags.contact + 1), &a.sha256)
        .unwrap()
        .is_none());
    assert!(store
        .attachment_bytes(ContactId(a.tags.contact), "not hex")
        .unwrap()
        .is_none());
    assert!(store.ticket(TicketId(7)).unwrap().is_none());

    assert_eq!(
        store.counts().unwrap(),
        Counts {
            tickets: 1,
            messages: 1,
            contacts: 1,
            blobs: 1,
            spool: 0,
            failed: 0,
            quarantined: 0
        }
    );
    store.flush().unwrap();
}

#[test]
fn sha256_of_attachment_is_hex_of_content() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut m = Msg::new("a@example.com", "s");
    m.attachments = vec![attachment("f", b"content")];
    m.store(&store);
    let detail = store.ticket(TicketId(1)).unwrap().unwrap();
    assert_eq!(
        detail.thread[0].attachments[0].sha256,
        hex::encode(sha2::Sha256::digest(b"content"))
    );
}

#[test]
fn existing_ticket_orphan_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut first = Msg::new("alice@example.com", "Help");
    first.message_id = Some("first@example.com");
    stored(first.store(&store));

    let mut reply = Msg::new("bob@example.com", "Re: Help");
    reply.thread = ThreadDecision::Existing(TicketId(1));
    reply.attachments = vec![attachment("a", b"1"), attachment("b", b"2")];
    reply.flags = vec![MessageFlag::ParseWarning {
        detail: "bad charset".into(),
    }];
    let mut d = reply.delivery();
    d.message.envelope.received_at = 1_700_000_500;
    let id = reply.spool(&store);
    let (ticket, _, new_ticket) = stored(store.commit_message(id, d).unwrap());
    assert_eq!((ticket, new_ticket), (Some(TicketId(1)), false));
    assert!(store
        .is_participant(TicketId(1), "bob@example.com")
        .unwrap());

    let mut bounce = Msg::new("mailer-daemon@example.net", "Undeliverable");
    bounce.thread = ThreadDecision::Orphan;
    bounce.flags = vec![MessageFlag::Bounce];
    bounce.message_id = Some("bounce@example.net");
    let (ticket, orphan_id, new_ticket) = stored(bounce.store(&store));
    assert_eq!((ticket, new_ticket), (None, false));

    let mut second = Msg::new("carol@example.com", "Other problem");
    second.thread = ThreadDecision::New {
        subject: "Other problem".into(),
    };
    let (ticket, _, _) = stored(second.store(&store));
    assert_eq!(ticket, Some(TicketId(2)));

    // Newest first.
    let list = store.tickets().unwrap();
    assert_eq!(list.iter().map(|t| t.id).collect::<Vec<_>>(), vec![2, 1]);
    let t1 = &list[1];
    assert_eq!((t1.messages, t1.attachments), (2, 2));
    assert_eq!(
        (t1.created_at, t1.updated_at),
        (1_700_000_000, 1_700_000_500)
    );
    assert!(t1.flagged);
    assert!(!list[0].flagged);

    // Thread oldest first, with flags.
    let detail = store.ticket(TicketId(1)).unwrap().unwrap();
    assert_eq!(
        detail
            .thread
            .iter()
            .map(|m| m.from.as_str())
            .collect::<Vec<_>>(),
        vec!["alice@example.com", "bob@example.com"]
    );
    assert_eq!(detail.thread[1].flags, reply.flags);
    assert_eq!(detail.thread[1].attachments.len(), 2);

    let orphans = store.orphans().unwrap();
    assert_eq!(orphans.len(), 1);
    assert_eq!(orphans[0].id, orphan_id);
    assert_eq!(orphans[0].ticket, None);
    assert_eq!(orphans[0].flags, vec![MessageFlag::Bounce]);
    let r = store
        .find_message_id("bounce@example.net")
        .unwrap()
        .unwrap();
    assert_eq!((r.message.0, r.ticket), (orphan_id, None));
    assert!(!store
        .is_participant(TicketId(1), "mailer-daemon@example.net")
        .unwrap());

    let c = store.counts().unwrap();
    assert_eq!((c.tickets, c.messages, c.contacts, c.blobs), (2, 4, 4, 2));
}

#[test]
fn existing_ticket_that_does_not_exist_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut m = Msg::new("alice@example.com", "x");
    m.thread = ThreadDecision::Existing(TicketId(42));
    let id = m.spool(&store);
    let err = store.commit_message(id, m.delivery()).unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(store.spool_len(), 1);
    assert!(store.spool_get(id).unwrap().is_some());
    let c = store.counts().unwrap();
    assert_eq!((c.messages, c.contacts, c.tickets), (0, 0, 0));
    // The key made for the would-be contact was removed again.
    assert!(person_keys(dir.path()).is_empty());
}

#[test]
fn commit_twice_is_already_processed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut m = Msg::new("alice@example.com", "Once");
    m.attachments = vec![attachment("a", b"data")];
    let id = m.spool(&store);
    stored(store.commit_message(id, m.delivery()).unwrap());
    let before = store.counts().unwrap();
    let keys_before = person_keys(dir.path()).len();
    assert_eq!(
        store.commit_message(id, m.delivery()).unwrap(),
        CommitOutcome::AlreadyProcessed
    );
    assert_eq!(store.counts().unwrap(), before);
    assert_eq!(store.tickets().unwrap().len(), 1);
    assert_eq!(person_keys(dir.path()).len(), keys_before);
    // A new sender on an already processed entry: no contact, no key file left behind.
    let mut other = Msg::new("new@example.com", "Once");
    other.thread = ThreadDecision::Orphan;
    assert_eq!(
        store.commit_message(id, other.delivery()).unwrap(),
        CommitOutcome::AlreadyProcessed
    );
    assert_eq!(store.counts().unwrap(), before);
    assert_eq!(person_keys(dir.path()).len(), keys_before);
}

#[test]
fn attachments_are_stored_once_per_owner_and_content() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Same attachment twice in one message.
    let mut m = Msg::new("alice@example.com", "Two copies");
    m.attachments = vec![attachment("a.pdf", b"PDF"), attachment("copy.pdf", b"PDF")];
    stored(m.store(&store));
    assert_eq!(store.counts().unwrap().blobs, 1);
    // Again in a second message of the same sender.
    let mut m2 = Msg::new("alice@example.com", "Again");
    m2.thread = ThreadDecision::Existing(TicketId(1));
    m2.attachments = vec![attachment("again.pdf", b"PDF")];
    stored(m2.store(&store));
    assert_eq!(store.counts().unwrap().blobs, 1);
    // Same content from another sender: a blob of their own.
    let mut m3 = Msg::new("bob@example.com", "Mine");
    m3.attachments = vec![attachment("bob.pdf", b"PDF")];
    stored(m3.store(&store));
    assert_eq!(store.counts().unwrap().blobs, 2);
    // Different content, same sender.
    let mut m4 = Msg::new("bob@example.com", "Other");
    m4.attachments = vec![attachment("bob2.pdf", b"PDF2")];
    stored(m4.store(&store));
    assert_eq!(store.counts().unwrap().blobs, 3);

    // Every attachment record is there with its own tags and file name.
    let t1 = store.ticket(TicketId(1)).unwrap().unwrap();
    assert_eq!(t1.summary.attachments, 3);
    let names: Vec<_> = t1
        .thread
        .iter()
        .flat_map(|m| m.attachments.iter().map(|a| a.filename.clone().unwrap()))
        .collect();
    assert_eq!(names, vec!["a.pdf", "copy.pdf", "again.pdf"]);
    let alice = t1.thread[0].attachments[0].tags.contact;
    assert!(t1
        .thread
        .iter()
        .flat_map(|m| &m.attachments)
        .all(|a| a.tags.contact == alice && a.sha256 == t1.thread[0].attachments[0].sha256));
    assert_eq!(t1.thread[1].attachments[0].tags.message, t1.thread[1].id);
    let t2 = store.ticket(TicketId(2)).unwrap().unwrap();
    let bob = t2.thread[0].attachments[0].tags.contact;
    assert_ne!(alice, bob);
    let sha = &t2.thread[0].attachments[0].sha256;
    assert_eq!(
        store
            .attachment_bytes(ContactId(alice), sha)
            .unwrap()
            .unwrap(),
        b"PDF"
    );
    assert_eq!(
        store
            .attachment_bytes(ContactId(bob), sha)
            .unwrap()
            .unwrap(),
        b"PDF"
    );
}

#[test]
fn failed_list_and_retry() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let id = store
        .spool_append_blocking(envelope("a@x.example"), b"broken".to_vec())
        .unwrap();
    let failed = store
        .fail_spool_entry(id, "parse error: no headers")
        .unwrap()
        .unwrap();
    assert_eq!(store.spool_len(), 0);
    assert!(store.spool_get(id).unwrap().is_none());
    assert_eq!(store.fail_spool_entry(id, "again").unwrap(), None);
    let list = store.failed_list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, failed.0);
    assert_eq!(list[0].spool_id, id.0);
    assert_eq!(list[0].reason, "parse error: no headers");
    assert_eq!(list[0].size, 6);
    assert_eq!(list[0].received_at, 1_700_000_000);
    assert!(list[0].failed_at > 0);
    assert_eq!(store.counts().unwrap().failed, 1);
    // Committing the failed entry's old spool id does nothing.
    assert_eq!(
        store
            .commit_message(id, Msg::new("a@x.example", "s").delivery())
            .unwrap(),
        CommitOutcome::AlreadyProcessed
    );

    let again = store.failed_retry(failed).unwrap();
    assert_ne!(again, id);
    assert_eq!(store.spool_len(), 1);
    assert!(store.failed_list().unwrap().is_empty());
    let entry = store.spool_get(again).unwrap().unwrap();
    assert_eq!(entry.raw, b"broken");
    assert_eq!(entry.envelope, envelope("a@x.example"));
    assert!(matches!(
        store.failed_retry(failed),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.failed_retry(FailedId(12345)),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn spool_full() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreOptions {
            spool_max_entries: 2,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let a = Msg::new("a@example.com", "1").spool(&store);
    Msg::new("a@example.com", "2").spool(&store);
    let err = store
        .spool_append_blocking(envelope("a@example.com"), b"3".to_vec())
        .unwrap_err();
    assert!(matches!(err, StoreError::SpoolFull), "{err:?}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let spool = store.spool();
    let err = rt
        .block_on(mailroom_spool::Spool::append(
            &spool,
            envelope("a@example.com"),
            b"3".to_vec(),
        ))
        .unwrap_err();
    assert!(matches!(err, mailroom_spool::SpoolError::Full), "{err:?}");
    assert_eq!(store.spool_len(), 2);
    assert_eq!(store.spool_pending().unwrap().len(), 2);
    // Processing one makes room.
    stored(
        store
            .commit_message(a, Msg::new("a@example.com", "1").delivery())
            .unwrap(),
    );
    rt.block_on(mailroom_spool::Spool::append(
        &spool,
        envelope("a@example.com"),
        b"3".to_vec(),
    ))
    .unwrap();
    assert_eq!(store.spool_len(), 2);
}

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (message, pending, failed);
    {
        let store = open(dir.path());
        let mut m = Msg::new("alice@example.com", "Persist me");
        m.message_id = Some("persist@example.com");
        m.attachments = vec![attachment("a", b"bytes")];
        message = stored(m.store(&store)).1;
        pending = Msg::new("bob@example.com", "later").spool(&store);
        let f = Msg::new("carol@example.com", "bad").spool(&store);
        failed = store.fail_spool_entry(f, "boom").unwrap().unwrap();
    }
    let store = open(dir.path());
    assert_eq!(
        store.counts().unwrap(),
        Counts {
            tickets: 1,
            messages: 1,
            contacts: 1,
            blobs: 1,
            spool: 1,
            failed: 1,
            quarantined: 0
        }
    );
    assert_eq!(store.spool_len(), 1);
    assert_eq!(store.spool_pending().unwrap(), vec![pending]);
    assert!(store.spool_get(pending).unwrap().is_some());
    assert_eq!(store.failed_list().unwrap()[0].id, failed.0);
    assert_eq!(store.failed_list().unwrap()[0].reason, "boom");
    let r = store
        .find_message_id("persist@example.com")
        .unwrap()
        .unwrap();
    assert_eq!(r.message.0, message);
    let t = store.ticket(TicketId(1)).unwrap().unwrap();
    assert_eq!(t.summary.subject, "Persist me");
    let a = &t.thread[0].attachments[0];
    assert_eq!(
        store
            .attachment_bytes(ContactId(a.tags.contact), &a.sha256)
            .unwrap()
            .unwrap(),
        b"bytes"
    );
    // The same sender maps to the same contact; ticket numbers continue.
    let (ticket, _, _) = stored(
        store
            .commit_message(pending, Msg::new("alice@example.com", "Next").delivery())
            .unwrap(),
    );
    assert_eq!(ticket, Some(TicketId(2)));
    assert_eq!(store.counts().unwrap().contacts, 1);
    assert!(store
        .is_participant(TicketId(2), "alice@example.com")
        .unwrap());
}

#[test]
fn second_open_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    match Store::open(dir.path(), StoreOptions::default()) {
        Err(StoreError::Locked(_)) => {}
        Err(e) => panic!("expected Locked, got {e:?}"),
        Ok(_) => panic!("expected Locked, got a second store"),
    }
    drop(store);
    // Released on drop.
    let _again = open(dir.path());
}

/// Run by `locked_by_another_process` in a child process: hold the store until told to stop.
#[test]
fn child_holds_store() {
    let Ok(dir) = std::env::var("MAILROOM_STORE_TEST_HOLD") else {
        return; // Not the child.
    };
    let dir = std::path::PathBuf::from(dir);
    let _store = open(&dir);
    std::fs::write(dir.join("child-ready"), b"").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !dir.join("child-release").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn locked_by_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_holds_store", "--test-threads=1"])
        .env("MAILROOM_STORE_TEST_HOLD", dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !dir.path().join("child-ready").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "child did not open the store"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let result = Store::open(dir.path(), StoreOptions::default());
    std::fs::write(dir.path().join("child-release"), b"").unwrap();
    assert!(child.wait().unwrap().success());
    match result {
        Err(StoreError::Locked(_)) => {}
        Err(e) => panic!("expected Locked, got {e:?}"),
        Ok(_) => panic!("expected Locked, got a store"),
    }
    // Free again once the other process is gone.
    let _store = open(dir.path());
}

#[test]
fn sled_lock_maps_to_locked() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    // Someone holds the sled database itself (not our lock file).
    let db = sled::open(dir.path().join("db")).unwrap();
    match Store::open(dir.path(), StoreOptions::default()) {
        Err(StoreError::Locked(_)) => {}
        Err(e) => panic!("expected Locked, got {e:?}"),
        Ok(_) => panic!("expected Locked, got a store"),
    }
    drop(db);
    let _again = open(dir.path());
}

#[test]
fn concurrent_commits_of_one_new_sender_make_one_contact() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ids: Vec<_> = (0..8)
        .map(|_| Msg::new("same@example.com", "s").spool(&store))
        .collect();
    std::thread::scope(|s| {
        for id in &ids {
            let store = store.clone();
            s.spawn(move || {
                let mut m = Msg::new("same@example.com", "s");
                m.thread = ThreadDecision::Orphan;
                m.attachments = vec![attachment("a", b"shared")];
                stored(store.commit_message(*id, m.delivery()).unwrap());
            });
        }
    });
    let c = store.counts().unwrap();
    assert_eq!((c.contacts, c.messages, c.blobs, c.spool), (1, 8, 1, 0));
    assert_eq!(person_keys(dir.path()).len(), 1);
    assert_eq!(store.orphans().unwrap().len(), 8);
}

#[cfg(unix)]
#[test]
fn key_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    Msg::new("alice@example.com", "s").store(&store);
    Msg::new("bob@example.com", "s").spool(&store);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for d in ["keys", "keys/person", "keys/spool"] {
        assert_eq!(mode(&dir.path().join(d)), 0o700, "{d}");
    }
    let keys = files_under(&dir.path().join("keys"));
    assert_eq!(keys.len(), 3, "{keys:?}"); // index, one person, one spool key
    for k in keys {
        assert_eq!(mode(&k), 0o600, "{k:?}");
        assert_eq!(std::fs::metadata(&k).unwrap().len(), 32);
        assert!(k.extension().is_some_and(|e| e == "key"));
    }
}

#[test]
fn batch_commit_stores_all_in_one_flush_and_one_contact_per_new_sender() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Two messages from a sender the store does not know yet, with the same attachment, and
    // one from somebody else.
    let mut first = Msg::new("New@Example.com", "first");
    first.attachments = vec![attachment("a.pdf", b"same bytes")];
    let mut second = Msg::new("new@example.com", "second");
    second.attachments = vec![attachment("b.pdf", b"same bytes")];
    let mut third = Msg::new("other@example.com", "third");
    third.thread = ThreadDecision::Orphan;
    let batch: Vec<(SpoolId, _)> = [&first, &second, &third]
        .iter()
        .map(|m| (m.spool(&store), m.delivery()))
        .collect();
    let flushes = store.flush_count();
    let outcomes = store.commit_messages(&batch).unwrap();
    assert_eq!(store.flush_count() - flushes, 1, "one flush for the batch");
    let tickets: Vec<_> = outcomes.iter().map(|o| stored(*o)).collect();
    assert_eq!(tickets[0].0, Some(TicketId(1)));
    assert_eq!(tickets[1].0, Some(TicketId(2)));
    assert_eq!(tickets[2].0, None);
    assert!(tickets[0].2 && tickets[1].2);
    assert_eq!(store.spool_len(), 0);
    let c = store.counts().unwrap();
    assert_eq!((c.tickets, c.messages, c.contacts, c.blobs), (2, 3, 2, 1));
    // One key per contact, none left over from the second plan of the new sender.
    assert_eq!(person_keys(dir.path()).len(), 2);
}

#[test]
fn batch_commit_skips_processed_entries_and_fails_whole_on_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let done = Msg::new("a@example.com", "done");
    let done_id = done.spool(&store);
    stored(store.commit_message(done_id, done.delivery()).unwrap());
    let fresh = Msg::new("b@example.com", "fresh");
    let fresh_id = fresh.spool(&store);
    let outcomes = store
        .commit_messages(&[(done_id, done.delivery()), (fresh_id, fresh.delivery())])
        .unwrap();
    assert_eq!(outcomes[0], CommitOutcome::AlreadyProcessed);
    assert_eq!(stored(outcomes[1]).0, Some(TicketId(2)));
    assert_eq!(store.counts().unwrap().messages, 2);

    // A message for a ticket that does not exist fails the batch: nothing of it is written.
    let good = Msg::new("new@example.com", "good");
    let mut bad = Msg::new("c@example.com", "bad");
    bad.thread = ThreadDecision::Existing(TicketId(42));
    let keys = person_keys(dir.path()).len();
    let good_id = good.spool(&store);
    let bad_id = bad.spool(&store);
    let err = store
        .commit_messages(&[(good_id, good.delivery()), (bad_id, bad.delivery())])
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(store.spool_len(), 2);
    let c = store.counts().unwrap();
    assert_eq!((c.messages, c.contacts, c.tickets), (2, 2, 2));
    assert_eq!(person_keys(dir.path()).len(), keys, "unused keys removed");
    // One by one, the good one goes in.
    stored(store.commit_message(good_id, good.delivery()).unwrap());
    assert_eq!(store.spool_len(), 1);
}
