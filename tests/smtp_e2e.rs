//! End to end: the real binary, real sockets, real clients (raw SMTP, lettre, swaks).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{message, require_tool, ticket_with, Env};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn plain_message_becomes_a_ticket_with_received_header() {
    let env = Env::no_filter("");
    let server = env.serve();
    let mut c = server.connect();
    assert_eq!(c.cmd("EHLO client.example.org").code, 250);
    let r = c.send_mail(
        "alice@example.org",
        &["help@support.example.com"],
        &message(
            "Alice <alice@example.org>",
            "Printer on fire",
            "Message-ID: <p1@example.org>",
            "It is on fire.\r\n.A line that starts with a dot.",
        ),
    );
    assert_eq!(r.code, 250, "{r:?}");
    assert!(r.text().contains("2.0.0"), "{r:?}");
    assert_eq!(c.cmd("QUIT").code, 221);

    env.wait_processed(WAIT);
    let tickets = env.tickets();
    assert_eq!(tickets.len(), 1, "{tickets:?}");
    let t = &tickets[0];
    assert_eq!(t["subject"], "Printer on fire");
    assert_eq!(t["requester"], "alice@example.org");
    assert_eq!(t["messages"], 1);
    assert_eq!(t["attachments"], 0);
    assert!(t["id"].as_u64().is_some() && t["created_at"].as_u64().is_some());

    let id = t["id"].as_u64().unwrap().to_string();
    let detail = env.cli_json(&["tickets", "show", &id, "--json"]);
    let text = detail["thread"][0]["text"].as_str().unwrap_or_default();
    assert!(text.contains("It is on fire."), "{detail}");
    assert!(
        text.contains("\n.A line that starts with a dot."),
        "dot-unstuffing: {text:?}"
    );

    // The stored raw message starts with our Received: header, then the bytes as sent.
    let mid = detail["thread"][0]["id"]
        .as_u64()
        .expect("message id")
        .to_string();
    let raw = env.cli(&["messages", "raw", &mid]);
    assert!(raw.status.success());
    let raw = String::from_utf8_lossy(&raw.stdout);
    assert!(
        raw.starts_with("Received: from client.example.org"),
        "{raw}"
    );
    assert!(raw.contains("by mx.test"), "{raw}");
    assert!(raw.contains("From: Alice <alice@example.org>\r\n"), "{raw}");
    let human = env.cli(&["tickets", "show", &id]);
    assert!(human.status.success());
    assert!(String::from_utf8_lossy(&human.stdout).contains("Printer on fire"));
    assert!(server.terminate(), "graceful shutdown exits 0");
}

#[test]
fn foreign_recipient_is_refused_and_nothing_stored() {
    let env = Env::no_filter("");
    let server = env.serve();
    let mut c = server.connect();
    c.cmd("EHLO client.example.org");
    assert_eq!(c.cmd("MAIL FROM:<mallory@example.org>").code, 250);
    let r = c.cmd("RCPT TO:<victim@elsewhere.example.net>");
    assert_eq!(r.code, 550, "{r:?}");
    assert!(r.text().contains("5.1.1"), "{r:?}");
    let r = c.cmd("DATA");
    assert_eq!(r.code, 503, "DATA without an accepted recipient: {r:?}");
    drop(c);
    let stats = env.wait_processed(WAIT);
    assert_eq!(stats["messages"], 0);
}

#[test]
fn too_large_is_refused_at_mail_and_at_data_and_nothing_stored() {
    let env = Env::no_filter("max_message_size = 65536");
    let server = env.serve();
    let mut c = server.connect();
    let ehlo = c.cmd("EHLO client.example.org");
    assert!(ehlo.text().contains("SIZE 65536"), "{ehlo:?}");
    let r = c.cmd("MAIL FROM:<big@example.org> SIZE=1000000");
    assert_eq!(r.code, 552, "{r:?}");
    assert!(r.text().contains("5.3.4"), "{r:?}");

    // Lying about the size does not help: the data itself is measured.
    let body = "0123456789abcdef".repeat(64 * 100);
    let r = c.send_mail(
        "big@example.org",
        &["help@support.example.com"],
        &message("big@example.org", "Huge", "", &body),
    );
    assert_eq!(r.code, 552, "{r:?}");
    assert!(r.text().contains("5.3.4"), "{r:?}");
    // The session is still usable afterwards.
    assert_eq!(c.cmd("NOOP").code, 250);
    drop(c);
    let stats = env.wait_processed(WAIT);
    assert_eq!(stats["messages"], 0, "{stats}");
    assert!(env.tickets().is_empty());
}

#[test]
fn pipelining_8bitmime_and_smtputf8() {
    let env = Env::no_filter("");
    let server = env.serve();
    let mut c = server.connect();
    let ehlo = c.cmd("EHLO client.example.org");
    for ext in [
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
    ] {
        assert!(ehlo.text().contains(ext), "{ext} missing: {ehlo:?}");
    }
    assert!(
        !ehlo.text().contains("STARTTLS"),
        "no STARTTLS without a certificate"
    );

    // Everything in one write: the server answers each command in order.
    let body = message(
        "José Núñez <josé@exämple.org>",
        "Über café ☕",
        "",
        "Grüße aus Köln — 8-bit body.",
    );
    let mut batch = Vec::new();
    batch.extend_from_slice(
        b"MAIL FROM:<jos\xc3\xa9@ex\xc3\xa4mple.org> BODY=8BITMIME SMTPUTF8\r\n",
    );
    batch.extend_from_slice(b"RCPT TO:<help@support.example.com>\r\n");
    batch.extend_from_slice(b"RCPT TO:<nobody@elsewhere.example.net>\r\n");
    batch.extend_from_slice(b"DATA\r\n");
    c.send_raw(&batch);
    assert_eq!(c.reply().code, 250);
    assert_eq!(c.reply().code, 250);
    assert_eq!(c.reply().code, 550);
    assert_eq!(c.reply().code, 354);
    c.send_raw(&common::dot_stuff(&body));
    c.send_raw(b".\r\nQUIT\r\n");
    let r = c.reply();
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(c.reply().code, 221);

    env.wait_processed(WAIT);
    let tickets = env.tickets();
    let t = ticket_with(&tickets, "café").expect("ticket");
    assert_eq!(t["requester"], "josé@exämple.org");
    assert_eq!(t["subject"], "Über café ☕");
    let id = t["id"].as_u64().unwrap().to_string();
    let detail = env.cli_json(&["tickets", "show", &id, "--json"]);
    assert!(detail["thread"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .contains("Grüße aus Köln"));
}

#[test]
fn utf8_address_without_smtputf8_is_refused() {
    let env = Env::no_filter("");
    let server = env.serve();
    let mut c = server.connect();
    c.cmd("EHLO client.example.org");
    c.send_raw(b"MAIL FROM:<jos\xc3\xa9@example.org>\r\n");
    let r = c.reply();
    assert_eq!(r.code / 100, 5, "{r:?}");
}

#[test]
fn bdat_chunking() {
    let env = Env::no_filter("");
    let server = env.serve();
    let mut c = server.connect();
    c.cmd("EHLO client.example.org");
    assert_eq!(c.cmd("MAIL FROM:<chunky@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<help@support.example.com>").code, 250);
    let msg = message("chunky@example.org", "In chunks", "", "first\r\nsecond");
    let (a, b) = msg.split_at(msg.len() / 2);
    c.send_raw(format!("BDAT {}\r\n", a.len()).as_bytes());
    c.send_raw(a);
    assert_eq!(c.reply().code, 250);
    c.send_raw(format!("BDAT {} LAST\r\n", b.len()).as_bytes());
    c.send_raw(b);
    let r = c.reply();
    assert_eq!(r.code, 250, "{r:?}");
    env.wait_processed(WAIT);
    let tickets = env.tickets();
    assert!(ticket_with(&tickets, "In chunks").is_some(), "{tickets:?}");
}

#[test]
fn bare_lf_dot_does_not_end_data() {
    let env = Env::no_filter("");
    let server = env.serve();
    let mut c = server.connect();
    c.cmd("EHLO client.example.org");
    assert_eq!(c.cmd("MAIL FROM:<smuggler@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<help@support.example.com>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    // A smuggling attempt: "\n.\n" followed by a second transaction. It must stay data.
    let mut data = message("smuggler@example.org", "Outer", "", "hello").to_vec();
    data.extend_from_slice(
        b"\n.\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<help@support.example.com>\r\nDATA\r\nSubject: Smuggled\r\n\r\nx\r\n",
    );
    c.send_raw(&data);
    c.send_raw(b".\r\n");
    let r = c.reply();
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(c.cmd("QUIT").code, 221);
    env.wait_processed(WAIT);
    let tickets = env.tickets();
    assert_eq!(
        tickets.len(),
        1,
        "one message, nothing smuggled: {tickets:?}"
    );
    assert!(ticket_with(&tickets, "Smuggled").is_none());
}

#[test]
fn swaks_with_pipelining_and_attachments() {
    require_tool("swaks");
    let env = Env::no_filter("");
    let server = env.serve();
    let dir = env.dir.path();
    let a = dir.join("report.pdf");
    std::fs::write(&a, b"%PDF-1.4 not really a pdf, but bytes\n").unwrap();
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port"])
        .arg(server.smtp.port().to_string())
        .args([
            "--pipeline",
            "--from",
            "bob@example.org",
            "--to",
            "help@support.example.com",
            "--header",
            "Subject: Swaks with attachment",
            "--body",
            "see attached",
            "--attach",
        ])
        .arg(format!("@{}", a.display()))
        .output()
        .expect("run swaks");
    assert!(
        out.status.success(),
        "swaks failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(transcript.contains("250"), "{transcript}");
    env.wait_processed(WAIT);
    let tickets = env.tickets();
    let t = ticket_with(&tickets, "Swaks with attachment").expect("ticket");
    assert_eq!(t["attachments"], 1, "{t}");
    assert_eq!(t["requester"], "bob@example.org");
}

#[test]
fn nested_multipart_attachments_are_stored_once_and_tagged() {
    let env = Env::no_filter("");
    let server = env.serve();
    let raw = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/corpus/samples/nested-attachments.eml"
    ))
    .expect("sample");
    let mut c = server.connect();
    c.cmd("EHLO client.example.org");
    let r = c.send_mail("carol@example.org", &["help@support.example.com"], &raw);
    assert_eq!(r.code, 250, "{r:?}");
    env.wait_processed(WAIT);
    let tickets = env.tickets();
    assert_eq!(tickets.len(), 1);
    let t = &tickets[0];
    let id = t["id"].as_u64().unwrap();
    let detail = env.cli_json(&["tickets", "show", &id.to_string(), "--json"]);
    let atts = detail["thread"][0]["attachments"]
        .as_array()
        .expect("attachments")
        .clone();
    assert!(atts.len() >= 3, "{detail}");
    let mut hashes: Vec<&str> = atts.iter().filter_map(|a| a["sha256"].as_str()).collect();
    let all = hashes.len();
    hashes.sort();
    hashes.dedup();
    assert!(hashes.len() < all, "one attachment appears twice: {atts:?}");
    for a in &atts {
        assert_eq!(a["tags"]["ticket"].as_u64(), Some(id), "{a}");
        assert!(a["tags"]["contact"].as_u64().is_some(), "{a}");
        assert!(a["tags"]["message"].as_u64().is_some(), "{a}");
        assert!(a["tags"]["retention_class"].as_str().is_some(), "{a}");
        assert!(a["tags"]["created_at"].as_u64().is_some(), "{a}");
    }
    let stats = env.stats();
    assert_eq!(
        stats["blobs"].as_u64(),
        Some(hashes.len() as u64),
        "stored once per owner and content: {stats}"
    );
}

#[test]
fn replies_thread_auto_replies_and_bounces_make_no_new_ticket() {
    let env = Env::no_filter("");
    let server = env.serve();
    let mut c = server.connect();
    c.cmd("EHLO client.example.org");
    let first = message(
        "Dana <dana@example.org>",
        "VPN broken",
        "Message-ID: <vpn-1@example.org>",
        "The VPN drops every minute.",
    );
    assert_eq!(
        c.send_mail("dana@example.org", &["help@support.example.com"], &first)
            .code,
        250
    );
    env.wait_processed(WAIT);
    let tickets = env.tickets();
    assert_eq!(tickets.len(), 1);
    let id = tickets[0]["id"].as_u64().unwrap();

    // A reply by In-Reply-To.
    let reply = message(
        "Dana <dana@example.org>",
        "Re: VPN broken",
        "Message-ID: <vpn-2@example.org>\nIn-Reply-To: <vpn-1@example.org>\nReferences: <vpn-1@example.org>",
        "Still broken.",
    );
    assert_eq!(
        c.send_mail("dana@example.org", &["help@support.example.com"], &reply)
            .code,
        250
    );
    // A reply by subject tag only.
    let tagged = message(
        "dana@example.org",
        &format!("Re: [#{id}] VPN broken"),
        "Message-ID: <vpn-3@example.org>",
        "And now?",
    );
    assert_eq!(
        c.send_mail("dana@example.org", &["help@support.example.com"], &tagged)
            .code,
        250
    );
    // An auto-reply that threads.
    let auto = message(
        "dana@example.org",
        "Automatic reply: VPN broken",
        "Auto-Submitted: auto-replied\nIn-Reply-To: <vpn-2@example.org>\nMessage-ID: <ooo-1@example.org>",
        "I am out of the office.",
    );
    assert_eq!(
        c.send_mail("dana@example.org", &["help@support.example.com"], &auto)
            .code,
        250
    );
    // An auto-reply that threads nowhere: kept, no ticket.
    let stray = message(
        "erin@example.org",
        "Out of office",
        "Auto-Submitted: auto-replied\nMessage-ID: <ooo-2@example.org>",
        "Away until Monday.",
    );
    assert_eq!(
        c.send_mail("erin@example.org", &["help@support.example.com"], &stray)
            .code,
        250
    );
    // A bounce (DSN) of Dana's first message, from the null sender.
    let bounce = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/corpus/samples/bounce-of-vpn-1.eml"
    ))
    .expect("sample");
    assert_eq!(
        c.send_mail("", &["help@support.example.com"], &bounce).code,
        250
    );
    // Someone else claiming the ticket by tag: not added to it.
    let stranger = message(
        "mallory@example.net",
        &format!("Re: [#{id}] VPN broken"),
        "Message-ID: <evil-1@example.net>",
        "Let me in.",
    );
    assert_eq!(
        c.send_mail(
            "mallory@example.net",
            &["help@support.example.com"],
            &stranger
        )
        .code,
        250
    );
    env.wait_processed(WAIT);

    let tickets = env.tickets();
    assert_eq!(
        tickets.len(),
        2,
        "only the stranger's claim opened one: {tickets:?}"
    );
    let detail = env.cli_json(&["tickets", "show", &id.to_string(), "--json"]);
    let thread = detail["thread"].as_array().expect("thread");
    assert_eq!(
        thread.len(),
        5,
        "first, reply, tagged, auto-reply, bounce: {detail}"
    );
    let flags: Vec<String> = thread
        .iter()
        .flat_map(|m| m["flags"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f["kind"].as_str().map(str::to_string))
        .collect();
    assert!(flags.contains(&"auto_reply".to_string()), "{flags:?}");
    assert!(flags.contains(&"bounce".to_string()), "{flags:?}");

    let stranger_ticket = tickets
        .iter()
        .find(|t| t["requester"] == "mallory@example.net")
        .expect("stranger's ticket");
    assert_eq!(stranger_ticket["flagged"], true);
    let orphans = env.cli_json(&["orphans", "--json"]);
    assert_eq!(orphans.as_array().map(|a| a.len()), Some(1), "{orphans}");
}

#[test]
fn broken_mime_is_kept_and_garbage_goes_to_the_failed_list() {
    let env = Env::no_filter("");
    let server = env.serve();
    let mut c = server.connect();
    c.cmd("EHLO client.example.org");
    let broken = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/corpus/samples/broken-mime.eml"
    ))
    .expect("sample");
    assert_eq!(
        c.send_mail("frank@example.org", &["help@support.example.com"], &broken)
            .code,
        250
    );
    // No header section and no sender anywhere: accepted (it is durable now), then reported.
    assert_eq!(
        c.send_mail(
            "",
            &["help@support.example.com"],
            b"\x00\x01 garbage without headers"
        )
        .code,
        250
    );
    env.wait_processed(WAIT);
    let tickets = env.tickets();
    assert_eq!(tickets.len(), 1, "{tickets:?}");
    let t = &tickets[0];
    assert_eq!(t["flagged"], true, "parse warnings flag the ticket: {t}");
    let failed = env.cli_json(&["failed", "list", "--json"]);
    let failed = failed.as_array().expect("array");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(!failed[0]["reason"].as_str().unwrap_or_default().is_empty());

    // Retrying keeps it in the failed list (it is still garbage), with no duplicate.
    let out = env.cli(&["failed", "retry", "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.wait_processed(WAIT);
    let failed = env.cli_json(&["failed", "list", "--json"]);
    assert_eq!(failed.as_array().map(|a| a.len()), Some(1), "{failed}");
}

#[test]
fn lettre_client_and_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path, _) = common::write_cert(dir.path(), 0o600);
    let env = Env::no_filter(&common::tls_lines(&cert_path, &key_path));
    let server = env.serve();

    let mut c = server.connect();
    let ehlo = c.cmd("EHLO client.example.org");
    assert!(ehlo.text().contains("STARTTLS"), "{ehlo:?}");
    drop(c);

    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use lettre::transport::smtp::client::{Tls, TlsParameters};
        use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
        let tls = TlsParameters::builder("mx.test".to_string())
            .dangerous_accept_invalid_certs(true)
            .build_rustls()
            .expect("tls parameters");
        let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(server.smtp.port())
            .tls(Tls::Required(tls))
            .build();
        let email = Message::builder()
            .from("Grace <grace@example.org>".parse().unwrap())
            .to("help@support.example.com".parse().unwrap())
            .subject("Sent over STARTTLS")
            .body("encrypted in transit".to_string())
            .unwrap();
        let response = mailer.send(email).await.expect("send over STARTTLS");
        assert!(response.is_positive());
    });
    env.wait_processed(WAIT);
    let tickets = env.tickets();
    let t = ticket_with(&tickets, "Sent over STARTTLS").expect("ticket");
    assert_eq!(t["requester"], "grace@example.org");
}

#[test]
fn connection_limit_answers_421() {
    let env = Env::no_filter("max_connections = 2");
    let server = env.serve();
    let _a = server.connect();
    let _b = server.connect();
    let mut third = std::net::TcpStream::connect(server.smtp).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = String::new();
    use std::io::Read;
    let _ = third.read_to_string(&mut buf);
    assert!(buf.starts_with("421"), "{buf:?}");
    assert!(buf.contains("4.3.2"), "{buf:?}");
}

#[test]
fn idle_session_times_out_with_421() {
    let env = Env::no_filter("idle_timeout_secs = 1");
    let server = env.serve();
    let mut c = server.connect();
    let rest = c.read_to_close();
    assert!(rest.starts_with("421"), "{rest:?}");
}
