//! The sans-IO SMTP session: bytes in, replies and [`Action`]s out.
//!
//! A [`Session`] owns no socket and no clock-driven timer. The driver feeds it what it read,
//! writes what [`Session::output`] holds, and carries out the returned [`Action`]. Commands are
//! parsed with `smtp-proto`; message content goes through its `DataReceiver` (dot-unstuffing,
//! end of data only at `<CRLF>.<CRLF>`) and `BdatReceiver`.
//!
//! Framing of command lines is ours rather than `RequestReceiver`'s: that one has a fixed
//! 4096-octet limit and, after an over-long line, parses the rest of that line as a new
//! command. Here the limit is [`SmtpConfig::max_line_length`] and everything up to the next LF
//! is discarded before `500 5.5.2` is sent.

use std::borrow::Cow;
use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mailroom_spool::{Envelope, Source, SpoolError, SpoolId};
use smtp_proto::request::receiver::{BdatReceiver, DataReceiver, DummyDataReceiver};
use smtp_proto::{
    EhloResponse, Error as ParseError, MailFrom, RcptTo, Request, Response, EXT_8BIT_MIME,
    EXT_CHUNKING, EXT_ENHANCED_STATUS_CODES, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8,
    EXT_START_TLS, MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_SMTPUTF8,
};

use crate::config::SmtpConfig;
use crate::memory::{MemoryHold, MessageMemory};
use crate::received::{protocol_word, received_header, Trace};

/// Once this much reply text is waiting, the session stops consuming input until the driver
/// has written it (bounds the output a pipelining client can make us buffer).
const OUTPUT_HIGH_WATER: usize = 16 * 1024;

/// The most memory reserved up front for a message from its `SIZE=` hint.
const MAX_INITIAL_RESERVE: usize = 1024 * 1024;

/// What the driver must do next. In every case it first writes [`Session::output`] to the
/// client and calls [`Session::clear_output`].
#[derive(Debug)]
pub enum Action {
    /// Call [`Session::feed`] again with the input not yet consumed, or, when there is none,
    /// with more input read from the client within [`Session::read_timeout`].
    Read,
    /// Hand this message to the spool, then report the outcome with [`Session::delivered`]
    /// before feeding more input (the `250` is sent only after a durable write).
    Deliver(Box<Delivery>),
    /// Discard any unread input (pipelined plaintext after `STARTTLS` is never honoured),
    /// perform the TLS handshake as server, then call [`Session::tls_started`]; if the
    /// handshake fails, close the connection.
    StartTls,
    /// Close the connection.
    Close,
}

/// An accepted message, ready for the spool.
#[derive(Debug)]
pub struct Delivery {
    /// Envelope and transport facts.
    pub envelope: Envelope,
    /// The message as received, with our `Received:` header prepended.
    pub raw: Vec<u8>,
    /// `raw`'s bytes in the sessions' shared [`MessageMemory`]: keep it until the spool has
    /// stored the message (the store makes its sealed copy meanwhile), then drop it.
    pub hold: MemoryHold,
}

/// A rejection sent once the rest of some content has been read and discarded.
#[derive(Debug, Clone, Copy)]
struct Reject {
    code: u16,
    esc: [u8; 3],
    text: &'static str,
    /// Whether the mail transaction ends with this rejection.
    reset: bool,
}

const TOO_LARGE: Reject = Reject {
    code: 552,
    esc: [5, 3, 4],
    text: "Message size exceeds fixed maximum message size",
    reset: true,
};

/// The sessions' shared [`MessageMemory`] is spent: the sender should retry later.
const NO_MEMORY: Reject = Reject {
    code: 452,
    esc: [4, 3, 1],
    text: "Insufficient system storage, try again later",
    reset: true,
};

const LINE_TOO_LONG: Reject = Reject {
    code: 554,
    esc: [5, 6, 0],
    text: "Message rejected: a line exceeds the maximum line length",
    reset: true,
};

enum Phase {
    /// Reading command lines.
    Command,
    /// Reading DATA content.
    Data(DataReceiver),
    /// Reading a BDAT chunk of which `left` octets remain.
    Bdat { rx: BdatReceiver, left: usize },
    /// Reading and dropping content that is already rejected.
    Discard { rx: DummyDataReceiver, then: Reject },
    /// Waiting for [`Session::delivered`].
    Delivering,
    /// Waiting for [`Session::tls_started`].
    StartingTls,
    /// Done; only [`Action::Close`] remains.
    Closed,
}

struct Transaction {
    mail_from: String,
    smtputf8: bool,
    size_hint: usize,
    rcpt_to: Vec<String>,
    /// Present once DATA or the first BDAT started.
    body: Option<Body>,
}

struct Body {
    /// `Received:` header, then the content.
    raw: Vec<u8>,
    header_len: usize,
    /// Octets of the current, unfinished line.
    line_len: usize,
    long_line: bool,
    /// `raw`'s capacity, in the shared [`MessageMemory`].
    hold: MemoryHold,
}

impl Body {
    fn content_len(&self) -> usize {
        self.raw.len().saturating_sub(self.header_len)
    }

    /// Make room for `additional` octets, growing geometrically but never beyond `limit`.
    /// False, with nothing allocated, when the shared [`MessageMemory`] cannot take it.
    #[must_use]
    fn reserve(&mut self, additional: usize, limit: usize) -> bool {
        let needed = self.raw.len().saturating_add(additional);
        if needed <= self.raw.capacity() {
            return true;
        }
        let target = self.raw.capacity().saturating_mul(2).min(limit).max(needed);
        if !self.hold.grow_to(target) {
            return false;
        }
        self.raw.reserve_exact(target - self.raw.len());
        true
    }

    /// Drop the content (it is refused) and give its memory back.
    fn drop_content(&mut self) {
        self.raw = Vec::new();
        self.hold.release();
    }

    /// Track line lengths over the content appended since `from`.
    fn scan_lines(&mut self, from: usize, max_line: usize) {
        let Some(mut rest) = self.raw.get(from..) else {
            return;
        };
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            if self.line_len + pos + 1 > max_line {
                self.long_line = true;
            }
            self.line_len = 0;
            rest = &rest[pos + 1..];
        }
        self.line_len += rest.len();
        if self.line_len > max_line {
            self.long_line = true;
        }
    }
}

/// One SMTP session, from greeting to close.
pub struct Session {
    config: Arc<SmtpConfig>,
    peer: SocketAddr,
    id: u64,
    tls: bool,
    helo: Option<String>,
    esmtp: bool,
    tx: Option<Transaction>,
    phase: Phase,
    line: Vec<u8>,
    line_overflow: bool,
    errors: usize,
    messages: u64,
    output: Vec<u8>,
    /// Shared by the sessions of one server.
    memory: Arc<MessageMemory>,
}

impl Session {
    /// A new plaintext session with the client at `peer`; `id` identifies it in logs and in
    /// the ids of its messages. The `220` greeting is already in [`Session::output`]. Its
    /// message memory is its own, `config.max_message_memory` bytes; a server's sessions
    /// share one with [`Session::with_memory`].
    pub fn new(config: Arc<SmtpConfig>, peer: SocketAddr, id: u64) -> Self {
        let memory = MessageMemory::new(config.max_message_memory);
        Self::with_memory(config, memory, peer, id)
    }

    /// [`Session::new`], buffering message content in `memory` (shared with other sessions).
    pub fn with_memory(
        config: Arc<SmtpConfig>,
        memory: Arc<MessageMemory>,
        peer: SocketAddr,
        id: u64,
    ) -> Self {
        let mut session = Session {
            config,
            peer,
            id,
            tls: false,
            helo: None,
            esmtp: false,
            tx: None,
            phase: Phase::Command,
            line: Vec::new(),
            line_overflow: false,
            errors: 0,
            messages: 0,
            output: Vec::with_capacity(512),
            memory,
        };
        let greeting = format!("{} ESMTP mailroom ready", session.config.hostname);
        session.reply_plain(220, &greeting);
        session
    }

    /// Replies waiting to be written, in order.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Forget the replies returned by [`Session::output`], once written.
    pub fn clear_output(&mut self) {
        self.output.clear();
    }

    /// Whether message content is being received (DATA, a BDAT chunk, or data being
    /// discarded after an error).
    pub fn receiving_data(&self) -> bool {
        matches!(
            self.phase,
            Phase::Data(_) | Phase::Bdat { .. } | Phase::Discard { .. }
        )
    }

    /// The slowest average rate, bytes per second, message content may arrive at (0: none).
    pub fn min_data_rate(&self) -> u64 {
        self.config.min_data_rate
    }

    /// How long the driver may wait for the next input: the data timeout while message
    /// content is being received, the idle timeout otherwise.
    pub fn read_timeout(&self) -> Duration {
        match self.phase {
            Phase::Data(_) | Phase::Bdat { .. } | Phase::Discard { .. } => self.config.data_timeout,
            _ => self.config.idle_timeout,
        }
    }

    /// Whether part of a command line has arrived but not its end. The driver then keeps the
    /// idle timeout running from when it began waiting for that line, so a client trickling
    /// one byte at a time (slowloris) cannot hold the session open forever.
    pub fn mid_command_line(&self) -> bool {
        matches!(self.phase, Phase::Command) && (!self.line.is_empty() || self.line_overflow)
    }

    /// Whether a mail transaction is under way (from `MAIL` to the reply after its content).
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some() || !matches!(self.phase, Phase::Command | Phase::Closed)
    }

    /// Whether TLS is active.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether the session has ended (the driver should close after writing the output).
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Consume input from the front of `input` and say what to do next.
    pub fn feed(&mut self, input: &mut &[u8]) -> Action {
        loop {
            if self.output.len() >= OUTPUT_HIGH_WATER && !input.is_empty() {
                return Action::Read;
            }
            let phase = std::mem::replace(&mut self.phase, Phase::Command);
            let action = match phase {
                Phase::Closed => {
                    self.phase = Phase::Closed;
                    *input = &[];
                    Some(Action::Close)
                }
                Phase::StartingTls => {
                    self.phase = Phase::StartingTls;
                    *input = &[];
                    Some(Action::StartTls)
                }
                Phase::Delivering => {
                    // The driver fed input before reporting the delivery: a bug, but not a
                    // reason to panic. Give up on this connection.
                    self.close_with(421, [4, 3, 0], "Internal error, closing connection");
                    Some(Action::Close)
                }
                Phase::Command => {
                    if self.take_line(input) {
                        self.command()
                    } else {
                        Some(Action::Read)
                    }
                }
                Phase::Data(rx) => self.data_content(rx, input),
                Phase::Bdat { rx, left } => self.bdat_content(rx, left, input),
                Phase::Discard { rx, then } => self.discard_content(rx, then, input),
            };
            match action {
                Some(Action::StartTls) => {
                    *input = &[];
                    return Action::StartTls;
                }
                Some(action) => return action,
                None => {}
            }
        }
    }

    /// Report the outcome of the [`Action::Deliver`] last returned.
    pub fn delivered(&mut self, result: Result<SpoolId, SpoolError>) {
        if !matches!(self.phase, Phase::Delivering) {
            return;
        }
        self.phase = Phase::Command;
        self.tx = None;
        match result {
            Ok(id) => self.reply(250, [2, 0, 0], format_args!("Message accepted as {id}")),
            Err(SpoolError::Full) => self.reply(
                451,
                [4, 3, 2],
                "Too busy to accept mail now, try again later",
            ),
            Err(SpoolError::Closed | SpoolError::Io(_)) => {
                self.reply(451, [4, 3, 0], "Temporary local problem, try again later")
            }
        }
    }

    /// TLS is now active: start afresh, as RFC 3207 requires (the client must `EHLO` again).
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.helo = None;
        self.esmtp = false;
        self.tx = None;
        self.line.clear();
        self.line_overflow = false;
        if !matches!(self.phase, Phase::Closed) {
            self.phase = Phase::Command;
        }
    }

    /// The client sent nothing within [`Session::read_timeout`]: reply `421 4.4.2`, close.
    pub fn timed_out(&mut self) {
        self.close_with(421, [4, 4, 2], "Timeout exceeded, closing connection");
    }

    /// The server is going down: reply `421 4.3.2`, close.
    pub fn shutting_down(&mut self) {
        self.close_with(421, [4, 3, 2], "Service shutting down, try again later");
    }

    fn close_with(&mut self, code: u16, esc: [u8; 3], text: &str) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        let text = format!("{} {text}", self.config.hostname);
        self.reply(code, esc, text);
        self.tx = None;
        self.phase = Phase::Closed;
    }

    // ----- replies -----

    fn reply(&mut self, code: u16, esc: [u8; 3], text: impl Display) {
        if code >= 400 {
            // Bounded cardinality: the reason is the reply and enhanced code, e.g. `552 5.3.4`.
            metrics::counter!(
                crate::metric_names::REJECTED,
                "reason" => format!("{code} {}.{}.{}", esc[0], esc[1], esc[2])
            )
            .increment(1);
        }
        // Writing into a Vec cannot fail.
        let _ = Response {
            code,
            esc,
            message: text,
        }
        .write(&mut self.output);
    }

    fn reply_plain(&mut self, code: u16, text: &str) {
        self.output.extend_from_slice(code.to_string().as_bytes());
        self.output.push(b' ');
        self.output.extend_from_slice(text.as_bytes());
        self.output.extend_from_slice(b"\r\n");
    }

    /// Reply with a client error and count it; too many end the session.
    fn error(&mut self, code: u16, esc: [u8; 3], text: impl Display) -> Option<Action> {
        self.reply(code, esc, text);
        self.errors += 1;
        if self.errors > self.config.max_errors {
            self.close_with(421, [4, 7, 0], "Too many errors, closing connection");
            return Some(Action::Close);
        }
        None
    }

    // ----- commands -----

    /// Move the next command line (up to and including LF) into `self.line`; false when the
    /// input ran out first. Lines over the limit are dropped and flagged.
    fn take_line(&mut self, input: &mut &[u8]) -> bool {
        let max = self.config.max_line_length;
        match input.iter().position(|&b| b == b'\n') {
            Some(pos) => {
                let (line, rest) = input.split_at(pos + 1);
                *input = rest;
                if !self.line_overflow && self.line.len() + line.len() <= max {
                    self.line.extend_from_slice(line);
                } else {
                    self.line_overflow = true;
                }
                true
            }
            None => {
                if !self.line_overflow {
                    if self.line.len() + input.len() <= max {
                        self.line.extend_from_slice(input);
                    } else {
                        self.line_overflow = true;
                        self.line.clear();
                    }
                }
                *input = &[];
                false
            }
        }
    }

    fn command(&mut self) -> Option<Action> {
        if std::mem::take(&mut self.line_overflow) {
            self.line.clear();
            return self.error(500, [5, 5, 2], "Line too long");
        }
        let line = std::mem::take(&mut self.line);
        let action = match Request::parse(&mut line.iter()) {
            Ok(request) => self.request(request, &line),
            Err(err) => self.parse_error(err),
        };
        self.line = line;
        self.line.clear();
        action
    }

    fn parse_error(&mut self, err: ParseError) -> Option<Action> {
        match err {
            ParseError::UnknownCommand => self.error(500, [5, 5, 1], "Command unrecognized"),
            ParseError::InvalidSenderAddress => {
                self.error(501, [5, 1, 7], "Bad sender address syntax")
            }
            ParseError::InvalidRecipientAddress => {
                self.error(501, [5, 1, 3], "Bad recipient address syntax")
            }
            ParseError::SyntaxError { syntax } => self.error(
                501,
                [5, 5, 2],
                format_args!("Syntax error, expected: {syntax}"),
            ),
            ParseError::InvalidParameter { param } => {
                self.error(501, [5, 5, 4], format_args!("Invalid {param} parameter"))
            }
            ParseError::UnsupportedParameter { .. } => {
                self.error(555, [5, 5, 4], "Unsupported parameter")
            }
            // A complete line never needs more data; an empty line ends up here.
            _ => self.error(500, [5, 5, 2], "Syntax error"),
        }
    }

    fn request(&mut self, request: Request<Cow<'_, str>>, line: &[u8]) -> Option<Action> {
        match request {
            Request::Ehlo { host } => self.hello(&host, true),
            Request::Helo { host } => self.hello(&host, false),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to, line),
            Request::Data => self.data(),
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last),
            Request::Rset => {
                self.tx = None;
                self.reply(250, [2, 0, 0], "Ok");
                None
            }
            Request::Noop { .. } => {
                self.reply(250, [2, 0, 0], "Ok");
                None
            }
            Request::Vrfy { .. } => {
                self.reply(
                    252,
                    [2, 5, 0],
                    "Cannot VRFY user, but will accept message and attempt delivery",
                );
                None
            }
            Request::Help { .. } => {
                self.reply(
                    214,
                    [2, 0, 0],
                    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS",
                );
                None
            }
            Request::Quit => {
                let text = format!("{} closing connection", self.config.hostname);
                self.reply(221, [2, 0, 0], text);
                self.tx = None;
                self.phase = Phase::Closed;
                Some(Action::Close)
            }
            Request::StartTls => self.starttls(),
            Request::Lhlo { .. }
            | Request::Auth { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => self.error(502, [5, 5, 1], "Command not implemented"),
        }
    }

    fn hello(&mut self, host: &str, esmtp: bool) -> Option<Action> {
        self.helo = Some(host.to_string());
        self.esmtp = esmtp;
        self.tx = None;
        if esmtp {
            let mut ehlo = EhloResponse::new(self.config.hostname.as_str());
            ehlo.capabilities = EXT_PIPELINING
                | EXT_SIZE
                | EXT_8BIT_MIME
                | EXT_SMTP_UTF8
                | EXT_ENHANCED_STATUS_CODES
                | EXT_CHUNKING;
            if self.config.tls.is_some() && !self.tls {
                ehlo.capabilities |= EXT_START_TLS;
            }
            ehlo.size = self.config.max_message_size;
            // Writing into a Vec cannot fail.
            let _ = ehlo.write(&mut self.output);
        } else {
            let hostname = self.config.hostname.clone();
            self.reply_plain(250, &hostname);
        }
        None
    }

    fn starttls(&mut self) -> Option<Action> {
        if self.config.tls.is_none() {
            self.error(502, [5, 5, 1], "Command not implemented")
        } else if self.tls {
            self.error(503, [5, 5, 1], "TLS already active")
        } else if self.helo.is_none() {
            self.error(503, [5, 5, 1], "Send EHLO first")
        } else if self.tx.is_some() {
            self.error(503, [5, 5, 1], "Mail transaction in progress")
        } else {
            self.reply(220, [2, 0, 0], "Ready to start TLS");
            self.phase = Phase::StartingTls;
            Some(Action::StartTls)
        }
    }

    fn mail(&mut self, from: MailFrom<Cow<'_, str>>) -> Option<Action> {
        if self.helo.is_none() {
            return self.error(503, [5, 5, 1], "Send EHLO or HELO first");
        }
        if self.tx.is_some() {
            return self.error(503, [5, 5, 1], "Nested MAIL command");
        }
        let supported = MAIL_BODY_7BIT | MAIL_BODY_8BITMIME | MAIL_SMTPUTF8;
        if from.flags & !supported != 0
            || from.trans_id.is_some()
            || from.env_id.is_some()
            || from.solicit.is_some()
            || from.mtrk.is_some()
            || from.auth.is_some()
            || from.by != 0
            || from.hold_for != 0
            || from.hold_until != 0
            || from.mt_priority != 0
        {
            return self.error(555, [5, 5, 4], "Unsupported MAIL FROM parameter");
        }
        if from.size > self.config.max_message_size {
            return self.error(552, [5, 3, 4], TOO_LARGE.text);
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        if from.address.contains(char::REPLACEMENT_CHARACTER) {
            return self.error(501, [5, 1, 7], "Bad sender address syntax");
        }
        if !from.address.is_ascii() && !smtputf8 {
            return self.error(553, [5, 6, 7], "Non-ASCII address requires SMTPUTF8");
        }
        self.tx = Some(Transaction {
            mail_from: from.address.into_owned(),
            smtputf8,
            size_hint: from.size,
            rcpt_to: Vec::new(),
            body: None,
        });
        self.reply(250, [2, 1, 0], "Sender OK");
        None
    }

    fn rcpt(&mut self, to: RcptTo<Cow<'_, str>>, line: &[u8]) -> Option<Action> {
        let Some(tx) = &self.tx else {
            return self.error(503, [5, 5, 1], "Need MAIL command");
        };
        if tx.body.is_some() {
            return self.error(503, [5, 5, 1], "RCPT not allowed after BDAT");
        }
        if to.orcpt.is_some() || to.flags != 0 || to.rrvs != 0 {
            return self.error(555, [5, 5, 4], "Unsupported RCPT TO parameter");
        }
        let mut address = to.address.into_owned();
        if address.is_empty() {
            // smtp-proto reads both `<>` and `<Postmaster>` as empty; RFC 5321 §4.5.1 says
            // the bare postmaster must be accepted: it goes to our first domain's postmaster.
            let is_postmaster = line
                .windows(12)
                .any(|w| w.eq_ignore_ascii_case(b"<postmaster>"));
            match self.config.domains.first() {
                Some(domain) if is_postmaster => address = format!("postmaster@{domain}"),
                _ => return self.error(501, [5, 1, 3], "Bad recipient address syntax"),
            }
        }
        if address.contains(char::REPLACEMENT_CHARACTER) {
            return self.error(501, [5, 1, 3], "Bad recipient address syntax");
        }
        if !address.is_ascii() && !tx.smtputf8 {
            return self.error(553, [5, 6, 7], "Non-ASCII address requires SMTPUTF8");
        }
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
        if !self.config.serves_domain(domain) {
            return self.error(550, [5, 1, 1], "Recipient domain not served here");
        }
        if tx.rcpt_to.contains(&address) {
            self.reply(250, [2, 1, 5], "Recipient OK");
            return None;
        }
        if tx.rcpt_to.len() >= self.config.max_recipients {
            return self.error(452, [4, 5, 3], "Too many recipients");
        }
        if let Some(tx) = &mut self.tx {
            tx.rcpt_to.push(address);
        }
        self.reply(250, [2, 1, 5], "Recipient OK");
        None
    }

    /// Why a DATA or BDAT cannot start now, if it cannot.
    fn content_refusal(&self) -> Option<&'static str> {
        if self.helo.is_none() {
            return Some("Send EHLO or HELO first");
        }
        match &self.tx {
            None => Some("Need MAIL command"),
            Some(tx) if tx.rcpt_to.is_empty() => Some("Need RCPT command"),
            Some(_) => None,
        }
    }

    fn data(&mut self) -> Option<Action> {
        if let Some(why) = self.content_refusal() {
            return self.error(503, [5, 5, 1], why);
        }
        if self.tx.as_ref().is_some_and(|tx| tx.body.is_some()) {
            return self.error(503, [5, 5, 1], "DATA not allowed after BDAT");
        }
        self.start_body();
        let mut rx = DataReceiver::new();
        // The CRLF that ended the DATA command counts as the start of the first line, so a
        // first line of "." ends the data and ".." is unstuffed; DataReceiver starts without
        // it. Prime it (the scratch output is dropped).
        let mut scratch = Vec::new();
        rx.ingest(&mut b"\r\n".iter(), &mut scratch);
        self.reply_plain(354, "Start mail input; end with <CRLF>.<CRLF>");
        self.phase = Phase::Data(rx);
        None
    }

    fn bdat(&mut self, chunk_size: usize, is_last: bool) -> Option<Action> {
        // The chunk follows the command whatever we reply, so it is always read.
        if let Some(why) = self.content_refusal() {
            self.phase = Phase::Discard {
                rx: DummyDataReceiver::new_bdat(chunk_size),
                then: Reject {
                    code: 503,
                    esc: [5, 5, 1],
                    text: why,
                    reset: false,
                },
            };
            return None;
        }
        let max = self.config.max_message_size;
        let content = self
            .tx
            .as_ref()
            .and_then(|tx| tx.body.as_ref())
            .map_or(0, Body::content_len);
        if content.saturating_add(chunk_size) > max {
            self.phase = Phase::Discard {
                rx: DummyDataReceiver::new_bdat(chunk_size),
                then: TOO_LARGE,
            };
            return None;
        }
        if self.tx.as_ref().is_some_and(|tx| tx.body.is_none()) {
            self.start_body();
        }
        if let Some(body) = self.tx.as_mut().and_then(|tx| tx.body.as_mut()) {
            let limit = body.header_len + max;
            if !body.reserve(chunk_size, limit) {
                return self.refuse_content(DummyDataReceiver::new_bdat(chunk_size), NO_MEMORY);
            }
        }
        self.phase = Phase::Bdat {
            rx: BdatReceiver::new(chunk_size, is_last),
            left: chunk_size,
        };
        None
    }

    /// Begin the message: a new id and the `Received:` header.
    fn start_body(&mut self) {
        self.messages += 1;
        let id = format!("{:016x}.{}", self.id, self.messages);
        let Some(tx) = &self.tx else {
            return;
        };
        let header = received_header(&Trace {
            helo: self.helo.as_deref().unwrap_or(""),
            peer_ip: self.peer.ip(),
            hostname: &self.config.hostname,
            protocol: protocol_word(self.esmtp, self.tls, tx.smtputf8),
            id: &id,
            single_rcpt: match tx.rcpt_to.as_slice() {
                [one] => Some(one.as_str()),
                _ => None,
            },
            unix_secs: unix_now(),
        });
        let initial = tx
            .size_hint
            .clamp(4096, MAX_INITIAL_RESERVE)
            .min(self.config.max_message_size.saturating_add(2));
        let mut body = Body {
            header_len: header.len(),
            raw: Vec::new(),
            line_len: 0,
            long_line: false,
            hold: MemoryHold::new(&self.memory),
        };
        // Without room for the initial reservation, the header alone is allocated (a few
        // hundred bytes, not counted): the first content then finds the memory spent, or
        // freed meanwhile.
        let limit = header.len() + initial;
        let _ = body.reserve(header.len() + initial, limit);
        body.raw.extend_from_slice(header.as_bytes());
        if let Some(tx) = &mut self.tx {
            tx.body = Some(body);
        }
    }

    // ----- content -----

    fn data_content(&mut self, mut rx: DataReceiver, input: &mut &[u8]) -> Option<Action> {
        let max = self.config.max_message_size;
        let max_line = self.config.max_line_length;
        let Some(body) = self.tx.as_mut().and_then(|tx| tx.body.as_mut()) else {
            self.close_with(421, [4, 3, 0], "Internal error, closing connection");
            return Some(Action::Close);
        };
        // Content never grows by more than the input fed, so feeding at most this much keeps
        // it within max + 2 octets (+1 for the CR that DataReceiver holds before the final LF).
        let limit = body.header_len.saturating_add(max).saturating_add(2);
        loop {
            let allowance = max
                .saturating_add(2)
                .saturating_sub(body.content_len())
                .max(1);
            let take = input.len().min(allowance);
            if !body.reserve(take, limit) {
                return self.refuse_content(DummyDataReceiver::new_data(&rx), NO_MEMORY);
            }
            let before = body.raw.len();
            let mut chunk = input[..take].iter();
            let done = rx.ingest(&mut chunk, &mut body.raw);
            let used = take - chunk.len();
            *input = &input[used..];
            body.scan_lines(before, max_line);

            if done {
                let reject = if body.content_len() > max {
                    Some(TOO_LARGE)
                } else if body.long_line {
                    Some(LINE_TOO_LONG)
                } else {
                    None
                };
                return match reject {
                    Some(reject) => self.reject_content(reject),
                    None => Some(self.deliver()),
                };
            }
            if body.content_len() > max.saturating_add(1) || body.long_line {
                let then = if body.long_line {
                    LINE_TOO_LONG
                } else {
                    TOO_LARGE
                };
                return self.refuse_content(DummyDataReceiver::new_data(&rx), then);
            }
            if input.is_empty() {
                self.phase = Phase::Data(rx);
                return Some(Action::Read);
            }
        }
    }

    fn bdat_content(
        &mut self,
        mut rx: BdatReceiver,
        left: usize,
        input: &mut &[u8],
    ) -> Option<Action> {
        let max_line = self.config.max_line_length;
        let Some(body) = self.tx.as_mut().and_then(|tx| tx.body.as_mut()) else {
            self.close_with(421, [4, 3, 0], "Internal error, closing connection");
            return Some(Action::Close);
        };
        let before = body.raw.len();
        let mut bytes = input.iter();
        let done = rx.ingest(&mut bytes, &mut body.raw);
        let left = left.saturating_sub(input.len() - bytes.len());
        *input = bytes.as_slice();
        body.scan_lines(before, max_line);
        if body.long_line {
            return self.refuse_content(DummyDataReceiver::new_bdat(left), LINE_TOO_LONG);
        }
        if !done {
            self.phase = Phase::Bdat { rx, left };
            return Some(Action::Read);
        }
        if rx.is_last {
            return Some(self.deliver());
        }
        self.reply(250, [2, 0, 0], "Chunk received");
        None
    }

    /// Refuse the content being received: drop what is buffered (its memory goes back to the
    /// shared pool), read and drop the rest with `rx`, then reply `then`.
    fn refuse_content(&mut self, rx: DummyDataReceiver, then: Reject) -> Option<Action> {
        if let Some(body) = self.tx.as_mut().and_then(|tx| tx.body.as_mut()) {
            body.drop_content();
        }
        self.phase = Phase::Discard { rx, then };
        None
    }

    fn discard_content(
        &mut self,
        mut rx: DummyDataReceiver,
        then: Reject,
        input: &mut &[u8],
    ) -> Option<Action> {
        let mut bytes = input.iter();
        let done = rx.ingest(&mut bytes);
        *input = bytes.as_slice();
        if !done {
            self.phase = Phase::Discard { rx, then };
            return Some(Action::Read);
        }
        self.reject_content(then)
    }

    fn reject_content(&mut self, reject: Reject) -> Option<Action> {
        self.phase = Phase::Command;
        if reject.reset {
            self.tx = None;
        }
        self.error(reject.code, reject.esc, reject.text)
    }

    fn deliver(&mut self) -> Action {
        let Some(tx) = self.tx.take() else {
            self.close_with(421, [4, 3, 0], "Internal error, closing connection");
            return Action::Close;
        };
        let (raw, hold) = match tx.body {
            Some(body) => (body.raw, body.hold),
            None => (Vec::new(), MemoryHold::new(&self.memory)),
        };
        let envelope = Envelope {
            source: Source::Smtp,
            mail_from: tx.mail_from,
            rcpt_to: tx.rcpt_to,
            peer: self.peer.to_string(),
            helo: self.helo.clone().unwrap_or_default(),
            received_at: unix_now(),
            tls: self.tls,
        };
        self.phase = Phase::Delivering;
        Action::Deliver(Box::new(Delivery {
            envelope,
            raw,
            hold,
        }))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
