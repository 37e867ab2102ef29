//! The command line: ingest (files, directories, maildirs, mboxes) with and without a running
//! server, config check, help.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{bin, message, ticket_with, Env};

fn write(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ingest_file_maildir_and_mbox_without_a_server() {
    let env = Env::no_filter("");
    let root = env.dir.path().join("input");
    // One .eml with a leading mbox "From " line.
    let mut eml = b"From alice@example.org Mon Nov 23 10:00:00 2026\n".to_vec();
    eml.extend_from_slice(&message("alice@example.org", "From a file", "", "one"));
    write(&root.join("one.eml"), &eml);
    // A maildir.
    write(
        &root.join("maildir/new/1.host"),
        &message("bob@example.org", "From a maildir", "", "two"),
    );
    write(
        &root.join("maildir/cur/2.host:2,S"),
        &message("carol@example.org", "Seen in a maildir", "", "three"),
    );
    std::fs::create_dir_all(root.join("maildir/tmp")).unwrap();
    // An mbox with two messages, one body line escaped as ">From ".
    let mut mbox = Vec::new();
    for (who, subject) in [
        ("dan@example.org", "Mbox one"),
        ("eve@example.org", "Mbox two"),
    ] {
        mbox.extend_from_slice(format!("From {who} Mon Nov 23 10:00:00 2026\n").as_bytes());
        let m = message(who, subject, "", "hello\n>From the start of a line");
        mbox.extend_from_slice(
            &String::from_utf8_lossy(&m)
                .replace("\r\n", "\n")
                .into_bytes(),
        );
        mbox.push(b'\n');
    }
    write(&root.join("archive.mbox"), &mbox);

    let out = env.cli(&[
        "ingest",
        root.join("one.eml").to_str().unwrap(),
        root.join("maildir").to_str().unwrap(),
        root.join("archive.mbox").to_str().unwrap(),
    ]);
    let stdout = ok(&out);
    assert!(stdout.contains("spooled 5 message(s)"), "{stdout}");

    let tickets = env.tickets();
    assert_eq!(tickets.len(), 5, "{tickets:?}");
    for subject in [
        "From a file",
        "From a maildir",
        "Seen in a maildir",
        "Mbox one",
        "Mbox two",
    ] {
        assert!(
            ticket_with(&tickets, subject).is_some(),
            "{subject}: {tickets:?}"
        );
    }
    let mbox_ticket = ticket_with(&tickets, "Mbox two").unwrap();
    let id = mbox_ticket["id"].as_u64().unwrap().to_string();
    let detail = env.cli_json(&["tickets", "show", &id, "--json"]);
    let text = detail["thread"][0]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("\nFrom the start of a line"),
        "mboxrd un-escaped: {text:?}"
    );

    let human = env.cli(&["tickets", "list"]);
    assert!(ok(&human).contains("Mbox one"));
}

#[test]
fn ingest_hands_messages_to_a_running_server() {
    let env = Env::no_filter("");
    let server = env.serve();
    let dir = env.dir.path().join("in");
    for i in 0..3 {
        write(
            &dir.join(format!("{i}.eml")),
            &message(
                &format!("user{i}@example.org"),
                &format!("Via the server {i}"),
                "",
                "x",
            ),
        );
    }
    let out = env.cli(&["ingest", dir.to_str().unwrap()]);
    let stdout = ok(&out);
    assert!(stdout.contains("running server"), "{stdout}");
    env.wait_processed(Duration::from_secs(30));
    let tickets = env.tickets();
    assert_eq!(tickets.len(), 3, "{tickets:?}");
    assert!(server.terminate());
}

#[test]
fn ingest_reports_unreadable_inputs_and_exits_nonzero() {
    let env = Env::no_filter("");
    let out = env.cli(&["ingest", "/nonexistent/path/for/mailroom"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/path/for/mailroom"),
        "{stderr}"
    );
}

#[test]
fn config_check_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[smtp]\ndomains = [\"support.example.com\"]\n").unwrap();
    let out = Command::new(bin())
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(ok(&out).contains(": ok"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[store]\npath = \"data\"\n\n[smtp]\nmax_message_size = 0\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:5:"), "{err}");
    assert!(err.contains("smtp.max_message_size"), "{err}");

    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "[smtp]\nmax_mesage_size = 10\n").unwrap();
    let out = Command::new(bin())
        .args(["config", "check"])
        .arg(&unknown)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":2:"), "{err}");
    assert!(err.contains("max_mesage_size"), "{err}");

    // The shipped example is valid.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/mailroom.example.toml");
    let out = Command::new(bin())
        .args(["config", "check", example])
        .output()
        .unwrap();
    ok(&out);

    // serve refuses a bad config with the same message.
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("smtp.max_message_size"));
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["ingest", "--help"],
        vec!["tickets", "--help"],
        vec!["tickets", "list", "--help"],
        vec!["tickets", "show", "--help"],
        vec!["failed", "--help"],
        vec!["failed", "list", "--help"],
        vec!["failed", "retry", "--help"],
        vec!["messages", "raw", "--help"],
        vec!["orphans", "--help"],
        vec!["stats", "--help"],
        vec!["config", "check", "--help"],
    ] {
        let out = Command::new(bin()).args(&args).output().unwrap();
        let text = ok(&out);
        assert!(text.contains("Usage:"), "{args:?}: {text}");
    }
}

#[test]
fn commands_work_on_a_fresh_data_dir_without_a_server() {
    let env = Env::no_filter("");
    assert!(env.tickets().is_empty());
    let failed = env.cli_json(&["failed", "list", "--json"]);
    assert_eq!(failed, serde_json::json!([]));
    let out = env.cli(&["tickets", "show", "42"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no ticket #42"));
}
