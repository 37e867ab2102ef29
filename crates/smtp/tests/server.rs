//! The tokio driver over real TCP on 127.0.0.1, with in-memory spools.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailroom_smtp::{load_tls, run, SmtpConfig};
use mailroom_spool::{Envelope, Spool, SpoolError, SpoolId};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Guard against a hung test; never used to wait for something to happen.
const GUARD: Duration = Duration::from_secs(20);

#[derive(Default)]
struct MemSpool {
    messages: Mutex<Vec<(Envelope, Vec<u8>)>>,
}

impl MemSpool {
    fn messages(&self) -> Vec<(Envelope, Vec<u8>)> {
        self.messages.lock().unwrap().clone()
    }
}

impl Spool for MemSpool {
    fn append(
        &self,
        envelope: Envelope,
        raw: Vec<u8>,
    ) -> impl Future<Output = Result<SpoolId, SpoolError>> + Send {
        let mut messages = self.messages.lock().unwrap();
        messages.push((envelope, raw));
        let id = messages.len() as u64;
        async move { Ok(SpoolId(id)) }
    }
}

struct FullSpool;

impl Spool for FullSpool {
    async fn append(&self, _: Envelope, _: Vec<u8>) -> Result<SpoolId, SpoolError> {
        Err(SpoolError::Full)
    }
}

fn config() -> SmtpConfig {
    let mut c = SmtpConfig::new("mx.test", vec!["example.org".into()]);
    c.max_message_size = 10_000;
    c
}

struct Server {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
    config: watch::Sender<Arc<SmtpConfig>>,
}

impl Server {
    async fn start<S: Spool>(config: SmtpConfig, spool: Arc<S>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (config_tx, config_rx) = watch::channel(Arc::new(config));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(vec![listener], config_rx, spool, async move {
            let _ = stopped.await;
        }));
        Server {
            addr,
            stop: Some(stop),
            task,
            config: config_tx,
        }
    }

    async fn connect(&self) -> Client<TcpStream> {
        let mut c = Client::new(TcpStream::connect(self.addr).await.unwrap());
        let greeting = c.reply().await;
        assert!(greeting.starts_with("220 mx.test "), "{greeting}");
        c
    }

    fn shutdown(&mut self) {
        let _ = self.stop.take().unwrap().send(());
    }

    async fn finished(self) {
        tokio::time::timeout(GUARD, self.task)
            .await
            .expect("server did not stop")
            .unwrap()
            .unwrap();
    }
}

struct Client<S> {
    io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn new(io: S) -> Self {
        Client {
            io: BufReader::new(io),
        }
    }

    async fn send(&mut self, data: &[u8]) {
        self.io.get_mut().write_all(data).await.unwrap();
    }

    /// One reply, all its lines; empty at end of stream.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(GUARD, self.io.read_line(&mut line))
                .await
                .expect("no reply")
                .unwrap();
            all.push_str(&line);
            if n == 0 || line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    async fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(GUARD, self.io.read_to_end(&mut rest))
            .await
            .expect("connection not closed");
        // a reset after our unread data is as good as a close
        if read.is_ok() {
            assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
        }
    }
}

fn code(reply: &str) -> &str {
    reply.get(..9).unwrap_or(reply)
}

#[tokio::test]
async fn full_conversation_then_pipelined_one() {
    let spool = Arc::new(MemSpool::default());
    let mut server = Server::start(config(), spool.clone()).await;
    let mut c = server.connect().await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(ehlo.contains("250-PIPELINING\r\n") && ehlo.contains("250-SIZE 10000\r\n"));
    assert!(
        ehlo.contains("CHUNKING") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert_eq!(
        code(&c.cmd("MAIL FROM:<alice@example.net>").await),
        "250 2.1.0"
    );
    assert_eq!(
        code(&c.cmd("RCPT TO:<help@example.org>").await),
        "250 2.1.5"
    );
    assert_eq!(code(&c.cmd("RCPT TO:<x@example.com>").await), "550 5.1.1");
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(b"Subject: test\r\n\r\n..dot\r\n").await;
    assert_eq!(code(&c.cmd(".").await), "250 2.0.0");

    // everything pipelined in one write: replies come back in order
    c.send(
        b"MAIL FROM:<>\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n\
          bounce\r\n.\r\nNOOP\r\nQUIT\r\n",
    )
    .await;
    for expected in [
        "250 2.1.0",
        "250 2.1.5",
        "250 2.1.5",
        "354 Start",
        "250 2.0.0",
        "250 2.0.0",
        "221 2.0.0",
    ] {
        assert_eq!(code(&c.reply().await), expected);
    }
    c.expect_eof().await;

    let messages = spool.messages();
    assert_eq!(messages.len(), 2);
    let (env, raw) = &messages[0];
    assert_eq!(env.mail_from, "alice@example.net");
    assert_eq!(env.rcpt_to, ["help@example.org"]);
    assert_eq!(env.helo, "client.test");
    assert!(env.peer.starts_with("127.0.0.1:"));
    assert!(!env.tls);
    let raw = String::from_utf8(raw.clone()).unwrap();
    assert!(
        raw.starts_with(
            "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (mailroom) with ESMTP id "
        ),
        "{raw}"
    );
    assert!(raw.ends_with("\r\nSubject: test\r\n\r\n.dot\r\n"), "{raw}");
    assert_eq!(messages[1].0.mail_from, "");
    assert_eq!(messages[1].0.rcpt_to, ["a@example.org", "b@example.org"]);

    server.shutdown();
    server.finished().await;
}

#[tokio::test]
async fn oversized_message_is_refused_and_session_goes_on() {
    let spool = Arc::new(MemSpool::default());
    let mut server = Server::start(config(), spool.clone()).await;
    let mut c = server.connect().await;
    c.cmd("EHLO c").await;
    assert_eq!(
        code(&c.cmd("MAIL FROM:<a@example.net> SIZE=10001").await),
        "552 5.3.4"
    );
    c.cmd("MAIL FROM:<a@example.net>").await;
    c.cmd("RCPT TO:<help@example.org>").await;
    c.cmd("DATA").await;
    let line = [b'a'; 98];
    for _ in 0..2000 {
        c.send(&line).await;
        c.send(b"\r\n").await;
    }
    assert_eq!(code(&c.cmd(".").await), "552 5.3.4");
    // the transaction is over: a BDAT is refused once its chunk was read
    c.send(b"BDAT 4 LAST\r\nQUIT").await;
    assert_eq!(code(&c.reply().await), "503 5.5.1");
    assert_eq!(code(&c.cmd("NOOP").await), "250 2.0.0");
    assert!(spool.messages().is_empty());
    server.shutdown();
    server.finished().await;
}

#[tokio::test]
async fn full_spool_gets_451() {
    let mut server = Server::start(config(), Arc::new(FullSpool)).await;
    let mut c = server.connect().await;
    c.send(
        b"EHLO c\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<help@example.org>\r\nBDAT 2 LAST\r\nhi",
    )
    .await;
    for expected in ["250-mx.test", "250 2.1.0", "250 2.1.5", "451 4.3.2"] {
        assert!(c.reply().await.starts_with(expected), "{expected}");
    }
    server.shutdown();
    server.finished().await;
}

#[tokio::test]
async fn connections_over_the_limit_get_421() {
    let mut cfg = config();
    cfg.max_connections = 1;
    let mut server = Server::start(cfg, Arc::new(MemSpool::default())).await;
    let mut first = server.connect().await;
    let mut second = Client::new(TcpStream::connect(server.addr).await.unwrap());
    assert_eq!(code(&second.reply().await), "421 4.3.2");
    second.expect_eof().await;
    // the first session is unaffected
    assert_eq!(code(&first.cmd("NOOP").await), "250 2.0.0");
    assert_eq!(code(&first.cmd("QUIT").await), "221 2.0.0");
    server.shutdown();
    server.finished().await;
}

#[tokio::test]
async fn idle_and_data_timeouts_close_with_421() {
    let mut cfg = config();
    cfg.idle_timeout = Duration::from_millis(200);
    let mut server = Server::start(cfg, Arc::new(MemSpool::default())).await;
    let mut c = server.connect().await;
    assert_eq!(code(&c.reply().await), "421 4.4.2");
    c.expect_eof().await;
    server.shutdown();
    server.finished().await;

    let mut cfg = config();
    cfg.data_timeout = Duration::from_millis(200);
    let spool = Arc::new(MemSpool::default());
    let mut server = Server::start(cfg, spool.clone()).await;
    let mut c = server.connect().await;
    c.cmd("EHLO c").await;
    c.cmd("MAIL FROM:<a@example.net>").await;
    c.cmd("RCPT TO:<help@example.org>").await;
    c.cmd("DATA").await;
    c.send(b"Subject: never finished\r\n").await;
    assert_eq!(code(&c.reply().await), "421 4.4.2");
    c.expect_eof().await;
    assert!(spool.messages().is_empty());
    server.shutdown();
    server.finished().await;
}

#[tokio::test]
async fn graceful_shutdown_lets_transactions_finish() {
    let spool = Arc::new(MemSpool::default());
    let mut server = Server::start(config(), spool.clone()).await;
    let mut busy = server.connect().await;
    busy.cmd("EHLO busy").await;
    busy.cmd("MAIL FROM:<a@example.net>").await;
    busy.cmd("RCPT TO:<help@example.org>").await;
    busy.cmd("DATA").await;
    busy.send(b"Subject: in flight\r\n\r\n").await;
    let mut idle = server.connect().await;
    idle.cmd("EHLO idle").await;

    server.shutdown();
    // idle sessions are told at once...
    assert_eq!(code(&idle.reply().await), "421 4.3.2");
    idle.expect_eof().await;
    // ...and nothing new is accepted (the listener was closed before that 421)
    assert!(TcpStream::connect(server.addr).await.is_err());
    // the transaction in flight completes, then the session is closed
    busy.send(b"body\r\n.\r\n").await;
    assert_eq!(code(&busy.reply().await), "250 2.0.0");
    assert_eq!(code(&busy.reply().await), "421 4.3.2");
    busy.expect_eof().await;
    server.finished().await;
    assert_eq!(spool.messages().len(), 1);
}

#[tokio::test]
async fn sessions_still_busy_after_the_grace_period_are_closed() {
    let mut cfg = config();
    cfg.shutdown_grace = Duration::from_millis(200);
    let spool = Arc::new(MemSpool::default());
    let mut server = Server::start(cfg, spool.clone()).await;
    let mut c = server.connect().await;
    c.cmd("EHLO c").await;
    c.cmd("MAIL FROM:<a@example.net>").await;
    c.cmd("RCPT TO:<help@example.org>").await;
    c.cmd("DATA").await;
    c.send(b"Subject: slow\r\n").await;
    server.shutdown();
    assert_eq!(code(&c.reply().await), "421 4.3.2");
    c.expect_eof().await;
    server.finished().await;
    assert!(spool.messages().is_empty());
}

#[tokio::test]
async fn reloaded_config_applies_to_new_sessions_only() {
    let mut server = Server::start(config(), Arc::new(MemSpool::default())).await;
    let mut old = server.connect().await;
    let mut cfg = config();
    cfg.domains = vec!["example.net".into()];
    server.config.send(Arc::new(cfg)).unwrap();
    let mut new = server.connect().await;
    for c in [&mut old, &mut new] {
        c.cmd("EHLO c").await;
        c.cmd("MAIL FROM:<a@example.com>").await;
    }
    assert_eq!(
        code(&old.cmd("RCPT TO:<help@example.org>").await),
        "250 2.1.5"
    );
    assert_eq!(
        code(&new.cmd("RCPT TO:<help@example.org>").await),
        "550 5.1.1"
    );
    assert_eq!(
        code(&new.cmd("RCPT TO:<help@example.net>").await),
        "250 2.1.5"
    );
    // (sessions in a transaction would hold shutdown for the grace period)
    assert_eq!(code(&old.cmd("QUIT").await), "221 2.0.0");
    drop(new);
    server.shutdown();
    server.finished().await;
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn starttls_with_self_signed_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir =
        TempDir(std::env::temp_dir().join(format!("mailroom-smtp-tls-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let (cert_path, key_path) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    std::fs::write(&cert_path, ck.cert.pem()).unwrap();
    std::fs::write(&key_path, ck.signing_key.serialize_pem()).unwrap();
    assert!(
        load_tls(&key_path, &key_path).is_err(),
        "a key is not a certificate"
    );

    let mut cfg = config();
    cfg.tls = Some(load_tls(&cert_path, &key_path).unwrap());
    let spool = Arc::new(MemSpool::default());
    let mut server = Server::start(cfg, spool.clone()).await;
    let mut c = server.connect().await;
    assert!(c.cmd("EHLO c").await.contains("250-STARTTLS\r\n"));
    // a command pipelined after STARTTLS must not be executed
    c.send(b"STARTTLS\r\nMAIL FROM:<injected@example.net>\r\n")
        .await;
    assert_eq!(code(&c.reply().await), "220 2.0.0");
    assert!(c.io.buffer().is_empty());
    let tcp = c.io.into_inner();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let client_config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let mut c = Client::new(tls);

    assert_eq!(code(&c.cmd("MAIL FROM:<a@example.net>").await), "503 5.5.1");
    let ehlo = c.cmd("EHLO c").await;
    assert!(
        ehlo.starts_with("250-mx.test") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert_eq!(code(&c.cmd("STARTTLS").await), "503 5.5.1");
    c.cmd("MAIL FROM:<a@example.net>").await;
    c.cmd("RCPT TO:<help@example.org>").await;
    c.cmd("DATA").await;
    assert_eq!(code(&c.cmd("secret\r\n.").await), "250 2.0.0");
    assert_eq!(code(&c.cmd("QUIT").await), "221 2.0.0");

    let messages = spool.messages();
    assert_eq!(messages.len(), 1);
    assert!(messages[0].0.tls);
    assert_eq!(messages[0].0.mail_from, "a@example.net");
    assert!(String::from_utf8_lossy(&messages[0].1).contains(" with ESMTPS id "));
    server.shutdown();
    server.finished().await;
}
