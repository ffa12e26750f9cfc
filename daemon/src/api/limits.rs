//! Limits at the door, before any handler runs: the per-IP rate limit on API requests that carry no token,
//! the number of requests handled at once, and the time a request may take until its response starts. Each
//! refusal is a problem document naming its `serve` flag, with `Retry-After`.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::state::AppState;

/// The client's address as the limits key it (an IPv6 address by its /64), in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Health probes and metrics stay reachable whatever the load.
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// The API's routes (the web app's files and the documents are served from memory and not IP-limited).
fn is_api(path: &str) -> bool {
    path.starts_with("/api/") || path.starts_with("/v1/")
}

/// The key of an address: IPv4 as is (and IPv4-mapped IPv6 as IPv4), IPv6 by its /64, which one subscriber
/// usually holds whole.
pub fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// The client's address: the last address in the configured header (the one the operator's proxy
/// appended), else the TCP peer's. `None` when neither is known (in-process tests).
fn client_ip(s: &AppState, req: &Request) -> Option<IpAddr> {
    let from_header = s.cfg.client_ip_header.as_ref().and_then(|h| {
        let v = req.headers().get_all(h).iter().next_back()?.to_str().ok()?;
        v.rsplit(',').next()?.trim().parse::<IpAddr>().ok()
    });
    from_header
        .or_else(|| {
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
        })
        .map(key)
}

/// One request from `ip` without a valid token: `Err` with the seconds to wait when over the limit.
pub fn charge_ip(s: &AppState, ip: IpAddr) -> Result<(), ApiError> {
    s.ip_limiter.check_key(&ip).map_err(|not_until| {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        metrics::counter!("openledger_rate_limited_total", "limit" => "ip").increment(1);
        ApiError::IpRateLimited(wait.as_secs().max(1))
    })
}

/// The request's bearer token: the `Authorization` header, or `?access_token=` on the event-stream routes.
pub fn bearer(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    if !uri.path().ends_with("/events") {
        return None;
    }
    uri.query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "access_token")
            .map(|(_, v)| v.to_owned())
    })
}

/// The client's address as `guard` found it.
pub fn client_of(parts: &Parts) -> Option<IpAddr> {
    parts.extensions.get::<ClientIp>().map(|c| c.0)
}

/// The middleware: IP limit (API routes, requests without a token; a token that fails to authenticate is
/// charged by the `Auth` extractor), then a request slot, then the timeout.
pub async fn guard(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if is_probe(path) {
        return next.run(req).await;
    }
    let api = is_api(path);
    let ip = client_ip(&s, &req);
    if let Some(ip) = ip {
        req.extensions_mut().insert(ClientIp(ip));
        if api
            && bearer(req.uri(), req.headers()).is_none()
            && let Err(e) = charge_ip(&s, ip)
        {
            return e.into_response();
        }
    }
    let Ok(_slot) = s.in_flight.clone().try_acquire_owned() else {
        metrics::counter!("openledger_rate_limited_total", "limit" => "concurrency").increment(1);
        return ApiError::Busy(1).into_response();
    };
    let limit = s.cfg.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            metrics::counter!("openledger_request_timeouts_total").increment(1);
            ApiError::TimedOut(limit.as_secs()).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::7".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(key(a), key(b));
        assert_ne!(key(a), key(other));
        assert_eq!(key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        assert_eq!(key(mapped), "192.0.2.9".parse::<IpAddr>().unwrap());
        let v4: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(key(v4), v4);
    }
}
