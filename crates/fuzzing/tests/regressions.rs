//! Every saved fuzz finding (`fuzz/regressions/<target>/`) and every hand-written seed
//! (`fuzz/seeds/<target>/`) through its target's function, on stable Rust: a finding, once
//! fixed, stays fixed. A failure names the file.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files directly in `dir`, sorted (none if it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.') && n != "README.md")
        })
        .collect();
    files.sort();
    files
}

/// Run every file through `f`; on a panic, say which file and panic again.
fn run_files(files: &[PathBuf], f: fn(&[u8])) {
    for path in files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(&data))) {
            eprintln!("fuzz input {} fails", path.display());
            resume_unwind(panic);
        }
    }
}

fn run(target: &str) {
    let f = mailroom_fuzzing::target(target).expect("a target");
    let seeds = files(&fuzz_dir().join("seeds").join(target));
    assert!(!seeds.is_empty(), "no seeds for {target}");
    run_files(&seeds, f);
    run_files(&files(&fuzz_dir().join("regressions").join(target)), f);
    mailroom_fuzzing::reset(target);
}

#[test]
fn smtp_session() {
    run("smtp_session");
}

#[test]
fn parse_ticket() {
    run("parse_ticket");
}

#[test]
fn tokenizer() {
    run("tokenizer");
}

#[test]
fn config() {
    run("config");
}

#[test]
fn api_json() {
    run("api_json");
}

#[test]
fn every_target_is_tested_here() {
    for name in mailroom_fuzzing::TARGETS {
        assert!(mailroom_fuzzing::target(name).is_some(), "{name}");
        let this = include_str!("regressions.rs");
        assert!(
            this.contains(&format!("run(\"{name}\")")),
            "{name} is not run here"
        );
    }
    assert!(mailroom_fuzzing::target("nonesuch").is_none());
}

/// The runner does not swallow a target's panic.
#[test]
#[should_panic(expected = "found a bug")]
fn a_failing_input_fails_the_test() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("crash-1");
    std::fs::write(&file, b"boom").expect("write");
    run_files(&[file], |data| {
        if data == b"boom" {
            panic!("found a bug");
        }
    });
}
