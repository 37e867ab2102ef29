//! Tokenizer: raw RFC 5322 message -> set of hashed features.
//!
//! # Features
//!
//! - Body words (text parts, and HTML parts rendered to text), lowercased. A word is a run of
//!   letters and digits; `. , ' - _ @` are kept between two letters/digits (`e-mail`, `1,000`,
//!   `example.com`, `joe@example.com`), a leading `$` before a digit (`$100`), a trailing `%`
//!   after a digit (`50%`), trailing `!` (`free!!`). Words shorter than 2 characters are dropped;
//!   words longer than [`TokenizerConfig::max_word_len`] become `skip:C:N` (first character,
//!   length rounded down to tens), as SpamBayes does.
//! - Sparse bigrams (OSB): each word paired with each of the `osb_window - 1` words before it,
//!   as `before ~D word` where `D` is the distance (1 = adjacent).
//! - Header tokens prefixed by the lowercased field name: `hdr:NAME` (presence),
//!   `subject:WORD` (and subject OSB pairs), `from:ADDRESS`, `from:@DOMAIN`, `from:WORD` (display
//!   name), likewise `to:`, `cc:`, `reply-to:`, `sender:`, `return-path:`; `received:from:HOST`,
//!   `received:ip:IP`, `received:ip24:A.B.C`, `received:by:HOST`, `received:helo:HOST`,
//!   `received:with:PROTO` plus the raw words of the field as `received:WORD`;
//!   `x-mailer:WHOLE VALUE` and `x-mailer:WORD` (same for `user-agent:`), `message-id:@DOMAIN`,
//!   `date:tz:+HHMM` / `date:invalid`, and `NAME:WORD` for other unstructured fields.
//! - MIME: `content-type:TYPE/SUBTYPE`, `charset:CHARSET`, `content-type:ATTR=VALUE`,
//!   `attachment:NAME`, `attachment-ext:EXT`, `mime:encoding-problem`, `html:TAG`.
//! - URL hosts found in text and HTML (including `href`s): `url:HOST`, `url:REGISTERED.DOMAIN`,
//!   `url:ip` for numeric hosts.
//!
//! Work is bounded: at most [`TokenizerConfig::max_bytes`] raw bytes are parsed, at most
//! [`TokenizerConfig::max_part_bytes`] of each decoded part are read, and at most
//! [`TokenizerConfig::max_tokens`] features are emitted (headers first, then subject, then
//! bodies).
//!
//! # Hash (persisted format)
//!
//! Each feature's text (UTF-8 bytes) is hashed with [`token_hash`]: xxh3-64 with the fixed seed
//! [`TOKEN_HASH_SEED`]. These hashes are the keys of the persisted token counts: the hash
//! function, the seed, and the spelling of the features above must never change without a
//! migration (retraining from the learned messages), or every learned count silently stops
//! matching.

use mail_parser::{
    Address, HeaderName, HeaderValue, Host, Message, MessageParser, MimeHeaders, PartType,
};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of the token hash ("mailroom" in ASCII). Persisted: never change without a migration.
pub const TOKEN_HASH_SEED: u64 = 0x6d61_696c_726f_6f6d;

/// The hash of one feature text: xxh3-64 of its UTF-8 bytes with [`TOKEN_HASH_SEED`].
/// Persisted: never change without a migration.
pub fn token_hash(feature: &str) -> u64 {
    xxh3_64_with_seed(feature.as_bytes(), TOKEN_HASH_SEED)
}

/// Limits and options of the tokenizer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizerConfig {
    /// Maximum number of features emitted per message (duplicates included).
    pub max_tokens: usize,
    /// Maximum raw bytes of a message given to the MIME parser.
    pub max_bytes: usize,
    /// Maximum bytes of one decoded text/HTML part that are read.
    pub max_part_bytes: usize,
    /// OSB window: each word is paired with the `osb_window - 1` words before it (0 or 1: no
    /// pairs).
    pub osb_window: usize,
    /// Longer words are replaced by a `skip:` token.
    pub max_word_len: usize,
    /// Maximum header fields read.
    pub max_headers: usize,
    /// Maximum MIME parts read.
    pub max_parts: usize,
    /// Maximum words taken from one header field.
    pub max_header_words: usize,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        TokenizerConfig {
            max_tokens: 5_000,
            max_bytes: 512 * 1024,
            max_part_bytes: 64 * 1024,
            osb_window: 2,
            max_word_len: 30,
            max_headers: 200,
            max_parts: 64,
            max_header_words: 32,
        }
    }
}

/// The features of one message: a sorted set of token hashes, and (if asked for) the text of
/// each, for explanations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    hashes: Vec<u64>,
    /// (hash, start, end) into `arena`, sorted by hash, first spelling kept.
    spans: Vec<(u64, u32, u32)>,
    arena: String,
    emitted: usize,
    truncated: bool,
}

impl Features {
    /// Builds features from feature texts directly (no MIME parsing), keeping the texts.
    pub fn from_texts<I, S>(texts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut sink = Sink::new(usize::MAX, true);
        for t in texts {
            sink.emit(t.as_ref(), "");
        }
        sink.finish()
    }

    /// The distinct token hashes, sorted ascending.
    pub fn hashes(&self) -> &[u64] {
        &self.hashes
    }

    /// Number of distinct tokens.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// True if the message gave no token.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Features emitted before deduplication.
    pub fn emitted(&self) -> usize {
        self.emitted
    }

    /// True if the token cap ([`TokenizerConfig::max_tokens`]) cut the message short.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The text of a token, if texts were kept ([`Tokenizer::tokenize_with_text`]).
    pub fn text_of(&self, hash: u64) -> Option<&str> {
        let i = self.spans.binary_search_by_key(&hash, |s| s.0).ok()?;
        let (_, a, b) = self.spans[i];
        self.arena.get(a as usize..b as usize)
    }

    /// All kept texts (empty unless texts were kept), in hash order.
    pub fn texts(&self) -> impl Iterator<Item = &str> + '_ {
        self.spans
            .iter()
            .filter_map(|&(_, a, b)| self.arena.get(a as usize..b as usize))
    }
}

/// Collects features: hashes (and texts), bounded.
struct Sink {
    max: usize,
    keep_text: bool,
    hashes: Vec<u64>,
    spans: Vec<(u64, u32, u32)>,
    arena: String,
    buf: String,
    emitted: usize,
    full: bool,
}

impl Sink {
    fn new(max: usize, keep_text: bool) -> Self {
        Sink {
            max,
            keep_text,
            hashes: Vec::with_capacity(max.min(8192)),
            spans: Vec::new(),
            arena: String::new(),
            buf: String::with_capacity(128),
            emitted: 0,
            full: false,
        }
    }

    #[inline]
    fn emit(&mut self, prefix: &str, body: &str) {
        if self.emitted >= self.max {
            self.full = true;
            return;
        }
        self.buf.clear();
        self.buf.push_str(prefix);
        self.buf.push_str(body);
        self.push_buf();
    }

    #[inline]
    fn push_buf(&mut self) {
        if self.emitted >= self.max {
            self.full = true;
            return;
        }
        self.emitted += 1;
        let h = token_hash(&self.buf);
        self.hashes.push(h);
        if self.keep_text {
            let a = self.arena.len();
            self.arena.push_str(&self.buf);
            let b = self.arena.len();
            self.spans.push((h, a as u32, b as u32));
        }
    }

    fn finish(mut self) -> Features {
        self.hashes.sort_unstable();
        self.hashes.dedup();
        // Stable sort keeps the first spelling of each hash first.
        self.spans.sort_by_key(|s| s.0);
        self.spans.dedup_by_key(|s| s.0);
        Features {
            hashes: self.hashes,
            spans: self.spans,
            arena: self.arena,
            emitted: self.emitted,
            truncated: self.full,
        }
    }
}

/// Turns raw messages into [`Features`]. Cheap to clone; holds only its config and the parser.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    cfg: TokenizerConfig,
    parser: MessageParser,
}

impl Default for Tokenizer {
    fn default() -> Self {
        Tokenizer::new(TokenizerConfig::default())
    }
}

impl Tokenizer {
    /// A tokenizer with the given limits.
    pub fn new(cfg: TokenizerConfig) -> Self {
        Tokenizer {
            cfg,
            parser: MessageParser::default(),
        }
    }

    /// The limits in use.
    pub fn config(&self) -> &TokenizerConfig {
        &self.cfg
    }

    /// Hashed features of a raw message (no texts kept: fastest, for training).
    pub fn tokenize(&self, raw: &[u8]) -> Features {
        self.run(raw, false)
    }

    /// Hashed features with their texts kept, for explanations.
    pub fn tokenize_with_text(&self, raw: &[u8]) -> Features {
        self.run(raw, true)
    }

    fn run(&self, raw: &[u8], keep_text: bool) -> Features {
        let mut sink = Sink::new(self.cfg.max_tokens, keep_text);
        let raw = strip_mbox_from_line(raw);
        let raw = &raw[..raw.len().min(self.cfg.max_bytes)];
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            return sink.finish();
        }
        let mut words = WordState::new(self.cfg.osb_window);
        match self.parser.parse(raw) {
            Some(msg) => {
                let mut ctx = Ctx {
                    cfg: &self.cfg,
                    sink: &mut sink,
                    words: &mut words,
                    parts_seen: 0,
                };
                ctx.headers(&msg);
                ctx.message_body(&msg, 0);
            }
            None => {
                let text = String::from_utf8_lossy(raw);
                let text = truncate_str(&text, self.cfg.max_part_bytes);
                let mut ctx = Ctx {
                    cfg: &self.cfg,
                    sink: &mut sink,
                    words: &mut words,
                    parts_seen: 0,
                };
                ctx.text(text, "");
            }
        }
        sink.finish()
    }
}

fn strip_mbox_from_line(raw: &[u8]) -> &[u8] {
    if raw.starts_with(b"From ") {
        match raw.iter().position(|&b| b == b'\n') {
            Some(i) => &raw[i + 1..],
            None => &[],
        }
    } else {
        raw
    }
}

/// Longest prefix of `s` of at most `max` bytes ending on a char boundary.
fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Ring of the last words, for OSB pairs.
struct WordState {
    ring: Vec<String>,
    pos: usize,
    len: usize,
    word: String,
}

impl WordState {
    fn new(window: usize) -> Self {
        let n = window.saturating_sub(1).min(8);
        WordState {
            ring: (0..n).map(|_| String::with_capacity(32)).collect(),
            pos: 0,
            len: 0,
            word: String::with_capacity(64),
        }
    }

    fn reset(&mut self) {
        self.len = 0;
    }
}

struct Ctx<'a> {
    cfg: &'a TokenizerConfig,
    sink: &'a mut Sink,
    words: &'a mut WordState,
    parts_seen: usize,
}

const PAIR_MARKS: [&str; 9] = [
    " ~0 ", " ~1 ", " ~2 ", " ~3 ", " ~4 ", " ~5 ", " ~6 ", " ~7 ", " ~8 ",
];

impl Ctx<'_> {
    /// Emits one finished word (in `self.words.word`) with its OSB pairs.
    fn finish_word(&mut self, prefix: &str, pairs: bool) {
        let ws = &mut *self.words;
        let n = ws.word.chars().count();
        if n < 2 {
            ws.word.clear();
            return;
        }
        if n > self.cfg.max_word_len {
            let first = ws.word.chars().next().unwrap_or('?');
            let sink = &mut *self.sink;
            sink.buf.clear();
            sink.buf.push_str(prefix);
            sink.buf.push_str("skip:");
            sink.buf.push(first);
            sink.buf.push(':');
            push_num(&mut sink.buf, (n / 10 * 10) as u64);
            sink.push_buf();
            ws.word.clear();
            return;
        }
        self.sink.emit(prefix, &ws.word);
        if pairs && !ws.ring.is_empty() {
            let cap = ws.ring.len();
            for (d, mark) in PAIR_MARKS
                .iter()
                .enumerate()
                .take(ws.len.min(cap) + 1)
                .skip(1)
            {
                let idx = (ws.pos + cap - d) % cap;
                let sink = &mut *self.sink;
                sink.buf.clear();
                sink.buf.push_str(prefix);
                sink.buf.push_str(&ws.ring[idx]);
                sink.buf.push_str(mark);
                sink.buf.push_str(&ws.word);
                sink.push_buf();
            }
            let slot = &mut ws.ring[ws.pos];
            slot.clear();
            slot.push_str(&ws.word);
            ws.pos = (ws.pos + 1) % cap;
            ws.len = (ws.len + 1).min(cap);
        }
        ws.word.clear();
    }

    /// Word-tokenizes `text` (with OSB pairs), every token prefixed by `prefix`.
    fn text(&mut self, text: &str, prefix: &str) {
        self.words_of(text, prefix, true, usize::MAX);
    }

    /// Word tokenizer. Emits at most `max_words` words.
    fn words_of(&mut self, text: &str, prefix: &str, pairs: bool, max_words: usize) {
        self.words.reset();
        self.words.word.clear();
        let mut count = 0usize;
        let mut chars = text.chars().peekable();
        let mut prev_alnum = false;
        while let Some(c) = chars.next() {
            if self.sink.full || count >= max_words {
                break;
            }
            let w = &mut self.words.word;
            if c.is_alphanumeric() {
                if c.is_ascii() {
                    w.push(c.to_ascii_lowercase());
                } else {
                    w.extend(c.to_lowercase());
                }
                prev_alnum = true;
                continue;
            }
            let next_alnum = chars.peek().is_some_and(|n| n.is_alphanumeric());
            let keep = match c {
                '.' | ',' | '\'' | '-' | '_' | '@' => prev_alnum && next_alnum,
                '$' => w.is_empty() && chars.peek().is_some_and(|n| n.is_ascii_digit()),
                '%' => w.chars().last().is_some_and(|l| l.is_ascii_digit()),
                '!' => !w.is_empty(),
                '\u{2019}' => prev_alnum && next_alnum,
                _ => false,
            };
            if keep {
                if c == '\u{2019}' {
                    w.push('\'');
                } else {
                    w.push(c);
                }
                prev_alnum = false;
                if c == '%' {
                    self.finish_word(prefix, pairs);
                    count += 1;
                }
                continue;
            }
            prev_alnum = false;
            if !self.words.word.is_empty() {
                self.finish_word(prefix, pairs);
                count += 1;
            }
        }
        if !self.words.word.is_empty() && !self.sink.full && count < max_words {
            self.finish_word(prefix, pairs);
        }
        self.words.word.clear();
    }

    fn headers(&mut self, msg: &Message<'_>) {
        let mut received = 0usize;
        let mut name = String::with_capacity(32);
        let mut prefix = String::with_capacity(40);
        for h in msg.headers().iter().take(self.cfg.max_headers) {
            if self.sink.full {
                return;
            }
            name.clear();
            name.push_str(h.name.as_str());
            name.make_ascii_lowercase();
            self.sink.emit("hdr:", &name);
            prefix.clear();
            prefix.push_str(&name);
            prefix.push(':');
            let max_words = self.cfg.max_header_words;
            match &h.name {
                HeaderName::Subject => {
                    if let Some(t) = h.value.as_text() {
                        self.words_of(t, "subject:", true, max_words);
                        self.words_of(t, "", false, max_words);
                    }
                }
                HeaderName::Received => {
                    received += 1;
                    if received > 8 {
                        continue;
                    }
                    if let Some(r) = h.value.as_received() {
                        self.received(r);
                    }
                    if received <= 4 {
                        let raw = raw_header(msg, h.offset_start, h.offset_end);
                        self.words_of(&raw, "received:", false, max_words);
                    }
                }
                HeaderName::MessageId => {
                    for id in header_texts(&h.value) {
                        if let Some((_, dom)) = id.rsplit_once('@') {
                            let dom = dom.trim_end_matches('>').to_ascii_lowercase();
                            self.sink.emit("message-id:@", truncate_str(&dom, 64));
                        }
                    }
                }
                HeaderName::Date => match &h.value {
                    HeaderValue::DateTime(dt) => {
                        let mut tz = String::with_capacity(6);
                        tz.push(if dt.tz_before_gmt { '-' } else { '+' });
                        push_2d(&mut tz, dt.tz_hour);
                        push_2d(&mut tz, dt.tz_minute);
                        self.sink.emit("date:tz:", &tz);
                    }
                    _ => self.sink.emit("date:", "invalid"),
                },
                HeaderName::References | HeaderName::InReplyTo => {}
                HeaderName::Other(o)
                    if o.eq_ignore_ascii_case("dkim-signature")
                        || o.eq_ignore_ascii_case("domainkey-signature")
                        || o.eq_ignore_ascii_case("x-google-dkim-signature")
                        || o.eq_ignore_ascii_case("arc-seal")
                        || o.eq_ignore_ascii_case("arc-message-signature") => {}
                _ => {
                    let whole = matches!(name.as_str(), "x-mailer" | "user-agent");
                    match &h.value {
                        HeaderValue::Address(a) => self.addresses(a, &prefix),
                        HeaderValue::ContentType(ct) => self.content_type(ct, &prefix),
                        HeaderValue::Received(r) => self.received(r),
                        HeaderValue::DateTime(_) | HeaderValue::Empty => {}
                        v => {
                            for t in header_texts(v) {
                                if whole {
                                    let lower = t.trim().to_lowercase();
                                    self.sink.emit(&prefix, truncate_str(&lower, 60));
                                }
                                self.words_of(t, &prefix, false, max_words);
                            }
                        }
                    }
                }
            }
        }
    }

    fn received(&mut self, r: &mail_parser::Received<'_>) {
        let host = |this: &mut Self, tag: &str, h: &Host<'_>| match h {
            Host::Name(n) => {
                let n = n.to_ascii_lowercase();
                this.sink.emit(tag, truncate_str(&n, 80));
            }
            Host::IpAddr(ip) => this.ip(*ip),
        };
        if let Some(h) = &r.from {
            host(self, "received:from:", h);
        }
        if let Some(h) = &r.helo {
            host(self, "received:helo:", h);
        }
        if let Some(h) = &r.by {
            host(self, "received:by:", h);
        }
        if let Some(ip) = r.from_ip {
            self.ip(ip);
        }
        if let Some(rev) = &r.from_iprev {
            let rev = rev.to_ascii_lowercase();
            self.sink.emit("received:rev:", truncate_str(&rev, 80));
        }
        if let Some(p) = &r.with {
            let p = p.to_string().to_ascii_lowercase();
            self.sink.emit("received:with:", &p);
        }
    }

    fn ip(&mut self, ip: std::net::IpAddr) {
        let s = ip.to_string();
        self.sink.emit("received:ip:", &s);
        if let std::net::IpAddr::V4(v4) = ip {
            let o = v4.octets();
            let p = format!("{}.{}.{}", o[0], o[1], o[2]);
            self.sink.emit("received:ip24:", &p);
        }
    }

    fn addresses(&mut self, a: &Address<'_>, prefix: &str) {
        for addr in a.iter().take(20) {
            if let Some(address) = addr.address() {
                let lower = address.trim().to_lowercase();
                let lower = truncate_str(&lower, 100);
                self.sink.emit(prefix, lower);
                if let Some((_, dom)) = lower.rsplit_once('@') {
                    let mut p = String::with_capacity(prefix.len() + 1);
                    p.push_str(prefix);
                    p.push('@');
                    self.sink.emit(&p, dom);
                }
            }
            if let Some(n) = addr.name() {
                self.words_of(n, prefix, false, 8);
            }
        }
    }

    fn content_type(&mut self, ct: &mail_parser::ContentType<'_>, prefix: &str) {
        let mut t = ct.c_type.to_ascii_lowercase();
        if let Some(s) = &ct.c_subtype {
            t.push('/');
            t.push_str(&s.to_ascii_lowercase());
        }
        self.sink.emit(prefix, truncate_str(&t, 60));
        for attr in ct.attributes.iter().flatten().take(8) {
            let n = attr.name.to_ascii_lowercase();
            match n.as_str() {
                "charset" => {
                    let v = attr.value.to_ascii_lowercase();
                    self.sink.emit("charset:", truncate_str(&v, 40));
                }
                "boundary" | "name" | "filename" => {}
                _ => {
                    let v = format!("{}={}", n, attr.value.to_ascii_lowercase());
                    self.sink.emit(prefix, truncate_str(&v, 60));
                }
            }
        }
    }

    fn message_body(&mut self, msg: &Message<'_>, depth: usize) {
        for part in &msg.parts {
            if self.sink.full || self.parts_seen >= self.cfg.max_parts {
                return;
            }
            self.parts_seen += 1;
            if depth > 0 || !std::ptr::eq(part, &msg.parts[0]) {
                if let Some(ct) = part.content_type() {
                    self.content_type(ct, "content-type:");
                }
            }
            if part.is_encoding_problem {
                self.sink.emit("mime:", "encoding-problem");
            }
            if let Some(name) = part.attachment_name() {
                let lower = name.trim().to_lowercase();
                self.sink.emit("attachment:", truncate_str(&lower, 80));
                if let Some((_, ext)) = lower.rsplit_once('.') {
                    self.sink.emit("attachment-ext:", truncate_str(ext, 12));
                }
            }
            match &part.body {
                PartType::Text(t) => {
                    let t = truncate_str(t, self.cfg.max_part_bytes);
                    self.urls(t);
                    self.text(t, "");
                }
                PartType::Html(h) => {
                    let h = truncate_str(h, self.cfg.max_part_bytes);
                    self.html_tags(h);
                    self.urls(h);
                    let text = mail_parser::decoders::html::html_to_text(h);
                    self.text(&text, "");
                }
                PartType::Binary(_) | PartType::InlineBinary(_) => {
                    if part.attachment_name().is_none() {
                        self.sink.emit("attachment:", "unnamed");
                    }
                }
                PartType::Message(inner) => {
                    if depth < 2 {
                        if let Some(s) = inner.subject() {
                            self.words_of(s, "subject:", true, self.cfg.max_header_words);
                        }
                        self.message_body(inner, depth + 1);
                    }
                }
                PartType::Multipart(_) => {}
            }
        }
    }

    /// `html:TAG` for each tag name (and `html:comment`).
    fn html_tags(&mut self, html: &str) {
        let b = html.as_bytes();
        let mut i = 0;
        let mut name = String::with_capacity(16);
        while let Some(off) = b[i..].iter().position(|&c| c == b'<') {
            if self.sink.full {
                return;
            }
            i += off + 1;
            if b[i..].starts_with(b"!--") {
                self.sink.emit("html:", "comment");
                continue;
            }
            let mut j = i;
            if j < b.len() && b[j] == b'/' {
                j += 1;
            }
            name.clear();
            while j < b.len() && b[j].is_ascii_alphanumeric() && name.len() < 12 {
                name.push(b[j].to_ascii_lowercase() as char);
                j += 1;
            }
            if !name.is_empty() && name.as_bytes()[0].is_ascii_alphabetic() {
                self.sink.emit("html:", &name);
            }
        }
    }

    /// `url:HOST` (and the registered domain) for each `scheme://host` in `text`.
    fn urls(&mut self, text: &str) {
        let b = text.as_bytes();
        let mut i = 0;
        let mut found = 0;
        while let Some(off) = find(&b[i..], b"://") {
            if self.sink.full || found >= 100 {
                return;
            }
            let at = i + off;
            i = at + 3;
            let scheme_ok = (at >= 4 && b[at - 4..at].eq_ignore_ascii_case(b"http"))
                || (at >= 5 && b[at - 5..at].eq_ignore_ascii_case(b"https"))
                || (at >= 3 && b[at - 3..at].eq_ignore_ascii_case(b"ftp"));
            if !scheme_ok {
                continue;
            }
            let rest = &b[i..];
            let end = rest
                .iter()
                .position(|&c| {
                    !(c.is_ascii_alphanumeric() || c == b'.' || c == b'-' || c == b'@' || c == b'_')
                })
                .unwrap_or(rest.len());
            let mut host = &rest[..end];
            if let Some(p) = host.iter().rposition(|&c| c == b'@') {
                host = &host[p + 1..];
            }
            let host = trim_dots(host);
            if host.is_empty() || host.len() > 100 {
                continue;
            }
            found += 1;
            let host = String::from_utf8_lossy(host).to_ascii_lowercase();
            self.sink.emit("url:", &host);
            if host.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
                self.sink.emit("url:", "ip");
                continue;
            }
            let labels: Vec<&str> = host.split('.').collect();
            if labels.len() > 2 {
                let n = labels.len();
                // example.co.uk keeps three labels, example.com two.
                let keep = if labels[n - 1].len() == 2 && labels[n - 2].len() <= 3 {
                    3
                } else {
                    2
                };
                if n > keep {
                    let dom = labels[n - keep..].join(".");
                    self.sink.emit("url:", &dom);
                }
            }
        }
    }
}

fn trim_dots(mut s: &[u8]) -> &[u8] {
    while let [b'.' | b'-', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b'.' | b'-'] = s {
        s = rest;
    }
    s
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header_texts<'a>(v: &'a HeaderValue<'_>) -> Vec<&'a str> {
    match v {
        HeaderValue::Text(t) => vec![t.as_ref()],
        HeaderValue::TextList(l) => l.iter().take(16).map(|t| t.as_ref()).collect(),
        _ => Vec::new(),
    }
}

fn raw_header<'m>(msg: &'m Message<'_>, start: u32, end: u32) -> std::borrow::Cow<'m, str> {
    let bytes = msg
        .raw_message
        .get(start as usize..end as usize)
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes[..bytes.len().min(1024)])
}

fn push_num(s: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        s.push(d as char);
    }
}

fn push_2d(s: &mut String, n: u8) {
    s.push((b'0' + (n / 10) % 10) as char);
    s.push((b'0' + n % 10) as char);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(raw: &str) -> Vec<String> {
        let f = Tokenizer::default().tokenize_with_text(raw.as_bytes());
        f.texts().map(str::to_owned).collect()
    }

    #[test]
    fn word_rules() {
        let t = toks("Subject: x\n\nBuy NOW for $100, save 50%! e-mail joe@example.com 1,000 x.\n");
        for w in [
            "buy",
            "now",
            "$100",
            "50%",
            "e-mail",
            "joe@example.com",
            "1,000",
            "for",
        ] {
            assert!(t.iter().any(|x| x == w), "missing {w} in {t:?}");
        }
        assert!(!t.iter().any(|x| x == "x"), "single letters are dropped");
    }
}
