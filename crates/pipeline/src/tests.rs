//! Tests: analysis on hand-written samples and the SpamAssassin corpus, sources, and (in
//! `store`) threading and processing against a real store.

use std::path::PathBuf;

use mailroom_spool::{Envelope, Source, SpoolId};
use mailroom_store::{MessageFlag, SpoolEntry, TicketId};

use crate::{analyze, Analysis, Limits, Rejection};

/// A raw message starting with this makes `analyze` panic (tests only), to check that a
/// parser panic is caught.
pub(crate) const PANIC_MARKER: &[u8] = b"X-Pipeline-Test-Panic: yes\r\n";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sample(name: &str) -> Vec<u8> {
    let path = repo().join("corpus/samples").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn envelope(source: Source, mail_from: &str) -> Envelope {
    Envelope {
        source,
        mail_from: mail_from.to_string(),
        rcpt_to: vec!["help@example.net".to_string()],
        peer: "192.0.2.1:25".to_string(),
        helo: "client.example.com".to_string(),
        received_at: 1_741_000_000,
        tls: false,
    }
}

fn entry_from(raw: Vec<u8>, mail_from: &str) -> SpoolEntry {
    SpoolEntry {
        id: SpoolId(1),
        envelope: envelope(Source::Smtp, mail_from),
        raw,
    }
}

fn analyze_raw(raw: &[u8]) -> Analysis {
    analyze(
        &entry_from(raw.to_vec(), "sender@example.com"),
        &Limits::default(),
    )
    .expect("analyzes")
}

fn analyze_sample(name: &str) -> Analysis {
    analyze(
        &entry_from(sample(name), "sender@example.com"),
        &Limits::default(),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn warnings(a: &Analysis) -> Vec<String> {
    a.warnings().map(str::to_string).collect()
}

#[test]
fn limits_default() {
    let l = Limits::default();
    assert_eq!(
        (l.max_mime_parts, l.max_header_fields, l.max_nesting_depth),
        (1000, 1000, 20)
    );
    assert_eq!(l.max_message_size, 25 * 1024 * 1024);
}

#[test]
fn nested_multipart_with_attachments() {
    let a = analyze_sample("nested-attachments.eml");
    assert_eq!(a.from.address, "carol@example.org");
    assert_eq!(a.from.name.as_deref(), Some("Carol Example"));
    assert_eq!(a.subject, "Invoices and the forwarded order");
    assert_eq!(a.message_id.as_deref(), Some("nested-1@example.org"));
    assert!(a.date.is_some());
    assert!(a
        .text
        .as_deref()
        .unwrap()
        .contains("please find the invoice attached"));
    assert!(a.html.as_deref().unwrap().contains("<b>invoice</b>"));
    assert!(a.flags.is_empty(), "{:?}", a.flags);

    let names: Vec<_> = a
        .attachments
        .iter()
        .map(|x| {
            (
                x.filename.as_deref().unwrap_or("-"),
                x.content_type.as_str(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("invoice.pdf", "application/pdf"),
            ("logo.png", "image/png"),
            ("invoice-copy.pdf", "application/pdf"),
            ("order.eml", "message/rfc822"),
            ("items.csv", "text/csv"),
        ]
    );
    // The same file attached twice: same bytes (the store keeps one blob).
    assert_eq!(a.attachments[0].data, a.attachments[2].data);
    assert!(a.attachments[0].data.starts_with(b"%PDF-1.4"));
    assert!(a.attachments[1].data.starts_with(b"\x89PNG"));
    // The attached message is kept whole, headers and body.
    let eml = String::from_utf8_lossy(&a.attachments[3].data).into_owned();
    assert!(eml.starts_with("From: Shop <orders@example.com>"), "{eml}");
    assert!(eml.contains("Thank you for your order."));
    assert!(eml.contains("--inner-boundary--"));
    assert!(!eml.contains("--outer-boundary"));
    assert_eq!(a.attachments[4].data, b"sku,qty\nA-1,2\n");
    assert!(a
        .attachments
        .iter()
        .all(|x| x.retention_class == "attachment"));
    // The forwarded message's ids are not thread ids of this one.
    assert!(a.thread_ids().is_empty());
}

#[test]
fn html_only_is_rendered_to_text() {
    let a = analyze_sample("html-only.eml");
    let text = a.text.as_deref().unwrap();
    assert!(text.contains("PC LOAD LETTER"), "{text}");
    assert!(!text.contains("<b>"), "{text}");
    assert!(a.html.as_deref().unwrap().contains("<b>PC LOAD LETTER</b>"));
    assert!(a.attachments.is_empty());
}

#[test]
fn auto_reply_is_flagged() {
    let a = analyze_sample("auto-reply.eml");
    assert!(a.is_auto_reply());
    assert!(!a.is_bounce(), "a person's auto-reply is not a bounce");
    assert!(!a.is_bulk());
    assert_eq!(a.in_reply_to, vec!["agent-reply-7@example.net".to_string()]);
    assert_eq!(a.ticket_tag, Some(TicketId(7)));
}

#[test]
fn auto_reply_signals() {
    let base =
        "From: a@example.com\r\nTo: help@example.net\r\nDate: Mon, 10 Mar 2025 11:00:00 +0000\r\n";
    let cases = [
        ("Auto-Submitted: auto-generated\r\nSubject: hi\r\n", true),
        ("Auto-Submitted: no\r\nSubject: hi\r\n", false),
        ("X-Autoreply: yes\r\nSubject: hi\r\n", true),
        ("X-Autorespond: yes\r\nSubject: hi\r\n", true),
        ("X-Auto-Response-Suppress: All\r\nSubject: hi\r\n", true),
        // A subject alone is never enough...
        ("Subject: Out of Office: back Monday\r\n", false),
        ("Subject: Automatic reply: your mail\r\n", false),
        // ... but it is with a header signal.
        ("Subject: Out of Office\r\nPrecedence: bulk\r\n", true),
        ("Subject: Automatic reply: x\r\nReturn-Path: <>\r\n", true),
    ];
    for (headers, auto) in cases {
        let raw = format!("{base}{headers}\r\nbody\r\n");
        let a = analyze(
            &entry_from(raw.into_bytes(), "a@example.com"),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(a.is_auto_reply(), auto, "{headers}");
    }
    // Over SMTP with a null reverse path, an out-of-office subject counts too.
    let raw = format!("{base}Subject: Out of office\r\n\r\nbody\r\n");
    let a = analyze(&entry_from(raw.into_bytes(), ""), &Limits::default()).unwrap();
    assert!(a.is_auto_reply());
    assert!(!a.is_bounce());
}

#[test]
fn dsn_bounce_with_rfc822_headers() {
    let a = analyze_sample("bounce-dsn.eml");
    assert!(a.is_bounce());
    assert_eq!(a.from.address, "mailer-daemon@mx.example.net");
    assert_eq!(
        a.bounced_ids,
        vec![
            "original-1@example.org".to_string(),
            "thread-root-1@example.org".to_string()
        ]
    );
    assert!(a
        .bounced_addresses
        .contains(&"frank@example.org".to_string()));
    assert!(a
        .bounced_addresses
        .contains(&"nobody@example.org".to_string()));
    assert!(a.text.as_deref().unwrap().contains("could not"));
    assert!(a.thread_ids().contains(&"original-1@example.org"));
}

#[test]
fn bounce_with_embedded_message_and_null_sender() {
    let raw = "From: MAILER-DAEMON@mx.example.net\r\n\
        To: help@example.net\r\n\
        Subject: failure notice\r\n\
        Date: Mon, 10 Mar 2025 11:00:00 +0000\r\n\
        Content-Type: multipart/mixed; boundary=b1\r\n\
        \r\n\
        --b1\r\n\
        Content-Type: text/plain\r\n\
        \r\n\
        Sorry, it did not work out.\r\n\
        --b1\r\n\
        Content-Type: message/rfc822\r\n\
        \r\n\
        From: Agent <help@example.net>\r\n\
        To: Lee <lee@example.org>\r\n\
        Subject: Re: [#5] hello\r\n\
        Message-ID: <reply-5@example.net>\r\n\
        In-Reply-To: <lee-1@example.org>\r\n\
        \r\n\
        We fixed it.\r\n\
        --b1--\r\n";
    let a = analyze(&entry_from(raw.as_bytes().to_vec(), ""), &Limits::default()).unwrap();
    assert!(a.is_bounce(), "mailer-daemon with a null reverse path");
    assert_eq!(
        a.bounced_ids,
        vec![
            "reply-5@example.net".to_string(),
            "lee-1@example.org".to_string()
        ]
    );
    assert!(a.bounced_addresses.contains(&"lee@example.org".to_string()));
    // Over a non-null reverse path, the same From is no bounce (and then nothing is collected).
    let a = analyze(
        &entry_from(raw.as_bytes().to_vec(), "mailer-daemon@mx.example.net"),
        &Limits::default(),
    )
    .unwrap();
    assert!(!a.is_bounce());
    assert!(a.bounced_ids.is_empty());
}

#[test]
fn list_mail_is_bulk() {
    let a = analyze_sample("list-mail.eml");
    assert!(a.is_bulk());
    assert!(!a.is_auto_reply());
    assert!(!a.is_bounce());
    for headers in [
        "List-Id: <x.example.com>\r\n",
        "Precedence: junk\r\n",
        "List-Unsubscribe: <mailto:u@example.com>\r\n",
    ] {
        let raw = format!("From: a@example.com\r\nSubject: s\r\n{headers}\r\nbody\r\n");
        assert!(analyze_raw(raw.as_bytes()).is_bulk(), "{headers}");
    }
}

#[test]
fn broken_mime_is_kept_with_warnings() {
    let a = analyze_sample("broken-mime.eml");
    let w = warnings(&a);
    assert!(w.iter().any(|w| w.contains("no closing boundary")), "{w:?}");
    assert!(
        w.iter().any(|w| w.contains("could not be decoded")),
        "{w:?}"
    );
    assert!(w.iter().any(|w| w == "no Date header"), "{w:?}");
    assert!(a
        .text
        .as_deref()
        .unwrap()
        .contains("The attachment below is broken"));
    // The undecodable attachment is kept as it was sent.
    let bin = a
        .attachments
        .iter()
        .find(|x| x.filename.as_deref() == Some("data.bin"))
        .expect("the broken attachment is kept");
    assert!(String::from_utf8_lossy(&bin.data).contains("definitely not base64"));
}

#[test]
fn truncated_parts_are_repaired() {
    // A base64 text part cut off by a missing closing boundary, and quoted-printable with a
    // stray "==" that the parser refuses: both are decoded by us.
    let raw = "From: a@example.com\r\nSubject: cut\r\nDate: Mon, 10 Mar 2025 11:00:00 +0000\r\n\
        Content-Type: multipart/mixed; boundary=\"cut\"\r\n\r\n\
        --cut\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n\
        R3LDvMOfZSwgdGhlIHRleHQgc3Vydml2ZXMu\r\n\r\n";
    let a = analyze_raw(raw.as_bytes());
    assert_eq!(a.text.as_deref(), Some("Grüße, the text survives."));
    let w = warnings(&a);
    assert!(w.iter().any(|w| w.contains("no closing boundary")), "{w:?}");
    assert!(
        w.iter().any(|w| w.contains("decoded what could be")),
        "{w:?}"
    );
    assert!(a.attachments.is_empty());

    let raw = "From: a@example.com\r\nSubject: qp\r\nDate: Mon, 10 Mar 2025 11:00:00 +0000\r\n\
        Content-Type: multipart/related; boundary=\"q\"\r\n\r\n\
        --q\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
        <p>caf=C3=A9 =3D=3D good==zz</p>\r\n--q--\r\n";
    let a = analyze_raw(raw.as_bytes());
    assert!(
        a.text.as_deref().unwrap().contains("café == good==zz"),
        "{:?}",
        a.text
    );
    assert!(
        a.html.as_deref().unwrap().contains("<p>café"),
        "{:?}",
        a.html
    );
}

#[test]
fn malformed_dates_are_guessed() {
    for (date, want) in [
        ("Mon, 10 Mar 2025 11:00:00 +0000", Some(1_741_604_400)),
        ("Mon, 10 Mar 2025 11:00:00", Some(1_741_604_400)),
        ("Mon, 10 Mar 0125 11:00:00 +0000", Some(1_741_604_400)),
        ("yesterday-ish", None),
    ] {
        let raw = format!("From: a@example.com\r\nDate: {date}\r\nSubject: d\r\n\r\nx\r\n");
        let a = analyze_raw(raw.as_bytes());
        assert_eq!(a.date, want, "{date}");
        assert_eq!(
            a.flags.is_empty(),
            date.ends_with("+0000") && !date.contains(" 0125 "),
            "{date}: {:?}",
            a.flags
        );
    }
}

#[test]
fn a_bad_field_does_not_swallow_the_next() {
    // mail-parser's own Date parser runs into the next line here; our field split does not.
    let raw = b"Date: 03 Jul 01 12:47:50 AM\nFrom: NEkB499A3@example.com\nSubject: s\n\nx\n";
    let a = analyze(&entry_from(raw.to_vec(), ""), &Limits::default()).unwrap();
    assert_eq!(a.from.address, "nekb499a3@example.com");
}

#[test]
fn envelope_sender_when_no_from() {
    let raw = sample("no-from.eml");
    let a = analyze(
        &entry_from(raw.clone(), "<Kim@Example.COM>"),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(a.from.address, "kim@example.com");
    assert_eq!(a.from.name, None);
    assert_eq!(
        analyze(&entry_from(raw.clone(), ""), &Limits::default()),
        Err(Rejection::NoSender)
    );
    assert_eq!(
        analyze(&entry_from(raw, "<>"), &Limits::default()),
        Err(Rejection::NoSender)
    );
    // Sender is used when From is missing.
    let raw = b"Sender: Sue <sue@example.com>\r\nSubject: x\r\n\r\nbody\r\n";
    assert_eq!(
        analyze(&entry_from(raw.to_vec(), ""), &Limits::default())
            .unwrap()
            .from
            .address,
        "sue@example.com"
    );
}

#[test]
fn garbage_is_rejected() {
    let limits = Limits::default();
    for raw in [
        sample("garbage.eml"),
        Vec::new(),
        b"\r\n\r\n".to_vec(),
        b"\x00\x01\x02\xff\xfe binary junk".to_vec(),
        // Only trace fields that a relay put in front of junk.
        b"Received: from x by y; Mon, 10 Mar 2025 11:00:00 +0000\r\njunk without colon\r\n"
            .to_vec(),
    ] {
        assert_eq!(
            analyze(&entry_from(raw, "someone@example.com"), &limits),
            Err(Rejection::NoHeaderSection)
        );
    }
    assert_eq!(
        Rejection::NoHeaderSection.to_string(),
        "not an RFC 5322 message: no header section"
    );
}

#[test]
fn parser_panic_is_caught() {
    let mut raw = PANIC_MARKER.to_vec();
    raw.extend_from_slice(b"From: a@example.com\r\n\r\nx\r\n");
    let r = analyze(&entry_from(raw, ""), &Limits::default());
    assert_eq!(r, Err(Rejection::ParserPanicked));
    assert_eq!(Rejection::ParserPanicked.to_string(), "parser panicked");
}

#[test]
fn subject_tag() {
    let a = analyze_sample("tag-reply.eml");
    assert_eq!(a.ticket_tag, Some(TicketId(12)));
    assert_eq!(crate::analyze::ticket_tag("no tag [#] [#x] [12]"), None);
    assert_eq!(
        crate::analyze::ticket_tag("[#0] [#abc] and [#345]"),
        Some(TicketId(345))
    );
    assert_eq!(
        crate::analyze::ticket_tag("[#99999999999999999999999]"),
        None
    );
}

#[test]
fn encoded_subject_and_quoted_printable() {
    let a = analyze_sample("encoded-subject-qp.eml");
    assert_eq!(a.subject, "Grüße aus Köln- die Schöne");
    assert_eq!(a.from.name.as_deref(), Some("Iván Ejemplo"));
    let text = a.text.as_deref().unwrap();
    assert!(text.contains("Grüße!"), "{text}");
    assert!(text.contains("Zeilenumbruch fortgesetzt"), "{text}");
    assert!(text.contains("100 €"), "{text}");
    let subject = a.headers.iter().find(|(n, _)| n == "Subject").unwrap();
    assert_eq!(subject.1, "Grüße aus Köln- die Schöne");
    assert!(a.flags.is_empty(), "{:?}", a.flags);
}

#[test]
fn latin1_charset() {
    let a = analyze_sample("latin1.eml");
    assert_eq!(
        a.text.as_deref().map(str::trim),
        Some("J'ai commandé un café crème à 10 £.")
    );
    // An unlabelled 8-bit header is read as Latin-1 / Windows-1252.
    assert_eq!(a.subject, "Café au lait");
    assert!(a.flags.is_empty(), "{:?}", a.flags);
}

#[test]
fn unknown_charset_warns() {
    let raw = b"From: a@example.com\r\nSubject: s\r\nDate: Mon, 10 Mar 2025 11:00:00 +0000\r\n\
        Content-Type: text/plain; charset=x-klingon\r\n\r\nqapla\r\n";
    let a = analyze_raw(raw);
    assert!(
        warnings(&a).iter().any(|w| w.contains("unknown charset")),
        "{:?}",
        a.flags
    );
    assert_eq!(a.text.as_deref().map(str::trim), Some("qapla"));
}

#[test]
fn headers_are_decoded_and_bounded() {
    let mut raw = String::from("From: a@example.com\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n");
    for i in 0..10 {
        raw.push_str(&format!("X-Extra-{i}: value {i}\r\n  folded\r\n"));
    }
    raw.push_str("\r\nbody\r\n");
    let a = analyze_raw(raw.as_bytes());
    assert_eq!(a.headers.len(), 12);
    assert_eq!(a.headers[1], ("Subject".to_string(), "café".to_string()));
    assert_eq!(
        a.headers[2],
        ("X-Extra-0".to_string(), "value 0 folded".to_string())
    );

    let limits = Limits {
        max_header_fields: 3,
        ..Limits::default()
    };
    let a = analyze(&entry_from(raw.into_bytes(), ""), &limits).unwrap();
    assert_eq!(a.headers.len(), 3);
    assert!(warnings(&a).iter().any(|w| w.contains("only the first 3")));
}

#[test]
fn mbox_from_line_is_skipped() {
    let raw = b"From someone@example.com  Wed Aug 21 16:18:36 2002\nFrom: Al <al@example.com>\nSubject: hi\n\nbody\n";
    let a = analyze_raw(raw);
    assert_eq!(a.from.address, "al@example.com");
    assert!(a.headers.iter().all(|(n, _)| !n.starts_with("From ")));
}

fn multipart(parts: usize) -> Vec<u8> {
    let mut raw = String::from(
        "From: a@example.com\r\nSubject: many\r\nDate: Mon, 10 Mar 2025 11:00:00 +0000\r\n\
         Content-Type: multipart/mixed; boundary=\"xx\"\r\n\r\n",
    );
    for i in 0..parts {
        raw.push_str(&format!(
            "--xx\r\nContent-Type: application/octet-stream; name=\"f{i}.bin\"\r\n\r\ndata {i}\r\n"
        ));
    }
    raw.push_str("--xx--\r\n");
    raw.into_bytes()
}

#[test]
fn mime_part_limit() {
    let a = analyze_raw(&multipart(30));
    assert_eq!(a.attachments.len(), 30);
    assert!(a.flags.is_empty(), "{:?}", a.flags);

    let limits = Limits {
        max_mime_parts: 5,
        ..Limits::default()
    };
    let a = analyze(&entry_from(multipart(30), ""), &limits).unwrap();
    assert!(a.attachments.len() < 5, "{}", a.attachments.len());
    assert!(
        warnings(&a)
            .iter()
            .any(|w| w.contains("more than 5 MIME parts")),
        "{:?}",
        a.flags
    );
}

#[test]
fn nesting_limit() {
    // 30 multiparts inside each other, an attachment at the bottom.
    let depth = 30;
    let mut raw = String::from(
        "From: a@example.com\r\nSubject: deep\r\nDate: Mon, 10 Mar 2025 11:00:00 +0000\r\n",
    );
    for i in 0..depth {
        raw.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        ));
    }
    raw.push_str("Content-Type: application/octet-stream; name=\"deep.bin\"\r\n\r\ndeep\r\n");
    for i in (0..depth).rev() {
        raw.push_str(&format!("--b{i}--\r\n"));
    }
    let a = analyze_raw(raw.as_bytes());
    assert!(a.attachments.is_empty());
    assert!(
        warnings(&a)
            .iter()
            .any(|w| w.contains("nested deeper than 20")),
        "{:?}",
        a.flags
    );
    let limits = Limits {
        max_nesting_depth: 40,
        ..Limits::default()
    };
    let a = analyze(&entry_from(raw.into_bytes(), ""), &limits).unwrap();
    assert_eq!(a.attachments.len(), 1);
}

#[test]
fn oversized_message_keeps_headers() {
    let limits = Limits {
        max_message_size: 200,
        ..Limits::default()
    };
    let raw = multipart(20);
    let a = analyze(&entry_from(raw, ""), &limits).unwrap();
    assert_eq!(a.subject, "many");
    assert!(a.attachments.is_empty());
    assert!(warnings(&a)
        .iter()
        .any(|w| w.contains("over the 200 byte limit")));
}

#[test]
fn content_hash_and_delivery() {
    use sha2::Digest;
    let raw = sample("tag-reply.eml");
    let e = entry_from(raw.clone(), "");
    let a = analyze(&e, &Limits::default()).unwrap();
    let want: [u8; 32] = sha2::Sha256::digest(&raw).into();
    assert_eq!(a.content_hash, want);
    let d = a.clone().into_delivery(
        e.raw.clone(),
        e.envelope.clone(),
        mailroom_store::ThreadDecision::Orphan,
        a.flags.clone(),
    );
    assert_eq!(d.message.raw, raw);
    assert_eq!(d.message.content_hash, want);
    assert_eq!(d.from.address, "heidi@example.com");
}

#[test]
fn references_are_bounded_and_ordered() {
    let mut refs = String::new();
    for i in 0..150 {
        refs.push_str(&format!(" <r{i}@example.com>"));
    }
    let raw = format!(
        "From: a@example.com\r\nSubject: s\r\nIn-Reply-To: <r149@example.com>\r\nReferences:{refs}\r\n\r\nb\r\n"
    );
    let a = analyze_raw(raw.as_bytes());
    assert_eq!(a.references.len(), 100);
    assert_eq!(a.references[0], "r0@example.com");
    assert_eq!(a.references[99], "r149@example.com");
    let ids = a.thread_ids();
    assert_eq!(ids[0], "r149@example.com");
    assert_eq!(ids[1], "r148@example.com");
    assert_eq!(ids.len(), 100);
}

#[test]
fn subject_noise_is_stripped() {
    use crate::strip_subject_noise as s;
    assert_eq!(s("Re: [#12] Printer on fire"), "Printer on fire");
    assert_eq!(s("RE: Fwd: AW:  Hello   world"), "Hello world");
    assert_eq!(s("Re[2]: Report: numbers"), "Report: numbers");
    assert_eq!(s("Reply needed"), "Reply needed");
    assert_eq!(s("  "), "(no subject)");
    assert_eq!(s("[#x] odd"), "[#x] odd");
}

/// Every message of the SpamAssassin sample analyzes without a panic, and none is rejected
/// unless it really has no header section or no sender.
#[test]
fn spamassassin_corpus() {
    let dir = repo().join("corpus/spamassassin");
    let index = std::fs::read_to_string(dir.join("index")).expect("corpus index");
    let limits = Limits::default();
    let mut seen = 0;
    let mut with_attachments = 0;
    let mut rejected = Vec::new();
    for line in index.lines() {
        let Some(path) = line.split_whitespace().nth(1) else {
            continue;
        };
        let raw = std::fs::read(dir.join(path)).expect("corpus message");
        let entry = SpoolEntry {
            id: SpoolId(seen),
            envelope: envelope(Source::File, ""),
            raw: raw.clone(),
        };
        seen += 1;
        match analyze(&entry, &limits) {
            Ok(a) => {
                assert!(!a.from.address.is_empty(), "{path}");
                if !a.attachments.is_empty() {
                    with_attachments += 1;
                }
            }
            Err(Rejection::ParserPanicked) => panic!("{path}: parser panicked"),
            Err(r) => rejected.push((path.to_string(), r, raw)),
        }
    }
    assert_eq!(seen, 800);
    assert!(with_attachments > 10, "{with_attachments}");
    for (path, r, raw) in &rejected {
        // Only a message without From and Sender (with no envelope sender to fall back on)
        // may be rejected.
        let text = String::from_utf8_lossy(raw).to_ascii_lowercase();
        let head = text.split("\n\n").next().unwrap_or_default();
        let has_sender = head
            .lines()
            .any(|l| l.starts_with("from:") || l.starts_with("sender:"));
        assert!(
            *r == Rejection::NoSender && !has_sender,
            "{path} rejected: {r}"
        );
    }
    assert!(rejected.len() <= 2, "{} rejected", rejected.len());
}

mod sources_tests {
    use std::fs;

    use crate::sources::{self, SourceError};

    const MAX: usize = 1 << 20;

    fn collect(paths: &[std::path::PathBuf], max: usize) -> Vec<Result<(String, Vec<u8>), String>> {
        sources::read(paths, max)
            .map(|r| match r {
                Ok(m) => Ok((m.origin, m.raw)),
                Err(e) => Err(e.to_string()),
            })
            .collect()
    }

    #[test]
    fn mbox_with_three_messages() {
        let dir = tempfile::tempdir().unwrap();
        let mbox = dir.path().join("inbox.mbox");
        fs::write(
            &mbox,
            "From alice@example.com Mon Mar 10 11:00:00 2025\n\
             From: alice@example.com\nSubject: one\n\nfirst body\n>From the start, escaped.\n>>From twice.\n\n\
             From bob@example.com Mon Mar 10 11:01:00 2025\n\
             From: bob@example.com\nSubject: two\n\nsecond\nFrom inside a line is not a separator\n\n\
             From carol@example.com Mon Mar 10 11:02:00 2025\n\
             From: carol@example.com\nSubject: three\n\nthird\n",
        )
        .unwrap();
        let got = collect(std::slice::from_ref(&mbox), MAX);
        assert_eq!(got.len(), 3, "{got:?}");
        let msgs: Vec<_> = got.into_iter().map(Result::unwrap).collect();
        let origin = mbox.display().to_string();
        assert_eq!(msgs[0].0, format!("{origin}#1"));
        assert_eq!(msgs[2].0, format!("{origin}#3"));
        assert_eq!(
            String::from_utf8(msgs[0].1.clone()).unwrap(),
            "From: alice@example.com\nSubject: one\n\nfirst body\nFrom the start, escaped.\n>From twice.\n"
        );
        assert_eq!(
            String::from_utf8(msgs[1].1.clone()).unwrap(),
            "From: bob@example.com\nSubject: two\n\nsecond\nFrom inside a line is not a separator\n"
        );
        assert_eq!(
            String::from_utf8(msgs[2].1.clone()).unwrap(),
            "From: carol@example.com\nSubject: three\n\nthird\n"
        );
        assert_eq!(sources::count(&[mbox], MAX), 3);
    }

    #[test]
    fn single_file_with_from_line() {
        let dir = tempfile::tempdir().unwrap();
        let eml = dir.path().join("one.eml");
        fs::write(
            &eml,
            "From x@example.com Mon Mar 10 11:00:00 2025\r\nFrom: x@example.com\r\n\r\n>From stays.\r\n",
        )
        .unwrap();
        let got = collect(std::slice::from_ref(&eml), MAX);
        assert_eq!(
            got,
            vec![Ok((
                eml.display().to_string(),
                b"From: x@example.com\r\n\r\n>From stays.\r\n".to_vec()
            ))]
        );
        assert_eq!(sources::count(&[eml], MAX), 1);
    }

    #[test]
    fn maildir_reads_cur_and_new() {
        let dir = tempfile::tempdir().unwrap();
        let md = dir.path().join("Maildir");
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(md.join(sub)).unwrap();
        }
        fs::write(md.join("cur/2:2,S"), "Subject: cur2\n\nx\n").unwrap();
        fs::write(md.join("cur/1:2,S"), "Subject: cur1\n\nx\n").unwrap();
        fs::write(md.join("new/3"), "Subject: new3\n\nx\n").unwrap();
        fs::write(md.join("tmp/4"), "Subject: tmp4 (being delivered)\n\nx\n").unwrap();
        fs::write(md.join("dovecot-uidlist"), "not mail").unwrap();
        let got = collect(std::slice::from_ref(&md), MAX);
        let subjects: Vec<_> = got
            .iter()
            .map(|r| {
                String::from_utf8_lossy(&r.as_ref().unwrap().1)
                    .lines()
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            subjects,
            vec!["Subject: cur1", "Subject: cur2", "Subject: new3"]
        );
        assert_eq!(sources::count(&[md], MAX), 3);
    }

    #[test]
    fn directory_recursive_sorted_with_limits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("b/sub")).unwrap();
        fs::write(root.join("a.eml"), "Subject: a\n\nx\n").unwrap();
        fs::write(root.join("b/sub/c.eml"), "Subject: c\n\nx\n").unwrap();
        fs::write(root.join("b/b.eml"), "Subject: b\n\nx\n").unwrap();
        fs::write(
            root.join("z.eml"),
            format!("Subject: big\n\n{}\n", "x".repeat(500)),
        )
        .unwrap();
        fs::write(
            root.join("y.mbox"),
            format!(
                "From a Mon\nSubject: m1\n\n{}\n\nFrom b Mon\nSubject: m2\n\nsmall\n",
                "y".repeat(500)
            ),
        )
        .unwrap();
        let got = collect(&[root.to_path_buf()], 100);
        let shown: Vec<String> = got
            .iter()
            .map(|r| match r {
                Ok((origin, raw)) => format!(
                    "{} {}",
                    origin.strip_prefix(&root.display().to_string()).unwrap(),
                    String::from_utf8_lossy(raw).lines().next().unwrap()
                ),
                Err(e) => format!(
                    "error {}",
                    e.strip_prefix(&root.display().to_string()).unwrap()
                ),
            })
            .collect();
        assert_eq!(
            shown,
            vec![
                "/a.eml Subject: a",
                "/b/b.eml Subject: b",
                "/b/sub/c.eml Subject: c",
                "error /y.mbox#1: message larger than 100 bytes",
                "/y.mbox#2 Subject: m2",
                "error /z.eml: message larger than 100 bytes",
            ]
        );
        assert_eq!(sources::count(&[root.to_path_buf()], 100), 6);
    }

    #[test]
    fn missing_path_is_an_error_item() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let items: Vec<_> = sources::read(std::slice::from_ref(&missing), MAX).collect();
        assert_eq!(items.len(), 1);
        match &items[0] {
            Err(e @ SourceError::Io { .. }) => {
                assert_eq!(e.origin(), missing.display().to_string())
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Against a real store. These need `mailroom-store` to be implemented.
mod store {
    use std::time::Duration;

    use mailroom_spool::{Source, SpoolId};
    use mailroom_store::{MessageFlag, Store, StoreOptions, TicketId};

    use super::envelope;
    use crate::{drain, process_entry, Outcome, Processed, Settings};

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        (dir, store)
    }

    fn spool(store: &Store, mail_from: &str, raw: &str) -> SpoolId {
        store
            .spool_append_blocking(envelope(Source::Smtp, mail_from), raw.as_bytes().to_vec())
            .unwrap()
    }

    fn run(store: &Store, mail_from: &str, raw: &str) -> Processed {
        let id = spool(store, mail_from, raw);
        process_entry(store, id, &Settings::default()).unwrap()
    }

    fn mail(from: &str, id: &str, subject: &str, extra: &str) -> String {
        format!(
            "From: {from}\r\nTo: help@example.net\r\nSubject: {subject}\r\n\
             Date: Mon, 10 Mar 2025 11:00:00 +0000\r\nMessage-ID: <{id}>\r\n{extra}\r\nHello.\r\n"
        )
    }

    /// Alice opens a ticket; returns it.
    fn open_ticket(store: &Store) -> TicketId {
        let p = run(
            store,
            "alice@example.com",
            &mail(
                "Alice <Alice@Example.com>",
                "a1@example.com",
                "Printer on fire",
                "",
            ),
        );
        match p.outcome {
            Outcome::NewTicket {
                ticket, ref flags, ..
            } => {
                assert!(flags.is_empty(), "{flags:?}");
                ticket
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reply_by_in_reply_to_threads() {
        let (_d, store) = open();
        let t = open_ticket(&store);
        let p = run(
            &store,
            "alice@example.com",
            &mail(
                "alice@example.com",
                "a2@example.com",
                "Re: something else entirely",
                "In-Reply-To: <a1@example.com>\r\n",
            ),
        );
        assert!(
            matches!(p.outcome, Outcome::Appended { ticket, .. } if ticket == t),
            "{p:?}"
        );
        // By References only, too.
        let p = run(
            &store,
            "alice@example.com",
            &mail(
                "alice@example.com",
                "a3@example.com",
                "more",
                "References: <unknown@example.com> <a2@example.com>\r\n",
            ),
        );
        assert!(
            matches!(p.outcome, Outcome::Appended { ticket, .. } if ticket == t),
            "{p:?}"
        );
        assert_eq!(store.ticket(t).unwrap().unwrap().thread.len(), 3);
    }

    #[test]
    fn same_subject_alone_does_not_thread() {
        let (_d, store) = open();
        let t = open_ticket(&store);
        let p = run(
            &store,
            "alice@example.com",
            &mail("alice@example.com", "a9@example.com", "Printer on fire", ""),
        );
        assert!(
            matches!(p.outcome, Outcome::NewTicket { ticket, .. } if ticket != t),
            "{p:?}"
        );
    }

    #[test]
    fn tag_from_requester_threads() {
        let (_d, store) = open();
        let t = open_ticket(&store);
        let subject = format!("Re: [#{}] Printer on fire", t.0);
        let p = run(
            &store,
            "alice@example.com",
            &mail("alice@example.com", "a2@example.com", &subject, ""),
        );
        assert!(
            matches!(p.outcome, Outcome::Appended { ticket, .. } if ticket == t),
            "{p:?}"
        );
    }

    #[test]
    fn tag_from_stranger_opens_flagged_ticket() {
        let (_d, store) = open();
        let t = open_ticket(&store);
        let subject = format!("Re: [#{}] Printer on fire", t.0);
        let p = run(
            &store,
            "mallory@example.org",
            &mail("mallory@example.org", "m1@example.org", &subject, ""),
        );
        match p.outcome {
            Outcome::NewTicket { ticket, flags, .. } => {
                assert_ne!(ticket, t);
                assert!(
                    flags.contains(&MessageFlag::UnverifiedThread { claimed: t }),
                    "{flags:?}"
                );
                let new = store.ticket(ticket).unwrap().unwrap();
                assert_eq!(new.summary.subject, "Printer on fire");
                assert!(new.summary.flagged);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(store.ticket(t).unwrap().unwrap().thread.len(), 1);
        // A guessed In-Reply-To from a stranger: the same.
        let p = run(
            &store,
            "mallory@example.org",
            &mail(
                "mallory@example.org",
                "m2@example.org",
                "hi",
                "In-Reply-To: <a1@example.com>\r\n",
            ),
        );
        assert!(
            matches!(&p.outcome, Outcome::NewTicket { flags, .. } if flags.contains(&MessageFlag::UnverifiedThread { claimed: t })),
            "{p:?}"
        );
        // A tag naming no ticket is just a new ticket.
        let p = run(
            &store,
            "mallory@example.org",
            &mail("mallory@example.org", "m3@example.org", "[#999999] hi", ""),
        );
        assert!(
            matches!(&p.outcome, Outcome::NewTicket { flags, .. } if flags.is_empty()),
            "{p:?}"
        );
    }

    #[test]
    fn auto_reply_to_ticket_is_appended_flagged() {
        let (_d, store) = open();
        let t = open_ticket(&store);
        let p = run(
            &store,
            "",
            &mail(
                "alice@example.com",
                "auto-1@example.com",
                "Automatic reply: Printer on fire",
                "In-Reply-To: <a1@example.com>\r\nAuto-Submitted: auto-replied\r\n",
            ),
        );
        match p.outcome {
            Outcome::Appended { ticket, flags, .. } => {
                assert_eq!(ticket, t);
                assert!(flags.contains(&MessageFlag::AutoReply), "{flags:?}");
            }
            other => panic!("{other:?}"),
        }
        // An auto-reply from a stranger that claims the ticket: kept as an orphan.
        let p = run(
            &store,
            "",
            &mail(
                "bot@example.org",
                "auto-2@example.org",
                "Out of office",
                "In-Reply-To: <a1@example.com>\r\nAuto-Submitted: auto-replied\r\n",
            ),
        );
        assert!(
            matches!(&p.outcome, Outcome::Orphan { flags, .. } if flags.contains(&MessageFlag::UnverifiedThread { claimed: t })),
            "{p:?}"
        );
    }

    #[test]
    fn auto_reply_to_nothing_is_orphan() {
        let (_d, store) = open();
        let p = run(
            &store,
            "",
            &mail(
                "someone@example.com",
                "auto-3@example.com",
                "Out of office",
                "Auto-Submitted: auto-replied\r\n",
            ),
        );
        assert!(
            matches!(&p.outcome, Outcome::Orphan { flags, .. } if flags.contains(&MessageFlag::AutoReply)),
            "{p:?}"
        );
        assert_eq!(store.tickets().unwrap().len(), 0);
        assert_eq!(store.orphans().unwrap().len(), 1);
        // List mail to nothing: orphan too.
        let p = run(
            &store,
            "news@example.com",
            &mail(
                "news@example.com",
                "n1@example.com",
                "News",
                "List-Id: <news.example.com>\r\n",
            ),
        );
        assert!(
            matches!(&p.outcome, Outcome::Orphan { flags, .. } if flags.contains(&MessageFlag::Bulk)),
            "{p:?}"
        );
    }

    #[test]
    fn bounce_of_stored_message_is_appended() {
        let (_d, store) = open();
        let t = open_ticket(&store);
        let dsn = String::from_utf8(super::sample("bounce-dsn.eml"))
            .unwrap()
            .replace("<original-1@example.org>", "<a1@example.com>")
            .replace(
                "Frank Example <frank@example.org>",
                "Alice <alice@example.com>",
            );
        let p = run(&store, "", &dsn);
        match p.outcome {
            Outcome::Appended { ticket, flags, .. } => {
                assert_eq!(ticket, t);
                assert!(flags.contains(&MessageFlag::Bounce), "{flags:?}");
            }
            other => panic!("{other:?}"),
        }
        // The mailer-daemon did not become a participant: ordinary mail from it that claims
        // the ticket is not added there.
        let mailer = super::sample("bounce-dsn.eml");
        let daemon = String::from_utf8_lossy(&mailer)
            .lines()
            .find_map(|l| l.strip_prefix("From:").map(|f| f.trim().to_string()))
            .expect("sample has a From");
        let p = run(
            &store,
            "postmaster@mx.example.net",
            &mail(
                &daemon,
                "daemon-2@mx.example.net",
                &format!("[#{}] hello", t.0),
                "",
            ),
        );
        assert!(
            matches!(&p.outcome, Outcome::NewTicket { flags, .. }
                if flags.iter().any(|f| matches!(f, MessageFlag::UnverifiedThread { .. }))),
            "{p:?}"
        );
        // A bounce of something we never stored: orphan.
        let p = run(
            &store,
            "",
            &String::from_utf8(super::sample("bounce-dsn.eml"))
                .unwrap()
                .replace("<dsn-1@mx.example.net>", "<dsn-2@mx.example.net>"),
        );
        assert!(
            matches!(&p.outcome, Outcome::Orphan { flags, .. } if flags.contains(&MessageFlag::Bounce)),
            "{p:?}"
        );
    }

    #[test]
    fn same_message_delivered_twice_stays_on_its_ticket() {
        let (_d, store) = open();
        let t = open_ticket(&store);
        let p = run(
            &store,
            "alice@example.com",
            &mail(
                "Alice <alice@example.com>",
                "a1@example.com",
                "Printer on fire",
                "",
            ),
        );
        assert!(
            matches!(p.outcome, Outcome::Appended { ticket, .. } if ticket == t),
            "{p:?}"
        );
    }

    #[test]
    fn same_entry_twice_is_one_message() {
        let (_d, store) = open();
        let id = spool(
            &store,
            "alice@example.com",
            &mail("alice@example.com", "a1@example.com", "Once", ""),
        );
        let first = process_entry(&store, id, &Settings::default()).unwrap();
        let second = process_entry(&store, id, &Settings::default()).unwrap();
        assert!(matches!(first.outcome, Outcome::NewTicket { .. }));
        assert_eq!(second.outcome, Outcome::AlreadyProcessed);
        assert_eq!(store.counts().unwrap().messages, 1);
        assert_eq!(store.spool_len(), 0);
    }

    #[test]
    fn garbage_and_panic_go_to_failed_list() {
        let (_d, store) = open();
        let p = run(
            &store,
            "x@example.com",
            "just some text\nwithout any header\n",
        );
        assert!(
            matches!(&p.outcome, Outcome::Failed { reason, .. } if reason.contains("no header section")),
            "{p:?}"
        );
        let mut raw = String::from_utf8(super::PANIC_MARKER.to_vec()).unwrap();
        raw.push_str("From: a@example.com\r\n\r\nx\r\n");
        let p = run(&store, "x@example.com", &raw);
        assert!(
            matches!(&p.outcome, Outcome::Failed { reason, .. } if reason == "parser panicked"),
            "{p:?}"
        );
        let failed = store.failed_list().unwrap();
        assert_eq!(failed.len(), 2);
        assert!(failed[0].reason.contains("no header section"));
        assert_eq!(failed[1].reason, "parser panicked");
        assert_eq!(store.spool_len(), 0);
    }

    #[test]
    fn attachments_reach_the_store() {
        let (_d, store) = open();
        let raw = String::from_utf8(super::sample("nested-attachments.eml")).unwrap();
        let p = run(&store, "carol@example.org", &raw);
        let Outcome::NewTicket { ticket, .. } = p.outcome else {
            panic!("{p:?}")
        };
        let detail = store.ticket(ticket).unwrap().unwrap();
        assert_eq!(detail.thread[0].attachments.len(), 5);
    }

    #[test]
    fn drain_processes_everything() {
        let (_d, store) = open();
        spool(
            &store,
            "alice@example.com",
            &mail("alice@example.com", "d1@example.com", "one", ""),
        );
        spool(
            &store,
            "alice@example.com",
            &mail(
                "alice@example.com",
                "d2@example.com",
                "two",
                "In-Reply-To: <d1@example.com>\r\n",
            ),
        );
        spool(
            &store,
            "",
            &mail(
                "x@example.com",
                "d3@example.com",
                "Out",
                "Auto-Submitted: auto-replied\r\n",
            ),
        );
        spool(&store, "x@example.com", "garbage\n");
        let mut seen = 0;
        let report = drain(&store, &Settings::default(), |_| seen += 1).unwrap();
        assert_eq!(seen, 4);
        assert_eq!(
            (
                report.tickets_created,
                report.messages_appended,
                report.orphans,
                report.failed
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(
            report.to_string(),
            "1 new ticket(s), 1 appended, 1 orphan(s), 0 quarantined, 1 failed, 0 already processed"
        );
        assert_eq!(store.spool_len(), 0);
        let again = drain(&store, &Settings::default(), |_| {}).unwrap();
        assert_eq!(again.total(), 0);
    }

    #[test]
    fn the_filter_routes_spam_to_quarantine_and_marks_unsure() {
        let (_d, store) = open();
        let filter = crate::Filter::default();
        // Teach the filter: pills are spam, meetings are ham.
        for i in 0..20 {
            for (label, raw) in [
                (
                    mailroom_spamfilter::Label::Spam,
                    mail(
                        "spammer@example.net",
                        &format!("s{i}@example.net"),
                        "cheap pills viagra discount",
                        "",
                    ) + "buy cheap pills now viagra discount pharmacy\r\n",
                ),
                (
                    mailroom_spamfilter::Label::Ham,
                    mail(
                        "alice@example.com",
                        &format!("h{i}@example.com"),
                        "meeting notes printer",
                        "",
                    ) + "the printer in room 4 needs toner before the meeting\r\n",
                ),
            ] {
                let features = filter.tokenizer().tokenize(raw.as_bytes());
                let fp: [u8; 32] = sha2::Digest::finalize(
                    <sha2::Sha256 as sha2::Digest>::new_with_prefix(raw.as_bytes()),
                )
                .into();
                store
                    .filter_train(filter.classifier(), &features, &fp, label, None, 20_000)
                    .unwrap();
            }
        }
        let settings = Settings {
            filter: Some(filter),
            ..Settings::default()
        };
        let id = spool(
            &store,
            "spammer@example.net",
            &(mail(
                "spammer@example.net",
                "new-s@example.net",
                "cheap pills viagra discount",
                "",
            ) + "buy cheap pills now viagra discount pharmacy\r\n"),
        );
        let p = process_entry(&store, id, &settings).unwrap();
        let Outcome::Quarantined { message, .. } = p.outcome else {
            panic!("{p:?}")
        };
        let q = store.quarantine().unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].id, message.0);
        let c = q[0].classification.as_ref().expect("classified");
        assert_eq!(c.verdict, mailroom_store::Verdict::Spam);
        assert!(c
            .clues
            .iter()
            .any(|k| k.token.as_deref().is_some_and(|t| t.contains("pills"))));
        assert!(store.tickets().unwrap().is_empty());

        let id = spool(
            &store,
            "alice@example.com",
            &(mail(
                "alice@example.com",
                "new-h@example.com",
                "meeting notes printer",
                "",
            ) + "the printer in room 4 needs toner before the meeting\r\n"),
        );
        let p = process_entry(&store, id, &settings).unwrap();
        assert!(matches!(p.outcome, Outcome::NewTicket { .. }), "{p:?}");
    }

    /// Results of `process_batch`, in the order of `ids`.
    fn batch(store: &Store, ids: &[SpoolId]) -> Vec<Outcome> {
        let mut results = crate::process_batch(store, ids, &Settings::default());
        assert_eq!(results.len(), ids.len(), "one result per id");
        ids.iter()
            .map(|id| {
                let at = results.iter().position(|(r, _)| r == id).expect("result");
                results.remove(at).1.unwrap().outcome
            })
            .collect()
    }

    #[test]
    fn batch_commits_independent_messages_together() {
        let (_d, store) = open();
        let ids: Vec<SpoolId> = (0..4)
            .map(|i| {
                let from = format!("b{i}@example.com");
                spool(
                    &store,
                    &from,
                    &mail(&from, &format!("b{i}@example.com"), "b", ""),
                )
            })
            .collect();
        let flushes = store.flush_count();
        let outcomes = batch(&store, &ids);
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Outcome::NewTicket { .. })),
            "{outcomes:?}"
        );
        assert_eq!(store.flush_count() - flushes, 1, "one commit for all four");
        assert_eq!(store.spool_len(), 0);
    }

    #[test]
    fn batch_stops_at_its_byte_bound() {
        let (_d, store) = open();
        // Three messages of ~400 KB: two fit in 1 MiB, the third starts a second commit.
        let body = "0123456789 abcdefghij ".repeat(18_000) + "\r\n";
        let ids: Vec<SpoolId> = (0..3)
            .map(|i| {
                let from = format!("big{i}@example.com");
                let raw = mail(&from, &format!("big{i}@example.com"), "big", "") + &body;
                spool(&store, &from, &raw)
            })
            .collect();
        let flushes = store.flush_count();
        let outcomes = batch(&store, &ids);
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Outcome::NewTicket { .. })),
            "{outcomes:?}"
        );
        assert_eq!(store.flush_count() - flushes, 2, "two commits");
    }

    #[test]
    fn batch_threads_a_reply_to_a_message_in_the_same_batch() {
        let (_d, store) = open();
        let first = spool(
            &store,
            "alice@example.com",
            &mail("alice@example.com", "c1@example.com", "Printer", ""),
        );
        let other = spool(
            &store,
            "bob@example.com",
            &mail("bob@example.com", "c2@example.com", "Scanner", ""),
        );
        let reply = spool(
            &store,
            "alice@example.com",
            &mail(
                "alice@example.com",
                "c3@example.com",
                "Re: Printer",
                "In-Reply-To: <c1@example.com>\r\n",
            ),
        );
        // The same message delivered twice goes with its first copy.
        let again = spool(
            &store,
            "bob@example.com",
            &mail("bob@example.com", "c2@example.com", "Scanner", ""),
        );
        let outcomes = batch(&store, &[first, other, reply, again]);
        let Outcome::NewTicket { ticket: t1, .. } = outcomes[0] else {
            panic!("{outcomes:?}");
        };
        let Outcome::NewTicket { ticket: t2, .. } = outcomes[1] else {
            panic!("{outcomes:?}");
        };
        assert!(
            matches!(&outcomes[2], Outcome::Appended { ticket, flags, .. } if *ticket == t1 && flags.is_empty()),
            "{outcomes:?}"
        );
        assert!(
            matches!(&outcomes[3], Outcome::Appended { ticket, .. } if *ticket == t2),
            "{outcomes:?}"
        );
        assert_eq!(store.tickets().unwrap().len(), 2);
    }

    #[test]
    fn batch_tag_waits_for_the_tickets_the_batch_opens() {
        let (_d, store) = open();
        let first = spool(
            &store,
            "alice@example.com",
            &mail("alice@example.com", "d1@example.com", "Printer", ""),
        );
        // Ticket 1 is what the first message opens: the tag can only be checked after it.
        let tagged = spool(
            &store,
            "alice@example.com",
            &mail(
                "alice@example.com",
                "d2@example.com",
                "Re: [#1] Printer",
                "",
            ),
        );
        let outcomes = batch(&store, &[first, tagged]);
        let Outcome::NewTicket { ticket, .. } = outcomes[0] else {
            panic!("{outcomes:?}");
        };
        assert_eq!(ticket, TicketId(1));
        assert!(
            matches!(&outcomes[1], Outcome::Appended { ticket, .. } if *ticket == TicketId(1)),
            "{outcomes:?}"
        );
    }

    #[test]
    fn batch_reports_every_entry_also_failed_and_gone_ones() {
        let (_d, store) = open();
        let good = spool(
            &store,
            "e@example.com",
            &mail("e@example.com", "e1@example.com", "fine", ""),
        );
        let garbage = spool(&store, "e@example.com", "\u{0}\u{1}\u{2}");
        let missing = SpoolId(987_654);
        let outcomes = batch(&store, &[good, garbage, missing]);
        assert!(
            matches!(outcomes[0], Outcome::NewTicket { .. }),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[1], Outcome::Failed { .. }),
            "{outcomes:?}"
        );
        assert_eq!(outcomes[2], Outcome::AlreadyProcessed);
        assert_eq!(store.spool_len(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workers_process_and_stop() {
        let (_d, store) = open();
        // Left in the spool before the workers start (as after a crash).
        for i in 0..5 {
            spool(
                &store,
                "w@example.com",
                &mail("w@example.com", &format!("w{i}@example.com"), "w", ""),
            );
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        let handle = tokio::spawn(crate::run_workers(
            store.clone(),
            3,
            tokio::sync::watch::channel(std::sync::Arc::new(Settings::default())).1,
            rx,
        ));
        // Appended while they run: woken by the notification.
        for i in 5..10 {
            spool(
                &store,
                "w@example.com",
                &mail("w@example.com", &format!("w{i}@example.com"), "w", ""),
            );
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while store.spool_len() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "workers did not drain the spool"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // They ran on their own threads, at a lower CPU priority than accepting mail.
        #[cfg(target_os = "linux")]
        {
            let mut niced = 0;
            for task in std::fs::read_dir("/proc/self/task").unwrap() {
                let task = task.unwrap().path();
                let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
                    continue;
                };
                if !comm.starts_with("mailroom-pipeli") {
                    continue;
                }
                let stat = std::fs::read_to_string(task.join("stat")).unwrap();
                // Field 19 (nice), counted after the ")" that ends the name.
                let after = &stat[stat.rfind(')').unwrap() + 2..];
                let nice: i32 = after.split(' ').nth(16).unwrap().parse().unwrap();
                assert_eq!(nice, 10, "{comm}: {stat}");
                niced += 1;
            }
            assert_eq!(niced, 3, "one thread per worker");
        }
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("workers stop on shutdown")
            .unwrap();
        assert_eq!(store.counts().unwrap().messages, 10);
        assert_eq!(store.tickets().unwrap().len(), 10);
        assert!(crate::worker_stats().processed >= 10);
    }
}

#[test]
fn flags_order() {
    let a = analyze_sample("bounce-dsn.eml");
    let kinds: Vec<_> = a
        .flags
        .iter()
        .map(|f| match f {
            MessageFlag::AutoReply => "auto",
            MessageFlag::Bounce => "bounce",
            MessageFlag::Bulk => "bulk",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, vec!["auto", "bounce"]);
}
