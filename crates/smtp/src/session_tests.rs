//! Unit tests of the sans-IO session: byte strings in, replies and actions out.

use super::*;

const PEER: &str = "192.0.2.1:40000";

fn config() -> SmtpConfig {
    let mut c = SmtpConfig::new(
        "mx.example.org",
        vec!["example.org".into(), "Help.Example.COM".into()],
    );
    c.max_message_size = 1000;
    c.max_recipients = 3;
    c.max_line_length = 512;
    c.max_errors = 5;
    c
}

fn tls_config() -> Arc<rustls::ServerConfig> {
    let ck = rcgen::generate_simple_self_signed(vec!["mx.example.org".to_string()]).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    Arc::new(cfg)
}

type SpoolFn = fn(&Delivery) -> Result<SpoolId, SpoolError>;

/// Plays the driver: feeds input, records deliveries, answers them with `spool`.
struct Harness {
    session: Session,
    deliveries: Vec<Delivery>,
    spool: SpoolFn,
    closed: bool,
    starttls: bool,
}

impl Harness {
    fn new(config: SmtpConfig) -> (Self, String) {
        let memory = MessageMemory::new(config.max_message_memory);
        Self::new_in(config, memory)
    }

    /// A harness whose session buffers content in `memory` (shared with other harnesses).
    fn new_in(config: SmtpConfig, memory: Arc<MessageMemory>) -> (Self, String) {
        let mut session =
            Session::with_memory(Arc::new(config), memory, PEER.parse().unwrap(), 0xabc);
        let greeting = String::from_utf8(session.output().to_vec()).unwrap();
        session.clear_output();
        let h = Harness {
            session,
            deliveries: Vec::new(),
            spool: |_| Ok(SpoolId(42)),
            closed: false,
            starttls: false,
        };
        (h, greeting)
    }

    fn ready(config: SmtpConfig) -> Self {
        let (mut h, _) = Self::new(config);
        let out = h.send(b"EHLO client.example.net\r\n");
        assert!(out.starts_with("250-mx.example.org"), "{out}");
        h
    }

    /// Feed `input` as one packet; return every reply produced.
    fn send(&mut self, input: &[u8]) -> String {
        let mut rest = input;
        let mut out = Vec::new();
        loop {
            let action = self.session.feed(&mut rest);
            out.extend_from_slice(self.session.output());
            self.session.clear_output();
            match action {
                Action::Read => {
                    if rest.is_empty() {
                        break;
                    }
                }
                Action::Deliver(d) => {
                    let result = (self.spool)(&d);
                    self.deliveries.push(*d);
                    self.session.delivered(result);
                }
                Action::StartTls => {
                    assert!(rest.is_empty(), "input after STARTTLS must be discarded");
                    self.starttls = true;
                    break;
                }
                Action::Close => {
                    self.closed = true;
                    break;
                }
            }
        }
        String::from_utf8(out).unwrap()
    }

    /// Feed `input` one byte at a time.
    fn send_bytewise(&mut self, input: &[u8]) -> String {
        let mut out = String::new();
        for b in input {
            out.push_str(&self.send(std::slice::from_ref(b)));
            if self.closed {
                break;
            }
        }
        out
    }

    /// The message content after our Received header.
    fn content(&self, i: usize) -> &[u8] {
        let raw = &self.deliveries[i].raw;
        let end = raw
            .windows(2)
            .enumerate()
            .find(|(at, w)| *w == b"\r\n" && raw.get(at + 2) != Some(&b'\t'))
            .map(|(at, _)| at + 2)
            .unwrap();
        &raw[end..]
    }
}

/// The reply codes ("250 2.1.0" or "354"), one per final reply line.
fn codes(out: &str) -> Vec<String> {
    out.split("\r\n")
        .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ')
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let code = parts.next().unwrap_or("");
            match parts.next() {
                Some(esc) if esc.len() == 5 && esc.as_bytes()[1] == b'.' => format!("{code} {esc}"),
                _ => code.to_string(),
            }
        })
        .collect()
}

const ENVELOPE: &[u8] = b"MAIL FROM:<alice@example.net>\r\nRCPT TO:<help@example.org>\r\n";

#[test]
fn greeting_and_ehlo_capabilities() {
    let (mut h, greeting) = Harness::new(config());
    assert_eq!(greeting, "220 mx.example.org ESMTP mailroom ready\r\n");
    let out = h.send(b"EHLO client.example.net\r\n");
    for cap in [
        "PIPELINING",
        "SIZE 1000",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
    ] {
        assert!(
            out.contains(&format!("250-{cap}\r\n")) || out.contains(&format!("250 {cap}\r\n")),
            "{cap} in {out}"
        );
    }
    assert!(!out.contains("STARTTLS"));
    assert!(out.ends_with("250 8BITMIME\r\n"), "{out}");

    let mut c = config();
    c.tls = Some(tls_config());
    let (mut h, _) = Harness::new(c);
    assert!(h.send(b"EHLO x\r\n").contains("250-STARTTLS\r\n"));
    assert_eq!(h.send(b"HELO x\r\n"), "250 mx.example.org\r\n");
}

#[test]
fn full_transaction_builds_envelope_and_received_header() {
    let mut h = Harness::ready(config());
    let out = h.send(b"MAIL FROM:<alice@example.net> BODY=8BITMIME SIZE=100\r\n");
    assert_eq!(codes(&out), ["250 2.1.0"]);
    assert_eq!(
        codes(&h.send(b"RCPT TO:<help@example.org>\r\n")),
        ["250 2.1.5"]
    );
    assert_eq!(codes(&h.send(b"DATA\r\n")), ["354"]);
    assert!(h.deliveries.is_empty());
    let out = h.send(b"Subject: hi\r\n\r\nHello\r\n.\r\n");
    assert_eq!(out, "250 2.0.0 Message accepted as 000000000000002a\r\n");
    let d = &h.deliveries[0];
    assert_eq!(d.envelope.source, Source::Smtp);
    assert_eq!(d.envelope.mail_from, "alice@example.net");
    assert_eq!(d.envelope.rcpt_to, ["help@example.org"]);
    assert_eq!(d.envelope.peer, PEER);
    assert_eq!(d.envelope.helo, "client.example.net");
    assert!(!d.envelope.tls);
    assert!(d.envelope.received_at > 1_600_000_000);
    let raw = String::from_utf8(d.raw.clone()).unwrap();
    assert!(
        raw.starts_with(
            "Received: from client.example.net ([192.0.2.1])\r\n\tby mx.example.org \
             (mailroom) with ESMTP id 0000000000000abc.1\r\n\tfor <help@example.org>;\r\n\t"
        ),
        "{raw}"
    );
    assert!(raw.contains(" +0000\r\nSubject: hi\r\n"), "{raw}");
    assert_eq!(h.content(0), b"Subject: hi\r\n\r\nHello\r\n");

    // The transaction is over: a second one works, DATA alone is out of sequence.
    assert_eq!(codes(&h.send(b"DATA\r\n")), ["503 5.5.1"]);
    assert_eq!(codes(&h.send(b"QUIT\r\n")), ["221 2.0.0"]);
    assert!(h.closed);
}

#[test]
fn null_sender_and_two_recipients() {
    let mut h = Harness::ready(config());
    let out = h.send(
        b"MAIL FROM:<>\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@help.example.com>\r\nDATA\r\nx\r\n.\r\n",
    );
    assert_eq!(
        codes(&out),
        ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354", "250 2.0.0"]
    );
    let d = &h.deliveries[0];
    assert_eq!(d.envelope.mail_from, "");
    assert_eq!(d.envelope.rcpt_to, ["a@example.org", "b@help.example.com"]);
    let raw = String::from_utf8_lossy(&d.raw);
    assert!(!raw.contains("for <"), "{raw}");
}

#[test]
fn pipelined_commands_get_replies_in_order() {
    let (mut h, _) = Harness::new(config());
    let out = h.send(
        b"EHLO c\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<x@example.org>\r\n\
          RCPT TO:<y@elsewhere.net>\r\nRCPT TO:<z@example.org>\r\nDATA\r\n",
    );
    assert_eq!(
        codes(&out),
        [
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "550 5.1.1",
            "250 2.1.5",
            "354"
        ]
    );
    let out = h.send(b"line\r\n.\r\nMAIL FROM:<b@example.net>\r\nRSET\r\nNOOP\r\nQUIT\r\n");
    assert_eq!(
        codes(&out),
        [
            "250 2.0.0",
            "250 2.1.0",
            "250 2.0.0",
            "250 2.0.0",
            "221 2.0.0"
        ]
    );
    assert!(h.closed);
    assert_eq!(h.deliveries.len(), 1);
    assert_eq!(
        h.deliveries[0].envelope.rcpt_to,
        ["x@example.org", "z@example.org"]
    );
}

#[test]
fn byte_at_a_time_equals_one_packet() {
    let conversation: &[u8] = b"EHLO c\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<x@example.org>\r\n\
        DATA\r\n..dot\r\nbody\r\n.\r\nBDAT 6\r\nchunk1BDAT 3 LAST\r\nxyzQUIT\r\n";
    let (mut whole, _) = Harness::new(config());
    let out_whole = whole.send(conversation);
    let (mut bytes, _) = Harness::new(config());
    let out_bytes = bytes.send_bytewise(conversation);
    assert_eq!(out_whole, out_bytes);
    assert!(whole.closed && bytes.closed);
    // the BDAT pair was outside a transaction: rejected and its chunks skipped
    assert_eq!(
        codes(&out_whole),
        [
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "354",
            "250 2.0.0",
            "503 5.5.1",
            "503 5.5.1",
            "221 2.0.0"
        ]
    );
    assert_eq!(whole.content(0), bytes.content(0));
    assert_eq!(whole.content(0), b".dot\r\nbody\r\n");
}

#[test]
fn dot_unstuffing_and_empty_message() {
    let mut h = Harness::ready(config());
    h.send(ENVELOPE);
    h.send(b"DATA\r\n");
    let out = h.send(b"..first\r\nmid\r\n...\r\n.x\r\n..\r\n.\r\n");
    assert_eq!(codes(&out), ["250 2.0.0"]);
    assert_eq!(h.content(0), b".first\r\nmid\r\n..\r\nx\r\n.\r\n");

    // "." right after DATA ends an empty message.
    h.send(ENVELOPE);
    let out = h.send(b"DATA\r\n.\r\n");
    assert_eq!(codes(&out), ["354", "250 2.0.0"]);
    assert_eq!(h.content(1), b"");
}

#[test]
fn bare_lf_or_cr_dot_does_not_end_data() {
    for smuggle in [&b"\n.\n"[..], b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"] {
        let mut h = Harness::ready(config());
        h.send(ENVELOPE);
        h.send(b"DATA\r\n");
        let mut msg = b"Subject: x\r\n\r\nhello".to_vec();
        msg.extend_from_slice(smuggle);
        msg.extend_from_slice(b"MAIL FROM:<evil@example.net>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nforged\r\n.\r\n");
        let out = h.send(&msg);
        // exactly one message, and no replies to the smuggled commands
        assert_eq!(codes(&out), ["250 2.0.0"], "{smuggle:?}");
        assert_eq!(h.deliveries.len(), 1);
        let content = h.content(0);
        assert!(
            content.windows(15).any(|w| w == b"MAIL FROM:<evil"),
            "{smuggle:?}"
        );
        assert!(content.ends_with(b"DATA\r\nforged\r\n"));
        assert_eq!(h.deliveries[0].envelope.rcpt_to, ["help@example.org"]);
    }
}

#[test]
fn sequencing_errors() {
    let mut c = config();
    c.max_errors = 100;
    let (mut h, _) = Harness::new(c);
    assert_eq!(
        codes(&h.send(b"MAIL FROM:<a@example.net>\r\n")),
        ["503 5.5.1"]
    );
    assert_eq!(codes(&h.send(b"DATA\r\n")), ["503 5.5.1"]);
    h.send(b"EHLO c\r\n");
    assert_eq!(
        codes(&h.send(b"RCPT TO:<help@example.org>\r\n")),
        ["503 5.5.1"]
    );
    assert_eq!(codes(&h.send(b"DATA\r\n")), ["503 5.5.1"]);
    h.send(b"MAIL FROM:<a@example.net>\r\n");
    assert_eq!(
        codes(&h.send(b"MAIL FROM:<a@example.net>\r\n")),
        ["503 5.5.1"]
    );
    assert_eq!(codes(&h.send(b"DATA\r\n")), ["503 5.5.1"]);
    // RSET forgets the transaction
    assert_eq!(
        codes(&h.send(b"RSET\r\nRCPT TO:<help@example.org>\r\n")),
        ["250 2.0.0", "503 5.5.1"]
    );
    assert!(!h.closed);
}

#[test]
fn relay_is_refused_and_domains_are_case_insensitive() {
    let mut h = Harness::ready(config());
    h.send(b"MAIL FROM:<a@example.net>\r\n");
    let out = h.send(
        b"RCPT TO:<x@example.com>\r\nRCPT TO:<x@sub.example.org>\r\nRCPT TO:<HELP@EXAMPLE.ORG>\r\n\
          RCPT TO:<x@help.example.com>\r\nRCPT TO:<Postmaster>\r\n",
    );
    assert_eq!(
        codes(&out),
        [
            "550 5.1.1",
            "550 5.1.1",
            "250 2.1.5",
            "250 2.1.5",
            "250 2.1.5"
        ]
    );
    h.send(b"DATA\r\nx\r\n.\r\n");
    assert_eq!(
        h.deliveries[0].envelope.rcpt_to,
        [
            "HELP@EXAMPLE.ORG",
            "x@help.example.com",
            "postmaster@example.org"
        ]
    );
    assert_eq!(
        codes(&h.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<>\r\n")),
        ["250 2.1.0", "501 5.1.3"]
    );
}

#[test]
fn non_ascii_addresses_need_smtputf8() {
    let mut h = Harness::ready(config());
    let out = h.send("MAIL FROM:<δοκιμή@example.net>\r\n".as_bytes());
    assert_eq!(codes(&out), ["553 5.6.7"]);
    h.send(b"MAIL FROM:<a@example.net>\r\n");
    let out = h.send("RCPT TO:<δοκιμή@example.org>\r\nRSET\r\n".as_bytes());
    assert_eq!(codes(&out), ["553 5.6.7", "250 2.0.0"]);

    let out = h.send(
        "MAIL FROM:<δοκιμή@example.net> SMTPUTF8\r\nRCPT TO:<δοκιμή@example.org>\r\nDATA\r\nx\r\n.\r\n"
            .as_bytes(),
    );
    assert_eq!(codes(&out), ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]);
    let d = &h.deliveries[0];
    assert_eq!(d.envelope.mail_from, "δοκιμή@example.net");
    assert_eq!(d.envelope.rcpt_to, ["δοκιμή@example.org"]);
    assert!(String::from_utf8_lossy(&d.raw).contains(" with UTF8SMTP id "));
}

#[test]
fn unsupported_parameters() {
    let mut h = Harness::ready(config());
    let out = h.send(
        b"MAIL FROM:<a@example.net> RET=FULL\r\nMAIL FROM:<a@example.net> BODY=BINARYMIME\r\n\
          MAIL FROM:<a@example.net> FOO=BAR\r\nMAIL FROM:<a@example.net> SIZE=abc\r\n\
          MAIL FROM:<a@example.net>\r\nRCPT TO:<help@example.org> NOTIFY=NEVER\r\n",
    );
    assert_eq!(
        codes(&out),
        [
            "555 5.5.4",
            "555 5.5.4",
            "555 5.5.4",
            "501 5.5.4",
            "250 2.1.0",
            "555 5.5.4"
        ]
    );
}

#[test]
fn other_commands() {
    let (mut h, _) = Harness::new(config());
    let out = h.send(
        b"NOOP\r\nVRFY help\r\nHELP\r\nAUTH PLAIN AGFiAGM=\r\nEXPN list\r\nETRN example.org\r\n\
          FOOBAR\r\n\r\n",
    );
    assert_eq!(
        codes(&out),
        [
            "250 2.0.0",
            "252 2.5.0",
            "214 2.0.0",
            "502 5.5.1",
            "502 5.5.1",
            "502 5.5.1",
            "500 5.5.1",
            "500 5.5.1"
        ]
    );
    assert!(!h.closed);
}

#[test]
fn message_size_limit_at_mail_from() {
    let mut h = Harness::ready(config());
    let out =
        h.send(b"MAIL FROM:<a@example.net> SIZE=1001\r\nMAIL FROM:<a@example.net> SIZE=1000\r\n");
    assert_eq!(codes(&out), ["552 5.3.4", "250 2.1.0"]);
}

fn message_of(len: usize) -> Vec<u8> {
    // lines of 100 octets including CRLF, then one of 100 to 199
    let mut m = Vec::new();
    while len - m.len() >= 200 {
        m.extend_from_slice(&[b'a'; 98]);
        m.extend_from_slice(b"\r\n");
    }
    let rest = len - m.len();
    assert!(rest >= 2);
    m.extend(std::iter::repeat_n(b'b', rest - 2));
    m.extend_from_slice(b"\r\n");
    assert_eq!(m.len(), len);
    m
}

#[test]
fn message_size_limit_at_end_of_data() {
    for (len, accepted) in [
        (1000, true),
        (999, true),
        (1001, false),
        (1002, false),
        (50_000, false),
    ] {
        let mut h = Harness::ready(config());
        h.send(ENVELOPE);
        h.send(b"DATA\r\n");
        let mut msg = message_of(len);
        msg.extend_from_slice(b".\r\n");
        // in pieces, checking the buffer stays bounded
        let mut out = String::new();
        for piece in msg.chunks(300) {
            out.push_str(&h.send(piece));
            if let Some(body) = h.session.tx.as_ref().and_then(|t| t.body.as_ref()) {
                assert!(
                    body.raw.capacity() <= body.header_len + 1000 + 2,
                    "{}",
                    body.raw.capacity()
                );
            }
        }
        if accepted {
            assert_eq!(codes(&out), ["250 2.0.0"], "{len}");
            assert_eq!(h.content(0).len(), len);
        } else {
            assert_eq!(codes(&out), ["552 5.3.4"], "{len}");
            assert!(h.deliveries.is_empty());
        }
        // the session goes on
        assert_eq!(codes(&h.send(ENVELOPE)), ["250 2.1.0", "250 2.1.5"]);
    }
}

#[test]
fn oversized_message_in_one_packet_is_not_buffered() {
    let mut h = Harness::ready(config());
    h.send(ENVELOPE);
    h.send(b"DATA\r\n");
    let mut msg = message_of(200_000);
    msg.extend_from_slice(b"..\r\n");
    let mut rest = &msg[..];
    assert!(matches!(h.session.feed(&mut rest), Action::Read));
    assert!(rest.is_empty());
    assert!(matches!(h.session.phase, Phase::Discard { .. }));
    let body = h.session.tx.as_ref().and_then(|t| t.body.as_ref()).unwrap();
    assert_eq!(body.raw.capacity(), 0);
    assert_eq!(codes(&h.send(b".\r\n")), ["552 5.3.4"]);
}

/// Two sessions in one pool of 64 KiB, messages up to 1 MiB.
fn shared_pair() -> (Harness, Harness, Arc<MessageMemory>) {
    let mut cfg = config();
    cfg.max_message_size = 1 << 20;
    let memory = MessageMemory::new(64 * 1024);
    let ready = || {
        let (mut h, _) = Harness::new_in(cfg.clone(), memory.clone());
        h.send(b"EHLO client.example.net\r\n");
        assert_eq!(codes(&h.send(ENVELOPE)), ["250 2.1.0", "250 2.1.5"]);
        h
    };
    (ready(), ready(), memory.clone())
}

#[test]
fn a_message_that_does_not_fit_the_shared_memory_gets_452_and_the_sender_may_retry() {
    let (mut a, mut b, memory) = shared_pair();
    // A is halfway through a 100 KB message: it holds at least that much of the pool.
    let big = message_of(100_000);
    a.send(b"DATA\r\n");
    a.send(&big[..50_000]);
    let held = memory.in_use();
    assert!(held >= 50_000, "{held}");
    // B's 100 KB message does not fit beside it: read to its end, dropped, 452; nothing is
    // held for it afterwards, and the session goes on.
    let mut msg = b"DATA\r\n".to_vec();
    msg.extend_from_slice(&big);
    msg.extend_from_slice(b".\r\n");
    assert_eq!(codes(&b.send(&msg)), ["354", "452 4.3.1"]);
    assert!(b.deliveries.is_empty());
    assert_eq!(memory.in_use(), held);
    // A finishes; its delivery holds the bytes until the spool has it (the harness keeps it).
    let mut rest = big[50_000..].to_vec();
    rest.extend_from_slice(b".\r\n");
    assert_eq!(codes(&a.send(&rest)), ["250 2.0.0"]);
    assert_eq!(a.content(0), &big[..]);
    assert!(memory.in_use() >= 100_000);
    a.deliveries.clear();
    assert_eq!(memory.in_use(), 0);
    // B retries and gets through: alone, a message may take more than the pool.
    assert_eq!(codes(&b.send(ENVELOPE)), ["250 2.1.0", "250 2.1.5"]);
    assert_eq!(codes(&b.send(&msg)), ["354", "250 2.0.0"]);
    assert_eq!(b.content(0), &big[..]);
    b.deliveries.clear();
    assert_eq!(memory.in_use(), 0);
}

#[test]
fn bdat_that_does_not_fit_the_shared_memory_gets_452() {
    let (mut a, mut b, memory) = shared_pair();
    a.send(b"DATA\r\n");
    a.send(&message_of(60_000));
    let held = memory.in_use();
    let mut cmd = b"BDAT 20000 LAST\r\n".to_vec();
    cmd.extend_from_slice(&message_of(20_000));
    assert_eq!(codes(&b.send(&cmd)), ["452 4.3.1"]);
    assert_eq!(memory.in_use(), held);
    assert_eq!(codes(&b.send(ENVELOPE)), ["250 2.1.0", "250 2.1.5"]);
}

#[test]
fn refused_content_gives_its_memory_back() {
    let (mut a, _b, memory) = shared_pair();
    // Too large (limit 1 MiB) and a too-long line: both dropped, nothing held after.
    a.send(b"DATA\r\n");
    a.send(&message_of(1_100_000));
    assert_eq!(memory.in_use(), 0, "dropped once over the limit");
    assert_eq!(codes(&a.send(b".\r\n")), ["552 5.3.4"]);
    assert_eq!(codes(&a.send(ENVELOPE)), ["250 2.1.0", "250 2.1.5"]);
    let mut msg = b"DATA\r\n".to_vec();
    msg.extend_from_slice(&[b'x'; 600]);
    msg.extend_from_slice(b"\r\n.\r\n");
    assert_eq!(codes(&a.send(&msg)), ["354", "554 5.6.0"]);
    assert_eq!(memory.in_use(), 0);
    // A session that ends in the middle of DATA.
    assert_eq!(codes(&a.send(ENVELOPE)), ["250 2.1.0", "250 2.1.5"]);
    a.send(b"DATA\r\n");
    a.send(&message_of(10_000));
    assert!(memory.in_use() > 0);
    drop(a);
    assert_eq!(
        memory.in_use(),
        0,
        "a session that ends gives its buffer back"
    );
}

#[test]
fn long_data_line_rejects_message_at_end() {
    let mut h = Harness::ready(config());
    // exactly max_line_length (512) including CRLF is fine
    h.send(ENVELOPE);
    let mut msg = b"DATA\r\n".to_vec();
    msg.extend_from_slice(&[b'x'; 510]);
    msg.extend_from_slice(b"\r\n.\r\n");
    assert_eq!(codes(&h.send(&msg)), ["354", "250 2.0.0"]);

    h.send(ENVELOPE);
    h.send(b"DATA\r\n");
    let out = h.send(&[b'y'; 511]);
    assert_eq!(out, "", "rejected only at the end of data");
    let out = h.send(b"\r\nmore\r\n.\r\n");
    assert_eq!(codes(&out), ["554 5.6.0"]);
    assert_eq!(h.deliveries.len(), 1);
    assert_eq!(
        codes(&h.send(b"RCPT TO:<help@example.org>\r\n")),
        ["503 5.5.1"]
    );
}

#[test]
fn long_command_line_is_rejected_whole() {
    let mut h = Harness::ready(config());
    let mut line = b"NOOP ".to_vec();
    line.extend_from_slice(&[b'x'; 600]);
    line.extend_from_slice(b" QUIT\r\nNOOP\r\n");
    assert_eq!(codes(&h.send(&line)), ["500 5.5.2", "250 2.0.0"]);
    // split across packets, the tail is not taken for a command either
    let out = h.send_bytewise(&line);
    assert_eq!(codes(&out), ["500 5.5.2", "250 2.0.0"]);
    assert!(!h.closed);
    assert!(h.session.line.capacity() <= 2 * 512);
}

#[test]
fn recipient_limit() {
    let mut h = Harness::ready(config());
    let out = h.send(
        b"MAIL FROM:<a@example.net>\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n\
          RCPT TO:<a@example.org>\r\nRCPT TO:<c@example.org>\r\nRCPT TO:<d@example.org>\r\n",
    );
    assert_eq!(
        codes(&out),
        [
            "250 2.1.0",
            "250 2.1.5",
            "250 2.1.5",
            "250 2.1.5",
            "250 2.1.5",
            "452 4.5.3"
        ]
    );
    h.send(b"DATA\r\nx\r\n.\r\n");
    assert_eq!(
        h.deliveries[0].envelope.rcpt_to,
        ["a@example.org", "b@example.org", "c@example.org"]
    );
}

#[test]
fn too_many_errors_close_the_session() {
    let mut h = Harness::ready(config());
    let out = h.send(b"X1\r\nX2\r\nX3\r\nX4\r\nX5\r\n");
    assert_eq!(codes(&out).len(), 5);
    assert!(!h.closed);
    let out = h.send(b"X6\r\nNOOP\r\n");
    assert_eq!(codes(&out), ["500 5.5.1", "421 4.7.0"]);
    assert!(h.closed);
    assert!(h.session.is_closed());
}

#[test]
fn spool_failures_are_temporary() {
    let cases: [(SpoolFn, &str); 3] = [
        (|_| Err(SpoolError::Full), "451 4.3.2"),
        (|_| Err(SpoolError::Closed), "451 4.3.0"),
        (|_| Err(SpoolError::Io("disk".into())), "451 4.3.0"),
    ];
    for (spool, code) in cases {
        let mut h = Harness::ready(config());
        h.spool = spool;
        h.send(ENVELOPE);
        let out = h.send(b"DATA\r\nhi\r\n.\r\nDATA\r\n");
        assert_eq!(codes(&out), ["354", code, "503 5.5.1"]);
        assert!(!h.closed);
    }
}

#[test]
fn bdat_chunks() {
    let mut h = Harness::ready(config());
    h.send(ENVELOPE);
    assert_eq!(codes(&h.send(b"BDAT 7\r\nhel")), Vec::<String>::new());
    assert_eq!(codes(&h.send(b"lo\r\n")), ["250 2.0.0"]);
    // a chunk whose content looks like commands and an end of data
    let out = h.send(b"BDAT 13\r\n..\r\n.\r\nQUIT\r\nBDAT 0 LAST\r\n");
    assert_eq!(codes(&out), ["250 2.0.0", "250 2.0.0"]);
    assert_eq!(h.content(0), b"hello\r\n..\r\n.\r\nQUIT\r\n");
    assert!(!h.closed);

    // pipelined: envelope, two chunks, LAST, in one packet
    let out = h.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<help@example.org>\r\nBDAT 3\r\nabcBDAT 4 LAST\r\ndef\nNOOP\r\n");
    assert_eq!(
        codes(&out),
        [
            "250 2.1.0",
            "250 2.1.5",
            "250 2.0.0",
            "250 2.0.0",
            "250 2.0.0"
        ]
    );
    assert_eq!(h.content(1), b"abcdef\n");
    assert!(String::from_utf8_lossy(&h.deliveries[1].raw)
        .starts_with("Received: from client.example.net"));

    // DATA is not allowed once BDAT started; RCPT neither
    h.send(ENVELOPE);
    let out = h.send(b"BDAT 1\r\nxDATA\r\nRCPT TO:<b@example.org>\r\nBDAT 1 LAST\r\ny");
    assert_eq!(
        codes(&out),
        ["250 2.0.0", "503 5.5.1", "503 5.5.1", "250 2.0.0"]
    );
    assert_eq!(h.content(2), b"xy");
    assert_eq!(h.deliveries[2].envelope.rcpt_to, ["help@example.org"]);
}

#[test]
fn bdat_size_and_line_limits() {
    let mut h = Harness::ready(config());
    h.send(ENVELOPE);
    let mut chunk = b"BDAT 600\r\n".to_vec();
    chunk.extend(message_of(600));
    assert_eq!(codes(&h.send(&chunk)), ["250 2.0.0"]);
    // 600 + 401 > 1000: the chunk is read and dropped, the transaction ends
    let mut chunk = b"BDAT 401 LAST\r\n".to_vec();
    chunk.extend(message_of(401));
    chunk.extend_from_slice(b"NOOP\r\n");
    assert_eq!(codes(&h.send(&chunk)), ["552 5.3.4", "250 2.0.0"]);
    assert!(h.deliveries.is_empty());
    // later BDATs of the failed transaction are refused, their chunks skipped
    assert_eq!(
        codes(&h.send(b"BDAT 4 LAST\r\nQUITNOOP\r\n")),
        ["503 5.5.1", "250 2.0.0"]
    );

    // a long line inside a chunk
    h.send(ENVELOPE);
    let mut chunk = b"BDAT 700 LAST\r\n".to_vec();
    chunk.extend_from_slice(&[b'z'; 700]);
    assert_eq!(codes(&h.send_bytewise(&chunk)), ["554 5.6.0"]);
    assert!(h.deliveries.is_empty());
    assert!(!h.closed);
}

#[test]
fn starttls_resets_the_session_and_drops_injected_commands() {
    let (mut h, _) = Harness::new(config());
    assert_eq!(
        codes(&h.send(b"EHLO c\r\nSTARTTLS\r\n")),
        ["250", "502 5.5.1"]
    );

    let mut c = config();
    c.tls = Some(tls_config());
    let (mut h, _) = Harness::new(c);
    assert_eq!(codes(&h.send(b"STARTTLS\r\n")), ["503 5.5.1"]);
    h.send(b"EHLO c\r\nMAIL FROM:<a@example.net>\r\n");
    assert_eq!(codes(&h.send(b"STARTTLS\r\n")), ["503 5.5.1"]);
    h.send(b"RSET\r\n");
    let out = h.send(b"STARTTLS\r\nMAIL FROM:<injected@example.net>\r\n");
    assert_eq!(codes(&out), ["220 2.0.0"]);
    assert!(h.starttls);
    h.session.tls_started();
    assert!(h.session.is_tls());
    // no greeting after the handshake; EHLO is needed again, without STARTTLS this time
    assert_eq!(
        codes(&h.send(b"MAIL FROM:<a@example.net>\r\n")),
        ["503 5.5.1"]
    );
    let out = h.send(b"EHLO c\r\n");
    assert!(!out.contains("STARTTLS"), "{out}");
    assert_eq!(codes(&h.send(b"STARTTLS\r\n")), ["503 5.5.1"]);
    h.send(ENVELOPE);
    h.send(b"DATA\r\nx\r\n.\r\n");
    let d = &h.deliveries[0];
    assert!(d.envelope.tls);
    assert!(String::from_utf8_lossy(&d.raw).contains(" with ESMTPS id "));
}

#[test]
fn helo_session_uses_smtp_protocol_word() {
    let (mut h, _) = Harness::new(config());
    let out = h.send(b"HELO old.example.net\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<help@example.org>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(
        codes(&out),
        ["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]
    );
    let raw = String::from_utf8_lossy(&h.deliveries[0].raw);
    assert!(raw.starts_with("Received: from old.example.net ([192.0.2.1])"));
    assert!(raw.contains(" with SMTP id "));
}

#[test]
fn timeouts_and_shutdown() {
    let mut c = config();
    c.idle_timeout = Duration::from_secs(7);
    c.data_timeout = Duration::from_secs(3);
    let mut h = Harness::ready(c.clone());
    assert_eq!(h.session.read_timeout(), Duration::from_secs(7));
    assert!(!h.session.in_transaction());
    h.send(ENVELOPE);
    assert!(h.session.in_transaction());
    h.send(b"DATA\r\npartial");
    assert_eq!(h.session.read_timeout(), Duration::from_secs(3));
    h.session.timed_out();
    assert_eq!(codes(&h.send(b"")), ["421 4.4.2"]);
    assert!(h.closed);
    assert!(h.deliveries.is_empty());

    let mut h = Harness::ready(c);
    h.session.shutting_down();
    let out = h.send(b"NOOP\r\n");
    assert_eq!(codes(&out), ["421 4.3.2"]);
    assert!(h.closed);
}

#[test]
fn output_is_bounded_under_pipelining() {
    let mut h = Harness::ready(config());
    let input = b"NOOP\r\n".repeat(10_000);
    let mut rest = &input[..];
    let mut rounds = 0;
    while !rest.is_empty() {
        assert!(matches!(h.session.feed(&mut rest), Action::Read));
        assert!(h.session.output().len() < OUTPUT_HIGH_WATER + 64);
        h.session.clear_output();
        rounds += 1;
    }
    assert!(rounds > 1);
}

/// A small deterministic generator (xorshift64*), so the randomized tests are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_splits_give_the_same_result() {
    let conversation: &[u8] =
        b"EHLO c\r\nMAIL FROM:<a@example.net> SIZE=50\r\nRCPT TO:<x@example.org>\r\n\
        DATA\r\n..dot\r\nbody\n.\nstill\r.\r\n\r\n.\r\nMAIL FROM:<b@example.net>\r\n\
        RCPT TO:<y@example.org>\r\nBDAT 6\r\nchunk1BDAT 3 LAST\r\nxyzNOOP\r\nQUIT\r\n";
    let (mut whole, _) = Harness::new(config());
    let expected = whole.send(conversation);
    assert_eq!(whole.deliveries.len(), 2);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..300 {
        let (mut h, _) = Harness::new(config());
        let mut out = String::new();
        let mut rest = conversation;
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len().min(40));
            out.push_str(&h.send(&rest[..n]));
            rest = &rest[n..];
        }
        assert_eq!(out, expected);
        assert_eq!(h.deliveries.len(), 2);
        assert_eq!(h.content(0), whole.content(0));
        assert_eq!(h.content(1), b"chunk1xyz");
    }
}

#[test]
fn garbage_never_panics_and_stays_bounded() {
    let mut rng = Rng(12345);
    let alphabet: &[&[u8]] = &[
        b"\r\n",
        b"\n",
        b"\r",
        b".",
        b"..",
        b"EHLO x",
        b"MAIL FROM:<a@example.net>",
        b"RCPT TO:<b@example.org>",
        b"DATA",
        b"BDAT ",
        b"BDAT 3 LAST",
        b"7",
        b" LAST",
        b"RSET",
        b"STARTTLS",
        b"\xff\xfe",
        b"<>",
        b"SIZE=99999",
        b"QUIT",
        b"x",
    ];
    let mut c = config();
    c.max_errors = 1000;
    c.tls = Some(tls_config());
    for _ in 0..200 {
        let (mut h, _) = Harness::new(c.clone());
        for _ in 0..400 {
            let mut packet = Vec::new();
            for _ in 0..rng.below(8) {
                packet.extend_from_slice(alphabet[rng.below(alphabet.len())]);
            }
            h.send(&packet);
            if h.starttls {
                h.session.tls_started();
                h.starttls = false;
            }
            if h.closed {
                break;
            }
            assert!(h.session.line.len() <= 512);
            if let Some(body) = h.session.tx.as_ref().and_then(|t| t.body.as_ref()) {
                assert!(body.raw.len() <= body.header_len + 1000 + 2);
            }
        }
    }
}
