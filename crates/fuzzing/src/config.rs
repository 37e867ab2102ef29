//! `config`: bytes as a TOML config file into the loader and validator.

use std::io::Write as _;

use mailroom_config::{Config, ConfigError, ErrorKind, FilterAlgorithm};
use mailroom_pipeline::Filter;
use mailroom_spamfilter::Algorithm;

/// The name errors give the text.
const ORIGIN: &str = "fuzz.toml";

/// Parse `data` as a config file (text through [`Config::parse`]; bytes that are not UTF-8
/// through [`Config::load`] of a temporary file) and check: an error names the file, a line
/// and a column inside the text (and the key, when it is about a key); a config that is
/// accepted validates, survives serialization and parsing back unchanged, and is one the
/// server can start with (the SMTP session limits validate, the spam filter's cutoffs are
/// accepted, the API's networks are CIDR networks).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        let mut file = tempfile::NamedTempFile::new_in(crate::scratch_dir()).expect("temp file");
        file.write_all(data).expect("write");
        let e = Config::load(file.path()).expect_err("not UTF-8, yet accepted");
        assert_eq!(e.kind(), ErrorKind::Syntax, "{e}");
        assert_eq!(e.origin(), file.path().display().to_string());
        let valid =
            std::str::from_utf8(&data[..data.utf8_chunks().next().map_or(0, |c| c.valid().len())])
                .expect("valid prefix");
        check_location(&e, valid);
        return;
    };
    match Config::parse(text, ORIGIN) {
        Ok(config) => check_accepted(&config),
        Err(e) => {
            assert_eq!(e.origin(), ORIGIN);
            check_location(&e, text);
            if matches!(e.kind(), ErrorKind::UnknownKey | ErrorKind::Invalid) {
                assert!(e.key().is_some_and(|k| !k.is_empty()), "no key named: {e}");
            }
            assert!(!e.message().is_empty(), "empty message: {e}");
            let shown = e.to_string();
            assert!(shown.starts_with(ORIGIN), "{shown}");
        }
    }
}

/// The error names a line and a column that exist in `text`.
fn check_location(e: &ConfigError, text: &str) {
    let (Some(line), Some(column)) = (e.line(), e.column()) else {
        panic!("error without a line and column: {e}");
    };
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        (1..=lines.len()).contains(&line),
        "line {line} of a {}-line text: {e}",
        lines.len()
    );
    let width = lines[line - 1].chars().count();
    assert!(
        (1..=width + 1).contains(&column),
        "column {column} of a {width}-character line: {e}"
    );
}

fn check_accepted(config: &Config) {
    config.validate().expect("an accepted config validates");
    let text = toml::to_string(config).expect("an accepted config serializes");
    let back = Config::parse(&text, ORIGIN)
        .unwrap_or_else(|e| panic!("serialized config does not parse back: {e}\n{text}"));
    assert!(back == *config, "config changed by a round trip:\n{text}");

    // What `mailroom serve` builds from it (src/serve.rs) must be accepted too.
    let s = &config.smtp;
    let mut smtp = mailroom_smtp::SmtpConfig::new(s.hostname.clone(), s.domains.clone());
    smtp.max_message_size = s.max_message_size;
    smtp.max_recipients = s.max_recipients;
    smtp.max_line_length = s.max_line_length;
    smtp.max_connections = s.max_connections;
    smtp.max_errors = s.max_errors;
    smtp.idle_timeout = s.idle_timeout();
    smtp.data_timeout = s.data_timeout();
    smtp.shutdown_grace = s.shutdown_grace();
    if let Err(e) = smtp.validate() {
        panic!("config accepted but the SMTP server refuses it: {e}");
    }
    let f = &config.filter;
    let algorithm = match f.algorithm {
        FilterAlgorithm::Fusion => Algorithm::Fusion,
        FilterAlgorithm::Fisher => Algorithm::Fisher,
        FilterAlgorithm::NaiveBayes => Algorithm::NaiveBayes,
        FilterAlgorithm::Logistic => Algorithm::Logistic,
    };
    if let Err(e) = Filter::new(algorithm, f.ham_cutoff, f.spam_cutoff, f.explain_tokens) {
        panic!("config accepted but the spam filter refuses it: {e}");
    }
    for net in config
        .http
        .agent_networks
        .iter()
        .chain(&config.http.admin_networks)
    {
        if let Err(e) = net.parse::<ipnet::IpNet>() {
            panic!("config accepted but the API refuses network {net:?}: {e}");
        }
    }
}
