//! Tidy checks: the dependency rules of ARCHITECTURE.md, enforced on the source tree.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The `[dependencies]` table of a crate's manifest (names only).
fn dependencies(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).expect("manifest");
    let value: toml::Value = toml::from_str(&text).expect("manifest parses");
    value
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn only_store_names_sled() {
    let mut files = Vec::new();
    for dir in ["src", "crates", "tests", "benches"] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(files.len() > 10, "found the sources");
    let store = root().join("crates/store");
    let this = root().join("tests/tidy.rs");
    let offenders: Vec<_> = files
        .iter()
        .filter(|f| !f.starts_with(&store) && **f != this)
        .filter(|f| {
            std::fs::read_to_string(f)
                .map(|t| t.contains("sled::") || t.contains("use sled"))
                .unwrap_or(false)
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "sled named outside crates/store: {offenders:?}"
    );
    for krate in ["config", "spool", "spamfilter", "pipeline", "smtp", "imap"] {
        let deps = dependencies(&root().join(format!("crates/{krate}/Cargo.toml")));
        assert!(!deps.iter().any(|d| d == "sled"), "{krate} depends on sled");
    }
}

#[test]
fn smtp_knows_nothing_of_tickets_or_storage() {
    let deps = dependencies(&root().join("crates/smtp/Cargo.toml"));
    let ours: Vec<_> = deps.iter().filter(|d| d.starts_with("mailroom-")).collect();
    assert_eq!(ours, vec!["mailroom-spool"], "smtp's mailroom dependencies");
}

#[test]
fn imap_knows_nothing_of_tickets_or_storage() {
    let deps = dependencies(&root().join("crates/imap/Cargo.toml"));
    let ours: Vec<_> = deps.iter().filter(|d| d.starts_with("mailroom-")).collect();
    assert_eq!(ours, vec!["mailroom-spool"], "imap's mailroom dependencies");
}

#[test]
fn config_spool_and_spamfilter_are_not_async() {
    for krate in ["config", "spool", "spamfilter"] {
        let deps = dependencies(&root().join(format!("crates/{krate}/Cargo.toml")));
        for banned in ["tokio", "sled", "futures", "async-std"] {
            assert!(
                !deps.iter().any(|d| d == banned),
                "{krate} depends on {banned}"
            );
        }
    }
}

#[test]
fn spamfilter_and_spool_do_no_io() {
    for krate in ["spamfilter", "spool"] {
        let mut files = Vec::new();
        rust_files(&root().join(format!("crates/{krate}/src")), &mut files);
        assert!(!files.is_empty());
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for banned in ["std::fs", "TcpStream", "UdpSocket", "File::open", "tokio::"] {
                assert!(!text.contains(banned), "{} uses {banned}", f.display());
            }
        }
    }
}
