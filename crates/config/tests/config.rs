//! Behaviour of `Config::parse` / `Config::load` as an operator sees it: defaults, the
//! shipped example, and errors that name the right line, column and key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mailroom_config::{Config, ConfigError, ErrorKind, FilterAlgorithm, LogFormat, LogLevel};

const EXAMPLE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../mailroom.example.toml"
));

fn err(text: &str) -> ConfigError {
    match Config::parse(text, "mailroom.toml") {
        Ok(config) => panic!("expected an error for:\n{text}\ngot {config:?}"),
        Err(e) => e,
    }
}

/// Asserts kind, line and key, and that the Display form starts with `file:line:`.
#[track_caller]
fn assert_err(e: &ConfigError, kind: ErrorKind, line: usize, key: &str) {
    assert_eq!(e.kind(), kind, "{e}");
    assert_eq!(e.line(), Some(line), "{e}");
    assert_eq!(e.key(), Some(key), "{e}");
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!(
            "mailroom.toml:{line}:{}: {key}: ",
            e.column().unwrap()
        )),
        "{shown}"
    );
}

// ---- defaults and the shipped example ---------------------------------------------------

#[test]
fn empty_file_gives_defaults() {
    assert_eq!(Config::parse("", "x").unwrap(), Config::default());
    assert_eq!(
        Config::parse("# nothing here\n\n", "x").unwrap(),
        Config::default()
    );
    assert_eq!(
        Config::parse("[store]\n[smtp]\n[pipeline]\n[log]\n", "x").unwrap(),
        Config::default()
    );
}

#[test]
fn defaults_are_the_documented_values() {
    let c = Config::default();
    assert_eq!(c.store.path, PathBuf::from("data"));
    assert_eq!(c.store.spool_max_entries, 10_000);
    assert_eq!(c.store.spool_key_lifetime(), Duration::from_secs(24 * 3600));
    assert_eq!(c.smtp.listen, vec!["127.0.0.1:2525".parse().unwrap()]);
    assert_eq!(c.smtp.hostname, "localhost");
    assert_eq!(c.smtp.domains, vec!["localhost".to_owned()]);
    assert_eq!(c.smtp.max_message_size, 26_214_400);
    assert_eq!(c.smtp.max_recipients, 100);
    assert_eq!(c.smtp.max_line_length, 65_536);
    assert_eq!(c.smtp.max_connections, 256);
    assert_eq!(c.smtp.max_message_memory, 128 << 20);
    assert_eq!(c.smtp.max_errors, 10);
    assert_eq!(c.smtp.idle_timeout(), Duration::from_secs(300));
    assert_eq!(c.smtp.data_timeout(), Duration::from_secs(600));
    assert_eq!(c.smtp.shutdown_grace(), Duration::from_secs(30));
    assert_eq!(c.smtp.tls(), None);
    assert_eq!(c.pipeline.workers, 2);
    assert_eq!(c.pipeline.max_mime_parts, 1000);
    assert_eq!(c.pipeline.max_header_fields, 1000);
    assert_eq!(c.pipeline.max_nesting_depth, 20);
    assert_eq!(c.log.level, LogLevel::Info);
    assert_eq!(c.log.format, LogFormat::Text);
    c.validate().unwrap();
}

#[test]
fn example_parses_to_exactly_the_defaults() {
    let parsed = Config::parse(EXAMPLE, "mailroom.example.toml").unwrap_or_else(|e| panic!("{e}"));
    // The TLS keys are commented out in the example, and `None` by default.
    assert_eq!(parsed, Config::default());
}

#[test]
fn example_with_tls_lines_uncommented_still_parses() {
    let text = EXAMPLE
        .replace("# tls_cert =", "tls_cert =")
        .replace("# tls_key =", "tls_key =");
    let c = Config::parse(&text, "x").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.smtp.tls(),
        Some((Path::new("tls/cert.pem"), Path::new("tls/key.pem")))
    );
}

/// The lines of `text` under `[section]`, up to the next header.
fn section<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("[{name}]");
    let mut lines = text.lines().skip_while(|l| l.trim() != header);
    assert!(lines.next().is_some(), "example has no {header}");
    lines
        .take_while(|l| !l.trim_start().starts_with('['))
        .collect()
}

#[test]
fn example_lists_every_key_of_every_section_with_a_comment() {
    // Serialize a config with every optional key set, so that none is skipped.
    let mut all = Config::default();
    all.smtp.tls_cert = Some("c.pem".into());
    all.smtp.tls_key = Some("k.pem".into());
    all.filter.starter_model = Some("m.mrfm".into());
    all.http.tls_cert = Some("hc.pem".into());
    all.http.tls_key = Some("hk.pem".into());
    all.imap = vec![every_imap_key()];
    let table = toml::Table::try_from(&all).unwrap();
    assert_eq!(table.len(), 8);
    let mut checked = 0;
    for (name, value) in &table {
        if name == "imap" {
            // An array of tables, commented out in the example: see the imap test below.
            assert!(value.is_array(), "imap is an array of tables");
            continue;
        }
        let body = section(EXAMPLE, name);
        let keys = value.as_table().expect("every top-level key is a section");
        for key in keys.keys() {
            let pos = body
                .iter()
                .position(|l| {
                    let l = l.trim_start();
                    let l = l.strip_prefix("# ").unwrap_or(l);
                    l.strip_prefix(key.as_str())
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                })
                .unwrap_or_else(|| panic!("{name}.{key} is missing from the example"));
            // The key, or the run of keys it belongs to, is explained by a comment above.
            let above = body[..pos]
                .iter()
                .rev()
                .find(|l| !l.trim_start().starts_with("# tls_"))
                .unwrap_or_else(|| panic!("{name}.{key} has no comment"));
            assert!(
                above.trim_start().starts_with('#'),
                "{name}.{key} has no comment above it"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4 + 15 + 4 + 7 + 7 + 2 + 5);
}

/// An `[[imap]]` account with every optional key set, so that none is skipped when serialized.
fn every_imap_key() -> mailroom_config::ImapAccount {
    mailroom_config::ImapAccount {
        name: "support".into(),
        host: "imap.example.org".into(),
        port: Some(993),
        ca_file: Some("ca.pem".into()),
        username: "support@example.org".into(),
        password_env: Some("PW".into()),
        password_file: Some("pw".into()),
        xoauth2_token_file: Some("token".into()),
        ..Default::default()
    }
}

/// `# key = value`, as opposed to a comment.
fn is_key_line(line: &str) -> bool {
    line.strip_prefix("# ")
        .and_then(|l| l.split_once(" = "))
        .is_some_and(|(key, _)| {
            !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
}

#[test]
fn example_documents_every_imap_key_in_a_commented_out_account() {
    let table = toml::Table::try_from(every_imap_key()).unwrap();
    let lines: Vec<&str> = EXAMPLE
        .lines()
        .skip_while(|l| l.trim() != "# [[imap]]")
        .collect();
    assert!(!lines.is_empty(), "example has no commented-out [[imap]]");
    let mut checked = 0;
    for key in table.keys() {
        let pos = lines
            .iter()
            .position(|l| {
                l.strip_prefix("# ")
                    .and_then(|l| l.strip_prefix(key.as_str()))
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
            .unwrap_or_else(|| panic!("imap.{key} is missing from the example"));
        // The key, or the run of keys it belongs to, is explained by a comment above.
        let above = lines[..pos]
            .iter()
            .rev()
            .find(|l| !is_key_line(l))
            .unwrap_or_else(|| panic!("imap.{key} has no comment"));
        assert!(
            above.starts_with("# "),
            "imap.{key} has no comment above it"
        );
        checked += 1;
    }
    assert_eq!(checked, 12);
    // Uncommented, the account parses (with one secret) and is what the example says.
    let text: String = lines
        .iter()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .filter(|l| !l.starts_with("password_file") && !l.starts_with("xoauth2_token_file"))
        .filter(|l| is_key_line(&format!("# {l}")) || l.starts_with("[["))
        .collect::<Vec<_>>()
        .join("\n");
    let c = Config::parse(&text, "x").unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(c.imap.len(), 1);
    assert_eq!(c.imap[0].port(), 993);
    assert_eq!(c.imap[0].after(), mailroom_config::ImapAfter::Seen);
}

#[test]
fn serialized_default_parses_back_to_itself() {
    let text = toml::to_string(&Config::default()).unwrap();
    assert_eq!(Config::parse(&text, "x").unwrap(), Config::default());
}

#[test]
fn values_are_read() {
    let c = Config::parse(
        r#"
[store]
path = "/var/lib/mailroom"
[smtp]
listen = ["0.0.0.0:25", "[::1]:25"]
hostname = "mx.example.org"
domains = ["example.org", "Support.Example.COM"]
max_message_size = 1024
shutdown_grace_secs = 0
tls_cert = "/etc/mailroom/cert.pem"
tls_key = "/etc/mailroom/key.pem"
[pipeline]
workers = 256
[log]
level = "trace"
format = "json"
"#,
        "x",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.store.path, PathBuf::from("/var/lib/mailroom"));
    assert_eq!(c.smtp.listen.len(), 2);
    assert!(c.smtp.listen[1].is_ipv6());
    assert!(c.smtp.accepts_domain("support.example.com"));
    assert!(c.smtp.accepts_domain("EXAMPLE.org."));
    assert!(!c.smtp.accepts_domain("example.net"));
    assert_eq!(c.smtp.shutdown_grace(), Duration::ZERO);
    assert_eq!(
        c.smtp.tls(),
        Some((
            Path::new("/etc/mailroom/cert.pem"),
            Path::new("/etc/mailroom/key.pem")
        ))
    );
    assert_eq!(c.pipeline.workers, 256);
    assert_eq!(c.log.level, LogLevel::Trace);
    assert_eq!(c.log.level.as_str(), "trace");
    assert_eq!(c.log.format.to_string(), "json");
}

#[test]
fn dotted_keys_and_inline_tables_are_accepted() {
    let c = Config::parse("smtp.max_errors = 3\npipeline = { workers = 4 }\n", "x").unwrap();
    assert_eq!(c.smtp.max_errors, 3);
    assert_eq!(c.pipeline.workers, 4);
}

// ---- syntax errors -----------------------------------------------------------------------

#[test]
fn syntax_error_names_line_and_key() {
    let e = err("[smtp]\nhostname = \"mx\"\nmax_errors = \n");
    assert_err(&e, ErrorKind::Syntax, 3, "smtp.max_errors");

    let e = err("[log]\nlevel = \"info\nformat = \"text\"\n");
    assert_err(&e, ErrorKind::Syntax, 2, "log.level");
}

#[test]
fn syntax_error_without_a_key_still_names_the_line() {
    let e = err("[store]\npath = \"data\"\n[smtp\n");
    assert_eq!(e.kind(), ErrorKind::Syntax);
    assert_eq!(e.line(), Some(3), "{e}");
    assert!(e.to_string().starts_with("mailroom.toml:3:"), "{e}");
}

#[test]
fn duplicate_key_is_a_syntax_error_on_the_second_line() {
    let e = err("[smtp]\nmax_errors = 1\nmax_errors = 2\n");
    assert_eq!(e.kind(), ErrorKind::Syntax);
    assert_eq!(e.line(), Some(3), "{e}");
    assert!(e.message().contains("duplicate"), "{e}");
}

// ---- unknown keys --------------------------------------------------------------------------

#[test]
fn unknown_section_at_top_level_suggests_the_known_one() {
    let e = err("[store]\npath = \"d\"\n\n[smpt]\nhostname = \"x\"\n");
    assert_err(&e, ErrorKind::UnknownKey, 4, "smpt");
    assert_eq!(e.column(), Some(2));
    assert_eq!(e.message(), "unknown key `smpt`; did you mean `smtp`?");
}

#[test]
fn unknown_scalar_at_top_level_lists_the_sections() {
    let e = err("# comment\ncolour = \"blue\"\n");
    assert_err(&e, ErrorKind::UnknownKey, 2, "colour");
    assert_eq!(
        e.message(),
        "unknown key `colour` (known keys here: store, smtp, pipeline, filter, http, log, retention, imap)"
    );
}

#[test]
fn unknown_key_inside_a_section_names_the_full_path_and_suggests() {
    let e = err("[smtp]\nhostname = \"mx\"\nmax_mesage_size = 1\n");
    assert_err(&e, ErrorKind::UnknownKey, 3, "smtp.max_mesage_size");
    assert_eq!(e.column(), Some(1));
    assert!(
        e.to_string()
            .ends_with("unknown key `max_mesage_size`; did you mean `max_message_size`?"),
        "{e}"
    );

    let e = err("[pipeline]\n\n  Workers = 3\n");
    assert_err(&e, ErrorKind::UnknownKey, 3, "pipeline.Workers");
    assert_eq!(e.column(), Some(3));
    assert!(e.message().contains("did you mean `workers`"), "{e}");
}

#[test]
fn unknown_key_in_dotted_and_inline_forms() {
    let e = err("store.path = \"d\"\nstore.colour = 1\n");
    assert_err(&e, ErrorKind::UnknownKey, 2, "store.colour");

    let e = err("log = { level = \"info\", colour = true }\n");
    assert_err(&e, ErrorKind::UnknownKey, 1, "log.colour");
    assert_eq!(e.column(), Some(25));
}

// ---- wrong types -----------------------------------------------------------------------------

#[test]
fn wrong_type_names_line_column_and_key() {
    let e = err("[store]\n\n[smtp]\nmax_message_size = \"big\"\n");
    assert_err(&e, ErrorKind::Type, 4, "smtp.max_message_size");
    assert_eq!(e.column(), Some(20));
    assert!(e.message().contains("invalid type"), "{e}");

    let e = err("[smtp]\nlisten = \"127.0.0.1:25\"\n");
    assert_err(&e, ErrorKind::Type, 2, "smtp.listen");

    let e = err("[smtp]\nmax_connections = -1\n");
    assert_err(&e, ErrorKind::Type, 2, "smtp.max_connections");
    assert!(e.message().contains("non-negative integer"), "{e}");

    let e = err("[pipeline]\nworkers = 2.5\n");
    assert_err(&e, ErrorKind::Type, 2, "pipeline.workers");

    let e = err("smtp = 5\n");
    assert_err(&e, ErrorKind::Type, 1, "smtp");
}

#[test]
fn malformed_listen_address_points_at_its_line() {
    let e = err("[smtp]\nlisten = [\n  \"127.0.0.1:25\",\n  \"localhost:25\",\n]\n");
    assert_err(&e, ErrorKind::Type, 4, "smtp.listen");
    assert!(e.message().contains("socket address"), "{e}");
}

// ---- values out of range or inconsistent ---------------------------------------------------

#[test]
fn display_format_matches_the_documented_one() {
    let text = "# mailroom\n\n[store]\npath = \"data\"\n\n[smtp]\nmax_message_size = 0\n";
    let e = err(text);
    assert_eq!(
        e.to_string(),
        "mailroom.toml:7:20: smtp.max_message_size: must be at least 1024 (got 0)"
    );
    assert_err(&e, ErrorKind::Invalid, 7, "smtp.max_message_size");
}

#[test]
fn every_numeric_key_is_checked_at_both_ends_of_its_range() {
    // (section, key, min, max)
    let ranges: &[(&str, &str, u64, u64)] = &[
        ("store", "spool_max_entries", 1, 10_000_000),
        ("store", "spool_key_lifetime_hours", 1, 720),
        ("smtp", "max_message_size", 1024, 1 << 30),
        ("smtp", "max_recipients", 1, 10_000),
        ("smtp", "max_line_length", 998, 16 << 20),
        ("smtp", "max_connections", 1, 100_000),
        ("smtp", "max_message_memory", 1 << 20, 1 << 36),
        ("smtp", "max_errors", 1, 1000),
        ("smtp", "idle_timeout_secs", 1, 3600),
        ("smtp", "data_timeout_secs", 1, 3600),
        ("smtp", "shutdown_grace_secs", 0, 3600),
        ("pipeline", "workers", 1, 256),
        ("pipeline", "max_mime_parts", 1, 100_000),
        ("pipeline", "max_header_fields", 1, 100_000),
        ("pipeline", "max_nesting_depth", 1, 100),
    ];
    for &(section, key, min, max) in ranges {
        let doc = |v: u64| format!("# test\n[{section}]\n\n{key} = {v}\n");
        let path = format!("{section}.{key}");
        for ok in [min, max] {
            Config::parse(&doc(ok), "x").unwrap_or_else(|e| panic!("{path} = {ok}: {e}"));
        }
        if min > 0 {
            let e = err(&doc(min - 1));
            assert_err(&e, ErrorKind::Invalid, 4, &path);
            assert_eq!(e.column(), Some(key.len() + 4));
            assert_eq!(
                e.message(),
                format!("must be at least {min} (got {})", min - 1)
            );
        }
        let e = err(&doc(max + 1));
        assert_err(&e, ErrorKind::Invalid, 4, &path);
        assert_eq!(
            e.message(),
            format!("must be at most {max} (got {})", max + 1)
        );
    }
}

#[test]
fn tls_cert_without_key_is_an_error_at_the_cert() {
    let e = err("[smtp]\nhostname = \"mx\"\ntls_cert = \"cert.pem\"\n");
    assert_err(&e, ErrorKind::Invalid, 3, "smtp.tls_cert");
    assert!(e.message().contains("smtp.tls_key"), "{e}");
}

#[test]
fn tls_key_without_cert_is_an_error_at_the_key() {
    let e = err("[smtp]\n\ntls_key = \"key.pem\"\n");
    assert_err(&e, ErrorKind::Invalid, 3, "smtp.tls_key");
    assert!(e.message().contains("smtp.tls_cert"), "{e}");
}

#[test]
fn tls_paths_must_not_be_empty() {
    let e = err("[smtp]\ntls_cert = \"c.pem\"\ntls_key = \"\"\n");
    assert_err(&e, ErrorKind::Invalid, 3, "smtp.tls_key");
}

#[test]
fn lists_must_not_be_empty() {
    let e = err("[smtp]\nlisten = []\n");
    assert_err(&e, ErrorKind::Invalid, 2, "smtp.listen");
    let e = err("[smtp]\ndomains = []\n");
    assert_err(&e, ErrorKind::Invalid, 2, "smtp.domains");
}

#[test]
fn bad_domain_points_at_its_element() {
    let e = err("[smtp]\ndomains = [\n  \"example.org\",\n  \"not a domain\",\n]\n");
    assert_err(&e, ErrorKind::Invalid, 4, "smtp.domains");
    assert_eq!(e.column(), Some(3));
    assert!(e.message().contains("`not a domain`"), "{e}");

    let e = err("[smtp]\ndomains = [\"example.org\", \"EXAMPLE.org\"]\n");
    assert_err(&e, ErrorKind::Invalid, 2, "smtp.domains");
    assert_eq!(e.column(), Some(27));
    assert!(e.message().contains("twice"), "{e}");
}

#[test]
fn duplicate_listen_address_is_an_error() {
    let e = err("[smtp]\nlisten = [\"127.0.0.1:25\", \"127.0.0.1:25\"]\n");
    assert_err(&e, ErrorKind::Invalid, 2, "smtp.listen");
    assert!(e.message().contains("twice"), "{e}");
}

#[test]
fn hostname_must_look_like_a_host_name() {
    let e = err("[smtp]\nhostname = \"\"\n");
    assert_err(&e, ErrorKind::Invalid, 2, "smtp.hostname");
    assert_eq!(e.message(), "must not be empty");
    let e = err("[smtp]\nhostname = \"mx\\r\\nX-Injected: 1\"\n");
    assert_err(&e, ErrorKind::Invalid, 2, "smtp.hostname");
    for ok in ["mx.example.org", "[192.0.2.1]", "[IPv6:2001:db8::1]"] {
        Config::parse(&format!("smtp.hostname = \"{ok}\""), "x")
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn store_path_must_not_be_empty() {
    let e = err("[store]\npath = \"\"\n");
    assert_err(&e, ErrorKind::Invalid, 2, "store.path");
}

#[test]
fn log_level_and_format_must_be_in_their_sets() {
    let e = err("[log]\nlevel = \"verbose\"\n");
    assert_err(&e, ErrorKind::Invalid, 2, "log.level");
    assert_eq!(
        e.message(),
        "must be one of error, warn, info, debug, trace (got `verbose`)"
    );
    let e = err("[log]\nlevel = \"info\"\nformat = \"jsno\"\n");
    assert_err(&e, ErrorKind::Invalid, 3, "log.format");
    assert!(e.message().ends_with("did you mean `json`?"), "{e}");
}

#[test]
fn the_first_problem_in_the_file_is_reported() {
    let e = err("[smtp]\nmax_errors = 0\n\n[pipeline]\nworkers = 0\n");
    assert_err(&e, ErrorKind::Invalid, 2, "smtp.max_errors");
    let e = err("[pipeline]\nworkers = 0\n\n[store]\nspool_max_entries = 0\n");
    assert_err(&e, ErrorKind::Invalid, 2, "pipeline.workers");
}

#[test]
fn inline_table_values_are_located() {
    let e = err("smtp = { hostname = \"mx\", max_errors = 0 }\n");
    assert_err(&e, ErrorKind::Invalid, 1, "smtp.max_errors");
    assert_eq!(e.column(), Some(40));
}

#[test]
fn validate_checks_configs_built_in_code() {
    let mut c = Config::default();
    c.pipeline.workers = 0;
    let e = c.validate().unwrap_err();
    assert_eq!(e.key(), Some("pipeline.workers"));
    assert_eq!(e.line(), None);
    assert_eq!(
        e.to_string(),
        "config: pipeline.workers: must be at least 1 (got 0)"
    );
}

// ---- load -------------------------------------------------------------------------------------

#[test]
fn load_reads_the_file_and_errors_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailroom.toml");
    std::fs::write(&path, "[pipeline]\nworkers = 3\n").unwrap();
    assert_eq!(Config::load(&path).unwrap().pipeline.workers, 3);

    std::fs::write(&path, "[pipeline]\nworkers = 300\n").unwrap();
    let e = Config::load(&path).unwrap_err();
    assert_eq!(e.origin(), path.display().to_string());
    assert_eq!(
        e.to_string(),
        format!(
            "{}:2:11: pipeline.workers: must be at most 256 (got 300)",
            path.display()
        )
    );
}

#[test]
fn load_of_a_missing_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let e = Config::load(&path).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert_eq!(e.line(), None);
    assert!(std::error::Error::source(&e).is_some());
    assert!(
        e.to_string().starts_with(&format!("{}: ", path.display())),
        "{e}"
    );
}

#[test]
fn load_of_non_utf8_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.toml");
    std::fs::write(&path, b"[smtp]\nhostname = \"caf\xe9\"\n").unwrap();
    let e = Config::load(&path).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Syntax);
    assert_eq!((e.line(), e.column()), (Some(2), Some(16)));
}

#[test]
fn filter_cutoffs_are_checked() {
    let e = err("[filter]\nham_cutoff = 0.5\nspam_cutoff = 0.4\n");
    assert_err(&e, ErrorKind::Invalid, 3, "filter.spam_cutoff");
    let e = err("[filter]\nham_cutoff = 1.5\n");
    assert_err(&e, ErrorKind::Invalid, 2, "filter.ham_cutoff");
    let e = err("[filter]\nalgorithm = \"bayes\"\n");
    assert_eq!(e.line(), Some(2));
    let c = Config::parse(
        "[filter]\nalgorithm = \"naive-bayes\"\nham_cutoff = 0.1\nspam_cutoff = 0.95\n",
        "x",
    )
    .unwrap();
    assert_eq!(c.filter.algorithm, FilterAlgorithm::NaiveBayes);
    assert_eq!(c.filter.spam_cutoff, 0.95);
}

#[test]
fn http_networks_and_listen_are_checked() {
    let e = err("[http]\nagent_networks = [\"10.0.0.0/8\", \"10.0.0.1\"]\n");
    assert_err(&e, ErrorKind::Invalid, 2, "http.agent_networks");
    let e = err("[http]\nadmin_networks = [\"::1/129\"]\n");
    assert_err(&e, ErrorKind::Invalid, 2, "http.admin_networks");
    // `http.listen` left at its default clashes: the error points at what the file says.
    let e = err("[smtp]\nlisten = [\"127.0.0.1:8025\"]\n");
    assert_err(&e, ErrorKind::Invalid, 2, "smtp.listen");
    let e = err("[http]\nlisten = [\"127.0.0.1:2525\"]\n");
    assert_err(&e, ErrorKind::Invalid, 2, "http.listen");
    let c = Config::parse(
        "[http]\nlisten = []\nagent_networks = [\"192.0.2.0/24\"]\n",
        "x",
    )
    .unwrap();
    assert!(c.http.listen.is_empty());
}

#[test]
fn port_zero_may_repeat() {
    let c = Config::parse(
        "[smtp]\nlisten = [\"127.0.0.1:0\"]\n[http]\nlisten = [\"127.0.0.1:0\"]\n",
        "x",
    )
    .unwrap();
    assert_eq!(c.http.listen[0].port(), 0);
}

// ---- [[imap]] ----------------------------------------------------------------------------------

const IMAP_OK: &str =
    "[[imap]]\nname = \"a\"\nhost = \"127.0.0.1\"\nusername = \"u\"\npassword_env = \"PW\"\n";

#[test]
fn imap_accounts_are_read_with_defaults() {
    let c = Config::parse(
        &format!("{IMAP_OK}\n[[imap]]\nname = \"b\"\nhost = \"imap.example.org\"\ntls = \"starttls\"\nusername = \"u\"\npassword_file = \"pw\"\nafter = \"move:Done\"\npoll_seconds = 5\n"),
        "x",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.imap.len(), 2);
    let a = &c.imap[0];
    assert_eq!((a.port(), a.mailbox.as_str()), (993, "INBOX"));
    assert_eq!(a.after(), mailroom_config::ImapAfter::Seen);
    assert_eq!(a.poll_interval(), Duration::from_secs(60));
    let b = &c.imap[1];
    assert_eq!(b.port(), 143);
    assert_eq!(b.after(), mailroom_config::ImapAfter::Move("Done".into()));
    // No account by default, and none is written out.
    assert!(Config::default().imap.is_empty());
    assert!(!toml::to_string(&Config::default())
        .unwrap()
        .contains("imap"));
    let text = toml::to_string(&c).unwrap();
    assert_eq!(Config::parse(&text, "x").unwrap(), c);
}

#[test]
fn imap_errors_name_the_account_key_and_line() {
    // A second account: its index is in the key, its line is the value's.
    let e = err(&format!("{IMAP_OK}\n[[imap]]\nname = \"b\"\nhost = \"h\"\nusername = \"u\"\npassword_env = \"PW\"\nport = 0\n"));
    assert_err(&e, ErrorKind::Invalid, 12, "imap[1].port");
    let e = err(&format!("{IMAP_OK}after = \"archive\"\n"));
    assert_err(&e, ErrorKind::Invalid, 6, "imap[0].after");
    assert!(e.message().contains("move:FOLDER"), "{e}");
    let e = err(&format!("{IMAP_OK}after = \"move:INBOX\"\n"));
    assert_err(&e, ErrorKind::Invalid, 6, "imap[0].after");
    let e = err(&format!("{IMAP_OK}poll_seconds = 1\n"));
    assert_err(&e, ErrorKind::Invalid, 6, "imap[0].poll_seconds");
    assert_eq!(e.message(), "must be at least 5 (got 1)");
    let e = err(&format!("{IMAP_OK}poll_seconds = 3601\n"));
    assert_err(&e, ErrorKind::Invalid, 6, "imap[0].poll_seconds");
    let e = err(&format!("{IMAP_OK}tls = \"ssl\"\n"));
    assert_err(&e, ErrorKind::Invalid, 6, "imap[0].tls");
    let e = err(&format!("{IMAP_OK}colour = 1\n"));
    assert_err(&e, ErrorKind::UnknownKey, 6, "imap[0].colour");
    let e = err(&format!("{IMAP_OK}\n[[imap]]\nname = \"a\"\nhost = \"h\"\nusername = \"u\"\npassword_env = \"PW\"\n"));
    assert_err(&e, ErrorKind::Invalid, 8, "imap[1].name");
    assert!(e.message().contains("another account"), "{e}");
    let e = err(
        "[[imap]]\nname = \"bad name\"\nhost = \"h\"\nusername = \"u\"\npassword_env = \"PW\"\n",
    );
    assert_err(&e, ErrorKind::Invalid, 2, "imap[0].name");
    let e = err(
        "[[imap]]\nname = \"a\"\nhost = \"not a host\"\nusername = \"u\"\npassword_env = \"PW\"\n",
    );
    assert_err(&e, ErrorKind::Invalid, 3, "imap[0].host");
    let e = err(&format!("{IMAP_OK}mailbox = \"\"\n"));
    assert_err(&e, ErrorKind::Invalid, 6, "imap[0].mailbox");
    let e = err(&format!("{IMAP_OK}tls = \"none\"\nca_file = \"ca.pem\"\n"));
    assert_err(&e, ErrorKind::Invalid, 7, "imap[0].ca_file");
}

#[test]
fn imap_needs_exactly_one_secret() {
    // None: reported at the account.
    let e = err("[smtp]\n\n[[imap]]\nname = \"a\"\nhost = \"h\"\nusername = \"u\"\n");
    assert_eq!(e.key(), Some("imap[0].password_env"), "{e}");
    assert!(matches!(e.line(), Some(3) | Some(4)), "{e}");
    assert!(e.message().contains("xoauth2_token_file"), "{e}");
    // Two: reported at the second.
    let e = err(&format!("{IMAP_OK}password_file = \"pw\"\n"));
    assert_err(&e, ErrorKind::Invalid, 6, "imap[0].password_file");
    let c = Config::parse(
        "[[imap]]\nname = \"a\"\nhost = \"h\"\nusername = \"u\"\nxoauth2_token_file = \"t\"\n",
        "x",
    );
    assert!(c.is_ok());
    let e = err("[[imap]]\nname = \"a\"\nhost = \"h\"\nusername = \"u\"\npassword_env = \"1X\"\n");
    assert_err(&e, ErrorKind::Invalid, 5, "imap[0].password_env");
    let e = err("[[imap]]\nname = \"a\"\nhost = \"h\"\nusername = \"\"\npassword_env = \"PW\"\n");
    assert_err(&e, ErrorKind::Invalid, 4, "imap[0].username");
}
