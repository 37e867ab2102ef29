//! `api_json`: request bodies (and queries, path segments, bearer tokens) through the HTTP
//! API's router, in process, against a real store.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode, Uri};
use axum::Router;
use http_body_util::BodyExt;
use mailroom_api::{ApiConfig, AppState};
use mailroom_pipeline::{analyze, Filter, Limits, Settings};
use mailroom_spool::{Envelope, Source};
use mailroom_store::{CommitOutcome, Role, Store, StoreOptions, ThreadDecision, TicketId};
use tokio::sync::watch;
use tower::ServiceExt;

/// Requests served by one store and router before fresh ones are made (feedback moves
/// messages between tickets and the quarantine, so the state drifts; a fresh world every so
/// often keeps it close to the seeded one).
const REQUESTS_PER_WORLD: usize = 512;

/// Largest body the API takes here (413 beyond), small enough for fuzz input to exceed.
const MAX_BODY: usize = 4096;

/// The sending ends of the watch channels the router's state reads.
type Senders = (
    watch::Sender<Arc<Settings>>,
    watch::Sender<Arc<ApiConfig>>,
    watch::Sender<Arc<serde_json::Value>>,
);

struct World {
    router: Router,
    admin: String,
    agent: String,
    /// A message in a ticket, a quarantined one, one that does not exist.
    in_ticket: u64,
    quarantined: u64,
    requests: usize,
    runtime: tokio::runtime::Runtime,
    // Kept alive: the router's state reads them.
    _senders: Senders,
    store: Store,
    _dir: tempfile::TempDir,
}

fn envelope() -> Envelope {
    Envelope {
        source: Source::Smtp,
        mail_from: "sender@example.net".into(),
        rcpt_to: vec!["help@example.org".into()],
        peer: "192.0.2.1:25".into(),
        helo: "client.example.net".into(),
        received_at: 1_741_000_000,
        tls: false,
    }
}

/// Store `raw` where `decision` says, as the pipeline would.
fn deliver(store: &Store, raw: &[u8], decision: ThreadDecision) -> u64 {
    let id = store
        .spool_append_blocking(envelope(), raw.to_vec())
        .expect("spool append");
    let entry = store.spool_get(id).expect("spool read").expect("entry");
    let analysis = analyze(&entry, &Limits::default()).expect("analyzes");
    let flags = analysis.flags.clone();
    let delivery = analysis.into_delivery(entry.raw, entry.envelope, decision, flags);
    match store.commit_message(id, delivery).expect("commit") {
        CommitOutcome::Stored { message, .. } => message.0,
        CommitOutcome::AlreadyProcessed => panic!("already processed"),
    }
}

impl World {
    fn new() -> World {
        let dir = crate::store_dir();
        // The default page cache (16 MiB) is small enough for a fuzzer's many iterations.
        let store = Store::open(dir.path(), StoreOptions::default()).expect("store opens");
        let in_ticket = deliver(
            &store,
            b"From: Alice <alice@example.org>\r\nSubject: Printer on fire\r\n\
              Message-ID: <a1@example.org>\r\n\r\nIt is on fire.\r\n",
            ThreadDecision::New {
                subject: "Printer on fire".into(),
            },
        );
        deliver(
            &store,
            b"From: Alice <alice@example.org>\r\nSubject: Re: Printer on fire\r\n\
              In-Reply-To: <a1@example.org>\r\n\r\nStill on fire.\r\n",
            ThreadDecision::Existing(TicketId(1)),
        );
        let quarantined = deliver(
            &store,
            b"From: Winner <win@spam.example>\r\nSubject: You won\r\n\r\nClaim your prize!\r\n",
            ThreadDecision::Quarantine {
                ticket: None,
                subject: "You won".into(),
            },
        );
        let admin = store
            .token_create("fuzz-admin", Role::Admin, None)
            .expect("token")
            .1;
        let agent = store
            .token_create("fuzz-agent", Role::Agent, None)
            .expect("token")
            .1;

        let (settings_tx, settings_rx) = watch::channel(Arc::new(Settings {
            filter: Some(Filter::default()),
            ..Settings::default()
        }));
        let (api_tx, api_rx) = watch::channel(Arc::new(ApiConfig {
            max_body_bytes: MAX_BODY,
            auth_failures_per_minute: 0,
            ..ApiConfig::default()
        }));
        let (config_tx, config_rx) = watch::channel(Arc::new(
            serde_json::json!({"http": {"listen": ["127.0.0.1:8025"]}}),
        ));
        // A recorder of our own, not installed globally: `/metrics` renders it.
        let metrics = mailroom_api::metrics::builder().build_recorder().handle();
        let state = AppState::new(store.clone(), settings_rx, api_rx, config_rx, metrics);
        let router = mailroom_api::router(state);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        World {
            router,
            admin,
            agent,
            in_ticket,
            quarantined,
            requests: 0,
            runtime,
            _senders: (settings_tx, api_tx, config_tx),
            store,
            _dir: dir,
        }
    }
}

fn world() -> &'static Mutex<Option<World>> {
    static WORLD: Mutex<Option<World>> = Mutex::new(None);
    &WORLD
}

/// Drop the world and its store (see [`crate::reset`]).
pub(crate) fn reset() {
    *world().lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// The request a fuzz input stands for: its first byte picks the route, the content type,
/// the token and the peer; the rest is the body (or the query, or a path segment, or the
/// `Authorization` header).
fn request(world: &World, data: &[u8]) -> Option<Request<Body>> {
    let (&pick, rest) = data.split_first()?;
    let missing = 999_999;
    let text = || String::from_utf8_lossy(rest).into_owned();
    let (method, uri, body): (Method, String, Vec<u8>) = match pick & 7 {
        0 => (
            Method::POST,
            format!("/v1/messages/{}/feedback", world.in_ticket),
            rest.to_vec(),
        ),
        1 => (
            Method::POST,
            format!("/v1/messages/{}/feedback", world.quarantined),
            rest.to_vec(),
        ),
        2 => (
            Method::POST,
            format!("/v1/messages/{missing}/feedback"),
            rest.to_vec(),
        ),
        3 => (
            Method::POST,
            format!("/v1/quarantine/{}/release", world.quarantined),
            rest.to_vec(),
        ),
        4 => (Method::GET, format!("/v1/tickets?{}", text()), Vec::new()),
        5 => (
            Method::GET,
            format!("/v1/quarantine?{}", text()),
            Vec::new(),
        ),
        6 => (Method::GET, format!("/v1/tickets/{}", text()), Vec::new()),
        _ => (
            Method::DELETE,
            format!("/v1/quarantine/{}", text()),
            Vec::new(),
        ),
    };
    // Not a URI a client could send: the HTTP server refuses it before the router.
    let uri: Uri = uri.parse().ok()?;
    let mut req = Request::builder().method(method).uri(uri);
    match (pick >> 3) & 3 {
        0 => req = req.header(header::CONTENT_TYPE, "application/json"),
        1 => {}
        2 => req = req.header(header::CONTENT_TYPE, "application/json; charset=utf-8"),
        _ => req = req.header(header::CONTENT_TYPE, "text/plain"),
    }
    let token = if pick & 0x20 == 0 {
        &world.admin
    } else {
        &world.agent
    };
    if pick & 0x40 == 0 {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    } else {
        // The first line of the input as the whole header value (when it can be one).
        let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
        let value = header::HeaderValue::from_bytes(line).ok()?;
        req = req.header(header::AUTHORIZATION, value);
    }
    let peer: SocketAddr = if pick & 0x80 == 0 {
        "127.0.0.1:50000".parse().expect("address")
    } else {
        "[::1]:50000".parse().expect("address")
    };
    let mut req = req.body(Body::from(body)).ok()?;
    req.extensions_mut().insert(ConnectInfo(peer));
    Some(req)
}

/// Send one request, made from `data`, through the API's router (all layers: body limit,
/// authentication, JSON errors) against a store holding a ticket and a quarantined message,
/// with valid admin and agent tokens, and check: never a 5xx, every 4xx a JSON error body
/// `{"error":{"code","message"}}`, every 200 JSON.
pub fn api_json(data: &[u8]) {
    let mut guard = world().lock().unwrap_or_else(|e| e.into_inner());
    if guard
        .as_ref()
        .is_none_or(|w| w.requests >= REQUESTS_PER_WORLD)
    {
        *guard = None;
        *guard = Some(World::new());
    }
    let Some(world) = guard.as_mut() else {
        unreachable!("the world was just made")
    };
    world.requests += 1;
    let Some(req) = request(world, data) else {
        return;
    };
    let shown = format!("{} {}", req.method(), req.uri());
    let router = world.router.clone();
    let (status, content_type, body) = world.runtime.block_on(async move {
        let response = router.oneshot(req).await.expect("the router is infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes().to_vec());
        let body = response
            .into_body()
            .collect()
            .await
            .expect("response body")
            .to_bytes();
        (status, content_type, body)
    });
    assert!(
        !status.is_server_error(),
        "{shown}: {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let json = content_type
        .as_deref()
        .is_some_and(|v| v.starts_with(b"application/json"));
    if status.is_client_error() {
        assert!(json, "{shown}: {status} without a JSON body");
        let v: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{shown}: {status}: body is not JSON ({e})"));
        assert!(
            v["error"]["code"].as_str().is_some_and(|c| !c.is_empty())
                && v["error"]["message"].is_string(),
            "{shown}: {status}: not an error body: {v}"
        );
    } else if status == StatusCode::OK {
        assert!(json, "{shown}: 200 without JSON");
        serde_json::from_slice::<serde_json::Value>(&body)
            .unwrap_or_else(|e| panic!("{shown}: 200 with a body that is not JSON ({e})"));
    }
    // Keep the store's spool empty: nothing here appends to it.
    assert_eq!(world.store.spool_len(), 0);
}
