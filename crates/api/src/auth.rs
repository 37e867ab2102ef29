//! Who gets in: network allow-lists, bearer tokens, roles, and a limit on failed attempts.
//!
//! Order of the checks, for every route but `/healthz`:
//! 1. the peer must be in `agent_networks` or `admin_networks`, else 403
//!    `network_not_allowed` (nothing else is looked at);
//! 2. a peer with `auth_failures_per_minute` failed attempts in the current minute gets 429
//!    `too_many_auth_failures` with `Retry-After`, whatever it sends, until the minute is over;
//! 3. `Authorization: Bearer TOKEN` must name a token that exists, is not revoked and has not
//!    expired, else 401 (`missing_token`, `invalid_token`) and one failure is counted;
//! 4. the peer must be in the networks of the token's role (`admin_networks` for an admin
//!    token, `agent_networks` for an agent token), else 403 `network_not_allowed`;
//! 5. admin-only routes refuse agent tokens with 403 `forbidden_role`.
//!
//! Failed attempts are counted per address (per /64 for IPv6, since a host usually has a
//! whole /64). Nothing here logs a token, an address or a token's name.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use mailroom_store::{Actor, Role};

use crate::error::ApiError;
use crate::metrics::names;
use crate::AppState;

/// The authenticated caller, put in the request's extensions for the handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The token's id.
    pub token_id: u64,
    /// The id of the agent the token belongs to.
    pub agent: u64,
    /// The token's role.
    pub role: Role,
}

impl Caller {
    /// The caller as the store's audit log and tickets record it.
    pub fn actor(&self) -> Actor {
        Actor::Token {
            token: self.token_id,
            agent: self.agent,
        }
    }
}

/// Paths that need no token.
const PUBLIC_PATHS: &[&str] = &["/healthz"];

/// The length of a counting window.
const WINDOW: Duration = Duration::from_secs(60);

/// Addresses tracked at most; beyond it, expired windows are dropped first, then new
/// addresses are not tracked (they are still refused by the other checks).
const MAX_TRACKED: usize = 100_000;

/// Failed attempts per address in fixed one-minute windows.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// The key an address is counted under: the address, or its /64 for IPv6.
fn limiter_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

impl FailureLimiter {
    /// If `ip` is over `limit` failures in its current window, the seconds until that window
    /// ends. A `limit` of 0 turns the limit off.
    pub fn blocked(&self, ip: IpAddr, limit: u32, now: Instant) -> Option<u64> {
        if limit == 0 {
            return None;
        }
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let (start, count) = windows.get(&limiter_key(ip))?;
        let age = now.saturating_duration_since(*start);
        if age < WINDOW && *count >= limit {
            Some((WINDOW - age).as_secs().max(1))
        } else {
            None
        }
    }

    /// Count one failure of `ip`.
    pub fn record(&self, ip: IpAddr, now: Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let key = limiter_key(ip);
        if !windows.contains_key(&key) && windows.len() >= MAX_TRACKED {
            windows.retain(|_, (start, _)| now.saturating_duration_since(*start) < WINDOW);
            if windows.len() >= MAX_TRACKED {
                return;
            }
        }
        let entry = windows.entry(key).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The token of an `Authorization: Bearer TOKEN` header; `None` when absent or of another
/// scheme.
fn bearer(req: &Request) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

fn fail(reason: &'static str, error: ApiError) -> Response {
    metrics::counter!(names::API_AUTH_FAILURES, "reason" => reason).increment(1);
    error.into_response()
}

/// The authentication middleware (see the module docs).
pub(crate) async fn authenticate(
    State(app): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    if PUBLIC_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let Some(peer) = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical())
    else {
        tracing::error!("no peer address on the request: serve the router with connect info");
        return ApiError::internal().into_response();
    };
    let config = app.api.borrow().clone();
    if !contains(&config.agent_networks, peer) && !contains(&config.admin_networks, peer) {
        return fail(
            "network",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "network_not_allowed",
                "this address may not use the API",
            ),
        );
    }
    let now = Instant::now();
    if let Some(retry) = app
        .limiter
        .blocked(peer, config.auth_failures_per_minute, now)
    {
        return fail("rate_limited", ApiError::too_many_failures(retry));
    }
    let Some(token) = bearer(&req) else {
        app.limiter.record(peer, now);
        return fail(
            "missing",
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "send Authorization: Bearer TOKEN",
            ),
        );
    };
    let store = app.store.clone();
    let verified =
        tokio::task::spawn_blocking(move || store.token_verify(&token, now_secs())).await;
    let info = match verified {
        Ok(Ok(Some(info))) => info,
        Ok(Ok(None)) => {
            app.limiter.record(peer, now);
            return fail(
                "invalid",
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    "the token is unknown, revoked or expired",
                ),
            );
        }
        Ok(Err(e)) => return ApiError::from(e).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "token check panicked");
            return ApiError::internal().into_response();
        }
    };
    let role_networks = match info.role {
        Role::Admin => &config.admin_networks,
        Role::Agent => &config.agent_networks,
    };
    if !contains(role_networks, peer) {
        return fail(
            "network",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "network_not_allowed",
                "this token's role may not be used from this address",
            ),
        );
    }
    req.extensions_mut().insert(Caller {
        token_id: info.id,
        agent: info.agent,
        role: info.role,
    });
    next.run(req).await
}

/// Route layer of admin-only routes: refuses agents with 403 `forbidden_role`.
pub(crate) async fn require_admin(req: Request, next: Next) -> Response {
    match req.extensions().get::<Caller>() {
        Some(c) if c.role.allows(Role::Admin) => next.run(req).await,
        Some(_) => fail(
            "role",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_role",
                "this route needs an admin token",
            ),
        ),
        None => {
            tracing::error!("admin route reached without authentication");
            ApiError::internal().into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_blocks_after_limit_and_forgets_after_a_minute() {
        let l = FailureLimiter::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.blocked(ip, 3, t0), None);
            l.record(ip, t0);
        }
        assert_eq!(l.blocked(ip, 3, t0), Some(60));
        assert_eq!(l.blocked(ip, 0, t0), None, "0 turns it off");
        assert!(l.blocked("192.0.2.8".parse().unwrap(), 3, t0).is_none());
        assert_eq!(l.blocked(ip, 3, t0 + Duration::from_secs(61)), None);
        l.record(ip, t0 + Duration::from_secs(61));
        assert_eq!(l.blocked(ip, 3, t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn ipv6_counts_per_64() {
        let l = FailureLimiter::default();
        let t0 = Instant::now();
        l.record("2001:db8::1".parse().unwrap(), t0);
        l.record("2001:db8::2".parse().unwrap(), t0);
        assert!(l
            .blocked("2001:db8::ffff".parse().unwrap(), 2, t0)
            .is_some());
        assert!(l
            .blocked("2001:db8:0:1::1".parse().unwrap(), 2, t0)
            .is_none());
    }
}
