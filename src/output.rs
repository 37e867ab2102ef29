//! How the commands print: JSON with `--json`, otherwise plain text for people.

use anyhow::Context;
use mailroom_store::{Counts, FailedEntry, MessageFlag, MessageView, TicketDetail, TicketSummary};
use serde_json::Value;

/// A progress bar (hidden when `quiet`, e.g. with `--json`).
pub fn progress(len: u64, what: &str, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `2026-11-23T21:50:32Z` from Unix seconds.
pub fn timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn flag_text(flag: &MessageFlag) -> String {
    match flag {
        MessageFlag::AutoReply => "auto-reply".into(),
        MessageFlag::Bounce => "bounce".into(),
        MessageFlag::Bulk => "bulk".into(),
        MessageFlag::UnverifiedThread { claimed } => {
            format!(
                "unverified-thread (claimed #{}, sender not on it)",
                claimed.0
            )
        }
        MessageFlag::ParseWarning { detail } => format!("parse-warning: {detail}"),
    }
}

/// `tickets list`.
pub fn tickets_list(value: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(value);
    }
    let tickets: Vec<TicketSummary> =
        serde_json::from_value(value.clone()).context("decoding tickets")?;
    if tickets.is_empty() {
        println!("no tickets");
        return Ok(());
    }
    println!(
        "{:>6}  {:<6}  {:>4}  {:>4}  {:<20}  {:<30}  SUBJECT",
        "ID", "STATUS", "MSGS", "ATT", "CREATED", "REQUESTER"
    );
    for t in tickets {
        let status = match t.status {
            mailroom_store::TicketStatus::Open => "open",
            mailroom_store::TicketStatus::Closed => "closed",
        };
        println!(
            "{:>6}  {:<6}  {:>4}  {:>4}  {:<20}  {:<30}  {}{}{}",
            t.id,
            status,
            t.messages,
            t.attachments,
            timestamp(t.created_at),
            t.requester,
            if t.flagged { "[!] " } else { "" },
            if t.unsure { "[unsure] " } else { "" },
            t.subject
        );
    }
    Ok(())
}

/// Print one message for people: header lines, flags, verdict, attachments, text.
pub fn print_message(m: &MessageView) {
    let from = match &m.from_name {
        Some(name) => format!("{name} <{}>", m.from),
        None => m.from.clone(),
    };
    println!(
        "--- message {} from {from} at {}",
        m.id,
        timestamp(m.received_at)
    );
    println!("    subject: {}", m.subject);
    if let Some(id) = &m.message_id {
        println!("    message-id: <{id}>");
    }
    for flag in &m.flags {
        println!("    flag: {}", flag_text(flag));
    }
    if m.quarantined {
        println!("    quarantined");
    }
    if let Some(c) = &m.classification {
        let tokens: Vec<String> = c
            .clues
            .iter()
            .take(6)
            .map(|k| {
                format!(
                    "{} ({:.2})",
                    k.token.as_deref().unwrap_or("?"),
                    k.probability
                )
            })
            .collect();
        println!(
            "    spam filter: {:?}, score {:.4} ({}); deciding: {}",
            c.verdict,
            c.score,
            c.algorithm,
            tokens.join(", ")
        );
    }
    for a in &m.attachments {
        println!(
            "    attachment: {} ({}, {} bytes, sha256 {}) tags: contact={} ticket={} message={} class={} created={}",
            a.filename.as_deref().unwrap_or("(no name)"),
            a.content_type,
            a.size,
            a.sha256,
            a.tags.contact,
            a.tags.ticket.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
            a.tags.message,
            a.tags.retention_class,
            timestamp(a.tags.created_at),
        );
    }
    if let Some(text) = &m.text {
        println!();
        for line in text.lines().take(200) {
            println!("    {line}");
        }
    }
    println!();
}

/// `tickets show`.
pub fn ticket_show(value: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(value);
    }
    let t: TicketDetail = serde_json::from_value(value.clone()).context("decoding the ticket")?;
    let s = &t.summary;
    println!("ticket #{}: {}", s.id, s.subject);
    println!("requester: {}", s.requester);
    println!(
        "status: {:?}, {} message(s), {} attachment(s), created {}, updated {}",
        s.status,
        s.messages,
        s.attachments,
        timestamp(s.created_at),
        timestamp(s.updated_at)
    );
    println!();
    for m in &t.thread {
        print_message(m);
    }
    Ok(())
}

/// `orphans`.
pub fn orphans(value: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(value);
    }
    let list: Vec<MessageView> =
        serde_json::from_value(value.clone()).context("decoding messages")?;
    if list.is_empty() {
        println!("no orphan messages");
    }
    for m in &list {
        print_message(m);
    }
    Ok(())
}

/// `failed list`.
pub fn failed_list(value: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(value);
    }
    let list: Vec<FailedEntry> =
        serde_json::from_value(value.clone()).context("decoding the failed list")?;
    if list.is_empty() {
        println!("no failed messages");
        return Ok(());
    }
    println!("{:>6}  {:>8}  {:<20}  REASON", "ID", "BYTES", "FAILED");
    for f in list {
        println!(
            "{:>6}  {:>8}  {:<20}  {}",
            f.id,
            f.size,
            timestamp(f.failed_at),
            f.reason
        );
    }
    Ok(())
}

/// `messages raw`: the bytes, unchanged, to stdout.
pub fn raw_message(value: &Value) -> anyhow::Result<()> {
    use base64::Engine;
    use std::io::Write;
    let b64 = value["raw_b64"]
        .as_str()
        .context("no raw_b64 in the answer")?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&raw)?;
    out.flush()?;
    Ok(())
}

/// `failed retry`.
pub fn failed_retry(value: &Value) -> anyhow::Result<()> {
    let n = value.as_array().map(|a| a.len()).unwrap_or(0);
    println!("{n} message(s) put back into the spool");
    Ok(())
}

/// `stats`.
pub fn stats(value: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(value);
    }
    let c: Counts = serde_json::from_value(value.clone()).context("decoding counts")?;
    println!("tickets:  {}", c.tickets);
    println!("messages: {}", c.messages);
    println!("contacts: {}", c.contacts);
    println!("blobs:    {}", c.blobs);
    println!("spool:    {}", c.spool);
    println!("failed:   {}", c.failed);
    Ok(())
}

/// `token list`.
pub fn token_list(value: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(value);
    }
    let list: Vec<mailroom_store::TokenInfo> =
        serde_json::from_value(value.clone()).context("decoding tokens")?;
    if list.is_empty() {
        println!("no tokens");
        return Ok(());
    }
    println!(
        "{:>4}  {:<6}  {:<20}  {:<20}  {:<8}  NAME",
        "ID", "ROLE", "CREATED", "EXPIRES", "STATE"
    );
    for t in list {
        println!(
            "{:>4}  {:<6}  {:<20}  {:<20}  {:<8}  {}",
            t.id,
            t.role.as_str(),
            timestamp(t.created_at),
            t.expires_at
                .map(timestamp)
                .unwrap_or_else(|| "never".into()),
            if t.revoked { "revoked" } else { "active" },
            t.name
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::timestamp;

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(timestamp(1_795_470_632), "2026-11-23T21:50:32Z");
    }
}
