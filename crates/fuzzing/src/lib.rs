//! The logic of mailroom's fuzz targets, as plain functions.
//!
//! Each function takes the fuzzer's bytes and panics where the target finds a bug (a panic in
//! the code under test, or a broken invariant checked here). The cargo-fuzz project in `fuzz/`
//! (nightly, libFuzzer) calls them from its targets; `tests/regressions.rs` (stable) runs
//! every saved crash (`fuzz/regressions/<target>/`) and seed (`fuzz/seeds/<target>/`) through
//! them, so a finding, once fixed, stays fixed. One copy of the logic, two drivers.
//!
//! | target | function | what it drives |
//! |---|---|---|
//! | `smtp_session` | [`smtp_session`] | the sans-IO SMTP session, bytes from a client cut into reads four ways |
//! | `parse_ticket` | [`parse_ticket`] | analysis of a raw message, then spool, threading, classification, routing and the store commit |
//! | `tokenizer` | [`tokenizer`] | the spam filter's tokenizer, classification with every combiner, train/untrain |
//! | `config` | [`config`] | TOML into the config loader and validator |
//! | `api_json` | [`api_json`] | request bodies (and queries, paths) through the HTTP API's router |

#![warn(missing_docs)]

mod api;
mod config;
mod smtp;
mod ticket;
mod tokenizer;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use mailroom_spamfilter::Label;

pub use api::api_json;
pub use config::config;
pub use smtp::smtp_session;
pub use ticket::{parse_ticket, MESSAGE_SEPARATOR, SEED_MESSAGE_ID, SEED_SENDER, STORE_ONE_IN};
pub use tokenizer::tokenizer;

/// The names of the fuzz targets, which are also the names of their directories under
/// `fuzz/seeds/`, `fuzz/regressions/` and `fuzz/corpus/`.
pub const TARGETS: [&str; 5] = [
    "smtp_session",
    "parse_ticket",
    "tokenizer",
    "config",
    "api_json",
];

/// The function of target `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    Some(match name {
        "smtp_session" => smtp_session,
        "parse_ticket" => parse_ticket,
        "tokenizer" => tokenizer,
        "config" => config,
        "api_json" => api_json,
        _ => return None,
    })
}

/// A TLS server configuration with a fresh self-signed certificate (made once).
fn tls_config() -> Arc<rustls::ServerConfig> {
    static TLS: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    TLS.get_or_init(|| {
        let ck = rcgen::generate_simple_self_signed(vec!["mx.example.org".to_string()])
            .expect("self-signed certificate");
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .expect("certificate");
        Arc::new(config)
    })
    .clone()
}

/// Where the targets put their temporary stores: `/dev/shm` when there is one (a store
/// fsyncs on every write, which costs nothing there), else the system's temporary directory.
fn scratch_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir()
        && tempfile::tempdir_in(&shm)
            .map(|d| d.close().is_ok())
            .unwrap_or(false)
    {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// Prefix of the directories of the targets' stores; the process id follows it.
const STORE_DIR_PREFIX: &str = "mailroom-fuzz-";

/// A new directory for a store. A store lives in a static and so is never dropped when the
/// process exits (libFuzzer ends with `exit`), leaving its directory behind: directories left
/// by processes that are gone are removed here first (once per process).
fn store_dir() -> tempfile::TempDir {
    static SWEPT: OnceLock<()> = OnceLock::new();
    let base = scratch_dir();
    SWEPT.get_or_init(|| {
        let Ok(entries) = std::fs::read_dir(&base) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(STORE_DIR_PREFIX))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            let proc = PathBuf::from("/proc");
            if proc.is_dir() && !proc.join(pid.to_string()).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
    tempfile::Builder::new()
        .prefix(&format!("{STORE_DIR_PREFIX}{}-", std::process::id()))
        .tempdir_in(base)
        .expect("temporary directory")
}

/// Drop the store that target `name` keeps between inputs (`parse_ticket` and `api_json` keep
/// one), and its directory; its next input makes a fresh one.
pub fn reset(name: &str) {
    match name {
        "parse_ticket" => ticket::reset(),
        "api_json" => api::reset(),
        _ => {}
    }
}

macro_rules! corpus_messages {
    ($($label:ident $path:literal),* $(,)?) => {
        &[$((Label::$label, include_bytes!(concat!("../../../corpus/spamassassin/", $path)) as &[u8])),*]
    };
}

/// What the spam filter is trained on before it classifies fuzz input: the first 12 ham and
/// 12 spam messages of `corpus/spamassassin/index` (past the filter's warm-up of 10 each, so
/// that spam and ham verdicts, not only "unsure", come out).
fn training_set() -> &'static [(Label, &'static [u8])] {
    corpus_messages![
        Ham "ham/easy_ham__01995.cdffea988c8a96c8ad9246306a1bd851",
        Ham "ham/easy_ham__00035.9069e05ad40dd0f98cdae72072ee7186",
        Ham "ham/easy_ham__00895.0c7898bdc5199ca3efd6af04c80430d0",
        Ham "ham/easy_ham__00107.787086c3c593b9e2335199019b130158",
        Ham "ham/easy_ham_2__00293.d7d6f188d63d99da505b454c146dac77",
        Ham "ham/hard_ham__00100.78af3dc4c39277a6e1893f287cc2771f",
        Ham "ham/easy_ham_2__01239.e0e538caae93690ba1b0e5c4b9b3f81e",
        Ham "ham/easy_ham_2__00424.e39b1db8cf5575572abb4482fd3fced3",
        Ham "ham/easy_ham_2__01096.b2ca8ea7972e15026589028566d00abb",
        Ham "ham/easy_ham__02014.9bd5595bc7eb6aa723a125b1c4597af7",
        Ham "ham/easy_ham_2__00132.45a855fd256c018dd4232353b72ae9ec",
        Ham "ham/hard_ham__00017.840244edb8cc88aba7129296ea536212",
        Spam "spam/spam_2__00861.e8b94fc9514d2d2cbb541b01e2dda726",
        Spam "spam/spam_2__00692.e886bd6ece727e1c1fdbae4dc4b60bb5",
        Spam "spam/spam_2__00028.60393e49c90f750226bee6381eb3e69d",
        Spam "spam/spam_2__00579.d94454f0e596c00bf22ce1f315427143",
        Spam "spam/spam_2__00359.90bec90ebeaf05f024f48594e7d7b0d5",
        Spam "spam/spam_2__00126.d6d2197becfb17af452e9117a5f4c947",
        Spam "spam/spam_2__00567.9a792928197fff7a7a38aee412bf4a07",
        Spam "spam/spam_2__01227.04a4f94c7a73b29cb56bf38c7d526116",
        Spam "spam/spam__00241.c28ade5771085a8fddd054a219566b7c",
        Spam "spam/spam_2__00551.26fe48f617edc23fa5053460d6bc7196",
        Spam "spam/spam_2__01338.a67c3827402b4610bd2a6814cd8cd907",
        Spam "spam/spam_2__01204.75323a3e0d38fe7a107bd0102daf6f26",
    ]
}
