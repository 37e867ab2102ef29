//! `parse_ticket`: raw messages through analysis, threading, classification, routing and the
//! store commit, as the pipeline workers run them.

use std::sync::Mutex;

use mailroom_pipeline::{
    analyze, process_entry, strip_subject_noise, Analysis, Filter, Limits, MessageFlag, Outcome,
    Rejection, Settings,
};
use mailroom_spool::{Envelope, Source, SpoolId};
use mailroom_store::{SpoolEntry, Store, StoreOptions, TicketId};

/// Splits one fuzz input into up to [`MAX_MESSAGES`] messages, processed in order into the
/// same store, so that one input can hold a message and the replies to it.
pub const MESSAGE_SEPARATOR: &[u8] = b"\n=== next message ===\n";

/// Messages taken from one input.
const MAX_MESSAGES: usize = 4;

/// Inputs processed in one store before a fresh one is made (a store per input would cost
/// ~2 ms each; a store for ever would grow without bound). Threading against messages of
/// earlier inputs in the same store is possible and harmless; a finding that needs it is saved
/// as one input holding all the messages.
const INPUTS_PER_STORE: usize = 256;

/// The `Message-ID` of the message that opens ticket 1 in every fresh store, from
/// [`SEED_SENDER`]: seeds reply to it (`In-Reply-To`, or `[#1]` in the subject).
pub const SEED_MESSAGE_ID: &str = "ticket-1@example.org";
/// The requester of ticket 1.
pub const SEED_SENDER: &str = "alice@example.org";

/// One input in this many (of those holding one message) goes through the store as well as
/// through analysis: the store costs ~7x the analysis under the fuzzer's instrumentation.
pub const STORE_ONE_IN: u64 = 4;

/// Limits small enough for fuzz inputs to reach.
const TIGHT: Limits = Limits {
    max_mime_parts: 8,
    max_header_fields: 16,
    max_nesting_depth: 3,
    max_message_size: 4096,
};

struct World {
    // Dropped in this order: the store before its directory.
    store: Store,
    settings: Settings,
    inputs: usize,
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = crate::store_dir();
        // The default page cache (16 MiB) is small enough for a fuzzer's many iterations.
        let store = Store::open(dir.path(), StoreOptions::default()).expect("store opens");
        let filter = Filter::default();
        let items: Vec<_> = crate::training_set()
            .iter()
            .enumerate()
            .map(|(i, (label, raw))| {
                let mut fingerprint = [0u8; 32];
                fingerprint[..8].copy_from_slice(&(i as u64).to_be_bytes());
                (filter.tokenizer().tokenize(raw), fingerprint, *label, None)
            })
            .collect();
        store
            .filter_train_batch(filter.classifier(), &items, 20_000)
            .expect("training");
        let settings = Settings {
            limits: Limits::default(),
            filter: Some(filter),
        };
        let mut world = World {
            store,
            settings,
            inputs: 0,
            _dir: dir,
        };
        let seed = format!(
            "From: Alice <{SEED_SENDER}>\r\nTo: help@example.org\r\nSubject: Printer on fire\r\n\
             Message-ID: <{SEED_MESSAGE_ID}>\r\nDate: Mon, 3 Mar 2025 10:00:00 +0000\r\n\r\n\
             The printer on the third floor is on fire.\r\n"
        );
        let analysis = checked_analysis(
            seed.as_bytes(),
            &envelope(seed.as_bytes(), 0),
            &world.settings.limits,
        );
        match world.process(seed.as_bytes(), 0, analysis) {
            Outcome::NewTicket { ticket, .. } => assert_eq!(ticket, TicketId(1)),
            other => panic!("the seed message did not open ticket 1: {other:?}"),
        }
        world
    }

    /// Spool `raw` and process it as a worker would; check what became of it.
    fn process(
        &mut self,
        raw: &[u8],
        index: usize,
        analysis: Result<Analysis, Rejection>,
    ) -> Outcome {
        let envelope = envelope(raw, index);
        let id = self
            .store
            .spool_append_blocking(envelope, raw.to_vec())
            .expect("spool append");
        let processed = process_entry(&self.store, id, &self.settings).expect("process_entry");
        assert_eq!(processed.spool_id, id);
        assert_eq!(self.store.spool_len(), 0, "the spool entry is still there");
        let outcome = processed.outcome;
        check_outcome(&self.store, raw, &analysis, &outcome);
        outcome
    }
}

/// The envelope of the `index`-th message of an input: from a null reverse path (as bounces
/// are) for some messages, so that senders found only in the envelope are exercised too.
fn envelope(raw: &[u8], index: usize) -> Envelope {
    let null_sender = (raw.len() + index) % 4 == 3;
    Envelope {
        source: Source::Smtp,
        mail_from: if null_sender {
            String::new()
        } else {
            "sender@example.net".to_string()
        },
        rcpt_to: vec!["help@example.org".to_string()],
        peer: "192.0.2.1:25".to_string(),
        helo: "client.example.net".to_string(),
        received_at: 1_741_000_000,
        tls: false,
    }
}

fn world() -> &'static Mutex<Option<World>> {
    static WORLD: Mutex<Option<World>> = Mutex::new(None);
    &WORLD
}

/// Drop the world and its store (see [`crate::reset`]).
pub(crate) fn reset() {
    *world().lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Analyze each message of `data` (split at [`MESSAGE_SEPARATOR`]) with the default and with
/// tight limits; then, for an input of several messages and for one in [`STORE_ONE_IN`] of the
/// others (chosen by a hash of the input, so the choice is the same every time), spool each
/// message and process it into a store (threading, the spam filter trained on 24 corpus
/// messages, routing, the commit). Check: no panic, no error from the pipeline or the store,
/// everything the analysis returns within the limits and within a constant factor of the
/// message's size, the same analysis twice over, automatic mail (auto-replies, bounces, list
/// mail) never opening a ticket, and what was stored reading back as it went in.
pub fn parse_ticket(data: &[u8]) {
    let messages: Vec<&[u8]> = split(data);
    let mut analyses = Vec::with_capacity(messages.len());
    for (i, raw) in messages.iter().enumerate() {
        let envelope = envelope(raw, i);
        let _ = checked_analysis(raw, &envelope, &TIGHT);
        let analysis = checked_analysis(raw, &envelope, &Limits::default());
        let again = analyze(&entry(raw, &envelope), &Limits::default());
        assert!(again == analysis, "two analyses of one message differ");
        analyses.push(analysis);
    }
    if messages.len() == 1 && !fnv1a(data).is_multiple_of(STORE_ONE_IN) {
        return;
    }
    let mut guard = world().lock().unwrap_or_else(|e| e.into_inner());
    if guard.as_ref().is_none_or(|w| w.inputs >= INPUTS_PER_STORE) {
        *guard = None;
        *guard = Some(World::new());
    }
    let Some(world) = guard.as_mut() else {
        unreachable!("the world was just made")
    };
    world.inputs += 1;
    for (i, (raw, analysis)) in messages.iter().zip(analyses).enumerate() {
        world.process(raw, i, analysis);
    }
}

/// FNV-1a, 64 bits.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() + 1 < MAX_MESSAGES {
        match rest
            .windows(MESSAGE_SEPARATOR.len())
            .position(|w| w == MESSAGE_SEPARATOR)
        {
            Some(p) => {
                out.push(&rest[..p]);
                rest = &rest[p + MESSAGE_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    out
}

fn entry(raw: &[u8], envelope: &Envelope) -> SpoolEntry {
    SpoolEntry {
        id: SpoolId(1),
        envelope: envelope.clone(),
        raw: raw.to_vec(),
    }
}

/// `analyze`, with its output checked against `limits`.
fn checked_analysis(
    raw: &[u8],
    envelope: &Envelope,
    limits: &Limits,
) -> Result<Analysis, Rejection> {
    let a = match analyze(&entry(raw, envelope), limits) {
        Err(Rejection::ParserPanicked) => {
            panic!("the MIME parser panicked (analyze caught it and would fail the message)")
        }
        other => other?,
    };
    assert!(!a.from.address.is_empty(), "empty sender");
    assert!(
        a.headers.len() <= limits.max_header_fields,
        "{} header fields kept, limit {}",
        a.headers.len(),
        limits.max_header_fields
    );
    assert!(
        a.references.len() <= 100,
        "{} references",
        a.references.len()
    );
    assert!(a.bounced_addresses.len() <= 20, "bounced addresses");
    let ids = a
        .message_id
        .iter()
        .chain(&a.in_reply_to)
        .chain(&a.references)
        .chain(&a.bounced_ids);
    for id in ids {
        assert!(
            !id.is_empty() && id.len() <= 998 && !id.chars().any(char::is_whitespace),
            "bad message id {id:?}"
        );
    }
    assert!(
        a.warnings().count() <= 21,
        "{} warnings",
        a.warnings().count()
    );
    for att in &a.attachments {
        if let Some(name) = &att.filename {
            assert!(name.len() <= 255, "attachment name of {} bytes", name.len());
        }
    }
    // Memory: what the analysis holds grows at most linearly with the message (decoding can
    // widen text up to 3x, and each level of attached message is kept whole as well as parsed).
    let held = a.subject.len()
        + a.text.as_ref().map_or(0, String::len)
        + a.html.as_ref().map_or(0, String::len)
        + a.headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>()
        + a.attachments
            .iter()
            .map(|x| {
                x.data.len() + x.filename.as_ref().map_or(0, String::len) + x.content_type.len()
            })
            .sum::<usize>();
    let factor = 16 + 4 * (limits.max_nesting_depth + 1);
    assert!(
        held <= raw.len() * factor + 64 * 1024,
        "analysis of a {}-byte message holds {held} bytes (more than {factor}x)",
        raw.len()
    );
    Ok(a)
}

fn check_outcome(
    store: &Store,
    raw: &[u8],
    analysis: &Result<Analysis, Rejection>,
    outcome: &Outcome,
) {
    let stored = match (outcome, analysis) {
        (Outcome::Failed { reason, .. }, Err(rejection)) => {
            assert_eq!(*reason, rejection.to_string());
            return;
        }
        (Outcome::Failed { reason, .. }, Ok(_)) => {
            panic!("failed ({reason}) although the analysis succeeded")
        }
        (_, Err(rejection)) => panic!("stored ({outcome:?}) although rejected ({rejection})"),
        (Outcome::AlreadyProcessed, _) => panic!("a new spool entry was already processed"),
        (_, Ok(a)) => a,
    };
    let automatic = stored.is_automatic();
    match outcome {
        Outcome::NewTicket {
            ticket,
            message,
            flags,
        } => {
            assert!(
                !automatic,
                "automatic mail opened ticket {ticket:?}: {flags:?}"
            );
            let detail = store
                .ticket(*ticket)
                .expect("ticket read")
                .expect("ticket exists");
            assert_eq!(detail.thread.len(), 1, "a new ticket holds one message");
            let view = &detail.thread[0];
            assert_eq!(view.id, message.0);
            assert_eq!(detail.summary.subject, strip_subject_noise(&stored.subject));
            assert_eq!(detail.summary.requester, stored.from.address);
            assert_eq!(view.from, stored.from.address);
            assert_eq!(view.subject, stored.subject);
            assert_eq!(view.message_id, stored.message_id);
            assert_eq!(view.text, stored.text);
            assert_eq!(view.attachments.len(), stored.attachments.len());
            assert_eq!(&view.flags, flags);
        }
        Outcome::Appended { ticket, flags, .. } => {
            assert!(store.ticket_exists(*ticket).expect("ticket read"));
            assert!(
                !flags
                    .iter()
                    .any(|f| matches!(f, MessageFlag::UnverifiedThread { .. })),
                "appended although unverified"
            );
        }
        Outcome::Orphan { flags, .. } => {
            assert!(automatic, "ordinary mail kept as an orphan: {flags:?}");
        }
        Outcome::Quarantined { message, .. } => {
            let view = store
                .quarantine_get(*message)
                .expect("quarantine read")
                .expect("in the quarantine");
            assert_eq!(view.subject, stored.subject);
            assert_eq!(view.text, stored.text);
        }
        Outcome::Failed { .. } | Outcome::AlreadyProcessed => unreachable!("handled above"),
    }
    let message = match outcome {
        Outcome::NewTicket { message, .. }
        | Outcome::Appended { message, .. }
        | Outcome::Orphan { message, .. }
        | Outcome::Quarantined { message, .. } => *message,
        Outcome::Failed { .. } | Outcome::AlreadyProcessed => unreachable!("handled above"),
    };
    let back = store.message_raw(message).expect("raw read");
    assert!(
        back.as_deref() == Some(raw),
        "the raw message does not read back as it went in"
    );
}
