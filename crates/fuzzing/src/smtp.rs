//! `smtp_session`: arbitrary bytes from a client into the sans-IO [`Session`].

use std::sync::{Arc, OnceLock};

use mailroom_smtp::{Action, Session, SmtpConfig};
use mailroom_spool::{SpoolError, SpoolId};

/// The longest reply line RFC 5321 allows (§4.5.3.1.5), CRLF included.
const MAX_REPLY_LINE: usize = 512;

/// Limits small enough for fuzz inputs to reach them.
fn config() -> Arc<SmtpConfig> {
    static CONFIG: OnceLock<Arc<SmtpConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut c = SmtpConfig::new(
                "mx.example.org",
                vec!["example.org".into(), "Help.Example.COM".into()],
            );
            c.max_message_size = 1500;
            c.max_recipients = 4;
            c.max_line_length = mailroom_smtp::MIN_LINE_LENGTH;
            c.max_errors = 8;
            c.tls = Some(crate::tls_config());
            c.validate().expect("fuzz SMTP config is valid");
            Arc::new(c)
        })
        .clone()
}

/// How the client's bytes are cut into reads.
#[derive(Debug, Clone, Copy)]
enum Chunking {
    /// All at once.
    Whole,
    /// One byte per read.
    Bytewise,
    /// One line (up to and including LF) per read.
    Lines,
    /// Reads of 1 to 97 bytes, sizes drawn from a generator seeded by the input.
    Random(u64),
}

impl Chunking {
    fn cut(self, data: &[u8]) -> Vec<&[u8]> {
        match self {
            Chunking::Whole => vec![data],
            Chunking::Bytewise => data.chunks(1).collect(),
            Chunking::Lines => data.split_inclusive(|&b| b == b'\n').collect(),
            Chunking::Random(mut seed) => {
                let mut out = Vec::new();
                let mut rest = data;
                while !rest.is_empty() {
                    // xorshift64
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let n = (1 + seed % 97) as usize;
                    let (a, b) = rest.split_at(n.min(rest.len()));
                    out.push(a);
                    rest = b;
                }
                out
            }
        }
    }
}

/// What a session did, in order, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// One complete reply (one or more lines), with rejections of message content by size
    /// (`552 5.3.4`) and by line length (`554 5.6.0`) written as one (which of the two a
    /// message that breaks both limits gets may depend on how its bytes were cut into reads).
    Reply(Vec<u8>),
    /// A message handed to the spool: envelope and content (after our `Received:`).
    Deliver {
        mail_from: String,
        rcpt_to: Vec<String>,
        helo: String,
        tls: bool,
        content: Vec<u8>,
    },
    StartTls,
    Close,
}

/// The spool's answer to the `n`-th delivery of a session: mostly `Ok`, sometimes full or
/// failing, so that the `451` paths are exercised too.
fn spool_result(n: usize) -> Result<SpoolId, SpoolError> {
    match n % 6 {
        3 => Err(SpoolError::Full),
        5 => Err(SpoolError::Io("fuzz".into())),
        _ => Ok(SpoolId(n as u64 + 1)),
    }
}

/// Feed `data` from a client to a new session, cut into reads in several ways; panic if the
/// session breaks an invariant: every reply is well formed, no delivered message is over the
/// limits (size, line length, recipients, domains), `250` only for a message the spool took,
/// the session is closed after `Close`, and the conversation does not depend on how the bytes
/// were cut into reads (up to the first `STARTTLS`, after which reads differ by design).
pub fn smtp_session(data: &[u8]) {
    let seed = data
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
        .max(1);
    let runs = [
        Chunking::Whole,
        Chunking::Lines,
        Chunking::Random(seed),
        Chunking::Bytewise,
    ]
    .map(|c| (c, run(data, c)));
    let prefix = |events: &[Event]| -> Vec<Event> {
        match events.iter().position(|e| *e == Event::StartTls) {
            Some(i) => events[..=i].to_vec(),
            None => events.to_vec(),
        }
    };
    let (_, first) = &runs[0];
    let expected = prefix(first);
    for (chunking, events) in &runs[1..] {
        let got = prefix(events);
        if got != expected {
            let at = got
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(expected.len()));
            panic!(
                "conversation depends on how the input is cut into reads: {chunking:?} differs \
                 from one read at event {at}: {:?} vs {:?}",
                got.get(at).map(show),
                expected.get(at).map(show)
            );
        }
    }
}

fn show(e: &Event) -> String {
    match e {
        Event::Reply(r) => format!("reply {:?}", String::from_utf8_lossy(r)),
        other => format!("{other:?}"),
    }
}

fn run(data: &[u8], chunking: Chunking) -> Vec<Event> {
    let config = config();
    let peer = "192.0.2.1:40000".parse().expect("address");
    let mut session = Session::new(config.clone(), peer, 0xf022);
    let mut events = Vec::new();
    let greeting = take_replies(&mut session, &mut events);
    assert!(
        greeting.len() == 1 && greeting[0].starts_with(b"220 "),
        "greeting: {greeting:?}"
    );
    let mut deliveries = 0usize;
    let mut tls = false;
    let mut closed = false;
    'reads: for chunk in chunking.cut(data) {
        let mut input = chunk;
        loop {
            let action = session.feed(&mut input);
            take_replies(&mut session, &mut events);
            match action {
                Action::Read => {
                    if input.is_empty() {
                        continue 'reads;
                    }
                }
                Action::Deliver(delivery) => {
                    let content = check_delivery(&config, &delivery, tls);
                    events.push(Event::Deliver {
                        mail_from: delivery.envelope.mail_from.clone(),
                        rcpt_to: delivery.envelope.rcpt_to.clone(),
                        helo: delivery.envelope.helo.clone(),
                        tls: delivery.envelope.tls,
                        content,
                    });
                    let result = spool_result(deliveries);
                    deliveries += 1;
                    let ok = result.is_ok();
                    session.delivered(result);
                    let replies = take_replies(&mut session, &mut events);
                    let code: &[u8] = if ok { b"250 2.0.0 " } else { b"451 4.3." };
                    assert!(
                        replies.len() == 1 && replies[0].starts_with(code),
                        "reply to a delivery (spool ok: {ok}): {:?}",
                        replies
                            .iter()
                            .map(|r| String::from_utf8_lossy(r))
                            .collect::<Vec<_>>()
                    );
                }
                Action::StartTls => {
                    assert!(!tls, "STARTTLS twice");
                    assert!(input.is_empty(), "unread input left after STARTTLS");
                    events.push(Event::StartTls);
                    // The handshake succeeded; the rest of this read is dropped by the driver.
                    session.tls_started();
                    tls = true;
                    assert!(session.is_tls());
                    continue 'reads;
                }
                Action::Close => {
                    events.push(Event::Close);
                    closed = true;
                    break 'reads;
                }
            }
        }
    }
    if closed {
        assert!(
            session.is_closed(),
            "Close returned but the session is open"
        );
        let mut nothing: &[u8] = b"NOOP\r\n";
        assert!(matches!(session.feed(&mut nothing), Action::Close));
        assert!(session.output().is_empty(), "output after close");
    } else {
        // The client stops sending: the driver's timer fires.
        session.timed_out();
        let replies = take_replies(&mut session, &mut Vec::new());
        assert!(
            replies.len() == 1 && replies[0].starts_with(b"421 4.4.2 "),
            "timeout reply: {replies:?}"
        );
        assert!(session.is_closed());
    }
    events
}

/// Take the session's output, check that it is whole, well-formed replies, and log them.
fn take_replies(session: &mut Session, events: &mut Vec<Event>) -> Vec<Vec<u8>> {
    let replies = split_replies(session.output());
    session.clear_output();
    for r in &replies {
        events.push(Event::Reply(normalize(r)));
    }
    replies
}

/// `552 5.3.4 …` and `554 5.6.0 …` (content over a limit) as one event.
fn normalize(reply: &[u8]) -> Vec<u8> {
    if reply.starts_with(b"552 5.3.4 ") || reply.starts_with(b"554 5.6.0 ") {
        b"55x content over a limit\r\n".to_vec()
    } else {
        reply.to_vec()
    }
}

/// Split output into replies, panicking unless it is a sequence of whole, well-formed SMTP
/// replies (RFC 5321 §4.2): lines of `NNN-text` ending in one `NNN text`, each ending in
/// CRLF, at most 512 octets, printable ASCII, the same code on every line of a reply, a code
/// of class 2 to 5, and an enhanced status code (RFC 3463) of the same class when there is one.
fn split_replies(output: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(output);
    assert!(
        output.is_empty() || output.ends_with(b"\r\n"),
        "output does not end a line: {text:?}"
    );
    let mut replies = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut code: Option<&[u8]> = None;
    for line in output.split_inclusive(|&b| b == b'\n') {
        assert!(
            line.len() >= 6 && line.ends_with(b"\r\n"),
            "malformed reply line {:?} in {text:?}",
            String::from_utf8_lossy(line)
        );
        assert!(
            line.len() <= MAX_REPLY_LINE,
            "reply line of {} octets",
            line.len()
        );
        let body = &line[..line.len() - 2];
        assert!(
            body.iter().all(|&b| (0x20..0x7f).contains(&b)),
            "control or non-ASCII octet in reply line {:?}",
            String::from_utf8_lossy(line)
        );
        let (this_code, sep, rest) = (&body[..3], body[3], &body[4..]);
        assert!(
            this_code.iter().all(u8::is_ascii_digit)
                && (b'2'..=b'5').contains(&this_code[0])
                && (sep == b' ' || sep == b'-'),
            "bad reply code or separator in {:?}",
            String::from_utf8_lossy(line)
        );
        if let Some(c) = code {
            assert_eq!(
                c, this_code,
                "code changes inside a multi-line reply: {text:?}"
            );
        }
        if let Some(class) = enhanced_class(rest) {
            assert_eq!(
                class,
                this_code[0],
                "enhanced status code of another class in {:?}",
                String::from_utf8_lossy(line)
            );
        }
        current.extend_from_slice(line);
        if sep == b' ' {
            replies.push(std::mem::take(&mut current));
            code = None;
        } else {
            code = Some(this_code);
        }
    }
    assert!(
        current.is_empty(),
        "multi-line reply left unfinished: {text:?}"
    );
    replies
}

/// The class digit of an enhanced status code `c.sss.ddd ` at the start of `text`, if any.
fn enhanced_class(text: &[u8]) -> Option<u8> {
    let word = text.split(|&b| b == b' ').next()?;
    let mut parts = word.split(|&b| b == b'.');
    let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
    let numeric =
        |p: &[u8], max: usize| !p.is_empty() && p.len() <= max && p.iter().all(u8::is_ascii_digit);
    (parts.next().is_none()
        && class.len() == 1
        && numeric(class, 1)
        && numeric(subject, 3)
        && numeric(detail, 3))
    .then(|| class[0])
}

/// Check an accepted message against the limits; return its content after our `Received:`.
fn check_delivery(config: &SmtpConfig, delivery: &mailroom_smtp::Delivery, tls: bool) -> Vec<u8> {
    let env = &delivery.envelope;
    assert_eq!(env.tls, tls, "envelope's TLS flag");
    assert!(
        !env.rcpt_to.is_empty() && env.rcpt_to.len() <= config.max_recipients,
        "{} recipients",
        env.rcpt_to.len()
    );
    for (i, rcpt) in env.rcpt_to.iter().enumerate() {
        assert!(!env.rcpt_to[..i].contains(rcpt), "duplicate recipient");
        let domain = rcpt.rsplit_once('@').map_or("", |(_, d)| d);
        assert!(
            config.serves_domain(domain),
            "accepted a recipient for a domain not served: {rcpt:?}"
        );
        assert!(
            !rcpt.contains(char::REPLACEMENT_CHARACTER),
            "recipient with U+FFFD: {rcpt:?}"
        );
    }
    let raw = &delivery.raw;
    let header_end = received_end(raw);
    let header = &raw[..header_end];
    assert!(
        header.starts_with(b"Received: from "),
        "message does not start with our Received: header"
    );
    // One header field: CRLF only before a folding tab, no other control characters.
    for (i, &b) in header.iter().enumerate() {
        let ok = match b {
            b'\r' => header.get(i + 1) == Some(&b'\n'),
            b'\n' => {
                i > 0 && header[i - 1] == b'\r' && (i + 1 == header.len() || header[i + 1] == b'\t')
            }
            b'\t' => i > 0 && header[i - 1] == b'\n',
            b => b >= 0x20 && b != 0x7f,
        };
        assert!(
            ok,
            "Received: header is not one well-formed field: {:?}",
            String::from_utf8_lossy(header)
        );
    }
    let content = &raw[header_end..];
    assert!(
        content.len() <= config.max_message_size,
        "accepted {} octets of content, limit {}",
        content.len(),
        config.max_message_size
    );
    for line in content.split_inclusive(|&b| b == b'\n') {
        assert!(
            line.len() <= config.max_line_length,
            "accepted a content line of {} octets, limit {}",
            line.len(),
            config.max_line_length
        );
    }
    content.to_vec()
}

/// The end of our `Received:` header at the start of `raw`: it ends with `;`, CRLF, a tab,
/// the date and CRLF, and the text before that date holds no `;` (client text in it is
/// sanitized). Found this way rather than by where the field ends, because message content
/// whose first line starts with white space continues the field (see the README's
/// "Fuzzing" section).
fn received_end(raw: &[u8]) -> usize {
    let date = raw
        .windows(4)
        .position(|w| w == b";\r\n\t")
        .expect("no date line in the Received: header")
        + 4;
    let end = raw[date..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("no end of the Received: header");
    date + end + 2
}
