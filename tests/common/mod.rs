//! Test harness: the real `mailroom` binary on free ports in a temporary directory, a raw SMTP
//! client over a real socket, and the CLI.

#![allow(dead_code)]

use std::ffi::OsStr;
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
        Env::with_config(smtp_extra, "", "")
    }

    /// A config with the spam filter off: for tests of ingestion and threading, whose
    /// messages must become tickets whatever the starter model thinks of them.
    pub fn no_filter(smtp_extra: &str) -> Env {
        Env::with_config(smtp_extra, "", "[filter]\nenabled = false\n")
    }

    /// A config with extra TOML lines in `[smtp]` and in `[http]`, and `tail` (whole sections,
    /// e.g. `[filter]`) at the end.
    pub fn with_config(smtp_extra: &str, http_extra: &str, tail: &str) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let config = dir.path().join("mailroom.toml");
        let text = format!(
            "[store]\npath = {data:?}\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"mx.test\"\ndomains = [\"support.example.com\"]\n{smtp_extra}\n\n[http]\nlisten = [\"127.0.0.1:0\"]\n{http_extra}\n\n[log]\nlevel = \"warn\"\n\n{tail}\n"
        );
        std::fs::write(&config, text).expect("write config");
        Env { dir, config }
    }

    /// `token create --name NAME --role ROLE [--expires DAYS]`: the token's id and secret.
    pub fn token(&self, name: &str, role: &str, expires_days: Option<u64>) -> (u64, String) {
        let days = expires_days.map(|d| d.to_string());
        let mut args = vec!["token", "create", "--name", name, "--role", role];
        if let Some(d) = &days {
            args.extend(["--expires", d.as_str()]);
        }
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let mut lines = text.lines();
        let id = lines
            .next()
            .and_then(|l| l.strip_prefix("token "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no token id in {text:?}"));
        let secret = lines.next().unwrap_or_default().trim().to_string();
        assert!(!secret.is_empty(), "no secret in {text:?}");
        (id, secret)
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

    /// Start `mailroom serve` with its log (stderr) going to `log` at `filter`
    /// (`MAILROOM_LOG`).
    pub fn serve_logging(&self, log: &Path, filter: &str) -> Server {
        Server::start_with(&self.config, Some((log, filter)))
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
    /// The HTTP API's first address, when `http.listen` is not empty.
    pub http: Option<SocketAddr>,
    lines: mpsc::Receiver<String>,
}

impl Server {
    fn start(config: &Path) -> Server {
        Server::start_with(config, None)
    }

    fn start_with(config: &Path, log: Option<(&Path, &str)>) -> Server {
        Server::start_command(Command::new(bin()), config, log)
    }

    /// Start the server with its wall clock shifted by `offset` (libfaketime syntax, e.g.
    /// `-400d`); monotonic time is left alone so timers keep working.
    /// The library is preloaded into the server itself (the `faketime` program would fork it,
    /// and killing `faketime` would leave the server running).
    pub fn start_shifted(config: &Path, offset: &str) -> Server {
        let lib = std::fs::read_dir("/usr/lib")
            .expect("/usr/lib")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("faketime/libfaketimeMT.so.1"))
            .find(|p| p.is_file())
            .expect("libfaketime is not installed: run scripts/test, which installs it");
        Server::start_with_env(
            config,
            &[
                ("LD_PRELOAD", lib.as_os_str()),
                ("FAKETIME", OsStr::new(offset)),
                ("FAKETIME_DONT_FAKE_MONOTONIC", OsStr::new("1")),
            ],
        )
    }

    /// Start the server with these extra environment variables (e.g. an `LD_PRELOAD` shim).
    pub fn start_with_env(config: &Path, env: &[(&str, &OsStr)]) -> Server {
        let mut command = Command::new(bin());
        command.envs(env.iter().copied());
        Server::start_command(command, config, None)
    }

    fn start_command(mut command: Command, config: &Path, log: Option<(&Path, &str)>) -> Server {
        command
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::piped());
        match log {
            Some((path, filter)) => {
                let file = std::fs::File::create(path).expect("log file");
                command.stderr(file).env("MAILROOM_LOG", filter);
            }
            None => {
                command.stderr(Stdio::inherit());
            }
        }
        let mut child = command.spawn().expect("spawn mailroom serve");
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
        let mut http = None;
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
            if let Some(addr) = line.strip_prefix("http: listening on ") {
                http = http.or(Some(addr.parse().expect("http address")));
            }
            if line.starts_with("control: listening on ") {
                break;
            }
        }
        Server {
            child,
            smtp: smtp.expect("smtp address printed before control"),
            http,
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

    /// A client of the HTTP API.
    pub fn api(&self) -> Http {
        Http {
            addr: self.http.expect("the server listens for HTTP"),
        }
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

    /// Write raw bytes, reporting I/O errors (a server that closed the connection).
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
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

/// A minimal HTTP/1.1 client over a real socket (one request per connection).
#[derive(Debug, Clone, Copy)]
pub struct Http {
    pub addr: SocketAddr,
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} response is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    /// The `error.code` of a JSON error body; checks its shape and content type.
    pub fn error_code(&self) -> String {
        assert!(
            self.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "error without a JSON content type: {self:?}"
        );
        let v = self.json();
        let code = v["error"]["code"].as_str().unwrap_or_else(|| {
            panic!("error body without error.code: {v}");
        });
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "error body without error.message: {v}"
        );
        code.to_string()
    }
}

impl Http {
    /// Send one request; `token` goes in `Authorization: Bearer`, `body` as JSON.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> HttpResponse {
        let mut headers = Vec::new();
        if let Some(t) = token {
            headers.push(("Authorization".to_string(), format!("Bearer {t}")));
        }
        let body = body.map(|b| serde_json::to_vec(b).expect("json"));
        if body.is_some() {
            headers.push(("Content-Type".to_string(), "application/json".to_string()));
        }
        self.raw(method, path, &headers, body.as_deref())
    }

    /// Send one request with these headers (and `Host`, `Connection: close`,
    /// `Content-Length`).
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Option<&[u8]>,
    ) -> HttpResponse {
        let mut stream = TcpStream::connect(self.addr).expect("connect to the API");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).expect("write request");
        stream.write_all(body).expect("write body");
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).expect("read response");
        parse_http_response(&buf)
    }

    /// `GET path`.
    pub fn get(&self, path: &str, token: Option<&str>) -> HttpResponse {
        self.request("GET", path, token, None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, token: Option<&str>, body: Option<&Value>) -> HttpResponse {
        self.request("POST", path, token, body)
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str, token: Option<&str>) -> HttpResponse {
        self.request("DELETE", path, token, None)
    }

    /// `GET path` that must answer 200 with JSON.
    pub fn get_json(&self, path: &str, token: &str) -> Value {
        let r = self.get(path, Some(token));
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }
}

/// Parse a whole HTTP/1.1 response (the server closed the connection after it).
pub fn parse_http_response(buf: &[u8]) -> HttpResponse {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..end]).expect("header section is UTF-8");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &buf[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        let mut body = Vec::new();
        let mut at = rest;
        loop {
            let line_end = at
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size line");
            let size_text = std::str::from_utf8(&at[..line_end]).expect("chunk size");
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .expect("hex chunk size");
            at = &at[line_end + 2..];
            if size == 0 {
                break;
            }
            body.extend_from_slice(&at[..size]);
            at = &at[size + 2..];
        }
        body
    } else {
        match headers.iter().find(|(n, _)| n == "content-length") {
            Some((_, len)) => rest[..len.parse::<usize>().expect("content-length")].to_vec(),
            None => rest.to_vec(),
        }
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// A self-signed certificate for `mx.test` in `dir` (`cert.pem`) and its key (`key.pem`, with
/// file mode `key_mode`).
pub fn write_cert(
    dir: &Path,
    key_mode: u32,
) -> (PathBuf, PathBuf, rcgen::CertifiedKey<rcgen::KeyPair>) {
    use std::os::unix::fs::PermissionsExt;
    let ck = rcgen::generate_simple_self_signed(vec!["mx.test".to_string()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(key_mode)).unwrap();
    (cert, key, ck)
}

/// The `tls_cert` / `tls_key` config lines for these files.
pub fn tls_lines(cert: &Path, key: &Path) -> String {
    format!(
        "tls_cert = {:?}\ntls_key = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    )
}
