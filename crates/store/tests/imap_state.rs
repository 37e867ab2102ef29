//! IMAP fetch state: sync positions, and exactly-once spooling by content.

use mailroom_spool::{Envelope, Source};
use mailroom_store::{ImapAppend, ImapSyncState, Store, StoreError, StoreOptions};

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, StoreOptions::default()).unwrap()
}

fn envelope(account: &str) -> Envelope {
    Envelope {
        source: Source::Imap,
        mail_from: String::new(),
        rcpt_to: Vec::new(),
        peer: account.to_string(),
        helo: String::new(),
        received_at: 1_700_000_000,
        tls: true,
    }
}

fn raw(n: u32) -> Vec<u8> {
    format!("From: a@example.org\r\nSubject: imap-marker-{n}\r\n\r\nbody {n}\r\n").into_bytes()
}

#[test]
fn the_same_bytes_are_spooled_once_per_account() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let first = store
        .imap_append_blocking("desk", envelope("desk"), raw(1))
        .unwrap();
    assert!(matches!(first, ImapAppend::Spooled(_)), "{first:?}");
    let again = store
        .imap_append_blocking("desk", envelope("desk"), raw(1))
        .unwrap();
    assert_eq!(again, ImapAppend::Duplicate);
    assert_eq!(store.spool_len(), 1);
    // Another message, and the same message from another account, are new.
    assert!(matches!(
        store.imap_append_blocking("desk", envelope("desk"), raw(2)),
        Ok(ImapAppend::Spooled(_))
    ));
    assert!(matches!(
        store.imap_append_blocking("sales", envelope("sales"), raw(1)),
        Ok(ImapAppend::Spooled(_))
    ));
    assert_eq!(store.spool_len(), 3);
    let entry = store.spool_get(store.spool_pending().unwrap()[0]).unwrap();
    assert_eq!(entry.unwrap().raw, raw(1));

    // The record outlives the spool entry (processed) and the process (reopened).
    for id in store.spool_pending().unwrap() {
        store.fail_spool_entry(id, "test").unwrap();
    }
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store
            .imap_append_blocking("desk", envelope("desk"), raw(1))
            .unwrap(),
        ImapAppend::Duplicate
    );
    assert_eq!(store.spool_len(), 0);
}

#[tokio::test]
async fn concurrent_appends_of_one_message_spool_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let appends: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .imap_append("desk", envelope("desk"), raw(i % 4))
                    .await
            })
        })
        .collect();
    let mut spooled = 0;
    for a in appends {
        if let ImapAppend::Spooled(_) = a.await.unwrap().unwrap() {
            spooled += 1;
        }
    }
    assert_eq!(spooled, 4);
    assert_eq!(store.spool_len(), 4);
}

#[test]
fn sync_state_is_kept_per_account_and_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mailbox = "imap.example.org:993/support@example.org/INBOX";
    assert_eq!(store.imap_state("desk", mailbox).unwrap(), None);
    let state = ImapSyncState {
        uid_validity: 1_700_000_123,
        last_uid: 42,
    };
    store.imap_set_state("desk", mailbox, state).unwrap();
    assert_eq!(store.imap_state("desk", mailbox).unwrap(), Some(state));
    // Pointed at another mailbox: starts over.
    assert_eq!(store.imap_state("desk", "elsewhere/INBOX").unwrap(), None);
    assert_eq!(store.imap_state("other", mailbox).unwrap(), None);
    store
        .imap_append_blocking("desk", envelope("desk"), raw(7))
        .unwrap();
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.imap_state("desk", mailbox).unwrap(), Some(state));
    let accounts = store.imap_accounts().unwrap();
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].account, "desk");
    assert_eq!(accounts[0].last_uid, 42);
    assert_eq!(accounts[0].messages, 1);
}

#[test]
fn a_full_spool_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        spool_max_entries: 1,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), options).unwrap();
    store
        .imap_append_blocking("desk", envelope("desk"), raw(1))
        .unwrap();
    let full = store.imap_append_blocking("desk", envelope("desk"), raw(2));
    assert!(matches!(full, Err(StoreError::SpoolFull)), "{full:?}");
    // A duplicate is recognised even when the spool is full.
    assert_eq!(
        store
            .imap_append_blocking("desk", envelope("desk"), raw(1))
            .unwrap(),
        ImapAppend::Duplicate
    );
    for id in store.spool_pending().unwrap() {
        store.fail_spool_entry(id, "test").unwrap();
    }
    // The refused message was not recorded: it is spooled when there is room.
    assert!(matches!(
        store.imap_append_blocking("desk", envelope("desk"), raw(2)),
        Ok(ImapAppend::Spooled(_))
    ));
}

#[test]
fn no_message_hash_or_content_is_on_disk_in_plaintext() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let message = raw(99);
    store
        .imap_append_blocking("desk", envelope("desk"), message.clone())
        .unwrap();
    store.flush().unwrap();
    drop(store);
    let sha: [u8; 32] = sha2::Sha256::digest(&message).into();
    let mut files = vec![dir.path().join("db")];
    let mut checked = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                files.push(entry.unwrap().path());
            }
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for needle in [&sha[..], b"imap-marker-99"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds {needle:?}",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked > 0);
}
