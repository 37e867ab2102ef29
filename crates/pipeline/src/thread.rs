//! Threading and routing: which ticket a message belongs to.

use mailroom_store::{MessageFlag, Store, ThreadDecision, TicketId};

use crate::{Analysis, PipelineError};

/// At most this many ids of one message are looked up in the store.
const MAX_LOOKUPS: usize = 50;
/// At most this many addresses of a bounced original are checked for participation.
const MAX_PARTICIPANT_CHECKS: usize = 10;

/// How a message claimed its ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// By `In-Reply-To` / `References`.
    Reply,
    /// By the ids of the bounced original it carries (a bounce only).
    Bounced,
    /// By a `[#N]` subject tag.
    Tag,
}

/// Decide where a message goes, and return the decision with the message's flags (the
/// analysis flags plus, when it applies, [`MessageFlag::UnverifiedThread`]).
///
/// Rules, in order:
/// 1. Its ids (`In-Reply-To`, the ids of a bounced original, `References` newest first) are
///    looked up with [`Store::find_message_id`]; the first one that names a message on a
///    ticket claims that ticket.
/// 2. Else its own `Message-ID`, if already stored on a ticket (the same message delivered
///    twice), claims that ticket.
/// 3. Else a `[#N]` subject tag claims ticket N if it exists.
///    The subject text itself is never used.
/// 4. A claim holds only if the sender is a participant of the ticket
///    ([`Store::is_participant`]); for a bounce matched through the original it carries, it
///    also holds if an address of that original (`From`/`To`/`Cc`) is a participant (the
///    sender of a bounce is a mailer daemon, never on the ticket).
/// 5. A held claim appends to the ticket ([`ThreadDecision::Existing`]), flags and all.
///    A claim that does not hold never adds the message to that ticket: an ordinary message
///    opens a new ticket flagged `UnverifiedThread { claimed }` so that an agent sees it; an
///    auto-reply, bounce or bulk message becomes an [`ThreadDecision::Orphan`] with the same
///    flag.
/// 6. No claim: an ordinary message opens a new ticket; an auto-reply, bounce or bulk message
///    becomes an orphan (kept, never a ticket: no ticket loops).
pub fn decide(
    store: &Store,
    analysis: &Analysis,
) -> Result<(ThreadDecision, Vec<MessageFlag>), PipelineError> {
    let mut flags = analysis.flags.clone();
    let automatic = analysis.is_automatic();

    let claim = find_claim(store, analysis)?;
    let decision = match claim {
        Some((ticket, how)) => {
            if verified(store, analysis, ticket, how)? {
                ThreadDecision::Existing(ticket)
            } else {
                tracing::info!(claimed = ticket.0, "sender not on the claimed ticket");
                flags.push(MessageFlag::UnverifiedThread { claimed: ticket });
                if automatic {
                    ThreadDecision::Orphan
                } else {
                    new_ticket(analysis)
                }
            }
        }
        None if automatic => ThreadDecision::Orphan,
        None => new_ticket(analysis),
    };
    Ok((decision, flags))
}

fn find_claim(
    store: &Store,
    analysis: &Analysis,
) -> Result<Option<(TicketId, Claim)>, PipelineError> {
    let ids = analysis.thread_ids();
    for id in ids.into_iter().take(MAX_LOOKUPS) {
        if let Some(found) = store.find_message_id(id)? {
            if let Some(ticket) = found.ticket {
                let how = if analysis.bounced_ids.iter().any(|b| b == id)
                    && !analysis.in_reply_to.iter().any(|r| r == id)
                    && !analysis.references.iter().any(|r| r == id)
                {
                    Claim::Bounced
                } else {
                    Claim::Reply
                };
                return Ok(Some((ticket, how)));
            }
        }
    }
    // The same message delivered twice (e.g. to two of our addresses): with its first copy.
    if let Some(own) = &analysis.message_id {
        if let Some(found) = store.find_message_id(own)? {
            if let Some(ticket) = found.ticket {
                return Ok(Some((ticket, Claim::Reply)));
            }
        }
    }
    if let Some(ticket) = analysis.ticket_tag {
        if store.ticket_exists(ticket)? {
            return Ok(Some((ticket, Claim::Tag)));
        }
    }
    Ok(None)
}

fn verified(
    store: &Store,
    analysis: &Analysis,
    ticket: TicketId,
    how: Claim,
) -> Result<bool, PipelineError> {
    if store.is_participant(ticket, &analysis.from.address)? {
        return Ok(true);
    }
    if how == Claim::Bounced && analysis.is_bounce() {
        for address in analysis
            .bounced_addresses
            .iter()
            .take(MAX_PARTICIPANT_CHECKS)
        {
            if store.is_participant(ticket, address)? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn new_ticket(analysis: &Analysis) -> ThreadDecision {
    ThreadDecision::New {
        subject: strip_subject_noise(&analysis.subject),
    }
}

/// A ticket subject from a message subject: without leading `Re:`/`Fwd:`-style prefixes and
/// without `[#N]` tags (which would name another ticket); `(no subject)` if nothing is left.
pub fn strip_subject_noise(subject: &str) -> String {
    const PREFIXES: &[&str] = &["re", "fw", "fwd", "aw", "wg", "sv", "vs", "tr", "antw"];
    // Drop [#N] tags.
    let mut s = String::with_capacity(subject.len());
    let mut rest = subject;
    while let Some(p) = rest.find("[#") {
        let after = &rest[p + 2..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after.as_bytes().get(digits) == Some(&b']') {
            s.push_str(&rest[..p]);
            rest = &after[digits + 1..];
        } else {
            s.push_str(&rest[..p + 2]);
            rest = after;
        }
    }
    s.push_str(rest);

    // Drop reply/forward prefixes, repeatedly ("Re: Fwd: Re[2]: ...").
    let mut t = s.trim();
    loop {
        let lower = t.to_ascii_lowercase();
        let mut stripped = false;
        for p in PREFIXES {
            if let Some(after) = lower.strip_prefix(p) {
                // Optional "[2]" or "(2)" counter, then ':'.
                let after_counter = after
                    .strip_prefix('[')
                    .and_then(|a| a.split_once(']').map(|(_, r)| r))
                    .or_else(|| {
                        after
                            .strip_prefix('(')
                            .and_then(|a| a.split_once(')').map(|(_, r)| r))
                    })
                    .unwrap_or(after);
                if let Some(r) = after_counter.trim_start().strip_prefix(':') {
                    let cut = t.len() - r.len();
                    t = t[cut..].trim_start();
                    stripped = true;
                    break;
                }
            }
        }
        if !stripped {
            break;
        }
    }
    let t = t.split_whitespace().collect::<Vec<_>>().join(" ");
    if t.is_empty() {
        "(no subject)".to_string()
    } else {
        t
    }
}
