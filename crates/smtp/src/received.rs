//! The `Received:` trace header (RFC 5321 §4.4) and RFC 5322 dates.

use std::fmt::Write as _;
use std::net::IpAddr;

/// The facts that go into one `Received:` header.
pub(crate) struct Trace<'a> {
    /// What the client said in `EHLO`/`HELO`.
    pub helo: &'a str,
    /// The client's IP address.
    pub peer_ip: IpAddr,
    /// Our host name.
    pub hostname: &'a str,
    /// `SMTP`, `ESMTP`, `ESMTPS`, `UTF8SMTP`, `UTF8SMTPS` (RFC 3848, RFC 6531).
    /// (`ESMTPA`/`ESMTPSA` would need AUTH, which we do not offer.)
    pub protocol: &'static str,
    /// Our identifier of the message.
    pub id: &'a str,
    /// The recipient, given only when there is exactly one.
    pub single_rcpt: Option<&'a str>,
    /// When, in seconds since the Unix epoch.
    pub unix_secs: u64,
}

/// The protocol word of the `with` clause.
pub(crate) fn protocol_word(esmtp: bool, tls: bool, smtputf8: bool) -> &'static str {
    match (esmtp, smtputf8, tls) {
        (false, _, _) => "SMTP",
        (true, false, false) => "ESMTP",
        (true, false, true) => "ESMTPS",
        (true, true, false) => "UTF8SMTP",
        (true, true, true) => "UTF8SMTPS",
    }
}

/// Render the header, folded, ending in CRLF.
pub(crate) fn received_header(t: &Trace<'_>) -> String {
    let mut h = String::with_capacity(200);
    h.push_str("Received: from ");
    push_sanitized(&mut h, t.helo);
    match t.peer_ip {
        IpAddr::V4(ip) => {
            let _ = write!(h, " ([{ip}])");
        }
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => {
                let _ = write!(h, " ([{v4}])");
            }
            None => {
                let _ = write!(h, " ([IPv6:{ip}])");
            }
        },
    }
    h.push_str("\r\n\tby ");
    push_sanitized(&mut h, t.hostname);
    let _ = write!(h, " (mailroom) with {} id {}", t.protocol, t.id);
    if let Some(rcpt) = t.single_rcpt {
        h.push_str("\r\n\tfor <");
        push_sanitized(&mut h, rcpt);
        h.push('>');
    }
    h.push_str(";\r\n\t");
    h.push_str(&rfc5322_date(t.unix_secs));
    h.push_str("\r\n");
    h
}

/// Copy client-supplied text into a header, replacing anything that could break the header's
/// syntax (controls, whitespace, comment and angle delimiters) with `?`.
fn push_sanitized(out: &mut String, text: &str) {
    for c in text.chars() {
        let ok = if c.is_ascii() {
            c.is_ascii_graphic() && !matches!(c, '(' | ')' | '<' | '>' | ';' | '\\')
        } else {
            !c.is_control() && !c.is_whitespace()
        };
        out.push(if ok { c } else { '?' });
    }
}

/// An RFC 5322 date-time in UTC, e.g. `Thu, 1 Jan 1970 00:00:00 +0000`.
pub(crate) fn rfc5322_date(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31); Howard Hinnant's algorithm.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_700_000_000),
            "Tue, 14 Nov 2023 22:13:20 +0000"
        );
        assert_eq!(
            rfc5322_date(4_102_444_799),
            "Thu, 31 Dec 2099 23:59:59 +0000"
        );
    }

    #[test]
    fn protocol_words() {
        assert_eq!(protocol_word(false, false, false), "SMTP");
        assert_eq!(protocol_word(true, false, false), "ESMTP");
        assert_eq!(protocol_word(true, true, false), "ESMTPS");
        assert_eq!(protocol_word(true, true, true), "UTF8SMTPS");
    }

    #[test]
    fn header_is_sanitized_and_folded() {
        let h = received_header(&Trace {
            helo: "evil\r\nX-Injected: (yes)",
            peer_ip: "2001:db8::1".parse().unwrap(),
            hostname: "mx.example.org",
            protocol: "ESMTPS",
            id: "abc.1",
            single_rcpt: Some("help@example.org"),
            unix_secs: 0,
        });
        assert_eq!(
            h,
            "Received: from evil??X-Injected:??yes? ([IPv6:2001:db8::1])\r\n\
             \tby mx.example.org (mailroom) with ESMTPS id abc.1\r\n\
             \tfor <help@example.org>;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
        let h = received_header(&Trace {
            helo: "client.example.net",
            peer_ip: "::ffff:192.0.2.7".parse().unwrap(),
            hostname: "mx",
            protocol: "ESMTP",
            id: "x",
            single_rcpt: None,
            unix_secs: 0,
        });
        assert!(h.starts_with("Received: from client.example.net ([192.0.2.7])\r\n"));
        assert!(!h.contains("for <"));
    }
}
