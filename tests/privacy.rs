//! Privacy end to end, against the real binary: erasure that reaches the data directory and old
//! backups, export, retention with a clock the test controls (libfaketime), agent deletion.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::Value;

const PERSON: &str = "pat.erasure@example.org";
const SUBJECT_MARK: &str = "SUBJMARK7q2xw";
const BODY_MARK: &str = "BODYMARK9k3vz";
const FILE_MARK: &str = "ATTMARK5w8zq";

/// Attachment bytes: the marker and bytes that appear nowhere else.
fn attachment_bytes() -> Vec<u8> {
    let mut b = format!("%PDF-1.4 {FILE_MARK} ").into_bytes();
    b.extend((0u32..600).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    b
}

/// A message with one base64 attachment.
fn with_attachment(from: &str, subject: &str, body: &str, name: &str, data: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let mut wrapped = String::new();
    for chunk in b64.as_bytes().chunks(76) {
        wrapped.push_str(std::str::from_utf8(chunk).unwrap());
        wrapped.push_str("\r\n");
    }
    format!(
        "From: {from}\r\nTo: help@support.example.com\r\nSubject: {subject}\r\n\
         Date: Mon, 23 Nov 2026 21:50:32 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n\
         --b1\r\nContent-Type: application/pdf; name=\"{name}\"\r\n\
         Content-Disposition: attachment; filename=\"{name}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{wrapped}--b1--\r\n"
    )
    .into_bytes()
}

fn send(server: &Server, from: &str, message: &[u8]) {
    let mut smtp = server.connect();
    smtp.cmd("EHLO client.test");
    let r = smtp.send_mail(from, &["help@support.example.com"], message);
    assert_eq!(r.code, 250, "{}", r.text());
    smtp.cmd("QUIT");
}

/// Every regular file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
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

/// Files under `dirs` that contain any of `needles`, with the needle found.
fn findings(dirs: &[&Path], needles: &[Vec<u8>]) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    for dir in dirs {
        for path in files_under(dir) {
            let bytes = std::fs::read(&path).unwrap();
            for n in needles {
                if bytes.windows(n.len()).any(|w| w == &n[..]) {
                    found.push((path.clone(), String::from_utf8_lossy(n).into_owned()));
                }
            }
        }
    }
    found
}

fn needles() -> Vec<Vec<u8>> {
    let att = attachment_bytes();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&att);
    vec![
        SUBJECT_MARK.as_bytes().to_vec(),
        BODY_MARK.as_bytes().to_vec(),
        FILE_MARK.as_bytes().to_vec(),
        PERSON.as_bytes().to_vec(),
        att[20..80].to_vec(),
        b64.as_bytes()[..60].to_vec(),
    ]
}

fn ids_of(tickets: &[Value]) -> Vec<u64> {
    let mut ids: Vec<u64> = tickets.iter().filter_map(|t| t["id"].as_u64()).collect();
    ids.sort_unstable();
    ids
}

#[test]
fn erasure_reaches_the_data_directory_and_old_backups() {
    // The scan can find what it looks for (so "nothing found" below means something).
    let probe = tempfile::tempdir().unwrap();
    std::fs::write(probe.path().join("f"), attachment_bytes()).unwrap();
    assert_eq!(findings(&[probe.path()], &needles()).len(), 2);

    let env = Env::no_filter("");
    let server = env.serve();
    let data = attachment_bytes();
    send(
        &server,
        PERSON,
        &with_attachment(
            PERSON,
            &format!("Invoice {SUBJECT_MARK}"),
            &format!("Hello, my account {BODY_MARK} is locked."),
            "statement.pdf",
            &data,
        ),
    );
    send(
        &server,
        PERSON,
        &message(PERSON, "Second question", "", &format!("Also {BODY_MARK}.")),
    );
    send(
        &server,
        PERSON,
        &message(
            PERSON,
            "Cheap watches",
            "",
            &format!("spam-ish {BODY_MARK}"),
        ),
    );
    // Other people, one of them with the very same attachment bytes.
    send(
        &server,
        "alice@example.net",
        &message("alice@example.net", "Printer on fire", "", "It is on fire."),
    );
    send(
        &server,
        "bob@example.net",
        &with_attachment(
            "bob@example.net",
            "Same file",
            "Bob forwards the same file.",
            "copy.pdf",
            &data,
        ),
    );
    env.wait_processed(Duration::from_secs(20));
    let before = env.tickets();
    assert_eq!(before.len(), 5);
    // The person's data is there and readable.
    let invoice = ticket_with(&before, SUBJECT_MARK).expect("the person's ticket");
    let invoice_id = invoice["id"].as_u64().unwrap();
    let shown = env.cli_json(&["tickets", "show", &invoice_id.to_string(), "--json"]);
    assert!(shown.to_string().contains(BODY_MARK));
    // One of their messages goes to the quarantine (an agent marks it spam).
    mark_spam(&env, ticket_id(&env, "Cheap watches"));
    let others_before: Vec<Value> = env
        .tickets()
        .into_iter()
        .filter(|t| t["requester"] != PERSON)
        .collect();
    assert_eq!(others_before.len(), 2);

    // A backup while serving.
    let backup = env.dir.path().join("backup");
    let out = env.cli(&["backup", "--out", backup.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Dry run, then the real erasure; the dry run lists what goes.
    let dry = env.cli_json(&["privacy", "erase", "--email", PERSON, "--dry-run", "--json"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["tickets"].as_array().unwrap().len(), 2);
    assert_eq!(dry["quarantined"], 1);
    assert_eq!(env.tickets().len(), 4, "the dry run changed nothing");
    let done = env.cli_json(&["privacy", "erase", "--email", PERSON, "--json"]);
    assert_eq!(done["tickets"], dry["tickets"]);
    assert_eq!(done["messages"], dry["messages"]);
    assert_eq!(done["attachments"], dry["attachments"]);
    assert_eq!(done["key_destroyed"], true);

    // Everyone else is intact; the person is gone.
    let after = env.tickets();
    assert_eq!(after, others_before);
    assert!(env
        .cli_json(&["quarantine", "list", "--json"])
        .as_array()
        .unwrap()
        .is_empty());
    let bob = ticket_with(&after, "Same file").unwrap()["id"]
        .as_u64()
        .unwrap();
    let bob = env.cli_json(&["tickets", "show", &bob.to_string(), "--json"]);
    assert_eq!(bob["thread"][0]["attachments"][0]["size"], data.len());
    let out = env.cli(&[
        "privacy",
        "export",
        "--email",
        PERSON,
        "--out",
        "/nonexistent/x",
    ]);
    assert!(!out.status.success());
    // The audit record names the action and counts, not the person.
    let audit = env.cli_json(&["privacy", "audit", "--json"]);
    let text = audit.to_string();
    assert!(
        text.contains("\"erase\"") && !text.contains("pat.erasure"),
        "{text}"
    );

    // No file of the data directory or of the backup holds the markers, the address or the
    // attachment (raw or base64).
    let found = findings(&[&env.data(), &backup], &needles());
    assert!(found.is_empty(), "{found:?}");
    assert!(server.terminate());

    // Restoring the old backup does not bring the person back.
    let out = env.cli(&["restore", backup.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(report.contains("1 people erased"), "{report}");
    let restored = env.tickets();
    assert_eq!(ids_of(&restored), ids_of(&others_before));
    assert!(restored
        .iter()
        .all(|t| t["requester"] != PERSON && t["requester"] != "[erased]"));
    let out = env.cli(&["tickets", "show", &invoice_id.to_string()]);
    assert!(!out.status.success());
    let found = findings(&[&env.data(), &backup], &needles());
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn export_holds_every_ticket_message_and_attachment_of_the_person_only() {
    let env = Env::no_filter("");
    let server = env.serve();
    let data = attachment_bytes();
    send(
        &server,
        PERSON,
        &with_attachment(PERSON, "First", BODY_MARK, "statement.pdf", &data),
    );
    send(
        &server,
        PERSON,
        &message(PERSON, "Second", "", "second body"),
    );
    send(
        &server,
        "quinn@example.net",
        &with_attachment(
            "quinn@example.net",
            "Quinn's",
            "QUINNMARK private",
            "quinn.pdf",
            b"QUINN-ONLY-BYTES",
        ),
    );
    env.wait_processed(Duration::from_secs(20));
    let out_path = env.dir.path().join("pat.tar.gz");
    let out = env.cli(&[
        "privacy",
        "export",
        "--email",
        PERSON,
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the archive is private");

    let bytes = std::fs::read(&out_path).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut files = std::collections::BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        files.insert(path, content);
    }
    let person: Value = serde_json::from_slice(&files["person.json"]).unwrap();
    assert_eq!(person["contact"]["address"], PERSON);
    let subjects: Vec<&str> = person["tickets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert!(subjects.contains(&"First") && subjects.contains(&"Second"));
    let emls: Vec<&Vec<u8>> = files
        .iter()
        .filter(|(p, _)| p.ends_with(".eml"))
        .map(|(_, b)| b)
        .collect();
    assert_eq!(emls.len(), 2);
    assert!(emls
        .iter()
        .any(|b| String::from_utf8_lossy(b).contains(BODY_MARK)));
    let pdf = files
        .iter()
        .find(|(p, _)| p.starts_with("attachments/") && p.ends_with("/statement.pdf"))
        .expect("the attachment");
    assert_eq!(pdf.1, &data);
    // Nothing of anyone else.
    for (path, content) in &files {
        let text = String::from_utf8_lossy(content);
        assert!(
            !text.contains("quinn") && !text.contains("QUINN"),
            "{path} holds someone else's data"
        );
    }
    assert!(server.terminate());
}

/// Ticket number of the ticket whose subject contains `needle`.
fn ticket_id(env: &Env, needle: &str) -> u64 {
    ticket_with(&env.tickets(), needle).unwrap()["id"]
        .as_u64()
        .unwrap()
}

/// An agent marks the first message of `ticket` spam (it moves to the quarantine); its id.
fn mark_spam(env: &Env, ticket: u64) -> u64 {
    let shown = env.cli_json(&["tickets", "show", &ticket.to_string(), "--json"]);
    let message = shown["thread"][0]["id"].as_u64().unwrap();
    let out = env.cli(&["feedback", &message.to_string(), "spam"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    message
}

/// Three tickets from `TAG@example.net`: "TAG closed" (closed), "TAG open", and "TAG spam"
/// (its message marked spam). Returns the closed and open tickets and the quarantined message.
fn closed_open_and_spam(env: &Env, server: &Server, tag: &str) -> (u64, u64, u64) {
    let from = format!("{tag}@example.net");
    for kind in ["closed", "open", "spam"] {
        send(
            server,
            &from,
            &message(&from, &format!("{tag} {kind}"), "", "x"),
        );
    }
    env.wait_processed(Duration::from_secs(20));
    let closed = ticket_id(env, &format!("{tag} closed"));
    let out = env.cli(&["tickets", "close", &closed.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let open = ticket_id(env, &format!("{tag} open"));
    let spam = mark_spam(env, ticket_id(env, &format!("{tag} spam")));
    (closed, open, spam)
}

/// Wait until `check` holds, or panic after `limit`.
fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn retention_deletes_old_data_and_keeps_recent_data() {
    let retention = "[retention]\nquarantine_days = 30\nclosed_ticket_days = 90\naudit_days = 0\nsweep_minutes = 600\n";
    let env = Env::with_config("", "", &format!("[filter]\nenabled = false\n\n{retention}"));
    // 400 days ago (the server's wall clock shifted by libfaketime).
    let old = Server::start_shifted(&env.config, "-400d");
    let (old_closed, old_open, old_spam_msg) = closed_open_and_spam(&env, &old, "old");
    assert!(old.terminate());
    // Today.
    let server = env.serve();
    let (new_closed, new_open, new_spam_msg) = closed_open_and_spam(&env, &server, "new");

    let dry = env.cli_json(&["privacy", "retention", "--dry-run", "--json"]);
    assert_eq!(dry["closed_tickets"], serde_json::json!([old_closed]));
    assert_eq!(dry["quarantine"], serde_json::json!([old_spam_msg]));
    assert_eq!(env.tickets().len(), 4, "the dry run changed nothing");

    // The background sweeper applies the rules (at once after a config reload).
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        text.replace("sweep_minutes = 600", "sweep_minutes = 601"),
    )
    .unwrap();
    server.wait_line("config: reloaded", Duration::from_secs(10));
    wait_until(Duration::from_secs(20), "the retention sweep", || {
        env.cli_json(&["privacy", "audit", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "retention" && a["actor"] == "system")
    });
    let audit = env.cli_json(&["privacy", "audit", "--json"]);
    let record = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "retention")
        .unwrap()
        .clone();
    assert_eq!(record["counts"]["closed_tickets"], 1);
    assert_eq!(record["counts"]["quarantine"], 1);
    // Exactly what the dry run listed went; the rest stayed.
    let left = ids_of(&env.tickets());
    assert_eq!(left, {
        let mut v = vec![old_open, new_closed, new_open];
        v.sort_unstable();
        v
    });
    let quarantine = env.cli_json(&["quarantine", "list", "--json"]);
    let q: Vec<u64> = quarantine
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(q, vec![new_spam_msg]);
    // Nothing more is old enough now.
    let again = env.cli_json(&["privacy", "retention", "--dry-run", "--json"]);
    assert!(again["closed_tickets"].as_array().unwrap().is_empty());
    assert!(again["quarantine"].as_array().unwrap().is_empty());
    assert!(server.terminate());
}

#[test]
fn a_deleted_agent_leaves_only_an_anonymous_id() {
    let env = Env::no_filter("");
    let server = env.serve();
    let (_, secret) = env.token("Robin Agent", "agent", None);
    let api = server.api();
    assert_eq!(api.get("/v1/tickets", Some(&secret)).status, 200);
    send(
        &server,
        "c@example.net",
        &message("c@example.net", "help", "", "z"),
    );
    env.wait_processed(Duration::from_secs(20));
    let out = env.cli(&["agent", "delete", "Robin Agent"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(api.get("/v1/tickets", Some(&secret)).status, 401);
    let tokens = env.cli_json(&["token", "list", "--json"]);
    let text = tokens.to_string();
    assert!(!text.contains("Robin"), "{text}");
    assert!(tokens[0]["name"].as_str().unwrap().starts_with("agent-"));
    assert_eq!(tokens[0]["revoked"], true);
    let out = env.cli(&["agent", "delete", "Robin Agent"]);
    assert!(!out.status.success());
    // The name is in no file of the data directory.
    let found = findings(&[&env.data()], &[b"Robin Agent".to_vec()]);
    assert!(found.is_empty(), "{found:?}");
    assert!(server.terminate());
}
