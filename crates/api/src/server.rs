//! The accept loop: plain TCP or TLS, HTTP/1.1, a connection limit, header and handshake
//! timeouts, and a graceful shutdown that lets requests in flight finish.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::{Service, ServiceExt};

use crate::metrics::names;
use crate::{router, AppState};

/// How long a client may take to send a request's header section.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests in flight may take to finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serve the API on `listener` until `shutdown` resolves; then stop accepting, let requests
/// in flight finish (up to 10 s) and return. TLS is used when `state.api`'s `tls` is set (read
/// for each new connection, so a reloaded certificate applies to the next one). Every handler
/// sees the peer address (`ConnectInfo<SocketAddr>`).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let api = state.api.clone();
    let limit = api.borrow().max_connections.max(1);
    let mut make_service = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let permits = Arc::new(Semaphore::new(limit));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!(names::API_CONNECTIONS_REFUSED).increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = match ServiceExt::<SocketAddr>::ready(&mut make_service).await {
            Ok(ready) => match ready.call(peer).await {
                Ok(service) => service,
                Err(never) => match never {},
            },
            Err(never) => match never {},
        };
        let service = TowerToHyperService::new(service);
        let tls = api.borrow().tls.clone();
        let watcher = graceful.watcher();
        let http = http.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            run(&http, watcher, TokioIo::new(tls_stream), service).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
                None => run(&http, watcher, TokioIo::new(stream), service).await,
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("API requests still running after the shutdown grace period");
    }
    Ok(())
}

async fn run<I, S>(
    http: &hyper::server::conn::http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
    io: TokioIo<I>,
    service: TowerToHyperService<S>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<axum::http::Request<hyper::body::Incoming>, Response = axum::response::Response>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = http.serve_connection(io, service);
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(error = %e, "API connection ended with an error");
    }
}
