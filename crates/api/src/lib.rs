//! mailroom's HTTP API (axum), on its own listener, TLS when a certificate is configured.
//!
//! | route | role |
//! |---|---|
//! | `GET /healthz` | none |
//! | `GET /openapi.json` | agent |
//! | `GET /v1/tickets` (`status`, `requester`, `flagged`, `unsure`, `limit`, `cursor`) | agent |
//! | `GET /v1/tickets/{id}` | agent |
//! | `PATCH /v1/tickets/{id}` `{"status":"open"\|"closed"}` | agent |
//! | `GET /v1/messages/{id}/raw` | agent |
//! | `GET /v1/attachments/{contact}/{sha256}` | agent |
//! | `POST /v1/messages/{id}/feedback` `{"label":"spam"\|"ham"}` | agent |
//! | `GET /v1/quarantine`, `GET /v1/quarantine/{id}` | agent |
//! | `POST /v1/quarantine/{id}/release`, `DELETE /v1/quarantine/{id}` | agent |
//! | `GET /v1/filter/stats` | agent |
//! | `GET /v1/config` | admin |
//! | `GET /metrics` | admin |
//! | `POST /v1/privacy/erase` `{"email":...,"dry_run":false}` | admin |
//! | `POST /v1/privacy/export` `{"email":...}` (a `.tar.gz`) | admin |
//! | `GET /v1/audit` (`before`, `limit`) | admin |
//! | `DELETE /v1/agents/{name}` (an admin may delete their own agent: their token then stops working) | admin |
//!
//! Addresses of people go in request bodies, never in URLs (`requester` of `GET /v1/tickets`
//! excepted), and are never logged. Admins may do everything agents may. Who gets in is described in [`auth`]; errors in
//! [`error`]; metric names in [`metrics::names`].
//!
//! Layers, outermost first: a trace span per request (method and route template only: never
//! the URI, whose query may hold an address, nor bodies, tokens or peer addresses), request
//! metrics, JSON errors for responses made by the router or a layer (404, 405, ...),
//! authentication, the body limit, then the routes.

#![warn(missing_docs)]

pub mod auth;
pub mod dto;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod routes;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use http_body_util::BodyExt;
use ipnet::IpNet;
use mailroom_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tower_http::trace::TraceLayer;

pub use auth::Caller;
pub use error::ApiError;
pub use server::serve;

/// The API's settings. Everything but `listen` and `max_connections` is read again for every
/// request (or connection, for `tls`), so a reload through the `watch` channel applies at
/// once.
#[derive(Clone)]
pub struct ApiConfig {
    /// Where to listen (the caller binds; kept here for messages).
    pub listen: SocketAddr,
    /// Networks agent tokens may be used from (default: loopback, `127.0.0.0/8` and `::1`).
    pub agent_networks: Vec<IpNet>,
    /// Networks admin tokens may be used from. A peer in neither list gets 403.
    pub admin_networks: Vec<IpNet>,
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Failed authentications per address per minute before 429 (0: no limit).
    pub auth_failures_per_minute: u32,
    /// TLS: when set, every connection is TLS (HTTP/1.1 only: do not offer `h2` by ALPN).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Open connections at most; more are closed at once.
    pub max_connections: usize,
}

impl std::fmt::Debug for ApiConfig {
    /// Everything but the TLS configuration, shown only as present or not.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("listen", &self.listen)
            .field("agent_networks", &self.agent_networks)
            .field("admin_networks", &self.admin_networks)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("auth_failures_per_minute", &self.auth_failures_per_minute)
            .field("tls", &self.tls.is_some())
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        let loopback = vec![
            IpNet::V4(ipnet::Ipv4Net::new_assert(
                std::net::Ipv4Addr::new(127, 0, 0, 0),
                8,
            )),
            IpNet::V6(ipnet::Ipv6Net::new_assert(
                std::net::Ipv6Addr::LOCALHOST,
                128,
            )),
        ];
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8025)),
            agent_networks: loopback.clone(),
            admin_networks: loopback,
            max_body_bytes: 64 * 1024,
            auth_failures_per_minute: 10,
            tls: None,
            max_connections: 256,
        }
    }
}

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// Pipeline settings; its `filter` has the tokenizer and classifier feedback trains with.
    pub settings: watch::Receiver<Arc<mailroom_pipeline::Settings>>,
    /// The API's own settings.
    pub api: watch::Receiver<Arc<ApiConfig>>,
    /// The configuration as shown by `GET /v1/config` (secrets already redacted).
    pub config_json: watch::Receiver<Arc<serde_json::Value>>,
    /// Renders `GET /metrics`.
    pub metrics: PrometheusHandle,
    limiter: Arc<auth::FailureLimiter>,
}

impl AppState {
    /// State over these parts.
    pub fn new(
        store: Store,
        settings: watch::Receiver<Arc<mailroom_pipeline::Settings>>,
        api: watch::Receiver<Arc<ApiConfig>>,
        config_json: watch::Receiver<Arc<serde_json::Value>>,
        metrics: PrometheusHandle,
    ) -> Self {
        AppState {
            store,
            settings,
            api,
            config_json,
            metrics,
            limiter: Arc::default(),
        }
    }
}

/// How long a client may take to send a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Read the body up to `max_body_bytes` (413 beyond, by `Content-Length` at once or while
/// reading), then hand the request on with the buffered body.
async fn limit_body(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let max = app.api.borrow().max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return ApiError::for_status(StatusCode::PAYLOAD_TOO_LARGE).into_response();
    }
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, max);
    let bytes: Bytes = match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return ApiError::for_status(StatusCode::PAYLOAD_TOO_LARGE).into_response()
        }
        Ok(Err(_)) => {
            return ApiError::bad_request("body_unreadable", "the request body could not be read")
                .into_response()
        }
        Err(_) => return ApiError::for_status(StatusCode::REQUEST_TIMEOUT).into_response(),
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Give every error response made outside the handlers (the router's 404 and 405, a layer's
/// 413) the JSON error body; keep its other headers (`Allow`, `Retry-After`).
async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let fresh = ApiError::for_status(status).into_response();
    let (fresh_parts, body) = fresh.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::TRANSFER_ENCODING);
    for (name, value) in fresh_parts.headers.iter() {
        parts.headers.insert(name.clone(), value.clone());
    }
    Response::from_parts(parts, body)
}

async fn not_found() -> ApiError {
    ApiError::for_status(StatusCode::NOT_FOUND)
}

/// The API's router, with every layer. Serve it with [`serve`] (or with connect info:
/// `into_make_service_with_connect_info::<SocketAddr>()`; the authentication layer needs
/// the peer address and answers 500 without it).
pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/v1/config", get(routes::config))
        .route("/metrics", get(routes::metrics_text))
        .route("/v1/privacy/erase", post(routes::erase))
        .route("/v1/privacy/export", post(routes::export))
        .route("/v1/audit", get(routes::audit))
        .route("/v1/agents/{name}", delete(routes::delete_agent))
        .route_layer(middleware::from_fn(auth::require_admin));
    Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/openapi.json", get(routes::openapi_json))
        .route("/v1/tickets", get(routes::list_tickets))
        .route(
            "/v1/tickets/{id}",
            get(routes::get_ticket).patch(routes::update_ticket),
        )
        .route("/v1/messages/{id}/raw", get(routes::message_raw))
        .route("/v1/messages/{id}/feedback", post(routes::feedback))
        .route(
            "/v1/attachments/{contact}/{sha256}",
            get(routes::attachment),
        )
        .route("/v1/quarantine", get(routes::list_quarantine))
        .route(
            "/v1/quarantine/{id}",
            get(routes::get_quarantined).delete(routes::delete_quarantined),
        )
        .route("/v1/quarantine/{id}/release", post(routes::release))
        .route("/v1/filter/stats", get(routes::filter_stats))
        .merge(admin)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), limit_body))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(metrics::track))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map(|p| p.as_str())
                .unwrap_or("unmatched");
            tracing::info_span!("http", method = %req.method(), route = %route)
        }))
        .with_state(state)
}
