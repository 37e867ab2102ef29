//! Pure analysis of one raw message: everything the store needs, no I/O.

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};

use mail_parser::decoders::base64::base64_decode;
use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::decoders::html::html_to_text;
use mail_parser::parsers::MessageStream;
use mail_parser::{HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType};
use mailroom_spool::{Envelope, Source};
use mailroom_store::{
    normalize_address, Address, Delivery, MessageFlag, NewAttachment, NewMessage, SpoolEntry,
    ThreadDecision, TicketId,
};
use sha2::{Digest, Sha256};

use crate::Limits;

/// At most this many `References` ids are kept (the first, which names the thread's root, and
/// the newest ones).
const MAX_REFERENCES: usize = 100;
/// Ids longer than this (RFC 5322's line limit) are ignored.
const MAX_ID_LEN: usize = 998;
/// At most this many distinct parse warnings are recorded on one message.
const MAX_WARNINGS: usize = 20;
/// At most this many addresses of a bounced original are kept.
const MAX_BOUNCED_ADDRESSES: usize = 20;
/// Attachment file names are cut to this many bytes.
const MAX_FILENAME_LEN: usize = 255;
/// Retention class of attachments.
const ATTACHMENT_RETENTION: &str = "attachment";

/// Everything [`analyze`] found in one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// The sender: `From`, else `Sender`, else the envelope's reverse path; normalised.
    pub from: Address,
    /// `Subject`, decoded and trimmed (empty if none).
    pub subject: String,
    /// `Message-ID` without angle brackets.
    pub message_id: Option<String>,
    /// `In-Reply-To` ids, without angle brackets.
    pub in_reply_to: Vec<String>,
    /// `References` ids, without angle brackets (oldest first, at most 100).
    pub references: Vec<String>,
    /// For a bounce: the `Message-ID`, `In-Reply-To` and `References` ids of the original
    /// message it carries (from its `message/rfc822` or `text/rfc822-headers` part).
    pub bounced_ids: Vec<String>,
    /// For a bounce: the normalised `From`/`Sender`/`To`/`Cc` addresses of the original
    /// message it carries.
    pub bounced_addresses: Vec<String>,
    /// The ticket number of a `[#N]` tag in the subject.
    pub ticket_tag: Option<TicketId>,
    /// `Date` as Unix seconds, if present and valid.
    pub date: Option<i64>,
    /// Header fields in order, as (name, decoded value); at most `max_header_fields`.
    pub headers: Vec<(String, String)>,
    /// Text body: the inline text/plain parts (HTML ones rendered to text), joined.
    pub text: Option<String>,
    /// The first HTML body part.
    pub html: Option<String>,
    /// Attachments with their decoded bytes (an attached message is one `message/rfc822`
    /// attachment, followed by its own attachments).
    pub attachments: Vec<NewAttachment>,
    /// SHA-256 of the raw message.
    pub content_hash: [u8; 32],
    /// Flags: [`MessageFlag::AutoReply`], [`MessageFlag::Bounce`], [`MessageFlag::Bulk`] and
    /// [`MessageFlag::ParseWarning`]s, in that order.
    pub flags: Vec<MessageFlag>,
}

impl Analysis {
    /// Whether the message was flagged as an auto-reply.
    pub fn is_auto_reply(&self) -> bool {
        self.flags.contains(&MessageFlag::AutoReply)
    }

    /// Whether the message was flagged as a bounce.
    pub fn is_bounce(&self) -> bool {
        self.flags.contains(&MessageFlag::Bounce)
    }

    /// Whether the message was flagged as bulk or list mail.
    pub fn is_bulk(&self) -> bool {
        self.flags.contains(&MessageFlag::Bulk)
    }

    /// Auto-reply, bounce or bulk: mail that must never open a ticket (no ticket loops).
    pub fn is_automatic(&self) -> bool {
        self.is_auto_reply() || self.is_bounce() || self.is_bulk()
    }

    /// The parse warnings, as text.
    pub fn warnings(&self) -> impl Iterator<Item = &str> {
        self.flags.iter().filter_map(|f| match f {
            MessageFlag::ParseWarning { detail } => Some(detail.as_str()),
            _ => None,
        })
    }

    /// All ids this message points at, for threading: `In-Reply-To`, then the ids of a bounced
    /// original, then `References` newest first. No duplicates.
    pub fn thread_ids(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        let candidates = self
            .in_reply_to
            .iter()
            .chain(self.bounced_ids.iter())
            .chain(self.references.iter().rev());
        for id in candidates {
            if Some(id) != self.message_id.as_ref() && !out.contains(&id.as_str()) {
                out.push(id);
            }
        }
        out
    }

    /// Build what [`mailroom_store::Store::commit_message`] takes, from this analysis, the
    /// spool entry's raw bytes and envelope, the thread decision and the message's flags (as
    /// returned by [`crate::decide`]).
    pub fn into_delivery(
        self,
        raw: Vec<u8>,
        envelope: Envelope,
        thread: ThreadDecision,
        flags: Vec<MessageFlag>,
    ) -> Delivery {
        let mut references = self.in_reply_to;
        for id in self.references {
            if !references.contains(&id) {
                references.push(id);
            }
        }
        Delivery {
            from: self.from,
            thread,
            message: NewMessage {
                message_id: self.message_id,
                references,
                subject: self.subject,
                date: self.date,
                headers: self.headers,
                text: self.text,
                html: self.html,
                raw,
                envelope,
                flags,
                content_hash: self.content_hash,
            },
            attachments: self.attachments,
            classification: None,
        }
    }
}

/// Why a message cannot be processed at all. The entry goes to the failed list with this
/// text as its reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not an RFC 5322 message: no header section.
    #[error("not an RFC 5322 message: no header section")]
    NoHeaderSection,
    /// No `From`, no `Sender` and an empty envelope sender.
    #[error("no sender: no From, no Sender and an empty envelope sender")]
    NoSender,
    /// The MIME parser panicked on this message.
    #[error("parser panicked")]
    ParserPanicked,
}

/// Analyze one spooled message. Pure: no I/O, bounded by `limits`.
///
/// Malformed mail is kept with [`MessageFlag::ParseWarning`]s; only a message without a
/// header section or without any sender is a [`Rejection`]. A panic inside the parser is
/// caught and becomes [`Rejection::ParserPanicked`].
pub fn analyze(entry: &SpoolEntry, limits: &Limits) -> Result<Analysis, Rejection> {
    match catch_unwind(AssertUnwindSafe(|| analyze_inner(entry, limits))) {
        Ok(result) => result,
        Err(_) => Err(Rejection::ParserPanicked),
    }
}

fn analyze_inner(entry: &SpoolEntry, limits: &Limits) -> Result<Analysis, Rejection> {
    #[cfg(test)]
    if entry.raw.starts_with(crate::tests::PANIC_MARKER) {
        panic!("test: simulated parser panic");
    }

    let content_hash: [u8; 32] = Sha256::digest(&entry.raw).into();
    let mut warnings = Warnings::default();
    let body = strip_mbox_from_line(&entry.raw);

    // The header section, split by us: each field is parsed on its own, so that a parser
    // quirk in one field can never swallow the next one.
    let fields = Fields::parse(body, limits.max_header_fields);
    if !fields.has_header_section() {
        return Err(Rejection::NoHeaderSection);
    }
    if fields.total > limits.max_header_fields {
        warnings.push(format!(
            "{} header fields: only the first {} were kept",
            fields.total, limits.max_header_fields
        ));
    }
    let from = sender(&fields, &entry.envelope).ok_or(Rejection::NoSender)?;

    // The MIME structure and bodies.
    let parser = MessageParser::default();
    let message = if body.len() > limits.max_message_size {
        warnings.push(format!(
            "message of {} bytes is over the {} byte limit: only its headers were read",
            body.len(),
            limits.max_message_size
        ));
        None
    } else {
        let (input, cut) = bound_mime_parts(body, limits.max_mime_parts);
        if cut {
            warnings.push(format!(
                "more than {} MIME parts: the rest of the message was not read",
                limits.max_mime_parts
            ));
        }
        parser.parse(input).filter(|m| !m.parts.is_empty())
    };

    let headers: Vec<(String, String)> = fields
        .list
        .iter()
        .map(|f| (f.name.clone(), f.text()))
        .collect();
    let subject = fields.text("subject").unwrap_or_default();
    let message_id = fields
        .get("message-id")
        .and_then(|f| f.ids().into_iter().next());
    let in_reply_to = fields
        .get("in-reply-to")
        .map(Field::ids)
        .unwrap_or_default();
    let references = bound_references(fields.get("references").map(Field::ids).unwrap_or_default());
    let ticket_tag = ticket_tag(&subject);

    let date = match fields.get("date").map(parse_date) {
        Some(DateParse::Valid(t)) => Some(t),
        Some(DateParse::Guessed(t)) => {
            warnings.push("Date header is malformed: its time was guessed".to_string());
            Some(t)
        }
        Some(DateParse::Invalid) => {
            warnings.push("Date header could not be parsed".to_string());
            None
        }
        None => {
            warnings.push("no Date header".to_string());
            None
        }
    };

    // Loop and noise signals.
    let null_return_path = null_return_path(&fields, &entry.envelope);
    let precedence = fields
        .text("precedence")
        .map(|p| p.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let bulk_precedence = matches!(precedence.as_str(), "bulk" | "junk" | "list");
    let report_type =
        fields
            .get("content-type")
            .and_then(|f| match f.stream().parse_content_type() {
                HeaderValue::ContentType(ct)
                    if ct.ctype().eq_ignore_ascii_case("multipart")
                        && ct
                            .subtype()
                            .is_some_and(|s| s.eq_ignore_ascii_case("report")) =>
                {
                    Some(
                        ct.attribute("report-type")
                            .unwrap_or_default()
                            .trim()
                            .to_ascii_lowercase(),
                    )
                }
                _ => None,
            });
    let auto_submitted = fields.text("auto-submitted").is_some_and(|v| {
        let v = v.split(';').next().unwrap_or_default().trim();
        !v.eq_ignore_ascii_case("no")
    });
    let auto_reply = auto_submitted
        || fields.get("x-autoreply").is_some()
        || fields.get("x-autorespond").is_some()
        || fields.get("x-auto-response-suppress").is_some()
        || precedence == "auto_reply"
        || report_type.as_deref() == Some("disposition-notification")
        || (looks_automatic(&subject) && (null_return_path || bulk_precedence));
    let bounce = report_type.as_deref() == Some("delivery-status")
        || (null_return_path && is_daemon(&from.address));
    let bulk = bulk_precedence
        || fields.get("list-id").is_some()
        || fields.get("list-unsubscribe").is_some();

    let mut text = None;
    let mut html = None;
    let mut attachments = Vec::new();
    let mut bounced_ids = Vec::new();
    let mut bounced_addresses = Vec::new();
    if let Some(message) = &message {
        // Attachments and MIME warnings, bounded in parts and depth; undecodable parts are
        // repaired where possible.
        let mut walker = Walker {
            limits,
            parts_seen: 0,
            stopped: false,
            too_deep: false,
            closed_boundaries: HashMap::new(),
            warnings,
            attachments: Vec::new(),
            root_texts: HashMap::new(),
        };
        walker.walk(message, 0, true);
        warnings = walker.warnings;
        attachments = walker.attachments;
        let repaired = walker.root_texts;

        // Bodies.
        html = message
            .html_body
            .iter()
            .filter_map(|&id| message.parts.get(id as usize))
            .find_map(|p| match &p.body {
                PartType::Html(h) => Some(h.to_string()),
                _ => None,
            })
            // The first repaired HTML part in document order (not in the map's order, which
            // differs from one run to the next).
            .or_else(|| {
                repaired
                    .iter()
                    .filter(|(_, r)| r.html)
                    .min_by_key(|(id, _)| **id)
                    .map(|(_, r)| r.text.clone())
            });
        let texts: Vec<String> = message
            .text_body
            .iter()
            .take(limits.max_mime_parts)
            .filter_map(|&id| match repaired.get(&id) {
                Some(r) => Some(r.as_text()),
                None => match &message.parts.get(id as usize)?.body {
                    PartType::Text(t) => Some(t.to_string()),
                    PartType::Html(h) => Some(html_to_text(h)),
                    _ => None,
                },
            })
            .collect();
        text = if !texts.is_empty() {
            Some(texts.join("\n"))
        } else if let Some(h) = &html {
            Some(html_to_text(h))
        } else {
            let mut ids: Vec<_> = repaired.keys().copied().collect();
            ids.sort_unstable();
            let recovered: Vec<String> = ids
                .iter()
                .filter_map(|id| repaired.get(id))
                .map(Repaired::as_text)
                .collect();
            (!recovered.is_empty()).then(|| recovered.join("\n"))
        };

        // For a bounce: what it bounces.
        if bounce {
            (bounced_ids, bounced_addresses) = bounced_original(message, limits);
        }
    }

    let mut flags = Vec::new();
    if auto_reply {
        flags.push(MessageFlag::AutoReply);
    }
    if bounce {
        flags.push(MessageFlag::Bounce);
    }
    if bulk {
        flags.push(MessageFlag::Bulk);
    }
    flags.extend(
        warnings
            .take()
            .into_iter()
            .map(|detail| MessageFlag::ParseWarning { detail }),
    );

    Ok(Analysis {
        from,
        subject,
        message_id,
        in_reply_to,
        references,
        bounced_ids,
        bounced_addresses,
        ticket_tag,
        date,
        headers,
        text,
        html,
        attachments,
        content_hash,
        flags,
    })
}

/// One header field as written: its name and its raw value (folded lines included), ending in
/// a line break. Raw 8-bit bytes that are not UTF-8 were read as Windows-1252 (a superset of
/// ISO-8859-1), the usual guess.
struct Field {
    name: String,
    value: String,
}

impl Field {
    fn stream(&self) -> MessageStream<'_> {
        MessageStream::new(self.value.as_bytes())
    }

    /// Unfolded, RFC 2047 words decoded, trimmed.
    fn text(&self) -> String {
        match self.stream().parse_unstructured() {
            HeaderValue::Text(t) => t.trim().to_string(),
            _ => String::new(),
        }
    }

    /// Message ids, without angle brackets.
    fn ids(&self) -> Vec<String> {
        ids_of(&self.stream().parse_id())
    }

    /// The first address with an `@` (or, if `need_at` is false, any non-empty one).
    fn address(&self, need_at: bool) -> Option<Address> {
        let HeaderValue::Address(list) = self.stream().parse_address() else {
            return None;
        };
        let found = list.iter().find_map(|addr| {
            let address = addr.address()?.trim();
            if address.is_empty() || (need_at && !address.contains('@')) {
                return None;
            }
            Some(Address {
                address: normalize_address(address),
                name: addr
                    .name()
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_string),
            })
        });
        found
    }

    /// All addresses with an `@`, normalised.
    fn addresses(&self) -> Vec<String> {
        let HeaderValue::Address(list) = self.stream().parse_address() else {
            return Vec::new();
        };
        list.iter()
            .filter_map(|a| a.address())
            .map(normalize_address)
            .filter(|a| a.contains('@'))
            .collect()
    }
}

/// The header section of a message (or of a `text/rfc822-headers` part).
struct Fields {
    /// The first fields, at most the limit.
    list: Vec<Field>,
    /// How many fields there were.
    total: usize,
}

impl Fields {
    /// Split the header section at the start of `raw` (up to the first empty line) into fields,
    /// keeping at most `max` of them. Lines that are neither a field nor a continuation are
    /// skipped, as the parser does.
    fn parse(raw: &[u8], max: usize) -> Fields {
        let mut list: Vec<Field> = Vec::new();
        let mut total = 0usize;
        let mut current: Option<(String, Vec<u8>)> = None;
        let finish = |current: &mut Option<(String, Vec<u8>)>, list: &mut Vec<Field>| {
            if let Some((name, mut value)) = current.take() {
                if value.last() != Some(&b'\n') {
                    value.push(b'\n');
                }
                let value = match String::from_utf8(value) {
                    Ok(v) => v,
                    Err(e) => windows_1252(e.as_bytes()),
                };
                list.push(Field { name, value });
            }
        };
        for line in raw.split_inclusive(|&b| b == b'\n') {
            if line
                .iter()
                .all(|&b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            {
                break;
            }
            if matches!(line[0], b' ' | b'\t') {
                if let Some((_, value)) = &mut current {
                    value.extend_from_slice(line);
                }
                continue;
            }
            finish(&mut current, &mut list);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let name = trim_end(&line[..colon]);
            if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
                continue;
            }
            total += 1;
            if list.len() < max {
                current = Some((
                    String::from_utf8_lossy(name).into_owned(),
                    line[colon + 1..].to_vec(),
                ));
            }
        }
        finish(&mut current, &mut list);
        Fields { list, total }
    }

    /// Whether there is at least one field other than the trace fields a relay adds in front
    /// of anything (`Received`, `Return-Path`, `Delivered-To`).
    fn has_header_section(&self) -> bool {
        self.list.iter().any(|f| {
            !["received", "return-path", "delivered-to"]
                .iter()
                .any(|t| f.name.eq_ignore_ascii_case(t))
        })
    }

    /// The first field named `name` (case-insensitive).
    fn get(&self, name: &str) -> Option<&Field> {
        self.list.iter().find(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// The decoded value of the first field named `name`.
    fn text(&self, name: &str) -> Option<String> {
        self.get(name).map(Field::text)
    }
}

/// What came of a `Date` header.
enum DateParse {
    /// A valid date, as Unix seconds.
    Valid(i64),
    /// A malformed date that could be read anyway (no time zone: taken as UTC; a two- or
    /// three-digit year), as Unix seconds.
    Guessed(i64),
    /// Unreadable.
    Invalid,
}

fn parse_date(field: &Field) -> DateParse {
    let parsed = |value: &str| match MessageStream::new(value.as_bytes()).parse_date() {
        HeaderValue::DateTime(d) => Some(d),
        _ => None,
    };
    let fix_year = |mut d: mail_parser::DateTime| {
        match d.year {
            0..=49 => d.year += 2000,
            50..=99 => d.year += 1900,
            // A year counted from 1900 (struct tm's tm_year), e.g. "0102" for 2002.
            100..=199 => d.year += 1900,
            _ => {}
        }
        d
    };
    match parsed(&field.value) {
        Some(d) if d.is_valid() => return DateParse::Valid(d.to_timestamp()),
        Some(d) if fix_year(d).is_valid() && d.year < 200 => {
            return DateParse::Guessed(fix_year(d).to_timestamp())
        }
        _ => {}
    }
    // No time zone: read it as UTC.
    let with_zone = format!("{} +0000\n", field.value.trim_end());
    match parsed(&with_zone).map(fix_year) {
        Some(d) if d.is_valid() => DateParse::Guessed(d.to_timestamp()),
        _ => DateParse::Invalid,
    }
}

fn windows_1252(bytes: &[u8]) -> String {
    match charset_decoder(b"windows-1252") {
        Some(decode) => decode(bytes),
        None => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Distinct warnings, at most [`MAX_WARNINGS`].
#[derive(Default)]
struct Warnings {
    list: Vec<String>,
    omitted: usize,
}

impl Warnings {
    fn push(&mut self, w: String) {
        if self.list.contains(&w) {
            return;
        }
        if self.list.len() < MAX_WARNINGS {
            self.list.push(w);
        } else {
            self.omitted += 1;
        }
    }

    fn take(&mut self) -> Vec<String> {
        let mut list = std::mem::take(&mut self.list);
        if self.omitted > 0 {
            list.push(format!("{} more warning(s) omitted", self.omitted));
        }
        list
    }
}

/// Walks the MIME tree of a message (and of the messages attached to it), bounded by the
/// limits, collecting attachments and warnings. It recurses only into attached messages, at
/// most `max_nesting_depth` deep.
struct Walker<'l> {
    limits: &'l Limits,
    parts_seen: usize,
    stopped: bool,
    too_deep: bool,
    /// Closing boundaries found in each distinct raw buffer, keyed by its address and length.
    closed_boundaries: HashMap<(usize, usize), HashSet<Vec<u8>>>,
    warnings: Warnings,
    attachments: Vec<NewAttachment>,
    /// Text parts of the root message that had to be repaired (decoded by us), by part id.
    root_texts: HashMap<u32, Repaired>,
}

/// A text part decoded by us after the parser gave up on it (typically: base64 or
/// quoted-printable text cut off by a missing closing boundary).
struct Repaired {
    html: bool,
    text: String,
}

impl Repaired {
    fn as_text(&self) -> String {
        if self.html {
            html_to_text(&self.text)
        } else {
            self.text.clone()
        }
    }
}

impl Walker<'_> {
    fn walk(&mut self, msg: &Message<'_>, base_depth: usize, root: bool) {
        let depths = part_depths(msg);
        let attachment_ids: HashSet<u32> = msg.attachments.iter().copied().collect();
        for (i, part) in msg.parts.iter().enumerate() {
            if self.parts_seen >= self.limits.max_mime_parts {
                if !self.stopped {
                    self.stopped = true;
                    self.warnings.push(format!(
                        "more than {} MIME parts: the rest of the message was not read",
                        self.limits.max_mime_parts
                    ));
                }
                return;
            }
            self.parts_seen += 1;
            let depth = base_depth + depths.get(i).copied().unwrap_or(0);
            if depth > self.limits.max_nesting_depth {
                self.deep();
                continue;
            }
            let mut repaired = None;
            if part.is_encoding_problem {
                repaired = repair(msg, part);
                if repaired.is_some() {
                    self.warnings.push(
                        "a MIME part was not properly encoded (bad base64 or quoted-printable, \
                         or a missing boundary): decoded what could be"
                            .to_string(),
                    );
                } else {
                    self.warnings.push(
                        "a MIME part could not be decoded as declared (bad base64 or \
                         quoted-printable, or a missing boundary): kept as raw text"
                            .to_string(),
                    );
                }
            }
            if let (Some(bytes), true) = (&repaired, root) {
                if let Some(html) = body_text_kind(part) {
                    self.root_texts.insert(
                        i as u32,
                        Repaired {
                            html,
                            text: decode_charset(part, bytes),
                        },
                    );
                    continue;
                }
            }
            match &part.body {
                PartType::Multipart(_) => {
                    if let Some(boundary) =
                        part.content_type().and_then(|ct| ct.attribute("boundary"))
                    {
                        if !self.is_closed(msg, boundary.as_bytes()) {
                            self.warnings.push(
                                "a multipart has no closing boundary (truncated message?)"
                                    .to_string(),
                            );
                        }
                    }
                }
                PartType::Text(_) | PartType::Html(_) => {
                    if let Some(charset) =
                        part.content_type().and_then(|ct| ct.attribute("charset"))
                    {
                        if !known_charset(charset) {
                            let shown: String = charset.chars().take(40).collect();
                            self.warnings.push(format!(
                                "unknown charset \"{}\": text decoded as UTF-8",
                                shown.escape_default()
                            ));
                        }
                    }
                }
                _ => {}
            }
            if attachment_ids.contains(&(i as u32)) {
                self.attachment(part, depth, repaired);
            }
        }
    }

    fn deep(&mut self) {
        if !self.too_deep {
            self.too_deep = true;
            self.warnings.push(format!(
                "MIME structure nested deeper than {}: deeper parts were skipped",
                self.limits.max_nesting_depth
            ));
        }
    }

    fn attachment(&mut self, part: &MessagePart<'_>, depth: usize, repaired: Option<Vec<u8>>) {
        let filename = part.attachment_name().map(bound_filename);
        match &part.body {
            PartType::Multipart(_) => {}
            PartType::Message(nested) => {
                self.attachments.push(NewAttachment {
                    filename,
                    content_type: "message/rfc822".to_string(),
                    data: part.contents().to_vec(),
                    retention_class: ATTACHMENT_RETENTION.to_string(),
                });
                if nested.parts.is_empty() {
                    return;
                }
                if depth + 1 > self.limits.max_nesting_depth {
                    self.deep();
                } else {
                    self.walk(nested, depth + 1, false);
                }
            }
            body => {
                let default = match body {
                    PartType::Html(_) => "text/html",
                    PartType::Text(_) => "text/plain",
                    _ => "application/octet-stream",
                };
                self.attachments.push(NewAttachment {
                    filename,
                    content_type: content_type_of(part).unwrap_or_else(|| default.to_string()),
                    data: repaired.unwrap_or_else(|| part.contents().to_vec()),
                    retention_class: ATTACHMENT_RETENTION.to_string(),
                });
            }
        }
    }

    fn is_closed(&mut self, msg: &Message<'_>, boundary: &[u8]) -> bool {
        let raw = msg.raw_message.as_ref();
        let key = (raw.as_ptr() as usize, raw.len());
        self.closed_boundaries
            .entry(key)
            .or_insert_with(|| closing_boundaries(raw))
            .contains(boundary)
    }
}

/// Decode a part the parser could not decode (kept raw), with its declared transfer encoding,
/// from its raw bytes. `None` if that fails too.
fn repair(msg: &Message<'_>, part: &MessagePart<'_>) -> Option<Vec<u8>> {
    let raw = msg
        .raw_message
        .get(part.offset_body as usize..part.offset_end as usize)?;
    let cte = part.content_transfer_encoding()?.trim();
    if cte.eq_ignore_ascii_case("base64") {
        lenient_base64(raw)
    } else if cte.eq_ignore_ascii_case("quoted-printable") {
        Some(lenient_quoted_printable(raw))
    } else {
        None
    }
}

/// Base64 up to the first line that is not base64 (e.g. a footer a list appended, or the
/// next part when a boundary is broken). `None` if the first line already is not.
fn lenient_base64(raw: &[u8]) -> Option<Vec<u8>> {
    let mut valid = Vec::with_capacity(raw.len());
    for line in raw.split(|&b| b == b'\n') {
        let line = trim_end(line);
        let line = match line.iter().position(|b| !matches!(b, b' ' | b'\t')) {
            Some(p) => &line[p..],
            None => continue,
        };
        if !line
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        {
            break;
        }
        valid.extend_from_slice(line);
    }
    if valid.is_empty() {
        return None;
    }
    base64_decode(&valid)
}

/// Quoted-printable that never fails: `=XX` is a byte, `=` at a line end a soft break, any
/// other `=` stays as it is.
fn lenient_quoted_printable(raw: &[u8]) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'=' {
            out.push(b);
            i += 1;
            continue;
        }
        match (raw.get(i + 1), raw.get(i + 2)) {
            (Some(b'\n'), _) => i += 2,
            (Some(b'\r'), Some(b'\n')) => i += 3,
            (Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) << 4) | hex(l).unwrap_or(0));
                i += 3;
            }
            _ => {
                out.push(b'=');
                i += 1;
            }
        }
    }
    out
}

/// `Some(is_html)` if the part is body text (text/plain or text/html, or no type, and not
/// marked as an attachment or named).
fn body_text_kind(part: &MessagePart<'_>) -> Option<bool> {
    if part.attachment_name().is_some()
        || part
            .content_disposition()
            .is_some_and(|d| d.is_attachment())
    {
        return None;
    }
    match part.content_type() {
        None => Some(false),
        Some(ct) if ct.ctype().eq_ignore_ascii_case("text") => match ct.subtype() {
            Some(s) if s.eq_ignore_ascii_case("html") => Some(true),
            Some(s) if s.eq_ignore_ascii_case("plain") => Some(false),
            None => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Bytes of a text part to a string, by its declared charset (UTF-8, lossy, if unknown).
fn decode_charset(part: &MessagePart<'_>, bytes: &[u8]) -> String {
    match part
        .content_type()
        .and_then(|ct| ct.attribute("charset"))
        .and_then(|c| charset_decoder(c.trim().as_bytes()))
    {
        Some(decode) => decode(bytes),
        None => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Depth of each part of `msg` below its root (root = 0), following multipart children.
/// Children must come after their parent, which also rules out cycles.
fn part_depths(msg: &Message<'_>) -> Vec<usize> {
    let mut depths = vec![0usize; msg.parts.len()];
    for (i, part) in msg.parts.iter().enumerate() {
        if let PartType::Multipart(children) = &part.body {
            let d = depths[i] + 1;
            for &c in children {
                let c = c as usize;
                if c > i && c < depths.len() {
                    depths[c] = d;
                }
            }
        }
    }
    depths
}

/// The set of boundaries that have a closing delimiter line (`--boundary--`) in `raw`.
fn closing_boundaries(raw: &[u8]) -> HashSet<Vec<u8>> {
    let mut set = HashSet::new();
    for line in raw.split(|&b| b == b'\n') {
        let Some(rest) = line.strip_prefix(b"--") else {
            continue;
        };
        let rest = trim_end(rest);
        if let Some(b) = rest.strip_suffix(b"--") {
            set.insert(b.to_vec());
        }
    }
    set
}

fn trim_end(mut s: &[u8]) -> &[u8] {
    while let [head @ .., last] = s {
        if matches!(last, b' ' | b'\t' | b'\r') {
            s = head;
        } else {
            break;
        }
    }
    s
}

/// Cut `raw` before the `max_parts`-th MIME delimiter line of any boundary declared in it, so
/// that the parser never builds more parts than allowed. Returns the input and whether it was
/// cut.
fn bound_mime_parts(raw: &[u8], max_parts: usize) -> (&[u8], bool) {
    let boundaries = declared_boundaries(raw);
    if boundaries.is_empty() {
        return (raw, false);
    }
    let mut count = 0usize;
    let mut offset = 0usize;
    for line in raw.split(|&b| b == b'\n') {
        let start = offset;
        offset += line.len() + 1;
        let Some(rest) = line.strip_prefix(b"--") else {
            continue;
        };
        let rest = trim_end(rest);
        if boundaries.contains(rest) {
            count += 1;
            if count >= max_parts.max(1) {
                return (&raw[..start], true);
            }
        }
    }
    (raw, false)
}

/// Every `boundary=` parameter value that appears anywhere in `raw`.
fn declared_boundaries(raw: &[u8]) -> HashSet<&[u8]> {
    const KEY: &[u8] = b"boundary=";
    let mut set = HashSet::new();
    let mut i = 0;
    while i + KEY.len() <= raw.len() {
        if !matches!(raw[i], b'b' | b'B') || !raw[i..i + KEY.len()].eq_ignore_ascii_case(KEY) {
            i += 1;
            continue;
        }
        let mut j = i + KEY.len();
        let value = if raw.get(j) == Some(&b'"') {
            j += 1;
            let end = raw[j..]
                .iter()
                .position(|&b| b == b'"' || b == b'\n')
                .map_or(raw.len(), |p| j + p);
            &raw[j..end]
        } else {
            let end = raw[j..]
                .iter()
                .position(|&b| matches!(b, b';' | b' ' | b'\t' | b'\r' | b'\n'))
                .map_or(raw.len(), |p| j + p);
            &raw[j..end]
        };
        if !value.is_empty() && value.len() <= 200 {
            set.insert(value);
        }
        i = j;
    }
    set
}

/// Skip a leading mbox `From ` separator line, if any.
fn strip_mbox_from_line(raw: &[u8]) -> &[u8] {
    if raw.starts_with(b"From ") {
        match raw.iter().position(|&b| b == b'\n') {
            Some(p) => &raw[p + 1..],
            None => &raw[raw.len()..],
        }
    } else {
        raw
    }
}

/// Message ids in a parsed id header, without angle brackets; invalid ones dropped.
fn ids_of(value: &HeaderValue<'_>) -> Vec<String> {
    let raw: Vec<&str> = match value {
        HeaderValue::Text(t) => vec![t.as_ref()],
        HeaderValue::TextList(list) => list.iter().map(|t| t.as_ref()).collect(),
        _ => Vec::new(),
    };
    raw.into_iter().filter_map(clean_id).collect()
}

fn clean_id(id: &str) -> Option<String> {
    let id = id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    (!id.is_empty() && id.len() <= MAX_ID_LEN && !id.chars().any(char::is_whitespace))
        .then(|| id.to_string())
}

/// Keep the first (the thread's root) and the newest `References` ids.
fn bound_references(mut ids: Vec<String>) -> Vec<String> {
    if ids.len() > MAX_REFERENCES {
        let tail = ids.split_off(ids.len() - (MAX_REFERENCES - 1));
        ids.truncate(1);
        ids.extend(tail);
    }
    ids
}

/// The number of the first `[#N]` tag in `subject`.
pub(crate) fn ticket_tag(subject: &str) -> Option<TicketId> {
    let mut rest = subject;
    while let Some(p) = rest.find("[#") {
        let after = &rest[p + 2..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after.as_bytes().get(digits) == Some(&b']') {
            if let Ok(n) = after[..digits].parse::<u64>() {
                if n > 0 {
                    return Some(TicketId(n));
                }
            }
        }
        rest = after;
    }
    None
}

/// The sender: the first address of `From`, else `Sender`, else the envelope's reverse path.
fn sender(fields: &Fields, envelope: &Envelope) -> Option<Address> {
    let from = fields.get("from");
    let sender = fields.get("sender");
    let envelope_sender = || {
        let a = normalize_address(&envelope.mail_from);
        (!a.is_empty()).then_some(Address {
            address: a,
            name: None,
        })
    };
    from.and_then(|f| f.address(true))
        .or_else(|| sender.and_then(|f| f.address(true)))
        .or_else(envelope_sender)
        .or_else(|| from.and_then(|f| f.address(false)))
        .or_else(|| sender.and_then(|f| f.address(false)))
}

/// Whether the message came with a null reverse path: `MAIL FROM:<>` over SMTP, or a
/// `Return-Path: <>` header added by the delivering server.
fn null_return_path(fields: &Fields, envelope: &Envelope) -> bool {
    let smtp_null =
        envelope.source == Source::Smtp && matches!(envelope.mail_from.trim(), "" | "<>");
    let header_null = fields
        .text("return-path")
        .is_some_and(|v| matches!(v.replace(' ', "").as_str(), "" | "<>"));
    smtp_null || header_null
}

fn is_daemon(address: &str) -> bool {
    let local = address.split('@').next().unwrap_or_default();
    matches!(
        local.to_ascii_lowercase().as_str(),
        "mailer-daemon" | "postmaster" | "mailerdaemon" | "mail-daemon"
    )
}

/// Subjects that auto-responders use. Only a hint: never a flag on its own.
fn looks_automatic(subject: &str) -> bool {
    const PATTERNS: &[&str] = &[
        "out of office",
        "out of the office",
        "automatic reply",
        "auto reply",
        "auto-reply",
        "autoreply",
        "auto response",
        "auto-response",
        "autoresponse",
        "automatische antwort",
        "abwesenheitsnotiz",
        "réponse automatique",
        "respuesta automática",
        "on vacation",
        "vacation reply",
    ];
    let s = subject.to_lowercase();
    PATTERNS.iter().any(|p| s.contains(p))
}

fn known_charset(charset: &str) -> bool {
    let c = charset.trim().to_ascii_lowercase().replace('_', "-");
    matches!(c.as_str(), "utf-8" | "utf8" | "us-ascii" | "ascii")
        || charset_decoder(charset.trim().as_bytes()).is_some()
}

fn content_type_of(part: &MessagePart<'_>) -> Option<String> {
    let ct = part.content_type()?;
    let token = |s: &str| {
        let t: String = s
            .trim()
            .chars()
            .filter(|c| c.is_ascii_graphic() && *c != '/')
            .take(100)
            .collect();
        t.to_ascii_lowercase()
    };
    let ctype = token(ct.ctype());
    if ctype.is_empty() {
        return None;
    }
    match ct.subtype().map(token).filter(|s| !s.is_empty()) {
        Some(sub) => Some(format!("{ctype}/{sub}")),
        None => Some(ctype),
    }
}

fn bound_filename(name: &str) -> String {
    if name.len() <= MAX_FILENAME_LEN {
        return name.to_string();
    }
    let mut end = MAX_FILENAME_LEN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// The ids and addresses of the original message embedded in a bounce (its
/// `message/rfc822` or `text/rfc822-headers` part).
fn bounced_original(msg: &Message<'_>, limits: &Limits) -> (Vec<String>, Vec<String>) {
    let mut ids: Vec<String> = Vec::new();
    let mut addresses: Vec<String> = Vec::new();
    for part in msg.parts.iter().take(limits.max_mime_parts) {
        let is_original = matches!(part.body, PartType::Message(_))
            || part.content_type().is_some_and(|ct| {
                ct.subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("rfc822-headers"))
            });
        if !is_original {
            continue;
        }
        let original = Fields::parse(part.contents(), limits.max_header_fields);
        for name in ["message-id", "in-reply-to", "references"] {
            for id in original.get(name).map(Field::ids).unwrap_or_default() {
                if !ids.contains(&id) && ids.len() < MAX_REFERENCES {
                    ids.push(id);
                }
            }
        }
        for name in ["from", "sender", "to", "cc"] {
            for a in original.get(name).map(Field::addresses).unwrap_or_default() {
                if !addresses.contains(&a) && addresses.len() < MAX_BOUNCED_ADDRESSES {
                    addresses.push(a);
                }
            }
        }
    }
    (ids, addresses)
}
