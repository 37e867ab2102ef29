//! IMAP ingestion against a real Dovecot (Debian's `dovecot-imapd`, installed by scripts/test):
//! each test runs its own Dovecot from `tests/dovecot/` on free 127.0.0.1 ports with a
//! passwd-file (and, for XOAUTH2, an oauth2 passdb asking the test's own token-introspection
//! server) and maildirs in a temporary directory, and the real `mailroom` binary.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{message, ticket_with, Env, Server};
use serde_json::Value;

const ALICE_PW: &str = "alice-imap-secret-4f1c9";
const BOB_PW: &str = "bob-imap-secret-83d2e";

/// Poll `check` until it gives `Some`, or panic with `what` after `limit`.
fn wait_for<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn id(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().expect("run id");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// A Dovecot of this test's own.
struct Dovecot {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    tls_port: u16,
}

impl Dovecot {
    /// Start Dovecot with `extra` config lines; wait until it greets. Logins by password only.
    fn start(extra: &str) -> Dovecot {
        Dovecot::launch(extra, None)
    }

    /// Start Dovecot that also takes XOAUTH2 and OAUTHBEARER, checking bearer tokens with the
    /// introspection server at `introspection_url` (Dovecot's oauth2 passdb); passwords still
    /// work for the test's own client.
    fn start_oauth2(introspection_url: &str) -> Dovecot {
        Dovecot::launch("", Some(introspection_url))
    }

    fn launch(extra: &str, introspection_url: Option<&str>) -> Dovecot {
        // Debian puts it in /usr/sbin, which a user's PATH may lack.
        let binary = if Path::new("/usr/sbin/dovecot").is_file() {
            PathBuf::from("/usr/sbin/dovecot")
        } else {
            common::require_tool("dovecot");
            PathBuf::from("dovecot")
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let root = id("-u") == "0";
        {
            use std::os::unix::fs::PermissionsExt;
            // Dovecot's unprivileged processes must reach their sockets and the maildirs.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        let (internal, group, login, uid, gid) = if root {
            (
                "dovecot".to_string(),
                "dovecot".to_string(),
                "dovenull".to_string(),
                65534,
                65534,
            )
        } else {
            let user = id("-un");
            (
                user.clone(),
                id("-gn"),
                user,
                id("-u").parse().unwrap(),
                id("-g").parse().unwrap(),
            )
        };
        if root {
            std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
        }
        // The server's certificate, for "localhost"; mailroom trusts it through `ca_file`.
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
        let (port, tls_port) = (free_port(), free_port());
        let template = include_str!("dovecot/dovecot.conf");
        let passwd = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dovecot/passwd");
        let oauth2 = match introspection_url {
            Some(url) => {
                let ext = include_str!("dovecot/dovecot-oauth2.conf.ext")
                    .replace("@INTROSPECTION_URL@", url);
                std::fs::write(dir.path().join("dovecot-oauth2.conf.ext"), ext).unwrap();
                include_str!("dovecot/oauth2.conf")
            }
            None => "",
        };
        let conf = template
            .replace("@OAUTH2@", oauth2)
            .replace("@DIR@", &dir.path().display().to_string())
            .replace("@PORT@", &port.to_string())
            .replace("@TLS_PORT@", &tls_port.to_string())
            .replace("@INTERNAL_USER@", &internal)
            .replace("@INTERNAL_GROUP@", &group)
            .replace("@LOGIN_USER@", &login)
            .replace("@MAIL_UID@", &uid.to_string())
            .replace("@MAIL_GID@", &gid.to_string())
            .replace("@PASSWD@", &passwd.display().to_string())
            .replace("@EXTRA@", extra);
        let conf_path = dir.path().join("dovecot.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(binary)
            .args(["-F", "-c"])
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dovecot");
        let dovecot = Dovecot {
            child,
            dir,
            port,
            tls_port,
        };
        wait_for(Duration::from_secs(20), "dovecot to greet", || {
            let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).ok()?;
            line.starts_with("* OK").then_some(())
        });
        dovecot
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn maildir(&self, user: &str) -> PathBuf {
        self.dir.path().join("home").join(user).join("Maildir")
    }

    fn login(&self, user: &str, password: &str) -> Imap {
        Imap::login(self.port, user, password)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM: the master stops its children too.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The test's own minimal IMAP client (plaintext, on the plain port).
struct Imap {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    tag: u32,
}

impl Imap {
    fn login(port: u16, user: &str, password: &str) -> Imap {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to dovecot");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut greeting = String::new();
        reader.read_line(&mut greeting).unwrap();
        let mut imap = Imap {
            stream,
            reader,
            tag: 0,
        };
        imap.ok(&format!("LOGIN {user} \"{password}\""));
        imap
    }

    /// Send a command; its untagged lines and the tagged status line.
    fn cmd(&mut self, command: &str) -> (Vec<String>, String) {
        self.tag += 1;
        let tag = format!("t{}", self.tag);
        write!(self.stream, "{tag} {command}\r\n").unwrap();
        self.read_until_tagged(&tag)
    }

    fn read_until_tagged(&mut self, tag: &str) -> (Vec<String>, String) {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            assert!(
                self.reader.read_line(&mut line).unwrap() > 0,
                "dovecot hung up"
            );
            let line = line.trim_end().to_string();
            if let Some(rest) = line.strip_prefix(&format!("{tag} ")) {
                return (lines, rest.to_string());
            }
            lines.push(line);
        }
    }

    fn ok(&mut self, command: &str) -> Vec<String> {
        let (lines, status) = self.cmd(command);
        assert!(status.starts_with("OK"), "{command}: {status} {lines:?}");
        lines
    }

    /// APPEND `messages` to `mailbox`, 100 at a time pipelined (LITERAL+).
    fn append(&mut self, mailbox: &str, messages: &[Vec<u8>]) {
        for chunk in messages.chunks(100) {
            let mut out = Vec::new();
            let first = self.tag + 1;
            for m in chunk {
                self.tag += 1;
                out.extend_from_slice(
                    format!("t{} APPEND {mailbox} {{{}+}}\r\n", self.tag, m.len()).as_bytes(),
                );
                out.extend_from_slice(m);
                out.extend_from_slice(b"\r\n");
            }
            self.stream.write_all(&out).unwrap();
            for t in first..=self.tag {
                let (_, status) = self.read_until_tagged(&format!("t{t}"));
                assert!(status.starts_with("OK"), "APPEND: {status}");
            }
        }
    }

    /// `SELECT mailbox`: its UIDVALIDITY and message count.
    fn select(&mut self, mailbox: &str) -> (u32, u32) {
        let lines = self.ok(&format!("SELECT {mailbox}"));
        let mut uid_validity = 0;
        let mut exists = 0;
        for l in &lines {
            if let Some(rest) = l.strip_prefix("* OK [UIDVALIDITY ") {
                uid_validity = rest.split(']').next().unwrap().parse().unwrap();
            }
            if let Some(n) = l.strip_suffix(" EXISTS") {
                exists = n.trim_start_matches("* ").parse().unwrap();
            }
        }
        (uid_validity, exists)
    }

    /// The flags of every message of the selected mailbox.
    fn flags(&mut self) -> Vec<String> {
        let (lines, status) = self.cmd("FETCH 1:* (FLAGS)");
        if !status.starts_with("OK") {
            return Vec::new();
        }
        lines.into_iter().filter(|l| l.contains("FETCH")).collect()
    }

    fn logout(mut self) {
        let _ = self.cmd("LOGOUT");
    }
}

/// A tiny OAuth 2 token-introspection endpoint (RFC 7662) on 127.0.0.1, for Dovecot's oauth2
/// passdb (`introspection_mode = post`): it answers `{"active": true, "username": USER}` for a
/// token it issued and `{"active": false}` for any other, one request per connection, and
/// remembers every token it was asked about.
struct Introspection {
    port: u16,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Introspection {
    /// Serve `issued`: (token, user name) pairs.
    fn start(issued: &[(&str, &str)]) -> Introspection {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the introspection server");
        let port = listener.local_addr().unwrap().port();
        let issued: HashMap<String, String> = issued
            .iter()
            .map(|(t, u)| (t.to_string(), u.to_string()))
            .collect();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (asked, stop) = (asked.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    if let Some(token) = Introspection::answer(conn, &issued) {
                        asked.lock().unwrap().push(token);
                    }
                }
            })
        };
        Introspection {
            port,
            asked,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/introspect", self.port)
    }

    /// Every token asked about so far, in order.
    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }

    /// Read one `POST` with a form body holding `token=...`, answer it, close; the token.
    fn answer(conn: TcpStream, issued: &HashMap<String, String>) -> Option<String> {
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let mut reader = BufReader::new(conn.try_clone().ok()?);
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().ok()?;
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        let body = String::from_utf8(body).ok()?;
        // Our tokens need no percent-decoding: letters, digits, `.` and `-`.
        let token = body
            .split('&')
            .find_map(|field| field.strip_prefix("token="))
            .unwrap_or_default()
            .to_string();
        let verdict = match issued.get(&token) {
            Some(user) => serde_json::json!({ "active": true, "username": user }),
            None => serde_json::json!({ "active": false }),
        }
        .to_string();
        let mut conn = conn;
        write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{verdict}",
            verdict.len()
        )
        .ok()?;
        Some(token)
    }
}

impl Drop for Introspection {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A message with a unique subject.
fn mail(subject: &str, body: &str) -> Vec<u8> {
    message("customer@example.org", subject, "", body)
}

/// An `[[imap]]` table for `dovecot`.
fn account(dovecot: &Dovecot, name: &str, user: &str, secret_line: &str, extra: &str) -> String {
    format!(
        "[[imap]]\nname = \"{name}\"\nhost = \"localhost\"\nport = {}\ntls = \"starttls\"\nca_file = {:?}\nusername = \"{user}\"\n{secret_line}\npoll_seconds = 5\n{extra}\n",
        dovecot.port,
        dovecot.cert().display().to_string()
    )
}

/// Write `secret` to a file of account `name`: the file and the `[[imap]]` line naming it under
/// `key` (`password_file` or `xoauth2_token_file`).
fn secret_file(env: &Env, name: &str, key: &str, secret: &str) -> (PathBuf, String) {
    let path = env.dir.path().join(format!("{name}.{key}"));
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    let line = format!("{key} = {:?}", path.display().to_string());
    (path, line)
}

fn password_file(env: &Env, name: &str, password: &str) -> (PathBuf, String) {
    secret_file(env, name, "password_file", password)
}

fn token_file(env: &Env, name: &str, token: &str) -> (PathBuf, String) {
    secret_file(env, name, "xoauth2_token_file", token)
}

/// An env whose config has the filter off (every message a ticket) and `imap` tables.
fn env_with(imap: impl FnOnce(&Env) -> String) -> Env {
    let env = Env::no_filter("");
    let tables = imap(&env);
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push('\n');
    text.push_str(&tables);
    std::fs::write(&env.config, text).unwrap();
    env
}

fn imap_status(env: &Env) -> Vec<Value> {
    match env.cli_json(&["imap", "status", "--json"]) {
        Value::Array(a) => a,
        other => panic!("imap status is not an array: {other}"),
    }
}

fn account_status(env: &Env, name: &str) -> Value {
    imap_status(env)
        .into_iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no status for {name}"))
}

/// Wait until account `name` is in `state`.
fn wait_state(env: &Env, name: &str, state: &str, limit: Duration) -> Value {
    wait_for(limit, &format!("{name} to be {state}"), || {
        let s = account_status(env, name);
        (s["state"] == state).then_some(s)
    })
}

fn count_with(tickets: &[Value], needle: &str) -> usize {
    tickets
        .iter()
        .filter(|t| t["subject"].as_str().is_some_and(|s| s.contains(needle)))
        .count()
}

#[test]
fn idle_delivers_within_seconds_and_a_restart_does_not_duplicate() {
    let dovecot = Dovecot::start("");
    let env = env_with(|env| {
        let (_, secret) = password_file(env, "desk", ALICE_PW);
        account(&dovecot, "desk", "alice", &secret, "")
    });
    let server = env.serve();
    let s = wait_state(&env, "desk", "idle", Duration::from_secs(30));
    assert_eq!(s["idle_supported"], true, "{s}");

    let mut alice = dovecot.login("alice", ALICE_PW);
    let sent = Instant::now();
    alice.append("INBOX", &[mail("Printer on fire imap-1", "It is on fire.")]);
    wait_for(
        Duration::from_secs(10),
        "the IMAP message to become a ticket",
        || ticket_with(&env.tickets(), "imap-1").map(|_| ()),
    );
    let latency = sent.elapsed();
    eprintln!("IDLE delivery to ticket: {latency:?}");
    // Marked \Seen on the server, only now that it is spooled.
    alice.select("INBOX");
    wait_for(Duration::from_secs(10), "the message to be \\Seen", || {
        let flags = alice.flags();
        (flags.len() == 1 && flags[0].contains("\\Seen")).then_some(())
    });
    let s = account_status(&env, "desk");
    assert_eq!(s["spooled"], 1, "{s}");
    assert_eq!(s["last_uid"], 1, "{s}");

    // Restart; meanwhile one more message arrives. The first is not fetched again.
    assert!(server.terminate());
    alice.append("INBOX", &[mail("Second imap-2", "Still on fire.")]);
    let stopped = account_status(&env, "desk");
    assert_eq!(stopped["state"], "not running", "{stopped}");
    assert_eq!(stopped["last_uid"], 1, "{stopped}");
    assert_eq!(stopped["messages"], 1, "{stopped}");
    let _server = env.serve();
    wait_for(Duration::from_secs(20), "the second message", || {
        ticket_with(&env.tickets(), "imap-2").map(|_| ())
    });
    let s = wait_state(&env, "desk", "idle", Duration::from_secs(20));
    assert_eq!(s["spooled"], 1, "only the new one is spooled: {s}");
    assert_eq!(s["duplicates"], 0, "{s}");
    let tickets = env.tickets();
    assert_eq!(count_with(&tickets, "imap-1"), 1, "{tickets:?}");
    assert_eq!(count_with(&tickets, "imap-2"), 1, "{tickets:?}");
    assert_eq!(tickets.len(), 2);
    alice.logout();
}

#[test]
fn a_uidvalidity_change_resyncs_without_duplicates_or_loss() {
    let dovecot = Dovecot::start("");
    // Implicit TLS this time (IMAPS).
    let env = env_with(|env| {
        let (_, secret) = password_file(env, "desk", ALICE_PW);
        account(&dovecot, "desk", "alice", &secret, "")
            .replace("tls = \"starttls\"", "tls = \"implicit\"")
            .replace(
                &format!("port = {}", dovecot.port),
                &format!("port = {}", dovecot.tls_port),
            )
    });
    let mut alice = dovecot.login("alice", ALICE_PW);
    alice.append(
        "INBOX",
        &[
            mail("uv-one", "1"),
            mail("uv-two", "2"),
            mail("uv-three", "3"),
        ],
    );
    let (old_validity, _) = alice.select("INBOX");
    alice.logout();
    let server = env.serve();
    wait_for(Duration::from_secs(20), "three tickets", || {
        (env.tickets().len() == 3).then_some(())
    });
    let s = wait_state(&env, "desk", "idle", Duration::from_secs(20));
    assert_eq!(s["uid_validity"], old_validity, "{s}");
    assert!(server.terminate());

    // Force a new UIDVALIDITY: Dovecot's UID list and indexes go; it numbers the mailbox anew.
    wait_for(
        Duration::from_secs(5),
        "a new second for a new UIDVALIDITY",
        || {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            (now > u64::from(old_validity)).then_some(())
        },
    );
    reset_uidvalidity(&dovecot, "alice");
    let mut alice = dovecot.login("alice", ALICE_PW);
    let (new_validity, exists) = alice.select("INBOX");
    assert_ne!(new_validity, old_validity, "UIDVALIDITY did not change");
    assert_eq!(exists, 3);
    alice.append("INBOX", &[mail("uv-four", "4")]);
    alice.logout();

    let _server = env.serve();
    wait_for(Duration::from_secs(20), "the fourth ticket", || {
        ticket_with(&env.tickets(), "uv-four").map(|_| ())
    });
    let s = wait_state(&env, "desk", "idle", Duration::from_secs(20));
    assert_eq!(s["uid_validity"], new_validity, "{s}");
    assert_eq!(s["duplicates"], 3, "the old three are recognised: {s}");
    assert_eq!(s["spooled"], 1, "{s}");
    env.wait_processed(Duration::from_secs(20));
    let tickets = env.tickets();
    assert_eq!(tickets.len(), 4, "{tickets:?}");
    for subject in ["uv-one", "uv-two", "uv-three", "uv-four"] {
        assert_eq!(count_with(&tickets, subject), 1, "{subject}: {tickets:?}");
    }
}

/// The server's log at the finest level that could show a secret: debug, with the IMAP library's
/// own trace asked for (mailroom turns it off whatever is asked).
const SECRET_HUNT_LOG: &str = "debug,async_imap=trace,imap_proto=trace,sled=info,rustls=info,hyper=info,hyper_util=info,h2=info,tower=info,notify=info";

#[test]
fn a_wrong_password_is_reported_and_retried_while_the_rest_keeps_working() {
    let dovecot = Dovecot::start("");
    let mut broken_file = PathBuf::new();
    let env = env_with(|env| {
        let (_, good) = password_file(env, "good", ALICE_PW);
        let (path, broken) = password_file(env, "broken", "not-the-password-7e1");
        broken_file = path;
        account(&dovecot, "good", "alice", &good, "")
            + &account(&dovecot, "broken", "bob", &broken, "")
    });
    let log = env.dir.path().join("server.log");
    let server = env.serve_logging(&log, SECRET_HUNT_LOG);
    // Retried: at least two failures in a row, each with a clear error.
    let s = wait_for(
        Duration::from_secs(30),
        "the broken account to fail twice",
        || {
            let s = account_status(&env, "broken");
            (s["failures"].as_u64() >= Some(2)).then_some(s)
        },
    );
    let error = s["last_error"].as_str().unwrap_or_default().to_string();
    assert!(error.starts_with("login failed"), "{s}");
    assert!(error.contains("AUTHENTICATIONFAILED"), "{s}");
    assert_eq!(s["state"], "backoff", "{s}");

    // The other account, and SMTP, work meanwhile.
    wait_state(&env, "good", "idle", Duration::from_secs(20));
    let mut alice = dovecot.login("alice", ALICE_PW);
    alice.append("INBOX", &[mail("Still working imap-good", "hello")]);
    let mut smtp = server.connect();
    smtp.cmd("EHLO client.example.org");
    let r = smtp.send_mail(
        "customer@example.org",
        &["help@support.example.com"],
        &mail("Over SMTP smtp-good", "hi"),
    );
    assert_eq!(r.code, 250);
    wait_for(Duration::from_secs(15), "both tickets", || {
        let t = env.tickets();
        (ticket_with(&t, "imap-good").is_some() && ticket_with(&t, "smtp-good").is_some())
            .then_some(())
    });

    // The text status names the error too.
    let out = env.cli(&["imap", "status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("broken") && text.contains("login failed"),
        "{text}"
    );

    // Fixed password: the account recovers by itself at its next try.
    std::fs::write(&broken_file, format!("{BOB_PW}\n")).unwrap();
    let s = wait_state(&env, "broken", "idle", Duration::from_secs(60));
    assert!(s["last_error"].is_null(), "{s}");
    let mut bob = dovecot.login("bob", BOB_PW);
    bob.append("INBOX", &[mail("Bob now imap-bob", "hello")]);
    wait_for(Duration::from_secs(15), "bob's ticket", || {
        ticket_with(&env.tickets(), "imap-bob").map(|_| ())
    });
    assert!(server.terminate());

    // No password, in the log (traced at the finest level asked for) or in the status.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("IMAP account failed"),
        "the failures are logged"
    );
    for secret in [ALICE_PW, BOB_PW, "not-the-password-7e1"] {
        assert!(!logged.contains(secret), "a password reached the log");
        assert!(!text.contains(secret));
    }
    // Dovecot saw the retries.
    let failed = dovecot
        .log()
        .lines()
        .filter(|l| l.contains("user=<bob>") && l.contains("auth failed"))
        .count();
    assert!(failed >= 2, "dovecot saw {failed} failed logins of bob");
}

#[test]
fn xoauth2_logs_in_through_dovecots_oauth2_passdb_and_a_stale_token_is_retried_until_renewed() {
    const ALICE_TOKEN: &str = "ya29.alice-0c81d4e7f2a9";
    const BOB_TOKEN: &str = "ya29.bob-5e2f7b1c93d0";
    const STALE_TOKEN: &str = "ya29.stale-9a3b4c5d6e7f";
    let introspection = Introspection::start(&[(ALICE_TOKEN, "alice"), (BOB_TOKEN, "bob")]);
    let dovecot = Dovecot::start_oauth2(&introspection.url());
    let mut bob_token_file = PathBuf::new();
    let env = env_with(|env| {
        let (_, alice) = token_file(env, "oauth", ALICE_TOKEN);
        let (path, bob) = token_file(env, "stale", STALE_TOKEN);
        bob_token_file = path;
        account(&dovecot, "oauth", "alice", &alice, "")
            + &account(&dovecot, "stale", "bob", &bob, "")
    });
    let log = env.dir.path().join("server.log");
    let server = env.serve_logging(&log, SECRET_HUNT_LOG);

    // 1. A valid token: AUTHENTICATE XOAUTH2 succeeds, IDLE, and new mail becomes a ticket.
    wait_state(&env, "oauth", "idle", Duration::from_secs(30));
    let mut alice = dovecot.login("alice", ALICE_PW);
    alice.append("INBOX", &[mail("Through XOAUTH2 oauth-alice-1", "hello")]);
    wait_for(Duration::from_secs(10), "alice's ticket", || {
        ticket_with(&env.tickets(), "oauth-alice-1").map(|_| ())
    });
    alice.select("INBOX");
    wait_for(Duration::from_secs(10), "the message to be \\Seen", || {
        let flags = alice.flags();
        (flags.len() == 1 && flags[0].contains("\\Seen")).then_some(())
    });
    assert!(
        dovecot
            .log()
            .lines()
            .any(|l| l.contains("Login: user=<alice>, method=XOAUTH2")),
        "dovecot logged no XOAUTH2 login of alice:\n{}",
        dovecot.log()
    );

    // 2. A token the provider no longer accepts: a clear login error, retried with backoff.
    let s = wait_for(
        Duration::from_secs(30),
        "the stale account to fail twice and back off",
        || {
            let s = account_status(&env, "stale");
            (s["failures"].as_u64() >= Some(2) && s["state"] == "backoff").then_some(s)
        },
    );
    assert_eq!(
        s["last_error"],
        "login failed: the server said: [AUTHENTICATIONFAILED] Authentication failed.",
        "{s}"
    );
    assert!(s["retry_at"].as_u64().is_some(), "{s}");
    assert!(s["last_uid"].is_null(), "it never got in: {s}");
    // Dovecot asked the provider about the stale token at each attempt.
    let stale_asked = introspection
        .asked()
        .iter()
        .filter(|t| *t == STALE_TOKEN)
        .count();
    assert!(stale_asked >= 2, "introspected {stale_asked} times");
    // Nothing else is affected: the other account stays logged in, SMTP takes mail.
    let good = account_status(&env, "oauth");
    assert_eq!(good["state"], "idle", "{good}");
    assert_eq!(good["errors_total"], 0, "{good}");
    let mut smtp = server.connect();
    smtp.cmd("EHLO client.example.org");
    let r = smtp.send_mail(
        "customer@example.org",
        &["help@support.example.com"],
        &mail("Over SMTP smtp-oauth", "hi"),
    );
    assert_eq!(r.code, 250);
    alice.append("INBOX", &[mail("Again oauth-alice-2", "hello")]);
    wait_for(Duration::from_secs(15), "both tickets", || {
        let t = env.tickets();
        (ticket_with(&t, "smtp-oauth").is_some() && ticket_with(&t, "oauth-alice-2").is_some())
            .then_some(())
    });
    let out = env.cli(&["imap", "status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("stale") && text.contains("login failed"),
        "{text}"
    );

    // 3. The token file renewed: read at the next attempt, which logs in; bob's mail arrives.
    std::fs::write(&bob_token_file, format!("{BOB_TOKEN}\n")).unwrap();
    let s = wait_state(&env, "stale", "idle", Duration::from_secs(60));
    assert!(s["last_error"].is_null(), "{s}");
    assert_eq!(s["failures"], 0, "{s}");
    assert!(introspection.asked().iter().any(|t| t == BOB_TOKEN));
    let mut bob = dovecot.login("bob", BOB_PW);
    bob.append("INBOX", &[mail("Renewed token oauth-bob", "hello")]);
    wait_for(Duration::from_secs(15), "bob's ticket", || {
        ticket_with(&env.tickets(), "oauth-bob").map(|_| ())
    });
    let good = account_status(&env, "oauth");
    assert_eq!(good["spooled"], 2, "{good}");
    assert_eq!(good["errors_total"], 0, "{good}");
    assert!(server.terminate());
    let tickets = env.tickets();
    for subject in ["oauth-alice-1", "oauth-alice-2", "smtp-oauth", "oauth-bob"] {
        assert_eq!(count_with(&tickets, subject), 1, "{subject}: {tickets:?}");
    }
    assert_eq!(tickets.len(), 4, "{tickets:?}");

    // No token in the log (the finest level asked for) or the status, bare or as the base64
    // XOAUTH2 response that carries it.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("IMAP account failed"),
        "the failures are logged"
    );
    use base64::Engine;
    for (user, token) in [
        ("alice", ALICE_TOKEN),
        ("bob", BOB_TOKEN),
        ("bob", STALE_TOKEN),
    ] {
        let response = base64::engine::general_purpose::STANDARD
            .encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"));
        for secret in [token, response.as_str()] {
            assert!(!logged.contains(secret), "a token reached the log");
            assert!(!text.contains(secret), "a token reached the status");
        }
    }
}

#[test]
fn after_move_and_delete_work_by_polling_without_idle_or_move() {
    // A server without IDLE and MOVE: polling, and COPY + \Deleted + UID EXPUNGE.
    let dovecot = Dovecot::start("imap_capability = IMAP4rev1 LITERAL+ SASL-IR UIDPLUS");
    let env = env_with(|env| {
        let (_, a) = password_file(env, "mover", ALICE_PW);
        let (_, b) = password_file(env, "deleter", BOB_PW);
        account(&dovecot, "mover", "alice", &a, "after = \"move:Done\"")
            + &account(&dovecot, "deleter", "bob", &b, "after = \"delete\"")
    });
    let _server = env.serve();
    let s = wait_state(&env, "mover", "polling", Duration::from_secs(30));
    assert_eq!(s["idle_supported"], false, "{s}");
    wait_state(&env, "deleter", "polling", Duration::from_secs(30));

    let mut alice = dovecot.login("alice", ALICE_PW);
    alice.append("INBOX", &[mail("moved-1", "a"), mail("moved-2", "b")]);
    let mut bob = dovecot.login("bob", BOB_PW);
    bob.append("INBOX", &[mail("deleted-1", "c"), mail("deleted-2", "d")]);
    wait_for(Duration::from_secs(30), "four tickets by polling", || {
        (env.tickets().len() == 4).then_some(())
    });
    wait_for(
        Duration::from_secs(10),
        "alice's INBOX moved to Done",
        || {
            let inbox = alice.select("INBOX").1;
            let done = alice.select("Done").1;
            (inbox == 0 && done == 2).then_some(())
        },
    );
    wait_for(Duration::from_secs(10), "bob's INBOX emptied", || {
        (bob.select("INBOX").1 == 0).then_some(())
    });
    let tickets = env.tickets();
    for subject in ["moved-1", "moved-2", "deleted-1", "deleted-2"] {
        assert_eq!(count_with(&tickets, subject), 1, "{subject}: {tickets:?}");
    }
}

#[test]
fn imap_sync_without_a_server_runs_in_process() {
    let dovecot = Dovecot::start("");
    let env = env_with(|env| {
        let (_, secret) = password_file(env, "desk", ALICE_PW);
        account(
            &dovecot,
            "desk",
            "alice",
            &secret,
            "after = \"move:Archive\"",
        )
    });
    let mut alice = dovecot.login("alice", ALICE_PW);
    let messages: Vec<Vec<u8>> = (0..25)
        .map(|i| mail(&format!("offline-{i:02}"), "body"))
        .collect();
    alice.append("INBOX", &messages);
    let out = env.cli(&["imap", "sync", "desk"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("25 spooled"), "{stdout}");
    assert_eq!(env.tickets().len(), 25);
    assert_eq!(alice.select("INBOX").1, 0);
    assert_eq!(alice.select("Archive").1, 25);
    // Again: nothing new, nothing twice.
    let out = env.cli(&["imap", "sync", "desk"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 spooled"));
    assert_eq!(env.tickets().len(), 25);
    let s = account_status(&env, "desk");
    assert_eq!(s["state"], "not running");
    assert_eq!(s["messages"], 25, "{s}");
    // An unknown account is an error that says so.
    let out = env.cli(&["imap", "sync", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [[imap]] account named"));
}

/// Peak resident memory of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Delete Dovecot's UID list and indexes of `user`'s INBOX: it numbers the mailbox anew, with a
/// new UIDVALIDITY (the caller makes sure a second has passed since the old one).
fn reset_uidvalidity(dovecot: &Dovecot, user: &str) {
    for entry in std::fs::read_dir(dovecot.maildir(user)).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("dovecot-uidlist") || name.starts_with("dovecot.index") {
            std::fs::remove_file(&path).unwrap();
        }
    }
}

#[test]
fn five_thousand_messages_sync_in_batches_with_bounded_memory() {
    const N: usize = 5000;
    const BODY: usize = 20 * 1024;
    let dovecot = Dovecot::start("");
    let mut alice = dovecot.login("alice", ALICE_PW);
    let filler = "lorem ipsum dolor sit amet ".repeat(BODY / 27);
    let messages: Vec<Vec<u8>> = (0..N)
        .map(|i| mail(&format!("bulk-{i:05}"), &format!("{i}\n{filler}")))
        .collect();
    let mailbox_mib = messages.iter().map(Vec::len).sum::<usize>() as u64 >> 20;
    alice.append("INBOX", &messages);
    drop(messages);
    let (old_validity, _) = alice.select("INBOX");
    // (Dovecot ends sessions whose mailbox is renumbered under them.)
    alice.logout();
    let env = env_with(|env| {
        let (_, secret) = password_file(env, "bulk", ALICE_PW);
        account(&dovecot, "bulk", "alice", &secret, "")
    });
    // A small page cache and spool: the sync waits for room when the spool is full
    // (backpressure, not an error), so the pipeline sets the pace.
    let text = std::fs::read_to_string(&env.config).unwrap().replacen(
        "[store]\n",
        "[store]\ncache_mb = 16\nspool_max_entries = 500\n",
        1,
    );
    std::fs::write(&env.config, text).unwrap();

    // 1. The first sync: every message spooled once, in batches, with a progress bar.
    let server: Server = env.serve();
    let started = Instant::now();
    // `imap sync` follows the running server's sync with a progress bar, and returns when done.
    let out = env.cli(&["imap", "sync", "bulk"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = wait_for(Duration::from_secs(600), "all messages spooled", || {
        let s = account_status(&env, "bulk");
        (s["spooled"].as_u64() == Some(N as u64)).then_some(s)
    });
    let took = started.elapsed();
    assert_eq!(s["duplicates"], 0, "{s}");
    assert_eq!(s["last_uid"], N as u64, "{s}");
    env.wait_processed(Duration::from_secs(600));
    let peak = vm_hwm_kib(server.child.id()) >> 10;
    eprintln!(
        "first sync: {N} messages ({mailbox_mib} MiB) in {took:?} ({:.0} msg/s, pipeline included); server VmHWM {peak} MiB",
        N as f64 / took.as_secs_f64(),
    );
    assert!(peak < 512, "the server peaked at {peak} MiB");
    assert!(server.terminate());
    assert_eq!(env.stats()["tickets"], N as u64);

    // 2. A UIDVALIDITY change makes the fetcher read the whole mailbox again. Everything is a
    // duplicate, so the store and the pipeline do (almost) nothing: what the process grows by is
    // the fetcher's own memory, which must not depend on the mailbox's size.
    wait_for(
        Duration::from_secs(5),
        "a new second for a new UIDVALIDITY",
        || {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            (now > u64::from(old_validity)).then_some(())
        },
    );
    reset_uidvalidity(&dovecot, "alice");
    let server: Server = env.serve();
    let baseline = vm_hwm_kib(server.child.id()) >> 10;
    let started = Instant::now();
    let s = wait_for(
        Duration::from_secs(600),
        "the whole mailbox read again",
        || {
            let s = account_status(&env, "bulk");
            (s["duplicates"].as_u64() == Some(N as u64) && s["state"] == "idle").then_some(s)
        },
    );
    let took = started.elapsed();
    let peak = vm_hwm_kib(server.child.id()) >> 10;
    eprintln!(
        "re-sync after a UIDVALIDITY change: {N} messages in {took:?} ({:.0} msg/s), all recognised; server VmHWM {peak} MiB (at start {baseline} MiB)",
        N as f64 / took.as_secs_f64(),
    );
    assert_eq!(s["spooled"], 0, "{s}");
    assert_ne!(s["uid_validity"], old_validity, "{s}");
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < 48 && growth < mailbox_mib / 2,
        "reading a {mailbox_mib} MiB mailbox grew the server by {growth} MiB"
    );
    assert_eq!(env.stats()["tickets"], N as u64);
    let mut alice = dovecot.login("alice", ALICE_PW);
    assert_eq!(alice.select("INBOX").1, N as u32);
    let flags = alice.flags();
    assert_eq!(flags.len(), N);
    assert!(
        flags.iter().all(|f| f.contains("\\Seen")),
        "all marked \\Seen"
    );
}

#[test]
fn accounts_follow_a_config_reload() {
    let dovecot = Dovecot::start("");
    let env = Env::no_filter("");
    // The server reads (and reloads) its own copy; the CLI keeps the plain one.
    let plain = std::fs::read_to_string(&env.config).unwrap();
    let served = env.dir.path().join("served.toml");
    std::fs::write(&served, &plain).unwrap();
    let server = env.serve_with(&served);
    assert!(imap_status(&env).is_empty());

    // Added: started without a restart.
    let (_, secret) = password_file(&env, "desk", ALICE_PW);
    let with_account = format!(
        "{plain}\n{}",
        account(&dovecot, "desk", "alice", &secret, "")
    );
    std::fs::write(&served, &with_account).unwrap();
    server.wait_line("imap: started desk", Duration::from_secs(20));
    wait_state(&env, "desk", "idle", Duration::from_secs(20));
    let mut alice = dovecot.login("alice", ALICE_PW);
    alice.append("INBOX", &[mail("After reload imap-reload", "hi")]);
    wait_for(Duration::from_secs(10), "the ticket", || {
        ticket_with(&env.tickets(), "imap-reload").map(|_| ())
    });

    // Changed: restarted (and it carries on from its stored state: nothing twice).
    std::fs::write(
        &served,
        with_account.replace("poll_seconds = 5", "poll_seconds = 7"),
    )
    .unwrap();
    server.wait_line("imap: restarted desk", Duration::from_secs(20));
    let s = wait_for(Duration::from_secs(20), "the restarted account", || {
        let s = account_status(&env, "desk");
        (s["state"] == "idle" && s["syncs"].as_u64() >= Some(1)).then_some(s)
    });
    assert_eq!(s["spooled"], 0, "{s}");
    assert_eq!(s["last_uid"], 1, "{s}");

    // A bad file changes nothing; removed: stopped.
    std::fs::write(&served, format!("{with_account}\n[[imap]]\nname = \"x\"\n")).unwrap();
    let rejected = server.wait_line("config: rejected", Duration::from_secs(20));
    assert!(rejected.contains("imap[1].host: must be set"), "{rejected}");
    assert_eq!(imap_status(&env).len(), 1);
    std::fs::write(&served, &plain).unwrap();
    server.wait_line("imap: stopped desk", Duration::from_secs(20));
    assert!(imap_status(&env).is_empty());
    assert_eq!(env.tickets().len(), 1);
}
