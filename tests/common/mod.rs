//! Test harness: the real `mailroom` binary on free ports in a temporary directory, a raw SMTP
//! client over a real socket, and the CLI.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mailroom")
}

/// A temporary data directory and config file.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Env {
    /// A config with the given extra TOML lines in `[smtp]`.
    pub fn new(smtp_extra: &str) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let config = dir.path().join("mailroom.toml");
        let text = format!(
            "[store]\npath = {data:?}\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"mx.test\"\ndomains = [\"support.example.com\"]\n{smtp_extra}\n\n[http]\nlisten = [\"127.0.0.1:0\"]\n\n[log]\nlevel = \"warn\"\n"
        );
        std::fs::write(&config, text).expect("write config");
        Env { dir, config }
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Run a CLI command with `--config`, returning its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        let config = self.config.to_str().expect("utf-8 path");
        all.push("--config");
        all.push(config);
        Command::new(bin())
            .args(&all)
            .output()
            .expect("run mailroom")
    }

    /// Run a CLI command that must succeed and print JSON.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "mailroom {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "mailroom {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Start `mailroom serve` and wait until it listens.
    pub fn serve(&self) -> Server {
        Server::start(&self.config)
    }

    /// Start `mailroom serve` with another config file (same data directory), e.g. one the
    /// test edits while the CLI keeps using [`Env::config`].
    pub fn serve_with(&self, config: &Path) -> Server {
        Server::start(config)
    }

    /// `tickets list --json`.
    pub fn tickets(&self) -> Vec<Value> {
        match self.cli_json(&["tickets", "list", "--json"]) {
            Value::Array(a) => a,
            other => panic!("tickets list is not an array: {other}"),
        }
    }

    /// `stats --json`.
    pub fn stats(&self) -> Value {
        self.cli_json(&["stats", "--json"])
    }

    /// Poll until the spool is empty (every accepted message processed), or panic after `limit`.
    pub fn wait_processed(&self, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let stats = self.stats();
            if stats["spool"].as_u64() == Some(0) {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "spool not drained in {limit:?}: {stats}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A running server.
pub struct Server {
    pub child: Child,
    pub smtp: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl Server {
    fn start(config: &Path) -> Server {
        let mut child = Command::new(bin())
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mailroom serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut smtp = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => {
                    let _ = child.kill();
                    panic!("server did not start: {e:?}")
                }
            };
            if let Some(addr) = line.strip_prefix("smtp: listening on ") {
                smtp = Some(addr.parse().expect("smtp address"));
            }
            if line.starts_with("control: listening on ") {
                break;
            }
        }
        Server {
            child,
            smtp: smtp.expect("smtp address printed before control"),
            lines: rx,
        }
    }

    /// Send SIGTERM and wait for the process to end; returns whether it exited successfully.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        let status = self.child.wait().expect("wait");
        status.success()
    }

    /// SIGKILL, no goodbye.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait for a line on the server's stdout that starts with `prefix`; returns it.
    pub fn wait_line(&self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let mut other = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(line) => other.push(line),
                Err(e) => panic!(
                    "no line starting with {prefix:?} within {limit:?} ({e:?}); saw {other:?}"
                ),
            }
        }
    }

    /// A raw SMTP connection.
    pub fn connect(&self) -> Smtp {
        Smtp::connect(self.smtp)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal SMTP client over a real socket, for exact protocol checks.
pub struct Smtp {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

/// One reply: code and text lines.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// The whole text.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

impl Smtp {
    /// Connect and read the greeting.
    pub fn connect(addr: SocketAddr) -> Smtp {
        Smtp::try_connect(addr).expect("connect and greeting")
    }

    /// Connect and read the greeting, reporting failures instead of panicking.
    pub fn try_connect(addr: SocketAddr) -> std::io::Result<Smtp> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut smtp = Smtp { stream, reader };
        let greeting = smtp.try_reply()?;
        if greeting.code != 220 {
            return Err(std::io::Error::other(format!("greeting: {greeting:?}")));
        }
        Ok(smtp)
    }

    /// Read one (possibly multi-line) reply.
    pub fn reply(&mut self) -> Reply {
        self.try_reply().expect("read reply")
    }

    /// Read one reply, reporting a closed connection as an error.
    pub fn try_reply(&mut self) -> std::io::Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let line = line.trim_end().to_string();
            let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line);
            if !more {
                return Ok(Reply { code, lines });
            }
        }
    }

    /// Write raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Send one command line and read its reply.
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.try_cmd(line).expect("command")
    }

    /// Send one command line and read its reply, reporting I/O errors.
    pub fn try_cmd(&mut self, line: &str) -> std::io::Result<Reply> {
        self.stream.write_all(format!("{line}\r\n").as_bytes())?;
        self.try_reply()
    }

    /// EHLO, MAIL, RCPT..., DATA, message, `.`: returns the final reply (or the first failure).
    pub fn send_mail(&mut self, from: &str, to: &[&str], message: &[u8]) -> Reply {
        self.try_send_mail(from, to, message).expect("send mail")
    }

    /// [`Smtp::send_mail`], reporting I/O errors (a server that died) instead of panicking.
    pub fn try_send_mail(
        &mut self,
        from: &str,
        to: &[&str],
        message: &[u8],
    ) -> std::io::Result<Reply> {
        let r = self.try_cmd(&format!("MAIL FROM:<{from}>"))?;
        if r.code != 250 {
            return Ok(r);
        }
        for rcpt in to {
            let r = self.try_cmd(&format!("RCPT TO:<{rcpt}>"))?;
            if r.code != 250 {
                return Ok(r);
            }
        }
        let r = self.try_cmd("DATA")?;
        if r.code != 354 {
            return Ok(r);
        }
        self.stream.write_all(&dot_stuff(message))?;
        self.stream.write_all(b".\r\n")?;
        self.try_reply()
    }

    /// Read until the server closes the connection; returns what it sent.
    pub fn read_to_close(&mut self) -> String {
        let mut rest = String::new();
        let _ = self.reader.read_to_string(&mut rest);
        rest
    }
}

/// Dot-stuff a message and make sure it ends with CRLF.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A simple message with CRLF line ends.
pub fn message(from: &str, subject: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    let mut m = format!(
        "From: {from}\r\nTo: help@support.example.com\r\nSubject: {subject}\r\nDate: Mon, 23 Nov 2026 21:50:32 +0000\r\n"
    );
    for h in extra_headers.lines().filter(|l| !l.is_empty()) {
        m.push_str(h);
        m.push_str("\r\n");
    }
    m.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
    for line in body.lines() {
        m.push_str(line);
        m.push_str("\r\n");
    }
    m.into_bytes()
}

/// Find the ticket whose subject contains `needle`.
pub fn ticket_with<'a>(tickets: &'a [Value], needle: &str) -> Option<&'a Value> {
    tickets
        .iter()
        .find(|t| t["subject"].as_str().is_some_and(|s| s.contains(needle)))
}

/// Whether a program is on PATH (tests that need one fail, never skip, when it is missing).
pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is not installed: run scripts/test, which installs what the tests need"
    );
}
