//! The store operations behind the HTTP API: tokens, feedback moves, release, delete, paging.

mod common;

use common::{attachment, files_under, open, Msg};
use mailroom_spamfilter::{Classifier, Label, Tokenizer};
use mailroom_store::{
    CommitOutcome, ContactId, FeedbackAction, MessageFlag, MessageKey, Role, Store, ThreadDecision,
    TicketId, TicketQuery, TicketStatus, TrainOutcome,
};
use sha2::Digest;

fn stored(outcome: CommitOutcome) -> (Option<TicketId>, MessageKey) {
    match outcome {
        CommitOutcome::Stored {
            ticket, message, ..
        } => (ticket, message),
        other => panic!("not stored: {other:?}"),
    }
}

fn feedback(store: &Store, m: MessageKey, label: Label) -> mailroom_store::FeedbackOutcome {
    store
        .message_feedback(
            m,
            label,
            &Tokenizer::default(),
            &Classifier::default(),
            20_000,
        )
        .unwrap()
}

/// A ticket opened by alice with a second message (with an attachment) from alice.
fn ticket_with_two(store: &Store) -> (TicketId, MessageKey, MessageKey) {
    let (ticket, first) = stored(
        Msg {
            body: "my printer is broken",
            ..Msg::new("alice@example.com", "Printer")
        }
        .store(store),
    );
    let ticket = ticket.unwrap();
    let (_, second) = stored(
        Msg {
            body: "cheap pills buy now",
            thread: ThreadDecision::Existing(ticket),
            attachments: vec![attachment("pills.exe", b"MZ evil")],
            flags: vec![MessageFlag::Bulk],
            ..Msg::new("alice@example.com", "Re: Printer")
        }
        .store(store),
    );
    (ticket, first, second)
}

#[test]
fn tokens_verify_until_revoked_or_expired_and_are_stored_only_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (agent, secret) = store.token_create("ci", Role::Agent, None).unwrap();
    let (admin, admin_secret) = store.token_create("ops", Role::Admin, Some(2_000)).unwrap();
    assert_eq!((agent.id, admin.id), (1, 2));
    assert!(secret.starts_with("mr_") && secret.len() == 46);
    assert_ne!(secret, admin_secret);
    assert_eq!(
        store.token_verify(&secret, 1_000).unwrap(),
        Some(agent.clone())
    );
    assert_eq!(
        store
            .token_verify(&admin_secret, 1_999)
            .unwrap()
            .map(|t| t.role),
        Some(Role::Admin)
    );
    assert_eq!(
        store.token_verify(&admin_secret, 2_000).unwrap(),
        None,
        "expired"
    );
    let mut wrong = secret.clone();
    wrong.replace_range(10..11, if &secret[10..11] == "A" { "B" } else { "A" });
    assert_eq!(store.token_verify(&wrong, 1_000).unwrap(), None);
    assert_eq!(store.token_verify("", 1_000).unwrap(), None);
    assert_eq!(store.token_verify("mr_x", 1_000).unwrap(), None);
    assert!(store.token_create("", Role::Agent, None).is_err());
    assert!(store.token_create("a\nb", Role::Agent, None).is_err());

    assert!(store.token_revoke(agent.id).unwrap());
    assert!(store.token_revoke(agent.id).unwrap(), "again: still true");
    assert!(!store.token_revoke(99).unwrap());
    assert_eq!(store.token_verify(&secret, 1_000).unwrap(), None);
    let list = store.token_list().unwrap();
    assert_eq!(list.len(), 2);
    assert!(list[0].revoked && !list[1].revoked);
    assert_eq!(list[1].expires_at, Some(2_000));

    // Neither the secret nor its SHA-256 is anywhere on disk.
    store.flush().unwrap();
    let digest = sha2::Sha256::digest(admin_secret.as_bytes());
    for file in files_under(dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        for needle in [admin_secret.as_bytes(), digest.as_slice()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds the token",
                file.display()
            );
        }
    }
    drop(store);
    let store = open(dir.path());
    assert!(store.token_verify(&admin_secret, 1_000).unwrap().is_some());
    let (third, _) = store.token_create("later", Role::Agent, None).unwrap();
    assert_eq!(third.id, 3, "ids keep counting after a reopen");
}

#[test]
fn spam_feedback_moves_a_ticket_message_to_the_quarantine_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (ticket, first, spam) = ticket_with_two(&store);
    let before = store.filter_stats().unwrap();

    let out = feedback(&store, spam, Label::Spam);
    assert_eq!(out.training, TrainOutcome::Learned);
    assert_eq!(
        out.action,
        FeedbackAction::Quarantined {
            from_ticket: Some(ticket),
            ticket_deleted: false
        }
    );
    let after = store.filter_stats().unwrap();
    assert_eq!(after.spam_messages, before.spam_messages + 1);
    assert!(after.tokens > before.tokens);

    let detail = store.ticket(ticket).unwrap().unwrap();
    assert_eq!(
        detail.thread.iter().map(|m| m.id).collect::<Vec<_>>(),
        [first.0]
    );
    assert_eq!(detail.summary.messages, 1);
    assert_eq!(detail.summary.attachments, 0);
    assert!(!detail.summary.flagged, "the only flagged message left");
    let entry = store.quarantine_entry(spam).unwrap().unwrap();
    assert_eq!(entry.target_ticket, Some(ticket));
    assert_eq!(entry.message.ticket, None);
    assert!(entry.message.quarantined);
    assert_eq!(entry.message.attachments[0].tags.ticket, None);
    assert_eq!(store.quarantine_page(None, 10).unwrap().entries.len(), 1);

    // The same feedback again: nothing trained, nothing moved.
    let again = feedback(&store, spam, Label::Spam);
    assert_eq!(again.training, TrainOutcome::AlreadyLearned);
    assert_eq!(again.action, FeedbackAction::Unchanged);
    assert_eq!(store.filter_stats().unwrap(), after);
    assert_eq!(store.ticket(ticket).unwrap().unwrap().thread.len(), 1);

    // Ham on a ticket message trains and stays.
    let ham = feedback(&store, first, Label::Ham);
    assert_eq!(ham.action, FeedbackAction::Unchanged);
    assert_eq!(
        store.filter_stats().unwrap().ham_messages,
        before.ham_messages + 1
    );

    // Release puts it back where it was, in order, with its attachment counted.
    let released = store.quarantine_release(spam).unwrap();
    assert_eq!((released.ticket, released.new_ticket), (ticket, false));
    let detail = store.ticket(ticket).unwrap().unwrap();
    assert_eq!(
        detail.thread.iter().map(|m| m.id).collect::<Vec<_>>(),
        [first.0, spam.0]
    );
    assert_eq!(detail.summary.attachments, 1);
    assert!(detail.summary.flagged);
    assert_eq!(detail.thread[1].attachments[0].tags.ticket, Some(ticket.0));
    assert!(store.quarantine_entry(spam).unwrap().is_none());
    assert!(
        store.quarantine_release(spam).is_err(),
        "not quarantined any more"
    );
}

#[test]
fn spam_on_a_ticket_of_one_message_removes_the_ticket_and_ham_releases_into_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (ticket, m) = stored(
        Msg {
            body: "win a prize",
            message_id: Some("prize@spam.example"),
            ..Msg::new("bob@example.com", "You won")
        }
        .store(&store),
    );
    let ticket = ticket.unwrap();
    let out = feedback(&store, m, Label::Spam);
    assert_eq!(
        out.action,
        FeedbackAction::Quarantined {
            from_ticket: Some(ticket),
            ticket_deleted: true
        }
    );
    assert!(!store.ticket_exists(ticket).unwrap());
    assert!(!store.is_participant(ticket, "bob@example.com").unwrap());
    assert_eq!(
        store
            .find_message_id("prize@spam.example")
            .unwrap()
            .unwrap()
            .ticket,
        None
    );

    // Ham: relabeled and released into a new ticket, requester the sender, same subject.
    let out = feedback(&store, m, Label::Ham);
    assert_eq!(out.training, TrainOutcome::Relabeled);
    let FeedbackAction::Released {
        ticket: new,
        new_ticket,
    } = out.action
    else {
        panic!("not released: {out:?}");
    };
    assert!(new_ticket);
    assert_ne!(new, ticket);
    let detail = store.ticket(new).unwrap().unwrap();
    assert_eq!(detail.summary.requester, "bob@example.com");
    assert_eq!(detail.summary.subject, "You won");
    assert_eq!(detail.thread[0].ticket, Some(new.0));
    assert!(store.is_participant(new, "bob@example.com").unwrap());
    assert_eq!(
        store
            .find_message_id("prize@spam.example")
            .unwrap()
            .unwrap()
            .ticket,
        Some(new)
    );
    let stats = store.filter_stats().unwrap();
    assert_eq!((stats.ham_messages, stats.spam_messages), (1, 0));
}

#[test]
fn spam_on_an_orphan_moves_it_and_missing_messages_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (_, m) = stored(
        Msg {
            thread: ThreadDecision::Orphan,
            flags: vec![MessageFlag::AutoReply],
            ..Msg::new("daemon@example.com", "Out of office")
        }
        .store(&store),
    );
    assert_eq!(store.orphans().unwrap().len(), 1);
    let out = feedback(&store, m, Label::Spam);
    assert_eq!(
        out.action,
        FeedbackAction::Quarantined {
            from_ticket: None,
            ticket_deleted: false
        }
    );
    assert!(store.orphans().unwrap().is_empty());
    assert!(store
        .message_feedback(
            MessageKey(987_654),
            Label::Spam,
            &Tokenizer::default(),
            &Classifier::default(),
            1
        )
        .is_err());
}

#[test]
fn delete_removes_the_message_and_blobs_no_one_else_uses() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (_, keep) = stored(
        Msg {
            body: "shared",
            attachments: vec![attachment("a.bin", b"shared bytes")],
            ..Msg::new("carol@example.com", "One")
        }
        .store(&store),
    );
    let (_, gone) = stored(
        Msg {
            body: "spam with two files",
            attachments: vec![
                attachment("b.bin", b"shared bytes"),
                attachment("c.bin", b"only mine"),
            ],
            ..Msg::new("carol@example.com", "Two")
        }
        .store(&store),
    );
    let contact = ContactId(
        store.message_view_for_test(keep).attachments[0]
            .tags
            .contact,
    );
    let shared = hex(b"shared bytes");
    let mine = hex(b"only mine");
    assert!(store.attachment_bytes(contact, &mine).unwrap().is_some());
    assert!(
        !store.quarantine_delete(gone).unwrap(),
        "not quarantined yet"
    );
    feedback(&store, gone, Label::Spam);
    assert!(store.quarantine_delete(gone).unwrap());
    assert!(!store.quarantine_delete(gone).unwrap());
    assert!(store.message_raw(gone).unwrap().is_none());
    assert!(store.quarantine_entry(gone).unwrap().is_none());
    assert!(store.attachment_bytes(contact, &mine).unwrap().is_none());
    assert_eq!(
        store.attachment_bytes(contact, &shared).unwrap().as_deref(),
        Some(&b"shared bytes"[..]),
        "still used by the other message"
    );
    let d = store
        .attachment_download(contact, &shared)
        .unwrap()
        .unwrap();
    assert_eq!(d.filename.as_deref(), Some("a.bin"));
    assert_eq!(d.content_type, "application/octet-stream");
    assert_eq!(store.counts().unwrap().blobs, 1);
    assert!(store.attachment_download(contact, "zz").unwrap().is_none());
}

fn hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

trait ViewForTest {
    fn message_view_for_test(&self, m: MessageKey) -> mailroom_store::MessageView;
}

impl ViewForTest for Store {
    fn message_view_for_test(&self, m: MessageKey) -> mailroom_store::MessageView {
        for t in self.tickets().unwrap() {
            let d = self.ticket(TicketId(t.id)).unwrap().unwrap();
            if let Some(v) = d.thread.into_iter().find(|v| v.id == m.0) {
                return v;
            }
        }
        panic!("message {m:?} not in a ticket")
    }
}

#[test]
fn ticket_pages_filter_on_metadata_and_page_by_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..5 {
        let from = if i % 2 == 0 {
            "dave@example.com"
        } else {
            "erin@example.com"
        };
        Msg {
            body: "hi",
            flags: if i == 3 {
                vec![MessageFlag::Bulk]
            } else {
                vec![]
            },
            ..Msg::new(from, "Hello")
        }
        .store(&store);
    }
    let all = |q: TicketQuery| {
        let mut out = Vec::new();
        let mut q = q;
        loop {
            let page = store.ticket_page(&q).unwrap();
            assert!(page.tickets.len() <= q.limit.max(1));
            out.extend(page.tickets.iter().map(|t| t.id));
            match page.next {
                Some(next) => q.before = Some(next),
                None => return out,
            }
        }
    };
    assert_eq!(
        all(TicketQuery {
            limit: 2,
            ..Default::default()
        }),
        [5, 4, 3, 2, 1]
    );
    assert_eq!(
        all(TicketQuery {
            requester: Some("Dave@Example.com".into()),
            limit: 1,
            ..Default::default()
        }),
        [5, 3, 1]
    );
    assert_eq!(
        all(TicketQuery {
            flagged: Some(true),
            limit: 10,
            ..Default::default()
        }),
        [4]
    );
    assert_eq!(
        all(TicketQuery {
            status: Some(TicketStatus::Closed),
            limit: 10,
            ..Default::default()
        }),
        Vec::<u64>::new()
    );
    assert_eq!(
        all(TicketQuery {
            requester: Some("nobody@example.com".into()),
            limit: 10,
            ..Default::default()
        }),
        Vec::<u64>::new()
    );
    let page = store
        .ticket_page(&TicketQuery {
            limit: 5,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        (page.tickets.len(), page.next),
        (5, None),
        "exact fit: no next"
    );
    assert_eq!(page.tickets[0].requester, "dave@example.com");
}
