//! Erasure, retention, export, agents and backups at the store's API.

mod common;

use common::*;
use mailroom_spamfilter::{Classifier, Features, Label};
use mailroom_store::{
    Actor, CommitOutcome, ContactId, MessageKey, RetentionRules, Role, Store, StoreOptions,
    ThreadDecision, TicketId, TicketStatus,
};

fn stored(outcome: CommitOutcome) -> (Option<TicketId>, MessageKey) {
    match outcome {
        CommitOutcome::Stored {
            ticket, message, ..
        } => (ticket, message),
        CommitOutcome::AlreadyProcessed => panic!("not stored"),
    }
}

/// Alice opens two tickets (one with an attachment whose content Bob also sent), replies on
/// Bob's ticket, has a quarantined message, an unprocessed spool entry and a learned record.
struct World {
    alice_tickets: Vec<TicketId>,
    bob_ticket: TicketId,
    bob_message: MessageKey,
    alice_reply: MessageKey,
    carol_ticket: TicketId,
}

const SHARED: &[u8] = b"the same pdf bytes in two mails";

fn world(store: &Store) -> World {
    let mut a1 = Msg::new("alice@example.com", "alice one");
    a1.attachments = vec![attachment("report.pdf", SHARED)];
    let (t1, a1m) = stored(a1.store(store));
    let (t2, _) = stored(Msg::new("alice@example.com", "alice two").store(store));
    let mut b = Msg::new("bob@example.com", "bob's problem");
    b.attachments = vec![attachment("same.pdf", SHARED)];
    let (bt, bm) = stored(b.store(store));
    let mut reply = Msg::new("alice@example.com", "Re: bob's problem");
    reply.thread = ThreadDecision::Existing(bt.unwrap());
    let (_, ar) = stored(reply.store(store));
    let (ct, _) = stored(Msg::new("carol@example.com", "carol").store(store));
    let mut q = Msg::new("alice@example.com", "alice spam");
    q.thread = ThreadDecision::Quarantine {
        ticket: None,
        subject: "alice spam".into(),
    };
    stored(q.store(store));
    // Not yet processed.
    Msg::new("alice@example.com", "still in the spool").spool(store);
    // Learned from Alice's first message.
    let c = Classifier::default();
    store
        .filter_train(
            &c,
            &Features::from_texts(["hello".to_string()]),
            &[a1m.0 as u8; 32],
            Label::Ham,
            Some(ContactId(1)),
            1,
        )
        .unwrap();
    World {
        alice_tickets: vec![t1.unwrap(), t2.unwrap()],
        bob_ticket: bt.unwrap(),
        bob_message: bm,
        alice_reply: ar,
        carol_ticket: ct.unwrap(),
    }
}

#[test]
fn erasure_removes_the_person_and_keeps_everyone_else() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let w = world(&store);
    assert!(store
        .tickets()
        .unwrap()
        .iter()
        .any(|t| t.requester == "alice@example.com"));
    let learned_before = store.filter_stats().unwrap().learned_records;

    let dry = store
        .erase_person("Alice@Example.com", true, Actor::Cli)
        .unwrap();
    assert!(dry.dry_run && dry.found);
    assert_eq!(
        dry.tickets,
        vec![w.alice_tickets[0].0, w.alice_tickets[1].0]
    );
    assert_eq!(dry.tickets_updated, vec![w.bob_ticket.0]);
    assert_eq!(dry.messages.len(), 4);
    assert_eq!((dry.spool, dry.quarantined, dry.learned), (1, 1, 1));
    assert_eq!(dry.attachments, 1);
    // The dry run changed nothing.
    assert_eq!(store.tickets().unwrap().len(), 4);
    assert_eq!(store.spool_len(), 1);
    assert!(store.audit_list(None, 10).unwrap().is_empty());

    let report = store
        .erase_person("alice@example.com", false, Actor::Cli)
        .unwrap();
    // The real run removes exactly what the dry run listed.
    assert_eq!(report.tickets, dry.tickets);
    assert_eq!(report.messages, dry.messages);
    assert_eq!(
        (
            report.spool,
            report.quarantined,
            report.learned,
            report.attachments
        ),
        (dry.spool, dry.quarantined, dry.learned, dry.attachments)
    );
    assert!(report.key_destroyed);
    assert!(report.spool_keys_destroyed >= 1);

    let tickets = store.tickets().unwrap();
    let mut ids: Vec<u64> = tickets.iter().map(|t| t.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![w.bob_ticket.0, w.carol_ticket.0]);
    assert!(tickets.iter().all(|t| t.requester != "alice@example.com"));
    let bob = store.ticket(w.bob_ticket).unwrap().unwrap();
    assert_eq!(bob.thread.len(), 1);
    assert_eq!(bob.thread[0].id, w.bob_message.0);
    assert!(store.message_raw(w.alice_reply).unwrap().is_none());
    // Bob's copy of the shared attachment is still there.
    let sha = &bob.thread[0].attachments[0].sha256;
    let bob_contact = ContactId(bob.thread[0].attachments[0].tags.contact);
    assert_eq!(
        store.attachment_bytes(bob_contact, sha).unwrap().unwrap(),
        SHARED
    );
    assert_eq!(store.spool_len(), 0);
    assert!(store.quarantine().unwrap().is_empty());
    assert_eq!(
        store.filter_stats().unwrap().learned_records,
        learned_before - 1
    );
    // Her key is gone; everyone else's stays.
    let keys: Vec<String> = person_keys(dir.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(!keys.contains(&"1.key".to_string()), "{keys:?}");
    assert_eq!(keys.len(), 2);
    // The audit record holds counts, no address.
    let audit = store.audit_list(None, 10).unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].counts["tickets"], 2);
    assert!(!serde_json::to_string(&audit).unwrap().contains("alice"));
    // Erasing again finds nobody.
    let again = store
        .erase_person("alice@example.com", false, Actor::Cli)
        .unwrap();
    assert!(!again.found && again.messages.is_empty());
}

#[test]
fn export_holds_everything_of_the_person_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let w = world(&store);
    let export = store
        .export_person("alice@example.com", Actor::Cli)
        .unwrap()
        .unwrap();
    assert_eq!(export.contact.address, "alice@example.com");
    let tickets: Vec<u64> = export.tickets.iter().map(|t| t.id).collect();
    assert_eq!(tickets, vec![w.alice_tickets[0].0, w.alice_tickets[1].0]);
    assert_eq!(export.participated, vec![w.bob_ticket.0]);
    assert_eq!(export.messages.len(), 4);
    assert!(export
        .messages
        .iter()
        .all(|(m, raw)| m.from == "alice@example.com" && !raw.is_empty()));
    assert_eq!(export.attachments.len(), 1);
    assert_eq!(export.attachments[0].1, SHARED);
    let bytes = mailroom_store::write_export_archive(&export, Vec::new()).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut names = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        names.push(entry.path().unwrap().to_string_lossy().into_owned());
    }
    assert!(names.contains(&"person.json".to_string()));
    assert!(names.contains(&"manifest.json".to_string()));
    assert_eq!(names.iter().filter(|n| n.ends_with(".eml")).count(), 4);
    assert!(names.iter().any(|n| n.ends_with("/report.pdf")));
    assert!(store
        .export_person("nobody@example.com", Actor::Cli)
        .unwrap()
        .is_none());
}

#[test]
fn retention_removes_old_data_and_the_dry_run_lists_exactly_that() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let w = world(&store);
    let now = mailroom_store_now();
    store
        .ticket_set_status(w.carol_ticket, TicketStatus::Closed, Actor::Cli)
        .unwrap()
        .unwrap();
    let rules = RetentionRules {
        quarantine_days: 30,
        closed_ticket_days: 365,
        attachment_days: 0,
        audit_days: 0,
    };
    // Today nothing is old enough.
    let today = store.retention_apply(rules, now, true, Actor::Cli).unwrap();
    assert!(today.quarantine.is_empty() && today.closed_tickets.is_empty());
    // In 40 days the quarantine goes, the closed ticket stays; in 400 days it goes too.
    let later = now + 40 * 86_400;
    let dry = store
        .retention_apply(rules, later, true, Actor::Cli)
        .unwrap();
    assert_eq!(dry.quarantine.len(), 1);
    assert!(dry.closed_tickets.is_empty());
    let much_later = now + 400 * 86_400;
    let dry = store
        .retention_apply(rules, much_later, true, Actor::Cli)
        .unwrap();
    assert_eq!(dry.closed_tickets, vec![w.carol_ticket.0]);
    assert_eq!(store.tickets().unwrap().len(), 4, "dry run changed nothing");
    let mut real = store
        .retention_apply(rules, much_later, false, Actor::System)
        .unwrap();
    real.dry_run = true;
    assert_eq!(real, dry);
    let left: Vec<u64> = store.tickets().unwrap().iter().map(|t| t.id).collect();
    assert!(!left.contains(&w.carol_ticket.0));
    assert_eq!(left.len(), 3, "open tickets stay");
    assert!(store.quarantine().unwrap().is_empty());
    // Attachments: a rule of 1 day removes both attachment records in 2 days; messages stay.
    let att = RetentionRules {
        attachment_days: 1,
        ..RetentionRules::default()
    };
    let r = store
        .retention_apply(att, now + 2 * 86_400, false, Actor::Cli)
        .unwrap();
    assert_eq!(r.attachments.len(), 2);
    assert_eq!(r.blobs, 2);
    let bob = store.ticket(w.bob_ticket).unwrap().unwrap();
    assert!(bob.thread[0].attachments.is_empty());
}

fn mailroom_store_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn deleting_an_agent_revokes_tokens_and_anonymises_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let w = world(&store);
    let (token, secret) = store.token_create("Dana Agent", Role::Agent, None).unwrap();
    let (other, _) = store.token_create("Dana Agent", Role::Admin, None).unwrap();
    assert_eq!(token.agent, other.agent);
    let actor = Actor::Token {
        token: token.id,
        agent: token.agent,
    };
    let closed = store
        .ticket_set_status(w.carol_ticket, TicketStatus::Closed, actor)
        .unwrap()
        .unwrap();
    assert_eq!(closed.closed_by.as_deref(), Some("Dana Agent"));
    store.backup(&dir.path().join("b"), actor).unwrap();
    let gone = store
        .agent_delete("Dana Agent", Actor::Cli)
        .unwrap()
        .unwrap();
    assert_eq!(gone.tokens_revoked, 2);
    assert!(store.token_verify(&secret, 0).unwrap().is_none());
    let anon = format!("agent-{}", token.agent);
    let ticket = store.ticket(w.carol_ticket).unwrap().unwrap();
    assert_eq!(ticket.summary.closed_by.as_deref(), Some(anon.as_str()));
    let audit = store.audit_list(None, 10).unwrap();
    let backup_record = audit.iter().find(|a| a.token == Some(token.id)).unwrap();
    assert_eq!(backup_record.agent.as_deref(), Some(anon.as_str()));
    assert!(store.token_list().unwrap().iter().all(|t| t.name == anon));
    assert!(store
        .agent_delete("Dana Agent", Actor::Cli)
        .unwrap()
        .is_none());
}

#[test]
fn a_restored_backup_cannot_bring_back_an_erased_person_or_agent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let backup = dir.path().join("backup");
    let store = open(&data);
    let w = world(&store);
    let (token, secret) = store.token_create("Eve", Role::Agent, None).unwrap();
    let manifest = store.backup(&backup, Actor::Cli).unwrap();
    assert!(manifest.trees["tickets"] >= 4);
    // No key material in the backup.
    let files = files_under(&backup);
    assert_eq!(files.len(), 2, "{files:?}");
    store
        .erase_person("alice@example.com", false, Actor::Cli)
        .unwrap();
    store.agent_delete("Eve", Actor::Cli).unwrap().unwrap();
    drop(store);

    // A damaged backup is refused before anything changes.
    let damaged = dir.path().join("damaged");
    std::fs::create_dir(&damaged).unwrap();
    std::fs::copy(backup.join("manifest.json"), damaged.join("manifest.json")).unwrap();
    let mut bytes = std::fs::read(backup.join("data.mrbk")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(damaged.join("data.mrbk"), bytes).unwrap();
    let err = Store::restore(&damaged, &data, StoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");

    // Without the keys directory a restore is refused.
    let elsewhere = dir.path().join("elsewhere");
    let err = Store::restore(&backup, &elsewhere, StoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("keys"), "{err}");

    let report = Store::restore(&backup, &data, StoreOptions::default()).unwrap();
    assert_eq!(report.contacts_erased, 1);
    assert_eq!(report.agents_deleted, 1);
    assert_eq!(report.tokens_revoked, 1);
    // Alice's unprocessed spool entry is in the backup, but erasure destroyed its spool key.
    assert_eq!(report.spool_unreadable, 1);
    let store = open(&data);
    let tickets = store.tickets().unwrap();
    assert_eq!(tickets.len(), 2);
    assert!(tickets
        .iter()
        .all(|t| t.requester != "alice@example.com" && t.requester != "[erased]"));
    assert!(store.ticket(w.alice_tickets[0]).unwrap().is_none());
    assert!(store.token_verify(&secret, 0).unwrap().is_none());
    assert!(store
        .token_list()
        .unwrap()
        .iter()
        .all(|t| t.id != token.id || t.revoked));
    assert_eq!(store.spool_len(), 0);
}
