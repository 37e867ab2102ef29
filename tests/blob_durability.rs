//! A large message is durable before its `250`. sled 0.34 writes a page over ~128 KiB to its own
//! file `db/blobs/<lsn>` and never syncs it; the store keeps large values out of such pages
//! (chunks in the `bulk` tree, `crates/store/src/bulk.rs`), so a large message lives in sled's
//! log, which the flusher fdatasyncs before it completes any waiter; and should a blob file
//! still appear, the flusher fsyncs it and `db/blobs` too (its unit tests check that part).
//!
//! The server runs with a small `LD_PRELOAD` shim that logs every successful fsync-like call
//! with the path of its descriptor. The server replies `250` only after the flush, and the shim
//! writes its line before the call returns, so reading the log as soon as the `250` arrives
//! checks the order without any sleep.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::{Env, Server};

const WAIT: Duration = Duration::from_secs(30);

/// The shim: wraps fsync, fdatasync, syncfs and sync_file_range; after a successful call it
/// appends `<call> <path>\n` to the file named by `MAILROOM_SYNC_LOG`, with one write(2) on a
/// descriptor opened with O_APPEND, so lines from several threads never interleave.
const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void note(const char *call, int fd) {
    const char *log = getenv("MAILROOM_SYNC_LOG");
    if (log == NULL) return;
    char link[64];
    char path[4096];
    char line[4200];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) n = 0;
    path[n] = '\0';
    int len = snprintf(line, sizeof line, "%s %s\n", call, path);
    if (len < 0) return;
    if ((size_t)len >= sizeof line) len = sizeof line - 1;
    int out = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (out < 0) return;
    ssize_t w = write(out, line, (size_t)len);
    (void)w;
    close(out);
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int r = real(fd);
    if (r == 0) note("fsync", fd);
    return r;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int r = real(fd);
    if (r == 0) note("fdatasync", fd);
    return r;
}

int syncfs(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "syncfs");
    int r = real(fd);
    if (r == 0) note("syncfs", fd);
    return r;
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags) {
    static int (*real)(int, off_t, off_t, unsigned int);
    if (real == NULL)
        real = (int (*)(int, off_t, off_t, unsigned int))dlsym(RTLD_NEXT, "sync_file_range");
    int r = real(fd, offset, nbytes, flags);
    if (r == 0) note("sync_file_range", fd);
    return r;
}
"#;

/// Compile the shim into `dir`; returns the library's path.
fn build_shim(dir: &Path) -> PathBuf {
    let source = dir.join("sync_log_shim.c");
    let lib = dir.join("sync_log_shim.so");
    std::fs::write(&source, SHIM).expect("write the shim's source");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(&source)
        .arg("-ldl")
        .output()
        .expect("run cc (Rust needs it as its linker)");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lib
}

/// A message with one base64 attachment of `data`.
fn with_attachment(subject: &str, data: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let mut wrapped = String::with_capacity(b64.len() + b64.len() / 38);
    for chunk in b64.as_bytes().chunks(76) {
        wrapped.push_str(std::str::from_utf8(chunk).unwrap());
        wrapped.push_str("\r\n");
    }
    format!(
        "From: Bea <bea@example.org>\r\nTo: help@support.example.com\r\nSubject: {subject}\r\n\
         Message-ID: <blob-durability@example.org>\r\n\
         Date: Mon, 23 Nov 2026 21:50:32 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe scan is attached.\r\n\
         --b1\r\nContent-Type: application/octet-stream; name=\"scan.bin\"\r\n\
         Content-Disposition: attachment; filename=\"scan.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{wrapped}--b1--\r\n"
    )
    .into_bytes()
}

/// `(call, path)` for each line of the shim's log from byte `from` on.
fn sync_log(path: &Path, from: usize) -> Vec<(String, PathBuf)> {
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(from..).unwrap_or_default())
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(call, p)| (call.to_string(), PathBuf::from(p)))
        .collect()
}

/// The files in `dir`.
fn files_in(dir: &Path) -> HashSet<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.expect("read_dir").path()).collect())
        .unwrap_or_default()
}

#[test]
fn a_large_message_is_in_the_synced_log_before_its_250() {
    let env = Env::no_filter("");
    let shim = build_shim(env.dir.path());
    let log = env.dir.path().join("sync.log");
    let server = Server::start_with_env(
        &env.config,
        &[
            ("LD_PRELOAD", shim.as_os_str()),
            ("MAILROOM_SYNC_LOG", log.as_os_str()),
        ],
    );
    // The shim logs what /proc/self/fd shows: canonical paths.
    let blobs = std::fs::canonicalize(env.data())
        .expect("data directory")
        .join("db")
        .join("blobs");

    // 300,000 bytes that do not compress: ~400 KB of base64, far over sled's ~128 KiB.
    let data: Vec<u8> = (0u32..300_000)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let subject = "Scan of the broken invoice";
    let msg = with_attachment(subject, &data);
    assert!(msg.len() > 400_000, "{}", msg.len());

    let mut c = server.connect();
    assert_eq!(c.cmd("EHLO client.example.org").code, 250);
    // What was synced and which blob files existed before (sled has some from the start).
    let start = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
    let old_blobs = files_in(&blobs);
    let r = c.send_mail("bea@example.org", &["help@support.example.com"], &msg);
    assert_eq!(r.code, 250, "{r:?}");
    // Right after the 250: everything the flush before it synced is in the log.
    let synced = sync_log(&log, start);
    let shown = || {
        // sled's own sync_file_range calls on its log are many and beside the point.
        let mut lines: Vec<String> = synced
            .iter()
            .filter(|(call, _)| call != "sync_file_range")
            .map(|(call, p)| format!("{call} {}", p.display()))
            .collect();
        let skipped = synced.len() - lines.len();
        lines.push(format!("(and {skipped} sync_file_range calls)"));
        lines.join("\n")
    };
    let log_file = blobs.parent().expect("db").join("db");
    assert!(
        synced
            .iter()
            .any(|(call, p)| call == "fdatasync" && p == &log_file),
        "no fdatasync of sled's log {} before the 250; since the message, the shim saw:\n{}",
        log_file.display(),
        shown()
    );
    // The message is in chunks, not in a blob file. Other pages (the filter model's chunks
    // are bigger) can still become blob files at any time: any new one must be synced already.
    let unsynced: Vec<PathBuf> = files_in(&blobs)
        .difference(&old_blobs)
        .filter(|p| !synced.iter().any(|(call, s)| call == "fsync" && s == *p))
        .cloned()
        .collect();
    assert!(
        unsynced.is_empty(),
        "blob files not fsynced before the 250: {unsynced:?}; the shim saw:\n{}",
        shown()
    );
    assert_eq!(c.cmd("QUIT").code, 221);

    // And the message round-trips: processed into a ticket with its attachment, raw bytes intact.
    env.wait_processed(WAIT);
    let tickets = env.tickets();
    let t = common::ticket_with(&tickets, subject).unwrap_or_else(|| panic!("{tickets:?}"));
    assert_eq!(t["attachments"], 1, "{t}");
    let id = t["id"].as_u64().expect("ticket id").to_string();
    let detail = env.cli_json(&["tickets", "show", &id, "--json"]);
    let mid = detail["thread"][0]["id"]
        .as_u64()
        .expect("message id")
        .to_string();
    let raw = env.cli(&["messages", "raw", &mid]);
    assert!(raw.status.success());
    assert!(
        raw.stdout.ends_with(&msg),
        "the stored message is not the one sent ({} bytes stored)",
        raw.stdout.len()
    );

    assert!(server.terminate(), "graceful shutdown exits 0");
}
