//! Semantic checks on a deserialized [`Config`], and the wording of serde's errors.

use std::collections::HashSet;
use std::fmt::Display;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use toml::de::{DeTable, DeValue};

use crate::{locate, Config, ErrorKind};

/// One thing wrong with a config, found after it was deserialized.
#[derive(Debug)]
pub(crate) struct Problem {
    /// Dotted key path, such as `smtp.max_message_size` or `imap[0].port`.
    pub(crate) key: String,
    /// For array values, the element at fault.
    pub(crate) index: Option<usize>,
    pub(crate) message: String,
}

impl Problem {
    /// Byte offset of the offending value (or array element) in the document, if the
    /// document has the key; else that of its section header.
    pub(crate) fn locate(&self, doc: &DeTable<'_>) -> Option<usize> {
        let path: Vec<&str> = self.key.split('.').collect();
        if let Some(value) = locate::value_at(doc, &path) {
            if let (Some(i), DeValue::Array(items)) = (self.index, value.get_ref()) {
                if let Some(item) = items.get(i) {
                    return Some(item.span().start);
                }
            }
            return Some(value.span().start);
        }
        // A key missing from an array-of-tables element (`imap[0].host`): the element.
        if let Some(element) = path.len().checked_sub(1).filter(|&n| n > 0) {
            if let Some(value) = locate::value_at(doc, &path[..element]) {
                return Some(value.span().start);
            }
        }
        locate::key_span_at(doc, &path[..1]).map(|s| s.start)
    }
}

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn fail(&mut self, key: &'static str, index: Option<usize>, message: String) {
        self.problems.push(Problem {
            key: key.to_owned(),
            index,
            message,
        });
    }

    fn range<T: PartialOrd + Display + Copy>(
        &mut self,
        key: &'static str,
        value: T,
        min: T,
        max: T,
    ) {
        if value < min {
            self.fail(key, None, format!("must be at least {min} (got {value})"));
        } else if value > max {
            self.fail(key, None, format!("must be at most {max} (got {value})"));
        }
    }

    fn path(&mut self, key: &'static str, path: &Path) {
        if path.as_os_str().is_empty() {
            self.fail(key, None, "must not be empty".to_owned());
        }
    }
}

const MIB: usize = 1024 * 1024;

/// Every problem with `config`, in no particular order.
pub(crate) fn check(config: &Config) -> Vec<Problem> {
    let mut c = Checker {
        problems: Vec::new(),
    };

    let store = &config.store;
    c.path("store.path", &store.path);
    c.range(
        "store.spool_max_entries",
        store.spool_max_entries,
        1,
        10_000_000,
    );
    c.range(
        "store.spool_key_lifetime_hours",
        store.spool_key_lifetime_hours,
        1,
        720,
    );

    let retention = &config.retention;
    c.range(
        "retention.quarantine_days",
        retention.quarantine_days,
        0,
        36_500,
    );
    c.range(
        "retention.closed_ticket_days",
        retention.closed_ticket_days,
        0,
        36_500,
    );
    c.range(
        "retention.attachment_days",
        retention.attachment_days,
        0,
        36_500,
    );
    c.range("retention.audit_days", retention.audit_days, 0, 36_500);
    c.range(
        "retention.sweep_minutes",
        retention.sweep_minutes,
        1,
        10_080,
    );

    let smtp = &config.smtp;
    if smtp.listen.is_empty() {
        c.fail(
            "smtp.listen",
            None,
            "must list at least one address".to_owned(),
        );
    }
    let mut seen = HashSet::new();
    for (i, addr) in smtp.listen.iter().enumerate() {
        if !seen.insert(addr) {
            c.fail("smtp.listen", Some(i), format!("`{addr}` is listed twice"));
        }
    }
    if smtp.hostname.is_empty() {
        c.fail("smtp.hostname", None, "must not be empty".to_owned());
    } else if !is_domain(&smtp.hostname) && !is_address_literal(&smtp.hostname) {
        c.fail(
            "smtp.hostname",
            None,
            format!(
                "`{}` is not a valid host name (letters, digits, `-` and `.`, or an address \
                 literal such as `[192.0.2.1]`)",
                smtp.hostname.escape_debug()
            ),
        );
    }
    if smtp.domains.is_empty() {
        c.fail(
            "smtp.domains",
            None,
            "must list at least one domain".to_owned(),
        );
    }
    let mut seen = HashSet::new();
    for (i, domain) in smtp.domains.iter().enumerate() {
        if !is_domain(domain) {
            c.fail(
                "smtp.domains",
                Some(i),
                format!(
                    "`{}` is not a valid domain (ASCII letters, digits, `-` and `.`; \
                     write international names in their `xn--` form)",
                    domain.escape_debug()
                ),
            );
        } else if !seen.insert(domain.to_ascii_lowercase()) {
            c.fail(
                "smtp.domains",
                Some(i),
                format!("`{domain}` is listed twice"),
            );
        }
    }
    c.range(
        "smtp.max_message_size",
        smtp.max_message_size,
        1024,
        1024 * MIB,
    );
    c.range("smtp.max_recipients", smtp.max_recipients, 1, 10_000);
    c.range("smtp.max_line_length", smtp.max_line_length, 998, 16 * MIB);
    c.range("smtp.max_connections", smtp.max_connections, 1, 100_000);
    c.range(
        "smtp.max_message_memory",
        smtp.max_message_memory,
        MIB,
        65_536 * MIB,
    );
    c.range("smtp.max_errors", smtp.max_errors, 1, 1000);
    c.range("smtp.idle_timeout_secs", smtp.idle_timeout_secs, 1, 3600);
    c.range("smtp.data_timeout_secs", smtp.data_timeout_secs, 1, 3600);
    c.range("smtp.min_data_rate", smtp.min_data_rate, 0, 1_000_000);
    c.range(
        "smtp.shutdown_grace_secs",
        smtp.shutdown_grace_secs,
        0,
        3600,
    );
    match (&smtp.tls_cert, &smtp.tls_key) {
        (Some(cert), Some(key)) => {
            c.path("smtp.tls_cert", cert);
            c.path("smtp.tls_key", key);
        }
        (Some(_), None) => c.fail(
            "smtp.tls_cert",
            None,
            "is set but `smtp.tls_key` is not; STARTTLS needs both (or neither)".to_owned(),
        ),
        (None, Some(_)) => c.fail(
            "smtp.tls_key",
            None,
            "is set but `smtp.tls_cert` is not; STARTTLS needs both (or neither)".to_owned(),
        ),
        (None, None) => {}
    }

    let pipeline = &config.pipeline;
    c.range("pipeline.workers", pipeline.workers, 1, 256);
    c.range(
        "pipeline.max_mime_parts",
        pipeline.max_mime_parts,
        1,
        100_000,
    );
    c.range(
        "pipeline.max_header_fields",
        pipeline.max_header_fields,
        1,
        100_000,
    );
    c.range(
        "pipeline.max_nesting_depth",
        pipeline.max_nesting_depth,
        1,
        100,
    );

    c.range("store.cache_mb", config.store.cache_mb, 8, 65_536);

    let http = &config.http;
    // Port 0 ("any free port", for tests) may appear more than once.
    for (i, addr) in http
        .listen
        .iter()
        .enumerate()
        .filter(|(_, a)| a.port() != 0)
    {
        if http.listen[..i].contains(addr) {
            c.fail("http.listen", Some(i), format!("`{addr}` is listed twice"));
        }
        if let Some(j) = config.smtp.listen.iter().position(|a| a == addr) {
            c.fail(
                "http.listen",
                Some(i),
                format!("`{addr}` is also in `smtp.listen`"),
            );
            // The same clash from the other side, so that it has a place in the file even
            // when `http.listen` is not written there (its default clashes).
            c.fail(
                "smtp.listen",
                Some(j),
                format!("`{addr}` is also in `http.listen`"),
            );
        }
    }
    for (key, nets) in [
        ("http.agent_networks", &http.agent_networks),
        ("http.admin_networks", &http.admin_networks),
    ] {
        for (i, net) in nets.iter().enumerate() {
            if !is_cidr(net) {
                c.fail(
                    key,
                    Some(i),
                    format!(
                        "`{net}` is not a network in CIDR form such as `10.0.0.0/8` or `::1/128`"
                    ),
                );
            }
        }
    }
    c.range("http.max_body_bytes", http.max_body_bytes, 1024, 64 * MIB);
    c.range(
        "http.auth_failures_per_minute",
        http.auth_failures_per_minute,
        1,
        10_000,
    );
    match (&http.tls_cert, &http.tls_key) {
        (Some(cert), Some(key)) => {
            c.path("http.tls_cert", cert);
            c.path("http.tls_key", key);
        }
        (Some(_), None) => c.fail(
            "http.tls_cert",
            None,
            "is set but `http.tls_key` is not; HTTPS needs both (or neither)".to_owned(),
        ),
        (None, Some(_)) => c.fail(
            "http.tls_key",
            None,
            "is set but `http.tls_cert` is not; HTTPS needs both (or neither)".to_owned(),
        ),
        (None, None) => {}
    }

    let filter = &config.filter;
    c.range("filter.ham_cutoff", filter.ham_cutoff, 0.0, 1.0);
    c.range("filter.spam_cutoff", filter.spam_cutoff, 0.0, 1.0);
    if filter.ham_cutoff.is_nan() {
        c.fail("filter.ham_cutoff", None, "must be a number".to_owned());
    }
    if filter.spam_cutoff.is_nan() {
        c.fail("filter.spam_cutoff", None, "must be a number".to_owned());
    }
    let in_unit = |v: f64| (0.0..=1.0).contains(&v);
    if in_unit(filter.ham_cutoff)
        && in_unit(filter.spam_cutoff)
        && filter.spam_cutoff < filter.ham_cutoff
    {
        c.fail(
            "filter.spam_cutoff",
            None,
            format!(
                "must not be below `filter.ham_cutoff` ({}) (got {})",
                filter.ham_cutoff, filter.spam_cutoff
            ),
        );
    }
    c.range("filter.explain_tokens", filter.explain_tokens, 1, 100);
    c.range("filter.expire_days", filter.expire_days, 1, 36_500);
    if let Some(path) = &filter.starter_model {
        c.path("filter.starter_model", path);
    }

    c.problems.extend(crate::imap::check(&config.imap));

    // `log.level` and `log.format` are enums: serde already rejected anything else.
    c.problems
}

/// A network in CIDR form: an IPv4 or IPv6 address, `/`, and a prefix length that fits it.
pub(crate) fn is_cidr(net: &str) -> bool {
    let Some((addr, len)) = net.split_once('/') else {
        return false;
    };
    let Ok(len) = len.parse::<u8>() else {
        return false;
    };
    if addr.parse::<Ipv4Addr>().is_ok() {
        len <= 32
    } else if addr.parse::<Ipv6Addr>().is_ok() {
        len <= 128
    } else {
        false
    }
}

/// A plausible DNS name: ASCII labels of letters, digits and inner hyphens, 1 to 63
/// characters each, at most 253 characters in all, no trailing dot.
pub(crate) fn is_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// An RFC 5321 address literal: `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
fn is_address_literal(name: &str) -> bool {
    let Some(inner) = name.strip_prefix('[').and_then(|s| s.strip_suffix(']')) else {
        return false;
    };
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner[5..].parse::<Ipv6Addr>().is_ok(),
        _ => inner.parse::<Ipv4Addr>().is_ok(),
    }
}

/// Rewords serde's error `message` for an operator, and classifies it.
pub(crate) fn describe_serde_error(message: &str) -> (ErrorKind, String) {
    if let Some((name, known)) = split_unknown(message, "unknown field `") {
        let text = match suggest(&name, &known) {
            Some(close) => format!("unknown key `{name}`; did you mean `{close}`?"),
            None if known.is_empty() => format!("unknown key `{name}`"),
            None => format!(
                "unknown key `{name}` (known keys here: {})",
                known.join(", ")
            ),
        };
        return (ErrorKind::UnknownKey, text);
    }
    if let Some((name, known)) = split_unknown(message, "unknown variant `") {
        let mut text = format!("must be one of {} (got `{name}`)", known.join(", "));
        if let Some(close) = suggest(&name, &known) {
            text.push_str(&format!("; did you mean `{close}`?"));
        }
        return (ErrorKind::Invalid, text);
    }
    let text = message
        .replace("expected usize", "expected a non-negative integer")
        .replace("expected u64", "expected a non-negative integer");
    (ErrorKind::Type, text)
}

/// Splits serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a` or
/// `b`", or "there are no fields") into `x` and the known names.
fn split_unknown(message: &str, prefix: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix(prefix)?;
    let (name, rest) = rest.split_once('`')?;
    let known = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((name.to_owned(), known))
}

/// The known name closest to `name`, if it is close enough to be a likely typo.
pub(crate) fn suggest(name: &str, known: &[String]) -> Option<String> {
    let normal = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let name_n = normal(name);
    let limit = (name_n.chars().count() / 3).max(1);
    known
        .iter()
        .map(|k| (distance(&name_n, &normal(k)), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone())
}

/// Optimal string alignment distance: edits, with swapping two neighbours as one edit.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        for ok in [
            "localhost",
            "example.com",
            "a-b.example",
            "xn--bcher-kva.example",
            "x1",
        ] {
            assert!(is_domain(ok), "{ok}");
        }
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a-.b",
            "a b",
            "bücher.example",
            "a.",
            "a_b.example",
        ] {
            assert!(!is_domain(bad), "{bad}");
        }
        assert!(!is_domain(&"a".repeat(64)));
    }

    #[test]
    fn address_literals() {
        assert!(is_address_literal("[192.0.2.1]"));
        assert!(is_address_literal("[IPv6:2001:db8::1]"));
        assert!(!is_address_literal("192.0.2.1"));
        assert!(!is_address_literal("[2001:db8::1]"));
        assert!(!is_address_literal("[]"));
    }

    #[test]
    fn suggestions() {
        let known: Vec<String> = ["max_message_size", "max_errors", "hostname"]
            .map(str::to_owned)
            .into();
        assert_eq!(
            suggest("max_mesage_size", &known).as_deref(),
            Some("max_message_size")
        );
        assert_eq!(
            suggest("max-message-size", &known).as_deref(),
            Some("max_message_size")
        );
        assert_eq!(suggest("hostnmae", &known).as_deref(), Some("hostname"));
        assert_eq!(suggest("colour", &known), None);
        assert_eq!(distance("smpt", "smtp"), 1);
        assert_eq!(distance("", "abc"), 3);
    }

    #[test]
    fn serde_messages_are_reworded() {
        let (kind, text) = describe_serde_error(
            "unknown field `smpt`, expected one of `store`, `smtp`, `pipeline`, `filter`, `http`, `log`, `retention`",
        );
        assert_eq!(kind, ErrorKind::UnknownKey);
        assert_eq!(text, "unknown key `smpt`; did you mean `smtp`?");
        let (_, text) = describe_serde_error("unknown field `zzz`, expected `a` or `b`");
        assert_eq!(text, "unknown key `zzz` (known keys here: a, b)");
        let (kind, text) =
            describe_serde_error("unknown variant `jsno`, expected `text` or `json`");
        assert_eq!(kind, ErrorKind::Invalid);
        assert_eq!(
            text,
            "must be one of text, json (got `jsno`); did you mean `json`?"
        );
        let (kind, _) = describe_serde_error("invalid type: string \"x\", expected usize");
        assert_eq!(kind, ErrorKind::Type);
    }
}
