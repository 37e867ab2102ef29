//! Live configuration: an edit of the config file (or SIGHUP) changes the next message's
//! verdict without a restart; a broken edit is rejected and the running config kept; SMTP
//! sessions in flight are not dropped.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{message, Env};

const WAIT: Duration = Duration::from_secs(30);

fn ham_like(n: usize) -> Vec<u8> {
    message(
        &format!("customer{n}@example.org"),
        &format!("Invoice question {n}"),
        "",
        "Hello, I have a question about my last invoice. Thanks, Chris",
    )
}

fn quarantined(env: &Env) -> usize {
    env.cli_json(&["quarantine", "list", "--json"])
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0)
}

fn rewrite(path: &PathBuf, text: &str) {
    // Write-then-rename, as editors do.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn config_edit_applies_to_the_next_message_without_restart() {
    let env = Env::new("");
    let original = std::fs::read_to_string(&env.config).unwrap();
    // The server reads its own copy, which the test edits; the CLI keeps the good one.
    let live = env.dir.path().join("live.toml");
    std::fs::write(&live, &original).unwrap();
    let server = env.serve_with(&live);

    // A session opened before the reload...
    let mut early = server.connect();
    early.cmd("EHLO early.example.org");

    let mut c = server.connect();
    c.cmd("EHLO relay.example.org");
    assert_eq!(
        c.send_mail(
            "c1@example.org",
            &["help@support.example.com"],
            &ham_like(1)
        )
        .code,
        250
    );
    env.wait_processed(WAIT);
    assert_eq!(quarantined(&env), 0);
    assert_eq!(env.tickets().len(), 1);

    // Every score is >= 0: with both cutoffs at 0 everything is spam.
    rewrite(
        &live,
        &format!("{original}\n[filter]\nham_cutoff = 0.0\nspam_cutoff = 0.0\n"),
    );
    server.wait_line("config: reloaded", WAIT);
    assert_eq!(
        c.send_mail(
            "c2@example.org",
            &["help@support.example.com"],
            &ham_like(2)
        )
        .code,
        250
    );
    env.wait_processed(WAIT);
    assert_eq!(quarantined(&env), 1, "the next message saw the new cutoffs");
    assert_eq!(env.tickets().len(), 1);

    // ...is still served after it.
    assert_eq!(
        early
            .send_mail(
                "c3@example.org",
                &["help@support.example.com"],
                &ham_like(3)
            )
            .code,
        250
    );

    // A broken edit is rejected and the running config kept.
    rewrite(&live, "[filter]\nham_cutoff = \"high\"\n");
    let line = server.wait_line("config: rejected", WAIT);
    assert!(line.contains("filter.ham_cutoff"), "{line}");
    assert_eq!(
        c.send_mail(
            "c4@example.org",
            &["help@support.example.com"],
            &ham_like(4)
        )
        .code,
        250
    );
    env.wait_processed(WAIT);
    assert_eq!(quarantined(&env), 3, "still the 0/0 cutoffs");

    // Back to the defaults, this time announced by SIGHUP as well.
    rewrite(&live, &original);
    server.wait_line("config: reloaded", WAIT);
    let status = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    server.wait_line("config: reloaded", WAIT);
    assert_eq!(
        c.send_mail(
            "c5@example.org",
            &["help@support.example.com"],
            &ham_like(5)
        )
        .code,
        250
    );
    env.wait_processed(WAIT);
    assert_eq!(quarantined(&env), 3);
    assert_eq!(env.tickets().len(), 2, "back to a ticket");
    assert!(server.terminate());
}

#[test]
fn smtp_limits_reload_for_new_sessions() {
    let env = Env::new("max_message_size = 1048576");
    let original = std::fs::read_to_string(&env.config).unwrap();
    let live = env.dir.path().join("live.toml");
    std::fs::write(&live, &original).unwrap();
    let server = env.serve_with(&live);
    let mut before = server.connect();
    assert!(before
        .cmd("EHLO a.example.org")
        .text()
        .contains("SIZE 1048576"));
    rewrite(
        &live,
        &original.replace("max_message_size = 1048576", "max_message_size = 2048"),
    );
    server.wait_line("config: reloaded", WAIT);
    let mut after = server.connect();
    assert!(after.cmd("EHLO b.example.org").text().contains("SIZE 2048"));
    // The session from before keeps its limits.
    assert!(before
        .cmd("EHLO a.example.org")
        .text()
        .contains("SIZE 1048576"));
}
