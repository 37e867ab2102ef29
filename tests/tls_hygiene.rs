//! TLS and auth hygiene (issue 8, item 5): a private key file readable by group or others is
//! refused at start, on reload and by `config check`; STARTTLS works with a TLS 1.2-only
//! client (and 1.3); AUTH is never offered, before or after STARTTLS.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bin, tls_lines, write_cert, Env};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Run `mailroom serve --config FILE`, which must exit by itself within 30 s.
fn serve_exits(config: &Path) -> Output {
    let mut child = Command::new(bin())
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mailroom serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "mailroom serve kept running with a world-readable key: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn config_check(config: &Path) -> Output {
    Command::new(bin())
        .args(["config", "check"])
        .arg(config)
        .output()
        .expect("run mailroom config check")
}

/// The refusal names the config key, the file, its mode and the fix.
fn assert_refused(out: &Output, config_key: &str, key: &Path) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit {:?}: {stderr}", out.status);
    let key = key.display().to_string();
    for want in [
        config_key.to_string(),
        key.clone(),
        "0644".to_string(),
        format!("chmod 600 {key}"),
    ] {
        assert!(stderr.contains(&want), "{want:?} not in {stderr:?}");
    }
}

#[test]
fn world_readable_smtp_key_refused_by_serve_and_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = write_cert(dir.path(), 0o644);
    let env = Env::with_config(&tls_lines(&cert, &key), "", "");
    assert_refused(&serve_exits(&env.config), "smtp.tls_key", &key);
    assert_refused(&config_check(&env.config), "smtp.tls_key", &key);

    chmod(&key, 0o600);
    let out = config_check(&env.config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = env.serve();
    assert!(server.connect().cmd("EHLO c").text().contains("STARTTLS"));
}

#[test]
fn world_readable_http_key_refused_by_serve_and_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = write_cert(dir.path(), 0o644);
    let env = Env::with_config("", &tls_lines(&cert, &key), "");
    assert_refused(&serve_exits(&env.config), "http.tls_key", &key);
    assert_refused(&config_check(&env.config), "http.tls_key", &key);
    chmod(&key, 0o600);
    let out = config_check(&env.config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Write-then-rename, as editors do.
fn rewrite(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn reload_with_world_readable_key_is_rejected_and_running_config_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ck) = write_cert(dir.path(), 0o600);
    let env = Env::with_config(&tls_lines(&cert, &key), "", "");
    let server = env.serve();
    let text = std::fs::read_to_string(&env.config).unwrap();

    // A new key that anyone can read, and a config naming it (with a new max_recipients).
    let dir2 = dir.path().join("new");
    std::fs::create_dir(&dir2).unwrap();
    let (cert2, key2, _) = write_cert(&dir2, 0o644);
    let bad = text.replace(&tls_lines(&cert, &key), &tls_lines(&cert2, &key2));
    assert_ne!(bad, text);
    rewrite(&env.config, &bad);
    let line = server.wait_line("config: ", Duration::from_secs(10));
    assert!(line.starts_with("config: rejected"), "{line}");
    assert!(line.contains("smtp.tls_key"), "{line}");
    assert!(
        line.contains(&format!("chmod 600 {}", key2.display())),
        "{line}"
    );
    // Still serving STARTTLS with the old certificate.
    starttls_session(server.smtp, &ck, &rustls::version::TLS12);

    chmod(&key2, 0o600);
    rewrite(&env.config, &format!("{bad}\n# fixed\n"));
    let line = server.wait_line("config: ", Duration::from_secs(10));
    assert!(line.starts_with("config: reloaded"), "{line}");
}

/// Read one SMTP reply (all its lines).
fn reply(r: &mut impl BufRead) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "closed after {all:?}");
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

fn cmd<S: Read + Write>(r: &mut BufReader<S>, line: &str) -> String {
    r.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .unwrap();
    r.get_mut().flush().unwrap();
    reply(r)
}

/// EHLO's keywords, upper-cased.
fn keywords(ehlo: &str) -> Vec<String> {
    ehlo.lines()
        .skip(1)
        .filter_map(|l| l.get(4..))
        .map(|k| {
            k.split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase()
        })
        .collect()
}

/// EHLO (no AUTH), AUTH refused, STARTTLS with a client restricted to `version`, EHLO again
/// (no AUTH, no STARTTLS), AUTH refused, a message accepted.
fn starttls_session(
    addr: std::net::SocketAddr,
    ck: &rcgen::CertifiedKey<rcgen::KeyPair>,
    version: &'static rustls::SupportedProtocolVersion,
) {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = BufReader::new(tcp);
    assert!(reply(&mut r).starts_with("220 "));
    let ehlo = cmd(&mut r, "EHLO client.example.org");
    let kw = keywords(&ehlo);
    assert!(kw.contains(&"STARTTLS".to_string()), "{ehlo}");
    assert!(!kw.iter().any(|k| k.starts_with("AUTH")), "{ehlo}");
    let auth = cmd(&mut r, "AUTH PLAIN AHVzZXIAcGFzcw==");
    assert!(auth.starts_with('5'), "{auth}");
    assert!(cmd(&mut r, "STARTTLS").starts_with("220 "));
    assert!(r.buffer().is_empty());
    let tcp = r.into_inner();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("mx.test").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    let ehlo = cmd(&mut tls, "EHLO client.example.org");
    assert_eq!(
        tls.get_ref().conn.protocol_version(),
        Some(version.version),
        "negotiated"
    );
    let kw = keywords(&ehlo);
    assert!(ehlo.starts_with("250-mx.test"), "{ehlo}");
    assert!(!kw.iter().any(|k| k.starts_with("AUTH")), "{ehlo}");
    assert!(!kw.contains(&"STARTTLS".to_string()), "{ehlo}");
    let auth = cmd(&mut tls, "AUTH PLAIN AHVzZXIAcGFzcw==");
    assert!(auth.starts_with('5'), "{auth}");
    assert!(cmd(&mut tls, "MAIL FROM:<a@example.net>").starts_with("250"));
    assert!(cmd(&mut tls, "RCPT TO:<help@support.example.com>").starts_with("250"));
    assert!(cmd(&mut tls, "DATA").starts_with("354"));
    let done = cmd(&mut tls, "Subject: over TLS\r\n\r\nhello\r\n.");
    assert!(done.starts_with("250"), "{done}");
    assert!(cmd(&mut tls, "QUIT").starts_with("221"));
}

#[test]
fn starttls_tls12_and_tls13_and_never_auth() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ck) = write_cert(dir.path(), 0o600);
    let env = Env::no_filter(&tls_lines(&cert, &key));
    let server = env.serve();
    starttls_session(server.smtp, &ck, &rustls::version::TLS12);
    starttls_session(server.smtp, &ck, &rustls::version::TLS13);
    env.wait_processed(Duration::from_secs(30));
    assert_eq!(env.tickets().len(), 2);
}

#[test]
fn never_auth_without_tls() {
    let env = Env::new("");
    let server = env.serve();
    let mut c = server.connect();
    let ehlo = c.cmd("EHLO client.example.org");
    assert_eq!(ehlo.code, 250, "{ehlo:?}");
    assert!(
        !keywords(&ehlo.text())
            .iter()
            .any(|k| k.starts_with("AUTH") || k == "STARTTLS"),
        "{ehlo:?}"
    );
    let auth = c.cmd("AUTH LOGIN");
    assert!(auth.code >= 500, "{auth:?}");
}
