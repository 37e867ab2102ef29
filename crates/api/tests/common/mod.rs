//! What the API tests share: a server on 127.0.0.1:0, a small HTTP/1.1 client, and mail.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ipnet::IpNet;
use mailroom_api::{serve, ApiConfig, AppState};
use mailroom_pipeline::{Filter, Settings};
use mailroom_spool::{Envelope, Source};
use mailroom_store::{
    Address, CommitOutcome, Delivery, MessageKey, NewAttachment, NewMessage, Role, Store,
    StoreOptions, ThreadDecision, TicketId,
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| mailroom_api::metrics::install_recorder().expect("install recorder"))
        .clone()
}

pub struct Server {
    pub addr: SocketAddr,
    pub store: Store,
    api: watch::Sender<Arc<ApiConfig>>,
    _settings: watch::Sender<Arc<Settings>>,
    _config: watch::Sender<Arc<Value>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub async fn start(config: ApiConfig) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let (settings_tx, settings_rx) = watch::channel(Arc::new(Settings {
            filter: Some(Filter::default()),
            ..Settings::default()
        }));
        let (api_tx, api_rx) = watch::channel(Arc::new(config));
        let (config_tx, config_rx) = watch::channel(Arc::new(
            serde_json::json!({"http": {"listen": "127.0.0.1:8025"}, "secret": "[redacted]"}),
        ));
        let state = AppState::new(
            store.clone(),
            settings_rx,
            api_rx,
            config_rx,
            metrics_handle(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state, async move {
            let _ = stop_rx.await;
        }));
        Server {
            addr,
            store,
            api: api_tx,
            _settings: settings_tx,
            _config: config_tx,
            stop: Some(stop_tx),
            task: Some(task),
            _dir: dir,
        }
    }

    pub fn reconfigure(&self, f: impl FnOnce(&mut ApiConfig)) {
        let mut c = (**self.api.borrow()).clone();
        f(&mut c);
        self.api.send(Arc::new(c)).unwrap();
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let done = tokio::time::timeout(Duration::from_secs(15), self.task.take().unwrap())
            .await
            .expect("serve returns after shutdown");
        done.unwrap().unwrap();
    }

    pub fn token(&self, role: Role) -> String {
        self.token_named("test", role)
    }

    /// A token of agent `name` (tokens of one name belong to one agent).
    pub fn token_named(&self, name: &str, role: Role) -> String {
        self.store.token_create(name, role, None).unwrap().1
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.send("GET", path, token, None).await
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        json: Option<&str>,
    ) -> Resp {
        let mut headers = Vec::new();
        if let Some(t) = token {
            headers.push(format!("Authorization: Bearer {t}"));
        }
        let body = json.map(|j| {
            headers.push("Content-Type: application/json".to_string());
            j.as_bytes().to_vec()
        });
        self.raw(method, path, &headers, body.as_deref()).await
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[String],
        body: Option<&[u8]>,
    ) -> Resp {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        exchange(stream, method, path, headers, body).await
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The error code of a JSON error, checking the error shape.
    pub fn code(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let v = self.json();
        assert!(v["error"]["message"].is_string(), "{v}");
        v["error"]["code"].as_str().expect("error.code").to_string()
    }
}

/// One HTTP/1.1 request with `Connection: close`, read to the end.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &[String],
    body: Option<&[u8]>,
) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if let Some(b) = body {
        if !headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("transfer-encoding"))
        {
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    if let Some(b) = body {
        // The server may answer (413) and close before reading it all.
        let _ = stream.write_all(b).await;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut buf))
        .await
        .expect("response in time");
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> Resp {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Resp {
        status,
        headers,
        body,
    }
}

pub fn envelope() -> Envelope {
    Envelope {
        source: Source::Smtp,
        mail_from: "sender@example.com".into(),
        rcpt_to: vec!["help@desk.example".into()],
        peer: "192.0.2.1:2525".into(),
        helo: "client.example".into(),
        received_at: 1_700_000_000,
        tls: false,
    }
}

/// Store a message from `from` (spooled, then committed as the pipeline would).
pub fn deliver(
    store: &Store,
    from: &str,
    subject: &str,
    body: &str,
    thread: ThreadDecision,
    attachments: Vec<NewAttachment>,
) -> (Option<TicketId>, MessageKey, Vec<u8>) {
    let raw =
        format!("From: {from}\r\nTo: help@desk.example\r\nSubject: {subject}\r\n\r\n{body}\r\n")
            .into_bytes();
    let id = store
        .spool_append_blocking(envelope(), raw.clone())
        .unwrap();
    let delivery = Delivery {
        from: Address {
            address: from.into(),
            name: None,
        },
        thread,
        message: NewMessage {
            message_id: None,
            references: vec![],
            subject: subject.into(),
            date: None,
            headers: vec![("Subject".into(), subject.into())],
            text: Some(body.into()),
            html: None,
            raw: raw.clone(),
            envelope: envelope(),
            flags: vec![],
            content_hash: [0; 32],
        },
        attachments,
        classification: None,
    };
    match store.commit_message(id, delivery).unwrap() {
        CommitOutcome::Stored {
            ticket, message, ..
        } => (ticket, message, raw),
        other => panic!("{other:?}"),
    }
}

/// A ticket from alice with a ham message and a spammy one.
pub fn seed(store: &Store) -> (TicketId, MessageKey, MessageKey) {
    let (ticket, first, _) = deliver(
        store,
        "alice@example.com",
        "Printer on fire",
        "the printer on floor three is on fire again",
        ThreadDecision::New {
            subject: "Printer on fire".into(),
        },
        vec![],
    );
    let ticket = ticket.unwrap();
    let (_, spam, _) = deliver(
        store,
        "alice@example.com",
        "Re: Printer on fire",
        "cheap replica watches viagra casino bonus click here",
        ThreadDecision::Existing(ticket),
        vec![],
    );
    (ticket, first, spam)
}

pub fn loopback_config() -> ApiConfig {
    ApiConfig {
        auth_failures_per_minute: 1_000,
        ..ApiConfig::default()
    }
}

pub fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|n| n.parse().unwrap()).collect()
}
