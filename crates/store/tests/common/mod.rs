//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use mailroom_spool::{Envelope, Source, SpoolId};
use mailroom_store::{
    Address, Delivery, MessageFlag, NewAttachment, NewMessage, Store, StoreOptions, ThreadDecision,
};

pub fn open(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::default()).unwrap()
}

pub fn envelope(mail_from: &str) -> Envelope {
    Envelope {
        source: Source::Smtp,
        mail_from: mail_from.to_string(),
        rcpt_to: vec!["help@desk.example".to_string()],
        peer: "192.0.2.1:2525".to_string(),
        helo: "client.example".to_string(),
        received_at: 1_700_000_000,
        tls: true,
    }
}

pub fn raw(from: &str, subject: &str, body: &str) -> Vec<u8> {
    format!("From: {from}\r\nSubject: {subject}\r\nMessage-ID: <x@y>\r\n\r\n{body}\r\n")
        .into_bytes()
}

pub fn attachment(name: &str, data: &[u8]) -> NewAttachment {
    NewAttachment {
        filename: Some(name.to_string()),
        content_type: "application/octet-stream".to_string(),
        data: data.to_vec(),
        retention_class: "attachment".to_string(),
    }
}

pub struct Msg<'a> {
    pub from: &'a str,
    pub subject: &'a str,
    pub body: &'a str,
    pub message_id: Option<&'a str>,
    pub thread: ThreadDecision,
    pub attachments: Vec<NewAttachment>,
    pub flags: Vec<MessageFlag>,
}

impl<'a> Msg<'a> {
    pub fn new(from: &'a str, subject: &'a str) -> Self {
        Msg {
            from,
            subject,
            body: "hello",
            message_id: None,
            thread: ThreadDecision::New {
                subject: subject.to_string(),
            },
            attachments: Vec::new(),
            flags: Vec::new(),
        }
    }

    pub fn delivery(&self) -> Delivery {
        let raw = raw(self.from, self.subject, self.body);
        Delivery {
            from: Address {
                address: self.from.to_string(),
                name: Some(format!("Name of {}", self.from)),
            },
            thread: self.thread.clone(),
            message: NewMessage {
                message_id: self.message_id.map(str::to_string),
                references: Vec::new(),
                subject: self.subject.to_string(),
                date: Some(1_700_000_000),
                headers: vec![
                    ("From".to_string(), self.from.to_string()),
                    ("Subject".to_string(), self.subject.to_string()),
                ],
                text: Some(self.body.to_string()),
                html: None,
                raw: raw.clone(),
                envelope: envelope(self.from),
                flags: self.flags.clone(),
                content_hash: [0u8; 32],
            },
            attachments: self.attachments.clone(),
            classification: None,
        }
    }

    /// Spool the message and commit it; returns the outcome.
    pub fn store(&self, store: &Store) -> mailroom_store::CommitOutcome {
        let id = self.spool(store);
        store.commit_message(id, self.delivery()).unwrap()
    }

    pub fn spool(&self, store: &Store) -> SpoolId {
        store
            .spool_append_blocking(envelope(self.from), raw(self.from, self.subject, self.body))
            .unwrap()
    }
}

/// Every regular file under `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let ft = entry.file_type().unwrap();
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                out.push(entry.path());
            }
        }
    }
    out
}

/// Person key files.
pub fn person_keys(dir: &Path) -> Vec<PathBuf> {
    files_under(&dir.join("keys/person"))
}

/// Spool key files.
pub fn spool_keys(dir: &Path) -> Vec<PathBuf> {
    files_under(&dir.join("keys/spool"))
}
